//! Bodies of the HTTP long-poll fallback (CONTRACT.md §2): the same frames as over a WebSocket,
//! carried in batches.
//!
//! Two things a WebSocket gives for free are made explicit here:
//! - **Which connection.** Registering through `POST /agent/v1/frames` opens an HTTP session and
//!   the answer names it; later polls and batches carry that name. A session the server no
//!   longer knows (it restarted, the agent was replaced, the key was disabled) is refused with
//!   `409 not_registered`, and the agent registers again, as after a reconnect.
//! - **Delivery.** An HTTP answer can be lost after the server handed it over. Each frame for
//!   the agent gets a sequence number in its session; a poll carries the `cursor` of the last
//!   frame the agent received, and the server keeps (and sends again) every frame after it.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::{AgentId, ServerFrame};

/// The longest a poll may wait for a frame, in seconds; longer requests are shortened.
pub const MAX_POLL_WAIT_S: u32 = 60;
/// How long an agent's long poll waits when nothing happens.
pub const DEFAULT_POLL_WAIT_S: u32 = 25;
/// Frames in one `POST /agent/v1/frames` batch.
pub const MAX_BATCH_FRAMES: usize = 1024;
/// Bytes in one batch body (each frame inside is still limited to `MAX_FRAME_BYTES`).
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// `POST /agent/v1/poll`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollRequest {
    /// The polling agent.
    pub agent_id: AgentId,
    /// The session named when the agent registered.
    pub session: String,
    /// Seconds to wait for a frame before answering empty (at most [`MAX_POLL_WAIT_S`]).
    #[serde(default = "default_wait")]
    pub wait_s: u32,
    /// Sequence number of the last frame received in this session (0 before any).
    #[serde(default)]
    pub cursor: u64,
}

fn default_wait() -> u32 {
    DEFAULT_POLL_WAIT_S
}

/// Answer to a poll: the frames after the request's cursor, and the new cursor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PollResponse {
    /// Server -> agent frames, oldest first.
    pub frames: Vec<ServerFrame>,
    /// Sequence number of the last frame in `frames` (the request's cursor when empty).
    pub cursor: u64,
}

/// `POST /agent/v1/frames`: agent -> server frames, handled in order.
///
/// Frames stay raw JSON here so that one bad frame is answered with an `error` frame, as over a
/// WebSocket, instead of failing the whole batch.
#[derive(Debug, Serialize, Deserialize)]
pub struct FramesRequest {
    /// The sending agent; may be left out when the batch starts with `register`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<AgentId>,
    /// The session; left out to open one with a leading `register`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// The frames, in order.
    pub frames: Vec<Box<RawValue>>,
}

/// Answer to a batch: the session it belongs to and the frames the server answers at once
/// (`connected` for a `register` that opened the session, `ack`s of stored responses, `error`s).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FramesResponse {
    /// The session to name in later requests.
    pub session: String,
    /// Server -> agent frames produced by this batch.
    pub frames: Vec<ServerFrame>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_request_defaults() {
        let req: PollRequest = serde_json::from_str(
            r#"{"agent_id":"0192b5a0-0000-7000-8000-000000000001","session":"s"}"#,
        )
        .expect("decodes");
        assert_eq!(req.wait_s, DEFAULT_POLL_WAIT_S);
        assert_eq!(req.cursor, 0);
    }

    #[test]
    fn frames_stay_raw_until_decoded_one_by_one() {
        let req: FramesRequest = serde_json::from_str(
            r#"{"frames":[{"type":"ack","command_id":"0192b5a0-0000-7000-8000-000000000001"},{"type":"nope"}]}"#,
        )
        .expect("decodes");
        assert_eq!(req.frames.len(), 2);
        assert!(crate::AgentFrame::decode(req.frames[0].get()).is_ok());
        assert!(matches!(
            crate::AgentFrame::decode(req.frames[1].get()),
            Err(crate::DecodeError::UnknownType(_))
        ));
    }
}
