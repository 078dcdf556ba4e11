//! Runs the store conformance suite against both backends: SQLite on a fresh temporary file
//! per test, PostgreSQL on a fresh database per test (dropped afterwards). PostgreSQL tests
//! never skip: an unreachable server fails them with instructions.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod sqlite {
    use std::sync::Arc;

    use phoenix_store::conformance::Fixture;
    use phoenix_store::SqliteStore;

    async fn fixture() -> Fixture {
        let dir = tempfile::tempdir().expect("temporary directory");
        // A directory that does not exist yet: connect creates it.
        let url = format!("sqlite://{}/nested/phoenix.db", dir.path().display());
        let store = SqliteStore::connect(&url).await.expect("open SQLite store");
        Fixture::new(Arc::new(store), dir)
    }

    phoenix_store::conformance_suite!(fixture);

    #[tokio::test]
    async fn connect_dispatches_on_scheme_and_names_unknown_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = phoenix_store::connect(&format!("sqlite://{}/x.db", dir.path().display()))
            .await
            .unwrap();
        assert_eq!(store.backend(), phoenix_store::Backend::Sqlite);
        assert!(store.wakeups().await.unwrap().is_none());
        let err = phoenix_store::connect("mysql://root@localhost/db")
            .await
            .unwrap_err();
        assert!(err.to_string().contains("`mysql`"), "{err}");
        let err = phoenix_store::connect("sqlite::memory:").await.unwrap_err();
        assert!(err.to_string().contains("in-memory"), "{err}");
    }

    #[tokio::test]
    async fn reopening_a_database_keeps_its_data() {
        use phoenix_store::Store;
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/phoenix.db", dir.path().display());
        let e = phoenix_store::conformance::experiment("kept", phoenix_store::conformance::t0());
        {
            let store = SqliteStore::connect(&url).await.unwrap();
            store.create_experiment(&e).await.unwrap();
            store.close().await;
        }
        let store = SqliteStore::connect(&url).await.unwrap();
        assert_eq!(store.get_experiment(e.id).await.unwrap(), e);
    }
}

mod postgres {
    use std::sync::Arc;
    use std::time::Duration;

    use futures::StreamExt;
    use phoenix_core::{NewTask, TaskType};
    use phoenix_store::conformance::{host, t0, Fixture};
    use phoenix_store::{PgStore, Store, Wakeup};
    use sqlx::{Connection, Executor, PgConnection};

    const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

