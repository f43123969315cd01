//! Splunk HTTP Event Collector: the event JSON in HEC's envelope.
//!
//! Format: "Format events for HTTP Event Collector"
//! <https://help.splunk.com/splunk-enterprise/get-data-in/collect-http-event-data/format-events-for-http-event-collector>
//! and "HTTP Event Collector REST API endpoints" (same site): `POST …/services/collector/event`,
//! header `Authorization: Splunk <token>`, body `{"time": <epoch seconds, with a fraction>,
//! "host", "source", "sourcetype", "event": {…}}`. The `event` is the generic webhook's JSON,
//! so a search sees the same fields as a webhook receiver; `source` is `outpost` and
//! `sourcetype` `outpost:event`, so searches can pick Outpost's events out; `host` is the
//! server's. A URL given without a path gets `/services/collector/event` (see `config`).

use serde_json::json;

use super::webhook::event_json;
use super::{Context, Event, Request};

pub(super) fn render(url: &str, token: &str, event: &Event, ctx: &Context) -> Request {
    // Milliseconds as a fraction of seconds: what HEC's `time` takes.
    let time = event.time.timestamp_millis() as f64 / 1000.0;
    let body = json!({
        "time": time,
        "host": ctx.host,
        "source": "outpost",
        "sourcetype": "outpost:event",
        "event": event_json(event),
    });
    Request::json(
        url.to_owned(),
        vec![("authorization".to_owned(), format!("Splunk {token}"))],
        &body,
    )
}

#[cfg(test)]
mod tests {
    use super::super::tests::{agent_event, body, ctx, failed_data, job_failed};
    use super::super::{Kind, parse_config, render};
    use super::*;
    use chrono::TimeDelta;
    use serde_json::Value;

    fn config() -> super::super::Config {
        parse_config(
            Kind::Splunk,
            &json!({"url": "https://splunk.example.com:8088", "token": "11111111-2222-3333-4444-555555555555"}),
        )
        .expect("valid")
    }

    #[test]
    fn a_failed_job_is_the_event_json_in_hecs_envelope() {
        let data = failed_data();
        let event = job_failed(&data);
        let requests = render(&config(), &event, &ctx());
        assert_eq!(requests.len(), 1);
        assert_eq!(
            requests[0].url,
            "https://splunk.example.com:8088/services/collector/event"
        );
        assert_eq!(
            requests[0].headers,
            [
                ("content-type".to_owned(), "application/json".to_owned()),
                (
                    "authorization".to_owned(),
                    "Splunk 11111111-2222-3333-4444-555555555555".to_owned()
                ),
            ]
        );
        assert_eq!(
            body(&requests[0]),
            json!({
                "time": 1795768200.0,
                "host": "outpost-1",
                "source": "outpost",
                "sourcetype": "outpost:event",
                "event": event_json(&event),
            })
        );
    }

    #[test]
    fn agent_events_keep_their_milliseconds() {
        let data = Value::Null;
        let event = Event {
            time: super::super::tests::time() + TimeDelta::milliseconds(250),
            ..agent_event("agent.online", &data)
        };
        let sent = body(&render(&config(), &event, &ctx())[0]);
        assert_eq!(sent["time"], 1795768200.25);
        assert_eq!(sent["event"]["type"], "agent.online");
        assert_eq!(sent["event"]["time"], "2026-11-27T08:30:00.250Z");
    }
}
