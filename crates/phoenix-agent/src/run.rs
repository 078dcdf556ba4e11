//! The control-plane loop: enroll, heartbeat, long-poll tasks, execute them one at a time
//! (each reported `running`, then `completed` or `failed` with a reason), close KPI
//! intervals, end experiments and load simulations when their time is up, and shut down
//! gracefully on SIGTERM.
//!
//! Tasks are journaled before anything is done (so a crash never runs one twice) and the
//! pipelines the agent was told to run are persisted, so a restarted agent resumes the
//! experiment where it was.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use phoenix_core::{Heartbeat, KpiBatch, ResourceUsage, TaskId, TaskStatus, TaskType};

use crate::client::{ApiClient, ApiError, Backoff, Breaker, LogEntry};
use crate::diskqueue::DiskQueue;
use crate::kpi::{self, KpiStats};
use crate::logship::{self, LogQueue};
use crate::metrics::AgentMetrics;
use crate::procstat::ProcessUsage;
use crate::settings::Settings;
use crate::state::{ActiveExperiment, ActiveLoadsim, AgentState, Promoted, Staged, TaskRecord};
use crate::supervisor::{Base, Layout, Supervisor, SupervisorOptions, PROMOTED_PIPELINE};
use crate::tasks::{self, Deployment, ExperimentAction, LoadsimAction};

/// What the agent declares it can do.
pub const CAPABILITIES: &[&str] = &[
    "pipeline",
    "shadow",
    "split",
    "hot_swap",
    "templates",
    "loadsim",
    "kpi",
    "disk_buffer",
    "remote_write",
    "otlp",
    "scrape",
    "prometheus",
];

