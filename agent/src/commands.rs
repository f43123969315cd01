//! What the agent does with a command: the built-ins and the control commands.
//!
//! Each command runs in its own task and produces exactly one [`Response`]. Anything the
//! agent does not implement is answered with `unknown_command`, never ignored, so a caller
//! always gets an answer.

use std::str::FromStr;
use std::time::Duration;

use outpost_protocol::{Response, ServerCommand, codes, commands};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::Agent;
use crate::exec::{self, RunSpec};
use crate::manifest;
use crate::spool::SpoolWriter;

/// Exit codes the supervisor acts on (CONTRACT.md §4).
pub mod exit {
    /// Restart requested.
    pub const RESTART: i32 = 42;
    /// Update and restart.
    pub const UPDATE: i32 = 43;
    /// Redeploy.
    pub const REDEPLOY: i32 = 44;
    /// Fatal error: do not restart.
    pub const FATAL: i32 = 99;
}

/// The commands this agent implements.
pub fn capabilities(supervised: bool) -> Vec<String> {
    let mut caps = vec![
        commands::PING,
        commands::INFO,
        commands::ECHO,
        commands::RUN,
    ];
    if supervised {
        caps.extend([commands::RESTART, commands::UPDATE, commands::REDEPLOY]);
    }
    caps.into_iter().map(str::to_owned).collect()
}

/// Outcome of a command: its response, and an exit code when the agent must exit once the
/// server has stored the response.
pub struct Outcome {
    /// The answer.
    pub response: Response,
    /// Exit with this code after the answer is acknowledged.
    pub exit_code: Option<i32>,
}

impl From<Response> for Outcome {
    fn from(response: Response) -> Self {
        Self {
            response,
            exit_code: None,
        }
    }
}

/// Runs one command.
pub async fn execute(agent: &Agent, cmd: &ServerCommand, cancel: CancellationToken) -> Outcome {
    let id = cmd.command_id;
    match cmd.command.as_str() {
        commands::RUN => run_script(agent, cmd, cancel).await.into(),
        commands::PING => Response::ok(id, json!({"pong": true})).into(),
        commands::INFO => Response::ok(id, agent.info()).into(),
        commands::ECHO => match cmd.data.get("message") {
            Some(message) => Response::ok(id, json!({"message": message})).into(),
            None => Response::failed(id, codes::BAD_DATA, "echo needs data.message").into(),
        },
        commands::RESTART | commands::UPDATE | commands::REDEPLOY => control(agent, cmd),
        other => Response::failed(
            id,
            codes::UNKNOWN_COMMAND,
            format!("this agent does not implement {other:?}"),
        )
        .into(),
    }
}

/// `run`: a script from the manifest, by name, with parameters as environment variables.
async fn run_script(agent: &Agent, cmd: &ServerCommand, cancel: CancellationToken) -> Response {
    let id = cmd.command_id;
    let Some(name) = cmd.data.get("script").and_then(Value::as_str) else {
        return Response::failed(
            id,
            codes::BAD_DATA,
            "run needs data.script, the script's name",
        );
    };
    // The server made this a library run (CONTRACT.md §15): the bundle's own rules apply, and the
    // manifest's `library` consent instead of its list of scripts.
    // (`null` is no library, should a server spell an absent field that way.)
    if let Some(library) = cmd.data.get("library").filter(|l| !l.is_null()) {
        return crate::library::run(agent, cmd, name, library, cancel).await;
    }
    let manifest = agent.manifest();
    let Some(script) = manifest.get(name) else {
        let shown: String = name.chars().take(80).collect();
        return Response::failed(
            id,
            codes::SCRIPT_NOT_ALLOWED,
            format!("script {shown:?} is not in this agent's manifest"),
        );
    };
    let program = match manifest.resolve(script) {
        Ok(path) => path,
        Err(why) => return Response::failed(id, codes::SCRIPT_NOT_ALLOWED, why),
    };
    let params = match manifest::params_env(script, cmd.data.get("params")) {
        Ok(env) => env,
        Err(why) => return Response::failed(id, codes::BAD_PARAMS, why),
    };
    // The manifest's timeout is the machine owner's ceiling; a request may ask for less.
    let timeout_s = match script.timeout_s {
        Some(ceiling) => cmd.timeout_s.min(ceiling),
        None => cmd.timeout_s,
    }
    .max(1);
    let max_output = exec::max_output(cmd);
    let spool = match SpoolWriter::create(&agent.spool_path(id)) {
        Ok(spool) => spool,
        Err(err) => {
            return Response::failed(
                id,
                codes::INTERNAL,
                format!("cannot create the output spool: {err}"),
            );
        }
    };
    let spec = RunSpec {
        id,
        program,
        args: script.args.clone(),
        params,
        env: Vec::new(),
        dir: manifest.dir.clone(),
        timeout: Duration::from_secs(u64::from(timeout_s)),
        max_output,
    };
    exec::run_for_answer(spec, timeout_s, agent.containment(), spool, cancel, || {
        agent.activity.notify_one()
    })
    .await
}

fn control(agent: &Agent, cmd: &ServerCommand) -> Outcome {
    let id = cmd.command_id;
    if !agent.config.supervised {
        return Response::failed(
            id,
            codes::UNSUPPORTED,
            format!(
                "{} needs the agent to run under outpost-supervisor (OUTPOST_SUPERVISED=1)",
                cmd.command
            ),
        )
        .into();
    }
    let code = match cmd.command.as_str() {
        commands::RESTART => exit::RESTART,
        commands::UPDATE if agent.config.skip_update => {
            return Response::failed(
                id,
                codes::UNSUPPORTED,
                "updates are disabled on this agent (OUTPOST_SKIP_UPDATE)",
            )
            .into();
        }
        commands::UPDATE => exit::UPDATE,
        _ => exit::REDEPLOY,
    };
    let mut data = json!({"exit_code": code});
    if code == exit::UPDATE {
        let version = match cmd.data.get("version") {
            None | Some(Value::Null) => None,
            Some(Value::String(v)) if outpost_protocol::release::Version::from_str(v).is_ok() => {
                Some(v.as_str())
            }
            Some(_) => {
                return Response::failed(
                    id,
                    codes::BAD_DATA,
                    "update: data.version must be a version like \"1.2.3\"",
                )
                .into();
            }
        };
        let force = match cmd.data.get("force") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(force)) => *force,
            Some(_) => {
                return Response::failed(
                    id,
                    codes::BAD_DATA,
                    "update: data.force must be a boolean",
                )
                .into();
            }
        };
        if let Err(err) = agent.request_update(version, force) {
            // Without the record the supervisor would install the wrong version: refuse.
            return Response::failed(
                id,
                codes::INTERNAL,
                format!("cannot record the requested version in the state directory: {err}"),
            )
            .into();
        }
        data["version"] = json!(version);
        data["force"] = json!(force);
    }
    Outcome {
        response: Response::ok(id, data),
        exit_code: Some(code),
    }
}
