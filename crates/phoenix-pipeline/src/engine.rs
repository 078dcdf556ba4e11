//! The engine: one thread that feeds every input batch to each pipeline (shadow A/B),
//! measures every variant, exports the live one (or all, tagged `phoenix_variant`), and
//! swaps configurations between batches.
//!
//! Batches, swaps and interval ends travel on one ordered channel, so a swap takes effect
//! exactly between two batches: no batch is processed by both configurations or by none.

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::config::ValidatedConfig;
use crate::exporter::Exporter;
use crate::kpi::{KpiMeter, VariantKpis};
use crate::labelstats::LabelStatsConfig;
use crate::model::{Batch, SeriesId};
use crate::pipeline::Pipeline;
use crate::processor::parse_selectors;
use crate::selector::Selector;
use crate::telemetry::Telemetry;

/// The label marking each variant's series when all variants are exported.
pub const VARIANT_LABEL: &str = "phoenix_variant";

/// Batches waiting for the engine at most (receivers wait when it is full). A decoded
/// batch of a 2,000-series remote write request of the k8s profile takes about 0.4 MB
/// (72-byte series and their label strings, 109 bytes on average), and under sustained
/// load the queue stays full, so this bounds the agent's memory more than anything else in
/// a forwarding job (peak RSS fell by about 36 MiB from 64 to 16 batches in
/// `bench-vs-vmagent.sh`, when a batch took 0.8 MB). 16 keeps a few batches per receiver
/// connection ready for the engine thread, the bottleneck then.
pub const ENGINE_QUEUE_CAPACITY_BATCHES: usize = 16;

/// The pipelines the engine runs and how their output is exported.
#[derive(Debug)]
pub struct EnginePipelines {
    pipelines: Vec<Pipeline>,
    live: usize,
    export_all_tagged: bool,
    protect: Vec<Selector>,
    label_stats: Option<LabelStatsConfig>,
}

impl EnginePipelines {
    /// Builds from explicit parts; `live` must index `pipelines`.
    pub fn new(
        pipelines: Vec<Pipeline>,
        live: usize,
        export_all_tagged: bool,
        protect: Vec<Selector>,
    ) -> Self {
        let live = live.min(pipelines.len().saturating_sub(1));
        Self {
            pipelines,
            live,
            export_all_tagged,
            protect,
            label_stats: None,
        }
    }

    /// Also collects label statistics of the input (reported with the interval's KPIs).
    pub fn with_label_stats(mut self, config: LabelStatsConfig) -> Self {
        self.label_stats = Some(config);
        self
    }

    /// Takes the pipelines out of a validated configuration. The KPI protect set is the
    /// union of the pipelines' `protect` selectors.
    pub fn from_validated(validated: ValidatedConfig) -> Self {
        let ValidatedConfig {
            config,
            pipelines,
            live,
        } = validated;
        // Split mode: this host runs only its assigned pipeline.
        let pipelines: Vec<Pipeline> = if config.shadow.split.is_some() {
            pipelines.into_iter().filter(|p| p.name() == live).collect()
        } else {
            pipelines
        };
        let live_index = pipelines.iter().position(|p| p.name() == live).unwrap_or(0);
        let mut sources: Vec<String> = config
            .pipelines
            .values()
            .flat_map(|p| p.protect.iter().cloned())
            .collect();
        sources.sort();
        sources.dedup();
        // Already validated when the pipelines were built.
        let protect = parse_selectors("protect", &sources, &mut Vec::new());
        Self::new(
            pipelines,
            live_index,
            config.shadow.export_all_tagged,
            protect,
        )
    }

    fn names(&self) -> Vec<String> {
        self.pipelines
            .iter()
            .map(|p| p.name().to_string())
            .collect()
    }
}

/// Receives the KPIs of each finished interval (the agent issue wires it to the API).
pub trait KpiSink: Send + Sync + std::fmt::Debug {
    /// Publishes one interval's KPIs, one entry per variant.
    fn publish(&self, kpis: &[VariantKpis]);
}

/// A sink that logs KPIs and keeps the last ones in [`Telemetry`] for `/metrics`.
#[derive(Debug)]
pub struct TelemetryKpiSink(pub Arc<Telemetry>);

impl KpiSink for TelemetryKpiSink {
    fn publish(&self, kpis: &[VariantKpis]) {
        for k in kpis {
            tracing::info!(
                variant = %k.variant,
                input_series = k.input_series,
                output_series = k.output_series,
                reduction_percent = k.reduction_percent,
                protected_coverage_percent = k.protected_coverage_percent(),
                max_relative_error = k.max_relative_error,
                ns_per_sample = k.ns_per_sample,
                "interval kpis"
            );
        }
        self.0.set_kpis(kpis.to_vec());
    }
}

enum Message {
    Batch(Batch, Vec<SeriesId>),
    Swap(Box<EnginePipelines>, oneshot::Sender<()>),
    FinishInterval(oneshot::Sender<Vec<VariantKpis>>),
    Flush(oneshot::Sender<()>),
}

/// The engine is gone (its thread ended).
#[derive(Debug, thiserror::Error)]
#[error("the pipeline engine has stopped")]
pub struct EngineStopped;

/// A handle to send work to the engine; cheap to clone.
#[derive(Debug, Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Message>,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Batch(..) => "Batch",
            Self::Swap(..) => "Swap",
            Self::FinishInterval(_) => "FinishInterval",
            Self::Flush(_) => "Flush",
        })
    }
}

impl EngineHandle {
    /// Queues a batch (waits while the engine is busy).
    pub async fn send_batch(&self, batch: Batch) -> Result<(), EngineStopped> {
        self.send_batch_with_anomalies(batch, Vec::new()).await
    }

