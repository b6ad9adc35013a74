//! # query — corelog's stream-query core
//!
//! Stream queries: windowed aggregates and decisions computed on the shard that owns
//! each source partition, right behind the durable append. This crate is the pure
//! part, shared by the engine (which runs it on its shards) and by `batch` (whose
//! `reconcile` recomputes the same windows from landed Parquet): it links no runtime.
//!
//! A query is declared in TOML (`queries/*.toml`, see `docs/QUERIES.md`):
//!
//! ```toml
//! name = "fraud"                  # outputs go to fraud.agg and fraud.decisions
//! source = "payments"
//! key = "user_id"                 # JSON field grouped by
//! event_time = "ts"               # JSON field, ms since the epoch (record timestamp if absent)
//! value = "amount_cents"          # JSON integer summed, min'd and max'd
//! distinct = "card_id"            # JSON field counted approximately distinct
//! window = { size = "10s", slide = "10s", lateness = "2s" }
//! deny_list = { topic = "denylist" }   # or { path = "OUT/rings/part-00000.parquet" }
//!
//! [[rule]]
//! name = "velocity"
//! when = "count > 5 within 10s"
//! [[rule]]
//! when = "card_id in denylist"
//! ```
//!
//! This module owns the definition ([`QueryDef`]) and its parser; [`window`] holds the
//! operator (windows, watermark, rules) as a pure, deterministic function of the
//! events it is given, which is what makes restarts exact and lets batch `reconcile`
//! recompute the same windows; [`json`] extracts fields in one borrowing pass;
//! [`deny`] is the deny-list shards read without locks; the engine's `query_runner` drives one query
//! over one partition on its owning shard (reads, outputs, checkpoints).
//!
//! Invariants: a definition that parses is valid (windows divide evenly, rules name
//! aggregates the query computes, at most [`RULES_MAX`] rules, at most
//! [`WINDOWS_PER_EVENT_MAX`] windows per event); nothing here does I/O except
//! [`load_dir`].

#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod deny;
pub mod json;
pub mod window;

use serde::Deserialize;

/// Directory of the data dir that holds query checkpoints.
pub const QUERIES_DIR: &str = "__queries";
use std::path::{Path, PathBuf};

/// Most rules a query may declare (each has a bit in a window's fired mask).
pub const RULES_MAX: usize = 16;
/// Most windows one event may fall into (`size / slide`).
pub const WINDOWS_PER_EVENT_MAX: i64 = 64;
/// Default interval between checkpoints.
pub const CHECKPOINT_INTERVAL_MS_DEFAULT: i64 = 1_000;
/// Default results of a closing window emitted per round (`close_drain`): a window
/// close emits one result per key, and encoding tens of thousands at once held the
/// decisions behind it for over 100 ms (`docs/ENGINE.md`).
pub const CLOSE_DRAIN_DEFAULT: usize = 512;
/// Largest `close_drain` accepted.
pub const CLOSE_DRAIN_MAX: usize = 65_536;
/// Suffix of the window-results topic.
pub const AGG_SUFFIX: &str = ".agg";
/// Suffix of the decisions topic.
pub const DECISIONS_SUFFIX: &str = ".decisions";

/// A query definition that failed to parse or validate.
#[derive(Debug, thiserror::Error)]
#[error("{origin}: {reason}")]
pub struct QueryError {
    /// File (or label) the definition came from.
    pub origin: String,
    /// What is wrong.
    pub reason: String,
}

/// An event-time window: tumbling when `slide_ms == size_ms`, hopping otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSpec {
    /// Window length.
    pub size_ms: i64,
    /// Distance between window starts (divides `size_ms`).
    pub slide_ms: i64,
    /// Allowed lateness: the watermark trails the largest event time seen by this much.
    pub lateness_ms: i64,
}

impl WindowSpec {
    /// Starts of the windows `[start, start + size)` that contain `time_ms`, newest
    /// first.
    pub fn starts(&self, time_ms: i64) -> impl Iterator<Item = i64> + '_ {
        let last = time_ms.div_euclid(self.slide_ms) * self.slide_ms;
        (0..self.size_ms / self.slide_ms).map(move |i| last - i * self.slide_ms)
    }
}

