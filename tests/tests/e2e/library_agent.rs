//! The agent's side of the script library (CONTRACT.md §15) against the real server: an agent whose
//! manifest carries a `library` consent registers with it, says so in `info`, and registers
//! again when the consent changes. Library runs themselves are tested in the agent crate
//! (`agent/tests/library.rs`) against a stand-in for the bundle route, and end to end once the
//! server's library has landed.

use std::time::Duration;

use outpost_e2e::{Agent, Server, wait_for};
use reqwest::StatusCode;
use serde_json::{Value, json};

const KEY: &str = "0QDsxvCdT+oIbW0+ATW5ApjfIO+FOagCfPt4GSj/BdY=";

#[tokio::test]
async fn an_agent_registers_its_library_consent_and_its_changes() {
    let server = Server::start().await;
    let api = server.api();
    let (_, secret) = api.agent_key().await;
    let dir = tempfile::tempdir().expect("tmp");
    let manifest = dir.path().join("script_manifest.json");
    std::fs::write(
        &manifest,
        json!({"library": {"allow": ["backup-*"], "keys": [KEY]}}).to_string(),
    )
    .expect("manifest");
    let agent = Agent::start_with(
        &server.url,
        &secret,
        None,
        vec![("OUTPOST_MANIFEST".into(), manifest.display().to_string())],
    );
    let id = agent.wait_online(&api).await;

    let info = |api: outpost_e2e::Api, id: String| async move {
        let (status, info) = api.command(&id, json!({"command": "info"})).await;
        assert_eq!(status, StatusCode::OK, "{info}");
        info["data"].clone()
    };
    let data = info(api.clone(), id.clone()).await;
    assert_eq!(data["library"]["allow"], json!(["backup-*"]), "{data}");
    assert_eq!(data["library"]["keys"], json!([KEY]), "{data}");

    // A new consent is read within moments and registered again; the server keeps the agent.
    std::fs::write(
        &manifest,
        json!({"library": {"allow": ["backup-*", "report"], "keys": [KEY]}}).to_string(),
    )
    .expect("manifest");
    let api2 = api.clone();
    let id2 = id.clone();
    wait_for(
        "the new consent in info",
        Duration::from_secs(30),
        move || {
            let (api, id) = (api2.clone(), id2.clone());
            async move {
                let data: Value = info(api, id).await;
                (data["library"]["allow"] == json!(["backup-*", "report"])).then_some(())
            }
        },
    )
    .await;
    api.wait_online(&id).await;
    let data = info(api.clone(), id.clone()).await;
    assert_eq!(data["library_cache"]["downloads"], 0, "{data}");
}
