//! `/api/integrations` (CONTRACT.md §11): where a tenant's events are sent, a test, and the delivery
//! log. Secret config fields are never shown (`…`); a PATCH that sends `…` back for one keeps
//! it. Owners and admins only (`integrations:write`).

use crate::api::Authorized;
use crate::http_error::HttpError;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::tenants::{field, object_fields, required};
use super::{ApiJson, Path, Query};
use crate::api::AppState;
use outpost_core::service::integrations::{IntegrationFields, TestReport};
use outpost_store::{DeliveryAttempt, delivery, delivery_attempt, integration};

/// An integration as shown.
#[derive(Debug, Serialize, ToSchema)]
pub struct IntegrationView {
    /// Integration id.
    pub id: String,
    /// Unique in the tenant.
    pub name: String,
    /// `webhook`, `slack`, `discord`, `teams`, `pagerduty`, `datadog`, `splunk` or `email`.
    pub kind: String,
    /// The provider's config; secret fields are shown as `…`.
    #[schema(value_type = Object)]
    pub config: Value,
    /// Event types (or kinds: `job`, `agent`, `schedule`, or `*`) it is sent.
    pub events: Vec<String>,
    /// Narrows by agent tags, script, schedule.
    #[schema(value_type = Option<Object>)]
    pub filter: Option<Value>,
    /// Sent to when true.
    pub enabled: bool,
    /// A failure is sent only from this many failures in a row of the same subject.
    pub notify_after: i32,
    /// Who made it.
    pub created_by: String,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

impl From<integration::Model> for IntegrationView {
    fn from(row: integration::Model) -> Self {
        Self {
            events: row.events.to_vec(),
            id: row.id,
            name: row.name,
            kind: row.kind,
            config: row.config,
            filter: row.filter,
            enabled: row.enabled,
            notify_after: row.notify_after,
            created_by: row.created_by,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

/// Body of `POST /api/integrations`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateIntegration {
    /// Unique in the tenant.
    #[schema(min_length = 1, max_length = 100)]
    pub name: String,
    /// The provider.
    #[schema(example = "slack")]
    pub kind: String,
    /// The provider's config (CONTRACT.md §11's table): `url` and `secret` for `webhook` (a secret
    /// `whsec_…` is made when none is given), `url` for `slack`, `discord`, `teams`,
    /// `routing_key` (and `url`) for `pagerduty`, `site` or `url` and `api_key` for
    /// `datadog`, `url` and `token` for `splunk`, `to` for `email`.
    #[schema(value_type = Object)]
    pub config: Value,
    /// Event types, kinds, or `*`.
    pub events: Vec<String>,
    /// `{tags?, script?, schedule_id?}`.
    #[schema(value_type = Option<Object>)]
    pub filter: Option<Value>,
    /// Default true.
    pub enabled: Option<bool>,
    /// Default 1.
    #[schema(minimum = 1, maximum = 100)]
    pub notify_after: Option<i32>,
}

/// Body of `PATCH /api/integrations/{id}`: any field of `POST` but `kind`; `filter: null`
/// clears the filter.
#[derive(Debug, Default, ToSchema)]
pub struct UpdateIntegration {
    /// A new name.
    pub name: Option<String>,
    /// A new config (secret fields sent as `…` keep their value).
    #[schema(value_type = Option<Object>)]
    pub config: Option<Value>,
    /// New event types.
    pub events: Option<Vec<String>>,
    /// A new filter (null: none).
    #[schema(value_type = Option<Object>, nullable)]
    pub filter: Option<Option<Value>>,
    /// Pause (false) or resume.
    pub enabled: Option<bool>,
    /// A new threshold.
    pub notify_after: Option<i32>,
}

const UPDATE_FIELDS: &[&str] = &[
    "name",
    "config",
    "events",
    "filter",
    "enabled",
    "notify_after",
];

impl<'de> Deserialize<'de> for UpdateIntegration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let object = object_fields(d, UPDATE_FIELDS)?;
        let mut out = Self::default();
        for (key, value) in object {
            match key.as_str() {
                "name" => out.name = required("name", value)?,
                "config" => out.config = required("config", value)?,
                "events" => out.events = required("events", value)?,
                "enabled" => out.enabled = required("enabled", value)?,
                "notify_after" => out.notify_after = required("notify_after", value)?,
                "filter" => out.filter = Some(field::<Option<Value>, D::Error>("filter", value)?),
                _ => {}
            }
        }
        Ok(out)
    }
}

/// The tenant's integrations.
#[derive(Debug, Serialize, ToSchema)]
pub struct IntegrationList {
    /// By name.
    pub integrations: Vec<IntegrationView>,
}

/// One attempt at a delivery.
#[derive(Debug, Serialize, ToSchema)]
pub struct AttemptView {
    /// From 1.
    pub attempt: i32,
    /// When.
    pub at: DateTime<Utc>,
    /// The provider's HTTP status, when it answered.
    pub status_code: Option<i32>,
    /// How long it took.
    pub duration_ms: i64,
    /// The provider's answer, truncated.
    pub response: Option<String>,
    /// What went wrong.
    pub error: Option<String>,
}

impl From<delivery_attempt::Model> for AttemptView {
    fn from(a: delivery_attempt::Model) -> Self {
        Self {
            attempt: a.attempt,
            at: a.at,
            status_code: a.status_code,
            duration_ms: a.duration_ms,
            response: a.response,
            error: a.error,
        }
    }
}

/// One event sent (or to send) to one integration.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryView {
    /// Delivery id (the `webhook-id` of a generic webhook; retries keep it).
    pub id: String,
    /// The event.
    pub event_id: String,
    /// `pending`, `delivered` or `failed`.
    pub status: String,
    /// Attempts made.
    pub attempts: i32,
    /// When the next attempt is due (pending only).
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// When it was recorded.
    pub created_at: DateTime<Utc>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// Every attempt, oldest first.
    pub attempt_log: Vec<AttemptView>,
}

