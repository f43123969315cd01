//! What an agent connection does, whatever carries it: the WebSocket task ([`super::ws`]) and
//! the HTTP long-poll session ([`super::http`]) both feed decoded frames through a [`Link`] and
//! send whatever it answers.
//!
//! Keeping this in one place is what makes the two transports behave the same: the same
//! register handling, the same batching writer, the same acknowledgement only after commit,
//! and the same bad-frame budget.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use outpost_protocol::{
    AgentFrame, AgentId, CommandId, Connected, ErrorBody, PROTOCOL_VERSION, RegisterData,
    ServerFrame, codes, decode_output_data, limits,
};

use super::Context;
use outpost_core::access::{AgentAuthMode, AgentIdentity};
use outpost_store::writer::{Fence, Finish, Write, Written};
use outpost_store::{Registered, Stored};

/// Why a connection must end.
#[derive(Debug)]
pub enum End {
    /// Close it with this (WebSocket) code and reason.
    Close(u16, String),
    /// The peer is already gone.
    Gone,
}

/// One authenticated agent connection's protocol state.
pub struct Link {
    /// The handles a connection needs.
    pub state: Context,
    /// The agent key the connection authenticated with.
    pub key: LinkKey,
    bad: BadFrames,
    /// Keeps this connection's writes in order at the writer (see [`Fence`]).
    fence: Arc<Fence>,
    /// How the agent is connected, recorded with its row for the other nodes' views.
    transport: outpost_store::domain::Transport,
}

/// What a connection keeps of the agent key it authenticated with. The key's row (its hash,
/// name, permissions as JSON, times) is several hundred bytes of heap, and a connection lives
/// as long as its agent: kept whole, it cost every idle connection that much for fields read
/// once, when the `connected` frame is made.
pub struct LinkKey {
    /// The key's id, named in the `connected` frame and the hub's session.
    pub id: String,
    /// The tenant every row this connection touches belongs to.
    pub tenant_id: String,
    /// When the key (or the certificate) stops being accepted: the connection is closed then.
    pub expires_at: Option<DateTime<Utc>>,
    /// The one agent the connection may register as, when it came with a certificate.
    pub bound: Option<AgentId>,
    /// What the key allowed when the connection was authenticated, for the commands resent
    /// on (re)connect; taken by [`Link::open_frames`], so that an idle connection keeps none.
    permissions: Vec<String>,
}

impl Link {
    /// A link for a connection authenticated with `key`, and the `connected` frame that opens
    /// the conversation.
    pub fn new(
        state: Context,
        identity: AgentIdentity,
        transport: outpost_store::domain::Transport,
    ) -> (Self, ServerFrame) {
        let expires_at = identity.expires_at();
        let bound = identity.agent_id;
        let key = identity.key;
        let connected = ServerFrame::Connected(Connected {
            message: "Agent connection established".into(),
            agent_key_id: key.id.clone(),
            permissions: key.permissions.to_vec(),
            heartbeat_interval_s: state.hub.heartbeat_interval().as_secs().max(1) as u32,
            protocol: PROTOCOL_VERSION,
            timestamp: Utc::now(),
        });
        let key = LinkKey {
            permissions: key.permissions.to_vec(),
            id: key.id,
            tenant_id: key.tenant_id,
            expires_at,
            bound,
        };
        let link = Self {
            state,
            key,
            transport,
            bad: BadFrames::default(),
            fence: Fence::new(),
        };
        (link, connected)
    }

    /// The tenant every row this connection touches belongs to.
    pub fn tenant_id(&self) -> &str {
        &self.key.tenant_id
    }

    /// Checks a `register` before anything of it is stored: the protocol version (a mismatch
    /// tells what to install) and the limits of protocol v1 (every count and length; no
    /// control characters in names, tags and host facts: see [`outpost_protocol::check`]).
    /// The error is the `error` frame to answer with; the connection then ends
    /// ([`refused_register`]), since a registration that cannot be accepted leaves nothing to
    /// do on it. Both transports and a repeated `register` go through here.
    pub fn check_register(data: &RegisterData) -> Result<(), ErrorBody> {
        Self::check_protocol(data)?;
        data.check()
            .map_err(|why| ErrorBody::new(codes::BAD_FRAME, why))
    }

    /// Checks the protocol version a `register` announces.
    fn check_protocol(data: &RegisterData) -> Result<(), ErrorBody> {
        if data.protocol == PROTOCOL_VERSION {
            return Ok(());
        }
        let message = format!(
            "agent speaks protocol {}, this server speaks {PROTOCOL_VERSION}: install an agent release matching the server",
            data.protocol
        );
        Err(ErrorBody::new(codes::PROTOCOL_MISMATCH, message))
    }

