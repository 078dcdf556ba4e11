//! The pipeline supervisor: runs the engine with the base file's receivers and exporters,
//! lays out the pipelines the control plane asks for (steady state, an experiment's
//! baseline and candidate in shadow or split mode, a promoted candidate), swaps them
//! between batches, closes KPI intervals on its own clock, and starts and stops the load
//! simulator.
//!
//! The engine is spawned with an interval it never reaches: every KPI interval is closed
//! here (tick or swap), so each one is attributed to the layout that produced it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use phoenix_core::{ExperimentId, KpiBatch, Variant};
use phoenix_pipeline::config::{AgentConfig, ConfigErrors, PipelineConfig};
use phoenix_pipeline::engine::{self, EngineHandle, EnginePipelines};
use phoenix_pipeline::exporter::{Exporter, ExpositionExporter};
use phoenix_pipeline::kpi::VariantKpis;
use phoenix_pipeline::pipeline::Pipeline;
use phoenix_pipeline::processor::parse_selectors;
use phoenix_pipeline::receiver::{remote_write_router, RemoteWriteState};
use phoenix_pipeline::simulator::{Simulator, SimulatorConfig};
use phoenix_pipeline::telemetry::Telemetry;

use crate::diskqueue::DiskQueue;
use crate::kpi::{self, ChannelKpiSink, KpiContext};
use crate::metrics::AgentMetrics;
use crate::rwbuffer::{self, BufferedRemoteWrite, RemoteWriteBufferStats};
use crate::state::RunVariants;

/// An interval the engine never reaches on its own.
const NEVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Name of the pipeline a promotion or a plain deployment makes live.
pub const PROMOTED_PIPELINE: &str = "live";

