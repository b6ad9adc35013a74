//! Morsels: the unit of scheduling. One Parquet row group of a landed file, or a slice
//! of one when it is large, found by walking the lander's Hive layout
//! (`INPUT/<topic>/dt=…/hr=…/*.parquet`) and pruned by the row groups' statistics.
//!
//! Pruning uses the min/max statistics of a time column (the event time, `ts` for
//! payments) against a `[from, to)` range in ms since the epoch; a row group without
//! statistics is kept. Pruning only skips row groups that cannot hold a row in range;
//! jobs still filter rows.

use parquet::file::metadata::ParquetMetaData;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::file::statistics::Statistics;
use std::path::{Path, PathBuf};

/// Rows in a morsel at most; larger row groups are split into slices.
pub const MORSEL_ROWS_MAX: usize = 128 * 1024;

/// Errors finding morsels.
#[derive(Debug, thiserror::Error)]
pub enum MorselError {
    /// A directory or file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A file is not readable Parquet.
    #[error("{path}: {source}")]
    Parquet {
        /// The file.
        path: String,
        /// Why.
        source: parquet::errors::ParquetError,
    },
}

/// One unit of work: rows `first_row..first_row + rows` of one row group.
#[derive(Debug, Clone, PartialEq)]
pub struct Morsel {
    /// The Parquet file.
    pub file: PathBuf,
    /// Row group index in the file.
    pub row_group: usize,
    /// First row of the slice within the row group.
    pub first_row: usize,
    /// Rows in the slice.
    pub rows: usize,
    /// Compressed bytes of the row group share of this slice (an estimate).
    pub bytes: u64,
}

/// What discovery found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Morsels to run, ordered by file then row group.
    pub morsels: Vec<Morsel>,
    /// Files read.
    pub files: usize,
    /// Row groups kept.
    pub row_groups: usize,
    /// Row groups skipped by their statistics.
    pub row_groups_pruned: usize,
    /// Row groups split into several morsels.
    pub row_groups_split: usize,
}

/// Rows per record batch read from a morsel.
pub const READ_BATCH_ROWS: usize = 8192;

/// A reader over exactly the morsel's rows, decoding only `columns` (all when `None`).
pub fn reader(
    morsel: &Morsel,
    columns: Option<&[&str]>,
) -> Result<parquet::arrow::arrow_reader::ParquetRecordBatchReader, String> {
    use parquet::arrow::arrow_reader::{ParquetRecordBatchReaderBuilder, RowSelection, RowSelector};
    let file = std::fs::File::open(&morsel.file).map_err(|e| format!("{}: {e}", morsel.file.display()))?;
    let parquet_error = |e: parquet::errors::ParquetError| format!("{}: {e}", morsel.file.display());
    let mut builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(parquet_error)?;
    if let Some(columns) = columns {
        let projection =
            parquet::arrow::ProjectionMask::columns(builder.parquet_schema(), columns.iter().copied());
        builder = builder.with_projection(projection);
    }
    let selection =
        RowSelection::from(vec![RowSelector::skip(morsel.first_row), RowSelector::select(morsel.rows)]);
    builder
        .with_row_groups(vec![morsel.row_group])
        .with_row_selection(selection)
        .with_batch_size(READ_BATCH_ROWS)
        .build()
        .map_err(parquet_error)
}

