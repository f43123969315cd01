//! Commands to one agent, or to every agent of a key: validate, store, deliver, and wait for
//! the result.
//!
//! The path every single command takes: [`Commands::send`] (rights checked, command
//! committed) -> [`Bus::deliver`](crate::bus::Bus::deliver) (frame out, wherever the agent is)
//! -> agent -> its connection (result committed) -> `crate::finish` wakes the waiter here.
//! Storing and delivering are one step ([`Core::store_and_deliver`]): no caller can store a
//! command and forget to send it.
//!
//! Secret parameters are masked and sealed before a command is stored, and unsealed only in
//! `crate::frames` (see [`outpost_store::secrets`]). An `update` with `force` may downgrade agents, so
//! only an owner may ask for one ([`authorize`]), and an `update` to a version older than an
//! agent's is refused without it ([`downgrade_refusal`]); the supervisor checks again against
//! the binary it runs. The checks here are shared with jobs (`super::jobs`), which apply them
//! run by run.

use std::collections::BTreeSet;
use std::time::Duration;

use std::sync::Arc;

use tracing::Instrument;

use outpost_protocol::release::Version;
use outpost_protocol::{commands, limits};
use serde_json::Value;

use super::Core;
use super::access::{Access, Action, key_refusal};
use super::audit::record_of;
use outpost_store::domain::{
    AuditAction, AuditEvent, AuditTarget, Caller, CommandState, DomainError,
};
use outpost_store::secrets;
use outpost_store::{AuditRecord, NewCommand, agent, agent_key, command};

/// Agent ids a fan-out's audit row lists, at most (it counts them all).
const AUDIT_AGENTS_LISTED: usize = 100;

/// Extra time a waiting caller gives the agent beyond the command's own timeout, so a command
/// that times out on the agent is reported as `timed_out` rather than as a 504.
const WAIT_GRACE: Duration = Duration::from_secs(2);

/// What to run, as validated from a request.
#[derive(Clone)]
pub struct CommandSpec {
    /// Command name.
    pub command: String,
    /// Arguments, as the caller gave them (secret values in the clear: see
    /// [`CommandSpec::sealed_data`]).
    pub data: Value,
    /// Run timeout.
    pub timeout_s: u32,
    /// Wait for an offline agent this long.
    pub ttl_s: u32,
    /// Parameters the caller forces secret (`data.secret_params`).
    pub secret_params: BTreeSet<String>,
    /// For `update`: the version asked for (`data.version`), if any.
    pub update_version: Option<Version>,
    /// For `update`: `data.force`, which allows a downgrade.
    pub update_force: bool,
}

/// Leaves parameter values out, which may be secrets.
impl std::fmt::Debug for CommandSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandSpec")
            .field("command", &self.command)
            .field("data", &secrets::redacted(&self.data))
            .field("timeout_s", &self.timeout_s)
            .field("ttl_s", &self.ttl_s)
            .field("secret_params", &self.secret_params)
            .field("update_version", &self.update_version)
            .field("update_force", &self.update_force)
            .finish()
    }
}

impl CommandSpec {
    /// Validates a request's fields; errors name the field.
    pub fn new(
        command: String,
        data: Option<Value>,
        timeout_s: Option<u32>,
        ttl_s: Option<u32>,
    ) -> Result<Self, DomainError> {
        if !commands::ALL.contains(&command.as_str()) {
            return Err(DomainError::BadRequest(format!(
                "command: unknown command {command:?}; expected one of {}",
                commands::ALL.join(", ")
            )));
        }
        let timeout_s = timeout_s.unwrap_or(limits::DEFAULT_TIMEOUT_S);
        if timeout_s == 0 || timeout_s > limits::MAX_TIMEOUT_S {
            return Err(DomainError::BadRequest(format!(
                "timeout_s: must be between 1 and {}",
                limits::MAX_TIMEOUT_S
            )));
        }
        let ttl_s = ttl_s.unwrap_or(limits::DEFAULT_TTL_S);
        if ttl_s > limits::MAX_TTL_S {
            return Err(DomainError::BadRequest(format!(
                "ttl_s: must be at most {}",
                limits::MAX_TTL_S
            )));
        }
        let data = data.unwrap_or(Value::Object(Default::default()));
        if !data.is_object() {
            return Err(DomainError::BadRequest(
                "data: must be a JSON object".into(),
            ));
        }
        let secret_params = secrets::requested(&command, &data)?;
        let (update_version, update_force) = if command == commands::UPDATE {
            update_options(&data)?
        } else {
            (None, false)
        };
        if command == commands::RUN {
            validate_run_data(&data)?;
        }
        Ok(Self {
            command,
            data,
            timeout_s,
            ttl_s,
            secret_params,
            update_version,
            update_force,
        })
    }

