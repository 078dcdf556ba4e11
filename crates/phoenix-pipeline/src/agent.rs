//! Standalone mode: wires receivers, the engine and exporters from a validated
//! configuration, runs until told to stop, and hot-swaps pipelines on reload.
//!
//! The binary stays thin: it parses arguments, reads the file and calls [`Agent::start`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::config::{AgentConfig, ConfigErrors, ValidatedConfig};
use crate::engine::{self, EngineHandle, EnginePipelines, TelemetryKpiSink};
use crate::exporter::{Exporter, ExpositionExporter, RemoteWriteExporter};
use crate::receiver::{metrics_router, remote_write_router, MetricsState, RemoteWriteState};
use crate::simulator::Simulator;
use crate::telemetry::Telemetry;

/// Default length of a KPI interval.
pub const DEFAULT_KPI_INTERVAL: Duration = Duration::from_secs(60);

/// Why the agent could not start or reload.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The configuration is invalid.
    #[error("invalid configuration:\n{0}")]
    Config(#[from] ConfigErrors),
    /// A listener could not be bound.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The address.
        address: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The HTTP client could not be built.
    #[error("cannot build the remote write client: {0}")]
    Client(#[from] reqwest::Error),
    /// The OTLP exporter could not start.
    #[error("cannot start the OTLP exporter: {0}")]
    OtlpExporter(#[from] crate::otlp_export::OtlpExporterError),
    /// The engine thread could not start.
    #[error("cannot start the engine thread: {0}")]
    Thread(std::io::Error),
    /// The engine stopped.
    #[error("{0}")]
    Stopped(#[from] engine::EngineStopped),
    /// A reload changed receivers or exporters, which needs a restart.
    #[error("reload can only change pipelines and shadow settings; {0} changed, restart to apply")]
    NeedsRestart(&'static str),
}

/// A running agent.
#[derive(Debug)]
pub struct Agent {
    /// Where the OTLP gRPC receiver listens, if configured.
    pub otlp_grpc_address: Option<SocketAddr>,
    /// Where the OTLP/HTTP receiver listens, if configured.
    pub otlp_http_address: Option<SocketAddr>,
    config: AgentConfig,
    engine: EngineHandle,
    telemetry: Arc<Telemetry>,
    tasks: Vec<JoinHandle<()>>,
    /// Where the remote write receiver listens, if configured.
    pub remote_write_address: Option<SocketAddr>,
    /// Where `/metrics` listens, if configured.
    pub metrics_address: Option<SocketAddr>,
}

async fn bind(address: &str) -> Result<TcpListener, AgentError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| AgentError::Bind {
            address: address.to_string(),
            source,
        })
}

fn serve(listener: TcpListener, router: axum::Router) -> JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, "http server stopped");
        }
    })
}

