//! `phoenix experiment …`: create from a spec and/or flags, the reads, the actions, and the
//! `--watch` loops. Watching follows the experiment's topic on the WebSocket hub
//! (`/api/v1/ws`), falling back to polling every `--interval` when the socket cannot be
//! opened (no token, refused, a proxy without WebSockets) or breaks; it draws a progress bar on
//! stderr only when stderr is a terminal.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use phoenix_client::{
    Client, ClientError, CostAnalysis, EventStream, Experiment, ExperimentEvent,
    ExperimentListQuery, ExperimentPhase, KpiReport, ResultsResponse, TransitionResponse,
};
use serde_json::{json, Map, Value};

use crate::cli::{CreateArgs, ExperimentCmd, GlobalArgs, WatchArgs};
use crate::commands::{read_spec, serde_plain, stderr_is_tty};
use crate::error::{CliError, CliResult, EXIT_UNREACHABLE, EXIT_WATCH_FAILED};
use crate::output::{self, duration_secs, emit, fields, num, opt, time, Format, Table};

/// Consecutive failed polls a watch tolerates before giving up (a restarting API).
const WATCH_MAX_UNREACHABLE: u32 = 5;

pub async fn run(cmd: ExperimentCmd, g: &GlobalArgs, c: &Client) -> CliResult<u8> {
    let f = g.output;
    match cmd {
        ExperimentCmd::Create(args) => create(args, f, c).await,
        ExperimentCmd::List {
            phase,
            limit,
            offset,
        } => {
            let phase = phase
                .map(|p| {
                    p.parse::<ExperimentPhase>().map_err(|_| {
                        CliError::usage(format!(
                            "unknown phase `{p}`; one of {}",
                            ExperimentPhase::ALL.map(|p| p.as_str()).join(", ")
                        ))
                    })
                })
                .transpose()?;
            let page = c
                .list_experiments(&ExperimentListQuery {
                    phase,
                    limit: Some(limit),
                    offset: Some(offset),
                })
                .await?;
            emit(f, &page, || {
                let mut out = list_table(&page.items);
                if page.total > page.items.len() as u64 {
                    out.push_str(&format!(
                        "({} of {}; --offset and --limit for more)\n",
                        page.items.len(),
                        page.total
                    ));
                }
                out
            })?;
            Ok(0)
        }
        ExperimentCmd::Get { id } => {
            let e = c.get_experiment(&id).await?;
            emit(f, &e, || detail(&e))?;
            Ok(0)
        }
        ExperimentCmd::Start { id } => {
            let t = c.start_experiment(&id).await?;
            emit(f, &t, || transition_text(&t))?;
            Ok(0)
        }
        ExperimentCmd::Stop { id, reason } => {
            let t = c.stop_experiment(&id, reason.as_deref()).await?;
            emit(f, &t, || transition_text(&t))?;
            Ok(0)
        }
        ExperimentCmd::Rollback { id, reason } => {
            let t = c.rollback_experiment(&id, reason.as_deref()).await?;
            emit(f, &t, || transition_text(&t))?;
            Ok(0)
        }
        ExperimentCmd::Delete { id } => {
            c.delete_experiment(&id).await?;
            eprintln!("experiment {id} deleted");
            Ok(0)
        }
        ExperimentCmd::Status { id, watch } => status(&id, &watch, f, c).await,
        ExperimentCmd::Events { id, watch } => events(&id, &watch, f, c).await,
        ExperimentCmd::Metrics { id } => {
            let k = c.experiment_kpis(&id).await?;
            emit(f, &k, || kpi_text(&k))?;
            Ok(0)
        }
        ExperimentCmd::Results { id } => {
            let r = c.experiment_results(&id).await?;
            emit(f, &r, || results_text(&r))?;
            Ok(0)
        }
        ExperimentCmd::Cost { id, preset } => {
            let a = c.cost_analysis(&id, preset.as_deref()).await?;
            emit(f, &a, || cost_text(&a))?;
            Ok(0)
        }
    }
}

