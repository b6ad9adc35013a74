//! Landing from real segment files written by the embedded engine, read back with the
//! `parquet` crate.

use arrow_array::cast::AsArray;
use arrow_array::types::{Int64Type, TimestampMillisecondType};
use arrow_array::Array;
use engine::batch::BatchBuilder;
use engine::{Engine, EngineConfig};
use lander::{Lander, LanderConfig, Output, SegmentSource, HOUR_MS};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const SCHEMA: &str = r#"
version = 1
event_time = "ts"
[[field]]
name = "ts"
type = "timestamp-ms"
required = true
[[field]]
name = "amount_cents"
type = "int64"
required = true
[[field]]
name = "country"
type = "string"
"#;

/// One landed row.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    file: PathBuf,
    partition: i32,
    offset: i64,
    value: Option<Vec<u8>>,
    ts: Option<i64>,
    amount: Option<i64>,
    country: Option<String>,
    headers: usize,
}

fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "parquet") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

fn read_rows(out: &Path) -> Vec<Row> {
    let mut rows = Vec::new();
    for file in parquet_files(out) {
        let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&file).unwrap())
            .unwrap()
            .build()
            .unwrap();
        for batch in reader {
            let batch = batch.unwrap();
            let column = |name: &str| batch.column_by_name(name).unwrap().clone();
            let partition = column("partition");
            let offset = column("offset");
            let value = column("value");
            let headers = column("headers");
            let typed_ts = batch.column_by_name("ts").cloned();
            let amount = batch.column_by_name("amount_cents").cloned();
            let country = batch.column_by_name("country").cloned();
            for i in 0..batch.num_rows() {
                let value = value.as_binary::<i32>();
                rows.push(Row {
                    file: file.clone(),
                    partition: partition.as_primitive::<arrow_array::types::Int32Type>().value(i),
                    offset: offset.as_primitive::<Int64Type>().value(i),
                    value: value.is_valid(i).then(|| value.value(i).to_vec()),
                    ts: typed_ts.as_ref().and_then(|c| {
                        let c = c.as_primitive::<TimestampMillisecondType>();
                        c.is_valid(i).then(|| c.value(i))
                    }),
                    amount: amount.as_ref().and_then(|c| {
                        let c = c.as_primitive::<Int64Type>();
                        c.is_valid(i).then(|| c.value(i))
                    }),
                    country: country.as_ref().and_then(|c| {
                        let c = c.as_string::<i32>();
                        c.is_valid(i).then(|| c.value(i).to_string())
                    }),
                    headers: headers.as_list::<i32>().value(i).len(),
                });
            }
        }
    }
    rows
}

