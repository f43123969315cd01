//! History retention and backups (CONTRACT.md §14) over the real server: the cleaner deletes
//! finished jobs past the window while open ones stay; `outpost-server backup` copies a live
//! SQLite database while a fan-out writes, and the copy restored into a fresh data directory
//! holds every job committed before the backup began; `restore` refuses a database in use.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use outpost_e2e::ws::{self, Seen};
use outpost_e2e::{Server, ServerOptions, bin_dir, wait_for};
use outpost_protocol::ServerFrame;
use reqwest::StatusCode;
use serde_json::json;

/// A raw agent answering every command with two output chunks and a success.
async fn worker(mut peer: ws::Peer) {
    loop {
        match peer.next(Duration::from_secs(300)).await {
            Seen::Frame(ServerFrame::Command(c)) => {
                let id = c.command_id;
                peer.send_together(&[
                    json!({"type": "ack", "command_id": id}),
                    json!({"type": "output", "command_id": id, "stream": "stdout", "seq": 0, "data": "a"}),
                    json!({"type": "output", "command_id": id, "stream": "stdout", "seq": 1, "data": "b"}),
                    json!({"type": "response", "command_id": id, "success": true,
                        "data": {"message": "done"}, "error": null}),
                ])
                .await;
            }
            Seen::Frame(_) => {}
            Seen::Closed(_) => return,
        }
    }
}

