//! The conformance suite: every behaviour the [`Store`] trait promises, written once as
//! generic async test bodies over a [`SharedStore`] and instantiated for each backend by
//! [`conformance_suite!`](crate::conformance_suite) (the idea of Quickwit's metastore test
//! suite). Tests pass a fixed `now` instead of reading the clock, and never sleep.
//!
//! Enabled by the `testsuite` feature so other crates (an API test double, a future backend)
//! can run the same assertions.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use serde_json::json;

use phoenix_core::{
    EventKind, Experiment, ExperimentCommand, ExperimentId, ExperimentMode, ExperimentPatch,
    ExperimentPhase, Heartbeat, HostId, KpiBatch, KpiValues, NewExperiment, NewTask, PatchError,
    TaskStatus, TaskType, Variant,
};

use crate::{
    AgentLogEntry, ExperimentQuery, LogLevel, SharedStore, StoreError, TaskQuery, TaskStatusUpdate,
};

/// A store under test plus whatever must live as long as it (a temporary directory, a
/// database dropped afterwards).
pub struct Fixture {
    pub store: SharedStore,
    _guard: Box<dyn Send + Sync>,
}

impl Fixture {
    pub fn new(store: SharedStore, guard: impl Send + Sync + 'static) -> Self {
        Self {
            store,
            _guard: Box::new(guard),
        }
    }
}

impl std::fmt::Debug for Fixture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fixture")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

/// Instantiate every conformance test for one backend, as
/// `#[tokio::test(flavor = "multi_thread", worker_threads = 4)]` functions in the current
/// module. `$factory` is an async function returning a fresh [`Fixture`] per test.
#[macro_export]
macro_rules! conformance_suite {
    ($factory:expr) => {
        $crate::conformance_suite!(@tests $factory;
            experiment_round_trips_and_unknown_is_not_found,
            phases_for_metrics_keep_finished_experiments_only_until_the_cutoff,
            experiments_list_filters_by_phase_and_pages_with_total,
            transition_writes_one_event_and_its_tasks_atomically,
            refused_transition_writes_nothing_and_names_current_phase,
            excluding_a_target_keeps_the_phase_records_it_and_cancels_only_its_queued_tasks,
            update_applies_patch_rules_and_emits_event_only_on_change,
            delete_refuses_active_experiment_and_keeps_its_tasks,
            events_after_seq_resume_where_the_client_left_off,
            eight_claimers_claim_2000_tasks_exactly_once,
            claims_follow_priority_then_age,
            targeted_tasks_go_only_to_their_host,
            not_before_delays_claims_and_reports_due_hosts,
            task_lifecycle_records_start_result_and_finish,
            expired_lease_returns_task_to_pending,
            last_attempt_expiry_fails_task_with_reason,
            renewed_lease_does_not_expire,
            report_by_another_host_is_refused,
            repeated_terminal_report_is_idempotent,
            batch_reports_are_judged_one_by_one_in_order,
            reports_from_many_hosts_are_judged_like_single_reports,
            batched_enqueues_answer_each_task_and_honour_idempotency_keys,
            idempotency_key_returns_existing_task,
            concurrent_enqueues_with_one_idempotency_key_create_one_task,
            enqueue_for_unknown_experiment_is_not_found,
            list_tasks_filters_and_counts,
            sweep_deletes_only_old_finished_tasks,
            task_counts_cover_every_status,
            agent_enrollment_credentials_heartbeats_and_revocation,
            batched_heartbeats_renew_each_hosts_leases_and_refuse_unknown_or_revoked,
            claim_skips_other_hosts_backlog_and_merges_host_less_tasks_in_order,
            claims_for_many_hosts_hand_each_task_to_one_of_them,
            stopping_an_experiment_cancels_its_unclaimed_tasks,
            tasks_an_agent_does_not_hold_go_back_to_the_queue,
            one_runner_claims_each_analysis_and_a_dead_ones_claim_is_taken_over,
            pipeline_deployments_round_trip_update_and_list_newest_first,
            kpi_replay_is_not_stored_twice,
            latest_reduction_uses_candidates_latest_interval,
            agent_logs_round_trip_newest_first,
            settings_round_trip,
            concurrent_put_if_absent_agree_on_the_first_value,
            sweep_telemetry_deletes_only_old_rows,
            topic_events_are_numbered_per_topic_and_listed_after_a_seq,
            concurrent_appends_to_one_topic_get_distinct_gap_free_numbers,
            topic_event_sweep_keeps_recent_events_and_the_numbering,
            agent_presence_flips_are_reported_once,
            label_stats_keep_each_hosts_latest_and_are_swept_with_kpis,
            latest_kpi_batch_per_host_by_variant_and_experiment,
            // authentication (conformance/auth.rs)
            users_round_trip_and_usernames_are_unique,
            refresh_tokens_rotate_once_and_reuse_revokes_the_family,
            concurrent_refreshes_of_one_token_rotate_it_once,
            api_keys_round_trip_touch_and_revoke,
            enrollment_tokens_count_uses_and_refuse_expired_exhausted_or_revoked,
        );
    };
    (@tests $factory:expr; $($test:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $test() {
                let fixture = ($factory)().await;
                $crate::conformance::$test(fixture.store.clone()).await;
            }
        )*
    };
}

mod auth;
pub use auth::*;

// ---- helpers ----

/// The fixed "now" of every test: whole seconds, so every backend stores it exactly.
pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2030, 1, 1, 0, 0, 0).unwrap()
}

pub fn host(name: &str) -> HostId {
    HostId::parse(name).unwrap()
}

fn lease() -> Duration {
    Duration::seconds(30)
}

pub fn experiment(name: &str, created_at: DateTime<Utc>) -> Experiment {
    let new = NewExperiment {
        name: name.to_string(),
        description: "conformance".to_string(),
        baseline_pipeline: "baseline".to_string(),
        candidate_pipeline: "topk".to_string(),
        target_hosts: vec![host("node-a"), host("node-b")],
        target_selector: [("cluster".to_string(), "eu-1".to_string())].into(),
        mode: ExperimentMode::Shadow,
        candidate_share_percent: None,
        duration_seconds: 600,
        parameters: json!({"k": 10, "nested": {"list": [1, 2, 3]}}),
        owner: Some("alice".to_string()),
        analysis: phoenix_core::AnalysisSpec {
            interval_seconds: 30,
            auto_rollback: false,
            ..Default::default()
        },
    };
    Experiment::create(ExperimentId::new(), new, created_at)
}

fn task(kind: TaskType) -> NewTask {
    NewTask::new(kind, json!({"n": 1}))
}

fn update(status: TaskStatus) -> TaskStatusUpdate {
    TaskStatusUpdate {
        status,
        error: None,
        result: None,
    }
}

async fn created(store: &SharedStore, name: &str, at: DateTime<Utc>) -> Experiment {
    let e = experiment(name, at);
    store.create_experiment(&e).await.unwrap();
    e
}

// ---- experiments ----

pub async fn experiment_round_trips_and_unknown_is_not_found(store: SharedStore) {
    let e = experiment("round trip", t0());
    let event = store.create_experiment(&e).await.unwrap();
    assert_eq!(event.seq, 1);
    assert_eq!(event.kind, EventKind::Created);
    assert_eq!(event.to_phase, Some(ExperimentPhase::Pending));
    assert_eq!(store.get_experiment(e.id).await.unwrap(), e);
    assert_eq!(
        store.list_experiment_events(e.id, 0, 10).await.unwrap(),
        vec![event]
    );
    assert_eq!(
        store.experiment_phases(t0()).await.unwrap(),
        vec![(e.id, ExperimentPhase::Pending)]
    );

    let err = store.get_experiment(ExperimentId::new()).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::NotFound {
                entity: "experiment",
                ..
            }
        ),
        "{err}"
    );
    assert!(store.ping().await.is_ok());
}

pub async fn experiments_list_filters_by_phase_and_pages_with_total(store: SharedStore) {
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            created(&store, &format!("e{i}"), t0() + Duration::seconds(i))
                .await
                .id,
        );
    }
    for id in &ids[..2] {
        store
            .transition_experiment(*id, &ExperimentCommand::Start, &[], t0())
            .await
            .unwrap();
    }
    let q = |phase, limit, offset| ExperimentQuery {
        phase,
        limit,
        offset,
    };

    let started = store
        .list_experiments(&q(Some(ExperimentPhase::Initializing), 10, 0))
        .await;
    let started = started.unwrap();
    assert_eq!(started.total, 2);
    let mut got: Vec<_> = started.items.iter().map(|e| e.id).collect();
    got.sort();
    let mut want = ids[..2].to_vec();
    want.sort();
    assert_eq!(got, want);

    let first = store.list_experiments(&q(None, 2, 0)).await.unwrap();
    assert_eq!(
        (first.total, first.items.len(), first.limit, first.offset),
        (5, 2, 2, 0)
    );
    // newest first
    assert_eq!(first.items[0].id, ids[4]);
    assert_eq!(first.items[1].id, ids[3]);
    let last = store.list_experiments(&q(None, 2, 4)).await.unwrap();
    assert_eq!(last.total, 5);
    assert_eq!(
        last.items.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![ids[0]]
    );
    let none = store
        .list_experiments(&q(Some(ExperimentPhase::Failed), 10, 0))
        .await
        .unwrap();
    assert_eq!((none.total, none.items.len()), (0, 0));
    // limit 0 means the default page size
    let default = store.list_experiments(&q(None, 0, 0)).await.unwrap();
    assert_eq!(default.items.len(), 5);
    assert!(default.limit > 0);
}

pub async fn transition_writes_one_event_and_its_tasks_atomically(store: SharedStore) {
    let e = created(&store, "start me", t0()).await;
    // A task already queued under a key the transition reuses is returned, not duplicated.
    let mut keyed = task(TaskType::Experiment).for_host(host("node-a"));
    keyed.idempotency_key = Some(format!("start-{}-node-a", e.id));
    let existing = store.enqueue_task(&keyed, t0()).await.unwrap().task;

    let now = t0() + Duration::seconds(10);
    let mut for_b = task(TaskType::Experiment).for_host(host("node-b"));
    for_b.experiment_id = Some(e.id);
    let mut keyed_again = keyed.clone();
    keyed_again.experiment_id = Some(e.id);
    let out = store
        .transition_experiment(e.id, &ExperimentCommand::Start, &[keyed_again, for_b], now)
        .await
        .unwrap();
    assert_eq!(out.experiment.phase, ExperimentPhase::Initializing);
    assert_eq!(out.experiment.started_at, Some(now));
    assert_eq!(out.event.seq, 2);
    assert_eq!(out.event.kind, EventKind::PhaseChanged);
    assert_eq!(out.event.from_phase, Some(ExperimentPhase::Pending));
    assert_eq!(out.event.to_phase, Some(ExperimentPhase::Initializing));
    assert_eq!(out.event.message, "experiment started");
    assert_eq!(out.tasks.len(), 2);
    assert_eq!(out.tasks[0].id, existing.id);
    assert_eq!(out.tasks[1].host_id, Some(host("node-b")));
    assert_eq!(out.tasks[1].experiment_id, Some(e.id));
    assert_eq!(out.tasks[1].status, TaskStatus::Pending);

    assert_eq!(store.get_experiment(e.id).await.unwrap(), out.experiment);
    let events = store.list_experiment_events(e.id, 0, 100).await.unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[1], out.event);
    let all = store.list_tasks(&TaskQuery::default()).await.unwrap();
    assert_eq!(all.total, 2);
    assert_eq!(store.get_task(out.tasks[1].id).await.unwrap(), out.tasks[1]);
}

