//! A rollout's wave logic (CONTRACT.md §17), as pure functions over what the database says,
//! so that every rule is tested with injected time and made-up agents, and the service
//! (`crate::service::rollouts`) only reads rows, calls [`step`] and writes what it decided.
//!
//! A rollout is a list of **stages**: the canary (stage 0), then each wave. One stage is
//! worked at a time. Each look ([`step`]) takes the stage's agents that are not yet final and
//! decides, agent by agent, what happened since the last look; then whether the stage is
//! done, and if so whether it passed the health gate:
//!
//! - `pending`: its turn. Sent the `update` while fewer than `max_in_flight` agents of the
//!   rollout are `updating`; `skipped` when it is offline, cannot update or is gone (counted,
//!   never waited for); `healthy` at once when it already runs the version, `ahead` when it
//!   runs a newer one (a rollout never downgrades).
//! - `updating`: `soaking` once it is online at the version, having connected after the
//!   `update` went out; `failed` when its supervisor reports the update failed or rolled back
//!   after that, or when `online_within_s` passes first.
//! - `soaking`: `failed` when its supervisor rolls back (or it comes back at another version);
//!   after `soak_s`, online at the version, `healthy` (or `checking` with a health script);
//!   `failed` when it is still offline `online_within_s` after the soak ended.
//! - `checking`: `healthy` when the script succeeded, `failed` otherwise.
//!
//! A stage **passes** when every agent is final and `healthy` is at least
//! `min_healthy_percent` of the agents that count (skipped and ahead ones do not). It
//! **halts** as soon as enough have failed that it cannot pass any more: with the default
//! 100 %, the first failed canary halts the rollout on the look that sees it, and no other
//! agent is sent the version.
//!
//! A rollback walks every agent the rollout sent the `update` to (`revert_pending`) back to the
//! version it had, with the same `max_in_flight` and `online_within_s`.

use chrono::{DateTime, Duration, Utc};
use outpost_protocol::release::{UpdateStatus, Version, update_status};
use outpost_store::domain::RolloutAgentState as State;

/// How long an agent marked `updating` (or `checking`, `reverting`) may go without its
/// command recorded before it is sent again: the node that marked it died between the mark
/// and the send (a restart, a crash). A command is recorded within milliseconds of its mark;
/// sending an `update` twice is harmless (the supervisor does nothing for the version it runs).
pub const RESEND_AFTER_S: i64 = 10;

/// Most waves a rollout may have.
pub const MAX_WAVES: usize = 20;
/// Most canary agents.
pub const MAX_CANARY: u32 = 1000;
/// Longest `online_within_s` and `soak_s`: a day.
pub const MAX_HEALTH_S: u32 = 86_400;

/// The health gate (CONTRACT.md §17: defaults 300 s, 120 s, 100 %).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// How long an updated agent has to come back online at the version.
    pub online_within_s: u32,
    /// How long it must then run it without its supervisor rolling back.
    pub soak_s: u32,
    /// Share of a stage's counted agents that must be healthy for the next stage to start.
    pub min_healthy_percent: u8,
    /// A script that must then succeed on it (a name its manifest lists, or a library script).
    pub script: Option<String>,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            online_within_s: 300,
            soak_s: 120,
            min_healthy_percent: 100,
            script: None,
        }
    }
}

/// A rollout's shape, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The version agents go to.
    pub version: Version,
    /// Canary agents (stage 0).
    pub canary: u32,
    /// Each wave's share of the non-canary agents, in percent; they sum to 100.
    pub waves: Vec<u8>,
    /// Most agents `updating` at once, in percent of the target.
    pub max_in_flight: u8,
    /// The gate between stages.
    pub health: Health,
}

