//! Job webhooks: signed, retried with backoff, every attempt recorded, private addresses
//! refused unless allowed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode as HttpStatus};
use outpost_e2e::{Agent, Scripts, Server, ServerOptions, wait_for};
use serde_json::{Value, json};

/// One request the receiver got: its headers and body.
type Delivery = (HeaderMap, Vec<u8>);

#[derive(Clone, Default)]
struct Receiver {
    seen: Arc<Mutex<Vec<Delivery>>>,
    fail_first: usize,
}

async fn hook(
    State(r): State<Receiver>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> HttpStatus {
    let mut seen = r.seen.lock().expect("lock");
    seen.push((headers, body.to_vec()));
    if seen.len() <= r.fail_first {
        HttpStatus::INTERNAL_SERVER_ERROR
    } else {
        HttpStatus::OK
    }
}

async fn receiver(fail_first: usize) -> (String, Receiver) {
    let r = Receiver {
        fail_first,
        ..Default::default()
    };
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(hook))
        .with_state(r.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, r)
}

async fn finished_job(server: &Server, webhook_url: &str) -> String {
    let api = server.api();
    let mut scripts = Scripts::new();
    scripts.add("ok", "echo fine", json!({}));
    let (_, secret) = api.agent_key().await;
    let agent = Agent::start_with(&server.url, &secret, None, scripts.env());
    let id = agent.wait_online(&api).await;
    let (_, job) = api
        .job(
            json!({"command": "run", "data": {"script": "ok"}, "target": {"agents": [id]}, "webhook_url": webhook_url}),
            Some(30),
        )
        .await;
    assert_eq!(job["status"], "succeeded", "{job}");
    // Keep the scripts and agent alive until the job is done (it is).
    drop(agent);
    drop(scripts);
    job["job_id"].as_str().expect("id").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_jobs_are_posted_signed_and_retried() {
    // Allowed through the variable, as `1`: booleans take 1/0, true/false, yes/no (CONTRACT.md §5).
    let server = Server::start_with(ServerOptions {
        envs: vec![("OUTPOST_WEBHOOK_ALLOW_PRIVATE".into(), "1".into())],
        ..Default::default()
    })
    .await;
    let api = server.api();
    let (url, receiver) = receiver(2).await;
    let job_id = finished_job(&server, &url).await;

    let webhook = wait_for(
        "the webhook to be delivered",
        Duration::from_secs(60),
        || async {
            let (_, w) = api.get(&format!("/api/jobs/{job_id}/webhook")).await;
            (w["status"] == "delivered").then_some(w)
        },
    )
    .await;
    let codes: Vec<_> = webhook["attempts"]
        .as_array()
        .expect("attempts")
        .iter()
        .map(|a| a["status_code"].clone())
        .collect();
    assert_eq!(codes, vec![json!(500), json!(500), json!(200)], "{webhook}");

    let seen = receiver.seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 3);
    let (headers, body) = seen.last().expect("delivery");
    let job: Value = serde_json::from_slice(body).expect("json body");
    assert_eq!(job["job_id"], job_id.as_str());
    assert_eq!(job["status"], "succeeded");
    assert_eq!(job["runs"][0]["exit_code"], 0);
    assert_eq!(headers["x-outpost-event"], "job.finished");

    let (status, secret) = api.get("/api/webhooks/signing-secret").await;
    assert_eq!(status, reqwest::StatusCode::OK);
    let secret = secret["secret"].as_str().expect("secret").to_owned();
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let expected = format!(
        "sha256={}",
        hex::encode(ring::hmac::sign(&key, body).as_ref())
    );
    assert_eq!(
        headers["x-outpost-signature"].to_str().expect("header"),
        expected
    );

    // The secret is sealed at rest: the database file does not contain it.
    let at_rest = server.at_rest();
    assert!(!at_rest[0].1.is_empty(), "{} is empty", at_rest[0].0);
    for (name, bytes) in &at_rest {
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "plaintext secret at rest in {name}"
        );
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(server.data_dir.join("master.key"))
        .expect("master.key")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // Rotation gives a new secret; the old one no longer signs.
    let (_, rotated) = api
        .post("/api/webhooks/signing-secret/rotate", json!({}))
        .await;
    assert_ne!(rotated["secret"].as_str(), Some(secret.as_str()));
    let (_, again) = api.get("/api/webhooks/signing-secret").await;
    assert_eq!(again["secret"], rotated["secret"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_to_private_addresses_are_refused_by_default() {
    // `no` is off, as the default is.
    let server = Server::start_with(ServerOptions {
        envs: vec![("OUTPOST_WEBHOOK_ALLOW_PRIVATE".into(), "no".into())],
        ..Default::default()
    })
    .await;
    let api = server.api();
    let (url, receiver) = receiver(0).await;
    let job_id = finished_job(&server, &url).await;
    let webhook = wait_for("the webhook to fail", Duration::from_secs(30), || async {
        let (_, w) = api.get(&format!("/api/jobs/{job_id}/webhook")).await;
        (w["status"] == "failed").then_some(w)
    })
    .await;
    let attempts = webhook["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 1, "{webhook}");
    assert!(
        attempts[0]["error"]
            .as_str()
            .expect("error")
            .contains("non-public"),
        "{webhook}"
    );
    assert!(
        receiver.seen.lock().expect("lock").is_empty(),
        "nothing was sent"
    );

    let (status, err) = api
        .job(json!({"command": "ping", "target": {"all": true}, "webhook_url": "file:///etc/passwd"}), None)
        .await;
    assert_eq!(status, reqwest::StatusCode::BAD_REQUEST);
    assert!(
        err["error"]["message"]
            .as_str()
            .expect("msg")
            .contains("webhook_url")
    );
}
