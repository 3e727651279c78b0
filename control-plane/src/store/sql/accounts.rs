//! [`Accounts`] on the SQL store: users, memberships, sign-ins and signing keys.

use super::{SqlStore, db, map_db_error};
use crate::secrets::Sealed;
use crate::store::{
    Accounts, Entity, MemberRecord, SessionRecord, SigningKeyRecord, StoreError, UserRecord,
};
use async_trait::async_trait;
use reactor_api::model::Role;
use sqlx::Row;
use sqlx::any::AnyRow;

fn user_row(row: &AnyRow) -> Result<UserRecord, StoreError> {
    Ok(UserRecord {
        id: row.try_get("id").map_err(db)?,
        email: row.try_get("email").map_err(db)?,
        password_hash: row.try_get("password_hash").map_err(db)?,
        created_at: row.try_get("created_at").map_err(db)?,
    })
}

fn member_row(row: &AnyRow) -> Result<MemberRecord, StoreError> {
    let role: String = row.try_get("role").map_err(db)?;
    Ok(MemberRecord {
        user_id: row.try_get("user_id").map_err(db)?,
        email: row.try_get("email").map_err(db)?,
        org: row.try_get("org").map_err(db)?,
        role: Role::parse(&role)
            .ok_or_else(|| StoreError::Corrupt(format!("membership role {role:?}")))?,
        created_at: row.try_get("created_at").map_err(db)?,
    })
}

fn session_row(row: &AnyRow) -> Result<SessionRecord, StoreError> {
    let expires: i64 = row.try_get("expires_at").map_err(db)?;
    Ok(SessionRecord {
        id: row.try_get("id").map_err(db)?,
        user_id: row.try_get("user_id").map_err(db)?,
        refresh_sha256: row.try_get("refresh_sha256").map_err(db)?,
        created_at: row.try_get("created_at").map_err(db)?,
        expires_at: expires.max(0) as u64,
        rotated_at: row
            .try_get::<Option<i64>, _>("rotated_at")
            .map_err(db)?
            .map(|at| at.max(0) as u64),
    })
}

const USER_COLUMNS: &str = "id, email, password_hash, created_at";
const MEMBER_SELECT: &str = "SELECT m.user_id, u.email, m.org, m.role, m.created_at FROM memberships m JOIN users u ON u.id = m.user_id";
const SESSION_COLUMNS: &str = "id, user_id, refresh_sha256, created_at, expires_at, rotated_at";

#[async_trait]
impl Accounts for SqlStore {
    async fn create_user(&self, u: &UserRecord) -> Result<(), StoreError> {
        sqlx::query(
            self.sql(
                "INSERT INTO users (id, email, password_hash, created_at) VALUES (?, ?, ?, ?)",
            ),
        )
        .bind(&u.id)
        .bind(&u.email)
        .bind(&u.password_hash)
        .bind(&u.created_at)
        .execute(&self.pool)
        .await
        .map_err(map_db_error(Entity::User, &u.email))?;
        Ok(())
    }

    async fn user_by_email(&self, email: &str) -> Result<Option<UserRecord>, StoreError> {
        let row =
            sqlx::query(self.sql(&format!("SELECT {USER_COLUMNS} FROM users WHERE email = ?")))
                .bind(email)
                .fetch_optional(&self.pool)
                .await
                .map_err(db)?;
        row.as_ref().map(user_row).transpose()
    }