/// Why the supervisor could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// A pipeline configuration is invalid.
    #[error("invalid pipeline configuration: {0}")]
    Config(String),
    /// The base pipeline file is invalid.
    #[error("pipeline file: {0}")]
    Base(#[from] ConfigErrors),
    /// A listener could not be bound.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The address.
        address: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The engine stopped.
    #[error("{0}")]
    Stopped(#[from] engine::EngineStopped),
    /// The engine thread could not start.
    #[error("cannot start the engine thread: {0}")]
    Thread(std::io::Error),
    /// A disk buffer could not be opened.
    #[error("{0}")]
    Queue(#[from] crate::diskqueue::QueueError),
}

/// What the engine should run.
#[derive(Debug, Clone, PartialEq)]
pub enum Layout {
    /// Outside experiments: named pipelines, one live.
    Steady {
        /// The pipelines.
        pipelines: BTreeMap<String, PipelineConfig>,
        /// The exported one.
        live: String,
    },
    /// An experiment: baseline and candidate.
    Experiment {
        /// The experiment.
        experiment_id: ExperimentId,
        /// Its baseline.
        baseline: PipelineConfig,
        /// Its candidate.
        candidate: PipelineConfig,
        /// Which of them run here.
        variants: RunVariants,
    },
}

impl Layout {
    fn pipelines(&self) -> Vec<(String, &PipelineConfig)> {
        match self {
            Self::Steady { pipelines, .. } => {
                pipelines.iter().map(|(n, p)| (n.clone(), p)).collect()
            }
            Self::Experiment {
                baseline,
                candidate,
                variants,
                ..
            } => match variants {
                RunVariants::Both => vec![
                    ("baseline".into(), baseline),
                    ("candidate".into(), candidate),
                ],
                RunVariants::Baseline => vec![("baseline".into(), baseline)],
                RunVariants::Candidate => vec![("candidate".into(), candidate)],
            },
        }
    }

    fn live(&self) -> String {
        match self {
            Self::Steady { live, .. } => live.clone(),
            Self::Experiment { variants, .. } => match variants {
                RunVariants::Candidate => "candidate".into(),
                _ => "baseline".into(),
            },
        }
    }

    /// Which pipeline is which variant of which experiment.
    pub fn context(&self) -> KpiContext {
        match self {
            Self::Steady { live, .. } => KpiContext {
                experiment_id: None,
                variants: vec![(live.clone(), Variant::Baseline)],
            },
            Self::Experiment { experiment_id, .. } => KpiContext {
                experiment_id: Some(*experiment_id),
                variants: vec![
                    ("baseline".into(), Variant::Baseline),
                    ("candidate".into(), Variant::Candidate),
                ],
            },
        }
    }
}

/// The base pipeline file: receivers, exporters, and the steady-state pipelines.
#[derive(Debug, Clone)]
pub struct Base {
    /// The file as parsed.
    pub config: AgentConfig,
}

impl Base {
    /// No file: no receivers until a load simulation, one passthrough pipeline.
    pub fn empty() -> Self {
        let mut pipelines = BTreeMap::new();
        pipelines.insert("main".to_string(), PipelineConfig::default());
        Self {
            config: AgentConfig {
                receivers: Default::default(),
                pipelines,
                shadow: Default::default(),
                exporters: Default::default(),
            },
        }
    }

    /// Parses and validates a pipeline file. Receivers may be absent (a `loadsim` task
    /// provides input); everything else is validated as in standalone mode.
    pub fn parse(text: &str) -> Result<Self, ConfigErrors> {
        let config = AgentConfig::from_yaml(text)?;
        let mut check = config.clone();
        let no_receivers = check.receivers.otlp.is_none()
            && check.receivers.scrape.is_none()
            && check.receivers.remote_write.is_none()
            && check.receivers.simulator.is_none();
        if no_receivers {
            check.receivers.simulator = Some(SimulatorConfig::new(
                phoenix_pipeline::simulator::Profile::App,
                1,
            ));
        }
        check.validate()?;
        Ok(Self { config })
    }

    /// The steady-state layout of the file.
    pub fn steady(&self) -> Layout {
        let live = match (&self.config.shadow.live, self.config.pipelines.len()) {
            (Some(live), _) => live.clone(),
            _ => self
                .config
                .pipelines
                .keys()
                .next()
                .cloned()
                .unwrap_or_default(),
        };
        Layout::Steady {
            pipelines: self.config.pipelines.clone(),
            live,
        }
    }
}

/// Builds the engine's pipelines for `layout`, validating every one.
pub fn build(layout: &Layout, export_all_tagged: bool) -> Result<EnginePipelines, SupervisorError> {
    let mut errors = Vec::new();
    let mut pipelines: Vec<Pipeline> = Vec::new();
    let mut protect_sources: Vec<String> = Vec::new();
    for (name, config) in layout.pipelines() {
        match config.build(&name, &format!("pipelines.{name}")) {
            Ok(p) => pipelines.push(p),
            Err(e) => errors.extend(e),
        }
        protect_sources.extend(config.protect.iter().cloned());
    }
    if !errors.is_empty() {
        return Err(SupervisorError::Config(ConfigErrors(errors).to_string()));
    }
    if pipelines.is_empty() {
        return Err(SupervisorError::Config("no pipeline to run".into()));
    }
    let live = layout.live();
    let live_index = pipelines
        .iter()
        .position(|p| p.name() == live)
        .ok_or_else(|| {
            SupervisorError::Config(format!("live pipeline {live:?} is not configured"))
        })?;
    protect_sources.sort();
    protect_sources.dedup();
    let protect = parse_selectors("protect", &protect_sources, &mut Vec::new());
    Ok(EnginePipelines::new(
        pipelines,
        live_index,
        export_all_tagged,
        protect,
    ))
}

/// A running load simulation.
#[derive(Debug)]
struct Loadsim {
    task: JoinHandle<()>,
    profile: String,
    series: usize,
}

/// The running engine and its surroundings.
#[derive(Debug)]
pub struct Supervisor {
    base: Base,
    engine: EngineHandle,
    kpi_rx: mpsc::UnboundedReceiver<Vec<VariantKpis>>,
    telemetry: Arc<Telemetry>,
    receivers: Vec<JoinHandle<()>>,
    loadsim: Option<Loadsim>,
    layout: Layout,
    context: KpiContext,
    interval_start: DateTime<Utc>,
    last_kpis: Vec<VariantKpis>,
    /// Where `/metrics` listens, if anywhere.
    pub metrics_address: Option<SocketAddr>,
    /// Where the remote write receiver listens, if configured.
    pub remote_write_address: Option<SocketAddr>,
    rw_queue: Option<Arc<DiskQueue>>,
    rw_sender: Option<JoinHandle<()>>,
    rw_cancel: CancellationToken,
    label_stats: Option<phoenix_pipeline::labelstats::LabelStatsConfig>,
}

async fn bind(address: &str) -> Result<tokio::net::TcpListener, SupervisorError> {
    tokio::net::TcpListener::bind(address)
        .await
        .map_err(|source| SupervisorError::Bind {
            address: address.to_string(),
            source,
        })
}

fn serve(listener: tokio::net::TcpListener, router: axum::Router) -> JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, "http server stopped");
        }
    })
}

