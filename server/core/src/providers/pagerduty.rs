//! PagerDuty Events API v2: an alert triggered on a failure, resolved on its recovery.
//!
//! Format: "Send Alert Event" in PagerDuty's developer documentation
//! (<https://developer.pagerduty.com/docs/events-api-v2/trigger-events/> and
//! `…/resolve-events/`): `POST https://events.pagerduty.com/v2/enqueue` with `routing_key`,
//! `event_action` (`trigger` or `resolve`) and `dedup_key` (at most 255 characters); a trigger
//! also carries `payload` — `summary` (at most 1024 characters), `source`, `severity`
//! (`critical`, `error`, `warning` or `info`), `timestamp`, `component`, `group`, `class`,
//! `custom_details` — and optionally `links`, `client` and `client_url`. A resolve needs only
//! the first three. PagerDuty answers 202 and takes at most 512 KB per event.
//!
//! One alert per subject: `dedup_key` is `outpost:<tenant>:<subject kind>:<subject id>` (CONTRACT.md
//! §11), so repeated failures of a schedule update one alert and its `job.recovered` resolves
//! it; `agent.online` resolves `agent.offline`'s. A key over 255 bytes keeps a prefix and the
//! SHA-256 of the whole, so it stays the same for the same subject. Triggers: `job.failed`
//! (`error`), `agent.offline` (`critical`: a host is gone), `agent.update_rolled_back`
//! (`error`), `schedule.missed` and `schedule.skipped` (`warning`). Resolves: `job.recovered`,
//! `agent.online`. Every other event sends nothing. A `test` event triggers an `info` alert
//! under a key of its own and resolves it at once, so a test pages nobody for long and leaves
//! nothing open.

use serde_json::{Value, json};

use super::text::{capped_key, clip, clip_bytes, one_line};
use super::{Context, Event, Request, headline, link, subject_line};

/// `payload.summary`'s limit.
pub const SUMMARY_MAX: usize = 1024;
/// `dedup_key`'s limit.
pub const DEDUP_KEY_MAX: usize = 255;
/// The most bytes of event data put in `custom_details` (PagerDuty takes 512 KB per event).
const DETAILS_MAX: usize = 256 * 1024;

