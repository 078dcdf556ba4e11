//! Experiments and their state machine. [`apply`] is the only way a phase changes: a pure
//! function from (current phase, command) to a [`Transition`] carrying the one event the change
//! emits, or a [`TransitionError`] naming the current phase (the API answers 409 with it).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::analysis::AnalysisSpec;
use crate::ids::{ExperimentId, HostId};

/// Where an experiment is in its life.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ExperimentPhase {
    Pending,
    Initializing,
    Running,
    Analyzing,
    Completed,
    Failed,
    Stopped,
    RolledBack,
}

impl ExperimentPhase {
    pub const ALL: [ExperimentPhase; 8] = [
        Self::Pending,
        Self::Initializing,
        Self::Running,
        Self::Analyzing,
        Self::Completed,
        Self::Failed,
        Self::Stopped,
        Self::RolledBack,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Initializing => "initializing",
            Self::Running => "running",
            Self::Analyzing => "analyzing",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Stopped => "stopped",
            Self::RolledBack => "rolled_back",
        }
    }

    /// A stable number per phase for the `phoenix_experiment_phase` gauge (documented in
    /// `docs/metrics.md`; never renumber).
    pub fn gauge_value(self) -> i64 {
        match self {
            Self::Pending => 0,
            Self::Initializing => 1,
            Self::Running => 2,
            Self::Analyzing => 3,
            Self::Completed => 4,
            Self::Failed => 5,
            Self::Stopped => 6,
            Self::RolledBack => 7,
        }
    }

    /// No command moves an experiment out of a terminal phase, except rolling back a promotion.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Completed | Self::Failed | Self::Stopped | Self::RolledBack
        )
    }

    /// Phases in which agents may be running the experiment's pipelines.
    pub fn is_active(self) -> bool {
        matches!(self, Self::Initializing | Self::Running | Self::Analyzing)
    }
}

impl fmt::Display for ExperimentPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ExperimentPhase {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown phase `{s}`, expected one of {}",
                    Self::ALL.map(|p| p.as_str()).join(", ")
                )
            })
    }
}

/// How the candidate receives data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExperimentMode {
    /// Every target host runs baseline and candidate on the same input; only one is exported.
    #[default]
    Shadow,
    /// A deterministic share of the target hosts runs the candidate.
    Split,
}

/// What may be asked of an experiment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExperimentCommand {
    /// pending → initializing: tasks are enqueued for the target hosts.
    Start,
    /// initializing → running: the targets applied their pipelines.
    MarkRunning,
    /// running → analyzing: the duration is over, results are being computed.
    BeginAnalysis,
    /// analyzing → completed, with the decision.
    Complete { promoted: bool, reason: String },
    /// any non-terminal phase → failed.
    Fail { reason: String },
    /// pending, initializing, running or analyzing → stopped, by a user.
    Stop { reason: Option<String> },
    /// initializing, running, analyzing, or completed with a promotion → rolled_back.
    Rollback { reason: Option<String> },
    /// initializing or running, phase unchanged: these targets leave the run (the
    /// experiment's `on_target_failure: exclude`), each with its reason.
    ExcludeTargets { targets: Vec<(HostId, String)> },
}

impl ExperimentCommand {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::MarkRunning => "mark_running",
            Self::BeginAnalysis => "begin_analysis",
            Self::Complete { .. } => "complete",
            Self::Fail { .. } => "fail",
            Self::Stop { .. } => "stop",
            Self::Rollback { .. } => "rollback",
            Self::ExcludeTargets { .. } => "exclude_targets",
        }
    }
}

/// A refused command: the caller learns the phase the experiment is really in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("experiment is {current}, cannot {command}")]
pub struct TransitionError {
    pub current: ExperimentPhase,
    pub command: &'static str,
}

/// The kind of an experiment event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Created,
    Updated,
    PhaseChanged,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Updated => "updated",
            Self::PhaseChanged => "phase_changed",
        }
    }
}

impl FromStr for EventKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "created" => Ok(Self::Created),
            "updated" => Ok(Self::Updated),
            "phase_changed" => Ok(Self::PhaseChanged),
            other => Err(format!("unknown event kind `{other}`")),
        }
    }
}

