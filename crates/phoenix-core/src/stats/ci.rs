//! Student t confidence intervals for a mean and for a difference of means (Welch).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::special::student_t_quantile;
use super::{check_confidence, check_sample, StatsError};

/// A two-sided confidence interval `estimate ± t · std_error`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ConfidenceInterval {
    pub estimate: f64,
    pub lower: f64,
    pub upper: f64,
    pub confidence: f64,
    /// Standard error of the estimate.
    pub std_error: f64,
    /// Degrees of freedom of the t distribution used.
    pub df: f64,
}

/// Mean and sample variance (`ddof = 1`) as numpy computes them: mean first, then the mean
/// square deviation from it.
fn mean_and_variance(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let ss: f64 = values.iter().map(|v| (v - mean) * (v - mean)).sum();
    (mean, ss / (n - 1.0))
}

fn interval(
    estimate: f64,
    std_error: f64,
    df: f64,
    confidence: f64,
) -> Result<ConfidenceInterval, StatsError> {
    // scipy's t.interval: ppf((1 - c) / 2) and ppf((1 + c) / 2), scaled and shifted.
    let (lower, upper) = if std_error == 0.0 {
        (estimate, estimate)
    } else {
        let lo_q = student_t_quantile((1.0 - confidence) / 2.0, df);
        let hi_q = student_t_quantile((1.0 + confidence) / 2.0, df);
        (estimate + std_error * lo_q, estimate + std_error * hi_q)
    };
    if !(lower.is_finite() && upper.is_finite()) {
        return Err(StatsError::Overflow);
    }
    Ok(ConfidenceInterval {
        estimate,
        lower,
        upper,
        confidence,
        std_error,
        df,
    })
}

/// The Student t interval for the mean of `values` (e.g. one variant's per-interval
/// reductions): `mean ± t_{(1+c)/2, n-1} · s / √n` with `s` the sample standard deviation.
/// Matches `scipy.stats.t.interval(c, n - 1, loc=mean, scale=scipy.stats.sem(values))`.
/// A constant sample gives the degenerate interval `[mean, mean]`.
///
/// Errors on fewer than 2 values, non-finite values or a confidence outside `(0, 1)`.
pub fn mean_ci(values: &[f64], confidence: f64) -> Result<ConfidenceInterval, StatsError> {
    check_sample("values", values)?;
    check_confidence(confidence)?;
    if values.len() < 2 {
        return Err(StatsError::TooFewValues {
            sample: "values",
            needed: 2,
            got: values.len(),
        });
    }
    let n = values.len() as f64;
    let (mean, variance) = mean_and_variance(values);
    interval(mean, (variance / n).sqrt(), n - 1.0, confidence)
}

/// Welch's interval for the difference of means `mean(x) - mean(y)` (e.g. candidate minus
/// baseline error): `se = √(s_x²/n_x + s_y²/n_y)`, Welch–Satterthwaite
/// `df = se⁴ / ((s_x²/n_x)²/(n_x-1) + (s_y²/n_y)²/(n_y-1))`, `diff ± t_{(1+c)/2, df} · se`.
/// Matches `scipy.stats.ttest_ind(x, y, equal_var=False).confidence_interval(c)`.
/// When both samples are constant, `se = 0`, the interval is `[diff, diff]` and `df` is
/// reported as `n_x + n_y - 2`.
///
/// Errors on fewer than 2 values in either sample, non-finite values or a confidence outside
/// `(0, 1)`.
pub fn welch_ci(x: &[f64], y: &[f64], confidence: f64) -> Result<ConfidenceInterval, StatsError> {
    check_sample("x", x)?;
    check_sample("y", y)?;
    check_confidence(confidence)?;
    for (name, sample) in [("x", x), ("y", y)] {
        if sample.len() < 2 {
            return Err(StatsError::TooFewValues {
                sample: name,
                needed: 2,
                got: sample.len(),
            });
        }
    }
    let (nx, ny) = (x.len() as f64, y.len() as f64);
    let (mx, vx) = mean_and_variance(x);
    let (my, vy) = mean_and_variance(y);
    let (ax, ay) = (vx / nx, vy / ny);
    let se2 = ax + ay;
    let df = if se2 == 0.0 {
        nx + ny - 2.0
    } else {
        se2 * se2 / (ax * ax / (nx - 1.0) + ay * ay / (ny - 1.0))
    };
    interval(mx - my, se2.sqrt(), df, confidence)
}
