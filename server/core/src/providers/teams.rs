//! Microsoft Teams through a Workflows webhook: a message carrying one Adaptive Card.
//!
//! Office 365 connectors are retired; a Workflows URL ("When a Teams webhook request is
//! received", <https://learn.microsoft.com/en-us/microsoftteams/platform/webhooks-and-connectors/how-to/add-incoming-webhook>)
//! takes `{"type":"message","attachments":[{"contentType":"application/vnd.microsoft.card.adaptive",
//! "contentUrl":null,"content":{…}}]}` and accepts Adaptive Cards only. The card is version 1.4
//! (<https://adaptivecards.io/explorer/>): a bold `TextBlock` coloured by what happened, the whole
//! summary when the title could not hold it, a `FactSet` (event, status, subject, time, id), the
//! event's data in a monospace `TextBlock`, and an `Action.OpenUrl` to the dashboard when the
//! server's public URL is known.
//!
//! Teams refuses messages over about 28 KB (HTTP 413; "Send messages using connectors", same
//! documentation). The whole body is kept within 28,000 bytes: the longest of the summary and
//! the data is cut (measured as JSON, escapes included) until it fits, and a last `TextBlock`
//! says the message was truncated.

use serde_json::{Value, json};

use super::text::{MARK, clip, json_len, json_prefix, pretty};
use super::{Context, Event, Level, Request, headline, level, link, status, subject_line};

/// The largest body sent.
pub const BODY_MAX: usize = 28_000;
/// The title's limit (the whole summary follows it when longer).
const TITLE_MAX: usize = 200;
/// What the card says when it was cut.
pub const TRUNCATED_NOTE: &str = "Truncated to fit a Teams message (28 KB). The whole event is in \
                                  Outpost's event list.";

pub(super) fn render(url: &str, event: &Event, ctx: &Context) -> Request {
    let card = Card::new(event, ctx);
    Request {
        url: url.to_owned(),
        headers: vec![("content-type".to_owned(), "application/json".to_owned())],
        body: card.fitted(),
    }
}

/// The card's parts: `summary` and `data` are the ones that may be cut.
struct Card {
    title: String,
    color: &'static str,
    summary: Option<String>,
    facts: Vec<(&'static str, String)>,
    data: String,
    link: Option<String>,
}

impl Card {
    fn new(event: &Event, ctx: &Context) -> Self {
        let test = if ctx.test { "[test] " } else { "" };
        let title = format!("{test}{}", clip(&headline(event), TITLE_MAX));
        let summary = event.summary.trim();
        let summary = (summary.chars().count() > TITLE_MAX || summary.contains('\n'))
            .then(|| summary.to_owned());
        let color = match level(event.kind) {
            Level::Failure => "Attention",
            Level::Warning => "Warning",
            Level::Success => "Good",
            Level::Info => "Default",
        };
        let facts = vec![
            ("Event", clip(event.kind, 100).into_owned()),
            ("Status", clip(&status(event.kind), 100).into_owned()),
            ("Subject", subject_line(event)),
            (
                "Time",
                event
                    .time
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            ),
            ("Event id", clip(event.id, 128).into_owned()),
        ];
        Self {
            title,
            color,
            summary,
            facts,
            data: pretty(event.data),
            link: link(event, ctx),
        }
    }

    /// The message as JSON, with the truncation note when `truncated`.
    fn message(&self, truncated: bool) -> Value {
        let mut body = vec![json!({
            "type": "TextBlock",
            "text": self.title,
            "size": "Medium",
            "weight": "Bolder",
            "color": self.color,
            "wrap": true,
        })];
        if let Some(summary) = &self.summary {
            body.push(json!({"type": "TextBlock", "text": summary, "wrap": true}));
        }
        body.push(json!({
            "type": "FactSet",
            "facts": self
                .facts
                .iter()
                .map(|(title, value)| json!({"title": title, "value": value}))
                .collect::<Vec<_>>(),
        }));
        if !self.data.is_empty() {
            body.push(json!({
                "type": "TextBlock",
                "text": self.data,
                "fontType": "Monospace",
                "size": "Small",
                "wrap": true,
            }));
        }
        if truncated {
            body.push(json!({
                "type": "TextBlock",
                "text": TRUNCATED_NOTE,
                "isSubtle": true,
                "wrap": true,
            }));
        }
        let mut content = json!({
            "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
            "type": "AdaptiveCard",
            "version": "1.4",
            "body": body,
        });
        if let Some(url) = &self.link {
            content["actions"] =
                json!([{"type": "Action.OpenUrl", "title": "Open in Outpost", "url": url}]);
        }
        json!({
            "type": "message",
            "attachments": [{
                "contentType": "application/vnd.microsoft.card.adaptive",
                "contentUrl": null,
                "content": content,
            }],
        })
    }

