//! Schedules (CONTRACT.md §10) over the real binaries and the real clock: fires that run a script on
//! the agents a tag selects, fires missed while the server was down (`kill -9`) and what each
//! `missed` policy makes of them, `concurrency: forbid` against a script slower than the
//! interval, and two nodes on one PostgreSQL firing each instant once, the survivor going on
//! alone when the other dies.
//!
//! Every wait is on a condition read from the API (or on the wall clock passing a fire instant
//! the test computed from the fires it saw), never a fixed sleep; `@every 10s` keeps each test
//! to a few fires.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use outpost_e2e::postgres::{self, Database};
use outpost_e2e::{Agent, Api, Scripts, Server, ServerOptions, run_job, wait_for};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// The interval of every schedule here.
const EVERY_S: i64 = 10;

fn at(value: &Value) -> DateTime<Utc> {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("an RFC 3339 instant, not {value}"));
    DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("{text}: {e}"))
        .with_timezone(&Utc)
}

async fn create_schedule(api: &Api, body: Value) -> String {
    let (status, schedule) = api.post("/api/schedules", body).await;
    assert_eq!(status, StatusCode::CREATED, "{schedule}");
    schedule["id"].as_str().expect("id").to_owned()
}

/// Every job of a schedule (oldest fires first).
async fn jobs_of(api: &Api, schedule_id: &str) -> Vec<Value> {
    let (status, page) = api
        .get(&format!("/api/jobs?schedule_id={schedule_id}&limit=200"))
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(page["next_cursor"].is_null(), "more than a page: {page}");
    let mut jobs = page["jobs"].as_array().expect("jobs").clone();
    jobs.sort_by_key(|j| j["scheduled_for"].as_str().unwrap_or("").to_owned());
    jobs
}

