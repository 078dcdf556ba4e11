//! Prometheus `relabel_configs` with Prometheus' semantics, so existing rules paste in.
//!
//! Actions: replace, keep, drop, keepequal, dropequal, hashmod, labelmap, labeldrop,
//! labelkeep, lowercase, uppercase. Regexes are anchored (`^(?s:...)$`), the separator
//! defaults to `;`, the regex to `(.*)`, the replacement to `$1`; `$1`/`${1}`/`${name}`
//! expand like Go's `Regexp.Expand`. Setting a label to the empty string removes it.

use std::borrow::Cow;
use std::sync::OnceLock;

use md5::{Digest, Md5};
use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::model::{Labels, Series, Sym, METRIC_NAME_LABEL};
use crate::selector::anchored_regex;

/// A relabel action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RelabelAction {
    /// Set `target_label` to `replacement` expanded with the regex groups.
    #[default]
    Replace,
    /// Drop the series unless the joined source values match.
    Keep,
    /// Drop the series when the joined source values match.
    Drop,
    /// Keep the series only when the joined source values equal `target_label`'s value.
    KeepEqual,
    /// Drop the series when the joined source values equal `target_label`'s value.
    DropEqual,
    /// Set `target_label` to md5(joined source values) mod `modulus`.
    HashMod,
    /// Copy labels whose name matches to the name given by `replacement`.
    LabelMap,
    /// Remove labels whose name matches.
    LabelDrop,
    /// Remove labels whose name does not match.
    LabelKeep,
    /// Set `target_label` to the lowercased joined source values.
    Lowercase,
    /// Set `target_label` to the uppercased joined source values.
    Uppercase,
}

fn default_separator() -> String {
    ";".to_string()
}
fn default_regex() -> String {
    "(.*)".to_string()
}
fn default_replacement() -> String {
    "$1".to_string()
}

/// One relabel rule as written in YAML (Prometheus field names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelabelConfig {
    /// Labels whose values are joined with `separator`.
    #[serde(default)]
    pub source_labels: Vec<String>,
    /// Separator between source values.
    #[serde(default = "default_separator")]
    pub separator: String,
    /// Target label (may contain `$1` for `replace`).
    #[serde(default)]
    pub target_label: String,
    /// Regex, anchored on both ends.
    #[serde(default = "default_regex")]
    pub regex: String,
    /// Modulus for `hashmod`.
    #[serde(default)]
    pub modulus: u64,
    /// Replacement template.
    #[serde(default = "default_replacement")]
    pub replacement: String,
    /// Action.
    #[serde(default)]
    pub action: RelabelAction,
}

impl Default for RelabelConfig {
    fn default() -> Self {
        Self {
            source_labels: Vec::new(),
            separator: default_separator(),
            target_label: String::new(),
            regex: default_regex(),
            modulus: 0,
            replacement: default_replacement(),
            action: RelabelAction::Replace,
        }
    }
}

/// A relabel rule that failed validation: `(field, message)`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct RelabelError {
    /// The offending field.
    pub field: &'static str,
    /// What is wrong.
    pub message: String,
}

fn relabel_target_regex() -> &'static Regex {
    static TARGET: OnceLock<Regex> = OnceLock::new();
    TARGET.get_or_init(|| {
        Regex::new(r"^(?:(?:[a-zA-Z_]|\$(?:\{\w+\}|\w+))+\w*)+$")
            .expect("constant target-label regex compiles")
    })
}

/// Whether `name` is a valid (legacy) Prometheus label name.
pub fn is_valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A validated, compiled relabel rule.
#[derive(Debug, Clone)]
pub struct RelabelRule {
    config: RelabelConfig,
    regex: Regex,
    /// Whether the regex matches the name `__name__` (for `labeldrop`/`labelkeep`).
    name_label_matches: bool,
    /// The regex as a set of literal names when it is only that (`pod|instance`, the usual
    /// `labeldrop`/`labelkeep`): anchored, it matches exactly these strings, and comparing
    /// a label name with a few strings is cheaper than any regex or cache lookup.
    literal_names: Option<Vec<String>>,
}

/// `a|b|c` of plain names (letters, digits, `_`, `:`) as its alternatives.
fn literal_alternatives(pattern: &str) -> Option<Vec<String>> {
    let names: Vec<String> = pattern.split('|').map(str::to_string).collect();
    let plain = |n: &String| {
        !n.is_empty()
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
    };
    names.iter().all(plain).then_some(names)
}

