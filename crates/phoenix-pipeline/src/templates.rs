//! Pipeline templates: the built-ins (`baseline`, `topk`, `adaptive`, `hybrid`,
//! `cardinality-cap`, `errors-and-anomalies`) and user-defined ones, each a minijinja source
//! with a typed parameter schema. Parameters are checked against the schema before
//! rendering (every error at once, each named `parameters.<name>`), and the rendered text is
//! validated by parsing and building it as a real [`PipelineConfig`].
//!
//! Rendering is pure (no I/O, no clock): the same template and parameters always give the
//! same YAML, so the API can render and validate the very text an agent will run.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::OnceLock;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::config::{ConfigError, PipelineConfig};
use crate::selector::Selector;

/// Protected by default in every built-in template: scrape health, readiness and SLOs.
const DEFAULT_PROTECT: &str = r#"{__name__=~"up|kube_pod_status_ready|slo_.*"}"#;

/// Longest template name.
pub const MAX_TEMPLATE_NAME_LEN: usize = 64;

/// The type of a template parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParameterType {
    /// A whole number; `min`/`max` bound it.
    Integer,
    /// Any number; `min`/`max` bound it.
    Number,
    /// A string; `allowed` lists its values when it is an enum.
    String,
    /// A duration such as `5m` or `90s`; `min`/`max` bound it in seconds.
    Duration,
    /// `true` or `false`.
    Boolean,
    /// A list of strings; `min`/`max` bound its length, `allowed` its items.
    StringList,
    /// A list of PromQL series selectors; `min`/`max` bound its length.
    SelectorList,
}

impl ParameterType {
    fn expected(self) -> &'static str {
        match self {
            Self::Integer => "an integer",
            Self::Number => "a number",
            Self::String => "a string",
            Self::Duration => "a duration such as 5m",
            Self::Boolean => "true or false",
            Self::StringList => "a list of strings",
            Self::SelectorList => "a list of selectors",
        }
    }
}

/// One declared template parameter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParameterSpec {
    /// The name, as used in the source and in `parameters`.
    pub name: String,
    /// The type.
    #[serde(rename = "type")]
    pub kind: ParameterType,
    /// What it does.
    pub description: String,
    /// The value used when none is given; `null` makes the parameter optional.
    #[serde(default)]
    pub default: Value,
    /// Smallest value (numbers, durations in seconds) or length (lists).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// Largest value (numbers, durations in seconds) or length (lists).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// The allowed values of a string (or of a string list's items), when an enum.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed: Vec<String>,
}

impl ParameterSpec {
    fn new(name: &str, kind: ParameterType, description: &str, default: Value) -> Self {
        Self {
            name: name.into(),
            kind,
            description: description.into(),
            default,
            min: None,
            max: None,
            allowed: Vec::new(),
        }
    }

    fn range(mut self, min: Option<f64>, max: Option<f64>) -> Self {
        self.min = min;
        self.max = max;
        self
    }

    fn allowed(mut self, values: &[&str]) -> Self {
        self.allowed = values.iter().map(|v| (*v).to_string()).collect();
        self
    }

