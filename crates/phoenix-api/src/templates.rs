//! Pipeline templates for the API: the built-ins plus user templates whose every edit is a
//! new version (old ones stay readable), rendering as Phoenix pipeline YAML or as the
//! equivalent OpenTelemetry Collector configuration, and validation of pipelines before
//! experiments and deployments accept them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use phoenix_core::FieldErrors;
use phoenix_pipeline::templates::{self, TemplateDef, TemplateError};
use phoenix_store::StoreError;

use crate::service::{Service, ServiceError, ServiceResult};

const TEMPLATES_SETTING: &str = "pipeline_templates";
/// Versions kept per user template.
pub const MAX_VERSIONS: usize = 100;

/// A template as listed.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TemplateSummary {
    pub name: String,
    pub version: u32,
    pub description: String,
    pub builtin: bool,
    #[schema(value_type = Vec<Object>)]
    pub parameters: Value,
}

/// One template version, whole.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TemplateView {
    #[schema(value_type = Object)]
    pub template: Value,
    pub builtin: bool,
    /// Every version there is (built-ins have one).
    pub versions: Vec<u32>,
}

/// `PUT /api/v1/pipelines/templates/{name}`: a new version of a user template.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplateEdit {
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    pub parameters: Value,
    /// minijinja source rendering a pipeline config (`protect`, `processors`).
    pub source: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RenderFormat {
    /// Phoenix pipeline YAML.
    #[default]
    Phoenix,
    /// The equivalent OpenTelemetry Collector configuration.
    Otelcol,
}

/// `POST /api/v1/pipelines/render`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenderRequest {
    pub template: String,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub parameters: Value,
    /// A user template's version (default: the latest).
    #[serde(default)]
    pub version: Option<u32>,
    #[serde(default)]
    pub format: RenderFormat,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RenderResponse {
    pub template: String,
    pub version: u32,
    pub format: RenderFormat,
    pub yaml: String,
    /// `otelcol` only: what has no exact equivalent in the collector.
    pub notes: Vec<String>,
}

/// `POST /api/v1/pipelines/validate`: a pipeline (template name or literal YAML).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ValidateRequest {
    pub pipeline: String,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub parameters: Value,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ValidateResponse {
    pub valid: bool,
    /// The processor types, in order.
    pub processors: Vec<String>,
    pub protect: Vec<String>,
}

/// A template error as field errors: per-parameter paths when it has them, else `field`.
pub fn template_field_errors(field: &str, e: &TemplateError) -> FieldErrors {
    let mut errors = FieldErrors::default();
    let detail = e.field_errors();
    if detail.is_empty() {
        errors.push(field, e.to_string());
    } else {
        for d in detail {
            let path = if d.path.starts_with("parameters") {
                d.path.clone()
            } else {
                format!("{field}.{}", d.path)
            };
            errors.push(path, d.message.clone());
        }
    }
    errors
}

impl Service {
    async fn user_templates(&self) -> ServiceResult<BTreeMap<String, Vec<TemplateDef>>> {
        Ok(match self.store.get_setting(TEMPLATES_SETTING).await? {
            Some(v) => serde_json::from_value(v).unwrap_or_default(),
            None => BTreeMap::new(),
        })
    }

    /// The latest version of every user template, for resolving names.
    pub async fn latest_user_templates(&self) -> ServiceResult<Vec<TemplateDef>> {
        Ok(self
            .user_templates()
            .await?
            .into_values()
            .filter_map(|mut v| v.pop())
            .collect())
    }

    pub async fn list_templates(&self) -> ServiceResult<Vec<TemplateSummary>> {
        let mut out: Vec<TemplateSummary> = templates::builtins()
            .iter()
            .map(|t| summary(t, true))
            .collect();
        for t in self.latest_user_templates().await? {
            out.push(summary(&t, false));
        }
        Ok(out)
    }

