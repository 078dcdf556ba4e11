//! The control plane's behaviour, free of HTTP: experiments and their orchestration, the
//! task queue with long-poll delivery, the agent protocol, the fleet view. Handlers call
//! these and map the result.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use utoipa::ToSchema;

use phoenix_core::{
    AgentHealth, Clock, Experiment, ExperimentCommand, ExperimentEvent, ExperimentId,
    ExperimentMode, ExperimentPatch, FieldErrors, Heartbeat, HostId, KpiBatch, NewExperiment,
    NewTask, Task, TaskId, TaskStatus, TaskType,
};
use phoenix_store::{
    AgentLogEntry, Enqueued, ExperimentQuery, KpiInsertOutcome, Page, SharedStore, StoreError,
    TaskQuery, TaskStatusUpdate, TransitionOutcome,
};

use crate::batch::Batcher;
use crate::waiters::Waiters;
use dashmap::DashMap;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Invalid(#[from] FieldErrors),
    #[error("{0}")]
    Unauthorized(String),
    /// The request is well-formed but the state of things refuses it (409).
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
}

pub type ServiceResult<T> = Result<T, ServiceError>;

/// Timing knobs the services need (a subset of the configuration).
#[derive(Debug, Clone)]
pub struct Timings {
    pub long_poll_max: Duration,
    pub task_lease: Duration,
    pub heartbeat_interval: Duration,
    pub offline_after: Duration,
    pub claim_batch_max: u32,
    /// An experiment whose targets have not all started this long after `start` fails.
    pub experiment_start_timeout: Duration,
}

#[derive(Debug)]
pub struct Service {
    pub store: SharedStore,
    pub clock: Arc<dyn Clock>,
    pub waiters: Arc<Waiters>,
    pub timings: Timings,
    enrollment_token: String,
    /// Agent credentials by host. Every agent call authenticates; with 10,000 agents that was
    /// a database read per request. Entries are replaced on enrollment here, dropped when the
    /// store reports a change from another replica ([`Service::forget_agent_credentials`]),
    /// and re-read after [`CREDENTIALS_TTL`] in case such a report was lost.
    credentials: DashMap<HostId, CachedCredentials>,
    /// Concurrent heartbeats, status reports and enqueues, each written together
    /// ([`Store::record_heartbeats`], [`Store::report_task_statuses`],
    /// [`Store::enqueue_tasks`]): with thousands of agents that is a few transactions a
    /// second instead of one per request.
    heartbeats: Batcher<(HostId, Heartbeat), Result<u64, StoreError>>,
    reports: Batcher<(TaskId, HostId, TaskStatusUpdate), Result<Task, StoreError>>,
    enqueues: Batcher<NewTask, Result<Enqueued, StoreError>>,
    /// Claims of the long-polls that wake together ([`Store::claim_tasks_for_hosts`]).
    claims: Batcher<(HostId, u32), Result<Vec<Task>, StoreError>>,
    /// Analyses this process ran (interim and final), for `/metrics` and the tests that
    /// prove each interval is analysed once across replicas.
    pub analyses_run: std::sync::atomic::AtomicU64,
    /// Per experiment, the last interval this replica asked to analyse: each replica tries
    /// to claim an interval once, not on every tick.
    pub(crate) analysis_attempted: DashMap<ExperimentId, i64>,
    /// When this replica last heard a heartbeat from each host: a parked long-poll whose
    /// agent has gone quiet (frozen, partitioned) stops claiming for it.
    last_heard: DashMap<HostId, tokio::time::Instant>,
    /// Real-time events for WebSocket clients (`/api/v1/ws`): stored, then fanned out.
    pub events: crate::ws::Publisher,
}

/// How long cached agent credentials are trusted without a change notification.
pub const CREDENTIALS_TTL: Duration = Duration::from_secs(300);
/// Most requests written in one batch.
const BATCH_MAX: usize = 512;

/// A [`Batcher`] over one of the store's batch methods; a batch the database refused as a
/// whole answers every request in it with that error.
fn store_batcher<Req, T, W, Fut>(
    store: &SharedStore,
    clock: &Arc<dyn Clock>,
    what: &'static str,
    write: W,
) -> Batcher<Req, Result<T, StoreError>>
where
    Req: Send + 'static,
    T: Send + 'static,
    W: Fn(SharedStore, Vec<Req>, chrono::DateTime<Utc>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<Vec<Result<T, StoreError>>, StoreError>>
        + Send
        + 'static,
{
    // SQLite has one writer: concurrent batches would only split them. PostgreSQL commits
    // concurrent transactions with one WAL flush.
    let in_flight = match store.backend() {
        phoenix_store::Backend::Sqlite => 1,
        phoenix_store::Backend::Postgres => 4,
    };
    let store = store.clone();
    let clock = clock.clone();
    Batcher::spawn(BATCH_MAX, in_flight, move |requests: Vec<Req>| {
        let n = requests.len();
        let written = write(store.clone(), requests, clock.now());
        async move {
            match written.await {
                Ok(outcomes) => outcomes,
                Err(e) => {
                    tracing::warn!(error = %e, requests = n, "cannot write a batch of {what}");
                    let message = e.to_string();
                    (0..n)
                        .map(|_| Err(StoreError::Unavailable(message.clone())))
                        .collect()
                }
            }
        }
    })
}

#[derive(Debug, Clone)]
struct CachedCredentials {
    secret_hash: String,
    revoked: bool,
    fetched: Instant,
}

/// Priorities of the tasks experiments enqueue: a rollback overtakes everything.
pub mod priority {
    pub const START: i32 = 0;
    pub const STOP: i32 = 50;
    pub const ROLLBACK: i32 = 100;
}

/// Which variant a host runs in `split` mode: a stable hash of experiment and host, so the
/// same hosts get the candidate on every replica and every restart.
pub fn split_assignment(
    experiment: ExperimentId,
    host: &HostId,
    share_percent: u8,
) -> &'static str {
    let mut h = Sha256::new();
    h.update(experiment.as_uuid().as_bytes());
    h.update(host.as_str().as_bytes());
    let digest = h.finalize();
    let bucket = u16::from_be_bytes([digest[0], digest[1]]) % 100;
    if bucket < u16::from(share_percent) {
        "candidate"
    } else {
        "baseline"
    }
}