/// Where the supervisor keeps its disk buffer and what it may hold.
#[derive(Debug, Clone)]
pub struct SupervisorOptions {
    /// The remote-write buffer directory.
    pub remote_write_dir: std::path::PathBuf,
    /// Its bound.
    pub remote_write_max_bytes: u64,
    /// `/metrics` address when the pipeline file has no prometheus exporter.
    pub metrics_listen: Option<String>,
    /// Label statistics to collect over the input, if any.
    pub label_stats: Option<phoenix_pipeline::labelstats::LabelStatsConfig>,
}

impl Supervisor {
    /// Starts the engine with `layout`, the base file's receivers and exporters, and
    /// `/metrics` (live output, engine counters and `metrics`).
    pub async fn start(
        base: Base,
        layout: Layout,
        options: SupervisorOptions,
        metrics: Arc<AgentMetrics>,
    ) -> Result<Self, SupervisorError> {
        let export_all_tagged = base.config.shadow.export_all_tagged;
        let mut pipelines = build(&layout, export_all_tagged)?;
        if let Some(config) = &options.label_stats {
            pipelines = pipelines.with_label_stats(config.clone());
        }
        let telemetry = Arc::new(Telemetry::default());
        let mut exporters: Vec<Arc<dyn Exporter>> = Vec::new();
        let rw_cancel = CancellationToken::new();
        let (mut rw_queue, mut rw_sender) = (None, None);
        if let Some(rw) = &base.config.exporters.remote_write {
            let queue = Arc::new(DiskQueue::open(
                &options.remote_write_dir,
                options.remote_write_max_bytes,
                (options.remote_write_max_bytes / 16).clamp(1 << 20, 64 << 20),
            )?);
            let stats = Arc::new(RemoteWriteBufferStats::default());
            metrics.set_remote_write(queue.stats().clone(), stats.clone());
            exporters.push(BufferedRemoteWrite::new(rw, queue.clone(), stats.clone()));
            rw_sender = Some(tokio::spawn(rwbuffer::run_sender(
                rw.clone(),
                queue.clone(),
                telemetry.clone(),
                stats,
                rw_cancel.clone(),
            )));
            rw_queue = Some(queue);
        }
        if let Some(otlp) = &base.config.exporters.otlp {
            // Retries and a bounded in-memory queue; unlike remote write, not disk-buffered.
            exporters.push(
                phoenix_pipeline::otlp_export::OtlpExporter::start(otlp.clone(), telemetry.clone())
                    .map_err(|e| SupervisorError::Config(format!("exporters.otlp: {e}")))?,
            );
        }
        let exposition = ExpositionExporter::new();
        if base.config.exporters.prometheus.is_some() {
            exporters.push(exposition.clone());
        }
        let (kpi_tx, kpi_rx) = mpsc::unbounded_channel();
        let (engine, _join) = engine::spawn(
            pipelines,
            exporters,
            telemetry.clone(),
            Arc::new(ChannelKpiSink(kpi_tx)),
            NEVER,
        )
        .map_err(SupervisorError::Thread)?;
        let mut receivers = Vec::new();
        let config = &base.config;
        let mut remote_write_address = None;
        if let Some(rw) = &config.receivers.remote_write {
            let listener = bind(&rw.listen).await?;
            remote_write_address = listener.local_addr().ok();
            let state =
                RemoteWriteState::new(engine.clone(), telemetry.clone(), rw.max_decompressed_bytes);
            receivers.push(serve(listener, remote_write_router(state)));
        }
        if let Some(otlp) = &config.receivers.otlp {
            let state = phoenix_pipeline::otlp::OtlpState::new(engine.clone(), telemetry.clone());
            if let Some(listen) = &otlp.http_listen {
                let listener = bind(listen).await?;
                receivers.push(serve(
                    listener,
                    phoenix_pipeline::otlp::http_router(state.clone()),
                ));
            }
            if let Some(listen) = &otlp.grpc_listen {
                let listener = bind(listen).await?;
                let incoming = tonic::transport::server::TcpIncoming::from(listener);
                let service = phoenix_pipeline::otlp::grpc_service(state);
                receivers.push(tokio::spawn(async move {
                    if let Err(e) = tonic::transport::Server::builder()
                        .add_service(service)
                        .serve_with_incoming(incoming)
                        .await
                    {
                        tracing::error!(error = %e, "OTLP gRPC server stopped");
                    }
                }));
            }
        }
        if let Some(scrape) = &config.receivers.scrape {
            receivers.extend(phoenix_pipeline::scrape::start(scrape, &engine, &telemetry));
        }
        if let Some(sim) = &config.receivers.simulator {
            receivers.push(spawn_simulator(sim.clone(), engine.clone(), None));
        }
        let metrics_listen = config
            .exporters
            .prometheus
            .as_ref()
            .map(|p| p.listen.clone())
            .or(options.metrics_listen.clone());
        let mut metrics_address = None;
        if let Some(listen) = metrics_listen {
            let listener = bind(&listen).await?;
            metrics_address = listener.local_addr().ok();
            receivers.push(serve(
                listener,
                crate::metrics::router(exposition, telemetry.clone(), metrics),
            ));
        }
        let context = layout.context();
        Ok(Self {
            base,
            engine,
            kpi_rx,
            telemetry,
            receivers,
            loadsim: None,
            layout,
            context,
            interval_start: Utc::now(),
            last_kpis: Vec::new(),
            metrics_address,
            remote_write_address,
            rw_queue,
            rw_sender,
            rw_cancel,
            label_stats: options.label_stats.clone(),
        })
    }

