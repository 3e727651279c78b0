//! Header names of the public contract, in one place.

pub const AUTHORIZATION: &str = "authorization";
pub const ORG: &str = "x-reactor-org";
pub const FUNCTION: &str = "x-reactor-function";
pub const COLD_START: &str = "x-reactor-cold-start";
pub const DURATION_MS: &str = "x-reactor-duration-ms";
pub const REQUEST_ID: &str = "x-request-id";
pub const TRACEPARENT: &str = "traceparent";
pub const FORWARDED_PREFIX: &str = "x-forwarded-prefix";
pub const CALLER_ORG: &str = "x-reactor-caller-org";
pub const CALLER_TOKEN: &str = "x-reactor-caller-token";
pub const CALLER_ROLE: &str = "x-reactor-caller-role";
pub const BUNDLE_SHA256: &str = "x-reactor-bundle-sha256";

/// Headers a caller may not set on what reaches a function: the router sets them itself.
pub const RESERVED_FOR_ROUTER: [&str; 5] = [
    CALLER_ORG,
    CALLER_TOKEN,
    CALLER_ROLE,
    FORWARDED_PREFIX,
    "x-reactor-internal",
];
