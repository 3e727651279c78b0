//! Calls between functions (`http://NAME.reactor.internal/path`): the rules a call follows,
//! as pure functions the worker that intercepts a call and the router that forwards it
//! share. Which function a host names ([`resolve`], with a manifest's `calls`), the trace
//! context of the call ([`TraceParent`]), its baggage ([`check_baggage`]), its deadline
//! ([`callee_timeout`]), its depth ([`next_depth`]) and fan-out ([`count_call`]), and why a
//! call is refused ([`CallError`], mapped to the platform's codes).
//!
//! It does no I/O and draws no random numbers: callers pass the fresh ids and the clock's
//! readings, so every rule is tested here and the same on every runtime.

use crate::error::{ApiError, ErrorCode};
use crate::headers;
use crate::manifest::{Calls, valid_function_name};
use crate::model::Role;
use std::fmt;
use std::time::Duration;

/// Functions are called at `NAME.reactor.internal`; nothing under it leaves the platform.
pub const INTERNAL_DOMAIN: &str = "reactor.internal";

/// The most `functions.calls.max_depth` may be.
pub const MAX_DEPTH_CAP: u32 = 32;

/// Most members of the `baggage` a call carries.
pub const MAX_BAGGAGE_MEMBERS: usize = 64;
/// Most bytes of the `baggage` a call carries.
pub const MAX_BAGGAGE_BYTES: usize = 8 * 1024;

/// Why a call is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// `path`: the functions of the chain, the refused callee last.
    #[error("call depth exceeds max_depth {max_depth}: {}", .path.join(" -> "))]
    DepthExceeded { max_depth: u32, path: Vec<String> },
    #[error("calling {target:?} is not allowed: {reason}")]
    NotAllowed {
        target: String,
        reason: &'static str,
    },
    #[error("{name:?} is not a function name")]
    NotAFunction { name: String },
    #[error("no time left for a call: {remaining_ms} ms remain, the margin is {margin_ms} ms")]
    DeadlineExceeded { remaining_ms: u64, margin_ms: u64 },
    #[error(
        "an invocation may start at most {max} calls (functions.calls.max_calls_per_invocation)"
    )]
    TooManyCalls { max: u32 },
    #[error("header {header} {value:?} is not valid: {reason}")]
    InvalidHeader {
        header: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error(transparent)]
    Baggage(#[from] BaggageError),
}

impl CallError {
    pub fn code(&self) -> ErrorCode {
        match self {
            CallError::DepthExceeded { .. } => ErrorCode::CallDepthExceeded,
            CallError::NotAllowed { .. } => ErrorCode::CallNotAllowed,
            CallError::NotAFunction { .. } => ErrorCode::FunctionNotFound,
            CallError::DeadlineExceeded { .. } => ErrorCode::DeadlineExceeded,
            CallError::TooManyCalls { .. } => ErrorCode::TooManyRequests,
            CallError::InvalidHeader { .. } | CallError::Baggage(_) => ErrorCode::InvalidInput,
        }
    }
}

impl From<CallError> for ApiError {
    fn from(e: CallError) -> Self {
        let err = ApiError::new(e.code(), e.to_string());
        match e {
            CallError::DepthExceeded { max_depth, path } => err
                .with_detail("max_depth", max_depth)
                .with_detail("path", path),
            CallError::NotAllowed { target, .. } => err.with_detail("target", target),
            CallError::NotAFunction { name } => err.with_detail("function", name),
            CallError::DeadlineExceeded {
                remaining_ms,
                margin_ms,
            } => err
                .with_detail("remaining_ms", remaining_ms)
                .with_detail("margin_ms", margin_ms),
            CallError::TooManyCalls { max } => err.with_detail("max_calls_per_invocation", max),
            CallError::InvalidHeader { header, .. } => err.with_detail("header", header),
            CallError::Baggage(_) => err.with_detail("header", headers::BAGGAGE),
        }
    }
}

/// `host` lowercased, without `:port` or a final dot.
fn bare_host(host: &str) -> String {
    let host = match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    };
    host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase()
}

/// `host` (any case, `:port` ignored) is `reactor.internal` or under it.
pub fn is_internal(host: &str) -> bool {
    let host = bare_host(host);
    host == INTERNAL_DOMAIN
        || host
            .strip_suffix(INTERNAL_DOMAIN)
            .is_some_and(|rest| rest.ends_with('.'))
}