pub async fn excluding_a_target_keeps_the_phase_records_it_and_cancels_only_its_queued_tasks(
    store: SharedStore,
) {
    let e = created(&store, "exclude", t0()).await;
    let starts: Vec<NewTask> = ["node-a", "node-b"]
        .iter()
        .map(|h| {
            let mut t = task(TaskType::Experiment).for_host(host(h));
            t.experiment_id = Some(e.id);
            t
        })
        .collect();
    let started = store
        .transition_experiment(e.id, &ExperimentCommand::Start, &starts, t0())
        .await
        .unwrap();
    let now = t0() + Duration::seconds(5);
    let mut stop_b = task(TaskType::Experiment).for_host(host("node-b"));
    stop_b.experiment_id = Some(e.id);
    let out = store
        .transition_experiment(
            e.id,
            &ExperimentCommand::ExcludeTargets {
                targets: vec![(host("node-b"), "deployment task failed: boom".into())],
            },
            &[stop_b],
            now,
        )
        .await
        .unwrap();
    assert_eq!(out.experiment.phase, ExperimentPhase::Initializing);
    assert_eq!(out.experiment.phase_reason, started.experiment.phase_reason);
    assert_eq!(out.event.kind, EventKind::Updated);
    assert!(
        out.event
            .message
            .contains("node-b (deployment task failed: boom)"),
        "{}",
        out.event.message
    );
    assert_eq!(
        out.experiment.excluded_targets,
        vec![phoenix_core::ExcludedTarget {
            host_id: host("node-b"),
            reason: "deployment task failed: boom".into(),
            at: now,
        }]
    );
    assert!(out.experiment.is_excluded(&host("node-b")));
    assert_eq!(
        out.experiment.active_targets().cloned().collect::<Vec<_>>(),
        vec![host("node-a")]
    );
    // Stored as served.
    assert_eq!(store.get_experiment(e.id).await.unwrap(), out.experiment);
    // node-b's queued start is cancelled; node-a's stays queued; node-b's stop is queued.
    let a = store.get_task(started.tasks[0].id).await.unwrap();
    let b = store.get_task(started.tasks[1].id).await.unwrap();
    assert_eq!(a.status, TaskStatus::Pending);
    assert_eq!(b.status, TaskStatus::Failed);
    assert!(
        b.error.as_deref().unwrap_or("").contains("excluded"),
        "{b:?}"
    );
    assert_eq!(out.tasks.len(), 1);
    assert_eq!(out.tasks[0].status, TaskStatus::Pending);
    // Excluding nobody is refused; so is excluding once the run is over.
    let err = store
        .transition_experiment(
            e.id,
            &ExperimentCommand::ExcludeTargets { targets: vec![] },
            &[],
            now,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Transition(_)), "{err}");
}

pub async fn refused_transition_writes_nothing_and_names_current_phase(store: SharedStore) {
    let e = created(&store, "refuse", t0()).await;
    let tasks = [task(TaskType::Experiment).for_host(host("node-a"))];
    let err = store
        .transition_experiment(e.id, &ExperimentCommand::MarkRunning, &tasks, t0())
        .await
        .unwrap_err();
    match &err {
        StoreError::Transition(t) => {
            assert_eq!(t.current, ExperimentPhase::Pending);
            assert_eq!(t.command, "mark_running");
        }
        other => panic!("expected a transition error, got {other}"),
    }
    assert!(err.to_string().contains("pending"), "{err}");
    assert_eq!(store.get_experiment(e.id).await.unwrap(), e);
    assert_eq!(
        store
            .list_experiment_events(e.id, 0, 100)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        store.list_tasks(&TaskQuery::default()).await.unwrap().total,
        0
    );

    let unknown = store
        .transition_experiment(ExperimentId::new(), &ExperimentCommand::Start, &tasks, t0())
        .await
        .unwrap_err();
    assert!(matches!(unknown, StoreError::NotFound { .. }), "{unknown}");
    assert_eq!(
        store.list_tasks(&TaskQuery::default()).await.unwrap().total,
        0
    );
}

pub async fn update_applies_patch_rules_and_emits_event_only_on_change(store: SharedStore) {
    let e = created(&store, "patch", t0()).await;
    let later = t0() + Duration::seconds(5);
    let patch = ExperimentPatch {
        name: Some("renamed".into()),
        duration_seconds: Some(1200),
        ..Default::default()
    };
    let (updated, event) = store.update_experiment(e.id, patch, later).await.unwrap();
    assert_eq!(updated.name, "renamed");
    assert_eq!(updated.duration_seconds, 1200);
    assert_eq!(updated.updated_at, later);
    let event = event.expect("a change emits an event");
    assert_eq!((event.seq, event.kind), (2, EventKind::Updated));
    assert!(event.message.contains("name") && event.message.contains("duration_seconds"));
    assert_eq!(store.get_experiment(e.id).await.unwrap(), updated);

    let (same, none) = store
        .update_experiment(e.id, ExperimentPatch::default(), later)
        .await
        .unwrap();
    assert_eq!(same, updated);
    assert!(none.is_none());
    assert_eq!(
        store
            .list_experiment_events(e.id, 0, 100)
            .await
            .unwrap()
            .len(),
        2
    );

    let invalid = ExperimentPatch {
        name: Some(" ".into()),
        ..Default::default()
    };
    let err = store
        .update_experiment(e.id, invalid, later)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Patch(PatchError::Invalid(_))),
        "{err}"
    );

    store
        .transition_experiment(e.id, &ExperimentCommand::Start, &[], later)
        .await
        .unwrap();
    let shape = ExperimentPatch {
        duration_seconds: Some(60),
        ..Default::default()
    };
    let err = store
        .update_experiment(e.id, shape, later)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Patch(PatchError::NotPending {
                current: ExperimentPhase::Initializing
            })
        ),
        "{err}"
    );
    assert_eq!(
        store.get_experiment(e.id).await.unwrap().duration_seconds,
        1200
    );
    // name and description can still change
    let rename = ExperimentPatch {
        description: Some("still editable".into()),
        ..Default::default()
    };
    let (after, event) = store.update_experiment(e.id, rename, later).await.unwrap();
    assert_eq!(after.description, "still editable");
    assert_eq!(event.unwrap().seq, 4);
    let missing = store
        .update_experiment(ExperimentId::new(), ExperimentPatch::default(), later)
        .await
        .unwrap_err();
    assert!(matches!(missing, StoreError::NotFound { .. }), "{missing}");
}

pub async fn delete_refuses_active_experiment_and_keeps_its_tasks(store: SharedStore) {
    let e = created(&store, "delete", t0()).await;
    let mut t = task(TaskType::Experiment).for_host(host("node-a"));
    t.experiment_id = Some(e.id);
    let out = store
        .transition_experiment(e.id, &ExperimentCommand::Start, &[t], t0())
        .await
        .unwrap();
    let err = store.delete_experiment(e.id).await.unwrap_err();
    match &err {
        StoreError::ExperimentActive { phase, .. } => {
            assert_eq!(*phase, ExperimentPhase::Initializing)
        }
        other => panic!("expected ExperimentActive, got {other}"),
    }
    assert!(store.get_experiment(e.id).await.is_ok());

    let stop = ExperimentCommand::Stop {
        reason: Some("done".into()),
    };
    store
        .transition_experiment(e.id, &stop, &[], t0())
        .await
        .unwrap();
    store.delete_experiment(e.id).await.unwrap();
    assert!(matches!(
        store.get_experiment(e.id).await.unwrap_err(),
        StoreError::NotFound { .. }
    ));
    assert!(matches!(
        store.list_experiment_events(e.id, 0, 10).await.unwrap_err(),
        StoreError::NotFound { .. }
    ));
    let kept = store.get_task(out.tasks[0].id).await.unwrap();
    assert_eq!(kept.experiment_id, None);
    assert!(matches!(
        store.delete_experiment(e.id).await.unwrap_err(),
        StoreError::NotFound { .. }
    ));
}

/// `/metrics` reports every live experiment, and a finished one only while it ended at or
/// after the cutoff (so the phase gauge does not grow with every experiment ever run).
pub async fn phases_for_metrics_keep_finished_experiments_only_until_the_cutoff(
    store: SharedStore,
) {
    let live = created(&store, "live", t0()).await;
    let finished = created(&store, "finished", t0()).await;
    let ended_at = t0() + Duration::minutes(5);
    let stop = ExperimentCommand::Stop {
        reason: Some("done".into()),
    };
    store
        .transition_experiment(finished.id, &stop, &[], ended_at)
        .await
        .unwrap();
    let mut both = vec![
        (live.id, ExperimentPhase::Pending),
        (finished.id, ExperimentPhase::Stopped),
    ];
    both.sort_by_key(|(id, _)| id.to_string());
    for cutoff in [t0(), ended_at] {
        assert_eq!(store.experiment_phases(cutoff).await.unwrap(), both);
    }
    assert_eq!(
        store
            .experiment_phases(ended_at + Duration::seconds(1))
            .await
            .unwrap(),
        vec![(live.id, ExperimentPhase::Pending)]
    );
}

pub async fn events_after_seq_resume_where_the_client_left_off(store: SharedStore) {
    let e = created(&store, "events", t0()).await;
    for i in 0..2 {
        let patch = ExperimentPatch {
            name: Some(format!("name {i}")),
            ..Default::default()
        };
        store.update_experiment(e.id, patch, t0()).await.unwrap();
    }
    store
        .transition_experiment(e.id, &ExperimentCommand::Start, &[], t0())
        .await
        .unwrap();
    let all = store.list_experiment_events(e.id, 0, 100).await.unwrap();
    assert_eq!(
        all.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    let kinds: Vec<_> = all.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        vec![
            EventKind::Created,
            EventKind::Updated,
            EventKind::Updated,
            EventKind::PhaseChanged
        ]
    );
    let rest = store.list_experiment_events(e.id, 2, 100).await.unwrap();
    assert_eq!(rest.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![3, 4]);
    let one = store.list_experiment_events(e.id, 2, 1).await.unwrap();
    assert_eq!(one.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![3]);
    assert!(store
        .list_experiment_events(e.id, 4, 100)
        .await
        .unwrap()
        .is_empty());
}

// ---- task queue ----

pub async fn eight_claimers_claim_2000_tasks_exactly_once(store: SharedStore) {
    const TASKS: usize = 2000;
    const CLAIMERS: usize = 8;
    const BATCH: u32 = 25;
    let mut enqueuers = Vec::new();
    for chunk in 0..8 {
        let store = Arc::clone(&store);
        enqueuers.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..TASKS / 8 {
                let mut t = task(TaskType::Health);
                t.priority = ((chunk * 31 + i) % 5) as i32;
                ids.push(store.enqueue_task(&t, t0()).await.unwrap().task.id);
            }
            ids
        }));
    }
    let mut enqueued = HashSet::new();
    for e in enqueuers {
        enqueued.extend(e.await.unwrap());
    }
    assert_eq!(enqueued.len(), TASKS);

    let mut claimers = Vec::new();
    for c in 0..CLAIMERS {
        let store = Arc::clone(&store);
        claimers.push(tokio::spawn(async move {
            let me = host(&format!("claimer-{c}"));
            let mut claimed = Vec::new();
            loop {
                let batch = store.claim_tasks(&me, BATCH, lease(), t0()).await.unwrap();
                if batch.is_empty() {
                    return claimed;
                }
                for t in batch {
                    assert_eq!(t.status, TaskStatus::Assigned);
                    assert_eq!(t.assigned_to.as_ref(), Some(&me));
                    assert_eq!(t.attempts, 1);
                    store
                        .update_task_status(
                            t.id,
                            &me,
                            &update(TaskStatus::Completed),
                            lease(),
                            t0(),
                        )
                        .await
                        .unwrap();
                    claimed.push(t.id);
                }
            }
        }));
    }
    let mut seen = HashSet::new();
    let mut total = 0;
    for c in claimers {
        for id in c.await.unwrap() {
            total += 1;
            assert!(seen.insert(id), "task {id} was claimed twice");
        }
    }
    assert_eq!(total, TASKS);
    assert_eq!(seen, enqueued);
    let counts = store.task_counts().await.unwrap();
    assert_eq!(counts[&TaskStatus::Completed], TASKS as u64);
    assert_eq!(counts[&TaskStatus::Pending], 0);
}

