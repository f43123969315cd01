//! The real `outpost` binary against a real server with real agents.
//!
//! Each test starts its own `outpost-server` and agents (fixtures from `outpost-e2e`), runs the
//! CLI as a child process with a private HOME/XDG_CONFIG_HOME and checks what it prints and
//! its exit status. The binaries under test are the workspace's; build them first
//! (`cargo nextest run --workspace` does, or `cargo build --bins`).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use outpost_e2e::{Agent, Api, READY_TIMEOUT, Scripts, Server, ServerOptions};
use serde_json::{Value, json};

/// A CLI environment: the server's URL and token, and a private config directory.
struct Cli {
    url: String,
    token: String,
    home: tempfile::TempDir,
}

impl Cli {
    fn new(server: &Server) -> Self {
        Self {
            url: server.url.clone(),
            token: server.admin_key.clone(),
            home: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// `outpost` with no URL or token in the environment: only what `args`/`envs` give.
    fn bare(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_outpost"));
        cmd.env_remove("OUTPOST_URL")
            .env_remove("OUTPOST_TOKEN")
            .env_remove("OUTPOST_CA_CERT")
            .env_remove("NO_COLOR")
            .env("HOME", self.home.path())
            .env("XDG_CONFIG_HOME", self.home.path().join("config"))
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null());
        cmd
    }

    /// `outpost` configured through the environment.
    fn cmd(&self) -> Command {
        let mut cmd = self.bare();
        cmd.env("OUTPOST_URL", &self.url)
            .env("OUTPOST_TOKEN", &self.token);
        cmd
    }

    fn run(&self, args: &[&str]) -> Run {
        Run::of(self.cmd().args(args))
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let run = self.run(&all);
        assert_eq!(run.code, 0, "outpost {args:?}: {run:?}");
        serde_json::from_str(&run.stdout)
            .unwrap_or_else(|e| panic!("outpost {args:?} printed no JSON ({e}): {run:?}"))
    }
}

/// A finished CLI invocation.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn of(cmd: &mut Command) -> Self {
        let Output {
            status,
            stdout,
            stderr,
        } = cmd.output().expect("running outpost");
        let run = Self {
            code: status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        };
        // Whatever happened, the CLI never panics or prints a backtrace.
        assert!(
            !run.stderr.contains("panicked") && !run.stderr.contains("stack backtrace"),
            "{run:?}"
        );
        run
    }

    fn ok(self) -> Self {
        assert_eq!(self.code, 0, "{self:?}");
        self
    }
}

/// A server with one key (tag `web`) and `n` agents, each with its own manifest.
async fn fleet(manifests: Vec<Scripts>) -> (Server, Api, Vec<Agent>, Vec<String>, Vec<Scripts>) {
    fleet_on(Server::start().await, manifests).await
}

async fn fleet_on(
    server: Server,
    manifests: Vec<Scripts>,
) -> (Server, Api, Vec<Agent>, Vec<String>, Vec<Scripts>) {
    let api = server.api();
    let (_, secret) = api
        .create_key(json!({"name": "fleet", "tags": ["web"]}))
        .await;
    let mut agents = Vec::new();
    let mut ids = Vec::new();
    for scripts in &manifests {
        let agent = Agent::start_with(&server.url, &secret, None, scripts.env());
        ids.push(agent.wait_online(&api).await);
        agents.push(agent);
    }
    (server, api, agents, ids, manifests)
}

