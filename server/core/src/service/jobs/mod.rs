//! Jobs: one command on one agent, a tag's agents or all of them; their runs, output and
//! events.
//!
//! A job is created with all its runs in one transaction, then each run is delivered to its
//! agent if connected; offline agents get theirs when they reconnect (until `ttl_s`). Runs an
//! agent's key does not permit are stored as failed (`forbidden`) and never sent, and so are
//! runs of a script an agent's last `register` did not list (`script_not_allowed`, see
//! [`commands::script_refusal`]). A job for one agent id is refused instead.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use outpost_protocol::{OutputStream, codes};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::Core;
use super::access::key_refusal;
use super::audit::record_of;
use super::commands::{self, CommandSpec};
use super::scripts;
use crate::tags::TagRule;
use outpost_store::domain::{
    AuditAction, AuditEvent, AuditTarget, Caller, Command, CommandState, DomainError, JobState,
};
use outpost_store::secrets;
use outpost_store::{
    AgentTarget, AuditRecord, Fire, JobFilter, NewJob, NewRun, agent_key, command, job,
};

mod results;
pub use results::{Rerun, RerunWhich, RunsRequest, Skipped, Summary};

/// Longest `?wait=`.
pub const MAX_WAIT_S: u64 = 600;
/// Error code of a run not sent because it would downgrade its agent without `force`.
const DOWNGRADE_REFUSED: &str = "downgrade_needs_force";
/// Chunks fetched per page when streaming output.
const OUTPUT_PAGE: u64 = 64;
/// The most bytes [`Jobs::output_parts`] returns at once.
pub const MAX_OUTPUT_PARTS_BYTES: u64 = 1024 * 1024;
/// Shortest `id` filter: shorter ones match too much to be worth a scan.
pub const MIN_ID_PART: usize = 4;
/// Events queued for one job event stream before its reader is waited on.
const EVENT_QUEUE: usize = 64;

/// Who a job is for. Agents listed by id and agents with every listed tag are both included.
/// Stored with the job as asked (this serialisation is what `target` shows).
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct Target {
    /// Agent ids.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agents: Option<Vec<String>>,
    /// Agents having all of these tags.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
    /// Every agent of the tenant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub all: Option<bool>,
}

/// A job to create.
#[derive(Debug)]
pub struct NewJobRequest {
    /// What to run.
    pub spec: CommandSpec,
    /// On which agents.
    pub target: Target,
    /// Told when the job finishes.
    pub webhook_url: Option<String>,
    /// A retry with the same key returns the first job.
    pub idempotency_key: Option<String>,
    /// The schedule's fire that makes this job (`service::schedules`): a target that
    /// matches no agent then records a failed job without runs that says so, instead of
    /// refusing, and the fire makes at most one job.
    pub fire: Option<Fire>,
    /// The job this one re-runs, with its runs' sealed secret parameters: `spec.data` then
    /// holds the original's masked values and is not sealed again ([`Jobs::rerun`]).
    pub rerun: Option<RerunOf>,
}

/// What a rerun carries over from the job it repeats.
#[derive(Debug, Clone)]
pub struct RerunOf {
    /// The original job.
    pub job_id: String,
    /// Its runs' sealed secret parameters.
    pub sealed_params: Option<String>,
}

/// Filters of a job listing, as asked (checked here).
#[derive(Debug, Default)]
pub struct ListRequest {
    /// Jobs with a run on this agent.
    pub agent_id: Option<String>,
    /// `run` jobs of this script.
    pub script: Option<String>,
    /// Jobs of this command.
    pub command: Option<String>,
    /// Jobs in this state.
    pub status: Option<String>,
    /// Created at or after.
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// Created before.
    pub until: Option<chrono::DateTime<chrono::Utc>>,
    /// From a previous page's `next_cursor`.
    pub cursor: Option<String>,
    /// Page size, 1–200 (default 50).
    pub limit: Option<u64>,
    /// Jobs whose id starts or ends with this.
    pub id: Option<String>,
    /// Jobs of this schedule.
    pub schedule_id: Option<String>,
}

/// A job with its runs.
#[derive(Debug)]
pub struct JobWithRuns {
    /// The job.
    pub job: job::Model,
    /// Its runs, by id.
    pub runs: Vec<command::Model>,
}

/// A job of a listing: the job and how many of its runs are in each state (not the runs:
/// a job may have 10,000).
#[derive(Debug)]
pub struct JobSummary {
    /// The job.
    pub job: job::Model,
    /// Its runs by state.
    pub run_counts: HashMap<String, usize>,
    /// How many of its runs failed (`success` false: failed, timed out, lost, …).
    pub failed: usize,
}

impl JobSummary {
    /// How many runs it has.
    pub fn runs(&self) -> usize {
        self.run_counts.values().sum()
    }
}

/// A page of jobs, newest first.
#[derive(Debug)]
pub struct JobPage {
    /// The jobs with their runs counted.
    pub jobs: Vec<JobSummary>,
    /// The cursor of the next page; `None` on the last.
    pub next_cursor: Option<String>,
}

/// A run's output, readable as the caller consumes it.
pub struct RunOutput<S> {
    /// The run.
    pub run: command::Model,
    /// Its bytes from the offset asked for, when the run is final (a running one streams).
    pub length: Option<u64>,
    /// The bytes, page by page.
    pub bytes: S,
}

