//! Where the bearer check's time goes (the `auth` scenario): the steps
//! `outpost_core::access::authenticate_api` takes for each kind of credential, timed one by
//! one in this process with the server's own code, against the running server's database and
//! its key:
//!
//! - an access token (JWT): [`Signer::verify`](outpost_core::jwt::Signer::verify) (HMAC-SHA256
//!   over the header and claims, two small JSON parses), then the user's row read by id
//!   ([`Store::get_user`](outpost_store::Store::get_user)), since CONTRACT.md §9 wants a
//!   disabled, demoted or deleted user refused on their next request;
//! - an API key (`opk_…`): its SHA-256 ([`hash_secret`](outpost_store::credentials::hash_secret)),
//!   then its row read by that hash.
//!
//! The reads go through a store opened here, so they include the connection pool and the ORM but
//! not the server's other work: they are what a cache in front of the row would save.

use std::time::Instant;

use anyhow::Context;
use outpost_core::jwt::Signer;
use outpost_store::Store;
use outpost_store::credentials::hash_secret;
use outpost_store::seal::MasterKey;
use serde_json::{Value, json};

use crate::report::percentile;
use crate::server::Server;

/// Each step's p50 and p99, in microseconds, over `count` runs (after 10 % as warm-up).
pub async fn breakdown(
    server: &Server,
    access_token: &str,
    api_key: &str,
    count: usize,
) -> anyhow::Result<Vec<(&'static str, f64, f64)>> {
    let master = MasterKey::parse(server.master_key()?.trim())
        .map_err(|why| anyhow::anyhow!("the server's master key: {why}"))?;
    let signer = Signer::new(&master.derive(outpost_core::service::ACCESS_TOKEN_KEY_LABEL));
    let store = Store::open(&server.database())
        .await
        .context("opening the server's store")?;
    let now = chrono::Utc::now().timestamp();
    let claims = signer
        .verify(access_token, now)
        .map_err(|why| anyhow::anyhow!("the bench's access token does not verify: {why:?}"))?;

    let mut steps: Vec<(&'static str, Vec<f64>)> = vec![
        ("access token: JWT verify", Vec::new()),
        ("access token: user row read", Vec::new()),
        ("API key: SHA-256", Vec::new()),
        ("API key: key row read", Vec::new()),
    ];
    for i in 0..count + count / 10 {
        let keep = i >= count / 10;
        let started = Instant::now();
        let verified = signer.verify(access_token, now);
        let verify = started.elapsed();
        anyhow::ensure!(verified.is_ok(), "verify failed at {i}");

        let started = Instant::now();
        let user = store.get_user(&claims.tid, &claims.sub).await?;
        let user_read = started.elapsed();
        anyhow::ensure!(user.is_some(), "the bench user is gone");

        let started = Instant::now();
        let hash = hash_secret(api_key);
        let sha = started.elapsed();

        let started = Instant::now();
        let key = store.api_key_by_hash(&hash).await?;
        let key_read = started.elapsed();
        anyhow::ensure!(key.is_some(), "the owner API key is not in the store");

        if keep {
            for (n, took) in [verify, user_read, sha, key_read].into_iter().enumerate() {
                steps[n].1.push(took.as_secs_f64() * 1e6);
            }
        }
    }
    Ok(steps
        .into_iter()
        .map(|(what, mut times)| {
            times.sort_by(f64::total_cmp);
            (what, percentile(&times, 50.0), percentile(&times, 99.0))
        })
        .collect())
}

/// The breakdown as a report line and JSON.
pub fn describe(steps: &[(&'static str, f64, f64)]) -> (String, Value) {
    let text = steps
        .iter()
        .map(|(what, p50, p99)| format!("{what} {p50:.1} / {p99:.1} µs"))
        .collect::<Vec<_>>()
        .join("; ");
    let data: serde_json::Map<String, Value> = steps
        .iter()
        .map(|(what, p50, p99)| ((*what).to_owned(), json!({"p50_us": p50, "p99_us": p99})))
        .collect();
    (text, Value::Object(data))
}
