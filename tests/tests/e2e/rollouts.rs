//! Staged rollouts (CONTRACT.md §17) through a real server, with real supervisors running real
//! agents and releases published with `outpost-server release publish`: a rollout with a
//! canary and two waves reaches every agent (through a server restart mid-way); a release
//! whose agent exits at start halts at its canaries, which their supervisors bring back on the
//! old version by themselves, and no wave starts; a rollback sends every agent the first
//! rollout updated back to the version it had; the tenant's minimum version refuses older
//! updates. The checks a request fails (400 before 409) and who may do what are tried on the
//! way.
//!
//! Versions are the real agent binary with a few bytes appended (as in `supervisor.rs`).

use std::time::Duration;

use outpost_e2e::{Api, Server, wait_for};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::supervisor::{Supervisor, TwoReleases, start_supervisor_at, start_supervisor_in};

/// Supervised agents in the fleet.
const AGENTS: usize = 6;
/// Longest a rollout here may take to reach a state.
const ROLLOUT_TIMEOUT: Duration = Duration::from_secs(240);

pub(crate) async fn rollout_state(api: &Api, id: &str, want: &[&str]) -> Value {
    let path = format!("/api/rollouts/{id}");
    wait_for(
        &format!("rollout {id} in {want:?}"),
        ROLLOUT_TIMEOUT,
        || {
            let path = path.clone();
            async move {
                let (status, rollout) = api.get(&path).await;
                assert_eq!(status, StatusCode::OK, "{rollout}");
                want.contains(&rollout["state"].as_str().unwrap_or_default())
                    .then_some(rollout)
            }
        },
    )
    .await
}

