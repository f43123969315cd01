//! Fleet results (CONTRACT.md §16): a job over many agents read as one answer (its summary
//! and groups), its runs paged and filtered, exported, and re-run.
//!
//! The figures come from the database (`outpost_store::digests`); this module checks what a
//! caller asks and decides who a rerun reaches. A rerun is a new job made through
//! [`Jobs::create`] with the caller's own role, so every rule of a job's creation (roles,
//! `force`, key permissions, manifests, the library) is applied again; it reaches only agents
//! still bound to the key their run was made under, and says which it skipped and why.

use std::collections::{HashMap, HashSet};

use futures_util::Stream;
use outpost_store::domain::{Caller, CommandState, DomainError};
use outpost_store::{JobDigest, MAX_RUNS_PAGE, RunFilter, RunRow, TagMatch, job, state};
use serde_json::Value;
use uuid::Uuid;

use super::{JobWithRuns, Jobs, Lookups, NewJobRequest, RerunOf, Target};
use crate::digest::is_group_key;
use crate::service::commands::CommandSpec;
use crate::tags::TagRule;

/// Longest `tag` and `hostname` filter.
const MAX_FILTER_BYTES: usize = 128;
/// Most runs a rerun may list by id.
pub const MAX_RERUN_IDS: usize = 10_000;
/// Runs read per page of an export.
const EXPORT_PAGE: u64 = 500;

/// A job's summary: the job and what the database counted of its runs.
#[derive(Debug)]
pub struct Summary {
    /// The job.
    pub job: job::Model,
    /// The figures.
    pub digest: JobDigest,
    /// Whether groups are by masked output (`?mask=numbers`).
    pub masked: bool,
}

/// A page of runs as asked (checked by [`Jobs::runs`]).
#[derive(Debug, Default, Clone)]
pub struct RunsRequest {
    /// Runs in this state; `not_succeeded` for every final state but `succeeded`.
    pub status: Option<String>,
    /// Runs that ended with this exit code.
    pub exit_code: Option<i32>,
    /// Runs of this group (a key from the summary).
    pub group: Option<String>,
    /// `group` is a masked key (`mask=numbers`).
    pub masked: bool,
    /// The run of this agent.
    pub agent_id: Option<String>,
    /// Runs of agents with this tag.
    pub tag: Option<String>,
    /// Runs of agents whose host name holds this text.
    pub hostname: Option<String>,
    /// From a previous page's `next_cursor`.
    pub cursor: Option<String>,
    /// Page size, 1–200 (default 50).
    pub limit: Option<u64>,
}

/// Which runs a rerun repeats.
#[derive(Debug, Clone)]
pub enum RerunWhich {
    /// Runs that failed (`failed`: a non-zero exit or the agent's refusal).
    Failed,
    /// Every finished run that did not succeed (failed, timed out, cancelled, expired,
    /// lost).
    NotSucceeded,
    /// Every run.
    All,
    /// These runs of the job.
    Runs(Vec<String>),
}

/// A run a rerun did not repeat, and why.
#[derive(Debug, Clone)]
pub struct Skipped {
    /// The original run.
    pub run_id: String,
    /// Its agent.
    pub agent_id: String,
    /// The agent's host name, while it is known.
    pub hostname: Option<String>,
    /// Why.
    pub reason: String,
}

/// A rerun's new job and the runs it left out.
#[derive(Debug)]
pub struct Rerun {
    /// The new job.
    pub job: JobWithRuns,
    /// Runs not repeated.
    pub skipped: Vec<Skipped>,
}

impl Jobs {
    /// A job's summary (`mask`: group by output with digits masked).
    pub async fn summary(
        &self,
        caller: &Caller,
        id: &str,
        mask: bool,
    ) -> Result<Summary, DomainError> {
        let job = self.find(caller, id).await?;
        // One snapshot for its statements: digests written between them would make counts
        // that disagree (groups without durations, `undigested` 0 too early).
        let snapshot = self.core.store.begin_snapshot().await?;
        let digest = snapshot
            .job_digest(&caller.tenant_id, &job.id, mask)
            .await?;
        drop(snapshot);
        Ok(Summary {
            job,
            digest,
            masked: mask,
        })
    }

