//! Known bugs the simulator plants to prove it catches them: [`Plant`].
//!
//! `corelog-sim --plant NAME` arms one; the code paths below then misbehave on
//! purpose, and a simulator run that does not report a failure is itself a failure
//! (a simulator that catches nothing proves nothing). Plants exist only when the
//! `plants` cargo feature is on (the simulator turns it on); without it [`armed`] is a
//! constant `false` and every planted branch compiles away. Nothing but the simulator
//! ever arms a plant.

/// A known bug that can be switched on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plant {
    /// The group commit publishes the high watermark when bytes are written, before
    /// the sync that makes them durable.
    PublishBeforeSync,
    /// Recovery keeps a torn tail instead of cutting it, and appends go after it.
    SkipTornTailTruncation,
    /// A roll leaves the sealed segment out of the next sync.
    RollWithoutSync,
    /// A failed sync is retried, and the retry's success trusted.
    TrustFailedFsync,
    /// Producer state is not rebuilt at open: duplicates are appended again.
    ForgetProducerSequences,
    /// A consumer group's committed offsets are renamed into place without syncing
    /// their directory, so a crash can bring back older ones.
    UnsyncedOffsetCommit,
    /// An append is written while a fill of zeros over its bytes is still being
    /// written, so the zeros may land on it.
    FillOverAppend,
}

impl Plant {
    /// Every plant, in a fixed order.
    pub const ALL: [Plant; 7] = [
        Plant::PublishBeforeSync,
        Plant::SkipTornTailTruncation,
        Plant::RollWithoutSync,
        Plant::TrustFailedFsync,
        Plant::ForgetProducerSequences,
        Plant::UnsyncedOffsetCommit,
        Plant::FillOverAppend,
    ];

    /// The name `--plant` takes.
    pub fn name(self) -> &'static str {
        match self {
            Plant::PublishBeforeSync => "publish-before-sync",
            Plant::SkipTornTailTruncation => "skip-torn-truncation",
            Plant::RollWithoutSync => "roll-without-sync",
            Plant::TrustFailedFsync => "trust-failed-fsync",
            Plant::ForgetProducerSequences => "forget-producer-sequences",
            Plant::UnsyncedOffsetCommit => "unsynced-offset-commit",
            Plant::FillOverAppend => "fill-over-append",
        }
    }

    /// The plant called `name`.
    pub fn from_name(name: &str) -> Option<Plant> {
        Plant::ALL.into_iter().find(|p| p.name() == name)
    }

    /// What the bug does, in one line.
    pub fn describe(self) -> &'static str {
        match self {
            Plant::PublishBeforeSync => "the high watermark passes written bytes before their sync",
            Plant::SkipTornTailTruncation => "recovery keeps a torn tail and appends after it",
            Plant::RollWithoutSync => "a roll leaves the sealed segment out of the next sync",
            Plant::TrustFailedFsync => "a failed fsync is retried and the retry trusted",
            Plant::ForgetProducerSequences => "producer sequences are forgotten at restart",
            Plant::UnsyncedOffsetCommit => {
                "committed offsets are renamed into place without a directory sync"
            }
            Plant::FillOverAppend => "an append is written while zeros are still being written over it",
        }
    }

    fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

#[cfg(feature = "plants")]
static ARMED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Arms exactly the plants in `plants` (none disarms all).
#[cfg(feature = "plants")]
pub fn arm(plants: &[Plant]) {
    let bits = plants.iter().fold(0, |bits, p| bits | p.bit());
    ARMED.store(bits, std::sync::atomic::Ordering::Relaxed);
}

/// True when `plant` is armed.
#[cfg(feature = "plants")]
#[inline]
pub fn armed(plant: Plant) -> bool {
    ARMED.load(std::sync::atomic::Ordering::Relaxed) & plant.bit() != 0
}

/// True when `plant` is armed: never, without the `plants` feature.
#[cfg(not(feature = "plants"))]
#[inline(always)]
pub fn armed(plant: Plant) -> bool {
    let _ = plant.bit();
    false
}
