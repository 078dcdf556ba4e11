//! Unit and property tests of phoenix-core's statistics beyond the scipy fixtures: bad
//! input, edge cases and the symmetries the tests must have.

use phoenix_core::stats::{
    self, special, Alternative, Classification, Direction, JudgeConfig, MannWhitneyOptions,
    MwuMethod, StatsError,
};
use proptest::prelude::*;

fn options(alternative: Alternative, method: MwuMethod) -> MannWhitneyOptions {
    MannWhitneyOptions {
        alternative,
        method,
        use_continuity: true,
    }
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let ok = [1.0, 2.0, 3.0];
    let default = MannWhitneyOptions::default();
    assert_eq!(
        stats::mann_whitney_u(&[], &ok, &default),
        Err(StatsError::EmptySample { sample: "x" })
    );
    assert!(matches!(
        stats::mann_whitney_u(&ok, &[1.0, f64::NAN], &default),
        Err(StatsError::NonFinite {
            sample: "y",
            index: 1,
            ..
        })
    ));
    assert!(matches!(
        stats::mann_whitney_u(&[f64::INFINITY], &ok, &default),
        Err(StatsError::NonFinite { sample: "x", .. })
    ));
    for confidence in [0.0, 1.0, -0.5, 1.5, f64::NAN] {
        assert!(matches!(
            stats::hodges_lehmann(&ok, &ok, confidence),
            Err(StatsError::InvalidConfidence(_))
        ));
        assert!(matches!(
            stats::mean_ci(&ok, confidence),
            Err(StatsError::InvalidConfidence(_))
        ));
    }
    assert_eq!(
        stats::mean_ci(&[4.0], 0.95),
        Err(StatsError::TooFewValues {
            sample: "values",
            needed: 2,
            got: 1
        })
    );
    assert!(matches!(
        stats::welch_ci(&ok, &[1.0], 0.95),
        Err(StatsError::TooFewValues { sample: "y", .. })
    ));
    assert!(matches!(
        stats::remove_outliers_iqr(&ok, -1.0),
        Err(StatsError::InvalidParameter { .. })
    ));
    assert!(matches!(
        stats::judge_metric(&[], &ok, &JudgeConfig::default()),
        Err(StatsError::EmptySample { .. })
    ));
    let config = JudgeConfig {
        effect_fraction: f64::NAN,
        ..JudgeConfig::default()
    };
    assert!(matches!(
        stats::judge_metric(&ok, &ok, &config),
        Err(StatsError::InvalidParameter { .. })
    ));
    // Too much work for the exact distribution is refused, and Auto would not go there.
    let big: Vec<f64> = (0..30_000).map(f64::from).collect();
    let big2: Vec<f64> = (0..30_000).map(|v| f64::from(v) + 0.5).collect();
    assert!(matches!(
        stats::mann_whitney_u(
            &big,
            &big2,
            &options(Alternative::TwoSided, MwuMethod::Exact)
        ),
        Err(StatsError::TooLarge { .. })
    ));
}

#[test]
fn scipy_documentation_example() {
    let males = [19.0, 22.0, 16.0, 29.0, 24.0];
    let females = [20.0, 11.0, 17.0, 12.0];
    let r = stats::mann_whitney_u(&males, &females, &MannWhitneyOptions::default())
        .expect("valid input");
    assert_eq!(r.u, 17.0);
    assert_eq!(r.method, MwuMethod::Exact);
    assert!((r.p_value - 0.111_111_111_111_111_1).abs() < 1e-15);
    let r = stats::mann_whitney_u(
        &males,
        &females,
        &options(Alternative::TwoSided, MwuMethod::Asymptotic),
    )
    .expect("valid input");
    assert!((r.p_value - 0.111_346_886_533_140_41).abs() < 1e-14);
    let r = stats::mann_whitney_u(
        &females,
        &males,
        &options(Alternative::Less, MwuMethod::Exact),
    )
    .expect("valid input");
    assert_eq!(r.u, 3.0);
    assert!((r.p_value - 0.055_555_555_555_555_55).abs() < 1e-15);
}

#[test]
fn auto_method_follows_scipy_rule() {
    let small: Vec<f64> = (0..8).map(f64::from).collect();
    let nine: Vec<f64> = (0..9).map(|v| f64::from(v) + 0.5).collect();
    let mw = |x: &[f64], y: &[f64]| {
        stats::mann_whitney_u(x, y, &MannWhitneyOptions::default())
            .expect("valid input")
            .method
    };
    // One sample of 8 or fewer and no ties: exact, whatever the other size.
    assert_eq!(mw(&small, &nine), MwuMethod::Exact);
    let many: Vec<f64> = (0..200).map(|v| f64::from(v) + 0.5).collect();
    assert_eq!(mw(&small, &many), MwuMethod::Exact);
    // Both above 8: asymptotic.
    assert_eq!(mw(&nine, &many), MwuMethod::Asymptotic);
    // Any tie: asymptotic.
    assert_eq!(mw(&[1.0, 2.0], &[2.0, 3.0]), MwuMethod::Asymptotic);
}