    /// The data to store for agents whose manifests mark `declared` secret (with what the
    /// caller forced): secret values masked, and the values sealed. See [`outpost_store::secrets`].
    pub(super) fn sealed_data<'a>(
        &self,
        core: &Core,
        tenant_id: &str,
        declared: impl IntoIterator<Item = &'a str>,
    ) -> (Value, Option<String>) {
        let mut secret = self.secret_params.clone();
        secret.extend(declared.into_iter().map(str::to_owned));
        secrets::seal(&core.master, tenant_id, &self.data, &secret)
    }

    /// How long a caller waits for the result.
    pub fn wait_for(&self) -> Duration {
        Duration::from_secs(u64::from(self.timeout_s)) + WAIT_GRACE
    }
}

/// `data.version` and `data.force` of an `update`, checked.
fn update_options(data: &Value) -> Result<(Option<Version>, bool), DomainError> {
    let version = match data.get("version") {
        None | Some(Value::Null) => None,
        Some(Value::String(v)) => Some(
            v.parse()
                .map_err(|e| DomainError::BadRequest(format!("data.version: {e}")))?,
        ),
        Some(_) => {
            return Err(DomainError::BadRequest(
                "data.version: must be a version like \"1.2.3\"".into(),
            ));
        }
    };
    let force = match data.get("force") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(force)) => *force,
        Some(_) => {
            return Err(DomainError::BadRequest(
                "data.force: must be true or false".into(),
            ));
        }
    };
    Ok((version, force))
}

/// Checks what only some callers may ask for: control commands need an admin (members run
/// and cancel, CONTRACT.md §9), and a forced `update` (which may downgrade agents,
/// past the supervisor's own refusal) needs an owner. A forced update that is allowed is
/// logged with the caller's key, at info (the audit log records it with the command: its
/// `detail.force`). `target` says whom it is for, for the log line.
pub fn authorize(caller: &Caller, spec: &CommandSpec, target: &str) -> Result<(), DomainError> {
    if matches!(
        spec.command.as_str(),
        commands::RESTART | commands::UPDATE | commands::REDEPLOY
    ) {
        Access::require(caller, Action::ControlAgents)?;
    }
    if spec.command != commands::UPDATE || !spec.update_force {
        return Ok(());
    }
    Access::require(caller, Action::ForceUpdate)?;
    tracing::info!(
        caller = %caller.principal,
        role = %caller.role,
        target,
        version = ?spec.update_version.map(|v| v.to_string()),
        "forced update requested: downgrades allowed"
    );
    Ok(())
}

/// What the audit log keeps of a command: its name, the script of a `run`, the version and
/// `force` of an `update`, and its times; never `data` itself (parameters may be secret). The
/// fields of `extra` (an object) are added.
pub fn audit_detail(spec: &CommandSpec, extra: Value) -> Value {
    let mut detail = serde_json::json!({
        "command": spec.command,
        "timeout_s": spec.timeout_s,
        "ttl_s": spec.ttl_s,
    });
    if let Some(script) = run_script(spec) {
        detail["script"] = script.into();
        if let Some(library) = spec.data.get("library") {
            detail["library"] = serde_json::json!({
                "version": library.get("version"),
                "sha256": library.get("sha256"),
            });
        }
    }
    if spec.command == commands::UPDATE {
        detail["version"] = spec.update_version.map(|v| v.to_string()).into();
        detail["force"] = spec.update_force.into();
    }
    if let (Some(detail), Value::Object(extra)) = (detail.as_object_mut(), extra) {
        detail.extend(extra);
    }
    detail
}

