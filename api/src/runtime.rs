//! The runtimes and their limits (memory range, default memory, longest timeout).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    Wasm,
    Bun,
    Lambda,
}

/// Memory range and maximum timeout of a runtime.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuntimeLimits {
    pub memory_mb: (u32, u32),
    pub default_memory_mb: u32,
    pub max_timeout_ms: u64,
}

impl Runtime {
    pub const ALL: [Runtime; 3] = [Runtime::Wasm, Runtime::Bun, Runtime::Lambda];

    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Wasm => "wasm",
            Runtime::Bun => "bun",
            Runtime::Lambda => "lambda",
        }
    }

    pub fn limits(self) -> RuntimeLimits {
        match self {
            Runtime::Wasm => RuntimeLimits {
                memory_mb: (32, 1024),
                default_memory_mb: 128,
                max_timeout_ms: 300_000,
            },
            Runtime::Bun => RuntimeLimits {
                memory_mb: (64, 2048),
                default_memory_mb: 128,
                max_timeout_ms: 300_000,
            },
            Runtime::Lambda => RuntimeLimits {
                memory_mb: (128, 10240),
                default_memory_mb: 128,
                max_timeout_ms: 900_000,
            },
        }
    }
}

impl fmt::Display for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown runtime {0:?} (expected wasm, bun or lambda)")]
pub struct UnknownRuntime(pub String);

impl FromStr for Runtime {
    type Err = UnknownRuntime;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "wasm" => Ok(Runtime::Wasm),
            "bun" => Ok(Runtime::Bun),
            "lambda" => Ok(Runtime::Lambda),
            other => Err(UnknownRuntime(other.to_string())),
        }
    }
}