/// What a job event stream carries.
#[derive(Debug)]
pub enum JobEvent {
    /// A chunk of output, with its id (to resume after).
    Output {
        /// The chunk's id.
        id: i64,
        /// The run it belongs to.
        run_id: String,
        /// 0 stdout, 1 stderr.
        stream: i16,
        /// Its sequence number within the stream.
        seq: i64,
        /// The bytes.
        data: Vec<u8>,
    },
    /// A run in a state this stream has not shown yet.
    State(Box<command::Model>),
    /// The job is finished; the stream ends.
    End {
        /// The job.
        job_id: String,
        /// Its final state.
        status: String,
    },
}

/// A job decided but not yet written (see [`Jobs::prepare`]).
pub(super) struct Prepared {
    /// The job's row.
    pub new: NewJob,
    /// Its runs.
    pub runs: Vec<NewRun>,
    /// Its audit record (the job's id is filled in when it is written).
    pub audit: AuditRecord,
    /// The request's fingerprint, when it has an idempotency key.
    pub fingerprint: Option<String>,
}

/// What making a job reads about its tenant, kept for the next job of a batch: the agents
/// and keys a target resolves against, who lacks a script, who declares secret parameters,
/// the agents' versions. A batch sees the tenant as it was when the batch began, as one job
/// does.
#[derive(Default)]
pub(super) struct Lookups {
    targets: HashMap<String, Fleet>,
    without_script: HashMap<(String, String), HashMap<String, Value>>,
    libraries: HashMap<String, HashMap<String, Value>>,
    secret_candidates: HashMap<String, Vec<(String, Value)>>,
    versions: HashMap<String, HashMap<String, String>>,
}

/// A tenant's agents and agent keys, as a target resolves against them.
pub(super) struct Fleet {
    /// The agents, in the store's order (a job's runs follow it).
    pub agents: Vec<AgentTarget>,
    /// The agent keys.
    pub keys: Vec<agent_key::Model>,
    /// Each agent's place in `agents`, by id. A target that names its agents looks them up
    /// here: scanning the fleet instead, for each job of a batch, made 10,000 schedules firing
    /// at once over 15,000 agents cost ~2.8 ms of CPU per fire (docs/BENCHMARKS.md, "Schedules
    /// over a large fleet").
    by_id: HashMap<String, usize>,
}

impl Lookups {
    async fn targets(&mut self, core: &Core, tenant_id: &str) -> Result<&Fleet, DomainError> {
        if !self.targets.contains_key(tenant_id) {
            let agents = core.store.agent_targets(tenant_id).await?;
            let keys = core.store.list_agent_keys(tenant_id).await?;
            let by_id = agents
                .iter()
                .enumerate()
                .map(|(i, agent)| (agent.id.clone(), i))
                .collect();
            self.targets.insert(
                tenant_id.to_owned(),
                Fleet {
                    agents,
                    keys,
                    by_id,
                },
            );
        }
        Ok(&self.targets[tenant_id])
    }

    async fn without_script(
        &mut self,
        core: &Core,
        tenant_id: &str,
        script: &str,
    ) -> Result<&HashMap<String, Value>, DomainError> {
        let key = (tenant_id.to_owned(), script.to_owned());
        if !self.without_script.contains_key(&key) {
            let lacking = core
                .store
                .agents_without_script(tenant_id, script)
                .await?
                .into_iter()
                .collect();
            self.without_script.insert(key.clone(), lacking);
        }
        Ok(&self.without_script[&key])
    }

    async fn libraries(
        &mut self,
        core: &Core,
        tenant_id: &str,
    ) -> Result<&HashMap<String, Value>, DomainError> {
        if !self.libraries.contains_key(tenant_id) {
            let policies = core.store.agent_libraries(tenant_id).await?;
            self.libraries.insert(tenant_id.to_owned(), policies);
        }
        Ok(&self.libraries[tenant_id])
    }

    async fn secret_candidates(
        &mut self,
        core: &Core,
        tenant_id: &str,
    ) -> Result<&Vec<(String, Value)>, DomainError> {
        if !self.secret_candidates.contains_key(tenant_id) {
            let candidates = core.store.agents_with_secret_params(tenant_id).await?;
            self.secret_candidates
                .insert(tenant_id.to_owned(), candidates);
        }
        Ok(&self.secret_candidates[tenant_id])
    }

    async fn versions(
        &mut self,
        core: &Core,
        tenant_id: &str,
    ) -> Result<HashMap<String, String>, DomainError> {
        if !self.versions.contains_key(tenant_id) {
            let versions = core.store.agent_versions(tenant_id).await?;
            self.versions.insert(tenant_id.to_owned(), versions);
        }
        Ok(self.versions[tenant_id].clone())
    }
}

/// Jobs.
#[derive(Clone)]
pub struct Jobs {
    core: Arc<Core>,
}

impl Jobs {
    pub(super) fn new(core: Arc<Core>) -> Self {
        Self { core }
    }

