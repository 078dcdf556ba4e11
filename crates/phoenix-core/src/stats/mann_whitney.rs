//! The Mann–Whitney U test (Wilcoxon rank-sum test), following `scipy.stats.mannwhitneyu`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::special::normal_cdf;
use super::{check_sample, StatsError};

/// The alternative hypothesis, as scipy's `alternative` argument.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Alternative {
    /// The distributions of `x` and `y` differ.
    #[default]
    TwoSided,
    /// `x` is stochastically less than `y`.
    Less,
    /// `x` is stochastically greater than `y`.
    Greater,
}

/// How the p-value is computed, as scipy's `method` argument.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MwuMethod {
    /// scipy 1.17's rule: [`MwuMethod::Exact`] when at least one sample has 8 or fewer values
    /// and there are no ties in the pooled sample, [`MwuMethod::Asymptotic`] otherwise.
    #[default]
    Auto,
    /// The exact null distribution of U (no tie correction; with ties U is truncated to an
    /// integer first, exactly as scipy does).
    Exact,
    /// The normal approximation with tie correction (and continuity correction when
    /// [`MannWhitneyOptions::use_continuity`] is set).
    Asymptotic,
}

/// Options of [`mann_whitney_u`]; the default is scipy's default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MannWhitneyOptions {
    pub alternative: Alternative,
    pub method: MwuMethod,
    /// Subtract 1/2 from `|U - n1 n2 / 2|` in the normal approximation (scipy's default).
    pub use_continuity: bool,
}

impl Default for MannWhitneyOptions {
    fn default() -> Self {
        Self {
            alternative: Alternative::TwoSided,
            method: MwuMethod::Auto,
            use_continuity: true,
        }
    }
}

/// The outcome of [`mann_whitney_u`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MannWhitneyResult {
    /// U of the first sample: the number of pairs `(x_i, y_j)` with `x_i > y_j`, ties
    /// counting 1/2 (scipy's `statistic`). U of the second sample is `n1 n2 - u`.
    pub u: f64,
    pub p_value: f64,
    /// The method actually used ([`MwuMethod::Exact`] or [`MwuMethod::Asymptotic`]).
    pub method: MwuMethod,
    /// The standardised statistic of the normal approximation (None for the exact method).
    pub z: Option<f64>,
    /// Whether the pooled sample has ties.
    pub ties: bool,
}

/// Average ranks (1-based) of the pooled sample `x ++ y`: the sum of the ranks of `x` and
/// the tie-group sizes.
fn rank_sum_and_ties(x: &[f64], y: &[f64]) -> (f64, Vec<usize>) {
    let mut pooled: Vec<(f64, bool)> = x
        .iter()
        .map(|&v| (v, true))
        .chain(y.iter().map(|&v| (v, false)))
        .collect();
    pooled.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut rank_sum_x = 0.0;
    let mut ties = Vec::new();
    let mut start = 0;
    while start < pooled.len() {
        let mut end = start + 1;
        while end < pooled.len() && pooled[end].0 == pooled[start].0 {
            end += 1;
        }
        // Ranks start+1 ..= end share their average.
        let average = (start + 1 + end) as f64 / 2.0;
        let in_x = pooled[start..end].iter().filter(|p| p.1).count();
        rank_sum_x += average * in_x as f64;
        ties.push(end - start);
        start = end;
    }
    (rank_sum_x, ties)
}

