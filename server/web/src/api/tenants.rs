//! `/api/tenants` and `/api/auth/register`: tenants, their plan quotas and usage, and signup
//! (CONTRACT.md §9).
//!
//! Who may do what is the service's to decide (`service::tenants`): the server's admin (an
//! owner of the server's first tenant) lists and changes every tenant; any caller reads its
//! own tenant; another tenant is a 404.

use crate::api::Authorized;
use crate::http_error::HttpError;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::users::SessionView;
use super::{ApiJson, ClientAddr, Path};
use crate::api::AppState;
use outpost_store::{TenantPatch, TenantUsage};

/// What a tenant holds of what its quotas count.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageView {
    /// Agents registered (connected or not), until forgotten.
    pub agents: u64,
    /// Users, invited ones included.
    pub users: u64,
    /// Schedules, paused ones included.
    pub schedules: u64,
}

/// A tenant, its quotas (null: unlimited) and its usage.
#[derive(Debug, Serialize, ToSchema)]
pub struct TenantView {
    /// Tenant id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// The most agents it may have; null: unlimited. A new agent past it is refused
    /// (`quota_exceeded`); agents already registered always reconnect.
    pub max_agents: Option<i64>,
    /// The most schedules; null: unlimited (enforced when schedules are created).
    pub max_schedules: Option<i64>,
    /// The most users (invited ones count); null: unlimited.
    pub max_users: Option<i64>,
    /// Days of finished history kept (jobs, runs, output, events); null: the server's
    /// `--retention-days`; 0: everything is kept.
    pub retention_days: Option<i64>,
    /// Whether its password users must have a second factor (TOTP) to sign in.
    pub require_totp: bool,
    /// What it holds now.
    pub usage: UsageView,
}

impl From<TenantUsage> for TenantView {
    fn from(t: TenantUsage) -> Self {
        Self {
            id: t.tenant.id,
            name: t.tenant.name,
            created_at: t.tenant.created_at,
            max_agents: t.tenant.max_agents,
            max_schedules: t.tenant.max_schedules,
            max_users: t.tenant.max_users,
            retention_days: t.tenant.retention_days,
            require_totp: t.tenant.require_totp,
            usage: UsageView {
                agents: t.usage.agents,
                users: t.usage.users,
                schedules: t.usage.schedules,
            },
        }
    }
}

/// Body of `PATCH /api/tenants/{id}`: a field left out is unchanged; a quota set to null is
/// unlimited.
#[derive(Debug, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateTenant {
    /// A new name: 1 to 200 characters (null, like absent: unchanged).
    #[schema(min_length = 1, max_length = 200)]
    pub name: Option<String>,
    /// The most agents (0 to 1,000,000), or null for unlimited.
    #[schema(value_type = Option<i64>, nullable, minimum = 0, maximum = 1_000_000)]
    pub max_agents: Option<Option<i64>>,
    /// The most schedules (0 to 1,000,000), or null for unlimited.
    #[schema(value_type = Option<i64>, nullable, minimum = 0, maximum = 1_000_000)]
    pub max_schedules: Option<Option<i64>>,
    /// The most users (0 to 1,000,000), or null for unlimited.
    #[schema(value_type = Option<i64>, nullable, minimum = 0, maximum = 1_000_000)]
    pub max_users: Option<Option<i64>>,
    /// Days of finished history kept (0 to 36,500; 0 keeps everything), or null for the
    /// server's `--retention-days`.
    #[schema(value_type = Option<i64>, nullable, minimum = 0, maximum = 36_500)]
    pub retention_days: Option<Option<i64>>,
    /// Whether the tenant's password users must have a second factor (the tenant's own
    /// owners; CONTRACT.md §18). Not null: leave it out to keep it.
    #[schema(nullable = false)]
    pub require_totp: Option<bool>,
}

/// Reads a JSON object's fields by name, refusing any other and naming the field whose value
/// is wrong: a JSON object only (serde's derive also reads a struct from an array), and a
/// present `null` told from an absent field.
pub(super) fn object_fields<'de, D: serde::Deserializer<'de>>(
    d: D,
    known: &[&str],
) -> Result<serde_json::Map<String, serde_json::Value>, D::Error> {
    use serde::de::Error;
    let object = serde_json::Map::<String, serde_json::Value>::deserialize(d)?;
    if let Some(unknown) = object.keys().find(|k| !known.contains(&k.as_str())) {
        let expected: Vec<String> = known.iter().map(|k| format!("`{k}`")).collect();
        return Err(D::Error::custom(format!(
            "unknown field `{unknown}`, expected one of {}",
            expected.join(", ")
        )));
    }
    Ok(object)
}

/// One field's value, the error naming the field.
pub(super) fn field<T: serde::de::DeserializeOwned, E: serde::de::Error>(
    name: &str,
    value: serde_json::Value,
) -> Result<T, E> {
    serde_json::from_value(value).map_err(|e| E::custom(format!("{name}: {e}")))
}

