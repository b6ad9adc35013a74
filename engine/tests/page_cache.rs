//! Specifications of the page-cache window: bytes far enough behind the end of the log
//! leave the page cache (checked with `mincore`), newer bytes stay, and every byte
//! still reads back identical, including through slices taken before the drop.

use engine::batch::BatchBuilder;
use engine::log::{LogConfig, PartitionLog};
use std::os::fd::AsRawFd;
use std::path::Path;

const NOW_MS: i64 = 1_700_000_000_000;
const PAGE: usize = 4096;

/// Resident pages of `path` in `start..end`, counted through a fresh mapping.
fn resident_pages(path: &Path, start: usize, end: usize) -> usize {
    let file = std::fs::File::open(path).unwrap();
    let len = end - start;
    // SAFETY: a fresh read-only shared mapping of a file region that exists (start
    // and len are page multiples inside the file); unmapped below.
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            start as i64,
        )
    };
    assert_ne!(map, libc::MAP_FAILED);
    let mut residency = vec![0u8; len / PAGE];
    // SAFETY: `map` is a live mapping of `len` bytes and `residency` has one byte per page.
    let status = unsafe { libc::mincore(map, len, residency.as_mut_ptr()) };
    // SAFETY: unmapping the mapping created above.
    unsafe { libc::munmap(map, len) };
    assert_eq!(status, 0);
    residency.iter().filter(|r| **r & 1 == 1).count()
}

#[test]
fn given_a_cache_window_when_the_log_grows_past_it_then_old_pages_leave_the_cache_and_bytes_survive() {
    let dir = tempfile::tempdir().unwrap();
    let window: u64 = 4 << 20;
    let config = LogConfig { retention_ms: None, cache_window_bytes: window, ..LogConfig::default() };
    let mut log = PartitionLog::open(dir.path(), config, false, NOW_MS).unwrap().0;
    let mut written = Vec::new();
    let mut early = None;
    for i in 0..64u32 {
        let mut builder = BatchBuilder::default();
        for r in 0..256u32 {
            let value: Vec<u8> = (0..1000).map(|b| (i * 31 + r * 7 + b) as u8).collect();
            builder.push(NOW_MS, None, Some(&value));
        }
        let batch = builder.finish();
        let mut stored = batch.clone();
        let (base_offset, _) = log.append_sync(batch, NOW_MS).unwrap();
        engine::batch::assign_base_offset(&mut stored, base_offset);
        written.extend_from_slice(&stored);
        if i == 0 {
            // A reader's zero-copy slice of the first batch, touched so its pages are
            // mapped in this process when the window passes them.
            let fetched = log.read(0, 1 << 20).unwrap();
            assert_eq!(fetched.bytes[..64], written[..64]);
            early = Some(fetched.bytes);
        }
    }
    let path = dir.path().join(format!("{:020}.log", 0));
    let size = written.len();
    assert!(size as u64 > 3 * window, "the log outgrew the window: {size} bytes");
    // Hints move in aligned steps.
    let step = engine::log::CACHE_HINT_STEP_BYTES as usize;
    let dropped_end = (size - window as usize) / step * step;
    assert!(dropped_end >= step, "the test drops something");
    let dropped = resident_pages(&path, 0, dropped_end);
    assert!(
        dropped <= 8,
        "{dropped} of {} pages more than the window behind the end are still cached",
        dropped_end / PAGE
    );
    let recent_start = (size - (window as usize) / 2).next_multiple_of(PAGE);
    let recent_end = size / PAGE * PAGE;
    let recent = resident_pages(&path, recent_start, recent_end);
    assert!(recent * 2 > (recent_end - recent_start) / PAGE, "recent bytes stay cached ({recent} pages)");
    // Dropped pages come back from the file, identical.
    let early = early.unwrap();
    assert_eq!(&early[..], &written[..early.len()]);
    let mut offset = 0;
    let mut read = Vec::new();
    while offset < log.high_watermark() {
        let fetched = log.read(offset, 1 << 20).unwrap();
        read.extend_from_slice(&fetched.bytes);
        offset = fetched.next_offset;
    }
    assert!(read == written, "the log reads back byte-identical");
}

