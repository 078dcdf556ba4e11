//! Experiments that decide: the scheduler that analyses running experiments (one runner per
//! experiment per interval, through the store, whatever the number of replicas), ends them
//! with a decision, and rolls them back when a guardrail breaks; KPI series, results and
//! cost for the API.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use phoenix_core::analysis::{self, AnalysisResult, Decision, KpiPoint, KpiRow};
use phoenix_core::cost::{self, CostComparison, PricingPreset, Usage};
use phoenix_core::{
    Experiment, ExperimentCommand, ExperimentId, ExperimentPhase, FieldErrors, HostId, NewTask,
    TaskStatus, TaskType,
};
use phoenix_store::{ExperimentQuery, StoredKpiBatch, TaskQuery, FINAL_ANALYSIS_SEQ};

use phoenix_store::StoreError;

use crate::service::{priority, Service, ServiceError, ServiceResult};

/// Most KPI batches one analysis reads (the most recent ones). At 10 s KPI intervals this
/// is an hour of 300 hosts × 2 variants; longer or wider runs are judged on their latest
/// part (see `docs/analysis.md`).
pub const MAX_ANALYSIS_ROWS: u32 = 250_000;
/// A claimed analysis not finished after this long is taken over by another replica.
const STALE_CLAIM_SECONDS: i64 = 300;
const COST_PRESETS_SETTING: &str = "cost_presets";
/// A final decision stored this long ago while its experiment is still `analyzing` is
/// applied again (the phase change after it was lost).
const RETRY_DECISION_AFTER_SECONDS: i64 = 60;

/// `GET /api/v1/experiments/{id}/kpis`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct KpiReport {
    pub experiment_id: ExperimentId,
    pub interval_seconds: u64,
    /// Per variant, per interval, summed across hosts.
    pub baseline: Vec<KpiPoint>,
    pub candidate: Vec<KpiPoint>,
    pub summary: KpiSummary,
}

/// Over the intervals both variants reported in; output series are per-host means summed
/// across hosts.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct KpiSummary {
    pub intervals: usize,
    pub hosts: usize,
    pub batches: usize,
    pub baseline_output_series: Option<f64>,
    pub candidate_output_series: Option<f64>,
    pub input_series: Option<f64>,
    pub reduction_percent: Option<f64>,
    pub protected_coverage_percent: Option<f64>,
    pub anomaly_recall_percent: Option<f64>,
    pub max_total_error_percent: Option<f64>,
}

/// `GET /api/v1/experiments/{id}/results` (and `/analysis`).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ResultsResponse {
    pub experiment_id: ExperimentId,
    pub phase: ExperimentPhase,
    pub promoted: Option<bool>,
    /// `stored`: the scheduler's latest analysis; `live`: computed for this request because
    /// none is stored yet.
    pub source: String,
    /// When the analysis ran, and which API replica ran it.
    pub analysed_at: Option<DateTime<Utc>>,
    pub runner: Option<String>,
    /// Analyses stored so far (interim ones and the final one).
    pub analyses: usize,
    pub result: AnalysisResult,
}

/// `GET /api/v1/experiments/{id}/cost-analysis`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CostAnalysis {
    pub experiment_id: ExperimentId,
    /// What the baseline and the candidate send on the experiment's targets (means over the
    /// intervals both reported in).
    pub before: Usage,
    pub after: Usage,
    /// The preset asked for (`?preset=`, else the first one).
    pub selected: CostComparison,
    /// Every preset, for comparison.
    pub presets: Vec<CostComparison>,
    pub intervals: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CostPresets {
    pub presets: Vec<PricingPreset>,
}

fn to_rows(batches: &[StoredKpiBatch]) -> Vec<KpiRow> {
    batches
        .iter()
        .map(|b| KpiRow {
            host_id: b.host_id.clone(),
            variant: b.batch.variant,
            interval_start: b.batch.interval_start,
            interval_end: b.batch.interval_end,
            values: b.batch.values.clone(),
            worst_metric: b
                .batch
                .details
                .pointer("/worst_metric/metric")
                .and_then(|m| m.as_str())
                .map(str::to_string),
        })
        .collect()
}

fn mean(v: impl Iterator<Item = f64>) -> Option<f64> {
    let (mut n, mut s) = (0usize, 0.0);
    for x in v {
        n += 1;
        s += x;
    }
    (n > 0).then(|| s / n as f64)
}

