//! What the services publish to the hub, and the loops that publish on their own: KPI
//! summaries (gathered per experiment, per variant and interval, flushed every second, not one
//! event per agent batch), the fleet's online/offline flips (a periodic set-based look at the
//! agents' last heartbeats, never one event per heartbeat), cross-replica notices and
//! retention. Every event is stored first (numbered in its topic), then handed to the hub.
//! A failure to publish is logged and never fails the operation that caused it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use phoenix_core::{
    Clock, EventKind, Experiment, ExperimentEvent, ExperimentId, HostId, KpiBatch, Variant,
};
use phoenix_store::{NewTopicEvent, SharedStore};

use super::Hub;
use crate::app::AppState;

/// How often the fleet's online/offline flips are looked for.
pub const FLEET_CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// How often KPI summaries are published.
pub const KPI_FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// How often stored events past retention are deleted.
const RETENTION_SWEEP_INTERVAL: Duration = Duration::from_secs(600);

/// Sums of the KPI batches received for one interval of one variant.
#[derive(Debug, Default, Clone)]
struct KpiSum {
    batches: u64,
    interval_end: Option<DateTime<Utc>>,
    input_series: u64,
    output_series: u64,
    input_samples: u64,
    output_samples: u64,
    input_bytes: u64,
    output_bytes: u64,
    protected_series_in: u64,
    protected_series_out: u64,
    anomalies_in: u64,
    anomalies_kept: u64,
    max_total_error: f64,
}

type KpiWindow = BTreeMap<(DateTime<Utc>, Variant), KpiSum>;

#[derive(Debug)]
pub struct Publisher {
    pub hub: Hub,
    store: SharedStore,
    clock: Arc<dyn Clock>,
    kpis: Mutex<BTreeMap<ExperimentId, KpiWindow>>,
}

fn experiment_topic(id: ExperimentId) -> String {
    format!("experiments/{id}")
}

impl Publisher {
    pub fn new(store: SharedStore, clock: Arc<dyn Clock>) -> Self {
        Self {
            hub: Hub::new(store.clone()),
            store,
            clock,
            kpis: Mutex::new(BTreeMap::new()),
        }
    }

    /// Store the events (numbered in their topics) and hand them to this process's hub.
    pub async fn publish(&self, events: Vec<NewTopicEvent>) {
        if events.is_empty() {
            return;
        }
        match self
            .store
            .append_topic_events(&events, self.clock.now())
            .await
        {
            Ok(stored) => self.hub.published(stored),
            Err(e) => tracing::warn!(error = %e, events = events.len(),
                "cannot store real-time events; WebSocket clients will not see them"),
        }
    }

    /// A created, updated or phase-changed experiment, on `experiments` and its own topic.
    pub async fn experiment_event(&self, exp: &Experiment, event: &ExperimentEvent) {
        let kind = match event.kind {
            EventKind::PhaseChanged => "transition",
            other => other.as_str(),
        };
        let data = json!({
            "experiment": {
                "id": exp.id,
                "name": exp.name,
                "phase": exp.phase,
                "promoted": exp.promoted,
                "owner": exp.owner,
            },
            "event": event,
        });
        self.publish(vec![
            NewTopicEvent::new("experiments", kind, data.clone()),
            NewTopicEvent::new(experiment_topic(exp.id), kind, data),
        ])
        .await;
    }

    pub async fn experiment_deleted(&self, id: ExperimentId) {
        let data = json!({ "experiment_id": id });
        self.publish(vec![
            NewTopicEvent::new("experiments", "deleted", data.clone()),
            NewTopicEvent::new(experiment_topic(id), "deleted", data),
        ])
        .await;
    }

    /// An interim analysis (`analysis`) or the final one (`decision`), on the experiment's
    /// topic.
    pub async fn analysis(&self, id: ExperimentId, seq: i64, is_final: bool, result: &Value) {
        let kind = if is_final { "decision" } else { "analysis" };
        let data = json!({ "experiment_id": id, "analysis_seq": seq, "result": result });
        self.publish(vec![NewTopicEvent::new(experiment_topic(id), kind, data)])
            .await;
    }

    pub async fn agent_enrolled(&self, host: &HostId) {
        self.publish(vec![NewTopicEvent::new(
            "fleet",
            "agent_enrolled",
            json!({ "host_id": host }),
        )])
        .await;
    }

    pub async fn agent_revoked(&self, host: &HostId) {
        self.publish(vec![NewTopicEvent::new(
            "fleet",
            "agent_revoked",
            json!({ "host_id": host }),
        )])
        .await;
    }

