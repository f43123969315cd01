//! The REST API: routes, request/response types and the OpenAPI document.
//!
//! One module per resource. Handlers authenticate the [`Caller`], take their input through
//! [`ApiJson`], [`Query`] and [`Path`] (whose rejections are the JSON error envelope naming the
//! field, where axum's own are `text/plain`; unknown routes and methods get the envelope too),
//! call one method of [`outpost_core::service`] and map what it returns to the views defined next to
//! them. They hold no store and no hub: [`AppState`] has only the services, so a rule (a
//! permission, a state change) cannot be written here by accident.

mod agents;
mod api_keys;
mod audit;
mod commands;
mod deploy;
pub mod doc;
mod drafts;
mod events;
mod health;
mod integrations;
mod jobs;
mod keys;
pub mod metrics;
mod nodes;
pub mod permissions;
mod releases;
pub(crate) mod results;
mod rollouts;
mod schedules;
mod scripts;
mod signin;
pub(crate) mod sso;
mod tenants;
pub mod totp;
mod users;
mod webhooks;

use crate::http_error::HttpError;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::Router;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::HeaderName;
use axum::http::request::Parts;
use axum::routing::{get, post};
use serde::de::DeserializeOwned;
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa_swagger_ui::SwaggerUi;

use crate::http_error::json_rejection;
use doc::Contract;
use outpost_store::domain::{Caller, DomainError};

/// The OpenAPI document, generated from the handlers' annotations.
#[derive(OpenApi)]
#[openapi(
    info(title = "Outpost", description = "Self-hosted command bus for fleets of machines."),
    paths(
        health::healthz, health::readyz, deploy::script,
        keys::create, keys::list, keys::show, keys::update, keys::delete, keys::regenerate,
        keys::ping, keys::command,
        agents::connected, agents::list, agents::show, agents::update, agents::delete,
        agents::unrevoke, agents::command,
        commands::show,
        jobs::create, jobs::list, jobs::show, jobs::cancel, jobs::output, jobs::events,
        jobs::webhook, results::summary, results::runs, results::export, results::rerun,
        webhooks::signing_secret, webhooks::rotate,
        releases::latest, releases::show, releases::download, releases::package, nodes::list,
        audit::list, audit::verify,
        users::login, users::refresh, users::logout, users::me, users::accept_invite,
        users::list, users::create, users::show, users::update, users::delete,
        signin::request_reset, signin::confirm_reset, signin::verify, signin::resend,
        signin::list_mail,
        totp::login, totp::login_setup, totp::login_confirm, totp::setup, totp::confirm, totp::remove, totp::reset,
        api_keys::create, api_keys::list, api_keys::delete,
        tenants::register, tenants::list, tenants::show, tenants::update,
        schedules::create, schedules::list, schedules::preview, schedules::show,
        schedules::update, schedules::delete, schedules::run, events::list, events::stream,
        integrations::create, integrations::list, integrations::show, integrations::update,
        integrations::delete, integrations::test, integrations::deliveries,
        scripts::upload, scripts::list, scripts::show, scripts::delete, scripts::download,
        drafts::switch, drafts::save, drafts::list, drafts::list_all, drafts::version_bundle,
        drafts::draft_bundle, drafts::sign, drafts::delete,
        rollouts::start, rollouts::list, rollouts::show, rollouts::agents, rollouts::pause,
        rollouts::resume, rollouts::abort, rollouts::rollback, rollouts::policy, rollouts::set_policy,
        sso::start, sso::callback, sso::exchange,
    ),
    components(
        schemas(
            outpost_store::domain::CommandState, outpost_store::domain::JobState, outpost_store::domain::Role,
            outpost_store::domain::KeyStatus, outpost_store::domain::Transport, outpost_store::domain::Command,
            outpost_store::domain::WebhookStatus, outpost_store::domain::ActorKind, outpost_store::domain::AuditAction,
            outpost_store::domain::AuditTarget, outpost_store::domain::UserStatus, outpost_store::domain::Scope,
            outpost_store::domain::MissedPolicy, outpost_store::domain::ConcurrencyPolicy,
            outpost_store::domain::RolloutState, outpost_store::domain::RolloutAgentState,
            crate::http_error::ErrorEnvelope,
            doc::AgentStatus, doc::OutputSelection, doc::Tag, doc::KeyName, doc::ReleaseVersion, doc::ScriptName, doc::Sha256Hex,
            doc::TargetTriple, doc::WebhookUrl, doc::Email, doc::IdempotencyKey, doc::JobIdPart,
            doc::Mask, doc::ExportFormat, doc::GroupKey, doc::IdText, doc::RunStatusFilter,
        ),
        responses(
            doc::BadRequest, doc::Unauthorized, doc::Forbidden, doc::TooManyRequests, doc::NotFound,
            doc::PayloadTooLarge,
            doc::Unavailable, doc::InternalError,
        ),
    ),
    modifiers(&BearerAuth, &Contract),
    tags(
        (name = "agent keys", description = "Keys agents connect with"),
        (name = "agents", description = "Agents and commands to them"),
        (name = "commands", description = "Stored commands and their results"),
        (name = "jobs", description = "Script runs and other commands on many agents"),
        (name = "webhooks", description = "Signing of job webhooks"),
        (name = "releases", description = "Signed agent and supervisor builds"),
        (name = "install", description = "The agent installer"),
        (name = "health", description = "Liveness and readiness"),
        (name = "nodes", description = "Server nodes sharing one PostgreSQL"),
        (name = "audit", description = "Who changed or triggered what: the tenant's hash-chained audit log"),
        (name = "auth", description = "Users' sign-in and sessions"),
        (name = "users", description = "The tenant's users"),
        (name = "API keys", description = "Programs' keys: scoped, expiring, each a user's"),
        (name = "tenants", description = "Tenants, their plan quotas and usage"),
        (name = "schedules", description = "Commands run at the times a cron pattern names, in a time zone"),
        (name = "events", description = "What happened that people should hear of"),
        (name = "integrations", description = "Where events are sent: webhooks, Slack, Teams, PagerDuty and others"),
        (name = "scripts", description = "The script library: signed bundles agents run where their manifests allow"),
        (name = "rollouts", description = "Staged rollouts of agent versions: canary, waves, a health gate; the fleet's minimum version"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An API key (opk_…)"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "jwt",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "A user's access token from POST /api/auth/login or /api/auth/refresh \
                         (HS256, 15 minutes); the user's current role applies",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "agent",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An agent key (opa_…): the agent routes"))
                    .build(),
            ),
        );
        // Wherever an API key is accepted, so is a user's access token: either one.
        let agent_only = vec![SecurityRequirement::new("agent", Vec::<String>::new())];
        for item in openapi.paths.paths.values_mut() {
            for operation in doc::operations(item) {
                if let Some(security) = operation.security.as_mut()
                    && !security.is_empty()
                    && *security != agent_only
                {
                    security.push(SecurityRequirement::new("jwt", Vec::<String>::new()));
                }
            }
        }
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// What the REST handlers get: the services, nothing else (no store, no hub).
#[derive(Clone)]
pub struct AppState {
    /// Every domain operation.
    pub services: outpost_core::service::Services,
}

