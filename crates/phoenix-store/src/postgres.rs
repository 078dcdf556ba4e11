//! The production backend: PostgreSQL shared by several stateless API replicas. Claims use
//! `FOR UPDATE SKIP LOCKED` so replicas never hand out a task twice nor wait on each other.
//! Once a transaction that made tasks claimable has committed, the hosts concerned are
//! published on `NOTIFY phoenix_task_wakeup` by a [`Notifier`] that coalesces concurrent
//! wake-ups into one statement, and [`PgStore::wakeups`] turns that channel into a stream that
//! survives database restarts.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::str::FromStr;
use std::sync::LazyLock;
use std::time::Duration as StdDuration;

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{Connection, Row};
use tokio::sync::mpsc;
use uuid::Uuid;

use phoenix_core::{
    apply_command, Agent, DeploymentId, Experiment, ExperimentCommand, ExperimentEvent,
    ExperimentId, ExperimentPatch, ExperimentPhase, Heartbeat, HostId, KpiBatch, NewTask,
    PipelineDeployment, Task, TaskId, TaskStatus, Variant,
};

use crate::common::{
    self, from_json_value, host, not_found, opt_host, page_limit, page_offset, parse,
    saturating_i64, to_u32, to_u64, StatusReport, WAKEUP_CHANNEL,
};
use crate::{
    AgentCredentials, AgentLogEntry, Backend, Enqueued, ExperimentQuery, KpiInsertOutcome, Page,
    Result, Store, StoreError, StoredAgentLog, StoredAnalysis, StoredKpiBatch, StoredLabelStats,
    TaskQuery, TaskStatusUpdate, TransitionOutcome, Wakeup, WakeupStream,
};

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

/// Connections per API process. Long-polls never hold one while they wait.
mod auth;

const MAX_CONNECTIONS: u32 = 16;
/// Connections for writes that need not wait for durability (heartbeats, `running`
/// reports, claims of targeted tasks).
const RELAXED_CONNECTIONS: u32 = 8;
/// Waiting longer than this for a connection means the database is in trouble: 503.
const ACQUIRE_TIMEOUT: StdDuration = StdDuration::from_secs(5);
/// The wake-up listener's reconnect backoff.
pub(crate) const LISTENER_MIN_BACKOFF: StdDuration = StdDuration::from_millis(100);
pub(crate) const LISTENER_MAX_BACKOFF: StdDuration = StdDuration::from_secs(5);
/// Wake-ups buffered for a slow consumer before the listener waits for it.
const WAKEUP_BUFFER: usize = 1024;

/// [`Store`] over PostgreSQL.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    /// A few connections whose commits do not wait for the WAL flush (session
    /// `synchronous_commit = off`), for writes whose loss in a database crash (the last
    /// fraction of a second) costs nothing: heartbeats (agents heartbeat again), `running`
    /// reports and claims of targeted tasks (see where they are written).
    relaxed: PgPool,
    /// What the wake-up listeners connect with (each has its own connection).
    options: PgConnectOptions,
    notifier: Notifier,
}

impl PgStore {
    /// Connect to `postgres://…` (or `postgresql://…`) and migrate the schema.
    pub async fn connect(url: &str) -> Result<Self> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::Unavailable(format!("invalid PostgreSQL url: {e}")))?
            .application_name("phoenix");
        let target = format!(
            "{}:{}/{}",
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap_or("")
        );
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            // A ping per checkout doubles the round trips of every short query; a broken
            // connection surfaces as an error on first use and the pool replaces it.
            .test_before_acquire(false)
            .connect_with(options.clone())
            .await
            .map_err(|e| {
                StoreError::Unavailable(format!("cannot connect to PostgreSQL at {target}: {e}"))
            })?;
        MIGRATOR.run(&pool).await?;
        let relaxed = PgPoolOptions::new()
            .max_connections(RELAXED_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .test_before_acquire(false)
            .after_connect(|conn, _| {
                Box::pin(async move {
                    sqlx::query("SET synchronous_commit = off")
                        .execute(conn)
                        .await?;
                    Ok(())
                })
            })
            .connect_lazy_with(options.clone());
        let notifier = Notifier::start(options.clone());
        Ok(Self {
            pool,
            relaxed,
            options,
            notifier,
        })
    }

    /// The connection pool, for callers that need a raw connection (tests, tooling).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Close the pool (waits for connections in use to be returned). Wake-up streams keep
    /// their own connections and end when dropped.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

// ---- decoding ----

fn text(row: &PgRow, column: &str) -> Result<String> {
    Ok(row.try_get(column)?)
}

fn json<T: serde::de::DeserializeOwned>(row: &PgRow, column: &str) -> Result<T> {
    from_json_value(column, row.try_get::<serde_json::Value, _>(column)?)
}

fn experiment_from_row(row: &PgRow) -> Result<Experiment> {
    Ok(Experiment {
        id: ExperimentId(row.try_get("id")?),
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
            row.try_get::<Option<i16>, _>("candidate_share_percent")?
                .map(i64::from),
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
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        started_at: row.try_get("started_at")?,
        ended_at: row.try_get("ended_at")?,
    })
}

fn event_from_row(row: &PgRow) -> Result<ExperimentEvent> {
    let phase = |column: &str| -> Result<Option<ExperimentPhase>> {
        let v: Option<String> = row.try_get(column)?;
        v.map(|v| parse(column, &v)).transpose()
    };
    Ok(ExperimentEvent {
        experiment_id: ExperimentId(row.try_get("experiment_id")?),
        seq: row.try_get("seq")?,
        kind: parse("experiment_events.kind", &text(row, "kind")?)?,
        from_phase: phase("from_phase")?,
        to_phase: phase("to_phase")?,
        message: text(row, "message")?,
        at: row.try_get("at")?,
    })
}

fn task_from_row(row: &PgRow) -> Result<Task> {
    let result: Option<serde_json::Value> = row.try_get("result")?;
    let experiment_id: Option<Uuid> = row.try_get("experiment_id")?;
    Ok(Task {
        id: TaskId(row.try_get("id")?),
        task_type: parse("tasks.task_type", &text(row, "task_type")?)?,
        status: parse("tasks.status", &text(row, "status")?)?,
        payload: row.try_get("payload")?,
        priority: row.try_get("priority")?,
        host_id: opt_host("tasks.host_id", row.try_get("host_id")?)?,
        experiment_id: experiment_id.map(ExperimentId),
        assigned_to: opt_host("tasks.assigned_to", row.try_get("assigned_to")?)?,
        attempts: to_u32(
            "tasks.attempts",
            i64::from(row.try_get::<i32, _>("attempts")?),
        )?,
        max_attempts: to_u32(
            "tasks.max_attempts",
            i64::from(row.try_get::<i32, _>("max_attempts")?),
        )?,
        not_before: row.try_get("not_before")?,
        lease_expires_at: row.try_get("lease_expires_at")?,
        idempotency_key: row.try_get("idempotency_key")?,
        error: row.try_get("error")?,
        result,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        assigned_at: row.try_get("assigned_at")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
    })
}

fn tasks_from_rows(rows: &[PgRow]) -> Result<Vec<Task>> {
    rows.iter().map(task_from_row).collect()
}

fn agent_from_row(row: &PgRow) -> Result<Agent> {
    Ok(Agent {
        host_id: host("agents.host_id", &text(row, "host_id")?)?,
        hostname: text(row, "hostname")?,
        version: text(row, "version")?,
        capabilities: json(row, "capabilities")?,
        labels: json(row, "labels")?,
        resource_usage: json(row, "resource_usage")?,
        running_pipelines: json(row, "running_pipelines")?,
        enrolled_at: row.try_get("enrolled_at")?,
        last_seen_at: row.try_get("last_seen_at")?,
        revoked: row.try_get("revoked")?,
    })
}

fn kpi_from_row(row: &PgRow) -> Result<StoredKpiBatch> {
    let experiment_id: Option<Uuid> = row.try_get("experiment_id")?;
    Ok(StoredKpiBatch {
        host_id: host("kpi_batches.host_id", &text(row, "host_id")?)?,
        received_at: row.try_get("received_at")?,
        batch: KpiBatch {
            batch_id: row.try_get("batch_id")?,
            experiment_id: experiment_id.map(ExperimentId),
            variant: parse::<Variant>("kpi_batches.variant", &text(row, "variant")?)?,
            interval_start: row.try_get("interval_start")?,
            interval_end: row.try_get("interval_end")?,
            values: json(row, "kpi_values")?,
            details: row.try_get("details")?,
            label_stats: None,
        },
    })
}