/// One entry of an experiment's history. `seq` is assigned by the store and increases per
/// experiment, so clients can resume after the last one they saw.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ExperimentEvent {
    pub experiment_id: ExperimentId,
    pub seq: i64,
    pub kind: EventKind,
    pub from_phase: Option<ExperimentPhase>,
    pub to_phase: Option<ExperimentPhase>,
    pub message: String,
    pub at: DateTime<Utc>,
}

/// An accepted command: the new state and the single event that records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub from: ExperimentPhase,
    pub to: ExperimentPhase,
    /// `Some` only for `complete` (the decision) and for rolling back a promotion (`false`).
    pub promoted: Option<bool>,
    pub message: String,
    /// Targets leaving the run (`exclude_targets`; the phase does not change).
    pub excluded: Vec<(HostId, String)>,
}

impl Transition {
    /// `phase_changed`, or `updated` for a command that keeps the phase (an exclusion).
    pub fn event_kind(&self) -> EventKind {
        if self.from == self.to {
            EventKind::Updated
        } else {
            EventKind::PhaseChanged
        }
    }
}

/// The state machine. Pure: the same input always gives the same answer.
pub fn apply(
    current: ExperimentPhase,
    promoted: Option<bool>,
    command: &ExperimentCommand,
) -> Result<Transition, TransitionError> {
    use ExperimentCommand as C;
    use ExperimentPhase as P;

    let refuse = || TransitionError {
        current,
        command: command.name(),
    };
    let (to, new_promoted, message) = match (current, command) {
        (P::Pending, C::Start) => (P::Initializing, None, "experiment started".to_string()),
        (P::Initializing, C::MarkRunning) => (
            P::Running,
            None,
            "all targets applied their pipelines".to_string(),
        ),
        (P::Running, C::BeginAnalysis) => (P::Analyzing, None, "analysis started".to_string()),
        (P::Analyzing, C::Complete { promoted, reason }) => (
            P::Completed,
            Some(*promoted),
            format!(
                "completed: {}{}",
                if *promoted {
                    "candidate promoted"
                } else {
                    "candidate not promoted"
                },
                suffix(Some(reason))
            ),
        ),
        (P::Pending | P::Initializing | P::Running | P::Analyzing, C::Fail { reason }) => {
            (P::Failed, None, format!("failed: {reason}"))
        }
        (P::Pending | P::Initializing | P::Running | P::Analyzing, C::Stop { reason }) => (
            P::Stopped,
            None,
            format!("stopped{}", suffix(reason.as_ref())),
        ),
        (P::Initializing | P::Running | P::Analyzing, C::Rollback { reason }) => (
            P::RolledBack,
            None,
            format!("rolled back{}", suffix(reason.as_ref())),
        ),
        (P::Completed, C::Rollback { reason }) if promoted == Some(true) => (
            P::RolledBack,
            Some(false),
            format!("promotion rolled back{}", suffix(reason.as_ref())),
        ),
        (P::Initializing | P::Running, C::ExcludeTargets { targets }) if !targets.is_empty() => (
            current,
            None,
            format!(
                "excluded from the run: {}",
                targets
                    .iter()
                    .map(|(h, why)| format!("{h} ({why})"))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        ),
        _ => return Err(refuse()),
    };
    let excluded = match command {
        C::ExcludeTargets { targets } => targets.clone(),
        _ => Vec::new(),
    };
    Ok(Transition {
        from: current,
        to,
        promoted: new_promoted.or(promoted),
        message,
        excluded,
    })
}

fn suffix(reason: Option<&String>) -> String {
    match reason {
        Some(r) if !r.trim().is_empty() => format!(": {}", r.trim()),
        _ => String::new(),
    }
}

/// An experiment as stored and served.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Experiment {
    pub id: ExperimentId,
    pub name: String,
    pub description: String,
    pub phase: ExperimentPhase,
    /// The decision once completed: `true` when the candidate was promoted.
    pub promoted: Option<bool>,
    /// Why the experiment is in its phase (the last transition's message).
    pub phase_reason: Option<String>,
    pub baseline_pipeline: String,
    pub candidate_pipeline: String,
    pub target_hosts: Vec<HostId>,
    /// Agents whose labels hold every one of these pairs join `target_hosts` at start.
    #[serde(default)]
    pub target_selector: BTreeMap<String, String>,
    pub mode: ExperimentMode,
    /// Share of target hosts running the candidate in `split` mode, in percent.
    pub candidate_share_percent: Option<u8>,
    pub duration_seconds: u64,
    #[schema(value_type = Object)]
    pub parameters: serde_json::Value,
    pub owner: Option<String>,
    /// How the run is judged: analysis interval, guardrails, automatic rollback.
    #[serde(default)]
    pub analysis: AnalysisSpec,
    /// Targets that left the run under `analysis.on_target_failure: exclude`, with why and
    /// when; their KPIs are not analysed and a promotion does not reach them.
    #[serde(default)]
    pub excluded_targets: Vec<ExcludedTarget>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
}

