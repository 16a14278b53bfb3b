//! Bounded retries with jittered exponential backoff, for calls whose
//! failures the daemon must ride out visibly: Route53 under a fleet's
//! throttling, notifications to an endpoint that is briefly down.
//!
//! Hand-rolled (a dozen lines of arithmetic) because each caller decides
//! per error whether to retry and logs every retry with its count, which
//! the SDK's built-in retries do not show.

use std::time::Duration;

/// How often and how patiently to retry.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// Attempts in all, the first included.
    pub attempts: u32,
    /// The first retry waits up to this long; each later one up to twice the last.
    pub base: Duration,
    /// No wait is longer than this.
    pub cap: Duration,
}

impl Backoff {
    /// The wait before retry number `retry` (1 for the first retry): a
    /// random time up to `min(cap, base × 2^(retry-1))` ("full jitter"), so
    /// that a fleet that was throttled together does not come back together.
    pub fn delay(&self, retry: u32) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << retry.saturating_sub(1).min(20))
            .min(self.cap);
        // At least a tenth of the ceiling, so that a retry never comes at once.
        let floor = ceiling / 10;
        floor + ceiling.saturating_sub(floor).mul_f64(fastrand::f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_within_their_ceiling_and_the_cap() {
        let b = Backoff {
            attempts: 8,
            base: Duration::from_millis(100),
            cap: Duration::from_secs(2),
        };
        for _ in 0..200 {
            let first = b.delay(1);
            assert!(first >= Duration::from_millis(10) && first <= Duration::from_millis(100));
            let third = b.delay(3);
            assert!(third >= Duration::from_millis(40) && third <= Duration::from_millis(400));
            assert!(b.delay(30) <= Duration::from_secs(2));
        }
        // Jittered: 200 draws are not all the same.
        let draws: std::collections::HashSet<_> = (0..200).map(|_| b.delay(4)).collect();
        assert!(draws.len() > 100);
    }
}