impl Agent {
    /// Starts everything the configuration asks for on the current tokio runtime.
    pub async fn start(
        validated: ValidatedConfig,
        kpi_interval: Duration,
    ) -> Result<Self, AgentError> {
        let config = validated.config.clone();
        let telemetry = Arc::new(Telemetry::default());
        let mut exporters: Vec<Arc<dyn Exporter>> = Vec::new();
        if let Some(rw) = &config.exporters.remote_write {
            exporters.push(RemoteWriteExporter::start(rw.clone(), telemetry.clone())?);
        }
        if let Some(otlp) = &config.exporters.otlp {
            exporters.push(crate::otlp_export::OtlpExporter::start(
                otlp.clone(),
                telemetry.clone(),
            )?);
        }
        let exposition = ExpositionExporter::new();
        if config.exporters.prometheus.is_some() {
            exporters.push(exposition.clone());
        }
        let (engine, _join) = engine::spawn(
            EnginePipelines::from_validated(validated),
            exporters,
            telemetry.clone(),
            Arc::new(TelemetryKpiSink(telemetry.clone())),
            kpi_interval,
        )
        .map_err(AgentError::Thread)?;

        let mut tasks = Vec::new();
        let mut remote_write_address = None;
        if let Some(rw) = &config.receivers.remote_write {
            let listener = bind(&rw.listen).await?;
            remote_write_address = listener.local_addr().ok();
            let state =
                RemoteWriteState::new(engine.clone(), telemetry.clone(), rw.max_decompressed_bytes);
            tasks.push(serve(listener, remote_write_router(state)));
            tracing::info!(address = ?remote_write_address, "remote write receiver listening");
        }
        let (mut otlp_grpc_address, mut otlp_http_address) = (None, None);
        if let Some(otlp) = &config.receivers.otlp {
            let state = crate::otlp::OtlpState::new(engine.clone(), telemetry.clone());
            if let Some(listen) = &otlp.http_listen {
                let listener = bind(listen).await?;
                otlp_http_address = listener.local_addr().ok();
                tasks.push(serve(listener, crate::otlp::http_router(state.clone())));
                tracing::info!(address = ?otlp_http_address, "OTLP/HTTP receiver listening");
            }
            if let Some(listen) = &otlp.grpc_listen {
                let listener = bind(listen).await?;
                otlp_grpc_address = listener.local_addr().ok();
                let incoming = tonic::transport::server::TcpIncoming::from(listener);
                let service = crate::otlp::grpc_service(state);
                tasks.push(tokio::spawn(async move {
                    if let Err(e) = tonic::transport::Server::builder()
                        .add_service(service)
                        .serve_with_incoming(incoming)
                        .await
                    {
                        tracing::error!(error = %e, "OTLP gRPC server stopped");
                    }
                }));
                tracing::info!(address = ?otlp_grpc_address, "OTLP gRPC receiver listening");
            }
        }
        if let Some(scrape) = &config.receivers.scrape {
            tasks.extend(crate::scrape::start(scrape, &engine, &telemetry));
        }
        let mut metrics_address = None;
        if let Some(prom) = &config.exporters.prometheus {
            let listener = bind(&prom.listen).await?;
            metrics_address = listener.local_addr().ok();
            let state = MetricsState {
                exposition,
                telemetry: telemetry.clone(),
            };
            tasks.push(serve(listener, metrics_router(state)));
            tracing::info!(address = ?metrics_address, "/metrics listening");
        }
        if let Some(sim) = &config.receivers.simulator {
            let mut simulator = Simulator::new(sim.clone());
            let interval = sim.interval;
            let engine = engine.clone();
            tracing::info!(series = simulator.series_count(), "load simulator started");
            tasks.push(tokio::spawn(async move {
                let mut ticker = tokio::time::interval(interval);
                loop {
                    ticker.tick().await;
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
            }));
        }
        Ok(Self {
            otlp_grpc_address,
            otlp_http_address,
            config,
            engine,
            telemetry,
            tasks,
            remote_write_address,
            metrics_address,
        })
    }

    /// Validates `text` and swaps the pipelines in between two batches. An invalid file is
    /// refused whole and the running pipelines keep running.
    pub async fn reload(&mut self, text: &str) -> Result<(), AgentError> {
        let validated = AgentConfig::load(text)?;
        if validated.config.receivers != self.config.receivers {
            return Err(AgentError::NeedsRestart("receivers"));
        }
        if validated.config.exporters != self.config.exporters {
            return Err(AgentError::NeedsRestart("exporters"));
        }
        let config = validated.config.clone();
        self.engine
            .swap(EnginePipelines::from_validated(validated))
            .await?;
        self.config = config;
        Ok(())
    }

    /// The engine handle.
    pub fn engine(&self) -> &EngineHandle {
        &self.engine
    }

    /// The counters.
    pub fn telemetry(&self) -> &Arc<Telemetry> {
        &self.telemetry
    }

    /// Stops receivers and the simulator (queued batches are still processed).
    pub fn stop(self) {
        for task in self.tasks {
            task.abort();
        }
    }
}
