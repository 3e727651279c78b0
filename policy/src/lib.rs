//! Invoke policies per function: an ordered list of allow/deny rules that routers check on
//! every invocation before the function runs.
//!
//! This crate owns the policy model (its JSON form, [`Policy`]), its validation and
//! compilation ([`Policy::compile`], called by the control plane when a policy is set, so an
//! invalid rule is refused then with a message naming it) and its evaluation
//! ([`CompiledPolicy::evaluate`], called by routers on the hot path: compile once, share the
//! [`CompiledPolicy`] in an `Arc`, evaluate many times). It does no I/O, keeps no state between
//! evaluations, reads no clock of its own (the caller passes `now`) and must never panic or
//! block on a request: an expression that fails at run time denies instead.
//!
//! # Rules
//!
//! Rules are checked in order and the first rule whose conditions all match decides, with its
//! `effect`. A condition that is absent matches every request. When no rule matches, the
//! policy's `default` decides (allow when absent). The conditions are:
//!
//! - `methods`: HTTP methods, case-insensitive (stored upper-case).
//! - `paths`: globs on the request path as the function sees it (relative to its mount, without
//!   the query). `*` matches within one path segment, `?` one character of a segment, `**` (a
//!   whole segment) any number of segments, `[ab]` and `{a,b}` as usual. `/admin/**` matches
//!   `/admin/` and `/admin/x/y` but not `/admin` itself: list both to cover both. Globs must
//!   start with `/`. This crate matches the path it is given; the router gives it the
//!   function's path normalised (escapes of unreserved characters decoded, empty and `.`
//!   segments dropped, `..` resolved), so `/%61dmin//./x` is matched as `/admin/x`.
//! - `days` (`mon`..`sun`) and `hours` (`{from, to}`, `from <= hour < to`, wrapping midnight
//!   when `from > to`), both in UTC and checked independently against the current time.
//! - `when`: a [CEL](https://github.com/google/cel-spec) expression, see below.
//!
//! # Expressions
//!
//! `when` sees one variable, `request`, a map with `method` (upper-case string), `path`,
//! `headers` (lower-case names; repeated headers joined with `", "`), `query` (percent-decoded,
//! `+` read as a space, the first value of a repeated key), `caller` (`org`, `role`,
//! `token_id`), `time` (a CEL timestamp, UTC), `hour` (int 0-23, UTC) and `weekday` (`mon`..
//! `sun`, UTC). The functions are those of `cel-interpreter` 0.10: `size`, `contains`,
//! `startsWith`, `endsWith`, `matches`, `string`, `int`, `uint`, `double`, `bytes`, `max`,
//! `min`, `duration`, `timestamp`, the timestamp getters (`getHours`, `getDayOfWeek`, ...) and
//! the macros `has`, `all`, `exists`, `exists_one`, `map` and `filter`.
//!
//! `matches` takes a literal pattern (`request.headers['x-id'].matches('^[a-z0-9-]{1,32}$')`
//! or `matches(request.path, '^/v[0-9]+/')`): each distinct pattern is compiled once, when the
//! policy is, and evaluation only looks it up (the interpreter's own `matches` would compile it
//! on every call). A pattern computed at run time is refused. A pattern is at most
//! [`MAX_PATTERN_BYTES`] bytes, its compiled form at most [`MAX_REGEX_BYTES`] (Unicode classes
//! are large, `\w` alone tens of kilobytes: prefer ASCII ones such as `[A-Za-z0-9_]`), and a
//! policy has at most [`MAX_PATTERNS`] distinct patterns. The `regex` crate never backtracks:
//! one match costs time linear in the input, at worst the compiled size times the input's
//! length, and the input is bounded by the router's limits on a request's head.
//!
//! **Fail closed**: an expression that does not evaluate to a bool, or whose evaluation fails,
//! makes its rule decide *deny*, whatever the rule's effect, with a reason saying why
//! (`rule "beta-header": expression failed: No such key: x-beta`). As in the CEL
//! specification, indexing a map with a missing key (`request.headers['x-beta']`) is an error
//! (`cel-interpreter` 0.10 itself would give `null`; this crate makes it strict): guard optional
//! keys with `'x-beta' in request.headers && ...`. Note that `||` in `cel-interpreter` returns
//! its left operand when that is truthy, so compare explicitly (`request.headers['x'] == '1'`)
//! rather than relying on truthiness.
//!
//! Compiling refuses syntax errors, unknown variables, functions and `request` fields, message
//! construction, constant non-bool results, expressions longer than
//! [`MAX_EXPRESSION_CHARS`] characters or nested deeper than 32 brackets or 64 levels, list
//! and map literals of more than 256 elements and macros nested in one another (so that costs
//! do not multiply), and evaluates each expression once against a sample request to catch
//! anything else that the interpreter only reports at run time as an undeclared reference.
//! Note that `map` and `filter` over request data cost quadratic time in `cel-interpreter`
//! (each step copies the accumulated list); prefer `exists` and `all`. The interpreter has
//! `todo!()`s for some inputs (a macro over a string, say): evaluation catches the panic and
//! denies, which relies on the workspace building with `panic = "unwind"` (the default).

#![forbid(unsafe_code)]

use cel_interpreter::extractors::This;
use cel_interpreter::objects::{Key, Map};
use cel_interpreter::{Context, ExecutionError, Value};
use cel_parser::ast::{CallExpr, ComprehensionExpr, EntryExpr, Expr, IdedExpr, operators};
use cel_parser::reference::Val;
use chrono::{DateTime, Datelike, Timelike, Utc};
use globset::{Candidate, GlobBuilder, GlobSet, GlobSetBuilder};
use regex::{Regex, RegexBuilder};
use serde::{Deserialize, Deserializer, Serialize};
use std::any::Any;
use std::collections::{HashMap, HashSet};
use std::fmt::{self, Write as _};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, LazyLock};
use std::time::{SystemTime, UNIX_EPOCH};

