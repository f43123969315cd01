//! What an event becomes for each kind of integration (CONTRACT.md §11), and what a provider's answer
//! means for its delivery.
//!
//! Why a leaf of pure functions: the outbox worker owns sending, retries, the one-request-a-second
//! pacing, the SSRF guard and the records of attempts; the formats are the part each provider
//! documents and that a test can pin down exactly, so they live here with nothing else — no
//! database, no tasks, no I/O. The worker calls [`parse_config`] when an integration is saved
//! and before each delivery, [`render`] (or [`render_email`]) to get the requests, signs a
//! generic webhook's request with [`standard_webhooks_headers`] at each attempt, and asks
//! [`classify`] what the answer means.
//!
//! Each kind has its own file, citing the provider's page its format comes from:
//! [`webhook`] (Standard Webhooks), [`slack`], [`discord`], [`teams`], [`pagerduty`],
//! [`datadog`], [`splunk`], [`email`]; [`config`] validates and masks configs, [`answer`]
//! classifies answers, and [`text`] holds the clipping every provider's limits need.
//!
//! Everything an event carries (its summary, its data, names) may come from an agent, so it is
//! treated as hostile text: escaped where the provider parses markup (Slack), kept from pinging
//! anyone (Discord's `allowed_mentions`), clipped to the provider's limits with a note saying so,
//! and never allowed to break a header (email subjects are one line).
//!
//! URLs are parsed with `reqwest::Url` (the `url` crate) — the parser the SSRF guard and the
//! HTTP client use — so the URL validated here is the URL called.

pub mod answer;
pub mod config;
pub mod datadog;
pub mod discord;
pub mod email;
pub mod pagerduty;
pub mod slack;
pub mod splunk;
pub mod teams;
mod text;
pub mod webhook;

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde_json::Value;

pub use answer::{Outcome, classify};
pub use config::{Config, masked, parse_config, secret_fields};
pub use email::{Email, render_email};
pub use webhook::{event_json, new_webhook_secret, standard_webhooks_headers};

/// The kinds of integration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Any HTTP endpoint: the event JSON, signed as Standard Webhooks.
    Webhook,
    /// A Slack incoming webhook.
    Slack,
    /// A Discord channel webhook.
    Discord,
    /// A Microsoft Teams Workflows webhook.
    Teams,
    /// PagerDuty Events API v2.
    Pagerduty,
    /// Datadog metrics and events.
    Datadog,
    /// A Splunk HTTP Event Collector.
    Splunk,
    /// Email, when the server has SMTP.
    Email,
}

impl Kind {
    /// Every kind, in the order of CONTRACT.md §11's table.
    pub const ALL: [Kind; 8] = [
        Kind::Webhook,
        Kind::Slack,
        Kind::Discord,
        Kind::Teams,
        Kind::Pagerduty,
        Kind::Datadog,
        Kind::Splunk,
        Kind::Email,
    ];

    /// Its name in the API (`"pagerduty"`).
    pub fn as_str(&self) -> &'static str {
        match self {
            Kind::Webhook => "webhook",
            Kind::Slack => "slack",
            Kind::Discord => "discord",
            Kind::Teams => "teams",
            Kind::Pagerduty => "pagerduty",
            Kind::Datadog => "datadog",
            Kind::Splunk => "splunk",
            Kind::Email => "email",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Kind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Kind::ALL.iter().map(Kind::as_str).collect();
                format!(
                    "kind: unknown kind `{}`; one of {}",
                    text::clip(s, 64),
                    names.join(", ")
                )
            })
    }
}

/// What an event looks like to a provider (the caller converts its own rows to this).
#[derive(Debug, Clone, Copy)]
pub struct Event<'a> {
    /// The event's id (also the generic webhook's `webhook-id` unless the caller picks another).
    pub id: &'a str,
    /// Its type: `job.failed`, `agent.online`, …
    pub kind: &'a str,
    /// When it happened.
    pub time: DateTime<Utc>,
    /// Its tenant.
    pub tenant_id: &'a str,
    /// What it is about: `schedule`, `script`, `agent`, …
    pub subject_kind: &'a str,
    /// The subject's id.
    pub subject_id: &'a str,
    /// The subject's name.
    pub subject_name: &'a str,
    /// One line for people.
    pub summary: &'a str,
    /// What happened, by type (`job_id`, `runs`, `succeeded`, `failed`, `duration_ms`, …).
    pub data: &'a Value,
}