#[tokio::test]
async fn agents_ping_keys_and_completions() {
    // Heartbeats every 2 s, so that the metrics columns fill within the test.
    let server = Server::start_with(ServerOptions {
        args: vec!["--heartbeat-interval".into(), "2".into()],
        ..Default::default()
    })
    .await;
    let mut listed = Scripts::new();
    listed.add("anything", "true", json!({}));
    let (server, api, mut agents, ids, _scripts) =
        fleet_on(server, vec![Scripts::new(), listed]).await;
    let cli = Cli::new(&server);
    let id = ids[0].as_str();
    outpost_e2e::wait_for("a heartbeat", READY_TIMEOUT, || {
        let api = api.clone();
        let path = format!("/api/agents/{id}");
        async move {
            api.get(&path).await.1["last_heartbeat"]
                .is_object()
                .then_some(())
        }
    })
    .await;

    let table = cli.run(&["agents", "ls"]).ok();
    assert!(table.stdout.starts_with("ID"), "{table:?}");
    for column in [
        "HOSTNAME",
        "STATUS",
        "HEARTBEAT",
        "CPU",
        "MEM",
        "DISK",
        "VERSION",
        "TAGS",
    ] {
        assert!(table.stdout.contains(column), "{column}: {table:?}");
    }
    let row = table
        .stdout
        .lines()
        .find(|l| l.starts_with(id))
        .expect("agent row");
    assert!(row.contains("online") && row.contains("web"), "{row}");
    // CPU, memory and disk as percentages, the heartbeat's age relative.
    assert_eq!(row.matches('%').count(), 3, "{row}");
    assert!(row.contains("s ago"), "{row}");

    // The second agent goes away: it is listed offline, and a run for it expires after --ttl.
    let gone = ids[1].as_str();
    agents[1].kill9();
    api.wait_status(gone, "offline").await;
    let expired = cli.run(&["run", "anything", "--on", gone, "--ttl", "1"]);
    assert_eq!(expired.code, 125, "{expired:?}");
    assert!(expired.stderr.contains("expired"), "{expired:?}");

    let listed = cli.json(&["agents", "ls", "--status", "online"]);
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!(listed[0]["agent_id"], id);
    assert_eq!(
        cli.json(&["agents", "ls", "--status", "offline"])[0]["agent_id"],
        gone
    );
    assert_eq!(
        cli.json(&["agents", "ls", "--tag", "web"])
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    assert_eq!(cli.json(&["agents", "ls", "--tag", "db"]), json!([]));

    // Both agents run on this host: its name is ambiguous, the end of an id is not.
    let hostname = listed[0]["hostname"].as_str().expect("hostname").to_owned();
    let ambiguous = cli.run(&["agents", "show", &hostname]);
    assert_eq!(ambiguous.code, 2, "{ambiguous:?}");
    assert!(
        ambiguous.stderr.contains("matches 2 agents"),
        "{ambiguous:?}"
    );
    let shown = cli.json(&["agents", "show", id]);
    assert_eq!(shown["agent_id"], id);
    let shown = cli.run(&["agents", "show", &id[id.len() - 8..]]).ok();
    assert!(
        shown.stdout.contains(id) && shown.stdout.contains("online"),
        "{shown:?}"
    );

    let pong = cli.run(&["ping", id]).ok();
    assert!(pong.stdout.starts_with("pong from"), "{pong:?}");
    assert_eq!(cli.json(&["ping", id])["status"], "succeeded");

    // Unknown agents, by name and by a well-formed id the server does not know.
    let unknown = cli.run(&["ping", "no-such-host"]);
    assert_eq!(unknown.code, 1, "{unknown:?}");
    assert!(
        unknown
            .stderr
            .starts_with("error: not_found: no agent matches"),
        "{unknown:?}"
    );
    let unknown = cli.run(&["agents", "show", "01234567-89ab-7def-8123-456789abcdef"]);
    assert_eq!(unknown.code, 1, "{unknown:?}");
    assert!(
        unknown.stderr.starts_with("error: not_found: "),
        "{unknown:?}"
    );

    // Keys: the secret is printed once, alone on stdout; then list, disable, enable,
    // regenerate, remove.
    let created = cli.json(&[
        "keys",
        "agent",
        "create",
        "ci",
        "--permission",
        "ping",
        "--tag",
        "ci",
        "--expires-at",
        "2099-01-01T00:00:00Z",
    ]);
    assert!(
        created["secret"]
            .as_str()
            .is_some_and(|s| s.starts_with("opa_")),
        "{created}"
    );
    assert_eq!(created["permissions"], json!(["ping"]));
    let plain = cli.run(&["keys", "agent", "create", "ops"]).ok();
    assert!(
        plain.stdout.trim().starts_with("opa_") && plain.stdout.lines().count() == 1,
        "{plain:?}"
    );
    assert!(plain.stderr.contains("only this once"), "{plain:?}");

    let keys = cli.json(&["keys", "agent", "ls"]);
    let names: Vec<&str> = keys
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|k| k["name"].as_str())
        .collect();
    assert_eq!(names.len(), 3, "{keys}");
    assert!(names.contains(&"ci") && names.contains(&"ops"), "{keys}");
    assert!(
        !keys.to_string().contains("opa_"),
        "no secret in listings: {keys}"
    );
    let table = cli.run(&["keys", "agent", "ls"]).ok();
    assert!(
        table.stdout.contains("ci") && table.stdout.contains("PERMISSIONS"),
        "{table:?}"
    );

    let status_of = |name: &str| -> Value {
        let keys = cli.json(&["keys", "agent", "ls"]);
        keys.as_array()
            .into_iter()
            .flatten()
            .find(|k| k["name"] == name)
            .map(|k| k["status"].clone())
            .unwrap_or(Value::Null)
    };
    cli.run(&["keys", "agent", "disable", "ci"]).ok();
    assert_eq!(status_of("ci"), "disabled");
    let ci_id = created["id"].as_str().expect("id");
    cli.run(&["keys", "agent", "enable", ci_id]).ok();
    assert_eq!(status_of("ci"), "active");
    let regenerated = cli.json(&["keys", "agent", "regenerate", "ci"]);
    assert!(
        regenerated["secret"]
            .as_str()
            .is_some_and(|s| s.starts_with("opa_"))
    );
    assert_ne!(regenerated["secret"], created["secret"]);
    cli.run(&["keys", "agent", "rm", "ci"]).ok();
    assert_eq!(status_of("ci"), Value::Null);
    let gone = cli.run(&["keys", "agent", "rm", "ci"]);
    assert_eq!(gone.code, 1, "{gone:?}");
    assert!(gone.stderr.starts_with("error: not_found: "), "{gone:?}");

    // The server's own validation comes back with its code and message.
    let bad = cli.run(&[
        "keys",
        "agent",
        "create",
        "x",
        "--permission",
        "format-disk",
    ]);
    assert_eq!(bad.code, 1, "{bad:?}");
    assert!(
        bad.stderr.starts_with("error: bad_request: permissions:"),
        "{bad:?}"
    );

    for shell in ["bash", "zsh", "fish"] {
        let script = cli.run(&["completions", shell]).ok();
        assert!(
            script.stdout.contains("outpost") && script.stdout.contains("agents"),
            "{shell}"
        );
    }
    let help = cli.run(&["run", "--help"]).ok();
    assert!(
        help.stdout.contains("Examples:") && help.stdout.contains("Exit status"),
        "{help:?}"
    );
    let help = cli.run(&["--help"]).ok();
    assert!(
        help.stdout.contains("124") && help.stdout.contains("OUTPOST_TOKEN"),
        "{help:?}"
    );
}