fn lease_of(timings: &Timings) -> chrono::Duration {
    chrono::Duration::from_std(timings.task_lease).unwrap_or(chrono::Duration::seconds(60))
}

pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// The outcome a batcher answered, or why there is none.
fn batched<T>(outcome: Option<Result<T, StoreError>>, what: &str) -> Result<T, StoreError> {
    outcome.unwrap_or_else(|| {
        Err(StoreError::Unavailable(format!(
            "the {what} writer stopped"
        )))
    })
}

fn secret_matches(presented_hash: &str, stored_hash: &str) -> bool {
    bool::from(presented_hash.as_bytes().ct_eq(stored_hash.as_bytes()))
}

fn revoked(host: &HostId) -> ServiceError {
    ServiceError::Unauthorized(format!("agent {host} is revoked"))
}

/// What enrollment hands an agent.
#[derive(Debug, Serialize, ToSchema)]
pub struct Enrollment {
    pub host_id: HostId,
    /// Present as `Authorization: Bearer <agent_secret>` with `X-Agent-Host-ID` on every call.
    /// Shown once; only its hash is stored.
    pub agent_secret: String,
}

/// One agent in the fleet view.
#[derive(Debug, Serialize, ToSchema)]
pub struct FleetAgent {
    pub host_id: HostId,
    pub hostname: String,
    pub version: String,
    pub health: AgentHealth,
    pub last_seen_at: Option<chrono::DateTime<Utc>>,
    pub last_seen_seconds_ago: Option<f64>,
    pub running_tasks: u64,
    pub labels: BTreeMap<String, String>,
    pub resource_usage: phoenix_core::ResourceUsage,
    #[schema(value_type = Vec<Object>)]
    pub running_pipelines: Vec<serde_json::Value>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FleetStatus {
    pub total: usize,
    /// Agents per health (`healthy`, `stale`, `offline`, `unknown`, `revoked`).
    pub by_health: BTreeMap<String, usize>,
    /// Agents per reported version.
    pub versions: BTreeMap<String, usize>,
    /// Tasks per status across the queue.
    pub task_queue: BTreeMap<String, u64>,
    pub agents: Vec<FleetAgent>,
}

impl Service {
    pub fn new(
        store: SharedStore,
        clock: Arc<dyn Clock>,
        waiters: Arc<Waiters>,
        timings: Timings,
        enrollment_token: String,
    ) -> Self {
        let lease = lease_of(&timings);
        let heartbeats = store_batcher(
            &store,
            &clock,
            "heartbeats",
            move |store, beats, now| async move { store.record_heartbeats(&beats, lease, now).await },
        );
        let reports = store_batcher(
            &store,
            &clock,
            "status reports",
            move |store, reports, now| async move {
                store.report_task_statuses(&reports, lease, now).await
            },
        );
        let enqueues = store_batcher(&store, &clock, "enqueues", |store, tasks, now| async move {
            store.enqueue_tasks(&tasks, now).await
        });
        let claims = store_batcher(
            &store,
            &clock,
            "claims",
            move |store, claims, now| async move {
                let claimed = store.claim_tasks_for_hosts(&claims, lease, now).await?;
                Ok(claimed.into_iter().map(Ok).collect())
            },
        );
        let events = crate::ws::Publisher::new(store.clone(), clock.clone());
        Self {
            events,
            store,
            clock,
            waiters,
            timings,
            enrollment_token,
            credentials: DashMap::new(),
            heartbeats,
            reports,
            enqueues,
            claims,
            analyses_run: std::sync::atomic::AtomicU64::new(0),
            analysis_attempted: DashMap::new(),
            last_heard: DashMap::new(),
        }
    }

    // ---- experiments ----

    pub async fn create_experiment(&self, new: NewExperiment) -> ServiceResult<Experiment> {
        new.validate()?;
        self.check_experiment_pipelines(
            &new.baseline_pipeline,
            &new.candidate_pipeline,
            &new.parameters,
        )
        .await?;
        let exp = Experiment::create(ExperimentId::new(), new, self.clock.now());
        let event = self.store.create_experiment(&exp).await?;
        self.events.experiment_event(&exp, &event).await;
        Ok(exp)
    }

