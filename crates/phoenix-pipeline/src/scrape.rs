//! Prometheus scrape receiver: static targets scraped on an interval, the text exposition
//! format (0.0.4) and OpenMetrics text parsed into series, with Prometheus' target labels
//! (`job`, `instance`, static labels, `honor_labels`) and the synthetic `up`,
//! `scrape_duration_seconds` and `scrape_samples_scraped` series.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::engine::EngineHandle;
use crate::model::{Batch, Interner, Labels, MetricKind, Sample, Series, Sym};
use crate::processor::FieldError;
use crate::telemetry::Telemetry;

fn default_scrape_interval() -> Duration {
    Duration::from_secs(15)
}
/// Prometheus' global `scrape_timeout`, cut to the interval when that is shorter.
const DEFAULT_SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);
fn default_metrics_path() -> String {
    "/metrics".into()
}
fn default_scheme() -> String {
    "http".into()
}

/// One `static_configs` entry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticConfig {
    /// `host:port` targets.
    pub targets: Vec<String>,
    /// Labels added to every series of these targets.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// One `scrape_configs` entry (a subset of Prometheus' fields).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScrapeConfig {
    /// The `job` label.
    pub job_name: String,
    /// Time between scrapes.
    #[serde(default = "default_scrape_interval", with = "humantime_serde")]
    pub scrape_interval: Duration,
    /// Timeout of one scrape (at most the interval). When absent, 10 s or the interval if
    /// that is shorter, as Prometheus does: see [`ScrapeConfig::timeout`].
    #[serde(
        default,
        with = "humantime_serde::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub scrape_timeout: Option<Duration>,
    /// HTTP path.
    #[serde(default = "default_metrics_path")]
    pub metrics_path: String,
    /// `http` or `https`.
    #[serde(default = "default_scheme")]
    pub scheme: String,
    /// Keep scraped labels that clash with target labels (else they become `exported_*`).
    #[serde(default)]
    pub honor_labels: bool,
    /// The targets.
    pub static_configs: Vec<StaticConfig>,
}

impl ScrapeConfig {
    /// The timeout of one scrape: `scrape_timeout`, else 10 s cut to `scrape_interval`.
    pub fn timeout(&self) -> Duration {
        self.scrape_timeout
            .unwrap_or(DEFAULT_SCRAPE_TIMEOUT.min(self.scrape_interval))
    }

    /// Field errors, relative to this entry.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if self.job_name.is_empty() {
            errors.push(FieldError::new("job_name", "must not be empty"));
        }
        if self.scrape_interval.is_zero() {
            errors.push(FieldError::new("scrape_interval", "must be greater than 0"));
        }
        if self
            .scrape_timeout
            .is_some_and(|t| t.is_zero() || t > self.scrape_interval)
        {
            errors.push(FieldError::new(
                "scrape_timeout",
                "must be greater than 0 and at most scrape_interval",
            ));
        }
        if self.scheme != "http" && self.scheme != "https" {
            errors.push(FieldError::new("scheme", "must be http or https"));
        }
        if !self.metrics_path.starts_with('/') {
            errors.push(FieldError::new("metrics_path", "must start with /"));
        }
        for (i, sc) in self.static_configs.iter().enumerate() {
            for (j, target) in sc.targets.iter().enumerate() {
                if target.is_empty() || target.contains('/') {
                    errors.push(FieldError::new(
                        format!("static_configs[{i}].targets[{j}]"),
                        format!("{target:?} must be host:port"),
                    ));
                }
            }
        }
        errors
    }
}

/// `receivers.scrape`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScrapeReceiverConfig {
    /// The jobs.
    pub scrape_configs: Vec<ScrapeConfig>,
}

/// One parsed exposition line: name, labels, kind (from `# TYPE`), value and the
/// optional timestamp in milliseconds.
pub type ScrapedSample = (String, Vec<(String, String)>, MetricKind, f64, Option<i64>);

/// Why an exposition could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

fn kind_from_type(text: &str) -> MetricKind {
    match text {
        "counter" => MetricKind::Counter,
        "gauge" => MetricKind::Gauge,
        "histogram" | "gaugehistogram" => MetricKind::Histogram,
        "summary" => MetricKind::Summary,
        _ => MetricKind::Unknown,
    }
}

