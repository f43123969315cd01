//! Stored command → the frame that carries it to the agent.
//!
//! The one place a command's secret parameters are unsealed (see [`outpost_store::secrets`]): they
//! leave the server only inside this frame, never in a log, an answer or a webhook. Whoever
//! sends a stored command (the bus when it is new, the hub when its agent reconnects) builds
//! the frame here, so both send the same bytes.

use std::sync::Arc;

use outpost_protocol::{ServerCommand, ServerFrame};
use serde_json::Value;

use outpost_store::command;
use outpost_store::domain::Command;
use outpost_store::seal::MasterKey;
use outpost_store::secrets;

/// Builds command frames (cheap to clone).
#[derive(Clone)]
pub struct Frames {
    master: Arc<MasterKey>,
    max_output_bytes: u64,
}

impl std::fmt::Debug for Frames {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frames")
            .field("max_output_bytes", &self.max_output_bytes)
            .finish_non_exhaustive()
    }
}

impl Frames {
    /// Frames that open secrets with `master` and tell runs to keep `max_output_bytes`.
    pub fn new(master: Arc<MasterKey>, max_output_bytes: u64) -> Self {
        Self {
            master,
            max_output_bytes,
        }
    }

    /// Output bytes the server keeps per run and stream.
    pub fn max_output_bytes(&self) -> u64 {
        self.max_output_bytes
    }

    /// The frame that carries a stored command, or `None` (logged) when its secrets cannot
    /// be opened. A `run` also tells the agent how much output the server keeps, so the agent
    /// does not spool what would be dropped.
    pub fn command(&self, model: &command::Model) -> Option<ServerFrame> {
        let mut data = model.data.clone();
        if let Some(sealed) = &model.sealed_params
            && let Err(why) = secrets::unseal(&self.master, &model.tenant_id, &mut data, sealed)
        {
            tracing::error!(command_id = %model.id, %why, "cannot open the command's secret parameters; not sending it");
            return None;
        }
        if model.command == Command::Run
            && let Some(object) = data.as_object_mut()
        {
            object.insert(
                "max_output_bytes".into(),
                Value::from(self.max_output_bytes),
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
}
