//! The service layer: every domain operation, whoever asks for it.
//!
//! A service takes the [`Caller`](outpost_store::domain::Caller) and plain arguments, checks what the
//! caller may do ([`access`], once), and returns domain values or a
//! [`DomainError`](outpost_store::domain::DomainError). It never sees HTTP: the REST handlers parse a
//! request, call one method here and serialise its answer, and so will the schedules, the
//! dashboard and the integrations of later work, without copying any of it.
//!
//! What a service may touch: the store (rows), the [`Bus`] (agents wherever they are
//! connected, and waiters), the [`Finish`] path (commands that end here: a cancel, an expiry),
//! and the master key. Commands are committed before they are handed to the bus, and nothing
//! finishes except through [`Finish`].

pub mod access;
pub mod account_mail;
pub mod agents;
pub mod api_keys;
pub mod audit;
pub mod commands;
pub mod digests;
pub mod drafts;
pub mod events;
pub mod housekeeping;
pub mod integrations;
pub mod jobs;
pub mod keys;
pub mod limits;
pub mod releases;
pub mod retention;
pub mod rollouts;
pub mod schedules;
pub mod scripts;
pub mod sso;
mod ssrf;
pub mod tenants;
pub mod totp;
pub mod users;
pub mod webhooks;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::bus::Bus;
use crate::finish::Finish;
use crate::jwt::Signer;
use crate::passwords::Passwords;
use outpost_store::Store;
use outpost_store::domain::DomainError;
use outpost_store::seal::MasterKey;
use outpost_store::writer::Writer;

/// The node name of a server that is the only one (SQLite): the name its claims are held
/// under, the same in every process of it, so that a restart can let go of a killed one's.
pub const LOCAL_NODE: &str = "local";

/// The HKDF label of the access-token signing key: fixed, so every node derives the same key
/// from the same master key.
pub const ACCESS_TOKEN_KEY_LABEL: &[u8] = b"outpost access tokens v1";

/// The handles every service shares.
pub struct Core {
    /// Reads, and writes that are not agents' reports.
    store: Store,
    /// The batched writer (its health decides whether new work is accepted).
    writer: Writer,
    /// Agents and waiters, wherever they are.
    bus: Arc<dyn Bus>,
    /// Where finished commands are announced.
    finish: Finish,
    /// Seals secrets at rest and keys request fingerprints.
    master: Arc<MasterKey>,
    /// Signs and checks users' access tokens, with a key derived from the master key.
    signer: Arc<Signer>,
    /// Hashes and verifies passwords off the async threads, a few at a time.
    passwords: Passwords,
    /// Cancelled when the server shuts down.
    shutdown: CancellationToken,
    /// The name this node claims work under (`outpost_web::cluster`; `local` on SQLite, where it is
    /// the only one).
    node: String,
    /// The longest an API key may live (`--max-key-days`).
    max_key_days: u32,
    /// The bundle bytes one tenant's script library may hold (`--library-max-bytes`).
    library_max_bytes: u64,
    /// The relay and the public URL for mail to people (`--smtp-url`, `--public-url`), when
    /// the server sends mail.
    mail: Option<Arc<account_mail::MailSettings>>,
    /// `--require-verified-email`.
    require_verified_email: bool,
    /// The audit chains' heads this process last moved: a guess that lets a command and its
    /// audit row be stored in fewer statements (`Store::insert_command_audited`).
    audit_heads: outpost_store::AuditHeads,
    /// The API keys and users authentication read last, kept for a second while no
    /// credential changes (`outpost_store::credential_cache`).
    kept: outpost_store::credential_cache::KeptCredentials,
}

impl Core {
    /// The same handles, claiming work as node `id`.
    #[must_use]
    pub fn on_node(mut self, id: &str) -> Self {
        self.node = id.to_owned();
        self
    }