    pub async fn list_experiments(&self, q: &ExperimentQuery) -> ServiceResult<Page<Experiment>> {
        Ok(self.store.list_experiments(q).await?)
    }

    pub async fn get_experiment(&self, id: ExperimentId) -> ServiceResult<Experiment> {
        Ok(self.store.get_experiment(id).await?)
    }

    pub async fn update_experiment(
        &self,
        id: ExperimentId,
        patch: ExperimentPatch,
    ) -> ServiceResult<Experiment> {
        if patch.baseline_pipeline.is_some()
            || patch.candidate_pipeline.is_some()
            || patch.parameters.is_some()
        {
            let current = self.store.get_experiment(id).await?;
            let pick = |p: &Option<String>, c: &String| p.clone().unwrap_or_else(|| c.clone());
            self.check_experiment_pipelines(
                &pick(&patch.baseline_pipeline, &current.baseline_pipeline),
                &pick(&patch.candidate_pipeline, &current.candidate_pipeline),
                patch.parameters.as_ref().unwrap_or(&current.parameters),
            )
            .await?;
        }
        let (exp, event) = self
            .store
            .update_experiment(id, patch, self.clock.now())
            .await?;
        if let Some(event) = &event {
            self.events.experiment_event(&exp, event).await;
        }
        Ok(exp)
    }

    pub async fn delete_experiment(&self, id: ExperimentId) -> ServiceResult<()> {
        self.store.delete_experiment(id).await?;
        self.events.experiment_deleted(id).await;
        Ok(())
    }

    pub async fn experiment_events(
        &self,
        id: ExperimentId,
        after_seq: i64,
        limit: u32,
    ) -> ServiceResult<Vec<ExperimentEvent>> {
        // 404 for an unknown experiment rather than an empty history.
        self.store.get_experiment(id).await?;
        Ok(self
            .store
            .list_experiment_events(id, after_seq, limit)
            .await?)
    }

    /// `pending → initializing`: one `deployment` and one `experiment` task per target host,
    /// enqueued in the same transaction as the phase change.
    pub async fn start_experiment(&self, id: ExperimentId) -> ServiceResult<TransitionOutcome> {
        let mut exp = self.store.get_experiment(id).await?;
        if exp.phase == phoenix_core::ExperimentPhase::Pending && !exp.target_selector.is_empty() {
            exp = self.resolve_selector(exp).await?;
        }
        if exp.phase == phoenix_core::ExperimentPhase::Pending && exp.target_hosts.is_empty() {
            let mut e = FieldErrors::default();
            e.push(
                "target_hosts",
                "must list at least one host before the experiment can start",
            );
            return Err(e.into());
        }
        // User templates are rendered here: agents only know the built-ins.
        let baseline = self
            .materialize_pipeline(&exp.baseline_pipeline, &exp.parameters)
            .await?;
        let candidate = self
            .materialize_pipeline(&exp.candidate_pipeline, &exp.parameters)
            .await?;
        let mut tasks = Vec::with_capacity(exp.target_hosts.len() * 2);
        for host in &exp.target_hosts {
            let variant = match exp.mode {
                ExperimentMode::Shadow => "both",
                ExperimentMode::Split => {
                    split_assignment(exp.id, host, exp.candidate_share_percent.unwrap_or(50))
                }
            };
            let mut deploy = NewTask::new(
                TaskType::Deployment,
                json!({
                    "experiment_id": exp.id,
                    "baseline_pipeline": baseline,
                    "candidate_pipeline": candidate,
                    "parameters": exp.parameters,
                }),
            )
            .for_host(host.clone());
            deploy.experiment_id = Some(exp.id);
            deploy.priority = priority::START + 1;
            deploy.idempotency_key = Some(format!("experiment:{}:deploy:{host}", exp.id));
            let mut run = NewTask::new(
                TaskType::Experiment,
                json!({
                    "action": "start",
                    "experiment_id": exp.id,
                    "mode": exp.mode,
                    "variant": variant,
                    "duration_seconds": exp.duration_seconds,
                }),
            )
            .for_host(host.clone());
            run.experiment_id = Some(exp.id);
            run.priority = priority::START;
            run.idempotency_key = Some(format!("experiment:{}:start:{host}", exp.id));
            tasks.push(deploy);
            tasks.push(run);
        }
        self.transition(id, ExperimentCommand::Start, &tasks).await
    }

