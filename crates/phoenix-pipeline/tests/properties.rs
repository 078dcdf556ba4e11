//! Property tests of the invariants the product promises: protected series pass
//! byte-identical through every processor and chain, `topk` and `aggregate` preserve
//! per-metric totals, aggregated counters never decrease across churn, `cardinality_limit`
//! never emits more than limit + 1 series per metric, and decoders never panic.

use std::collections::HashMap;
use std::sync::Arc;

use phoenix_pipeline::config::PipelineConfig;
use phoenix_pipeline::model::{Batch, Interner, Label, Labels, MetricKind, Sample, Series};
use phoenix_pipeline::pipeline::Pipeline;
use phoenix_pipeline::remote_write::{
    encode_write_request, reference, RemoteWriteDecoder, RemoteWriteEncoder,
};
use proptest::prelude::*;
use prost::Message;

const NAMES: [&str; 4] = [
    "http_requests_total",
    "errors_total",
    "memory_bytes",
    "queue_depth",
];

fn series(name: &str, pod: usize, env: &str, tier: &str, ts: i64, value: f64) -> Series {
    let labels = Labels::from_unsorted(vec![
        Label::new(Arc::from("pod"), Arc::from(format!("p{pod}"))),
        Label::new(Arc::from("env"), Arc::from(env)),
        Label::new(Arc::from("tier"), Arc::from(tier)),
    ]);
    Series::new(
        Arc::from(name),
        labels,
        MetricKind::from_prometheus_name(name),
        vec![Sample::new(ts, value)],
    )
}

/// A random population: `(name index, pod, env index, tier index, base value, rate)`.
fn population() -> impl Strategy<Value = Vec<(usize, usize, usize, usize, f64, f64)>> {
    prop::collection::vec(
        (
            0..NAMES.len(),
            0..12usize,
            0..2usize,
            0..2usize,
            0.0..1e6f64,
            0.0..100f64,
        ),
        1..60,
    )
}

/// Batches over `ticks` ticks of a population, unique series, counters growing by their
/// rate and gauges moving around their base.
fn batches(pop: &[(usize, usize, usize, usize, f64, f64)], ticks: usize) -> Vec<Batch> {
    let mut seen = std::collections::HashSet::new();
    let unique: Vec<_> = pop
        .iter()
        .filter(|(n, p, e, t, _, _)| seen.insert((*n, *p, *e, *t)))
        .collect();
    (0..ticks)
        .map(|tick| {
            Batch::new(
                unique
                    .iter()
                    .map(|(n, p, e, t, base, rate)| {
                        let name = NAMES[*n];
                        let value = if name.ends_with("_total") {
                            base + rate * tick as f64
                        } else {
                            base + rate * ((tick % 3) as f64)
                        };
                        series(
                            name,
                            *p,
                            ["prod", "dev"][*e],
                            ["critical", "normal"][*t],
                            1_000 + 15_000 * tick as i64,
                            value,
                        )
                    })
                    .collect(),
            )
        })
        .collect()
}

/// One processor config from a small family of parametrised YAML snippets.
fn processor_yaml() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("{type: filter, drop: ['{env=\"dev\"}']}".to_string()),
        Just("{type: relabel, rules: [{action: labeldrop, regex: pod}]}".to_string()),
        Just("{type: relabel, rules: [{source_labels: [env], target_label: stage, replacement: 's-$1'}]}".to_string()),
        Just("{type: aggregate, without: [pod], outputs: [sum, count, max]}".to_string()),
        Just("{type: aggregate, by: [env]}".to_string()),
        (1..4usize).prop_map(|k| format!("{{type: topk, k: {k}}}")),
        (1..5usize).prop_map(|l| format!("{{type: cardinality_limit, limit: {l}}}")),
        (1..10u32).prop_map(|r| format!("{{type: sample, rate: 0.{r}}}")),
        (1..3usize).prop_map(|k| format!("{{type: adaptive, keep_top_k: {k}}}")),
        Just("{type: adaptive, without: [pod]}".to_string()),
        (1..6usize).prop_map(|b| format!("{{type: adaptive, budget: {b}}}")),
    ]
}

