-- Experiments carry how they are judged (analysis interval, guardrails, automatic
-- rollback); every analysis run is a row, whose primary key makes one runner per
-- experiment per interval, whatever the number of API replicas.
ALTER TABLE experiments ADD COLUMN analysis TEXT NOT NULL DEFAULT '{}';

CREATE TABLE experiment_analyses (
    experiment_id TEXT NOT NULL REFERENCES experiments (id) ON DELETE CASCADE,
    -- Interval number since the start; -1 for the final analysis.
    seq           INTEGER NOT NULL,
    is_final      INTEGER NOT NULL,
    runner        TEXT NOT NULL,
    claimed_at    INTEGER NOT NULL,
    finished_at   INTEGER,
    decision      TEXT,
    result        TEXT,
    PRIMARY KEY (experiment_id, seq)
) STRICT;