#[test]
fn given_a_window_of_zero_then_the_cache_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig { retention_ms: None, cache_window_bytes: 0, ..LogConfig::default() };
    let mut log = PartitionLog::open(dir.path(), config, false, NOW_MS).unwrap().0;
    let mut size = 0;
    for _ in 0..16 {
        let mut builder = BatchBuilder::default();
        for _ in 0..256 {
            builder.push(NOW_MS, None, Some(&[7u8; 1000]));
        }
        let batch = builder.finish();
        size += batch.len();
        log.append_sync(batch, NOW_MS).unwrap();
    }
    let path = dir.path().join(format!("{:020}.log", 0));
    let end = size / PAGE * PAGE;
    let resident = resident_pages(&path, 0, end);
    assert!(resident * 2 > end / PAGE, "written pages stay cached ({resident} of {})", end / PAGE);
}

#[test]
fn given_an_engine_then_its_shards_apply_the_window_off_the_data_path() {
    let dir = tempfile::tempdir().unwrap();
    let window: u64 = 4 << 20;
    let log = LogConfig { retention_ms: None, cache_window_bytes: window, ..LogConfig::default() };
    let config = engine::EngineConfig {
        shards: 1,
        pin_threads: false,
        flush: engine::FlushMode::Group,
        log,
        ..engine::EngineConfig::new(dir.path())
    };
    let engine = engine::Engine::open(config).unwrap();
    engine.create_topic("cached", 1).unwrap();
    let mut size = 0;
    for i in 0..96u32 {
        let mut builder = BatchBuilder::default();
        for r in 0..256u32 {
            builder.push(NOW_MS, None, Some(&[(i + r) as u8; 1000]));
        }
        let batch = builder.finish();
        size += batch.len();
        engine.append("cached", 0, batch).wait().unwrap();
    }
    let step = engine::log::CACHE_HINT_STEP_BYTES as usize;
    let dropped_end = (size - window as usize) / step * step;
    assert!(dropped_end >= 2 * step, "the test drops something");
    let path = dir.path().join("cached-0").join(format!("{:020}.log", 0));
    // The helper thread applies the hints shortly after the writes.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut resident = resident_pages(&path, 0, dropped_end);
    while resident > 8 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
        resident = resident_pages(&path, 0, dropped_end);
    }
    assert!(resident <= 8, "{resident} pages more than the window behind the end are still cached");
    // The helper that drops pages yields its core to any other thread (SCHED_IDLE), so
    // a drop never keeps a shard that wakes on its core waiting.
    assert_eq!(
        helper_policy("corelog-cache"),
        Some(SCHED_IDLE),
        "the page-cache helper runs under SCHED_IDLE"
    );
    // Everything still reads back, CRC-checked.
    let (mut offset, mut records) = (0, 0);
    while offset < 96 * 256 {
        let fetched = engine.read("cached", 0, offset, 1 << 20).wait().unwrap();
        let mut position = 0;
        while position < fetched.bytes.len() {
            let view = engine::batch::BatchView::parse(&fetched.bytes[position..]).unwrap();
            records += view.record_count();
            position += view.len();
        }
        offset = fetched.next_offset;
    }
    assert_eq!(records, 96 * 256);
    engine.shutdown().unwrap();
}

/// Linux's number for the `SCHED_IDLE` policy (`sched(7)`).
const SCHED_IDLE: u32 = 5;

/// The scheduling policy of this process's thread named `name` (field 41 of its
/// `/proc/self/task/TID/stat`), if there is one.
fn helper_policy(name: &str) -> Option<u32> {
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim_end() != name {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
        // Fields after the command (which may hold spaces) start after its ')'.
        let after = &stat[stat.rfind(')')? + 2..];
        return after.split(' ').nth(41 - 3).and_then(|field| field.parse().ok());
    }
    None
}