/// Every REST route, each behind what [`permissions::ROUTES`] declares for it, the OpenAPI
/// document and its interactive viewer.
pub fn router(state: AppState) -> Router<AppState> {
    let api = Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/deploy.sh", get(deploy::script))
        .route("/api/agents/keys", post(keys::create).get(keys::list))
        .route(
            "/api/agents/keys/{id}",
            get(keys::show).patch(keys::update).delete(keys::delete),
        )
        .route("/api/agents/keys/{id}/regenerate", post(keys::regenerate))
        .route("/api/agents/keys/{id}/ping", post(keys::ping))
        .route("/api/agents/keys/{id}/command", post(keys::command))
        .route("/api/agents/connected", get(agents::connected))
        .route("/api/agents", get(agents::list))
        .route(
            "/api/agents/{id}",
            get(agents::show)
                .patch(agents::update)
                .delete(agents::delete),
        )
        .route("/api/agents/{id}/command", post(agents::command))
        .route("/api/agents/{id}/unrevoke", post(agents::unrevoke))
        .route("/api/commands/{id}", get(commands::show))
        .route("/api/jobs", post(jobs::create).get(jobs::list))
        .route("/api/jobs/{id}", get(jobs::show))
        .route("/api/jobs/{id}/cancel", post(jobs::cancel))
        .route("/api/jobs/{id}/events", get(jobs::events))
        .route("/api/jobs/{id}/webhook", get(jobs::webhook))
        .route("/api/jobs/{id}/summary", get(results::summary))
        .route("/api/jobs/{id}/runs", get(results::runs))
        .route("/api/jobs/{id}/export", get(results::export))
        .route("/api/jobs/{id}/rerun", post(results::rerun))
        .route(
            "/api/webhooks/signing-secret",
            get(webhooks::signing_secret),
        )
        .route(
            "/api/webhooks/signing-secret/rotate",
            post(webhooks::rotate),
        )
        .route("/api/jobs/{id}/runs/{run_id}/output", get(jobs::output))
        .route("/api/nodes", get(nodes::list))
        .route("/api/audit", get(audit::list))
        .route("/api/audit/verify", get(audit::verify))
        .route("/api/auth/login", post(users::login))
        .route("/api/auth/refresh", post(users::refresh))
        .route("/api/auth/logout", post(users::logout))
        .route("/api/auth/me", get(users::me))
        .route("/api/auth/accept-invite", post(users::accept_invite))
        .route("/api/auth/password-reset", post(signin::request_reset))
        .route(
            "/api/auth/password-reset/confirm",
            post(signin::confirm_reset),
        )
        .route("/api/auth/verify", post(signin::verify))
        .route("/api/auth/verify/resend", post(signin::resend))
        .route("/api/mail", get(signin::list_mail))
        .route("/api/auth/login/totp", post(totp::login))
        .route("/api/auth/login/totp/setup", post(totp::login_setup))
        .route("/api/auth/login/totp/confirm", post(totp::login_confirm))
        .route("/api/auth/totp", axum::routing::delete(totp::remove))
        .route("/api/auth/totp/setup", post(totp::setup))
        .route("/api/auth/totp/confirm", post(totp::confirm))
        .route("/api/users/{id}/totp", axum::routing::delete(totp::reset))
        .route("/api/users", get(users::list).post(users::create))
        .route(
            "/api/users/{id}",
            get(users::show).patch(users::update).delete(users::delete),
        )
        .route("/api/auth/register", post(tenants::register))
        .route("/api/auth/oidc/start", get(sso::start))
        .route("/api/auth/oidc/callback", get(sso::callback))
        .route("/api/auth/oidc/exchange", post(sso::exchange))
        .route("/api/tenants", get(tenants::list))
        .route(
            "/api/tenants/{id}",
            get(tenants::show).patch(tenants::update),
        )
        .route("/api/releases/latest", get(releases::latest))
        .route("/api/releases/{version}", get(releases::show))
        .route(
            "/downloads/{version}/{target}/{file}",
            get(releases::download),
        )
        .route("/downloads/packages/{file}", get(releases::package))
        .route("/api/keys", post(api_keys::create).get(api_keys::list))
        .route("/api/keys/{id}", axum::routing::delete(api_keys::delete))
        .route(
            "/api/schedules",
            post(schedules::create).get(schedules::list),
        )
        .route("/api/schedules/preview", get(schedules::preview))
        .route(
            "/api/schedules/{id}",
            get(schedules::show)
                .patch(schedules::update)
                .delete(schedules::delete),
        )
        .route("/api/schedules/{id}/run", post(schedules::run))
        .route("/api/rollouts", post(rollouts::start).get(rollouts::list))
        .route("/api/rollouts/{id}", get(rollouts::show))
        .route("/api/rollouts/{id}/agents", get(rollouts::agents))
        .route("/api/rollouts/{id}/pause", post(rollouts::pause))
        .route("/api/rollouts/{id}/resume", post(rollouts::resume))
        .route("/api/rollouts/{id}/abort", post(rollouts::abort))
        .route("/api/rollouts/{id}/rollback", post(rollouts::rollback))
        .route(
            "/api/fleet/policy",
            get(rollouts::policy).put(rollouts::set_policy),
        )
        .route("/api/events", get(events::list))
        .route("/api/events/stream", get(events::stream))
        .route(
            "/api/integrations",
            post(integrations::create).get(integrations::list),
        )
        .route(
            "/api/integrations/{id}",
            get(integrations::show)
                .patch(integrations::update)
                .delete(integrations::delete),
        )
        .route("/api/integrations/{id}/test", post(integrations::test))
        .route(
            "/api/integrations/{id}/deliveries",
            get(integrations::deliveries),
        )
        .route(
            "/api/scripts",
            get(scripts::list)
                .post(scripts::upload)
                .layer(axum::extract::DefaultBodyLimit::max(
                    (outpost_protocol::bundle::limits::MAX_BUNDLE_BYTES + scripts::UPLOAD_OVERHEAD)
                        as usize,
                )),
        )
        .route(
            "/api/scripts/{name}",
            get(scripts::show).patch(drafts::switch),
        )
        .route(
            "/api/scripts/{name}/versions/{version}",
            axum::routing::delete(scripts::delete),
        )
        .route(
            "/api/scripts/{name}/versions/{version}/bundle",
            get(drafts::version_bundle),
        )
        .route(
            "/api/scripts/{name}/drafts",
            get(drafts::list)
                .post(drafts::save)
                .layer(axum::extract::DefaultBodyLimit::max(drafts::MAX_DRAFT_BODY)),
        )
        .route("/api/script-drafts", get(drafts::list_all))
        .route(
            "/api/scripts/{name}/drafts/{version}",
            axum::routing::delete(drafts::delete),
        )
        .route(
            "/api/scripts/{name}/drafts/{version}/bundle",
            get(drafts::draft_bundle),
        )
        .route(
            "/api/scripts/{name}/drafts/{version}/signature",
            post(drafts::sign).layer(axum::extract::DefaultBodyLimit::max(
                drafts::MAX_SIGNATURE_BODY,
            )),
        )
        .route("/agent/v1/scripts/{sha256}", get(scripts::download))
        // After every route: applies to each of them, and to nothing else (not the fallback).
        .route_layer(axum::middleware::from_fn_with_state(
            state,
            permissions::authorize,
        ));
    // The viewer's assets are compiled into the binary, so /docs works with no network.
    api.merge(SwaggerUi::new("/docs").url("/openapi.json", ApiDoc::openapi()))
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
}

