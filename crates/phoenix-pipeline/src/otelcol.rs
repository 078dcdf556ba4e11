//! Renders a pipeline config as the equivalent OpenTelemetry Collector configuration, for
//! teams who keep their own collector: a `processors:` section using the contrib `filter`,
//! `transform`, `groupbyattrs` and `metricstransform` processors, the
//! `service.pipelines.metrics.processors` list, and a note for everything that has no exact
//! equivalent (each naming the Phoenix processor index).
//!
//! Pure: the same config always gives the same text (golden-file tested).

use std::fmt::Display;

use serde_yaml::{Mapping, Value as Yaml};

use crate::config::{ConfigErrors, PipelineConfig, ProcessorConfig};
use crate::processor::fold::AggregateOp;
use crate::relabel::{RelabelAction, RelabelConfig};
use crate::selector::{anchored_regex, MatchOp, Matcher, Selector};

/// The collector configuration equivalent to a pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtelcolRendering {
    /// YAML with a `processors:` section and `service.pipelines.metrics.processors`,
    /// headed by the notes as comments.
    pub yaml: String,
    /// The collector processor ids, in pipeline order.
    pub processors: Vec<String>,
    /// What has no exact equivalent, each starting with `processors[<i>] <type>:`.
    pub notes: Vec<String>,
}

/// Why a pipeline could not be rendered: it is not a valid pipeline.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct OtelcolError(pub ConfigErrors);

/// Renders `config` for the OpenTelemetry Collector (contrib distribution).
pub fn render(config: &PipelineConfig) -> Result<OtelcolRendering, OtelcolError> {
    config
        .build("otelcol", "pipeline")
        .map_err(|errors| OtelcolError(ConfigErrors(errors)))?;
    let mut renderer = Renderer {
        protect: parse_all(&config.protect),
        ..Renderer::default()
    };
    for (index, processor) in config.processors.iter().enumerate() {
        renderer.index = index;
        renderer.kind = processor.type_name();
        renderer.processor(processor);
    }
    Ok(renderer.finish())
}

fn parse_all(selectors: &[String]) -> Vec<Selector> {
    // The config was built, so every selector parses.
    selectors
        .iter()
        .filter_map(|s| Selector::parse(s).ok())
        .collect()
}

/// One collector processor before it gets its id.
enum Step {
    Filter(Vec<String>),
    Transform(Vec<String>),
}

#[derive(Default)]
struct Renderer {
    protect: Vec<Selector>,
    index: usize,
    kind: &'static str,
    processors: Vec<(String, Yaml)>,
    notes: Vec<String>,
}

impl Renderer {
    fn note(&mut self, text: impl Display) {
        self.notes
            .push(format!("processors[{}] {}: {text}", self.index, self.kind));
    }

    fn add(&mut self, collector_type: &str, body: Yaml) {
        let base = format!("{collector_type}/p{}", self.index);
        let mut id = base.clone();
        let mut n = 2;
        while self.processors.iter().any(|(existing, _)| *existing == id) {
            id = format!("{base}_{n}");
            n += 1;
        }
        self.processors.push((id, body));
    }

    fn add_steps(&mut self, steps: Vec<Step>) {
        let mut merged: Vec<Step> = Vec::new();
        for step in steps {
            match (merged.last_mut(), step) {
                (Some(Step::Filter(all)), Step::Filter(more)) => all.extend(more),
                (Some(Step::Transform(all)), Step::Transform(more)) => all.extend(more),
                (_, step) => merged.push(step),
            }
        }
        for step in merged {
            match step {
                Step::Filter(conditions) => self.add("filter", filter_body(conditions)),
                Step::Transform(statements) => self.add("transform", transform_body(statements)),
            }
        }
    }

    /// `not (<protected>)`, when anything is protected.
    fn unprotected(&self) -> Option<String> {
        excluding(&self.protect)
    }

