//! The `hourly` job: per event-time hour, merchant and country, the count, sum, min,
//! max, p50 and p99 of `amount_cents` over the landed payments.
//!
//! Stages:
//! 1. **scan + partial aggregate** — one task per morsel: read only the needed columns
//!    (`ts`, `timestamp`, `merchant_id`, `country`, `amount_cents`), skip rows outside
//!    `[from, to)` and rows without a merchant, country or amount (bad records), and
//!    aggregate into per-key partials, hash-partitioned into `R` exchange buckets;
//! 2. **final aggregate** — one task per bucket: merge that bucket of every partial;
//! 3. **write** — one task per hour: `OUTPUT/hourly/dt=YYYY-MM-DD/hr=HH/part-00000.parquet`,
//!    rows sorted by merchant and country, written atomically (see [`crate::output`]).
//!
//! Percentiles come from a mergeable DDSketch (`sketches-ddsketch`, relative accuracy
//! [`SKETCH_RELATIVE_ACCURACY`]): the reported q-quantile is within 1% (relative) of the
//! exact nearest-rank value, rank `ceil(q·n)` (DuckDB's `quantile_disc`). Count, sum, min and
//! max are exact. The sketch is also written (`amount_sketch`, DDSketch's Java binary
//! encoding) so `daily` can roll hours up without the raw rows.

use crate::morsel::Morsel;
use crate::output::write_parquet_atomic;
use crate::scheduler::{Scheduler, StageProgress, TaskContext, TaskError};
use arrow_array::builder::{
    BinaryBuilder, Float64Builder, Int64Builder, StringBuilder, TimestampMillisecondBuilder,
};
use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, Int64Type, TimestampMillisecondType};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use hashbrown::HashMap;
use sketches_ddsketch::{Config as SketchConfig, DDSketch};
use std::collections::BTreeMap;
use std::hash::Hash;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Relative accuracy of the percentile sketch.
pub const SKETCH_RELATIVE_ACCURACY: f64 = 0.01;
/// Bins a sketch may use before it collapses its lowest ones.
pub const SKETCH_BINS_MAX: u32 = 2048;
/// Exchange buckets between the partial and the final aggregate.
pub const EXCHANGE_BUCKETS: usize = 16;
pub use crate::morsel::READ_BATCH_ROWS;
/// Milliseconds per hour.
pub const HOUR_MS: i64 = 3_600_000;
pub use crate::job::STAGES_MAX;
/// Default sub-keys a hot key is salted over.
pub const SKEW_SALTS_DEFAULT: usize = 8;
/// A key is hot above this multiple of the median key's rows.
pub const SKEW_MEDIAN_FACTOR: u64 = 5;

/// The grouping key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HourKey {
    /// Event-time hour, hours since the epoch (UTC).
    pub hour: i64,
    /// Merchant.
    pub merchant_id: String,
    /// Country.
    pub country: String,
}

/// Aggregates of one key.
#[derive(Clone)]
pub struct Aggregate {
    /// Rows.
    pub count: u64,
    /// Sum of amounts.
    pub sum: i64,
    /// Smallest amount.
    pub min: i64,
    /// Largest amount.
    pub max: i64,
    /// Amount distribution.
    pub sketch: DDSketch,
}

impl std::fmt::Debug for Aggregate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Aggregate")
            .field("count", &self.count)
            .field("sum", &self.sum)
            .field("min", &self.min)
            .field("max", &self.max)
            .finish_non_exhaustive()
    }
}

/// A fresh sketch with the job's accuracy.
pub fn new_sketch() -> DDSketch {
    DDSketch::new(SketchConfig::new(SKETCH_RELATIVE_ACCURACY, SKETCH_BINS_MAX, 1.0e-9))
}

impl Aggregate {
    /// Folds `other` in.
    pub fn merge(&mut self, other: &Self) {
        self.count += other.count;
        self.sum = self.sum.wrapping_add(other.sum);
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.sketch.merge(&other.sketch).expect("sketches share one configuration");
    }

