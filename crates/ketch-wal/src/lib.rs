//! Ketch's write-ahead log: the durable record of the raft log.
//!
//! The WAL is a directory of segment files, appended to in order. It stores three
//! kinds of records, with opaque payloads (the raft layer encodes them):
//!
//! * **entries**, each tagged with its raft log index; an entry at index `i`
//!   replaces every earlier-written entry at `i` or above (raft log truncation);
//! * **hard state** (term, vote, commit); the last one written wins;
//! * **snapshot markers**: "the state machine durably holds everything up to index
//!   `i`"; entries at or below the newest marker are no longer needed.
//!
//! Appends are buffered by the OS until [`Wal::sync`], which calls `fdatasync`;
//! the caller syncs once per batch and acknowledges nothing before it returns.
//!
//! # On-disk format
//!
//! Segment files are named `{seq:016x}-{first_index:016x}.wal`, where `seq` counts
//! segments from 0 and `first_index` is the raft index the first entry written to
//! the segment was expected to have. Each segment starts with an 8-byte magic
//! `KETCHWAL` and a u32 little-endian format version (1), then records:
//!
//! ```text
//! offset  size  field
//! 0       4     n = length of body, u32 little-endian
//! 4       4     crc32c of body, u32 little-endian
//! 8       n     body: kind (u8) | index (u64 LE, entries and snapshots only) | payload
//! ```
//!
//! kinds: 1 = entry, 2 = hard state, 3 = snapshot marker. A new segment starts by
//! repeating the newest snapshot marker and hard state, so older segments can be
//! deleted once the snapshot covers their entries.
//!
//! # Recovery
//!
//! A crash can leave the last record of the last segment torn (partly written, or
//! with a checksum that does not match, and nothing after it). Opening the WAL
//! truncates such a tail. Any other damage (a bad record followed by more data, a
//! bad record in an older segment, a foreign file) is refused with
//! [`WalError::Corrupt`]: silently skipping it could lose acknowledged writes.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

mod fs;

pub use fs::{OsFs, WalFile, WalFs};

const MAGIC: &[u8; 8] = b"KETCHWAL";
const FORMAT_VERSION: u32 = 1;
const SEGMENT_HEADER_LEN: u64 = 12;
const RECORD_HEADER_LEN: usize = 8;
/// Largest record body accepted on read; bigger length fields mean corruption.
/// Entries are bounded by the request size limit (default 1.5 MiB) far below this.
pub const RECORD_BODY_MAX: usize = 256 << 20;
/// Default size after which the WAL moves on to a new segment (etcd's 64 MiB).
pub const SEGMENT_BYTES_DEFAULT: u64 = 64 << 20;

const KIND_ENTRY: u8 = 1;
const KIND_HARD_STATE: u8 = 2;
const KIND_SNAPSHOT: u8 = 3;

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("wal {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("wal {path} is corrupt at byte {offset}: {why}")]
    Corrupt { path: PathBuf, offset: u64, why: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> WalError + '_ {
    move |source| WalError::Io { path: path.to_path_buf(), source }
}

/// A snapshot marker: the state machine durably holds everything up to `index`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotMarker {
    pub index: u64,
    pub payload: Vec<u8>,
}

/// What the WAL held when opened, with truncations applied.
#[derive(Debug, Default)]
pub struct Replay {
    pub snapshot: Option<SnapshotMarker>,
    pub hard_state: Option<Vec<u8>>,
    /// Entries after the newest snapshot marker, in index order, contiguous.
    pub entries: Vec<(u64, Vec<u8>)>,
    /// Bytes cut off a torn tail, if any.
    pub repaired_bytes: u64,
}

#[derive(Debug, Clone)]
pub struct WalOptions {
    pub segment_bytes: u64,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions { segment_bytes: SEGMENT_BYTES_DEFAULT }
    }
}

struct Segment {
    seq: u64,
    first_index: u64,
    path: PathBuf,
}

pub struct Wal {
    fs: Arc<dyn WalFs>,
    dir: PathBuf,
    opts: WalOptions,
    segments: Vec<Segment>,
    file: Box<dyn WalFile>,
    written: u64,
    /// Index the next entry is expected to carry.
    next_index: u64,
    snapshot: Option<SnapshotMarker>,
    /// Segment holding the newest snapshot marker.
    snapshot_seq: u64,
    hard_state: Option<Vec<u8>>,
}

fn segment_name(seq: u64, first_index: u64) -> String {
    format!("{seq:016x}-{first_index:016x}.wal")
}

