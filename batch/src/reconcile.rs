//! The `reconcile` job: recompute a stream query's windows from the landed source
//! events, compare them with what the stream emitted (the landed `<query>.agg`
//! topic), and write the corrections.
//!
//! The stream closes a window once its watermark passes the window's end and drops
//! events that arrive later (late events, counted, left to batch). Batch sees every
//! event, so a window differs exactly when late events belonged to it. Both sides use
//! the engine's own event extraction ([`query::EventFields`]) and window
//! aggregates ([`WindowAgg`]), so an unchanged window compares equal field by field,
//! approximate distinct included.
//!
//! Stages:
//! 1. **scan** — one task per morsel of `INPUT/<source>/`: every event's windows, per
//!    (partition, window start, key), partial aggregates;
//! 2. **stream** — one task per morsel of `INPUT/<query>.agg/`: the stream's results;
//! 3. **compare** — merge the partials, and compare every window the stream has closed
//!    (end at or before the latest end it emitted in that partition) with its result;
//! 4. **write** — the corrections, `OUTPUT/reconcile/<query>/dt=…/hr=…/part-00000.parquet`
//!    by window start, written atomically.
//!
//! A correction's `reason` is `late` when batch counted more events than the stream
//! (the difference is `late_events`), `mismatch` otherwise (which would be a bug).

use crate::job::{JobError, JobReport};
use crate::morsel::Morsel;
use crate::output::write_parquet_atomic;
use crate::scheduler::{Scheduler, TaskContext, TaskError};
use arrow_array::builder::{Int32Builder, Int64Builder, StringBuilder, TimestampMillisecondBuilder};
use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, Int64Type, TimestampMillisecondType};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use query::json::{extract, Scalar};
use query::window::WindowAgg;
use query::{EventFields, QueryDef};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Settings of a run.
#[derive(Debug, Clone)]
pub struct ReconcileJob {
    /// The lander's output root (holds `<source>/` and `<query>.agg/`).
    pub input: PathBuf,
    /// Where `reconcile/<query>/` goes.
    pub output: PathBuf,
    /// The stream query.
    pub query: QueryDef,
}

/// A window: (source partition, window start, key).
pub type WindowId = (u32, i64, Box<str>);

/// One window's aggregates as the stream emitted them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamWindow {
    /// Events.
    pub count: i64,
    /// Sum (0 without a value field).
    pub sum: i64,
    /// Smallest value.
    pub min: i64,
    /// Largest value.
    pub max: i64,
    /// Approximate distinct count (0 without a distinct field).
    pub distinct: i64,
}

/// A window batch and the stream disagree on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Correction {
    /// Source partition.
    pub partition: u32,
    /// Group key.
    pub key: String,
    /// Window start (ms).
    pub start_ms: i64,
    /// Window end (ms).
    pub end_ms: i64,
    /// What the stream emitted (`None`: no result, every event of the window was late).
    pub stream: Option<StreamWindow>,
    /// What batch computed over every event.
    pub batch: StreamWindow,
    /// `late` or `mismatch`.
    pub reason: &'static str,
}

/// What a comparison found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconciliation {
    /// Windows the stream had closed, compared.
    pub compared: usize,
    /// Equal on every aggregate.
    pub equal: usize,
    /// Stream results late events changed.
    pub changed_by_late: usize,
    /// Windows the stream never emitted because all their events were late.
    pub missing: usize,
    /// Disagreements late events do not explain.
    pub mismatched: usize,
    /// Events batch counted that the stream did not (late events), over corrected windows.
    pub late_events: i64,
    /// Every correction, sorted by window.
    pub corrections: Vec<Correction>,
}

fn task_error(error: impl std::fmt::Display) -> TaskError {
    TaskError::Failed(error.to_string())
}

type Partial = HashMap<(u32, i64), HashMap<Box<str>, WindowAgg>>;

