//! The agent's YAML configuration: receivers, pipelines of processors, shadow A/B and
//! exporters. Deserialised once, validated once; every error carries its path, e.g.
//! `pipelines.candidate.processors[2].topk.k: must be greater than 0`, and an invalid file
//! is refused whole.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::pipeline::{Pipeline, Stage};
use crate::processor::adaptive::AdaptiveConfig;
use crate::processor::aggregate::AggregateConfig;
use crate::processor::cardinality::CardinalityLimitConfig;
use crate::processor::filter::FilterConfig;
use crate::processor::relabel::RelabelProcessorConfig;
use crate::processor::sample::SampleConfig;
use crate::processor::topk::TopkConfig;
use crate::processor::{parse_selectors, FieldError, Processor};
use crate::remote_write::DEFAULT_MAX_DECOMPRESSED_BYTES;
use crate::simulator::SimulatorConfig;

/// One configuration error with the path of the offending field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted path, e.g. `pipelines.candidate.processors[2].topk.k`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every error found in a configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

/// `protect`: series matching these selectors bypass every later stage untouched.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProtectConfig {
    /// The selectors.
    pub selectors: Vec<String>,
}

/// One processor, tagged by `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ProcessorConfig {
    /// See [`crate::processor::filter`].
    Filter(FilterConfig),
    /// See [`crate::processor::relabel`].
    Relabel(RelabelProcessorConfig),
    /// See [`crate::processor::aggregate`].
    Aggregate(AggregateConfig),
    /// See [`crate::processor::topk`].
    Topk(TopkConfig),
    /// See [`crate::processor::cardinality`].
    CardinalityLimit(CardinalityLimitConfig),
    /// See [`crate::processor::sample`].
    Sample(SampleConfig),
    /// See [`crate::processor::adaptive`].
    Adaptive(AdaptiveConfig),
    /// A protect stage (see [`crate::pipeline`]).
    Protect(ProtectConfig),
}

impl ProcessorConfig {
    /// The `type` tag.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Filter(_) => "filter",
            Self::Relabel(_) => "relabel",
            Self::Aggregate(_) => "aggregate",
            Self::Topk(_) => "topk",
            Self::CardinalityLimit(_) => "cardinality_limit",
            Self::Sample(_) => "sample",
            Self::Adaptive(_) => "adaptive",
            Self::Protect(_) => "protect",
        }
    }

    /// Validates and builds the stage.
    pub fn build(&self) -> Result<Stage, Vec<FieldError>> {
        fn boxed<P: Processor + 'static>(
            r: Result<P, Vec<FieldError>>,
        ) -> Result<Stage, Vec<FieldError>> {
            r.map(|p| Stage::Processor(Box::new(p)))
        }
        match self {
            Self::Filter(c) => boxed(c.build()),
            Self::Relabel(c) => boxed(c.build()),
            Self::Aggregate(c) => boxed(c.build()),
            Self::Topk(c) => boxed(c.build()),
            Self::CardinalityLimit(c) => boxed(c.build()),
            Self::Sample(c) => boxed(c.build()),
            Self::Adaptive(c) => boxed(c.build()),
            Self::Protect(c) => {
                let mut errors = Vec::new();
                if c.selectors.is_empty() {
                    errors.push(FieldError::new(
                        "selectors",
                        "must list at least one selector",
                    ));
                }
                let selectors = parse_selectors("selectors", &c.selectors, &mut errors);
                if errors.is_empty() {
                    Ok(Stage::Protect(selectors))
                } else {
                    Err(errors)
                }
            }
        }
    }
}

/// A pipeline: pipeline-level protect selectors, then processors in order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Selectors of series that bypass every processor untouched.
    #[serde(default)]
    pub protect: Vec<String>,
    /// The processors, in order.
    #[serde(default)]
    pub processors: Vec<ProcessorConfig>,
}