    /// Queues a batch with the ids of series known to be anomalous in it (simulator).
    pub async fn send_batch_with_anomalies(
        &self,
        batch: Batch,
        anomalous: Vec<SeriesId>,
    ) -> Result<(), EngineStopped> {
        self.tx
            .send(Message::Batch(batch, anomalous))
            .await
            .map_err(|_| EngineStopped)
    }

    /// Replaces the pipelines between two batches; returns once the swap happened.
    pub async fn swap(&self, pipelines: EnginePipelines) -> Result<(), EngineStopped> {
        let (reply, done) = oneshot::channel();
        self.tx
            .send(Message::Swap(Box::new(pipelines), reply))
            .await
            .map_err(|_| EngineStopped)?;
        done.await.map_err(|_| EngineStopped)
    }

    /// Ends the current KPI interval now and returns its KPIs (also published).
    pub async fn finish_interval(&self) -> Result<Vec<VariantKpis>, EngineStopped> {
        let (reply, done) = oneshot::channel();
        self.tx
            .send(Message::FinishInterval(reply))
            .await
            .map_err(|_| EngineStopped)?;
        done.await.map_err(|_| EngineStopped)
    }

    /// Returns once every batch queued before the call has been processed and exported.
    pub async fn flush(&self) -> Result<(), EngineStopped> {
        let (reply, done) = oneshot::channel();
        self.tx
            .send(Message::Flush(reply))
            .await
            .map_err(|_| EngineStopped)?;
        done.await.map_err(|_| EngineStopped)
    }
}

struct Engine {
    pipelines: EnginePipelines,
    meter: KpiMeter,
    exporters: Vec<Arc<dyn Exporter>>,
    telemetry: Arc<Telemetry>,
    sink: Arc<dyn KpiSink>,
    kpi_interval: Duration,
    interval_started: Instant,
}

fn new_meter(pipelines: &EnginePipelines) -> KpiMeter {
    let names = pipelines.names();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let meter = KpiMeter::new(&refs, pipelines.protect.clone());
    match &pipelines.label_stats {
        Some(config) => meter.with_label_stats(config.clone()),
        None => meter,
    }
}

impl Engine {
    fn process(&mut self, batch: Batch, anomalous: &[SeriesId]) {
        Telemetry::add(&self.telemetry.engine_batches_total, 1);
        self.meter.record_input(&batch, anomalous);
        let count = self.pipelines.pipelines.len();
        let mut remaining = Some(batch);
        for index in 0..count {
            // The last pipeline takes the batch itself; the others a copy.
            let input = if index + 1 == count {
                remaining.take().unwrap_or_default()
            } else {
                remaining.as_ref().cloned().unwrap_or_default()
            };
            let started = Instant::now();
            let pipeline = &mut self.pipelines.pipelines[index];
            let output = pipeline.process(input);
            let elapsed = started.elapsed();
            let name = pipeline.name().to_string();
            self.meter.record_output(index, &output, elapsed);
            if self.pipelines.export_all_tagged {
                let tag = [(VARIANT_LABEL, name.as_str())];
                for exporter in &self.exporters {
                    exporter.export(&output.series, &tag);
                }
            } else if index == self.pipelines.live {
                for exporter in &self.exporters {
                    exporter.export(&output.series, &[]);
                }
            }
        }
    }

    fn finish_interval(&mut self) -> Vec<VariantKpis> {
        let processors: Vec<Vec<_>> = self
            .pipelines
            .pipelines
            .iter()
            .map(|p| {
                p.processor_stats()
                    .map(|(i, kind, stats)| (i, kind.to_string(), stats.total()))
                    .collect()
            })
            .collect();
        for p in &mut self.pipelines.pipelines {
            p.reset_stats();
        }
        let kpis = self.meter.finish_interval(&processors);
        self.sink.publish(&kpis);
        self.interval_started = Instant::now();
        kpis
    }

    fn run(mut self, mut rx: mpsc::Receiver<Message>) {
        while let Some(message) = rx.blocking_recv() {
            match message {
                Message::Batch(batch, anomalous) => {
                    self.process(batch, &anomalous);
                    if self.interval_started.elapsed() >= self.kpi_interval {
                        self.finish_interval();
                    }
                }
                Message::Swap(pipelines, reply) => {
                    // Close the old configuration's interval so KPIs never mix the two.
                    self.finish_interval();
                    self.pipelines = *pipelines;
                    self.meter = new_meter(&self.pipelines);
                    Telemetry::add(&self.telemetry.engine_swaps_total, 1);
                    let _ = reply.send(());
                }
                Message::FinishInterval(reply) => {
                    let _ = reply.send(self.finish_interval());
                }
                Message::Flush(reply) => {
                    let _ = reply.send(());
                }
            }
        }
    }
}

/// Starts the engine on its own thread.
pub fn spawn(
    pipelines: EnginePipelines,
    exporters: Vec<Arc<dyn Exporter>>,
    telemetry: Arc<Telemetry>,
    sink: Arc<dyn KpiSink>,
    kpi_interval: Duration,
) -> std::io::Result<(EngineHandle, thread::JoinHandle<()>)> {
    let (tx, rx) = mpsc::channel(ENGINE_QUEUE_CAPACITY_BATCHES);
    let engine = Engine {
        meter: new_meter(&pipelines),
        pipelines,
        exporters,
        telemetry,
        sink,
        kpi_interval,
        interval_started: Instant::now(),
    };
    let join = thread::Builder::new()
        .name("phoenix-engine".into())
        .spawn(move || engine.run(rx))?;
    Ok((EngineHandle { tx }, join))
}
