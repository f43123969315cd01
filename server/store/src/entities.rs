//! sea-orm entities, one module per table. Ids are UUID text so that rows read the same in
//! SQLite and PostgreSQL and in an operator's `sqlite3` shell.

// Columns are named for what they hold; the macros generate many items without docs.
#![allow(missing_docs)]
/// A tenant: everything else belongs to exactly one.
pub mod tenant {
    use sea_orm::entity::prelude::*;

    /// A tenant row.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "tenants")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub name: String,
        pub created_at: DateTimeUtc,
        /// The webhook signing secret, sealed under the master key.
        pub webhook_secret: Option<String>,
        /// The most agents the tenant may have; `None`: unlimited.
        pub max_agents: Option<i64>,
        /// The most schedules; `None`: unlimited (enforced by the schedules work).
        pub max_schedules: Option<i64>,
        /// The most users; `None`: unlimited.
        pub max_users: Option<i64>,
        /// Days of finished history kept (CONTRACT.md §14); `None`: the server's `--retention-days`;
        /// 0: everything is kept.
        pub retention_days: Option<i64>,
        /// Password users must have a second factor (TOTP) to sign in (CONTRACT.md §18).
        pub require_totp: bool,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// API keys (`opk_…`) used by people and tools on the REST API.
pub mod api_key {
    use sea_orm::entity::prelude::*;

    /// An API key row; only the SHA-256 of the secret is kept.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "api_keys")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub tenant_id: String,
        pub name: String,
        #[sea_orm(unique)]
        pub key_hash: String,
        pub role: String,
        pub created_at: DateTimeUtc,
        pub expires_at: Option<DateTimeUtc>,
        /// Set when the key was revoked; a revoked key authenticates nothing.
        pub revoked_at: Option<DateTimeUtc>,
        /// The user the key belongs to (made through `/api/keys`); `None` for the keys the
        /// server makes, which act with `role`.
        pub owner_user_id: Option<String>,
        /// Scopes (`agents:read`, …, `*`); `None` means every scope.
        pub scopes: Option<crate::StringList>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Agent keys (`opa_…`) that agents connect with.
pub mod agent_key {
    use sea_orm::entity::prelude::*;

    /// An agent key row; only the SHA-256 of the secret is kept.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "agent_keys")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub tenant_id: String,
        pub name: String,
        #[sea_orm(unique)]
        pub key_hash: String,
        /// Command names.
        pub permissions: crate::StringList,
        /// Tags given to every agent connecting with this key.
        pub tags: crate::StringList,
        pub status: String,
        pub created_at: DateTimeUtc,
        pub expires_at: Option<DateTimeUtc>,
        pub last_used_at: Option<DateTimeUtc>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Agents as last seen: their `register` data, last heartbeat and server-side tags.
pub mod agent {
    use sea_orm::entity::prelude::*;

    /// An agent row, keyed by tenant and agent id.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "agents")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        /// The agent key its first registration was made with: the only key that may use this
        /// id until the agent is forgotten (CONTRACT.md §9, "Agent identity").
        pub key_id: String,
        pub hostname: String,
        pub ip: String,
        pub version: String,
        pub os: String,
        pub arch: String,
        pub protocol: i32,
        pub capabilities: crate::StringList,
        /// Tags the agent declares itself (`register`). Its key's tags are read from the key,
        /// never copied here: see `outpost_core::tags` for which a target trusts.
        pub agent_tags: crate::StringList,
        /// Tags set through the API.
        pub server_tags: crate::StringList,
        pub scripts: Json,
        pub first_seen: DateTimeUtc,
        pub last_seen: DateTimeUtc,
        pub connected_at: Option<DateTimeUtc>,
        pub disconnected_at: Option<DateTimeUtc>,
        pub last_heartbeat: Option<Json>,
        /// The supervisor's last update report, as the agent last sent it.
        pub update_status: Option<Json>,
        /// The node holding its connection, when several share PostgreSQL (`outpost_web::cluster`);
        /// NULL when it is not connected, and always on SQLite.
        pub node_id: Option<String>,
        /// How it is connected there (`websocket`, `http`), for the other nodes' views.
        pub transport: Option<String>,
        /// When its `agent.offline` was recorded; NULL while it is connected, or gone for
        /// less than the grace (`store::presence`).
        pub offline_reported_at: Option<DateTimeUtc>,
        /// Its manifest's `library` policy (CONTRACT.md §15) from its last `register`: which library
        /// scripts it runs, signed by which keys. NULL: it runs none.
        pub library: Option<Json>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Commands: stored before they are sent, updated as the agent acknowledges and answers.
pub mod command {
    use sea_orm::entity::prelude::*;

