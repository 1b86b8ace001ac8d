//! Simulated disks: what a member wrote survives a crash only if it was
//! synced. Each member has one [`Disk`], holding its WAL directory (through
//! [`SimFs`]) and its backend file (through [`SimBackend`]).
//!
//! A crash keeps, of each WAL file, what was synced plus (when torn writes
//! are on) a random prefix of what was not: a torn last record. Directory
//! changes (creations, renames, removals) survive only once the directory
//! was synced. The backend keeps exactly its last synced image. A sync can be
//! made to fail, as a full or failing disk does; the member must then stop.
//!
//! Handles opened before a crash belong to the dead process: whatever they
//! write afterwards is ignored.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use ketch_wal::{WalFile, WalFs};
use rand::Rng;
use rand::rngs::StdRng;

#[derive(Default)]
struct FileData {
    data: Vec<u8>,
    synced: usize,
}

#[derive(Default)]
struct DiskState {
    /// Process generation: bumped by each crash.
    generation: u64,
    /// File contents by file number.
    files: BTreeMap<u64, FileData>,
    next_file: u64,
    /// Directory entries as the running process sees them, and as synced.
    names: BTreeMap<PathBuf, u64>,
    durable_names: BTreeMap<PathBuf, u64>,
    /// The backend's current and synced images, and the byte ranges written
    /// since the last sync.
    backend: Vec<u8>,
    backend_synced: Vec<u8>,
    backend_dirty: Vec<(usize, usize)>,
    /// Counts down syncs (the WAL's or the backend's); the one that takes
    /// it to zero fails, and the process is then as good as dead: every
    /// later write and sync fails too, until the crash.
    fail_sync_in: u32,
    /// The process dies right after its next backend sync succeeds.
    die_after_backend_sync: bool,
    dead: bool,
    /// Bytes synced, for reports.
    synced_bytes: u64,
}

/// One member's disk.
#[derive(Clone, Default)]
pub struct Disk {
    state: Arc<Mutex<DiskState>>,
}

impl fmt::Debug for Disk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Disk")
    }
}

fn injected() -> io::Error {
    io::Error::other("injected fsync failure")
}

/// Counts a sync down; fails it (and the disk from then on) when due.
fn sync_gate(s: &mut DiskState) -> io::Result<()> {
    if s.dead {
        return Err(injected());
    }
    if s.fail_sync_in > 0 {
        s.fail_sync_in -= 1;
        if s.fail_sync_in == 0 {
            s.dead = true;
            return Err(injected());
        }
    }
    Ok(())
}

impl Disk {
    fn lock(&self) -> MutexGuard<'_, DiskState> {
        self.state.lock().expect("disk lock poisoned")
    }

    /// The WAL's view of this disk, for the current process.
    pub fn fs(&self) -> Arc<SimFs> {
        Arc::new(SimFs { disk: self.clone(), generation: self.lock().generation })
    }

    /// The backend file, for the current process.
    pub fn backend(&self) -> SimBackend {
        SimBackend { disk: self.clone(), generation: self.lock().generation }
    }

    /// Makes the `n`th sync from now fail, and everything after it, as if
    /// the process died right there (0: never).
    pub fn fail_sync_in(&self, n: u32) {
        let mut s = self.lock();
        s.fail_sync_in = n;
        s.die_after_backend_sync = false;
        s.dead = false;
    }

    /// Makes the process die right after its next successful backend sync
    /// (a durable commit, or a snapshot install), before anything else.
    pub fn die_after_backend_sync(&self) {
        self.lock().die_after_backend_sync = true;
    }

    /// The process dies: unsynced data is lost (but for a torn prefix of
    /// each file's unsynced tail when `torn`), and its handles go dead.
    pub fn crash(&self, rng: &mut StdRng, torn: bool) {
        let mut s = self.lock();
        s.generation += 1;
        s.fail_sync_in = 0;
        s.die_after_backend_sync = false;
        s.dead = false;
        s.names = s.durable_names.clone();
        let live: Vec<u64> = s.names.values().copied().collect();
        s.files.retain(|id, _| live.contains(id));
        for f in s.files.values_mut() {
            let unsynced = f.data.len() - f.synced;
            let keep = if torn && unsynced > 0 && rng.random_bool(0.5) { rng.random_range(0..=unsynced) } else { 0 };
            f.data.truncate(f.synced + keep);
            f.synced = f.data.len();
        }
        s.backend = s.backend_synced.clone();
        s.backend_dirty.clear();
    }

    /// Bytes made durable so far.
    pub fn synced_bytes(&self) -> u64 {
        self.lock().synced_bytes
    }
}

/// The WAL directory on a simulated disk.
pub struct SimFs {
    disk: Disk,
    generation: u64,
}

impl SimFs {
    /// The disk, if this handle's process is still alive.
    fn live(&self) -> io::Result<MutexGuard<'_, DiskState>> {
        let s = self.disk.lock();
        if s.generation != self.generation {
            return Err(io::Error::other("the process that opened this file has crashed"));
        }
        Ok(s)
    }
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{}: no such file", path.display()))
}