    /// Creates a job, one run per targeted agent, and delivers the runs. With `wait`, answers
    /// when every run is final or after `wait` (capped at [`MAX_WAIT_S`]), whichever is first.
    #[tracing::instrument(skip_all, fields(tenant_id = %caller.tenant_id, command = %request.spec.command))]
    pub async fn create(
        &self,
        caller: &Caller,
        request: NewJobRequest,
        wait: Option<Duration>,
    ) -> Result<JobWithRuns, DomainError> {
        let core = &self.core;
        core.writable()?;
        let Prepared {
            new,
            runs,
            audit,
            fingerprint,
        } = self
            .prepare(caller, request, &mut Lookups::default())
            .await?;
        // On the writer's connection: a job's thousands of rows then never wait for the
        // writer's lock behind the agents' reports (see `Store::open_writer`).
        let (job, runs, created) = core
            .writer
            .store()
            .create_job_audited(new, runs, Some(audit))
            .await?;
        // A key used before answers its first job only for the same request (jobs created
        // before fingerprints were kept have none, and keep answering as they did).
        if !created
            && let (Some(theirs), Some(ours)) = (&job.request_fingerprint, &fingerprint)
            && theirs != ours
        {
            return Err(DomainError::Conflict {
                code: "idempotency_key_reused",
                message: format!(
                    "idempotency_key: already used for job {} with a different request; a retry must repeat the request exactly, a new request needs a new key",
                    job.id
                ),
            });
        }
        let wait = wait.map(|w| w.min(Duration::from_secs(MAX_WAIT_S)));
        let waiters = core.bus.waiters();
        // Watch before delivering, so that no result can slip by.
        let waiter = wait.map(|_| {
            waiters.watch_all(
                runs.iter()
                    .filter(|r| !CommandState::is_final_text(&r.state))
                    .filter_map(|r| r.id.parse().ok())
                    .collect(),
            )
        });
        if created {
            let pending: Vec<&command::Model> = runs
                .iter()
                .filter(|r| r.state == CommandState::Pending)
                .collect();
            core.bus.deliver_job(&pending);
            if pending.is_empty() && runs.iter().all(|r| CommandState::is_final_text(&r.state)) {
                // Over at once (every run refused): its end event is committed already.
                core.finish.events_recorded();
            }
            tracing::info!(job_id = %job.id, runs = runs.len(), command = %job.command, "job created");
        }
        if let (Some(wait), Some(waiter)) = (wait, &waiter)
            && let Ok(finished) = tokio::time::timeout(wait, waiter.results()).await
        {
            return self.with_finished(caller, &job.id, runs, finished).await;
        }
        self.get(caller, &job.id).await
    }

