//! The HTTP long-poll fallback: the raw routes, an agent told to use it, an agent that finds
//! WebSockets blocked by a proxy and comes back to them, and a proxy that cuts long requests.

use std::time::Duration;

use outpost_e2e::proxy::Proxy;
use outpost_e2e::{Agent, Api, READY_TIMEOUT, Scripts, Server, ServerOptions, wait_for};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// The transport an agent is connected over, if it is.
async fn transport(api: &Api, agent_id: &str) -> Option<String> {
    let (_, connected) = api.get("/api/agents/connected").await;
    connected
        .as_array()?
        .iter()
        .find(|a| a["agent_id"] == agent_id)
        .and_then(|a| a["transport"].as_str().map(str::to_owned))
}

async fn wait_transport(api: &Api, agent_id: &str, want: &str) {
    wait_for(
        &format!("agent {agent_id} on {want}"),
        READY_TIMEOUT,
        || async { (transport(api, agent_id).await.as_deref() == Some(want)).then_some(()) },
    )
    .await;
}

/// A script that records its run id, prints `first`, waits for a gate file, prints `second`.
fn add_gated(scripts: &mut Scripts, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let gate = scripts.dir().join(format!("{name}.gate"));
    let marker = scripts.dir().join(format!("{name}.runs"));
    scripts.add(
        name,
        &format!(
            "echo \"$OUTPOST_RUN_ID\" >> {marker}; echo first; while [ ! -e {gate} ]; do sleep 0.05; done; echo second",
            marker = marker.display(),
            gate = gate.display()
        ),
        json!({}),
    );
    (gate, marker)
}

async fn start_run(api: &Api, agent_id: &str, script: &str) -> (String, String) {
    let (code, job) = api
        .job(
            json!({"command": "run", "data": {"script": script}, "target": {"agents": [agent_id]}}),
            None,
        )
        .await;
    assert_eq!(code, StatusCode::ACCEPTED, "{job}");
    (
        job["job_id"].as_str().expect("job_id").to_owned(),
        job["runs"][0]["run_id"]
            .as_str()
            .expect("run_id")
            .to_owned(),
    )
}

async fn wait_output(api: &Api, job_id: &str, run_id: &str, want: &str) {
    wait_for(&format!("output {want:?}"), READY_TIMEOUT, || async {
        let (_, out) = api.output(job_id, run_id, "").await;
        (String::from_utf8_lossy(&out) == want).then_some(())
    })
    .await;
}

