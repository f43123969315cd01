//! Sending commands to agents: validate, store, push, and (optionally) wait for the result.
//!
//! This is the one path every command takes, whichever endpoint asked for it:
//! REST handler -> [`submit`] (permission check, command stored) -> hub (frame out) -> agent ->
//! connection task (result stored) -> [`crate::hub::Hub::finished`] wakes the waiter here.
//!
//! Secret parameters are masked and sealed before a command is stored, and unsealed only in
//! [`frame_for`] (see [`crate::secrets`]). An `update` with `force` may downgrade agents, so
//! only an owner may ask for one ([`authorize`]), and an `update` to a version older than an
//! agent's is refused without it ([`downgrade_refusal`]); the supervisor checks again against
//! the binary it runs.

use std::collections::BTreeSet;
use std::time::Duration;

use outpost_protocol::release::Version;
use outpost_protocol::{ServerCommand, ServerFrame, commands, limits};
use serde_json::Value;

use crate::AppState;
use crate::auth::Caller;
use crate::domain::DomainError;
use crate::hub::Push;
use crate::secrets;
use crate::store::{NewCommand, agent, agent_key, command, key_status, string_list};

/// The role that may force an `update` (and so downgrade agents).
const FORCE_UPDATE_ROLE: crate::domain::Role = crate::domain::Role::Owner;

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
    /// caller forced): secret values masked, and the values sealed. See [`crate::secrets`].
    pub fn sealed_data<'a>(
        &self,
        state: &AppState,
        tenant_id: &str,
        declared: impl IntoIterator<Item = &'a str>,
    ) -> (Value, Option<String>) {
        let mut secret = self.secret_params.clone();
        secret.extend(declared.into_iter().map(str::to_owned));
        secrets::seal(&state.webhooks.master, tenant_id, &self.data, &secret)
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

/// Checks what only some callers may ask for: a forced `update` (which may downgrade agents,
/// past the supervisor's own refusal) needs an owner. A forced update that is allowed is
/// logged with the caller's key, at info: the seam where the audit trail will record it.
/// `target` says whom it is for, for that record.
pub fn authorize(caller: &Caller, spec: &CommandSpec, target: &str) -> Result<(), DomainError> {
    if spec.command != commands::UPDATE || !spec.update_force {
        return Ok(());
    }
    if caller.role != FORCE_UPDATE_ROLE {
        return Err(DomainError::Forbidden(format!(
            "data.force: only an owner may force an update (it can downgrade agents); \
             this API key's role is {}",
            caller.role
        )));
    }
    tracing::info!(
        key_id = %caller.key_id,
        role = %caller.role,
        target,
        version = ?spec.update_version.map(|v| v.to_string()),
        "forced update requested: downgrades allowed"
    );
    Ok(())
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

/// Checks a `run`'s data by the rules the agent applies (SPEC §3, `outpost_protocol::check`):
/// `script` a manifest name, `params` an object of at most 64 names `[A-Z0-9_]{1,64}` with
/// string values of at most 32 KiB without NUL. Whatever route asks for a run (a job, one
/// agent, a key's agents) passes here, so a request the agent would refuse is refused with
/// 400 before anything is stored or sent.
fn validate_run_data(data: &Value) -> Result<(), DomainError> {
    use outpost_protocol::check;
    let script = data.get("script").and_then(Value::as_str).ok_or_else(|| {
        DomainError::BadRequest("data.script: a run needs the script's name".into())
    })?;
    check::script_name(script)
        .map_err(|why| DomainError::BadRequest(format!("data.script: {why}")))?;
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
/// that the script library of a later issue (SPEC §15: scripts a manifest allows by pattern,
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

/// The frame that carries a stored command. A `run` also tells the agent how much output the
/// server keeps, so the agent does not spool what would be dropped. Secret parameters are
/// unsealed here, and only here: the frame is the one place their values may appear.
pub fn frame_for(state: &AppState, model: &command::Model) -> Option<ServerFrame> {
    let mut data = model.data.clone();
    if let Some(sealed) = &model.sealed_params
        && let Err(why) =
            secrets::unseal(&state.webhooks.master, &model.tenant_id, &mut data, sealed)
    {
        tracing::error!(command_id = %model.id, %why, "cannot open the command's secret parameters; not sending it");
        return None;
    }
    if model.command == commands::RUN
        && let Some(object) = data.as_object_mut()
    {
        object.insert(
            "max_output_bytes".into(),
            Value::from(state.max_output_bytes),
        );
    }
    Some(ServerFrame::Command(ServerCommand {
        command_id: model.id.parse().ok()?,
        command: model.command.clone(),
        data,
        timeout_s: model.timeout_s.max(1) as u32,
        timestamp: model.created_at,
    }))
}

/// Checks that the agent's key (read with it, see [`crate::store::Store::get_agent_with_key`])
/// allows the command. A command the key does not allow is refused here and never stored or
/// sent.
fn check_permission(
    agent: &agent::Model,
    key: Option<&agent_key::Model>,
    command: &str,
) -> Result<(), DomainError> {
    let key = key.ok_or_else(|| {
        DomainError::Forbidden(format!(
            "agent {} connected with a key that no longer exists",
            agent.id
        ))
    })?;
    if key.status != key_status::ACTIVE {
        return Err(DomainError::Forbidden(format!(
            "agent {}'s key {} is disabled",
            agent.id, key.id
        )));
    }
    if !string_list(&key.permissions).iter().any(|p| p == command) {
        return Err(DomainError::Forbidden(format!(
            "agent key {} does not allow the {command:?} command",
            key.id
        )));
    }
    Ok(())
}

/// Stores a command for one agent and pushes it if the agent is connected. With `queue` off,
/// an offline agent is refused (409) and nothing is stored.
pub async fn submit(
    state: &AppState,
    agent: &agent::Model,
    key: Option<&agent_key::Model>,
    spec: &CommandSpec,
    queue: bool,
) -> Result<command::Model, DomainError> {
    writable(state)?;
    let agent_id = parse_agent_id(&agent.id)?;
    check_permission(agent, key, &spec.command)?;
    if let Some(script) = run_script(spec)
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
    if !queue && !state.hub.is_online(&agent.tenant_id, agent_id) {
        return Err(offline(&agent.id));
    }
    let declared = secrets::script_with_params(&spec.command, &spec.data)
        .map(|script| secrets::declared(&agent.scripts, script))
        .into_iter()
        .flatten();
    let (data, sealed_params) = spec.sealed_data(state, &agent.tenant_id, declared);
    let model = state
        .store
        .insert_command(NewCommand {
            tenant_id: agent.tenant_id.clone(),
            agent_id: agent.id.clone(),
            command: spec.command.clone(),
            data,
            timeout_s: spec.timeout_s,
            ttl_s: spec.ttl_s,
            job_id: None,
            sealed_params,
        })
        .await?;
    Ok(model)
}

/// Pushes a stored command to its agent, if connected here.
pub fn push(state: &AppState, model: &command::Model) -> Push {
    let frame = frame_for(state, model);
    let (Ok(agent_id), Some(frame)) = (parse_agent_id(&model.agent_id), frame) else {
        return Push::Offline;
    };
    state.hub.push(&model.tenant_id, agent_id, frame)
}

/// Submits a command and waits for its stored result. On timeout the command stays stored
/// (its result is kept when it comes) and the caller gets 504 with the command id.
pub async fn run(
    state: &AppState,
    agent: &agent::Model,
    key: Option<&agent_key::Model>,
    spec: &CommandSpec,
    queue: bool,
) -> Result<command::Model, DomainError> {
    let model = submit(state, agent, key, spec, queue).await?;
    let command_id = model
        .id
        .parse()
        .map_err(|e| DomainError::Internal(anyhow::anyhow!("bad command id: {e}")))?;
    let waiter = state.hub.watch(command_id);
    push(state, &model);
    match waiter.wait(spec.wait_for()).await {
        Some(done) => Ok(done),
        None => {
            // The result may have been stored between the timeout and now.
            match state.store.get_command(&model.tenant_id, &model.id).await? {
                Some(m) if crate::store::state::FINAL.contains(&m.state.as_str()) => Ok(m),
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

/// 503 while the database's writes fail (a full disk): new work is refused before anything is
/// stored. A small insert may still fit where the writer's batches do not, and would add work
/// that cannot be answered; the writer keeps trying its batch and clears this when it commits
/// (see `store::writer::Health`).
pub fn writable(state: &AppState) -> Result<(), DomainError> {
    state.writer.health().status().map_err(|why| {
        DomainError::Unavailable(format!(
            "the database cannot be written right now ({why}); nothing was stored, try again later"
        ))
    })
}

/// 409 for an agent that is not connected.
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
