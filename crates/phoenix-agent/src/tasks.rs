//! Task payloads as the agent understands them, parsed and validated before anything is
//! done, so an invalid one fails with a reason and changes nothing. Pure: no I/O.

use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use phoenix_core::{ExperimentId, TaskId, TaskType};
use phoenix_pipeline::config::PipelineConfig;
use phoenix_pipeline::simulator::{AnomalyConfig, Profile, SimulatorConfig};
use phoenix_pipeline::templates;

use crate::kpi::DETAIL_SECTIONS;
use crate::state::RunVariants;

/// The parts of a delivered task the agent needs.
#[derive(Debug, Clone)]
pub struct Delivered {
    /// The id.
    pub id: TaskId,
    /// The type, when the agent knows it.
    pub task_type: Result<TaskType, String>,
    /// The raw type name.
    pub type_name: String,
    /// The payload.
    pub payload: Value,
}

/// Reads a delivered task; `None` when it has no usable id (it cannot even be reported).
pub fn delivered(raw: &Value) -> Option<Delivered> {
    let id: TaskId = raw.get("id")?.as_str()?.parse().ok()?;
    let type_name = raw
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let task_type = type_name.parse::<TaskType>();
    Some(Delivered {
        id,
        task_type,
        type_name,
        payload: raw.get("payload").cloned().unwrap_or(Value::Null),
    })
}

fn parse<T: for<'de> Deserialize<'de>>(task: &str, payload: &Value) -> Result<T, String> {
    serde_json::from_value::<T>(payload.clone()).map_err(|e| format!("invalid {task} payload: {e}"))
}

/// A `deployment`: an experiment's baseline and candidate, or one pipeline made live.
#[derive(Debug, Clone, PartialEq)]
pub enum Deployment {
    /// Stage an experiment's pipelines.
    Experiment {
        /// The experiment.
        experiment_id: ExperimentId,
        /// Resolved baseline.
        baseline: PipelineConfig,
        /// Resolved candidate.
        candidate: PipelineConfig,
    },
    /// Make one pipeline live outside experiments.
    Live {
        /// Resolved pipeline.
        pipeline: PipelineConfig,
    },
}

#[derive(Debug, Deserialize)]
struct DeploymentPayload {
    #[serde(default)]
    experiment_id: Option<ExperimentId>,
    #[serde(default)]
    baseline_pipeline: Option<String>,
    #[serde(default)]
    candidate_pipeline: Option<String>,
    #[serde(default)]
    pipeline: Option<String>,
    #[serde(default)]
    parameters: Value,
}

/// Parses a `deployment` payload and resolves its templates or literals.
pub fn deployment(payload: &Value) -> Result<Deployment, String> {
    let p: DeploymentPayload = parse("deployment", payload)?;
    match (p.experiment_id, p.baseline_pipeline, p.candidate_pipeline, p.pipeline) {
        (Some(experiment_id), Some(baseline), Some(candidate), _) => {
            let baseline = templates::resolve(&baseline, &p.parameters)
                .map_err(|e| format!("baseline_pipeline: {e}"))?;
            let candidate = templates::resolve(&candidate, &p.parameters)
                .map_err(|e| format!("candidate_pipeline: {e}"))?;
            Ok(Deployment::Experiment {
                experiment_id,
                baseline,
                candidate,
            })
        }
        (None, None, None, Some(pipeline)) => Ok(Deployment::Live {
            pipeline: templates::resolve(&pipeline, &p.parameters)
                .map_err(|e| format!("pipeline: {e}"))?,
        }),
        _ => Err(
            "invalid deployment payload: give experiment_id, baseline_pipeline and candidate_pipeline, or pipeline alone"
                .into(),
        ),
    }
}

/// An `experiment` action.
#[derive(Debug, Clone, PartialEq)]
pub enum ExperimentAction {
    /// Start measuring baseline and candidate.
    Start {
        /// The experiment.
        experiment_id: ExperimentId,
        /// `shadow` or `split`.
        mode: String,
        /// Which variants run here.
        variants: RunVariants,
        /// How long.
        duration: Duration,
    },
    /// Stop: back to the steady pipelines.
    Stop(ExperimentId),
    /// Make the candidate live.
    Promote(ExperimentId),
    /// Back to the baseline at once (also undoes a promotion).
    Rollback(ExperimentId),
}

#[derive(Debug, Deserialize)]
struct ExperimentPayload {
    action: String,
    experiment_id: ExperimentId,
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    variant: Option<String>,
    #[serde(default)]
    duration_seconds: Option<u64>,
}

/// Experiments without a duration run this long.
pub const DEFAULT_EXPERIMENT_DURATION: Duration = Duration::from_secs(3600);

