//! KPIs per variant per interval: what went in and out, how much was reduced, whether
//! protected series came out untouched, how far per-metric totals drifted, how many known
//! anomalies were kept, and the processing cost.
//!
//! Per-metric totals compare like with like: gauges by the sum of their values, cumulative
//! series by the sum of their increases (a series seen for the first time contributes no
//! increase, on both sides), accumulated over the interval.

use std::time::Duration;

use hashbrown::{HashMap, HashSet};

use crate::processor::fold;

use crate::labelstats::{LabelStats, LabelStatsCollector, LabelStatsConfig};
use crate::model::{Batch, Series, SeriesId, SeriesIds, Sym};
use crate::processor::MetricCounts;
use crate::remote_write::encoded_series_len;
use crate::seen::{SeenTable, LOOKAHEAD};
use crate::selector::{any_matches, Selector};

/// Batches a series may stay unseen before the meter forgets it (as the fold trackers do).
const IDLE_BATCHES_BEFORE_EXPIRY: u64 = fold::DEFAULT_IDLE_BATCHES_BEFORE_EXPIRY;

/// One metric's total over an interval (see the module docs) and its distinct series.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MetricSum {
    pub total: f64,
    pub series: u64,
}

/// Per-metric totals of successive batches (see the module docs) and the distinct series
/// of the current interval, with one table operation per series: the table that turns
/// cumulative values into increases also counts distinct series (see [`SeenTable`]).
#[derive(Debug)]
pub struct MetricTotals {
    seen: SeenTable,
}

impl Default for MetricTotals {
    fn default() -> Self {
        Self {
            seen: SeenTable::new(IDLE_BATCHES_BEFORE_EXPIRY),
        }
    }
}

impl MetricTotals {
    /// Adds this batch's per-metric totals into `into`.
    pub fn observe(
        &mut self,
        batch: &Batch,
        into: &mut HashMap<Sym, MetricSum, ahash::RandomState>,
    ) {
        let ids: Vec<SeriesId> = batch.series.iter().map(Series::id).collect();
        self.observe_with_ids(batch, &ids, into);
    }

    /// Distinct series seen since the last [`Self::start_interval`].
    pub fn distinct_series(&self) -> u64 {
        self.seen.distinct_in_interval()
    }

    /// Series remembered (counted in this interval or not yet expired).
    pub fn remembered_series(&self) -> usize {
        self.seen.len()
    }

    /// Starts counting distinct series afresh (increases keep their state).
    pub fn start_interval(&mut self) {
        self.seen.start_interval();
    }

    /// Like [`Self::observe`] with the series ids already computed (`ids[i]` is the id of
    /// `batch.series[i]`).
    pub fn observe_with_ids(
        &mut self,
        batch: &Batch,
        ids: &[SeriesId],
        into: &mut HashMap<Sym, MetricSum, ahash::RandomState>,
    ) {
        self.observe_each_new(batch, ids, into, |_| {});
    }

    /// Like [`Self::observe_with_ids`], calling `on_new` with each series seen for the first
    /// time in this interval.
    pub fn observe_each_new(
        &mut self,
        batch: &Batch,
        ids: &[SeriesId],
        into: &mut HashMap<Sym, MetricSum, ahash::RandomState>,
        mut on_new: impl FnMut(&Series),
    ) {
        self.seen.start_batch();
        // The total of the metric of the current run of series (batches keep a metric's
        // series together): found by the interned name's address, not by hashing it.
        let mut run: Option<(&Sym, &mut MetricSum)> = None;
        let mut ahead = [0u64; LOOKAHEAD];
        for (chunk_series, chunk_ids) in batch.series.chunks(LOOKAHEAD).zip(ids.chunks(LOOKAHEAD)) {
            for (slot, id) in ahead.iter_mut().zip(chunk_ids) {
                *slot = id.0;
            }
            self.seen.prefetch(&ahead[..chunk_ids.len()]);
            for (series, id) in chunk_series.iter().zip(chunk_ids) {
                let Some(last) = series.last_sample() else {
                    continue;
                };
                let observation = self.seen.observe(id.0, series.is_cumulative(), last.value);
                let sum: &mut MetricSum = match run.take() {
                    Some((name, sum)) if std::sync::Arc::ptr_eq(name, &series.name) => sum,
                    _ => into.entry_ref(&*series.name).or_default(),
                };
                sum.total += observation.contribution;
                if observation.new_in_interval {
                    sum.series += 1;
                    on_new(series);
                }
                run = Some((&series.name, sum));
            }
        }
    }
}