impl WalFs for SimFs {
    fn create_dir_all(&self, _dir: &Path) -> io::Result<()> {
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let s = self.live()?;
        Ok(s.names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().and_then(|n| n.to_str()).map(str::to_string))
            .collect())
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let s = self.live()?;
        let id = s.names.get(path).ok_or_else(|| not_found(path))?;
        Ok(s.files.get(id).map(|f| f.data.clone()).unwrap_or_default())
    }

    fn create_new(&self, path: &Path) -> io::Result<Box<dyn WalFile>> {
        let mut s = self.live()?;
        if s.names.contains_key(path) {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, path.display().to_string()));
        }
        let id = s.next_file;
        s.next_file += 1;
        s.files.insert(id, FileData::default());
        s.names.insert(path.to_path_buf(), id);
        Ok(Box::new(SimFile { disk: self.disk.clone(), generation: self.generation, id }))
    }

    fn open_append(&self, path: &Path) -> io::Result<(Box<dyn WalFile>, u64)> {
        let s = self.live()?;
        let id = *s.names.get(path).ok_or_else(|| not_found(path))?;
        let len = s.files.get(&id).map_or(0, |f| f.data.len() as u64);
        Ok((Box::new(SimFile { disk: self.disk.clone(), generation: self.generation, id }), len))
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let mut s = self.live()?;
        let id = *s.names.get(path).ok_or_else(|| not_found(path))?;
        if let Some(f) = s.files.get_mut(&id) {
            f.data.truncate(len as usize);
            f.synced = f.data.len();
        }
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = self.live()?;
        let id = s.names.remove(from).ok_or_else(|| not_found(from))?;
        s.names.insert(to.to_path_buf(), id);
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut s = self.live()?;
        s.names.remove(path).ok_or_else(|| not_found(path))?;
        Ok(())
    }

    fn sync_dir(&self, _dir: &Path) -> io::Result<()> {
        let mut s = self.live()?;
        sync_gate(&mut s)?;
        s.durable_names = s.names.clone();
        Ok(())
    }
}

struct SimFile {
    disk: Disk,
    generation: u64,
    id: u64,
}

impl WalFile for SimFile {
    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        let mut s = self.disk.lock();
        if s.generation != self.generation || s.dead {
            return Err(io::Error::other("crashed"));
        }
        if let Some(f) = s.files.get_mut(&self.id) {
            f.data.extend_from_slice(data);
        }
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        let mut s = self.disk.lock();
        if s.generation != self.generation {
            return Err(io::Error::other("crashed"));
        }
        sync_gate(&mut s)?;
        let mut bytes = 0;
        if let Some(f) = s.files.get_mut(&self.id) {
            bytes = (f.data.len() - f.synced) as u64;
            f.synced = f.data.len();
        }
        s.synced_bytes += bytes;
        Ok(())
    }
}

/// The backend file on a simulated disk, as redb's storage backend.
pub struct SimBackend {
    disk: Disk,
    generation: u64,
}

impl fmt::Debug for SimBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SimBackend")
    }
}

impl redb::StorageBackend for SimBackend {
    fn len(&self) -> Result<u64, io::Error> {
        Ok(self.disk.lock().backend.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        let s = self.disk.lock();
        let start = offset as usize;
        let end = start + out.len();
        if end > s.backend.len() {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end of the backend"));
        }
        out.copy_from_slice(&s.backend[start..end]);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        let mut s = self.disk.lock();
        if s.generation != self.generation {
            return Ok(()); // a dead process's write goes nowhere
        }
        let len = len as usize;
        let old = s.backend.len();
        s.backend.resize(len, 0);
        if len > old {
            s.backend_dirty.push((old, len));
        }
        Ok(())
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        let mut s = self.disk.lock();
        if s.generation != self.generation {
            return Ok(());
        }
        sync_gate(&mut s)?;
        let len = s.backend.len();
        let s = &mut *s;
        s.backend_synced.resize(len, 0);
        let mut bytes = 0;
        for (a, b) in s.backend_dirty.drain(..) {
            let b = b.min(len);
            if a < b {
                s.backend_synced[a..b].copy_from_slice(&s.backend[a..b]);
                bytes += (b - a) as u64;
            }
        }
        s.synced_bytes += bytes;
        if s.die_after_backend_sync {
            s.die_after_backend_sync = false;
            s.dead = true;
        }
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        let mut s = self.disk.lock();
        if s.generation != self.generation {
            return Ok(());
        }
        if s.dead {
            return Err(injected());
        }
        let start = offset as usize;
        let end = start + data.len();
        if end > s.backend.len() {
            s.backend.resize(end, 0);
        }
        s.backend[start..end].copy_from_slice(data);
        s.backend_dirty.push((start, end));
        Ok(())
    }
}