    /// The nearest-rank q-quantile of the amounts: the value at 1-based rank
    /// `ceil(q·n)`, as DuckDB's `quantile_disc`, within the sketch's accuracy.
    pub fn quantile(&self, q: f64) -> f64 {
        assert!((0.0..=1.0).contains(&q));
        let n = self.count;
        if n == 0 {
            return f64::NAN;
        }
        // DDSketch answers rank floor(q'·(n-1)) (0-based); pick q' that lands on the
        // 0-based nearest rank k = ceil(q·n) - 1, half a rank inside to absorb rounding.
        let k = ((q * n as f64).ceil() as u64).clamp(1, n) - 1;
        let sketch_q = if k == n - 1 { 1.0 } else { (k as f64 + 0.5) / (n - 1) as f64 };
        self.sketch.quantile(sketch_q).expect("q in 0..=1").unwrap_or(f64::NAN)
    }
}

/// A scan task's aggregates of one key: exact count, sum, min, max and the raw
/// amounts. The final aggregate adds the amounts to one sketch per key, so no
/// per-morsel sketch is built or merged (a sketch of added values equals the merge of
/// sketches of the same values: bins are a function of the value).
#[derive(Debug, Clone, Default)]
pub struct Amounts {
    /// Rows.
    pub count: u64,
    sum: i64,
    min: i64,
    max: i64,
    amounts: Vec<i64>,
}

impl Amounts {
    fn new() -> Self {
        Self { min: i64::MAX, max: i64::MIN, ..Self::default() }
    }

    fn add(&mut self, amount: i64) {
        self.count += 1;
        self.sum = self.sum.wrapping_add(amount);
        self.min = self.min.min(amount);
        self.max = self.max.max(amount);
        self.amounts.push(amount);
    }
}

impl Aggregate {
    fn empty() -> Self {
        Self { count: 0, sum: 0, min: i64::MAX, max: i64::MIN, sketch: new_sketch() }
    }

    /// Folds a scan partial in, adding its amounts to the sketch.
    fn absorb(&mut self, partial: &Amounts) {
        self.count += partial.count;
        self.sum = self.sum.wrapping_add(partial.sum);
        self.min = self.min.min(partial.min);
        self.max = self.max.max(partial.max);
        for amount in &partial.amounts {
            self.sketch.add(*amount as f64);
        }
    }
}

fn absorb_into<K: Hash + Eq + Clone>(into: &mut HashMap<K, Aggregate>, key: &K, partial: &Amounts) {
    match into.get_mut(key) {
        Some(existing) => existing.absorb(partial),
        None => into.entry(key.clone()).or_insert_with(Aggregate::empty).absorb(partial),
    }
}

/// Settings of a run.
#[derive(Debug, Clone)]
pub struct HourlyJob {
    /// The lander's output root (`INPUT/<topic>/dt=…`).
    pub input: PathBuf,
    /// Topic to read.
    pub topic: String,
    /// Where `hourly/` goes.
    pub output: PathBuf,
    /// Only event times at or after this (ms since the epoch).
    pub from_ms: Option<i64>,
    /// Only event times before this.
    pub to_ms: Option<i64>,
    /// Sub-keys a hot key is salted over; 0 or 1 turns skew handling off.
    pub salts: usize,
}

pub use crate::job::{JobError, JobReport};

/// A partial aggregate by exchange bucket (what `daily`'s scan produces).
pub type Partial = Vec<HashMap<HourKey, Aggregate>>;
/// An `hourly` scan task's partial aggregate, by exchange bucket.
pub type ScanPartial = Vec<HashMap<HourKey, Amounts>>;

