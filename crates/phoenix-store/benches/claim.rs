//! Store-level task queue throughput: W workers each claim up to B tasks at a time and
//! report every claimed task completed, until the queue is empty. Prints tasks/s for
//! claim + complete (and, separately, for the enqueue that fills the queue) on SQLite and
//! PostgreSQL. A plain timed loop rather than criterion: one iteration drains a queue that
//! has to be refilled, which criterion's per-iteration model measures badly.
//!
//! ```text
//! cargo bench -p phoenix-store --bench claim -- [--backend sqlite|postgres|both]
//!     [--tasks N] [--workers W] [--batch B] [--rounds R] [--complete each|batch] [--analyze]
//! ```
//!
//! `--analyze` (PostgreSQL) runs `ANALYZE tasks` after each fill, as autovacuum would have for
//! a queue whose backlog built up over more than a minute. Without it the planner sees the
//! statistics of the previous (empty) queue, and claims sort every host-less pending task.
//!
//! Besides wall-clock rates it reports the CPU the drain cost (this process plus, for
//! PostgreSQL, the server backends of the bench database and the WAL writer, read from
//! /proc), because on a machine shared with other work the wall-clock rate says more about
//! the neighbours than about the queue.
//!
//! PostgreSQL: a fresh database `phoenix_bench_<uuid>` is created through
//! `PHOENIX_TEST_PG_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`) with the
//! server's default durability settings, and dropped afterwards.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use phoenix_core::{HostId, NewTask, TaskStatus, TaskType};
use phoenix_store::{PgStore, SharedStore, SqliteStore, TaskStatusUpdate};
use sqlx::{Connection, Executor, PgConnection};

#[derive(Debug, Clone)]
struct Config {
    backends: Vec<String>,
    tasks: usize,
    workers: usize,
    batch: u32,
    rounds: usize,
    complete: Complete,
    analyze: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Complete {
    /// One `update_task_status` per task.
    Each,
    /// One `complete_tasks` per claimed batch.
    Batch,
}

fn parse_args() -> Config {
    let mut config = Config {
        backends: vec!["sqlite".into(), "postgres".into()],
        tasks: 20_000,
        workers: 4,
        batch: 100,
        rounds: 3,
        complete: Complete::Each,
        analyze: false,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--backend" => {
                config.backends = match value.as_str() {
                    "both" => vec!["sqlite".into(), "postgres".into()],
                    other => vec![other.to_string()],
                };
                i += 1;
            }
            "--tasks" => {
                config.tasks = value.parse().expect("--tasks N");
                i += 1;
            }
            "--workers" => {
                config.workers = value.parse().expect("--workers W");
                i += 1;
            }
            "--batch" => {
                config.batch = value.parse().expect("--batch B");
                i += 1;
            }
            "--rounds" => {
                config.rounds = value.parse().expect("--rounds R");
                i += 1;
            }
            "--complete" => {
                config.complete = match value.as_str() {
                    "each" => Complete::Each,
                    "batch" => Complete::Batch,
                    other => panic!("--complete each|batch, not {other}"),
                };
                i += 1;
            }
            "--analyze" => config.analyze = true,
            // `cargo bench` passes `--bench`; ignore anything else we do not know.
            _ => {}
        }
        i += 1;
    }
    config
}

