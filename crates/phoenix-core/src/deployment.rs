//! Pipeline deployments: a pipeline (a template with parameters, or a literal) made the live
//! pipeline of a set of hosts outside any experiment, with each host's progress.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::experiment::{
    validate_selector, validate_targets, FieldErrors, MAX_NAME_LEN, MAX_PIPELINE_LEN,
};
use crate::ids::{DeploymentId, HostId, TaskId};

/// A request to deploy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewPipelineDeployment {
    pub name: String,
    /// Template name (rendered with `parameters`) or a literal pipeline YAML.
    pub pipeline: String,
    #[serde(default = "empty_object")]
    #[schema(value_type = Object)]
    pub parameters: serde_json::Value,
    #[serde(default)]
    pub target_hosts: Vec<HostId>,
    /// Agents whose labels hold every pair join the targets.
    #[serde(default)]
    pub target_selector: BTreeMap<String, String>,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

impl NewPipelineDeployment {
    pub fn validate(&self) -> Result<(), FieldErrors> {
        let mut e = FieldErrors::default();
        if self.name.trim().is_empty() {
            e.push("name", "must not be empty");
        } else if self.name.chars().count() > MAX_NAME_LEN {
            e.push("name", format!("must be at most {MAX_NAME_LEN} characters"));
        }
        if self.pipeline.trim().is_empty() {
            e.push("pipeline", "must not be empty");
        } else if self.pipeline.len() > MAX_PIPELINE_LEN {
            e.push(
                "pipeline",
                format!("must be at most {MAX_PIPELINE_LEN} bytes"),
            );
        }
        if !self.parameters.is_object() {
            e.push("parameters", "must be a JSON object");
        }
        validate_targets(&self.target_hosts, &mut e);
        if self.target_hosts.is_empty() && self.target_selector.is_empty() {
            e.push(
                "target_hosts",
                "give at least one host, or a target_selector",
            );
        }
        validate_selector(&self.target_selector, &mut e);
        e.into_result()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentStatus {
    /// Sent to its hosts (see each host's task for where it is).
    Active,
    /// Withdrawn: its hosts were sent the `baseline` pipeline back.
    Withdrawn,
}

/// A deployment as stored and served.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PipelineDeployment {
    pub id: DeploymentId,
    pub name: String,
    pub pipeline: String,
    #[schema(value_type = Object)]
    pub parameters: serde_json::Value,
    pub target_hosts: Vec<HostId>,
    pub target_selector: BTreeMap<String, String>,
    pub status: DeploymentStatus,
    /// The `deployment` task sent to each host.
    pub tasks: BTreeMap<HostId, TaskId>,
    /// The tasks that took the pipeline back off, once withdrawn.
    #[serde(default)]
    pub withdraw_tasks: BTreeMap<HostId, TaskId>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}
