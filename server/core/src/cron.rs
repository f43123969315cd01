//! When a schedule fires: its `cron` and `timezone` (CONTRACT.md §10) turned into instants.
//!
//! Why a module of our own rather than a scheduler crate: the schedules' next fire is stored
//! (`next_fire_at`) and claimed across restarts and nodes, so all we need is a pure function
//! "the first fire after this instant", and the rules for daylight saving must be ours to state
//! and test. `tokio-cron-scheduler` keeps a fixed UTC offset per job; croner walks the wall clock
//! well, so it is used for exactly that: finding the next *local* (naive) time that matches the
//! pattern. Mapping a local time to an instant is done here, with chrono-tz, by one rule
//! (CONTRACT.md §10):
//!
//! - a local time that does not exist (clocks jump forward) fires once, at the first instant
//!   after the gap (several such times collapse into that one fire);
//! - a local time that occurs twice (clocks go back) fires once, at its first occurrence, when
//!   the hour field is fixed (no `*` and no step: `30 1 * * *`, `0,30 1-2 * * *`);
//! - when the hour field has a `*` or a step (`*/15 * * * *`, `0 */2 * * *`), it fires at every
//!   matching instant, in both copies of the repeated hour.
//!
//! croner applies a similar rule but decides "fixed" on the minute *and* the hour, and lets
//! interval patterns skip a gap; deciding here keeps the documented rule exact.
//!
//! The grammar is plain 5-field Vixie cron; croner's extensions (seconds, years, `L`, `W`, `#`,
//! `?`, `+`) are refused by our own per-field parser, whose messages name the field and the
//! value. The parsed sets are handed to croner as explicit lists, so croner never sees user text.
//!
//! `@every <n><s|m|h|d>` fires at the multiples of the interval since the Unix epoch, in UTC,
//! whatever the time zone: `@every 1h` fires on the UTC hour even in a zone offset by 5:30.
//!
//! Cost: one `next_after` is one or two croner walks and a time zone lookup or two; see the
//! ignored `next_after_cost` test (about a microsecond or two in a release build).

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Datelike, LocalResult, NaiveDateTime, Offset, TimeZone, Utc};
use chrono_tz::Tz;

/// Longest `cron` text accepted (it comes from the network).
pub const MAX_CRON_LEN: usize = 200;
/// Longest `timezone` text accepted (the longest IANA name is about 30 characters).
const MAX_TIMEZONE_LEN: usize = 64;
/// Shortest `@every` interval.
const MIN_EVERY_SECS: u64 = 10;
/// Longest `@every` interval.
const MAX_EVERY_SECS: u64 = 366 * 86_400;
/// Fires are not searched past this year (croner's own limit).
const LAST_YEAR: i32 = 5000;

/// A validated recurrence: a 5-field cron pattern (or @-shortcut) in an IANA time zone, or a fixed interval.
#[derive(Debug, Clone)]
pub struct Recurrence {
    kind: Kind,
    tz: Tz,
}

#[derive(Debug, Clone)]
enum Kind {
    Cron {
        /// The pattern as explicit lists, in croner's form (boxed: it is large).
        cron: Box<croner::Cron>,
        /// Whether the hour field has no `*` and no step (the overlap rule).
        hour_fixed: bool,
    },
    Every {
        secs: i64,
    },
}

/// What is wrong with a schedule's `cron` or `timezone`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecurrenceError {
    /// "cron" or "timezone".
    pub field: &'static str,
    /// Says what is wrong and where, e.g. "field 2 (hour): 25 is out of range 0-23".
    pub message: String,
}

impl RecurrenceError {
    fn cron(message: impl Into<String>) -> Self {
        RecurrenceError {
            field: "cron",
            message: message.into(),
        }
    }
}

impl std::fmt::Display for RecurrenceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for RecurrenceError {}

impl Recurrence {
    /// Parses and validates. `timezone` is an IANA name (the caller passes "UTC" by default).
    pub fn parse(cron: &str, timezone: &str) -> Result<Self, RecurrenceError> {
        let tz = parse_timezone(timezone)?;
        let kind = parse_cron(cron)?;
        Ok(Recurrence { kind, tz })
    }

    /// The first fire strictly after `after` (None when there is none before year 5000).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let next = match &self.kind {
            Kind::Every { secs } => {
                let k = after.timestamp().div_euclid(*secs).checked_add(1)?;
                DateTime::from_timestamp(k.checked_mul(*secs)?, 0)?
            }
            Kind::Cron { cron, hour_fixed } => self.next_cron(cron, *hour_fixed, after)?,
        };
        (next.year() < LAST_YEAR).then_some(next)
    }

    /// How many fires lie in (after, until], counting at most `cap` (for "N fires were missed").
    pub fn count_between(&self, after: DateTime<Utc>, until: DateTime<Utc>, cap: usize) -> usize {
        if let Kind::Every { secs } = self.kind {
            if until <= after {
                return 0;
            }
            let first = after.timestamp().div_euclid(secs);
            let last = until.timestamp().div_euclid(secs);
            let n = usize::try_from(last.saturating_sub(first)).unwrap_or(usize::MAX);
            return n.min(cap);
        }
        let mut n = 0;
        let mut at = after;
        while n < cap {
            match self.next_after(at) {
                Some(next) if next <= until => {
                    n += 1;
                    at = next;
                }
                _ => break,
            }
        }
        n
    }

    /// The fires in (after, until], at most `cap` of them, oldest first.
    pub fn fires_between(
        &self,
        after: DateTime<Utc>,
        until: DateTime<Utc>,
        cap: usize,
    ) -> Vec<DateTime<Utc>> {
        let mut fires = Vec::new();
        let mut at = after;
        while fires.len() < cap {
            match self.next_after(at) {
                Some(next) if next <= until => {
                    fires.push(next);
                    at = next;
                }
                _ => break,
            }
        }
        fires
    }

    /// The schedule's zone.
    pub fn timezone(&self) -> chrono_tz::Tz {
        self.tz
    }

    /// `at` as local time in the schedule's zone (for previews).
    pub fn local(&self, at: DateTime<Utc>) -> DateTime<chrono::FixedOffset> {
        at.with_timezone(&self.tz).fixed_offset()
    }

    /// `Some(interval)` for `@every`.
    pub fn interval(&self) -> Option<std::time::Duration> {
        match self.kind {
            Kind::Every { secs } => Some(Duration::from_secs(secs.unsigned_abs())),
            Kind::Cron { .. } => None,
        }
    }

    /// Walks the matching local times from a little before `after`'s and keeps the earliest
    /// instant past `after`.
    ///
    /// Local times and instants keep their order except in a repeated hour, where a later local
    /// time in the first copy comes before an earlier one in the second. So when clocks go back
    /// within a day of `after`, the walk starts that much earlier (`back`) and goes on until no
    /// later local time can beat the best instant found; otherwise the first hit is the answer.
    fn next_cron(
        &self,
        cron: &croner::Cron,
        hour_fixed: bool,
        after: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        let tz = self.tz;
        let offset_now = offset_secs(tz, after);
        let offset_later = offset_secs(tz, after.checked_add_signed(chrono::TimeDelta::days(1))?);
        // How far a repeated range just ahead reaches back in local time (at most a day).
        let back = chrono::TimeDelta::seconds((offset_now - offset_later).clamp(0, 86_400));
        let mut cursor = after
            .with_timezone(&tz)
            .naive_local()
            .checked_sub_signed(back)?;
        let mut best: Option<(DateTime<Utc>, NaiveDateTime)> = None;
        // Bounded: at most one match a minute over the `back` window plus a few.
        for _ in 0..(24 * 60 + 64) {
            let local = cron.find_next_occurrence(&cursor, false).ok()?;
            if let Some((_, best_local)) = best
                && local > best_local.checked_add_signed(back)?
            {
                break;
            }
            for instant in instants(tz, local, hour_fixed).into_iter().flatten() {
                if instant > after && best.is_none_or(|(b, _)| instant < b) {
                    best = Some((instant, local));
                }
            }
            if best.is_some() && back.is_zero() {
                break;
            }
            cursor = local;
        }
        best.map(|(instant, _)| instant)
    }
}

