-- Phoenix schema for SQLite. Timestamps are INTEGER unix microseconds (so comparisons and
-- ordering are numeric), ids are hyphenated UUID text, JSON is TEXT.

CREATE TABLE experiments (
    id                      TEXT PRIMARY KEY NOT NULL,
    name                    TEXT NOT NULL,
    description             TEXT NOT NULL,
    phase                   TEXT NOT NULL,
    promoted                INTEGER,
    phase_reason            TEXT,
    baseline_pipeline       TEXT NOT NULL,
    candidate_pipeline      TEXT NOT NULL,
    target_hosts            TEXT NOT NULL,
    mode                    TEXT NOT NULL,
    candidate_share_percent INTEGER,
    duration_seconds        INTEGER NOT NULL,
    parameters              TEXT NOT NULL,
    owner                   TEXT,
    created_at              INTEGER NOT NULL,
    updated_at              INTEGER NOT NULL,
    started_at              INTEGER,
    ended_at                INTEGER,
    -- The seq of the last event written; bumped in the transaction that writes the next one.
    last_event_seq          INTEGER NOT NULL DEFAULT 0
) STRICT;

CREATE INDEX experiments_phase ON experiments (phase);
CREATE INDEX experiments_created ON experiments (created_at DESC, id DESC);

CREATE TABLE experiment_events (
    experiment_id TEXT NOT NULL REFERENCES experiments (id) ON DELETE CASCADE,
    seq           INTEGER NOT NULL,
    kind          TEXT NOT NULL,
    from_phase    TEXT,
    to_phase      TEXT,
    message       TEXT NOT NULL,
    at            INTEGER NOT NULL,
    UNIQUE (experiment_id, seq)
) STRICT;

CREATE TABLE tasks (
    id               TEXT PRIMARY KEY NOT NULL,
    task_type        TEXT NOT NULL,
    status           TEXT NOT NULL,
    payload          TEXT NOT NULL,
    priority         INTEGER NOT NULL,
    host_id          TEXT,
    experiment_id    TEXT REFERENCES experiments (id) ON DELETE SET NULL,
    assigned_to      TEXT,
    attempts         INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL,
    not_before       INTEGER,
    lease_expires_at INTEGER,
    idempotency_key  TEXT,
    error            TEXT,
    result           TEXT,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    assigned_at      INTEGER,
    started_at       INTEGER,
    finished_at      INTEGER
) STRICT;

CREATE UNIQUE INDEX tasks_idempotency_key ON tasks (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- Claims scan pending tasks in claim order and filter by host.
CREATE INDEX tasks_claimable ON tasks (priority DESC, created_at, id) WHERE status = 'pending';
CREATE INDEX tasks_due ON tasks (not_before) WHERE status = 'pending' AND not_before IS NOT NULL;
CREATE INDEX tasks_leased ON tasks (lease_expires_at) WHERE status IN ('assigned', 'running');
CREATE INDEX tasks_held ON tasks (assigned_to) WHERE status IN ('assigned', 'running');
CREATE INDEX tasks_finished ON tasks (finished_at) WHERE status IN ('completed', 'failed');
CREATE INDEX tasks_experiment ON tasks (experiment_id) WHERE experiment_id IS NOT NULL;
CREATE INDEX tasks_created ON tasks (created_at DESC, id DESC);

CREATE TABLE agents (
    host_id           TEXT PRIMARY KEY NOT NULL,
    secret_hash       TEXT NOT NULL,
    revoked           INTEGER NOT NULL DEFAULT 0,
    revoked_at        INTEGER,
    hostname          TEXT NOT NULL DEFAULT '',
    version           TEXT NOT NULL DEFAULT '',
    capabilities      TEXT NOT NULL DEFAULT '[]',
    labels            TEXT NOT NULL DEFAULT '{}',
    resource_usage    TEXT NOT NULL DEFAULT '{}',
    running_pipelines TEXT NOT NULL DEFAULT '[]',
    enrolled_at       INTEGER NOT NULL,
    last_seen_at      INTEGER
) STRICT;

CREATE TABLE agent_heartbeats (
    host_id   TEXT NOT NULL REFERENCES agents (host_id) ON DELETE CASCADE,
    at        INTEGER NOT NULL,
    heartbeat TEXT NOT NULL
) STRICT;

CREATE INDEX agent_heartbeats_host_at ON agent_heartbeats (host_id, at);
CREATE INDEX agent_heartbeats_at ON agent_heartbeats (at);

CREATE TABLE kpi_batches (
    batch_id       TEXT PRIMARY KEY NOT NULL,
    host_id        TEXT NOT NULL,
    experiment_id  TEXT,
    variant        TEXT NOT NULL,
    interval_start INTEGER NOT NULL,
    interval_end   INTEGER NOT NULL,
    input_series   INTEGER NOT NULL,
    output_series  INTEGER NOT NULL,
    input_samples  INTEGER NOT NULL,
    output_samples INTEGER NOT NULL,
    input_bytes    INTEGER NOT NULL,
    output_bytes   INTEGER NOT NULL,
    kpi_values     TEXT NOT NULL,
    details        TEXT NOT NULL,
    received_at    INTEGER NOT NULL
) STRICT;

CREATE INDEX kpi_batches_experiment ON kpi_batches (experiment_id, variant, interval_end);
CREATE INDEX kpi_batches_received ON kpi_batches (received_at);

CREATE TABLE agent_logs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    host_id     TEXT NOT NULL,
    at          INTEGER NOT NULL,
    level       TEXT NOT NULL,
    message     TEXT NOT NULL,
    fields      TEXT NOT NULL,
    received_at INTEGER NOT NULL
) STRICT;

CREATE INDEX agent_logs_host ON agent_logs (host_id, id DESC);
CREATE INDEX agent_logs_received ON agent_logs (received_at);

CREATE TABLE settings (
    key        TEXT PRIMARY KEY NOT NULL,
    value      TEXT NOT NULL,
    updated_at INTEGER NOT NULL
) STRICT;