/// Why an `update` must not go to an agent running `agent_version`: the version asked for is
/// older and `force` was not given. An agent whose version cannot be read, or an update to the
/// latest release, is left to the supervisor, which compares against the binary it runs.
pub fn downgrade_refusal(
    agent_id: &str,
    agent_version: &str,
    spec: &CommandSpec,
) -> Option<String> {
    if spec.command != commands::UPDATE || spec.update_force {
        return None;
    }
    let wanted = spec.update_version?;
    let running: Version = agent_version.parse().ok()?;
    (wanted < running).then(|| {
        format!(
            "data.force: agent {agent_id} runs {running}; updating it to {wanted} is a downgrade, \
             which needs \"force\": true (owners only)"
        )
    })
}

/// Checks a `run`'s data by the rules the agent applies (CONTRACT.md §3, `outpost_protocol::check`):
/// `script` a manifest name, `params` an object of at most 64 names `[A-Z0-9_]{1,64}` with
/// string values of at most 32 KiB without NUL. Whatever route asks for a run (a job, one
/// agent, a key's agents) passes here, so a request the agent would refuse is refused with
/// 400 before anything is stored or sent.
fn validate_run_data(data: &Value) -> Result<(), DomainError> {
    use outpost_protocol::check;
    let script = data.get("script").and_then(Value::as_str).ok_or_else(|| {
        DomainError::BadRequest("data.script: a run needs the script's name".into())
    })?;
    outpost_protocol::bundle::split_reference(script)
        .and_then(|(name, _)| check::script_name(name))
        .map_err(|why| DomainError::BadRequest(format!("data.script: {why}")))?;
    if data.get("library").is_some() {
        return Err(DomainError::BadRequest(
            "data.library: set by the server from its script library; name the script (or \
             NAME@VERSION) in data.script"
                .into(),
        ));
    }
    let params = match data.get("params") {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::Object(params)) => params,
        Some(_) => {
            return Err(DomainError::BadRequest(
                "data.params: must be an object of strings".into(),
            ));
        }
    };
    if params.len() > limits::MAX_SCRIPT_PARAMS {
        return Err(DomainError::BadRequest(format!(
            "data.params: {} parameters; the limit is {}",
            params.len(),
            limits::MAX_SCRIPT_PARAMS
        )));
    }
    for (name, value) in params {
        check::param_name(name)
            .map_err(|why| DomainError::BadRequest(format!("data.params: {why}")))?;
        check::param_value(name, value)
            .map_err(|why| DomainError::BadRequest(format!("data.params.{name}: {why}")))?;
    }
    Ok(())
}

/// Turns a `run` of a library script into a library run (CONTRACT.md §15): `data.script` becomes
/// the bare name and `data.library` the version resolved (the newest when the reference
/// names none), with the hash and signature the agent checks. A name the library does not
/// hold is left as it is (a manifest script). Every route that stores a `run` passes here.
pub(super) async fn resolve_library(
    core: &Core,
    tenant_id: &str,
    spec: &mut CommandSpec,
) -> Result<Option<super::scripts::Resolved>, DomainError> {
    let Some(script) = run_script(spec) else {
        return Ok(None);
    };
    let script = script.to_owned();
    let resolved = super::scripts::resolve(core, tenant_id, &script).await?;
    if let (Some(resolved), Some(data)) = (&resolved, spec.data.as_object_mut()) {
        data.insert("script".into(), resolved.name.clone().into());
        data.insert(
            "library".into(),
            serde_json::to_value(&resolved.run).unwrap_or(Value::Null),
        );
    }
    Ok(resolved)
}

/// Script names a refusal lists, at most (a manifest may list 512).
const REFUSAL_SCRIPTS_SHOWN: usize = 20;

/// The script a `run` names (`data.script`); `None` for other commands.
pub fn run_script(spec: &CommandSpec) -> Option<&str> {
    (spec.command == commands::RUN)
        .then(|| spec.data.get("script").and_then(Value::as_str))
        .flatten()
}