    fn processor(&mut self, processor: &ProcessorConfig) {
        match processor {
            ProcessorConfig::Protect(c) => self.protect.extend(parse_all(&c.selectors)),
            ProcessorConfig::Filter(c) => {
                let (keep, drop) = (parse_all(&c.keep), parse_all(&c.drop));
                let unprotected = self.unprotected();
                let mut conditions = Vec::new();
                if !keep.is_empty() {
                    conditions.push(all_of([
                        Some(format!("not ({})", any_of_bare(&keep))),
                        unprotected.clone(),
                    ]));
                }
                for selector in &drop {
                    conditions.push(all_of([
                        Some(selector_condition(selector)),
                        unprotected.clone(),
                    ]));
                }
                self.add_steps(vec![Step::Filter(conditions)]);
            }
            ProcessorConfig::Relabel(c) => {
                let steps = c
                    .rules
                    .iter()
                    .enumerate()
                    .filter_map(|(j, rule)| self.relabel_rule(j, rule))
                    .collect();
                self.add_steps(steps);
            }
            ProcessorConfig::Aggregate(c) => {
                let selectors = parse_all(&c.match_selectors);
                match (&c.by, &c.without) {
                    (Some(by), _) => self.aggregate_by(&selectors, by, &c.outputs),
                    (None, Some(without)) => {
                        let guard = all_of([
                            (!selectors.is_empty()).then(|| any_of(&selectors)),
                            self.unprotected(),
                        ]);
                        self.delete_labels(without, Some(guard));
                        for op in c.outputs.iter().filter(|op| **op != AggregateOp::Sum) {
                            self.note(format!(
                                "output `{}` is not rendered: only the labels are removed",
                                op_name(*op)
                            ));
                        }
                    }
                    (None, None) => {}
                }
            }
            ProcessorConfig::Topk(c) => self.note(format!(
                "keeping the top {} series per metric and folding the rest into `other` has no \
                 equivalent; not rendered (every series passes)",
                c.k
            )),
            ProcessorConfig::CardinalityLimit(c) => self.note(format!(
                "capping each metric at {} series and folding later ones into an overflow \
                 series has no equivalent; not rendered (every series passes)",
                c.limit
            )),
            ProcessorConfig::Sample(c) => self.note(format!(
                "keeping a stable {} share of series has no equivalent for metrics; not \
                 rendered (every series passes)",
                c.rate
            )),
            ProcessorConfig::Adaptive(c) => {
                let selectors = parse_all(&c.match_selectors);
                let mut kept = self.protect.clone();
                kept.extend(parse_all(&c.error_selectors));
                self.note(format!(
                    "anomaly detection (z_threshold {}) has no equivalent: anomalous series \
                     are reduced like stable ones, and error series are kept by their \
                     selectors whatever their value",
                    c.z_threshold
                ));
                if let Some(k) = c.keep_top_k {
                    self.note(format!(
                        "keep_top_k {k} (the top stable series per metric kept whole) has no \
                         equivalent"
                    ));
                }
                if let Some(budget) = c.budget {
                    self.note(format!(
                        "budget {budget} (the top stable series overall kept whole) has no \
                         equivalent"
                    ));
                }
                if c.without.is_empty() {
                    self.note(
                        "folding the stable rest into one `other` series per metric has no \
                         equivalent; not rendered",
                    );
                } else {
                    let guard = all_of([
                        (!selectors.is_empty()).then(|| any_of(&selectors)),
                        excluding(&kept),
                    ]);
                    self.delete_labels(&c.without, Some(guard));
                }
            }
        }
    }

    /// Removes `labels` with `transform`; nothing sums the points that become identical.
    fn delete_labels(&mut self, labels: &[String], guard: Option<String>) {
        let statements = labels
            .iter()
            .map(|label| {
                with_guard(
                    format!("delete_key(attributes, {})", quote(label)),
                    guard.as_deref(),
                )
            })
            .collect();
        self.add_steps(vec![Step::Transform(statements)]);
        self.note(format!(
            "removing {} is rendered with transform delete_key; points left with identical \
             attributes are not summed (metricstransform aggregate_labels takes the labels to \
             keep, not the ones to remove)",
            labels.join(", ")
        ));
    }

