//! Tasks: the unit of work the control plane hands an agent. The queue itself lives in the
//! store; the rules of who may move a task where live here.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::experiment::FieldErrors;
use crate::ids::{ExperimentId, HostId, TaskId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskType {
    /// Validate and hot-swap a pipeline configuration.
    Deployment,
    /// Start or stop a load-simulator profile.
    Loadsim,
    /// Which KPIs to report, and how often.
    Metrics,
    /// Start, stop, promote or roll back an A/B experiment on the host.
    Experiment,
    /// Report health now.
    Health,
}

impl TaskType {
    pub const ALL: [TaskType; 5] = [
        Self::Deployment,
        Self::Loadsim,
        Self::Metrics,
        Self::Experiment,
        Self::Health,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deployment => "deployment",
            Self::Loadsim => "loadsim",
            Self::Metrics => "metrics",
            Self::Experiment => "experiment",
            Self::Health => "health",
        }
    }
}

impl fmt::Display for TaskType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TaskType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| format!("unknown task type `{s}`"))
    }
}

/// `pending → assigned → running → completed | failed`. An assigned or running task whose lease
/// lapses goes back to `pending` (or to `failed` once it has used its attempts).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    Pending,
    Assigned,
    Running,
    Completed,
    Failed,
}

impl TaskStatus {
    pub const ALL: [TaskStatus; 5] = [
        Self::Pending,
        Self::Assigned,
        Self::Running,
        Self::Completed,
        Self::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Assigned => "assigned",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed)
    }

    /// Whether the agent holding a task in `self` may report `to`. Reporting `running` again
    /// is allowed (progress); reporting the same terminal status again is handled by the store
    /// as an idempotent replay, not here.
    pub fn agent_may_move_to(self, to: TaskStatus) -> bool {
        matches!(
            (self, to),
            (
                Self::Assigned,
                Self::Running | Self::Completed | Self::Failed
            ) | (
                Self::Running,
                Self::Running | Self::Completed | Self::Failed
            )
        )
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TaskStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown task status `{s}`, expected one of {}",
                    Self::ALL.map(|p| p.as_str()).join(", ")
                )
            })
    }
}

fn default_max_attempts() -> u32 {
    3
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

/// A request to queue a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTask {
    #[serde(rename = "type")]
    pub task_type: TaskType,
    #[serde(default = "empty_object")]
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
    /// Higher runs first.
    #[serde(default)]
    pub priority: i32,
    /// The host that must run it; `None` lets any agent claim it.
    #[serde(default)]
    pub host_id: Option<HostId>,
    #[serde(default)]
    pub experiment_id: Option<ExperimentId>,
    /// Not claimable before this time.
    #[serde(default)]
    pub not_before: Option<DateTime<Utc>>,
    /// A repeated key returns the task already queued under it instead of a new one.
    #[serde(default)]
    pub idempotency_key: Option<String>,
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
}

pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 200;
pub const MAX_ATTEMPTS_LIMIT: u32 = 100;

impl NewTask {
    pub fn new(task_type: TaskType, payload: serde_json::Value) -> Self {
        Self {
            task_type,
            payload,
            priority: 0,
            host_id: None,
            experiment_id: None,
            not_before: None,
            idempotency_key: None,
            max_attempts: default_max_attempts(),
        }
    }

    pub fn for_host(mut self, host: HostId) -> Self {
        self.host_id = Some(host);
        self
    }

    pub fn validate(&self) -> Result<(), FieldErrors> {
        let mut e = FieldErrors::default();
        if !self.payload.is_object() {
            e.push("payload", "must be a JSON object");
        }
        if self.max_attempts == 0 || self.max_attempts > MAX_ATTEMPTS_LIMIT {
            e.push(
                "max_attempts",
                format!("must be between 1 and {MAX_ATTEMPTS_LIMIT}"),
            );
        }
        if let Some(k) = &self.idempotency_key {
            if k.is_empty() || k.len() > MAX_IDEMPOTENCY_KEY_LEN {
                e.push(
                    "idempotency_key",
                    format!("must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} bytes"),
                );
            }
        }
        e.into_result()
    }
}

/// A queued task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Task {
    pub id: TaskId,
    #[serde(rename = "type")]
    pub task_type: TaskType,
    pub status: TaskStatus,
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
    pub priority: i32,
    pub host_id: Option<HostId>,
    pub experiment_id: Option<ExperimentId>,
    /// The host that holds the current claim.
    pub assigned_to: Option<HostId>,
    /// Claims so far, the current one included.
    pub attempts: u32,
    pub max_attempts: u32,
    pub not_before: Option<DateTime<Utc>>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub idempotency_key: Option<String>,
    pub error: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub assigned_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_documented_agent_moves_are_allowed() {
        use TaskStatus as S;
        assert!(S::Assigned.agent_may_move_to(S::Running));
        assert!(S::Running.agent_may_move_to(S::Completed));
        assert!(S::Running.agent_may_move_to(S::Running));
        assert!(!S::Pending.agent_may_move_to(S::Running));
        assert!(!S::Completed.agent_may_move_to(S::Failed));
        assert!(!S::Assigned.agent_may_move_to(S::Pending));
    }

    #[test]
    fn new_task_defaults_and_validation() {
        let t: NewTask = serde_json::from_str(r#"{"type":"health"}"#).unwrap();
        assert_eq!(t.max_attempts, 3);
        assert!(t.validate().is_ok());
        let bad: NewTask =
            serde_json::from_str(r#"{"type":"health","payload":[1],"max_attempts":0}"#).unwrap();
        let fields: Vec<_> = bad
            .validate()
            .unwrap_err()
            .0
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(fields, ["payload", "max_attempts"]);
        assert!(serde_json::from_str::<NewTask>(r#"{"type":"reboot"}"#).is_err());
    }
}
