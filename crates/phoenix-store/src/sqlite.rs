//! The embedded backend: one SQLite file in WAL mode, for a single API process. Writes go
//! through a pool of exactly one connection (so writers queue in-process instead of racing for
//! SQLite's lock and failing with `SQLITE_BUSY`); reads use a separate pool of four.
//! Timestamps are INTEGER unix microseconds, ids hyphenated UUID text, JSON is TEXT.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration as StdDuration;

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqliteRow, SqliteSynchronous,
};
use sqlx::{Connection, Row};
use tokio::sync::{MappedMutexGuard, Mutex, MutexGuard};

use phoenix_core::{
    apply_command, Agent, DeploymentId, Experiment, ExperimentCommand, ExperimentEvent,
    ExperimentId, ExperimentPatch, ExperimentPhase, Heartbeat, HostId, KpiBatch, NewTask,
    PipelineDeployment, Task, TaskId, TaskStatus, Variant,
};

use crate::common::{
    self, corrupt, from_json_text, host, not_found, opt_host, page_limit, page_offset, parse,
    saturating_i64, to_json_text, to_u32, to_u64, StatusReport,
};
use crate::{
    AgentCredentials, AgentLogEntry, Backend, Enqueued, ExperimentQuery, KpiInsertOutcome, Page,
    Result, Store, StoreError, StoredAgentLog, StoredAnalysis, StoredKpiBatch, StoredLabelStats,
    TaskQuery, TaskStatusUpdate, TransitionOutcome, WakeupStream,
};

mod auth;

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

/// How long a statement waits for SQLite's file lock (only another process can hold it).
const BUSY_TIMEOUT: StdDuration = StdDuration::from_secs(5);
/// How long a caller waits for a connection (the single write connection, or a read one)
/// before the store reports itself unavailable.
const ACQUIRE_TIMEOUT: StdDuration = StdDuration::from_secs(30);
const READ_CONNECTIONS: usize = 4;

/// The ids a claim by host `?1` at time `?2` takes, at most `?4` (`?3` in the read-only
/// probe), in claim order: the host's own pending tasks and the host-less ones are read as two
/// ordered ranges of `tasks_claimable_host` and merged, so the cost does not grow with other
/// hosts' backlog.
macro_rules! claimable_ids {
    ($limit:literal) => {
        concat!(
            "SELECT id FROM (
                 SELECT * FROM (SELECT id, priority, created_at FROM tasks
                     WHERE status = 'pending' AND host_id = ?1
                       AND (not_before IS NULL OR not_before <= ?2)
                     ORDER BY priority DESC, created_at, id LIMIT ",
            $limit,
            ")
                 UNION ALL
                 SELECT * FROM (SELECT id, priority, created_at FROM tasks
                     WHERE status = 'pending' AND host_id IS NULL
                       AND (not_before IS NULL OR not_before <= ?2)
                     ORDER BY priority DESC, created_at, id LIMIT ",
            $limit,
            "))
             ORDER BY priority DESC, created_at, id LIMIT ",
            $limit
        )
    };
}
const CLAIMABLE_IDS: &str = claimable_ids!("?3");
const CLAIMABLE_IDS_LEASED: &str = claimable_ids!("?4");

/// [`Store`] over one SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// Exactly one connection: every write, and every read that decides a write.
    write: Arc<Connections>,
    /// Read-only connections for plain reads.
    read: Arc<Connections>,
}

/// Connections held directly instead of in an `sqlx::Pool`. The pool pings a connection each
/// time it is checked in (and by default out); for SQLite each ping is a round trip to the
/// connection's worker thread, which tripled the thread hops of a one-statement query and
/// dominated the API's CPU profile under a fleet's load. A caller takes one connection for
/// as long as it needs it; a future dropped mid-statement leaves the statement to finish on
/// the worker thread, and a dropped transaction is rolled back before the next statement.
#[derive(Debug)]
struct Connections {
    conns: Vec<Mutex<Option<SqliteConnection>>>,
    next: AtomicUsize,
}

impl Connections {
    async fn open(options: &SqliteConnectOptions, count: usize, path: &str) -> Result<Self> {
        let mut conns = Vec::with_capacity(count);
        for _ in 0..count {
            let conn = SqliteConnection::connect_with(options).await.map_err(|e| {
                StoreError::Unavailable(format!("cannot open SQLite database {path}: {e}"))
            })?;
            conns.push(Mutex::new(Some(conn)));
        }
        Ok(Self {
            conns,
            next: AtomicUsize::new(0),
        })
    }

    /// A free connection if there is one, else the next in turn once it is free.
    async fn get(&self) -> Result<MappedMutexGuard<'_, SqliteConnection>> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let n = self.conns.len();
        let guard = match (0..n).find_map(|i| self.conns[(start + i) % n].try_lock().ok()) {
            Some(guard) => guard,
            None => tokio::time::timeout(ACQUIRE_TIMEOUT, self.conns[start % n].lock())
                .await
                .map_err(|_| {
                    StoreError::Unavailable(format!(
                        "no SQLite connection free after {} s",
                        ACQUIRE_TIMEOUT.as_secs()
                    ))
                })?,
        };
        MutexGuard::try_map(guard, Option::as_mut)
            .map_err(|_| StoreError::Unavailable("the SQLite store is closed".into()))
    }

    async fn close(&self) {
        for conn in &self.conns {
            if let Some(conn) = conn.lock().await.take() {
                if let Err(e) = conn.close().await {
                    tracing::warn!(error = %e, "closing a SQLite connection failed");
                }
            }
        }
    }
}

impl SqliteStore {
    /// Open (creating the file and its directory if missing) and migrate the database named by
    /// `sqlite://path` (or `sqlite:path`; `sqlite:///abs/path` for an absolute path).
    pub async fn connect(url: &str) -> Result<Self> {
        let rest = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .ok_or_else(|| {
                StoreError::Unavailable(format!("`{url}` is not a sqlite: database url"))
            })?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        if path.is_empty() || path == ":memory:" || query.contains("mode=memory") {
            return Err(StoreError::Unavailable(format!(
                "`{url}`: in-memory SQLite is not supported (the store uses separate read and \
                 write connections); give a file path such as sqlite://data/phoenix.db"
            )));
        }
        if let Some(parent) = Path::new(path).parent() {
            if !parent.as_os_str().is_empty() {
                tokio::fs::create_dir_all(parent).await.map_err(|e| {
                    StoreError::Unavailable(format!(
                        "cannot create directory {} for the SQLite database: {e}",
                        parent.display()
                    ))
                })?;
            }
        }
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::Unavailable(format!("invalid SQLite url `{url}`: {e}")))?
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let write = Connections::open(&options.clone().create_if_missing(true), 1, path).await?;
        MIGRATOR.run(&mut *write.get().await?).await?;
        let read = Connections::open(&options.read_only(true), READ_CONNECTIONS, path).await?;
        Ok(Self {
            write: Arc::new(write),
            read: Arc::new(read),
        })
    }

    /// Whether `host` has anything to claim at `now`, read on a read connection. Most claims
    /// are a long-poll re-arming with nothing queued for it; this way they do not queue
    /// behind every write (WAL readers run beside the writer). A task committed after this
    /// look wakes the caller, who armed its wake-up before claiming, so nothing is missed.
    async fn may_claim(&self, host: &HostId, now: DateTime<Utc>) -> Result<bool> {
        Ok(
            sqlx::query_scalar(&format!("SELECT EXISTS({CLAIMABLE_IDS})"))
                .bind(host.as_str())
                .bind(micros(now))
                .bind(1_i64)
                .fetch_one(&mut *self.read.get().await?)
                .await?,
        )
    }

    /// Close every connection (waits for those in use to be returned); later calls answer
    /// [`StoreError::Unavailable`].
    pub async fn close(&self) {
        self.read.close().await;
        self.write.close().await;
    }
}

// ---- encoding and decoding ----

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn opt_micros(t: Option<DateTime<Utc>>) -> Option<i64> {
    t.map(micros)
}

fn time(row: &SqliteRow, column: &str) -> Result<DateTime<Utc>> {
    let v: i64 = row.try_get(column)?;
    DateTime::from_timestamp_micros(v).ok_or_else(|| corrupt(column, v, "timestamp out of range"))
}

fn opt_time(row: &SqliteRow, column: &str) -> Result<Option<DateTime<Utc>>> {
    let v: Option<i64> = row.try_get(column)?;
    v.map(|v| {
        DateTime::from_timestamp_micros(v)
            .ok_or_else(|| corrupt(column, v, "timestamp out of range"))
    })
    .transpose()
}