impl RelabelRule {
    /// Whether the (anchored) regex matches a label name.
    #[inline]
    fn matches_name(&self, name: &str) -> bool {
        match &self.literal_names {
            // Length and first byte decide for most names before any byte comparison.
            Some(names) => names.iter().any(|n| {
                n.len() == name.len()
                    && n.as_bytes().first() == name.as_bytes().first()
                    && n == name
            }),
            None => self.regex.is_match(name),
        }
    }
}

impl RelabelRule {
    /// Validates and compiles one rule, with the checks Prometheus applies.
    pub fn new(config: RelabelConfig) -> Result<Self, RelabelError> {
        use RelabelAction::*;
        let regex = anchored_regex(&config.regex).map_err(|e| RelabelError {
            field: "regex",
            message: format!("invalid regex {:?}: {e}", config.regex),
        })?;
        let err = |field, message: String| Err(RelabelError { field, message });
        if config.action == HashMod && config.modulus == 0 {
            return err("modulus", "must be greater than 0 for hashmod".into());
        }
        let needs_target = matches!(
            config.action,
            Replace | HashMod | Lowercase | Uppercase | KeepEqual | DropEqual
        );
        if needs_target && config.target_label.is_empty() {
            return err(
                "target_label",
                format!("required for action {:?}", config.action),
            );
        }
        if config.action == Replace
            && !config.target_label.contains('$')
            && !is_valid_label_name(&config.target_label)
        {
            return err(
                "target_label",
                format!("{:?} is not a valid label name", config.target_label),
            );
        }
        if config.action == Replace && !relabel_target_regex().is_match(&config.target_label) {
            return err(
                "target_label",
                format!("{:?} is invalid for replace action", config.target_label),
            );
        }
        if matches!(
            config.action,
            Lowercase | Uppercase | HashMod | KeepEqual | DropEqual
        ) && !is_valid_label_name(&config.target_label)
        {
            return err(
                "target_label",
                format!("{:?} is not a valid label name", config.target_label),
            );
        }
        if matches!(config.action, KeepEqual | DropEqual) && config.regex != default_regex() {
            return err("regex", "keepequal and dropequal take no regex".into());
        }
        if config.action == LabelMap && !relabel_target_regex().is_match(&config.replacement) {
            return err(
                "replacement",
                format!("{:?} is invalid for labelmap", config.replacement),
            );
        }
        if matches!(config.action, LabelDrop | LabelKeep)
            && (!config.source_labels.is_empty()
                || !config.target_label.is_empty()
                || config.modulus != 0
                || config.separator != default_separator()
                || config.replacement != default_replacement())
        {
            return err(
                "action",
                format!(
                    "{:?} takes only a regex (no source_labels, target_label, modulus, separator or replacement)",
                    config.action
                ),
            );
        }
        let name_label_matches = regex.is_match(METRIC_NAME_LABEL);
        let literal_names = literal_alternatives(&config.regex);
        Ok(Self {
            config,
            regex,
            name_label_matches,
            literal_names,
        })
    }

    /// The rule's configuration.
    pub fn config(&self) -> &RelabelConfig {
        &self.config
    }
}

/// A mutable label set including `__name__`, sorted by name, used while relabeling.
/// Borrows the strings it was built from; only the labels rules write are owned.
#[derive(Debug, Default, Clone)]
pub struct LabelBuilder<'a> {
    labels: Vec<(Cow<'a, str>, Cow<'a, str>)>,
}

