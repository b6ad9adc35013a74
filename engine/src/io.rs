//! Kernel-facing I/O: the io_uring capability probe, the eventfd a shard parks on,
//! thread pinning, the helper threads that apply page-cache hints
//! ([`apply_cache_hints`]) off the shards, and the one that unlinks what retention
//! and topic deletion retired ([`delete_in_background`]).
//!
//! The probe runs once at engine start-up and fails fast with one line when io_uring
//! is missing or disabled (seccomp, `kernel.io_uring_disabled`, old kernels), naming the
//! opcode that is absent, rather than failing on the first write. File writes and
//! fdatasyncs themselves go through each shard's `tokio-uring` runtime (see
//! the `shard` module).
//!
//! Invariants: every `unsafe` block here is a plain libc call on a descriptor this
//! module owns (or on the calling thread), with a `// SAFETY:` note; every queue to a
//! helper is bounded by a named limit.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Why the kernel cannot run the engine.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// `io_uring_setup` failed.
    #[error("io_uring is unavailable ({0}); corelog needs Linux 5.11+ with io_uring enabled (see /proc/sys/kernel/io_uring_disabled)")]
    Unavailable(std::io::Error),
    /// An opcode the engine uses is not supported.
    #[error("io_uring lacks the {0} operation corelog needs; upgrade the kernel")]
    MissingOpcode(&'static str),
}

/// Checks once that io_uring works and supports every operation the engine submits.
pub fn probe() -> Result<(), ProbeError> {
    use io_uring::opcode;
    let ring = io_uring::IoUring::new(8).map_err(ProbeError::Unavailable)?;
    let mut probe = io_uring::Probe::new();
    ring.submitter().register_probe(&mut probe).map_err(ProbeError::Unavailable)?;
    let needed = [
        ("write", opcode::Write::CODE),
        ("read", opcode::Read::CODE),
        ("fsync", opcode::Fsync::CODE),
        ("accept", opcode::Accept::CODE),
        ("send", opcode::Send::CODE),
        ("recv", opcode::Recv::CODE),
        ("timeout", opcode::Timeout::CODE),
    ];
    for (name, code) in needed {
        if !probe.is_supported(code) {
            return Err(ProbeError::MissingOpcode(name));
        }
    }
    Ok(())
}

/// A non-blocking eventfd: other threads [`EventFd::signal`] it, the owning shard
/// waits for it to become readable and [`EventFd::drain`]s it.
#[derive(Debug)]
pub struct EventFd {
    fd: OwnedFd,
}

impl EventFd {
    /// Creates a non-blocking, close-on-exec eventfd.
    pub fn new() -> std::io::Result<Self> {
        // SAFETY: eventfd takes no pointers; a non-negative result is a new descriptor
        // that we own from here on.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor owned by nobody else.
        Ok(Self { fd: unsafe { OwnedFd::from_raw_fd(fd) } })
    }

    /// Adds one to the counter, waking a waiter. Never blocks (the counter cannot
    /// overflow in practice: it would take 2^64 signals without a drain).
    pub fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to a descriptor we own.
        let written = unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
        debug_assert!(
            written == 8 || std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock
        );
    }

    /// Resets the counter; returns how many signals were pending (0 if none).
    pub fn drain(&self) -> u64 {
        let mut value: u64 = 0;
        // SAFETY: reads at most 8 bytes into a live u64 from a descriptor we own.
        let read = unsafe { libc::read(self.fd.as_raw_fd(), (&mut value as *mut u64).cast(), 8) };
        if read == 8 {
            value
        } else {
            0
        }
    }
}

impl AsRawFd for EventFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// An eventfd shared between the shard that waits on it and the threads that signal it.
#[derive(Debug, Clone)]
pub struct SharedEventFd(pub std::sync::Arc<EventFd>);

impl AsRawFd for SharedEventFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// Registers `eventfd` with the current tokio reactor for readability.
pub fn watch_readable(eventfd: SharedEventFd) -> std::io::Result<tokio::io::unix::AsyncFd<SharedEventFd>> {
    // SAFETY: the AsyncFd owns a clone of the Arc that owns the descriptor, so the
    // descriptor stays open (and is not reused) for as long as it is registered.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(eventfd, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
}

/// Pins the calling thread to `core` when it exists; returns whether it did.
pub fn pin_to_core(core: usize) -> bool {
    core_affinity::get_core_ids()
        .and_then(|ids| ids.get(core % ids.len().max(1)).copied())
        .is_some_and(core_affinity::set_for_current)
}

