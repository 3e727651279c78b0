//! How a configuration key is declared: once, in a [`section!`] table that gives its
//! field, type, default, environment variable and documented default. The table makes
//! the struct, its `Default`, its environment overrides and the documented list
//! ([`Key`], rendered into `docs/configuration.md` and checked against it by a test).

use super::{ConfigError, absolute};
use crate::Runtime;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// One documented key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Key {
    /// The key as written in `reactor.toml`, with its section (`functions.storage.url`).
    pub key: String,
    pub env: &'static str,
    /// What happens when it is not set.
    pub default: &'static str,
}

/// A value read from an environment variable named `name`.
pub trait FromEnv: Sized {
    fn from_env(name: &str, value: &str) -> Result<Self, ConfigError>;
}

fn invalid(name: &str, value: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Env {
        name: name.to_string(),
        value: value.to_string(),
        reason: reason.into(),
    }
}

macro_rules! integers {
    ($($t:ty),*) => {$(
        impl FromEnv for $t {
            fn from_env(name: &str, value: &str) -> Result<Self, ConfigError> {
                value
                    .trim()
                    .parse()
                    .map_err(|_| invalid(name, value, "expected a non-negative integer"))
            }
        }
    )*};
}
integers!(u32, u64, usize);

impl FromEnv for f64 {
    fn from_env(name: &str, value: &str) -> Result<Self, ConfigError> {
        value
            .trim()
            .parse()
            .map_err(|_| invalid(name, value, "expected a number"))
    }
}

impl FromEnv for bool {
    fn from_env(name: &str, value: &str) -> Result<Self, ConfigError> {
        match value.trim() {
            "true" | "1" => Ok(true),
            "false" | "0" => Ok(false),
            _ => Err(invalid(name, value, "expected true, false, 1 or 0")),
        }
    }
}

impl FromEnv for String {
    fn from_env(_: &str, value: &str) -> Result<Self, ConfigError> {
        Ok(value.to_string())
    }
}

/// Relative to the current directory, made absolute now.
impl FromEnv for PathBuf {
    fn from_env(_: &str, value: &str) -> Result<Self, ConfigError> {
        Ok(absolute(Path::new(value)))
    }
}

impl FromEnv for SocketAddr {
    fn from_env(name: &str, value: &str) -> Result<Self, ConfigError> {
        value
            .trim()
            .parse()
            .map_err(|e: std::net::AddrParseError| invalid(name, value, e.to_string()))
    }
}

impl<T: FromEnv> FromEnv for Option<T> {
    fn from_env(name: &str, value: &str) -> Result<Self, ConfigError> {
        T::from_env(name, value).map(Some)
    }
}

/// Comma-separated; empty items are skipped.
impl FromEnv for Vec<String> {
    fn from_env(_: &str, value: &str) -> Result<Self, ConfigError> {
        Ok(value
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect())
    }
}

/// Comma-separated runtime names.
impl FromEnv for Vec<Runtime> {
    fn from_env(name: &str, value: &str) -> Result<Self, ConfigError> {
        value
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|part| {
                part.parse().map_err(|e: crate::runtime::UnknownRuntime| {
                    invalid(name, value, e.to_string())
                })
            })
            .collect()
    }
}

/// For URLs where an empty value means "not set" (`REACTOR_FUNCTIONS_DATABASE_URL=`).
pub(super) fn non_empty(_: &str, value: &str) -> Result<Option<String>, ConfigError> {
    Ok(Some(value.to_string()).filter(|v| !v.is_empty()))
}

/// Reads a key's variable with the type's [`FromEnv`], or the parser the table names.
macro_rules! parse_env {
    ($name:expr, $value:expr) => {
        $crate::config::keys::FromEnv::from_env($name, $value)
    };
    ($name:expr, $value:expr, $parse:path) => {
        $parse($name, $value)
    };
}
pub(super) use parse_env;

/// Declares a configuration section: each line is
/// `field: Type = default, env "SUFFIX" [with parser], doc "what happens when unset";`,
/// then optionally `sections { field: Type, ... }` for nested tables (declared with their
/// own `section!`, whose path and prefix must extend this one's: a test checks that every
/// variable is its key's path in upper case).
macro_rules! section {
    (
        $(#[$meta:meta])*
        pub struct $name:ident ($section:literal, env $prefix:literal) {
            $(
                $(#[doc = $fdoc:literal])*
                $field:ident : $ty:ty = $default:expr,
                    env $env:literal $(with $parse:path)?, doc $ddoc:literal;
            )*
        }
        $(sections { $($sub:ident : $subty:ty),* $(,)? })?
    ) => {
        $(#[$meta])*
        #[derive(Clone, serde::Deserialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct $name {
            $( $(#[doc = $fdoc])* pub $field: $ty, )*
            $($( pub $sub: $subty, )*)?
        }

        impl Default for $name {
            fn default() -> Self {
                Self {
                    $( $field: $default, )*
                    $($( $sub: Default::default(), )*)?
                }
            }
        }

        impl $name {
            /// This section's keys (and its nested sections'), as documented.
            pub fn keys() -> Vec<$crate::config::keys::Key> {
                #[allow(unused_mut)]
                let mut keys = vec![$(
                    $crate::config::keys::Key {
                        key: format!("{}.{}", $section, stringify!($field)),
                        env: concat!($prefix, $env),
                        default: $ddoc,
                    },
                )*];
                $($( keys.extend(<$subty>::keys()); )*)?
                keys
            }

            /// Applies this section's environment overrides (nested sections' too), read
            /// through `get`.
            pub fn apply_env_with(
                &mut self,
                get: &dyn Fn(&str) -> Option<String>,
            ) -> Result<(), $crate::config::ConfigError> {
                $(
                    if let Some(value) = get(concat!($prefix, $env)) {
                        self.$field = $crate::config::keys::parse_env!(
                            concat!($prefix, $env), &value $(, $parse)?
                        )?;
                    }
                )*
                $($( self.$sub.apply_env_with(get)?; )*)?
                Ok(())
            }
        }
    };
}
pub(super) use section;

/// Every section's keys as the Markdown table of `docs/configuration.md`.
pub fn markdown_table(keys: &[Key]) -> String {
    let mut out = String::from("| key | environment | when not set |\n|---|---|---|\n");
    for k in keys {
        out.push_str(&format!("| `{}` | `{}` | {} |\n", k.key, k.env, k.default));
    }
    out
}