/// FNV-1a over the key's fields, then `salt`: the exchange's partitioning (stable, and
/// cheaper than SipHash on this hot path).
fn key_hash(key: &HourKey, salt: u64) -> u64 {
    let bytes = key.hour.to_le_bytes().into_iter().chain(key.merchant_id.bytes()).chain([0xff]);
    let bytes = bytes.chain(key.country.bytes()).chain(salt.to_le_bytes());
    bytes.fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// Merges `aggregate` into `into[key]`, cloning it in when the key is new.
pub(crate) fn merge_into<K: Hash + Eq + Clone>(
    into: &mut HashMap<K, Aggregate>,
    key: &K,
    aggregate: &Aggregate,
) {
    match into.get_mut(key) {
        Some(existing) => existing.merge(aggregate),
        None => {
            into.insert(key.clone(), aggregate.clone());
        }
    }
}

pub(crate) fn bucket_of(key: &HourKey) -> usize {
    (key_hash(key, 0) % EXCHANGE_BUCKETS as u64) as usize
}

fn task_error(error: impl std::fmt::Display) -> TaskError {
    TaskError::Failed(error.to_string())
}

/// Strings of one task, numbered in first-seen order.
#[derive(Default)]
struct Interner {
    ids: HashMap<Box<str>, u32>,
    names: Vec<Box<str>>,
}

impl Interner {
    fn id(&mut self, name: &str) -> u32 {
        if let Some(id) = self.ids.get(name) {
            return *id;
        }
        let id = self.names.len() as u32;
        self.names.push(Box::from(name));
        self.ids.insert(Box::from(name), id);
        id
    }

    /// Ids of a dictionary's values, indexed like the dictionary.
    fn ids_of(&mut self, values: &arrow_array::StringArray) -> Vec<u32> {
        (0..values.len()).map(|j| self.id(values.value(j))).collect()
    }
}

/// Stage 1 for one morsel. Merchant and country are read as Arrow dictionaries (the
/// lander writes them dictionary-encoded): each batch's dictionary values are
/// interned once, and rows group by integers, never hashing or copying a string.
fn partial_aggregate(
    morsel: &Morsel,
    job: &HourlyJob,
    context: &TaskContext<'_>,
) -> Result<(ScanPartial, u64, u64), TaskError> {
    let wanted = ["ts", "timestamp", "merchant_id", "country", "amount_cents"];
    let reader = crate::morsel::reader_with_dictionaries(morsel, &wanted, &["merchant_id", "country"])
        .map_err(TaskError::Failed)?;
    let (mut merchants, mut countries) = (Interner::default(), Interner::default());
    let mut local: HashMap<(i64, u32, u32), Amounts> = HashMap::new();
    let (mut rows, mut bad) = (0u64, 0u64);
    for batch in reader {
        context.checkpoint()?;
        let batch = batch.map_err(task_error)?;
        let column = |name: &str| batch.column_by_name(name).cloned();
        let (Some(timestamp), Some(merchant), Some(country), Some(amount)) =
            (column("timestamp"), column("merchant_id"), column("country"), column("amount_cents"))
        else {
            return Err(TaskError::Failed(format!("{}: missing payments columns", morsel.file.display())));
        };
        let event_time = column("ts");
        let timestamp = timestamp.as_primitive::<TimestampMillisecondType>();
        let event_time = event_time.as_ref().map(|c| c.as_primitive::<TimestampMillisecondType>());
        let dictionary = |array: &ArrayRef, name: &str| {
            array.as_dictionary_opt::<Int32Type>().cloned().ok_or_else(|| {
                TaskError::Failed(format!("{}: {name} is not dictionary-encoded", morsel.file.display()))
            })
        };
        let (merchant, country) = (dictionary(&merchant, "merchant_id")?, dictionary(&country, "country")?);
        let merchant_ids = merchants.ids_of(merchant.values().as_string::<i32>());
        let country_ids = countries.ids_of(country.values().as_string::<i32>());
        let (merchant_keys, country_keys) = (merchant.keys(), country.keys());
        let amount = amount.as_primitive::<Int64Type>();
        for i in 0..batch.num_rows() {
            let time = match event_time {
                Some(ts) if ts.is_valid(i) => ts.value(i),
                _ => timestamp.value(i),
            };
            if job.from_ms.is_some_and(|from| time < from) || job.to_ms.is_some_and(|to| time >= to) {
                continue;
            }
            if !(merchant.is_valid(i) && country.is_valid(i) && amount.is_valid(i)) {
                bad += 1;
                continue;
            }
            rows += 1;
            let key = (
                time.div_euclid(HOUR_MS),
                merchant_ids[merchant_keys.value(i) as usize],
                country_ids[country_keys.value(i) as usize],
            );
            local.entry(key).or_insert_with(Amounts::new).add(amount.value(i));
        }
    }
    let mut partial: ScanPartial = (0..EXCHANGE_BUCKETS).map(|_| HashMap::new()).collect();
    for ((hour, merchant, country), amounts) in local {
        let key = HourKey {
            hour,
            merchant_id: merchants.names[merchant as usize].to_string(),
            country: countries.names[country as usize].to_string(),
        };
        partial[bucket_of(&key)].insert(key, amounts);
    }
    Ok((partial, rows, bad))
}

/// The output schema of `hourly`.
pub fn output_schema() -> SchemaRef {
    let ts = DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("hour", ts, false),
        Field::new("merchant_id", DataType::Utf8, false),
        Field::new("country", DataType::Utf8, false),
        Field::new("count", DataType::Int64, false),
        Field::new("sum_amount_cents", DataType::Int64, false),
        Field::new("min_amount_cents", DataType::Int64, false),
        Field::new("max_amount_cents", DataType::Int64, false),
        Field::new("p50_amount_cents", DataType::Float64, false),
        Field::new("p99_amount_cents", DataType::Float64, false),
        Field::new("amount_sketch", DataType::Binary, false),
    ]))
}

