//! What authentication keeps: users (argon2id PHC strings, never passwords), sessions (one per
//! login, the family of its rotating refresh tokens), API keys and enrollment tokens. Tokens
//! and keys are 256 random bits, stored as hex SHA-256 (nothing to brute-force).
//!
//! [`AuthStore`] is a supertrait of [`crate::Store`], implemented by both backends
//! (`sqlite/auth.rs`, `postgres/auth.rs`) and covered by the conformance suite.

use std::fmt;
use std::str::FromStr;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Result;

/// What a user (or an API key) may do. Ordered: each role may do what the ones before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Read everything.
    Viewer,
    /// Also create and run experiments (its own), deploy pipelines, upload usage queries.
    Operator,
    /// Also users, API keys of others, enrollment tokens, agents, settings, presets, tasks.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "unknown role `{other}`: expected viewer, operator or admin"
            )),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub id: Uuid,
    pub username: String,
    /// Argon2id PHC string.
    pub password_hash: String,
    pub role: Role,
    pub disabled: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Changes to a user; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserPatch {
    pub role: Option<Role>,
    pub password_hash: Option<String>,
    pub disabled: Option<bool>,
}

/// One login: the family of its refresh tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub id: Uuid,
    pub user_id: Uuid,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// What presenting a refresh token did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshOutcome {
    /// The token was current: it is now used, and the new one replaces it.
    Rotated {
        session_id: Uuid,
        user: UserRecord,
    },
    /// The token had already been rotated: someone replayed it. The whole family (session)
    /// is now revoked.
    Reused {
        session_id: Uuid,
    },
    Expired,
    /// The session was revoked (logout, reuse, user deleted).
    Revoked,
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    pub id: Uuid,
    pub user_id: Uuid,
    pub name: String,
    /// At most the owner's role when created; the owner's current role still caps it.
    pub role: Role,
    pub key_hash: String,
    /// The first characters of the key, to recognise it in a list.
    pub prefix: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollmentTokenRecord {
    pub id: Uuid,
    pub name: String,
    pub token_hash: String,
    pub prefix: String,
    pub created_by: Option<String>,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub max_uses: Option<u32>,
    pub use_count: u32,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// What presenting an enrollment token did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnrollmentTokenUse {
    /// Valid: its use count grew by one.
    Accepted {
        token_id: Uuid,
    },
    Unknown,
    Expired,
    /// `max_uses` reached.
    Exhausted,
    Revoked,
}

#[async_trait]
pub trait AuthStore: Send + Sync {
    async fn count_users(&self) -> Result<u64>;
    /// [`crate::StoreError::AlreadyExists`] when the username is taken.
    async fn create_user(&self, user: &UserRecord) -> Result<()>;
    async fn get_user(&self, id: Uuid) -> Result<UserRecord>;
    async fn find_user(&self, username: &str) -> Result<Option<UserRecord>>;
    /// Every user, by username.
    async fn list_users(&self) -> Result<Vec<UserRecord>>;
    async fn update_user(
        &self,
        id: Uuid,
        patch: &UserPatch,
        now: DateTime<Utc>,
    ) -> Result<UserRecord>;
    /// Deletes the user's sessions and API keys with it.
    async fn delete_user(&self, id: Uuid) -> Result<()>;

    /// Open a session for `user_id` with its first refresh token.
    async fn create_session(
        &self,
        session_id: Uuid,
        user_id: Uuid,
        refresh_hash: &str,
        refresh_expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<()>;
    /// Atomically: a current token is marked used and `new_hash` becomes the session's token;
    /// a token used before revokes its whole session ([`RefreshOutcome::Reused`]). Two
    /// concurrent presentations of one token rotate it once; the other is a reuse.
    async fn rotate_refresh_token(
        &self,
        presented_hash: &str,
        new_hash: &str,
        new_expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<RefreshOutcome>;
    /// Revoke a session (idempotent); its refresh tokens and access tokens stop working.
    async fn revoke_session(&self, session_id: Uuid, now: DateTime<Utc>) -> Result<()>;
    /// A session with its user, if both exist.
    async fn get_session(&self, session_id: Uuid) -> Result<Option<(SessionRecord, UserRecord)>>;

    async fn create_api_key(&self, key: &ApiKeyRecord) -> Result<()>;
    /// Newest first; only `user_id`'s when given.
    async fn list_api_keys(&self, user_id: Option<Uuid>) -> Result<Vec<ApiKeyRecord>>;
    async fn get_api_key(&self, id: Uuid) -> Result<ApiKeyRecord>;
    async fn find_api_key(&self, key_hash: &str) -> Result<Option<ApiKeyRecord>>;
    /// Idempotent: revoking twice keeps the first time.
    async fn revoke_api_key(&self, id: Uuid, now: DateTime<Utc>) -> Result<()>;
    async fn touch_api_key(&self, id: Uuid, now: DateTime<Utc>) -> Result<()>;

    async fn create_enrollment_token(&self, token: &EnrollmentTokenRecord) -> Result<()>;
    /// Newest first.
    async fn list_enrollment_tokens(&self) -> Result<Vec<EnrollmentTokenRecord>>;
    async fn get_enrollment_token(&self, id: Uuid) -> Result<EnrollmentTokenRecord>;
    /// Idempotent: revoking twice keeps the first time.
    async fn revoke_enrollment_token(&self, id: Uuid, now: DateTime<Utc>) -> Result<()>;
    /// Atomically check a presented token and count the use; concurrent enrollments never
    /// exceed `max_uses`.
    async fn use_enrollment_token(
        &self,
        token_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<EnrollmentTokenUse>;
}

/// Whether a stored token may enroll one more agent at `now`.
pub(crate) fn judge_enrollment_token(
    t: &EnrollmentTokenRecord,
    now: DateTime<Utc>,
) -> EnrollmentTokenUse {
    if t.revoked_at.is_some() {
        EnrollmentTokenUse::Revoked
    } else if t.expires_at.is_some_and(|e| e <= now) {
        EnrollmentTokenUse::Expired
    } else if t.max_uses.is_some_and(|m| t.use_count >= m) {
        EnrollmentTokenUse::Exhausted
    } else {
        EnrollmentTokenUse::Accepted { token_id: t.id }
    }
}
