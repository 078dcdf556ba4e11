//! The command line, declared with clap derive. Behaviour lives in `commands`.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use clap_complete::Shell;

use crate::output::Format;

const AFTER_HELP: &str = "\
Exit codes: 0 ok, 1 the API refused the request, 2 usage or input error, \
3 the server cannot be reached or its certificate is not trusted (see --ca-file), \
4 a --watch ended in failed, rolled_back or stopped.

Plugins: `phoenix foo ARGS…` runs `phoenix-foo ARGS…` from PATH with PHOENIX_SERVER and \
PHOENIX_TOKEN set.";

#[derive(Debug, Parser)]
#[command(
    name = "phoenix",
    version,
    about = "Command line for the Phoenix control plane: experiments, fleet, cost",
    after_help = AFTER_HELP,
    allow_external_subcommands = true,
    propagate_version = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// API server URL; overrides $PHOENIX_SERVER and the context's (default
    /// http://127.0.0.1:8080). With `context set`, the server the context names.
    #[arg(long, global = true, value_name = "URL")]
    pub server: Option<String>,
    /// Context from the config file to use instead of the current one.
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,
    /// Output of reads: an aligned table for people, or the API's objects as JSON or YAML.
    #[arg(short = 'o', long = "output", global = true, value_enum, default_value_t = Format::Table)]
    pub output: Format,
    /// Seconds to wait for each API request.
    #[arg(long, global = true, default_value_t = 30, value_name = "SECONDS")]
    pub timeout: u64,
    /// A CA certificate (PEM) to trust besides the web roots, for an https:// server signed
    /// by a private CA (REST and the wss:// hub); overrides $PHOENIX_CA_FILE and the
    /// context's `ca_file`. With `context set` and `login`, stored in the context.
    #[arg(long, global = true, value_name = "FILE")]
    pub ca_file: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, run, follow and judge experiments.
    #[command(subcommand, visible_alias = "exp")]
    Experiment(ExperimentCmd),
    /// Pipeline templates, rendering (Phoenix or OpenTelemetry Collector YAML), validation,
    /// and deployments outside experiments.
    #[command(subcommand, visible_alias = "pl")]
    Pipeline(PipelineCmd),
    /// Agents enrolled with the control plane.
    #[command(subcommand)]
    Fleet(FleetCmd),
    /// Pricing presets used by cost analyses.
    #[command(subcommand)]
    Cost(CostCmd),
    /// Named servers (and their tokens) in the config file.
    #[command(subcommand)]
    Context(ContextCmd),
    /// Aggregations and drops that save the most series, from the agents' label statistics.
    #[command(subcommand, visible_alias = "recs")]
    Recommendations(RecommendationsCmd),
    /// Series by namespace, service, metric and label (HyperLogLog merged across hosts).
    Cardinality(BreakdownArgs),
    /// Print the dashboard URL and open it with xdg-open when present.
    Ui {
        /// Only print the URL.
        #[arg(long)]
        no_open: bool,
    },
    /// The CLI's version and, when reachable, the server's.
    Version,
    /// Log in to the current context's server and keep the tokens in the config file.
    ///
    /// With a user name and password (asked for when not given; `--password-stdin` reads one
    /// line from stdin), the API issues an access token and a refresh token: both are stored,
    /// and the access token is refreshed on its own when it expires. With `--token` (an API
    /// key, or `-` to read it from stdin) that token is stored as it is.
    Login {
        /// The user to log in as.
        #[arg(long, short = 'u', conflicts_with = "token")]
        username: Option<String>,
        /// Read the password from the first line of stdin.
        #[arg(long, conflicts_with = "token")]
        password_stdin: bool,
        /// Store this token (an API key) instead of logging in; `-` reads one line from stdin.
        #[arg(long)]
        token: Option<String>,
    },
    /// End the session on the server (when logged in with a password) and remove the tokens
    /// from the current context.
    Logout,
    /// Print a shell completion script (e.g. `phoenix completion bash > /etc/bash_completion.d/phoenix`).
    Completion {
        #[arg(value_enum)]
        shell: Shell,
    },
    /// `phoenix NAME ARGS…` runs the plugin `phoenix-NAME ARGS…` from PATH.
    #[command(external_subcommand)]
    Plugin(Vec<OsString>),
}