/// The KPIs of one variant over one interval.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VariantKpis {
    /// Variant (pipeline) name.
    pub variant: String,
    /// Distinct input series in the interval.
    pub input_series: u64,
    /// Distinct output series in the interval.
    pub output_series: u64,
    /// Input samples.
    pub input_samples: u64,
    /// Output samples.
    pub output_samples: u64,
    /// Bytes of the input: the size of the input series and samples as uncompressed
    /// Prometheus remote write v1 protobuf (`WriteRequest.timeseries` entries, `__name__`
    /// label included; before snappy, without metadata), summed over the interval's batches.
    /// Computed from label and sample sizes, not by encoding (see
    /// [`crate::remote_write::encoded_series_len`]).
    pub input_bytes: u64,
    /// Bytes of the output, measured like [`Self::input_bytes`].
    pub output_bytes: u64,
    /// `100 × (1 − output_series / input_series)`.
    pub reduction_percent: f64,
    /// Protected input series (series × batches).
    pub protected_in: u64,
    /// Of those, found bit-identical in the output.
    pub protected_out: u64,
    /// Largest per-metric relative error of totals against the input.
    pub max_relative_error: f64,
    /// The metric with the largest error.
    pub worst_metric: Option<String>,
    /// Known anomalous series (series × batches) in the input.
    pub anomalies_in: u64,
    /// Of those, exported individually.
    pub anomalies_kept: u64,
    /// Processing time per input sample.
    pub ns_per_sample: f64,
    /// `(stage index, processor type, counts)` over the interval.
    pub processors: Vec<(usize, String, MetricCounts)>,
    /// Per metric, distinct input and output series (input order: most input series first;
    /// a metric the variant created has 0 input series).
    pub per_metric: Vec<MetricSeries>,
    /// Label statistics of the input, on the first variant of an interval that collected
    /// them (the input is the same for every variant).
    pub label_stats: Option<LabelStats>,
}

/// One metric's distinct series in and out of a variant over an interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricSeries {
    pub metric: String,
    pub input_series: u64,
    pub output_series: u64,
}

impl VariantKpis {
    /// Protected coverage in percent (100 when nothing was protected).
    pub fn protected_coverage_percent(&self) -> f64 {
        if self.protected_in == 0 {
            100.0
        } else {
            100.0 * self.protected_out as f64 / self.protected_in as f64
        }
    }

    /// Anomaly recall in percent (100 when there was none).
    pub fn anomaly_recall_percent(&self) -> f64 {
        if self.anomalies_in == 0 {
            100.0
        } else {
            100.0 * self.anomalies_kept as f64 / self.anomalies_in as f64
        }
    }
}

#[derive(Debug, Default)]
struct VariantAccum {
    name: String,
    output_samples: u64,
    output_bytes: u64,
    output_totals: MetricTotals,
    output_sums: HashMap<Sym, MetricSum, ahash::RandomState>,
    protected_out: u64,
    anomalies_kept: u64,
    elapsed: Duration,
}

/// Measures any number of variants fed the same input batches.
#[derive(Debug)]
pub struct KpiMeter {
    protect: Vec<Selector>,
    input_samples: u64,
    input_bytes: u64,
    input_totals: MetricTotals,
    input_sums: HashMap<Sym, MetricSum, ahash::RandomState>,
    label_stats: Option<LabelStatsCollector>,
    protected_in: u64,
    anomalies_in: u64,
    batch_protected: Vec<Series>,
    batch_anomalies: Vec<SeriesId>,
    /// Scratch: ids of the batch being recorded.
    ids: Vec<SeriesId>,
    variants: Vec<VariantAccum>,
}

