//! Lock contention (issue #26 §4): agents answering jobs while others reconnect in a loop. Every
//! registration, disconnect and new command writes on a connection of its own beside the batching
//! writer; none of that may close an agent's connection (1011) or commit a run's writes out of
//! order.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use outpost_e2e::Server;
use outpost_e2e::ws::{self, Seen};
use outpost_protocol::ServerFrame;
use reqwest::StatusCode;
use serde_json::json;

/// Agents answering commands.
const WORKERS: usize = 30;
/// Agents reconnecting in a loop.
const CHURNERS: usize = 15;
/// How long the load lasts.
const LOAD: Duration = Duration::from_secs(8);
/// Output chunks each answer carries.
const CHUNKS: u64 = 3;

/// A raw agent that answers every command with [`CHUNKS`] output chunks and a success, until
/// its connection ends; returns how it ended.
async fn worker(mut peer: ws::Peer) -> Option<(u16, String)> {
    loop {
        match peer.next(Duration::from_secs(300)).await {
            Seen::Frame(ServerFrame::Command(c)) => {
                let id = c.command_id;
                let mut frames = vec![json!({"type": "ack", "command_id": id})];
                for seq in 0..CHUNKS {
                    frames.push(
                        json!({"type": "output", "command_id": id, "stream": "stdout",
                        "seq": seq, "data": seq.to_string()}),
                    );
                }
                frames.push(
                    json!({"type": "response", "command_id": id, "success": true,
                    "data": {"message": "done"}, "error": null}),
                );
                peer.send_together(&frames).await;
            }
            Seen::Frame(_) => {}
            Seen::Closed(why) => return why,
        }
    }
}

/// 30 agents answer jobs (output, then a result) while 15 others connect, register, beat
/// and leave in a loop: no agent connection is closed with 1011, every run succeeds, and every
/// run's output is whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_agents_never_break_the_others_writes() {
    let server = Server::start().await;
    let api = server.api();
    let (_, secret) = api.agent_key().await;

    let mut workers = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..WORKERS {
        let id = uuid::Uuid::now_v7().to_string();
        let mut peer = ws::connect(&server.url, &secret).await.expect("connect");
        peer.handshake(&id).await;
        ids.push(id);
        workers.push(tokio::spawn(worker(peer)));
    }
    for id in &ids {
        api.wait_online(id).await;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let mut churners = Vec::new();
    for _ in 0..CHURNERS {
        let (url, secret, stop) = (server.url.clone(), secret.clone(), stop.clone());
        churners.push(tokio::spawn(async move {
            let id = uuid::Uuid::now_v7().to_string();
            let mut rounds = 0;
            while !stop.load(Ordering::Relaxed) {
                let mut peer = ws::connect(&url, &secret).await.expect("connect");
                peer.handshake(&id).await;
                peer.send_json(&json!({"type": "heartbeat",
                    "status": {"uptime_s": rounds, "timestamp": "2026-01-01T00:00:00Z"}}))
                    .await;
                peer.crash();
                rounds += 1;
            }
            rounds
        }));
    }

    let started = Instant::now();
    let mut jobs = Vec::new();
    while started.elapsed() < LOAD {
        let (status, job) = api
            .job(
                json!({"command": "echo", "data": {"message": "x"}, "target": {"agents": ids}}),
                Some(60),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{job}");
        jobs.push(job);
    }
    stop.store(true, Ordering::Relaxed);
    let mut reconnects = 0;
    for churner in churners {
        reconnects += churner.await.expect("churner");
    }
    println!(
        "{} jobs of {WORKERS} runs, {reconnects} reconnects in {:?}",
        jobs.len(),
        started.elapsed()
    );
    assert!(reconnects > CHURNERS as u64, "the churners reconnected");

    for job in &jobs {
        assert_eq!(job["status"], "succeeded", "{job}");
        let job_id = job["job_id"].as_str().expect("job id");
        for run in job["runs"].as_array().expect("runs") {
            let run_id = run["run_id"].as_str().expect("run id");
            let (_, output) = api.output(job_id, run_id, "").await;
            assert_eq!(output, b"012", "run {run_id}'s output is whole");
        }
    }
    for worker in &workers {
        assert!(
            !worker.is_finished(),
            "a worker's connection ended: {worker:?}"
        );
    }
    for worker in workers {
        worker.abort();
    }
    let logs = server.logs();
    assert!(
        !logs.contains("could not store") && !logs.contains("internal error"),
        "{}",
        logs.lines()
            .filter(|l| l.contains("could not store") || l.contains("internal error"))
            .take(5)
            .collect::<Vec<_>>()
            .join("\n")
    );
}
