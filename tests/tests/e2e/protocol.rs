//! The server's side of protocol v1 limits: malformed, unknown, binary and oversized frames,
//! floods of bad frames, silent clients, replaced connections and version mismatches.

use std::time::Duration;

use outpost_e2e::Server;
use outpost_e2e::ws::{self, Seen};
use outpost_protocol::{ServerFrame, limits};
use serde_json::json;

async fn connected_peer(server: &Server) -> ws::Peer {
    let (_, secret) = server.api().agent_key().await;
    let mut peer = ws::connect(&server.url, &secret).await.expect("connect");
    assert!(matches!(peer.frame().await, ServerFrame::Connected(_)));
    peer
}

fn error_code(seen: Seen) -> String {
    match seen {
        Seen::Frame(ServerFrame::Error(e)) => e.code,
        other => panic!("expected an error frame, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_get_error_frames_and_a_flood_closes_the_socket() {
    let server = Server::start().await;
    let mut peer = connected_peer(&server).await;
    let t = Duration::from_secs(10);

    peer.send_text("{not json").await;
    assert_eq!(error_code(peer.next(t).await), "bad_frame");
    peer.send_json(&json!({"type": "teleport", "to": "mars"}))
        .await;
    assert_eq!(error_code(peer.next(t).await), "unknown_type");
    peer.send_binary(vec![0, 1, 2]).await;
    assert_eq!(error_code(peer.next(t).await), "bad_frame");
    peer.send_json(&json!({"type": "heartbeat", "status": {"timestamp": "2026-01-01T00:00:00Z"}}))
        .await;
    assert_eq!(error_code(peer.next(t).await), "not_registered");

    // Registered, the connection still works after those four.
    let id = uuid::Uuid::now_v7().to_string();
    peer.send_json(&ws::register(&id)).await;
    server.api().wait_online(&id).await;

    // Ten bad frames a minute are tolerated; the eleventh closes with 1008.
    for n in 5..=10 {
        peer.send_text("[]").await;
        assert_eq!(error_code(peer.next(t).await), "bad_frame", "frame {n}");
    }
    peer.send_text("[]").await;
    let closed = peer.closed(t).await;
    assert_eq!(
        closed,
        Some((limits::CLOSE_POLICY, "too many bad frames".into()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frames_close_with_1009() {
    let server = Server::start().await;
    let mut peer = connected_peer(&server).await;
    // Exactly at the limit is fine (it is only malformed).
    let pad = limits::MAX_FRAME_BYTES - r#"{"type":"x","p":""}"#.len();
    peer.send_text(&format!(r#"{{"type":"x","p":"{}"}}"#, "a".repeat(pad)))
        .await;
    assert_eq!(
        error_code(peer.next(Duration::from_secs(10)).await),
        "unknown_type"
    );
    // One byte over is not.
    peer.send_text(&format!(r#"{{"type":"x","p":"{}"}}"#, "a".repeat(pad + 1)))
        .await;
    let closed = peer.closed(Duration::from_secs(10)).await;
    assert_eq!(closed.map(|c| c.0), Some(limits::CLOSE_TOO_BIG));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_registers_is_closed_after_10_s() {
    let server = Server::start().await;
    let mut peer = connected_peer(&server).await;
    let started = std::time::Instant::now();
    let closed = peer.closed(Duration::from_secs(30)).await;
    println!("closed after {:?}", started.elapsed());
    assert_eq!(closed.map(|c| c.0), Some(limits::CLOSE_POLICY));
    assert!(
        started.elapsed() >= Duration::from_secs(9),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_connection_with_the_same_id_replaces_the_first() {
    let server = Server::start().await;
    let api = server.api();
    let (_, secret) = api.agent_key().await;
    let id = uuid::Uuid::now_v7().to_string();
    let mut first = ws::connect(&server.url, &secret).await.expect("connect");
    first.handshake(&id).await;
    api.wait_online(&id).await;
    let mut second = ws::connect(&server.url, &secret).await.expect("connect");
    second.handshake(&id).await;
    let closed = first.closed(Duration::from_secs(10)).await;
    assert_eq!(closed, Some((limits::CLOSE_NORMAL, "replaced".into())));
    // The replaced connection's cleanup must not take the new one offline.
    let (_, connected) = api.get("/api/agents/connected").await;
    assert_eq!(connected.as_array().map(Vec::len), Some(1));
    let (status, _) = {
        let api = api.clone();
        let id = id.clone();
        let call = tokio::spawn(async move {
            api.command(&id, json!({"command": "ping", "timeout_s": 5}))
                .await
        });
        let c = match second.frame().await {
            ServerFrame::Command(c) => c,
            other => panic!("{other:?}"),
        };
        second
            .send_json(&json!({"type": "response", "command_id": c.command_id, "success": true, "data": {"pong": true}, "error": null}))
            .await;
        call.await.expect("join")
    };
    assert_eq!(status, reqwest::StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protocol_mismatch_is_refused_with_advice() {
    let server = Server::start().await;
    let mut peer = connected_peer(&server).await;
    let mut register = ws::register(&uuid::Uuid::now_v7().to_string());
    register["data"]["protocol"] = json!(2);
    peer.send_json(&register).await;
    match peer.next(Duration::from_secs(10)).await {
        Seen::Frame(ServerFrame::Error(e)) => {
            assert_eq!(e.code, "protocol_mismatch");
            assert!(e.message.contains("protocol 2"), "{}", e.message);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        peer.closed(Duration::from_secs(10)).await.map(|c| c.0),
        Some(limits::CLOSE_POLICY)
    );
}
