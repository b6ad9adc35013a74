//! Injected storage faults: the layer every shard write and sync goes through, so tests
//! can make the disk fail the way real disks do (EIO or ENOSPC on a write or an
//! fdatasync, short writes) and check that the high watermark never passes a failed
//! byte and that the partition heals.
//!
//! Owns: a process-wide list of armed [`Fault`]s. When none is armed (always, outside
//! tests) each call costs one relaxed atomic load before doing the real operation.
//! A fault matches an operation by kind and by a substring of the file's path (read
//! from `/proc/self/fd` only while faults are armed), so tests that share a process
//! scope faults to their own data directory.
//!
//! Never: changes what a successful operation does, or fails an operation no armed
//! fault matches.

use bytes::BytesMut;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use tokio_uring::fs::File;

/// Which operation a fault hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultOp {
    /// A data write (plain, or with `RWF_DSYNC`).
    Write,
    /// An `fdatasync` or `fsync` (including the sync half of an `RWF_DSYNC` write).
    Sync,
}

/// What the faulty operation does instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// Fails with `EIO` (for a write: nothing written).
    Eio,
    /// Fails with `ENOSPC` (for a write: nothing written).
    NoSpace,
    /// A write writes only its first half, then the rest fails with `ENOSPC` (what a
    /// disk that fills mid-write does); on a sync, fails with `EIO`.
    Short,
}

/// One armed fault.
#[derive(Debug, Clone)]
pub struct Fault {
    /// Operations on files whose path contains this.
    pub path_contains: String,
    /// Which operation.
    pub op: FaultOp,
    /// What happens.
    pub kind: FaultKind,
    /// Matching operations let through before the first failure.
    pub skip: u64,
    /// Failures before the fault disarms itself (`u64::MAX`: until [`clear`]).
    pub times: u64,
}

static ARMED: AtomicBool = AtomicBool::new(false);
static FAULTS: Mutex<Vec<Fault>> = Mutex::new(Vec::new());

/// Arms `fault`.
pub fn inject(fault: Fault) {
    let mut faults = FAULTS.lock().expect("fault list");
    faults.push(fault);
    ARMED.store(true, Ordering::Release);
}

/// Disarms every fault whose path filter contains `path_contains`.
pub fn clear(path_contains: &str) {
    let mut faults = FAULTS.lock().expect("fault list");
    faults.retain(|f| !f.path_contains.contains(path_contains));
    ARMED.store(!faults.is_empty(), Ordering::Release);
}

/// The fault to apply to `op` on `fd`, if an armed one matches (and counts it).
fn take(op: FaultOp, fd: i32) -> Option<FaultKind> {
    if !ARMED.load(Ordering::Acquire) {
        return None;
    }
    let path = std::fs::read_link(format!("/proc/self/fd/{fd}")).ok()?;
    let path = path.to_string_lossy();
    let mut faults = FAULTS.lock().expect("fault list");
    let fault = faults.iter_mut().find(|f| f.op == op && f.times > 0 && path.contains(&f.path_contains))?;
    if fault.skip > 0 {
        fault.skip -= 1;
        return None;
    }
    fault.times -= 1;
    Some(fault.kind)
}

fn error(kind: FaultKind) -> std::io::Error {
    match kind {
        FaultKind::NoSpace => std::io::Error::from_raw_os_error(libc::ENOSPC),
        FaultKind::Eio | FaultKind::Short => std::io::Error::from_raw_os_error(libc::EIO),
    }
}

/// `file.write_all_at(bytes, position)`, unless a fault says otherwise.
pub async fn write_all_at(file: &File, bytes: BytesMut, position: u64) -> (std::io::Result<()>, BytesMut) {
    match take(FaultOp::Write, file.as_raw_fd()) {
        None => file.write_all_at(bytes, position).await,
        Some(FaultKind::Short) => {
            let half = bytes.len() / 2;
            let (written, bytes) =
                file.write_all_at(tokio_uring::buf::BoundedBuf::slice(bytes, ..half), position).await;
            let bytes = bytes.into_inner();
            (written.and(Err(std::io::Error::from_raw_os_error(libc::ENOSPC))), bytes)
        }
        Some(kind) => (Err(error(kind)), bytes),
    }
}

/// Zeros for [`write_zeros_at`]: as many as the longest fill (in `.bss`, never written).
static ZEROS: [u8; crate::prealloc::FILL_AHEAD_BYTES as usize] =
    [0; crate::prealloc::FILL_AHEAD_BYTES as usize];

/// Writes `len` zero bytes at `position` (a preallocating fill, see `prealloc`), unless
/// a fault says otherwise. `len` is at most `prealloc::FILL_AHEAD_BYTES`.
pub async fn write_zeros_at(file: &File, position: u64, len: usize) -> std::io::Result<()> {
    let zeros: &'static [u8] = &ZEROS[..len];
    match take(FaultOp::Write, file.as_raw_fd()) {
        None => file.write_all_at(zeros, position).await.0,
        Some(FaultKind::Short) => {
            let written = file.write_all_at(&zeros[..len / 2], position).await.0;
            written.and(Err(std::io::Error::from_raw_os_error(libc::ENOSPC)))
        }
        Some(kind) => Err(error(kind)),
    }
}

/// One `RWF_DSYNC` write of `bytes` at `position` (the count written, possibly short),
/// unless a fault says otherwise.
pub async fn write_synced_at(
    file: &File,
    bytes: BytesMut,
    position: u64,
) -> (std::io::Result<usize>, BytesMut) {
    let fd = file.as_raw_fd();
    match take(FaultOp::Write, fd) {
        None => {}
        Some(FaultKind::Short) => {
            let half = bytes.len() / 2;
            let (written, bytes) =
                file.write_all_at(tokio_uring::buf::BoundedBuf::slice(bytes, ..half), position).await;
            return (written.and(Err(std::io::Error::from_raw_os_error(libc::ENOSPC))), bytes.into_inner());
        }
        Some(kind) => return (Err(error(kind)), bytes),
    }
    if let Some(kind) = take(FaultOp::Sync, fd) {
        // The bytes reach the page cache; their writeback fails.
        let (written, bytes) = file.write_all_at(bytes, position).await;
        return (written.and(Err(error(kind))), bytes);
    }
    file.write_at_with_flags(bytes, position, libc::RWF_DSYNC).submit().await
}

/// `fsync` (`full`) or `fdatasync` of `file`, unless a fault says otherwise.
pub async fn sync(file: &File, full: bool) -> std::io::Result<()> {
    if let Some(kind) = take(FaultOp::Sync, file.as_raw_fd()) {
        return Err(error(kind));
    }
    if full {
        file.sync_all().await
    } else {
        file.sync_data().await
    }
}
