//! What users' queries need: alert and recording rules and dashboard queries, uploaded as
//! PromQL, parsed with a real PromQL parser (`promql-parser`); every label a query uses in a
//! matcher, `by`, `without`, `on`, `ignoring`, `group_left`/`group_right` or
//! `label_replace`/`label_join` is recorded against the metrics it applies to. A candidate
//! pipeline that removes such a label from such a metric breaks the `used_labels` guardrail.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use promql_parser::parser::{self, Expr, LabelModifier};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use phoenix_core::analysis::{GuardrailResult, GuardrailStatus};
use phoenix_core::{Experiment, FieldErrors};
use phoenix_pipeline::config::{PipelineConfig, ProcessorConfig};
use phoenix_pipeline::relabel::RelabelAction;
use phoenix_pipeline::selector::{anchored_regex, Selector};
use phoenix_store::StoreError;

use crate::service::{Service, ServiceResult};

const USAGE_SETTING: &str = "usage_queries";
pub const MAX_QUERIES_PER_UPLOAD: usize = 5000;
pub const MAX_QUERY_LEN: usize = 16 * 1024;
/// Syntax errors given a line and column per upload; the others get the parser's message.
pub const MAX_LOCATED_ERRORS: usize = 20;

/// `POST /api/v1/usage/queries`: one source (a rule file, a dashboard) of queries. A new
/// upload of the same source replaces the old one.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UsageUpload {
    /// A name for where the queries come from, e.g. `alerts/api.yml` or `dashboard:checkout`.
    pub source: String,
    /// A Prometheus rule file (`groups: [{name, rules: [{alert|record, expr}]}]`), as text.
    #[serde(default)]
    pub rules: Option<String>,
    /// Dashboard or ad-hoc queries.
    #[serde(default)]
    pub queries: Vec<String>,
}

/// One parsed query.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UsedQuery {
    /// The alert or recording rule's name, or `queries[i]`.
    pub name: String,
    pub expr: String,
    /// Metric names the query reads (empty when it selects by labels only).
    pub metrics: Vec<String>,
    /// Labels it depends on, with the metric each applies to (`*`: any metric).
    pub labels: Vec<UsedLabel>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
pub struct UsedLabel {
    pub metric: String,
    pub label: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UsageSource {
    pub source: String,
    pub uploaded_at: DateTime<Utc>,
    pub queries: Vec<UsedQuery>,
}

/// What `GET /api/v1/usage/queries` serves.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct UsageView {
    pub sources: Vec<UsageSource>,
    /// Every (metric, label) any query uses, each once.
    pub protected_labels: Vec<UsedLabel>,
}

/// Parses one PromQL expression into what it uses. The error is the parser's own message;
/// [`locate_syntax_error`] says where.
pub fn analyse_query(name: &str, expr: &str) -> Result<UsedQuery, String> {
    let ast = parser::parse(expr)?;
    let mut used = BTreeSet::new();
    let metrics = walk(&ast, &mut used);
    Ok(UsedQuery {
        name: name.to_string(),
        expr: expr.to_string(),
        metrics: metrics.into_iter().collect(),
        labels: used.into_iter().collect(),
    })
}

/// Continuations tried after a prefix of the query (each also followed by the brackets the
/// prefix left open, closed in order): an operand, a call's argument list, an aggregation's
/// label list and argument, a label matcher's value, a range, a comparison.
const COMPLETIONS: &[&str] = &[
    "", " x", " 1", "(x)", " (a) (x)", "(a) (x)", "=\"x\"", "\"x\"", " 5m", "5m", "[5m]", "5m]",
    ":1m]", " == x", " x == x", "x", " or x", "(x", " on(a) x", "(a) x", "a) (x)", ") (x)", "a)",
];

