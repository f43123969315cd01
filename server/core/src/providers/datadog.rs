//! Datadog: metrics for jobs and agents, and an event for each failure.
//!
//! Formats: "Submit metrics" <https://docs.datadoghq.com/api/latest/metrics/submit-metrics/>
//! (`POST {api}/api/v2/series`, header `DD-API-KEY`, `{"series":[{"metric", "type", "points":
//! [{"timestamp", "value"}], "tags"}]}`, `type` 1 = count and 3 = gauge, points at most 10
//! minutes ahead or an hour behind, 512 KB a payload) and "Post an event"
//! <https://docs.datadoghq.com/api/latest/events/post-an-event/> (`POST {api}/api/v1/events`,
//! `{title, text, alert_type, tags, aggregation_key, date_happened}`, text at most 4000
//! characters, `aggregation_key` at most 100). Tags follow "Getting started with tags"
//! <https://docs.datadoghq.com/getting_started/tagging/#define-tags>: lower case; letters,
//! digits, `_ - : . /` (anything else becomes `_`); at most 200 characters; not ending in `:`.
//!
//! Metrics: a job event whose data has run counts (`succeeded`, `failed`, `timed_out`, `lost`,
//! `expired`, `cancelled`; or only `runs`, counted under the event's own status) gives
//! `outpost.job.runs` (a count, one series per status); `duration_ms` gives
//! `outpost.job.duration` (a gauge, in seconds); `agent.online` and `agent.offline` with
//! `data.online` give `outpost.agents.online` (a gauge). Tags: `tenant`, the subject
//! (`schedule:nightly-backup`), `script` when the data names it. Events: `job.failed`,
//! `agent.offline` and `agent.update_rolled_back` as `error`, `schedule.missed` and
//! `schedule.skipped` as `warning`, grouped per subject by `aggregation_key`. A `test` event
//! posts one `info` event and no metrics, so a test does not skew the graphs.
//!
//! Points are stamped with the event's time: a delivery retried more than an hour late is
//! accepted (202) and its points dropped by Datadog. That is Datadog's rule, not a failure.

use serde_json::{Map, Value, json};

use super::text::{capped_key, clip};
use super::{Context, Event, Level, Request, headline, level, link, subject_line};

/// Datadog's `type` for a count.
const COUNT: u8 = 1;
/// Datadog's `type` for a gauge.
const GAUGE: u8 = 3;
/// An event's text limit.
pub const TEXT_MAX: usize = 4000;
/// An event's title limit (Datadog's event explorer shows about this much).
pub const TITLE_MAX: usize = 100;
/// `aggregation_key`'s limit.
pub const AGGREGATION_KEY_MAX: usize = 100;
/// A tag's limit.
pub const TAG_MAX: usize = 200;
/// Run statuses counted in a job event's data.
const RUN_STATUSES: [&str; 6] = [
    "succeeded",
    "failed",
    "timed_out",
    "lost",
    "expired",
    "cancelled",
];

/// `{base}/api/v2/series`.
pub(super) fn series_url(base: &str) -> String {
    format!("{base}/api/v2/series")
}

/// `{base}/api/v1/events`.
pub(super) fn events_url(base: &str) -> String {
    format!("{base}/api/v1/events")
}

pub(super) fn render(base: &str, api_key: &str, event: &Event, ctx: &Context) -> Vec<Request> {
    let headers = || vec![("dd-api-key".to_owned(), api_key.to_owned())];
    let mut requests = Vec::new();
    if ctx.test {
        requests.push(Request::json(
            events_url(base),
            headers(),
            &datadog_event(event, ctx, "info"),
        ));
        return requests;
    }
    let series = series(event);
    if !series.is_empty() {
        requests.push(Request::json(
            series_url(base),
            headers(),
            &json!({"series": series}),
        ));
    }
    let alert_type = match level(event.kind) {
        Level::Failure => Some("error"),
        Level::Warning => Some("warning"),
        Level::Success | Level::Info => None,
    };
    if let Some(alert_type) = alert_type {
        requests.push(Request::json(
            events_url(base),
            headers(),
            &datadog_event(event, ctx, alert_type),
        ));
    }
    requests
}