/// Why an agent will refuse a `run` of `script`: its last `register` (`scripts`, as stored on
/// its row) did not list it. This is the one place that decides, whichever route asks
/// ([`submit`] for one agent and for a key's agents, `api::jobs` for each run of a job), so
/// that the script library of a later issue (CONTRACT.md §15: scripts a manifest allows by pattern,
/// announced in `register`) is taught here once.
///
/// It is an early answer, not the rule: the agent checks again against its manifest as it is
/// when the command arrives, so an agent whose manifest dropped a script since its last
/// `register` still refuses by itself (`script_not_allowed`). One that added a script
/// re-registers within a second or so of the change (the manifest is watched).
pub fn script_refusal(agent_id: &str, scripts: &Value, script: &str) -> Option<String> {
    let names: Vec<&str> = scripts
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.get("name").and_then(Value::as_str))
        .collect();
    if names.contains(&script) {
        return None;
    }
    let listed = match names.len() {
        0 => "its manifest lists no scripts".to_owned(),
        n if n > REFUSAL_SCRIPTS_SHOWN => format!(
            "its manifest lists {} and {} more",
            names[..REFUSAL_SCRIPTS_SHOWN].join(", "),
            n - REFUSAL_SCRIPTS_SHOWN
        ),
        _ => format!("its manifest lists {}", names.join(", ")),
    };
    Some(format!(
        "agent {agent_id} has no script {script:?} ({listed}); add it to that agent's \
         script manifest, or run a script it lists"
    ))
}

/// What became of a command sent to one agent.
#[derive(Debug)]
pub enum Sent {
    /// Its stored result (final, or the state it had when the caller stopped waiting).
    Answered(command::Model),
    /// Stored for an offline agent (`queue`); it is delivered when the agent connects.
    Queued(command::Model),
}

/// One agent's outcome in a key's fan-out.
#[derive(Debug)]
pub struct FanOutcome {
    /// The agent.
    pub agent_id: String,
    /// Its stored result, or why nothing was sent to it.
    pub result: Result<command::Model, DomainError>,
}

/// Commands to one agent or to a key's agents.
#[derive(Clone)]
pub struct Commands {
    core: Arc<Core>,
}

impl Commands {
    pub(super) fn new(core: Arc<Core>) -> Self {
        Self { core }
    }

    /// Sends a command to one agent of the caller's tenant and waits for its result (the
    /// command's timeout, then `Timeout`). An offline agent is refused (`agent_offline`)
    /// unless `queue`, in which case the command is stored and [`Sent::Queued`] returned.
    #[tracing::instrument(skip_all, fields(tenant_id = %caller.tenant_id, agent_id = %agent_id, command = %spec.command))]
    pub async fn send(
        &self,
        caller: &Caller,
        agent_id: &str,
        spec: &CommandSpec,
        queue: bool,
    ) -> Result<Sent, DomainError> {
        authorize(caller, spec, &format!("agent {agent_id}"))?;
        let core = &self.core;
        let (agent, key) = core
            .agent_with_key(&caller.tenant_id, agent_id)
            .instrument(tracing::debug_span!("read_agent"))
            .await?
            .ok_or_else(|| DomainError::NotFound(format!("no agent {agent_id}")))?;
        let online = core.bus.is_agent_online(&agent);
        let audit = record_of(
            caller,
            AuditEvent::new(AuditAction::CommandSend, AuditTarget::Agent, agent_id).with(
                audit_detail(
                    spec,
                    serde_json::json!({"hostname": agent.hostname, "queue": queue}),
                ),
            ),
        );
        if queue && !online {
            // It may connect in between; if so it gets the command now.
            let model = core
                .store_and_deliver(&agent, key.as_ref(), spec, true, Some(&audit))
                .await?;
            return Ok(Sent::Queued(model));
        }
        core.run(&agent, key.as_ref(), spec, queue, Some(&audit))
            .await
            .map(Sent::Answered)
    }