    /// The shared handles.
    pub fn new(
        store: Store,
        writer: Writer,
        bus: Arc<dyn Bus>,
        finish: Finish,
        master: Arc<MasterKey>,
        shutdown: CancellationToken,
    ) -> Self {
        let signer = Arc::new(Signer::new(&master.derive(ACCESS_TOKEN_KEY_LABEL)));
        Self {
            store,
            writer,
            bus,
            finish,
            master,
            signer,
            passwords: Passwords::new(),
            shutdown,
            node: LOCAL_NODE.to_owned(),
            max_key_days: api_keys::DEFAULT_MAX_KEY_DAYS,
            library_max_bytes: scripts::DEFAULT_LIBRARY_MAX_BYTES,
            mail: None,
            require_verified_email: false,
            audit_heads: outpost_store::AuditHeads::default(),
            kept: Default::default(),
        }
    }

    /// The same core sending mail to people through `settings` (CONTRACT.md §18).
    #[must_use]
    pub fn with_mail(mut self, settings: account_mail::MailSettings) -> Self {
        self.mail = Some(Arc::new(settings));
        self
    }

    /// The same core refusing users whose email is not verified on every route but those
    /// that verify it (`--require-verified-email`).
    #[must_use]
    pub fn with_require_verified_email(mut self, required: bool) -> Self {
        self.require_verified_email = required;
        self
    }

    /// The same core keeping the API keys and users it authenticates with for at most
    /// `fresh` (`--credential-cache-ms`; zero reads them on every request).
    #[must_use]
    pub fn with_credential_cache(mut self, fresh: std::time::Duration) -> Self {
        self.kept = outpost_store::credential_cache::KeptCredentials::new(fresh);
        self
    }

    /// The same core with API keys capped at `days` (`--max-key-days`).
    #[must_use]
    pub fn with_max_key_days(mut self, days: u32) -> Self {
        self.max_key_days = days;
        self
    }

    /// The same core with each tenant's script library holding at most `bytes`
    /// (`--library-max-bytes`).
    #[must_use]
    pub fn with_library_max_bytes(mut self, bytes: u64) -> Self {
        self.library_max_bytes = bytes;
        self
    }

    /// Refuses new work with `Unavailable` while the database's writes fail (a full disk),
    /// before anything is stored: a small insert may still fit where the writer's batches do
    /// not, and would add work that cannot be answered. The writer keeps trying its batch and
    /// clears this when it commits (see `store::writer::Health`).
    fn writable(&self) -> Result<(), DomainError> {
        self.writer.health().status().map_err(|why| {
            DomainError::Unavailable(format!(
                "the database cannot be written right now ({why}); nothing was stored, try again later"
            ))
        })
    }

    /// Where writes beside the writer's batches go (a single command, retention's steps): on
    /// SQLite the writer's own connection, on PostgreSQL the pool. SQLite empties every other
    /// connection's page cache when one commits, and a write on another connection waits for
    /// the writer's lock in SQLite's busy handler (which oversleeps its release); through the
    /// one connection each write finds the other's pages and is handed the connection as soon
    /// as it is free (`Store::open_writer`). On PostgreSQL a connection keeps no pages, and
    /// these writes would only queue behind the writer's batches.
    fn beside_writer(&self) -> &Store {
        if self.store.is_postgres() {
            &self.store
        } else {
            self.writer.store()
        }
    }
}