/// At most this many rules in a policy.
pub const MAX_RULES: usize = 64;
/// A rule's name is 1 to this many characters of `[A-Za-z0-9_.-]`.
pub const MAX_NAME_CHARS: usize = 64;
/// A `when` expression is at most this many characters.
pub const MAX_EXPRESSION_CHARS: usize = 4096;
/// The name [`Decision::Deny`] carries when the policy's default denied.
pub const DEFAULT_RULE: &str = "default";
/// A `matches` pattern is at most this many bytes.
pub const MAX_PATTERN_BYTES: usize = 1024;
/// Each automaton of a compiled `matches` pattern takes at most this many bytes (the regex
/// crate's `size_limit`): this bounds compile time and the cost of matching per input byte.
pub const MAX_REGEX_BYTES: usize = 64 << 10;
/// A policy has at most this many distinct `matches` patterns.
pub const MAX_PATTERNS: usize = 64;

const MAX_METHODS: usize = 32;
const MAX_PATHS: usize = 64;
const MAX_GLOB_CHARS: usize = 1024;
/// Bracket nesting allowed in an expression's text (keeps the recursive parser shallow).
const MAX_NESTING: usize = 32;
/// Depth allowed in an expression's tree (keeps the recursive evaluator shallow).
const MAX_DEPTH: usize = 64;
/// Elements of a list or map literal (a macro over a literal costs its size per request).
const MAX_LITERAL_ELEMENTS: usize = 256;
/// Lazy DFA cache of one pattern, per thread that matches with it (the regex crate's
/// `dfa_size_limit`); when full it is cleared, and past a few clears the crate falls back to
/// its slower engines, still linear.
const REGEX_CACHE_BYTES: usize = 256 << 10;
/// Stack of the thread that parses expressions: the parser recurses once per operator in a
/// chain such as `a + a + a ...`, which the depth limit only refuses after parsing.
const COMPILER_STACK_BYTES: usize = 64 << 20;
const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
const REQUEST: &str = "request";
/// The strict map/list index the compiler substitutes for CEL's `_[_]` (a name no
/// expression can spell).
const STRICT_INDEX: &str = "@index";
/// CEL's regular expression match, replaced by a lookup of precompiled patterns.
const MATCHES: &str = "matches";
/// The functions of the interpreter's default context (features `chrono` and `regex`).
const FUNCTIONS: &[&str] = &[
    "contains",
    "size",
    "max",
    "min",
    "startsWith",
    "endsWith",
    "string",
    "bytes",
    "double",
    "int",
    "uint",
    "matches",
    "duration",
    "timestamp",
    "getFullYear",
    "getMonth",
    "getDayOfYear",
    "getDayOfMonth",
    "getDate",
    "getDayOfWeek",
    "getHours",
    "getMinutes",
    "getSeconds",
    "getMilliseconds",
];
/// Functions whose result is never a bool: an expression that is one of these is refused.
const NON_BOOL_FUNCTIONS: &[&str] = &[
    operators::ADD,
    operators::SUBSTRACT,
    operators::MULTIPLY,
    operators::DIVIDE,
    operators::MODULO,
    operators::NEGATE,
    "size",
    "string",
    "bytes",
    "double",
    "int",
    "uint",
    "duration",
    "timestamp",
    "getFullYear",
    "getMonth",
    "getDayOfYear",
    "getDayOfMonth",
    "getDate",
    "getDayOfWeek",
    "getHours",
    "getMinutes",
    "getSeconds",
    "getMilliseconds",
];

// ---------------------------------------------------------------------------------------------
// Model
// ---------------------------------------------------------------------------------------------

/// A function's invoke policy, as stored and sent as JSON.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// What happens when no rule matches.
    #[serde(default)]
    pub default: Effect,
    /// Checked in order; the first rule that matches decides.
    #[serde(default)]
    pub rules: Vec<Rule>,
}

/// Allow or deny.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    #[default]
    Allow,
    Deny,
}

/// One rule: its conditions (all must match; an absent one matches everything) and its effect.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// 1 to 64 characters of `[A-Za-z0-9_.-]`, unique in the policy (`default` is reserved).
    pub name: String,
    pub effect: Effect,
    /// HTTP methods, case-insensitive; read upper-case.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "upper_case_list"
    )]
    pub methods: Vec<String>,
    /// Globs on the request path; the rule matches when any of them does.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// UTC weekdays, `mon`..`sun`, case-insensitive; read lower-case.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "lower_case_list"
    )]
    pub days: Vec<String>,
    /// A UTC hour window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hours: Option<Hours>,
    /// A CEL expression over `request` that must be true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
}

/// UTC hours `from <= hour < to`, 0 to 24; wraps midnight when `from > to` (22 to 6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Hours {
    pub from: u8,
    pub to: u8,
}

fn upper_case_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let list = Vec::<String>::deserialize(d)?;
    Ok(list.into_iter().map(|s| s.to_ascii_uppercase()).collect())
}

fn lower_case_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let list = Vec::<String>::deserialize(d)?;
    Ok(list.into_iter().map(|s| s.to_ascii_lowercase()).collect())
}

/// Why a policy was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The text is not a policy (syntax, unknown field, wrong type); the serde message.
    #[error("invalid policy json: {0}")]
    Json(String),
    #[error("too many rules: {count} (at most {max})")]
    TooManyRules { count: usize, max: usize },
    /// `position` counts from 1.
    #[error("rule #{position}: invalid name {name:?}: {reason}")]
    InvalidName {
        position: usize,
        name: String,
        reason: String,
    },
    #[error("rule {name:?}: duplicate name")]
    DuplicateName { name: String },
    /// A condition of the rule is invalid, e.g. `rule "x": invalid expression: ...`.
    #[error("rule {rule:?}: {message}")]
    InvalidRule { rule: String, message: String },
    /// The compiler itself failed (could not start its thread, or panicked).
    #[error("policy compiler failed: {0}")]
    Internal(String),
}