fn parse_segment_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(".wal")?;
    let (a, b) = stem.split_once('-')?;
    if a.len() != 16 || b.len() != 16 {
        return None;
    }
    Some((u64::from_str_radix(a, 16).ok()?, u64::from_str_radix(b, 16).ok()?))
}

fn sync_dir(fs: &dyn WalFs, dir: &Path) -> Result<(), WalError> {
    fs.sync_dir(dir).map_err(io_err(dir))
}

impl Wal {
    /// True when `dir` holds at least one segment.
    pub fn exists(dir: &Path) -> bool {
        Wal::exists_in(&OsFs, dir)
    }

    /// [`Wal::exists`] on the given file system.
    pub fn exists_in(fs: &dyn WalFs, dir: &Path) -> bool {
        fs.list(dir).map(|names| names.iter().any(|n| parse_segment_name(n).is_some())).unwrap_or(false)
    }

    /// Opens the WAL in `dir` (creating an empty one if there is none), replays it,
    /// and repairs a torn tail.
    pub fn open(dir: &Path, opts: WalOptions) -> Result<(Wal, Replay), WalError> {
        Wal::open_in(Arc::new(OsFs), dir, opts)
    }

    /// [`Wal::open`] on the given file system.
    pub fn open_in(fs: Arc<dyn WalFs>, dir: &Path, opts: WalOptions) -> Result<(Wal, Replay), WalError> {
        fs.create_dir_all(dir).map_err(io_err(dir))?;
        let mut segments = Vec::new();
        let mut names = fs.list(dir).map_err(io_err(dir))?;
        names.sort();
        for name in names {
            let path = dir.join(&name);
            if let Some((seq, first_index)) = parse_segment_name(&name) {
                segments.push(Segment { seq, first_index, path });
            } else if name.ends_with(".tmp") {
                fs.remove(&path).map_err(io_err(&path))?;
            }
        }
        segments.sort_by_key(|s| s.seq);
        for pair in segments.windows(2) {
            if pair[1].seq != pair[0].seq + 1 {
                return Err(WalError::Corrupt {
                    path: pair[1].path.clone(),
                    offset: 0,
                    why: format!("segment {} is missing", pair[0].seq + 1),
                });
            }
        }

        let mut replay = Replay::default();
        let mut snapshot_seq = 0;
        let count = segments.len();
        for (i, seg) in segments.iter().enumerate() {
            let last = i + 1 == count;
            let (records, good_len, file_len) = read_segment(&*fs, &seg.path, last)?;
            for (kind, index, payload) in records {
                match kind {
                    KIND_ENTRY => {
                        let keep = replay.entries.partition_point(|(i, _)| *i < index);
                        replay.entries.truncate(keep);
                        replay.entries.push((index, payload));
                    }
                    KIND_HARD_STATE => replay.hard_state = Some(payload),
                    _ => {
                        replay.entries.retain(|(i, _)| *i > index);
                        replay.snapshot = Some(SnapshotMarker { index, payload });
                        snapshot_seq = seg.seq;
                    }
                }
            }
            if last && good_len < file_len {
                tracing::warn!(path = %seg.path.display(), offset = good_len, cut = file_len - good_len, "repairing torn WAL tail");
                fs.truncate(&seg.path, good_len).map_err(io_err(&seg.path))?;
                replay.repaired_bytes = file_len - good_len;
            }
        }
        let snap_index = replay.snapshot.as_ref().map_or(0, |s| s.index);
        for pair in replay.entries.windows(2) {
            if pair[1].0 != pair[0].0 + 1 {
                return Err(WalError::Corrupt {
                    path: dir.to_path_buf(),
                    offset: 0,
                    why: format!("entry {} is missing", pair[0].0 + 1),
                });
            }
        }
        if let Some((first, _)) = replay.entries.first()
            && *first > snap_index + 1
        {
            return Err(WalError::Corrupt {
                path: dir.to_path_buf(),
                offset: 0,
                why: format!("entries {}..{} are missing", snap_index + 1, first),
            });
        }
        let next_index = replay.entries.last().map_or(snap_index + 1, |(i, _)| i + 1);

        let (file, written) = match segments.last() {
            Some(seg) => fs.open_append(&seg.path).map_err(io_err(&seg.path))?,
            None => {
                let seg = Segment { seq: 0, first_index: next_index, path: dir.join(segment_name(0, next_index)) };
                let mut f = create_segment(&*fs, &seg.path)?;
                // The header is durable before the segment's name is.
                f.sync().map_err(io_err(&seg.path))?;
                sync_dir(&*fs, dir)?;
                segments.push(seg);
                (f, SEGMENT_HEADER_LEN)
            }
        };
        let wal = Wal {
            fs,
            dir: dir.to_path_buf(),
            opts,
            segments,
            file,
            written,
            next_index,
            snapshot: replay.snapshot.clone(),
            snapshot_seq,
            hard_state: replay.hard_state.clone(),
        };
        Ok((wal, replay))
    }

