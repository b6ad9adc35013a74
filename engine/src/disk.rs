//! The narrow storage interface a partition's files go through: [`Disk`].
//!
//! `segment`, `log` and `producers` never call `std::fs` for a partition's files; they
//! ask the [`Disk`] their log was opened on. Production uses [`OsDisk`] (plain system
//! calls; the shard's own data-path writes and syncs go through io_uring on the same
//! descriptors, see `shard` and `fault`). The simulator (`corelog-sim`) gives the log a
//! disk that keeps written-but-unsynced bytes apart from synced ones, loses or tears
//! them at a simulated crash, and injects errors, so the real log code runs against
//! faults chosen by a seed.
//!
//! What the interface owns: every operation whose durability matters (writes, syncs,
//! length changes, creations, renames and deletions of files, directory syncs). What
//! it does not: reading a file's current bytes through its descriptor or a mapping
//! (the page cache, which a crash does not change while the process lives), and
//! lengths read with `fstat`. A `Disk` implementation never retries: an error is
//! handed up as it came (a failed sync must fail the partition, see `shard`).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Operations on a directory tree whose durability the caller controls.
pub trait Disk: Send + Sync + std::fmt::Debug {
    /// Creates `dir` and its parents (durable only after [`Disk::sync_dir`] of each parent).
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// The paths in `dir`, in no particular order.
    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>>;
    /// Opens `path` for reading and writing; with `create`, creates it or truncates it
    /// to empty. A new entry is durable only after [`Disk::sync_dir`] of its directory.
    fn open(&self, path: &Path, create: bool) -> io::Result<File>;
    /// Writes all of `bytes` at `position` of `file` (at `path`): into the page cache,
    /// not durable until a sync of the file.
    fn write_at(&self, file: &File, path: &Path, bytes: &[u8], position: u64) -> io::Result<()>;
    /// Makes `file`'s written bytes durable (`fdatasync`; with `full`, `fsync`).
    fn sync(&self, file: &File, path: &Path, full: bool) -> io::Result<()>;
    /// Sets `file`'s length (not durable until a sync of the file).
    fn set_len(&self, file: &File, path: &Path, len: u64) -> io::Result<()>;
    /// Makes `dir`'s entries (creations, renames, removals) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Removes the file at `path` (durable after [`Disk::sync_dir`]).
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Renames `from` to `to`, replacing `to` (durable after [`Disk::sync_dir`]).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// The whole current contents of `path`.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// When `path` was last modified, in ms since the epoch (the simulator's clock
    /// under simulation).
    fn mtime_ms(&self, path: &Path) -> io::Result<i64>;
}

/// The operating system's file system: production.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsDisk;

impl OsDisk {
    /// The shared handle logs open on by default.
    pub fn shared() -> Arc<dyn Disk> {
        Arc::new(OsDisk)
    }
}

impl Disk for OsDisk {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        std::fs::read_dir(dir)?.map(|entry| entry.map(|e| e.path())).collect()
    }
    fn open(&self, path: &Path, create: bool) -> io::Result<File> {
        OpenOptions::new().read(true).write(true).create(create).truncate(create).open(path)
    }
    fn write_at(&self, file: &File, _path: &Path, bytes: &[u8], position: u64) -> io::Result<()> {
        file.write_all_at(bytes, position)
    }
    fn sync(&self, file: &File, _path: &Path, full: bool) -> io::Result<()> {
        if full {
            file.sync_all()
        } else {
            file.sync_data()
        }
    }
    fn set_len(&self, file: &File, _path: &Path, len: u64) -> io::Result<()> {
        file.set_len(len)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }
    fn mtime_ms(&self, path: &Path) -> io::Result<i64> {
        let modified = std::fs::metadata(path)?.modified()?;
        Ok(modified.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64))
    }
}

/// An open file and the disk its durable operations go through.
#[derive(Debug)]
pub struct DiskFile {
    file: File,
    path: PathBuf,
    disk: Arc<dyn Disk>,
}

impl DiskFile {
    /// Opens `path` on `disk` (see [`Disk::open`]).
    pub fn open(disk: &Arc<dyn Disk>, path: &Path, create: bool) -> io::Result<Self> {
        Ok(Self { file: disk.open(path, create)?, path: path.to_path_buf(), disk: disk.clone() })
    }
    /// Writes all of `bytes` at `position` (not durable until synced).
    pub fn write_all_at(&self, bytes: &[u8], position: u64) -> io::Result<()> {
        self.disk.write_at(&self.file, &self.path, bytes, position)
    }
    /// `fdatasync`.
    pub fn sync_data(&self) -> io::Result<()> {
        self.disk.sync(&self.file, &self.path, false)
    }
    /// `fsync`.
    pub fn sync_all(&self) -> io::Result<()> {
        self.disk.sync(&self.file, &self.path, true)
    }
    /// Sets the length (not durable until synced).
    pub fn set_len(&self, len: u64) -> io::Result<()> {
        self.disk.set_len(&self.file, &self.path, len)
    }
    /// The current length (`fstat`).
    pub fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }
    /// True when the file is empty.
    pub fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    /// The descriptor, for mappings and for the shard's io_uring writes and syncs
    /// (which pass the `fault` layer instead of the [`Disk`]).
    pub fn std(&self) -> &File {
        &self.file
    }
    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
