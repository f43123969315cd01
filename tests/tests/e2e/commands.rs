//! An agent connects and answers the built-in commands through every REST path; permissions,
//! offline agents, queueing and timeouts behave as the contract says.

use std::time::Duration;

use outpost_e2e::ws::{self, Seen};
use outpost_e2e::{Agent, Server};
use outpost_protocol::ServerFrame;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builtins_answer_through_every_rest_path() {
    let server = Server::start().await;
    let api = server.api();
    let (key_id, secret) = api
        .create_key(json!({"name": "fleet", "tags": ["from-key"]}))
        .await;
    let agent = Agent::start_with(
        &server.url,
        &secret,
        None,
        vec![("OUTPOST_TAGS".into(), "prod, role=db".into())],
    );
    let id = agent.wait_online(&api).await;

    let (status, ping) = api.command(&id, json!({"command": "ping"})).await;
    assert_eq!(status, StatusCode::OK, "{ping}");
    assert_eq!(ping["status"], "succeeded");
    assert_eq!(ping["data"], json!({"pong": true}));
    assert!(ping["delivered_at"].is_string() && ping["finished_at"].is_string());

    let (status, echo) = api
        .command(
            &id,
            json!({"command": "echo", "data": {"message": "héllo ✓"}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(echo["data"]["message"], "héllo ✓");

    let (_, info) = api.command(&id, json!({"command": "info"})).await;
    let data = &info["data"];
    assert_eq!(data["agent_id"], id.as_str());
    assert_eq!(data["protocol"], 1);
    assert!(data["uptime_s"].is_u64());
    assert!(
        data["rust_version"]
            .as_str()
            .is_some_and(|v| v.starts_with("rustc"))
    );
    for field in ["hostname", "os", "arch", "version"] {
        assert!(
            data[field].as_str().is_some_and(|s| !s.is_empty()),
            "info.{field}: {data}"
        );
    }

    // The stored command reads back the same.
    let (status, stored) = api
        .get(&format!(
            "/api/commands/{}",
            echo["command_id"].as_str().expect("id")
        ))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(stored["data"]["message"], "héllo ✓");

    // Fan-out by key.
    let (status, pings) = api
        .post(&format!("/api/agents/keys/{key_id}/ping"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{pings}");
    let results = pings["results"].as_array().expect("results");
    assert_eq!(results.len(), 1);
    assert_eq!(results[0]["agent_id"], id.as_str());
    assert_eq!(results[0]["command"]["data"]["pong"], true);
    let (status, echoes) = api
        .post(
            &format!("/api/agents/keys/{key_id}/command"),
            json!({"command": "echo", "data": {"message": "all"}, "timeout_s": 5}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{echoes}");
    assert_eq!(echoes["results"][0]["command"]["data"]["message"], "all");

    // Listings, filters and tags.
    let (_, connected) = api.get("/api/agents/connected").await;
    assert_eq!(connected[0]["agent_id"], id.as_str());
    assert_eq!(connected[0]["transport"], "websocket");
    let (_, listed) = api.get("/api/agents?tag=role%3Ddb&status=online").await;
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    let tags = listed[0]["tags"].as_array().expect("tags");
    for tag in ["prod", "role=db", "from-key"] {
        assert!(tags.contains(&json!(tag)), "{tag} missing from {tags:?}");
    }
    let (_, none) = api.get("/api/agents?tag=nope").await;
    assert_eq!(none, json!([]));
    let (status, bad) = api.get("/api/agents?status=sleepy").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        bad["error"]["message"]
            .as_str()
            .expect("msg")
            .contains("status")
    );

    let (status, patched) = api
        .patch(&format!("/api/agents/{id}"), json!({"tags": ["patched"]}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(patched["server_tags"], json!(["patched"]));
    let (_, listed) = api.get("/api/agents?tag=patched").await;
    assert_eq!(listed.as_array().map(Vec::len), Some(1));

    // The heartbeat carries metrics; wait for the first one (interval 1 s here would be
    // nicer, but the default is exercised: register data is there at once).
    let (_, one) = api.get(&format!("/api/agents/{id}")).await;
    assert_eq!(one["status"], "online");
    assert_eq!(one["ip"], "127.0.0.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_carry_metrics_and_silence_means_offline() {
    let server = outpost_e2e::Server::start_with(outpost_e2e::ServerOptions {
        args: vec!["--heartbeat-interval".into(), "1".into()],
        ..Default::default()
    })
    .await;
    let api = server.api();
    let (_, secret) = api.agent_key().await;
    let agent = Agent::start(&server.url, &secret);
    let id = agent.wait_online(&api).await;
    let metrics = outpost_e2e::wait_for("a heartbeat", outpost_e2e::READY_TIMEOUT, || async {
        let (_, a) = api.get(&format!("/api/agents/{id}")).await;
        a["last_heartbeat"]
            .is_object()
            .then(|| a["last_heartbeat"].clone())
    })
    .await;
    for field in [
        "cpu_percent",
        "memory_percent",
        "disk_percent",
        "load1",
        "uptime_s",
    ] {
        assert!(metrics[field].is_number(), "{field} in {metrics}");
    }
    assert!(
        metrics["memory_percent"]
            .as_f64()
            .is_some_and(|m| m > 0.0 && m <= 100.0)
    );

    // A peer that registers and then says nothing is dropped after 3 missed intervals.
    let mut peer = ws::connect(&server.url, &secret).await.expect("connect");
    let silent = uuid::Uuid::now_v7().to_string();
    assert_eq!(peer.handshake(&silent).await, 1);
    api.wait_online(&silent).await;
    let started = std::time::Instant::now();
    let closed = peer.closed(Duration::from_secs(30)).await;
    assert_eq!(closed.map(|c| c.1), Some("heartbeat missed".to_owned()));
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "closed too early: {:?}",
        started.elapsed()
    );
    api.wait_status(&silent, "offline").await;
    // The real agent, heartbeating, stayed online all along.
    let (_, a) = api.get(&format!("/api/agents/{id}")).await;
    assert_eq!(a["status"], "online");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissions_are_enforced_and_refused_commands_never_sent() {
    let server = Server::start().await;
    let api = server.api();
    let (_, secret) = api
        .create_key(json!({"name": "ping-only", "permissions": ["ping"]}))
        .await;
    let mut peer = ws::connect(&server.url, &secret).await.expect("connect");
    let id = uuid::Uuid::now_v7().to_string();
    match peer.frame().await {
        ServerFrame::Connected(c) => assert_eq!(c.permissions, vec!["ping".to_owned()]),
        other => panic!("{other:?}"),
    }
    peer.send_json(&ws::register(&id)).await;
    api.wait_online(&id).await;

    let (status, err) = api
        .command(&id, json!({"command": "echo", "data": {"message": "x"}}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{err}");
    assert_eq!(err["error"]["code"], "forbidden");
    assert!(
        err["error"]["message"]
            .as_str()
            .expect("msg")
            .contains("echo")
    );

    // Nothing reached the agent: the next frame it sees is the ping sent now.
    let api2 = api.clone();
    let id2 = id.clone();
    let ping = tokio::spawn(async move {
        api2.command(&id2, json!({"command": "ping", "timeout_s": 10}))
            .await
    });
    let command_id = match peer.frame().await {
        ServerFrame::Command(c) => {
            assert_eq!(c.command, "ping");
            c.command_id
        }
        other => panic!("expected the ping, got {other:?}"),
    };
    peer.send_json(&json!({"type": "ack", "command_id": command_id}))
        .await;
    peer.send_json(&json!({"type": "response", "command_id": command_id, "success": true, "data": {"pong": true}, "error": null})).await;
    match peer.frame().await {
        ServerFrame::Ack { command_id: acked } => assert_eq!(acked, command_id),
        other => panic!("expected the server's ack, got {other:?}"),
    }
    let (status, body) = ping.await.expect("join");
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "succeeded");

    // Unknown command names are a 400 naming the field.
    let (status, err) = api.command(&id, json!({"command": "rm -rf"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        err["error"]["message"]
            .as_str()
            .expect("msg")
            .starts_with("command:")
    );
}

/// A command to a connected agent reads the agent's row and key from a copy the server keeps
/// for a second (`outpost_store::credential_cache`); narrowing the key's permissions refuses
/// the very next command all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_narrowed_key_refuses_the_next_command_though_rows_are_kept() {
    let server = Server::start().await;
    let api = server.api();
    let (key_id, secret) = api
        .create_key(json!({"name": "deploy", "permissions": ["ping", "echo"]}))
        .await;
    let agent = Agent::start(&server.url, &secret);
    let id = agent.wait_online(&api).await;
    let echo = json!({"command": "echo", "data": {"message": "hi"}});
    for _ in 0..3 {
        let (status, body) = api.command(&id, echo.clone()).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let kept = server
        .metric("outpost_agent_row_reads_total", "from=\"kept\"")
        .await;
    assert!(kept >= 1.0, "no command used a kept row ({kept})");

    let (status, body) = api
        .patch(
            &format!("/api/agents/keys/{key_id}"),
            json!({"permissions": ["ping"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, err) = api.command(&id, echo.clone()).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{err}");
    assert_eq!(err["error"]["code"], "forbidden");
    let (status, body) = api.command(&id, json!({"command": "ping"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_agents_get_409_or_a_queued_command() {
    let server = Server::start().await;
    let api = server.api();
    let (_, secret) = api.agent_key().await;
    let mut agent = Agent::start(&server.url, &secret);
    let id = agent.wait_online(&api).await;
    agent.terminate();
    api.wait_status(&id, "offline").await;

    let (status, err) = api.command(&id, json!({"command": "ping"})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{err}");
    assert_eq!(err["error"]["code"], "agent_offline");

    let (status, queued) = api
        .command(
            &id,
            json!({"command": "echo", "data": {"message": "later"}, "queue": true, "ttl_s": 600}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{queued}");
    assert_eq!(queued["status"], "pending");
    let command_id = queued["command_id"].as_str().expect("id").to_owned();

    // A command whose TTL passes undelivered expires, and is counted once.
    let http = reqwest::Client::new();
    let (_, before) = crate::metrics::scrape(&http, &server.url, Some(&server.admin_key)).await;
    let (_, short) = api
        .command(&id, json!({"command": "ping", "queue": true, "ttl_s": 0}))
        .await;
    let short_id = short["command_id"].as_str().expect("id").to_owned();

    agent.restart();
    api.wait_online(&id).await;
    let done = api.wait_command_final(&command_id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["data"]["message"], "later");
    let expired = api.wait_command_final(&short_id).await;
    assert_eq!(expired["status"], "expired", "{expired}");
    assert_eq!(expired["error"]["code"], "expired");
    let (_, after) = crate::metrics::scrape(&http, &server.url, Some(&server.admin_key)).await;
    let series = r#"outpost_commands_finished_total{state="expired"}"#;
    assert_eq!(
        crate::metrics::value(&after, series) - crate::metrics::value(&before, series),
        1.0,
        "{after}"
    );

    let (status, _) = api
        .command(
            &uuid::Uuid::now_v7().to_string(),
            json!({"command": "ping"}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_never_answers_gives_504_and_the_late_answer_is_kept() {
    let server = Server::start().await;
    let api = server.api();
    let (_, secret) = api.agent_key().await;
    let mut peer = ws::connect(&server.url, &secret).await.expect("connect");
    let id = uuid::Uuid::now_v7().to_string();
    peer.handshake(&id).await;
    api.wait_online(&id).await;

    let (status, err) = api
        .command(&id, json!({"command": "ping", "timeout_s": 1}))
        .await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{err}");
    assert_eq!(err["error"]["code"], "timeout");
    let command_id = match peer.next(Duration::from_secs(5)).await {
        Seen::Frame(ServerFrame::Command(c)) => c.command_id,
        other => panic!("{other:?}"),
    };
    peer.send_json(&json!({"type": "response", "command_id": command_id, "success": true, "data": {"pong": true}, "error": null})).await;
    let stored = api.wait_command_final(&command_id.to_string()).await;
    assert_eq!(stored["status"], "succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_openapi_and_docs_are_served() {
    let server = Server::start().await;
    let anonymous = outpost_e2e::Api::new(&server.url, "");
    let (status, health) = anonymous.get("/healthz").await;
    assert_eq!(
        (status, health["status"].as_str()),
        (StatusCode::OK, Some("ok"))
    );
    let (status, ready) = anonymous.get("/readyz").await;
    assert_eq!(
        (status, ready["status"].as_str()),
        (StatusCode::OK, Some("ready"))
    );
    let (status, doc) = anonymous.get("/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["paths"]["/api/agents/{id}/command"]["post"].is_object());
    let committed: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../server/web/openapi.json"
        ))
        .expect("server/web/openapi.json"),
    )
    .expect("json");
    assert_eq!(doc, committed, "the served document is the committed one");
    // The interactive viewer is served from the binary itself (no CDN).
    let page = reqwest::get(format!("{}/docs/", server.url))
        .await
        .expect("docs");
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.expect("html");
    assert!(html.contains("swagger-ui"), "{html}");
    let bundle = reqwest::get(format!("{}/docs/swagger-ui-bundle.js", server.url))
        .await
        .expect("js");
    assert_eq!(bundle.status(), StatusCode::OK);
    let (status, _) = anonymous.get("/api/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_commands_need_a_supervisor_and_exit_with_their_code() {
    let server = Server::start_with(outpost_e2e::ServerOptions {
        args: vec!["--log-format".into(), "json".into()],
        ..Default::default()
    })
    .await;
    let api = server.api();
    let (_, secret) = api
        .create_key(
            json!({"name": "ops", "permissions": ["ping", "restart", "update", "redeploy"]}),
        )
        .await;

    // Unsupervised: refused with a clear error, and the agent keeps running.
    let mut alone = Agent::start_with(
        &server.url,
        &secret,
        None,
        // Booleans take 1/0, true/false, yes/no in every binary.
        vec![("OUTPOST_SUPERVISED".into(), "no".into())],
    );
    let id = alone.wait_online(&api).await;
    let (status, refused) = api.command(&id, json!({"command": "restart"})).await;
    assert_eq!(status, StatusCode::OK, "{refused}");
    assert_eq!(refused["status"], "failed");
    assert_eq!(refused["error"]["code"], "unsupported");
    assert!(
        refused["error"]["message"]
            .as_str()
            .expect("msg")
            .contains("outpost-supervisor")
    );
    assert!(alone.wait_exit(Duration::from_millis(200)).is_none());
    // SIGTERM is a clean stop.
    assert_eq!(alone.terminate().and_then(|s| s.code()), Some(0));

    for (command, code) in [("restart", 42), ("update", 43), ("redeploy", 44)] {
        let envs = vec![
            ("OUTPOST_SUPERVISED".into(), "1".into()),
            ("OUTPOST_LOG_FORMAT".into(), "json".into()),
        ];
        let mut agent = Agent::start_with(&server.url, &secret, None, envs);
        let id = agent.wait_online(&api).await;
        let (status, answer) = api
            .command(
                &id,
                json!({"command": command, "data": {"version": "9.9.9"}}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert_eq!(answer["data"]["exit_code"], code, "{answer}");
        let exit = agent
            .wait_exit(Duration::from_secs(15))
            .expect("the agent exits");
        assert_eq!(exit.code(), Some(code), "{command}");
        if command == "update" {
            let target = std::fs::read_to_string(agent.state_dir.join("target_version"))
                .expect("target_version");
            assert_eq!(target, "9.9.9");
        }
        // Logs in JSON are one object a line.
        for line in agent.logs().lines().filter(|l| !l.trim().is_empty()) {
            serde_json::from_str::<serde_json::Value>(line)
                .unwrap_or_else(|e| panic!("{e}: {line}"));
        }
    }

    // OUTPOST_SKIP_UPDATE refuses updates.
    let agent = Agent::start_with(
        &server.url,
        &secret,
        None,
        vec![
            ("OUTPOST_SUPERVISED".into(), "yes".into()),
            ("OUTPOST_SKIP_UPDATE".into(), "true".into()),
        ],
    );
    let id = agent.wait_online(&api).await;
    let (_, refused) = api.command(&id, json!({"command": "update"})).await;
    assert_eq!(refused["error"]["code"], "unsupported", "{refused}");

    for line in server.logs().lines().filter(|l| !l.trim().is_empty()) {
        serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_agent_forgets_it_and_disconnects_it() {
    let server = Server::start().await;
    let api = server.api();
    let (_, secret) = api.agent_key().await;
    let mut peer = ws::connect(&server.url, &secret).await.expect("connect");
    let id = uuid::Uuid::now_v7().to_string();
    peer.handshake(&id).await;
    api.wait_online(&id).await;
    let (status, _) = api.delete(&format!("/api/agents/{id}")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let closed = peer.closed(Duration::from_secs(5)).await;
    assert_eq!(closed.map(|c| c.1), Some("agent deleted".to_owned()));
    let (status, _) = api.get(&format!("/api/agents/{id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = api.delete(&format!("/api/agents/{id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// `OUTPOST_LOG` filters the agent's log by level (and target); a value the agent cannot read
/// is reported on stderr, naming the value, and the agent logs at `info` instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_s_log_filter_is_applied_and_a_bad_one_reported() {
    let server = Server::start().await;
    let api = server.api();
    let (_, secret) = api.agent_key().await;
    let with_log = |filter: &str| {
        let envs = vec![("OUTPOST_LOG".to_owned(), filter.to_owned())];
        Agent::start_with(&server.url, &secret, None, envs)
    };
    let quiet = with_log("warn,outpost_agent::tls=debug");
    let confused = with_log("x=y=z");
    quiet.wait_online(&api).await;
    confused.wait_online(&api).await;

    let logs = quiet.logs();
    assert!(!logs.contains("INFO"), "warn hides info lines:\n{logs}");
    let logs = confused.logs();
    assert!(
        logs.contains(r#"OUTPOST_LOG="x=y=z" is not a log filter"#),
        "{logs}"
    );
    assert!(
        logs.contains("INFO") && logs.contains("agent starting"),
        "{logs}"
    );
}

/// Deleting an agent ends the runs it owed (`lost`) for everyone: the job is finished, and a
/// caller waiting on it (`?wait`) is answered at once rather than when its wait runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_agent_finishes_the_runs_it_owed_and_wakes_their_waiters() {
    let server = Server::start().await;
    let api = server.api();
    let (_, secret) = api.agent_key().await;
    // A peer that registers and never answers.
    let mut peer = ws::connect(&server.url, &secret).await.expect("connect");
    let id = uuid::Uuid::now_v7().to_string();
    peer.handshake(&id).await;
    api.wait_online(&id).await;
    let body = json!({"command": "ping", "target": {"agents": [id]}});
    let (status, job) = api.job(body.clone(), None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    let job_id = job["job_id"].as_str().expect("job id").to_owned();
    let waiting = {
        let api = server.api();
        tokio::spawn(async move { api.job(body, Some(60)).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = std::time::Instant::now();
    let (status, _) = api.delete(&format!("/api/agents/{id}")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, waited) = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the waiting caller is answered at once")
        .expect("join");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(status, StatusCode::OK, "{waited}");
    assert_eq!(waited["runs"][0]["status"], "lost", "{waited}");
    let (_, job) = api.get(&format!("/api/jobs/{job_id}")).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["runs"][0]["status"], "lost", "{job}");
    assert_eq!(job["runs"][0]["error"]["code"], "agent_deleted", "{job}");
}
