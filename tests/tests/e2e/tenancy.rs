//! Tenant isolation: a caller sees nothing of another tenant; anything outside its tenant is a
//! 404, and an agent id in one tenant cannot touch the same id in another.

use outpost_e2e::ws;
use outpost_e2e::{Agent, Api, Server};
use outpost_store::Store;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_cannot_see_or_touch_each_other() {
    let server = Server::start().await;
    let a = server.api();
    // A second tenant, made directly in the database (the tenants API comes later).
    let store = Store::open(&server.database()).await.expect("open store");
    let (_, b_key) = store.create_tenant("other", None).await.expect("tenant");
    let b = Api::new(&server.url, &b_key);

    let (a_key_id, a_secret) = a.agent_key().await;
    let agent = Agent::start(&server.url, &a_secret);
    let agent_id = agent.wait_online(&a).await;
    let (_, done) = a.command(&agent_id, json!({"command": "ping"})).await;
    let command_id = done["command_id"].as_str().expect("id").to_owned();

    // B sees an empty world...
    for path in ["/api/agents", "/api/agents/keys", "/api/agents/connected"] {
        let (status, body) = b.get(path).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert_eq!(body, json!([]), "{path} leaks across tenants");
    }
    // ...and every one of A's ids is a 404 for B.
    let not_found = [
        b.get(&format!("/api/agents/{agent_id}")).await,
        b.patch(&format!("/api/agents/{agent_id}"), json!({"tags": ["x"]}))
            .await,
        b.command(&agent_id, json!({"command": "ping"})).await,
        b.delete(&format!("/api/agents/{agent_id}")).await,
        b.get(&format!("/api/commands/{command_id}")).await,
        b.get(&format!("/api/agents/keys/{a_key_id}")).await,
        b.patch(
            &format!("/api/agents/keys/{a_key_id}"),
            json!({"status": "disabled"}),
        )
        .await,
        b.post(
            &format!("/api/agents/keys/{a_key_id}/regenerate"),
            json!({}),
        )
        .await,
        b.post(&format!("/api/agents/keys/{a_key_id}/ping"), json!({}))
            .await,
        b.delete(&format!("/api/agents/keys/{a_key_id}")).await,
    ];
    for (status, body) in not_found {
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    }
    // None of that touched A's agent.
    let (status, _) = a.command(&agent_id, json!({"command": "ping"})).await;
    assert_eq!(status, StatusCode::OK);

    // B's agent claiming A's agent id is a different agent: A's connection stays.
    let (_, b_secret) = b.agent_key().await;
    let mut impostor = ws::connect(&server.url, &b_secret).await.expect("connect");
    impostor.handshake(&agent_id).await;
    b.wait_online(&agent_id).await;
    let (status, pong) = a.command(&agent_id, json!({"command": "ping"})).await;
    assert_eq!(status, StatusCode::OK, "{pong}");
    let (_, a_view) = a.get(&format!("/api/agents/{agent_id}")).await;
    assert_ne!(
        a_view["hostname"], "raw-peer",
        "B's register must not overwrite A's agent"
    );
}
