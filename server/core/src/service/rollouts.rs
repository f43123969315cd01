//! Staged rollouts (CONTRACT.md §17): start one, follow it, stop it, send it back; the engine
//! that works every active rollout; a tenant's `min_agent_version`.
//!
//! The rules live in `crate::rollout` (pure, tested with injected time). Here they meet the
//! database and the bus: each look of the engine claims the active rollouts (the claim rule's
//! form 2, so one node works a rollout at a time and another takes it over once the first
//! node's lease lapses), reads the current stage's agents that are not final, asks
//! [`rollout::step`] what became of them, and writes that as conditional moves (form 1)
//! before it sends anything: an agent is marked `updating` first and sent its `update` only
//! if that move was made, so two nodes never both send it. An agent whose send fails (it went
//! offline in between, its key refuses updates) is moved on to `skipped` with the reason.
//!
//! A restart or a node's death loses nothing: everything a look knows is in the rows, and the
//! next look (here or on another node) reads it again. An `update` sent just before a node
//! died is waited for like any other; one marked `updating` whose send was never recorded is
//! sent again after [`rollout::RESEND_AFTER_S`] (twice is harmless: the supervisor does nothing
//! for the version it runs).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use outpost_protocol::commands;
use outpost_protocol::release::{UpdateStatus, Version};
use serde_json::{Value, json};
use tokio::sync::Notify;

use super::Core;
use super::access::{Access, Action, key_refusal};
use super::audit::record_of;
use super::commands::CommandSpec;
use super::jobs::{Jobs, Target};
use super::releases::Releases;
use crate::rollout::{
    self as waves, AgentNow, Check, Counts, Decision, Gate, Health, Mode, Plan, Seen,
};
use outpost_store::domain::{
    AuditAction, AuditEvent, AuditTarget, Caller, CommandState, DomainError,
    RolloutAgentState as AgentState, RolloutState,
};
use outpost_store::{
    AgentMove, NewEvent, RolloutAgentRow, RolloutMove, RolloutRefused, StageAgent, rollout,
    rollout_agent,
};

/// How often the engine looks at the active rollouts.
const TICK: Duration = Duration::from_secs(1);
/// How often agents behind their target's desired version are looked for.
const CONVERGE_EVERY: Duration = Duration::from_secs(10);
/// How long a convergence `update` counts as in flight: an agent sent one this recently is
/// not sent another (the default `online_within_s`).
const CONVERGE_IN_FLIGHT: chrono::Duration = chrono::Duration::seconds(300);
/// Active rollouts one node works per look.
const CLAIM_LIMIT: u64 = 32;
/// Most rollouts in a page of the list.
pub const MAX_PAGE: u64 = 100;
/// `409` code: an agent of the target is in another active rollout.
pub const ROLLOUT_CONFLICT: &str = "rollout_conflict";
/// `409` code: the rollout is not in a state that allows the action.
pub const ROLLOUT_STATE: &str = "rollout_state";
/// `409` code: a version a rollback needs is not published (CONTRACT.md §17).
pub const RELEASE_MISSING: &str = "release_missing";

/// Events a rollout emits (they feed integrations, CONTRACT.md §11).
pub const ROLLOUT_STARTED: &str = "rollout.started";
/// The health gate stopped it.
pub const ROLLOUT_HALTED: &str = "rollout.halted";
/// Every stage passed.
pub const ROLLOUT_COMPLETED: &str = "rollout.completed";
/// Its agents were sent back.
pub const ROLLOUT_ROLLED_BACK: &str = "rollout.rolled_back";

/// Who a rollout is for: agents with every one of `tags`, or `all` of the tenant's.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct RolloutTarget {
    /// Agents having all of these tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
    /// Every agent of the tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all: Option<bool>,
}

impl RolloutTarget {
    /// The target as one text: `all`, or `tags:a,b` (sorted): the key of its desired version.
    fn key(&self) -> Result<String, DomainError> {
        let tags = self.tags.clone().unwrap_or_default();
        match (self.all.unwrap_or(false), tags.is_empty()) {
            (true, true) => Ok("all".into()),
            (false, false) => {
                let mut tags = tags;
                tags.sort();
                tags.dedup();
                Ok(format!("tags:{}", tags.join(",")))
            }
            (true, false) => Err(DomainError::BadRequest(
                "target: give tags or all: true, not both".into(),
            )),
            (false, true) => Err(DomainError::BadRequest(
                "target: give tags (a non-empty list) or all: true".into(),
            )),
        }
    }
}

/// The health gate as asked; what is left out takes its default.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct HealthRequest {
    /// Default 300.
    pub online_within_s: Option<u32>,
    /// Default 120.
    pub soak_s: Option<u32>,
    /// Default 100.
    pub min_healthy_percent: Option<u8>,
    /// A script that must succeed on each updated agent after its soak.
    pub script: Option<String>,
}

/// A rollout to start.
#[derive(Debug, Clone)]
pub struct NewRollout {
    /// The version, `MAJOR.MINOR.PATCH`.
    pub version: String,
    /// Whom.
    pub target: RolloutTarget,
    /// Default 1.
    pub canary: Option<u32>,
    /// Default `[100]`.
    pub waves: Option<Vec<u8>>,
    /// Default 10.
    pub max_in_flight: Option<u8>,
    /// The gate.
    pub health: Option<HealthRequest>,
}

/// One stage as people read it.
#[derive(Debug, Clone)]
pub struct StageView {
    /// 0 the canary, then each wave.
    pub stage: u32,
    /// `canary`, `wave 1`, ….
    pub name: String,
    /// Its agents.
    pub agents: i64,
    /// Its agents by state.
    pub counts: BTreeMap<String, i64>,
}

