//! A manifest's `pool`: how a function's instances are kept and sized (the second seed's
//! pools). The shapes, and where each one acts:
//!
//! - `inline` (WASM only): a call from a WASM function runs the callee in the caller's
//!   worker, on its engine, with no hop to a router (`reactor-worker-wasm`'s `inline`);
//!   other requests reach it as usual;
//! - `static` (`workers`, `buffer`): each worker keeps `workers` instances started
//!   (Bun processes), never more; `buffer` requests wait for one, then 429;
//! - `lazy` (`max_size`, `idle_ttl_secs`): starts empty, grows to `max_size` instances
//!   per worker, an instance idle for `idle_ttl_secs` is stopped;
//! - `adaptive` (`min_size`, `max_size`, `algorithm`): the router limits the function's
//!   requests in flight to a limit it sizes from measured latency (Gradient2 or AIMD),
//!   cold starts left out of the samples, between `min_size` and `max_size`; over the
//!   limit, 429.
//!
//! Without `type` the fields say which: `workers` → static, `max_size` → lazy (the seed's
//! rule). Without `pool` the worker's own settings apply (`bun_max_instances_per_fn`...).

use serde::{Deserialize, Serialize};

/// The manifest's `pool` as written.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSpec {
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<PoolKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buffer: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_size: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_size: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_ttl_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<Algorithm>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolKind {
    Inline,
    Static,
    Lazy,
    Adaptive,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    #[default]
    Gradient2,
    Aimd,
}

/// A pool settled: its shape with every value it needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Pool {
    Inline,
    Static {
        workers: u32,
        buffer: u32,
    },
    Lazy {
        max_size: u32,
        idle_ttl_secs: u64,
    },
    Adaptive {
        min_size: u32,
        max_size: u32,
        algorithm: Algorithm,
    },
}

/// Most instances a pool may ask of each worker.
pub const MAX_POOL_SIZE: u32 = 1024;
/// Most requests a static pool may queue.
pub const MAX_BUFFER: u32 = 10_000;
/// Default queue of a static pool, and idle TTL of a lazy one.
pub const DEFAULT_BUFFER: u32 = 64;
pub const DEFAULT_IDLE_TTL_SECS: u64 = 300;

