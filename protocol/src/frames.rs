//! The frames of protocol v1 and their JSON encoding.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::output::OutputStream;
use crate::{AgentId, CommandId, limits};

/// A frame the server sends to an agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// First frame after the upgrade: the connection is accepted.
    Connected(Connected),
    /// A command to run.
    Command(ServerCommand),
    /// Stop a running command.
    Cancel {
        /// The command to stop.
        command_id: CommandId,
    },
    /// The server has durably stored the agent's response to this command.
    Ack {
        /// The command whose response was stored.
        command_id: CommandId,
    },
    /// Something the agent sent was refused.
    Error(ErrorBody),
}

/// Body of the `connected` frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Connected {
    /// Human-readable greeting.
    pub message: String,
    /// The agent key this connection authenticated with.
    pub agent_key_id: String,
    /// Commands this key allows.
    pub permissions: Vec<String>,
    /// Seconds between heartbeats the server expects.
    pub heartbeat_interval_s: u32,
    /// Protocol version the server speaks.
    pub protocol: u32,
    /// Server time.
    pub timestamp: DateTime<Utc>,
}

/// Body of the `command` frame. Its `Debug` leaves out the values of `data.params`, which may
/// be secrets, so that logging a frame never logs them.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerCommand {
    /// Unique id; the agent never runs the same id twice.
    pub command_id: CommandId,
    /// Command name (see [`crate::commands`]).
    pub command: String,
    /// Command arguments; shape depends on the command.
    #[serde(default)]
    pub data: Value,
    /// Seconds the command may run.
    pub timeout_s: u32,
    /// When the server created the command.
    pub timestamp: DateTime<Utc>,
}

impl std::fmt::Debug for ServerCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut data = self.data.clone();
        if let Some(params) = data.get_mut("params").and_then(Value::as_object_mut) {
            for value in params.values_mut() {
                *value = Value::from("<redacted>");
            }
        }
        f.debug_struct("ServerCommand")
            .field("command_id", &self.command_id)
            .field("command", &self.command)
            .field("data", &data)
            .field("timeout_s", &self.timeout_s)
            .field("timestamp", &self.timestamp)
            .finish()
    }
}

/// A `{code, message}` pair, used by `error` frames and failed responses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Machine-readable code (see [`crate::codes`]).
    pub code: String,
    /// What went wrong, for people.
    pub message: String,
}

impl ErrorBody {
    /// Builds an error body.
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Self {
            code: code.to_owned(),
            message: message.into(),
        }
    }
}

/// A frame an agent sends to the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentFrame {
    /// First frame from the agent: who it is and what it can do.
    Register {
        /// The agent's description of itself.
        data: RegisterData,
    },
    /// Periodic liveness and host metrics.
    Heartbeat {
        /// Current host metrics.
        status: HeartbeatStatus,
    },
    /// The agent has journaled this command and will not run it twice.
    Ack {
        /// The command received.
        command_id: CommandId,
    },
    /// A chunk of a running command's output.
    Output(Output),
    /// The final result of a command.
    Response(Response),
}

/// What an agent says about itself in `register` (and, with more fields, in `info`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisterData {
    /// Stable id kept in the agent's state directory.
    pub agent_id: AgentId,
    /// Host name.
    #[serde(default)]
    pub hostname: String,
    /// Address the agent reaches the server from.
    #[serde(default)]
    pub ip: String,
    /// Agent version.
    #[serde(default)]
    pub version: String,
    /// Operating system and kernel.
    #[serde(default)]
    pub os: String,
    /// CPU architecture.
    #[serde(default)]
    pub arch: String,
    /// Protocol version the agent speaks.
    #[serde(default = "default_protocol")]
    pub protocol: u32,
    /// Commands the agent implements.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Tags from the agent's configuration.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Scripts its manifest whitelists.
    #[serde(default)]
    pub scripts: Vec<ScriptInfo>,
    /// Outcome of the supervisor's last update attempt, when there was one. Optional and
    /// omitted when absent, so older servers (which ignore unknown fields) and older agents
    /// (which never send it) interoperate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_status: Option<Box<crate::release::UpdateStatus>>,
    /// The manifest's consent to library scripts (CONTRACT.md §15): which names, signed by which
    /// keys. Absent when the manifest has no `library`: the agent runs no library script, and
    /// the server fails such runs early with `script_not_allowed`. Omitted when absent, so
    /// older servers and agents interoperate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub library: Option<crate::bundle::LibraryPolicy>,
}

impl RegisterData {
    /// Checks every field against the limits of protocol v1 (see [`crate::check::register`]).
    pub fn check(&self) -> Result<(), String> {
        crate::check::register(self)
    }
}

fn default_protocol() -> u32 {
    crate::PROTOCOL_VERSION
}

/// A script an agent's manifest whitelists, as announced to the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScriptInfo {
    /// Name callers use in `run`.
    pub name: String,
    /// What it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The parameters the manifest lists for the script; absent when it lists none (the
    /// script then takes any valid name). Optional and omitted when absent, so older servers
    /// (which ignore unknown fields) and older agents (which never send it) interoperate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<Vec<ParamInfo>>,
}

