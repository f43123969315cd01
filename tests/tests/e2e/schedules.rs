//! Schedules over the real server, with the time injected: the server's hidden
//! `OUTPOST_TEST_CLOCK_FILE` makes schedules read "now" from a file the test moves, so a fire
//! at 02:30 in New York, an hour of missed fires or a clock set back take milliseconds, not
//! their real time. (Fires in real time, a `kill -9` across a fire and two nodes on
//! PostgreSQL are `schedules_live`'s.)

use std::path::PathBuf;
use std::time::Duration;

use outpost_e2e::{Agent, Api, Server, ServerOptions, wait_for};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// A server whose schedules read the time from a file, and that file.
async fn server_with_clock(at: &str) -> (Server, PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = dir.path().join("clock");
    std::fs::write(&clock, at).expect("clock");
    let server = Server::start_with(ServerOptions {
        envs: vec![(
            "OUTPOST_TEST_CLOCK_FILE".into(),
            clock.display().to_string(),
        )],
        ..Default::default()
    })
    .await;
    (server, clock, dir)
}

fn set_clock(clock: &PathBuf, at: &str) {
    // Written whole and renamed, so the server never reads half a timestamp.
    let next = clock.with_extension("next");
    std::fs::write(&next, at).expect("clock");
    std::fs::rename(&next, clock).expect("clock");
}

async fn create(api: &Api, body: Value) -> Value {
    let (status, made) = api.post("/api/schedules", body).await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    made
}

/// The schedule's jobs, oldest fire first.
async fn jobs_of(api: &Api, schedule: &str) -> Vec<Value> {
    let (status, page) = api
        .get(&format!("/api/jobs?schedule_id={schedule}&limit=200"))
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let mut jobs = page["jobs"].as_array().expect("jobs").clone();
    jobs.sort_by_key(|j| {
        (
            j["scheduled_for"].as_str().unwrap_or("").to_owned(),
            j["catch_up"].is_null(),
        )
    });
    jobs
}

async fn wait_jobs(api: &Api, schedule: &str, count: usize) -> Vec<Value> {
    wait_for(
        &format!("{count} jobs of schedule {schedule}"),
        Duration::from_secs(30),
        || async {
            let jobs = jobs_of(api, schedule).await;
            (jobs.len() >= count).then_some(jobs)
        },
    )
    .await
}

async fn events(api: &Api, kind: &str, schedule: &str) -> Vec<Value> {
    let (status, page) = api
        .get(&format!("/api/events?type={kind}&subject_id={schedule}"))
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    page["events"].as_array().expect("events").clone()
}