#[tokio::test]
async fn runs_exit_codes_and_job_history() {
    let mut one = Scripts::new();
    one.add(
        "hello",
        "echo \"hello $OUTPOST_PARAM_NAME\"; echo to-stderr >&2",
        json!({"params": ["NAME"]}),
    )
    .add("fail", "echo boom; exit 3", json!({}))
    .add("flaky", "echo fine", json!({}))
    .add("sleepy", "sleep 30", json!({}));
    let mut two = Scripts::new();
    two.add(
        "hello",
        "echo \"hello $OUTPOST_PARAM_NAME\"; echo to-stderr >&2",
        json!({"params": ["NAME"]}),
    )
    .add("fail", "echo boom; exit 3", json!({}))
    .add("flaky", "echo broken; exit 7", json!({}));
    let (server, api, _agents, ids, _scripts) = fleet(vec![one, two]).await;
    let cli = Cli::new(&server);
    let (a, b) = (ids[0].as_str(), ids[1].as_str());

    // One agent: the output as it is, stdout and stderr apart, exit 0.
    let hello = cli
        .run(&["run", "hello", "--on", a, "--param", "NAME=outpost"])
        .ok();
    assert_eq!(hello.stdout, "hello outpost\n", "{hello:?}");
    assert!(hello.stderr.contains("to-stderr"), "{hello:?}");

    // The script's exit code passes through.
    let fail = cli.run(&["run", "fail", "--on", a]);
    assert_eq!(fail.code, 3, "{fail:?}");
    assert_eq!(fail.stdout, "boom\n");
    assert!(fail.stderr.contains("failed, exit 3"), "{fail:?}");

    // A fan-out: every line prefixed by its agent, a summary, exit 0 only if all succeeded.
    let both = cli
        .run(&["run", "hello", "--on", "tag:web", "--param", "NAME=x"])
        .ok();
    let lines: Vec<&str> = both.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{both:?}");
    for id in [a, b] {
        assert!(
            lines
                .iter()
                .any(|l| l.contains(&id[id.len() - 8..]) && l.ends_with("| hello x")),
            "{id}: {both:?}"
        );
    }
    assert!(both.stderr.contains("2 runs: 2 succeeded"), "{both:?}");
    let flaky = cli.run(&["run", "flaky", "--on", "all"]);
    assert_eq!(flaky.code, 1, "{flaky:?}");
    assert!(
        flaky.stdout.contains("| fine") && flaky.stdout.contains("| broken"),
        "{flaky:?}"
    );
    assert!(flaky.stderr.contains("1 succeeded, 1 failed"), "{flaky:?}");
    let flaky = cli.run(&["run", "flaky", "--on", a, "--on", b, "--follow"]);
    assert_eq!(flaky.code, 1, "{flaky:?}");
    assert!(flaky.stderr.contains("1 succeeded, 1 failed"), "{flaky:?}");

    // --json: the server's job, parsed back.
    let job = cli.json(&["run", "hello", "--on", "all", "--param", "NAME=j"]);
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["runs"].as_array().map(Vec::len), Some(2));
    let hello_job = job["job_id"].as_str().expect("job_id").to_owned();

    // Secret parameters, given or read from a file: the script gets them, the job shows them
    // masked, and a bad flag does not echo what may be the secret.
    let file = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(file.path(), "from-a-file\n").expect("write");
    let secret = cli.json(&["run", "hello", "--on", a, "--secret", "NAME=s3cret-cli"]);
    assert_eq!(secret["status"], "succeeded", "{secret}");
    assert_eq!(secret["data"]["params"]["NAME"], "********", "{secret}");
    assert_eq!(secret["data"]["secret_params"], json!(["NAME"]), "{secret}");
    let secret_id = secret["job_id"].as_str().expect("job_id");
    let (_, out) = api
        .output(
            secret_id,
            secret["runs"][0]["run_id"].as_str().expect("run"),
            "?stream=stdout",
        )
        .await;
    assert_eq!(out, b"hello s3cret-cli\n", "the script got the value");
    let shown = cli.run(&["jobs", "show", secret_id]).ok();
    assert!(shown.stdout.contains("NAME=********"), "{shown:?}");
    // The parameter is never shown; what the script itself printed is its output, which
    // `show`'s groups quote once the run is digested (this script echoes the value).
    assert!(!shown.stdout.contains("NAME=s3cret-cli"), "{shown:?}");
    let from_file = cli.json(&[
        "run",
        "hello",
        "--on",
        a,
        "--secret-file",
        &format!("NAME={}", file.path().display()),
    ]);
    let (_, out) = api
        .output(
            from_file["job_id"].as_str().expect("job_id"),
            from_file["runs"][0]["run_id"].as_str().expect("run"),
            "?stream=stdout",
        )
        .await;
    assert_eq!(out, b"hello from-a-file\n", "{from_file}");
    let bad = cli.run(&["run", "hello", "--on", a, "--secret", "oops-s3cret"]);
    assert_eq!(bad.code, 2, "{bad:?}");
    assert!(!bad.stderr.contains("oops-s3cret"), "{bad:?}");

    // A timeout (124); a script the agent does not list is refused by the server at once,
    // naming the agent and the script (issue #27; it used to be sent, and refused by the agent).
    let slow = cli.run(&["run", "sleepy", "--on", a, "--timeout", "1"]);
    assert_eq!(slow.code, 124, "{slow:?}");
    assert!(slow.stderr.contains("timed_out"), "{slow:?}");
    let missing = cli.run(&["run", "sleepy", "--on", b]);
    assert_eq!(missing.code, 1, "{missing:?}");
    assert!(
        missing.stderr.starts_with("error: script_not_allowed: ")
            && missing.stderr.contains(b)
            && missing.stderr.contains("\"sleepy\"")
            && missing.stderr.contains("fail, flaky, hello"),
        "{missing:?}"
    );

    // Bad input is refused before anything runs.
    let unknown = cli.run(&["run", "hello", "--on", "no-such-host"]);
    assert_eq!(unknown.code, 1, "{unknown:?}");
    assert!(
        unknown
            .stderr
            .starts_with("error: not_found: no agent matches"),
        "{unknown:?}"
    );
    let bad = cli.run(&["run", "hello", "--on", a, "--param", "NAME"]);
    assert_eq!(bad.code, 2, "{bad:?}");
    // An unknown tag is named, by the server and in the CLI's hint (issue #27).
    let nobody = cli.run(&["run", "hello", "--on", "tag:nobody"]);
    assert_eq!(nobody.code, 1, "{nobody:?}");
    assert!(
        nobody
            .stderr
            .starts_with("error: unprocessable: target: no agent has the tag \"nobody\""),
        "{nobody:?}"
    );
    assert!(
        nobody
            .stderr
            .contains("hint: no agent has the tag \"nobody\": `outpost agents ls --tag nobody`"),
        "{nobody:?}"
    );
    let both = cli.run(&["run", "hello", "--on", "tag:web", "--on", "tag:nobody"]);
    assert!(
        both.stderr
            .contains("no agent has all of the tags \"web\", \"nobody\""),
        "{both:?}"
    );

    // History, filtered and paged.
    let page = cli.json(&["jobs", "ls"]);
    let jobs = page["jobs"].as_array().expect("jobs");
    assert!(jobs.len() >= 8, "{page}");
    let fails = cli.json(&["jobs", "ls", "--script", "fail", "--status", "failed"]);
    assert_eq!(fails["jobs"].as_array().map(Vec::len), Some(1), "{fails}");
    let on_b = cli.json(&["jobs", "ls", "--agent", b, "--script", "flaky"]);
    assert_eq!(on_b["jobs"].as_array().map(Vec::len), Some(2), "{on_b}");
    let recent = cli.json(&[
        "jobs",
        "ls",
        "--since",
        "1h",
        "--until",
        "2099-01-01T00:00:00Z",
    ]);
    assert_eq!(recent["jobs"].as_array().map(Vec::len), Some(jobs.len()));
    let old = cli.json(&["jobs", "ls", "--until", "1h"]);
    assert_eq!(old["jobs"], json!([]));
    let first = cli.run(&["jobs", "ls", "--limit", "1"]).ok();
    assert_eq!(first.stdout.lines().count(), 2, "{first:?}");
    let cursor = first
        .stderr
        .split("--cursor ")
        .nth(1)
        .map(|c| c.trim().to_owned())
        .expect("cursor hint");
    let second = cli.json(&["jobs", "ls", "--limit", "1", "--cursor", &cursor]);
    assert_eq!(second["jobs"][0]["job_id"], jobs[1]["job_id"]);
    let table = cli.run(&["jobs", "ls", "--status", "failed"]).ok();
    assert!(
        table.stdout.contains("run fail") && table.stdout.contains("failed"),
        "{table:?}"
    );

    // One job in full, and its output.
    let shown = cli.json(&["jobs", "show", &hello_job]);
    assert_eq!(shown["runs"].as_array().map(Vec::len), Some(2));
    let table = cli.run(&["jobs", "show", &hello_job]).ok();
    assert!(
        table.stdout.contains("run hello") && table.stdout.contains("NAME=j"),
        "{table:?}"
    );
    let logs = cli.run(&["jobs", "logs", &hello_job]).ok();
    assert_eq!(
        logs.stdout
            .lines()
            .filter(|l| l.ends_with("| hello j"))
            .count(),
        2,
        "{logs:?}"
    );
    let one_run = cli
        .run(&[
            "jobs",
            "logs",
            &hello_job,
            "--run",
            &b[b.len() - 8..],
            "--stream",
            "stderr",
        ])
        .ok();
    assert_eq!(one_run.stdout, "to-stderr\n", "{one_run:?}");
    let unknown = cli.run(&["jobs", "show", "01234567-89ab-7def-8123-456789abcdef"]);
    assert_eq!(unknown.code, 1, "{unknown:?}");
    assert!(
        unknown.stderr.starts_with("error: not_found: no job"),
        "{unknown:?}"
    );

    // Cancelling a job that is still running.
    let (_, job) = api
        .job(
            json!({"command": "run", "data": {"script": "sleepy"}, "target": {"agents": [a]}}),
            None,
        )
        .await;
    let job_id = job["job_id"].as_str().expect("job_id");
    let run_id = job["runs"][0]["run_id"].as_str().expect("run_id");
    wait_running(&api, run_id).await;
    let cancelled = cli.json(&["jobs", "cancel", job_id]);
    assert_eq!(cancelled["job_id"], job_id);
    let done = api.wait_job(job_id).await;
    assert_eq!(done["status"], "cancelled", "{done}");
}