    fn current_path(&self) -> &Path {
        &self.segments.last().expect("the WAL always has a segment").path
    }

    fn write_record(&mut self, kind: u8, index: Option<u64>, payload: &[u8]) -> Result<(), WalError> {
        let mut body = Vec::with_capacity(1 + 8 + payload.len());
        body.push(kind);
        if let Some(i) = index {
            body.extend_from_slice(&i.to_le_bytes());
        }
        body.extend_from_slice(payload);
        let len = u32::try_from(body.len()).ok().filter(|&l| l as usize <= RECORD_BODY_MAX).ok_or_else(|| {
            WalError::Corrupt {
                path: self.current_path().to_path_buf(),
                offset: self.written,
                why: format!("record of {} bytes exceeds the limit", body.len()),
            }
        })?;
        let mut header = [0u8; RECORD_HEADER_LEN];
        header[..4].copy_from_slice(&len.to_le_bytes());
        header[4..].copy_from_slice(&crc32c::crc32c(&body).to_le_bytes());
        let path = self.current_path().to_path_buf();
        self.file.append(&header).map_err(io_err(&path))?;
        self.file.append(&body).map_err(io_err(&path))?;
        self.written += (RECORD_HEADER_LEN + body.len()) as u64;
        Ok(())
    }

    /// Appends an entry at `index`; a lower index than expected truncates the log
    /// from there (the replay applies the same rule).
    pub fn append_entry(&mut self, index: u64, payload: &[u8]) -> Result<(), WalError> {
        self.write_record(KIND_ENTRY, Some(index), payload)?;
        self.next_index = index + 1;
        Ok(())
    }

    pub fn set_hard_state(&mut self, payload: &[u8]) -> Result<(), WalError> {
        self.write_record(KIND_HARD_STATE, None, payload)?;
        self.hard_state = Some(payload.to_vec());
        Ok(())
    }

    /// Records that the state machine durably holds everything up to `index`.
    pub fn mark_snapshot(&mut self, index: u64, payload: &[u8]) -> Result<(), WalError> {
        self.write_record(KIND_SNAPSHOT, Some(index), payload)?;
        self.snapshot = Some(SnapshotMarker { index, payload: payload.to_vec() });
        self.snapshot_seq = self.segments.last().map_or(0, |s| s.seq);
        Ok(())
    }

    /// Makes everything appended so far durable (one `fdatasync`), then starts a
    /// new segment if the current one is full.
    pub fn sync(&mut self) -> Result<(), WalError> {
        let path = self.current_path().to_path_buf();
        self.file.sync().map_err(io_err(&path))?;
        if self.written >= self.opts.segment_bytes {
            self.cut()?;
        }
        Ok(())
    }

    fn cut(&mut self) -> Result<(), WalError> {
        let seq = self.segments.last().map_or(0, |s| s.seq + 1);
        let seg =
            Segment { seq, first_index: self.next_index, path: self.dir.join(segment_name(seq, self.next_index)) };
        let tmp = self.dir.join(format!("{}.tmp", segment_name(seq, self.next_index)));
        self.file = create_segment(&*self.fs, &tmp)?;
        self.written = SEGMENT_HEADER_LEN;
        // Records go to the new file; it gets its final name once they are durable.
        self.segments.push(Segment { seq, first_index: seg.first_index, path: tmp.clone() });
        if let Some(snap) = self.snapshot.clone() {
            self.write_record(KIND_SNAPSHOT, Some(snap.index), &snap.payload)?;
            self.snapshot_seq = seq;
        }
        if let Some(hs) = self.hard_state.clone() {
            self.write_record(KIND_HARD_STATE, None, &hs)?;
        }
        self.file.sync().map_err(io_err(&tmp))?;
        self.fs.rename(&tmp, &seg.path).map_err(io_err(&seg.path))?;
        sync_dir(&*self.fs, &self.dir)?;
        self.segments.last_mut().expect("pushed above").path = seg.path;
        Ok(())
    }