fn log_from_row(row: &PgRow) -> Result<StoredAgentLog> {
    Ok(StoredAgentLog {
        host_id: host("agent_logs.host_id", &text(row, "host_id")?)?,
        received_at: row.try_get("received_at")?,
        entry: AgentLogEntry {
            at: row.try_get("at")?,
            level: common::parse_log_level("agent_logs.level", &text(row, "level")?)?,
            message: text(row, "message")?,
            fields: row.try_get("fields")?,
        },
    })
}

fn to_json<T: serde::Serialize + ?Sized>(column: &str, value: &T) -> Result<serde_json::Value> {
    serde_json::to_value(value)
        .map_err(|e| StoreError::Corrupt(format!("cannot encode {column} as JSON: {e}")))
}

// ---- statements shared by several operations ----

/// "Held by the host in `$1`" (resp. `$2`), for updates that reach tasks by primary key. The
/// `CASE` is deliberate: it is opaque to the planner, so the generic plan of the prepared
/// statement cannot pick the partial index `tasks_held` instead of the primary key. That index
/// keeps an entry for every task the host held since the last vacuum (dead ones included),
/// and scanning it made each report cost O(tasks recently completed by the host).
const HELD_BY_1: &str =
    "CASE WHEN t.status IN ('assigned', 'running') THEN t.assigned_to = $1 ELSE false END";
const HELD_BY_2: &str =
    "CASE WHEN t.status IN ('assigned', 'running') THEN t.assigned_to = $2 ELSE false END";

async fn lock_experiment(conn: &mut PgConnection, id: ExperimentId) -> Result<Experiment> {
    let row = sqlx::query("SELECT * FROM experiments WHERE id = $1 FOR UPDATE")
        .bind(id.as_uuid())
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| not_found("experiment", id))?;
    experiment_from_row(&row)
}

/// Persist every mutable column of `e` and take the next event seq (under the row lock).
async fn save_experiment(conn: &mut PgConnection, e: &Experiment) -> Result<i64> {
    let seq: i64 = sqlx::query_scalar(
        "UPDATE experiments SET name = $1, description = $2, phase = $3, promoted = $4,
             phase_reason = $5, baseline_pipeline = $6, candidate_pipeline = $7,
             target_hosts = $8, mode = $9, candidate_share_percent = $10,
             duration_seconds = $11, parameters = $12, owner = $13, updated_at = $14,
             started_at = $15, ended_at = $16, analysis = $18,
             target_selector = $19, excluded_targets = $20,
             last_event_seq = last_event_seq + 1
         WHERE id = $17
         RETURNING last_event_seq",
    )
    .bind(&e.name)
    .bind(&e.description)
    .bind(e.phase.as_str())
    .bind(e.promoted)
    .bind(&e.phase_reason)
    .bind(&e.baseline_pipeline)
    .bind(&e.candidate_pipeline)
    .bind(to_json("target_hosts", &e.target_hosts)?)
    .bind(common::mode_str(e.mode))
    .bind(e.candidate_share_percent.map(i16::from))
    .bind(saturating_i64(e.duration_seconds))
    .bind(&e.parameters)
    .bind(&e.owner)
    .bind(e.updated_at)
    .bind(e.started_at)
    .bind(e.ended_at)
    .bind(e.id.as_uuid())
    .bind(to_json("analysis", &e.analysis)?)
    .bind(to_json("target_selector", &e.target_selector)?)
    .bind(to_json("excluded_targets", &e.excluded_targets)?)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| not_found("experiment", e.id))?;
    Ok(seq)
}

async fn insert_event(conn: &mut PgConnection, event: &ExperimentEvent) -> Result<()> {
    sqlx::query(
        "INSERT INTO experiment_events (experiment_id, seq, kind, from_phase, to_phase, message, at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(event.experiment_id.as_uuid())
    .bind(event.seq)
    .bind(event.kind.as_str())
    .bind(event.from_phase.map(|p| p.as_str()))
    .bind(event.to_phase.map(|p| p.as_str()))
    .bind(&event.message)
    .bind(event.at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Insert a task, or return the one already queued under its idempotency key. A concurrent
/// insert of the same key waits for the other transaction (`ON CONFLICT` takes the index
/// entry's lock) and then reads its task.
async fn insert_task(
    conn: &mut PgConnection,
    new: &NewTask,
    now: DateTime<Utc>,
) -> Result<Enqueued> {
    let t = common::new_task(new, now);
    let max_attempts = i32::try_from(t.max_attempts).unwrap_or(i32::MAX);
    let inserted = sqlx::query(
        "INSERT INTO tasks (id, task_type, status, payload, priority, host_id, experiment_id,
             attempts, max_attempts, not_before, idempotency_key, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, 0, $8, $9, $10, $11, $11)
         ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
         RETURNING *",
    )
    .bind(t.id.as_uuid())
    .bind(t.task_type.as_str())
    .bind(t.status.as_str())
    .bind(&t.payload)
    .bind(t.priority)
    .bind(t.host_id.as_ref().map(HostId::as_str))
    .bind(t.experiment_id.map(|e| e.as_uuid()))
    .bind(max_attempts)
    .bind(t.not_before)
    .bind(&t.idempotency_key)
    .bind(now)
    .fetch_optional(&mut *conn)
    .await
    .map_err(|e| common::enqueue_error(new, e))?;
    if let Some(row) = inserted {
        return Ok(Enqueued {
            task: task_from_row(&row)?,
            created: true,
        });
    }
    let key = t.idempotency_key.as_deref().unwrap_or_default();
    let row = sqlx::query("SELECT * FROM tasks WHERE idempotency_key = $1")
        .bind(key)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| not_found("task with idempotency key", key))?;
    Ok(Enqueued {
        task: task_from_row(&row)?,
        created: false,
    })
}

/// Commit this transaction without waiting for its WAL flush. Only for telemetry (heartbeats,
/// agent logs): a database crash may lose the last fraction of a second of it, and nothing
/// depends on that. Thousands of agents heartbeating would otherwise each wait for an fsync.
async fn relaxed_durability(conn: &mut PgConnection) -> Result<()> {
    sqlx::query("SET LOCAL synchronous_commit = off")
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Publishes wake-ups on [`WAKEUP_CHANNEL`] after the transactions that caused them have
/// committed. Sending `NOTIFY` inside those transactions serialised every enqueue's commit
/// behind PostgreSQL's database-wide notify lock *and* its WAL flush (the `Lock object` wait
/// that capped enqueues at a few thousand per second); here one background task gathers
/// whatever accumulated while its previous statement ran and sends it as one statement, on a
/// connection of its own with asynchronous commit (a notification lost to a crash costs a
/// listener nothing: it resyncs when it reconnects).
///
/// A payload is a comma-separated list: a host id, `""` for host-less tasks, or `~<host>`
/// when that agent's credentials changed (host ids never contain `,` or `~`).
#[derive(Debug, Clone)]
struct Notifier {
    tx: mpsc::UnboundedSender<String>,
}

/// `NOTIFY` payloads must stay under 8000 bytes.
const NOTIFY_PAYLOAD_MAX: usize = 7_900;

impl Notifier {
    fn start(options: PgConnectOptions) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run_notifier(options, rx));
        Self { tx }
    }

    /// Wake long-polls of these hosts (`None`: tasks any host may claim).
    fn tasks_claimable<'a>(&self, hosts: impl IntoIterator<Item = Option<&'a HostId>>) {
        for host in hosts {
            // The receiver lives as long as any clone of the store.
            let _ = self
                .tx
                .send(host.map(|h| h.as_str().to_string()).unwrap_or_default());
        }
    }

    fn agent_changed(&self, host: &HostId) {
        let _ = self.tx.send(format!("~{host}"));
    }
}