impl KpiMeter {
    /// A meter for `variants`, checking series matching `protect` for identity.
    pub fn new(variants: &[&str], protect: Vec<Selector>) -> Self {
        Self {
            protect,
            input_samples: 0,
            input_bytes: 0,
            input_totals: MetricTotals::default(),
            input_sums: HashMap::default(),
            label_stats: None,
            protected_in: 0,
            anomalies_in: 0,
            batch_protected: Vec::new(),
            batch_anomalies: Vec::new(),
            ids: Vec::new(),
            variants: variants
                .iter()
                .map(|name| VariantAccum {
                    name: name.to_string(),
                    ..VariantAccum::default()
                })
                .collect(),
        }
    }

    /// Also collects label statistics of the input (see [`crate::labelstats`]).
    pub fn with_label_stats(mut self, config: LabelStatsConfig) -> Self {
        self.label_stats = Some(LabelStatsCollector::new(config));
        self
    }

    /// Records an input batch, with the ids of series known to be anomalous in it.
    pub fn record_input(&mut self, input: &Batch, anomalous: &[SeriesId]) {
        self.batch_protected.clear();
        self.ids.clear();
        let mut ids = SeriesIds::default();
        for series in &input.series {
            let id = ids.id(series);
            self.ids.push(id);
            self.input_samples += series.samples.len() as u64;
            self.input_bytes += encoded_series_len(series);
            if !self.protect.is_empty() && any_matches(&self.protect, series) {
                self.batch_protected.push(series.clone());
            }
        }
        self.protected_in += self.batch_protected.len() as u64;
        self.batch_anomalies.clear();
        self.batch_anomalies.extend_from_slice(anomalous);
        self.anomalies_in += anomalous.len() as u64;
        match self.label_stats.as_mut().filter(|c| c.collecting()) {
            Some(collector) => self.input_totals.observe_each_new(
                input,
                &self.ids,
                &mut self.input_sums,
                |series| collector.observe(series),
            ),
            None => self
                .input_totals
                .observe_with_ids(input, &self.ids, &mut self.input_sums),
        }
    }

    /// Records variant `index`'s output for the last input batch and its processing time.
    pub fn record_output(&mut self, index: usize, output: &Batch, elapsed: Duration) {
        let Some(variant) = self.variants.get_mut(index) else {
            return;
        };
        variant.elapsed += elapsed;
        // The few series to look for, so the output is scanned once without a full map.
        let mut protected: HashMap<SeriesId, &Series, ahash::RandomState> =
            self.batch_protected.iter().map(|s| (s.id(), s)).collect();
        let mut anomalies: HashSet<SeriesId, ahash::RandomState> =
            self.batch_anomalies.iter().copied().collect();
        self.ids.clear();
        let mut ids = SeriesIds::default();
        for series in &output.series {
            let id = ids.id(series);
            self.ids.push(id);
            variant.output_samples += series.samples.len() as u64;
            variant.output_bytes += encoded_series_len(series);
            if !protected.is_empty() {
                if let Some(input) = protected.get(&id) {
                    if input.same_bits(series) {
                        variant.protected_out += 1;
                        protected.remove(&id);
                    }
                }
            }
            if !anomalies.is_empty() && anomalies.remove(&id) {
                variant.anomalies_kept += 1;
            }
        }
        variant
            .output_totals
            .observe_with_ids(output, &self.ids, &mut variant.output_sums);
    }

