//! What a provider's answer means for the delivery: delivered, retry (and when), or refused.
//!
//! The rule is the same for every provider, because they agree on it: 2xx is delivered
//! (PagerDuty and Teams answer 202); 429 means "too fast" and says how long to wait in
//! `Retry-After` (RFC 9110 §10.2.3: seconds or an HTTP date; Slack, PagerDuty, Datadog) or, for
//! Discord, in the JSON body's `retry_after` (seconds, possibly fractional — its unit has been
//! reported as milliseconds too, so a value over 1000 is taken as milliseconds); 408, 425 and
//! 5xx are worth retrying, with `Retry-After` when given (a 503 often has one); anything else —
//! a 4xx, or a 3xx, since redirects are not followed — is refused: a wrong URL, token or payload
//! does not get better by sending it again.
//!
//! A wait asked for is capped at an hour: longer would outlast most of the worker's retry
//! window, and is likelier a broken header than a wish.

use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use serde_json::Value;

use super::Kind;

/// The longest wait honoured.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// Bodies longer than this are not parsed for Discord's `retry_after` (its are tiny).
const MAX_PARSED_BODY: usize = 64 * 1024;

/// What a provider's answer means for the delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The provider took it.
    Delivered,
    /// Try again: after this long when the provider said, else on the worker's backoff.
    Retry {
        /// How long the provider asked to wait, at most [`MAX_RETRY_AFTER`].
        after: Option<Duration>,
    },
    /// The provider will not take it; retrying will not change that.
    Refused,
}

/// What the answer `status`, with its `headers` and `body`, received at `now`, means.
pub fn classify(
    kind: Kind,
    status: u16,
    headers: &[(String, String)],
    body: &[u8],
    now: DateTime<Utc>,
) -> Outcome {
    match status {
        200..=299 => Outcome::Delivered,
        429 => Outcome::Retry {
            after: retry_after(headers, now).or_else(|| match kind {
                Kind::Discord => discord_retry_after(body),
                _ => None,
            }),
        },
        408 | 425 | 500..=599 => Outcome::Retry {
            after: retry_after(headers, now),
        },
        _ => Outcome::Refused,
    }
}

/// The `Retry-After` header: delay-seconds (a fraction tolerated) or an HTTP date, which is
/// relative to `now` (a past date means now).
fn retry_after(headers: &[(String, String)], now: DateTime<Utc>) -> Option<Duration> {
    let value = headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("retry-after"))
        .map(|(_, value)| value.trim())?;
    if let Ok(seconds) = value.parse::<f64>() {
        return seconds_to_wait(seconds);
    }
    let at = http_date(value)?;
    let wait = (at - now).to_std().unwrap_or(Duration::ZERO);
    Some(wait.min(MAX_RETRY_AFTER))
}

/// An HTTP date in any of the three forms RFC 9110 §5.6.7 says a recipient accepts.
fn http_date(value: &str) -> Option<DateTime<Utc>> {
    if let Ok(at) = DateTime::parse_from_rfc2822(value) {
        return Some(at.with_timezone(&Utc));
    }
    // RFC 850 (`Sunday, 06-Nov-94 08:49:37 GMT`) and asctime (`Sun Nov  6 08:49:37 1994`).
    ["%A, %d-%b-%y %H:%M:%S GMT", "%a %b %e %H:%M:%S %Y"]
        .iter()
        .find_map(|format| NaiveDateTime::parse_from_str(value, format).ok())
        .map(|naive| naive.and_utc())
}

/// Discord's `{"retry_after": 1.5, …}`; over 1000 taken as milliseconds.
fn discord_retry_after(body: &[u8]) -> Option<Duration> {
    if body.len() > MAX_PARSED_BODY {
        return None;
    }
    let value: Value = serde_json::from_slice(body).ok()?;
    let seconds = value.get("retry_after")?.as_f64()?;
    seconds_to_wait(if seconds > 1000.0 {
        seconds / 1000.0
    } else {
        seconds
    })
}

