//! The load simulator: deterministic, seeded series shaped like production, with churn and
//! injected anomalies whose ground truth is known.
//!
//! Profiles: `k8s` (namespaces × services × pods × containers × ~40 metric families of
//! counters, gauges and histograms, plus node metrics; ≥ 200k series at `scale: 1`),
//! `app` (HTTP request counters and latency histograms by method/route/status/instance) and
//! `high_cardinality` (a `user_id` label explosion). Each tick yields one batch with one
//! sample per series. The same seed and config always give the same batches.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::{Batch, Interner, Labels, MetricKind, Sample, Series, SeriesId, Sym};
use crate::processor::FieldError;

/// Which shape of data to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Profile {
    /// Kubernetes cluster: containers, pods, services, nodes.
    K8s,
    /// One HTTP application fleet.
    App,
    /// A `user_id`-style label explosion.
    HighCardinality,
}

fn default_seed() -> u64 {
    1
}
fn default_scale() -> f64 {
    1.0
}
fn default_interval() -> Duration {
    Duration::from_secs(15)
}

/// Injected anomalies.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnomalyConfig {
    /// How many anomalies to inject.
    #[serde(default)]
    pub count: usize,
    /// First tick at which anomalies may start.
    #[serde(default)]
    pub first_tick: u64,
    /// Last tick at which anomalies may start.
    #[serde(default)]
    pub last_tick: u64,
    /// Ticks each anomaly lasts.
    #[serde(default)]
    pub duration_ticks: u64,
}

/// `receivers.simulator`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulatorConfig {
    /// Profile.
    pub profile: Profile,
    /// Seed of every random choice.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Multiplier of the number of pods / instances / users.
    #[serde(default = "default_scale")]
    pub scale: f64,
    /// Time between ticks (sample timestamps advance by this much).
    #[serde(default = "default_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// Share of pods (or instances) replaced by new ones each tick, in [0, 1].
    #[serde(default)]
    pub churn_per_tick: f64,
    /// Injected anomalies.
    #[serde(default)]
    pub anomalies: AnomalyConfig,
    /// Timestamp of the first tick; the wall clock at start when absent.
    #[serde(default)]
    pub start_timestamp_ms: Option<i64>,
}

impl SimulatorConfig {
    /// A config for `profile` with defaults.
    pub fn new(profile: Profile, seed: u64) -> Self {
        Self {
            profile,
            seed,
            scale: default_scale(),
            interval: default_interval(),
            churn_per_tick: 0.0,
            anomalies: AnomalyConfig::default(),
            start_timestamp_ms: Some(1_700_000_000_000),
        }
    }

    /// Field errors, relative to the simulator config.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if !(self.scale > 0.0 && self.scale <= 100.0) {
            errors.push(FieldError::new(
                "scale",
                "must be greater than 0 and at most 100",
            ));
        }
        if self.interval.is_zero() {
            errors.push(FieldError::new("interval", "must be greater than 0"));
        }
        if !(0.0..=1.0).contains(&self.churn_per_tick) {
            errors.push(FieldError::new("churn_per_tick", "must be between 0 and 1"));
        }
        let a = &self.anomalies;
        if a.count > 0 && (a.duration_ticks == 0 || a.last_tick < a.first_tick) {
            errors.push(FieldError::new(
                "anomalies",
                "with count > 0, duration_ticks must be > 0 and last_tick >= first_tick",
            ));
        }
        errors
    }
}

/// Ground truth of one injected anomaly.
#[derive(Debug, Clone, PartialEq)]
pub struct AnomalyTruth {
    /// The affected series.
    pub series_id: SeriesId,
    /// Its text form, for reports.
    pub series: String,
    /// First tick of the anomaly (ticks count from 0).
    pub start_tick: u64,
    /// Last tick (inclusive).
    pub end_tick: u64,
    /// `spike` or `error_burst`.
    pub kind: &'static str,
}

