//! `corelog inspect PATH`: dumps a segment (`.log`), offset index (`.index`), time
//! index (`.timeindex`), a whole partition directory or a whole data directory (every
//! partition directory in it), checks every batch's length, CRC, offset sequence and
//! records (the rules appends are validated by) and every index entry against the log,
//! and reports whether the files are intact. Reads files only; never repairs anything.

use anyhow::{bail, Context, Result};
use engine::batch::BatchView;
use engine::segment::{self, decode_index, decode_time_index, scan_batches};
use std::io::Write;
use std::path::{Path, PathBuf};

/// What `inspect` found: problems, one line each.
#[derive(Debug, Default)]
pub struct Findings {
    /// Files examined.
    pub files: usize,
    /// Batches found intact.
    pub batches: u64,
    /// One line per problem.
    pub problems: Vec<String>,
}

/// Inspects `path`, writing the dump to `out`. `records` also decodes records.
pub fn run(path: &Path, records: bool, out: &mut impl Write) -> Result<Findings> {
    let mut findings = Findings::default();
    if path.join(engine::META_FILE).is_file() {
        // A whole data directory: every partition directory in it.
        let mut partitions: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("reading {}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_dir()
                    && p.file_name().and_then(|n| n.to_str()).and_then(engine::parse_partition_dir).is_some()
            })
            .collect();
        partitions.sort();
        for partition in partitions {
            inspect_dir(&partition, records, out, &mut findings)?;
        }
    } else if path.is_dir() {
        inspect_dir(path, records, out, &mut findings)?;
    } else {
        inspect_file(path, records, out, &mut findings)?;
    }
    writeln!(
        out,
        "summary: {} files, {} intact batches, {} problems",
        findings.files,
        findings.batches,
        findings.problems.len()
    )?;
    for problem in &findings.problems {
        writeln!(out, "problem: {problem}")?;
    }
    Ok(findings)
}

