//! Loads a query's deny-list from the Parquet file `corelog batch rings` writes and
//! reloads it when the file changes, without restarting the engine.
//!
//! The engine links no Parquet, so the embedding program (`serve`, `demo`) runs one
//! [`ParquetLoader`] thread per query whose `deny_list` is a `path`: it polls the
//! file's length and modification time, reads the `id` column of every row group and
//! publishes the set to the query's [`DenyList`]. A file that cannot be read (for
//! instance half-copied by hand; `rings` itself writes atomically) is reported once
//! and retried on the next change; the previous list stays in force.

use anyhow::{Context, Result};
use arrow_array::cast::AsArray;
use engine::query::deny::{DenyList, DenySet};
use engine::query::{DenySource, QueryDef};
use engine::Engine;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// How often the file is looked at.
pub const POLL_MS: u64 = 250;

/// A running loader; stops (and joins) on drop.
#[derive(Debug)]
pub struct ParquetLoader {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for ParquetLoader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Starts a loader for every query whose deny-list is a Parquet path.
pub fn start_parquet_loaders(engine: &Engine, queries: &[QueryDef]) -> Vec<ParquetLoader> {
    queries
        .iter()
        .filter_map(|query| match (&query.deny_list, engine.deny_list(&query.name)) {
            (Some(DenySource::Path(path)), Some(list)) => Some(ParquetLoader::start(path.clone(), list)),
            _ => None,
        })
        .collect()
}

impl ParquetLoader {
    /// Follows `path`, publishing to `list`.
    pub fn start(path: PathBuf, list: Arc<DenyList>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name("corelog-deny-loader".into())
            .spawn(move || follow(&path, &list, &stopping))
            .expect("spawning the deny-list loader");
        Self { stop, thread: Some(thread) }
    }
}

fn follow(path: &Path, list: &DenyList, stop: &AtomicBool) {
    let mut seen: Option<(u64, SystemTime)> = None;
    while !stop.load(Ordering::Relaxed) {
        let stamp = std::fs::metadata(path).ok().and_then(|m| Some((m.len(), m.modified().ok()?)));
        if stamp.is_some() && stamp != seen {
            seen = stamp;
            match read_ids(path) {
                Ok(set) => {
                    eprintln!("corelog: deny-list {} loaded, {} ids", path.display(), set.len());
                    list.publish(set);
                }
                Err(error) => eprintln!("corelog: deny-list {} not loaded: {error:#}", path.display()),
            }
        }
        std::thread::sleep(Duration::from_millis(POLL_MS));
    }
}

/// The `id` column of a deny-list Parquet file.
pub fn read_ids(path: &Path) -> Result<DenySet> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)?.build()?;
    let mut ids = Vec::new();
    for batch in reader {
        let batch = batch?;
        let column = batch.column_by_name("id").context("no `id` column")?;
        let column = column.as_string_opt::<i32>().context("`id` is not a string column")?;
        ids.extend(column.iter().flatten().map(str::to_string));
    }
    Ok(DenySet::from_ids(ids))
}