    /// Stores what the agent said about itself. Its key's tags are not copied into what it
    /// declares: they are read from the key (see `outpost_core::tags`). An `agent_id` bound to another
    /// key is refused (CONTRACT.md §9, "Agent identity"), and so is a new one in a tenant at its
    /// `max_agents` quota (`quota_exceeded`): the `error` frame saying why goes into `out`, and
    /// the connection ends with 1008.
    async fn store_register(
        &self,
        data: &RegisterData,
        out: &mut Vec<ServerFrame>,
    ) -> Result<(), End> {
        self.record_update_report(data).await?;
        let registered = self
            .state
            .store
            .upsert_agent(
                &self.key.tenant_id,
                &self.key.id,
                data,
                self.state.hub.node_id(),
                self.transport,
            )
            .await
            .map_err(|err| {
                tracing::error!(error = %err, "could not store register");
                End::Close(1011, "internal error".into())
            })?;
        match registered {
            Registered::Stored(agent) => {
                // `agent.online` for an agent whose offline was announced; a failure leaves
                // the mark, and the next registration records it.
                if agent.offline_reported_at.is_some() {
                    match self.state.store.record_agent_online(&agent).await {
                        Ok(_) => self.state.finish.events_recorded(),
                        Err(err) => tracing::warn!(error = %err, "could not record agent.online"),
                    }
                }
                Ok(())
            }
            Registered::Taken { key_id } => {
                tracing::warn!(
                    agent_id = %data.agent_id,
                    key_id = %self.key.id,
                    bound_to = %key_id,
                    "refused a register: the agent id is bound to another agent key"
                );
                out.push(ServerFrame::Error(taken(data.agent_id)));
                Err(End::Close(
                    limits::CLOSE_POLICY,
                    codes::AGENT_ID_TAKEN.to_owned(),
                ))
            }
            Registered::OverQuota { max } => {
                tracing::warn!(
                    agent_id = %data.agent_id,
                    key_id = %self.key.id,
                    max_agents = max,
                    "refused a register: a new agent past the tenant's max_agents quota"
                );
                out.push(ServerFrame::Error(over_quota(data.agent_id, max)));
                Err(End::Close(
                    limits::CLOSE_POLICY,
                    codes::QUOTA_EXCEEDED.to_owned(),
                ))
            }
        }
    }

    /// Records the supervisor's report on an update (`agent.updated`,
    /// `agent.update_rolled_back`) when `register` carries one other than the one stored: the
    /// agent repeats its last report with every `register`. Recorded before the report is
    /// stored, so that a failure refuses the registration (the agent comes back and it is
    /// tried again) rather than losing the event; the event's key makes a repeat a no-op.
    async fn record_update_report(&self, data: &RegisterData) -> Result<(), End> {
        use outpost_protocol::release::update_status;
        let Some(report) = data.update_status.as_deref() else {
            return Ok(());
        };
        if ![update_status::UPDATED, update_status::ROLLED_BACK].contains(&report.status.as_str()) {
            return Ok(());
        }
        let failed = |err: outpost_store::StoreError| {
            tracing::error!(error = %err, "could not record the agent's update report");
            End::Close(1011, "internal error".into())
        };
        let store = &self.state.store;
        let Some(mut agent) = store
            .get_agent(&self.key.tenant_id, &data.agent_id.to_string())
            .await
            .map_err(failed)?
        else {
            // Unknown here (forgotten, or another tenant's): nothing it updated from.
            return Ok(());
        };
        if agent.key_id != self.key.id || agent.update_status == Some(serde_json::json!(report)) {
            return Ok(());
        }
        agent.hostname.clone_from(&data.hostname);
        agent.version.clone_from(&data.version);
        agent.agent_tags = data.tags.iter().collect();
        store
            .record_update_report(&agent, report)
            .await
            .map_err(failed)?;
        self.state.finish.events_recorded();
        Ok(())
    }

    /// Stores the `register` that opens a connection (see `store_register`; a refusal's
    /// `error` frame is in `out`).
    pub async fn on_register(
        &self,
        data: &RegisterData,
        out: &mut Vec<ServerFrame>,
    ) -> Result<(), End> {
        self.check_identity(data.agent_id, out).await?;
        self.store_register(data, out).await?;
        let touched = self
            .state
            .store
            .touch_agent_key(&self.key.tenant_id, &self.key.id)
            .await;
        if let Err(err) = touched {
            tracing::warn!(error = %err, "could not record key use");
        }
        Ok(())
    }

