//! Fleet results (CONTRACT.md §16) over the real binaries: a job on agents whose scripts print
//! a few distinct outputs and exit codes read as one answer (counts, groups exact and masked),
//! its runs paged and filtered, exported (CSV read back by a CSV reader, JSON lines), re-run
//! on exactly the failed agents, and the refusals: nothing to re-run, agents gone, a caller
//! without the run permission, bad filters, another tenant's job.

use std::time::Duration;

use outpost_e2e::{Agent, Api, CliHome, Scripts, Server, wait_for};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// An agent whose `disk` script has `body`.
async fn agent(server: &Server, api: &Api, secret: &str, body: &str) -> (Agent, Scripts, String) {
    let mut scripts = Scripts::new();
    scripts.add("disk", body, json!({}));
    let agent = Agent::start_with(&server.url, secret, None, scripts.env());
    let id = agent.wait_online(api).await;
    (agent, scripts, id)
}

/// The summary once every finished run is grouped.
async fn summary(api: &Api, job_id: &str, query: &str) -> Value {
    let path = format!("/api/jobs/{job_id}/summary{query}");
    wait_for("every run grouped", Duration::from_secs(30), || {
        let path = path.clone();
        async move {
            let (status, summary) = api.get(&path).await;
            assert_eq!(status, StatusCode::OK, "{summary}");
            (summary["undigested"] == 0).then_some(summary)
        }
    })
    .await
}

fn counts(groups: &Value) -> Vec<i64> {
    groups
        .as_array()
        .expect("groups")
        .iter()
        .map(|g| g["count"].as_i64().expect("count"))
        .collect()
}