/// Rows of one hour as a record batch (sorted by merchant, country).
pub fn hour_batch(rows: &[(&HourKey, &Aggregate)]) -> RecordBatch {
    let mut hour = TimestampMillisecondBuilder::new().with_timezone("UTC");
    let (mut merchant, mut country) = (StringBuilder::new(), StringBuilder::new());
    let (mut count, mut sum, mut min, mut max) =
        (Int64Builder::new(), Int64Builder::new(), Int64Builder::new(), Int64Builder::new());
    let (mut p50, mut p99) = (Float64Builder::new(), Float64Builder::new());
    let mut sketch = BinaryBuilder::new();
    for (key, aggregate) in rows {
        hour.append_value(key.hour * HOUR_MS);
        merchant.append_value(&key.merchant_id);
        country.append_value(&key.country);
        count.append_value(aggregate.count as i64);
        sum.append_value(aggregate.sum);
        min.append_value(aggregate.min);
        max.append_value(aggregate.max);
        p50.append_value(aggregate.quantile(0.5));
        p99.append_value(aggregate.quantile(0.99));
        sketch.append_value(aggregate.sketch.to_java_bytes());
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(hour.finish()),
        Arc::new(merchant.finish()),
        Arc::new(country.finish()),
        Arc::new(count.finish()),
        Arc::new(sum.finish()),
        Arc::new(min.finish()),
        Arc::new(max.finish()),
        Arc::new(p50.finish()),
        Arc::new(p99.finish()),
        Arc::new(sketch.finish()),
    ];
    RecordBatch::try_new(output_schema(), columns).expect("columns match the schema")
}