    /// Whether the connection may speak for `agent_id` (CONTRACT.md §19): a certificate names
    /// one agent; under `--agent-auth either`, an agent that enrolled (or was revoked after it
    /// did) must come with its certificate, so that a copied enrollment key cannot speak for
    /// it. Refused with an `error` frame in `out` and a 1008 close.
    pub async fn check_identity(
        &self,
        agent_id: AgentId,
        out: &mut Vec<ServerFrame>,
    ) -> Result<(), End> {
        let refused = match self.key.bound {
            Some(bound) if bound != agent_id => Some(ErrorBody::new(
                codes::CERTIFICATE_MISMATCH,
                format!(
                    "the client certificate names agent {bound}, not {agent_id}: an agent registers as the agent its certificate names"
                ),
            )),
            Some(_) => None,
            None if self.state.agent_auth == AgentAuthMode::Either
                && self.state.enrollment.is_some() =>
            {
                let standing = self
                    .state
                    .store
                    .cert_standing(&self.key.tenant_id, &agent_id.to_string(), Utc::now())
                    .await
                    .map_err(|err| {
                        tracing::error!(error = %err, "could not read the agent's certificates");
                        End::Close(1011, "internal error".into())
                    })?;
                (standing.revoked || standing.live.is_some()).then(|| {
                    ErrorBody::new(
                        codes::CERTIFICATE_REQUIRED,
                        format!(
                            "agent {agent_id} enrolled: it must connect with its client certificate, not its agent key"
                        ),
                    )
                })
            }
            None => None,
        };
        match refused {
            None => Ok(()),
            Some(body) => {
                tracing::warn!(%agent_id, key_id = %self.key.id, code = body.code, "refused a register: {}", body.message);
                let code = body.code.clone();
                out.push(ServerFrame::Error(body));
                Err(End::Close(limits::CLOSE_POLICY, code))
            }
        }
    }

    /// Every command the agent still owes an answer to, as frames to send again (delivery
    /// guarantees 1 and 2). A pending command its key does not allow (any more: its
    /// permissions may have changed since the command was stored) is failed with `forbidden`
    /// instead: permissions are checked on every send.
    pub async fn open_frames(&mut self, agent_id: AgentId) -> Result<Vec<ServerFrame>, End> {
        let agent = agent_id.to_string();
        let tenant_id = &self.key.tenant_id;
        let store = &self.state.store;
        let (mut finished, open) =
            store
                .open_commands_for(tenant_id, &agent)
                .await
                .map_err(|err| {
                    tracing::error!(error = %err, "could not load open commands");
                    End::Close(1011, "internal error".into())
                })?;
        let permissions = std::mem::take(&mut self.key.permissions);
        let (allowed, forbidden): (Vec<_>, Vec<_>) = open.into_iter().partition(|command| {
            command.state != outpost_store::domain::CommandState::Pending
                || outpost_core::access::key_allows(&permissions, &command.command)
        });
        if !forbidden.is_empty() {
            let ids: Vec<String> = forbidden.into_iter().map(|c| c.id).collect();
            let message = format!(
                "agent key {} does not allow this command (any more)",
                self.key.id
            );
            let refused = store
                .refuse_pending(tenant_id, &agent, &ids, &message)
                .await
                .map_err(|err| {
                    tracing::error!(error = %err, "could not refuse forbidden commands");
                    End::Close(1011, "internal error".into())
                })?;
            tracing::warn!(%agent_id, refused = refused.len(), "pending commands failed: the agent's key does not allow them");
            finished.extend(refused);
        }
        if !finished.is_empty() {
            self.state.finish.finished(finished);
        }
        let mut frames = Vec::with_capacity(allowed.len());
        for command in allowed {
            match self.state.hub.frames().command(&command) {
                Some(frame) => frames.push(frame),
                None => tracing::error!(command_id = %command.id, "stored command has a bad id"),
            }
        }
        Ok(frames)
    }

    /// Acts on one frame from a registered agent, pushing what to answer onto `out`. Writes go
    /// through the batching writer and are committed before anything is acknowledged.
    pub async fn handle(
        &mut self,
        agent_id: AgentId,
        frame: AgentFrame,
        out: &mut Vec<ServerFrame>,
    ) -> Result<(), End> {
        match self.submit(agent_id, frame, out).await? {
            Some(mut pending) => {
                let written = pending.written().await;
                self.complete(pending.about, written, out)
            }
            None => Ok(()),
        }
    }

