//! Script runs and jobs over the real binaries: whitelisting, clean environments, output kept
//! byte for byte, timeouts and cancellation that leave nothing behind, fan-out, offline agents
//! and crashes.

use std::time::Duration;

use outpost_e2e::{Agent, Api, Scripts, Server, only_run, processes_of_run, run_job, wait_for};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn agent_with(server: &Server, api: &Api, scripts: &Scripts, tags: &str) -> (Agent, String) {
    let (_, secret) = api.agent_key().await;
    let mut env = scripts.env();
    env.push(("OUTPOST_TAGS".into(), tags.into()));
    let agent = Agent::start_with(&server.url, &secret, None, env);
    let id = agent.wait_online(api).await;
    (agent, id)
}

/// Adds a script that prints `first`, waits until the returned file exists, then prints
/// `second`: a run the test can hold open.
fn add_gated(scripts: &mut Scripts, name: &str) -> std::path::PathBuf {
    let gate = scripts.dir().join(format!("{name}.gate"));
    scripts.add(
        name,
        &format!(
            "echo first; while [ ! -e {} ]; do sleep 0.05; done; echo second",
            gate.display()
        ),
        json!({}),
    );
    gate
}

/// Waits until a run has printed something.
async fn wait_started(api: &Api, job_id: &str, run_id: &str) {
    wait_for("the run to start", Duration::from_secs(20), || async {
        let (_, out) = api.output(job_id, run_id, "").await;
        (!out.is_empty()).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_runs_with_params_in_a_clean_environment() {
    let server = Server::start().await;
    let api = server.api();
    let mut scripts = Scripts::new();
    scripts.add(
        "hello",
        r#"echo "hello $OUTPOST_PARAM_NAME"; echo "warn" >&2; env; exit "${OUTPOST_PARAM_CODE:-0}""#,
        json!({"description": "Say hello"}),
    );
    let (_agent, id) = agent_with(&server, &api, &scripts, "").await;
    let (_, listed) = api.get(&format!("/api/agents/{id}")).await;
    assert_eq!(
        listed["scripts"],
        json!([{"name": "hello", "description": "Say hello"}])
    );

    let hostile = "; rm -rf / | $(reboot) `id` \n'\" && echo pwned";
    let (status, job) = api
        .job(
            run_job(
                &id,
                "hello",
                json!({"NAME": hostile, "CODE": "0", "PATH": "/nowhere"}),
            ),
            Some(30),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{job}");
    assert_eq!(job["status"], "succeeded");
    let (job_id, run_id, run) = only_run(&job);
    assert_eq!(run["status"], "succeeded");
    assert_eq!(run["exit_code"], 0);
    assert!(run["duration_ms"].is_i64());
    assert!(run["started_at"].is_string() && run["finished_at"].is_string());

    let (status, stdout) = api.output(&job_id, &run_id, "?stream=stdout").await;
    assert_eq!(status, StatusCode::OK);
    let stdout = String::from_utf8(stdout).expect("utf8");
    assert!(
        stdout.starts_with(&format!("hello {hostile}\n")),
        "the value arrives as data: {stdout}"
    );
    assert!(
        !stdout.contains("\npwned"),
        "nothing from a parameter reached a shell"
    );
    let env: Vec<&str> = stdout.lines().filter(|l| l.contains('=')).collect();
    assert!(
        env.contains(&format!("OUTPOST_RUN_ID={run_id}").as_str()),
        "{env:?}"
    );
    assert!(env.contains(&"OUTPOST_PARAM_PATH=/nowhere"));
    assert!(
        env.iter()
            .any(|l| l.starts_with("PATH=") && !l.contains("/nowhere"))
    );
    for secret in ["OUTPOST_API_KEY", "OUTPOST_SERVER_URL", "OUTPOST_STATE_DIR"] {
        assert!(
            !stdout.contains(secret),
            "{secret} leaked into the script's environment"
        );
    }
    let (_, stderr) = api.output(&job_id, &run_id, "?stream=stderr").await;
    assert_eq!(stderr, b"warn\n");
    assert_eq!(run["stdout_bytes"].as_u64(), Some(stdout.len() as u64));
    let (_, tail) = api
        .output(&job_id, &run_id, "?stream=stderr&offset=2")
        .await;
    assert_eq!(tail, b"rn\n");

    // A failing exit code fails the run and the job.
    let (_, job) = api
        .job(run_job(&id, "hello", json!({"CODE": "3"})), Some(30))
        .await;
    let (_, _, run) = only_run(&job);
    assert_eq!(
        (
            job["status"].as_str(),
            run["status"].as_str(),
            run["exit_code"].as_i64()
        ),
        (Some("failed"), Some("failed"), Some(3))
    );
    assert_eq!(run["error"]["code"], "exit_code");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_names_and_params_never_start_a_process() {
    let server = Server::start().await;
    let api = server.api();
    let mut scripts = Scripts::new();
    let marker = scripts.dir().join("ran");
    scripts.add(
        "touch",
        &format!("touch {}", marker.display()),
        json!({"params": ["NAME"]}),
    );
    std::fs::write(
        scripts.dir().join("outside.sh"),
        "#!/bin/sh\ntouch /tmp/outpost-escaped\n",
    )
    .expect("write");
    let (_agent, id) = agent_with(&server, &api, &scripts, "").await;

    // Names that break the protocol's rule are refused by the server (400) before anything is
    // stored; names that keep it but are not in the manifest the agent announced, with 422
    // (`runs_of_scripts_an_agent_does_not_list_fail_at_once`).
    for name in ["../touch", "/bin/sh", "touch.", "a\u{0}b", "touch/..", ""] {
        let (status, job) = api.job(run_job(&id, name, json!({})), Some(30)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{name:?}: {job}");
        assert!(
            job["error"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("data.script: ")),
            "{job}"
        );
    }
    for name in ["outside", "TOUCH"] {
        let (status, job) = api.job(run_job(&id, name, json!({})), Some(30)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{name:?}: {job}");
        assert_eq!(
            job["error"]["code"], "script_not_allowed",
            "{name:?}: {job}"
        );
    }
    for params in [
        json!({"name": "x"}),
        json!({"NAME": "x".repeat(32 * 1024 + 1)}),
    ] {
        let (status, job) = api.job(run_job(&id, "touch", params.clone()), None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{params}: {job}");
    }
    for params in [json!({"OTHER": "x"}), json!({"LD_PRELOAD": "/tmp/x.so"})] {
        let (_, job) = api
            .job(run_job(&id, "touch", params.clone()), Some(30))
            .await;
        let (_, _, run) = only_run(&job);
        assert_eq!(run["error"]["code"], "bad_params", "{params}: {run}");
    }
    let (status, err) = api
        .job(run_job(&id, "touch", json!({"NAME": 5})), None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        err["error"]["message"]
            .as_str()
            .expect("msg")
            .contains("data.params.NAME")
    );
    assert!(!marker.exists(), "no refused request may start the script");
    assert!(!std::path::Path::new("/tmp/outpost-escaped").exists());

    // The allowed form runs.
    let (_, job) = api
        .job(run_job(&id, "touch", json!({"NAME": "ok"})), Some(30))
        .await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert!(marker.exists());
}

/// A run of a script that a targeted agent did not list in its last `register` is answered at
/// once (issue #27): in a fan-out its run is stored failed, `script_not_allowed`, and never
/// sent; a request for that one agent (a job naming it, its command route, its key's command
/// route) is refused with 422 naming the agent and the script. An agent whose manifest
/// changed since it registered still refuses by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_of_scripts_an_agent_does_not_list_fail_at_once() {
    let server = Server::start().await;
    let api = server.api();
    let (key_id, secret) = api.agent_key().await;
    let mut with = Scripts::new();
    with.add("hello", "echo hello", json!({}))
        .add("gone", "echo gone", json!({}));
    let mut without = Scripts::new();
    without.add("other", "echo other", json!({}));
    let a = Agent::start_with(&server.url, &secret, None, with.env());
    let a_id = a.wait_online(&api).await;
    let b = Agent::start_with(&server.url, &secret, None, without.env());
    let b_id = b.wait_online(&api).await;

    // A fan-out: B's run is failed in the creation's answer already; A's runs.
    let (status, job) = api
        .job(
            json!({"command": "run", "data": {"script": "hello"}, "target": {"all": true}}),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    let run_of = |job: &Value, agent: &str| -> Value {
        job["runs"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["agent_id"] == agent)
            .cloned()
            .unwrap_or_else(|| panic!("no run for {agent}: {job}"))
    };
    let refused = run_of(&job, &b_id);
    assert_eq!(refused["status"], "failed", "{job}");
    assert_eq!(refused["error"]["code"], "script_not_allowed", "{job}");
    let message = refused["error"]["message"].as_str().expect("message");
    assert!(
        message.contains(&b_id) && message.contains("\"hello\"") && message.contains("other"),
        "names the agent, the script and what it lists: {message}"
    );
    let job_id = job["job_id"].as_str().expect("job_id");
    let done = api.wait_job(job_id).await;
    assert_eq!(run_of(&done, &a_id)["status"], "succeeded", "{done}");
    // Never sent: no delivery, and nothing in B's journal.
    let run_id = refused["run_id"].as_str().expect("run_id");
    let (_, command) = api.get(&format!("/api/commands/{run_id}")).await;
    assert!(command["delivered_at"].is_null(), "{command}");
    assert!(
        !b.journal()
            .iter()
            .any(|line| line.to_string().contains(run_id)),
        "the refused run reached the agent"
    );

    // One agent, by every route: 422 naming the agent and the script.
    let single = |status: StatusCode, body: &Value| {
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(body["error"]["code"], "script_not_allowed", "{body}");
        let message = body["error"]["message"].as_str().expect("message");
        assert!(
            message.contains(&b_id) && message.contains("\"hello\""),
            "{message}"
        );
    };
    let (status, body) = api.job(run_job(&b_id, "hello", json!({})), Some(30)).await;
    single(status, &body);
    let (status, body) = api
        .command(
            &b_id,
            json!({"command": "run", "data": {"script": "hello"}}),
        )
        .await;
    single(status, &body);
    let (status, body) = api
        .command(
            &b_id,
            json!({"command": "run", "data": {"script": "hello"}, "queue": true}),
        )
        .await;
    single(status, &body);
    let (status, fanned) = api
        .post(
            &format!("/api/agents/keys/{key_id}/command"),
            json!({"command": "run", "data": {"script": "hello"}, "timeout_s": 20}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{fanned}");
    let result_of = |agent: &str| -> Value {
        fanned["results"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["agent_id"] == agent)
            .cloned()
            .unwrap_or_else(|| panic!("no result for {agent}: {fanned}"))
    };
    assert_eq!(
        result_of(&a_id)["command"]["status"],
        "succeeded",
        "{fanned}"
    );
    assert_eq!(
        result_of(&b_id)["error"]["code"],
        "script_not_allowed",
        "{fanned}"
    );
    // Listed scripts and other commands are untouched.
    let (_, job) = api.job(run_job(&a_id, "hello", json!({})), Some(30)).await;
    assert_eq!(job["status"], "succeeded", "{job}");

    // A manifest newer than the agent's last `register`: the server still lists `gone`, whose
    // file is no longer there; the agent refuses it by itself.
    std::fs::remove_file(with.dir().join("gone.sh")).expect("remove the script");
    let (status, job) = api.job(run_job(&a_id, "gone", json!({})), Some(30)).await;
    assert_eq!(status, StatusCode::OK, "{job}");
    let (_, _, run) = only_run(&job);
    assert_eq!(run["error"]["code"], "script_not_allowed", "{run}");
    drop((a, b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_manifest_is_reloaded_and_a_broken_one_is_ignored() {
    let server = Server::start().await;
    let api = server.api();
    let mut scripts = Scripts::new();
    scripts.add("one", "echo one", json!({}));
    let (agent, id) = agent_with(&server, &api, &scripts, "").await;
    scripts.add("two", "echo two", json!({}));
    wait_for("the new script list", Duration::from_secs(20), || async {
        let (_, a) = api.get(&format!("/api/agents/{id}")).await;
        (a["scripts"].as_array().map(Vec::len) == Some(2)).then_some(())
    })
    .await;
    let (_, job) = api.job(run_job(&id, "two", json!({})), Some(30)).await;
    assert_eq!(job["status"], "succeeded", "{job}");

    scripts.write_raw("{\"scripts\": [ oops");
    wait_for(
        "the agent to log the broken manifest",
        Duration::from_secs(20),
        || async {
            agent
                .logs()
                .contains("keeping the previous manifest")
                .then_some(())
        },
    )
    .await;
    let (_, job) = api.job(run_job(&id, "two", json!({})), Some(30)).await;
    assert_eq!(
        job["status"], "succeeded",
        "the previous manifest still applies: {job}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_and_binary_output_is_kept_byte_for_byte_with_bounded_agent_memory() {
    let server = Server::start().await;
    let api = server.api();
    let mut scripts = Scripts::new();
    // 50 MB of text on stdout, and bytes that are not UTF-8 on stderr.
    scripts.add(
        "big",
        r#"i=0; while [ $i -lt 500000 ]; do echo "line $i of a long output, padded to about one hundred bytes ................"; i=$((i+1)); done
printf '\377\376\000binary\200' >&2"#,
        json!({}),
    );
    let (agent, id) = agent_with(&server, &api, &scripts, "").await;
    let rss_before = agent.memory_kib("VmRSS").expect("rss");
    let (_, job) = api.job(run_job(&id, "big", json!({})), None).await;
    let job = api.wait_job(job["job_id"].as_str().expect("id")).await;
    let (job_id, run_id, run) = only_run(&job);
    assert_eq!(run["status"], "succeeded", "{run}");
    let peak = agent.memory_kib("VmHWM").expect("hwm");
    println!("agent RSS before {rss_before} KiB, peak while streaming 50 MB: {peak} KiB");

    let expected: Vec<u8> = (0..500_000)
        .flat_map(|i| {
            format!(
                "line {i} of a long output, padded to about one hundred bytes ................\n"
            )
            .into_bytes()
        })
        .collect();
    let (_, stdout) = api.output(&job_id, &run_id, "?stream=stdout").await;
    assert_eq!(stdout.len(), expected.len());
    assert!(stdout == expected, "stdout differs");
    let (_, stderr) = api.output(&job_id, &run_id, "?stream=stderr").await;
    assert_eq!(stderr, b"\xff\xfe\x00binary\x80");
    assert_eq!(run["stdout_bytes"].as_u64(), Some(expected.len() as u64));
    // The agent never holds the output: its peak stays far below the 50 MB it relayed.
    assert!(peak < 48 * 1024, "agent peak RSS {peak} KiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_and_cancel_kill_the_whole_process_group() {
    let server = Server::start().await;
    let api = server.api();
    let mut scripts = Scripts::new();
    scripts.add(
        "stubborn",
        "trap '' TERM; sleep 1000 & sleep 1000 & echo started; while true; do sleep 1; done",
        json!({}),
    );
    // The script exits at once but leaves a grandchild holding its output pipe.
    scripts.add("leaky", "(sleep 1000 &); echo done", json!({}));
    let (_agent, id) = agent_with(&server, &api, &scripts, "").await;

    let mut job = run_job(&id, "stubborn", json!({}));
    job["timeout_s"] = json!(2);
    let (_, job) = api.job(job, Some(60)).await;
    let (_, run_id, run) = only_run(&job);
    assert_eq!(run["status"], "timed_out", "{run}");
    assert_eq!(run["error"]["code"], "timed_out");
    assert_eq!(
        run["data"]["signal"], 9,
        "SIGTERM was ignored, so SIGKILL ended it"
    );
    assert_eq!(
        processes_of_run(&run_id),
        Vec::<u32>::new(),
        "nothing of the run survives"
    );

    let (_, job) = api.job(run_job(&id, "stubborn", json!({})), None).await;
    let (job_id, run_id, _) = only_run(&job);
    wait_for("the script to start", Duration::from_secs(20), || async {
        let (_, out) = api.output(&job_id, &run_id, "").await;
        (out == b"started\n").then_some(())
    })
    .await;
    let (status, _) = api
        .post(&format!("/api/jobs/{job_id}/cancel"), json!({}))
        .await;
    assert!(status.is_success());
    let job = api.wait_job(&job_id).await;
    assert_eq!(job["status"], "cancelled", "{job}");
    assert_eq!(job["runs"][0]["status"], "cancelled");
    assert_eq!(processes_of_run(&run_id), Vec::<u32>::new());

    let (_, job) = api.job(run_job(&id, "leaky", json!({})), Some(30)).await;
    let (_, run_id, run) = only_run(&job);
    assert_eq!(run["status"], "succeeded", "{run}");
    assert!(
        run["duration_ms"].as_i64().is_some_and(|d| d < 4000),
        "the open pipe did not hold the run: {run}"
    );
    assert_eq!(processes_of_run(&run_id), Vec::<u32>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_arrives_while_the_script_runs() {
    let server = Server::start().await;
    let api = server.api();
    let mut scripts = Scripts::new();
    let gate = add_gated(&mut scripts, "slow");
    let (_agent, id) = agent_with(&server, &api, &scripts, "").await;
    let (status, job) = api.job(run_job(&id, "slow", json!({})), None).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (job_id, run_id, _) = only_run(&job);
    wait_for("live output", Duration::from_secs(20), || async {
        let (_, out) = api.output(&job_id, &run_id, "").await;
        (out == b"first\n").then_some(())
    })
    .await;
    let (_, running) = api.get(&format!("/api/jobs/{job_id}")).await;
    assert_eq!(running["runs"][0]["status"], "running");
    assert_eq!(running["status"], "running");
    std::fs::write(&gate, "").expect("open the gate");
    let done = api.wait_job(&job_id).await;
    assert_eq!(done["status"], "succeeded");
    let (_, out) = api.output(&job_id, &run_id, "").await;
    assert_eq!(out, b"first\nsecond\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_fans_out_to_50_agents_by_tag() {
    let server = Server::start().await;
    let api = server.api();
    let mut scripts = Scripts::new();
    scripts.add("whoami", "echo \"$OUTPOST_RUN_ID\"", json!({}));
    let (_, secret) = api.agent_key().await;
    let mut agents = Vec::new();
    for _ in 0..50 {
        let mut env = scripts.env();
        env.push(("OUTPOST_TAGS".into(), "fleet".into()));
        agents.push(Agent::start_with(&server.url, &secret, None, env));
    }
    // One more agent without the tag must not be targeted.
    let (_outsider, outsider_id) = agent_with(&server, &api, &scripts, "other").await;
    for agent in &agents {
        agent.wait_online(&api).await;
    }
    let (status, job) = api
        .job(
            json!({"command": "run", "data": {"script": "whoami"}, "target": {"tags": ["fleet"]}}),
            Some(60),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{job}");
    let runs = job["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 50);
    assert!(runs.iter().all(|r| r["status"] == "succeeded"), "{job}");
    assert!(runs.iter().all(|r| r["agent_id"] != outsider_id.as_str()));
    let mut agent_ids: Vec<_> = runs
        .iter()
        .map(|r| r["agent_id"].as_str().expect("id"))
        .collect();
    agent_ids.sort();
    agent_ids.dedup();
    assert_eq!(agent_ids.len(), 50, "one run per agent");
    let job_id = job["job_id"].as_str().expect("id");
    for run in runs {
        let run_id = run["run_id"].as_str().expect("run");
        let (_, out) = api.output(job_id, run_id, "").await;
        assert_eq!(out, format!("{run_id}\n").into_bytes());
    }
    assert_eq!(job["run_counts"]["succeeded"], 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_agents_get_their_run_when_they_return() {
    let server = Server::start().await;
    let api = server.api();
    let mut scripts = Scripts::new();
    scripts.add("hello", "echo back", json!({}));
    let (mut agent, id) = agent_with(&server, &api, &scripts, "").await;
    agent.terminate();
    api.wait_status(&id, "offline").await;
    let (status, job) = api.job(run_job(&id, "hello", json!({})), None).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(job["runs"][0]["status"], "pending");
    agent.restart();
    let job = api.wait_job(job["job_id"].as_str().expect("id")).await;
    assert_eq!(job["status"], "succeeded", "{job}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_mid_run_are_reported_as_the_spec_says() {
    let mut server = Server::start().await;
    let api = server.api();
    let mut scripts = Scripts::new();
    let gate = add_gated(&mut scripts, "wait");
    let (mut agent, id) = agent_with(&server, &api, &scripts, "").await;

    // kill -9 of the server mid-run: the run finishes and is stored after the restart.
    let (_, job) = api.job(run_job(&id, "wait", json!({})), None).await;
    let (job_id, run_id, _) = only_run(&job);
    wait_started(&api, &job_id, &run_id).await;
    server.kill9();
    std::fs::write(&gate, "").expect("gate");
    server.restart().await;
    let api = server.api();
    let job = api.wait_job(&job_id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let (_, out) = api.output(&job_id, &run_id, "").await;
    assert_eq!(
        out, b"first\nsecond\n",
        "output from before and after the crash, once"
    );

    // kill -9 of the agent mid-run: reported as interrupted when it comes back.
    std::fs::remove_file(&gate).expect("close the gate");
    let (_, job) = api.job(run_job(&id, "wait", json!({})), None).await;
    let (job_id, run_id, _) = only_run(&job);
    wait_started(&api, &job_id, &run_id).await;
    agent.kill9();
    agent.restart();
    let job = api.wait_job(&job_id).await;
    let run = &job["runs"][0];
    assert_eq!(run["status"], "failed", "{job}");
    assert_eq!(run["error"]["code"], "interrupted");
    std::fs::write(&gate, "").expect("gate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_are_idempotent_filterable_and_paginated() {
    let server = Server::start().await;
    let api = server.api();
    let mut scripts = Scripts::new();
    scripts.add("a", "true", json!({}));
    scripts.add("b", "false", json!({}));
    let (_agent, id) = agent_with(&server, &api, &scripts, "").await;

    let mut keyed = run_job(&id, "a", json!({}));
    keyed["idempotency_key"] = json!("nightly-2026-11-21");
    let (_, first) = api.job(keyed.clone(), Some(30)).await;
    let (_, again) = api.job(keyed, Some(30)).await;
    assert_eq!(
        first["job_id"], again["job_id"],
        "a retried request returns the first job"
    );
    for _ in 0..3 {
        api.job(run_job(&id, "b", json!({})), Some(30)).await;
    }
    let (_, ping) = api
        .job(
            json!({"command": "ping", "target": {"agents": [id]}}),
            Some(30),
        )
        .await;
    assert_eq!(ping["runs"][0]["data"]["pong"], true, "{ping}");

    let count = |v: &Value| v["jobs"].as_array().map(Vec::len).unwrap_or(0);
    let (_, all) = api.get("/api/jobs").await;
    assert_eq!(count(&all), 5);
    let (_, b) = api.get("/api/jobs?script=b&status=failed").await;
    assert_eq!(count(&b), 3);
    // A listing counts each job's runs by state (without listing them).
    for job in b["jobs"].as_array().expect("jobs") {
        assert_eq!(job["run_counts"], json!({"failed": 1}), "{job}");
        assert!(job.get("runs").is_none(), "{job}");
    }
    assert_eq!(
        all["jobs"][0]["run_counts"],
        json!({"succeeded": 1}),
        "{all}"
    );
    let (_, pings) = api.get("/api/jobs?command=ping").await;
    assert_eq!(count(&pings), 1);
    let (_, mine) = api.get(&format!("/api/jobs?agent_id={id}")).await;
    assert_eq!(count(&mine), 5);
    let (_, none) = api
        .get(&format!("/api/jobs?agent_id={}", uuid::Uuid::now_v7()))
        .await;
    assert_eq!(count(&none), 0);

    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let (_, page) = api.get(&format!("/api/jobs?limit=2{cursor}")).await;
        seen.extend(
            page["jobs"]
                .as_array()
                .expect("jobs")
                .iter()
                .map(|j| j["job_id"].clone()),
        );
        match page["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), 5, "pages cover every job once");
    let (status, _) = api.get("/api/jobs?limit=0").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, err) = api
        .job(
            json!({"command": "run", "data": {"script": "a"}, "target": {}}),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        err["error"]["message"]
            .as_str()
            .expect("msg")
            .starts_with("target")
    );
    let (status, _) = api
        .job(
            json!({"command": "run", "data": {"script": "a"}, "target": {"tags": ["nobody"]}}),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _) = api
        .get(&format!("/api/jobs/{}", uuid::Uuid::now_v7()))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_past_the_cap_is_dropped_and_the_run_says_so() {
    let server = Server::start_with(outpost_e2e::ServerOptions {
        args: vec!["--max-output-bytes".into(), "1000".into()],
        ..Default::default()
    })
    .await;
    let api = server.api();
    let mut scripts = Scripts::new();
    scripts.add("chatty", "i=0; while [ $i -lt 100 ]; do echo 'fifty bytes of output, give or take a few .....'; i=$((i+1)); done; echo small >&2", json!({}));
    let (_agent, id) = agent_with(&server, &api, &scripts, "").await;
    let (_, job) = api.job(run_job(&id, "chatty", json!({})), Some(30)).await;
    let (job_id, run_id, run) = only_run(&job);
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["output_truncated"], true);
    assert!(
        run["stdout_bytes"].as_u64().is_some_and(|b| b <= 1000),
        "{run}"
    );
    assert_eq!(
        run["data"]["stdout_bytes"], 4800,
        "the agent reports what the script printed"
    );
    let (_, stdout) = api.output(&job_id, &run_id, "?stream=stdout").await;
    assert!(stdout.len() <= 1000 && stdout.starts_with(b"fifty bytes"));
    let (_, stderr) = api.output(&job_id, &run_id, "?stream=stderr").await;
    assert_eq!(stderr, b"small\n", "the cap is per stream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_whose_agent_never_returns_become_lost() {
    let server = Server::start_with(outpost_e2e::ServerOptions {
        args: vec![
            "--heartbeat-interval".into(),
            "1".into(),
            "--lost-after".into(),
            "3".into(),
        ],
        ..Default::default()
    })
    .await;
    let api = server.api();
    let (_, secret) = api.agent_key().await;
    let agent_id = uuid::Uuid::now_v7().to_string();
    let mut peer = outpost_e2e::ws::connect(&server.url, &secret)
        .await
        .expect("connect");
    peer.handshake_with_scripts(&agent_id, &["anything"]).await;
    api.wait_online(&agent_id).await;
    let (_, job) = api
        .job(run_job(&agent_id, "anything", json!({})), None)
        .await;
    let command_id = match peer.frame().await {
        outpost_protocol::ServerFrame::Command(c) => c.command_id,
        other => panic!("{other:?}"),
    };
    peer.send_json(&json!({"type": "ack", "command_id": command_id}))
        .await;
    let job_id = job["job_id"].as_str().expect("id");
    wait_for("the run to be running", Duration::from_secs(10), || async {
        let (_, j) = api.get(&format!("/api/jobs/{job_id}")).await;
        (j["runs"][0]["status"] == "running").then_some(())
    })
    .await;
    peer.crash();
    let job = api.wait_job(job_id).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["runs"][0]["status"], "lost");
    assert_eq!(job["runs"][0]["error"]["code"], "lost");
}

/// Reads Server-Sent Events as `(event, id, data)` until `stop` says so or the stream ends.
async fn read_events(
    response: &mut reqwest::Response,
    mut stop: impl FnMut(&(String, String, Value)) -> bool,
) -> Vec<(String, String, Value)> {
    let mut buffer = String::new();
    let mut events = Vec::new();
    loop {
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let (mut event, mut id, mut data) = (String::new(), String::new(), String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    event = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            if event.is_empty() {
                continue; // keep-alive comment
            }
            let item = (
                event,
                id,
                serde_json::from_str(&data).unwrap_or(Value::Null),
            );
            let done = stop(&item);
            events.push(item);
            if done {
                return events;
            }
        }
        let chunk = tokio::time::timeout(Duration::from_secs(30), response.chunk())
            .await
            .expect("an event in time")
            .expect("stream");
        match chunk {
            Some(bytes) => buffer.push_str(&String::from_utf8_lossy(&bytes)),
            None => return events,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_events_stream_live_output_and_resume() {
    let server = Server::start().await;
    let api = server.api();
    let mut scripts = Scripts::new();
    let gate = add_gated(&mut scripts, "slow");
    let (_agent, id) = agent_with(&server, &api, &scripts, "").await;
    let (_, job) = api.job(run_job(&id, "slow", json!({})), None).await;
    let job_id = job["job_id"].as_str().expect("id").to_owned();
    let events_url = format!("{}/api/jobs/{job_id}/events", server.url);
    let client = reqwest::Client::new();
    let mut live = client
        .get(&events_url)
        .bearer_auth(&server.admin_key)
        .send()
        .await
        .expect("events");
    assert_eq!(live.status(), StatusCode::OK);
    assert!(
        live.headers()["content-type"]
            .to_str()
            .expect("ct")
            .starts_with("text/event-stream")
    );

    // The first line arrives while the script is still waiting at its gate.
    let (mut got_output, mut got_running) = (false, false);
    let seen = read_events(&mut live, |(event, _, data)| {
        got_output |= event == "output" && data["data"] == "first\n";
        got_running |= event == "state" && data["status"] == "running";
        got_output && got_running
    })
    .await;
    let first_id = seen
        .iter()
        .find(|(e, _, _)| e == "output")
        .map(|(_, id, _)| id.clone())
        .expect("output");
    assert!(
        !gate.exists(),
        "output was streamed before the script finished"
    );

    std::fs::write(&gate, "").expect("gate");
    let rest = read_events(&mut live, |(event, _, _)| event == "end").await;
    let outputs: Vec<_> = rest
        .iter()
        .filter(|(e, _, _)| e == "output")
        .map(|(_, _, d)| d["data"].clone())
        .collect();
    assert_eq!(outputs, vec![json!("second\n")]);
    assert!(
        rest.iter()
            .any(|(e, _, d)| e == "state" && d["status"] == "succeeded")
    );
    assert_eq!(rest.last().expect("end").2["status"], "succeeded");

    // Resuming after the first chunk replays only what came later.
    let mut resumed = client
        .get(&events_url)
        .bearer_auth(&server.admin_key)
        .header("Last-Event-ID", &first_id)
        .send()
        .await
        .expect("events");
    let replay = read_events(&mut resumed, |(event, _, _)| event == "end").await;
    let outputs: Vec<_> = replay
        .iter()
        .filter(|(e, _, _)| e == "output")
        .map(|(_, _, d)| d["data"].clone())
        .collect();
    assert_eq!(outputs, vec![json!("second\n")]);

    let (status, _) = api
        .get(&format!("/api/jobs/{}/events", uuid::Uuid::now_v7()))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// A stream that reads the output while it floods in must still carry its last chunk before
/// `end`: the run's last output and its final state can both be committed between the
/// stream's read of the output and its read of the run (CI: the dashboard's page of a 95 MB run
/// missed its last line one time in four).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_followed_job_s_last_output_comes_before_its_end() {
    let server = Server::start().await;
    let api = server.api();
    let mut scripts = Scripts::new();
    scripts.add(
        "flood",
        "yes 'some output to read while it is written' | head -c 3000000\necho the-end",
        json!({}),
    );
    let (_agent, id) = agent_with(&server, &api, &scripts, "").await;
    let client = reqwest::Client::new();
    for attempt in 0..6 {
        let (_, job) = api.job(run_job(&id, "flood", json!({})), None).await;
        let job_id = job["job_id"].as_str().expect("id").to_owned();
        let mut live = client
            .get(format!("{}/api/jobs/{job_id}/events", server.url))
            .bearer_auth(&server.admin_key)
            .send()
            .await
            .expect("events");
        let events = read_events(&mut live, |(event, _, _)| event == "end").await;
        assert_eq!(events.last().expect("end").0, "end", "attempt {attempt}");
        let mut output = Vec::new();
        for (_, _, data) in events.iter().filter(|(e, _, _)| e == "output") {
            let text = data["data"].as_str().expect("text output");
            output.extend_from_slice(text.as_bytes());
        }
        assert!(
            output.ends_with(b"the-end\n"),
            "attempt {attempt}: the stream ended after {} bytes without the last line",
            output.len()
        );
        assert_eq!(output.len(), 3_000_008, "attempt {attempt}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_job_create_returns_when_its_runs_expire() {
    // The housekeeping sweep runs every heartbeat interval here (1 s).
    let server = Server::start_with(outpost_e2e::ServerOptions {
        args: vec!["--heartbeat-interval".into(), "1".into()],
        ..Default::default()
    })
    .await;
    let api = server.api();
    let (_, secret) = api.agent_key().await;
    let mut agent = Agent::start(&server.url, &secret);
    let id = agent.wait_online(&api).await;
    agent.terminate();
    api.wait_status(&id, "offline").await;

    // Without the expiry waking the waiter this would hold for the whole minute and answer 202.
    let (code, job) = api
        .job(
            json!({"command": "ping", "target": {"agents": [id]}, "ttl_s": 1}),
            Some(60),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{job}");
    assert_eq!(job["runs"][0]["status"], "expired", "{job}");
    assert_eq!(job["status"], "failed", "{job}");
}

/// A job over more agents than one insert statement holds (a job's runs are inserted 1,024 to
/// a statement) stores every run once, in target order, and sends the runs of the first and
/// the later statements alike; offline agents' runs wait, and cancelling the job ends them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_over_more_agents_than_one_statement_holds_is_stored_and_sent_whole() {
    const AGENTS: usize = 1100;
    const WAVE: usize = 250;
    let server = Server::start().await;
    let api = server.api();
    let (_, secret) = api.agent_key().await;
    // Targets are ordered by hostname (all the same here), then id.
    let mut ids: Vec<String> = (0..AGENTS)
        .map(|_| uuid::Uuid::now_v7().to_string())
        .collect();
    ids.sort();
    let connected = |n: usize| {
        let api = &api;
        async move {
            wait_for(
                &format!("{n} agents connected"),
                Duration::from_secs(60),
                || async move {
                    let (_, ready) = api.get("/readyz").await;
                    (ready["agents_connected"] == n).then_some(())
                },
            )
            .await
        }
    };
    // Stay connected: the first run of the first statement, the first of the second, the last.
    let kept = [0, 1024, AGENTS - 1];
    let mut peers = Vec::new();
    for &i in &kept {
        let mut peer = outpost_e2e::ws::connect(&server.url, &secret)
            .await
            .expect("connect");
        peer.handshake(&ids[i]).await;
        peers.push((i, peer));
    }
    connected(kept.len()).await;
    // The others register in waves and leave (a test process may have 1,024 files only).
    let others: Vec<&String> = (0..AGENTS)
        .filter(|i| !kept.contains(i))
        .map(|i| &ids[i])
        .collect();
    for wave in others.chunks(WAVE) {
        let joined = futures_util::future::join_all(wave.iter().map(|id| {
            let (url, secret) = (&server.url, &secret);
            async move {
                let mut peer = outpost_e2e::ws::connect(url, secret)
                    .await
                    .expect("connect");
                peer.handshake(id).await;
                peer
            }
        }))
        .await;
        connected(kept.len() + wave.len()).await;
        drop(joined);
        connected(kept.len()).await;
    }

    let (status, job) = api
        .job(json!({"command": "ping", "target": {"all": true}}), None)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    let job_id = job["job_id"].as_str().expect("job_id").to_owned();
    let runs = job["runs"].as_array().expect("runs");
    let targets: Vec<&str> = runs
        .iter()
        .map(|r| r["agent_id"].as_str().expect("agent_id"))
        .collect();
    assert_eq!(targets, ids, "one run per agent, in target order");

    for (i, peer) in &mut peers {
        let command_id = match peer.frame().await {
            outpost_protocol::ServerFrame::Command(c) => c.command_id,
            other => panic!("agent {i}: expected its run, got {other:?}"),
        };
        assert_eq!(runs[*i]["run_id"], command_id.to_string());
        peer.send_together(&[
            json!({"type": "ack", "command_id": command_id}),
            json!({"type": "response", "command_id": command_id, "success": true, "result": {"pong": true}}),
        ])
        .await;
    }
    let job = wait_for("the kept agents' runs", Duration::from_secs(30), || {
        let (api, path) = (&api, format!("/api/jobs/{job_id}"));
        async move {
            let (_, job) = api.get(&path).await;
            (job["run_counts"]["succeeded"] == kept.len()).then_some(job)
        }
    })
    .await;
    assert_eq!(job["status"], "running", "the offline agents' runs wait");
    assert_eq!(
        job["run_counts"]["pending"],
        AGENTS - kept.len(),
        "{}",
        job["run_counts"]
    );

    let (status, job) = api
        .post(&format!("/api/jobs/{job_id}/cancel"), json!({}))
        .await;
    assert!(status.is_success(), "{status} {job}");
    assert_eq!(job["status"], "cancelled", "{}", job["run_counts"]);
    assert_eq!(job["run_counts"]["cancelled"], AGENTS - kept.len());
}
