//! What the agent must remember across a crash, in one JSON file in the data directory
//! (written to a temporary file, synced, then renamed): the pipelines it was told to run
//! (staged experiment deployments, a promoted candidate), the experiment and load
//! simulation in progress with their deadlines, the KPI settings, and the task journal —
//! the ids it started and finished — so a redelivered task is never executed twice.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use phoenix_core::{ExperimentId, TaskId, TaskStatus};
use phoenix_pipeline::config::PipelineConfig;
use phoenix_pipeline::simulator::SimulatorConfig;

/// Finished task ids remembered at most (older ones are forgotten first).
pub const JOURNAL_MAX_ENTRIES: usize = 2_000;
/// Staged deployments remembered at most.
pub const STAGED_MAX: usize = 16;

/// A task's fate as far as this agent knows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum TaskRecord {
    /// Execution began; a crash now means it must not be run again.
    Started,
    /// Running for a while (an experiment or a timed load simulation).
    Held,
    /// Done; `reported` once the API acknowledged the terminal status.
    Finished {
        /// `completed` or `failed`.
        status: TaskStatus,
        /// Why it failed.
        error: Option<String>,
        /// What it produced.
        result: Option<Value>,
        /// Whether the API has it.
        reported: bool,
    },
}

/// One journal line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// The task.
    pub id: TaskId,
    /// Its type, for logs.
    pub task_type: String,
    /// What happened to it.
    pub record: TaskRecord,
    /// When it was last updated.
    pub at: DateTime<Utc>,
}

/// An experiment's baseline and candidate, validated, waiting for `start` (or kept for
/// `promote`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Staged {
    /// The experiment.
    pub experiment_id: ExperimentId,
    /// Its baseline.
    pub baseline: PipelineConfig,
    /// Its candidate.
    pub candidate: PipelineConfig,
    /// When the deployment task staged it.
    pub staged_at: DateTime<Utc>,
}

/// A candidate made the live pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Promoted {
    /// From which experiment (`None` for a deployment outside experiments).
    pub experiment_id: Option<ExperimentId>,
    /// The pipeline now live.
    pub pipeline: PipelineConfig,
    /// What was live before (restored by a rollback of this promotion).
    pub previous: Option<Box<Promoted>>,
}

/// How the experiment runs on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunVariants {
    /// Baseline and candidate on the same input (shadow mode).
    Both,
    /// Only the baseline (split mode, this host not chosen).
    Baseline,
    /// Only the candidate (split mode, this host chosen).
    Candidate,
}

/// The experiment running here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActiveExperiment {
    /// The experiment.
    pub experiment_id: ExperimentId,
    /// The `start` task, held until the end.
    pub task_id: TaskId,
    /// `shadow` or `split`.
    pub mode: String,
    /// Which variants run here.
    pub variants: RunVariants,
    /// When it started here.
    pub started_at: DateTime<Utc>,
    /// When its duration ends.
    pub ends_at: DateTime<Utc>,
}

/// The load simulation running here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActiveLoadsim {
    /// The `start` task, held until `ends_at` when it has one.
    pub task_id: Option<TaskId>,
    /// The simulator settings.
    pub config: SimulatorConfig,
    /// When it stops by itself.
    pub ends_at: Option<DateTime<Utc>>,
    /// When it started.
    pub started_at: DateTime<Utc>,
}

/// Everything persisted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentState {
    /// Deployments waiting for (or used by) experiments, oldest first.
    pub staged: Vec<Staged>,
    /// The promoted candidate, when one replaced the base pipelines.
    pub promoted: Option<Promoted>,
    /// The experiment in progress.
    pub experiment: Option<ActiveExperiment>,
    /// The load simulation in progress.
    pub loadsim: Option<ActiveLoadsim>,
    /// KPI interval set by a `metrics` task, in milliseconds.
    pub kpi_interval_ms: Option<u64>,
    /// KPI detail sections a `metrics` task asked for (all when `None`).
    pub kpi_details: Option<Vec<String>>,
    /// The task journal, oldest first.
    pub journal: VecDeque<JournalEntry>,
}

/// Why the state could not be saved or loaded.
#[derive(Debug, thiserror::Error)]
#[error("agent state {path}: {message}")]
pub struct StateError {
    /// The file.
    pub path: PathBuf,
    /// What went wrong.
    pub message: String,
}