impl<'a> LabelBuilder<'a> {
    /// Builds from `(name, value)` pairs.
    pub fn from_pairs(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut labels: Vec<(Cow<'a, str>, Cow<'a, str>)> = pairs
            .into_iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(n, v)| (Cow::Borrowed(n), Cow::Borrowed(v)))
            .collect();
        labels.sort_by(|a, b| a.0.cmp(&b.0));
        labels.dedup_by(|later, earlier| {
            if later.0 == earlier.0 {
                std::mem::swap(&mut earlier.1, &mut later.1);
                true
            } else {
                false
            }
        });
        Self { labels }
    }

    /// Builds from a series (its name becomes `__name__`).
    pub fn from_series(series: &'a Series) -> Self {
        let mut labels = Vec::with_capacity(series.labels.len() + 1);
        let mut name_pending = true;
        for l in series.labels.iter() {
            if name_pending && l.name > METRIC_NAME_LABEL {
                labels.push((
                    Cow::Borrowed(METRIC_NAME_LABEL),
                    Cow::Borrowed(&*series.name),
                ));
                name_pending = false;
            }
            labels.push((Cow::Borrowed(l.name), Cow::Borrowed(l.value)));
        }
        if name_pending {
            labels.push((
                Cow::Borrowed(METRIC_NAME_LABEL),
                Cow::Borrowed(&*series.name),
            ));
        }
        Self { labels }
    }

    /// Value of `name`, empty when absent. A scan with the length compared first: a
    /// series has a dozen labels, and most names differ in length.
    pub fn get(&self, name: &str) -> &str {
        self.labels
            .iter()
            .find(|(n, _)| n.len() == name.len() && **n == *name)
            .map_or("", |(_, v)| &**v)
    }

    /// Sets `name` (removes it when `value` is empty).
    pub fn set(&mut self, name: Cow<'a, str>, value: Cow<'a, str>) {
        match self.labels.binary_search_by(|(n, _)| n.cmp(&name)) {
            Ok(i) if value.is_empty() => {
                self.labels.remove(i);
            }
            Ok(i) => self.labels[i].1 = value,
            Err(_) if value.is_empty() => {}
            Err(i) => self.labels.insert(i, (name, value)),
        }
    }

    /// Removes `name`.
    pub fn delete(&mut self, name: &str) {
        if let Ok(i) = self.labels.binary_search_by(|(n, _)| (**n).cmp(name)) {
            self.labels.remove(i);
        }
    }

    /// The labels, sorted by name.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.labels.iter().map(|(n, v)| (&**n, &**v))
    }

    /// The metric name (`__name__`) and the other labels, or `None` when `__name__` is
    /// gone.
    pub fn build(&self) -> Option<(&str, Labels)> {
        let name = self.get(METRIC_NAME_LABEL);
        if name.is_empty() {
            return None;
        }
        // Sorted, unique and without empty values: kept so by `from_pairs` and `set`.
        Some((
            name,
            Labels::from_sorted_unique(
                self.labels
                    .iter()
                    .filter(|(n, _)| *n != METRIC_NAME_LABEL)
                    .map(|(n, v)| (&**n, &**v)),
            ),
        ))
    }
}

fn join_sources(rule: &RelabelConfig, labels: &LabelBuilder<'_>, out: &mut String) {
    out.clear();
    for (i, name) in rule.source_labels.iter().enumerate() {
        if i > 0 {
            out.push_str(&rule.separator);
        }
        out.push_str(labels.get(name));
    }
}

/// Remembers, per rule, whether its regex matched a label name. Label names are few, so
/// `labeldrop`/`labelkeep`/`labelmap` with a real regex stop running it per series (rules
/// whose regex is a list of names compare strings instead, see [`RelabelRule`]).
#[derive(Debug, Default)]
pub struct NameMatchCache {
    per_rule: Vec<hashbrown::HashMap<Box<str>, bool, ahash::RandomState>>,
}

/// Names remembered per rule before its cache starts over.
const NAME_MATCH_CACHE_CAPACITY: usize = 10_000;

impl NameMatchCache {
    #[inline]
    fn matches(&mut self, rule_index: usize, rule: &RelabelRule, name: &str) -> bool {
        if rule.literal_names.is_some() {
            return rule.matches_name(name);
        }
        if self.per_rule.len() <= rule_index {
            self.per_rule.resize_with(rule_index + 1, Default::default);
        }
        let Some(cache) = self.per_rule.get_mut(rule_index) else {
            return rule.matches_name(name);
        };
        if let Some(matched) = cache.get(name) {
            return *matched;
        }
        if cache.len() >= NAME_MATCH_CACHE_CAPACITY {
            cache.clear();
        }
        let matched = rule.matches_name(name);
        cache.insert(Box::from(name), matched);
        matched
    }
}

/// Applies `rules` in order. Returns false when the series must be dropped.
pub fn process(rules: &[RelabelRule], labels: &mut LabelBuilder<'_>) -> bool {
    process_cached(rules, labels, &mut NameMatchCache::default())
}