/// An aggregate a window computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregate {
    /// Events in the window.
    Count,
    /// Sum of the value field.
    Sum,
    /// Smallest value.
    Min,
    /// Largest value.
    Max,
    /// Approximate distinct count of the distinct field.
    Distinct,
}

impl Aggregate {
    fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "count" => Self::Count,
            "sum" => Self::Sum,
            "min" => Self::Min,
            "max" => Self::Max,
            "distinct" => Self::Distinct,
            _ => return None,
        })
    }

    /// The name used in rules and output records.
    pub fn name(self) -> &'static str {
        match self {
            Self::Count => "count",
            Self::Sum => "sum",
            Self::Min => "min",
            Self::Max => "max",
            Self::Distinct => "distinct",
        }
    }
}

/// A comparison in a threshold rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    /// `>`
    Greater,
    /// `>=`
    AtLeast,
}

/// What makes a rule fire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// `AGG > N within W`: fires once per key and window, on the event that makes the
    /// window's aggregate cross the threshold.
    Threshold {
        /// Aggregate compared.
        aggregate: Aggregate,
        /// `>` or `>=`.
        comparison: Comparison,
        /// Threshold.
        threshold: i64,
    },
    /// `FIELD in denylist`: fires on every event whose field is on the deny-list.
    Denied {
        /// JSON field looked up.
        field: String,
    },
}

/// A rule: a name and a condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Name carried in decisions (the rule text when none is given).
    pub name: String,
    /// When it fires.
    pub condition: Condition,
}

/// Where a query's deny-list comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DenySource {
    /// A topic of this engine (what `corelog batch rings --brokers` produces to):
    /// each record's key is a denied id; a record with a null value removes it.
    Topic(String),
    /// A Parquet file (the `rings` deny-list) with an `id` column, reloaded when it
    /// changes. Loaded by the embedding program (the engine links no Parquet).
    Path(PathBuf),
}