impl Plan {
    /// Checks what a request asked for; the error names the field (400).
    pub fn check(&self) -> Result<(), String> {
        if self.canary > MAX_CANARY {
            return Err(format!("canary: at most {MAX_CANARY} agents"));
        }
        if self.waves.is_empty() || self.waves.len() > MAX_WAVES {
            return Err(format!("waves: between 1 and {MAX_WAVES} percentages"));
        }
        if self.waves.contains(&0) {
            return Err("waves: each wave is at least 1 percent".into());
        }
        let sum: u32 = self.waves.iter().map(|&w| u32::from(w)).sum();
        if sum != 100 {
            return Err(format!(
                "waves: percentages of the non-canary agents must sum to 100, not {sum}"
            ));
        }
        if self.max_in_flight == 0 || self.max_in_flight > 100 {
            return Err("max_in_flight: a percentage of the target between 1 and 100".into());
        }
        let h = &self.health;
        if h.online_within_s == 0 || h.online_within_s > MAX_HEALTH_S {
            return Err(format!(
                "health.online_within_s: between 1 and {MAX_HEALTH_S} seconds"
            ));
        }
        if h.soak_s > MAX_HEALTH_S {
            return Err(format!("health.soak_s: at most {MAX_HEALTH_S} seconds"));
        }
        if h.min_healthy_percent > 100 {
            return Err("health.min_healthy_percent: at most 100".into());
        }
        Ok(())
    }

    /// How many agents of a target of `total` may be `updating` at once (at least one).
    pub fn in_flight_limit(&self, total: usize) -> usize {
        (total * usize::from(self.max_in_flight))
            .div_ceil(100)
            .max(1)
    }

    /// The stage of each of `total` agents taken in the (random) order given: the first
    /// `canary` are stage 0, the rest are cut into the waves by cumulative percentage (so
    /// that the waves add up to every agent whatever the rounding). Stages that come out
    /// empty (a wave of 10 % of 3 agents) are left out of the numbering by nobody: a stage
    /// with no agents passes at once.
    pub fn stages(&self, total: usize) -> Vec<u32> {
        let canary = (self.canary as usize).min(total);
        let rest = total - canary;
        let mut out = vec![0; canary];
        let mut cumulative = 0usize;
        let mut assigned = 0usize;
        for (i, &share) in self.waves.iter().enumerate() {
            cumulative += usize::from(share);
            let end = (rest * cumulative).div_ceil(100).min(rest);
            let end = if i + 1 == self.waves.len() { rest } else { end };
            while assigned < end {
                out.push(i as u32 + 1);
                assigned += 1;
            }
        }
        out
    }

    /// Stages: the canary and each wave.
    pub fn stage_count(&self) -> u32 {
        self.waves.len() as u32 + 1
    }
}

/// The name a person reads for a stage: `canary`, `wave 1`, ….
pub fn stage_name(stage: u32) -> String {
    if stage == 0 {
        "canary".into()
    } else {
        format!("wave {stage}")
    }
}

/// How a health script's run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// Not finished.
    Running,
    /// Succeeded.
    Passed,
    /// Did not succeed: why.
    Failed(String),
}

/// One agent of the stage as the database has it now.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Its state in the rollout.
    pub state: State,
    /// The version it ran when the rollout took it.
    pub from_version: String,
    /// When the rollout sent it the `update` (or, rolling back, the way back).
    pub sent_at: Option<DateTime<Utc>>,
    /// When it came back online at the version (its soak's start).
    pub soak_from: Option<DateTime<Utc>>,
    /// Whether the command of its state (the `update`, or the health script's run) was
    /// recorded as sent.
    pub sent: bool,
    /// When its row last changed.
    pub changed_at: DateTime<Utc>,
    /// What the fleet knows of it now; `None` when it was deleted.
    pub agent: Option<AgentNow>,
    /// Its health script's run, once sent.
    pub check: Option<Check>,
}

/// An agent's row, as far as a rollout cares.
#[derive(Debug, Clone)]
pub struct AgentNow {
    /// The version it registered with last.
    pub version: String,
    /// Connected now (to any node).
    pub online: bool,
    /// When its current (or last) connection began.
    pub connected_at: Option<DateTime<Utc>>,
    /// It lists the `update` capability and its key allows updates.
    pub can_update: bool,
    /// Its supervisor's last report on an update.
    pub report: Option<UpdateStatus>,
}

/// What became of one agent at this look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Send it the `update` (forward: the rollout's version; rolling back: its old one).
    Send,
    /// Not waited for: why.
    Skip(String),
    /// Runs a newer version already.
    Ahead(String),
    /// Back online at the version: its soak starts now.
    Soak,
    /// Soaked: run the health script on it.
    Check,
    /// Passed: why, when there is something to say (`already at 1.2.3`).
    Healthy(Option<String>),
    /// Failed the gate: why.
    Fail(String),
    /// Rolling back: back at its old version.
    Reverted,
    /// Rolling back: could not be sent back: why.
    RevertFailed(String),
}