/// `promql-parser` reports a syntax error as "invalid promql query", with no position. This
/// finds one: the longest prefix of the query's tokens that some simple continuation turns
/// into a valid query has been understood, so the error is at the token after it. Returns
/// `at line L, column C, near `token`` (line and column count from 1, in characters), or
/// `None` when the query does not lex or is too long to search.
pub fn locate_syntax_error(expr: &str) -> Option<String> {
    use lrpar::{Lexeme, Lexer};
    const MAX_TOKENS: usize = 300;
    let lexer = parser::lexer(expr).ok()?;
    let spans: Vec<(usize, usize)> = lexer
        .iter()
        .filter_map(|l| l.ok())
        .map(|l| (l.span().start(), l.span().end()))
        .take(MAX_TOKENS + 1)
        .collect();
    if spans.is_empty() || spans.len() > MAX_TOKENS {
        return None;
    }
    let viable = |end: usize| -> bool {
        let prefix = &expr[..end];
        let mut open = Vec::new();
        for &(s, e) in &spans {
            if e > end {
                break;
            }
            match &expr[s..e] {
                "(" => open.push(')'),
                "[" => open.push(']'),
                "{" => open.push('}'),
                ")" | "]" | "}" => {
                    open.pop();
                }
                _ => {}
            }
        }
        let closers: String = open.iter().rev().collect();
        COMPLETIONS.iter().any(|c| {
            parser::parse(&format!("{prefix}{c}{closers}")).is_ok()
                || (!closers.is_empty() && parser::parse(&format!("{prefix}{c}")).is_ok())
        })
    };
    // The last token whose prefix is viable; the error is at the next one (or at the end).
    // A prefix of a viable prefix is viable, so a binary search finds it: about 8 probes
    // of a few dozen parses each, whatever the query's length.
    let understood = if viable(spans[0].1) {
        let (mut lo, mut hi) = (0, spans.len());
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if viable(spans[mid].1) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        Some(lo)
    } else {
        None
    };
    let (at, near) = match understood {
        Some(k) if k + 1 < spans.len() => (spans[k + 1].0, &expr[spans[k + 1].0..spans[k + 1].1]),
        Some(_) => (expr.len(), "the end of the query"),
        None => (spans[0].0, &expr[spans[0].0..spans[0].1]),
    };
    let before = &expr[..at];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    Some(if near == "the end of the query" {
        format!("at line {line}, column {column}, at the end of the query")
    } else {
        format!("at line {line}, column {column}, near `{near}`")
    })
}

/// Records used labels; returns the metric names under `e` (`*` for a nameless selector).
fn walk(e: &Expr, used: &mut BTreeSet<UsedLabel>) -> BTreeSet<String> {
    let apply = |metrics: &BTreeSet<String>, labels: &[String], used: &mut BTreeSet<UsedLabel>| {
        for m in metrics {
            for l in labels {
                used.insert(UsedLabel {
                    metric: m.clone(),
                    label: l.clone(),
                });
            }
        }
    };
    match e {
        Expr::VectorSelector(vs) => selector(vs, used),
        Expr::MatrixSelector(ms) => selector(&ms.vs, used),
        Expr::Aggregate(a) => {
            let mut metrics = walk(&a.expr, used);
            if let Some(p) = &a.param {
                metrics.extend(walk(p, used));
            }
            if let Some(m) = &a.modifier {
                let labels = match m {
                    LabelModifier::Include(l) | LabelModifier::Exclude(l) => l.labels.clone(),
                };
                apply(&metrics, &labels, used);
            }
            metrics
        }
        Expr::Binary(b) => {
            let mut metrics = walk(&b.lhs, used);
            metrics.extend(walk(&b.rhs, used));
            if let Some(m) = &b.modifier {
                let mut labels = Vec::new();
                if let Some(LabelModifier::Include(l) | LabelModifier::Exclude(l)) = &m.matching {
                    labels.extend(l.labels.iter().cloned());
                }
                if let Some(l) = m.card.labels() {
                    labels.extend(l.labels.iter().cloned());
                }
                apply(&metrics, &labels, used);
            }
            metrics
        }
        Expr::Paren(p) => walk(&p.expr, used),
        Expr::Unary(u) => walk(&u.expr, used),
        Expr::Subquery(s) => walk(&s.expr, used),
        Expr::Call(c) => {
            let mut metrics = BTreeSet::new();
            for arg in &c.args.args {
                metrics.extend(walk(arg, used));
            }
            // label_replace(v, dst, repl, src, regex) and label_join(v, dst, sep, src...)
            // read their source labels.
            let sources: &[Box<Expr>] = match c.func.name {
                "label_replace" => c.args.args.get(3..4).unwrap_or(&[]),
                "label_join" => c.args.args.get(3..).unwrap_or(&[]),
                _ => &[],
            };
            let labels: Vec<String> = sources
                .iter()
                .filter_map(|a| match a.as_ref() {
                    Expr::StringLiteral(s) => Some(s.val.clone()),
                    _ => None,
                })
                .collect();
            apply(&metrics, &labels, used);
            metrics
        }
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => BTreeSet::new(),
    }
}

