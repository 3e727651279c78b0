//! The circuit breaker's state machine, per function (or alias) and router. Time is passed
//! in, so the transitions are tested without waiting.
//!
//! closed --(failures past the threshold)--> open --(open_secs)--> half-open
//! half-open --(every probe succeeds)--> closed; half-open --(a probe fails)--> open

use reactor_api::interceptors::CircuitBreaker;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

pub struct Breaker {
    policy: CircuitBreaker,
    /// What it guards, for its log lines (`fn:org/name` or `alias:org/caller@alias`).
    key: String,
    inner: Mutex<Inner>,
}

struct Inner {
    state: State,
    /// Failures in a row while closed.
    consecutive: u32,
    /// Outcomes while closed, for `failure_ratio`: one bucket per second (its second
    /// since `epoch`, successes, failures), at most `window_secs` of them, and their sums.
    /// Nothing is kept without `failure_ratio`.
    buckets: VecDeque<(u64, u32, u32)>,
    ok: u64,
    failed: u64,
    epoch: Instant,
    /// Open until then.
    open_until: Instant,
    /// Half-open: probes let through, and how many of them succeeded.
    probes_sent: u32,
    probes_ok: u32,
    /// Bumped at each change of state: a pass reports only to the period it was given in.
    generation: u64,
}

/// Leave to pass the breaker: report how the request went with [`Breaker::record`].
/// Dropped unreported (the caller went away, admission refused), it counts as nothing and
/// frees its probe slot.
pub struct Pass<'a> {
    breaker: &'a Breaker,
    probe: bool,
    generation: u64,
    reported: bool,
}

impl Breaker {
    pub fn new(policy: CircuitBreaker, key: &str) -> Self {
        let now = Instant::now();
        Self {
            policy,
            key: key.to_string(),
            inner: Mutex::new(Inner {
                state: State::Closed,
                consecutive: 0,
                buckets: VecDeque::new(),
                ok: 0,
                failed: 0,
                epoch: now,
                open_until: now,
                probes_sent: 0,
                probes_ok: 0,
                generation: 0,
            }),
        }
    }

    pub fn policy(&self) -> &CircuitBreaker {
        &self.policy
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the counters half-written in a way
        // that matters more than losing the breaker; keep serving.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn state(&self, now: Instant) -> State {
        let mut inner = self.lock();
        self.advance(&mut inner, now);
        inner.state
    }

    /// Leave to send a request now, or how long the breaker stays open.
    pub fn try_pass(&self, now: Instant) -> Result<Pass<'_>, Duration> {
        let mut inner = self.lock();
        self.advance(&mut inner, now);
        match inner.state {
            State::Closed => Ok(Pass {
                breaker: self,
                probe: false,
                generation: inner.generation,
                reported: false,
            }),
            State::Open => Err(inner.open_until.saturating_duration_since(now)),
            State::HalfOpen if inner.probes_sent < self.policy.half_open_probes => {
                inner.probes_sent += 1;
                Ok(Pass {
                    breaker: self,
                    probe: true,
                    generation: inner.generation,
                    reported: false,
                })
            }
            // Every probe is out: wait for them, a second at most.
            State::HalfOpen => Err(Duration::from_secs(1)),
        }
    }

    fn advance(&self, inner: &mut Inner, now: Instant) {
        if inner.state == State::Open && now >= inner.open_until {
            inner.state = State::HalfOpen;
            inner.probes_sent = 0;
            inner.probes_ok = 0;
            inner.generation += 1;
        }
    }

    fn open(&self, inner: &mut Inner, now: Instant) {
        inner.state = State::Open;
        inner.open_until = now + Duration::from_secs(self.policy.open_secs);
        inner.generation += 1;
        Self::reset_counts(inner);
        tracing::warn!(breaker = %self.key, open_secs = self.policy.open_secs, "circuit breaker opened");
    }

    fn reset_counts(inner: &mut Inner) {
        inner.consecutive = 0;
        inner.buckets.clear();
        inner.ok = 0;
        inner.failed = 0;
    }

    /// Counts an outcome in the per-second buckets of the window, dropping old ones.
    fn count(&self, inner: &mut Inner, failed: bool, now: Instant) {
        let second = now.saturating_duration_since(inner.epoch).as_secs();
        let span = self.policy.window_secs;
        while let Some(&(s, ok, bad)) = inner.buckets.front() {
            if s + span > second {
                break;
            }
            inner.buckets.pop_front();
            inner.ok -= u64::from(ok);
            inner.failed -= u64::from(bad);
        }
        match inner.buckets.back_mut() {
            Some((s, ok, bad)) if *s == second => {
                if failed {
                    *bad = bad.saturating_add(1);
                } else {
                    *ok = ok.saturating_add(1);
                }
            }
            _ => inner
                .buckets
                .push_back((second, u32::from(!failed), u32::from(failed))),
        }
        if failed {
            inner.failed += 1;
        } else {
            inner.ok += 1;
        }
    }

    fn report(&self, probe: bool, generation: u64, failed: bool, now: Instant) {
        let mut inner = self.lock();
        self.advance(&mut inner, now);
        if generation != inner.generation {
            // Given before the last change of state: its outcome is stale.
            return;
        }
        match inner.state {
            State::HalfOpen if probe => {
                if failed {
                    self.open(&mut inner, now);
                } else {
                    inner.probes_ok += 1;
                    if inner.probes_ok >= self.policy.half_open_probes {
                        inner.state = State::Closed;
                        inner.generation += 1;
                        Self::reset_counts(&mut inner);
                        tracing::info!(breaker = %self.key, "circuit breaker closed");
                    }
                }
            }
            State::Closed => {
                inner.consecutive = if failed {
                    inner.consecutive.saturating_add(1)
                } else {
                    0
                };
                let trip_ratio = match self.policy.failure_ratio {
                    Some(ratio) => {
                        self.count(&mut inner, failed, now);
                        let total = inner.ok + inner.failed;
                        total >= u64::from(self.policy.min_requests)
                            && inner.failed as f64 >= ratio * total as f64
                    }
                    None => false,
                };
                if failed && (inner.consecutive >= self.policy.consecutive_failures || trip_ratio) {
                    self.open(&mut inner, now);
                }
            }
            _ => {}
        }
    }

    fn release_probe(&self, generation: u64) {
        let mut inner = self.lock();
        if inner.state == State::HalfOpen && inner.generation == generation {
            inner.probes_sent = inner.probes_sent.saturating_sub(1);
        }
    }
}

