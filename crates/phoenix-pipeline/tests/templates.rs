//! Templates end to end through the public API: every built-in renders a valid pipeline,
//! bad parameters are refused with their paths (all at once), user definitions are
//! validated, and each built-in's OpenTelemetry Collector rendering matches its golden file
//! (`UPDATE_GOLDEN=1 cargo test -p phoenix-pipeline --test templates` rewrites them).

use std::path::PathBuf;

use phoenix_pipeline::config::PipelineConfig;
use phoenix_pipeline::otelcol::{self, OtelcolRendering};
use phoenix_pipeline::templates::{self, ParameterType, TemplateDef, TemplateError};
use serde_json::{json, Value};
use serde_yaml::Value as Yaml;

const BUILTIN_NAMES: [&str; 6] = [
    "baseline",
    "topk",
    "adaptive",
    "hybrid",
    "cardinality-cap",
    "errors-and-anomalies",
];

fn messages(error: &TemplateError) -> Vec<String> {
    let mut messages: Vec<String> = error
        .field_errors()
        .iter()
        .map(ToString::to_string)
        .collect();
    messages.sort();
    messages
}

#[test]
fn every_builtin_renders_a_valid_pipeline_with_its_defaults() {
    let names: Vec<&str> = templates::builtins()
        .iter()
        .map(|t| t.name.as_str())
        .collect();
    assert_eq!(names, BUILTIN_NAMES);
    for template in templates::builtins() {
        assert_eq!(template.version, 1, "{}", template.name);
        let config = templates::render_pipeline(&template.name, &json!({}))
            .unwrap_or_else(|e| panic!("{}: {e}", template.name));
        config
            .build(&template.name, "pipeline")
            .unwrap_or_else(|e| panic!("{}: {e:?}", template.name));
        assert_eq!(
            config.protect,
            vec![r#"{__name__=~"up|kube_pod_status_ready|slo_.*"}"#],
            "{}",
            template.name
        );
        for parameter in &template.parameters {
            assert!(
                !parameter.description.is_empty(),
                "{}.{}",
                template.name,
                parameter.name
            );
        }
    }
}

#[test]
fn the_new_builtins_render_the_processors_they_promise() {
    let cap = templates::render_pipeline("cardinality-cap", &json!({"limit": 500})).unwrap();
    let yaml = serde_yaml::to_string(&cap).unwrap();
    assert!(yaml.contains("type: cardinality_limit"), "{yaml}");
    assert!(yaml.contains("limit: 500"), "{yaml}");

    let errors = templates::render_pipeline(
        "errors-and-anomalies",
        &json!({"rest": "fold", "drop": ["{__name__=~\"debug_.*\"}"]}),
    )
    .unwrap();
    let yaml = serde_yaml::to_string(&errors).unwrap();
    assert!(yaml.contains("type: filter"), "{yaml}");
    assert!(yaml.contains("type: adaptive"), "{yaml}");
    assert!(yaml.contains("without: []"), "{yaml}");
    assert!(yaml.contains("error_selectors"), "{yaml}");
}

#[test]
fn bad_parameters_are_reported_all_at_once_with_their_paths() {
    let error = templates::render("topk", &json!({"k": 0, "window": 5, "kk": 1})).unwrap_err();
    assert_eq!(
        messages(&error),
        vec![
            "parameters.k: must be at least 1, got 0",
            "parameters.kk: unknown parameter (known: protect, k, window)",
            "parameters.window: must be a duration such as 5m, got 5",
        ]
    );
    let text = error.to_string();
    assert!(text.starts_with("template topk: "), "{text}");
}

#[test]
fn every_parameter_type_is_checked() {
    let cases: [(&str, Value, &str); 9] = [
        (
            "topk",
            json!({"k": 7.5}),
            "parameters.k: must be an integer, got 7.5",
        ),
        (
            "topk",
            json!({"k": null}),
            "parameters.k: must be an integer, got null",
        ),
        (
            "topk",
            json!({"window": "0s"}),
            "parameters.window: must be at least 1s, got \"0s\"",
        ),
        (
            "adaptive",
            json!({"z_threshold": "high"}),
            "parameters.z_threshold: must be a number, got \"high\"",
        ),
        (
            "adaptive",
            json!({"z_threshold": 50}),
            "parameters.z_threshold: must be at most 20, got 50",
        ),
        (
            "adaptive",
            json!({"without": ["pod", 3]}),
            "parameters.without[1]: must be a string, got 3",
        ),
        (
            "baseline",
            json!({"protect": "up"}),
            "parameters.protect: must be a list of selectors, got \"up\"",
        ),
        (
            "errors-and-anomalies",
            json!({"rest": "sum"}),
            "parameters.rest: must be one of aggregate, fold, got \"sum\"",
        ),
        (
            "cardinality-cap",
            json!({"limit": 20_000_000}),
            "parameters.limit: must be at most 10000000, got 20000000",
        ),
    ];
    for (name, parameters, expected) in cases {
        let error = templates::render(name, &parameters).unwrap_err();
        assert_eq!(
            messages(&error),
            vec![expected.to_string()],
            "{name} {parameters}"
        );
    }
    let error = templates::render("baseline", &json!({"protect": ["{bad"]})).unwrap_err();
    let found = messages(&error);
    assert!(
        found[0].starts_with("parameters.protect[0]: invalid selector"),
        "{found:?}"
    );
    // An optional parameter may be null.
    templates::render_pipeline("adaptive", &json!({"series_budget": null})).unwrap();
}

#[test]
fn parameters_that_fit_the_schema_but_not_the_pipeline_fail_with_the_pipeline_path() {
    let error =
        templates::render_pipeline("adaptive", &json!({"series_budget": 100, "keep_top_k": 5}))
            .unwrap_err()
            .to_string();
    assert!(
        error.contains("pipeline.processors[0].adaptive.budget: set either keep_top_k or budget"),
        "{error}"
    );
}

#[test]
fn an_unknown_template_name_lists_the_known_ones() {
    let error = templates::render("nope", &json!({})).unwrap_err();
    assert!(
        matches!(error, TemplateError::NoSuchTemplate { .. }),
        "{error:?}"
    );
    let text = error.to_string();
    for name in BUILTIN_NAMES {
        assert!(text.contains(name), "{text}");
    }
    let text = templates::resolve("nope", &json!({}))
        .unwrap_err()
        .to_string();
    assert!(text.contains("errors-and-anomalies"), "{text}");
}

#[test]
fn resolve_ignores_parameters_meant_for_the_other_variant() {
    // An experiment passes one parameter set to both baseline and candidate.
    let shared = json!({"k": 10});
    templates::resolve("baseline", &shared).unwrap();
    let topk = templates::resolve("topk", &shared).unwrap();
    assert!(serde_yaml::to_string(&topk).unwrap().contains("k: 10"));
    let error = templates::resolve("topk", &json!({"k": -1})).unwrap_err();
    assert_eq!(
        messages(&error),
        vec!["parameters.k: must be at least 1, got -1"]
    );
}

#[test]
fn a_shared_parameter_set_is_checked_against_both_variants() {
    let specs = ["baseline", "topk"];
    templates::check_shared_parameters(&specs, &json!({"k": 10}), &[]).unwrap();
    templates::check_shared_parameters(&specs, &Value::Null, &[]).unwrap();
    let error = templates::check_shared_parameters(
        &specs,
        &json!({"k": 0, "z_threshold": 2, "protect": ["{bad"]}),
        &[],
    )
    .unwrap_err();
    let found = messages(&error);
    assert_eq!(found.len(), 3, "{found:?}");
    assert_eq!(found[0], "parameters.k: must be at least 1, got 0");
    assert!(
        found[1].starts_with("parameters.protect[0]: invalid selector"),
        "{found:?}"
    );
    assert_eq!(
        found[2],
        "parameters.z_threshold: unknown parameter (known: protect, k, window)"
    );
    let literal = "processors: []";
    let error =
        templates::check_shared_parameters(&[literal, literal], &json!({"k": 1}), &[]).unwrap_err();
    assert_eq!(
        messages(&error),
        vec!["parameters.k: unknown parameter (known: none)"]
    );
}

fn user_template(source: &str) -> TemplateDef {
    TemplateDef {
        name: "team-a-topk".into(),
        version: 2,
        description: "topk for team A".into(),
        parameters: serde_json::from_value(json!([
            {"name": "k", "type": "integer", "description": "series kept", "default": 5, "min": 1}
        ]))
        .expect("test fixture"),
        source: source.into(),
    }
}

#[test]
fn a_user_template_round_trips_through_json_and_validates() {
    let def = user_template("processors:\n  - type: topk\n    k: {{ k }}\n");
    let stored = serde_json::to_value(&def).unwrap();
    assert_eq!(stored["parameters"][0]["type"], "integer");
    let back: TemplateDef = serde_json::from_value(stored).unwrap();
    assert_eq!(back, def);
    assert_eq!(back.parameters[0].kind, ParameterType::Integer);
    let config = back.validate().unwrap();
    assert_eq!(config.processors.len(), 1);

    let resolved = templates::resolve_in("team-a-topk", &json!({"k": 9}), &[def]).unwrap();
    assert!(serde_yaml::to_string(&resolved).unwrap().contains("k: 9"));
}

#[test]
fn a_user_template_rendering_an_invalid_pipeline_is_refused_with_the_pipeline_path() {
    let def = user_template("processors:\n  - type: topk\n    k: {{ k - 5 }}\n");
    let error = def.validate().unwrap_err();
    assert_eq!(
        messages(&error),
        vec!["pipeline.processors[0].topk.k: must be greater than 0"]
    );
    let def = user_template("processors:\n  - type: nope\n");
    let found = messages(&def.validate().unwrap_err());
    assert!(
        found[0].starts_with("pipeline.processors[0].type: unknown variant"),
        "{found:?}"
    );
}

#[test]
fn a_user_template_definition_reports_every_error_at_once() {
    let mut def = user_template("processors: []\n");
    def.name = "Team A!".into();
    def.version = 0;
    def.parameters[0].default = json!(0);
    def.parameters[0].min = Some(3.0);
    def.parameters[0].max = Some(2.0);
    let found = messages(&def.validate().unwrap_err());
    assert_eq!(
        found,
        vec![
            "name: \"Team A!\" must only use a-z, 0-9 and -",
            "parameters[0].default: must be at least 3, got 0",
            "parameters[0].min: must not exceed max (2), got 3",
            "version: must be at least 1",
        ]
    );
    let mut long = user_template("processors: []\n");
    long.name = "a".repeat(65);
    assert_eq!(
        messages(&long.validate().unwrap_err()),
        vec!["name: must be at most 64 characters, got 65"]
    );
    let undefined = user_template("processors: {{ nothing }}\n");
    let found = messages(&undefined.validate().unwrap_err());
    assert_eq!(found.len(), 1);
    assert!(found[0].starts_with("source: "), "{found:?}");
}

// ---- OpenTelemetry Collector rendering ----

fn golden_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/otelcol")
        .join(format!("{name}.yaml"))
}