/// `outpost-server ARGS…`: success, and what it printed.
fn tool(args: &[&str]) -> (bool, String) {
    let out = Command::new(bin_dir().join("outpost-server"))
        .args(args)
        .env_remove("OUTPOST_DATABASE_URL")
        .env_remove("OUTPOST_DATA_DIR")
        .output()
        .expect("running outpost-server");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Workers connected and online; their ids.
async fn workers(server: &Server, n: usize) -> Vec<String> {
    let api = server.api();
    let (_, secret) = api.agent_key().await;
    let mut ids = Vec::new();
    for _ in 0..n {
        let id = uuid::Uuid::now_v7().to_string();
        let mut peer = ws::connect(&server.url, &secret).await.expect("connect");
        peer.handshake(&id).await;
        tokio::spawn(worker(peer));
        ids.push(id);
    }
    for id in &ids {
        api.wait_online(id).await;
    }
    ids
}

/// Backup while 40 agents answer a stream of fan-outs; restore into a fresh directory; the
/// restored server has every job whose creation was answered before the backup started, each
/// with all its runs, and every run's output whole when the run is final.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_under_load_restores_every_job_committed_before_it() {
    let mut server = Server::start().await;
    let scratch = tempfile::tempdir().expect("tmp");
    let copy = scratch.path().join("copy.db");
    if server.database_url.is_some() {
        let (ok, text) = tool(&[
            "backup",
            "--to",
            path(&copy),
            "--database-url",
            server.database_url.as_deref().expect("url"),
        ]);
        assert!(!ok && text.contains("pg_dump"), "{text}");
        assert!(!copy.exists());
        return;
    }
    let ids = workers(&server, 40).await;
    let api = server.api();

    // Fan-outs, back to back, until told to stop: each job's id once its creation is answered.
    let stop = Arc::new(AtomicBool::new(false));
    let created = Arc::new(std::sync::Mutex::new(Vec::<(Instant, String)>::new()));
    let load = {
        let (api, ids, stop, created) = (api.clone(), ids.clone(), stop.clone(), created.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let (status, job) = api
                    .job(
                        json!({"command": "echo", "data": {"message": "x"}, "target": {"agents": ids}}),
                        None,
                    )
                    .await;
                assert_eq!(status, StatusCode::ACCEPTED, "{}", job["error"]);
                let id = job["job_id"].as_str().expect("job id").to_owned();
                created.lock().expect("lock").push((Instant::now(), id));
            }
        })
    };
    wait_for("a few fan-outs", Duration::from_secs(30), || {
        let n = created.lock().expect("lock").len();
        async move { (n >= 10).then_some(()) }
    })
    .await;

    let began = Instant::now();
    let (ok, text) = {
        let (copy, dir) = (copy.clone(), server.data_dir.clone());
        tokio::task::spawn_blocking(move || {
            tool(&["backup", "--data-dir", path(&dir), "--to", path(&copy)])
        })
        .await
        .expect("join")
    };
    assert!(ok, "backup: {text}");
    assert!(text.contains("integrity ok"), "{text}");
    // Still writing after the backup ended: it did not stop the load.
    let during = created.lock().expect("lock").len();
    wait_for("fan-outs after the backup", Duration::from_secs(30), || {
        let n = created.lock().expect("lock").len();
        async move { (n > during + 2).then_some(()) }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    load.await.expect("load");
    let before: Vec<String> = created
        .lock()
        .expect("lock")
        .iter()
        .filter(|(at, _)| *at < began)
        .map(|(_, id)| id.clone())
        .collect();
    let all = created.lock().expect("lock").len();
    println!(
        "{} of {all} fan-outs of {} runs committed before the backup began",
        before.len(),
        ids.len()
    );
    assert!(before.len() >= 10);

    // A second backup to the same file is refused, the copy untouched.
    let size = std::fs::metadata(&copy).expect("copy").len();
    let (ok, text) = tool(&[
        "backup",
        "--data-dir",
        path(&server.data_dir),
        "--to",
        path(&copy),
    ]);
    assert!(!ok && text.contains("exists already"), "{text}");
    assert_eq!(std::fs::metadata(&copy).expect("copy").len(), size);

    // Restoring over the running server's database is refused, and changes nothing.
    let (ok, text) = tool(&[
        "restore",
        "--from",
        path(&copy),
        "--data-dir",
        path(&server.data_dir),
    ]);
    assert!(!ok && text.contains("in use"), "{text}");
    assert!(
        std::fs::read_dir(&server.data_dir)
            .expect("dir")
            .flatten()
            .all(|e| !e.file_name().to_string_lossy().contains("before-restore")),
        "nothing moved aside"
    );
    assert_eq!(api.get("/readyz").await.0, StatusCode::OK);

    // A file that is not an Outpost database is refused before anything is touched.
    let junk = scratch.path().join("junk.db");
    std::fs::write(&junk, b"not a database at all").expect("junk");
    let fresh = scratch.path().join("restored");
    let (ok, text) = tool(&["restore", "--from", path(&junk), "--data-dir", path(&fresh)]);
    assert!(!ok, "{text}");
    assert!(!fresh.join("outpost.db").exists());

    // Restored into a fresh data directory, with the keys kept beside the backup.
    let (ok, text) = tool(&["restore", "--from", path(&copy), "--data-dir", path(&fresh)]);
    assert!(ok, "restore: {text}");
    for key in ["master.key", "admin.key", "release.key"] {
        std::fs::copy(server.data_dir.join(key), fresh.join(key)).expect("key");
    }
    server.terminate();
    let restored = Server::start_with(ServerOptions {
        data_dir: Some(fresh.clone()),
        ..ServerOptions::default()
    })
    .await;
    let rapi = restored.api();
    for id in &before {
        let (status, job) = rapi.get(&format!("/api/jobs/{id}")).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "job {id} committed before the backup: {job}"
        );
        let runs = job["runs"].as_array().expect("runs");
        assert_eq!(runs.len(), ids.len(), "every run of {id}");
        for run in runs {
            if run["status"] == "succeeded" {
                let run_id = run["run_id"].as_str().expect("run id");
                let (status, bytes) = rapi.output(id, run_id, "").await;
                assert_eq!(status, StatusCode::OK);
                assert_eq!(bytes, b"ab", "output of {run_id} whole");
            }
        }
    }
    // Restoring again over the (stopped) first directory keeps its database aside.
    drop(restored);
    let (ok, text) = tool(&[
        "restore",
        "--from",
        path(&copy),
        "--data-dir",
        path(&server.data_dir),
    ]);
    assert!(ok, "restore over a stopped server's data: {text}");
    assert!(text.contains("before-restore"), "{text}");
}

