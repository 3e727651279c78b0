//! A manifest's `interceptors`: what the router wraps around each invocation of a function
//! (and each call through an alias), in a fixed order: timeout → retry → breaker →
//! admission → forward. This module holds their settings, defaults and bounds, and the
//! rules that say what may be retried; the router (`reactor-data-plane`) runs them.
//!
//! ```json
//! "interceptors": {
//!   "retry": {"max_attempts": 3, "initial_delay": 100, "backoff_factor": 2.0},
//!   "circuit_breaker": {"consecutive_failures": 5, "open_secs": 10}
//! }
//! ```
//!
//! `custom` names functions of the org the request passes through first, outermost first,
//! before the built-in interceptors: each is invoked with the request and answers in the
//! target's place, or sends the (possibly changed) request on to
//! `http://next.reactor.internal` and gives back the (possibly changed) answer. They run
//! as functions on their workers, never in the router.
//!
//! An interceptor type the platform does not know is refused at deploy (`manifest_invalid`
//! naming the known ones), never ignored.

use serde::{Deserialize, Serialize};

/// The interceptors of a function or of a call alias.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Interceptors {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreaker>,
    /// Functions the request passes through first, outermost first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub custom: Vec<Custom>,
}

/// A custom interceptor: a function of the same org.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Custom {
    pub function: String,
}

/// Most custom interceptors of a function (or alias).
pub const MAX_CUSTOM: usize = 4;

/// The host an interceptor sends the request on to: `next.reactor.internal`.
pub const NEXT_LABEL: &str = "next";

impl Interceptors {
    pub fn is_empty(&self) -> bool {
        self.retry.is_none() && self.circuit_breaker.is_none() && self.custom.is_empty()
    }

    /// Every field within its bounds; the message names the field.
    pub fn check(&self, at: &str) -> Result<(), String> {
        if self.custom.len() > MAX_CUSTOM {
            return Err(format!(
                "{at}.custom has {} interceptors, at most {MAX_CUSTOM}",
                self.custom.len()
            ));
        }
        for (i, c) in self.custom.iter().enumerate() {
            if !crate::manifest::valid_function_name(&c.function) {
                return Err(format!(
                    "{at}.custom[{i}].function {:?} is not a function name",
                    c.function
                ));
            }
        }
        if let Some(r) = &self.retry {
            r.check(&format!("{at}.retry"))?;
        }
        if let Some(b) = &self.circuit_breaker {
            b.check(&format!("{at}.circuit_breaker"))?;
        }
        Ok(())
    }
}

/// Retry with exponential backoff: attempt `n` (from 1) waits
/// `min(initial_delay × backoff_factor^(n-1), max_delay)`, less up to `jitter` of it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    /// Attempts in all, the first included (1 to 10).
    #[serde(default = "defaults::max_attempts")]
    pub max_attempts: u32,
    /// Milliseconds before the first retry.
    #[serde(default = "defaults::initial_delay")]
    pub initial_delay: u64,
    #[serde(default = "defaults::backoff_factor")]
    pub backoff_factor: f64,
    /// Milliseconds: the longest wait between two attempts.
    #[serde(default = "defaults::max_delay")]
    pub max_delay: u64,
    /// Fraction of each wait taken off at random (0 to 1), so that callers that failed
    /// together do not retry together.
    #[serde(default = "defaults::jitter")]
    pub jitter: f64,
    /// The function deduplicates (by `Idempotency-Key`), so that POST and PATCH may be
    /// retried too. Without it only GET, HEAD, OPTIONS, PUT, DELETE and TRACE are.
    #[serde(default)]
    pub idempotent: bool,
    /// Statuses that are retried (defaults: 429, 502, 503, 504). Only 429 and 5xx may be
    /// listed: other 4xx answers are the caller's mistake, and a timeout spent the
    /// deadline.
    #[serde(default = "defaults::on_status")]
    pub on_status: Vec<u16>,
    /// The retry budget: retries may add at most this fraction of the requests of the
    /// last 10 s (0 to 1)...
    #[serde(default = "defaults::budget_ratio")]
    pub budget_ratio: f64,
    /// ...or this many per second, whichever is more (0 to 1000).
    #[serde(default = "defaults::budget_min_per_sec")]
    pub budget_min_per_sec: u32,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            max_attempts: defaults::max_attempts(),
            initial_delay: defaults::initial_delay(),
            backoff_factor: defaults::backoff_factor(),
            max_delay: defaults::max_delay(),
            jitter: defaults::jitter(),
            idempotent: false,
            on_status: defaults::on_status(),
            budget_ratio: defaults::budget_ratio(),
            budget_min_per_sec: defaults::budget_min_per_sec(),
        }
    }
}