    /// Checks `value` against this spec; errors are pushed with `path`.
    fn check(&self, path: &str, value: &Value, errors: &mut Vec<ConfigError>) {
        let mut fail = |path: String, message: String| errors.push(ConfigError { path, message });
        if value.is_null() {
            if !self.default.is_null() {
                fail(
                    path.into(),
                    format!("must be {}, got null", self.kind.expected()),
                );
            }
            return;
        }
        let wrong_type = || format!("must be {}, got {}", self.kind.expected(), shown(value));
        match self.kind {
            ParameterType::Integer => {
                let number = value
                    .as_i64()
                    .map(|i| i as f64)
                    .or_else(|| value.as_u64().map(|u| u as f64));
                match number {
                    Some(n) => self.check_range(path, n, &n.to_string(), &mut fail),
                    None => fail(path.into(), wrong_type()),
                }
            }
            ParameterType::Number => match value.as_f64() {
                Some(n) => self.check_range(path, n, &shown(value), &mut fail),
                None => fail(path.into(), wrong_type()),
            },
            ParameterType::String => match value.as_str() {
                Some(s) => self.check_allowed(path, s, &mut fail),
                None => fail(path.into(), wrong_type()),
            },
            ParameterType::Duration => {
                match value.as_str().map(|s| (s, humantime::parse_duration(s))) {
                    Some((s, Ok(duration))) => {
                        self.check_duration(path, s, duration, &mut fail);
                    }
                    _ => fail(path.into(), wrong_type()),
                }
            }
            ParameterType::Boolean => {
                if !value.is_boolean() {
                    fail(path.into(), wrong_type());
                }
            }
            ParameterType::StringList | ParameterType::SelectorList => {
                let Some(items) = value.as_array() else {
                    fail(path.into(), wrong_type());
                    return;
                };
                self.check_length(path, items.len(), &mut fail);
                for (i, item) in items.iter().enumerate() {
                    let item_path = format!("{path}[{i}]");
                    let Some(text) = item.as_str() else {
                        fail(item_path, format!("must be a string, got {}", shown(item)));
                        continue;
                    };
                    if self.kind == ParameterType::SelectorList {
                        if let Err(e) = Selector::parse(text) {
                            fail(item_path, e.to_string());
                        }
                    } else {
                        self.check_allowed(&item_path, text, &mut fail);
                    }
                }
            }
        }
    }

    fn check_range(&self, path: &str, n: f64, shown: &str, fail: &mut impl FnMut(String, String)) {
        if let Some(min) = self.min.filter(|min| n < *min) {
            fail(path.into(), format!("must be at least {min}, got {shown}"));
        }
        if let Some(max) = self.max.filter(|max| n > *max) {
            fail(path.into(), format!("must be at most {max}, got {shown}"));
        }
    }

    fn check_duration(
        &self,
        path: &str,
        text: &str,
        duration: Duration,
        fail: &mut impl FnMut(String, String),
    ) {
        let seconds = duration.as_secs_f64();
        let human = |s: f64| humantime::format_duration(Duration::from_secs_f64(s)).to_string();
        if let Some(min) = self.min.filter(|min| seconds < *min) {
            fail(
                path.into(),
                format!("must be at least {}, got {text:?}", human(min)),
            );
        }
        if let Some(max) = self.max.filter(|max| seconds > *max) {
            fail(
                path.into(),
                format!("must be at most {}, got {text:?}", human(max)),
            );
        }
    }

    fn check_length(&self, path: &str, len: usize, fail: &mut impl FnMut(String, String)) {
        let len_f = len as f64;
        if let Some(min) = self.min.filter(|min| len_f < *min) {
            fail(
                path.into(),
                format!("must list at least {min} items, got {len}"),
            );
        }
        if let Some(max) = self.max.filter(|max| len_f > *max) {
            fail(
                path.into(),
                format!("must list at most {max} items, got {len}"),
            );
        }
    }

    fn check_allowed(&self, path: &str, value: &str, fail: &mut impl FnMut(String, String)) {
        if !self.allowed.is_empty() && !self.allowed.iter().any(|a| a == value) {
            fail(
                path.into(),
                format!("must be one of {}, got {value:?}", self.allowed.join(", ")),
            );
        }
    }
}

/// A value as JSON, shortened for error messages.
fn shown(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() > 40 {
        format!("{}…", text.chars().take(40).collect::<String>())
    } else {
        text
    }
}

/// A template: name, version, description, parameter schema and minijinja source.
/// Serialisable, so the API can store user-edited versions; built-ins are version 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateDef {
    /// `[a-z0-9-]`, at most [`MAX_TEMPLATE_NAME_LEN`] characters.
    pub name: String,
    /// Starts at 1; an edit makes a new version.
    pub version: u32,
    /// One line on what it does.
    pub description: String,
    /// The declared parameters.
    #[serde(default)]
    pub parameters: Vec<ParameterSpec>,
    /// minijinja source rendering a pipeline config (`protect`, `processors`).
    pub source: String,
}