/// The tags every metric and event of `event` carries.
fn tags(event: &Event) -> Vec<String> {
    let name = if event.subject_name.is_empty() {
        event.subject_id
    } else {
        event.subject_name
    };
    // The subject's kind names its tag, when it can (a tag starts with a letter).
    let key = sanitize(event.subject_kind);
    let key = if key.starts_with(|c: char| c.is_alphabetic()) && !key.contains(':') {
        key
    } else {
        "subject".to_owned()
    };
    let mut tags: Vec<String> = [
        tag("tenant", event.tenant_id),
        tag(&key, name),
        event
            .data
            .get("script")
            .and_then(Value::as_str)
            .filter(|_| event.subject_kind != "script")
            .and_then(|script| tag("script", script)),
    ]
    .into_iter()
    .flatten()
    .collect();
    tags.dedup();
    tags
}

fn series(event: &Event) -> Vec<Value> {
    let time = event.time.timestamp();
    let number = |field: &str| event.data.get(field).and_then(Value::as_f64);
    let point = |value: f64| json!([{"timestamp": time, "value": value}]);
    let mut series = Vec::new();
    if event.kind.starts_with("job.") {
        let mut counts: Vec<(&str, f64)> = RUN_STATUSES
            .iter()
            .filter_map(|status| number(status).map(|n| (*status, n)))
            .collect();
        if counts.is_empty()
            && let Some(runs) = number("runs")
        {
            let status = match event.kind {
                "job.failed" => "failed",
                _ => "succeeded",
            };
            counts.push((status, runs));
        }
        for (status, count) in counts {
            let mut tags = tags(event);
            tags.extend(tag("status", status));
            series.push(json!({
                "metric": "outpost.job.runs",
                "type": COUNT,
                "points": point(count),
                "tags": tags,
            }));
        }
        if let Some(ms) = number("duration_ms") {
            series.push(json!({
                "metric": "outpost.job.duration",
                "type": GAUGE,
                "points": point(ms / 1000.0),
                "tags": tags(event),
            }));
        }
    }
    if matches!(event.kind, "agent.online" | "agent.offline")
        && let Some(online) = number("online")
    {
        series.push(json!({
            "metric": "outpost.agents.online",
            "type": GAUGE,
            "points": point(online),
            "tags": tag("tenant", event.tenant_id).into_iter().collect::<Vec<_>>(),
        }));
    }
    series
}

fn datadog_event(event: &Event, ctx: &Context, alert_type: &str) -> Value {
    let test = if ctx.test { "[test] " } else { "" };
    let mut text = format!(
        "{}\n\nEvent: {} ({})\nSubject: {}\nTime: {}",
        event.summary,
        clip(event.kind, 100),
        clip(event.id, 128),
        subject_line(event),
        event
            .time
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    );
    if let Some(url) = link(event, ctx) {
        // The link goes first when the summary is long, so that clipping keeps it.
        text = format!("{url}\n\n{text}");
    }
    let mut tags = tags(event);
    tags.extend(tag("event", event.kind));
    let mut body = Map::new();
    body.insert(
        "title".to_owned(),
        json!(clip(&format!("{test}{}", headline(event)), TITLE_MAX)),
    );
    body.insert("text".to_owned(), json!(clip(&text, TEXT_MAX)));
    body.insert("alert_type".to_owned(), json!(alert_type));
    body.insert("date_happened".to_owned(), json!(event.time.timestamp()));
    body.insert("tags".to_owned(), json!(tags));
    body.insert(
        "aggregation_key".to_owned(),
        json!(capped_key(
            &format!(
                "outpost:{}:{}:{}",
                event.tenant_id, event.subject_kind, event.subject_id
            ),
            AGGREGATION_KEY_MAX
        )),
    );
    Value::Object(body)
}

/// `key:value`, sanitised to Datadog's tag rules; `None` when the value is empty.
fn tag(key: &str, value: &str) -> Option<String> {
    let value = sanitize(value);
    if value.is_empty() {
        return None;
    }
    let mut tag = format!("{key}:{value}");
    if let Some((at, _)) = tag.char_indices().nth(TAG_MAX) {
        tag.truncate(at);
    }
    while tag.ends_with(':') {
        tag.pop();
        tag.push('_');
    }
    Some(tag)
}