impl PipelineConfig {
    /// Validates and builds the pipeline named `name`; errors are prefixed with `path`.
    pub fn build(&self, name: &str, path: &str) -> Result<Pipeline, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let mut stages = Vec::new();
        if !self.protect.is_empty() {
            let mut field_errors = Vec::new();
            let selectors = parse_selectors("protect", &self.protect, &mut field_errors);
            errors.extend(field_errors.into_iter().map(|e| ConfigError {
                path: format!("{path}.{}", e.field),
                message: e.message,
            }));
            stages.push(Stage::Protect(selectors));
        }
        for (i, processor) in self.processors.iter().enumerate() {
            match processor.build() {
                Ok(stage) => stages.push(stage),
                Err(field_errors) => errors.extend(field_errors.into_iter().map(|e| ConfigError {
                    path: format!(
                        "{path}.processors[{i}].{}.{}",
                        processor.type_name(),
                        e.field
                    ),
                    message: e.message,
                })),
            }
        }
        if errors.is_empty() {
            Ok(Pipeline::new(name, stages))
        } else {
            Err(errors)
        }
    }
}

fn default_max_decompressed_bytes() -> usize {
    DEFAULT_MAX_DECOMPRESSED_BYTES
}

/// `receivers.remote_write`: Prometheus remote write v1 on `POST /api/v1/write`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteWriteReceiverConfig {
    /// Listen address, e.g. `127.0.0.1:9201`.
    pub listen: String,
    /// Ceiling on one decompressed request body.
    #[serde(default = "default_max_decompressed_bytes")]
    pub max_decompressed_bytes: usize,
}

/// `receivers.otlp`: OTLP metrics over gRPC and/or HTTP (protobuf and JSON).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpReceiverConfig {
    /// gRPC listen address, conventionally `:4317`.
    #[serde(default)]
    pub grpc_listen: Option<String>,
    /// HTTP listen address (`POST /v1/metrics`), conventionally `:4318`.
    #[serde(default)]
    pub http_listen: Option<String>,
}

/// Receivers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiversConfig {
    /// OTLP metrics.
    #[serde(default)]
    pub otlp: Option<OtlpReceiverConfig>,
    /// Prometheus scrape of static targets.
    #[serde(default)]
    pub scrape: Option<crate::scrape::ScrapeReceiverConfig>,
    /// Prometheus remote write.
    #[serde(default)]
    pub remote_write: Option<RemoteWriteReceiverConfig>,
    /// The built-in load simulator.
    #[serde(default)]
    pub simulator: Option<SimulatorConfig>,
}

fn default_max_samples_per_request() -> usize {
    10_000
}
fn default_queue_capacity_requests() -> usize {
    256
}
fn default_concurrency() -> usize {
    2
}
fn default_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_min_backoff() -> Duration {
    Duration::from_millis(100)
}
fn default_max_backoff() -> Duration {
    Duration::from_secs(10)
}
fn default_max_attempts() -> u32 {
    10
}

/// `exporters.remote_write`: Prometheus remote write v1 client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteWriteExporterConfig {
    /// Endpoint, e.g. `http://127.0.0.1:8428/api/v1/write`.
    pub url: String,
    /// Samples per request at most.
    #[serde(default = "default_max_samples_per_request")]
    pub max_samples_per_request: usize,
    /// Encoded requests waiting to be sent at most; overflow is dropped and counted.
    #[serde(default = "default_queue_capacity_requests")]
    pub queue_capacity_requests: usize,
    /// Requests in flight at most.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Timeout of one request.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// First retry delay (doubled per attempt).
    #[serde(default = "default_min_backoff", with = "humantime_serde")]
    pub min_backoff: Duration,
    /// Longest retry delay.
    #[serde(default = "default_max_backoff", with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Attempts per request before it is dropped and counted.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
}

impl RemoteWriteExporterConfig {
    /// A config with defaults for `url`.
    pub fn with_url(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            max_samples_per_request: default_max_samples_per_request(),
            queue_capacity_requests: default_queue_capacity_requests(),
            concurrency: default_concurrency(),
            timeout: default_timeout(),
            min_backoff: default_min_backoff(),
            max_backoff: default_max_backoff(),
            max_attempts: default_max_attempts(),
        }
    }
}

