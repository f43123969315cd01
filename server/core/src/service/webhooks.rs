//! Job webhooks: when a job with a `webhook_url` finishes, POST it there, signed.
//!
//! The request body is the job as `GET /api/jobs/{id}` shows it; the header
//! `X-Outpost-Signature: sha256=<hex>` is the HMAC-SHA256 of the body under the tenant's signing
//! secret (`GET /api/webhooks/signing-secret`). Attempts back off exponentially (1 s to 60 s, six
//! in all) and every one is recorded. A job is marked `pending` in the same write that finishes
//! it, so a restart resumes undelivered webhooks.
//!
//! A webhook URL comes from an API caller, so the server refuses to send to loopback, private,
//! link-local and other non-public addresses unless `--webhook-allow-private` is set, and
//! connects to exactly the address it checked (no second DNS lookup to rebind).

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use ring::hmac;
use tokio::sync::Notify;

use std::sync::Arc;

use super::Core;
use super::access::{Access, Action};
use super::audit::record_of;
use super::ssrf::{NON_PUBLIC, non_public};
use outpost_store::domain::{AuditAction, AuditEvent, AuditTarget, Caller, DomainError};
use outpost_store::{Attempt, command, job, webhook_status};

/// Renders a finished job as its webhook's body: the job as the REST API shows it, which the
/// API layer renders (it owns the views), handed in when the server is wired.
pub type RenderJob = fn(job::Model, Vec<command::Model>) -> serde_json::Result<Vec<u8>>;

/// Attempts per webhook.
const ATTEMPTS: usize = 6;
/// How long a node's claim on a job's webhook holds: far longer than all its attempts.
const WEBHOOK_CLAIM_S: i64 = 600;
/// Time one attempt may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// The delivery worker's own state.
pub struct Delivery {
    /// Notified by the finish path when jobs finish.
    wake: Arc<Notify>,
    in_flight: Mutex<HashSet<String>>,
    allow_private: bool,
    render: RenderJob,
}

impl Delivery {
    /// A worker woken through `wake`, sending to private addresses only if `allow_private`.
    pub fn new(wake: Arc<Notify>, allow_private: bool, render: RenderJob) -> Self {
        Self {
            wake,
            in_flight: Mutex::new(HashSet::new()),
            allow_private,
            render,
        }
    }
}

/// Job webhooks: the tenant's signing secret, and delivery.
#[derive(Clone)]
pub struct Webhooks {
    core: Arc<Core>,
    delivery: Arc<Delivery>,
}

impl Webhooks {
    pub(super) fn new(core: Arc<Core>, delivery: Arc<Delivery>) -> Self {
        Self { core, delivery }
    }

    /// The tenant's webhook signing secret (created on first use). Owners and admins only.
    #[tracing::instrument(skip_all, fields(tenant_id = %caller.tenant_id))]
    pub async fn signing_secret(&self, caller: &Caller) -> Result<String, DomainError> {
        Access::require(caller, Action::WebhookSecret)?;
        Ok(self
            .core
            .store
            .webhook_secret(&caller.tenant_id, &self.core.master)
            .await?)
    }

    /// Replaces the signing secret; webhooks sent from now on use the new one.
    #[tracing::instrument(skip_all, fields(tenant_id = %caller.tenant_id))]
    pub async fn rotate_signing_secret(&self, caller: &Caller) -> Result<String, DomainError> {
        Access::require(caller, Action::WebhookSecret)?;
        let txn = self.core.store.begin().await?;
        let secret = txn
            .rotate_webhook_secret(&caller.tenant_id, &self.core.master)
            .await?;
        let event = AuditEvent::new(
            AuditAction::WebhookSecretRotate,
            AuditTarget::Tenant,
            &caller.tenant_id,
        );
        txn.append_audit_now(&record_of(caller, event)).await?;
        txn.commit().await?;
        tracing::info!("webhook signing secret rotated");
        Ok(secret)
    }

