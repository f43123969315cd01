//! Agent identity (CONTRACT.md §9): an agent id belongs to the key that first registered it, a key's
//! permissions hold on every send, an agent answers only for its own commands, and a tag an
//! agent key assigns cannot be claimed by an agent of another key.
//!
//! Each test is an attack from the hardening issue, played with a raw protocol peer holding a
//! second, weaker key of the same tenant.

use std::time::Duration;

use outpost_e2e::Server;
use outpost_e2e::ws::{self, Seen};
use outpost_protocol::{ServerFrame, codes, limits};
use reqwest::StatusCode;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(15);

/// A registered raw peer for `agent_id` with `secret`.
async fn peer(server: &Server, secret: &str, agent_id: &str) -> ws::Peer {
    let mut peer = ws::connect(&server.url, secret).await.expect("connect");
    peer.handshake(agent_id).await;
    peer
}

/// The next command frame the peer gets, skipping acks and errors.
async fn next_command(peer: &mut ws::Peer) -> outpost_protocol::ServerCommand {
    loop {
        match peer.next(T).await {
            Seen::Frame(ServerFrame::Command(c)) => return c,
            Seen::Frame(_) => continue,
            Seen::Closed(why) => panic!("closed: {why:?}"),
        }
    }
}

/// A key B (ping only) presenting agent X's id while X is offline, and while X is online: it
/// is refused with `agent_id_taken` (close 1008), gets none of X's queued commands (nor their
/// parameters), X stays bound to its key and keeps its connection, and the WebSocket and the
/// long-poll transport refuse alike. Once an admin forgets X, the id is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_key_cannot_take_over_an_agent_id() {
    let server = Server::start().await;
    let api = server.api();
    let (a_id, a_secret) = api
        .create_key(json!({"name": "deploy", "permissions": ["ping", "echo"]}))
        .await;
    let (b_id, b_secret) = api
        .create_key(json!({"name": "weak", "permissions": ["ping"]}))
        .await;
    let x = uuid::Uuid::now_v7().to_string();

    // X registers with key A, then goes away; an echo carrying a secret is queued for it.
    let first = peer(&server, &a_secret, &x).await;
    api.wait_online(&x).await;
    first.crash();
    api.wait_status(&x, "offline").await;
    let (status, queued) = api
        .command(
            &x,
            json!({"command": "echo", "data": {"message": "DB_PASSWORD=hunter2"}, "queue": true}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{queued}");
    let command_id = queued["command_id"].as_str().expect("id").to_owned();

    // B presents X's id: an error frame saying why, then 1008; never the queued command.
    let mut thief = ws::connect(&server.url, &b_secret).await.expect("connect");
    thief.handshake(&x).await;
    match thief.next(T).await {
        Seen::Frame(ServerFrame::Error(e)) => {
            assert_eq!(e.code, codes::AGENT_ID_TAKEN);
            assert!(e.message.contains("another agent key"), "{}", e.message);
        }
        other => panic!("expected the agent_id_taken error, got {other:?}"),
    }
    assert_eq!(
        thief.closed(T).await,
        Some((limits::CLOSE_POLICY, codes::AGENT_ID_TAKEN.into()))
    );
    // Over long-poll the same.
    let frames = api
        .with_token(&b_secret)
        .post("/agent/v1/frames", json!({"frames": [ws::register(&x)]}))
        .await;
    assert_eq!(frames.0, StatusCode::CONFLICT, "{}", frames.1);
    assert_eq!(frames.1["error"]["code"], codes::AGENT_ID_TAKEN);

    let (_, agent) = api.get(&format!("/api/agents/{x}")).await;
    assert_eq!(agent["key_id"], a_id.as_str(), "still bound to key A");
    assert_eq!(agent["status"], "offline");
    let (_, command) = api.get(&format!("/api/commands/{command_id}")).await;
    assert_eq!(command["status"], "pending", "{command}");

    // X comes back with its own key and gets its command; B, trying again while X is
    // online, does not replace it.
    let mut owner = peer(&server, &a_secret, &x).await;
    let c = next_command(&mut owner).await;
    assert_eq!(c.command_id.to_string(), command_id);
    let mut thief = peer(&server, &b_secret, &x).await;
    assert_eq!(
        thief.closed(T).await,
        Some((limits::CLOSE_POLICY, codes::AGENT_ID_TAKEN.into()))
    );
    owner
        .send_json(
            &json!({"type": "response", "command_id": c.command_id, "success": true,
            "data": {"message": "DB_PASSWORD=hunter2"}, "error": null}),
        )
        .await;
    let done = api.wait_command_final(&command_id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    // The owner's connection was not replaced: it still answers.
    let call = {
        let (api, x) = (api.clone(), x.clone());
        tokio::spawn(async move {
            api.command(&x, json!({"command": "ping", "timeout_s": 10}))
                .await
        })
    };
    let ping = next_command(&mut owner).await;
    owner
        .send_json(
            &json!({"type": "response", "command_id": ping.command_id, "success": true,
            "data": {"pong": true}, "error": null}),
        )
        .await;
    let (status, answer) = call.await.expect("join");
    assert_eq!(status, StatusCode::OK, "{answer}");
    drop(owner);

    // Forgotten by an admin, the id is free for another key.
    let (status, _) = api.delete(&format!("/api/agents/{x}")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let _taken_over = peer(&server, &b_secret, &x).await;
    api.wait_online(&x).await;
    let (_, agent) = api.get(&format!("/api/agents/{x}")).await;
    assert_eq!(agent["key_id"], b_id.as_str());
}

/// A response or output frame naming a command that was sent to another agent is dropped with
/// a `not_your_command` error and changes nothing of that run; the sender's own commands are
/// unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_cannot_answer_for_another_agent_s_command() {
    let server = Server::start().await;
    let api = server.api();
    let (_, secret) = api.agent_key().await;
    let (x, y) = (
        uuid::Uuid::now_v7().to_string(),
        uuid::Uuid::now_v7().to_string(),
    );
    let mut victim = peer(&server, &secret, &x).await;
    let mut forger = peer(&server, &secret, &y).await;
    api.wait_online(&x).await;
    api.wait_online(&y).await;
    let call = {
        let (api, x) = (api.clone(), x.clone());
        tokio::spawn(async move {
            api.command(
                &x,
                json!({"command": "echo", "data": {"message": "hi"}, "timeout_s": 30}),
            )
            .await
        })
    };
    let c = next_command(&mut victim).await;

    forger
        .send_json(
            &json!({"type": "output", "command_id": c.command_id, "stream": "stdout",
            "seq": 0, "data": "forged\n"}),
        )
        .await;
    forger
        .send_json(
            &json!({"type": "response", "command_id": c.command_id, "success": true,
            "data": {"message": "forged"}, "error": null}),
        )
        .await;
    let mut errors = Vec::new();
    let mut acked = false;
    while errors.len() < 2 || !acked {
        match forger.next(T).await {
            Seen::Frame(ServerFrame::Error(e)) => errors.push(e.code),
            Seen::Frame(ServerFrame::Ack { command_id }) => {
                // Acknowledged so that it forgets it: nothing is kept for it.
                assert_eq!(command_id, c.command_id);
                acked = true;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(errors, [codes::NOT_YOUR_COMMAND, codes::NOT_YOUR_COMMAND]);
    let (_, command) = api.get(&format!("/api/commands/{}", c.command_id)).await;
    assert!(
        ["pending", "delivered"].contains(&command["status"].as_str().unwrap_or_default()),
        "{command}"
    );
    assert!(
        command["data"].is_null(),
        "nothing of the forgery stored: {command}"
    );

    victim
        .send_json(
            &json!({"type": "response", "command_id": c.command_id, "success": true,
            "data": {"message": "hi"}, "error": null}),
        )
        .await;
    let (status, done) = call.await.expect("join");
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["data"], json!({"message": "hi"}), "{done}");
}

/// Permissions hold on every send: a command queued while the key allowed it is not sent once
/// the key no longer does; it fails with `forbidden` when the agent comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_command_the_key_no_longer_allows_is_never_sent() {
    let server = Server::start().await;
    let api = server.api();
    let (key_id, secret) = api
        .create_key(json!({"name": "k", "permissions": ["ping", "echo"]}))
        .await;
    let x = uuid::Uuid::now_v7().to_string();
    let first = peer(&server, &secret, &x).await;
    api.wait_online(&x).await;
    first.crash();
    api.wait_status(&x, "offline").await;
    let (_, echo) = api
        .command(
            &x,
            json!({"command": "echo", "data": {"message": "m"}, "queue": true}),
        )
        .await;
    let (_, ping) = api
        .command(&x, json!({"command": "ping", "queue": true}))
        .await;
    let (status, _) = api
        .patch(
            &format!("/api/agents/keys/{key_id}"),
            json!({"permissions": ["ping"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    let mut back = peer(&server, &secret, &x).await;
    let c = next_command(&mut back).await;
    assert_eq!(
        c.command_id.to_string(),
        ping["command_id"].as_str().expect("id")
    );
    assert_eq!(c.command, "ping");
    let refused = api
        .wait_command_final(echo["command_id"].as_str().expect("id"))
        .await;
    assert_eq!(refused["status"], "failed", "{refused}");
    assert_eq!(refused["error"]["code"], codes::FORBIDDEN, "{refused}");
    // Nothing else arrives before the next command: the echo was never sent.
    let call = {
        let (api, x) = (api.clone(), x.clone());
        tokio::spawn(async move {
            api.command(&x, json!({"command": "ping", "timeout_s": 10}))
                .await
        })
    };
    let next = next_command(&mut back).await;
    assert_eq!(next.command, "ping", "{next:?}");
    back.send_json(
        &json!({"type": "response", "command_id": next.command_id, "success": true,
        "data": {"pong": true}, "error": null}),
    )
    .await;
    assert_eq!(call.await.expect("join").0, StatusCode::OK);
}

fn register_with_tags(agent_id: &str, tags: &[&str]) -> Value {
    let mut frame = ws::register(agent_id);
    frame["data"]["tags"] = json!(tags);
    frame
}

fn agent_ids(value: &Value, field: &str) -> Vec<String> {
    let mut ids: Vec<String> = value
        .as_array()
        .expect("a list")
        .iter()
        .map(|v| v[field].as_str().expect("id").to_owned())
        .collect();
    ids.sort();
    ids
}

/// A tag some agent key assigns (`fleet=prod`) is trusted only from that key or an operator:
/// an agent of another key declaring it is not targeted by it, while a tag no key assigns still
/// matches whoever declares it. The API shows the three sources apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_s_tag_cannot_be_claimed_by_another_key_s_agent() {
    let server = Server::start().await;
    let api = server.api();
    let (_, prod_secret) = api
        .create_key(json!({"name": "prod", "permissions": ["ping"], "tags": ["fleet=prod"]}))
        .await;
    let (_, lab_secret) = api
        .create_key(json!({"name": "lab", "permissions": ["ping"]}))
        .await;
    let (prod, lab) = (
        uuid::Uuid::now_v7().to_string(),
        uuid::Uuid::now_v7().to_string(),
    );
    let mut p = ws::connect(&server.url, &prod_secret)
        .await
        .expect("connect");
    p.frame().await;
    p.send_json(&register_with_tags(&prod, &["role=db"])).await;
    let mut l = ws::connect(&server.url, &lab_secret)
        .await
        .expect("connect");
    l.frame().await;
    l.send_json(&register_with_tags(&lab, &["fleet=prod", "role=db"]))
        .await;
    api.wait_online(&prod).await;
    api.wait_online(&lab).await;

    let (_, listed) = api.get("/api/agents?tag=fleet%3Dprod").await;
    assert_eq!(agent_ids(&listed, "agent_id"), std::slice::from_ref(&prod));
    let (_, listed) = api.get("/api/agents?tag=role%3Ddb").await;
    let mut both = vec![prod.clone(), lab.clone()];
    both.sort();
    assert_eq!(agent_ids(&listed, "agent_id"), both);

    let (status, job) = api
        .job(
            json!({"command": "ping", "target": {"tags": ["fleet=prod"]}, "ttl_s": 60}),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    assert_eq!(
        agent_ids(&job["runs"], "agent_id"),
        std::slice::from_ref(&prod)
    );
    let (_, job) = api
        .job(
            json!({"command": "ping", "target": {"tags": ["role=db"]}, "ttl_s": 60}),
            None,
        )
        .await;
    assert_eq!(agent_ids(&job["runs"], "agent_id"), both);

    let (_, claimed) = api.get(&format!("/api/agents/{lab}")).await;
    assert_eq!(claimed["agent_tags"], json!(["fleet=prod", "role=db"]));
    assert_eq!(claimed["key_tags"], json!([]));
    let (_, given) = api.get(&format!("/api/agents/{prod}")).await;
    assert_eq!(given["agent_tags"], json!(["role=db"]));
    assert_eq!(given["key_tags"], json!(["fleet=prod"]));
    assert_eq!(given["tags"], json!(["role=db", "fleet=prod"]));

    // An operator may still give the tag to the lab agent, and then it counts.
    let (status, _) = api
        .patch(
            &format!("/api/agents/{lab}"),
            json!({"tags": ["fleet=prod"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, listed) = api.get("/api/agents?tag=fleet%3Dprod").await;
    assert_eq!(agent_ids(&listed, "agent_id"), both);
}

/// The real agent, started with another key on a state directory whose id is bound to the
/// first key, is told why and backs off as for a refused key (30 s base, not 1 s), and the id
/// stays bound to the first key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_agent_with_a_taken_id_says_why_and_backs_off() {
    let server = Server::start().await;
    let api = server.api();
    let (_, first_key) = api.agent_key().await;
    let (second_id, second_key) = api.agent_key().await;
    let mut agent = outpost_e2e::Agent::start(&server.url, &first_key);
    let id = agent.wait_online(&api).await;
    agent.terminate();
    api.wait_status(&id, "offline").await;

    let moved = outpost_e2e::Agent::start_with(
        &server.url,
        &second_key,
        Some(agent.state_dir.clone()),
        Vec::new(),
    );
    outpost_e2e::wait_for(
        "the agent to log the refusal",
        outpost_e2e::READY_TIMEOUT,
        || {
            let logs = moved.logs();
            async move { logs.contains("agent_id_taken").then_some(()) }
        },
    )
    .await;
    let logs = moved.logs();
    assert!(
        logs.contains("the server refused the agent key (or this agent id with it)")
            && logs.contains("retry_in"),
        "{logs}"
    );
    let (_, shown) = api.get(&format!("/api/agents/{id}")).await;
    assert_ne!(shown["key_id"], second_id.as_str());
    assert!(server.logs().contains("bound to another agent key"));
}