pub(crate) async fn versions(api: &Api) -> Vec<(String, String, String)> {
    let (status, list) = api.get("/api/agents").await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let items = list.as_array().cloned().expect("a list of agents");
    let mut out: Vec<(String, String, String)> = items
        .iter()
        .map(|a| {
            (
                a["agent_id"].as_str().unwrap_or_default().to_owned(),
                a["version"].as_str().unwrap_or_default().to_owned(),
                a["status"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    out.sort();
    out
}

pub(crate) async fn wait_versions(
    api: &Api,
    what: &str,
    check: impl Fn(&[(String, String, String)]) -> bool,
) {
    wait_for(what, ROLLOUT_TIMEOUT, || {
        let check = &check;
        async move {
            let fleet = versions(api).await;
            check(&fleet).then_some(())
        }
    })
    .await;
}

/// Waits for rollout `id` to halt, which must be at its canary stage; it and the canaries.
async fn halted_at_the_canary(api: &Api, id: &str) -> (Value, Vec<Value>) {
    let halted = rollout_state(api, id, &["halted", "completed"]).await;
    assert_eq!(halted["state"], "halted", "{halted}");
    assert!(
        halted["reason"]
            .as_str()
            .unwrap_or_default()
            .starts_with("canary"),
        "{halted}"
    );
    let canaries = halted["stages"][0]["listed"]
        .as_array()
        .expect("listed")
        .clone();
    (halted, canaries)
}

pub(crate) fn counts(rollout: &Value, state: &str) -> i64 {
    rollout["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .map(|s| s["counts"][state].as_i64().unwrap_or(0))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_reaches_the_fleet_a_crashing_release_halts_at_its_canaries_and_rolls_back() {
    let mut server = Server::start().await;
    let api = server.api();
    let tmp = tempfile::tempdir().expect("tempdir");
    let TwoReleases {
        release,
        pubkey,
        old: a,
        ..
    } = TwoReleases::publish(&server, tmp.path());

    let (_, secret) = api
        .create_key(json!({"name": "fleet", "permissions": ["ping", "info", "update"]}))
        .await;
    let fleet: Vec<Supervisor> = (0..AGENTS)
        .map(|i| {
            let home = tmp.path().join(format!("host-{i}"));
            std::fs::create_dir_all(&home).expect("mkdir");
            start_supervisor_in(&server, &home, &a, &secret, &pubkey)
        })
        .collect();
    wait_versions(&api, "every agent online at 0.1.0", |f| {
        f.len() == AGENTS && f.iter().all(|(_, v, s)| v == "0.1.0" && s == "online")
    })
    .await;

    // Checked before anything is taken: 400 naming the field.
    let bad = [
        (
            json!({"version": "9.9.9", "target": {"all": true}}),
            "version",
        ),
        (
            json!({"version": "0.2", "target": {"all": true}}),
            "version",
        ),
        (
            json!({"version": "0.2.0", "target": {"all": true}, "waves": [50, 40]}),
            "sum to 100",
        ),
        (
            json!({"version": "0.2.0", "target": {"all": true}, "max_in_flight": 0}),
            "max_in_flight",
        ),
        (json!({"version": "0.2.0", "target": {}}), "target"),
        (
            json!({"version": "0.2.0", "target": {"tags": ["nowhere"]}}),
            "no agent",
        ),
    ];
    for (body, says) in bad {
        let (status, answer) = api.post("/api/rollouts", body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body} -> {answer}");
        assert!(
            answer.to_string().contains(says),
            "{body} -> {answer} should say {says:?}"
        );
    }
    // Members read rollouts; they do not start them.
    let (member, _) = server
        .user("member@example.com", "member", "correct horse 1")
        .await;
    let (status, _) = member
        .post(
            "/api/rollouts",
            json!({"version": "0.2.0", "target": {"all": true}}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // 0.1.0 -> 0.2.0: one canary, then two waves of half the rest each, 3 at a time.
    let start = json!({
        "version": "0.2.0", "target": {"all": true}, "canary": 1, "waves": [50, 50],
        "max_in_flight": 50, "health": {"online_within_s": 90, "soak_s": 1}
    });
    let (status, first) = api.post("/api/rollouts", start.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let first_id = first["id"].as_str().expect("id").to_owned();
    assert_eq!(first["agents"], AGENTS as i64);
    let sizes: Vec<i64> = first["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .map(|s| s["agents"].as_i64().expect("agents"))
        .collect();
    assert_eq!(sizes, [1, 3, 2], "{first}");
    // The same agents cannot be in a second rollout at once: 409, after validation.
    let (status, answer) = api.post("/api/rollouts", start.clone()).await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    assert_eq!(answer["error"]["code"], "rollout_conflict", "{answer}");
    let (status, _) = member.get(&format!("/api/rollouts/{first_id}")).await;
    assert_eq!(status, StatusCode::OK, "members read rollouts");

    // A restart of the server once the canary passed: the rollout goes on where it was.
    rollout_state(&api, &first_id, &["wave 1", "wave 2", "completed"]).await;
    server.restart().await;
    let api = server.api();
    let done = rollout_state(&api, &first_id, &["completed", "halted"]).await;
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(counts(&done, "healthy"), AGENTS as i64, "{done}");
    wait_versions(&api, "every agent at 0.2.0", |f| {
        f.len() == AGENTS && f.iter().all(|(_, v, _)| v == "0.2.0")
    })
    .await;
    let (_, policy) = api.get("/api/fleet/policy").await;
    assert_eq!(policy["desired"][0]["version"], "0.2.0", "{policy}");

    // 0.3.0 exits at start: its two canaries are rolled back by their supervisors, the
    // rollout halts, and no other agent is sent it.
    let crashing = tmp.path().join("crashing");
    std::fs::write(
        &crashing,
        "#!/bin/sh\necho 'crashing on purpose' >&2\nexit 1\n",
    )
    .expect("write");
    release.publish("0.3.0", &crashing, &release.key);
    let (status, bad_release) = api
        .post(
            "/api/rollouts",
            json!({
                "version": "0.3.0", "target": {"all": true}, "canary": 2, "waves": [100],
                "max_in_flight": 100, "health": {"online_within_s": 120, "soak_s": 1}
            }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{bad_release}");
    let bad_id = bad_release["id"].as_str().expect("id").to_owned();
    let (halted, canaries) = halted_at_the_canary(&api, &bad_id).await;
    assert_eq!(canaries.len(), 2, "{halted}");
    for canary in &canaries {
        // Every canary failed, unless the halt came while the second was on its way.
        if canary["state"] == "failed" {
            assert!(
                canary["reason"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("rolled"),
                "{canary}"
            );
        }
    }
    assert_eq!(
        halted["stages"][1]["counts"]["pending"],
        (AGENTS - 2) as i64,
        "no wave started: {halted}"
    );
    wait_versions(
        &api,
        "the canaries back at 0.2.0, the rest never left it",
        |f| f.len() == AGENTS && f.iter().all(|(_, v, s)| v == "0.2.0" && s == "online"),
    )
    .await;
    let (_, events) = api.get("/api/events?type=rollout").await;
    let kinds: Vec<&str> = events["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["type"].as_str())
        .collect();
    for kind in ["rollout.started", "rollout.completed", "rollout.halted"] {
        assert!(kinds.contains(&kind), "{kind} in {kinds:?}");
    }
    let (status, aborted) = api
        .post(&format!("/api/rollouts/{bad_id}/abort"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{aborted}");
    assert_eq!(aborted["state"], "aborted");
    let (status, again) = api
        .post(&format!("/api/rollouts/{bad_id}/resume"), json!({}))
        .await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "an aborted rollout stays so: {again}"
    );

    // Rolling the first rollout back is a downgrade: owners only; every agent goes back.
    let (admin, _) = server
        .user("admin@example.com", "admin", "correct horse 2")
        .await;
    let (status, _) = admin
        .post(&format!("/api/rollouts/{first_id}/rollback"), json!({}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, rolling) = api
        .post(&format!("/api/rollouts/{first_id}/rollback"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{rolling}");
    let back = rollout_state(&api, &first_id, &["rolled_back"]).await;
    assert_eq!(counts(&back, "reverted"), AGENTS as i64, "{back}");
    wait_versions(&api, "every agent back at 0.1.0", |f| {
        f.len() == AGENTS && f.iter().all(|(_, v, s)| v == "0.1.0" && s == "online")
    })
    .await;
    let (_, policy) = api.get("/api/fleet/policy").await;
    assert_eq!(
        policy["desired"],
        json!([]),
        "the rollback took the desired version back"
    );

    // The tenant's minimum: an older version is refused for rollouts and updates alike, and
    // the agents below it are listed.
    let (status, answer) = admin
        .call(
            reqwest::Method::PUT,
            "/api/fleet/policy",
            Some(json!({"min_agent_version": "0.2.0"})),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "owners set the minimum: {answer}"
    );
    let (status, policy) = api
        .call(
            reqwest::Method::PUT,
            "/api/fleet/policy",
            Some(json!({"min_agent_version": "0.2.0"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{policy}");
    assert_eq!(policy["agents_below"], AGENTS as i64, "{policy}");
    let (status, answer) = api
        .post(
            "/api/rollouts",
            json!({"version": "0.1.0", "target": {"all": true}}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert!(answer.to_string().contains("min_agent_version"), "{answer}");
    let one = versions(&api).await[0].0.clone();
    let (status, answer) = api
        .command(
            &one,
            json!({"command": "update", "data": {"version": "0.1.0", "force": true}}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert!(answer.to_string().contains("min_agent_version"), "{answer}");
    drop(fleet);
}

/// A completed rollout's version is its target's desired version: an agent of the target that
/// connects later at an older version is sent the update by itself (CONTRACT.md §17).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_joins_later_converges_to_the_desired_version() {
    let server = Server::start().await;
    let api = server.api();
    let tmp = tempfile::tempdir().expect("tempdir");
    let TwoReleases { pubkey, old: a, .. } = TwoReleases::publish(&server, tmp.path());
    let (_, secret) = api
        .create_key(json!({"name": "fleet", "tags": ["edge"], "permissions": ["ping", "update"]}))
        .await;
    let home = |i: usize| {
        let home = tmp.path().join(format!("host-{i}"));
        std::fs::create_dir_all(&home).expect("mkdir");
        home
    };
    let first = start_supervisor_in(&server, &home(0), &a, &secret, &pubkey);
    wait_versions(&api, "the first agent online at 0.1.0", |f| {
        f.len() == 1 && f[0].1 == "0.1.0" && f[0].2 == "online"
    })
    .await;
    let (status, rollout) = api
        .post(
            "/api/rollouts",
            json!({"version": "0.2.0", "target": {"tags": ["edge"]},
                   "health": {"online_within_s": 90, "soak_s": 1}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{rollout}");
    let id = rollout["id"].as_str().expect("id").to_owned();
    let done = rollout_state(&api, &id, &["completed", "halted"]).await;
    assert_eq!(done["state"], "completed", "{done}");
    let (_, policy) = api.get("/api/fleet/policy").await;
    assert_eq!(
        policy["desired"],
        json!([{"target": {"tags": ["edge"]}, "version": "0.2.0", "rollout_id": id}]),
        "{policy}"
    );

    // A second machine of the same target, installed with the old build.
    let second = start_supervisor_in(&server, &home(1), &a, &secret, &pubkey);
    wait_versions(&api, "the agent that joined later at 0.2.0", |f| {
        f.len() == 2 && f.iter().all(|(_, v, s)| v == "0.2.0" && s == "online")
    })
    .await;
    drop((first, second));
}

/// A rollout whose health script fails on its canaries halts; once the cause is fixed,
/// `resume` tries the failed canaries again, and they pass the gate again (soak, then the
/// script) rather than count as healthy for already running the version; then the wave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_halted_rollout_resumes_once_its_health_check_is_fixed() {
    const FLEET: usize = 4;
    let server = Server::start().await;
    let api = server.api();
    let tmp = tempfile::tempdir().expect("tempdir");
    let TwoReleases { pubkey, old: a, .. } = TwoReleases::publish(&server, tmp.path());
    // The health check passes once the operator's fix (a file) is in place; each run leaves
    // a mark, to count how often it ran.
    let fixed = tmp.path().join("fixed");
    let marks = tmp.path().join("checks");
    let mut scripts = outpost_e2e::Scripts::new();
    scripts.add(
        "health",
        &format!(
            "echo run >> '{}'\ntest -e '{}' || {{ echo 'the service is not up' >&2; exit 3; }}",
            marks.display(),
            fixed.display()
        ),
        json!({}),
    );
    let (_, secret) = api
        .create_key(json!({"name": "fleet", "permissions": ["ping", "update", "run"]}))
        .await;
    let fleet: Vec<Supervisor> = (0..FLEET)
        .map(|i| {
            let home = tmp.path().join(format!("host-{i}"));
            std::fs::create_dir_all(&home).expect("mkdir");
            start_supervisor_at(&server.url, &home, &a, &secret, &pubkey, &scripts.env())
        })
        .collect();
    wait_versions(&api, "every agent online at 0.1.0", |f| {
        f.len() == FLEET && f.iter().all(|(_, v, s)| v == "0.1.0" && s == "online")
    })
    .await;

    let (status, rollout) = api
        .post(
            "/api/rollouts",
            json!({"version": "0.2.0", "target": {"all": true}, "canary": 2, "waves": [100],
                   "max_in_flight": 100,
                   "health": {"online_within_s": 90, "soak_s": 1, "script": "health"}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{rollout}");
    let id = rollout["id"].as_str().expect("id").to_owned();
    let (halted, canaries) = halted_at_the_canary(&api, &id).await;
    assert!(
        canaries.iter().any(|c| c["state"] == "failed"
            && c["reason"]
                .as_str()
                .unwrap_or_default()
                .contains("health script")),
        "{halted}"
    );
    assert_eq!(
        halted["stages"][1]["counts"]["pending"],
        (FLEET - 2) as i64,
        "no wave started: {halted}"
    );
    let checks_before = std::fs::read_to_string(&marks)
        .unwrap_or_default()
        .lines()
        .count();

    // The fix, then resume: the failed canaries are checked again, pass, and the wave goes.
    std::fs::write(&fixed, "").expect("fix");
    let (status, resumed) = api
        .post(&format!("/api/rollouts/{id}/resume"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{resumed}");
    let done = rollout_state(&api, &id, &["completed", "halted"]).await;
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(counts(&done, "healthy"), FLEET as i64, "{done}");
    let checks = std::fs::read_to_string(&marks)
        .unwrap_or_default()
        .lines()
        .count();
    // Every failed canary ran the check again, and each agent of the wave ran it once.
    let failed = canaries.iter().filter(|c| c["state"] == "failed").count();
    assert!(
        checks >= checks_before + failed + (FLEET - 2),
        "{checks} checks in all, {checks_before} before the fix: {done}"
    );
    wait_versions(&api, "every agent at 0.2.0", |f| {
        f.len() == FLEET && f.iter().all(|(_, v, s)| v == "0.2.0" && s == "online")
    })
    .await;
    drop(fleet);
}