/// A target dropped from a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ExcludedTarget {
    pub host_id: HostId,
    pub reason: String,
    pub at: DateTime<Utc>,
}

impl Experiment {
    /// Build a pending experiment from a validated request.
    pub fn create(id: ExperimentId, new: NewExperiment, now: DateTime<Utc>) -> Self {
        Self {
            id,
            name: new.name,
            description: new.description,
            phase: ExperimentPhase::Pending,
            promoted: None,
            phase_reason: None,
            baseline_pipeline: new.baseline_pipeline,
            candidate_pipeline: new.candidate_pipeline,
            target_hosts: new.target_hosts,
            target_selector: new.target_selector,
            mode: new.mode,
            candidate_share_percent: new.candidate_share_percent,
            duration_seconds: new.duration_seconds,
            parameters: new.parameters,
            owner: new.owner,
            analysis: new.analysis,
            excluded_targets: Vec::new(),
            created_at: now,
            updated_at: now,
            started_at: None,
            ended_at: None,
        }
    }

    /// Apply an accepted transition to this value (the store persists the result).
    pub fn record(&mut self, t: &Transition, now: DateTime<Utc>) {
        self.updated_at = now;
        if !t.excluded.is_empty() {
            for (host, reason) in &t.excluded {
                if !self.is_excluded(host) {
                    self.excluded_targets.push(ExcludedTarget {
                        host_id: host.clone(),
                        reason: reason.clone(),
                        at: now,
                    });
                }
            }
        }
        if t.from == t.to {
            // The phase, and why it is in it, stay.
            return;
        }
        self.phase = t.to;
        self.promoted = t.promoted;
        self.phase_reason = Some(t.message.clone());
        if t.from == ExperimentPhase::Pending && t.to == ExperimentPhase::Initializing {
            self.started_at = Some(now);
        }
        if t.to.is_terminal() {
            self.ended_at = Some(now);
        }
    }

    /// Whether `host` left the run under `on_target_failure: exclude`.
    pub fn is_excluded(&self, host: &HostId) -> bool {
        self.excluded_targets.iter().any(|x| &x.host_id == host)
    }

    /// The target hosts still taking part in the run.
    pub fn active_targets(&self) -> impl Iterator<Item = &HostId> {
        self.target_hosts.iter().filter(|h| !self.is_excluded(h))
    }

    /// Apply a user's edit. Name and description may change at any time; what shapes the run
    /// (pipelines, targets, mode, duration, parameters) only while pending.
    pub fn apply_patch(
        &mut self,
        patch: ExperimentPatch,
        now: DateTime<Utc>,
    ) -> Result<Vec<&'static str>, PatchError> {
        let mut errors = FieldErrors::default();
        patch.validate_into(&mut errors);
        errors.into_result()?;
        let shapes_run = patch.baseline_pipeline.is_some()
            || patch.candidate_pipeline.is_some()
            || patch.target_hosts.is_some()
            || patch.target_selector.is_some()
            || patch.mode.is_some()
            || patch.candidate_share_percent.is_some()
            || patch.duration_seconds.is_some()
            || patch.parameters.is_some()
            || patch.analysis.is_some();
        if shapes_run && self.phase != ExperimentPhase::Pending {
            return Err(PatchError::NotPending {
                current: self.phase,
            });
        }
        let mut changed = Vec::new();
        macro_rules! set {
            ($field:ident) => {
                if let Some(v) = patch.$field {
                    self.$field = v;
                    changed.push(stringify!($field));
                }
            };
        }
        set!(name);
        set!(description);
        set!(baseline_pipeline);
        set!(candidate_pipeline);
        set!(target_hosts);
        set!(target_selector);
        set!(mode);
        set!(duration_seconds);
        set!(parameters);
        set!(analysis);
        if let Some(share) = patch.candidate_share_percent {
            self.candidate_share_percent = share;
            changed.push("candidate_share_percent");
        }
        let mut errors = FieldErrors::default();
        validate_mode(self.mode, self.candidate_share_percent, &mut errors);
        errors.into_result()?;
        if !changed.is_empty() {
            self.updated_at = now;
        }
        Ok(changed)
    }
}