/// The wire protocol of the OTLP exporter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OtlpProtocol {
    /// `MetricsService/Export` over gRPC (HTTP/2, plaintext), conventionally port 4317.
    #[default]
    Grpc,
    /// `POST /v1/metrics` with an `application/x-protobuf` body, conventionally port 4318.
    Http,
}

fn default_max_data_points_per_request() -> usize {
    10_000
}

/// `exporters.otlp`: OTLP metrics client (gRPC or HTTP, protobuf).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpExporterConfig {
    /// gRPC: `http://host:4317`. HTTP: `http://host:4318` (then `/v1/metrics` is appended)
    /// or a full URL with a path, used as is.
    pub endpoint: String,
    /// `grpc` (default) or `http`.
    #[serde(default)]
    pub protocol: OtlpProtocol,
    /// Headers (gRPC metadata) sent with every request, e.g. an authorization token.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Timeout of one request.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Data points per request at most (a histogram point counts as one).
    #[serde(default = "default_max_data_points_per_request")]
    pub max_data_points_per_request: usize,
    /// Requests waiting to be sent at most; overflow is dropped and counted.
    #[serde(default = "default_queue_capacity_requests")]
    pub queue_capacity_requests: usize,
    /// Requests in flight at most.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// First retry delay (doubled per attempt).
    #[serde(default = "default_min_backoff", with = "humantime_serde")]
    pub min_backoff: Duration,
    /// Longest retry delay.
    #[serde(default = "default_max_backoff", with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Attempts per request before it is dropped and counted.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
}

impl OtlpExporterConfig {
    /// A config with defaults for `endpoint` and `protocol`.
    pub fn with_endpoint(endpoint: impl Into<String>, protocol: OtlpProtocol) -> Self {
        Self {
            endpoint: endpoint.into(),
            protocol,
            headers: BTreeMap::new(),
            timeout: default_timeout(),
            max_data_points_per_request: default_max_data_points_per_request(),
            queue_capacity_requests: default_queue_capacity_requests(),
            concurrency: default_concurrency(),
            min_backoff: default_min_backoff(),
            max_backoff: default_max_backoff(),
            max_attempts: default_max_attempts(),
        }
    }

    /// Every problem with this exporter's settings, paths relative to `exporters.otlp`.
    pub fn validate(&self) -> Vec<crate::processor::FieldError> {
        use crate::processor::FieldError;
        let mut errors = Vec::new();
        let scheme_ok = match self.protocol {
            OtlpProtocol::Grpc => self.endpoint.starts_with("http://"),
            OtlpProtocol::Http => {
                self.endpoint.starts_with("http://") || self.endpoint.starts_with("https://")
            }
        };
        if !scheme_ok {
            let message = match self.protocol {
                OtlpProtocol::Grpc if self.endpoint.starts_with("https://") => format!(
                    "{:?}: TLS is not supported for grpc in this build; use http:// or protocol: http",
                    self.endpoint
                ),
                OtlpProtocol::Grpc => format!("{:?} must be an http:// URL", self.endpoint),
                OtlpProtocol::Http => {
                    format!("{:?} must be an http:// or https:// URL", self.endpoint)
                }
            };
            errors.push(FieldError::new("endpoint", message));
        } else if reqwest::Url::parse(&self.endpoint).is_err() {
            errors.push(FieldError::new(
                "endpoint",
                format!("{:?} is not a valid URL", self.endpoint),
            ));
        }
        for (name, value) in &self.headers {
            let valid = match self.protocol {
                // gRPC metadata keys are lowercase ASCII; `-bin` keys carry binary values.
                OtlpProtocol::Grpc => {
                    !name.ends_with("-bin")
                        && tonic::metadata::MetadataKey::<tonic::metadata::Ascii>::from_bytes(
                            name.as_bytes(),
                        )
                        .is_ok()
                        && name.bytes().all(|b| !b.is_ascii_uppercase())
                }
                OtlpProtocol::Http => axum::http::HeaderName::from_bytes(name.as_bytes()).is_ok(),
            };
            if !valid {
                errors.push(FieldError::new(
                    format!("headers.{name}"),
                    "is not a valid header name (lowercase letters, digits, `-`, `_`, `.`)",
                ));
            }
            if axum::http::HeaderValue::from_str(value).is_err() {
                errors.push(FieldError::new(
                    format!("headers.{name}"),
                    "value must be visible ASCII",
                ));
            }
        }
        for (field, value) in [
            (
                "max_data_points_per_request",
                self.max_data_points_per_request,
            ),
            ("queue_capacity_requests", self.queue_capacity_requests),
            ("concurrency", self.concurrency),
            ("max_attempts", self.max_attempts as usize),
        ] {
            if value == 0 {
                errors.push(FieldError::new(field, "must be greater than 0"));
            }
        }
        if self.timeout.is_zero() {
            errors.push(FieldError::new("timeout", "must be greater than 0"));
        }
        if self.min_backoff > self.max_backoff {
            errors.push(FieldError::new(
                "min_backoff",
                "must not exceed max_backoff",
            ));
        }
        errors
    }
}