    /// Deletes segments that hold nothing needed any more: every entry in them is
    /// covered by the newest snapshot marker, which lives in a later segment.
    /// Returns how many were removed.
    pub fn purge(&mut self) -> Result<usize, WalError> {
        let Some(snap) = &self.snapshot else { return Ok(0) };
        let mut removable = 0;
        while removable + 1 < self.segments.len() {
            let next = &self.segments[removable + 1];
            if self.segments[removable].seq >= self.snapshot_seq || next.first_index > snap.index + 1 {
                break;
            }
            removable += 1;
        }
        for seg in self.segments.drain(..removable) {
            self.fs.remove(&seg.path).map_err(io_err(&seg.path))?;
        }
        if removable > 0 {
            sync_dir(&*self.fs, &self.dir)?;
        }
        Ok(removable)
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn create_segment(fs: &dyn WalFs, path: &Path) -> Result<Box<dyn WalFile>, WalError> {
    let mut f = fs.create_new(path).map_err(io_err(path))?;
    f.append(MAGIC).map_err(io_err(path))?;
    f.append(&FORMAT_VERSION.to_le_bytes()).map_err(io_err(path))?;
    Ok(f)
}

type Record = (u8, u64, Vec<u8>);

/// Reads one segment. Returns its records, the length of the valid prefix and the
/// file length; only the last segment may have a torn tail.
fn read_segment(fs: &dyn WalFs, path: &Path, last: bool) -> Result<(Vec<Record>, u64, u64), WalError> {
    let data = fs.read(path).map_err(io_err(path))?;
    let file_len = data.len() as u64;
    let corrupt = |offset: usize, why: &str| WalError::Corrupt {
        path: path.to_path_buf(),
        offset: offset as u64,
        why: why.to_string(),
    };
    if data.len() < SEGMENT_HEADER_LEN as usize {
        if last && MAGIC.starts_with(&data[..data.len().min(8)]) {
            // Torn while being created: rewrite the header.
            fs.truncate(path, 0).map_err(io_err(path))?;
            let (mut f, _) = fs.open_append(path).map_err(io_err(path))?;
            f.append(MAGIC)
                .and_then(|_| f.append(&FORMAT_VERSION.to_le_bytes()))
                .and_then(|_| f.sync())
                .map_err(io_err(path))?;
            return Ok((Vec::new(), SEGMENT_HEADER_LEN, SEGMENT_HEADER_LEN));
        }
        return Err(corrupt(0, "segment header is missing"));
    }
    if &data[..8] != MAGIC {
        return Err(corrupt(0, "not a Ketch WAL segment (bad magic)"));
    }
    let version = u32::from_le_bytes(data[8..12].try_into().expect("4 bytes"));
    if version != FORMAT_VERSION {
        return Err(corrupt(8, &format!("unsupported WAL format version {version}")));
    }
    let mut records = Vec::new();
    let mut at = SEGMENT_HEADER_LEN as usize;
    while at < data.len() {
        let rest = data.len() - at;
        if rest < RECORD_HEADER_LEN {
            if last {
                break;
            }
            return Err(corrupt(at, "truncated record header"));
        }
        let len = u32::from_le_bytes(data[at..at + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(data[at + 4..at + 8].try_into().expect("4 bytes"));
        if len > RECORD_BODY_MAX {
            return Err(corrupt(at, "record length beyond the limit"));
        }
        let end = at + RECORD_HEADER_LEN + len;
        if end > data.len() {
            if last {
                break;
            }
            return Err(corrupt(at, "truncated record"));
        }
        let body = &data[at + RECORD_HEADER_LEN..end];
        if crc32c::crc32c(body) != crc {
            if last && end == data.len() {
                break;
            }
            return Err(corrupt(at, "checksum mismatch"));
        }
        let (kind, index, payload) = match body.first() {
            Some(&k @ (KIND_ENTRY | KIND_SNAPSHOT)) if body.len() >= 9 => {
                (k, u64::from_le_bytes(body[1..9].try_into().expect("8 bytes")), body[9..].to_vec())
            }
            Some(&KIND_HARD_STATE) => (KIND_HARD_STATE, 0, body[1..].to_vec()),
            _ => return Err(corrupt(at, "unknown record kind")),
        };
        records.push((kind, index, payload));
        at = end;
    }
    Ok((records, at as u64, file_len))
}
