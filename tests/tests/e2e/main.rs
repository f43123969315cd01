//! End-to-end tests over the real `outpost-server` and `outpost-agent` binaries.
//!
//! One test binary with a module per area: linking is the slow part of building tests, and
//! one binary links once.

mod access;
mod accounts;
mod audit;
mod backups;
mod certs;
mod cluster;
mod commands;
mod containment;
mod contention;
mod deploy;
mod disk;
mod durability;
mod events;
mod failover;
mod firstrun;
mod hardening;
mod identity;
mod integrations;
mod jobs;
mod keys;
mod library;
mod library_agent;
mod library_drafts;
mod library_run;
mod library_ui;
mod limits;
mod longpoll;
mod metrics;
mod pgfault;
mod protocol;
mod results;
mod rollouts;
mod schedules;
mod schedules_cli;
mod schedules_live;
mod secrets;
mod signin_mail;
mod sockets;
mod sso;
mod supervisor;
mod tenancy;
mod tenancy_quotas;
mod tls;
mod totp;
mod ui;
mod users;
mod webhooks;