pub async fn claims_follow_priority_then_age(store: SharedStore) {
    let mut ids = BTreeMap::new();
    for (name, priority, age_s) in [
        ("low-old", 0, 0),
        ("high-new", 10, 3),
        ("high-old", 10, 1),
        ("mid", 5, 2),
    ] {
        let mut t = task(TaskType::Metrics);
        t.priority = priority;
        let id = store
            .enqueue_task(&t, t0() + Duration::seconds(age_s))
            .await
            .unwrap()
            .task
            .id;
        ids.insert(id, name);
    }
    let now = t0() + Duration::seconds(10);
    let me = host("node-a");
    let first = store.claim_tasks(&me, 3, lease(), now).await.unwrap();
    let names: Vec<_> = first.iter().map(|t| ids[&t.id]).collect();
    assert_eq!(names, vec!["high-old", "high-new", "mid"]);
    let rest = store.claim_tasks(&me, 3, lease(), now).await.unwrap();
    assert_eq!(
        rest.iter().map(|t| ids[&t.id]).collect::<Vec<_>>(),
        vec!["low-old"]
    );
    assert!(store
        .claim_tasks(&me, 3, lease(), now)
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .claim_tasks(&me, 0, lease(), now)
        .await
        .unwrap()
        .is_empty());
    let claimed = &first[0];
    assert_eq!(claimed.assigned_at, Some(now));
    assert_eq!(claimed.lease_expires_at, Some(now + lease()));
}

pub async fn targeted_tasks_go_only_to_their_host(store: SharedStore) {
    let a = host("node-a");
    let b = host("node-b");
    let targeted = task(TaskType::Deployment).for_host(a.clone());
    let for_a = store.enqueue_task(&targeted, t0()).await.unwrap().task;
    let anyone = store
        .enqueue_task(&task(TaskType::Health), t0())
        .await
        .unwrap()
        .task;

    let got_b = store.claim_tasks(&b, 10, lease(), t0()).await.unwrap();
    assert_eq!(
        got_b.iter().map(|t| t.id).collect::<Vec<_>>(),
        vec![anyone.id]
    );
    assert!(store
        .claim_tasks(&b, 10, lease(), t0())
        .await
        .unwrap()
        .is_empty());
    let got_a = store.claim_tasks(&a, 10, lease(), t0()).await.unwrap();
    assert_eq!(
        got_a.iter().map(|t| t.id).collect::<Vec<_>>(),
        vec![for_a.id]
    );
    assert_eq!(got_a[0].host_id, Some(a.clone()));
    assert_eq!(got_a[0].assigned_to, Some(a));
}

pub async fn not_before_delays_claims_and_reports_due_hosts(store: SharedStore) {
    let a = host("node-a");
    let mut later = task(TaskType::Loadsim).for_host(a.clone());
    later.not_before = Some(t0() + Duration::seconds(60));
    let mut later_anyone = task(TaskType::Loadsim);
    later_anyone.not_before = Some(t0() + Duration::seconds(30));
    let delayed = store.enqueue_task(&later, t0()).await.unwrap().task;
    store.enqueue_task(&later_anyone, t0()).await.unwrap();

    assert!(store
        .claim_tasks(&a, 10, lease(), t0())
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .hosts_with_tasks_due(t0(), t0() + Duration::seconds(10))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        store
            .hosts_with_tasks_due(t0(), t0() + Duration::seconds(30))
            .await
            .unwrap(),
        vec![None]
    );
    assert_eq!(
        store
            .hosts_with_tasks_due(t0(), t0() + Duration::seconds(60))
            .await
            .unwrap(),
        vec![None, Some(a.clone())]
    );
    assert_eq!(
        store
            .hosts_with_tasks_due(t0() + Duration::seconds(30), t0() + Duration::seconds(90))
            .await
            .unwrap(),
        vec![Some(a.clone())]
    );

    let at_59 = store
        .claim_tasks(&a, 10, lease(), t0() + Duration::seconds(59))
        .await
        .unwrap();
    assert_eq!(at_59.len(), 1);
    assert_ne!(at_59[0].id, delayed.id);
    let at_60 = store
        .claim_tasks(&a, 10, lease(), t0() + Duration::seconds(60))
        .await
        .unwrap();
    assert_eq!(
        at_60.iter().map(|t| t.id).collect::<Vec<_>>(),
        vec![delayed.id]
    );
}

pub async fn task_lifecycle_records_start_result_and_finish(store: SharedStore) {
    let a = host("node-a");
    let queued = store
        .enqueue_task(&task(TaskType::Deployment), t0())
        .await
        .unwrap();
    assert!(queued.created);
    let t = queued.task;
    assert_eq!(
        (t.status, t.attempts, t.max_attempts),
        (TaskStatus::Pending, 0, 3)
    );
    assert_eq!(t.payload, json!({"n": 1}));
    store.claim_tasks(&a, 1, lease(), t0()).await.unwrap();

    let t1 = t0() + Duration::seconds(5);
    let run = update(TaskStatus::Running);
    let running = store
        .update_task_status(t.id, &a, &run, lease(), t1)
        .await
        .unwrap();
    assert_eq!(running.status, TaskStatus::Running);
    assert_eq!(running.started_at, Some(t1));
    assert_eq!(running.lease_expires_at, Some(t1 + lease()));

    let t2 = t0() + Duration::seconds(8);
    let again = store
        .update_task_status(t.id, &a, &run, lease(), t2)
        .await
        .unwrap();
    assert_eq!(
        again.started_at,
        Some(t1),
        "started_at records the first start"
    );
    assert_eq!(again.lease_expires_at, Some(t2 + lease()));

    let t3 = t0() + Duration::seconds(9);
    let done = TaskStatusUpdate {
        status: TaskStatus::Completed,
        error: None,
        result: Some(json!({"applied": true, "series": 1234})),
    };
    let finished = store
        .update_task_status(t.id, &a, &done, lease(), t3)
        .await
        .unwrap();
    assert_eq!(finished.status, TaskStatus::Completed);
    assert_eq!(finished.finished_at, Some(t3));
    assert_eq!(finished.lease_expires_at, None);
    assert_eq!(finished.result, done.result);
    assert_eq!(finished.assigned_to, Some(a.clone()));
    assert_eq!(store.get_task(t.id).await.unwrap(), finished);

    // A failure carries its error.
    store
        .enqueue_task(&task(TaskType::Deployment), t0())
        .await
        .unwrap();
    let second = store
        .claim_tasks(&a, 1, lease(), t3)
        .await
        .unwrap()
        .remove(0);
    let failed = TaskStatusUpdate {
        status: TaskStatus::Failed,
        error: Some("config rejected".into()),
        result: None,
    };
    let failed = store
        .update_task_status(second.id, &a, &failed, lease(), t3)
        .await
        .unwrap();
    assert_eq!(failed.status, TaskStatus::Failed);
    assert_eq!(failed.error.as_deref(), Some("config rejected"));
    assert!(matches!(
        store
            .get_task(phoenix_core::TaskId::new())
            .await
            .unwrap_err(),
        StoreError::NotFound { .. }
    ));
}

pub async fn expired_lease_returns_task_to_pending(store: SharedStore) {
    let a = host("node-a");
    let b = host("node-b");
    let t = store
        .enqueue_task(&task(TaskType::Health), t0())
        .await
        .unwrap()
        .task;
    store.claim_tasks(&a, 1, lease(), t0()).await.unwrap();

    let before = t0() + lease() - Duration::seconds(1);
    assert!(store.expire_leases(before).await.unwrap().is_empty());
    let at = t0() + lease();
    let expired = store.expire_leases(at).await.unwrap();
    assert_eq!(expired.len(), 1);
    let back = &expired[0];
    assert_eq!(back.id, t.id);
    assert_eq!(back.status, TaskStatus::Pending);
    assert_eq!(back.assigned_to, None);
    assert_eq!(back.lease_expires_at, None);
    assert_eq!(
        back.error.as_deref(),
        Some("lease expired on host node-a (attempt 1 of 3)")
    );
    assert_eq!(store.get_task(t.id).await.unwrap(), *back);
    assert!(store.expire_leases(at).await.unwrap().is_empty());

    // Anyone may claim it again; the old holder's report is refused.
    let again = store.claim_tasks(&b, 1, lease(), at).await.unwrap();
    assert_eq!(again[0].id, t.id);
    assert_eq!(again[0].attempts, 2);
    let err = store
        .update_task_status(t.id, &a, &update(TaskStatus::Completed), lease(), at)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::TaskNotHeld { .. }), "{err}");
}

pub async fn last_attempt_expiry_fails_task_with_reason(store: SharedStore) {
    let a = host("node-a");
    let mut t = task(TaskType::Health);
    t.max_attempts = 2;
    let id = store.enqueue_task(&t, t0()).await.unwrap().task.id;
    let mut now = t0();
    for attempt in 1..=2 {
        let claimed = store.claim_tasks(&a, 1, lease(), now).await.unwrap();
        assert_eq!(claimed.len(), 1, "attempt {attempt}");
        assert_eq!(claimed[0].attempts, attempt);
        now += lease();
        let expired = store.expire_leases(now).await.unwrap();
        assert_eq!(expired.len(), 1);
    }
    let task = store.get_task(id).await.unwrap();
    assert_eq!(task.status, TaskStatus::Failed);
    assert_eq!(
        task.error.as_deref(),
        Some("lease expired on host node-a after 2 of 2 attempts")
    );
    assert_eq!(task.finished_at, Some(now));
    assert_eq!(task.lease_expires_at, None);
    assert!(store
        .claim_tasks(&a, 1, lease(), now)
        .await
        .unwrap()
        .is_empty());
}

pub async fn renewed_lease_does_not_expire(store: SharedStore) {
    let a = host("node-a");
    let b = host("node-b");
    for _ in 0..2 {
        store
            .enqueue_task(&task(TaskType::Health).for_host(a.clone()), t0())
            .await
            .unwrap();
    }
    let other = store
        .enqueue_task(&task(TaskType::Health).for_host(b.clone()), t0())
        .await;
    let other = other.unwrap().task;
    store.claim_tasks(&a, 10, lease(), t0()).await.unwrap();
    store.claim_tasks(&b, 10, lease(), t0()).await.unwrap();

    let heartbeat = t0() + Duration::seconds(20);
    assert_eq!(store.renew_leases(&a, lease(), heartbeat).await.unwrap(), 2);
    let expired = store.expire_leases(t0() + lease()).await.unwrap();
    assert_eq!(
        expired.iter().map(|t| t.id).collect::<Vec<_>>(),
        vec![other.id]
    );
    assert!(store
        .expire_leases(heartbeat + lease() - Duration::seconds(1))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        store
            .expire_leases(heartbeat + lease())
            .await
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        store
            .renew_leases(&host("nobody"), lease(), heartbeat)
            .await
            .unwrap(),
        0
    );
}