/// [`process`] with a name-match cache kept across series.
pub fn process_cached(
    rules: &[RelabelRule],
    labels: &mut LabelBuilder<'_>,
    cache: &mut NameMatchCache,
) -> bool {
    use RelabelAction::*;
    let mut value = String::new();
    for (rule_index, rule) in rules.iter().enumerate() {
        let cfg = &rule.config;
        if !matches!(cfg.action, LabelDrop | LabelKeep | LabelMap) {
            join_sources(cfg, labels, &mut value);
        }
        match cfg.action {
            Drop => {
                if rule.regex.is_match(&value) {
                    return false;
                }
            }
            Keep => {
                if !rule.regex.is_match(&value) {
                    return false;
                }
            }
            DropEqual => {
                if labels.get(&cfg.target_label) == value {
                    return false;
                }
            }
            KeepEqual => {
                if labels.get(&cfg.target_label) != value {
                    return false;
                }
            }
            Replace => {
                let Some(captures) = rule.regex.captures(&value) else {
                    continue;
                };
                let mut target = String::new();
                captures.expand(&cfg.target_label, &mut target);
                if !is_valid_label_name(&target) {
                    continue;
                }
                let mut result = String::new();
                captures.expand(&cfg.replacement, &mut result);
                if result.is_empty() {
                    labels.delete(&target);
                } else {
                    labels.set(Cow::Owned(target), Cow::Owned(result));
                }
            }
            Lowercase => {
                let lowered = value.to_lowercase();
                labels.set(Cow::Owned(cfg.target_label.clone()), Cow::Owned(lowered));
            }
            Uppercase => {
                let uppered = value.to_uppercase();
                labels.set(Cow::Owned(cfg.target_label.clone()), Cow::Owned(uppered));
            }
            HashMod => {
                let digest = Md5::digest(value.as_bytes());
                let mut tail = [0u8; 8];
                tail.copy_from_slice(&digest[8..16]);
                let modulo = u64::from_be_bytes(tail) % cfg.modulus;
                labels.set(
                    Cow::Owned(cfg.target_label.clone()),
                    Cow::Owned(modulo.to_string()),
                );
            }
            LabelMap => {
                let mut mapped: Vec<(String, String)> = Vec::new();
                for (name, label_value) in labels.pairs() {
                    if let Some(captures) = rule.regex.captures(name) {
                        let mut new_name = String::new();
                        captures.expand(&cfg.replacement, &mut new_name);
                        mapped.push((new_name, label_value.to_string()));
                    }
                }
                for (name, label_value) in mapped {
                    labels.set(Cow::Owned(name), Cow::Owned(label_value));
                }
            }
            LabelDrop => labels
                .labels
                .retain(|(name, _)| !cache.matches(rule_index, rule, name)),
            LabelKeep => labels
                .labels
                .retain(|(name, _)| cache.matches(rule_index, rule, name)),
        }
    }
    true
}

/// Relabels a series in place. Returns false when it must be dropped (a rule dropped it
/// or its metric name was removed).
pub fn relabel_series(rules: &[RelabelRule], series: &mut Series) -> bool {
    relabel_series_cached(rules, series, &mut NameMatchCache::default())
}

/// [`relabel_series`] with a name-match cache kept across series.
pub fn relabel_series_cached(
    rules: &[RelabelRule],
    series: &mut Series,
    cache: &mut NameMatchCache,
) -> bool {
    if rules.iter().all(|r| {
        matches!(
            r.config.action,
            RelabelAction::LabelDrop | RelabelAction::LabelKeep
        )
    }) {
        return drop_or_keep_labels_in_place(rules, series, cache);
    }
    let (name, labels) = {
        let mut builder = LabelBuilder::from_series(series);
        if !process_cached(rules, &mut builder, cache) {
            return false;
        }
        let Some((name, labels)) = builder.build() else {
            return false;
        };
        let name = (name != &*series.name).then(|| Sym::from(name));
        (name, labels)
    };
    if let Some(name) = name {
        series.name = name;
    }
    series.labels = labels;
    true
}

