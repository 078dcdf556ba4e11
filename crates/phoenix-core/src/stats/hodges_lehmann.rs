//! The Hodges–Lehmann shift estimate and its distribution-free confidence interval.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::special::normal_quantile;
use super::{check_confidence, check_sample, StatsError};

/// At most this many pairwise differences are materialised (80 MB of `f64`); larger inputs
/// are refused with [`StatsError::TooLarge`].
pub const MAX_PAIRS: usize = 10_000_000;

/// The Hodges–Lehmann estimate of the shift of `x` relative to `y`, with its confidence
/// interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HodgesLehmann {
    /// `median(x_i - y_j)` over all `n1 n2` pairs.
    pub estimate: f64,
    /// `D_(k)`, the k-th smallest pairwise difference.
    pub lower: f64,
    /// `D_(N + 1 - k)`.
    pub upper: f64,
    /// The confidence asked for.
    pub confidence: f64,
    /// The order statistic `k` (1-based) the interval uses.
    pub k: usize,
}

/// The Hodges–Lehmann estimate of the shift `x - y` and its Mann–Whitney (Bauer / Moses)
/// distribution-free confidence interval at `confidence`, with the normal approximation to the
/// null distribution of U — what R's `wilcox.test(x, y, conf.int = TRUE)` computes (and
/// Kayenta's `MannWhitney` through it) when it uses the normal approximation:
///
/// * `D_(1) <= … <= D_(N)` are the `N = n1 n2` differences `x_i - y_j`, sorted;
/// * estimate = the median of the `D` (mean of the two middle values when `N` is even, as
///   `numpy.median`);
/// * `z = Φ⁻¹((1 + confidence) / 2)`, `σ = sqrt(n1 n2 (n1 + n2 + 1) / 12)` (no tie
///   correction, which makes the interval slightly conservative with ties);
/// * `k = max(1, ⌈N / 2 - z σ - 1/2⌉)`: the continuity-corrected normal approximation of the
///   `α/2` quantile of U (R's exact rule is `k = qwilcox(α/2, n1, n2)`, 1 when that is 0);
/// * interval = `[D_(k), D_(N + 1 - k)]`. When `k` hits its floor of 1 the interval is the
///   full range of differences and its real coverage is below `confidence`.
///
/// R solves for the same end points with `uniroot` on a step function, so it returns these
/// values up to its root-finding tolerance; here they are exact order statistics.
///
/// Errors on empty samples, non-finite values, a confidence outside `(0, 1)` and more than
/// [`MAX_PAIRS`] pairs.
pub fn hodges_lehmann(x: &[f64], y: &[f64], confidence: f64) -> Result<HodgesLehmann, StatsError> {
    check_sample("x", x)?;
    check_sample("y", y)?;
    check_confidence(confidence)?;
    let n_pairs = x
        .len()
        .checked_mul(y.len())
        .filter(|&n| n <= MAX_PAIRS)
        .ok_or(StatsError::TooLarge {
            what: "pairwise differences of the Hodges–Lehmann estimate",
            size: x.len().saturating_mul(y.len()),
            max: MAX_PAIRS,
        })?;
    let mut diffs: Vec<f64> = Vec::with_capacity(n_pairs);
    for &xi in x {
        diffs.extend(y.iter().map(|&yj| xi - yj));
    }
    diffs.sort_unstable_by(f64::total_cmp);
    let estimate = if n_pairs % 2 == 1 {
        diffs[n_pairs / 2]
    } else {
        (diffs[n_pairs / 2 - 1] + diffs[n_pairs / 2]) / 2.0
    };
    let k = hl_order_statistic(x.len(), y.len(), confidence);
    Ok(HodgesLehmann {
        estimate,
        lower: diffs[k - 1],
        upper: diffs[n_pairs - k],
        confidence,
        k,
    })
}

/// The 1-based order statistic `k` of [`hodges_lehmann`]'s interval, in `1..=⌈N/2⌉`.
pub fn hl_order_statistic(n1: usize, n2: usize, confidence: f64) -> usize {
    let (n1f, n2f) = (n1 as f64, n2 as f64);
    let n_pairs = n1f * n2f;
    let z = normal_quantile((1.0 + confidence) / 2.0);
    let sigma = (n1f * n2f * (n1f + n2f + 1.0) / 12.0).sqrt();
    let k = (n_pairs / 2.0 - z * sigma - 0.5).ceil();
    // Never beyond the median: with tiny confidence the interval shrinks to the middle.
    let max_k = (n_pairs / 2.0).ceil().max(1.0);
    k.clamp(1.0, max_k) as usize
}