/// Issue #27's CLI: `agents rm`, `agents tag add|rm`, job ids shortened as agent ids are,
/// completion candidates from the server, and three messages that now say what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_tag_short_job_ids_completion_and_messages() {
    let mut scripts = Scripts::new();
    scripts.add("hello", "echo hello", json!({}));
    let (server, api, mut agents, ids, _scripts) = fleet(vec![scripts]).await;
    let cli = Cli::new(&server);
    let id = ids[0].as_str();
    let short = &id[id.len() - 8..];

    // Server-side tags: added, used by a target, removed; a tag from the key stays, with a note.
    let tagged = cli.json(&["agents", "tag", "add", short, "canary", "blue"]);
    assert_eq!(tagged["server_tags"], json!(["canary", "blue"]), "{tagged}");
    let again = cli.run(&["agents", "tag", "add", id, "canary"]).ok();
    assert!(
        again.stderr.contains("server tags canary,blue"),
        "{again:?}"
    );
    assert_eq!(
        cli.json(&["agents", "ls", "--tag", "canary"])[0]["agent_id"],
        id
    );
    let on_tag = cli.run(&["run", "hello", "--on", "tag:canary"]).ok();
    assert_eq!(on_tag.stdout, "hello\n", "{on_tag:?}");
    let removed = cli.run(&["agents", "tag", "rm", id, "canary", "web"]).ok();
    assert!(
        removed
            .stderr
            .contains("note: \"web\" is not a server tag of")
            && removed.stderr.contains("agent's key"),
        "{removed:?}"
    );
    assert_eq!(
        cli.json(&["agents", "show", id])["server_tags"],
        json!(["blue"])
    );
    let usage = cli.run(&["agents", "tag", "add", id]);
    assert_eq!(usage.code, 2, "{usage:?}");

    // Job ids: the end of one (its random part) or a start, when unique.
    let first = cli.json(&["run", "hello", "--on", id]);
    let second = cli.json(&["run", "hello", "--on", id]);
    let job = first["job_id"].as_str().expect("job_id");
    let other = second["job_id"].as_str().expect("job_id");
    let job_end = &job[job.len() - 8..];
    assert_eq!(cli.json(&["jobs", "show", job_end])["job_id"], job);
    assert_eq!(
        cli.json(&["jobs", "show", &other[..other.len() - 4].to_uppercase()])["job_id"],
        other,
        "a start, in any case"
    );
    let logs = cli.run(&["jobs", "logs", job_end]).ok();
    assert_eq!(logs.stdout, "hello\n", "{logs:?}");
    let cancel = cli.run(&["jobs", "cancel", job_end]).ok();
    assert!(cancel.stderr.contains(job), "{cancel:?}");
    // The three jobs start alike (ids begin with their creation time).
    let ambiguous = cli.run(&["jobs", "show", &job[..4]]);
    assert_eq!(ambiguous.code, 2, "{ambiguous:?}");
    assert!(
        ambiguous.stderr.contains("matches 3 jobs")
            && ambiguous.stderr.contains(job)
            && ambiguous.stderr.contains(other),
        "{ambiguous:?}"
    );
    for unknown in ["0000abcd", "zzzz-not-hex", "ab"] {
        let run = cli.run(&["jobs", "show", unknown]);
        assert_eq!(run.code, 1, "{unknown}: {run:?}");
        assert!(
            run.stderr.starts_with("error: not_found: no job matches"),
            "{unknown}: {run:?}"
        );
    }
    let (status, page) = api.get("/api/jobs?id=ab").await;
    assert_eq!(status, reqwest::StatusCode::BAD_REQUEST, "{page}");

    // Completion: the scripts call `outpost __complete`, which lists what the server has.
    let candidates = |what: &str| -> Vec<String> {
        let run = cli.run(&["__complete", what]).ok();
        run.stdout.lines().map(str::to_owned).collect()
    };
    let hostname = cli.json(&["agents", "show", id])["hostname"]
        .as_str()
        .expect("hostname")
        .to_owned();
    let agents_words = candidates("agents");
    assert!(
        agents_words.contains(&id.to_owned()) && agents_words.contains(&hostname),
        "{agents_words:?}"
    );
    let targets = candidates("targets");
    for word in ["all", "tag:web", "tag:blue"] {
        assert!(targets.contains(&word.to_owned()), "{word}: {targets:?}");
    }
    let jobs = candidates("jobs");
    assert_eq!(
        jobs[..2],
        [other.to_owned(), job.to_owned()],
        "newest first"
    );
    let offline = Run::of(
        cli.bare()
            .args(["--url", "http://127.0.0.1:9", "__complete", "agents"]),
    );
    assert_eq!(offline.code, 0, "{offline:?}");
    assert!(
        offline.stdout.is_empty() && offline.stderr.is_empty(),
        "{offline:?}"
    );
    let bash = cli.run(&["completions", "bash"]).ok().stdout;
    assert!(
        bash.contains("outpost __complete \"$what\"") && !bash.contains("compgen -W \"$(outpost"),
        "{bash}"
    );
    let zsh = cli.run(&["completions", "zsh"]).ok().stdout;
    assert_eq!(zsh.matches(":_outpost_agents'").count(), 6, "{zsh}");
    assert_eq!(zsh.matches(":_outpost_jobs'").count(), 5, "{zsh}");
    assert_eq!(zsh.matches(":_outpost_targets'").count(), 1, "{zsh}");
    let fish = cli.run(&["completions", "fish"]).ok().stdout;
    assert!(fish.contains("(outpost __complete jobs)"), "{fish}");
    for (shell, script) in [("bash", &bash), ("zsh", &zsh)] {
        let check = Command::new(shell).arg("-n").stdin(Stdio::piped()).spawn();
        let Ok(mut check) = check else {
            println!("{shell} is not installed; its script's syntax is not checked");
            continue;
        };
        {
            use std::io::Write;
            let mut stdin = check.stdin.take().expect("stdin");
            stdin.write_all(script.as_bytes()).expect("write");
        }
        assert!(
            check.wait().expect("wait").success(),
            "{shell} -n: {script}"
        );
    }

    // Forgetting an agent that was uninstalled.
    agents[0].kill9();
    api.wait_status(id, "offline").await;
    let forgot = cli.run(&["agents", "rm", short]).ok();
    assert!(
        forgot.stderr.starts_with(&format!("Forgot agent {id} ("))
            && forgot.stderr.contains("lost"),
        "{forgot:?}"
    );
    assert_eq!(cli.json(&["agents", "ls"]), json!([]));
    let gone = cli.run(&["agents", "rm", id]);
    assert_eq!(gone.code, 1, "{gone:?}");

    // Messages: `run` without --on says what --on takes, and no usage line makes
    // OUTPOST_URL/OUTPOST_TOKEN (set here) look required.
    let no_on = cli.run(&["run", "hello"]);
    assert_eq!(no_on.code, 2, "{no_on:?}");
    assert!(
        no_on.stderr.contains("`outpost run` needs --on")
            && no_on.stderr.contains("--on tag:T")
            && no_on.stderr.contains("outpost run disk-usage --on all"),
        "{no_on:?}"
    );
    let no_agent = cli.run(&["agents", "show"]);
    assert_eq!(no_agent.code, 2, "{no_agent:?}");
    assert!(
        no_agent
            .stderr
            .contains("Usage: outpost agents show <AGENT>"),
        "{no_agent:?}"
    );
    for run in [&no_on, &no_agent] {
        assert!(
            !run.stderr.contains("--url <URL>") && !run.stderr.contains("--token <TOKEN>"),
            "{run:?}"
        );
    }
    // https:// against this plain-HTTP server names the cause and the cure.
    let https = server.url.replacen("http://", "https://", 1);
    let tls = Run::of(cli.cmd().args(["--url", &https, "agents", "ls"]));
    assert_eq!(tls.code, 69, "{tls:?}");
    assert!(
        tls.stderr.contains("plain HTTP, not HTTPS")
            && tls.stderr.contains(&format!("--url {}", server.url))
            && !tls.stderr.contains("InvalidContentType"),
        "{tls:?}"
    );
}

