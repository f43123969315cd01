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

pub use error::DomainError;
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
    /// Whether a user may sign in.
    UserStatus {
        /// The user signs in and their tokens work.
        Active = "active",
        /// Refused: sign-in, refresh and access tokens alike.
        Disabled = "disabled",
    }
}

/// Who asks: a user (by access token) or an API key, as authenticated. Services decide what it
/// may do from `role`, and know from `actor` who did it.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The caller's tenant: everything it reads or changes is of this tenant.
    pub tenant_id: String,
    /// What it may do: a user's current role (read on every request, not from the token), or
    /// the API key's.
    pub role: Role,
    /// Which user or key.
    pub actor: Actor,
}

/// The kind of caller and its id. Kept an enum so that what later work adds (an API key's
/// scopes and owner) goes in its variant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// A person signed in with a password (an access token, `Authorization: Bearer <JWT>`).
    User {
        /// The user's id.
        user_id: String,
    },
    /// A program with an API key (`opk_…`).
    ApiKey {
        /// The key's id (never its secret).
        key_id: String,
    },
}

impl Actor {
    /// The user's id, when a user asks.
    pub fn user_id(&self) -> Option<&str> {
        match self {
            Self::User { user_id } => Some(user_id),
            Self::ApiKey { .. } => None,
        }
    }
}

impl std::fmt::Display for Actor {
    /// `user:<id>` or `key:<id>`, for logs (and later the audit log).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::User { user_id } => write!(f, "user:{user_id}"),
            Self::ApiKey { key_id } => write!(f, "key:{key_id}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