pub(crate) use sso::redirect_to_provider as sso_redirect;

/// A finished job as the API shows it, serialised: the body of its webhook (handed to the
/// webhook worker when the server is wired, so the service layer does not depend on views).
pub fn render_job(
    job: outpost_store::job::Model,
    runs: Vec<outpost_store::command::Model>,
) -> serde_json::Result<Vec<u8>> {
    serde_json::to_vec(&jobs::JobView::new(job, runs, true))
}

/// The caller behind a request's bearer token, as [`permissions::authorize`] authenticated
/// and authorised it for the route (counted against the per-caller rate limit, carrying the
/// client's address for the audit log). A handler of a route that the table does not declare
/// for a caller gets none: it fails closed.
#[derive(Debug, Clone)]
pub struct Authorized(pub Caller);

impl<S: Send + Sync> FromRequestParts<S> for Authorized {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, HttpError> {
        let caller = parts.extensions.remove::<Caller>().ok_or_else(|| {
            DomainError::Internal(anyhow::anyhow!(
                "{} {} takes a caller but api::permissions::ROUTES does not declare one",
                parts.method,
                parts.uri.path()
            ))
        })?;
        Ok(Self(caller))
    }
}

/// The client's address: the connection's peer, or, when the peer is one of the
/// `--trusted-proxy` blocks, the right-most `X-Forwarded-For` entry that is not a trusted
/// proxy (`outpost_core::forwarded`). What rate limits count by and the audit log records: the
/// one place that decides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

