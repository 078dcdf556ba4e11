//! phoenix-core's statistics against scipy: every number in `fixtures/stats.json` (written by
//! `fixtures/gen_stats.py`) must match to 1e-9 relative, or 1e-12 absolute where scipy's value
//! is exactly zero.

use phoenix_core::stats::{
    self, special, Alternative, Classification, JudgeConfig, MannWhitneyOptions, MwuMethod,
};
use serde_json::Value;

const REL: f64 = 1e-9;
const ABS_AT_ZERO: f64 = 1e-12;

fn fixtures() -> Value {
    let text = include_str!("fixtures/stats.json");
    serde_json::from_str(text).expect("stats.json parses")
}

/// A JSON number, `null` for NaN, or "inf"/"-inf".
fn num(v: &Value) -> f64 {
    match v {
        Value::Null => f64::NAN,
        Value::String(s) if s == "inf" => f64::INFINITY,
        Value::String(s) if s == "-inf" => f64::NEG_INFINITY,
        other => other
            .as_f64()
            .unwrap_or_else(|| panic!("not a number: {other}")),
    }
}

fn nums(v: &Value) -> Vec<f64> {
    v.as_array().expect("array").iter().map(num).collect()
}

/// The `x` and `y` samples of the pair a case names.
fn pair(data: &Value, case: &Value) -> (Vec<f64>, Vec<f64>) {
    let name = case["pair"].as_str().expect("pair name");
    let pair = &data["pairs"][name];
    assert!(pair.is_object(), "no pair named {name}");
    (nums(&pair["x"]), nums(&pair["y"]))
}

struct Checker {
    failures: Vec<String>,
    checked: usize,
}

impl Checker {
    fn new() -> Self {
        Self {
            failures: Vec::new(),
            checked: 0,
        }
    }

    fn close(&mut self, what: impl std::fmt::Display, actual: f64, expected: f64) {
        self.checked += 1;
        let ok = if expected.is_nan() {
            actual.is_nan()
        } else if expected.is_infinite() || expected == 0.0 {
            actual == expected || (expected == 0.0 && actual.abs() <= ABS_AT_ZERO)
        } else {
            (actual - expected).abs() <= REL * expected.abs()
        };
        if !ok {
            let rel = ((actual - expected) / expected).abs();
            self.failures.push(format!(
                "{what}: got {actual:e}, scipy {expected:e} (relative difference {rel:e})"
            ));
        }
    }

    fn finish(self, section: &str) {
        assert!(self.checked > 0, "{section}: nothing checked");
        assert!(
            self.failures.is_empty(),
            "{section}: {} of {} values differ from scipy:\n{}",
            self.failures.len(),
            self.checked,
            self.failures.join("\n")
        );
    }
}

#[test]
fn mann_whitney_matches_scipy() {
    let data = fixtures();
    let mut check = Checker::new();
    for case in data["mannwhitneyu"].as_array().expect("cases") {
        let (x, y) = pair(&data, case);
        let alternative = match case["alternative"].as_str().expect("alternative") {
            "two-sided" => Alternative::TwoSided,
            "less" => Alternative::Less,
            "greater" => Alternative::Greater,
            other => panic!("alternative {other}"),
        };
        let method = match case["method"].as_str().expect("method") {
            "auto" => MwuMethod::Auto,
            "exact" => MwuMethod::Exact,
            "asymptotic" => MwuMethod::Asymptotic,
            other => panic!("method {other}"),
        };
        let options = MannWhitneyOptions {
            alternative,
            method,
            use_continuity: case["use_continuity"].as_bool().expect("bool"),
        };
        let what = format!(
            "{} {} {} continuity={}",
            case["pair"], case["alternative"], case["method"], case["use_continuity"]
        );
        let result = stats::mann_whitney_u(&x, &y, &options).expect("valid input");
        check.close(format!("{what} U"), result.u, num(&case["statistic"]));
        check.close(format!("{what} p"), result.p_value, num(&case["pvalue"]));
    }
    check.finish("mannwhitneyu");
}

#[test]
fn hodges_lehmann_matches_numpy() {
    let data = fixtures();
    let mut check = Checker::new();
    for case in data["hodges_lehmann"].as_array().expect("cases") {
        let (x, y) = pair(&data, case);
        let confidence = num(&case["confidence"]);
        let what = format!("{} at {confidence}", case["pair"]);
        let hl = stats::hodges_lehmann(&x, &y, confidence).expect("valid input");
        check.close(
            format!("{what} estimate"),
            hl.estimate,
            num(&case["estimate"]),
        );
        check.close(format!("{what} lower"), hl.lower, num(&case["lower"]));
        check.close(format!("{what} upper"), hl.upper, num(&case["upper"]));
        check.close(format!("{what} k"), hl.k as f64, num(&case["k"]));
    }
    check.finish("hodges_lehmann");
}

