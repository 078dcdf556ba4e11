-- The task queue rewrites each row twice (claim, report) and deletes it after retention:
-- vacuum it after 1 % churn instead of the default 20 %, so claims (which scan the pending
-- index from its head) do not wade through dead entries left by earlier claims.
ALTER TABLE tasks SET (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0.01,
    autovacuum_analyze_scale_factor = 0.02
);
