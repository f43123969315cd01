//! A full disk (CONTRACT.md §14, issue #26 §2): the server's data directory on a small tmpfs that a
//! script's output fills. Nothing may be half-applied, sent or acknowledged without being
//! committed; new jobs are refused with 503 while writes fail; `/readyz` and `/metrics` say why;
//! everything resumes by itself when space returns, with the database intact.
//!
//! Mounting a tmpfs needs root (CI runs as root); elsewhere the tests print why they skip.

use std::path::{Path, PathBuf};
use std::process::Command;

use outpost_e2e::{Agent, READY_TIMEOUT, Scripts, Server, ServerOptions, run_job, wait_for};
use outpost_store::{DatabaseLocation, Store};
use reqwest::StatusCode;
use serde_json::json;

/// Bytes the big script prints: more than the tmpfs holds.
const BIG: u64 = 30 << 20;

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs {
    path: PathBuf,
    _parent: tempfile::TempDir,
}

impl Tmpfs {
    /// A tmpfs of `mib` MiB, or `None` (with the reason printed) where none can be mounted.
    fn mount(mib: u64) -> Option<Self> {
        if !nix_is_root() {
            println!("SKIPPED: mounting a tmpfs needs root (CI runs these tests as root)");
            return None;
        }
        let parent = tempfile::tempdir().expect("tempdir");
        let path = parent.path().join("data");
        std::fs::create_dir(&path).expect("mount point");
        let mounted = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mib}m,mode=0700"),
                "tmpfs",
            ])
            .arg(&path)
            .status();
        if !mounted.as_ref().is_ok_and(|s| s.success()) {
            println!("SKIPPED: could not mount a tmpfs here ({mounted:?})");
            return None;
        }
        Some(Self {
            path,
            _parent: parent,
        })
    }

    /// Grows (or shrinks) the filesystem in place.
    fn resize(&self, mib: u64) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={mib}m")])
            .arg(&self.path)
            .status()
            .expect("mount");
        assert!(status.success(), "remount to {mib} MiB");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

async fn integrity(data_dir: &Path) -> Vec<String> {
    let store = Store::open(&DatabaseLocation::Sqlite(data_dir.join("outpost.db")))
        .await
        .expect("open the database");
    store.integrity_check().await.expect("integrity_check")
}

fn scripts() -> Scripts {
    let mut scripts = Scripts::new();
    scripts.add(
        "big",
        &format!("head -c {BIG} /dev/zero | tr '\\0' x"),
        json!({"timeout_s": 600}),
    );
    scripts
}

/// Waits until `/readyz` answers `want`; returns its body.
async fn readyz(api: &outpost_e2e::Api, want: StatusCode) -> serde_json::Value {
    wait_for(&format!("/readyz {want}"), READY_TIMEOUT, || async {
        let (status, body) = api.get("/readyz").await;
        (status == want).then_some(body)
    })
    .await
}

/// A server on `disk`, and an agent whose big run has filled it.
struct Filled {
    server: Server,
    agent: Agent,
    job_id: String,
    /// What `/readyz` answered once writes failed.
    why: serde_json::Value,
    _scripts: Scripts,
}

