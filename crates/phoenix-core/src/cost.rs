//! The cost model: named pricing presets turn active series, samples and bytes into money per
//! month and per year, before and after a reduction.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::experiment::FieldErrors;

/// Seconds in an average month (365.25 days / 12).
pub const SECONDS_PER_MONTH: f64 = 365.25 * 24.0 * 3600.0 / 12.0;

/// How a vendor (or your own storage) bills metrics. Every price is in `currency`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PricingPreset {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default = "default_currency")]
    pub currency: String,
    /// Price of one active series for a month.
    #[serde(default)]
    pub per_active_series_month: f64,
    /// Price of one million samples ingested.
    #[serde(default)]
    pub per_million_samples: f64,
    /// Price of one GB (10^9 bytes) ingested.
    #[serde(default)]
    pub per_gb: f64,
}

fn default_currency() -> String {
    "USD".into()
}

/// The presets a fresh installation starts with. Prices are illustrative list prices; edit
/// them (`PUT /api/v1/cost/presets`) to your contract's.
pub fn default_presets() -> Vec<PricingPreset> {
    vec![
        PricingPreset {
            name: "per-series".into(),
            description: "Billed by active series, as hosted Prometheus services do (8 USD per 1,000 active series a month)".into(),
            currency: default_currency(),
            per_active_series_month: 0.008,
            per_million_samples: 0.0,
            per_gb: 0.0,
        },
        PricingPreset {
            name: "custom-metrics".into(),
            description: "Billed per custom metric series, as APM vendors do (5 USD per 100 series a month)".into(),
            currency: default_currency(),
            per_active_series_month: 0.05,
            per_million_samples: 0.0,
            per_gb: 0.0,
        },
        PricingPreset {
            name: "ingest".into(),
            description: "Billed by volume ingested (0.10 USD per million samples, 0.50 USD per GB)".into(),
            currency: default_currency(),
            per_active_series_month: 0.0,
            per_million_samples: 0.10,
            per_gb: 0.50,
        },
    ]
}

pub const MAX_PRESETS: usize = 100;

/// Validates a whole set of presets (as `PUT /api/v1/cost/presets` replaces them all).
pub fn validate_presets(presets: &[PricingPreset]) -> Result<(), FieldErrors> {
    let mut e = FieldErrors::default();
    if presets.is_empty() {
        e.push("presets", "must hold at least one preset");
    }
    if presets.len() > MAX_PRESETS {
        e.push(
            "presets",
            format!("must hold at most {MAX_PRESETS} presets"),
        );
    }
    let mut seen = std::collections::HashSet::new();
    for (i, p) in presets.iter().enumerate() {
        let path = format!("presets[{i}]");
        let name_ok = !p.name.is_empty()
            && p.name.len() <= 64
            && p.name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
        if !name_ok {
            e.push(
                format!("{path}.name"),
                "must be 1 to 64 characters of letters, digits, '-', '_' or '.'",
            );
        } else if !seen.insert(p.name.as_str()) {
            e.push(
                format!("{path}.name"),
                format!("`{}` is used twice", p.name),
            );
        }
        if p.description.chars().count() > 1000 {
            e.push(
                format!("{path}.description"),
                "must be at most 1000 characters",
            );
        }
        if p.currency.is_empty() || p.currency.len() > 8 {
            e.push(format!("{path}.currency"), "must be 1 to 8 characters");
        }
        for (field, v) in [
            ("per_active_series_month", p.per_active_series_month),
            ("per_million_samples", p.per_million_samples),
            ("per_gb", p.per_gb),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                e.push(format!("{path}.{field}"), "must be a number of at least 0");
            }
        }
    }
    e.into_result()
}

/// What a stream of metrics amounts to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Usage {
    pub active_series: f64,
    pub samples_per_second: f64,
    pub bytes_per_second: f64,
}

/// The monthly bill of one usage under one preset, itemised.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Bill {
    pub series: f64,
    pub samples: f64,
    pub bytes: f64,
    pub monthly: f64,
    pub yearly: f64,
}

impl PricingPreset {
    pub fn bill(&self, u: &Usage) -> Bill {
        let series = u.active_series * self.per_active_series_month;
        let samples = u.samples_per_second * SECONDS_PER_MONTH / 1e6 * self.per_million_samples;
        let bytes = u.bytes_per_second * SECONDS_PER_MONTH / 1e9 * self.per_gb;
        let monthly = series + samples + bytes;
        Bill {
            series,
            samples,
            bytes,
            monthly,
            yearly: monthly * 12.0,
        }
    }
}

/// Before and after, and what is saved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CostComparison {
    pub preset: String,
    pub currency: String,
    pub before: Bill,
    pub after: Bill,
    pub savings_monthly: f64,
    pub savings_yearly: f64,
    pub savings_percent: f64,
}

pub fn compare(preset: &PricingPreset, before: &Usage, after: &Usage) -> CostComparison {
    let b = preset.bill(before);
    let a = preset.bill(after);
    let saved = b.monthly - a.monthly;
    CostComparison {
        preset: preset.name.clone(),
        currency: preset.currency.clone(),
        before: b,
        after: a,
        savings_monthly: saved,
        savings_yearly: saved * 12.0,
        savings_percent: if b.monthly > 0.0 {
            saved / b.monthly * 100.0
        } else {
            0.0
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bill_adds_series_samples_and_bytes() {
        let p = PricingPreset {
            name: "t".into(),
            description: String::new(),
            currency: "USD".into(),
            per_active_series_month: 0.01,
            per_million_samples: 0.5,
            per_gb: 2.0,
        };
        let u = Usage {
            active_series: 1000.0,
            samples_per_second: 1e6 / SECONDS_PER_MONTH,
            bytes_per_second: 1e9 / SECONDS_PER_MONTH,
        };
        let b = p.bill(&u);
        assert!((b.series - 10.0).abs() < 1e-9);
        assert!((b.samples - 0.5).abs() < 1e-9);
        assert!((b.bytes - 2.0).abs() < 1e-9);
        assert!((b.yearly - 12.0 * 12.5).abs() < 1e-9);
    }

    #[test]
    fn savings_are_before_minus_after() {
        let p = &default_presets()[0];
        let before = Usage {
            active_series: 100_000.0,
            ..Default::default()
        };
        let after = Usage {
            active_series: 15_000.0,
            ..Default::default()
        };
        let c = compare(p, &before, &after);
        assert!((c.savings_monthly - 85_000.0 * 0.008).abs() < 1e-6);
        assert!((c.savings_percent - 85.0).abs() < 1e-9);
    }

    #[test]
    fn presets_are_validated_with_paths() {
        let mut p = default_presets();
        p[1].name = p[0].name.clone();
        p[2].per_gb = -1.0;
        let e = validate_presets(&p).unwrap_err();
        let fields: Vec<&str> = e.0.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(fields, vec!["presets[1].name", "presets[2].per_gb"]);
        assert!(validate_presets(&[]).is_err());
        assert!(validate_presets(&default_presets()).is_ok());
    }
}