    /// Sends a command to every agent connected with one of the caller's agent keys, and
    /// waits for every result. Each agent's outcome is its own: one refusal or timeout does
    /// not stop the others.
    #[tracing::instrument(skip_all, fields(tenant_id = %caller.tenant_id, key_id = %key_id, command = %spec.command))]
    pub async fn fan_out(
        &self,
        caller: &Caller,
        key_id: &str,
        spec: &CommandSpec,
    ) -> Result<Vec<FanOutcome>, DomainError> {
        authorize(caller, spec, &format!("agents of key {key_id}"))?;
        let core = &self.core;
        let key = core
            .store
            .get_agent_key(&caller.tenant_id, key_id)
            .await?
            .ok_or_else(|| DomainError::NotFound(format!("no agent key {key_id}")))?;
        let agent_ids: Vec<_> = core
            .bus
            .connections(&caller.tenant_id)
            .into_iter()
            .filter(|c| c.key_id == key.id)
            .map(|c| c.agent_id.to_string())
            .collect();
        // One row for the request, before any command is stored: a fan-out is many
        // transactions, none of which it could join.
        let mut listed = agent_ids.clone();
        listed.sort();
        listed.truncate(AUDIT_AGENTS_LISTED);
        let event = AuditEvent::new(AuditAction::CommandFanOut, AuditTarget::AgentKey, &key.id)
            .with(audit_detail(
                spec,
                serde_json::json!({"key_name": key.name, "agents": agent_ids.len(), "agent_ids": listed}),
            ));
        core.store.append_audit(&record_of(caller, event)).await?;
        let runs = agent_ids.into_iter().map(|agent_id| async move {
            let result = async {
                // From the store: each agent is read once, a copy would only take memory.
                let (agent, key) = core
                    .store
                    .get_agent_with_key(&caller.tenant_id, &agent_id)
                    .await?
                    .ok_or_else(|| DomainError::NotFound(format!("no agent {agent_id}")))?;
                core.run(&agent, key.as_ref(), spec, false, None).await
            }
            .await;
            FanOutcome { agent_id, result }
        });
        let mut outcomes = futures_util::future::join_all(runs).await;
        outcomes.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
        Ok(outcomes)
    }

    /// One stored command of the caller's tenant.
    pub async fn get(&self, caller: &Caller, id: &str) -> Result<command::Model, DomainError> {
        self.core
            .store
            .get_command(&caller.tenant_id, id)
            .await?
            .ok_or_else(|| DomainError::NotFound(format!("no command {id}")))
    }
}

impl Core {
    /// An agent's row with its key's, for a command to it: from the copy this process kept
    /// (`outpost_store::credential_cache`, a second at most) while the agent is connected to
    /// this process, from the store otherwise. A command to a connected agent reads the row
    /// that agent's registration here wrote, so a copy saves a read on a pooled connection,
    /// a fifth of the round trip (docs/BENCHMARKS.md, "The round trip's steps").
    async fn agent_with_key(
        &self,
        tenant_id: &str,
        agent_id: &str,
    ) -> Result<Option<(agent::Model, Option<agent_key::Model>)>, DomainError> {
        let here = agent_id
            .parse()
            .is_ok_and(|id| self.bus.is_connected_here(tenant_id, id));
        Ok(if here {
            self.kept
                .agent_with_key(&self.store, tenant_id, agent_id)
                .await?
        } else {
            self.store.get_agent_with_key(tenant_id, agent_id).await?
        })
    }