/// The label `host` names under `reactor.internal` (`users` for `Users.reactor.internal:80`),
/// lowercased; `None` unless it is exactly one label of lowercase letters, digits and '-'.
pub fn internal_target(host: &str) -> Option<String> {
    let host = bare_host(host);
    let label = host.strip_suffix(INTERNAL_DOMAIN)?.strip_suffix('.')?;
    ((1..=63).contains(&label.len())
        && label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'))
    .then(|| label.to_string())
}

/// The function an internal call goes to.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallTarget {
    /// The callee; for a contract, the contract's name until the router resolves its
    /// binding.
    pub function: String,
    /// The named contract (`email.sender@1`) the alias calls, whose bound function the
    /// router calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contract: Option<String>,
    /// The alias of the caller's `calls` it was called by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    /// The alias's own `timeout_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// Which function an outgoing request to `host` calls: `None` when `host` is not under
/// `reactor.internal`. With `calls` (the caller's manifest), only its aliases resolve;
/// without, the label is the function's name. A host under `reactor.internal` that
/// resolves to nothing is refused, never sent elsewhere.
pub fn resolve(host: &str, calls: Option<&Calls>) -> Result<Option<CallTarget>, CallError> {
    if !is_internal(host) {
        return Ok(None);
    }
    let Some(label) = internal_target(host) else {
        return Err(CallError::NotAllowed {
            target: bare_host(host),
            reason: "functions are called at NAME.reactor.internal",
        });
    };
    let target = match calls {
        Some(calls) => {
            let Some(call) = calls.get(&label) else {
                return Err(CallError::NotAllowed {
                    target: label,
                    reason: "the caller's manifest has no such alias in calls",
                });
            };
            CallTarget {
                function: call
                    .function
                    .clone()
                    .or_else(|| call.contract.clone())
                    .unwrap_or_default(),
                contract: call.contract.clone(),
                alias: Some(label),
                timeout_ms: call.timeout_ms,
            }
        }
        None if valid_function_name(&label) => CallTarget {
            function: label,
            contract: None,
            alias: None,
            timeout_ms: None,
        },
        None => return Err(CallError::NotAFunction { name: label }),
    };
    Ok(Some(target))
}

/// A call as the worker that intercepted it vouches for it to the router: the invocation
/// it was made from (the acting identity of the original request, the caller, the chain),
/// the callee its host resolved to, and the caller's time left. A router takes it only
/// from an authenticated worker; nothing in it comes from the caller's code but the
/// request itself and, when it sets one, its `baggage` (checked).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallContext {
    /// The org of the original request's token: the callee is looked up in it.
    pub org: String,
    pub token_id: String,
    pub role: Role,
    /// The function and deployment that made the call.
    pub caller_function: String,
    pub caller_deployment: String,
    /// `X-Request-Id` of the root request.
    pub request_id: String,
    /// The call's own span: a child of the caller's `traceparent`.
    pub traceparent: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baggage: Option<String>,
    /// The functions of the chain so far, the caller last (its length is the caller's
    /// depth).
    pub chain: Vec<String>,
    /// The function called.
    pub target: CallTarget,
    /// The caller's time left when the call was sent, in milliseconds.
    pub remaining_ms: u64,
    /// A custom interceptor's call to `next.reactor.internal`: the handle the router
    /// gave its invocation ([`crate::headers::NEXT`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

impl CallContext {
    /// The chain with the callee appended: the path a depth error names.
    pub fn path(&self) -> Vec<String> {
        let mut path = self.chain.clone();
        path.push(self.target.function.clone());
        path
    }
}

/// What reaches a called function: the context the caller's worker stamped (identity,
/// caller, request id, trace, baggage), whatever the caller's code set in those headers;
/// everything only the platform sets is removed first ([`headers::strip_reserved`]).
pub fn stamp_call_headers(h: &mut http::HeaderMap, context: &CallContext) {
    headers::strip_reserved(h);
    for name in [headers::TRACESTATE, headers::BAGGAGE] {
        h.remove(name);
    }
    let mut set = |k: &'static str, v: &str| {
        if let Ok(v) = http::HeaderValue::from_str(v) {
            h.insert(k, v);
        }
    };
    set(headers::CALLER_ORG, &context.org);
    set(headers::CALLER_TOKEN, &context.token_id);
    set(headers::CALLER_ROLE, context.role.as_str());
    set(headers::CALLER_FUNCTION, &context.caller_function);
    set(headers::CALLER_DEPLOYMENT, &context.caller_deployment);
    set(headers::REQUEST_ID, &context.request_id);
    set(headers::TRACEPARENT, &context.traceparent);
    if let Some(v) = &context.tracestate {
        set(headers::TRACESTATE, v);
    }
    if let Some(v) = &context.baggage {
        set(headers::BAGGAGE, v);
    }
}

