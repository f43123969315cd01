//! The outbox worker: sends the deliveries the store's outbox holds (`store::integrations`:
//! every delivery row is committed with its event and claimed by one node at a time), one
//! attempt each on its own task, and records every attempt. A background worker, kept apart from
//! the requests the service answers (`mod.rs`).
//!
//! Sending rules: every URL passes the SSRF guard of job webhooks at each attempt (no private
//! addresses unless `--webhook-allow-private`, the checked address is the one connected to,
//! no redirects; when saved, an address or `localhost` is refused, names are not resolved); an attempt takes at most 10 s and runs on its own task, so a destination that
//! hangs holds up only its own deliveries; at most one request per second per destination URL
//! leaves this node (a delivery that would exceed it waits, without counting an attempt); a
//! refusal (4xx other than 408/425/429) fails the delivery at once; anything else is retried
//! with exponential backoff (30 s tripling, ≤ 6 h apart) for up to 24 h and 10 attempts, or
//! after the provider's `Retry-After`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio::sync::{Notify, Semaphore};

use super::{Integrations, MASK};
use crate::providers::{self, Kind};
use outpost_store::domain::DomainError;
use outpost_store::{DeliveryAttempt, delivery, delivery_status, event, integration};

/// Attempts per delivery.
pub const MAX_ATTEMPTS: i32 = 10;
/// How long a delivery is retried.
pub const GIVE_UP_AFTER: chrono::TimeDelta = chrono::TimeDelta::hours(24);
/// Time one attempt may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests per second per destination URL, from one node.
const PER_DESTINATION: Duration = Duration::from_secs(1);
/// Deliveries sent at once by one node.
const IN_FLIGHT: usize = 32;
/// Deliveries claimed per pass.
const CLAIM_BATCH: u64 = 64;
/// The provider's answer kept per attempt.
const MAX_RESPONSE: usize = 2048;

/// What the worker needs from the server's configuration.
pub struct Outbox {
    /// Notified when deliveries are added on this node.
    wake: Arc<Notify>,
    /// `--webhook-allow-private`.
    pub(super) allow_private: bool,
    /// `--public-url`, for links in messages.
    public_url: Option<String>,
    /// This host's name (Splunk's `host`).
    host: String,
    /// When each destination may next be sent to from this node.
    next_send: Mutex<HashMap<String, Instant>>,
    /// Bounds the attempts in flight.
    in_flight: Semaphore,
    /// Deliveries being sent by this node (a pass does not start one twice).
    sending: Mutex<std::collections::HashSet<String>>,
    /// `--smtp-url`, for email integrations.
    mailer: Option<crate::mail::Mailer>,
}

impl Outbox {
    /// The worker's settings.
    pub fn new(allow_private: bool, public_url: Option<String>, host: String) -> Self {
        Self {
            wake: Arc::new(Notify::new()),
            allow_private,
            public_url,
            host,
            next_send: Mutex::new(HashMap::new()),
            in_flight: Semaphore::new(IN_FLIGHT),
            sending: Mutex::new(std::collections::HashSet::new()),
            mailer: None,
        }
    }

    /// Wakes the worker through `wake` (the finish path's `events_due`) besides its own.
    pub fn with_wake(mut self, wake: Arc<Notify>) -> Self {
        self.wake = wake;
        self
    }

    /// Sends email integrations' messages through `mailer`.
    pub fn with_mailer(mut self, mailer: crate::mail::Mailer) -> Self {
        self.mailer = Some(mailer);
        self
    }

    /// Reserves a send to `destination` now, or says when it may be sent.
    fn reserve(&self, destination: &str) -> Result<(), Instant> {
        let now = Instant::now();
        let Ok(mut next) = self.next_send.lock() else {
            return Ok(());
        };
        if next.len() > 10_000 {
            next.retain(|_, at| *at > now);
        }
        match next.get(destination) {
            Some(at) if *at > now => Err(*at),
            _ => {
                next.insert(destination.to_owned(), now + PER_DESTINATION);
                Ok(())
            }
        }
    }
}

