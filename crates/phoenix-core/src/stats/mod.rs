//! Statistics for experiment analysis, pure and checked against scipy
//! (`tests/fixtures/gen_stats.py` → `tests/fixtures/stats.json`, compared to 1e-9 relative by
//! `tests/stats_fixtures.rs`):
//!
//! * [`mann_whitney_u`]: the Mann–Whitney U test with tie correction, exact for small samples
//!   without ties, as `scipy.stats.mannwhitneyu`;
//! * [`hodges_lehmann`]: the Hodges–Lehmann shift estimate and its distribution-free interval;
//! * [`judge_metric`]: Kayenta's judge for one metric (IQR outlier removal, Mann–Whitney,
//!   High / Low / Pass);
//! * [`mean_ci`] and [`welch_ci`]: Student t intervals for a mean and a difference of means;
//! * [`special`]: the normal and Student t distribution functions underneath.
//!
//! Every function validates its input and returns a [`StatsError`] rather than panicking.
//! `docs/analysis.md` ("Statistics") describes the formulas.

mod ci;
mod hodges_lehmann;
mod judge;
mod mann_whitney;
pub mod special;

pub use ci::{mean_ci, welch_ci, ConfidenceInterval};
pub use hodges_lehmann::{hl_order_statistic, hodges_lehmann, HodgesLehmann, MAX_PAIRS};
pub use judge::{
    judge_metric, quartiles, remove_outliers_iqr, Classification, Direction, JudgeConfig,
    JudgeResult,
};
pub use mann_whitney::{
    mann_whitney_u, Alternative, MannWhitneyOptions, MannWhitneyResult, MwuMethod, MAX_EXACT_WORK,
};

/// Bad input to a statistics function.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StatsError {
    #[error("sample `{sample}` is empty")]
    EmptySample { sample: &'static str },
    #[error("sample `{sample}` has a non-finite value ({value}) at index {index}")]
    NonFinite {
        sample: &'static str,
        index: usize,
        value: f64,
    },
    #[error("sample `{sample}` needs at least {needed} values, got {got}")]
    TooFewValues {
        sample: &'static str,
        needed: usize,
        got: usize,
    },
    #[error("confidence must be strictly between 0 and 1, got {0}")]
    InvalidConfidence(f64),
    #[error("`{name}` {reason}")]
    InvalidParameter { name: &'static str, reason: String },
    #[error("the {what} needs {size} steps or values, over the limit of {max}")]
    TooLarge {
        what: &'static str,
        size: usize,
        max: usize,
    },
    #[error("the result is not a finite number")]
    Overflow,
}

/// Non-empty and every value finite.
fn check_sample(sample: &'static str, values: &[f64]) -> Result<(), StatsError> {
    if values.is_empty() {
        return Err(StatsError::EmptySample { sample });
    }
    if let Some((index, &value)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(StatsError::NonFinite {
            sample,
            index,
            value,
        });
    }
    Ok(())
}

fn check_confidence(confidence: f64) -> Result<(), StatsError> {
    if confidence > 0.0 && confidence < 1.0 {
        Ok(())
    } else {
        Err(StatsError::InvalidConfidence(confidence))
    }
}
