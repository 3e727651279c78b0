//! The adaptive pool's concurrency limit: how many requests of a function this router lets
//! run at once, sized from the latency it measures, between `min_size` and `max_size`.
//!
//! Each answered request is a sample: its time to the response headers and how many
//! requests were in flight when it started. Cold starts are left out (they measure the
//! start, not the load); failures (5xx, timeouts) count as overload.
//!
//! - **Gradient2**: a long-run average of the latency (an exponential average over
//!   [`LONG_WINDOW`] samples) is the baseline; the gradient `tolerance × long / short`,
//!   kept within 0.5–1, scales the limit down while latency is past the tolerance; while
//!   it is within, a queue allowance (`√limit`) lets the limit grow. The limit moves a fifth of the way to the new value per sample.
//!   When the baseline is far above the latency (a slow period has passed), it decays
//!   toward it, so the limit recovers.
//! - **AIMD**: a sample slower than twice the baseline, or a failure, multiplies the limit
//!   by 0.9; any other adds 1.
//!
//! Neither grows while the function is not using what it has (fewer than half the limit
//! in flight): a limit earned while idle would not hold under load, and nothing grows
//! without bound under overload since overload makes samples slow.

use reactor_api::pool::Algorithm;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Samples in the long-run average.
pub const LONG_WINDOW: f64 = 100.0;
/// Latency up to this multiple of the baseline is no reason to shrink (Gradient2).
const TOLERANCE: f64 = 1.5;
/// Share of the way to the new limit taken per sample (Gradient2).
const SMOOTHING: f64 = 0.2;

pub struct Limiter {
    algorithm: Algorithm,
    min: f64,
    max: f64,
    state: Mutex<State>,
}

struct State {
    limit: f64,
    in_flight: u32,
    /// Long-run latency in ms; 0 before the first sample.
    long_ms: f64,
}

/// A request counted in flight until dropped.
pub struct Slot {
    limiter: Arc<Limiter>,
    /// In flight when it started, itself included.
    pub in_flight: u32,
}

impl Limiter {
    pub fn new(algorithm: Algorithm, min_size: u32, max_size: u32) -> Self {
        let min = f64::from(min_size.max(1));
        let max = f64::from(max_size.max(min_size.max(1)));
        Self {
            algorithm,
            min,
            max,
            // Start low and earn the rest: a new deployment has no latency measured.
            state: Mutex::new(State {
                limit: min.max(max.min(10.0)),
                in_flight: 0,
                long_ms: 0.0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current limit, as a whole number of requests.
    pub fn limit(&self) -> u32 {
        self.lock().limit.floor() as u32
    }

    /// A slot if fewer than the limit are in flight.
    pub fn try_acquire(self: &Arc<Self>) -> Option<Slot> {
        let mut s = self.lock();
        if f64::from(s.in_flight + 1) > s.limit.floor() {
            return None;
        }
        s.in_flight += 1;
        Some(Slot {
            limiter: self.clone(),
            in_flight: s.in_flight,
        })
    }

    /// One answered request: `latency` to its response headers, `in_flight` when it
    /// started, whether it `failed`. Cold starts are not samples.
    pub fn sample(&self, latency: Duration, in_flight: u32, failed: bool) {
        let ms = latency.as_secs_f64() * 1000.0;
        let mut s = self.lock();
        if s.long_ms == 0.0 {
            s.long_ms = ms.max(0.01);
        }
        let long = s.long_ms;
        let using = f64::from(in_flight) * 2.0 >= s.limit;
        let next = match self.algorithm {
            Algorithm::Gradient2 => {
                let short = if failed { long * 4.0 } else { ms.max(0.01) };
                let gradient = (TOLERANCE * long / short).clamp(0.5, 1.0);
                let target = match (gradient >= 1.0, using) {
                    // Latency within tolerance and the limit in use: room to grow.
                    (true, true) => s.limit + s.limit.sqrt(),
                    (true, false) => s.limit,
                    (false, _) => s.limit * gradient,
                };
                s.limit * (1.0 - SMOOTHING) + target * SMOOTHING
            }
            Algorithm::Aimd => {
                if failed || ms > 2.0 * long {
                    s.limit * 0.9
                } else if using {
                    s.limit + 1.0
                } else {
                    s.limit
                }
            }
        };
        s.limit = next.clamp(self.min, self.max);
        // The baseline follows the latency slowly, and falls quickly back when a slow
        // period has passed.
        if !failed {
            let alpha = 2.0 / (LONG_WINDOW + 1.0);
            s.long_ms = long * (1.0 - alpha) + ms * alpha;
            if s.long_ms > 2.0 * ms {
                s.long_ms *= 0.95;
            }
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut s = self.limiter.lock();
        s.in_flight = s.in_flight.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` samples at `ms` with `in_flight` each.
    fn feed(l: &Limiter, n: usize, ms: u64, in_flight: u32) {
        for _ in 0..n {
            l.sample(Duration::from_millis(ms), in_flight, false);
        }
    }

    #[test]
    fn gradient2_grows_under_load_falls_when_latency_rises_and_recovers() {
        let l = Limiter::new(Algorithm::Gradient2, 1, 100);
        let start = l.limit();
        feed(&l, 200, 20, 1000);
        let grown = l.limit();
        assert!(grown > start, "{start} -> {grown}");
        feed(&l, 30, 200, 1000);
        let fallen = l.limit();
        assert!(fallen < grown / 2, "{grown} -> {fallen}");
        feed(&l, 200, 20, 1000);
        assert!(l.limit() > fallen * 2, "{fallen} -> {}", l.limit());
    }

    #[test]
    fn limits_stay_bounded_and_do_not_grow_while_unused() {
        for algorithm in [Algorithm::Gradient2, Algorithm::Aimd] {
            let l = Limiter::new(algorithm, 2, 16);
            feed(&l, 5000, 10, 10_000);
            assert_eq!(l.limit(), 16, "{algorithm:?}: max_size holds");
            // Overload: every sample slow or failing.
            for _ in 0..500 {
                l.sample(Duration::from_millis(1000), 10_000, true);
            }
            assert_eq!(l.limit(), 2, "{algorithm:?}: min_size holds");
            let idle = Limiter::new(algorithm, 1, 1000);
            let before = idle.limit();
            feed(&idle, 1000, 10, 1);
            assert!(
                idle.limit() <= before,
                "{algorithm:?}: one in flight earns nothing"
            );
        }
    }

    #[test]
    fn aimd_backs_off_multiplicatively_and_grows_by_one() {
        let l = Limiter::new(Algorithm::Aimd, 1, 100);
        feed(&l, 1, 10, 10);
        let a = l.lock().limit;
        feed(&l, 1, 10, 10);
        assert!((l.lock().limit - (a + 1.0)).abs() < 1e-9);
        l.sample(Duration::from_millis(10), 10, true);
        assert!((l.lock().limit - (a + 1.0) * 0.9).abs() < 1e-9);
    }

    #[test]
    fn slots_count_in_flight_up_to_the_limit() {
        let l = Arc::new(Limiter::new(Algorithm::Aimd, 3, 3));
        let a = l.try_acquire().expect("1");
        let _b = l.try_acquire().expect("2");
        let c = l.try_acquire().expect("3");
        assert_eq!(c.in_flight, 3);
        assert!(l.try_acquire().is_none());
        drop(a);
        assert!(l.try_acquire().is_some());
    }
}