/// The zone's offset from UTC at `at`, in seconds.
fn offset_secs(tz: Tz, at: DateTime<Utc>) -> i64 {
    i64::from(
        tz.offset_from_utc_datetime(&at.naive_utc())
            .fix()
            .local_minus_utc(),
    )
}

/// The instants at which the local time `local` fires, by the rule in the module doc.
fn instants(tz: Tz, local: NaiveDateTime, hour_fixed: bool) -> [Option<DateTime<Utc>>; 2] {
    match tz.from_local_datetime(&local) {
        LocalResult::Single(t) => [Some(t.with_timezone(&Utc)), None],
        LocalResult::Ambiguous(first, second) => {
            let second = (!hour_fixed).then(|| second.with_timezone(&Utc));
            [Some(first.with_timezone(&Utc)), second]
        }
        LocalResult::None => [gap_end(tz, local), None],
    }
}

/// The first instant after the gap that swallows the local time `local`.
fn gap_end(tz: Tz, local: NaiveDateTime) -> Option<DateTime<Utc>> {
    let minute = chrono::TimeDelta::minutes(1);
    let second = chrono::TimeDelta::seconds(1);
    // Step by minutes to the first local time that exists (gaps last an hour or so; a day at
    // most, when a zone moved across the date line), then back by seconds to its very start.
    let mut probe = local;
    for _ in 0..(2 * 24 * 60) {
        probe = probe.checked_add_signed(minute)?;
        if let Some(t) = tz.from_local_datetime(&probe).earliest() {
            let mut start = t;
            for _ in 0..60 {
                let earlier = probe.checked_sub_signed(second)?;
                match tz.from_local_datetime(&earlier).earliest() {
                    Some(e) => {
                        start = e;
                        probe = earlier;
                    }
                    None => break,
                }
            }
            return Some(start.with_timezone(&Utc));
        }
    }
    None
}

fn parse_timezone(timezone: &str) -> Result<Tz, RecurrenceError> {
    let err = |message: String| RecurrenceError {
        field: "timezone",
        message,
    };
    if timezone.is_empty() {
        return Err(err(
            "is empty; expected an IANA name such as UTC or Europe/Paris".into(),
        ));
    }
    if timezone.chars().count() > MAX_TIMEZONE_LEN {
        return Err(err(format!("is longer than {MAX_TIMEZONE_LEN} characters")));
    }
    Tz::from_str(timezone).map_err(|_| err(format!("unknown IANA time zone '{timezone}'")))
}

fn parse_cron(text: &str) -> Result<Kind, RecurrenceError> {
    if text.chars().count() > MAX_CRON_LEN {
        return Err(RecurrenceError::cron(format!(
            "is longer than {MAX_CRON_LEN} characters"
        )));
    }
    if !text.is_ascii() {
        return Err(RecurrenceError::cron(
            "contains a character that is not ASCII",
        ));
    }
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(RecurrenceError::cron(
            "is empty; expected 5 fields (minute hour day-of-month month day-of-week) or a \
             shortcut such as @daily",
        ));
    }
    let pattern: String;
    let source = if trimmed.starts_with('@') {
        let mut words = trimmed.split_ascii_whitespace();
        let word = words.next().unwrap_or_default().to_ascii_lowercase();
        if word == "@every" {
            return parse_every(words.next(), words.next());
        }
        if let Some(extra) = words.next() {
            return Err(RecurrenceError::cron(format!(
                "unexpected '{extra}' after {word}"
            )));
        }
        pattern = match word.as_str() {
            "@hourly" => "0 * * * *",
            "@daily" | "@midnight" => "0 0 * * *",
            "@weekly" => "0 0 * * 0",
            "@monthly" => "0 0 1 * *",
            "@yearly" | "@annually" => "0 0 1 1 *",
            _ => {
                return Err(RecurrenceError::cron(format!(
                    "unknown shortcut '{word}'; expected @hourly, @daily, @midnight, @weekly, \
                     @monthly, @yearly, @annually or @every <n><s|m|h|d>"
                )));
            }
        }
        .to_string();
        pattern.as_str()
    } else {
        trimmed
    };
    let fields: Vec<&str> = source.split_ascii_whitespace().collect();
    if fields.len() != 5 {
        return Err(RecurrenceError::cron(format!(
            "expected 5 fields (minute hour day-of-month month day-of-week), got {}",
            fields.len()
        )));
    }
    let mut sets = [0u64; 5];
    for (i, (spec, text)) in FIELDS.iter().zip(&fields).enumerate() {
        sets[i] = parse_field(spec, text)
            .map_err(|m| RecurrenceError::cron(format!("field {} ({}): {m}", i + 1, spec.name)))?;
    }
    let parsed = Fields {
        sets,
        dom_star: fields[2] == "*",
        dow_star: fields[4] == "*",
    };
    parsed.check_fires()?;
    let hour_fixed = !fields[1].contains(['*', '/']);
    let canonical = parsed.croner_pattern(&fields);
    // Our parser already refused everything croner could object to; an error here would be a
    // bug, reported rather than panicked on.
    let cron = croner::parser::CronParser::new()
        .parse(&canonical)
        .map_err(|e| RecurrenceError::cron(format!("could not be compiled ({e})")))?;
    Ok(Kind::Cron {
        cron: Box::new(cron),
        hour_fixed,
    })
}