impl Policy {
    /// The `policy` member of a `manifest.json`, parsed from the manifest's own bytes (so a
    /// duplicate key is refused and an error points into the file), then compiled to be
    /// sure routers can. `Ok(None)`: the manifest has no policy.
    pub fn from_manifest(manifest_json: &[u8]) -> Result<Option<Policy>, String> {
        #[derive(Deserialize)]
        struct PolicyOnly {
            #[serde(default)]
            policy: Option<Policy>,
        }
        let only: PolicyOnly = serde_json::from_slice(manifest_json)
            .map_err(|e| format!("manifest.json is not valid: {e}"))?;
        if let Some(p) = &only.policy {
            p.compile().map_err(|e| format!("policy: {e}"))?;
        }
        Ok(only.policy)
    }

    /// Parses a policy from JSON (no validation beyond the shape: see [`Policy::compile`]).
    pub fn from_json(s: &str) -> Result<Policy, PolicyError> {
        serde_json::from_str(s).map_err(|e| PolicyError::Json(e.to_string()))
    }

    /// Validates the policy and compiles it for evaluation.
    ///
    /// Expressions are parsed on a short-lived thread with a large stack, so a pathological
    /// expression cannot overflow the caller's stack; a policy without expressions compiles on
    /// the caller's thread.
    pub fn compile(&self) -> Result<CompiledPolicy, PolicyError> {
        if self.rules.len() > MAX_RULES {
            return Err(PolicyError::TooManyRules {
                count: self.rules.len(),
                max: MAX_RULES,
            });
        }
        if self.rules.iter().all(|r| r.when.is_none()) {
            return self.compile_here();
        }
        std::thread::scope(|scope| -> Result<CompiledPolicy, PolicyError> {
            let worker = std::thread::Builder::new()
                .name("policy-compiler".to_owned())
                .stack_size(COMPILER_STACK_BYTES)
                .spawn_scoped(scope, || self.compile_here())
                .map_err(|e| PolicyError::Internal(format!("cannot start its thread: {e}")))?;
            worker.join().map_err(|payload| {
                PolicyError::Internal(format!("it panicked: {}", panic_message(payload.as_ref())))
            })?
        })
    }

    fn compile_here(&self) -> Result<CompiledPolicy, PolicyError> {
        let mut seen: HashSet<&str> = HashSet::with_capacity(self.rules.len());
        let mut rules = Vec::with_capacity(self.rules.len());
        let mut needs = 0u8;
        let mut regexes = Regexes::default();
        for (index, rule) in self.rules.iter().enumerate() {
            check_name(&rule.name).map_err(|reason| PolicyError::InvalidName {
                position: index + 1,
                name: rule.name.clone(),
                reason: reason.to_owned(),
            })?;
            if !seen.insert(rule.name.as_str()) {
                return Err(PolicyError::DuplicateName {
                    name: rule.name.clone(),
                });
            }
            let invalid = |message| PolicyError::InvalidRule {
                rule: rule.name.clone(),
                message,
            };
            let compiled = CompiledRule::new(rule, &mut regexes).map_err(invalid)?;
            if let Some(when) = &compiled.when {
                needs |= when.needs;
            }
            rules.push(compiled);
        }
        let regexes = Arc::new(regexes);
        // Only a policy with patterns needs functions of its own.
        let functions = (!regexes.by_pattern.is_empty()).then(|| functions_with(&regexes));
        let policy = CompiledPolicy {
            default: self.default,
            rules,
            needs,
            functions,
            regexes,
        };
        policy.check_samples()?;
        Ok(policy)
    }
}

impl CompiledPolicy {
    /// Evaluates each expression once against a sample request, to refuse what the
    /// interpreter only reports at run time (an undeclared reference, a panic).
    fn check_samples(&self) -> Result<(), PolicyError> {
        if self.rules.iter().any(|r| r.when.is_some()) {
            let headers = http::HeaderMap::new();
            let sample = RequestFacts {
                method: "GET",
                path: "/",
                query: None,
                headers: &headers,
                caller_org: "sample",
                caller_role: "invoker",
                caller_token_id: "sample",
                now: UNIX_EPOCH + std::time::Duration::from_secs(1_704_067_200),
            };
            let scope = request_scope(
                self.functions(),
                &sample,
                &Clock::new(sample.now),
                ALL_FIELDS,
            );
            for rule in &self.rules {
                let Some(when) = &rule.when else { continue };
                let problem = match run(&when.ast, &scope) {
                    Outcome::Failed {
                        message,
                        undeclared: true,
                    } => Some(message),
                    Outcome::Panicked(message) => {
                        Some(format!("the evaluator cannot run it ({message})"))
                    }
                    _ => None,
                };
                if let Some(problem) = problem {
                    return Err(PolicyError::InvalidRule {
                        rule: rule.name.clone(),
                        message: format!("invalid expression: {problem}"),
                    });
                }
            }
        }
        Ok(())
    }

    /// The interpreter's functions for this policy's expressions.
    fn functions(&self) -> &Context<'static> {
        match &self.functions {
            Some(functions) => functions,
            None => &ROOT,
        }
    }
}

fn check_name(name: &str) -> Result<(), &'static str> {
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return Err("may contain only letters, digits, '_', '.' and '-'");
    }
    if name.is_empty() || name.len() > MAX_NAME_CHARS {
        return Err("must be 1 to 64 characters");
    }
    if name == DEFAULT_RULE {
        return Err("\"default\" is reserved for the policy's default");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Compiled form
// ---------------------------------------------------------------------------------------------

/// A validated policy, ready to evaluate. `Send + Sync`: share it in an `Arc`.
pub struct CompiledPolicy {
    default: Effect,
    rules: Vec<CompiledRule>,
    /// The `request` fields that some expression can read (bits of [`Field`]).
    needs: u8,
    /// The interpreter's functions with `matches` bound to `regexes`; `None` (no pattern):
    /// the shared [`ROOT`].
    functions: Option<Context<'static>>,
    /// The `matches` patterns, compiled once; shared with `functions`.
    regexes: Arc<Regexes>,
}

const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<CompiledPolicy>();
};