impl Pass<'_> {
    /// How the request went: `failed` for a 5xx, a timeout or a worker that could not
    /// answer; 4xx answers are successes (the function worked).
    pub fn record(mut self, failed: bool, now: Instant) {
        self.reported = true;
        self.breaker
            .report(self.probe, self.generation, failed, now);
    }
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        if !self.reported && self.probe {
            self.breaker.release_probe(self.generation);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(json: &str) -> Breaker {
        Breaker::new(serde_json::from_str(json).expect("policy"), "fn:acme/test")
    }

    #[tokio::test]
    async fn opens_on_consecutive_failures_then_half_opens_and_closes() {
        let b = breaker(r#"{"consecutive_failures":3,"open_secs":5,"half_open_probes":2}"#);
        let t0 = Instant::now();
        for failed in [true, true, false, true, true] {
            b.try_pass(t0).expect("closed").record(failed, t0);
        }
        assert_eq!(b.state(t0), State::Closed, "a success resets the count");
        b.try_pass(t0).expect("closed").record(true, t0);
        assert_eq!(b.state(t0), State::Open);
        let wait = b.try_pass(t0 + Duration::from_secs(2)).err().expect("open");
        assert_eq!(wait, Duration::from_secs(3));
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(b.state(t1), State::HalfOpen);
        let p1 = b.try_pass(t1).expect("probe 1");
        let p2 = b.try_pass(t1).expect("probe 2");
        assert!(b.try_pass(t1).is_err(), "only two probes at once");
        p1.record(false, t1);
        assert_eq!(b.state(t1), State::HalfOpen, "one probe is not enough");
        p2.record(false, t1);
        assert_eq!(b.state(t1), State::Closed);
    }

    #[tokio::test]
    async fn a_failed_probe_opens_again_and_an_unreported_one_frees_its_slot() {
        let b = breaker(r#"{"consecutive_failures":1,"open_secs":1}"#);
        let t0 = Instant::now();
        b.try_pass(t0).expect("closed").record(true, t0);
        let t1 = t0 + Duration::from_secs(1);
        drop(b.try_pass(t1).expect("probe"));
        b.try_pass(t1).expect("the slot is free").record(true, t1);
        assert_eq!(b.state(t1), State::Open);
        assert!(b.try_pass(t1 + Duration::from_millis(999)).is_err());
    }

    #[tokio::test]
    async fn a_probe_of_an_earlier_half_open_period_counts_for_nothing() {
        let b = breaker(r#"{"consecutive_failures":1,"open_secs":1,"half_open_probes":2}"#);
        let t0 = Instant::now();
        b.try_pass(t0).expect("closed").record(true, t0);
        let t1 = t0 + Duration::from_secs(1);
        let late = b.try_pass(t1).expect("probe 1");
        let stale = b.try_pass(t1).expect("probe 2");
        b.try_pass(t1).err().expect("both probes out");
        // Probe 2's failure opens it again; the next period starts a second later.
        let p2 = stale;
        p2.record(true, t1);
        let t2 = t1 + Duration::from_secs(1);
        let fresh = b.try_pass(t2).expect("new probe");
        // Probe 1 of the old period succeeds now: it does not count toward closing...
        late.record(false, t2);
        assert_eq!(b.state(t2), State::HalfOpen);
        // ...nor would its drop free a slot of this period.
        let second = b.try_pass(t2).expect("the second probe of this period");
        assert!(b.try_pass(t2).is_err());
        fresh.record(false, t2);
        second.record(false, t2);
        assert_eq!(b.state(t2), State::Closed);
    }

    #[tokio::test]
    async fn opens_on_a_failure_ratio_over_the_window_once_there_are_enough_requests() {
        let b = breaker(
            r#"{"consecutive_failures":100,"failure_ratio":0.5,"min_requests":4,"window_secs":10}"#,
        );
        let t0 = Instant::now();
        for failed in [true, false, true] {
            b.try_pass(t0).expect("closed").record(failed, t0);
        }
        assert_eq!(
            b.state(t0),
            State::Closed,
            "3 requests are under min_requests"
        );
        b.try_pass(t0).expect("closed").record(true, t0);
        assert_eq!(b.state(t0), State::Open, "3 failures of 4");
        // Old outcomes leave the window.
        let b = breaker(
            r#"{"consecutive_failures":100,"failure_ratio":0.5,"min_requests":4,"window_secs":10}"#,
        );
        for failed in [true, true, false] {
            b.try_pass(t0).expect("closed").record(failed, t0);
        }
        let later = t0 + Duration::from_secs(11);
        for failed in [false, false, false, true] {
            b.try_pass(later).expect("closed").record(failed, later);
        }
        assert_eq!(b.state(later), State::Closed, "1 failure of the last 4");
    }
}