fn parse_value(text: &str) -> Option<f64> {
    match text {
        "+Inf" | "Inf" | "+inf" | "inf" => Some(f64::INFINITY),
        "-Inf" | "-inf" => Some(f64::NEG_INFINITY),
        "NaN" | "nan" => Some(f64::NAN),
        other => other.parse().ok(),
    }
}

/// The kind of series `name` given the `# TYPE` lines seen.
fn kind_for(name: &str, types: &BTreeMap<String, MetricKind>) -> MetricKind {
    if let Some(kind) = types.get(name) {
        return *kind;
    }
    for suffix in ["_bucket", "_sum", "_count", "_total", "_created"] {
        if let Some(family) = name.strip_suffix(suffix) {
            if let Some(kind) = types.get(family) {
                return *kind;
            }
        }
    }
    MetricKind::from_prometheus_name(name)
}

/// Parses the Prometheus text format or OpenMetrics text into `(name, labels, value,
/// timestamp_ms)` tuples, typed from `# TYPE` lines. Exemplars are ignored.
pub fn parse_exposition(text: &str) -> Result<Vec<ScrapedSample>, ParseError> {
    let mut types: BTreeMap<String, MetricKind> = BTreeMap::new();
    let mut out = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line_no = index + 1;
        let err = |reason: &str| ParseError {
            line: line_no,
            reason: reason.to_string(),
        };
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut parts = comment.split_whitespace();
            if parts.next() == Some("TYPE") {
                if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                    types.insert(name.to_string(), kind_from_type(kind));
                }
            }
            continue;
        }
        // Exemplars (OpenMetrics) follow " # ".
        let line = line.split(" # ").next().unwrap_or(line);
        let name_end = line
            .find(|c: char| c == '{' || c.is_whitespace())
            .ok_or_else(|| err("no value"))?;
        let name = &line[..name_end];
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        {
            return Err(err("invalid metric name"));
        }
        let mut rest = &line[name_end..];
        let mut labels = Vec::new();
        if let Some(after) = rest.strip_prefix('{') {
            let mut chars = after.char_indices().peekable();
            let consumed;
            loop {
                while chars
                    .peek()
                    .is_some_and(|(_, c)| c.is_whitespace() || *c == ',')
                {
                    chars.next();
                }
                match chars.peek() {
                    Some((i, '}')) => {
                        consumed = i + 1;
                        break;
                    }
                    None => return Err(err("unterminated label set")),
                    _ => {}
                }
                let mut label = String::new();
                while let Some((_, c)) = chars.peek() {
                    if c.is_ascii_alphanumeric() || *c == '_' {
                        label.push(*c);
                        chars.next();
                    } else {
                        break;
                    }
                }
                if label.is_empty()
                    || chars.next().map(|(_, c)| c) != Some('=')
                    || chars.next().map(|(_, c)| c) != Some('"')
                {
                    return Err(err("invalid label"));
                }
                let mut value = String::new();
                loop {
                    match chars.next() {
                        Some((_, '"')) => break,
                        Some((_, '\\')) => match chars.next() {
                            Some((_, 'n')) => value.push('\n'),
                            Some((_, c)) => value.push(c),
                            None => return Err(err("unterminated escape")),
                        },
                        Some((_, c)) => value.push(c),
                        None => return Err(err("unterminated label value")),
                    }
                }
                labels.push((label, value));
            }
            rest = &after[consumed..];
        }
        let mut fields = rest.split_whitespace();
        let value = fields
            .next()
            .and_then(parse_value)
            .ok_or_else(|| err("invalid value"))?;
        let timestamp_ms = match fields.next() {
            None => None,
            // OpenMetrics timestamps are seconds with decimals; the text format uses ms.
            Some(ts) if ts.contains('.') => {
                Some((ts.parse::<f64>().map_err(|_| err("invalid timestamp"))? * 1000.0) as i64)
            }
            Some(ts) => Some(ts.parse::<i64>().map_err(|_| err("invalid timestamp"))?),
        };
        if name.ends_with("_created") {
            // OpenMetrics creation timestamps are metadata, not series to forward.
            continue;
        }
        out.push((
            name.to_string(),
            labels,
            kind_for(name, &types),
            value,
            timestamp_ms,
        ));
    }
    Ok(out)
}

