//! The behaviour of authentication, free of HTTP: password hashing (argon2id), login and
//! token issue (HS256 JWT access tokens, opaque rotating refresh tokens), bearer
//! authentication (access token or API key), users, API keys and enrollment tokens.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use dashmap::DashMap;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use uuid::Uuid;

use phoenix_core::{Clock, FieldErrors};
use phoenix_store::{
    ApiKeyRecord, EnrollmentTokenRecord, EnrollmentTokenUse, RefreshOutcome, Role, SharedStore,
    StoreError, UserPatch, UserRecord,
};

use super::{Principal, Via};
use crate::error::ApiError;

/// How long an access token is valid.
pub const ACCESS_TOKEN_TTL: Duration = Duration::from_secs(15 * 60);
/// API keys start with this, so a bearer value is recognised without a database read.
pub const API_KEY_PREFIX: &str = "phx_";
pub const REFRESH_TOKEN_PREFIX: &str = "phr_";
pub const ENROLLMENT_TOKEN_PREFIX: &str = "pet_";
const JWT_KEY_SETTING: &str = "jwt_signing_key";
const ISSUER: &str = "phoenix";
/// `last_used_at` of an API key is written at most this often per key and replica.
const KEY_TOUCH_EVERY: Duration = Duration::from_secs(60);
/// The same message for an unknown user and a wrong password.
const BAD_LOGIN: &str = "invalid username or password";
const PASSWORD_MIN: usize = 8;
const PASSWORD_MAX: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error(transparent)]
    Invalid(#[from] FieldErrors),
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Internal(String),
}

pub type AuthResult<T> = Result<T, AuthError>;

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Unauthorized(m) => ApiError::unauthorized(m),
            AuthError::Forbidden(m) => ApiError::new(StatusCode::FORBIDDEN, "forbidden", m),
            AuthError::Invalid(f) => f.into(),
            AuthError::Conflict { code, message } => {
                ApiError::new(StatusCode::CONFLICT, code, message)
            }
            AuthError::Store(StoreError::AlreadyExists { entity, id }) => ApiError::new(
                StatusCode::CONFLICT,
                "already_exists",
                format!("{entity} {id} already exists"),
            )
            .with_details(json!({ "entity": entity, "id": id })),
            AuthError::Store(s) => s.into(),
            AuthError::Internal(m) => {
                tracing::error!(error = %m, "authentication failure");
                ApiError::internal("internal error in authentication; see server logs")
            }
        }
    }
}

fn invalid(field: &str, problem: impl Into<String>) -> AuthError {
    let mut f = FieldErrors::default();
    f.push(field, problem);
    AuthError::Invalid(f)
}

/// Hex of `bytes` random bytes from the OS.
pub fn generate_secret(bytes: usize) -> String {
    use rand::RngCore;
    let mut buf = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut buf);
    hex::encode(buf)
}

/// Tokens and keys are 256 random bits: a plain SHA-256 is enough to store them.
pub fn hash_token(token: &str) -> String {
    crate::service::hash_secret(token)
}

fn hash_password_blocking(password: &str) -> AuthResult<String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Internal(format!("hashing a password: {e}")))
}

fn verify_password_blocking(password: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(e) => {
            tracing::error!(error = %e, "a stored password hash does not parse");
            false
        }
    }
}

async fn hash_password(password: String) -> AuthResult<String> {
    tokio::task::spawn_blocking(move || hash_password_blocking(&password))
        .await
        .map_err(|e| AuthError::Internal(format!("password hashing task: {e}")))?
}

async fn verify_password(password: String, phc: String) -> AuthResult<bool> {
    tokio::task::spawn_blocking(move || verify_password_blocking(&password, &phc))
        .await
        .map_err(|e| AuthError::Internal(format!("password verification task: {e}")))
}

pub fn validate_username(field: &str, username: &str) -> AuthResult<()> {
    let ok_chars = username
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    if username.is_empty() || username.len() > 64 || !ok_chars {
        return Err(invalid(
            field,
            "must be 1 to 64 characters of letters, digits, `.`, `_`, `-` or `@`",
        ));
    }
    Ok(())
}