/// A deterministic 64-bit generator (SplitMix64).
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// Seeds the generator.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    /// Next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform in [0, n).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }
}

/// Noise in [-1, 1] that depends only on (seed, series, tick).
fn noise(seed: u64, series: usize, tick: u64) -> f64 {
    let mut rng = SplitMix64::new(
        seed ^ (series as u64).wrapping_mul(0x2545_f491_4f6c_dd1d) ^ tick.wrapping_mul(0x9e37_79b9),
    );
    rng.next_f64() * 2.0 - 1.0
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Shape {
    /// Counter growing by `level` per second.
    Counter,
    /// Gauge around `level`.
    Gauge,
    /// Constant gauge (limits, `up`).
    Constant,
}

#[derive(Debug, Clone)]
struct SimSeries {
    name: Sym,
    /// Labels other than the churning one.
    base_labels: Labels,
    labels: Labels,
    kind: MetricKind,
    shape: Shape,
    level: f64,
    value: f64,
    /// Index of the churn unit (pod / instance), if any.
    unit: Option<usize>,
}

#[derive(Debug, Clone)]
struct ChurnUnit {
    label: Sym,
    prefix: String,
    generation: u64,
    value: Sym,
    series: Vec<usize>,
}

#[derive(Debug, Clone)]
struct ActiveAnomaly {
    series_index: usize,
    start_tick: u64,
    end_tick: u64,
    factor: f64,
}

/// The simulator.
#[derive(Debug)]
pub struct Simulator {
    config: SimulatorConfig,
    series: Vec<SimSeries>,
    units: Vec<ChurnUnit>,
    anomalies: Vec<ActiveAnomaly>,
    truth: Vec<AnomalyTruth>,
    interner: Interner,
    rng: SplitMix64,
    tick: u64,
    start_timestamp_ms: i64,
}

const HISTOGRAM_BOUNDS: [&str; 10] = [
    "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5",
];
const HISTOGRAM_CDF: [f64; 10] = [0.02, 0.06, 0.15, 0.3, 0.5, 0.72, 0.86, 0.94, 0.98, 0.995];

struct Builder<'a> {
    interner: &'a mut Interner,
    series: Vec<SimSeries>,
    units: Vec<ChurnUnit>,
}

impl Builder<'_> {
    fn sym(&mut self, s: &str) -> Sym {
        self.interner.intern(s)
    }

    fn push(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        kind: MetricKind,
        shape: Shape,
        level: f64,
        unit: Option<usize>,
    ) {
        let name = self.sym(name);
        let base_labels = Labels::from_pairs(labels.iter().copied());
        let index = self.series.len();
        if let Some(u) = unit {
            self.units[u].series.push(index);
        }
        self.series.push(SimSeries {
            name,
            base_labels,
            labels: Labels::new(),
            kind,
            shape,
            level,
            value: 0.0,
            unit,
        });
    }

    /// A classic histogram: buckets, `_sum` and `_count`, observations at `rate_per_s`.
    fn histogram(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        rate_per_s: f64,
        unit: Option<usize>,
    ) {
        let bucket = format!("{name}_bucket");
        for (bound, cdf) in HISTOGRAM_BOUNDS.iter().zip(HISTOGRAM_CDF) {
            let mut l = labels.to_vec();
            l.push(("le", bound));
            self.push(
                &bucket,
                &l,
                MetricKind::Histogram,
                Shape::Counter,
                rate_per_s * cdf,
                unit,
            );
        }
        let mut l = labels.to_vec();
        l.push(("le", "+Inf"));
        self.push(
            &bucket,
            &l,
            MetricKind::Histogram,
            Shape::Counter,
            rate_per_s,
            unit,
        );
        self.push(
            &format!("{name}_sum"),
            labels,
            MetricKind::Histogram,
            Shape::Counter,
            rate_per_s * 0.18,
            unit,
        );
        self.push(
            &format!("{name}_count"),
            labels,
            MetricKind::Histogram,
            Shape::Counter,
            rate_per_s,
            unit,
        );
    }

    fn unit(&mut self, label: &str, prefix: String) -> usize {
        let label = self.sym(label);
        let value = self.sym(&format!("{prefix}-0"));
        self.units.push(ChurnUnit {
            label,
            prefix,
            generation: 0,
            value,
            series: Vec::new(),
        });
        self.units.len() - 1
    }
}

