//! The query operator: event-time windows per key, a watermark with allowed lateness,
//! threshold and deny-list rules. A pure function of the events it is fed, in order.
//!
//! **Semantics** (written down in `docs/QUERIES.md`, checked against a brute-force
//! reference in the tests):
//! * the watermark is the largest event time seen minus the allowed lateness;
//! * window `[start, start + size)` is *closed* once the watermark reaches its end:
//!   it is emitted then, once, and never changes;
//! * an event is added to each of its windows that is still open; if any of its
//!   windows was already closed the event is *late* (counted, left to batch);
//! * the watermark advances *after* the event is added, then every window it closes
//!   is emitted in (start, key) order, carrying the event that closed it as trigger;
//! * a threshold rule fires once per key and window, on the event whose addition
//!   first makes the aggregate satisfy it; a deny rule fires on every event whose
//!   field is on the deny-list (late or not).
//!
//! **Replay.** Each open window remembers the offset of its first event and the
//! largest event time seen before it. [`Operator::replay_point`] gives the smallest
//! such offset and its time: an operator started there (with [`Operator::resume`])
//! and fed the same events reaches exactly the same open windows, which is how a
//! restart rebuilds state from the log instead of from a snapshot.
//!
//! **Deferred close** ([`Operator::deferring_close`], what the engine's runner uses).
//! A window close emits one result per key, tens of thousands at once, and encoding
//! them all in one go held up the decisions of the events right behind it by a
//! hundred milliseconds and more. A deferring operator moves each closed window, its
//! keys sorted, to a queue instead, and the caller takes results from it a few at a
//! time with [`Operator::drain_closed`]. The order and content of everything emitted
//! are the same as without deferral; only when they come out changes. Closed windows
//! not yet drained count for [`Operator::replay_point`], and
//! [`Operator::pending_trigger`] names the trigger offset they wait under.
//!
//! **Warm memory.** A closed window's emptied table and its drained key buffer are
//! kept ([`SPARES_MAX`] of each) and taken by the next windows to open and close, so a
//! window that opens never grows its table from empty and a close never collects into
//! fresh memory. Memory freed and asked for again one window later had been given back
//! to the kernel by then (the allocator's purge runs within a second), and faulting it
//! in again, whole huge pages zeroed, held a shard for 10–30 ms at every close on the
//! 2-core VM (docs/ENGINE.md, "Warm memory for window closes"). A spare is dropped
//! instead of kept when its capacity exceeds [`SPARE_SLACK`] times what its window
//! used (at least [`SPARE_MIN_KEEP`] entries), so one outsized window is not held for
//! good.

use crate::deny::DenySet;
use crate::{Aggregate, Comparison, Condition, QueryDef};
use cardinality_estimator::CardinalityEstimator;
use std::collections::{BTreeMap, HashMap};

/// Approximate distinct counter (exact up to a few hundred items, HyperLogLog after).
pub type Distinct = CardinalityEstimator<str>;

/// Emptied window tables (and, apart, drained close buffers) kept for reuse.
pub const SPARES_MAX: usize = 2;
/// A spare is kept only while its capacity is at most this many times the entries its
/// window held ...
pub const SPARE_SLACK: usize = 4;
/// ... or this many entries, whichever is more.
pub const SPARE_MIN_KEEP: usize = 1024;

/// One window's aggregates by key.
type Table = HashMap<Box<str>, WindowAgg>;

/// One event as the operator sees it.
#[derive(Debug, Clone, Copy)]
pub struct Event<'a> {
    /// Offset in the source partition.
    pub offset: i64,
    /// Group key.
    pub key: &'a str,
    /// Event time (ms); also the creation time carried into outputs as `ts`.
    pub time_ms: i64,
    /// The value field (0 when the query has none).
    pub value: i64,
    /// The distinct field, when the query has one and the event carries it.
    pub distinct: Option<&'a str>,
}