fn selector(
    vs: &promql_parser::parser::VectorSelector,
    used: &mut BTreeSet<UsedLabel>,
) -> BTreeSet<String> {
    let name = vs.name.clone().or_else(|| {
        vs.matchers
            .matchers
            .iter()
            .find(|m| m.name == "__name__" && m.op.to_string() == "=")
            .map(|m| m.value.clone())
    });
    let metric = name.unwrap_or_else(|| "*".to_string());
    let all = vs
        .matchers
        .matchers
        .iter()
        .chain(vs.matchers.or_matchers.iter().flatten());
    for m in all {
        if m.name != "__name__" {
            used.insert(UsedLabel {
                metric: metric.clone(),
                label: m.name.clone(),
            });
        }
    }
    BTreeSet::from([metric])
}

/// Parses an upload: every query, every error at once with its path.
pub fn parse_upload(up: &UsageUpload) -> Result<Vec<UsedQuery>, FieldErrors> {
    let mut e = FieldErrors::default();
    let src = up.source.trim();
    if src.is_empty() || src.len() > 256 {
        e.push("source", "must be 1 to 256 characters");
    }
    let mut out = Vec::new();
    let mut located = 0usize;
    let mut check = |path: String, name: String, expr: &str, e: &mut FieldErrors| {
        if expr.len() > MAX_QUERY_LEN {
            e.push(path, format!("must be at most {MAX_QUERY_LEN} bytes"));
            return;
        }
        match analyse_query(&name, expr) {
            Ok(q) => out.push(q),
            Err(mut msg) => {
                // Placing an error costs a few hundred parses: the first few per upload.
                if located < MAX_LOCATED_ERRORS {
                    located += 1;
                    if let Some(at) = locate_syntax_error(expr) {
                        msg = format!("{msg} {at}");
                    }
                }
                e.push(
                    path,
                    format!(
                        "invalid PromQL ({msg}) in `{}`",
                        expr.chars().take(200).collect::<String>()
                    ),
                )
            }
        }
    };
    if let Some(text) = &up.rules {
        match serde_yaml::from_str::<RuleFile>(text) {
            Ok(file) => {
                for (g, group) in file.groups.iter().enumerate() {
                    for (r, rule) in group.rules.iter().enumerate() {
                        let name = rule
                            .alert
                            .clone()
                            .or_else(|| rule.record.clone())
                            .unwrap_or_else(|| format!("{}[{r}]", group.name));
                        check(
                            format!("rules.groups[{g}].rules[{r}].expr"),
                            name,
                            &rule.expr,
                            &mut e,
                        );
                    }
                }
            }
            Err(err) => e.push("rules", format!("not a Prometheus rule file: {err}")),
        }
    }
    for (i, q) in up.queries.iter().enumerate() {
        check(format!("queries[{i}]"), format!("queries[{i}]"), q, &mut e);
    }
    if up.rules.is_none() && up.queries.is_empty() {
        e.push("queries", "give `rules` (a rule file) or `queries`");
    }
    if out.len() > MAX_QUERIES_PER_UPLOAD {
        e.push(
            "queries",
            format!("at most {MAX_QUERIES_PER_UPLOAD} queries per source"),
        );
    }
    e.into_result().map(|()| out)
}

