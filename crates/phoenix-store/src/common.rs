//! What both backends share: decoding stored text into domain types (a bad value is
//! [`StoreError::Corrupt`], never a panic), page limits, lease arithmetic, the rules for who
//! may report on a task, and the wording of the events and errors the store writes.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Display;
use std::str::FromStr;
use std::sync::LazyLock;

use chrono::{DateTime, Duration, Utc};
use phoenix_core::{
    EventKind, Experiment, ExperimentEvent, ExperimentMode, ExperimentPhase, Heartbeat, HostId,
    NewTask, Task, TaskId, TaskStatus,
};
use serde::de::DeserializeOwned;

use crate::{LogLevel, Result, StoreError, TaskStatusUpdate};

/// A page asked for with `limit: 0` gets this many rows.
pub(crate) const DEFAULT_PAGE_LIMIT: u32 = 100;
/// No page holds more rows than this (the API validates its own, smaller, limits; internal
/// callers such as the fleet view read up to this many at once).
pub(crate) const MAX_PAGE_LIMIT: u32 = 10_000;
/// The longest lease the store records; longer requests are clamped (a lease is a liveness
/// timeout, not a reservation).
pub(crate) const MAX_LEASE_SECONDS: i64 = 7 * 24 * 3600;
/// The PostgreSQL `NOTIFY` channel of task wake-ups; the payload is a host id or `''`.
pub(crate) const WAKEUP_CHANNEL: &str = "phoenix_task_wakeup";

/// The terminal phases as an SQL list (`'completed', 'failed', ...`), taken from
/// [`ExperimentPhase::is_terminal`] so the queries cannot drift from the state machine.
pub(crate) fn terminal_phases_sql() -> &'static str {
    static LIST: LazyLock<String> = LazyLock::new(|| {
        ExperimentPhase::ALL
            .iter()
            .filter(|p| p.is_terminal())
            .map(|p| format!("'{}'", p.as_str()))
            .collect::<Vec<_>>()
            .join(", ")
    });
    &LIST
}

/// `0` means "the default"; anything above [`MAX_PAGE_LIMIT`] is capped.
pub(crate) fn page_limit(limit: u32) -> u32 {
    match limit {
        0 => DEFAULT_PAGE_LIMIT,
        n => n.min(MAX_PAGE_LIMIT),
    }
}

/// Offsets are bound as `i64`; anything beyond is past every row anyway.
pub(crate) fn page_offset(offset: u64) -> i64 {
    i64::try_from(offset).unwrap_or(i64::MAX)
}

/// When a lease taken at `now` for `lease` lapses (negative leases count as zero, very long
/// ones are clamped to [`MAX_LEASE_SECONDS`]).
pub(crate) fn lease_until(now: DateTime<Utc>, lease: Duration) -> DateTime<Utc> {
    let lease = lease.clamp(Duration::zero(), Duration::seconds(MAX_LEASE_SECONDS));
    now.checked_add_signed(lease).unwrap_or(now)
}

pub(crate) fn corrupt(column: &str, value: impl Display, reason: impl Display) -> StoreError {
    StoreError::Corrupt(format!("column {column} holds `{value}`: {reason}"))
}

/// Parse a stored enum or id written with its `FromStr` counterpart.
pub(crate) fn parse<T>(column: &str, value: &str) -> Result<T>
where
    T: FromStr,
    T::Err: Display,
{
    value.parse().map_err(|e| corrupt(column, value, e))
}

pub(crate) fn host(column: &str, value: &str) -> Result<HostId> {
    parse(column, value)
}

pub(crate) fn opt_host(column: &str, value: Option<String>) -> Result<Option<HostId>> {
    value.map(|v| host(column, &v)).transpose()
}

pub(crate) fn mode_str(mode: ExperimentMode) -> &'static str {
    match mode {
        ExperimentMode::Shadow => "shadow",
        ExperimentMode::Split => "split",
    }
}

pub(crate) fn parse_mode(column: &str, value: &str) -> Result<ExperimentMode> {
    match value {
        "shadow" => Ok(ExperimentMode::Shadow),
        "split" => Ok(ExperimentMode::Split),
        other => Err(corrupt(column, other, "unknown experiment mode")),
    }
}