fn text(row: &SqliteRow, column: &str) -> Result<String> {
    Ok(row.try_get(column)?)
}

fn json<T: serde::de::DeserializeOwned>(row: &SqliteRow, column: &str) -> Result<T> {
    from_json_text(column, &text(row, column)?)
}

fn experiment_from_row(row: &SqliteRow) -> Result<Experiment> {
    Ok(Experiment {
        id: parse("experiments.id", &text(row, "id")?)?,
        name: text(row, "name")?,
        description: text(row, "description")?,
        phase: parse("experiments.phase", &text(row, "phase")?)?,
        promoted: row.try_get("promoted")?,
        phase_reason: row.try_get("phase_reason")?,
        baseline_pipeline: text(row, "baseline_pipeline")?,
        candidate_pipeline: text(row, "candidate_pipeline")?,
        target_hosts: json(row, "target_hosts")?,
        mode: common::parse_mode("experiments.mode", &text(row, "mode")?)?,
        candidate_share_percent: common::share_percent(
            "experiments.candidate_share_percent",
            row.try_get("candidate_share_percent")?,
        )?,
        duration_seconds: to_u64(
            "experiments.duration_seconds",
            row.try_get("duration_seconds")?,
        )?,
        parameters: json(row, "parameters")?,
        owner: row.try_get("owner")?,
        analysis: json(row, "analysis")?,
        target_selector: json(row, "target_selector")?,
        excluded_targets: json(row, "excluded_targets")?,
        created_at: time(row, "created_at")?,
        updated_at: time(row, "updated_at")?,
        started_at: opt_time(row, "started_at")?,
        ended_at: opt_time(row, "ended_at")?,
    })
}

fn event_from_row(row: &SqliteRow) -> Result<ExperimentEvent> {
    let phase = |column: &str| -> Result<Option<ExperimentPhase>> {
        let v: Option<String> = row.try_get(column)?;
        v.map(|v| parse(column, &v)).transpose()
    };
    Ok(ExperimentEvent {
        experiment_id: parse(
            "experiment_events.experiment_id",
            &text(row, "experiment_id")?,
        )?,
        seq: row.try_get("seq")?,
        kind: parse("experiment_events.kind", &text(row, "kind")?)?,
        from_phase: phase("from_phase")?,
        to_phase: phase("to_phase")?,
        message: text(row, "message")?,
        at: time(row, "at")?,
    })
}

fn task_from_row(row: &SqliteRow) -> Result<Task> {
    let result: Option<String> = row.try_get("result")?;
    let experiment_id: Option<String> = row.try_get("experiment_id")?;
    Ok(Task {
        id: parse("tasks.id", &text(row, "id")?)?,
        task_type: parse("tasks.task_type", &text(row, "task_type")?)?,
        status: parse("tasks.status", &text(row, "status")?)?,
        payload: json(row, "payload")?,
        priority: row.try_get("priority")?,
        host_id: opt_host("tasks.host_id", row.try_get("host_id")?)?,
        experiment_id: experiment_id
            .map(|v| parse("tasks.experiment_id", &v))
            .transpose()?,
        assigned_to: opt_host("tasks.assigned_to", row.try_get("assigned_to")?)?,
        attempts: to_u32("tasks.attempts", row.try_get("attempts")?)?,
        max_attempts: to_u32("tasks.max_attempts", row.try_get("max_attempts")?)?,
        not_before: opt_time(row, "not_before")?,
        lease_expires_at: opt_time(row, "lease_expires_at")?,
        idempotency_key: row.try_get("idempotency_key")?,
        error: row.try_get("error")?,
        result: result
            .map(|r| from_json_text("tasks.result", &r))
            .transpose()?,
        created_at: time(row, "created_at")?,
        updated_at: time(row, "updated_at")?,
        assigned_at: opt_time(row, "assigned_at")?,
        started_at: opt_time(row, "started_at")?,
        finished_at: opt_time(row, "finished_at")?,
    })
}

fn tasks_from_rows(rows: &[SqliteRow]) -> Result<Vec<Task>> {
    rows.iter().map(task_from_row).collect()
}

fn agent_from_row(row: &SqliteRow) -> Result<Agent> {
    Ok(Agent {
        host_id: host("agents.host_id", &text(row, "host_id")?)?,
        hostname: text(row, "hostname")?,
        version: text(row, "version")?,
        capabilities: json(row, "capabilities")?,
        labels: json(row, "labels")?,
        resource_usage: json(row, "resource_usage")?,
        running_pipelines: json(row, "running_pipelines")?,
        enrolled_at: time(row, "enrolled_at")?,
        last_seen_at: opt_time(row, "last_seen_at")?,
        revoked: row.try_get("revoked")?,
    })
}

fn kpi_from_row(row: &SqliteRow) -> Result<StoredKpiBatch> {
    let experiment_id: Option<String> = row.try_get("experiment_id")?;
    Ok(StoredKpiBatch {
        host_id: host("kpi_batches.host_id", &text(row, "host_id")?)?,
        received_at: time(row, "received_at")?,
        batch: KpiBatch {
            batch_id: parse("kpi_batches.batch_id", &text(row, "batch_id")?)?,
            experiment_id: experiment_id
                .map(|v| parse("kpi_batches.experiment_id", &v))
                .transpose()?,
            variant: parse::<Variant>("kpi_batches.variant", &text(row, "variant")?)?,
            interval_start: time(row, "interval_start")?,
            interval_end: time(row, "interval_end")?,
            values: json(row, "kpi_values")?,
            details: json(row, "details")?,
            label_stats: None,
        },
    })
}

fn log_from_row(row: &SqliteRow) -> Result<StoredAgentLog> {
    Ok(StoredAgentLog {
        host_id: host("agent_logs.host_id", &text(row, "host_id")?)?,
        received_at: time(row, "received_at")?,
        entry: AgentLogEntry {
            at: time(row, "at")?,
            level: common::parse_log_level("agent_logs.level", &text(row, "level")?)?,
            message: text(row, "message")?,
            fields: json(row, "fields")?,
        },
    })
}

// ---- statements shared by several operations (all on the write connection) ----

async fn load_experiment(conn: &mut SqliteConnection, id: ExperimentId) -> Result<Experiment> {
    let row = sqlx::query("SELECT * FROM experiments WHERE id = ?1")
        .bind(id.to_string())
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| not_found("experiment", id))?;
    experiment_from_row(&row)
}

/// Persist every mutable column of `e` and take the next event seq.
async fn save_experiment(conn: &mut SqliteConnection, e: &Experiment) -> Result<i64> {
    let seq: i64 = sqlx::query_scalar(
        "UPDATE experiments SET name = ?1, description = ?2, phase = ?3, promoted = ?4,
             phase_reason = ?5, baseline_pipeline = ?6, candidate_pipeline = ?7,
             target_hosts = ?8, mode = ?9, candidate_share_percent = ?10,
             duration_seconds = ?11, parameters = ?12, owner = ?13, updated_at = ?14,
             started_at = ?15, ended_at = ?16, analysis = ?18,
             target_selector = ?19, excluded_targets = ?20,
             last_event_seq = last_event_seq + 1
         WHERE id = ?17
         RETURNING last_event_seq",
    )
    .bind(&e.name)
    .bind(&e.description)
    .bind(e.phase.as_str())
    .bind(e.promoted)
    .bind(&e.phase_reason)
    .bind(&e.baseline_pipeline)
    .bind(&e.candidate_pipeline)
    .bind(to_json_text("target_hosts", &e.target_hosts)?)
    .bind(common::mode_str(e.mode))
    .bind(e.candidate_share_percent.map(i64::from))
    .bind(saturating_i64(e.duration_seconds))
    .bind(to_json_text("parameters", &e.parameters)?)
    .bind(&e.owner)
    .bind(micros(e.updated_at))
    .bind(opt_micros(e.started_at))
    .bind(opt_micros(e.ended_at))
    .bind(e.id.to_string())
    .bind(to_json_text("analysis", &e.analysis)?)
    .bind(to_json_text("target_selector", &e.target_selector)?)
    .bind(to_json_text("excluded_targets", &e.excluded_targets)?)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| not_found("experiment", e.id))?;
    Ok(seq)
}

