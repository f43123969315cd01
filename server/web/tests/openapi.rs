//! The OpenAPI document is part of the public contract: it is committed as `openapi.json`
//! and this test fails when the code's document drifts from it. After an intended change,
//! regenerate it with `OUTPOST_UPDATE_SNAPSHOTS=1 cargo test -p outpost-web --test openapi`
//! and review the diff.

use utoipa::OpenApi;

#[test]
fn openapi_document_matches_the_committed_snapshot() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.json");
    let current = outpost_web::api::ApiDoc::openapi()
        .to_pretty_json()
        .expect("serialize")
        + "\n";
    if std::env::var_os("OUTPOST_UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, &current).expect("write snapshot");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == current,
        "the OpenAPI document changed; if intended, run \
         OUTPOST_UPDATE_SNAPSHOTS=1 cargo test -p outpost-web --test openapi and commit server/web/openapi.json"
    );
}

/// Every route the router serves is declared in the permission table, documented, and
/// documented with what the table says it needs; nothing is declared that is not served. A
/// new route fails here until it says who may call it.
#[test]
fn every_route_declares_who_may_call_it() {
    use outpost_web::api::permissions::{Permission, ROUTES, permission};
    let doc = document();
    let documented: std::collections::BTreeSet<(String, String)> = operations(&doc)
        .into_iter()
        .map(|(path, method, _)| (method.to_uppercase(), path))
        .collect();
    let declared: std::collections::BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|r| (r.method.to_owned(), r.path.to_owned()))
        .collect();
    let undeclared: Vec<_> = documented.difference(&declared).collect();
    assert!(
        undeclared.is_empty(),
        "documented but not declared in api::permissions::ROUTES: {undeclared:?}"
    );
    let undocumented: Vec<_> = declared.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "declared in api::permissions::ROUTES but not documented: {undocumented:?}"
    );
    for (path, method, operation) in operations(&doc) {
        let declared =
            permission(&method.to_uppercase().parse().expect("method"), &path).expect("declared");
        assert_eq!(
            operation["x-outpost-permission"],
            serde_json::to_value(declared).expect("json"),
            "{method} {path}"
        );
        let secured = operation["security"]
            .as_array()
            .is_some_and(|s| !s.is_empty());
        match declared {
            Permission::Public => assert!(!secured, "{method} {path} is public"),
            Permission::Caller { scope, role } => {
                assert!(secured, "{method} {path} takes a caller");
                let may_refuse = scope.is_some() || role != outpost_store::domain::Role::Member;
                assert!(
                    !may_refuse || operation["responses"]["403"].is_object(),
                    "{method} {path} may refuse a scope or role but declares no 403"
                );
            }
            Permission::SignedIn => assert!(secured, "{method} {path} takes a caller"),
            Permission::ServerOwner { .. } => {
                assert!(secured, "{method} {path} takes a caller");
                assert!(
                    operation["responses"]["403"].is_object(),
                    "{method} {path} is the server owner's but declares no 403"
                );
            }
            Permission::AgentOrCaller => {}
            Permission::Agent => {
                assert!(secured, "{method} {path} takes an agent key");
                assert_eq!(
                    operation["security"],
                    serde_json::json!([{"agent": []}]),
                    "{method} {path} takes an agent key, nothing else"
                );
            }
        }
    }
}

/// The document as JSON, as `/openapi.json` serves it.
fn document() -> serde_json::Value {
    serde_json::to_value(outpost_web::api::ApiDoc::openapi()).expect("serialize")
}

/// Every operation: `(path, method, operation)`.
fn operations(doc: &serde_json::Value) -> Vec<(String, String, serde_json::Value)> {
    let mut all = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("path item") {
            all.push((path.clone(), method.clone(), operation.clone()));
        }
    }
    all
}

/// The operations anyone may call without an API key: probes, the installer, and the
/// sign-in routes whose body is the credential.
const PUBLIC: &[&str] = &[
    "/healthz",
    "/readyz",
    "/deploy.sh",
    "/downloads/{version}/{target}/{file}",
    "/downloads/packages/{file}",
    "/api/auth/login",
    "/api/auth/refresh",
    "/api/auth/logout",
    "/api/auth/accept-invite",
    "/api/auth/register",
    "/api/auth/password-reset",
    "/api/auth/password-reset/confirm",
    "/api/auth/login/totp",
    "/api/auth/login/totp/setup",
    "/api/auth/login/totp/confirm",
    "/api/auth/oidc/start",
    "/api/auth/oidc/callback",
    "/api/auth/oidc/exchange",
];

