//! How long the connector waits before trying again: [`Backoff`] after network failures and
//! refusals, [`DisabledKey`] while the server says the agent key is disabled.

use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};

/// Exponential backoff with full jitter: backon supplies the exponential sequence, each delay
/// is then drawn uniformly between zero and that value.
pub struct Backoff {
    builder: ExponentialBuilder,
    delays: backon::ExponentialBackoff,
}

impl Backoff {
    /// Delays from about `base` doubling up to `cap`, each drawn below its ceiling.
    pub fn new(base: Duration, cap: Duration) -> Self {
        let builder = ExponentialBuilder::default()
            .with_min_delay(base)
            .with_max_delay(cap)
            .with_factor(2.0)
            .without_max_times();
        Self {
            delays: builder.build(),
            builder,
        }
    }

    /// The next delay.
    pub fn next(&mut self) -> Duration {
        let ceiling = self.delays.next().unwrap_or(Duration::from_secs(60));
        ceiling.mul_f64(rand::random::<f64>())
    }

    /// Starts again from `base`.
    pub fn reset(&mut self) {
        self.delays = self.builder.build();
    }
}

/// How often an agent whose key is disabled asks again: a delay drawn uniformly from
/// `FAST` for the first [`DisabledKey::FAST_FOR`] of the refusals, from `SLOW` after.
#[derive(Default)]
pub struct DisabledKey {
    /// When the server first said the key is disabled, in this run of refusals.
    since: Option<Instant>,
}

impl DisabledKey {
    const FAST: (Duration, Duration) = (Duration::from_secs(5), Duration::from_secs(15));
    const FAST_FOR: Duration = Duration::from_secs(600);
    const SLOW: (Duration, Duration) = (Duration::from_secs(30), Duration::from_secs(90));

    /// The delay before asking again, for one more refusal.
    pub fn next(&mut self) -> Duration {
        let since = *self.since.get_or_insert_with(Instant::now);
        let (low, high) = if since.elapsed() < Self::FAST_FOR {
            Self::FAST
        } else {
            Self::SLOW
        };
        low + (high - low).mul_f64(rand::random::<f64>())
    }

    /// Whether no refusal was counted since the last [`DisabledKey::reset`]: the next one is
    /// the first of a new run.
    pub fn is_new(&self) -> bool {
        self.since.is_none()
    }

    /// The key works (or was refused for another reason): the next refusal starts a new run.
    pub fn reset(&mut self) {
        self.since = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_jittered_capped_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let delays: Vec<_> = (0..12).map(|_| b.next()).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(60)));
        assert!(delays[0] <= Duration::from_secs(1));
        b.reset();
        assert!(b.next() <= Duration::from_secs(1));
    }
}