pub async fn report_by_another_host_is_refused(store: SharedStore) {
    let a = host("node-a");
    let b = host("node-b");
    let t = store
        .enqueue_task(&task(TaskType::Health), t0())
        .await
        .unwrap()
        .task;

    // Nobody holds a pending task.
    let err = store
        .update_task_status(t.id, &a, &update(TaskStatus::Running), lease(), t0())
        .await
        .unwrap_err();
    match err {
        StoreError::TaskNotHeld { holder, status, .. } => {
            assert_eq!((holder, status), (None, TaskStatus::Pending))
        }
        other => panic!("expected TaskNotHeld, got {other}"),
    }

    store.claim_tasks(&a, 1, lease(), t0()).await.unwrap();
    let err = store
        .update_task_status(t.id, &b, &update(TaskStatus::Completed), lease(), t0())
        .await
        .unwrap_err();
    match &err {
        StoreError::TaskNotHeld {
            holder,
            host,
            status,
            task_id,
        } => {
            assert_eq!(holder.as_ref(), Some(&a));
            assert_eq!(host, &b);
            assert_eq!(*status, TaskStatus::Assigned);
            assert_eq!(*task_id, t.id);
        }
        other => panic!("expected TaskNotHeld, got {other}"),
    }
    assert_eq!(
        store.get_task(t.id).await.unwrap().status,
        TaskStatus::Assigned
    );

    // The holder cannot move a task backwards.
    let err = store
        .update_task_status(t.id, &a, &update(TaskStatus::Pending), lease(), t0())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::TaskTransition {
                from: TaskStatus::Assigned,
                to: TaskStatus::Pending,
                ..
            }
        ),
        "{err}"
    );

    let unknown = store
        .update_task_status(
            phoenix_core::TaskId::new(),
            &a,
            &update(TaskStatus::Running),
            lease(),
            t0(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(unknown, StoreError::NotFound { entity: "task", .. }),
        "{unknown}"
    );

    // A finished task takes no other report, even from its holder.
    store
        .update_task_status(t.id, &a, &update(TaskStatus::Completed), lease(), t0())
        .await
        .unwrap();
    let err = store
        .update_task_status(t.id, &a, &update(TaskStatus::Failed), lease(), t0())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::TaskTransition {
                from: TaskStatus::Completed,
                to: TaskStatus::Failed,
                ..
            }
        ),
        "{err}"
    );
}

pub async fn repeated_terminal_report_is_idempotent(store: SharedStore) {
    let a = host("node-a");
    let t = store
        .enqueue_task(&task(TaskType::Health), t0())
        .await
        .unwrap()
        .task;
    store.claim_tasks(&a, 1, lease(), t0()).await.unwrap();
    let done = TaskStatusUpdate {
        status: TaskStatus::Completed,
        error: None,
        result: Some(json!({"ok": 1})),
    };
    let first = store
        .update_task_status(t.id, &a, &done, lease(), t0())
        .await
        .unwrap();
    let later = t0() + Duration::seconds(3);
    let replay = store
        .update_task_status(t.id, &a, &done, lease(), later)
        .await
        .unwrap();
    assert_eq!(replay, first, "a replay returns the task unchanged");
    let err = store
        .update_task_status(t.id, &host("node-b"), &done, lease(), later)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::TaskNotHeld { .. }), "{err}");
}

pub async fn batch_reports_are_judged_one_by_one_in_order(store: SharedStore) {
    let (a, b) = (host("node-a"), host("node-b"));
    for _ in 0..3 {
        store
            .enqueue_task(&task(TaskType::Health).for_host(a.clone()), t0())
            .await
            .unwrap();
    }
    let mine = store.claim_tasks(&a, 10, lease(), t0()).await.unwrap();
    assert_eq!(mine.len(), 3);
    store
        .enqueue_task(&task(TaskType::Health).for_host(b.clone()), t0())
        .await
        .unwrap();
    let theirs = store
        .claim_tasks(&b, 10, lease(), t0())
        .await
        .unwrap()
        .remove(0);

    let now = t0() + Duration::seconds(7);
    let completed = TaskStatusUpdate {
        status: TaskStatus::Completed,
        error: None,
        result: Some(json!({"rows": [1, 2]})),
    };
    let failed = TaskStatusUpdate {
        status: TaskStatus::Failed,
        error: Some("boom".into()),
        result: None,
    };
    let reports = vec![
        (mine[0].id, completed.clone()),
        (mine[1].id, failed.clone()),
        (theirs.id, completed.clone()),
        (phoenix_core::TaskId::new(), completed.clone()),
        (mine[2].id, update(TaskStatus::Running)),
        (mine[0].id, completed.clone()),
    ];
    let outcomes = store
        .complete_tasks(&a, &reports, lease(), now)
        .await
        .unwrap();
    assert_eq!(outcomes.len(), reports.len());
    let first = outcomes[0].as_ref().unwrap();
    assert_eq!(first.status, TaskStatus::Completed);
    assert_eq!(first.result, completed.result);
    assert_eq!(first.finished_at, Some(now));
    assert_eq!(first.lease_expires_at, None);
    let second = outcomes[1].as_ref().unwrap();
    assert_eq!(
        (second.status, second.error.as_deref()),
        (TaskStatus::Failed, Some("boom"))
    );
    assert!(
        matches!(outcomes[2], Err(StoreError::TaskNotHeld { .. })),
        "{:?}",
        outcomes[2]
    );
    assert!(
        matches!(outcomes[3], Err(StoreError::NotFound { .. })),
        "{:?}",
        outcomes[3]
    );
    let running = outcomes[4].as_ref().unwrap();
    assert_eq!(running.status, TaskStatus::Running);
    assert_eq!(running.lease_expires_at, Some(now + lease()));
    assert_eq!(
        outcomes[5].as_ref().unwrap(),
        first,
        "a repeated report is a replay"
    );

    assert_eq!(store.get_task(mine[0].id).await.unwrap(), *first);
    assert_eq!(
        store.get_task(theirs.id).await.unwrap().status,
        TaskStatus::Assigned
    );
    assert!(store
        .complete_tasks(&a, &[], lease(), now)
        .await
        .unwrap()
        .is_empty());
}

pub async fn idempotency_key_returns_existing_task(store: SharedStore) {
    let mut t = task(TaskType::Deployment);
    t.idempotency_key = Some("deploy-42".into());
    let first = store.enqueue_task(&t, t0()).await.unwrap();
    assert!(first.created);
    let mut different = t.clone();
    different.payload = json!({"other": true});
    let second = store
        .enqueue_task(&different, t0() + Duration::seconds(1))
        .await
        .unwrap();
    assert!(!second.created);
    assert_eq!(second.task, first.task);
    assert_eq!(
        store.list_tasks(&TaskQuery::default()).await.unwrap().total,
        1
    );
    let unkeyed = store
        .enqueue_task(&task(TaskType::Deployment), t0())
        .await
        .unwrap();
    assert!(unkeyed.created);
    assert_eq!(unkeyed.task.idempotency_key, None);
}

pub async fn concurrent_enqueues_with_one_idempotency_key_create_one_task(store: SharedStore) {
    let mut t = task(TaskType::Deployment);
    t.idempotency_key = Some("racing".into());
    let mut handles = Vec::new();
    for _ in 0..16 {
        let store = Arc::clone(&store);
        let t = t.clone();
        handles.push(tokio::spawn(async move {
            store.enqueue_task(&t, t0()).await.unwrap()
        }));
    }
    let mut outcomes = Vec::new();
    for h in handles {
        outcomes.push(h.await.unwrap());
    }
    assert_eq!(outcomes.iter().filter(|o| o.created).count(), 1);
    let ids: HashSet<_> = outcomes.iter().map(|o| o.task.id).collect();
    assert_eq!(ids.len(), 1);
    assert_eq!(
        store.list_tasks(&TaskQuery::default()).await.unwrap().total,
        1
    );
}

pub async fn enqueue_for_unknown_experiment_is_not_found(store: SharedStore) {
    let mut t = task(TaskType::Experiment);
    t.experiment_id = Some(ExperimentId::new());
    let err = store.enqueue_task(&t, t0()).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::NotFound {
                entity: "experiment",
                ..
            }
        ),
        "{err}"
    );
}

pub async fn list_tasks_filters_and_counts(store: SharedStore) {
    let e = created(&store, "tasks", t0()).await;
    let a = host("node-a");
    for i in 0..3 {
        let mut t = task(TaskType::Experiment).for_host(a.clone());
        t.experiment_id = Some(e.id);
        store
            .enqueue_task(&t, t0() + Duration::seconds(i))
            .await
            .unwrap();
    }
    store
        .enqueue_task(&task(TaskType::Health).for_host(host("node-b")), t0())
        .await
        .unwrap();
    store
        .claim_tasks(&host("node-b"), 1, lease(), t0())
        .await
        .unwrap();

    let q = |status, host_id, experiment_id| TaskQuery {
        status,
        host_id,
        experiment_id,
        limit: 2,
        offset: 0,
    };
    let by_exp = store.list_tasks(&q(None, None, Some(e.id))).await.unwrap();
    assert_eq!((by_exp.total, by_exp.items.len()), (3, 2));
    assert!(
        by_exp.items[0].created_at > by_exp.items[1].created_at,
        "newest first"
    );
    let by_host = store
        .list_tasks(&q(None, Some(a.clone()), None))
        .await
        .unwrap();
    assert_eq!(by_host.total, 3);
    let assigned = store
        .list_tasks(&q(Some(TaskStatus::Assigned), None, None))
        .await
        .unwrap();
    assert_eq!(assigned.total, 1);
    assert_eq!(assigned.items[0].host_id, Some(host("node-b")));
    let none = store
        .list_tasks(&q(Some(TaskStatus::Assigned), Some(a), None))
        .await
        .unwrap();
    assert_eq!(none.total, 0);
}

pub async fn sweep_deletes_only_old_finished_tasks(store: SharedStore) {
    let a = host("node-a");
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(
            store
                .enqueue_task(&task(TaskType::Health), t0())
                .await
                .unwrap()
                .task
                .id,
        );
    }
    store.claim_tasks(&a, 2, lease(), t0()).await.unwrap();
    let old = t0() + Duration::seconds(1);
    let recent = t0() + Duration::days(8);
    let claimed: Vec<_> = store
        .list_tasks(&TaskQuery {
            status: Some(TaskStatus::Assigned),
            ..Default::default()
        })
        .await
        .unwrap()
        .items;
    store
        .update_task_status(
            claimed[0].id,
            &a,
            &update(TaskStatus::Completed),
            lease(),
            old,
        )
        .await
        .unwrap();
    store
        .update_task_status(
            claimed[1].id,
            &a,
            &update(TaskStatus::Failed),
            lease(),
            recent,
        )
        .await
        .unwrap();

    let cutoff = t0() + Duration::days(7);
    assert_eq!(store.sweep_finished_tasks(cutoff).await.unwrap(), 1);
    assert!(store.get_task(claimed[0].id).await.is_err());
    assert!(store.get_task(claimed[1].id).await.is_ok());
    assert_eq!(
        store.list_tasks(&TaskQuery::default()).await.unwrap().total,
        2
    );
    assert_eq!(store.sweep_finished_tasks(cutoff).await.unwrap(), 0);
}

pub async fn task_counts_cover_every_status(store: SharedStore) {
    let empty = store.task_counts().await.unwrap();
    assert_eq!(empty.len(), TaskStatus::ALL.len());
    assert!(empty.values().all(|n| *n == 0));

    let a = host("node-a");
    for _ in 0..4 {
        store
            .enqueue_task(&task(TaskType::Health), t0())
            .await
            .unwrap();
    }
    let claimed = store.claim_tasks(&a, 3, lease(), t0()).await.unwrap();
    store
        .update_task_status(
            claimed[0].id,
            &a,
            &update(TaskStatus::Running),
            lease(),
            t0(),
        )
        .await
        .unwrap();
    store
        .update_task_status(
            claimed[1].id,
            &a,
            &update(TaskStatus::Completed),
            lease(),
            t0(),
        )
        .await
        .unwrap();
    let counts = store.task_counts().await.unwrap();
    let want: BTreeMap<_, _> = [
        (TaskStatus::Pending, 1),
        (TaskStatus::Assigned, 1),
        (TaskStatus::Running, 1),
        (TaskStatus::Completed, 1),
        (TaskStatus::Failed, 0),
    ]
    .into_iter()
    .collect();
    assert_eq!(counts, want);
}

// ---- agents ----

