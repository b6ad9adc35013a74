//! The `daily` job: rolls `hourly` output up to days, per merchant and country,
//! without the raw rows: counts and sums add, min and max fold, and the hourly
//! DDSketches (`amount_sketch`) merge, which keeps their 1% relative accuracy.
//!
//! Input: `INPUT/hourly/dt=…/hr=…/*.parquet` (an `hourly` output directory). Output:
//! `OUTPUT/daily/dt=YYYY-MM-DD/part-00000.parquet` with the same columns as `hourly`
//! except `hour`, replaced by `day` (timestamp of the day's midnight, UTC).
//! Stages: scan + partial rollup per morsel, final rollup per exchange bucket, one
//! write task per day.

use crate::hourly::{
    bucket_of, merge_into, write_periods, Aggregate, HourKey, JobError, JobReport, Partial, EXCHANGE_BUCKETS,
    HOUR_MS,
};
use crate::morsel::Morsel;
use crate::output::write_parquet_atomic;
use crate::scheduler::{Scheduler, TaskContext, TaskError};
use arrow_array::cast::AsArray;
use arrow_array::types::{Int64Type, TimestampMillisecondType};
use arrow_array::RecordBatch;
use arrow_schema::{DataType, Field, Schema};
use hashbrown::HashMap;
use sketches_ddsketch::DDSketch;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Milliseconds per day.
pub const DAY_MS: i64 = 24 * HOUR_MS;

/// Settings of a run.
#[derive(Debug, Clone)]
pub struct DailyJob {
    /// An `hourly` output directory (holding `hourly/`).
    pub input: PathBuf,
    /// Where `daily/` goes.
    pub output: PathBuf,
}

fn task_error(error: impl std::fmt::Display) -> TaskError {
    TaskError::Failed(error.to_string())
}

fn partial_rollup(morsel: &Morsel, context: &TaskContext<'_>) -> Result<Partial, TaskError> {
    let reader = crate::morsel::reader(morsel, None).map_err(TaskError::Failed)?;
    let mut partial: Partial = (0..EXCHANGE_BUCKETS).map(|_| HashMap::new()).collect();
    for batch in reader {
        context.checkpoint()?;
        let batch = batch.map_err(task_error)?;
        let column = |name: &str| {
            batch.column_by_name(name).cloned().ok_or_else(|| {
                TaskError::Failed(format!("{}: no column {name} (not hourly output?)", morsel.file.display()))
            })
        };
        let hour = column("hour")?;
        let hour = hour.as_primitive::<TimestampMillisecondType>();
        let (merchant, country) = (column("merchant_id")?, column("country")?);
        let (merchant, country) = (merchant.as_string::<i32>(), country.as_string::<i32>());
        let ints = ["count", "sum_amount_cents", "min_amount_cents", "max_amount_cents"].map(column);
        let [count, sum, min, max] = ints;
        let (count, sum, min, max) = (count?, sum?, min?, max?);
        let (count, sum) = (count.as_primitive::<Int64Type>(), sum.as_primitive::<Int64Type>());
        let (min, max) = (min.as_primitive::<Int64Type>(), max.as_primitive::<Int64Type>());
        let sketch = column("amount_sketch")?;
        let sketch = sketch.as_binary::<i32>();
        for i in 0..batch.num_rows() {
            let decoded = DDSketch::from_java_bytes(sketch.value(i)).map_err(|e| {
                TaskError::Failed(format!("{}: bad amount_sketch: {e:?}", morsel.file.display()))
            })?;
            let aggregate = Aggregate {
                count: count.value(i) as u64,
                sum: sum.value(i),
                min: min.value(i),
                max: max.value(i),
                sketch: decoded,
            };
            // Keyed by the day's first hour, so `hourly`'s key, exchange and batch layout serve.
            let key = HourKey {
                hour: hour.value(i).div_euclid(DAY_MS) * 24,
                merchant_id: merchant.value(i).to_string(),
                country: country.value(i).to_string(),
            };
            match partial[bucket_of(&key)].entry(key) {
                hashbrown::hash_map::Entry::Occupied(entry) => entry.into_mut().merge(&aggregate),
                hashbrown::hash_map::Entry::Vacant(entry) => {
                    entry.insert(aggregate);
                }
            }
        }
    }
    Ok(partial)
}

/// `hourly`'s batch with its first column renamed `day`.
fn day_batch(rows: &[(&HourKey, &Aggregate)]) -> RecordBatch {
    let hourly = crate::hourly::hour_batch(rows);
    let mut fields: Vec<Field> = hourly.schema().fields().iter().map(|f| f.as_ref().clone()).collect();
    fields[0] = Field::new(
        "day",
        DataType::Timestamp(arrow_schema::TimeUnit::Millisecond, Some("UTC".into())),
        false,
    );
    RecordBatch::try_new(Arc::new(Schema::new(fields)), hourly.columns().to_vec())
        .expect("same columns, renamed")
}

/// `OUTPUT/daily/dt=YYYY-MM-DD/part-00000.parquet`.
pub fn day_path(output: &Path, day: i64) -> PathBuf {
    let time = chrono::DateTime::from_timestamp_millis(day * DAY_MS).expect("day in range");
    output.join(format!("daily/{}/part-00000.parquet", time.format("dt=%Y-%m-%d")))
}

impl crate::job::Job for DailyJob {
    type Output = ();
    fn name(&self) -> &'static str {
        "daily"
    }
    fn run(
        &self,
        scheduler: &Scheduler,
        progress: &crate::job::Progress,
        on_stage: &mut dyn FnMut(&str, usize),
    ) -> Result<(JobReport, ()), JobError> {
        run(self, scheduler, progress, on_stage).map(|report| (report, ()))
    }
}

/// Runs the job on `scheduler`.
fn run(
    job: &DailyJob,
    scheduler: &Scheduler,
    progress: &crate::job::Progress,
    on_stage: &mut dyn FnMut(&str, usize),
) -> Result<JobReport, JobError> {
    let files = crate::morsel::parquet_files(&job.input.join("hourly"))?;
    let plan = crate::morsel::plan(&files, "hour", None, None)?;
    let mut report = JobReport { plan: plan.clone(), ..JobReport::default() };
    on_stage("scan", plan.morsels.len());
    let (partials, scan) = scheduler.run_stage("scan", plan.morsels.len(), &progress[0], |context| {
        partial_rollup(&plan.morsels[context.task], context)
    })?;
    report.stages.push(scan);
    on_stage("aggregate", EXCHANGE_BUCKETS);
    let (finals, aggregate) =
        scheduler.run_stage("aggregate", EXCHANGE_BUCKETS, &progress[1], |context| {
            let mut merged: HashMap<HourKey, Aggregate> = HashMap::new();
            for partial in &partials {
                context.checkpoint()?;
                for (key, aggregate) in &partial[context.task] {
                    merge_into(&mut merged, key, aggregate);
                }
            }
            Ok(merged)
        })?;
    report.stages.push(aggregate);
    report.rows = finals.iter().flatten().map(|(_, a)| a.count).sum();
    let rows = finals.iter().flatten();
    write_periods(
        scheduler,
        &progress[2],
        on_stage,
        rows,
        |key| key.hour / 24,
        &mut report,
        |day, rows, context| {
            let path = day_path(&job.output, day);
            write_parquet_atomic(&path, &day_batch(rows), context).map(|()| path)
        },
    )?;
    Ok(report)
}