pub(crate) fn parse_log_level(column: &str, value: &str) -> Result<LogLevel> {
    match value {
        "trace" => Ok(LogLevel::Trace),
        "debug" => Ok(LogLevel::Debug),
        "info" => Ok(LogLevel::Info),
        "warn" => Ok(LogLevel::Warn),
        "error" => Ok(LogLevel::Error),
        other => Err(corrupt(column, other, "unknown log level")),
    }
}

pub(crate) fn from_json_value<T: DeserializeOwned>(
    column: &str,
    value: serde_json::Value,
) -> Result<T> {
    serde_json::from_value(value).map_err(|e| corrupt(column, "<json>", e))
}

pub(crate) fn from_json_text<T: DeserializeOwned>(column: &str, value: &str) -> Result<T> {
    serde_json::from_str(value).map_err(|e| corrupt(column, "<json>", e))
}

/// JSON text for SQLite's TEXT columns. Serialising our own values cannot fail in practice
/// (string keys only); if it ever does it is reported, not unwrapped.
pub(crate) fn to_json_text<T: serde::Serialize + ?Sized>(
    column: &str,
    value: &T,
) -> Result<String> {
    serde_json::to_string(value)
        .map_err(|e| StoreError::Corrupt(format!("cannot encode {column} as JSON: {e}")))
}

/// A JSON value of one of our own types (see [`to_json_text`] on failure).
pub(crate) fn to_json_value<T: serde::Serialize + ?Sized>(
    column: &str,
    value: &T,
) -> Result<serde_json::Value> {
    serde_json::to_value(value)
        .map_err(|e| StoreError::Corrupt(format!("cannot encode {column} as JSON: {e}")))
}

pub(crate) fn to_u32(column: &str, value: i64) -> Result<u32> {
    u32::try_from(value).map_err(|e| corrupt(column, value, e))
}

pub(crate) fn to_u64(column: &str, value: i64) -> Result<u64> {
    u64::try_from(value).map_err(|e| corrupt(column, value, e))
}

/// Counters are stored as signed 64-bit integers; values beyond that (never seen in practice)
/// are stored saturated. The exact value stays in the JSON copy of the batch.
pub(crate) fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Experiment columns whose values are unsigned in the domain.
pub(crate) fn share_percent(column: &str, value: Option<i64>) -> Result<Option<u8>> {
    value
        .map(|v| u8::try_from(v).map_err(|e| corrupt(column, v, e)))
        .transpose()
}

pub(crate) fn not_found(entity: &'static str, id: impl Display) -> StoreError {
    StoreError::NotFound {
        entity,
        id: id.to_string(),
    }
}

/// The `created` event of a new experiment (its seq is always 1).
pub(crate) fn created_event(experiment: &Experiment) -> ExperimentEvent {
    ExperimentEvent {
        experiment_id: experiment.id,
        seq: 1,
        kind: EventKind::Created,
        from_phase: None,
        to_phase: Some(experiment.phase),
        message: format!("experiment `{}` created", experiment.name),
        at: experiment.created_at,
    }
}

pub(crate) fn updated_event(
    experiment: &Experiment,
    seq: i64,
    changed: &[&str],
    now: DateTime<Utc>,
) -> ExperimentEvent {
    ExperimentEvent {
        experiment_id: experiment.id,
        seq,
        kind: EventKind::Updated,
        from_phase: None,
        to_phase: None,
        message: format!("updated {}", changed.join(", ")),
        at: now,
    }
}

pub(crate) fn phase_event(
    experiment: &Experiment,
    seq: i64,
    transition: &phoenix_core::Transition,
    now: DateTime<Utc>,
) -> ExperimentEvent {
    ExperimentEvent {
        experiment_id: experiment.id,
        seq,
        kind: transition.event_kind(),
        from_phase: Some(transition.from),
        to_phase: Some(transition.to),
        message: transition.message.clone(),
        at: now,
    }
}

/// A new pending task, as it will be inserted.
pub(crate) fn new_task(task: &NewTask, now: DateTime<Utc>) -> Task {
    Task {
        id: TaskId::new(),
        task_type: task.task_type,
        status: TaskStatus::Pending,
        payload: task.payload.clone(),
        priority: task.priority,
        host_id: task.host_id.clone(),
        experiment_id: task.experiment_id,
        assigned_to: None,
        attempts: 0,
        max_attempts: task.max_attempts,
        not_before: task.not_before,
        lease_expires_at: None,
        idempotency_key: task.idempotency_key.clone(),
        error: None,
        result: None,
        created_at: now,
        updated_at: now,
        assigned_at: None,
        started_at: None,
        finished_at: None,
    }
}