/// A validated query definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryDef {
    /// Query name (outputs go to `<name>.agg` and `<name>.decisions`).
    pub name: String,
    /// Source topic.
    pub source: String,
    /// JSON field grouped by.
    pub key_field: String,
    /// JSON field with the event time in ms; the record timestamp when `None`.
    pub time_field: Option<String>,
    /// JSON integer field summed; `None` computes count (and distinct) only.
    pub value_field: Option<String>,
    /// JSON field counted approximately distinct.
    pub distinct_field: Option<String>,
    /// The window.
    pub window: WindowSpec,
    /// Rules, in declaration order.
    pub rules: Vec<Rule>,
    /// Deny-list source, required when a rule uses one.
    pub deny_list: Option<DenySource>,
    /// How often progress is checkpointed.
    pub checkpoint_interval_ms: i64,
    /// Results of a closing window emitted per round, between the decisions of the
    /// events behind it (1..=[`CLOSE_DRAIN_MAX`]).
    pub close_drain: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQuery {
    name: String,
    source: String,
    key: String,
    event_time: Option<String>,
    value: Option<String>,
    distinct: Option<String>,
    window: RawWindow,
    deny_list: Option<RawDeny>,
    checkpoint_interval: Option<String>,
    close_drain: Option<usize>,
    #[serde(default, rename = "rule")]
    rules: Vec<RawRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWindow {
    size: String,
    slide: Option<String>,
    lateness: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDeny {
    topic: Option<String>,
    path: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Option<String>,
    when: String,
}

/// Parses `7d`, `12h`, `30m`, `90s`, `250ms` (or `0`) into milliseconds.
pub fn parse_duration_ms(text: &str) -> Result<i64, String> {
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: i64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a number with a unit (7d, 12h, 30m, 90s, 250ms)"))?;
    let scale = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "" if number == 0 => 0,
        other => return Err(format!("{text:?}: unknown unit {other:?} (ms, s, m, h, d)")),
    };
    number.checked_mul(scale).ok_or_else(|| format!("{text:?} is too long"))
}

impl QueryDef {
    /// Parses and validates a definition; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, QueryError> {
        let error = |reason: String| QueryError { origin: origin.to_string(), reason };
        let raw: RawQuery = toml::from_str(text).map_err(|e| error(e.message().to_string()))?;
        let duration = |text: &str| parse_duration_ms(text).map_err(&error);
        let size_ms = duration(&raw.window.size)?;
        let slide_ms = raw.window.slide.as_deref().map_or(Ok(size_ms), duration)?;
        let lateness_ms = raw.window.lateness.as_deref().map_or(Ok(0), duration)?;
        if size_ms <= 0 || slide_ms <= 0 || slide_ms > size_ms || size_ms % slide_ms != 0 {
            return Err(error(format!(
                "window size {size_ms} ms and slide {slide_ms} ms: both positive, slide dividing size"
            )));
        }
        if size_ms / slide_ms > WINDOWS_PER_EVENT_MAX {
            return Err(error(format!("at most {WINDOWS_PER_EVENT_MAX} overlapping windows (size / slide)")));
        }
        let valid_name = !raw.name.is_empty()
            && raw.name.len() <= 200
            && raw.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !valid_name {
            return Err(error(format!("name {:?}: letters, digits, '.', '_' and '-' only", raw.name)));
        }
        let deny_list = match raw.deny_list {
            None => None,
            Some(RawDeny { topic: Some(topic), path: None }) => Some(DenySource::Topic(topic)),
            Some(RawDeny { topic: None, path: Some(path) }) => Some(DenySource::Path(path)),
            Some(_) => return Err(error("deny_list: give exactly one of topic or path".into())),
        };
        let mut def = QueryDef {
            name: raw.name,
            source: raw.source,
            key_field: raw.key,
            time_field: raw.event_time,
            value_field: raw.value,
            distinct_field: raw.distinct,
            window: WindowSpec { size_ms, slide_ms, lateness_ms },
            rules: Vec::new(),
            deny_list,
            checkpoint_interval_ms: raw
                .checkpoint_interval
                .as_deref()
                .map_or(Ok(CHECKPOINT_INTERVAL_MS_DEFAULT), duration)?
                .max(1),
            close_drain: raw.close_drain.unwrap_or(CLOSE_DRAIN_DEFAULT),
        };
        if !(1..=CLOSE_DRAIN_MAX).contains(&def.close_drain) {
            return Err(error(format!("close_drain {}: between 1 and {CLOSE_DRAIN_MAX}", def.close_drain)));
        }
        if raw.rules.len() > RULES_MAX {
            return Err(error(format!("at most {RULES_MAX} rules")));
        }
        for rule in raw.rules {
            let condition = def
                .parse_condition(&rule.when)
                .map_err(|reason| error(format!("rule {:?}: {reason}", rule.when)))?;
            def.rules.push(Rule { name: rule.name.unwrap_or(rule.when), condition });
        }
        Ok(def)
    }

    /// `AGG (>|>=) N [within DURATION]` or `FIELD in denylist`.
    fn parse_condition(&self, text: &str) -> Result<Condition, String> {
        let words: Vec<&str> = text.split_whitespace().collect();
        match words.as_slice() {
            [field, "in", "denylist"] => {
                if self.deny_list.is_none() {
                    return Err("the query declares no deny_list".into());
                }
                Ok(Condition::Denied { field: (*field).to_string() })
            }
            [aggregate, comparison, threshold, rest @ ..] => {
                let aggregate =
                    Aggregate::parse(aggregate).ok_or("aggregates are count, sum, min, max, distinct")?;
                let comparison = match *comparison {
                    ">" => Comparison::Greater,
                    ">=" => Comparison::AtLeast,
                    _ => return Err("comparisons are > and >=".into()),
                };
                let threshold: i64 = threshold.parse().map_err(|_| "the threshold is an integer")?;
                match rest {
                    [] => {}
                    ["within", within] => {
                        let within_ms = parse_duration_ms(within)?;
                        if within_ms != self.window.size_ms {
                            return Err(format!(
                                "within {within} differs from the query's window ({} ms): a rule is \
                                 evaluated on the query's window",
                                self.window.size_ms
                            ));
                        }
                    }
                    _ => return Err("expected `within DURATION` after the threshold".into()),
                }
                let needs_value = matches!(aggregate, Aggregate::Sum | Aggregate::Min | Aggregate::Max);
                if needs_value && self.value_field.is_none() {
                    return Err(format!("{} needs the query's `value` field", aggregate.name()));
                }
                if aggregate == Aggregate::Distinct && self.distinct_field.is_none() {
                    return Err("distinct needs the query's `distinct` field".into());
                }
                Ok(Condition::Threshold { aggregate, comparison, threshold })
            }
            _ => Err("expected `AGG > N within W` or `FIELD in denylist`".into()),
        }
    }

    /// Reads and validates a definition file.
    pub fn load(path: &Path) -> Result<Self, QueryError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| QueryError { origin: origin.clone(), reason: e.to_string() })?;
        Self::parse(&text, &origin)
    }

    /// The window-results topic.
    pub fn agg_topic(&self) -> String {
        format!("{}{AGG_SUFFIX}", self.name)
    }

    /// The decisions topic.
    pub fn decisions_topic(&self) -> String {
        format!("{}{DECISIONS_SUFFIX}", self.name)
    }

    /// JSON fields the deny rules look up, in rule order.
    pub fn deny_fields(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().filter_map(|rule| match &rule.condition {
            Condition::Denied { field } => Some(field.as_str()),
            Condition::Threshold { .. } => None,
        })
    }
}