/// A field that failed validation, named by its JSON path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FieldError {
    pub field: String,
    pub problem: String,
}

/// Every problem found in one request, so a client can fix them all at once.
#[derive(Debug, Clone, Default, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.0.iter().map(|e| format!("{}: {}", e.field, e.problem)).collect::<Vec<_>>().join("; "))]
pub struct FieldErrors(pub Vec<FieldError>);

impl FieldErrors {
    pub fn push(&mut self, field: impl Into<String>, problem: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            problem: problem.into(),
        });
    }

    pub fn into_result(self) -> Result<(), FieldErrors> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    #[error("{0}")]
    Invalid(#[from] FieldErrors),
    #[error("experiment is {current}: only name and description can change after it started")]
    NotPending { current: ExperimentPhase },
}

fn default_duration_seconds() -> u64 {
    3600
}

fn default_parameters() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

/// A request to create an experiment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewExperiment {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Pipeline (template name or literal) the candidate is compared against.
    pub baseline_pipeline: String,
    pub candidate_pipeline: String,
    #[serde(default)]
    pub target_hosts: Vec<HostId>,
    /// Label pairs (e.g. `{"namespace": "checkout", "cluster": "eu-1"}`): at start, every
    /// enrolled agent whose labels hold all of them joins `target_hosts`.
    #[serde(default)]
    pub target_selector: BTreeMap<String, String>,
    #[serde(default)]
    pub mode: ExperimentMode,
    #[serde(default)]
    pub candidate_share_percent: Option<u8>,
    #[serde(default = "default_duration_seconds")]
    pub duration_seconds: u64,
    #[serde(default = "default_parameters")]
    #[schema(value_type = Object)]
    pub parameters: serde_json::Value,
    #[serde(default)]
    pub owner: Option<String>,
    /// Analysis interval, guardrails and automatic rollback; every field has a default.
    #[serde(default)]
    pub analysis: AnalysisSpec,
}

/// Limits on user-supplied experiment fields.
pub const MAX_NAME_LEN: usize = 200;
pub const MAX_DESCRIPTION_LEN: usize = 4000;
pub const MAX_PIPELINE_LEN: usize = 256 * 1024;
pub const MAX_TARGET_HOSTS: usize = 10_000;
/// Thirty days: longer experiments are almost always a forgotten one.
pub const MAX_DURATION_SECONDS: u64 = 30 * 24 * 3600;

impl NewExperiment {
    pub fn validate(&self) -> Result<(), FieldErrors> {
        let mut e = FieldErrors::default();
        validate_name(&self.name, &mut e);
        validate_description(&self.description, &mut e);
        validate_pipeline("baseline_pipeline", &self.baseline_pipeline, &mut e);
        validate_pipeline("candidate_pipeline", &self.candidate_pipeline, &mut e);
        validate_targets(&self.target_hosts, &mut e);
        validate_selector(&self.target_selector, &mut e);
        validate_duration(self.duration_seconds, &mut e);
        validate_parameters(&self.parameters, &mut e);
        validate_mode(self.mode, self.candidate_share_percent, &mut e);
        self.analysis.validate_into("analysis", &mut e);
        e.into_result()
    }
}

