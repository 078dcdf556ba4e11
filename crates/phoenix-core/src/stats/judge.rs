//! A Kayenta-style judge for one metric: IQR outlier removal, then Mann–Whitney and the
//! Hodges–Lehmann interval, classified High / Low / Pass.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::hodges_lehmann::hodges_lehmann;
use super::mann_whitney::{mann_whitney_u, MannWhitneyOptions};
use super::{check_confidence, check_sample, StatsError};

/// Which changes count (Kayenta's `MetricDirection`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Both an increase and a decrease are reported.
    #[default]
    Either,
    /// Only an increase is reported (`High`); a decrease passes.
    Increase,
    /// Only a decrease is reported (`Low`); an increase passes.
    Decrease,
}

/// The judge's verdict on one metric: the candidate is significantly higher or lower than
/// the baseline, or not distinguishable from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Classification {
    High,
    Low,
    Pass,
}

/// Settings of [`judge_metric`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JudgeConfig {
    /// Confidence of the Hodges–Lehmann interval (Kayenta: 0.98).
    pub confidence: f64,
    /// Tukey fence factor of the IQR outlier filter; `None` keeps every value. Default 1.5.
    pub iqr_factor: Option<f64>,
    /// The interval must clear `± effect_fraction · |estimate|`, not only zero, to classify
    /// High or Low (Kayenta's `fraction`, 0.25).
    pub effect_fraction: f64,
    pub direction: Direction,
}

impl Default for JudgeConfig {
    fn default() -> Self {
        Self {
            confidence: 0.98,
            iqr_factor: Some(1.5),
            effect_fraction: 0.25,
            direction: Direction::Either,
        }
    }
}

/// What [`judge_metric`] found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JudgeResult {
    pub classification: Classification,
    /// One sentence saying why.
    pub reason: String,
    /// Hodges–Lehmann shift `candidate - baseline` (0 for identical samples).
    pub estimate: f64,
    /// Its confidence interval (both ends equal the estimate for identical samples).
    pub lower: f64,
    pub upper: f64,
    /// Two-sided Mann–Whitney p-value (1 for identical samples).
    pub p_value: f64,
    /// `mean(candidate) / mean(baseline)` after outlier removal; None when the baseline mean
    /// is 0.
    pub mean_ratio: Option<f64>,
    /// Values kept after outlier removal.
    pub baseline_kept: usize,
    pub candidate_kept: usize,
}

/// Quartiles `(Q1, Q3)` with numpy's default (`method="linear"`, Hyndman & Fan type 7)
/// interpolation: for sorted `a` of length `n`, `h = (n - 1) q`, `i = ⌊h⌋`, `g = h - i`,
/// `Q = a[i] + g (a[i+1] - a[i])` (evaluated as `a[i+1] - (1 - g)(a[i+1] - a[i])` when
/// `g >= 1/2`, as numpy's `_lerp` does). Errors on an empty or non-finite sample.
pub fn quartiles(values: &[f64]) -> Result<(f64, f64), StatsError> {
    check_sample("values", values)?;
    let mut sorted = values.to_vec();
    sorted.sort_unstable_by(f64::total_cmp);
    Ok((
        percentile_sorted(&sorted, 0.25),
        percentile_sorted(&sorted, 0.75),
    ))
}

fn percentile_sorted(sorted: &[f64], q: f64) -> f64 {
    let h = (sorted.len() - 1) as f64 * q;
    let i = h.floor();
    let g = h - i;
    let i = i as usize;
    if i + 1 >= sorted.len() {
        return sorted[sorted.len() - 1];
    }
    let (a, b) = (sorted[i], sorted[i + 1]);
    let diff = b - a;
    if g >= 0.5 {
        b - diff * (1.0 - g)
    } else {
        a + diff * g
    }
}

