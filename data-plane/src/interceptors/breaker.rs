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
    inner: Mutex<Inner>,
}

struct Inner {
    state: State,
    /// Failures in a row while closed.
    consecutive: u32,
    /// Outcomes while closed, for `failure_ratio`: (when, failed).
    window: VecDeque<(Instant, bool)>,
    /// Open until then.
    open_until: Instant,
    /// Half-open: probes let through, and how many of them succeeded.
    probes_sent: u32,
    probes_ok: u32,
}

/// Leave to pass the breaker: report how the request went with [`Breaker::record`].
/// Dropped unreported (the caller went away, admission refused), it counts as nothing and
/// frees its probe slot.
pub struct Pass<'a> {
    breaker: &'a Breaker,
    probe: bool,
    reported: bool,
}

impl Breaker {
    pub fn new(policy: CircuitBreaker) -> Self {
        let now = Instant::now();
        Self {
            policy,
            inner: Mutex::new(Inner {
                state: State::Closed,
                consecutive: 0,
                window: VecDeque::new(),
                open_until: now,
                probes_sent: 0,
                probes_ok: 0,
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
                reported: false,
            }),
            State::Open => Err(inner.open_until.saturating_duration_since(now)),
            State::HalfOpen if inner.probes_sent < self.policy.half_open_probes => {
                inner.probes_sent += 1;
                Ok(Pass {
                    breaker: self,
                    probe: true,
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
        }
    }

    fn open(&self, inner: &mut Inner, now: Instant) {
        inner.state = State::Open;
        inner.open_until = now + Duration::from_secs(self.policy.open_secs);
        inner.consecutive = 0;
        inner.window.clear();
        tracing::warn!(open_secs = self.policy.open_secs, "circuit breaker opened");
    }

    fn report(&self, probe: bool, failed: bool, now: Instant) {
        let mut inner = self.lock();
        self.advance(&mut inner, now);
        match inner.state {
            State::HalfOpen if probe => {
                if failed {
                    self.open(&mut inner, now);
                } else {
                    inner.probes_ok += 1;
                    if inner.probes_ok >= self.policy.half_open_probes {
                        inner.state = State::Closed;
                        inner.consecutive = 0;
                        inner.window.clear();
                        tracing::info!("circuit breaker closed");
                    }
                }
            }
            State::Closed => {
                inner.consecutive = if failed { inner.consecutive + 1 } else { 0 };
                let span = Duration::from_secs(self.policy.window_secs);
                inner.window.push_back((now, failed));
                while inner
                    .window
                    .front()
                    .is_some_and(|(t, _)| now.saturating_duration_since(*t) > span)
                {
                    inner.window.pop_front();
                }
                let trip_ratio = self.policy.failure_ratio.is_some_and(|ratio| {
                    let total = inner.window.len();
                    let failures = inner.window.iter().filter(|(_, f)| *f).count();
                    total >= self.policy.min_requests as usize
                        && failures as f64 >= ratio * total as f64
                });
                if failed && (inner.consecutive >= self.policy.consecutive_failures || trip_ratio) {
                    self.open(&mut inner, now);
                }
            }
            // A request let through before the breaker opened (or a probe of an earlier
            // half-open period): its outcome is stale.
            _ => {}
        }
    }

    fn release_probe(&self) {
        let mut inner = self.lock();
        if inner.state == State::HalfOpen {
            inner.probes_sent = inner.probes_sent.saturating_sub(1);
        }
    }
}

impl Pass<'_> {
    /// How the request went: `failed` for a 5xx, a timeout or a worker that could not
    /// answer; 4xx answers are successes (the function worked).
    pub fn record(mut self, failed: bool, now: Instant) {
        self.reported = true;
        self.breaker.report(self.probe, failed, now);
    }
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        if !self.reported && self.probe {
            self.breaker.release_probe();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(json: &str) -> Breaker {
        Breaker::new(serde_json::from_str(json).expect("policy"))
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
