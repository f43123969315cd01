//! Slack incoming webhooks: `{text, blocks}`.
//!
//! Format: <https://api.slack.com/messaging/webhooks> (the payload), Block Kit's block reference
//! <https://api.slack.com/reference/block-kit/blocks> (a header's `plain_text` at most 150
//! characters; a section's text at most 3000, its fields at most 10 of 2000 each), and
//! <https://api.slack.com/reference/surfaces/formatting#escaping>: `&`, `<` and `>` are control
//! characters (`<!channel>`, `<@U…>`, `<url|text>`) and must be sent as `&amp;`, `&lt;`, `&gt;`
//! when they are text. Slack decodes exactly those three entities for display, in `plain_text`
//! too, so everything from an event is escaped wherever it goes; limits are counted on the
//! escaped text. `text` is the notification's fallback; `blocks` what the channel shows:
//! a header (the summary's first 150 characters), the whole summary when the header could not
//! hold it, the event type, status, subject and time (as `<!date^…>`, shown in each reader's
//! time zone), and a link to the dashboard when the server's public URL is known. Slack allows
//! about one message a second per webhook and answers 429 with `Retry-After` (see `answer`).

use serde_json::{Value, json};

use super::text::{MARK, clip};
use super::{Context, Event, Level, Request, headline, level, link, status, subject_line};

/// A header block's text limit.
pub const HEADER_MAX: usize = 150;
/// A section's text limit (also used for the fallback `text`).
pub const SECTION_MAX: usize = 3000;
/// A section field's text limit.
pub const FIELD_MAX: usize = 2000;

pub(super) fn render(url: &str, event: &Event, ctx: &Context) -> Request {
    Request::json(url.to_owned(), Vec::new(), &message(event, ctx))
}

fn message(event: &Event, ctx: &Context) -> Value {
    let test = if ctx.test { "[test] " } else { "" };
    let line = format!("{test}{}", headline(event));
    let header = escape_clip(&line, HEADER_MAX);
    let mut blocks = vec![json!({
        "type": "header",
        "text": {"type": "plain_text", "text": header, "emoji": true},
    })];
    // The whole summary, when the header shows only part of it.
    let summary = event.summary.trim();
    if !summary.is_empty() && (escape(&line) != header || summary.contains('\n')) {
        blocks.push(json!({
            "type": "section",
            "text": {"type": "mrkdwn", "text": escape_clip(summary, SECTION_MAX)},
        }));
    }
    let icon = match level(event.kind) {
        Level::Failure => ":red_circle:",
        Level::Warning => ":warning:",
        Level::Success => ":large_green_circle:",
        Level::Info => ":information_source:",
    };
    let time = format!(
        "<!date^{}^{{date_short_pretty}} {{time_secs}}|{}>",
        event.time.timestamp(),
        event
            .time
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    blocks.push(json!({
        "type": "section",
        "fields": [
            field("Event", &format!("`{}`", escape_clip(event.kind, 100))),
            field("Status", &format!("{icon} {}", escape_clip(&status(event.kind), 100))),
            field("Subject", &escape_clip(&subject_line(event), FIELD_MAX - 20)),
            field("Time", &time),
        ],
    }));
    if let Some(url) = link(event, ctx) {
        // `link` percent-encodes the id, so the URL holds none of `<`, `>`, `|`.
        blocks.push(json!({
            "type": "section",
            "text": {"type": "mrkdwn", "text": format!("<{url}|Open in Outpost>")},
        }));
    }
    blocks.push(json!({
        "type": "context",
        "elements": [{
            "type": "mrkdwn",
            "text": format!(
                "Outpost event `{}` · tenant `{}`",
                escape_clip(&clip(event.id, 128), 400),
                escape_clip(&clip(event.tenant_id, 128), 400)
            ),
        }],
    }));
    json!({
        "text": escape_clip(&line, SECTION_MAX),
        "blocks": blocks,
    })
}

fn field(name: &str, value: &str) -> Value {
    json!({"type": "mrkdwn", "text": format!("*{name}*\n{value}")})
}

/// The entity for a control character, or `None` for any other.
fn entity(c: char) -> Option<&'static str> {
    match c {
        '&' => Some("&amp;"),
        '<' => Some("&lt;"),
        '>' => Some("&gt;"),
        _ => None,
    }
}

/// `s` with Slack's control characters escaped.
pub fn escape(s: &str) -> String {
    escape_clip(s, usize::MAX)
}

