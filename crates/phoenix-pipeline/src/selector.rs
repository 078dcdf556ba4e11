//! PromQL-style series selectors: `http_requests_total{env!="dev", code=~"5.."}`.
//!
//! Semantics follow Prometheus: regexes are fully anchored, a missing label matches as the
//! empty string, and a metric name before the braces is shorthand for `__name__="..."`.

use std::fmt;

use regex::Regex;

use crate::model::{Series, METRIC_NAME_LABEL};

/// Why a selector could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid selector {selector:?} at byte {offset}: {reason}")]
pub struct SelectorError {
    /// The selector text.
    pub selector: String,
    /// Byte offset of the problem.
    pub offset: usize,
    /// What is wrong.
    pub reason: String,
}

/// The four PromQL match operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchOp {
    /// `=`
    Equal,
    /// `!=`
    NotEqual,
    /// `=~`
    Regex,
    /// `!~`
    NotRegex,
}

/// One `label op "value"` matcher.
#[derive(Debug, Clone)]
pub struct Matcher {
    /// Label name (`__name__` for the metric name).
    pub name: String,
    /// Operator.
    pub op: MatchOp,
    /// Literal value or regex source.
    pub value: String,
    regex: Option<Regex>,
}

impl Matcher {
    /// Builds a matcher, compiling regexes fully anchored.
    pub fn new(name: &str, op: MatchOp, value: &str) -> Result<Self, regex::Error> {
        let regex = match op {
            MatchOp::Regex | MatchOp::NotRegex => Some(anchored_regex(value)?),
            MatchOp::Equal | MatchOp::NotEqual => None,
        };
        Ok(Self {
            name: name.to_string(),
            op,
            value: value.to_string(),
            regex,
        })
    }

    /// Whether `value` (empty when the label is absent) satisfies the matcher.
    pub fn matches_value(&self, value: &str) -> bool {
        match (self.op, &self.regex) {
            (MatchOp::Equal, _) => value == self.value,
            (MatchOp::NotEqual, _) => value != self.value,
            (MatchOp::Regex, Some(re)) => re.is_match(value),
            (MatchOp::NotRegex, Some(re)) => !re.is_match(value),
            // Regex operators always carry a compiled regex (see `new`).
            (MatchOp::Regex | MatchOp::NotRegex, None) => false,
        }
    }
}

/// Compiles `pattern` the way Prometheus does: `^(?s:pattern)$`.
pub fn anchored_regex(pattern: &str) -> Result<Regex, regex::Error> {
    Regex::new(&format!("^(?s:{pattern})$"))
}

/// A parsed selector: all matchers must hold.
#[derive(Debug, Clone)]
pub struct Selector {
    source: String,
    matchers: Vec<Matcher>,
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl Selector {
    /// Parses `name{label op "value", ...}`, `{...}` or a bare metric name.
    pub fn parse(source: &str) -> Result<Self, SelectorError> {
        Parser {
            source,
            pos: 0,
            matchers: Vec::new(),
        }
        .parse()
    }

    /// The matchers.
    pub fn matchers(&self) -> &[Matcher] {
        &self.matchers
    }

    /// Whether the series satisfies every matcher.
    pub fn matches(&self, series: &Series) -> bool {
        self.matchers
            .iter()
            .all(|m| m.matches_value(series.label(&m.name).unwrap_or("")))
    }

    /// The selector text as written.
    pub fn source(&self) -> &str {
        &self.source
    }
}

/// Whether any selector of `selectors` matches the series.
pub fn any_matches(selectors: &[Selector], series: &Series) -> bool {
    selectors.iter().any(|s| s.matches(series))
}

struct Parser<'a> {
    source: &'a str,
    pos: usize,
    matchers: Vec<Matcher>,
}

fn is_name_start(c: char, allow_colon: bool) -> bool {
    c.is_ascii_alphabetic() || c == '_' || (allow_colon && c == ':')
}

fn is_name_char(c: char, allow_colon: bool) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || (allow_colon && c == ':')
}

