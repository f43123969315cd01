//! Delivery guarantees across crashes (CONTRACT.md §2): nothing stored is lost, nothing is run twice.

use std::time::Duration;

use outpost_e2e::ws;
use outpost_e2e::{Agent, Server};
use outpost_protocol::ServerFrame;
use serde_json::{Value, json};

/// How many times the agent started a command, from its log.
fn times_accepted(agent: &Agent, command_id: &str) -> usize {
    agent
        .logs()
        .lines()
        .filter(|l| l.contains("running command") && l.contains(command_id))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_pending_when_the_server_is_killed_runs_once_after_restart() {
    let mut server = Server::start().await;
    let api = server.api();
    let (_, secret) = api.agent_key().await;
    let mut agent = Agent::start(&server.url, &secret);
    let id = agent.wait_online(&api).await;
    // A second agent stays up through the server's crash and must reconnect by itself.
    let bystander = Agent::start(&server.url, &secret);
    let bystander_id = bystander.wait_online(&api).await;

    agent.terminate();
    api.wait_status(&id, "offline").await;
    let (_, queued) = api
        .command(
            &id,
            json!({"command": "echo", "data": {"message": "survived"}, "queue": true}),
        )
        .await;
    let command_id = queued["command_id"].as_str().expect("id").to_owned();

    server.kill9();
    server.restart().await;
    let api = server.api();
    agent.restart();
    let done = api.wait_command_final(&command_id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["data"]["message"], "survived");
    assert_eq!(times_accepted(&agent, &command_id), 1);

    api.wait_online(&bystander_id).await;
    let (status, pong) = api.command(&bystander_id, json!({"command": "ping"})).await;
    assert_eq!(status, reqwest::StatusCode::OK, "{pong}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_unacknowledged_when_the_agent_died_runs_once_after_restart() {
    let server = Server::start().await;
    let api = server.api();
    let (_, secret) = api.agent_key().await;
    let agent_id = uuid::Uuid::now_v7().to_string();

    // The "agent" receives the command and dies before acknowledging it.
    let mut doomed = ws::connect(&server.url, &secret).await.expect("connect");
    doomed.handshake(&agent_id).await;
    api.wait_online(&agent_id).await;
    let call = {
        let (api, agent_id) = (api.clone(), agent_id.clone());
        tokio::spawn(async move {
            api.command(
                &agent_id,
                json!({"command": "echo", "data": {"message": "once"}, "timeout_s": 60}),
            )
            .await
        })
    };
    let command_id = match doomed.frame().await {
        ServerFrame::Command(c) => c.command_id.to_string(),
        other => panic!("{other:?}"),
    };
    doomed.crash();
    api.wait_status(&agent_id, "offline").await;

    // The real agent comes back with the same identity.
    let tmp = tempfile::tempdir().expect("tmp");
    let state = tmp.path().join("state");
    std::fs::create_dir_all(&state).expect("mkdir");
    std::fs::write(state.join("agent_id"), &agent_id).expect("agent_id");
    let agent = Agent::start_with(&server.url, &secret, Some(state), Vec::new());

    let (status, answer) = call.await.expect("join");
    assert_eq!(status, reqwest::StatusCode::OK, "{answer}");
    assert_eq!(answer["command_id"], command_id.as_str());
    assert_eq!(answer["data"]["message"], "once");
    assert_eq!(times_accepted(&agent, &command_id), 1);
}

/// Writes a state directory as a crashed agent would have left it.
fn crashed_state(dir: &std::path::Path, agent_id: &str, journal: &[Value]) {
    std::fs::create_dir_all(dir).expect("mkdir");
    std::fs::write(dir.join("agent_id"), agent_id).expect("agent_id");
    let lines: Vec<String> = journal.iter().map(Value::to_string).collect();
    std::fs::write(dir.join("journal.jsonl"), lines.join("\n") + "\n").expect("journal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_from_before_a_crash_are_delivered_and_not_rerun() {
    let server = Server::start().await;
    let api = server.api();
    let (_, secret) = api.agent_key().await;
    let agent_id = uuid::Uuid::now_v7().to_string();
    // Register the agent once so the server knows it, then queue two commands for it.
    let mut peer = ws::connect(&server.url, &secret).await.expect("connect");
    peer.handshake(&agent_id).await;
    api.wait_online(&agent_id).await;
    peer.crash();
    api.wait_status(&agent_id, "offline").await;
    let queue = |message: &'static str| {
        let (api, agent_id) = (api.clone(), agent_id.clone());
        async move {
            let (_, c) = api
                .command(
                    &agent_id,
                    json!({"command": "echo", "data": {"message": message}, "queue": true}),
                )
                .await;
            c["command_id"].as_str().expect("id").to_owned()
        }
    };
    let answered = queue("fresh-1").await;
    let running = queue("fresh-2").await;

    // The previous agent process answered the first (not yet acknowledged) and died while
    // running the second.
    let tmp = tempfile::tempdir().expect("tmp");
    let state = tmp.path().join("state");
    crashed_state(
        &state,
        &agent_id,
        &[
            json!({"accepted": answered}),
            json!({"response": {"command_id": answered, "success": true, "data": {"message": "from-journal"}, "error": null}}),
            json!({"accepted": running}),
        ],
    );
    let agent = Agent::start_with(&server.url, &secret, Some(state), Vec::new());

    let first = api.wait_command_final(&answered).await;
    assert_eq!(first["status"], "succeeded");
    assert_eq!(
        first["data"]["message"], "from-journal",
        "the stored answer is sent, not a re-run"
    );
    let second = api.wait_command_final(&running).await;
    assert_eq!(second["status"], "failed", "{second}");
    assert_eq!(second["error"]["code"], "interrupted");
    for id in [&answered, &running] {
        assert_eq!(times_accepted(&agent, id), 0, "{id} must not run again");
    }
    // Once the server acknowledged them, the journal says so.
    outpost_e2e::wait_for("acks in the journal", Duration::from_secs(10), || async {
        let acked = agent
            .journal()
            .iter()
            .filter(|r| r.get("acked").is_some())
            .count();
        (acked == 2).then_some(())
    })
    .await;
}
