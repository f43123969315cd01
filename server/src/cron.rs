//! Interim fire-time computation (replaced by the cron module of the schedules work).

use chrono::{DateTime, FixedOffset, Utc};
use chrono_tz::Tz;
use std::str::FromStr;

/// A validated recurrence.
#[derive(Debug, Clone)]
pub struct Recurrence {
    cron: Option<croner::Cron>,
    every: Option<std::time::Duration>,
    tz: Tz,
}

/// What is wrong with a schedule's `cron` or `timezone`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecurrenceError {
    /// "cron" or "timezone".
    pub field: &'static str,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for RecurrenceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for RecurrenceError {}

impl Recurrence {
    /// Parses.
    pub fn parse(cron: &str, timezone: &str) -> Result<Self, RecurrenceError> {
        let tz = Tz::from_str(timezone).map_err(|_| RecurrenceError {
            field: "timezone",
            message: format!("unknown IANA time zone {timezone:?}"),
        })?;
        if let Some(rest) = cron.strip_prefix("@every ") {
            let (n, unit) = rest.split_at(rest.len() - 1);
            let n: u64 = n.parse().map_err(|_| RecurrenceError {
                field: "cron",
                message: "bad @every".into(),
            })?;
            let secs = match unit {
                "s" => n,
                "m" => n * 60,
                "h" => n * 3600,
                "d" => n * 86400,
                _ => 0,
            };
            if secs < 10 {
                return Err(RecurrenceError {
                    field: "cron",
                    message: "@every must be at least 10s".into(),
                });
            }
            return Ok(Self {
                cron: None,
                every: Some(std::time::Duration::from_secs(secs)),
                tz,
            });
        }
        let parsed = croner::Cron::from_str(cron).map_err(|e| RecurrenceError {
            field: "cron",
            message: e.to_string(),
        })?;
        Ok(Self {
            cron: Some(parsed),
            every: None,
            tz,
        })
    }

    /// The first fire strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if let Some(every) = self.every {
            let step = every.as_secs() as i64;
            let t = after.timestamp().div_euclid(step) * step + step;
            return DateTime::from_timestamp(t, 0);
        }
        let local = after.with_timezone(&self.tz);
        self.cron
            .as_ref()?
            .find_next_occurrence(&local, false)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    /// Fires in (after, until], at most `cap`.
    pub fn count_between(&self, after: DateTime<Utc>, until: DateTime<Utc>, cap: usize) -> usize {
        self.fires_between(after, until, cap).len()
    }

    /// Fires in (after, until], at most `cap`, oldest first.
    pub fn fires_between(
        &self,
        after: DateTime<Utc>,
        until: DateTime<Utc>,
        cap: usize,
    ) -> Vec<DateTime<Utc>> {
        let mut out = Vec::new();
        let mut at = after;
        while out.len() < cap {
            match self.next_after(at) {
                Some(next) if next <= until => {
                    out.push(next);
                    at = next;
                }
                _ => break,
            }
        }
        out
    }

    /// The zone.
    pub fn timezone(&self) -> Tz {
        self.tz
    }

    /// Local time.
    pub fn local(&self, at: DateTime<Utc>) -> DateTime<FixedOffset> {
        at.with_timezone(&self.tz).fixed_offset()
    }

    /// The interval of `@every`.
    pub fn interval(&self) -> Option<std::time::Duration> {
        self.every
    }
}