fn payment(ts: i64, amount: i64) -> Vec<u8> {
    format!(r#"{{"ts":{ts},"amount_cents":{amount},"country":"FR","user_id":"u{amount}"}}"#).into_bytes()
}

/// A lander over the segment files in `data`, landing into the directory `out`.
fn lander_over(data: &Path, out: &Path, config: LanderConfig) -> Lander<SegmentSource> {
    Lander::new(SegmentSource::new(data).unwrap(), Output::open(out.to_str().unwrap()).unwrap(), config)
}

fn land_all(data: &Path, out: &Path, schemas: Option<&Path>, max_lag_ms: u64) -> Lander<SegmentSource> {
    let config = LanderConfig {
        schemas_dir: schemas.map(Path::to_path_buf),
        max_lag_ms,
        registration: Some((data.to_path_buf(), "test".into())),
        ..LanderConfig::default()
    };
    let mut lander = lander_over(data, out, config);
    while !lander.step(false).unwrap() {}
    lander.flush().unwrap();
    lander
}

fn hour_of(path: &Path) -> (String, String) {
    let hr = path.parent().unwrap();
    let dt = hr.parent().unwrap();
    (
        dt.file_name().unwrap().to_string_lossy().into_owned(),
        hr.file_name().unwrap().to_string_lossy().into_owned(),
    )
}

fn open_engine(data: &Path) -> Engine {
    let mut config = EngineConfig::new(data);
    config.shards = 2;
    config.pin_threads = false;
    config.log.retention_ms = None; // test events are dated 2025
    Engine::open(config).unwrap()
}

#[test]
fn given_payments_over_three_hours_when_landed_then_every_offset_lands_once_in_its_event_hour() {
    let dir = tempfile::tempdir().unwrap();
    let (data, out, schemas) = (dir.path().join("data"), dir.path().join("out"), dir.path().join("schemas"));
    std::fs::create_dir_all(&schemas).unwrap();
    std::fs::write(schemas.join("payments.toml"), SCHEMA).unwrap();
    let engine = open_engine(&data);
    engine.create_topic("payments", 2).unwrap();
    let start = 1_764_000_000_000 - 1_764_000_000_000 % HOUR_MS;
    let mut expected: BTreeMap<(i32, i64), Vec<u8>> = BTreeMap::new();
    for partition in 0..2u32 {
        let mut offset = 0;
        for chunk in 0..30i64 {
            let mut batch = BatchBuilder::default();
            for i in 0..100i64 {
                let n = chunk * 100 + i;
                let ts = start + n * (3 * HOUR_MS / 3000);
                let value = if n % 500 == 7 { b"{not json".to_vec() } else { payment(ts, n) };
                batch.push_with_headers(ts, Some(b"k"), Some(&value), &[(&b"h"[..], Some(&b"v"[..]))]);
                expected.insert((partition as i32, offset), value);
                offset += 1;
            }
            engine.append("payments", partition, batch.finish()).wait().unwrap();
        }
    }
    let lander = land_all(&data, &out, Some(&schemas), 60_000);
    let rows = read_rows(&out);
    assert_eq!(rows.len(), expected.len(), "every offset lands exactly once");
    let mut seen = BTreeMap::new();
    for row in &rows {
        assert!(seen.insert((row.partition, row.offset), ()).is_none(), "offset landed twice: {row:?}");
        assert_eq!(
            Some(&expected[&(row.partition, row.offset)]),
            row.value.as_ref(),
            "value is byte-identical"
        );
        assert_eq!(row.headers, 1);
        if row.value.as_deref() == Some(b"{not json") {
            assert_eq!((row.ts, row.amount, row.country.as_deref()), (None, None, None));
            continue;
        }
        let ts = row.ts.expect("typed ts");
        assert_eq!(row.amount, Some(row.offset));
        assert_eq!(row.country.as_deref(), Some("FR"));
        let hour = chrono::DateTime::from_timestamp_millis(ts).unwrap();
        assert_eq!(
            hour_of(&row.file),
            (hour.format("dt=%Y-%m-%d").to_string(), hour.format("hr=%H").to_string()),
            "row lands in the directory of its event hour"
        );
    }
    assert_eq!(lander.progress().bad_records, 12, "6 bad values per partition are counted");
    let manifests: Vec<_> =
        lander.manifests().map(|m| (m.partition, m.next_offset, m.landed_records)).collect();
    assert_eq!(manifests, vec![(0, 3000, 3000), (1, 3000, 3000)]);
    let id = lander.manifests().next().unwrap().topic_id;
    assert!(id.is_some(), "the manifest names the topic landed");
    let floors = engine::landed::read_floors(&data, |_| id);
    assert_eq!(floors.len(), 2, "the lander registered its landed offsets");
    assert!(floors.values().all(|next| *next == 3000));
    engine.shutdown().unwrap();
}

#[test]
fn given_late_events_when_landed_then_they_go_to_a_new_file_in_their_own_hour() {
    let dir = tempfile::tempdir().unwrap();
    let (data, out) = (dir.path().join("data"), dir.path().join("out"));
    let engine = open_engine(&data);
    engine.create_topic("clicks", 1).unwrap();
    let h = 1_764_000_000_000 - 1_764_000_000_000 % HOUR_MS;
    // Record timestamps (no schema): hours 0, 0, 1, 0 (late), 1, 2, 1 (late), 0 (late).
    let hours = [0, 0, 1, 0, 1, 2, 1, 0];
    for (i, hour) in hours.iter().enumerate() {
        let mut batch = BatchBuilder::default();
        batch.push(h + hour * HOUR_MS + i as i64, None, Some(format!("e{i}").as_bytes()));
        engine.append("clicks", 0, batch.finish()).wait().unwrap();
    }
    land_all(&data, &out, None, 60_000);
    let mut files: Vec<(String, Vec<i64>)> = BTreeMap::<PathBuf, Vec<i64>>::new()
        .into_iter()
        .chain(read_rows(&out).into_iter().fold(BTreeMap::new(), |mut m: BTreeMap<PathBuf, Vec<i64>>, r| {
            m.entry(r.file).or_default().push(r.offset);
            m
        }))
        .map(|(path, offsets)| (hour_of(&path).1, offsets))
        .collect();
    files.sort();
    let hr = |n: i64| {
        chrono::DateTime::from_timestamp_millis(h + n * HOUR_MS).unwrap().format("hr=%H").to_string()
    };
    let mut expected = vec![
        (hr(0), vec![0, 1]),
        (hr(0), vec![3]),
        (hr(0), vec![7]),
        (hr(1), vec![2, 4]),
        (hr(1), vec![6]),
        (hr(2), vec![5]),
    ];
    expected.sort();
    assert_eq!(files, expected, "closed files are never rewritten; late events get files of their own");
    engine.shutdown().unwrap();
}

#[test]
fn given_parts_past_the_manifest_when_restarted_then_they_are_deleted_and_relanded_once() {
    let dir = tempfile::tempdir().unwrap();
    let (data, out) = (dir.path().join("data"), dir.path().join("out"));
    let engine = open_engine(&data);
    engine.create_topic("t", 1).unwrap();
    let now = engine::now_ms();
    let append = |from: i64, to: i64| {
        let mut batch = BatchBuilder::default();
        for n in from..to {
            batch.push(now, None, Some(format!("v{n}").as_bytes()));
        }
        engine.append("t", 0, batch.finish()).wait().unwrap();
    };
    append(0, 50);
    land_all(&data, &out, None, 60_000);
    append(50, 80);
    // A commit that put its part but died before the manifest: a stray part 50..79,
    // plus a staging file of an interrupted put.
    let stray = out.join(lander::part_path("t", 0, now / HOUR_MS, 50, 79));
    let landed = parquet_files(&out);
    std::fs::copy(&landed[0], &stray).unwrap();
    std::fs::write(stray.with_extension("parquet#1"), b"partial").unwrap();
    land_all(&data, &out, None, 60_000);
    let rows = read_rows(&out);
    let offsets: Vec<i64> = {
        let mut o: Vec<i64> = rows.iter().map(|r| r.offset).collect();
        o.sort();
        o
    };
    assert_eq!(offsets, (0..80).collect::<Vec<_>>(), "each offset once after recovery");
    assert!(!stray.with_extension("parquet#1").exists(), "staging files are removed");
    engine.shutdown().unwrap();
}

#[test]
fn given_a_quiet_partition_when_max_lag_passes_then_it_lands_without_a_flush() {
    let dir = tempfile::tempdir().unwrap();
    let (data, out) = (dir.path().join("data"), dir.path().join("out"));
    let engine = open_engine(&data);
    engine.create_topic("quiet", 1).unwrap();
    let mut batch = BatchBuilder::default();
    batch.push(engine::now_ms(), None, Some(b"only"));
    engine.append("quiet", 0, batch.finish()).wait().unwrap();
    let config = LanderConfig { max_lag_ms: 50, ..LanderConfig::default() };
    let mut lander = lander_over(&data, &out, config);
    assert!(lander.step(false).unwrap());
    assert_eq!(lander.progress().records, 0, "within max-lag nothing lands yet");
    std::thread::sleep(std::time::Duration::from_millis(60));
    lander.step(false).unwrap();
    assert_eq!(lander.progress().records, 1, "past max-lag the record lands");
    let manifest = std::fs::read_to_string(out.join("quiet/_landed/0.json")).unwrap();
    assert!(manifest.contains(r#""next_offset":1"#), "{manifest}");
    engine.shutdown().unwrap();
}

#[test]
fn given_a_record_appended_long_after_the_last_read_when_read_then_its_wait_counts_from_that_read() {
    let dir = tempfile::tempdir().unwrap();
    let (data, out) = (dir.path().join("data"), dir.path().join("out"));
    let engine = open_engine(&data);
    engine.create_topic("late", 1).unwrap();
    let config = LanderConfig { max_lag_ms: 200, ..LanderConfig::default() };
    let mut lander = lander_over(&data, &out, config);
    assert!(lander.step(false).unwrap(), "an empty partition is caught up");
    // The step that would have read this record came late (a slow step elsewhere, or
    // an idle poll): the record may have waited since the read before it.
    std::thread::sleep(std::time::Duration::from_millis(200));
    let mut batch = BatchBuilder::default();
    batch.push(engine::now_ms(), None, Some(b"late"));
    engine.append("late", 0, batch.finish()).wait().unwrap();
    lander.step(false).unwrap();
    assert_eq!(lander.progress().records, 1, "read 200 ms after the last read: past 90% of max-lag");
    engine.shutdown().unwrap();
}

#[test]
fn given_retain_until_landed_when_retention_runs_then_only_landed_segments_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let (data, out) = (dir.path().join("data"), dir.path().join("out"));
    let mut config = EngineConfig::new(&data);
    config.shards = 1;
    config.pin_threads = false;
    config.maintenance_interval_ms = 10;
    config.retain_until_landed = true;
    config.log.segment_bytes = 4096;
    config.log.retention_bytes = Some(1); // retention wants to delete every sealed segment
    let engine = Engine::open(config).unwrap();
    engine.create_topic("t", 1).unwrap();
    let append = |count: usize| {
        for _ in 0..count {
            let mut batch = BatchBuilder::default();
            batch.push(engine::now_ms(), None, Some(&[7u8; 1000][..]));
            engine.append("t", 0, batch.finish()).wait().unwrap();
        }
    };
    let info = || engine.partition_info("t", 0).wait().unwrap();
    append(40);
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(info().log_start_offset, 0, "nothing landed, nothing deleted");
    assert!(info().segments > 5);

    land_all(&data, &out, None, 60_000); // lands 0..40 and registers next offset 40
    append(40); // 40..80 not landed
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while info().log_start_offset == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    std::thread::sleep(std::time::Duration::from_millis(100));
    let after = info();
    assert!(after.log_start_offset > 30, "landed segments are deleted: {after:?}");
    assert!(after.log_start_offset <= 40, "no unlanded offset is deleted: {after:?}");
    assert_eq!(read_rows(&out).len(), 40);
    engine.shutdown().unwrap();
}

/// A batch of `count` records `v<offset>` stamped with base offset `base`.
fn batch(base: i64, count: usize) -> bytes::BytesMut {
    let mut builder = BatchBuilder::default();
    for n in 0..count {
        builder.push(1, None, Some(format!("v{}", base + n as i64).as_bytes()));
    }
    let mut bytes = builder.finish();
    engine::batch::assign_base_offset(&mut bytes, base);
    bytes
}

/// A temporary data directory holding an empty partition directory `t-0` (the
/// directory guard first: the files go when it drops).
fn data_dir_with_t0() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("t-0")).unwrap();
    (dir, data)
}