fn build(protect: &[&str], processors: &[String]) -> Pipeline {
    let yaml = format!(
        "protect: [{}]\nprocessors: [{}]\n",
        protect
            .iter()
            .map(|p| format!("'{p}'"))
            .collect::<Vec<_>>()
            .join(", "),
        processors.join(", ")
    );
    let config: PipelineConfig = serde_yaml::from_str(&yaml).expect("valid yaml");
    config
        .build("test", "pipelines.test")
        .expect("valid pipeline")
}

fn totals(batch: &Batch) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for s in &batch.series {
        *out.entry(s.name.to_string()).or_insert(0.0) += s.samples.last().map_or(0.0, |x| x.value);
    }
    out
}

fn assert_close(a: f64, b: f64) -> Result<(), TestCaseError> {
    let tolerance = 1e-9 * a.abs().max(b.abs()).max(1.0);
    prop_assert!((a - b).abs() <= tolerance, "{a} != {b}");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn protected_series_pass_byte_identical_through_any_chain(
        pop in population(),
        chain in prop::collection::vec(processor_yaml(), 1..5),
    ) {
        let mut pipeline = build(&[r#"{tier="critical"}"#], &chain);
        for batch in batches(&pop, 4) {
            let protected: Vec<Series> = batch
                .series
                .iter()
                .filter(|s| s.labels.get("tier") == Some("critical"))
                .cloned()
                .collect();
            let output = pipeline.process(batch);
            for p in &protected {
                let copies = output.series.iter().filter(|o| o.same_bits(p)).count();
                prop_assert_eq!(copies, 1, "protected {} missing or duplicated", p);
            }
        }
    }

    #[test]
    fn protect_stage_in_the_middle_shields_from_later_processors(
        pop in population(),
        after in prop::collection::vec(processor_yaml(), 1..4),
    ) {
        let mut chain = vec!["{type: protect, selectors: ['{tier=\"critical\"}']}".to_string()];
        chain.extend(after);
        let mut pipeline = build(&[], &chain);
        for batch in batches(&pop, 3) {
            let protected: Vec<Series> = batch.series.iter()
                .filter(|s| s.labels.get("tier") == Some("critical"))
                .cloned().collect();
            let output = pipeline.process(batch);
            for p in &protected {
                prop_assert!(output.series.iter().any(|o| o.same_bits(p)), "{} not untouched", p);
            }
        }
    }

    #[test]
    fn topk_preserves_per_metric_totals(pop in population(), k in 1..5usize) {
        // Gauges keep totals at every batch; counters on the first batch (membership of
        // `other` may change later, which preserves increases rather than levels).
        let mut pipeline = build(&[], &[format!("{{type: topk, k: {k}}}")]);
        for (tick, batch) in batches(&pop, 3).into_iter().enumerate() {
            let input = totals(&batch);
            let output = totals(&pipeline.process(batch));
            for (name, total) in &input {
                if tick == 0 || !name.ends_with("_total") {
                    assert_close(*total, output.get(name).copied().unwrap_or(0.0))?;
                }
            }
        }
    }

    #[test]
    fn aggregate_preserves_per_metric_totals_while_members_stay(pop in population()) {
        let mut pipeline = build(&[], &["{type: aggregate, without: [pod, env]}".to_string()]);
        for batch in batches(&pop, 4) {
            let input = totals(&batch);
            let output = totals(&pipeline.process(batch));
            prop_assert_eq!(input.len(), output.len());
            for (name, total) in &input {
                assert_close(*total, output[name])?;
            }
        }
    }

    #[test]
    fn aggregated_counters_never_decrease_across_churn(
        steps in prop::collection::vec(prop::collection::vec((0..8usize, 0.0..1e4f64), 1..8), 2..10),
    ) {
        // Each step: which pods report and the increase of each; pods come and go and
        // restart (reset to a small value) at random.
        let mut pipeline = build(&[], &["{type: aggregate, by: [env]}".to_string()]);
        let mut values: HashMap<usize, f64> = HashMap::new();
        let mut last_output: Option<f64> = None;
        for (tick, step) in steps.iter().enumerate() {
            let mut seen = std::collections::HashSet::new();
            let mut members = Vec::new();
            for (pod, delta) in step {
                if !seen.insert(*pod) { continue; }
                let v = values.entry(*pod).or_insert(0.0);
                // An increase below 100 is turned into a reset, to exercise restarts.
                *v = if *delta < 100.0 { *delta } else { *v + delta };
                members.push(series("http_requests_total", *pod, "prod", "normal", 1_000 * tick as i64, *v));
            }
            let output = pipeline.process(Batch::new(members));
            prop_assert_eq!(output.series.len(), 1);
            let value = output.series[0].samples[0].value;
            if let Some(previous) = last_output {
                prop_assert!(value >= previous, "counter went from {previous} to {value}");
            }
            last_output = Some(value);
        }
    }

    #[test]
    fn cardinality_limit_never_emits_more_than_limit_plus_one_per_metric(
        pop in population(),
        limit in 1..6usize,
    ) {
        let mut pipeline = build(&[], &[format!("{{type: cardinality_limit, limit: {limit}}}")]);
        for batch in batches(&pop, 3) {
            let input_series = batch.len();
            let output = pipeline.process(batch);
            let mut per_metric: HashMap<String, usize> = HashMap::new();
            for s in &output.series {
                *per_metric.entry(s.name.to_string()).or_default() += 1;
            }
            for (name, count) in per_metric {
                prop_assert!(count <= limit + 1, "{name}: {count} series");
            }
            let stats = pipeline.processor_stats().next().map(|(_, _, s)| s.total()).unwrap_or_default();
            prop_assert!(stats.passed + stats.folded + stats.dropped >= input_series as u64);
        }
    }

    #[test]
    fn snappy_decoder_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let mut decoder = RemoteWriteDecoder::new(1 << 20);
        let _ = decoder.decode(&bytes, &mut Interner::new(), &mut Batch::default());
    }

    #[test]
    fn protobuf_decoder_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let mut decoder = RemoteWriteDecoder::new(1 << 20);
        let mut batch = Batch::default();
        if decoder.decode_uncompressed(&bytes, &mut Interner::new(), &mut batch).is_err() {
            prop_assert!(batch.is_empty());
        }
    }

    #[test]
    fn protobuf_decoder_never_panics_on_mutated_valid_requests(
        pop in population(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let batch = &batches(&pop, 1)[0];
        let mut body = Vec::new();
        encode_write_request(&batch.series, &[], &mut body);
        for (index, byte) in flips {
            let i = index.index(body.len());
            body[i] = byte;
        }
        body.truncate(cut.index(body.len() + 1));
        let mut decoder = RemoteWriteDecoder::new(1 << 20);
        let mut out = Batch::default();
        let _ = decoder.decode_uncompressed(&body, &mut Interner::new(), &mut out);
        let compressed = snap::raw::Encoder::new().compress_vec(&body).expect("compressible");
        let _ = decoder.decode(&compressed, &mut Interner::new(), &mut out);
    }

    #[test]
    fn hand_decoder_agrees_with_prost_on_random_requests(
        request in prop::collection::vec(
            (prop::option::weighted(0.8, "[a-z_:]{1,10}"),
             any::<prop::sample::Index>(),
             prop::collection::vec(("[a-z_]{1,8}", "\\PC{0,12}"), 0..6),
             prop::collection::vec((any::<f64>(), any::<i64>()), 0..4)),
            0..20),
    ) {
        let message = reference::WriteRequest {
            timeseries: request.iter().map(|(name, at, labels, samples)| {
                let mut labels: Vec<reference::Label> = labels.iter().map(|(n, v)| reference::Label { name: n.clone(), value: v.clone() }).collect();
                if let Some(name) = name {
                    let label = reference::Label { name: "__name__".into(), value: name.clone() };
                    labels.insert(at.index(labels.len() + 1), label);
                }
                reference::TimeSeries {
                    labels,
                    samples: samples.iter().map(|(v, t)| reference::Sample { value: *v, timestamp: *t }).collect(),
                    exemplars: vec![],
                }
            }).collect(),
            metadata: vec![],
        };
        let body = message.encode_to_vec();
        // Compare with what prost itself decodes (proto3 drops -0.0 on encode).
        let message = reference::WriteRequest::decode(body.as_slice()).expect("prost decodes its own encoding");
        let mut decoder = RemoteWriteDecoder::new(1 << 24);
        let mut batch = Batch::default();
        let summary = decoder.decode_uncompressed(&body, &mut Interner::new(), &mut batch).expect("valid request decodes");
        let named: Vec<&reference::TimeSeries> = message.timeseries.iter()
            .filter(|ts| ts.labels.iter().rev().find(|l| l.name == "__name__").is_some_and(|l| !l.value.is_empty()))
            .collect();
        prop_assert_eq!(summary.series, named.len());
        prop_assert_eq!(summary.series_without_name, message.timeseries.len() - named.len());
        prop_assert_eq!(batch.len(), named.len());
        for (got, expected) in batch.series.iter().zip(named) {
            let name = expected.labels.iter().rev().find(|l| l.name == "__name__").map(|l| l.value.as_str());
            prop_assert_eq!(Some(&*got.name), name);
            let want = Labels::from_pairs(expected.labels.iter().map(|l| (l.name.as_str(), l.value.as_str())));
            prop_assert_eq!(&got.labels, &want);
            prop_assert_eq!(got.samples.len(), expected.samples.len());
            for (got, want) in got.samples.iter().zip(&expected.samples) {
                prop_assert_eq!(got.value.to_bits(), want.value.to_bits());
                prop_assert_eq!(got.timestamp_ms, want.timestamp);
            }
        }
    }

    #[test]
    fn encoder_round_trips_through_the_hand_decoder(pop in population()) {
        let batch = &batches(&pop, 1)[0];
        let compressed = RemoteWriteEncoder::new().encode(&batch.series, &[]);
        let mut decoder = RemoteWriteDecoder::default();
        let mut out = Batch::default();
        decoder.decode(&compressed, &mut Interner::new(), &mut out).expect("own encoding decodes");
        prop_assert_eq!(out.len(), batch.len());
        for (a, b) in out.series.iter().zip(&batch.series) {
            prop_assert!(a.same_bits(b));
        }
    }

    #[test]
    fn otlp_decoding_and_conversion_never_panic_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
        if let Ok(request) = ExportMetricsServiceRequest::decode(bytes.as_slice()) {
            let mut batch = Batch::default();
            phoenix_pipeline::otlp::OtlpConverter::new().convert(&request, &mut batch);
        }
        if let Ok(request) = serde_json::from_slice::<ExportMetricsServiceRequest>(&bytes) {
            let mut batch = Batch::default();
            phoenix_pipeline::otlp::OtlpConverter::new().convert(&request, &mut batch);
        }
    }

    #[test]
    fn exposition_parser_never_panics(text in "[ -~\\n]{0,300}") {
        let _ = phoenix_pipeline::scrape::parse_exposition(&text);
    }

    #[test]
    fn selector_parser_never_panics(text in "\\PC{0,40}") {
        let _ = phoenix_pipeline::selector::Selector::parse(&text);
    }

    #[test]
    fn config_loader_never_panics(text in "[ -~\\n]{0,200}") {
        let _ = phoenix_pipeline::config::AgentConfig::load(&text);
    }
}
