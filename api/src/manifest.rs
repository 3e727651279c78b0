//! The bundle manifest (`manifest.json`) and its validation against the function, the
//! runtime's limits and the files actually in the bundle.

use crate::Runtime;
use crate::calls::{CallError, CallTarget};
use crate::contract::{ContractName, ContractSpec};
use crate::interceptors::Interceptors;
use crate::pool::{Pool, PoolSpec};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const MANIFEST_FILE: &str = "manifest.json";

/// Most aliases a manifest's `calls` may declare.
/// (The aliases travel with every invocation in the internal hop's headers, which HTTP/2
/// bounds at 16 KiB together with the request's own.)
pub const MAX_CALL_ALIASES: usize = 16;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<Runtime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env_keys: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secret_keys: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<Concurrency>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
    /// Invoke policy of this deployment, checked by routers after the function's own.
    /// Kept as JSON here: the control plane parses and compiles it (`reactor-policy`), so
    /// that the crates which only run functions do not link the policy engine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<serde_json::Value>,
    /// A build step run by the CLI before packing (like `spin build`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<Build>,
    /// The functions this one may call, by alias (`users` is called at
    /// `http://users.reactor.internal`). When set, nothing else may be called.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calls: Option<Calls>,
    /// What the router wraps around each invocation of this function (retry, circuit
    /// breaker), in the order of [`crate::interceptors`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interceptors: Option<Interceptors>,
    /// How the function's instances are kept and sized ([`crate::pool`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<PoolSpec>,
    /// The JSON Schemas of the function's input and output ([`crate::contract`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contract: Option<ContractSpec>,
}

