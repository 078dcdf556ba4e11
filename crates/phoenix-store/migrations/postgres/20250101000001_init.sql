-- Phoenix schema for PostgreSQL: timestamptz, uuid, jsonb. Several API replicas share it;
-- claims use FOR UPDATE SKIP LOCKED and wake-ups go through NOTIFY phoenix_task_wakeup.

CREATE TABLE experiments (
    id                      uuid PRIMARY KEY,
    name                    text NOT NULL,
    description             text NOT NULL,
    phase                   text NOT NULL,
    promoted                boolean,
    phase_reason            text,
    baseline_pipeline       text NOT NULL,
    candidate_pipeline      text NOT NULL,
    target_hosts            jsonb NOT NULL,
    mode                    text NOT NULL,
    candidate_share_percent smallint,
    duration_seconds        bigint NOT NULL,
    parameters              jsonb NOT NULL,
    owner                   text,
    created_at              timestamptz NOT NULL,
    updated_at              timestamptz NOT NULL,
    started_at              timestamptz,
    ended_at                timestamptz,
    -- The seq of the last event written; bumped (under the row lock) by the transaction that
    -- writes the next one.
    last_event_seq          bigint NOT NULL DEFAULT 0
);

CREATE INDEX experiments_phase ON experiments (phase);
CREATE INDEX experiments_created ON experiments (created_at DESC, id DESC);

CREATE TABLE experiment_events (
    experiment_id uuid NOT NULL REFERENCES experiments (id) ON DELETE CASCADE,
    seq           bigint NOT NULL,
    kind          text NOT NULL,
    from_phase    text,
    to_phase      text,
    message       text NOT NULL,
    at            timestamptz NOT NULL,
    UNIQUE (experiment_id, seq)
);

CREATE TABLE tasks (
    id               uuid PRIMARY KEY,
    task_type        text NOT NULL,
    status           text NOT NULL,
    payload          jsonb NOT NULL,
    priority         integer NOT NULL,
    host_id          text,
    experiment_id    uuid REFERENCES experiments (id) ON DELETE SET NULL,
    assigned_to      text,
    attempts         integer NOT NULL DEFAULT 0,
    max_attempts     integer NOT NULL,
    not_before       timestamptz,
    lease_expires_at timestamptz,
    idempotency_key  text,
    error            text,
    result           jsonb,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    assigned_at      timestamptz,
    started_at       timestamptz,
    finished_at      timestamptz
);

CREATE UNIQUE INDEX tasks_idempotency_key ON tasks (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- Claims: a host's own tasks and host-less ones, in claim order, pending only.
CREATE INDEX tasks_claimable_host ON tasks (host_id, priority DESC, created_at, id)
    WHERE status = 'pending';
CREATE INDEX tasks_claimable ON tasks (priority DESC, created_at, id) WHERE status = 'pending';
CREATE INDEX tasks_due ON tasks (not_before) WHERE status = 'pending' AND not_before IS NOT NULL;
CREATE INDEX tasks_leased ON tasks (lease_expires_at) WHERE status IN ('assigned', 'running');
CREATE INDEX tasks_held ON tasks (assigned_to) WHERE status IN ('assigned', 'running');
CREATE INDEX tasks_finished ON tasks (finished_at) WHERE status IN ('completed', 'failed');
CREATE INDEX tasks_experiment ON tasks (experiment_id) WHERE experiment_id IS NOT NULL;
CREATE INDEX tasks_created ON tasks (created_at DESC, id DESC);

CREATE TABLE agents (
    host_id           text PRIMARY KEY,
    secret_hash       text NOT NULL,
    revoked           boolean NOT NULL DEFAULT false,
    revoked_at        timestamptz,
    hostname          text NOT NULL DEFAULT '',
    version           text NOT NULL DEFAULT '',
    capabilities      jsonb NOT NULL DEFAULT '[]',
    labels            jsonb NOT NULL DEFAULT '{}',
    resource_usage    jsonb NOT NULL DEFAULT '{}',
    running_pipelines jsonb NOT NULL DEFAULT '[]',
    enrolled_at       timestamptz NOT NULL,
    last_seen_at      timestamptz
);

CREATE TABLE agent_heartbeats (
    host_id   text NOT NULL REFERENCES agents (host_id) ON DELETE CASCADE,
    at        timestamptz NOT NULL,
    heartbeat jsonb NOT NULL
);

CREATE INDEX agent_heartbeats_host_at ON agent_heartbeats (host_id, at);
CREATE INDEX agent_heartbeats_at ON agent_heartbeats (at);

CREATE TABLE kpi_batches (
    batch_id       uuid PRIMARY KEY,
    host_id        text NOT NULL,
    experiment_id  uuid,
    variant        text NOT NULL,
    interval_start timestamptz NOT NULL,
    interval_end   timestamptz NOT NULL,
    input_series   bigint NOT NULL,
    output_series  bigint NOT NULL,
    input_samples  bigint NOT NULL,
    output_samples bigint NOT NULL,
    input_bytes    bigint NOT NULL,
    output_bytes   bigint NOT NULL,
    kpi_values     jsonb NOT NULL,
    details        jsonb NOT NULL,
    received_at    timestamptz NOT NULL
);

CREATE INDEX kpi_batches_experiment ON kpi_batches (experiment_id, variant, interval_end);
CREATE INDEX kpi_batches_received ON kpi_batches (received_at);

CREATE TABLE agent_logs (
    id          bigserial PRIMARY KEY,
    host_id     text NOT NULL,
    at          timestamptz NOT NULL,
    level       text NOT NULL,
    message     text NOT NULL,
    fields      jsonb NOT NULL,
    received_at timestamptz NOT NULL
);

CREATE INDEX agent_logs_host ON agent_logs (host_id, id DESC);
CREATE INDEX agent_logs_received ON agent_logs (received_at);

CREATE TABLE settings (
    key        text PRIMARY KEY,
    value      jsonb NOT NULL,
    updated_at timestamptz NOT NULL
);