async fn run_notifier(options: PgConnectOptions, mut rx: mpsc::UnboundedReceiver<String>) {
    let mut conn: Option<PgConnection> = None;
    let mut pending: BTreeSet<String> = BTreeSet::new();
    let mut backoff = LISTENER_MIN_BACKOFF;
    loop {
        if pending.is_empty() {
            match rx.recv().await {
                Some(item) => {
                    pending.insert(item);
                }
                None => return,
            }
        }
        while let Ok(item) = rx.try_recv() {
            pending.insert(item);
        }
        let mut payloads = Vec::new();
        let mut chunk: Vec<&str> = Vec::new();
        let mut len = 0;
        for item in &pending {
            if !chunk.is_empty() && len + 1 + item.len() > NOTIFY_PAYLOAD_MAX {
                payloads.push(chunk.join(","));
                chunk.clear();
                len = 0;
            }
            len += item.len() + usize::from(!chunk.is_empty());
            chunk.push(item);
        }
        if !chunk.is_empty() {
            payloads.push(chunk.join(","));
        }
        match send_notifications(&mut conn, &options, &payloads).await {
            Ok(()) => {
                pending.clear();
                backoff = LISTENER_MIN_BACKOFF;
            }
            Err(e) => {
                // Keep what is pending and try again on a new connection.
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64,
                    "cannot publish task wake-ups");
                conn = None;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(LISTENER_MAX_BACKOFF);
            }
        }
    }
}

async fn send_notifications(
    conn: &mut Option<PgConnection>,
    options: &PgConnectOptions,
    payloads: &[String],
) -> Result<(), sqlx::Error> {
    let c = match conn {
        Some(c) => c,
        None => {
            let mut c = PgConnection::connect_with(options).await?;
            sqlx::query("SET synchronous_commit = off")
                .execute(&mut c)
                .await?;
            conn.insert(c)
        }
    };
    sqlx::query("SELECT pg_notify($1, payload) FROM unnest($2::text[]) AS payload")
        .bind(WAKEUP_CHANNEL)
        .bind(payloads)
        .execute(c)
        .await?;
    Ok(())
}

/// The wake-ups one notification carries.
fn parse_wakeups(payload: &str) -> Vec<Wakeup> {
    payload
        .split(',')
        .map(|item| match item {
            "" => Wakeup::AnyHost,
            item => match item.strip_prefix('~') {
                Some(host) => match HostId::parse(host) {
                    Ok(host) => Wakeup::AgentChanged(host),
                    Err(_) => Wakeup::Resync,
                },
                None => match HostId::parse(item) {
                    Ok(host) => Wakeup::Host(host),
                    // Not ours to interpret: have everyone look.
                    Err(_) => Wakeup::Resync,
                },
            },
        })
        .collect()
}

/// Claim up to `limit` tasks for `host` on this connection (see [`Store::claim_tasks`]).
async fn claim_on(
    conn: &mut PgConnection,
    host: &HostId,
    limit: u32,
    lease: Duration,
    now: DateTime<Utc>,
) -> Result<Vec<Task>> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    // The claimable ids are collected once (an InitPlan: the LIMIT applies once) and the
    // rows reached through the primary key. They come from two ordered, locked ranges of
    // `tasks_claimable_host` (this host's tasks, host-less tasks) merged in claim order, so
    // the plan does not depend on statistics and a claim costs O(limit) whatever the
    // backlog of other hosts (a single `host_id = $1 OR host_id IS NULL` scan let a stale
    // ANALYZE pick a bitmap scan that sorted the whole backlog). SKIP LOCKED lets
    // concurrent claimers (other replicas) take the next rows instead of waiting on these;
    // rows locked by a branch but not claimed are released at commit. Not `FROM (CTE)
    // JOIN`: the generic plan of that prepared statement hash-joins against a sequential
    // scan of the whole table.
    let rows = sqlx::query(
        "UPDATE tasks t SET status = 'assigned', assigned_to = $1, assigned_at = $2,
                 lease_expires_at = $3, attempts = t.attempts + 1, updated_at = $2
             WHERE t.id = ANY(ARRAY(
                 WITH own AS (
                     SELECT id, priority, created_at FROM tasks
                     WHERE status = 'pending' AND host_id = $1
                       AND (not_before IS NULL OR not_before <= $2)
                     ORDER BY priority DESC, created_at, id
                     LIMIT $4
                     FOR UPDATE SKIP LOCKED
                 ), shared AS (
                     SELECT id, priority, created_at FROM tasks
                     WHERE status = 'pending' AND host_id IS NULL
                       AND (not_before IS NULL OR not_before <= $2)
                     ORDER BY priority DESC, created_at, id
                     LIMIT $4
                     FOR UPDATE SKIP LOCKED
                 )
                 SELECT c.id FROM (SELECT * FROM own UNION ALL SELECT * FROM shared) c
                 ORDER BY c.priority DESC, c.created_at, c.id
                 LIMIT $4))
             RETURNING t.*",
    )
    .bind(host.as_str())
    .bind(now)
    .bind(common::lease_until(now, lease))
    .bind(i64::from(limit))
    .fetch_all(&mut *conn)
    .await?;
    let mut tasks = tasks_from_rows(&rows)?;
    common::sort_in_claim_order(&mut tasks);
    Ok(tasks)
}