impl ClientAddr {
    fn of(parts: &Parts, state: &AppState) -> Self {
        // Set by the accept loop for every request; a router called without it (a test's
        // `oneshot`) counts all its requests as one unknown address.
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |info| info.0.ip());
        let mut forwarded = Vec::new();
        for value in parts.headers.get_all(X_FORWARDED_FOR) {
            match value.to_str() {
                Ok(text) => forwarded.push(text),
                // Not text: malformed, so the peer.
                Err(_) => return Self(peer.to_canonical()),
            }
        }
        Self(state.services.limits.client_address(peer, &forwarded))
    }
}

impl FromRequestParts<AppState> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, std::convert::Infallible> {
        Ok(Self::of(parts, state))
    }
}

/// axum's `Query`, whose rejection uses our error shape and names the parameter
/// (`query: limit: invalid digit found in string`) where axum's answers `text/plain`. It keeps
/// axum's name so that utoipa still documents its fields as query parameters.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, HttpError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Self(value)),
            Err(rejection) => Err(HttpError(DomainError::BadRequest(format!(
                "query: {}",
                without_prefix(
                    &rejection.body_text(),
                    "Failed to deserialize query string: "
                )
            )))),
        }
    }
}

/// axum's `Path`, whose rejection uses our error shape (same name, for utoipa too).
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, HttpError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Self(value)),
            Err(rejection) => Err(HttpError(DomainError::BadRequest(format!(
                "path: {}",
                rejection.body_text()
            )))),
        }
    }
}

fn without_prefix<'a>(text: &'a str, prefix: &str) -> &'a str {
    text.strip_prefix(prefix).unwrap_or(text)
}

/// 404 in our error shape for a path no route serves.
async fn no_route(uri: axum::http::Uri) -> HttpError {
    HttpError(DomainError::NotFound(format!("no route {}", uri.path())))
}

