//! The Phoenix agent: joins the control plane to the pipeline engine.
//!
//! Control-plane mode (`phoenix-agent agent`): enrolls, heartbeats, long-polls tasks and
//! executes them (deploy and hot-swap pipelines, run shadow or split experiments, load
//! simulations), reports KPIs per variant, and keeps what it must not lose (credentials,
//! the task journal, experiment state, KPI batches, remote-write data) in its data
//! directory. Standalone `run`/`validate` modes live in `phoenix-pipeline`.

pub mod client;
pub mod diskqueue;
pub mod kpi;
pub mod logship;
pub mod metrics;
pub mod procstat;
pub mod run;
pub mod rwbuffer;
pub mod settings;
pub mod state;
pub mod supervisor;
pub mod tasks;
pub mod tls;
