//! Phoenix's domain: identifiers, the experiment state machine, tasks, agents, KPI
//! batches and the statistics that judge them ([`stats`]). Everything here is pure (no I/O, no clock reads except through [`Clock`]) so the
//! rules the product promises can be tested with plain unit and property tests.

pub mod agent;
pub mod analysis;
pub mod clock;
pub mod cost;
pub mod deployment;
pub mod experiment;
pub mod ids;
pub mod kpi;
pub mod labelstats;
pub mod stats;
pub mod task;

pub use agent::{Agent, AgentHealth, Heartbeat, ResourceUsage};
pub use analysis::{
    AnalysisResult, AnalysisSpec, Decision, Guardrails, KpiRow, TargetFailurePolicy,
};
pub use clock::{Clock, ManualClock, SystemClock};
pub use deployment::{DeploymentStatus, NewPipelineDeployment, PipelineDeployment};
pub use experiment::{
    apply as apply_command, EventKind, ExcludedTarget, Experiment, ExperimentCommand,
    ExperimentEvent, ExperimentMode, ExperimentPatch, ExperimentPhase, FieldError, FieldErrors,
    NewExperiment, PatchError, Transition, TransitionError,
};
pub use ids::{DeploymentId, ExperimentId, HostId, IdError, TaskId};
pub use kpi::{KpiBatch, KpiValues, Variant};
pub use task::{NewTask, Task, TaskStatus, TaskType};
