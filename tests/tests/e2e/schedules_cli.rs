//! The schedules CLI (CONTRACT.md §10) against the real server and a real agent: what `outpost
//! schedules …` sends is what the server stores, what it prints is what the server answers
//! (the next fire in the schedule's zone, the preview of a daylight-saving night), a run now
//! makes a job carrying the schedule's id, and the server's refusals reach the user with a
//! non-zero exit status.

use outpost_e2e::{Agent, CliHome, Scripts, Server};
use serde_json::{Value, json};

/// `outpost args` with the owner's key: (status, stdout, stderr).
fn run(cli: &CliHome, args: &[&str]) -> (i32, String, String) {
    let (status, out, err) = cli.run_with_key(args);
    assert!(
        !err.contains("panicked"),
        "outpost {args:?} panicked: {err}"
    );
    (status, out, err)
}

/// `outpost args` succeeded; its stdout.
fn ok(cli: &CliHome, args: &[&str]) -> String {
    let (status, out, err) = run(cli, args);
    assert_eq!(status, 0, "outpost {args:?}: {out}{err}");
    out
}

/// `outpost --json args` succeeded; its JSON.
fn ok_json(cli: &CliHome, args: &[&str]) -> Value {
    let args: Vec<&str> = std::iter::once("--json")
        .chain(args.iter().copied())
        .collect();
    let out = ok(cli, &args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("outpost {args:?}: {e}: {out}"))
}

