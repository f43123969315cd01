//! `outpost-web`: the server's HTTP. Everything here parses a request, calls one service of
//! `outpost-core` and renders its answer; the rules live below (docs/ARCHITECTURE.md, "Crates").
//!
//! - [`api`]: the REST API for people and tools, one module per resource, its OpenAPI document
//!   and the permission of every route ([`api::permissions::ROUTES`]); [`api::AppState`] is
//!   what its handlers and the dashboard's get: the services, nothing else;
//! - [`ui`]: the dashboard, pages over the same services;
//! - [`hub`]: agents' connections (WebSocket and long-poll) and the in-process bus;
//! - [`cluster`]: the bus across nodes sharing one PostgreSQL;
//! - [`listen`]: the accept loop, its timeouts and caps;
//! - [`http_error`]: a `DomainError` to its status and JSON envelope, the one mapping.

pub mod api;
pub mod cluster;
pub mod http_error;
pub mod hub;
pub mod listen;
pub mod ui;