/// Running aggregates of one key in one window.
#[derive(Debug, Clone)]
pub struct WindowAgg {
    /// Events.
    pub count: u64,
    /// Sum of values.
    pub sum: i64,
    /// Smallest value.
    pub min: i64,
    /// Largest value.
    pub max: i64,
    /// Distinct values of the distinct field.
    pub distinct: Distinct,
    fired: u16,
    first_offset: i64,
    max_time_before_ms: i64,
}

impl WindowAgg {
    /// An empty window whose first event is at `first_offset`.
    pub fn new(first_offset: i64, max_time_before_ms: i64) -> Self {
        Self {
            count: 0,
            sum: 0,
            min: i64::MAX,
            max: i64::MIN,
            distinct: Distinct::new(),
            fired: 0,
            first_offset,
            max_time_before_ms,
        }
    }

    /// Adds one event.
    pub fn add(&mut self, value: i64, distinct: Option<&str>) {
        self.count += 1;
        self.sum = self.sum.wrapping_add(value);
        self.min = self.min.min(value);
        self.max = self.max.max(value);
        if let Some(item) = distinct {
            self.distinct.insert(item);
        }
    }

    /// Folds another partial aggregate of the same key and window in (batch).
    pub fn merge(&mut self, other: &WindowAgg) {
        self.count += other.count;
        self.sum = self.sum.wrapping_add(other.sum);
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.distinct.merge(&other.distinct);
    }

    /// The value of one aggregate.
    pub fn get(&self, aggregate: Aggregate) -> i64 {
        match aggregate {
            Aggregate::Count => self.count as i64,
            Aggregate::Sum => self.sum,
            Aggregate::Min => self.min,
            Aggregate::Max => self.max,
            Aggregate::Distinct => self.distinct.estimate() as i64,
        }
    }
}

/// A closed window's final aggregates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowResult {
    /// Group key.
    pub key: Box<str>,
    /// Window start (ms, inclusive).
    pub start_ms: i64,
    /// Window end (ms, exclusive).
    pub end_ms: i64,
    /// Events.
    pub count: u64,
    /// Sum of values.
    pub sum: i64,
    /// Smallest value.
    pub min: i64,
    /// Largest value.
    pub max: i64,
    /// Approximate distinct count.
    pub distinct: u64,
    /// Offset of the event whose watermark closed the window.
    pub trigger_offset: i64,
    /// That event's time (its creation time, `ts`).
    pub trigger_time_ms: i64,
}

/// A rule that fired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Index of the rule in the definition.
    pub rule: usize,
    /// Group key of the event.
    pub key: Box<str>,
    /// The window, for threshold rules.
    pub window: Option<(i64, i64)>,
    /// The aggregate's value (threshold rules) or the denied id (deny rules).
    pub value: DecisionValue,
    /// Offset of the event that fired the rule.
    pub trigger_offset: i64,
    /// That event's time (`ts`).
    pub trigger_time_ms: i64,
}

/// What a decision reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecisionValue {
    /// The aggregate's value when the threshold rule fired.
    Aggregate(i64),
    /// The id found on the deny-list.
    Denied(Box<str>),
}

/// What the operator emits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// A closed window.
    Window(WindowResult),
    /// A fired rule.
    Decision(Decision),
}

/// Counters of what the operator did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OperatorStats {
    /// Events processed.
    pub events: u64,
    /// Events that missed at least one closed window.
    pub late_events: u64,
    /// Windows emitted.
    pub windows: u64,
    /// Decisions emitted.
    pub decisions: u64,
}

/// Windows and watermark of one query over one partition.
#[derive(Debug)]
pub struct Operator {
    def: std::sync::Arc<QueryDef>,
    /// Open windows by start, then key.
    windows: BTreeMap<i64, Table>,
    max_time_ms: i64,
    stats: OperatorStats,
    /// Closed windows not yet drained, in close order (a plain operator drains each
    /// close before `process` returns).
    closing: std::collections::VecDeque<Closed>,
    defer_close: bool,
    /// Emptied tables of closed windows, for the next windows to open (warm memory).
    spare_tables: Vec<Table>,
    /// Drained key buffers of closed windows, for the next closes.
    spare_keys: Vec<Vec<(Box<str>, WindowAgg)>>,
}

