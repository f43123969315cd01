//! The domain model: the words every layer shares, with no behaviour of any layer.
//!
//! States, roles, transports and commands are enums here so that code compares them by
//! type, not by spelling; the store keeps them as text (`as_str` and `FromStr` are the only
//! conversions), and the OpenAPI document declares them from these same types, so the
//! document cannot drift from what the server enforces. [`DomainError`] is what every
//! operation below the HTTP layer fails with; `api::error` alone maps it to statuses.
//!
//! This module depends on nothing else of the crate (the tidy test in `tests/tidy.rs`
//! checks), so every other module may use it.

mod error;

pub use error::{DomainError, quota_exceeded};
pub use outpost_protocol::{AgentId, CommandId};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Declares a text-backed enum: its variants with their stored spelling, `as_str`,
/// `FromStr` (naming what was expected) and `ALL`.
///
/// The spelling is matched as a `tt`, not a `literal`: a `literal` fragment reaches
/// `#[derive(ToSchema)]` wrapped in an invisible group, which utoipa does not read as
/// `serde(rename)`, so the OpenAPI document showed the variants' Rust names (`"Websocket"`).
macro_rules! text_enum {
    (
        $(#[$meta:meta])*
        $name:ident { $( $(#[$vmeta:meta])* $variant:ident = $text:tt, )+ }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
        pub enum $name {
            $( $(#[$vmeta])* #[serde(rename = $text)] $variant, )+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The spelling stored and shown.
            pub const fn as_str(self) -> &'static str {
                match self { $( Self::$variant => $text, )+ }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;

            fn from_str(text: &str) -> Result<Self, String> {
                match text {
                    $( $text => Ok(Self::$variant), )+
                    _ => Err(format!(
                        "{text:?} is not a {}; expected one of {}",
                        stringify!($name),
                        [$($text),+].join(", ")
                    )),
                }
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }

        impl PartialEq<$name> for &str {
            fn eq(&self, other: &$name) -> bool {
                *self == other.as_str()
            }
        }

        impl PartialEq<$name> for String {
            fn eq(&self, other: &$name) -> bool {
                self.as_str() == other.as_str()
            }
        }
    };
}

text_enum! {
    /// Where a command (one agent's part of a job, or a single command) stands.
    CommandState {
        /// Stored, not yet acknowledged by the agent.
        Pending = "pending",
        /// Acknowledged by the agent, no result yet.
        Delivered = "delivered",
        /// A script run the agent has started (it acknowledges a `run` as it starts it).
        Running = "running",
        /// Finished successfully.
        Succeeded = "succeeded",
        /// Finished unsuccessfully.
        Failed = "failed",
        /// Killed at its timeout.
        TimedOut = "timed_out",
        /// Cancelled on request.
        Cancelled = "cancelled",
        /// Its TTL passed before it was delivered.
        Expired = "expired",
        /// Its agent never came back.
        Lost = "lost",
    }
}

impl CommandState {
    /// States in which a command will not change any more.
    pub const FINAL: &'static [CommandState] = &[
        Self::Succeeded,
        Self::Failed,
        Self::TimedOut,
        Self::Cancelled,
        Self::Expired,
        Self::Lost,
    ];
    /// States in which the agent still owes an answer.
    pub const OPEN: &'static [CommandState] = &[Self::Pending, Self::Delivered, Self::Running];

    /// Whether the command will not change any more.
    pub fn is_final(self) -> bool {
        !Self::OPEN.contains(&self)
    }

    /// Whether stored text names a final state (text that names no state is not final).
    pub fn is_final_text(text: &str) -> bool {
        text.parse::<Self>().is_ok_and(Self::is_final)
    }
}

text_enum! {
    /// Where a job (a command for many agents) stands, from its runs.
    JobState {
        /// Some run is still open.
        Running = "running",
        /// Every run succeeded.
        Succeeded = "succeeded",
        /// Some run did not succeed (failed, timed out, expired, lost).
        Failed = "failed",
        /// Every run that did not succeed was cancelled.
        Cancelled = "cancelled",
    }
}

text_enum! {
    /// What an API key's holder may do.
    Role {
        /// Everything, including what can downgrade agents (a forced `update`) and the
        /// server's metrics.
        Owner = "owner",
        /// Everything about agents, keys, jobs and webhooks of the tenant.
        Admin = "admin",
        /// Reads, and runs of what agent keys allow.
        Member = "member",
    }
}

impl Role {
    /// Whether this role may do what `needed` may.
    pub fn at_least(self, needed: Role) -> bool {
        self.rank() >= needed.rank()
    }

    fn rank(self) -> u8 {
        match self {
            Self::Member => 0,
            Self::Admin => 1,
            Self::Owner => 2,
        }
    }
}

text_enum! {
    /// What an API key may be used for (CONTRACT.md §9). A key acts with its scopes and its owner's
    /// current role together: a scope never lifts a role's limit, and a role never reaches
    /// past a key's scopes. A user's session has every scope.
    Scope {
        /// Read agents, their keys and connections.
        AgentsRead = "agents:read",
        /// Change or forget agents.
        AgentsWrite = "agents:write",
        /// Read jobs, commands and output.
        JobsRead = "jobs:read",
        /// Trigger and cancel runs and commands.
        JobsRun = "jobs:run",
        /// Read schedules.
        SchedulesRead = "schedules:read",
        /// Create, change and delete schedules.
        SchedulesWrite = "schedules:write",
        /// Change integrations and the webhook signing secret.
        IntegrationsWrite = "integrations:write",
        /// Create, change and delete keys (agent keys and API keys).
        KeysWrite = "keys:write",
        /// Read and manage users and the tenant.
        UsersWrite = "users:write",
        /// Read and verify the audit log.
        AuditRead = "audit:read",
        /// Read metrics and the server's nodes.
        MetricsRead = "metrics:read",
        /// Upload and delete library scripts (CONTRACT.md §15).
        ScriptsWrite = "scripts:write",
        /// Every scope.
        All = "*",
    }
}

/// A set of [`Scope`]s, as a key holds them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Scopes(u16);

impl Scopes {
    /// Every scope: a user's session, a key with `*`, a key made by the server.
    pub const ALL: Scopes = Scopes(u16::MAX);

    fn bit(scope: Scope) -> u16 {
        match scope {
            Scope::All => u16::MAX,
            other => 1 << (Scope::ALL.iter().position(|s| *s == other).unwrap_or(0)),
        }
    }

    /// The set of `scopes` (`*` among them makes it every scope).
    pub fn of(scopes: &[Scope]) -> Self {
        Self(scopes.iter().fold(0, |set, s| set | Self::bit(*s)))
    }

    /// Whether the set allows `scope`.
    pub fn allows(self, scope: Scope) -> bool {
        let bit = Self::bit(scope);
        self.0 & bit == bit
    }

    /// Whether every scope of `other` is in this set.
    pub fn covers(self, other: Scopes) -> bool {
        self.0 & other.0 == other.0
    }

    /// The scopes it holds, `*` alone when it holds them all.
    pub fn list(self) -> Vec<Scope> {
        if self == Self::ALL {
            return vec![Scope::All];
        }
        Scope::ALL
            .iter()
            .copied()
            .filter(|s| *s != Scope::All && self.allows(*s))
            .collect()
    }
}

text_enum! {
    /// Whether an agent key authenticates.
    KeyStatus {
        /// The key authenticates.
        Active = "active",
        /// The key is refused until re-enabled.
        Disabled = "disabled",
    }
}

text_enum! {
    /// How an agent is connected.
    Transport {
        /// A WebSocket.
        Websocket = "websocket",
        /// HTTP long-poll (`/agent/v1/poll` and `/agent/v1/frames`).
        Http = "http",
    }
}

text_enum! {
    /// The commands an agent knows (`outpost_protocol::commands`).
    Command {
        /// Answers at once: proves the agent is reachable.
        Ping = "ping",
        /// The agent's host, version and manifest.
        Info = "info",
        /// Returns its data.
        Echo = "echo",
        /// Runs a script the agent's manifest lists.
        Run = "run",
        /// Exits with 42: the supervisor starts it again.
        Restart = "restart",
        /// Exits with 43: the supervisor installs a release.
        Update = "update",
        /// Exits with 44: the supervisor re-installs.
        Redeploy = "redeploy",
    }
}

text_enum! {
    /// Where a finished job's webhook delivery stands.
    WebhookStatus {
        /// To be delivered.
        Pending = "pending",
        /// The receiver answered 2xx.
        Delivered = "delivered",
        /// Every attempt failed, or the URL is not allowed.
        Failed = "failed",
    }
}

text_enum! {
    /// What a schedule does about fires that passed while it could not fire (the server was
    /// down, or busy for longer than the grace of 60 s).
    MissedPolicy {
        /// Count them in one `schedule.missed` event and run nothing for them.
        Skip = "skip",
        /// One catch-up job (`catch_up: true`) for all of them, and the event.
        RunOnce = "run_once",
    }
}

text_enum! {
    /// What a schedule does when its previous job is still running at the next fire.
    ConcurrencyPolicy {
        /// Start the new job beside it.
        Allow = "allow",
        /// Skip this fire (`schedule.skipped` event).
        Forbid = "forbid",
        /// Cancel the running job, then start the new one.
        Replace = "replace",
    }
}

text_enum! {
    /// Whether a user may sign in.
    UserStatus {
        /// The user signs in and their tokens work.
        Active = "active",
        /// Refused: sign-in, refresh and access tokens alike.
        Disabled = "disabled",
    }
}

/// Who asks: a user (by access token) or an API key, as authenticated. Services decide what it
/// may do from `role`, and know from `principal` who did it.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The caller's tenant: everything it reads or changes is of this tenant.
    pub tenant_id: String,
    /// What it may do: a user's current role (read on every request, not from the token), or
    /// the API key's.
    pub role: Role,
    /// What its key's scopes allow ([`Scopes::ALL`] for a user's session).
    pub scopes: Scopes,
    /// Which user or key.
    pub principal: Principal,
    /// How people know the caller (the API key's name, the user's email), for the audit log.
    pub label: String,
    /// The client's address, as the HTTP layer decides it (`api::ClientAddr`); `None`
    /// when the request did not come over the network.
    pub address: Option<std::net::IpAddr>,
}

impl Caller {
    /// The caller as the audit log records it. Whatever the caller becomes (a user's
    /// session, a scoped key), this is the one place that says how it is named there.
    pub fn actor(&self) -> Actor {
        let (kind, id) = match &self.principal {
            Principal::User { user_id } => (ActorKind::User, user_id),
            Principal::ApiKey { key_id, .. } => (ActorKind::ApiKey, key_id),
            Principal::Schedule { schedule_id } => (ActorKind::Schedule, schedule_id),
        };
        Actor {
            kind,
            id: id.clone(),
            label: self.label.clone(),
        }
    }
}

/// The kind of caller and its id. Kept an enum so that what later work adds (an API key's
/// scopes and owner) goes in its variant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A person signed in with a password (an access token, `Authorization: Bearer <JWT>`).
    User {
        /// The user's id.
        user_id: String,
    },
    /// A program with an API key (`opk_…`).
    ApiKey {
        /// The key's id (never its secret).
        key_id: String,
        /// The user the key belongs to (made through `/api/keys`); `None` for keys the
        /// server made.
        owner: Option<String>,
    },
    /// A schedule firing: the server acts for whoever made or last changed the schedule,
    /// with the role they had then (`schedules.role`).
    Schedule {
        /// The schedule's id.
        schedule_id: String,
    },
}

impl Principal {
    /// The user's id, when a user asks.
    pub fn user_id(&self) -> Option<&str> {
        match self {
            Self::User { user_id } => Some(user_id),
            Self::ApiKey { .. } | Self::Schedule { .. } => None,
        }
    }
}

text_enum! {
    /// What kind of actor an audit row names.
    ActorKind {
        /// An API key (`opk_…`).
        ApiKey = "api_key",
        /// A person signed in (a user's session).
        User = "user",
        /// An agent, by its agent key.
        Agent = "agent",
        /// The server itself, or an operator's command on its host (`outpost-server …`).
        System = "system",
        /// A schedule's fire (`id` is the schedule's id).
        Schedule = "schedule",
    }
}

/// Who did something, as the audit log records it: small on purpose, so that any kind of
/// caller can be named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// What kind.
    pub kind: ActorKind,
    /// Its id (a key id, a user id, an agent id, or the command for `system`).
    pub id: String,
    /// How people know it (a key's name, an email address).
    pub label: String,
}

impl Actor {
    /// The server or an operator's command on its host, named by `id` (`admin-key rotate`).
    pub fn system(id: &str, label: &str) -> Self {
        Self {
            kind: ActorKind::System,
            id: id.to_owned(),
            label: label.to_owned(),
        }
    }
}

text_enum! {
    /// What an audit row records. The first word names the kind of target.
    AuditAction {
        /// A job was created (`POST /api/jobs`).
        JobTrigger = "job.trigger",
        /// A job's runs were cancelled.
        JobCancel = "job.cancel",
        /// A command was sent to one agent (`POST /api/agents/{id}/command`).
        CommandSend = "command.send",
        /// A command was sent to every agent of an agent key (`…/command`, `…/ping`).
        CommandFanOut = "command.fan_out",
        /// An agent's server-side tags were set.
        AgentUpdate = "agent.update",
        /// An agent was forgotten (its certificates revoked, if it enrolled).
        AgentDelete = "agent.delete",
        /// A deleted agent was cleared to enroll again (CONTRACT.md §19).
        AgentUnrevoke = "agent.unrevoke",
        /// An agent key was created.
        AgentKeyCreate = "agent_key.create",
        /// An agent key was renamed or its permissions changed.
        AgentKeyUpdate = "agent_key.update",
        /// An agent key was disabled.
        AgentKeyDisable = "agent_key.disable",
        /// An agent key was enabled again.
        AgentKeyEnable = "agent_key.enable",
        /// An agent key was deleted.
        AgentKeyDelete = "agent_key.delete",
        /// An agent key's secret was replaced.
        AgentKeyRegenerate = "agent_key.regenerate",
        /// An API key was created (the owner key of a changed `OUTPOST_ADMIN_KEY`, and the
        /// keys API of the accounts work).
        ApiKeyCreate = "api_key.create",
        /// The owner API key was replaced (`outpost-server admin-key rotate`).
        ApiKeyRotate = "api_key.rotate",
        /// An API key was deleted or revoked (the keys API of the accounts work).
        ApiKeyDelete = "api_key.delete",
        /// The tenant's webhook signing secret was replaced.
        WebhookSecretRotate = "webhook_secret.rotate",
        /// A release was published (`outpost-server release publish`).
        ReleasePublish = "release.publish",
        /// A tenant was created: with its owner key (first start, `outpost-server tenant
        /// create`), or with its owner user (`POST /api/auth/register`).
        TenantCreate = "tenant.create",
        /// A tenant was renamed or its quotas changed (`PATCH /api/tenants/{id}`,
        /// `outpost-server tenant set-quota`).
        TenantUpdate = "tenant.update",
        /// A person signed in.
        AuthLogin = "auth.login",
        /// A sign-in was refused (a known email; an unknown one has no tenant to record in).
        AuthLoginFailed = "auth.login_failed",
        /// A user was created or invited.
        UserCreate = "user.create",
        /// A user's role was changed (and maybe their status with it).
        UserRoleChange = "user.role_change",
        /// A user was disabled.
        UserDisable = "user.disable",
        /// A disabled user was enabled again.
        UserEnable = "user.enable",
        /// An invited user set their password with the invite.
        UserInviteAccept = "user.invite_accept",
        /// A user was deleted.
        UserDelete = "user.delete",
        /// A user proved their email is theirs with a mailed code (CONTRACT.md §18).
        UserEmailVerify = "user.email_verify",
        /// A password reset link was mailed to a user (asked for by anyone who knew the email).
        UserPasswordResetRequest = "user.password_reset_request",
        /// A user set a new password with a reset link; every session of theirs ended.
        UserPasswordReset = "user.password_reset",
        /// A user began setting up a TOTP second factor (CONTRACT.md §18).
        UserTotpSetup = "user.totp_setup",
        /// A user confirmed their TOTP factor with a first code (recovery codes issued).
        UserTotpConfirm = "user.totp_confirm",
        /// A user removed their own TOTP factor.
        UserTotpRemove = "user.totp_remove",
        /// An owner reset another user's TOTP factor.
        UserTotpReset = "user.totp_reset",
        /// A wrong or replayed second-factor code was given (sign-in, confirm or removal).
        AuthTotpFailed = "auth.totp_failed",
        /// A sign-in was finished with a recovery code (used up).
        AuthRecoveryCodeUsed = "auth.recovery_code_used",
        /// A schedule was created.
        ScheduleCreate = "schedule.create",
        /// A schedule was changed (enabled and disabled included).
        ScheduleUpdate = "schedule.update",
        /// A schedule was deleted.
        ScheduleDelete = "schedule.delete",
        /// A schedule was run now, outside its times (`POST /api/schedules/{id}/run`).
        ScheduleRun = "schedule.run",
        /// An integration was created.
        IntegrationCreate = "integration.create",
        /// An integration was changed.
        IntegrationUpdate = "integration.update",
        /// An integration was deleted.
        IntegrationDelete = "integration.delete",
        /// A script version was uploaded to the library (`POST /api/scripts`).
        ScriptUpload = "script.upload",
        /// A script version was deleted from the library.
        ScriptDelete = "script.delete",
        /// A script name was disabled: its runs are refused, its versions kept (CONTRACT.md §20).
        ScriptDisable = "script.disable",
        /// A disabled script name was enabled again.
        ScriptEnable = "script.enable",
        /// A draft was saved from the dashboard's editor or the API (its author).
        ScriptDraftSave = "script.draft_save",
        /// A draft was signed on the operator's machine and became a version (its signer).
        ScriptDraftSign = "script.draft_sign",
        /// A draft was deleted.
        ScriptDraftDelete = "script.draft_delete",
        /// A rollout was started (`POST /api/rollouts`).
        RolloutStart = "rollout.start",
        /// A rollout was paused.
        RolloutPause = "rollout.pause",
        /// A paused or halted rollout was resumed.
        RolloutResume = "rollout.resume",
        /// A rollout was aborted.
        RolloutAbort = "rollout.abort",
        /// A rollout's agents were sent back to the versions they had.
        RolloutRollback = "rollout.rollback",
        /// The tenant's fleet policy (`min_agent_version`) was set.
        FleetPolicy = "fleet.policy",
        /// A person signed in through the OpenID Connect provider (CONTRACT.md §18).
        AuthSsoLogin = "auth.sso_login",
        /// A sign-in through the provider was refused (a disabled user, an email that is an
        /// unlinked user's).
        AuthSsoRefused = "auth.sso_refused",
        /// A signed-in user linked an identity at the provider to their account.
        UserSsoLink = "user.sso_link",
    }
}

text_enum! {
    /// What kind of thing an audit row is about.
    AuditTarget {
        /// A job (`target_id` is its id).
        Job = "job",
        /// A stored command.
        Command = "command",
        /// An agent.
        Agent = "agent",
        /// An agent key.
        AgentKey = "agent_key",
        /// An API key.
        ApiKey = "api_key",
        /// The tenant itself (its settings, its webhook secret).
        Tenant = "tenant",
        /// A release (`target_id` is `VERSION/TARGET`).
        Release = "release",
        /// A user (accounts work).
        User = "user",
        /// A schedule.
        Schedule = "schedule",
        /// An integration.
        Integration = "integration",
        /// A library script version (`target_id` is `NAME@VERSION`).
        Script = "script",
        /// A rollout.
        Rollout = "rollout",
    }
}

text_enum! {
    /// Where a rollout is (CONTRACT.md §17). `running` is shown as `canary` or `wave N` by its
    /// stage.
    RolloutState {
        /// Updating its current stage (the canary, then each wave).
        Running = "running",
        /// Stopped by a person: nothing new is sent; agents already updating are watched.
        Paused = "paused",
        /// Stopped by the health gate: a stage did not reach `min_healthy_percent`. Waits for
        /// a person (resume, abort or rollback).
        Halted = "halted",
        /// Every stage passed; the version is the target's desired version.
        Completed = "completed",
        /// Stopped for good by a person; agents keep the version they have.
        Aborted = "aborted",
        /// Sending the agents it updated back to the versions they had.
        RollingBack = "rolling_back",
        /// Every agent it updated was sent back (or could not be: see each agent).
        RolledBack = "rolled_back",
    }
}

impl RolloutState {
    /// States in which the rollout holds its agents (no other rollout may take them) and the
    /// engine looks at it.
    pub const ACTIVE: &'static [RolloutState] =
        &[Self::Running, Self::Paused, Self::Halted, Self::RollingBack];

    /// Whether the engine still has work or watching to do.
    pub fn is_active(self) -> bool {
        Self::ACTIVE.contains(&self)
    }
}

text_enum! {
    /// Where one agent of a rollout is (CONTRACT.md §17).
    RolloutAgentState {
        /// Its stage has not reached it yet.
        Pending = "pending",
        /// The `update` was sent; waiting for it back online at the version.
        Updating = "updating",
        /// Back at the version; waiting out the soak.
        Soaking = "soaking",
        /// Soaked; the health script runs on it.
        Checking = "checking",
        /// Passed the health gate (or already ran the version).
        Healthy = "healthy",
        /// Failed the health gate (see its reason).
        Failed = "failed",
        /// Not waited for: offline when its turn came, no `update` capability, or its key does
        /// not allow updates.
        Skipped = "skipped",
        /// Already runs a newer version; never downgraded by a rollout.
        Ahead = "ahead",
        /// A rollback will send it back to its version.
        RevertPending = "revert_pending",
        /// Sent back; waiting for it online at its old version.
        Reverting = "reverting",
        /// Back at the version it had.
        Reverted = "reverted",
        /// Could not be sent back (see its reason).
        RevertFailed = "revert_failed",
    }
}

impl RolloutAgentState {
    /// States an agent leaves only by the engine's next look.
    pub const OPEN: &'static [RolloutAgentState] = &[
        Self::Pending,
        Self::Updating,
        Self::Soaking,
        Self::Checking,
        Self::RevertPending,
        Self::Reverting,
    ];

    /// Whether the engine is done with it.
    pub fn is_final(self) -> bool {
        !Self::OPEN.contains(&self)
    }
}

/// One thing to record in the audit log: what was done, to what, and a little detail that
/// never holds a secret (no key, no parameter value, no command data).
#[derive(Debug, Clone)]
pub struct AuditEvent {
    /// What was done.
    pub action: AuditAction,
    /// What kind of thing it was done to.
    pub target: AuditTarget,
    /// Its id.
    pub target_id: String,
    /// A small JSON object; never a secret.
    pub detail: serde_json::Value,
}

impl AuditEvent {
    /// An event with an empty detail.
    pub fn new(action: AuditAction, target: AuditTarget, target_id: impl Into<String>) -> Self {
        Self {
            action,
            target,
            target_id: target_id.into(),
            detail: serde_json::Value::Object(Default::default()),
        }
    }

    /// The same event with `detail`.
    #[must_use]
    pub fn with(mut self, detail: serde_json::Value) -> Self {
        self.detail = detail;
        self
    }
}

impl Caller {
    /// What the per-caller rate limit counts this caller under (`service::limits`): its API
    /// key, or its user (a user's sessions share one allowance).
    pub fn rate_key(&self) -> String {
        self.principal.to_string()
    }
}

impl std::fmt::Display for Principal {
    /// `user:<id>` or `key:<id>`, for logs (and later the audit log).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::User { user_id } => write!(f, "user:{user_id}"),
            Self::ApiKey { key_id, .. } => write!(f, "key:{key_id}"),
            Self::Schedule { schedule_id } => write!(f, "schedule:{schedule_id}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_hold_what_they_list_and_star_holds_everything() {
        let read = Scopes::of(&[Scope::AgentsRead, Scope::JobsRead]);
        assert!(read.allows(Scope::AgentsRead));
        assert!(read.allows(Scope::JobsRead));
        assert!(!read.allows(Scope::JobsRun));
        assert!(!read.allows(Scope::All));
        assert_eq!(read.list(), vec![Scope::AgentsRead, Scope::JobsRead]);
        let star = Scopes::of(&[Scope::All]);
        assert_eq!(star, Scopes::ALL);
        assert_eq!(star.list(), vec![Scope::All]);
        for scope in Scope::ALL {
            assert!(star.allows(*scope), "{scope}");
            assert!(Scopes::of(&[*scope]).allows(*scope), "{scope}");
        }
        assert!(star.covers(read));
        assert!(!read.covers(star));
        assert!(read.covers(Scopes::of(&[Scope::JobsRead])));
        assert_eq!(Scopes::of(&[]).list(), Vec::<Scope>::new());
        // Every scope listed one by one is not `*`: a scope added later is not granted.
        let each: Vec<Scope> = Scope::ALL
            .iter()
            .copied()
            .filter(|s| *s != Scope::All)
            .collect();
        assert_ne!(Scopes::of(&each), Scopes::ALL);
        assert_eq!(Scopes::of(&each).list(), each);
    }

    #[test]
    fn every_command_of_the_protocol_is_a_command_and_back() {
        let names: Vec<&str> = Command::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(names, outpost_protocol::commands::ALL);
        for name in outpost_protocol::commands::ALL {
            assert_eq!(name.parse::<Command>().expect("a command").as_str(), *name);
        }
    }

    #[test]
    fn stored_text_names_its_state_and_nothing_else() {
        for state in CommandState::ALL {
            assert_eq!(state.as_str().parse::<CommandState>(), Ok(*state));
            let json = serde_json::to_string(state).expect("serialises");
            assert_eq!(json, format!("\"{state}\""));
        }
        let err = "done".parse::<CommandState>().expect_err("not a state");
        assert!(err.contains("expected one of pending"), "{err}");
        assert!(CommandState::is_final_text("lost"));
        assert!(!CommandState::is_final_text("running"));
        assert!(!CommandState::is_final_text("nonsense"));
    }

    #[test]
    fn roles_are_ordered() {
        assert!(Role::Owner.at_least(Role::Admin));
        assert!(Role::Admin.at_least(Role::Admin));
        assert!(!Role::Member.at_least(Role::Admin));
    }
}
