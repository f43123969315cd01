//! What the OpenAPI document says beyond the shapes of the Rust types, so that it is the exact
//! truth a generated client or a fuzzer can rely on (`scripts/schemathesis.sh` checks it
//! against a running server):
//!
//! - one reusable error response per status ([`BadRequest`], [`Unauthorized`], …), each the
//!   [`ErrorEnvelope`]; [`Contract`] adds the statuses every operation of a kind can answer
//!   (401 to every authenticated one, 400 to every one that takes a path, query or body, 413 to
//!   every one with a body, 429 to every authenticated `/api` one, 500 and 503 to all but
//!   `/healthz`), and the handlers' annotations
//!   the statuses of their own logic (403, 404, 409, 422, 504);
//! - the values the server enforces, declared from the domain model's enums
//!   (`outpost_store::domain`) and from the protocol's limits (`outpost_protocol::limits`,
//!   `outpost_protocol::check`), as schemas for documentation only ([`Tag`], [`KeyName`], …) that
//!   the request and view types point their fields at with `#[schema(value_type = …)]`;
//! - what a JSON Schema field cannot say by itself: which `data` each command takes, that a
//!   target names some agents ([`Contract`]);
//! - links from the operations that create things to those that read, change or delete them,
//!   for clients and for schemathesis's stateful phase.
//!
//! Nothing here is used by a handler: these types only describe.

use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::openapi::extensions::Extensions;
use utoipa::openapi::link::LinkBuilder;
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::schema::{ObjectBuilder, Schema, SchemaType, Type};
use utoipa::openapi::{RefOr, Response};
use utoipa::{PartialSchema, ToResponse, ToSchema};

use outpost_protocol::limits;

use crate::http_error::ErrorEnvelope;
use outpost_store::domain::Command;

