//! Staged rollouts (CONTRACT.md §17): `POST /api/rollouts`, the list, one rollout with its
//! stages, a page of its agents, `pause|resume|abort|rollback`, and the tenant's fleet policy
//! (`GET|PUT /api/fleet/policy`). The rules are the service's
//! (`outpost_core::service::rollouts`) and the wave logic `outpost_core::rollout`'s; these
//! handlers parse and serialise.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::{ApiJson, Path, Query};
use crate::api::{AppState, Authorized};
use crate::http_error::HttpError;
use outpost_core::service::rollouts::{
    HealthRequest, NewRollout, Policy, RolloutTarget, RolloutView as Rollout, StageView,
};
use outpost_store::RolloutAgentRow;
use outpost_store::domain::{DomainError, RolloutAgentState};

/// Agents of each stage a rollout's view lists (`/agents` pages through the rest).
const LISTED_PER_STAGE: u64 = 50;

/// Who a rollout is for.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TargetBody {
    /// Agents having every one of these tags.
    pub tags: Option<Vec<String>>,
    /// Every agent of the tenant.
    pub all: Option<bool>,
}

/// The health gate; what is left out takes its default.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthBody {
    /// Seconds an updated agent has to come back online at the version (default 300).
    #[schema(minimum = 1, maximum = 86400)]
    pub online_within_s: Option<u32>,
    /// Seconds it must then run without its supervisor rolling back (default 120).
    #[schema(maximum = 86400)]
    pub soak_s: Option<u32>,
    /// Share of a stage's counted agents that must be healthy for the next to start
    /// (default 100).
    #[schema(maximum = 100)]
    pub min_healthy_percent: Option<u8>,
    /// A script that must then succeed on the agent (one its manifest lists, or the library's).
    pub script: Option<String>,
}

/// Body of `POST /api/rollouts`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartBody {
    /// The version, `MAJOR.MINOR.PATCH`: a published release (or the build the server ships).
    #[schema(value_type = super::doc::ReleaseVersion)]
    pub version: String,
    /// Whom.
    pub target: TargetBody,
    /// Canary agents, chosen at random among the target (default 1).
    #[schema(maximum = 1000)]
    pub canary: Option<u32>,
    /// Each wave's share of the non-canary agents in percent; they sum to 100 (default
    /// `[100]`).
    pub waves: Option<Vec<u8>>,
    /// Most agents of the target updating at once, in percent (default 10).
    #[schema(minimum = 1, maximum = 100)]
    pub max_in_flight: Option<u8>,
    /// The gate between stages.
    pub health: Option<HealthBody>,
}

/// One stage.
#[derive(Debug, Serialize, ToSchema)]
pub struct StageBody {
    /// 0 the canary, then each wave.
    pub stage: u32,
    /// `canary`, `wave 1`, ….
    pub name: String,
    /// Its agents.
    pub agents: i64,
    /// Its agents by state (`pending`, `updating`, `soaking`, `checking`, `healthy`,
    /// `failed`, `skipped`, `ahead`, and while rolling back `revert_pending`, `reverting`,
    /// `reverted`, `revert_failed`).
    pub counts: BTreeMap<String, i64>,
    /// Its first agents in the rollout's order (at most 50; `/agents?stage=N` pages).
    pub listed: Vec<RolloutAgentView>,
}

/// One agent of a rollout.
#[derive(Debug, Serialize, ToSchema)]
pub struct RolloutAgentView {
    /// The agent.
    pub agent_id: String,
    /// Its host name (null once forgotten).
    pub hostname: Option<String>,
    /// Its stage.
    pub stage: i32,
    /// Where it is.
    #[schema(value_type = RolloutAgentState)]
    pub state: String,
    /// The version it ran when the rollout took it.
    pub from_version: String,
    /// The version it runs now.
    pub version: Option<String>,
    /// Why it failed or was skipped.
    pub reason: Option<String>,
    /// When the `update` went out.
    pub sent_at: Option<DateTime<Utc>>,
    /// The last `update` command sent (`GET /api/commands/{id}`).
    pub command_id: Option<String>,
}

impl From<RolloutAgentRow> for RolloutAgentView {
    fn from(r: RolloutAgentRow) -> Self {
        Self {
            agent_id: r.row.agent_id,
            hostname: r.hostname,
            stage: r.row.stage,
            state: r.row.state,
            from_version: r.row.from_version,
            version: r.version,
            reason: r.row.reason,
            sent_at: r.row.sent_at,
            command_id: r.row.command_id,
        }
    }
}