/// A rollout with its stages.
#[derive(Debug, Clone)]
pub struct RolloutView {
    /// The row.
    pub rollout: rollout::Model,
    /// The state people read: `canary`, `wave N`, `paused`, ….
    pub shown_state: String,
    /// Each stage.
    pub stages: Vec<StageView>,
}

/// A tenant's fleet policy with the agents below it.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The oldest version it accepts.
    pub min_agent_version: Option<String>,
    /// How many agents run an older one.
    pub below: i64,
    /// The first of them by host name: (id, host name, version).
    pub agents_below: Vec<(String, String, String)>,
    /// Each target's desired version: (target, version, rollout).
    pub desired: Vec<(Value, String, String)>,
}

/// Rollouts and their engine.
#[derive(Clone)]
pub struct Rollouts {
    core: Arc<Core>,
    jobs: Jobs,
    releases: Releases,
    tick: Duration,
    wake: Arc<Notify>,
}

impl Rollouts {
    pub(super) fn new(core: Arc<Core>, jobs: Jobs, releases: Releases) -> Self {
        Self {
            core,
            jobs,
            releases,
            tick: TICK,
            wake: Arc::new(Notify::new()),
        }
    }

    /// The same service looking every `tick` (tests use a short one).
    #[must_use]
    pub fn with_tick(mut self, tick: Duration) -> Self {
        self.tick = tick;
        self
    }

    /// Starts a rollout: checks it (400), takes its agents in a random order (409 when one is
    /// in another active rollout), records it and wakes the engine.
    #[tracing::instrument(skip_all, fields(tenant_id = %caller.tenant_id))]
    pub async fn start(
        &self,
        caller: &Caller,
        new: NewRollout,
    ) -> Result<RolloutView, DomainError> {
        Access::require(caller, Action::ControlAgents)?;
        let version: Version = new
            .version
            .parse()
            .map_err(|e| DomainError::BadRequest(format!("version: {e}")))?;
        let health = new.health.unwrap_or_default();
        let defaults = Health::default();
        let plan = Plan {
            version,
            canary: new.canary.unwrap_or(1),
            waves: new.waves.unwrap_or_else(|| vec![100]),
            max_in_flight: new.max_in_flight.unwrap_or(10),
            health: Health {
                online_within_s: health.online_within_s.unwrap_or(defaults.online_within_s),
                soak_s: health.soak_s.unwrap_or(defaults.soak_s),
                min_healthy_percent: health
                    .min_healthy_percent
                    .unwrap_or(defaults.min_healthy_percent),
                script: health.script,
            },
        };
        plan.check().map_err(DomainError::BadRequest)?;
        if let Some(script) = &plan.health.script {
            outpost_protocol::bundle::split_reference(script)
                .and_then(|(name, _)| outpost_protocol::check::script_name(name))
                .map_err(|why| DomainError::BadRequest(format!("health.script: {why}")))?;
        }
        let target_key = new.target.key()?;
        self.check_minimum(&caller.tenant_id, &version).await?;
        if !self.releases.agent_servable(&version).await? {
            return Err(DomainError::BadRequest(format!(
                "version: {version} is not published (outpost-server release publish) and is not \
                 the build this server ships; agents could not download it"
            )));
        }
        let (agents, _) = self
            .jobs
            .resolve(
                caller,
                &Target {
                    agents: None,
                    tags: new.target.tags.clone(),
                    all: new.target.all,
                },
                false,
            )
            .await?;
        if agents.is_empty() {
            return Err(DomainError::BadRequest(
                "target: no agent of this tenant matches".into(),
            ));
        }
        let versions = self.core.store.agent_versions(&caller.tenant_id).await?;
        // A random order: the canary is any of the target's agents, not the first by name.
        let mut order: Vec<(u128, String)> = agents
            .into_iter()
            .map(|a| (uuid::Uuid::new_v4().as_u128(), a.id))
            .collect();
        order.sort_unstable();
        let stages = plan.stages(order.len());
        let now = outpost_store::now();
        let id = uuid::Uuid::now_v7().to_string();
        let rows: Vec<rollout_agent::Model> = order
            .into_iter()
            .zip(stages)
            .enumerate()
            .map(|(seq, ((_, agent_id), stage))| rollout_agent::Model {
                rollout_id: id.clone(),
                from_version: versions.get(&agent_id).cloned().unwrap_or_default(),
                agent_id,
                tenant_id: caller.tenant_id.clone(),
                seq: seq as i32,
                stage: stage as i32,
                state: AgentState::Pending.as_str().into(),
                sent_at: None,
                soak_from: None,
                command_id: None,
                check_id: None,
                reason: None,
                updated_at: now,
                held: true,
            })
            .collect();
        let health_json = json!({
            "online_within_s": plan.health.online_within_s,
            "soak_s": plan.health.soak_s,
            "min_healthy_percent": plan.health.min_healthy_percent,
            "script": plan.health.script,
        });
        let model = rollout::Model {
            id: id.clone(),
            tenant_id: caller.tenant_id.clone(),
            version: version.to_string(),
            target: serde_json::to_value(&new.target).unwrap_or(Value::Null),
            target_key,
            canary: plan.canary as i32,
            waves: json!(plan.waves),
            max_in_flight: i32::from(plan.max_in_flight),
            health: health_json,
            state: RolloutState::Running.as_str().into(),
            stage: 0,
            agents: rows.len() as i32,
            reason: None,
            created_by: caller.label.clone(),
            created_at: now,
            updated_at: now,
            finished_at: None,
            claimed_by: None,
            claimed_until: None,
        };
        let audit = record_of(
            caller,
            AuditEvent::new(AuditAction::RolloutStart, AuditTarget::Rollout, &id).with(json!({
                "version": model.version,
                "target": model.target,
                "agents": model.agents,
                "canary": model.canary,
                "waves": model.waves,
                "max_in_flight": model.max_in_flight,
            })),
        );
        let event = rollout_event(&model, ROLLOUT_STARTED, "started", None);
        match self
            .core
            .store
            .insert_rollout(model.clone(), rows, &audit, event)
            .await?
        {
            Ok(()) => {}
            Err(RolloutRefused::Held(taken)) => {
                let listed = taken
                    .iter()
                    .map(|(agent, rollout)| format!("{agent} (rollout {rollout})"))
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(DomainError::Conflict {
                    code: ROLLOUT_CONFLICT,
                    message: if listed.is_empty() {
                        "agents of this target are in another active rollout; abort or finish it first"
                            .into()
                    } else {
                        format!(
                            "agents of this target are in another active rollout: {listed}; abort or finish it first"
                        )
                    },
                });
            }
        }
        self.wake.notify_one();
        self.get(caller, &id).await
    }

