//! Agents given several server URLs (CONTRACT.md §13): a dead node is passed over at once, an
//! agent whose node dies carries on at the next one, its run included, nothing run twice, and
//! an agent whose node froze (its sockets open, nothing answering) leaves it.
//!
//! Two servers started separately on SQLite are not one cluster, so "the next node" is the same
//! data directory served again on another port after the first process was killed: what the
//! agent sees is what it would see of a cluster losing a node.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use outpost_e2e::{
    Agent, READY_TIMEOUT, Scripts, Server, ServerOptions, only_run, run_job, wait_for,
};
use reqwest::StatusCode;
use serde_json::json;

/// `n` loopback addresses nothing listens on: bound together (so they differ), then closed.
fn dead_addrs(n: usize) -> Vec<SocketAddr> {
    let listeners: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("addr"))
        .collect()
}

/// How many times the agent's log says it connected to the server at `url`.
fn connected_to(agent: &Agent, url: &str) -> usize {
    let server = format!("server={url}/");
    agent
        .logs()
        .lines()
        .filter(|l| l.contains("connected and registered") && l.contains(&server))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_passes_over_dead_nodes_at_once() {
    let server = Server::start().await;
    let api = server.api();
    let (_, secret) = api.agent_key().await;
    let dead = dead_addrs(2);
    // Two dead nodes first, so the agent must move twice before it finds the live one.
    let list = format!("ws://{},http://{},{}", dead[0], dead[1], server.url);
    for fallback in [false, true] {
        let mut envs = vec![("OUTPOST_FIRST_SERVER".to_owned(), "1".to_owned())];
        if fallback {
            envs.push(("OUTPOST_HTTP_FALLBACK".to_owned(), "1".to_owned()));
        }
        let started = Instant::now();
        let agent = Agent::start_with(&list, &secret, None, envs);
        let id = agent.wait_online(&api).await;
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(10),
            "fallback={fallback}: online after {took:?}"
        );
        // The server sees the agent online as it registers; the agent's log line saying so
        // may be written a moment later, on a busy machine.
        wait_for(
            "the agent's log to say where it registered",
            Duration::from_secs(10),
            || async { (connected_to(&agent, &server.url) >= 1).then_some(()) },
        )
        .await;
        let logs = agent.logs();
        assert_eq!(
            logs.matches("trying the next server").count(),
            2,
            "fallback={fallback}: each dead node is left at once:\n{logs}"
        );
        assert!(
            !logs.contains("retry_in"),
            "fallback={fallback}: no backoff before every node was tried:\n{logs}"
        );
        assert_eq!(connected_to(&agent, &server.url), 1, "{logs}");
        let (status, pong) = api.command(&id, json!({"command": "ping"})).await;
        assert_eq!(status, StatusCode::OK, "fallback={fallback}: {pong}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_whose_node_dies_carries_on_at_the_next_with_its_run() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("data");
    let mut first = Server::start_with(ServerOptions {
        data_dir: Some(data.clone()),
        ..ServerOptions::default()
    })
    .await;
    let api = first.api();
    let (_, secret) = api.agent_key().await;
    let next_addr = dead_addrs(1)[0];
    let next_url = format!("http://{next_addr}");

    let go = tmp.path().join("go");
    let mut scripts = Scripts::new();
    scripts.add(
        "until_go",
        &format!(
            "echo before\nwhile [ ! -e '{}' ]; do sleep 0.05; done\necho finished",
            go.display()
        ),
        json!({"timeout_s": 120}),
    );
    let mut envs = scripts.env();
    envs.push(("OUTPOST_FIRST_SERVER".into(), "1".into()));
    let agent = Agent::start_with(&format!("{},{next_url}", first.url), &secret, None, envs);
    let id = agent.wait_online(&api).await;
    assert_eq!(connected_to(&agent, &first.url), 1, "{}", agent.logs());
    let (status, pong) = api.command(&id, json!({"command": "ping"})).await;
    assert_eq!(status, StatusCode::OK, "before the switch: {pong}");

    // A run is going, its first output stored, when the node dies.
    let (_, job) = api.job(run_job(&id, "until_go", json!({})), None).await;
    let (job_id, run_id, _) = only_run(&job);
    wait_for("the run's first output", READY_TIMEOUT, || async {
        let (_, out) = api.output(&job_id, &run_id, "").await;
        (out == b"before\n").then_some(())
    })
    .await;
    first.kill9();

    let next = Server::start_with(ServerOptions {
        data_dir: Some(data),
        listen: Some(next_addr),
        // The same database, on PostgreSQL too.
        database_url: first.database_url.clone(),
        ..ServerOptions::default()
    })
    .await;
    let api = next.api();
    // Not `wait_online`: on PostgreSQL the new process is a node of its own, which sees the
    // agent online at the dead node until that node's lease runs out.
    wait_for("the agent on the next node", READY_TIMEOUT, || async {
        (connected_to(&agent, &next_url) == 1).then_some(())
    })
    .await;
    api.wait_online(&id).await;

    // The run finishes and reports to the new node, its output whole and not repeated.
    std::fs::write(&go, "").expect("go");
    let job = api.wait_job(&job_id).await;
    assert_eq!(job["runs"][0]["status"], "succeeded", "{job}");
    let (_, out) = api.output(&job_id, &run_id, "").await;
    assert_eq!(String::from_utf8_lossy(&out), "before\nfinished\n");
    let started_runs = agent
        .logs()
        .lines()
        .filter(|l| l.contains("running command") && l.contains(&run_id))
        .count();
    assert_eq!(started_runs, 1, "the run is not started again");

    let (status, echo) = api
        .command(
            &id,
            json!({"command": "echo", "data": {"message": "after"}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "after the switch: {echo}");
    assert_eq!(echo["data"]["message"], "after");
}

/// A frozen server (SIGSTOP: a hung host) keeps its TCP connections open and the kernel goes on
/// taking what the agent writes, so nothing fails on the agent's side. The agent must notice
/// the silence (no frame, no pong, for three heartbeat intervals) and connect again, which is
/// how it leaves a frozen node for a live one (scripts/faults.sh, `node-paused-past-lease`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_leaves_a_server_that_froze() {
    let server = Server::start_with(ServerOptions {
        args: vec!["--heartbeat-interval".into(), "1".into()],
        ..ServerOptions::default()
    })
    .await;
    let api = server.api();
    let (_, secret) = api.agent_key().await;
    let agent = Agent::start(&server.url, &secret);
    let id = agent.wait_online(&api).await;
    let connected = || {
        agent
            .logs()
            .lines()
            .filter(|l| l.contains("connected and registered"))
            .count()
    };
    wait_for("the first connection in the log", READY_TIMEOUT, || async {
        (connected() == 1).then_some(())
    })
    .await;

    server.freeze();
    let frozen_at = Instant::now();
    let noticed = wait_for(
        "the agent to notice the silence",
        Duration::from_secs(20),
        || async {
            agent
                .logs()
                .contains("taking the connection for dead")
                .then(Instant::now)
        },
    )
    .await;
    server.resume();
    let took = noticed - frozen_at;
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(10),
        "noticed after {took:?} (three 1 s intervals, checked at each heartbeat)"
    );

    // Thawed, the server takes the agent's new connection, and commands flow again.
    wait_for("a second connection", READY_TIMEOUT, || async {
        (connected() >= 2).then_some(())
    })
    .await;
    api.wait_online(&id).await;
    let (status, echo) = api
        .command(
            &id,
            json!({"command": "echo", "data": {"message": "thawed"}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{echo}");
    assert_eq!(echo["data"]["message"], "thawed");

    // A live server that is only quiet is not taken for dead: over several more intervals with
    // nothing to say but pongs, the agent keeps its connection.
    let before = connected();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(connected(), before, "{}", agent.logs());
}