/// What one variant sends across the fleet: per host, the mean active series over its
/// batches and its samples and bytes per second over the time its batches cover; summed
/// across hosts. (Summing per interval instead undercounts whenever a host's batch falls
/// into the neighbouring interval.)
fn fleet_usage(rows: &[KpiRow], variant: phoenix_core::Variant) -> Usage {
    #[derive(Default)]
    struct Host {
        n: u64,
        series: u64,
        samples: u64,
        bytes: u64,
        seconds: f64,
    }
    let mut hosts: std::collections::BTreeMap<&phoenix_core::HostId, Host> = Default::default();
    for r in rows.iter().filter(|r| r.variant == variant) {
        let h = hosts.entry(&r.host_id).or_default();
        h.n += 1;
        h.series += r.values.output_series;
        h.samples += r.values.output_samples;
        h.bytes += r.values.output_bytes;
        h.seconds += (r.interval_end - r.interval_start)
            .num_milliseconds()
            .max(0) as f64
            / 1000.0;
    }
    let mut u = Usage::default();
    for h in hosts.values() {
        u.active_series += h.series as f64 / h.n.max(1) as f64;
        if h.seconds > 0.0 {
            u.samples_per_second += h.samples as f64 / h.seconds;
            u.bytes_per_second += h.bytes as f64 / h.seconds;
        }
    }
    u
}

impl Service {
    /// The experiment's KPI rows, less those of targets excluded from the run.
    async fn experiment_rows(&self, id: ExperimentId) -> ServiceResult<Vec<KpiRow>> {
        let exp = self.store.get_experiment(id).await?;
        let mut rows = to_rows(&self.store.experiment_kpis(id, MAX_ANALYSIS_ROWS).await?);
        if !exp.excluded_targets.is_empty() {
            rows.retain(|r| !exp.is_excluded(&r.host_id));
        }
        Ok(rows)
    }

    pub async fn experiment_kpis(&self, id: ExperimentId) -> ServiceResult<KpiReport> {
        let exp = self.store.get_experiment(id).await?;
        let rows = self.experiment_rows(id).await?;
        let series = analysis::bucket(&rows, exp.analysis.interval_seconds);
        let pairs = analysis::paired(&series);
        let hosts = rows
            .iter()
            .map(|r| &r.host_id)
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        let cand: Vec<&KpiRow> = rows
            .iter()
            .filter(|r| r.variant == phoenix_core::Variant::Candidate)
            .collect();
        let (p_in, p_out, a_in, a_kept) = cand.iter().fold((0u64, 0u64, 0u64, 0u64), |acc, r| {
            let v = &r.values;
            (
                acc.0 + v.protected_series_in,
                acc.1 + v.protected_series_out.min(v.protected_series_in),
                acc.2 + v.anomalies_in,
                acc.3 + v.anomalies_kept.min(v.anomalies_in),
            )
        });
        let summary = KpiSummary {
            intervals: pairs.len(),
            hosts,
            batches: rows.len(),
            baseline_output_series: (!pairs.is_empty())
                .then(|| fleet_usage(&rows, phoenix_core::Variant::Baseline).active_series),
            candidate_output_series: (!pairs.is_empty())
                .then(|| fleet_usage(&rows, phoenix_core::Variant::Candidate).active_series),
            input_series: mean(pairs.iter().map(|(_, c)| c.input_series)),
            reduction_percent: mean(pairs.iter().map(|(_, c)| c.reduction_percent)),
            protected_coverage_percent: (p_in > 0).then(|| p_out as f64 / p_in as f64 * 100.0),
            anomaly_recall_percent: (a_in > 0).then(|| a_kept as f64 / a_in as f64 * 100.0),
            max_total_error_percent: cand
                .iter()
                .map(|r| r.values.max_total_error * 100.0)
                .reduce(f64::max),
        };
        Ok(KpiReport {
            experiment_id: id,
            interval_seconds: series.interval_seconds,
            baseline: series.baseline,
            candidate: series.candidate,
            summary,
        })
    }

    pub async fn experiment_results(&self, id: ExperimentId) -> ServiceResult<ResultsResponse> {
        let exp = self.store.get_experiment(id).await?;
        let analyses = self.store.list_analyses(id, 500).await?;
        let stored = analyses.iter().find_map(|a| {
            let r = a.result.as_ref()?;
            let parsed: AnalysisResult = serde_json::from_value(r.clone()).ok()?;
            Some((a, parsed))
        });
        let finished = analyses.iter().filter(|a| a.finished_at.is_some()).count();
        Ok(match stored {
            Some((a, result)) => ResultsResponse {
                experiment_id: id,
                phase: exp.phase,
                promoted: exp.promoted,
                source: "stored".into(),
                analysed_at: a.finished_at,
                runner: Some(a.runner.clone()),
                analyses: finished,
                result,
            },
            None => {
                let rows = self.experiment_rows(id).await?;
                let extra = vec![self.used_labels_guardrail(&exp).await?];
                ResultsResponse {
                    experiment_id: id,
                    phase: exp.phase,
                    promoted: exp.promoted,
                    source: "live".into(),
                    analysed_at: Some(self.clock.now()),
                    runner: None,
                    analyses: finished,
                    result: analysis::analyze(&exp.analysis, &rows, false, extra),
                }
            }
        })
    }