/// Claim order: highest priority first, then oldest, then id (UUIDv7, so also oldest).
/// `RETURNING` gives rows in no particular order, so claims are sorted after the fact.
pub(crate) fn sort_in_claim_order(tasks: &mut [Task]) {
    tasks.sort_by(|a, b| {
        b.priority
            .cmp(&a.priority)
            .then(a.created_at.cmp(&b.created_at))
            .then(a.id.cmp(&b.id))
    });
}

/// What to do with a status report, judged on the task as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StatusReport {
    /// The holder may make this move.
    Apply,
    /// The same host repeats the terminal status it already recorded: answer with the task.
    Replay,
}

pub(crate) fn judge_status_report(
    task: &Task,
    host: &HostId,
    update: &TaskStatusUpdate,
) -> Result<StatusReport> {
    let by_holder = task.assigned_to.as_ref() == Some(host);
    if by_holder && task.status.is_terminal() {
        // The same terminal status again is a retry after a lost answer; another one would
        // rewrite history.
        if task.status == update.status {
            return Ok(StatusReport::Replay);
        }
        return Err(StoreError::TaskTransition {
            task_id: task.id,
            from: task.status,
            to: update.status,
        });
    }
    if !by_holder || !matches!(task.status, TaskStatus::Assigned | TaskStatus::Running) {
        return Err(StoreError::TaskNotHeld {
            task_id: task.id,
            host: host.clone(),
            holder: task.assigned_to.clone(),
            status: task.status,
        });
    }
    if !task.status.agent_may_move_to(update.status) {
        return Err(StoreError::TaskTransition {
            task_id: task.id,
            from: task.status,
            to: update.status,
        });
    }
    Ok(StatusReport::Apply)
}

/// Whether a report can take the single-statement fast path (a conditional `UPDATE` that
/// only matches a task the host holds).
pub(crate) fn is_agent_reportable(status: TaskStatus) -> bool {
    matches!(
        status,
        TaskStatus::Running | TaskStatus::Completed | TaskStatus::Failed
    )
}

/// How many times a status report re-reads the task when the row changed under it between
/// the conditional update and the read that explains why it did not match.
pub(crate) const STATUS_REPORT_RETRIES: usize = 3;

pub(crate) fn is_foreign_key_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.kind() == sqlx::error::ErrorKind::ForeignKeyViolation)
}

/// The error an enqueue reports when its `experiment_id` names no experiment.
pub(crate) fn enqueue_error(task: &NewTask, error: sqlx::Error) -> StoreError {
    match task.experiment_id {
        Some(id) if is_foreign_key_violation(&error) => not_found("experiment", id),
        _ => error.into(),
    }
}

/// Active-series reduction in percent from summed counts; 0 when there was no input.
pub(crate) fn reduction_percent(input_series: f64, output_series: f64) -> f64 {
    if input_series <= 0.0 {
        0.0
    } else {
        (1.0 - output_series / input_series) * 100.0
    }
}