    /// Everything a job's creation decides before it writes: the target resolved to agents,
    /// each run's refusal (key, script, downgrade), the sealed parameters and the audit
    /// record. `lookups` holds what it read about the tenant, so a batch of jobs (a pass of
    /// the schedules' fire loop) reads it once.
    pub(super) async fn prepare(
        &self,
        caller: &Caller,
        request: NewJobRequest,
        lookups: &mut Lookups,
    ) -> Result<Prepared, DomainError> {
        let core = &self.core;
        let NewJobRequest {
            mut spec,
            target,
            webhook_url,
            idempotency_key,
            fire,
            rerun,
        } = request;
        if let Some(key) = &idempotency_key
            && (key.is_empty() || key.len() > 200)
        {
            return Err(DomainError::BadRequest(
                "idempotency_key: must be 1 to 200 characters".into(),
            ));
        }
        if let Some(url) = &webhook_url
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            return Err(DomainError::BadRequest(
                "webhook_url: must be an http(s) URL".into(),
            ));
        }
        let target_json = serde_json::to_value(&target).unwrap_or(Value::Null);
        commands::authorize(caller, &spec, &format!("job target {target_json}"))?;
        if spec.command == Command::Update
            && let Some(version) = spec.update_version
            && let Some(why) = core.minimum_refusal(&caller.tenant_id, &version).await?
        {
            return Err(DomainError::BadRequest(why));
        }
        // A script the tenant's library holds (or `name@version`) is a library run: the job
        // records the version it resolved to, and `data.library` what the agent checks.
        // The fingerprint is of the request as asked: a retry after a newer version was
        // uploaded is the same request.
        let asked = idempotency_key.as_ref().map(|_| spec.clone());
        let library = commands::resolve_library(core, &caller.tenant_id, &mut spec).await?;
        let (agents, keys) = self
            .resolve_with(&caller.tenant_id, &target, fire.is_some(), lookups)
            .await?;
        let note = match (agents.is_empty(), &fire) {
            (false, _) => None,
            (true, Some(_)) => Some(format!(
                "no run: the schedule fired but its target matched no agent ({})",
                no_match(&target)
            )),
            (true, None) => return Err(DomainError::Unprocessable(no_match(&target))),
        };
        // An update to an older version is refused, run by run, on agents it would downgrade
        // (unless forced).
        let versions = match (
            spec.command == Command::Update,
            spec.update_version,
            spec.update_force,
        ) {
            (true, Some(_), false) => Some(lookups.versions(core, &caller.tenant_id).await?),
            _ => None,
        };
        // A run of a script that an agent's last `register` did not list fails at once,
        // unsent (the agent would refuse it): one query for the agents that lack it, whatever
        // the target's size.
        let policies = match &library {
            Some(_) => lookups.libraries(core, &caller.tenant_id).await?.clone(),
            None => HashMap::new(),
        };
        let empty = HashMap::new();
        let without_script: &HashMap<String, Value> = match commands::run_script(&spec) {
            Some(_) if library.is_some() => &empty,
            Some(script) => {
                lookups
                    .without_script(core, &caller.tenant_id, script)
                    .await?
            }
            None => &empty,
        };
        let one_agent = agents.len() == 1
            && target.tags.is_none()
            && target.all != Some(true)
            && fire.is_none();
        let mut runs = Vec::with_capacity(agents.len());
        for agent in &agents {
            let mut refused = key_refusal(&agent.id, keys.get(&agent.key_id), &spec.command)
                .map(|why| (codes::FORBIDDEN, why));
            if refused.is_none()
                && let (Some(script), Some(scripts)) =
                    (commands::run_script(&spec), without_script.get(&agent.id))
                && let Some(why) = commands::script_refusal(&agent.id, scripts, script)
            {
                refused = Some((codes::SCRIPT_NOT_ALLOWED, why));
            }
            if refused.is_none()
                && let Some(resolved) = &library
                && let Some(why) =
                    scripts::library_refusal(&agent.id, policies.get(&agent.id), resolved)
            {
                refused = Some((codes::SCRIPT_NOT_ALLOWED, why));
            }
            if refused.is_none()
                && let Some(version) = versions.as_ref().and_then(|v| v.get(&agent.id))
                && let Some(why) = commands::downgrade_refusal(&agent.id, version, &spec)
            {
                refused = Some((DOWNGRADE_REFUSED, why));
            }
            match refused {
                Some((codes::FORBIDDEN, why)) if one_agent => {
                    return Err(DomainError::Forbidden(why));
                }
                Some((codes::SCRIPT_NOT_ALLOWED, why)) if one_agent => {
                    return Err(DomainError::Refused {
                        code: codes::SCRIPT_NOT_ALLOWED,
                        message: why,
                    });
                }
                Some((_, why)) if one_agent => return Err(DomainError::BadRequest(why)),
                _ => {}
            }
            runs.push(NewRun {
                agent_id: agent.id.clone(),
                refused: refused.map(|(code, why)| (code.to_owned(), why)),
                key_id: Some(agent.key_id.clone()),
            });
        }
        let (data, sealed_params) = match (
            &rerun,
            secrets::script_with_params(&spec.command, &spec.data),
        ) {
            (Some(rerun), _) => (spec.data.clone(), rerun.sealed_params.clone()),
            (None, Some(script)) => {
                let candidates = lookups.secret_candidates(core, &caller.tenant_id).await?;
                let targeted: HashSet<&str> = agents.iter().map(|a| a.id.as_str()).collect();
                let declared = candidates
                    .iter()
                    .filter(|(id, _)| targeted.contains(id.as_str()))
                    .flat_map(|(_, scripts)| secrets::declared(scripts, script))
                    .chain(
                        library
                            .iter()
                            .flat_map(|l| l.secret_params.iter().map(String::as_str)),
                    );
                spec.sealed_data(core, &caller.tenant_id, declared)
            }
            (None, None) => spec.sealed_data(core, &caller.tenant_id, []),
        };
        let fingerprint = asked.as_ref().map(|asked| {
            request_fingerprint(core, caller, asked, &target_json, webhook_url.as_deref())
        });
        // What the audit log keeps of the request: never `data` (parameters may be secret),
        // nor the webhook URL (it may hold a token).
        let refused = runs.iter().filter(|r| r.refused.is_some()).count();
        let audit = record_of(
            caller,
            AuditEvent::new(AuditAction::JobTrigger, AuditTarget::Job, "").with(
                commands::audit_detail(
                    &spec,
                    json!({
                        "target": target_json,
                        "runs": runs.len(),
                        "refused": refused,
                        "webhook": webhook_url.is_some(),
                        "idempotency_key": idempotency_key,
                        "rerun_of": rerun.as_ref().map(|r| r.job_id.clone()),
                    }),
                ),
            ),
        );
        let new = NewJob {
            tenant_id: caller.tenant_id.clone(),
            command: spec.command.clone(),
            data,
            sealed_params,
            target: target_json,
            timeout_s: spec.timeout_s,
            ttl_s: spec.ttl_s,
            idempotency_key,
            request_fingerprint: fingerprint.clone(),
            webhook_url,
            fire,
            note,
            rerun_of: rerun.map(|r| r.job_id),
        };
        Ok(Prepared {
            new,
            runs,
            audit,
            fingerprint,
        })
    }

    /// The job once every run the caller waited for is final. The waiters were handed each
    /// run's row as the writer stored it, so only the job's own row is read again: reading
    /// back a big fan-out's runs would cost more than the rest of the answer.
    async fn with_finished(
        &self,
        caller: &Caller,
        job_id: &str,
        mut runs: Vec<command::Model>,
        finished: Vec<command::Model>,
    ) -> Result<JobWithRuns, DomainError> {
        // `finished` holds the open runs' rows in the order they were given to the waiter
        // (`Waiters::watch_all` keeps it), which is `runs`' order: one pass pairs them.
        let mut finished = finished.into_iter().peekable();
        for run in &mut runs {
            if let Some(stored) = finished.next_if(|stored| stored.id == run.id) {
                *run = stored;
            }
        }
        debug_assert!(finished.next().is_none(), "a finished run out of order");
        // The same order as a read from the store.
        runs.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        let job = self.find(caller, job_id).await?;
        Ok(JobWithRuns { job, runs })
    }

    /// Resolves a target to agents of the caller's tenant, with the tenant's agent keys (by
    /// id): tags are matched as [`TagRule`] says, and each agent's key decides what it may
    /// run.
    /// An agent id that names no agent is refused, unless `lenient` (a schedule's fire: an
    /// agent forgotten since the schedule was made is left out, and the job says so when no
    /// agent is left).
    pub(super) async fn resolve(
        &self,
        caller: &Caller,
        target: &Target,
        lenient: bool,
    ) -> Result<(Vec<AgentTarget>, HashMap<String, agent_key::Model>), DomainError> {
        self.resolve_with(&caller.tenant_id, target, lenient, &mut Lookups::default())
            .await
    }

    /// [`Jobs::resolve`] for the tenant's own background work (a rollout's convergence),
    /// where no caller asks: agent ids that name no agent are left out.
    pub(super) async fn resolve_in(
        &self,
        tenant_id: &str,
        target: &Target,
    ) -> Result<Vec<AgentTarget>, DomainError> {
        Ok(self
            .resolve_with(tenant_id, target, true, &mut Lookups::default())
            .await?
            .0)
    }

    /// [`Jobs::resolve`] against what `lookups` read of the tenant.
    async fn resolve_with(
        &self,
        tenant_id: &str,
        target: &Target,
        lenient: bool,
        lookups: &mut Lookups,
    ) -> Result<(Vec<AgentTarget>, HashMap<String, agent_key::Model>), DomainError> {
        let ids = target.agents.as_deref().unwrap_or_default();
        let tags = target.tags.as_deref().unwrap_or_default();
        let all = target.all.unwrap_or(false);
        if ids.is_empty() && tags.is_empty() && !all {
            return Err(DomainError::BadRequest(
                "target: give agents, tags or all: true".into(),
            ));
        }
        let fleet = lookups.targets(&self.core, tenant_id).await?;
        // Places in the fleet, so that the runs keep the fleet's order.
        let mut chosen = BTreeSet::new();
        for id in ids {
            match fleet.by_id.get(id.as_str()) {
                Some(&i) => {
                    chosen.insert(i);
                }
                None if lenient => {}
                None => {
                    return Err(DomainError::BadRequest(format!(
                        "target.agents: no agent {id}"
                    )));
                }
            }
        }
        // Only a target by tags or `all` looks at every agent.
        if all || !tags.is_empty() {
            let rule = TagRule::new(&fleet.keys);
            for (i, agent) in fleet.agents.iter().enumerate() {
                if all
                    || tags
                        .iter()
                        .all(|t| rule.has(&agent.key_id, &agent.declared, &agent.server, t))
                {
                    chosen.insert(i);
                }
            }
        }
        let agents = chosen
            .into_iter()
            .map(|i| fleet.agents[i].clone())
            .collect();
        let keys = fleet
            .keys
            .iter()
            .map(|key| (key.id.clone(), key.clone()))
            .collect();
        Ok((agents, keys))
    }

    async fn find(&self, caller: &Caller, id: &str) -> Result<job::Model, DomainError> {
        self.core
            .store
            .get_job(&caller.tenant_id, id)
            .await?
            .ok_or_else(|| DomainError::NotFound(format!("no job {id}")))
    }

    /// A job and all its runs.
    pub async fn get(&self, caller: &Caller, id: &str) -> Result<JobWithRuns, DomainError> {
        let job = self.find(caller, id).await?;
        let runs = self.core.store.job_runs(&caller.tenant_id, id).await?;
        Ok(JobWithRuns { job, runs })
    }

    /// Jobs, newest first, with filters and cursor pagination.
    #[tracing::instrument(skip_all, fields(tenant_id = %caller.tenant_id))]
    pub async fn list(
        &self,
        caller: &Caller,
        request: ListRequest,
    ) -> Result<JobPage, DomainError> {
        let limit = request.limit.unwrap_or(50);
        if !(1..=200).contains(&limit) {
            return Err(DomainError::BadRequest(
                "limit: must be between 1 and 200".into(),
            ));
        }
        if let Some(status) = &request.status
            && status.parse::<JobState>().is_err()
        {
            return Err(DomainError::BadRequest(format!(
                "status: must be running, succeeded, failed or cancelled, not {status:?}"
            )));
        }
        let id_part = match request.id {
            None => None,
            Some(part) => {
                let part = part.to_ascii_lowercase();
                if !(MIN_ID_PART..=36).contains(&part.len())
                    || !part.chars().all(|c| c == '-' || c.is_ascii_hexdigit())
                {
                    return Err(DomainError::BadRequest(format!(
                        "id: must be {MIN_ID_PART} to 36 hex digits and dashes (the start or end of a job id), not {part:?}"
                    )));
                }
                Some(part)
            }
        };
        let filter = JobFilter {
            id_part,
            agent_id: request.agent_id,
            script: request.script,
            command: request.command,
            status: request.status,
            since: request.since,
            until: request.until,
            schedule_id: request.schedule_id,
            before: request.cursor,
            limit: limit + 1,
        };
        let store = &self.core.store;
        let mut jobs = store.list_jobs(&caller.tenant_id, &filter).await?;
        let next_cursor = if jobs.len() as u64 > limit {
            jobs.truncate(limit as usize);
            jobs.last().map(|j| j.id.clone())
        } else {
            None
        };
        let ids: Vec<String> = jobs.iter().map(|j| j.id.clone()).collect();
        let mut counts: HashMap<String, (HashMap<String, usize>, usize)> = HashMap::new();
        for (job_id, state, success, n) in store.run_counts_of_jobs(&caller.tenant_id, &ids).await?
        {
            let n = usize::try_from(n).unwrap_or(0);
            let entry = counts.entry(job_id).or_default();
            *entry.0.entry(state).or_default() += n;
            if success == Some(false) {
                entry.1 += n;
            }
        }
        let page = jobs
            .into_iter()
            .map(|job| {
                let (run_counts, failed) = counts.remove(&job.id).unwrap_or_default();
                JobSummary {
                    job,
                    run_counts,
                    failed,
                }
            })
            .collect();
        Ok(JobPage {
            jobs: page,
            next_cursor,
        })
    }

    /// Cancels the runs of a job that have not finished. Runs not yet delivered are
    /// cancelled at once; running ones are stopped by their agent (SIGTERM, SIGKILL 5 s
    /// later) and report `cancelled`.
    #[tracing::instrument(skip_all, fields(tenant_id = %caller.tenant_id, job_id = %id))]
    pub async fn cancel(&self, caller: &Caller, id: &str) -> Result<JobWithRuns, DomainError> {
        let core = &self.core;
        self.find(caller, id).await?;
        let (cancelled_now, on_agents) = core.store.cancel_job(&caller.tenant_id, id).await?;
        // Recorded right after: `cancel_job` takes its runs' and its job's row locks statement
        // by statement, as the writer does, and holding them for the log's head as well
        // could deadlock with a writer batch finishing the same job on PostgreSQL. A failed
        // append fails the request; a cancel asked again changes nothing and is recorded.
        let event = AuditEvent::new(AuditAction::JobCancel, AuditTarget::Job, id).with(json!({
            "cancelled": cancelled_now.len(),
            "signalled": on_agents.len(),
        }));
        core.store.append_audit(&record_of(caller, event)).await?;
        let cancelled = cancelled_now.len();
        core.finish.finished(cancelled_now);
        for run in &on_agents {
            core.bus.cancel(run);
        }
        tracing::info!(job_id = %id, now = cancelled, signalled = on_agents.len(), "job cancelled");
        self.get(caller, id).await
    }

    /// A run's output (`streams`, in the order it arrived), from byte `offset`, read page by
    /// page as the caller consumes it so that memory stays at one page whatever its size.
    #[tracing::instrument(skip_all, fields(tenant_id = %caller.tenant_id, job_id = %job_id, run_id = %run_id))]
    pub async fn output(
        &self,
        caller: &Caller,
        job_id: &str,
        run_id: &str,
        streams: Vec<OutputStream>,
        offset: u64,
    ) -> Result<RunOutput<impl Stream<Item = std::io::Result<Vec<u8>>> + use<>>, DomainError> {
        self.find(caller, job_id).await?;
        let run = self
            .core
            .store
            .get_command(&caller.tenant_id, run_id)
            .await?
            .filter(|r| r.job_id.as_deref() == Some(job_id))
            .ok_or_else(|| DomainError::NotFound(format!("no run {run_id} in job {job_id}")))?;
        let total: u64 = streams
            .iter()
            .map(|s| match s {
                OutputStream::Stdout => run.stdout_bytes,
                OutputStream::Stderr => run.stderr_bytes,
            })
            .sum::<i64>() as u64;
        // A finished run's output is complete, so its length is known; a running one streams.
        let length = CommandState::is_final_text(&run.state).then(|| total.saturating_sub(offset));
        let store = self.core.store.clone();
        let tenant = caller.tenant_id.clone();
        let run_id = run_id.to_owned();
        let bytes =
            futures_util::stream::unfold((0i64, offset, false), move |(after, mut skip, done)| {
                let (store, tenant, run_id, streams) = (
                    store.clone(),
                    tenant.clone(),
                    run_id.clone(),
                    streams.clone(),
                );
                async move {
                    if done {
                        return None;
                    }
                    let page = match store
                        .output_page(&tenant, &run_id, &streams, after, OUTPUT_PAGE)
                        .await
                    {
                        Ok(page) => page,
                        Err(err) => {
                            return Some((
                                Err(std::io::Error::other(err.to_string())),
                                (after, skip, true),
                            ));
                        }
                    };
                    let last = page.last().map(|c| c.id)?;
                    let finished = (page.len() as u64) < OUTPUT_PAGE;
                    let mut bytes = Vec::new();
                    for chunk in page {
                        let len = chunk.data.len() as u64;
                        if skip >= len {
                            skip -= len;
                            continue;
                        }
                        bytes.extend_from_slice(&chunk.data[skip as usize..]);
                        skip = 0;
                    }
                    Some((Ok::<_, std::io::Error>(bytes), (last, skip, finished)))
                }
            });
        Ok(RunOutput { run, length, bytes })
    }

    /// At most `len` bytes (at most [`MAX_OUTPUT_PARTS_BYTES`]) of a run's output from byte
    /// `offset` (both streams, in the order they arrived), each part with its stream:
    /// consecutive chunks of one stream are one part. For the dashboard's "earlier" output,
    /// which tells stdout and stderr apart as the live stream does.
    pub async fn output_parts(
        &self,
        caller: &Caller,
        job_id: &str,
        run_id: &str,
        offset: u64,
        len: u64,
    ) -> Result<Vec<(OutputStream, Vec<u8>)>, DomainError> {
        if len > MAX_OUTPUT_PARTS_BYTES {
            return Err(DomainError::BadRequest(format!(
                "len: at most {MAX_OUTPUT_PARTS_BYTES}"
            )));
        }
        self.find(caller, job_id).await?;
        self.core
            .store
            .get_command(&caller.tenant_id, run_id)
            .await?
            .filter(|r| r.job_id.as_deref() == Some(job_id))
            .ok_or_else(|| DomainError::NotFound(format!("no run {run_id} in job {job_id}")))?;
        let streams = [OutputStream::Stdout, OutputStream::Stderr];
        let (mut after, mut skip, mut left) = (0i64, offset, len);
        let mut parts: Vec<(OutputStream, Vec<u8>)> = Vec::new();
        while left > 0 {
            let page = self
                .core
                .store
                .output_page(&caller.tenant_id, run_id, &streams, after, OUTPUT_PAGE)
                .await?;
            let Some(last) = page.last().map(|c| c.id) else {
                break;
            };
            let full = page.len() as u64 == OUTPUT_PAGE;
            for chunk in page {
                let size = chunk.data.len() as u64;
                if skip >= size {
                    skip -= size;
                    continue;
                }
                let start = skip as usize;
                skip = 0;
                let end = start + (size - start as u64).min(left) as usize;
                left -= (end - start) as u64;
                let stream = if chunk.stream == 0 {
                    OutputStream::Stdout
                } else {
                    OutputStream::Stderr
                };
                match parts.last_mut() {
                    Some((s, bytes)) if *s == stream => {
                        bytes.extend_from_slice(&chunk.data[start..end]);
                    }
                    _ => parts.push((stream, chunk.data[start..end].to_vec())),
                }
                if left == 0 {
                    break;
                }
            }
            if !full {
                break;
            }
            after = last;
        }
        Ok(parts)
    }

    /// Follows a job: output after chunk `after`, each run's state as it changes, and the end.
    /// The stream closes after [`JobEvent::End`], or when the receiver is dropped.
    #[tracing::instrument(skip_all, fields(tenant_id = %caller.tenant_id, job_id = %job_id))]
    pub async fn follow(
        &self,
        caller: &Caller,
        job_id: &str,
        after: i64,
    ) -> Result<mpsc::Receiver<JobEvent>, DomainError> {
        self.find(caller, job_id).await?;
        // Subscribe before the first read, so that nothing between the two is missed.
        let changes = self.core.bus.waiters().job_events();
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        tokio::spawn(follow(
            self.core.clone(),
            caller.tenant_id.clone(),
            job_id.to_owned(),
            after,
            changes,
            tx,
        ));
        Ok(rx)
    }

    /// Follows one run of a job, as [`follow`](Self::follow) follows the whole job: its output
    /// after chunk `after`, its state as it changes, and [`JobEvent::End`] (with the run's
    /// final state) once it is final. Reads only that run's chunks and row, so that a page
    /// showing one run of a job over 10,000 agents costs what a job of one run does. Returns
    /// the run as it stood when the stream started.
    #[tracing::instrument(skip_all, fields(tenant_id = %caller.tenant_id, job_id = %job_id, run_id = %run_id))]
    pub async fn follow_run(
        &self,
        caller: &Caller,
        job_id: &str,
        run_id: &str,
        after: i64,
    ) -> Result<(command::Model, mpsc::Receiver<JobEvent>), DomainError> {
        let run = self.run_of(caller, job_id, run_id).await?;
        let changes = self.core.bus.waiters().job_events();
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        tokio::spawn(follow_run(
            self.core.clone(),
            run.clone(),
            after,
            changes,
            tx,
        ));
        Ok((run, rx))
    }

    /// Notifications that a job changed (a run's state or output), for a reader that reads
    /// what it shows again when told, at its own pace (the dashboard's summary of a job).
    /// Subscribed after the job is found (another tenant's job is not found); a notification
    /// with an empty job id means "anything may have changed".
    pub async fn changes(
        &self,
        caller: &Caller,
        job_id: &str,
    ) -> Result<tokio::sync::broadcast::Receiver<crate::bus::JobChanged>, DomainError> {
        self.find(caller, job_id).await?;
        Ok(self.core.bus.waiters().job_events())
    }

    /// One run of a job (404 when the job has no such run).
    pub async fn run_of(
        &self,
        caller: &Caller,
        job_id: &str,
        run_id: &str,
    ) -> Result<command::Model, DomainError> {
        self.find(caller, job_id).await?;
        self.core
            .store
            .get_command(&caller.tenant_id, run_id)
            .await?
            .filter(|r| r.job_id.as_deref() == Some(job_id))
            .ok_or_else(|| DomainError::NotFound(format!("no run {run_id} in job {job_id}")))
    }

    /// A job's webhook deliveries: the job (its URL and state) and every attempt.
    pub async fn webhook(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<(job::Model, Vec<outpost_store::webhook_attempt::Model>), DomainError> {
        let job = self.find(caller, id).await?;
        let attempts = self
            .core
            .store
            .webhook_attempts(&caller.tenant_id, id)
            .await?;
        Ok((job, attempts))
    }
}