    // ---- cost ----

    pub async fn cost_presets(&self) -> ServiceResult<Vec<PricingPreset>> {
        match self.store.get_setting(COST_PRESETS_SETTING).await? {
            Some(v) => match serde_json::from_value::<Vec<PricingPreset>>(v) {
                Ok(p) if !p.is_empty() => Ok(p),
                _ => Ok(cost::default_presets()),
            },
            None => Ok(cost::default_presets()),
        }
    }

    pub async fn put_cost_presets(
        &self,
        presets: Vec<PricingPreset>,
    ) -> ServiceResult<Vec<PricingPreset>> {
        cost::validate_presets(&presets)?;
        let value = serde_json::to_value(&presets)
            .map_err(|e| StoreError::Corrupt(format!("cannot serialise cost presets: {e}")))?;
        self.store
            .put_setting(COST_PRESETS_SETTING, &value, self.clock.now())
            .await?;
        Ok(presets)
    }

    pub async fn cost_analysis(
        &self,
        id: ExperimentId,
        preset: Option<&str>,
    ) -> ServiceResult<CostAnalysis> {
        let exp = self.store.get_experiment(id).await?;
        let presets = self.cost_presets().await?;
        let selected = match preset {
            Some(name) => presets.iter().find(|p| p.name == name).ok_or_else(|| {
                let mut e = FieldErrors::default();
                e.push(
                    "preset",
                    format!(
                        "unknown preset `{}`; known: {}",
                        name.chars().take(64).collect::<String>(),
                        presets
                            .iter()
                            .map(|p| p.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
                ServiceError::from(e)
            })?,
            None => &presets[0],
        };
        let rows = self.experiment_rows(id).await?;
        let series = analysis::bucket(&rows, exp.analysis.interval_seconds);
        let pairs = analysis::paired(&series);
        let before = fleet_usage(&rows, phoenix_core::Variant::Baseline);
        let after = fleet_usage(&rows, phoenix_core::Variant::Candidate);
        Ok(CostAnalysis {
            experiment_id: id,
            before,
            after,
            selected: cost::compare(selected, &before, &after),
            presets: presets
                .iter()
                .map(|p| cost::compare(p, &before, &after))
                .collect(),
            intervals: pairs.len(),
        })
    }

    // ---- the scheduler ----

    /// One pass over the experiments that need looking at. Safe to run on every replica at
    /// once: analyses are claimed through the store, phase changes are compare-and-set.
    pub async fn analysis_tick(&self, runner: &str) -> ServiceResult<()> {
        for phase in [
            ExperimentPhase::Initializing,
            ExperimentPhase::Running,
            ExperimentPhase::Analyzing,
        ] {
            let mut offset = 0;
            loop {
                let page = self
                    .store
                    .list_experiments(&ExperimentQuery {
                        phase: Some(phase),
                        limit: 500,
                        offset,
                    })
                    .await?;
                let n = page.items.len();
                for exp in page.items {
                    if let Err(e) = self.look_at(&exp, runner).await {
                        tracing::warn!(experiment_id = %exp.id, error = %e, "analysis step failed; retried next tick");
                    }
                }
                if n < 500 {
                    break;
                }
                offset += n as u64;
            }
        }
        Ok(())
    }

    async fn look_at(&self, exp: &Experiment, runner: &str) -> ServiceResult<()> {
        let now = self.clock.now();
        let Some(started) = exp.started_at else {
            return Ok(());
        };
        let elapsed = (now - started).num_seconds().max(0) as u64;
        match exp.phase {
            ExperimentPhase::Initializing
                if elapsed >= self.timings.experiment_start_timeout.as_secs() =>
            {
                self.fail_unstarted(exp).await?;
            }
            ExperimentPhase::Running => {
                if elapsed >= exp.duration_seconds {
                    self.ignore_conflict(
                        self.transition(exp.id, ExperimentCommand::BeginAnalysis, &[])
                            .await,
                    )?;
                    let exp = self.store.get_experiment(exp.id).await?;
                    if exp.phase == ExperimentPhase::Analyzing {
                        self.finish(&exp, runner).await?;
                    }
                    return Ok(());
                }
                let seq = (elapsed / exp.analysis.interval_seconds.max(1)) as i64;
                let attempted = self.analysis_attempted.get(&exp.id).map(|s| *s);
                if attempted == Some(seq) {
                    return Ok(());
                }
                if self.claim(exp.id, seq, false, runner).await? {
                    self.interim(exp, seq).await?;
                }
                self.analysis_attempted.insert(exp.id, seq);
            }
            ExperimentPhase::Analyzing => self.finish(exp, runner).await?,
            _ => {}
        }
        Ok(())
    }

    async fn claim(
        &self,
        id: ExperimentId,
        seq: i64,
        is_final: bool,
        runner: &str,
    ) -> ServiceResult<bool> {
        let now = self.clock.now();
        Ok(self
            .store
            .claim_analysis(
                id,
                seq,
                is_final,
                runner,
                now,
                now - chrono::Duration::seconds(STALE_CLAIM_SECONDS),
            )
            .await?)
    }

    fn ignore_conflict<T>(&self, r: ServiceResult<T>) -> ServiceResult<Option<T>> {
        match r {
            Ok(v) => Ok(Some(v)),
            // Another replica (or a user) moved it first.
            Err(ServiceError::Store(StoreError::Transition(_))) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn interim(&self, exp: &Experiment, seq: i64) -> ServiceResult<()> {
        let rows = self.experiment_rows(exp.id).await?;
        let extra = vec![self.used_labels_guardrail(exp).await?];
        let result = analysis::analyze(&exp.analysis, &rows, false, extra);
        self.store_result(exp.id, seq, &result).await?;
        if let (Some(b), true) = (&result.breach, exp.analysis.auto_rollback) {
            let reason = format!(
                "automatic rollback: guardrail {} breached{}{}: {}",
                b.guardrail,
                b.metric
                    .as_ref()
                    .map(|m| format!(" on metric `{m}`"))
                    .unwrap_or_default(),
                b.host_id
                    .as_ref()
                    .map(|h| format!(" on host {h}"))
                    .unwrap_or_default(),
                b.message
            );
            tracing::warn!(experiment_id = %exp.id, %reason, "rolling back");
            self.ignore_conflict(self.rollback_experiment(exp.id, Some(reason)).await)?;
        }
        Ok(())
    }

    async fn finish(&self, exp: &Experiment, runner: &str) -> ServiceResult<()> {
        self.analysis_attempted.remove(&exp.id);
        let result = if self.claim(exp.id, FINAL_ANALYSIS_SEQ, true, runner).await? {
            let rows = self.experiment_rows(exp.id).await?;
            let extra = vec![self.used_labels_guardrail(exp).await?];
            let result = analysis::analyze(&exp.analysis, &rows, true, extra);
            self.store_result(exp.id, FINAL_ANALYSIS_SEQ, &result)
                .await?;
            result
        } else {
            // Another replica has it, or had it: when its decision was stored a while ago
            // and the experiment is still analyzing, the phase change after it failed (the
            // database went away in between). Apply the stored decision again; the phase
            // change is compare-and-set, so at most one replica's lands.
            let analyses = self.store.list_analyses(exp.id, 1).await?;
            let stored = analyses.first().filter(|a| {
                a.is_final
                    && a.finished_at.is_some_and(|t| {
                        (self.clock.now() - t).num_seconds() > RETRY_DECISION_AFTER_SECONDS
                    })
            });
            match stored
                .and_then(|a| a.result.clone())
                .and_then(|r| serde_json::from_value::<AnalysisResult>(r).ok())
            {
                Some(result) => result,
                None => return Ok(()),
            }
        };
        let promoted = result.decision == Decision::Promote;
        let mut reason = format!("decision {}", result.decision.as_str());
        if let Some(first) = result.reasons.first() {
            reason.push_str(": ");
            reason.push_str(first);
        }
        // Promote: the candidate becomes the live pipeline on every target. Otherwise the
        // targets go back to the baseline (rollback) or simply end the run (inconclusive).
        let action = match result.decision {
            Decision::Promote => "promote",
            Decision::Rollback => "rollback",
            Decision::Inconclusive => "stop",
        };
        // Targets excluded from the run got their `stop` when they left; a promotion only
        // reaches the hosts that ran the candidate.
        let tasks: Vec<NewTask> = exp
            .active_targets()
            .map(|host| {
                let mut t = NewTask::new(
                    TaskType::Experiment,
                    json!({ "action": action, "experiment_id": exp.id }),
                )
                .for_host(host.clone());
                t.experiment_id = Some(exp.id);
                t.priority = if promoted {
                    priority::START
                } else {
                    priority::ROLLBACK
                };
                t.idempotency_key = Some(format!("experiment:{}:{action}:{host}", exp.id));
                t
            })
            .collect();
        tracing::info!(experiment_id = %exp.id, decision = result.decision.as_str(), "experiment decided");
        let outcome = self.ignore_conflict(
            self.transition(
                exp.id,
                ExperimentCommand::Complete { promoted, reason },
                &tasks,
            )
            .await,
        )?;
        if let (true, Some(outcome)) = (promoted, outcome) {
            // The promotion is a deployment like any other: listed, followed per host.
            let now = self.clock.now();
            let d = phoenix_core::PipelineDeployment {
                id: phoenix_core::DeploymentId::new(),
                name: format!("promoted by experiment {} ({})", exp.id, exp.name),
                pipeline: exp.candidate_pipeline.clone(),
                parameters: exp.parameters.clone(),
                target_hosts: exp.active_targets().cloned().collect(),
                target_selector: Default::default(),
                status: phoenix_core::DeploymentStatus::Active,
                tasks: outcome
                    .tasks
                    .iter()
                    .filter_map(|t| t.host_id.clone().map(|h| (h, t.id)))
                    .collect(),
                withdraw_tasks: Default::default(),
                created_at: now,
                updated_at: now,
            };
            self.store.save_pipeline_deployment(&d).await?;
        }
        Ok(())
    }

    async fn store_result(
        &self,
        id: ExperimentId,
        seq: i64,
        result: &AnalysisResult,
    ) -> ServiceResult<()> {
        self.analyses_run
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let value = serde_json::to_value(result)
            .map_err(|e| StoreError::Corrupt(format!("cannot serialise an analysis: {e}")))?;
        self.store
            .finish_analysis(id, seq, result.decision.as_str(), &value, self.clock.now())
            .await?;
        self.events
            .analysis(id, seq, seq == FINAL_ANALYSIS_SEQ, &value)
            .await;
        Ok(())
    }

    /// The start timed out: fail, naming the hosts whose start task has not run; or, under
    /// `on_target_failure: exclude`, drop those hosts and go on with the others.
    async fn fail_unstarted(&self, exp: &Experiment) -> ServiceResult<()> {
        let tasks = self
            .store
            .list_tasks(&TaskQuery {
                experiment_id: Some(exp.id),
                limit: 500,
                ..Default::default()
            })
            .await?;
        let mut waiting: Vec<String> = tasks
            .items
            .iter()
            .filter(|t| {
                t.task_type == TaskType::Experiment
                    && t.payload.get("action").and_then(|a| a.as_str()) == Some("start")
                    && !matches!(t.status, TaskStatus::Running | TaskStatus::Completed)
                    && t.host_id.as_ref().is_some_and(|h| !exp.is_excluded(h))
            })
            .filter_map(|t| t.host_id.as_ref().map(|h| format!("{h} ({})", t.status)))
            .collect();
        if exp.analysis.on_target_failure == phoenix_core::TargetFailurePolicy::Exclude {
            let late: Vec<(HostId, String)> = tasks
                .items
                .iter()
                .filter(|t| {
                    t.task_type == TaskType::Experiment
                        && t.payload.get("action").and_then(|a| a.as_str()) == Some("start")
                        && !matches!(t.status, TaskStatus::Running | TaskStatus::Completed)
                })
                .filter_map(|t| {
                    let h = t.host_id.clone()?;
                    (!exp.is_excluded(&h)).then(|| {
                        (
                            h,
                            format!(
                                "did not start within {} s (start task {})",
                                self.timings.experiment_start_timeout.as_secs(),
                                t.status
                            ),
                        )
                    })
                })
                .collect();
            if !late.is_empty() {
                self.ignore_conflict(self.exclude_targets(exp, late).await)?;
            }
            self.ignore_conflict(self.settle_targets(exp.id).await)?;
            return Ok(());
        }
        waiting.sort();
        let shown = waiting
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        let more = waiting.len().saturating_sub(20);
        let reason = format!(
            "targets did not start within {} s: {shown}{}",
            self.timings.experiment_start_timeout.as_secs(),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        );
        self.ignore_conflict(self.fail_run(exp.id, reason).await)?;
        Ok(())
    }
}
