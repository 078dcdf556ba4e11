//! Every route the API serves, with the access it needs, in one table. The router is built
//! from it ([`crate::app::router`]), the OpenAPI description takes each operation's security
//! from it, and the route × role matrix test enumerates it: a route cannot exist without
//! an access level, and a test that has no expectation for a route fails.
//!
//! Adding a route is one line: `route!(METHOD "/path", ACCESS, module::handler),` where
//! ACCESS is `PROBE`, `PUBLIC`, `ENROLL`, `AGENT`, `VIEWER`, `OPERATOR`, `OWNER` or `ADMIN`
//! (see [`Access`]); then add its expectation to `tests/authz.rs`.

use axum::extract::DefaultBodyLimit;
use axum::http::Method;
use axum::routing::{on, MethodFilter, MethodRouter};

use crate::app::AppState;
use crate::auth::{Access, Role};
use crate::routes::{
    agent, analysis, api_keys, auth as auth_routes, deployments, enrollment_tokens, experiments,
    ops, recommendations, tasks, templates, users,
};

/// One route: method, path (axum syntax), what it needs, and how to build its handler.
#[derive(Clone)]
pub struct RouteSpec {
    pub method: Method,
    pub path: &'static str,
    pub access: Access,
    pub handler: fn(&AppState) -> MethodRouter<AppState>,
}

impl std::fmt::Debug for RouteSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} ({:?})", self.method, self.path, self.access)
    }
}

const PROBE: Access = Access::Probe;
const PUBLIC: Access = Access::Public;
const ENROLL: Access = Access::Enroll;
const AGENT: Access = Access::Agent;
const VIEWER: Access = Access::Role(Role::Viewer);
const OPERATOR: Access = Access::Role(Role::Operator);
const OWNER: Access = Access::Owner;
const ADMIN: Access = Access::Role(Role::Admin);

macro_rules! route {
    ($method:ident $path:literal, $access:expr, $handler:expr) => {
        RouteSpec {
            method: Method::$method,
            path: $path,
            access: $access,
            handler: |_| on(MethodFilter::$method, $handler),
        }
    };
    // Agent batches: their own, larger body limit.
    ($method:ident $path:literal, $access:expr, $handler:expr, batch_body) => {
        RouteSpec {
            method: Method::$method,
            path: $path,
            access: $access,
            handler: |s| {
                on(MethodFilter::$method, $handler)
                    .layer(DefaultBodyLimit::max(s.config.agent_batch_body_limit_bytes))
            },
        }
    };
}