/// `outpost args` failed with status 1; its stderr.
fn refused(cli: &CliHome, args: &[&str]) -> String {
    let (status, out, err) = run(cli, args);
    assert_eq!(status, 1, "outpost {args:?}: {out}{err}");
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_are_managed_from_the_command_line() {
    let server = Server::start().await;
    let api = server.api();
    let cli = CliHome::new(&server);
    let (_, secret) = api.create_key(json!({"name": "db", "tags": ["db"]})).await;
    let mut scripts = Scripts::new();
    scripts.add(
        "backup",
        r#"echo "backup keep=$OUTPOST_PARAM_KEEP""#,
        json!({}),
    );
    let agent = Agent::start_with(&server.url, &secret, None, scripts.env());
    agent.wait_online(&api).await;

    // Preview: the spring-forward night in New York. 02:30 does not exist on 8 March 2026,
    // so it fires at the end of the gap (03:00 EDT = 07:00Z), then at 02:30 EDT on the 9th.
    let preview_args = [
        "schedules",
        "preview",
        "--cron",
        "30 2 * * *",
        "--tz",
        "America/New_York",
        "--from",
        "2026-03-07T12:00:00Z",
        "-n",
        "2",
    ];
    let preview = ok_json(&cli, &preview_args);
    let fires: Vec<(&str, &str)> = preview["fires"]
        .as_array()
        .expect("fires")
        .iter()
        .map(|f| {
            (
                f["at"].as_str().unwrap_or(""),
                f["local"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        fires,
        [
            ("2026-03-08T07:00:00Z", "2026-03-08T03:00:00-04:00"),
            ("2026-03-09T06:30:00Z", "2026-03-09T02:30:00-04:00"),
        ],
        "{preview}"
    );
    let table = ok(&cli, &preview_args);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(
        lines[0].starts_with("UTC") && lines[0].contains("LOCAL"),
        "{table}"
    );
    assert!(
        lines[1].starts_with("2026-03-08T07:00:00Z")
            && lines[1].ends_with("2026-03-08T03:00:00-04:00"),
        "{table}"
    );
    assert!(lines[2].starts_with("2026-03-09T06:30:00Z"), "{table}");

    // Create, on the agents tagged db.
    let created = ok_json(
        &cli,
        &[
            "schedules",
            "create",
            "nightly-backup",
            "--cron",
            "30 2 * * *",
            "--tz",
            "America/New_York",
            "--tag",
            "db",
            "--script",
            "backup",
            "--param",
            "KEEP=7",
            "--timeout",
            "120",
            "--missed",
            "run_once",
            "--concurrency",
            "forbid",
            "--webhook",
            "https://hooks.example.com/outpost",
        ],
    );
    let id = created["id"].as_str().expect("id").to_owned();
    for (field, want) in [
        ("name", json!("nightly-backup")),
        ("cron", json!("30 2 * * *")),
        ("timezone", json!("America/New_York")),
        ("command", json!("run")),
        ("target", json!({"tags": ["db"]})),
        ("timeout_s", json!(120)),
        ("missed", json!("run_once")),
        ("concurrency", json!("forbid")),
        ("webhook_url", json!("https://hooks.example.com/outpost")),
        ("enabled", json!(true)),
    ] {
        assert_eq!(created[field], want, "{field}: {created}");
    }
    assert_eq!(created["data"]["script"], "backup", "{created}");
    assert_eq!(created["data"]["params"]["KEEP"], "7", "{created}");
    assert!(created["next_fire_at"].is_string(), "{created}");

    // A second one, paused, on every agent.
    ok(
        &cli,
        &[
            "schedules",
            "create",
            "hourly-ping",
            "--cron",
            "@hourly",
            "--all",
            "--command",
            "ping",
            "--disabled",
        ],
    );

    // ls: ordered by name, the next fire in the schedule's own zone.
    let table = ok(&cli, &["schedules", "ls"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    for title in ["NAME", "CRON", "TZ", "ENABLED", "NEXT", "LAST JOB STATUS"] {
        assert!(lines[0].contains(title), "{title}: {table}");
    }
    assert!(
        lines[1].starts_with("hourly-ping") && lines[1].contains("disabled"),
        "{table}"
    );
    let nightly = lines[2];
    assert!(
        nightly.starts_with("nightly-backup")
            && nightly.contains("30 2 * * *")
            && nightly.contains("America/New_York")
            && nightly.contains("yes")
            // 02:30:00 EST or EDT (03:00:00 EDT on the one night 02:30 does not exist).
            && (nightly.contains(" 02:30:00 E") || nightly.contains(" 03:00:00 EDT"))
            && nightly.contains("(in "),
        "{table}"
    );
    let page = ok_json(&cli, &["schedules", "ls", "--disabled"]);
    let names: Vec<&str> = page["schedules"]
        .as_array()
        .expect("schedules")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(names, ["hourly-ping"], "{page}");

    // show, by name and by id: every field.
    let shown = ok(&cli, &["schedules", "show", "nightly-backup"]);
    for want in [
        id.as_str(),
        "30 2 * * *",
        "America/New_York",
        "run backup",
        "KEEP=7",
        "tag:db",
        "120s",
        "run_once",
        "forbid",
        "https://hooks.example.com/outpost",
        "next fire:",
    ] {
        assert!(shown.contains(want), "{want}: {shown}");
    }
    assert_eq!(
        ok_json(&cli, &["schedules", "show", &id])["name"],
        "nightly-backup"
    );
    let err = refused(&cli, &["schedules", "show", "no-such-schedule"]);
    assert!(err.contains("no schedule \"no-such-schedule\""), "{err}");

    // edit: only what is given changes; --no-webhook clears.
    let edited = ok_json(
        &cli,
        &[
            "schedules",
            "edit",
            "nightly-backup",
            "--cron",
            "0 3 * * *",
            "--param",
            "KEEP=9",
            "--no-webhook",
        ],
    );
    assert_eq!(edited["cron"], "0 3 * * *", "{edited}");
    assert_eq!(edited["data"]["script"], "backup", "{edited}");
    assert_eq!(edited["data"]["params"]["KEEP"], "9", "{edited}");
    assert!(edited["webhook_url"].is_null(), "{edited}");
    for (field, want) in [
        ("timezone", json!("America/New_York")),
        ("target", json!({"tags": ["db"]})),
        ("timeout_s", json!(120)),
        ("concurrency", json!("forbid")),
    ] {
        assert_eq!(edited[field], want, "{field} must not change: {edited}");
    }
    let err = refused(
        &cli,
        &[
            "schedules",
            "edit",
            "nightly-backup",
            "--tz",
            "Mars/Olympus",
        ],
    );
    assert!(err.contains("timezone"), "{err}");

    // disable, enable.
    let off = ok_json(&cli, &["schedules", "disable", "nightly-backup"]);
    assert_eq!(off["enabled"], false, "{off}");
    assert!(off["next_fire_at"].is_null(), "{off}");
    let on = ok_json(&cli, &["schedules", "enable", &id]);
    assert_eq!(on["enabled"], true, "{on}");
    assert!(on["next_fire_at"].is_string(), "{on}");

    // run: a job now, carrying the schedule's id; --wait prints its output as `run` does.
    let out = ok(&cli, &["schedules", "run", "nightly-backup", "--wait"]);
    assert_eq!(out, "backup keep=9\n");
    let job_id = ok(&cli, &["schedules", "run", "nightly-backup"]);
    let job_id = job_id.trim();
    let jobs = ok_json(&cli, &["jobs", "ls", "--schedule", "nightly-backup"]);
    let jobs = jobs["jobs"].as_array().expect("jobs").clone();
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    assert!(
        jobs.iter().all(|j| j["schedule_id"] == id.as_str()),
        "{jobs:?}"
    );
    assert!(
        jobs.iter().any(|j| j["job_id"] == job_id),
        "{job_id}: {jobs:?}"
    );
    let job = ok(&cli, &["jobs", "show", job_id]);
    assert!(job.contains(&format!("schedule: {id}")), "{job}");
    // The other schedule's jobs are not listed.
    let other = ok_json(&cli, &["jobs", "ls", "--schedule", "hourly-ping"]);
    assert_eq!(other["jobs"], json!([]), "{other}");

    // events: the listing answers (nothing was missed or skipped here).
    let events = ok_json(&cli, &["events", "ls", "--subject", "nightly-backup"]);
    assert!(events["events"].is_array(), "{events}");

    // Bad expressions: the server's message, status 1.
    let err = refused(
        &cli,
        &[
            "schedules",
            "create",
            "bad",
            "--cron",
            "30 25 * * *",
            "--tag",
            "db",
            "--script",
            "backup",
        ],
    );
    assert!(err.starts_with("error: bad_request: cron:"), "{err}");
    let err = refused(&cli, &["schedules", "preview", "--cron", "61 * * * *"]);
    assert!(err.starts_with("error: bad_request: cron:"), "{err}");
    assert_eq!(
        ok_json(&cli, &["schedules", "ls"])["schedules"]
            .as_array()
            .map(Vec::len),
        Some(2),
        "a refused schedule must not be created"
    );

    // rm: gone, its jobs stay.
    ok(&cli, &["schedules", "rm", "nightly-backup"]);
    let err = refused(&cli, &["schedules", "show", &id]);
    assert!(err.contains("not_found"), "{err}");
    let jobs = ok_json(&cli, &["jobs", "ls", "--schedule", &id]);
    assert_eq!(jobs["jobs"].as_array().map(Vec::len), Some(2), "{jobs}");
}
