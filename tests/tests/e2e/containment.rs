//! Nothing a run starts outlives the run or the agent, and no script can read the agent key
//! (issue #26, §5 and §6): over the real binaries, with real processes.
//!
//! Each scenario runs in the mode the machine allows by default (a cgroup per run where the
//! agent may create one: root with cgroup v2, a delegated systemd unit) and in process mode
//! (`OUTPOST_CONTAINMENT=process`: process group, parent-death signal, subreaper), which is
//! what a machine without a writable cgroup v2 gets. Each test prints which mode it ran in;
//! where cgroups are not available the default run is process mode too, and says so.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use outpost_e2e::{
    Agent, Api, READY_TIMEOUT, Scripts, Server, bin_dir, only_run, processes_of_run, run_job,
    wait_for,
};
use reqwest::StatusCode;
use serde_json::json;

/// The agent's containment, from `info`: `("cgroup", folder)` or `("process", reason)`.
async fn containment(api: &Api, agent_id: &str) -> (String, String) {
    let (status, info) = api.command(agent_id, json!({"command": "info"})).await;
    assert_eq!(status, StatusCode::OK, "{info}");
    let c = &info["data"]["containment"];
    let mode = c["mode"]
        .as_str()
        .unwrap_or_else(|| panic!("{info}"))
        .to_owned();
    let detail = c["cgroup"]
        .as_str()
        .or(c["reason"].as_str())
        .unwrap_or("")
        .to_owned();
    (mode, detail)
}

/// Starts an agent in `mode` (`None`: the default) and reports which containment it got.
async fn agent_in(
    server: &Server,
    api: &Api,
    scripts: &Scripts,
    mode: Option<&str>,
) -> (Agent, String, String) {
    let (_, secret) = api.agent_key().await;
    let mut env = scripts.env();
    if let Some(mode) = mode {
        env.push(("OUTPOST_CONTAINMENT".into(), mode.into()));
    }
    let agent = Agent::start_with(&server.url, &secret, None, env);
    let id = agent.wait_online(api).await;
    let (got, detail) = containment(api, &id).await;
    println!("containment: {got} ({detail})");
    if mode.is_none() && got != "cgroup" {
        println!("no writable cgroup v2 here: the default run is process mode ({detail})");
    }
    (agent, id, got)
}

async fn wait_output(api: &Api, job_id: &str, run_id: &str, expected: &[u8]) {
    wait_for("the script's output", READY_TIMEOUT, || async {
        let (_, out) = api.output(job_id, run_id, "").await;
        out.starts_with(expected).then_some(())
    })
    .await;
}

/// Whether a process exists and is not a zombie.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat.rsplit(')').next().unwrap_or("").trim_start();
        !state.starts_with('Z') && !state.starts_with('X')
    })
}

fn read_pid(path: &Path) -> u32 {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The run's leader: the process of the run that leads its own process group.
fn leader_of(run_id: &str) -> Option<u32> {
    processes_of_run(run_id).into_iter().find(|pid| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            let mut fields = stat.rsplit(')').next().unwrap_or("").split_whitespace();
            // state ppid pgrp
            fields.nth(2).and_then(|g| g.parse::<u32>().ok()) == Some(*pid)
        })
    })
}