/// A manifest's `calls`: alias to callee (`{"users": {"function": "get-user"}}`).
pub type Calls = BTreeMap<String, CallAlias>;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallAlias {
    /// The function of the same org the alias calls...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    /// ...or the named contract (`email.sender@1`) whose bound function it calls: exactly
    /// one of the two.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contract: Option<String>,
    /// A limit of its own for calls through this alias, below the callee's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Interceptors of calls through this alias, each kind in place of the callee's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interceptors: Option<Interceptors>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Concurrency {
    #[serde(default)]
    pub min_instances: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Build {
    /// Shell command, run in the bundle directory.
    pub command: String,
    /// The file the command produces, relative to the bundle directory. It is packed at
    /// `entrypoint` (or at this same path when the manifest has no entrypoint).
    pub output: String,
}

/// What a valid manifest (or its absence) settles for a deployment.
#[derive(Clone, Debug, PartialEq)]
pub struct Resolved {
    pub entrypoint: String,
    pub timeout_ms: u64,
    pub memory_mb: u32,
    pub min_instances: u32,
    pub max_concurrency: Option<u32>,
    pub env_keys: Vec<String>,
    pub secret_keys: Vec<String>,
    /// The manifest's invoke policy as JSON, not yet validated (the control plane does).
    pub policy: Option<String>,
    /// The manifest's `calls`, validated; `None`: any function of the org may be called.
    pub calls: Option<Calls>,
    /// The manifest's `interceptors`, validated; `None` when it has none.
    pub interceptors: Option<Interceptors>,
    /// The manifest's `pool`, settled; `None`: the workers' own settings.
    pub pool: Option<Pool>,
    /// The manifest's `contract`, its shape checked (the control plane compiles the
    /// schemas); `None` when it declares no schema.
    pub contract: Option<ContractSpec>,
}

/// Server-wide defaults and bounds a manifest is resolved with
/// (`FunctionsConfig::manifest_bounds`).
#[derive(Clone, Copy, Debug)]
pub struct ManifestBounds {
    pub default_timeout_ms: u64,
    pub max_timeout_ms: u64,
    /// Most `concurrency.min_instances`: processes each worker keeps started.
    pub max_min_instances: u32,
    /// Requests one instance serves at once (`bun_concurrency_per_process`), to count a
    /// static pool's `workers` in instances.
    pub per_instance: u32,
}

impl Manifest {
    pub fn parse(bytes: &[u8]) -> Result<Manifest, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("manifest.json is not valid: {e}"))
    }

    /// Checks the manifest against the function and the bundle's `files` (relative paths
    /// of its regular files) and resolves entrypoint and limits.
    pub fn resolve(
        manifest: Option<&Manifest>,
        function: &str,
        runtime: Runtime,
        files: &[String],
        bounds: ManifestBounds,
    ) -> Result<Resolved, String> {
        let empty = Manifest::default();
        let m = manifest.unwrap_or(&empty);
        if let Some(name) = &m.name
            && name != function
        {
            return Err(format!(
                "manifest name {name:?} does not match function {function:?}"
            ));
        }
        if let Some(rt) = m.runtime
            && rt != runtime
        {
            return Err(format!(
                "manifest runtime {rt} does not match the function's runtime {runtime}"
            ));
        }
        let entrypoint = match &m.entrypoint {
            Some(e) => {
                let e = e.trim_start_matches("./").to_string();
                if !files.contains(&e) {
                    return Err(format!("entrypoint {e:?} is not in the bundle"));
                }
                e
            }
            None => default_entrypoint(runtime, files)?,
        };
        let limits = runtime.limits();
        let max_timeout = bounds.max_timeout_ms.min(limits.max_timeout_ms);
        let timeout_ms = m
            .limits
            .as_ref()
            .and_then(|l| l.timeout_ms)
            .unwrap_or(bounds.default_timeout_ms.min(max_timeout));
        if timeout_ms == 0 || timeout_ms > max_timeout {
            return Err(format!(
                "limits.timeout_ms {timeout_ms} is out of range for {runtime} (1-{max_timeout})"
            ));
        }
        let (lo, hi) = limits.memory_mb;
        let memory_mb = m
            .limits
            .as_ref()
            .and_then(|l| l.memory_mb)
            .unwrap_or(limits.default_memory_mb);
        if memory_mb < lo || memory_mb > hi {
            return Err(format!(
                "limits.memory_mb {memory_mb} is out of range for {runtime} ({lo}-{hi})"
            ));
        }
        let mut concurrency = m.concurrency.clone().unwrap_or_default();
        if concurrency.max_concurrency == Some(0) {
            return Err("concurrency.max_concurrency must be at least 1".to_string());
        }
        let max_min = bounds.max_min_instances;
        if concurrency.min_instances > max_min {
            return Err(format!(
                "concurrency.min_instances {} is out of range (0-{max_min}, functions.max_min_instances)",
                concurrency.min_instances
            ));
        }
        let pool = m.pool.as_ref().map(PoolSpec::resolve).transpose()?;
        if runtime != Runtime::Wasm && pool == Some(Pool::Inline) {
            return Err(format!(
                "an inline pool runs a WASM callee in its WASM caller's worker: it does not apply to {runtime}"
            ));
        }
        if runtime == Runtime::Lambda
            && matches!(pool, Some(Pool::Static { .. } | Pool::Lazy { .. }))
        {
            return Err(
                "a static or lazy pool does not apply to Lambda (AWS runs the instances): use an adaptive pool, or none".into(),
            );
        }
        // A static pool's instances are kept started: they are its `min_instances`, under
        // the same bound and the org's warm quota.
        if let Some(Pool::Static { workers, .. }) = pool {
            if concurrency.min_instances != 0 {
                return Err(
                    "concurrency.min_instances and a static pool both say what is kept started: set pool.workers only".into(),
                );
            }
            if runtime == Runtime::Bun {
                let instances = workers.div_ceil(bounds.per_instance.max(1));
                if instances > max_min {
                    return Err(format!(
                        "pool.workers {workers} needs {instances} instances kept started, more than {max_min} (functions.max_min_instances)"
                    ));
                }
                concurrency.min_instances = instances;
            }
        }
        for key in m.env_keys.iter().chain(&m.secret_keys) {
            if !valid_env_key(key) {
                return Err(format!(
                    "env key {key:?} is not valid (letters, digits and _, not starting with a digit)"
                ));
            }
        }
        if let Some(calls) = &m.calls {
            check_calls(calls, bounds.max_timeout_ms)?;
        }
        if let Some(i) = &m.interceptors {
            i.check("interceptors")?;
        }
        if let Some(c) = &m.contract {
            c.check("contract")?;
        }
        let policy = m.policy.as_ref().map(|p| p.to_string());
        Ok(Resolved {
            interceptors: m.interceptors.clone().filter(|i| !i.is_empty()),
            contract: m.contract.clone().filter(|c| !c.is_empty()),
            pool,
            policy,
            calls: m.calls.clone(),
            entrypoint,
            timeout_ms,
            memory_mb,
            min_instances: concurrency.min_instances,
            max_concurrency: concurrency.max_concurrency,
            env_keys: m.env_keys.clone(),
            secret_keys: m.secret_keys.clone(),
        })
    }

    /// The function an outgoing request to `host` calls, when `host` is internal
    /// ([`crate::calls::resolve`] with this manifest's `calls`).
    pub fn call_target(&self, host: &str) -> Result<Option<CallTarget>, CallError> {
        crate::calls::resolve(host, self.calls.as_ref())
    }
}

