//! The smaller findings of the hardening issue (#26 §6), each reproduced over the real
//! binaries: unbounded and unsanitised `register`s, output accepted after a run was final, an
//! idempotency key reused with another body, `run` data not validated on the single-agent
//! route, query errors that were not JSON, and an owner key that could not be revoked.

use std::time::Duration;

use outpost_e2e::ws::{self, Seen};
use outpost_e2e::{Agent, Scripts, Server};
use outpost_protocol::{ServerFrame, limits};
use reqwest::StatusCode;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(10);

/// A change to a `register`'s data.
type Change = Box<dyn FnOnce(&mut Value)>;

/// A `register` for `agent_id` with `change` applied to its data.
fn register_with(agent_id: &str, change: impl FnOnce(&mut Value)) -> Value {
    let mut frame = ws::register(agent_id);
    change(&mut frame["data"]);
    frame
}

/// Opens a WebSocket with `key`, sends `register` and returns what the server answered: the
/// `error` frame's code and message, then the close.
async fn refused_register(server: &Server, key: &str, register: &Value) -> (String, String) {
    let mut peer = ws::connect(&server.url, key).await.expect("connect");
    assert!(matches!(peer.frame().await, ServerFrame::Connected(_)));
    peer.send_json(register).await;
    let error = match peer.next(T).await {
        Seen::Frame(ServerFrame::Error(e)) => (e.code, e.message),
        other => panic!("expected an error frame, got {other:?}"),
    };
    assert_eq!(
        peer.closed(T).await,
        Some((limits::CLOSE_POLICY, "register refused".into())),
        "after {error:?}"
    );
    error
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_register_past_the_protocols_limits_is_refused_and_nothing_of_it_is_stored() {
    let server = Server::start().await;
    let api = server.api();
    let (_, key) = api.agent_key().await;

    let many_tags: Vec<String> = (0..100_000).map(|i| format!("t{i}")).collect();
    let many_scripts: Vec<Value> = (0..20_000)
        .map(|i| json!({"name": format!("s{i}")}))
        .collect();
    let cases: Vec<(Change, &str)> = vec![
        (
            Box::new(move |d| d["tags"] = json!(many_tags)),
            "tags: 100000 tags; the limit is 64",
        ),
        (
            Box::new(move |d| d["scripts"] = json!(many_scripts)),
            "scripts: 20000 scripts; the limit is 512",
        ),
        (
            // An OSC sequence that retitles the terminal, and a screen clear.
            Box::new(|d| d["hostname"] = json!("web\u{1b}]0;pwned\u{7}\u{1b}[2J")),
            "hostname: control character U+001B is not allowed",
        ),
        (
            Box::new(|d| d["hostname"] = json!("a\u{0}b")),
            "hostname: control character U+0000 is not allowed",
        ),
        (
            Box::new(|d| d["hostname"] = json!("h".repeat(256))),
            "hostname: 256 bytes; the limit is 255",
        ),
        (
            Box::new(|d| d["tags"] = json!(["ok", "bad\u{9b}31m"])),
            "tags[1]: control character U+009B is not allowed",
        ),
        (
            Box::new(|d| d["scripts"] = json!([{"name": "x", "description": "d".repeat(513)}])),
            "scripts[0].description: 513 bytes; the limit is 512",
        ),
        (
            Box::new(|d| d["scripts"] = json!([{"name": "../etc/passwd"}])),
            "scripts[0].name: script name \"../etc/passwd\" must be",
        ),
        (
            Box::new(|d| d["os"] = json!("Linux\r\n6.1")),
            "os: control character U+000D is not allowed",
        ),
    ];
    for (change, want) in cases {
        let id = uuid::Uuid::now_v7().to_string();
        let (code, message) = refused_register(&server, &key, &register_with(&id, change)).await;
        assert_eq!(code, "bad_frame");
        assert!(
            message.starts_with(want),
            "{message:?} should start with {want:?}"
        );
        let (status, body) = api.get(&format!("/api/agents/{id}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "stored anyway: {body}");
    }

    // Right at every limit is accepted and stored whole.
    let id = uuid::Uuid::now_v7().to_string();
    let tags: Vec<String> = (0..64)
        .map(|i| format!("{i:03}{}", "t".repeat(125)))
        .collect();
    let scripts: Vec<Value> = (0..512)
        .map(|i| json!({"name": format!("s{i}"), "description": format!("{i:03}{}", "d".repeat(509))}))
        .collect();
    let at_limits = register_with(&id, |d| {
        d["tags"] = json!(tags);
        d["scripts"] = json!(scripts);
        d["hostname"] = json!(format!("{}é", "h".repeat(253)));
    });
    let mut peer = ws::connect(&server.url, &key).await.expect("connect");
    assert!(matches!(peer.frame().await, ServerFrame::Connected(_)));
    peer.send_json(&at_limits).await;
    api.wait_online(&id).await;
    let (_, agent) = api.get(&format!("/api/agents/{id}")).await;
    assert_eq!(agent["tags"].as_array().map(Vec::len), Some(64));
    assert_eq!(agent["scripts"].as_array().map(Vec::len), Some(512));
    assert_eq!(agent["hostname"].as_str().map(str::len), Some(255));

    // A later `register` on the connection (a manifest change) is held to the same limits:
    // refused, the connection closed, the earlier registration kept.
    peer.send_json(&register_with(&id, |d| d["tags"] = json!(vec!["x"; 65])))
        .await;
    match peer.next(T).await {
        Seen::Frame(ServerFrame::Error(e)) => {
            assert_eq!(e.code, "bad_frame");
            assert_eq!(e.message, "tags: 65 tags; the limit is 64");
        }
        other => panic!("expected an error frame, got {other:?}"),
    }
    assert_eq!(
        peer.closed(T).await,
        Some((limits::CLOSE_POLICY, "register refused".into()))
    );
    let (_, agent) = api.get(&format!("/api/agents/{id}")).await;
    assert_eq!(agent["tags"].as_array().map(Vec::len), Some(64));
}

/// `POST /agent/v1/frames` with `body`.
async fn post_frames(server: &Server, key: &str, body: Value) -> (StatusCode, Value) {
    let response = reqwest::Client::new()
        .post(format!("{}/agent/v1/frames", server.url))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .expect("request");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_long_poll_transport_refuses_the_same_registers() {
    let server = Server::start().await;
    let api = server.api();
    let (_, key) = api.agent_key().await;

    let id = uuid::Uuid::now_v7().to_string();
    let bad = register_with(&id, |d| d["hostname"] = json!("web\u{1b}[2J"));
    let (status, body) = post_frames(&server, &key, json!({"frames": [bad]})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "bad_frame");
    assert_eq!(
        body["error"]["message"],
        "register refused: hostname: control character U+001B is not allowed"
    );
    assert_eq!(
        api.get(&format!("/api/agents/{id}")).await.0,
        StatusCode::NOT_FOUND
    );

    // A session's later `register` past a limit ends the session.
    let (status, opened) = post_frames(&server, &key, json!({"frames": [ws::register(&id)]})).await;
    assert_eq!(status, StatusCode::OK, "{opened}");
    let session = opened["session"].as_str().expect("session").to_owned();
    api.wait_online(&id).await;
    let many = register_with(&id, |d| {
        d["scripts"] = json!(
            (0..513)
                .map(|i| json!({"name": format!("s{i}")}))
                .collect::<Vec<_>>()
        );
    });
    let (status, body) = post_frames(
        &server,
        &key,
        json!({"agent_id": id, "session": session, "frames": [many]}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(
        body["error"]["message"],
        "session closed: register refused: scripts: 513 scripts; the limit is 512"
    );
    api.wait_status(&id, "offline").await;
    let (_, agent) = api.get(&format!("/api/agents/{id}")).await;
    assert_eq!(agent["scripts"], json!([]), "the first registration stays");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_agent_keeps_its_register_within_the_limits_and_says_what_it_left_out() {
    let server = Server::start().await;
    let api = server.api();
    let (_, key) = api.agent_key().await;
    // 520 scripts (one file), one with a long description full of escapes, 70 tags and one
    // with a control character: a manifest and a configuration the server would refuse whole.
    let mut scripts = Scripts::new();
    scripts.add("s000", "echo hi", json!({}));
    let entries: Vec<Value> = (0..520)
        .map(|i| {
            let mut entry = json!({"name": format!("s{i:03}"), "path": "s000.sh"});
            if i == 1 {
                entry["description"] = json!(format!("\u{1b}[31m{}", "d".repeat(600)));
            }
            entry
        })
        .collect();
    scripts.write_raw(&json!({ "scripts": entries }).to_string());
    let tags: Vec<String> = (0..70).map(|i| format!("t{i}")).collect();
    let mut env = scripts.env();
    env.push((
        "OUTPOST_TAGS".into(),
        format!("bad\u{1b}[2J,{}", tags.join(",")),
    ));
    let agent = Agent::start_with(&server.url, &key, None, env);
    let id = agent.wait_online(&api).await;

    let (_, stored) = api.get(&format!("/api/agents/{id}")).await;
    assert_eq!(stored["scripts"].as_array().map(Vec::len), Some(512));
    assert_eq!(stored["tags"].as_array().map(Vec::len), Some(64));
    assert_eq!(stored["tags"][0], "t0");
    let description = stored["scripts"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "s001"))
        .and_then(|s| s["description"].as_str())
        .expect("description")
        .to_owned();
    assert_eq!(description, format!("[31m{}", "d".repeat(508)));
    // The scripts left out still are not runnable, the kept ones are.
    let (status, job) = api
        .job(
            json!({"command": "run", "data": {"script": "s511"}, "target": {"agents": [id]}}),
            Some(30),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{job}");
    assert_eq!(job["runs"][0]["status"], "succeeded", "{job}");

    let logs = agent.logs();
    for said in [
        "more than 512 scripts",
        "OUTPOST_TAGS: control character U+001B",
        "more than 64 tags",
        "description is longer than 512 bytes",
    ] {
        assert!(
            logs.contains(said),
            "the agent's log does not say {said:?}:\n{logs}"
        );
    }
    assert!(
        !server.logs().contains("register refused"),
        "the server refused the real agent"
    );
}

/// A raw agent, registered with a `deploy` script, and the id it registered with.
async fn scripted_peer(server: &Server) -> (ws::Peer, String) {
    let (_, key) = server.api().agent_key().await;
    let id = uuid::Uuid::now_v7().to_string();
    let mut peer = ws::connect(&server.url, &key).await.expect("connect");
    assert!(matches!(peer.frame().await, ServerFrame::Connected(_)));
    peer.send_json(&register_with(&id, |d| {
        d["capabilities"] = json!(["ping", "run"]);
        d["scripts"] = json!([{"name": "deploy"}]);
    }))
    .await;
    server.api().wait_online(&id).await;
    (peer, id)
}

/// Creates a `run deploy` job for `agent`, reads its command on `peer`; returns (job, run).
async fn run_on(api: &outpost_e2e::Api, peer: &mut ws::Peer, agent: &str) -> (String, String) {
    let (status, job) = api
        .job(
            json!({"command": "run", "data": {"script": "deploy"}, "target": {"agents": [agent]}}),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    let run_id = match peer.frame().await {
        ServerFrame::Command(c) => c.command_id.to_string(),
        other => panic!("expected the command, got {other:?}"),
    };
    (job["job_id"].as_str().expect("job").to_owned(), run_id)
}

fn output(run_id: &str, seq: u64, data: &str) -> Value {
    json!({"type": "output", "command_id": run_id, "stream": "stdout", "seq": seq, "data": data})
}

fn response(run_id: &str) -> Value {
    json!({"type": "response", "command_id": run_id, "success": true,
           "data": {"exit_code": 0, "duration_ms": 5, "timed_out": false, "cancelled": false}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_after_a_run_is_final_is_refused_and_not_stored() {
    let server = Server::start().await;
    let api = server.api();
    let (mut peer, agent) = scripted_peer(&server).await;

    // A run that succeeds with one chunk of output.
    let (job_id, run_id) = run_on(&api, &mut peer, &agent).await;
    peer.send_json(&json!({"type": "ack", "command_id": run_id}))
        .await;
    peer.send_json(&output(&run_id, 0, "hello\n")).await;
    peer.send_json(&response(&run_id)).await;
    assert!(matches!(peer.frame().await, ServerFrame::Ack { .. }));
    let job = api.wait_job(&job_id).await;
    assert_eq!(job["runs"][0]["status"], "succeeded", "{job}");

    // A chunk sent again (as after a reconnect) is no error; a new one after the answer is
    // refused with `run_finished`, however many come: they are not counted as bad frames.
    peer.send_json(&output(&run_id, 0, "hello\n")).await;
    for seq in 999..1011 {
        peer.send_json(&output(&run_id, seq, "forged\n")).await;
        match peer.frame().await {
            ServerFrame::Error(e) => {
                assert_eq!(e.code, "run_finished");
                assert!(
                    e.message.contains(&run_id) && e.message.contains(&format!("chunk {seq}")),
                    "{e:?}"
                );
            }
            other => panic!("expected an error for chunk {seq}, got {other:?}"),
        }
    }
    let (_, bytes) = api.output(&job_id, &run_id, "").await;
    assert_eq!(String::from_utf8_lossy(&bytes), "hello\n");
    let (_, job) = api.get(&format!("/api/jobs/{job_id}")).await;
    assert_eq!(job["runs"][0]["stdout_bytes"], 6, "{job}");

    // Chunks after the answer in one write (so, likely, one writer batch, where output is
    // applied before results) are refused as well.
    let (job_id, run_id) = run_on(&api, &mut peer, &agent).await;
    peer.send_together(&[
        json!({"type": "ack", "command_id": run_id}),
        output(&run_id, 0, "mine\n"),
        response(&run_id),
        output(&run_id, 1, "forged\n"),
    ])
    .await;
    let mut refused = false;
    let mut acked = false;
    while !(refused && acked) {
        match peer.frame().await {
            ServerFrame::Error(e) if e.code == "run_finished" => refused = true,
            ServerFrame::Ack { command_id } if command_id.to_string() == run_id => acked = true,
            other => panic!("unexpected {other:?}"),
        }
    }
    api.wait_job(&job_id).await;
    let (_, bytes) = api.output(&job_id, &run_id, "").await;
    assert_eq!(String::from_utf8_lossy(&bytes), "mine\n");

    // The connection is still in use: a ping goes through it.
    let pinger = api.clone();
    let target = agent.clone();
    let ping = tokio::spawn(async move {
        pinger
            .command(&target, json!({"command": "ping", "timeout_s": 20}))
            .await
    });
    let ping_id = match peer.frame().await {
        ServerFrame::Command(c) => c.command_id.to_string(),
        other => panic!("expected the ping, got {other:?}"),
    };
    peer.send_json(&json!({"type": "response", "command_id": ping_id, "success": true, "data": {"pong": true}}))
        .await;
    let (status, pong) = ping.await.expect("join");
    assert_eq!(status, StatusCode::OK, "{pong}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_reused_with_another_request_is_refused() {
    let mut server = Server::start().await;
    let api = server.api();
    let (_peer, agent) = scripted_peer(&server).await;
    let request = json!({"command": "run", "idempotency_key": "deploy-2026-11-26",
        "data": {"script": "deploy", "params": {"VERSION": "1.2.3", "REGION": "eu"}},
        "target": {"agents": [agent]}});
    let (status, first) = api.job(request.clone(), None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    let job_id = first["job_id"].as_str().expect("job").to_owned();

    // The same request again (keys in another order, a default spelled out) is the first job.
    let same = json!({"target": {"agents": [agent]}, "timeout_s": 60,
        "data": {"params": {"REGION": "eu", "VERSION": "1.2.3"}, "script": "deploy"},
        "idempotency_key": "deploy-2026-11-26", "command": "run"});
    let (status, again) = api.job(same.clone(), None).await;
    assert!(status.is_success(), "{again}");
    assert_eq!(again["job_id"], job_id.as_str());

    // Another request with the key is refused, naming the first job.
    let mut other_params = request.clone();
    other_params["data"]["params"]["VERSION"] = json!("6.6.6");
    let mut other_target = request.clone();
    other_target["target"] = json!({"all": true});
    let mut other_timeout = request.clone();
    other_timeout["timeout_s"] = json!(5);
    for other in [other_params, other_target, other_timeout] {
        let (status, body) = api.job(other.clone(), None).await;
        assert_eq!(status, StatusCode::CONFLICT, "{other}: {body}");
        assert_eq!(body["error"]["code"], "idempotency_key_reused");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(&job_id), "{message}");
    }
    let (_, jobs) = api.get("/api/jobs").await;
    assert_eq!(jobs["jobs"].as_array().map(Vec::len), Some(1), "{jobs}");

    // The fingerprint is stored: the same holds after a restart.
    server.restart().await;
    let api = server.api();
    let (status, again) = api.job(same, None).await;
    assert!(status.is_success(), "{again}");
    assert_eq!(again["job_id"], job_id.as_str());
    let mut other = request;
    other["data"]["params"] = json!({});
    assert_eq!(api.job(other, None).await.0, StatusCode::CONFLICT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_data_is_validated_alike_on_every_route() {
    let server = Server::start().await;
    let api = server.api();
    let (_, key) = api.agent_key().await;
    let (key_id, _) = api.agent_key().await;
    let agent = uuid::Uuid::now_v7().to_string();
    let mut peer = ws::connect(&server.url, &key).await.expect("connect");
    peer.handshake_with_scripts(&agent, &["ok"]).await;
    api.wait_online(&agent).await;

    let many: serde_json::Map<String, Value> =
        (0..65).map(|i| (format!("P{i}"), json!("x"))).collect();
    let cases = [
        (json!({}), "data.script: a run needs the script's name"),
        (
            json!({"script": "../etc/passwd"}),
            "data.script: script name \"../etc/passwd\" must be",
        ),
        (
            json!({"script": "x", "params": ["A"]}),
            "data.params: must be an object of strings",
        ),
        (
            json!({"script": "x", "params": {"lower": "v"}}),
            "data.params: parameter name \"lower\" must match",
        ),
        (
            json!({"script": "x", "params": {"A": 5}}),
            "data.params.A: parameter A must be a string",
        ),
        (
            json!({"script": "x", "params": {"A": "a\u{0}b"}}),
            "data.params.A: parameter A contains NUL",
        ),
        (
            json!({"script": "x", "params": {"A": "v".repeat(32 * 1024 + 1)}}),
            "data.params.A: parameter A is 32769 bytes; the limit is 32768",
        ),
        (
            json!({"script": "x", "params": many}),
            "data.params: 65 parameters; the limit is 64",
        ),
    ];
    for (data, want) in cases {
        let routes = [
            (
                format!("/api/agents/{agent}/command"),
                json!({"command": "run", "data": data, "queue": true}),
            ),
            (
                format!("/api/agents/keys/{key_id}/command"),
                json!({"command": "run", "data": data}),
            ),
            (
                "/api/jobs".to_owned(),
                json!({"command": "run", "data": data, "target": {"agents": [agent]}}),
            ),
        ];
        for (path, body) in routes {
            let (status, answer) = api.post(&path, body).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{path} {data}: {answer}");
            assert_eq!(answer["error"]["code"], "bad_request");
            let message = answer["error"]["message"].as_str().unwrap_or_default();
            assert!(
                message.starts_with(want),
                "{path}: {message:?} should start with {want:?}"
            );
        }
    }
    // Nothing reached the agent: the next frame it gets is this valid run.
    let (status, queued) = api
        .job(
            json!({"command": "run", "data": {"script": "ok", "params": {"A": "v"}},
                   "target": {"agents": [agent]}}),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{queued}");
    match peer.frame().await {
        ServerFrame::Command(c) => assert_eq!(c.data["script"], "ok"),
        other => panic!("expected the valid run, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rejected_request_gets_the_json_error_envelope_naming_the_field() {
    let server = Server::start().await;
    let api = server.api();
    let client = reqwest::Client::new();
    let send = |method: reqwest::Method, path: &str, body: Option<&str>| {
        let mut request = client
            .request(method, format!("{}{path}", server.url))
            .bearer_auth(&server.admin_key);
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_owned());
        }
        request.send()
    };
    let cases: Vec<(reqwest::Method, String, Option<&str>, u16, &str)> = vec![
        (
            reqwest::Method::GET,
            "/api/jobs?limit=ten".into(),
            None,
            400,
            "query: limit: invalid digit",
        ),
        (
            reqwest::Method::GET,
            "/api/jobs?since=yesterday".into(),
            None,
            400,
            "query: since: ",
        ),
        (
            reqwest::Method::POST,
            "/api/jobs?wait=-1".into(),
            Some("{}"),
            400,
            "query: wait: invalid digit",
        ),
        (
            reqwest::Method::GET,
            "/api/jobs/x/runs/y/output?offset=many".into(),
            None,
            400,
            "query: offset: invalid digit",
        ),
        (
            reqwest::Method::POST,
            "/api/jobs".into(),
            Some("{\"command\": 5}"),
            400,
            "body: command: invalid type",
        ),
        (
            reqwest::Method::POST,
            "/api/jobs".into(),
            Some("{\"command\": \"ping\", \"target\": {\"agentz\": []}}"),
            400,
            "body: target.agentz: unknown field `agentz`",
        ),
        (
            reqwest::Method::POST,
            "/api/jobs".into(),
            Some("not json"),
            400,
            "body: ",
        ),
        (
            reqwest::Method::GET,
            "/api/agents/%FF".into(),
            None,
            400,
            "path: ",
        ),
        (
            reqwest::Method::GET,
            "/api/nothing-here".into(),
            None,
            404,
            "no route /api/nothing-here",
        ),
        (
            reqwest::Method::DELETE,
            "/api/jobs".into(),
            None,
            405,
            "DELETE is not served on /api/jobs",
        ),
    ];
    for (method, path, body, status, want) in cases {
        let response = send(method.clone(), &path, body).await.expect("request");
        assert_eq!(response.status().as_u16(), status, "{method} {path}");
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert_eq!(content_type, "application/json", "{method} {path}");
        let answer: Value = response.json().await.expect("json");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(
            answer["error"]["code"].is_string(),
            "{method} {path}: {answer}"
        );
        assert!(
            message.starts_with(want),
            "{method} {path}: {message:?} should start with {want:?}"
        );
    }
    // A body over the 1 MiB limit.
    let big = format!("{{\"command\": \"{}\"}}", "x".repeat(2 << 20));
    let response = send(reqwest::Method::POST, "/api/jobs", Some(&big))
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let answer: Value = response.json().await.expect("json");
    assert_eq!(answer["error"]["code"], "too_large", "{answer}");
    // A plain GET where a WebSocket upgrade is expected (with a good agent key).
    let (_, key) = api.agent_key().await;
    let response = client
        .get(format!("{}/agent/v1/ws", server.url))
        .bearer_auth(&key)
        .send()
        .await
        .expect("request");
    assert!(response.status().is_client_error(), "{}", response.status());
    let answer: Value = response.json().await.expect("json");
    assert!(
        answer["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("upgrade: ")),
        "{answer}"
    );
}

/// `outpost-server admin-key rotate --data-dir DIR`: its exit status and stdout.
fn rotate(data_dir: &std::path::Path) -> (bool, String) {
    let out = std::process::Command::new(outpost_e2e::bin_dir().join("outpost-server"))
        .args(["admin-key", "rotate", "--data-dir"])
        .arg(data_dir)
        .env_remove("OUTPOST_ADMIN_KEY")
        .env_remove("OUTPOST_DATABASE_URL")
        .output()
        .expect("running admin-key rotate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn admin_key_file(data_dir: &std::path::Path) -> String {
    std::fs::read_to_string(data_dir.join("admin.key"))
        .expect("admin.key")
        .trim()
        .to_owned()
}

async fn accepted(server: &Server, key: &str) -> bool {
    let (status, body) = server.api().with_token(key).get("/api/agents").await;
    match status {
        StatusCode::OK => true,
        StatusCode::UNAUTHORIZED => false,
        other => panic!("{other}: {body}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_key_is_not_printed_to_logs_and_can_be_rotated_running_or_stopped() {
    let mut server = Server::start().await;
    let dir = server.data_dir.clone();
    let first = server.admin_key.clone();
    // stdout is a pipe here, as under systemd or docker: it says where the key is, not what.
    let printed = server.stdout.lock().expect("stdout").join("\n");
    assert!(!printed.contains("opk_"), "{printed}");
    assert!(
        printed.contains(&format!("it is in {}", dir.join("admin.key").display())),
        "{printed}"
    );

    // While the server runs: the new key works at once, the old one stops.
    let (ok, said) = rotate(&dir);
    assert!(ok, "{said}");
    assert!(!said.contains("opk_"), "{said}");
    assert!(said.contains("Revoked 1 earlier owner key(s)"), "{said}");
    let second = admin_key_file(&dir);
    assert!(second.starts_with("opk_") && second != first);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.join("admin.key"))
        .expect("admin.key")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(accepted(&server, &second).await);
    assert!(!accepted(&server, &first).await, "the old key still works");

    // While it is stopped: the same, and a restart neither restores nor prints anything.
    server.terminate();
    let (ok, said) = rotate(&dir);
    assert!(ok, "{said}");
    let third = admin_key_file(&dir);
    server.restart().await;
    assert_eq!(server.admin_key, third);
    for old in [&first, &second] {
        assert!(!accepted(&server, old).await);
    }
    assert!(accepted(&server, &third).await);
    let printed = server.stdout.lock().expect("stdout").join("\n");
    assert!(!printed.contains("opk_"), "{printed}");

    // Without a database there is nothing to rotate, and it says so.
    let empty = tempfile::tempdir().expect("tmp");
    let (ok, said) = rotate(empty.path());
    assert!(!ok);
    assert!(said.contains("does not exist"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_admin_key_in_the_environment_revokes_the_previous_one() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("data");
    let with_key = |key: Option<&str>| outpost_e2e::ServerOptions {
        data_dir: Some(dir.clone()),
        envs: key
            .map(|k| vec![("OUTPOST_ADMIN_KEY".to_owned(), k.to_owned())])
            .unwrap_or_default(),
        ..Default::default()
    };
    // First start without one: a generated key in admin.key.
    let mut server = Server::start_with(with_key(None)).await;
    let generated = server.admin_key.clone();
    server.terminate();
    drop(server);

    let k1 = format!("opk_{}", "1".repeat(40));
    let k2 = format!("opk_{}", "2".repeat(40));
    let mut server = Server::start_with(with_key(Some(&k1))).await;
    assert!(accepted(&server, &k1).await);
    assert!(
        !accepted(&server, &generated).await,
        "the generated key still works"
    );
    assert!(
        !dir.join("admin.key").exists(),
        "admin.key still holds the revoked key"
    );
    server.terminate();
    drop(server);

    let mut server = Server::start_with(with_key(Some(&k2))).await;
    assert!(accepted(&server, &k2).await);
    assert!(
        !accepted(&server, &k1).await,
        "the previous OUTPOST_ADMIN_KEY still works"
    );
    server.terminate();
    drop(server);

    // Going back to a revoked key does not bring it back: it is refused, with a warning.
    let server = Server::start_with(outpost_e2e::ServerOptions {
        envs: vec![("OUTPOST_ADMIN_KEY".to_owned(), k1.clone())],
        ..with_key(None)
    })
    .await;
    assert!(!accepted(&server, &k1).await);
    assert!(accepted(&server, &k2).await);
    assert!(
        server
            .logs()
            .contains("OUTPOST_ADMIN_KEY holds an owner key that was revoked")
    );
}