/// A parameter a script takes, as its manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParamInfo {
    /// The parameter's name (`[A-Z0-9_]{1,64}`).
    pub name: String,
    /// The manifest marks the value secret: the server keeps it sealed at rest and shows it
    /// masked everywhere; only the frame that carries the command to the agent holds it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub secret: bool,
}

/// Host metrics carried by a heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatStatus {
    /// Seconds since the agent started.
    #[serde(default)]
    pub uptime_s: u64,
    /// Whole-host CPU use.
    #[serde(default)]
    pub cpu_percent: f64,
    /// Whole-host memory use.
    #[serde(default)]
    pub memory_percent: f64,
    /// Use of the disk holding the agent's state directory.
    #[serde(default)]
    pub disk_percent: f64,
    /// One-minute load average.
    #[serde(default)]
    pub load1: f64,
    /// When the agent sampled these.
    pub timestamp: DateTime<Utc>,
}

/// Body of the `output` frame. Exactly one of `data` and `data_b64` is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Output {
    /// The command producing the output.
    pub command_id: CommandId,
    /// Which stream the chunk belongs to.
    pub stream: OutputStream,
    /// Chunk number within its stream, from 0.
    pub seq: u64,
    /// The chunk, when it is valid UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// The chunk in standard base64, when it is not valid UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_b64: Option<String>,
}

/// Body of the `response` frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// The command answered.
    pub command_id: CommandId,
    /// Whether the command did what was asked.
    pub success: bool,
    /// Command-specific result.
    #[serde(default)]
    pub data: Value,
    /// Set exactly when `success` is false.
    #[serde(default)]
    pub error: Option<ErrorBody>,
}

impl Response {
    /// A successful response.
    pub fn ok(command_id: CommandId, data: Value) -> Self {
        Self {
            command_id,
            success: true,
            data,
            error: None,
        }
    }

    /// A failed response with an error code and message.
    pub fn failed(command_id: CommandId, code: &str, message: impl Into<String>) -> Self {
        Self {
            command_id,
            success: false,
            data: Value::Null,
            error: Some(ErrorBody::new(code, message)),
        }
    }
}

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The frame is larger than [`limits::MAX_FRAME_BYTES`].
    #[error("frame of {0} bytes exceeds the {max} byte limit", max = limits::MAX_FRAME_BYTES)]
    TooLarge(usize),
    /// The frame is a JSON object with a `type` this version does not know.
    #[error("unknown frame type {0:?}")]
    UnknownType(String),
    /// Anything else: not JSON, not an object, a missing or mistyped field.
    #[error("malformed frame: {0}")]
    Malformed(String),
}

const SERVER_TYPES: &[&str] = &["connected", "command", "cancel", "ack", "error"];
const AGENT_TYPES: &[&str] = &["register", "heartbeat", "ack", "output", "response"];

fn decode<T: serde::de::DeserializeOwned>(text: &str, known: &[&str]) -> Result<T, DecodeError> {
    if text.len() > limits::MAX_FRAME_BYTES {
        return Err(DecodeError::TooLarge(text.len()));
    }
    serde_json::from_str(text).map_err(|err| {
        #[derive(Deserialize)]
        struct Probe {
            #[serde(rename = "type")]
            ty: Option<Value>,
        }
        match serde_json::from_str::<Probe>(text) {
            Ok(Probe {
                ty: Some(Value::String(ty)),
            }) if !known.contains(&ty.as_str()) => DecodeError::UnknownType(truncate(ty)),
            Ok(Probe { ty: None }) => DecodeError::Malformed("missing field `type`".into()),
            _ => DecodeError::Malformed(err.to_string()),
        }
    })
}

/// Keeps an attacker-chosen type name from bloating logs and error frames.
fn truncate(mut s: String) -> String {
    if s.len() > 64 {
        let mut end = 64;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

fn encode<T: Serialize>(frame: &T) -> String {
    // Frames hold only strings, numbers, UUIDs, times and `serde_json::Value`, none of which
    // can fail to serialize.
    serde_json::to_string(frame).expect("protocol frames always serialize")
}

impl ServerFrame {
    /// Decodes a frame received by an agent.
    pub fn decode(text: &str) -> Result<Self, DecodeError> {
        decode(text, SERVER_TYPES)
    }

    /// The frame's `type`, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Connected(_) => "connected",
            Self::Command(_) => "command",
            Self::Cancel { .. } => "cancel",
            Self::Ack { .. } => "ack",
            Self::Error(_) => "error",
        }
    }

    /// Encodes the frame as one JSON text.
    pub fn encode(&self) -> String {
        encode(self)
    }
}

impl AgentFrame {
    /// Decodes a frame received by the server.
    pub fn decode(text: &str) -> Result<Self, DecodeError> {
        decode(text, AGENT_TYPES)
    }

    /// Encodes the frame as one JSON text.
    pub fn encode(&self) -> String {
        encode(self)
    }

    /// The frame's `type`, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Register { .. } => "register",
            Self::Heartbeat { .. } => "heartbeat",
            Self::Ack { .. } => "ack",
            Self::Output(_) => "output",
            Self::Response(_) => "response",
        }
    }
}