pub fn validate_password(field: &str, password: &str) -> AuthResult<()> {
    if password.chars().count() < PASSWORD_MIN {
        return Err(invalid(
            field,
            format!("must be at least {PASSWORD_MIN} characters"),
        ));
    }
    if password.len() > PASSWORD_MAX {
        return Err(invalid(
            field,
            format!("must be at most {PASSWORD_MAX} bytes"),
        ));
    }
    Ok(())
}

fn validate_name(field: &str, name: &str) -> AuthResult<()> {
    if name.trim().is_empty() || name.chars().count() > 100 {
        return Err(invalid(field, "must be 1 to 100 characters"));
    }
    Ok(())
}

/// Claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct JwtClaims {
    /// The user id.
    pub sub: String,
    /// The session (refresh-token family) the token belongs to: logout revokes it.
    pub sid: String,
    pub name: String,
    pub role: String,
    pub iss: String,
    pub iat: i64,
    pub exp: i64,
}

/// A user as the API shows it (never the password hash).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UserView {
    pub id: Uuid,
    pub username: String,
    /// `viewer`, `operator` or `admin`.
    #[schema(value_type = String)]
    pub role: Role,
    pub disabled: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<UserRecord> for UserView {
    fn from(u: UserRecord) -> Self {
        Self {
            id: u.id,
            username: u.username,
            role: u.role,
            disabled: u.disabled,
            created_at: u.created_at,
            updated_at: u.updated_at,
        }
    }
}

/// What login and refresh answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct IssuedTokens {
    /// Send as `Authorization: Bearer <access_token>`.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    /// Exchange at `POST /api/v1/auth/refresh` for new tokens; single use.
    pub refresh_token: String,
    pub refresh_expires_in: u64,
    pub user: UserView,
}

/// What the configuration says about authentication.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// HS256 key; when `None`, one is generated once and kept in the settings table.
    pub jwt_secret: Option<String>,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
}

/// What [`AuthService::bootstrap_admin`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bootstrap {
    /// Users exist: nothing to do.
    Existing,
    /// The first admin was created; `generated_password` is set when no password was
    /// configured (to be shown once).
    Created {
        username: String,
        generated_password: Option<String>,
    },
}

/// A new API key: the record and the key itself (shown once).
#[derive(Debug)]
pub struct NewApiKey {
    pub record: ApiKeyRecord,
    pub key: String,
}

/// A new enrollment token: the record and the token itself (shown once).
#[derive(Debug)]
pub struct NewEnrollmentToken {
    pub record: EnrollmentTokenRecord,
    pub token: String,
}

pub struct AuthService {
    store: SharedStore,
    clock: Arc<dyn Clock>,
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    access_ttl: Duration,
    refresh_ttl: Duration,
    /// Verified against when the username is unknown, so both answers take as long.
    dummy_hash: String,
    keys_touched: DashMap<Uuid, Instant>,
}

impl std::fmt::Debug for AuthService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthService")
            .field("access_ttl", &self.access_ttl)
            .field("refresh_ttl", &self.refresh_ttl)
            .finish_non_exhaustive()
    }
}

impl AuthService {
    /// Resolve the signing key (configured, else stored by an earlier start or another
    /// replica, else generated and stored).
    pub async fn new(
        store: SharedStore,
        clock: Arc<dyn Clock>,
        settings: AuthSettings,
    ) -> Result<Self, StoreError> {
        let secret = match settings.jwt_secret {
            Some(s) => s,
            None => match store.get_setting(JWT_KEY_SETTING).await? {
                Some(serde_json::Value::String(k)) => k,
                _ => {
                    // Replicas starting at the same moment on an empty database each generate
                    // one; the first written wins and every replica signs with it.
                    let k = generate_secret(32);
                    match store
                        .put_setting_if_absent(JWT_KEY_SETTING, &json!(k), clock.now())
                        .await?
                    {
                        serde_json::Value::String(stored) => stored,
                        other => {
                            return Err(StoreError::Corrupt(format!(
                                "setting {JWT_KEY_SETTING} holds {other}, not a key"
                            )))
                        }
                    }
                }
            },
        };
        let mut validation = Validation::new(Algorithm::HS256);
        // Expiry is checked against the service's clock, not the system's.
        validation.validate_exp = false;
        validation.required_spec_claims =
            HashSet::from(["exp".to_string(), "sub".to_string(), "iss".to_string()]);
        validation.set_issuer(&[ISSUER]);
        let dummy_hash = tokio::task::spawn_blocking(|| {
            hash_password_blocking("not a password anyone has: timing equaliser")
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("hashing task: {e}")))?
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        Ok(Self {
            store,
            clock,
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            validation,
            access_ttl: settings.access_ttl,
            refresh_ttl: settings.refresh_ttl,
            dummy_hash,
            keys_touched: DashMap::new(),
        })
    }

    fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    // ---- users ----

    /// Create the first admin when there is no user at all. With no `password`, one is
    /// generated and returned (the caller shows it once).
    pub async fn bootstrap_admin(
        &self,
        username: &str,
        password: Option<&str>,
    ) -> AuthResult<Bootstrap> {
        if self.store.count_users().await? > 0 {
            return Ok(Bootstrap::Existing);
        }
        let (password, generated) = match password {
            Some(p) => (p.to_string(), None),
            None => {
                let p = generate_secret(12);
                (p.clone(), Some(p))
            }
        };
        match self.create_user(username, &password, Role::Admin).await {
            Ok(_) => Ok(Bootstrap::Created {
                username: username.to_string(),
                generated_password: generated,
            }),
            // Another replica created it first.
            Err(AuthError::Store(StoreError::AlreadyExists { .. })) => Ok(Bootstrap::Existing),
            Err(e) => Err(e),
        }
    }

    pub async fn create_user(
        &self,
        username: &str,
        password: &str,
        role: Role,
    ) -> AuthResult<UserRecord> {
        validate_username("username", username)?;
        validate_password("password", password)?;
        let now = self.now();
        let user = UserRecord {
            id: Uuid::new_v4(),
            username: username.to_string(),
            password_hash: hash_password(password.to_string()).await?,
            role,
            disabled: false,
            created_at: now,
            updated_at: now,
        };
        self.store.create_user(&user).await?;
        tracing::info!(username, role = %role, "user created");
        Ok(user)
    }

    pub async fn list_users(&self) -> AuthResult<Vec<UserRecord>> {
        Ok(self.store.list_users().await?)
    }

    pub async fn get_user(&self, id: Uuid) -> AuthResult<UserRecord> {
        Ok(self.store.get_user(id).await?)
    }

    /// Change a user's role, password or disabled flag. An admin cannot demote, disable or
    /// delete itself (there would be no one left to undo it).
    pub async fn update_user(
        &self,
        actor: &Principal,
        id: Uuid,
        role: Option<Role>,
        password: Option<&str>,
        disabled: Option<bool>,
    ) -> AuthResult<UserRecord> {
        if let Some(p) = password {
            validate_password("password", p)?;
        }
        if actor.user_id == id && (role.is_some_and(|r| r != Role::Admin) || disabled == Some(true))
        {
            return Err(AuthError::Conflict {
                code: "self_lockout",
                message: "an admin cannot demote or disable itself; ask another admin".into(),
            });
        }
        let password_hash = match password {
            Some(p) => Some(hash_password(p.to_string()).await?),
            None => None,
        };
        let patch = UserPatch {
            role,
            password_hash,
            disabled,
        };
        Ok(self.store.update_user(id, &patch, self.now()).await?)
    }

    pub async fn delete_user(&self, actor: &Principal, id: Uuid) -> AuthResult<()> {
        if actor.user_id == id {
            return Err(AuthError::Conflict {
                code: "self_lockout",
                message: "an admin cannot delete itself; ask another admin".into(),
            });
        }
        Ok(self.store.delete_user(id).await?)
    }

    // ---- sessions ----

