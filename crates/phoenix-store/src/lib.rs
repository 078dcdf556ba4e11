//! Phoenix's persistence: one [`Store`] trait, implemented over SQLite (embedded, the default:
//! one API process, nothing to install) and PostgreSQL (several stateless API replicas). The
//! same conformance suite runs unchanged against both (`tests/conformance.rs`).
//!
//! The task queue lives here: enqueue with idempotency keys, atomic claims with a lease,
//! lease expiry back to `pending` up to `max_attempts`, status updates only by the holder.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use futures::Stream;
use serde::{Deserialize, Serialize};

use phoenix_core::{
    Agent, DeploymentId, Experiment, ExperimentCommand, ExperimentEvent, ExperimentId,
    ExperimentPatch, ExperimentPhase, Heartbeat, HostId, KpiBatch, NewTask, PipelineDeployment,
    Task, TaskId, TaskStatus, Variant,
};

pub mod auth;
mod common;
#[cfg(feature = "testsuite")]
pub mod conformance;
mod error;
pub mod postgres;
pub mod sqlite;
mod topic_events;

pub use auth::{
    ApiKeyRecord, AuthStore, EnrollmentTokenRecord, EnrollmentTokenUse, RefreshOutcome, Role,
    SessionRecord, UserPatch, UserRecord,
};
pub use error::StoreError;
pub use postgres::PgStore;
pub use sqlite::SqliteStore;
pub use topic_events::{NewTopicEvent, TopicEvent, TopicNotice, TopicNoticeStream};

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Which database a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A page of results.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Rows matching the filter, all pages together.
    pub total: u64,
    pub limit: u32,
    pub offset: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExperimentQuery {
    pub phase: Option<ExperimentPhase>,
    pub limit: u32,
    pub offset: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskQuery {
    pub status: Option<TaskStatus>,
    pub host_id: Option<HostId>,
    pub experiment_id: Option<ExperimentId>,
    pub limit: u32,
    pub offset: u64,
}

/// An accepted experiment command, as persisted: the experiment after it, the one event it
/// emitted, and the tasks enqueued in the same transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct TransitionOutcome {
    pub experiment: Experiment,
    pub event: ExperimentEvent,
    pub tasks: Vec<Task>,
}

/// The result of an enqueue: `created` is false when the idempotency key already named a task.
#[derive(Debug, Clone, PartialEq)]
pub struct Enqueued {
    pub task: Task,
    pub created: bool,
}

/// What the holder of a task reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskStatusUpdate {
    pub status: TaskStatus,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub result: Option<serde_json::Value>,
}

/// What an agent needs to prove to be itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentCredentials {
    pub host_id: HostId,
    /// Hex SHA-256 of the agent's secret (the secret is 256 random bits, so a plain hash is
    /// enough; nothing to brute-force).
    pub secret_hash: String,
    pub revoked: bool,
}

/// Counts of one KPI insert: replays are accepted and not stored twice.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct KpiInsertOutcome {
    pub inserted: u64,
    pub duplicates: u64,
}

/// A KPI batch as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredKpiBatch {
    pub host_id: HostId,
    pub received_at: DateTime<Utc>,
    #[serde(flatten)]
    pub batch: KpiBatch,
}

/// A host's latest label statistics, as stored (the report is kept as JSON; the API
/// decodes and merges it).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredLabelStats {
    pub host_id: HostId,
    pub interval_end: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
    pub stats: serde_json::Value,
}

/// One analysis run of an experiment: claimed by one API replica, then finished with its
/// result. `seq` is the interval number since the start, `-1` for the final analysis.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredAnalysis {
    pub experiment_id: ExperimentId,
    pub seq: i64,
    pub is_final: bool,
    pub runner: String,
    pub claimed_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub decision: Option<String>,
    pub result: Option<serde_json::Value>,
}

/// The `seq` of an experiment's final analysis.
pub const FINAL_ANALYSIS_SEQ: i64 = -1;

/// Severity of an agent log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Trace => "trace",
            Self::Debug => "debug",
            Self::Info => "info",
            Self::Warn => "warn",
            Self::Error => "error",
        }
    }
}

/// One log line an agent forwarded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentLogEntry {
    pub at: DateTime<Utc>,
    pub level: LogLevel,
    pub message: String,
    #[serde(default)]
    pub fields: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredAgentLog {
    pub host_id: HostId,
    pub received_at: DateTime<Utc>,
    #[serde(flatten)]
    pub entry: AgentLogEntry,
}