/// §5: after `kill -9` of the agent, the script (and what it started in the background)
/// never performs its side effect; the restarted agent reports the run `interrupted` only
/// once nothing of it is left, and a retry runs once.
async fn killed_agent(mode: Option<&str>) {
    let server = Server::start().await;
    let api = server.api();
    let mut scripts = Scripts::new();
    let marker = scripts.dir().join("marker");
    // The side effect happens twice per run, from the script and from a background subshell
    // it waits for, after DELAY seconds.
    scripts.add(
        "deploy",
        &format!(
            r#"( sleep "$OUTPOST_PARAM_DELAY"; echo "$OUTPOST_RUN_ID bg" >> {m} ) &
echo started
sleep "$OUTPOST_PARAM_DELAY"
echo "$OUTPOST_RUN_ID fg" >> {m}
wait"#,
            m = marker.display()
        ),
        json!({"params": ["DELAY"]}),
    );
    let (mut agent, id, _) = agent_in(&server, &api, &scripts, mode).await;

    let (_, job) = api
        .job(run_job(&id, "deploy", json!({"DELAY": "60"})), None)
        .await;
    let (job_id, run_id, _) = only_run(&job);
    wait_output(&api, &job_id, &run_id, b"started\n").await;
    let leader = leader_of(&run_id).expect("the script leads its process group");

    agent.kill9();
    // The parent-death signal: the script dies with the agent, before any restart.
    wait_for(
        "the script to die with its agent",
        READY_TIMEOUT,
        || async { (!alive(leader)).then_some(()) },
    )
    .await;

    agent.restart();
    let job = api.wait_job(&job_id).await;
    let run = &job["runs"][0];
    assert_eq!(run["status"], "failed", "{job}");
    assert_eq!(run["error"]["code"], "interrupted", "{job}");
    // Reported only after the restarted agent killed what was left: nothing can write later.
    assert_eq!(
        processes_of_run(&run_id),
        Vec::<u32>::new(),
        "the interrupted run's processes must be gone when it is reported"
    );
    assert!(!marker.exists(), "the killed run performed its side effect");

    // The retry runs alone, once.
    let (status, retry) = api
        .job(run_job(&id, "deploy", json!({"DELAY": "0"})), Some(60))
        .await;
    assert_eq!(status, StatusCode::OK, "{retry}");
    let (_, retry_id, run) = only_run(&retry);
    assert_eq!(run["status"], "succeeded", "{retry}");
    let text = std::fs::read_to_string(&marker).expect("marker");
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort();
    assert_eq!(
        lines,
        [format!("{retry_id} bg"), format!("{retry_id} fg")],
        "only the retry wrote, once from each of its processes"
    );
    assert_eq!(processes_of_run(&retry_id), Vec::<u32>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_s_script_never_acts_and_a_retry_runs_once() {
    killed_agent(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_s_script_never_acts_and_a_retry_runs_once_without_cgroups() {
    killed_agent(Some("process")).await;
}

/// A script that starts two escapees and, once both have written their pid, does `then`:
/// one that leaves its session with `setsid` (and keeps `OUTPOST_RUN_ID`), and one that also
/// clears its environment, so that nothing but containment can find it.
fn escaping(dir: &Path, tag: &str, then: &str) -> String {
    let d = dir.display();
    format!(
        r#"setsid sh -c 'echo $$ > "$0"; exec sleep 1000' {d}/{tag}.pid &
setsid env -i /bin/sh -c 'echo $$ > "$0"; exec sleep 1000' {d}/{tag}.bare.pid &
while [ ! -s {d}/{tag}.pid ] || [ ! -s {d}/{tag}.bare.pid ]; do sleep 0.02; done
cat /proc/self/cgroup
echo ready
{then}"#
    )
}

/// §5: a `setsid` grandchild (and one that also clears its environment) dies when its run
/// ends by normal exit, by timeout and by cancel; with cgroups, the run's processes are in
/// the run's own cgroup, removed afterwards.
async fn escapees(mode: Option<&str>) {
    let server = Server::start().await;
    let api = server.api();
    let mut scripts = Scripts::new();
    let dir = scripts.dir().to_path_buf();
    scripts.add("exits", &escaping(&dir, "exits", "exit 0"), json!({}));
    scripts.add("hangs", &escaping(&dir, "times", "sleep 1000"), json!({}));
    scripts.add("waits", &escaping(&dir, "cancels", "sleep 1000"), json!({}));
    let (agent, id, got) = agent_in(&server, &api, &scripts, mode).await;
    let agent_id = agent.agent_id().await;
    let cgroups = got == "cgroup";

    let check = |tag: &'static str, run_id: String, out: Vec<u8>| {
        let dir = dir.clone();
        let agent_id = agent_id.clone();
        move || {
            let out = String::from_utf8_lossy(&out).into_owned();
            for file in [format!("{tag}.pid"), format!("{tag}.bare.pid")] {
                let pid = read_pid(&dir.join(&file));
                assert!(
                    !alive(pid),
                    "{tag}: the escapee {file} ({pid}) outlived its run"
                );
            }
            assert_eq!(processes_of_run(&run_id), Vec::<u32>::new(), "{tag}");
            if cgroups {
                let own = format!("/outpost-agent-{agent_id}/run-{run_id}\n");
                assert!(
                    out.lines()
                        .any(|l| l.starts_with("0::") && format!("{l}\n").ends_with(&own)),
                    "{tag}: the script ran outside its run's cgroup: {out}"
                );
            }
        }
    };

    // Normal exit.
    let (_, job) = api.job(run_job(&id, "exits", json!({})), Some(60)).await;
    let (job_id, run_id, run) = only_run(&job);
    assert_eq!(run["status"], "succeeded", "{job}");
    assert!(
        run["duration_ms"].as_i64().is_some_and(|d| d < 4000),
        "the escapees' open pipes held the run: {run}"
    );
    let (_, out) = api.output(&job_id, &run_id, "").await;
    check("exits", run_id, out)();

    // Timeout.
    let mut timed = run_job(&id, "hangs", json!({}));
    timed["timeout_s"] = json!(2);
    let (_, job) = api.job(timed, Some(60)).await;
    let (job_id, run_id, run) = only_run(&job);
    assert_eq!(run["status"], "timed_out", "{job}");
    let (_, out) = api.output(&job_id, &run_id, "").await;
    check("times", run_id, out)();

    // Cancel.
    let (_, job) = api.job(run_job(&id, "waits", json!({})), None).await;
    let (job_id, run_id, _) = only_run(&job);
    wait_for("the script to be ready", READY_TIMEOUT, || async {
        let (_, out) = api.output(&job_id, &run_id, "").await;
        String::from_utf8_lossy(&out)
            .contains("ready\n")
            .then_some(())
    })
    .await;
    let (status, _) = api
        .post(&format!("/api/jobs/{job_id}/cancel"), json!({}))
        .await;
    assert!(status.is_success());
    let job = api.wait_job(&job_id).await;
    assert_eq!(job["runs"][0]["status"], "cancelled", "{job}");
    let (_, out) = api.output(&job_id, &run_id, "").await;
    check("cancels", run_id, out)();

    if cgroups {
        // Each run's cgroup was removed at its end, and the runs' folder with the last one.
        let (_, detail) = containment(&api, &id).await;
        assert!(
            !Path::new(&detail).exists(),
            "{detail} is left behind after every run ended"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setsid_grandchildren_die_with_their_run() {
    escapees(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setsid_grandchildren_die_with_their_run_without_cgroups() {
    escapees(Some("process")).await;
}

/// Who agents and supervisors run as in the key test: `nobody` when the tests run as root
/// (a script of the same user, without root's `CAP_SYS_PTRACE`, which reads any process),
/// else the tests' own user.
fn unprivileged() -> Option<(u32, u32)> {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse::<u32>()
        .ok()?;
    (uid == 0).then_some((65534, 65534))
}

/// A folder the unprivileged user owns.
fn owned_dir(parent: &Path, name: &str, owner: Option<(u32, u32)>) -> PathBuf {
    let dir = parent.join(name);
    std::fs::create_dir_all(&dir).expect("mkdir");
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).expect("chown");
    }
    dir
}

/// A process the test started, killed (with what it started) at the end.
struct Proc {
    child: Child,
    state: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SIGTERM lets a supervisor stop its agent; SIGKILL after a while in any case.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        outpost_agent::contain::clean_up_after(&self.state);
    }
}

/// §6: a script cannot read the agent key out of its agent (`/proc/$PPID/environ`) nor out of
/// the supervisor above it, even when the key was given to them in their environment; the
/// supervisor hands the key to its agent on a pipe, not in the environment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_cannot_read_the_agent_key() {
    let server = Server::start().await;
    let api = server.api();
    let (_, secret) = api.agent_key().await;
    let owner = unprivileged();
    match owner {
        Some((uid, _)) => println!("running the agent and supervisor as uid {uid}"),
        None => println!("running the agent and supervisor as this user"),
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let top = owned_dir(tmp.path(), "top", owner);
    let scripts = owned_dir(&top, "scripts", owner);
    // Reads the environment of its parent (the agent) and of the parent's parent.
    std::fs::write(
        scripts.join("peek.sh"),
        r#"#!/bin/sh
for p in $PPID $(cut -d' ' -f4 /proc/$PPID/stat); do
  echo "== $p $(cut -d' ' -f2 /proc/$p/stat)"
  tr '\0' '\n' < /proc/$p/environ
done 2>&1
true
"#,
    )
    .expect("script");
    std::fs::write(
        scripts.join("script_manifest.json"),
        json!({"scripts": [{"name": "peek", "path": "peek.sh"}]}).to_string(),
    )
    .expect("manifest");
    for file in ["peek.sh", "script_manifest.json"] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(scripts.join(file), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
    }
    let manifest = scripts.join("script_manifest.json");

    let start = |program: &str, args: &[&str], state: &Path, key_in_env: bool| {
        let mut command = Command::new(bin_dir().join(program));
        command
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", state)
            .env("OUTPOST_SERVER_URL", &server.url)
            .env("OUTPOST_STATE_DIR", state)
            .env("OUTPOST_MANIFEST", &manifest)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if key_in_env {
            command.env("OUTPOST_API_KEY", &secret);
        }
        if let Some((uid, gid)) = owner {
            use std::os::unix::process::CommandExt;
            command.uid(uid).gid(gid);
        }
        Proc {
            child: command.spawn().unwrap_or_else(|e| {
                panic!("starting {program} (as {owner:?}): {e}; its binary must be executable by that user")
            }),
            state: state.to_path_buf(),
        }
    };
    let peek = |agent_id: String| {
        let api = api.clone();
        async move {
            let (_, job) = api
                .job(run_job(&agent_id, "peek", json!({})), Some(60))
                .await;
            let (job_id, run_id, run) = only_run(&job);
            assert_eq!(run["status"], "succeeded", "{job}");
            let (_, out) = api.output(&job_id, &run_id, "").await;
            String::from_utf8_lossy(&out).into_owned()
        }
    };
    let agent_id_in = |state: PathBuf| async move {
        wait_for("agent_id", READY_TIMEOUT, || {
            let path = state.join("agent_id");
            async move {
                std::fs::read_to_string(path)
                    .ok()
                    .map(|s| s.trim().to_owned())
                    .filter(|s| s.len() == 36)
            }
        })
        .await
    };

    // An agent given the key in its environment, as `OUTPOST_API_KEY=… outpost-agent` does.
    let state = owned_dir(&top, "alone", owner);
    let _agent = start("outpost-agent", &[], &state, true);
    let agent_id = agent_id_in(state).await;
    api.wait_online(&agent_id).await;
    let out = peek(agent_id).await;
    assert!(out.contains("== "), "the script did not run: {out}");
    assert!(
        !out.contains(&secret),
        "a script read the agent key out of its agent:\n{out}"
    );
    assert!(
        out.contains("(outpost-agent)") && out.contains("Permission denied"),
        "the script was refused, not given something else: {out}"
    );

    // A supervisor given the key in its environment (as Docker's `-e` does), running an
    // agent: neither gives it away.
    let state = owned_dir(&top, "supervised", owner);
    let agent_bin = bin_dir().join("outpost-agent");
    let supervisor = start(
        "outpost-supervisor",
        &["--agent-bin", agent_bin.to_str().expect("utf-8")],
        &state,
        true,
    );
    let agent_id = agent_id_in(state).await;
    api.wait_online(&agent_id).await;
    let out = peek(agent_id).await;
    assert!(
        !out.contains(&secret),
        "a script read the agent key out of its agent or supervisor:\n{out}"
    );
    assert!(
        out.contains("(outpost-agent)") && out.contains("(outpost-supervi)"),
        "the script looked at both: {out}"
    );
    assert_eq!(
        out.matches("Permission denied").count(),
        2,
        "both refused: {out}"
    );
    if owner.is_some() {
        // Root may read any process: the agent's environment does not hold the key at all.
        let sup = supervisor.child.id();
        let children = std::fs::read_to_string(format!("/proc/{sup}/task/{sup}/children"))
            .expect("the supervisor's children");
        let agent = children.split_whitespace().next().expect("the agent");
        let env = std::fs::read(format!("/proc/{agent}/environ")).expect("environ");
        let env = String::from_utf8_lossy(&env);
        assert!(
            !env.contains(&secret) && env.contains("OUTPOST_API_KEY_FILE=-"),
            "the supervisor passed the key in the agent's environment"
        );
    } else {
        println!("not root: the agent's own environment is not inspected");
    }
}