    /// Add stored KPI batches to the next summaries (published by [`Publisher::flush_kpis`]).
    pub fn kpis_received(&self, batches: &[KpiBatch]) {
        let mut kpis = self.kpis.lock();
        for b in batches {
            let Some(id) = b.experiment_id else { continue };
            let sum = kpis
                .entry(id)
                .or_default()
                .entry((b.interval_start, b.variant))
                .or_default();
            let v = &b.values;
            sum.batches += 1;
            sum.interval_end = sum.interval_end.max(Some(b.interval_end));
            sum.input_series += v.input_series;
            sum.output_series += v.output_series;
            sum.input_samples += v.input_samples;
            sum.output_samples += v.output_samples;
            sum.input_bytes += v.input_bytes;
            sum.output_bytes += v.output_bytes;
            sum.protected_series_in += v.protected_series_in;
            sum.protected_series_out += v.protected_series_out;
            sum.anomalies_in += v.anomalies_in;
            sum.anomalies_kept += v.anomalies_kept;
            sum.max_total_error = sum.max_total_error.max(v.max_total_error);
        }
    }

    /// One `kpi_summary` event per experiment that received batches since the last flush:
    /// per interval and variant, the sums of what arrived meanwhile (add the summaries of
    /// one interval together for its totals so far).
    pub async fn flush_kpis(&self) {
        let taken = std::mem::take(&mut *self.kpis.lock());
        let events: Vec<NewTopicEvent> = taken
            .into_iter()
            .map(|(id, window)| {
                let intervals: Vec<Value> = window
                    .into_iter()
                    .map(|((start, variant), s)| {
                        let reduction = if s.input_series == 0 {
                            0.0
                        } else {
                            (1.0 - s.output_series as f64 / s.input_series as f64) * 100.0
                        };
                        json!({
                            "interval_start": start,
                            "interval_end": s.interval_end,
                            "variant": variant,
                            "batches": s.batches,
                            "input_series": s.input_series,
                            "output_series": s.output_series,
                            "input_samples": s.input_samples,
                            "output_samples": s.output_samples,
                            "input_bytes": s.input_bytes,
                            "output_bytes": s.output_bytes,
                            "protected_series_in": s.protected_series_in,
                            "protected_series_out": s.protected_series_out,
                            "anomalies_in": s.anomalies_in,
                            "anomalies_kept": s.anomalies_kept,
                            "max_total_error": s.max_total_error,
                            "reduction_percent": reduction,
                        })
                    })
                    .collect();
                NewTopicEvent::new(
                    format!("kpis/{id}"),
                    "kpi_summary",
                    json!({ "experiment_id": id, "intervals": intervals }),
                )
            })
            .collect();
        self.publish(events).await;
    }

    /// Announce agents that came online (first heartbeat, or one after silence) or went
    /// offline (silent for `offline_after`, or revoked). Every replica looks; the store hands
    /// each flip to one of them.
    pub async fn fleet_tick(&self, offline_after: Duration) {
        let now = self.clock.now();
        let since = now - chrono::Duration::from_std(offline_after).unwrap_or_default();
        let flips = match self.store.update_agent_presence(since, now).await {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "cannot look at the fleet's presence");
                return;
            }
        };
        let events = flips
            .into_iter()
            .map(|(host, online)| {
                let kind = if online {
                    "agent_online"
                } else {
                    "agent_offline"
                };
                NewTopicEvent::new("fleet", kind, json!({ "host_id": host }))
            })
            .collect();
        self.publish(events).await;
    }
}

/// The hub's loops; they stop when `shutdown` is cancelled.
pub fn spawn_background(state: &AppState, shutdown: CancellationToken) -> Vec<JoinHandle<()>> {
    let mut handles = Vec::new();

    // Events published by other replicas (PostgreSQL LISTEN/NOTIFY).
    let svc = state.service.clone();
    let stop = shutdown.clone();
    handles.push(tokio::spawn(async move {
        let stream = match svc.store.topic_event_notices().await {
            Ok(Some(s)) => s,
            Ok(None) => return,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for other replicas' events");
                return;
            }
        };
        tokio::pin!(stream);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                next = stream.next() => match next {
                    Some(notice) => svc.events.hub.notice(notice),
                    None => break,
                },
            }
        }
    }));

    let svc = state.service.clone();
    let stop = shutdown.clone();
    handles.push(tokio::spawn(async move {
        let mut ticker = tokio::time::interval(KPI_FLUSH_INTERVAL);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = ticker.tick() => svc.events.flush_kpis().await,
            }
        }
    }));

    let svc = state.service.clone();
    let offline_after = state.config.agent_offline_after;
    let stop = shutdown.clone();
    handles.push(tokio::spawn(async move {
        let mut ticker = tokio::time::interval(FLEET_CHECK_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = ticker.tick() => svc.events.fleet_tick(offline_after).await,
            }
        }
    }));

    let svc = state.service.clone();
    let retention = state.config.telemetry_retention;
    let stop = shutdown;
    handles.push(tokio::spawn(async move {
        let mut ticker = tokio::time::interval(RETENTION_SWEEP_INTERVAL);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = ticker.tick() => {}
            }
            let before =
                svc.clock.now() - chrono::Duration::from_std(retention).unwrap_or_default();
            match svc.store.sweep_topic_events(before).await {
                Ok(n) if n > 0 => tracing::info!(deleted = n, "swept old real-time events"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "real-time event retention sweep failed"),
            }
        }
    }));
    handles
}
