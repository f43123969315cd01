//! `outpost-core`: every domain operation of the server, and the seams between them. No HTTP:
//! `outpost-web` calls these services and never the store (docs/ARCHITECTURE.md, "Crates").
//!
//! - [`service`]: the services, one per subject (commands and jobs, agents and their keys,
//!   users and tenants, schedules and their fire loop, integrations and their outbox, the
//!   script library, audit, retention, rate limits); `Services` is what the HTTP layer holds;
//! - the seams the services and the hub share: [`bus`] (reach an agent wherever it is
//!   connected), [`finish`] (the one path by which commands end), [`frames`] (a stored command
//!   to its frame), [`tags`] (which of an agent's tags a target trusts);
//! - agent certificates: [`pki`] (the agents' CA, CSRs, the server's own certificate) and
//!   [`enroll`] (who gets a certificate for which agent);
//! - authentication: [`access`] (a bearer token to a caller or an agent key), [`jwt`] (users'
//!   access tokens), [`passwords`] (argon2id), [`forwarded`] (the client behind trusted
//!   proxies);
//! - pure leaves the services use: [`cron`] (schedules' fire times), [`digest`] (a run's
//!   output fingerprints, for fleet results), [`rollout`] (a staged rollout's wave logic and
//!   health gate), [`providers`]
//!   (integrations' payloads and the meaning of providers' answers), [`mail`] (the SMTP
//!   sender);
//! - releases: [`release`] (signed release files, `outpost-server release`) and [`builtin`]
//!   (the agent and supervisor shipped beside the server).

pub mod access;
pub mod builtin;
pub mod bus;
pub mod cron;
pub mod digest;
pub mod enroll;
pub mod finish;
pub mod forwarded;
pub mod frames;
pub mod idtoken;
pub mod jwt;
pub mod mail;
pub mod passwords;
pub mod pki;
pub mod providers;
pub mod release;
pub mod rollout;
pub mod service;
pub mod tags;
pub mod totp;
