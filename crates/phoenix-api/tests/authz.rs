//! The route × role matrix: every route the router serves (it is built from
//! `phoenix_api::route_table::ROUTES`) has an expectation here, and each is called with no
//! credentials, as a viewer, as an operator who owns the experiment and one who does not,
//! as an admin, with API keys (an operator's, and an admin's scoped down to viewer) and with
//! agent credentials. A route added without an expectation fails
//! `every_route_has_an_expectation`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;

use std::collections::BTreeSet;

use common::*;
use phoenix_api::auth::{Access, Role};
use phoenix_api::route_table::ROUTES;
use reqwest::{Client, Method};
use serde_json::{json, Value};

/// What each route must require: (method, path, access). Keep in the table's order.
const EXPECTED: &[(&str, &str, &str)] = &[
    ("POST", "/api/v1/experiments", "operator"),
    ("GET", "/api/v1/experiments", "viewer"),
    ("GET", "/api/v1/experiments/{id}", "viewer"),
    ("PATCH", "/api/v1/experiments/{id}", "owner"),
    ("DELETE", "/api/v1/experiments/{id}", "owner"),
    ("POST", "/api/v1/experiments/{id}/start", "owner"),
    ("POST", "/api/v1/experiments/{id}/stop", "owner"),
    ("POST", "/api/v1/experiments/{id}/rollback", "owner"),
    ("GET", "/api/v1/experiments/{id}/events", "viewer"),
    ("GET", "/api/v1/experiments/{id}/kpis", "viewer"),
    ("GET", "/api/v1/experiments/{id}/results", "viewer"),
    ("GET", "/api/v1/experiments/{id}/analysis", "viewer"),
    ("GET", "/api/v1/experiments/{id}/cost-analysis", "viewer"),
    ("GET", "/api/v1/pipelines/templates", "viewer"),
    ("GET", "/api/v1/pipelines/templates/{name}", "viewer"),
    ("PUT", "/api/v1/pipelines/templates/{name}", "operator"),
    ("POST", "/api/v1/pipelines/render", "viewer"),
    ("POST", "/api/v1/pipelines/validate", "viewer"),
    ("POST", "/api/v1/pipeline-deployments", "operator"),
    ("GET", "/api/v1/pipeline-deployments", "viewer"),
    ("GET", "/api/v1/pipeline-deployments/{id}", "viewer"),
    ("DELETE", "/api/v1/pipeline-deployments/{id}", "operator"),
    ("POST", "/api/v1/usage/queries", "operator"),
    ("GET", "/api/v1/usage/queries", "viewer"),
    ("GET", "/api/v1/cost/presets", "viewer"),
    ("PUT", "/api/v1/cost/presets", "admin"),
    ("GET", "/api/v1/metrics/cardinality", "viewer"),
    ("GET", "/api/v1/metrics/cost-flow", "viewer"),
    ("GET", "/api/v1/cost-flow", "viewer"),
    ("GET", "/api/v1/recommendations", "viewer"),
    (
        "POST",
        "/api/v1/recommendations/{id}/experiment",
        "operator",
    ),
    ("POST", "/api/v1/agent/enroll", "enroll"),
    ("GET", "/api/v1/agent/tasks", "agent"),
    ("POST", "/api/v1/agent/tasks/{id}/status", "agent"),
    ("POST", "/api/v1/agent/heartbeat", "agent"),
    ("POST", "/api/v1/agent/metrics", "agent"),
    ("POST", "/api/v1/agent/logs", "agent"),
    ("POST", "/api/v1/tasks", "admin"),
    ("GET", "/api/v1/tasks", "admin"),
    ("GET", "/api/v1/tasks/{id}", "admin"),
    ("GET", "/api/v1/fleet/status", "viewer"),
    ("POST", "/api/v1/agents/{host_id}/revoke", "admin"),
    ("POST", "/api/v1/auth/login", "public"),
    ("POST", "/api/v1/auth/refresh", "public"),
    ("POST", "/api/v1/auth/logout", "viewer"),
    ("GET", "/api/v1/auth/me", "viewer"),
    ("GET", "/api/v1/users", "admin"),
    ("POST", "/api/v1/users", "admin"),
    ("GET", "/api/v1/users/{id}", "admin"),
    ("PATCH", "/api/v1/users/{id}", "admin"),
    ("DELETE", "/api/v1/users/{id}", "admin"),
    ("POST", "/api/v1/api-keys", "viewer"),
    ("GET", "/api/v1/api-keys", "viewer"),
    ("DELETE", "/api/v1/api-keys/{id}", "viewer"),
    ("POST", "/api/v1/enrollment-tokens", "admin"),
    ("GET", "/api/v1/enrollment-tokens", "admin"),
    ("GET", "/api/v1/enrollment-tokens/{id}", "admin"),
    ("DELETE", "/api/v1/enrollment-tokens/{id}", "admin"),
    ("GET", "/api/v1/ws", "probe"),
    ("GET", "/api/v1/openapi.json", "public"),
    ("GET", "/health", "probe"),
    ("GET", "/ready", "probe"),
    ("GET", "/metrics", "probe"),
];

