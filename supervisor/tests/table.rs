//! The exit-code table of CONTRACT.md §4, driven through the real `outpost-supervisor` binary by a
//! stand-in agent: a shell script that records each start (time, pid, environment) and exits
//! with the code the test wrote for that start, or waits for signals.
//!
//! Timing assertions are lower bounds (a delay is at least what the policy says) plus one
//! generous upper bound where the point is that a delay was short; busy machines only make
//! things slower.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(60);

/// The stand-in agent. Start `n` (from 1) exits with line `n` of `codes` (the last line when
/// there are fewer), after sleeping line `n` of `sleeps` seconds if present. With a `term`
/// file it instead waits for signals: `exit` leaves on SIGTERM, `ignore` ignores it. With a
/// `burst` file it first prints that many numbered lines.
const STANDIN: &str = r#"#!/bin/sh
D="$STANDIN_DIR"
echo "$(date +%s%N) $$ ${OUTPOST_SUPERVISED:-unset} ${STANDIN_FOO:-unset} $*" >> "$D/starts"
echo "hello from the stand-in"
echo "oops on stderr" >&2
if [ -f "$D/burst" ]; then
  seq 1 "$(cat "$D/burst")"
  echo "last words on stderr" >&2
fi
n=$(wc -l < "$D/starts")
if [ -f "$D/orphan" ] && [ "$n" = 1 ]; then
  # Leaves a process behind that outlives this one; it records its pid as the host sees it.
  sh -c 'read -r p rest < /proc/self/stat; echo "$p" > "$1/orphan-pid.tmp"; mv "$1/orphan-pid.tmp" "$1/orphan-pid"; sleep 0.3' orphan "$D" &
fi
if [ -f "$D/term" ]; then
  if [ "$(cat "$D/term")" = ignore ]; then
    trap 'echo term-ignored >> "$D/signals"' TERM
  else
    trap 'echo term >> "$D/signals"; exit 0' TERM
  fi
  echo ready > "$D/ready"
  while :; do sleep 0.05; done
fi
s=$(sed -n "${n}p" "$D/sleeps" 2>/dev/null)
[ -n "$s" ] && sleep "$s"
code=$(sed -n "${n}p" "$D/codes")
[ -z "$code" ] && code=$(tail -n 1 "$D/codes")
exit "$code"
"#;