/// Why a long-poll should look at the queue again (or, for [`Wakeup::AgentChanged`], why
/// cached agent credentials are stale).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wakeup {
    /// A task for this host became claimable.
    Host(HostId),
    /// A task any host may claim became claimable.
    AnyHost,
    /// Notifications may have been missed (the listener reconnected): everyone looks again,
    /// and anything cached from the database is suspect.
    Resync,
    /// This agent was enrolled again (a new secret) or revoked: forget cached credentials.
    AgentChanged(HostId),
}

pub type WakeupStream = Pin<Box<dyn Stream<Item = Wakeup> + Send>>;

/// Everything Phoenix persists. Implementations must be safe to share between tasks and, for
/// PostgreSQL, between API processes on one database.
#[async_trait]
pub trait Store: AuthStore + Send + Sync + Debug + 'static {
    fn backend(&self) -> Backend;

    /// Reachability check for `/ready`.
    async fn ping(&self) -> Result<()>;

    // ---- experiments ----

    /// Insert a new (pending) experiment and its `created` event.
    async fn create_experiment(&self, experiment: &Experiment) -> Result<ExperimentEvent>;
    async fn get_experiment(&self, id: ExperimentId) -> Result<Experiment>;
    async fn list_experiments(&self, query: &ExperimentQuery) -> Result<Page<Experiment>>;
    /// Apply a patch under the core rules ([`Experiment::apply_patch`]) in one transaction;
    /// emits an `updated` event when something changed.
    async fn update_experiment(
        &self,
        id: ExperimentId,
        patch: ExperimentPatch,
        now: DateTime<Utc>,
    ) -> Result<(Experiment, Option<ExperimentEvent>)>;
    /// Delete an experiment that is not active (pending or terminal), with its events.
    async fn delete_experiment(&self, id: ExperimentId) -> Result<()>;
    /// Run a command through the state machine ([`phoenix_core::apply_command`]) and, in the
    /// same transaction, persist the new phase, its event and the tasks to enqueue.
    async fn transition_experiment(
        &self,
        id: ExperimentId,
        command: &ExperimentCommand,
        enqueue: &[NewTask],
        now: DateTime<Utc>,
    ) -> Result<TransitionOutcome>;
    /// Events with `seq > after_seq`, oldest first.
    async fn list_experiment_events(
        &self,
        id: ExperimentId,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<ExperimentEvent>>;
    /// Phases for `/metrics`: every experiment not in a terminal phase, and the terminal
    /// ones that ended (or, without an end time, were last updated) at or after
    /// `finished_since`, by id.
    async fn experiment_phases(
        &self,
        finished_since: DateTime<Utc>,
    ) -> Result<Vec<(ExperimentId, ExperimentPhase)>>;

    // ---- task queue ----

    async fn enqueue_task(&self, task: &NewTask, now: DateTime<Utc>) -> Result<Enqueued>;
    /// Enqueue many tasks at once (the API gathers concurrent enqueues): each follows the
    /// rules of [`Store::enqueue_task`] (a repeated idempotency key, also within the batch,
    /// answers the existing task) and gets its own outcome, in the order given. The outer
    /// error means the database failed; some tasks may have been enqueued (an idempotency key
    /// makes a retry safe).
    async fn enqueue_tasks(
        &self,
        tasks: &[NewTask],
        now: DateTime<Utc>,
    ) -> Result<Vec<Result<Enqueued>>> {
        let mut outcomes = Vec::with_capacity(tasks.len());
        for task in tasks {
            match self.enqueue_task(task, now).await {
                Err(e) if e.is_database_failure() => return Err(e),
                outcome => outcomes.push(outcome),
            }
        }
        Ok(outcomes)
    }
    async fn get_task(&self, id: TaskId) -> Result<Task>;
    async fn list_tasks(&self, query: &TaskQuery) -> Result<Page<Task>>;
    /// Atomically claim up to `limit` claimable tasks for `host` (targeted at it or at any
    /// host; `not_before` passed), highest priority first then oldest: they become `assigned`
    /// to `host` with a lease until `now + lease` and their `attempts` grows by one.
    async fn claim_tasks(
        &self,
        host: &HostId,
        limit: u32,
        lease: Duration,
        now: DateTime<Utc>,
    ) -> Result<Vec<Task>>;
    /// Claims for many hosts in one transaction (the API gathers the long-polls that wake
    /// together, so a burst of deliveries costs one commit): each entry is answered as
    /// [`Store::claim_tasks`] would answer it, in order; no task goes to two entries.
    async fn claim_tasks_for_hosts(
        &self,
        claims: &[(HostId, u32)],
        lease: Duration,
        now: DateTime<Utc>,
    ) -> Result<Vec<Vec<Task>>> {
        let mut claimed = Vec::with_capacity(claims.len());
        for (host, limit) in claims {
            claimed.push(self.claim_tasks(host, *limit, lease, now).await?);
        }
        Ok(claimed)
    }
    /// Report on a held task. Only the holder may (others: [`StoreError::TaskNotHeld`]);
    /// `running` renews the lease; repeating the terminal status already recorded by the same
    /// host returns the task unchanged (an agent retrying after a lost response).
    async fn update_task_status(
        &self,
        id: TaskId,
        host: &HostId,
        update: &TaskStatusUpdate,
        lease: Duration,
        now: DateTime<Utc>,
    ) -> Result<Task>;
    /// Report on many tasks `host` holds at once (an agent finishing a claimed batch): each
    /// report follows the rules of [`Store::update_task_status`] and gets its own outcome, in
    /// the order given. The outer error means the database failed; reports before the failure
    /// may have been applied, and sending them again is safe (a repeated terminal report is
    /// idempotent). Backends apply the reports in one round trip; this default reports them
    /// one by one.
    async fn complete_tasks(
        &self,
        host: &HostId,
        reports: &[(TaskId, TaskStatusUpdate)],
        lease: Duration,
        now: DateTime<Utc>,
    ) -> Result<Vec<Result<Task>>> {
        let mut outcomes = Vec::with_capacity(reports.len());
        for (id, update) in reports {
            match self.update_task_status(*id, host, update, lease, now).await {
                Err(e) if e.is_database_failure() => return Err(e),
                outcome => outcomes.push(outcome),
            }
        }
        Ok(outcomes)
    }

    /// Status reports from many hosts at once (the API gathers concurrent reports): each
    /// follows the rules of [`Store::update_task_status`] and gets its own outcome, in the
    /// order given. Backends apply them with set-based statements. The outer error means the
    /// database failed; reports may have been applied, and sending them again is safe (a
    /// repeated terminal report is idempotent, a repeated `running` renews the lease).
    async fn report_task_statuses(
        &self,
        reports: &[(TaskId, HostId, TaskStatusUpdate)],
        lease: Duration,
        now: DateTime<Utc>,
    ) -> Result<Vec<Result<Task>>> {
        let mut outcomes = Vec::with_capacity(reports.len());
        for (id, host, update) in reports {
            match self.update_task_status(*id, host, update, lease, now).await {
                Err(e) if e.is_database_failure() => return Err(e),
                outcome => outcomes.push(outcome),
            }
        }
        Ok(outcomes)
    }

    /// Push the lease of every task `host` holds to `now + lease` (called on heartbeat).
    async fn renew_leases(&self, host: &HostId, lease: Duration, now: DateTime<Utc>)
        -> Result<u64>;
    /// Put back in the queue the tasks assigned to `host` before `assigned_before` that are
    /// not in `held` (what its agent says it holds): their delivery was lost. Like a lapsed
    /// lease, each goes back to `pending`, or to `failed` once it used `max_attempts`;
    /// returns the tasks as they are afterwards.
    async fn release_unheld_tasks(
        &self,
        host: &HostId,
        held: &[TaskId],
        assigned_before: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Vec<Task>>;
    /// Return tasks whose lease lapsed to `pending`, or to `failed` once they used
    /// `max_attempts`; returns the tasks as they are afterwards.
    async fn expire_leases(&self, now: DateTime<Utc>) -> Result<Vec<Task>>;
    /// Hosts (None = any host) with pending tasks whose `not_before` falls in `(after, now]`,
    /// so waiting long-polls can be woken when a delayed task becomes due.
    async fn hosts_with_tasks_due(
        &self,
        after: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Vec<Option<HostId>>>;
    /// Delete completed and failed tasks finished before `before`.
    async fn sweep_finished_tasks(&self, before: DateTime<Utc>) -> Result<u64>;
    async fn task_counts(&self) -> Result<BTreeMap<TaskStatus, u64>>;

    // ---- agents ----

    /// Create the agent, or give an existing non-revoked one a new secret.
    /// A revoked agent stays revoked ([`StoreError::AgentRevoked`]).
    async fn enroll_agent(
        &self,
        host: &HostId,
        secret_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<Agent>;
    async fn agent_credentials(&self, host: &HostId) -> Result<Option<AgentCredentials>>;
    /// Record a heartbeat: update the agent's last report and append to its history.
    /// Heartbeats and agent logs may be committed without waiting for durability (PostgreSQL:
    /// asynchronous commit); a database crash can lose the most recent ones.
    async fn record_heartbeat(
        &self,
        host: &HostId,
        heartbeat: &Heartbeat,
        now: DateTime<Utc>,
    ) -> Result<()>;
    /// Record the heartbeats of many agents and renew the leases of the tasks they hold, in
    /// one transaction (the API gathers the heartbeats that arrive together, so a fleet's
    /// heartbeats cost a few commits a second instead of one each). Outcome per entry, in
    /// order: the leases renewed for its host, or [`StoreError::AgentRevoked`] /
    /// [`StoreError::NotFound`]. The outer error means the database failed and nothing was
    /// recorded. Like [`Store::record_heartbeat`], this may commit without waiting for
    /// durability.
    async fn record_heartbeats(
        &self,
        beats: &[(HostId, Heartbeat)],
        lease: Duration,
        now: DateTime<Utc>,
    ) -> Result<Vec<Result<u64>>> {
        let mut outcomes = Vec::with_capacity(beats.len());
        for (host, heartbeat) in beats {
            let outcome = match self.record_heartbeat(host, heartbeat, now).await {
                Ok(()) => self.renew_leases(host, lease, now).await,
                Err(e) => Err(e),
            };
            match outcome {
                Err(e) if e.is_database_failure() => return Err(e),
                outcome => outcomes.push(outcome),
            }
        }
        Ok(outcomes)
    }
    async fn get_agent(&self, host: &HostId) -> Result<Agent>;
    async fn list_agents(&self) -> Result<Vec<Agent>>;
    async fn revoke_agent(&self, host: &HostId, now: DateTime<Utc>) -> Result<()>;
    /// Heartbeats recorded for a host since `since`.
    async fn count_heartbeats(&self, host: &HostId, since: DateTime<Utc>) -> Result<u64>;

    // ---- KPIs and logs ----

    /// Insert batches; a batch id already stored is counted as a duplicate, not stored again.
    async fn insert_kpi_batches(
        &self,
        host: &HostId,
        batches: &[KpiBatch],
        now: DateTime<Utc>,
    ) -> Result<KpiInsertOutcome>;
    async fn list_kpi_batches(
        &self,
        experiment_id: ExperimentId,
        limit: u32,
    ) -> Result<Vec<StoredKpiBatch>>;
    /// The most recent `max` KPI batches of an experiment, oldest first (not capped at a
    /// page): what an analysis reads.
    async fn experiment_kpis(
        &self,
        experiment_id: ExperimentId,
        max: u32,
    ) -> Result<Vec<StoredKpiBatch>>;

    // ---- pipeline deployments ----

    /// Store a new deployment, or replace the stored one with the same id.
    async fn save_pipeline_deployment(&self, d: &PipelineDeployment) -> Result<()>;
    async fn get_pipeline_deployment(&self, id: DeploymentId) -> Result<PipelineDeployment>;
    /// Newest first.
    async fn list_pipeline_deployments(
        &self,
        limit: u32,
        offset: u64,
    ) -> Result<Page<PipelineDeployment>>;

    // ---- analyses ----

    /// Take analysis `seq` of an experiment for `runner`. `true` for exactly one caller per
    /// (experiment, seq), however many replicas ask, except that a claim left unfinished
    /// since before `stale_before` (its replica died) can be taken over.
    async fn claim_analysis(
        &self,
        experiment_id: ExperimentId,
        seq: i64,
        is_final: bool,
        runner: &str,
        now: DateTime<Utc>,
        stale_before: DateTime<Utc>,
    ) -> Result<bool>;
    /// Record the result of a claimed analysis.
    async fn finish_analysis(
        &self,
        experiment_id: ExperimentId,
        seq: i64,
        decision: &str,
        result: &serde_json::Value,
        now: DateTime<Utc>,
    ) -> Result<()>;
    /// An experiment's analyses, newest first (the final one, when there is one, first).
    async fn list_analyses(
        &self,
        experiment_id: ExperimentId,
        limit: u32,
    ) -> Result<Vec<StoredAnalysis>>;

    /// Per experiment, the candidate's active-series reduction in percent over its most recent
    /// reported interval (summed across hosts).
    async fn latest_reduction_percent(&self) -> Result<Vec<(ExperimentId, f64)>>;
    async fn insert_agent_logs(
        &self,
        host: &HostId,
        logs: &[AgentLogEntry],
        now: DateTime<Utc>,
    ) -> Result<u64>;
    async fn list_agent_logs(&self, host: &HostId, limit: u32) -> Result<Vec<StoredAgentLog>>;

    // ---- settings and retention ----

    async fn get_setting(&self, key: &str) -> Result<Option<serde_json::Value>>;
    async fn put_setting(
        &self,
        key: &str,
        value: &serde_json::Value,
        now: DateTime<Utc>,
    ) -> Result<()>;
    /// Store `value` under `key` unless the key holds something already; returns what the key
    /// holds afterwards. Replicas starting at once agree on one value (the first written).
    async fn put_setting_if_absent(
        &self,
        key: &str,
        value: &serde_json::Value,
        now: DateTime<Utc>,
    ) -> Result<serde_json::Value>;
    /// Delete KPI batches, heartbeats and agent logs received before `before`.
    async fn sweep_telemetry(&self, before: DateTime<Utc>) -> Result<u64>;

    // ---- cross-replica wake-ups ----

    /// A stream of wake-ups published by any API process on the same database (PostgreSQL
    /// `LISTEN/NOTIFY`), or `None` where there is only one process (SQLite).
    async fn wakeups(&self) -> Result<Option<WakeupStream>>;

    // ---- real-time topic events (the WebSocket hub) ----

    /// Append events, each to its topic with that topic's next sequence number (1, 2, 3, …),
    /// assigned atomically: concurrent appends, from any API process on the database, never
    /// share or skip a number, and a topic's events commit in number order. Returned in the
    /// order given. On PostgreSQL, other processes hear of them through
    /// [`Store::topic_event_notices`] once committed.
    async fn append_topic_events(
        &self,
        events: &[NewTopicEvent],
        now: DateTime<Utc>,
    ) -> Result<Vec<TopicEvent>>;
    /// Events of `topic` with `seq > after_seq`, oldest first, at most `limit` (≤ 10,000).
    async fn list_topic_events(
        &self,
        topic: &str,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<TopicEvent>>;
    /// The last number given in `topic`: 0 before its first event; retention does not lower it.
    async fn topic_last_seq(&self, topic: &str) -> Result<i64>;
    /// Delete events appended before `before` (the topics' numbering carries on).
    async fn sweep_topic_events(&self, before: DateTime<Utc>) -> Result<u64>;
    /// Record which agents are online (not revoked, seen at or after `online_since`) and
    /// return those whose state flipped since the last call (on any process), sorted by host:
    /// `true` for agents now online (their first heartbeat, or one after silence), `false`
    /// for agents gone silent or revoked. Each flip is returned to exactly one caller.
    async fn update_agent_presence(
        &self,
        online_since: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Vec<(HostId, bool)>>;
    /// Events appended by any API process on the same database (PostgreSQL `LISTEN/NOTIFY`),
    /// or `None` where there is only one process (SQLite).
    async fn topic_event_notices(&self) -> Result<Option<TopicNoticeStream>>;

    // ---- label statistics and per-host latest KPIs (cardinality, cost flow, recommendations) ----

    /// Keep `stats` as `host`'s latest label statistics; a report for an interval older than
    /// the stored one is ignored (a replayed batch). Swept by [`Store::sweep_telemetry`].
    async fn put_label_stats(
        &self,
        host: &HostId,
        interval_end: DateTime<Utc>,
        stats: &serde_json::Value,
        now: DateTime<Utc>,
    ) -> Result<()>;
    /// Every host's latest label statistics received at or after `since`, by host id.
    async fn list_label_stats(&self, since: DateTime<Utc>) -> Result<Vec<StoredLabelStats>>;
    /// Per host, its most recent KPI batch of `variant` (of `experiment_id` when given, of
    /// any experiment or none otherwise) received at or after `since`, by host id.
    async fn latest_kpi_batches_by_host(
        &self,
        variant: Variant,
        experiment_id: Option<ExperimentId>,
        since: DateTime<Utc>,
    ) -> Result<Vec<StoredKpiBatch>>;
}

/// The store as the API holds it.
pub type SharedStore = Arc<dyn Store>;

/// Open the store a URL names and bring its schema up to date: `sqlite://path` (the file and
/// its directory are created if missing) or `postgres://…` / `postgresql://…`.
pub async fn connect(url: &str) -> Result<SharedStore> {
    let scheme = url.split_once(':').map(|(scheme, _)| scheme).unwrap_or(url);
    match scheme {
        "sqlite" => Ok(Arc::new(SqliteStore::connect(url).await?)),
        "postgres" | "postgresql" => Ok(Arc::new(PgStore::connect(url).await?)),
        other => Err(StoreError::Unavailable(format!(
            "unsupported database url scheme `{}`: use sqlite://path or postgres://user@host/db",
            other.chars().take(32).collect::<String>()
        ))),
    }
}