    /// Adds the enrolled, unrevoked agents matching the experiment's `target_selector` to its
    /// `target_hosts` (an `updated` event records them). A selector that matches nobody,
    /// with no host listed either, is a 409: there would be nothing to run on.
    async fn resolve_selector(&self, exp: Experiment) -> ServiceResult<Experiment> {
        let matched = self
            .agents_matching(&exp.target_selector, &exp.target_hosts)
            .await?;
        if matched.is_empty() {
            if exp.target_hosts.is_empty() {
                let sel = exp
                    .target_selector
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",");
                return Err(ServiceError::Conflict {
                    code: "no_targets",
                    message: format!(
                        "target_selector {{{sel}}} matches no enrolled agent and target_hosts is empty: nothing to run the experiment on"
                    ),
                });
            }
            return Ok(exp);
        }
        let mut hosts = exp.target_hosts.clone();
        hosts.extend(matched);
        if hosts.len() > phoenix_core::experiment::MAX_TARGET_HOSTS {
            return Err(ServiceError::Conflict {
                code: "too_many_targets",
                message: format!(
                    "target_selector matches {} hosts; at most {} can take part in one experiment",
                    hosts.len(),
                    phoenix_core::experiment::MAX_TARGET_HOSTS
                ),
            });
        }
        let patch = ExperimentPatch {
            target_hosts: Some(hosts),
            ..Default::default()
        };
        let (exp, event) = self
            .store
            .update_experiment(exp.id, patch, self.clock.now())
            .await?;
        if let Some(event) = &event {
            self.events.experiment_event(&exp, event).await;
        }
        Ok(exp)
    }

    pub async fn stop_experiment(
        &self,
        id: ExperimentId,
        reason: Option<String>,
    ) -> ServiceResult<TransitionOutcome> {
        self.end_with_action(
            id,
            ExperimentCommand::Stop { reason },
            "stop",
            priority::STOP,
        )
        .await
    }

    pub async fn rollback_experiment(
        &self,
        id: ExperimentId,
        reason: Option<String>,
    ) -> ServiceResult<TransitionOutcome> {
        self.end_with_action(
            id,
            ExperimentCommand::Rollback { reason },
            "rollback",
            priority::ROLLBACK,
        )
        .await
    }

    /// Ends a run that cannot go on (a target failed, too few targets left, a start timed
    /// out): `failed` with the reason, and every target that may have started gets a `stop`.
    pub(crate) async fn fail_run(&self, id: ExperimentId, reason: String) -> ServiceResult<()> {
        self.end_with_action(
            id,
            ExperimentCommand::Fail { reason },
            "stop",
            priority::STOP,
        )
        .await?;
        Ok(())
    }

    /// Stop, rollback and failure tell every target host, when the experiment had started
    /// there.
    async fn end_with_action(
        &self,
        id: ExperimentId,
        command: ExperimentCommand,
        action: &str,
        prio: i32,
    ) -> ServiceResult<TransitionOutcome> {
        let exp = self.store.get_experiment(id).await?;
        let started =
            exp.phase.is_active() || exp.phase == phoenix_core::ExperimentPhase::Completed;
        let tasks: Vec<NewTask> = if started {
            exp.target_hosts
                .iter()
                .map(|host| {
                    let mut t = NewTask::new(
                        TaskType::Experiment,
                        json!({ "action": action, "experiment_id": exp.id }),
                    )
                    .for_host(host.clone());
                    t.experiment_id = Some(exp.id);
                    t.priority = prio;
                    t.idempotency_key = Some(format!("experiment:{}:{action}:{host}", exp.id));
                    t
                })
                .collect()
        } else {
            Vec::new()
        };
        self.transition(id, command, &tasks).await
    }

    pub async fn transition(
        &self,
        id: ExperimentId,
        command: ExperimentCommand,
        tasks: &[NewTask],
    ) -> ServiceResult<TransitionOutcome> {
        let outcome = self
            .store
            .transition_experiment(id, &command, tasks, self.clock.now())
            .await?;
        for t in &outcome.tasks {
            self.waiters.wake_for(t.host_id.as_ref());
        }
        self.events
            .experiment_event(&outcome.experiment, &outcome.event)
            .await;
        tracing::info!(
            experiment_id = %id,
            from = %outcome.event.from_phase.map(|p| p.as_str()).unwrap_or("-"),
            to = %outcome.experiment.phase,
            tasks = outcome.tasks.len(),
            "experiment transition"
        );
        Ok(outcome)
    }

    // ---- task queue ----

    pub async fn enqueue_task(&self, task: NewTask) -> ServiceResult<Enqueued> {
        task.validate()?;
        let enqueued = batched(self.enqueues.call(task).await, "enqueue")?;
        if enqueued.created {
            self.waiters.wake_for(enqueued.task.host_id.as_ref());
        }
        Ok(enqueued)
    }

    pub async fn get_task(&self, id: TaskId) -> ServiceResult<Task> {
        Ok(self.store.get_task(id).await?)
    }

    pub async fn list_tasks(&self, q: &TaskQuery) -> ServiceResult<Page<Task>> {
        Ok(self.store.list_tasks(q).await?)
    }