/// The Mann–Whitney U test of `x` against `y`, matching `scipy.stats.mannwhitneyu(x, y,
/// use_continuity, alternative, method)` (scipy 1.17):
///
/// * `U1 = R1 - n1 (n1 + 1) / 2` with `R1` the sum of the average ranks of `x`;
/// * the p-value uses the survival function at `U1` (greater), `U2 = n1 n2 - U1` (less) or
///   `max(U1, U2)` doubled (two-sided), clipped to `[0, 1]`;
/// * exact: the null distribution of U counted exactly (integer arithmetic while it fits in
///   `i128`, which is every case with `min(n1, n2) <= 8` and `max(n1, n2)` below ~10⁵);
/// * asymptotic: `z = (U - n1 n2 / 2 - 1/2) / σ`,
///   `σ² = n1 n2 / 12 · ((n + 1) - Σ(t³ - t) / (n (n - 1)))` over tie groups of size `t`,
///   `p = Φ(-z)`. When every value is equal σ = 0: p = 1 with the continuity correction,
///   NaN without it (0/0), as scipy.
///
/// Errors on empty samples and non-finite values, and with [`MwuMethod::Exact`] on sizes
/// whose exact distribution would cost more than [`MAX_EXACT_WORK`] steps ([`MwuMethod::Auto`]
/// uses the normal approximation there instead — scipy would still go exact).
pub fn mann_whitney_u(
    x: &[f64],
    y: &[f64],
    options: &MannWhitneyOptions,
) -> Result<MannWhitneyResult, StatsError> {
    check_sample("x", x)?;
    check_sample("y", y)?;
    let n1 = x.len();
    let n2 = y.len();
    let (r1, tie_groups) = rank_sum_and_ties(x, y);
    let (n1f, n2f) = (n1 as f64, n2 as f64);
    let u1 = r1 - n1f * (n1f + 1.0) / 2.0;
    let u2 = n1f * n2f - u1;
    let (u, factor) = match options.alternative {
        Alternative::Greater => (u1, 1.0),
        Alternative::Less => (u2, 1.0),
        Alternative::TwoSided => (u1.max(u2), 2.0),
    };
    let ties = tie_groups.iter().any(|&t| t > 1);
    let exact_work = exact_work(n1, n2);
    let method = match options.method {
        MwuMethod::Auto if (n1 > 8 && n2 > 8) || ties => MwuMethod::Asymptotic,
        // Beyond the work limit (a sample of 8 against one of ~6 million) the normal
        // approximation is indistinguishable from the exact distribution anyway.
        MwuMethod::Auto if exact_work > MAX_EXACT_WORK => MwuMethod::Asymptotic,
        MwuMethod::Auto => MwuMethod::Exact,
        MwuMethod::Exact if exact_work > MAX_EXACT_WORK => {
            return Err(StatsError::TooLarge {
                what: "exact Mann–Whitney distribution",
                size: exact_work,
                max: MAX_EXACT_WORK,
            })
        }
        other => other,
    };
    let (p, z) = if method == MwuMethod::Exact {
        // scipy truncates U to an integer (only matters with ties).
        (exact_sf(u.trunc() as u64, n1, n2), None)
    } else {
        let z = mwu_z(u, n1f, n2f, &tie_groups, options.use_continuity);
        (normal_cdf(-z), Some(z))
    };
    let p_value = (p * factor).clamp(0.0, 1.0);
    Ok(MannWhitneyResult {
        u: u1,
        p_value,
        method,
        z,
        ties,
    })
}

/// Most steps the exact distribution may take: `min(n1, n2) · (n1 n2 / 2)` coefficient
/// updates (a couple of seconds at worst).
pub const MAX_EXACT_WORK: usize = 200_000_000;

/// Steps of [`exact_sf`] for these sizes.
fn exact_work(n1: usize, n2: usize) -> usize {
    n1.min(n2).saturating_mul(n1.saturating_mul(n2) / 2 + 1)
}

/// The standardised U of the normal approximation, as scipy's `_get_mwu_z`.
fn mwu_z(u: f64, n1: f64, n2: f64, tie_groups: &[usize], continuity: bool) -> f64 {
    let mu = n1 * n2 / 2.0;
    let n = n1 + n2;
    let tie_term: f64 = tie_groups
        .iter()
        .map(|&t| {
            let t = t as f64;
            t * t * t - t
        })
        .sum();
    let s = (n1 * n2 / 12.0 * ((n + 1.0) - tie_term / (n * (n - 1.0)))).sqrt();
    let mut numerator = u - mu;
    if continuity {
        numerator -= 0.5;
    }
    // s == 0 only when every value ties, where numerator is -1/2 or 0: ±inf or NaN as scipy.
    numerator / s
}