/// What an event type does to the subject's alert.
enum Action {
    Trigger(&'static str),
    Resolve,
}

fn action(kind: &str) -> Option<Action> {
    match kind {
        "job.failed" | "agent.update_rolled_back" | "rollout.halted" => {
            Some(Action::Trigger("error"))
        }
        "agent.offline" => Some(Action::Trigger("critical")),
        "schedule.missed" | "schedule.skipped" => Some(Action::Trigger("warning")),
        "job.recovered" | "agent.online" | "rollout.completed" | "rollout.rolled_back" => {
            Some(Action::Resolve)
        }
        _ => None,
    }
}

/// The alert's key: `outpost:<tenant>:<subject kind>:<subject id>`, at most 255 bytes.
pub fn dedup_key(event: &Event) -> String {
    capped_key(
        &format!(
            "outpost:{}:{}:{}",
            event.tenant_id, event.subject_kind, event.subject_id
        ),
        DEDUP_KEY_MAX,
    )
}

pub(super) fn render(url: &str, routing_key: &str, event: &Event, ctx: &Context) -> Vec<Request> {
    if ctx.test {
        let key = capped_key(
            &format!("outpost:{}:test:{}", event.tenant_id, event.id),
            DEDUP_KEY_MAX,
        );
        return vec![
            request(url, &trigger(routing_key, &key, "info", event, ctx)),
            request(url, &resolve(routing_key, &key)),
        ];
    }
    let key = dedup_key(event);
    match action(event.kind) {
        Some(Action::Trigger(severity)) => {
            vec![request(
                url,
                &trigger(routing_key, &key, severity, event, ctx),
            )]
        }
        Some(Action::Resolve) => vec![request(url, &resolve(routing_key, &key))],
        None => Vec::new(),
    }
}

fn request(url: &str, body: &Value) -> Request {
    Request::json(url.to_owned(), Vec::new(), body)
}

fn trigger(routing_key: &str, key: &str, severity: &str, event: &Event, ctx: &Context) -> Value {
    let test = if ctx.test { "[test] " } else { "" };
    // PagerDuty requires a source: the subject, else this server.
    let source = [event.subject_name, event.subject_id, ctx.host]
        .into_iter()
        .map(one_line)
        .find(|s| !s.is_empty())
        .unwrap_or_else(|| "outpost".to_owned());
    let data = match serde_json::to_string(event.data) {
        Ok(text) if text.len() > DETAILS_MAX => {
            Value::String(clip_bytes(&text, DETAILS_MAX).into())
        }
        _ => event.data.clone(),
    };
    let link = link(event, ctx);
    let mut body = json!({
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": key,
        "payload": {
            "summary": clip(&format!("{test}{}", headline(event)), SUMMARY_MAX),
            "source": clip(&source, 255),
            "severity": severity,
            "timestamp": event.time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "component": clip(event.subject_kind, 255),
            "group": clip(event.tenant_id, 255),
            "class": clip(event.kind, 255),
            "custom_details": {
                "event_id": event.id,
                "subject": subject_line(event),
                "summary": clip_bytes(event.summary, 64 * 1024),
                "data": data,
            },
        },
        "client": "Outpost",
    });
    if let Some(url) = link {
        body["client_url"] = json!(url);
        body["links"] = json!([{"href": url, "text": "Open in Outpost"}]);
    }
    body
}

fn resolve(routing_key: &str, key: &str) -> Value {
    json!({"routing_key": routing_key, "event_action": "resolve", "dedup_key": key})
}

#[cfg(test)]
mod tests {
    use super::super::tests::{agent_event, body, ctx, failed_data, header, job_failed};
    use super::super::{Kind, parse_config, render};
    use super::*;

    fn config() -> super::super::Config {
        parse_config(Kind::Pagerduty, &json!({"routing_key": "R0UT1NGKEY"})).expect("valid")
    }