fn parse_every(word: Option<&str>, extra: Option<&str>) -> Result<Kind, RecurrenceError> {
    let err = |m: String| RecurrenceError::cron(format!("@every: {m}"));
    let Some(word) = word else {
        return Err(err(
            "needs an interval, e.g. @every 30s, @every 5m, @every 2h, @every 1d".into(),
        ));
    };
    if let Some(extra) = extra {
        return Err(err(format!("unexpected '{extra}' after the interval")));
    }
    let bad = || {
        err(format!(
            "'{word}' is not an interval; write a number and one of s, m, h, d, e.g. 30s"
        ))
    };
    let (digits, unit) = word.split_at(word.len().saturating_sub(1));
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let unit_secs: u64 = match unit.to_ascii_lowercase().as_str() {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    let secs = digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit_secs))
        .unwrap_or(u64::MAX);
    if secs < MIN_EVERY_SECS {
        return Err(err(format!("{word} is shorter than the minimum of 10s")));
    }
    if secs > MAX_EVERY_SECS {
        return Err(err(format!("{word} is longer than the maximum of 366d")));
    }
    Ok(Kind::Every {
        secs: i64::try_from(secs).unwrap_or(i64::MAX),
    })
}

/// One of the five fields: its name, range and value names.
struct FieldSpec {
    name: &'static str,
    min: u32,
    max: u32,
    /// Names for `min`, `min + 1`, … (months from 1, weekdays from 0).
    names: &'static [&'static str],
    /// What a value may be, for messages.
    expected: &'static str,
}

const FIELDS: [FieldSpec; 5] = [
    FieldSpec {
        name: "minute",
        min: 0,
        max: 59,
        names: &[],
        expected: "0-59",
    },
    FieldSpec {
        name: "hour",
        min: 0,
        max: 23,
        names: &[],
        expected: "0-23",
    },
    FieldSpec {
        name: "day-of-month",
        min: 1,
        max: 31,
        names: &[],
        expected: "1-31",
    },
    FieldSpec {
        name: "month",
        min: 1,
        max: 12,
        names: &[
            "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
        ],
        expected: "1-12 or JAN-DEC",
    },
    FieldSpec {
        name: "day-of-week",
        min: 0,
        max: 7,
        names: &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"],
        expected: "0-7 or SUN-SAT",
    },
];

/// Parses one field into a bit set of its values (day-of-week 7 folded onto 0).
fn parse_field(spec: &FieldSpec, text: &str) -> Result<u64, String> {
    if let Some(c) = text.chars().find(|c| matches!(c, '?' | '#' | '+')) {
        let what = match c {
            '?' => "'?' (no specific value)",
            '#' => "'#' (nth weekday of the month)",
            _ => "'+' (day-of-month AND day-of-week)",
        };
        return Err(format!(
            "{what} is a croner/Quartz extension that Outpost does not accept"
        ));
    }
    if let Some(c) = text
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '*' | ',' | '-' | '/')))
    {
        return Err(format!("unexpected character '{c}' in '{text}'"));
    }
    // `*` for day-of-week means 0-6: 7 is only another name for Sunday.
    let star_max = if spec.max == 7 { 6 } else { spec.max };
    let mut set = 0u64;
    for item in text.split(',') {
        if item.is_empty() {
            return Err(format!("empty item in the list '{text}'"));
        }
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => (range, Some(parse_step(spec, item, step)?)),
            None => (item, None),
        };
        let (lo, hi) = if range == "*" {
            (spec.min, star_max)
        } else if let Some((a, b)) = range.split_once('-') {
            let (lo, hi) = (parse_value(spec, a)?, parse_value(spec, b)?);
            if lo > hi {
                return Err(format!(
                    "range {a}-{b} runs backwards; write the lower value first"
                ));
            }
            (lo, hi)
        } else {
            let v = parse_value(spec, range)?;
            // `N/S` runs from N to the end of the field, as in cronie.
            (v, if step.is_some() { spec.max.max(v) } else { v })
        };
        let step = step.unwrap_or(1);
        let mut v = lo;
        while v <= hi {
            let bit = if spec.max == 7 && v == 7 { 0 } else { v };
            set |= 1 << bit;
            v += step;
        }
    }
    Ok(set)
}

fn parse_step(spec: &FieldSpec, item: &str, step: &str) -> Result<u32, String> {
    let span = spec.max - spec.min;
    if step.is_empty() || !step.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("step '{step}' in '{item}' is not a number"));
    }
    match step.parse::<u32>() {
        Ok(0) => Err(format!("step 0 in '{item}' must be at least 1")),
        Ok(s) if s <= span => Ok(s),
        _ => Err(format!("step {step} in '{item}' is out of range 1-{span}")),
    }
}

fn parse_value(spec: &FieldSpec, token: &str) -> Result<u32, String> {
    if token.is_empty() {
        return Err("a range is missing a value".into());
    }
    if token.bytes().all(|b| b.is_ascii_digit()) {
        return match token.parse::<u32>() {
            Ok(v) if (spec.min..=spec.max).contains(&v) => Ok(v),
            _ => Err(format!("{token} is out of range {}-{}", spec.min, spec.max)),
        };
    }
    let upper = token.to_ascii_uppercase();
    if let Some(i) = spec.names.iter().position(|n| *n == upper) {
        let first = if spec.name == "month" { 1 } else { 0 };
        return Ok(first + i as u32);
    }
    // Quartz's L (last) and W (nearest weekday), as in `L`, `15W`, `LW`, `5L`, `FRIL`.
    let quartz = matches!(spec.name, "day-of-month" | "day-of-week")
        && (upper.ends_with('L') || upper.ends_with('W'))
        && upper
            .trim_end_matches(['L', 'W'])
            .chars()
            .all(|c| c.is_ascii_digit())
        || spec.name == "day-of-week"
            && upper.len() == 4
            && upper.ends_with('L')
            && spec.names.contains(&&upper[..3]);
    if quartz {
        return Err(format!(
            "'{token}': L (last) and W (nearest weekday) are croner/Quartz extensions that \
             Outpost does not accept"
        ));
    }
    if spec.names.is_empty() {
        Err(format!(
            "'{token}' is not a number (expected {})",
            spec.expected
        ))
    } else {
        Err(format!(
            "unknown name '{token}' (expected {})",
            spec.expected
        ))
    }
}

