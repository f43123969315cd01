//! Printing for people: aligned tables, relative times, sizes, and colours only when stdout is
//! a terminal and `NO_COLOR` is unset (<https://no-color.org>).
//!
//! Text that agents or other callers chose (hostnames, tags, script names and descriptions,
//! error messages, versions, key names, parameters) is printed with its control characters
//! escaped ([`escape`]): a hostname holding `ESC ]0;…` would otherwise retitle the reader's
//! terminal, and worse sequences exist. Every table cell and every [`field`] and [`list`] goes
//! through it. `--json` prints exact JSON (serde escapes C0 characters itself), and a script's
//! output (`jobs logs`, `run --follow`) is the script's own bytes, printed as they are, as ssh
//! would.

use std::borrow::Cow;
use std::io::{IsTerminal, Write};

use chrono::{DateTime, Utc};
use serde_json::Value;

/// Whether to colour what goes to stdout.
pub fn colour_stdout() -> bool {
    std::io::stdout().is_terminal() && no_color_unset()
}

/// Whether to colour what goes to stderr.
pub fn colour_stderr() -> bool {
    std::io::stderr().is_terminal() && no_color_unset()
}

fn no_color_unset() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// ANSI colours used here.
#[derive(Debug, Clone, Copy)]
pub enum Colour {
    Red,
    Green,
    Yellow,
    Blue,
    Magenta,
    Cyan,
    Dim,
    Bold,
}

impl Colour {
    fn code(self) -> &'static str {
        match self {
            Self::Red => "31",
            Self::Green => "32",
            Self::Yellow => "33",
            Self::Blue => "34",
            Self::Magenta => "35",
            Self::Cyan => "36",
            Self::Dim => "2",
            Self::Bold => "1",
        }
    }

    /// A colour per agent, cycling.
    pub fn nth(i: usize) -> Self {
        const PALETTE: [Colour; 6] = [
            Colour::Cyan,
            Colour::Magenta,
            Colour::Blue,
            Colour::Yellow,
            Colour::Green,
            Colour::Red,
        ];
        PALETTE[i % PALETTE.len()]
    }
}

/// `text` in `colour` when `on`.
pub fn paint(text: &str, colour: Colour, on: bool) -> String {
    if on {
        format!("\x1b[{}m{text}\x1b[0m", colour.code())
    } else {
        text.to_owned()
    }
}

/// The colour for a status word.
pub fn status_colour(status: &str) -> Option<Colour> {
    match status {
        "online" | "succeeded" | "active" | "completed" | "healthy" => Some(Colour::Green),
        "offline" | "failed" | "timed_out" | "lost" | "disabled" | "expired" | "halted"
        | "aborted" | "revert_failed" => Some(Colour::Red),
        "running" | "pending" | "delivered" | "cancelled" | "paused" | "rolling_back"
        | "updating" | "soaking" | "checking" | "revert_pending" | "reverting" => {
            Some(Colour::Yellow)
        }
        _ => None,
    }
}

/// `text` with its control characters (C0, DEL, C1 and the bidirectional formatting
/// characters; see `outpost_protocol::check::is_control`) written as escapes: `\n`, `\t`,
/// `\r`, `\x1b` below U+0080, `\u{9b}` above. Text without any is returned as it is.
pub fn escape(text: &str) -> Cow<'_, str> {
    use outpost_protocol::check::is_control;
    if !text.chars().any(is_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if is_control(c) && (c as u32) < 0x80 => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if is_control(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// A table printed with columns aligned; the last column is not padded.
pub struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<Cell>>,
}

/// A cell: its text and an optional colour (applied after padding, so widths stay right).
pub struct Cell {
    text: String,
    colour: Option<Colour>,
}

impl From<String> for Cell {
    fn from(text: String) -> Self {
        let text = match escape(&text) {
            Cow::Borrowed(_) => text,
            Cow::Owned(escaped) => escaped,
        };
        Self { text, colour: None }
    }
}

impl From<&str> for Cell {
    fn from(text: &str) -> Self {
        Self {
            text: escape(text).into_owned(),
            colour: None,
        }
    }
}

impl Cell {
    /// A status cell, coloured by [`status_colour`].
    pub fn status(text: &str) -> Self {
        Self {
            text: escape(text).into_owned(),
            colour: status_colour(text),
        }
    }
}

impl Table {
    /// A table with these column titles.
    pub fn new(header: Vec<&'static str>) -> Self {
        Self {
            header,
            rows: Vec::new(),
        }
    }

    /// Adds a row.
    pub fn row(&mut self, cells: Vec<Cell>) {
        self.rows.push(cells);
    }

    /// Prints to stdout.
    pub fn print(&self) {
        let colour = colour_stdout();
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                if let Some(w) = widths.get_mut(i) {
                    *w = (*w).max(cell.text.chars().count());
                }
            }
        }
        let mut out = String::new();
        let last = widths.len().saturating_sub(1);
        for (i, title) in self.header.iter().enumerate() {
            let padded = pad(title, if i == last { 0 } else { widths[i] });
            out.push_str(&paint(&padded, Colour::Bold, colour));
            out.push_str(if i == last { "\n" } else { "  " });
        }
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                let padded = pad(&cell.text, if i >= last { 0 } else { widths[i] });
                match cell.colour {
                    Some(c) => out.push_str(&paint(&padded, c, colour)),
                    None => out.push_str(&padded),
                }
                out.push_str(if i >= last { "\n" } else { "  " });
            }
        }
        print_stdout(out.trim_end_matches(' ').as_bytes());
    }
}