impl PoolSpec {
    /// The pool these fields describe, or what is wrong with them (naming the field).
    pub fn resolve(&self) -> Result<Pool, String> {
        let kind = match (self.kind, self.workers, self.max_size) {
            (Some(k), _, _) => k,
            (None, Some(_), _) => PoolKind::Static,
            (None, None, Some(_)) => PoolKind::Lazy,
            (None, None, None) => {
                return Err(
                    "pool needs a type (inline, static, lazy or adaptive), workers (static) or max_size (lazy)"
                        .into(),
                );
            }
        };
        let size = |name: &str, v: u32| {
            if (1..=MAX_POOL_SIZE).contains(&v) {
                Ok(v)
            } else {
                Err(format!(
                    "pool.{name} {v} is out of range (1-{MAX_POOL_SIZE})"
                ))
            }
        };
        let unused = |fields: &[(&str, bool)]| match fields.iter().find(|(_, set)| *set) {
            Some((name, _)) => Err(format!("pool.{name} does not apply to a {kind:?} pool")),
            None => Ok(()),
        };
        match kind {
            PoolKind::Inline => {
                unused(&[
                    ("workers", self.workers.is_some()),
                    ("buffer", self.buffer.is_some()),
                    ("min_size", self.min_size.is_some()),
                    ("max_size", self.max_size.is_some()),
                    ("idle_ttl_secs", self.idle_ttl_secs.is_some()),
                    ("algorithm", self.algorithm.is_some()),
                ])?;
                Ok(Pool::Inline)
            }
            PoolKind::Static => {
                unused(&[
                    ("min_size", self.min_size.is_some()),
                    ("max_size", self.max_size.is_some()),
                    ("idle_ttl_secs", self.idle_ttl_secs.is_some()),
                    ("algorithm", self.algorithm.is_some()),
                ])?;
                let workers = size(
                    "workers",
                    self.workers
                        .ok_or("pool.workers is required for a static pool")?,
                )?;
                let buffer = self.buffer.unwrap_or(DEFAULT_BUFFER);
                if buffer > MAX_BUFFER {
                    return Err(format!(
                        "pool.buffer {buffer} is out of range (0-{MAX_BUFFER})"
                    ));
                }
                Ok(Pool::Static { workers, buffer })
            }
            PoolKind::Lazy => {
                unused(&[
                    ("workers", self.workers.is_some()),
                    ("buffer", self.buffer.is_some()),
                    ("min_size", self.min_size.is_some()),
                    ("algorithm", self.algorithm.is_some()),
                ])?;
                let max_size = size(
                    "max_size",
                    self.max_size
                        .ok_or("pool.max_size is required for a lazy pool")?,
                )?;
                let idle_ttl_secs = self.idle_ttl_secs.unwrap_or(DEFAULT_IDLE_TTL_SECS);
                if !(1..=86_400).contains(&idle_ttl_secs) {
                    return Err(format!(
                        "pool.idle_ttl_secs {idle_ttl_secs} is out of range (1-86400)"
                    ));
                }
                Ok(Pool::Lazy {
                    max_size,
                    idle_ttl_secs,
                })
            }
            PoolKind::Adaptive => {
                unused(&[
                    ("workers", self.workers.is_some()),
                    ("buffer", self.buffer.is_some()),
                    ("idle_ttl_secs", self.idle_ttl_secs.is_some()),
                ])?;
                let max_size = size("max_size", self.max_size.unwrap_or(256))?;
                let min_size = size("min_size", self.min_size.unwrap_or(1))?;
                if min_size > max_size {
                    return Err(format!(
                        "pool.min_size {min_size} is above max_size {max_size}"
                    ));
                }
                Ok(Pool::Adaptive {
                    min_size,
                    max_size,
                    algorithm: self.algorithm.unwrap_or_default(),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(json: &str) -> Result<Pool, String> {
        serde_json::from_str::<PoolSpec>(json)
            .map_err(|e| e.to_string())?
            .resolve()
    }

    #[test]
    fn the_seeds_pools_read_and_the_fields_choose_the_type() {
        assert_eq!(
            resolve(r#"{"type":"static","workers":8,"buffer":512}"#),
            Ok(Pool::Static {
                workers: 8,
                buffer: 512
            })
        );
        assert_eq!(
            resolve(r#"{"type":"lazy","max_size":32}"#),
            Ok(Pool::Lazy {
                max_size: 32,
                idle_ttl_secs: DEFAULT_IDLE_TTL_SECS
            })
        );
        assert_eq!(
            resolve(r#"{"type":"adaptive","max_size":256}"#),
            Ok(Pool::Adaptive {
                min_size: 1,
                max_size: 256,
                algorithm: Algorithm::Gradient2
            })
        );
        assert_eq!(
            resolve(r#"{"workers":4}"#),
            Ok(Pool::Static {
                workers: 4,
                buffer: DEFAULT_BUFFER
            })
        );
        assert!(matches!(
            resolve(r#"{"max_size":16}"#),
            Ok(Pool::Lazy { max_size: 16, .. })
        ));
        assert_eq!(resolve(r#"{"type":"inline"}"#), Ok(Pool::Inline));
        assert_eq!(
            serde_json::to_string(&Pool::Inline).expect("json"),
            r#"{"type":"inline"}"#
        );
        assert!(resolve(r#"{"type":"inline","workers":2}"#).is_err());
    }

    #[test]
    fn bad_pools_are_refused_by_field() {
        for (json, says) in [
            (r#"{}"#, "needs a type"),
            (r#"{"type":"pooled"}"#, "unknown variant"),
            (r#"{"type":"static"}"#, "pool.workers is required"),
            (r#"{"workers":0}"#, "pool.workers 0"),
            (
                r#"{"workers":2,"max_size":4}"#,
                "pool.max_size does not apply",
            ),
            (
                r#"{"type":"lazy","max_size":4,"idle_ttl_secs":0}"#,
                "idle_ttl_secs",
            ),
            (
                r#"{"type":"adaptive","min_size":8,"max_size":4}"#,
                "min_size 8 is above",
            ),
            (
                r#"{"type":"adaptive","algorithm":"vegas"}"#,
                "unknown variant",
            ),
        ] {
            let e = resolve(json).expect_err(json);
            assert!(e.contains(says), "{json}: {e}");
        }
    }
}