/// Which JSON fields a query reads and how they become an [`window::Event`]: the key
/// first, then event time, value, distinct and one per deny rule, each name extracted
/// once (a field may serve several roles). Shared by the engine's runner and batch
/// `reconcile`, so both read events the same way.
#[derive(Debug, Clone)]
pub struct EventFields<'d> {
    names: Vec<&'d str>,
    time: Option<usize>,
    value: Option<usize>,
    distinct: Option<usize>,
    deny: Vec<usize>,
}

impl<'d> EventFields<'d> {
    /// The fields of `def`.
    pub fn new(def: &'d QueryDef) -> Self {
        let mut names = vec![def.key_field.as_str()];
        let mut slot = |name: &'d str| match names.iter().position(|n| *n == name) {
            Some(index) => index,
            None => {
                names.push(name);
                names.len() - 1
            }
        };
        let time = def.time_field.as_deref().map(&mut slot);
        let value = def.value_field.as_deref().map(&mut slot);
        let distinct = def.distinct_field.as_deref().map(&mut slot);
        let deny = def.deny_fields().map(&mut slot).collect();
        Self { names, time, value, distinct, deny }
    }

    /// Names to pass to [`json::extract`].
    pub fn names(&self) -> &[&'d str] {
        &self.names
    }

    /// The event in extracted `slots`, or `None` when the key, the event time or the
    /// value (if the query has one) is missing or of the wrong type. `timestamp` is
    /// the record timestamp, the event time when the query names no field.
    pub fn event<'s>(
        &self,
        slots: &'s [Option<json::Scalar<'_>>],
        offset: i64,
        timestamp: i64,
    ) -> Option<window::Event<'s>> {
        let key = slots[0].as_ref()?.as_str()?;
        let time_ms = match self.time {
            Some(i) => slots[i].as_ref()?.as_i64()?,
            None => timestamp,
        };
        let value = match self.value {
            Some(i) => slots[i].as_ref()?.as_i64()?,
            None => 0,
        };
        let distinct = self.distinct.and_then(|i| slots[i].as_ref().and_then(json::Scalar::as_str));
        Some(window::Event { offset, key, time_ms, value, distinct })
    }

    /// Fills `out` with the event's value of each deny rule's field; returns how many
    /// deny rules there are.
    pub fn denied_ids<'s>(
        &self,
        slots: &'s [Option<json::Scalar<'_>>],
        out: &mut [Option<&'s str>; RULES_MAX],
    ) -> usize {
        for (&slot, id) in self.deny.iter().zip(out.iter_mut()) {
            *id = slots[slot].as_ref().and_then(json::Scalar::as_str);
        }
        self.deny.len()
    }
}