    /// Check a username and password. Unknown users cost the same argon2 verification as
    /// known ones and get the same message.
    pub async fn login(&self, username: &str, password: &str) -> AuthResult<IssuedTokens> {
        let user = self.store.find_user(username).await?;
        let phc = user
            .as_ref()
            .map(|u| u.password_hash.clone())
            .unwrap_or_else(|| self.dummy_hash.clone());
        let ok = verify_password(password.to_string(), phc).await?;
        let user = match user {
            Some(u) if ok && !u.disabled => u,
            _ => return Err(AuthError::Unauthorized(BAD_LOGIN.into())),
        };
        let session = Uuid::new_v4();
        let refresh = format!("{REFRESH_TOKEN_PREFIX}{}", generate_secret(32));
        let now = self.now();
        self.store
            .create_session(
                session,
                user.id,
                &hash_token(&refresh),
                now + chrono_duration(self.refresh_ttl),
                now,
            )
            .await?;
        tracing::info!(username = %user.username, session_id = %session, "logged in");
        self.issue(user, session, refresh)
    }

    /// Exchange a refresh token for new tokens. A token presented twice revokes its session.
    pub async fn refresh(&self, refresh_token: &str) -> AuthResult<IssuedTokens> {
        let next = format!("{REFRESH_TOKEN_PREFIX}{}", generate_secret(32));
        let now = self.now();
        let outcome = self
            .store
            .rotate_refresh_token(
                &hash_token(refresh_token),
                &hash_token(&next),
                now + chrono_duration(self.refresh_ttl),
                now,
            )
            .await?;
        match outcome {
            RefreshOutcome::Rotated { session_id, user } => {
                if user.disabled {
                    self.store.revoke_session(session_id, now).await?;
                    return Err(AuthError::Unauthorized(format!(
                        "user {} is disabled",
                        user.username
                    )));
                }
                self.issue(user, session_id, next)
            }
            RefreshOutcome::Reused { session_id } => {
                tracing::warn!(%session_id, "a rotated refresh token was presented again: session revoked");
                Err(AuthError::Unauthorized(
                    "refresh token already used: the session is revoked; log in again".into(),
                ))
            }
            RefreshOutcome::Expired => Err(AuthError::Unauthorized(
                "refresh token expired; log in again".into(),
            )),
            RefreshOutcome::Revoked => Err(AuthError::Unauthorized(
                "the session of this refresh token is revoked; log in again".into(),
            )),
            RefreshOutcome::Unknown => Err(AuthError::Unauthorized("unknown refresh token".into())),
        }
    }

    pub async fn logout(&self, principal: &Principal) -> AuthResult<()> {
        match principal.via {
            Via::Session(session) => {
                self.store.revoke_session(session, self.now()).await?;
                Ok(())
            }
            Via::ApiKey(_) => Err(invalid(
                "authorization",
                "an API key has no session: revoke it with DELETE /api/v1/api-keys/{id}",
            )),
        }
    }

    fn issue(&self, user: UserRecord, session: Uuid, refresh: String) -> AuthResult<IssuedTokens> {
        let access_token = self.access_token_for(&user, session)?;
        Ok(IssuedTokens {
            access_token,
            token_type: "Bearer",
            expires_in: self.access_ttl.as_secs(),
            refresh_token: refresh,
            refresh_expires_in: self.refresh_ttl.as_secs(),
            user: user.into(),
        })
    }

    /// Sign an access token for `user` in `session`, valid for the access TTL from now.
    pub fn access_token_for(&self, user: &UserRecord, session: Uuid) -> AuthResult<String> {
        let now = self.now().timestamp();
        let claims = JwtClaims {
            sub: user.id.to_string(),
            sid: session.to_string(),
            name: user.username.clone(),
            role: user.role.to_string(),
            iss: ISSUER.to_string(),
            iat: now,
            exp: now + i64::try_from(self.access_ttl.as_secs()).unwrap_or(900),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| AuthError::Internal(format!("signing an access token: {e}")))
    }