struct Fixture {
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Fixture {
    fn new(codes: &str) -> Self {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let standin = dir.path().join("bin").join("outpost-agent");
        std::fs::create_dir_all(standin.parent().expect("bin")).expect("mkdir");
        std::fs::write(&standin, STANDIN).expect("write stand-in");
        std::fs::set_permissions(&standin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::write(dir.path().join("codes"), codes).expect("codes");
        std::fs::write(dir.path().join("starts"), "").expect("starts");
        std::fs::write(
            dir.path().join("agent.env"),
            format!(
                "# the stand-in's settings\nSTANDIN_DIR={}\nSTANDIN_FOO=from-env-file\n",
                dir.path().display()
            ),
        )
        .expect("env file");
        Self { dir, child: None }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn start(&mut self, envs: &[(&str, &str)]) {
        let command = Command::new(env!("CARGO_BIN_EXE_outpost-supervisor"));
        self.start_with(command, envs);
    }

    fn start_with(&mut self, mut command: Command, envs: &[(&str, &str)]) {
        let log = std::fs::File::create(self.path("supervisor.out")).expect("log");
        let child = command
            .arg("--env-file")
            .arg(self.path("agent.env"))
            .arg("--agent-bin")
            .arg(self.path("bin/outpost-agent"))
            .arg("--state-dir")
            .arg(self.path("state"))
            .args(["--", "--extra-arg"])
            .env_remove("OUTPOST_STATE_DIR")
            .env_remove("OUTPOST_SERVER_URL")
            .env_remove("OUTPOST_API_KEY")
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone"))
            .stderr(log)
            .spawn()
            .expect("spawn outpost-supervisor");
        self.child = Some(child);
    }

    fn wait_exit(&mut self) -> ExitStatus {
        let child = self.child.as_mut().expect("started");
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            assert!(
                start.elapsed() < TIMEOUT,
                "the supervisor did not exit:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn signal(&self, name: &str) {
        let pid = self.child.as_ref().expect("started").id();
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(pid.to_string())
            .status()
            .expect("kill");
        assert!(status.success());
    }

    fn wait_for_file(&self, name: &str) {
        let start = Instant::now();
        while !self.path(name).exists() {
            assert!(
                start.elapsed() < TIMEOUT,
                "{name} never appeared:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// `(nanoseconds, pid, OUTPOST_SUPERVISED, STANDIN_FOO, args)` of every start.
    fn starts(&self) -> Vec<(u128, u32, String, String, String)> {
        std::fs::read_to_string(self.path("starts"))
            .expect("starts")
            .lines()
            .map(|line| {
                let mut parts = line.splitn(5, ' ');
                let mut next = || parts.next().unwrap_or_default().to_owned();
                (
                    next().parse().expect("time"),
                    next().parse().expect("pid"),
                    next(),
                    next(),
                    next(),
                )
            })
            .collect()
    }

    fn output(&self) -> String {
        std::fs::read_to_string(self.path("supervisor.out")).unwrap_or_default()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- supervisor output ----\n{}", self.output());
        }
    }
}

fn gaps_ms(starts: &[(u128, u32, String, String, String)]) -> Vec<u128> {
    starts
        .windows(2)
        .map(|w| (w[1].0 - w[0].0) / 1_000_000)
        .collect()
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
}

#[test]
fn an_agent_s_last_lines_reach_its_log_before_the_supervisor_exits() {
    let mut f = Fixture::new("0\n");
    std::fs::write(f.path("burst"), "50000").expect("burst");
    f.start(&[]);
    assert_eq!(f.wait_exit().code(), Some(0), "{}", f.output());
    let agent_log = std::fs::read_to_string(f.path("state/logs/agent.log")).expect("agent.log");
    assert!(
        agent_log.lines().any(|l| l == "50000"),
        "the last line of stdout is missing"
    );
    assert!(
        agent_log.contains("last words on stderr"),
        "the last line of stderr is missing"
    );
}

#[test]
fn exit_0_stops_and_logs_go_to_the_state_dir() {
    let mut f = Fixture::new("0\n");
    f.start(&[]);
    assert_eq!(f.wait_exit().code(), Some(0), "{}", f.output());
    let starts = f.starts();
    assert_eq!(starts.len(), 1, "{starts:?}");
    let (_, _, supervised, foo, args) = &starts[0];
    assert_eq!(supervised, "1", "the agent runs with OUTPOST_SUPERVISED=1");
    assert_eq!(foo, "from-env-file", "env-file variables reach the agent");
    assert_eq!(args, "--extra-arg");
    let agent_log = std::fs::read_to_string(f.path("state/logs/agent.log")).expect("agent.log");
    assert!(agent_log.contains("hello from the stand-in"), "{agent_log}");
    assert!(agent_log.contains("oops on stderr"), "{agent_log}");
    let supervisor_log =
        std::fs::read_to_string(f.path("state/logs/supervisor.log")).expect("supervisor.log");
    assert!(
        supervisor_log.contains("the agent exited normally"),
        "{supervisor_log}"
    );
    // The same lines reach stderr too (docker logs).
    assert!(f.output().contains("the agent exited normally"));
}

#[test]
fn exit_99_stops_for_good() {
    let mut f = Fixture::new("99\n");
    f.start(&[]);
    assert_eq!(f.wait_exit().code(), Some(99), "{}", f.output());
    assert_eq!(f.starts().len(), 1);
    assert!(f.output().contains("fatal error"), "{}", f.output());
}

#[test]
fn exit_42_restarts_at_once() {
    let mut f = Fixture::new("42\n42\n0\n");
    // A crash delay of a minute: if 42 were treated as a crash, this test would time out.
    f.start(&[("OUTPOST_SUPERVISOR_BACKOFF_BASE_MS", "60000")]);
    assert_eq!(f.wait_exit().code(), Some(0), "{}", f.output());
    let starts = f.starts();
    assert_eq!(starts.len(), 3, "{starts:?}");
    let pids: std::collections::HashSet<_> = starts.iter().map(|s| s.1).collect();
    assert_eq!(pids.len(), 3, "each start is a new process");
    assert!(gaps_ms(&starts).iter().all(|g| *g < 30_000), "{starts:?}");
}

#[test]
fn crashes_back_off_with_growing_delays_and_reset_after_uptime() {
    // Five crashes, then a run that stays up past the reset threshold and crashes, then a
    // clean exit.
    let mut f = Fixture::new("1\n1\n1\n1\n1\n1\n137\n0\n");
    std::fs::write(f.path("sleeps"), "\n\n\n\n\n2.5\n\n").expect("sleeps");
    f.start(&[
        ("OUTPOST_SUPERVISOR_BACKOFF_BASE_MS", "200"),
        ("OUTPOST_SUPERVISOR_BACKOFF_CAP_MS", "1600"),
        ("OUTPOST_SUPERVISOR_BACKOFF_RESET_MS", "2000"),
    ]);
    assert_eq!(f.wait_exit().code(), Some(0), "{}", f.output());
    let starts = f.starts();
    assert_eq!(starts.len(), 8, "{starts:?}");
    let gaps = gaps_ms(&starts);
    // Crash n waits at least base × 2^n, capped: 200, 400, 800, 1600, 1600.
    for (n, floor) in [200u128, 400, 800, 1600, 1600].iter().enumerate() {
        assert!(
            gaps[n] >= *floor,
            "gap {n} = {} ms < {floor} ms: {gaps:?}",
            gaps[n]
        );
    }
    // The delays grow: the fourth is at least twice the first as measured.
    assert!(gaps[3] > gaps[0] * 2, "{gaps:?}");
    // Start 6 stayed up 2.5 s (past the 2 s reset): the delays start again from the base,
    // far below the 1.6 s they had reached.
    assert!(
        gaps[5] >= 2_700 && gaps[5] < 2_500 + 1_400,
        "2.5 s run + delay after the reset = {} ms: {gaps:?}",
        gaps[5]
    );
    assert!(gaps[6] >= 400 && gaps[6] < 1_400, "{gaps:?}");
    // Crash delays are logged with their cause.
    assert!(f.output().contains("the agent crashed"), "{}", f.output());
}

#[test]
fn sigterm_is_forwarded_to_the_agent() {
    let mut f = Fixture::new("0\n");
    std::fs::write(f.path("term"), "exit").expect("term");
    f.start(&[]);
    f.wait_for_file("ready");
    f.signal("TERM");
    assert_eq!(f.wait_exit().code(), Some(0), "{}", f.output());
    let signals = std::fs::read_to_string(f.path("signals")).expect("signals");
    assert_eq!(signals.trim(), "term");
    assert_eq!(f.starts().len(), 1, "not restarted after a requested stop");
}

#[test]
fn an_agent_ignoring_sigterm_is_killed_after_the_grace() {
    let mut f = Fixture::new("0\n");
    std::fs::write(f.path("term"), "ignore").expect("term");
    f.start(&[("OUTPOST_SUPERVISOR_KILL_AFTER_MS", "700")]);
    f.wait_for_file("ready");
    let pid = f.starts()[0].1;
    let asked = Instant::now();
    f.signal("INT");
    assert_eq!(f.wait_exit().code(), Some(0), "{}", f.output());
    assert!(asked.elapsed() >= Duration::from_millis(700));
    let signals = std::fs::read_to_string(f.path("signals")).expect("signals");
    assert!(
        signals.contains("term-ignored"),
        "the agent got SIGTERM first"
    );
    assert!(!pid_alive(pid), "the agent was killed");
    assert!(f.output().contains("sending SIGKILL"), "{}", f.output());
}

fn zombie_or_alive(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(
        stat.rsplit(')')
            .next()
            .unwrap_or("")
            .trim()
            .chars()
            .take(1)
            .collect(),
    )
}

#[test]
fn as_pid_1_it_reaps_orphans() {
    let mut f = Fixture::new("42\n0\n");
    std::fs::write(f.path("orphan"), "").expect("orphan");
    std::fs::write(f.path("sleeps"), "\n60\n").expect("sleeps");
    // PID 1 of a fresh PID namespace, as in a container.
    let mut command = Command::new("unshare");
    command
        .args(["--pid", "--fork", "--kill-child"])
        .arg(env!("CARGO_BIN_EXE_outpost-supervisor"));
    f.start_with(command, &[]);
    f.wait_for_file("orphan-pid");
    let orphan: u32 = std::fs::read_to_string(f.path("orphan-pid"))
        .expect("pid")
        .trim()
        .parse()
        .expect("pid");
    // The orphan's parent exited (42) long before the orphan does: it is re-parented to the
    // supervisor, which must reap it, or it stays a zombie for as long as the supervisor runs.
    let start = Instant::now();
    while let Some(state) = zombie_or_alive(orphan) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "orphan {orphan} still there in state {state}:\n{}",
            f.output()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    while f.starts().len() < 2 {
        assert!(start.elapsed() < TIMEOUT, "{}", f.output());
        std::thread::sleep(Duration::from_millis(25));
    }
    assert!(f.output().contains("running as PID 1"), "{}", f.output());
    // The supervisor is unshare's child; stop it with SIGTERM like `docker stop` would.
    let unshare = f.child.as_ref().expect("started").id();
    let children = std::fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children"))
        .expect("children");
    let supervisor = children.split_whitespace().next().expect("supervisor pid");
    let status = Command::new("kill")
        .args(["-TERM", supervisor])
        .status()
        .expect("kill");
    assert!(status.success());
    assert_eq!(f.wait_exit().code(), Some(0), "{}", f.output());
}