fn scaled(base: usize, scale: f64) -> usize {
    ((base as f64 * scale).round() as usize).max(1)
}

fn build_k8s(b: &mut Builder<'_>, scale: f64, rng: &mut SplitMix64) {
    use MetricKind::{Counter as C, Gauge as G};
    let namespaces = 10;
    let services = 10;
    let pods = scaled(11, scale);
    let nodes = scaled(20, scale);
    const COUNTERS: [(&str, f64); 15] = [
        ("container_cpu_usage_seconds_total", 0.4),
        ("container_cpu_cfs_throttled_seconds_total", 0.02),
        ("container_network_receive_bytes_total", 2e5),
        ("container_network_transmit_bytes_total", 1.5e5),
        ("container_network_receive_packets_total", 300.0),
        ("container_network_transmit_packets_total", 250.0),
        ("container_network_receive_errors_total", 0.0),
        ("container_fs_reads_bytes_total", 4e4),
        ("container_fs_writes_bytes_total", 6e4),
        ("container_fs_reads_total", 20.0),
        ("container_fs_writes_total", 30.0),
        ("container_oom_events_total", 0.0),
        ("kube_pod_container_status_restarts_total", 0.0),
        ("process_cpu_seconds_total", 0.35),
        ("go_gc_duration_seconds_count", 0.5),
    ];
    const GAUGES: [(&str, f64, Shape); 16] = [
        ("container_memory_working_set_bytes", 2.5e8, Shape::Gauge),
        ("container_memory_rss", 2e8, Shape::Gauge),
        ("container_memory_cache", 5e7, Shape::Gauge),
        ("container_memory_usage_bytes", 3e8, Shape::Gauge),
        ("container_threads", 40.0, Shape::Gauge),
        ("container_file_descriptors", 120.0, Shape::Gauge),
        ("container_spec_cpu_quota", 100_000.0, Shape::Constant),
        ("container_spec_memory_limit_bytes", 1e9, Shape::Constant),
        (
            "kube_pod_container_resource_requests_cpu_cores",
            0.5,
            Shape::Constant,
        ),
        (
            "kube_pod_container_resource_limits_memory_bytes",
            1e9,
            Shape::Constant,
        ),
        ("process_resident_memory_bytes", 1.8e8, Shape::Gauge),
        ("process_open_fds", 90.0, Shape::Gauge),
        ("go_goroutines", 250.0, Shape::Gauge),
        ("go_memstats_heap_alloc_bytes", 6e7, Shape::Gauge),
        ("kube_pod_status_ready", 1.0, Shape::Constant),
        ("up", 1.0, Shape::Constant),
    ];
    for ns in 0..namespaces {
        let namespace = format!("ns-{ns}");
        for svc in 0..services {
            let service = format!("svc-{ns}-{svc}");
            // Zipf-like load: a few services carry most of the traffic.
            let service_weight = 1.0 / ((ns * services + svc + 1) as f64).powf(0.9);
            for pod in 0..pods {
                let unit = b.unit("pod", format!("{service}-{pod}"));
                let node = format!("node-{}", rng.below(nodes));
                let pod_weight = service_weight * (0.5 + rng.next_f64());
                let background_errors = rng.next_f64() < 0.1;
                for container in ["app", "sidecar"] {
                    let cw = if container == "app" {
                        pod_weight
                    } else {
                        pod_weight * 0.2
                    };
                    let base: [(&str, &str); 5] = [
                        ("namespace", &namespace),
                        ("service", &service),
                        ("container", container),
                        ("instance", &node),
                        ("job", "kubernetes-pods"),
                    ];
                    for (name, level) in COUNTERS {
                        b.push(
                            name,
                            &base,
                            C,
                            Shape::Counter,
                            level * cw * 100.0,
                            Some(unit),
                        );
                    }
                    for (name, level, shape) in GAUGES {
                        let level = if shape == Shape::Gauge {
                            level * (0.5 + cw)
                        } else {
                            level
                        };
                        b.push(name, &base, G, shape, level, Some(unit));
                    }
                    let rps = 200.0 * cw;
                    for method in ["GET", "POST"] {
                        for (status, share) in
                            [("200", 0.9), ("304", 0.07), ("404", 0.03), ("500", 0.0)]
                        {
                            let share = if status == "500" && background_errors {
                                0.002
                            } else {
                                share
                            };
                            let mut l = base.to_vec();
                            l.push(("method", method));
                            l.push(("status", status));
                            b.push(
                                "http_requests_total",
                                &l,
                                C,
                                Shape::Counter,
                                rps * share,
                                Some(unit),
                            );
                        }
                        let mut l = base.to_vec();
                        l.push(("method", method));
                        b.histogram("http_request_duration_seconds", &l, rps, Some(unit));
                        for code in ["OK", "Unavailable", "Internal"] {
                            let share = if code == "OK" { 1.0 } else { 0.0 };
                            let mut l = base.to_vec();
                            l.push(("grpc_method", method));
                            l.push(("grpc_code", code));
                            b.push(
                                "grpc_server_handled_total",
                                &l,
                                C,
                                Shape::Counter,
                                rps * 0.5 * share,
                                Some(unit),
                            );
                        }
                    }
                    b.histogram("rpc_duration_seconds", &base, rps * 0.5, Some(unit));
                    b.histogram("db_query_duration_seconds", &base, rps * 0.3, Some(unit));
                    for state in ["idle", "active"] {
                        let mut l = base.to_vec();
                        l.push(("state", state));
                        b.push(
                            "db_connections",
                            &l,
                            G,
                            Shape::Gauge,
                            10.0 * (0.5 + cw),
                            Some(unit),
                        );
                    }
                }
            }
        }
    }
    for node in 0..nodes {
        let instance = format!("node-{node}");
        for cpu in 0..4 {
            for (mode, share) in [
                ("idle", 0.6),
                ("user", 0.25),
                ("system", 0.1),
                ("iowait", 0.05),
            ] {
                let cpu = cpu.to_string();
                b.push(
                    "node_cpu_seconds_total",
                    &[
                        ("instance", &instance),
                        ("job", "node"),
                        ("cpu", &cpu),
                        ("mode", mode),
                    ],
                    C,
                    Shape::Counter,
                    share,
                    None,
                );
            }
        }
        b.push(
            "node_memory_MemAvailable_bytes",
            &[("instance", &instance), ("job", "node")],
            G,
            Shape::Gauge,
            8e9,
            None,
        );
        b.push(
            "node_load1",
            &[("instance", &instance), ("job", "node")],
            G,
            Shape::Gauge,
            2.0,
            None,
        );
        b.push(
            "up",
            &[("instance", &instance), ("job", "node")],
            G,
            Shape::Constant,
            1.0,
            None,
        );
    }
}