/// What to do with a parameter the template does not declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Undeclared {
    Refuse,
    Ignore,
}

impl TemplateDef {
    /// The declared parameter `name`.
    pub fn parameter(&self, name: &str) -> Option<&ParameterSpec> {
        self.parameters.iter().find(|p| p.name == name)
    }

    /// Every parameter's default, as a JSON object.
    pub fn defaults(&self) -> Map<String, Value> {
        self.parameters
            .iter()
            .map(|p| (p.name.clone(), p.default.clone()))
            .collect()
    }

    /// Checks `parameters` (a JSON object or null) against the schema: an undeclared
    /// parameter, a wrong type or an out-of-range value is an error named
    /// `parameters.<name>`; every error is reported at once.
    pub fn check_parameters(&self, parameters: &Value) -> Result<(), TemplateError> {
        self.context(parameters, Undeclared::Refuse).map(|_| ())
    }

    /// The rendering context: the defaults with the given parameters over them.
    fn context(
        &self,
        parameters: &Value,
        undeclared: Undeclared,
    ) -> Result<Map<String, Value>, TemplateError> {
        let given = match parameters {
            Value::Object(given) => given.clone(),
            Value::Null => Map::new(),
            _ => return Err(TemplateError::ParametersNotAnObject),
        };
        let mut errors = Vec::new();
        let mut context = self.defaults();
        for (name, value) in given {
            let path = format!("parameters.{name}");
            match self.parameter(&name) {
                Some(spec) => {
                    spec.check(&path, &value, &mut errors);
                    context.insert(name, value);
                }
                None if undeclared == Undeclared::Refuse => errors.push(ConfigError {
                    path,
                    message: format!("unknown parameter (known: {})", self.parameter_names()),
                }),
                None => {}
            }
        }
        if errors.is_empty() {
            Ok(context)
        } else {
            Err(TemplateError::Parameters {
                template: self.name.clone(),
                errors,
            })
        }
    }