fn instants(jobs: &[Value]) -> Vec<&str> {
    jobs.iter()
        .map(|j| j["scheduled_for"].as_str().expect("scheduled_for"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fires_follow_the_zone_s_clock_across_daylight_saving() {
    let (server, clock, _dir) = server_with_clock("2026-03-07T12:00:00Z").await;
    let api = server.api();
    // Nothing matches `all` yet: each fire records a failed job without runs that says so.
    let nightly = create(
        &api,
        json!({"name": "nightly", "cron": "30 2 * * *", "timezone": "America/New_York",
               "command": "ping", "target": {"all": true}}),
    )
    .await;
    let id = nightly["id"].as_str().expect("id");
    // 02:30 does not exist on 8 March in New York: the fire is at 03:00 EDT.
    assert_eq!(nightly["next_fire_at"], "2026-03-08T07:00:00Z");
    set_clock(&clock, "2026-03-08T07:00:00.300Z");
    let jobs = wait_jobs(&api, id, 1).await;
    assert_eq!(instants(&jobs), ["2026-03-08T07:00:00Z"]);
    assert_eq!(jobs[0]["status"], "failed");
    assert!(
        jobs[0]["note"]
            .as_str()
            .is_some_and(|n| n.contains("matched no agent")),
        "{}",
        jobs[0]
    );
    assert!(jobs[0]["catch_up"].is_null());
    let (_, shown) = api.get(&format!("/api/schedules/{id}")).await;
    assert_eq!(shown["last_fire_at"], "2026-03-08T07:00:00Z");
    assert_eq!(shown["last_job"]["job_id"], jobs[0]["job_id"]);
    assert_eq!(shown["last_job"]["status"], "failed");
    assert_eq!(shown["next_fire_at"], "2026-03-09T06:30:00Z");

    // Every quarter hour across 1 November's repeated hour: both copies, each instant once.
    set_clock(&clock, "2026-11-01T04:50:00Z");
    let quarter = create(
        &api,
        json!({"name": "quarter", "cron": "*/15 * * * *", "timezone": "America/New_York",
               "command": "ping", "target": {"all": true}}),
    )
    .await;
    let quarter = quarter["id"].as_str().expect("id");
    let expected = [
        "2026-11-01T05:00:00Z",
        "2026-11-01T05:15:00Z",
        "2026-11-01T05:30:00Z",
        "2026-11-01T05:45:00Z",
        "2026-11-01T06:00:00Z",
        "2026-11-01T06:15:00Z",
        "2026-11-01T06:30:00Z",
        "2026-11-01T06:45:00Z",
        "2026-11-01T07:00:00Z",
    ];
    for (n, at) in expected.iter().enumerate() {
        // Each instant reached in turn, a moment after it: each fire is on time.
        set_clock(&clock, &at.replace(":00Z", ":00.500Z"));
        wait_jobs(&api, quarter, n + 1).await;
    }
    let jobs = jobs_of(&api, quarter).await;
    assert_eq!(instants(&jobs), expected);
    // Meanwhile the nightly one missed every night from 9 March to 31 October (the clock
    // jumped): one event counts them, and no job was made for them (`missed: skip`).
    let missed = wait_for(
        "the nightly's missed event",
        Duration::from_secs(10),
        || async {
            let found = events(&api, "schedule.missed", id).await;
            (!found.is_empty()).then_some(found)
        },
    )
    .await;
    assert_eq!(missed.len(), 1, "{missed:?}");
    assert_eq!(missed[0]["data"]["missed"], 237, "{}", missed[0]);
    assert_eq!(missed[0]["subject"]["name"], "nightly");
    assert!(
        missed[0]["summary"]
            .as_str()
            .is_some_and(|s| s.contains("237"))
    );
    assert_eq!(jobs_of(&api, id).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missed_fires_follow_the_policy_and_a_clock_set_back_repeats_nothing() {
    let (server, clock, _dir) = server_with_clock("2026-06-01T00:00:00Z").await;
    let api = server.api();
    let body = |name: &str, missed: &str| {
        json!({"name": name, "cron": "*/10 * * * *", "command": "ping",
               "target": {"all": true}, "missed": missed})
    };
    let skip = create(&api, body("skip", "skip")).await;
    let skip = skip["id"].as_str().expect("id").to_owned();
    let once = create(&api, body("once", "run_once")).await;
    let once = once["id"].as_str().expect("id").to_owned();

    // The clock jumps an hour: 00:10 … 00:50 are missed (more than 60 s ago), 01:00 is 5 s
    // late and runs.
    set_clock(&clock, "2026-06-01T01:00:05Z");
    let skipped = wait_jobs(&api, &skip, 1).await;
    assert_eq!(instants(&skipped), ["2026-06-01T01:00:00Z"]);
    let caught = wait_jobs(&api, &once, 2).await;
    assert_eq!(
        instants(&caught),
        ["2026-06-01T00:10:00Z", "2026-06-01T01:00:00Z"]
    );
    assert_eq!(caught[0]["catch_up"], true, "{}", caught[0]);
    assert!(caught[1]["catch_up"].is_null());
    for (schedule, policy, job) in [(&skip, "skip", None), (&once, "run_once", Some(&caught[0]))] {
        let missed = wait_for("the missed event", Duration::from_secs(10), || async {
            let found = events(&api, "schedule.missed", schedule).await;
            (!found.is_empty()).then_some(found)
        })
        .await;
        assert_eq!(missed.len(), 1, "{missed:?}");
        let detail = &missed[0]["data"];
        assert_eq!(detail["missed"], 5, "{detail}");
        assert_eq!(detail["policy"], policy);
        assert_eq!(detail["first"], "2026-06-01T00:10:00Z");
        assert_eq!(
            detail["job_id"],
            job.map_or(Value::Null, |j| j["job_id"].clone())
        );
    }

    // Set back half an hour: what fired does not fire again. A probe due at 00:31 shows the
    // loop has looked at the others at that time.
    set_clock(&clock, "2026-06-01T00:30:30Z");
    let probe = create(
        &api,
        json!({"name": "probe", "cron": "31 0 * * *", "command": "ping", "target": {"all": true}}),
    )
    .await;
    let probe = probe["id"].as_str().expect("id").to_owned();
    set_clock(&clock, "2026-06-01T00:31:01Z");
    wait_jobs(&api, &probe, 1).await;
    assert_eq!(jobs_of(&api, &skip).await.len(), 1);
    assert_eq!(jobs_of(&api, &once).await.len(), 2);
    let (_, shown) = api.get(&format!("/api/schedules/{skip}")).await;
    assert_eq!(shown["next_fire_at"], "2026-06-01T01:10:00Z");

    // Forward again: both go on at their next instant, once.
    set_clock(&clock, "2026-06-01T01:10:01Z");
    assert_eq!(
        instants(&wait_jobs(&api, &skip, 2).await),
        ["2026-06-01T01:00:00Z", "2026-06-01T01:10:00Z"]
    );
    wait_jobs(&api, &once, 3).await;

    // Paused for two hours, then enabled: nothing counted missed, the next fire from now.
    let (status, paused) = api
        .patch(&format!("/api/schedules/{skip}"), json!({"enabled": false}))
        .await;
    assert_eq!(status, StatusCode::OK, "{paused}");
    assert!(paused["next_fire_at"].is_null());
    set_clock(&clock, "2026-06-01T03:05:00Z");
    let (status, resumed) = api
        .patch(&format!("/api/schedules/{skip}"), json!({"enabled": true}))
        .await;
    assert_eq!(status, StatusCode::OK, "{resumed}");
    assert_eq!(resumed["next_fire_at"], "2026-06-01T03:10:00Z");
    set_clock(&clock, "2026-06-01T03:10:01Z");
    let jobs = wait_jobs(&api, &skip, 3).await;
    assert_eq!(jobs.len(), 3);
    assert_eq!(events(&api, "schedule.missed", &skip).await.len(), 1);
    // A fire is unique: no two jobs of one schedule share an instant.
    for schedule in [&skip, &once] {
        let jobs = jobs_of(&api, schedule).await;
        let mut seen = instants(&jobs);
        seen.dedup();
        assert_eq!(seen.len(), jobs.len(), "{jobs:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_schedules_are_refused_naming_the_field() {
    let server = Server::start().await;
    let api = server.api();
    let (member, _) = server
        .user("member@example.com", "member", "a long password 1")
        .await;
    // An agent whose key permits only `ping`.
    let (_, secret) = api
        .create_key(json!({"name": "ping-only", "permissions": ["ping"]}))
        .await;
    let agent_process = Agent::start(&server.url, &secret);
    let agent = agent_process.wait_online(&api).await;
    let base = json!({"name": "s", "cron": "0 3 * * *", "command": "ping",
                      "target": {"agents": [agent]}});
    let with = |field: &str, value: Value| {
        let mut body = base.clone();
        body[field] = value;
        body
    };
    for (body, needle) in [
        (with("cron", json!("0 3 * *")), "cron:"),
        (with("cron", json!("0 0 3 * * *")), "cron:"),
        (with("cron", json!("61 * * * *")), "cron:"),
        (with("cron", json!("*/0 * * * *")), "cron:"),
        (with("cron", json!("@every 1s")), "cron:"),
        (with("cron", json!("0 3 * FOO *")), "cron:"),
        (with("cron", json!("0 0 30 2 *")), "cron:"),
        (with("timezone", json!("Mars/Olympus")), "timezone:"),
        (with("name", json!("no spaces allowed")), "name:"),
        (with("missed", json!("sometimes")), "missed"),
        (with("concurrency", json!("maybe")), "concurrency"),
        (with("command", json!("fly")), "command"),
        (with("timeout_s", json!(0)), "timeout_s"),
        (with("target", json!({})), "target"),
        (
            with("target", json!({"agents": ["nobody"]})),
            "target.agents",
        ),
        (with("webhook_url", json!("ftp://x")), "webhook_url"),
        (with("data", json!({"pad": "x".repeat(70 * 1024)})), "data:"),
        // The agent's key does not permit a run.
        (
            json!({"name": "s", "cron": "0 3 * * *", "command": "run",
                   "data": {"script": "backup"}, "target": {"agents": [agent]}}),
            "command:",
        ),
    ] {
        let (status, answer) = api.post("/api/schedules", body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body} -> {answer}");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "{body} -> {message}");
    }
    // A body past the request limit.
    let (status, answer) = api
        .post(
            "/api/schedules",
            with("data", json!({"pad": "x".repeat(2 * 1024 * 1024)})),
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{answer}");

    // Members read schedules and run one now; they do not make them.
    let made = create(&api, base.clone()).await;
    let id = made["id"].as_str().expect("id");
    let (status, answer) = api.post("/api/schedules", base.clone()).await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    assert_eq!(answer["error"]["code"], "name_taken");
    let (status, _) = member
        .post("/api/schedules", with("name", json!("m")))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, listed) = member.get("/api/schedules").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed["schedules"][0]["id"], id);
    let (status, job) = member
        .post(&format!("/api/schedules/{id}/run"), json!({}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    assert_eq!(job["schedule_id"], id);
    assert!(job["scheduled_for"].is_null());
    let done = api.wait_job(job["job_id"].as_str().expect("job")).await;
    assert_eq!(done["status"], "succeeded", "{done}");

    // PATCH: null where a field cannot be cleared, an unknown field, a bad pattern.
    for (body, needle) in [
        (json!({"cron": null}), "cron"),
        (json!({"colour": "red"}), "colour"),
        (json!({"cron": "* * *"}), "cron:"),
        (json!({}), "at least one field"),
    ] {
        let (status, answer) = api
            .patch(&format!("/api/schedules/{id}"), body.clone())
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body} -> {answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(needle)),
            "{body} -> {answer}"
        );
    }

    // The tenant's max_schedules (set by the server's owner) is enforced.
    let (_, me) = api.get("/api/auth/me").await;
    let tenant = me["tenant"]["id"]
        .as_str()
        .or_else(|| me["tenant_id"].as_str())
        .expect("tenant id")
        .to_owned();
    let (status, answer) = api
        .patch(
            &format!("/api/tenants/{tenant}"),
            json!({"max_schedules": 1}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let (status, answer) = api.post("/api/schedules", with("name", json!("two"))).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
    assert_eq!(answer["error"]["code"], "quota_exceeded");
    assert!(
        answer["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("max_schedules"))
    );
    drop(agent_process);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_s_secret_parameters_are_sealed_at_rest() {
    let server = Server::start().await;
    let api = server.api();
    let secret = format!("hunter-{}", uuid::Uuid::new_v4().simple());
    let made = create(
        &api,
        json!({"name": "with-secret", "cron": "@daily", "command": "run",
               "data": {"script": "deploy", "params": {"TOKEN": secret, "ENV": "prod-visible"},
                        "secret_params": ["TOKEN"]},
               "target": {"all": true}}),
    )
    .await;
    assert_eq!(made["data"]["params"]["TOKEN"], "********", "{made}");
    assert_eq!(made["data"]["params"]["ENV"], "prod-visible");
    // Changing what it runs without giving the data again would lose the secret: refused.
    let id = made["id"].as_str().expect("id");
    let (status, answer) = api
        .patch(&format!("/api/schedules/{id}"), json!({"timeout_s": 30}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    let (status, audit) = api.get("/api/audit?action=schedule").await;
    assert_eq!(status, StatusCode::OK);
    assert!(!audit.to_string().contains(&secret));
    assert!(audit.to_string().contains("schedule.create"), "{audit}");
    let rest = server.at_rest();
    let visible = rest
        .iter()
        .any(|(_, bytes)| bytes.windows(12).any(|w| w == b"prod-visible"));
    assert!(visible, "the search finds what is stored in the clear");
    for (place, bytes) in rest {
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "the secret is in {place}"
        );
    }
}