async fn ping(api: &Api, agent_id: &str) {
    let (code, result) = api
        .command(agent_id, json!({"command": "ping", "timeout_s": 20}))
        .await;
    assert_eq!(code, StatusCode::OK, "{result}");
    assert_eq!(result["data"], json!({"pong": true}), "{result}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_told_to_use_long_poll_runs_commands_and_streams_output() {
    let server = Server::start().await;
    let api = server.api();
    let mut scripts = Scripts::new();
    let (gate, marker) = add_gated(&mut scripts, "gated");
    let (_, secret) = api.agent_key().await;
    let mut env = scripts.env();
    env.push(("OUTPOST_HTTP_FALLBACK".into(), "1".into()));
    let agent = Agent::start_with(&server.url, &secret, None, env);
    let id = agent.wait_online(&api).await;
    assert_eq!(transport(&api, &id).await.as_deref(), Some("http"));

    ping(&api, &id).await;
    let (code, echo) = api
        .command(
            &id,
            json!({"command": "echo", "data": {"message": "over http"}}),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{echo}");
    assert_eq!(echo["data"]["message"], "over http");

    // Output streams while the script still runs, then the rest arrives in order.
    let (job_id, run_id) = start_run(&api, &id, "gated").await;
    wait_output(&api, &job_id, &run_id, "first\n").await;
    std::fs::write(&gate, "").expect("open the gate");
    let job = api.wait_job(&job_id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    wait_output(&api, &job_id, &run_id, "first\nsecond\n").await;
    let runs = std::fs::read_to_string(&marker).expect("marker");
    assert_eq!(runs.lines().collect::<Vec<_>>(), vec![run_id.as_str()]);
    assert!(
        !agent.logs().contains("WebSocket"),
        "a forced fallback never tries WebSockets:\n{}",
        agent.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_upgrades_move_the_agent_to_long_poll_and_back_without_running_anything_twice() {
    let server = Server::start().await;
    let api = server.api();
    let proxy = Proxy::start(server.addr).await;
    proxy.block_upgrades(true);
    let mut scripts = Scripts::new();
    let (gate, marker) = add_gated(&mut scripts, "gated");
    let (_, secret) = api.agent_key().await;
    let mut env = scripts.env();
    env.push(("OUTPOST_WS_RETRY_INTERVAL".into(), "2".into()));
    let agent = Agent::start_with(&proxy.url, &secret, None, env);

    // No configuration: three refused upgrades, then long-poll.
    let id = agent.wait_online(&api).await;
    wait_transport(&api, &id, "http").await;
    assert!(
        proxy.refused_upgrades() >= 3,
        "{}",
        proxy.refused_upgrades()
    );
    ping(&api, &id).await;

    // A run starts over long-poll and streams its first line...
    let (job_id, run_id) = start_run(&api, &id, "gated").await;
    wait_output(&api, &job_id, &run_id, "first\n").await;

    // ...the proxy lets upgrades through again and the agent goes back to a WebSocket...
    proxy.block_upgrades(false);
    wait_transport(&api, &id, "websocket").await;
    assert!(proxy.passed_upgrades() >= 1);

    // ...and the run finishes over it, whole, having run once.
    std::fs::write(&gate, "").expect("open the gate");
    let job = api.wait_job(&job_id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    wait_output(&api, &job_id, &run_id, "first\nsecond\n").await;
    ping(&api, &id).await;
    let runs = std::fs::read_to_string(&marker).expect("marker");
    assert_eq!(
        runs.lines().collect::<Vec<_>>(),
        vec![run_id.as_str()],
        "the command reached the agent over both transports but must run once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_that_cuts_long_requests_degrades_to_interval_polling() {
    let server = Server::start().await;
    let api = server.api();
    let proxy = Proxy::start(server.addr).await;
    proxy.block_upgrades(true);
    proxy.cut_after(Some(Duration::from_millis(1500)));
    let (_, secret) = api.agent_key().await;
    let env = vec![
        ("OUTPOST_HTTP_FALLBACK".to_owned(), "1".to_owned()),
        ("OUTPOST_HTTP_POLL_INTERVAL".to_owned(), "1".to_owned()),
    ];
    let agent = Agent::start_with(&proxy.url, &secret, None, env);
    let id = agent.wait_online(&api).await;
    wait_for("the agent to give up long polls", READY_TIMEOUT, || async {
        agent
            .logs()
            .contains("polling every interval")
            .then_some(())
    })
    .await;
    ping(&api, &id).await;
    ping(&api, &id).await;
}

/// A hand-driven long-poll client, to check the routes themselves.
struct RawAgent {
    http: reqwest::Client,
    base: String,
    key: String,
    agent_id: String,
    session: String,
}

impl RawAgent {
    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.key)
            .json(&body)
            .send()
            .await
            .expect("request");
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn register(base: &str, key: &str) -> (Self, Value) {
        let agent_id = uuid::Uuid::now_v7().to_string();
        let mut agent = Self {
            http: reqwest::Client::new(),
            base: base.to_owned(),
            key: key.to_owned(),
            agent_id: agent_id.clone(),
            session: String::new(),
        };
        let register = json!({"type": "register", "data": {
            "agent_id": agent_id, "hostname": "raw", "ip": "127.0.0.1", "version": "0.0.1",
            "os": "test", "arch": "x86_64", "protocol": 1, "capabilities": ["ping"],
            "tags": [], "scripts": []}});
        let (code, answer) = agent
            .post("/agent/v1/frames", json!({"frames": [register]}))
            .await;
        assert_eq!(code, StatusCode::OK, "{answer}");
        agent.session = answer["session"].as_str().expect("session").to_owned();
        (agent, answer)
    }

    async fn poll(&self, wait_s: u32, cursor: u64) -> (StatusCode, Value) {
        self.post(
            "/agent/v1/poll",
            json!({"agent_id": self.agent_id, "session": self.session, "wait_s": wait_s, "cursor": cursor}),
        )
        .await
    }

    async fn frames(&self, frames: Value) -> (StatusCode, Value) {
        self.post(
            "/agent/v1/frames",
            json!({"agent_id": self.agent_id, "session": self.session, "frames": frames}),
        )
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_long_poll_routes_deliver_resend_until_acknowledged_and_refuse_bad_input() {
    let server = Server::start_with(ServerOptions {
        args: vec!["--heartbeat-interval".into(), "1".into()],
        ..Default::default()
    })
    .await;
    let api = server.api();
    let (_, key) = api.agent_key().await;

    // Credentials come first, then a session.
    let stranger = RawAgent {
        http: reqwest::Client::new(),
        base: server.url.clone(),
        key: "opa_not_a_key".into(),
        agent_id: uuid::Uuid::now_v7().to_string(),
        session: "nope".into(),
    };
    assert_eq!(stranger.poll(0, 0).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(stranger.frames(json!([])).await.0, StatusCode::UNAUTHORIZED);
    let unregistered = RawAgent {
        key: key.clone(),
        ..stranger
    };
    let (code, body) = unregistered.poll(0, 0).await;
    assert_eq!(code, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "not_registered");
    let (code, body) = unregistered
        .frames(json!([{"type": "heartbeat", "status": {}}]))
        .await;
    assert_eq!(code, StatusCode::CONFLICT, "{body}");

    let (agent, answer) = RawAgent::register(&server.url, &key).await;
    assert_eq!(answer["frames"][0]["type"], "connected", "{answer}");
    assert_eq!(answer["frames"][0]["heartbeat_interval_s"], 1);
    api.wait_online(&agent.agent_id).await;
    assert_eq!(
        transport(&api, &agent.agent_id).await.as_deref(),
        Some("http")
    );

    // A command reaches a waiting poll; a lost answer is sent again until the cursor moves.
    let api2 = api.clone();
    let target = agent.agent_id.clone();
    let command = tokio::spawn(async move {
        api2.command(&target, json!({"command": "ping", "timeout_s": 20}))
            .await
    });
    let (code, first) = agent.poll(20, 0).await;
    assert_eq!(code, StatusCode::OK, "{first}");
    assert_eq!(first["frames"][0]["type"], "command", "{first}");
    let cursor = first["cursor"].as_u64().expect("cursor");
    let (_, again) = agent.poll(0, 0).await;
    assert_eq!(
        again["frames"], first["frames"],
        "resent while unacknowledged"
    );
    let (_, after) = agent.poll(0, cursor).await;
    assert_eq!(after["frames"], json!([]));
    assert_eq!(after["cursor"], cursor);

    // The answer is acknowledged in the same round trip; a bad frame in the batch is answered
    // with an error frame and does not stop the others.
    let command_id = first["frames"][0]["command_id"].clone();
    let (code, answer) = agent
        .frames(json!([
            {"type": "ack", "command_id": command_id},
            {"type": "no_such_frame"},
            {"type": "response", "command_id": command_id, "success": true, "data": {"pong": true}, "error": null},
        ]))
        .await;
    assert_eq!(code, StatusCode::OK, "{answer}");
    let kinds: Vec<_> = answer["frames"]
        .as_array()
        .expect("frames")
        .iter()
        .map(|f| f["type"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(kinds, ["error", "ack"], "{answer}");
    assert_eq!(answer["frames"][0]["code"], "unknown_type");
    let (code, result) = command.await.expect("command task");
    assert_eq!(code, StatusCode::OK, "{result}");
    assert_eq!(result["data"], json!({"pong": true}));

    // Limits: an oversized frame, an oversized batch.
    let big = "x".repeat(outpost_protocol::limits::MAX_FRAME_BYTES + 1);
    let (code, body) = agent
        .frames(json!([{"type": "heartbeat", "status": {}, "pad": big}]))
        .await;
    assert_eq!(code, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    let chunk = "y".repeat(900 * 1024);
    let batch: Vec<Value> = (0..5)
        .map(|_| json!({"type": "heartbeat", "status": {}, "pad": chunk}))
        .collect();
    let (code, body) = agent.frames(Value::Array(batch)).await;
    assert_eq!(code, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["error"]["code"], "too_large", "{body}");

    // Polling alone keeps the agent online past three heartbeat intervals...
    for _ in 0..3 {
        let (code, _) = agent.poll(2, cursor).await;
        assert_eq!(code, StatusCode::OK);
        let (_, view) = api.get(&format!("/api/agents/{}", agent.agent_id)).await;
        assert_eq!(view["status"], "online", "{view}");
    }
    // ...and silence takes it offline; its session is then gone.
    api.wait_status(&agent.agent_id, "offline").await;
    let (code, body) = agent.poll(0, cursor).await;
    assert_eq!(code, StatusCode::CONFLICT, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_posted_with_its_response_is_not_written_on_its_own() {
    use crate::metrics::{assert_ack_folded, scrape};

    let server = Server::start().await;
    let api = server.api();
    let (_, key) = api.agent_key().await;
    let (agent, _) = RawAgent::register(&server.url, &key).await;
    api.wait_online(&agent.agent_id).await;

    let call = {
        let (api, target) = (api.clone(), agent.agent_id.clone());
        tokio::spawn(async move {
            api.command(&target, json!({"command": "ping", "timeout_s": 20}))
                .await
        })
    };
    let (code, polled) = agent.poll(20, 0).await;
    assert_eq!(code, StatusCode::OK, "{polled}");
    assert_eq!(polled["frames"][0]["type"], "command", "{polled}");
    let command_id = polled["frames"][0]["command_id"].clone();
    let (_, before) = scrape(&agent.http, &server.url, Some(&server.admin_key)).await;

    let (code, answer) = agent
        .frames(json!([
            {"type": "ack", "command_id": command_id},
            {"type": "response", "command_id": command_id, "success": true, "data": {"pong": true}, "error": null},
        ]))
        .await;
    assert_eq!(code, StatusCode::OK, "{answer}");
    assert_eq!(answer["frames"][0]["type"], "ack", "{answer}");
    assert_eq!(answer["frames"][0]["command_id"], command_id, "{answer}");
    let (code, result) = call.await.expect("command task");
    assert_eq!(code, StatusCode::OK, "{result}");
    assert_eq!(result["status"], "succeeded", "{result}");
    let stored = api
        .wait_command_final(command_id.as_str().expect("id"))
        .await;
    assert!(
        stored["delivered_at"].is_string(),
        "the response recorded the delivery: {stored}"
    );

    let (_, after) = scrape(&agent.http, &server.url, Some(&server.admin_key)).await;
    assert_ack_folded(&before, &after);
}