/// Builds the series of one scrape with Prometheus' target-label rules.
pub fn series_from_scrape(
    parsed: Vec<ScrapedSample>,
    target_labels: &[(String, String)],
    honor_labels: bool,
    scrape_timestamp_ms: i64,
    interner: &mut Interner,
) -> Vec<Series> {
    let mut out = Vec::with_capacity(parsed.len());
    for (name, labels, kind, value, timestamp_ms) in parsed {
        let mut merged: Vec<(Cow<'_, str>, &str)> =
            Vec::with_capacity(labels.len() + target_labels.len());
        for (k, v) in &labels {
            let clashes = target_labels.iter().any(|(t, _)| t == k);
            let key = if clashes && !honor_labels {
                Cow::Owned(format!("exported_{k}"))
            } else {
                Cow::Borrowed(k.as_str())
            };
            merged.push((key, v));
        }
        for (k, v) in target_labels {
            let scraped_wins = honor_labels && labels.iter().any(|(l, _)| l == k);
            if !scraped_wins {
                merged.push((Cow::Borrowed(k), v));
            }
        }
        out.push(Series::new(
            interner.intern(&name),
            Labels::from_pairs(merged),
            kind,
            vec![Sample::new(
                timestamp_ms.unwrap_or(scrape_timestamp_ms),
                value,
            )],
        ));
    }
    out
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Scrapes one target forever, sending each scrape as a batch.
async fn scrape_loop(
    client: reqwest::Client,
    job: Arc<ScrapeConfig>,
    target: String,
    static_labels: BTreeMap<String, String>,
    engine: EngineHandle,
    telemetry: Arc<Telemetry>,
) {
    let url = format!("{}://{}{}", job.scheme, target, job.metrics_path);
    let mut target_labels: Vec<(String, String)> = static_labels.into_iter().collect();
    target_labels.retain(|(k, _)| k != "job" && k != "instance");
    target_labels.push(("job".into(), job.job_name.clone()));
    target_labels.push(("instance".into(), target.clone()));
    let mut interner = Interner::new();
    let mut ticker = tokio::time::interval(job.scrape_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if interner.len() > 1 << 18 {
            interner.clear();
        }
        let started = Instant::now();
        let timestamp_ms = now_ms();
        let response = client
            .get(&url)
            .header(
                "Accept",
                "text/plain;version=0.0.4;q=0.9,application/openmetrics-text;version=1.0.0;q=0.5",
            )
            .timeout(job.timeout())
            .send()
            .await;
        let body = match response {
            Ok(r) if r.status().is_success() => r.text().await.ok(),
            _ => None,
        };
        let parsed = body.as_deref().map(parse_exposition);
        let (mut series, up) = match parsed {
            Some(Ok(parsed)) => (
                series_from_scrape(
                    parsed,
                    &target_labels,
                    job.honor_labels,
                    timestamp_ms,
                    &mut interner,
                ),
                1.0,
            ),
            Some(Err(e)) => {
                tracing::warn!(target = %url, error = %e, "scrape parse failed");
                (Vec::new(), 0.0)
            }
            None => (Vec::new(), 0.0),
        };
        if up == 0.0 {
            Telemetry::add(&telemetry.receiver_request_errors_total, 1);
        }
        Telemetry::add(&telemetry.receiver_requests_total, 1);
        let scraped = series.len() as f64;
        let target_set = Labels::from_pairs(target_labels.iter().map(|(k, v)| (k, v)));
        for (name, value) in [
            ("up", up),
            ("scrape_duration_seconds", started.elapsed().as_secs_f64()),
            ("scrape_samples_scraped", scraped),
        ] {
            let name: Sym = interner.intern(name);
            series.push(Series::new(
                name,
                target_set.clone(),
                MetricKind::Gauge,
                vec![Sample::new(timestamp_ms, value)],
            ));
        }
        Telemetry::add(&telemetry.receiver_series_total, series.len() as u64);
        Telemetry::add(&telemetry.receiver_samples_total, series.len() as u64);
        if engine.send_batch(Batch::new(series)).await.is_err() {
            break;
        }
    }
}

/// Starts one scrape loop per target; returns their tasks.
pub fn start(
    config: &ScrapeReceiverConfig,
    engine: &EngineHandle,
    telemetry: &Arc<Telemetry>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let client = reqwest::Client::new();
    let mut tasks = Vec::new();
    for job in &config.scrape_configs {
        let job = Arc::new(job.clone());
        for sc in &job.static_configs {
            for target in &sc.targets {
                tasks.push(tokio::spawn(scrape_loop(
                    client.clone(),
                    job.clone(),
                    target.clone(),
                    sc.labels.clone(),
                    engine.clone(),
                    telemetry.clone(),
                )));
            }
        }
    }
    tasks
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP http_requests_total Requests.
# TYPE http_requests_total counter
http_requests_total{method="GET",code="200"} 1027 1395066363000
http_requests_total{method="POST",code="400"}    3
# TYPE latency histogram
latency_bucket{le="0.1"} 5
latency_bucket{le="+Inf"} 9
latency_sum 1.5
latency_count 9
msg{text="a \"quoted\"\nline\\"} NaN
# TYPE temp gauge
temp -Inf
"#;

    #[test]
    fn an_absent_scrape_timeout_is_ten_seconds_cut_to_the_interval_like_prometheus() {
        let job = |yaml: &str| serde_yaml::from_str::<ScrapeConfig>(yaml).unwrap();
        let fast = job("{job_name: node, scrape_interval: 1s, static_configs: []}");
        assert!(fast.validate().is_empty(), "{:?}", fast.validate());
        assert_eq!(fast.timeout(), Duration::from_secs(1));
        let usual = job("{job_name: node, static_configs: []}");
        assert_eq!(usual.timeout(), Duration::from_secs(10));
        let set = job("{job_name: node, scrape_timeout: 3s, static_configs: []}");
        assert_eq!(set.timeout(), Duration::from_secs(3));
        // An explicit timeout longer than the interval is refused, as Prometheus does.
        let long =
            job("{job_name: node, scrape_interval: 1s, scrape_timeout: 2s, static_configs: []}");
        let errors = long.validate();
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].to_string().contains("scrape_timeout"),
            "{errors:?}"
        );
    }

    #[test]
    fn text_format_lines_parse_with_types_escapes_and_timestamps() {
        let parsed = parse_exposition(TEXT).unwrap();
        assert_eq!(parsed.len(), 8);
        assert_eq!(parsed[0].0, "http_requests_total");
        assert_eq!(parsed[0].2, MetricKind::Counter);
        assert_eq!(parsed[0].4, Some(1_395_066_363_000));
        assert_eq!(parsed[1].3, 3.0);
        assert_eq!(parsed[2].2, MetricKind::Histogram);
        assert_eq!(parsed[3].1, vec![("le".to_string(), "+Inf".to_string())]);
        assert_eq!(parsed[6].1[0].1, "a \"quoted\"\nline\\");
        assert!(parsed[6].3.is_nan());
        assert_eq!(parsed[7].3, f64::NEG_INFINITY);
        assert_eq!(parsed[7].2, MetricKind::Gauge);
    }

    #[test]
    fn openmetrics_created_series_and_exemplars_are_dropped() {
        let text = "# TYPE foo counter\nfoo_total 17.0 1520879607.789 # {trace_id=\"abc\"} 1.0\nfoo_created 1520872607.123\n# EOF\n";
        let parsed = parse_exposition(text).unwrap();
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].2, MetricKind::Counter);
        assert_eq!(parsed[0].4, Some(1_520_879_607_789));
    }

    #[test]
    fn malformed_lines_are_errors_with_line_numbers() {
        assert_eq!(
            parse_exposition("ok 1\nbad{x=\"1\" 2\n").unwrap_err().line,
            2
        );
        assert!(parse_exposition("novalue\n").is_err());
        assert!(parse_exposition("m{l=1} 2\n").is_err());
        assert!(parse_exposition("m 1 notatime\n").is_err());
    }

    #[test]
    fn clashing_labels_become_exported_unless_honor_labels() {
        let parsed = parse_exposition("m{job=\"inner\",a=\"1\"} 1\n").unwrap();
        let targets = vec![
            ("job".to_string(), "outer".to_string()),
            ("instance".to_string(), "h:1".to_string()),
        ];
        let mut interner = Interner::new();
        let s = &series_from_scrape(parsed.clone(), &targets, false, 5, &mut interner)[0];
        assert_eq!(
            s.to_string(),
            r#"m{a="1",exported_job="inner",instance="h:1",job="outer"}"#
        );
        assert_eq!(s.samples[0].timestamp_ms, 5);
        let s = &series_from_scrape(parsed, &targets, true, 5, &mut interner)[0];
        assert_eq!(s.to_string(), r#"m{a="1",instance="h:1",job="inner"}"#);
    }
}