fn pad(text: &str, width: usize) -> String {
    let len = text.chars().count();
    format!("{text}{}", " ".repeat(width.saturating_sub(len)))
}

/// Writes to stdout; a closed pipe (`| head`) ends the process quietly instead of panicking.
pub fn print_stdout(bytes: &[u8]) {
    let mut out = std::io::stdout().lock();
    if out.write_all(bytes).and_then(|()| out.flush()).is_err() {
        std::process::exit(0);
    }
}

/// Prints a JSON value, pretty, for `--json`.
pub fn print_json(value: &Value) {
    let text = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
    print_stdout(format!("{text}\n").as_bytes());
}

/// A string field for people (control characters escaped), or "-".
pub fn field(value: &Value, key: &str) -> String {
    match value.get(key) {
        Some(Value::String(s)) if !s.is_empty() => escape(s).into_owned(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Bool(b)) => b.to_string(),
        _ => "-".into(),
    }
}

/// A list of strings joined with commas (control characters escaped), or "-".
pub fn list(value: &Value, key: &str) -> String {
    let items: Vec<Cow<'_, str>> = value
        .get(key)
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(escape).collect())
        .unwrap_or_default();
    if items.is_empty() {
        "-".into()
    } else {
        items.join(",")
    }
}

/// An RFC 3339 field as "3m ago" / "in 2d", or "-".
pub fn ago(value: &Value, key: &str) -> String {
    value
        .get(key)
        .and_then(Value::as_str)
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| relative(t.with_timezone(&Utc), Utc::now()))
        .unwrap_or_else(|| "-".into())
}

/// A time relative to `now`.
pub fn relative(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (now - t).num_seconds();
    let (n, future) = if secs < 0 {
        (-secs, true)
    } else {
        (secs, false)
    };
    let text = if n < 60 {
        format!("{n}s")
    } else if n < 3600 {
        format!("{}m", n / 60)
    } else if n < 86_400 {
        format!("{}h", n / 3600)
    } else {
        format!("{}d", n / 86_400)
    };
    if future {
        format!("in {text}")
    } else {
        format!("{text} ago")
    }
}

/// Milliseconds as "850ms" / "2.4s" / "3m12s".
pub fn duration_ms(ms: Option<i64>) -> String {
    match ms {
        None => "-".into(),
        Some(ms) if ms < 1000 => format!("{ms}ms"),
        Some(ms) if ms < 60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        Some(ms) => format!("{}m{:02}s", ms / 60_000, (ms % 60_000) / 1000),
    }
}

/// Bytes as "512B" / "4.0K" / "1.2M".
pub fn bytes(n: i64) -> String {
    const K: f64 = 1024.0;
    let f = n as f64;
    if f < K {
        format!("{n}B")
    } else if f < K * K {
        format!("{:.1}K", f / K)
    } else if f < K * K * K {
        format!("{:.1}M", f / K / K)
    } else {
        format!("{:.1}G", f / K / K / K)
    }
}

/// A percentage from a number field, or "-".
pub fn percent(value: Option<&Value>) -> String {
    value
        .and_then(Value::as_f64)
        .map(|p| format!("{p:.0}%"))
        .unwrap_or_else(|| "-".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_times_read_naturally() {
        let now = Utc::now();
        assert_eq!(relative(now - chrono::Duration::seconds(5), now), "5s ago");
        assert_eq!(relative(now - chrono::Duration::minutes(3), now), "3m ago");
        assert_eq!(relative(now - chrono::Duration::hours(5), now), "5h ago");
        assert_eq!(relative(now + chrono::Duration::days(2), now), "in 2d");
    }

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        assert!(matches!(escape("web-1 hôte"), Cow::Borrowed("web-1 hôte")));
        assert_eq!(
            escape("web\u{1b}]0;pwned\u{7}\u{1b}[2J"),
            "web\\x1b]0;pwned\\x07\\x1b[2J"
        );
        assert_eq!(escape("a\nb\tc\rd\0e\u{7f}"), "a\\nb\\tc\\rd\\x00e\\x7f");
        assert_eq!(
            escape("csi\u{9b}2J rlo\u{202e}x"),
            "csi\\u{9b}2J rlo\\u{202e}x"
        );
        // Escaping twice changes nothing more: an escape holds no control character.
        assert_eq!(escape(&escape("\u{1b}[31m")), "\\x1b[31m");
        let v = serde_json::json!({"h": "x\u{1b}[2J", "t": ["ok", "b\u{7}"]});
        assert_eq!(field(&v, "h"), "x\\x1b[2J");
        assert_eq!(list(&v, "t"), "ok,b\\x07");
        assert_eq!(Cell::from("\u{1b}c").text, "\\x1bc");
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(bytes(12), "12B");
        assert_eq!(bytes(4096), "4.0K");
        assert_eq!(duration_ms(Some(850)), "850ms");
        assert_eq!(duration_ms(Some(2400)), "2.4s");
        assert_eq!(duration_ms(Some(192_000)), "3m12s");
        assert_eq!(duration_ms(None), "-");
    }
}