    /// A command row.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "commands")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub tenant_id: String,
        pub agent_id: String,
        pub command: String,
        pub data: Json,
        pub timeout_s: i32,
        pub state: String,
        pub created_at: DateTimeUtc,
        pub expires_at: DateTimeUtc,
        pub delivered_at: Option<DateTimeUtc>,
        pub finished_at: Option<DateTimeUtc>,
        pub success: Option<bool>,
        pub result: Option<Json>,
        pub error_code: Option<String>,
        pub error_message: Option<String>,
        /// The job this command is a run of, if any.
        pub job_id: Option<String>,
        pub started_at: Option<DateTimeUtc>,
        pub exit_code: Option<i32>,
        /// Output bytes stored (what `/output` returns), per stream.
        pub stdout_bytes: i64,
        pub stderr_bytes: i64,
        /// Output was over the cap and not all kept.
        pub output_truncated: bool,
        /// The values of the secret parameters (`data.secret_params`), sealed under the master
        /// key (`crate::secrets`); `data` holds them masked. Opened only to build the frame
        /// that carries the command to its agent.
        pub sealed_params: Option<String>,
        /// The key the agent was bound to when the run was made (a rerun goes only to an
        /// agent still bound to it). Null on runs from before it was kept.
        pub key_id: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Jobs: one trigger, one run (command) per targeted agent.
pub mod job {
    use sea_orm::entity::prelude::*;

    /// A job row.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "jobs")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub tenant_id: String,
        pub command: String,
        /// `data.script` of a `run` job, for filtering.
        pub script: Option<String>,
        pub data: Json,
        /// The target as asked for: `{agents?, tags?, all?}`.
        pub target: Json,
        pub timeout_s: i32,
        pub ttl_s: i32,
        /// `running` until every run is final, then `succeeded`, `failed` or `cancelled`.
        pub status: String,
        pub created_at: DateTimeUtc,
        pub finished_at: Option<DateTimeUtc>,
        pub idempotency_key: Option<String>,
        pub webhook_url: Option<String>,
        /// `pending`, `delivered` or `failed` once the job finished with a webhook.
        pub webhook_status: Option<String>,
        /// Keyed hash of the request that created the job (with an idempotency key), to tell
        /// a retry from another request reusing the key. Null on jobs from before it existed.
        pub request_fingerprint: Option<String>,
        /// The node delivering its webhook, and until when that claim holds.
        pub webhook_claimed_by: Option<String>,
        pub webhook_claimed_until: Option<DateTimeUtc>,
        /// The schedule whose fire created the job, and the fire's instant (unique together).
        pub schedule_id: Option<String>,
        pub scheduled_for: Option<DateTimeUtc>,
        /// The one job that stands for a schedule's missed fires (`missed: run_once`).
        pub catch_up: Option<bool>,
        /// What the server says about the job (a schedule's fire whose target matched no agent).
        pub note: Option<String>,
        /// `false` until every run has its digest (`run_digest`); null on jobs from before
        /// digests were kept.
        pub digested: Option<bool>,
        /// The job this one re-runs.
        pub rerun_of: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// A finished run's output reduced to its fingerprints (CONTRACT.md §16), one row per run of a
/// job, written once when the run ends.
pub mod run_digest {
    use sea_orm::entity::prelude::*;

    /// A digest row.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "run_digests")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub command_id: String,
        pub tenant_id: String,
        pub job_id: String,
        /// Runs with the same key ended the same way with the same output.
        pub group_key: String,
        /// The same with digits masked in the output.
        pub masked_key: String,
        pub stdout_sha: String,
        pub stderr_sha: String,
        pub masked_sha: String,
        pub first_line: Option<String>,
        pub last_line: Option<String>,
        pub duration_ms: Option<i64>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Script output, in the chunks the agent sent, each stored once.
pub mod output_chunk {
    use sea_orm::entity::prelude::*;

    /// An output chunk row; `id` orders chunks across both streams as they arrived.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "output_chunks")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub tenant_id: String,
        pub command_id: String,
        /// 0 stdout, 1 stderr.
        pub stream: i16,
        pub seq: i64,
        pub data: Vec<u8>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Every webhook delivery attempt, kept for operators.
pub mod webhook_attempt {
    use sea_orm::entity::prelude::*;