    async fn get_user(&self, id: &str) -> Result<Option<UserRecord>, StoreError> {
        let row = sqlx::query(self.sql(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?")))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        row.as_ref().map(user_row).transpose()
    }

    async fn list_users(&self) -> Result<Vec<UserRecord>, StoreError> {
        let rows =
            sqlx::query(self.sql(&format!("SELECT {USER_COLUMNS} FROM users ORDER BY email")))
                .fetch_all(&self.pool)
                .await
                .map_err(db)?;
        rows.iter().map(user_row).collect()
    }

    async fn delete_user(&self, id: &str) -> Result<bool, StoreError> {
        // The cascade removes memberships and sessions; done explicitly too, so a database
        // without foreign keys enforced keeps nothing of the user.
        let mut tx = self.pool.begin().await.map_err(db)?;
        for q in [
            "DELETE FROM memberships WHERE user_id = ?",
            "DELETE FROM sessions WHERE user_id = ?",
        ] {
            sqlx::query(self.sql(q))
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        let done = sqlx::query(self.sql("DELETE FROM users WHERE id = ?"))
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(done.rows_affected() > 0)
    }

    async fn set_member(
        &self,
        user_id: &str,
        org: &str,
        role: Role,
        at: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(self.sql(
            "INSERT INTO memberships (user_id, org, role, created_at) VALUES (?, ?, ?, ?) \
             ON CONFLICT (user_id, org) DO UPDATE SET role = excluded.role",
        ))
        .bind(user_id)
        .bind(org)
        .bind(role.as_str())
        .bind(at)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn remove_member(&self, user_id: &str, org: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(self.sql("DELETE FROM memberships WHERE user_id = ? AND org = ?"))
            .bind(user_id)
            .bind(org)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(done.rows_affected() > 0)
    }

    async fn members(&self, org: &str) -> Result<Vec<MemberRecord>, StoreError> {
        let rows =
            sqlx::query(self.sql(&format!("{MEMBER_SELECT} WHERE m.org = ? ORDER BY u.email")))
                .bind(org)
                .fetch_all(&self.pool)
                .await
                .map_err(db)?;
        rows.iter().map(member_row).collect()
    }

    async fn memberships(&self, user_id: &str) -> Result<Vec<MemberRecord>, StoreError> {
        let rows = sqlx::query(self.sql(&format!(
            "{MEMBER_SELECT} WHERE m.user_id = ? ORDER BY m.org"
        )))
        .bind(user_id)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter().map(member_row).collect()
    }

    async fn all_memberships(&self) -> Result<Vec<MemberRecord>, StoreError> {
        let rows = sqlx::query(self.sql(&format!("{MEMBER_SELECT} ORDER BY m.user_id, m.org")))
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        rows.iter().map(member_row).collect()
    }

    async fn insert_session(&self, s: &SessionRecord) -> Result<(), StoreError> {
        sqlx::query(self.sql(
            "INSERT INTO sessions (id, user_id, refresh_sha256, created_at, expires_at) VALUES (?, ?, ?, ?, ?)",
        ))
        .bind(&s.id)
        .bind(&s.user_id)
        .bind(&s.refresh_sha256)
        .bind(&s.created_at)
        .bind(s.expires_at as i64)
        .execute(&self.pool)
        .await
        .map_err(map_db_error(Entity::Session, &s.id))?;
        Ok(())
    }

    async fn session_by_refresh(&self, sha256: &str) -> Result<Option<SessionRecord>, StoreError> {
        let row = sqlx::query(self.sql(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE refresh_sha256 = ? AND revoked_at IS NULL"
        )))
        .bind(sha256)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        row.as_ref().map(session_row).transpose()
    }

    async fn rotate_session(
        &self,
        id: &str,
        old_sha256: &str,
        new_sha256: &str,
        expires_at: u64,
        at: u64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(self.sql(
            "UPDATE sessions SET refresh_sha256 = ?, previous_sha256 = refresh_sha256, expires_at = ?, rotated_at = ? \
             WHERE id = ? AND refresh_sha256 = ? AND revoked_at IS NULL",
        ))
        .bind(new_sha256)
        .bind(expires_at as i64)
        .bind(at as i64)
        .bind(id)
        .bind(old_sha256)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(done.rows_affected() > 0)
    }

    async fn revoke_session(&self, id: &str, at: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(
            self.sql("UPDATE sessions SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL"),
        )
        .bind(at)
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(done.rows_affected() > 0)
    }

    async fn session_by_previous(&self, sha256: &str) -> Result<Option<SessionRecord>, StoreError> {
        let row = sqlx::query(self.sql(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE previous_sha256 = ?"
        )))
        .bind(sha256)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        row.as_ref().map(session_row).transpose()
    }

    async fn session_active(&self, id: &str) -> Result<bool, StoreError> {
        let row =
            sqlx::query(self.sql("SELECT id FROM sessions WHERE id = ? AND revoked_at IS NULL"))
                .bind(id)
                .fetch_optional(&self.pool)
                .await
                .map_err(db)?;
        Ok(row.is_some())
    }

    async fn signing_keys(&self) -> Result<Vec<SigningKeyRecord>, StoreError> {
        let rows = sqlx::query(self.sql(
            "SELECT id, public_key, key_id, nonce, ciphertext, created_at FROM signing_keys ORDER BY created_at, id",
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter()
            .map(|r| {
                Ok(SigningKeyRecord {
                    id: r.try_get("id").map_err(db)?,
                    public_key: r.try_get("public_key").map_err(db)?,
                    private: Sealed {
                        key_id: r.try_get("key_id").map_err(db)?,
                        nonce: r.try_get("nonce").map_err(db)?,
                        ciphertext: r.try_get("ciphertext").map_err(db)?,
                    },
                    created_at: r.try_get("created_at").map_err(db)?,
                })
            })
            .collect()
    }

    async fn insert_signing_key(&self, k: &SigningKeyRecord) -> Result<(), StoreError> {
        sqlx::query(self.sql(
            "INSERT INTO signing_keys (id, public_key, key_id, nonce, ciphertext, created_at) VALUES (?, ?, ?, ?, ?, ?)",
        ))
        .bind(&k.id)
        .bind(&k.public_key)
        .bind(&k.private.key_id)
        .bind(&k.private.nonce)
        .bind(&k.private.ciphertext)
        .bind(&k.created_at)
        .execute(&self.pool)
        .await
        .map_err(map_db_error(Entity::SigningKey, &k.id))?;
        Ok(())
    }
}