fn inspect_dir(path: &Path, records: bool, out: &mut impl Write, findings: &mut Findings) -> Result<()> {
    {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("reading {}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("log" | "index" | "timeindex")))
            .collect();
        files.sort();
        if files.is_empty() {
            bail!("{}: no segment files", path.display());
        }
        match engine::partition_meta::read(path) {
            Ok(Some(id)) => writeln!(out, "{}: topic id {id}", path.display())?,
            Ok(None) => {}
            Err(reason) => findings.problems.push(reason),
        }
        for file in files {
            inspect_file(&file, records, out, findings)?;
        }
    }
    Ok(())
}

fn base_offset_of(path: &Path) -> Result<i64> {
    let log = path.with_extension("log");
    segment::parse_log_name(&log)
        .with_context(|| format!("{}: name is not <20-digit base offset>.<ext>", path.display()))
}

fn inspect_file(path: &Path, records: bool, out: &mut impl Write, findings: &mut Findings) -> Result<()> {
    let base_offset = base_offset_of(path)?;
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    findings.files += 1;
    match path.extension().and_then(|e| e.to_str()) {
        Some("log") => inspect_log(path, &bytes, base_offset, records, out, findings),
        Some("index") => inspect_index(path, &bytes, base_offset, out, findings),
        Some("timeindex") => inspect_time_index(path, &bytes, base_offset, out, findings),
        _ => bail!("{}: not a .log, .index or .timeindex file", path.display()),
    }
}

fn inspect_log(
    path: &Path,
    bytes: &[u8],
    base_offset: i64,
    records: bool,
    out: &mut impl Write,
    findings: &mut Findings,
) -> Result<()> {
    writeln!(out, "{}: segment, base offset {base_offset}, {} bytes", path.display(), bytes.len())?;
    let mut write_error = None;
    let mut invalid = Vec::new();
    let scan = scan_batches(bytes, 0, base_offset, |position, view| {
        if let Err(error) = engine::batch::validate_records(view) {
            invalid.push(format!(
                "{}: batch at byte {position} (offsets {}..={}) passes its CRC but breaks the record rules: {error}",
                path.display(),
                view.base_offset(),
                view.last_offset()
            ));
        }
        let mut line = format!(
            "  batch at {position}: offsets {}..={} ({} records), {} bytes, max timestamp {}, crc {:#010x} ok, codec {}",
            view.base_offset(),
            view.last_offset(),
            view.record_count(),
            view.len(),
            view.max_timestamp(),
            view.crc(),
            view.compression()
        );
        if records {
            for record in view.records().unwrap_or_default() {
                let show =
                    |b: Option<&[u8]>| b.map_or("null".into(), |b| String::from_utf8_lossy(b).into_owned());
                line.push_str(&format!(
                    "\n    offset {} ts {} key {} value {}",
                    record.offset,
                    record.timestamp,
                    show(record.key),
                    show(record.value)
                ));
            }
        }
        if let Err(error) = writeln!(out, "{line}") {
            write_error.get_or_insert(error);
        }
    });
    if let Some(error) = write_error {
        return Err(error.into());
    }
    findings.batches += scan.batches;
    findings.problems.extend(invalid);
    writeln!(
        out,
        "  {} batches, offsets {base_offset}..{}, {} valid bytes",
        scan.batches, scan.next_offset, scan.valid_end
    )?;
    if scan.zero_tail > 0 {
        writeln!(out, "  {} bytes of zeros preallocated past the data (not data)", scan.zero_tail)?;
    }
    if let Some((position, error)) = scan.error {
        findings.problems.push(format!(
            "{}: corrupt at byte {position} ({error}); {} bytes after the last intact batch",
            path.display(),
            bytes.len() as u64 - scan.valid_end
        ));
    }
    Ok(())
}

fn inspect_index(
    path: &Path,
    bytes: &[u8],
    base_offset: i64,
    out: &mut impl Write,
    findings: &mut Findings,
) -> Result<()> {
    let log = std::fs::read(path.with_extension("log")).unwrap_or_default();
    let entries = decode_index(bytes);
    writeln!(out, "{}: offset index, {} entries", path.display(), entries.len())?;
    if !bytes.len().is_multiple_of(segment::INDEX_ENTRY_BYTES) {
        findings.problems.push(format!(
            "{}: {} trailing bytes",
            path.display(),
            bytes.len() % segment::INDEX_ENTRY_BYTES
        ));
    }
    let mut previous: Option<segment::IndexEntry> = None;
    for entry in entries {
        let offset = base_offset + i64::from(entry.relative_offset);
        let batch = BatchView::parse(log.get(entry.position as usize..).unwrap_or_default());
        let verdict = match (&batch, previous) {
            (_, Some(p)) if entry.relative_offset <= p.relative_offset || entry.position <= p.position => {
                "not increasing"
            }
            (Err(_), _) => "no intact batch at that position",
            (Ok(view), _) if view.last_offset() != offset => "batch there ends at another offset",
            _ => "ok",
        };
        let entry_text = format!("offset {offset} -> position {}", entry.position);
        report_entry(out, findings, path, &entry_text, verdict)?;
        previous = Some(entry);
    }
    Ok(())
}

fn inspect_time_index(
    path: &Path,
    bytes: &[u8],
    base_offset: i64,
    out: &mut impl Write,
    findings: &mut Findings,
) -> Result<()> {
    let entries = decode_time_index(bytes);
    writeln!(out, "{}: time index, {} entries", path.display(), entries.len())?;
    let mut previous: Option<segment::TimeIndexEntry> = None;
    for entry in entries {
        let ordered = previous
            .is_none_or(|p| entry.timestamp > p.timestamp && entry.relative_offset >= p.relative_offset);
        let offset = base_offset + i64::from(entry.relative_offset);
        let entry_text = format!("timestamp {} -> offset {offset}", entry.timestamp);
        report_entry(out, findings, path, &entry_text, if ordered { "ok" } else { "not increasing" })?;
        previous = Some(entry);
    }
    Ok(())
}

/// Prints one index entry with its verdict and records a problem unless it is "ok".
fn report_entry(
    out: &mut impl Write,
    findings: &mut Findings,
    path: &Path,
    entry: &str,
    verdict: &str,
) -> Result<()> {
    writeln!(out, "  {entry}: {verdict}")?;
    if verdict != "ok" {
        findings.problems.push(format!("{}: entry {entry}: {verdict}", path.display()));
    }
    Ok(())
}
