//! `/api/events` (CONTRACT.md §11): what happened that people should hear of, as a list (newest
//! first, with a cursor) or as a live stream (Server-Sent Events).
//!
//! Both show an event the same way ([`EventView`]): the stream's `data` is exactly what the
//! list shows for it, so one parser reads both. How the stream finds new events, and what
//! bounds it, is `service::events`'s.

use crate::api::Authorized;
use crate::http_error::HttpError;
use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};

use super::Query;
use crate::api::AppState;
use outpost_core::service::events::{self, Item, StreamFilter};
use outpost_store::domain::DomainError;
use outpost_store::event;

/// What an event is about.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventSubject {
    /// What kind of thing (`schedule`).
    pub kind: String,
    /// Its id.
    pub id: String,
    /// How people know it (a schedule's name).
    pub name: String,
}

/// An event as shown (CONTRACT.md §11).
#[derive(Debug, Serialize, ToSchema)]
pub struct EventView {
    /// Event id (time-ordered).
    pub id: String,
    /// `schedule.missed`, `schedule.skipped`.
    #[serde(rename = "type")]
    pub kind: String,
    /// When it was recorded.
    pub time: DateTime<Utc>,
    /// Its tenant.
    pub tenant_id: String,
    /// What it is about.
    pub subject: EventSubject,
    /// One line for people.
    pub summary: String,
    /// What happened, by type: `schedule.missed` has `missed`, `at_least`, `first`, `until`,
    /// `policy` and (`run_once`) `job_id`; `schedule.skipped` has `scheduled_for`,
    /// `running_job_id` and `reason`.
    #[schema(value_type = Object)]
    pub data: Value,
}

impl From<event::Model> for EventView {
    fn from(e: event::Model) -> Self {
        Self {
            id: e.id,
            kind: e.kind,
            time: e.at,
            tenant_id: e.tenant_id,
            subject: EventSubject {
                kind: e.subject_type,
                id: e.subject_id,
                name: e.subject_name,
            },
            summary: e.summary,
            data: e.detail,
        }
    }
}

/// A page of events.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventPage {
    /// Newest first.
    pub events: Vec<EventView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Filters of `GET /api/events`.
#[derive(Debug, Deserialize, IntoParams)]
pub struct EventQuery {
    /// Events of this type (`schedule.missed`), or of every type of a kind (`schedule`).
    #[serde(rename = "type")]
    #[param(rename = "type", nullable = false)]
    pub kind: Option<String>,
    /// Events about this thing (a schedule's id).
    #[param(nullable = false)]
    pub subject_id: Option<String>,
    /// From a previous page's `next_cursor`.
    #[param(nullable = false)]
    pub cursor: Option<String>,
    /// Page size, 1–200 (default 50).
    #[param(minimum = 1, maximum = 200, nullable = false)]
    #[serde(default, deserialize_with = "super::int64_count")]
    pub limit: Option<u64>,
}

/// The tenant's events, newest first.
#[utoipa::path(get, operation_id = "listEvents", path = "/api/events", tag = "events", security(("bearer" = [])),
    params(EventQuery),
    responses((status = 200, body = EventPage)))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id))]
pub async fn list(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
    Query(query): Query<EventQuery>,
) -> Result<Json<EventPage>, HttpError> {
    let (events, next_cursor) = state
        .services
        .events
        .list(
            &caller,
            query.kind,
            query.subject_id,
            query.cursor,
            query.limit,
        )
        .await?;
    Ok(Json(EventPage {
        events: events.into_iter().map(EventView::from).collect(),
        next_cursor,
    }))
}

/// Filters of `GET /api/events/stream`.
#[derive(Debug, Deserialize, IntoParams)]
pub struct StreamQuery {
    /// Events of this type (`schedule.missed`), or of every type of a kind (`schedule`).
    #[serde(rename = "type")]
    #[param(rename = "type", nullable = false)]
    pub kind: Option<String>,
    /// Events about this thing (a schedule's id).
    #[param(nullable = false)]
    pub subject_id: Option<String>,
    /// Resume after this event id (as the `Last-Event-ID` header does, which wins when both
    /// are given).
    #[param(nullable = false)]
    pub after: Option<String>,
}

/// How often a comment keeps an idle stream's connection (and the proxies on its way) open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Follow the tenant's events live (Server-Sent Events).
///
/// Each event is a message with the event's id as `id`, its type as `event`, and as `data`
/// the event exactly as `GET /api/events` shows it. Without `Last-Event-ID` (or `after`) the
/// stream sends the events recorded after it opened; with one, those recorded after that
/// event. Each is sent once, in the order of their ids, except that an event committed after
/// one with a later id comes after it; one committed more than 10 s after an event with a
/// later id is not sent (the list has it). A comment every 15 s keeps the connection open.
/// A reader that leaves 256 events unread for 30 s gets a last `lagged` message (data
/// `{"message"}`) and the stream ends: reconnect with `Last-Event-ID` to go on.
#[utoipa::path(get, operation_id = "followEvents", path = "/api/events/stream", tag = "events", security(("bearer" = [])),
    params(StreamQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id")),
    responses((status = 200, description = "An event stream", content_type = "text/event-stream"),
        (status = 429, body = crate::http_error::ErrorEnvelope, description = "`rate_limited`: the tenant has 32 event streams open on this server node (or the caller's rate limit)")))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id))]
pub async fn stream(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
    Query(query): Query<StreamQuery>,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    let header = match headers.get("last-event-id") {
        Some(value) => Some(
            value
                .to_str()
                .map_err(|_| DomainError::BadRequest("Last-Event-ID: not an event id".into()))?,
        ),
        None => None,
    }
    .filter(|id| !id.trim().is_empty());
    let after = match (header, query.after.as_deref()) {
        (Some(id), _) => Some(("Last-Event-ID", id)),
        (None, Some(id)) => Some(("after", id)),
        (None, None) => None,
    };
    let filter = StreamFilter {
        kind: query.kind,
        subject_id: query.subject_id,
    };
    let subscription = state.services.events.follow(&caller, filter, after).await?;
    let messages = futures_util::stream::unfold(subscription, |mut subscription| async move {
        let message = match subscription.next().await? {
            Item::Event(event) => message(*event),
            Item::Lagged => Event::default().event("lagged").data(
                json!({"message": format!(
                    "this reader left {} events unread for {} s: reconnect with Last-Event-ID to go on",
                    events::QUEUE,
                    events::LAG_GRACE.as_secs()
                )})
                .to_string(),
            ),
        };
        Some((Ok::<_, Infallible>(message), subscription))
    });
    Ok(Sse::new(messages)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response())
}

/// One event as an SSE message. Its id is a UUID (the service sends no other); a type that
/// could not be an SSE field (a line break) is sent without a name rather than panic.
fn message(event: event::Model) -> Event {
    let id = event.id.clone();
    let name_fits = !event.kind.is_empty() && !event.kind.contains(['\r', '\n']);
    let name = name_fits.then(|| event.kind.clone());
    let data = serde_json::to_string(&EventView::from(event)).unwrap_or_default();
    let message = Event::default().id(id).data(data);
    match name {
        Some(name) => message.event(name),
        None => message,
    }
}