    fn parameter_names(&self) -> String {
        if self.parameters.is_empty() {
            return "none".into();
        }
        self.parameters
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Renders the source with `parameters` over the defaults, after checking them
    /// against the schema (undeclared parameters are refused).
    pub fn render(&self, parameters: &Value) -> Result<String, TemplateError> {
        let context = self.context(parameters, Undeclared::Refuse)?;
        self.render_context(context)
    }

    /// Renders and validates: the result parsed and built as a pipeline config.
    pub fn resolve(&self, parameters: &Value) -> Result<PipelineConfig, TemplateError> {
        let text = self.render(parameters)?;
        parse_and_build(&format!("template {}", self.name), &text)
    }

    fn render_context(&self, context: Map<String, Value>) -> Result<String, TemplateError> {
        let mut env = minijinja::Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        let render_error = |e: minijinja::Error| TemplateError::Render {
            name: self.name.clone(),
            message: e.to_string(),
        };
        env.add_template("source", &self.source)
            .map_err(render_error)?;
        env.get_template("source")
            .and_then(|t| t.render(Value::Object(context)))
            .map_err(render_error)
    }

    /// Validates a (user-provided) definition: its name, version and schema, its defaults
    /// against their own schema, and that the source renders with those defaults into a
    /// valid pipeline config. Returns that pipeline; errors carry paths such as `name`,
    /// `parameters[1].default` or `pipeline.processors[0].topk.k`, all at once.
    pub fn validate(&self) -> Result<PipelineConfig, TemplateError> {
        let mut errors = Vec::new();
        if let Err(message) = validate_name(&self.name) {
            errors.push(ConfigError {
                path: "name".into(),
                message,
            });
        }
        if self.version == 0 {
            errors.push(ConfigError {
                path: "version".into(),
                message: "must be at least 1".into(),
            });
        }
        if self.description.trim().is_empty() {
            errors.push(ConfigError {
                path: "description".into(),
                message: "must not be empty".into(),
            });
        }
        let mut seen = BTreeSet::new();
        for (i, spec) in self.parameters.iter().enumerate() {
            let path = format!("parameters[{i}]");
            let valid_identifier = spec
                .name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
                && spec
                    .name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if !valid_identifier {
                errors.push(ConfigError {
                    path: format!("{path}.name"),
                    message: format!("{:?} must match [a-z_][a-z0-9_]*", spec.name),
                });
            } else if !seen.insert(spec.name.as_str()) {
                errors.push(ConfigError {
                    path: format!("{path}.name"),
                    message: format!("{:?} is declared twice", spec.name),
                });
            }
            if let (Some(min), Some(max)) = (spec.min, spec.max) {
                if min > max {
                    errors.push(ConfigError {
                        path: format!("{path}.min"),
                        message: format!("must not exceed max ({max}), got {min}"),
                    });
                }
            }
            if !spec.allowed.is_empty()
                && !matches!(spec.kind, ParameterType::String | ParameterType::StringList)
            {
                errors.push(ConfigError {
                    path: format!("{path}.allowed"),
                    message: "only string and string_list parameters take allowed values".into(),
                });
            }
            spec.check(&format!("{path}.default"), &spec.default, &mut errors);
        }
        if self.source.trim().is_empty() {
            errors.push(ConfigError {
                path: "source".into(),
                message: "must not be empty".into(),
            });
        }
        if !errors.is_empty() {
            return Err(TemplateError::Definition { errors });
        }
        let text = self
            .render_context(self.defaults())
            .map_err(|e| TemplateError::Definition {
                errors: vec![ConfigError {
                    path: "source".into(),
                    message: match e {
                        TemplateError::Render { message, .. } => message,
                        other => other.to_string(),
                    },
                }],
            })?;
        pipeline_from_text(&text).map_err(|errors| TemplateError::Definition { errors })
    }
}

/// Checks a template name: `[a-z0-9-]`, 1 to [`MAX_TEMPLATE_NAME_LEN`] characters.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > MAX_TEMPLATE_NAME_LEN {
        return Err(format!(
            "must be at most {MAX_TEMPLATE_NAME_LEN} characters, got {}",
            name.len()
        ));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err(format!("{name:?} must only use a-z, 0-9 and -"));
    }
    Ok(())
}

fn protect_parameter() -> ParameterSpec {
    ParameterSpec::new(
        "protect",
        ParameterType::SelectorList,
        "series that bypass every processor untouched",
        json!([DEFAULT_PROTECT]),
    )
}

fn without_parameter() -> ParameterSpec {
    ParameterSpec::new(
        "without",
        ParameterType::StringList,
        "labels removed when aggregating the stable rest (empty folds it into `other`)",
        json!(["pod", "instance"]),
    )
}

fn z_threshold_parameter() -> ParameterSpec {
    ParameterSpec::new(
        "z_threshold",
        ParameterType::Number,
        "deviations from its moving baseline that make a sample anomalous",
        json!(3.0),
    )
    .range(Some(0.5), Some(20.0))
}

