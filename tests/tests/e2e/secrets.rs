//! Secret parameters: a value a manifest marks `secret` (or a caller forces secret) reaches
//! the script, and nowhere else: not an API answer, the event stream, a webhook, the server's
//! or the agents' logs and state directories (journal, spools), nor the SQLite database and
//! its WAL on disk.
//!
//! Every secret is a fresh random string, so a match anywhere is a leak, and each search is
//! checked against a non-secret value sent the same way, which must be found: a search that
//! cannot find anything proves nothing. The scripts prove they received a secret without
//! printing it: they compare its SHA-256 with one passed as an ordinary parameter and fail
//! otherwise, or print the hash.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use outpost_e2e::{Agent, Scripts, Server, ServerOptions, wait_for};
use reqwest::StatusCode;
use serde_json::{Value, json};

fn sha256_hex(text: &str) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, text.as_bytes()).as_ref())
}

fn fresh(label: &str) -> String {
    format!("{label}-{}", uuid::Uuid::new_v4().simple())
}

/// Every file under `dir`, read whole (state directories are small).
fn files_under(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.push((path.display().to_string(), bytes));
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// Records every body POSTed to it.
async fn receiver() -> (String, Arc<Mutex<Vec<Vec<u8>>>>) {
    async fn hook(
        State(seen): State<Arc<Mutex<Vec<Vec<u8>>>>>,
        body: axum::body::Bytes,
    ) -> axum::http::StatusCode {
        seen.lock().expect("lock").push(body.to_vec());
        axum::http::StatusCode::OK
    }
    let seen = Arc::new(Mutex::new(Vec::new()));
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(hook))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

/// A job's event stream, read whole (the job is over, so the stream ends).
async fn events(server: &Server, job_id: &str) -> String {
    reqwest::Client::new()
        .get(format!("{}/api/jobs/{job_id}/events", server.url))
        .bearer_auth(&server.admin_key)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .expect("events")
        .text()
        .await
        .expect("events body")
}

/// The script every agent runs as `deploy`: exits 0 only when `DB_PASSWORD` hashes to
/// `EXPECT`, and prints the hash and the (ordinary) `VERSION`.
const DEPLOY: &str = r#"got=$(printf %s "$OUTPOST_PARAM_DB_PASSWORD" | sha256sum | cut -d' ' -f1)
echo "version $OUTPOST_PARAM_VERSION"
echo "password sha256 $got"
[ "$got" = "$OUTPOST_PARAM_EXPECT" ] || { echo "wrong password" >&2; exit 3; }"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_parameters_reach_the_script_and_nothing_else() {
    let server = Server::start_with(ServerOptions {
        args: vec!["--webhook-allow-private".into()],
        ..Default::default()
    })
    .await;
    let api = server.api();
    let (_, key) = api.agent_key().await;

    // Agent A's manifest marks DB_PASSWORD secret; agent B's lists it as an ordinary
    // parameter (a manifest that disagrees) and has a script taking any parameter.
    let mut a_scripts = Scripts::new();
    a_scripts.add(
        "deploy",
        DEPLOY,
        json!({"params": ["VERSION", {"name": "DB_PASSWORD", "secret": true}, "EXPECT"]}),
    );
    let mut b_scripts = Scripts::new();
    b_scripts.add(
        "deploy",
        DEPLOY,
        json!({"params": ["VERSION", "DB_PASSWORD", "EXPECT"]}),
    );
    b_scripts.add(
        "token",
        r#"[ "$(printf %s "$OUTPOST_PARAM_API_TOKEN" | sha256sum | cut -d' ' -f1)" = "$OUTPOST_PARAM_EXPECT" ] || exit 3
echo "color $OUTPOST_PARAM_COLOR""#,
        json!({}),
    );
    let mut a = Agent::start_with(&server.url, &key, None, a_scripts.env());
    let mut b = Agent::start_with(&server.url, &key, None, b_scripts.env());
    let a_id = a.wait_online(&api).await;
    let b_id = b.wait_online(&api).await;
    let (_, a_view) = api.get(&format!("/api/agents/{a_id}")).await;
    assert_eq!(
        a_view["scripts"][0]["params"][1],
        json!({"name": "DB_PASSWORD", "secret": true}),
        "the manifest's mark reaches the server: {a_view}"
    );

    let mut secrets = Vec::new();
    let mut ordinary = Vec::new();

    // 1. A job on both agents, with a webhook: the password is secret for both runs, since
    // one of the targets says so. B is offline when the job is created, so its run is sent
    // when it reconnects (the resend path), A's at once.
    b.kill9();
    api.wait_status(&b_id, "offline").await;
    let password = fresh("pw");
    let version = fresh("version");
    let (hook_url, hooks) = receiver().await;
    let (status, created) = api
        .job(
            json!({
                "command": "run",
                "data": {"script": "deploy", "params": {
                    "DB_PASSWORD": password, "VERSION": version, "EXPECT": sha256_hex(&password)}},
                "target": {"agents": [a_id, b_id]},
                "webhook_url": hook_url,
            }),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{created}");
    secrets.push(password.clone());
    ordinary.push(version.clone());
    let job_id = created["job_id"].as_str().expect("job id").to_owned();
    assert_eq!(created["data"]["params"]["DB_PASSWORD"], "********");
    assert_eq!(created["data"]["params"]["VERSION"], version.as_str());
    assert_eq!(created["data"]["secret_params"], json!(["DB_PASSWORD"]));
    b.restart();
    let job = api.wait_job(&job_id).await;
    assert_eq!(
        job["status"], "succeeded",
        "both scripts got the password: {job}"
    );
    for run in job["runs"].as_array().expect("runs") {
        let (_, out) = api
            .output(&job_id, run["run_id"].as_str().expect("run id"), "")
            .await;
        let out = String::from_utf8(out).expect("utf-8");
        assert!(
            out.contains(&format!("password sha256 {}", sha256_hex(&password))),
            "{out}"
        );
    }
    let delivered = wait_for("the webhook", Duration::from_secs(60), || async {
        hooks.lock().expect("lock").first().cloned()
    })
    .await;
    let delivered: Value = serde_json::from_slice(&delivered).expect("webhook json");
    assert_eq!(delivered["data"]["params"]["DB_PASSWORD"], "********");
    assert_eq!(delivered["data"]["params"]["VERSION"], version.as_str());
    let event_stream = events(&server, &job_id).await;
    assert!(event_stream.contains("event: end"), "{event_stream}");

    // 2. A parameter forced secret by the caller, on one agent, through the command route;
    // `?wait` on a job with the same forced secret.
    let token = fresh("tok");
    let color = fresh("color");
    let (status, answer) = api
        .command(
            &b_id,
            json!({"command": "run", "data": {"script": "token", "params": {
                "API_TOKEN": token, "COLOR": color, "EXPECT": sha256_hex(&token)},
                "secret_params": ["API_TOKEN"]}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(
        answer["status"], "succeeded",
        "the script got the token: {answer}"
    );
    let command_id = answer["command_id"].as_str().expect("id").to_owned();
    let (_, stored) = api.get(&format!("/api/commands/{command_id}")).await;
    secrets.push(token.clone());
    let token2 = fresh("tok");
    let (status, waited) = api
        .job(
            json!({"command": "run", "target": {"agents": [b_id]},
                   "data": {"script": "token", "params": {
                       "API_TOKEN": token2, "COLOR": color, "EXPECT": sha256_hex(&token2)},
                       "secret_params": ["API_TOKEN"]}}),
            Some(30),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{waited}");
    assert_eq!(waited["status"], "succeeded", "{waited}");
    assert_eq!(waited["data"]["params"]["API_TOKEN"], "********");
    assert_eq!(waited["data"]["params"]["COLOR"], color.as_str());
    secrets.push(token2);
    ordinary.push(color);

    // A forced name that is not a parameter (a typo would leave the real one in the clear)
    // and a forced secret outside a run are refused.
    for (body, why) in [
        (
            json!({"command": "run", "data": {"script": "token", "params": {"API_TOKEN": "x"},
                   "secret_params": ["API_TOKN"]}}),
            "API_TOKN",
        ),
        (
            json!({"command": "echo", "data": {"message": "x", "secret_params": []}}),
            "only a run",
        ),
    ] {
        let (status, err) = api.command(&b_id, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
        assert!(
            err["error"]["message"]
                .as_str()
                .expect("message")
                .contains(why),
            "{err}"
        );
    }

    // Everything the API shows, in one text: the list, the jobs, the command.
    let (_, listed) = api.get("/api/jobs").await;
    let (_, shown) = api.get(&format!("/api/jobs/{job_id}")).await;
    let (_, script_filtered) = api.get("/api/jobs?script=deploy").await;
    let api_text = [
        created.to_string(),
        job.to_string(),
        listed.to_string(),
        shown.to_string(),
        script_filtered.to_string(),
        answer.to_string(),
        stored.to_string(),
        waited.to_string(),
        delivered.to_string(),
        event_stream,
    ]
    .join("\n");
    assert!(
        api_text.contains("********"),
        "masked values are shown as such"
    );

    // Stop the agents, so their logs and files are complete, then search everything.
    let mut places: Vec<(String, Vec<u8>)> = vec![("API answers".into(), api_text.into_bytes())];
    for (name, agent) in [("A", &mut a), ("B", &mut b)] {
        agent.terminate();
        places.push((format!("agent {name}'s log"), agent.logs().into_bytes()));
        places.extend(files_under(&agent.state_dir));
    }
    places.extend(
        hooks
            .lock()
            .expect("lock")
            .iter()
            .map(|body| ("a webhook body".to_owned(), body.clone())),
    );
    places.push(("the server's log".into(), server.logs().into_bytes()));
    let mut db = Vec::new();
    for (name, bytes) in server.at_rest() {
        db.extend_from_slice(&bytes);
        places.push((name, bytes));
    }
    for (name, bytes) in &places {
        for secret in &secrets {
            assert!(!contains(bytes, secret), "a secret value is in {name}");
        }
    }
    // The searches find what is there: the ordinary values sent beside the secrets are in
    // the API answers and in the database files.
    for value in &ordinary {
        assert!(
            contains(&places[0].1, value),
            "{value} not in the API answers"
        );
        assert!(contains(&db, value), "{value} not in the database files");
    }
}

/// A server started with another master key than the one its database's secrets are sealed
/// with refuses to start, saying so, rather than store secrets nobody else can open (several
/// nodes on one database need the same key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_master_key_on_the_same_database_is_refused() {
    let first_key = "11".repeat(32);
    let mut server = Server::start_with(ServerOptions {
        envs: vec![("OUTPOST_MASTER_KEY".into(), first_key)],
        ..Default::default()
    })
    .await;
    server.kill9();
    let mut args = vec!["--listen".to_owned(), "127.0.0.1:0".to_owned()];
    args.push("--data-dir".into());
    args.push(server.data_dir.display().to_string());
    args.extend(server.database_args());
    let out = std::process::Command::new(outpost_e2e::bin_dir().join("outpost-server"))
        .args(&args)
        .env("OUTPOST_MASTER_KEY", "22".repeat(32))
        .env_remove("OUTPOST_ADMIN_KEY")
        .output()
        .expect("run the server");
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("is not the one this database's secrets are sealed with"),
        "{said}"
    );
}
