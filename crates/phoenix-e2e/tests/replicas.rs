//! Two `phoenix-api` processes on one PostgreSQL database: a task enqueued through one is
//! delivered to an agent long-polling the other, woken by `LISTEN/NOTIFY` (without it the
//! poll would sit until its wait ran out).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use phoenix_e2e::{ApiProcess, PgDatabase, ENROLL_TOKEN};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_enqueued_on_one_replica_reaches_a_long_poll_on_the_other() {
    let db = PgDatabase::create().await;
    let a = ApiProcess::start(&db.url, &[]).await;
    let b = ApiProcess::start(&db.url, &[]).await;
    let client = reqwest::Client::new();

    let enrolled: Value = client
        .post(format!("{}/api/v1/agent/enroll", b.base()))
        .json(&json!({ "host_id": "replica-agent", "enrollment_token": ENROLL_TOKEN }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let secret = enrolled["agent_secret"].as_str().unwrap().to_string();

    for round in 0..3 {
        let poll = {
            let client = client.clone();
            let url = format!("{}/api/v1/agent/tasks?wait=20s", b.base());
            let secret = secret.clone();
            tokio::spawn(async move {
                let res = client
                    .get(url)
                    .header("x-agent-host-id", "replica-agent")
                    .bearer_auth(secret)
                    .send()
                    .await
                    .unwrap();
                (Instant::now(), res.json::<Value>().await.unwrap())
            })
        };
        // Give the poll time to park on replica B (the test is correct either way: a poll
        // that arrives after the enqueue claims at once).
        tokio::time::sleep(Duration::from_millis(300)).await;
        let res = a
            .client()
            .post(format!("{}/api/v1/tasks", a.base()))
            .json(&json!({ "type": "health", "host_id": "replica-agent", "payload": { "round": round } }))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
        let enqueued_at = Instant::now();
        let queued: Value = res.json().await.unwrap();

        let (delivered_at, body) = tokio::time::timeout(Duration::from_secs(25), poll)
            .await
            .expect("long-poll on replica B never answered")
            .unwrap();
        let tasks = body["tasks"].as_array().unwrap();
        assert_eq!(tasks.len(), 1, "round {round}: {body}");
        assert_eq!(tasks[0]["id"], queued["task"]["id"]);
        let latency = delivered_at.saturating_duration_since(enqueued_at);
        println!("round {round}: enqueued on A, delivered on B after {latency:?}");
        // Without a cross-replica wake-up the poll would answer only at the end of its 20 s.
        assert!(
            latency < Duration::from_secs(5),
            "delivery took {latency:?}"
        );
    }

    drop(a);
    drop(b);
    db.drop_now().await;
}
