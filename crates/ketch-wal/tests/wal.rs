//! WAL behaviour through its public API and its on-disk files.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;

use ketch_wal::{Wal, WalError, WalOptions};

fn segments(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    v.sort();
    v
}

#[test]
fn replays_what_was_synced_and_truncates_conflicting_entries() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut wal, replay) = Wal::open(dir.path(), WalOptions::default()).unwrap();
        assert!(replay.entries.is_empty() && replay.hard_state.is_none());
        for i in 1..=5 {
            wal.append_entry(i, format!("e{i}").as_bytes()).unwrap();
        }
        wal.set_hard_state(b"hs1").unwrap();
        // A new leader overwrote entries 4 and 5.
        wal.append_entry(4, b"e4'").unwrap();
        wal.set_hard_state(b"hs2").unwrap();
        wal.sync().unwrap();
    }
    let (_, replay) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    let got: Vec<_> = replay.entries.iter().map(|(i, p)| (*i, String::from_utf8_lossy(p).into_owned())).collect();
    assert_eq!(got, vec![(1, "e1".into()), (2, "e2".into()), (3, "e3".into()), (4, "e4'".into())]);
    assert_eq!(replay.hard_state.as_deref(), Some(&b"hs2"[..]));
}

#[test]
fn torn_tail_is_repaired_but_damage_elsewhere_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut wal, _) = Wal::open(dir.path(), WalOptions::default()).unwrap();
        for i in 1..=3 {
            wal.append_entry(i, &[7u8; 100]).unwrap();
        }
        wal.sync().unwrap();
    }
    let seg = segments(dir.path()).pop().unwrap();
    let full = fs::metadata(&seg).unwrap().len();
    // Tear the last record in half.
    OpenOptions::new().write(true).open(&seg).unwrap().set_len(full - 50).unwrap();
    let (_, replay) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    assert_eq!(replay.entries.len(), 2);
    assert!(replay.repaired_bytes > 0);

    // Flip a byte inside the first record: there is valid data after it.
    let mut bytes = fs::read(&seg).unwrap();
    bytes[40] ^= 0xff;
    fs::write(&seg, &bytes).unwrap();
    match Wal::open(dir.path(), WalOptions::default()) {
        Err(WalError::Corrupt { why, .. }) => assert!(why.contains("checksum")),
        other => panic!("expected corruption, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn foreign_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut f = fs::File::create(dir.path().join(format!("{:016x}-{:016x}.wal", 0, 1))).unwrap();
    f.write_all(b"this is not a ketch wal at all").unwrap();
    assert!(matches!(Wal::open(dir.path(), WalOptions::default()), Err(WalError::Corrupt { .. })));
}

#[test]
fn segments_rotate_and_purge_after_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let opts = WalOptions { segment_bytes: 4096 };
    {
        let (mut wal, _) = Wal::open(dir.path(), opts.clone()).unwrap();
        for i in 1..=100 {
            wal.append_entry(i, &[1u8; 200]).unwrap();
            wal.set_hard_state(format!("commit {i}").as_bytes()).unwrap();
            wal.sync().unwrap();
        }
        assert!(wal.segment_count() > 3);
        wal.mark_snapshot(90, b"snap").unwrap();
        wal.sync().unwrap();
        let before = wal.segment_count();
        assert!(wal.purge().unwrap() > 0);
        assert!(wal.segment_count() < before);
        for i in 101..=110 {
            wal.append_entry(i, &[2u8; 200]).unwrap();
        }
        wal.sync().unwrap();
    }
    let (_, replay) = Wal::open(dir.path(), opts).unwrap();
    assert_eq!(replay.snapshot.as_ref().map(|s| s.index), Some(90));
    let idx: Vec<u64> = replay.entries.iter().map(|(i, _)| *i).collect();
    assert_eq!(idx, (91..=110).collect::<Vec<_>>());
    assert_eq!(replay.hard_state.as_deref(), Some(&b"commit 100"[..]));
}
