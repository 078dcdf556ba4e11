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
//!
//! ```
//! use phoenix_core::stats::{self, Classification, JudgeConfig, MannWhitneyOptions};
//!
//! let baseline = [1.0, 2.0, 3.0, 4.0];
//! let candidate = [10.0, 20.0, 30.0, 40.0];
//! let mw = stats::mann_whitney_u(&candidate, &baseline, &MannWhitneyOptions::default())?;
//! assert_eq!(mw.u, 16.0);
//! let hl = stats::hodges_lehmann(&candidate, &baseline, 0.95)?;
//! assert_eq!((hl.lower, hl.estimate, hl.upper), (6.0, 22.5, 39.0));
//! let verdict = stats::judge_metric(&baseline, &candidate, &JudgeConfig::default())?;
//! assert_eq!(verdict.classification, Classification::High);
//! let reduction = stats::mean_ci(&[87.1, 86.4, 88.0, 87.5], 0.95)?;
//! assert!(reduction.lower < 87.25 && 87.25 < reduction.upper);
//! # Ok::<(), stats::StatsError>(())
//! ```

mod ci;
mod hodges_lehmann;
mod judge;
mod mann_whitney;
pub mod special;

pub use ci::{mean_ci, welch_ci, ConfidenceInterval};
pub use hodges_lehmann::{hl_order_statistic, hodges_lehmann, HodgesLehmann};
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