async fn insert_event(conn: &mut SqliteConnection, event: &ExperimentEvent) -> Result<()> {
    sqlx::query(
        "INSERT INTO experiment_events (experiment_id, seq, kind, from_phase, to_phase, message, at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )
    .bind(event.experiment_id.to_string())
    .bind(event.seq)
    .bind(event.kind.as_str())
    .bind(event.from_phase.map(|p| p.as_str()))
    .bind(event.to_phase.map(|p| p.as_str()))
    .bind(&event.message)
    .bind(micros(event.at))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Insert a task, or return the one already queued under its idempotency key.
async fn insert_task(
    conn: &mut SqliteConnection,
    new: &NewTask,
    now: DateTime<Utc>,
) -> Result<Enqueued> {
    let t = common::new_task(new, now);
    let inserted = sqlx::query(
        "INSERT INTO tasks (id, task_type, status, payload, priority, host_id, experiment_id,
             attempts, max_attempts, not_before, idempotency_key, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0, ?8, ?9, ?10, ?11, ?11)
         ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
         RETURNING *",
    )
    .bind(t.id.to_string())
    .bind(t.task_type.as_str())
    .bind(t.status.as_str())
    .bind(to_json_text("payload", &t.payload)?)
    .bind(t.priority)
    .bind(t.host_id.as_ref().map(HostId::as_str))
    .bind(t.experiment_id.map(|e| e.to_string()))
    .bind(i64::from(t.max_attempts))
    .bind(opt_micros(t.not_before))
    .bind(&t.idempotency_key)
    .bind(micros(now))
    .fetch_optional(&mut *conn)
    .await
    .map_err(|e| common::enqueue_error(new, e))?;
    if let Some(row) = inserted {
        return Ok(Enqueued {
            task: task_from_row(&row)?,
            created: true,
        });
    }
    // Only the idempotency key can conflict (the id is fresh): answer with its task.
    let key = t.idempotency_key.as_deref().unwrap_or_default();
    let row = sqlx::query("SELECT * FROM tasks WHERE idempotency_key = ?1")
        .bind(key)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| not_found("task with idempotency key", key))?;
    Ok(Enqueued {
        task: task_from_row(&row)?,
        created: false,
    })
}