#[test]
fn given_a_batch_still_being_written_when_read_again_then_it_is_read_once_complete() {
    use lander::Source;
    use std::io::Write;
    let (_dir, data) = data_dir_with_t0();
    let (first, second) = (batch(0, 3), batch(3, 2));
    let path = data.join("t-0/00000000000000000000.log");
    let mut file = std::fs::File::create(&path).unwrap();
    file.write_all(&first).unwrap();
    file.write_all(&second[..second.len() / 2]).unwrap();
    let mut source = SegmentSource::new(&data).unwrap();
    let mut records = Vec::new();
    let outcome = source.read("t", 0, 0, 1 << 20, &mut records).unwrap();
    assert_eq!((records.len(), outcome.next_offset, outcome.caught_up), (3, 3, true));
    // The rest of the write lands; the next read must see it.
    file.write_all(&second[second.len() / 2..]).unwrap();
    records.clear();
    let outcome = source.read("t", 0, 3, 1 << 20, &mut records).unwrap();
    assert_eq!((records.len(), outcome.next_offset), (2, 5), "the completed batch is read");
    assert_eq!(records[1].value.as_deref(), Some(&b"v4"[..]));
}

#[test]
fn given_zeros_filled_past_the_data_when_read_then_they_end_each_segment_and_batches_written_over_them_are_read(
) {
    use lander::Source;
    let (_dir, data) = data_dir_with_t0();
    // A sealed segment 0..5 and an active one from 5, each with zeros past its data.
    let sealed = data.join("t-0/00000000000000000000.log");
    let active = data.join("t-0/00000000000000000005.log");
    let (first, second) = ([batch(0, 3), batch(3, 2)].concat(), batch(5, 3));
    std::fs::write(&sealed, [&first[..], &[0u8; 8192]].concat()).unwrap();
    std::fs::write(&active, [&second[..], &[0u8; 20_000]].concat()).unwrap();
    let mut source = SegmentSource::new(&data).unwrap();
    let mut records = Vec::new();
    let outcome = source.read("t", 0, 0, 1 << 20, &mut records).unwrap();
    assert_eq!((records.len(), outcome.next_offset, outcome.caught_up), (8, 8, true), "{outcome:?}");
    // A write over the zeros (the file's length does not change) is read.
    let outcome = write_at_and_read(&mut source, &active, second.len() as u64, &batch(8, 4), 8, &mut records);
    assert_eq!((records.len(), outcome.next_offset), (4, 12), "{outcome:?}");
    assert_eq!(records[3].value.as_deref(), Some(&b"v11"[..]));
    assert_eq!(source.end_offset("t", 0).unwrap(), 12);
    // The sealed segment's zeros are cut; a fresh reader from the middle, a byte at a
    // time, walks past the batches before its offset and reads everything after it.
    std::fs::OpenOptions::new().write(true).open(&sealed).unwrap().set_len(first.len() as u64).unwrap();
    let mut source = SegmentSource::new(&data).unwrap();
    let (mut offset, mut values) = (4, Vec::new());
    for _ in 0..20 {
        records.clear();
        offset = source.read("t", 0, offset, 1, &mut records).unwrap().next_offset;
        values.extend(records.iter().map(|r| String::from_utf8(r.value.clone().unwrap().to_vec()).unwrap()));
    }
    let expected: Vec<String> = (4..12).map(|n| format!("v{n}")).collect();
    assert_eq!((offset, values), (12, expected));
}