    /// Delivers pending webhooks until shutdown: on every wake-up, and every 5 s.
    pub async fn run(self) {
        let state = self;
        loop {
            // Claimed, so that of several nodes exactly one delivers each (until the claim's
            // deadline, well past every attempt and its backoff: a node that dies mid-way
            // leaves the job to another after that).
            let until = outpost_store::now() + chrono::Duration::seconds(WEBHOOK_CLAIM_S);
            match state
                .core
                .store
                .claim_webhooks(&state.core.node, until, 100)
                .await
            {
                Ok(jobs) => {
                    for job in jobs {
                        let fresh = state
                            .delivery
                            .in_flight
                            .lock()
                            .map(|mut set| set.insert(job.id.clone()))
                            .unwrap_or(false);
                        if fresh {
                            tokio::spawn(deliver(state.clone(), job));
                        }
                    }
                }
                Err(err) => tracing::warn!(error = %err, "cannot read pending webhooks"),
            }
            tokio::select! {
                () = state.core.shutdown.cancelled() => return,
                () = state.delivery.wake.notified() => {}
                () = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
        }
    }
}

/// `sha256=<hex>` of the body under `secret`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    format!("sha256={}", hex::encode(hmac::sign(&key, body).as_ref()))
}

async fn deliver(state: Webhooks, job: job::Model) {
    let outcome = attempt_all(&state, &job).await;
    outpost_store::metrics::webhook_delivery(outcome);
    let status = if outcome {
        webhook_status::DELIVERED
    } else {
        webhook_status::FAILED
    };
    if let Err(err) = state
        .core
        .store
        .set_webhook_status(&job.tenant_id, &job.id, status)
        .await
    {
        tracing::warn!(job_id = %job.id, error = %err, "cannot record the webhook's outcome");
    }
    if let Ok(mut set) = state.delivery.in_flight.lock() {
        set.remove(&job.id);
    }
}

/// Tries until one attempt gets a 2xx; returns whether one did.
async fn attempt_all(state: &Webhooks, job: &job::Model) -> bool {
    let Some(url) = job.webhook_url.clone() else {
        return true;
    };
    let record = |attempt: Attempt| {
        let (store, tenant, job_id, url) = (
            state.core.store.clone(),
            job.tenant_id.clone(),
            job.id.clone(),
            url.clone(),
        );
        async move {
            if let Err(err) = store
                .record_webhook_attempt(&tenant, &job_id, &url, attempt)
                .await
            {
                tracing::warn!(error = %err, "cannot record a webhook attempt");
            }
        }
    };
    // Nothing can be sent (no payload, a URL that is not allowed): one attempt, recorded
    // with why, and no retry.
    let ready = match payload(state, job).await {
        Ok((body, secret)) => client_for(&url, state.delivery.allow_private)
            .await
            .map(|client| (body, secret, client)),
        Err(why) => Err(why),
    };
    let (body, secret, client) = match ready {
        Ok(ready) => ready,
        Err(why) => {
            outpost_store::metrics::webhook_attempt("refused");
            tracing::warn!(job_id = %job.id, %why, "webhook refused");
            record(Attempt {
                attempt: 1,
                status_code: None,
                error: Some(why),
                duration_ms: 0,
            })
            .await;
            return false;
        }
    };
    let signature = signature(&secret, &body);
    let mut delays = ExponentialBuilder::default()
        .with_min_delay(Duration::from_secs(1))
        .with_max_delay(Duration::from_secs(60))
        .with_max_times(ATTEMPTS - 1)
        .build();
    for number in 1..=ATTEMPTS as i32 {
        let started = Instant::now();
        let sent = client
            .post(&url)
            .header("content-type", "application/json")
            .header("user-agent", concat!("outpost/", env!("CARGO_PKG_VERSION")))
            .header("x-outpost-event", "job.finished")
            .header("x-outpost-delivery", outpost_store::new_id())
            .header("x-outpost-signature", &signature)
            .body(body.clone())
            .send()
            .await;
        let duration_ms = started.elapsed().as_millis() as i64;
        let (status_code, error) = match sent {
            Ok(response) if response.status().is_success() => {
                outpost_store::metrics::webhook_attempt("success");
                record(Attempt {
                    attempt: number,
                    status_code: Some(i32::from(response.status().as_u16())),
                    error: None,
                    duration_ms,
                })
                .await;
                tracing::info!(job_id = %job.id, attempt = number, "webhook delivered");
                return true;
            }
            Ok(response) => {
                outpost_store::metrics::webhook_attempt("http_error");
                (
                    Some(i32::from(response.status().as_u16())),
                    Some(format!("answered {}", response.status())),
                )
            }
            Err(err) => {
                outpost_store::metrics::webhook_attempt("network_error");
                (None, Some(format!("{err}")))
            }
        };
        record(Attempt {
            attempt: number,
            status_code,
            error: error.clone(),
            duration_ms,
        })
        .await;
        let Some(delay) = delays.next() else { break };
        tracing::info!(job_id = %job.id, attempt = number, error = ?error, retry_in = ?delay, "webhook attempt failed");
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            // Left pending: the next server process resumes it.
            () = state.core.shutdown.cancelled() => return false,
        }
    }
    tracing::warn!(job_id = %job.id, "webhook failed after {ATTEMPTS} attempts");
    false
}