    /// Starts acting on one frame: hands its write to the writer and returns without waiting
    /// for the commit, so that a connection can read its agent's next frame meanwhile (an ack
    /// and its result then share a batch). The writer commits in the order writes are handed
    /// to it; the caller passes each [`Pending`] to [`complete`](Self::complete) in that order.
    /// `None`: nothing was written (the frame was refused, its `error` answer is in `out`, or
    /// it was a repeated `register`, stored already).
    pub async fn submit(
        &mut self,
        agent_id: AgentId,
        frame: AgentFrame,
        out: &mut Vec<ServerFrame>,
    ) -> Result<Option<Pending>, End> {
        let tenant_id = self.key.tenant_id.clone();
        let agent = agent_id.to_string();
        let mut about = About::Other;
        let write = match frame {
            AgentFrame::Register { data } => {
                if data.agent_id != agent_id {
                    self.refuse(
                        codes::BAD_FRAME,
                        "agent_id cannot change on a connection".into(),
                        out,
                    )?;
                    return Ok(None);
                }
                if let Err(err) = Self::check_register(&data) {
                    let end = refused_register(&err);
                    out.push(ServerFrame::Error(err));
                    return Err(end);
                }
                // Boxed: rare, and its query future would otherwise enlarge every
                // connection's (see `ws::Connection::serve`).
                Box::pin(self.store_register(&data, out)).await?;
                return Ok(None);
            }
            AgentFrame::Heartbeat { status } => Write::Heartbeat {
                tenant_id,
                agent_id: agent,
                status,
            },
            AgentFrame::Ack { command_id } => Write::Delivered {
                tenant_id,
                agent_id: agent,
                command_id: command_id.to_string(),
            },
            AgentFrame::Output(output) => {
                about = About::Output(output.command_id);
                let bytes =
                    match decode_output_data(output.data.as_deref(), output.data_b64.as_deref()) {
                        Ok(bytes) if bytes.len() <= limits::MAX_OUTPUT_CHUNK => bytes,
                        Ok(bytes) => {
                            let message = format!(
                                "output chunk of {} bytes; the limit is {}",
                                bytes.len(),
                                limits::MAX_OUTPUT_CHUNK
                            );
                            self.refuse(codes::BAD_FRAME, message, out)?;
                            return Ok(None);
                        }
                        Err(why) => {
                            self.refuse(codes::BAD_FRAME, why, out)?;
                            return Ok(None);
                        }
                    };
                Write::Output {
                    tenant_id,
                    agent_id: agent,
                    command_id: output.command_id.to_string(),
                    stream: output.stream,
                    seq: output.seq,
                    bytes,
                    cap: self.state.hub.frames().max_output_bytes(),
                }
            }
            AgentFrame::Response(response) => {
                about = About::Response(response.command_id);
                Write::Finish {
                    tenant_id,
                    agent_id: agent,
                    response,
                }
            }
        };
        let written = self
            .state
            .writer
            .submit_in_order(write, &self.fence)
            .await
            .map_err(internal)?;
        Ok(Some(Pending { written, about }))
    }

    /// Finishes a frame once its write is committed: tells the hub's listeners (of a result,
    /// the writer has told them), and answers a `response` with an `ack` (it is stored now, or
    /// was before, or was not this agent's to store: either way the agent may forget it).
    pub fn complete(
        &self,
        about: About,
        written: outpost_store::Result<Written>,
        out: &mut Vec<ServerFrame>,
    ) -> Result<(), End> {
        match written.map_err(internal)? {
            Written::Heartbeat => {}
            Written::Delivered {
                job_id: Some(job_id),
                ..
            } => {
                self.state.finish.job_changed(&self.key.tenant_id, &job_id);
            }
            Written::Delivered { .. } => {}
            Written::Output(Stored::New {
                job_id: Some(job_id),
                ..
            }) => {
                self.state.finish.job_changed(&self.key.tenant_id, &job_id);
            }
            // Dropped, and said so; not counted as a bad frame: an agent whose server lost
            // its database (restored from a backup) resends what the server no longer knows,
            // and a closed connection would only make it send it again.
            Written::Output(Stored::Foreign) => {
                out.push(not_yours(about, "output"));
            }
            // Not counted as a bad frame: an agent back after its run was marked lost sends
            // the rest of its spool, and must not be cut off for it.
            Written::Output(Stored::Final {
                command_id,
                stream,
                seq,
            }) => {
                let message = format!(
                    "run {command_id} is final: output after its answer is not stored ({} chunk {seq})",
                    stream.as_str()
                );
                out.push(ServerFrame::Error(ErrorBody::new(
                    codes::RUN_FINISHED,
                    message,
                )));
            }
            Written::Output(_) => {}
            Written::Finished(Finish::Foreign) => {
                out.push(not_yours(about, "response"));
            }
            // The writer has handed it to its waiters and job listeners already (see
            // `Writer::on_finished`).
            Written::Finished(Finish::Stored | Finish::Repeat) => {}
        }
        if let About::Response(command_id) = about {
            out.push(ServerFrame::Ack { command_id });
        }
        Ok(())
    }