/// A closed window whose results are still to be emitted.
#[derive(Debug)]
struct Closed {
    start_ms: i64,
    end_ms: i64,
    trigger_offset: i64,
    trigger_time_ms: i64,
    /// Keys not yet emitted, in *descending* order: the next one is the last.
    keys: Vec<(Box<str>, WindowAgg)>,
    /// Entries the window held when it closed.
    closed_with: usize,
}

/// Whether a spare of `capacity` that served `used` entries is worth keeping.
fn worth_keeping(capacity: usize, used: usize) -> bool {
    capacity <= SPARE_SLACK.saturating_mul(used).max(SPARE_MIN_KEEP)
}

impl Operator {
    /// A fresh operator: no windows, no event time seen.
    pub fn new(def: std::sync::Arc<QueryDef>) -> Self {
        Self::resume(def, i64::MIN)
    }

    /// An operator resumed at a replay point whose largest event time seen before it
    /// was `max_time_ms` (see the module doc).
    pub fn resume(def: std::sync::Arc<QueryDef>, max_time_ms: i64) -> Self {
        Self {
            def,
            windows: BTreeMap::new(),
            max_time_ms,
            stats: OperatorStats::default(),
            closing: Default::default(),
            defer_close: false,
            spare_tables: Vec::new(),
            spare_keys: Vec::new(),
        }
    }

    /// This operator, with closed windows queued for [`Operator::drain_closed`]
    /// instead of emitted by [`Operator::process`] (see the module doc).
    pub fn deferring_close(mut self) -> Self {
        self.defer_close = true;
        self
    }

    /// Emits up to `max` results of closed windows not yet drained, in the order a
    /// non-deferring operator emits them; returns how many.
    pub fn drain_closed(&mut self, max: usize, out: &mut Vec<Output>) -> usize {
        let mut emitted = 0;
        while emitted < max {
            let Some(closed) = self.closing.front_mut() else { break };
            let Some((key, agg)) = closed.keys.pop() else {
                self.retire_front();
                continue;
            };
            out.push(Output::Window(WindowResult {
                key,
                start_ms: closed.start_ms,
                end_ms: closed.end_ms,
                count: agg.count,
                sum: agg.sum,
                min: agg.min,
                max: agg.max,
                distinct: agg.distinct.estimate() as u64,
                trigger_offset: closed.trigger_offset,
                trigger_time_ms: closed.trigger_time_ms,
            }));
            emitted += 1;
        }
        if self.closing.front().is_some_and(|closed| closed.keys.is_empty()) {
            self.retire_front();
        }
        emitted
    }

    /// Drops the fully drained front of the close queue, keeping its buffer warm.
    fn retire_front(&mut self) {
        if let Some(closed) = self.closing.pop_front() {
            if self.spare_keys.len() < SPARES_MAX && worth_keeping(closed.keys.capacity(), closed.closed_with)
            {
                self.spare_keys.push(closed.keys);
            }
        }
    }

    /// The trigger offset of the oldest closed window not yet fully drained: its
    /// results are not out yet, so nothing at or after this offset is complete.
    pub fn pending_trigger(&self) -> Option<i64> {
        self.closing.front().map(|closed| closed.trigger_offset)
    }

    /// The definition.
    pub fn def(&self) -> &QueryDef {
        &self.def
    }

    /// Largest event time seen minus the allowed lateness.
    pub fn watermark_ms(&self) -> i64 {
        self.max_time_ms.saturating_sub(self.def.window.lateness_ms)
    }

    /// Largest event time seen (`i64::MIN` before the first event).
    pub fn max_time_ms(&self) -> i64 {
        self.max_time_ms
    }

    /// What the operator did so far.
    pub fn stats(&self) -> OperatorStats {
        self.stats
    }

    /// Open windows (key × window pairs).
    pub fn open_windows(&self) -> usize {
        self.windows.values().map(HashMap::len).sum()
    }

