//! The generic webhook: the event JSON, signed as Standard Webhooks.
//!
//! Format: <https://www.standardwebhooks.com/> (the specification,
//! `github.com/standard-webhooks/standard-webhooks/blob/main/spec/standard-webhooks.md`). The
//! body is the event exactly as CONTRACT.md §11 shows one; three headers carry the message id, the Unix
//! time of the attempt and `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, keyed with
//! the base64-decoded part of the `whsec_…` secret. Receivers verify with any of the
//! specification's libraries, reject timestamps more than about five minutes off (so the
//! headers are made at each attempt, not stored), and deduplicate on the id (so retries keep
//! it). The test vector is the one those libraries test against.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::{Value, json};

use super::config::webhook_key;
use super::{Event, Request};

/// The event as CONTRACT.md §11 shows it: `{id, type, time, tenant_id, subject:{kind,id,name}, summary,
/// data}` (also the `event` of Splunk's envelope).
pub fn event_json(event: &Event) -> Value {
    json!({
        "id": event.id,
        "type": event.kind,
        "time": event.time,
        "tenant_id": event.tenant_id,
        "subject": {
            "kind": event.subject_kind,
            "id": event.subject_id,
            "name": event.subject_name,
        },
        "summary": event.summary,
        "data": event.data,
    })
}

pub(super) fn render(url: &str, event: &Event) -> Request {
    Request::json(url.to_owned(), Vec::new(), &event_json(event))
}

/// The three Standard Webhooks headers for one attempt: `webhook-id`, `webhook-timestamp`
/// (Unix seconds) and `webhook-signature` (`v1,<base64>`). The error says what is wrong with
/// the secret or the id.
pub fn standard_webhooks_headers(
    secret: &str,
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> Result<[(&'static str, String); 3], String> {
    let key = webhook_key(secret).map_err(|why| format!("secret: {why}"))?;
    // The id goes into a header and into the signed content, whose parts are separated by dots.
    if msg_id.is_empty()
        || msg_id.len() > 255
        || !msg_id.bytes().all(|b| b.is_ascii_graphic() && b != b'.')
    {
        return Err(
            "webhook-id: must be 1 to 255 printable ASCII characters without spaces or dots"
                .to_owned(),
        );
    }
    let timestamp = timestamp.to_string();
    let key = hmac::Key::new(hmac::HMAC_SHA256, &key);
    let mut signed = hmac::Context::with_key(&key);
    signed.update(msg_id.as_bytes());
    signed.update(b".");
    signed.update(timestamp.as_bytes());
    signed.update(b".");
    signed.update(body);
    let signature = STANDARD.encode(signed.sign().as_ref());
    Ok([
        ("webhook-id", msg_id.to_owned()),
        ("webhook-timestamp", timestamp),
        ("webhook-signature", format!("v1,{signature}")),
    ])
}

/// A new signing secret for a webhook integration made without one: `whsec_` and the base64
/// of 32 random bytes.
pub fn new_webhook_secret() -> String {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("the operating system's random source failed");
    format!("whsec_{}", STANDARD.encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::super::tests::{body, ctx, failed_data, header, job_failed};
    use super::super::{Kind, parse_config};
    use super::*;

    #[test]
    fn signatures_match_the_standard_webhooks_test_vector() {
        let headers = standard_webhooks_headers(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            br#"{"test": 2432232314}"#,
        )
        .expect("a valid secret");
        assert_eq!(
            headers,
            [
                ("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek".to_owned()),
                ("webhook-timestamp", "1614265330".to_owned()),
                (
                    "webhook-signature",
                    "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=".to_owned()
                ),
            ]
        );
    }

    #[test]
    fn the_signature_covers_the_id_the_time_and_the_body() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let sign = |id: &str, ts: i64, body: &[u8]| {
            standard_webhooks_headers(secret, id, ts, body).expect("valid")[2]
                .1
                .clone()
        };
        let base = sign("msg_1", 1, b"{}");
        assert_ne!(base, sign("msg_2", 1, b"{}"));
        assert_ne!(base, sign("msg_1", 2, b"{}"));
        assert_ne!(base, sign("msg_1", 1, b"{ }"));
    }

    #[test]
    fn bad_secrets_and_ids_are_refused() {
        let body = b"{}";
        for secret in [
            "",
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "whsec_!!!",
            "whsec_c2hvcnQ=",
        ] {
            let err = standard_webhooks_headers(secret, "msg_1", 1, body).expect_err(secret);
            assert!(err.starts_with("secret: "), "{err}");
        }
        let secret = new_webhook_secret();
        for id in ["", "a.b", "a b", "a\r\nb"] {
            let err = standard_webhooks_headers(&secret, id, 1, body).expect_err(id);
            assert!(err.starts_with("webhook-id: "), "{err}");
        }
    }

    #[test]
    fn new_secrets_are_32_random_bytes() {
        let a = new_webhook_secret();
        let b = new_webhook_secret();
        assert_ne!(a, b);
        assert!(a.starts_with("whsec_"));
        assert_eq!(webhook_key(&a).expect("decodes").len(), 32);
    }

    #[test]
    fn the_body_is_the_event_json() {
        let config = parse_config(
            Kind::Webhook,
            &json!({"url": "https://example.com/hook", "secret": new_webhook_secret()}),
        )
        .expect("valid");
        let data = failed_data();
        let requests = super::super::render(&config, &job_failed(&data), &ctx());
        assert_eq!(requests.len(), 1);
        let request = &requests[0];
        assert_eq!(request.url, "https://example.com/hook");
        assert_eq!(
            request.headers,
            [("content-type".to_owned(), "application/json".to_owned())]
        );
        assert_eq!(header(request, "content-type"), Some("application/json"));
        assert_eq!(
            body(request),
            json!({
                "id": "evt_1",
                "type": "job.failed",
                "time": "2026-11-27T08:30:00Z",
                "tenant_id": "ten_1",
                "subject": {"kind": "schedule", "id": "sch_1", "name": "nightly-backup"},
                "summary": "job job_1 of schedule nightly-backup failed on 1 of 3 agents",
                "data": {"job_id": "job_1", "script": "backup", "runs": 3, "succeeded": 2, "failed": 1, "duration_ms": 1500},
            })
        );
        // The signature the sender adds verifies over exactly these bytes.
        let secret = config.webhook_secret().expect("a secret");
        let headers =
            standard_webhooks_headers(secret, "evt_1", 1_800_000_000, &request.body).expect("ok");
        assert!(headers[2].1.starts_with("v1,"));
    }
}