/// What the server knows that the event does not.
#[derive(Debug, Clone, Copy, Default)]
pub struct Context<'a> {
    /// The server's public URL, for links to `/ui/jobs/{id}` and the like; none without it.
    pub public_url: Option<&'a str>,
    /// The server's host name (Splunk's `host`).
    pub host: &'a str,
    /// The event is a `test` action's: chat messages say so, PagerDuty resolves what it
    /// triggered at once, Datadog gets an `info` event and no metrics.
    pub test: bool,
}

/// One HTTP request to send, always a POST.
///
/// The generic webhook's Standard Webhooks headers are not in it: they depend on the delivery
/// id and the attempt's time, so the sender adds them with [`standard_webhooks_headers`]. Nor
/// is `user-agent`, which is the sender's.
#[derive(Clone, PartialEq, Eq)]
pub struct Request {
    /// Where to (the caller applies the SSRF guard to it).
    pub url: String,
    /// Lower-case names; values checked when the config was parsed (no CR or LF).
    pub headers: Vec<(String, String)>,
    /// The body, JSON.
    pub body: Vec<u8>,
}

impl Request {
    fn json(url: String, headers: Vec<(String, String)>, body: &Value) -> Self {
        let mut all = vec![("content-type".to_owned(), "application/json".to_owned())];
        all.extend(headers);
        Self {
            url,
            headers: all,
            // Serialising a `Value` cannot fail: its map keys are strings.
            body: serde_json::to_vec(body).unwrap_or_default(),
        }
    }
}

/// Without the URL's path and query (a chat webhook's URL is its credential) or header values.
impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let origin = reqwest::Url::parse(&self.url)
            .map(|url| url.origin().ascii_serialization())
            .unwrap_or_else(|_| "?".to_owned());
        let names: Vec<&str> = self.headers.iter().map(|(name, _)| name.as_str()).collect();
        f.debug_struct("Request")
            .field("url", &format!("{origin}/…"))
            .field("headers", &names)
            .field("body_bytes", &self.body.len())
            .finish()
    }
}

/// The requests an event becomes for this integration, in the order to send them; empty when
/// the kind has nothing to say about the event (PagerDuty on a success that recovers nothing,
/// Datadog on an event without numbers) and for email, which is [`render_email`]'s.
pub fn render(config: &Config, event: &Event, ctx: &Context) -> Vec<Request> {
    use config::Target;
    match config.target() {
        Target::Webhook { url, .. } => vec![webhook::render(url, event)],
        Target::Slack { url } => vec![slack::render(url, event, ctx)],
        Target::Discord { url } => vec![discord::render(url, event, ctx)],
        Target::Teams { url } => vec![teams::render(url, event, ctx)],
        Target::Pagerduty { url, routing_key } => pagerduty::render(url, routing_key, event, ctx),
        Target::Datadog { base, api_key } => datadog::render(base, api_key, event, ctx),
        Target::Splunk { url, token } => vec![splunk::render(url, token, event, ctx)],
        Target::Email { .. } => Vec::new(),
    }
}

/// How an event type reads at a glance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    /// Something broke: a failed job, an agent gone, an update rolled back.
    Failure,
    /// Something did not happen as planned: missed or skipped fires.
    Warning,
    /// Something worked, or works again.
    Success,
    /// Anything else (a type this module does not know yet, a test).
    Info,
}

fn level(kind: &str) -> Level {
    match kind {
        "job.failed" | "agent.offline" | "agent.update_rolled_back" | "rollout.halted" => {
            Level::Failure
        }
        "schedule.missed" | "schedule.skipped" | "rollout.rolled_back" => Level::Warning,
        "job.succeeded" | "job.recovered" | "agent.online" | "agent.updated"
        | "rollout.completed" => Level::Success,
        _ => Level::Info,
    }
}

/// The event type's verb, for people: `agent.update_rolled_back` → `update rolled back`.
fn status(kind: &str) -> String {
    kind.rsplit_once('.')
        .map_or(kind, |(_, verb)| verb)
        .replace('_', " ")
}

/// The dashboard page of the event's subject, when the server's public URL is known: the job
/// for job events whose data names it, else the agent or schedule the event is about.
fn link(event: &Event, ctx: &Context) -> Option<String> {
    let base = ctx.public_url?.trim_end_matches('/');
    if base.is_empty() {
        return None;
    }
    let job = event
        .kind
        .starts_with("job.")
        .then(|| event.data.get("job_id").and_then(Value::as_str))
        .flatten();
    let (section, id) = match (job, event.subject_kind) {
        (Some(job_id), _) => ("jobs", job_id),
        (None, "agent") => ("agents", event.subject_id),
        (None, "schedule") => ("schedules", event.subject_id),
        (None, "job") => ("jobs", event.subject_id),
        _ => return None,
    };
    if id.is_empty() {
        return None;
    }
    Some(format!("{base}/ui/{section}/{}", text::path_segment(id)))
}