/// With a window of two seconds the running server deletes finished jobs by itself, while a
/// job whose run is still open stays; a tenant's own window shows in its API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cleaner_deletes_finished_jobs_past_the_window_and_keeps_open_ones() {
    let server = Server::start_with(ServerOptions {
        args: vec!["--retention-seconds".into(), "2".into()],
        ..ServerOptions::default()
    })
    .await;
    let api = server.api();
    let ids = workers(&server, 3).await;
    let (status, done) = api
        .job(
            json!({"command": "echo", "data": {"message": "x"}, "target": {"agents": ids}}),
            Some(30),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["status"], "succeeded", "{done}");
    let done_id = done["job_id"].as_str().expect("id").to_owned();
    // An agent that registered and went away: its run stays pending for ten minutes.
    let (_, secret) = api.agent_key().await;
    let gone_id = uuid::Uuid::now_v7().to_string();
    let mut gone = ws::connect(&server.url, &secret).await.expect("connect");
    gone.handshake(&gone_id).await;
    api.wait_online(&gone_id).await;
    gone.crash();
    let (status, open) = api
        .job(
            json!({"command": "ping", "target": {"agents": [gone_id]}, "ttl_s": 600}),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{open}");
    let open_id = open["job_id"].as_str().expect("id").to_owned();

    wait_for("the finished job deleted", Duration::from_secs(30), || {
        let (api, id) = (api.clone(), done_id.clone());
        async move {
            (api.get(&format!("/api/jobs/{id}")).await.0 == StatusCode::NOT_FOUND).then_some(())
        }
    })
    .await;
    let (status, job) = api.get(&format!("/api/jobs/{open_id}")).await;
    assert_eq!(status, StatusCode::OK, "the open job stays: {job}");
    assert_eq!(job["status"], "running");
    let metrics = reqwest::Client::new()
        .get(format!("{}/metrics", server.url))
        .bearer_auth(&server.admin_key)
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("outpost_retention_deleted_rows_total"),
        "retention is counted"
    );

    // The tenant's own window: set, shown, cleared; out of range is refused naming the field.
    let (_, me) = api.get("/api/tenants").await;
    let tenant = me[0]["id"].as_str().expect("tenant id").to_owned();
    assert_eq!(me[0]["retention_days"], serde_json::Value::Null);
    let (status, t) = api
        .patch(
            &format!("/api/tenants/{tenant}"),
            json!({"retention_days": 0}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{t}");
    assert_eq!(t["retention_days"], 0);
    let (status, err) = api
        .patch(
            &format!("/api/tenants/{tenant}"),
            json!({"retention_days": 40000}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    assert!(err.to_string().contains("retention_days"), "{err}");
    let (status, t) = api
        .patch(
            &format!("/api/tenants/{tenant}"),
            json!({"retention_days": null}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{t}");
    assert_eq!(t["retention_days"], serde_json::Value::Null);

    // The same from the server's host.
    let mut args = vec![
        "tenant".to_owned(),
        "set-retention".into(),
        "--tenant".into(),
        tenant.clone(),
        "--days".into(),
        "30".into(),
        "--data-dir".into(),
        path(&server.data_dir).to_owned(),
    ];
    args.extend(server.database_args());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, text) = tool(&args);
    assert!(ok && text.contains("kept 30 days"), "{text}");
    let (_, t) = api.get(&format!("/api/tenants/{tenant}")).await;
    assert_eq!(t["retention_days"], 30);
    let mut bad = args.clone();
    bad[5] = "forever";
    let (ok, text) = tool(&bad);
    assert!(!ok && text.contains("--days"), "{text}");
}