/// The routes, grouped as the API reference groups them.
pub static ROUTES: &[RouteSpec] = &[
    // experiments
    route!(POST "/api/v1/experiments", OPERATOR, experiments::create),
    route!(GET "/api/v1/experiments", VIEWER, experiments::list),
    route!(GET "/api/v1/experiments/{id}", VIEWER, experiments::get),
    route!(PATCH "/api/v1/experiments/{id}", OWNER, experiments::update),
    route!(DELETE "/api/v1/experiments/{id}", OWNER, experiments::delete),
    route!(POST "/api/v1/experiments/{id}/start", OWNER, experiments::start),
    route!(POST "/api/v1/experiments/{id}/stop", OWNER, experiments::stop),
    route!(POST "/api/v1/experiments/{id}/rollback", OWNER, experiments::rollback),
    route!(GET "/api/v1/experiments/{id}/events", VIEWER, experiments::events),
    route!(GET "/api/v1/experiments/{id}/kpis", VIEWER, analysis::kpis),
    route!(GET "/api/v1/experiments/{id}/results", VIEWER, analysis::results),
    route!(GET "/api/v1/experiments/{id}/analysis", VIEWER, analysis::analysis),
    route!(GET "/api/v1/experiments/{id}/cost-analysis", VIEWER, analysis::cost_analysis),
    // templates and deployments
    route!(GET "/api/v1/pipelines/templates", VIEWER, templates::list),
    route!(GET "/api/v1/pipelines/templates/{name}", VIEWER, templates::get),
    route!(PUT "/api/v1/pipelines/templates/{name}", OPERATOR, templates::put),
    route!(POST "/api/v1/pipelines/render", VIEWER, templates::render),
    route!(POST "/api/v1/pipelines/validate", VIEWER, templates::validate),
    route!(POST "/api/v1/pipeline-deployments", OPERATOR, deployments::create),
    route!(GET "/api/v1/pipeline-deployments", VIEWER, deployments::list),
    route!(GET "/api/v1/pipeline-deployments/{id}", VIEWER, deployments::get),
    route!(DELETE "/api/v1/pipeline-deployments/{id}", OPERATOR, deployments::withdraw),
    // usage and cost
    route!(POST "/api/v1/usage/queries", OPERATOR, analysis::upload_usage),
    route!(GET "/api/v1/usage/queries", VIEWER, analysis::usage),
    route!(GET "/api/v1/cost/presets", VIEWER, analysis::get_presets),
    route!(PUT "/api/v1/cost/presets", ADMIN, analysis::put_presets),
    // cardinality, cost flow and recommendations (from the agents' label statistics)
    route!(GET "/api/v1/metrics/cardinality", VIEWER, recommendations::cardinality),
    route!(GET "/api/v1/metrics/cost-flow", VIEWER, recommendations::cost_flow),
    route!(GET "/api/v1/cost-flow", VIEWER, recommendations::cost_flow_alias),
    route!(GET "/api/v1/recommendations", VIEWER, recommendations::list),
    route!(POST "/api/v1/recommendations/{id}/experiment", OPERATOR, recommendations::experiment),
    // the agent protocol
    route!(POST "/api/v1/agent/enroll", ENROLL, agent::enroll),
    route!(GET "/api/v1/agent/tasks", AGENT, agent::poll),
    route!(POST "/api/v1/agent/tasks/{id}/status", AGENT, agent::task_status),
    route!(POST "/api/v1/agent/heartbeat", AGENT, agent::heartbeat),
    route!(POST "/api/v1/agent/metrics", AGENT, agent::metrics, batch_body),
    route!(POST "/api/v1/agent/logs", AGENT, agent::logs, batch_body),
    // the task queue, the fleet, agents
    route!(POST "/api/v1/tasks", ADMIN, tasks::enqueue),
    route!(GET "/api/v1/tasks", ADMIN, tasks::list),
    route!(GET "/api/v1/tasks/{id}", ADMIN, tasks::get),
    route!(GET "/api/v1/fleet/status", VIEWER, ops::fleet_status),
    route!(POST "/api/v1/agents/{host_id}/revoke", ADMIN, enrollment_tokens::revoke_agent),
    // authentication, users, API keys, enrollment tokens
    route!(POST "/api/v1/auth/login", PUBLIC, auth_routes::login),
    route!(POST "/api/v1/auth/refresh", PUBLIC, auth_routes::refresh),
    route!(POST "/api/v1/auth/logout", VIEWER, auth_routes::logout),
    route!(GET "/api/v1/auth/me", VIEWER, auth_routes::me),
    route!(GET "/api/v1/users", ADMIN, users::list),
    route!(POST "/api/v1/users", ADMIN, users::create),
    route!(GET "/api/v1/users/{id}", ADMIN, users::get),
    route!(PATCH "/api/v1/users/{id}", ADMIN, users::update),
    route!(DELETE "/api/v1/users/{id}", ADMIN, users::delete),
    route!(POST "/api/v1/api-keys", VIEWER, api_keys::create),
    route!(GET "/api/v1/api-keys", VIEWER, api_keys::list),
    route!(DELETE "/api/v1/api-keys/{id}", VIEWER, api_keys::revoke),
    route!(POST "/api/v1/enrollment-tokens", ADMIN, enrollment_tokens::create),
    route!(GET "/api/v1/enrollment-tokens", ADMIN, enrollment_tokens::list),
    route!(GET "/api/v1/enrollment-tokens/{id}", ADMIN, enrollment_tokens::get),
    route!(DELETE "/api/v1/enrollment-tokens/{id}", ADMIN, enrollment_tokens::revoke),
    // real time: the hub checks the token itself (header, query or first message: see
    // `crate::ws::authenticate`); not rate-limited per address, since one dashboard host or
    // proxy may hold thousands of sockets
    route!(GET "/api/v1/ws", PROBE, crate::ws::upgrade),
    // operations
    route!(GET "/api/v1/openapi.json", PUBLIC, ops::openapi),
    route!(GET "/health", PROBE, ops::health),
    route!(GET "/ready", PROBE, ops::ready),
    route!(GET "/metrics", PROBE, ops::metrics),
];

/// The access a route needs, by method and path (as written in the table).
pub fn access_of(method: &Method, path: &str) -> Option<Access> {
    ROUTES
        .iter()
        .find(|r| r.method == *method && r.path == path)
        .map(|r| r.access)
}
