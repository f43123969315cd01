//! What the agent does with a command: the built-ins and the control commands.
//!
//! Each command runs in its own task and produces exactly one [`Response`]. Anything the
//! agent does not implement is answered with `unknown_command`, never ignored, so a caller
//! always gets an answer.

use outpost_protocol::{Response, ServerCommand, codes, commands};
use serde_json::{Value, json};

use crate::Agent;

/// Exit codes the supervisor acts on (SPEC §4).
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
    let mut caps = vec![commands::PING, commands::INFO, commands::ECHO];
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
pub async fn execute(agent: &Agent, cmd: &ServerCommand) -> Outcome {
    let id = cmd.command_id;
    match cmd.command.as_str() {
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
    if let Some(version) = cmd.data.get("version").and_then(Value::as_str) {
        data["version"] = json!(version);
        if let Err(err) = agent.request_version(version) {
            tracing::warn!(error = %err, "could not record the requested version");
        }
    }
    Outcome {
        response: Response::ok(id, data),
        exit_code: Some(code),
    }
}