/// A PATCH field that cannot be cleared: `null` is refused rather than read as "unchanged".
pub(super) fn required<T: serde::de::DeserializeOwned, E: serde::de::Error>(
    name: &str,
    value: serde_json::Value,
) -> Result<Option<T>, E> {
    if value.is_null() {
        return Err(E::custom(format!(
            "{name}: cannot be null; leave it out to keep it"
        )));
    }
    field::<T, E>(name, value).map(Some)
}

/// A quota (or a number of days): null, or a whole number however JSON spells it (`5` or `5.0`: JSON has one kind
/// of number, and the document's `integer` is any number without a fraction).
fn quota<E: serde::de::Error>(name: &str, value: serde_json::Value) -> Result<Option<i64>, E> {
    let max = if name == "retention_days" {
        outpost_core::service::retention::MAX_DAYS
    } else {
        outpost_core::service::tenants::MAX_QUOTA
    };
    match &value {
        serde_json::Value::Null => Ok(None),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Ok(Some(i)),
            (None, Some(f)) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(Some(f as i64)),
            _ => Err(E::custom(format!(
                "{name}: {n} is not a whole number from 0 to {max}, or null"
            ))),
        },
        other => Err(E::custom(format!(
            "{name}: expected a whole number from 0 to {max} or null, got {other}"
        ))),
    }
}

impl<'de> Deserialize<'de> for UpdateTenant {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let object = object_fields(
            d,
            &[
                "name",
                "max_agents",
                "max_schedules",
                "max_users",
                "retention_days",
                "require_totp",
            ],
        )?;
        let mut out = Self::default();
        for (key, value) in object {
            match key.as_str() {
                "name" => out.name = field::<Option<String>, D::Error>("name", value)?,
                "max_agents" => out.max_agents = Some(quota::<D::Error>("max_agents", value)?),
                "max_schedules" => {
                    out.max_schedules = Some(quota::<D::Error>("max_schedules", value)?)
                }
                "max_users" => out.max_users = Some(quota::<D::Error>("max_users", value)?),
                "retention_days" => {
                    out.retention_days = Some(quota::<D::Error>("retention_days", value)?)
                }
                "require_totp" => {
                    out.require_totp = required::<bool, D::Error>("require_totp", value)?
                }
                _ => {}
            }
        }
        Ok(out)
    }
}

/// Body of `POST /api/auth/register`.
#[derive(Debug, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// The owner's email, unique on the server (case-insensitive).
    #[schema(value_type = crate::api::doc::Email)]
    pub email: String,
    /// The owner's password: 12 to 1024 characters.
    #[schema(min_length = 12, max_length = 1024)]
    pub password: String,
    /// The new tenant's name: 1 to 200 characters.
    #[schema(min_length = 1, max_length = 200)]
    pub tenant_name: String,
}

impl<'de> Deserialize<'de> for RegisterRequest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut object = object_fields(d, &["email", "password", "tenant_name"])?;
        let mut take = |name: &str| -> Result<String, D::Error> {
            let value = object
                .remove(name)
                .ok_or_else(|| D::Error::custom(format!("missing field `{name}`")))?;
            field::<String, D::Error>(name, value)
        };
        Ok(Self {
            email: take("email")?,
            password: take("password")?,
            tenant_name: take("tenant_name")?,
        })
    }
}

/// Sign up: a new tenant and its owner user, signed in (the same answer as a login). Only when
/// the server runs with `--allow-signup`; otherwise 403 `signup_disabled`. Rate-limited as
/// sign-ins are (10 a minute per client address and per email).
#[utoipa::path(post, operation_id = "register", path = "/api/auth/register", tag = "auth",
    request_body = RegisterRequest,
    responses((status = 201, body = SessionView),
        (status = 403, body = crate::http_error::ErrorEnvelope, description = "Signup is off on this server (`signup_disabled`)"),
        (status = 409, body = crate::http_error::ErrorEnvelope, description = "The email is taken (`email_taken`)"),
        (status = 429, response = crate::api::doc::TooManyRequests)))]
#[tracing::instrument(level = "debug", skip_all)]
pub async fn register(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    ApiJson(body): ApiJson<RegisterRequest>,
) -> Result<(StatusCode, Json<SessionView>), HttpError> {
    let session = state
        .services
        .tenants
        .register(&body.email, &body.password, &body.tenant_name, client)
        .await?;
    Ok((StatusCode::CREATED, Json(SessionView::from(session))))
}

/// Every tenant with its quotas and usage, oldest first (the server's admin: an owner of the
/// server's first tenant).
#[utoipa::path(get, operation_id = "listTenants", path = "/api/tenants", tag = "tenants", security(("bearer" = [])),
    responses((status = 200, body = Vec<TenantView>),
        (status = 403, body = crate::http_error::ErrorEnvelope, description = "Not the server's admin")))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id))]