/// Lower case, only letters, digits and `_ - : . /`, no runs of `_`, no `_` at either end.
fn sanitize(value: &str) -> String {
    let mut out = String::with_capacity(value.len().min(TAG_MAX * 4));
    for c in value.chars().flat_map(char::to_lowercase) {
        let c = if c.is_alphanumeric() || matches!(c, '_' | '-' | ':' | '.' | '/') {
            c
        } else {
            '_'
        };
        if c == '_' && (out.is_empty() || out.ends_with('_')) {
            continue;
        }
        out.push(c);
        if out.len() > TAG_MAX * 4 {
            break;
        }
    }
    while out.ends_with('_') {
        out.pop();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::tests::{agent_event, body, ctx, failed_data, header, job_failed};
    use super::super::{Kind, parse_config, render};
    use super::*;

    fn config() -> super::super::Config {
        parse_config(
            Kind::Datadog,
            &json!({"api_key": "DDKEY", "site": "datadoghq.eu"}),
        )
        .expect("valid")
    }

    #[test]
    fn a_failed_job_posts_its_runs_its_duration_and_an_error_event() {
        let data = failed_data();
        let requests = render(&config(), &job_failed(&data), &ctx());
        assert_eq!(requests.len(), 2);
        let (series, event) = (&requests[0], &requests[1]);
        assert_eq!(series.url, "https://api.datadoghq.eu/api/v2/series");
        assert_eq!(
            series.headers,
            [
                ("content-type".to_owned(), "application/json".to_owned()),
                ("dd-api-key".to_owned(), "DDKEY".to_owned()),
            ]
        );
        let tags = json!(["tenant:ten_1", "schedule:nightly-backup", "script:backup"]);
        assert_eq!(
            body(series),
            json!({"series": [
                {"metric": "outpost.job.runs", "type": 1, "points": [{"timestamp": 1795768200, "value": 2.0}],
                 "tags": ["tenant:ten_1", "schedule:nightly-backup", "script:backup", "status:succeeded"]},
                {"metric": "outpost.job.runs", "type": 1, "points": [{"timestamp": 1795768200, "value": 1.0}],
                 "tags": ["tenant:ten_1", "schedule:nightly-backup", "script:backup", "status:failed"]},
                {"metric": "outpost.job.duration", "type": 3, "points": [{"timestamp": 1795768200, "value": 1.5}],
                 "tags": tags},
            ]})
        );
        assert_eq!(event.url, "https://api.datadoghq.eu/api/v1/events");
        assert_eq!(header(event, "dd-api-key"), Some("DDKEY"));
        assert_eq!(
            body(event),
            json!({
                "title": "job job_1 of schedule nightly-backup failed on 1 of 3 agents",
                "text": "https://outpost.example.com/ui/jobs/job_1\n\n\
                         job job_1 of schedule nightly-backup failed on 1 of 3 agents\n\n\
                         Event: job.failed (evt_1)\nSubject: schedule nightly-backup\n\
                         Time: 2026-11-27T08:30:00Z",
                "alert_type": "error",
                "date_happened": 1795768200,
                "tags": ["tenant:ten_1", "schedule:nightly-backup", "script:backup", "event:job.failed"],
                "aggregation_key": "outpost:ten_1:schedule:sch_1",
            })
        );
    }

    #[test]
    fn a_recovery_posts_metrics_only() {
        let data = json!({"job_id": "job_2", "runs": 3, "duration_ms": 900});
        let event = Event {
            kind: "job.recovered",
            ..job_failed(&data)
        };
        let requests = render(&config(), &event, &ctx());
        assert_eq!(requests.len(), 1);
        let series = body(&requests[0]);
        assert_eq!(series["series"][0]["metric"], "outpost.job.runs");
        assert_eq!(series["series"][0]["points"][0]["value"], 3.0);
        assert_eq!(
            series["series"][0]["tags"],
            json!([
                "tenant:ten_1",
                "schedule:nightly-backup",
                "status:succeeded"
            ])
        );
        assert_eq!(series["series"][1]["metric"], "outpost.job.duration");
        assert_eq!(series["series"][1]["points"][0]["value"], 0.9);
    }

    #[test]
    fn agents_post_the_online_gauge_and_an_event_when_offline() {
        let data = json!({"online": 41});
        let offline = render(&config(), &agent_event("agent.offline", &data), &ctx());
        assert_eq!(offline.len(), 2);
        assert_eq!(
            body(&offline[0]),
            json!({"series": [{"metric": "outpost.agents.online", "type": 3,
                "points": [{"timestamp": 1795768200, "value": 41.0}], "tags": ["tenant:ten_1"]}]})
        );
        let event = body(&offline[1]);
        assert_eq!(event["alert_type"], "error");
        assert_eq!(
            event["tags"],
            json!(["tenant:ten_1", "agent:web-1", "event:agent.offline"])
        );
        assert_eq!(event["aggregation_key"], "outpost:ten_1:agent:agt_1");
        let online = render(&config(), &agent_event("agent.online", &data), &ctx());
        assert_eq!(online.len(), 1);
        assert_eq!(online[0].url, "https://api.datadoghq.eu/api/v2/series");
        // Without numbers, an online agent has nothing to say.
        let none = Value::Null;
        assert!(render(&config(), &agent_event("agent.online", &none), &ctx()).is_empty());
    }

    #[test]
    fn missed_fires_are_warning_events() {
        let data = json!({"missed": 3});
        let event = Event {
            kind: "schedule.missed",
            ..job_failed(&data)
        };
        let requests = render(&config(), &event, &ctx());
        assert_eq!(requests.len(), 1);
        assert_eq!(body(&requests[0])["alert_type"], "warning");
    }

    #[test]
    fn a_test_posts_one_info_event_and_no_metrics() {
        let data = failed_data();
        let test = Context {
            test: true,
            ..ctx()
        };
        let requests = render(&config(), &job_failed(&data), &test);
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].url, "https://api.datadoghq.eu/api/v1/events");
        let event = body(&requests[0]);
        assert_eq!(event["alert_type"], "info");
        assert!(
            event["title"]
                .as_str()
                .is_some_and(|t| t.starts_with("[test] "))
        );
    }

    #[test]
    fn tags_keep_to_datadogs_rules() {
        assert_eq!(
            tag("script", "Backup DB (nightly)!").as_deref(),
            Some("script:backup_db_nightly")
        );
        assert_eq!(
            tag("schedule", "über/ops.v2-x").as_deref(),
            Some("schedule:über/ops.v2-x")
        );
        assert_eq!(tag("script", "ends:").as_deref(), Some("script:ends_"));
        assert_eq!(tag("script", "  ").as_deref(), None);
        let long = tag("script", &"a".repeat(500)).expect("a tag");
        assert_eq!(long.chars().count(), TAG_MAX);
        let data = json!({});
        let event = Event {
            subject_kind: "Odd Kind",
            subject_name: "",
            ..job_failed(&data)
        };
        assert_eq!(tags(&event), ["tenant:ten_1", "odd_kind:sch_1"]);
        let event = Event {
            subject_kind: "9:x",
            ..event
        };
        assert_eq!(tags(&event), ["tenant:ten_1", "subject:sch_1"]);
    }

    #[test]
    fn long_text_is_clipped_to_datadogs_limits() {
        let data = json!({});
        let summary = "x".repeat(10_000);
        let long_id = "i".repeat(300);
        let event = Event {
            summary: &summary,
            subject_id: &long_id,
            ..job_failed(&data)
        };
        let event = body(&render(&config(), &event, &ctx())[0]);
        let chars = |v: &Value| v.as_str().map_or(0, |s| s.chars().count());
        assert_eq!(chars(&event["title"]), TITLE_MAX);
        assert_eq!(chars(&event["text"]), TEXT_MAX);
        assert!(
            event["text"]
                .as_str()
                .is_some_and(|t| t.starts_with("https://"))
        );
        assert_eq!(chars(&event["aggregation_key"]), AGGREGATION_KEY_MAX);
    }
}