    /// The KPIs of every variant since the last call; `processors` gives each variant's
    /// processor counts. Starts a new interval (cumulative trackers keep their state).
    pub fn finish_interval(
        &mut self,
        processors: &[Vec<(usize, String, MetricCounts)>],
    ) -> Vec<VariantKpis> {
        let input_series = self.input_totals.distinct_series();
        let mut label_stats = self.label_stats.as_mut().and_then(|c| c.finish_interval());
        let mut input_order: Vec<(&Sym, &MetricSum)> = self.input_sums.iter().collect();
        input_order.sort_by(|a, b| b.1.series.cmp(&a.1.series).then_with(|| a.0.cmp(b.0)));
        let mut result = Vec::with_capacity(self.variants.len());
        for (index, variant) in self.variants.iter_mut().enumerate() {
            let mut max_relative_error = 0.0f64;
            let mut worst_metric = None;
            for (metric, input) in &self.input_sums {
                let input_total = &input.total;
                let output_total = variant
                    .output_sums
                    .get(metric)
                    .map(|s| s.total)
                    .unwrap_or(0.0);
                let error = if *input_total == 0.0 && output_total == 0.0 {
                    0.0
                } else {
                    (output_total - input_total).abs() / input_total.abs().max(f64::MIN_POSITIVE)
                };
                if error > max_relative_error {
                    max_relative_error = error;
                    worst_metric = Some(metric.to_string());
                }
            }
            let output_series = variant.output_totals.distinct_series();
            let mut per_metric: Vec<MetricSeries> = input_order
                .iter()
                .map(|(metric, input)| MetricSeries {
                    metric: metric.to_string(),
                    input_series: input.series,
                    output_series: variant.output_sums.get(*metric).map_or(0, |s| s.series),
                })
                .collect();
            let mut created: Vec<MetricSeries> = variant
                .output_sums
                .iter()
                .filter(|(m, _)| !self.input_sums.contains_key(*m))
                .map(|(m, s)| MetricSeries {
                    metric: m.to_string(),
                    input_series: 0,
                    output_series: s.series,
                })
                .collect();
            created.sort_by(|a, b| a.metric.cmp(&b.metric));
            per_metric.extend(created);
            result.push(VariantKpis {
                variant: variant.name.clone(),
                input_series,
                output_series,
                input_samples: self.input_samples,
                output_samples: variant.output_samples,
                input_bytes: self.input_bytes,
                output_bytes: variant.output_bytes,
                reduction_percent: if input_series == 0 {
                    0.0
                } else {
                    100.0 * (1.0 - output_series as f64 / input_series as f64)
                },
                protected_in: self.protected_in,
                protected_out: variant.protected_out,
                max_relative_error,
                worst_metric,
                anomalies_in: self.anomalies_in,
                anomalies_kept: variant.anomalies_kept,
                ns_per_sample: if self.input_samples == 0 {
                    0.0
                } else {
                    variant.elapsed.as_nanos() as f64 / self.input_samples as f64
                },
                processors: processors.get(index).cloned().unwrap_or_default(),
                per_metric,
                label_stats: label_stats.take(),
            });
            variant.output_totals.start_interval();
            variant.output_samples = 0;
            variant.output_bytes = 0;
            variant.output_sums.clear();
            variant.protected_out = 0;
            variant.anomalies_kept = 0;
            variant.elapsed = Duration::ZERO;
        }
        self.input_totals.start_interval();
        self.input_samples = 0;
        self.input_bytes = 0;
        self.input_sums.clear();
        self.protected_in = 0;
        self.anomalies_in = 0;
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Label, Labels, MetricKind, Sample};

    fn gauge(pod: &str, v: f64) -> Series {
        Series::new(
            Sym::from("mem"),
            Labels::from_unsorted(vec![Label::new(Sym::from("pod"), Sym::from(pod))]),
            MetricKind::Gauge,
            vec![Sample::new(1, v)],
        )
    }

