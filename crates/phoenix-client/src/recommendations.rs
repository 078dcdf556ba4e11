//! Cardinality, cost flow and recommendations (`/api/v1/metrics/*`, `/api/v1/recommendations`).
//! Answers are returned as JSON values: the CLI prints them as tables, JSON or YAML.

use reqwest::Method;

use crate::{seg, Client, ClientResult};

/// Filters of `GET /api/v1/metrics/cardinality` and `/cost-flow`; unset fields are omitted.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct BreakdownQuery {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// Cost flow only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    /// Cost flow only: price this experiment's candidate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub experiment_id: Option<String>,
}

impl Client {
    /// `GET /api/v1/metrics/cardinality`.
    pub async fn cardinality(&self, q: &BreakdownQuery) -> ClientResult<serde_json::Value> {
        let path = "/api/v1/metrics/cardinality";
        self.json(self.request(Method::GET, path).query(q), path)
            .await
    }

    /// `GET /api/v1/metrics/cost-flow`.
    pub async fn cost_flow(&self, q: &BreakdownQuery) -> ClientResult<serde_json::Value> {
        let path = "/api/v1/metrics/cost-flow";
        self.json(self.request(Method::GET, path).query(q), path)
            .await
    }

    /// `GET /api/v1/recommendations`.
    pub async fn recommendations(
        &self,
        metric: Option<&str>,
        preset: Option<&str>,
        limit: Option<u32>,
    ) -> ClientResult<serde_json::Value> {
        let path = "/api/v1/recommendations";
        let mut rb = self.request(Method::GET, path);
        if let Some(m) = metric {
            rb = rb.query(&[("metric", m)]);
        }
        if let Some(p) = preset {
            rb = rb.query(&[("preset", p)]);
        }
        if let Some(l) = limit {
            rb = rb.query(&[("limit", l)]);
        }
        self.json(rb, path).await
    }

    /// `POST /api/v1/recommendations/{id}/experiment`: creates (does not start) the
    /// experiment testing it.
    pub async fn recommendation_experiment(
        &self,
        id: &str,
        body: &serde_json::Value,
    ) -> ClientResult<serde_json::Value> {
        let path = format!("/api/v1/recommendations/{}/experiment", seg(id));
        self.json(self.request(Method::POST, &path).json(body), &path)
            .await
    }
}