async fn events_of(api: &Api, kind: &str, schedule_id: &str) -> Vec<Value> {
    let (status, page) = api
        .get(&format!(
            "/api/events?type={kind}&subject_id={schedule_id}&limit=200"
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    page["events"].as_array().expect("events").clone()
}

/// The fire instants of a schedule's jobs, asserting each has one and is on the 10 s grid.
fn instants(jobs: &[Value]) -> Vec<DateTime<Utc>> {
    jobs.iter()
        .map(|job| {
            let t = at(&job["scheduled_for"]);
            assert_eq!(
                (t.timestamp() % EVERY_S, t.timestamp_subsec_nanos()),
                (0, 0),
                "scheduled_for off the 10 s grid: {job}"
            );
            t
        })
        .collect()
}

/// Waits until the wall clock is past `instant`.
async fn wait_until(what: &str, instant: DateTime<Utc>) {
    let timeout = (instant - Utc::now()).to_std().unwrap_or_default() + Duration::from_secs(5);
    wait_for(what, timeout, || async {
        (Utc::now() >= instant).then_some(())
    })
    .await;
}

async fn agent_tagged(server: &Server, api: &Api, scripts: &Scripts, tag: &str) -> (Agent, String) {
    let (_, secret) = api.agent_key().await;
    let mut env = scripts.env();
    env.push(("OUTPOST_TAGS".into(), tag.into()));
    let agent = Agent::start_with(&server.url, &secret, None, env);
    let id = agent.wait_online(api).await;
    (agent, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_runs_a_script_on_the_tagged_agent_at_each_fire() {
    let server = Server::start().await;
    let api = server.api();
    let mut scripts = Scripts::new();
    scripts.add(
        "tick",
        "echo \"tick $OUTPOST_PARAM_WHO\"",
        json!({"params": ["WHO"]}),
    );
    let (_agent, agent_id) = agent_tagged(&server, &api, &scripts, "ticker").await;
    // A job of its own on the same agent, which the schedule's listing must leave out.
    let (status, other) = api
        .job(run_job(&agent_id, "tick", json!({"WHO": "me"})), None)
        .await;
    assert!(status.is_success(), "{status} {other}");

    let id = create_schedule(
        &api,
        json!({
            "name": "ticks", "cron": "@every 10s", "command": "run",
            "data": {"script": "tick", "params": {"WHO": "cron"}},
            "target": {"tags": ["ticker"]},
        }),
    )
    .await;
    let other_id = create_schedule(
        &api,
        json!({"name": "elsewhere", "cron": "@every 10s", "command": "run",
               "data": {"script": "tick"}, "target": {"tags": ["nobody"]}}),
    )
    .await;

    // Two fires (the first within 10 s of creation), the first one's run done.
    let jobs = wait_for(
        "two fires, the first succeeded",
        Duration::from_secs(25),
        || async {
            let jobs = jobs_of(&api, &id).await;
            (jobs.len() >= 2 && jobs[0]["status"] == "succeeded").then_some(jobs)
        },
    )
    .await;
    for job in &jobs {
        assert_eq!(job["schedule_id"], json!(id), "{job}");
        assert!(
            job.get("catch_up").is_none(),
            "a fire on time is no catch-up: {job}"
        );
    }
    let fires = instants(&jobs);
    assert_eq!(
        fires.iter().collect::<BTreeSet<_>>().len(),
        fires.len(),
        "one job per instant: {jobs:?}"
    );
    let job_id = jobs[0]["job_id"].as_str().expect("job_id");
    let (_, job) = api.get(&format!("/api/jobs/{job_id}")).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let runs = job["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 1, "{job}");
    assert_eq!(runs[0]["agent_id"], json!(agent_id), "{job}");
    let run_id = runs[0]["run_id"].as_str().expect("run_id");
    let (status, output) = api.output(job_id, run_id, "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(String::from_utf8_lossy(&output), "tick cron\n");

    // The schedule says what it last did and what it does next.
    let (status, schedule) = api.get(&format!("/api/schedules/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{schedule}");
    let last_fire = at(&schedule["last_fire_at"]);
    let last_job = &schedule["last_job"];
    let listed = jobs_of(&api, &id).await;
    assert!(last_fire >= *fires.last().expect("fire"), "{schedule}");
    assert_eq!(at(&last_job["scheduled_for"]), last_fire, "{schedule}");
    assert!(
        listed.iter().any(|j| j["job_id"] == last_job["job_id"]),
        "last_job is one of its jobs: {schedule} {listed:?}"
    );
    assert!(at(&schedule["next_fire_at"]) > last_fire, "{schedule}");
    assert_eq!(
        at(&schedule["next_fire_at"]).timestamp() % EVERY_S,
        0,
        "{schedule}"
    );

    // Its listing holds its jobs only: not the job made by hand, not the other schedule's.
    let other_jobs = wait_for(
        "the other schedule's fire",
        Duration::from_secs(15),
        || async {
            let jobs = jobs_of(&api, &other_id).await;
            (!jobs.is_empty()).then_some(jobs)
        },
    )
    .await;
    let listed = jobs_of(&api, &id).await;
    for job in &listed {
        assert_eq!(job["schedule_id"], json!(id), "{job}");
        assert_ne!(job["job_id"], other["job_id"]);
        assert!(other_jobs.iter().all(|o| o["job_id"] != job["job_id"]));
    }
    // A target matching nobody makes a failed job without runs.
    assert_eq!(other_jobs[0]["status"], "failed", "{other_jobs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fires_missed_while_the_server_was_down_follow_the_missed_policy() {
    let mut server = Server::start_with(ServerOptions {
        envs: vec![("OUTPOST_SCHEDULE_GRACE_S".into(), "2".into())],
        ..ServerOptions::default()
    })
    .await;
    let api = server.api();
    let mut ids = BTreeMap::new();
    for policy in ["run_once", "skip"] {
        let id = create_schedule(
            &api,
            json!({"name": format!("down-{policy}"), "cron": "@every 10s", "command": "run",
                   "data": {"script": "nothing"}, "target": {"tags": ["nobody"]},
                   "missed": policy}),
        )
        .await;
        ids.insert(policy, id);
    }
    // Both fired at least once: the loop runs.
    for id in ids.values() {
        wait_for("a first fire", Duration::from_secs(20), || async {
            (!jobs_of(&api, id).await.is_empty()).then_some(())
        })
        .await;
    }
    server.kill9();
    // Down until the two instants after the kill are older than the grace: at most the
    // instant at (or before) the kill fired, the next two are missed.
    let killed_at = Utc::now();
    let last_before =
        DateTime::from_timestamp(killed_at.timestamp() / EVERY_S * EVERY_S, 0).expect("instant");
    let back_at = last_before + chrono::Duration::seconds(2 * EVERY_S + 2 + 3);
    wait_until("two fires to pass while the server is down", back_at).await;
    server.restart().await;

    for (policy, id) in &ids {
        wait_for(
            &format!("the schedule.missed event of {policy}"),
            Duration::from_secs(15),
            || async {
                let events = events_of(&api, "schedule.missed", id).await;
                (!events.is_empty()).then_some(events)
            },
        )
        .await;
        // The loop is past the restart's catch-up once it made the next regular fire.
        let jobs = wait_for(
            "a regular fire after the restart",
            Duration::from_secs(20),
            || async {
                let jobs = jobs_of(&api, id).await;
                jobs.iter()
                    .any(|j| j.get("catch_up").is_none() && at(&j["scheduled_for"]) > killed_at)
                    .then_some(jobs)
            },
        )
        .await;
        let events = events_of(&api, "schedule.missed", id).await;
        assert_eq!(
            events.len(),
            1,
            "{policy}: one event for the downtime: {events:?}"
        );
        let detail = &events[0]["data"];
        assert_eq!(events[0]["subject"]["id"], json!(id), "{events:?}");
        assert_eq!(detail["policy"], *policy, "{detail}");
        let missed = detail["missed"].as_i64().expect("missed");
        assert!(missed >= 2, "{policy}: {detail}");
        let first = at(&detail["first"]);
        let last_missed = first + chrono::Duration::seconds((missed - 1) * EVERY_S);
        // The first missed instant is the one after the last fire before the kill.
        let before: Vec<_> = instants(&jobs)
            .into_iter()
            .zip(&jobs)
            .filter(|(_, j)| j.get("catch_up").is_none())
            .map(|(t, _)| t)
            .filter(|t| *t < first)
            .collect();
        assert_eq!(
            before
                .last()
                .map(|t| *t + chrono::Duration::seconds(EVERY_S)),
            Some(first),
            "{policy}: missed from the instant after the last fire: {detail} {jobs:?}"
        );
        assert!(
            first <= killed_at + chrono::Duration::seconds(EVERY_S),
            "{detail}"
        );
        let catch_ups: Vec<&Value> = jobs.iter().filter(|j| j["catch_up"] == true).collect();
        match *policy {
            "run_once" => {
                assert_eq!(catch_ups.len(), 1, "one catch-up job: {jobs:?}");
                assert_eq!(at(&catch_ups[0]["scheduled_for"]), first, "{jobs:?}");
                assert_eq!(detail["job_id"], catch_ups[0]["job_id"], "{detail}");
            }
            _ => {
                assert!(catch_ups.is_empty(), "skip runs nothing: {jobs:?}");
                assert!(detail.get("job_id").is_none(), "{detail}");
            }
        }
        // No other job for the missed instants.
        for job in &jobs {
            let t = at(&job["scheduled_for"]);
            if (first..=last_missed).contains(&t) {
                assert_eq!(
                    job["catch_up"], true,
                    "{policy}: a missed instant fired: {job}"
                );
            }
        }
        let fires = instants(&jobs);
        assert_eq!(
            fires.iter().collect::<BTreeSet<_>>().len(),
            fires.len(),
            "{policy}: one job per instant: {jobs:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_forbid_skips_a_fire_while_the_previous_job_runs() {
    let server = Server::start().await;
    let api = server.api();
    let mut scripts = Scripts::new();
    scripts.add("slow", "sleep 15; echo done", json!({"timeout_s": 120}));
    let (_agent, _) = agent_tagged(&server, &api, &scripts, "slowpoke").await;
    let id = create_schedule(
        &api,
        json!({"name": "slow", "cron": "@every 10s", "command": "run",
               "data": {"script": "slow"}, "target": {"tags": ["slowpoke"]},
               "concurrency": "forbid"}),
    )
    .await;
    // The first fire's job runs 15 s: the next instant is skipped, naming it.
    let skipped = wait_for("a skipped fire", Duration::from_secs(30), || async {
        let events = events_of(&api, "schedule.skipped", &id).await;
        (!events.is_empty()).then_some(events)
    })
    .await;
    let jobs = jobs_of(&api, &id).await;
    let first = &jobs[0];
    let detail = &skipped[0]["data"];
    assert_eq!(
        detail["running_job_id"], first["job_id"],
        "{detail} {jobs:?}"
    );
    let skipped_for = at(&detail["scheduled_for"]);
    assert_eq!(
        skipped_for,
        at(&first["scheduled_for"]) + chrono::Duration::seconds(EVERY_S),
        "{detail}"
    );
    // The instant after, the first job is over and the next one runs.
    let jobs = wait_for(
        "the fire after the skipped one",
        Duration::from_secs(25),
        || async {
            let jobs = jobs_of(&api, &id).await;
            (jobs.len() >= 2).then_some(jobs)
        },
    )
    .await;
    assert!(
        instants(&jobs).iter().all(|t| *t != skipped_for),
        "the skipped instant has no job: {jobs:?}"
    );
    // The job is stored when it fires and its run starts a moment later,
    // when the agent reports it: wait until every run has started.
    let details = wait_for(
        "every job's run started",
        Duration::from_secs(15),
        || async {
            let mut details = Vec::new();
            for job in &jobs {
                let (_, job) = api
                    .get(&format!(
                        "/api/jobs/{}",
                        job["job_id"].as_str().expect("id")
                    ))
                    .await;
                if job["runs"][0]["started_at"].is_null() {
                    return None;
                }
                details.push(job);
            }
            Some(details)
        },
    )
    .await;
    let mut spans = Vec::new();
    for job in details {
        let run = &job["runs"][0];
        let start = at(&run["started_at"]);
        let end = run["finished_at"].as_str().map(|_| at(&run["finished_at"]));
        spans.push((start, end, job));
    }
    for pair in spans.windows(2) {
        let (_, end, job) = &pair[0];
        let (start, _, next) = &pair[1];
        let end =
            end.unwrap_or_else(|| panic!("a job still runs as the next starts: {job} {next}"));
        assert!(end <= *start, "two jobs overlap: {job} {next}");
    }
    assert_eq!(spans[0].2["status"], "succeeded", "{}", spans[0].2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_fire_each_instant_once_and_the_survivor_goes_on() {
    let Some(cluster) = postgres::required(
        "schedules_live::two_nodes_fire_each_instant_once_and_the_survivor_goes_on",
    ) else {
        return;
    };
    let database = Database::create(&cluster);
    let node = |name: &str| ServerOptions {
        database_url: Some(database.url.clone()),
        args: vec!["--node-name".into(), name.into()],
        // One owner key and one master key for both: they share the database.
        envs: vec![
            (
                "OUTPOST_ADMIN_KEY".into(),
                "opk_schedules00000000000000000000000000000000".into(),
            ),
            (
                "OUTPOST_MASTER_KEY".into(),
                "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff".into(),
            ),
        ],
        ..ServerOptions::default()
    };
    let mut a = Server::start_with(node("a")).await;
    let b = Server::start_with(node("b")).await;
    let (api_a, api_b) = (a.api(), b.api());
    let mut ids = Vec::new();
    for i in 0..20 {
        let api = if i % 2 == 0 { &api_a } else { &api_b };
        ids.push(
            create_schedule(
                api,
                json!({"name": format!("s{i:02}"), "cron": "@every 10s", "command": "run",
                       "data": {"script": "nothing"}, "target": {"tags": ["nobody"]}}),
            )
            .await,
        );
    }

    // Three instants fired by every schedule, as node B lists them.
    let all = |api: Api, ids: Vec<String>| async move {
        let mut all = BTreeMap::new();
        for id in &ids {
            all.insert(id.clone(), jobs_of(&api, id).await);
        }
        all
    };
    let check = |all: &BTreeMap<String, Vec<Value>>| {
        for (id, jobs) in all {
            let fires = instants(jobs);
            let distinct: BTreeSet<_> = fires.iter().copied().collect();
            assert_eq!(
                distinct.len(),
                fires.len(),
                "{id}: an instant fired twice: {jobs:?}"
            );
            if let (Some(first), Some(last)) = (fires.first(), fires.last()) {
                let expected = (*last - *first).num_seconds() / EVERY_S + 1;
                assert_eq!(
                    fires.len() as i64,
                    expected,
                    "{id}: an instant missed between {first} and {last}: {jobs:?}"
                );
            }
            assert!(jobs.iter().all(|j| j.get("catch_up").is_none()), "{jobs:?}");
        }
    };
    let first_round = wait_for(
        "three fires of each schedule",
        Duration::from_secs(45),
        || {
            let (api, ids) = (api_b.clone(), ids.clone());
            async move {
                let all = all(api, ids).await;
                all.values().all(|jobs| jobs.len() >= 3).then_some(all)
            }
        },
    )
    .await;
    check(&first_round);
    for id in &ids {
        assert!(events_of(&api_b, "schedule.missed", id).await.is_empty());
    }

    // Node A dies; B goes on firing every schedule.
    a.kill9();
    let killed_at = Utc::now();
    let after = wait_for(
        "two fires of each schedule after the kill",
        Duration::from_secs(60),
        || {
            let (api, ids) = (api_b.clone(), ids.clone());
            async move {
                let all = all(api, ids).await;
                all.values()
                    .all(|jobs| instants(jobs).iter().filter(|t| **t > killed_at).count() >= 2)
                    .then_some(all)
            }
        },
    )
    .await;
    check(&after);
    drop(b);
}
