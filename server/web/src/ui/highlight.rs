//! Syntax highlighting of a library file for the dashboard (CONTRACT.md §20), on the server.
//!
//! A file is cut into lines and each line into spans of a few kinds (comment, string, number,
//! keyword, plain); the template writes each span's text escaped by askama inside an element
//! whose class is one of a fixed set, so nothing a bundle holds ever becomes markup, and the
//! page needs no script to show it. The rules are a lexer's first approximation (shell,
//! Python, JSON, and plain text), enough to read a script, not a parser.

/// What a span is; its class in the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Anything else.
    Plain,
    /// A comment to the end of the line.
    Comment,
    /// A quoted string (on one line).
    Str,
    /// A number.
    Number,
    /// A keyword of the language.
    Keyword,
}

impl Kind {
    /// The CSS class.
    pub fn class(self) -> &'static str {
        match self {
            Self::Plain => "hl-p",
            Self::Comment => "hl-c",
            Self::Str => "hl-s",
            Self::Number => "hl-n",
            Self::Keyword => "hl-k",
        }
    }
}

/// A run of text of one kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    /// Its kind's class.
    pub class: &'static str,
    /// The text (escaped by the template).
    pub text: String,
}

/// One line: its number (from 1) and spans.
#[derive(Debug, Clone)]
pub struct Line {
    /// From 1.
    pub number: usize,
    /// Its spans.
    pub spans: Vec<Span>,
}

/// The languages told apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lang {
    Shell,
    Python,
    Json,
    Text,
}

const SHELL: &[&str] = &[
    "if", "then", "else", "elif", "fi", "for", "while", "until", "do", "done", "case", "esac",
    "in", "function", "return", "exit", "local", "export", "set", "echo", "printf", "cd",
    "readonly", "shift", "trap", "source",
];
const PYTHON: &[&str] = &[
    "and", "as", "assert", "async", "await", "break", "class", "continue", "def", "del", "elif",
    "else", "except", "finally", "for", "from", "global", "if", "import", "in", "is", "lambda",
    "None", "nonlocal", "not", "or", "pass", "raise", "return", "True", "False", "try", "while",
    "with", "yield", "print",
];
const JSON_WORDS: &[&str] = &["true", "false", "null"];

fn lang_of(path: &str, text: &str) -> Lang {
    let first = text.lines().next().unwrap_or("");
    let ext = path.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some("sh" | "bash" | "zsh") => Lang::Shell,
        Some("py") => Lang::Python,
        Some("json") => Lang::Json,
        _ if first.starts_with("#!") && first.contains("python") => Lang::Python,
        _ if first.starts_with("#!") => Lang::Shell,
        _ => Lang::Text,
    }
}

/// The lines of `text` (a file at `path`), highlighted.
pub fn highlight(path: &str, text: &str) -> Vec<Line> {
    let lang = lang_of(path, text);
    text.lines()
        .enumerate()
        .map(|(i, line)| Line {
            number: i + 1,
            spans: spans(lang, line),
        })
        .collect()
}

fn push(spans: &mut Vec<Span>, kind: Kind, text: &str) {
    if text.is_empty() {
        return;
    }
    if let Some(last) = spans.last_mut()
        && last.class == kind.class()
    {
        last.text.push_str(text);
        return;
    }
    spans.push(Span {
        class: kind.class(),
        text: text.to_owned(),
    });
}

fn spans(lang: Lang, line: &str) -> Vec<Span> {
    let mut out = Vec::new();
    if lang == Lang::Text {
        push(&mut out, Kind::Plain, line);
        return out;
    }
    let words = match lang {
        Lang::Shell => SHELL,
        Lang::Python => PYTHON,
        _ => JSON_WORDS,
    };
    let bytes = line.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        // Only ASCII bytes start a token, so every cut is on a character boundary.
        if c == b'#' && lang != Lang::Json && (i == 0 || !bytes[i - 1].is_ascii_alphanumeric()) {
            push(&mut out, Kind::Comment, &line[i..]);
            break;
        }
        if c == b'"' || c == b'\'' {
            let mut j = i + 1;
            while j < bytes.len() && bytes[j] != c {
                if bytes[j] == b'\\' && c == b'"' {
                    j += 1;
                }
                j += 1;
            }
            let end = (j + 1).min(bytes.len());
            push(&mut out, Kind::Str, &line[i..end]);
            i = end;
            continue;
        }
        if c.is_ascii_digit() && (i == 0 || !is_word(bytes[i - 1])) {
            let mut j = i;
            while j < bytes.len() && (bytes[j].is_ascii_alphanumeric() || bytes[j] == b'.') {
                j += 1;
            }
            push(&mut out, Kind::Number, &line[i..j]);
            i = j;
            continue;
        }
        if is_word(c) {
            let mut j = i;
            while j < bytes.len() && is_word(bytes[j]) {
                j += 1;
            }
            let word = &line[i..j];
            let kind = if words.contains(&word) {
                Kind::Keyword
            } else {
                Kind::Plain
            };
            push(&mut out, kind, word);
            i = j;
            continue;
        }
        // Anything else up to the next byte that may start a token.
        let mut j = i + 1;
        while j < bytes.len() && !is_start(bytes[j]) {
            j += 1;
        }
        push(&mut out, Kind::Plain, &line[i..j]);
        i = j;
    }
    out
}

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

fn is_start(b: u8) -> bool {
    is_word(b) || matches!(b, b'#' | b'"' | b'\'')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classes(path: &str, line: &str) -> Vec<(&'static str, String)> {
        highlight(path, line)[0]
            .spans
            .iter()
            .map(|s| (s.class, s.text.clone()))
            .collect()
    }

    #[test]
    fn shell_keywords_strings_and_comments_are_told_apart() {
        let got = classes("run.sh", "if [ \"$X\" = 1 ]; then echo 'hé'; fi # done");
        assert_eq!(got[0], ("hl-k", "if".into()));
        assert!(got.contains(&("hl-s", "\"$X\"".into())), "{got:?}");
        assert!(got.contains(&("hl-n", "1".into())), "{got:?}");
        assert!(got.contains(&("hl-s", "'hé'".into())), "{got:?}");
        assert_eq!(got.last().expect("a comment"), &("hl-c", "# done".into()));
        // Every byte is kept, in order.
        let text: String = got.iter().map(|(_, t)| t.as_str()).collect();
        assert_eq!(text, "if [ \"$X\" = 1 ]; then echo 'hé'; fi # done");
    }

    #[test]
    fn markup_stays_text_and_unknown_files_are_plain() {
        let got = classes("notes.txt", "<script>alert(1)</script>");
        assert_eq!(got, vec![("hl-p", "<script>alert(1)</script>".into())]);
        let unterminated = classes("a.py", "x = \"open");
        assert_eq!(unterminated.last().expect("a string").1, "\"open");
        assert_eq!(highlight("a.py", "a\nb\n").len(), 2);
    }
}
