//! KPI batches: what an agent sends the API once per interval per variant. The full metric
//! stream never reaches Phoenix's database; these summaries do.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::experiment::FieldErrors;
use crate::ids::ExperimentId;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Variant {
    Baseline,
    Candidate,
}

impl Variant {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Baseline => "baseline",
            Self::Candidate => "candidate",
        }
    }
}

impl std::str::FromStr for Variant {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "baseline" => Ok(Self::Baseline),
            "candidate" => Ok(Self::Candidate),
            other => Err(format!("unknown variant `{other}`")),
        }
    }
}

/// The numbers one variant produced over one interval on one host.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct KpiValues {
    pub input_series: u64,
    pub output_series: u64,
    #[serde(default)]
    pub input_samples: u64,
    #[serde(default)]
    pub output_samples: u64,
    #[serde(default)]
    pub input_bytes: u64,
    #[serde(default)]
    pub output_bytes: u64,
    #[serde(default)]
    pub protected_series_in: u64,
    #[serde(default)]
    pub protected_series_out: u64,
    #[serde(default)]
    pub anomalies_in: u64,
    #[serde(default)]
    pub anomalies_kept: u64,
    /// Mean processing cost, nanoseconds per input sample.
    #[serde(default)]
    pub ns_per_sample: f64,
    /// Largest per-metric relative error of totals against the baseline (0.01 = 1 %).
    #[serde(default)]
    pub max_total_error: f64,
}

impl KpiValues {
    /// Active-series reduction in percent; 0 when there was no input.
    pub fn reduction_percent(&self) -> f64 {
        if self.input_series == 0 {
            return 0.0;
        }
        (1.0 - self.output_series as f64 / self.input_series as f64) * 100.0
    }
}

/// One batch, identified by an id the agent chooses so a replay is recognised.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct KpiBatch {
    pub batch_id: Uuid,
    #[serde(default)]
    pub experiment_id: Option<ExperimentId>,
    pub variant: Variant,
    pub interval_start: DateTime<Utc>,
    pub interval_end: DateTime<Utc>,
    pub values: KpiValues,
    /// Anything more detailed (per-metric errors, per-processor counts), kept as sent.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
    /// Label statistics of the interval's input (only the baseline batch of an interval
    /// carries them, and only every few intervals); see [`crate::labelstats`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_stats: Option<Box<crate::labelstats::LabelStatsReport>>,
}

impl KpiBatch {
    pub fn validate(&self, path: &str, e: &mut FieldErrors) {
        if self.interval_end < self.interval_start {
            e.push(
                format!("{path}.interval_end"),
                "must not be before interval_start",
            );
        }
        let v = &self.values;
        if v.output_series
            > v.input_series
                .saturating_mul(2)
                .max(v.input_series + 1_000_000)
        {
            e.push(
                format!("{path}.values.output_series"),
                "is implausibly larger than input_series",
            );
        }
        for (name, x) in [
            ("ns_per_sample", v.ns_per_sample),
            ("max_total_error", v.max_total_error),
        ] {
            if !x.is_finite() || x < 0.0 {
                e.push(
                    format!("{path}.values.{name}"),
                    "must be a finite number >= 0",
                );
            }
        }
        if let Some(stats) = &self.label_stats {
            stats.validate(&format!("{path}.label_stats"), e);
        }
        if v.protected_series_out > v.protected_series_in {
            e.push(
                format!("{path}.values.protected_series_out"),
                "must not exceed protected_series_in",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reduction_is_relative_to_input() {
        let v = KpiValues {
            input_series: 1000,
            output_series: 130,
            ..Default::default()
        };
        assert!((v.reduction_percent() - 87.0).abs() < 1e-9);
        assert_eq!(KpiValues::default().reduction_percent(), 0.0);
    }
}