/// The fingerprint of a job request: what it asks for (command, data, target, timeouts,
/// webhook), with defaults filled in, as canonical JSON, hashed under the master key for the
/// caller's tenant. A retry of the same request has the same fingerprint; so does one that
/// spells a default out (`"timeout_s": 60`) or orders an object's keys otherwise.
fn request_fingerprint(
    core: &Core,
    caller: &Caller,
    spec: &CommandSpec,
    target: &Value,
    webhook_url: Option<&str>,
) -> String {
    let request = serde_json::json!({
        "command": spec.command,
        "data": spec.data,
        "target": target,
        "timeout_s": spec.timeout_s,
        "ttl_s": spec.ttl_s,
        "webhook_url": webhook_url,
    });
    let mut text = String::new();
    canonical_json(&request, &mut text);
    core.master.fingerprint(&caller.tenant_id, text.as_bytes())
}

/// `value` as JSON with every object's keys sorted, whatever order the map keeps them in.
fn canonical_json(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::from(key.as_str()).to_string());
                out.push(':');
                canonical_json(&map[key], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_json(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// The message of a target that matches no agent, naming the tags it asked for (the usual
/// cause: a tag no agent has, or one that only agents declare for themselves while a key
/// assigns it, which a target does not trust: see `crate::tags`).
fn no_match(target: &Target) -> String {
    let tags = target.tags.as_deref().unwrap_or_default();
    let quoted = || {
        tags.iter()
            .map(|t| format!("{t:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match tags {
        [] if target.all == Some(true) => {
            "target: all: there are no agents yet; install one with the server's deploy.sh".into()
        }
        [] => "target: no agent matches".into(),
        [_] => format!("target: no agent has the tag {}", quoted()),
        _ => format!("target: no agent has all of the tags {}", quoted()),
    }
}

/// The task behind [`Jobs::follow_run`]: [`follow`] for one run.
async fn follow_run(
    core: Arc<Core>,
    run: command::Model,
    mut after: i64,
    mut changes: tokio::sync::broadcast::Receiver<crate::bus::JobChanged>,
    tx: mpsc::Sender<JobEvent>,
) {
    let tenant_id = run.tenant_id.clone();
    let job_id = run.job_id.clone().unwrap_or_default();
    let run_id = run.id.clone();
    let mut sent: Option<String> = None;
    let of = Of::Run(&run_id);
    loop {
        let run = match core.store.get_command(&tenant_id, &run_id).await {
            Ok(Some(run)) => run,
            _ => return,
        };
        // The output after the row, as `follow` does: a run seen final has all its output.
        if !send_pages(&core, &tx, &tenant_id, of, &mut after).await {
            return;
        }
        let over = CommandState::is_final_text(&run.state);
        if sent.as_deref() != Some(run.state.as_str()) {
            sent = Some(run.state.clone());
            let state = run.state.clone();
            if tx.send(JobEvent::State(Box::new(run))).await.is_err() {
                return;
            }
            if over {
                let _ = tx
                    .send(JobEvent::End {
                        job_id: job_id.clone(),
                        status: state,
                    })
                    .await;
                return;
            }
        }
        if !job_changed(&core, &tx, &mut changes, &tenant_id, &job_id).await {
            return;
        }
    }
}

/// Feeds one event stream until the job ends or the reader goes away (`tx` closes).
async fn follow(
    core: Arc<Core>,
    tenant_id: String,
    job_id: String,
    mut after: i64,
    mut changes: tokio::sync::broadcast::Receiver<crate::bus::JobChanged>,
    tx: mpsc::Sender<JobEvent>,
) {
    let mut sent: HashMap<String, String> = HashMap::new();
    loop {
        let (job, runs) = match (
            core.store.get_job(&tenant_id, &job_id).await,
            core.store.job_runs(&tenant_id, &job_id).await,
        ) {
            (Ok(Some(job)), Ok(runs)) => (job, runs),
            _ => return,
        };
        // New output, in pages, from where this reader is; read after the rows: a run's
        // output is committed before its final state, so every run seen final above has all
        // of its output sent before its state and before the end (read the other way round,
        // output committed between the two reads was lost to this reader).
        if !send_pages(&core, &tx, &tenant_id, Of::Job(&job_id), &mut after).await {
            return;
        }
        // Runs whose state this reader has not seen.
        for run in runs {
            if sent.get(&run.id) == Some(&run.state) {
                continue;
            }
            sent.insert(run.id.clone(), run.state.clone());
            if tx.send(JobEvent::State(Box::new(run))).await.is_err() {
                return;
            }
        }
        if job.status != JobState::Running {
            let _ = tx
                .send(JobEvent::End {
                    job_id: job.id,
                    status: job.status,
                })
                .await;
            return;
        }
        if !job_changed(&core, &tx, &mut changes, &tenant_id, &job_id).await {
            return;
        }
    }
}

/// Waits until the job changes (true; also when this reader fell behind the changes, so that
/// it re-reads everything from the store), or the reader leaves or the server stops (false).
async fn job_changed(
    core: &Core,
    tx: &mpsc::Sender<JobEvent>,
    changes: &mut tokio::sync::broadcast::Receiver<crate::bus::JobChanged>,
    tenant_id: &str,
    job_id: &str,
) -> bool {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        tokio::select! {
            () = tx.closed() => return false,
            () = core.shutdown.cancelled() => return false,
            change = changes.recv() => match change {
                Ok(c) if c.concerns(tenant_id, job_id) => return true,
                Ok(_) => continue,
                Err(RecvError::Lagged(_)) => return true,
                Err(RecvError::Closed) => return false,
            },
        }
    }
}

/// Whose output an event stream reads.
#[derive(Clone, Copy)]
enum Of<'a> {
    Job(&'a str),
    Run(&'a str),
}

/// Sends the output of a job or run after chunk `after`, in pages until one is not full,
/// moving `after` past it; false once the reader is gone or a read fails (logged).
async fn send_pages(
    core: &Core,
    tx: &mpsc::Sender<JobEvent>,
    tenant_id: &str,
    of: Of<'_>,
    after: &mut i64,
) -> bool {
    const STREAMS: [OutputStream; 2] = [OutputStream::Stdout, OutputStream::Stderr];
    loop {
        let page = match of {
            Of::Job(job_id) => {
                core.store
                    .job_output_page(tenant_id, job_id, *after, OUTPUT_PAGE)
                    .await
            }
            Of::Run(run_id) => {
                core.store
                    .output_page(tenant_id, run_id, &STREAMS, *after, OUTPUT_PAGE)
                    .await
            }
        };
        let page = match page {
            Ok(page) => page,
            Err(err) => {
                tracing::warn!(error = %err, "event stream: reading output failed");
                return false;
            }
        };
        let full = page.len() as u64 == OUTPUT_PAGE;
        if !send_output(tx, page, after).await {
            return false;
        }
        if !full {
            return true;
        }
    }
}

/// Sends a page of output as events, moving `after` past it; false once the reader is gone.
async fn send_output(
    tx: &mpsc::Sender<JobEvent>,
    page: Vec<outpost_store::output_chunk::Model>,
    after: &mut i64,
) -> bool {
    for chunk in page {
        *after = chunk.id;
        let event = JobEvent::Output {
            id: chunk.id,
            run_id: chunk.command_id,
            stream: chunk.stream,
            seq: chunk.seq,
            data: chunk.data,
        };
        if tx.send(event).await.is_err() {
            return false;
        }
    }
    true
}