/// Waits until a run is running on its agent (or already over).
async fn wait_running(api: &Api, run_id: &str) {
    outpost_e2e::wait_for("run started", READY_TIMEOUT, || async move {
        let (_, cmd) = api.get(&format!("/api/commands/{run_id}")).await;
        matches!(cmd["status"].as_str(), Some(s) if s != "pending" && s != "delivered")
            .then_some(())
    })
    .await;
}

/// Spawns `outpost`, and reads its stdout line by line on a thread.
fn spawn_lines(cmd: &mut Command) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn outpost");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

fn next_line(rx: &std::sync::mpsc::Receiver<String>, what: &str) -> String {
    rx.recv_timeout(READY_TIMEOUT)
        .unwrap_or_else(|e| panic!("no line {what} within {READY_TIMEOUT:?}: {e}"))
}

fn wait_exit(child: &mut std::process::Child) -> (i32, String) {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            let mut stderr = String::new();
            if let Some(mut err) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut err, &mut stderr);
            }
            assert!(!stderr.contains("panicked"), "{stderr}");
            return (status.code().unwrap_or(-1), stderr);
        }
        assert!(start.elapsed() < READY_TIMEOUT, "outpost did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn follow_prints_output_before_the_script_ends() {
    let mut scripts = Scripts::new();
    // Prints a line, then waits until the test creates the file it names.
    scripts.add(
        "gate",
        "echo started; while [ ! -e \"$OUTPOST_PARAM_FILE\" ]; do sleep 0.05; done; echo finished; exit 4",
        json!({"params": ["FILE"]}),
    );
    let (server, api, _agents, ids, _scripts) = fleet(vec![scripts]).await;
    let cli = Cli::new(&server);
    let dir = tempfile::tempdir().expect("tempdir");
    let gate = dir.path().join("open");
    let param = format!("FILE={}", gate.display());

    let (mut child, lines) = spawn_lines(cli.cmd().args([
        "run",
        "gate",
        "--on",
        &ids[0],
        "--param",
        &param,
        "--timeout",
        "60",
        "--follow",
    ]));
    let first = next_line(&lines, "from run --follow");
    assert!(first.ends_with("| started"), "{first}");
    // The script is still waiting: the line came live, not at the end.
    assert!(child.try_wait().expect("try_wait").is_none());
    assert!(!gate.exists());
    std::fs::write(&gate, "").expect("open the gate");
    let last = next_line(&lines, "after the gate opened");
    assert!(last.ends_with("| finished"), "{last}");
    let (code, stderr) = wait_exit(&mut child);
    assert_eq!(code, 4, "the script's exit code passes through: {stderr}");

    // `jobs logs --follow` on a job started elsewhere.
    std::fs::remove_file(&gate).expect("close the gate");
    let (_, job) = api
        .job(
            json!({"command": "run", "data": {"script": "gate", "params": {"FILE": gate.display().to_string()}},
                   "target": {"agents": [ids[0]]}}),
            None,
        )
        .await;
    let job_id = job["job_id"].as_str().expect("job_id");
    let (mut child, lines) = spawn_lines(cli.cmd().args(["jobs", "logs", job_id, "--follow"]));
    assert_eq!(next_line(&lines, "from jobs logs --follow"), "started");
    assert!(child.try_wait().expect("try_wait").is_none());
    std::fs::write(&gate, "").expect("open the gate");
    assert_eq!(next_line(&lines, "after the gate opened"), "finished");
    let (code, stderr) = wait_exit(&mut child);
    assert_eq!(code, 0, "{stderr}");
}

