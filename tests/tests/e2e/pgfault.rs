//! PostgreSQL going away under a running server (CONTRACT.md §13, "Bad input and faults"): the server
//! says it is not ready meanwhile, holds what agents report without acknowledging it, and
//! carries on by itself when PostgreSQL is back, with nothing lost. And a PostgreSQL that is not
//! there at start: a clear error naming the URL, its password masked.
//!
//! Each test starts a PostgreSQL cluster of its own (`scripts/postgres.sh`), since it stops it;
//! skipped with a message where PostgreSQL's server programs are not installed.

use std::time::Duration;

use outpost_e2e::postgres::{Cluster, Database};
use outpost_e2e::{
    Agent, READY_TIMEOUT, Scripts, Server, ServerOptions, only_run, run_job, wait_for,
};
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgresql_restart_loses_no_result_and_readiness_says_so() {
    let Some(cluster) =
        Cluster::start("pgfault::a_postgresql_restart_loses_no_result_and_readiness_says_so")
    else {
        return;
    };
    let database = Database::create(&cluster.url);
    let server = Server::start_with(ServerOptions {
        database_url: Some(database.url.clone()),
        ..ServerOptions::default()
    })
    .await;
    let api = server.api();
    let tmp = tempfile::tempdir().expect("tmp");
    let gate = tmp.path().join("gate");
    let mut scripts = Scripts::new();
    scripts.add(
        "gated",
        &format!(
            "echo first\nwhile [ ! -e '{}' ]; do sleep 0.05; done\necho second",
            gate.display()
        ),
        json!({"timeout_s": 120}),
    );
    let (_, secret) = api.agent_key().await;
    let agent = Agent::start_with(&server.url, &secret, None, scripts.env());
    let id = agent.wait_online(&api).await;
    let (_, job) = api.job(run_job(&id, "gated", json!({})), None).await;
    let (job_id, run_id, _) = only_run(&job);
    wait_for("the run's first output", READY_TIMEOUT, || async {
        let (_, out) = api.output(&job_id, &run_id, "").await;
        (out == b"first\n").then_some(())
    })
    .await;

    // PostgreSQL stops; the run finishes meanwhile and its result cannot be stored.
    cluster.stop();
    std::fs::write(&gate, "").expect("gate");
    wait_for("/readyz saying not ready", READY_TIMEOUT, || async {
        let (status, body) = api.get("/readyz").await;
        (status == StatusCode::SERVICE_UNAVAILABLE).then_some(body)
    })
    .await;

    // Back: ready again by itself, the result stored whole, the run finished once.
    cluster.restart();
    wait_for("/readyz ready again", Duration::from_secs(60), || async {
        (api.get("/readyz").await.0 == StatusCode::OK).then_some(())
    })
    .await;
    let done = api.wait_job(&job_id).await;
    assert_eq!(done["runs"][0]["status"], "succeeded", "{done}");
    let (_, out) = api.output(&job_id, &run_id, "").await;
    assert_eq!(String::from_utf8_lossy(&out), "first\nsecond\n");
    // New work goes through again.
    let (status, pong) = api.command(&id, json!({"command": "ping"})).await;
    assert_eq!(status, StatusCode::OK, "{pong}");
    assert_eq!(pong["status"], "succeeded", "{pong}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_postgresql_at_start_is_named_with_its_password_masked() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let url = format!("postgres://outpost:hunter2secret@127.0.0.1:{port}/outpost");
    let tmp = tempfile::tempdir().expect("tmp");
    let out = std::process::Command::new(outpost_e2e::bin_dir().join("outpost-server"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(tmp.path().join("data"))
        .args(["--database-url", &url])
        .env("OUTPOST_DATABASE_WAIT", "12")
        .env_remove("OUTPOST_ADMIN_KEY")
        .output()
        .expect("run the server");
    assert!(!out.status.success());
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains(&format!("postgres://outpost:***@127.0.0.1:{port}/outpost")),
        "{said}"
    );
    assert!(!said.contains("hunter2secret"), "{said}");
    assert!(
        said.contains("retrying"),
        "it retried before giving up: {said}"
    );
    assert!(!said.contains("panicked"), "{said}");
}