fn build_app(b: &mut Builder<'_>, scale: f64, rng: &mut SplitMix64) {
    let instances = scaled(20, scale);
    for i in 0..instances {
        let unit = b.unit("instance", format!("app-{i}"));
        let weight = 0.5 + rng.next_f64();
        for r in 0..20 {
            let route = format!("/api/v1/resource{r}");
            let route_weight = weight / (r + 1) as f64;
            for method in ["GET", "POST", "PUT", "DELETE"] {
                for (status, share) in [
                    ("200", 0.9),
                    ("201", 0.04),
                    ("400", 0.03),
                    ("404", 0.028),
                    ("500", 0.002),
                ] {
                    b.push(
                        "http_requests_total",
                        &[
                            ("job", "app"),
                            ("route", &route),
                            ("method", method),
                            ("status", status),
                        ],
                        MetricKind::Counter,
                        Shape::Counter,
                        50.0 * route_weight * share,
                        Some(unit),
                    );
                }
                b.histogram(
                    "http_request_duration_seconds",
                    &[("job", "app"), ("route", &route), ("method", method)],
                    50.0 * route_weight,
                    Some(unit),
                );
            }
        }
        b.push(
            "up",
            &[("job", "app")],
            MetricKind::Gauge,
            Shape::Constant,
            1.0,
            Some(unit),
        );
    }
}