/// Every service, as the REST API (and later schedules, the dashboard, integrations) use them.
/// Cheap to clone.
#[derive(Clone)]
pub struct Services {
    /// Authentication of bearer tokens, and what a role may do.
    pub access: access::Access,
    /// The fleet: agents, their tags, whether they are connected.
    pub agents: agents::Agents,
    /// Programs' API keys: scoped, expiring, each a user's.
    pub api_keys: api_keys::ApiKeys,
    /// The audit log: recording (`Audit::record`), listing, checking the chain.
    pub audit: audit::Audit,
    /// Commands to one agent, or to every agent of a key.
    pub commands: commands::Commands,
    /// Jobs: one command on many agents, its runs, output and events.
    pub jobs: jobs::Jobs,
    /// The digester: each finished run's output fingerprints, for fleet results.
    pub digests: digests::Digests,
    /// Agent keys.
    pub keys: keys::Keys,
    /// Users, their sign-in and sessions.
    pub users: users::Users,
    /// Tenants, their quotas, and signup.
    pub tenants: tenants::Tenants,
    /// The TOTP second factor, its recovery codes, and the second step of a sign-in.
    pub totp: totp::Totp,
    /// Signed agent and supervisor builds.
    pub releases: releases::Releases,
    /// Staged rollouts of agent versions, their engine, and the fleet policy.
    pub rollouts: rollouts::Rollouts,
    /// Schedules, their loop, and the events they emit.
    pub schedules: schedules::Schedules,
    /// The script library: uploads, listings, agents' downloads.
    pub scripts: scripts::Scripts,
    /// Integrations and the worker sending events to them.
    pub integrations: integrations::Integrations,
    /// Events: listing, and following them live.
    pub events: events::Events,
    /// Job webhooks: signing secrets and delivery.
    pub webhooks: webhooks::Webhooks,
    /// Liveness and readiness.
    pub health: housekeeping::Health,
    /// History retention: the cleaner.
    pub retention: retention::Retention,
    /// Mail to people: verification codes, password resets, mailed invites, and the worker
    /// that sends them.
    pub account_mail: account_mail::AccountMail,
    /// Rate limits and the client's address behind trusted proxies. The sign-in routes call
    /// [`limits::Limits::auth_attempt`] first thing.
    pub limits: limits::Limits,
    /// Sign-in through an OpenID Connect provider (off without `--oidc-issuer`).
    pub sso: sso::Sso,
}

impl Services {
    /// The same services with signup (`POST /api/auth/register`) on or off.
    #[must_use]
    pub fn with_signup(mut self, allow: bool) -> Self {
        self.tenants = self.tenants.with_signup(allow);
        self
    }

    /// The same services with an OpenID Connect provider (`--oidc-*`); `signup` as
    /// `--allow-signup` (a first SSO sign-in outside the mapped domains gets a tenant).
    #[must_use]
    pub fn with_sso(mut self, config: Option<sso::SsoConfig>, signup: bool) -> Self {
        self.sso = self.sso.with_config(config, signup);
        self
    }

    /// The services over `core`.
    pub fn new(
        core: Core,
        releases: releases::Files,
        webhooks: webhooks::Delivery,
        outbox: integrations::Outbox,
        limits: limits::Limits,
    ) -> Self {
        let core = Arc::new(core);
        let account_mail = account_mail::AccountMail::new(
            core.clone(),
            limits.clone(),
            audit::Audit::new(core.clone()),
        );
        let users = users::Users::new(
            core.clone(),
            limits.clone(),
            audit::Audit::new(core.clone()),
            account_mail.clone(),
        );
        let releases = releases::Releases::new(core.clone(), releases);
        Self {
            rollouts: rollouts::Rollouts::new(
                core.clone(),
                jobs::Jobs::new(core.clone()),
                releases.clone(),
            ),
            access: access::Access::new(core.clone(), limits.clone()),
            agents: agents::Agents::new(core.clone()),
            api_keys: api_keys::ApiKeys::new(core.clone()),
            audit: audit::Audit::new(core.clone()),
            tenants: tenants::Tenants::new(core.clone(), limits.clone(), users.clone()),
            totp: totp::Totp::new(core.clone(), limits.clone(), users.clone()),
            sso: sso::Sso::new(
                core.clone(),
                limits.clone(),
                audit::Audit::new(core.clone()),
                users.clone(),
            ),
            users,
            commands: commands::Commands::new(core.clone()),
            schedules: schedules::Schedules::new(core.clone(), jobs::Jobs::new(core.clone())),
            events: events::Events::new(core.clone()),
            scripts: scripts::Scripts::new(core.clone()),
            jobs: jobs::Jobs::new(core.clone()),
            digests: digests::Digests::new(core.clone()),
            keys: keys::Keys::new(core.clone()),
            releases,
            webhooks: webhooks::Webhooks::new(core.clone(), Arc::new(webhooks)),
            integrations: integrations::Integrations::new(core.clone(), Arc::new(outbox)),
            retention: retention::Retention::new(core.clone()),
            health: housekeeping::Health::new(core),
            account_mail,
            limits,
        }
    }
}