    /// The long-poll: claim at once if anything is queued for `host`; otherwise park (holding
    /// no database connection) until woken or until `wait` passes.
    pub async fn poll_tasks(&self, host: &HostId, wait: Duration) -> ServiceResult<Vec<Task>> {
        let wait = wait.min(self.timings.long_poll_max);
        let started = tokio::time::Instant::now();
        let deadline = started + wait;
        // Two heartbeats missed while parked: the agent may be frozen (SIGSTOP) or cut off,
        // and what this poll claimed would sit with it until the lease lapses. Answer empty
        // instead; a live agent whose heartbeats reach another replica just polls again.
        let quiet_after = self.timings.heartbeat_interval * 2 + Duration::from_secs(1);
        let registration = self.waiters.register(host);
        let mut woken = false;
        loop {
            if woken && started.elapsed() > quiet_after {
                let heard = self
                    .last_heard
                    .get(host)
                    .map_or(started, |t| (*t).max(started));
                if heard.elapsed() > quiet_after {
                    tracing::debug!(host_id = %host, "parked poll of a quiet agent ends without claiming");
                    return Ok(Vec::new());
                }
            }
            // Arm both notifications before looking, so an enqueue between the claim and the
            // wait is not missed.
            let host_notified = registration.notify.notified();
            let any_notified = self.waiters.any_host().notified();
            tokio::pin!(host_notified, any_notified);
            host_notified.as_mut().enable();
            any_notified.as_mut().enable();

            let tasks = batched(
                self.claims
                    .call((host.clone(), self.timings.claim_batch_max))
                    .await,
                "claim",
            )?;
            if !tasks.is_empty() || wait.is_zero() {
                return Ok(tasks);
            }
            tokio::select! {
                _ = &mut host_notified => {}
                _ = &mut any_notified => {}
                _ = tokio::time::sleep_until(deadline) => return Ok(Vec::new()),
            }
            woken = true;
        }
    }

    pub async fn update_task_status(
        &self,
        id: TaskId,
        host: &HostId,
        update: TaskStatusUpdate,
    ) -> ServiceResult<Task> {
        let mut e = FieldErrors::default();
        if matches!(update.status, TaskStatus::Pending | TaskStatus::Assigned) {
            e.push(
                "status",
                "an agent may only report running, completed or failed",
            );
        }
        if update.error.as_ref().is_some_and(|m| m.len() > 8192) {
            e.push("error", "must be at most 8192 bytes");
        }
        e.into_result()?;
        let task = batched(
            self.reports.call((id, host.clone(), update)).await,
            "status report",
        )?;
        self.follow_experiment_task(&task).await;
        Ok(task)
    }

    /// Move an experiment on when its targets report: `initializing → running` once every
    /// target runs its A/B (its `start` task is running or done), and when a target's
    /// deployment or start task fails: `→ failed` with the host and the reason, or, under
    /// `analysis.on_target_failure: exclude`, the target leaves the run and the others go on.
    /// A move the state machine refuses (the experiment moved on meanwhile) is not an error.
    /// The full orchestration (analysis at the end of the duration, guardrails) belongs to
    /// the experiment scheduler.
    pub(crate) async fn follow_experiment_task(&self, task: &Task) {
        let Some(experiment_id) = task.experiment_id else {
            return;
        };
        let is_start = task.task_type == TaskType::Experiment
            && task.payload.get("action").and_then(|a| a.as_str()) == Some("start");
        if !is_start && task.task_type != TaskType::Deployment {
            return;
        }
        let result = match task.status {
            TaskStatus::Failed => {
                let host = task.host_id.as_ref().or(task.assigned_to.as_ref());
                let reason = format!(
                    "{} task failed: {}",
                    task.task_type.as_str(),
                    task.error.as_deref().unwrap_or("no reason given")
                );
                self.target_failed(experiment_id, host, reason).await
            }
            TaskStatus::Running | TaskStatus::Completed if is_start => {
                self.settle_targets(experiment_id).await
            }
            _ => return,
        };
        match result {
            Ok(()) => {}
            Err(ServiceError::Store(StoreError::Transition(e))) => {
                tracing::debug!(experiment_id = %experiment_id, error = %e,
                    "experiment already moved on");
            }
            Err(e) => {
                tracing::warn!(experiment_id = %experiment_id, error = %e,
                    "cannot move the experiment after a task report");
            }
        }
    }

    /// A target's deployment or start failed: fail the run, or exclude the target.
    async fn target_failed(
        &self,
        experiment_id: ExperimentId,
        host: Option<&HostId>,
        reason: String,
    ) -> ServiceResult<()> {
        let exp = self.store.get_experiment(experiment_id).await?;
        match host {
            Some(h)
                if exp.analysis.on_target_failure == phoenix_core::TargetFailurePolicy::Exclude
                    && exp.target_hosts.contains(h) =>
            {
                if exp.is_excluded(h) || !exp.phase.is_active() {
                    return Ok(());
                }
                self.exclude_targets(&exp, vec![(h.clone(), reason)])
                    .await?;
                self.settle_targets(experiment_id).await
            }
            _ => {
                let host = host.map_or("?", HostId::as_str);
                self.fail_run(experiment_id, format!("host {host}: {reason}"))
                    .await
            }
        }
    }

    /// Drops targets from the run (recorded on the experiment, with an `updated` event): their
    /// queued tasks of the experiment are cancelled and each gets a `stop`, in case it started.
    pub(crate) async fn exclude_targets(
        &self,
        exp: &Experiment,
        targets: Vec<(HostId, String)>,
    ) -> ServiceResult<()> {
        let stops: Vec<NewTask> = targets
            .iter()
            .map(|(host, _)| {
                let mut t = NewTask::new(
                    TaskType::Experiment,
                    json!({ "action": "stop", "experiment_id": exp.id }),
                )
                .for_host(host.clone());
                t.experiment_id = Some(exp.id);
                t.priority = priority::STOP;
                t.idempotency_key = Some(format!("experiment:{}:exclude:{host}", exp.id));
                t
            })
            .collect();
        for (host, reason) in &targets {
            tracing::warn!(experiment_id = %exp.id, host = %host, %reason, "target excluded from the experiment");
        }
        self.transition(
            exp.id,
            ExperimentCommand::ExcludeTargets { targets },
            &stops,
        )
        .await?;
        Ok(())
    }

