//! Built-in pipeline templates (`baseline`, `topk`, `adaptive`, `hybrid`) rendered with
//! minijinja from an experiment's `parameters` over each template's defaults, and the
//! resolution of an experiment's "template name or literal" pipeline string.
//!
//! Rendering is pure (no I/O, no clock): the same name and parameters always give the same
//! YAML, so the API can render and validate the very text an agent will run.

use serde_json::{Map, Value};

use crate::config::PipelineConfig;

/// Protected by default in every template: scrape health and readiness.
const DEFAULT_PROTECT: &[&str] = &[r#"{__name__=~"up|kube_pod_status_ready|slo_.*"}"#];

/// A built-in template: its name, what it does, its Jinja source and its defaults.
#[derive(Debug, Clone, Copy)]
pub struct Template {
    /// The name experiments refer to.
    pub name: &'static str,
    /// One line on what it does.
    pub description: &'static str,
    /// minijinja source rendering a pipeline config (`protect`, `processors`).
    pub source: &'static str,
    /// Parameters and their defaults, as a JSON object text.
    defaults: &'static str,
}

impl Template {
    /// The defaults as a JSON object, with `protect` filled in.
    pub fn defaults(&self) -> Map<String, Value> {
        let mut map = match serde_json::from_str::<Value>(self.defaults) {
            Ok(Value::Object(map)) => map,
            _ => Map::new(),
        };
        map.entry("protect").or_insert_with(|| {
            Value::Array(
                DEFAULT_PROTECT
                    .iter()
                    .map(|s| Value::String((*s).into()))
                    .collect(),
            )
        });
        map
    }
}

/// The built-in templates.
pub const TEMPLATES: &[Template] = &[
    Template {
        name: "baseline",
        description: "everything passes unchanged (the reference an experiment compares with)",
        source: "protect: {{ protect | tojson }}\nprocessors: []\n",
        defaults: "{}",
    },
    Template {
        name: "topk",
        description: "per metric keep the k series contributing most, fold the rest into `other`",
        source: concat!(
            "protect: {{ protect | tojson }}\n",
            "processors:\n",
            "  - type: topk\n",
            "    k: {{ k | tojson }}\n",
            "    window: {{ window | tojson }}\n",
        ),
        defaults: r#"{"k": 100, "window": "5m"}"#,
    },
    Template {
        name: "adaptive",
        description: "keep anomalous and error-carrying series, aggregate the stable rest",
        source: concat!(
            "protect: {{ protect | tojson }}\n",
            "processors:\n",
            "  - type: adaptive\n",
            "    without: {{ without | tojson }}\n",
            "    z_threshold: {{ z_threshold | tojson }}\n",
            "{% if series_budget is not none %}    budget: {{ series_budget | tojson }}\n{% endif %}",
            "{% if keep_top_k is not none %}    keep_top_k: {{ keep_top_k | tojson }}\n{% endif %}",
        ),
        defaults: r#"{"without": ["pod", "instance"], "z_threshold": 3.0, "series_budget": null, "keep_top_k": null}"#,
    },
    Template {
        name: "hybrid",
        description: "a per-metric cardinality cap, then adaptive with the top k per family kept",
        source: concat!(
            "protect: {{ protect | tojson }}\n",
            "processors:\n",
            "  - type: cardinality_limit\n",
            "    limit: {{ cardinality_limit | tojson }}\n",
            "  - type: adaptive\n",
            "    keep_top_k: {{ keep_top_k | tojson }}\n",
            "    without: {{ without | tojson }}\n",
            "    z_threshold: {{ z_threshold | tojson }}\n",
        ),
        defaults: r#"{"cardinality_limit": 50000, "keep_top_k": 20, "without": ["pod", "instance"], "z_threshold": 3.0}"#,
    },
];

/// Why a pipeline could not be rendered or resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// `parameters` is not a JSON object.
    #[error("parameters must be a JSON object")]
    ParametersNotAnObject,
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
}