async fn payload(state: &Webhooks, job: &job::Model) -> Result<(Vec<u8>, String), String> {
    let runs = state
        .core
        .store
        .job_runs(&job.tenant_id, &job.id)
        .await
        .map_err(|e| e.to_string())?;
    let body = (state.delivery.render)(job.clone(), runs).map_err(|e| e.to_string())?;
    let secret = state
        .core
        .store
        .webhook_secret(&job.tenant_id, &state.core.master)
        .await
        .map_err(|e| e.to_string())?;
    Ok((body, secret))
}

/// What can be told of a URL without resolving it: a host that is an address not on the
/// public internet (`ssrf::non_public`), or `localhost`, is refused unless `allow_private`. A
/// name is resolved (and checked) only when something is sent: a name that does not resolve
/// yet is not an error when an integration is saved, and its address may change before it is
/// used.
pub(super) fn literal_host_refusal(url: &str, allow_private: bool) -> Option<String> {
    if allow_private {
        return None;
    }
    let parsed = reqwest::Url::parse(url).ok()?;
    let why = match parsed.host()? {
        url::Host::Ipv4(v4) => non_public(IpAddr::V4(v4)),
        url::Host::Ipv6(v6) => non_public(IpAddr::V6(v6)),
        url::Host::Domain(name) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            (name == "localhost" || name.ends_with(".localhost")).then(|| NON_PUBLIC.to_owned())
        }
    }?;
    Some(format!(
        "refusing {}: {why} (set --webhook-allow-private to allow)",
        parsed.host_str().unwrap_or_default()
    ))
}

/// A client that connects only to the address checked here.
pub(super) async fn client_for(url: &str, allow_private: bool) -> Result<reqwest::Client, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("bad webhook URL: {e}"))?;
    let host = parsed
        .host_str()
        .ok_or("the webhook URL has no host")?
        .to_owned();
    let port = parsed
        .port_or_known_default()
        .ok_or("the webhook URL has no port")?;
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.trim_matches(['[', ']']), port))
        .await
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .collect();
    let addr = deliverable(&host, &addrs, allow_private)?;
    reqwest::Client::builder()
        .timeout(ATTEMPT_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .resolve(&host, addr)
        .build()
        .map_err(|e| e.to_string())
}

