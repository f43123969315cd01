//! `GET /metrics`: who may read it, and that the figures move when things happen.

use outpost_e2e::{Agent, Server, ServerOptions, ws};
use outpost_protocol::ServerFrame;
use reqwest::StatusCode;
use serde_json::json;

/// The value of one series (`name{labels}` exactly as rendered), 0 when absent.
pub(crate) fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

/// Between the scrapes `before` and `after`, one ack was folded into its response and the
/// writer committed one write for the command (the response), which still counts as delivered.
pub(crate) fn assert_ack_folded(before: &str, after: &str) {
    let moved = |series: &str| value(after, series) - value(before, series);
    assert_eq!(moved("outpost_acks_folded_total"), 1.0, "{after}");
    assert_eq!(
        moved("outpost_commands_delivered_total"),
        1.0,
        "a folded ack's command was delivered all the same: {after}"
    );
    assert_eq!(
        moved("outpost_store_batch_size_sum"),
        1.0,
        "one write (the response) for the command: {after}"
    );
}

pub(crate) async fn scrape(
    http: &reqwest::Client,
    url: &str,
    token: Option<&str>,
) -> (StatusCode, String) {
    let mut request = http.get(format!("{url}/metrics"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("scrape");
    let status = response.status();
    (status, response.text().await.expect("body"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_an_owner_key_or_the_internal_listener_and_move_with_a_command() {
    // Both ports are chosen while both are held, so they differ: with the main listener on
    // port 0 the kernel once handed the server the very port just freed for metrics.
    let (main_addr, metrics_addr) = {
        let free = || std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
        let (main, metrics) = (free(), free());
        (
            main.local_addr().expect("addr"),
            metrics.local_addr().expect("addr"),
        )
    };
    let server = Server::start_with(ServerOptions {
        args: vec!["--metrics-listen".into(), metrics_addr.to_string()],
        listen: Some(main_addr),
        ..Default::default()
    })
    .await;
    let api = server.api();
    let http = reqwest::Client::new();

    // The main listener: no key, or an agent key, gets nothing.
    let (status, _) = scrape(&http, &server.url, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (_, secret) = api.agent_key().await;
    let (status, body) = scrape(&http, &server.url, Some(&secret)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");

    let agent = Agent::start(&server.url, &secret);
    let id = agent.wait_online(&api).await;
    let (status, before) = scrape(&http, &server.url, Some(&server.admin_key)).await;
    assert_eq!(status, StatusCode::OK, "{before}");

    let (status, ping) = api.command(&id, json!({"command": "ping"})).await;
    assert_eq!(status, StatusCode::OK, "{ping}");
    assert_eq!(ping["status"], "succeeded");

    // The internal listener needs no key and shows the same registry.
    let (status, after) = scrape(&http, &format!("http://{metrics_addr}"), None).await;
    assert_eq!(status, StatusCode::OK, "{after}");

    let moved = |series: &str| value(&after, series) - value(&before, series);
    assert_eq!(
        value(&after, r#"outpost_agents_connected{transport="websocket"}"#),
        1.0,
        "{after}"
    );
    assert_eq!(
        moved(r#"outpost_commands_created_total{command="ping"}"#),
        1.0,
        "{after}"
    );
    assert_eq!(moved("outpost_commands_delivered_total"), 1.0, "{after}");
    assert_eq!(
        moved(r#"outpost_commands_finished_total{state="succeeded"}"#),
        1.0,
        "{after}"
    );
    assert_eq!(
        moved("outpost_command_round_trip_seconds_count"),
        1.0,
        "{after}"
    );
    assert!(
        value(&after, "outpost_command_round_trip_seconds_sum") > 0.0,
        "{after}"
    );
    // command out; ack and response in (heartbeats may add more).
    assert!(
        moved(r#"outpost_frames_total{direction="out",transport="websocket"}"#) >= 1.0,
        "{after}"
    );
    assert!(
        moved(r#"outpost_frames_total{direction="in",transport="websocket"}"#) >= 2.0,
        "{after}"
    );
    assert!(
        moved(r#"outpost_frame_bytes_total{direction="in",transport="websocket"}"#) >= 100.0,
        "{after}"
    );
    // The ack and the result went through the writer: at least one more batch committed.
    assert!(moved("outpost_store_batch_size_count") >= 1.0, "{after}");
    assert!(
        moved("outpost_store_commit_seconds_count") >= 1.0,
        "{after}"
    );
    assert!(
        value(&after, "process_resident_memory_bytes") > 1e6,
        "{after}"
    );
    assert!(value(&after, "process_open_fds") >= 3.0, "{after}");
    // Nothing identifies an agent, tenant or job.
    assert!(!after.contains(&id), "metrics must not carry agent ids");
}

/// An `ack` that arrives together with its command's `response` is not written on its own:
/// the response records the delivery too, so a quick command costs one row change, not two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_that_arrives_with_its_response_is_not_written_on_its_own() {
    let server = Server::start().await;
    let api = server.api();
    let http = reqwest::Client::new();
    let (_, secret) = api.agent_key().await;
    let agent_id = uuid::Uuid::now_v7().to_string();
    let mut peer = ws::connect(&server.url, &secret).await.expect("connect");
    peer.handshake(&agent_id).await;
    api.wait_online(&agent_id).await;
    let (_, before) = scrape(&http, &server.url, Some(&server.admin_key)).await;

    let call = {
        let (api, agent_id) = (api.clone(), agent_id.clone());
        tokio::spawn(async move {
            api.command(&agent_id, json!({"command": "ping", "timeout_s": 10}))
                .await
        })
    };
    let command_id = match peer.frame().await {
        ServerFrame::Command(c) => c.command_id,
        other => panic!("expected a command, got {other:?}"),
    };
    peer.send_together(&[
        json!({"type": "ack", "command_id": command_id}),
        json!({"type": "response", "command_id": command_id, "success": true,
               "data": {"pong": true}, "error": null}),
    ])
    .await;
    assert!(
        matches!(peer.frame().await, ServerFrame::Ack { command_id: acked } if acked == command_id),
        "the response is acknowledged once stored"
    );
    let (status, answered) = call.await.expect("join");
    assert_eq!(status, StatusCode::OK, "{answered}");
    assert_eq!(answered["status"], "succeeded", "{answered}");
    let stored = api.wait_command_final(&command_id.to_string()).await;
    assert!(
        stored["delivered_at"].is_string(),
        "the response recorded the delivery: {stored}"
    );

    let (_, after) = scrape(&http, &server.url, Some(&server.admin_key)).await;
    assert_ack_folded(&before, &after);
}