    /// The base file.
    pub fn base(&self) -> &Base {
        &self.base
    }

    /// The layout running now.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The engine's counters.
    pub fn telemetry(&self) -> &Arc<Telemetry> {
        &self.telemetry
    }

    /// Checks that `layout` builds, without running it.
    pub fn check(&self, layout: &Layout) -> Result<(), SupervisorError> {
        build(layout, self.base.config.shadow.export_all_tagged).map(|_| ())
    }

    fn close(&mut self, kpis: Vec<VariantKpis>, details: Option<&[String]>) -> Vec<KpiBatch> {
        let now = Utc::now();
        let out = kpi::batches(&kpis, &self.context, self.interval_start, now, details);
        self.interval_start = now;
        if kpis.iter().any(|k| k.input_samples > 0) || self.last_kpis.is_empty() {
            self.last_kpis = kpis;
        }
        out
    }

    /// Swaps `layout` in between two batches. An invalid layout is refused and the running
    /// pipelines stay. Returns the KPI batches of the interval the swap closed.
    pub async fn apply(
        &mut self,
        layout: Layout,
        details: Option<&[String]>,
    ) -> Result<Vec<KpiBatch>, SupervisorError> {
        let mut pipelines = build(&layout, self.base.config.shadow.export_all_tagged)?;
        if let Some(config) = &self.label_stats {
            pipelines = pipelines.with_label_stats(config.clone());
        }
        while self.kpi_rx.try_recv().is_ok() {}
        self.engine.swap(pipelines).await?;
        let closed = self.kpi_rx.try_recv().unwrap_or_default();
        let batches = self.close(closed, details);
        self.context = layout.context();
        self.layout = layout;
        self.last_kpis.clear();
        Ok(batches)
    }

