//! The store's errors: refusals the API maps to 4xx, and database failures it maps to 503/500.

use phoenix_core::{ExperimentPhase, HostId, PatchError, TaskId, TaskStatus, TransitionError};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{entity} {id} not found")]
    NotFound { entity: &'static str, id: String },
    #[error(transparent)]
    Transition(#[from] TransitionError),
    #[error(transparent)]
    Patch(#[from] PatchError),
    #[error("experiment {id} is {phase}: stop it before deleting")]
    ExperimentActive { id: String, phase: ExperimentPhase },
    #[error("task {task_id} is {status} and held by {holder}, not by {host}", holder = .holder.as_ref().map(|h| h.as_str()).unwrap_or("no host"))]
    TaskNotHeld {
        task_id: TaskId,
        host: HostId,
        holder: Option<HostId>,
        status: TaskStatus,
    },
    #[error("task {task_id} cannot move from {from} to {to}")]
    TaskTransition {
        task_id: TaskId,
        from: TaskStatus,
        to: TaskStatus,
    },
    #[error("agent {0} is revoked")]
    AgentRevoked(HostId),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// Any other database failure. Errors that mean the database cannot be reached (I/O,
    /// pool timeout or closed, server shutting down) become [`StoreError::Unavailable`] instead,
    /// through the `From<sqlx::Error>` conversion below.
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A unique name is taken (a username).
    #[error("{entity} {id} already exists")]
    AlreadyExists { entity: &'static str, id: String },
}

impl StoreError {
    /// Whether the database failed (as opposed to refusing the request): unreachable, or a
    /// statement error. Batch operations stop at these and report refusals per item.
    pub fn is_database_failure(&self) -> bool {
        matches!(
            self,
            Self::Unavailable(_) | Self::Database(_) | Self::Migrate(_)
        )
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        if is_unavailable(&error) {
            StoreError::Unavailable(error.to_string())
        } else {
            StoreError::Database(error)
        }
    }
}

/// Whether an error means "the database cannot be reached right now" (the API answers 503)
/// rather than "this statement failed".
fn is_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => match db.code() {
            // PostgreSQL: class 08 (connection exception), 57P01..57P03 (admin shutdown, crash
            // shutdown, cannot connect now), 53300 (too many connections).
            Some(code) if code.starts_with("08") => true,
            Some(code) if matches!(&*code, "57P01" | "57P02" | "57P03" | "53300") => true,
            // SQLite: SQLITE_BUSY / SQLITE_LOCKED after busy_timeout (another process holds the
            // write lock for longer than we wait).
            Some(code) if matches!(&*code, "5" | "6" | "261" | "517") => {
                db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some()
            }
            _ => false,
        },
        _ => false,
    }
}
