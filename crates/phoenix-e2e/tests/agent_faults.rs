//! The agent against the real API, with real processes failing: `kill -9` mid-experiment,
//! the API down while agents run, an agent that stops heartbeating, the metrics backend
//! (VictoriaMetrics) down behind a running pipeline. Intervals are shortened (KPIs every
//! second, heartbeats every 500 ms, leases of 2 s); outages last a few seconds
//! (`PHOENIX_E2E_OUTAGE_SECS`, default 6) instead of a minute: long enough for several KPI
//! intervals and backoff rounds to pile up in the buffers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use phoenix_e2e::{
    api_on_sqlite, free_port, stored_batch_ids, wait_for, AgentOptions, AgentProcess, ApiProcess,
    TempDir,
};
use serde_json::{json, Value};

fn outage() -> Duration {
    Duration::from_secs(
        std::env::var("PHOENIX_E2E_OUTAGE_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(6),
    )
}

async fn post(api: &ApiProcess, url: String, body: Value) -> Value {
    let response = api.client().post(&url).json(&body).send().await.unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    assert!(status.is_success(), "POST {url}: {status} {body}");
    body
}

async fn get(api: &ApiProcess, url: String) -> Option<Value> {
    api.client().get(&url).send().await.ok()?.json().await.ok()
}

async fn enqueue(api: &ApiProcess, task: Value) -> String {
    let body = post(api, format!("{}/api/v1/tasks", api.base()), task).await;
    body["task"]["id"].as_str().unwrap().to_string()
}

async fn task(api: &ApiProcess, id: &str) -> Option<Value> {
    get(api, format!("{}/api/v1/tasks/{id}", api.base())).await
}

async fn tasks(api: &ApiProcess) -> Vec<Value> {
    get(api, format!("{}/api/v1/tasks?limit=500", api.base()))
        .await
        .and_then(|v| v["items"].as_array().cloned())
        .unwrap_or_default()
}

async fn start_experiment(api: &ApiProcess, hosts: &[&str], duration_seconds: u64) -> String {
    let exp = post(
        api,
        format!("{}/api/v1/experiments", api.base()),
        json!({
            "name": "e2e", "baseline_pipeline": "baseline", "candidate_pipeline": "adaptive",
            "target_hosts": hosts, "duration_seconds": duration_seconds,
        }),
    )
    .await;
    let id = exp["id"].as_str().unwrap().to_string();
    post(
        api,
        format!("{}/api/v1/experiments/{id}/start", api.base()),
        json!({}),
    )
    .await;
    id
}

/// One value from a Prometheus text exposition.
async fn metric(address: &str, name: &str) -> Option<f64> {
    let text = reqwest::get(format!("http://{address}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

const LOADSIM: &str = r#"{"profile": "k8s", "scale": 0.05, "interval": "500ms"}"#;

fn assert_no_task_ran_twice(agents: &[&AgentProcess]) {
    let mut seen = HashMap::new();
    for agent in agents {
        for id in agent.executed_task_ids() {
            *seen.entry(id).or_insert(0) += 1;
        }
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "tasks executed twice: {twice:?}");
}

async fn assert_every_queued_batch_stored_once(db: &std::path::Path, agents: &[&AgentProcess]) {
    let queued: BTreeSet<String> = agents.iter().flat_map(|a| a.queued_batch_ids()).collect();
    let total_queued: usize = agents.iter().map(|a| a.queued_batch_ids().len()).sum();
    assert_eq!(queued.len(), total_queued, "a batch id was produced twice");
    assert!(!queued.is_empty(), "no KPI batch was produced");
    let stored = wait_for(
        "every queued KPI batch stored",
        Duration::from_secs(30),
        || async {
            let stored = stored_batch_ids(db).await;
            let ids: BTreeSet<String> = stored.iter().map(|(b, _)| b.clone()).collect();
            queued.is_subset(&ids).then_some(stored)
        },
    )
    .await;
    let ids: BTreeSet<String> = stored.iter().map(|(b, _)| b.clone()).collect();
    assert_eq!(ids.len(), stored.len(), "a batch id stored twice");
    assert_eq!(ids, queued, "stored batches the agents never queued");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_experiment_loses_no_kpi_batch_and_runs_no_task_twice() {
    let dir = TempDir::new("phoenix-e2e-kill9");
    let (api, db) = api_on_sqlite(dir.path(), &[]).await;
    let mut agent = AgentProcess::start(
        AgentOptions::new(&api.base(), "kill9-agent", &dir.path().join("agent"))
            .pipeline("pipelines: {main: {}}\n"),
    );
    let mut loadsim: Value = serde_json::from_str(LOADSIM).unwrap();
    loadsim["action"] = json!("start");
    enqueue(
        &api,
        json!({"type": "loadsim", "host_id": "kill9-agent", "payload": loadsim}),
    )
    .await;
    // Long enough that the restarted agent (slow to start on a busy machine) still reports
    // before the run ends and the API sends its stop.
    let experiment = start_experiment(&api, &["kill9-agent"], 20).await;

    wait_for(
        "the experiment running with KPIs",
        Duration::from_secs(60),
        || async {
            (!agent.log_events("experiment started here").is_empty()
                && agent.queued_batch_ids().len() >= 4)
                .then_some(())
        },
    )
    .await;
    agent.kill9();
    let before_restart = agent.queued_batch_ids().len();
    agent.restart();

    // The experiment carries on after the restart and ends at its deadline.
    let start_task = wait_for(
        "the experiment task completed",
        Duration::from_secs(60),
        || async {
            tasks(&api).await.into_iter().find(|t| {
                t["type"] == "experiment"
                    && t["status"] == "completed"
                    && t["payload"]["action"] == "start"
            })
        },
    )
    .await;
    // Ended by the agent's own clock, or by the stop the API sends at the run's deadline
    // (whichever comes first on a busy machine): never by a failure.
    let outcome = start_task["result"]["outcome"].as_str().unwrap_or_default();
    assert!(
        outcome == "duration_elapsed" || outcome == "stopped",
        "{start_task}"
    );
    assert_eq!(start_task["result"]["experiment_id"], experiment.as_str());
    assert!(agent
        .log_text()
        .contains("resuming the experiment after a restart"));
    assert!(agent.queued_batch_ids().len() > before_restart);
    // At the end of the run the API's analysis sends the agent a follow-up (stop, promote or
    // rollback) task: every task, that one included, completes before the agent is stopped.
    wait_for("every task completed", Duration::from_secs(60), || async {
        tasks(&api)
            .await
            .iter()
            .all(|t| t["status"] == "completed")
            .then_some(())
    })
    .await;
    assert_eq!(agent.terminate(), Some(0), "{}", agent.log_text());

    assert_no_task_ran_twice(&[&agent]);
    assert_every_queued_batch_stored_once(&db, &[&agent]).await;
    // Both variants of the experiment were reported, before and after the kill.
    let variants = reqwest::get(format!("{}/metrics", api.base()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        variants.contains(&format!("experiment_id=\"{experiment}\"")),
        "{variants}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_buffer_kpis_while_the_api_is_down_and_deliver_every_batch_after() {
    let dir = TempDir::new("phoenix-e2e-api-down");
    let (api, db) = api_on_sqlite(dir.path(), &[]).await;
    let port = api.port;
    let db_url = format!("sqlite://{}", db.display());
    let metrics: Vec<String> = (1..=2)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let mut agents: Vec<AgentProcess> = (1..=2)
        .map(|i| {
            AgentProcess::start(
                AgentOptions::new(
                    &api.base(),
                    &format!("outage-{i}"),
                    &dir.path().join(format!("agent-{i}")),
                )
                .pipeline(&format!(
                    "pipelines: {{main: {{}}}}\nexporters: {{prometheus: {{listen: \"{}\"}}}}\n",
                    metrics[i - 1]
                )),
            )
        })
        .collect();
    for agent in &agents {
        let payload: Value = serde_json::from_str(LOADSIM).unwrap();
        enqueue(
            &api,
            json!({"type": "loadsim", "host_id": agent.host_id, "payload": payload}),
        )
        .await;
    }
    wait_for("KPIs flowing", Duration::from_secs(60), || async {
        (stored_batch_ids(&db).await.len() >= 4).then_some(())
    })
    .await;

    drop(api);
    let down_for = outage();
    tokio::time::sleep(down_for).await;
    // Batches piled up on disk while the API was gone.
    for address in &metrics {
        wait_for(
            "KPI batches buffered on disk",
            Duration::from_secs(30),
            || async {
                (metric(address, "phoenix_agent_kpi_buffer_pending_records").await? >= 3.0)
                    .then_some(())
            },
        )
        .await;
    }
    let queued_during_outage: usize = agents.iter().map(|a| a.queued_batch_ids().len()).sum();
    let api = ApiProcess::start_on(
        port,
        &db_url,
        &[("PHOENIX_AGENT_HEARTBEAT_INTERVAL", "500ms")],
    )
    .await;
    let produced_while_down = wait_for(
        "buffered batches delivered",
        Duration::from_secs(60),
        || async {
            let stored = stored_batch_ids(&db).await.len();
            (stored >= queued_during_outage).then_some(stored)
        },
    )
    .await;
    assert!(produced_while_down >= queued_during_outage);
    for agent in &mut agents {
        assert_eq!(agent.terminate(), Some(0), "{}", agent.log_text());
    }
    let refs: Vec<&AgentProcess> = agents.iter().collect();
    assert_every_queued_batch_stored_once(&db, &refs).await;
    assert_no_task_ran_twice(&refs);
    // Delivery resumed in order: the duplicates the API saw (replays) were not stored.
    let text = reqwest::get(format!("{}/metrics", api.base()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("phoenix_kpi_batches_total{status=\"stored\"}"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_agent_loses_its_task_to_another_agent_and_shows_offline() {
    let dir = TempDir::new("phoenix-e2e-silent");
    let (api, _db) = api_on_sqlite(
        dir.path(),
        &[
            ("PHOENIX_TASK_LEASE", "2s"),
            ("PHOENIX_AGENT_OFFLINE_AFTER", "3s"),
        ],
    )
    .await;
    let first = AgentProcess::start(
        AgentOptions::new(&api.base(), "silent-1", &dir.path().join("agent-1"))
            .pipeline("pipelines: {main: {}}\n"),
    );
    let payload =
        json!({"profile": "app", "scale": 0.1, "interval": "500ms", "duration_seconds": 600});
    let id = enqueue(&api, json!({"type": "loadsim", "payload": payload})).await;
    wait_for(
        "the first agent running the task",
        Duration::from_secs(30),
        || async {
            let t = task(&api, &id).await?;
            (t["status"] == "running" && t["assigned_to"] == "silent-1").then_some(())
        },
    )
    .await;

    // Frozen: no heartbeat, no status; the process is still there.
    phoenix_e2e::signal(first.pid(), "STOP");
    let second = AgentProcess::start(
        AgentOptions::new(&api.base(), "silent-2", &dir.path().join("agent-2"))
            .pipeline("pipelines: {main: {}}\n"),
    );
    let taken = wait_for(
        "the task handed to the second agent",
        Duration::from_secs(30),
        || async {
            let t = task(&api, &id).await?;
            (t["assigned_to"] == "silent-2" && t["status"] == "running").then_some(t)
        },
    )
    .await;
    // The frozen agent's long-poll, still parked on the API, may claim it once more on the
    // way (its lease lapses again): the second agent gets it on attempt 2 or 3.
    assert!(taken["attempts"].as_u64().unwrap() >= 2, "{taken}");
    assert!(
        taken["error"]
            .as_str()
            .unwrap_or("")
            .contains("lease expired on host silent-1"),
        "{taken}"
    );
    wait_for(
        "the silent agent shown offline",
        Duration::from_secs(30),
        || async {
            let fleet = get(&api, format!("{}/api/v1/fleet/status", api.base())).await?;
            let agents = fleet["agents"].as_array()?;
            let silent = agents.iter().find(|a| a["host_id"] == "silent-1")?;
            let live = agents.iter().find(|a| a["host_id"] == "silent-2")?;
            (silent["health"] == "offline" && live["health"] == "healthy").then_some(())
        },
    )
    .await;
    phoenix_e2e::signal(first.pid(), "CONT");
    assert!(
        second.log_text().contains(&id),
        "the second agent never ran {id}"
    );
    assert_no_task_ran_twice(&[&second]);
}

/// A private VictoriaMetrics on a free port; stopped (SIGTERM) on drop.
struct Victoria {
    child: std::process::Child,
    port: u16,
    data: std::path::PathBuf,
}

impl Victoria {
    fn start(port: u16, data: &std::path::Path) -> Self {
        // Installed from the Debian package on a fresh CI machine (shared with the peer tests).
        let binary = phoenix_e2e::peers::debian_binaries(&[(
            "victoria-metrics",
            "/usr/bin/victoria-metrics",
        )])
        .remove(0);
        let child = std::process::Command::new(&binary)
            .arg(format!("-storageDataPath={}", data.display()))
            .arg(format!("-httpListenAddr=127.0.0.1:{port}"))
            .arg("-retentionPeriod=100y")
            // Exact duplicates (a request resent after a lost answer) count once.
            .arg("-dedup.minScrapeInterval=1ms")
            .arg("-search.latencyOffset=0s")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        Self {
            child,
            port,
            data: data.to_path_buf(),
        }
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn ready(&self) {
        let url = format!("{}/health", self.base());
        wait_for("VictoriaMetrics ready", Duration::from_secs(30), || async {
            reqwest::get(&url)
                .await
                .ok()
                .filter(|r| r.status().is_success())
                .map(|_| ())
        })
        .await;
    }

    fn stop(mut self) -> std::path::PathBuf {
        phoenix_e2e::signal(self.child.id(), "TERM");
        let _ = self.child.wait();
        self.data.clone()
    }

    /// `(series, samples)` stored.
    async fn counts(&self) -> (usize, usize) {
        let _ = reqwest::get(format!("{}/internal/force_flush", self.base())).await;
        let text = reqwest::get(format!(
            "{}/api/v1/export?match[]={{__name__!=\"\"}}",
            self.base()
        ))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
        let mut series = 0;
        let mut samples = 0;
        for line in text.lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            series += 1;
            samples += v["values"].as_array().map_or(0, Vec::len);
        }
        (series, samples)
    }
}

impl Drop for Victoria {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn victoria_metrics_outage_and_an_agent_kill_9_lose_no_remote_write_sample() {
    let dir = TempDir::new("phoenix-e2e-vm");
    let vm_port = free_port();
    let vm = Victoria::start(vm_port, &dir.path().join("vm"));
    vm.ready().await;
    let (api, _db) = api_on_sqlite(dir.path(), &[]).await;
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut agent = AgentProcess::start(
        AgentOptions::new(&api.base(), "vm-agent", &dir.path().join("agent")).pipeline(&format!(
            "pipelines: {{main: {{}}}}\nexporters:\n  remote_write: {{url: \"{}/api/v1/write\", min_backoff: 50ms, max_backoff: 500ms, timeout: 2s}}\n  prometheus: {{listen: \"{metrics}\"}}\n",
            vm.base()
        )),
    );
    let duration = outage().as_secs() + 2;
    enqueue(
        &api,
        json!({"type": "loadsim", "host_id": "vm-agent", "payload":
            {"profile": "app", "scale": 0.2, "interval": "250ms", "duration_seconds": duration}}),
    )
    .await;
    wait_for(
        "samples reaching VictoriaMetrics",
        Duration::from_secs(30),
        || async {
            (metric(&metrics, "phoenix_exporter_samples_sent_total").await? > 0.0).then_some(())
        },
    )
    .await;

    // The backend goes away mid-stream; the load runs on to its end.
    let data = vm.stop();
    wait_for(
        "the load simulation over",
        Duration::from_secs(60),
        || async {
            let all = tasks(&api).await;
            all.iter()
                .any(|t| t["type"] == "loadsim" && t["status"] == "completed")
                .then_some(())
        },
    )
    .await;
    let queued = metric(&metrics, "phoenix_agent_remote_write_queued_samples_total")
        .await
        .unwrap();
    let pending = metric(
        &metrics,
        "phoenix_agent_remote_write_buffer_pending_records",
    )
    .await
    .unwrap();
    assert!(pending >= 3.0, "only {pending} requests buffered");
    assert_eq!(
        metric(
            &metrics,
            "phoenix_agent_remote_write_buffer_dropped_samples_total"
        )
        .await,
        Some(0.0)
    );
    // The buffer survives a kill -9 of the agent.
    agent.kill9();
    agent.restart();
    let vm = Victoria::start(vm_port, &data);
    vm.ready().await;
    wait_for(
        "the buffer drained after the restart",
        Duration::from_secs(60),
        || async {
            let pending = metric(
                &metrics,
                "phoenix_agent_remote_write_buffer_pending_records",
            )
            .await?;
            let sent = metric(&metrics, "phoenix_exporter_samples_sent_total").await?;
            (pending == 0.0 && sent > 0.0).then_some(())
        },
    )
    .await;
    let (series, samples) = wait_for(
        "VictoriaMetrics holding every sample",
        Duration::from_secs(30),
        || async {
            let (series, samples) = vm.counts().await;
            (samples as f64 >= queued).then_some((series, samples))
        },
    )
    .await;
    assert_eq!(
        samples as f64, queued,
        "VictoriaMetrics holds {samples} samples, the agent exported {queued}"
    );
    assert!(series > 0);
    assert_eq!(agent.terminate(), Some(0), "{}", agent.log_text());
}

/// A private PostgreSQL cluster in a temporary directory (never the machine's shared
/// one), run as the `postgres` user when the tests run as root (initdb refuses root).
struct PrivatePostgres {
    dir: std::path::PathBuf,
    port: u16,
}

impl PrivatePostgres {
    /// The newest installed server's binaries (`/usr/lib/postgresql/<version>/bin`).
    fn bin_dir() -> std::path::PathBuf {
        let mut versions: Vec<(u32, std::path::PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let version = e.file_name().to_str()?.parse::<u32>().ok()?;
                let bin = e.path().join("bin");
                bin.join("initdb").exists().then_some((version, bin))
            })
            .collect();
        versions.sort();
        versions.pop().map(|(_, bin)| bin).expect(
            "no PostgreSQL server binaries under /usr/lib/postgresql: apt-get install postgresql",
        )
    }

    fn as_postgres(program: &str) -> std::process::Command {
        let is_root = std::process::Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        let path = Self::bin_dir().join(program);
        if is_root {
            let mut cmd = std::process::Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(&path);
            cmd
        } else {
            std::process::Command::new(path)
        }
    }

    fn run(mut cmd: std::process::Command, what: &str) {
        let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(
            out.status.success(),
            "{what} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn create(parent: &std::path::Path) -> Self {
        let dir = parent.join("pg");
        std::fs::create_dir_all(&dir).unwrap();
        let _ = std::process::Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(parent)
            .status();
        let mut initdb = Self::as_postgres("initdb");
        initdb
            .arg("-D")
            .arg(dir.join("data"))
            .args(["-A", "trust", "-U", "postgres", "--no-sync"]);
        Self::run(initdb, "initdb");
        let pg = Self {
            dir,
            port: free_port(),
        };
        pg.start();
        pg
    }

    fn start(&self) {
        let mut ctl = Self::as_postgres("pg_ctl");
        ctl.arg("-D")
            .arg(self.dir.join("data"))
            .arg("-l")
            .arg(self.dir.join("server.log"))
            .arg("-o")
            .arg(format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
                self.port,
                self.dir.display()
            ))
            .args(["-w", "start"]);
        Self::run(ctl, "pg_ctl start");
    }

    fn stop(&self, mode: &str) {
        let mut ctl = Self::as_postgres("pg_ctl");
        ctl.arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", mode, "-w", "stop"]);
        Self::run(ctl, "pg_ctl stop");
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let mut ctl = Self::as_postgres("pg_ctl");
        ctl.arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "-w", "stop"]);
        let _ = ctl.output();
    }
}

async fn enqueue_with_retry(api: &ApiProcess, task: Value) -> String {
    wait_for("the task accepted", Duration::from_secs(60), || {
        let task = task.clone();
        async move {
            let response = api
                .client()
                .post(format!("{}/api/v1/tasks", api.base()))
                .json(&task)
                .send()
                .await
                .ok()?;
            if !response.status().is_success() {
                return None;
            }
            let body: Value = response.json().await.ok()?;
            body["task"]["id"].as_str().map(str::to_string)
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_under_long_polling_agents_loses_and_doubles_no_task() {
    let dir = TempDir::new("phoenix-e2e-pg");
    let pg = PrivatePostgres::create(dir.path());
    let api = ApiProcess::start(&pg.url(), &[("PHOENIX_AGENT_HEARTBEAT_INTERVAL", "500ms")]).await;
    let agents: Vec<AgentProcess> = (1..=2)
        .map(|i| {
            AgentProcess::start(AgentOptions::new(
                &api.base(),
                &format!("pg-agent-{i}"),
                &dir.path().join(format!("agent-{i}")),
            ))
        })
        .collect();
    let mut ids = Vec::new();
    for round in 0..6 {
        ids.push(enqueue(&api, json!({"type": "health", "payload": {"round": round}})).await);
    }
    // Restart while the agents hold long-polls on the API.
    pg.stop("fast");
    tokio::time::sleep(Duration::from_secs(2)).await;
    pg.start();
    for round in 6..12 {
        ids.push(
            enqueue_with_retry(&api, json!({"type": "health", "payload": {"round": round}})).await,
        );
    }
    for id in &ids {
        let t = wait_for("the task completed", Duration::from_secs(60), || async {
            task(&api, id).await.filter(|t| t["status"] == "completed")
        })
        .await;
        assert_eq!(t["attempts"], 1, "claimed twice: {t}");
    }
    let refs: Vec<&AgentProcess> = agents.iter().collect();
    assert_no_task_ran_twice(&refs);
    let executed: BTreeSet<String> = refs.iter().flat_map(|a| a.executed_task_ids()).collect();
    let queued: BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(executed, queued);
    drop(agents);
    drop(api);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tasks_fail_with_a_reason_and_the_running_pipeline_stays() {
    let dir = TempDir::new("phoenix-e2e-bad");
    let (api, db) = api_on_sqlite(dir.path(), &[]).await;
    let agent = AgentProcess::start(
        AgentOptions::new(&api.base(), "bad-agent", &dir.path().join("agent"))
            .pipeline("pipelines: {main: {}}\n"),
    );
    let experiment = start_experiment(&api, &["bad-agent"], 600).await;
    let candidate_processors = || async {
        let fleet = get(&api, format!("{}/api/v1/fleet/status", api.base())).await?;
        let agent = fleet["agents"].as_array()?.first()?.clone();
        agent["running_pipelines"]
            .as_array()?
            .iter()
            .find(|p| p["variant"] == "candidate")
            .map(|p| p["processors"].clone())
    };
    wait_for(
        "the candidate running",
        Duration::from_secs(30),
        candidate_processors,
    )
    .await;

    let bad_deploy = enqueue(
        &api,
        json!({"type": "deployment", "host_id": "bad-agent", "payload": {
            "experiment_id": experiment, "baseline_pipeline": "baseline",
            "candidate_pipeline": "processors: [{type: topk, k: 0}]"}}),
    )
    .await;
    let bad_loadsim = enqueue(
        &api,
        json!({"type": "loadsim", "host_id": "bad-agent", "payload": {"profile": "mainframe"}}),
    )
    .await;
    let health = enqueue(&api, json!({"type": "health", "host_id": "bad-agent"})).await;
    let finished = |id: String| {
        let api = &api;
        async move {
            wait_for("the task finished", Duration::from_secs(30), || async {
                task(api, &id)
                    .await
                    .filter(|t| t["status"] == "completed" || t["status"] == "failed")
            })
            .await
        }
    };
    let t = finished(bad_deploy).await;
    assert_eq!(t["status"], "failed", "{t}");
    assert!(t["error"].as_str().unwrap().contains("topk.k"), "{t}");
    let t = finished(bad_loadsim).await;
    assert_eq!(t["status"], "failed", "{t}");
    assert!(
        t["error"]
            .as_str()
            .unwrap()
            .contains("invalid loadsim payload"),
        "{t}"
    );
    let t = finished(health).await;
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(t["result"]["status"], "ok", "{t}");
    // The experiment's candidate still runs as deployed.
    let processors = wait_for(
        "the fleet view",
        Duration::from_secs(10),
        candidate_processors,
    )
    .await;
    assert_eq!(processors, json!(["adaptive"]));
    assert!(agent.log_text().contains("task failed"));
    // The agent's warnings reach the API's log store.
    wait_for(
        "the failures shipped to the API",
        Duration::from_secs(30),
        || async {
            let messages = phoenix_e2e::stored_log_messages(&db, "bad-agent").await;
            (messages.iter().filter(|m| *m == "task failed").count() >= 2).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_mode_promotion_and_rollback_change_what_runs_on_the_host() {
    let dir = TempDir::new("phoenix-e2e-split");
    let (api, _db) = api_on_sqlite(dir.path(), &[]).await;
    let _agent = AgentProcess::start(
        AgentOptions::new(&api.base(), "split-agent", &dir.path().join("agent"))
            .pipeline("pipelines: {main: {}}\n")
            .env("PHOENIX_AGENT_LABELS", "{cluster=eu-1}"),
    );
    let running = || async {
        let fleet = get(&api, format!("{}/api/v1/fleet/status", api.base())).await?;
        let agent = fleet["agents"].as_array()?.first()?.clone();
        let names: Vec<String> = agent["running_pipelines"]
            .as_array()?
            .iter()
            .filter(|p| p.get("live").is_some())
            .map(|p| {
                format!(
                    "{}{}",
                    p["name"].as_str().unwrap_or(""),
                    if p["live"] == true { "*" } else { "" }
                )
            })
            .collect();
        Some((names, agent["labels"].clone()))
    };
    let exp = post(
        &api,
        format!("{}/api/v1/experiments", api.base()),
        json!({"name": "split", "baseline_pipeline": "baseline", "candidate_pipeline": "topk",
               "target_hosts": ["split-agent"], "mode": "split", "candidate_share_percent": 50,
               "duration_seconds": 600}),
    )
    .await;
    let id = exp["id"].as_str().unwrap().to_string();
    post(
        &api,
        format!("{}/api/v1/experiments/{id}/start", api.base()),
        json!({}),
    )
    .await;
    // Split mode: the host runs the one variant the API assigned it, nothing else.
    let labels = wait_for("one variant running", Duration::from_secs(30), || async {
        let (names, labels) = running().await?;
        (names == ["candidate*"] || names == ["baseline*"]).then_some(labels)
    })
    .await;
    assert_eq!(labels, json!({"cluster": "eu-1"}));

    let promote = enqueue(
        &api,
        json!({"type": "experiment", "host_id": "split-agent",
               "payload": {"action": "promote", "experiment_id": id}}),
    )
    .await;
    wait_for(
        "the candidate promoted",
        Duration::from_secs(30),
        || async {
            let t = task(&api, &promote).await?;
            let (names, _) = running().await?;
            (t["status"] == "completed" && names == ["live*"]).then_some(())
        },
    )
    .await;
    let start = tasks(&api)
        .await
        .into_iter()
        .find(|t| t["payload"]["action"] == "start")
        .unwrap();
    assert_eq!(start["result"]["outcome"], "promoted", "{start}");

    post(
        &api,
        format!("{}/api/v1/experiments/{id}/rollback", api.base()),
        json!({}),
    )
    .await;
    wait_for(
        "the promotion rolled back",
        Duration::from_secs(30),
        || async {
            let (names, _) = running().await?;
            (names == ["main*"]).then_some(())
        },
    )
    .await;
    let rollback = tasks(&api)
        .await
        .into_iter()
        .find(|t| t["payload"]["action"] == "rollback")
        .unwrap();
    assert_eq!(rollback["status"], "completed", "{rollback}");
    assert_eq!(
        rollback["result"]["outcome"], "promotion_rolled_back",
        "{rollback}"
    );
}