/// The request body: the spec file's fields, then the flags over them.
pub fn build_spec(args: &CreateArgs) -> CliResult<Value> {
    let mut spec: Map<String, Value> = match &args.file {
        Some(path) => match read_spec(path)? {
            Value::Object(m) => m,
            _ => {
                return Err(CliError::usage(format!(
                    "{}: expected a mapping of experiment fields",
                    path.display()
                )))
            }
        },
        None => Map::new(),
    };
    let mut set = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            spec.insert(k.to_string(), v);
        }
    };
    set("name", args.name.clone().map(Value::from));
    set("description", args.description.clone().map(Value::from));
    set("baseline_pipeline", args.baseline.clone().map(Value::from));
    set(
        "candidate_pipeline",
        args.candidate.clone().map(Value::from),
    );
    let hosts: Vec<String> = args
        .hosts
        .iter()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .collect();
    set("target_hosts", (!hosts.is_empty()).then(|| json!(hosts)));
    if !args.selector.is_empty() {
        let mut sel = Map::new();
        for pair in &args.selector {
            let (k, v) = pair.split_once('=').ok_or_else(|| {
                CliError::usage(format!("--selector `{pair}`: expected KEY=VALUE"))
            })?;
            sel.insert(k.trim().to_string(), Value::from(v.trim()));
        }
        set("target_selector", Some(Value::Object(sel)));
    }
    set(
        "duration_seconds",
        args.duration.map(|d| Value::from(d.as_secs())),
    );
    set("mode", args.mode.clone().map(Value::from));
    set(
        "candidate_share_percent",
        args.candidate_share.map(Value::from),
    );
    set("owner", args.owner.clone().map(Value::from));

    let missing: Vec<&str> = [
        ("name", "--name"),
        ("baseline_pipeline", "--baseline"),
        ("candidate_pipeline", "--candidate"),
    ]
    .iter()
    .filter(|(k, _)| !spec.contains_key(*k))
    .map(|(_, flag)| *flag)
    .collect();
    if !missing.is_empty() {
        return Err(CliError::usage(format!(
            "missing {} (or a spec file with -f)",
            missing.join(", ")
        )));
    }
    Ok(Value::Object(spec))
}

async fn create(args: CreateArgs, f: Format, c: &Client) -> CliResult<u8> {
    let spec = build_spec(&args)?;
    let exp = c.create_experiment_raw(&spec).await?;
    if args.start {
        let t = c.start_experiment(&exp.id.to_string()).await?;
        emit(f, &t, || {
            format!("experiment {} created\n{}", exp.id, transition_text(&t))
        })?;
    } else {
        emit(f, &exp, || detail(&exp))?;
    }
    Ok(0)
}

fn list_table(items: &[Experiment]) -> String {
    if items.is_empty() {
        return "no experiments\n".into();
    }
    let mut t = Table::new(&[
        "ID", "NAME", "PHASE", "MODE", "TARGETS", "DURATION", "CREATED",
    ]);
    for e in items {
        let targets = if e.target_hosts.is_empty() && !e.target_selector.is_empty() {
            "selector".to_string()
        } else {
            e.target_hosts.len().to_string()
        };
        t.row(vec![
            e.id.to_string(),
            e.name.clone(),
            e.phase.as_str().into(),
            serde_plain(&e.mode),
            targets,
            duration_secs(e.duration_seconds),
            time(&Some(e.created_at)),
        ]);
    }
    t.render()
}

fn short_pipeline(p: &str) -> String {
    let first = p.lines().next().unwrap_or("");
    if p.lines().count() > 1 || first.chars().count() > 60 {
        format!(
            "{}… ({} bytes)",
            first.chars().take(40).collect::<String>(),
            p.len()
        )
    } else {
        first.to_string()
    }
}