    /// Looks at the targets still in the run: fewer than `min_targets` fails the experiment
    /// (under `exclude`); all of them running their A/B moves it to `running`.
    pub(crate) async fn settle_targets(&self, experiment_id: ExperimentId) -> ServiceResult<()> {
        let exp = self.store.get_experiment(experiment_id).await?;
        if !exp.phase.is_active() {
            return Ok(());
        }
        let active = exp.active_targets().count();
        let policy = exp.analysis.on_target_failure;
        if policy == phoenix_core::TargetFailurePolicy::Exclude
            && active < exp.analysis.min_targets as usize
        {
            let excluded = exp
                .excluded_targets
                .iter()
                .take(20)
                .map(|x| format!("{} ({})", x.host_id, x.reason))
                .collect::<Vec<_>>()
                .join("; ");
            return self
                .fail_run(
                    experiment_id,
                    format!(
                        "{active} target(s) left, fewer than min_targets {}; excluded: {excluded}",
                        exp.analysis.min_targets
                    ),
                )
                .await;
        }
        if exp.phase == phoenix_core::ExperimentPhase::Initializing
            && self.all_targets_started(&exp).await?
        {
            self.transition(experiment_id, ExperimentCommand::MarkRunning, &[])
                .await?;
        }
        Ok(())
    }

    /// Whether the `start` task of every target still in the run is running or completed.
    async fn all_targets_started(&self, exp: &Experiment) -> ServiceResult<bool> {
        let page = self
            .store
            .list_tasks(&TaskQuery {
                experiment_id: Some(exp.id),
                limit: 10_000,
                ..TaskQuery::default()
            })
            .await?;
        let starts: Vec<&Task> = page
            .items
            .iter()
            .filter(|t| {
                t.task_type == TaskType::Experiment
                    && t.payload.get("action").and_then(|a| a.as_str()) == Some("start")
                    && t.host_id.as_ref().is_none_or(|h| !exp.is_excluded(h))
            })
            .collect();
        Ok(!starts.is_empty()
            && starts
                .iter()
                .all(|t| matches!(t.status, TaskStatus::Running | TaskStatus::Completed)))
    }

    /// Return lapsed leases to the queue and wake whoever can take them; wake hosts whose
    /// delayed tasks just became due. Runs on every replica; both steps are idempotent.
    pub async fn tick_queue(
        &self,
        last_tick: chrono::DateTime<Utc>,
    ) -> ServiceResult<chrono::DateTime<Utc>> {
        let now = self.clock.now();
        let expired = self.store.expire_leases(now).await?;
        for t in &expired {
            if t.status == TaskStatus::Pending {
                self.waiters.wake_for(t.host_id.as_ref());
            }
            tracing::warn!(task_id = %t.id, status = %t.status, error = ?t.error, "task lease expired");
            self.follow_experiment_task(t).await;
        }
        for host in self.store.hosts_with_tasks_due(last_tick, now).await? {
            self.waiters.wake_for(host.as_ref());
        }
        Ok(now)
    }

    // ---- agents ----

    pub async fn enroll(&self, host: HostId, token: &str) -> ServiceResult<Enrollment> {
        if !self.bootstrap_token_matches(token) {
            return Err(ServiceError::Unauthorized(
                "invalid enrollment token".into(),
            ));
        }
        self.enroll_checked(host).await
    }

    /// Whether `token` is the bootstrap enrollment token (configured, or generated at first
    /// start). Tokens issued at `/api/v1/enrollment-tokens` are checked by the auth service.
    pub fn bootstrap_token_matches(&self, token: &str) -> bool {
        bool::from(token.as_bytes().ct_eq(self.enrollment_token.as_bytes()))
    }

    /// Enroll `host` whose enrollment token has been checked: a new secret, shown once.
    pub async fn enroll_checked(&self, host: HostId) -> ServiceResult<Enrollment> {
        let secret = {
            use rand::RngCore;
            let mut bytes = [0u8; 32];
            rand::thread_rng().fill_bytes(&mut bytes);
            hex::encode(bytes)
        };
        let secret_hash = hash_secret(&secret);
        self.store
            .enroll_agent(&host, &secret_hash, self.clock.now())
            .await?;
        self.credentials.insert(
            host.clone(),
            CachedCredentials {
                secret_hash,
                revoked: false,
                fetched: Instant::now(),
            },
        );
        tracing::info!(host_id = %host, "agent enrolled");
        self.events.agent_enrolled(&host).await;
        Ok(Enrollment {
            host_id: host,
            agent_secret: secret,
        })
    }

    /// Whether `token` is the enrollment token (constant-time).
    pub fn enrollment_token_matches(&self, token: &str) -> bool {
        bool::from(token.as_bytes().ct_eq(self.enrollment_token.as_bytes()))
    }