#[derive(Debug, Deserialize)]
struct RuleFile {
    groups: Vec<RuleGroup>,
}

#[derive(Debug, Deserialize)]
struct RuleGroup {
    name: String,
    #[serde(default)]
    rules: Vec<Rule>,
}

#[derive(Debug, Deserialize)]
struct Rule {
    #[serde(default)]
    alert: Option<String>,
    #[serde(default)]
    record: Option<String>,
    expr: String,
}

/// Whether a selector could select series of `metric` (only the name is known: label
/// matchers are assumed to match).
fn selector_may_match(sel: &Selector, metric: &str) -> bool {
    sel.matchers()
        .iter()
        .filter(|m| m.name == "__name__")
        .all(|m| metric == "*" || m.matches_value(metric))
}

/// Whether a selector takes *every* series of `metric` (a name-only selector matching it).
fn selector_covers(sel: &Selector, metric: &str) -> bool {
    metric != "*"
        && sel.matchers().iter().all(|m| m.name == "__name__")
        && sel.matchers().iter().any(|m| m.name == "__name__")
        && sel.matchers().iter().all(|m| m.matches_value(metric))
}

fn parse_all(sources: &[String]) -> Vec<Selector> {
    sources
        .iter()
        .filter_map(|s| Selector::parse(s).ok())
        .collect()
}

/// Why `config` removes `label` from (some) series of `metric`, if it does: the first
/// processor that does, described.
pub fn removes_label(config: &PipelineConfig, metric: &str, label: &str) -> Option<String> {
    let mut protected = parse_all(&config.protect);
    if protected.iter().any(|p| selector_covers(p, metric)) {
        return None;
    }
    let applies = |match_selectors: &[String]| {
        match_selectors.is_empty()
            || parse_all(match_selectors)
                .iter()
                .any(|s| selector_may_match(s, metric))
    };
    for (i, p) in config.processors.iter().enumerate() {
        let why = match p {
            ProcessorConfig::Protect(pc) => {
                protected.extend(parse_all(&pc.selectors));
                if protected.iter().any(|p| selector_covers(p, metric)) {
                    return None;
                }
                None
            }
            ProcessorConfig::Aggregate(a) if applies(&a.match_selectors) => {
                match (&a.by, &a.without) {
                    (Some(by), _) if !by.iter().any(|l| l == label) => {
                        Some(format!("aggregate by [{}]", by.join(", ")))
                    }
                    (_, Some(without)) if without.iter().any(|l| l == label) => {
                        Some(format!("aggregate without [{}]", without.join(", ")))
                    }
                    _ => None,
                }
            }
            ProcessorConfig::Adaptive(a) if applies(&a.match_selectors) => {
                if a.without.is_empty() {
                    (!a.keep_labels.iter().any(|l| l == label)).then(|| {
                        format!(
                            "adaptive folds stable series keeping only [{}]",
                            a.keep_labels.join(", ")
                        )
                    })
                } else {
                    a.without.iter().any(|l| l == label).then(|| {
                        format!(
                            "adaptive aggregates stable series without [{}]",
                            a.without.join(", ")
                        )
                    })
                }
            }
            ProcessorConfig::Relabel(r) => r.rules.iter().find_map(|rule| {
                let re = anchored_regex(&rule.regex).ok()?;
                match rule.action {
                    RelabelAction::LabelDrop if re.is_match(label) => {
                        Some(format!("relabel labeldrop `{}`", rule.regex))
                    }
                    RelabelAction::LabelKeep if !re.is_match(label) => {
                        Some(format!("relabel labelkeep `{}`", rule.regex))
                    }
                    _ => None,
                }
            }),
            _ => None,
        };
        if let Some(why) = why {
            return Some(format!("processors[{i}]: {why}"));
        }
    }
    None
}

impl Service {
    pub async fn usage(&self) -> ServiceResult<UsageView> {
        let sources: BTreeMap<String, UsageSource> =
            match self.store.get_setting(USAGE_SETTING).await? {
                Some(v) => serde_json::from_value(v).unwrap_or_default(),
                None => BTreeMap::new(),
            };
        let protected_labels: BTreeSet<UsedLabel> = sources
            .values()
            .flat_map(|s| s.queries.iter().flat_map(|q| q.labels.iter().cloned()))
            .collect();
        Ok(UsageView {
            sources: sources.into_values().collect(),
            protected_labels: protected_labels.into_iter().collect(),
        })
    }