/// Claim up to `limit` tasks for `host` on the write connection (see [`Store::claim_tasks`]).
async fn claim_on(
    conn: &mut SqliteConnection,
    host: &HostId,
    limit: u32,
    lease: Duration,
    now: DateTime<Utc>,
) -> Result<Vec<Task>> {
    let rows = sqlx::query(&format!(
        "UPDATE tasks SET status = 'assigned', assigned_to = ?1, assigned_at = ?2,
             lease_expires_at = ?3, attempts = attempts + 1, updated_at = ?2
         WHERE id IN ({CLAIMABLE_IDS_LEASED})
         RETURNING *"
    ))
    .bind(host.as_str())
    .bind(micros(now))
    .bind(micros(common::lease_until(now, lease)))
    .bind(i64::from(limit))
    .fetch_all(&mut *conn)
    .await?;
    let mut tasks = tasks_from_rows(&rows)?;
    common::sort_in_claim_order(&mut tasks);
    Ok(tasks)
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> Backend {
        Backend::Sqlite
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(&mut *self.read.get().await?)
            .await?;
        Ok(())
    }

    // ---- experiments ----

    async fn create_experiment(&self, e: &Experiment) -> Result<ExperimentEvent> {
        let event = common::created_event(e);
        let mut conn = self.write.get().await?;
        let mut tx = conn.begin().await?;
        sqlx::query(
            "INSERT INTO experiments (id, name, description, phase, promoted, phase_reason,
                 baseline_pipeline, candidate_pipeline, target_hosts, mode,
                 candidate_share_percent, duration_seconds, parameters, owner, created_at,
                 updated_at, started_at, ended_at, analysis, target_selector, last_event_seq)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17,
                 ?18, ?19, ?20, 1)",
        )
        .bind(e.id.to_string())
        .bind(&e.name)
        .bind(&e.description)
        .bind(e.phase.as_str())
        .bind(e.promoted)
        .bind(&e.phase_reason)
        .bind(&e.baseline_pipeline)
        .bind(&e.candidate_pipeline)
        .bind(to_json_text("target_hosts", &e.target_hosts)?)
        .bind(common::mode_str(e.mode))
        .bind(e.candidate_share_percent.map(i64::from))
        .bind(saturating_i64(e.duration_seconds))
        .bind(to_json_text("parameters", &e.parameters)?)
        .bind(&e.owner)
        .bind(micros(e.created_at))
        .bind(micros(e.updated_at))
        .bind(opt_micros(e.started_at))
        .bind(opt_micros(e.ended_at))
        .bind(to_json_text("analysis", &e.analysis)?)
        .bind(to_json_text("target_selector", &e.target_selector)?)
        .execute(&mut *tx)
        .await?;
        insert_event(&mut tx, &event).await?;
        tx.commit().await?;
        Ok(event)
    }

    async fn get_experiment(&self, id: ExperimentId) -> Result<Experiment> {
        let mut conn = self.read.get().await?;
        load_experiment(&mut conn, id).await
    }

    async fn list_experiments(&self, query: &ExperimentQuery) -> Result<Page<Experiment>> {
        let limit = page_limit(query.limit);
        let phase = query.phase.map(|p| p.as_str());
        let mut conn = self.read.get().await?;
        let total: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM experiments WHERE ?1 IS NULL OR phase = ?1")
                .bind(phase)
                .fetch_one(&mut *conn)
                .await?;
        let rows = sqlx::query(
            "SELECT * FROM experiments WHERE ?1 IS NULL OR phase = ?1
             ORDER BY created_at DESC, id DESC LIMIT ?2 OFFSET ?3",
        )
        .bind(phase)
        .bind(i64::from(limit))
        .bind(page_offset(query.offset))
        .fetch_all(&mut *conn)
        .await?;
        Ok(Page {
            items: rows
                .iter()
                .map(experiment_from_row)
                .collect::<Result<_>>()?,
            total: to_u64("count", total)?,
            limit,
            offset: query.offset,
        })
    }

    async fn update_experiment(
        &self,
        id: ExperimentId,
        patch: ExperimentPatch,
        now: DateTime<Utc>,
    ) -> Result<(Experiment, Option<ExperimentEvent>)> {
        let mut conn = self.write.get().await?;
        let mut tx = conn.begin().await?;
        let mut experiment = load_experiment(&mut tx, id).await?;
        let changed = experiment.apply_patch(patch, now)?;
        if changed.is_empty() {
            return Ok((experiment, None));
        }
        let seq = save_experiment(&mut tx, &experiment).await?;
        let event = common::updated_event(&experiment, seq, &changed, now);
        insert_event(&mut tx, &event).await?;
        tx.commit().await?;
        Ok((experiment, Some(event)))
    }

    async fn delete_experiment(&self, id: ExperimentId) -> Result<()> {
        let mut conn = self.write.get().await?;
        let mut tx = conn.begin().await?;
        let experiment = load_experiment(&mut tx, id).await?;
        if experiment.phase.is_active() {
            return Err(StoreError::ExperimentActive {
                id: id.to_string(),
                phase: experiment.phase,
            });
        }
        sqlx::query("DELETE FROM experiments WHERE id = ?1")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn transition_experiment(
        &self,
        id: ExperimentId,
        command: &ExperimentCommand,
        enqueue: &[NewTask],
        now: DateTime<Utc>,
    ) -> Result<TransitionOutcome> {
        let mut conn = self.write.get().await?;
        let mut tx = conn.begin().await?;
        let mut experiment = load_experiment(&mut tx, id).await?;
        let transition = apply_command(experiment.phase, experiment.promoted, command)?;
        experiment.record(&transition, now);
        let seq = save_experiment(&mut tx, &experiment).await?;
        let event = common::phase_event(&experiment, seq, &transition, now);
        insert_event(&mut tx, &event).await?;
        if let Some(reason) = common::cancels_queued_tasks(command) {
            sqlx::query(
                "UPDATE tasks SET status = 'failed', error = ?2, finished_at = ?3, updated_at = ?3
                 WHERE experiment_id = ?1 AND status = 'pending'",
            )
            .bind(id.to_string())
            .bind(reason)
            .bind(micros(now))
            .execute(&mut *tx)
            .await?;
        }
        if let ExperimentCommand::ExcludeTargets { targets } = command {
            for (host, _) in targets {
                sqlx::query(
                    "UPDATE tasks SET status = 'failed', error = ?3, finished_at = ?4, updated_at = ?4
                     WHERE experiment_id = ?1 AND host_id = ?2 AND status = 'pending'",
                )
                .bind(id.to_string())
                .bind(host.as_str())
                .bind("cancelled: the target was excluded from the experiment")
                .bind(micros(now))
                .execute(&mut *tx)
                .await?;
            }
        }
        let mut tasks = Vec::with_capacity(enqueue.len());
        for new in enqueue {
            tasks.push(insert_task(&mut tx, new, now).await?.task);
        }
        tx.commit().await?;
        Ok(TransitionOutcome {
            experiment,
            event,
            tasks,
        })
    }

    async fn list_experiment_events(
        &self,
        id: ExperimentId,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<ExperimentEvent>> {
        let mut conn = self.read.get().await?;
        let rows = sqlx::query(
            "SELECT * FROM experiment_events WHERE experiment_id = ?1 AND seq > ?2
             ORDER BY seq LIMIT ?3",
        )
        .bind(id.to_string())
        .bind(after_seq)
        .bind(i64::from(page_limit(limit)))
        .fetch_all(&mut *conn)
        .await?;
        if rows.is_empty() {
            // Tell "no new events" from "no such experiment".
            load_experiment(&mut conn, id).await?;
        }
        rows.iter().map(event_from_row).collect()
    }

    async fn experiment_phases(
        &self,
        finished_since: DateTime<Utc>,
    ) -> Result<Vec<(ExperimentId, ExperimentPhase)>> {
        static QUERY: LazyLock<String> = LazyLock::new(|| {
            format!(
                "SELECT id, phase FROM experiments
                 WHERE phase NOT IN ({}) OR COALESCE(ended_at, updated_at) >= ?1
                 ORDER BY id",
                common::terminal_phases_sql()
            )
        });
        let rows = sqlx::query(&QUERY)
            .bind(micros(finished_since))
            .fetch_all(&mut *self.read.get().await?)
            .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    parse("experiments.id", &text(row, "id")?)?,
                    parse("experiments.phase", &text(row, "phase")?)?,
                ))
            })
            .collect()
    }

    // ---- task queue ----

    async fn enqueue_task(&self, task: &NewTask, now: DateTime<Utc>) -> Result<Enqueued> {
        let mut conn = self.write.get().await?;
        insert_task(&mut conn, task, now).await
    }

    async fn enqueue_tasks(
        &self,
        tasks: &[NewTask],
        now: DateTime<Utc>,
    ) -> Result<Vec<Result<Enqueued>>> {
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        let built: Vec<Task> = tasks.iter().map(|t| common::new_task(t, now)).collect();
        let rows = built
            .iter()
            .map(|t| {
                Ok(serde_json::json!({
                    "id": t.id.to_string(),
                    "task_type": t.task_type.as_str(),
                    "payload": to_json_text("payload", &t.payload)?,
                    "priority": t.priority,
                    "host_id": t.host_id.as_ref().map(HostId::as_str),
                    "experiment_id": t.experiment_id.map(|e| e.to_string()),
                    "max_attempts": t.max_attempts,
                    "not_before": opt_micros(t.not_before),
                    "idempotency_key": t.idempotency_key,
                }))
            })
            .collect::<Result<Vec<_>>>()?;
        let rows = serde_json::Value::Array(rows).to_string();
        let mut conn = self.write.get().await?;
        let mut tx = conn.begin().await?;
        // One statement for the batch. `WHERE true` settles SQLite's parse of INSERT … SELECT
        // … ON CONFLICT. An unknown experiment id fails the whole statement: then each task is
        // enqueued on its own so only that one is refused.
        let inserted = sqlx::query(
            "INSERT INTO tasks (id, task_type, status, payload, priority, host_id, experiment_id,
                 attempts, max_attempts, not_before, idempotency_key, created_at, updated_at)
             SELECT json_extract(value, '$.id'), json_extract(value, '$.task_type'), 'pending',
                 json_extract(value, '$.payload'), json_extract(value, '$.priority'),
                 json_extract(value, '$.host_id'), json_extract(value, '$.experiment_id'), 0,
                 json_extract(value, '$.max_attempts'), json_extract(value, '$.not_before'),
                 json_extract(value, '$.idempotency_key'), ?2, ?2
             FROM json_each(?1) WHERE true
             ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
             RETURNING *",
        )
        .bind(&rows)
        .bind(micros(now))
        .fetch_all(&mut *tx)
        .await;
        let outcomes = match inserted {
            Ok(rows) => {
                let mut created: HashMap<TaskId, Task> = tasks_from_rows(&rows)?
                    .into_iter()
                    .map(|t| (t.id, t))
                    .collect();
                let mut outcomes = Vec::with_capacity(tasks.len());
                for (new, t) in tasks.iter().zip(&built) {
                    match created.remove(&t.id) {
                        Some(task) => outcomes.push(Ok(Enqueued {
                            task,
                            created: true,
                        })),
                        // Its idempotency key named a task already: answer with that one.
                        None => match insert_task(&mut tx, new, now).await {
                            Err(e) if e.is_database_failure() => return Err(e),
                            outcome => outcomes.push(outcome),
                        },
                    }
                }
                outcomes
            }
            Err(e) if common::is_foreign_key_violation(&e) => {
                let mut outcomes = Vec::with_capacity(tasks.len());
                for new in tasks {
                    match insert_task(&mut tx, new, now).await {
                        Err(e) if e.is_database_failure() => return Err(e),
                        outcome => outcomes.push(outcome),
                    }
                }
                outcomes
            }
            Err(e) => return Err(e.into()),
        };
        tx.commit().await?;
        Ok(outcomes)
    }

    async fn get_task(&self, id: TaskId) -> Result<Task> {
        let row = sqlx::query("SELECT * FROM tasks WHERE id = ?1")
            .bind(id.to_string())
            .fetch_optional(&mut *self.read.get().await?)
            .await?
            .ok_or_else(|| not_found("task", id))?;
        task_from_row(&row)
    }

    async fn list_tasks(&self, query: &TaskQuery) -> Result<Page<Task>> {
        let limit = page_limit(query.limit);
        let status = query.status.map(|s| s.as_str());
        let host = query.host_id.as_ref().map(HostId::as_str);
        let experiment = query.experiment_id.map(|e| e.to_string());
        const FILTER: &str = "(?1 IS NULL OR status = ?1) AND (?2 IS NULL OR host_id = ?2)
             AND (?3 IS NULL OR experiment_id = ?3)";
        let mut conn = self.read.get().await?;
        let total: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM tasks WHERE {FILTER}"))
            .bind(status)
            .bind(host)
            .bind(&experiment)
            .fetch_one(&mut *conn)
            .await?;
        let rows = sqlx::query(&format!(
            "SELECT * FROM tasks WHERE {FILTER} ORDER BY created_at DESC, id DESC
             LIMIT ?4 OFFSET ?5"
        ))
        .bind(status)
        .bind(host)
        .bind(&experiment)
        .bind(i64::from(limit))
        .bind(page_offset(query.offset))
        .fetch_all(&mut *conn)
        .await?;
        Ok(Page {
            items: tasks_from_rows(&rows)?,
            total: to_u64("count", total)?,
            limit,
            offset: query.offset,
        })
    }

    async fn claim_tasks(
        &self,
        host: &HostId,
        limit: u32,
        lease: Duration,
        now: DateTime<Utc>,
    ) -> Result<Vec<Task>> {
        if limit == 0 || !self.may_claim(host, now).await? {
            return Ok(Vec::new());
        }
        // One statement on the single write connection: atomic with respect to every other
        // claim, so no task is handed out twice.
        claim_on(&mut *self.write.get().await?, host, limit, lease, now).await
    }

    async fn claim_tasks_for_hosts(
        &self,
        claims: &[(HostId, u32)],
        lease: Duration,
        now: DateTime<Utc>,
    ) -> Result<Vec<Vec<Task>>> {
        let mut wanted = Vec::with_capacity(claims.len());
        for (host, limit) in claims {
            wanted.push(*limit > 0 && self.may_claim(host, now).await?);
        }
        let mut claimed = Vec::with_capacity(claims.len());
        if !wanted.contains(&true) {
            claimed.resize_with(claims.len(), Vec::new);
            return Ok(claimed);
        }
        // One transaction (one commit) for the batch.
        let mut conn = self.write.get().await?;
        let mut tx = conn.begin().await?;
        for ((host, limit), wanted) in claims.iter().zip(wanted) {
            claimed.push(if wanted {
                claim_on(&mut tx, host, *limit, lease, now).await?
            } else {
                Vec::new()
            });
        }
        tx.commit().await?;
        Ok(claimed)
    }

    async fn update_task_status(
        &self,
        id: TaskId,
        host: &HostId,
        update: &TaskStatusUpdate,
        lease: Duration,
        now: DateTime<Utc>,
    ) -> Result<Task> {
        let mut conn = self.write.get().await?;
        update_status_on(&mut conn, id, host, update, lease, now).await
    }

    async fn complete_tasks(
        &self,
        host: &HostId,
        reports: &[(TaskId, TaskStatusUpdate)],
        lease: Duration,
        now: DateTime<Utc>,
    ) -> Result<Vec<Result<Task>>> {
        // One transaction on the write connection: one commit for the whole batch.
        let mut conn = self.write.get().await?;
        let mut tx = conn.begin().await?;
        let mut outcomes = Vec::with_capacity(reports.len());
        for (id, update) in reports {
            match update_status_on(&mut tx, *id, host, update, lease, now).await {
                Err(e) if e.is_database_failure() => return Err(e),
                outcome => outcomes.push(outcome),
            }
        }
        tx.commit().await?;
        Ok(outcomes)
    }

    async fn report_task_statuses(
        &self,
        reports: &[(TaskId, HostId, TaskStatusUpdate)],
        lease: Duration,
        now: DateTime<Utc>,
    ) -> Result<Vec<Result<Task>>> {
        if reports.is_empty() {
            return Ok(Vec::new());
        }
        let (rows, fast) = common::status_report_rows(reports)?;
        let mut conn = self.write.get().await?;
        let mut tx = conn.begin().await?;
        // Every report of a task its host holds, in one statement; the rest (refusals,
        // replays, repeats within the batch) are judged one by one below.
        let applied = sqlx::query(
            "UPDATE tasks SET status = b.status,
                 started_at = CASE WHEN b.status = 'running'
                     THEN COALESCE(tasks.started_at, ?2) ELSE tasks.started_at END,
                 lease_expires_at = CASE WHEN b.status = 'running' THEN ?3 ELSE NULL END,
                 finished_at = CASE WHEN b.status = 'running' THEN tasks.finished_at ELSE ?2 END,
                 error = CASE WHEN b.status = 'running' THEN tasks.error ELSE b.error END,
                 result = CASE WHEN b.status = 'running' THEN tasks.result ELSE b.result END,
                 updated_at = ?2
             FROM (SELECT json_extract(value, '$.id') AS id, json_extract(value, '$.host') AS host,
                       json_extract(value, '$.status') AS status,
                       json_extract(value, '$.error') AS error,
                       json_extract(value, '$.result') AS result
                   FROM json_each(?1)) AS b
             WHERE tasks.id = b.id AND tasks.assigned_to = b.host
               AND tasks.status IN ('assigned', 'running')
             RETURNING *",
        )
        .bind(rows.to_string())
        .bind(micros(now))
        .bind(micros(common::lease_until(now, lease)))
        .fetch_all(&mut *tx)
        .await?;
        let mut applied: HashMap<TaskId, Task> = tasks_from_rows(&applied)?
            .into_iter()
            .map(|t| (t.id, t))
            .collect();
        let mut outcomes = Vec::with_capacity(reports.len());
        for ((id, host, update), fast) in reports.iter().zip(fast) {
            if fast {
                if let Some(task) = applied.remove(id) {
                    outcomes.push(Ok(task));
                    continue;
                }
            }
            match update_status_on(&mut tx, *id, host, update, lease, now).await {
                Err(e) if e.is_database_failure() => return Err(e),
                outcome => outcomes.push(outcome),
            }
        }
        tx.commit().await?;
        Ok(outcomes)
    }

    async fn renew_leases(
        &self,
        host: &HostId,
        lease: Duration,
        now: DateTime<Utc>,
    ) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE tasks SET lease_expires_at = ?2, updated_at = ?3
             WHERE assigned_to = ?1 AND status IN ('assigned', 'running')",
        )
        .bind(host.as_str())
        .bind(micros(common::lease_until(now, lease)))
        .bind(micros(now))
        .execute(&mut *self.write.get().await?)
        .await?;
        Ok(done.rows_affected())
    }

    async fn release_unheld_tasks(
        &self,
        host: &HostId,
        held: &[TaskId],
        assigned_before: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Vec<Task>> {
        let held: Vec<String> = held.iter().map(TaskId::to_string).collect();
        let rows = sqlx::query(
            "UPDATE tasks SET
                 status = CASE WHEN attempts >= max_attempts THEN 'failed' ELSE 'pending' END,
                 error = 'its delivery to host ' || ?1 || ' was lost (the agent does not hold it)'
                     || CASE WHEN attempts >= max_attempts
                        THEN ' after ' || attempts || ' of ' || max_attempts || ' attempts'
                        ELSE ' (attempt ' || attempts || ' of ' || max_attempts || ')' END,
                 assigned_to = CASE WHEN attempts >= max_attempts THEN assigned_to ELSE NULL END,
                 finished_at = CASE WHEN attempts >= max_attempts THEN ?4 ELSE NULL END,
                 lease_expires_at = NULL,
                 updated_at = ?4
             WHERE assigned_to = ?1 AND status IN ('assigned', 'running') AND assigned_at < ?3
               AND id NOT IN (SELECT value FROM json_each(?2))
             RETURNING *",
        )
        .bind(host.as_str())
        .bind(to_json_text("held", &held)?)
        .bind(micros(assigned_before))
        .bind(micros(now))
        .fetch_all(&mut *self.write.get().await?)
        .await?;
        let mut tasks = tasks_from_rows(&rows)?;
        tasks.sort_by_key(|t| t.id);
        Ok(tasks)
    }

    async fn expire_leases(&self, now: DateTime<Utc>) -> Result<Vec<Task>> {
        let rows = sqlx::query(
            "UPDATE tasks SET
                 status = CASE WHEN attempts >= max_attempts THEN 'failed' ELSE 'pending' END,
                 error = CASE WHEN attempts >= max_attempts
                     THEN 'lease expired on host ' || COALESCE(assigned_to, '?') || ' after '
                          || attempts || ' of ' || max_attempts || ' attempts'
                     ELSE 'lease expired on host ' || COALESCE(assigned_to, '?') || ' (attempt '
                          || attempts || ' of ' || max_attempts || ')' END,
                 assigned_to = CASE WHEN attempts >= max_attempts THEN assigned_to ELSE NULL END,
                 finished_at = CASE WHEN attempts >= max_attempts THEN ?1 ELSE NULL END,
                 lease_expires_at = NULL,
                 updated_at = ?1
             WHERE status IN ('assigned', 'running') AND lease_expires_at <= ?1
             RETURNING *",
        )
        .bind(micros(now))
        .fetch_all(&mut *self.write.get().await?)
        .await?;
        let mut tasks = tasks_from_rows(&rows)?;
        tasks.sort_by_key(|t| t.id);
        Ok(tasks)
    }

    async fn hosts_with_tasks_due(
        &self,
        after: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Vec<Option<HostId>>> {
        let hosts: Vec<Option<String>> = sqlx::query_scalar(
            "SELECT DISTINCT host_id FROM tasks
             WHERE status = 'pending' AND not_before > ?1 AND not_before <= ?2
             ORDER BY host_id",
        )
        .bind(micros(after))
        .bind(micros(now))
        .fetch_all(&mut *self.read.get().await?)
        .await?;
        hosts
            .into_iter()
            .map(|h| opt_host("tasks.host_id", h))
            .collect()
    }

    async fn sweep_finished_tasks(&self, before: DateTime<Utc>) -> Result<u64> {
        let done = sqlx::query(
            "DELETE FROM tasks WHERE status IN ('completed', 'failed') AND finished_at < ?1",
        )
        .bind(micros(before))
        .execute(&mut *self.write.get().await?)
        .await?;
        Ok(done.rows_affected())
    }

    async fn task_counts(&self) -> Result<BTreeMap<TaskStatus, u64>> {
        let rows = sqlx::query("SELECT status, COUNT(*) AS n FROM tasks GROUP BY status")
            .fetch_all(&mut *self.read.get().await?)
            .await?;
        let mut counts: BTreeMap<TaskStatus, u64> =
            TaskStatus::ALL.into_iter().map(|s| (s, 0)).collect();
        for row in &rows {
            let status: TaskStatus = parse("tasks.status", &text(row, "status")?)?;
            counts.insert(status, to_u64("count", row.try_get("n")?)?);
        }
        Ok(counts)
    }

    // ---- agents ----

    async fn enroll_agent(
        &self,
        host: &HostId,
        secret_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<Agent> {
        let row = sqlx::query(
            "INSERT INTO agents (host_id, secret_hash, enrolled_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (host_id) DO UPDATE SET secret_hash = excluded.secret_hash
                 WHERE agents.revoked = 0
             RETURNING *",
        )
        .bind(host.as_str())
        .bind(secret_hash)
        .bind(micros(now))
        .fetch_optional(&mut *self.write.get().await?)
        .await?
        .ok_or_else(|| StoreError::AgentRevoked(host.clone()))?;
        agent_from_row(&row)
    }

    async fn agent_credentials(&self, host: &HostId) -> Result<Option<AgentCredentials>> {
        let row = sqlx::query("SELECT secret_hash, revoked FROM agents WHERE host_id = ?1")
            .bind(host.as_str())
            .fetch_optional(&mut *self.read.get().await?)
            .await?;
        row.map(|row| {
            Ok(AgentCredentials {
                host_id: host.clone(),
                secret_hash: text(&row, "secret_hash")?,
                revoked: row.try_get("revoked")?,
            })
        })
        .transpose()
    }

    async fn record_heartbeat(
        &self,
        host: &HostId,
        heartbeat: &Heartbeat,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let mut conn = self.write.get().await?;
        let mut tx = conn.begin().await?;
        let updated = sqlx::query(
            "UPDATE agents SET hostname = COALESCE(NULLIF(?2, ''), hostname),
                 version = COALESCE(NULLIF(?3, ''), version), capabilities = ?4, labels = ?5,
                 resource_usage = ?6, running_pipelines = ?7, last_seen_at = ?8
             WHERE host_id = ?1 AND revoked = 0",
        )
        .bind(host.as_str())
        .bind(&heartbeat.hostname)
        .bind(&heartbeat.version)
        .bind(to_json_text("capabilities", &heartbeat.capabilities)?)
        .bind(to_json_text("labels", &heartbeat.labels)?)
        .bind(to_json_text("resource_usage", &heartbeat.resource_usage)?)
        .bind(to_json_text(
            "running_pipelines",
            &heartbeat.running_pipelines,
        )?)
        .bind(micros(now))
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 0 {
            let revoked: Option<bool> =
                sqlx::query_scalar("SELECT revoked FROM agents WHERE host_id = ?1")
                    .bind(host.as_str())
                    .fetch_optional(&mut *tx)
                    .await?;
            return Err(match revoked {
                Some(true) => StoreError::AgentRevoked(host.clone()),
                _ => not_found("agent", host),
            });
        }
        sqlx::query("INSERT INTO agent_heartbeats (host_id, at, heartbeat) VALUES (?1, ?2, ?3)")
            .bind(host.as_str())
            .bind(micros(now))
            .bind(to_json_text("heartbeat", heartbeat)?)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn record_heartbeats(
        &self,
        beats: &[(HostId, Heartbeat)],
        lease: Duration,
        now: DateTime<Utc>,
    ) -> Result<Vec<Result<u64>>> {
        if beats.is_empty() {
            return Ok(Vec::new());
        }
        // Set-based statements over a JSON array (json_each): a batch costs a handful of
        // statements whatever its size.
        let rows = common::heartbeat_rows(beats)?.to_string();
        let mut conn = self.write.get().await?;
        let mut tx = conn.begin().await?;
        let accepted: BTreeSet<String> = sqlx::query_scalar(
            "UPDATE agents SET
                 hostname = COALESCE(NULLIF(json_extract(b.value, '$.hostname'), ''), hostname),
                 version = COALESCE(NULLIF(json_extract(b.value, '$.version'), ''), version),
                 capabilities = json_extract(b.value, '$.capabilities'),
                 labels = json_extract(b.value, '$.labels'),
                 resource_usage = json_extract(b.value, '$.resource_usage'),
                 running_pipelines = json_extract(b.value, '$.running_pipelines'),
                 last_seen_at = ?2
             FROM json_each(?1) AS b
             WHERE agents.host_id = json_extract(b.value, '$.host_id') AND agents.revoked = 0
             RETURNING agents.host_id",
        )
        .bind(&rows)
        .bind(micros(now))
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect();
        let mut renewed: BTreeMap<String, u64> = BTreeMap::new();
        if !accepted.is_empty() {
            let history = common::heartbeat_history(beats, &accepted)?.to_string();
            sqlx::query(
                "INSERT INTO agent_heartbeats (host_id, at, heartbeat)
                 SELECT json_extract(value, '$.host_id'), ?2, json_extract(value, '$.heartbeat')
                 FROM json_each(?1)",
            )
            .bind(&history)
            .bind(micros(now))
            .execute(&mut *tx)
            .await?;
            let hosts = to_json_text("hosts", &accepted)?;
            let held: Vec<String> = sqlx::query_scalar(
                "UPDATE tasks SET lease_expires_at = ?2, updated_at = ?3
                 WHERE status IN ('assigned', 'running')
                   AND assigned_to IN (SELECT value FROM json_each(?1))
                 RETURNING assigned_to",
            )
            .bind(&hosts)
            .bind(micros(common::lease_until(now, lease)))
            .bind(micros(now))
            .fetch_all(&mut *tx)
            .await?;
            for host in held {
                *renewed.entry(host).or_default() += 1;
            }
        }
        let mut revoked: BTreeMap<String, bool> = BTreeMap::new();
        if accepted.len() < beats.len() {
            let refused: BTreeSet<&str> = beats
                .iter()
                .map(|(h, _)| h.as_str())
                .filter(|h| !accepted.contains(*h))
                .collect();
            if !refused.is_empty() {
                let rows = sqlx::query(
                    "SELECT host_id, revoked FROM agents
                     WHERE host_id IN (SELECT value FROM json_each(?1))",
                )
                .bind(to_json_text("hosts", &refused)?)
                .fetch_all(&mut *tx)
                .await?;
                for row in rows {
                    revoked.insert(text(&row, "host_id")?, row.try_get("revoked")?);
                }
            }
        }
        tx.commit().await?;
        Ok(common::heartbeat_outcomes(
            beats, &accepted, &renewed, &revoked,
        ))
    }

    async fn get_agent(&self, host: &HostId) -> Result<Agent> {
        let row = sqlx::query("SELECT * FROM agents WHERE host_id = ?1")
            .bind(host.as_str())
            .fetch_optional(&mut *self.read.get().await?)
            .await?
            .ok_or_else(|| not_found("agent", host))?;
        agent_from_row(&row)
    }

    async fn list_agents(&self) -> Result<Vec<Agent>> {
        let rows = sqlx::query("SELECT * FROM agents ORDER BY host_id")
            .fetch_all(&mut *self.read.get().await?)
            .await?;
        rows.iter().map(agent_from_row).collect()
    }

    async fn revoke_agent(&self, host: &HostId, now: DateTime<Utc>) -> Result<()> {
        let done = sqlx::query(
            "UPDATE agents SET revoked = 1, revoked_at = COALESCE(revoked_at, ?2)
             WHERE host_id = ?1",
        )
        .bind(host.as_str())
        .bind(micros(now))
        .execute(&mut *self.write.get().await?)
        .await?;
        if done.rows_affected() == 0 {
            return Err(not_found("agent", host));
        }
        Ok(())
    }

    async fn count_heartbeats(&self, host: &HostId, since: DateTime<Utc>) -> Result<u64> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM agent_heartbeats WHERE host_id = ?1 AND at >= ?2",
        )
        .bind(host.as_str())
        .bind(micros(since))
        .fetch_one(&mut *self.read.get().await?)
        .await?;
        to_u64("count", n)
    }

    // ---- KPIs and logs ----

    async fn insert_kpi_batches(
        &self,
        host: &HostId,
        batches: &[KpiBatch],
        now: DateTime<Utc>,
    ) -> Result<KpiInsertOutcome> {
        let mut outcome = KpiInsertOutcome::default();
        if batches.is_empty() {
            return Ok(outcome);
        }
        let mut conn = self.write.get().await?;
        let mut tx = conn.begin().await?;
        for b in batches {
            let v = &b.values;
            let done = sqlx::query(
                "INSERT INTO kpi_batches (batch_id, host_id, experiment_id, variant,
                     interval_start, interval_end, input_series, output_series, input_samples,
                     output_samples, input_bytes, output_bytes, kpi_values, details, received_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)
                 ON CONFLICT (batch_id) DO NOTHING",
            )
            .bind(b.batch_id.to_string())
            .bind(host.as_str())
            .bind(b.experiment_id.map(|e| e.to_string()))
            .bind(b.variant.as_str())
            .bind(micros(b.interval_start))
            .bind(micros(b.interval_end))
            .bind(saturating_i64(v.input_series))
            .bind(saturating_i64(v.output_series))
            .bind(saturating_i64(v.input_samples))
            .bind(saturating_i64(v.output_samples))
            .bind(saturating_i64(v.input_bytes))
            .bind(saturating_i64(v.output_bytes))
            .bind(to_json_text("kpi_values", v)?)
            .bind(to_json_text("details", &b.details)?)
            .bind(micros(now))
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() == 0 {
                outcome.duplicates += 1;
            } else {
                outcome.inserted += 1;
            }
        }
        tx.commit().await?;
        Ok(outcome)
    }

    async fn list_kpi_batches(
        &self,
        experiment_id: ExperimentId,
        limit: u32,
    ) -> Result<Vec<StoredKpiBatch>> {
        // The most recent `limit` batches, returned oldest first.
        let rows = sqlx::query(
            "SELECT * FROM (
                 SELECT * FROM kpi_batches WHERE experiment_id = ?1
                 ORDER BY interval_end DESC, batch_id DESC LIMIT ?2)
             ORDER BY interval_end, batch_id",
        )
        .bind(experiment_id.to_string())
        .bind(i64::from(page_limit(limit)))
        .fetch_all(&mut *self.read.get().await?)
        .await?;
        rows.iter().map(kpi_from_row).collect()
    }

    async fn experiment_kpis(
        &self,
        experiment_id: ExperimentId,
        max: u32,
    ) -> Result<Vec<StoredKpiBatch>> {
        let rows = sqlx::query(
            "SELECT * FROM (
                 SELECT * FROM kpi_batches WHERE experiment_id = ?1
                 ORDER BY interval_end DESC, batch_id DESC LIMIT ?2)
             ORDER BY interval_end, batch_id",
        )
        .bind(experiment_id.to_string())
        .bind(i64::from(max))
        .fetch_all(&mut *self.read.get().await?)
        .await?;
        rows.iter().map(kpi_from_row).collect()
    }

    async fn save_pipeline_deployment(&self, d: &PipelineDeployment) -> Result<()> {
        sqlx::query(
            "INSERT INTO pipeline_deployments (id, created_at, body) VALUES (?1, ?2, ?3)
             ON CONFLICT (id) DO UPDATE SET body = excluded.body",
        )
        .bind(d.id.to_string())
        .bind(micros(d.created_at))
        .bind(to_json_text("body", d)?)
        .execute(&mut *self.write.get().await?)
        .await?;
        Ok(())
    }

    async fn get_pipeline_deployment(&self, id: DeploymentId) -> Result<PipelineDeployment> {
        let body: Option<String> =
            sqlx::query_scalar("SELECT body FROM pipeline_deployments WHERE id = ?1")
                .bind(id.to_string())
                .fetch_optional(&mut *self.read.get().await?)
                .await?;
        let body = body.ok_or_else(|| not_found("pipeline deployment", id))?;
        from_json_text("pipeline_deployments.body", &body)
    }

    async fn list_pipeline_deployments(
        &self,
        limit: u32,
        offset: u64,
    ) -> Result<Page<PipelineDeployment>> {
        let limit = page_limit(limit);
        let mut conn = self.read.get().await?;
        let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM pipeline_deployments")
            .fetch_one(&mut *conn)
            .await?;
        let bodies: Vec<String> = sqlx::query_scalar(
            "SELECT body FROM pipeline_deployments ORDER BY created_at DESC, id DESC
             LIMIT ?1 OFFSET ?2",
        )
        .bind(i64::from(limit))
        .bind(page_offset(offset))
        .fetch_all(&mut *conn)
        .await?;
        Ok(Page {
            items: bodies
                .iter()
                .map(|b| from_json_text("pipeline_deployments.body", b))
                .collect::<Result<_>>()?,
            total: to_u64("count", total)?,
            limit,
            offset,
        })
    }

    async fn claim_analysis(
        &self,
        experiment_id: ExperimentId,
        seq: i64,
        is_final: bool,
        runner: &str,
        now: DateTime<Utc>,
        stale_before: DateTime<Utc>,
    ) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO experiment_analyses (experiment_id, seq, is_final, runner, claimed_at)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (experiment_id, seq) DO UPDATE
                 SET runner = excluded.runner, claimed_at = excluded.claimed_at
                 WHERE experiment_analyses.finished_at IS NULL
                   AND experiment_analyses.claimed_at < ?6",
        )
        .bind(experiment_id.to_string())
        .bind(seq)
        .bind(is_final)
        .bind(runner)
        .bind(micros(now))
        .bind(micros(stale_before))
        .execute(&mut *self.write.get().await?)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn finish_analysis(
        &self,
        experiment_id: ExperimentId,
        seq: i64,
        decision: &str,
        result: &serde_json::Value,
        now: DateTime<Utc>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE experiment_analyses SET finished_at = ?3, decision = ?4, result = ?5
             WHERE experiment_id = ?1 AND seq = ?2",
        )
        .bind(experiment_id.to_string())
        .bind(seq)
        .bind(micros(now))
        .bind(decision)
        .bind(to_json_text("result", result)?)
        .execute(&mut *self.write.get().await?)
        .await?;
        Ok(())
    }

    async fn list_analyses(
        &self,
        experiment_id: ExperimentId,
        limit: u32,
    ) -> Result<Vec<StoredAnalysis>> {
        let rows = sqlx::query(
            "SELECT * FROM experiment_analyses WHERE experiment_id = ?1
             ORDER BY is_final DESC, seq DESC LIMIT ?2",
        )
        .bind(experiment_id.to_string())
        .bind(i64::from(page_limit(limit)))
        .fetch_all(&mut *self.read.get().await?)
        .await?;
        rows.iter()
            .map(|row| {
                let result: Option<String> = row.try_get("result")?;
                Ok(StoredAnalysis {
                    experiment_id: parse(
                        "experiment_analyses.experiment_id",
                        &text(row, "experiment_id")?,
                    )?,
                    seq: row.try_get("seq")?,
                    is_final: row.try_get("is_final")?,
                    runner: text(row, "runner")?,
                    claimed_at: time(row, "claimed_at")?,
                    finished_at: opt_time(row, "finished_at")?,
                    decision: row.try_get("decision")?,
                    result: result
                        .map(|r| from_json_text("experiment_analyses.result", &r))
                        .transpose()?,
                })
            })
            .collect()
    }

    async fn latest_reduction_percent(&self) -> Result<Vec<(ExperimentId, f64)>> {
        let rows = sqlx::query(
            "SELECT k.experiment_id AS experiment_id, TOTAL(k.input_series) AS input_series,
                    TOTAL(k.output_series) AS output_series
             FROM kpi_batches k
             JOIN (SELECT experiment_id, MAX(interval_end) AS last_end FROM kpi_batches
                   WHERE variant = 'candidate' AND experiment_id IS NOT NULL
                   GROUP BY experiment_id) latest
               ON k.experiment_id = latest.experiment_id AND k.interval_end = latest.last_end
             WHERE k.variant = 'candidate'
             GROUP BY k.experiment_id
             ORDER BY k.experiment_id",
        )
        .fetch_all(&mut *self.read.get().await?)
        .await?;
        rows.iter()
            .map(|row| {
                let id = parse("kpi_batches.experiment_id", &text(row, "experiment_id")?)?;
                let input: f64 = row.try_get("input_series")?;
                let output: f64 = row.try_get("output_series")?;
                Ok((id, common::reduction_percent(input, output)))
            })
            .collect()
    }

    async fn insert_agent_logs(
        &self,
        host: &HostId,
        logs: &[AgentLogEntry],
        now: DateTime<Utc>,
    ) -> Result<u64> {
        if logs.is_empty() {
            return Ok(0);
        }
        let mut conn = self.write.get().await?;
        let mut tx = conn.begin().await?;
        for log in logs {
            sqlx::query(
                "INSERT INTO agent_logs (host_id, at, level, message, fields, received_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .bind(host.as_str())
            .bind(micros(log.at))
            .bind(log.level.as_str())
            .bind(&log.message)
            .bind(to_json_text("fields", &log.fields)?)
            .bind(micros(now))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(logs.len() as u64)
    }

    async fn list_agent_logs(&self, host: &HostId, limit: u32) -> Result<Vec<StoredAgentLog>> {
        // Newest first.
        let rows =
            sqlx::query("SELECT * FROM agent_logs WHERE host_id = ?1 ORDER BY id DESC LIMIT ?2")
                .bind(host.as_str())
                .bind(i64::from(page_limit(limit)))
                .fetch_all(&mut *self.read.get().await?)
                .await?;
        rows.iter().map(log_from_row).collect()
    }

    // ---- settings and retention ----

    async fn get_setting(&self, key: &str) -> Result<Option<serde_json::Value>> {
        let value: Option<String> = sqlx::query_scalar("SELECT value FROM settings WHERE key = ?1")
            .bind(key)
            .fetch_optional(&mut *self.read.get().await?)
            .await?;
        value
            .map(|v| from_json_text("settings.value", &v))
            .transpose()
    }

    async fn put_setting(
        &self,
        key: &str,
        value: &serde_json::Value,
        now: DateTime<Utc>,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO settings (key, value, updated_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
        )
        .bind(key)
        .bind(to_json_text("value", value)?)
        .bind(micros(now))
        .execute(&mut *self.write.get().await?)
        .await?;
        Ok(())
    }

    async fn put_setting_if_absent(
        &self,
        key: &str,
        value: &serde_json::Value,
        now: DateTime<Utc>,
    ) -> Result<serde_json::Value> {
        let mut conn = self.write.get().await?;
        sqlx::query(
            "INSERT INTO settings (key, value, updated_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (key) DO NOTHING",
        )
        .bind(key)
        .bind(to_json_text("value", value)?)
        .bind(micros(now))
        .execute(&mut *conn)
        .await?;
        let row = sqlx::query("SELECT value FROM settings WHERE key = ?1")
            .bind(key)
            .fetch_one(&mut *conn)
            .await?;
        json(&row, "value")
    }

    async fn sweep_telemetry(&self, before: DateTime<Utc>) -> Result<u64> {
        let before = micros(before);
        let mut conn = self.write.get().await?;
        let mut tx = conn.begin().await?;
        let mut deleted = 0;
        for statement in [
            "DELETE FROM kpi_batches WHERE received_at < ?1",
            "DELETE FROM agent_heartbeats WHERE at < ?1",
            "DELETE FROM agent_logs WHERE received_at < ?1",
            "DELETE FROM label_stats WHERE received_at < ?1",
        ] {
            deleted += sqlx::query(statement)
                .bind(before)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        tx.commit().await?;
        Ok(deleted)
    }

    async fn wakeups(&self) -> Result<Option<WakeupStream>> {
        Ok(None)
    }

    // ---- real-time topic events ----

    async fn append_topic_events(
        &self,
        events: &[crate::NewTopicEvent],
        now: DateTime<Utc>,
    ) -> Result<Vec<crate::TopicEvent>> {
        crate::topic_events::sqlite_append(&mut *self.write.get().await?, events, now).await
    }

    async fn list_topic_events(
        &self,
        topic: &str,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<crate::TopicEvent>> {
        crate::topic_events::sqlite_list(&mut *self.read.get().await?, topic, after_seq, limit)
            .await
    }

    async fn topic_last_seq(&self, topic: &str) -> Result<i64> {
        crate::topic_events::sqlite_last_seq(&mut *self.read.get().await?, topic).await
    }

    async fn sweep_topic_events(&self, before: DateTime<Utc>) -> Result<u64> {
        crate::topic_events::sqlite_sweep(&mut *self.write.get().await?, before).await
    }

    async fn update_agent_presence(
        &self,
        online_since: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Vec<(HostId, bool)>> {
        crate::topic_events::sqlite_presence(&mut *self.write.get().await?, online_since, now).await
    }

    async fn topic_event_notices(&self) -> Result<Option<crate::TopicNoticeStream>> {
        Ok(None)
    }

    async fn put_label_stats(
        &self,
        host: &HostId,
        interval_end: DateTime<Utc>,
        stats: &serde_json::Value,
        now: DateTime<Utc>,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO label_stats (host_id, interval_end, received_at, stats)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (host_id) DO UPDATE SET interval_end = excluded.interval_end,
                 received_at = excluded.received_at, stats = excluded.stats
             WHERE excluded.interval_end >= label_stats.interval_end",
        )
        .bind(host.as_str())
        .bind(micros(interval_end))
        .bind(micros(now))
        .bind(to_json_text("stats", stats)?)
        .execute(&mut *self.write.get().await?)
        .await?;
        Ok(())
    }

    async fn list_label_stats(&self, since: DateTime<Utc>) -> Result<Vec<StoredLabelStats>> {
        let rows =
            sqlx::query("SELECT * FROM label_stats WHERE received_at >= ?1 ORDER BY host_id")
                .bind(micros(since))
                .fetch_all(&mut *self.read.get().await?)
                .await?;
        rows.iter()
            .map(|row| {
                Ok(StoredLabelStats {
                    host_id: host("label_stats.host_id", &text(row, "host_id")?)?,
                    interval_end: time(row, "interval_end")?,
                    received_at: time(row, "received_at")?,
                    stats: json(row, "stats")?,
                })
            })
            .collect()
    }

    async fn latest_kpi_batches_by_host(
        &self,
        variant: Variant,
        experiment_id: Option<ExperimentId>,
        since: DateTime<Utc>,
    ) -> Result<Vec<StoredKpiBatch>> {
        let rows = sqlx::query(
            "SELECT * FROM (
                 SELECT k.*, ROW_NUMBER() OVER (
                     PARTITION BY host_id ORDER BY interval_end DESC, batch_id DESC) AS rank
                 FROM kpi_batches k
                 WHERE variant = ?1 AND received_at >= ?2
                   AND (?3 IS NULL OR experiment_id = ?3))
             WHERE rank = 1 ORDER BY host_id",
        )
        .bind(variant.as_str())
        .bind(micros(since))
        .bind(experiment_id.map(|e| e.to_string()))
        .fetch_all(&mut *self.read.get().await?)
        .await?;
        rows.iter().map(kpi_from_row).collect()
    }
}

async fn update_status_on(
    conn: &mut SqliteConnection,
    id: TaskId,
    host: &HostId,
    update: &TaskStatusUpdate,
    lease: Duration,
    now: DateTime<Utc>,
) -> Result<Task> {
    for _ in 0..common::STATUS_REPORT_RETRIES {
        if common::is_agent_reportable(update.status) {
            // Fast path: one conditional statement that only matches a task this host holds.
            if let Some(row) = apply_status(conn, id, host, update, lease, now).await? {
                return task_from_row(&row);
            }
        }
        // It did not match (or cannot): explain why from the stored row.
        let row = sqlx::query("SELECT * FROM tasks WHERE id = ?1")
            .bind(id.to_string())
            .fetch_optional(&mut *conn)
            .await?
            .ok_or_else(|| not_found("task", id))?;
        let task = task_from_row(&row)?;
        match common::judge_status_report(&task, host, update)? {
            StatusReport::Replay => return Ok(task),
            // The row changed between the two statements: try again.
            StatusReport::Apply => continue,
        }
    }
    let task = sqlx::query("SELECT * FROM tasks WHERE id = ?1")
        .bind(id.to_string())
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| not_found("task", id))?;
    let task = task_from_row(&task)?;
    Err(StoreError::TaskNotHeld {
        task_id: id,
        host: host.clone(),
        holder: task.assigned_to,
        status: task.status,
    })
}

async fn apply_status(
    conn: &mut SqliteConnection,
    id: TaskId,
    host: &HostId,
    update: &TaskStatusUpdate,
    lease: Duration,
    now: DateTime<Utc>,
) -> Result<Option<SqliteRow>> {
    let row = if update.status == TaskStatus::Running {
        sqlx::query(
            "UPDATE tasks SET status = 'running', started_at = COALESCE(started_at, ?3),
                 lease_expires_at = ?4, updated_at = ?3
             WHERE id = ?1 AND assigned_to = ?2 AND status IN ('assigned', 'running')
             RETURNING *",
        )
        .bind(id.to_string())
        .bind(host.as_str())
        .bind(micros(now))
        .bind(micros(common::lease_until(now, lease)))
        .fetch_optional(&mut *conn)
        .await?
    } else {
        let result = update
            .result
            .as_ref()
            .map(|r| to_json_text("result", r))
            .transpose()?;
        sqlx::query(
            "UPDATE tasks SET status = ?3, finished_at = ?4, lease_expires_at = NULL,
                 error = ?5, result = ?6, updated_at = ?4
             WHERE id = ?1 AND assigned_to = ?2 AND status IN ('assigned', 'running')
             RETURNING *",
        )
        .bind(id.to_string())
        .bind(host.as_str())
        .bind(update.status.as_str())
        .bind(micros(now))
        .bind(&update.error)
        .bind(result)
        .fetch_optional(&mut *conn)
        .await?
    };
    Ok(row)
}