/// The built-in template named `name`.
pub fn builtin(name: &str) -> Option<&'static Template> {
    TEMPLATES.iter().find(|t| t.name == name)
}

/// Renders template `name` with `parameters` merged over its defaults. Parameters a
/// template does not use are ignored (an experiment passes one set to both variants).
pub fn render(name: &str, parameters: &Value) -> Result<String, TemplateError> {
    let template = builtin(name).ok_or_else(|| TemplateError::Render {
        name: name.to_string(),
        message: format!("no such template (known: {})", known_names()),
    })?;
    let mut context = template.defaults();
    match parameters {
        Value::Object(given) => {
            for (key, value) in given {
                context.insert(key.clone(), value.clone());
            }
        }
        Value::Null => {}
        _ => return Err(TemplateError::ParametersNotAnObject),
    }
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    let render_error = |e: minijinja::Error| TemplateError::Render {
        name: name.to_string(),
        message: e.to_string(),
    };
    env.add_template(template.name, template.source)
        .map_err(render_error)?;
    env.get_template(template.name)
        .and_then(|t| t.render(Value::Object(context)))
        .map_err(render_error)
}

fn known_names() -> String {
    TEMPLATES
        .iter()
        .map(|t| t.name)
        .collect::<Vec<_>>()
        .join(", ")
}

fn parse_and_build(source_name: &str, text: &str) -> Result<PipelineConfig, TemplateError> {
    let deserializer = serde_yaml::Deserializer::from_str(text);
    let config: PipelineConfig =
        serde_path_to_error::deserialize(deserializer).map_err(|e| TemplateError::Invalid {
            source_name: source_name.to_string(),
            message: format!("{}: {}", e.path(), e.inner()),
        })?;
    config
        .build(source_name, "pipeline")
        .map_err(|errors| TemplateError::Invalid {
            source_name: source_name.to_string(),
            message: errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        })?;
    Ok(config)
}

/// Resolves an experiment's pipeline string: a template name is rendered with
/// `parameters`; any other string must parse as a pipeline config (`protect`,
/// `processors`) and is used literally. The result is validated by building it.
pub fn resolve(spec: &str, parameters: &Value) -> Result<PipelineConfig, TemplateError> {
    let trimmed = spec.trim();
    if let Some(template) = builtin(trimmed) {
        let text = render(template.name, parameters)?;
        return parse_and_build(&format!("template {}", template.name), &text);
    }
    // A bare word that is no template is a typo, not a pipeline.
    let looks_literal = trimmed.contains(':') || trimmed.starts_with('{');
    if !looks_literal {
        return Err(TemplateError::Unknown {
            spec: trimmed.chars().take(80).collect(),
            known: known_names(),
            message: "not a YAML mapping".into(),
        });
    }
    parse_and_build("literal pipeline", trimmed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_builtin_template_renders_a_valid_pipeline_with_its_defaults() {
        for template in TEMPLATES {
            let config = resolve(template.name, &json!({}))
                .unwrap_or_else(|e| panic!("{}: {e}", template.name));
            assert_eq!(config.protect.len(), 1, "{}", template.name);
        }
    }

    #[test]
    fn parameters_override_defaults_and_unused_ones_are_ignored() {
        let text = render("topk", &json!({"k": 7, "series_budget": 5})).unwrap();
        assert!(text.contains("k: 7"), "{text}");
        let adaptive = resolve("adaptive", &json!({"series_budget": 2000})).unwrap();
        let yaml = serde_yaml::to_string(&adaptive).unwrap();
        assert!(yaml.contains("budget: 2000"), "{yaml}");
        let default = render("adaptive", &json!({})).unwrap();
        assert!(!default.contains("budget"), "{default}");
    }

    #[test]
    fn an_invalid_parameter_fails_with_the_field_path() {
        let err = resolve("topk", &json!({"k": 0})).unwrap_err().to_string();
        assert!(err.contains("processors[0].topk.k"), "{err}");
        let err = resolve("topk", &json!({"k": "many"}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("processors[0]"), "{err}");
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
}
