//! Outpost wire protocol, version 1.
//!
//! This crate is the only place that knows what travels between an agent and the server. Both
//! sides depend on it, so a frame can only change in one place and the golden fixtures under
//! `tests/fixtures/` catch any accidental change to the JSON shape.
//!
//! Every message is one JSON object in one WebSocket text frame (or one element of a long-poll
//! batch), discriminated by its `"type"` field. Unknown fields are ignored so that a newer peer
//! can add fields without breaking an older one; an unknown `type` is reported as
//! [`DecodeError::UnknownType`] so the receiver can answer with an `error` frame and carry on.
//!
//! The crate does no I/O. Limits that both sides enforce live in [`limits`], the checks that
//! apply them to names, tags and `register` in [`check`], error codes that travel in `error`
//! frames and failed responses in [`codes`].

pub mod bundle;
pub mod check;
mod frames;
mod output;
pub mod poll;
pub mod release;

pub use frames::{
    AgentFrame, Connected, DecodeError, ErrorBody, HeartbeatStatus, Output, ParamInfo,
    RegisterData, Response, ScriptInfo, ServerCommand, ServerFrame,
};
pub use output::{OutputStream, decode_output_data, encode_output_data};

/// Identifier of a command (and, later, of a run). Version 7 UUIDs, so ids sort by creation time.
pub type CommandId = uuid::Uuid;
/// Identifier an agent generates once and keeps in its state directory.
pub type AgentId = uuid::Uuid;

/// The protocol version this build speaks. Sent in `connected` and `register`.
pub const PROTOCOL_VERSION: u32 = 1;

/// Built-in command names. The server sends whatever the caller asked for; the agent answers
/// anything it does not know with [`codes::UNKNOWN_COMMAND`].
pub mod commands {
    /// Liveness check; answers `{"pong": true}`.
    pub const PING: &str = "ping";
    /// Facts about the agent and its host.
    pub const INFO: &str = "info";
    /// Returns `data.message` unchanged.
    pub const ECHO: &str = "echo";
    /// Runs a script from the agent's manifest.
    pub const RUN: &str = "run";
    /// Control: exit with code 42 so the supervisor restarts the agent.
    pub const RESTART: &str = "restart";
    /// Control: exit with code 43 so the supervisor updates the agent.
    pub const UPDATE: &str = "update";
    /// Control: exit with code 44 so the supervisor redeploys the agent.
    pub const REDEPLOY: &str = "redeploy";

    /// Every command name a key may be granted.
    pub const ALL: &[&str] = &[PING, INFO, ECHO, RUN, RESTART, UPDATE, REDEPLOY];
    /// What a newly created agent key may do when the caller does not say.
    pub const DEFAULT_PERMISSIONS: &[&str] = &[PING, INFO, ECHO, RUN];
}

/// Limits of protocol v1. Both sides enforce them; the server's are authoritative.
pub mod limits {
    use std::time::Duration;

    /// Largest frame either side accepts. Larger frames close the socket with [`CLOSE_TOO_BIG`].
    pub const MAX_FRAME_BYTES: usize = 1024 * 1024;
    /// Largest `output` chunk, in bytes of the original stream (before base64).
    pub const MAX_OUTPUT_CHUNK: usize = 64 * 1024;
    /// Bad frames tolerated in a sliding minute before the socket is closed with
    /// [`CLOSE_POLICY`].
    pub const MAX_BAD_FRAMES_PER_MINUTE: usize = 10;
    /// Time an agent has to send `register` after the upgrade.
    pub const REGISTER_DEADLINE: Duration = Duration::from_secs(10);
    /// Heartbeat interval announced in `connected` unless the server is configured otherwise.
    pub const DEFAULT_HEARTBEAT_INTERVAL_S: u32 = 30;
    /// Heartbeat intervals an agent may miss before it counts as offline.
    pub const MISSED_HEARTBEATS: u32 = 3;
    /// How long a command waits for an offline agent unless the caller says otherwise.
    pub const DEFAULT_TTL_S: u32 = 3600;
    /// Default time a command may run on the agent.
    pub const DEFAULT_TIMEOUT_S: u32 = 60;
    /// Longest timeout a caller may ask for (one day).
    pub const MAX_TIMEOUT_S: u32 = 86_400;
    /// Longest TTL a caller may ask for (one week).
    pub const MAX_TTL_S: u32 = 7 * 86_400;
    /// Longest parameter name (`[A-Z0-9_]{1,64}`).
    pub const MAX_PARAM_NAME: usize = 64;
    /// Largest parameter value in bytes.
    pub const MAX_PARAM_VALUE: usize = 32 * 1024;
    /// Most tags an agent may report or be given.
    pub const MAX_TAGS: usize = 64;
    /// Longest tag, in bytes.
    pub const MAX_TAG_LEN: usize = 128;

