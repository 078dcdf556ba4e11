//! [`AuthStore`] over SQLite: users, sessions and refresh tokens, API keys, enrollment tokens.
//! Every decision that writes (rotation, counting an enrollment) runs on the one write
//! connection in one transaction, so concurrent callers are serialised.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::SqliteRow;
use sqlx::{Connection, Row};
use uuid::Uuid;

use super::{micros, opt_micros, opt_time, text, time, SqliteStore};
use crate::auth::{
    judge_enrollment_token, ApiKeyRecord, AuthStore, EnrollmentTokenRecord, EnrollmentTokenUse,
    RefreshOutcome, SessionRecord, UserPatch, UserRecord,
};
use crate::common::{not_found, parse, to_u32, to_u64};
use crate::{Result, StoreError};

const USER_COLUMNS: &str = "id, username, password_hash, role, disabled, created_at, updated_at";
const KEY_COLUMNS: &str = "id, user_id, name, role, key_hash, prefix, created_at, expires_at, \
                           last_used_at, revoked_at";
const TOKEN_COLUMNS: &str = "id, name, token_hash, prefix, created_by, created_at, expires_at, \
                             max_uses, use_count, revoked_at";

fn id_col(row: &SqliteRow, column: &str) -> Result<Uuid> {
    parse(column, &text(row, column)?)
}

fn user_from_row(row: &SqliteRow) -> Result<UserRecord> {
    Ok(UserRecord {
        id: id_col(row, "id")?,
        username: text(row, "username")?,
        password_hash: text(row, "password_hash")?,
        role: parse("role", &text(row, "role")?)?,
        disabled: row.try_get::<i64, _>("disabled")? != 0,
        created_at: time(row, "created_at")?,
        updated_at: time(row, "updated_at")?,
    })
}

fn key_from_row(row: &SqliteRow) -> Result<ApiKeyRecord> {
    Ok(ApiKeyRecord {
        id: id_col(row, "id")?,
        user_id: id_col(row, "user_id")?,
        name: text(row, "name")?,
        role: parse("role", &text(row, "role")?)?,
        key_hash: text(row, "key_hash")?,
        prefix: text(row, "prefix")?,
        created_at: time(row, "created_at")?,
        expires_at: opt_time(row, "expires_at")?,
        last_used_at: opt_time(row, "last_used_at")?,
        revoked_at: opt_time(row, "revoked_at")?,
    })
}

fn token_from_row(row: &SqliteRow) -> Result<EnrollmentTokenRecord> {
    Ok(EnrollmentTokenRecord {
        id: id_col(row, "id")?,
        name: text(row, "name")?,
        token_hash: text(row, "token_hash")?,
        prefix: text(row, "prefix")?,
        created_by: row.try_get("created_by")?,
        created_at: time(row, "created_at")?,
        expires_at: opt_time(row, "expires_at")?,
        max_uses: row
            .try_get::<Option<i64>, _>("max_uses")?
            .map(|v| to_u32("max_uses", v))
            .transpose()?,
        use_count: to_u32("use_count", row.try_get("use_count")?)?,
        revoked_at: opt_time(row, "revoked_at")?,
    })
}

fn taken(error: sqlx::Error, entity: &'static str, id: &str) -> StoreError {
    match &error {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::AlreadyExists {
            entity,
            id: id.to_string(),
        },
        _ => error.into(),
    }
}