pub async fn agent_enrollment_credentials_heartbeats_and_revocation(store: SharedStore) {
    let a = host("node-a");
    assert_eq!(store.agent_credentials(&a).await.unwrap(), None);
    let agent = store.enroll_agent(&a, "hash-1", t0()).await.unwrap();
    assert_eq!(agent.host_id, a);
    assert_eq!(agent.enrolled_at, t0());
    assert_eq!(agent.last_seen_at, None);
    assert!(!agent.revoked);
    let creds = store.agent_credentials(&a).await.unwrap().unwrap();
    assert_eq!(
        (creds.secret_hash.as_str(), creds.revoked),
        ("hash-1", false)
    );

    // Re-enrolling rotates the secret.
    store
        .enroll_agent(&a, "hash-2", t0() + Duration::seconds(1))
        .await
        .unwrap();
    assert_eq!(
        store
            .agent_credentials(&a)
            .await
            .unwrap()
            .unwrap()
            .secret_hash,
        "hash-2"
    );

    let hb = Heartbeat {
        version: "1.2.3".into(),
        hostname: "node-a.example".into(),
        capabilities: vec!["otlp".into(), "remote_write".into()],
        labels: [("zone".to_string(), "eu-1".to_string())]
            .into_iter()
            .collect(),
        resource_usage: phoenix_core::ResourceUsage {
            cpu_percent: 12.5,
            memory_bytes: 1 << 30,
            buffer_bytes: 4096,
        },
        running_pipelines: vec![json!({"name": "baseline"})],
        held_tasks: None,
    };
    for s in [10, 20, 30] {
        store
            .record_heartbeat(&a, &hb, t0() + Duration::seconds(s))
            .await
            .unwrap();
    }
    let seen = store.get_agent(&a).await.unwrap();
    assert_eq!(seen.last_seen_at, Some(t0() + Duration::seconds(30)));
    assert_eq!(seen.version, "1.2.3");
    assert_eq!(seen.hostname, "node-a.example");
    assert_eq!(seen.capabilities, hb.capabilities);
    assert_eq!(seen.labels, hb.labels);
    assert_eq!(seen.resource_usage, hb.resource_usage);
    assert_eq!(seen.running_pipelines, hb.running_pipelines);
    assert_eq!(seen.enrolled_at, t0());
    assert_eq!(
        store
            .count_heartbeats(&a, t0() + Duration::seconds(20))
            .await
            .unwrap(),
        2
    );
    assert_eq!(store.count_heartbeats(&a, t0()).await.unwrap(), 3);

    store
        .enroll_agent(&host("node-b"), "hash-b", t0())
        .await
        .unwrap();
    let hosts: Vec<_> = store
        .list_agents()
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.host_id)
        .collect();
    assert_eq!(hosts, vec![a.clone(), host("node-b")]);

    store
        .revoke_agent(&a, t0() + Duration::seconds(40))
        .await
        .unwrap();
    assert!(store.agent_credentials(&a).await.unwrap().unwrap().revoked);
    assert!(store.get_agent(&a).await.unwrap().revoked);
    let err = store.enroll_agent(&a, "hash-3", t0()).await.unwrap_err();
    assert!(
        matches!(err, StoreError::AgentRevoked(ref h) if *h == a),
        "{err}"
    );
    assert_eq!(
        store
            .agent_credentials(&a)
            .await
            .unwrap()
            .unwrap()
            .secret_hash,
        "hash-2"
    );
    let err = store.record_heartbeat(&a, &hb, t0()).await.unwrap_err();
    assert!(matches!(err, StoreError::AgentRevoked(_)), "{err}");

    let ghost = host("ghost");
    assert!(matches!(
        store.get_agent(&ghost).await.unwrap_err(),
        StoreError::NotFound { .. }
    ));
    assert!(matches!(
        store.record_heartbeat(&ghost, &hb, t0()).await.unwrap_err(),
        StoreError::NotFound { .. }
    ));
    assert!(matches!(
        store.revoke_agent(&ghost, t0()).await.unwrap_err(),
        StoreError::NotFound { .. }
    ));
}

// ---- KPIs, logs, settings ----

fn kpi(
    experiment_id: ExperimentId,
    variant: Variant,
    end_s: i64,
    input_series: u64,
    output_series: u64,
) -> KpiBatch {
    KpiBatch {
        batch_id: uuid::Uuid::now_v7(),
        experiment_id: Some(experiment_id),
        variant,
        interval_start: t0() + Duration::seconds(end_s - 60),
        interval_end: t0() + Duration::seconds(end_s),
        values: KpiValues {
            input_series,
            output_series,
            input_samples: input_series * 4,
            output_samples: output_series * 4,
            ns_per_sample: 41.5,
            max_total_error: 0.002,
            ..Default::default()
        },
        details: json!({"per_processor": {"topk": {"folded": 17}}}),
        label_stats: None,
    }
}

pub async fn kpi_replay_is_not_stored_twice(store: SharedStore) {
    let e = ExperimentId::new();
    let a = host("node-a");
    let batches = vec![
        kpi(e, Variant::Baseline, 60, 1000, 1000),
        kpi(e, Variant::Candidate, 60, 1000, 150),
    ];
    let first = store.insert_kpi_batches(&a, &batches, t0()).await.unwrap();
    assert_eq!((first.inserted, first.duplicates), (2, 0));
    let mut replay = batches.clone();
    replay.push(kpi(e, Variant::Candidate, 120, 1000, 140));
    let second = store
        .insert_kpi_batches(&a, &replay, t0() + Duration::seconds(5))
        .await
        .unwrap();
    assert_eq!((second.inserted, second.duplicates), (1, 2));

    let stored = store.list_kpi_batches(e, 100).await.unwrap();
    assert_eq!(stored.len(), 3);
    assert_eq!(stored[0].host_id, a);
    assert_eq!(stored[0].received_at, t0());
    let by_id: BTreeMap<_, _> = stored
        .iter()
        .map(|s| (s.batch.batch_id, &s.batch))
        .collect();
    for b in &replay {
        assert_eq!(by_id[&b.batch_id], b);
    }
    // The most recent ones when limited, oldest first.
    let last = store.list_kpi_batches(e, 1).await.unwrap();
    assert_eq!(last.len(), 1);
    assert_eq!(last[0].batch.interval_end, t0() + Duration::seconds(120));
    assert!(store
        .list_kpi_batches(ExperimentId::new(), 10)
        .await
        .unwrap()
        .is_empty());
    let empty = store.insert_kpi_batches(&a, &[], t0()).await.unwrap();
    assert_eq!((empty.inserted, empty.duplicates), (0, 0));
}

pub async fn latest_reduction_uses_candidates_latest_interval(store: SharedStore) {
    let e1 = ExperimentId::new();
    let e2 = ExperimentId::new();
    let (a, b) = (host("node-a"), host("node-b"));
    store
        .insert_kpi_batches(
            &a,
            &[
                kpi(e1, Variant::Candidate, 60, 1000, 500), // older interval: ignored
                kpi(e1, Variant::Candidate, 120, 1000, 100),
                kpi(e1, Variant::Baseline, 180, 1000, 1000), // baseline: ignored
                kpi(e2, Variant::Candidate, 60, 0, 0),
            ],
            t0(),
        )
        .await
        .unwrap();
    // Another host's batch for the same latest interval is summed in.
    store
        .insert_kpi_batches(&b, &[kpi(e1, Variant::Candidate, 120, 3000, 700)], t0())
        .await
        .unwrap();
    let got: BTreeMap<_, _> = store
        .latest_reduction_percent()
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(got.len(), 2);
    assert!((got[&e1] - 80.0).abs() < 1e-9, "{}", got[&e1]); // 1 - 800/4000
    assert_eq!(got[&e2], 0.0);
}

pub async fn agent_logs_round_trip_newest_first(store: SharedStore) {
    let a = host("node-a");
    let logs: Vec<_> = (0..5)
        .map(|i| AgentLogEntry {
            at: t0() + Duration::seconds(i),
            level: if i % 2 == 0 {
                LogLevel::Info
            } else {
                LogLevel::Error
            },
            message: format!("line {i}"),
            fields: json!({"i": i}),
        })
        .collect();
    assert_eq!(
        store
            .insert_agent_logs(&a, &logs, t0() + Duration::seconds(9))
            .await
            .unwrap(),
        5
    );
    assert_eq!(store.insert_agent_logs(&a, &[], t0()).await.unwrap(), 0);
    store
        .insert_agent_logs(&host("node-b"), &logs[..1], t0())
        .await
        .unwrap();
    let got = store.list_agent_logs(&a, 3).await.unwrap();
    assert_eq!(got.len(), 3);
    assert_eq!(got[0].entry, logs[4]);
    assert_eq!(got[2].entry, logs[2]);
    assert_eq!(got[0].host_id, a);
    assert_eq!(got[0].received_at, t0() + Duration::seconds(9));
    assert_eq!(
        store
            .list_agent_logs(&host("node-b"), 10)
            .await
            .unwrap()
            .len(),
        1
    );
}

pub async fn settings_round_trip(store: SharedStore) {
    assert_eq!(store.get_setting("retention").await.unwrap(), None);
    let v1 = json!({"tasks_days": 7, "kpi_days": 30});
    store.put_setting("retention", &v1, t0()).await.unwrap();
    assert_eq!(store.get_setting("retention").await.unwrap(), Some(v1));
    let v2 = json!({"tasks_days": 3, "kpi_days": 30, "note": "ünïcode ✓"});
    store.put_setting("retention", &v2, t0()).await.unwrap();
    assert_eq!(store.get_setting("retention").await.unwrap(), Some(v2));
    store.put_setting("flag", &json!(true), t0()).await.unwrap();
    assert_eq!(store.get_setting("flag").await.unwrap(), Some(json!(true)));
}

pub async fn concurrent_put_if_absent_agree_on_the_first_value(store: SharedStore) {
    // Eight replicas starting at once, each with its own freshly generated key.
    let mut joins = Vec::new();
    for i in 0..8 {
        let store = store.clone();
        joins.push(tokio::spawn(async move {
            store
                .put_setting_if_absent("signing_key", &json!(format!("key-{i}")), t0())
                .await
                .unwrap()
        }));
    }
    let mut seen = std::collections::BTreeSet::new();
    for j in joins {
        seen.insert(j.await.unwrap().to_string());
    }
    assert_eq!(seen.len(), 1, "replicas disagree: {seen:?}");
    let stored = store.get_setting("signing_key").await.unwrap().unwrap();
    assert_eq!(seen.into_iter().next().unwrap(), stored.to_string());
    // A later call does not replace it.
    let again = store
        .put_setting_if_absent("signing_key", &json!("late"), t0())
        .await
        .unwrap();
    assert_eq!(again, stored);
}

pub async fn sweep_telemetry_deletes_only_old_rows(store: SharedStore) {
    let a = host("node-a");
    let e = ExperimentId::new();
    store.enroll_agent(&a, "h", t0()).await.unwrap();
    let old = t0();
    let new = t0() + Duration::days(40);
    store
        .insert_kpi_batches(&a, &[kpi(e, Variant::Candidate, 60, 10, 1)], old)
        .await
        .unwrap();
    store
        .insert_kpi_batches(&a, &[kpi(e, Variant::Candidate, 120, 10, 1)], new)
        .await
        .unwrap();
    store
        .record_heartbeat(&a, &Heartbeat::default(), old)
        .await
        .unwrap();
    store
        .record_heartbeat(&a, &Heartbeat::default(), new)
        .await
        .unwrap();
    let log = AgentLogEntry {
        at: old,
        level: LogLevel::Warn,
        message: "m".into(),
        fields: json!({}),
    };
    store
        .insert_agent_logs(&a, std::slice::from_ref(&log), old)
        .await
        .unwrap();
    store
        .insert_agent_logs(&a, std::slice::from_ref(&log), new)
        .await
        .unwrap();

    let cutoff = t0() + Duration::days(30);
    assert_eq!(store.sweep_telemetry(cutoff).await.unwrap(), 3);
    assert_eq!(store.list_kpi_batches(e, 10).await.unwrap().len(), 1);
    assert_eq!(store.count_heartbeats(&a, t0()).await.unwrap(), 1);
    assert_eq!(store.list_agent_logs(&a, 10).await.unwrap().len(), 1);
    assert_eq!(store.sweep_telemetry(cutoff).await.unwrap(), 0);
}