/// The request is malformed: a path or query parameter, or the body (not JSON, no
/// `Content-Type: application/json`, a field missing, of the wrong type or out of range).
/// The message names what was wrong.
#[derive(ToResponse)]
pub struct BadRequest(#[allow(dead_code)] ErrorEnvelope);

/// No `Authorization: Bearer …` header, or neither a valid API key (unknown, expired or
/// revoked) nor a valid access token (expired, tampered, or its user disabled or deleted); for
/// the sign-in routes, wrong credentials.
#[derive(ToResponse)]
pub struct Unauthorized(#[allow(dead_code)] ErrorEnvelope);

/// The caller may not do this (`forbidden`): an API key without the route's scope, or a
/// role below the one it needs (`x-outpost-permission` says which); the message names what
/// is missing.
#[derive(ToResponse)]
pub struct Forbidden(#[allow(dead_code)] ErrorEnvelope);

/// Over a rate limit (`rate_limited`): this caller's requests a minute (`--rate-limit`), or
/// this client address's requests that failed authentication. The message names the limit;
/// `Retry-After` says in how many whole seconds a request is allowed again.
#[derive(ToResponse)]
#[response(headers(("Retry-After" = u64, description = "Whole seconds until a request is allowed again")))]
pub struct TooManyRequests(#[allow(dead_code)] ErrorEnvelope);

/// Nothing by that id in the caller's tenant.
#[derive(ToResponse)]
pub struct NotFound(#[allow(dead_code)] ErrorEnvelope);

/// The body is larger than the server takes (`too_large`).
#[derive(ToResponse)]
pub struct PayloadTooLarge(#[allow(dead_code)] ErrorEnvelope);

/// The database cannot be read or written right now (busy, a full disk, unreachable): nothing
/// was stored; try again later (`unavailable`).
#[derive(ToResponse)]
pub struct Unavailable(#[allow(dead_code)] ErrorEnvelope);

/// A bug or an infrastructure failure (`internal`); the server's log has the cause.
#[derive(ToResponse)]
pub struct InternalError(#[allow(dead_code)] ErrorEnvelope);

/// Whether an agent is connected to this server now.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AgentStatus {
    /// Connected.
    Online,
    /// Not connected.
    Offline,
}

/// Which output of a run to read.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OutputSelection {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
    /// Both, in the order they arrived.
    Both,
}

/// How a job's outputs are grouped.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mask {
    /// Outputs that differ only in digits are one group.
    Numbers,
}

/// The format of a job's export.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    /// Comma-separated values with a header line.
    Csv,
    /// One JSON object per line.
    Jsonl,
}

/// Characters no name or tag may hold: Unicode's control characters (C0, DEL, C1) and the
/// bidirectional formatting ones (`outpost_protocol::check::is_control`).
const CONTROL: &str = r"\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069";

/// What Rust's `char::is_control` refuses (C0, DEL, C1): a key's name may not hold it.
const CC: &str = r"\x00-\x1f\x7f-\x9f";

/// White space and `CC`: a key's name needs one character outside these.
const BLANK: &str = r"\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000";

fn string(description: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(SchemaType::new(Type::String))
        .description(Some(description))
}

macro_rules! doc_schema {
    ($(#[$meta:meta])* $name:ident => $schema:expr) => {
        $(#[$meta])*
        pub struct $name;

        impl PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                RefOr::T(Schema::Object($schema.build()))
            }
        }

        impl ToSchema for $name {}
    };
}

doc_schema! {
    /// A tag (`outpost_protocol::check::tag`).
    Tag => string(&format!(
        "A tag: 1 to {} bytes of UTF-8, no commas and no control characters.",
        limits::MAX_TAG_LEN
    ))
    .min_length(Some(1))
    .max_length(Some(limits::MAX_TAG_LEN))
    .pattern(Some(format!("^[^,{CONTROL}]+$")))
}

doc_schema! {
    /// An agent key's name (`api::keys::validate_name`).
    KeyName => string(
        "Name for people: 1 to 128 characters, not only white space, no control characters \
         (leading and trailing white space is trimmed).",
    )
    .min_length(Some(1))
    .max_length(Some(128))
    .pattern(Some(format!("^[^{CC}]*[^{BLANK}][^{CC}]*$")))
}

doc_schema! {
    /// A user's email (`service::users::check_email`).
    Email => string(
        "An email address: one `@` with something on each side, no white space or control \
         characters, at most 254 characters. Unique on the server, compared case-insensitively.",
    )
    .min_length(Some(3))
    .max_length(Some(254))
    .pattern(Some(format!("^[^@{BLANK}]+@[^@{BLANK}]+$")))
}

doc_schema! {
    /// A release version (`outpost_protocol::release::Version`).
    ReleaseVersion => string("`MAJOR.MINOR.PATCH`: numbers of 1 to 9 digits without leading zeros.")
        .pattern(Some(r"^(0|[1-9][0-9]{0,8})\.(0|[1-9][0-9]{0,8})\.(0|[1-9][0-9]{0,8})$"))
}

doc_schema! {
    /// A library script's name (`outpost_protocol::check::script_name`).
    ScriptName => string(&format!(
        "1 to {} of `A-Z a-z 0-9 . _ -`, starting with a letter or digit and not ending with a dot.",
        limits::MAX_SCRIPT_NAME_LEN
    ))
    .min_length(Some(1))
    .max_length(Some(limits::MAX_SCRIPT_NAME_LEN))
    .pattern(Some(format!(
        "^[A-Za-z0-9]([A-Za-z0-9._-]{{0,{}}}[A-Za-z0-9_-])?$",
        limits::MAX_SCRIPT_NAME_LEN - 2
    )))
}

doc_schema! {
    /// A SHA-256 as the library names bundles (`outpost_protocol::bundle::sha256_hex`).
    Sha256Hex => string("64 lowercase hex digits.")
        .pattern(Some("^[0-9a-f]{64}$"))
}

doc_schema! {
    /// A target triple (`outpost_protocol::release::valid_target`).
    TargetTriple => string("A Rust target triple, e.g. `x86_64-unknown-linux-gnu`: 1 to 64 of \
        `A-Z a-z 0-9 _ - .`, not starting with a dot.")
        .pattern(Some(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$"))
}

doc_schema! {
    /// `webhook_url` of a job.
    WebhookUrl => string("An `http://` or `https://` URL, notified when the job finishes.")
        .pattern(Some("^https?://"))
}

doc_schema! {
    /// `idempotency_key` of a job.
    IdempotencyKey => string("1 to 200 bytes.")
        .min_length(Some(1))
        .max_length(Some(200))
}

doc_schema! {
    /// An id (agents, runs, jobs are UUIDs), as a filter or a cursor takes it.
    IdText => string("A UUID, as the API gives ids.")
        .pattern(Some("^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"))
}

/// The `status` filter of a job's runs: a run state, or every finished one that did not
/// succeed.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunStatusFilter {
    /// Stored, not yet acknowledged.
    Pending,
    /// Acknowledged, no result yet.
    Delivered,
    /// A script run under way.
    Running,
    /// Finished successfully.
    Succeeded,
    /// Finished unsuccessfully.
    Failed,
    /// Killed at its timeout.
    TimedOut,
    /// Cancelled on request.
    Cancelled,
    /// Its TTL passed before delivery.
    Expired,
    /// Its agent never came back.
    Lost,
    /// Failed, timed out, cancelled, expired or lost.
    NotSucceeded,
}

doc_schema! {
    /// A group of a job's runs (`outpost_core::digest::group_key`).
    GroupKey => string("16 lowercase hex digits, as a job's summary lists them.")
        .pattern(Some("^[0-9a-f]{16}$"))
}

doc_schema! {
    /// A file's path in a draft's `files` (`outpost_core::service::drafts` checks the rest:
    /// relative, `/`-separated, no `..`).
    DraftPath => string("A relative path of 1 to 1024 bytes: `/`-separated, no empty, `.` or `..` part, no backslash or control character.")
        .min_length(Some(1))
        .max_length(Some(1024))
        .pattern(Some(r"^(?:[^/\\\x00-\x1f\x7f-\x9f.][^/\\\x00-\x1f\x7f-\x9f]*|\.[^/\\\x00-\x1f\x7f-\x9f.][^/\\\x00-\x1f\x7f-\x9f]*|\.\.[^/\\\x00-\x1f\x7f-\x9f]+)(?:/(?:[^/\\\x00-\x1f\x7f-\x9f.][^/\\\x00-\x1f\x7f-\x9f]*|\.[^/\\\x00-\x1f\x7f-\x9f.][^/\\\x00-\x1f\x7f-\x9f]*|\.\.[^/\\\x00-\x1f\x7f-\x9f]+))*$"))
}

doc_schema! {
    /// The `id` filter of `GET /api/jobs`.
    JobIdPart => string("The start or the end of a job id: 4 to 36 hex digits and dashes.")
        .pattern(Some("^[0-9A-Fa-f-]{4,36}$"))
}

/// The `data` of a command, by command: a `run`'s names a script its agent's manifest lists
/// and its parameters; an `update`'s, the version and whether to force a downgrade; the others
/// take any object. Only a `run` takes `secret_params`.
fn command_data() -> serde_json::Value {
    // Any key but `secret_params`.
    let without_secret_params = |mut data: serde_json::Value| {
        if let Some(object) = data.as_object_mut() {
            object.insert(
                "propertyNames".into(),
                json!({"not": {"const": "secret_params"}}),
            );
        }
        data
    };
    let run = json!({
        "type": "object",
        "description": "The script and its parameters.",
        "required": ["script"],
        "properties": {
            "script": {
                "type": "string",
                "description": "A script the agent's manifest lists.",
                "pattern": format!(
                    "^[A-Za-z0-9]([A-Za-z0-9._-]{{0,{}}}[A-Za-z0-9_-])?$",
                    limits::MAX_SCRIPT_NAME_LEN - 2
                ),
            },
            "params": {
                "type": ["object", "null"],
                "description": "Parameters by name, given to the script as environment variables.",
                "maxProperties": limits::MAX_SCRIPT_PARAMS,
                "propertyNames": {
                    "pattern": format!("^[A-Z0-9_]{{1,{}}}$", limits::MAX_PARAM_NAME),
                },
                "additionalProperties": {
                    "type": "string",
                    "description": format!("At most {} bytes, no NUL.", limits::MAX_PARAM_VALUE),
                    "maxLength": limits::MAX_PARAM_VALUE,
                    "pattern": "^[^\\x00]*$",
                },
            },
            "secret_params": {
                "type": ["array", "null"],
                "description": "Names of `params` to seal at rest and show as `********`.",
                "items": {"type": "string"},
            },
        },
    });
    let update = without_secret_params(json!({
        "type": ["object", "null"],
        "description": "The version to install (default: the latest) and whether to allow a downgrade (owners only).",
        "properties": {
            "version": {
                "oneOf": [{"type": "null"}, {"$ref": "#/components/schemas/ReleaseVersion"}],
            },
            "force": {"type": ["boolean", "null"]},
        },
    }));
    let other = without_secret_params(json!({"type": ["object", "null"]}));
    let others: Vec<&str> = Command::ALL
        .iter()
        .filter(|c| !matches!(c, Command::Run | Command::Update))
        .map(|c| c.as_str())
        .collect();
    json!([
        {
            "title": "run",
            "properties": {"command": {"const": Command::Run.as_str()}, "data": run},
            "required": ["data"],
        },
        {
            "title": "update",
            "properties": {"command": {"const": Command::Update.as_str()}, "data": update},
        },
        {
            "title": "other commands",
            "properties": {"command": {"enum": others}, "data": other},
        },
    ])
}

/// Adds the cross-cutting error responses, the conditions JSON Schema fields cannot carry
/// alone, and the links between operations.
pub struct Contract;

impl utoipa::Modify for Contract {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        for (schema, keyword, value) in [
            ("CreateJob", "oneOf", command_data()),
            ("CommandRequest", "oneOf", command_data()),
            (
                "Target",
                "anyOf",
                json!([
                    {"required": ["agents"], "properties": {"agents": {"type": "array", "minItems": 1}}},
                    {"required": ["tags"], "properties": {"tags": {"type": "array", "minItems": 1}}},
                    {"required": ["all"], "properties": {"all": {"const": true}}},
                ]),
            ),
        ] {
            if let Some(RefOr::T(Schema::Object(object))) = components.schemas.get_mut(schema) {
                object
                    .extensions
                    .get_or_insert_with(Extensions::default)
                    .insert(keyword.to_owned(), value);
            }
        }
        for (path, item) in openapi.paths.paths.iter_mut() {
            for (method, operation) in operations_by_method(item) {
                let permission = super::permissions::permission(&method, path);
                cross_cutting(path, permission, operation);
            }
        }
        links(openapi);
    }
}

pub(super) fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        item.get.as_mut(),
        item.put.as_mut(),
        item.post.as_mut(),
        item.delete.as_mut(),
        item.patch.as_mut(),
        item.head.as_mut(),
        item.options.as_mut(),
        item.trace.as_mut(),
    ]
    .into_iter()
    .flatten()
}

fn operations_by_method(
    item: &mut PathItem,
) -> impl Iterator<Item = (axum::http::Method, &mut Operation)> {
    use axum::http::Method;
    [
        (Method::GET, item.get.as_mut()),
        (Method::PUT, item.put.as_mut()),
        (Method::POST, item.post.as_mut()),
        (Method::DELETE, item.delete.as_mut()),
        (Method::PATCH, item.patch.as_mut()),
        (Method::HEAD, item.head.as_mut()),
        (Method::OPTIONS, item.options.as_mut()),
        (Method::TRACE, item.trace.as_mut()),
    ]
    .into_iter()
    .filter_map(|(method, operation)| Some((method, operation?)))
}

fn response_ref(name: &str) -> RefOr<Response> {
    RefOr::Ref(utoipa::openapi::Ref::from_response_name(name))
}

/// What every operation declares because of what it is: its inputs' 400, its caller's 401,
/// 403 and 429, and what the permission table (`api::permissions`) requires of the caller,
/// as the extension `x-outpost-permission` (`{"kind": "caller", "scope", "role"}`), so the
/// document says route by route what CONTRACT.md §9's roles and scopes mean.
fn cross_cutting(
    path: &str,
    permission: Option<super::permissions::Permission>,
    operation: &mut Operation,
) {
    if let Some(permission) = permission {
        operation
            .extensions
            .get_or_insert_with(Extensions::default)
            .insert(
                "x-outpost-permission".to_owned(),
                serde_json::to_value(permission).unwrap_or_default(),
            );
    }
    let limited = matches!(
        permission,
        Some(super::permissions::Permission::Caller { scope: Some(_), .. })
            | Some(super::permissions::Permission::Caller {
                role: outpost_store::domain::Role::Admin | outpost_store::domain::Role::Owner,
                ..
            })
            | Some(super::permissions::Permission::ServerOwner { .. })
    );
    let takes_input = operation.request_body.is_some()
        || operation.parameters.as_ref().is_some_and(|p| !p.is_empty());
    let authenticated = operation.security.as_ref().is_some_and(|s| !s.is_empty());
    let responses = &mut operation.responses.responses;
    let mut add = |status: &str, name: &str| {
        responses
            .entry(status.to_owned())
            .or_insert_with(|| response_ref(name));
    };
    if takes_input {
        add("400", "BadRequest");
    }
    if authenticated {
        add("401", "Unauthorized");
    }
    if limited {
        add("403", "Forbidden");
    }
    // Every authenticated /api operation is counted against its caller (`service::limits`).
    if authenticated && path.starts_with("/api/") {
        add("429", "TooManyRequests");
    }
    if operation.request_body.is_some() {
        add("413", "PayloadTooLarge");
    }
    // Everything but `/healthz` reads the database (authentication does, for one), which may
    // fail for a moment (503) or for good (500).
    if path != "/healthz" {
        add("500", "InternalError");
        add("503", "Unavailable");
    }
    // OpenAPI requires a description; an annotation without one gets the status's meaning.
    for (status, response) in responses.iter_mut() {
        if let RefOr::T(response) = response
            && response.description.is_empty()
        {
            response.description = match status.as_str() {
                "200" => "OK",
                "201" => "Created",
                "202" => "Accepted",
                "204" => "Done; no content",
                "403" => "Not allowed for this caller's role",
                _ => "",
            }
            .to_owned();
        }
    }
}

/// Links from operation `.0`'s responses `.1` to each of the operations `.2`, filling their
/// parameters from the response as `.3` says.
type Link<'a> = (
    &'a str,
    &'a [&'a str],
    &'a [&'a str],
    &'a [(&'a str, &'a str)],
);

