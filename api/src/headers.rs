//! Header names of the public contract, in one place.

pub const AUTHORIZATION: &str = "authorization";
pub const ORG: &str = "x-reactor-org";
pub const FUNCTION: &str = "x-reactor-function";
pub const COLD_START: &str = "x-reactor-cold-start";
pub const DURATION_MS: &str = "x-reactor-duration-ms";
/// On every error the platform answers (its code). A function may send it too (passing on
/// the refusal of a call it made, say): it tells a client the platform's error shape is in
/// the body, not that the router itself refused.
pub const ERROR: &str = "x-reactor-error";
pub const REQUEST_ID: &str = "x-request-id";
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";
pub const BAGGAGE: &str = "baggage";
pub const FORWARDED_PREFIX: &str = "x-forwarded-prefix";
pub const CALLER_ORG: &str = "x-reactor-caller-org";
pub const CALLER_TOKEN: &str = "x-reactor-caller-token";
pub const CALLER_ROLE: &str = "x-reactor-caller-role";
pub const BUNDLE_SHA256: &str = "x-reactor-bundle-sha256";
// Calls between functions (`crate::calls`): the function and deployment that made the
// call, the caller's remaining time in milliseconds (relative, like `grpc-timeout`) and
// the hop count (1 for an outside request).
pub const CALLER_FUNCTION: &str = "x-reactor-caller-function";
pub const CALLER_DEPLOYMENT: &str = "x-reactor-caller-deployment";
pub const DEADLINE_MS: &str = "x-reactor-deadline-ms";
pub const CALL_DEPTH: &str = "x-reactor-call-depth";
// Interceptors (`crate::interceptors`): the key a retried request keeps across attempts
// (set by the router when the caller sent none), and the attempts made, on the response.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
pub const ATTEMPTS: &str = "x-reactor-attempts";
// An adaptive pool's current concurrency limit on this router, on each response.
pub const POOL_LIMIT: &str = "x-reactor-pool-limit";
/// On a response whose request or answer broke a contract in `mode: report`: `input`,
/// `output` or both.
pub const CONTRACT_VIOLATIONS: &str = "x-reactor-contract-violations";
/// On a custom interceptor's request (`crate::interceptors`): its one-time handle on the
/// rest of the chain, which its worker attaches to its call to `next.reactor.internal`.
pub const NEXT: &str = "x-reactor-next";

/// Every header under these prefixes is the platform's own: stripped from what reaches a
/// function, whatever follows them (`x-reactor-internal-*` between services,
/// `x-reactor-call-*` between a runtime and its harness: a call's capability, host and
/// call-back URL, and the call depth).
pub const INTERNAL_PREFIX: &str = "x-reactor-internal";
pub const CALL_HEADER_PREFIX: &str = "x-reactor-call-";
pub const RESERVED_PREFIXES: [&str; 2] = [INTERNAL_PREFIX, CALL_HEADER_PREFIX];

/// Headers a caller may not set on what reaches a function: the router sets them itself
/// (an outside request carrying the call headers gets no special treatment).
pub const RESERVED_FOR_ROUTER: [&str; 9] = [
    CALLER_ORG,
    CALLER_TOKEN,
    CALLER_ROLE,
    CALLER_FUNCTION,
    CALLER_DEPLOYMENT,
    DEADLINE_MS,
    CALL_DEPTH,
    FORWARDED_PREFIX,
    NEXT,
];

/// Removes what only the platform sets: `X-Reactor-Org`, the router's headers and every
/// `x-reactor-internal-*` and `x-reactor-call-*` header; a `Host` under
/// `reactor.internal` too (it names the platform's own addresses: a function building
/// URLs from it would call what the client chose).
pub fn strip_reserved(h: &mut http::HeaderMap) {
    h.remove(ORG);
    if h.get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .is_some_and(crate::calls::is_internal)
    {
        h.remove(http::header::HOST);
    }
    for reserved in RESERVED_FOR_ROUTER {
        h.remove(reserved);
    }
    let internal: Vec<http::HeaderName> = h
        .keys()
        .filter(|k| RESERVED_PREFIXES.iter().any(|p| k.as_str().starts_with(p)))
        .cloned()
        .collect();
    for name in internal {
        h.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_lowercase_header_names() {
        let names = [
            AUTHORIZATION,
            ORG,
            FUNCTION,
            COLD_START,
            DURATION_MS,
            REQUEST_ID,
            TRACEPARENT,
            TRACESTATE,
            IDEMPOTENCY_KEY,
            ATTEMPTS,
            POOL_LIMIT,
            BAGGAGE,
            FORWARDED_PREFIX,
            BUNDLE_SHA256,
        ];
        for &name in names.iter().chain(&RESERVED_FOR_ROUTER) {
            // `from_static` panics on anything but a lowercase, valid name.
            assert_eq!(http::HeaderName::from_static(name).as_str(), name);
        }
    }

    #[test]
    fn call_context_is_reserved_for_the_router() {
        for name in [
            CALLER_ORG,
            CALLER_TOKEN,
            CALLER_ROLE,
            CALLER_FUNCTION,
            CALLER_DEPLOYMENT,
            DEADLINE_MS,
            CALL_DEPTH,
        ] {
            assert!(RESERVED_FOR_ROUTER.contains(&name), "{name}");
        }
        // Standard context from outside passes through (the router re-stamps the trace).
        assert!(!RESERVED_FOR_ROUTER.contains(&BAGGAGE));
    }
}