    /// An attempt row.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "webhook_attempts")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub tenant_id: String,
        pub job_id: String,
        pub url: String,
        pub attempt: i32,
        pub at: DateTimeUtc,
        pub status_code: Option<i32>,
        pub error: Option<String>,
        pub duration_ms: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Published agent and supervisor builds, one row per (version, target, artifact). Global, not
/// per tenant: they are builds of Outpost itself, published by the operator with
/// `outpost-server release publish`, and served to every tenant alike.
pub mod release {
    use sea_orm::entity::prelude::*;

    /// One signed artifact of a release.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "releases")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub version: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub target: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub name: String,
        /// The version's numbers, for ordering in SQL.
        pub major: i64,
        pub minor: i64,
        pub patch: i64,
        /// SHA-256 of the file, lowercase hex.
        pub sha256: String,
        pub size: i64,
        /// Ed25519 signature (base64) over `outpost_protocol::release::signed_message`.
        pub signature: String,
        /// The signing key's public half (base64).
        pub public_key: String,
        pub published_at: DateTimeUtc,
        /// Ed25519 signature (base64) over `outpost_protocol::release::signed_message_v2`,
        /// which also covers `size`; NULL for releases published before it existed.
        pub signature_v2: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Server processes sharing the database, each under a lease it renews (`outpost_web::cluster`).
pub mod node {
    use sea_orm::entity::prelude::*;

    /// A node row.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "nodes")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        /// `--node-name`, or the host name and port.
        pub name: String,
        /// The address it listens on.
        pub address: String,
        /// Its `outpost-server` version.
        pub version: String,
        pub started_at: DateTimeUtc,
        /// When it last renewed its lease.
        pub renewed_at: DateTimeUtc,
        /// Past this, it counts as gone and another node takes over its agents.
        pub lease_until: DateTimeUtc,
        /// Agents connected to it at its last renewal.
        pub agents: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Work that one node at a time must do, by name, held until a deadline.
pub mod claim {
    use sea_orm::entity::prelude::*;

    /// A claim row.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "claims")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub name: String,
        pub node_id: String,
        pub until: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// The audit log (CONTRACT.md §9): one tenant's rows, numbered from 1 and hash-chained
/// (`store::audit`). Never updated, never deleted (the triggers refuse both).
pub mod audit_entry {
    use sea_orm::entity::prelude::*;

    /// An audit row.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "audit_log")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: String,
        /// The row's number in its tenant's chain, from 1: its id.
        #[sea_orm(primary_key, auto_increment = false)]
        pub seq: i64,
        pub at: DateTimeUtc,
        pub actor_kind: String,
        pub actor_id: String,
        pub actor_label: String,
        pub address: Option<String>,
        pub action: String,
        pub target_type: String,
        pub target_id: String,
        /// A JSON object as text: the hash covers these exact bytes.
        pub detail: String,
        pub prev_hash: String,
        pub hash: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Each tenant's audit chain: its last row (locked by every append) and its base (where a
/// check starts: always the genesis, see `store::audit`).
pub mod audit_head {
    use sea_orm::entity::prelude::*;

    /// A tenant's chain.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "audit_heads")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: String,
        /// The last row's `seq` (0: none yet).
        pub seq: i64,
        /// The last row's hash.
        pub hash: String,
        /// The row before the first one checked: always 0 (a raised base is reported).
        pub base_seq: i64,
        /// The hash row 1 chains to: always the genesis hash.
        pub base_hash: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// People who sign in (CONTRACT.md §9): one tenant each, an email unique across tenants.
pub mod user {
    use sea_orm::entity::prelude::*;

    /// A user row; only the argon2id hash of the password is kept.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "users")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub tenant_id: String,
        /// As given when the user was created.
        pub email: String,
        /// The email in lowercase: what is unique and looked up.
        #[sea_orm(unique)]
        pub email_key: String,
        /// argon2id PHC string; `None` until an invite is accepted.
        pub password_hash: Option<String>,
        pub role: String,
        /// `active` or `disabled`.
        pub status: String,
        pub created_at: DateTimeUtc,
        pub updated_at: DateTimeUtc,
        pub last_login_at: Option<DateTimeUtc>,
        /// When the user proved the email is theirs (a mailed code, a mailed invite, an SSO
        /// sign-in with a verified email); `None`: not yet.
        pub email_verified_at: Option<DateTimeUtc>,
        /// When the password was last reset: access tokens issued before it are refused.
        pub password_changed_at: Option<DateTimeUtc>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Users' refresh tokens (`opr_…`), stored hashed, in families descending from one login.
pub mod refresh_token {
    use sea_orm::entity::prelude::*;