/// Stage 1 for one morsel: the windows of every event in it.
fn scan(morsel: &Morsel, def: &QueryDef, context: &TaskContext<'_>) -> Result<(Partial, u64), TaskError> {
    let reader = crate::morsel::reader(morsel, Some(&["partition", "offset", "timestamp", "value"]))
        .map_err(TaskError::Failed)?;
    let fields = EventFields::new(def);
    let mut partial: Partial = HashMap::new();
    let mut bad = 0u64;
    for batch in reader {
        context.checkpoint()?;
        let batch = batch.map_err(task_error)?;
        let column = |name: &str| {
            batch
                .column_by_name(name)
                .cloned()
                .ok_or_else(|| task_error(format!("{}: no {name}", morsel.file.display())))
        };
        let (partition, offset, timestamp, value) =
            (column("partition")?, column("offset")?, column("timestamp")?, column("value")?);
        let partition = partition.as_primitive::<Int32Type>();
        let offset = offset.as_primitive::<Int64Type>();
        let timestamp = timestamp.as_primitive::<TimestampMillisecondType>();
        let value = value.as_binary::<i32>();
        let mut slots: Vec<Option<Scalar<'_>>> = vec![None; fields.names().len()];
        for i in 0..batch.num_rows() {
            if !value.is_valid(i) || !extract(value.value(i), fields.names(), &mut slots) {
                bad += 1;
                continue;
            }
            let Some(event) = fields.event(&slots, offset.value(i), timestamp.value(i)) else {
                bad += 1;
                continue;
            };
            for start in def.window.starts(event.time_ms) {
                let keys = partial.entry((partition.value(i) as u32, start)).or_default();
                match keys.get_mut(event.key) {
                    Some(agg) => agg.add(event.value, event.distinct),
                    None => {
                        let mut agg = WindowAgg::new(event.offset, 0);
                        agg.add(event.value, event.distinct);
                        keys.insert(Box::from(event.key), agg);
                    }
                }
            }
        }
    }
    Ok((partial, bad))
}

/// Stage 2 for one morsel of `<query>.agg`: the stream's window results.
fn stream_results(
    morsel: &Morsel,
    context: &TaskContext<'_>,
) -> Result<Vec<(WindowId, StreamWindow, i64)>, TaskError> {
    let reader = crate::morsel::reader(morsel, Some(&["value"])).map_err(TaskError::Failed)?;
    let mut out = Vec::new();
    for batch in reader {
        context.checkpoint()?;
        let batch = batch.map_err(task_error)?;
        let value = batch
            .column_by_name("value")
            .ok_or_else(|| task_error("no value column"))?
            .as_binary::<i32>()
            .clone();
        for i in 0..batch.num_rows() {
            let text: serde_json::Value = serde_json::from_slice(value.value(i))
                .map_err(|e| task_error(format!("an agg record: {e}")))?;
            let int = |name: &str| text[name].as_i64();
            let (Some(partition), Some(start), Some(end), Some(key), Some(count)) = (
                int("partition"),
                int("window_start"),
                int("window_end"),
                text["key"].as_str(),
                int("count"),
            ) else {
                return Err(task_error(format!("an agg record lacks window fields: {text}")));
            };
            let window = StreamWindow {
                count,
                sum: int("sum").unwrap_or(0),
                min: int("min").unwrap_or(0),
                max: int("max").unwrap_or(0),
                distinct: int("distinct").unwrap_or(0),
            };
            out.push(((partition as u32, start, Box::from(key)), window, end));
        }
    }
    Ok(out)
}

fn batch_window(def: &QueryDef, agg: &WindowAgg) -> StreamWindow {
    StreamWindow {
        count: agg.count as i64,
        sum: if def.value_field.is_some() { agg.sum } else { 0 },
        min: if def.value_field.is_some() { agg.min } else { 0 },
        max: if def.value_field.is_some() { agg.max } else { 0 },
        distinct: if def.distinct_field.is_some() { agg.distinct.estimate() as i64 } else { 0 },
    }
}