    fn relabel_rule(&mut self, j: usize, rule: &RelabelConfig) -> Option<Step> {
        let unprotected = self.unprotected();
        let matches = || source_matches(&rule.source_labels, &rule.separator, &rule.regex);
        let target_ok = !rule.target_label.is_empty()
            && rule.target_label != "__name__"
            && !rule.target_label.contains('$');
        let step = match rule.action {
            RelabelAction::LabelDrop => Step::Transform(vec![with_guard(
                format!(
                    "delete_matching_keys(attributes, {})",
                    quote(&anchored(&rule.regex))
                ),
                unprotected.as_deref(),
            )]),
            RelabelAction::LabelKeep => Step::Transform(vec![with_guard(
                format!(
                    "keep_matching_keys(attributes, {})",
                    quote(&anchored(&rule.regex))
                ),
                unprotected.as_deref(),
            )]),
            RelabelAction::Drop => Step::Filter(vec![all_of([Some(matches()), unprotected])]),
            RelabelAction::Keep => Step::Filter(vec![all_of([
                Some(format!("not {}", parenthesized(&matches()))),
                unprotected,
            ])]),
            RelabelAction::Lowercase | RelabelAction::Uppercase if target_ok => {
                let function = if rule.action == RelabelAction::Lowercase {
                    "ToLowerCase"
                } else {
                    "ToUpperCase"
                };
                Step::Transform(vec![with_guard(
                    format!(
                        "set(attributes[{}], {function}({}))",
                        quote(&rule.target_label),
                        source_value(&rule.source_labels, &rule.separator)
                    ),
                    unprotected.as_deref(),
                )])
            }
            RelabelAction::Replace if target_ok && !rule.replacement.contains('$') => {
                let guard = all_of([Some(matches()), unprotected]);
                Step::Transform(vec![with_guard(
                    format!(
                        "set(attributes[{}], {})",
                        quote(&rule.target_label),
                        quote(&rule.replacement)
                    ),
                    Some(&guard),
                )])
            }
            action => {
                let name = serde_json::to_value(action)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                self.note(format!(
                    "rule {j} ({name}) has no exact equivalent; not rendered"
                ));
                return None;
            }
        };
        Some(step)
    }

    fn aggregate_by(&mut self, selectors: &[Selector], by: &[String], outputs: &[AggregateOp]) {
        let rendered = outputs.iter().copied().find(|op| *op != AggregateOp::Count);
        for op in outputs {
            if Some(*op) != rendered {
                self.note(format!(
                    "output `{}` is not rendered (one metricstransform aggregation per metric; \
                     count has none)",
                    op_name(*op)
                ));
            }
        }
        let Some(op) = rendered else {
            return;
        };
        let aggregation_type = match op {
            AggregateOp::Avg => "mean",
            AggregateOp::Min => "min",
            AggregateOp::Max => "max",
            AggregateOp::Sum | AggregateOp::Count => "sum",
        };
        let mut includes = Vec::new();
        if selectors.is_empty() {
            includes.push((".*".to_string(), Mapping::new()));
        }
        for selector in selectors {
            let mut name_regex = ".*".to_string();
            let mut labels = Mapping::new();
            for m in selector.matchers() {
                match (m.name == "__name__", m.op) {
                    (true, MatchOp::Equal) => name_regex = regex::escape(&m.value),
                    (true, MatchOp::Regex) => name_regex = m.value.clone(),
                    (false, MatchOp::Equal) => {
                        labels.insert(
                            m.name.clone().into(),
                            anchored(&regex::escape(&m.value)).into(),
                        );
                    }
                    (false, MatchOp::Regex) => {
                        labels.insert(m.name.clone().into(), anchored(&m.value).into());
                    }
                    (_, MatchOp::NotEqual | MatchOp::NotRegex) => self.note(format!(
                        "matcher {} of {} has no metricstransform equivalent and is left out, \
                         so more series are aggregated",
                        matcher_text(m),
                        selector.source()
                    )),
                }
            }
            includes.push((name_regex, labels));
        }
        let label_set = Yaml::Sequence(by.iter().map(|l| l.clone().into()).collect());
        let transforms = includes
            .into_iter()
            .map(|(name_regex, labels)| {
                let mut transform = mapping([
                    ("include", format!("^({name_regex})$").into()),
                    ("match_type", "regexp".into()),
                ]);
                if !labels.is_empty() {
                    transform.insert("experimental_match_labels".into(), Yaml::Mapping(labels));
                }
                transform.insert("action".into(), "update".into());
                if let Some(suffix) = op.suffix() {
                    transform.insert("new_name".into(), format!("${{1}}{suffix}").into());
                }
                transform.insert(
                    "operations".into(),
                    Yaml::Sequence(vec![Yaml::Mapping(mapping([
                        ("action", "aggregate_labels".into()),
                        ("label_set", label_set.clone()),
                        ("aggregation_type", aggregation_type.into()),
                    ]))]),
                );
                Yaml::Mapping(transform)
            })
            .collect();
        // No keys: groupbyattrs only compacts, merging the batches of one resource so
        // that metricstransform sees all their points together.
        self.add("groupbyattrs", Yaml::Mapping(Mapping::new()));
        self.add(
            "metricstransform",
            Yaml::Mapping(mapping([("transforms", Yaml::Sequence(transforms))])),
        );
        self.note(
            "metricstransform aggregates points of one resource within one batch: resource \
             attributes (e.g. k8s.pod.name) are not aggregated away",
        );
        if !self.protect.is_empty() {
            self.note(
                "metricstransform cannot skip protected series: those whose metric it matches \
                 are aggregated too",
            );
        }
    }

