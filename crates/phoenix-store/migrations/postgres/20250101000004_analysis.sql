-- Experiments carry how they are judged (analysis interval, guardrails, automatic
-- rollback); every analysis run is a row, whose primary key makes one runner per
-- experiment per interval, whatever the number of API replicas.
ALTER TABLE experiments ADD COLUMN analysis jsonb NOT NULL DEFAULT '{}';

CREATE TABLE experiment_analyses (
    experiment_id uuid NOT NULL REFERENCES experiments (id) ON DELETE CASCADE,
    -- Interval number since the start; -1 for the final analysis.
    seq           bigint NOT NULL,
    is_final      boolean NOT NULL,
    runner        text NOT NULL,
    claimed_at    timestamptz NOT NULL,
    finished_at   timestamptz,
    decision      text,
    result        jsonb,
    PRIMARY KEY (experiment_id, seq)
);