#[test]
fn every_operation_declares_the_statuses_it_can_answer() {
    let doc = document();
    let mut ids = std::collections::BTreeSet::new();
    for (path, method, operation) in operations(&doc) {
        let id = operation["operationId"].as_str().expect("operationId");
        assert!(ids.insert(id.to_owned()), "operationId {id} is used twice");
        let responses = operation["responses"].as_object().expect("responses");
        let has = |status: &str| responses.contains_key(status);
        let secured = operation["security"]
            .as_array()
            .is_some_and(|s| !s.is_empty());
        assert_eq!(
            secured,
            !PUBLIC.contains(&path.as_str()),
            "{method} {path}: security"
        );
        if secured {
            // Every authenticated operation takes an API key or a user's access token, but
            // the agents' routes, which take an agent key.
            let schemes: Vec<&str> = operation["security"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| r.as_object()?.keys().next().map(String::as_str))
                .collect();
            let expected: &[&str] = if path.starts_with("/agent/") {
                &["agent"]
            } else {
                &["bearer", "jwt"]
            };
            assert_eq!(schemes, expected, "{method} {path}: security schemes");
            assert!(
                has("401"),
                "{method} {path} needs an API key but declares no 401"
            );
        }
        let takes_input = operation["requestBody"].is_object()
            || operation["parameters"]
                .as_array()
                .is_some_and(|p| !p.is_empty());
        if takes_input {
            assert!(
                has("400"),
                "{method} {path} takes input but declares no 400"
            );
        }
        if operation["requestBody"].is_object() {
            assert!(
                has("413"),
                "{method} {path} takes a body but declares no 413"
            );
        }
        if path != "/healthz" {
            for status in ["500", "503"] {
                assert!(has(status), "{method} {path} declares no {status}");
            }
        }
        // Every error is the one envelope.
        for (status, response) in responses {
            if !status.starts_with(['4', '5']) {
                continue;
            }
            let response = match response["$ref"].as_str() {
                Some(reference) => {
                    let name = reference.rsplit('/').next().expect("name");
                    &doc["components"]["responses"][name]
                }
                None => response,
            };
            assert_eq!(
                response["content"]["application/json"]["schema"]["$ref"],
                "#/components/schemas/ErrorEnvelope",
                "{method} {path} {status} is not the error envelope"
            );
        }
    }
}

#[test]
fn the_document_s_enums_are_the_domain_model_s() {
    use outpost_store::domain::{
        Command, CommandState, JobState, KeyStatus, Role, Transport, WebhookStatus,
    };
    fn spellings<T: Copy + std::fmt::Display>(all: &[T]) -> Vec<String> {
        all.iter().map(|v| v.to_string()).collect()
    }
    let doc = document();
    for (name, values) in [
        ("CommandState", spellings(CommandState::ALL)),
        ("JobState", spellings(JobState::ALL)),
        ("Role", spellings(Role::ALL)),
        ("KeyStatus", spellings(KeyStatus::ALL)),
        ("Transport", spellings(Transport::ALL)),
        ("Command", spellings(Command::ALL)),
        ("WebhookStatus", spellings(WebhookStatus::ALL)),
    ] {
        let declared: Vec<String> =
            serde_json::from_value(doc["components"]["schemas"][name]["enum"].clone())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(declared, values, "{name}");
    }
}

#[test]
fn the_document_s_bounds_are_the_protocol_s() {
    use outpost_protocol::limits;
    let doc = document();
    let schemas = &doc["components"]["schemas"];
    for body in ["CreateJob", "CommandRequest"] {
        let properties = &schemas[body]["properties"];
        assert_eq!(properties["timeout_s"]["minimum"], 1, "{body}");
        assert_eq!(
            properties["timeout_s"]["maximum"],
            limits::MAX_TIMEOUT_S,
            "{body}"
        );
        assert_eq!(properties["ttl_s"]["maximum"], limits::MAX_TTL_S, "{body}");
    }
    assert_eq!(schemas["Tag"]["maxLength"], limits::MAX_TAG_LEN);
    assert_eq!(
        schemas["CreateAgentKey"]["properties"]["tags"]["maxItems"],
        limits::MAX_TAGS
    );
    assert_eq!(
        schemas["UpdateAgent"]["properties"]["tags"]["maxItems"],
        limits::MAX_TAGS
    );
}

#[test]
fn every_link_leads_to_an_operation_and_fills_its_parameters() {
    let doc = document();
    let all = operations(&doc);
    let mut links = 0;
    for (path, method, operation) in &all {
        for (status, response) in operation["responses"].as_object().expect("responses") {
            let Some(map) = response["links"].as_object() else {
                continue;
            };
            for (name, link) in map {
                links += 1;
                let target = link["operationId"].as_str().expect("operationId");
                let (_, _, to) = all
                    .iter()
                    .find(|(_, _, o)| o["operationId"] == target)
                    .unwrap_or_else(|| panic!("{method} {path} {status}: {name} leads nowhere"));
                let params: Vec<&str> = to["parameters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|p| p["in"] == "path")
                    .filter_map(|p| p["name"].as_str())
                    .collect();
                let given: Vec<&str> = link["parameters"]
                    .as_object()
                    .expect("parameters")
                    .keys()
                    .map(String::as_str)
                    .collect();
                for p in &params {
                    assert!(
                        given.contains(p),
                        "{method} {path} {status}: {name} leaves {p} unset"
                    );
                }
            }
        }
    }
    assert!(links > 0, "no links");
}

#[test]
fn every_response_has_a_description() {
    let doc = document();
    for (path, method, operation) in operations(&doc) {
        for (status, response) in operation["responses"].as_object().expect("responses") {
            if response["$ref"].is_string() {
                continue;
            }
            assert!(
                response["description"]
                    .as_str()
                    .is_some_and(|d| !d.is_empty()),
                "{method} {path} {status} has no description"
            );
        }
    }
    for (name, response) in doc["components"]["responses"]
        .as_object()
        .expect("responses")
    {
        assert!(
            response["description"]
                .as_str()
                .is_some_and(|d| !d.is_empty()),
            "response {name} has no description"
        );
    }
}