    /// Who presents this bearer value: an access token (signature, expiry, a live session and
    /// an enabled user) or an API key (known, not revoked or expired, its user enabled; its
    /// role capped by the user's).
    pub async fn authenticate(&self, bearer: &str) -> AuthResult<Principal> {
        if bearer.starts_with(API_KEY_PREFIX) {
            return self.authenticate_api_key(bearer).await;
        }
        let data = jsonwebtoken::decode::<JwtClaims>(bearer, &self.decoding, &self.validation)
            .map_err(|e| AuthError::Unauthorized(format!("invalid access token: {e}")))?;
        let claims = data.claims;
        if claims.exp <= self.now().timestamp() {
            return Err(AuthError::Unauthorized(
                "access token expired: refresh it at POST /api/v1/auth/refresh".into(),
            ));
        }
        let (Ok(user_id), Ok(session_id)) =
            (claims.sub.parse::<Uuid>(), claims.sid.parse::<Uuid>())
        else {
            return Err(AuthError::Unauthorized(
                "invalid access token: malformed subject or session".into(),
            ));
        };
        let Some((session, user)) = self.store.get_session(session_id).await? else {
            return Err(AuthError::Unauthorized(
                "the session of this access token no longer exists".into(),
            ));
        };
        if session.revoked_at.is_some() {
            return Err(AuthError::Unauthorized(
                "the session of this access token is revoked (logged out)".into(),
            ));
        }
        if user.id != user_id {
            return Err(AuthError::Unauthorized(
                "invalid access token: subject does not match its session".into(),
            ));
        }
        if user.disabled {
            return Err(AuthError::Unauthorized(format!(
                "user {} is disabled",
                user.username
            )));
        }
        Ok(Principal {
            user_id: user.id,
            username: user.username,
            role: user.role,
            via: Via::Session(session.id),
        })
    }

    async fn authenticate_api_key(&self, key: &str) -> AuthResult<Principal> {
        let Some(record) = self.store.find_api_key(&hash_token(key)).await? else {
            return Err(AuthError::Unauthorized("unknown API key".into()));
        };
        let now = self.now();
        if record.revoked_at.is_some() {
            return Err(AuthError::Unauthorized(format!(
                "API key {} is revoked",
                record.prefix
            )));
        }
        if record.expires_at.is_some_and(|e| e <= now) {
            return Err(AuthError::Unauthorized(format!(
                "API key {} expired",
                record.prefix
            )));
        }
        let user = match self.store.get_user(record.user_id).await {
            Ok(u) => u,
            Err(StoreError::NotFound { .. }) => {
                return Err(AuthError::Unauthorized(
                    "the API key's user no longer exists".into(),
                ))
            }
            Err(e) => return Err(e.into()),
        };
        if user.disabled {
            return Err(AuthError::Unauthorized(format!(
                "user {} is disabled",
                user.username
            )));
        }
        let due = self
            .keys_touched
            .get(&record.id)
            .is_none_or(|t| t.elapsed() >= KEY_TOUCH_EVERY);
        if due {
            self.keys_touched.insert(record.id, Instant::now());
            if let Err(e) = self.store.touch_api_key(record.id, now).await {
                tracing::warn!(error = %e, "cannot record an API key's last use");
            }
        }
        Ok(Principal {
            user_id: user.id,
            username: user.username,
            role: record.role.min(user.role),
            via: Via::ApiKey(record.id),
        })
    }

    // ---- API keys ----

    pub async fn create_api_key(
        &self,
        owner: &Principal,
        name: &str,
        role: Option<Role>,
        expires_in_days: Option<u32>,
    ) -> AuthResult<NewApiKey> {
        validate_name("name", name)?;
        let role = role.unwrap_or(owner.role);
        if role > owner.role {
            return Err(AuthError::Forbidden(format!(
                "role: a {} cannot create a key with role {role}",
                owner.role
            )));
        }
        if let Some(d) = expires_in_days {
            if d == 0 || d > 3650 {
                return Err(invalid("expires_in_days", "must be between 1 and 3650"));
            }
        }
        let key = format!("{API_KEY_PREFIX}{}", generate_secret(32));
        let now = self.now();
        let record = ApiKeyRecord {
            id: Uuid::new_v4(),
            user_id: owner.user_id,
            name: name.trim().to_string(),
            role,
            key_hash: hash_token(&key),
            prefix: key.chars().take(12).collect(),
            created_at: now,
            expires_at: expires_in_days.map(|d| now + chrono::Duration::days(i64::from(d))),
            last_used_at: None,
            revoked_at: None,
        };
        self.store.create_api_key(&record).await?;
        Ok(NewApiKey { record, key })
    }