/// A wait in seconds from a provider, when it is one: finite and not negative; capped.
fn seconds_to_wait(seconds: f64) -> Option<Duration> {
    if !seconds.is_finite() || seconds < 0.0 {
        return None;
    }
    Some(Duration::from_secs_f64(
        seconds.min(MAX_RETRY_AFTER.as_secs_f64()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2015, 10, 21, 7, 28, 0)
            .single()
            .expect("a valid time")
    }

    fn headers(retry_after: &str) -> Vec<(String, String)> {
        vec![("Retry-After".to_owned(), retry_after.to_owned())]
    }

    fn retry(after: Option<u64>) -> Outcome {
        Outcome::Retry {
            after: after.map(Duration::from_secs),
        }
    }

    #[test]
    fn success_is_delivered_whatever_the_provider() {
        for kind in Kind::ALL {
            for status in [200, 201, 202, 204] {
                assert_eq!(classify(kind, status, &[], b"", now()), Outcome::Delivered);
            }
        }
    }

    #[test]
    fn client_errors_are_refused() {
        for status in [301, 302, 400, 401, 403, 404, 410, 413, 422] {
            assert_eq!(
                classify(Kind::Slack, status, &[], b"", now()),
                Outcome::Refused,
                "{status}"
            );
        }
    }

    #[test]
    fn timeouts_early_data_and_server_errors_are_retried() {
        for status in [408, 425, 500, 502, 503, 504] {
            assert_eq!(
                classify(Kind::Webhook, status, &[], b"", now()),
                retry(None),
                "{status}"
            );
        }
        assert_eq!(
            classify(Kind::Splunk, 503, &headers("30"), b"", now()),
            retry(Some(30))
        );
    }

    #[test]
    fn too_many_requests_waits_as_told() {
        assert_eq!(
            classify(Kind::Slack, 429, &headers("7"), b"", now()),
            retry(Some(7))
        );
        assert_eq!(classify(Kind::Slack, 429, &[], b"", now()), retry(None));
        // An HTTP date, 90 s after now; one in the past means now.
        assert_eq!(
            classify(
                Kind::Pagerduty,
                429,
                &headers("Wed, 21 Oct 2015 07:29:30 GMT"),
                b"",
                now()
            ),
            retry(Some(90))
        );
        assert_eq!(
            classify(
                Kind::Datadog,
                429,
                &headers("Wed, 21 Oct 2015 07:00:00 GMT"),
                b"",
                now()
            ),
            retry(Some(0))
        );
        assert_eq!(
            classify(
                Kind::Webhook,
                429,
                &headers("Wednesday, 21-Oct-15 07:28:10 GMT"),
                b"",
                now()
            ),
            retry(Some(10))
        );
        assert_eq!(
            classify(
                Kind::Webhook,
                429,
                &headers("Wed Oct 21 07:28:05 2015"),
                b"",
                now()
            ),
            retry(Some(5))
        );
        let lower = vec![("retry-after".to_owned(), " 3 ".to_owned())];
        assert_eq!(
            classify(Kind::Teams, 429, &lower, b"", now()),
            retry(Some(3))
        );
    }

    #[test]
    fn nonsense_waits_are_ignored_and_long_ones_capped() {
        for value in ["soon", "-5", "NaN", "inf", ""] {
            assert_eq!(
                classify(Kind::Slack, 429, &headers(value), b"", now()),
                retry(None),
                "{value}"
            );
        }
        assert_eq!(
            classify(Kind::Slack, 429, &headers("999999999999"), b"", now()),
            Outcome::Retry {
                after: Some(MAX_RETRY_AFTER)
            }
        );
        assert_eq!(
            classify(
                Kind::Slack,
                429,
                &headers("Fri, 31 Dec 9999 23:59:59 GMT"),
                b"",
                now()
            ),
            Outcome::Retry {
                after: Some(MAX_RETRY_AFTER)
            }
        );
    }

    #[test]
    fn discord_says_when_in_its_body_in_seconds_or_milliseconds() {
        let seconds =
            br#"{"message": "You are being rate limited.", "retry_after": 1.5, "global": false}"#;
        assert_eq!(
            classify(Kind::Discord, 429, &[], seconds, now()),
            Outcome::Retry {
                after: Some(Duration::from_millis(1500))
            }
        );
        let millis =
            br#"{"message": "You are being rate limited.", "retry_after": 1500, "global": false}"#;
        assert_eq!(
            classify(Kind::Discord, 429, &[], millis, now()),
            Outcome::Retry {
                after: Some(Duration::from_millis(1500))
            }
        );
        // The header, when there is one, comes first.
        assert_eq!(
            classify(Kind::Discord, 429, &headers("2"), seconds, now()),
            retry(Some(2))
        );
        // Only Discord's body is read that way; a broken body is no wait.
        assert_eq!(classify(Kind::Slack, 429, &[], seconds, now()), retry(None));
        assert_eq!(
            classify(Kind::Discord, 429, &[], b"<html>", now()),
            retry(None)
        );
        assert_eq!(
            classify(Kind::Discord, 429, &[], br#"{"retry_after": -1}"#, now()),
            retry(None)
        );
    }
}