#[tokio::test]
async fn login_config_bad_token_and_server_down() {
    let server = Server::start().await;
    let cli = Cli::new(&server);

    // No token anywhere.
    let none = Run::of(cli.bare().args(["--url", &cli.url, "agents", "ls"]));
    assert_eq!(none.code, 77, "{none:?}");
    assert!(none.stderr.contains("outpost login"), "{none:?}");

    // A token the server refuses.
    let bad = Run::of(
        cli.bare()
            .args(["--url", &cli.url, "--token", "opk_wrong", "agents", "ls"]),
    );
    assert_eq!(bad.code, 77, "{bad:?}");
    assert!(bad.stderr.starts_with("error: unauthorized: "), "{bad:?}");
    assert!(bad.stderr.contains(&cli.url), "names the server: {bad:?}");

    // login refuses a bad token and writes nothing.
    let refused = Run::of(
        cli.bare()
            .args(["login", "--url", &cli.url, "--token", "opk_wrong"]),
    );
    assert_eq!(refused.code, 77, "{refused:?}");
    let file = cli.home.path().join("config/outpost/config.toml");
    assert!(!file.exists());

    // login with the token on stdin; the file is private and later commands use it.
    let mut login = cli.bare();
    login
        .args(["login", "--url", &cli.url])
        .stdin(Stdio::piped());
    let mut child = login
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        writeln!(stdin, "{}", cli.token).expect("write token");
    }
    let out = child.wait_with_output().expect("login");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(mode(&file), 0o600);
    assert_eq!(mode(file.parent().expect("dir")), 0o700);
    let text = std::fs::read_to_string(&file).expect("config");
    assert!(
        text.contains(&cli.url) && text.contains(&cli.token),
        "{text}"
    );
    let listed = Run::of(cli.bare().args(["--json", "agents", "ls"])).ok();
    assert_eq!(listed.stdout.trim(), "[]");

    // Precedence: flag over environment over file.
    let env_bad = Run::of(
        cli.bare()
            .env("OUTPOST_TOKEN", "opk_wrong")
            .args(["agents", "ls"]),
    );
    assert_eq!(env_bad.code, 77, "{env_bad:?}");
    Run::of(
        cli.bare()
            .env("OUTPOST_TOKEN", "opk_wrong")
            .args(["--token", &cli.token, "agents", "ls"]),
    )
    .ok();

    // A broken file is reported by name; login with --token replaces it; logout removes it.
    std::fs::write(&file, "url = ").expect("break the config");
    let broken = Run::of(cli.bare().args(["agents", "ls"]));
    assert_eq!(broken.code, 1, "{broken:?}");
    assert!(broken.stderr.contains("config.toml"), "{broken:?}");
    Run::of(
        cli.bare()
            .args(["login", "--url", &cli.url, "--token", &cli.token]),
    )
    .ok();
    assert_eq!(mode(&file), 0o600);
    Run::of(cli.bare().args(["logout"])).ok();
    assert!(!file.exists());
    assert_eq!(Run::of(cli.bare().args(["agents", "ls"])).code, 77);

    // The server down: a clear message naming the URL, its own exit status, no panic.
    let url = server.url.clone();
    drop(server);
    let down = cli.run(&["agents", "ls"]);
    assert_eq!(down.code, 69, "{down:?}");
    assert!(
        down.stderr
            .starts_with(&format!("error: cannot reach the Outpost server at {url}")),
        "{down:?}"
    );
    let down = cli.run(&["run", "x", "--on", "all", "--follow"]);
    assert_eq!(down.code, 69, "{down:?}");
    let bad_url = Run::of(
        cli.bare()
            .args(["--url", "ftp://x", "--token", "t", "agents", "ls"]),
    );
    assert_eq!(bad_url.code, 2, "{bad_url:?}");
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