impl fmt::Debug for CompiledPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.rules.iter().map(|r| r.name.as_str()).collect();
        f.debug_struct("CompiledPolicy")
            .field("default", &self.default)
            .field("rules", &names)
            .field("patterns", &self.regexes.by_pattern.len())
            .finish()
    }
}

struct CompiledRule {
    name: String,
    effect: Effect,
    /// Upper-case; empty matches every method.
    methods: Vec<Box<str>>,
    paths: Option<GlobSet>,
    /// Bit `i` for `DAY_NAMES[i]`; 0 matches every day.
    days: u8,
    hours: Option<(u8, u8)>,
    when: Option<Expression>,
}

/// A checked expression tree (with strict indexing substituted) and the `request` fields it
/// can read.
struct Expression {
    ast: IdedExpr,
    needs: u8,
}

impl CompiledRule {
    /// Compiles the rule; the patterns of its expression go to `regexes`.
    fn new(rule: &Rule, regexes: &mut Regexes) -> Result<CompiledRule, String> {
        if rule.methods.len() > MAX_METHODS {
            return Err(format!("too many methods (at most {MAX_METHODS})"));
        }
        let mut methods = Vec::with_capacity(rule.methods.len());
        for method in &rule.methods {
            let upper = method.to_ascii_uppercase();
            if http::Method::from_bytes(upper.as_bytes()).is_err() {
                return Err(format!("invalid method {method:?}"));
            }
            methods.push(upper.into_boxed_str());
        }

        let paths = if rule.paths.is_empty() {
            None
        } else {
            if rule.paths.len() > MAX_PATHS {
                return Err(format!("too many paths (at most {MAX_PATHS})"));
            }
            let mut set = GlobSetBuilder::new();
            for pattern in &rule.paths {
                set.add(compile_glob(pattern)?);
            }
            Some(
                set.build()
                    .map_err(|e| format!("invalid path globs: {e}"))?,
            )
        };

        let mut days = 0u8;
        for day in &rule.days {
            let lower = day.to_ascii_lowercase();
            let Some(index) = DAY_NAMES.iter().position(|d| *d == lower) else {
                return Err(format!(
                    "unknown day {day:?} (expected mon, tue, wed, thu, fri, sat or sun)"
                ));
            };
            days |= 1u8 << index;
        }

        let hours = match rule.hours {
            None => None,
            Some(Hours { from, to }) => {
                if from > 24 || to > 24 {
                    return Err(format!(
                        "invalid hours {from} to {to}: hours are 0 to 24 (UTC)"
                    ));
                }
                if from == to {
                    return Err(format!(
                        "invalid hours {from} to {to}: from and to must differ (leave hours out to match every hour)"
                    ));
                }
                Some((from, to))
            }
        };

        let when = match &rule.when {
            None => None,
            Some(source) => Some(
                compile_expression(source, regexes)
                    .map_err(|e| format!("invalid expression: {e}"))?,
            ),
        };

        Ok(CompiledRule {
            name: rule.name.clone(),
            effect: rule.effect,
            methods,
            paths,
            days,
            hours,
            when,
        })
    }

    fn matches_method(&self, method: &str) -> bool {
        self.methods.is_empty() || self.methods.iter().any(|m| m.eq_ignore_ascii_case(method))
    }

    fn matches_path(&self, path: &str) -> bool {
        match &self.paths {
            None => true,
            Some(set) => set.is_match_candidate(&Candidate::from_bytes(path.as_bytes())),
        }
    }

    fn has_time(&self) -> bool {
        self.days != 0 || self.hours.is_some()
    }

    fn matches_time(&self, clock: &Clock) -> bool {
        if self.days != 0 && self.days & (1u8 << clock.weekday) == 0 {
            return false;
        }
        match self.hours {
            None => true,
            Some((from, to)) if from < to => (from..to).contains(&clock.hour),
            // Wraps midnight: every hour outside `to..from`.
            Some((from, to)) => !(to..from).contains(&clock.hour),
        }
    }

    /// The reason of a deny by this rule's effect: which conditions matched.
    fn deny_reason(&self, facts: &RequestFacts<'_>, clock: Option<&Clock>) -> String {
        let mut parts: Vec<String> = Vec::new();
        if !self.methods.is_empty() {
            parts.push(format!("method {}", facts.method));
        }
        if self.paths.is_some() {
            parts.push(format!("path {}", facts.path));
        }
        if let Some(clock) = clock {
            if self.days != 0 {
                parts.push(format!("day {}", day_name(clock.weekday)));
            }
            if self.hours.is_some() {
                parts.push(format!("hour {}", clock.hour));
            }
        }
        if self.when.is_some() {
            parts.push("expression true".to_owned());
        }
        let what = if parts.is_empty() {
            "every request".to_owned()
        } else {
            parts.join(", ")
        };
        format!("denied by rule {:?} ({what})", self.name)
    }
}

fn compile_glob(pattern: &str) -> Result<globset::Glob, String> {
    if !pattern.starts_with('/') {
        return Err(format!(
            "invalid path glob {pattern:?}: must start with '/'"
        ));
    }
    if pattern.chars().count() > MAX_GLOB_CHARS {
        return Err(format!(
            "invalid path glob {pattern:?}: longer than {MAX_GLOB_CHARS} characters"
        ));
    }
    if pattern
        .split('/')
        .any(|segment| segment.contains("**") && segment != "**")
    {
        return Err(format!(
            "invalid path glob {pattern:?}: '**' must be a whole path segment (as in /a/**/b or /a/**)"
        ));
    }
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .map_err(|e| format!("invalid path glob {pattern:?}: {}", e.kind()))
}

fn day_name(weekday: u8) -> &'static str {
    DAY_NAMES.get(usize::from(weekday)).copied().unwrap_or("?")
}

// ---------------------------------------------------------------------------------------------
// Evaluation
// ---------------------------------------------------------------------------------------------