#[derive(Debug, Subcommand)]
pub enum ExperimentCmd {
    /// Create an experiment from a spec file (YAML or JSON) and/or flags (flags win).
    Create(CreateArgs),
    /// List experiments, newest first.
    #[command(visible_alias = "ls")]
    List {
        /// Only experiments in this phase (pending, initializing, running, analyzing,
        /// completed, failed, stopped, rolled_back).
        #[arg(long)]
        phase: Option<String>,
        /// Page size, 1–500.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[arg(long, default_value_t = 0)]
        offset: u64,
    },
    /// Show one experiment.
    Get { id: String },
    /// Start a pending experiment: deployment and experiment tasks go to every target.
    Start { id: String },
    /// Stop an active experiment.
    Stop {
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Roll an active experiment back to the baseline.
    Rollback {
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Phase, reason and progress of an experiment.
    ///
    /// With --watch, follows the experiment on the WebSocket hub until it reaches a terminal
    /// phase; when the hub cannot be used, polls the API every --interval (2 s) instead.
    Status {
        id: String,
        #[command(flatten)]
        watch: WatchArgs,
    },
    /// The experiment's history, oldest first.
    ///
    /// With --watch, prints new events as they come (WebSocket hub, or polling every
    /// --interval when the hub cannot be used) until the experiment reaches a terminal phase.
    Events {
        id: String,
        #[command(flatten)]
        watch: WatchArgs,
    },
    /// KPIs per variant and interval, with their summary (`GET …/kpis`).
    Metrics { id: String },
    /// The latest analysis: decision, reasons, guardrails, effects.
    Results { id: String },
    /// Monthly and yearly cost before and after, under every pricing preset.
    Cost {
        id: String,
        /// The preset to select (default: the first one).
        #[arg(long)]
        preset: Option<String>,
    },
    /// Delete an experiment that is not active.
    Delete { id: String },
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Follow until the experiment ends; exit 4 if it ends failed, rolled back or stopped.
    #[arg(short, long)]
    pub watch: bool,
    /// Poll interval with --watch when the hub cannot be used.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub interval: std::time::Duration,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Spec file, YAML or JSON, with the fields of `POST /api/v1/experiments`.
    #[arg(short, long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long)]
    pub description: Option<String>,
    /// Baseline pipeline: a template name (baseline, topk, adaptive, hybrid) or a literal.
    #[arg(long)]
    pub baseline: Option<String>,
    /// Candidate pipeline: a template name or a literal.
    #[arg(long)]
    pub candidate: Option<String>,
    /// Target hosts, comma-separated.
    #[arg(long, value_delimiter = ',', value_name = "HOST,…")]
    pub hosts: Vec<String>,
    /// Agent label to match at start, `key=value` (repeat or comma-separate for several).
    #[arg(long, value_delimiter = ',', value_name = "KEY=VALUE")]
    pub selector: Vec<String>,
    /// How long the experiment runs, e.g. 30m, 1h, 2h30m.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<std::time::Duration>,
    /// shadow (every target runs both) or split (a share of targets runs the candidate).
    #[arg(long, value_parser = ["shadow", "split"])]
    pub mode: Option<String>,
    /// Percent of targets running the candidate in split mode.
    #[arg(long, value_name = "PERCENT")]
    pub candidate_share: Option<u8>,
    #[arg(long)]
    pub owner: Option<String>,
    /// Start it right after creating it.
    #[arg(long)]
    pub start: bool,
}

#[derive(Debug, Args)]
pub struct ParamArgs {
    /// A template parameter, `name=value` (the value is read as YAML: `k=20`,
    /// `without=[pod,instance]`); repeat for several.
    #[arg(short = 'p', long = "param", value_name = "NAME=VALUE")]
    pub params: Vec<String>,
    /// Parameters from a YAML or JSON file (flags win).
    #[arg(long, value_name = "FILE")]
    pub params_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum PipelineCmd {
    /// The templates: built-ins, then user templates (latest version).
    #[command(visible_alias = "ls")]
    Templates,
    /// One template: parameter schema and source.
    Template {
        name: String,
        /// A user template's version (default: the latest).
        #[arg(long = "template-version", value_name = "N")]
        template_version: Option<u32>,
    },
    /// Render a template with parameters, as Phoenix pipeline YAML or the equivalent
    /// OpenTelemetry Collector configuration (`--format otelcol`).
    Render {
        template: String,
        #[command(flatten)]
        params: ParamArgs,
        #[arg(long, default_value = "phoenix", value_parser = ["phoenix", "otelcol"])]
        format: String,
    },
    /// Validate a pipeline: a template name, or a literal pipeline file with -f.
    Validate {
        /// A template name (or a literal pipeline as text).
        pipeline: Option<String>,
        /// A pipeline YAML file.
        #[arg(short, long, value_name = "FILE", conflicts_with = "pipeline")]
        file: Option<PathBuf>,
        #[command(flatten)]
        params: ParamArgs,
    },
    /// Make a pipeline live on hosts outside experiments.
    Deploy {
        /// A template name (or a literal pipeline as text).
        pipeline: String,
        #[arg(long)]
        name: Option<String>,
        /// Target hosts, comma-separated.
        #[arg(long, value_delimiter = ',', value_name = "HOST,…")]
        hosts: Vec<String>,
        /// Agent label to match, `key=value` (repeat or comma-separate).
        #[arg(long, value_delimiter = ',', value_name = "KEY=VALUE")]
        selector: Vec<String>,
        #[command(flatten)]
        params: ParamArgs,
    },
    /// Deployments, newest first.
    Deployments,
    /// One deployment and each host's progress.
    Deployment { id: String },
    /// Withdraw a deployment: every host gets the baseline pipeline back.
    Withdraw { id: String },
}

#[derive(Debug, Subcommand)]
pub enum FleetCmd {
    /// One row per agent: health, version, last heartbeat, running tasks, resources.
    #[command(visible_alias = "ls")]
    List,
    /// Agents per health and version, and the task queue by status.
    Status,
}

#[derive(Debug, Subcommand)]
pub enum CostCmd {
    /// Show or replace the pricing presets (`phoenix cost presets` shows them).
    Presets {
        #[command(subcommand)]
        action: Option<PresetsCmd>,
    },
    /// Where series and cost come from (namespace → service → metric) and where the live
    /// pipelines (or an experiment's candidate) reduce them.
    Flow {
        #[command(flatten)]
        filter: BreakdownArgs,
        /// Pricing preset (default: the first one).
        #[arg(long)]
        preset: Option<String>,
        /// Price this experiment's candidate instead of the live pipelines.
        #[arg(long, value_name = "ID")]
        experiment: Option<String>,
    },
}

/// Filters of `phoenix cardinality` and `phoenix cost flow`.
#[derive(Debug, Args)]
pub struct BreakdownArgs {
    #[arg(long)]
    pub namespace: Option<String>,
    #[arg(long)]
    pub service: Option<String>,
    #[arg(long)]
    pub metric: Option<String>,
    /// Only this host's report.
    #[arg(long)]
    pub host: Option<String>,
    /// Rows listed, 1–500.
    #[arg(long)]
    pub limit: Option<u32>,
}

#[derive(Debug, Subcommand)]
pub enum RecommendationsCmd {
    /// Recommendations ranked by estimated series saved, then monthly savings.
    #[command(visible_alias = "ls")]
    List {
        /// Only this metric's.
        #[arg(long)]
        metric: Option<String>,
        /// Pricing preset of the savings.
        #[arg(long)]
        preset: Option<String>,
        /// 1–500.
        #[arg(long)]
        limit: Option<u32>,
    },
    /// Create (not start) the experiment testing recommendation ID: the baseline template
    /// against a candidate applying it, on the hosts that reported the metric.
    Apply {
        id: String,
        /// Experiment name (default: derived from the recommendation).
        #[arg(long)]
        name: Option<String>,
        /// Experiment duration in seconds (default 3600).
        #[arg(long, value_name = "SECONDS")]
        duration: Option<u64>,
        #[arg(long)]
        owner: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum PresetsCmd {
    /// Show the presets.
    Get,
    /// Replace every preset with those of a YAML or JSON file (`{presets: [...]}` or a list).
    Set {
        #[arg(short, long, value_name = "FILE")]
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum ContextCmd {
    /// The contexts in the config file; `*` marks the current one.
    #[command(visible_alias = "ls")]
    List,
    /// Make NAME the current context.
    Use { name: String },
    /// Add or update a context: `phoenix context set NAME --server URL [--token T]
    /// [--ca-file FILE]` (the first one added becomes current; `--ca-file ''` removes it).
    Set {
        name: String,
        /// A token to send as `Authorization: Bearer` (see `phoenix login`).
        #[arg(long)]
        token: Option<String>,
    },
    /// Remove a context.
    Delete { name: String },
    /// Print the current context's name.
    Current,
}