/// Most attempts a retry may make.
pub const MAX_ATTEMPTS: u32 = 10;
/// Longest wait between attempts, in milliseconds.
pub const MAX_DELAY_MS: u64 = 60_000;

impl Retry {
    fn check(&self, at: &str) -> Result<(), String> {
        if !(1..=MAX_ATTEMPTS).contains(&self.max_attempts) {
            return Err(format!(
                "{at}.max_attempts {} is out of range (1-{MAX_ATTEMPTS})",
                self.max_attempts
            ));
        }
        if self.max_delay > MAX_DELAY_MS {
            return Err(format!(
                "{at}.max_delay {} is out of range (0-{MAX_DELAY_MS} ms)",
                self.max_delay
            ));
        }
        if self.initial_delay > self.max_delay {
            return Err(format!(
                "{at}.initial_delay {} is above max_delay {}",
                self.initial_delay, self.max_delay
            ));
        }
        if !(1.0..=10.0).contains(&self.backoff_factor) {
            return Err(format!(
                "{at}.backoff_factor {} is out of range (1.0-10.0)",
                self.backoff_factor
            ));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(format!(
                "{at}.jitter {} is out of range (0.0-1.0)",
                self.jitter
            ));
        }
        if !(0.0..=1.0).contains(&self.budget_ratio) {
            return Err(format!(
                "{at}.budget_ratio {} is out of range (0.0-1.0)",
                self.budget_ratio
            ));
        }
        if self.budget_min_per_sec > 1000 {
            return Err(format!(
                "{at}.budget_min_per_sec {} is out of range (0-1000)",
                self.budget_min_per_sec
            ));
        }
        if let Some(s) = self
            .on_status
            .iter()
            .find(|s| !(**s == 429 || (500..=599).contains(*s)))
        {
            return Err(format!(
                "{at}.on_status {s} may not be retried (only 429 and 5xx)"
            ));
        }
        Ok(())
    }

    /// The wait before attempt `next` (2 for the first retry), before jitter.
    pub fn backoff(&self, next: u32) -> std::time::Duration {
        let exp = next.saturating_sub(2).min(64) as i32;
        let ms = self.initial_delay as f64 * self.backoff_factor.powi(exp);
        std::time::Duration::from_millis(ms.min(self.max_delay as f64) as u64)
    }

    /// Whether a request of `method` may be sent again.
    pub fn may_repeat(&self, method: &http::Method) -> bool {
        self.idempotent || idempotent_method(method)
    }
}

/// The methods HTTP defines as idempotent (RFC 9110 §9.2.2).
pub fn idempotent_method(method: &http::Method) -> bool {
    use http::Method as M;
    [M::GET, M::HEAD, M::OPTIONS, M::PUT, M::DELETE, M::TRACE].contains(method)
}

/// A breaker per function (or alias) and router: closed, it counts failures (5xx answers,
/// timeouts, a worker that could not answer); past `consecutive_failures` in a row, or a
/// `failure_ratio` of at least `min_requests` over `window_secs`, it opens and answers 503
/// `circuit_open` for `open_secs`; then it lets `half_open_probes` requests through and
/// closes when they all succeed, or opens again at the first failure.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreaker {
    #[serde(default = "defaults::consecutive_failures")]
    pub consecutive_failures: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_ratio: Option<f64>,
    #[serde(default = "defaults::window_secs")]
    pub window_secs: u64,
    #[serde(default = "defaults::min_requests")]
    pub min_requests: u32,
    #[serde(default = "defaults::open_secs")]
    pub open_secs: u64,
    #[serde(default = "defaults::half_open_probes")]
    pub half_open_probes: u32,
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        Self {
            consecutive_failures: defaults::consecutive_failures(),
            failure_ratio: None,
            window_secs: defaults::window_secs(),
            min_requests: defaults::min_requests(),
            open_secs: defaults::open_secs(),
            half_open_probes: defaults::half_open_probes(),
        }
    }
}

impl CircuitBreaker {
    fn check(&self, at: &str) -> Result<(), String> {
        let range = |name: &str, v: u64, lo: u64, hi: u64| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(format!("{at}.{name} {v} is out of range ({lo}-{hi})"))
            }
        };
        range(
            "consecutive_failures",
            self.consecutive_failures.into(),
            1,
            10_000,
        )?;
        range("window_secs", self.window_secs, 1, 600)?;
        range("min_requests", self.min_requests.into(), 1, 100_000)?;
        range("open_secs", self.open_secs, 1, 3600)?;
        range("half_open_probes", self.half_open_probes.into(), 1, 100)?;
        if let Some(r) = self.failure_ratio
            && !(r > 0.0 && r <= 1.0)
        {
            return Err(format!(
                "{at}.failure_ratio {r} is out of range (above 0, at most 1)"
            ));
        }
        Ok(())
    }
}