/// `exporters.prometheus`: a `/metrics` endpoint serving the live output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrometheusExporterConfig {
    /// Listen address, e.g. `127.0.0.1:9464`.
    pub listen: String,
}

/// Exporters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportersConfig {
    /// Remote write client.
    #[serde(default)]
    pub remote_write: Option<RemoteWriteExporterConfig>,
    /// OTLP client.
    #[serde(default)]
    pub otlp: Option<OtlpExporterConfig>,
    /// `/metrics` endpoint.
    #[serde(default)]
    pub prometheus: Option<PrometheusExporterConfig>,
}

/// Shadow A/B: which pipeline is live, and whether both are exported.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowConfig {
    /// The exported pipeline (required with more than one pipeline).
    #[serde(default)]
    pub live: Option<String>,
    /// Export every pipeline's output tagged `phoenix_variant="<name>"`.
    #[serde(default)]
    pub export_all_tagged: bool,
    /// Split mode: instead of running every pipeline here, this host runs only the one
    /// its host id is assigned to.
    #[serde(default)]
    pub split: Option<SplitConfig>,
}

/// `shadow.split`: a deterministic share of hosts runs the candidate, the rest the
/// baseline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitConfig {
    /// The baseline pipeline.
    pub baseline: String,
    /// The candidate pipeline.
    pub candidate: String,
    /// Share of hosts assigned to the candidate, in [0, 1].
    pub candidate_share: f64,
    /// This host's id; `PHOENIX_HOST_ID`, then the hostname, when absent.
    #[serde(default)]
    pub host_id: Option<String>,
}

impl SplitConfig {
    /// Whether `host_id` runs the candidate: `xxh3(host_id) mod 10⁶ < share × 10⁶`, the
    /// same answer on every run and every machine.
    pub fn assigns_candidate(&self, host_id: &str) -> bool {
        let bucket = xxhash_rust::xxh3::xxh3_64(host_id.as_bytes()) % 1_000_000;
        (bucket as f64) < self.candidate_share * 1_000_000.0
    }

    /// The host id to use: configured, `PHOENIX_HOST_ID`, or the hostname.
    pub fn resolve_host_id(&self) -> String {
        self.host_id
            .clone()
            .or_else(|| std::env::var("PHOENIX_HOST_ID").ok())
            .or_else(|| {
                std::fs::read_to_string("/etc/hostname")
                    .ok()
                    .map(|h| h.trim().to_string())
            })
            .unwrap_or_default()
    }

    /// The pipeline this host runs.
    pub fn assigned_pipeline(&self) -> &str {
        if self.assigns_candidate(&self.resolve_host_id()) {
            &self.candidate
        } else {
            &self.baseline
        }
    }
}

/// The whole agent configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Receivers.
    #[serde(default)]
    pub receivers: ReceiversConfig,
    /// Pipelines by name; each input batch feeds all of them.
    pub pipelines: BTreeMap<String, PipelineConfig>,
    /// Shadow A/B settings.
    #[serde(default)]
    pub shadow: ShadowConfig,
    /// Exporters.
    #[serde(default)]
    pub exporters: ExportersConfig,
}