#[test]
fn mean_interval_matches_scipy_t_interval() {
    let data = fixtures();
    let mut check = Checker::new();
    for case in data["t_interval"].as_array().expect("cases") {
        let values = nums(&case["values"]);
        let confidence = num(&case["confidence"]);
        let what = format!("{} at {confidence}", case["name"]);
        let ci = stats::mean_ci(&values, confidence).expect("valid input");
        check.close(format!("{what} mean"), ci.estimate, num(&case["mean"]));
        check.close(format!("{what} sem"), ci.std_error, num(&case["std_error"]));
        check.close(format!("{what} df"), ci.df, num(&case["df"]));
        check.close(format!("{what} lower"), ci.lower, num(&case["lower"]));
        check.close(format!("{what} upper"), ci.upper, num(&case["upper"]));
    }
    check.finish("t_interval");
}

#[test]
fn welch_interval_matches_scipy() {
    let data = fixtures();
    let mut check = Checker::new();
    for case in data["welch"].as_array().expect("cases") {
        let x = nums(&case["x"]);
        let y = nums(&case["y"]);
        let confidence = num(&case["confidence"]);
        let what = format!("{} at {confidence}", case["name"]);
        let ci = stats::welch_ci(&x, &y, confidence).expect("valid input");
        check.close(
            format!("{what} estimate"),
            ci.estimate,
            num(&case["estimate"]),
        );
        check.close(format!("{what} se"), ci.std_error, num(&case["std_error"]));
        check.close(format!("{what} df"), ci.df, num(&case["df"]));
        check.close(format!("{what} lower"), ci.lower, num(&case["lower"]));
        check.close(format!("{what} upper"), ci.upper, num(&case["upper"]));
        check.close(
            format!("{what} lower (t.ppf)"),
            ci.lower,
            num(&case["lower_ppf"]),
        );
        check.close(
            format!("{what} upper (t.ppf)"),
            ci.upper,
            num(&case["upper_ppf"]),
        );
    }
    check.finish("welch");
}

#[test]
fn quartiles_and_outliers_match_numpy() {
    let data = fixtures();
    let mut check = Checker::new();
    for (i, case) in data["quartiles"]
        .as_array()
        .expect("cases")
        .iter()
        .enumerate()
    {
        let values = nums(&case["values"]);
        let (q1, q3) = stats::quartiles(&values).expect("valid input");
        check.close(format!("case {i} q1"), q1, num(&case["q1"]));
        check.close(format!("case {i} q3"), q3, num(&case["q3"]));
        let kept = stats::remove_outliers_iqr(&values, 1.5).expect("valid input");
        assert_eq!(kept, nums(&case["kept"]), "case {i} kept values");
    }
    check.finish("quartiles");
}

#[test]
fn judge_matches_reference() {
    let data = fixtures();
    let mut check = Checker::new();
    for case in data["judge"].as_array().expect("cases") {
        let baseline = nums(&case["baseline"]);
        let candidate = nums(&case["candidate"]);
        let confidence = num(&case["confidence"]);
        let what = format!("{} at {confidence}", case["name"]);
        let config = JudgeConfig {
            confidence,
            ..JudgeConfig::default()
        };
        let result = stats::judge_metric(&baseline, &candidate, &config).expect("valid input");
        let expected = match case["classification"].as_str().expect("classification") {
            "high" => Classification::High,
            "low" => Classification::Low,
            "pass" => Classification::Pass,
            other => panic!("classification {other}"),
        };
        assert_eq!(result.classification, expected, "{what}: {}", result.reason);
        check.close(
            format!("{what} estimate"),
            result.estimate,
            num(&case["estimate"]),
        );
        check.close(format!("{what} lower"), result.lower, num(&case["lower"]));
        check.close(format!("{what} upper"), result.upper, num(&case["upper"]));
        check.close(format!("{what} p"), result.p_value, num(&case["p_value"]));
        check.close(
            format!("{what} ratio"),
            result.mean_ratio.unwrap_or(f64::NAN),
            num(&case["mean_ratio"]),
        );
        assert_eq!(result.baseline_kept as f64, num(&case["baseline_kept"]));
        assert_eq!(result.candidate_kept as f64, num(&case["candidate_kept"]));
    }
    check.finish("judge");
}

#[test]
fn special_functions_match_scipy() {
    let data = fixtures();
    let special_cases = &data["special"];
    let mut check = Checker::new();
    for case in special_cases["ndtr"].as_array().expect("cases") {
        let x = num(&case["x"]);
        check.close(
            format!("ndtr({x})"),
            special::normal_cdf(x),
            num(&case["value"]),
        );
    }
    for case in special_cases["ndtri"].as_array().expect("cases") {
        let p = num(&case["p"]);
        check.close(
            format!("ndtri({p})"),
            special::normal_quantile(p),
            num(&case["value"]),
        );
    }
    for case in special_cases["stdtr"].as_array().expect("cases") {
        let (df, t) = (num(&case["df"]), num(&case["t"]));
        check.close(
            format!("stdtr({df}, {t})"),
            special::student_t_cdf(t, df),
            num(&case["value"]),
        );
    }
    for case in special_cases["stdtrit"].as_array().expect("cases") {
        let (df, p) = (num(&case["df"]), num(&case["p"]));
        check.close(
            format!("stdtrit({df}, {p})"),
            special::student_t_quantile(p, df),
            num(&case["value"]),
        );
    }
    check.finish("special");
}