    /// The caller's keys; every user's when an admin asks for `all`.
    pub async fn list_api_keys(&self, who: &Principal, all: bool) -> AuthResult<Vec<ApiKeyRecord>> {
        if all && who.role != Role::Admin {
            return Err(AuthError::Forbidden(
                "query.all: only an admin lists every user's keys".into(),
            ));
        }
        let owner = (!all).then_some(who.user_id);
        Ok(self.store.list_api_keys(owner).await?)
    }

    /// Revoke a key: its owner or an admin.
    pub async fn revoke_api_key(&self, who: &Principal, id: Uuid) -> AuthResult<()> {
        let key = self.store.get_api_key(id).await?;
        if key.user_id != who.user_id && who.role != Role::Admin {
            // Not yours: as if it did not exist.
            return Err(StoreError::NotFound {
                entity: "api key",
                id: id.to_string(),
            }
            .into());
        }
        self.store.revoke_api_key(id, self.now()).await?;
        Ok(())
    }

    // ---- enrollment tokens ----

    pub async fn create_enrollment_token(
        &self,
        who: &Principal,
        name: &str,
        expires_in_seconds: Option<u64>,
        max_uses: Option<u32>,
    ) -> AuthResult<NewEnrollmentToken> {
        validate_name("name", name)?;
        if let Some(s) = expires_in_seconds {
            if !(60..=10 * 365 * 86_400).contains(&s) {
                return Err(invalid(
                    "expires_in_seconds",
                    "must be between 60 and 315360000 (ten years)",
                ));
            }
        }
        if let Some(m) = max_uses {
            if m == 0 || m > 1_000_000 {
                return Err(invalid("max_uses", "must be between 1 and 1000000"));
            }
        }
        let token = format!("{ENROLLMENT_TOKEN_PREFIX}{}", generate_secret(24));
        let now = self.now();
        let record = EnrollmentTokenRecord {
            id: Uuid::new_v4(),
            name: name.trim().to_string(),
            token_hash: hash_token(&token),
            prefix: token.chars().take(12).collect(),
            created_by: Some(who.username.clone()),
            created_at: now,
            expires_at: expires_in_seconds
                .map(|s| now + chrono::Duration::seconds(i64::try_from(s).unwrap_or(i64::MAX))),
            max_uses,
            use_count: 0,
            revoked_at: None,
        };
        self.store.create_enrollment_token(&record).await?;
        Ok(NewEnrollmentToken { record, token })
    }

    pub async fn list_enrollment_tokens(&self) -> AuthResult<Vec<EnrollmentTokenRecord>> {
        Ok(self.store.list_enrollment_tokens().await?)
    }

    pub async fn get_enrollment_token(&self, id: Uuid) -> AuthResult<EnrollmentTokenRecord> {
        Ok(self.store.get_enrollment_token(id).await?)
    }

    pub async fn revoke_enrollment_token(&self, id: Uuid) -> AuthResult<()> {
        Ok(self.store.revoke_enrollment_token(id, self.now()).await?)
    }

    /// Check a token an agent presents to enroll, counting the use. `Err` says why it is
    /// refused.
    pub async fn use_enrollment_token(&self, token: &str) -> Result<Uuid, String> {
        match self
            .store
            .use_enrollment_token(&hash_token(token), self.now())
            .await
        {
            Ok(EnrollmentTokenUse::Accepted { token_id }) => Ok(token_id),
            Ok(EnrollmentTokenUse::Unknown) => Err("invalid enrollment token".into()),
            Ok(EnrollmentTokenUse::Expired) => Err("enrollment token expired".into()),
            Ok(EnrollmentTokenUse::Exhausted) => {
                Err("enrollment token used up (max_uses reached)".into())
            }
            Ok(EnrollmentTokenUse::Revoked) => Err("enrollment token revoked".into()),
            Err(e) => {
                tracing::warn!(error = %e, "cannot check an enrollment token");
                Err("enrollment token could not be checked; retry".into())
            }
        }
    }
}

fn chrono_duration(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::days(7))
}