    fn admin_url() -> String {
        std::env::var("PHOENIX_TEST_PG_URL").unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_string())
    }

    /// The admin URL with its database replaced by `name`.
    fn database_url(admin: &str, name: &str) -> String {
        let (base, query) = admin
            .split_once('?')
            .map_or((admin, None), |(b, q)| (b, Some(q)));
        let authority_end = base.find("://").map_or(0, |i| i + 3);
        let base = match base[authority_end..].find('/') {
            Some(slash) => &base[..authority_end + slash],
            None => base,
        };
        match query {
            Some(q) => format!("{base}/{name}?{q}"),
            None => format!("{base}/{name}"),
        }
    }

    /// A throwaway database, dropped (with its connections) when this value is.
    struct Database {
        admin: String,
        name: String,
    }

    impl Database {
        async fn create() -> Self {
            let admin = admin_url();
            let mut conn = PgConnection::connect(&admin).await.unwrap_or_else(|e| {
                panic!(
                    "PostgreSQL is not reachable at {admin}: {e}\n\
                     Start it with `pg_ctlcluster --skip-systemctl-redirect 15 main start`, or \
                     point PHOENIX_TEST_PG_URL at a server where the user may create databases."
                )
            });
            let name = format!("phoenix_t_{}", uuid::Uuid::new_v4().simple());
            conn.execute(format!("CREATE DATABASE {name}").as_str())
                .await
                .unwrap();
            // Tests do not need durability; commits without fsync keep them fast.
            conn.execute(format!("ALTER DATABASE {name} SET synchronous_commit = off").as_str())
                .await
                .unwrap();
            conn.close().await.ok();
            Self { admin, name }
        }

        fn url(&self) -> String {
            database_url(&self.admin, &self.name)
        }
    }

    impl Drop for Database {
        fn drop(&mut self) {
            let admin = self.admin.clone();
            let name = self.name.clone();
            // Drop runs inside the test's runtime (maybe while unwinding): use a thread with a
            // runtime of its own. Best effort.
            let dropped = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                if let Ok(runtime) = runtime {
                    runtime.block_on(async {
                        if let Ok(mut conn) = PgConnection::connect(&admin).await {
                            let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                            let _ = conn.execute(sql.as_str()).await;
                            let _ = conn.close().await;
                        }
                    });
                }
            });
            let _ = dropped.join();
        }
    }

    async fn fixture() -> Fixture {
        let db = Database::create().await;
        let store = PgStore::connect(&db.url())
            .await
            .expect("connect to the test database");
        Fixture::new(Arc::new(store), db)
    }

    phoenix_store::conformance_suite!(fixture);

    async fn next_wakeup(
        stream: &mut phoenix_store::WakeupStream,
        within: Duration,
    ) -> Option<Wakeup> {
        tokio::time::timeout(within, stream.next())
            .await
            .ok()
            .flatten()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn enqueue_on_one_replica_wakes_listeners_on_another() {
        let db = Database::create().await;
        let replica_a = PgStore::connect(&db.url()).await.unwrap();
        let replica_b = PgStore::connect(&db.url()).await.unwrap();
        let mut wakeups = replica_b
            .wakeups()
            .await
            .unwrap()
            .expect("postgres has wake-ups");

        let node = host("node-a");
        replica_a
            .enqueue_task(
                &NewTask::new(TaskType::Health, serde_json::json!({})).for_host(node.clone()),
                t0(),
            )
            .await
            .unwrap();
        assert_eq!(
            next_wakeup(&mut wakeups, Duration::from_secs(10)).await,
            Some(Wakeup::Host(node))
        );

        replica_a
            .enqueue_task(&NewTask::new(TaskType::Health, serde_json::json!({})), t0())
            .await
            .unwrap();
        assert_eq!(
            next_wakeup(&mut wakeups, Duration::from_secs(10)).await,
            Some(Wakeup::AnyHost)
        );

        // A task put back to pending by lease expiry wakes its host's long-polls too.
        let claimer = host("node-z");
        replica_a
            .claim_tasks(&claimer, 1, chrono::Duration::seconds(1), t0())
            .await
            .unwrap();
        replica_a
            .expire_leases(t0() + chrono::Duration::seconds(5))
            .await
            .unwrap();
        assert_eq!(
            next_wakeup(&mut wakeups, Duration::from_secs(10)).await,
            Some(Wakeup::AnyHost)
        );
        drop(db);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn wakeup_stream_resyncs_after_its_connection_is_killed() {
        let db = Database::create().await;
        let store = PgStore::connect(&db.url()).await.unwrap();
        let mut wakeups = store.wakeups().await.unwrap().unwrap();

        // Kill the listener's backend, as a server restart or a network cut would.
        let killed: i64 = sqlx::query_scalar(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE datname = current_database() AND query ILIKE 'LISTEN%'",
        )
        .fetch_one(store.pool())
        .await
        .unwrap();
        assert_eq!(killed, 1);
        assert_eq!(
            next_wakeup(&mut wakeups, Duration::from_secs(30)).await,
            Some(Wakeup::Resync)
        );

        // Listening again: later notifications arrive.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            store
                .enqueue_task(&NewTask::new(TaskType::Health, serde_json::json!({})), t0())
                .await
                .unwrap();
            match next_wakeup(&mut wakeups, Duration::from_millis(500)).await {
                Some(Wakeup::AnyHost) => break,
                Some(Wakeup::Resync) | None => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "no wake-up after reconnect"
                    )
                }
                Some(other) => panic!("unexpected wake-up {other:?}"),
            }
        }
        drop(db);
    }

    #[tokio::test]
    async fn unreachable_server_is_unavailable_with_reason() {
        let err = PgStore::connect("postgres://postgres@127.0.0.1:1/nowhere")
            .await
            .unwrap_err();
        assert!(
            matches!(err, phoenix_store::StoreError::Unavailable(_)),
            "{err}"
        );
        assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
    }

    #[test]
    fn database_url_replaces_only_the_database() {
        assert_eq!(
            database_url("postgres://u:p@h:5432/postgres?sslmode=disable", "x"),
            "postgres://u:p@h:5432/x?sslmode=disable"
        );
        assert_eq!(database_url("postgres://h", "x"), "postgres://h/x");
    }
}