/// The five parsed fields, as bit sets.
struct Fields {
    sets: [u64; 5],
    /// Read by the tests' model only; croner gets the `*` itself.
    #[cfg_attr(not(test), allow(dead_code))]
    dom_star: bool,
    dow_star: bool,
}

impl Fields {
    /// Refuses a pattern no date can match (`0 0 30 2 *`). Only the day-of-month and month
    /// fields can conflict, and only when day-of-week is `*` (otherwise any weekday will do).
    fn check_fires(&self) -> Result<(), RecurrenceError> {
        if !self.dow_star {
            return Ok(());
        }
        // The longest each month can be (February: 29, in leap years).
        const LONGEST: [u32; 12] = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
        let days = self.sets[2];
        let months = self.sets[3];
        let fits = (1..=12u32)
            .filter(|m| months & (1 << m) != 0)
            .any(|m| (1..=LONGEST[(m - 1) as usize]).any(|d| days & (1 << d) != 0));
        if fits {
            return Ok(());
        }
        let list = |set: u64, range: std::ops::RangeInclusive<u32>| {
            range
                .filter(|v| set & (1 << v) != 0)
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
        };
        let months = list(months, 1..=12);
        Err(RecurrenceError::cron(format!(
            "never fires: no date matches day-of-month {} in month{} {}",
            list(days, 1..=31).join(","),
            if months.len() > 1 { "s" } else { "" },
            months.join(",")
        )))
    }