    pub async fn upload_usage(&self, up: UsageUpload) -> ServiceResult<UsageSource> {
        let queries = parse_upload(&up)?;
        let mut sources: BTreeMap<String, UsageSource> =
            match self.store.get_setting(USAGE_SETTING).await? {
                Some(v) => serde_json::from_value(v).unwrap_or_default(),
                None => BTreeMap::new(),
            };
        let source = UsageSource {
            source: up.source.trim().to_string(),
            uploaded_at: self.clock.now(),
            queries,
        };
        sources.insert(source.source.clone(), source.clone());
        let value = serde_json::to_value(&sources)
            .map_err(|e| StoreError::Corrupt(format!("cannot serialise usage: {e}")))?;
        self.store
            .put_setting(USAGE_SETTING, &value, self.clock.now())
            .await?;
        Ok(source)
    }

    /// The `used_labels` guardrail of an experiment: does its candidate remove a label a
    /// user's query needs?
    pub async fn used_labels_guardrail(&self, exp: &Experiment) -> ServiceResult<GuardrailResult> {
        let usage = self.usage().await?;
        let mut g = GuardrailResult {
            guardrail: "used_labels".into(),
            status: GuardrailStatus::Pass,
            observed: None,
            threshold: None,
            metric: None,
            host_id: None,
            at: None,
            message: format!(
                "the candidate keeps all {} labels the uploaded queries use",
                usage.protected_labels.len()
            ),
        };
        if usage.protected_labels.is_empty() {
            g.status = GuardrailStatus::NoData;
            g.message = "no queries uploaded (POST /api/v1/usage/queries)".into();
            return Ok(g);
        }
        let config =
            match phoenix_pipeline::templates::resolve(&exp.candidate_pipeline, &exp.parameters) {
                Ok(c) => c,
                Err(e) => {
                    g.status = GuardrailStatus::NoData;
                    g.message = format!("candidate pipeline does not render: {e}");
                    return Ok(g);
                }
            };
        for used in &usage.protected_labels {
            if let Some(why) = removes_label(&config, &used.metric, &used.label) {
                let by = usage
                    .sources
                    .iter()
                    .flat_map(|s| {
                        s.queries
                            .iter()
                            .filter(|q| q.labels.contains(used))
                            .map(move |q| format!("`{}` in {}", q.name, s.source))
                    })
                    .next()
                    .unwrap_or_default();
                g.status = GuardrailStatus::Breach;
                g.metric = Some(used.metric.clone());
                g.message = format!(
                    "candidate removes label `{}` from `{}` ({why}), which {by} needs",
                    used.label, used.metric
                );
                return Ok(g);
            }
        }
        Ok(g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syntax_errors_are_placed_at_the_first_token_that_makes_no_sense() {
        for (query, want) in [
            ("foo bar", "at line 1, column 5, near `bar`"),
            ("up == == 0", "at line 1, column 7, near `==`"),
            (
                "sum without(==)(some_metric)",
                "at line 1, column 13, near `==`",
            ),
            (
                "rate(x[5m]) +",
                "at line 1, column 14, at the end of the query",
            ),
            (
                "sum by (job) (\n  rate(x[5m]) bar\n)",
                "at line 2, column 15, near `bar`",
            ),
        ] {
            assert!(parser::parse(query).is_err(), "{query}");
            assert_eq!(locate_syntax_error(query).as_deref(), Some(want), "{query}");
        }
    }

    #[test]
    fn lexing_errors_keep_the_lexers_message() {
        let err = analyse_query("q", "sum(rate(x[5m])").unwrap_err();
        assert!(err.contains("unclosed left parenthesis"), "{err}");
        assert_eq!(locate_syntax_error("sum(rate(x[5m])"), None);
    }
}
