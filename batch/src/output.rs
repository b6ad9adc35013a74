//! Job output files, written so that a task's output commits exactly once: each
//! attempt writes its own temp file next to the target, fsyncs it, renames it over the
//! target and fsyncs the directory. Attempts of one task (a retry, a speculative copy)
//! produce the same bytes for the same input, so whichever rename lands last leaves the
//! same file: the commit is atomic and idempotent. Readers never see a partial file.

use crate::scheduler::TaskContext;
use arrow_array::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use std::io::Write;
use std::path::Path;

/// zstd level of job outputs.
pub const ZSTD_LEVEL: i32 = 3;

/// Writes `batch` to `path` atomically (see the module doc).
pub fn write_parquet_atomic(
    path: &Path,
    batch: &RecordBatch,
    context: &TaskContext<'_>,
) -> std::io::Result<()> {
    let dir = path.parent().expect("output files live in a directory");
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().expect("a file name").to_string_lossy();
    let temp = dir.join(format!(
        ".{name}.{}-{}-{}.tmp",
        context.task,
        context.attempt,
        if context.speculative { "s" } else { "o" }
    ));
    let properties = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(ZSTD_LEVEL).expect("valid zstd level")))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_created_by(format!("corelog batch {}", env!("CARGO_PKG_VERSION")))
        .build();
    let mut bytes = Vec::new();
    let mut writer =
        ArrowWriter::try_new(&mut bytes, batch.schema(), Some(properties)).map_err(std::io::Error::other)?;
    writer.write(batch).map_err(std::io::Error::other)?;
    writer.close().map_err(std::io::Error::other)?;
    let result = (|| {
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}