/// Bytes of page-cache hints the low-priority helper may have waiting before new hints
/// go to the normal-priority one (so a helper starved of CPU never lets the cache grow
/// past about this much more than the windows ask).
pub const CACHE_HINT_IDLE_BACKLOG_BYTES: u64 = 16 << 20;
/// Batches of page-cache hints either helper may have queued; past it a batch is
/// dropped (the advice is only advice: its pages stay cached until the kernel reclaims
/// them).
pub const CACHE_HINT_BATCHES_QUEUED_MAX: usize = 1024;

/// Starts a helper thread named `name` that runs `body` over a queue of at most
/// `queued_max` items; returns the queue's sending end.
fn spawn_helper<T: Send + 'static>(
    name: &str,
    queued_max: usize,
    body: impl FnOnce(std::sync::mpsc::Receiver<T>) + Send + 'static,
) -> std::io::Result<std::sync::mpsc::SyncSender<T>> {
    let (sender, receiver) = std::sync::mpsc::sync_channel::<T>(queued_max);
    std::thread::Builder::new().name(name.into()).spawn(move || body(receiver))?;
    Ok(sender)
}

/// Queues `item` for a helper without waiting; gives it back when the queue is full or
/// the helper is gone.
fn offer<T>(sender: &std::sync::mpsc::SyncSender<T>, item: T) -> Result<(), T> {
    sender.try_send(item).map_err(|error| match error {
        std::sync::mpsc::TrySendError::Full(item) | std::sync::mpsc::TrySendError::Disconnected(item) => item,
    })
}

/// One batch of page-cache hints, as a shard hands it over.
type Batch = Vec<crate::segment::CacheHint>;

/// One page-cache helper thread: where its hints go and how many bytes they cover.
struct CacheHelper {
    sender: std::sync::mpsc::SyncSender<Batch>,
    backlog_bytes: std::sync::Arc<crate::sync::AtomicU64>,
}

impl CacheHelper {
    /// Starts the thread; `idle` runs it under `SCHED_IDLE`.
    fn start(name: &str, idle: bool) -> Option<Self> {
        use crate::sync::{AtomicU64, Ordering};
        use std::sync::mpsc::Receiver;
        let backlog_bytes = std::sync::Arc::new(AtomicU64::new(0));
        let backlog = backlog_bytes.clone();
        let started = spawn_helper(name, CACHE_HINT_BATCHES_QUEUED_MAX, move |receiver: Receiver<Batch>| {
            if idle {
                run_when_idle();
            }
            for hints in receiver {
                for hint in &hints {
                    hint.apply();
                    backlog.fetch_sub(hint.bytes(), Ordering::Relaxed);
                }
            }
        });
        match started {
            Ok(sender) => Some(Self { sender, backlog_bytes }),
            Err(error) => {
                tracing::warn!("page-cache helper thread {name} not started ({error})");
                None
            }
        }
    }

    /// Queues `hints`; gives them back when the queue is full.
    fn send(&self, hints: Batch, bytes: u64) -> Result<(), Batch> {
        use crate::sync::Ordering;
        self.backlog_bytes.fetch_add(bytes, Ordering::Relaxed);
        offer(&self.sender, hints).inspect_err(|_| {
            self.backlog_bytes.fetch_sub(bytes, Ordering::Relaxed);
        })
    }

    fn backlog_bytes(&self) -> u64 {
        self.backlog_bytes.load(crate::sync::Ordering::Relaxed)
    }
}

/// Moves the calling thread to `SCHED_IDLE`: it runs only on a core with nothing else
/// to run, and any other thread that wakes there takes the core at the next point the
/// kernel may switch (this kernel is built without preemption of kernel code, so a
/// normal-priority helper inside a 2 ms `posix_fadvise` kept a shard that woke on its
/// core waiting for all of it). Failing is harmless: the thread keeps its priority.
fn run_when_idle() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param for the duration of the call; pid 0 is the
    // calling thread.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } != 0 {
        tracing::info!(
            "page-cache helper keeps its priority (SCHED_IDLE refused: {})",
            std::io::Error::last_os_error()
        );
    }
}

