//! The OpenAPI description, generated from the handlers' annotations and the domain types.

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::routes::{
    agent, analysis, deployments, experiments, ops, recommendations, tasks, templates,
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
    ),
    modifiers(&AgentAuth),
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