#[test]
fn kayenta_reference_interval() {
    // Kayenta's MannWhitneySuite: control 1..4, experiment 10..40 at 95 %: [6, 39], 22.5.
    let hl = stats::hodges_lehmann(&[10.0, 20.0, 30.0, 40.0], &[1.0, 2.0, 3.0, 4.0], 0.95)
        .expect("valid input");
    assert_eq!((hl.lower, hl.estimate, hl.upper), (6.0, 22.5, 39.0));
}

#[test]
fn judge_edge_cases() {
    let base = [10.0, 11.0, 12.0, 10.5, 11.5, 10.25, 11.75, 10.75];
    let same = stats::judge_metric(&base, &base, &JudgeConfig::default()).expect("valid");
    assert_eq!(same.classification, Classification::Pass);
    assert_eq!(same.p_value, 1.0);
    assert_eq!(same.mean_ratio, Some(1.0));

    let higher: Vec<f64> = base.iter().map(|v| v * 2.0).collect();
    let r = stats::judge_metric(&base, &higher, &JudgeConfig::default()).expect("valid");
    assert_eq!(r.classification, Classification::High, "{}", r.reason);
    assert!(r.estimate > 0.0 && r.lower > 0.0);
    assert!((r.mean_ratio.expect("nonzero baseline") - 2.0).abs() < 1e-12);
    // Only decreases count: the increase passes.
    let decrease_only = JudgeConfig {
        direction: Direction::Decrease,
        ..JudgeConfig::default()
    };
    let r = stats::judge_metric(&base, &higher, &decrease_only).expect("valid");
    assert_eq!(r.classification, Classification::Pass);
    let r = stats::judge_metric(&higher, &base, &JudgeConfig::default()).expect("valid");
    assert_eq!(r.classification, Classification::Low, "{}", r.reason);

    // A zero baseline mean has no ratio.
    let r = stats::judge_metric(&[0.0, 0.0, 0.0], &[1.0, 2.0, 3.0], &JudgeConfig::default())
        .expect("valid");
    assert_eq!(r.mean_ratio, None);

    // An outlier is dropped before the test.
    let mut with_outlier = base.to_vec();
    with_outlier.push(1000.0);
    let r = stats::judge_metric(&with_outlier, &base, &JudgeConfig::default()).expect("valid");
    assert_eq!(r.baseline_kept, base.len());
    assert_eq!(r.classification, Classification::Pass);
    let keep_all = JudgeConfig {
        iqr_factor: None,
        ..JudgeConfig::default()
    };
    let r = stats::judge_metric(&with_outlier, &base, &keep_all).expect("valid");
    assert_eq!(r.baseline_kept, base.len() + 1);
}

#[test]
fn degenerate_intervals() {
    let ci = stats::mean_ci(&[3.0, 3.0, 3.0], 0.95).expect("valid");
    assert_eq!((ci.lower, ci.estimate, ci.upper), (3.0, 3.0, 3.0));
    let ci = stats::welch_ci(&[3.0, 3.0], &[1.0, 1.0, 1.0], 0.95).expect("valid");
    assert_eq!((ci.lower, ci.estimate, ci.upper), (2.0, 2.0, 2.0));
    assert_eq!(ci.df, 3.0);
    let hl = stats::hodges_lehmann(&[5.0], &[2.0], 0.98).expect("valid");
    assert_eq!((hl.lower, hl.estimate, hl.upper, hl.k), (3.0, 3.0, 3.0, 1));
}

fn sample() -> impl Strategy<Value = Vec<f64>> {
    // Small integers make ties common; the fraction makes distinct values common too.
    prop::collection::vec(
        prop_oneof![
            (0_i32..12).prop_map(f64::from),
            (-1000.0_f64..1000.0).prop_map(|v| (v * 64.0).round() / 64.0),
        ],
        1..25,
    )
}

fn alternative() -> impl Strategy<Value = Alternative> {
    prop_oneof![
        Just(Alternative::TwoSided),
        Just(Alternative::Less),
        Just(Alternative::Greater)
    ]
}

fn method() -> impl Strategy<Value = MwuMethod> {
    prop_oneof![
        Just(MwuMethod::Auto),
        Just(MwuMethod::Exact),
        Just(MwuMethod::Asymptotic)
    ]
}