#[test]
fn given_a_sealed_segment_whose_data_ends_short_of_its_successor_then_the_lander_reports_it_instead_of_waiting(
) {
    use lander::{Source, SourceError};
    use std::time::{Duration, Instant};
    // Its data ends at its end of file, or where zeros begin; either way offsets 3 and 4
    // are in no segment.
    for zeros in [0usize, 8192] {
        let (_dir, data) = data_dir_with_t0();
        let sealed = data.join("t-0/00000000000000000000.log");
        std::fs::write(&sealed, [&batch(0, 3)[..], &vec![0u8; zeros][..]].concat()).unwrap();
        std::fs::write(data.join("t-0/00000000000000000005.log"), batch(5, 2)).unwrap();
        let mut source = SegmentSource::new(&data).unwrap().with_corruption_grace(Duration::from_millis(50));
        let mut records = Vec::new();
        let outcome = source.read("t", 0, 0, 1 << 20, &mut records).unwrap();
        assert_eq!((records.len(), outcome.next_offset, outcome.caught_up), (3, 3, true), "{outcome:?}");
        let deadline = Instant::now() + Duration::from_secs(10);
        let error = loop {
            records.clear();
            match source.read("t", 0, 3, 1 << 20, &mut records) {
                Err(error) => break error,
                Ok(outcome) => assert_eq!((records.len(), outcome.next_offset), (0, 3), "{outcome:?}"),
            }
            assert!(Instant::now() < deadline, "still waiting after 10 s ({zeros} zeros)");
            std::thread::sleep(Duration::from_millis(10));
        };
        let text = error.to_string();
        assert!(matches!(error, SourceError::Corrupt { offset: 3, .. }), "{text}");
        assert!(text.contains("before offset 5"), "{text}");
    }
}