    pub async fn get_template(
        &self,
        name: &str,
        version: Option<u32>,
    ) -> ServiceResult<TemplateView> {
        if let Some(t) = templates::builtin(name) {
            if version.is_some_and(|v| v != t.version) {
                return Err(not_found_version(name, version));
            }
            return Ok(TemplateView {
                template: to_value(t)?,
                builtin: true,
                versions: vec![t.version],
            });
        }
        let all = self.user_templates().await?;
        let versions = all.get(name).ok_or_else(|| {
            ServiceError::Store(StoreError::NotFound {
                entity: "template",
                id: name.chars().take(64).collect(),
            })
        })?;
        let t = match version {
            Some(v) => versions.iter().find(|t| t.version == v),
            None => versions.last(),
        }
        .ok_or_else(|| not_found_version(name, version))?;
        Ok(TemplateView {
            template: to_value(t)?,
            builtin: false,
            versions: versions.iter().map(|t| t.version).collect(),
        })
    }

    /// Stores a new version of a user template after validating it (its source must render
    /// with its own defaults into a valid pipeline).
    pub async fn put_template(
        &self,
        name: &str,
        edit: TemplateEdit,
    ) -> ServiceResult<TemplateView> {
        if templates::builtin(name).is_some() {
            return Err(ServiceError::Conflict {
                code: "builtin_template",
                message: format!(
                    "`{name}` is a built-in template and cannot be edited; save your version under another name"
                ),
            });
        }
        if let Err(problem) = templates::validate_name(name) {
            let mut e = FieldErrors::default();
            e.push("name", problem);
            return Err(e.into());
        }
        let parameters = match edit.parameters {
            Value::Null => Vec::new(),
            v => serde_json::from_value(v).map_err(|e| {
                let mut errors = FieldErrors::default();
                errors.push("parameters", format!("not a parameter list: {e}"));
                errors
            })?,
        };
        let mut all = self.user_templates().await?;
        let versions = all.entry(name.to_string()).or_default();
        let def = TemplateDef {
            name: name.to_string(),
            version: versions.last().map(|t| t.version + 1).unwrap_or(1),
            description: edit.description,
            parameters,
            source: edit.source,
        };
        if let Err(e) = def.validate() {
            return Err(template_field_errors("source", &e).into());
        }
        versions.push(def);
        if versions.len() > MAX_VERSIONS {
            versions.remove(0);
        }
        let value = serde_json::to_value(&all)
            .map_err(|e| StoreError::Corrupt(format!("cannot serialise templates: {e}")))?;
        self.store
            .put_setting(TEMPLATES_SETTING, &value, self.clock.now())
            .await?;
        self.get_template(name, None).await
    }

    pub async fn render_template(&self, req: RenderRequest) -> ServiceResult<RenderResponse> {
        let user = self.user_templates().await?;
        let def: TemplateDef = match templates::builtin(&req.template) {
            Some(t) => t.clone(),
            None => {
                let versions = user.get(&req.template).ok_or_else(|| {
                    let mut known: Vec<String> = templates::builtins()
                        .iter()
                        .map(|t| t.name.clone())
                        .collect();
                    known.extend(user.keys().cloned());
                    let mut e = FieldErrors::default();
                    e.push(
                        "template",
                        format!(
                            "no template named `{}` (known: {})",
                            req.template.chars().take(64).collect::<String>(),
                            known.join(", ")
                        ),
                    );
                    ServiceError::from(e)
                })?;
                match req.version {
                    Some(v) => versions.iter().find(|t| t.version == v),
                    None => versions.last(),
                }
                .cloned()
                .ok_or_else(|| {
                    let mut e = FieldErrors::default();
                    e.push("version", "no such version");
                    ServiceError::from(e)
                })?
            }
        };
        let params = if req.parameters.is_null() {
            Value::Object(Default::default())
        } else {
            req.parameters
        };
        let yaml = def
            .render(&params)
            .map_err(|e| ServiceError::from(template_field_errors("template", &e)))?;
        let config = def
            .resolve(&params)
            .map_err(|e| ServiceError::from(template_field_errors("template", &e)))?;
        let (yaml, notes) = match req.format {
            RenderFormat::Phoenix => (yaml, Vec::new()),
            RenderFormat::Otelcol => {
                let r = phoenix_pipeline::otelcol::render(&config).map_err(|e| {
                    let mut errors = FieldErrors::default();
                    errors.push("template", e.to_string());
                    ServiceError::from(errors)
                })?;
                (r.yaml, r.notes)
            }
        };
        Ok(RenderResponse {
            template: def.name,
            version: def.version,
            format: req.format,
            yaml,
            notes,
        })
    }