/// What agents report is printed with its control characters escaped, so an agent cannot
/// drive the reader's terminal (retitle it, clear it, hide lines); `--json` stays exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_agents_report_cannot_drive_the_terminal() {
    use outpost_e2e::ws::{self, Seen};
    use outpost_protocol::ServerFrame;
    // Retitles an xterm, then clears the screen.
    const EVIL: &str = "boom\u{1b}]0;pwned\u{7}\u{1b}[2J";
    let server = Server::start().await;
    let api = server.api();
    let (_, key) = api.agent_key().await;
    let id = "0199aaaa-0000-7000-8000-00000000e5c0";
    let mut peer = ws::connect(&server.url, &key).await.expect("connect");
    assert!(matches!(peer.frame().await, ServerFrame::Connected(_)));
    let mut register = ws::register(id);
    register["data"]["scripts"] = json!([{"name": "deploy", "description": "two\nlines"}]);
    peer.send_json(&register).await;
    api.wait_online(id).await;
    // The peer fails every command with a message full of escapes.
    tokio::spawn(async move {
        while let Seen::Frame(frame) = peer.next(Duration::from_secs(600)).await {
            if let ServerFrame::Command(c) = frame {
                peer.send_json(&json!({"type": "ack", "command_id": c.command_id}))
                    .await;
                peer.send_json(&json!({"type": "response", "command_id": c.command_id,
                    "success": false, "data": {}, "error": {"code": "exit_code", "message": EVIL}}))
                    .await;
            }
        }
    });
    let (status, job) = api
        .job(
            json!({"command": "run", "data": {"script": "deploy", "params": {"NOTE": EVIL}},
                   "target": {"agents": [id]}}),
            Some(30),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{job}");
    let job_id = job["job_id"].as_str().expect("job id").to_owned();
    let cli = Cli::new(&server);

    let escaped = r"boom\x1b]0;pwned\x07\x1b[2J";
    let shown = cli.run(&["jobs", "show", &job_id]).ok();
    assert!(!shown.stdout.contains('\u{1b}'), "{shown:?}");
    assert!(
        shown.stdout.contains(&format!("exit_code: {escaped}")),
        "{shown:?}"
    );
    assert!(
        shown.stdout.contains(&format!("NOTE={escaped}")),
        "{shown:?}"
    );
    let listed = cli.run(&["agents", "show", id]).ok();
    assert!(listed.stdout.contains("deploy"), "{listed:?}");

    // An error quoting the agent is escaped too.
    let ping = cli.run(&["ping", id]);
    assert_eq!(ping.code, 1, "{ping:?}");
    assert!(!ping.stderr.contains('\u{1b}'), "{ping:?}");
    assert!(ping.stderr.contains(escaped), "{ping:?}");

    // `--json` is the exact JSON, whose escapes a JSON reader undoes.
    let exact = cli.json(&["jobs", "show", &job_id]);
    assert_eq!(exact["runs"][0]["error"]["message"], EVIL);
    assert_eq!(exact["data"]["params"]["NOTE"], EVIL);
}