    /// The body, cut to [`BODY_MAX`] bytes: the longer of the summary and the data loses what
    /// the body is over by (as JSON, so escapes count), until it fits.
    fn fitted(mut self) -> Vec<u8> {
        let mut truncated = false;
        // Each round cuts at least the excess, so two or three rounds fit; the bound is a guard.
        for _ in 0..8 {
            let body = serde_json::to_vec(&self.message(truncated)).unwrap_or_default();
            if body.len() <= BODY_MAX {
                return body;
            }
            if !truncated {
                // The note is added first, then the cut is measured with it.
                truncated = true;
                continue;
            }
            let excess = body.len() - BODY_MAX;
            let summary_len = self.summary.as_deref().map_or(0, json_len);
            let longest = if json_len(&self.data) >= summary_len {
                &mut self.data
            } else {
                match self.summary.as_mut() {
                    Some(summary) => summary,
                    None => &mut self.data,
                }
            };
            let keep = json_len(longest).saturating_sub(excess + json_len(MARK));
            *longest = format!("{}{MARK}", json_prefix(longest, keep));
        }
        // Not reached with the fields clipped as they are; should it be, the card without the
        // summary and the data fits whatever they were.
        self.summary = None;
        self.data = String::new();
        serde_json::to_vec(&self.message(true)).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{agent_event, body, ctx, failed_data, header, job_failed};
    use super::super::{Kind, parse_config, render};
    use super::*;

    fn config() -> super::super::Config {
        parse_config(
            Kind::Teams,
            &json!({"url": "https://prod.westus.logic.azure.com/workflows/1/triggers/manual/paths/invoke?sig=s"}),
        )
        .expect("valid")
    }

    #[test]
    fn a_failed_job_is_an_adaptive_card_with_facts_and_a_link() {
        let data = failed_data();
        let requests = render(&config(), &job_failed(&data), &ctx());
        assert_eq!(requests.len(), 1);
        assert_eq!(
            requests[0].url,
            "https://prod.westus.logic.azure.com/workflows/1/triggers/manual/paths/invoke?sig=s"
        );
        assert_eq!(
            header(&requests[0], "content-type"),
            Some("application/json")
        );
        let pretty = serde_json::to_string_pretty(&data).expect("json");
        assert_eq!(
            body(&requests[0]),
            json!({
                "type": "message",
                "attachments": [{
                    "contentType": "application/vnd.microsoft.card.adaptive",
                    "contentUrl": null,
                    "content": {
                        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                        "type": "AdaptiveCard",
                        "version": "1.4",
                        "body": [
                            {"type": "TextBlock", "text": "job job_1 of schedule nightly-backup failed on 1 of 3 agents", "size": "Medium", "weight": "Bolder", "color": "Attention", "wrap": true},
                            {"type": "FactSet", "facts": [
                                {"title": "Event", "value": "job.failed"},
                                {"title": "Status", "value": "failed"},
                                {"title": "Subject", "value": "schedule nightly-backup"},
                                {"title": "Time", "value": "2026-11-27T08:30:00Z"},
                                {"title": "Event id", "value": "evt_1"},
                            ]},
                            {"type": "TextBlock", "text": pretty, "fontType": "Monospace", "size": "Small", "wrap": true},
                        ],
                        "actions": [{"type": "Action.OpenUrl", "title": "Open in Outpost", "url": "https://outpost.example.com/ui/jobs/job_1"}],
                    },
                }],
            })
        );
    }

    #[test]
    fn a_recovery_is_good_and_without_a_public_url_has_no_action() {
        let data = Value::Null;
        let event = Event {
            kind: "job.recovered",
            summary: "schedule nightly-backup succeeded again",
            ..job_failed(&data)
        };
        let quiet = Context {
            public_url: None,
            ..ctx()
        };
        let message = body(&render(&config(), &event, &quiet)[0]);
        let content = &message["attachments"][0]["content"];
        assert_eq!(content["body"][0]["color"], "Good");
        assert_eq!(content["body"][1]["facts"][1]["value"], "recovered");
        assert_eq!(content["body"].as_array().map(Vec::len), Some(2));
        assert!(content.get("actions").is_none());
        let agent = agent_event("agent.offline", &data);
        let offline = body(&render(&config(), &agent, &ctx())[0]);
        assert_eq!(
            offline["attachments"][0]["content"]["body"][0]["color"],
            "Attention"
        );
    }

    fn texts(message: &Value) -> Vec<String> {
        message["attachments"][0]["content"]["body"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|block| block["text"].as_str().map(str::to_owned))
            .collect()
    }

    #[test]
    fn a_100_kb_summary_is_cut_to_28_kb_and_says_so() {
        let data = failed_data();
        let summary = "s".repeat(100_000);
        let event = Event {
            summary: &summary,
            ..job_failed(&data)
        };
        let request = &render(&config(), &event, &ctx())[0];
        assert!(request.body.len() <= BODY_MAX, "{}", request.body.len());
        assert!(
            request.body.len() > BODY_MAX - 200,
            "cut no more than needed"
        );
        let message = body(request);
        let texts = texts(&message);
        assert_eq!(texts.last().map(String::as_str), Some(TRUNCATED_NOTE));
        assert!(texts[1].ends_with(MARK) && texts[1].len() > 20_000);
        // The data was short: it is whole.
        assert!(texts.contains(&serde_json::to_string_pretty(&data).expect("json")));
    }

    #[test]
    fn a_1_mb_event_is_cut_to_28_kb_however_its_text_escapes() {
        // Control characters take six bytes each as JSON: the cut is measured as JSON.
        let summary = format!("{}\n{}", "\u{1}".repeat(100_000), "é".repeat(100_000));
        let data = json!({"output": "\"\\".repeat(500_000), "more": "x".repeat(100_000)});
        let event = Event {
            summary: &summary,
            subject_name: &"n".repeat(100_000),
            ..job_failed(&data)
        };
        let request = &render(&config(), &event, &ctx())[0];
        assert!(request.body.len() <= BODY_MAX, "{}", request.body.len());
        let message = body(request);
        let texts = texts(&message);
        assert_eq!(texts.last().map(String::as_str), Some(TRUNCATED_NOTE));
        assert_eq!(message["attachments"][0]["content"]["type"], "AdaptiveCard");
    }

    #[test]
    fn a_small_event_is_not_marked_truncated() {
        let data = json!({"output": "o".repeat(20_000)});
        let request = &render(&config(), &job_failed(&data), &ctx())[0];
        let texts = texts(&body(request));
        assert!(!texts.iter().any(|t| t == TRUNCATED_NOTE));
        assert!(!texts.iter().any(|t| t.ends_with(MARK)));
    }
}