/// Parses an `experiment` payload.
pub fn experiment(payload: &Value) -> Result<ExperimentAction, String> {
    let p: ExperimentPayload = parse("experiment", payload)?;
    match p.action.as_str() {
        "start" => {
            let mode = p.mode.unwrap_or_else(|| "shadow".into());
            let variants = match (mode.as_str(), p.variant.as_deref()) {
                ("shadow", None | Some("both")) => RunVariants::Both,
                ("split", Some("baseline")) => RunVariants::Baseline,
                ("split", Some("candidate")) => RunVariants::Candidate,
                ("split", other) => {
                    return Err(format!(
                        "invalid experiment payload: split mode needs variant baseline or candidate, got {other:?}"
                    ))
                }
                ("shadow", Some(other)) => {
                    return Err(format!(
                        "invalid experiment payload: shadow mode runs both variants, got variant {other:?}"
                    ))
                }
                (other, _) => {
                    return Err(format!(
                        "invalid experiment payload: mode {other:?} is not shadow or split"
                    ))
                }
            };
            let duration = match p.duration_seconds {
                Some(0) => {
                    return Err("invalid experiment payload: duration_seconds must be > 0".into())
                }
                Some(s) => Duration::from_secs(s),
                None => DEFAULT_EXPERIMENT_DURATION,
            };
            Ok(ExperimentAction::Start {
                experiment_id: p.experiment_id,
                mode,
                variants,
                duration,
            })
        }
        "stop" => Ok(ExperimentAction::Stop(p.experiment_id)),
        "promote" => Ok(ExperimentAction::Promote(p.experiment_id)),
        "rollback" => Ok(ExperimentAction::Rollback(p.experiment_id)),
        other => Err(format!(
            "invalid experiment payload: unknown action {other:?} (start, stop, promote, rollback)"
        )),
    }
}

/// A `loadsim` action.
#[derive(Debug, Clone, PartialEq)]
pub enum LoadsimAction {
    /// Start a profile, for a duration or until stopped.
    Start {
        /// Simulator settings.
        config: SimulatorConfig,
        /// How long.
        duration: Option<Duration>,
    },
    /// Stop the simulation.
    Stop,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LoadsimPayload {
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    profile: Option<Profile>,
    #[serde(default)]
    scale: Option<f64>,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default, with = "humantime_serde")]
    interval: Option<Duration>,
    #[serde(default)]
    churn_per_tick: Option<f64>,
    #[serde(default)]
    anomalies: Option<AnomalyConfig>,
    #[serde(default)]
    duration_seconds: Option<u64>,
    #[serde(default)]
    experiment_id: Option<ExperimentId>,
}

/// Parses a `loadsim` payload.
pub fn loadsim(payload: &Value) -> Result<LoadsimAction, String> {
    let p: LoadsimPayload = parse("loadsim", payload)?;
    let _ = p.experiment_id;
    match p.action.as_deref().unwrap_or("start") {
        "stop" => Ok(LoadsimAction::Stop),
        "start" => {
            let profile = p.profile.ok_or(
                "invalid loadsim payload: profile is required (k8s, app, high_cardinality)",
            )?;
            let mut config = SimulatorConfig::new(profile, p.seed.unwrap_or(1));
            config.start_timestamp_ms = None;
            config.scale = p.scale.unwrap_or(0.1);
            if let Some(interval) = p.interval {
                config.interval = interval;
            }
            config.churn_per_tick = p.churn_per_tick.unwrap_or(0.0);
            if let Some(a) = p.anomalies {
                config.anomalies = a;
            }
            let errors = config.validate();
            if let Some(e) = errors.first() {
                return Err(format!(
                    "invalid loadsim payload: {}: {}",
                    e.field, e.message
                ));
            }
            let duration = match p.duration_seconds {
                Some(0) => {
                    return Err("invalid loadsim payload: duration_seconds must be > 0".into())
                }
                Some(s) => Some(Duration::from_secs(s)),
                None => None,
            };
            Ok(LoadsimAction::Start { config, duration })
        }
        other => Err(format!(
            "invalid loadsim payload: unknown action {other:?} (start, stop)"
        )),
    }
}

/// A `metrics` task: KPI cadence and detail sections.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsSettings {
    /// New KPI interval.
    pub interval: Option<Duration>,
    /// Detail sections to send (all when `None`).
    pub details: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricsPayload {
    #[serde(default)]
    interval_seconds: Option<f64>,
    #[serde(default)]
    details: Option<Vec<String>>,
}

