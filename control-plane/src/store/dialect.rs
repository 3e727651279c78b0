//! What differs between the two databases, as far as queries go: which one a URL names,
//! and the placeholders (`?` for SQLite, `$n` for PostgreSQL), rewritten once per query.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

/// Which SQL database a [`SqlStore`](super::SqlStore) talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// The dialect of a database URL (`sqlite:` or `postgres:`/`postgresql:`).
    pub fn of_url(url: &str) -> Option<Self> {
        if url.starts_with("sqlite:") {
            Some(Self::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Self::Postgres)
        } else {
            None
        }
    }
}

/// A query as the dialect wants it: `?` placeholders become `$1, $2, ...` for
/// PostgreSQL. Our queries hold no `?` inside string literals.
fn rewrite(dialect: Dialect, query: &str) -> String {
    match dialect {
        Dialect::Sqlite => query.to_string(),
        Dialect::Postgres => {
            let mut out = String::with_capacity(query.len() + 16);
            let mut n = 0;
            for c in query.chars() {
                if c == '?' {
                    n += 1;
                    out.push('$');
                    out.push_str(&n.to_string());
                } else {
                    out.push(c);
                }
            }
            out
        }
    }
}

/// Rewritten queries, kept for the life of the process: the set of queries is fixed
/// (built from constants), so this holds a few dozen strings.
pub(super) fn interned(dialect: Dialect, query: &str) -> &'static str {
    type Cache = Mutex<HashMap<(Dialect, String), &'static str>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut map = match cache.lock() {
        Ok(map) => map,
        Err(poisoned) => poisoned.into_inner(),
    };
    if let Some(q) = map.get(&(dialect, query.to_string())) {
        return q;
    }
    let q: &'static str = Box::leak(rewrite(dialect, query).into_boxed_str());
    map.insert((dialect, query.to_string()), q);
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_for_postgres_only() {
        assert_eq!(
            rewrite(
                Dialect::Postgres,
                "UPDATE t SET a = ? WHERE b = ? AND c = 'x'"
            ),
            "UPDATE t SET a = $1 WHERE b = $2 AND c = 'x'"
        );
        assert_eq!(rewrite(Dialect::Sqlite, "a = ?"), "a = ?");
        assert!(std::ptr::eq(
            interned(Dialect::Postgres, "b = ?"),
            interned(Dialect::Postgres, "b = ?")
        ));
    }

    #[test]
    fn urls_name_their_dialect() {
        assert_eq!(
            Dialect::of_url("sqlite://reactor.db"),
            Some(Dialect::Sqlite)
        );
        assert_eq!(Dialect::of_url("postgres://db/r"), Some(Dialect::Postgres));
        assert_eq!(
            Dialect::of_url("postgresql://db/r"),
            Some(Dialect::Postgres)
        );
        assert_eq!(Dialect::of_url("mysql://x"), None);
    }
}