impl From<(delivery::Model, Vec<delivery_attempt::Model>)> for DeliveryView {
    fn from((d, attempts): (delivery::Model, Vec<delivery_attempt::Model>)) -> Self {
        Self {
            next_attempt_at: (d.status == "pending").then_some(d.next_attempt_at),
            id: d.id,
            event_id: d.event_id,
            status: d.status,
            attempts: d.attempts,
            created_at: d.created_at,
            finished_at: d.finished_at,
            attempt_log: attempts.into_iter().map(AttemptView::from).collect(),
        }
    }
}

/// A page of deliveries.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryPage {
    /// Newest first.
    pub deliveries: Vec<DeliveryView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Filters of `GET /api/integrations/{id}/deliveries`.
#[derive(Debug, Deserialize, IntoParams)]
pub struct DeliveryQuery {
    /// From a previous page's `next_cursor`.
    pub cursor: Option<String>,
    /// Page size, 1–200 (default 50).
    pub limit: Option<u64>,
}

/// What `POST /api/integrations/{id}/test` got back.
#[derive(Debug, Serialize, ToSchema)]
pub struct TestResult {
    /// The provider accepted the test event.
    pub ok: bool,
    /// The recorded delivery (in the delivery log).
    pub delivery_id: String,
    /// The provider's HTTP status, when it answered.
    pub status_code: Option<i32>,
    /// The provider's answer, truncated.
    pub response: Option<String>,
    /// What went wrong.
    pub error: Option<String>,
    /// How long it took.
    pub duration_ms: i64,
}

impl From<TestReport> for TestResult {
    fn from(report: TestReport) -> Self {
        let DeliveryAttempt {
            status_code,
            duration_ms,
            response,
            error,
            ..
        } = report.attempt;
        Self {
            ok: report.ok,
            delivery_id: report.delivery.id,
            status_code,
            response,
            error,
            duration_ms,
        }
    }
}

/// Make an integration.
#[utoipa::path(post, operation_id = "createIntegration", path = "/api/integrations", tag = "integrations", security(("bearer" = [])),
    request_body = CreateIntegration,
    responses((status = 201, body = IntegrationView),
        (status = 400, body = crate::http_error::ErrorEnvelope, description = "a field is wrong (named), or a URL resolves to a private address"),
        (status = 409, body = crate::http_error::ErrorEnvelope, description = "`name_taken`")))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id))]
pub async fn create(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
    ApiJson(body): ApiJson<CreateIntegration>,
) -> Result<(StatusCode, Json<IntegrationView>), HttpError> {
    let fields = IntegrationFields {
        name: Some(body.name),
        kind: Some(body.kind),
        config: Some(body.config),
        events: Some(body.events),
        filter: Some(body.filter),
        enabled: body.enabled,
        notify_after: body.notify_after,
    };
    let made = state.services.integrations.create(&caller, fields).await?;
    Ok((StatusCode::CREATED, Json(made.into())))
}