/// A partial update. Absent fields are left alone.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExperimentPatch {
    pub name: Option<String>,
    pub description: Option<String>,
    pub baseline_pipeline: Option<String>,
    pub candidate_pipeline: Option<String>,
    pub target_hosts: Option<Vec<HostId>>,
    pub target_selector: Option<BTreeMap<String, String>>,
    pub mode: Option<ExperimentMode>,
    /// Absent: unchanged; `null`: cleared (needed to move a `split` experiment to
    /// `shadow`); a number: set.
    #[serde(
        default,
        deserialize_with = "present_or_null",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<u8>)]
    pub candidate_share_percent: Option<Option<u8>>,
    pub duration_seconds: Option<u64>,
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<serde_json::Value>,
    pub analysis: Option<AnalysisSpec>,
}

/// A patch field that may be present as a value or as `null` (`Some(None)`), or absent
/// (`None`, through `#[serde(default)]`).
fn present_or_null<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

impl ExperimentPatch {
    fn validate_into(&self, e: &mut FieldErrors) {
        if let Some(v) = &self.name {
            validate_name(v, e);
        }
        if let Some(v) = &self.description {
            validate_description(v, e);
        }
        if let Some(v) = &self.baseline_pipeline {
            validate_pipeline("baseline_pipeline", v, e);
        }
        if let Some(v) = &self.candidate_pipeline {
            validate_pipeline("candidate_pipeline", v, e);
        }
        if let Some(v) = &self.target_hosts {
            validate_targets(v, e);
        }
        if let Some(v) = &self.target_selector {
            validate_selector(v, e);
        }
        if let Some(v) = self.duration_seconds {
            validate_duration(v, e);
        }
        if let Some(v) = &self.parameters {
            validate_parameters(v, e);
        }
        if let Some(v) = &self.analysis {
            v.validate_into("analysis", e);
        }
    }
}

fn validate_name(name: &str, e: &mut FieldErrors) {
    if name.trim().is_empty() {
        e.push("name", "must not be empty");
    } else if name.chars().count() > MAX_NAME_LEN {
        e.push("name", format!("must be at most {MAX_NAME_LEN} characters"));
    }
}

fn validate_description(d: &str, e: &mut FieldErrors) {
    if d.chars().count() > MAX_DESCRIPTION_LEN {
        e.push(
            "description",
            format!("must be at most {MAX_DESCRIPTION_LEN} characters"),
        );
    }
}

fn validate_pipeline(field: &str, p: &str, e: &mut FieldErrors) {
    if p.trim().is_empty() {
        e.push(field, "must not be empty");
    } else if p.len() > MAX_PIPELINE_LEN {
        e.push(field, format!("must be at most {MAX_PIPELINE_LEN} bytes"));
    }
}

pub(crate) fn validate_targets(t: &[HostId], e: &mut FieldErrors) {
    if t.len() > MAX_TARGET_HOSTS {
        e.push(
            "target_hosts",
            format!("must list at most {MAX_TARGET_HOSTS} hosts"),
        );
    }
    let mut seen = std::collections::HashSet::new();
    for (i, h) in t.iter().enumerate() {
        if !seen.insert(h) {
            e.push(
                format!("target_hosts[{i}]"),
                format!("`{h}` is listed twice"),
            );
        }
    }
}

/// Most label pairs in a target selector.
pub const MAX_SELECTOR_LABELS: usize = 16;

pub(crate) fn validate_selector(sel: &BTreeMap<String, String>, e: &mut FieldErrors) {
    if sel.len() > MAX_SELECTOR_LABELS {
        e.push(
            "target_selector",
            format!("must hold at most {MAX_SELECTOR_LABELS} labels"),
        );
    }
    for (k, v) in sel {
        if k.is_empty() || k.len() > 128 {
            e.push("target_selector", "label names must be 1 to 128 bytes");
        }
        if v.is_empty() || v.len() > 256 {
            e.push(
                format!(
                    "target_selector.{}",
                    k.chars().take(128).collect::<String>()
                ),
                "must be 1 to 256 bytes",
            );
        }
    }
}

fn validate_duration(d: u64, e: &mut FieldErrors) {
    if d == 0 {
        e.push("duration_seconds", "must be greater than 0");
    } else if d > MAX_DURATION_SECONDS {
        e.push(
            "duration_seconds",
            format!("must be at most {MAX_DURATION_SECONDS} (30 days)"),
        );
    }
}