impl Integrations {
    /// Sends due deliveries until shutdown: wakes at the earliest due one (at least every
    /// second, to see those recorded on other nodes).
    pub async fn run(self) {
        let shutdown = self.core.shutdown.clone();
        loop {
            let now = outpost_store::now();
            match self
                .core
                .store
                .claim_deliveries(&self.core.node, now, CLAIM_BATCH)
                .await
            {
                Ok(claimed) => {
                    for delivery in claimed {
                        let fresh = self
                            .outbox
                            .sending
                            .lock()
                            .map(|mut set| set.insert(delivery.id.clone()))
                            .unwrap_or(false);
                        if fresh {
                            tokio::spawn(self.clone().deliver(delivery));
                        }
                    }
                }
                Err(err) => tracing::warn!(error = %err, "cannot claim deliveries"),
            }
            let sleep = match self.core.store.next_delivery_due().await {
                Ok(Some(next)) => (next - outpost_store::now())
                    .to_std()
                    .unwrap_or(Duration::ZERO)
                    .min(Duration::from_secs(1)),
                _ => Duration::from_secs(1),
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.outbox.wake.notified() => {}
                () = tokio::time::sleep(sleep.max(Duration::from_millis(50))) => {}
            }
        }
    }

    /// One claimed delivery: sent (or put off for its destination's rate), its attempt
    /// recorded, its claim let go.
    async fn deliver(self, delivery: delivery::Model) {
        let id = delivery.id.clone();
        if let Err(err) = self.deliver_one(&delivery).await {
            tracing::warn!(delivery_id = %id, error = %err, "a delivery could not be recorded; it is retried once its claim lapses");
        }
        if let Ok(mut set) = self.outbox.sending.lock() {
            set.remove(&id);
        }
    }