fn detail(e: &Experiment) -> String {
    let join_hosts = if e.target_hosts.is_empty() {
        "-".to_string()
    } else {
        e.target_hosts
            .iter()
            .map(|h| h.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let selector = if e.target_selector.is_empty() {
        "-".to_string()
    } else {
        e.target_selector
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut pairs = vec![
        ("id", e.id.to_string()),
        ("name", e.name.clone()),
        ("phase", e.phase.as_str().to_string()),
        ("reason", opt(&e.phase_reason)),
        ("promoted", opt(&e.promoted)),
        ("baseline", short_pipeline(&e.baseline_pipeline)),
        ("candidate", short_pipeline(&e.candidate_pipeline)),
        ("mode", serde_plain(&e.mode)),
        ("targets", join_hosts),
        ("selector", selector),
        ("duration", duration_secs(e.duration_seconds)),
        ("owner", opt(&e.owner)),
        ("created", time(&Some(e.created_at))),
        ("started", time(&e.started_at)),
        ("ended", time(&e.ended_at)),
    ];
    if !e.description.is_empty() {
        pairs.insert(2, ("description", e.description.clone()));
    }
    fields(&pairs)
}

fn transition_text(t: &TransitionResponse) -> String {
    let e = &t.experiment;
    let mut s = format!("experiment {} is {}", e.id, e.phase.as_str());
    if !t.task_ids.is_empty() {
        s.push_str(&format!(" ({} tasks queued)", t.task_ids.len()));
    }
    s.push('\n');
    if !t.event.message.is_empty() {
        s.push_str(&format!("  {}\n", t.event.message));
    }
    s
}

/// Seconds since start, capped at the duration, when the experiment has started.
fn elapsed_secs(e: &Experiment) -> Option<u64> {
    let start = e.started_at?;
    let end = e.ended_at.unwrap_or_else(chrono::Utc::now);
    let secs = (end - start).num_seconds().max(0) as u64;
    Some(secs.min(e.duration_seconds))
}

fn status_text(e: &Experiment) -> String {
    let progress = match elapsed_secs(e) {
        Some(s) => format!(
            "{} of {} ({:.0} %)",
            duration_secs(s),
            duration_secs(e.duration_seconds),
            if e.duration_seconds > 0 {
                s as f64 / e.duration_seconds as f64 * 100.0
            } else {
                100.0
            }
        ),
        None => format!("not started ({})", duration_secs(e.duration_seconds)),
    };
    fields(&[
        ("id", e.id.to_string()),
        ("name", e.name.clone()),
        ("phase", e.phase.as_str().to_string()),
        ("reason", opt(&e.phase_reason)),
        ("promoted", opt(&e.promoted)),
        ("progress", progress),
        ("started", time(&e.started_at)),
        ("ended", time(&e.ended_at)),
    ])
}

/// The exit code a watch ends with for a terminal phase.
pub fn watch_exit(phase: ExperimentPhase) -> u8 {
    match phase {
        ExperimentPhase::Failed | ExperimentPhase::RolledBack | ExperimentPhase::Stopped => {
            EXIT_WATCH_FAILED
        }
        _ => 0,
    }
}

/// Polls `fetch` through short outages; gives up after [`WATCH_MAX_UNREACHABLE`] failures.
struct Poller {
    failures: u32,
}

impl Poller {
    fn check<T>(&mut self, r: Result<T, ClientError>, bar: &Bar) -> CliResult<Option<T>> {
        match r {
            Ok(v) => {
                self.failures = 0;
                Ok(Some(v))
            }
            Err(e @ ClientError::Unreachable { .. }) => {
                self.failures += 1;
                if self.failures >= WATCH_MAX_UNREACHABLE {
                    return Err(CliError::new(
                        EXIT_UNREACHABLE,
                        format!("{e} (gave up after {} tries)", self.failures),
                    ));
                }
                bar.note(&format!("server unreachable, retrying: {e}"));
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// A progress bar on a terminal, plain lines on stderr elsewhere.
struct Bar {
    bar: Option<ProgressBar>,
}

impl Bar {
    fn new() -> Self {
        if !stderr_is_tty() {
            return Self { bar: None };
        }
        let pb = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template("{spinner} {msg:30} [{bar:30}] {elapsed_precise}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        pb.set_style(style);
        pb.enable_steady_tick(Duration::from_millis(200));
        Self { bar: Some(pb) }
    }

    fn update(&self, e: &Experiment) {
        if let Some(pb) = &self.bar {
            pb.set_length(e.duration_seconds.max(1));
            pb.set_position(elapsed_secs(e).unwrap_or(0));
            pb.set_message(format!("{} {}", e.name, e.phase.as_str()));
        }
    }

    /// A line above the bar (or on stderr without one).
    fn note(&self, line: &str) {
        match &self.bar {
            Some(pb) => pb.println(line),
            None => eprintln!("{line}"),
        }
    }

    /// A line for stdout, kept above the bar.
    fn out(&self, text: &str) {
        match &self.bar {
            Some(pb) => pb.suspend(|| output::print_out(text)),
            None => output::print_out(text),
        }
    }

    fn finish(&self) {
        if let Some(pb) = &self.bar {
            pb.finish_and_clear();
        }
    }
}

async fn status(id: &str, w: &WatchArgs, f: Format, c: &Client) -> CliResult<u8> {
    let mut e = c.get_experiment(id).await?;
    if !w.watch {
        emit(f, &e, || status_text(&e))?;
        return Ok(0);
    }
    let bar = Bar::new();
    let mut poller = Poller { failures: 0 };
    let mut last_phase = None;
    let mut stream = follow(c, &e, w, &bar).await;
    if stream.is_some() {
        // What changed before the subscription took effect.
        e = c.get_experiment(id).await?;
    }
    loop {
        if last_phase != Some(e.phase) {
            bar.note(&format!(
                "{}  {:<12}  {}",
                chrono::Utc::now().format("%H:%M:%S"),
                e.phase.as_str(),
                e.phase_reason.as_deref().unwrap_or("")
            ));
            last_phase = Some(e.phase);
        }
        bar.update(&e);
        if e.phase.is_terminal() {
            break;
        }
        if let Some(s) = stream.as_mut() {
            match next_change(s).await {
                Ok(()) => {}
                Err(reason) => {
                    bar.note(&format!(
                        "event stream lost ({reason}); polling every {}",
                        humantime::format_duration(w.interval)
                    ));
                    stream = None;
                }
            }
        } else {
            tokio::time::sleep(w.interval).await;
        }
        if let Some(next) = poller.check(c.get_experiment(id).await, &bar)? {
            e = next;
        }
    }
    bar.finish();
    emit(f, &e, || status_text(&e))?;
    Ok(watch_exit(e.phase))
}

fn event_line(ev: &ExperimentEvent) -> String {
    let change = match (ev.from_phase, ev.to_phase) {
        (Some(a), Some(b)) => format!("{} -> {}", a.as_str(), b.as_str()),
        (None, Some(b)) => b.as_str().to_string(),
        _ => "-".into(),
    };
    [
        ev.seq.to_string(),
        ev.at.format("%Y-%m-%d %H:%M:%S").to_string(),
        ev.kind.as_str().to_string(),
        change,
        ev.message.clone(),
    ]
    .join("  ")
}

fn events_table(events: &[ExperimentEvent]) -> String {
    let mut t = Table::new(&["SEQ", "AT", "KIND", "PHASE", "MESSAGE"]);
    for ev in events {
        let change = match (ev.from_phase, ev.to_phase) {
            (Some(a), Some(b)) => format!("{} -> {}", a.as_str(), b.as_str()),
            (None, Some(b)) => b.as_str().to_string(),
            _ => "-".into(),
        };
        t.row(vec![
            ev.seq.to_string(),
            ev.at.format("%Y-%m-%d %H:%M:%S").to_string(),
            ev.kind.as_str().to_string(),
            change,
            ev.message.clone(),
        ]);
    }
    t.render()
}

async fn events(id: &str, w: &WatchArgs, f: Format, c: &Client) -> CliResult<u8> {
    if !w.watch {
        let evs = c.all_experiment_events(id, 0).await?;
        emit(f, &evs, || events_table(&evs))?;
        return Ok(0);
    }
    // Streaming: one line (table), one JSON object per line (json), one document (yaml).
    let bar = Bar::new();
    let mut poller = Poller { failures: 0 };
    let mut after = 0i64;
    let first = c.get_experiment(id).await?;
    let mut stream = follow(c, &first, w, &bar).await;
    let mut first_look = true;
    loop {
        // After the first look, wait for the stream to say something changed (or poll).
        if !std::mem::take(&mut first_look) {
            if let Some(s) = stream.as_mut() {
                if let Err(reason) = next_change(s).await {
                    bar.note(&format!(
                        "event stream lost ({reason}); polling every {}",
                        humantime::format_duration(w.interval)
                    ));
                    stream = None;
                }
            } else {
                tokio::time::sleep(w.interval).await;
            }
        }
        // Phase first: events read after a terminal phase include the one that ended it.
        let Some(e) = poller.check(c.get_experiment(id).await, &bar)? else {
            tokio::time::sleep(w.interval).await;
            continue;
        };
        let Some(evs) = poller.check(c.all_experiment_events(id, after).await, &bar)? else {
            tokio::time::sleep(w.interval).await;
            continue;
        };
        for ev in &evs {
            after = after.max(ev.seq);
            let text = match f {
                Format::Table => format!("{}\n", event_line(ev)),
                Format::Json => format!("{}\n", serde_json::to_string(ev).unwrap_or_default()),
                Format::Yaml => format!("---\n{}", serde_yaml::to_string(ev).unwrap_or_default()),
            };
            bar.out(&text);
        }
        bar.update(&e);
        if e.phase.is_terminal() {
            bar.finish();
            return Ok(watch_exit(e.phase));
        }
    }
}

/// Subscribe to the experiment's topic, or `None` (with a note) when the hub cannot be used:
/// the watch then polls.
async fn follow(c: &Client, e: &Experiment, w: &WatchArgs, bar: &Bar) -> Option<EventStream> {
    let fallback = |reason: String| {
        bar.note(&format!(
            "event stream unavailable ({reason}); polling every {}",
            humantime::format_duration(w.interval)
        ));
        None
    };
    if c.token().is_none() {
        return fallback("no token: phoenix login --token …".into());
    }
    let mut stream = match c.event_stream().await {
        Ok(s) => s,
        Err(err) => return fallback(err.to_string()),
    };
    match stream
        .subscribe(&format!("experiments/{}", e.id), None)
        .await
    {
        Ok(_) => {
            bar.note(&format!("following {} on {}", e.id, c.ws_url()));
            Some(stream)
        }
        Err(err) => fallback(err.to_string()),
    }
}

/// Wait for the next event of the experiment (the caller then reads the new state through
/// the REST API). A silent minute also returns, as a safety net.
async fn next_change(s: &mut EventStream) -> Result<(), String> {
    match tokio::time::timeout(Duration::from_secs(60), s.next_event()).await {
        Ok(Ok(_)) | Err(_) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
    }
}

fn kpi_text(k: &KpiReport) -> String {
    let s = &k.summary;
    let mut out = fields(&[
        ("experiment", k.experiment_id.to_string()),
        ("interval", duration_secs(k.interval_seconds)),
        ("intervals", s.intervals.to_string()),
        ("hosts", s.hosts.to_string()),
        ("input series", num(s.input_series, 0)),
        ("baseline output series", num(s.baseline_output_series, 0)),
        ("candidate output series", num(s.candidate_output_series, 0)),
        ("reduction %", num(s.reduction_percent, 1)),
        ("protected coverage %", num(s.protected_coverage_percent, 1)),
        ("anomaly recall %", num(s.anomaly_recall_percent, 1)),
        ("max total error %", num(s.max_total_error_percent, 3)),
    ]);
    if k.candidate.is_empty() && k.baseline.is_empty() {
        out.push_str("no KPI batches yet\n");
        return out;
    }
    out.push('\n');
    let mut t = Table::new(&[
        "INTERVAL START",
        "HOSTS",
        "INPUT",
        "BASELINE OUT",
        "CANDIDATE OUT",
        "REDUCTION %",
    ]);
    for p in &k.candidate {
        let base = k
            .baseline
            .iter()
            .find(|b| b.interval_start == p.interval_start);
        t.row(vec![
            p.interval_start.format("%Y-%m-%d %H:%M:%S").to_string(),
            p.hosts.to_string(),
            format!("{:.0}", p.input_series),
            num(base.map(|b| b.output_series), 0),
            format!("{:.0}", p.output_series),
            format!("{:.1}", p.reduction_percent),
        ]);
    }
    out.push_str(&t.render());
    out
}

fn results_text(r: &ResultsResponse) -> String {
    let a = &r.result;
    let mut out = fields(&[
        ("experiment", r.experiment_id.to_string()),
        ("phase", r.phase.as_str().to_string()),
        ("promoted", opt(&r.promoted)),
        (
            "decision",
            format!(
                "{} ({})",
                a.decision.as_str(),
                if a.r#final { "final" } else { "interim" }
            ),
        ),
        (
            "source",
            format!(
                "{}, {} analyses, at {}",
                r.source,
                r.analyses,
                time(&r.analysed_at)
            ),
        ),
        ("intervals", a.intervals.to_string()),
        ("hosts", a.hosts.to_string()),
        ("reduction %", num(a.reduction_percent, 1)),
        ("protected coverage %", num(a.protected_coverage_percent, 1)),
        ("anomaly recall %", num(a.anomaly_recall_percent, 1)),
        ("max total error %", num(a.max_total_error_percent, 3)),
    ]);
    if !a.reasons.is_empty() {
        out.push_str("reasons:\n");
        for reason in &a.reasons {
            out.push_str(&format!("  - {reason}\n"));
        }
    }
    if !a.guardrails.is_empty() {
        out.push('\n');
        let mut t = Table::new(&["GUARDRAIL", "STATUS", "OBSERVED", "THRESHOLD", "MESSAGE"]);
        for g in &a.guardrails {
            t.row(vec![
                g.guardrail.clone(),
                serde_plain(&g.status),
                num(g.observed, 2),
                num(g.threshold, 2),
                g.message.clone(),
            ]);
        }
        out.push_str(&t.render());
    }
    if !a.effects.is_empty() {
        out.push('\n');
        let mut t = Table::new(&[
            "EFFECT",
            "UNIT",
            "BASELINE",
            "CANDIDATE",
            "DIFFERENCE",
            "CI",
        ]);
        for e in &a.effects {
            t.row(vec![
                e.name.clone(),
                e.unit.clone(),
                format!("{:.2}", e.baseline_mean),
                format!("{:.2}", e.candidate_mean),
                format!("{:.2}", e.difference),
                format!(
                    "[{:.2}, {:.2}] at {:.0} %",
                    e.ci_low,
                    e.ci_high,
                    e.confidence * 100.0
                ),
            ]);
        }
        out.push_str(&t.render());
    }
    out
}

fn cost_text(a: &CostAnalysis) -> String {
    let mut out = fields(&[
        ("experiment", a.experiment_id.to_string()),
        ("intervals", a.intervals.to_string()),
        (
            "before",
            format!(
                "{:.0} series, {:.0} samples/s, {:.0} bytes/s",
                a.before.active_series, a.before.samples_per_second, a.before.bytes_per_second
            ),
        ),
        (
            "after",
            format!(
                "{:.0} series, {:.0} samples/s, {:.0} bytes/s",
                a.after.active_series, a.after.samples_per_second, a.after.bytes_per_second
            ),
        ),
    ]);
    out.push('\n');
    let mut t = Table::new(&[
        "",
        "PRESET",
        "BEFORE/MONTH",
        "AFTER/MONTH",
        "SAVED/MONTH",
        "SAVED/YEAR",
        "SAVED %",
    ]);
    for p in &a.presets {
        let money = |v: f64| format!("{v:.2} {}", p.currency);
        t.row(vec![
            if p.preset == a.selected.preset {
                "*".into()
            } else {
                String::new()
            },
            p.preset.clone(),
            money(p.before.monthly),
            money(p.after.monthly),
            money(p.savings_monthly),
            money(p.savings_yearly),
            format!("{:.1}", p.savings_percent),
        ]);
    }
    out.push_str(&t.render());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> CreateArgs {
        CreateArgs {
            file: None,
            name: Some("n".into()),
            description: None,
            baseline: Some("baseline".into()),
            candidate: Some("adaptive".into()),
            hosts: vec!["a".into(), "b".into()],
            selector: vec!["env=prod".into()],
            duration: Some(Duration::from_secs(3600)),
            mode: Some("shadow".into()),
            candidate_share: None,
            owner: None,
            start: false,
        }
    }

    #[test]
    fn flags_build_the_api_body() {
        let v = build_spec(&args()).expect("spec");
        assert_eq!(v["name"], "n");
        assert_eq!(v["target_hosts"], json!(["a", "b"]));
        assert_eq!(v["target_selector"], json!({"env": "prod"}));
        assert_eq!(v["duration_seconds"], 3600);
        assert_eq!(v["mode"], "shadow");
        assert!(v.get("owner").is_none());
    }

    #[test]
    fn a_selector_without_equals_is_a_usage_error() {
        let mut a = args();
        a.selector = vec!["env".into()];
        let e = build_spec(&a).expect_err("bad selector");
        assert_eq!(e.exit_code, crate::error::EXIT_USAGE);
    }

    #[test]
    fn missing_required_flags_are_named() {
        let mut a = args();
        a.name = None;
        a.candidate = None;
        let e = build_spec(&a).expect_err("missing");
        assert!(e.message.contains("--name, --candidate"), "{}", e.message);
    }

    #[test]
    fn watch_fails_only_for_bad_endings() {
        assert_eq!(watch_exit(ExperimentPhase::Completed), 0);
        assert_eq!(watch_exit(ExperimentPhase::Stopped), 4);
        assert_eq!(watch_exit(ExperimentPhase::RolledBack), 4);
        assert_eq!(watch_exit(ExperimentPhase::Failed), 4);
    }
}