/// Links from the operations that create (or find) things to those that use them.
fn links(openapi: &mut utoipa::openapi::OpenApi) {
    let key = [
        "showAgentKey",
        "updateAgentKey",
        "deleteAgentKey",
        "regenerateAgentKey",
        "pingAgentKey",
        "commandAgentKey",
    ];
    let job = ["showJob", "cancelJob", "jobEvents", "jobWebhook"];
    let agent = ["showAgent", "updateAgent", "deleteAgent", "commandAgent"];
    let plan: &[Link] = &[
        (
            "createAgentKey",
            &["201"],
            &key,
            &[("id", "$response.body#/id")],
        ),
        (
            "regenerateAgentKey",
            &["200"],
            &key,
            &[("id", "$response.body#/id")],
        ),
        (
            "showAgentKey",
            &["200"],
            &key,
            &[("id", "$response.body#/id")],
        ),
        (
            "updateAgentKey",
            &["200"],
            &key,
            &[("id", "$response.body#/id")],
        ),
        (
            "createJob",
            &["200", "202"],
            &job,
            &[("id", "$response.body#/job_id")],
        ),
        (
            "cancelJob",
            &["200", "202"],
            &job,
            &[("id", "$response.body#/job_id")],
        ),
        (
            "showJob",
            &["200"],
            &job,
            &[("id", "$response.body#/job_id")],
        ),
        (
            "createJob",
            &["200", "202"],
            &["jobRunOutput"],
            &[
                ("id", "$response.body#/job_id"),
                ("run_id", "$response.body#/runs/0/run_id"),
            ],
        ),
        (
            "showJob",
            &["200"],
            &["jobRunOutput"],
            &[
                ("id", "$response.body#/job_id"),
                ("run_id", "$response.body#/runs/0/run_id"),
            ],
        ),
        (
            "commandAgent",
            &["200", "202"],
            &["showCommand"],
            &[("id", "$response.body#/command_id")],
        ),
        (
            "listConnectedAgents",
            &["200"],
            &agent,
            &[("id", "$response.body#/0/agent_id")],
        ),
        (
            "showAgent",
            &["200"],
            &agent,
            &[("id", "$response.body#/agent_id")],
        ),
        (
            "latestRelease",
            &["200"],
            &["showRelease"],
            &[
                ("version", "$response.body#/version"),
                ("target", "$response.body#/target"),
            ],
        ),
        (
            "latestRelease",
            &["200"],
            &["downloadRelease"],
            &[
                ("version", "$response.body#/version"),
                ("target", "$response.body#/target"),
                ("file", "outpost-agent"),
            ],
        ),
        (
            "showRelease",
            &["200"],
            &["downloadRelease"],
            &[
                ("version", "$response.body#/version"),
                ("target", "$response.body#/target"),
                ("file", "outpost-agent"),
            ],
        ),
    ];
    for (from, statuses, targets, parameters) in plan {
        let Some(operation) = find_operation(openapi, from) else {
            panic!("OpenAPI links: no operation {from}");
        };
        for status in *statuses {
            let Some(RefOr::T(response)) = operation.responses.responses.get_mut(*status) else {
                panic!("OpenAPI links: {from} has no response {status}");
            };
            for target in *targets {
                let mut link = LinkBuilder::new().operation_id(*target);
                for (name, value) in *parameters {
                    link = link.parameter(*name, *value);
                }
                response
                    .links
                    .insert((*target).to_owned(), RefOr::T(link.build()));
            }
        }
    }
}

fn find_operation<'a>(
    openapi: &'a mut utoipa::openapi::OpenApi,
    id: &str,
) -> Option<&'a mut Operation> {
    openapi
        .paths
        .paths
        .values_mut()
        .flat_map(operations)
        .find(|operation| operation.operation_id.as_deref() == Some(id))
}

/// `GET /healthz`'s answer.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Health {
    /// Always `ok`.
    #[schema(value_type = String, pattern = "^ok$")]
    status: String,
}

/// `GET /readyz`'s answer.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Readiness {
    /// Always `ready`.
    #[schema(value_type = String, pattern = "^ready$")]
    status: String,
    /// Agents connected to this server.
    agents_connected: usize,
}