/// A rollout.
#[derive(Debug, Serialize, ToSchema)]
pub struct RolloutView {
    /// Its id.
    pub id: String,
    /// The version agents go to.
    pub version: String,
    /// Whom, as asked.
    #[schema(value_type = Object)]
    pub target: Value,
    /// `canary`, `wave N`, `paused`, `halted`, `completed`, `aborted`, `rolling_back`,
    /// `rolled_back`.
    pub state: String,
    /// The stage being worked (0 the canary).
    pub stage: i32,
    /// Why it halted or stopped.
    pub reason: Option<String>,
    /// Agents it took.
    pub agents: i32,
    /// Canary agents asked for.
    pub canary: i32,
    /// Each wave's percentage.
    #[schema(value_type = Vec<u8>)]
    pub waves: Value,
    /// Most agents updating at once, in percent of the target.
    pub max_in_flight: i32,
    /// The health gate.
    #[schema(value_type = Object)]
    pub health: Value,
    /// Each stage with its counts.
    pub stages: Vec<StageBody>,
    /// Who started it.
    pub created_by: String,
    /// When.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
}

impl RolloutView {
    fn new(view: Rollout, listed: BTreeMap<u32, Vec<RolloutAgentView>>) -> Self {
        let mut listed = listed;
        let Rollout {
            rollout: r,
            shown_state,
            stages,
        } = view;
        Self {
            id: r.id,
            version: r.version,
            target: r.target,
            state: shown_state,
            stage: r.stage,
            reason: r.reason,
            agents: r.agents,
            canary: r.canary,
            waves: r.waves,
            max_in_flight: r.max_in_flight,
            health: r.health,
            stages: stages
                .into_iter()
                .map(|s: StageView| StageBody {
                    listed: listed.remove(&s.stage).unwrap_or_default(),
                    stage: s.stage,
                    name: s.name,
                    agents: s.agents,
                    counts: s.counts,
                })
                .collect(),
            created_by: r.created_by,
            created_at: r.created_at,
            updated_at: r.updated_at,
            finished_at: r.finished_at,
        }
    }
}

/// A page of rollouts.
#[derive(Debug, Serialize, ToSchema)]
pub struct RolloutPage {
    /// Newest first.
    pub rollouts: Vec<RolloutView>,
    /// Give as `before` for the next page.
    pub next_cursor: Option<String>,
}

/// A page of a rollout's agents.
#[derive(Debug, Serialize, ToSchema)]
pub struct RolloutAgentPage {
    /// In the rollout's order.
    pub agents: Vec<RolloutAgentView>,
    /// Give as `after` for the next page.
    pub next_cursor: Option<String>,
}

/// `GET /api/rollouts`.
#[derive(Debug, Deserialize, IntoParams)]
pub struct ListQuery {
    /// From a previous page's `next_cursor`.
    #[param(nullable = false)]
    pub before: Option<String>,
    /// Page size, 1–100 (default 20).
    #[param(minimum = 1, maximum = 100, nullable = false)]
    #[serde(default, deserialize_with = "super::int64_count")]
    pub limit: Option<u64>,
}

/// `GET /api/rollouts/{id}/agents`.
#[derive(Debug, Deserialize, IntoParams)]
pub struct AgentsQuery {
    /// Only this stage (0 the canary).
    #[param(nullable = false, maximum = 20)]
    pub stage: Option<u32>,
    /// Only agents in this state.
    #[param(nullable = false, value_type = Option<RolloutAgentState>)]
    pub state: Option<String>,
    /// From a previous page's `next_cursor`.
    #[param(nullable = false)]
    pub after: Option<String>,
    /// Page size, 1–500 (default 100).
    #[param(minimum = 1, maximum = 500, nullable = false)]
    #[serde(default, deserialize_with = "super::int64_count")]
    pub limit: Option<u64>,
}

/// Body of `PUT /api/fleet/policy`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyBody {
    /// The oldest agent version the tenant accepts (null clears it): an `update` or rollout
    /// below it is refused.
    #[schema(value_type = Option<super::doc::ReleaseVersion>)]
    pub min_agent_version: Option<String>,
}

/// An agent below the minimum.
#[derive(Debug, Serialize, ToSchema)]
pub struct AgentBelow {
    /// The agent.
    pub agent_id: String,
    /// Its host name.
    pub hostname: String,
    /// Its version.
    pub version: String,
}

/// A target's desired version: what its last completed rollout reached.
#[derive(Debug, Serialize, ToSchema)]
pub struct DesiredView {
    /// The target.
    #[schema(value_type = Object)]
    pub target: Value,
    /// Its version.
    pub version: String,
    /// The rollout that set it.
    pub rollout_id: String,
}

/// The tenant's fleet policy.
#[derive(Debug, Serialize, ToSchema)]
pub struct PolicyView {
    /// The oldest agent version accepted.
    pub min_agent_version: Option<String>,
    /// Agents running an older one.
    pub agents_below: i64,
    /// The first 100 of them by host name.
    pub below: Vec<AgentBelow>,
    /// Each target's desired version.
    pub desired: Vec<DesiredView>,
}

