//! The OpenAPI document is part of the public contract: it is committed as `openapi.json`
//! and this test fails when the code's document drifts from it. After an intended change,
//! regenerate it with `OUTPOST_UPDATE_SNAPSHOTS=1 cargo test -p outpost-server --test openapi`
//! and review the diff.

use utoipa::OpenApi;

#[test]
fn openapi_document_matches_the_committed_snapshot() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.json");
    let current = outpost_server::api::ApiDoc::openapi()
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
         OUTPOST_UPDATE_SNAPSHOTS=1 cargo test -p outpost-server --test openapi and commit server/openapi.json"
    );
}

#[test]
fn every_api_route_is_documented() {
    let doc = outpost_server::api::ApiDoc::openapi();
    for path in [
        "/api/agents/keys",
        "/api/agents/keys/{id}",
        "/api/agents/keys/{id}/regenerate",
        "/api/agents/keys/{id}/ping",
        "/api/agents/keys/{id}/command",
        "/api/agents/connected",
        "/api/agents",
        "/api/agents/{id}",
        "/api/agents/{id}/command",
        "/api/commands/{id}",
        "/api/jobs",
        "/api/jobs/{id}",
        "/api/jobs/{id}/cancel",
        "/api/jobs/{id}/events",
        "/api/jobs/{id}/runs/{run_id}/output",
        "/api/releases/latest",
        "/api/releases/{version}",
        "/downloads/{version}/{target}/{file}",
        "/healthz",
        "/readyz",
    ] {
        assert!(
            doc.paths.paths.contains_key(path),
            "{path} is not in the OpenAPI document"
        );
    }
}