    /// One rollout with its stages' counts.
    pub async fn get(&self, caller: &Caller, id: &str) -> Result<RolloutView, DomainError> {
        let rollout = self.find(caller, id).await?;
        self.view(rollout).await
    }

    async fn view(&self, rollout: rollout::Model) -> Result<RolloutView, DomainError> {
        let counts = self.core.store.rollout_counts(&rollout.id).await?;
        Ok(view_of(rollout, counts))
    }

    /// A page of the tenant's rollouts, newest first, and the cursor of the next.
    pub async fn list(
        &self,
        caller: &Caller,
        before: Option<&str>,
        limit: u64,
    ) -> Result<(Vec<RolloutView>, Option<String>), DomainError> {
        let limit = limit.clamp(1, MAX_PAGE);
        let mut rows = self
            .core
            .store
            .list_rollouts(&caller.tenant_id, before, limit + 1)
            .await?;
        let next = if rows.len() as u64 > limit {
            rows.truncate(limit as usize);
            rows.last().map(|r| r.id.clone())
        } else {
            None
        };
        // One query for the page's counts, not one per rollout.
        let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
        let mut counts: HashMap<String, Vec<(i32, String, i64)>> = HashMap::new();
        for (id, stage, state, n) in self.core.store.rollouts_counts(&ids).await? {
            counts.entry(id).or_default().push((stage, state, n));
        }
        let out = rows
            .into_iter()
            .map(|row| {
                let counts = counts.remove(&row.id).unwrap_or_default();
                view_of(row, counts)
            })
            .collect();
        Ok((out, next))
    }

    /// A page of a rollout's agents (of one stage and state), in its order, after the
    /// cursor `STAGE:SEQ`.
    pub async fn agents(
        &self,
        caller: &Caller,
        id: &str,
        stage: Option<u32>,
        state: Option<AgentState>,
        after: Option<&str>,
        limit: u64,
    ) -> Result<(Vec<RolloutAgentRow>, Option<String>), DomainError> {
        let rollout = self.find(caller, id).await?;
        let after = after
            .map(|cursor| {
                cursor
                    .split_once(':')
                    .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
                    .ok_or_else(|| {
                        DomainError::BadRequest(format!(
                            "after: {cursor:?} is not a cursor this API gave"
                        ))
                    })
            })
            .transpose()?;
        let limit = limit.clamp(1, outpost_store::MAX_ROLLOUT_AGENTS_PAGE);
        let mut rows = self
            .core
            .store
            .rollout_agents_page(&rollout, stage.map(|s| s as i32), state, after, limit + 1)
            .await?;
        let next = if rows.len() as u64 > limit {
            rows.truncate(limit as usize);
            rows.last()
                .map(|r| format!("{}:{}", r.row.stage, r.row.seq))
        } else {
            None
        };
        Ok((rows, next))
    }

    /// Pauses a running rollout: nothing new is sent; agents on their way are still watched.
    pub async fn pause(&self, caller: &Caller, id: &str) -> Result<RolloutView, DomainError> {
        self.act(caller, id, AuditAction::RolloutPause, |r| match r {
            RolloutState::Running => Ok((RolloutState::Paused, None)),
            other => Err(format!(
                "a {other} rollout cannot be paused; only a running one"
            )),
        })
        .await
    }

    /// Resumes a paused or halted rollout. From `halted`, the failed agents of the stage that
    /// halted it are tried again (a person judged the cause fixed).
    pub async fn resume(&self, caller: &Caller, id: &str) -> Result<RolloutView, DomainError> {
        let rollout = self.find(caller, id).await?;
        if rollout.state == RolloutState::Halted.as_str() {
            Access::require(caller, Action::ControlAgents)?;
            self.core
                .store
                .reset_rollout_agents(
                    &rollout.id,
                    Some(rollout.stage),
                    &[AgentState::Failed],
                    AgentState::Pending,
                    outpost_store::now(),
                )
                .await?;
        }
        self.act(caller, id, AuditAction::RolloutResume, |r| match r {
            RolloutState::Paused | RolloutState::Halted => Ok((RolloutState::Running, None)),
            other => Err(format!(
                "a {other} rollout cannot be resumed; only a paused or halted one"
            )),
        })
        .await
    }