/// Aliases are DNS labels, callees function names, timeouts within the server's bound.
fn check_calls(calls: &Calls, max_timeout_ms: u64) -> Result<(), String> {
    if calls.len() > MAX_CALL_ALIASES {
        return Err(format!(
            "calls has {} aliases, at most {MAX_CALL_ALIASES}",
            calls.len()
        ));
    }
    for (alias, call) in calls {
        if !valid_alias(alias) {
            return Err(format!(
                "calls alias {alias:?} is not valid (lowercase letters, digits and '-', 1 to 63, not starting or ending with '-')"
            ));
        }
        match (&call.function, &call.contract) {
            (Some(function), None) => {
                if !valid_function_name(function) {
                    return Err(format!(
                        "calls.{alias}.function {function:?} is not a function name (lowercase letters, digits and '-', starting with a letter, at most 63)"
                    ));
                }
            }
            (None, Some(contract)) => {
                ContractName::parse(contract)
                    .map_err(|e| format!("calls.{alias}.contract: {e}"))?;
            }
            _ => {
                return Err(format!(
                    "calls.{alias} names a function or a contract: exactly one of the two"
                ));
            }
        }
        if let Some(t) = call.timeout_ms
            && (t == 0 || t > max_timeout_ms)
        {
            return Err(format!(
                "calls.{alias}.timeout_ms {t} is out of range (1-{max_timeout_ms})"
            ));
        }
        if let Some(i) = &call.interceptors {
            i.check(&format!("calls.{alias}.interceptors"))?;
        }
    }
    Ok(())
}