/// The heartbeats of a batch as the backends' set-based statements read them: the newest
/// heartbeat per host updates the agent row (`agents`), every heartbeat goes to the history
/// (`history`, filtered to accepted hosts by the caller).
pub(crate) fn heartbeat_rows(beats: &[(HostId, Heartbeat)]) -> Result<serde_json::Value> {
    let mut latest: BTreeMap<&str, &Heartbeat> = BTreeMap::new();
    for (host, hb) in beats {
        latest.insert(host.as_str(), hb);
    }
    let rows = latest
        .into_iter()
        .map(|(host, hb)| {
            Ok(serde_json::json!({
                "host_id": host,
                "hostname": hb.hostname,
                "version": hb.version,
                "capabilities": to_json_value("capabilities", &hb.capabilities)?,
                "labels": to_json_value("labels", &hb.labels)?,
                "resource_usage": to_json_value("resource_usage", &hb.resource_usage)?,
                "running_pipelines": to_json_value("running_pipelines", &hb.running_pipelines)?,
            }))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(serde_json::Value::Array(rows))
}

/// History rows (`host_id`, `heartbeat`) of the heartbeats whose host was accepted.
pub(crate) fn heartbeat_history(
    beats: &[(HostId, Heartbeat)],
    accepted: &BTreeSet<String>,
) -> Result<serde_json::Value> {
    let rows = beats
        .iter()
        .filter(|(host, _)| accepted.contains(host.as_str()))
        .map(|(host, hb)| {
            Ok(serde_json::json!({
                "host_id": host.as_str(),
                "heartbeat": to_json_value("heartbeat", hb)?,
            }))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(serde_json::Value::Array(rows))
}

/// Per-entry outcomes of a heartbeat batch, from the hosts the agent update accepted, the
/// leases renewed per host, and whether each refused host is revoked (absent: unknown).
pub(crate) fn heartbeat_outcomes(
    beats: &[(HostId, Heartbeat)],
    accepted: &BTreeSet<String>,
    renewed: &BTreeMap<String, u64>,
    revoked: &BTreeMap<String, bool>,
) -> Vec<Result<u64>> {
    beats
        .iter()
        .map(|(host, _)| {
            if accepted.contains(host.as_str()) {
                Ok(renewed.get(host.as_str()).copied().unwrap_or(0))
            } else if revoked.get(host.as_str()).copied().unwrap_or(false) {
                Err(StoreError::AgentRevoked(host.clone()))
            } else {
                Err(not_found("agent", host))
            }
        })
        .collect()
}

/// The reports of a batch that can take the set-based fast path, as JSON rows
/// (`id`, `host`, `status`, `error`, `result` as JSON text): agent-reportable statuses, and
/// only the first report of each task (later ones go the one-by-one way, in order).
pub(crate) fn status_report_rows(
    reports: &[(TaskId, HostId, TaskStatusUpdate)],
) -> Result<(serde_json::Value, Vec<bool>)> {
    let mut seen = std::collections::HashSet::new();
    let mut fast = Vec::with_capacity(reports.len());
    let mut rows = Vec::with_capacity(reports.len());
    for (id, host, update) in reports {
        let take = is_agent_reportable(update.status) && seen.insert(*id);
        fast.push(take);
        if take {
            let result = update
                .result
                .as_ref()
                .map(|r| to_json_text("result", r))
                .transpose()?;
            rows.push(serde_json::json!({
                "id": id.to_string(),
                "host": host.as_str(),
                "status": update.status.as_str(),
                "error": update.error,
                "result": result,
            }));
        }
    }
    Ok((serde_json::Value::Array(rows), fast))
}

/// Whether a command ends the experiment's run, so its tasks still queued (a deployment or
/// start no agent claimed yet) are cancelled in the same transaction rather than delivered
/// after the stop. Returns the error they are failed with.
pub(crate) fn cancels_queued_tasks(
    command: &phoenix_core::ExperimentCommand,
) -> Option<&'static str> {
    use phoenix_core::ExperimentCommand as C;
    match command {
        C::Stop { .. } => Some("cancelled: the experiment was stopped"),
        C::Rollback { .. } => Some("cancelled: the experiment was rolled back"),
        C::Fail { .. } => Some("cancelled: the experiment failed"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_limit_defaults_and_caps() {
        assert_eq!(page_limit(0), DEFAULT_PAGE_LIMIT);
        assert_eq!(page_limit(7), 7);
        assert_eq!(page_limit(u32::MAX), MAX_PAGE_LIMIT);
    }

    #[test]
    fn lease_is_clamped() {
        let now = Utc::now();
        assert_eq!(lease_until(now, Duration::seconds(-5)), now);
        assert_eq!(
            lease_until(now, Duration::days(10_000)),
            now + Duration::seconds(MAX_LEASE_SECONDS)
        );
    }

    #[test]
    fn bad_stored_values_are_corrupt_not_panics() {
        assert!(matches!(
            parse::<TaskStatus>("status", "nope"),
            Err(StoreError::Corrupt(_))
        ));
        assert!(matches!(
            host("host_id", "a b"),
            Err(StoreError::Corrupt(_))
        ));
        assert!(matches!(
            to_u32("attempts", -1),
            Err(StoreError::Corrupt(_))
        ));
        assert!(matches!(
            parse_mode("mode", "x"),
            Err(StoreError::Corrupt(_))
        ));
    }
}