/// The write stage of a rollup: groups the final rows by `period_of(key)`, sorts each
/// group by key, and runs one task per period that writes it with `write` (which
/// returns the file's path). Sets the report's groups, files and stage.
pub(crate) fn write_periods<'a>(
    scheduler: &Scheduler,
    progress: &StageProgress,
    on_stage: &mut dyn FnMut(&str, usize),
    rows: impl Iterator<Item = (&'a HourKey, &'a Aggregate)>,
    period_of: impl Fn(&HourKey) -> i64,
    report: &mut JobReport,
    write: impl Fn(i64, &[(&HourKey, &Aggregate)], &TaskContext<'_>) -> std::io::Result<PathBuf> + Sync,
) -> Result<(), JobError> {
    let mut by_period: BTreeMap<i64, Vec<(&HourKey, &Aggregate)>> = BTreeMap::new();
    for (key, aggregate) in rows {
        by_period.entry(period_of(key)).or_default().push((key, aggregate));
    }
    for rows in by_period.values_mut() {
        rows.sort_by(|a, b| a.0.cmp(b.0));
    }
    report.groups = by_period.values().map(Vec::len).sum();
    let periods: Vec<(i64, Vec<(&HourKey, &Aggregate)>)> = by_period.into_iter().collect();
    on_stage("write", periods.len());
    let (files, stage) = scheduler.run_stage("write", periods.len(), progress, |context| {
        let (period, rows) = &periods[context.task];
        context.checkpoint()?;
        write(*period, rows, context).map_err(task_error)
    })?;
    report.stages.push(stage);
    report.files = files;
    Ok(())
}

/// `OUTPUT/hourly/dt=YYYY-MM-DD/hr=HH/part-00000.parquet`.
pub fn hour_path(output: &Path, hour: i64) -> PathBuf {
    let time = chrono::DateTime::from_timestamp_millis(hour * HOUR_MS).expect("hour in range");
    output.join(format!("hourly/{}/part-00000.parquet", time.format("dt=%Y-%m-%d/hr=%H")))
}

/// Finds hot keys from the scan's per-morsel key counts (the partials are already a
/// compact sample: one entry per key per morsel): a key is hot when its rows exceed
/// [`SKEW_MEDIAN_FACTOR`] × the median key's and it alone carries at least a quarter of
/// an average exchange bucket. Returns them with their sampled rows, largest first.
pub fn hot_keys(partials: &[&ScanPartial]) -> Vec<(HourKey, u64)> {
    let mut counts: HashMap<&HourKey, u64> = HashMap::new();
    for partial in partials {
        for (key, aggregate) in partial.iter().flatten() {
            *counts.entry(key).or_default() += aggregate.count;
        }
    }
    if counts.is_empty() {
        return Vec::new();
    }
    let mut sorted: Vec<u64> = counts.values().copied().collect();
    sorted.sort_unstable();
    let median = sorted[sorted.len() / 2];
    let total: u64 = sorted.iter().sum();
    let floor = total / (4 * EXCHANGE_BUCKETS as u64);
    let mut hot: Vec<(HourKey, u64)> = counts
        .into_iter()
        .filter(|(_, rows)| *rows > SKEW_MEDIAN_FACTOR * median && *rows >= floor.max(1))
        .map(|(key, rows)| (key.clone(), rows))
        .collect();
    hot.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    hot
}

fn salted_bucket(key: &HourKey, salt: usize) -> usize {
    (key_hash(key, salt as u64 + 1) % EXCHANGE_BUCKETS as u64) as usize
}

impl crate::job::Job for HourlyJob {
    type Output = ();
    fn name(&self) -> &'static str {
        "hourly"
    }
    /// Stages: scan, aggregate, unsalt, write.
    fn run(
        &self,
        scheduler: &Scheduler,
        progress: &crate::job::Progress,
        on_stage: &mut dyn FnMut(&str, usize),
    ) -> Result<(JobReport, ()), JobError> {
        run(self, scheduler, progress, self.salts, on_stage).map(|report| (report, ()))
    }
}

