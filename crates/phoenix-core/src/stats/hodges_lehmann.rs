//! The Hodges–Lehmann shift estimate and its distribution-free confidence interval.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::special::normal_quantile;
use super::{check_confidence, check_sample, StatsError};

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
/// The `n1 n2` differences are never materialised: each order statistic is selected from the
/// implicit sorted matrix `x_(i) - y_(n2+1-j)` (rows and columns ascending) by randomised
/// pivoting with staircase counts, `O((n1 + n2) log(n1 n2))` expected time and `O(n1 + n2)`
/// memory, so large samples are fine.
///
/// Errors on empty samples, non-finite values and a confidence outside `(0, 1)`.
pub fn hodges_lehmann(x: &[f64], y: &[f64], confidence: f64) -> Result<HodgesLehmann, StatsError> {
    check_sample("x", x)?;
    check_sample("y", y)?;
    check_confidence(confidence)?;
    let n_pairs = x.len().checked_mul(y.len()).ok_or(StatsError::TooLarge {
        what: "pairwise differences of the Hodges–Lehmann estimate",
        size: x.len().saturating_mul(y.len()),
        max: usize::MAX,
    })?;
    let mut xs = x.to_vec();
    xs.sort_unstable_by(f64::total_cmp);
    let mut ys_desc = y.to_vec();
    ys_desc.sort_unstable_by(|a, b| b.total_cmp(a));
    let k = hl_order_statistic(x.len(), y.len(), confidence);
    let nth = |rank: usize| kth_difference(&xs, &ys_desc, rank);
    let lower = nth(k);
    let upper = nth(n_pairs + 1 - k);
    let estimate = if n_pairs % 2 == 1 {
        nth(n_pairs / 2 + 1)
    } else {
        (nth(n_pairs / 2) + nth(n_pairs / 2 + 1)) / 2.0
    };
    Ok(HodgesLehmann {
        estimate,
        lower,
        upper,
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

/// The `rank`-th smallest (1-based) of the differences `xs[i] - ys_desc[j]`, with `xs`
/// ascending and `ys_desc` descending, so every row and every column of the implicit matrix is
/// non-decreasing (floating-point subtraction is monotone).
fn kth_difference(xs: &[f64], ys_desc: &[f64], rank: usize) -> f64 {
    let (n1, n2) = (xs.len(), ys_desc.len());
    debug_assert!(rank >= 1 && rank <= n1 * n2);
    // Per row, the still-possible columns are lo[i]..hi[i]; everything left of lo[i] ranks
    // below the answer, everything from hi[i] on above it.
    let mut lo = vec![0_usize; n1];
    let mut hi = vec![n2; n1];
    let mut rng = SplitMix64(0x9e37_79b9_7f4a_7c15);
    let diff = |i: usize, j: usize| xs[i] - ys_desc[j];
    loop {
        let below: usize = lo.iter().sum();
        let active: usize = lo.iter().zip(&hi).map(|(l, h)| h - l).sum();
        let target = rank - below; // 1-based rank among the active differences
        if active <= (n1 + n2).max(64) {
            let mut rest: Vec<f64> = (0..n1)
                .flat_map(|i| (lo[i]..hi[i]).map(move |j| (i, j)))
                .map(|(i, j)| diff(i, j))
                .collect();
            return *rest.select_nth_unstable_by(target - 1, f64::total_cmp).1;
        }
        // A uniformly random active difference as the pivot.
        let mut pick = (rng.next() % active as u64) as usize;
        let mut pivot = f64::NAN;
        for i in 0..n1 {
            let width = hi[i] - lo[i];
            if pick < width {
                pivot = diff(i, lo[i] + pick);
                break;
            }
            pick -= width;
        }
        // Staircase counts of the differences < pivot and <= pivot in every row.
        let (less, less_or_equal) = (
            staircase(n1, n2, |i, j| diff(i, j) < pivot),
            staircase(n1, n2, |i, j| diff(i, j) <= pivot),
        );
        let total_less: usize = less.iter().sum();
        let total_le: usize = less_or_equal.iter().sum();
        if rank > total_less && rank <= total_le {
            return pivot;
        }
        if rank <= total_less {
            for (h, &c) in hi.iter_mut().zip(&less) {
                *h = (*h).min(c);
            }
        } else {
            for (l, &c) in lo.iter_mut().zip(&less_or_equal) {
                *l = (*l).max(c);
            }
        }
    }
}

/// For each row `i`, how many leading columns satisfy `holds(i, j)`, for a predicate that is
/// true on a prefix of every row and whose prefix shrinks as `i` grows.
fn staircase(n1: usize, n2: usize, holds: impl Fn(usize, usize) -> bool) -> Vec<usize> {
    let mut counts = Vec::with_capacity(n1);
    let mut j = n2;
    for i in 0..n1 {
        while j > 0 && !holds(i, j - 1) {
            j -= 1;
        }
        counts.push(j);
    }
    counts
}

/// A tiny deterministic generator for pivots (the answer never depends on it, only the time).
#[derive(Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(x: &[f64], y: &[f64]) -> Vec<f64> {
        let mut d: Vec<f64> = x
            .iter()
            .flat_map(|a| y.iter().map(move |b| a - b))
            .collect();
        d.sort_unstable_by(f64::total_cmp);
        d
    }

    #[test]
    fn selection_matches_sorting() {
        let mut rng = SplitMix64(42);
        for round in 0..40 {
            let n1 = 1 + (rng.next() % 60) as usize;
            let n2 = 1 + (rng.next() % 60) as usize;
            // Coarse values give many ties on some rounds.
            let modulus = if round % 2 == 0 { 7 } else { 100_000 };
            let mut x: Vec<f64> = (0..n1)
                .map(|_| (rng.next() % modulus) as f64 / 8.0)
                .collect();
            let mut y: Vec<f64> = (0..n2)
                .map(|_| (rng.next() % modulus) as f64 / 8.0)
                .collect();
            let sorted = naive(&x, &y);
            x.sort_unstable_by(f64::total_cmp);
            y.sort_unstable_by(|a, b| b.total_cmp(a));
            let n = n1 * n2;
            // Every rank for small matrices, otherwise both ends and a spread in between.
            let step = (n / 60).max(1);
            for rank in (1..=n)
                .step_by(step)
                .chain([1, 2, n / 2, n / 2 + 1, n - 1, n])
            {
                let rank = rank.clamp(1, n);
                assert_eq!(
                    kth_difference(&x, &y, rank),
                    sorted[rank - 1],
                    "{n1}x{n2} rank {rank}"
                );
            }
        }
    }
}