    fn finish(self) -> OtelcolRendering {
        let ids: Vec<String> = self.processors.iter().map(|(id, _)| id.clone()).collect();
        let mut processors = Mapping::new();
        for (id, mut body) in self.processors {
            escape_dollars(&mut body);
            processors.insert(id.into(), body);
        }
        let pipeline = mapping([(
            "processors",
            Yaml::Sequence(ids.iter().map(|id| id.clone().into()).collect()),
        )]);
        let root = mapping([
            ("processors", Yaml::Mapping(processors)),
            (
                "service",
                Yaml::Mapping(mapping([(
                    "pipelines",
                    Yaml::Mapping(mapping([("metrics", Yaml::Mapping(pipeline))])),
                )])),
            ),
        ]);
        let mut yaml = String::from(
            "# OpenTelemetry Collector (contrib) equivalent of a Phoenix pipeline.\n\
             # Add these processors to your collector and list them in your metrics pipeline.\n",
        );
        if self.notes.is_empty() {
            yaml.push_str("# Every processor has an exact equivalent.\n");
        } else {
            yaml.push_str("# Without an exact equivalent:\n");
            for note in &self.notes {
                yaml.push_str(&format!("# - {note}\n"));
            }
        }
        yaml.push_str(&serde_yaml::to_string(&Yaml::Mapping(root)).unwrap_or_default());
        OtelcolRendering {
            yaml,
            processors: ids,
            notes: self.notes,
        }
    }
}

fn mapping<const N: usize>(entries: [(&str, Yaml); N]) -> Mapping {
    entries
        .into_iter()
        .map(|(key, value)| (Yaml::String(key.into()), value))
        .collect()
}

fn filter_body(conditions: Vec<String>) -> Yaml {
    Yaml::Mapping(mapping([
        ("error_mode", "ignore".into()),
        (
            "metrics",
            Yaml::Mapping(mapping([(
                "datapoint",
                Yaml::Sequence(conditions.into_iter().map(Yaml::String).collect()),
            )])),
        ),
    ]))
}

fn transform_body(statements: Vec<String>) -> Yaml {
    Yaml::Mapping(mapping([
        ("error_mode", "ignore".into()),
        (
            "metric_statements",
            Yaml::Sequence(vec![Yaml::Mapping(mapping([
                ("context", "datapoint".into()),
                (
                    "statements",
                    Yaml::Sequence(statements.into_iter().map(Yaml::String).collect()),
                ),
            ]))]),
        ),
    ]))
}

