//! Who is calling and what they may do: users with argon2id passwords, JWT access tokens
//! (HS256, 15 minutes) with rotating refresh tokens, API keys, roles and experiment
//! ownership, enrollment tokens, and per-client rate limits. The route table
//! ([`crate::route_table`]) names the access each route needs; [`guard`] enforces it.

mod guard;
mod ratelimit;
mod service;

pub use guard::{guard, require_owner, Principal, Via};
pub use ratelimit::{Bucket, RateLimiter, RateLimits};
pub use service::{
    generate_secret, hash_token, validate_password, validate_username, AuthError, AuthService,
    AuthSettings, Bootstrap, IssuedTokens, JwtClaims, NewApiKey, NewEnrollmentToken, UserView,
    ACCESS_TOKEN_TTL, API_KEY_PREFIX, ENROLLMENT_TOKEN_PREFIX,
};

pub use phoenix_store::Role;

/// What a route requires of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// Anyone, never rate-limited: health, readiness and metrics probes.
    Probe,
    /// Anyone, rate-limited per client address: login, refresh, the OpenAPI description.
    Public,
    /// Anyone with an enrollment token in the body (checked by the handler).
    Enroll,
    /// An enrolled agent (`X-Agent-Host-ID` and its secret), checked by the handler's
    /// extractor; user tokens are refused. Rate-limited per host on the agents' own bucket.
    Agent,
    /// A user token or API key with at least this role.
    Role(Role),
    /// An operator who owns the experiment named in the path, or an admin (the handler
    /// checks the ownership; the guard checks the operator role).
    Owner,
}

impl Access {
    pub const VIEWER: Access = Access::Role(Role::Viewer);
    pub const OPERATOR: Access = Access::Role(Role::Operator);
    pub const ADMIN: Access = Access::Role(Role::Admin);

    /// The role a user credential needs, if the route takes user credentials.
    pub fn min_role(self) -> Option<Role> {
        match self {
            Access::Role(r) => Some(r),
            Access::Owner => Some(Role::Operator),
            _ => None,
        }
    }

    /// For the OpenAPI description and the docs.
    pub fn describe(self) -> &'static str {
        match self {
            Access::Probe | Access::Public => "public",
            Access::Enroll => "public (enrollment token in the body)",
            Access::Agent => "agent credentials",
            Access::Role(Role::Viewer) => "role viewer or above",
            Access::Role(Role::Operator) => "role operator or above",
            Access::Role(Role::Admin) => "role admin",
            Access::Owner => "the experiment's owner (operator) or an admin",
        }
    }
}
