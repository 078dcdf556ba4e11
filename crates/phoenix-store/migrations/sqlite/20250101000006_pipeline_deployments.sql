-- Pipelines deployed to hosts outside experiments. The deployment is one JSON document
-- (targets, per-host task ids, status); rows are few and read whole.
CREATE TABLE pipeline_deployments (
    id         TEXT PRIMARY KEY NOT NULL,
    created_at INTEGER NOT NULL,
    body       TEXT NOT NULL
) STRICT;

CREATE INDEX pipeline_deployments_created ON pipeline_deployments (created_at DESC, id DESC);