/// The contrib processors' documented keys: anything else would be refused by the
/// collector's config validation.
fn assert_documented_configuration(name: &str, rendering: &OtelcolRendering) {
    let parsed: Yaml = serde_yaml::from_str(&rendering.yaml)
        .unwrap_or_else(|e| panic!("{name}: invalid YAML: {e}\n{}", rendering.yaml));
    let listed: Vec<String> = parsed["service"]["pipelines"]["metrics"]["processors"]
        .as_sequence()
        .unwrap_or_else(|| panic!("{name}: no service.pipelines.metrics.processors"))
        .iter()
        .map(|v| v.as_str().expect("test fixture").to_string())
        .collect();
    assert_eq!(listed, rendering.processors, "{name}");
    let processors = parsed["processors"]
        .as_mapping()
        .expect("processors mapping");
    assert_eq!(processors.len(), listed.len(), "{name}");
    let keys = |value: &Yaml| -> Vec<String> {
        value
            .as_mapping()
            .map(|m| {
                m.keys()
                    .map(|k| k.as_str().expect("test fixture").to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    let within = |what: &str, value: &Yaml, allowed: &[&str]| {
        for key in keys(value) {
            assert!(
                allowed.contains(&key.as_str()),
                "{name}: {what}: undocumented key {key}"
            );
        }
    };
    for id in &listed {
        let body = &processors[id.as_str()];
        let kind = id.split('/').next().expect("test fixture");
        match kind {
            "filter" => {
                within(id, body, &["error_mode", "metrics"]);
                within(id, &body["metrics"], &["metric", "datapoint"]);
            }
            "transform" => {
                within(id, body, &["error_mode", "metric_statements"]);
                for group in body["metric_statements"]
                    .as_sequence()
                    .expect("test fixture")
                {
                    within(id, group, &["context", "statements"]);
                    assert_eq!(group["context"], "datapoint", "{name}: {id}");
                }
            }
            "groupbyattrs" => within(id, body, &["keys"]),
            "metricstransform" => {
                within(id, body, &["transforms"]);
                for transform in body["transforms"].as_sequence().expect("test fixture") {
                    within(
                        id,
                        transform,
                        &[
                            "include",
                            "match_type",
                            "experimental_match_labels",
                            "action",
                            "new_name",
                            "operations",
                        ],
                    );
                    for operation in transform["operations"].as_sequence().expect("test fixture") {
                        within(id, operation, &["action", "label_set", "aggregation_type"]);
                        let aggregation = operation["aggregation_type"]
                            .as_str()
                            .expect("test fixture");
                        assert!(
                            ["sum", "mean", "min", "max"].contains(&aggregation),
                            "{name}"
                        );
                    }
                }
            }
            other => panic!("{name}: unexpected processor type {other}"),
        }
    }
}

fn check_golden(name: &str, rendering: &OtelcolRendering) {
    assert_documented_configuration(name, rendering);
    let path = golden_path(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().expect("test fixture")).expect("test fixture");
        std::fs::write(&path, &rendering.yaml).expect("test fixture");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!(
            "{} is missing: run UPDATE_GOLDEN=1 cargo test -p phoenix-pipeline --test templates",
            path.display()
        )
    });
    assert_eq!(
        rendering.yaml, expected,
        "{name}: the rendering changed; if intended, rerun with UPDATE_GOLDEN=1 and review the diff"
    );
}

#[test]
fn every_builtin_renders_for_the_collector_as_its_golden_file() {
    for name in BUILTIN_NAMES {
        let config = templates::render_pipeline(name, &json!({})).unwrap();
        let rendering = otelcol::render(&config).unwrap();
        check_golden(name, &rendering);
    }
}

#[test]
fn filters_relabeling_and_aggregation_render_as_contrib_processors() {
    let config: PipelineConfig = serde_yaml::from_str(
        r#"
protect: ['{__name__=~"slo_.*"}']
processors:
  - type: filter
    keep: ['{__name__=~"http_.*|rpc_.*"}']
    drop: ['{env="dev", path!=""}']
  - type: relabel
    rules:
      - action: labeldrop
        regex: pod|container_id
      - action: drop
        source_labels: [namespace]
        regex: kube-.*
      - action: replace
        source_labels: [cluster]
        regex: ''
        target_label: cluster
        replacement: unknown
      - action: hashmod
        source_labels: [instance]
        target_label: shard
        modulus: 4
  - type: aggregate
    match: ['{__name__="http_requests_total", code=~"5.."}']
    by: [service, code]
    outputs: [sum, count]
  - type: aggregate
    without: [instance]
"#,
    )
    .unwrap();
    let rendering = otelcol::render(&config).unwrap();
    check_golden("example-filter-relabel-aggregate", &rendering);
    assert_eq!(
        rendering.processors,
        vec![
            "filter/p0",
            "transform/p1",
            "filter/p1",
            "transform/p1_2",
            "groupbyattrs/p2",
            "metricstransform/p2",
            "transform/p3",
        ]
    );
    assert!(
        rendering
            .notes
            .iter()
            .any(|n| n.starts_with("processors[1] relabel: rule 3 (hashmod)")),
        "{:?}",
        rendering.notes
    );
    assert!(
        rendering
            .notes
            .iter()
            .any(|n| n.starts_with("processors[2] aggregate: output `count`")),
        "{:?}",
        rendering.notes
    );
}

#[test]
fn what_has_no_collector_equivalent_is_noted_with_the_processor_index() {
    let hybrid = templates::render_pipeline("hybrid", &json!({})).unwrap();
    let rendering = otelcol::render(&hybrid).unwrap();
    assert!(rendering.notes[0].starts_with("processors[0] cardinality_limit:"));
    assert!(rendering
        .notes
        .iter()
        .any(|n| n.starts_with("processors[1] adaptive: anomaly detection")));
    assert!(rendering
        .notes
        .iter()
        .any(|n| n.starts_with("processors[1] adaptive: keep_top_k 20")));
    let topk = templates::render_pipeline("topk", &json!({})).unwrap();
    let rendering = otelcol::render(&topk).unwrap();
    assert!(rendering.processors.is_empty());
    assert_eq!(rendering.notes.len(), 1);
    assert!(rendering.notes[0].starts_with("processors[0] topk: keeping the top 100"));
    for note in &rendering.notes {
        assert!(rendering.yaml.contains(note.as_str()));
    }
}

#[test]
fn an_invalid_pipeline_is_not_rendered_for_the_collector() {
    let config: PipelineConfig =
        serde_yaml::from_str("processors:\n  - type: topk\n    k: 0\n").unwrap();
    let error = otelcol::render(&config).unwrap_err().to_string();
    assert_eq!(
        error,
        "pipeline.processors[0].topk.k: must be greater than 0"
    );
}
