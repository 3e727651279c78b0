//! For tests of this crate and the end-to-end suite: a PostgreSQL database of one's own,
//! created on a server the test names and dropped afterwards.

use crate::store::redact_url;
use sqlx::Connection;
use sqlx::postgres::PgConnection;

pub struct TestDatabase {
    admin_url: String,
    pub name: String,
    /// The URL of the new database (the admin URL with its database replaced).
    pub url: String,
    dropped: bool,
}

impl TestDatabase {
    /// Creates `reactor_test_<random>` through `admin_url` (a database that exists, such as
    /// `postgres://postgres@127.0.0.1:5432/postgres`). Panics, naming the server and how to
    /// point the tests elsewhere, when it does not answer: the test needs it.
    pub async fn create(admin_url: &str) -> Self {
        let name = format!(
            "reactor_test_{}_{}",
            std::process::id(),
            ulid::Ulid::new().to_string().to_lowercase()
        );
        let mut conn = PgConnection::connect(admin_url).await.unwrap_or_else(|e| {
            panic!(
                "PostgreSQL is not reachable at {}, and this test needs it: start it (README, \
                 \"Test\") or set REACTOR_TEST_POSTGRES_URL to a server that answers: {e}",
                redact_url(admin_url)
            )
        });
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "creating database {name} on PostgreSQL at {}: {e}",
                    redact_url(admin_url)
                )
            });
        let _ = conn.close().await;
        let base = admin_url
            .rsplit_once('/')
            .map(|(base, _)| base)
            .unwrap_or(admin_url);
        Self {
            admin_url: admin_url.to_string(),
            url: format!("{base}/{name}"),
            name,
            dropped: false,
        }
    }

    /// Drops the database (closing other sessions on it).
    pub async fn drop_now(mut self) {
        self.dropped = true;
        drop_database(&self.admin_url, &self.name).await;
    }
}

async fn drop_database(admin_url: &str, name: &str) {
    if let Ok(mut conn) = PgConnection::connect(admin_url).await {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .execute(&mut conn)
            .await;
        let _ = conn.close().await;
    }
}

impl Drop for TestDatabase {
    /// A test that panicked still drops its database (on a thread of its own, since this
    /// may run inside a runtime).
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(drop_database(&admin_url, &name));
            }
        })
        .join();
    }
}