/// The collector expands `${...}` in its config: `$$` is a literal `$`.
fn escape_dollars(value: &mut Yaml) {
    match value {
        Yaml::String(s) => *s = s.replace('$', "$$"),
        Yaml::Sequence(items) => items.iter_mut().for_each(escape_dollars),
        Yaml::Mapping(map) => map.values_mut().for_each(escape_dollars),
        _ => {}
    }
}

fn op_name(op: AggregateOp) -> &'static str {
    match op {
        AggregateOp::Sum => "sum",
        AggregateOp::Count => "count",
        AggregateOp::Min => "min",
        AggregateOp::Max => "max",
        AggregateOp::Avg => "avg",
    }
}

/// An OTTL string literal.
fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A Prometheus regex, fully anchored as Prometheus matches it (RE2 syntax).
fn anchored(regex: &str) -> String {
    format!("^(?s:{regex})$")
}

fn matches_empty(regex: &str) -> bool {
    anchored_regex(regex).is_ok_and(|r| r.is_match(""))
}

fn label_path(name: &str) -> String {
    if name == "__name__" {
        "metric.name".into()
    } else {
        format!("attributes[{}]", quote(name))
    }
}

fn matcher_text(m: &Matcher) -> String {
    let op = match m.op {
        MatchOp::Equal => "=",
        MatchOp::NotEqual => "!=",
        MatchOp::Regex => "=~",
        MatchOp::NotRegex => "!~",
    };
    format!("{}{op}{:?}", m.name, m.value)
}

/// The OTTL condition of one matcher; a missing attribute counts as the empty string, as
/// a missing label does in Prometheus.
fn matcher_condition(m: &Matcher) -> String {
    let path = label_path(&m.name);
    let attribute = m.name != "__name__";
    let value = quote(&m.value);
    match m.op {
        MatchOp::Equal if attribute && m.value.is_empty() => {
            format!("({path} == nil or {path} == \"\")")
        }
        MatchOp::Equal => format!("{path} == {value}"),
        MatchOp::NotEqual if attribute && m.value.is_empty() => {
            format!("({path} != nil and {path} != \"\")")
        }
        MatchOp::NotEqual => format!("{path} != {value}"),
        MatchOp::Regex => {
            let condition = format!("IsMatch({path}, {})", quote(&anchored(&m.value)));
            if attribute && matches_empty(&m.value) {
                format!("({path} == nil or {condition})")
            } else {
                condition
            }
        }
        MatchOp::NotRegex => {
            let condition = format!("not IsMatch({path}, {})", quote(&anchored(&m.value)));
            if attribute && matches_empty(&m.value) {
                format!("({path} != nil and {condition})")
            } else {
                condition
            }
        }
    }
}

fn selector_condition(selector: &Selector) -> String {
    let conditions: Vec<String> = selector.matchers().iter().map(matcher_condition).collect();
    match conditions.len() {
        0 => "true".into(),
        1 => conditions.into_iter().next().unwrap_or_default(),
        _ => format!("({})", conditions.join(" and ")),
    }
}

/// The selectors joined with `or`, without outer parentheses.
fn any_of_bare(selectors: &[Selector]) -> String {
    if selectors.is_empty() {
        return "false".into();
    }
    selectors
        .iter()
        .map(selector_condition)
        .collect::<Vec<_>>()
        .join(" or ")
}

fn any_of(selectors: &[Selector]) -> String {
    if selectors.len() > 1 {
        format!("({})", any_of_bare(selectors))
    } else {
        any_of_bare(selectors)
    }
}

fn excluding(selectors: &[Selector]) -> Option<String> {
    (!selectors.is_empty()).then(|| format!("not ({})", any_of_bare(selectors)))
}