/// 405 in our error shape for a method a route does not serve.
async fn wrong_method(
    method: axum::http::Method,
    uri: axum::http::Uri,
) -> axum::response::Response {
    crate::http_error::envelope(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not served on {}", uri.path()),
    )
}

/// A JSON body whose rejection uses our error shape and names what was wrong.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = HttpError;

    async fn from_request(req: Request, state: &S) -> Result<Self, HttpError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(HttpError(json_rejection(rejection))),
        }
    }
}

/// Reads an optional count of seconds that JSON may spell `60` or `60.0`: JSON has one kind
/// of number, and the OpenAPI document's `integer` is any number without a fraction. A
/// fraction, a negative number or one past `u32` is refused, naming the value.
pub fn whole_seconds<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<u32>, D::Error> {
    use serde::Deserialize;
    use serde::de::{Error, Unexpected};
    let Some(number) = Option::<serde_json::Number>::deserialize(deserializer)? else {
        return Ok(None);
    };
    let expected = &"a whole number of seconds from 0 to 4294967295";
    if let Some(n) = number.as_u64() {
        return u32::try_from(n)
            .map(Some)
            .map_err(|_| D::Error::invalid_value(Unexpected::Unsigned(n), expected));
    }
    match number.as_f64() {
        Some(f) if f.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(&f) => {
            Ok(Some(f as u32))
        }
        Some(f) => Err(D::Error::invalid_value(Unexpected::Float(f), expected)),
        None => Err(D::Error::invalid_value(
            Unexpected::Other("a number"),
            expected,
        )),
    }
}

/// Reads an optional count in a query string as the OpenAPI document declares it: `int64`
/// with a minimum of 0. A number past `i64::MAX` is refused (400) rather than taken, so the
/// server never accepts what its own document calls invalid.
pub fn int64_count<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<u64>, D::Error> {
    use serde::Deserialize;
    use serde::de::{Error, Unexpected};
    match Option::<u64>::deserialize(deserializer)? {
        Some(n) if i64::try_from(n).is_err() => Err(D::Error::invalid_value(
            Unexpected::Unsigned(n),
            &"a whole number from 0 to 9223372036854775807",
        )),
        n => Ok(n),
    }
}

#[cfg(test)]
mod tests {
    #[derive(Debug, serde::Deserialize)]
    struct Seconds {
        #[serde(default, deserialize_with = "super::whole_seconds")]
        timeout_s: Option<u32>,
    }

    fn read(json: &str) -> Result<Option<u32>, String> {
        serde_json::from_str::<Seconds>(json)
            .map(|s| s.timeout_s)
            .map_err(|e| e.to_string())
    }

    #[derive(Debug, serde::Deserialize)]
    struct Count {
        #[serde(default, deserialize_with = "super::int64_count")]
        wait: Option<u64>,
    }

    #[test]
    fn query_counts_stay_within_int64() {
        let read = |query: &str| {
            let uri: axum::http::Uri = format!("/api/jobs?{query}").parse().expect("a URI");
            axum::extract::Query::<Count>::try_from_uri(&uri).map(|q| q.0.wait)
        };
        assert_eq!(read("").ok(), Some(None));
        assert_eq!(read("wait=5").ok(), Some(Some(5)));
        assert_eq!(
            read("wait=9223372036854775807").ok(),
            Some(Some(9_223_372_036_854_775_807))
        );
        for bad in ["9223372036854775808", "18446744073709551615", "-1", "x"] {
            assert!(read(&format!("wait={bad}")).is_err(), "{bad}");
        }
    }

    #[test]
    fn seconds_are_whole_numbers_however_json_spells_them() {
        assert_eq!(read("{}"), Ok(None));
        assert_eq!(read(r#"{"timeout_s": null}"#), Ok(None));
        assert_eq!(read(r#"{"timeout_s": 60}"#), Ok(Some(60)));
        assert_eq!(read(r#"{"timeout_s": 60.0}"#), Ok(Some(60)));
        assert_eq!(read(r#"{"timeout_s": 6e1}"#), Ok(Some(60)));
        assert_eq!(read(r#"{"timeout_s": 4294967295}"#), Ok(Some(u32::MAX)));
        for bad in ["60.5", "-1", "-1.0", "4294967296", "1e10", "\"60\"", "true"] {
            let err = read(&format!(r#"{{"timeout_s": {bad}}}"#)).expect_err(bad);
            assert!(
                err.contains("expected a whole number") || err.contains("invalid type"),
                "{bad}: {err}"
            );
        }
    }
}