impl From<Policy> for PolicyView {
    fn from(p: Policy) -> Self {
        Self {
            min_agent_version: p.min_agent_version,
            agents_below: p.below,
            below: p
                .agents_below
                .into_iter()
                .map(|(agent_id, hostname, version)| AgentBelow {
                    agent_id,
                    hostname,
                    version,
                })
                .collect(),
            desired: p
                .desired
                .into_iter()
                .map(|(target, version, rollout_id)| DesiredView {
                    target,
                    version,
                    rollout_id,
                })
                .collect(),
        }
    }
}

/// `value` within `min..=max`, or 400 naming `field` (the document states the bounds).
fn bounded(field: &str, value: u64, min: u64, max: u64) -> Result<u64, HttpError> {
    if (min..=max).contains(&value) {
        Ok(value)
    } else {
        Err(HttpError(DomainError::BadRequest(format!(
            "{field}: must be between {min} and {max}, not {value}"
        ))))
    }
}

async fn full_view(
    state: &AppState,
    caller: &outpost_store::domain::Caller,
    view: Rollout,
) -> Result<RolloutView, HttpError> {
    let mut listed = BTreeMap::new();
    for stage in &view.stages {
        let (rows, _) = state
            .services
            .rollouts
            .agents(
                caller,
                &view.rollout.id,
                Some(stage.stage),
                None,
                None,
                LISTED_PER_STAGE,
            )
            .await?;
        listed.insert(
            stage.stage,
            rows.into_iter().map(RolloutAgentView::from).collect(),
        );
    }
    Ok(RolloutView::new(view, listed))
}

/// Starts a rollout of an agent version over a target: canary agents first (at random),
/// then each wave, at most `max_in_flight` updating at once, each stage gated by the health
/// of the one before. Checked first (400: an unpublished version, an empty target, waves that
/// do not sum to 100, `max_in_flight` 0, a version below the tenant's minimum), then its
/// agents are taken (409 `rollout_conflict`: one is in another active rollout).
#[utoipa::path(post, operation_id = "startRollout", path = "/api/rollouts", tag = "rollouts", security(("bearer" = [])),
    request_body = StartBody,
    responses((status = 201, body = RolloutView, description = "Started; the canary is on its way"),
        (status = 403, body = crate::http_error::ErrorEnvelope, description = "Only owners and admins start rollouts"),
        (status = 409, body = crate::http_error::ErrorEnvelope, description = "`rollout_conflict`: agents of the target are in another active rollout")))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id))]
pub async fn start(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
    ApiJson(body): ApiJson<StartBody>,
) -> Result<(StatusCode, Json<RolloutView>), HttpError> {
    let health = body.health.map(|h| HealthRequest {
        online_within_s: h.online_within_s,
        soak_s: h.soak_s,
        min_healthy_percent: h.min_healthy_percent,
        script: h.script,
    });
    let view = state
        .services
        .rollouts
        .start(
            &caller,
            NewRollout {
                version: body.version,
                target: RolloutTarget {
                    tags: body.target.tags,
                    all: body.target.all,
                },
                canary: body.canary,
                waves: body.waves,
                max_in_flight: body.max_in_flight,
                health,
            },
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(full_view(&state, &caller, view).await?),
    ))
}

/// The tenant's rollouts, newest first, with their stages' counts.
#[utoipa::path(get, operation_id = "listRollouts", path = "/api/rollouts", tag = "rollouts", security(("bearer" = [])),
    params(ListQuery),
    responses((status = 200, body = RolloutPage)))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id))]
pub async fn list(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
    Query(query): Query<ListQuery>,
) -> Result<Json<RolloutPage>, HttpError> {
    let limit = bounded("limit", query.limit.unwrap_or(20), 1, 100)?;
    let (views, next_cursor) = state
        .services
        .rollouts
        .list(&caller, query.before.as_deref(), limit)
        .await?;
    Ok(Json(RolloutPage {
        rollouts: views
            .into_iter()
            .map(|v| RolloutView::new(v, BTreeMap::new()))
            .collect(),
        next_cursor,
    }))
}

/// One rollout: its state, each stage's counts by state and its first agents.
#[utoipa::path(get, operation_id = "showRollout", path = "/api/rollouts/{id}", tag = "rollouts", security(("bearer" = [])),
    params(("id" = String, Path, description = "Rollout id")),
    responses((status = 200, body = RolloutView), (status = 404, response = crate::api::doc::NotFound)))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id, rollout_id = %id))]
pub async fn show(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
    Path(id): Path<String>,
) -> Result<Json<RolloutView>, HttpError> {
    let view = state.services.rollouts.get(&caller, &id).await?;
    Ok(Json(full_view(&state, &caller, view).await?))
}