/// `s` escaped and cut so that the escaped text has at most `max` characters, ending with
/// [`MARK`] when cut; never in the middle of an entity.
pub fn escape_clip(s: &str, max: usize) -> String {
    let escaped_len: usize = s.chars().map(|c| entity(c).map_or(1, str::len)).sum();
    let budget = if escaped_len <= max {
        max
    } else {
        max.saturating_sub(MARK.chars().count())
    };
    let mut out = String::with_capacity(s.len().min(max.saturating_mul(4)));
    let mut used = 0;
    for c in s.chars() {
        let width = entity(c).map_or(1, str::len);
        if used + width > budget {
            break;
        }
        match entity(c) {
            Some(e) => out.push_str(e),
            None => out.push(c),
        }
        used += width;
    }
    if escaped_len > max {
        out.push_str(&clip(MARK, max));
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
            Kind::Slack,
            &json!({"url": "https://hooks.slack.com/services/T0/B0/x"}),
        )
        .expect("valid")
    }

    #[test]
    fn a_failed_job_is_a_header_fields_a_link_and_a_context() {
        let data = failed_data();
        let requests = render(&config(), &job_failed(&data), &ctx());
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].url, "https://hooks.slack.com/services/T0/B0/x");
        assert_eq!(
            header(&requests[0], "content-type"),
            Some("application/json")
        );
        assert_eq!(
            body(&requests[0]),
            json!({
                "text": "job job_1 of schedule nightly-backup failed on 1 of 3 agents",
                "blocks": [
                    {"type": "header", "text": {"type": "plain_text", "text": "job job_1 of schedule nightly-backup failed on 1 of 3 agents", "emoji": true}},
                    {"type": "section", "fields": [
                        {"type": "mrkdwn", "text": "*Event*\n`job.failed`"},
                        {"type": "mrkdwn", "text": "*Status*\n:red_circle: failed"},
                        {"type": "mrkdwn", "text": "*Subject*\nschedule nightly-backup"},
                        {"type": "mrkdwn", "text": "*Time*\n<!date^1795768200^{date_short_pretty} {time_secs}|2026-11-27T08:30:00Z>"},
                    ]},
                    {"type": "section", "text": {"type": "mrkdwn", "text": "<https://outpost.example.com/ui/jobs/job_1|Open in Outpost>"}},
                    {"type": "context", "elements": [{"type": "mrkdwn", "text": "Outpost event `evt_1` · tenant `ten_1`"}]},
                ],
            })
        );
    }

    #[test]
    fn an_agent_back_online_is_green_and_links_to_the_agent() {
        let data = json!({"online": 4});
        let event = Event {
            summary: "agent web-1 is online again",
            ..agent_event("agent.online", &data)
        };
        let test = Context {
            test: true,
            public_url: None,
            ..ctx()
        };
        let message = body(&render(&config(), &event, &test)[0]);
        assert_eq!(message["text"], "[test] agent web-1 is online again");
        assert_eq!(
            message["blocks"][0]["text"]["text"],
            "[test] agent web-1 is online again"
        );
        assert_eq!(
            message["blocks"][1]["fields"][1]["text"],
            "*Status*\n:large_green_circle: online"
        );
        // No public URL, no link.
        assert_eq!(message["blocks"].as_array().map(Vec::len), Some(3));
        let linked = body(&render(&config(), &event, &ctx())[0]);
        assert_eq!(
            linked["blocks"][2]["text"]["text"],
            "<https://outpost.example.com/ui/agents/agt_1|Open in Outpost>"
        );
    }

    #[test]
    fn text_from_agents_cannot_mention_or_link() {
        let data = json!({});
        let event = Event {
            summary: "<!channel> <script>alert(1)</script> & <@U123|boss> <https://evil.example|click>",
            subject_name: "<!here>",
            ..job_failed(&data)
        };
        let message = body(&render(&config(), &event, &ctx())[0]);
        let escaped = "&lt;!channel&gt; &lt;script&gt;alert(1)&lt;/script&gt; &amp; \
                       &lt;@U123|boss&gt; &lt;https://evil.example|click&gt;";
        assert_eq!(message["text"], escaped);
        assert_eq!(message["blocks"][0]["text"]["text"], escaped);
        assert_eq!(
            message["blocks"][1]["fields"][2]["text"],
            "*Subject*\nschedule &lt;!here&gt;"
        );
        let all = message.to_string();
        for raw in [
            "<!channel>",
            "<script>",
            "<@U123",
            "<!here>",
            "<https://evil",
        ] {
            assert!(!all.contains(raw), "{raw} reached Slack unescaped: {all}");
        }
    }

    #[test]
    fn long_text_is_cut_to_slacks_limits_and_says_so() {
        let data = json!({});
        let summary = format!("{}\nsecond line", "&".repeat(5000));
        let event = Event {
            summary: &summary,
            ..job_failed(&data)
        };
        let message = body(&render(&config(), &event, &ctx())[0]);
        let header_text = message["blocks"][0]["text"]["text"].as_str().unwrap_or("");
        assert!(header_text.chars().count() <= HEADER_MAX);
        assert!(header_text.ends_with(MARK));
        assert!(header_text.starts_with("&amp;&amp;"));
        // The section carries as much of the summary as fits, never half an entity.
        let section = message["blocks"][1]["text"]["text"].as_str().unwrap_or("");
        assert!(section.chars().count() <= SECTION_MAX);
        assert!(
            section.trim_end_matches(MARK).ends_with("&amp;"),
            "{section}"
        );
        let text = message["text"].as_str().unwrap_or("");
        assert!(text.chars().count() <= SECTION_MAX);
    }

    #[test]
    fn escape_clip_handles_the_edges() {
        assert_eq!(escape("a<b>&c"), "a&lt;b&gt;&amp;c");
        assert_eq!(escape_clip("<<<<<<<<", 20), "&lt;… [truncated]");
        assert_eq!(escape_clip("", 0), "");
        assert_eq!(escape_clip("abc", 3), "abc");
        assert_eq!(escape_clip("abcd", 3), "… [");
    }
}