    /// Where a replay must start to rebuild the open windows: the smallest first
    /// offset of an open window and the largest event time seen before it; `None`
    /// when no window is open.
    pub fn replay_point(&self) -> Option<(i64, i64)> {
        let open = self.windows.values().flat_map(HashMap::values);
        let closing = self.closing.iter().flat_map(|closed| closed.keys.iter().map(|(_, agg)| agg));
        open.chain(closing)
            .map(|agg| (agg.first_offset, agg.max_time_before_ms))
            .min_by_key(|(offset, _)| *offset)
    }

    /// Processes one event; `denied_ids` holds, per deny rule in order, the event's
    /// value of that rule's field (if any). Outputs are appended to `out`.
    pub fn process(
        &mut self,
        event: &Event<'_>,
        denied_ids: &[Option<&str>],
        deny: &DenySet,
        out: &mut Vec<Output>,
    ) {
        let def = self.def.clone();
        let window = def.window;
        let watermark_before = self.watermark_ms();
        let mut late = false;
        self.stats.events += 1;
        for start in window.starts(event.time_ms) {
            let end = start + window.size_ms;
            if end <= watermark_before {
                late = true;
                continue;
            }
            let spares = &mut self.spare_tables;
            let keys = self.windows.entry(start).or_insert_with(|| spares.pop().unwrap_or_default());
            let agg = match keys.get_mut(event.key) {
                Some(agg) => agg,
                None => {
                    keys.entry(Box::from(event.key)).or_insert(WindowAgg::new(event.offset, self.max_time_ms))
                }
            };
            agg.add(event.value, event.distinct);
            for (index, rule) in def.rules.iter().enumerate() {
                let Condition::Threshold { aggregate, comparison, threshold } = rule.condition else {
                    continue;
                };
                let bit = 1u16 << index;
                if agg.fired & bit != 0 {
                    continue;
                }
                let value = agg.get(aggregate);
                let holds = match comparison {
                    Comparison::Greater => value > threshold,
                    Comparison::AtLeast => value >= threshold,
                };
                if holds {
                    agg.fired |= bit;
                    self.stats.decisions += 1;
                    out.push(Output::Decision(Decision {
                        rule: index,
                        key: Box::from(event.key),
                        window: Some((start, end)),
                        value: DecisionValue::Aggregate(value),
                        trigger_offset: event.offset,
                        trigger_time_ms: event.time_ms,
                    }));
                }
            }
        }
        let deny_rules =
            def.rules.iter().enumerate().filter(|(_, r)| matches!(r.condition, Condition::Denied { .. }));
        for ((index, _), id) in deny_rules.zip(denied_ids) {
            if let Some(id) = id.filter(|id| deny.contains(id)) {
                self.stats.decisions += 1;
                out.push(Output::Decision(Decision {
                    rule: index,
                    key: Box::from(event.key),
                    window: None,
                    value: DecisionValue::Denied(Box::from(id)),
                    trigger_offset: event.offset,
                    trigger_time_ms: event.time_ms,
                }));
            }
        }
        self.stats.late_events += u64::from(late);
        self.max_time_ms = self.max_time_ms.max(event.time_ms);
        self.close_windows(event, out);
    }