fn builtin_defs() -> Vec<TemplateDef> {
    use ParameterType::*;
    let def = |name: &str, description: &str, parameters, source: &str| TemplateDef {
        name: name.into(),
        version: 1,
        description: description.into(),
        parameters,
        source: source.into(),
    };
    vec![
        def(
            "baseline",
            "everything passes unchanged (the reference an experiment compares with)",
            vec![protect_parameter()],
            "protect: {{ protect | tojson }}\nprocessors: []\n",
        ),
        def(
            "topk",
            "per metric keep the k series contributing most, fold the rest into `other`",
            vec![
                protect_parameter(),
                ParameterSpec::new("k", Integer, "series kept per metric", json!(100))
                    .range(Some(1.0), Some(1_000_000.0)),
                ParameterSpec::new(
                    "window",
                    Duration,
                    "scoring window (decay time constant)",
                    json!("5m"),
                )
                .range(Some(1.0), Some(86_400.0)),
            ],
            concat!(
                "protect: {{ protect | tojson }}\n",
                "processors:\n",
                "  - type: topk\n",
                "    k: {{ k | tojson }}\n",
                "    window: {{ window | tojson }}\n",
            ),
        ),
        def(
            "adaptive",
            "keep anomalous and error-carrying series, aggregate the stable rest",
            vec![
                protect_parameter(),
                without_parameter(),
                z_threshold_parameter(),
                ParameterSpec::new(
                    "series_budget",
                    Integer,
                    "stable series kept individually over all metrics, by score (optional; not with keep_top_k)",
                    Value::Null,
                )
                .range(Some(1.0), None),
                ParameterSpec::new(
                    "keep_top_k",
                    Integer,
                    "stable series kept individually per metric, by score (optional; not with series_budget)",
                    Value::Null,
                )
                .range(Some(1.0), None),
            ],
            concat!(
                "protect: {{ protect | tojson }}\n",
                "processors:\n",
                "  - type: adaptive\n",
                "    without: {{ without | tojson }}\n",
                "    z_threshold: {{ z_threshold | tojson }}\n",
                "{% if series_budget is not none %}    budget: {{ series_budget | tojson }}\n{% endif %}",
                "{% if keep_top_k is not none %}    keep_top_k: {{ keep_top_k | tojson }}\n{% endif %}",
            ),
        ),
        def(
            "hybrid",
            "a per-metric cardinality cap, then adaptive with the top k per metric kept",
            vec![
                protect_parameter(),
                ParameterSpec::new(
                    "cardinality_limit",
                    Integer,
                    "series admitted per metric before the overflow series",
                    json!(50_000),
                )
                .range(Some(1.0), None),
                ParameterSpec::new(
                    "keep_top_k",
                    Integer,
                    "stable series kept individually per metric, by score",
                    json!(20),
                )
                .range(Some(1.0), None),
                without_parameter(),
                z_threshold_parameter(),
            ],
            concat!(
                "protect: {{ protect | tojson }}\n",
                "processors:\n",
                "  - type: cardinality_limit\n",
                "    limit: {{ cardinality_limit | tojson }}\n",
                "  - type: adaptive\n",
                "    keep_top_k: {{ keep_top_k | tojson }}\n",
                "    without: {{ without | tojson }}\n",
                "    z_threshold: {{ z_threshold | tojson }}\n",
            ),
        ),
        def(
            "cardinality-cap",
            "admit at most `limit` series per metric; later ones fold into one overflow series",
            vec![
                protect_parameter(),
                ParameterSpec::new("limit", Integer, "series admitted per metric", json!(10_000))
                    .range(Some(1.0), Some(10_000_000.0)),
                ParameterSpec::new(
                    "stale_after",
                    Duration,
                    "a series unseen this long frees its slot",
                    json!("10m"),
                )
                .range(Some(1.0), Some(86_400.0)),
                ParameterSpec::new(
                    "keep_labels",
                    StringList,
                    "labels kept on the overflow series",
                    json!([]),
                ),
                ParameterSpec::new(
                    "metrics",
                    SelectorList,
                    "only these series are capped (optional; all when absent)",
                    Value::Null,
                )
                .range(Some(1.0), None),
            ],
            concat!(
                "protect: {{ protect | tojson }}\n",
                "processors:\n",
                "  - type: cardinality_limit\n",
                "    limit: {{ limit | tojson }}\n",
                "    stale_after: {{ stale_after | tojson }}\n",
                "    keep_labels: {{ keep_labels | tojson }}\n",
                "{% if metrics is not none %}    match: {{ metrics | tojson }}\n{% endif %}",
            ),
        ),
        def(
            "errors-and-anomalies",
            "keep error-carrying and anomalous series individually, aggregate or fold the rest",
            vec![
                protect_parameter(),
                ParameterSpec::new(
                    "error_selectors",
                    SelectorList,
                    "series that carry errors (kept while their value or increase is non-zero)",
                    json!([
                        r#"{status=~"5.."}"#,
                        r#"{code=~"5.."}"#,
                        r#"{__name__=~".*(error|errors|fail|failed|failures|exception|exceptions).*"}"#
                    ]),
                )
                .range(Some(1.0), None),
                z_threshold_parameter(),
                ParameterSpec::new(
                    "hold_batches",
                    Integer,
                    "batches a series stays kept after its last error or anomaly",
                    json!(10),
                )
                .range(Some(1.0), Some(10_000.0)),
                ParameterSpec::new(
                    "rest",
                    String,
                    "what happens to the other series: `aggregate` them without the listed labels, or `fold` them into one `other` series per metric",
                    json!("aggregate"),
                )
                .allowed(&["aggregate", "fold"]),
                without_parameter(),
                ParameterSpec::new(
                    "drop",
                    SelectorList,
                    "series dropped before anything else (optional)",
                    Value::Null,
                )
                .range(Some(1.0), None),
            ],
            concat!(
                "protect: {{ protect | tojson }}\n",
                "processors:\n",
                "{% if drop is not none %}",
                "  - type: filter\n",
                "    drop: {{ drop | tojson }}\n",
                "{% endif %}",
                "  - type: adaptive\n",
                "    error_selectors: {{ error_selectors | tojson }}\n",
                "    z_threshold: {{ z_threshold | tojson }}\n",
                "    hold_batches: {{ hold_batches | tojson }}\n",
                "{% if rest == \"fold\" %}    without: []\n",
                "{% else %}    without: {{ without | tojson }}\n{% endif %}",
            ),
        ),
    ]
}