/// The API gathers concurrent heartbeats into one `record_heartbeats` call: each entry gets
/// its own outcome, leases are renewed per host, and every heartbeat lands in the history.
pub async fn batched_heartbeats_renew_each_hosts_leases_and_refuse_unknown_or_revoked(
    store: SharedStore,
) {
    let (a, b, r) = (host("batch-a"), host("batch-b"), host("batch-revoked"));
    for h in [&a, &b, &r] {
        store.enroll_agent(h, "hash", t0()).await.unwrap();
    }
    store.revoke_agent(&r, t0()).await.unwrap();
    for h in [&a, &a, &b] {
        store
            .enqueue_task(&task(TaskType::Health).for_host(h.clone()), t0())
            .await
            .unwrap();
    }
    assert_eq!(
        store
            .claim_tasks(&a, 10, lease(), t0())
            .await
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        store
            .claim_tasks(&b, 10, lease(), t0())
            .await
            .unwrap()
            .len(),
        1
    );

    let beat = |version: &str| Heartbeat {
        version: version.into(),
        labels: [("zone".to_string(), "eu-1".to_string())]
            .into_iter()
            .collect(),
        running_pipelines: vec![json!({"name": "candidate"})],
        ..Heartbeat::default()
    };
    let now = t0() + Duration::seconds(50);
    let outcomes = store
        .record_heartbeats(
            &[
                (a.clone(), beat("1")),
                (b.clone(), beat("1")),
                (host("batch-unknown"), beat("1")),
                (r.clone(), beat("1")),
                (a.clone(), beat("2")),
            ],
            lease(),
            now,
        )
        .await
        .unwrap();
    assert_eq!(outcomes.len(), 5);
    assert_eq!(*outcomes[0].as_ref().unwrap(), 2);
    assert_eq!(*outcomes[1].as_ref().unwrap(), 1);
    assert!(
        matches!(outcomes[2], Err(StoreError::NotFound { .. })),
        "{:?}",
        outcomes[2]
    );
    assert!(
        matches!(outcomes[3], Err(StoreError::AgentRevoked(_))),
        "{:?}",
        outcomes[3]
    );
    assert_eq!(*outcomes[4].as_ref().unwrap(), 2);

    // The newest heartbeat of a host wins; both went to the history.
    let seen = store.get_agent(&a).await.unwrap();
    assert_eq!(seen.version, "2");
    assert_eq!(seen.last_seen_at, Some(now));
    assert_eq!(seen.labels.get("zone").map(String::as_str), Some("eu-1"));
    assert_eq!(seen.running_pipelines, vec![json!({"name": "candidate"})]);
    assert_eq!(store.count_heartbeats(&a, t0()).await.unwrap(), 2);
    assert_eq!(store.count_heartbeats(&b, t0()).await.unwrap(), 1);
    assert_eq!(store.count_heartbeats(&r, t0()).await.unwrap(), 0);
    // A heartbeat that leaves hostname and version empty keeps what was reported before.
    let named = Heartbeat {
        hostname: "node-b.example".into(),
        version: "3".into(),
        ..Heartbeat::default()
    };
    store
        .record_heartbeats(&[(b.clone(), named)], lease(), now)
        .await
        .unwrap();
    store
        .record_heartbeats(&[(b.clone(), Heartbeat::default())], lease(), now)
        .await
        .unwrap();
    let kept = store.get_agent(&b).await.unwrap();
    assert_eq!(
        (kept.hostname.as_str(), kept.version.as_str()),
        ("node-b.example", "3")
    );

    // The renewal holds: at the original lease's end nothing expires, after the new one all do.
    assert!(store
        .expire_leases(t0() + lease())
        .await
        .unwrap()
        .is_empty());
    assert_eq!(store.expire_leases(now + lease()).await.unwrap().len(), 3);
    assert!(store
        .record_heartbeats(&[], lease(), now)
        .await
        .unwrap()
        .is_empty());
}

/// A claim takes the host's own tasks and host-less ones in one priority-then-age order, and
/// a large backlog of other hosts' tasks neither blocks nor leaks into it.
pub async fn claim_skips_other_hosts_backlog_and_merges_host_less_tasks_in_order(
    store: SharedStore,
) {
    let me = host("claimer");
    for i in 0..300 {
        let other = host(&format!("other-{}", i % 7));
        store
            .enqueue_task(&task(TaskType::Health).for_host(other), t0())
            .await
            .unwrap();
    }
    let at = |s: i64| t0() + Duration::seconds(s);
    let mut expected = Vec::new();
    // (priority, created second, targeted at me?)
    for (priority, second, mine) in [(0, 1, true), (5, 2, false), (0, 3, false), (5, 4, true)] {
        let mut t = task(TaskType::Health);
        t.priority = priority;
        if mine {
            t = t.for_host(me.clone());
        }
        let id = store.enqueue_task(&t, at(second)).await.unwrap().task.id;
        expected.push((priority, second, id));
    }
    expected.sort_by_key(|&(priority, second, _)| (-priority, second));
    let expected: Vec<_> = expected.into_iter().map(|(_, _, id)| id).collect();

    let first = store.claim_tasks(&me, 3, lease(), at(10)).await.unwrap();
    let second = store.claim_tasks(&me, 3, lease(), at(10)).await.unwrap();
    let claimed: Vec<_> = first.iter().chain(&second).map(|t| t.id).collect();
    assert_eq!(first.len(), 3);
    assert_eq!(claimed, expected);
    assert!(store
        .claim_tasks(&me, 3, lease(), at(10))
        .await
        .unwrap()
        .is_empty());
    assert!(first
        .iter()
        .chain(&second)
        .all(|t| t.assigned_to.as_ref() == Some(&me)));
}

/// The API gathers concurrent status reports of many agents into one `report_task_statuses`
/// call: every report gets the outcome `update_task_status` would have given it.
pub async fn reports_from_many_hosts_are_judged_like_single_reports(store: SharedStore) {
    let (a, b) = (host("node-a"), host("node-b"));
    for h in [&a, &a, &a, &b] {
        store
            .enqueue_task(&task(TaskType::Health).for_host(h.clone()), t0())
            .await
            .unwrap();
    }
    let mine = store.claim_tasks(&a, 10, lease(), t0()).await.unwrap();
    let theirs = store
        .claim_tasks(&b, 10, lease(), t0())
        .await
        .unwrap()
        .remove(0);
    assert_eq!(mine.len(), 3);

    let now = t0() + Duration::seconds(9);
    let completed = TaskStatusUpdate {
        status: TaskStatus::Completed,
        error: None,
        result: Some(json!({"rows": [1, 2], "note": "ok"})),
    };
    let failed = TaskStatusUpdate {
        status: TaskStatus::Failed,
        error: Some("boom".into()),
        result: Some(json!("plain string result")),
    };
    let reports = vec![
        (mine[0].id, a.clone(), update(TaskStatus::Running)),
        (theirs.id, b.clone(), completed.clone()),
        (mine[1].id, a.clone(), failed.clone()),
        // Running then completed in one batch: judged in order.
        (mine[0].id, a.clone(), completed.clone()),
        // Held by a, reported by b.
        (mine[2].id, b.clone(), completed.clone()),
        (phoenix_core::TaskId::new(), a.clone(), completed.clone()),
        // A replay of a terminal report.
        (theirs.id, b.clone(), completed.clone()),
        // Not a status an agent reports.
        (mine[2].id, a.clone(), update(TaskStatus::Pending)),
    ];
    let outcomes = store
        .report_task_statuses(&reports, lease(), now)
        .await
        .unwrap();
    assert_eq!(outcomes.len(), reports.len());

    let running = outcomes[0].as_ref().unwrap();
    assert_eq!(running.status, TaskStatus::Running);
    assert_eq!(running.started_at, Some(now));
    assert_eq!(running.lease_expires_at, Some(now + lease()));
    let done = outcomes[1].as_ref().unwrap();
    assert_eq!(done.status, TaskStatus::Completed);
    assert_eq!(done.result, completed.result);
    assert_eq!(done.finished_at, Some(now));
    assert_eq!(done.lease_expires_at, None);
    let fail = outcomes[2].as_ref().unwrap();
    assert_eq!(
        (fail.status, fail.error.as_deref()),
        (TaskStatus::Failed, Some("boom"))
    );
    assert_eq!(fail.result, failed.result);
    let then_done = outcomes[3].as_ref().unwrap();
    assert_eq!(then_done.status, TaskStatus::Completed);
    assert_eq!(then_done.started_at, Some(now));
    assert!(
        matches!(outcomes[4], Err(StoreError::TaskNotHeld { .. })),
        "{:?}",
        outcomes[4]
    );
    assert!(
        matches!(outcomes[5], Err(StoreError::NotFound { .. })),
        "{:?}",
        outcomes[5]
    );
    assert_eq!(
        outcomes[6].as_ref().unwrap(),
        done,
        "a repeated report is a replay"
    );
    assert!(outcomes[7].is_err(), "{:?}", outcomes[7]);
    // The holder reporting another terminal status than the one recorded is a conflict,
    // not a replay.
    let flip = store
        .report_task_statuses(&[(theirs.id, b.clone(), failed.clone())], lease(), now)
        .await
        .unwrap();
    assert!(
        matches!(flip[0], Err(StoreError::TaskTransition { .. })),
        "{:?}",
        flip[0]
    );

    assert_eq!(store.get_task(mine[0].id).await.unwrap(), *then_done);
    assert_eq!(store.get_task(theirs.id).await.unwrap(), *done);
    assert_eq!(store.get_task(mine[1].id).await.unwrap(), *fail);
    assert_eq!(
        store.get_task(mine[2].id).await.unwrap().status,
        TaskStatus::Assigned
    );
    assert!(store
        .report_task_statuses(&[], lease(), now)
        .await
        .unwrap()
        .is_empty());
}

/// The API gathers concurrent enqueues into one `enqueue_tasks` call: each task gets the
/// outcome `enqueue_task` would have given it, idempotency keys included.
pub async fn batched_enqueues_answer_each_task_and_honour_idempotency_keys(store: SharedStore) {
    let e = created(&store, "batch", t0()).await;
    let keyed = |key: &str| {
        let mut t = task(TaskType::Deployment);
        t.idempotency_key = Some(key.to_string());
        t
    };
    let existing = store
        .enqueue_task(&keyed("k-old"), t0())
        .await
        .unwrap()
        .task;
    let mut for_experiment = task(TaskType::Experiment).for_host(host("node-a"));
    for_experiment.experiment_id = Some(e.id);
    for_experiment.priority = 7;
    for_experiment.not_before = Some(t0() + Duration::seconds(30));
    let batch = vec![
        task(TaskType::Health),
        keyed("k-new"),
        keyed("k-old"),
        keyed("k-new"),
        for_experiment.clone(),
    ];
    let now = t0() + Duration::seconds(1);
    let outcomes = store.enqueue_tasks(&batch, now).await.unwrap();
    assert_eq!(outcomes.len(), batch.len());
    let created_flags: Vec<bool> = outcomes
        .iter()
        .map(|o| o.as_ref().unwrap().created)
        .collect();
    assert_eq!(created_flags, [true, true, false, false, true]);
    let first_new = &outcomes[1].as_ref().unwrap().task;
    assert_eq!(outcomes[2].as_ref().unwrap().task, existing);
    assert_eq!(&outcomes[3].as_ref().unwrap().task, first_new);
    let exp_task = &outcomes[4].as_ref().unwrap().task;
    assert_eq!(exp_task.experiment_id, Some(e.id));
    assert_eq!(exp_task.host_id, Some(host("node-a")));
    assert_eq!(exp_task.priority, 7);
    assert_eq!(exp_task.not_before, for_experiment.not_before);
    assert_eq!(exp_task.payload, for_experiment.payload);
    assert_eq!(exp_task.status, TaskStatus::Pending);
    assert_eq!(exp_task.created_at, now);
    assert_eq!(store.get_task(exp_task.id).await.unwrap(), *exp_task);
    assert_eq!(
        store.list_tasks(&TaskQuery::default()).await.unwrap().total,
        4,
        "the old keyed task and three new ones"
    );

    // An unknown experiment refuses only its own task.
    let mut orphan = task(TaskType::Experiment);
    orphan.experiment_id = Some(ExperimentId::new());
    let outcomes = store
        .enqueue_tasks(
            &[task(TaskType::Health), orphan, task(TaskType::Metrics)],
            now,
        )
        .await
        .unwrap();
    assert!(outcomes[0].as_ref().unwrap().created);
    assert!(
        matches!(outcomes[1], Err(StoreError::NotFound { .. })),
        "{:?}",
        outcomes[1]
    );
    assert!(outcomes[2].as_ref().unwrap().created);
    assert_eq!(
        store.list_tasks(&TaskQuery::default()).await.unwrap().total,
        6
    );
    assert!(store.enqueue_tasks(&[], now).await.unwrap().is_empty());
}

