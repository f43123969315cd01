//! Several nodes on one PostgreSQL behind HAProxy (SPEC §13), as `scripts/cluster.sh` starts
//! them on this machine, and the compose example (`deploy/compose.yaml`, `deploy/haproxy.cfg`)
//! that operators start in containers with the same balancer settings.

use std::path::Path;
use std::process::Command;

use outpost_e2e::cluster::Cluster;
use outpost_e2e::{Agent, READY_TIMEOUT, wait_for};
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_behind_the_balancer_answers_a_ping_sent_through_it() {
    let Some(cluster) = Cluster::start(
        "cluster::an_agent_behind_the_balancer_answers_a_ping_sent_through_it",
        3,
    ) else {
        return;
    };
    assert_eq!(cluster.node_urls.len(), 3);
    for i in 0..3 {
        let (status, ready) = cluster.node_api(i).get("/readyz").await;
        assert_eq!(status, StatusCode::OK, "node{}: {ready}", i + 1);
    }
    let api = cluster.api();
    let (status, ready) = api.get("/readyz").await;
    assert_eq!(status, StatusCode::OK, "through the balancer: {ready}");

    // The agent knows only the balancer: its WebSocket goes through HAProxy to some node.
    let (_, secret) = api.agent_key().await;
    let agent = Agent::start(&cluster.url, &secret);
    let id = agent.agent_id().await;
    let path = format!("/api/agents/{id}");
    let holder = wait_for("the agent online on a node", READY_TIMEOUT, || {
        let (cluster, path) = (&cluster, &path);
        async move {
            for i in 0..cluster.node_urls.len() {
                let (status, agent) = cluster.node_api(i).get(path).await;
                if status == StatusCode::OK && agent["status"] == "online" {
                    return Some(i);
                }
            }
            None
        }
    })
    .await;
    assert!(
        agent.logs().contains("connected and registered"),
        "{}",
        agent.logs()
    );

    // The command goes through the balancer too, to whichever node it picks.
    let (status, pong) = api.command(&id, json!({"command": "ping"})).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "ping through the balancer (agent on node{}): {pong}",
        holder + 1
    );
    assert_eq!(pong["status"], "succeeded", "{pong}");
}

/// `docker-compose config` with every variable of `deploy/env.example` set to a sample.
fn compose_config(root: &Path, with_secrets: bool) -> Option<std::process::Output> {
    let tmp = tempfile::tempdir().expect("tempdir");
    let empty = tmp.path().join("empty.env");
    std::fs::write(&empty, "").expect("empty env file");
    let mut command = Command::new("docker-compose");
    // Nothing from the machine's own environment or a `.env` beside the file.
    command
        .arg("--env-file")
        .arg(&empty)
        .arg("-f")
        .arg(root.join("deploy/compose.yaml"))
        .args(["config", "-q"])
        .env_remove("OUTPOST_ADMIN_KEY")
        .env_remove("OUTPOST_MASTER_KEY")
        .env_remove("POSTGRES_PASSWORD");
    if with_secrets {
        command
            .env("OUTPOST_ADMIN_KEY", format!("opk_{}", "a1".repeat(24)))
            .env("OUTPOST_MASTER_KEY", "b2".repeat(32))
            .env("POSTGRES_PASSWORD", "c3c3c3");
    }
    command.output().ok()
}

#[test]
fn the_compose_example_is_valid_and_needs_its_secrets() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root");
    let config = std::fs::read_to_string(root.join("deploy/haproxy.cfg")).expect("haproxy.cfg");
    let compose = std::fs::read_to_string(root.join("deploy/compose.yaml")).expect("compose");
    // Every server of the balancer is a service of the compose file, and the other way round.
    let servers: Vec<&str> = config
        .lines()
        .filter_map(|l| l.trim().strip_prefix("server "))
        .filter_map(|l| l.split_whitespace().nth(1)?.split(':').next())
        .collect();
    assert_eq!(servers, ["outpost-1", "outpost-2", "outpost-3"]);
    for server in &servers {
        assert!(
            compose.contains(&format!("\n  {server}:\n")),
            "{server} is not a compose service"
        );
    }
    // scripts/cluster.sh keeps what is above this line.
    assert!(config.contains("\n    # --- servers"), "the servers marker");

    if Command::new("haproxy").arg("-v").output().is_ok() {
        let out = Command::new("haproxy")
            .arg("-c")
            .arg("-f")
            .arg(root.join("deploy/haproxy.cfg"))
            .output()
            .expect("haproxy -c");
        assert!(out.status.success(), "haproxy -c: {out:?}");
    } else {
        eprintln!("haproxy is not installed: deploy/haproxy.cfg not checked by HAProxy itself");
    }

    let Some(out) = compose_config(root, true) else {
        eprintln!(
            "SKIPPED cluster::the_compose_example_is_valid_and_needs_its_secrets (compose part): \
             needs docker-compose (Debian: apt-get install docker-compose)"
        );
        return;
    };
    assert!(
        out.status.success(),
        "docker-compose config: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // No default stands in for a secret.
    let out = compose_config(root, false).expect("docker-compose");
    assert!(!out.status.success(), "it ran without the secrets");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("env.example"), "{err}");
}