fn label(access: Access) -> &'static str {
    match access {
        Access::Probe => "probe",
        Access::Public => "public",
        Access::Enroll => "enroll",
        Access::Agent => "agent",
        Access::Role(Role::Viewer) => "viewer",
        Access::Role(Role::Operator) => "operator",
        Access::Role(Role::Admin) => "admin",
        Access::Owner => "owner",
    }
}

#[test]
fn every_route_has_an_expectation() {
    let routes: BTreeSet<(String, String, &str)> = ROUTES
        .iter()
        .map(|r| (r.method.to_string(), r.path.to_string(), label(r.access)))
        .collect();
    let expected: BTreeSet<(String, String, &str)> = EXPECTED
        .iter()
        .map(|(m, p, a)| (m.to_string(), p.to_string(), *a))
        .collect();
    let missing: Vec<_> = routes.difference(&expected).collect();
    let stale: Vec<_> = expected.difference(&routes).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "routes without (or with another) expectation: {missing:?}; expectations without a route: {stale:?}"
    );
    assert_eq!(routes.len(), ROUTES.len(), "a route appears twice");
}

on_both_backends!(route_role_matrix);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cred {
    Anonymous,
    Viewer,
    OperatorOwner,
    OperatorOther,
    Admin,
    /// An API key of the owning operator, with role operator.
    KeyOperatorOwner,
    /// An admin's API key scoped down to viewer.
    KeyViewerOfAdmin,
    Agent,
}

const CREDS: [Cred; 8] = [
    Cred::Anonymous,
    Cred::Viewer,
    Cred::OperatorOwner,
    Cred::OperatorOther,
    Cred::Admin,
    Cred::KeyOperatorOwner,
    Cred::KeyViewerOfAdmin,
    Cred::Agent,
];

#[derive(Debug, PartialEq, Eq)]
enum Expect {
    Allowed,
    Unauthorized,
    Forbidden,
}

fn role_of(c: Cred) -> Option<Role> {
    match c {
        Cred::Anonymous | Cred::Agent => None,
        Cred::Viewer | Cred::KeyViewerOfAdmin => Some(Role::Viewer),
        Cred::OperatorOwner | Cred::OperatorOther | Cred::KeyOperatorOwner => Some(Role::Operator),
        Cred::Admin => Some(Role::Admin),
    }
}

fn expect(access: Access, c: Cred) -> Expect {
    match access {
        Access::Probe | Access::Public | Access::Enroll => Expect::Allowed,
        Access::Agent if c == Cred::Agent => Expect::Allowed,
        Access::Agent => Expect::Unauthorized,
        Access::Role(needed) => match role_of(c) {
            None => Expect::Unauthorized,
            Some(r) if r >= needed => Expect::Allowed,
            Some(_) => Expect::Forbidden,
        },
        Access::Owner => match c {
            Cred::Anonymous | Cred::Agent => Expect::Unauthorized,
            Cred::OperatorOwner | Cred::KeyOperatorOwner | Cred::Admin => Expect::Allowed,
            _ => Expect::Forbidden,
        },
    }
}

struct Callers {
    viewer: Client,
    owner: Client,
    other: Client,
    owner_key: Client,
    admin_viewer_key: Client,
    agent_host: String,
    agent_secret: String,
}