/// What a router knows about one invocation.
#[derive(Clone, Copy, Debug)]
pub struct RequestFacts<'a> {
    pub method: &'a str,
    /// Relative to the function's mount, without the query.
    pub path: &'a str,
    /// The raw (percent-encoded) query string, without `?`.
    pub query: Option<&'a str>,
    pub headers: &'a http::HeaderMap,
    pub caller_org: &'a str,
    /// `admin`, `developer` or `invoker`.
    pub caller_role: &'a str,
    pub caller_token_id: &'a str,
    pub now: SystemTime,
}

/// The outcome of a policy for one invocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// `rule` is the deciding rule's name, or [`DEFAULT_RULE`] when the default denied.
    Deny {
        rule: String,
        reason: String,
    },
}

impl Decision {
    pub fn is_allow(&self) -> bool {
        matches!(self, Decision::Allow)
    }
}

impl CompiledPolicy {
    /// Decides one invocation.
    ///
    /// Never panics. Allocates only when a reached rule has an expression (the `request`
    /// variable is then built once, with only the fields some expression reads) or when it
    /// denies (the reason).
    pub fn evaluate(&self, facts: &RequestFacts<'_>) -> Decision {
        let mut clock: Option<Clock> = None;
        let mut scope: Option<Context<'_>> = None;
        for rule in &self.rules {
            if !rule.matches_method(facts.method) || !rule.matches_path(facts.path) {
                continue;
            }
            if rule.has_time() {
                let now = *clock.get_or_insert_with(|| Clock::new(facts.now));
                if !rule.matches_time(&now) {
                    continue;
                }
            }
            if let Some(when) = &rule.when {
                let now = *clock.get_or_insert_with(|| Clock::new(facts.now));
                let ctx = scope.get_or_insert_with(|| {
                    request_scope(self.functions(), facts, &now, self.needs)
                });
                match run(&when.ast, ctx) {
                    Outcome::Bool(true) => {}
                    Outcome::Bool(false) => continue,
                    failure => {
                        return Decision::Deny {
                            rule: rule.name.clone(),
                            reason: format!(
                                "rule {:?}: expression failed: {}",
                                rule.name,
                                failure.describe()
                            ),
                        };
                    }
                }
            }
            return match rule.effect {
                Effect::Allow => Decision::Allow,
                Effect::Deny => Decision::Deny {
                    rule: rule.name.clone(),
                    reason: rule.deny_reason(facts, clock.as_ref()),
                },
            };
        }
        match self.default {
            Effect::Allow => Decision::Allow,
            Effect::Deny => Decision::Deny {
                rule: DEFAULT_RULE.to_owned(),
                reason: format!(
                    "denied by default: no rule allowed {} {}",
                    facts.method, facts.path
                ),
            },
        }
    }

    /// True when the policy allows everything without looking (no rules, default allow).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty() && self.default == Effect::Allow
    }
}

/// The current time, read once per evaluation.
#[derive(Clone, Copy)]
struct Clock {
    at: DateTime<Utc>,
    hour: u8,
    /// 0 for Monday.
    weekday: u8,
}

impl Clock {
    fn new(now: SystemTime) -> Clock {
        let at = utc(now);
        Clock {
            at,
            hour: u8::try_from(at.hour()).unwrap_or(0),
            weekday: u8::try_from(at.weekday().num_days_from_monday()).unwrap_or(0),
        }
    }
}

/// `SystemTime` to UTC without chrono's panicking conversion (out-of-range times read as
/// the epoch).
fn utc(t: SystemTime) -> DateTime<Utc> {
    let (secs, nanos) = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (i64::try_from(d.as_secs()).ok(), d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            let secs = i64::try_from(d.as_secs()).ok();
            if d.subsec_nanos() == 0 {
                (secs.map(|s| -s), 0)
            } else {
                (
                    secs.and_then(|s| (-s).checked_sub(1)),
                    1_000_000_000 - d.subsec_nanos(),
                )
            }
        }
    };
    secs.and_then(|s| DateTime::<Utc>::from_timestamp(s, nanos))
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
}

// ---------------------------------------------------------------------------------------------
// CEL
// ---------------------------------------------------------------------------------------------

/// The fields of `request`; bit `1 << (field as u8)` in a needs mask.
#[derive(Clone, Copy)]
enum Field {
    Method,
    Path,
    Headers,
    Query,
    Caller,
    Time,
    Hour,
    Weekday,
}

impl Field {
    const fn bit(self) -> u8 {
        1u8 << (self as u8)
    }
}

const FIELDS: [(&str, Field); 8] = [
    ("method", Field::Method),
    ("path", Field::Path),
    ("headers", Field::Headers),
    ("query", Field::Query),
    ("caller", Field::Caller),
    ("time", Field::Time),
    ("hour", Field::Hour),
    ("weekday", Field::Weekday),
];
const ALL_FIELDS: u8 = u8::MAX;

/// The map keys of `request`'s fields, in `FIELDS` order, and of `request.caller`.
static FIELD_KEYS: LazyLock<Vec<Key>> =
    LazyLock::new(|| FIELDS.iter().map(|(name, _)| Key::from(*name)).collect());
static CALLER_KEYS: LazyLock<[Key; 3]> =
    LazyLock::new(|| [Key::from("org"), Key::from("role"), Key::from("token_id")]);

/// The functions of policies without patterns; shared by their evaluations (each adds
/// `request` in a child scope). Its `matches` knows no pattern.
static ROOT: LazyLock<Context<'static>> = LazyLock::new(|| functions_with(&Arc::default()));

/// The interpreter's default functions plus the strict index, with `matches` replaced by a
/// lookup in `regexes`. Functions live in a root context only, hence one per policy with
/// patterns.
fn functions_with(regexes: &Arc<Regexes>) -> Context<'static> {
    let mut ctx = Context::default();
    ctx.add_function(STRICT_INDEX, strict_index);
    let regexes = Arc::clone(regexes);
    ctx.add_function(
        MATCHES,
        move |This(text): This<Arc<String>>, pattern: Arc<String>| {
            regexes.is_match(&text, &pattern)
        },
    );
    ctx
}

