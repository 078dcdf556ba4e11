//! The OpenAPI description, generated from the handlers' annotations and the domain types.

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::routes::{
    agent, analysis, api_keys, auth, deployments, enrollment_tokens, experiments, ops,
    recommendations, tasks, templates, users,
};

#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "Phoenix API",
        description = "Control plane of Phoenix: experiments, the agent task queue and protocol, fleet and metrics. Every error is `{ \"error\": { \"code\", \"message\", \"details\" } }`.",
    ),
    paths(
        experiments::create, experiments::list, experiments::get, experiments::update,
        experiments::delete, experiments::start, experiments::stop, experiments::rollback,
        experiments::events,
        analysis::kpis, analysis::results, analysis::analysis, analysis::cost_analysis,
        analysis::get_presets, analysis::put_presets, analysis::upload_usage, analysis::usage,
        templates::list, templates::get, templates::put, templates::render, templates::validate,
        deployments::create, deployments::list, deployments::get, deployments::withdraw,
        agent::enroll, agent::poll, agent::task_status, agent::heartbeat, agent::metrics,
        agent::logs,
        tasks::enqueue, tasks::list, tasks::get,
        ops::health, ops::ready, ops::metrics, ops::fleet_status, ops::openapi,
        crate::ws::upgrade,
        recommendations::cardinality, recommendations::cost_flow,
        recommendations::cost_flow_alias, recommendations::list, recommendations::experiment,
        auth::login, auth::refresh, auth::logout, auth::me,
        users::list, users::create, users::get, users::update, users::delete,
        api_keys::create, api_keys::list, api_keys::revoke,
        enrollment_tokens::create, enrollment_tokens::list, enrollment_tokens::get,
        enrollment_tokens::revoke, enrollment_tokens::revoke_agent,
    ),
    modifiers(&AgentAuth, &RouteSecurity),
    tags(
        (name = "experiments", description = "A/B experiments and their lifecycle"),
        (name = "agent", description = "What agents call; authenticated with X-Agent-Host-ID and a bearer secret"),
        (name = "tasks", description = "The task queue"),
        (name = "pipelines", description = "Pipelines deployed outside experiments"),
        (name = "usage", description = "The PromQL your alerts, recording rules and dashboards run: the labels a candidate must keep"),
        (name = "cost", description = "Pricing presets and what experiments save"),
        (name = "fleet", description = "Agents as the control plane sees them"),
        (name = "recommendations", description = "Cardinality by namespace, service, metric and label from the agents' label statistics; the cost flow; aggregations and drops to try"),
        (name = "ops", description = "Health, readiness, metrics"),
        (name = "realtime", description = "The WebSocket hub: subscribe to topics, receive numbered events (docs/websocket.md)"),
        (name = "auth", description = "Log in, refresh, log out; API keys. See docs/security.md"),
        (name = "users", description = "Users and their roles (admins)"),
    )
)]
pub struct ApiDoc;

#[derive(Debug)]
struct AgentAuth;

impl Modify for AgentAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "agent",
            SecurityScheme::Http(
                Http::builder()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The secret returned by /api/v1/agent/enroll, with the X-Agent-Host-ID header",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "token",
            SecurityScheme::Http(
                Http::builder()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The WebSocket token (`ws_token`, else the enrollment token) as a bearer header, `?access_token=`, or a first `auth` message",
                    ))
                    .build(),
            ),
        );
    }
}

/// Each operation's security and required role, from the route table (the one place access
/// is declared): `bearer` (an access token or an API key) with the role named in the
/// description, `agent` for the agent protocol, none for public routes.
#[derive(Debug)]
struct RouteSecurity;

impl Modify for RouteSecurity {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use crate::auth::Access;
        use utoipa::openapi::security::SecurityRequirement;
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                Http::builder()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "An access token from POST /api/v1/auth/login (15 minutes; refresh at /api/v1/auth/refresh), or an API key (`phx_...`)",
                    ))
                    .build(),
            ),
        );
        for spec in crate::route_table::ROUTES {
            let Some(item) = openapi.paths.paths.get_mut(spec.path) else {
                continue;
            };
            let op = match spec.method.as_str() {
                "GET" => item.get.as_mut(),
                "POST" => item.post.as_mut(),
                "PUT" => item.put.as_mut(),
                "PATCH" => item.patch.as_mut(),
                "DELETE" => item.delete.as_mut(),
                _ => None,
            };
            let Some(op) = op else { continue };
            let requirement = match spec.access {
                Access::Agent => Some(SecurityRequirement::new("agent", Vec::<String>::new())),
                Access::Role(_) | Access::Owner => {
                    Some(SecurityRequirement::new("bearer", Vec::<String>::new()))
                }
                Access::Probe | Access::Public | Access::Enroll => None,
            };
            op.security = Some(requirement.into_iter().collect());
            let note = format!("Access: {}.", spec.access.describe());
            op.description = Some(match op.description.take() {
                Some(d) if !d.is_empty() => format!("{d}\n\n{note}"),
                _ => note,
            });
        }
    }
}
