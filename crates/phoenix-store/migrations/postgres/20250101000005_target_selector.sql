-- Experiments may name their targets by agent labels; the matching agents join
-- target_hosts when the experiment starts.
ALTER TABLE experiments ADD COLUMN target_selector jsonb NOT NULL DEFAULT '{}';