/// A policy's `matches` patterns, each compiled once.
#[derive(Default)]
struct Regexes {
    by_pattern: HashMap<String, Regex>,
    /// Lookups by evaluations, so tests can see the precompiled patterns in use.
    #[cfg(test)]
    lookups: std::sync::atomic::AtomicUsize,
}

impl Regexes {
    /// Compiles `pattern` unless the policy already has it.
    fn add(&mut self, pattern: &str) -> Result<(), String> {
        if self.by_pattern.contains_key(pattern) {
            return Ok(());
        }
        if self.by_pattern.len() >= MAX_PATTERNS {
            return Err(format!(
                "too many matches() patterns (at most {MAX_PATTERNS} distinct ones per policy)"
            ));
        }
        let regex = compile_regex(pattern)?;
        self.by_pattern.insert(pattern.to_owned(), regex);
        Ok(())
    }

    /// `matches` at evaluation: a lookup, never a compilation.
    fn is_match(&self, text: &str, pattern: &str) -> Result<bool, ExecutionError> {
        #[cfg(test)]
        self.lookups
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match self.by_pattern.get(pattern) {
            Some(regex) => Ok(regex.is_match(text)),
            None => Err(ExecutionError::function_error(
                MATCHES,
                format!("pattern {pattern:?} was not compiled with the policy"),
            )),
        }
    }
}

/// Compiles a `matches` pattern within the size bounds.
fn compile_regex(pattern: &str) -> Result<Regex, String> {
    if pattern.len() > MAX_PATTERN_BYTES {
        return Err(format!(
            "matches() pattern is {} bytes long (at most {MAX_PATTERN_BYTES})",
            pattern.len()
        ));
    }
    RegexBuilder::new(pattern)
        .size_limit(MAX_REGEX_BYTES)
        .dfa_size_limit(REGEX_CACHE_BYTES)
        .build()
        .map_err(|e| match e {
            regex::Error::CompiledTooBig(limit) => format!(
                "matches() pattern {pattern:?} is too big once compiled (over {limit} bytes): bound its repetitions, or use ASCII classes such as [A-Za-z0-9_] rather than Unicode ones such as \\w"
            ),
            // The message draws a caret under the error; keep its last line.
            regex::Error::Syntax(message) => {
                let reason = message
                    .lines()
                    .find_map(|line| line.strip_prefix("error: "))
                    .unwrap_or(message.as_str());
                format!("invalid matches() pattern {pattern:?}: {reason}")
            }
            other => format!("invalid matches() pattern {pattern:?}: {other}"),
        })
}

/// The pattern of a `matches` call, in either form (`text.matches(p)`, `matches(text, p)`),
/// which must be a string literal.
fn literal_pattern(call: &CallExpr) -> Result<&str, String> {
    let pattern = match (&call.target, call.args.as_slice()) {
        (Some(_), [pattern]) | (None, [_, pattern]) => pattern,
        _ => {
            return Err(
                "matches() takes a string and a pattern, as in text.matches('^[a-z]+$')".to_owned(),
            );
        }
    };
    match &pattern.expr {
        Expr::Literal(Val::String(pattern)) => Ok(pattern.as_str()),
        _ => Err(
            "matches() needs a literal pattern, a quoted string such as '^v[0-9]+$' (patterns are compiled with the policy, not at run time)"
                .to_owned(),
        ),
    }
}

fn request_scope<'f>(
    functions: &'f Context<'static>,
    facts: &RequestFacts<'_>,
    clock: &Clock,
    needs: u8,
) -> Context<'f> {
    let mut scope = functions.new_inner_scope();
    scope.add_variable_from_value(REQUEST, request_value(facts, clock, needs));
    scope
}

fn request_value(facts: &RequestFacts<'_>, clock: &Clock, needs: u8) -> Value {
    let mut map: HashMap<Key, Value> = HashMap::with_capacity(FIELDS.len());
    for ((_, field), key) in FIELDS.iter().zip(FIELD_KEYS.iter()) {
        if needs & field.bit() == 0 {
            continue;
        }
        let value = match field {
            Field::Method => string(facts.method.to_ascii_uppercase()),
            Field::Path => string(facts.path.to_owned()),
            Field::Headers => headers_value(facts.headers),
            Field::Query => query_value(facts.query),
            Field::Caller => {
                let [org, role, token_id] = &*CALLER_KEYS;
                let caller = HashMap::from([
                    (org.clone(), string(facts.caller_org.to_owned())),
                    (role.clone(), string(facts.caller_role.to_owned())),
                    (token_id.clone(), string(facts.caller_token_id.to_owned())),
                ]);
                map_value(caller)
            }
            Field::Time => Value::Timestamp(clock.at.fixed_offset()),
            Field::Hour => Value::Int(i64::from(clock.hour)),
            Field::Weekday => string(day_name(clock.weekday).to_owned()),
        };
        map.insert(key.clone(), value);
    }
    map_value(map)
}

fn string(s: String) -> Value {
    Value::String(Arc::new(s))
}

fn map_value(map: HashMap<Key, Value>) -> Value {
    Value::Map(Map { map: Arc::new(map) })
}

fn headers_value(headers: &http::HeaderMap) -> Value {
    let mut map: HashMap<Key, Value> = HashMap::with_capacity(headers.keys_len());
    for name in headers.keys() {
        let mut joined = String::new();
        for (i, value) in headers.get_all(name).iter().enumerate() {
            if i > 0 {
                joined.push_str(", ");
            }
            joined.push_str(&String::from_utf8_lossy(value.as_bytes()));
        }
        map.insert(Key::from(name.as_str()), string(joined));
    }
    map_value(map)
}

fn query_value(query: Option<&str>) -> Value {
    let mut map: HashMap<Key, Value> = HashMap::new();
    if let Some(query) = query {
        let query = query.strip_prefix('?').unwrap_or(query);
        for pair in query.split('&') {
            if pair.is_empty() {
                continue;
            }
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            map.entry(Key::String(Arc::new(decode_component(key))))
                .or_insert_with(|| string(decode_component(value)));
        }
    }
    map_value(map)
}