/// A DNS label: lowercase letters, digits and '-', 1 to 63, not starting or ending with '-'.
pub fn valid_alias(alias: &str) -> bool {
    (1..=63).contains(&alias.len())
        && !alias.starts_with('-')
        && !alias.ends_with('-')
        && alias
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Function names: lowercase letters, digits and dashes, starting with a letter, at most 63.
pub fn valid_function_name(name: &str) -> bool {
    let mut chars = name.chars();
    (1..=63).contains(&name.len())
        && matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// The runtime's convention when a manifest names no entrypoint.
fn default_entrypoint(runtime: Runtime, files: &[String]) -> Result<String, String> {
    match runtime {
        Runtime::Wasm => {
            let wasm: Vec<&String> = files.iter().filter(|f| f.ends_with(".wasm")).collect();
            match wasm.as_slice() {
                [one] => Ok((*one).clone()),
                [] => {
                    Err("the bundle has no .wasm file and the manifest names no entrypoint".into())
                }
                many => Err(format!(
                    "the bundle has {} .wasm files ({}); name one as entrypoint in manifest.json",
                    many.len(),
                    many.iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            }
        }
        Runtime::Bun | Runtime::Lambda => {
            for candidate in ["code/index.ts", "index.ts", "index.js"] {
                if files.iter().any(|f| f == candidate) {
                    return Ok(candidate.to_string());
                }
            }
            Err("the bundle has none of code/index.ts, index.ts, index.js and the manifest names no entrypoint".into())
        }
    }
}

pub fn valid_env_key(key: &str) -> bool {
    let mut chars = key.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: ManifestBounds = ManifestBounds {
        default_timeout_ms: 30_000,
        max_timeout_ms: 300_000,
        max_min_instances: 10,
        per_instance: 32,
    };

    #[test]
    fn a_static_bun_pool_keeps_its_instances_started_within_the_bound() {
        let resolve = |json: &str, runtime| {
            let m = Manifest::parse(json.as_bytes()).expect("parses");
            let files = files(&["index.ts", "a.wasm"]);
            let entry = if runtime == Runtime::Bun {
                "index.ts"
            } else {
                "a.wasm"
            };
            let m = Manifest {
                entrypoint: Some(entry.into()),
                ..m
            };
            Manifest::resolve(Some(&m), "hello", runtime, &files, T)
        };
        let r = resolve(r#"{"pool":{"workers":40,"buffer":8}}"#, Runtime::Bun).expect("valid");
        assert_eq!(r.min_instances, 2, "40 slots of 32 per process");
        assert_eq!(
            r.pool,
            Some(Pool::Static {
                workers: 40,
                buffer: 8
            })
        );
        let r = resolve(r#"{"pool":{"workers":4}}"#, Runtime::Wasm).expect("valid");
        assert_eq!(r.min_instances, 0, "a WASM instance is made per request");
        let e = resolve(r#"{"pool":{"workers":400}}"#, Runtime::Bun).expect_err("too many");
        assert!(e.contains("functions.max_min_instances"), "{e}");
        let e = resolve(
            r#"{"pool":{"workers":2},"concurrency":{"min_instances":1}}"#,
            Runtime::Bun,
        )
        .expect_err("both");
        assert!(e.contains("pool.workers only"), "{e}");
        let e = resolve(r#"{"pool":{"type":"lazy"}}"#, Runtime::Bun).expect_err("no size");
        assert!(e.contains("pool.max_size is required"), "{e}");
        let e = resolve(r#"{"pool":{"workers":2}}"#, Runtime::Lambda).expect_err("lambda");
        assert!(e.contains("does not apply to Lambda"), "{e}");
        let r = resolve(r#"{"pool":{"type":"adaptive"}}"#, Runtime::Lambda).expect("adaptive");
        assert!(matches!(r.pool, Some(Pool::Adaptive { .. })));
    }

    fn files(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn no_manifest_uses_the_single_wasm_file() {
        let r = Manifest::resolve(
            None,
            "hello",
            Runtime::Wasm,
            &files(&["a.wasm", "README"]),
            T,
        )
        .expect("valid");
        assert_eq!(r.entrypoint, "a.wasm");
        assert_eq!(r.timeout_ms, 30_000);
        assert_eq!(r.memory_mb, 128);
    }

    #[test]
    fn two_wasm_files_need_an_entrypoint() {
        let err = Manifest::resolve(
            None,
            "hello",
            Runtime::Wasm,
            &files(&["a.wasm", "b.wasm"]),
            T,
        )
        .expect_err("ambiguous");
        assert!(err.contains("2 .wasm files"), "{err}");
    }

    #[test]
    fn bun_convention_prefers_code_index_ts() {
        let r = Manifest::resolve(
            None,
            "hello",
            Runtime::Bun,
            &files(&["index.js", "code/index.ts"]),
            T,
        )
        .expect("valid");
        assert_eq!(r.entrypoint, "code/index.ts");
    }

    #[test]
    fn out_of_range_limits_name_the_range() {
        let m = Manifest::parse(br#"{"limits":{"memory_mb":4096}}"#).expect("parses");
        let err = Manifest::resolve(Some(&m), "hello", Runtime::Wasm, &files(&["a.wasm"]), T)
            .expect_err("too much memory");
        assert!(err.contains("32-1024"), "{err}");
        let m = Manifest::parse(br#"{"limits":{"timeout_ms":400000}}"#).expect("parses");
        let err = Manifest::resolve(Some(&m), "hello", Runtime::Wasm, &files(&["a.wasm"]), T)
            .expect_err("too long");
        assert!(err.contains("1-300000"), "{err}");
    }

    #[test]
    fn min_instances_is_bounded() {
        let at = |n: u32| {
            let json = format!(r#"{{"concurrency":{{"min_instances":{n}}}}}"#);
            let m = Manifest::parse(json.as_bytes()).expect("parses");
            Manifest::resolve(Some(&m), "hello", Runtime::Wasm, &files(&["a.wasm"]), T)
        };
        assert_eq!(at(10).expect("at the bound").min_instances, 10);
        let err = at(11).expect_err("past the bound");
        assert!(err.contains("concurrency.min_instances 11"), "{err}");
        assert!(err.contains("0-10"), "{err}");
        let err = at(u32::MAX).expect_err("huge");
        assert!(err.contains("0-10"), "{err}");
        // The bound is the server's, not a constant.
        let m = Manifest::parse(br#"{"concurrency":{"min_instances":3}}"#).expect("parses");
        let tight = ManifestBounds {
            max_min_instances: 2,
            ..T
        };
        let err = Manifest::resolve(Some(&m), "hello", Runtime::Wasm, &files(&["a.wasm"]), tight)
            .expect_err("past a configured bound");
        assert!(err.contains("0-2"), "{err}");
    }

    #[test]
    fn mismatches_and_unknown_fields_are_refused() {
        let m = Manifest::parse(br#"{"name":"other"}"#).expect("parses");
        assert!(
            Manifest::resolve(Some(&m), "hello", Runtime::Wasm, &files(&["a.wasm"]), T).is_err()
        );
        let m = Manifest::parse(br#"{"runtime":"bun"}"#).expect("parses");
        assert!(
            Manifest::resolve(Some(&m), "hello", Runtime::Wasm, &files(&["a.wasm"]), T).is_err()
        );
        let m = Manifest::parse(br#"{"entrypoint":"missing.wasm"}"#).expect("parses");
        assert!(
            Manifest::resolve(Some(&m), "hello", Runtime::Wasm, &files(&["a.wasm"]), T).is_err()
        );
        assert!(Manifest::parse(br#"{"entrypont":"a.wasm"}"#).is_err());
    }

    fn with_calls(calls: &str) -> Result<Resolved, String> {
        let json = format!(r#"{{"calls":{calls}}}"#);
        let m = Manifest::parse(json.as_bytes())?;
        Manifest::resolve(Some(&m), "hello", Runtime::Wasm, &files(&["a.wasm"]), T)
    }

    #[test]
    fn calls_parse_validate_and_resolve() {
        let r = with_calls(
            r#"{"users":{"function":"get-user","timeout_ms":800},"mail":{"function":"send-mail"}}"#,
        )
        .expect("valid");
        let calls = r.calls.expect("kept");
        assert_eq!(calls["users"].function.as_deref(), Some("get-user"));
        assert_eq!(calls["users"].timeout_ms, Some(800));
        assert_eq!(calls["mail"].timeout_ms, None);
        assert_eq!(
            with_calls("{}").expect("calls nothing").calls,
            Some(Calls::new())
        );
        let none = Manifest::resolve(None, "hello", Runtime::Wasm, &files(&["a.wasm"]), T);
        assert_eq!(none.expect("valid").calls, None);
        assert!(
            with_calls(r#"{"users":{"function":"get-user","retries":3}}"#).is_err(),
            "unknown field"
        );
        assert!(with_calls(r#"{"users":{}}"#).is_err(), "no function");
        let r = with_calls(r#"{"mail":{"contract":"email.sender@1"}}"#).expect("a contract");
        assert_eq!(
            r.calls.expect("kept")["mail"].contract.as_deref(),
            Some("email.sender@1")
        );
        let both = with_calls(r#"{"mail":{"function":"smtp","contract":"email.sender@1"}}"#);
        assert!(both.expect_err("both").contains("exactly one"));
        let bad = with_calls(r#"{"mail":{"contract":"email.sender"}}"#);
        assert!(bad.expect_err("no version").contains("calls.mail.contract"));
    }

    #[test]
    fn bad_calls_are_refused_naming_the_alias() {
        for (calls, expected) in [
            (r#"{"Users":{"function":"get-user"}}"#, r#"alias "Users""#),
            (r#"{"-users":{"function":"get-user"}}"#, r#"alias "-users""#),
            (r#"{"users-":{"function":"get-user"}}"#, r#"alias "users-""#),
            (r#"{"us.ers":{"function":"get-user"}}"#, r#"alias "us.ers""#),
            (r#"{"":{"function":"get-user"}}"#, r#"alias """#),
            (
                r#"{"users":{"function":"Get-User"}}"#,
                "calls.users.function",
            ),
            (r#"{"users":{"function":"1user"}}"#, "calls.users.function"),
            (r#"{"users":{"function":""}}"#, "calls.users.function"),
            (
                r#"{"users":{"function":"u","timeout_ms":0}}"#,
                "calls.users.timeout_ms 0",
            ),
            (
                r#"{"users":{"function":"u","timeout_ms":300001}}"#,
                "calls.users.timeout_ms 300001 is out of range (1-300000)",
            ),
        ] {
            let err = with_calls(calls).expect_err(calls);
            assert!(err.contains(expected), "{calls}: {err}");
        }
        let long = "a".repeat(63);
        with_calls(&format!(
            r#"{{"{long}":{{"function":"{long}","timeout_ms":300000}}}}"#
        ))
        .expect("63 characters and the bound are allowed");
        let longer = "a".repeat(64);
        assert!(with_calls(&format!(r#"{{"{longer}":{{"function":"u"}}}}"#)).is_err());
        assert!(with_calls(&format!(r#"{{"u":{{"function":"{longer}"}}}}"#)).is_err());
        let many = |n: usize| {
            let entries: Vec<String> = (0..n)
                .map(|i| format!(r#""a{i}":{{"function":"f{i}"}}"#))
                .collect();
            with_calls(&format!("{{{}}}", entries.join(",")))
        };
        assert_eq!(
            many(MAX_CALL_ALIASES)
                .expect("at the bound")
                .calls
                .map(|c| c.len()),
            Some(MAX_CALL_ALIASES)
        );
        let err = many(MAX_CALL_ALIASES + 1).expect_err("past the bound");
        let expected = format!(
            "{} aliases, at most {MAX_CALL_ALIASES}",
            MAX_CALL_ALIASES + 1
        );
        assert!(err.contains(&expected), "{err}");
    }

    #[test]
    fn call_target_uses_the_aliases_when_given() {
        let m = Manifest::parse(br#"{"calls":{"users":{"function":"get-user","timeout_ms":800}}}"#)
            .expect("parses");
        let t = m
            .call_target("Users.Reactor.Internal:8080")
            .expect("an alias")
            .expect("internal");
        assert_eq!(t.function, "get-user");
        assert_eq!(t.timeout_ms, Some(800));
        let err = m
            .call_target("get-user.reactor.internal")
            .expect_err("the function's own name is not an alias");
        assert_eq!(err.code(), crate::ErrorCode::CallNotAllowed);
        assert_eq!(m.call_target("example.com").expect("external"), None);
        let open = Manifest::default();
        let t = open
            .call_target("get-user.reactor.internal")
            .expect("any function")
            .expect("internal");
        assert_eq!(
            (t.function.as_str(), t.alias, t.timeout_ms),
            ("get-user", None, None)
        );
    }

    #[test]
    fn function_names_and_aliases() {
        for ok in ["a", "get-user", "a1-", "x".repeat(63).as_str()] {
            assert!(valid_function_name(ok), "{ok}");
        }
        for bad in [
            "",
            "1a",
            "-a",
            "A",
            "a_b",
            "a.b",
            "é",
            "x".repeat(64).as_str(),
        ] {
            assert!(!valid_function_name(bad), "{bad}");
        }
        for ok in ["a", "1a", "a-1", "x".repeat(63).as_str()] {
            assert!(valid_alias(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", "x".repeat(64).as_str()] {
            assert!(!valid_alias(bad), "{bad}");
        }
    }

    #[test]
    fn seed_manifest_parses() {
        let m = Manifest::parse(br#"{"name":"hello","runtime":"bun","entrypoint":"code/index.ts","env_keys":["STRIPE_PUBLIC_KEY"],"secret_keys":["STRIPE_SECRET_KEY"],"concurrency":{"min_instances":0,"max_concurrency":50},"limits":{"timeout_ms":30000,"memory_mb":128}}"#)
            .expect("parses");
        let r = Manifest::resolve(
            Some(&m),
            "hello",
            Runtime::Bun,
            &files(&["code/index.ts"]),
            T,
        )
        .expect("valid");
        assert_eq!(r.max_concurrency, Some(50));
        assert_eq!(r.secret_keys, vec!["STRIPE_SECRET_KEY".to_string()]);
    }
}