    /// Host names of a job's agents, by agent id (one read).
    pub async fn hostnames(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<HashMap<String, String>, DomainError> {
        Ok(self.core.store.job_hostnames(&caller.tenant_id, id).await?)
    }

    /// A page of a job's runs under the request's filters, and the next page's cursor.
    pub async fn runs(
        &self,
        caller: &Caller,
        id: &str,
        request: RunsRequest,
    ) -> Result<(Vec<RunRow>, Option<String>), DomainError> {
        let job = self.find(caller, id).await?;
        let mut filter = self.run_filter(caller, request).await?;
        let limit = filter.limit;
        filter.limit = limit + 1;
        let mut rows = self
            .core
            .store
            .job_runs_page(&caller.tenant_id, &job.id, &filter)
            .await?;
        let next = if rows.len() as u64 > limit {
            rows.truncate(limit as usize);
            rows.last().map(|r| r.run.id.clone())
        } else {
            None
        };
        Ok((rows, next))
    }

    /// Every run of a job as it stands when the export starts, page by page: read in one
    /// snapshot (a job still running exports the runs as they were at its start), so the
    /// export is consistent however long the client takes to read it. The job is looked up
    /// (404) before the first byte.
    pub async fn export(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<
        (
            job::Model,
            impl Stream<Item = Result<Vec<RunRow>, DomainError>> + Send + 'static,
        ),
        DomainError,
    > {
        let job = self.find(caller, id).await?;
        let snapshot = self.core.store.begin_snapshot().await?;
        let tenant_id = caller.tenant_id.clone();
        let job_id = job.id.clone();
        let pages = futures_util::stream::try_unfold(
            (snapshot, None::<String>, false),
            move |(snapshot, after, done)| {
                let tenant_id = tenant_id.clone();
                let job_id = job_id.clone();
                async move {
                    if done {
                        return Ok(None);
                    }
                    let filter = RunFilter {
                        after: after.clone(),
                        limit: EXPORT_PAGE,
                        ..Default::default()
                    };
                    let rows = snapshot
                        .job_runs_page(&tenant_id, &job_id, &filter)
                        .await
                        .map_err(DomainError::from)?;
                    if rows.is_empty() {
                        return Ok(None);
                    }
                    let last = rows.last().map(|r| r.run.id.clone());
                    let done = (rows.len() as u64) < EXPORT_PAGE;
                    Ok(Some((rows, (snapshot, last, done))))
                }
            },
        );
        Ok((job, pages))
    }

    /// Re-runs some of a job's runs as a new job (see the module's doc).
    #[tracing::instrument(skip_all, fields(tenant_id = %caller.tenant_id, job_id = %id))]
    pub async fn rerun(
        &self,
        caller: &Caller,
        id: &str,
        which: RerunWhich,
    ) -> Result<Rerun, DomainError> {
        let core = &self.core;
        core.writable()?;
        let job = self.find(caller, id).await?;
        let not_succeeded: Vec<&str> = CommandState::FINAL
            .iter()
            .map(|s| s.as_str())
            .filter(|s| *s != state::SUCCEEDED)
            .collect();
        let (states, ids, what) = match &which {
            RerunWhich::Failed => (vec![state::FAILED], None, "failed run"),
            RerunWhich::NotSucceeded => (not_succeeded, None, "finished run that did not succeed"),
            RerunWhich::All => (Vec::new(), None, "run"),
            RerunWhich::Runs(ids) => {
                if ids.is_empty() {
                    return Err(DomainError::BadRequest(
                        "runs: give \"failed\", \"not_succeeded\", \"all\" or a list of run ids"
                            .into(),
                    ));
                }
                if ids.len() > MAX_RERUN_IDS {
                    return Err(DomainError::TooLarge(format!(
                        "runs: at most {MAX_RERUN_IDS} run ids, not {}",
                        ids.len()
                    )));
                }
                if let Some(bad) = ids.iter().find(|id| Uuid::parse_str(id).is_err()) {
                    return Err(DomainError::BadRequest(format!(
                        "runs: {bad:?} is not a run id"
                    )));
                }
                (Vec::new(), Some(ids.as_slice()), "run")
            }
        };
        let candidates = core
            .store
            .rerun_candidates(&caller.tenant_id, &job.id, &states, ids)
            .await?;
        if let Some(ids) = ids {
            let found: HashSet<&str> = candidates.iter().map(|c| c.0.as_str()).collect();
            if let Some(missing) = ids.iter().find(|id| !found.contains(id.as_str())) {
                return Err(DomainError::BadRequest(format!(
                    "runs: job {} has no run {missing}",
                    job.id
                )));
            }
        }
        if candidates.is_empty() {
            return Err(DomainError::Invalid {
                code: "nothing_to_rerun",
                message: format!("job {} has no {what} to re-run", job.id),
            });
        }
        // Who is still there, bound to the same key.
        let mut lookups = Lookups::default();
        let fleet = lookups.targets(core, &caller.tenant_id).await?;
        let bound: HashMap<&str, &str> = fleet
            .agents
            .iter()
            .map(|a| (a.id.as_str(), a.key_id.as_str()))
            .collect();
        let mut chosen = Vec::new();
        let mut skipped = Vec::new();
        for (run_id, agent_id, key_id, _) in candidates {
            let reason = match (bound.get(agent_id.as_str()), key_id.as_deref()) {
                (None, _) => Some("the agent is gone (forgotten since the run)".to_owned()),
                (Some(_), None) => Some(
                    "the run does not record its agent's key (it is older than this server version)"
                        .to_owned(),
                ),
                (Some(now), Some(had)) if *now != had => Some(format!(
                    "the agent is bound to another key now ({now}, not {had})"
                )),
                _ => None,
            };
            match reason {
                Some(reason) => skipped.push(Skipped {
                    hostname: None,
                    run_id,
                    agent_id,
                    reason,
                }),
                None => chosen.push(agent_id),
            }
        }
        if !skipped.is_empty() {
            let hosts = core.store.job_hostnames(&caller.tenant_id, &job.id).await?;
            for skip in &mut skipped {
                skip.hostname = hosts.get(&skip.agent_id).cloned();
            }
        }
        if chosen.is_empty() {
            return Err(DomainError::Invalid {
                code: "nothing_to_rerun",
                message: format!(
                    "job {}: none of its {} picked runs can be re-run: {}",
                    job.id,
                    skipped.len(),
                    skipped
                        .first()
                        .map(|s| s.reason.as_str())
                        .unwrap_or_default()
                ),
            });
        }
        let spec = rerun_spec(&job)?;
        let sealed_params = core
            .store
            .job_sealed_params(&caller.tenant_id, &job.id)
            .await?;
        let request = NewJobRequest {
            spec,
            target: Target {
                agents: Some(chosen),
                tags: None,
                all: None,
            },
            webhook_url: None,
            idempotency_key: None,
            fire: None,
            rerun: Some(RerunOf {
                job_id: job.id.clone(),
                sealed_params,
            }),
        };
        let job = self.create(caller, request, None).await?;
        tracing::info!(rerun = %job.job.id, skipped = skipped.len(), "job re-run");
        Ok(Rerun { job, skipped })
    }

    async fn run_filter(
        &self,
        caller: &Caller,
        request: RunsRequest,
    ) -> Result<RunFilter, DomainError> {
        let limit = request.limit.unwrap_or(50);
        if !(1..=MAX_RUNS_PAGE).contains(&limit) {
            return Err(DomainError::BadRequest(format!(
                "limit: must be between 1 and {MAX_RUNS_PAGE}, not {limit}"
            )));
        }
        let states = match request.status.as_deref() {
            None | Some("") => Vec::new(),
            Some("not_succeeded") => CommandState::FINAL
                .iter()
                .filter(|s| **s != CommandState::Succeeded)
                .map(|s| s.as_str().to_owned())
                .collect(),
            Some(status) => match status.parse::<CommandState>() {
                Ok(state) => vec![state.as_str().to_owned()],
                Err(_) => {
                    return Err(DomainError::BadRequest(format!(
                        "status: must be a run state ({}) or not_succeeded, not {status:?}",
                        CommandState::ALL
                            .iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
            },
        };
        if let Some(group) = &request.group
            && !is_group_key(group)
        {
            return Err(DomainError::BadRequest(format!(
                "group: {group:?} is not a group key (16 hex digits from the job's summary)"
            )));
        }
        if let Some(cursor) = &request.cursor
            && Uuid::parse_str(cursor).is_err()
        {
            return Err(DomainError::BadRequest(format!(
                "cursor: {cursor:?} is not a cursor from this listing"
            )));
        }
        if let Some(agent_id) = &request.agent_id
            && Uuid::parse_str(agent_id).is_err()
        {
            return Err(DomainError::BadRequest(format!(
                "agent_id: {agent_id:?} is not an agent id"
            )));
        }
        for (name, value) in [("tag", &request.tag), ("hostname", &request.hostname)] {
            if let Some(value) = value
                && value.len() > MAX_FILTER_BYTES
            {
                return Err(DomainError::BadRequest(format!(
                    "{name}: at most {MAX_FILTER_BYTES} bytes, not {}",
                    value.len()
                )));
            }
        }
        let tag = match request.tag.filter(|t| !t.is_empty()) {
            None => None,
            Some(tag) => {
                let keys = self.core.store.list_agent_keys(&caller.tenant_id).await?;
                let (key_ids, declared_counts) = TagRule::new(&keys).matching(&tag);
                Some(TagMatch {
                    tag,
                    key_ids,
                    declared_counts,
                })
            }
        };
        Ok(RunFilter {
            states,
            exit_code: request.exit_code,
            group: request.group,
            masked: request.masked,
            agent_id: request.agent_id,
            tag,
            hostname: request.hostname.filter(|h| !h.is_empty()),
            after: request.cursor,
            limit,
        })
    }
}

/// The command a rerun repeats: the original's command and data (secret values masked: the
/// sealed ones are carried by [`RerunOf`]), and for a library run the version the original
/// resolved (`name@version`), not the newest.
fn rerun_spec(job: &job::Model) -> Result<CommandSpec, DomainError> {
    let mut data = job.data.clone();
    if let Some(object) = data.as_object_mut()
        && let Some(library) = object.remove("library")
        && let (Some(script), Some(version)) = (
            object.get("script").and_then(Value::as_str),
            library.get("version").and_then(Value::as_str),
        )
    {
        let pinned = format!("{}@{version}", script.split('@').next().unwrap_or(script));
        object.insert("script".into(), pinned.into());
    }
    CommandSpec::new(
        job.command.clone(),
        Some(data),
        u32::try_from(job.timeout_s).ok(),
        u32::try_from(job.ttl_s).ok(),
    )
}

#[cfg(test)]
mod tests {
    use super::rerun_spec;
    use serde_json::json;

    fn job(data: serde_json::Value) -> outpost_store::job::Model {
        outpost_store::job::Model {
            id: "j".into(),
            tenant_id: "t".into(),
            command: "run".into(),
            script: Some("backup".into()),
            data,
            target: json!({"all": true}),
            timeout_s: 30,
            ttl_s: 60,
            status: "failed".into(),
            created_at: chrono::DateTime::UNIX_EPOCH,
            finished_at: None,
            idempotency_key: None,
            webhook_url: None,
            webhook_status: None,
            request_fingerprint: None,
            webhook_claimed_by: None,
            webhook_claimed_until: None,
            schedule_id: None,
            scheduled_for: None,
            catch_up: None,
            note: None,
            digested: Some(true),
            rerun_of: None,
        }
    }

    #[test]
    fn a_library_run_is_re_run_at_the_version_it_resolved() {
        let spec = rerun_spec(&job(json!({
            "script": "backup",
            "params": {"WHERE": "/srv"},
            "library": {"version": "1.2.0", "sha256": "ab", "size": 1, "key": "k", "signature": "s"},
        })))
        .expect("spec");
        assert_eq!(spec.data["script"], "backup@1.2.0");
        assert!(spec.data.get("library").is_none(), "resolved again, pinned");
        assert_eq!(spec.data["params"]["WHERE"], "/srv");
        assert_eq!(spec.timeout_s, 30);
        // A manifest script keeps its name.
        let spec = rerun_spec(&job(json!({"script": "backup"}))).expect("spec");
        assert_eq!(spec.data["script"], "backup");
    }
}