/// A W3C `traceparent` (version `00`): `00-<trace id>-<parent id>-<flags>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    /// Never zero.
    pub trace_id: u128,
    /// The span that made the request; never zero.
    pub parent_id: u64,
    pub flags: u8,
}

impl TraceParent {
    /// Sampled.
    const ROOT_FLAGS: u8 = 0x01;

    /// Parses a version `00` header: lowercase hex, ids not all zero.
    pub fn parse(value: &str) -> Option<Self> {
        fn hex(part: &str, len: usize) -> Option<u128> {
            if part.len() != len || !part.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                return None;
            }
            u128::from_str_radix(part, 16).ok()
        }
        let mut parts = value.trim().split('-');
        let (Some(version), Some(trace), Some(parent), Some(flags), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return None;
        };
        if version != "00" {
            return None;
        }
        let trace_id = hex(trace, 32).filter(|&t| t != 0)?;
        let parent_id = hex(parent, 16).filter(|&p| p != 0)? as u64;
        let flags = hex(flags, 2)? as u8;
        Some(Self {
            trace_id,
            parent_id,
            flags,
        })
    }

    /// A new trace, sampled, whose first span is `span_id` (random ids from the caller; a
    /// zero, invalid in W3C, is taken as 1).
    pub fn root(trace_id: u128, span_id: u64) -> Self {
        Self {
            trace_id: trace_id.max(1),
            parent_id: span_id.max(1),
            flags: Self::ROOT_FLAGS,
        }
    }

    /// The context of a call made from this span: the same trace and flags, the call's own
    /// span `span_id` (random, from the caller).
    pub fn child(&self, span_id: u64) -> Self {
        Self {
            parent_id: span_id.max(1),
            ..*self
        }
    }

    /// A child of `incoming` when it is a valid `traceparent`, else a new root.
    pub fn child_or_root(incoming: Option<&str>, trace_id: u128, span_id: u64) -> Self {
        match incoming.and_then(Self::parse) {
            Some(parent) => parent.child(span_id),
            None => Self::root(trace_id, span_id),
        }
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.parent_id, self.flags
        )
    }
}

/// Why a `baggage` header is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BaggageError {
    #[error("baggage is {0} bytes, at most {max}", max = MAX_BAGGAGE_BYTES)]
    TooLarge(usize),
    #[error("baggage has {0} members, at most {max}", max = MAX_BAGGAGE_MEMBERS)]
    TooManyMembers(usize),
    #[error("baggage member {0:?} is not key=value[;property]")]
    Invalid(String),
}

/// Checks a `baggage` value (several headers joined with `,`) against the W3C syntax,
/// `key=value` members separated by `,`, each with optional `;key[=value]` properties,
/// and against the caps: [`MAX_BAGGAGE_MEMBERS`] members, [`MAX_BAGGAGE_BYTES`] bytes.
/// Returns the number of members.
pub fn check_baggage(value: &str) -> Result<usize, BaggageError> {
    if value.len() > MAX_BAGGAGE_BYTES {
        return Err(BaggageError::TooLarge(value.len()));
    }
    if value.trim().is_empty() {
        return Ok(0);
    }
    let mut members = 0;
    for member in value.split(',') {
        let mut parts = member.split(';');
        let valid = parts.next().is_some_and(|kv| {
            kv.split_once('=')
                .is_some_and(|(k, v)| is_token(k.trim()) && is_baggage_value(v.trim()))
        }) && parts.all(|p| match p.split_once('=') {
            Some((k, v)) => is_token(k.trim()) && is_baggage_value(v.trim()),
            None => is_token(p.trim()),
        });
        if !valid {
            return Err(BaggageError::Invalid(member.trim().to_string()));
        }
        members += 1;
    }
    if members > MAX_BAGGAGE_MEMBERS {
        return Err(BaggageError::TooManyMembers(members));
    }
    Ok(members)
}