/// The summary on one line; what the event is when the summary is blank (providers refuse an
/// empty title).
fn headline(event: &Event) -> String {
    let line = text::one_line(event.summary);
    if !line.is_empty() {
        return line;
    }
    let what = text::one_line(&format!(
        "{} {}",
        text::clip(event.kind, 100),
        subject_line(event)
    ));
    if what.is_empty() {
        "Outpost event".to_owned()
    } else {
        what
    }
}

/// The subject as people read it: `schedule nightly-backup`, or its id when it has no name.
fn subject_line(event: &Event) -> String {
    let name = if event.subject_name.is_empty() {
        event.subject_id
    } else {
        event.subject_name
    };
    format!(
        "{} {}",
        text::clip(event.subject_kind, 64),
        text::clip(&text::one_line(name), 256)
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;
    use serde_json::json;

    /// The time of the test events: 2026-11-27T08:30:00Z.
    pub fn time() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 27, 8, 30, 0)
            .single()
            .expect("a valid time")
    }

    /// A job.failed event of the schedule `nightly-backup`, whose data is `data`.
    pub fn job_failed(data: &Value) -> Event<'_> {
        Event {
            id: "evt_1",
            kind: "job.failed",
            time: time(),
            tenant_id: "ten_1",
            subject_kind: "schedule",
            subject_id: "sch_1",
            subject_name: "nightly-backup",
            summary: "job job_1 of schedule nightly-backup failed on 1 of 3 agents",
            data,
        }
    }

    /// The data of [`job_failed`].
    pub fn failed_data() -> Value {
        json!({"job_id": "job_1", "script": "backup", "runs": 3, "succeeded": 2, "failed": 1, "duration_ms": 1500})
    }

    /// An agent event about `web-1`.
    pub fn agent_event<'a>(kind: &'a str, data: &'a Value) -> Event<'a> {
        Event {
            id: "evt_2",
            kind,
            time: time(),
            tenant_id: "ten_1",
            subject_kind: "agent",
            subject_id: "agt_1",
            subject_name: "web-1",
            summary: "agent web-1 is offline",
            data,
        }
    }

    pub(crate) fn ctx() -> Context<'static> {
        Context {
            public_url: Some("https://outpost.example.com/"),
            host: "outpost-1",
            test: false,
        }
    }

    /// The request's body as JSON.
    pub fn body(request: &Request) -> Value {
        serde_json::from_slice(&request.body).expect("a JSON body")
    }

    /// The request's header `name`.
    pub fn header<'a>(request: &'a Request, name: &str) -> Option<&'a str> {
        request
            .headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn kinds_round_trip_and_unknown_ones_are_named() {
        for kind in Kind::ALL {
            assert_eq!(kind.as_str().parse::<Kind>(), Ok(kind));
            assert_eq!(kind.to_string(), kind.as_str());
        }
        assert_eq!(
            "sms".parse::<Kind>(),
            Err(
                "kind: unknown kind `sms`; one of webhook, slack, discord, teams, pagerduty, \
                 datadog, splunk, email"
                    .to_owned()
            )
        );
        let long = "x".repeat(10_000);
        let err = long.parse::<Kind>().expect_err("unknown");
        assert!(err.len() < 300, "the echoed name is clipped: {err}");
    }

    #[test]
    fn links_go_to_the_job_the_agent_or_the_schedule() {
        let data = failed_data();
        let event = job_failed(&data);
        assert_eq!(
            link(&event, &ctx()).as_deref(),
            Some("https://outpost.example.com/ui/jobs/job_1")
        );
        let none = Value::Null;
        let agent = agent_event("agent.offline", &none);
        assert_eq!(
            link(&agent, &ctx()).as_deref(),
            Some("https://outpost.example.com/ui/agents/agt_1")
        );
        let schedule = Event {
            kind: "schedule.missed",
            ..job_failed(&data)
        };
        assert_eq!(
            link(&schedule, &ctx()).as_deref(),
            Some("https://outpost.example.com/ui/schedules/sch_1")
        );
        let odd = Event {
            subject_id: "a/../b c",
            ..agent
        };
        assert_eq!(
            link(&odd, &ctx()).as_deref(),
            Some("https://outpost.example.com/ui/agents/a%2F..%2Fb%20c")
        );
        let unknown_public_url = Context {
            public_url: None,
            ..ctx()
        };
        assert_eq!(link(&event, &unknown_public_url), None);
    }

    #[test]
    fn a_blank_summary_still_gives_every_provider_a_title() {
        let data = failed_data();
        let blank = Event {
            summary: " \n ",
            ..job_failed(&data)
        };
        assert_eq!(headline(&blank), "job.failed schedule nightly-backup");
        let nothing = Event {
            kind: "",
            subject_kind: "",
            subject_id: "",
            subject_name: "",
            ..blank
        };
        assert_eq!(headline(&nothing), "Outpost event");
        let titles = [
            (
                Kind::Slack,
                json!({"url": "https://hooks.slack.com/x"}),
                "/blocks/0/text/text",
            ),
            (
                Kind::Discord,
                json!({"url": "https://discord.com/x"}),
                "/embeds/0/title",
            ),
            (
                Kind::Teams,
                json!({"url": "https://x.logic.azure.com/x"}),
                "/attachments/0/content/body/0/text",
            ),
            (
                Kind::Pagerduty,
                json!({"routing_key": "k"}),
                "/payload/summary",
            ),
            (Kind::Datadog, json!({"api_key": "k"}), "/title"),
        ];
        for (kind, config, pointer) in titles {
            let config = parse_config(kind, &config).expect("valid");
            let requests = render(&config, &blank, &ctx());
            let sent = body(requests.last().expect("a request"));
            assert_eq!(
                sent.pointer(pointer),
                Some(&json!("job.failed schedule nightly-backup")),
                "{kind}: {sent}"
            );
        }
        let slack =
            parse_config(Kind::Slack, &json!({"url": "https://hooks.slack.com/x"})).expect("valid");
        let sent = body(&render(&slack, &blank, &ctx())[0]);
        assert_eq!(sent["blocks"][1]["type"], "section");
        assert!(
            sent["blocks"][1].get("fields").is_some(),
            "no empty summary section: {sent}"
        );
        let source = Event {
            subject_id: "",
            subject_name: "",
            ..blank
        };
        let pagerduty = parse_config(Kind::Pagerduty, &json!({"routing_key": "k"})).expect("valid");
        let sent = body(&render(&pagerduty, &source, &ctx())[0]);
        assert_eq!(sent["payload"]["source"], "outpost-1");
    }

    #[test]
    fn email_integrations_render_no_http_request() {
        let config = parse_config(Kind::Email, &json!({"to": "ops@example.com"})).expect("valid");
        let data = failed_data();
        assert!(render(&config, &job_failed(&data), &ctx()).is_empty());
    }

    /// Every kind's config, for the property tests.
    fn every_config() -> Vec<Config> {
        [
            (Kind::Webhook, json!({"url": "https://example.com/hook"})),
            (
                Kind::Slack,
                json!({"url": "https://hooks.slack.com/services/x"}),
            ),
            (
                Kind::Discord,
                json!({"url": "https://discord.com/api/webhooks/1/x"}),
            ),
            (
                Kind::Teams,
                json!({"url": "https://x.logic.azure.com/workflows/1"}),
            ),
            (Kind::Pagerduty, json!({"routing_key": "k"})),
            (Kind::Datadog, json!({"api_key": "k"})),
            (
                Kind::Splunk,
                json!({"url": "https://splunk:8088", "token": "t"}),
            ),
            (Kind::Email, json!({"to": "ops@example.com"})),
        ]
        .into_iter()
        .map(|(kind, config)| parse_config(kind, &config).expect("valid"))
        .collect()
    }

    fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            ".{0,40}".prop_map(Value::from),
        ];
        let key = prop_oneof![
            Just("job_id".to_owned()),
            Just("script".to_owned()),
            Just("runs".to_owned()),
            Just("succeeded".to_owned()),
            Just("failed".to_owned()),
            Just("duration_ms".to_owned()),
            Just("online".to_owned()),
            ".{0,12}",
        ];
        leaf.prop_recursive(3, 48, 8, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
                prop::collection::btree_map(key.clone(), inner, 0..8)
                    .prop_map(|map| Value::Object(map.into_iter().collect())),
            ]
        })
    }

    fn any_kind() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("job.failed".to_owned()),
            Just("job.succeeded".to_owned()),
            Just("job.recovered".to_owned()),
            Just("agent.online".to_owned()),
            Just("agent.offline".to_owned()),
            Just("agent.update_rolled_back".to_owned()),
            Just("schedule.missed".to_owned()),
            ".{0,20}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn render_never_panics_and_keeps_to_the_limits(
            kind in any_kind(),
            summary in "(?s).{0,400}",
            subject_kind in prop_oneof![Just("agent".to_owned()), Just("schedule".to_owned()), ".{0,10}"],
            subject_id in ".{0,40}",
            subject_name in ".{0,40}",
            id in ".{0,20}",
            tenant in ".{0,20}",
            millis in 0i64..4_102_444_800_000,
            data in any_json(),
            test in any::<bool>(),
            public_url in prop::option::of(Just("https://outpost.example.com")),
        ) {
            let time = DateTime::from_timestamp_millis(millis).unwrap_or_else(tests::time);
            let event = Event {
                id: &id, kind: &kind, time, tenant_id: &tenant, subject_kind: &subject_kind,
                subject_id: &subject_id, subject_name: &subject_name, summary: &summary, data: &data,
            };
            let ctx = Context { public_url, host: "h", test };
            for config in every_config() {
                for request in render(&config, &event, &ctx) {
                    let sent: Value = serde_json::from_slice(&request.body).expect("JSON");
                    if config.kind() == Kind::Teams {
                        prop_assert!(request.body.len() <= teams::BODY_MAX);
                    }
                    if config.kind() == Kind::Discord {
                        let chars = |v: &Value| v.as_str().map_or(0, |s| s.chars().count());
                        prop_assert!(chars(&sent["content"]) <= discord::CONTENT_MAX);
                        prop_assert!(chars(&sent["embeds"][0]["title"]) <= discord::TITLE_MAX);
                        prop_assert!(chars(&sent["embeds"][0]["description"]) <= discord::DESCRIPTION_MAX);
                    }
                    if config.kind() == Kind::Pagerduty {
                        prop_assert!(sent["dedup_key"].as_str().is_some_and(|k| k.len() <= 255));
                    }
                    for (name, value) in &request.headers {
                        prop_assert!(!name.contains(['\r', '\n']) && !value.contains(['\r', '\n']));
                    }
                }
                if let Some(email) = render_email(&config, &event, &ctx) {
                    prop_assert!(!email.subject.contains(['\r', '\n']));
                    prop_assert!(email.subject.chars().count() <= email::SUBJECT_MAX);
                }
            }
        }

        #[test]
        fn classify_never_panics(
            kind in prop::sample::select(Kind::ALL.to_vec()),
            status in any::<u16>(),
            headers in prop::collection::vec((".{0,12}", ".{0,40}"), 0..4),
            retry_after in prop::option::of(".{0,40}"),
            body in prop::collection::vec(any::<u8>(), 0..200),
            json_body in prop::option::of(any::<f64>()),
        ) {
            let mut headers = headers;
            if let Some(value) = retry_after {
                headers.push(("retry-after".to_owned(), value));
            }
            let body = match json_body {
                Some(n) => format!("{{\"retry_after\": {n}}}").into_bytes(),
                None => body,
            };
            match classify(kind, status, &headers, &body, tests::time()) {
                Outcome::Retry { after: Some(after) } => prop_assert!(after <= answer::MAX_RETRY_AFTER),
                Outcome::Delivered => prop_assert!((200..300).contains(&status)),
                _ => {}
            }
        }

        #[test]
        fn signing_never_panics(secret in ".{0,80}", id in ".{0,40}", timestamp in any::<i64>(), body in prop::collection::vec(any::<u8>(), 0..100)) {
            let _ = standard_webhooks_headers(&secret, &id, timestamp, &body);
            let _ = standard_webhooks_headers(&format!("whsec_{secret}"), &id, timestamp, &body);
        }

        #[test]
        fn parse_config_never_panics_and_masks_what_it_takes(config in any_json(), kind in prop::sample::select(Kind::ALL.to_vec())) {
            let _ = parse_config(kind, &config);
            let shown = masked(kind, &config);
            for field in secret_fields(kind) {
                if let Some(value) = shown.get(*field) {
                    prop_assert!(value.is_null() || value == &json!(config::MASK));
                }
            }
        }
    }

    #[test]
    fn a_request_shows_neither_its_path_nor_its_header_values() {
        let config = parse_config(
            Kind::Slack,
            &json!({"url": "https://hooks.slack.com/services/T0/B0/SECRETSECRET"}),
        )
        .expect("valid");
        let data = failed_data();
        let requests = render(&config, &job_failed(&data), &ctx());
        let shown = format!("{requests:?}");
        assert!(shown.contains("https://hooks.slack.com/…"), "{shown}");
        assert!(!shown.contains("SECRET"), "{shown}");
    }
}