    /// Aborts a rollout for good: its agents keep the version they have and are free for
    /// another rollout.
    pub async fn abort(&self, caller: &Caller, id: &str) -> Result<RolloutView, DomainError> {
        self.act(caller, id, AuditAction::RolloutAbort, |r| match r {
            RolloutState::Running | RolloutState::Paused | RolloutState::Halted => {
                Ok((RolloutState::Aborted, Some("aborted by a person".into())))
            }
            other => Err(format!("a {other} rollout cannot be aborted")),
        })
        .await
    }

    /// Sends every agent the rollout updated back to the version it had (an owner: it is a
    /// downgrade). Every such version must be one the server can serve (409
    /// `release_missing`) and not below the tenant's minimum (400).
    pub async fn rollback(&self, caller: &Caller, id: &str) -> Result<RolloutView, DomainError> {
        Access::require(caller, Action::ForceUpdate)?;
        let rollout = self.find(caller, id).await?;
        let state: RolloutState = parse_state(&rollout.state)?;
        if matches!(state, RolloutState::RollingBack | RolloutState::RolledBack) {
            return Err(DomainError::Conflict {
                code: ROLLOUT_STATE,
                message: format!("this rollout is {state} already"),
            });
        }
        for version in self.core.store.rollout_from_versions(&rollout.id).await? {
            let Ok(parsed) = version.parse::<Version>() else {
                return Err(DomainError::Conflict {
                    code: RELEASE_MISSING,
                    message: format!(
                        "an agent of this rollout ran {version:?}, which is not a version the server can serve"
                    ),
                });
            };
            if !self.releases.agent_servable(&parsed).await? {
                return Err(DomainError::Conflict {
                    code: RELEASE_MISSING,
                    message: format!(
                        "agents of this rollout ran {parsed}, which is not published; publish it \
                         (outpost-server release publish) to roll back"
                    ),
                });
            }
            self.check_minimum(&caller.tenant_id, &parsed).await?;
        }
        let audit = record_of(
            caller,
            AuditEvent::new(
                AuditAction::RolloutRollback,
                AuditTarget::Rollout,
                &rollout.id,
            )
            .with(json!({"version": rollout.version, "from_state": state.as_str()})),
        );
        match self
            .core
            .store
            .start_rollback(&rollout, state, &audit, outpost_store::now())
            .await?
        {
            Ok(true) => {}
            Ok(false) => return Err(changed_meanwhile()),
            Err(RolloutRefused::Held(taken)) => {
                return Err(DomainError::Conflict {
                    code: ROLLOUT_CONFLICT,
                    message: format!(
                        "agents this rollout updated are in another active rollout now ({}); \
                         abort or finish it first",
                        taken
                            .iter()
                            .map(|(agent, rollout)| format!("{agent} in {rollout}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                });
            }
        }
        self.wake.notify_one();
        self.get(caller, id).await
    }

    async fn act(
        &self,
        caller: &Caller,
        id: &str,
        action: AuditAction,
        next: impl Fn(RolloutState) -> Result<(RolloutState, Option<String>), String>,
    ) -> Result<RolloutView, DomainError> {
        Access::require(caller, Action::ControlAgents)?;
        let rollout = self.find(caller, id).await?;
        let state = parse_state(&rollout.state)?;
        let (to, reason) = next(state).map_err(|message| DomainError::Conflict {
            code: ROLLOUT_STATE,
            message,
        })?;
        let audit = record_of(
            caller,
            AuditEvent::new(action, AuditTarget::Rollout, &rollout.id)
                .with(json!({"from_state": state.as_str(), "to_state": to.as_str()})),
        );
        let moved = self
            .core
            .store
            .move_rollout(
                &rollout,
                None,
                &RolloutMove {
                    from: state,
                    from_stage: rollout.stage,
                    to,
                    to_stage: rollout.stage,
                    reason,
                },
                None,
                Some(&audit),
                outpost_store::now(),
            )
            .await?;
        if !moved {
            return Err(changed_meanwhile());
        }
        self.wake.notify_one();
        self.get(caller, id).await
    }

    async fn find(&self, caller: &Caller, id: &str) -> Result<rollout::Model, DomainError> {
        self.core
            .store
            .get_rollout(&caller.tenant_id, id)
            .await?
            .ok_or_else(|| DomainError::NotFound(format!("no rollout {id}")))
    }

    /// Refuses `version` below the tenant's `min_agent_version` (400).
    async fn check_minimum(&self, tenant_id: &str, version: &Version) -> Result<(), DomainError> {
        if let Some(why) = self.core.minimum_refusal(tenant_id, version).await? {
            return Err(DomainError::BadRequest(why));
        }
        Ok(())
    }

    /// The tenant's fleet policy, the agents below its minimum and its desired versions.
    pub async fn policy(&self, caller: &Caller) -> Result<Policy, DomainError> {
        let store = &self.core.store;
        let min = store
            .fleet_policy(&caller.tenant_id)
            .await?
            .and_then(|p| p.min_agent_version);
        let mut below = 0;
        let mut agents_below = Vec::new();
        if let Some(min) = min.as_deref().and_then(|m| m.parse::<Version>().ok()) {
            let lower: Vec<(String, i64)> = store
                .version_counts(&caller.tenant_id)
                .await?
                .into_iter()
                .filter(|(v, _)| v.parse::<Version>().map_or(true, |v| v < min))
                .collect();
            below = lower.iter().map(|(_, n)| n).sum();
            let versions: Vec<String> = lower.into_iter().map(|(v, _)| v).collect();
            agents_below = store
                .agents_at_versions(&caller.tenant_id, &versions, 100)
                .await?;
        }
        let desired = store
            .desired_versions(&caller.tenant_id)
            .await?
            .into_iter()
            .map(|d| (d.target, d.version, d.rollout_id))
            .collect();
        Ok(Policy {
            min_agent_version: min,
            below,
            agents_below,
            desired,
        })
    }

    /// Sets (or with `None` clears) the tenant's `min_agent_version` (owners).
    pub async fn set_policy(
        &self,
        caller: &Caller,
        min_agent_version: Option<String>,
    ) -> Result<Policy, DomainError> {
        Access::require(caller, Action::ForceUpdate)?;
        let min = min_agent_version
            .map(|v| {
                v.parse::<Version>()
                    .map_err(|e| DomainError::BadRequest(format!("min_agent_version: {e}")))
            })
            .transpose()?;
        let audit = record_of(
            caller,
            AuditEvent::new(
                AuditAction::FleetPolicy,
                AuditTarget::Tenant,
                &caller.tenant_id,
            )
            .with(json!({"min_agent_version": min.map(|v| v.to_string())})),
        );
        self.core
            .store
            .set_fleet_policy(
                &caller.tenant_id,
                min.map(|v| v.to_string()),
                &audit,
                outpost_store::now(),
            )
            .await?;
        self.policy(caller).await
    }

    /// The engine: looks at the active rollouts every tick (or at once when one is started
    /// or changed), until the server stops.
    pub async fn run(self) {
        let stop = self.core.shutdown.clone();
        let mut converged = std::time::Instant::now();
        loop {
            if let Err(err) = self.look(outpost_store::now()).await {
                tracing::warn!(error = %err, "rollout engine: a look failed; trying again");
            }
            if converged.elapsed() >= CONVERGE_EVERY {
                converged = std::time::Instant::now();
                if let Err(err) = self.converge(outpost_store::now()).await {
                    tracing::warn!(error = %err, "rollout engine: convergence failed; trying again");
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(self.tick) => {}
            }
        }
    }

    /// One look at every active rollout this node can claim.
    pub async fn look(&self, now: DateTime<Utc>) -> Result<(), DomainError> {
        let rollouts = self
            .core
            .store
            .claim_rollouts(&self.core.node, now, CLAIM_LIMIT)
            .await?;
        for rollout in rollouts {
            if let Err(err) = self.look_at(&rollout, now).await {
                tracing::warn!(rollout_id = %rollout.id, error = %err, "rollout engine: a rollout's look failed");
            }
        }
        Ok(())
    }

    /// Sends agents behind their target's desired version the `update` to it (CONTRACT.md
    /// §17): agents of the target that run an older version, are online, can update, are in
    /// no active rollout and were not sent an `update` in the last 300 s; at most the desired
    /// version's `max_in_flight` of the target at once. An agent whose supervisor rolled this
    /// version back is left alone: a person decides (a new rollout).
    pub async fn converge(&self, now: DateTime<Utc>) -> Result<(), DomainError> {
        let desired = self
            .core
            .store
            .claim_desired_versions(&self.core.node, now, CLAIM_LIMIT)
            .await?;
        for d in desired {
            if let Err(err) = self.converge_one(&d, now).await {
                tracing::warn!(target_key = %d.target_key, error = %err, "rollout engine: converging a target failed");
            }
        }
        Ok(())
    }

    async fn converge_one(
        &self,
        desired: &outpost_store::desired_version::Model,
        now: DateTime<Utc>,
    ) -> Result<(), DomainError> {
        let store = &self.core.store;
        let tenant = &desired.tenant_id;
        let version: Version = desired
            .version
            .parse()
            .map_err(|e: outpost_protocol::release::BadVersion| bad_row(e.to_string()))?;
        let target: RolloutTarget =
            serde_json::from_value(desired.target.clone()).map_err(|e| bad_row(e.to_string()))?;
        let agents = self
            .jobs
            .resolve_in(
                tenant,
                &Target {
                    agents: None,
                    tags: target.tags,
                    all: target.all,
                },
            )
            .await?;
        if agents.is_empty() {
            return Ok(());
        }
        let versions = store.agent_versions(tenant).await?;
        let held: std::collections::HashSet<String> =
            store.held_agents(tenant).await?.into_iter().collect();
        let behind: Vec<String> = agents
            .iter()
            .filter(|a| {
                versions
                    .get(&a.id)
                    .and_then(|v| v.parse::<Version>().ok())
                    .is_some_and(|v| v < version)
            })
            .filter(|a| !held.contains(&a.id))
            .map(|a| a.id.clone())
            .collect();
        if behind.is_empty() {
            return Ok(());
        }
        let recent: std::collections::HashSet<String> = store
            .agents_updated_since(tenant, &behind, now - CONVERGE_IN_FLIGHT)
            .await?
            .into_iter()
            .collect();
        let limit = (agents.len() * desired.max_in_flight.clamp(1, 100) as usize)
            .div_ceil(100)
            .max(1);
        let mut budget = limit.saturating_sub(recent.len());
        if budget == 0 {
            return Ok(());
        }
        let candidates: Vec<String> = behind
            .into_iter()
            .filter(|id| !recent.contains(id))
            .collect();
        let fields = store
            .agent_fields(tenant, candidates.iter().cloned())
            .await?;
        let keys = store.list_agent_keys(tenant).await?;
        for id in candidates {
            if budget == 0 {
                break;
            }
            let Some(agent) = fields.get(&id) else {
                continue;
            };
            let capable = agent.capabilities.contains(commands::UPDATE)
                && key_refusal(
                    "",
                    keys.iter().find(|k| k.id == agent.key_id),
                    commands::UPDATE,
                )
                .is_none();
            let rolled_back = agent
                .update_status
                .clone()
                .and_then(|v| serde_json::from_value::<UpdateStatus>(v).ok())
                .is_some_and(|r| {
                    r.status == outpost_protocol::release::update_status::ROLLED_BACK
                        && r.to.as_deref() == Some(desired.version.as_str())
                });
            if !agent.online() || !capable || rolled_back {
                continue;
            }
            let sent = async {
                let spec = CommandSpec::new(
                    commands::UPDATE.to_owned(),
                    Some(json!({"version": desired.version})),
                    None,
                    None,
                )?;
                let (row, key) = store
                    .get_agent_with_key(tenant, &id)
                    .await?
                    .ok_or_else(|| DomainError::NotFound(format!("no agent {id}")))?;
                self.core
                    .store_and_deliver(&row, key.as_ref(), &spec, false, None)
                    .await
            }
            .await;
            match sent {
                Ok(_) => {
                    budget -= 1;
                    tracing::info!(agent_id = %id, version = %desired.version, "sent an agent behind its desired version the update");
                }
                Err(err) => {
                    tracing::debug!(agent_id = %id, error = %err, "convergence update not sent");
                }
            }
        }
        Ok(())
    }

    #[tracing::instrument(skip_all, fields(rollout_id = %rollout.id, state = %rollout.state, stage = rollout.stage))]
    async fn look_at(
        &self,
        rollout: &rollout::Model,
        now: DateTime<Utc>,
    ) -> Result<(), DomainError> {
        let state = parse_state(&rollout.state)?;
        let plan = plan_of(rollout)?;
        let counts = self.core.store.rollout_counts(&rollout.id).await?;
        let in_flight: usize = counts
            .iter()
            .filter(|(_, s, _)| {
                s == AgentState::Updating.as_str() || s == AgentState::Reverting.as_str()
            })
            .map(|(_, _, n)| *n as usize)
            .sum();
        let limit = plan.in_flight_limit(rollout.agents.max(0) as usize);
        let budget = limit.saturating_sub(in_flight) as u64;
        let keys = self.core.store.list_agent_keys(&rollout.tenant_id).await?;
        let (mode, stage, waiting, pending) = match state {
            RolloutState::Running => (
                Mode::Forward,
                Some(rollout.stage),
                &[
                    AgentState::Updating,
                    AgentState::Soaking,
                    AgentState::Checking,
                ][..],
                Some(AgentState::Pending),
            ),
            RolloutState::Paused | RolloutState::Halted => (
                Mode::Watch,
                Some(rollout.stage),
                &[
                    AgentState::Updating,
                    AgentState::Soaking,
                    AgentState::Checking,
                ][..],
                None,
            ),
            RolloutState::RollingBack => (
                Mode::Revert,
                None,
                &[AgentState::Reverting][..],
                Some(AgentState::RevertPending),
            ),
            _ => return Ok(()),
        };
        let mut rows = self
            .core
            .store
            .rollout_stage_agents(rollout, stage, waiting, u64::MAX >> 1)
            .await?;
        if let Some(pending) = pending {
            // Pending agents past the budget would only be read to wait; agents that are
            // already at the version, or skipped, do not use it, so a little more is read.
            // The agents in flight may land in this look and free their places for these.
            let landing = rows
                .iter()
                .filter(|r| {
                    r.row.state == AgentState::Updating.as_str()
                        || r.row.state == AgentState::Reverting.as_str()
                })
                .count() as u64;
            let room = budget + landing;
            let more = if room == 0 { 0 } else { room * 2 + 16 };
            rows.extend(
                self.core
                    .store
                    .rollout_stage_agents(rollout, stage, &[pending], more)
                    .await?,
            );
        }
        let seen: Vec<Seen> = rows.iter().map(|r| seen_of(r, &keys)).collect();
        let mut stage_counts = Counts::default();
        for (s, st, n) in &counts {
            if Some(*s) != stage && stage.is_some() {
                continue;
            }
            let n = *n as usize;
            stage_counts.total += n;
            if st == AgentState::Healthy.as_str() {
                stage_counts.healthy += n;
            } else if st == AgentState::Failed.as_str() {
                stage_counts.failed += n;
            } else if st == AgentState::Skipped.as_str() || st == AgentState::Ahead.as_str() {
                stage_counts.uncounted += n;
            }
        }
        let (decisions, gate) =
            waves::step(&plan, mode, &seen, stage_counts, in_flight, limit, now);
        let rolling_back = mode == Mode::Revert;
        let mut moves = Vec::new();
        let mut sends = Vec::new();
        let mut checks = Vec::new();
        for (row, decision) in rows.iter().zip(decisions) {
            let Some(decision) = decision else { continue };
            let from: AgentState = row.row.state.parse().map_err(bad_row)?;
            let mut m = AgentMove::new(
                &row.row.agent_id,
                from,
                decision.state(rolling_back),
                decision.reason().map(str::to_owned),
            );
            match decision {
                Decision::Send => {
                    m.sent_at = Some(now);
                    sends.push(row);
                }
                Decision::Soak => m.soak_from = Some(now),
                Decision::Check => checks.push(row),
                _ => {}
            }
            moves.push(m);
        }
        let made = self
            .core
            .store
            .move_rollout_agents(&rollout.id, &self.core.node, moves, now)
            .await?;
        let made: std::collections::HashSet<String> =
            made.into_iter().map(|m| m.agent_id).collect();
        // Sent only once the move that claims the agent was made.
        let mut after = Vec::new();
        for row in sends.into_iter().filter(|r| made.contains(&r.row.agent_id)) {
            let (version, force) = if rolling_back {
                (row.row.from_version.clone(), true)
            } else {
                (rollout.version.clone(), false)
            };
            let mut data = json!({"version": version});
            if force {
                data["force"] = true.into();
            }
            let to = if rolling_back {
                AgentState::Reverting
            } else {
                AgentState::Updating
            };
            after.push(
                self.send(row, to, commands::UPDATE, data, rolling_back)
                    .await,
            );
        }
        for row in checks
            .into_iter()
            .filter(|r| made.contains(&r.row.agent_id))
        {
            let script = plan.health.script.clone().unwrap_or_default();
            after.push(
                self.send(
                    row,
                    AgentState::Checking,
                    commands::RUN,
                    json!({"script": script}),
                    false,
                )
                .await,
            );
        }
        if !after.is_empty() {
            self.core
                .store
                .move_rollout_agents(&rollout.id, &self.core.node, after, now)
                .await?;
        }
        self.gate(rollout, state, &plan, gate, rolling_back, now)
            .await
    }

    /// Sends one agent a command; the move that records it (its id), or that records why it
    /// could not be sent.
    async fn send(
        &self,
        row: &StageAgent,
        from: AgentState,
        command: &str,
        data: Value,
        rolling_back: bool,
    ) -> AgentMove {
        let agent_id = &row.row.agent_id;
        let sent = async {
            let spec = CommandSpec::new(command.to_owned(), Some(data), None, None)?;
            let (agent, key) = self
                .core
                .store
                .get_agent_with_key(&row.row.tenant_id, agent_id)
                .await?
                .ok_or_else(|| DomainError::NotFound(format!("no agent {agent_id}")))?;
            self.core
                .store_and_deliver(&agent, key.as_ref(), &spec, false, None)
                .await
        }
        .await;
        match sent {
            Ok(command) => {
                let mut m = AgentMove::new(agent_id, from, from, None);
                if from == AgentState::Checking {
                    m.check_id = Some(command.id);
                } else {
                    m.command_id = Some(command.id);
                }
                m
            }
            Err(err) => {
                let to = match (from, rolling_back) {
                    (AgentState::Checking, _) => AgentState::Failed,
                    (_, true) => AgentState::RevertFailed,
                    _ => AgentState::Skipped,
                };
                AgentMove::new(agent_id, from, to, Some(format!("not sent: {err}")))
            }
        }
    }

    /// Acts on the stage's gate: the next stage, completion, a halt, or the end of a
    /// rollback.
    async fn gate(
        &self,
        rollout: &rollout::Model,
        state: RolloutState,
        plan: &Plan,
        gate: Gate,
        rolling_back: bool,
        now: DateTime<Utc>,
    ) -> Result<(), DomainError> {
        let store = &self.core.store;
        let node = Some(self.core.node.as_str());
        let mv = |to: RolloutState, to_stage: i32, reason: Option<String>| RolloutMove {
            from: state,
            from_stage: rollout.stage,
            to,
            to_stage,
            reason,
        };
        if rolling_back {
            let open = store
                .rollout_counts(&rollout.id)
                .await?
                .into_iter()
                .filter(|(_, s, _)| {
                    s == AgentState::RevertPending.as_str() || s == AgentState::Reverting.as_str()
                })
                .count();
            if open == 0 {
                let event = rollout_event(rollout, ROLLOUT_ROLLED_BACK, "rolled back", None);
                store
                    .move_rollout(
                        rollout,
                        node,
                        &mv(RolloutState::RolledBack, rollout.stage, None),
                        Some(event),
                        None,
                        now,
                    )
                    .await?;
            }
            return Ok(());
        }
        if state != RolloutState::Running {
            return Ok(());
        }
        match gate {
            Gate::Wait => Ok(()),
            Gate::Pass if (rollout.stage as u32) + 1 < plan.stage_count() => {
                tracing::info!(rollout_id = %rollout.id, stage = rollout.stage, "rollout stage passed; the next starts");
                store
                    .move_rollout(
                        rollout,
                        node,
                        &mv(RolloutState::Running, rollout.stage + 1, None),
                        None,
                        None,
                        now,
                    )
                    .await?;
                self.wake.notify_one();
                Ok(())
            }
            Gate::Pass => {
                let event = rollout_event(rollout, ROLLOUT_COMPLETED, "completed", None);
                store
                    .move_rollout(
                        rollout,
                        node,
                        &mv(RolloutState::Completed, rollout.stage, None),
                        Some(event),
                        None,
                        now,
                    )
                    .await?;
                Ok(())
            }
            Gate::Halt(why) => {
                let reason = format!("{}: {why}", waves::stage_name(rollout.stage as u32));
                tracing::warn!(rollout_id = %rollout.id, %reason, "rollout halted");
                let event = rollout_event(rollout, ROLLOUT_HALTED, "halted", Some(&reason));
                store
                    .move_rollout(
                        rollout,
                        node,
                        &mv(RolloutState::Halted, rollout.stage, Some(reason.clone())),
                        Some(event),
                        None,
                        now,
                    )
                    .await?;
                Ok(())
            }
        }
    }
}

impl Core {
    /// Why `version` may not be sent to the tenant's agents: it is below the tenant's
    /// `min_agent_version` (CONTRACT.md §17).
    pub(super) async fn minimum_refusal(
        &self,
        tenant_id: &str,
        version: &Version,
    ) -> Result<Option<String>, DomainError> {
        let Some(min) = self
            .store
            .fleet_policy(tenant_id)
            .await?
            .and_then(|p| p.min_agent_version)
            .and_then(|m| m.parse::<Version>().ok())
        else {
            return Ok(None);
        };
        Ok((*version < min).then(|| {
            format!(
                "version: {version} is below this tenant's min_agent_version {min} (PUT /api/fleet/policy)"
            )
        }))
    }
}

fn changed_meanwhile() -> DomainError {
    DomainError::Conflict {
        code: ROLLOUT_STATE,
        message: "the rollout changed meanwhile; read it again".into(),
    }
}

fn bad_row(why: String) -> DomainError {
    DomainError::Internal(anyhow::anyhow!("a rollout row does not read: {why}"))
}

fn parse_state(text: &str) -> Result<RolloutState, DomainError> {
    text.parse().map_err(bad_row)
}

fn stage_count(rollout: &rollout::Model) -> u32 {
    rollout.waves.as_array().map_or(0, Vec::len) as u32 + 1
}

/// The state people read: a running rollout by its stage.
pub fn shown_state(rollout: &rollout::Model) -> String {
    if rollout.state == RolloutState::Running.as_str() {
        waves::stage_name(rollout.stage.max(0) as u32)
    } else {
        rollout.state.clone()
    }
}

/// A stored rollout's plan.
fn plan_of(rollout: &rollout::Model) -> Result<Plan, DomainError> {
    let version = rollout
        .version
        .parse()
        .map_err(|e: outpost_protocol::release::BadVersion| bad_row(e.to_string()))?;
    let waves = rollout
        .waves
        .as_array()
        .map(|w| {
            w.iter()
                .filter_map(Value::as_u64)
                .map(|p| p.min(100) as u8)
                .collect()
        })
        .unwrap_or_default();
    let h = &rollout.health;
    let num = |field: &str, default: u32| {
        h.get(field)
            .and_then(Value::as_u64)
            .map_or(default, |v| v.min(u64::from(u32::MAX)) as u32)
    };
    let defaults = Health::default();
    Ok(Plan {
        version,
        canary: rollout.canary.max(0) as u32,
        waves,
        max_in_flight: rollout.max_in_flight.clamp(1, 100) as u8,
        health: Health {
            online_within_s: num("online_within_s", defaults.online_within_s),
            soak_s: num("soak_s", defaults.soak_s),
            min_healthy_percent: num("min_healthy_percent", 100).min(100) as u8,
            script: h.get("script").and_then(Value::as_str).map(str::to_owned),
        },
    })
}

/// What the engine needs of one row.
fn seen_of(row: &StageAgent, keys: &[outpost_store::agent_key::Model]) -> Seen {
    let agent = row.agent.as_ref().map(|a| {
        let key = keys.iter().find(|k| k.id == a.key_id);
        let capable = a.capabilities.contains(commands::UPDATE);
        AgentNow {
            version: a.version.clone(),
            online: a.online(),
            connected_at: a.connected_at,
            can_update: capable && key_refusal("", key, commands::UPDATE).is_none(),
            report: a
                .update_status
                .clone()
                .and_then(|v| serde_json::from_value::<UpdateStatus>(v).ok()),
        }
    });
    let check = row.check.as_ref().map(|(state, success, exit, message)| {
        match state.parse::<CommandState>() {
            Ok(CommandState::Succeeded) if success.unwrap_or(true) => Check::Passed,
            Ok(s) if s.is_final() => Check::Failed(match (exit, message) {
                (Some(code), _) => format!("{s}, exit code {code}"),
                (None, Some(message)) => format!("{s}: {message}"),
                (None, None) => s.to_string(),
            }),
            _ => Check::Running,
        }
    });
    let state = row.row.state.parse().unwrap_or(AgentState::Failed);
    Seen {
        state,
        from_version: row.row.from_version.clone(),
        sent_at: row.row.sent_at,
        soak_from: row.row.soak_from,
        sent: match state {
            AgentState::Checking => row.row.check_id.is_some(),
            _ => row.row.command_id.is_some(),
        },
        changed_at: row.row.updated_at,
        agent,
        check,
    }
}

/// A rollout's event (`rollout.started|halted|completed|rolled_back`), once per rollout and
/// kind (a step retried by another node records it once).
fn rollout_event<'a>(
    rollout: &'a rollout::Model,
    kind: &'a str,
    verb: &str,
    reason: Option<&str>,
) -> NewEvent<'a> {
    NewEvent {
        tenant_id: &rollout.tenant_id,
        kind,
        subject: ("rollout", &rollout.id, &rollout.version),
        summary: match reason {
            Some(reason) => format!("rollout of {} {verb}: {reason}", rollout.version),
            None => format!("rollout of {} {verb}", rollout.version),
        },
        detail: json!({
            "rollout_id": rollout.id,
            "version": rollout.version,
            "target": rollout.target,
            "agents": rollout.agents,
            "stage": waves::stage_name(rollout.stage.max(0) as u32),
            "reason": reason,
        }),
        dedup_key: Some(format!(
            "{kind}:{}:{}",
            rollout.id,
            rollout.updated_at.timestamp_micros()
        )),
    }
}

/// A rollout with its agents' counts by stage and state.
fn view_of(rollout: rollout::Model, counts: Vec<(i32, String, i64)>) -> RolloutView {
    let stage_count = stage_count(&rollout);
    let mut stages: Vec<StageView> = (0..stage_count)
        .map(|stage| StageView {
            stage,
            name: waves::stage_name(stage),
            agents: 0,
            counts: BTreeMap::new(),
        })
        .collect();
    for (stage, state, n) in counts {
        if let Some(view) = stages.get_mut(stage.max(0) as usize) {
            view.agents += n;
            *view.counts.entry(state).or_default() += n;
        }
    }
    RolloutView {
        shown_state: shown_state(&rollout),
        rollout,
        stages,
    }
}