impl Decision {
    /// The state it leaves the agent in.
    pub fn state(&self, rolling_back: bool) -> State {
        match self {
            Self::Send if rolling_back => State::Reverting,
            Self::Send => State::Updating,
            Self::Skip(_) if rolling_back => State::RevertFailed,
            Self::Skip(_) => State::Skipped,
            Self::Ahead(_) => State::Ahead,
            Self::Soak => State::Soaking,
            Self::Check => State::Checking,
            Self::Healthy(_) => State::Healthy,
            Self::Fail(_) => State::Failed,
            Self::Reverted => State::Reverted,
            Self::RevertFailed(_) => State::RevertFailed,
        }
    }

    /// The reason to store with it, if any.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Self::Skip(why)
            | Self::Ahead(why)
            | Self::Fail(why)
            | Self::RevertFailed(why)
            | Self::Healthy(Some(why)) => Some(why),
            _ => None,
        }
    }
}

/// How far a look may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Running: send `update`s within the in-flight budget.
    Forward,
    /// Paused or halted: nothing new is sent; agents already on their way are watched.
    Watch,
    /// Rolling back: send agents back within the in-flight budget.
    Revert,
}

/// A stage's counts by state, before this look's decisions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Agents in the stage.
    pub total: usize,
    /// `healthy`.
    pub healthy: usize,
    /// `failed`.
    pub failed: usize,
    /// `skipped` and `ahead`: not counted by the gate.
    pub uncounted: usize,
}

impl Counts {
    /// The counts once `decisions` are applied (only decisions that end an agent move them).
    pub fn after(mut self, decisions: &[Decision]) -> Self {
        for d in decisions {
            match d {
                Decision::Healthy(_) => self.healthy += 1,
                Decision::Fail(_) => self.failed += 1,
                Decision::Skip(_) | Decision::Ahead(_) => self.uncounted += 1,
                _ => {}
            }
        }
        self
    }

    fn counted(&self) -> usize {
        self.total - self.uncounted
    }

    fn finished(&self) -> bool {
        self.healthy + self.failed + self.uncounted == self.total
    }

    /// Whether `healthy` can no longer reach `min` percent of the counted agents.
    fn cannot_pass(&self, min: u8) -> bool {
        let best = self.counted() - self.failed;
        best * 100 < usize::from(min) * self.counted()
    }
}

/// What the stage does after this look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// Agents are still on their way.
    Wait,
    /// Every agent is final and enough are healthy: the next stage starts.
    Pass,
    /// Not enough can be healthy any more: the rollout halts, saying why.
    Halt(String),
}

/// Decides, for each of `seen` (the stage's agents that are not final, in stage order, those
/// waiting on something before the pending ones), what became of it by `now`, and then the
/// stage's gate over `counts` (the stage's counts before this look). `in_flight` is how many of
/// the rollout's agents are `updating` (or `reverting`) now; `limit` the most that may be. A
/// place freed in this look is used in this look.
pub fn step(
    plan: &Plan,
    mode: Mode,
    seen: &[Seen],
    counts: Counts,
    in_flight: usize,
    limit: usize,
    now: DateTime<Utc>,
) -> (Vec<Option<Decision>>, Gate) {
    let mut budget = limit.saturating_sub(in_flight);
    let decisions: Vec<Option<Decision>> = seen
        .iter()
        .map(|agent| {
            let decision = if mode == Mode::Revert {
                revert(plan, agent, &mut budget, now)
            } else {
                forward(plan, mode, agent, &mut budget, now)
            };
            // A resend (the node that marked it died before sending) is in flight already.
            if decision == Some(Decision::Send)
                && matches!(agent.state, State::Pending | State::RevertPending)
            {
                budget = budget.saturating_sub(1);
            }
            // One that lands (back at the version, failed, …) frees its place for a pending
            // agent later in `seen` in this same look, rather than the next.
            let in_flight = |s: State| matches!(s, State::Updating | State::Reverting);
            if in_flight(agent.state)
                && decision
                    .as_ref()
                    .is_some_and(|d| !in_flight(d.state(mode == Mode::Revert)))
            {
                budget += 1;
            }
            decision
        })
        .collect();
    if mode == Mode::Revert {
        return (decisions, Gate::Wait);
    }
    let made: Vec<Decision> = decisions.iter().flatten().cloned().collect();
    let after = counts.after(&made);
    let min = plan.health.min_healthy_percent;
    let gate = if after.failed > 0 && after.cannot_pass(min) {
        Gate::Halt(format!(
            "{} of {} counted agents failed; at least {min} % must be healthy",
            after.failed,
            after.counted()
        ))
    } else if after.finished() {
        Gate::Pass
    } else {
        Gate::Wait
    };
    (decisions, gate)
}