impl Parser<'_> {
    fn error(&self, reason: impl Into<String>) -> SelectorError {
        SelectorError {
            selector: self.source.to_string(),
            offset: self.pos,
            reason: reason.into(),
        }
    }

    fn peek(&self) -> Option<char> {
        self.source[self.pos..].chars().next()
    }

    fn skip_space(&mut self) {
        while let Some(c) = self.peek() {
            if c.is_whitespace() {
                self.pos += c.len_utf8();
            } else {
                break;
            }
        }
    }

    fn name(&mut self, allow_colon: bool) -> Result<String, SelectorError> {
        let start = self.pos;
        match self.peek() {
            Some(c) if is_name_start(c, allow_colon) => self.pos += 1,
            _ => return Err(self.error("expected a name")),
        }
        while let Some(c) = self.peek() {
            if is_name_char(c, allow_colon) {
                self.pos += 1;
            } else {
                break;
            }
        }
        Ok(self.source[start..self.pos].to_string())
    }

    fn string(&mut self) -> Result<String, SelectorError> {
        let quote = match self.peek() {
            Some(q @ ('"' | '\'' | '`')) => q,
            _ => return Err(self.error("expected a quoted string")),
        };
        self.pos += 1;
        let mut out = String::new();
        loop {
            let Some(c) = self.peek() else {
                return Err(self.error("unterminated string"));
            };
            self.pos += c.len_utf8();
            if c == quote {
                return Ok(out);
            }
            if c == '\\' && quote != '`' {
                let Some(escaped) = self.peek() else {
                    return Err(self.error("unterminated escape"));
                };
                self.pos += escaped.len_utf8();
                match escaped {
                    'n' => out.push('\n'),
                    't' => out.push('\t'),
                    'r' => out.push('\r'),
                    '\\' | '"' | '\'' => out.push(escaped),
                    // Keep unknown escapes verbatim so regexes like `\d` survive.
                    other => {
                        out.push('\\');
                        out.push(other);
                    }
                }
            } else {
                out.push(c);
            }
        }
    }

    fn op(&mut self) -> Result<MatchOp, SelectorError> {
        let rest = &self.source[self.pos..];
        let (op, len) = if rest.starts_with("=~") {
            (MatchOp::Regex, 2)
        } else if rest.starts_with("!~") {
            (MatchOp::NotRegex, 2)
        } else if rest.starts_with("!=") {
            (MatchOp::NotEqual, 2)
        } else if rest.starts_with('=') {
            (MatchOp::Equal, 1)
        } else {
            return Err(self.error("expected one of =, !=, =~, !~"));
        };
        self.pos += len;
        Ok(op)
    }

    fn push(&mut self, name: &str, op: MatchOp, value: &str) -> Result<(), SelectorError> {
        let matcher = Matcher::new(name, op, value)
            .map_err(|e| self.error(format!("invalid regex {value:?}: {e}")))?;
        self.matchers.push(matcher);
        Ok(())
    }

    fn parse(mut self) -> Result<Selector, SelectorError> {
        self.skip_space();
        if matches!(self.peek(), Some(c) if is_name_start(c, true)) {
            let name = self.name(true)?;
            self.push(METRIC_NAME_LABEL, MatchOp::Equal, &name)?;
            self.skip_space();
        }
        if self.peek() == Some('{') {
            self.pos += 1;
            loop {
                self.skip_space();
                if self.peek() == Some('}') {
                    self.pos += 1;
                    break;
                }
                let name = self.name(false)?;
                self.skip_space();
                let op = self.op()?;
                self.skip_space();
                let value = self.string()?;
                self.push(&name, op, &value)?;
                self.skip_space();
                match self.peek() {
                    Some(',') => self.pos += 1,
                    Some('}') => {
                        self.pos += 1;
                        break;
                    }
                    _ => return Err(self.error("expected , or }")),
                }
            }
        }
        self.skip_space();
        if self.pos != self.source.len() {
            return Err(self.error("unexpected trailing input"));
        }
        if self.matchers.is_empty() {
            return Err(self.error("a selector needs a metric name or at least one matcher"));
        }
        Ok(Selector {
            source: self.source.to_string(),
            matchers: self.matchers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Label, Labels, MetricKind};
    use std::sync::Arc;

    fn series(name: &str, labels: &[(&str, &str)]) -> Series {
        Series::new(
            Arc::from(name),
            Labels::from_unsorted(
                labels
                    .iter()
                    .map(|(n, v)| Label::new(Arc::from(*n), Arc::from(*v)))
                    .collect(),
            ),
            MetricKind::Gauge,
            vec![],
        )
    }

    #[test]
    fn regex_matchers_are_anchored() {
        let s = Selector::parse(r#"{__name__=~"http_.*", env!="dev"}"#).unwrap();
        assert!(s.matches(&series("http_requests_total", &[("env", "prod")])));
        assert!(!s.matches(&series("xhttp_requests_total", &[("env", "prod")])));
        assert!(!s.matches(&series("http_requests_total", &[("env", "dev")])));
    }

    #[test]
    fn missing_label_matches_as_empty_string() {
        let s = Selector::parse(r#"{env=""}"#).unwrap();
        assert!(s.matches(&series("m", &[])));
        assert!(!s.matches(&series("m", &[("env", "x")])));
        let s = Selector::parse(r#"{env!~".+"}"#).unwrap();
        assert!(s.matches(&series("m", &[])));
    }

    #[test]
    fn metric_name_prefix_is_an_equality_matcher() {
        let s = Selector::parse(r#"node_cpu_seconds_total{mode='idle'}"#).unwrap();
        assert!(s.matches(&series("node_cpu_seconds_total", &[("mode", "idle")])));
        assert!(!s.matches(&series("node_cpu_seconds_total", &[("mode", "user")])));
        let bare = Selector::parse("up").unwrap();
        assert!(bare.matches(&series("up", &[])));
    }

    #[test]
    fn escapes_in_strings_are_decoded() {
        let s = Selector::parse(r#"{path="a\"b", code=~"5\d\d"}"#).unwrap();
        assert!(s.matches(&series("m", &[("path", "a\"b"), ("code", "503")])));
    }

    #[test]
    fn malformed_selectors_report_the_offset() {
        let err = Selector::parse(r#"{env="x""#).unwrap_err();
        assert_eq!(err.offset, 8);
        assert!(Selector::parse("{}").is_err());
        assert!(Selector::parse(r#"{a=~"("}"#).is_err());
        assert!(Selector::parse(r#"{a=="x"}"#).is_err());
    }
}