#[test]
fn given_a_sealed_segments_last_write_landing_after_its_successor_appeared_then_it_is_read_and_the_reader_moves_on(
) {
    use lander::Source;
    let (_dir, data) = data_dir_with_t0();
    let sealed = data.join("t-0/00000000000000000000.log");
    let first = batch(0, 3);
    std::fs::write(&sealed, [&first[..], &[0u8; 8192]].concat()).unwrap();
    std::fs::write(data.join("t-0/00000000000000000005.log"), batch(5, 2)).unwrap();
    // The default grace (seconds): the write lands well within it.
    let mut source = SegmentSource::new(&data).unwrap();
    let mut records = Vec::new();
    let outcome = source.read("t", 0, 0, 1 << 20, &mut records).unwrap();
    assert_eq!((records.len(), outcome.next_offset), (3, 3), "{outcome:?}");
    let outcome = write_at_and_read(&mut source, &sealed, first.len() as u64, &batch(3, 2), 3, &mut records);
    assert_eq!((records.len(), outcome.next_offset), (4, 7), "{outcome:?}");
    assert_eq!(records[3].value.as_deref(), Some(&b"v6"[..]));
}

/// Writes `batch` into the file at `path` at `at` (over zeros: the file's length does
/// not change) and reads partition `t-0` from `from` into `records` (cleared first).
fn write_at_and_read(
    source: &mut SegmentSource,
    path: &Path,
    at: u64,
    batch: &[u8],
    from: i64,
    records: &mut Vec<lander::LandRecord>,
) -> lander::ReadOutcome {
    use lander::Source;
    use std::os::unix::fs::FileExt;
    std::fs::OpenOptions::new().write(true).open(path).unwrap().write_all_at(batch, at).unwrap();
    records.clear();
    source.read("t", 0, from, 1 << 20, records).unwrap()
}