fn seconds(s: u32) -> Duration {
    Duration::seconds(i64::from(s))
}

/// A supervisor report made after `since` that says the update did not hold.
fn bad_report(agent: &AgentNow, since: DateTime<Utc>) -> Option<String> {
    let report = agent.report.as_ref()?;
    if report.at <= since {
        return None;
    }
    let what = match report.status.as_str() {
        update_status::ROLLED_BACK => "its supervisor rolled the update back",
        update_status::FAILED => "its supervisor could not install the update",
        _ => return None,
    };
    Some(match &report.reason {
        Some(reason) => format!("{what}: {reason}"),
        None => what.to_owned(),
    })
}

fn forward(
    plan: &Plan,
    mode: Mode,
    seen: &Seen,
    budget: &mut usize,
    now: DateTime<Utc>,
) -> Option<Decision> {
    let target = plan.version;
    let h = &plan.health;
    match seen.state {
        State::Pending => {
            if mode != Mode::Forward || *budget == 0 {
                return None;
            }
            let Some(agent) = &seen.agent else {
                return Some(Decision::Skip("the agent was deleted".into()));
            };
            match agent.version.parse::<Version>() {
                // Sent the version by this rollout, then failed, and tried again by `resume`:
                // it must pass the gate again (soak, health script), not count as one that
                // was already there.
                Ok(v) if v == target && seen.sent_at.is_some() => {
                    return Some(Decision::Soak);
                }
                Ok(v) if v == target => {
                    return Some(Decision::Healthy(Some(format!("already ran {target}"))));
                }
                Ok(v) if v > target => {
                    return Some(Decision::Ahead(format!("runs {v}, newer than {target}")));
                }
                _ => {}
            }
            if !agent.online {
                return Some(Decision::Skip("offline when its turn came".into()));
            }
            if !agent.can_update {
                return Some(Decision::Skip(
                    "cannot update: its agent lacks the update capability or its key does not allow updates"
                        .into(),
                ));
            }
            Some(Decision::Send)
        }
        State::Updating => {
            let sent = seen.sent_at?;
            let Some(agent) = &seen.agent else {
                return Some(Decision::Fail("the agent was deleted".into()));
            };
            if let Some(why) = bad_report(agent, sent) {
                return Some(Decision::Fail(why));
            }
            let back = agent.online && agent.connected_at.is_some_and(|at| at > sent);
            if back && agent.version == target.to_string() {
                return Some(Decision::Soak);
            }
            if !seen.sent && now - sent >= Duration::seconds(RESEND_AFTER_S) {
                return agent.online.then_some(Decision::Send);
            }
            (now - sent >= seconds(h.online_within_s)).then(|| {
                Decision::Fail(format!(
                    "not back online at {target} within {} s (it runs {}{})",
                    h.online_within_s,
                    agent.version,
                    if agent.online { "" } else { ", offline" }
                ))
            })
        }
        State::Soaking => {
            let from = seen.soak_from?;
            let Some(agent) = &seen.agent else {
                return Some(Decision::Fail("the agent was deleted".into()));
            };
            if let Some(why) = bad_report(agent, seen.sent_at.unwrap_or(from)) {
                return Some(Decision::Fail(why));
            }
            if agent.version != target.to_string() {
                return Some(Decision::Fail(format!(
                    "came back at {} during its soak",
                    agent.version
                )));
            }
            let soaked = from + seconds(h.soak_s);
            if now < soaked {
                return None;
            }
            if agent.online {
                return Some(if h.script.is_some() {
                    Decision::Check
                } else {
                    Decision::Healthy(None)
                });
            }
            (now - soaked >= seconds(h.online_within_s)).then(|| {
                Decision::Fail(format!(
                    "offline at the end of its soak, and not back within {} s",
                    h.online_within_s
                ))
            })
        }
        State::Checking => match &seen.check {
            Some(Check::Passed) => Some(Decision::Healthy(None)),
            Some(Check::Failed(why)) => Some(Decision::Fail(format!("health script: {why}"))),
            Some(Check::Running) => None,
            // Marked, never sent: the node died in between.
            None => (now - seen.changed_at >= Duration::seconds(RESEND_AFTER_S))
                .then_some(Decision::Check),
        },
        _ => None,
    }
}

