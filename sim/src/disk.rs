//! The simulated disk: [`SimDisk`], an [`engine::disk::Disk`] that knows what a crash
//! keeps.
//!
//! The bytes a running process sees (its page cache) live in real files under a
//! scratch directory, so the log's read mappings work unchanged. Beside them the disk
//! keeps a model of what is *durable*:
//! * per file (inode): its synced contents, and the writes and length changes since
//!   its last sync, in order;
//! * per directory: the names that are durable, and the creations, removals and
//!   renames since its last sync, in order (a journal: a crash keeps a prefix).
//!
//! [`SimDisk::crash`] replaces every file by what a power loss could leave: its synced
//! contents plus a random prefix of its later operations, the last write torn at any
//! byte; and every directory by its durable names plus a random prefix of its later
//! operations. Faults, while armed ([`SimDisk::set_faults`]), fail writes with EIO,
//! ENOSPC or a short write (a prefix lands, then ENOSPC) and syncs with EIO. A failed
//! sync behaves as Linux's writeback does: the unsynced operations of that file are
//! dropped from the durable path (they stay visible to reads), and the next sync
//! reports success. Directories are assumed to exist durably once created.
//!
//! Everything is deterministic under the seed given at [`SimDisk::new`]: names are
//! kept in ordered maps, and listings come from the model, not the real directory.
//!
//! Never simulated: the kernel's io_uring (the shard's data path) and mmap coherence;
//! the scratch directory is an ordinary file system (tmpfs when `/dev/shm` exists).

use engine::disk::Disk;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// A data operation on a file not yet synced.
#[derive(Debug, Clone)]
enum FileOp {
    Write { position: u64, bytes: Vec<u8> },
    SetLen(u64),
}

/// A directory operation not yet synced.
#[derive(Debug, Clone)]
enum DirOp {
    Link(PathBuf, u64),
    Unlink(PathBuf),
    Rename(PathBuf, PathBuf),
}

#[derive(Debug, Default, Clone)]
struct Inode {
    synced: Vec<u8>,
    pending: Vec<FileOp>,
    mtime_ms: i64,
}

fn apply(content: &mut Vec<u8>, op: &FileOp) {
    match op {
        FileOp::Write { position, bytes } => {
            let end = *position as usize + bytes.len();
            if content.len() < end {
                content.resize(end, 0);
            }
            content[*position as usize..end].copy_from_slice(bytes);
        }
        FileOp::SetLen(len) => content.resize(*len as usize, 0),
    }
}

/// What kind of fault hit an operation (counted by [`SimDisk::faults_injected`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// A write failed with EIO, nothing written.
    WriteEio,
    /// A write failed with ENOSPC, nothing written.
    WriteEnospc,
    /// A write landed a prefix, then failed with ENOSPC.
    ShortWrite,
    /// A sync (file or directory) failed with EIO.
    SyncEio,
}

#[derive(Debug)]
struct State {
    rng: SmallRng,
    clock_ms: i64,
    next_inode: u64,
    inodes: BTreeMap<u64, Inode>,
    names: BTreeMap<PathBuf, u64>,
    durable_names: BTreeMap<PathBuf, u64>,
    dir_ops: BTreeMap<PathBuf, Vec<DirOp>>,
    /// Chance in 1000 that a write or sync fails; 0 when faults are off.
    fault_per_mille: u32,
    faults: Vec<Fault>,
}

/// The simulated disk (see the module doc).
#[derive(Debug)]
pub struct SimDisk {
    root: PathBuf,
    state: Mutex<State>,
}

fn parent(path: &Path) -> PathBuf {
    path.parent().map(Path::to_path_buf).unwrap_or_default()
}

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