/// Writes `batches` as one segment file of `dir` (offsets stamped in order).
fn write_segment(dir: &Path, batches: &[bytes::BytesMut]) -> i64 {
    use std::io::Write;
    std::fs::create_dir_all(dir).unwrap();
    let mut file = std::fs::File::create(dir.join("00000000000000000000.log")).unwrap();
    let mut next = 0i64;
    for batch in batches {
        let mut batch = batch.clone();
        engine::batch::assign_base_offset(&mut batch, next);
        next +=
            i64::from(engine::batch::BatchView::parse(&batch).unwrap().header().last_offset_delta.get()) + 1;
        file.write_all(&batch).unwrap();
    }
    next
}

#[test]
fn given_a_crc_valid_batch_that_breaks_the_record_rules_then_it_is_quarantined_and_every_other_record_lands()
{
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = dir.path().join("out");
    let honest = |from: i64, count: i64| {
        let mut builder = BatchBuilder::default();
        for i in from..from + count {
            builder.push(1_764_000_000_000 + i, Some(b"k"), Some(&payment(1_764_000_000_000 + i, i)));
        }
        builder.finish()
    };
    // A lying batch a disk (or an older broker) could hold: decreasing offset deltas
    // and a header key that is not UTF-8, with a valid CRC.
    let mut lie = engine::lies::RawBatch::generate(&mut |n| (n - 1).min(2));
    lie.records.push(lie.records[0].clone());
    lie.records.reverse();
    lie.records[0].headers.push((engine::lies::Field::Bytes(vec![0xff]), engine::lies::Field::Null));
    lie.record_count = lie.records.len() as i32;
    lie.last_offset_delta = lie.record_count - 1;
    assert!(!lie.is_valid());
    let lying = lie.encode();
    let end = write_segment(&data.join("pay-0"), &[honest(0, 5), lying, honest(100, 5)]);
    // Another partition with honest batches only must land whatever happens in pay-0.
    write_segment(&data.join("pay-1"), &[honest(0, 3)]);
    let lander = land_all(&data, &out, None, 60_000);
    let progress = lander.progress();
    assert_eq!(progress.quarantined_batches, 1, "{progress:?}");
    assert_eq!(progress.records, 13, "5 + 5 honest records of pay-0 and 3 of pay-1 land: {progress:?}");
    let rows = read_rows(&out);
    let offsets: Vec<(i32, i64)> = rows.iter().map(|r| (r.partition, r.offset)).collect();
    let lying_range = 5..end - 5;
    assert!(offsets.iter().all(|(p, o)| *p == 1 || !lying_range.contains(o)), "{offsets:?}");
    // The batch is kept whole with its reason, and the manifest covers it.
    let quarantine = out.join("pay/_quarantine/0");
    let names: Vec<String> = std::fs::read_dir(&quarantine)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    let reason =
        std::fs::read_to_string(quarantine.join(names.iter().find(|n| n.ends_with(".reason")).unwrap()))
            .unwrap();
    assert!(
        reason.contains("invalid record") || reason.contains("UTF-8") || reason.contains("offset"),
        "{reason}"
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("pay/_landed/0.json")).unwrap()).unwrap();
    assert_eq!(manifest["next_offset"].as_i64(), Some(end));
}