fn revert(plan: &Plan, seen: &Seen, budget: &mut usize, now: DateTime<Utc>) -> Option<Decision> {
    let h = &plan.health;
    let Some(agent) = &seen.agent else {
        return Some(Decision::RevertFailed("the agent was deleted".into()));
    };
    match seen.state {
        State::RevertPending => {
            if agent.version == seen.from_version {
                return Some(Decision::Reverted);
            }
            if *budget == 0 {
                return None;
            }
            if !agent.online {
                return Some(Decision::RevertFailed(
                    "offline when the rollback reached it".into(),
                ));
            }
            if !agent.can_update {
                return Some(Decision::RevertFailed("cannot update".into()));
            }
            Some(Decision::Send)
        }
        State::Reverting => {
            let sent = seen.sent_at?;
            if let Some(why) = bad_report(agent, sent) {
                return Some(Decision::RevertFailed(why));
            }
            let back = agent.online && agent.connected_at.is_some_and(|at| at > sent);
            if back && agent.version == seen.from_version {
                return Some(Decision::Reverted);
            }
            if !seen.sent && now - sent >= Duration::seconds(RESEND_AFTER_S) {
                return agent.online.then_some(Decision::Send);
            }
            (now - sent >= seconds(h.online_within_s)).then(|| {
                Decision::RevertFailed(format!(
                    "not back online at {} within {} s (it runs {})",
                    seen.from_version, h.online_within_s, agent.version
                ))
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        Plan {
            version: "0.2.0".parse().expect("version"),
            canary: 2,
            waves: vec![50, 50],
            max_in_flight: 10,
            health: Health::default(),
        }
    }

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).expect("time")
    }

    fn agent(version: &str, online: bool, connected: i64) -> AgentNow {
        AgentNow {
            version: version.into(),
            online,
            connected_at: Some(t(connected)),
            can_update: true,
            report: None,
        }
    }

    fn seen(state: State, sent: Option<i64>, soak: Option<i64>, now: AgentNow) -> Seen {
        Seen {
            state,
            from_version: "0.1.0".into(),
            sent_at: sent.map(t),
            soak_from: soak.map(t),
            sent: sent.is_some(),
            changed_at: t(sent.unwrap_or(0)),
            agent: Some(now),
            check: None,
        }
    }

    fn counts(total: usize) -> Counts {
        Counts {
            total,
            ..Counts::default()
        }
    }

    #[test]
    fn a_plan_is_checked_field_by_field() {
        let ok = plan();
        assert_eq!(ok.check(), Ok(()));
        let mut bad = ok.clone();
        bad.waves = vec![50, 40];
        assert!(
            bad.check()
                .expect_err("refused")
                .contains("sum to 100, not 90")
        );
        bad.waves = vec![];
        assert!(bad.check().expect_err("refused").starts_with("waves:"));
        bad.waves = vec![100, 0];
        assert!(bad.check().expect_err("refused").starts_with("waves:"));
        let mut bad = ok.clone();
        bad.max_in_flight = 0;
        assert!(
            bad.check()
                .expect_err("refused")
                .starts_with("max_in_flight:")
        );
        let mut bad = ok.clone();
        bad.health.online_within_s = 0;
        assert!(
            bad.check()
                .expect_err("refused")
                .starts_with("health.online_within_s")
        );
        let mut bad = ok;
        bad.health.min_healthy_percent = 101;
        assert!(
            bad.check()
                .expect_err("refused")
                .starts_with("health.min_healthy")
        );
    }

    #[test]
    fn stages_take_the_canary_first_and_cut_waves_by_cumulative_share() {
        let p = plan();
        let stages = p.stages(20);
        assert_eq!(stages.iter().filter(|&&s| s == 0).count(), 2);
        assert_eq!(stages.iter().filter(|&&s| s == 1).count(), 9);
        assert_eq!(stages.iter().filter(|&&s| s == 2).count(), 9);
        assert!(stages.windows(2).all(|w| w[0] <= w[1]), "in stage order");
        // Uneven shares still cover every agent exactly once.
        let mut p = plan();
        p.waves = vec![10, 30, 60];
        for total in [0, 1, 2, 3, 7, 101, 10_000] {
            let stages = p.stages(total);
            assert_eq!(stages.len(), total);
        }
        // A canary larger than the target takes everyone.
        p.canary = 50;
        assert_eq!(p.stages(3), vec![0, 0, 0]);
        assert_eq!(p.in_flight_limit(3), 1);
        assert_eq!(p.in_flight_limit(10_000), 1000);
    }

    #[test]
    fn pending_agents_are_sent_within_the_in_flight_budget() {
        let p = plan();
        let rows: Vec<Seen> = (0..5)
            .map(|_| seen(State::Pending, None, None, agent("0.1.0", true, 0)))
            .collect();
        let (d, gate) = step(&p, Mode::Forward, &rows, counts(5), 1, 3, t(10));
        let sent = d.iter().filter(|d| **d == Some(Decision::Send)).count();
        assert_eq!(sent, 2, "3 may be in flight, 1 already is");
        assert_eq!(gate, Gate::Wait);
        // Paused or halted: nothing is sent.
        let (d, _) = step(&p, Mode::Watch, &rows, counts(5), 0, 3, t(10));
        assert!(d.iter().all(Option::is_none));
    }

    #[test]
    fn a_resumed_agent_already_at_the_version_passes_the_gate_again() {
        // Updated, then failed its health script; `resume` put it back to pending, keeping
        // when it was sent the version.
        let mut p = plan();
        p.health.script = Some("health".into());
        let retried = seen(State::Pending, Some(0), None, agent("0.2.0", true, 5));
        let (d, _) = step(&p, Mode::Forward, &[retried], counts(1), 0, 10, t(100));
        assert_eq!(d, [Some(Decision::Soak)], "soaked and checked again");
        // One never sent anything by this rollout is healthy at once.
        let there = seen(State::Pending, None, None, agent("0.2.0", true, 5));
        let (d, _) = step(&p, Mode::Forward, &[there], counts(1), 0, 10, t(100));
        assert!(matches!(d[0], Some(Decision::Healthy(Some(_)))), "{d:?}");
    }

    #[test]
    fn a_place_freed_in_a_look_is_used_in_that_look() {
        let p = plan();
        // Two in flight of at most two; one is back at the version: one pending agent goes.
        let rows = vec![
            seen(State::Updating, Some(0), None, agent("0.2.0", true, 5)),
            seen(State::Updating, Some(0), None, agent("0.1.0", true, 0)),
            seen(State::Pending, None, None, agent("0.1.0", true, 0)),
            seen(State::Pending, None, None, agent("0.1.0", true, 0)),
        ];
        let (d, _) = step(&p, Mode::Forward, &rows, counts(4), 2, 2, t(10));
        assert_eq!(
            d,
            [Some(Decision::Soak), None, Some(Decision::Send), None],
            "one landed, one sent in its place"
        );
    }

    #[test]
    fn offline_incapable_current_and_newer_agents_are_not_waited_for() {
        let p = plan();
        let mut incapable = agent("0.1.0", true, 0);
        incapable.can_update = false;
        let mut gone = seen(State::Pending, None, None, agent("0.1.0", true, 0));
        gone.agent = None;
        let rows = vec![
            seen(State::Pending, None, None, agent("0.1.0", false, 0)),
            seen(State::Pending, None, None, incapable),
            seen(State::Pending, None, None, agent("0.2.0", true, 0)),
            seen(State::Pending, None, None, agent("0.3.0", true, 0)),
            gone,
        ];
        let (d, gate) = step(&p, Mode::Forward, &rows, counts(5), 0, 10, t(10));
        let states: Vec<State> = d.iter().flatten().map(|d| d.state(false)).collect();
        assert_eq!(
            states,
            [
                State::Skipped,
                State::Skipped,
                State::Healthy,
                State::Ahead,
                State::Skipped
            ]
        );
        assert_eq!(gate, Gate::Pass, "one healthy of one counted");
    }

    #[test]
    fn an_agent_back_at_the_version_soaks_then_is_healthy() {
        let p = plan();
        let updating = seen(State::Updating, Some(100), None, agent("0.2.0", true, 130));
        let (d, _) = step(&p, Mode::Forward, &[updating], counts(1), 1, 1, t(131));
        assert_eq!(d, [Some(Decision::Soak)]);
        // Connected before the update went out: not yet back.
        let stale = seen(State::Updating, Some(100), None, agent("0.2.0", true, 90));
        let (d, _) = step(&p, Mode::Forward, &[stale], counts(1), 1, 1, t(131));
        assert_eq!(d, [None]);
        let soaking = seen(
            State::Soaking,
            Some(100),
            Some(131),
            agent("0.2.0", true, 130),
        );
        let (d, gate) = step(
            &p,
            Mode::Forward,
            std::slice::from_ref(&soaking),
            counts(1),
            0,
            1,
            t(131 + 119),
        );
        assert_eq!((d, gate), (vec![None], Gate::Wait), "still soaking");
        let (d, gate) = step(&p, Mode::Forward, &[soaking], counts(1), 0, 1, t(131 + 120));
        assert_eq!(d, [Some(Decision::Healthy(None))]);
        assert_eq!(gate, Gate::Pass);
    }

    #[test]
    fn an_update_marked_but_never_sent_is_sent_again() {
        let p = plan();
        let mut orphan = seen(State::Updating, Some(100), None, agent("0.1.0", true, 50));
        orphan.sent = false;
        let (d, _) = step(
            &p,
            Mode::Forward,
            &[orphan.clone()],
            counts(1),
            1,
            1,
            t(105),
        );
        assert_eq!(d, [None], "its node may still be sending it");
        let (d, _) = step(
            &p,
            Mode::Forward,
            &[orphan.clone()],
            counts(1),
            1,
            1,
            t(110),
        );
        assert_eq!(d, [Some(Decision::Send)], "sent again, in flight already");
        // Recorded as sent: waited for.
        orphan.sent = true;
        let (d, _) = step(&p, Mode::Forward, &[orphan], counts(1), 1, 1, t(110));
        assert_eq!(d, [None]);
    }

    #[test]
    fn a_health_script_decides_after_the_soak() {
        let mut p = plan();
        p.health.script = Some("check".into());
        let mut s = seen(
            State::Soaking,
            Some(100),
            Some(131),
            agent("0.2.0", true, 130),
        );
        let (d, _) = step(&p, Mode::Forward, &[s.clone()], counts(1), 0, 1, t(300));
        assert_eq!(d, [Some(Decision::Check)]);
        s.state = State::Checking;
        s.check = Some(Check::Running);
        let (d, _) = step(&p, Mode::Forward, &[s.clone()], counts(1), 0, 1, t(300));
        assert_eq!(d, [None]);
        s.check = Some(Check::Failed("exit code 2".into()));
        let (d, gate) = step(&p, Mode::Forward, &[s], counts(1), 0, 1, t(300));
        assert_eq!(
            d,
            [Some(Decision::Fail("health script: exit code 2".into()))]
        );
        assert!(matches!(gate, Gate::Halt(_)));
    }

    #[test]
    fn a_rolled_back_canary_halts_the_rollout_at_once() {
        let p = plan();
        let mut rolled = agent("0.1.0", true, 140);
        rolled.report = Some(UpdateStatus {
            status: update_status::ROLLED_BACK.into(),
            from: Some("0.1.0".into()),
            to: Some("0.2.0".into()),
            reason: Some("exited 3 times".into()),
            at: t(139),
        });
        let rows = vec![
            seen(State::Updating, Some(100), None, rolled),
            seen(State::Updating, Some(100), None, agent("0.1.0", true, 50)),
        ];
        let (d, gate) = step(&p, Mode::Forward, &rows, counts(2), 2, 1, t(141));
        assert_eq!(
            d[0],
            Some(Decision::Fail(
                "its supervisor rolled the update back: exited 3 times".into()
            ))
        );
        assert_eq!(d[1], None, "the other canary is still on its way");
        assert_eq!(
            gate,
            Gate::Halt("1 of 2 counted agents failed; at least 100 % must be healthy".into())
        );
    }

    #[test]
    fn a_report_older_than_the_update_does_not_count() {
        let p = plan();
        let mut old = agent("0.2.0", true, 140);
        old.report = Some(UpdateStatus {
            status: update_status::ROLLED_BACK.into(),
            from: None,
            to: None,
            reason: None,
            at: t(5),
        });
        let rows = vec![seen(State::Updating, Some(100), None, old)];
        let (d, _) = step(&p, Mode::Forward, &rows, counts(1), 1, 1, t(141));
        assert_eq!(d, [Some(Decision::Soak)]);
    }

    #[test]
    fn a_rollback_during_the_soak_fails_the_agent() {
        let p = plan();
        let rows = vec![seen(
            State::Soaking,
            Some(100),
            Some(131),
            agent("0.1.0", true, 160),
        )];
        let (d, _) = step(&p, Mode::Forward, &rows, counts(1), 0, 1, t(170));
        assert_eq!(
            d,
            [Some(Decision::Fail(
                "came back at 0.1.0 during its soak".into()
            ))]
        );
    }

    #[test]
    fn an_agent_that_never_comes_back_fails_at_online_within() {
        let p = plan();
        let rows = vec![seen(
            State::Updating,
            Some(100),
            None,
            agent("0.1.0", false, 50),
        )];
        let (d, _) = step(&p, Mode::Forward, &rows, counts(1), 1, 1, t(399));
        assert_eq!(d, [None]);
        let (d, _) = step(&p, Mode::Forward, &rows, counts(1), 1, 1, t(400));
        assert!(matches!(&d[0], Some(Decision::Fail(why)) if why.contains("within 300 s")));
    }

    #[test]
    fn a_lower_bar_lets_a_stage_pass_with_failures() {
        let mut p = plan();
        p.health.min_healthy_percent = 80;
        // 10 counted: 1 failed may still pass (9/10 >= 80 %), 3 cannot.
        let before = Counts {
            total: 10,
            healthy: 8,
            failed: 1,
            uncounted: 0,
        };
        let last = seen(
            State::Soaking,
            Some(100),
            Some(131),
            agent("0.2.0", true, 130),
        );
        let (_, gate) = step(&p, Mode::Forward, &[last], before, 0, 1, t(1000));
        assert_eq!(gate, Gate::Pass);
        let failing = Counts {
            total: 10,
            healthy: 0,
            failed: 3,
            uncounted: 0,
        };
        let (_, gate) = step(&p, Mode::Forward, &[], failing, 0, 1, t(1000));
        assert!(matches!(gate, Gate::Halt(_)));
        let fine = Counts {
            total: 10,
            healthy: 0,
            failed: 2,
            uncounted: 0,
        };
        let (_, gate) = step(&p, Mode::Forward, &[], fine, 0, 1, t(1000));
        assert_eq!(gate, Gate::Wait, "2 of 10 failed may still pass at 80 %");
    }

    #[test]
    fn a_rollback_sends_agents_back_and_waits_for_their_old_version() {
        let p = plan();
        let rows = vec![
            seen(State::RevertPending, None, None, agent("0.2.0", true, 0)),
            seen(State::RevertPending, None, None, agent("0.1.0", true, 0)),
            seen(State::RevertPending, None, None, agent("0.2.0", false, 0)),
        ];
        let (d, gate) = step(&p, Mode::Revert, &rows, counts(3), 0, 5, t(10));
        assert_eq!(d[0], Some(Decision::Send));
        assert_eq!(d[1], Some(Decision::Reverted), "already back");
        assert!(matches!(d[2], Some(Decision::RevertFailed(_))));
        assert_eq!(d[0].as_ref().map(|d| d.state(true)), Some(State::Reverting));
        assert_eq!(gate, Gate::Wait);
        let back = seen(State::Reverting, Some(10), None, agent("0.1.0", true, 20));
        let (d, _) = step(&p, Mode::Revert, &[back], counts(1), 1, 5, t(21));
        assert_eq!(d, [Some(Decision::Reverted)]);
    }
}