/// The API gathers the long-polls that wake together into one `claim_tasks_for_hosts`
/// call: each entry gets what `claim_tasks` would give it, and no task goes to two entries.
pub async fn claims_for_many_hosts_hand_each_task_to_one_of_them(store: SharedStore) {
    let (a, b, c) = (host("node-a"), host("node-b"), host("node-c"));
    let mut second = 0;
    let mut enqueue = |t: NewTask| {
        second += 1;
        let store = store.clone();
        async move {
            store
                .enqueue_task(&t, t0() + Duration::seconds(second))
                .await
                .unwrap()
        }
    };
    for h in [&a, &a, &a, &b] {
        enqueue(task(TaskType::Health).for_host(h.clone())).await;
    }
    for _ in 0..2 {
        enqueue(task(TaskType::Health)).await;
    }
    let now = t0() + Duration::seconds(60);
    let claims = [
        (a.clone(), 2),
        (b.clone(), 10),
        (c.clone(), 10),
        (a.clone(), 10),
        (c.clone(), 0),
    ];
    let claimed = store
        .claim_tasks_for_hosts(&claims, lease(), now)
        .await
        .unwrap();
    assert_eq!(claimed.len(), claims.len());
    let mut ids = HashSet::new();
    for ((h, limit), tasks) in claims.iter().zip(&claimed) {
        assert!(tasks.len() <= *limit as usize);
        for t in tasks {
            assert!(ids.insert(t.id), "task {} claimed twice", t.id);
            assert_eq!(t.assigned_to.as_ref(), Some(h));
            assert_eq!(t.status, TaskStatus::Assigned);
            assert!(t.host_id.is_none() || t.host_id.as_ref() == Some(h));
        }
        let mut sorted = tasks.clone();
        sorted.sort_by_key(|t| (-t.priority, t.created_at, t.id));
        assert_eq!(&sorted, tasks, "claim order within an entry");
    }
    assert_eq!(ids.len(), 6, "every task claimed once: {claimed:?}");
    assert_eq!(claimed[0].len(), 2);
    // a's two oldest (its own), then b: its own and both shared ones (older than a's third),
    // so c finds nothing and a's second entry gets its last task.
    let lens: Vec<usize> = claimed.iter().map(Vec::len).collect();
    assert_eq!(lens, [2, 3, 0, 1, 0]);

    // Only targeted tasks and distinct hosts (a backend may claim them in one statement).
    let mut ids = Vec::new();
    for (i, h) in [&b, &a, &a, &b, &a].into_iter().enumerate() {
        let mut t = task(TaskType::Health).for_host(h.clone());
        t.priority = i32::from(i == 4);
        let at = t0() + Duration::seconds(100 + i as i64);
        ids.push(store.enqueue_task(&t, at).await.unwrap().task.id);
    }
    let later = t0() + Duration::seconds(200);
    let claims = [(a.clone(), 2), (b.clone(), 10), (c.clone(), 5)];
    let claimed = store
        .claim_tasks_for_hosts(&claims, lease(), later)
        .await
        .unwrap();
    let got: Vec<Vec<_>> = claimed
        .iter()
        .map(|ts| ts.iter().map(|t| t.id).collect())
        .collect();
    // a: the priority-1 task first, then its oldest; b: both of its own, oldest first.
    assert_eq!(
        got,
        vec![vec![ids[4], ids[1]], vec![ids[0], ids[3]], vec![]]
    );
    assert!(claimed
        .iter()
        .flatten()
        .all(|t| t.lease_expires_at == Some(later + lease())));
    let rest = store
        .claim_tasks_for_hosts(&[(a.clone(), 10)], lease(), later)
        .await
        .unwrap();
    assert_eq!(
        rest[0].iter().map(|t| t.id).collect::<Vec<_>>(),
        vec![ids[2]]
    );
    assert!(store
        .claim_tasks_for_hosts(&[], lease(), now)
        .await
        .unwrap()
        .is_empty());
}

/// A stop (or rollback, or failure) cancels the experiment's tasks no agent claimed yet, so
/// a host that was offline does not start the experiment after it was stopped.
pub async fn stopping_an_experiment_cancels_its_unclaimed_tasks(store: SharedStore) {
    let e = created(&store, "stopped early", t0()).await;
    let (a, b) = (host("node-a"), host("node-b"));
    let starts: Vec<NewTask> = [&a, &b]
        .into_iter()
        .map(|h| {
            let mut t = task(TaskType::Experiment).for_host(h.clone());
            t.experiment_id = Some(e.id);
            t
        })
        .collect();
    store
        .transition_experiment(e.id, &ExperimentCommand::Start, &starts, t0())
        .await
        .unwrap();
    let held = store.claim_tasks(&a, 10, lease(), t0()).await.unwrap();
    assert_eq!(held.len(), 1);
    let mut stop = task(TaskType::Experiment).for_host(a.clone());
    stop.experiment_id = Some(e.id);
    let now = t0() + Duration::seconds(5);
    let outcome = store
        .transition_experiment(
            e.id,
            &ExperimentCommand::Stop { reason: None },
            &[stop],
            now,
        )
        .await
        .unwrap();
    let all = store
        .list_tasks(&TaskQuery {
            experiment_id: Some(e.id),
            ..TaskQuery::default()
        })
        .await
        .unwrap()
        .items;
    let by_id = |id| all.iter().find(|t| t.id == id).unwrap().clone();
    // a's start was claimed: it stays with a (a's stop task will end it).
    assert_eq!(by_id(held[0].id).status, TaskStatus::Assigned);
    // b's start was never claimed: cancelled with the reason.
    let b_start = all.iter().find(|t| t.host_id.as_ref() == Some(&b)).unwrap();
    assert_eq!(b_start.status, TaskStatus::Failed);
    assert_eq!(b_start.finished_at, Some(now));
    assert!(b_start.error.as_deref().unwrap().contains("stopped"));
    // The stop task itself is queued.
    assert_eq!(by_id(outcome.tasks[0].id).status, TaskStatus::Pending);
    assert!(store
        .claim_tasks(&b, 10, lease(), now)
        .await
        .unwrap()
        .is_empty());
}

/// An agent that died while a long-poll answer was in flight never learns of the tasks in
/// it; when its heartbeat lists what it holds, the others go back to the queue (or fail
/// once they used their attempts), except those claimed too recently to have arrived.
pub async fn tasks_an_agent_does_not_hold_go_back_to_the_queue(store: SharedStore) {
    let a = host("node-a");
    let mut ids = Vec::new();
    for max_attempts in [3, 1, 3] {
        let mut t = task(TaskType::Health).for_host(a.clone());
        t.max_attempts = max_attempts;
        ids.push(store.enqueue_task(&t, t0()).await.unwrap().task.id);
    }
    let claimed = store.claim_tasks(&a, 10, lease(), t0()).await.unwrap();
    assert_eq!(claimed.len(), 3);
    let late = store
        .enqueue_task(&task(TaskType::Health).for_host(a.clone()), t0())
        .await
        .unwrap()
        .task
        .id;
    let now = t0() + Duration::seconds(40);
    assert_eq!(
        store.claim_tasks(&a, 10, lease(), now).await.unwrap().len(),
        1
    );

    // The agent holds the first task only; the late one was claimed after the cutoff.
    let released = store
        .release_unheld_tasks(&a, &[ids[0]], t0() + Duration::seconds(10), now)
        .await
        .unwrap();
    let by_id: BTreeMap<_, _> = released.iter().map(|t| (t.id, t.clone())).collect();
    assert_eq!(by_id.len(), 2, "{released:?}");
    let again = &by_id[&ids[2]];
    assert_eq!(again.status, TaskStatus::Pending);
    assert_eq!(again.assigned_to, None);
    assert!(again.error.as_deref().unwrap().contains("node-a"));
    let spent = &by_id[&ids[1]];
    assert_eq!(spent.status, TaskStatus::Failed);
    assert_eq!(spent.finished_at, Some(now));
    assert_eq!(
        store.get_task(ids[0]).await.unwrap().status,
        TaskStatus::Assigned
    );
    assert_eq!(
        store.get_task(late).await.unwrap().status,
        TaskStatus::Assigned
    );
    // The released task is claimable again.
    let back = store.claim_tasks(&a, 10, lease(), now).await.unwrap();
    assert_eq!(back.iter().map(|t| t.id).collect::<Vec<_>>(), vec![ids[2]]);
    assert_eq!(back[0].attempts, 2);
}

/// Analyses: one claim per (experiment, seq) across concurrent callers; an unfinished claim
/// older than the stale cutoff can be taken over, a finished one never; the final analysis
/// lists first. The analysis spec round-trips with the experiment.
pub async fn one_runner_claims_each_analysis_and_a_dead_ones_claim_is_taken_over(
    store: SharedStore,
) {
    let e = created(&store, "analysed", t0()).await;
    assert_eq!(
        store.get_experiment(e.id).await.unwrap().analysis,
        e.analysis
    );
    let now = t0() + Duration::seconds(60);
    let stale = now - Duration::seconds(300);
    let claims = futures::future::join_all((0..8).map(|i| {
        let store = store.clone();
        async move {
            store
                .claim_analysis(e.id, 1, false, &format!("replica-{i}"), now, stale)
                .await
                .unwrap()
        }
    }))
    .await;
    assert_eq!(claims.iter().filter(|c| **c).count(), 1, "{claims:?}");

    // Unfinished, but not stale yet: nobody else gets it.
    let later = now + Duration::seconds(10);
    assert!(!store
        .claim_analysis(
            e.id,
            1,
            false,
            "late",
            later,
            later - Duration::seconds(300)
        )
        .await
        .unwrap());
    // Its runner died: after the stale cutoff another replica takes it over.
    let much_later = now + Duration::seconds(400);
    assert!(store
        .claim_analysis(
            e.id,
            1,
            false,
            "rescuer",
            much_later,
            much_later - Duration::seconds(300)
        )
        .await
        .unwrap());
    store
        .finish_analysis(
            e.id,
            1,
            "inconclusive",
            &json!({"decision": "inconclusive"}),
            much_later,
        )
        .await
        .unwrap();
    // Finished: never claimed again.
    let far = much_later + Duration::seconds(4000);
    assert!(!store
        .claim_analysis(e.id, 1, false, "again", far, far)
        .await
        .unwrap());

    assert!(store
        .claim_analysis(e.id, crate::FINAL_ANALYSIS_SEQ, true, "final", far, stale)
        .await
        .unwrap());
    store
        .finish_analysis(
            e.id,
            crate::FINAL_ANALYSIS_SEQ,
            "promote",
            &json!({"decision": "promote"}),
            far,
        )
        .await
        .unwrap();
    assert!(store
        .claim_analysis(e.id, 2, false, "two", far, stale)
        .await
        .unwrap());

    let list = store.list_analyses(e.id, 10).await.unwrap();
    let order: Vec<(i64, bool, Option<&str>)> = list
        .iter()
        .map(|a| (a.seq, a.is_final, a.decision.as_deref()))
        .collect();
    assert_eq!(
        order,
        vec![
            (crate::FINAL_ANALYSIS_SEQ, true, Some("promote")),
            (2, false, None),
            (1, false, Some("inconclusive")),
        ]
    );
    assert_eq!(list[2].runner, "rescuer");
    assert_eq!(list[2].finished_at, Some(much_later));
    assert_eq!(list[0].result, Some(json!({"decision": "promote"})));
}