/// Drops the values outside `[Q1 - factor · IQR, Q3 + factor · IQR]` (Tukey's fences on
/// [`quartiles`]), keeping the order of the others. Errors on an empty or non-finite sample
/// or a negative or non-finite factor.
pub fn remove_outliers_iqr(values: &[f64], factor: f64) -> Result<Vec<f64>, StatsError> {
    if !(factor.is_finite() && factor >= 0.0) {
        return Err(StatsError::InvalidParameter {
            name: "iqr_factor",
            reason: format!("must be a finite number >= 0, got {factor}"),
        });
    }
    let (q1, q3) = quartiles(values)?;
    let iqr = q3 - q1;
    let (low, high) = (q1 - factor * iqr, q3 + factor * iqr);
    Ok(values
        .iter()
        .copied()
        .filter(|&v| v >= low && v <= high)
        .collect())
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

/// Judges one metric the way Kayenta's `NetflixACAJudge` / `MannWhitneyClassifier` does:
///
/// 1. remove outliers from each sample with [`remove_outliers_iqr`];
/// 2. identical samples (as multisets), or a pooled sample of one repeated value, `Pass`;
/// 3. otherwise compute the two-sided [`mann_whitney_u`] p-value and the [`hodges_lehmann`]
///    shift `candidate - baseline` with its interval `[lower, upper]` at `confidence`;
/// 4. `High` when `lower > effect_fraction · |estimate|` (and the direction allows it), `Low`
///    when `upper < -effect_fraction · |estimate|`, `Pass` otherwise.
///
/// The classification follows Kayenta and looks only at the interval; the p-value is
/// reported for the record. Errors on empty samples, non-finite values, bad settings, a
/// sample the outlier filter empties (possible only with a fence factor below 1/2).
pub fn judge_metric(
    baseline: &[f64],
    candidate: &[f64],
    config: &JudgeConfig,
) -> Result<JudgeResult, StatsError> {
    check_sample("baseline", baseline)?;
    check_sample("candidate", candidate)?;
    check_confidence(config.confidence)?;
    if !(config.effect_fraction.is_finite() && config.effect_fraction >= 0.0) {
        return Err(StatsError::InvalidParameter {
            name: "effect_fraction",
            reason: format!(
                "must be a finite number >= 0, got {}",
                config.effect_fraction
            ),
        });
    }
    let (baseline, candidate) = match config.iqr_factor {
        Some(factor) => (
            remove_outliers_iqr(baseline, factor)?,
            remove_outliers_iqr(candidate, factor)?,
        ),
        None => (baseline.to_vec(), candidate.to_vec()),
    };
    // A fence factor below 1/2 can leave nothing (two values, factor 0).
    check_sample("baseline", &baseline)?;
    check_sample("candidate", &candidate)?;
    let baseline_mean = mean(&baseline);
    let mean_ratio = (baseline_mean != 0.0).then(|| mean(&candidate) / baseline_mean);
    let base = JudgeResult {
        classification: Classification::Pass,
        reason: String::new(),
        estimate: 0.0,
        lower: 0.0,
        upper: 0.0,
        p_value: 1.0,
        mean_ratio,
        baseline_kept: baseline.len(),
        candidate_kept: candidate.len(),
    };

    let mut sorted_b = baseline.clone();
    let mut sorted_c = candidate.clone();
    sorted_b.sort_unstable_by(f64::total_cmp);
    sorted_c.sort_unstable_by(f64::total_cmp);
    if sorted_b == sorted_c {
        return Ok(JudgeResult {
            reason: "baseline and candidate values are identical".into(),
            ..base
        });
    }
    if sorted_b[0] == sorted_b[sorted_b.len() - 1]
        && sorted_c[0] == sorted_c[sorted_c.len() - 1]
        && sorted_b[0] == sorted_c[0]
    {
        return Ok(JudgeResult {
            reason: "every value is the same".into(),
            ..base
        });
    }

    let mw = mann_whitney_u(&candidate, &baseline, &MannWhitneyOptions::default())?;
    let hl = hodges_lehmann(&candidate, &baseline, config.confidence)?;
    let bound = config.effect_fraction * hl.estimate.abs();
    let confidence_pct = config.confidence * 100.0;
    let (classification, reason) = if config.direction != Direction::Decrease && hl.lower > bound {
        (
            Classification::High,
            format!(
                "candidate is higher: the {confidence_pct}% interval of the shift [{}, {}] lies above {bound}",
                hl.lower, hl.upper
            ),
        )
    } else if config.direction != Direction::Increase && hl.upper < -bound {
        (
            Classification::Low,
            format!(
                "candidate is lower: the {confidence_pct}% interval of the shift [{}, {}] lies below {}",
                hl.lower, hl.upper, -bound
            ),
        )
    } else {
        (
            Classification::Pass,
            format!(
                "no significant shift: the {confidence_pct}% interval [{}, {}] is within ±{bound} of zero",
                hl.lower, hl.upper
            ),
        )
    };
    Ok(JudgeResult {
        classification,
        reason,
        estimate: hl.estimate,
        lower: hl.lower,
        upper: hl.upper,
        p_value: mw.p_value,
        ..base
    })
}
