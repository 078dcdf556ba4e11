//! The client against a real `phoenix-api` process on SQLite: the endpoints the CLI does not
//! exercise (patch, tasks, readiness, OpenAPI) and the error mapping.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use phoenix_client::{
    Client, ClientError, ExperimentListQuery, ExperimentPatch, NewExperiment, TaskListQuery,
};
use phoenix_e2e::{api_on_sqlite, ADMIN_PASSWORD, ADMIN_USER};

fn new_experiment(name: &str) -> NewExperiment {
    serde_json::from_value(serde_json::json!({
        "name": name,
        "baseline_pipeline": "baseline",
        "candidate_pipeline": "adaptive",
        "target_hosts": ["h1"],
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_calls_round_trip_through_the_real_api() {
    let dir = tempfile::tempdir().unwrap();
    let (api, _db) = api_on_sqlite(dir.path(), &[]).await;
    let c = Client::new(&api.base(), None, Duration::from_secs(10)).unwrap();

    assert_eq!(c.health().await.unwrap().status, "ok");
    // Not logged in: the API refuses, and there is no refresh token to try.
    match c.create_experiment(&new_experiment("anonymous")).await {
        Err(ClientError::Api { status: 401, .. }) => {}
        other => panic!("expected 401, got {other:?}"),
    }
    let login = c.login(ADMIN_USER, ADMIN_PASSWORD).await.unwrap();
    assert_eq!(login.user.role, "admin");
    assert_eq!(
        c.tokens().refresh.as_deref(),
        Some(login.refresh_token.as_str())
    );
    let me = c.me().await.unwrap();
    assert_eq!(
        (me.username.as_str(), me.authenticated_by.as_str()),
        (ADMIN_USER, "session")
    );
    assert_eq!(c.ready().await.unwrap().store, "sqlite");
    let doc = c.openapi().await.unwrap();
    assert!(doc["paths"]["/api/v1/experiments"].is_object());

    let exp = c.create_experiment(&new_experiment("typed")).await.unwrap();
    let id = exp.id.to_string();
    let patched = c
        .patch_experiment(
            &id,
            &ExperimentPatch {
                description: Some("patched".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(patched.description, "patched");

    let started = c.start_experiment(&id).await.unwrap();
    assert!(!started.task_ids.is_empty());
    let tasks = c
        .list_tasks(&TaskListQuery {
            experiment_id: Some(exp.id),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(tasks.total as usize, started.task_ids.len());
    let task = c.get_task(&started.task_ids[0].to_string()).await.unwrap();
    assert_eq!(task.experiment_id, Some(exp.id));

    let page = c
        .list_experiments(&ExperimentListQuery::default())
        .await
        .unwrap();
    assert_eq!(page.total, 1);
    let events = c.all_experiment_events(&id, 0).await.unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["created", "updated", "phase_changed"]);
    let later = c.experiment_events(&id, 1, Some(10)).await.unwrap();
    assert_eq!(later.len(), 2);

    // The API's refusals keep status, code, message and details.
    match c.delete_experiment(&id).await {
        Err(ClientError::Api { status, code, .. }) => {
            assert_eq!(status, 409);
            assert_eq!(code, "phase_conflict");
        }
        other => panic!("unexpected {other:?}"),
    }
    match c.get_experiment("not-a-uuid").await {
        Err(e @ ClientError::Api { .. }) => assert_eq!(e.status(), Some(400)),
        other => panic!("unexpected {other:?}"),
    }
    let mut bad = new_experiment("");
    bad.duration_seconds = 0;
    match c.create_experiment(&bad).await {
        Err(ClientError::Api {
            status,
            code,
            details,
            ..
        }) => {
            assert_eq!(status, 400);
            assert_eq!(code, "validation_failed");
            assert!(
                details["fields"].as_array().unwrap().len() >= 2,
                "{details}"
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    c.stop_experiment(&id, Some("done")).await.unwrap();
    c.delete_experiment(&id).await.unwrap();
    assert!(c.get_experiment(&id).await.unwrap_err().is_not_found());
}