/// The first of the addresses `host` resolved to that may be sent to, or why none may (naming
/// the first address refused and why).
fn deliverable(
    host: &str,
    addrs: &[SocketAddr],
    allow_private: bool,
) -> Result<SocketAddr, String> {
    if allow_private {
        return addrs
            .first()
            .copied()
            .ok_or_else(|| format!("cannot resolve {host}: no address"));
    }
    let mut refused = None;
    for addr in addrs {
        match non_public(addr.ip()) {
            None => return Ok(*addr),
            Some(why) => {
                refused.get_or_insert((addr.ip(), why));
            }
        }
    }
    Err(match refused {
        Some((ip, why)) => format!(
            "refusing to deliver to {host}: it resolves only to non-public addresses ({ip}: {why}; set --webhook-allow-private to allow)"
        ),
        None => format!("cannot resolve {host}: no address"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_whose_host_is_a_non_public_address_are_refused_as_saved() {
        for url in [
            "http://127.0.0.1:9/x",
            "http://localhost/x",
            "http://a.localhost./x",
            "http://[::1]/x",
            "http://[::ffff:127.0.0.1]/x",
            "http://[64:ff9b::a00:1]/x",
            "http://[64:ff9b::7f00:1]/x",
            "http://[2002:a00:1::1]/x",
            "http://[2001:0:4136:e378:8000:63bf:f5ff:fffe]/x",
            "https://[fd00::1]:8443/x",
        ] {
            let why = literal_host_refusal(url, false).unwrap_or_else(|| panic!("{url}"));
            assert!(why.contains("non-public"), "{url}: {why}");
            assert_eq!(literal_host_refusal(url, true), None, "{url}");
        }
        let why = literal_host_refusal("http://[64:ff9b::a00:1]/", false).expect("refused");
        assert!(
            why.contains("[64:ff9b::a00:1]") && why.contains("10.0.0.1"),
            "{why}"
        );
        for url in [
            "https://hooks.example.com/x",
            "http://8.8.8.8/x",
            "http://[2606:4700::1111]/x",
            "http://[64:ff9b::808:808]/x",
            "http://[2002:808:808::1]/x",
        ] {
            assert_eq!(literal_host_refusal(url, false), None, "{url}");
        }
    }

    #[test]
    fn at_send_only_a_public_resolved_address_is_used() {
        let at = |ip: &str| SocketAddr::new(ip.parse().expect("ip"), 80);
        let picked = deliverable("h", &[at("64:ff9b::a00:1"), at("2606:4700::1111")], false);
        assert_eq!(picked, Ok(at("2606:4700::1111")));
        for ip in [
            "64:ff9b::a00:1",
            "64:ff9b::7f00:1",
            "2002:a00:1::1",
            "::ffff:10.0.0.1",
            "::a00:1",
        ] {
            let why = deliverable("h", &[at(ip)], false).expect_err(ip);
            assert!(
                why.contains("non-public") && why.contains(ip),
                "{ip}: {why}"
            );
            assert_eq!(deliverable("h", &[at(ip)], true), Ok(at(ip)));
        }
        assert!(deliverable("h", &[], false).is_err());
    }

    /// The send path resolves the URL's host (an address literal resolves to itself, so this
    /// needs no DNS) and refuses before any client is built or connection made.
    #[tokio::test]
    async fn at_send_a_url_reaching_a_private_ipv4_address_through_ipv6_is_refused() {
        for (url, carried) in [
            ("http://[64:ff9b::a00:1]/", "10.0.0.1"),
            ("http://[64:ff9b::7f00:1]/", "127.0.0.1"),
            ("http://[2002:a00:1::1]/", "10.0.0.1"),
            ("http://[2001:0:4136:e378:8000:63bf:f5ff:fffe]/", "10.0.0.1"),
            ("http://[64:ff9b:1::808:808]/", "64:ff9b:1::/48"),
        ] {
            let why = client_for(url, false).await.expect_err(url);
            assert!(
                why.contains("resolves only to non-public addresses") && why.contains(carried),
                "{url}: {why}"
            );
        }
    }

    #[test]
    fn signatures_are_hmac_sha256_hex() {
        // RFC 4231 test case 2.
        let sig = signature("Jefe", b"what do ya want for nothing?");
        assert_eq!(
            sig,
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