fn validate_parameters(p: &serde_json::Value, e: &mut FieldErrors) {
    if !p.is_object() {
        e.push("parameters", "must be a JSON object");
    }
}

fn validate_mode(mode: ExperimentMode, share: Option<u8>, e: &mut FieldErrors) {
    match (mode, share) {
        (ExperimentMode::Split, None) => e.push(
            "candidate_share_percent",
            "is required when mode is `split`",
        ),
        (ExperimentMode::Split, Some(s)) if s == 0 || s >= 100 => {
            e.push("candidate_share_percent", "must be between 1 and 99")
        }
        (ExperimentMode::Shadow, Some(_)) => e.push(
            "candidate_share_percent",
            "only applies when mode is `split`",
        ),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use ExperimentCommand as C;
    use ExperimentPhase as P;

    fn any_command() -> impl Strategy<Value = ExperimentCommand> {
        prop_oneof![
            Just(C::Start),
            Just(C::MarkRunning),
            Just(C::BeginAnalysis),
            any::<bool>().prop_map(|p| C::Complete {
                promoted: p,
                reason: "r".into()
            }),
            Just(C::Fail {
                reason: "boom".into()
            }),
            Just(C::Stop { reason: None }),
            Just(C::Rollback {
                reason: Some("bad".into())
            }),
            Just(C::ExcludeTargets {
                targets: vec![(HostId::parse("node-x").unwrap(), "late".into())]
            }),
        ]
    }

    /// The edges the design allows, written out independently of `apply`.
    fn allowed(from: P, to: P) -> bool {
        matches!(
            (from, to),
            (P::Pending, P::Initializing)
                | (P::Initializing, P::Running)
                | (P::Running, P::Analyzing)
                | (P::Analyzing, P::Completed)
                | (
                    P::Pending | P::Initializing | P::Running | P::Analyzing,
                    P::Failed
                )
                | (
                    P::Pending | P::Initializing | P::Running | P::Analyzing,
                    P::Stopped
                )
                | (
                    P::Initializing | P::Running | P::Analyzing | P::Completed,
                    P::RolledBack
                )
        )
    }

    proptest! {
        #[test]
        fn no_command_sequence_reaches_an_illegal_phase(cmds in proptest::collection::vec(any_command(), 0..40)) {
            let mut phase = P::Pending;
            let mut promoted = None;
            let mut events = 0usize;
            let mut accepted = 0usize;
            for cmd in &cmds {
                match apply(phase, promoted, cmd) {
                    Ok(t) => {
                        prop_assert_eq!(t.from, phase);
                        if let C::ExcludeTargets { .. } = cmd {
                            // The one command that keeps the phase: only while the run is on.
                            prop_assert_eq!(t.from, t.to);
                            prop_assert!(matches!(t.from, P::Initializing | P::Running));
                            prop_assert_eq!(t.event_kind(), EventKind::Updated);
                        } else {
                            prop_assert!(allowed(t.from, t.to), "{:?} -> {:?} via {:?}", t.from, t.to, cmd);
                            prop_assert_ne!(t.from, t.to);
                        }
                        // every accepted transition emits exactly one event
                        events += 1;
                        accepted += 1;
                        phase = t.to;
                        promoted = t.promoted;
                    }
                    Err(e) => {
                        prop_assert_eq!(e.current, phase);
                        prop_assert_eq!(e.command, cmd.name());
                    }
                }
                if phase == P::Completed {
                    prop_assert!(promoted.is_some(), "completed without a decision");
                }
            }
            prop_assert_eq!(events, accepted);
        }

        #[test]
        fn terminal_phases_accept_nothing_but_rollback_of_a_promotion(cmd in any_command(), promoted in proptest::option::of(any::<bool>())) {
            for phase in [P::Failed, P::Stopped, P::RolledBack] {
                prop_assert!(apply(phase, promoted, &cmd).is_err());
            }
            if let Ok(t) = apply(P::Completed, promoted, &cmd) {
                prop_assert_eq!(promoted, Some(true));
                prop_assert_eq!(t.to, P::RolledBack);
                prop_assert_eq!(t.promoted, Some(false));
            }
        }
    }

    #[test]
    fn happy_path_runs_to_a_promotion() {
        let mut phase = P::Pending;
        let mut promoted = None;
        for cmd in [
            C::Start,
            C::MarkRunning,
            C::BeginAnalysis,
            C::Complete {
                promoted: true,
                reason: "87% fewer series".into(),
            },
        ] {
            let t = apply(phase, promoted, &cmd).unwrap();
            phase = t.to;
            promoted = t.promoted;
        }
        assert_eq!(phase, P::Completed);
        assert_eq!(promoted, Some(true));
    }

    #[test]
    fn starting_a_running_experiment_names_the_current_phase() {
        let err = apply(P::Running, None, &C::Start).unwrap_err();
        assert_eq!(err.to_string(), "experiment is running, cannot start");
    }

    fn new_exp() -> NewExperiment {
        serde_json::from_value(serde_json::json!({
            "name": "cut k8s series",
            "baseline_pipeline": "baseline",
            "candidate_pipeline": "adaptive",
        }))
        .unwrap()
    }

    #[test]
    fn validation_names_every_bad_field() {
        let mut n = new_exp();
        n.name = " ".into();
        n.duration_seconds = 0;
        n.mode = ExperimentMode::Split;
        let err = n.validate().unwrap_err();
        let fields: Vec<_> = err.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            ["name", "duration_seconds", "candidate_share_percent"]
        );
    }

    #[test]
    fn patch_of_run_shape_is_refused_once_started() {
        let mut e = Experiment::create(ExperimentId::new(), new_exp(), Utc::now());
        e.phase = P::Running;
        let patch = ExperimentPatch {
            duration_seconds: Some(10),
            ..Default::default()
        };
        assert_eq!(
            e.apply_patch(patch, Utc::now()),
            Err(PatchError::NotPending {
                current: P::Running
            })
        );
        let rename = ExperimentPatch {
            name: Some("new".into()),
            ..Default::default()
        };
        assert_eq!(e.apply_patch(rename, Utc::now()), Ok(vec!["name"]));
    }

    #[test]
    fn a_split_experiment_becomes_shadow_by_clearing_its_share_with_null() {
        let mut split = new_exp();
        split.mode = ExperimentMode::Split;
        split.candidate_share_percent = Some(30);
        let mut e = Experiment::create(ExperimentId::new(), split, Utc::now());
        // `mode` alone leaves the share, which shadow mode refuses, naming the field.
        let mode_only: ExperimentPatch = serde_json::from_str(r#"{"mode": "shadow"}"#).unwrap();
        assert_eq!(mode_only.candidate_share_percent, None);
        let err = e.apply_patch(mode_only, Utc::now()).unwrap_err();
        assert!(err.to_string().contains("candidate_share_percent"), "{err}");
        assert_eq!(e.candidate_share_percent, Some(30));
        // `null` clears it.
        let cleared: ExperimentPatch =
            serde_json::from_str(r#"{"mode": "shadow", "candidate_share_percent": null}"#).unwrap();
        assert_eq!(cleared.candidate_share_percent, Some(None));
        assert_eq!(
            e.apply_patch(cleared.clone(), Utc::now()),
            Ok(vec!["mode", "candidate_share_percent"])
        );
        assert_eq!(
            (e.mode, e.candidate_share_percent),
            (ExperimentMode::Shadow, None)
        );
        // The patch serializes back as it came: `null` kept, absent fields left out.
        assert_eq!(
            serde_json::to_value(&cleared).unwrap()["candidate_share_percent"],
            serde_json::Value::Null
        );
        let untouched = serde_json::to_value(ExperimentPatch::default()).unwrap();
        assert!(untouched.get("candidate_share_percent").is_none());
    }

    #[test]
    fn phase_names_round_trip() {
        for p in P::ALL {
            assert_eq!(p.as_str().parse::<P>(), Ok(p));
            assert_eq!(
                serde_json::to_value(p).unwrap(),
                serde_json::json!(p.as_str())
            );
        }
        assert!("done".parse::<P>().is_err());
    }
}
