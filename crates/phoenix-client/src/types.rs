//! Responses the API builds for its own views (pages, transitions, fleet, KPIs, results,
//! cost). Field for field what `phoenix-api` serves; unknown fields are ignored so a newer
//! server does not break an older client.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use phoenix_core::analysis::KpiPoint;
use phoenix_core::cost::{CostComparison, PricingPreset, Usage};
use phoenix_core::{
    AgentHealth, AnalysisResult, Experiment, ExperimentEvent, ExperimentId, ExperimentPhase,
    HostId, ResourceUsage, TaskId,
};

/// A page of a list with the total across pages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListPage<T> {
    pub items: Vec<T>,
    pub total: u64,
    pub limit: u32,
    pub offset: u64,
}

/// The answer to start, stop and rollback.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransitionResponse {
    pub experiment: Experiment,
    pub event: ExperimentEvent,
    pub task_ids: Vec<TaskId>,
}

/// `GET /api/v1/experiments/{id}/kpis`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KpiReport {
    pub experiment_id: ExperimentId,
    pub interval_seconds: u64,
    pub baseline: Vec<KpiPoint>,
    pub candidate: Vec<KpiPoint>,
    pub summary: KpiSummary,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KpiSummary {
    pub intervals: usize,
    pub hosts: usize,
    pub batches: usize,
    pub baseline_output_series: Option<f64>,
    pub candidate_output_series: Option<f64>,
    pub input_series: Option<f64>,
    pub reduction_percent: Option<f64>,
    pub protected_coverage_percent: Option<f64>,
    pub anomaly_recall_percent: Option<f64>,
    pub max_total_error_percent: Option<f64>,
}

/// `GET /api/v1/experiments/{id}/results`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultsResponse {
    pub experiment_id: ExperimentId,
    pub phase: ExperimentPhase,
    pub promoted: Option<bool>,
    /// `stored` (the scheduler's latest analysis) or `live` (computed for the request).
    pub source: String,
    pub analysed_at: Option<DateTime<Utc>>,
    pub runner: Option<String>,
    pub analyses: usize,
    pub result: AnalysisResult,
}

/// `GET /api/v1/experiments/{id}/cost-analysis`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CostAnalysis {
    pub experiment_id: ExperimentId,
    pub before: Usage,
    pub after: Usage,
    pub selected: CostComparison,
    pub presets: Vec<CostComparison>,
    pub intervals: usize,
}

/// `GET` and `PUT /api/v1/cost/presets`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CostPresets {
    pub presets: Vec<PricingPreset>,
}

/// `GET /api/v1/fleet/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetStatus {
    pub total: usize,
    pub by_health: BTreeMap<String, usize>,
    pub versions: BTreeMap<String, usize>,
    pub task_queue: BTreeMap<String, u64>,
    pub agents: Vec<FleetAgent>,
}

/// One agent in the fleet view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetAgent {
    pub host_id: HostId,
    pub hostname: String,
    pub version: String,
    pub health: AgentHealth,
    pub last_seen_at: Option<DateTime<Utc>>,
    pub last_seen_seconds_ago: Option<f64>,
    pub running_tasks: u64,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub resource_usage: ResourceUsage,
    #[serde(default)]
    pub running_pipelines: Vec<serde_json::Value>,
}

/// `GET /health`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
    pub version: String,
}

/// `GET /ready`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ready {
    pub status: String,
    pub store: String,
}

/// `POST /api/v1/auth/login` and `/refresh`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LoginResponse {
    pub access_token: String,
    pub token_type: String,
    pub expires_in: u64,
    pub refresh_token: String,
    pub refresh_expires_in: u64,
    pub user: UserInfo,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UserInfo {
    pub id: String,
    pub username: String,
    pub role: String,
    #[serde(default)]
    pub disabled: bool,
}

/// `GET /api/v1/auth/me`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Me {
    pub id: String,
    pub username: String,
    pub role: String,
    pub authenticated_by: String,
}