fn all_of<const N: usize>(parts: [Option<String>; N]) -> String {
    let parts: Vec<String> = parts.into_iter().flatten().collect();
    if parts.is_empty() {
        "true".into()
    } else {
        parts.join(" and ")
    }
}

fn parenthesized(condition: &str) -> String {
    if condition.starts_with('(') {
        condition.to_string()
    } else {
        format!("({condition})")
    }
}

fn with_guard(statement: String, guard: Option<&str>) -> String {
    match guard {
        Some(guard) if guard != "true" => format!("{statement} where {guard}"),
        _ => statement,
    }
}

/// The joined source label values (`Concat` for several).
fn source_value(labels: &[String], separator: &str) -> String {
    match labels {
        [] => "\"\"".into(),
        [one] => label_path(one),
        many => format!(
            "Concat([{}], {})",
            many.iter()
                .map(|l| label_path(l))
                .collect::<Vec<_>>()
                .join(", "),
            quote(separator)
        ),
    }
}

/// Whether the joined source values match `regex`, a missing label counting as empty.
fn source_matches(labels: &[String], separator: &str, regex: &str) -> String {
    let value = source_value(labels, separator);
    let condition = format!("IsMatch({value}, {})", quote(&anchored(regex)));
    match labels {
        [one] if one != "__name__" && matches_empty(regex) => {
            format!("({value} == nil or {condition})")
        }
        _ => condition,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn condition(selector: &str) -> String {
        selector_condition(&Selector::parse(selector).unwrap())
    }

    #[test]
    fn a_missing_attribute_counts_as_the_empty_string() {
        assert_eq!(
            condition(r#"{path=""}"#),
            r#"(attributes["path"] == nil or attributes["path"] == "")"#
        );
        assert_eq!(
            condition(r#"{path!=""}"#),
            r#"(attributes["path"] != nil and attributes["path"] != "")"#
        );
        assert_eq!(
            condition(r#"{team=~"a|"}"#),
            r#"(attributes["team"] == nil or IsMatch(attributes["team"], "^(?s:a|)$"))"#
        );
        assert_eq!(
            condition(r#"{code!~"5.."}"#),
            r#"not IsMatch(attributes["code"], "^(?s:5..)$")"#
        );
    }

    #[test]
    fn the_metric_name_and_several_matchers_form_one_condition() {
        assert_eq!(
            condition(r#"http_requests_total{code="500"}"#),
            r#"(metric.name == "http_requests_total" and attributes["code"] == "500")"#
        );
        let selectors = [
            Selector::parse("up").unwrap(),
            Selector::parse(r#"{__name__=~"slo_.*"}"#).unwrap(),
        ];
        assert_eq!(
            excluding(&selectors).unwrap(),
            r#"not (metric.name == "up" or IsMatch(metric.name, "^(?s:slo_.*)$"))"#
        );
        assert_eq!(excluding(&[]), None);
    }

    #[test]
    fn strings_are_quoted_for_ottl_and_dollars_escaped_for_the_collector() {
        assert_eq!(quote(r#"a\d"b"#), r#""a\\d\"b""#);
        let mut value = Yaml::Sequence(vec![Yaml::String("^(x)$".into())]);
        escape_dollars(&mut value);
        assert_eq!(value, Yaml::Sequence(vec![Yaml::String("^(x)$$".into())]));
    }

    #[test]
    fn a_protect_stage_guards_the_processors_after_it() {
        let config: PipelineConfig = serde_yaml::from_str(
            "processors:\n  - {type: filter, drop: ['debug_total']}\n  - {type: protect, selectors: ['up']}\n  - {type: filter, drop: ['debug_total']}\n",
        )
        .unwrap();
        let rendering = render(&config).unwrap();
        assert!(rendering.notes.is_empty(), "{:?}", rendering.notes);
        assert_eq!(rendering.processors, vec!["filter/p0", "filter/p2"]);
        assert!(rendering
            .yaml
            .contains(r#"- metric.name == "debug_total" and not (metric.name == "up")"#));
        assert!(rendering
            .yaml
            .contains("- metric.name == \"debug_total\"\n"));
    }
}