/// `P(U >= k)` under the null hypothesis for sample sizes `n1`, `n2` (no ties).
fn exact_sf(k: u64, n1: usize, n2: usize) -> f64 {
    let total_pairs = (n1 as u64) * (n2 as u64);
    if k == 0 {
        return 1.0;
    }
    if k > total_pairs {
        return 0.0;
    }
    let complement = total_pairs - k;
    // By symmetry P(U >= k) = P(U <= n1 n2 - k); sum whichever side is shorter.
    let (upto, upper) = if complement <= k {
        (complement, false) // P(U <= complement)
    } else {
        (k - 1, true) // 1 - P(U <= k - 1)
    };
    let (m, n) = (n1.min(n2), n1.max(n2));
    let upto = upto as usize;
    let below = match binomial_i128(m + n, m) {
        // Exact integer counts while the number of arrangements fits comfortably in i128.
        Some(total) if total < (1_i128 << 120) => {
            let below: i128 = u_counts_i128(m, n, upto).iter().sum();
            if upper {
                return (total - below) as f64 / total as f64;
            }
            below as f64 / total as f64
        }
        _ => u_probabilities_f64(m, n, upto).iter().sum::<f64>(),
    };
    if upper {
        1.0 - below
    } else {
        below
    }
}

/// `binom(n, k)`, or None when it overflows.
fn binomial_i128(n: usize, k: usize) -> Option<i128> {
    let mut acc: i128 = 1;
    for i in 1..=k {
        // acc * (n - k + i) / i stays an integer at every step.
        acc = acc.checked_mul((n - k + i) as i128)? / i as i128;
    }
    Some(acc)
}

/// Number of arrangements with U = 0..=upto: coefficients of the Gaussian binomial
/// `[m + n choose m]_q = Π_{i=1..m} (1 - q^(n+i)) / (1 - q^i)`, built factor by factor and
/// truncated at `q^upto`.
fn u_counts_i128(m: usize, n: usize, upto: usize) -> Vec<i128> {
    let mut c = vec![0_i128; upto + 1];
    c[0] = 1;
    for i in 1..=m {
        let shift = n + i;
        for u in (shift..=upto).rev() {
            c[u] -= c[u - shift];
        }
        for u in i..=upto {
            c[u] += c[u - i];
        }
    }
    c
}

/// [`u_counts_i128`] divided by the number of arrangements, in floating point, for sizes
/// beyond `i128`: each factor is followed by division by its share `(n + i) / i` of the total,
/// so the coefficients stay probabilities and never overflow.
fn u_probabilities_f64(m: usize, n: usize, upto: usize) -> Vec<f64> {
    let mut c = vec![0_f64; upto + 1];
    c[0] = 1.0;
    for i in 1..=m {
        let shift = n + i;
        // Dividing by (1 - q^i) first keeps the intermediate coefficients positive.
        for u in i..=upto {
            c[u] += c[u - i];
        }
        for u in (shift..=upto).rev() {
            c[u] -= c[u - shift];
        }
        let scale = i as f64 / shift as f64;
        c.iter_mut().for_each(|v| *v *= scale);
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_and_float_exact_distributions_agree() {
        for &(m, n) in &[(1, 1), (3, 5), (8, 8), (8, 50), (12, 30)] {
            let upto = m * n / 2;
            let counts = u_counts_i128(m, n, upto);
            let total = binomial_i128(m + n, m).expect("fits");
            let probabilities = u_probabilities_f64(m, n, upto);
            for (c, p) in counts.iter().zip(&probabilities) {
                let exact = *c as f64 / total as f64;
                assert!(
                    (exact - p).abs() <= 1e-12 * exact.max(1e-300),
                    "{m}x{n}: {exact} vs {p}"
                );
            }
        }
    }

    #[test]
    fn exact_distribution_sums_to_one_and_is_symmetric() {
        let (m, n) = (4, 6);
        let counts = u_counts_i128(m, n, m * n);
        assert_eq!(counts.iter().sum::<i128>(), 210); // binom(10, 4)
        for u in 0..=m * n {
            assert_eq!(counts[u], counts[m * n - u]);
        }
        assert_eq!(exact_sf(0, m, n), 1.0);
        assert_eq!(exact_sf(25, m, n), 0.0);
        assert!((exact_sf(24, m, n) - 1.0 / 210.0).abs() < 1e-18);
    }
}
