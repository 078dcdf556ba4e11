//! End-to-end with real peers from Debian's packages (`victoria-metrics`, `prometheus`,
//! `prometheus-node-exporter`): the `phoenix-agent` binary between them, series counted on
//! the far side through VictoriaMetrics' and Prometheus' query APIs.
//!
//! The tests install missing peers with apt-get (as root) and otherwise fail with a message
//! naming the packages. Everything listens on 127.0.0.1 only.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use phoenix_pipeline::config::PipelineConfig;
use phoenix_pipeline::model::Series;
use phoenix_pipeline::remote_write::RemoteWriteEncoder;
use phoenix_pipeline::simulator::{Profile, Simulator, SimulatorConfig};

use phoenix_e2e::free_port;
use phoenix_e2e::peers::{
    debian_binaries, eventually, http_get, start_node_exporter, start_victoria_metrics, Peer,
};

fn http_post(url: &str, body: Vec<u8>) -> Option<u16> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    runtime.block_on(async {
        reqwest::Client::new()
            .post(url)
            .header("Content-Encoding", "snappy")
            .header("Content-Type", "application/x-protobuf")
            .body(body)
            .send()
            .await
            .ok()
            .map(|r| r.status().as_u16())
    })
}

/// Series VictoriaMetrics holds for `selector`, as sorted label-set strings.
fn vm_series(vm: u16, selector: &str) -> Option<BTreeSet<String>> {
    http_get(&format!("http://127.0.0.1:{vm}/internal/force_flush"))?;
    let url = format!(
        "http://127.0.0.1:{vm}/api/v1/series?match[]={}&start=0",
        urlencode(selector)
    );
    let body: serde_json::Value = serde_json::from_str(&http_get(&url)?).ok()?;
    let data = body.get("data")?.as_array()?;
    Some(
        data.iter()
            .map(|labels| {
                let mut pairs: Vec<String> = labels
                    .as_object()
                    .map(|o| {
                        o.iter()
                            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                            .collect()
                    })
                    .unwrap_or_default();
                pairs.sort();
                pairs.join(",")
            })
            .collect(),
    )
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

fn series_key(series: &Series) -> String {
    let mut pairs: Vec<String> = series
        .labels
        .iter()
        .map(|l| format!("{}={}", l.name, l.value))
        .collect();
    pairs.push(format!("__name__={}", series.name));
    pairs.sort();
    pairs.join(",")
}

fn start_agent(dir: &Path, yaml: &str) -> Peer {
    let config = dir.join("phoenix.yaml");
    std::fs::write(&config, yaml).expect("write config");
    Peer::spawn(
        "phoenix-agent",
        &phoenix_e2e::bin("phoenix-agent"),
        &[
            "run".into(),
            "--config".into(),
            config.display().to_string(),
            "--kpi-interval-seconds".into(),
            "1".into(),
        ],
        &dir.join("phoenix.log"),
    )
}

const CANDIDATE: &str = r#"
    protect: ['up']
    processors:
      - type: relabel
        rules:
          - {source_labels: [job], target_label: team, replacement: payments-$1}
      - type: aggregate
        without: [instance, route]
"#;

#[test]
fn simulator_stream_is_reduced_into_victoria_metrics_exactly_as_computed_in_process() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut vm, vm_port) = start_victoria_metrics(dir.path());
    let rw_port = free_port();
    let mut agent = start_agent(
        dir.path(),
        &format!(
            "receivers:\n  remote_write:\n    listen: 127.0.0.1:{rw_port}\npipelines:\n  baseline: {{}}\n  candidate:{CANDIDATE}shadow:\n  live: candidate\nexporters:\n  remote_write:\n    url: http://127.0.0.1:{vm_port}/api/v1/write\n    min_backoff: 50ms\n"
        ),
    );

    // What the candidate pipeline makes of the stream, computed in process.
    let mut config = SimulatorConfig::new(Profile::App, 9);
    config.scale = 0.25;
    config.start_timestamp_ms = Some(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64 - 120_000)
            .unwrap_or(0),
    );
    let mut simulator = Simulator::new(config);
    let pipeline_yaml = format!("{}\n", CANDIDATE.trim_start_matches('\n'));
    let pipeline_yaml: String = pipeline_yaml
        .lines()
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n");
    let mut pipeline = serde_yaml::from_str::<PipelineConfig>(&pipeline_yaml)
        .expect("pipeline yaml")
        .build("candidate", "candidate")
        .expect("pipeline");
    let mut expected = BTreeSet::new();
    let mut input_series = 0;
    let mut encoder = RemoteWriteEncoder::new();
    for _ in 0..3 {
        let batch = simulator.next_batch();
        input_series = batch.len();
        let body = encoder.encode(&batch.series, &[]);
        expected.extend(pipeline.process(batch).series.iter().map(series_key));
        let status = eventually(
            "phoenix-agent accepts remote write",
            Duration::from_secs(30),
            &mut [&mut agent],
            || {
                http_post(
                    &format!("http://127.0.0.1:{rw_port}/api/v1/write"),
                    body.clone(),
                )
            },
        );
        assert_eq!(status, 204);
    }
    assert!(
        expected.len() * 5 < input_series,
        "the pipeline reduces: {} of {input_series}",
        expected.len()
    );

    let stored = eventually(
        "the reduced series in victoria-metrics",
        Duration::from_secs(60),
        &mut [&mut vm, &mut agent],
        || vm_series(vm_port, r#"{__name__=~".+"}"#).filter(|s| s.len() >= expected.len()),
    );
    assert_eq!(
        stored, expected,
        "VictoriaMetrics holds exactly the candidate's output"
    );
}