/// Like [`reader`] over `columns`, with `dictionaries` (string columns) decoded as
/// `Dictionary(Int32, Utf8)` arrays: dictionary-encoded pages then arrive as their
/// dictionary and indices, without materializing a string per row.
pub fn reader_with_dictionaries(
    morsel: &Morsel,
    columns: &[&str],
    dictionaries: &[&str],
) -> Result<parquet::arrow::arrow_reader::ParquetRecordBatchReader, String> {
    use arrow_schema::{DataType, Field, Schema};
    use parquet::arrow::arrow_reader::{
        ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder, RowSelection, RowSelector,
    };
    let file = std::fs::File::open(&morsel.file).map_err(|e| format!("{}: {e}", morsel.file.display()))?;
    let parquet_error = |e: parquet::errors::ParquetError| format!("{}: {e}", morsel.file.display());
    let metadata = ArrowReaderMetadata::load(&file, ArrowReaderOptions::new()).map_err(parquet_error)?;
    let fields: Vec<Field> = metadata
        .schema()
        .fields()
        .iter()
        .map(|field| {
            let wanted =
                dictionaries.contains(&field.name().as_str()) && field.data_type() == &DataType::Utf8;
            let data_type = if wanted {
                DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
            } else {
                field.data_type().clone()
            };
            Field::new(field.name(), data_type, field.is_nullable()).with_metadata(field.metadata().clone())
        })
        .collect();
    let hint = std::sync::Arc::new(Schema::new_with_metadata(fields, metadata.schema().metadata().clone()));
    let options = ArrowReaderOptions::new().with_schema(hint);
    let metadata =
        ArrowReaderMetadata::try_new(metadata.metadata().clone(), options).map_err(parquet_error)?;
    let builder = ParquetRecordBatchReaderBuilder::new_with_metadata(file, metadata);
    let projection =
        parquet::arrow::ProjectionMask::columns(builder.parquet_schema(), columns.iter().copied());
    let selection =
        RowSelection::from(vec![RowSelector::skip(morsel.first_row), RowSelector::select(morsel.rows)]);
    builder
        .with_projection(projection)
        .with_row_groups(vec![morsel.row_group])
        .with_row_selection(selection)
        .with_batch_size(READ_BATCH_ROWS)
        .build()
        .map_err(parquet_error)
}

/// Every `*.parquet` file under `dir` (recursively), sorted. Staging and hidden files
/// (`_landed/`, names with `#`) are skipped.
pub fn parquet_files(dir: &Path) -> Result<Vec<PathBuf>, MorselError> {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries = std::fs::read_dir(&dir)
            .map_err(|source| MorselError::Io { path: dir.display().to_string(), source })?;
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('_') || name.starts_with('.') {
                continue;
            }
            if path.is_dir() {
                dirs.push(path);
            } else if name.ends_with(".parquet") {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

fn time_range(metadata: &ParquetMetaData, row_group: usize, column: &str) -> Option<(i64, i64)> {
    let group = metadata.row_group(row_group);
    let index = group.columns().iter().position(|c| c.column_path().string() == column)?;
    match group.column(index).statistics()? {
        Statistics::Int64(stats) => Some((*stats.min_opt()?, *stats.max_opt()?)),
        _ => None,
    }
}

/// Plans morsels over `files`: one per row group, split at [`MORSEL_ROWS_MAX`] rows,
/// skipping row groups whose `time_column` statistics lie outside `[from, to)`.
pub fn plan(
    files: &[PathBuf],
    time_column: &str,
    from_ms: Option<i64>,
    to_ms: Option<i64>,
) -> Result<Plan, MorselError> {
    let mut plan = Plan { files: files.len(), ..Plan::default() };
    for file in files {
        let path = file.display().to_string();
        let handle =
            std::fs::File::open(file).map_err(|source| MorselError::Io { path: path.clone(), source })?;
        let reader = SerializedFileReader::new(handle)
            .map_err(|source| MorselError::Parquet { path: path.clone(), source })?;
        let metadata = reader.metadata();
        for row_group in 0..metadata.num_row_groups() {
            if let Some((min, max)) = time_range(metadata, row_group, time_column) {
                let before = to_ms.is_some_and(|to| min >= to);
                let after = from_ms.is_some_and(|from| max < from);
                if before || after {
                    plan.row_groups_pruned += 1;
                    continue;
                }
            }
            plan.row_groups += 1;
            let group = metadata.row_group(row_group);
            let rows = group.num_rows() as usize;
            let bytes = group.compressed_size() as u64;
            if rows > MORSEL_ROWS_MAX {
                plan.row_groups_split += 1;
            }
            let mut first_row = 0;
            while first_row < rows.max(1) {
                let slice = (rows - first_row).min(MORSEL_ROWS_MAX);
                plan.morsels.push(Morsel {
                    file: file.clone(),
                    row_group,
                    first_row,
                    rows: slice,
                    bytes: bytes * slice as u64 / rows.max(1) as u64,
                });
                first_row += slice.max(1);
            }
        }
    }
    Ok(plan)
}