#[async_trait]
impl AuthStore for SqliteStore {
    async fn count_users(&self) -> Result<u64> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users")
            .fetch_one(&mut *self.read.get().await?)
            .await?;
        to_u64("count", n)
    }

    async fn create_user(&self, u: &UserRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO users (id, username, password_hash, role, disabled, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .bind(u.id.to_string())
        .bind(&u.username)
        .bind(&u.password_hash)
        .bind(u.role.as_str())
        .bind(i64::from(u.disabled))
        .bind(micros(u.created_at))
        .bind(micros(u.updated_at))
        .execute(&mut *self.write.get().await?)
        .await
        .map_err(|e| taken(e, "user", &u.username))?;
        Ok(())
    }

    async fn get_user(&self, id: Uuid) -> Result<UserRecord> {
        let row = sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?1"))
            .bind(id.to_string())
            .fetch_optional(&mut *self.read.get().await?)
            .await?
            .ok_or_else(|| not_found("user", id))?;
        user_from_row(&row)
    }

    async fn find_user(&self, username: &str) -> Result<Option<UserRecord>> {
        sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE username = ?1"
        ))
        .bind(username)
        .fetch_optional(&mut *self.read.get().await?)
        .await?
        .as_ref()
        .map(user_from_row)
        .transpose()
    }

    async fn list_users(&self) -> Result<Vec<UserRecord>> {
        sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users ORDER BY username"
        ))
        .fetch_all(&mut *self.read.get().await?)
        .await?
        .iter()
        .map(user_from_row)
        .collect()
    }

    async fn update_user(
        &self,
        id: Uuid,
        patch: &UserPatch,
        now: DateTime<Utc>,
    ) -> Result<UserRecord> {
        let row = sqlx::query(&format!(
            "UPDATE users SET role = COALESCE(?2, role),
                              password_hash = COALESCE(?3, password_hash),
                              disabled = COALESCE(?4, disabled),
                              updated_at = ?5
             WHERE id = ?1 RETURNING {USER_COLUMNS}"
        ))
        .bind(id.to_string())
        .bind(patch.role.map(|r| r.as_str()))
        .bind(patch.password_hash.as_deref())
        .bind(patch.disabled.map(i64::from))
        .bind(micros(now))
        .fetch_optional(&mut *self.write.get().await?)
        .await?
        .ok_or_else(|| not_found("user", id))?;
        user_from_row(&row)
    }

    async fn delete_user(&self, id: Uuid) -> Result<()> {
        let done = sqlx::query("DELETE FROM users WHERE id = ?1")
            .bind(id.to_string())
            .execute(&mut *self.write.get().await?)
            .await?;
        if done.rows_affected() == 0 {
            return Err(not_found("user", id));
        }
        Ok(())
    }

    async fn create_session(
        &self,
        session_id: Uuid,
        user_id: Uuid,
        refresh_hash: &str,
        refresh_expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let mut conn = self.write.get().await?;
        let mut tx = conn.begin().await?;
        sqlx::query("INSERT INTO auth_sessions (id, user_id, created_at) VALUES (?1, ?2, ?3)")
            .bind(session_id.to_string())
            .bind(user_id.to_string())
            .bind(micros(now))
            .execute(&mut *tx)
            .await
            .map_err(|e| match &e {
                sqlx::Error::Database(db) if db.is_foreign_key_violation() => {
                    not_found("user", user_id)
                }
                _ => e.into(),
            })?;
        sqlx::query(
            "INSERT INTO refresh_tokens (token_hash, session_id, created_at, expires_at)
             VALUES (?1, ?2, ?3, ?4)",
        )
        .bind(refresh_hash)
        .bind(session_id.to_string())
        .bind(micros(now))
        .bind(micros(refresh_expires_at))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn rotate_refresh_token(
        &self,
        presented_hash: &str,
        new_hash: &str,
        new_expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<RefreshOutcome> {
        let mut conn = self.write.get().await?;
        let mut tx = conn.begin().await?;
        let Some(row) = sqlx::query(
            "SELECT t.session_id, t.expires_at, t.used_at, s.revoked_at, s.user_id
             FROM refresh_tokens t JOIN auth_sessions s ON s.id = t.session_id
             WHERE t.token_hash = ?1",
        )
        .bind(presented_hash)
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Ok(RefreshOutcome::Unknown);
        };
        let session_id = id_col(&row, "session_id")?;
        if opt_time(&row, "revoked_at")?.is_some() {
            return Ok(RefreshOutcome::Revoked);
        }
        if opt_time(&row, "used_at")?.is_some() {
            sqlx::query("UPDATE auth_sessions SET revoked_at = ?2 WHERE id = ?1")
                .bind(session_id.to_string())
                .bind(micros(now))
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            return Ok(RefreshOutcome::Reused { session_id });
        }
        if time(&row, "expires_at")? <= now {
            return Ok(RefreshOutcome::Expired);
        }
        let user_id = id_col(&row, "user_id")?;
        sqlx::query("UPDATE refresh_tokens SET used_at = ?2 WHERE token_hash = ?1")
            .bind(presented_hash)
            .bind(micros(now))
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO refresh_tokens (token_hash, session_id, created_at, expires_at)
             VALUES (?1, ?2, ?3, ?4)",
        )
        .bind(new_hash)
        .bind(session_id.to_string())
        .bind(micros(now))
        .bind(micros(new_expires_at))
        .execute(&mut *tx)
        .await?;
        let user = sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?1"))
            .bind(user_id.to_string())
            .fetch_one(&mut *tx)
            .await?;
        let user = user_from_row(&user)?;
        tx.commit().await?;
        Ok(RefreshOutcome::Rotated { session_id, user })
    }

    async fn revoke_session(&self, session_id: Uuid, now: DateTime<Utc>) -> Result<()> {
        sqlx::query("UPDATE auth_sessions SET revoked_at = COALESCE(revoked_at, ?2) WHERE id = ?1")
            .bind(session_id.to_string())
            .bind(micros(now))
            .execute(&mut *self.write.get().await?)
            .await?;
        Ok(())
    }

    async fn get_session(&self, session_id: Uuid) -> Result<Option<(SessionRecord, UserRecord)>> {
        let Some(row) = sqlx::query(
            "SELECT s.id AS session_id, s.created_at AS session_created_at, s.revoked_at,
                    u.id, u.username, u.password_hash, u.role, u.disabled, u.created_at, u.updated_at
             FROM auth_sessions s JOIN users u ON u.id = s.user_id WHERE s.id = ?1",
        )
        .bind(session_id.to_string())
        .fetch_optional(&mut *self.read.get().await?)
        .await?
        else {
            return Ok(None);
        };
        let user = user_from_row(&row)?;
        let session = SessionRecord {
            id: id_col(&row, "session_id")?,
            user_id: user.id,
            created_at: time(&row, "session_created_at")?,
            revoked_at: opt_time(&row, "revoked_at")?,
        };
        Ok(Some((session, user)))
    }

    async fn create_api_key(&self, k: &ApiKeyRecord) -> Result<()> {
        sqlx::query(&format!(
            "INSERT INTO api_keys ({KEY_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
        ))
        .bind(k.id.to_string())
        .bind(k.user_id.to_string())
        .bind(&k.name)
        .bind(k.role.as_str())
        .bind(&k.key_hash)
        .bind(&k.prefix)
        .bind(micros(k.created_at))
        .bind(opt_micros(k.expires_at))
        .bind(opt_micros(k.last_used_at))
        .bind(opt_micros(k.revoked_at))
        .execute(&mut *self.write.get().await?)
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(db) if db.is_foreign_key_violation() => {
                not_found("user", k.user_id)
            }
            _ => e.into(),
        })?;
        Ok(())
    }

    async fn list_api_keys(&self, user_id: Option<Uuid>) -> Result<Vec<ApiKeyRecord>> {
        sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE ?1 IS NULL OR user_id = ?1
             ORDER BY created_at DESC, id DESC"
        ))
        .bind(user_id.map(|u| u.to_string()))
        .fetch_all(&mut *self.read.get().await?)
        .await?
        .iter()
        .map(key_from_row)
        .collect()
    }

    async fn get_api_key(&self, id: Uuid) -> Result<ApiKeyRecord> {
        let row = sqlx::query(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = ?1"))
            .bind(id.to_string())
            .fetch_optional(&mut *self.read.get().await?)
            .await?
            .ok_or_else(|| not_found("api key", id))?;
        key_from_row(&row)
    }

    async fn find_api_key(&self, key_hash: &str) -> Result<Option<ApiKeyRecord>> {
        sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE key_hash = ?1"
        ))
        .bind(key_hash)
        .fetch_optional(&mut *self.read.get().await?)
        .await?
        .as_ref()
        .map(key_from_row)
        .transpose()
    }

    async fn revoke_api_key(&self, id: Uuid, now: DateTime<Utc>) -> Result<()> {
        let done =
            sqlx::query("UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?2) WHERE id = ?1")
                .bind(id.to_string())
                .bind(micros(now))
                .execute(&mut *self.write.get().await?)
                .await?;
        if done.rows_affected() == 0 {
            return Err(not_found("api key", id));
        }
        Ok(())
    }

    async fn touch_api_key(&self, id: Uuid, now: DateTime<Utc>) -> Result<()> {
        sqlx::query("UPDATE api_keys SET last_used_at = ?2 WHERE id = ?1")
            .bind(id.to_string())
            .bind(micros(now))
            .execute(&mut *self.write.get().await?)
            .await?;
        Ok(())
    }

    async fn create_enrollment_token(&self, t: &EnrollmentTokenRecord) -> Result<()> {
        sqlx::query(&format!(
            "INSERT INTO enrollment_tokens ({TOKEN_COLUMNS})
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
        ))
        .bind(t.id.to_string())
        .bind(&t.name)
        .bind(&t.token_hash)
        .bind(&t.prefix)
        .bind(t.created_by.as_deref())
        .bind(micros(t.created_at))
        .bind(opt_micros(t.expires_at))
        .bind(t.max_uses.map(i64::from))
        .bind(i64::from(t.use_count))
        .bind(opt_micros(t.revoked_at))
        .execute(&mut *self.write.get().await?)
        .await?;
        Ok(())
    }

    async fn list_enrollment_tokens(&self) -> Result<Vec<EnrollmentTokenRecord>> {
        sqlx::query(&format!(
            "SELECT {TOKEN_COLUMNS} FROM enrollment_tokens ORDER BY created_at DESC, id DESC"
        ))
        .fetch_all(&mut *self.read.get().await?)
        .await?
        .iter()
        .map(token_from_row)
        .collect()
    }

    async fn get_enrollment_token(&self, id: Uuid) -> Result<EnrollmentTokenRecord> {
        let row = sqlx::query(&format!(
            "SELECT {TOKEN_COLUMNS} FROM enrollment_tokens WHERE id = ?1"
        ))
        .bind(id.to_string())
        .fetch_optional(&mut *self.read.get().await?)
        .await?
        .ok_or_else(|| not_found("enrollment token", id))?;
        token_from_row(&row)
    }

    async fn revoke_enrollment_token(&self, id: Uuid, now: DateTime<Utc>) -> Result<()> {
        let done = sqlx::query(
            "UPDATE enrollment_tokens SET revoked_at = COALESCE(revoked_at, ?2) WHERE id = ?1",
        )
        .bind(id.to_string())
        .bind(micros(now))
        .execute(&mut *self.write.get().await?)
        .await?;
        if done.rows_affected() == 0 {
            return Err(not_found("enrollment token", id));
        }
        Ok(())
    }

    async fn use_enrollment_token(
        &self,
        token_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<EnrollmentTokenUse> {
        let mut conn = self.write.get().await?;
        let mut tx = conn.begin().await?;
        let Some(row) = sqlx::query(&format!(
            "SELECT {TOKEN_COLUMNS} FROM enrollment_tokens WHERE token_hash = ?1"
        ))
        .bind(token_hash)
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Ok(EnrollmentTokenUse::Unknown);
        };
        let t = token_from_row(&row)?;
        let verdict = judge_enrollment_token(&t, now);
        if let EnrollmentTokenUse::Accepted { .. } = verdict {
            sqlx::query("UPDATE enrollment_tokens SET use_count = use_count + 1 WHERE id = ?1")
                .bind(t.id.to_string())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        }
        Ok(verdict)
    }
}