/// Form-style decoding of one query component: `+` is a space, then percent-escapes.
fn decode_component(s: &str) -> String {
    if s.contains('+') {
        let spaced = s.replace('+', " ");
        percent_encoding::percent_decode_str(&spaced)
            .decode_utf8_lossy()
            .into_owned()
    } else {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    }
}

/// CEL's `container[index]` with the specification's semantics: a missing map key or an
/// out-of-range list index is an error (the interpreter's own `_[_]` gives `null`).
fn strict_index(This(container): This<Value>, index: Value) -> Result<Value, ExecutionError> {
    match container {
        Value::Map(map) => {
            let key = match index {
                Value::String(s) => Key::String(s),
                Value::Int(i) => Key::Int(i),
                Value::UInt(u) => Key::Uint(u),
                Value::Bool(b) => Key::Bool(b),
                other => return Err(ExecutionError::UnsupportedMapIndex(other)),
            };
            match map.get(&key) {
                Some(value) => Ok(value.clone()),
                None => Err(ExecutionError::NoSuchKey(Arc::new(key.to_string()))),
            }
        }
        Value::List(items) => {
            let position = match index {
                Value::Int(i) => usize::try_from(i).ok(),
                Value::UInt(u) => usize::try_from(u).ok(),
                other => return Err(ExecutionError::UnsupportedListIndex(other)),
            };
            match position.and_then(|p| items.get(p)) {
                Some(value) => Ok(value.clone()),
                None => Err(ExecutionError::function_error(
                    "index",
                    format!("index out of range (list of {})", items.len()),
                )),
            }
        }
        container => Err(ExecutionError::UnsupportedIndex(container, index)),
    }
}

/// The result of running one expression.
enum Outcome {
    Bool(bool),
    NotBool(String),
    Failed { message: String, undeclared: bool },
    Panicked(String),
}

impl Outcome {
    fn describe(&self) -> String {
        match self {
            Outcome::Bool(b) => format!("result {b}"),
            Outcome::NotBool(kind) => format!("result is {kind}, not bool"),
            Outcome::Failed { message, .. } => message.clone(),
            Outcome::Panicked(message) => format!("the evaluator failed ({message})"),
        }
    }
}

/// Runs an expression; the interpreter has `todo!()`s for some inputs (e.g. a comprehension
/// over a string), so a panic is caught and reported as a failure.
fn run(ast: &IdedExpr, ctx: &Context<'_>) -> Outcome {
    match catch_unwind(AssertUnwindSafe(|| Value::resolve(ast, ctx))) {
        Ok(Ok(Value::Bool(b))) => Outcome::Bool(b),
        Ok(Ok(other)) => Outcome::NotBool(other.type_of().to_string()),
        Ok(Err(e)) => Outcome::Failed {
            undeclared: matches!(e, ExecutionError::UndeclaredReference(_)),
            message: e.to_string(),
        },
        Err(payload) => Outcome::Panicked(panic_message(payload.as_ref())),
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic".to_owned()
    }
}

/// Checks and compiles an expression; its `matches` patterns go to `regexes`.
fn compile_expression(source: &str, regexes: &mut Regexes) -> Result<Expression, String> {
    if source.trim().is_empty() {
        return Err("expression is empty".to_owned());
    }
    let chars = source.chars().count();
    if chars > MAX_EXPRESSION_CHARS {
        return Err(format!(
            "expression is {chars} characters long (at most {MAX_EXPRESSION_CHARS})"
        ));
    }
    check_nesting(source)?;
    let parsed = catch_unwind(AssertUnwindSafe(|| {
        cel_parser::Parser::default()
            .parse(source)
            .map_err(|errors| describe_parse_errors(&errors))
    }))
    .map_err(|payload| {
        format!(
            "syntax error: the expression is incomplete or malformed (the parser stopped: {})",
            panic_message(payload.as_ref())
        )
    })?;
    let mut ast = parsed?;
    let mut checker = Checker {
        needs: 0,
        scope: Vec::new(),
        in_loop: false,
        regexes,
    };
    checker.walk(&mut ast, 0)?;
    check_result(&ast)?;
    Ok(Expression {
        ast,
        needs: checker.needs,
    })
}

fn describe_parse_errors(errors: &cel_parser::ParseErrors) -> String {
    let mut out = String::new();
    for (i, e) in errors.errors.iter().take(3).enumerate() {
        if i > 0 {
            out.push_str("; ");
        }
        let msg = e
            .msg
            .strip_prefix("Syntax error: ")
            .unwrap_or(e.msg.as_str());
        let _ = write!(out, "syntax error at {}:{}: {msg}", e.pos.0, e.pos.1);
        if let Some(source) = &e.source {
            let _ = write!(out, " ({source})");
        }
    }
    if out.is_empty() {
        out.push_str("syntax error");
    }
    out
}

/// Refuses deep bracket nesting before parsing (the parser recurses on each level).
fn check_nesting(source: &str) -> Result<(), String> {
    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for c in source.chars() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '\'' | '"' => quote = Some(c),
            '(' | '[' | '{' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(format!(
                        "expression is nested too deeply (more than {MAX_NESTING} brackets)"
                    ));
                }
            }
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// Refuses expressions whose result can never be a bool.
fn check_result(ast: &IdedExpr) -> Result<(), String> {
    let what = match &ast.expr {
        Expr::Literal(Val::Boolean(_)) => return Ok(()),
        Expr::Literal(Val::Null) => "null",
        Expr::Literal(Val::String(_)) => "a string",
        Expr::Literal(Val::Bytes(_)) => "bytes",
        Expr::Literal(_) => "a number",
        Expr::List(_) => "a list",
        Expr::Map(_) => "a map",
        Expr::Call(call) if NON_BOOL_FUNCTIONS.contains(&call.func_name.as_str()) => "not a bool",
        _ => return Ok(()),
    };
    Err(format!(
        "expression must evaluate to a bool (its result is {what})"
    ))
}