/// Hands page-cache hints to helper threads, so a shard never blocks in
/// `posix_fadvise` or `madvise`. Two helpers start on first use and live as long as the
/// process. Drops (pages of clean data leaving the cache) go to `corelog-cache`, which
/// runs under `SCHED_IDLE`, while less than [`CACHE_HINT_IDLE_BACKLOG_BYTES`] of hints
/// wait for it; writeback starts (`--flush os` keeps its dirty pages bounded with them)
/// and drops past that backlog (the cores are busy enough to starve it) go to
/// `corelog-cache-2` at normal priority. Hints are advisory: when no helper can take
/// them they are dropped, and their pages stay cached until the kernel reclaims them.
pub fn apply_cache_hints(hints: Vec<crate::segment::CacheHint>) {
    use std::sync::OnceLock;
    static HELPERS: OnceLock<[Option<CacheHelper>; 2]> = OnceLock::new();
    let [idle, busy] = HELPERS.get_or_init(|| {
        [CacheHelper::start("corelog-cache", true), CacheHelper::start("corelog-cache-2", false)]
    });
    let (drops, writebacks): (Vec<_>, Vec<_>) =
        hints.into_iter().partition(crate::segment::CacheHint::drops_pages);
    for (hints, may_idle) in [(drops, true), (writebacks, false)] {
        if hints.is_empty() {
            continue;
        }
        let bytes = hints.iter().map(crate::segment::CacheHint::bytes).sum();
        let idle = idle.as_ref().filter(|h| may_idle && h.backlog_bytes() < CACHE_HINT_IDLE_BACKLOG_BYTES);
        let mut hints = hints;
        for helper in [idle, busy.as_ref()].into_iter().flatten() {
            match helper.send(hints, bytes) {
                Ok(()) => break,
                Err(back) => hints = back,
            }
        }
    }
}

/// What [`delete_in_background`] removes: already renamed out of the log's namespace
/// (and that rename made durable) by whoever hands it over, so a crash before it is
/// gone leaves a leftover that the next open removes, never a hole in a log.
#[derive(Debug)]
pub enum Doomed {
    /// A segment retention retired ([`crate::segment::Retired`]).
    Segment(Box<crate::segment::Retired>),
    /// A deleted partition's directory, already renamed to `.deleting-*`.
    Dir(std::path::PathBuf),
}

/// Deletions queued for the deletion thread at most; past it the caller deletes.
pub const DELETIONS_QUEUED_MAX: usize = 1024;

/// Unlinks `doomed` on a helper thread (`corelog-delete`, started on first use and
/// living as long as the process), so a shard never blocks in `unlink`: on a file
/// system mounted with online discard that call discards every freed block before it
/// returns (210 ms for a 256 MiB segment on the development VM's ext4). Deletions run
/// in the order handed over; one that fails is logged and left to the next open. When
/// the thread cannot be started, or [`DELETIONS_QUEUED_MAX`] deletions already wait,
/// the caller's thread deletes.
pub fn delete_in_background(doomed: Doomed) {
    use std::sync::mpsc::SyncSender;
    use std::sync::OnceLock;
    static HELPER: OnceLock<Option<SyncSender<Doomed>>> = OnceLock::new();
    let helper = HELPER.get_or_init(|| {
        let started = spawn_helper("corelog-delete", DELETIONS_QUEUED_MAX, |receiver| {
            receiver.into_iter().for_each(delete_now);
        });
        started
            .inspect_err(|error| {
                tracing::warn!("deletion helper thread not started ({error}); deleting in place")
            })
            .ok()
    });
    let refused = match helper {
        Some(sender) => offer(sender, doomed).err(),
        None => Some(doomed),
    };
    if let Some(doomed) = refused {
        delete_now(doomed);
    }
}

fn delete_now(doomed: Doomed) {
    match doomed {
        Doomed::Segment(retired) => {
            let retired = *retired;
            let base = retired.base_offset();
            if let Err(error) = retired.delete() {
                tracing::warn!(
                    base,
                    "unlinking a retired segment failed (the next open removes it): {error}"
                );
            }
        }
        Doomed::Dir(dir) => match std::fs::remove_dir_all(&dir) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                tracing::warn!(dir = %dir.display(), "removing a deleted partition failed (the next open removes it): {error}")
            }
            _ => {}
        },
    }
}

/// Raises the soft limit on open descriptors to the hard one (when allowed) and returns
/// the soft limit in force (`u64::MAX` when it cannot be read).
pub fn raise_descriptor_limit() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain syscalls reading into and from a struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return u64::MAX;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit.rlim_cur = limit.rlim_max;
            }
        }
    }
    limit.rlim_cur
}