    /// Stores a command for one agent, then delivers it if the agent is connected. Refused
    /// before anything is stored: a key that does not allow it, a script the agent does not
    /// list, a downgrade without `force`, and (without `queue`) an offline agent.
    pub(super) async fn store_and_deliver(
        &self,
        agent: &agent::Model,
        key: Option<&agent_key::Model>,
        spec: &CommandSpec,
        queue: bool,
        audit: Option<&AuditRecord>,
    ) -> Result<command::Model, DomainError> {
        let model = self.store_command(agent, key, spec, queue, audit).await?;
        self.bus.deliver(&model);
        Ok(model)
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn store_command(
        &self,
        agent: &agent::Model,
        key: Option<&agent_key::Model>,
        spec: &CommandSpec,
        queue: bool,
        audit: Option<&AuditRecord>,
    ) -> Result<command::Model, DomainError> {
        self.writable()?;
        parse_agent_id(&agent.id)?;
        if let Some(why) = key_refusal(&agent.id, key, &spec.command) {
            return Err(DomainError::Forbidden(why));
        }
        let mut spec = spec.clone();
        let library = resolve_library(self, &agent.tenant_id, &mut spec).await?;
        let spec = &spec;
        if let Some(resolved) = &library {
            if let Some(why) =
                super::scripts::library_refusal(&agent.id, agent.library.as_ref(), resolved)
            {
                return Err(DomainError::Refused {
                    code: outpost_protocol::codes::SCRIPT_NOT_ALLOWED,
                    message: why,
                });
            }
        } else if let Some(script) = run_script(spec)
            && let Some(why) = script_refusal(&agent.id, &agent.scripts, script)
        {
            return Err(DomainError::Refused {
                code: outpost_protocol::codes::SCRIPT_NOT_ALLOWED,
                message: why,
            });
        }
        if let Some(why) = downgrade_refusal(&agent.id, &agent.version, spec) {
            return Err(DomainError::BadRequest(why));
        }
        if spec.command == commands::UPDATE
            && let Some(version) = spec.update_version
            && let Some(why) = self.minimum_refusal(&agent.tenant_id, &version).await?
        {
            return Err(DomainError::BadRequest(why));
        }
        if !queue && !self.bus.is_agent_online(agent) {
            return Err(offline(&agent.id));
        }
        let declared = secrets::script_with_params(&spec.command, &spec.data)
            .map(|script| secrets::declared(&agent.scripts, script))
            .into_iter()
            .flatten()
            .chain(
                library
                    .iter()
                    .flat_map(|l| l.secret_params.iter().map(String::as_str)),
            );
        let (data, sealed_params) = spec.sealed_data(self, &agent.tenant_id, declared);
        // A committed command left the writer to store its result on a cold cache when it
        // went through a pooled connection (docs/BENCHMARKS.md, "One connection for the round
        // trip's writes").
        let store = self.beside_writer();
        let model = store
            .insert_command_audited(
                NewCommand {
                    tenant_id: agent.tenant_id.clone(),
                    agent_id: agent.id.clone(),
                    command: spec.command.clone(),
                    data,
                    timeout_s: spec.timeout_s,
                    ttl_s: spec.ttl_s,
                    job_id: None,
                    sealed_params,
                },
                audit,
                &self.audit_heads,
            )
            .await?;
        Ok(model)
    }

    /// Stores a command, delivers it and waits for its stored result. On timeout the command
    /// stays stored (its result is kept when it comes) and the caller gets `Timeout` with the
    /// command id.
    async fn run(
        &self,
        agent: &agent::Model,
        key: Option<&agent_key::Model>,
        spec: &CommandSpec,
        queue: bool,
        audit: Option<&AuditRecord>,
    ) -> Result<command::Model, DomainError> {
        let model = self.store_command(agent, key, spec, queue, audit).await?;
        let command_id = model
            .id
            .parse()
            .map_err(|e| DomainError::Internal(anyhow::anyhow!("bad command id: {e}")))?;
        // Watch before delivering, so that the result cannot slip by.
        let waiter = self.bus.waiters().watch(command_id);
        self.bus.deliver(&model);
        match waiter
            .wait(spec.wait_for())
            .instrument(tracing::debug_span!("wait_result"))
            .await
        {
            Some(done) => Ok(done),
            None => {
                // The result may have been stored between the timeout and now.
                match self.store.get_command(&model.tenant_id, &model.id).await? {
                    Some(m) if CommandState::is_final_text(&m.state) => Ok(m),
                    _ => Err(DomainError::Timeout(format!(
                        "agent {} did not answer command {} within {} s; its result will be stored when it arrives (GET /api/commands/{})",
                        agent.id,
                        model.id,
                        spec.wait_for().as_secs(),
                        model.id
                    ))),
                }
            }
        }
    }
}

/// `agent_offline` for an agent that is not connected.
pub fn offline(agent_id: &str) -> DomainError {
    DomainError::Conflict {
        code: "agent_offline",
        message: format!(
            "agent {agent_id} is offline; pass \"queue\": true to store the command until it connects (ttl_s)"
        ),
    }
}

fn parse_agent_id(id: &str) -> Result<outpost_protocol::AgentId, DomainError> {
    id.parse().map_err(|e| {
        DomainError::Internal(anyhow::anyhow!("stored agent id {id:?} is not a UUID: {e}"))
    })
}