    // What `register` may carry (see [`crate::check::register`]). Lengths are in bytes of
    // UTF-8. A `register` past any of them is refused with an `error` frame naming the field
    // and the connection is closed with [`CLOSE_POLICY`]; the agent keeps within them.

    /// Longest `hostname` (a DNS name is at most 253).
    pub const MAX_HOSTNAME_LEN: usize = 255;
    /// Longest `ip` (an IPv6 address with a zone fits).
    pub const MAX_IP_LEN: usize = 64;
    /// Longest `version`.
    pub const MAX_VERSION_LEN: usize = 64;
    /// Longest `os` (name and kernel release).
    pub const MAX_OS_LEN: usize = 256;
    /// Longest `arch`.
    pub const MAX_ARCH_LEN: usize = 64;
    /// Most `capabilities`.
    pub const MAX_CAPABILITIES: usize = 64;
    /// Longest capability (a command name).
    pub const MAX_CAPABILITY_LEN: usize = 64;
    /// Most scripts a manifest may announce.
    pub const MAX_SCRIPTS: usize = 512;
    /// Longest script name.
    pub const MAX_SCRIPT_NAME_LEN: usize = 128;
    /// Longest script description. With every other bound, a `register` at all of its limits
    /// (even one whose every character JSON escapes) still fits in [`MAX_FRAME_BYTES`].
    pub const MAX_SCRIPT_DESCRIPTION_LEN: usize = 512;
    /// Most parameters a script may declare in its manifest entry.
    pub const MAX_SCRIPT_PARAMS: usize = 64;
    /// Most parameters all the scripts of a `register` may declare together: 512 scripts of
    /// 64 would not fit in a frame.
    pub const MAX_REGISTER_PARAMS: usize = 2048;
    /// Longest `update_status.status`, `.from` and `.to`.
    pub const MAX_UPDATE_FIELD_LEN: usize = 64;
    /// Longest `update_status.reason`.
    pub const MAX_UPDATE_REASON_LEN: usize = 2048;

    /// WebSocket close code: policy violation (no `register` in time, too many bad frames).
    pub const CLOSE_POLICY: u16 = 1008;
    /// WebSocket close code: message too big.
    pub const CLOSE_TOO_BIG: u16 = 1009;
    /// WebSocket close code: normal closure (key disabled, replaced, shutting down).
    pub const CLOSE_NORMAL: u16 = 1000;
    /// WebSocket close code: going away (server shutting down).
    pub const CLOSE_GOING_AWAY: u16 = 1001;
}