    /// A refresh token row.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "refresh_tokens")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub tenant_id: String,
        pub user_id: String,
        /// The login this token descends from.
        pub family_id: String,
        #[sea_orm(unique)]
        pub token_hash: String,
        pub created_at: DateTimeUtc,
        pub expires_at: DateTimeUtc,
        /// When it was exchanged for a new one.
        pub retired_at: Option<DateTimeUtc>,
        /// When its family was revoked (logout, reuse, the user disabled).
        pub revoked_at: Option<DateTimeUtc>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// One-time invites (`opi_…`) that let a new user set a password, stored hashed.
pub mod invite {
    use sea_orm::entity::prelude::*;

    /// An invite row.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "invites")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub tenant_id: String,
        pub user_id: String,
        #[sea_orm(unique)]
        pub token_hash: String,
        pub created_at: DateTimeUtc,
        pub expires_at: DateTimeUtc,
        /// When it was accepted; an invite is used once.
        pub used_at: Option<DateTimeUtc>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Schedules (CONTRACT.md §10): a command, a target and when.
pub mod schedule {
    use sea_orm::entity::prelude::*;

    /// A schedule row.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "schedules")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub tenant_id: String,
        pub name: String,
        pub cron: String,
        pub timezone: String,
        pub command: String,
        /// As shown: secret parameter values masked.
        pub data: Json,
        /// The secret parameter values, sealed (`crate::secrets`).
        pub sealed_params: Option<String>,
        pub target: Json,
        pub timeout_s: Option<i32>,
        pub ttl_s: Option<i32>,
        pub enabled: bool,
        /// `skip` or `run_once`.
        pub missed: String,
        /// `allow`, `forbid` or `replace`.
        pub concurrency: String,
        pub webhook_url: Option<String>,
        /// The role its fires act with: that of whoever made or last changed it.
        pub role: String,
        /// Who made it, as the audit log names them (`user:<id>`, `key:<id>`).
        pub created_by: String,
        pub created_at: DateTimeUtc,
        pub updated_at: DateTimeUtc,
        /// The next instant it fires; NULL when disabled or when it never fires again.
        pub next_fire_at: Option<DateTimeUtc>,
        pub last_fire_at: Option<DateTimeUtc>,
        pub last_job_id: Option<String>,
        /// The node firing it now, and until when that claim holds.
        pub claimed_by: Option<String>,
        pub claimed_until: Option<DateTimeUtc>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Events (CONTRACT.md §11): what happened, for people and integrations to hear of.
pub mod event {
    use sea_orm::entity::prelude::*;

    /// An event row; ids are UUIDv7, so they order events in time.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "events")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub tenant_id: String,
        /// `schedule.missed`, `schedule.skipped`, …
        #[sea_orm(column_name = "type")]
        pub kind: String,
        pub subject_type: String,
        pub subject_id: String,
        /// How people know the subject (a schedule's name).
        pub subject_name: String,
        /// One line for people.
        pub summary: String,
        pub at: DateTimeUtc,
        pub detail: Json,
        /// Stored once per key: the same event emitted again (a retried step) is dropped.
        pub dedup_key: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Integrations (CONTRACT.md §11): where a tenant's events are sent.
pub mod integration {
    use sea_orm::entity::prelude::*;

    /// An integration row.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "integrations")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub tenant_id: String,
        pub name: String,
        /// `webhook`, `slack`, …
        pub kind: String,
        /// As shown: secret fields masked.
        pub config: Json,
        /// The secret fields, sealed.
        pub sealed_config: Option<String>,
        /// Event types (or kinds) it is sent.
        pub events: crate::StringList,
        /// Narrows by agent tags, script, schedule.
        pub filter: Option<Json>,
        pub enabled: bool,
        /// A failure is sent only from this many in a row.
        pub notify_after: i32,
        pub created_by: String,
        pub created_at: DateTimeUtc,
        pub updated_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// One event to send to one integration (the outbox).
pub mod delivery {
    use sea_orm::entity::prelude::*;