impl SimDisk {
    /// A disk whose page cache lives under `root` (emptied first), faults and crashes
    /// drawn from `seed`.
    pub fn new(root: &Path, seed: u64) -> io::Result<Self> {
        if root.exists() {
            std::fs::remove_dir_all(root)?;
        }
        std::fs::create_dir_all(root)?;
        Ok(Self {
            root: root.to_path_buf(),
            state: Mutex::new(State {
                rng: SmallRng::seed_from_u64(seed ^ 0x5eed_d15c),
                clock_ms: 0,
                next_inode: 1,
                inodes: BTreeMap::new(),
                names: BTreeMap::new(),
                durable_names: BTreeMap::new(),
                dir_ops: BTreeMap::new(),
                fault_per_mille: 0,
                faults: Vec::new(),
            }),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("the simulated disk never panics while locked")
    }

    /// The scratch directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Sets the simulated wall clock (file modification times).
    pub fn set_clock(&self, ms: i64) {
        self.state().clock_ms = ms;
    }

    /// Arms faults: each write and sync fails with this chance in 1000 (0 disarms).
    pub fn set_faults(&self, per_mille: u32) {
        self.state().fault_per_mille = per_mille;
    }

    /// Faults injected so far, in order.
    pub fn faults_injected(&self) -> Vec<Fault> {
        self.state().faults.clone()
    }

    /// Decides whether the next operation fails, and how.
    fn draw_fault(state: &mut State, write: bool) -> Option<Fault> {
        if state.fault_per_mille == 0 || state.rng.gen_range(0..1000) >= state.fault_per_mille {
            return None;
        }
        let fault = if !write {
            Fault::SyncEio
        } else {
            match state.rng.gen_range(0..3) {
                0 => Fault::WriteEio,
                1 => Fault::WriteEnospc,
                _ => Fault::ShortWrite,
            }
        };
        state.faults.push(fault);
        Some(fault)
    }

    /// The names in `dir` that survive any crash.
    pub fn durable_names(&self, dir: &Path) -> Vec<PathBuf> {
        self.state().durable_names.keys().filter(|path| parent(path) == dir).cloned().collect()
    }

    /// The durable contents of the `.log` files in `dir` (what survives any crash), by
    /// path, in name order.
    pub fn durable_logs(&self, dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        let state = self.state();
        state
            .durable_names
            .iter()
            .filter(|(path, _)| parent(path) == dir && path.extension().is_some_and(|e| e == "log"))
            .map(|(path, inode)| {
                (path.clone(), state.inodes.get(inode).map(|i| i.synced.clone()).unwrap_or_default())
            })
            .collect()
    }

    /// A power loss: every file and directory becomes what the disk could hold after
    /// it (see the module doc). Returns how many operations were torn or dropped. The
    /// process using the disk must be gone (its mappings dropped).
    pub fn crash(&self) -> io::Result<usize> {
        let mut state = self.state();
        let state = &mut *state;
        let mut lost = 0;
        for inode in state.inodes.values_mut() {
            let keep = state.rng.gen_range(0..=inode.pending.len());
            let pending = std::mem::take(&mut inode.pending);
            for op in &pending[..keep] {
                apply(&mut inode.synced, op);
            }
            if let Some(FileOp::Write { position, bytes }) = pending.get(keep) {
                let cut = state.rng.gen_range(0..=bytes.len());
                if cut > 0 {
                    apply(
                        &mut inode.synced,
                        &FileOp::Write { position: *position, bytes: bytes[..cut].to_vec() },
                    );
                }
            }
            lost += pending.len() - keep;
        }
        for ops in std::mem::take(&mut state.dir_ops).into_values() {
            let keep = state.rng.gen_range(0..=ops.len());
            for op in &ops[..keep] {
                match op {
                    DirOp::Link(path, inode) => {
                        state.durable_names.insert(path.clone(), *inode);
                    }
                    DirOp::Unlink(path) => {
                        state.durable_names.remove(path);
                    }
                    DirOp::Rename(from, to) => {
                        if let Some(inode) = state.durable_names.remove(from) {
                            state.durable_names.insert(to.clone(), inode);
                        }
                    }
                }
            }
            lost += ops.len() - keep;
        }
        // The page cache is gone: the real files become the durable image.
        for path in state.names.keys() {
            match std::fs::remove_file(path) {
                Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
                _ => {}
            }
        }
        for (path, inode) in &state.durable_names {
            std::fs::write(path, &state.inodes[inode].synced)?;
        }
        state.names = state.durable_names.clone();
        let live: std::collections::BTreeSet<u64> = state.names.values().copied().collect();
        state.inodes.retain(|inode, _| live.contains(inode));
        Ok(lost)
    }

    fn inode_of(state: &State, path: &Path) -> io::Result<u64> {
        state.names.get(path).copied().ok_or_else(|| errno(ENOENT))
    }
}

const ENOENT: i32 = 2;
const EIO: i32 = 5;
const ENOSPC: i32 = 28;

impl Disk for SimDisk {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        let state = self.state();
        Ok(state.names.keys().filter(|path| parent(path) == dir).cloned().collect())
    }

    fn open(&self, path: &Path, create: bool) -> io::Result<File> {
        let mut state = self.state();
        let state = &mut *state;
        if !create {
            Self::inode_of(state, path)?;
            return std::fs::OpenOptions::new().read(true).write(true).open(path);
        }
        let file =
            std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path)?;
        let clock = state.clock_ms;
        match state.names.get(path) {
            Some(inode) => {
                let inode = state.inodes.get_mut(inode).expect("named inodes exist");
                inode.pending.push(FileOp::SetLen(0));
                inode.mtime_ms = clock;
            }
            None => {
                let inode = state.next_inode;
                state.next_inode += 1;
                state.inodes.insert(inode, Inode { mtime_ms: clock, ..Inode::default() });
                state.names.insert(path.to_path_buf(), inode);
                state.dir_ops.entry(parent(path)).or_default().push(DirOp::Link(path.to_path_buf(), inode));
            }
        }
        Ok(file)
    }