#[async_trait]
impl Store for PgStore {
    fn backend(&self) -> Backend {
        Backend::Postgres
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    // ---- experiments ----

    async fn create_experiment(&self, e: &Experiment) -> Result<ExperimentEvent> {
        let event = common::created_event(e);
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO experiments (id, name, description, phase, promoted, phase_reason,
                 baseline_pipeline, candidate_pipeline, target_hosts, mode,
                 candidate_share_percent, duration_seconds, parameters, owner, created_at,
                 updated_at, started_at, ended_at, analysis, target_selector, last_event_seq)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17,
                 $18, $19, $20, 1)",
        )
        .bind(e.id.as_uuid())
        .bind(&e.name)
        .bind(&e.description)
        .bind(e.phase.as_str())
        .bind(e.promoted)
        .bind(&e.phase_reason)
        .bind(&e.baseline_pipeline)
        .bind(&e.candidate_pipeline)
        .bind(to_json("target_hosts", &e.target_hosts)?)
        .bind(common::mode_str(e.mode))
        .bind(e.candidate_share_percent.map(i16::from))
        .bind(saturating_i64(e.duration_seconds))
        .bind(&e.parameters)
        .bind(&e.owner)
        .bind(e.created_at)
        .bind(e.updated_at)
        .bind(e.started_at)
        .bind(e.ended_at)
        .bind(to_json("analysis", &e.analysis)?)
        .bind(to_json("target_selector", &e.target_selector)?)
        .execute(&mut *tx)
        .await?;
        insert_event(&mut tx, &event).await?;
        tx.commit().await?;
        Ok(event)
    }

    async fn get_experiment(&self, id: ExperimentId) -> Result<Experiment> {
        let row = sqlx::query("SELECT * FROM experiments WHERE id = $1")
            .bind(id.as_uuid())
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| not_found("experiment", id))?;
        experiment_from_row(&row)
    }

    async fn list_experiments(&self, query: &ExperimentQuery) -> Result<Page<Experiment>> {
        let limit = page_limit(query.limit);
        let phase = query.phase.map(|p| p.as_str());
        let total: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM experiments WHERE $1::text IS NULL OR phase = $1",
        )
        .bind(phase)
        .fetch_one(&self.pool)
        .await?;
        let rows = sqlx::query(
            "SELECT * FROM experiments WHERE $1::text IS NULL OR phase = $1
             ORDER BY created_at DESC, id DESC LIMIT $2 OFFSET $3",
        )
        .bind(phase)
        .bind(i64::from(limit))
        .bind(page_offset(query.offset))
        .fetch_all(&self.pool)
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
        let mut tx = self.pool.begin().await?;
        let mut experiment = lock_experiment(&mut tx, id).await?;
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
        let mut tx = self.pool.begin().await?;
        let experiment = lock_experiment(&mut tx, id).await?;
        if experiment.phase.is_active() {
            return Err(StoreError::ExperimentActive {
                id: id.to_string(),
                phase: experiment.phase,
            });
        }
        sqlx::query("DELETE FROM experiments WHERE id = $1")
            .bind(id.as_uuid())
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
        let mut tx = self.pool.begin().await?;
        let mut experiment = lock_experiment(&mut tx, id).await?;
        let transition = apply_command(experiment.phase, experiment.promoted, command)?;
        experiment.record(&transition, now);
        let seq = save_experiment(&mut tx, &experiment).await?;
        let event = common::phase_event(&experiment, seq, &transition, now);
        insert_event(&mut tx, &event).await?;
        if let Some(reason) = common::cancels_queued_tasks(command) {
            sqlx::query(
                "UPDATE tasks SET status = 'failed', error = $2, finished_at = $3, updated_at = $3
                 WHERE experiment_id = $1 AND status = 'pending'",
            )
            .bind(id.as_uuid())
            .bind(reason)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        if let ExperimentCommand::ExcludeTargets { targets } = command {
            for (host, _) in targets {
                sqlx::query(
                    "UPDATE tasks SET status = 'failed', error = $3, finished_at = $4, updated_at = $4
                     WHERE experiment_id = $1 AND host_id = $2 AND status = 'pending'",
                )
                .bind(id.as_uuid())
                .bind(host.as_str())
                .bind("cancelled: the target was excluded from the experiment")
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
        }
        let mut tasks = Vec::with_capacity(enqueue.len());
        let mut woken = Vec::new();
        for new in enqueue {
            let enqueued = insert_task(&mut tx, new, now).await?;
            if enqueued.created {
                woken.push(enqueued.task.host_id.clone());
            }
            tasks.push(enqueued.task);
        }
        tx.commit().await?;
        self.notifier
            .tasks_claimable(woken.iter().map(Option::as_ref));
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
        let rows = sqlx::query(
            "SELECT * FROM experiment_events WHERE experiment_id = $1 AND seq > $2
             ORDER BY seq LIMIT $3",
        )
        .bind(id.as_uuid())
        .bind(after_seq)
        .bind(i64::from(page_limit(limit)))
        .fetch_all(&self.pool)
        .await?;
        if rows.is_empty() {
            // Tell "no new events" from "no such experiment".
            self.get_experiment(id).await?;
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
                 WHERE phase NOT IN ({}) OR COALESCE(ended_at, updated_at) >= $1
                 ORDER BY id",
                common::terminal_phases_sql()
            )
        });
        let rows = sqlx::query(&QUERY)
            .bind(finished_since)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    ExperimentId(row.try_get("id")?),
                    parse("experiments.phase", &text(row, "phase")?)?,
                ))
            })
            .collect()
    }

    // ---- task queue ----

    async fn enqueue_task(&self, task: &NewTask, now: DateTime<Utc>) -> Result<Enqueued> {
        // No explicit transaction: the insert commits on its own, and the lookup after a
        // conflicting key reads the committed task (ON CONFLICT waited for its transaction).
        let enqueued = insert_task(&mut *self.pool.acquire().await?, task, now).await?;
        if enqueued.created {
            self.notifier
                .tasks_claimable([enqueued.task.host_id.as_ref()]);
        }
        Ok(enqueued)
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
                serde_json::json!({
                    "id": t.id.as_uuid(),
                    "task_type": t.task_type.as_str(),
                    "payload": t.payload,
                    "priority": t.priority,
                    "host_id": t.host_id.as_ref().map(HostId::as_str),
                    "experiment_id": t.experiment_id.map(|e| e.as_uuid()),
                    "max_attempts": t.max_attempts,
                    "not_before": t.not_before,
                    "idempotency_key": t.idempotency_key,
                })
            })
            .collect::<Vec<_>>();
        // One statement (one commit) for the batch. An unknown experiment id fails the whole
        // statement: then each task is enqueued on its own so only that one is refused.
        let inserted = sqlx::query(
            "INSERT INTO tasks (id, task_type, status, payload, priority, host_id, experiment_id,
                 attempts, max_attempts, not_before, idempotency_key, created_at, updated_at)
             SELECT r.id, r.task_type, 'pending', r.payload, r.priority, r.host_id,
                 r.experiment_id, 0, r.max_attempts, r.not_before, r.idempotency_key, $2, $2
             FROM jsonb_to_recordset($1::jsonb) AS r(id uuid, task_type text, payload jsonb,
                 priority integer, host_id text, experiment_id uuid, max_attempts integer,
                 not_before timestamptz, idempotency_key text)
             ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
             RETURNING *",
        )
        .bind(serde_json::Value::Array(rows))
        .bind(now)
        .fetch_all(&self.pool)
        .await;
        let mut outcomes = Vec::with_capacity(tasks.len());
        match inserted {
            Ok(rows) => {
                let mut created: HashMap<TaskId, Task> = tasks_from_rows(&rows)?
                    .into_iter()
                    .map(|t| (t.id, t))
                    .collect();
                self.notifier
                    .tasks_claimable(created.values().map(|t| t.host_id.as_ref()));
                for (new, t) in tasks.iter().zip(&built) {
                    match created.remove(&t.id) {
                        Some(task) => outcomes.push(Ok(Enqueued {
                            task,
                            created: true,
                        })),
                        // Its idempotency key named a task already: answer with that one.
                        None => match self.enqueue_task(new, now).await {
                            Err(e) if e.is_database_failure() => return Err(e),
                            outcome => outcomes.push(outcome),
                        },
                    }
                }
            }
            Err(e) if common::is_foreign_key_violation(&e) => {
                for new in tasks {
                    match self.enqueue_task(new, now).await {
                        Err(e) if e.is_database_failure() => return Err(e),
                        outcome => outcomes.push(outcome),
                    }
                }
            }
            Err(e) => return Err(e.into()),
        }
        Ok(outcomes)
    }

    async fn get_task(&self, id: TaskId) -> Result<Task> {
        let row = sqlx::query("SELECT * FROM tasks WHERE id = $1")
            .bind(id.as_uuid())
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| not_found("task", id))?;
        task_from_row(&row)
    }

    async fn list_tasks(&self, query: &TaskQuery) -> Result<Page<Task>> {
        let limit = page_limit(query.limit);
        let status = query.status.map(|s| s.as_str());
        let host = query.host_id.as_ref().map(HostId::as_str);
        let experiment = query.experiment_id.map(|e| e.as_uuid());
        const FILTER: &str = "($1::text IS NULL OR status = $1)
             AND ($2::text IS NULL OR host_id = $2)
             AND ($3::uuid IS NULL OR experiment_id = $3)";
        let total: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM tasks WHERE {FILTER}"))
            .bind(status)
            .bind(host)
            .bind(experiment)
            .fetch_one(&self.pool)
            .await?;
        let rows = sqlx::query(&format!(
            "SELECT * FROM tasks WHERE {FILTER} ORDER BY created_at DESC, id DESC
             LIMIT $4 OFFSET $5"
        ))
        .bind(status)
        .bind(host)
        .bind(experiment)
        .bind(i64::from(limit))
        .bind(page_offset(query.offset))
        .fetch_all(&self.pool)
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
        claim_on(&mut *self.pool.acquire().await?, host, limit, lease, now).await
    }

    async fn claim_tasks_for_hosts(
        &self,
        claims: &[(HostId, u32)],
        lease: Duration,
        now: DateTime<Utc>,
    ) -> Result<Vec<Vec<Task>>> {
        if claims.is_empty() {
            return Ok(Vec::new());
        }
        // One transaction, one commit (one WAL flush) for the batch. When no host-less task is
        // claimable and no host asks twice (the usual case: experiments target hosts), one
        // statement claims every host's own tasks (a LATERAL index range per host). Otherwise
        // each host claims in turn, each statement seeing the rows claimed before it as no
        // longer pending, so no task goes twice and the merge order stays exact.
        let distinct: HashSet<&HostId> = claims.iter().map(|(h, _)| h).collect();
        let shared_claimable: bool = sqlx::query_scalar(
            "SELECT EXISTS(SELECT 1 FROM tasks WHERE status = 'pending' AND host_id IS NULL
                 AND (not_before IS NULL OR not_before <= $1))",
        )
        .bind(now)
        .fetch_one(&self.pool)
        .await?;
        let mut claimed = Vec::with_capacity(claims.len());
        if shared_claimable || distinct.len() < claims.len() {
            let mut tx = self.pool.begin().await?;
            for (host, limit) in claims {
                claimed.push(claim_on(&mut tx, host, *limit, lease, now).await?);
            }
            tx.commit().await?;
        } else {
            let requests: Vec<serde_json::Value> = claims
                .iter()
                .map(|(host, limit)| serde_json::json!({"host": host.as_str(), "lim": limit}))
                .collect();
            let rows = sqlx::query(
                "UPDATE tasks t SET status = 'assigned', assigned_to = p.host, assigned_at = $2,
                     lease_expires_at = $3, attempts = t.attempts + 1, updated_at = $2
                 FROM (
                     SELECT x.id, r.host FROM jsonb_to_recordset($1::jsonb) AS r(host text, lim int)
                     CROSS JOIN LATERAL (
                         SELECT id FROM tasks
                         WHERE status = 'pending' AND host_id = r.host
                           AND (not_before IS NULL OR not_before <= $2)
                         ORDER BY priority DESC, created_at, id
                         LIMIT r.lim
                         FOR UPDATE SKIP LOCKED) x
                 ) p
                 WHERE t.id = p.id
                 RETURNING t.*",
            )
            .bind(serde_json::Value::Array(requests))
            .bind(now)
            .bind(common::lease_until(now, lease))
            .fetch_all(&self.relaxed)
            .await?;
            let mut by_host: HashMap<HostId, Vec<Task>> = HashMap::new();
            for task in tasks_from_rows(&rows)? {
                if let Some(holder) = task.assigned_to.clone() {
                    by_host.entry(holder).or_default().push(task);
                }
            }
            for (host, _) in claims {
                let mut tasks = by_host.remove(host).unwrap_or_default();
                common::sort_in_claim_order(&mut tasks);
                claimed.push(tasks);
            }
        }
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
        for _ in 0..common::STATUS_REPORT_RETRIES {
            if common::is_agent_reportable(update.status) {
                // Fast path: one conditional statement that only matches a task this host holds.
                if let Some(row) = apply_status(&self.pool, id, host, update, lease, now).await? {
                    return task_from_row(&row);
                }
            }
            let task = self.get_task(id).await?;
            match common::judge_status_report(&task, host, update)? {
                StatusReport::Replay => return Ok(task),
                // The row changed between the two statements: try again.
                StatusReport::Apply => continue,
            }
        }
        let task = self.get_task(id).await?;
        Err(StoreError::TaskNotHeld {
            task_id: id,
            host: host.clone(),
            holder: task.assigned_to,
            status: task.status,
        })
    }

    async fn complete_tasks(
        &self,
        host: &HostId,
        reports: &[(TaskId, TaskStatusUpdate)],
        lease: Duration,
        now: DateTime<Utc>,
    ) -> Result<Vec<Result<Task>>> {
        // Terminal reports of tasks this host holds: one statement for the whole batch.
        let mut ids = Vec::new();
        let mut statuses = Vec::new();
        let mut errors = Vec::new();
        let mut results = Vec::new();
        for (id, update) in reports.iter().filter(|(_, u)| u.status.is_terminal()) {
            ids.push(id.as_uuid());
            statuses.push(update.status.as_str());
            errors.push(update.error.clone());
            results.push(update.result.as_ref().map(|r| r.to_string()));
        }
        let mut applied: HashMap<TaskId, Task> = HashMap::new();
        if !ids.is_empty() {
            let rows = sqlx::query(&format!(
                "UPDATE tasks t SET status = r.status, finished_at = $2, lease_expires_at = NULL,
                     error = r.error, result = r.result::jsonb, updated_at = $2
                 FROM unnest($3::uuid[], $4::text[], $5::text[], $6::text[])
                     AS r(id, status, error, result)
                 WHERE t.id = r.id AND {HELD_BY_1}
                 RETURNING t.*"
            ))
            .bind(host.as_str())
            .bind(now)
            .bind(ids)
            .bind(statuses)
            .bind(errors)
            .bind(results)
            .fetch_all(&self.pool)
            .await?;
            for row in &rows {
                let task = task_from_row(row)?;
                applied.insert(task.id, task);
            }
        }
        // Everything else (running reports, replays, refusals) one by one, in order.
        let mut outcomes = Vec::with_capacity(reports.len());
        for (id, update) in reports {
            if let Some(task) = applied.remove(id) {
                outcomes.push(Ok(task));
                continue;
            }
            match self.update_task_status(*id, host, update, lease, now).await {
                Err(e) if e.is_database_failure() => return Err(e),
                outcome => outcomes.push(outcome),
            }
        }
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
        // Every report of a task its host holds, in one statement per durability; the rest
        // (refusals, replays, repeats within the batch) are judged one by one below. The
        // holder check is a CASE for the reason given at HELD_BY_1.
        //
        // `running` reports commit without waiting for the WAL flush: losing one to a
        // database crash leaves the task `assigned`, from which its holder may still report
        // it finished, so nothing depends on it being durable. Finished tasks wait for it.
        let (running, finished): (Vec<serde_json::Value>, Vec<serde_json::Value>) = match rows {
            serde_json::Value::Array(rows) => rows
                .into_iter()
                .partition(|r| r.get("status").and_then(|s| s.as_str()) == Some("running")),
            _ => (Vec::new(), Vec::new()),
        };
        let mut applied_rows = Vec::with_capacity(reports.len());
        for (rows, pool) in [(running, &self.relaxed), (finished, &self.pool)] {
            if rows.is_empty() {
                continue;
            }
            // `t.id = ANY($4)` puts the primary key in the generic plan's index condition:
            // joining on the JSON rows alone let it settle on a hash join over a sequential
            // scan of the whole table (seen: 70 buffers read per row reported).
            let ids: Vec<Uuid> = rows
                .iter()
                .filter_map(|r| r.get("id").and_then(|id| id.as_str()))
                .filter_map(|id| Uuid::parse_str(id).ok())
                .collect();
            applied_rows.extend(
                sqlx::query(
                    "UPDATE tasks t SET status = b.status,
                         started_at = CASE WHEN b.status = 'running'
                             THEN COALESCE(t.started_at, $2) ELSE t.started_at END,
                         lease_expires_at = CASE WHEN b.status = 'running' THEN $3 ELSE NULL END,
                         finished_at = CASE WHEN b.status = 'running'
                             THEN t.finished_at ELSE $2 END,
                         error = CASE WHEN b.status = 'running' THEN t.error ELSE b.error END,
                         result = CASE WHEN b.status = 'running'
                             THEN t.result ELSE b.result::jsonb END,
                         updated_at = $2
                     FROM jsonb_to_recordset($1::jsonb)
                         AS b(id uuid, host text, status text, error text, result text)
                     WHERE t.id = ANY($4) AND t.id = b.id
                       AND CASE WHEN t.status IN ('assigned', 'running')
                           THEN t.assigned_to = b.host ELSE false END
                     RETURNING t.*",
                )
                .bind(serde_json::Value::Array(rows))
                .bind(now)
                .bind(common::lease_until(now, lease))
                .bind(ids)
                .fetch_all(pool)
                .await?,
            );
        }
        let applied = applied_rows;
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
            match self.update_task_status(*id, host, update, lease, now).await {
                Err(e) if e.is_database_failure() => return Err(e),
                outcome => outcomes.push(outcome),
            }
        }
        Ok(outcomes)
    }

    async fn renew_leases(
        &self,
        host: &HostId,
        lease: Duration,
        now: DateTime<Utc>,
    ) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE tasks SET lease_expires_at = $2, updated_at = $3
             WHERE assigned_to = $1 AND status IN ('assigned', 'running')",
        )
        .bind(host.as_str())
        .bind(common::lease_until(now, lease))
        .bind(now)
        .execute(&self.pool)
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
        let held: Vec<Uuid> = held.iter().map(|t| t.as_uuid()).collect();
        let rows = sqlx::query(
            "UPDATE tasks SET
                 status = CASE WHEN attempts >= max_attempts THEN 'failed' ELSE 'pending' END,
                 error = 'its delivery to host ' || $1 || ' was lost (the agent does not hold it)'
                     || CASE WHEN attempts >= max_attempts
                        THEN ' after ' || attempts || ' of ' || max_attempts || ' attempts'
                        ELSE ' (attempt ' || attempts || ' of ' || max_attempts || ')' END,
                 assigned_to = CASE WHEN attempts >= max_attempts THEN assigned_to ELSE NULL END,
                 finished_at = CASE WHEN attempts >= max_attempts THEN $4 ELSE NULL END,
                 lease_expires_at = NULL,
                 updated_at = $4
             WHERE assigned_to = $1 AND status IN ('assigned', 'running') AND assigned_at < $3
               AND NOT (id = ANY($2))
             RETURNING *",
        )
        .bind(host.as_str())
        .bind(&held)
        .bind(assigned_before)
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        let mut tasks = tasks_from_rows(&rows)?;
        self.notifier.tasks_claimable(
            tasks
                .iter()
                .filter(|t| t.status == TaskStatus::Pending)
                .map(|t| t.host_id.as_ref()),
        );
        tasks.sort_by_key(|t| t.id);
        Ok(tasks)
    }

    async fn expire_leases(&self, now: DateTime<Utc>) -> Result<Vec<Task>> {
        let mut tx = self.pool.begin().await?;
        // Two replicas expiring at once: the second waits on the row locks, re-checks the
        // WHERE clause against the committed rows, and skips them.
        let rows = sqlx::query(
            "UPDATE tasks SET
                 status = CASE WHEN attempts >= max_attempts THEN 'failed' ELSE 'pending' END,
                 error = CASE WHEN attempts >= max_attempts
                     THEN 'lease expired on host ' || COALESCE(assigned_to, '?') || ' after '
                          || attempts || ' of ' || max_attempts || ' attempts'
                     ELSE 'lease expired on host ' || COALESCE(assigned_to, '?') || ' (attempt '
                          || attempts || ' of ' || max_attempts || ')' END,
                 assigned_to = CASE WHEN attempts >= max_attempts THEN assigned_to ELSE NULL END,
                 finished_at = CASE WHEN attempts >= max_attempts THEN $1 ELSE NULL END,
                 lease_expires_at = NULL,
                 updated_at = $1
             WHERE status IN ('assigned', 'running') AND lease_expires_at <= $1
             RETURNING *",
        )
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        let mut tasks = tasks_from_rows(&rows)?;
        tx.commit().await?;
        self.notifier.tasks_claimable(
            tasks
                .iter()
                .filter(|t| t.status == TaskStatus::Pending)
                .map(|t| t.host_id.as_ref()),
        );
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
             WHERE status = 'pending' AND not_before > $1 AND not_before <= $2",
        )
        .bind(after)
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        let mut hosts = hosts
            .into_iter()
            .map(|h| opt_host("tasks.host_id", h))
            .collect::<Result<Vec<_>>>()?;
        hosts.sort();
        Ok(hosts)
    }

    async fn sweep_finished_tasks(&self, before: DateTime<Utc>) -> Result<u64> {
        let done = sqlx::query(
            "DELETE FROM tasks WHERE status IN ('completed', 'failed') AND finished_at < $1",
        )
        .bind(before)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn task_counts(&self) -> Result<BTreeMap<TaskStatus, u64>> {
        let rows = sqlx::query("SELECT status, COUNT(*) AS n FROM tasks GROUP BY status")
            .fetch_all(&self.pool)
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
            "INSERT INTO agents (host_id, secret_hash, enrolled_at) VALUES ($1, $2, $3)
             ON CONFLICT (host_id) DO UPDATE SET secret_hash = EXCLUDED.secret_hash
                 WHERE agents.revoked = false
             RETURNING *",
        )
        .bind(host.as_str())
        .bind(secret_hash)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::AgentRevoked(host.clone()))?;
        self.notifier.agent_changed(host);
        agent_from_row(&row)
    }

    async fn agent_credentials(&self, host: &HostId) -> Result<Option<AgentCredentials>> {
        let row = sqlx::query("SELECT secret_hash, revoked FROM agents WHERE host_id = $1")
            .bind(host.as_str())
            .fetch_optional(&self.pool)
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
        let mut tx = self.pool.begin().await?;
        relaxed_durability(&mut tx).await?;
        let updated = sqlx::query(
            "UPDATE agents SET hostname = COALESCE(NULLIF($2, ''), hostname),
                 version = COALESCE(NULLIF($3, ''), version), capabilities = $4, labels = $5,
                 resource_usage = $6, running_pipelines = $7, last_seen_at = $8
             WHERE host_id = $1 AND revoked = false",
        )
        .bind(host.as_str())
        .bind(&heartbeat.hostname)
        .bind(&heartbeat.version)
        .bind(to_json("capabilities", &heartbeat.capabilities)?)
        .bind(to_json("labels", &heartbeat.labels)?)
        .bind(to_json("resource_usage", &heartbeat.resource_usage)?)
        .bind(to_json("running_pipelines", &heartbeat.running_pipelines)?)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 0 {
            let revoked: Option<bool> =
                sqlx::query_scalar("SELECT revoked FROM agents WHERE host_id = $1")
                    .bind(host.as_str())
                    .fetch_optional(&mut *tx)
                    .await?;
            return Err(match revoked {
                Some(true) => StoreError::AgentRevoked(host.clone()),
                _ => not_found("agent", host),
            });
        }
        sqlx::query("INSERT INTO agent_heartbeats (host_id, at, heartbeat) VALUES ($1, $2, $3)")
            .bind(host.as_str())
            .bind(now)
            .bind(to_json("heartbeat", heartbeat)?)
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
        // One statement for the batch (data-modifying CTEs over JSON rows), on a connection
        // that commits without waiting for the WAL flush: one round trip, no fsync. Every
        // part reads the same snapshot, so `refused` sees the agents as they were.
        let rows = common::heartbeat_rows(beats)?;
        let history = beats
            .iter()
            .map(|(host, hb)| {
                Ok(serde_json::json!({
                    "host_id": host.as_str(),
                    "heartbeat": common::to_json_value("heartbeat", hb)?,
                }))
            })
            .collect::<Result<Vec<_>>>()?;
        let hosts: Vec<&str> = beats
            .iter()
            .map(|(h, _)| h.as_str())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        // Every table is reached through `= ANY($5)` on an index: joins against the JSON rows
        // or the CTEs alone let generic plans scan all agents, or every held task per host.
        let results = sqlx::query(
            "WITH b AS (
                 SELECT * FROM jsonb_to_recordset($1::jsonb) AS b(host_id text, hostname text,
                     version text, capabilities jsonb, labels jsonb, resource_usage jsonb,
                     running_pipelines jsonb)
             ), accepted AS (
                 UPDATE agents a SET hostname = COALESCE(NULLIF(b.hostname, ''), a.hostname),
                     version = COALESCE(NULLIF(b.version, ''), a.version),
                     capabilities = b.capabilities, labels = b.labels,
                     resource_usage = b.resource_usage, running_pipelines = b.running_pipelines,
                     last_seen_at = $3
                 FROM b
                 WHERE a.host_id = ANY($5) AND a.host_id = b.host_id AND a.revoked = false
                 RETURNING a.host_id
             ), history AS (
                 INSERT INTO agent_heartbeats (host_id, at, heartbeat)
                 SELECT h.host_id, $3, h.heartbeat
                 FROM jsonb_to_recordset($2::jsonb) AS h(host_id text, heartbeat jsonb)
                 WHERE h.host_id IN (SELECT host_id FROM accepted)
             ), renewed AS (
                 UPDATE tasks t SET lease_expires_at = $4, updated_at = $3
                 WHERE t.assigned_to = ANY($5) AND t.status IN ('assigned', 'running')
                   AND NOT EXISTS (SELECT 1 FROM agents r
                                   WHERE r.host_id = t.assigned_to AND r.revoked)
                 RETURNING t.assigned_to
             )
             SELECT 'accepted' AS kind, host_id, false AS revoked FROM accepted
             UNION ALL
             SELECT 'renewed', assigned_to, false FROM renewed
             UNION ALL
             SELECT 'refused', a.host_id, a.revoked FROM agents a
             WHERE a.host_id = ANY($5) AND a.host_id NOT IN (SELECT host_id FROM accepted)",
        )
        .bind(&rows)
        .bind(serde_json::Value::Array(history))
        .bind(now)
        .bind(common::lease_until(now, lease))
        .bind(&hosts)
        .fetch_all(&self.relaxed)
        .await?;
        let mut accepted = BTreeSet::new();
        let mut renewed: BTreeMap<String, u64> = BTreeMap::new();
        let mut revoked: BTreeMap<String, bool> = BTreeMap::new();
        for row in &results {
            let host = text(row, "host_id")?;
            match text(row, "kind")?.as_str() {
                "accepted" => {
                    accepted.insert(host);
                }
                "renewed" => *renewed.entry(host).or_default() += 1,
                _ => {
                    revoked.insert(host, row.try_get("revoked")?);
                }
            }
        }
        Ok(common::heartbeat_outcomes(
            beats, &accepted, &renewed, &revoked,
        ))
    }

    async fn get_agent(&self, host: &HostId) -> Result<Agent> {
        let row = sqlx::query("SELECT * FROM agents WHERE host_id = $1")
            .bind(host.as_str())
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| not_found("agent", host))?;
        agent_from_row(&row)
    }

    async fn list_agents(&self) -> Result<Vec<Agent>> {
        let rows = sqlx::query("SELECT * FROM agents ORDER BY host_id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(agent_from_row).collect()
    }

    async fn revoke_agent(&self, host: &HostId, now: DateTime<Utc>) -> Result<()> {
        let done = sqlx::query(
            "UPDATE agents SET revoked = true, revoked_at = COALESCE(revoked_at, $2)
             WHERE host_id = $1",
        )
        .bind(host.as_str())
        .bind(now)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(not_found("agent", host));
        }
        self.notifier.agent_changed(host);
        Ok(())
    }

    async fn count_heartbeats(&self, host: &HostId, since: DateTime<Utc>) -> Result<u64> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM agent_heartbeats WHERE host_id = $1 AND at >= $2",
        )
        .bind(host.as_str())
        .bind(since)
        .fetch_one(&self.pool)
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
        let mut tx = self.pool.begin().await?;
        for b in batches {
            let v = &b.values;
            let done = sqlx::query(
                "INSERT INTO kpi_batches (batch_id, host_id, experiment_id, variant,
                     interval_start, interval_end, input_series, output_series, input_samples,
                     output_samples, input_bytes, output_bytes, kpi_values, details, received_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
                 ON CONFLICT (batch_id) DO NOTHING",
            )
            .bind(b.batch_id)
            .bind(host.as_str())
            .bind(b.experiment_id.map(|e| e.as_uuid()))
            .bind(b.variant.as_str())
            .bind(b.interval_start)
            .bind(b.interval_end)
            .bind(saturating_i64(v.input_series))
            .bind(saturating_i64(v.output_series))
            .bind(saturating_i64(v.input_samples))
            .bind(saturating_i64(v.output_samples))
            .bind(saturating_i64(v.input_bytes))
            .bind(saturating_i64(v.output_bytes))
            .bind(to_json("kpi_values", v)?)
            .bind(&b.details)
            .bind(now)
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
                 SELECT * FROM kpi_batches WHERE experiment_id = $1
                 ORDER BY interval_end DESC, batch_id DESC LIMIT $2) recent
             ORDER BY interval_end, batch_id",
        )
        .bind(experiment_id.as_uuid())
        .bind(i64::from(page_limit(limit)))
        .fetch_all(&self.pool)
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
                 SELECT * FROM kpi_batches WHERE experiment_id = $1
                 ORDER BY interval_end DESC, batch_id DESC LIMIT $2) recent
             ORDER BY interval_end, batch_id",
        )
        .bind(experiment_id.as_uuid())
        .bind(i64::from(max))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(kpi_from_row).collect()
    }

    async fn save_pipeline_deployment(&self, d: &PipelineDeployment) -> Result<()> {
        sqlx::query(
            "INSERT INTO pipeline_deployments (id, created_at, body) VALUES ($1, $2, $3)
             ON CONFLICT (id) DO UPDATE SET body = excluded.body",
        )
        .bind(d.id.as_uuid())
        .bind(d.created_at)
        .bind(to_json("body", d)?)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn get_pipeline_deployment(&self, id: DeploymentId) -> Result<PipelineDeployment> {
        let body: Option<serde_json::Value> =
            sqlx::query_scalar("SELECT body FROM pipeline_deployments WHERE id = $1")
                .bind(id.as_uuid())
                .fetch_optional(&self.pool)
                .await?;
        let body = body.ok_or_else(|| not_found("pipeline deployment", id))?;
        from_json_value("pipeline_deployments.body", body)
    }

    async fn list_pipeline_deployments(
        &self,
        limit: u32,
        offset: u64,
    ) -> Result<Page<PipelineDeployment>> {
        let limit = page_limit(limit);
        let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM pipeline_deployments")
            .fetch_one(&self.pool)
            .await?;
        let bodies: Vec<serde_json::Value> = sqlx::query_scalar(
            "SELECT body FROM pipeline_deployments ORDER BY created_at DESC, id DESC
             LIMIT $1 OFFSET $2",
        )
        .bind(i64::from(limit))
        .bind(page_offset(offset))
        .fetch_all(&self.pool)
        .await?;
        Ok(Page {
            items: bodies
                .into_iter()
                .map(|b| from_json_value("pipeline_deployments.body", b))
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
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (experiment_id, seq) DO UPDATE
                 SET runner = excluded.runner, claimed_at = excluded.claimed_at
                 WHERE experiment_analyses.finished_at IS NULL
                   AND experiment_analyses.claimed_at < $6",
        )
        .bind(experiment_id.as_uuid())
        .bind(seq)
        .bind(is_final)
        .bind(runner)
        .bind(now)
        .bind(stale_before)
        .execute(&self.pool)
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
            "UPDATE experiment_analyses SET finished_at = $3, decision = $4, result = $5
             WHERE experiment_id = $1 AND seq = $2",
        )
        .bind(experiment_id.as_uuid())
        .bind(seq)
        .bind(now)
        .bind(decision)
        .bind(result)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn list_analyses(
        &self,
        experiment_id: ExperimentId,
        limit: u32,
    ) -> Result<Vec<StoredAnalysis>> {
        let rows = sqlx::query(
            "SELECT * FROM experiment_analyses WHERE experiment_id = $1
             ORDER BY is_final DESC, seq DESC LIMIT $2",
        )
        .bind(experiment_id.as_uuid())
        .bind(i64::from(page_limit(limit)))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(StoredAnalysis {
                    experiment_id: ExperimentId(row.try_get("experiment_id")?),
                    seq: row.try_get("seq")?,
                    is_final: row.try_get("is_final")?,
                    runner: row.try_get("runner")?,
                    claimed_at: row.try_get("claimed_at")?,
                    finished_at: row.try_get("finished_at")?,
                    decision: row.try_get("decision")?,
                    result: row.try_get("result")?,
                })
            })
            .collect()
    }

    async fn latest_reduction_percent(&self) -> Result<Vec<(ExperimentId, f64)>> {
        let rows = sqlx::query(
            "SELECT k.experiment_id, SUM(k.input_series)::float8 AS input_series,
                    SUM(k.output_series)::float8 AS output_series
             FROM kpi_batches k
             JOIN (SELECT experiment_id, MAX(interval_end) AS last_end FROM kpi_batches
                   WHERE variant = 'candidate' AND experiment_id IS NOT NULL
                   GROUP BY experiment_id) latest
               ON k.experiment_id = latest.experiment_id AND k.interval_end = latest.last_end
             WHERE k.variant = 'candidate'
             GROUP BY k.experiment_id
             ORDER BY k.experiment_id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let id = ExperimentId(row.try_get("experiment_id")?);
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
        let mut tx = self.pool.begin().await?;
        relaxed_durability(&mut tx).await?;
        for log in logs {
            sqlx::query(
                "INSERT INTO agent_logs (host_id, at, level, message, fields, received_at)
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(host.as_str())
            .bind(log.at)
            .bind(log.level.as_str())
            .bind(&log.message)
            .bind(&log.fields)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(logs.len() as u64)
    }

    async fn list_agent_logs(&self, host: &HostId, limit: u32) -> Result<Vec<StoredAgentLog>> {
        // Newest first.
        let rows =
            sqlx::query("SELECT * FROM agent_logs WHERE host_id = $1 ORDER BY id DESC LIMIT $2")
                .bind(host.as_str())
                .bind(i64::from(page_limit(limit)))
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(log_from_row).collect()
    }

    // ---- settings and retention ----

    async fn get_setting(&self, key: &str) -> Result<Option<serde_json::Value>> {
        Ok(
            sqlx::query_scalar("SELECT value FROM settings WHERE key = $1")
                .bind(key)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn put_setting(
        &self,
        key: &str,
        value: &serde_json::Value,
        now: DateTime<Utc>,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO settings (key, value, updated_at) VALUES ($1, $2, $3)
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = EXCLUDED.updated_at",
        )
        .bind(key)
        .bind(value)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn put_setting_if_absent(
        &self,
        key: &str,
        value: &serde_json::Value,
        now: DateTime<Utc>,
    ) -> Result<serde_json::Value> {
        // The insert either writes the row or waits for the concurrent insert that did, so
        // the read after it sees the one value everyone agrees on.
        sqlx::query(
            "INSERT INTO settings (key, value, updated_at) VALUES ($1, $2, $3)
             ON CONFLICT (key) DO NOTHING",
        )
        .bind(key)
        .bind(value)
        .bind(now)
        .execute(&self.pool)
        .await?;
        let stored: serde_json::Value =
            sqlx::query_scalar("SELECT value FROM settings WHERE key = $1")
                .bind(key)
                .fetch_one(&self.pool)
                .await?;
        Ok(stored)
    }

    async fn sweep_telemetry(&self, before: DateTime<Utc>) -> Result<u64> {
        let mut tx = self.pool.begin().await?;
        let mut deleted = 0;
        for statement in [
            "DELETE FROM kpi_batches WHERE received_at < $1",
            "DELETE FROM agent_heartbeats WHERE at < $1",
            "DELETE FROM agent_logs WHERE received_at < $1",
            "DELETE FROM label_stats WHERE received_at < $1",
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

    // ---- cross-replica wake-ups ----

    async fn wakeups(&self) -> Result<Option<WakeupStream>> {
        // Listen before returning, so a caller that enqueues right after this call returns is
        // heard. If the database is down right now the stream still starts: it keeps retrying
        // and yields `Resync` once it is listening.
        let listener = match connect_listener(&self.options, WAKEUP_CHANNEL).await {
            Ok(listener) => Some(listener),
            Err(e) => {
                tracing::warn!(error = %e, "task wake-up listener cannot connect yet; retrying");
                None
            }
        };
        let (tx, rx) = mpsc::channel(WAKEUP_BUFFER);
        tokio::spawn(run_listener(
            self.options.clone(),
            listener,
            tx,
            WAKEUP_CHANNEL,
            "task wake-up",
            || Wakeup::Resync,
            parse_wakeups,
        ));
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|wakeup| (wakeup, rx))
        });
        Ok(Some(Box::pin(stream)))
    }

    // ---- real-time topic events ----

    async fn append_topic_events(
        &self,
        events: &[crate::NewTopicEvent],
        now: DateTime<Utc>,
    ) -> Result<Vec<crate::TopicEvent>> {
        crate::topic_events::pg_append(&self.pool, events, now).await
    }

    async fn list_topic_events(
        &self,
        topic: &str,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<crate::TopicEvent>> {
        crate::topic_events::pg_list(&self.pool, topic, after_seq, limit).await
    }

    async fn topic_last_seq(&self, topic: &str) -> Result<i64> {
        crate::topic_events::pg_last_seq(&self.pool, topic).await
    }

    async fn sweep_topic_events(&self, before: DateTime<Utc>) -> Result<u64> {
        crate::topic_events::pg_sweep(&self.pool, before).await
    }

    async fn update_agent_presence(
        &self,
        online_since: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Vec<(HostId, bool)>> {
        crate::topic_events::pg_presence(&self.pool, online_since, now).await
    }

    async fn topic_event_notices(&self) -> Result<Option<crate::TopicNoticeStream>> {
        Ok(Some(
            crate::topic_events::pg_notices(self.options.clone()).await,
        ))
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
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (host_id) DO UPDATE SET interval_end = EXCLUDED.interval_end,
                 received_at = EXCLUDED.received_at, stats = EXCLUDED.stats
             WHERE EXCLUDED.interval_end >= label_stats.interval_end",
        )
        .bind(host.as_str())
        .bind(interval_end)
        .bind(now)
        .bind(stats)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn list_label_stats(&self, since: DateTime<Utc>) -> Result<Vec<StoredLabelStats>> {
        let rows =
            sqlx::query("SELECT * FROM label_stats WHERE received_at >= $1 ORDER BY host_id")
                .bind(since)
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|row| {
                Ok(StoredLabelStats {
                    host_id: host("label_stats.host_id", &text(row, "host_id")?)?,
                    interval_end: row.try_get("interval_end")?,
                    received_at: row.try_get("received_at")?,
                    stats: row.try_get("stats")?,
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
            "SELECT DISTINCT ON (host_id) * FROM kpi_batches
             WHERE variant = $1 AND received_at >= $2
               AND ($3::uuid IS NULL OR experiment_id = $3)
             ORDER BY host_id, interval_end DESC, batch_id DESC",
        )
        .bind(variant.as_str())
        .bind(since)
        .bind(experiment_id.map(|e| e.as_uuid()))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(kpi_from_row).collect()
    }
}

async fn apply_status(
    pool: &PgPool,
    id: TaskId,
    host: &HostId,
    update: &TaskStatusUpdate,
    lease: Duration,
    now: DateTime<Utc>,
) -> Result<Option<PgRow>> {
    let row = if update.status == TaskStatus::Running {
        sqlx::query(&format!(
            "UPDATE tasks t SET status = 'running', started_at = COALESCE(started_at, $3),
                 lease_expires_at = $4, updated_at = $3
             WHERE t.id = $1 AND {HELD_BY_2}
             RETURNING t.*"
        ))
        .bind(id.as_uuid())
        .bind(host.as_str())
        .bind(now)
        .bind(common::lease_until(now, lease))
        .fetch_optional(pool)
        .await?
    } else {
        sqlx::query(&format!(
            "UPDATE tasks t SET status = $3, finished_at = $4, lease_expires_at = NULL,
                 error = $5, result = $6, updated_at = $4
             WHERE t.id = $1 AND {HELD_BY_2}
             RETURNING t.*"
        ))
        .bind(id.as_uuid())
        .bind(host.as_str())
        .bind(update.status.as_str())
        .bind(now)
        .bind(&update.error)
        .bind(&update.result)
        .fetch_optional(pool)
        .await?
    };
    Ok(row)
}

// ---- the wake-up listener ----

/// A listener on `channel`, on its own single-connection pool (PgListener reconnects through
/// it). Shared by the task wake-ups and the hub's topic notices.
pub(crate) async fn connect_listener(
    options: &PgConnectOptions,
    channel: &str,
) -> Result<PgListener, sqlx::Error> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(LISTENER_MAX_BACKOFF)
        .idle_timeout(None)
        .max_lifetime(None)
        .connect_lazy_with(options.clone());
    let mut listener = PgListener::connect_with(&pool).await?;
    listener.ignore_pool_close_event(true);
    listener.listen(channel).await?;
    Ok(listener)
}

/// Forward notifications until the stream is dropped. A lost connection is re-established
/// with backoff for as long as it takes; once listening again, `resync` tells the consumer
/// that notifications sent meanwhile were missed. `parse` turns one payload into what the
/// consumer takes; `what` names the listener in logs. Both LISTEN/NOTIFY users (task
/// wake-ups, the hub's topic notices) run this loop.
pub(crate) async fn run_listener<T: Send>(
    options: PgConnectOptions,
    mut listener: Option<PgListener>,
    tx: mpsc::Sender<T>,
    channel: &'static str,
    what: &'static str,
    resync: fn() -> T,
    parse: fn(&str) -> Vec<T>,
) {
    let mut missed = listener.is_none();
    let mut backoff = LISTENER_MIN_BACKOFF;
    loop {
        let mut current = match listener.take() {
            Some(l) => l,
            None => {
                let attempt = tokio::select! {
                    _ = tx.closed() => return,
                    attempt = connect_listener(&options, channel) => attempt,
                };
                match attempt {
                    Ok(l) => {
                        tracing::info!("{what} listener connected");
                        backoff = LISTENER_MIN_BACKOFF;
                        l
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64,
                            "{what} listener cannot connect");
                        tokio::select! {
                            _ = tx.closed() => return,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(LISTENER_MAX_BACKOFF);
                        continue;
                    }
                }
            }
        };
        if missed && tx.send(resync()).await.is_err() {
            return;
        }
        loop {
            let next = tokio::select! {
                _ = tx.closed() => return,
                next = current.try_recv() => next,
            };
            let items = match next {
                Ok(Some(notification)) => parse(notification.payload()),
                // The connection dropped and PgListener has already reconnected and listens
                // again; whatever was sent in between is lost.
                Ok(None) => {
                    tracing::info!("{what} listener reconnected");
                    vec![resync()]
                }
                Err(e) => {
                    tracing::warn!(error = %e, "{what} listener lost its connection");
                    missed = true;
                    break;
                }
            };
            for item in items {
                if tx.send(item).await.is_err() {
                    return;
                }
            }
        }
    }
}
