//! Agents as the control plane sees them: identity, what they last reported, and health
//! derived from when they were last heard from.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::experiment::FieldErrors;
use crate::ids::HostId;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ResourceUsage {
    /// CPU used by the agent process, in percent of one core.
    #[serde(default)]
    pub cpu_percent: f64,
    #[serde(default)]
    pub memory_bytes: u64,
    /// Bytes waiting in the agent's on-disk buffers.
    #[serde(default)]
    pub buffer_bytes: u64,
}

/// What an agent reports on every heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub hostname: String,
    #[serde(default)]
    pub capabilities: Vec<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub resource_usage: ResourceUsage,
    /// Pipelines and variants running on the host, as the agent describes them.
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    pub running_pipelines: Vec<serde_json::Value>,
    /// The tasks the agent holds: received and not yet reported finished. When given, a
    /// task the API assigned to this host more than [`HELD_TASKS_GRACE_SECONDS`] ago that
    /// is not listed goes back to the queue: its long-poll answer never reached the agent
    /// (it died while the answer was in flight), so no one would run or report it, and its
    /// lease would be renewed by every heartbeat. Omitted: every lease the host holds is
    /// renewed, nothing is released.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<String>>)]
    pub held_tasks: Option<Vec<crate::TaskId>>,
}

/// How long after its claim a task must be missing from an agent's `held_tasks` before it
/// is put back in the queue: long enough for any long-poll answer still in flight.
pub const HELD_TASKS_GRACE_SECONDS: i64 = 30;
/// Most entries in `held_tasks`.
pub const MAX_HELD_TASKS: usize = 10_000;

pub const MAX_LABELS: usize = 64;
pub const MAX_CAPABILITIES: usize = 64;
pub const MAX_RUNNING_PIPELINES: usize = 256;

impl Heartbeat {
    pub fn validate(&self) -> Result<(), FieldErrors> {
        let mut e = FieldErrors::default();
        if self.version.len() > 64 {
            e.push("version", "must be at most 64 bytes");
        }
        if self.hostname.len() > 253 {
            e.push("hostname", "must be at most 253 bytes");
        }
        if self.capabilities.len() > MAX_CAPABILITIES {
            e.push(
                "capabilities",
                format!("must list at most {MAX_CAPABILITIES}"),
            );
        }
        if self.labels.len() > MAX_LABELS {
            e.push("labels", format!("must hold at most {MAX_LABELS} labels"));
        }
        if self.running_pipelines.len() > MAX_RUNNING_PIPELINES {
            e.push(
                "running_pipelines",
                format!("must list at most {MAX_RUNNING_PIPELINES}"),
            );
        }
        if self
            .held_tasks
            .as_ref()
            .is_some_and(|t| t.len() > MAX_HELD_TASKS)
        {
            e.push("held_tasks", format!("must list at most {MAX_HELD_TASKS}"));
        }
        if !self.resource_usage.cpu_percent.is_finite() || self.resource_usage.cpu_percent < 0.0 {
            e.push("resource_usage.cpu_percent", "must be a finite number >= 0");
        }
        e.into_result()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AgentHealth {
    /// Heard from within three heartbeat intervals.
    Healthy,
    /// Late, but not yet considered gone.
    Stale,
    /// Silent for longer than the offline threshold (5 minutes by default).
    Offline,
    /// Enrolled but never sent a heartbeat.
    Unknown,
    /// Its credentials were revoked.
    Revoked,
}

impl AgentHealth {
    pub fn classify(
        now: DateTime<Utc>,
        last_seen: Option<DateTime<Utc>>,
        heartbeat_interval: chrono::Duration,
        offline_after: chrono::Duration,
    ) -> Self {
        match last_seen {
            None => Self::Unknown,
            Some(seen) => {
                let silent = now - seen;
                if silent <= heartbeat_interval * 3 {
                    Self::Healthy
                } else if silent <= offline_after {
                    Self::Stale
                } else {
                    Self::Offline
                }
            }
        }
    }
}

/// An enrolled agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Agent {
    pub host_id: HostId,
    pub hostname: String,
    pub version: String,
    pub capabilities: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub resource_usage: ResourceUsage,
    #[schema(value_type = Vec<Object>)]
    pub running_pipelines: Vec<serde_json::Value>,
    pub enrolled_at: DateTime<Utc>,
    pub last_seen_at: Option<DateTime<Utc>>,
    pub revoked: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    #[test]
    fn health_follows_silence() {
        let now = Utc::now();
        let hb = Duration::seconds(10);
        let off = Duration::seconds(300);
        assert_eq!(
            AgentHealth::classify(now, None, hb, off),
            AgentHealth::Unknown
        );
        assert_eq!(
            AgentHealth::classify(now, Some(now - Duration::seconds(29)), hb, off),
            AgentHealth::Healthy
        );
        assert_eq!(
            AgentHealth::classify(now, Some(now - Duration::seconds(31)), hb, off),
            AgentHealth::Stale
        );
        assert_eq!(
            AgentHealth::classify(now, Some(now - Duration::seconds(301)), hb, off),
            AgentHealth::Offline
        );
    }
}
