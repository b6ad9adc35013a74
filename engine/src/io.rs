//! Kernel-facing I/O: the io_uring capability probe, the eventfd a shard parks on,
//! thread pinning, the helper thread that applies page-cache hints
//! ([`apply_cache_hints`]) off the shards, and the one that unlinks what retention
//! and topic deletion retired ([`delete_in_background`]).
//!
//! The probe runs once at engine start-up and fails fast with one line when io_uring
//! is missing or disabled (seccomp, `kernel.io_uring_disabled`, old kernels), naming the
//! opcode that is absent, rather than failing on the first write. File writes and
//! fdatasyncs themselves go through each shard's `tokio-uring` runtime (see
//! the `shard` module).
//!
//! Invariant: every `unsafe` block here is a plain libc call on a descriptor this
//! module owns, with a `// SAFETY:` note.

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

/// Hands page-cache hints to a helper thread (`corelog-cache`, started on first use and
/// living as long as the process) that applies them, so a shard never blocks in
/// `posix_fadvise` or `madvise`. Hints are advisory: if the thread cannot be started
/// they are dropped.
pub fn apply_cache_hints(hints: Vec<crate::segment::CacheHint>) {
    use std::sync::mpsc::{channel, Sender};
    use std::sync::OnceLock;
    static HELPER: OnceLock<Option<Sender<Vec<crate::segment::CacheHint>>>> = OnceLock::new();
    let helper = HELPER.get_or_init(|| {
        let (sender, receiver) = channel::<Vec<crate::segment::CacheHint>>();
        let started = std::thread::Builder::new().name("corelog-cache".into()).spawn(move || {
            for hints in receiver {
                hints.iter().for_each(crate::segment::CacheHint::apply);
            }
        });
        match started {
            Ok(_) => Some(sender),
            Err(error) => {
                tracing::warn!(
                    "page-cache helper thread not started ({error}); the cache is left to the kernel"
                );
                None
            }
        }
    });
    if let Some(sender) = helper {
        let _ = sender.send(hints);
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
    use std::sync::mpsc::{sync_channel, SyncSender};
    use std::sync::OnceLock;
    static HELPER: OnceLock<Option<SyncSender<Doomed>>> = OnceLock::new();
    let helper = HELPER.get_or_init(|| {
        let (sender, receiver) = sync_channel::<Doomed>(DELETIONS_QUEUED_MAX);
        let started = std::thread::Builder::new().name("corelog-delete".into()).spawn(move || {
            receiver.into_iter().for_each(delete_now);
        });
        match started {
            Ok(_) => Some(sender),
            Err(error) => {
                tracing::warn!("deletion helper thread not started ({error}); deleting in place");
                None
            }
        }
    });
    let refused = match helper {
        Some(sender) => match sender.try_send(doomed) {
            Ok(()) => None,
            Err(
                std::sync::mpsc::TrySendError::Full(doomed)
                | std::sync::mpsc::TrySendError::Disconnected(doomed),
            ) => Some(doomed),
        },
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