/// `outpost rollouts`: a rollout started, followed and listed by host name, a refusal that
/// names the field, the fleet policy, and a rollback behind its confirmation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollouts_start_show_policy_and_rollback() {
    let (server, api, _agents, ids, _) = fleet(vec![Scripts::new(), Scripts::new()]).await;
    let cli = Cli::new(&server);
    // The agents run the server's own build, which it serves while nothing is published: a
    // rollout to that version finds them already there.
    let (_, agent) = api.get(&format!("/api/agents/{}", ids[0])).await;
    let version = agent["version"].as_str().expect("version").to_owned();
    let started = cli.json(&[
        "rollouts", "start", &version, "--tag", "web", "--canary", "1",
    ]);
    let id = started["id"].as_str().expect("id").to_owned();
    assert_eq!(started["agents"], 2, "{started}");
    let deadline = Instant::now() + READY_TIMEOUT;
    let done = loop {
        let shown = cli.json(&["rollouts", "show", &id]);
        if shown["state"] == "completed" {
            break shown;
        }
        assert!(Instant::now() < deadline, "not completed: {shown}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(done["stages"][0]["counts"]["healthy"], 1, "{done}");
    let shown = cli.run(&["rollouts", "show", &id, "--agents"]).ok();
    assert!(shown.stdout.contains("completed"), "{shown:?}");
    assert!(shown.stdout.contains("HOSTNAME"), "{shown:?}");
    assert!(
        !shown.stdout.contains(&ids[0]),
        "hosts are named by host name: {shown:?}"
    );
    let listed = cli.run(&["rollouts", "ls"]).ok();
    assert!(listed.stdout.contains(&id), "{listed:?}");

    // A version the server cannot serve: refused, naming the field.
    let refused = cli.run(&["rollouts", "start", "9.9.9", "--all"]);
    assert_ne!(refused.code, 0, "{refused:?}");
    assert!(refused.stderr.contains("version"), "{refused:?}");

    // The policy: a minimum above the fleet lists the agents below it.
    let policy = cli.json(&["rollouts", "policy", "--min-version", "99.0.0"]);
    assert_eq!(policy["agents_below"], 2, "{policy}");
    assert_eq!(
        policy["desired"][0]["version"],
        version.as_str(),
        "{policy}"
    );
    let cleared = cli.json(&["rollouts", "policy", "--clear"]);
    assert_eq!(cleared["min_agent_version"], Value::Null, "{cleared}");

    // A rollback asks first; without a terminal and without --yes, nothing happens.
    let asked = cli.run(&["rollouts", "rollback", &id]);
    assert_ne!(asked.code, 0, "{asked:?}");
    assert_eq!(cli.json(&["rollouts", "show", &id])["state"], "completed");
    let back = cli.json(&["rollouts", "rollback", &id, "--yes"]);
    assert!(
        back["state"] == "rolling_back" || back["state"] == "rolled_back",
        "{back}"
    );
}