fn admin_url() -> String {
    std::env::var("PHOENIX_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

async fn fill(store: &SharedStore, tasks: usize) -> Duration {
    let started = Instant::now();
    let enqueuers = 8;
    let mut handles = Vec::new();
    for _ in 0..enqueuers {
        let store = Arc::clone(store);
        let n = tasks / enqueuers;
        handles.push(tokio::spawn(async move {
            let now = Utc::now();
            for i in 0..n {
                let mut t = NewTask::new(TaskType::Health, serde_json::json!({"i": i}));
                t.priority = (i % 3) as i32;
                store.enqueue_task(&t, now).await.unwrap();
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    started.elapsed()
}

/// CPU seconds (user + system) used so far by the given processes; `None` where /proc or
/// `getconf` is not available.
fn cpu_seconds(pids: &[u32]) -> Option<f64> {
    let ticks_per_second: f64 = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())?;
    let mut ticks = 0u64;
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name (which may hold spaces): state is field 3, so utime
        // (field 14) and stime (field 15) are at 11 and 12.
        let after_name = stat.rsplit_once(')')?.1;
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        ticks += fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    }
    Some(ticks as f64 / ticks_per_second)
}

/// The processes whose CPU a drain costs: this one, and for PostgreSQL the bench database's
/// backends plus the WAL writer.
async fn measured_pids(pg: Option<&PgStore>) -> Vec<u32> {
    let mut pids = vec![std::process::id()];
    if let Some(pg) = pg {
        let backends: Vec<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity
             WHERE datname = current_database() OR backend_type = 'walwriter'",
        )
        .fetch_all(pg.pool())
        .await
        .unwrap_or_default();
        pids.extend(backends.into_iter().filter_map(|p| u32::try_from(p).ok()));
    }
    pids
}

async fn drain(store: &SharedStore, config: &Config) -> (usize, Duration) {
    let started = Instant::now();
    let mut handles = Vec::new();
    for w in 0..config.workers {
        let store = Arc::clone(store);
        let batch = config.batch;
        let complete = config.complete;
        handles.push(tokio::spawn(async move {
            let me = HostId::parse(&format!("bench-worker-{w}")).unwrap();
            let lease = chrono::Duration::seconds(60);
            let done = TaskStatusUpdate {
                status: TaskStatus::Completed,
                error: None,
                result: None,
            };
            let mut n = 0;
            loop {
                let now = Utc::now();
                let claimed = store.claim_tasks(&me, batch, lease, now).await.unwrap();
                if claimed.is_empty() {
                    return n;
                }
                n += claimed.len();
                match complete {
                    Complete::Each => {
                        for t in &claimed {
                            store
                                .update_task_status(t.id, &me, &done, lease, now)
                                .await
                                .unwrap();
                        }
                    }
                    Complete::Batch => {
                        let reports: Vec<_> =
                            claimed.iter().map(|t| (t.id, done.clone())).collect();
                        for outcome in store
                            .complete_tasks(&me, &reports, lease, now)
                            .await
                            .unwrap()
                        {
                            outcome.unwrap();
                        }
                    }
                }
            }
        }));
    }
    let mut total = 0;
    for h in handles {
        total += h.await.unwrap();
    }
    (total, started.elapsed())
}

async fn run_backend(name: &str, config: &Config) {
    let dir = tempfile::tempdir().unwrap();
    let mut pg_database = None;
    let mut pg_store = None;
    let store: SharedStore = match name {
        "sqlite" => {
            let url = format!("sqlite://{}/bench.db", dir.path().display());
            Arc::new(SqliteStore::connect(&url).await.unwrap())
        }
        "postgres" => {
            let admin = admin_url();
            let db = format!("phoenix_bench_{}", uuid::Uuid::new_v4().simple());
            let mut conn = PgConnection::connect(&admin).await.unwrap_or_else(|e| {
                panic!("PostgreSQL unreachable at {admin}: {e} (pg_ctlcluster --skip-systemctl-redirect 15 main start)")
            });
            conn.execute(format!("CREATE DATABASE {db}").as_str())
                .await
                .unwrap();
            let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
            let store = Arc::new(PgStore::connect(&format!("{base}/{db}")).await.unwrap());
            pg_database = Some((conn, db));
            pg_store = Some(Arc::clone(&store));
            store
        }
        other => panic!("unknown backend {other}"),
    };

    let mut rates = Vec::new();
    let mut cpu_per_task = Vec::new();
    for round in 1..=config.rounds {
        let fill_time = fill(&store, config.tasks).await;
        let filled = config.tasks / 8 * 8;
        if let (true, Some(pg)) = (config.analyze, pg_store.as_deref()) {
            sqlx::query("ANALYZE tasks")
                .execute(pg.pool())
                .await
                .unwrap();
        }
        let pids = measured_pids(pg_store.as_deref()).await;
        let client = [std::process::id()];
        let cpu_before = cpu_seconds(&pids).zip(cpu_seconds(&client));
        let (drained, drain_time) = drain(&store, config).await;
        let cpu_after = cpu_seconds(&pids).zip(cpu_seconds(&client));
        let cpu_split = cpu_before
            .zip(cpu_after)
            .map(|((tb, cb), (ta, ca))| (ta - tb, ca - cb));
        let cpu_used = cpu_split.map(|(total, _)| total);
        assert_eq!(drained, filled, "every task claimed exactly once");
        let rate = drained as f64 / drain_time.as_secs_f64();
        let cpu = match cpu_used {
            Some(cpu) => {
                cpu_per_task.push(cpu / drained as f64);
                let client = cpu_split.map_or(0.0, |(_, client)| client);
                format!(
                    ", {:.1} µs CPU/task ({:.1} in this process)",
                    cpu / drained as f64 * 1e6,
                    client / drained as f64 * 1e6
                )
            }
            None => String::new(),
        };
        println!(
            "{name:>8} round {round}: enqueue {filled} tasks in {:>7.3}s ({:>8.0} tasks/s, 8 enqueuers); \
             claim+complete {drained} in {:>7.3}s = {rate:>8.0} tasks/s{cpu}",
            fill_time.as_secs_f64(),
            filled as f64 / fill_time.as_secs_f64(),
            drain_time.as_secs_f64(),
        );
        rates.push(rate);
        store
            .sweep_finished_tasks(Utc::now() + chrono::Duration::days(1))
            .await
            .unwrap();
    }
    rates.sort_by(f64::total_cmp);
    println!(
        "{name:>8} claim+complete: median {:.0} tasks/s, best {:.0} tasks/s \
         ({} workers, batch {}, completion {:?}, {} rounds of {} tasks, analyze {})",
        rates[rates.len() / 2],
        rates[rates.len() - 1],
        config.workers,
        config.batch,
        config.complete,
        config.rounds,
        config.tasks,
        config.analyze,
    );
    if !cpu_per_task.is_empty() {
        cpu_per_task.sort_by(f64::total_cmp);
        let median = cpu_per_task[cpu_per_task.len() / 2];
        println!(
            "{name:>8} claim+complete CPU: median {:.1} µs/task (client + server), \
             i.e. at most {:.0} tasks/s per dedicated core",
            median * 1e6,
            1.0 / median,
        );
    }
    drop(pg_store);
    drop(store);
    if let Some((mut conn, db)) = pg_database {
        let _ = conn
            .execute(format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)").as_str())
            .await;
    }
}

fn main() {
    let config = parse_args();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        for backend in &config.backends {
            run_backend(backend, &config).await;
        }
    });
}