    /// A delivery row.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "deliveries")]
    pub struct Model {
        /// Also the Standard Webhooks `webhook-id`.
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub tenant_id: String,
        pub integration_id: String,
        pub event_id: String,
        /// `pending`, `delivered`, `failed`.
        pub status: String,
        pub attempts: i32,
        pub next_attempt_at: DateTimeUtc,
        pub claimed_by: Option<String>,
        pub claimed_until: Option<DateTimeUtc>,
        pub created_at: DateTimeUtc,
        pub finished_at: Option<DateTimeUtc>,
        pub last_status: Option<i32>,
        pub last_error: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Every attempt at a delivery.
pub mod delivery_attempt {
    use sea_orm::entity::prelude::*;

    /// An attempt row.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "delivery_attempts")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub delivery_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub attempt: i32,
        pub tenant_id: String,
        pub at: DateTimeUtc,
        pub status_code: Option<i32>,
        pub duration_ms: i64,
        /// The provider's answer, truncated.
        pub response: Option<String>,
        pub error: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// The script library (CONTRACT.md §15): one row per uploaded version of a script.
pub mod library_script {
    use sea_orm::entity::prelude::*;

    /// A library script version; its bytes are in [`super::library_bundle`].
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "library_scripts")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub tenant_id: String,
        pub name: String,
        /// `MAJOR.MINOR.PATCH`, and its parts (for ordering).
        pub version: String,
        pub major: i64,
        pub minor: i64,
        pub patch: i64,
        /// The bundle's SHA-256 (lowercase hex): its identity and its download path.
        pub sha256: String,
        pub size: i64,
        /// The signer's Ed25519 public key and the signature, standard base64.
        pub signer_key: String,
        pub signature: String,
        /// `outpost-bundle.json` as parsed.
        pub manifest: Json,
        /// Its files: `[{path, size, executable}]`.
        pub files: Json,
        /// Who uploaded it, as the audit log names them (`user:<id>`, `key:<id>`).
        pub uploaded_by: String,
        pub created_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// A library script version's bytes (the `tar.gz` as uploaded), apart from its row so that
/// listings never read them.
pub mod library_bundle {
    use sea_orm::entity::prelude::*;

    /// The bytes of one version.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "library_bundles")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub script_id: String,
        pub tenant_id: String,
        pub data: Vec<u8>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// A script name's switch (CONTRACT.md §20): a disabled name's runs are refused, its versions
/// kept. A name without a row is enabled.
pub mod library_name {
    use sea_orm::entity::prelude::*;

    /// One name's switch.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "library_names")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub name: String,
        pub enabled: bool,
        /// Who switched it last, as the audit log names them.
        pub changed_by: String,
        pub changed_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// A draft (CONTRACT.md §20): an unsigned bundle edited in the dashboard, waiting for the
/// operator's signature. Its bytes are in [`super::library_draft_bundle`].
pub mod library_draft {
    use sea_orm::entity::prelude::*;

    /// One draft.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "library_drafts")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub tenant_id: String,
        pub name: String,
        /// The version it becomes once signed, and its parts.
        pub version: String,
        pub major: i64,
        pub minor: i64,
        pub patch: i64,
        /// SHA-256 of its current bytes (what a signature must cover).
        pub sha256: String,
        pub size: i64,
        /// `outpost-bundle.json` as parsed.
        pub manifest: Json,
        /// Its files: `[{path, size, executable}]`.
        pub files: Json,
        /// The signed version it was edited from, if any.
        pub base_version: Option<String>,
        /// Who saved it last, as the audit log names them.
        pub author: String,
        pub created_at: DateTimeUtc,
        pub updated_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// A draft's bytes (the `tar.gz` to sign), apart from its row.
pub mod library_draft_bundle {
    use sea_orm::entity::prelude::*;

    /// The bytes of one draft.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "library_draft_bundles")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub draft_id: String,
        pub tenant_id: String,
        pub data: Vec<u8>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// The last hour of agents' heartbeat metrics, one sample per agent and minute (migration 21).
pub mod agent_metric {
    use sea_orm::entity::prelude::*;

    /// One sample.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "agent_metrics")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub agent_id: String,
        /// The server's minute the heartbeat arrived in.
        #[sea_orm(primary_key, auto_increment = false)]
        pub minute: DateTimeUtc,
        /// Percent, 0–100.
        pub cpu: f64,
        pub memory: f64,
        pub disk: f64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Staged rollouts of an agent version (CONTRACT.md §17).
pub mod rollout {
    use sea_orm::entity::prelude::*;