/// The built-in templates, all at version 1.
pub fn builtins() -> &'static [TemplateDef] {
    static BUILTINS: OnceLock<Vec<TemplateDef>> = OnceLock::new();
    BUILTINS.get_or_init(builtin_defs)
}

/// The built-in template named `name`.
pub fn builtin(name: &str) -> Option<&'static TemplateDef> {
    builtins().iter().find(|t| t.name == name)
}

/// Why a pipeline could not be rendered or resolved, or a definition was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// `parameters` is not a JSON object.
    #[error("parameters must be a JSON object")]
    ParametersNotAnObject,
    /// No template has this name.
    #[error("no template named {name:?} (known: {known})")]
    NoSuchTemplate {
        /// The name given.
        name: String,
        /// The known names.
        known: String,
    },
    /// Parameters that do not fit the template's schema.
    #[error("template {template}: {}", Joined(errors))]
    Parameters {
        /// Template name.
        template: String,
        /// Every error, each with its path (`parameters.k`).
        errors: Vec<ConfigError>,
    },
    /// minijinja refused the template or the parameters.
    #[error("template {name}: {message}")]
    Render {
        /// Template name.
        name: String,
        /// What minijinja said.
        message: String,
    },
    /// The rendered text (or the literal) is not a valid pipeline.
    #[error("{source_name}: {message}")]
    Invalid {
        /// The template name, or `literal pipeline`.
        source_name: String,
        /// Every error, with its path.
        message: String,
    },
    /// Neither a template name nor a pipeline config.
    #[error("{spec:?} is neither a template ({known}) nor a pipeline config: {message}")]
    Unknown {
        /// The string given (shortened).
        spec: String,
        /// The template names.
        known: String,
        /// Why it did not parse as a pipeline.
        message: String,
    },
    /// A template definition that cannot be stored.
    #[error("invalid template definition: {}", Joined(errors))]
    Definition {
        /// Every error, each with its path (`name`, `parameters[0].default`,
        /// `pipeline.processors[0].topk.k`).
        errors: Vec<ConfigError>,
    },
}

impl TemplateError {
    /// The errors with their paths, for the variants that carry them.
    pub fn field_errors(&self) -> &[ConfigError] {
        match self {
            Self::Parameters { errors, .. } | Self::Definition { errors } => errors,
            _ => &[],
        }
    }
}

struct Joined<'a>(&'a [ConfigError]);

impl fmt::Display for Joined<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