/// Pipeline deployments: stored whole, replaced by id, listed newest first, 404 when unknown.
pub async fn pipeline_deployments_round_trip_update_and_list_newest_first(store: SharedStore) {
    use phoenix_core::{DeploymentId, DeploymentStatus, PipelineDeployment, TaskId};
    let make = |name: &str, at: DateTime<Utc>| PipelineDeployment {
        id: DeploymentId::new(),
        name: name.into(),
        pipeline: "topk".into(),
        parameters: json!({"k": 20}),
        target_hosts: vec![host("node-a"), host("node-b")],
        target_selector: [("cluster".to_string(), "eu-1".to_string())].into(),
        status: DeploymentStatus::Active,
        tasks: [(host("node-a"), TaskId::new())].into(),
        withdraw_tasks: Default::default(),
        created_at: at,
        updated_at: at,
    };
    let first = make("first", t0());
    let mut second = make("second", t0() + Duration::seconds(1));
    store.save_pipeline_deployment(&first).await.unwrap();
    store.save_pipeline_deployment(&second).await.unwrap();
    assert_eq!(
        store.get_pipeline_deployment(first.id).await.unwrap(),
        first
    );

    second.status = DeploymentStatus::Withdrawn;
    second.withdraw_tasks = [(host("node-b"), TaskId::new())].into();
    second.updated_at = t0() + Duration::seconds(9);
    store.save_pipeline_deployment(&second).await.unwrap();
    assert_eq!(
        store.get_pipeline_deployment(second.id).await.unwrap(),
        second
    );

    let page = store.list_pipeline_deployments(10, 0).await.unwrap();
    assert_eq!(page.total, 2);
    let names: Vec<&str> = page.items.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, vec!["second", "first"]);
    let page = store.list_pipeline_deployments(1, 1).await.unwrap();
    assert_eq!(page.items[0].name, "first");

    assert!(matches!(
        store.get_pipeline_deployment(DeploymentId::new()).await,
        Err(crate::StoreError::NotFound { .. })
    ));
}

// ---- real-time topic events ----

pub async fn topic_events_are_numbered_per_topic_and_listed_after_a_seq(store: SharedStore) {
    use crate::NewTopicEvent;
    assert_eq!(store.topic_last_seq("fleet").await.unwrap(), 0);
    assert!(store
        .append_topic_events(&[], t0())
        .await
        .unwrap()
        .is_empty());
    let appended = store
        .append_topic_events(
            &[
                NewTopicEvent::new("fleet", "agent_online", json!({"host_id": "a"})),
                NewTopicEvent::new("experiments", "created", json!({"n": 1})),
                NewTopicEvent::new("fleet", "agent_online", json!({"host_id": "b"})),
            ],
            t0(),
        )
        .await
        .unwrap();
    let numbers: Vec<(&str, i64)> = appended.iter().map(|e| (e.topic.as_str(), e.seq)).collect();
    assert_eq!(numbers, [("fleet", 1), ("experiments", 1), ("fleet", 2)]);
    let more = store
        .append_topic_events(
            &[NewTopicEvent::new(
                "fleet",
                "agent_offline",
                json!({"host_id": "a", "note": "ünïcode ✓"}),
            )],
            t0() + Duration::seconds(1),
        )
        .await
        .unwrap();
    assert_eq!(more[0].seq, 3);
    assert_eq!(store.topic_last_seq("fleet").await.unwrap(), 3);
    assert_eq!(store.topic_last_seq("experiments").await.unwrap(), 1);

    // What a client that saw seq 1 missed, exactly as handed out live.
    let missed = store.list_topic_events("fleet", 1, 100).await.unwrap();
    assert_eq!(missed, vec![appended[2].clone(), more[0].clone()]);
    assert_eq!(
        store.list_topic_events("fleet", 0, 2).await.unwrap(),
        vec![appended[0].clone(), appended[2].clone()]
    );
    assert!(store
        .list_topic_events("fleet", 3, 100)
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .list_topic_events("kpis/none", 0, 100)
        .await
        .unwrap()
        .is_empty());
}

pub async fn concurrent_appends_to_one_topic_get_distinct_gap_free_numbers(store: SharedStore) {
    use crate::NewTopicEvent;
    let mut handles = Vec::new();
    for writer in 0..8 {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..25 {
                let batch = [
                    NewTopicEvent::new("experiments", "t", json!({"writer": writer, "i": i})),
                    NewTopicEvent::new(format!("kpis/{writer}"), "t", json!({"i": i})),
                ];
                let out = store.append_topic_events(&batch, t0()).await.unwrap();
                seqs.push(out[0].seq);
            }
            seqs
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        let seqs = h.await.unwrap();
        // One writer's events are numbered in the order it appended them.
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
        all.extend(seqs);
    }
    all.sort_unstable();
    assert_eq!(all, (1..=200).collect::<Vec<i64>>());
    let listed = store
        .list_topic_events("experiments", 0, 1000)
        .await
        .unwrap();
    assert_eq!(
        listed.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=200).collect::<Vec<i64>>()
    );
    for writer in 0..8 {
        assert_eq!(
            store
                .topic_last_seq(&format!("kpis/{writer}"))
                .await
                .unwrap(),
            25
        );
    }
}

pub async fn topic_event_sweep_keeps_recent_events_and_the_numbering(store: SharedStore) {
    use crate::NewTopicEvent;
    let old = t0();
    let new = t0() + Duration::days(40);
    store
        .append_topic_events(&[NewTopicEvent::new("fleet", "a", json!({}))], old)
        .await
        .unwrap();
    store
        .append_topic_events(&[NewTopicEvent::new("fleet", "b", json!({}))], new)
        .await
        .unwrap();
    assert_eq!(
        store
            .sweep_topic_events(t0() + Duration::days(30))
            .await
            .unwrap(),
        1
    );
    let left = store.list_topic_events("fleet", 0, 10).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!((left[0].seq, left[0].kind.as_str()), (2, "b"));
    let next = store
        .append_topic_events(&[NewTopicEvent::new("fleet", "c", json!({}))], new)
        .await
        .unwrap();
    assert_eq!(next[0].seq, 3);
}

pub async fn agent_presence_flips_are_reported_once(store: SharedStore) {
    let a = host("node-a");
    let quiet = host("node-quiet");
    store.enroll_agent(&a, "h", t0()).await.unwrap();
    store.enroll_agent(&quiet, "h", t0()).await.unwrap();
    // Nobody has heartbeated: nothing to announce (enrolled but never seen is not "offline").
    assert!(store
        .update_agent_presence(t0() - Duration::minutes(5), t0())
        .await
        .unwrap()
        .is_empty());
    store
        .record_heartbeat(&a, &Heartbeat::default(), t0())
        .await
        .unwrap();
    let online_since = |now: DateTime<Utc>| now - Duration::minutes(5);
    let now = t0() + Duration::seconds(1);
    assert_eq!(
        store
            .update_agent_presence(online_since(now), now)
            .await
            .unwrap(),
        vec![(a.clone(), true)]
    );
    // Reported once, whoever asks next.
    assert!(store
        .update_agent_presence(online_since(now), now)
        .await
        .unwrap()
        .is_empty());
    // Silent past the window: offline, once.
    let later = t0() + Duration::minutes(6);
    assert_eq!(
        store
            .update_agent_presence(online_since(later), later)
            .await
            .unwrap(),
        vec![(a.clone(), false)]
    );
    assert!(store
        .update_agent_presence(online_since(later), later)
        .await
        .unwrap()
        .is_empty());
    // Back: online again; revoked: offline.
    store
        .record_heartbeat(&a, &Heartbeat::default(), later)
        .await
        .unwrap();
    assert_eq!(
        store
            .update_agent_presence(online_since(later), later)
            .await
            .unwrap(),
        vec![(a.clone(), true)]
    );
    store.revoke_agent(&a, later).await.unwrap();
    assert_eq!(
        store
            .update_agent_presence(online_since(later), later)
            .await
            .unwrap(),
        vec![(a, false)]
    );
}

// ---- label statistics and per-host latest KPIs ----

pub async fn label_stats_keep_each_hosts_latest_and_are_swept_with_kpis(store: SharedStore) {
    let (a, b) = (host("node-a"), host("node-b"));
    let report = |n: u64| json!({"breakdown_labels": ["namespace"], "metrics": [{"metric": "m", "series": n}]});
    store
        .put_label_stats(&a, t0() + Duration::seconds(60), &report(1), t0())
        .await
        .unwrap();
    store
        .put_label_stats(
            &a,
            t0() + Duration::seconds(120),
            &report(2),
            t0() + Duration::seconds(2),
        )
        .await
        .unwrap();
    // A replayed older interval does not replace the newer report.
    store
        .put_label_stats(
            &a,
            t0() + Duration::seconds(60),
            &report(3),
            t0() + Duration::seconds(3),
        )
        .await
        .unwrap();
    store
        .put_label_stats(
            &b,
            t0() + Duration::seconds(60),
            &report(7),
            t0() + Duration::seconds(100),
        )
        .await
        .unwrap();
    let all = store.list_label_stats(t0()).await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].host_id, a);
    assert_eq!(all[0].stats, report(2));
    assert_eq!(all[0].interval_end, t0() + Duration::seconds(120));
    assert_eq!(all[0].received_at, t0() + Duration::seconds(2));
    assert_eq!(all[1].stats, report(7));
    // `since` filters by reception; the sweep deletes what the KPI retention deletes.
    let recent = store
        .list_label_stats(t0() + Duration::seconds(50))
        .await
        .unwrap();
    assert_eq!(recent.len(), 1);
    assert_eq!(recent[0].host_id, b);
    store
        .sweep_telemetry(t0() + Duration::seconds(50))
        .await
        .unwrap();
    let left = store.list_label_stats(t0()).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].host_id, b);
}

pub async fn latest_kpi_batch_per_host_by_variant_and_experiment(store: SharedStore) {
    let (e1, e2) = (ExperimentId::new(), ExperimentId::new());
    let (a, b) = (host("node-a"), host("node-b"));
    let mut steady = kpi(e1, Variant::Baseline, 300, 500, 500);
    steady.experiment_id = None;
    store
        .insert_kpi_batches(
            &a,
            &[
                kpi(e1, Variant::Baseline, 60, 1000, 1000),
                kpi(e1, Variant::Candidate, 60, 1000, 200),
                kpi(e1, Variant::Candidate, 120, 1000, 150),
                steady.clone(),
            ],
            t0(),
        )
        .await
        .unwrap();
    store
        .insert_kpi_batches(
            &b,
            &[
                kpi(e1, Variant::Candidate, 60, 900, 100),
                kpi(e2, Variant::Candidate, 240, 800, 80),
            ],
            t0(),
        )
        .await
        .unwrap();
    let latest = store
        .latest_kpi_batches_by_host(Variant::Candidate, Some(e1), t0())
        .await
        .unwrap();
    let got: Vec<(String, u64)> = latest
        .iter()
        .map(|k| (k.host_id.to_string(), k.batch.values.output_series))
        .collect();
    assert_eq!(
        got,
        [("node-a".to_string(), 150), ("node-b".to_string(), 100)]
    );
    // Without an experiment: each host's newest batch of the variant, whatever it belongs to.
    let any = store
        .latest_kpi_batches_by_host(Variant::Candidate, None, t0())
        .await
        .unwrap();
    assert_eq!(any[1].batch.experiment_id, Some(e2));
    let baseline = store
        .latest_kpi_batches_by_host(Variant::Baseline, None, t0())
        .await
        .unwrap();
    assert_eq!(baseline.len(), 1);
    assert_eq!(baseline[0].batch, steady);
    assert!(store
        .latest_kpi_batches_by_host(Variant::Baseline, None, t0() + Duration::seconds(1))
        .await
        .unwrap()
        .is_empty());
}