/// A page of a rollout's agents in its order, by stage and state.
#[utoipa::path(get, operation_id = "rolloutAgents", path = "/api/rollouts/{id}/agents", tag = "rollouts", security(("bearer" = [])),
    params(("id" = String, Path, description = "Rollout id"), AgentsQuery),
    responses((status = 200, body = RolloutAgentPage), (status = 404, response = crate::api::doc::NotFound)))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id, rollout_id = %id))]
pub async fn agents(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
    Path(id): Path<String>,
    Query(query): Query<AgentsQuery>,
) -> Result<Json<RolloutAgentPage>, HttpError> {
    let wanted = query
        .state
        .as_deref()
        .map(str::parse::<RolloutAgentState>)
        .transpose()
        .map_err(|why| HttpError(DomainError::BadRequest(format!("state: {why}"))))?;
    let limit = bounded("limit", query.limit.unwrap_or(100), 1, 500)?;
    if let Some(stage) = query.stage {
        bounded("stage", u64::from(stage), 0, 20)?;
    }
    let (rows, next_cursor) = state
        .services
        .rollouts
        .agents(
            &caller,
            &id,
            query.stage,
            wanted,
            query.after.as_deref(),
            limit,
        )
        .await?;
    Ok(Json(RolloutAgentPage {
        agents: rows.into_iter().map(RolloutAgentView::from).collect(),
        next_cursor,
    }))
}

macro_rules! rollout_action {
    ($name:ident, $op:tt, $path:tt, $doc:tt, $who:tt) => {
        #[doc = $doc]
        #[utoipa::path(post, operation_id = $op, path = $path, tag = "rollouts", security(("bearer" = [])),
            params(("id" = String, Path, description = "Rollout id")),
            responses((status = 200, body = RolloutView),
                (status = 403, body = crate::http_error::ErrorEnvelope, description = $who),
                (status = 404, response = crate::api::doc::NotFound),
                (status = 409, body = crate::http_error::ErrorEnvelope, description = "`rollout_state`: not allowed in the rollout's state; `release_missing`, `rollout_conflict` for a rollback")))]
        #[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id, rollout_id = %id))]
        pub async fn $name(
            State(state): State<AppState>,
            Authorized(caller): Authorized,
            Path(id): Path<String>,
        ) -> Result<Json<RolloutView>, HttpError> {
            let view = state.services.rollouts.$name(&caller, &id).await?;
            Ok(Json(full_view(&state, &caller, view).await?))
        }
    };
}

rollout_action!(
    pause,
    "pauseRollout",
    "/api/rollouts/{id}/pause",
    "Pauses a running rollout: nothing new is sent; agents on their way are still watched.",
    "Only owners and admins"
);
rollout_action!(
    resume,
    "resumeRollout",
    "/api/rollouts/{id}/resume",
    "Resumes a paused or halted rollout; from `halted`, the failed agents of the stage that halted it are tried again.",
    "Only owners and admins"
);
rollout_action!(
    abort,
    "abortRollout",
    "/api/rollouts/{id}/abort",
    "Stops a rollout for good; its agents keep the version they have.",
    "Only owners and admins"
);
rollout_action!(
    rollback,
    "rollbackRollout",
    "/api/rollouts/{id}/rollback",
    "Sends every agent the rollout updated back to the version it had (a downgrade: owners only). 409 `release_missing` when such a version is not published.",
    "Only owners"
);

/// The tenant's fleet policy, the agents below its minimum, and each target's desired version.
#[utoipa::path(get, operation_id = "fleetPolicy", path = "/api/fleet/policy", tag = "rollouts", security(("bearer" = [])),
    responses((status = 200, body = PolicyView)))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id))]
pub async fn policy(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
) -> Result<Json<PolicyView>, HttpError> {
    Ok(Json(state.services.rollouts.policy(&caller).await?.into()))
}

/// Sets the tenant's `min_agent_version` (owners).
#[utoipa::path(put, operation_id = "setFleetPolicy", path = "/api/fleet/policy", tag = "rollouts", security(("bearer" = [])),
    request_body = PolicyBody,
    responses((status = 200, body = PolicyView),
        (status = 403, body = crate::http_error::ErrorEnvelope, description = "Only owners")))]
#[tracing::instrument(level = "debug", skip_all, fields(tenant_id = %caller.tenant_id))]
pub async fn set_policy(
    State(state): State<AppState>,
    Authorized(caller): Authorized,
    ApiJson(body): ApiJson<PolicyBody>,
) -> Result<Json<PolicyView>, HttpError> {
    Ok(Json(
        state
            .services
            .rollouts
            .set_policy(&caller, body.min_agent_version)
            .await?
            .into(),
    ))
}