    fn write_at(&self, file: &File, path: &Path, bytes: &[u8], position: u64) -> io::Result<()> {
        let mut state = self.state();
        let state = &mut *state;
        let inode = Self::inode_of(state, path)?;
        let fault = Self::draw_fault(state, true);
        let written = match fault {
            Some(Fault::WriteEio | Fault::WriteEnospc) => 0,
            Some(Fault::ShortWrite) => state.rng.gen_range(0..bytes.len().max(1)),
            _ => bytes.len(),
        };
        if written > 0 {
            file.write_all_at(&bytes[..written], position)?;
            let inode = state.inodes.get_mut(&inode).expect("named inodes exist");
            inode.pending.push(FileOp::Write { position, bytes: bytes[..written].to_vec() });
            inode.mtime_ms = state.clock_ms;
        }
        match fault {
            Some(Fault::WriteEio) => Err(errno(EIO)),
            Some(Fault::WriteEnospc | Fault::ShortWrite) => Err(errno(ENOSPC)),
            _ => Ok(()),
        }
    }

    fn sync(&self, _file: &File, path: &Path, _full: bool) -> io::Result<()> {
        let mut state = self.state();
        let state = &mut *state;
        let inode = Self::inode_of(state, path)?;
        let fault = Self::draw_fault(state, false);
        let inode = state.inodes.get_mut(&inode).expect("named inodes exist");
        let pending = std::mem::take(&mut inode.pending);
        if fault.is_some() {
            // Writeback failed: those pages are marked clean without reaching the
            // disk. Reads still see them; no later sync writes them.
            return Err(errno(EIO));
        }
        for op in &pending {
            apply(&mut inode.synced, op);
        }
        Ok(())
    }

    fn set_len(&self, file: &File, path: &Path, len: u64) -> io::Result<()> {
        let mut state = self.state();
        let state = &mut *state;
        let inode = Self::inode_of(state, path)?;
        file.set_len(len)?;
        let inode = state.inodes.get_mut(&inode).expect("named inodes exist");
        inode.pending.push(FileOp::SetLen(len));
        inode.mtime_ms = state.clock_ms;
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.state();
        let state = &mut *state;
        if Self::draw_fault(state, false).is_some() {
            return Err(errno(EIO));
        }
        state.dir_ops.remove(dir);
        state.durable_names.retain(|path, _| parent(path) != dir);
        let current: Vec<(PathBuf, u64)> = state
            .names
            .iter()
            .filter(|(path, _)| parent(path) == dir)
            .map(|(p, i)| (p.clone(), *i))
            .collect();
        state.durable_names.extend(current);
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut state = self.state();
        let state = &mut *state;
        Self::inode_of(state, path)?;
        std::fs::remove_file(path)?;
        state.names.remove(path);
        state.dir_ops.entry(parent(path)).or_default().push(DirOp::Unlink(path.to_path_buf()));
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = self.state();
        let state = &mut *state;
        let inode = Self::inode_of(state, from)?;
        assert_eq!(parent(from), parent(to), "renames stay in one directory");
        std::fs::rename(from, to)?;
        state.names.remove(from);
        state.names.insert(to.to_path_buf(), inode);
        state
            .dir_ops
            .entry(parent(from))
            .or_default()
            .push(DirOp::Rename(from.to_path_buf(), to.to_path_buf()));
        Ok(())
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let state = self.state();
        Self::inode_of(&state, path)?;
        std::fs::read(path)
    }

    fn mtime_ms(&self, path: &Path) -> io::Result<i64> {
        let state = self.state();
        let inode = Self::inode_of(&state, path)?;
        Ok(state.inodes[&inode].mtime_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crash_keeps_synced_bytes_and_may_lose_the_rest() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("disk");
        let disk = SimDisk::new(&dir, 7).unwrap();
        let path = dir.join("a.log");
        let file = disk.open(&path, true).unwrap();
        disk.sync_dir(&dir).unwrap();
        disk.write_at(&file, &path, b"durable", 0).unwrap();
        disk.sync(&file, &path, false).unwrap();
        disk.write_at(&file, &path, b"-maybe", 7).unwrap();
        let unsynced = dir.join("b.log");
        disk.open(&unsynced, true).unwrap();
        assert_eq!(disk.durable_logs(&dir), vec![(path.clone(), b"durable".to_vec())]);
        disk.crash().unwrap();
        let after = std::fs::read(&path).unwrap();
        assert!(after.starts_with(b"durable") && b"durable-maybe".starts_with(&after[..]), "{after:?}");
    }

    #[test]
    fn a_failed_sync_loses_its_bytes_and_the_next_sync_reports_success() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("disk");
        let disk = SimDisk::new(&dir, 1).unwrap();
        let path = dir.join("a.log");
        let file = disk.open(&path, true).unwrap();
        disk.sync_dir(&dir).unwrap();
        disk.write_at(&file, &path, b"lost", 0).unwrap();
        disk.set_faults(1000);
        assert!(disk.sync(&file, &path, false).is_err());
        disk.set_faults(0);
        disk.sync(&file, &path, false).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"lost", "reads still see the page cache");
        assert_eq!(disk.durable_logs(&dir), vec![(path, Vec::new())], "but the disk never got them");
    }
}
