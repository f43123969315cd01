//! Email: a subject and a plain-text body, for the server's SMTP sender to deliver.
//!
//! No HTTP request and no SMTP here: the sender (and whether the server has SMTP at all) is the
//! caller's. What this module guarantees is what makes a message safe to hand to any SMTP
//! library: the recipients are plain addresses checked when the config was parsed, and the
//! subject is one line (no CR or LF an agent could use to add a header) of at most 200
//! characters. The body has the summary, what the event is about, a link to the dashboard when
//! the server's public URL is known, and the event's data as pretty JSON cut at 64 KB.

use super::text::{clip, clip_bytes, one_line, pretty};
use super::{Config, Context, Event, headline, link, status, subject_line};

/// A subject's limit, in characters.
pub const SUBJECT_MAX: usize = 200;
/// The most bytes of event data in a body.
pub const DATA_MAX: usize = 64 * 1024;

/// One message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email {
    /// 1 to 20 plain addresses.
    pub to: Vec<String>,
    /// One line: `[Outpost] <summary>`.
    pub subject: String,
    /// Plain text.
    pub text: String,
}

/// The message an event becomes for an email integration; `None` for other kinds.
pub fn render_email(config: &Config, event: &Event, ctx: &Context) -> Option<Email> {
    let to = config.recipients();
    if to.is_empty() {
        return None;
    }
    let test = if ctx.test { "[test] " } else { "" };
    let subject = clip(&format!("[Outpost] {test}{}", headline(event)), SUBJECT_MAX).into_owned();
    let mut text = String::new();
    if ctx.test {
        text.push_str("This is a test of an Outpost integration.\n\n");
    }
    text.push_str(&clip_bytes(&printable(event.summary), DATA_MAX));
    text.push_str("\n\n");
    let rows = [
        (
            "Event",
            format!("{} ({})", clip(event.kind, 100), status(event.kind)),
        ),
        (
            "Subject",
            format!("{} ({})", subject_line(event), clip(event.subject_id, 128)),
        ),
        (
            "Time",
            event
                .time
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        ),
        ("Tenant", clip(event.tenant_id, 128).into_owned()),
        ("Event id", clip(event.id, 128).into_owned()),
    ];
    for (name, value) in rows {
        text.push_str(&format!("{name:<9} {}\n", one_line(&value)));
    }
    if let Some(url) = link(event, ctx) {
        text.push_str(&format!("{:<9} {url}\n", "Link"));
    }
    let data = pretty(event.data);
    if !data.is_empty() {
        text.push_str("\nData:\n");
        text.push_str(&clip_bytes(&data, DATA_MAX));
        text.push('\n');
    }
    Some(Email {
        to: to.to_vec(),
        subject,
        text,
    })
}

/// `s` without control characters other than line feeds and tabs (a CR alone, a NUL or an
/// escape sequence from an agent's output has no business in a mail body).
fn printable(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control() || matches!(c, '\n' | '\t'))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::tests::{agent_event, ctx, failed_data, job_failed};
    use super::super::text::MARK;
    use super::super::{Kind, parse_config};
    use super::*;
    use serde_json::{Value, json};

    fn config() -> Config {
        parse_config(
            Kind::Email,
            &json!({"to": ["ops@example.com", "dev@example.com"]}),
        )
        .expect("valid")
    }

    #[test]
    fn a_failed_job_is_a_subject_and_a_plain_text_body() {
        let data = failed_data();
        let email = render_email(&config(), &job_failed(&data), &ctx()).expect("an email");
        let pretty = serde_json::to_string_pretty(&data).expect("json");
        assert_eq!(
            email,
            Email {
                to: vec!["ops@example.com".to_owned(), "dev@example.com".to_owned()],
                subject: "[Outpost] job job_1 of schedule nightly-backup failed on 1 of 3 agents"
                    .to_owned(),
                text: format!(
                    "job job_1 of schedule nightly-backup failed on 1 of 3 agents\n\n\
                     Event     job.failed (failed)\n\
                     Subject   schedule nightly-backup (sch_1)\n\
                     Time      2026-11-27T08:30:00Z\n\
                     Tenant    ten_1\n\
                     Event id  evt_1\n\
                     Link      https://outpost.example.com/ui/jobs/job_1\n\
                     \nData:\n{pretty}\n"
                ),
            }
        );
    }

    #[test]
    fn an_agent_event_without_data_has_no_data_section() {
        let data = Value::Null;
        let email =
            render_email(&config(), &agent_event("agent.online", &data), &ctx()).expect("an email");
        assert!(
            email
                .text
                .contains("Link      https://outpost.example.com/ui/agents/agt_1\n")
        );
        assert!(!email.text.contains("Data:"));
    }

    #[test]
    fn the_subject_is_one_short_line_whatever_the_summary() {
        let data = json!({});
        let summary = format!("disk full\r\nBcc: victim@example.com\n{}", "x".repeat(1000));
        let event = Event {
            summary: &summary,
            ..job_failed(&data)
        };
        let email = render_email(&config(), &event, &ctx()).expect("an email");
        assert!(!email.subject.contains(['\r', '\n']));
        assert!(
            email
                .subject
                .starts_with("[Outpost] disk full Bcc: victim@example.com xxx")
        );
        assert_eq!(email.subject.chars().count(), SUBJECT_MAX);
        assert!(email.subject.ends_with(MARK));
        assert!(!email.text.contains('\r'));
        let test = Context {
            test: true,
            ..ctx()
        };
        let tested = render_email(&config(), &event, &test).expect("an email");
        assert!(tested.subject.starts_with("[Outpost] [test] disk full"));
        assert!(tested.text.starts_with("This is a test"));
    }

    #[test]
    fn data_is_cut_at_64_kb() {
        let data = json!({"output": "o".repeat(1_000_000)});
        let email = render_email(&config(), &job_failed(&data), &ctx()).expect("an email");
        assert!(email.text.len() < DATA_MAX + 1024, "{}", email.text.len());
        assert!(email.text.ends_with(&format!("{MARK}\n")));
    }

    #[test]
    fn other_kinds_have_no_email() {
        let slack =
            parse_config(Kind::Slack, &json!({"url": "https://hooks.slack.com/x"})).expect("valid");
        let data = failed_data();
        assert_eq!(render_email(&slack, &job_failed(&data), &ctx()), None);
    }
}
