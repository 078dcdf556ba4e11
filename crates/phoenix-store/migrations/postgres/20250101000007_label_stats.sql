-- Label statistics agents report with their KPI batches (issue 6): each host's latest report
-- (per-metric series, per-label HyperLogLog sketches, top values, namespace/service groups),
-- one JSON document per host, replaced by each newer interval. Swept with the KPI rows.
CREATE TABLE label_stats (
    host_id      text PRIMARY KEY,
    interval_end timestamptz NOT NULL,
    received_at  timestamptz NOT NULL,
    stats        jsonb NOT NULL
);

CREATE INDEX label_stats_received ON label_stats (received_at);

-- The cost flow reads each host's latest batch of a variant.
CREATE INDEX kpi_batches_host_latest ON kpi_batches (host_id, variant, interval_end);