    fn close_windows(&mut self, trigger: &Event<'_>, out: &mut Vec<Output>) {
        let watermark = self.watermark_ms();
        let size_ms = self.def.window.size_ms;
        while let Some(entry) = self.windows.first_entry() {
            let start = *entry.key();
            if start.saturating_add(size_ms) > watermark {
                break;
            }
            let mut table = entry.remove();
            let mut keys = self.spare_keys.pop().unwrap_or_default();
            keys.extend(table.drain());
            // Descending, so draining pops from the end in ascending key order.
            keys.sort_unstable_by(|a, b| b.0.cmp(&a.0));
            if self.spare_tables.len() < SPARES_MAX && worth_keeping(table.capacity(), keys.len()) {
                self.spare_tables.push(table);
            }
            self.stats.windows += keys.len() as u64;
            self.closing.push_back(Closed {
                start_ms: start,
                end_ms: start + size_ms,
                trigger_offset: trigger.offset,
                trigger_time_ms: trigger.time_ms,
                closed_with: keys.len(),
                keys,
            });
        }
        if !self.defer_close {
            // One path for both: a plain operator drains what it closed right away.
            self.drain_closed(usize::MAX, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::WindowSpec;
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};
    use std::collections::BTreeSet;
    use std::sync::Arc;

    fn def(size_ms: i64, slide_ms: i64, lateness_ms: i64, rule: &str) -> Arc<QueryDef> {
        let text = format!(
            r#"name = "q"
               source = "s"
               key = "k"
               value = "v"
               distinct = "d"
               window = {{ size = "{size_ms}ms", slide = "{slide_ms}ms", lateness = "{lateness_ms}ms" }}
               deny_list = {{ topic = "deny" }}
               [[rule]]
               when = "{rule}"
               [[rule]]
               when = "d in denylist""#
        );
        Arc::new(QueryDef::parse(&text, "test").unwrap())
    }

    struct Generated {
        key: String,
        time_ms: i64,
        value: i64,
        distinct: String,
    }

    fn events(seed: u64, count: usize) -> Vec<Generated> {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut now = 1_000i64;
        (0..count)
            .map(|_| {
                now += rng.gen_range(0..20);
                // One event in eight arrives up to 600 ms late.
                let time_ms = if rng.gen_ratio(1, 8) { now - rng.gen_range(0..600) } else { now };
                Generated {
                    key: format!("k{}", rng.gen_range(0..3)),
                    time_ms,
                    value: rng.gen_range(-50..1000),
                    distinct: format!("d{}", rng.gen_range(0..7)),
                }
            })
            .collect()
    }

    /// The reference: for every (key, window) the events it got in arrival order,
    /// judged open or closed by recomputing the watermark from scratch each time.
    #[derive(Default)]
    struct Reference {
        windows: BTreeMap<(i64, String), Vec<usize>>,
        closed_at: BTreeMap<(i64, String), usize>,
        late: u64,
    }

    fn reference(spec: WindowSpec, events: &[Generated]) -> Reference {
        let mut reference = Reference::default();
        for (i, event) in events.iter().enumerate() {
            let max_before = events[..i].iter().map(|e| e.time_ms).max().unwrap_or(i64::MIN);
            let watermark_before = max_before.saturating_sub(spec.lateness_ms);
            let mut late = false;
            let first = event.time_ms.div_euclid(spec.slide_ms) * spec.slide_ms - spec.size_ms;
            let mut start = first;
            while start <= event.time_ms {
                if start <= event.time_ms && event.time_ms < start + spec.size_ms {
                    if start + spec.size_ms <= watermark_before {
                        late = true;
                    } else {
                        reference.windows.entry((start, event.key.clone())).or_default().push(i);
                    }
                }
                start += spec.slide_ms;
            }
            reference.late += u64::from(late);
            let watermark_after = max_before.max(event.time_ms).saturating_sub(spec.lateness_ms);
            for (window, _) in reference.windows.iter() {
                if window.0 + spec.size_ms <= watermark_after {
                    reference.closed_at.entry(window.clone()).or_insert(i);
                }
            }
        }
        reference
    }

    /// Feeds generated event `i` (its distinct value also checked against `deny`).
    fn feed(operator: &mut Operator, i: usize, e: &Generated, deny: &DenySet, out: &mut Vec<Output>) {
        let event = Event {
            offset: i as i64,
            key: &e.key,
            time_ms: e.time_ms,
            value: e.value,
            distinct: Some(&e.distinct),
        };
        operator.process(&event, &[Some(&e.distinct)], deny, out);
    }

    fn run(def: &Arc<QueryDef>, events: &[Generated], deny: &DenySet) -> (Vec<Output>, Operator) {
        let mut operator = Operator::new(def.clone());
        let mut out = Vec::new();
        for (i, e) in events.iter().enumerate() {
            feed(&mut operator, i, e, deny, &mut out);
        }
        (out, operator)
    }

    #[test]
    fn given_seeded_random_streams_when_windowed_then_results_match_the_brute_force_reference() {
        for seed in 0..40u64 {
            let (size, slide, lateness) =
                [(100, 100, 0), (100, 100, 150), (300, 100, 50), (200, 50, 400)][seed as usize % 4];
            let count_threshold = 2 + (seed % 3) as i64;
            let def = def(size, slide, lateness, &format!("count > {count_threshold}"));
            let events = events(seed, 400);
            let (out, operator) = run(&def, &events, &DenySet::default());
            let spec = def.window;
            let reference = reference(spec, &events);
            assert_eq!(operator.stats().late_events, reference.late, "late events, seed {seed}");
            // Windows: exactly the reference's closed windows, with its aggregates and trigger.
            let emitted: Vec<&WindowResult> =
                out.iter().filter_map(|o| if let Output::Window(w) = o { Some(w) } else { None }).collect();
            assert_eq!(emitted.len(), reference.closed_at.len(), "closed windows, seed {seed}");
            assert!(emitted.len() > 20 && reference.late > 0, "seed {seed}: too little to check");
            for window in &emitted {
                let id = (window.start_ms, window.key.to_string());
                let members = &reference.windows[&id];
                let values: Vec<i64> = members.iter().map(|&i| events[i].value).collect();
                assert_eq!(window.count, members.len() as u64, "seed {seed} {id:?}");
                assert_eq!(window.sum, values.iter().sum::<i64>());
                assert_eq!(window.min, *values.iter().min().unwrap());
                assert_eq!(window.max, *values.iter().max().unwrap());
                let distinct: BTreeSet<&str> = members.iter().map(|&i| events[i].distinct.as_str()).collect();
                assert_eq!(window.distinct, distinct.len() as u64, "small sets are counted exactly");
                assert_eq!(window.trigger_offset, reference.closed_at[&id] as i64, "seed {seed} {id:?}");
            }
            // Emission order: by window start, then key, never going back.
            let order: Vec<(i64, &str)> = emitted.iter().map(|w| (w.start_ms, &*w.key)).collect();
            assert!(order.windows(2).all(|p| p[0] < p[1]), "seed {seed}: windows out of order");
            // Rules: fire exactly on the event that makes the count exceed the threshold.
            let mut expected: BTreeSet<(i64, String, i64)> = BTreeSet::new();
            for ((start, key), members) in &reference.windows {
                if let Some(&i) = members.get(count_threshold as usize) {
                    expected.insert((*start, key.clone(), i as i64));
                }
            }
            let fired: BTreeSet<(i64, String, i64)> = out
                .iter()
                .filter_map(|o| match o {
                    Output::Decision(d) if d.rule == 0 => {
                        assert_eq!(d.value, DecisionValue::Aggregate(count_threshold + 1));
                        Some((d.window.unwrap().0, d.key.to_string(), d.trigger_offset))
                    }
                    _ => None,
                })
                .collect();
            assert!(!expected.is_empty(), "seed {seed}: no rule ever fires");
            assert_eq!(fired, expected, "threshold decisions, seed {seed}");
        }
    }

    /// Feeds `keys` distinct keys into the 100 ms window starting at `start`, with
    /// offsets from `first_offset`, draining closed windows before each event: the
    /// first event may close earlier windows, and what the last one closes stays queued.
    fn fill_window(operator: &mut Operator, start: i64, keys: usize, first_offset: i64) {
        let mut out = Vec::new();
        for k in 0..keys {
            operator.drain_closed(usize::MAX, &mut out);
            let key = format!("k{k:06}");
            let event = Event {
                offset: first_offset + k as i64,
                key: &key,
                time_ms: start + 10,
                value: 1,
                distinct: None,
            };
            operator.process(&event, &[None], &DenySet::default(), &mut out);
        }
    }

    #[test]
    fn a_window_opens_on_the_table_a_closed_window_left_and_a_close_collects_into_the_last_ones_buffer() {
        let mut operator = Operator::new(def(100, 100, 0, "count > 1000000")).deferring_close();
        fill_window(&mut operator, 0, 5_000, 0);
        // Window 100's first event closes window 0: its table becomes the spare.
        fill_window(&mut operator, 100, 5_000, 10_000);
        assert_eq!(operator.spare_tables.len(), 1);
        let spare_keys = operator.spare_keys.first().map(|keys| (keys.as_ptr(), keys.capacity()));
        assert!(spare_keys.is_some_and(|(_, capacity)| capacity >= 5_000), "the drained buffer is kept");
        // Window 200 opens on window 0's table: no growth from empty.
        fill_window(&mut operator, 200, 1, 20_000);
        assert!(operator.windows[&200].capacity() >= 5_000, "{}", operator.windows[&200].capacity());
        // That event closed window 100 into the buffer window 0's close left.
        let closed = operator.closing.front().expect("window 100 waits to be drained");
        assert_eq!(Some(closed.keys.as_ptr()), spare_keys.map(|(pointer, _)| pointer));
        let mut out = Vec::new();
        assert_eq!(operator.drain_closed(usize::MAX, &mut out), 5_000);
        let keys: Vec<&str> =
            out.iter().map(|o| if let Output::Window(w) = o { &*w.key } else { panic!("{o:?}") }).collect();
        assert!(keys.windows(2).all(|pair| pair[0] < pair[1]), "ascending key order");
    }

    #[test]
    fn a_spare_far_larger_than_its_last_window_is_dropped() {
        let mut operator = Operator::new(def(100, 100, 0, "count > 1000000")).deferring_close();
        let largest = |operator: &Operator| {
            let tables = operator.spare_tables.iter().map(HashMap::capacity);
            let buffers = operator.spare_keys.iter().map(Vec::capacity);
            (tables.max().unwrap_or(0), buffers.max().unwrap_or(0))
        };
        fill_window(&mut operator, 0, 50_000, 0);
        fill_window(&mut operator, 100, 10, 100_000); // closes 0: kept, it served 50,000
        let (table, buffer) = largest(&operator);
        assert!(table >= 50_000 && buffer >= 50_000, "{table} {buffer}");
        fill_window(&mut operator, 200, 10, 200_000); // opens on that table, closes 100
        fill_window(&mut operator, 300, 10, 300_000); // closes 200: 10 keys in 50,000 slots
        operator.drain_closed(usize::MAX, &mut Vec::new());
        let (table, buffer) = largest(&operator);
        assert!(table <= 4 * SPARE_MIN_KEEP && buffer <= 4 * SPARE_MIN_KEEP, "{table} {buffer}");
    }

    #[test]
    fn given_a_deferring_operator_drained_in_random_chunks_then_it_emits_what_a_plain_one_does() {
        let windows = |out: &[Output]| -> Vec<WindowResult> {
            out.iter()
                .filter_map(|o| if let Output::Window(w) = o { Some(w.clone()) } else { None })
                .collect()
        };
        let decisions = |out: &[Output]| -> Vec<Decision> {
            out.iter()
                .filter_map(|o| if let Output::Decision(d) = o { Some(d.clone()) } else { None })
                .collect()
        };
        let mut stricter_replay_points = 0;
        for seed in 0..20u64 {
            let def = def(200, 50, 100, "count > 2");
            let events = events(300 + seed, 500);
            let (plain_out, plain) = run(&def, &events, &DenySet::default());
            let mut rng = SmallRng::seed_from_u64(seed);
            let mut deferring = Operator::new(def.clone()).deferring_close();
            let mut out = Vec::new();
            let mut pending_seen = false;
            for (i, e) in events.iter().enumerate() {
                feed(&mut deferring, i, e, &DenySet::default(), &mut out);
                if let Some(trigger) = deferring.pending_trigger() {
                    pending_seen = true;
                    assert!(trigger <= i as i64, "seed {seed}: pending under a future trigger");
                    // Undrained windows count for the replay point.
                    let (_, plain_so_far) = run(&def, &events[..=i], &DenySet::default());
                    let ours = deferring.replay_point().expect("pending windows have a replay point");
                    match plain_so_far.replay_point() {
                        Some(theirs) => {
                            assert!(ours.0 <= theirs.0, "seed {seed}: replay point past a pending window");
                            stricter_replay_points += usize::from(ours.0 < theirs.0);
                        }
                        None => stricter_replay_points += 1,
                    }
                }
                let chunk = rng.gen_range(0..4);
                assert!(deferring.drain_closed(chunk, &mut out) <= chunk);
            }
            while deferring.drain_closed(2, &mut out) > 0 {}
            assert!(pending_seen, "seed {seed}: no window was ever pending");
            assert_eq!(deferring.pending_trigger(), None);
            assert_eq!(windows(&out), windows(&plain_out), "seed {seed}: window results differ");
            assert_eq!(decisions(&out), decisions(&plain_out), "seed {seed}: decisions differ");
            assert_eq!(deferring.replay_point(), plain.replay_point(), "seed {seed}");
            assert_eq!(deferring.stats(), plain.stats(), "seed {seed}");
        }
        assert!(stricter_replay_points > 0, "pending windows never moved the replay point back");
    }

    #[test]
    fn given_a_deny_list_when_events_match_then_each_fires_a_decision_even_when_late() {
        let def = def(100, 100, 0, "count > 1000");
        let events = events(9, 300);
        let deny = DenySet::from_ids(["d3".to_string()]);
        let (out, _) = run(&def, &events, &deny);
        let fired: Vec<i64> = out
            .iter()
            .filter_map(|o| match o {
                Output::Decision(d) if d.rule == 1 => {
                    assert_eq!(d.value, DecisionValue::Denied("d3".into()));
                    Some(d.trigger_offset)
                }
                _ => None,
            })
            .collect();
        let expected: Vec<i64> =
            events.iter().enumerate().filter(|(_, e)| e.distinct == "d3").map(|(i, _)| i as i64).collect();
        assert!(!expected.is_empty());
        assert_eq!(fired, expected);
    }

    #[test]
    fn given_a_replay_point_when_resumed_there_then_the_open_windows_and_later_outputs_are_identical() {
        for seed in 0..20u64 {
            let def = def(300, 100, 200, "sum > 2000");
            let events = events(100 + seed, 500);
            let cut = 150 + (seed as usize * 13) % 300;
            let (full, _) = run(&def, &events, &DenySet::default());
            let (_, before) = run(&def, &events[..cut], &DenySet::default());
            let (from, max_time_ms) = before.replay_point().map_or((cut as i64, before.max_time_ms()), |p| p);
            assert!(from <= cut as i64);
            let mut resumed = Operator::resume(def.clone(), max_time_ms);
            let mut out = Vec::new();
            for (i, e) in events.iter().enumerate().skip(from as usize) {
                let event = Event {
                    offset: i as i64,
                    key: &e.key,
                    time_ms: e.time_ms,
                    value: e.value,
                    distinct: None,
                };
                if i == cut {
                    out.clear(); // what came before the cut was emitted by the first run
                }
                resumed.process(&event, &[None], &DenySet::default(), &mut out);
            }
            let trigger = |o: &Output| match o {
                Output::Window(w) => w.trigger_offset,
                Output::Decision(d) => d.trigger_offset,
            };
            let expected: Vec<&Output> = full.iter().filter(|o| trigger(o) >= cut as i64).collect();
            let strip = |o: &Output| match o {
                Output::Window(w) => Output::Window(WindowResult { distinct: 0, ..w.clone() }),
                other => other.clone(),
            };
            let expected: Vec<Output> = expected.into_iter().map(strip).collect();
            let got: Vec<Output> = out.iter().map(strip).collect();
            assert_eq!(got, expected, "seed {seed}, cut {cut}");
        }
    }
}
