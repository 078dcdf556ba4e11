//! End-to-end with the OpenTelemetry Python SDK (PyPI: `opentelemetry-sdk`,
//! `opentelemetry-exporter-otlp-proto-grpc`, `opentelemetry-exporter-otlp-proto-http`)
//! over OTLP gRPC and HTTP → `phoenix-agent` (aggregating a `worker` attribute away) →
//! VictoriaMetrics (Debian package `victoria-metrics`), checked series and values on the
//! far side.
//!
//! The test creates a virtualenv under the cargo target dir and pip-installs the SDK when
//! missing, and installs VictoriaMetrics with apt-get when missing; it fails with a message
//! naming the packages otherwise. Everything listens on 127.0.0.1.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use phoenix_e2e::free_port;
use phoenix_e2e::peers::{eventually, http_get, start_victoria_metrics, Peer};

const PIP_PACKAGES: [&str; 3] = [
    "opentelemetry-sdk",
    "opentelemetry-exporter-otlp-proto-grpc",
    "opentelemetry-exporter-otlp-proto-http",
];

fn python_with_sdk() -> PathBuf {
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("otel-venv");
    let python = venv.join("bin/python");
    let has_sdk = || {
        Command::new(&python)
            .args(["-c", "import opentelemetry.sdk, opentelemetry.exporter.otlp.proto.grpc.metric_exporter, opentelemetry.exporter.otlp.proto.http.metric_exporter"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if !has_sdk() {
        let created = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .is_ok_and(|s| s.success());
        let installed = created
            && Command::new(venv.join("bin/pip"))
                .args(["install", "-q"])
                .args(PIP_PACKAGES)
                .status()
                .is_ok_and(|s| s.success());
        assert!(
            installed && has_sdk(),
            "cannot set up the OpenTelemetry Python SDK: need python3 with venv and the PyPI packages {}",
            PIP_PACKAGES.join(", ")
        );
    }
    python
}

/// Last value of every series matching `selector`, keyed by its `method` label.
fn last_values_by_method(vm: u16, selector: &str) -> Option<BTreeMap<String, (f64, String)>> {
    http_get(&format!("http://127.0.0.1:{vm}/internal/force_flush"))?;
    let encoded: String = selector
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect();
    let body = http_get(&format!(
        "http://127.0.0.1:{vm}/api/v1/export?match[]={encoded}"
    ))?;
    let mut out = BTreeMap::new();
    for line in body.lines().filter(|l| !l.trim().is_empty()) {
        let json: serde_json::Value = serde_json::from_str(line).ok()?;
        let labels = json["metric"].as_object()?;
        let method = labels.get("method")?.as_str()?.to_string();
        let value = json["values"].as_array()?.last()?.as_f64()?;
        let mut names: Vec<&str> = labels.keys().map(String::as_str).collect();
        names.sort_unstable();
        out.insert(method, (value, names.join(",")));
    }
    Some(out)
}

const SCRIPT: &str = r#"
import sys
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
protocol, endpoint, service = sys.argv[1], sys.argv[2], sys.argv[3]
if protocol == "grpc":
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
    exporter = OTLPMetricExporter(endpoint=endpoint, insecure=True)
else:
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    exporter = OTLPMetricExporter(endpoint=endpoint)
reader = PeriodicExportingMetricReader(exporter, export_interval_millis=60000)
provider = MeterProvider(resource=Resource.create({"service.name": service}), metric_readers=[reader])
counter = provider.get_meter("e2e").create_counter("jobs.processed")
for worker in range(4):
    counter.add(10 + worker, {"method": "GET", "worker": str(worker)})
    counter.add(1, {"method": "POST", "worker": str(worker)})
assert provider.force_flush(10000), "flush failed"
provider.shutdown()
"#;

#[test]
fn opentelemetry_python_sdk_over_grpc_and_http_is_reduced_into_victoria_metrics() {
    let python = python_with_sdk();
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut vm, vm_port) = start_victoria_metrics(dir.path());
    let (grpc_port, http_port) = (free_port(), free_port());
    let config = dir.path().join("phoenix.yaml");
    std::fs::write(
        &config,
        format!(
            "receivers:\n  otlp:\n    grpc_listen: 127.0.0.1:{grpc_port}\n    http_listen: 127.0.0.1:{http_port}\npipelines:\n  candidate:\n    processors:\n      - {{type: aggregate, without: [worker]}}\nexporters:\n  remote_write:\n    url: http://127.0.0.1:{vm_port}/api/v1/write\n    min_backoff: 50ms\n"
        ),
    )
    .expect("config");
    let mut agent = Peer::spawn(
        "phoenix-agent",
        &phoenix_e2e::bin("phoenix-agent"),
        &[
            "run".into(),
            "--config".into(),
            config.display().to_string(),
        ],
        &dir.path().join("phoenix.log"),
    );
    let script = dir.path().join("emit.py");
    std::fs::write(&script, SCRIPT).expect("script");
    for (protocol, endpoint, service) in [
        ("grpc", format!("http://127.0.0.1:{grpc_port}"), "py-grpc"),
        (
            "http",
            format!("http://127.0.0.1:{http_port}/v1/metrics"),
            "py-http",
        ),
    ] {
        // The agent may still be binding: retry the whole emission until it succeeds.
        eventually(
            &format!("python {protocol} export"),
            Duration::from_secs(30),
            &mut [&mut agent],
            || {
                Command::new(&python)
                    .arg(&script)
                    .args([protocol, &endpoint, service])
                    .stderr(Stdio::null())
                    .status()
                    .ok()
                    .filter(|s| s.success())
            },
        );
        let values = eventually(
            &format!("{service} series in victoria-metrics"),
            Duration::from_secs(60),
            &mut [&mut vm, &mut agent],
            || {
                last_values_by_method(
                    vm_port,
                    &format!("jobs_processed_total{{job=\"{service}\"}}"),
                )
                .filter(|v| v.len() == 2)
            },
        );
        // worker aggregated away, values summed across workers.
        assert_eq!(values["GET"].0, 10.0 + 11.0 + 12.0 + 13.0, "{values:?}");
        assert_eq!(values["POST"].0, 4.0, "{values:?}");
        // The SDK may add service.instance.id (→ instance); worker must be gone.
        assert!(
            values
                .values()
                .all(|(_, labels)| labels == "__name__,job,method"
                    || labels == "__name__,instance,job,method"),
            "{values:?}"
        );
    }
}