    /// The pattern as croner reads it: explicit lists, `*` kept where the user wrote `*` (croner
    /// ignores a `*` day field, and ORs two restricted day fields, as Vixie cron does).
    fn croner_pattern(&self, fields: &[&str]) -> String {
        let ranges = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 6)];
        let mut out = Vec::with_capacity(5);
        for (i, (set, (lo, hi))) in self.sets.iter().zip(ranges).enumerate() {
            if fields[i] == "*" {
                out.push("*".to_string());
                continue;
            }
            let values: Vec<String> = (lo..=hi)
                .filter(|v| set & (1u64 << v) != 0)
                .map(|v| v.to_string())
                .collect();
            out.push(values.join(","));
        }
        out.join(" ")
    }

    #[cfg(test)]
    fn matches(&self, local: NaiveDateTime) -> bool {
        use chrono::Timelike;
        let has = |i: usize, v: u32| self.sets[i] & (1u64 << v) != 0;
        let dom = has(2, local.day());
        let dow = has(4, local.weekday().num_days_from_sunday());
        let day = match (self.dom_star, self.dow_star) {
            (true, true) => true,
            (true, false) => dow,
            (false, true) => dom,
            (false, false) => dom || dow,
        };
        has(0, local.minute()) && has(1, local.hour()) && has(3, local.month()) && day
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Timelike;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("a test instant")
            .with_timezone(&Utc)
    }

    fn rec(cron: &str, tz: &str) -> Recurrence {
        Recurrence::parse(cron, tz).expect("a valid test pattern")
    }

    fn fires(cron: &str, tz: &str, from: &str, to: &str) -> Vec<String> {
        rec(cron, tz)
            .fires_between(utc(from), utc(to), 1000)
            .iter()
            .map(|t| t.format("%Y-%m-%dT%H:%MZ").to_string())
            .collect()
    }

    fn err(cron: &str, tz: &str) -> String {
        Recurrence::parse(cron, tz)
            .expect_err("an invalid test pattern")
            .to_string()
    }

    #[test]
    fn new_york_spring_gap_fires_at_three_edt() {
        assert_eq!(
            fires(
                "30 2 * * *",
                "America/New_York",
                "2026-03-07T00:00:00Z",
                "2026-03-10T00:00:00Z"
            ),
            [
                "2026-03-07T07:30Z",
                "2026-03-08T07:00Z",
                "2026-03-09T06:30Z"
            ]
        );
        // Asked from inside the day, just before the gap and at the fire itself.
        let r = rec("30 2 * * *", "America/New_York");
        assert_eq!(
            r.next_after(utc("2026-03-08T06:59:59Z")),
            Some(utc("2026-03-08T07:00:00Z"))
        );
        assert_eq!(
            r.next_after(utc("2026-03-08T07:00:00Z")),
            Some(utc("2026-03-09T06:30:00Z"))
        );
    }

    #[test]
    fn new_york_three_am_is_untouched_by_the_gap() {
        assert_eq!(
            fires(
                "0 3 * * *",
                "America/New_York",
                "2026-03-07T00:00:00Z",
                "2026-03-10T00:00:00Z"
            ),
            [
                "2026-03-07T08:00Z",
                "2026-03-08T07:00Z",
                "2026-03-09T07:00Z"
            ]
        );
    }

    #[test]
    fn new_york_repeated_hour_fires_a_fixed_time_once() {
        assert_eq!(
            fires(
                "30 1 * * *",
                "America/New_York",
                "2026-10-31T12:00:00Z",
                "2026-11-02T12:00:00Z"
            ),
            ["2026-11-01T05:30Z", "2026-11-02T06:30Z"]
        );
        let r = rec("30 1 * * *", "America/New_York");
        // From inside the first copy, after the fire, and from inside the second copy.
        for from in ["2026-11-01T05:45:00Z", "2026-11-01T06:10:00Z"] {
            assert_eq!(
                r.next_after(utc(from)),
                Some(utc("2026-11-02T06:30:00Z")),
                "from {from}"
            );
        }
        // A fixed hour with a stepped minute is still "fixed": the first copy only.
        assert_eq!(
            fires(
                "*/30 1 * * *",
                "America/New_York",
                "2026-11-01T04:00:00Z",
                "2026-11-01T08:00:00Z"
            ),
            ["2026-11-01T05:00Z", "2026-11-01T05:30Z"]
        );
    }

    #[test]
    fn new_york_repeated_hour_fires_a_wildcard_hour_in_both_copies() {
        let expected: Vec<String> = (0..9)
            .map(|i| {
                (utc("2026-11-01T05:00:00Z") + chrono::TimeDelta::minutes(15 * i))
                    .format("%Y-%m-%dT%H:%MZ")
                    .to_string()
            })
            .collect();
        assert_eq!(
            fires(
                "*/15 * * * *",
                "America/New_York",
                "2026-11-01T04:50:00Z",
                "2026-11-01T07:00:00Z"
            ),
            expected
        );
        // From any point inside the overlap, the very next quarter hour.
        let r = rec("*/15 * * * *", "America/New_York");
        for (from, next) in [
            ("2026-11-01T05:20:00Z", "2026-11-01T05:30:00Z"),
            ("2026-11-01T05:50:00Z", "2026-11-01T06:00:00Z"),
            ("2026-11-01T06:10:00Z", "2026-11-01T06:15:00Z"),
            ("2026-11-01T06:45:00Z", "2026-11-01T07:00:00Z"),
        ] {
            assert_eq!(r.next_after(utc(from)), Some(utc(next)), "from {from}");
        }
        // 01:00 and 01:30 local, both copies, as instants in order.
        let local: Vec<String> = r
            .fires_between(utc("2026-11-01T04:59:00Z"), utc("2026-11-01T06:30:00Z"), 10)
            .into_iter()
            .map(|t| r.local(t).format("%H:%M%:z").to_string())
            .collect();
        assert_eq!(
            local,
            [
                "01:00-04:00",
                "01:15-04:00",
                "01:30-04:00",
                "01:45-04:00",
                "01:00-05:00",
                "01:15-05:00",
                "01:30-05:00"
            ]
        );
    }

    #[test]
    fn sao_paulo_skipped_midnight_fires_at_one() {
        assert_eq!(
            fires(
                "0 0 * * *",
                "America/Sao_Paulo",
                "2018-11-02T12:00:00Z",
                "2018-11-05T12:00:00Z"
            ),
            [
                "2018-11-03T03:00Z",
                "2018-11-04T03:00Z",
                "2018-11-05T02:00Z"
            ]
        );
        let r = rec("@daily", "America/Sao_Paulo");
        let fire = r.next_after(utc("2018-11-03T12:00:00Z")).expect("a fire");
        assert_eq!(r.local(fire).to_rfc3339(), "2018-11-04T01:00:00-02:00");
    }

    #[test]
    fn lord_howe_half_hour_gap() {
        // 2026-10-04 02:00 +10:30 becomes 02:30 +11:00.
        let r = rec("15 2 * * *", "Australia/Lord_Howe");
        let fire = r.next_after(utc("2026-10-03T12:00:00Z")).expect("a fire");
        assert_eq!(r.local(fire).to_rfc3339(), "2026-10-04T02:30:00+11:00");
        assert_eq!(fire, utc("2026-10-03T15:30:00Z"));
        // The day after is back to 02:15.
        let next = r.next_after(fire).expect("a fire");
        assert_eq!(r.local(next).to_rfc3339(), "2026-10-05T02:15:00+11:00");
    }

    #[test]
    fn lord_howe_half_hour_overlap() {
        // 2026-04-05 02:00 +11:00 becomes 01:30 +10:30: 01:30-02:00 happens twice.
        assert_eq!(
            fires(
                "45 1 * * *",
                "Australia/Lord_Howe",
                "2026-04-04T12:00:00Z",
                "2026-04-05T12:00:00Z"
            ),
            ["2026-04-04T14:45Z"]
        );
        let r = rec("*/15 * * * *", "Australia/Lord_Howe");
        let local: Vec<String> = r
            .fires_between(utc("2026-04-04T14:10:00Z"), utc("2026-04-04T15:30:00Z"), 10)
            .into_iter()
            .map(|t| r.local(t).format("%H:%M%:z").to_string())
            .collect();
        assert_eq!(
            local,
            [
                "01:15+11:00",
                "01:30+11:00",
                "01:45+11:00",
                "01:30+10:30",
                "01:45+10:30",
                "02:00+10:30"
            ]
        );
    }

    #[test]
    fn every_is_aligned_on_the_epoch_whatever_the_zone() {
        let r = rec("@every 7m", "UTC");
        assert_eq!(r.interval(), Some(Duration::from_secs(420)));
        let next = r.next_after(utc("2026-05-05T10:00:00Z")).expect("a fire");
        assert_eq!(next.timestamp() % 420, 0);
        assert!(next > utc("2026-05-05T10:00:00Z"));
        assert!(next <= utc("2026-05-05T10:07:00Z"));
        // A fire's own instant is not "after" it.
        assert_eq!(
            r.next_after(next),
            Some(next + chrono::TimeDelta::minutes(7))
        );
        // On the UTC hour even where the zone is 5:30 ahead.
        let r = rec("@EVERY 1h", "Asia/Kolkata");
        assert_eq!(
            r.next_after(utc("2026-01-01T00:10:00.5Z")),
            Some(utc("2026-01-01T01:00:00Z"))
        );
        assert_eq!(
            r.count_between(
                utc("2026-01-01T00:00:00Z"),
                utc("2026-01-02T00:00:00Z"),
                1000
            ),
            24
        );
        assert_eq!(
            r.count_between(utc("2026-01-01T00:00:00Z"), utc("2026-01-02T00:00:00Z"), 5),
            5
        );
        assert_eq!(
            r.fires_between(utc("2026-01-01T00:00:00Z"), utc("2026-01-01T03:00:00Z"), 10),
            [
                utc("2026-01-01T01:00:00Z"),
                utc("2026-01-01T02:00:00Z"),
                utc("2026-01-01T03:00:00Z")
            ]
        );
        assert_eq!(
            rec("@every 1d", "UTC").interval(),
            Some(Duration::from_secs(86_400))
        );
        assert_eq!(
            rec("@every 10s", "UTC").interval(),
            Some(Duration::from_secs(10))
        );
        assert_eq!(rec("@daily", "UTC").interval(), None);
    }

    #[test]
    fn shortcuts() {
        let from = "2026-06-01T00:00:00Z";
        assert_eq!(
            fires("@daily", "Europe/Paris", from, "2026-06-03T00:00:00Z"),
            ["2026-06-01T22:00Z", "2026-06-02T22:00Z"]
        );
        assert_eq!(
            fires("@midnight", "UTC", from, "2026-06-02T12:00:00Z"),
            ["2026-06-02T00:00Z"]
        );
        assert_eq!(
            fires("@Hourly", "UTC", from, "2026-06-01T02:30:00Z"),
            ["2026-06-01T01:00Z", "2026-06-01T02:00Z"]
        );
        // 2026-06-07 is a Sunday.
        assert_eq!(
            fires("@weekly", "UTC", from, "2026-06-15T00:00:00Z"),
            ["2026-06-07T00:00Z", "2026-06-14T00:00Z"]
        );
        assert_eq!(
            fires("@monthly", "UTC", from, "2026-08-01T00:00:00Z"),
            ["2026-07-01T00:00Z", "2026-08-01T00:00Z"]
        );
        for yearly in ["@yearly", "@annually"] {
            assert_eq!(
                fires(yearly, "UTC", from, "2028-01-01T00:00:00Z"),
                ["2027-01-01T00:00Z", "2028-01-01T00:00Z"]
            );
        }
    }

    #[test]
    fn names_lists_ranges_steps() {
        // 2026-01-01 is a Thursday.
        assert_eq!(
            fires(
                "0 9-17/4 * JAN,jul Mon-FRI",
                "UTC",
                "2026-01-01T00:00:00Z",
                "2026-01-05T10:00:00Z"
            ),
            [
                "2026-01-01T09:00Z",
                "2026-01-01T13:00Z",
                "2026-01-01T17:00Z",
                "2026-01-02T09:00Z",
                "2026-01-02T13:00Z",
                "2026-01-02T17:00Z",
                "2026-01-05T09:00Z"
            ]
        );
        assert_eq!(
            fires(
                "5,10-12,50/5 0 1 1 *",
                "UTC",
                "2026-01-01T00:00:00Z",
                "2026-01-01T01:00:00Z"
            ),
            [
                "2026-01-01T00:05Z",
                "2026-01-01T00:10Z",
                "2026-01-01T00:11Z",
                "2026-01-01T00:12Z",
                "2026-01-01T00:50Z",
                "2026-01-01T00:55Z"
            ]
        );
        // 7 and 0 are both Sunday; SUN-SAT names; months by name in a range with a step.
        for sunday in ["0 0 * * 0", "0 0 * * 7", "0 0 * * sun", "0 0 * * 6-7/1"] {
            let got = fires(
                sunday,
                "UTC",
                "2026-01-01T00:00:00Z",
                "2026-01-05T00:00:00Z",
            );
            assert!(
                got.contains(&"2026-01-04T00:00Z".to_string()),
                "{sunday}: {got:?}"
            );
        }
        assert_eq!(
            fires(
                "0 0 1 JAN-DEC/3 *",
                "UTC",
                "2026-01-01T00:00:00Z",
                "2026-12-31T00:00:00Z"
            ),
            [
                "2026-04-01T00:00Z",
                "2026-07-01T00:00Z",
                "2026-10-01T00:00Z"
            ]
        );
        // 29 February fires in leap years only.
        assert_eq!(
            fires(
                "0 0 29 2 *",
                "UTC",
                "2026-01-01T00:00:00Z",
                "2029-01-01T00:00:00Z"
            ),
            ["2028-02-29T00:00Z"]
        );
        // Surrounding and repeated whitespace is fine.
        assert_eq!(
            fires(
                "  0\t12  *  * * ",
                "UTC",
                "2026-01-01T00:00:00Z",
                "2026-01-01T23:00:00Z"
            ),
            ["2026-01-01T12:00Z"]
        );
    }

    #[test]
    fn day_of_month_or_day_of_week() {
        // Both restricted: either (Vixie). February 2026: Fridays 6, 13, 20, 27.
        assert_eq!(
            fires(
                "0 0 10 * FRI",
                "UTC",
                "2026-02-01T00:00:00Z",
                "2026-03-01T00:00:00Z"
            ),
            [
                "2026-02-06T00:00Z",
                "2026-02-10T00:00Z",
                "2026-02-13T00:00Z",
                "2026-02-20T00:00Z",
                "2026-02-27T00:00Z"
            ]
        );
        // A stepped day-of-month is restricted too (croner and this module: only `*` is not).
        assert_eq!(
            fires(
                "0 0 */10 * MON",
                "UTC",
                "2026-02-01T00:00:00Z",
                "2026-03-01T00:00:00Z"
            ),
            // (after, until]: 1 February itself is the start, 1 March the end.
            [
                "2026-02-02T00:00Z",
                "2026-02-09T00:00Z",
                "2026-02-11T00:00Z",
                "2026-02-16T00:00Z",
                "2026-02-21T00:00Z",
                "2026-02-23T00:00Z",
                "2026-03-01T00:00Z"
            ]
        );
        // One of them `*`: the other alone decides.
        assert_eq!(
            fires(
                "0 0 * * FRI",
                "UTC",
                "2026-02-01T00:00:00Z",
                "2026-02-14T00:00:00Z"
            ),
            ["2026-02-06T00:00Z", "2026-02-13T00:00Z"]
        );
        assert_eq!(
            fires(
                "0 0 10 * *",
                "UTC",
                "2026-02-01T00:00:00Z",
                "2026-03-01T00:00:00Z"
            ),
            ["2026-02-10T00:00Z"]
        );
    }

    #[test]
    fn bad_expressions_say_what_and_where() {
        let cases = [
            (
                "",
                "cron: is empty; expected 5 fields (minute hour day-of-month month day-of-week) \
                 or a shortcut such as @daily",
            ),
            (
                "   ",
                "cron: is empty; expected 5 fields (minute hour day-of-month month day-of-week) \
                 or a shortcut such as @daily",
            ),
            (
                "* * * *",
                "cron: expected 5 fields (minute hour day-of-month month day-of-week), got 4",
            ),
            (
                "0 0 * * * *",
                "cron: expected 5 fields (minute hour day-of-month month day-of-week), got 6",
            ),
            (
                "0 0 1 1 * 2026 x",
                "cron: expected 5 fields (minute hour day-of-month month day-of-week), got 7",
            ),
            (
                "0 25 * * *",
                "cron: field 2 (hour): 25 is out of range 0-23",
            ),
            (
                "60 * * * *",
                "cron: field 1 (minute): 60 is out of range 0-59",
            ),
            (
                "0 0 0 * *",
                "cron: field 3 (day-of-month): 0 is out of range 1-31",
            ),
            (
                "0 0 * 13 *",
                "cron: field 4 (month): 13 is out of range 1-12",
            ),
            (
                "0 0 * * 8",
                "cron: field 5 (day-of-week): 8 is out of range 0-7",
            ),
            (
                "99999999999999999999 * * * *",
                "cron: field 1 (minute): 99999999999999999999 is out of range 0-59",
            ),
            (
                "*/0 * * * *",
                "cron: field 1 (minute): step 0 in '*/0' must be at least 1",
            ),
            (
                "*/60 * * * *",
                "cron: field 1 (minute): step 60 in '*/60' is out of range 1-59",
            ),
            (
                "*/x * * * *",
                "cron: field 1 (minute): step 'x' in '*/x' is not a number",
            ),
            (
                "0 5-2 * * *",
                "cron: field 2 (hour): range 5-2 runs backwards; write the lower value first",
            ),
            (
                "0 0 * DEC-JAN *",
                "cron: field 4 (month): range DEC-JAN runs backwards; write the lower value first",
            ),
            (
                "0 0 1 FOO *",
                "cron: field 4 (month): unknown name 'FOO' (expected 1-12 or JAN-DEC)",
            ),
            (
                "0 0 * * MONDAY",
                "cron: field 5 (day-of-week): unknown name 'MONDAY' (expected 0-7 or SUN-SAT)",
            ),
            (
                "MON 0 * * *",
                "cron: field 1 (minute): 'MON' is not a number (expected 0-59)",
            ),
            (
                "0 0 1,,2 * *",
                "cron: field 3 (day-of-month): empty item in the list '1,,2'",
            ),
            (
                "0 0 1- * *",
                "cron: field 3 (day-of-month): a range is missing a value",
            ),
            (
                "0 0 1.5 * *",
                "cron: field 3 (day-of-month): unexpected character '.' in '1.5'",
            ),
            (
                "0 0 ? * MON",
                "cron: field 3 (day-of-month): '?' (no specific value) is a croner/Quartz \
                 extension that Outpost does not accept",
            ),
            (
                "0 0 * * 5#3",
                "cron: field 5 (day-of-week): '#' (nth weekday of the month) is a croner/Quartz \
                 extension that Outpost does not accept",
            ),
            (
                "0 0 1 * +MON",
                "cron: field 5 (day-of-week): '+' (day-of-month AND day-of-week) is a \
                 croner/Quartz extension that Outpost does not accept",
            ),
            (
                "0 0 L * *",
                "cron: field 3 (day-of-month): 'L': L (last) and W (nearest weekday) are \
                 croner/Quartz extensions that Outpost does not accept",
            ),
            (
                "0 0 15W * *",
                "cron: field 3 (day-of-month): '15W': L (last) and W (nearest weekday) are \
                 croner/Quartz extensions that Outpost does not accept",
            ),
            (
                "0 0 * * 5L",
                "cron: field 5 (day-of-week): '5L': L (last) and W (nearest weekday) are \
                 croner/Quartz extensions that Outpost does not accept",
            ),
            (
                "0 0 * * FRIL",
                "cron: field 5 (day-of-week): 'FRIL': L (last) and W (nearest weekday) are \
                 croner/Quartz extensions that Outpost does not accept",
            ),
            (
                "0 0 30 2 *",
                "cron: never fires: no date matches day-of-month 30 in month 2",
            ),
            (
                "0 0 31 4,6,9,11 *",
                "cron: never fires: no date matches day-of-month 31 in months 4,6,9,11",
            ),
            (
                "@every 1s",
                "cron: @every: 1s is shorter than the minimum of 10s",
            ),
            (
                "@every 9s",
                "cron: @every: 9s is shorter than the minimum of 10s",
            ),
            (
                "@every 367d",
                "cron: @every: 367d is longer than the maximum of 366d",
            ),
            (
                "@every 99999999999999999999d",
                "cron: @every: 99999999999999999999d is longer than the maximum of 366d",
            ),
            (
                "@every 5x",
                "cron: @every: '5x' is not an interval; write a number and one of s, m, h, d, \
                 e.g. 30s",
            ),
            (
                "@every m",
                "cron: @every: 'm' is not an interval; write a number and one of s, m, h, d, \
                 e.g. 30s",
            ),
            (
                "@every",
                "cron: @every: needs an interval, e.g. @every 30s, @every 5m, @every 2h, \
                 @every 1d",
            ),
            (
                "@every 5m 2",
                "cron: @every: unexpected '2' after the interval",
            ),
            ("@daily 3", "cron: unexpected '3' after @daily"),
            (
                "@fortnightly",
                "cron: unknown shortcut '@fortnightly'; expected @hourly, @daily, @midnight, \
                 @weekly, @monthly, @yearly, @annually or @every <n><s|m|h|d>",
            ),
            ("0 0 * * é", "cron: contains a character that is not ASCII"),
        ];
        for (cron, message) in cases {
            assert_eq!(err(cron, "UTC"), message, "for {cron:?}");
        }
        let long = format!("0 0 * * {}", "1,".repeat(100));
        assert_eq!(err(&long, "UTC"), "cron: is longer than 200 characters");
    }

    #[test]
    fn bad_time_zones() {
        assert_eq!(
            err("@daily", "Mars/Olympus"),
            "timezone: unknown IANA time zone 'Mars/Olympus'"
        );
        assert_eq!(
            err("@daily", ""),
            "timezone: is empty; expected an IANA name such as UTC or Europe/Paris"
        );
        assert_eq!(
            err("@daily", &"A".repeat(65)),
            "timezone: is longer than 64 characters"
        );
        let e = Recurrence::parse("@daily", "Nowhere").expect_err("unknown");
        assert_eq!(e.field, "timezone");
        // The time zone is checked first: both wrong names the zone.
        assert_eq!(
            Recurrence::parse("nope", "Nowhere")
                .map(|_| ())
                .map_err(|e| e.field),
            Err("timezone")
        );
        assert_eq!(
            rec("@daily", "Europe/Paris").timezone(),
            chrono_tz::Europe::Paris
        );
    }

    #[test]
    fn garbage_never_panics() {
        // A small deterministic generator over the characters cron text is made of.
        let alphabet: Vec<char> = "0123456789*/,- LW#?+@abcdefhmsyJANFEBMONSUNtz\té"
            .chars()
            .collect();
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let after = utc("2026-03-08T06:00:00Z");
        for _ in 0..20_000 {
            let len = (next() % 24) as usize;
            let text: String = (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            if let Ok(r) = Recurrence::parse(&text, "America/New_York") {
                let _ = r.next_after(after);
            }
        }
        // Far ends of time.
        let r = rec("* * * * *", "Pacific/Apia");
        assert_eq!(r.next_after(DateTime::<Utc>::MAX_UTC), None);
        assert!(r.next_after(DateTime::<Utc>::MIN_UTC).is_some());
        assert_eq!(
            rec("@every 1d", "UTC").next_after(DateTime::<Utc>::MAX_UTC),
            None
        );
        assert_eq!(
            rec("0 0 1 1 *", "UTC").next_after(utc("4999-06-01T00:00:00Z")),
            None
        );
    }

    /// The fires the rule of the module doc asks for in (from, to], found minute by minute
    /// without croner: an independent model of the answer.
    fn model(cron: &str, tz: Tz, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<DateTime<Utc>> {
        let fields = parse_cron_fields(cron);
        let hour_fixed = !cron
            .split_ascii_whitespace()
            .nth(1)
            .unwrap_or("*")
            .contains(['*', '/']);
        let mut out = Vec::new();
        let mut m = from.with_second(0).expect("a minute") + chrono::TimeDelta::minutes(1);
        while m <= to {
            let local = m.with_timezone(&tz).naive_local();
            let mut fire = fields.matches(local);
            if fire
                && hour_fixed
                && let LocalResult::Ambiguous(_, second) = tz.from_local_datetime(&local)
            {
                fire = second.with_timezone(&Utc) != m;
            }
            // Clocks jumped forward at `m`: the local times skipped fire now.
            let before = offset_secs(tz, m - chrono::TimeDelta::seconds(1));
            let now = offset_secs(tz, m);
            if now > before {
                let mut skipped = local - chrono::TimeDelta::seconds(now - before);
                while skipped < local {
                    fire |= fields.matches(skipped);
                    skipped += chrono::TimeDelta::minutes(1);
                }
            }
            if fire && m > from {
                out.push(m);
            }
            m += chrono::TimeDelta::minutes(1);
        }
        out
    }

    fn parse_cron_fields(cron: &str) -> Fields {
        let fields: Vec<&str> = cron.split_ascii_whitespace().collect();
        let mut sets = [0u64; 5];
        for (i, spec) in FIELDS.iter().enumerate() {
            sets[i] = parse_field(spec, fields[i]).expect("a valid field");
        }
        Fields {
            sets,
            dom_star: fields[2] == "*",
            dow_star: fields[4] == "*",
        }
    }

    const PATTERNS: [&str; 7] = [
        "30 2 * * *",
        "0,30 1-2 * * *",
        "*/15 * * * *",
        "5 * * * *",
        "0 */2 * * *",
        "15,45 0-3 * * SUN",
        "0 0 * * *",
    ];
    const ZONES: [&str; 6] = [
        "America/New_York",
        "Europe/London",
        "Australia/Lord_Howe",
        "America/Sao_Paulo",
        "Pacific/Chatham",
        "Asia/Kolkata",
    ];

    #[test]
    fn agrees_with_a_minute_by_minute_model_around_transitions() {
        // Windows around the 2026 changes (north and south) and Sao Paulo's 2018 one.
        let windows = [
            ("2026-03-06T00:00:00Z", "2026-04-08T00:00:00Z"),
            ("2026-09-25T00:00:00Z", "2026-11-03T00:00:00Z"),
            ("2018-11-02T00:00:00Z", "2018-11-06T00:00:00Z"),
            ("2019-02-15T00:00:00Z", "2019-02-18T00:00:00Z"),
        ];
        for zone in ZONES {
            let tz = Tz::from_str(zone).expect("a zone");
            for cron in PATTERNS {
                let r = rec(cron, zone);
                for (from, to) in windows {
                    let (from, to) = (utc(from), utc(to));
                    assert_eq!(
                        r.fires_between(from, to, 100_000),
                        model(cron, tz, from, to),
                        "{cron} in {zone} from {from}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_year_of_fires_is_increasing_and_each_fire_matches() {
        let from = utc("2026-01-01T00:00:00Z");
        let to = utc("2027-01-01T00:00:00Z");
        for zone in ZONES {
            let tz = Tz::from_str(zone).expect("a zone");
            for cron in PATTERNS {
                let fields = parse_cron_fields(cron);
                let r = rec(cron, zone);
                let fires = r.fires_between(from, to, 100_000);
                assert!(!fires.is_empty(), "{cron} in {zone}");
                assert!(fires.windows(2).all(|w| w[0] < w[1]), "{cron} in {zone}");
                assert_eq!(r.count_between(from, to, 100_000), fires.len());
                for t in fires {
                    let local = t.with_timezone(&tz).naive_local();
                    let gap_end =
                        offset_secs(tz, t - chrono::TimeDelta::seconds(1)) < offset_secs(tz, t);
                    assert!(fields.matches(local) || gap_end, "{cron} in {zone}: {t}");
                }
            }
        }
    }

    #[test]
    fn every_zone_survives_a_year_of_daily_and_quarter_hour_fires() {
        // All of chrono-tz's zones, 2026: no panic, always a next fire, always increasing.
        let from = utc("2026-01-01T00:00:00Z");
        for tz in chrono_tz::TZ_VARIANTS {
            let r = rec("30 2 * * *", tz.name());
            let fires = r.fires_between(from, utc("2027-01-01T00:00:00Z"), 1000);
            assert!(
                (364..=366).contains(&fires.len()),
                "{}: {}",
                tz.name(),
                fires.len()
            );
            assert!(fires.windows(2).all(|w| w[0] < w[1]), "{}", tz.name());
            let r = rec("*/15 * * * *", tz.name());
            let mut at = from;
            for _ in 0..200 {
                let next = r.next_after(at).expect("a fire");
                assert!(
                    next > at && next - at <= chrono::TimeDelta::minutes(15),
                    "{}",
                    tz.name()
                );
                at = next;
            }
        }
    }

    /// Not a check: prints what one `next_after` costs.
    /// `cargo test --release -p outpost-core --lib cron::tests::next_after_cost -- --ignored --nocapture`
    #[test]
    #[ignore = "a measurement, not a check"]
    fn next_after_cost() {
        for (cron, zone) in [
            ("*/15 * * * *", "UTC"),
            ("30 2 * * *", "America/New_York"),
            ("0 9 * * MON-FRI", "Europe/Paris"),
            ("0 0 1 1 *", "Asia/Tokyo"),
            ("@every 5m", "UTC"),
        ] {
            let r = rec(cron, zone);
            let n = 100_000;
            let start = std::time::Instant::now();
            let base = utc("2026-01-01T00:00:00Z");
            for i in 0..n {
                // Starts spread over a year (a chain of yearly fires would pass year 5000).
                let at = base + chrono::TimeDelta::seconds(i * 313);
                std::hint::black_box(r.next_after(at).expect("a fire"));
            }
            println!(
                "{cron} in {zone}: {:?} per next_after",
                start.elapsed() / n as u32
            );
        }
    }
}