/// Error codes carried in `error` frames and in `response.error.code`.
pub mod codes {
    /// A frame that is not valid JSON, misses a required field or breaks a limit (a
    /// `register` with too many tags, a hostname with control characters).
    pub const BAD_FRAME: &str = "bad_frame";
    /// An `output` chunk for a run that is final already: refused, not stored.
    pub const RUN_FINISHED: &str = "run_finished";
    /// A frame whose `type` this peer does not know.
    pub const UNKNOWN_TYPE: &str = "unknown_type";
    /// The peer speaks another protocol version.
    pub const PROTOCOL_MISMATCH: &str = "protocol_mismatch";
    /// A frame that needs a registered agent arrived before `register`.
    pub const NOT_REGISTERED: &str = "not_registered";
    /// The code of the 401 that refuses a disabled agent key (WebSocket upgrade and long-poll
    /// alike). Unlike an unknown or deleted key, it may work again (`outpost keys agent
    /// enable`), so the agent asks again within seconds rather than minutes.
    pub const KEY_DISABLED: &str = "key_disabled";
    /// The reason of the close (1000) that ends a connection when its key is disabled.
    pub const CLOSE_KEY_DISABLED: &str = "agent key disabled";
    /// The agent does not know the command.
    pub const UNKNOWN_COMMAND: &str = "unknown_command";
    /// The command's `data` is not what the command needs.
    pub const BAD_DATA: &str = "bad_data";
    /// The script is not in the agent's manifest (or its path is not allowed).
    pub const SCRIPT_NOT_ALLOWED: &str = "script_not_allowed";
    /// Parameters break the manifest's or the protocol's rules.
    pub const BAD_PARAMS: &str = "bad_params";
    /// The script exited with a non-zero code.
    pub const EXIT_CODE: &str = "exit_code";
    /// The script was killed by a signal it did not get from Outpost.
    pub const KILLED: &str = "killed";
    /// The script could not be started (not executable, bad interpreter).
    pub const SPAWN_FAILED: &str = "spawn_failed";
    /// The run passed its timeout.
    pub const TIMED_OUT: &str = "timed_out";
    /// The run was cancelled.
    pub const CANCELLED: &str = "cancelled";
    /// The agent crashed while the command was running.
    pub const INTERRUPTED: &str = "interrupted";
    /// The command's TTL passed before any agent received it.
    pub const EXPIRED: &str = "expired";
    /// The agent cannot do what was asked here (for example: a control command without a
    /// supervisor).
    pub const UNSUPPORTED: &str = "unsupported";
    /// Something failed inside the agent.
    pub const INTERNAL: &str = "internal";
    /// The agent could not keep a run's output (its disk is full, say): the run fails with
    /// this code, and the output stored is what was kept before.
    pub const OUTPUT_LOST: &str = "output_lost";
    /// The `agent_id` in a `register` is bound to another agent key of the tenant (its first
    /// registration binds it); an admin must forget the agent before another key may use it.
    /// The connection is closed with 1008 and this code as its reason.
    pub const AGENT_ID_TAKEN: &str = "agent_id_taken";
    /// The `agent_id` in a `register` is new to the tenant, which has as many agents as its
    /// `max_agents` quota allows; an agent already registered is never refused. The connection
    /// is closed with 1008 and this code as its reason; the agent retries slowly (an operator
    /// must raise the quota or forget an agent).
    pub const QUOTA_EXCEEDED: &str = "quota_exceeded";
    /// A connection authenticated by an agent's certificate registered as another agent (the
    /// certificate names one agent; CONTRACT.md §19). Closed with 1008 and this reason.
    pub const CERTIFICATE_MISMATCH: &str = "certificate_mismatch";
    /// A key-authenticated `register` (or long-poll request) for an agent that enrolled: it must
    /// connect with its certificate (CONTRACT.md §19). Closed with 1008 and this reason.
    pub const CERTIFICATE_REQUIRED: &str = "certificate_required";
    /// The client certificate was revoked (its agent was deleted); 401.
    pub const CERTIFICATE_REVOKED: &str = "certificate_revoked";
    /// The agent was deleted after it enrolled and may not enroll again until an admin clears
    /// it (`POST /api/agents/{id}/unrevoke`); 403.
    pub const AGENT_REVOKED: &str = "agent_revoked";
    /// The agent already holds a live certificate for another key; 409.
    pub const ALREADY_ENROLLED: &str = "already_enrolled";
    /// An `output` or `response` frame names a command that was never sent to this agent; it is
    /// dropped.
    pub const NOT_YOUR_COMMAND: &str = "not_your_command";
    /// The agent key no longer allows the command: it is failed with this code instead of
    /// being sent.
    pub const FORBIDDEN: &str = "forbidden";
    /// A library bundle the agent refuses: its hash or size is not the one the run named, its
    /// signature does not verify against a key the manifest pins, or its contents break the
    /// bundle rules (paths out of the folder, links, devices, past the size or count limits,
    /// an entrypoint that is missing). Nothing is executed.
    pub const BUNDLE_REFUSED: &str = "bundle_refused";
    /// The agent could not download a library bundle (the server's answer, a cut connection).
    pub const DOWNLOAD_FAILED: &str = "download_failed";
    /// A library bundle's Python requirements did not install; the run's output is the build
    /// log.
    pub const REQUIREMENTS_FAILED: &str = "requirements_failed";
}