/// Compares batch's windows with the stream's (see the module doc).
pub fn compare(
    def: &QueryDef,
    batch: &HashMap<(u32, i64), HashMap<Box<str>, WindowAgg>>,
    stream: &HashMap<WindowId, StreamWindow>,
) -> Reconciliation {
    let mut closed_through: HashMap<u32, i64> = HashMap::new();
    for (partition, start, _) in stream.keys() {
        let end = start + def.window.size_ms;
        let bound = closed_through.entry(*partition).or_insert(end);
        *bound = (*bound).max(end);
    }
    let mut result = Reconciliation::default();
    let mut seen = 0usize;
    for (&(partition, start), keys) in batch {
        let end = start + def.window.size_ms;
        if closed_through.get(&partition).is_none_or(|bound| end > *bound) {
            continue; // still open in the stream
        }
        for (key, agg) in keys {
            result.compared += 1;
            let batch = batch_window(def, agg);
            let id = (partition, start, key.clone());
            let emitted = stream.get(&id).copied();
            seen += usize::from(emitted.is_some());
            if emitted == Some(batch) {
                result.equal += 1;
                continue;
            }
            let late = batch.count - emitted.map_or(0, |s| s.count);
            let reason = if late > 0 { "late" } else { "mismatch" };
            match (reason, emitted) {
                ("late", Some(_)) => result.changed_by_late += 1,
                ("late", None) => result.missing += 1,
                _ => result.mismatched += 1,
            }
            if late > 0 {
                result.late_events += late;
            }
            result.corrections.push(Correction {
                partition,
                key: key.to_string(),
                start_ms: start,
                end_ms: end,
                stream: emitted,
                batch,
                reason,
            });
        }
    }
    // Stream results batch has no events for at all.
    for ((partition, start, key), window) in stream {
        let known = batch.get(&(*partition, *start)).is_some_and(|keys| keys.contains_key(key));
        if !known {
            result.compared += 1;
            result.mismatched += 1;
            result.corrections.push(Correction {
                partition: *partition,
                key: key.to_string(),
                start_ms: *start,
                end_ms: start + def.window.size_ms,
                stream: Some(*window),
                batch: StreamWindow { count: 0, sum: 0, min: 0, max: 0, distinct: 0 },
                reason: "mismatch",
            });
        }
    }
    debug_assert!(seen <= stream.len());
    result
        .corrections
        .sort_by(|a, b| (a.partition, a.start_ms, &a.key).cmp(&(b.partition, b.start_ms, &b.key)));
    result
}

/// The corrections' schema.
pub fn output_schema() -> Arc<Schema> {
    let ts = DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
    let mut fields = vec![
        Field::new("partition", DataType::Int32, false),
        Field::new("key", DataType::Utf8, false),
        Field::new("window_start", ts.clone(), false),
        Field::new("window_end", ts, false),
        Field::new("reason", DataType::Utf8, false),
        Field::new("late_events", DataType::Int64, false),
    ];
    for name in ["count", "sum", "min", "max", "distinct"] {
        fields.push(Field::new(format!("stream_{name}"), DataType::Int64, true));
        fields.push(Field::new(format!("batch_{name}"), DataType::Int64, false));
    }
    Arc::new(Schema::new(fields))
}

fn corrections_batch(corrections: &[&Correction]) -> RecordBatch {
    let mut partition = Int32Builder::new();
    let mut key = StringBuilder::new();
    let mut start = TimestampMillisecondBuilder::new().with_timezone("UTC");
    let mut end = TimestampMillisecondBuilder::new().with_timezone("UTC");
    let mut reason = StringBuilder::new();
    let mut late = Int64Builder::new();
    let mut values: Vec<(Int64Builder, Int64Builder)> =
        (0..5).map(|_| (Int64Builder::new(), Int64Builder::new())).collect();
    for c in corrections {
        partition.append_value(c.partition as i32);
        key.append_value(&c.key);
        start.append_value(c.start_ms);
        end.append_value(c.end_ms);
        reason.append_value(c.reason);
        late.append_value(c.batch.count - c.stream.map_or(0, |s| s.count));
        let pick = |w: &StreamWindow| [w.count, w.sum, w.min, w.max, w.distinct];
        let batch = pick(&c.batch);
        let stream = c.stream.as_ref().map(pick);
        for (i, (s, b)) in values.iter_mut().enumerate() {
            s.append_option(stream.map(|v| v[i]));
            b.append_value(batch[i]);
        }
    }
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(partition.finish()),
        Arc::new(key.finish()),
        Arc::new(start.finish()),
        Arc::new(end.finish()),
        Arc::new(reason.finish()),
        Arc::new(late.finish()),
    ];
    for (mut s, mut b) in values {
        columns.push(Arc::new(s.finish()));
        columns.push(Arc::new(b.finish()));
    }
    RecordBatch::try_new(output_schema(), columns).expect("columns match the schema")
}