    pub async fn validate_pipeline(&self, req: ValidateRequest) -> ServiceResult<ValidateResponse> {
        let user = self.latest_user_templates().await?;
        let params = if req.parameters.is_null() {
            Value::Object(Default::default())
        } else {
            req.parameters
        };
        let config = templates::resolve_in(&req.pipeline, &params, &user)
            .map_err(|e| ServiceError::from(template_field_errors("pipeline", &e)))?;
        Ok(ValidateResponse {
            valid: true,
            processors: config
                .processors
                .iter()
                .map(|p| p.type_name().to_string())
                .collect(),
            protect: config.protect.clone(),
        })
    }

    /// Checks an experiment's pipelines and parameters: every name a template (built-in or
    /// user) or a literal pipeline, every parameter declared and in range.
    pub async fn check_experiment_pipelines(
        &self,
        baseline: &str,
        candidate: &str,
        parameters: &Value,
    ) -> ServiceResult<()> {
        let user = self.latest_user_templates().await?;
        let mut errors = FieldErrors::default();
        if let Err(e) =
            templates::check_shared_parameters(&[baseline, candidate], parameters, &user)
        {
            errors.0.extend(template_field_errors("parameters", &e).0);
        }
        for (field, spec) in [
            ("baseline_pipeline", baseline),
            ("candidate_pipeline", candidate),
        ] {
            if let Err(e) = templates::resolve_in(spec, parameters, &user) {
                errors.0.extend(template_field_errors(field, &e).0);
            }
        }
        errors.into_result().map_err(ServiceError::from)
    }

    /// What an agent is sent for a pipeline spec: built-in names and literals as they are
    /// (the agent renders built-ins itself), a user template rendered to its YAML (agents
    /// do not know user templates).
    pub async fn materialize_pipeline(
        &self,
        spec: &str,
        parameters: &Value,
    ) -> ServiceResult<String> {
        let name = spec.trim();
        if templates::builtin(name).is_some() {
            return Ok(spec.to_string());
        }
        let user = self.latest_user_templates().await?;
        match user.iter().find(|t| t.name == name) {
            Some(_) => {
                let config = templates::resolve_in(name, parameters, &user)
                    .map_err(|e| ServiceError::from(template_field_errors("pipeline", &e)))?;
                serde_yaml::to_string(&config).map_err(|e| {
                    ServiceError::Store(StoreError::Corrupt(format!(
                        "cannot serialise a rendered pipeline: {e}"
                    )))
                })
            }
            None => Ok(spec.to_string()),
        }
    }
}

fn summary(t: &TemplateDef, builtin: bool) -> TemplateSummary {
    TemplateSummary {
        name: t.name.clone(),
        version: t.version,
        description: t.description.clone(),
        builtin,
        parameters: serde_json::to_value(&t.parameters).unwrap_or(Value::Null),
    }
}

fn to_value(t: &TemplateDef) -> ServiceResult<Value> {
    serde_json::to_value(t)
        .map_err(|e| StoreError::Corrupt(format!("cannot serialise a template: {e}")).into())
}

fn not_found_version(name: &str, version: Option<u32>) -> ServiceError {
    ServiceError::Store(StoreError::NotFound {
        entity: "template version",
        id: format!(
            "{}@{}",
            name.chars().take(64).collect::<String>(),
            version.unwrap_or(0)
        ),
    })
}