fn build_high_cardinality(b: &mut Builder<'_>, scale: f64, rng: &mut SplitMix64) {
    let users = scaled(50_000, scale);
    for u in 0..users {
        let user = format!("user-{u:07}");
        let weight = 1.0 / ((u + 1) as f64).powf(0.7) * (0.5 + rng.next_f64());
        for endpoint in ["login", "search", "checkout", "profile", "logout"] {
            b.push(
                "api_requests_total",
                &[("job", "api"), ("endpoint", endpoint), ("user_id", &user)],
                MetricKind::Counter,
                Shape::Counter,
                100.0 * weight,
                None,
            );
        }
        b.push(
            "session_duration_seconds",
            &[("job", "api"), ("user_id", &user)],
            MetricKind::Gauge,
            Shape::Gauge,
            300.0 * (0.5 + weight),
            None,
        );
    }
}

impl Simulator {
    /// Builds the simulator; `config` should have passed [`SimulatorConfig::validate`].
    pub fn new(config: SimulatorConfig) -> Self {
        let mut interner = Interner::new();
        let mut rng = SplitMix64::new(config.seed);
        let mut builder = Builder {
            interner: &mut interner,
            series: Vec::new(),
            units: Vec::new(),
        };
        match config.profile {
            Profile::K8s => build_k8s(&mut builder, config.scale, &mut rng),
            Profile::App => build_app(&mut builder, config.scale, &mut rng),
            Profile::HighCardinality => {
                build_high_cardinality(&mut builder, config.scale, &mut rng)
            }
        }
        let Builder { series, units, .. } = builder;
        let start_timestamp_ms = config.start_timestamp_ms.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0)
        });
        let mut simulator = Self {
            config,
            series,
            units,
            anomalies: Vec::new(),
            truth: Vec::new(),
            interner,
            rng,
            tick: 0,
            start_timestamp_ms,
        };
        for index in 0..simulator.series.len() {
            simulator.relabel_series(index);
        }
        simulator.plan_anomalies();
        simulator
    }

    fn relabel_series(&mut self, index: usize) {
        let series = &mut self.series[index];
        let mut labels = series.base_labels.clone();
        if let Some(unit) = series.unit {
            let unit = &self.units[unit];
            labels.set(&unit.label, &unit.value);
        }
        series.labels = labels;
    }

    fn plan_anomalies(&mut self) {
        let plan = self.config.anomalies.clone();
        if plan.count == 0 {
            return;
        }
        // Candidates: series whose anomalies are meaningful (not constants).
        let spike_candidates: Vec<usize> = (0..self.series.len())
            .filter(|&i| {
                self.series[i].shape != Shape::Constant
                    && self.series[i].level > 0.0
                    && self.series[i].labels.get("le").is_none()
            })
            .collect();
        let error_candidates: Vec<usize> = (0..self.series.len())
            .filter(|&i| {
                self.series[i]
                    .labels
                    .get("status")
                    .is_some_and(|s| s.starts_with('5'))
            })
            .collect();
        let mut used = hashbrown::HashSet::<usize>::new();
        for n in 0..plan.count {
            let error_burst = n % 2 == 1 && !error_candidates.is_empty();
            let candidates = if error_burst {
                &error_candidates
            } else {
                &spike_candidates
            };
            if candidates.is_empty() {
                break;
            }
            let mut index = candidates[self.rng.below(candidates.len())];
            let mut attempts = 0;
            while used.contains(&index) && attempts < 100 {
                index = candidates[self.rng.below(candidates.len())];
                attempts += 1;
            }
            used.insert(index);
            let span = plan.last_tick - plan.first_tick + 1;
            let start_tick = plan.first_tick + self.rng.next_u64() % span;
            let end_tick = start_tick + plan.duration_ticks - 1;
            let (factor, kind) = if error_burst {
                (0.0, "error_burst")
            } else {
                (4.0 + 4.0 * self.rng.next_f64(), "spike")
            };
            self.anomalies.push(ActiveAnomaly {
                series_index: index,
                start_tick,
                end_tick,
                factor,
            });
            self.truth.push(AnomalyTruth {
                series_id: SeriesId(0),
                series: String::new(),
                start_tick,
                end_tick,
                kind,
            });
        }
        self.refresh_truth();
    }

    fn refresh_truth(&mut self) {
        for (anomaly, truth) in self.anomalies.iter().zip(self.truth.iter_mut()) {
            let s = &self.series[anomaly.series_index];
            truth.series_id = crate::model::series_id(&s.name, &s.labels);
            truth.series = format!(
                "{}{:?}",
                s.name,
                s.labels
                    .iter()
                    .map(|l| format!("{}={}", l.name, l.value))
                    .collect::<Vec<_>>()
            );
        }
    }

    /// Number of series per tick.
    pub fn series_count(&self) -> usize {
        self.series.len()
    }

    /// The next tick index.
    pub fn tick(&self) -> u64 {
        self.tick
    }

    /// Ground truth of the injected anomalies.
    pub fn ground_truth(&self) -> &[AnomalyTruth] {
        &self.truth
    }

    /// The configuration.
    pub fn config(&self) -> &SimulatorConfig {
        &self.config
    }

    fn churn(&mut self) {
        if self.config.churn_per_tick <= 0.0 || self.units.is_empty() {
            return;
        }
        let expected = self.config.churn_per_tick * self.units.len() as f64;
        let mut count = expected.floor() as usize;
        if self.rng.next_f64() < expected - expected.floor() {
            count += 1;
        }
        let tick = self.tick;
        for _ in 0..count {
            let unit = self.rng.below(self.units.len());
            // A pod carrying an active or planned anomaly keeps its identity.
            let busy = self
                .anomalies
                .iter()
                .any(|a| a.end_tick >= tick && self.series[a.series_index].unit == Some(unit));
            if busy {
                continue;
            }
            let u = &mut self.units[unit];
            u.generation += 1;
            u.value = self
                .interner
                .intern(&format!("{}-{}", u.prefix, u.generation));
            let members = u.series.clone();
            for index in members {
                self.series[index].value = 0.0;
                self.relabel_series(index);
            }
        }
    }

    /// Produces the batch of the next tick.
    pub fn next_batch(&mut self) -> Batch {
        if self.tick > 0 {
            self.churn();
        }
        let tick = self.tick;
        let interval_s = self.config.interval.as_secs_f64();
        let timestamp_ms =
            self.start_timestamp_ms + (tick as i64) * (self.config.interval.as_millis() as i64);
        let seed = self.config.seed;
        let mut factors: Vec<(usize, f64, bool)> = Vec::new();
        for a in &self.anomalies {
            if (a.start_tick..=a.end_tick).contains(&tick) {
                factors.push((a.series_index, a.factor, a.factor == 0.0));
            }
        }
        let mut out = Vec::with_capacity(self.series.len());
        for (index, s) in self.series.iter_mut().enumerate() {
            let jitter = noise(seed, index, tick);
            let anomaly = factors.iter().find(|(i, _, _)| *i == index);
            match s.shape {
                Shape::Counter => {
                    let mut rate = s.level * (1.0 + 0.05 * jitter);
                    match anomaly {
                        Some((_, _, true)) => rate = rate.max(1.0) * 50.0,
                        Some((_, factor, false)) => rate *= factor,
                        None => {}
                    }
                    s.value += rate * interval_s;
                }
                Shape::Gauge => {
                    s.value = s.level * (1.0 + 0.05 * jitter);
                    if let Some((_, factor, _)) = anomaly {
                        s.value *= factor.max(4.0);
                    }
                }
                Shape::Constant => s.value = s.level,
            }
            out.push(Series::new(
                s.name.clone(),
                s.labels.clone(),
                s.kind,
                vec![Sample::new(timestamp_ms, s.value)],
            ));
        }
        self.tick += 1;
        Batch::new(out)
    }
}