    /// Check an agent's credentials. Unknown, revoked and wrong-secret all answer 401.
    pub async fn authenticate_agent(&self, host: &HostId, secret: &str) -> ServiceResult<()> {
        let presented = hash_secret(secret);
        let cached = self
            .credentials
            .get(host)
            .filter(|c| c.fetched.elapsed() < CREDENTIALS_TTL)
            .map(|c| c.clone());
        if let Some(creds) = cached {
            if creds.revoked {
                return Err(revoked(host));
            }
            if secret_matches(&presented, &creds.secret_hash) {
                return Ok(());
            }
            // A mismatch may mean the agent enrolled again through another replica: ask the
            // database before refusing.
        }
        let Some(creds) = self.store.agent_credentials(host).await? else {
            self.credentials.remove(host);
            return Err(ServiceError::Unauthorized(format!(
                "agent {host} is not enrolled"
            )));
        };
        self.credentials.insert(
            host.clone(),
            CachedCredentials {
                secret_hash: creds.secret_hash.clone(),
                revoked: creds.revoked,
                fetched: Instant::now(),
            },
        );
        if !secret_matches(&presented, &creds.secret_hash) {
            return Err(ServiceError::Unauthorized(format!(
                "wrong secret for agent {host}"
            )));
        }
        if creds.revoked {
            return Err(revoked(host));
        }
        Ok(())
    }

    /// Drop cached credentials of one agent (it enrolled again or was revoked, possibly on
    /// another replica), or of every agent (`None`: notifications may have been missed).
    pub fn forget_agent_credentials(&self, host: Option<&HostId>) {
        match host {
            Some(host) => {
                self.credentials.remove(host);
            }
            None => self.credentials.clear(),
        }
    }

    /// Revoke an agent: its next call gets 401, on every replica, and the tasks it holds go
    /// back to the queue when their lease lapses.
    pub async fn revoke_agent(&self, host: &HostId) -> ServiceResult<()> {
        self.store.revoke_agent(host, self.clock.now()).await?;
        self.forget_agent_credentials(Some(host));
        tracing::info!(host_id = %host, "agent revoked");
        self.events.agent_revoked(host).await;
        Ok(())
    }

    /// Revoke an agent and put the tasks it holds back in the queue at once (not when their
    /// lease lapses); returns how many went back.
    pub async fn revoke_agent_and_requeue(&self, host: &HostId) -> ServiceResult<u64> {
        self.revoke_agent(host).await?;
        let now = self.clock.now();
        // Everything assigned up to now (and a second's slack for clock granularity).
        let released = self
            .store
            .release_unheld_tasks(host, &[], now + chrono::Duration::seconds(1), now)
            .await?;
        for t in &released {
            if t.status == TaskStatus::Pending {
                self.waiters.wake_for(t.host_id.as_ref());
            }
            self.follow_experiment_task(t).await;
        }
        Ok(released.len() as u64)
    }

    /// A heartbeat also renews the leases of the tasks the agent holds: a long-running
    /// experiment task stays with a live agent and returns to the queue when it goes quiet.
    pub async fn heartbeat(&self, host: &HostId, hb: Heartbeat) -> ServiceResult<u64> {
        hb.validate()?;
        self.last_heard
            .insert(host.clone(), tokio::time::Instant::now());
        let held = hb.held_tasks.clone();
        let renewed = batched(self.heartbeats.call((host.clone(), hb)).await, "heartbeat")?;
        // More leases than tasks the agent holds: some delivery was lost.
        if let Some(held) = held {
            if renewed > held.len() as u64 {
                self.release_unheld(host, &held).await?;
            }
        }
        Ok(renewed)
    }

    /// Put back in the queue what `host` was given but does not hold (see
    /// [`Heartbeat::held_tasks`]).
    async fn release_unheld(&self, host: &HostId, held: &[TaskId]) -> ServiceResult<()> {
        let now = self.clock.now();
        let before = now - chrono::Duration::seconds(phoenix_core::agent::HELD_TASKS_GRACE_SECONDS);
        let released = self
            .store
            .release_unheld_tasks(host, held, before, now)
            .await?;
        for t in &released {
            tracing::warn!(task_id = %t.id, host_id = %host, status = %t.status,
                "task delivered to an agent that does not hold it; back to the queue");
            if t.status == TaskStatus::Pending {
                self.waiters.wake_for(t.host_id.as_ref());
            }
            self.follow_experiment_task(t).await;
        }
        Ok(())
    }

    pub async fn ingest_kpis(
        &self,
        host: &HostId,
        batches: Vec<KpiBatch>,
    ) -> ServiceResult<KpiInsertOutcome> {
        let mut e = FieldErrors::default();
        if batches.len() > MAX_KPI_BATCHES_PER_REQUEST {
            e.push(
                "batches",
                format!("must hold at most {MAX_KPI_BATCHES_PER_REQUEST} batches"),
            );
        }
        let mut seen = std::collections::HashSet::new();
        for (i, b) in batches.iter().enumerate() {
            b.validate(&format!("batches[{i}]"), &mut e);
            if !seen.insert(b.batch_id) {
                e.push(
                    format!("batches[{i}].batch_id"),
                    "appears twice in this request",
                );
            }
        }
        e.into_result()?;
        let outcome = self
            .store
            .insert_kpi_batches(host, &batches, self.clock.now())
            .await?;
        // A replayed request adds nothing to the live summaries (which of a partly replayed
        // request's batches were new is not known: those stay out too).
        if outcome.duplicates == 0 {
            self.events.kpis_received(&batches);
        }
        self.ingest_label_stats(host, &batches).await?;
        Ok(outcome)
    }

