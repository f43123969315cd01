//! Discord webhooks: `{content, embeds, allowed_mentions}`.
//!
//! Format: "Execute Webhook" <https://discord.com/developers/docs/resources/webhook#execute-webhook>
//! (`content` at most 2000 characters), the embed object and its limits
//! <https://discord.com/developers/docs/resources/message#embed-object-embed-limits> (title 256,
//! description 4096, field name 256 and value 1024, footer 2048, and 6000 characters across
//! all of them), and allowed mentions
//! <https://discord.com/developers/docs/resources/message#allowed-mentions-object>:
//! `{"parse": []}` makes Discord ping nobody, whatever `@everyone`, `@here` or `<@id>` an
//! agent's output holds. The embed's colour and title say what happened; its description has
//! the whole summary (when the title could not hold it) and the event's data as a JSON block;
//! its `url` links to the dashboard when the server's public URL is known. A 429's body carries
//! `retry_after` (see `answer`).

use serde_json::{Value, json};

use super::text::{clip, one_line, pretty};
use super::{Context, Event, Level, Request, headline, level, link, status, subject_line};

/// `content`'s limit.
pub const CONTENT_MAX: usize = 2000;
/// An embed title's limit.
pub const TITLE_MAX: usize = 256;
/// An embed description's limit.
pub const DESCRIPTION_MAX: usize = 4096;
/// An embed field value's limit.
pub const FIELD_VALUE_MAX: usize = 1024;
/// The limit of an embed's title, description, field names and values, footer and author
/// taken together.
pub const EMBED_TOTAL_MAX: usize = 6000;

pub(super) fn render(url: &str, event: &Event, ctx: &Context) -> Request {
    Request::json(url.to_owned(), Vec::new(), &message(event, ctx))
}

fn message(event: &Event, ctx: &Context) -> Value {
    let (color, icon) = match level(event.kind) {
        Level::Failure => (0xED4245, "🔴"),
        Level::Warning => (0xF0B232, "🟠"),
        Level::Success => (0x57F287, "🟢"),
        Level::Info => (0x5865F2, "ℹ️"),
    };
    let test = if ctx.test { "[test] " } else { "" };
    let content = clip(
        &format!(
            "{icon} {test}**{}** · {}",
            clip(event.kind, 100),
            subject_line(event)
        ),
        CONTENT_MAX,
    )
    .into_owned();
    let line = one_line(event.summary);
    let title = clip(&headline(event), TITLE_MAX).into_owned();
    let fields = [
        ("Event", clip(event.kind, 100).into_owned()),
        ("Status", clip(&status(event.kind), 100).into_owned()),
        (
            "Subject",
            clip(&subject_line(event), FIELD_VALUE_MAX).into_owned(),
        ),
    ];
    let footer = format!("Outpost · event {}", clip(event.id, 128));
    let used = title.chars().count()
        + fields
            .iter()
            .map(|(name, value)| name.chars().count() + value.chars().count())
            .sum::<usize>()
        + footer.chars().count();
    let room = DESCRIPTION_MAX.min(EMBED_TOTAL_MAX.saturating_sub(used));
    let summary = event.summary.trim();
    let summary =
        (!summary.is_empty() && (title != line || summary.contains('\n'))).then_some(summary);
    let description = description(summary, &pretty(event.data), room);
    let mut embed = json!({
        "title": title,
        "color": color,
        "timestamp": event.time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "fields": fields
            .iter()
            .map(|(name, value)| json!({"name": name, "value": value, "inline": true}))
            .collect::<Vec<_>>(),
        "footer": {"text": footer},
    });
    if !description.is_empty() {
        embed["description"] = json!(description);
    }
    if let Some(url) = link(event, ctx) {
        embed["url"] = json!(url);
    }
    json!({
        "content": content,
        "embeds": [embed],
        "allowed_mentions": {"parse": []},
    })
}

/// The summary (when given) and the data as a JSON code block, in at most `room` characters;
/// the summary goes first, the data gets what is left (none when too little is).
fn description(summary: Option<&str>, data: &str, room: usize) -> String {
    const OPEN: &str = "```json\n";
    const CLOSE: &str = "\n```";
    let mut out = summary
        .map(|s| clip(s, room).into_owned())
        .unwrap_or_default();
    if data.is_empty() {
        return out;
    }
    let separator = if out.is_empty() { "" } else { "\n" };
    let fixed = out.chars().count() + separator.chars().count() + OPEN.len() + CLOSE.len();
    let left = room.saturating_sub(fixed);
    if left < 40 {
        return out;
    }
    // A ``` inside the data would end the block early.
    let data = data.replace("```", "`\u{200b}``");
    let data = clip(&data, left);
    out.push_str(separator);
    out.push_str(OPEN);
    out.push_str(&data);
    out.push_str(CLOSE);
    debug_assert!(out.chars().count() <= room);
    out
}