    /// A rollout row.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "rollouts")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub tenant_id: String,
        /// The version agents go to.
        pub version: String,
        /// `{"tags": […]}` or `{"all": true}`, as asked.
        pub target: Json,
        /// The target in a canonical text (`all`, `tags:a,b`): the key of its desired version.
        pub target_key: String,
        pub canary: i32,
        /// Each wave's percentage of the non-canary agents.
        pub waves: Json,
        pub max_in_flight: i32,
        /// `{online_within_s, soak_s, min_healthy_percent, script?}`.
        pub health: Json,
        /// `RolloutState`.
        pub state: String,
        /// The stage being worked: 0 the canary, then each wave.
        pub stage: i32,
        /// Agents it took at its start.
        pub agents: i32,
        /// Why it halted (or was stopped), for people.
        pub reason: Option<String>,
        /// Who started it (`Caller::principal`).
        pub created_by: String,
        pub created_at: DateTimeUtc,
        pub updated_at: DateTimeUtc,
        pub finished_at: Option<DateTimeUtc>,
        /// The node working it, and until when (the claim rule's form 2).
        pub claimed_by: Option<String>,
        pub claimed_until: Option<DateTimeUtc>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// One agent of a rollout.
pub mod rollout_agent {
    use sea_orm::entity::prelude::*;

    /// A rollout agent row.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "rollout_agents")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub rollout_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub agent_id: String,
        pub tenant_id: String,
        /// Its place in the rollout's random order.
        pub seq: i32,
        /// Its stage: 0 the canary, then each wave.
        pub stage: i32,
        /// `RolloutAgentState`.
        pub state: String,
        /// The version it ran when the rollout took it (what a rollback sends it back to).
        pub from_version: String,
        /// When the `update` went out (rolling back: the way back).
        pub sent_at: Option<DateTimeUtc>,
        /// When it came back at the version: its soak's start.
        pub soak_from: Option<DateTimeUtc>,
        /// The last `update` command sent to it.
        pub command_id: Option<String>,
        /// Its health script's run.
        pub check_id: Option<String>,
        /// Why it failed or was skipped.
        pub reason: Option<String>,
        pub updated_at: DateTimeUtc,
        /// While its rollout is active: an agent is held by one rollout at a time (a partial
        /// unique index).
        pub held: bool,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// The version a target's agents converge to: what its last completed rollout reached.
pub mod desired_version {
    use sea_orm::entity::prelude::*;

    /// A desired version row.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "desired_versions")]
    pub struct Model {
        /// `TENANT/TARGET_KEY`.
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub tenant_id: String,
        pub target_key: String,
        pub target: Json,
        pub version: String,
        /// The rollout that set it.
        pub rollout_id: String,
        pub max_in_flight: i32,
        pub set_at: DateTimeUtc,
        pub claimed_by: Option<String>,
        pub claimed_until: Option<DateTimeUtc>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// A tenant's fleet policy: the oldest agent version it accepts.
pub mod fleet_policy {
    use sea_orm::entity::prelude::*;

