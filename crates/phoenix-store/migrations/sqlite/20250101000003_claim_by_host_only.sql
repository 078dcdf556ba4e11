-- Claims read a host's own pending tasks and the host-less ones as two ranges of
-- tasks_claimable_host; no query needs tasks_claimable any more, and keeping it only costs
-- an index write per enqueue and claim.
DROP INDEX IF EXISTS tasks_claimable;