proptest! {
    #[test]
    fn u_statistics_add_up_and_p_is_a_probability(
        x in sample(), y in sample(), alt in alternative(), m in method(),
    ) {
        let xy = stats::mann_whitney_u(&x, &y, &options(alt, m)).expect("valid");
        let yx = stats::mann_whitney_u(&y, &x, &options(alt, m)).expect("valid");
        let pairs = (x.len() * y.len()) as f64;
        prop_assert_eq!(xy.u + yx.u, pairs);
        prop_assert!(xy.u >= 0.0 && xy.u <= pairs);
        prop_assert!((0.0..=1.0).contains(&xy.p_value), "p = {}", xy.p_value);
    }

    #[test]
    fn swapping_samples_mirrors_one_sided_p_values(x in sample(), y in sample(), m in method()) {
        let less = stats::mann_whitney_u(&x, &y, &options(Alternative::Less, m)).expect("valid");
        let greater =
            stats::mann_whitney_u(&y, &x, &options(Alternative::Greater, m)).expect("valid");
        prop_assert_eq!(less.p_value, greater.p_value);
        let two_xy = stats::mann_whitney_u(&x, &y, &options(Alternative::TwoSided, m)).expect("valid");
        let two_yx = stats::mann_whitney_u(&y, &x, &options(Alternative::TwoSided, m)).expect("valid");
        prop_assert_eq!(two_xy.p_value, two_yx.p_value);
        // The two-sided p-value is twice the smaller one-sided one (clipped at 1).
        let one_sided = stats::mann_whitney_u(&x, &y, &options(Alternative::Greater, m)).expect("valid");
        let smaller = less.p_value.min(one_sided.p_value);
        prop_assert!((two_xy.p_value - (2.0 * smaller).min(1.0)).abs() <= 1e-12);
    }

    #[test]
    fn hodges_lehmann_is_antisymmetric_and_inside_its_interval(
        x in sample(), y in sample(), confidence in 0.5_f64..0.999,
    ) {
        let xy = stats::hodges_lehmann(&x, &y, confidence).expect("valid");
        let yx = stats::hodges_lehmann(&y, &x, confidence).expect("valid");
        prop_assert!(xy.lower <= xy.estimate && xy.estimate <= xy.upper);
        prop_assert_eq!(xy.estimate, -yx.estimate);
        prop_assert_eq!((xy.lower, xy.upper), (-yx.upper, -yx.lower));
        // A higher confidence never gives a narrower interval.
        let wider = stats::hodges_lehmann(&x, &y, (confidence + 1.0) / 2.0).expect("valid");
        prop_assert!(wider.lower <= xy.lower && wider.upper >= xy.upper);
    }

    #[test]
    fn hodges_lehmann_matches_sorting_every_difference(
        x in sample(), y in sample(), confidence in 0.5_f64..0.999,
    ) {
        let mut d: Vec<f64> = x.iter().flat_map(|a| y.iter().map(move |b| a - b)).collect();
        d.sort_unstable_by(f64::total_cmp);
        let n = d.len();
        let median = if n % 2 == 1 { d[n / 2] } else { (d[n / 2 - 1] + d[n / 2]) / 2.0 };
        let hl = stats::hodges_lehmann(&x, &y, confidence).expect("valid");
        prop_assert_eq!(hl.estimate, median);
        prop_assert_eq!((hl.lower, hl.upper), (d[hl.k - 1], d[n - hl.k]));
    }

    #[test]
    fn mean_interval_is_centred_and_grows_with_confidence(
        values in prop::collection::vec(-1e6_f64..1e6, 2..50), confidence in 0.5_f64..0.99,
    ) {
        let ci = stats::mean_ci(&values, confidence).expect("valid");
        let wider = stats::mean_ci(&values, (confidence + 1.0) / 2.0).expect("valid");
        prop_assert!(ci.lower <= ci.estimate && ci.estimate <= ci.upper);
        let half = ci.upper - ci.estimate;
        prop_assert!((ci.estimate - ci.lower - half).abs() <= 1e-9 * half.abs().max(1e-9));
        prop_assert!(wider.lower <= ci.lower && wider.upper >= ci.upper);
    }

    #[test]
    fn t_quantile_inverts_the_cdf(p in 0.0005_f64..0.9995, df in 0.5_f64..5000.0) {
        let t = special::student_t_quantile(p, df);
        let back = special::student_t_cdf(t, df);
        prop_assert!((back - p).abs() <= 1e-12 * p.max(1.0 - p), "p {} df {} t {} back {}", p, df, t, back);
        prop_assert!((special::student_t_quantile(1.0 - p, df) + t).abs() <= 1e-9 * t.abs().max(1e-9));
    }

    #[test]
    fn normal_quantile_inverts_the_cdf(p in 1e-12_f64..1.0) {
        let x = special::normal_quantile(p);
        prop_assert!((special::normal_cdf(x) - p).abs() <= 1e-13 * p.min(1.0 - p).max(1e-300) + 1e-16);
    }
}