/// An RFC 7230 token (a baggage key).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// W3C `baggage-octet`s: visible ASCII but `"`, `,`, `;` and `\` (others percent-encoded).
fn is_baggage_value(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b',' | b';' | b'\\'))
}

/// The callee's timeout: the smallest of its own limit, the alias's and the caller's
/// `remaining` time less `margin`. With no more than `margin` left, the call fails at once.
pub fn callee_timeout(
    remaining: Duration,
    own: Duration,
    alias: Option<Duration>,
    margin: Duration,
) -> Result<Duration, CallError> {
    if remaining <= margin {
        return Err(CallError::DeadlineExceeded {
            remaining_ms: remaining.as_millis() as u64,
            margin_ms: margin.as_millis() as u64,
        });
    }
    let left = remaining - margin;
    Ok(own.min(alias.unwrap_or(Duration::MAX)).min(left))
}

/// The `X-Reactor-Deadline-Ms` value of `timeout`: whole milliseconds, rounded down.
pub fn deadline_header(timeout: Duration) -> String {
    timeout.as_millis().to_string()
}

/// The remaining time an `X-Reactor-Deadline-Ms` value gives; `None` when absent.
pub fn parse_deadline(value: Option<&str>) -> Result<Option<Duration>, CallError> {
    let Some(v) = value else { return Ok(None) };
    v.trim()
        .parse::<u64>()
        .ok()
        .filter(|_| v.trim().bytes().all(|b| b.is_ascii_digit()))
        .map(|ms| Some(Duration::from_millis(ms)))
        .ok_or_else(|| CallError::InvalidHeader {
            header: headers::DEADLINE_MS,
            value: v.to_string(),
            reason: "expected milliseconds",
        })
}

/// The depth an `X-Reactor-Call-Depth` value gives: 1 (an outside request) when absent.
pub fn parse_depth(value: Option<&str>) -> Result<u32, CallError> {
    let Some(v) = value else { return Ok(1) };
    v.trim()
        .parse::<u32>()
        .ok()
        .filter(|&d| d >= 1 && v.trim().bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| CallError::InvalidHeader {
            header: headers::CALL_DEPTH,
            value: v.to_string(),
            reason: "expected a hop count of at least 1",
        })
}

/// The depth of a call made at `depth`, or why it may not be made: past `max_depth`
/// (itself held to [`MAX_DEPTH_CAP`]). `path` names the chain's functions, the callee last.
pub fn next_depth<S: AsRef<str>>(depth: u32, max_depth: u32, path: &[S]) -> Result<u32, CallError> {
    let max_depth = max_depth.clamp(1, MAX_DEPTH_CAP);
    let next = depth.saturating_add(1);
    if next > max_depth {
        return Err(CallError::DepthExceeded {
            max_depth,
            path: path.iter().map(|s| s.as_ref().to_string()).collect(),
        });
    }
    Ok(next)
}

/// Counts a call of an invocation that has started `started` already: the new count, or
/// [`CallError::TooManyCalls`] past `max`.
pub fn count_call(started: u32, max: u32) -> Result<u32, CallError> {
    if started >= max {
        return Err(CallError::TooManyCalls { max });
    }
    Ok(started + 1)
}

/// The declared call graph from a function, as its callers' manifests declare it:
/// `depth` functions in its deepest chain that repeats none (1: it calls nothing), `path`
/// their names, the function first; `cycle` when a chain can come back to a function
/// already in it (the calls may then recurse until `functions.calls.max_depth`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct CallGraph {
    pub depth: u32,
    pub path: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cycle: Option<Vec<String>>,
}