#[cfg(test)]
mod tests {
    use super::super::tests::{agent_event, body, ctx, failed_data, header, job_failed};
    use super::super::text::MARK;
    use super::super::{Kind, parse_config, render};
    use super::*;

    fn config() -> super::super::Config {
        parse_config(
            Kind::Discord,
            &json!({"url": "https://discord.com/api/webhooks/1/tok"}),
        )
        .expect("valid")
    }

    /// The characters Discord counts against an embed's 6000.
    fn embed_total(embed: &Value) -> usize {
        let len = |v: &Value| v.as_str().map_or(0, |s| s.chars().count());
        len(&embed["title"])
            + len(&embed["description"])
            + len(&embed["footer"]["text"])
            + len(&embed["author"]["name"])
            + embed["fields"].as_array().map_or(0, |f| {
                f.iter().map(|f| len(&f["name"]) + len(&f["value"])).sum()
            })
    }

    #[test]
    fn a_failed_job_is_a_red_embed_with_its_data() {
        let data = failed_data();
        let requests = render(&config(), &job_failed(&data), &ctx());
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].url, "https://discord.com/api/webhooks/1/tok");
        assert_eq!(
            header(&requests[0], "content-type"),
            Some("application/json")
        );
        let pretty = serde_json::to_string_pretty(&data).expect("json");
        assert_eq!(
            body(&requests[0]),
            json!({
                "content": "🔴 **job.failed** · schedule nightly-backup",
                "embeds": [{
                    "title": "job job_1 of schedule nightly-backup failed on 1 of 3 agents",
                    "description": format!("```json\n{pretty}\n```"),
                    "color": 0xED4245,
                    "timestamp": "2026-11-27T08:30:00.000Z",
                    "fields": [
                        {"name": "Event", "value": "job.failed", "inline": true},
                        {"name": "Status", "value": "failed", "inline": true},
                        {"name": "Subject", "value": "schedule nightly-backup", "inline": true},
                    ],
                    "footer": {"text": "Outpost · event evt_1"},
                    "url": "https://outpost.example.com/ui/jobs/job_1",
                }],
                "allowed_mentions": {"parse": []},
            })
        );
    }

    #[test]
    fn an_agent_back_online_is_green() {
        let data = Value::Null;
        let event = Event {
            summary: "agent web-1 is online again",
            ..agent_event("agent.online", &data)
        };
        let message = body(&render(&config(), &event, &ctx())[0]);
        assert_eq!(message["content"], "🟢 **agent.online** · agent web-1");
        assert_eq!(message["embeds"][0]["color"], 0x57F287);
        assert_eq!(
            message["embeds"][0]["url"],
            "https://outpost.example.com/ui/agents/agt_1"
        );
        assert!(message["embeds"][0].get("description").is_none());
    }

    #[test]
    fn mentions_in_agent_text_ping_nobody() {
        let data = json!({"output": "@everyone @here <@123>"});
        let event = Event {
            summary: "@everyone the disk is full <@&456>",
            subject_name: "@here",
            ..job_failed(&data)
        };
        let message = body(&render(&config(), &event, &ctx())[0]);
        assert_eq!(message["allowed_mentions"], json!({"parse": []}));
    }

    #[test]
    fn huge_events_keep_within_every_limit() {
        let summary = format!("{}\n{}", "s".repeat(300_000), "t".repeat(10));
        let data = json!({"output": "o".repeat(1_000_000), "fence": "```"});
        let name = "n".repeat(5000);
        let event = Event {
            summary: &summary,
            subject_name: &name,
            kind: &"k".repeat(500),
            ..job_failed(&data)
        };
        let message = body(&render(&config(), &event, &ctx())[0]);
        let embed = &message["embeds"][0];
        let chars = |v: &Value| v.as_str().map_or(0, |s| s.chars().count());
        assert!(chars(&message["content"]) <= CONTENT_MAX);
        assert!(chars(&embed["title"]) <= TITLE_MAX);
        assert!(chars(&embed["title"]) > 200);
        assert!(chars(&embed["description"]) <= DESCRIPTION_MAX);
        for field in embed["fields"].as_array().into_iter().flatten() {
            assert!(chars(&field["value"]) <= FIELD_VALUE_MAX);
        }
        assert!(
            embed_total(embed) <= EMBED_TOTAL_MAX,
            "{}",
            embed_total(embed)
        );
        assert!(embed["description"].as_str().unwrap_or("").ends_with(MARK));
    }

    #[test]
    fn large_data_is_clipped_inside_its_code_block() {
        let data = json!({"output": "o".repeat(10_000)});
        let message = body(&render(&config(), &job_failed(&data), &ctx())[0]);
        let embed = &message["embeds"][0];
        let description = embed["description"].as_str().unwrap_or("");
        assert!(description.starts_with("```json\n{"));
        assert!(description.ends_with(&format!("{MARK}\n```")));
        assert!(description.chars().count() <= DESCRIPTION_MAX);
        assert!(embed_total(embed) <= EMBED_TOTAL_MAX);
    }
}