async fn fill(disk: &Tmpfs) -> Filled {
    let server = Server::start_with(ServerOptions {
        data_dir: Some(disk.path.clone()),
        ..Default::default()
    })
    .await;
    let api = server.api();
    let scripts = scripts();
    let (_, key) = api.agent_key().await;
    let agent = Agent::start_with(&server.url, &key, None, scripts.env());
    let agent_id = agent.wait_online(&api).await;
    let (status, job) = api.job(run_job(&agent_id, "big", json!({})), None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    let job_id = job["job_id"].as_str().expect("job id").to_owned();
    let why = readyz(&api, StatusCode::SERVICE_UNAVAILABLE).await;
    Filled {
        server,
        agent,
        job_id,
        why,
        _scripts: scripts,
    }
}

/// The big run fills the disk: new jobs get 503, `/readyz` and `/metrics` say why, reads still
/// work; then space returns and, without a restart, the run completes with every byte of its
/// output, new jobs run, and the database passes `integrity_check`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_new_work_and_recovers_by_itself() {
    let Some(disk) = Tmpfs::mount(20) else { return };
    let Filled {
        server,
        agent,
        job_id,
        why,
        _scripts,
    } = fill(&disk).await;
    let api = server.api();
    let message = why["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("database"), "{why}");
    let (status, refused) = api
        .job(json!({"command": "ping", "target": {"all": true}}), None)
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{refused}");
    let (status, _) = api.get(&format!("/api/jobs/{job_id}")).await;
    assert_eq!(status, StatusCode::OK, "reads go on");
    let metrics = reqwest::Client::new()
        .get(format!("{}/metrics", server.url))
        .bearer_auth(&server.admin_key)
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    assert!(
        metrics.contains("outpost_store_writable 0"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("store"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    disk.resize(512);
    let done = api.wait_job(&job_id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let run = &done["runs"][0];
    assert_eq!(run["stdout_bytes"], BIG, "{run}");
    let run_id = run["run_id"].as_str().expect("run id");
    let (status, output) = api.output(&job_id, run_id, "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(output.len() as u64, BIG);
    assert!(output.iter().all(|b| *b == b'x'));

    readyz(&api, StatusCode::OK).await;
    let (status, ping) = api
        .job(
            json!({"command": "ping", "target": {"all": true}}),
            Some(30),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{ping}");
    assert_eq!(ping["status"], "succeeded", "{ping}");
    drop(agent);
    drop(server);
    assert_eq!(integrity(&disk.path).await, ["ok"]);
}

/// `kill -9` of the server while its disk is full loses nothing that was acknowledged: once
/// space returns and the server restarts, the agent resends what was never committed and the
/// run completes with all of its output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_while_its_disk_is_full_loses_nothing() {
    let Some(disk) = Tmpfs::mount(20) else { return };
    let Filled {
        mut server,
        agent,
        job_id,
        _scripts,
        ..
    } = fill(&disk).await;

    server.kill9();
    disk.resize(512);
    server.restart().await;
    let api = server.api();
    let done = api.wait_job(&job_id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["runs"][0]["stdout_bytes"], BIG, "{done}");
    drop(agent);
    drop(server);
    assert_eq!(integrity(&disk.path).await, ["ok"]);
}

/// The agent's own disk fills up during a run: the run fails with `output_lost` (not a silent
/// success with part of its output), what was kept before is stored as whole chunks, no
/// journal record is torn, and the next run works once there is room again. (An answer that
/// cannot be journaled is kept and retried: `journal` and `Agent::answer`'s unit tests; a tmpfs
/// cannot be filled to the last byte of the journal's page from here.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_whose_disk_fills_fails_the_run_clearly_and_loses_no_journal_record() {
    let Some(disk) = Tmpfs::mount(4) else { return };
    let server = Server::start().await;
    let api = server.api();
    let mut scripts = Scripts::new();
    // Prints more than the disk holds.
    scripts.add(
        "big",
        &format!("head -c {BIG} /dev/zero | tr '\\0' x"),
        json!({"timeout_s": 600}),
    );
    scripts.add("hello", "echo hello", json!({}));
    let (_, key) = api.agent_key().await;
    // The mount point itself: the agent's log goes beside it, not onto the full disk.
    let state = disk.path.clone();
    let agent = Agent::start_with(&server.url, &key, Some(state.clone()), scripts.env());
    let agent_id = agent.wait_online(&api).await;

    let (_, job) = api.job(run_job(&agent_id, "big", json!({})), None).await;
    let job_id = job["job_id"].as_str().expect("job id").to_owned();
    wait_for("the spool to fill the disk", READY_TIMEOUT, || {
        let logs = agent.logs();
        async move { logs.contains("cannot write script output").then_some(()) }
    })
    .await;
    let done = api.wait_job(&job_id).await;
    let run = &done["runs"][0];
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(run["error"]["code"], "output_lost", "{run}");
    let kept = run["stdout_bytes"].as_u64().expect("bytes");
    assert!(kept > 0 && kept < BIG, "{run}");
    let run_id = run["run_id"].as_str().expect("run id");
    let (_, output) = api.output(&job_id, run_id, "").await;
    assert_eq!(output.len() as u64, kept);
    assert!(output.iter().all(|b| *b == b'x'), "whole records only");

    let (status, hello) = api
        .job(run_job(&agent_id, "hello", json!({})), Some(30))
        .await;
    assert_eq!(status, StatusCode::OK, "{hello}");
    assert_eq!(hello["status"], "succeeded", "{hello}");
    let journal = std::fs::read_to_string(state.join("journal.jsonl")).expect("journal");
    for line in journal.lines() {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "a torn journal record: {line:?}"
        );
    }
    drop(agent);
}
