//! Clipping and cleaning text for providers' limits.
//!
//! Every provider caps its fields (Slack's section text at 3000 characters, Discord's embed at
//! 6000, a Teams message at 28 KB), and an event's text may be any size: each cut is made here,
//! on a character boundary, and ends with [`MARK`] so the reader knows there was more. Limits
//! count characters (Unicode scalar values) unless a function says bytes.

use std::borrow::Cow;

use ring::digest;
use serde_json::Value;

/// What ends a clipped text.
pub(super) const MARK: &str = "… [truncated]";

/// `s` cut to at most `max` characters, ending with [`MARK`] when cut.
pub(super) fn clip(s: &str, max: usize) -> Cow<'_, str> {
    clip_with(s, max, MARK)
}

/// `s` cut to at most `max` characters, ending with `mark` when cut (or with as much of the
/// mark as fits, when `max` is smaller than it).
pub(super) fn clip_with<'a>(s: &'a str, max: usize, mark: &str) -> Cow<'a, str> {
    match s.char_indices().nth(max) {
        None => Cow::Borrowed(s),
        Some(_) => {
            let mark_chars = mark.chars().count();
            if max <= mark_chars {
                return Cow::Owned(mark.chars().take(max).collect());
            }
            let keep = s
                .char_indices()
                .nth(max - mark_chars)
                .map_or(s.len(), |(at, _)| at);
            Cow::Owned(format!("{}{mark}", &s[..keep]))
        }
    }
}

/// `s` cut to at most `max` bytes of UTF-8 (on a character boundary), with [`MARK`] when cut.
pub(super) fn clip_bytes(s: &str, max: usize) -> Cow<'_, str> {
    if s.len() <= max {
        return Cow::Borrowed(s);
    }
    let room = max.saturating_sub(MARK.len());
    Cow::Owned(format!("{}{MARK}", &s[..floor_boundary(s, room)]))
}

/// The largest character boundary of `s` at or below `at`.
pub(super) fn floor_boundary(s: &str, at: usize) -> usize {
    let mut at = at.min(s.len());
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// One line: control characters (CR, LF, tabs, …) become spaces, runs of spaces one, and the
/// ends are trimmed.
pub(super) fn one_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(4096));
    let mut space = false;
    for c in s.chars() {
        let c = if c.is_control() || c.is_whitespace() {
            ' '
        } else {
            c
        };
        if c == ' ' {
            if !space && !out.is_empty() {
                out.push(' ');
            }
            space = true;
        } else {
            out.push(c);
            space = false;
        }
    }
    if out.ends_with(' ') {
        out.pop();
    }
    out
}

/// The bytes a character takes inside a JSON string, as serde_json writes it.
fn json_char_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
        c if (c as u32) < 0x20 => 6,
        c => c.len_utf8(),
    }
}

/// The bytes `s` takes inside a JSON string (without the quotes).
pub(super) fn json_len(s: &str) -> usize {
    s.chars().map(json_char_len).sum()
}

/// The longest prefix of `s` that takes at most `budget` bytes inside a JSON string.
pub(super) fn json_prefix(s: &str, budget: usize) -> &str {
    let mut used = 0;
    for (at, c) in s.char_indices() {
        used += json_char_len(c);
        if used > budget {
            return &s[..at];
        }
    }
    s
}

/// Event data as people read it: pretty JSON, or nothing for `null` and `{}`.
pub(super) fn pretty(data: &Value) -> String {
    match data {
        Value::Null => String::new(),
        Value::Object(map) if map.is_empty() => String::new(),
        // Serialising a `Value` cannot fail: its map keys are strings.
        _ => serde_json::to_string_pretty(data).unwrap_or_default(),
    }
}

/// `key` when it fits in `max` bytes; else as much of it as leaves room for `:` and the hex
/// SHA-256 of the whole key, so that the result is deterministic, at most `max` bytes, and two
/// long keys differ when they do (`max` must exceed 65).
pub(super) fn capped_key(key: &str, max: usize) -> String {
    if key.len() <= max {
        return key.to_owned();
    }
    let hash = hex::encode(digest::digest(&digest::SHA256, key.as_bytes()));
    let prefix = &key[..floor_boundary(key, max.saturating_sub(hash.len() + 1))];
    format!("{prefix}:{hash}")
}

/// `s` percent-encoded as one URL path segment (everything but RFC 3986's unreserved
/// characters).
pub(super) fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for byte in s.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clipping_counts_characters_and_says_so() {
        assert_eq!(clip("short", 10), "short");
        assert_eq!(clip("exactly 10", 10), "exactly 10");
        let clipped = clip("ééééééééééééééééééééé", 16);
        assert_eq!(clipped.chars().count(), 16);
        assert_eq!(clipped, "ééé… [truncated]");
        assert_eq!(clip("abcdef", 3), "… [");
        assert_eq!(clip("abcdef", 0), "");
    }

    #[test]
    fn byte_clipping_stays_on_character_boundaries() {
        let s = "€".repeat(100);
        let clipped = clip_bytes(&s, 50);
        assert!(clipped.len() <= 50);
        assert!(clipped.ends_with(MARK));
        assert_eq!(clip_bytes("abc", 3), "abc");
    }

    #[test]
    fn one_line_removes_line_breaks_and_control_characters() {
        assert_eq!(
            one_line("  a\r\nBcc: x@y\t\u{0}b  "),
            "a Bcc: x@y b".to_owned()
        );
        assert_eq!(one_line("\n\n"), "");
    }

    #[test]
    fn json_lengths_match_serde_json() {
        for s in [
            "plain",
            "quote \" and \\",
            "new\nline\u{1}\u{1f}",
            "é€😀",
            "",
        ] {
            let encoded = serde_json::to_string(s).expect("a string");
            assert_eq!(json_len(s), encoded.len() - 2, "{s:?}");
        }
        assert_eq!(json_prefix("ab\"cd", 3), "ab");
        assert_eq!(json_prefix("ab\"cd", 4), "ab\"");
        assert_eq!(json_prefix("abc", 10), "abc");
    }

    #[test]
    fn capped_keys_are_deterministic_and_bounded() {
        assert_eq!(capped_key("short", 255), "short");
        let long = "k".repeat(300);
        let capped = capped_key(&long, 255);
        assert_eq!(capped.len(), 255);
        assert_eq!(capped, capped_key(&long, 255));
        let other = format!("{}j", "k".repeat(299));
        assert_ne!(capped, capped_key(&other, 255));
        let wide = "é".repeat(200);
        assert!(capped_key(&wide, 100).len() <= 100);
    }

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(path_segment("job_1-a.b~c"), "job_1-a.b~c");
        assert_eq!(path_segment("a/b?c#d é"), "a%2Fb%3Fc%23d%20%C3%A9");
    }
}
