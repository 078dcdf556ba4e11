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
    let c = reqwest::Client::new();
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