/// How often held tasks are reported as still `running` (and lost leases discovered).
const PROGRESS_EVERY: Duration = Duration::from_secs(30);

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Settings.
    #[error(transparent)]
    Settings(#[from] crate::settings::SettingsError),
    /// The data directory.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The pipeline file.
    #[error("pipeline file {path}: {message}")]
    PipelineFile {
        /// The file.
        path: PathBuf,
        /// What is wrong (every error with its path).
        message: String,
    },
    /// The state file.
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    /// The engine or its surroundings.
    #[error(transparent)]
    Supervisor(#[from] crate::supervisor::SupervisorError),
    /// A disk buffer.
    #[error(transparent)]
    Queue(#[from] crate::diskqueue::QueueError),
    /// The TLS trust settings.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The API client.
    #[error(transparent)]
    Client(#[from] ApiError),
}

/// What executing a task came to.
#[derive(Debug)]
enum Outcome {
    Completed(Value),
    Failed(String),
    /// Runs on (an experiment, a timed load simulation); reported at its end.
    Held(Value),
}

/// The agent's moving parts, owned by the main loop.
struct Runtime {
    settings: Settings,
    client: Arc<ApiClient>,
    state: AgentState,
    supervisor: Supervisor,
    kpi_queue: Arc<DiskQueue>,
    kpi_stats: Arc<KpiStats>,
    metrics: Arc<AgentMetrics>,
    snapshot: Arc<Mutex<Heartbeat>>,
    heartbeat_now: Arc<Notify>,
    kpi_interval: Duration,
    report_backoff: Backoff,
    report_retry_at: Instant,
    last_progress: Instant,
}

impl Runtime {
    fn save(&self) {
        if let Err(e) = self.state.save(&self.settings.data_dir) {
            tracing::error!(error = %e, "agent state not saved");
        }
    }

    fn details(&self) -> Option<Vec<String>> {
        self.state.kpi_details.clone()
    }

    fn queue_kpis(&self, batches: &[KpiBatch]) {
        kpi::enqueue(&self.kpi_queue, &self.kpi_stats, batches);
    }

    fn steady_layout(state: &AgentState, base: &Base) -> Layout {
        match &state.promoted {
            Some(p) => {
                let mut pipelines = std::collections::BTreeMap::new();
                pipelines.insert(PROMOTED_PIPELINE.to_string(), p.pipeline.clone());
                Layout::Steady {
                    pipelines,
                    live: PROMOTED_PIPELINE.into(),
                }
            }
            None => base.steady(),
        }
    }

    fn experiment_layout(state: &AgentState, active: &ActiveExperiment) -> Option<Layout> {
        let staged = state.staged(active.experiment_id)?;
        Some(Layout::Experiment {
            experiment_id: active.experiment_id,
            baseline: staged.baseline.clone(),
            candidate: staged.candidate.clone(),
            variants: active.variants,
        })
    }

    async fn apply(&mut self, layout: Layout) -> Result<(), String> {
        let details = self.details();
        let batches = self
            .supervisor
            .apply(layout, details.as_deref())
            .await
            .map_err(|e| e.to_string())?;
        self.queue_kpis(&batches);
        self.refresh_snapshot();
        Ok(())
    }

    async fn apply_steady(&mut self) -> Result<(), String> {
        let layout = Self::steady_layout(&self.state, self.supervisor.base());
        self.apply(layout).await
    }

    // ---- reporting ----

    async fn report_running(&self, id: TaskId) -> Result<(), ApiError> {
        self.client
            .report(id, TaskStatus::Running, None, None)
            .await
    }

    /// Records a terminal outcome and tries to report it (retried later if the API is down).
    async fn finish(
        &mut self,
        id: TaskId,
        task_type: &str,
        status: TaskStatus,
        error: Option<String>,
        result: Option<Value>,
    ) {
        if status == TaskStatus::Failed {
            self.metrics
                .tasks
                .failed_total
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(task_id = %id, task_type, error = error.as_deref().unwrap_or(""), "task failed");
        } else {
            tracing::info!(task_id = %id, task_type, "task completed");
        }
        self.state.record(
            id,
            task_type,
            TaskRecord::Finished {
                status,
                error: error.clone(),
                result: result.clone(),
                reported: false,
            },
            Utc::now(),
        );
        self.save();
        self.send_report(id, status, error.as_deref(), result.as_ref())
            .await;
    }

    async fn send_report(
        &mut self,
        id: TaskId,
        status: TaskStatus,
        error: Option<&str>,
        result: Option<&Value>,
    ) {
        match self.client.report(id, status, error, result).await {
            Ok(()) => {
                self.state.mark_reported(id);
                self.save();
            }
            Err(e) if e.status() == Some(409) || e.status() == Some(404) => {
                // The API no longer gives this task to us (lease lapsed, task deleted).
                tracing::warn!(task_id = %id, error = %e, "task report refused; dropping it");
                self.state.mark_reported(id);
                self.save();
            }
            Err(e) => {
                tracing::debug!(task_id = %id, error = %e, "task report deferred");
            }
        }
    }

    async fn retry_reports(&mut self) {
        if Instant::now() < self.report_retry_at {
            return;
        }
        let pending = self.state.unreported();
        for entry in pending {
            if let TaskRecord::Finished {
                status,
                error,
                result,
                ..
            } = &entry.record
            {
                self.send_report(entry.id, *status, error.as_deref(), result.as_ref())
                    .await;
            }
        }
        if self.state.unreported().is_empty() {
            self.report_backoff.reset();
        } else {
            self.report_retry_at = Instant::now() + self.report_backoff.next_delay();
        }
    }

    /// Re-reports held tasks as `running`; a refusal means the API gave the task away
    /// (our lease lapsed): stop running it here.
    async fn progress(&mut self) {
        if self.last_progress.elapsed() < PROGRESS_EVERY {
            return;
        }
        self.last_progress = Instant::now();
        let held: Vec<TaskId> = self
            .state
            .experiment
            .iter()
            .map(|e| e.task_id)
            .chain(self.state.loadsim.iter().filter_map(|l| l.task_id))
            .collect();
        for id in held {
            if let Err(e) = self.report_running(id).await {
                if e.status() == Some(409) || e.status() == Some(404) {
                    tracing::warn!(task_id = %id, error = %e, "held task taken away by the api; stopping it here");
                    self.abandon(id).await;
                }
            }
        }
    }

    async fn abandon(&mut self, id: TaskId) {
        if self
            .state
            .experiment
            .as_ref()
            .is_some_and(|e| e.task_id == id)
        {
            self.state.experiment = None;
            if let Err(e) = self.apply_steady().await {
                tracing::error!(error = %e, "could not return to the steady pipelines");
            }
        }
        if self
            .state
            .loadsim
            .as_ref()
            .is_some_and(|l| l.task_id == Some(id))
        {
            self.state.loadsim = None;
            self.supervisor.stop_loadsim();
        }
        self.state.record(
            id,
            "held",
            TaskRecord::Finished {
                status: TaskStatus::Failed,
                error: Some("abandoned: the api gave the task to another agent".into()),
                result: None,
                reported: true,
            },
            Utc::now(),
        );
        self.save();
        self.refresh_snapshot();
    }

    // ---- tasks ----

    async fn handle(&mut self, raw: Value) {
        let Some(task) = tasks::delivered(&raw) else {
            tracing::warn!(task = %raw, "task without a usable id ignored");
            return;
        };
        if let Some(entry) = self.state.task(task.id).cloned() {
            self.metrics
                .tasks
                .redelivered_total
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(task_id = %task.id, "task delivered again; not executing it twice");
            match entry.record {
                TaskRecord::Finished {
                    status,
                    error,
                    result,
                    ..
                } => {
                    self.send_report(task.id, status, error.as_deref(), result.as_ref())
                        .await;
                }
                TaskRecord::Held | TaskRecord::Started => {
                    let _ = self.report_running(task.id).await;
                }
            }
            return;
        }
        self.metrics
            .tasks
            .executed_total
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let type_name = task.type_name.clone();
        tracing::info!(task_id = %task.id, task_type = %type_name, "task executing");
        self.state
            .record(task.id, &type_name, TaskRecord::Started, Utc::now());
        self.save();
        if let Err(e) = self.report_running(task.id).await {
            tracing::debug!(task_id = %task.id, error = %e, "could not report running");
        }
        let outcome = match task.task_type {
            Err(reason) => Outcome::Failed(reason),
            Ok(TaskType::Deployment) => self.deployment(&task.payload).await,
            Ok(TaskType::Experiment) => self.experiment(task.id, &task.payload).await,
            Ok(TaskType::Loadsim) => self.loadsim(task.id, &task.payload).await,
            Ok(TaskType::Metrics) => self.metrics_task(&task.payload),
            Ok(TaskType::Health) => self.health(),
        };
        match outcome {
            Outcome::Completed(result) => {
                self.finish(
                    task.id,
                    &type_name,
                    TaskStatus::Completed,
                    None,
                    Some(result),
                )
                .await
            }
            Outcome::Failed(reason) => {
                self.finish(task.id, &type_name, TaskStatus::Failed, Some(reason), None)
                    .await
            }
            Outcome::Held(result) => {
                self.state
                    .record(task.id, &type_name, TaskRecord::Held, Utc::now());
                self.save();
                let _ = self
                    .client
                    .report(task.id, TaskStatus::Running, None, Some(&result))
                    .await;
            }
        }
        self.refresh_snapshot();
    }

    async fn deployment(&mut self, payload: &Value) -> Outcome {
        let deployment = match tasks::deployment(payload) {
            Ok(d) => d,
            Err(e) => return Outcome::Failed(e),
        };
        match deployment {
            Deployment::Experiment {
                experiment_id,
                baseline,
                candidate,
            } => {
                let layout = Layout::Experiment {
                    experiment_id,
                    baseline: baseline.clone(),
                    candidate: candidate.clone(),
                    variants: crate::state::RunVariants::Both,
                };
                if let Err(e) = self.supervisor.check(&layout) {
                    return Outcome::Failed(e.to_string());
                }
                let running_here = self
                    .state
                    .experiment
                    .as_ref()
                    .filter(|e| e.experiment_id == experiment_id)
                    .cloned();
                if let Some(active) = &running_here {
                    // A new deployment of the running experiment: hot-swap it now.
                    let layout = Layout::Experiment {
                        experiment_id,
                        baseline: baseline.clone(),
                        candidate: candidate.clone(),
                        variants: active.variants,
                    };
                    if let Err(e) = self.apply(layout).await {
                        return Outcome::Failed(e);
                    }
                }
                let summary = json!({
                    "experiment_id": experiment_id,
                    "staged": true,
                    "applied_now": running_here.is_some(),
                    "baseline_processors": baseline.processors.iter().map(|p| p.type_name()).collect::<Vec<_>>(),
                    "candidate_processors": candidate.processors.iter().map(|p| p.type_name()).collect::<Vec<_>>(),
                });
                self.state.stage(Staged {
                    experiment_id,
                    baseline,
                    candidate,
                    staged_at: Utc::now(),
                });
                self.save();
                Outcome::Completed(summary)
            }
            Deployment::Live { pipeline } => {
                let previous = self.state.promoted.take();
                self.state.promoted = Some(Promoted {
                    experiment_id: None,
                    pipeline: pipeline.clone(),
                    previous: previous.clone().map(Box::new),
                });
                if self.state.experiment.is_none() {
                    if let Err(e) = self.apply_steady().await {
                        self.state.promoted = previous;
                        return Outcome::Failed(e);
                    }
                }
                self.save();
                Outcome::Completed(json!({
                    "live": pipeline.processors.iter().map(|p| p.type_name()).collect::<Vec<_>>(),
                    "applied_now": self.state.experiment.is_none(),
                }))
            }
        }
    }

    /// Ends the running experiment: back to the steady pipelines, its held task completed.
    async fn end_experiment(&mut self, outcome: &str) -> Result<(), String> {
        let Some(active) = self.state.experiment.take() else {
            return Ok(());
        };
        if let Err(e) = self.apply_steady().await {
            self.state.experiment = Some(active);
            return Err(e);
        }
        self.save();
        let ran = (Utc::now() - active.started_at).num_milliseconds() as f64 / 1000.0;
        tracing::info!(experiment_id = %active.experiment_id, outcome, "experiment ended here");
        self.finish(
            active.task_id,
            "experiment",
            TaskStatus::Completed,
            None,
            Some(json!({"experiment_id": active.experiment_id, "outcome": outcome, "ran_seconds": ran})),
        )
        .await;
        Ok(())
    }

    async fn experiment(&mut self, id: TaskId, payload: &Value) -> Outcome {
        let action = match tasks::experiment(payload) {
            Ok(a) => a,
            Err(e) => return Outcome::Failed(e),
        };
        match action {
            ExperimentAction::Start {
                experiment_id,
                mode,
                variants,
                duration,
            } => {
                let Some(staged) = self.state.staged(experiment_id).cloned() else {
                    return Outcome::Failed(format!(
                        "no deployment staged for experiment {experiment_id}: its deployment task must run first"
                    ));
                };
                let layout = Layout::Experiment {
                    experiment_id,
                    baseline: staged.baseline,
                    candidate: staged.candidate,
                    variants,
                };
                if let Err(e) = self.supervisor.check(&layout) {
                    return Outcome::Failed(e.to_string());
                }
                if let Some(previous) = &self.state.experiment {
                    tracing::warn!(previous = %previous.experiment_id, next = %experiment_id, "a new experiment replaces the running one");
                    if let Err(e) = self.end_experiment("superseded").await {
                        return Outcome::Failed(e);
                    }
                }
                if let Err(e) = self.apply(layout).await {
                    return Outcome::Failed(e);
                }
                let now = Utc::now();
                let ends_at = now
                    + chrono::Duration::from_std(duration).unwrap_or(chrono::Duration::hours(1));
                self.state.experiment = Some(ActiveExperiment {
                    experiment_id,
                    task_id: id,
                    mode: mode.clone(),
                    variants,
                    started_at: now,
                    ends_at,
                });
                self.save();
                tracing::info!(%experiment_id, %mode, ?variants, %ends_at, "experiment started here");
                Outcome::Held(
                    json!({"experiment_id": experiment_id, "mode": mode, "variants": variants, "ends_at": ends_at}),
                )
            }
            ExperimentAction::Stop(experiment_id) | ExperimentAction::Rollback(experiment_id)
                if self
                    .state
                    .experiment
                    .as_ref()
                    .is_some_and(|e| e.experiment_id == experiment_id) =>
            {
                let outcome = if matches!(action, ExperimentAction::Stop(_)) {
                    "stopped"
                } else {
                    "rolled_back"
                };
                match self.end_experiment(outcome).await {
                    Ok(()) => Outcome::Completed(
                        json!({"experiment_id": experiment_id, "outcome": outcome}),
                    ),
                    Err(e) => Outcome::Failed(e),
                }
            }
            ExperimentAction::Rollback(experiment_id)
                if self
                    .state
                    .promoted
                    .as_ref()
                    .is_some_and(|p| p.experiment_id == Some(experiment_id)) =>
            {
                let promoted = self.state.promoted.take();
                self.state.promoted = promoted
                    .as_ref()
                    .and_then(|p| p.previous.clone().map(|b| *b));
                if let Err(e) = self.apply_steady().await {
                    self.state.promoted = promoted;
                    return Outcome::Failed(e);
                }
                self.save();
                Outcome::Completed(
                    json!({"experiment_id": experiment_id, "outcome": "promotion_rolled_back"}),
                )
            }
            ExperimentAction::Stop(experiment_id) | ExperimentAction::Rollback(experiment_id) => {
                Outcome::Completed(
                    json!({"experiment_id": experiment_id, "outcome": "not_running_here"}),
                )
            }
            ExperimentAction::Promote(experiment_id) => {
                if self
                    .state
                    .promoted
                    .as_ref()
                    .is_some_and(|p| p.experiment_id == Some(experiment_id))
                {
                    return Outcome::Completed(
                        json!({"experiment_id": experiment_id, "outcome": "already_promoted"}),
                    );
                }
                let Some(staged) = self.state.staged(experiment_id).cloned() else {
                    return Outcome::Failed(format!(
                        "experiment {experiment_id} was never deployed here: nothing to promote"
                    ));
                };
                let previous = self.state.promoted.take();
                self.state.promoted = Some(Promoted {
                    experiment_id: Some(experiment_id),
                    pipeline: staged.candidate,
                    previous: previous.clone().map(Box::new),
                });
                let result = if self
                    .state
                    .experiment
                    .as_ref()
                    .is_some_and(|e| e.experiment_id == experiment_id)
                {
                    self.end_experiment("promoted").await
                } else if self.state.experiment.is_none() {
                    self.apply_steady().await
                } else {
                    Ok(())
                };
                if let Err(e) = result {
                    self.state.promoted = previous;
                    return Outcome::Failed(e);
                }
                self.save();
                Outcome::Completed(json!({"experiment_id": experiment_id, "outcome": "promoted"}))
            }
        }
    }

    async fn loadsim(&mut self, id: TaskId, payload: &Value) -> Outcome {
        let action = match tasks::loadsim(payload) {
            Ok(a) => a,
            Err(e) => return Outcome::Failed(e),
        };
        match action {
            LoadsimAction::Start { config, duration } => {
                self.end_loadsim("superseded").await;
                let now = Utc::now();
                let ends_at = duration
                    .and_then(|d| chrono::Duration::from_std(d).ok())
                    .map(|d| now + d);
                self.supervisor.start_loadsim(config.clone(), ends_at);
                self.state.loadsim = Some(ActiveLoadsim {
                    task_id: ends_at.map(|_| id),
                    config,
                    ends_at,
                    started_at: now,
                });
                self.save();
                let result = json!({"ends_at": ends_at});
                if ends_at.is_some() {
                    Outcome::Held(result)
                } else {
                    Outcome::Completed(result)
                }
            }
            LoadsimAction::Stop => {
                let was_running = self.state.loadsim.is_some();
                self.end_loadsim("stopped").await;
                Outcome::Completed(json!({"stopped": was_running}))
            }
        }
    }

    async fn end_loadsim(&mut self, outcome: &str) {
        self.supervisor.stop_loadsim();
        if let Some(active) = self.state.loadsim.take() {
            self.save();
            if let Some(task_id) = active.task_id {
                let ran = (Utc::now() - active.started_at).num_milliseconds() as f64 / 1000.0;
                self.finish(
                    task_id,
                    "loadsim",
                    TaskStatus::Completed,
                    None,
                    Some(json!({"outcome": outcome, "ran_seconds": ran})),
                )
                .await;
            }
        }
    }

    fn metrics_task(&mut self, payload: &Value) -> Outcome {
        let settings = match tasks::metrics(payload) {
            Ok(s) => s,
            Err(e) => return Outcome::Failed(e),
        };
        if let Some(interval) = settings.interval {
            self.kpi_interval = interval;
            self.state.kpi_interval_ms = Some(interval.as_millis() as u64);
        }
        if settings.details.is_some() {
            self.state.kpi_details = settings.details;
        }
        self.save();
        Outcome::Completed(json!({
            "interval_seconds": self.kpi_interval.as_secs_f64(),
            "details": self.state.kpi_details.clone().unwrap_or_else(|| kpi::DETAIL_SECTIONS.iter().map(|s| s.to_string()).collect()),
        }))
    }

    fn health(&mut self) -> Outcome {
        self.heartbeat_now.notify_one();
        Outcome::Completed(json!({
            "status": "ok",
            "version": env!("CARGO_PKG_VERSION"),
            "pipelines": self.supervisor.describe(),
            "experiment": self.state.experiment.as_ref().map(|e| json!({"experiment_id": e.experiment_id, "ends_at": e.ends_at})),
            "kpi_buffer_pending": self.kpi_queue.pending_records(),
            "remote_write_buffer_bytes": self.supervisor.buffered_bytes(),
            "api_failures": self.client.failures_total.load(std::sync::atomic::Ordering::Relaxed),
        }))
    }

    // ---- time ----

    fn next_deadline(&self) -> Option<chrono::DateTime<Utc>> {
        let e = self.state.experiment.as_ref().map(|e| e.ends_at);
        let l = self.state.loadsim.as_ref().and_then(|l| l.ends_at);
        match (e, l) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    async fn deadlines(&mut self) {
        let now = Utc::now();
        if self
            .state
            .experiment
            .as_ref()
            .is_some_and(|e| e.ends_at <= now)
        {
            if let Err(e) = self.end_experiment("duration_elapsed").await {
                tracing::error!(error = %e, "experiment could not end");
            }
        }
        if self
            .state
            .loadsim
            .as_ref()
            .and_then(|l| l.ends_at)
            .is_some_and(|t| t <= now)
        {
            self.end_loadsim("duration_elapsed").await;
        }
        self.refresh_snapshot();
    }

    async fn close_interval(&mut self) {
        let details = self.details();
        match self.supervisor.finish_interval(details.as_deref()).await {
            Ok(batches) => self.queue_kpis(&batches),
            Err(e) => tracing::error!(error = %e, "kpi interval could not be closed"),
        }
        self.refresh_snapshot();
    }

    fn refresh_snapshot(&self) {
        let mut pipelines = self.supervisor.describe();
        if let Some(e) = &self.state.experiment {
            pipelines.push(json!({"name": "experiment", "experiment_id": e.experiment_id, "mode": e.mode, "variants": e.variants, "ends_at": e.ends_at}));
        }
        // Every task the API may consider ours: the long-running ones in progress and the
        // finished ones whose report has not got through yet. A task the API assigned us
        // that is in none of these never reached us (its answer was lost): the API puts it
        // back in the queue.
        let held: Vec<TaskId> = self
            .state
            .experiment
            .iter()
            .map(|e| e.task_id)
            .chain(self.state.loadsim.iter().filter_map(|l| l.task_id))
            .chain(
                self.state
                    .journal
                    .iter()
                    .filter(|e| matches!(e.record, TaskRecord::Started))
                    .map(|e| e.id),
            )
            .chain(self.state.unreported().into_iter().map(|e| e.id))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut hb = self.snapshot.lock();
        hb.running_pipelines = pipelines;
        hb.resource_usage.buffer_bytes =
            self.kpi_queue.pending_bytes() + self.supervisor.buffered_bytes();
        hb.held_tasks = Some(held);
    }

    /// Finishes what a crash interrupted and resumes what was running.
    async fn recover(&mut self) {
        let interrupted: Vec<(TaskId, String)> = self
            .state
            .journal
            .iter()
            .filter(|e| matches!(e.record, TaskRecord::Started))
            .map(|e| (e.id, e.task_type.clone()))
            .collect();
        for (id, task_type) in interrupted {
            self.finish(
                id,
                &task_type,
                TaskStatus::Failed,
                Some("the agent restarted while executing this task; not run again".into()),
                None,
            )
            .await;
        }
        if let Some(sim) = self.state.loadsim.clone() {
            if sim.ends_at.is_none_or(|t| t > Utc::now()) {
                tracing::info!("resuming the load simulation");
                self.supervisor.start_loadsim(sim.config, sim.ends_at);
            }
        }
        self.deadlines().await;
    }
}

fn spawn_poller(
    client: Arc<ApiClient>,
    wait: Duration,
    min_backoff: Duration,
    max_backoff: Duration,
    tx: mpsc::Sender<Vec<Value>>,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut backoff = Backoff::new(min_backoff, max_backoff);
        loop {
            let result = tokio::select! {
                r = client.poll(wait) => r,
                _ = cancel.cancelled() => return,
            };
            match result {
                Ok(tasks) => {
                    backoff.reset();
                    if !tasks.is_empty() && tx.send(tasks).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    if backoff.failures() == 1 || backoff.failures().is_multiple_of(20) {
                        tracing::warn!(error = %e, ?delay, "task poll failed");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = cancel.cancelled() => return,
                    }
                }
            }
        }
    })
}

fn spawn_heartbeat(
    client: Arc<ApiClient>,
    snapshot: Arc<Mutex<Heartbeat>>,
    now: Arc<Notify>,
    interval: Duration,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut usage = ProcessUsage::new();
        let mut failures = 0u32;
        loop {
            let heartbeat = {
                let (cpu, rss) = usage.sample();
                let mut hb = snapshot.lock().clone();
                hb.resource_usage.cpu_percent = cpu;
                hb.resource_usage.memory_bytes = rss;
                hb
            };
            match client.heartbeat(&heartbeat).await {
                Ok(_) => {
                    if failures > 0 {
                        tracing::info!(failures, "heartbeats delivered again");
                    }
                    failures = 0;
                }
                Err(e) => {
                    failures += 1;
                    if failures == 1 || failures.is_multiple_of(30) {
                        tracing::warn!(error = %e, failures, "heartbeat failed");
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = now.notified() => {}
                _ = cancel.cancelled() => return,
            }
        }
    })
}

/// Runs the agent until `shutdown` fires; then drains within `shutdown_grace`.
pub async fn run(
    settings: Settings,
    logs: Arc<LogQueue>,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let data_dir = settings.data_dir.clone();
    std::fs::create_dir_all(&data_dir).map_err(|source| RunError::DataDir {
        path: data_dir.clone(),
        source,
    })?;
    {
        // Credentials and buffers: readable by the agent's user only.
        use std::os::unix::fs::PermissionsExt as _;
        let _ = std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o700));
    }
    let host = settings.host_id()?;
    let base = match &settings.pipeline_config {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| RunError::PipelineFile {
                path: path.clone(),
                message: e.to_string(),
            })?;
            Base::parse(&text).map_err(|e| RunError::PipelineFile {
                path: path.clone(),
                message: e.to_string(),
            })?
        }
        None => Base::empty(),
    };
    let tls = crate::tls::client_config(
        settings.tls_ca_file.as_deref(),
        settings.tls_pinned_sha256.as_deref(),
    )?;
    let client = Arc::new(ApiClient::new(
        &settings.api_url,
        host.clone(),
        settings.enrollment_token.clone(),
        &data_dir,
        settings.request_timeout,
        Breaker::new(settings.breaker_failures, settings.breaker_cooldown),
        tls,
    )?);
    if !client.is_enrolled() && settings.enrollment_token.is_none() {
        return Err(RunError::Client(ApiError::NoToken));
    }
    let metrics = Arc::new(AgentMetrics::default());
    metrics.set_client(client.clone());
    metrics.set_logs(logs.clone());
    let kpi_queue = Arc::new(DiskQueue::open(
        data_dir.join("kpi-buffer"),
        settings.kpi_buffer_max_bytes,
        (settings.kpi_buffer_max_bytes / 8).clamp(64 * 1024, 8 << 20),
    )?);
    let kpi_stats = Arc::new(KpiStats::default());
    metrics.set_kpi(kpi_queue.stats().clone(), kpi_stats.clone());

    let mut state = AgentState::load(&data_dir)?;
    let mut layout = Runtime::steady_layout(&state, &base);
    let mut lost_experiment = None;
    if let Some(active) = state.experiment.clone() {
        match Runtime::experiment_layout(&state, &active) {
            Some(l) => {
                tracing::info!(experiment_id = %active.experiment_id, "resuming the experiment after a restart");
                layout = l;
            }
            None => {
                lost_experiment = Some(active.task_id);
                state.experiment = None;
            }
        }
    }
    let supervisor = Supervisor::start(
        base,
        layout,
        SupervisorOptions {
            remote_write_dir: data_dir.join("remote-write-buffer"),
            remote_write_max_bytes: settings.remote_write_buffer_max_bytes,
            metrics_listen: settings.metrics_listen.clone(),
            label_stats: settings.label_stats(),
        },
        metrics.clone(),
    )
    .await?;
    if let Some(addr) = supervisor.metrics_address {
        tracing::info!(address = %addr, "/metrics listening");
    }

    let snapshot = Arc::new(Mutex::new(Heartbeat {
        version: env!("CARGO_PKG_VERSION").to_string(),
        hostname: crate::settings::hostname().unwrap_or_default(),
        capabilities: CAPABILITIES.iter().map(|s| s.to_string()).collect(),
        labels: settings.labels.clone(),
        resource_usage: ResourceUsage::default(),
        running_pipelines: Vec::new(),
        held_tasks: None,
    }));
    let kpi_interval = state
        .kpi_interval_ms
        .map(Duration::from_millis)
        .unwrap_or(settings.kpi_interval);
    let mut runtime = Runtime {
        client: client.clone(),
        state,
        supervisor,
        kpi_queue: kpi_queue.clone(),
        kpi_stats: kpi_stats.clone(),
        metrics,
        snapshot: snapshot.clone(),
        heartbeat_now: Arc::new(Notify::new()),
        kpi_interval,
        report_backoff: Backoff::new(settings.min_backoff, settings.max_backoff),
        report_retry_at: Instant::now(),
        last_progress: Instant::now(),
        settings: settings.clone(),
    };
    if let Some(task_id) = lost_experiment {
        runtime
            .finish(
                task_id,
                "experiment",
                TaskStatus::Failed,
                Some("the experiment's deployment was lost in a restart".into()),
                None,
            )
            .await;
    }
    runtime.refresh_snapshot();

    let background = CancellationToken::new();
    let kpi_sender = tokio::spawn(kpi::run_sender(
        kpi_queue.clone(),
        client.clone(),
        kpi_stats.clone(),
        Backoff::new(settings.min_backoff, settings.max_backoff),
        background.clone(),
    ));
    let shipper = tokio::spawn(logship::run_shipper(
        logs,
        client.clone(),
        Backoff::new(settings.min_backoff, settings.max_backoff),
        background.clone(),
    ));
    let heartbeat = spawn_heartbeat(
        client.clone(),
        snapshot,
        runtime.heartbeat_now.clone(),
        settings.heartbeat_interval,
        background.clone(),
    );
    let (task_tx, mut task_rx) = mpsc::channel(4);
    let poll_cancel = CancellationToken::new();
    let poller = spawn_poller(
        client.clone(),
        settings.poll_interval,
        settings.min_backoff,
        settings.max_backoff,
        task_tx,
        poll_cancel.clone(),
    );
    tracing::info!(host_id = %host, api_url = %settings.api_url, "agent started");
    runtime.recover().await;

    let mut next_kpi = Instant::now() + runtime.kpi_interval;
    let mut housekeeping = tokio::time::interval(Duration::from_millis(500));
    housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_sync = Instant::now();
    loop {
        let deadline = runtime
            .next_deadline()
            .map(|t| {
                let wait = (t - Utc::now()).to_std().unwrap_or(Duration::ZERO);
                Instant::now() + wait
            })
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(batch) = task_rx.recv() => {
                for raw in batch {
                    runtime.handle(raw).await;
                }
            }
            _ = tokio::time::sleep_until(next_kpi) => {
                runtime.close_interval().await;
                next_kpi += runtime.kpi_interval;
                if next_kpi < Instant::now() {
                    next_kpi = Instant::now() + runtime.kpi_interval;
                }
            }
            _ = tokio::time::sleep_until(deadline) => runtime.deadlines().await,
            _ = housekeeping.tick() => {
                runtime.retry_reports().await;
                runtime.progress().await;
                runtime.refresh_snapshot();
                if last_sync.elapsed() >= Duration::from_secs(1) {
                    last_sync = Instant::now();
                    let _ = runtime.kpi_queue.sync();
                    runtime.supervisor.sync();
                }
            }
        }
    }

    tracing::info!("shutting down: finishing the batch, flushing exporters, persisting buffers");
    poll_cancel.cancel();
    let _ = poller.await;
    let grace = settings.shutdown_grace;
    let deadline = Instant::now() + grace;
    let details = runtime.details();
    let Runtime {
        supervisor,
        state,
        kpi_queue,
        kpi_stats,
        ..
    } = runtime;
    let last = supervisor.shutdown(details.as_deref(), grace / 2).await;
    kpi::enqueue(&kpi_queue, &kpi_stats, &last);
    if let Err(e) = state.save(&data_dir) {
        tracing::error!(error = %e, "agent state not saved");
    }
    let _ = kpi_queue.sync();
    while kpi_queue.pending_records() > 0 && Instant::now() < deadline && !client.breaker.is_open()
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pending = kpi_queue.pending_records();
    let _ = client
        .send_logs(&[LogEntry {
            at: Utc::now(),
            level: "info".into(),
            message: "agent stopped".into(),
            fields: json!({"kpi_batches_buffered": pending}),
        }])
        .await;
    background.cancel();
    let _ = tokio::join!(kpi_sender, shipper, heartbeat);
    let _ = kpi_queue.sync();
    tracing::info!(kpi_batches_buffered = pending, "agent stopped");
    Ok(())
}