async fn create_key(client: &Client, s: &TestServer, role: &str) -> Client {
    let res = client
        .post(s.url("/api/v1/api-keys"))
        .json(&json!({ "name": format!("matrix {role}"), "role": role }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let body: Value = res.json().await.unwrap();
    bearer_client(body["key"].as_str().unwrap())
}

impl Callers {
    fn request(
        &self,
        s: &TestServer,
        c: Cred,
        method: Method,
        url: &str,
    ) -> reqwest::RequestBuilder {
        let client = match c {
            Cred::Anonymous | Cred::Agent => &s.anon,
            Cred::Viewer => &self.viewer,
            Cred::OperatorOwner => &self.owner,
            Cred::OperatorOther => &self.other,
            Cred::Admin => &s.client,
            Cred::KeyOperatorOwner => &self.owner_key,
            Cred::KeyViewerOfAdmin => &self.admin_viewer_key,
        };
        let req = client.request(method, url);
        if c == Cred::Agent {
            req.header("x-agent-host-id", &self.agent_host)
                .bearer_auth(&self.agent_secret)
        } else {
            req
        }
    }
}

/// A fresh pending experiment owned by `matrix-owner`, targeting the matrix agent.
async fn owned_experiment(owner: &Client, s: &TestServer) -> String {
    let res = owner
        .post(s.url("/api/v1/experiments"))
        .json(&json!({
            "name": "matrix",
            "baseline_pipeline": "baseline",
            "candidate_pipeline": "adaptive",
            "target_hosts": ["matrix-agent"],
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["owner"], "matrix-owner");
    body["id"].as_str().unwrap().to_string()
}

async fn route_role_matrix(s: &TestServer) {
    let secret = s.enroll("matrix-agent").await;
    let viewer = s.user_client("matrix-viewer", "viewer").await;
    let owner = s.user_client("matrix-owner", "operator").await;
    let other = s.user_client("matrix-other", "operator").await;
    let owner_key = create_key(&owner, s, "operator").await;
    let admin_viewer_key = create_key(&s.client, s, "viewer").await;
    let callers = Callers {
        viewer,
        owner,
        other,
        owner_key,
        admin_viewer_key,
        agent_host: "matrix-agent".into(),
        agent_secret: secret,
    };
    let shared = owned_experiment(&callers.owner, s).await;
    let unknown = uuid::Uuid::new_v4().to_string();

    // Logging out ends the caller's session: those rows go last.
    let mut routes: Vec<_> = ROUTES.iter().collect();
    routes.sort_by_key(|r| r.path == "/api/v1/auth/logout");
    let mut failures = Vec::new();
    for route in routes {
        for c in CREDS {
            let (path, body) = if route.access == Access::Owner {
                // Each call gets its own experiment: deleting or starting changes it.
                let id = owned_experiment(&callers.owner, s).await;
                let body = (route.method == Method::PATCH)
                    .then(|| json!({ "description": "changed by the matrix" }));
                (route.path.replace("{id}", &id), body)
            } else {
                let id = if route.path.starts_with("/api/v1/experiments/") {
                    shared.as_str()
                } else {
                    unknown.as_str()
                };
                let path = route
                    .path
                    .replace("{id}", id)
                    .replace("{name}", "baseline")
                    .replace("{host_id}", "no-such-host");
                (path, None)
            };
            // A long-poll must not wait for the matrix.
            let url = if route.path == "/api/v1/agent/tasks" {
                s.url(&format!("{path}?wait=0"))
            } else {
                s.url(&path)
            };
            let mut req = callers.request(s, c, route.method.clone(), &url);
            if let Some(b) = body {
                req = req.json(&b);
            }
            let res = req.send().await.unwrap();
            let status = res.status().as_u16();
            let want = expect(route.access, c);
            let ok = match want {
                Expect::Allowed => status != 401 && status != 403 && status < 500,
                Expect::Unauthorized => status == 401,
                Expect::Forbidden => status == 403,
            };
            if !ok {
                failures.push(format!(
                    "{} {} as {c:?}: expected {want:?}, got {status}",
                    route.method, route.path
                ));
            } else if want != Expect::Allowed {
                let body: Value = res.json().await.unwrap();
                assert!(body["error"]["code"].is_string(), "{body}");
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Unknown routes are 404 for everyone, not 401: nothing to protect there.
    let res = s
        .anon
        .get(s.url("/api/v1/nothing-here"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
}