/// Loads every `*.toml` in `dir`, sorted by file name; names must be unique.
pub fn load_dir(dir: &Path) -> Result<Vec<QueryDef>, QueryError> {
    let origin = dir.display().to_string();
    let entries =
        std::fs::read_dir(dir).map_err(|e| QueryError { origin: origin.clone(), reason: e.to_string() })?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    paths.sort();
    let mut queries: Vec<QueryDef> = Vec::with_capacity(paths.len());
    for path in paths {
        let query = QueryDef::load(&path)?;
        if queries.iter().any(|q| q.name == query.name) {
            return Err(QueryError {
                origin: path.display().to_string(),
                reason: format!("a second query named {:?}", query.name),
            });
        }
        queries.push(query);
    }
    Ok(queries)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAUD: &str = r#"
        name = "fraud"
        source = "payments"
        key = "user_id"
        event_time = "ts"
        value = "amount_cents"
        distinct = "card_id"
        window = { size = "10s", slide = "5s", lateness = "2s" }
        deny_list = { topic = "denylist" }
        [[rule]]
        name = "velocity"
        when = "count > 5 within 10s"
        [[rule]]
        when = "card_id in denylist"
    "#;

    #[test]
    fn given_a_full_definition_when_parsed_then_every_part_is_kept() {
        let def = QueryDef::parse(FRAUD, "fraud.toml").unwrap();
        assert_eq!(def.window, WindowSpec { size_ms: 10_000, slide_ms: 5_000, lateness_ms: 2_000 });
        assert_eq!(def.rules.len(), 2);
        assert_eq!(def.rules[0].name, "velocity");
        assert_eq!(
            def.rules[0].condition,
            Condition::Threshold {
                aggregate: Aggregate::Count,
                comparison: Comparison::Greater,
                threshold: 5
            }
        );
        assert_eq!(def.rules[1].name, "card_id in denylist");
        assert_eq!(def.deny_fields().collect::<Vec<_>>(), ["card_id"]);
        assert_eq!(def.deny_list, Some(DenySource::Topic("denylist".into())));
        assert_eq!(def.agg_topic(), "fraud.agg");
        assert_eq!(def.decisions_topic(), "fraud.decisions");
        assert_eq!(def.close_drain, CLOSE_DRAIN_DEFAULT);
        let def = QueryDef::parse(&FRAUD.replace("key = ", "close_drain = 7\nkey = "), "f.toml").unwrap();
        assert_eq!(def.close_drain, 7);
    }

    #[test]
    fn given_bad_definitions_when_parsed_then_each_error_says_what_is_wrong() {
        let cases = [
            (FRAUD.replace("slide = \"5s\"", "slide = \"3s\""), "slide dividing size"),
            (FRAUD.replace("within 10s", "within 60s"), "differs from the query's window"),
            (FRAUD.replace("count > 5", "median > 5"), "aggregates are"),
            (FRAUD.replace("deny_list = { topic = \"denylist\" }", ""), "no deny_list"),
            (
                FRAUD.replace("value = \"amount_cents\"", "").replace("count > 5", "sum > 5"),
                "needs the query's",
            ),
            (FRAUD.replace("name = \"fraud\"", "name = \"a b\""), "letters, digits"),
            (FRAUD.replace("key = ", "color = \"x\"\nkey = "), "unknown field"),
            (FRAUD.replace("key = ", "close_drain = 0\nkey = "), "close_drain 0: between 1 and"),
            (FRAUD.replace("key = ", "close_drain = 65537\nkey = "), "close_drain 65537: between 1 and"),
        ];
        for (text, expected) in cases {
            let error = QueryDef::parse(&text, "q.toml").unwrap_err().to_string();
            assert!(error.contains(expected), "{error:?} should contain {expected:?}");
        }
    }

    #[test]
    fn hopping_window_starts_cover_the_event_and_nothing_else() {
        let spec = WindowSpec { size_ms: 10, slide_ms: 5, lateness_ms: 0 };
        assert_eq!(spec.starts(12).collect::<Vec<_>>(), [10, 5]);
        assert_eq!(spec.starts(10).collect::<Vec<_>>(), [10, 5]);
        assert_eq!(spec.starts(-1).collect::<Vec<_>>(), [-5, -10]);
        let tumbling = WindowSpec { size_ms: 10, slide_ms: 10, lateness_ms: 0 };
        assert_eq!(tumbling.starts(19).collect::<Vec<_>>(), [10]);
    }

    #[test]
    fn durations_parse_with_units_and_reject_garbage() {
        assert_eq!(parse_duration_ms("7d").unwrap(), 7 * 86_400_000);
        assert_eq!(parse_duration_ms("90s").unwrap(), 90_000);
        assert_eq!(parse_duration_ms("250ms").unwrap(), 250);
        assert_eq!(parse_duration_ms("0").unwrap(), 0);
        assert!(parse_duration_ms("7").is_err());
        assert!(parse_duration_ms("d").is_err());
        assert!(parse_duration_ms("3w").is_err());
    }
}
