//! The run's report: a serialisable struct (`--json-out`) and its text rendering, with the
//! issue's goals checked (heartbeat p99 < 50 ms, enqueue→delivery p99 < 50 ms, API RSS <
//! 500 MB).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::stats::LatencySummary;

pub const GOAL_HEARTBEAT_P99_MS: f64 = 50.0;
pub const GOAL_DELIVERY_P99_MS: f64 = 50.0;
pub const GOAL_API_RSS_MB: f64 = 500.0;

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub api: String,
    pub agents: usize,
    pub enrolled: usize,
    pub enroll_failed: usize,
    pub enroll_latency: LatencySummary,
    /// Time from start until measuring began (enrollment, first long-polls).
    pub warmup_s: f64,
    pub measured_s: f64,
    pub long_polls: LongPolls,
    pub heartbeats: Heartbeats,
    pub tasks: Tasks,
    /// How late scheduled heartbeats and enqueues left this tool (waiting for an in-flight
    /// slot or a busy runtime): included in their latencies.
    pub send_lag: LatencySummary,
    pub max_in_flight: usize,
    /// Errors of the whole run (warmup and drain included), by `endpoint: kind`.
    pub errors: BTreeMap<String, ErrorEntry>,
    pub api_process: Option<ProcessUsage>,
    pub load_tool: Option<ProcessUsage>,
    pub machine_cores: usize,
    /// All cores, whole machine, over the measurement window.
    pub machine_cpu_busy_percent: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LongPolls {
    /// Long-polls this tool had open (request sent, no answer yet).
    pub open_at_start: i64,
    pub open_min_during: i64,
    pub open_at_end: i64,
    /// The API's `phoenix_long_polls_waiting` gauge.
    pub server_waiting_at_start: Option<u64>,
    pub server_waiting_at_end: Option<u64>,
    /// Whole run.
    pub answered: u64,
    pub failed: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Heartbeats {
    pub target_per_second: f64,
    pub sent: u64,
    pub ok: u64,
    pub failed: u64,
    pub achieved_per_second: f64,
    /// Response received − scheduled send time.
    pub latency: LatencySummary,
    /// Response received − actual send time.
    pub http_latency: LatencySummary,
}

#[derive(Debug, Clone, Serialize)]
pub struct Tasks {
    pub target_enqueue_per_second: f64,
    pub scheduled: u64,
    pub enqueued: u64,
    pub enqueue_failed: u64,
    pub enqueue_skipped_unenrolled: u64,
    pub enqueued_per_second: f64,
    /// First deliveries of this run's tasks (drain included).
    pub delivered: u64,
    /// Deliveries after a lapsed lease.
    pub redelivered: u64,
    /// Tasks of other runs handed to these agents (completed, not counted).
    pub foreign: u64,
    pub completed: u64,
    pub completed_in_window: u64,
    pub completed_per_second: f64,
    pub status_reports_failed: u64,
    /// Long-poll answer received − the enqueue's scheduled send time.
    pub delivery_latency: LatencySummary,
    /// Long-poll answer received − the enqueue request's actual send time.
    pub delivery_latency_from_send: LatencySummary,
    pub enqueue_http_latency: LatencySummary,
    pub status_http_latency: LatencySummary,
}

#[derive(Debug, Clone, Serialize)]
pub struct ErrorEntry {
    pub count: u64,
    /// The first error of this kind: the API's answer, or the transport error.
    pub sample: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProcessUsage {
    pub pid: String,
    /// Over the measurement window; 100 = one core busy.
    pub cpu_percent_of_one_core: f64,
    pub rss_mib_at_start: f64,
    pub rss_mib_at_end: f64,
    pub rss_mib_max_sampled: f64,
    /// `VmHWM`: the process's peak RSS since it started.
    pub peak_rss_mib: f64,
}

/// Pass/fail against one goal.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GoalCheck {
    pub goal: String,
    pub measured: Option<f64>,
    pub met: Option<bool>,
}

impl Report {
    pub fn goals(&self) -> Vec<GoalCheck> {
        let check = |goal: String, measured: Option<f64>, limit: f64| GoalCheck {
            goal,
            measured,
            met: measured.map(|m| m < limit),
        };
        let p99 = |s: &LatencySummary| (s.count > 0).then_some(s.p99_ms);
        // MB as the issue states it: MiB of RSS × 1.048576.
        let rss_mb = self
            .api_process
            .as_ref()
            .map(|p| p.peak_rss_mib * 1.048_576);
        vec![
            check(
                format!("heartbeat p99 < {GOAL_HEARTBEAT_P99_MS} ms"),
                p99(&self.heartbeats.latency),
                GOAL_HEARTBEAT_P99_MS,
            ),
            check(
                format!("enqueue->delivery p99 < {GOAL_DELIVERY_P99_MS} ms"),
                p99(&self.tasks.delivery_latency),
                GOAL_DELIVERY_P99_MS,
            ),
            check(
                format!("API peak RSS < {GOAL_API_RSS_MB} MB"),
                rss_mb,
                GOAL_API_RSS_MB,
            ),
        ]
    }

    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let w = &mut out;
        let h = &self.heartbeats;
        let t = &self.tasks;
        let lp = &self.long_polls;
        let opt = |v: Option<u64>| v.map_or("n/a".to_string(), |v| v.to_string());
        let _ = writeln!(w, "phoenix-load report — {}", self.api);
        let _ = writeln!(
            w,
            "agents             {} (enrolled {}, failed {}); warmup {:.1} s, measured {:.1} s",
            self.agents, self.enrolled, self.enroll_failed, self.warmup_s, self.measured_s
        );
        let _ = writeln!(w, "enroll latency     {}", self.enroll_latency.line());
        let _ = writeln!(
            w,
            "long-polls open    start {}  min {}  end {}  (API gauge: start {}, end {}); answered {}, failed {}",
            lp.open_at_start,
            lp.open_min_during,
            lp.open_at_end,
            opt(lp.server_waiting_at_start),
            opt(lp.server_waiting_at_end),
            lp.answered,
            lp.failed
        );
        let _ = writeln!(
            w,
            "heartbeats         sent {}  ok {}  errors {}  ({:.1}/s, target {:.1}/s)",
            h.sent, h.ok, h.failed, h.achieved_per_second, h.target_per_second
        );
        let _ = writeln!(w, "heartbeat latency  {}", h.latency.line());
        let _ = writeln!(w, "  (HTTP only)      {}", h.http_latency.line());
        let _ = writeln!(
            w,
            "tasks              scheduled {}  enqueued {} ({:.1}/s, target {:.1}/s)  enqueue errors {}  skipped {}",
            t.scheduled,
            t.enqueued,
            t.enqueued_per_second,
            t.target_enqueue_per_second,
            t.enqueue_failed,
            t.enqueue_skipped_unenrolled
        );
        let _ = writeln!(
            w,
            "                   delivered {}  redelivered {}  completed {} (in window {}, {:.1}/s)  status errors {}  foreign {}",
            t.delivered,
            t.redelivered,
            t.completed,
            t.completed_in_window,
            t.completed_per_second,
            t.status_reports_failed,
            t.foreign
        );
        let _ = writeln!(w, "enqueue->delivery  {}", t.delivery_latency.line());
        let _ = writeln!(
            w,
            "  (from send)      {}",
            t.delivery_latency_from_send.line()
        );
        let _ = writeln!(w, "enqueue HTTP       {}", t.enqueue_http_latency.line());
        let _ = writeln!(w, "status HTTP        {}", t.status_http_latency.line());
        let _ = writeln!(
            w,
            "send lag (tool)    {}  [in-flight cap {}]",
            self.send_lag.line(),
            self.max_in_flight
        );
        for (label, p) in [
            ("API process", &self.api_process),
            ("load tool", &self.load_tool),
        ] {
            match p {
                Some(p) => {
                    let _ = writeln!(
                        w,
                        "{label:<18} pid {}: CPU {:.1}% of one core; RSS {:.1} MiB at start, {:.1} MiB at end, {:.1} MiB max sampled, {:.1} MiB peak (VmHWM)",
                        p.pid,
                        p.cpu_percent_of_one_core,
                        p.rss_mib_at_start,
                        p.rss_mib_at_end,
                        p.rss_mib_max_sampled,
                        p.peak_rss_mib
                    );
                }
                None => {
                    let _ = writeln!(w, "{label:<18} not measured (give --api-pid)");
                }
            }
        }
        if let Some(busy) = self.machine_cpu_busy_percent {
            let _ = writeln!(
                w,
                "machine            {} cores, {busy:.1}% busy while measuring",
                self.machine_cores
            );
        }
        if self.errors.is_empty() {
            let _ = writeln!(w, "errors             none");
        } else {
            let _ = writeln!(w, "errors (whole run, by endpoint: kind):");
            for (kind, e) in &self.errors {
                let _ = writeln!(
                    w,
                    "  {kind:<28} {:>8}  e.g. {}",
                    e.count,
                    e.sample.replace('\n', " ")
                );
            }
        }
        let _ = writeln!(w, "goals:");
        for g in self.goals() {
            let verdict = match g.met {
                Some(true) => "PASS",
                Some(false) => "FAIL",
                None => "n/a ",
            };
            let measured = g
                .measured
                .map_or("not measured".to_string(), |m| format!("{m:.1}"));
            let _ = writeln!(w, "  {verdict}  {} (measured {measured})", g.goal);
        }
        out
    }
}