/// Parses a `metrics` payload.
pub fn metrics(payload: &Value) -> Result<MetricsSettings, String> {
    let p: MetricsPayload = parse("metrics", payload)?;
    let interval = match p.interval_seconds {
        Some(s) if !(0.2..=3600.0).contains(&s) => {
            return Err(
                "invalid metrics payload: interval_seconds must be between 0.2 and 3600".into(),
            )
        }
        Some(s) => Some(Duration::from_secs_f64(s)),
        None => None,
    };
    if let Some(details) = &p.details {
        if let Some(bad) = details
            .iter()
            .find(|d| !DETAIL_SECTIONS.contains(&d.as_str()))
        {
            return Err(format!(
                "invalid metrics payload: details: unknown section {bad:?} (known: {})",
                DETAIL_SECTIONS.join(", ")
            ));
        }
    }
    Ok(MetricsSettings {
        interval,
        details: p.details,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_apis_deployment_payload_resolves_templates_with_parameters() {
        let exp = ExperimentId::new();
        let d = deployment(&json!({
            "experiment_id": exp, "baseline_pipeline": "baseline",
            "candidate_pipeline": "adaptive", "parameters": {"series_budget": 500}
        }))
        .unwrap();
        let Deployment::Experiment {
            candidate,
            baseline,
            ..
        } = d
        else {
            panic!("not an experiment deployment")
        };
        assert!(baseline.processors.is_empty());
        assert_eq!(candidate.processors[0].type_name(), "adaptive");
    }

    #[test]
    fn a_bad_pipeline_fails_the_deployment_naming_the_field() {
        let err = deployment(&json!({
            "experiment_id": ExperimentId::new(), "baseline_pipeline": "baseline",
            "candidate_pipeline": "processors: [{type: topk, k: 0}]"
        }))
        .unwrap_err();
        assert!(err.starts_with("candidate_pipeline:"), "{err}");
        assert!(err.contains("topk.k"), "{err}");
        let err = deployment(&json!({"experiment_id": ExperimentId::new()})).unwrap_err();
        assert!(err.contains("invalid deployment payload"), "{err}");
    }

    #[test]
    fn experiment_actions_parse_from_the_apis_payloads() {
        let id = ExperimentId::new();
        let start = experiment(&json!({"action": "start", "experiment_id": id, "mode": "shadow", "variant": "both", "duration_seconds": 60})).unwrap();
        assert_eq!(
            start,
            ExperimentAction::Start {
                experiment_id: id,
                mode: "shadow".into(),
                variants: RunVariants::Both,
                duration: Duration::from_secs(60)
            }
        );
        let split = experiment(&json!({"action": "start", "experiment_id": id, "mode": "split", "variant": "candidate"})).unwrap();
        assert!(matches!(
            split,
            ExperimentAction::Start {
                variants: RunVariants::Candidate,
                ..
            }
        ));
        assert_eq!(
            experiment(&json!({"action": "rollback", "experiment_id": id})).unwrap(),
            ExperimentAction::Rollback(id)
        );
        let err = experiment(&json!({"action": "explode", "experiment_id": id})).unwrap_err();
        assert!(err.contains("unknown action"), "{err}");
        let err = experiment(&json!({"action": "start"})).unwrap_err();
        assert!(err.contains("experiment_id"), "{err}");
    }

    #[test]
    fn loadsim_and_metrics_payloads_are_validated() {
        let LoadsimAction::Start { config, duration } = loadsim(
            &json!({"profile": "k8s", "scale": 0.05, "interval": "500ms", "duration_seconds": 30}),
        )
        .unwrap() else {
            panic!("not a start")
        };
        assert_eq!(config.interval, Duration::from_millis(500));
        assert_eq!(duration, Some(Duration::from_secs(30)));
        assert!(loadsim(&json!({"profile": "k8s", "scale": 0}))
            .unwrap_err()
            .contains("scale"));
        assert!(loadsim(&json!({"profile": "mainframe"})).is_err());
        assert_eq!(
            loadsim(&json!({"action": "stop"})).unwrap(),
            LoadsimAction::Stop
        );
        let m = metrics(&json!({"interval_seconds": 5, "details": ["reduction"]})).unwrap();
        assert_eq!(m.interval, Some(Duration::from_secs(5)));
        assert!(metrics(&json!({"details": ["everything"]}))
            .unwrap_err()
            .contains("everything"));
        assert!(metrics(&json!({"interval_seconds": 0})).is_err());
    }

    #[test]
    fn a_task_of_an_unknown_type_is_read_but_not_understood() {
        let id = TaskId::new();
        let d = delivered(&json!({"id": id, "type": "reboot", "payload": {}})).unwrap();
        assert!(d.task_type.is_err());
        assert_eq!(d.type_name, "reboot");
        assert!(delivered(&json!({"type": "health"})).is_none());
    }
}