/// `labeldrop`/`labelkeep` only: the same result as the general path, computed on the
/// series' own sorted labels without building a [`LabelBuilder`] (no allocation). The
/// `__name__` pseudo-label is checked by name once per rule: removing it drops the
/// series, as in the general path.
fn drop_or_keep_labels_in_place(
    rules: &[RelabelRule],
    series: &mut Series,
    cache: &mut NameMatchCache,
) -> bool {
    for (rule_index, rule) in rules.iter().enumerate() {
        let drop_matching = rule.config.action == RelabelAction::LabelDrop;
        if rule.name_label_matches == drop_matching {
            return false;
        }
        series
            .labels
            .retain_names(|name| cache.matches(rule_index, rule, name) != drop_matching);
    }
    true
}

#[cfg(test)]
mod tests {
    //! Cases taken from the behaviour Prometheus documents and tests for
    //! `relabel_configs` (model/relabel in the Prometheus repository).
    use super::*;

    fn labels<'a>(pairs: &[(&'a str, &'a str)]) -> LabelBuilder<'a> {
        LabelBuilder::from_pairs(pairs.iter().copied())
    }

    fn sym(value: &str) -> Sym {
        Sym::from(value)
    }

    fn pairs(builder: &LabelBuilder) -> Vec<(String, String)> {
        builder
            .pairs()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    fn expect(input: &[(&str, &str)], rules: Vec<RelabelConfig>, output: Option<&[(&str, &str)]>) {
        let rules: Vec<RelabelRule> = rules
            .into_iter()
            .map(|c| RelabelRule::new(c).unwrap())
            .collect();
        let mut builder = labels(input);
        let kept = process(&rules, &mut builder);
        match output {
            None => assert!(!kept, "expected drop, got {:?}", pairs(&builder)),
            Some(want) => {
                assert!(kept, "expected keep");
                assert_eq!(pairs(&builder), pairs(&labels(want)));
            }
        }
    }

    fn rule(
        source: &[&str],
        regex: &str,
        target: &str,
        replacement: &str,
        action: RelabelAction,
    ) -> RelabelConfig {
        RelabelConfig {
            source_labels: source.iter().map(|s| s.to_string()).collect(),
            regex: if regex.is_empty() {
                default_regex()
            } else {
                regex.to_string()
            },
            target_label: target.to_string(),
            replacement: if replacement.is_empty() {
                default_replacement()
            } else {
                replacement.to_string()
            },
            action,
            ..RelabelConfig::default()
        }
    }

    use RelabelAction::*;

    #[test]
    fn replace_expands_braced_groups() {
        expect(
            &[("a", "foo"), ("b", "bar"), ("c", "baz")],
            vec![rule(&["a"], "f(.*)", "d", "ch${1}-ch${1}", Replace)],
            Some(&[("a", "foo"), ("b", "bar"), ("c", "baz"), ("d", "choo-choo")]),
        );
    }

    #[test]
    fn replace_joins_sources_with_separator_and_chains() {
        expect(
            &[("a", "foo"), ("b", "bar"), ("c", "baz")],
            vec![
                rule(&["a", "b"], "f(.*);(.*)r", "a", "b${1}${2}m", Replace),
                rule(&["c", "a"], "(b).*b(.*)ba(.*)", "d", "$1$2$2$3", Replace),
            ],
            Some(&[("a", "boobam"), ("b", "bar"), ("c", "baz"), ("d", "boooom")]),
        );
    }

    #[test]
    fn drop_stops_processing_on_match() {
        expect(
            &[("a", "foo")],
            vec![
                rule(&["a"], ".*o.*", "", "", Drop),
                rule(&["a"], "f(.*)", "d", "ch$1-ch$1", Replace),
            ],
            None,
        );
    }

    #[test]
    fn regexes_are_anchored() {
        // `f|o` does not match "foo" once anchored, so nothing is dropped.
        expect(
            &[("a", "foo")],
            vec![rule(&["a"], "f|o", "", "", Drop)],
            Some(&[("a", "foo")]),
        );
        expect(
            &[("a", "abc")],
            vec![rule(&["a"], ".*(b).*", "d", "$1", Replace)],
            Some(&[("a", "abc"), ("d", "b")]),
        );
    }

    #[test]
    fn keep_drops_series_that_do_not_match() {
        expect(
            &[("a", "foo")],
            vec![rule(&["a"], "no-match", "", "", Keep)],
            None,
        );
        expect(
            &[("a", "foo")],
            vec![rule(&["a"], "f.*", "", "", Keep)],
            Some(&[("a", "foo")]),
        );
    }

    #[test]
    fn replace_without_match_changes_nothing() {
        expect(
            &[("a", "boo")],
            vec![rule(&["a"], "f", "b", "bar", Replace)],
            Some(&[("a", "boo")]),
        );
    }

    #[test]
    fn hashmod_matches_prometheus_values() {
        let mut r = rule(&["c"], "", "d", "", HashMod);
        r.modulus = 1000;
        expect(
            &[("a", "foo"), ("b", "bar"), ("c", "baz")],
            vec![r.clone()],
            Some(&[("a", "foo"), ("b", "bar"), ("c", "baz"), ("d", "976")]),
        );
        let mut r = rule(&["a"], "", "b", "", HashMod);
        r.modulus = 1000;
        expect(
            &[("a", "foo\nbar")],
            vec![r],
            Some(&[("a", "foo\nbar"), ("b", "734")]),
        );
    }

    #[test]
    fn labelmap_copies_matching_labels() {
        expect(
            &[("a", "foo"), ("b1", "bar"), ("b2", "baz")],
            vec![rule(&[], "(b.*)", "", "bar_${1}", LabelMap)],
            Some(&[
                ("a", "foo"),
                ("b1", "bar"),
                ("b2", "baz"),
                ("bar_b1", "bar"),
                ("bar_b2", "baz"),
            ]),
        );
        expect(
            &[
                ("a", "foo"),
                ("__meta_my_bar", "aaa"),
                ("__meta_my_baz", "bbb"),
                ("__meta_other", "ccc"),
            ],
            vec![rule(&[], "__meta_(my.*)", "", "${1}", LabelMap)],
            Some(&[
                ("a", "foo"),
                ("__meta_my_bar", "aaa"),
                ("__meta_my_baz", "bbb"),
                ("__meta_other", "ccc"),
                ("my_bar", "aaa"),
                ("my_baz", "bbb"),
            ]),
        );
    }

    #[test]
    fn templated_target_labels_expand_and_invalid_ones_are_skipped() {
        expect(
            &[("a", "some-name-value")],
            vec![rule(
                &["a"],
                "some-([^-]+)-([^,]+)",
                "${1}",
                "${2}",
                Replace,
            )],
            Some(&[("a", "some-name-value"), ("name", "value")]),
        );
        // Empty replacement deletes the (absent) target.
        expect(
            &[("a", "some-name-value")],
            vec![rule(
                &["a"],
                "some-([^-]+)-([^,]+)",
                "${1}",
                "${3}",
                Replace,
            )],
            Some(&[("a", "some-name-value")]),
        );
        // A target that expands to the empty string is invalid: skip.
        expect(
            &[("a", "some-name-0")],
            vec![
                rule(&["a"], "some-([^-]+)-([^,]+)", "${3}", "${1}", Replace),
                rule(&["a"], "some-([^-]+)(-[^,]+)", "${3}", "${1}", Replace),
            ],
            Some(&[("a", "some-name-0")]),
        );
    }

    #[test]
    fn labeldrop_and_labelkeep_filter_label_names() {
        expect(
            &[("a", "foo"), ("b1", "bar"), ("b2", "baz")],
            vec![rule(&[], "(b.*)", "", "", LabelKeep)],
            Some(&[("b1", "bar"), ("b2", "baz")]),
        );
        expect(
            &[("a", "foo"), ("b1", "bar"), ("b2", "baz")],
            vec![rule(&[], "(b.*)", "", "", LabelDrop)],
            Some(&[("a", "foo")]),
        );
    }

    #[test]
    fn lowercase_and_uppercase_set_the_target() {
        expect(
            &[("foo", "bAr123Foo")],
            vec![
                rule(&["foo"], "", "foo_uppercase", "", Uppercase),
                rule(&["foo"], "", "foo_lowercase", "", Lowercase),
            ],
            Some(&[
                ("foo", "bAr123Foo"),
                ("foo_lowercase", "bar123foo"),
                ("foo_uppercase", "BAR123FOO"),
            ]),
        );
    }

    #[test]
    fn keepequal_and_dropequal_compare_with_the_target() {
        let input = [
            ("__tmp_port", "1234"),
            ("__port1", "1234"),
            ("__port2", "5678"),
        ];
        expect(
            &input,
            vec![rule(&["__tmp_port"], "", "__port1", "", KeepEqual)],
            Some(&input),
        );
        expect(
            &input,
            vec![rule(&["__tmp_port"], "", "__port1", "", DropEqual)],
            None,
        );
        expect(
            &input,
            vec![rule(&["__tmp_port"], "", "__port2", "", DropEqual)],
            Some(&input),
        );
        expect(
            &input,
            vec![rule(&["__tmp_port"], "", "__port2", "", KeepEqual)],
            None,
        );
    }

    #[test]
    fn validation_refuses_what_prometheus_refuses() {
        assert_eq!(
            RelabelRule::new(rule(&["a"], "", "", "", Replace))
                .unwrap_err()
                .field,
            "target_label"
        );
        assert_eq!(
            RelabelRule::new(rule(&["a"], "", "${3}", "", Lowercase))
                .unwrap_err()
                .field,
            "target_label"
        );
        assert!(RelabelRule::new(rule(
            &["a"],
            "some-([^-]+)-([^,]+)",
            "${3}",
            "${1}",
            Replace
        ))
        .is_ok());
        assert!(RelabelRule::new(rule(
            &["a"],
            "some-([^-]+)-([^,]+)",
            "-${3}",
            "${1}",
            Replace
        ))
        .is_err());
        assert_eq!(
            RelabelRule::new(rule(&["a"], "", "d", "", HashMod))
                .unwrap_err()
                .field,
            "modulus"
        );
        assert_eq!(
            RelabelRule::new(rule(&[], "(", "", "", LabelDrop))
                .unwrap_err()
                .field,
            "regex"
        );
        assert!(RelabelRule::new(rule(&["a"], "x", "", "", LabelDrop)).is_err());
    }

    #[test]
    fn removing_the_metric_name_drops_the_series() {
        let rules = vec![RelabelRule::new(rule(&[], "__name__", "", "", LabelDrop)).unwrap()];
        let mut series = Series::new(
            sym("up"),
            Labels::new(),
            crate::model::MetricKind::Gauge,
            vec![],
        );
        assert!(!relabel_series(&rules, &mut series));
    }

    #[test]
    fn relabel_can_rename_the_metric() {
        let rules = vec![RelabelRule::new(rule(
            &["__name__"],
            "node_(.*)",
            "__name__",
            "host_$1",
            Replace,
        ))
        .unwrap()];
        let mut series = Series::new(
            sym("node_load1"),
            Labels::new(),
            crate::model::MetricKind::Gauge,
            vec![],
        );
        assert!(relabel_series(&rules, &mut series));
        assert_eq!(&*series.name, "host_load1");
    }

    #[test]
    fn in_place_labeldrop_and_labelkeep_agree_with_the_general_path() {
        let label_sets: &[&[(&str, &str)]] = &[
            &[
                ("pod", "p1"),
                ("instance", "i"),
                ("job", "api"),
                ("le", "0.5"),
            ],
            &[("container", "c"), ("namespace", "ns")],
            &[],
            &[("podcast", "x"), ("pod", "y")],
        ];
        let rule_sets: Vec<Vec<RelabelConfig>> = vec![
            vec![rule(&[], "pod|instance", "", "", LabelDrop)],
            vec![
                rule(&[], "pod.*", "", "", LabelDrop),
                rule(&[], "job|le|namespace|__name__", "", "", LabelKeep),
            ],
            vec![rule(&[], "job|le", "", "", LabelKeep)],
            vec![rule(&[], "__.*", "", "", LabelDrop)],
        ];
        for configs in rule_sets {
            let rules: Vec<RelabelRule> = configs
                .into_iter()
                .map(|c| RelabelRule::new(c).unwrap())
                .collect();
            let mut cache = NameMatchCache::default();
            for labels in label_sets {
                let make = || {
                    Series::new(
                        sym("m"),
                        Labels::from_pairs(labels.iter().copied()),
                        crate::model::MetricKind::Gauge,
                        vec![],
                    )
                };
                let mut fast = make();
                let fast_kept = relabel_series_cached(&rules, &mut fast, &mut cache);
                let general = make();
                let mut builder = LabelBuilder::from_series(&general);
                let general_kept = process(&rules, &mut builder);
                let general_labels = builder.build().map(|(_, labels)| labels);
                let general_kept = general_kept && general_labels.is_some();
                assert_eq!(fast_kept, general_kept, "{labels:?}");
                if fast_kept {
                    assert_eq!(Some(fast.labels), general_labels, "{labels:?}");
                }
            }
        }
    }
}