    async fn deliver_one(&self, delivery: &delivery::Model) -> Result<(), DomainError> {
        let store = &self.core.store;
        let node = &self.core.node;
        let row = store
            .get_integration(&delivery.tenant_id, &delivery.integration_id)
            .await?;
        let event = store
            .get_event(&delivery.tenant_id, &delivery.event_id)
            .await?;
        let (Some(row), Some(event)) = (row, event) else {
            // Deleted meanwhile (its integration, or the event by retention): over, and
            // said so, rather than claimed again every minute.
            let gone = DeliveryAttempt {
                status_code: None,
                duration_ms: 0,
                response: None,
                error: Some("not sent: its integration or its event no longer exists".into()),
                retry_at: None,
                status: delivery_status::FAILED,
            };
            store
                .finish_attempt(delivery, node, Some(&gone), None)
                .await?;
            return Ok(());
        };
        let destination = destination(&row);
        if let Err(at) = self.outbox.reserve(&destination) {
            let wait = at.saturating_duration_since(Instant::now());
            let later = outpost_store::now()
                + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::seconds(1));
            store
                .finish_attempt(delivery, node, None, Some(later))
                .await?;
            return Ok(());
        }
        let Ok(_permit) = self.outbox.in_flight.acquire().await else {
            return Ok(());
        };
        let mut attempt = self.attempt(&row, &event, &delivery.id, false).await;
        if attempt.retry_at.is_some() {
            attempt.retry_at = next_attempt(delivery, attempt.retry_at, outpost_store::now());
            if attempt.retry_at.is_none() {
                attempt.status = delivery_status::FAILED;
                attempt.error = Some(format!(
                    "{}; giving up after {} attempt(s)",
                    attempt.error.as_deref().unwrap_or("not accepted"),
                    delivery.attempts + 1
                ));
            }
        }
        tracing::info!(delivery_id = %delivery.id, integration_id = %row.id, kind = %row.kind,
            event = %event.kind, status = ?attempt.status_code, outcome = attempt.status,
            retry = attempt.retry_at.is_some(), "delivery attempt");
        store
            .finish_attempt(delivery, node, Some(&attempt), None)
            .await?;
        Ok(())
    }

    /// One attempt at sending `event` to `row`: what the provider answered and what follows.
    /// `retry_at` is `Some(now)` as a marker for "retry" (the caller computes the backoff),
    /// or the provider's `Retry-After` instant.
    pub(super) async fn attempt(
        &self,
        row: &integration::Model,
        event: &event::Model,
        delivery_id: &str,
        test: bool,
    ) -> DeliveryAttempt {
        let started = Instant::now();
        let over = |status: &'static str,
                    code: Option<i32>,
                    response: Option<String>,
                    error: Option<String>,
                    retry_at: Option<DateTime<Utc>>| DeliveryAttempt {
            status_code: code,
            duration_ms: started.elapsed().as_millis() as i64,
            response,
            error,
            retry_at,
            status,
        };
        let kind: Kind = match row.kind.parse() {
            Ok(kind) => kind,
            Err(err) => return over(delivery_status::FAILED, None, None, Some(err), None),
        };
        let opened = match self.open_config(row) {
            Ok(opened) => opened,
            Err(err) => {
                return over(
                    delivery_status::FAILED,
                    None,
                    None,
                    Some(err.to_string()),
                    None,
                );
            }
        };
        let config = match providers::parse_config(kind, &opened) {
            Ok(config) => config,
            Err(err) => return over(delivery_status::FAILED, None, None, Some(err), None),
        };
        let view = providers::Event {
            id: &event.id,
            kind: &event.kind,
            time: event.at,
            tenant_id: &event.tenant_id,
            subject_kind: &event.subject_type,
            subject_id: &event.subject_id,
            subject_name: &event.subject_name,
            summary: &event.summary,
            data: &event.detail,
        };
        let ctx = providers::Context {
            public_url: self.outbox.public_url.as_deref(),
            host: &self.outbox.host,
            test,
        };
        if kind == Kind::Email {
            let Some(mailer) = &self.outbox.mailer else {
                return over(
                    delivery_status::FAILED,
                    None,
                    None,
                    Some(
                        "email: SMTP is not configured on this server (--smtp-url; see docs/OPERATIONS.md)"
                            .into(),
                    ),
                    None,
                );
            };
            let Some(email) = providers::render_email(&config, &view, &ctx) else {
                return over(
                    delivery_status::FAILED,
                    None,
                    None,
                    Some("email: no recipient".into()),
                    None,
                );
            };
            return match mailer.send(&email).await {
                Ok(sent) => over(
                    delivery_status::DELIVERED,
                    sent.code,
                    Some(truncate_text(sent.answer.as_bytes())),
                    None,
                    None,
                ),
                Err(refused) => over(
                    delivery_status::FAILED,
                    refused.code,
                    None,
                    Some(refused.error),
                    refused.transient.then(Utc::now),
                ),
            };
        }
        let requests = providers::render(&config, &view, &ctx);
        if requests.is_empty() {
            return over(
                delivery_status::DELIVERED,
                None,
                Some(format!(
                    "nothing to send: {} does not act on {}",
                    kind.as_str(),
                    event.kind
                )),
                None,
                None,
            );
        }
        let mut last = None;
        for request in requests {
            let mut headers = request.headers.clone();
            if kind == Kind::Webhook {
                let secret = config_secret(&opened);
                match providers::standard_webhooks_headers(
                    &secret,
                    delivery_id,
                    Utc::now().timestamp(),
                    &request.body,
                ) {
                    Ok(signed) => {
                        headers.extend(signed.into_iter().map(|(k, v)| (k.to_owned(), v)));
                    }
                    Err(err) => {
                        return over(delivery_status::FAILED, None, None, Some(err), None);
                    }
                }
            }
            let client = match client_for(&request.url, self.outbox.allow_private).await {
                Ok(client) => client,
                Err(err) => return over(delivery_status::FAILED, None, None, Some(err), None),
            };
            let mut builder = client
                .post(&request.url)
                .header("user-agent", concat!("outpost/", env!("CARGO_PKG_VERSION")));
            for (name, value) in &headers {
                builder = builder.header(name.as_str(), value.as_str());
            }
            let answer = builder.body(request.body.clone()).send().await;
            let answer = match answer {
                Ok(answer) => answer,
                Err(err) => {
                    let why = if err.is_timeout() {
                        format!("no answer within {} s", ATTEMPT_TIMEOUT.as_secs())
                    } else {
                        format!("cannot reach the provider: {err}")
                    };
                    return over(
                        delivery_status::FAILED,
                        None,
                        None,
                        Some(why),
                        Some(Utc::now()),
                    );
                }
            };
            let status = answer.status().as_u16();
            let answer_headers: Vec<(String, String)> = answer
                .headers()
                .iter()
                .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
                .collect();
            let body = read_capped(answer).await;
            let text = truncate_text(&body);
            match providers::classify(kind, status, &answer_headers, &body, Utc::now()) {
                providers::Outcome::Delivered => {
                    last = Some(over(
                        delivery_status::DELIVERED,
                        Some(i32::from(status)),
                        Some(text),
                        None,
                        None,
                    ));
                }
                providers::Outcome::Refused => {
                    return over(
                        delivery_status::FAILED,
                        Some(i32::from(status)),
                        Some(text),
                        Some(format!("the provider refused it ({status})")),
                        None,
                    );
                }
                providers::Outcome::Retry { after } => {
                    let at = Utc::now()
                        + after
                            .and_then(|d| chrono::Duration::from_std(d).ok())
                            .unwrap_or_default();
                    return over(
                        delivery_status::FAILED,
                        Some(i32::from(status)),
                        Some(text),
                        Some(format!("the provider answered {status}; retrying")),
                        Some(at),
                    );
                }
            }
        }
        last.unwrap_or_else(|| over(delivery_status::DELIVERED, None, None, None, None))
    }
}