fn known_names(templates: &[TemplateDef]) -> String {
    let mut names: Vec<&str> = templates.iter().map(|t| t.name.as_str()).collect();
    for builtin in builtins() {
        if !names.contains(&builtin.name.as_str()) {
            names.push(&builtin.name);
        }
    }
    names.join(", ")
}

/// Renders the built-in template `name` with `parameters` over its defaults, after
/// checking them against its schema (undeclared parameters are refused).
pub fn render(name: &str, parameters: &Value) -> Result<String, TemplateError> {
    find(name, &[])?.render(parameters)
}

/// Renders the built-in template `name` and validates the result as a pipeline config.
pub fn render_pipeline(name: &str, parameters: &Value) -> Result<PipelineConfig, TemplateError> {
    find(name, &[])?.resolve(parameters)
}

/// The template `name` among `templates`, then the built-ins.
fn find<'a>(name: &str, templates: &'a [TemplateDef]) -> Result<&'a TemplateDef, TemplateError> {
    templates
        .iter()
        .find(|t| t.name == name)
        .or_else(|| builtin(name))
        .ok_or_else(|| TemplateError::NoSuchTemplate {
            name: name.chars().take(80).collect(),
            known: known_names(templates),
        })
}

/// Parses and builds `text` as a pipeline config; errors carry `pipeline.` paths.
fn pipeline_from_text(text: &str) -> Result<PipelineConfig, Vec<ConfigError>> {
    let deserializer = serde_yaml::Deserializer::from_str(text);
    let config: PipelineConfig = serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let path = e.path().to_string();
        let message = e.into_inner().to_string();
        // serde_yaml prefixes some messages with its own path: keep ours only.
        let message = match message.split_once(": ") {
            Some((prefix, rest)) if path != "." && prefix == path => rest.to_string(),
            _ => message,
        };
        vec![ConfigError {
            path: if path == "." {
                "pipeline".into()
            } else {
                format!("pipeline.{path}")
            },
            message,
        }]
    })?;
    config.build("template", "pipeline")?;
    Ok(config)
}

fn parse_and_build(source_name: &str, text: &str) -> Result<PipelineConfig, TemplateError> {
    pipeline_from_text(text).map_err(|errors| TemplateError::Invalid {
        source_name: source_name.to_string(),
        message: Joined(&errors).to_string(),
    })
}

/// Resolves an experiment's pipeline string: a built-in template name is rendered with
/// `parameters`; any other string must parse as a pipeline config (`protect`,
/// `processors`) and is used literally. The result is validated by building it.
///
/// Parameters the template does not declare are ignored (an experiment passes one set to
/// both variants); declared ones are checked against the schema.
pub fn resolve(spec: &str, parameters: &Value) -> Result<PipelineConfig, TemplateError> {
    resolve_in(spec, parameters, &[])
}

/// [`resolve`] looking up template names in `templates` (e.g. stored user versions) before
/// the built-ins.
pub fn resolve_in(
    spec: &str,
    parameters: &Value,
    templates: &[TemplateDef],
) -> Result<PipelineConfig, TemplateError> {
    let trimmed = spec.trim();
    if let Ok(template) = find(trimmed, templates) {
        let context = template.context(parameters, Undeclared::Ignore)?;
        let text = template.render_context(context)?;
        return parse_and_build(&format!("template {}", template.name), &text);
    }
    // A bare word that is no template is a typo, not a pipeline.
    let looks_literal = trimmed.contains(':') || trimmed.starts_with('{');
    if !looks_literal {
        return Err(TemplateError::Unknown {
            spec: trimmed.chars().take(80).collect(),
            known: known_names(templates),
            message: "not a YAML mapping".into(),
        });
    }
    parse_and_build("literal pipeline", trimmed)
}