    /// Ends the current KPI interval now.
    pub async fn finish_interval(
        &mut self,
        details: Option<&[String]>,
    ) -> Result<Vec<KpiBatch>, SupervisorError> {
        while self.kpi_rx.try_recv().is_ok() {}
        let kpis = self.engine.finish_interval().await?;
        while self.kpi_rx.try_recv().is_ok() {}
        Ok(self.close(kpis, details))
    }

    /// Starts a load simulation (replacing one already running). `stop_at` ends it.
    pub fn start_loadsim(&mut self, config: SimulatorConfig, stop_at: Option<DateTime<Utc>>) {
        self.stop_loadsim();
        let profile = serde_json::to_value(config.profile)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let simulator = Simulator::new(config.clone());
        let series = simulator.series_count();
        tracing::info!(%profile, series, "load simulation started");
        let task = spawn_simulator_from(simulator, config.interval, self.engine.clone(), stop_at);
        self.loadsim = Some(Loadsim {
            task,
            profile,
            series,
        });
    }

    /// Stops the load simulation, if any.
    pub fn stop_loadsim(&mut self) {
        if let Some(sim) = self.loadsim.take() {
            sim.task.abort();
            tracing::info!(profile = %sim.profile, "load simulation stopped");
        }
    }

    /// Whether a load simulation runs.
    pub fn loadsim_running(&self) -> bool {
        self.loadsim.as_ref().is_some_and(|s| !s.task.is_finished())
    }

    /// Bytes waiting in the remote-write buffer.
    pub fn buffered_bytes(&self) -> u64 {
        self.rw_queue.as_ref().map_or(0, |q| q.pending_bytes())
    }

    /// Forces the remote-write buffer to disk.
    pub fn sync(&self) {
        if let Some(q) = &self.rw_queue {
            if let Err(e) = q.sync() {
                tracing::warn!(error = %e, "remote write buffer sync failed");
            }
        }
    }

    /// What runs, for heartbeats: each pipeline with its variant and last interval.
    pub fn describe(&self) -> Vec<Value> {
        let live = self.layout.live();
        let mut out: Vec<Value> = self
            .layout
            .pipelines()
            .into_iter()
            .map(|(name, config)| {
                let variant = self
                    .context
                    .variants
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| v.as_str());
                let last = self.last_kpis.iter().find(|k| k.variant == name).map(|k| {
                    json!({
                        "input_series": k.input_series,
                        "output_series": k.output_series,
                        "input_samples": k.input_samples,
                        "output_samples": k.output_samples,
                        "input_bytes": k.input_bytes,
                        "output_bytes": k.output_bytes,
                        "reduction_percent": k.reduction_percent,
                        "protected_coverage_percent": k.protected_coverage_percent(),
                        "max_relative_error": k.max_relative_error,
                        "ns_per_sample": k.ns_per_sample,
                    })
                });
                json!({
                    "name": name,
                    "variant": variant,
                    "experiment_id": self.context.experiment_id,
                    "live": name == live,
                    "processors": config.processors.iter().map(|p| p.type_name()).collect::<Vec<_>>(),
                    "last_interval": last,
                })
            })
            .collect();
        if let Some(sim) = &self.loadsim {
            if !sim.task.is_finished() {
                out.push(json!({"name": "loadsim", "profile": sim.profile, "series": sim.series}));
            }
        }
        out
    }

    /// Stops receivers and the simulation, processes what is queued, closes the last
    /// interval, and stops the remote-write sender (its buffer stays on disk).
    pub async fn shutdown(mut self, details: Option<&[String]>, grace: Duration) -> Vec<KpiBatch> {
        self.stop_loadsim();
        for task in self.receivers.drain(..) {
            task.abort();
        }
        let _ = self.engine.flush().await;
        let batches = self.finish_interval(details).await.unwrap_or_default();
        if let Some(queue) = &self.rw_queue {
            let deadline = tokio::time::Instant::now() + grace;
            while queue.pending_records() > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let _ = queue.sync();
        }
        self.rw_cancel.cancel();
        if let Some(sender) = self.rw_sender.take() {
            let _ = sender.await;
        }
        batches
    }
}