    #[test]
    fn a_failed_job_triggers_an_error_alert() {
        let data = failed_data();
        let requests = render(&config(), &job_failed(&data), &ctx());
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].url, "https://events.pagerduty.com/v2/enqueue");
        assert_eq!(
            header(&requests[0], "content-type"),
            Some("application/json")
        );
        assert_eq!(
            body(&requests[0]),
            json!({
                "routing_key": "R0UT1NGKEY",
                "event_action": "trigger",
                "dedup_key": "outpost:ten_1:schedule:sch_1",
                "payload": {
                    "summary": "job job_1 of schedule nightly-backup failed on 1 of 3 agents",
                    "source": "nightly-backup",
                    "severity": "error",
                    "timestamp": "2026-11-27T08:30:00.000Z",
                    "component": "schedule",
                    "group": "ten_1",
                    "class": "job.failed",
                    "custom_details": {
                        "event_id": "evt_1",
                        "subject": "schedule nightly-backup",
                        "summary": "job job_1 of schedule nightly-backup failed on 1 of 3 agents",
                        "data": data,
                    },
                },
                "client": "Outpost",
                "client_url": "https://outpost.example.com/ui/jobs/job_1",
                "links": [{"href": "https://outpost.example.com/ui/jobs/job_1", "text": "Open in Outpost"}],
            })
        );
    }

    #[test]
    fn the_recovery_resolves_the_same_alert() {
        let data = json!({"job_id": "job_2"});
        let event = Event {
            kind: "job.recovered",
            ..job_failed(&data)
        };
        let requests = render(&config(), &event, &ctx());
        assert_eq!(requests.len(), 1);
        assert_eq!(
            body(&requests[0]),
            json!({
                "routing_key": "R0UT1NGKEY",
                "event_action": "resolve",
                "dedup_key": "outpost:ten_1:schedule:sch_1",
            })
        );
    }

    #[test]
    fn agents_trigger_critical_when_offline_and_resolve_when_online() {
        let data = Value::Null;
        let offline = body(&render(&config(), &agent_event("agent.offline", &data), &ctx())[0]);
        assert_eq!(offline["event_action"], "trigger");
        assert_eq!(offline["payload"]["severity"], "critical");
        assert_eq!(offline["payload"]["source"], "web-1");
        assert_eq!(offline["dedup_key"], "outpost:ten_1:agent:agt_1");
        assert_eq!(
            offline["links"][0]["href"],
            "https://outpost.example.com/ui/agents/agt_1"
        );
        let online = body(&render(&config(), &agent_event("agent.online", &data), &ctx())[0]);
        assert_eq!(online["event_action"], "resolve");
        assert_eq!(online["dedup_key"], offline["dedup_key"]);
        let rolled_back = body(
            &render(
                &config(),
                &agent_event("agent.update_rolled_back", &data),
                &ctx(),
            )[0],
        );
        assert_eq!(rolled_back["payload"]["severity"], "error");
    }

    #[test]
    fn missed_and_skipped_fires_are_warnings_and_successes_say_nothing() {
        let data = json!({});
        for kind in ["schedule.missed", "schedule.skipped"] {
            let event = Event {
                kind,
                ..job_failed(&data)
            };
            let trigger = body(&render(&config(), &event, &ctx())[0]);
            assert_eq!(trigger["payload"]["severity"], "warning", "{kind}");
        }
        for kind in ["job.succeeded", "agent.updated", "something.new"] {
            let event = Event {
                kind,
                ..job_failed(&data)
            };
            assert!(render(&config(), &event, &ctx()).is_empty(), "{kind}");
        }
    }

    #[test]
    fn a_test_triggers_an_info_alert_and_resolves_it() {
        let data = json!({});
        let event = Event {
            kind: "job.succeeded",
            ..job_failed(&data)
        };
        let test = Context {
            test: true,
            ..ctx()
        };
        let requests = render(&config(), &event, &test);
        assert_eq!(requests.len(), 2);
        let (trigger, resolve) = (body(&requests[0]), body(&requests[1]));
        assert_eq!(trigger["event_action"], "trigger");
        assert_eq!(trigger["payload"]["severity"], "info");
        assert_eq!(trigger["dedup_key"], "outpost:ten_1:test:evt_1");
        assert!(
            trigger["payload"]["summary"]
                .as_str()
                .is_some_and(|s| s.starts_with("[test] "))
        );
        assert_eq!(
            resolve,
            json!({"routing_key": "R0UT1NGKEY", "event_action": "resolve", "dedup_key": "outpost:ten_1:test:evt_1"})
        );
    }

    #[test]
    fn dedup_keys_are_deterministic_and_capped_at_255() {
        let data = json!({});
        let long_id = "i".repeat(400);
        let event = Event {
            subject_id: &long_id,
            ..job_failed(&data)
        };
        let key = dedup_key(&event);
        assert_eq!(key.len(), DEDUP_KEY_MAX);
        assert!(key.starts_with("outpost:ten_1:schedule:iii"));
        assert_eq!(key, dedup_key(&event));
        let other_id = format!("{}j", "i".repeat(399));
        let other = Event {
            subject_id: &other_id,
            ..event
        };
        assert_ne!(dedup_key(&other), key, "keys of different subjects differ");
        let trigger = body(&render(&config(), &event, &ctx())[0]);
        assert_eq!(trigger["dedup_key"], key.as_str());
    }

    #[test]
    fn long_summaries_and_huge_data_are_clipped() {
        let summary = "x".repeat(5000);
        let data = json!({"output": "o".repeat(1_000_000)});
        let event = Event {
            summary: &summary,
            ..job_failed(&data)
        };
        let request = &render(&config(), &event, &ctx())[0];
        let trigger = body(request);
        let sent = trigger["payload"]["summary"].as_str().unwrap_or("");
        assert_eq!(sent.chars().count(), SUMMARY_MAX);
        assert!(request.body.len() < 512 * 1024, "{}", request.body.len());
    }
}