    #[test]
    fn identical_output_has_no_error_no_reduction_and_full_coverage() {
        let protect = vec![Selector::parse(r#"{pod="a"}"#).unwrap()];
        let mut meter = KpiMeter::new(&["baseline"], protect);
        let input = Batch::new(vec![gauge("a", 1.0), gauge("b", 2.0)]);
        meter.record_input(&input, &[gauge("b", 2.0).id()]);
        meter.record_output(0, &input, Duration::from_micros(2));
        let kpis = &meter.finish_interval(&[])[0];
        assert_eq!(kpis.reduction_percent, 0.0);
        assert_eq!(kpis.max_relative_error, 0.0);
        assert_eq!((kpis.protected_in, kpis.protected_out), (1, 1));
        assert_eq!((kpis.anomalies_in, kpis.anomalies_kept), (1, 1));
        assert_eq!(kpis.ns_per_sample, 1000.0);
    }

    #[test]
    fn folded_output_reports_reduction_error_and_missing_protected() {
        let protect = vec![Selector::parse(r#"{pod="a"}"#).unwrap()];
        let mut meter = KpiMeter::new(&["candidate"], protect);
        let input = Batch::new(vec![gauge("a", 1.0), gauge("b", 2.0)]);
        meter.record_input(&input, &[]);
        let output = Batch::new(vec![gauge("all", 2.7)]);
        meter.record_output(0, &output, Duration::ZERO);
        let kpis = &meter.finish_interval(&[])[0];
        assert_eq!(kpis.reduction_percent, 50.0);
        assert!((kpis.max_relative_error - 0.1).abs() < 1e-12);
        assert_eq!(kpis.protected_out, 0);
        assert_eq!(kpis.protected_coverage_percent(), 0.0);
    }

    #[test]
    fn bytes_are_the_uncompressed_remote_write_size_of_input_and_output() {
        let mut meter = KpiMeter::new(&["v"], Vec::new());
        let input = Batch::new(vec![gauge("a", 1.0), gauge("b", 2.0)]);
        let output = Batch::new(vec![gauge("all", 3.0)]);
        let encoded = |batch: &Batch| {
            let mut body = Vec::new();
            crate::remote_write::encode_write_request(&batch.series, &[], &mut body);
            body.len() as u64
        };
        for _ in 0..2 {
            meter.record_input(&input, &[]);
            meter.record_output(0, &output, Duration::ZERO);
        }
        let kpis = &meter.finish_interval(&[])[0];
        assert_eq!(kpis.input_bytes, 2 * encoded(&input));
        assert_eq!(kpis.output_bytes, 2 * encoded(&output));
        // The next interval counts afresh.
        meter.record_input(&input, &[]);
        meter.record_output(0, &input, Duration::ZERO);
        let kpis = &meter.finish_interval(&[])[0];
        assert_eq!(
            (kpis.input_bytes, kpis.output_bytes),
            (encoded(&input), encoded(&input))
        );
    }

    #[test]
    fn distinct_series_are_counted_once_per_interval_and_counters_by_increase() {
        let counter = |pod: &str, v: f64| {
            Series::new(
                Sym::from("requests_total"),
                Labels::from_unsorted(vec![Label::new(Sym::from("pod"), Sym::from(pod))]),
                MetricKind::Counter,
                vec![Sample::new(1, v)],
            )
        };
        let mut meter = KpiMeter::new(&["v"], Vec::new());
        for (a, b) in [(10.0, 5.0), (12.0, 9.0)] {
            let input = Batch::new(vec![counter("a", a), counter("b", b)]);
            meter.record_input(&input, &[]);
            meter.record_output(0, &Batch::new(vec![counter("a", a)]), Duration::ZERO);
        }
        let kpis = &meter.finish_interval(&[])[0];
        assert_eq!((kpis.input_series, kpis.output_series), (2, 1));
        assert_eq!(kpis.reduction_percent, 50.0);
        // Input increase 2 + 4, output 2: a third of the total is missing.
        assert!(
            (kpis.max_relative_error - 4.0 / 6.0).abs() < 1e-12,
            "{kpis:?}"
        );
        // The next interval counts afresh; increases continue from the last values.
        meter.record_input(&Batch::new(vec![counter("b", 10.0)]), &[]);
        meter.record_output(0, &Batch::new(vec![counter("b", 10.0)]), Duration::ZERO);
        let kpis = &meter.finish_interval(&[])[0];
        assert_eq!((kpis.input_series, kpis.output_series), (1, 1));
        assert!((kpis.max_relative_error - 1.0).abs() < 1e-12, "{kpis:?}");
    }
}
