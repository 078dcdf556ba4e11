-- Claims read a host's own pending tasks and the host-less ones as two ranges of
-- tasks_claimable_host (see claim_on and claim_tasks_for_hosts). With tasks_claimable still
-- there, generic plans of the per-host LATERAL claim walked it in claim order filtering on
-- host_id: O(pending backlog) per host per claim (millions of heap fetches in a 60 s load
-- test). No query needs it any more.
DROP INDEX IF EXISTS tasks_claimable;