#[test]
fn node_exporter_through_prometheus_and_phoenix_into_victoria_metrics_and_scraped_back() {
    let prometheus = debian_binaries(&[("prometheus", "/usr/bin/prometheus")]).remove(0);
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut vm, vm_port) = start_victoria_metrics(dir.path());
    let (mut node, node_port) = start_node_exporter(dir.path());
    let rw_port = free_port();
    let metrics_port = free_port();
    let mut agent = start_agent(
        dir.path(),
        &format!(
            r#"receivers:
  remote_write:
    listen: 127.0.0.1:{rw_port}
pipelines:
  candidate:
    protect: ['up']
    processors:
      - type: filter
        drop: ['{{__name__=~"go_.*"}}']
      - type: aggregate
        match: ['node_cpu_seconds_total']
        without: [cpu]
exporters:
  remote_write:
    url: http://127.0.0.1:{vm_port}/api/v1/write
    min_backoff: 50ms
  prometheus:
    listen: 127.0.0.1:{metrics_port}
"#
        ),
    );
    let prom_port = free_port();
    let prom_config = dir.path().join("prometheus.yml");
    std::fs::write(
        &prom_config,
        format!(
            r#"global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: node
    static_configs: [{{targets: ['127.0.0.1:{node_port}']}}]
  - job_name: phoenix
    static_configs: [{{targets: ['127.0.0.1:{metrics_port}']}}]
remote_write:
  - url: http://127.0.0.1:{rw_port}/api/v1/write
    write_relabel_configs:
      - {{source_labels: [job], regex: node, action: keep}}
    queue_config: {{batch_send_deadline: 1s, min_backoff: 100ms, max_backoff: 1s}}
"#
        ),
    )
    .expect("prometheus config");
    let mut prom = Peer::spawn(
        "prometheus",
        &prometheus,
        &[
            format!("--config.file={}", prom_config.display()),
            format!("--storage.tsdb.path={}", dir.path().join("prom").display()),
            format!("--web.listen-address=127.0.0.1:{prom_port}"),
        ],
        &dir.path().join("prometheus.log"),
    );

    // Far side: node metrics arrived reduced, go_* dropped, cpu aggregated away.
    let cpu = eventually(
        "node_cpu_seconds_total in victoria-metrics",
        Duration::from_secs(90),
        &mut [&mut vm, &mut agent, &mut prom, &mut node],
        || vm_series(vm_port, "node_cpu_seconds_total").filter(|s| !s.is_empty()),
    );
    assert!(
        cpu.iter().all(|s| !s.contains("cpu=")),
        "cpu aggregated away: {cpu:?}"
    );
    let modes: BTreeSet<&str> = cpu
        .iter()
        .filter_map(|s| s.split(',').find_map(|p| p.strip_prefix("mode=")))
        .collect();
    assert_eq!(cpu.len(), modes.len(), "one series per mode: {cpu:?}");
    let load = eventually(
        "node_load1",
        Duration::from_secs(30),
        &mut [&mut vm],
        || vm_series(vm_port, "node_load1").filter(|s| !s.is_empty()),
    );
    assert_eq!(load.len(), 1);
    let up = eventually(
        "protected up",
        Duration::from_secs(30),
        &mut [&mut vm],
        || vm_series(vm_port, r#"up{job="node"}"#).filter(|s| !s.is_empty()),
    );
    assert_eq!(up.len(), 1);
    let go = vm_series(vm_port, r#"{__name__=~"go_.*"}"#).expect("series query");
    assert!(go.is_empty(), "go_* must be filtered: {go:?}");

    // Prometheus scrapes Phoenix's /metrics: its counters and the live output are there.
    let query = |q: &str| -> Option<f64> {
        let body = http_get(&format!(
            "http://127.0.0.1:{prom_port}/api/v1/query?query={}",
            urlencode(q)
        ))?;
        let json: serde_json::Value = serde_json::from_str(&body).ok()?;
        json["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    };
    let requests = eventually(
        "prometheus scraping phoenix /metrics",
        Duration::from_secs(60),
        &mut [&mut prom, &mut agent],
        || query(r#"phoenix_receiver_requests_total{job="phoenix"}"#).filter(|v| *v > 0.0),
    );
    assert!(requests > 0.0);
    let exposed = eventually(
        "live output exposed",
        Duration::from_secs(30),
        &mut [&mut prom],
        || query(r#"count(node_cpu_seconds_total{job="phoenix"})"#),
    );
    assert_eq!(
        exposed as usize,
        modes.len(),
        "exposed output matches what was exported"
    );
}

#[test]
fn node_exporter_scraped_by_phoenix_is_reduced_into_victoria_metrics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut vm, vm_port) = start_victoria_metrics(dir.path());
    let (mut node, node_port) = start_node_exporter(dir.path());
    let mut agent = start_agent(
        dir.path(),
        &format!(
            r#"receivers:
  scrape:
    scrape_configs:
      - job_name: node
        scrape_interval: 1s
        scrape_timeout: 1s
        static_configs: [{{targets: ['127.0.0.1:{node_port}'], labels: {{env: e2e}}}}]
pipelines:
  candidate:
    protect: ['{{__name__=~"up|scrape_.*"}}']
    processors:
      - type: aggregate
        match: ['node_cpu_seconds_total']
        without: [cpu]
exporters:
  remote_write:
    url: http://127.0.0.1:{vm_port}/api/v1/write
    min_backoff: 50ms
"#
        ),
    );
    let up = eventually(
        "up from phoenix's scrape",
        Duration::from_secs(60),
        &mut [&mut vm, &mut agent, &mut node],
        || vm_series(vm_port, r#"up{job="node"}"#).filter(|s| !s.is_empty()),
    );
    assert_eq!(up.len(), 1);
    let expected_instance = format!("instance=127.0.0.1:{node_port}");
    assert!(
        up.iter()
            .all(|s| s.contains(&expected_instance) && s.contains("env=e2e")),
        "{up:?}"
    );
    let cpu = eventually(
        "aggregated node_cpu_seconds_total",
        Duration::from_secs(30),
        &mut [&mut vm],
        || vm_series(vm_port, "node_cpu_seconds_total").filter(|s| !s.is_empty()),
    );
    assert!(cpu.iter().all(|s| !s.contains("cpu=")), "{cpu:?}");
    let duration = vm_series(vm_port, "scrape_duration_seconds").expect("series query");
    assert_eq!(duration.len(), 1, "{duration:?}");
    let load = vm_series(vm_port, "node_load1").expect("series query");
    assert_eq!(load.len(), 1, "{load:?}");
}

/// Replaces every occurrence of `from` in `text`; a shipped file that no longer has it
/// fails the test rather than running with the file's own addresses.
fn replace_all(text: &str, from: &str, to: &str) -> String {
    assert!(
        text.contains(from),
        "examples/pipeline-standalone.yaml should hold `{from}`"
    );
    text.replace(from, to)
}

/// The value of `name{variant="candidate"}` on a text-format page.
fn candidate_gauge(page: &str, name: &str) -> Option<f64> {
    let prefix = format!("{name}{{variant=\"candidate\"}} ");
    page.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|value| value.trim().parse().ok())
}

#[test]
fn the_shipped_standalone_example_reduces_node_exporter_and_the_simulator_into_victoria_metrics() {
    let example =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/pipeline-standalone.yaml");
    let shipped = std::fs::read_to_string(&example).expect("examples/pipeline-standalone.yaml");

    // (`every_shipped_pipeline_file_validates` runs `validate` on the file as shipped.)
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut vm, vm_port) = start_victoria_metrics(dir.path());
    let (mut node, node_port) = start_node_exporter(dir.path());

    // The shipped file with its fixed addresses pointed at this test's free ports and its
    // 15 s intervals at 1 s (scrape) and 2 s (simulator); everything else (pipelines, protect, exporters) as shipped.
    let metrics_port = free_port();
    let mut yaml = shipped.clone();
    for (from, to) in [
        ("127.0.0.1:9201", format!("127.0.0.1:{}", free_port())),
        ("127.0.0.1:9100", format!("127.0.0.1:{node_port}")),
        ("127.0.0.1:4317", format!("127.0.0.1:{}", free_port())),
        ("127.0.0.1:4318", format!("127.0.0.1:{}", free_port())),
        ("127.0.0.1:8428", format!("127.0.0.1:{vm_port}")),
        ("127.0.0.1:9464", format!("127.0.0.1:{metrics_port}")),
        ("scrape_interval: 15s", "scrape_interval: 1s".to_string()),
        ("    interval: 15s\n", "    interval: 2s\n".to_string()),
    ] {
        yaml = replace_all(&yaml, from, &to);
    }
    let mut agent = start_agent(dir.path(), &yaml);

    // The simulator's first tick, computed in process from the same section of the file:
    // its protected series must reach VictoriaMetrics label for label.
    let parsed: serde_yaml::Value = serde_yaml::from_str(&yaml).expect("yaml");
    let simulator_config: SimulatorConfig =
        serde_yaml::from_value(parsed["receivers"]["simulator"].clone()).expect("simulator");
    let first_tick = Simulator::new(simulator_config).next_batch();
    let simulated_series = first_tick.len();
    let protected: BTreeSet<String> = first_tick
        .series
        .iter()
        .filter(|s| &*s.name == "kube_pod_status_ready")
        .map(series_key)
        .collect();
    assert!(!protected.is_empty());

    // The real node-exporter's series (the simulator has `job="node"` series too, on
    // instances of its own).
    let real = format!(r#"instance="127.0.0.1:{node_port}""#);
    let up = eventually(
        "node-exporter's up in victoria-metrics",
        Duration::from_secs(60),
        &mut [&mut vm, &mut agent, &mut node],
        || vm_series(vm_port, &format!("up{{{real}}}")).filter(|s| !s.is_empty()),
    );
    assert_eq!(up.len(), 1, "{up:?}");
    eventually(
        "node-exporter's node_load1 in victoria-metrics",
        Duration::from_secs(30),
        &mut [&mut vm, &mut agent, &mut node],
        || vm_series(vm_port, &format!("node_load1{{{real}}}")).filter(|s| s.len() == 1),
    );
    let ready = eventually(
        "the simulator's protected kube_pod_status_ready, every one",
        Duration::from_secs(60),
        &mut [&mut vm, &mut agent],
        || {
            vm_series(vm_port, "kube_pod_status_ready")
                .filter(|stored| protected.iter().all(|key| stored.contains(key)))
        },
    );
    assert!(ready.len() >= protected.len());

    // The candidate's KPIs per interval of both streams, from the agent's `/metrics`:
    // protected coverage is 100 % in every interval, and the reduction reaches at least the
    // issue's 70 % (about 80 % at the example's simulator scale).
    let (reduction, input, output) = eventually(
        "the candidate reducing by 70 % or more on /metrics",
        Duration::from_secs(90),
        &mut [&mut agent],
        || {
            let page = http_get(&format!("http://127.0.0.1:{metrics_port}/metrics"))?;
            let input = candidate_gauge(&page, "phoenix_pipeline_input_series")?;
            let output = candidate_gauge(&page, "phoenix_pipeline_output_series")?;
            let reduction = candidate_gauge(&page, "phoenix_cardinality_reduction_percent")?;
            let coverage = candidate_gauge(&page, "phoenix_pipeline_protected_coverage_percent")?;
            println!("interval: {input} input series, {output} output, reduction {reduction:.1} %, protected coverage {coverage} %");
            assert_eq!(coverage, 100.0, "protected series lost or altered");
            (input > simulated_series as f64 && reduction >= 70.0)
                .then_some((reduction, input, output))
        },
    );
    println!(
        "shipped example: {input} input series (simulator first tick {simulated_series}), \
         {output} output, reduction {reduction:.1} %"
    );

    // Everything VictoriaMetrics received from the simulator over the whole run, not just
    // one interval, is still a fraction of one tick's input.
    let simulated_stored = vm_series(
        vm_port,
        &format!("{{__name__=~\".+\",{}}}", real.replacen('=', "!=", 1)),
    )
    .expect("series query")
    .len();
    println!("victoria-metrics holds {simulated_stored} series from the simulator");
    assert!(
        simulated_stored * 100 <= simulated_series * 30,
        "{simulated_stored} of {simulated_series}"
    );
}

/// Every pipeline file the repository ships passes `phoenix-agent validate` as it is.
#[test]
fn every_shipped_pipeline_file_validates() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    for file in [
        "examples/pipeline-standalone.yaml",
        "deploy/agent/pipeline.yaml",
    ] {
        let output = Command::new(phoenix_e2e::bin("phoenix-agent"))
            .args(["validate", "--config"])
            .arg(root.join(file))
            .output()
            .expect("phoenix-agent validate");
        assert!(
            output.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