mod defaults {
    pub fn max_attempts() -> u32 {
        3
    }
    pub fn initial_delay() -> u64 {
        100
    }
    pub fn backoff_factor() -> f64 {
        2.0
    }
    pub fn max_delay() -> u64 {
        2000
    }
    pub fn jitter() -> f64 {
        0.2
    }
    pub fn on_status() -> Vec<u16> {
        vec![429, 502, 503, 504]
    }
    pub fn budget_ratio() -> f64 {
        0.2
    }
    pub fn budget_min_per_sec() -> u32 {
        10
    }
    pub fn consecutive_failures() -> u32 {
        5
    }
    pub fn window_secs() -> u64 {
        10
    }
    pub fn min_requests() -> u32 {
        10
    }
    pub fn open_secs() -> u64 {
        5
    }
    pub fn half_open_probes() -> u32 {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Interceptors, String> {
        let i: Interceptors = serde_json::from_str(json).map_err(|e| e.to_string())?;
        i.check("interceptors")?;
        Ok(i)
    }

    #[test]
    fn the_seeds_retry_reads_with_defaults_for_the_rest() {
        let i = parse(r#"{"retry":{"max_attempts":3,"initial_delay":100,"backoff_factor":2.0}}"#)
            .expect("valid");
        let r = i.retry.expect("retry");
        assert_eq!(
            (r.max_attempts, r.initial_delay, r.max_delay),
            (3, 100, 2000)
        );
        assert_eq!(r.on_status, vec![429, 502, 503, 504]);
        assert!(!r.idempotent);
        assert_eq!(r.backoff(2).as_millis(), 100);
        assert_eq!(r.backoff(3).as_millis(), 200);
        assert_eq!(r.backoff(4).as_millis(), 400);
        assert_eq!(r.backoff(40).as_millis(), 2000, "capped by max_delay");
    }

    #[test]
    fn unknown_types_and_bad_values_are_refused_by_name() {
        let e = parse(r#"{"rety":{}}"#).expect_err("unknown type");
        assert!(e.contains("rety") && e.contains("circuit_breaker"), "{e}");
        for (json, field) in [
            (r#"{"retry":{"max_attempts":0}}"#, "max_attempts"),
            (r#"{"retry":{"max_attempts":11}}"#, "max_attempts"),
            (r#"{"retry":{"initial_delay":5000}}"#, "initial_delay"),
            (r#"{"retry":{"backoff_factor":0.5}}"#, "backoff_factor"),
            (r#"{"retry":{"jitter":2}}"#, "jitter"),
            (r#"{"retry":{"on_status":[404]}}"#, "on_status"),
            (r#"{"retry":{"budget_ratio":-1}}"#, "budget_ratio"),
            (
                r#"{"circuit_breaker":{"failure_ratio":0}}"#,
                "failure_ratio",
            ),
            (r#"{"circuit_breaker":{"open_secs":0}}"#, "open_secs"),
            (r#"{"custom":[{"function":"Audit"}]}"#, "custom[0].function"),
            (
                r#"{"custom":[{"function":"a"},{"function":"b"},{"function":"c"},{"function":"d"},{"function":"e"}]}"#,
                "at most 4",
            ),
        ] {
            let e = parse(json).expect_err(json);
            assert!(e.contains(field), "{json}: {e}");
        }
    }

    #[test]
    fn custom_interceptors_name_functions() {
        let i = parse(r#"{"custom":[{"function":"audit"},{"function":"guard"}]}"#).expect("valid");
        assert_eq!(i.custom.len(), 2);
        assert!(!i.is_empty());
        assert!(parse(r#"{"custom":[{"fn":"audit"}]}"#).is_err());
    }

    #[test]
    fn only_idempotent_methods_repeat_unless_marked() {
        let r = Retry::default();
        assert!(r.may_repeat(&http::Method::GET));
        assert!(r.may_repeat(&http::Method::PUT));
        assert!(!r.may_repeat(&http::Method::POST));
        assert!(!r.may_repeat(&http::Method::PATCH));
        let marked = Retry {
            idempotent: true,
            ..Retry::default()
        };
        assert!(marked.may_repeat(&http::Method::POST));
    }
}