#[test]
fn given_a_topic_re_created_shorter_than_what_landed_then_the_lander_says_so_instead_of_waiting() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = dir.path().join("out");
    let batch = |count: i64| {
        let mut builder = BatchBuilder::default();
        for i in 0..count {
            builder.push(1_764_000_000_000 + i, None, Some(&payment(1_764_000_000_000 + i, i)));
        }
        builder.finish()
    };
    write_segment(&data.join("pay-0"), &[batch(10), batch(5)]);
    let lander = land_all(&data, &out, None, 60_000);
    assert_eq!(lander.progress().records, 15);
    drop(lander);
    // Deleted and re-created with fewer records than were landed.
    std::fs::remove_dir_all(data.join("pay-0")).unwrap();
    write_segment(&data.join("pay-0"), &[batch(4)]);
    let config = LanderConfig { max_lag_ms: 60_000, ..LanderConfig::default() };
    let mut lander = lander_over(&data, &out, config);
    lander.step(false).unwrap();
    let progress = lander.progress();
    assert_eq!(progress.partition_errors, 1, "the partition reports the problem: {progress:?}");
    let failed = lander.failed_partitions();
    assert_eq!(failed.len(), 1);
    assert!(failed[0].2.contains("ends at offset 4, before 15"), "{failed:?}");
}

/// Values of the landed rows under `dir`, by offset.
fn landed_values(dir: &Path) -> BTreeMap<i64, Vec<u8>> {
    let mut values = BTreeMap::new();
    for row in read_rows(dir) {
        assert!(
            values.insert(row.offset, row.value.unwrap()).is_none(),
            "offset {} landed twice",
            row.offset
        );
    }
    values
}

fn append_payments(engine: &Engine, topic: &str, first: i64, count: i64) {
    let mut batch = BatchBuilder::default();
    for i in first..first + count {
        batch.push(1_764_000_000_000 + i, None, Some(&payment(1_764_000_000_000 + i, i)));
    }
    engine.append(topic, 0, batch.finish()).wait().unwrap();
}