/// Where the corrections of windows starting in `hour` (hours since the epoch) go.
pub fn corrections_path(output: &Path, query: &str, hour: i64) -> PathBuf {
    let time = chrono::DateTime::from_timestamp(hour * 3600, 0).unwrap_or_default();
    output
        .join("reconcile")
        .join(query)
        .join(format!("dt={}", time.format("%Y-%m-%d")))
        .join(format!("hr={}", time.format("%H")))
        .join("part-00000.parquet")
}

impl crate::job::Job for ReconcileJob {
    /// The windows recomputed and what late events changed.
    type Output = Reconciliation;
    fn name(&self) -> &'static str {
        "reconcile"
    }
    fn run(
        &self,
        scheduler: &Scheduler,
        progress: &crate::job::Progress,
        on_stage: &mut dyn FnMut(&str, usize),
    ) -> Result<(JobReport, Reconciliation), JobError> {
        run(self, scheduler, progress, on_stage)
    }
}

/// Runs the job; returns the report and the reconciliation.
fn run(
    job: &ReconcileJob,
    scheduler: &Scheduler,
    progress: &crate::job::Progress,
    on_stage: &mut dyn FnMut(&str, usize),
) -> Result<(JobReport, Reconciliation), JobError> {
    let def = &job.query;
    let files = crate::morsel::parquet_files(&job.input.join(&def.source))?;
    let plan = crate::morsel::plan(&files, "timestamp", None, None)?;
    let agg_files = crate::morsel::parquet_files(&job.input.join(def.agg_topic()))?;
    let agg_plan = crate::morsel::plan(&agg_files, "timestamp", None, None)?;
    let mut report = JobReport { plan: plan.clone(), ..JobReport::default() };

    on_stage("scan", plan.morsels.len());
    let (partials, stage) = scheduler.run_stage("scan", plan.morsels.len(), &progress[0], |context| {
        scan(&plan.morsels[context.task], def, context)
    })?;
    report.stages.push(stage);
    on_stage("stream", agg_plan.morsels.len());
    let (streamed, stage) =
        scheduler.run_stage("stream", agg_plan.morsels.len(), &progress[1], |context| {
            stream_results(&agg_plan.morsels[context.task], context)
        })?;
    report.stages.push(stage);

    on_stage("compare", 1);
    let (mut compared, stage) = scheduler.run_stage("compare", 1, &progress[2], |context| {
        let mut batch: Partial = HashMap::new();
        for (partial, _) in &partials {
            context.checkpoint()?;
            for (window, keys) in partial {
                let merged = batch.entry(*window).or_default();
                for (key, agg) in keys {
                    match merged.get_mut(key) {
                        Some(existing) => existing.merge(agg),
                        None => drop(merged.insert(key.clone(), agg.clone())),
                    }
                }
            }
        }
        let stream: HashMap<WindowId, StreamWindow> =
            streamed.iter().flatten().map(|(id, window, _)| (id.clone(), *window)).collect();
        Ok(compare(def, &batch, &stream))
    })?;
    report.stages.push(stage);
    let reconciliation = compared.pop().expect("one compare task");
    report.rows = partials
        .iter()
        .map(|(p, _)| p.values().map(|k| k.values().map(|a| a.count).sum::<u64>()).sum::<u64>())
        .sum::<u64>()
        / (def.window.size_ms / def.window.slide_ms) as u64;
    report.bad_rows = partials.iter().map(|(_, bad)| bad).sum();
    report.groups = reconciliation.corrections.len();

    let mut by_hour: BTreeMap<i64, Vec<&Correction>> = BTreeMap::new();
    for correction in &reconciliation.corrections {
        by_hour.entry(correction.start_ms.div_euclid(3_600_000)).or_default().push(correction);
    }
    let hours: Vec<(i64, Vec<&Correction>)> = by_hour.into_iter().collect();
    on_stage("write", hours.len());
    let (files, stage) = scheduler.run_stage("write", hours.len(), &progress[3], |context| {
        let (hour, corrections) = &hours[context.task];
        let path = corrections_path(&job.output, &def.name, *hour);
        write_parquet_atomic(&path, &corrections_batch(corrections), context).map_err(task_error)?;
        Ok(path)
    })?;
    report.stages.push(stage);
    report.files = files;
    Ok((report, reconciliation))
}