    /// Answers a bad frame with an `error` frame; too many in a minute end the connection.
    pub fn refuse(
        &mut self,
        code: &str,
        message: String,
        out: &mut Vec<ServerFrame>,
    ) -> Result<(), End> {
        tracing::debug!(code, %message, "refused a frame");
        out.push(ServerFrame::Error(ErrorBody::new(code, message)));
        if self.bad.record() > limits::MAX_BAD_FRAMES_PER_MINUTE {
            return Err(End::Close(
                limits::CLOSE_POLICY,
                "too many bad frames".into(),
            ));
        }
        Ok(())
    }
}

/// The command a frame in flight is about.
#[derive(Debug, Clone, Copy)]
pub enum About {
    /// A `response` to it: acknowledged once stored.
    Response(CommandId),
    /// An `output` chunk of it.
    Output(CommandId),
    /// Anything else.
    Other,
}

/// A frame whose write was handed to the writer and is not committed yet.
pub struct Pending {
    written: outpost_store::writer::Committed,
    /// The command the frame is about, to answer for once it is stored.
    pub about: About,
}

impl Pending {
    /// Waits for the commit.
    pub async fn written(&mut self) -> outpost_store::Result<Written> {
        (&mut self.written).await
    }

    /// The commit's outcome if it is already known, without waiting.
    pub fn written_now(&mut self) -> Option<outpost_store::Result<Written>> {
        futures_util::FutureExt::now_or_never(&mut self.written)
    }
}

/// A failed store write ends the connection without acknowledging anything: the agent keeps
/// what it sent and sends it again after reconnecting.
fn internal(err: outpost_store::StoreError) -> End {
    tracing::error!(error = %err, "could not store an agent frame");
    End::Close(1011, "internal error".into())
}

/// The `error` for an `output` or `response` naming a command never sent to this agent. The
/// agent still gets its `ack` for a response: nothing is kept for it, so it may forget it.
fn not_yours(about: About, frame: &str) -> ServerFrame {
    let which = match about {
        About::Response(id) | About::Output(id) => format!(" {id}"),
        About::Other => String::new(),
    };
    ServerFrame::Error(ErrorBody::new(
        codes::NOT_YOUR_COMMAND,
        format!("{frame} dropped: command{which} was not sent to this agent"),
    ))
}

/// The `error` a `register` gets when its `agent_id` is bound to another agent key.
pub fn taken(agent_id: AgentId) -> ErrorBody {
    ErrorBody::new(
        codes::AGENT_ID_TAKEN,
        format!(
            "agent id {agent_id} is registered with another agent key; an admin must forget \
             the agent (DELETE /api/agents/{agent_id}) before this key may use it, or give \
             this agent a fresh state directory"
        ),
    )
}

/// The `error` frame refusing a new agent past its tenant's `max_agents` quota.
pub fn over_quota(agent_id: AgentId, max: i64) -> ErrorBody {
    ErrorBody::new(
        codes::QUOTA_EXCEEDED,
        format!(
            "agent {agent_id} is new and its tenant already has max_agents = {max} agents;              the server's admin may raise the quota (outpost-server tenant set-quota), or an              admin may forget an agent (DELETE /api/agents/{{id}})"
        ),
    )
}

/// The close after a `register` refused by [`Link::check_register`] (its `error` frame says
/// why; a close reason must stay short).
pub fn refused_register(err: &ErrorBody) -> End {
    let reason = if err.code == codes::PROTOCOL_MISMATCH {
        "protocol mismatch"
    } else {
        "register refused"
    };
    End::Close(limits::CLOSE_POLICY, reason.into())
}

/// The close for a frame over the protocol's size limit.
pub fn too_big() -> End {
    End::Close(
        limits::CLOSE_TOO_BIG,
        format!("frame larger than {} bytes", limits::MAX_FRAME_BYTES),
    )
}

/// Bad frames seen in the last minute.
#[derive(Default)]
struct BadFrames(VecDeque<Instant>);

impl BadFrames {
    /// Records one and returns how many fell in the last minute.
    fn record(&mut self) -> usize {
        let now = Instant::now();
        while self
            .0
            .front()
            .is_some_and(|t| now.duration_since(*t) > Duration::from_secs(60))
        {
            self.0.pop_front();
        }
        if self.0.len() <= limits::MAX_BAD_FRAMES_PER_MINUTE {
            self.0.push_back(now);
        }
        self.0.len()
    }
}
