//! The README's first command, minus the build: `phoenix-api --seed-demo` on SQLite serves a
//! sample experiment that `curl` can start, stop, list and read the events of.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use phoenix_e2e::ApiProcess;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_demo_experiment_can_be_started_stopped_and_listed() {
    let dir = std::env::temp_dir().join(format!("phoenix-e2e-demo-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}", dir.join("phoenix.db").display());
    let api = ApiProcess::start(&url, &[("PHOENIX_SEED_DEMO", "true")]).await;
    let c = api.client();
    let list: Value = c
        .get(format!("{}/api/v1/experiments", api.base()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["total"], 1, "{list}");
    let id = list["items"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(list["items"][0]["phase"], "pending");

    let started = c
        .post(format!("{}/api/v1/experiments/{id}/start", api.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), 200);
    let stopped = c
        .post(format!("{}/api/v1/experiments/{id}/stop", api.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(stopped.status(), 200);
    let events: Value = c
        .get(format!("{}/api/v1/experiments/{id}/events", api.base()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let phases: Vec<_> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["to_phase"].clone())
        .collect();
    assert_eq!(phases, ["pending", "initializing", "stopped"]);

    // Restarting on the same file does not seed a second experiment.
    drop(api);
    let api = ApiProcess::start(&url, &[("PHOENIX_SEED_DEMO", "true")]).await;
    let c = api.client();
    let list: Value = c
        .get(format!("{}/api/v1/experiments", api.base()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["total"], 1);
    drop(api);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `scripts/demo --once` with the debug binaries, a small load (the `app` profile: debug
/// builds are too slow for the k8s one on a busy CI machine) and a short experiment: the
/// API, three agents and the experiment start, the agents report both variants, every
/// agent finishes the experiment, and the API's analysis ends it with `promote`, its reasons
/// and the cost it saves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_script_runs_an_experiment_on_three_agents_and_shows_the_reduction() {
    let data =
        std::env::temp_dir().join(format!("phoenix-e2e-demo-script-{}", uuid::Uuid::new_v4()));
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/demo");
    let output = tokio::process::Command::new(script)
        .arg("--once")
        .env("PHOENIX_BIN_DIR", phoenix_e2e::bin_dir())
        .env("PHOENIX_DEMO_NO_BUILD", "1")
        .env("PHOENIX_DEMO_PORT", phoenix_e2e::free_port().to_string())
        .env("PHOENIX_DEMO_DATA", &data)
        .env("PHOENIX_DEMO_SECONDS", "16")
        .env("PHOENIX_DEMO_ANALYSIS_INTERVAL", "2")
        // The `app` profile has fewer series to fold than `k8s` (about 71 % come off).
        .env("PHOENIX_DEMO_MIN_REDUCTION", "50")
        .env("PHOENIX_DEMO_KPI_INTERVAL", "1s")
        .env("PHOENIX_DEMO_REFRESH", "1")
        .env("PHOENIX_DEMO_PROFILE", "app")
        .env("PHOENIX_DEMO_SCALE", "0.2")
        .env("PHOENIX_DEMO_TICK", "1s")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "demo failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("experiment over on every agent"),
        "{stdout}"
    );
    for host in ["demo-agent-1", "demo-agent-2", "demo-agent-3"] {
        assert!(
            stdout.contains(&format!("{host}: completed")),
            "{host} did not finish:\n{stdout}"
        );
    }
    let summary = stdout
        .lines()
        .find(|l| l.contains("adaptive vs baseline on 3 agents"))
        .unwrap_or_else(|| panic!("no reduction summary:\n{stdout}"));
    let reduction: f64 = summary
        .split("reduction ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|r| r.parse().ok())
        .unwrap();
    assert!(reduction > 20.0, "{summary}");
    // The run ends in a decision with its reasons and the money it saves.
    assert!(
        stdout.contains("==> experiment completed: decision promote (candidate promoted)"),
        "{stdout}"
    );
    assert!(stdout.contains("protected_coverage    pass"), "{stdout}");
    assert!(stdout.contains("a month, "), "no cost line:\n{stdout}");
    // Then the agents' label statistics, turned into recommendations to try next.
    let recs = stdout
        .split("==> top recommendations")
        .nth(1)
        .unwrap_or_else(|| panic!("no recommendations:\n{stdout}"));
    assert!(recs.contains("aggregate without"), "{recs}");
    assert!(recs.contains("from 3 agents"), "{recs}");
    let _ = std::fs::remove_dir_all(&data);
}
