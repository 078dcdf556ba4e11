-- Targets dropped from a run under analysis.on_target_failure: exclude (host, reason,
-- when), so the analysis leaves their KPIs out and a promotion does not reach them.
ALTER TABLE experiments ADD COLUMN excluded_targets TEXT NOT NULL DEFAULT '[]';
