-- Claims read a host's own pending tasks and the host-less ones as two ordered index ranges
-- (see SqliteStore::claim_tasks), so a claim costs O(claimed) whatever the backlog of other
-- hosts' tasks: without this index it walked `tasks_claimable` past every other host's task.
CREATE INDEX tasks_claimable_host ON tasks (host_id, priority DESC, created_at, id)
    WHERE status = 'pending';