/// A validated configuration with its pipelines built.
#[derive(Debug)]
pub struct ValidatedConfig {
    /// The configuration as written.
    pub config: AgentConfig,
    /// Built pipelines, in name order.
    pub pipelines: Vec<Pipeline>,
    /// Name of the live pipeline.
    pub live: String,
}

fn check_listen(path: &str, listen: &str, errors: &mut Vec<ConfigError>) {
    if listen.parse::<SocketAddr>().is_err() {
        errors.push(ConfigError {
            path: path.to_string(),
            message: format!("{listen:?} is not an address like 127.0.0.1:9201"),
        });
    }
}

impl AgentConfig {
    /// Parses YAML; a syntax or type error carries the path serde reached.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigErrors> {
        let deserializer = serde_yaml::Deserializer::from_str(text);
        serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            let message = e.into_inner().to_string();
            // serde_yaml prefixes some messages with its own (shorter) path: keep ours.
            let first_segment = path.split(['.', '[']).next().unwrap_or_default();
            let message = match message.split_once(": ") {
                Some((prefix, rest))
                    if !first_segment.is_empty()
                        && prefix.starts_with(first_segment)
                        && !prefix.contains(' ') =>
                {
                    rest.to_string()
                }
                _ => message,
            };
            ConfigErrors(vec![ConfigError { path, message }])
        })
    }

    /// Parses and validates, building every pipeline; all errors are reported at once.
    pub fn load(text: &str) -> Result<ValidatedConfig, ConfigErrors> {
        Self::from_yaml(text)?.validate()
    }

    /// Validates and builds every pipeline.
    pub fn validate(self) -> Result<ValidatedConfig, ConfigErrors> {
        let mut errors = Vec::new();
        let mut pipelines = Vec::new();
        if self.pipelines.is_empty() {
            errors.push(ConfigError {
                path: "pipelines".into(),
                message: "must define at least one pipeline".into(),
            });
        }
        for (name, pipeline) in &self.pipelines {
            match pipeline.build(name, &format!("pipelines.{name}")) {
                Ok(p) => pipelines.push(p),
                Err(e) => errors.extend(e),
            }
        }
        if let Some(split) = &self.shadow.split {
            for (field, name) in [
                ("baseline", &split.baseline),
                ("candidate", &split.candidate),
            ] {
                if !self.pipelines.contains_key(name) {
                    errors.push(ConfigError {
                        path: format!("shadow.split.{field}"),
                        message: format!("{name:?} is not a configured pipeline"),
                    });
                }
            }
            if !(0.0..=1.0).contains(&split.candidate_share) {
                errors.push(ConfigError {
                    path: "shadow.split.candidate_share".into(),
                    message: "must be between 0 and 1".into(),
                });
            }
        }
        let live = match (&self.shadow.live, self.pipelines.len()) {
            (Some(live), _) if self.pipelines.contains_key(live) => live.clone(),
            (Some(live), _) => {
                errors.push(ConfigError {
                    path: "shadow.live".into(),
                    message: format!("{live:?} is not a configured pipeline"),
                });
                String::new()
            }
            (None, _) if self.shadow.split.is_some() => self
                .shadow
                .split
                .as_ref()
                .map(|s| s.assigned_pipeline().to_string())
                .unwrap_or_default(),
            (None, 1) => self.pipelines.keys().next().cloned().unwrap_or_default(),
            (None, _) => {
                if !self.pipelines.is_empty() {
                    errors.push(ConfigError {
                        path: "shadow.live".into(),
                        message: "required when more than one pipeline is configured".into(),
                    });
                }
                String::new()
            }
        };
        if let Some(rw) = &self.receivers.remote_write {
            check_listen("receivers.remote_write.listen", &rw.listen, &mut errors);
            if rw.max_decompressed_bytes == 0 {
                errors.push(ConfigError {
                    path: "receivers.remote_write.max_decompressed_bytes".into(),
                    message: "must be greater than 0".into(),
                });
            }
        }
        if let Some(sim) = &self.receivers.simulator {
            errors.extend(sim.validate().into_iter().map(|e| ConfigError {
                path: format!("receivers.simulator.{}", e.field),
                message: e.message,
            }));
        }
        if let Some(otlp) = &self.receivers.otlp {
            if otlp.grpc_listen.is_none() && otlp.http_listen.is_none() {
                errors.push(ConfigError {
                    path: "receivers.otlp".into(),
                    message: "set grpc_listen, http_listen or both".into(),
                });
            }
            if let Some(listen) = &otlp.grpc_listen {
                check_listen("receivers.otlp.grpc_listen", listen, &mut errors);
            }
            if let Some(listen) = &otlp.http_listen {
                check_listen("receivers.otlp.http_listen", listen, &mut errors);
            }
        }
        if let Some(scrape) = &self.receivers.scrape {
            for (i, job) in scrape.scrape_configs.iter().enumerate() {
                errors.extend(job.validate().into_iter().map(|e| ConfigError {
                    path: format!("receivers.scrape.scrape_configs[{i}].{}", e.field),
                    message: e.message,
                }));
            }
        }
        if self.receivers.remote_write.is_none()
            && self.receivers.simulator.is_none()
            && self.receivers.otlp.is_none()
            && self.receivers.scrape.is_none()
        {
            errors.push(ConfigError {
                path: "receivers".into(),
                message:
                    "configure at least one receiver (remote_write, otlp, scrape or simulator)"
                        .into(),
            });
        }
        if let Some(rw) = &self.exporters.remote_write {
            let base = "exporters.remote_write";
            if !(rw.url.starts_with("http://") || rw.url.starts_with("https://")) {
                errors.push(ConfigError {
                    path: format!("{base}.url"),
                    message: format!("{:?} must be an http:// or https:// URL", rw.url),
                });
            }
            for (field, value) in [
                ("max_samples_per_request", rw.max_samples_per_request),
                ("queue_capacity_requests", rw.queue_capacity_requests),
                ("concurrency", rw.concurrency),
                ("max_attempts", rw.max_attempts as usize),
            ] {
                if value == 0 {
                    errors.push(ConfigError {
                        path: format!("{base}.{field}"),
                        message: "must be greater than 0".into(),
                    });
                }
            }
            if rw.min_backoff > rw.max_backoff {
                errors.push(ConfigError {
                    path: format!("{base}.min_backoff"),
                    message: "must not exceed max_backoff".into(),
                });
            }
        }
        if let Some(otlp) = &self.exporters.otlp {
            errors.extend(otlp.validate().into_iter().map(|e| ConfigError {
                path: format!("exporters.otlp.{}", e.field),
                message: e.message,
            }));
        }
        if let Some(prom) = &self.exporters.prometheus {
            check_listen("exporters.prometheus.listen", &prom.listen, &mut errors);
        }
        if errors.is_empty() {
            Ok(ValidatedConfig {
                config: self,
                pipelines,
                live,
            })
        } else {
            Err(ConfigErrors(errors))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECEIVER: &str = "receivers:\n  remote_write:\n    listen: 127.0.0.1:9201\n";

    #[test]
    fn invalid_processor_field_reports_its_full_path() {
        let yaml = format!(
            "{RECEIVER}pipelines:\n  baseline: {{}}\n  candidate:\n    processors:\n      - type: filter\n        keep: ['up']\n      - type: sample\n        rate: 0.5\n      - type: topk\n        k: 0\nshadow:\n  live: baseline\n"
        );
        let errors = AgentConfig::load(&yaml).unwrap_err();
        assert_eq!(
            errors.to_string(),
            "pipelines.candidate.processors[2].topk.k: must be greater than 0"
        );
    }

    #[test]
    fn every_error_is_reported_at_once() {
        let yaml = format!(
            "{RECEIVER}pipelines:\n  a:\n    protect: ['{{bad']\n    processors:\n      - type: topk\n        k: 0\n      - type: relabel\n        rules:\n          - action: hashmod\n            source_labels: [a]\n            target_label: b\nshadow:\n  live: missing\n"
        );
        let errors = AgentConfig::load(&yaml).unwrap_err().0;
        let paths: Vec<_> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                "pipelines.a.protect[0]",
                "pipelines.a.processors[0].topk.k",
                "pipelines.a.processors[1].relabel.rules[0].modulus",
                "shadow.live"
            ]
        );
    }

    #[test]
    fn unknown_processor_type_is_refused_with_its_path() {
        let yaml = format!("{RECEIVER}pipelines:\n  a:\n    processors:\n      - type: nope\n");
        let errors = AgentConfig::load(&yaml).unwrap_err().0;
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].path.starts_with("pipelines.a.processors"),
            "{errors:?}"
        );
        assert!(errors[0].message.contains("unknown variant"), "{errors:?}");
    }

    #[test]
    fn unknown_fields_are_refused() {
        let yaml = format!("{RECEIVER}pipelines:\n  a:\n    processors:\n      - type: topk\n        k: 3\n        kk: 4\n");
        let errors = AgentConfig::load(&yaml).unwrap_err().0;
        assert!(
            errors[0].message.contains("unknown field `kk`"),
            "{errors:?}"
        );
    }

    #[test]
    fn type_errors_carry_the_path_once() {
        let yaml = format!(
            "{RECEIVER}pipelines:\n  a:\n    processors:\n      - type: topk\n        k: -1\n"
        );
        let errors = AgentConfig::load(&yaml).unwrap_err();
        let text = errors.to_string();
        assert!(text.starts_with("pipelines.a.processors"), "{text}");
        assert_eq!(text.matches("pipelines.a").count(), 1, "{text}");
    }

    #[test]
    fn split_mode_assigns_a_stable_share_of_hosts_to_the_candidate() {
        let split = SplitConfig {
            baseline: "baseline".into(),
            candidate: "candidate".into(),
            candidate_share: 0.2,
            host_id: None,
        };
        let assigned = (0..10_000)
            .filter(|i| split.assigns_candidate(&format!("host-{i}")))
            .count();
        assert!((1_800..=2_200).contains(&assigned), "{assigned}");
        assert_eq!(
            split.assigns_candidate("host-7"),
            split.assigns_candidate("host-7")
        );
        let all = SplitConfig {
            candidate_share: 1.0,
            ..split.clone()
        };
        let none = SplitConfig {
            candidate_share: 0.0,
            ..split
        };
        assert!(all.assigns_candidate("x") && !none.assigns_candidate("x"));
    }

    #[test]
    fn split_mode_runs_only_the_assigned_pipeline() {
        let yaml = |share: f64| {
            format!(
                "{RECEIVER}pipelines:\n  baseline: {{}}\n  candidate: {{}}\nshadow:\n  split: {{baseline: baseline, candidate: candidate, candidate_share: {share}, host_id: h1}}\n"
            )
        };
        assert_eq!(AgentConfig::load(&yaml(1.0)).unwrap().live, "candidate");
        assert_eq!(AgentConfig::load(&yaml(0.0)).unwrap().live, "baseline");
        let errors = AgentConfig::load(&yaml(1.5)).unwrap_err();
        assert_eq!(errors.0[0].path, "shadow.split.candidate_share");
    }

    #[test]
    fn two_pipelines_need_a_live_one() {
        let yaml = format!("{RECEIVER}pipelines:\n  a: {{}}\n  b: {{}}\n");
        let errors = AgentConfig::load(&yaml).unwrap_err().0;
        assert_eq!(errors[0].path, "shadow.live");
    }

    #[test]
    fn a_valid_config_builds_its_pipelines() {
        let yaml = format!(
            "{RECEIVER}pipelines:\n  candidate:\n    protect: ['{{__name__=~\"slo_.*\"}}']\n    processors:\n      - type: relabel\n        rules:\n          - action: labeldrop\n            regex: pod\n      - type: aggregate\n        without: [instance]\n        outputs: [sum, count]\n      - type: topk\n        k: 10\n        window: 1m\n      - type: cardinality_limit\n        limit: 1000\n      - type: adaptive\n        keep_top_k: 5\nexporters:\n  remote_write:\n    url: http://127.0.0.1:8428/api/v1/write\n"
        );
        let validated = AgentConfig::load(&yaml).unwrap();
        assert_eq!(validated.live, "candidate");
        assert_eq!(validated.pipelines[0].processor_stats().count(), 5);
    }
}