/// Checks one parameter set shared by several pipeline specs (an experiment's baseline and
/// candidate): a parameter no named template declares is refused (literal pipelines declare
/// none), and each declared one is checked against every schema declaring it. What an API
/// calls before accepting an experiment, since [`resolve`] ignores undeclared parameters.
pub fn check_shared_parameters(
    specs: &[&str],
    parameters: &Value,
    templates: &[TemplateDef],
) -> Result<(), TemplateError> {
    let given = match parameters {
        Value::Object(given) => given,
        Value::Null => return Ok(()),
        _ => return Err(TemplateError::ParametersNotAnObject),
    };
    let defs: Vec<&TemplateDef> = specs
        .iter()
        .filter_map(|spec| find(spec.trim(), templates).ok())
        .collect();
    let mut errors: Vec<ConfigError> = Vec::new();
    for (name, value) in given {
        let path = format!("parameters.{name}");
        let declaring: Vec<&ParameterSpec> =
            defs.iter().filter_map(|def| def.parameter(name)).collect();
        if declaring.is_empty() {
            let mut known: Vec<&str> = Vec::new();
            for def in &defs {
                for parameter in &def.parameters {
                    if !known.contains(&parameter.name.as_str()) {
                        known.push(&parameter.name);
                    }
                }
            }
            let known = if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            };
            errors.push(ConfigError {
                path,
                message: format!("unknown parameter (known: {known})"),
            });
            continue;
        }
        for spec in declaring {
            let mut found = Vec::new();
            spec.check(&path, value, &mut found);
            for error in found {
                if !errors.contains(&error) {
                    errors.push(error);
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(TemplateError::Parameters {
            template: defs
                .iter()
                .map(|d| d.name.as_str())
                .collect::<Vec<_>>()
                .join(" and "),
            errors,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_builtin_template_renders_a_valid_pipeline_with_its_defaults() {
        for template in builtins() {
            let config = resolve(&template.name, &json!({}))
                .unwrap_or_else(|e| panic!("{}: {e}", template.name));
            assert_eq!(config.protect.len(), 1, "{}", template.name);
            template
                .validate()
                .unwrap_or_else(|e| panic!("{}: {e}", template.name));
        }
    }

    #[test]
    fn parameters_override_defaults_and_resolve_ignores_undeclared_ones() {
        let text = render("topk", &json!({"k": 7})).unwrap();
        assert!(text.contains("k: 7"), "{text}");
        let adaptive = resolve("adaptive", &json!({"series_budget": 2000, "k": 3})).unwrap();
        let yaml = serde_yaml::to_string(&adaptive).unwrap();
        assert!(yaml.contains("budget: 2000"), "{yaml}");
        let default = render("adaptive", &json!({})).unwrap();
        assert!(!default.contains("budget"), "{default}");
    }

    #[test]
    fn resolve_still_checks_the_declared_parameters() {
        let err = resolve("topk", &json!({"k": 0})).unwrap_err().to_string();
        assert!(
            err.contains("parameters.k: must be at least 1, got 0"),
            "{err}"
        );
        let err = resolve("topk", &json!({"k": "many"}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("parameters.k: must be an integer"), "{err}");
    }

    #[test]
    fn a_literal_pipeline_is_used_as_written() {
        let config = resolve(
            "processors:\n  - {type: sample, rate: 0.5}\n",
            &json!({"k": 1}),
        )
        .unwrap();
        assert_eq!(config.processors.len(), 1);
        assert!(config.protect.is_empty());
    }

    #[test]
    fn an_unknown_name_or_broken_literal_is_refused_with_a_reason() {
        let err = resolve("adaptiv", &json!({})).unwrap_err().to_string();
        assert!(err.contains("neither a template"), "{err}");
        let err = resolve("processors: [{type: nope}]", &json!({}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("literal pipeline"), "{err}");
        assert_eq!(
            render("baseline", &json!([1])).unwrap_err(),
            TemplateError::ParametersNotAnObject
        );
    }

    #[test]
    fn a_template_definition_round_trips_through_json() {
        let def = builtin("errors-and-anomalies").unwrap();
        let text = serde_json::to_string(def).unwrap();
        let back: TemplateDef = serde_json::from_str(&text).unwrap();
        assert_eq!(&back, def);
    }
}