/// Checks an expression tree, collects the `request` fields it reads, compiles its `matches`
/// patterns and substitutes the strict index for `_[_]`.
struct Checker<'r> {
    needs: u8,
    /// Variables bound by enclosing comprehensions.
    scope: Vec<String>,
    /// Walking a comprehension's body (a body inside a body would multiply the cost).
    in_loop: bool,
    /// The policy's patterns so far.
    regexes: &'r mut Regexes,
}

impl Checker<'_> {
    fn bound(&self, name: &str) -> bool {
        self.scope.iter().any(|s| s.as_str() == name)
    }

    /// The parts of a comprehension that see its variables.
    fn walk_loop(&mut self, c: &mut ComprehensionExpr, depth: usize) -> Result<(), String> {
        if self.in_loop {
            return Err(
                "macros (all, exists, exists_one, map, filter) cannot be nested in one another"
                    .to_owned(),
            );
        }
        self.in_loop = true;
        let body = self.walk_body(c, depth);
        self.in_loop = false;
        body
    }

    fn walk_body(&mut self, c: &mut ComprehensionExpr, depth: usize) -> Result<(), String> {
        self.walk(&mut c.loop_cond, depth)?;
        self.walk(&mut c.loop_step, depth)?;
        self.walk(&mut c.result, depth)
    }

    fn walk(&mut self, e: &mut IdedExpr, depth: usize) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err(format!(
                "expression is nested too deeply (more than {MAX_DEPTH} levels)"
            ));
        }
        let next = depth + 1;
        match &mut e.expr {
            Expr::Unspecified => Err("expression is incomplete".to_owned()),
            Expr::Literal(_) => Ok(()),
            Expr::Ident(name) => {
                if self.bound(name) {
                    Ok(())
                } else if name.as_str() == REQUEST {
                    // `request` used as a whole: every field can be read.
                    self.needs = ALL_FIELDS;
                    Ok(())
                } else {
                    Err(format!(
                        "undeclared reference to '{name}' (the only variable is 'request')"
                    ))
                }
            }
            Expr::Select(select) => {
                if let Expr::Ident(name) = &select.operand.expr
                    && name.as_str() == REQUEST
                    && !self.bound(REQUEST)
                {
                    return match FIELDS.iter().find(|(f, _)| *f == select.field) {
                        Some((_, field)) => {
                            self.needs |= field.bit();
                            Ok(())
                        }
                        None if select.test => Ok(()),
                        None => Err(format!(
                            "request has no field '{}' (fields: method, path, headers, query, caller, time, hour, weekday)",
                            select.field
                        )),
                    };
                }
                self.walk(&mut select.operand, next)
            }
            Expr::Call(call) => {
                check_call(&call.func_name, call.target.is_some(), call.args.len())?;
                if call.func_name == MATCHES {
                    self.regexes.add(literal_pattern(call)?)?;
                }
                if let Some(target) = call.target.as_deref_mut() {
                    self.walk(target, next)?;
                }
                for arg in &mut call.args {
                    self.walk(arg, next)?;
                }
                if call.func_name == operators::INDEX && call.target.is_none() {
                    let key = call.args.pop();
                    let container = call.args.pop();
                    if let (Some(container), Some(key)) = (container, key) {
                        call.func_name = STRICT_INDEX.to_owned();
                        call.target = Some(Box::new(container));
                        call.args = vec![key];
                    }
                }
                Ok(())
            }
            Expr::List(list) => {
                if list.elements.len() > MAX_LITERAL_ELEMENTS {
                    return Err(format!(
                        "list literal has more than {MAX_LITERAL_ELEMENTS} elements"
                    ));
                }
                for element in &mut list.elements {
                    self.walk(element, next)?;
                }
                Ok(())
            }
            Expr::Map(map) => {
                if map.entries.len() > MAX_LITERAL_ELEMENTS {
                    return Err(format!(
                        "map literal has more than {MAX_LITERAL_ELEMENTS} entries"
                    ));
                }
                for entry in &mut map.entries {
                    match &mut entry.expr {
                        EntryExpr::MapEntry(entry) => {
                            self.walk(&mut entry.key, next)?;
                            self.walk(&mut entry.value, next)?;
                        }
                        EntryExpr::StructField(_) => {
                            return Err("message fields are not supported".to_owned());
                        }
                    }
                }
                Ok(())
            }
            Expr::Struct(s) => Err(format!(
                "message construction ({}{{...}}) is not supported",
                s.type_name
            )),
            Expr::Comprehension(c) => {
                if c.iter_var2.is_some() {
                    return Err("two-variable comprehensions are not supported".to_owned());
                }
                self.walk(&mut c.iter_range, next)?;
                self.walk(&mut c.accu_init, next)?;
                let outer = self.scope.len();
                self.scope.push(c.iter_var.clone());
                self.scope.push(c.accu_var.clone());
                let inner = self.walk_loop(c, next);
                self.scope.truncate(outer);
                inner
            }
        }
    }
}

/// A call must be an operator the interpreter evaluates inline, with its arity, or a function
/// of the root context.
fn check_call(name: &str, has_target: bool, args: usize) -> Result<(), String> {
    let arity = match name {
        operators::CONDITIONAL => Some(3),
        operators::LOGICAL_AND
        | operators::LOGICAL_OR
        | operators::ADD
        | operators::SUBSTRACT
        | operators::MULTIPLY
        | operators::DIVIDE
        | operators::MODULO
        | operators::EQUALS
        | operators::NOT_EQUALS
        | operators::LESS
        | operators::LESS_EQUALS
        | operators::GREATER
        | operators::GREATER_EQUALS
        | operators::IN
        | operators::INDEX => Some(2),
        operators::LOGICAL_NOT | operators::NEGATE | operators::NOT_STRICTLY_FALSE => Some(1),
        _ => None,
    };
    match arity {
        Some(n) if !has_target && args == n => Ok(()),
        Some(_) => Err(format!("unsupported use of operator {name}")),
        None if FUNCTIONS.contains(&name) => Ok(()),
        None => Err(format!(
            "unknown function '{name}' (available: {})",
            FUNCTIONS.join(", ")
        )),
    }
}

#[cfg(test)]
mod tests;