fn agents_of(page: &Value) -> Vec<String> {
    let mut ids: Vec<String> = page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|r| r["agent_id"].as_str().expect("agent").to_owned())
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_over_many_agents_reads_as_one_answer_and_reruns_its_failures() {
    let server = Server::start().await;
    let api = server.api();
    let (_, secret) = api.agent_key().await;
    // Six agents, four outputs: two say 41 %, one 63 %, one 7 % (one group with digits
    // masked), two fail the same way.
    let bodies = [
        "echo '/ 41% used'",
        "echo '/ 41% used'",
        "echo '/ 63% used'",
        "echo checking; echo 'disk full' >&2; exit 2",
        "echo checking; echo 'disk full' >&2; exit 2",
        "echo '/ 7% used'",
    ];
    let mut agents = Vec::new();
    for body in bodies {
        agents.push(agent(&server, &api, &secret, body).await);
    }
    let ids: Vec<String> = agents.iter().map(|a| a.2.clone()).collect();
    let (_, host) = api.get(&format!("/api/agents/{}", ids[0])).await;
    let hostname = host["hostname"].as_str().expect("hostname").to_owned();

    let (status, job) = api
        .job(
            json!({"target": {"all": true}, "command": "run", "data": {"script": "disk"}}),
            Some(60),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{job}");
    let job_id = job["job_id"].as_str().expect("id").to_owned();
    // Every run names its agent's host.
    for run in job["runs"].as_array().expect("runs") {
        assert_eq!(run["hostname"], hostname.as_str(), "{run}");
    }

    // The summary: counts and groups exact.
    let exact = summary(&api, &job_id, "").await;
    assert_eq!(exact["total"], 6, "{exact}");
    assert_eq!(exact["by_status"], json!({"succeeded": 4, "failed": 2}));
    assert_eq!(exact["by_exit_code"], json!({"0": 4, "2": 2}));
    assert_eq!(exact["group_count"], 4, "{exact}");
    assert_eq!(counts(&exact["groups"]), [2, 2, 1, 1], "{exact}");
    assert!(exact["duration_ms"]["p50"].is_i64(), "{exact}");
    assert!(exact["duration_ms"]["max"].as_i64() >= exact["duration_ms"]["p90"].as_i64());
    let failed_group = exact["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .find(|g| g["status"] == "failed")
        .expect("a failed group")
        .clone();
    assert_eq!(failed_group["count"], 2);
    assert_eq!(failed_group["exit_code"], 2);
    assert_eq!(failed_group["first_line"], "checking");
    assert_eq!(failed_group["sample"]["hostname"], hostname.as_str());
    let ok_41 = exact["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .find(|g| g["first_line"] == "/ 41% used")
        .expect("the 41% group");
    assert_eq!(ok_41["count"], 2);
    // With digits masked, the four disk reports are one group.
    let masked = summary(&api, &job_id, "?mask=numbers").await;
    assert_eq!(masked["masked"], true);
    assert_eq!(counts(&masked["groups"]), [4, 2], "{masked}");

    // Runs: filtered, paged with a cursor, named by host.
    let (status, failed) = api
        .get(&format!("/api/jobs/{job_id}/runs?status=failed"))
        .await;
    assert_eq!(status, StatusCode::OK, "{failed}");
    let mut want_failed = vec![ids[3].clone(), ids[4].clone()];
    want_failed.sort();
    assert_eq!(agents_of(&failed), want_failed);
    assert_eq!(failed["items"][0]["hostname"], hostname.as_str());
    assert_eq!(failed["items"][0]["group"], failed_group["key"]);
    let (_, by_group) = api
        .get(&format!(
            "/api/jobs/{job_id}/runs?group={}",
            failed_group["key"].as_str().expect("key")
        ))
        .await;
    assert_eq!(agents_of(&by_group), want_failed);
    let (_, by_code) = api
        .get(&format!("/api/jobs/{job_id}/runs?exit_code=0"))
        .await;
    assert_eq!(by_code["items"].as_array().map(Vec::len), Some(4));
    let (_, by_agent) = api
        .get(&format!("/api/jobs/{job_id}/runs?agent_id={}", ids[5]))
        .await;
    assert_eq!(agents_of(&by_agent), [ids[5].clone()]);
    let (_, by_host) = api
        .get(&format!(
            "/api/jobs/{job_id}/runs?hostname={}",
            &hostname[..hostname.len().min(2)].to_uppercase()
        ))
        .await;
    assert_eq!(by_host["items"].as_array().map(Vec::len), Some(6));
    let mut seen = Vec::new();
    let mut cursor = String::new();
    for _ in 0..6 {
        let (status, page) = api
            .get(&format!("/api/jobs/{job_id}/runs?limit=4{cursor}"))
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        seen.extend(agents_of(&page));
        match page["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => break,
        }
    }
    seen.sort();
    let mut all = ids.clone();
    all.sort();
    assert_eq!(seen, all, "two pages hold every run once");

    // Filters that are not ours.
    for query in [
        "group=zz",
        "group=0123456789ABCDEF",
        "cursor=not-a-cursor",
        "status=exploded",
        "limit=0",
        "limit=201",
        "agent_id=web-1",
        "mask=letters",
    ] {
        let (status, body) = api.get(&format!("/api/jobs/{job_id}/runs?{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
    }
    let (status, _) = api
        .get("/api/jobs/01990000-0000-7000-8000-000000000000/summary")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Export: CSV a CSV reader reads back, and JSON lines.
    let client = reqwest::Client::new();
    let csv_text = client
        .get(format!(
            "{}/api/jobs/{job_id}/export?format=csv",
            server.url
        ))
        .bearer_auth(api.token())
        .send()
        .await
        .expect("export")
        .text()
        .await
        .expect("body");
    let mut reader = csv::Reader::from_reader(csv_text.as_bytes());
    let header: Vec<String> = reader
        .headers()
        .expect("header")
        .iter()
        .map(str::to_owned)
        .collect();
    assert_eq!(
        header,
        [
            "run_id",
            "agent_id",
            "hostname",
            "status",
            "exit_code",
            "duration_ms",
            "stdout_bytes",
            "stderr_bytes",
            "error_code",
            "first_line",
            "last_line"
        ]
    );
    let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.expect("a row")).collect();
    assert_eq!(rows.len(), 6, "{csv_text}");
    let failed_rows = rows.iter().filter(|r| &r[3] == "failed").count();
    assert_eq!(failed_rows, 2);
    assert!(rows.iter().all(|r| r[2] == hostname), "{csv_text}");
    assert!(rows.iter().any(|r| &r[9] == "/ 41% used"), "{csv_text}");
    let jsonl = client
        .get(format!(
            "{}/api/jobs/{job_id}/export?format=jsonl",
            server.url
        ))
        .bearer_auth(api.token())
        .send()
        .await
        .expect("export")
        .text()
        .await
        .expect("body");
    let lines: Vec<Value> = jsonl
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 6);
    assert_eq!(
        lines.iter().filter(|l| l["exit_code"] == 2).count(),
        2,
        "{jsonl}"
    );
    let (status, _) = api
        .get(&format!("/api/jobs/{job_id}/export?format=xml"))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // The CLI prints the summary and the groups.
    let cli = CliHome::new(&server);
    let (code, out, err) = cli.run_with_key(&["jobs", "show", &job_id]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("6 (4 succeeded, 2 failed)"), "{out}");
    assert!(out.contains("2 × failed, exit 2"), "{out}");
    assert!(out.contains("│ / 41% used"), "{out}");
    let (code, out, err) = cli.run_with_key(&["jobs", "runs", &job_id, "--status", "failed"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.lines().count(), 3, "a header and two runs: {out}");
    // `run --follow` over several agents ends with the summary (on stderr; the output is
    // stdout's).
    let (code, out, err) = cli.run_with_key(&["run", "disk", "--on", "all", "--follow"]);
    assert_eq!(code, 1, "two runs failed: {out}{err}");
    assert!(err.contains("4 groups:"), "{err}");
    assert!(err.contains("2 × failed, exit 2"), "{err}");

    // Rerun of the failed runs reaches exactly their agents, and records what it re-runs.
    let (status, rerun) = api
        .post(
            &format!("/api/jobs/{job_id}/rerun"),
            json!({"runs": "failed"}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{rerun}");
    assert_eq!(rerun["job"]["rerun_of"], job_id.as_str());
    assert_eq!(rerun["skipped"], json!([]));
    let rerun_id = rerun["job"]["job_id"].as_str().expect("id").to_owned();
    let done = api.wait_job(&rerun_id).await;
    let mut reached: Vec<String> = done["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .map(|r| r["agent_id"].as_str().expect("agent").to_owned())
        .collect();
    reached.sort();
    assert_eq!(reached, want_failed);
    assert_eq!(done["data"]["script"], "disk");

    // Chosen runs, by id; one that is not the job's is refused.
    let one = failed["items"][0]["run_id"]
        .as_str()
        .expect("run")
        .to_owned();
    let (status, chosen) = api
        .post(&format!("/api/jobs/{job_id}/rerun"), json!({"runs": [one]}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{chosen}");
    assert_eq!(chosen["job"]["runs"].as_array().map(Vec::len), Some(1));
    api.wait_job(chosen["job"]["job_id"].as_str().expect("id"))
        .await;
    let (status, body) = api
        .post(
            &format!("/api/jobs/{job_id}/rerun"),
            json!({"runs": ["01990000-0000-7000-8000-000000000000"]}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    for bad in [json!({"runs": "some"}), json!({"runs": []}), json!({})] {
        let (status, body) = api
            .post(&format!("/api/jobs/{job_id}/rerun"), bad.clone())
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }

    // Nothing failed: 400 nothing_to_rerun.
    let (status, pings) = api
        .job(
            json!({"target": {"all": true}, "command": "ping"}),
            Some(30),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{pings}");
    let (status, body) = api
        .post(
            &format!("/api/jobs/{}/rerun", pings["job_id"].as_str().expect("id")),
            json!({"runs": "failed"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "nothing_to_rerun", "{body}");

    // A caller without the run permission reads the summary but may not re-run.
    let (status, key) = api
        .post(
            "/api/keys",
            json!({"name": "reader", "scopes": ["jobs:read"]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{key}");
    let reader = api.with_token(key["secret"].as_str().expect("secret"));
    let (status, _) = reader.get(&format!("/api/jobs/{job_id}/summary")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = reader
        .post(
            &format!("/api/jobs/{job_id}/rerun"),
            json!({"runs": "failed"}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");

    // An agent gone: its run is reported skipped, not dropped; the others go.
    let (mut gone, _, gone_id) = agents.remove(4);
    gone.kill9();
    api.wait_status(&gone_id, "offline").await;
    let (status, body) = api.delete(&format!("/api/agents/{gone_id}")).await;
    assert!(status.is_success(), "{body}");
    let (status, rerun) = api
        .post(
            &format!("/api/jobs/{job_id}/rerun"),
            json!({"runs": "failed"}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{rerun}");
    assert_eq!(rerun["job"]["runs"].as_array().map(Vec::len), Some(1));
    assert_eq!(rerun["job"]["runs"][0]["agent_id"], ids[3].as_str());
    assert_eq!(
        rerun["skipped"].as_array().map(Vec::len),
        Some(1),
        "{rerun}"
    );
    assert_eq!(rerun["skipped"][0]["agent_id"], gone_id.as_str());
    assert!(
        rerun["skipped"][0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("gone")),
        "{rerun}"
    );
    api.wait_job(rerun["job"]["job_id"].as_str().expect("id"))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenants_job_is_not_found_and_secret_parameters_are_carried_unseen() {
    let server = Server::start().await;
    let api = server.api();
    let (_, secret) = api.agent_key().await;
    let mut scripts = Scripts::new();
    scripts.add(
        "login",
        r#"echo "user $OUTPOST_PARAM_USER"; [ "$OUTPOST_PARAM_TOKEN" = "s3cret-value" ] && echo "token ok"; exit 3"#,
        json!({}),
    );
    scripts.add("bytes", r"printf '\377\376 not text\n'", json!({}));
    let agent = Agent::start_with(&server.url, &secret, None, scripts.env());
    let agent_id = agent.wait_online(&api).await;
    let (status, job) = api
        .job(
            json!({
                "target": {"agents": [agent_id]},
                "command": "run",
                "data": {"script": "login", "params": {"USER": "ada", "TOKEN": "s3cret-value"}, "secret_params": ["TOKEN"]},
            }),
            Some(30),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{job}");
    let job_id = job["job_id"].as_str().expect("id").to_owned();
    assert_eq!(job["runs"][0]["status"], "failed");

    // The rerun runs with the secret the original had, and never shows it.
    let (status, rerun) = api
        .post(
            &format!("/api/jobs/{job_id}/rerun"),
            json!({"runs": "failed"}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{rerun}");
    assert!(!rerun.to_string().contains("s3cret-value"), "{rerun}");
    let rerun_id = rerun["job"]["job_id"].as_str().expect("id").to_owned();
    let done = api.wait_job(&rerun_id).await;
    let run_id = done["runs"][0]["run_id"].as_str().expect("run").to_owned();
    let (_, out) = api.output(&rerun_id, &run_id, "").await;
    let out = String::from_utf8_lossy(&out);
    assert!(out.contains("user ada"), "{out}");
    assert!(
        out.contains("token ok"),
        "the sealed secret was carried over: {out}"
    );
    assert_eq!(done["data"]["params"]["TOKEN"], "********", "{done}");
    let rerun_summary = summary(&api, &rerun_id, "").await;
    assert!(!rerun_summary.to_string().contains("s3cret-value"));
    assert_eq!(rerun_summary["rerun_of"], job_id.as_str());

    // Output that is not UTF-8 is fingerprinted as bytes and shown with replacement
    // characters, in the summary and in the export.
    let (status, bytes) = api
        .job(
            json!({"target": {"agents": [agent_id]}, "command": "run", "data": {"script": "bytes"}}),
            Some(30),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{bytes}");
    let bytes_id = bytes["job_id"].as_str().expect("id").to_owned();
    let grouped = summary(&api, &bytes_id, "").await;
    assert_eq!(
        grouped["groups"][0]["first_line"], "\u{fffd}\u{fffd} not text",
        "{grouped}"
    );
    let (status, exported) = api
        .get(&format!("/api/jobs/{bytes_id}/export?format=jsonl"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(exported["first_line"], "\u{fffd}\u{fffd} not text");

    // Another tenant sees none of it (made in the database, as tenancy.rs does).
    let store = outpost_store::Store::open(&server.database())
        .await
        .expect("open store");
    let (_, other_key) = store.create_tenant("other", None).await.expect("tenant");
    let other = Api::new(&server.url, &other_key);
    for path in [
        format!("/api/jobs/{job_id}/summary"),
        format!("/api/jobs/{job_id}/runs"),
        format!("/api/jobs/{job_id}/export"),
    ] {
        let (status, body) = other.get(&path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
    }
    let (status, body) = other
        .post(&format!("/api/jobs/{job_id}/rerun"), json!({"runs": "all"}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}