/// A topic deleted and created again, longer than what had landed of the old one: the
/// new topic lands whole from offset 0 and the old one's files are set aside, whether
/// the lander was running through it (`restart = false`) or started after it.
fn re_created_topic_lands_from_zero(restart: bool) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = dir.path().join("out");
    let engine = open_engine(&data);
    engine.create_topic("pay", 1).unwrap();
    append_payments(&engine, "pay", 0, 15);
    let mut lander = land_all(&data, &out, None, 60_000);
    assert_eq!(lander.progress().records, 15);
    let old_id = lander.manifests().next().unwrap().topic_id.expect("the manifest names the topic it landed");

    engine.delete_topic("pay").unwrap();
    engine.create_topic("pay", 1).unwrap();
    for chunk in 0..4 {
        append_payments(&engine, "pay", 1_000 + chunk * 10, 10); // offsets 0..40, values from 1000
    }
    if restart {
        drop(lander);
        lander = land_all(&data, &out, None, 60_000);
    } else {
        while !lander.step(false).unwrap() {}
        lander.flush().unwrap();
    }
    let progress = lander.progress().clone();
    assert_eq!((progress.partition_errors, progress.replaced_partitions), (0, 1), "{progress:?}");

    let new_rows = landed_values(&out.join("pay"));
    assert_eq!(
        new_rows.keys().copied().collect::<Vec<_>>(),
        (0..40).collect::<Vec<_>>(),
        "the new topic lands whole"
    );
    for (offset, value) in &new_rows {
        assert_eq!(value, &payment(1_764_000_000_000 + 1_000 + offset, 1_000 + offset), "offset {offset}");
    }
    let aside = out.join("_replaced").join("pay").join(old_id.to_string());
    let old_rows = landed_values(&aside);
    assert_eq!(old_rows.len(), 15, "what landed of the old topic is kept aside");
    assert_eq!(old_rows[&14], payment(1_764_000_000_000 + 14, 14));
    let old_manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(aside.join("_landed").join("0.json")).unwrap()).unwrap();
    assert_eq!(old_manifest["next_offset"].as_i64(), Some(15));

    let manifest = lander.manifests().next().unwrap().clone();
    assert_eq!(manifest.next_offset, 40);
    let new_id = manifest.topic_id.expect("the new manifest names the new topic");
    assert_ne!(new_id, old_id);
    let stored: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("pay").join("_landed").join("0.json")).unwrap())
            .unwrap();
    assert_eq!(stored["topic_id"].as_str(), Some(new_id.to_string().as_str()));
    let registration = std::fs::read_to_string(data.join("__landers").join("test.landed")).unwrap();
    assert!(registration.contains(&format!("pay 0 40 {new_id}\n")), "{registration}");
    engine.shutdown().unwrap();
}

#[test]
fn given_a_topic_re_created_longer_while_the_lander_runs_then_the_new_topic_lands_from_zero() {
    re_created_topic_lands_from_zero(false);
}

#[test]
fn given_a_topic_re_created_longer_before_the_lander_restarts_then_the_new_topic_lands_from_zero() {
    re_created_topic_lands_from_zero(true);
}

#[test]
fn given_a_log_cut_back_and_written_again_under_the_reader_then_the_lander_says_so_instead_of_reading_on() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = dir.path().join("out");
    let batch = |count: i64, tag: i64| {
        let mut builder = BatchBuilder::default();
        for i in 0..count {
            builder.push(1_764_000_000_000 + i, None, Some(&payment(1_764_000_000_000 + i, tag * 1000 + i)));
        }
        builder.finish()
    };
    write_segment(&data.join("pay-0"), &[batch(10, 0), batch(5, 1)]);
    let mut lander = land_all(&data, &out, None, 60_000);
    assert_eq!(lander.progress().records, 15);
    // The engine healed the partition (cut it back past what the lander read) and new
    // appends made the file longer than before: same file, other bytes after offset 10.
    write_segment(&data.join("pay-0"), &[batch(10, 0), batch(8, 2)]);
    lander.step(false).unwrap();
    let failed = lander.failed_partitions();
    assert_eq!(failed.len(), 1, "{:?}", lander.progress());
    assert!(failed[0].2.contains("before 15"), "{failed:?}");
    assert_eq!(lander.progress().records, 15, "nothing of the rewritten log landed as if it followed");
}