    pub async fn ingest_logs(
        &self,
        host: &HostId,
        entries: Vec<AgentLogEntry>,
    ) -> ServiceResult<u64> {
        let mut e = FieldErrors::default();
        if entries.len() > MAX_LOG_ENTRIES_PER_REQUEST {
            e.push(
                "entries",
                format!("must hold at most {MAX_LOG_ENTRIES_PER_REQUEST} entries"),
            );
        }
        for (i, l) in entries.iter().enumerate() {
            if l.message.len() > MAX_LOG_MESSAGE_BYTES {
                e.push(
                    format!("entries[{i}].message"),
                    format!("must be at most {MAX_LOG_MESSAGE_BYTES} bytes"),
                );
            }
        }
        e.into_result()?;
        Ok(self
            .store
            .insert_agent_logs(host, &entries, self.clock.now())
            .await?)
    }

    pub async fn fleet_status(&self) -> ServiceResult<FleetStatus> {
        let now = self.clock.now();
        let agents = self.store.list_agents().await?;
        let counts = self.store.task_counts().await?;
        let mut held: HashMap<HostId, u64> = HashMap::new();
        for status in [TaskStatus::Assigned, TaskStatus::Running] {
            let page = self
                .store
                .list_tasks(&TaskQuery {
                    status: Some(status),
                    limit: 10_000,
                    ..Default::default()
                })
                .await?;
            for t in page.items {
                if let Some(h) = t.assigned_to {
                    *held.entry(h).or_default() += 1;
                }
            }
        }
        let hb = chrono::Duration::from_std(self.timings.heartbeat_interval)
            .unwrap_or(chrono::Duration::seconds(10));
        let off = chrono::Duration::from_std(self.timings.offline_after)
            .unwrap_or(chrono::Duration::seconds(300));
        let mut by_health = BTreeMap::new();
        let mut versions = BTreeMap::new();
        let fleet: Vec<FleetAgent> = agents
            .into_iter()
            .map(|a| {
                let health = if a.revoked {
                    AgentHealth::Revoked
                } else {
                    AgentHealth::classify(now, a.last_seen_at, hb, off)
                };
                *by_health
                    .entry(health_name(health).to_string())
                    .or_insert(0) += 1;
                if !a.version.is_empty() {
                    *versions.entry(a.version.clone()).or_insert(0) += 1;
                }
                FleetAgent {
                    running_tasks: held.get(&a.host_id).copied().unwrap_or(0),
                    last_seen_seconds_ago: a
                        .last_seen_at
                        .map(|t| (now - t).num_milliseconds() as f64 / 1000.0),
                    host_id: a.host_id,
                    hostname: a.hostname,
                    version: a.version,
                    health,
                    last_seen_at: a.last_seen_at,
                    labels: a.labels,
                    resource_usage: a.resource_usage,
                    running_pipelines: a.running_pipelines,
                }
            })
            .collect();
        Ok(FleetStatus {
            total: fleet.len(),
            by_health,
            versions,
            task_queue: counts
                .into_iter()
                .map(|(s, n)| (s.as_str().to_string(), n))
                .collect(),
            agents: fleet,
        })
    }
}

pub fn health_name(h: AgentHealth) -> &'static str {
    match h {
        AgentHealth::Healthy => "healthy",
        AgentHealth::Stale => "stale",
        AgentHealth::Offline => "offline",
        AgentHealth::Unknown => "unknown",
        AgentHealth::Revoked => "revoked",
    }
}

pub const MAX_KPI_BATCHES_PER_REQUEST: usize = 1000;
pub const MAX_LOG_ENTRIES_PER_REQUEST: usize = 1000;
pub const MAX_LOG_MESSAGE_BYTES: usize = 8192;

impl From<ServiceError> for crate::error::ApiError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Store(s) => s.into(),
            ServiceError::Invalid(f) => f.into(),
            ServiceError::Unauthorized(m) => crate::error::ApiError::unauthorized(m),
            ServiceError::Conflict { code, message } => {
                crate::error::ApiError::new(axum::http::StatusCode::CONFLICT, code, message)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_assignment_is_stable_and_close_to_the_share() {
        let exp = ExperimentId::new();
        let hosts: Vec<HostId> = (0..2000)
            .map(|i| HostId::parse(&format!("host-{i}")).unwrap())
            .collect();
        let first: Vec<_> = hosts.iter().map(|h| split_assignment(exp, h, 30)).collect();
        let again: Vec<_> = hosts.iter().map(|h| split_assignment(exp, h, 30)).collect();
        assert_eq!(first, again);
        let candidates = first.iter().filter(|v| **v == "candidate").count();
        assert!(
            (500..700).contains(&candidates),
            "{candidates} of 2000 for a 30% share"
        );
    }
}