pub async fn list(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
) -> Result<Json<Vec<TenantView>>, HttpError> {
    let tenants = state.services.tenants.list(&caller).await?;
    Ok(Json(tenants.into_iter().map(TenantView::from).collect()))
}

/// One tenant with its quotas and usage: the caller's own (any role), or any for the server's
/// admin.
#[utoipa::path(get, operation_id = "showTenant", path = "/api/tenants/{id}", tag = "tenants", security(("bearer" = [])),
    params(("id" = String, Path, description = "Tenant id")),
    responses((status = 200, body = TenantView),
        (status = 404, response = crate::api::doc::NotFound)))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id, target = %id))]
pub async fn show(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
    Path(id): Path<String>,
) -> Result<Json<TenantView>, HttpError> {
    let tenant = state.services.tenants.get(&caller, &id).await?;
    Ok(Json(TenantView::from(tenant)))
}

/// Rename a tenant, change its quotas or its retention window (the server's admin), or
/// require a second factor of its password users (`require_totp`: the tenant's own owners). A field
/// left out is unchanged; a quota set to null is unlimited, `retention_days` set to null is the
/// server's `--retention-days`. Lowering a quota below what the tenant holds removes
/// nothing: it refuses new agents, schedules or users until the tenant is under it.
#[utoipa::path(patch, operation_id = "updateTenant", path = "/api/tenants/{id}", tag = "tenants", security(("bearer" = [])),
    params(("id" = String, Path, description = "Tenant id")), request_body = UpdateTenant,
    responses((status = 200, body = TenantView),
        (status = 403, body = crate::http_error::ErrorEnvelope, description = "The caller's own tenant, but not the server's admin; or `require_totp` by someone not an owner of that tenant"),
        (status = 404, response = crate::api::doc::NotFound)))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id, target = %id))]
pub async fn update(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdateTenant>,
) -> Result<Json<TenantView>, HttpError> {
    let patch = TenantPatch {
        name: body.name,
        max_agents: body.max_agents,
        max_schedules: body.max_schedules,
        max_users: body.max_users,
        retention_days: body.retention_days,
    };
    let Some(required) = body.require_totp else {
        let tenant = state.services.tenants.update(&caller, &id, patch).await?;
        return Ok(Json(TenantView::from(tenant)));
    };
    // `require_totp` is the tenant's own owners' (the service checks): 404 for a tenant the
    // caller cannot see, then the rest of the patch, then the policy.
    state.services.tenants.get(&caller, &id).await?;
    if !patch.is_empty() {
        state.services.tenants.update(&caller, &id, patch).await?;
    }
    state
        .services
        .totp
        .set_policy(&caller, &id, required)
        .await?;
    let tenant = state.services.tenants.get(&caller, &id).await?;
    Ok(Json(TenantView::from(tenant)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_patch_tells_null_from_absent() {
        let patch: UpdateTenant =
            serde_json::from_str(r#"{"max_agents": null, "max_users": 5}"#).expect("reads");
        assert_eq!(patch.max_agents, Some(None));
        assert_eq!(patch.max_users, Some(Some(5)));
        assert_eq!(patch.max_schedules, None);
        assert_eq!(patch.name, None);
        let patch: UpdateTenant = serde_json::from_str(r#"{"name": null}"#).expect("reads");
        assert_eq!(patch.name, None, "a null name is no change");
        let err =
            serde_json::from_str::<UpdateTenant>(r#"{"max_users": "x"}"#).expect_err("a string");
        assert!(err.to_string().starts_with("max_users:"), "{err}");
        let err = serde_json::from_str::<UpdateTenant>(r#"{"plan": 1}"#).expect_err("unknown");
        assert!(err.to_string().contains("unknown field `plan`"), "{err}");
        assert!(serde_json::from_str::<UpdateTenant>("[1]").is_err());
    }

    #[test]
    fn register_names_the_missing_field() {
        let err = serde_json::from_str::<RegisterRequest>(r#"{"email": "a@b", "password": "x"}"#)
            .expect_err("missing");
        assert!(err.to_string().contains("tenant_name"), "{err}");
    }
}

#[cfg(test)]
mod quota_tests {
    use super::UpdateTenant;

    fn read(json: &str) -> Result<UpdateTenant, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn a_quota_is_null_or_a_whole_number_however_json_spells_it() {
        assert_eq!(
            read(r#"{"max_users": 5}"#).expect("5").max_users,
            Some(Some(5))
        );
        assert_eq!(
            read(r#"{"max_users": 5.0}"#).expect("5.0").max_users,
            Some(Some(5))
        );
        assert_eq!(
            read(r#"{"max_users": null}"#).expect("null").max_users,
            Some(None)
        );
        assert_eq!(read("{}").expect("absent").max_users, None);
        for bad in ["5.5", "\"5\"", "true", "1e300"] {
            let err = read(&format!(r#"{{"max_agents": {bad}}}"#)).expect_err(bad);
            assert!(err.contains("max_agents"), "{bad}: {err}");
        }
    }
}