fn spawn_simulator(
    config: SimulatorConfig,
    engine: EngineHandle,
    stop_at: Option<DateTime<Utc>>,
) -> JoinHandle<()> {
    let interval = config.interval;
    spawn_simulator_from(Simulator::new(config), interval, engine, stop_at)
}

fn spawn_simulator_from(
    mut simulator: Simulator,
    interval: Duration,
    engine: EngineHandle,
    stop_at: Option<DateTime<Utc>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if stop_at.is_some_and(|t| Utc::now() >= t) {
                break;
            }
            let tick = simulator.tick();
            let anomalous = simulator
                .ground_truth()
                .iter()
                .filter(|t| (t.start_tick..=t.end_tick).contains(&tick))
                .map(|t| t.series_id)
                .collect();
            let batch = simulator.next_batch();
            if engine
                .send_batch_with_anomalies(batch, anomalous)
                .await
                .is_err()
            {
                break;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use phoenix_pipeline::simulator::Profile;

    async fn batches_within(sup: &mut Supervisor) -> Vec<KpiBatch> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let batches = sup.finish_interval(None).await.unwrap();
            if !batches.is_empty() {
                return batches;
            }
            assert!(tokio::time::Instant::now() < deadline, "no KPIs");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_interval_is_attributed_to_the_layout_that_produced_it_and_bad_layouts_change_nothing(
    ) {
        let dir = tempfile::tempdir().unwrap();
        let base = Base::empty();
        let mut sup = Supervisor::start(
            base.clone(),
            base.steady(),
            SupervisorOptions {
                remote_write_dir: dir.path().join("rw"),
                remote_write_max_bytes: 1 << 20,
                metrics_listen: None,
                label_stats: None,
            },
            Arc::new(AgentMetrics::default()),
        )
        .await
        .unwrap();
        let mut sim = SimulatorConfig::new(Profile::App, 7);
        sim.scale = 0.1;
        sim.interval = Duration::from_millis(20);
        sup.start_loadsim(sim, None);
        let steady = batches_within(&mut sup).await;
        assert!(steady
            .iter()
            .all(|b| b.experiment_id.is_none() && b.variant == Variant::Baseline));

        let experiment_id = ExperimentId::new();
        let adaptive = phoenix_pipeline::templates::resolve("adaptive", &Value::Null).unwrap();
        let layout = Layout::Experiment {
            experiment_id,
            baseline: PipelineConfig::default(),
            candidate: adaptive,
            variants: RunVariants::Both,
        };
        let closed = sup.apply(layout.clone(), None).await.unwrap();
        assert!(closed.iter().all(|b| b.experiment_id.is_none()));
        let during = batches_within(&mut sup).await;
        let variants: Vec<Variant> = during.iter().map(|b| b.variant).collect();
        assert_eq!(variants, [Variant::Baseline, Variant::Candidate]);
        assert!(during
            .iter()
            .all(|b| b.experiment_id == Some(experiment_id)));

        let broken: PipelineConfig =
            serde_yaml::from_str("processors: [{type: topk, k: 0}]").unwrap();
        let bad = Layout::Experiment {
            experiment_id,
            baseline: PipelineConfig::default(),
            candidate: broken,
            variants: RunVariants::Both,
        };
        let err = sup.apply(bad, None).await.unwrap_err().to_string();
        assert!(err.contains("topk.k"), "{err}");
        assert_eq!(sup.layout(), &layout);
        let after = batches_within(&mut sup).await;
        assert!(after.iter().all(|b| b.experiment_id == Some(experiment_id)));
        sup.shutdown(None, Duration::from_millis(10)).await;
    }
}