impl AgentState {
    /// The state file in `data_dir`.
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join("state.json")
    }

    /// Loads the state; a missing file is a fresh agent.
    pub fn load(data_dir: &Path) -> Result<Self, StateError> {
        let path = Self::path(data_dir);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StateError {
                path,
                message: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(StateError {
                path,
                message: e.to_string(),
            }),
        }
    }

    /// Saves atomically (temporary file, fsync, rename).
    pub fn save(&self, data_dir: &Path) -> Result<(), StateError> {
        use std::io::Write as _;
        let path = Self::path(data_dir);
        let fail = |e: &dyn std::fmt::Display| StateError {
            path: path.clone(),
            message: e.to_string(),
        };
        let bytes = serde_json::to_vec(self).map_err(|e| fail(&e))?;
        let tmp = path.with_extension("json.tmp");
        let mut file = std::fs::File::create(&tmp).map_err(|e| fail(&e))?;
        file.write_all(&bytes).map_err(|e| fail(&e))?;
        file.sync_all().map_err(|e| fail(&e))?;
        std::fs::rename(&tmp, &path).map_err(|e| fail(&e))
    }

    /// The journal entry of `id`.
    pub fn task(&self, id: TaskId) -> Option<&JournalEntry> {
        self.journal.iter().rev().find(|e| e.id == id)
    }

    /// Records (or updates) what happened to a task.
    pub fn record(&mut self, id: TaskId, task_type: &str, record: TaskRecord, now: DateTime<Utc>) {
        if let Some(entry) = self.journal.iter_mut().rev().find(|e| e.id == id) {
            entry.record = record;
            entry.at = now;
            return;
        }
        self.journal.push_back(JournalEntry {
            id,
            task_type: task_type.to_string(),
            record,
            at: now,
        });
        while self.journal.len() > JOURNAL_MAX_ENTRIES {
            // Forget the oldest finished-and-reported entry; never one still in progress.
            match self
                .journal
                .iter()
                .position(|e| matches!(e.record, TaskRecord::Finished { reported: true, .. }))
            {
                Some(i) => {
                    self.journal.remove(i);
                }
                None => break,
            }
        }
    }

    /// Finished tasks the API has not acknowledged yet.
    pub fn unreported(&self) -> Vec<JournalEntry> {
        self.journal
            .iter()
            .filter(|e| {
                matches!(
                    e.record,
                    TaskRecord::Finished {
                        reported: false,
                        ..
                    }
                )
            })
            .cloned()
            .collect()
    }

    /// Marks a finished task as acknowledged.
    pub fn mark_reported(&mut self, id: TaskId) {
        if let Some(entry) = self.journal.iter_mut().rev().find(|e| e.id == id) {
            if let TaskRecord::Finished { reported, .. } = &mut entry.record {
                *reported = true;
            }
        }
    }

    /// The staged deployment of `experiment`.
    pub fn staged(&self, experiment: ExperimentId) -> Option<&Staged> {
        self.staged
            .iter()
            .rev()
            .find(|s| s.experiment_id == experiment)
    }

    /// Stages a deployment, replacing an older one of the same experiment.
    pub fn stage(&mut self, staged: Staged) {
        self.staged
            .retain(|s| s.experiment_id != staged.experiment_id);
        self.staged.push(staged);
        while self.staged.len() > STAGED_MAX {
            self.staged.remove(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_survives_a_save_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = AgentState::default();
        let id = TaskId::new();
        state.record(id, "health", TaskRecord::Started, Utc::now());
        state.record(
            id,
            "health",
            TaskRecord::Finished {
                status: TaskStatus::Completed,
                error: None,
                result: Some(serde_json::json!({"ok": true})),
                reported: false,
            },
            Utc::now(),
        );
        state.save(dir.path()).unwrap();
        let loaded = AgentState::load(dir.path()).unwrap();
        assert_eq!(loaded, state);
        assert_eq!(loaded.unreported().len(), 1);
        assert_eq!(loaded.journal.len(), 1);
    }

    #[test]
    fn the_journal_forgets_only_reported_entries_when_full() {
        let mut state = AgentState::default();
        let pending = TaskId::new();
        state.record(pending, "experiment", TaskRecord::Held, Utc::now());
        for _ in 0..JOURNAL_MAX_ENTRIES + 5 {
            state.record(
                TaskId::new(),
                "health",
                TaskRecord::Finished {
                    status: TaskStatus::Completed,
                    error: None,
                    result: None,
                    reported: true,
                },
                Utc::now(),
            );
        }
        assert_eq!(state.journal.len(), JOURNAL_MAX_ENTRIES);
        assert!(state.task(pending).is_some());
    }
}