/// Builds a symbol without an interner (tests).
pub fn sym(value: &str) -> Sym {
    Arc::from(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_gives_identical_batches() {
        let mut config = SimulatorConfig::new(Profile::App, 7);
        config.churn_per_tick = 0.1;
        let mut a = Simulator::new(config.clone());
        let mut b = Simulator::new(config);
        for _ in 0..3 {
            let (x, y) = (a.next_batch(), b.next_batch());
            assert_eq!(x.len(), y.len());
            assert!(x.series.iter().zip(&y.series).all(|(s, t)| s.same_bits(t)));
        }
    }

    #[test]
    fn k8s_profile_has_at_least_200k_series_at_default_scale() {
        let sim = Simulator::new(SimulatorConfig::new(Profile::K8s, 1));
        assert!(sim.series_count() >= 200_000, "{}", sim.series_count());
    }

    #[test]
    fn churn_replaces_pods_and_restarts_their_counters() {
        let mut config = SimulatorConfig::new(Profile::App, 3);
        config.churn_per_tick = 0.5;
        let mut sim = Simulator::new(config);
        let first: hashbrown::HashSet<SeriesId> =
            sim.next_batch().series.iter().map(Series::id).collect();
        let second: hashbrown::HashSet<SeriesId> =
            sim.next_batch().series.iter().map(Series::id).collect();
        let new = second.difference(&first).count();
        assert!(new > 0, "churn created no new series");
        assert_eq!(first.len(), second.len());
    }

    #[test]
    fn anomalies_have_ground_truth_and_change_values() {
        let mut config = SimulatorConfig::new(Profile::App, 5);
        config.anomalies = AnomalyConfig {
            count: 4,
            first_tick: 2,
            last_tick: 2,
            duration_ticks: 2,
        };
        let mut sim = Simulator::new(config);
        assert_eq!(sim.ground_truth().len(), 4);
        let truth = sim.ground_truth()[0].clone();
        let value_at = |batch: &Batch| {
            batch
                .series
                .iter()
                .find(|s| s.id() == truth.series_id)
                .map(|s| s.samples[0].value)
        };
        let b0 = sim.next_batch();
        let b1 = sim.next_batch();
        let b2 = sim.next_batch();
        let (v0, v1, v2) = (
            value_at(&b0).unwrap(),
            value_at(&b1).unwrap(),
            value_at(&b2).unwrap(),
        );
        let is_counter = b2
            .series
            .iter()
            .any(|s| s.id() == truth.series_id && s.kind == MetricKind::Counter);
        if is_counter {
            // The increase during the anomaly is several times the normal one.
            assert!((v2 - v1) > 3.0 * (v1 - v0), "{v0} {v1} {v2}");
        } else {
            assert!(v2 > 3.0 * v1, "{v0} {v1} {v2}");
        }
    }
}