/// The tenant's integrations, by name.
#[utoipa::path(get, operation_id = "listIntegrations", path = "/api/integrations", tag = "integrations", security(("bearer" = [])),
    responses((status = 200, body = IntegrationList)))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id))]
pub async fn list(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
) -> Result<Json<IntegrationList>, HttpError> {
    let rows = state.services.integrations.list(&caller).await?;
    Ok(Json(IntegrationList {
        integrations: rows.into_iter().map(IntegrationView::from).collect(),
    }))
}

/// One integration.
#[utoipa::path(get, operation_id = "getIntegration", path = "/api/integrations/{id}", tag = "integrations", security(("bearer" = [])),
    params(("id" = String, Path, description = "Integration id")),
    responses((status = 200, body = IntegrationView), (status = 404, response = crate::api::doc::NotFound)))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id, integration_id = %id))]
pub async fn show(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
    Path(id): Path<String>,
) -> Result<Json<IntegrationView>, HttpError> {
    Ok(Json(
        state.services.integrations.get(&caller, &id).await?.into(),
    ))
}

/// Change an integration, pause it (`enabled: false`) or resume it.
#[utoipa::path(patch, operation_id = "updateIntegration", path = "/api/integrations/{id}", tag = "integrations", security(("bearer" = [])),
    params(("id" = String, Path, description = "Integration id")), request_body = UpdateIntegration,
    responses((status = 200, body = IntegrationView), (status = 404, response = crate::api::doc::NotFound),
        (status = 409, body = crate::http_error::ErrorEnvelope, description = "`name_taken`")))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id, integration_id = %id))]
pub async fn update(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdateIntegration>,
) -> Result<Json<IntegrationView>, HttpError> {
    let fields = IntegrationFields {
        name: body.name,
        kind: None,
        config: body.config,
        events: body.events,
        filter: body.filter,
        enabled: body.enabled,
        notify_after: body.notify_after,
    };
    let row = state
        .services
        .integrations
        .update(&caller, &id, fields)
        .await?;
    Ok(Json(row.into()))
}

/// Delete an integration and its delivery log.
#[utoipa::path(delete, operation_id = "deleteIntegration", path = "/api/integrations/{id}", tag = "integrations", security(("bearer" = [])),
    params(("id" = String, Path, description = "Integration id")),
    responses((status = 204), (status = 404, response = crate::api::doc::NotFound)))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id, integration_id = %id))]
pub async fn delete(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
    Path(id): Path<String>,
) -> Result<StatusCode, HttpError> {
    state.services.integrations.delete(&caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Send a test event now and report the provider's answer (`ok: false` when it refused or
/// could not be reached); the attempt is in the delivery log.
#[utoipa::path(post, operation_id = "testIntegration", path = "/api/integrations/{id}/test", tag = "integrations", security(("bearer" = [])),
    params(("id" = String, Path, description = "Integration id")),
    responses((status = 200, body = TestResult), (status = 404, response = crate::api::doc::NotFound)))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id, integration_id = %id))]
pub async fn test(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
    Path(id): Path<String>,
) -> Result<Json<TestResult>, HttpError> {
    Ok(Json(
        state.services.integrations.test(&caller, &id).await?.into(),
    ))
}

/// An integration's deliveries, newest first, each with every attempt.
#[utoipa::path(get, operation_id = "listDeliveries", path = "/api/integrations/{id}/deliveries", tag = "integrations", security(("bearer" = [])),
    params(("id" = String, Path, description = "Integration id"), DeliveryQuery),
    responses((status = 200, body = DeliveryPage), (status = 404, response = crate::api::doc::NotFound)))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id, integration_id = %id))]
pub async fn deliveries(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
    Path(id): Path<String>,
    Query(query): Query<DeliveryQuery>,
) -> Result<Json<DeliveryPage>, HttpError> {
    let limit = query.limit.unwrap_or(50).clamp(1, 200);
    let rows = state
        .services
        .integrations
        .deliveries(&caller, &id, query.cursor.as_deref(), limit)
        .await?;
    let next_cursor = (rows.len() as u64 == limit)
        .then(|| rows.last().map(|(d, _)| d.id.clone()))
        .flatten();
    Ok(Json(DeliveryPage {
        deliveries: rows.into_iter().map(DeliveryView::from).collect(),
        next_cursor,
    }))
}