/// Walks the declared call graph from `root`: `callees` gives the functions each one
/// declares in `calls` (a function absent from it declares nothing we can follow: it is a
/// leaf). The first loop found is reported (its functions, the first repeated at the
/// end), and left out of the depth.
pub fn call_graph(
    root: &str,
    callees: &std::collections::HashMap<String, Vec<String>>,
) -> CallGraph {
    use std::collections::HashMap;
    struct Walk<'a> {
        callees: &'a HashMap<String, Vec<String>>,
        stack: Vec<String>,
        memo: HashMap<String, Vec<String>>,
        cycle: Option<Vec<String>>,
    }
    impl Walk<'_> {
        /// The deepest path from `f` that repeats no function of the stack.
        fn deepest(&mut self, f: &str) -> Vec<String> {
            if let Some(done) = self.memo.get(f) {
                return done.clone();
            }
            self.stack.push(f.to_string());
            let mut best: Vec<String> = Vec::new();
            let callees = self.callees.get(f).cloned().unwrap_or_default();
            for callee in callees {
                if let Some(i) = self.stack.iter().position(|s| *s == callee) {
                    if self.cycle.is_none() {
                        let mut cycle = self.stack[i..].to_vec();
                        cycle.push(callee);
                        self.cycle = Some(cycle);
                    }
                    continue;
                }
                let path = self.deepest(&callee);
                if path.len() > best.len() {
                    best = path;
                }
            }
            self.stack.pop();
            best.insert(0, f.to_string());
            self.memo.insert(f.to_string(), best.clone());
            best
        }
    }
    let mut walk = Walk {
        callees,
        stack: Vec::new(),
        memo: HashMap::new(),
        cycle: None,
    };
    let path = walk.deepest(root);
    CallGraph {
        depth: path.len() as u32,
        path,
        cycle: walk.cycle,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::CallAlias;

    fn calls(list: &[(&str, &str, Option<u64>)]) -> Calls {
        list.iter()
            .map(|(alias, function, timeout_ms)| {
                let call = CallAlias {
                    function: Some(function.to_string()),
                    contract: None,
                    timeout_ms: *timeout_ms,
                    interceptors: None,
                };
                (alias.to_string(), call)
            })
            .collect()
    }

    #[test]
    fn internal_hosts_and_their_label() {
        for (host, label) in [
            ("users.reactor.internal", Some("users")),
            ("Users.Reactor.INTERNAL", Some("users")),
            ("users.reactor.internal:8080", Some("users")),
            ("users.reactor.internal.", Some("users")),
            ("get-user-2.reactor.internal:80", Some("get-user-2")),
            ("a.b.reactor.internal", None),
            (".reactor.internal", None),
            ("reactor.internal", None),
            ("us_ers.reactor.internal", None),
            ("usersreactor.internal", None),
            ("users.reactor.internal.evil.com", None),
            ("users.reactor.internalx", None),
            ("example.com", None),
            ("", None),
        ] {
            assert_eq!(internal_target(host).as_deref(), label, "{host}");
        }
        let long = format!("{}.reactor.internal", "a".repeat(64));
        assert_eq!(internal_target(&long), None);
        assert!(is_internal("a.b.reactor.internal"));
        assert!(is_internal("REACTOR.INTERNAL:1"));
        assert!(!is_internal("usersreactor.internal"));
        assert!(!is_internal("reactor.internal.example.com"));
        assert!(!is_internal("[::1]:8080"));
    }

    #[test]
    fn resolve_without_calls_takes_the_label_as_the_function() {
        let t = resolve("get-user.reactor.internal", None)
            .expect("allowed")
            .expect("internal");
        assert_eq!(
            t,
            CallTarget {
                function: "get-user".into(),
                contract: None,
                alias: None,
                timeout_ms: None,
            }
        );
        assert_eq!(resolve("example.com:443", None), Ok(None));
        let err = resolve("1user.reactor.internal", None).expect_err("not a function name");
        assert_eq!(err.code(), ErrorCode::FunctionNotFound);
        // Under the internal domain but not one label: refused, never sent outside.
        let err = resolve("a.b.reactor.internal", None).expect_err("two labels");
        assert_eq!(err.code(), ErrorCode::CallNotAllowed);
        assert!(err.to_string().contains("a.b.reactor.internal"), "{err}");
    }

    #[test]
    fn resolve_with_calls_takes_only_the_aliases() {
        let calls = calls(&[
            ("users", "get-user", Some(800)),
            ("mail", "send-mail", None),
        ]);
        let t = resolve("USERS.reactor.internal:80", Some(&calls))
            .expect("an alias")
            .expect("internal");
        assert_eq!(t.function, "get-user");
        assert_eq!(t.alias.as_deref(), Some("users"));
        assert_eq!(t.timeout_ms, Some(800));
        assert_eq!(t.contract, None);
        let mut with_contract = calls.clone();
        with_contract.insert(
            "email-sender".into(),
            CallAlias {
                function: None,
                contract: Some("email.sender@1".into()),
                timeout_ms: None,
                interceptors: None,
            },
        );
        let t = resolve("email-sender.reactor.internal", Some(&with_contract))
            .expect("an alias")
            .expect("internal");
        assert_eq!(t.contract.as_deref(), Some("email.sender@1"));
        assert_eq!(
            t.function, "email.sender@1",
            "named by the contract until bound"
        );
        let err = resolve("get-user.reactor.internal", Some(&calls)).expect_err("not an alias");
        assert_eq!(
            err,
            CallError::NotAllowed {
                target: "get-user".into(),
                reason: "the caller's manifest has no such alias in calls",
            }
        );
        assert_eq!(err.code(), ErrorCode::CallNotAllowed);
        assert_eq!(resolve("example.com", Some(&calls)), Ok(None));
        // Empty `calls`: nothing may be called.
        let none = Calls::new();
        assert!(resolve("users.reactor.internal", Some(&none)).is_err());
    }

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn traceparent_parses_and_prints_back() {
        let tp = TraceParent::parse(TP).expect("the W3C example");
        assert_eq!(tp.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(tp.parent_id, 0x00f067aa0ba902b7);
        assert_eq!(tp.flags, 1);
        assert_eq!(tp.to_string(), TP);
        assert_eq!(
            TraceParent::parse(&format!(" {TP} ")),
            Some(tp),
            "surrounding whitespace"
        );
    }

    #[test]
    fn invalid_traceparents_are_refused() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_call_is_a_child_span_of_the_same_trace() {
        let parent = TraceParent::parse(TP).expect("valid");
        let child = parent.child(0xabc);
        assert_eq!(child.trace_id, parent.trace_id);
        assert_eq!(child.flags, parent.flags);
        assert_eq!(child.parent_id, 0xabc);
        assert_eq!(
            child.to_string(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000abc-01"
        );
        let unsampled = TraceParent::parse(&TP.replace("-01", "-00")).expect("valid");
        assert_eq!(unsampled.child(7).flags, 0, "flags are inherited");
        assert_eq!(TraceParent::child_or_root(Some(TP), 5, 6), parent.child(6));
        for incoming in [None, Some("garbage")] {
            let root = TraceParent::child_or_root(incoming, 5, 6);
            assert_eq!(
                root.to_string(),
                "00-00000000000000000000000000000005-0000000000000006-01"
            );
        }
        let zero = TraceParent::root(0, 0);
        assert_eq!(
            TraceParent::parse(&zero.to_string()),
            Some(zero),
            "never all-zero ids"
        );
        assert_ne!(parent.child(0).parent_id, 0);
    }

    #[test]
    fn baggage_follows_the_w3c_syntax() {
        for (ok, members) in [
            ("", 0),
            ("userId=alice", 1),
            ("userId=alice, serverNode=DF%2028 ,isProduction=false", 3),
            ("key1=value1;property1;property2=x, key2 = value2", 2),
            ("k=", 1),
            ("k=a=b", 1),
        ] {
            assert_eq!(check_baggage(ok), Ok(members), "{ok}");
        }
        for bad in [
            "novalue",
            "=value",
            "k=v,",
            "k=v,,k2=v2",
            "k=va lue",
            "k=\"v\"",
            "k=v\\",
            "ke y=v",
            "k=v;",
            "k=v;=x",
            "k=é",
        ] {
            assert!(
                matches!(check_baggage(bad), Err(BaggageError::Invalid(_))),
                "{bad}"
            );
        }
        let err = check_baggage("a=1,b=2,c d=3").expect_err("a bad member");
        assert_eq!(err, BaggageError::Invalid("c d=3".into()));
    }

    #[test]
    fn baggage_is_capped() {
        let members = |n: usize| {
            (0..n)
                .map(|i| format!("k{i}=v"))
                .collect::<Vec<_>>()
                .join(",")
        };
        assert_eq!(check_baggage(&members(64)), Ok(64));
        assert_eq!(
            check_baggage(&members(65)),
            Err(BaggageError::TooManyMembers(65))
        );
        let at = format!("k={}", "v".repeat(MAX_BAGGAGE_BYTES - 2));
        assert_eq!(check_baggage(&at), Ok(1));
        let over = format!("k={}", "v".repeat(MAX_BAGGAGE_BYTES - 1));
        assert_eq!(
            check_baggage(&over),
            Err(BaggageError::TooLarge(MAX_BAGGAGE_BYTES + 1))
        );
        let err = ApiError::from(CallError::from(BaggageError::TooManyMembers(65)));
        assert_eq!(err.code, ErrorCode::InvalidInput);
        assert!(err.message.contains("at most 64"), "{}", err.message);
    }

    #[test]
    fn the_callee_gets_the_smallest_timeout() {
        let ms = Duration::from_millis;
        let margin = ms(10);
        // The caller's remainder less the margin.
        assert_eq!(
            callee_timeout(ms(500), ms(30_000), None, margin),
            Ok(ms(490))
        );
        // The callee's own limit.
        assert_eq!(
            callee_timeout(ms(60_000), ms(1_000), None, margin),
            Ok(ms(1_000))
        );
        // The alias's.
        assert_eq!(
            callee_timeout(ms(60_000), ms(30_000), Some(ms(800)), margin),
            Ok(ms(800))
        );
        assert_eq!(
            callee_timeout(ms(300), ms(30_000), Some(ms(800)), margin),
            Ok(ms(290))
        );
        assert_eq!(callee_timeout(ms(11), ms(30_000), None, margin), Ok(ms(1)));
        for remaining in [ms(10), ms(9), ms(0)] {
            let err = callee_timeout(remaining, ms(30_000), None, margin).expect_err("too late");
            assert_eq!(err.code(), ErrorCode::DeadlineExceeded);
            assert_eq!(
                err,
                CallError::DeadlineExceeded {
                    remaining_ms: remaining.as_millis() as u64,
                    margin_ms: 10
                }
            );
        }
        // No margin: only a spent deadline fails.
        assert_eq!(callee_timeout(ms(1), ms(5), None, ms(0)), Ok(ms(1)));
        assert!(callee_timeout(ms(0), ms(5), None, ms(0)).is_err());
    }

    #[test]
    fn deadline_header_round_trips() {
        let d = Duration::from_micros(1_234_999);
        let header = deadline_header(d);
        assert_eq!(header, "1234", "rounded down");
        assert_eq!(
            parse_deadline(Some(header.as_str())),
            Ok(Some(Duration::from_millis(1234)))
        );
        assert_eq!(parse_deadline(None), Ok(None));
        assert_eq!(parse_deadline(Some(" 0 ")), Ok(Some(Duration::ZERO)));
        for bad in ["", "-1", "+5", "1.5", "soon", "99999999999999999999"] {
            let err = parse_deadline(Some(bad)).expect_err(bad);
            assert_eq!(err.code(), ErrorCode::InvalidInput);
            assert!(err.to_string().contains(headers::DEADLINE_MS), "{err}");
        }
    }

    #[test]
    fn depth_header_parses() {
        assert_eq!(parse_depth(None), Ok(1), "an outside request");
        assert_eq!(parse_depth(Some("3")), Ok(3));
        assert_eq!(parse_depth(Some(" 16 ")), Ok(16));
        for bad in ["", "0", "-1", "+2", "two", "1.0", "4294967296"] {
            let err = parse_depth(Some(bad)).expect_err(bad);
            assert!(err.to_string().contains(headers::CALL_DEPTH), "{err}");
            assert_eq!(err.code(), ErrorCode::InvalidInput);
        }
    }

    #[test]
    fn depth_stops_at_the_limit_naming_the_path() {
        assert_eq!(next_depth(1, 16, &["a", "b"]), Ok(2));
        assert_eq!(next_depth(15, 16, &["a"]), Ok(16));
        let err = next_depth(2, 2, &["a", "b", "a"]).expect_err("a -> b -> a past 2");
        assert_eq!(
            err,
            CallError::DepthExceeded {
                max_depth: 2,
                path: vec!["a".into(), "b".into(), "a".into()],
            }
        );
        assert_eq!(
            err.to_string(),
            "call depth exceeds max_depth 2: a -> b -> a"
        );
        let api = ApiError::from(err);
        assert_eq!(api.code, ErrorCode::CallDepthExceeded);
        assert_eq!(api.status().as_u16(), 508);
        assert_eq!(api.details["path"], serde_json::json!(["a", "b", "a"]));
        assert_eq!(api.details["max_depth"], 2);
        // The hard cap holds whatever the configuration says; 0 means outside requests only.
        let path = vec![String::from("f"); 33];
        assert_eq!(next_depth(31, 1000, &path), Ok(32));
        assert!(matches!(
            next_depth(32, 1000, &path),
            Err(CallError::DepthExceeded { max_depth: 32, .. })
        ));
        assert!(next_depth(1, 0, &["f"]).is_err());
        assert!(next_depth(1, 1, &["f"]).is_err());
        assert!(next_depth(u32::MAX, 16, &["f"]).is_err());
    }

    #[test]
    fn fan_out_is_counted() {
        assert_eq!(count_call(0, 50), Ok(1));
        assert_eq!(count_call(49, 50), Ok(50));
        let err = count_call(50, 50).expect_err("the 51st");
        assert_eq!(err, CallError::TooManyCalls { max: 50 });
        let api = ApiError::from(err);
        assert_eq!(api.status().as_u16(), 429);
        assert_eq!(api.details["max_calls_per_invocation"], 50);
    }

    #[test]
    fn errors_map_to_their_codes() {
        let not_allowed = ApiError::from(CallError::NotAllowed {
            target: "users".into(),
            reason: "the caller's manifest has no such alias in calls",
        });
        assert_eq!(not_allowed.status().as_u16(), 403);
        assert_eq!(not_allowed.code, ErrorCode::CallNotAllowed);
        assert_eq!(not_allowed.details["target"], "users");
        assert!(
            not_allowed.message.contains("\"users\""),
            "{}",
            not_allowed.message
        );
        let late = ApiError::from(CallError::DeadlineExceeded {
            remaining_ms: 3,
            margin_ms: 10,
        });
        assert_eq!(late.status().as_u16(), 504);
        assert_eq!(late.details["remaining_ms"], 3);
        let missing = ApiError::from(CallError::NotAFunction { name: "1a".into() });
        assert_eq!(missing.code, ErrorCode::FunctionNotFound);
    }

    #[test]
    fn the_call_graph_gives_the_deepest_chain_and_finds_loops() {
        let graph = |edges: &[(&str, &[&str])]| -> std::collections::HashMap<String, Vec<String>> {
            edges
                .iter()
                .map(|(f, cs)| (f.to_string(), cs.iter().map(|c| c.to_string()).collect()))
                .collect()
        };
        let g = graph(&[("a", &["b", "c"]), ("b", &["d"]), ("c", &[]), ("d", &["e"])]);
        assert_eq!(
            call_graph("a", &g),
            CallGraph {
                depth: 4,
                path: vec!["a".into(), "b".into(), "d".into(), "e".into()],
                cycle: None,
            }
        );
        assert_eq!(call_graph("c", &g).depth, 1);
        assert_eq!(call_graph("lonely", &g).depth, 1);
        let cyclic = graph(&[("a", &["b"]), ("b", &["c"]), ("c", &["a"])]);
        let walked = call_graph("a", &cyclic);
        assert_eq!(
            walked.cycle,
            Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
        );
        assert_eq!(walked.depth, 3, "the loop is left out of the depth");
        let own = graph(&[("a", &["a", "b"])]);
        let walked = call_graph("a", &own);
        assert_eq!(walked.cycle, Some(vec!["a".into(), "a".into()]));
        assert_eq!(walked.path, ["a", "b"]);
        // A diamond is no loop.
        let diamond = graph(&[("a", &["b", "c"]), ("b", &["d"]), ("c", &["d"])]);
        let walked = call_graph("a", &diamond);
        assert_eq!((walked.depth, walked.cycle), (3, None));
    }
}