    /// A fleet policy row.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "fleet_policies")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: String,
        pub min_agent_version: Option<String>,
        pub updated_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Mail to people (CONTRACT.md §18: codes, reset links, invites), sent by a worker with retries.
pub mod mail_outbox {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "mail_outbox")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        /// The tenant of the user it is for (`None` for none: a reset asked for no one is never written).
        pub tenant_id: Option<String>,
        /// `verify`, `reset` or `invite`.
        pub kind: String,
        pub recipient: String,
        pub subject: String,
        /// The text and HTML parts, sealed (they carry a code or a link); `None` once sent.
        pub body: Option<String>,
        pub created_at: DateTimeUtc,
        /// When the next attempt is due.
        pub next_at: DateTimeUtc,
        pub attempts: i32,
        /// What the relay (or the connection) said at the last failed attempt.
        pub last_error: Option<String>,
        pub sent_at: Option<DateTimeUtc>,
        /// When it was given up (a 5xx, or too many attempts).
        pub failed_at: Option<DateTimeUtc>,
        pub claimed_by: Option<String>,
        pub claimed_until: Option<DateTimeUtc>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// A user's pending email verification code (6 digits, stored hashed).
pub mod email_code {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "email_codes")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub user_id: String,
        pub tenant_id: String,
        pub code_hash: String,
        /// Wrong codes entered so far (the code is void after 5).
        pub tries: i32,
        pub created_at: DateTimeUtc,
        pub expires_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// A mailed password reset link's token, stored hashed; used once.
pub mod password_reset {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "password_resets")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub token_hash: String,
        pub user_id: String,
        pub tenant_id: String,
        pub created_at: DateTimeUtc,
        pub expires_at: DateTimeUtc,
        pub used_at: Option<DateTimeUtc>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// A user's TOTP second factor (RFC 6238), its secret sealed.
pub mod totp_factor {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "totp_factors")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub user_id: String,
        pub tenant_id: String,
        /// The shared secret, sealed under the master key.
        pub secret: String,
        /// When a first code confirmed it; until then it is not asked for at sign-in.
        pub confirmed_at: Option<DateTimeUtc>,
        /// The last time step whose code was accepted: a code is used once.
        pub last_step: Option<i64>,
        pub created_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Single-use recovery codes for a user's second factor, stored hashed.
pub mod recovery_code {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "recovery_codes")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub user_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub code_hash: String,
        pub used_at: Option<DateTimeUtc>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// A sign-in between its password step and its second factor, stored hashed.
pub mod login_ticket {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "login_tickets")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub ticket_hash: String,
        pub user_id: String,
        pub tenant_id: String,
        /// Wrong codes so far (the ticket is void after 5).
        pub tries: i32,
        pub created_at: DateTimeUtc,
        pub expires_at: DateTimeUtc,
        pub used_at: Option<DateTimeUtc>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// An identity at an OpenID Connect provider, linked to one user: `(issuer, subject)`, never the email.
pub mod oidc_identity {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "oidc_identities")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub issuer: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub subject: String,
        pub user_id: String,
        pub tenant_id: String,
        /// The email the provider said at the last sign-in.
        pub email: String,
        pub created_at: DateTimeUtc,
        pub last_login_at: Option<DateTimeUtc>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// An OpenID Connect sign-in between the redirect to the provider and its callback.
pub mod oidc_login {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "oidc_logins")]
    pub struct Model {
        /// SHA-256 of the `state` parameter.
        #[sea_orm(primary_key, auto_increment = false)]
        pub state_hash: String,
        pub nonce: String,
        /// The PKCE code verifier, sealed.
        pub verifier: String,
        /// A signed-in user linking this identity to their account.
        pub link_user_id: Option<String>,
        /// Where a CLI waits on loopback for the result (`outpost login --sso`).
        pub cli_redirect: Option<String>,
        /// The hash of the one-time code the CLI exchanges for a session.
        #[sea_orm(unique)]
        pub handoff_hash: Option<String>,
        pub handoff_user_id: Option<String>,
        pub created_at: DateTimeUtc,
        pub expires_at: DateTimeUtc,
        pub used_at: Option<DateTimeUtc>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// The server's CA and its own TLS key (CONTRACT.md §19): `name` is `agent_ca` or `server_tls`.
pub mod pki_key {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "pki_keys")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub name: String,
        /// PEM.
        pub certificate: String,
        /// The PKCS#8 private key, sealed under the master key.
        pub private_key: String,
        pub created_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Every certificate issued to an agent (CONTRACT.md §19), keyed by the SHA-256 of its DER.
pub mod agent_cert {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "agent_certs")]
    pub struct Model {
        /// Lowercase hex SHA-256 of the certificate's DER.
        #[sea_orm(primary_key, auto_increment = false)]
        pub fingerprint: String,
        pub tenant_id: String,
        pub agent_id: String,
        /// The enrollment (agent) key it was issued under: its tags and permissions apply.
        pub key_id: String,
        /// Lowercase hex SHA-256 of the certified SubjectPublicKeyInfo.
        pub public_key: String,
        /// Hex serial number.
        pub serial: String,
        /// PEM, returned again to an enrollment repeated with the same key.
        pub certificate: String,
        pub issued_at: DateTimeUtc,
        pub expires_at: DateTimeUtc,
        pub revoked_at: Option<DateTimeUtc>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Agents deleted after they enrolled: they may not enroll again until an admin clears them.
pub mod revoked_agent {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "revoked_agents")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub agent_id: String,
        pub revoked_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
