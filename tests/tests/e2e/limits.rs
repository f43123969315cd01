//! Rate limits over the real server (CONTRACT.md §9): per caller on `/api` with `Retry-After`, failed
//! authentications per client address, and `X-Forwarded-For` believed only from
//! `--trusted-proxy`. Limits are small so nothing waits for a minute to pass; the unit tests in
//! `server/core/src/service/limits.rs` move a clock instead.

use outpost_e2e::{Server, ServerOptions};
use outpost_store::Store;
use reqwest::StatusCode;
use serde_json::Value;

/// One `GET` with `token` (if any) and `X-Forwarded-For` values; the status, `Retry-After`
/// and the body.
async fn get(
    server: &Server,
    path: &str,
    token: Option<&str>,
    forwarded: &[&str],
) -> (StatusCode, Option<u64>, Value) {
    let mut request = reqwest::Client::new().get(format!("{}{path}", server.url));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    for value in forwarded {
        request = request.header("x-forwarded-for", *value);
    }
    let response = request.send().await.expect("request");
    let status = response.status();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().expect("text").parse().expect("whole seconds"));
    let body = response.json().await.unwrap_or(Value::Null);
    (status, retry_after, body)
}

async fn start(args: &[&str], envs: &[(&str, &str)]) -> Server {
    Server::start_with(ServerOptions {
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        envs: envs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..Default::default()
    })
    .await
}

fn assert_limited(answer: &(StatusCode, Option<u64>, Value), per_what: &str) {
    let (status, retry_after, body) = answer;
    assert_eq!(*status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    let retry_after = retry_after.expect("Retry-After on a 429");
    assert!(
        (1..=60).contains(&retry_after),
        "Retry-After: {retry_after}"
    );
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(message.contains(per_what), "{message}");
    assert!(message.contains("--rate-limit"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_caller_gets_its_own_allowance_on_the_api() {
    let server = start(&["--rate-limit", "5"], &[]).await;
    let owner = server.admin_key.clone();
    // A second API key (another tenant's owner: the keys API comes with users).
    let store = Store::open(&server.database()).await.expect("open store");
    let (_, other) = store.create_tenant("other", None).await.expect("tenant");

    for i in 0..5 {
        let (status, _, body) = get(&server, "/api/agents", Some(&owner), &[]).await;
        assert_eq!(status, StatusCode::OK, "request {i}: {body}");
    }
    let refused = get(&server, "/api/agents", Some(&owner), &[]).await;
    assert_limited(&refused, "at most 5 requests a minute per caller");
    // Every /api route, not one: the limit is the caller's.
    assert_limited(
        &get(&server, "/api/agents/keys", Some(&owner), &[]).await,
        "per caller",
    );
    // Another key from the same address is unaffected.
    for _ in 0..5 {
        let (status, _, body) = get(&server, "/api/agents", Some(&other), &[]).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    // Probes and the metrics scrape are not counted, and the refusals are.
    assert_eq!(get(&server, "/readyz", None, &[]).await.0, StatusCode::OK);
    let metrics = reqwest::Client::new()
        .get(format!("{}/metrics", server.url))
        .bearer_auth(&owner)
        .send()
        .await
        .expect("metrics");
    assert_eq!(metrics.status(), StatusCode::OK, "a scrape is not limited");
    let text = metrics.text().await.expect("text");
    let refusals = text
        .lines()
        .find(|l| l.starts_with("outpost_rate_limited_total{limit=\"api\"}"))
        .unwrap_or_else(|| panic!("no api refusals counted:\n{text}"));
    assert!(refusals.ends_with(" 2"), "{refusals}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentications_are_limited_per_address() {
    let server = start(&["--rate-limit", "3"], &[]).await;
    let bad = "opk_0000000000000000000000000000000000000000000";
    assert_eq!(
        get(&server, "/api/agents", Some(bad), &[]).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get(&server, "/api/agents", None, &[]).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get(&server, "/api/agents", Some("not-a-key"), &[]).await.0,
        StatusCode::UNAUTHORIZED
    );
    let refused = get(&server, "/api/agents", Some(bad), &[]).await;
    assert_limited(&refused, "fail authentication per client address");
    // Refused before the token is looked at: a valid key from the guessing address too, or
    // guessing would go on (answered 200 where a wrong key gets 429).
    assert_limited(
        &get(&server, "/api/agents", Some(&server.admin_key), &[]).await,
        "per client address",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_is_ignored_without_trusted_proxy() {
    let server = start(&["--rate-limit", "2"], &[]).await;
    let bad = Some("opk_wrong");
    // A client naming a new address each time is still one address.
    for client in ["203.0.113.1", "203.0.113.2"] {
        let (status, _, body) = get(&server, "/api/agents", bad, &[client]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    }
    assert_limited(
        &get(&server, "/api/agents", bad, &["203.0.113.3"]).await,
        "per client address",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_counts_from_a_trusted_proxy_read_from_the_right() {
    // The environment twin, with a list: the test client (loopback) is the trusted proxy.
    let server = start(
        &["--rate-limit", "2"],
        &[("OUTPOST_TRUSTED_PROXY", "10.0.0.0/8, 127.0.0.1")],
    )
    .await;
    let bad = Some("opk_wrong");
    let unauthorized = |answer: (StatusCode, Option<u64>, Value)| {
        assert_eq!(answer.0, StatusCode::UNAUTHORIZED, "{}", answer.2);
    };
    unauthorized(get(&server, "/api/agents", bad, &["203.0.113.1"]).await);
    unauthorized(get(&server, "/api/agents", bad, &["203.0.113.1"]).await);
    assert_limited(
        &get(&server, "/api/agents", bad, &["203.0.113.1"]).await,
        "per client address",
    );
    // Another client behind the same proxy is counted apart.
    unauthorized(get(&server, "/api/agents", bad, &["203.0.113.2"]).await);
    // A client cannot escape by writing another address left of the one the proxy appended,
    // in the same header or in an earlier one, or through a chain of trusted proxies.
    for spoof in [
        &["198.51.100.9, 203.0.113.1"][..],
        &["198.51.100.9", "203.0.113.1"],
        &["198.51.100.9, 203.0.113.1, 10.1.2.3"],
    ] {
        assert_limited(
            &get(&server, "/api/agents", bad, spoof).await,
            "per client address",
        );
    }
    // Garbage falls back to the peer (loopback, not yet counted), never to a fresh address.
    unauthorized(get(&server, "/api/agents", bad, &["203.0.113.1, junk"]).await);
    unauthorized(get(&server, "/api/agents", bad, &["unknown"]).await);
    assert_limited(
        &get(&server, "/api/agents", bad, &["203.0.113.9 x"]).await,
        "per client address",
    );
    // A valid key behind the proxy is counted by key, not by the exhausted addresses.
    let (status, _, body) = get(
        &server,
        "/api/agents",
        Some(&server.admin_key),
        &["203.0.113.7"],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}