/// Runs the job on `scheduler`. `progress[i]` receives stage `i`'s live counters:
/// scan, aggregate, unsalt, write. `salts` > 1 enables skew handling.
fn run(
    job: &HourlyJob,
    scheduler: &Scheduler,
    progress: &[StageProgress; STAGES_MAX],
    salts: usize,
    on_stage: &mut dyn FnMut(&str, usize),
) -> Result<JobReport, JobError> {
    let files = crate::morsel::parquet_files(&job.input.join(&job.topic))?;
    let plan = crate::morsel::plan(&files, "ts", job.from_ms, job.to_ms)?;
    let mut report = JobReport { plan: plan.clone(), ..JobReport::default() };

    on_stage("scan", plan.morsels.len());
    let (partials, scan) = scheduler.run_stage("scan", plan.morsels.len(), &progress[0], |context| {
        partial_aggregate(&plan.morsels[context.task], job, context)
    })?;
    report.stages.push(scan);
    report.rows = partials.iter().map(|(_, rows, _)| rows).sum();
    report.bad_rows = partials.iter().map(|(_, _, bad)| bad).sum();

    // Skew: a hot key's partials (one per morsel) would all merge in one task; salted,
    // morsel m's partial of hot key k merges in bucket hash(k, m % salts), and the
    // `unsalt` stage merges the salted sub-aggregates of each hot key.
    let hot: Vec<(HourKey, u64)> = if salts > 1 {
        hot_keys(&partials.iter().map(|(p, _, _)| p).collect::<Vec<_>>())
    } else {
        Vec::new()
    };
    let hot_set: HashMap<&HourKey, usize> = hot.iter().enumerate().map(|(i, (k, _))| (k, i)).collect();
    report.hot_keys = hot
        .iter()
        .map(|(key, rows)| crate::job::HotKey {
            key: format!("{}/{} hour {}", key.merchant_id, key.country, key.hour),
            rows: *rows,
        })
        .collect();
    report.salts = if hot.is_empty() { 0 } else { salts };

    on_stage("aggregate", EXCHANGE_BUCKETS);
    type Merged = (HashMap<HourKey, Aggregate>, Vec<(usize, Aggregate)>);
    let (finals, aggregate) = scheduler.run_stage(
        "aggregate",
        EXCHANGE_BUCKETS,
        &progress[1],
        |context| -> Result<Merged, TaskError> {
            let bucket = context.task;
            let mut merged: HashMap<HourKey, Aggregate> = HashMap::new();
            let mut salted: HashMap<usize, Aggregate> = HashMap::new();
            for (morsel, (partial, _, _)) in partials.iter().enumerate() {
                context.checkpoint()?;
                for (key, amounts) in &partial[bucket] {
                    if !hot_set.contains_key(key) {
                        absorb_into(&mut merged, key, amounts);
                    }
                }
                for (key, hot_index) in &hot_set {
                    if salted_bucket(key, morsel % salts.max(1)) != bucket {
                        continue;
                    }
                    if let Some(amounts) = partial[bucket_of(key)].get(*key) {
                        absorb_into(&mut salted, hot_index, amounts);
                    }
                }
            }
            Ok((merged, salted.into_iter().collect()))
        },
    )?;
    report.stages.push(aggregate);

    on_stage("unsalt", hot.len());
    let (unsalted, unsalt) = scheduler.run_stage("unsalt", hot.len(), &progress[2], |context| {
        let mut total: Option<Aggregate> = None;
        for (_, salted) in &finals {
            for (hot_index, aggregate) in salted {
                if *hot_index == context.task {
                    match total.as_mut() {
                        Some(existing) => existing.merge(aggregate),
                        None => total = Some(aggregate.clone()),
                    }
                }
            }
        }
        context.checkpoint()?;
        Ok(total.expect("a hot key was seen in the scan"))
    })?;
    report.stages.push(unsalt);
    let finals: Vec<HashMap<HourKey, Aggregate>> = finals.into_iter().map(|(merged, _)| merged).collect();
    let hot_rows: Vec<(&HourKey, &Aggregate)> = hot.iter().map(|(key, _)| key).zip(unsalted.iter()).collect();

    let rows = finals.iter().flatten().chain(hot_rows);
    write_periods(
        scheduler,
        &progress[3],
        on_stage,
        rows,
        |key| key.hour,
        &mut report,
        |hour, rows, context| {
            let path = hour_path(&job.output, hour);
            write_parquet_atomic(&path, &hour_batch(rows), context).map(|()| path)
        },
    )?;
    Ok(report)
}