fn config_secret(config: &Value) -> String {
    config
        .get("secret")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// The rate limit's key: the first URL the integration calls (or its id).
fn destination(row: &integration::Model) -> String {
    row.config
        .get("url")
        .and_then(Value::as_str)
        .filter(|u| *u != MASK)
        .map(str::to_owned)
        .unwrap_or_else(|| format!("integration:{}", row.id))
}

/// When to try a delivery again after a failed attempt (`hint`: the provider's
/// `Retry-After`), or `None` when it is out of attempts or time.
fn next_attempt(
    delivery: &delivery::Model,
    hint: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let made = delivery.attempts + 1;
    if made >= MAX_ATTEMPTS {
        return None;
    }
    // 30 s tripling, at most 6 h apart: the 10 attempts span about 21 h of the 24.
    let backoff =
        chrono::Duration::seconds((30i64 * 3i64.pow((made - 1).clamp(0, 12) as u32)).min(6 * 3600));
    let at = match hint {
        Some(hint) if hint > now => hint.max(now + chrono::Duration::seconds(1)),
        _ => now + backoff,
    };
    (at <= delivery.created_at + GIVE_UP_AFTER).then_some(at)
}

/// Reads at most a little of an answer's body (a provider's answer is a line or two; a
/// hostile receiver must not make us buffer more).
async fn read_capped(mut answer: reqwest::Response) -> Vec<u8> {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = answer.chunk().await {
        let room = (MAX_RESPONSE * 4).saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= MAX_RESPONSE * 4 {
            break;
        }
    }
    body
}

fn truncate_text(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    if text.len() <= MAX_RESPONSE {
        return text.into_owned();
    }
    let mut end = MAX_RESPONSE;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… (truncated)", &text[..end])
}

/// The SSRF-guarded client of job webhooks, for one URL.
async fn client_for(url: &str, allow_private: bool) -> Result<reqwest::Client, String> {
    super::super::webhooks::client_for(url, allow_private).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(attempts: i32, age: chrono::TimeDelta) -> delivery::Model {
        let now = Utc::now();
        delivery::Model {
            id: "d".into(),
            tenant_id: "t".into(),
            integration_id: "i".into(),
            event_id: "e".into(),
            status: "pending".into(),
            attempts,
            next_attempt_at: now,
            claimed_by: None,
            claimed_until: None,
            created_at: now - age,
            finished_at: None,
            last_status: None,
            last_error: None,
        }
    }

    #[test]
    fn retries_back_off_and_stop_at_ten_attempts_or_a_day() {
        let now = Utc::now();
        let first =
            next_attempt(&delivery(0, chrono::TimeDelta::zero()), None, now).expect("retry");
        assert_eq!((first - now).num_seconds(), 30);
        let third =
            next_attempt(&delivery(2, chrono::TimeDelta::zero()), None, now).expect("retry");
        assert_eq!((third - now).num_seconds(), 270);
        let late = next_attempt(&delivery(8, chrono::TimeDelta::zero()), None, now).expect("retry");
        assert_eq!((late - now).num_seconds(), 6 * 3600, "capped at 6 h");
        assert_eq!(
            next_attempt(&delivery(9, chrono::TimeDelta::zero()), None, now),
            None,
            "10 in all"
        );
        assert_eq!(
            next_attempt(
                &delivery(
                    3,
                    chrono::TimeDelta::hours(23) + chrono::TimeDelta::minutes(59)
                ),
                None,
                now
            ),
            None,
            "not past 24 h"
        );
        let hinted = now + chrono::TimeDelta::seconds(7);
        assert_eq!(
            next_attempt(&delivery(0, chrono::TimeDelta::zero()), Some(hinted), now),
            Some(hinted),
            "Retry-After wins"
        );
    }

    #[test]
    fn a_destination_gets_one_request_a_second() {
        let outbox = Outbox::new(false, None, "h".into());
        assert!(outbox.reserve("https://a").is_ok());
        assert!(
            outbox.reserve("https://a").is_err(),
            "a second at once waits"
        );
        assert!(
            outbox.reserve("https://b").is_ok(),
            "another destination does not"
        );
    }
}
