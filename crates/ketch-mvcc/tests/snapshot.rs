//! A store exported and installed into another store holds the same history
//! (equal HashKV, equal reads at every revision), keeps the target's local meta
//! keys, and a bad snapshot leaves the target untouched.

use ketch_mvcc::{MvccError, RangeEnd, RangeOptions, SnapshotRecord, SnapshotTable, Store};

fn write(store: &Store, n: usize, seed: usize) {
    for i in 0..n {
        let mut batch = store.batch().unwrap();
        {
            let mut t = batch.txn();
            let key = format!("k{:03}", (i * 7 + seed) % 50);
            if i % 5 == 4 {
                t.delete_range(key.as_bytes(), &RangeEnd::Single).unwrap();
            } else {
                t.put(key.as_bytes(), format!("v{i}-{seed}").as_bytes(), 0).unwrap();
            }
            t.end();
        }
        if i == n / 2 {
            let rev = batch.rev();
            batch.compact(rev / 2).unwrap();
        }
        batch.set_lease_record(i as i64 % 3 + 1, Some(b"lease")).unwrap();
        batch.commit(&[("applied", &(i as u64).to_le_bytes()), ("member_id", b"source")], i % 10 == 0).unwrap();
    }
}

fn export_all(store: &Store) -> Vec<Vec<SnapshotRecord>> {
    let mut chunks = Vec::new();
    store
        .export(256, &["member_id"], |c| {
            chunks.push(c);
            true
        })
        .unwrap();
    chunks
}

#[test]
fn installed_store_has_the_same_history() {
    let dir = tempfile::tempdir().unwrap();
    let source = Store::open(&dir.path().join("a.redb")).unwrap();
    write(&source, 300, 1);
    let target = Store::open(&dir.path().join("b.redb")).unwrap();
    write(&target, 40, 2);
    target.batch().unwrap().commit(&[("member_id", b"target")], true).unwrap();

    let chunks = export_all(&source);
    assert!(chunks.len() > 5, "chunks are bounded: {}", chunks.len());
    let mut it = chunks.into_iter();
    target.install(&["member_id"], || Ok(it.next())).unwrap();

    assert_eq!(target.current_revision(), source.current_revision());
    assert_eq!(target.compact_revision(), source.compact_revision());
    let (a, b) = (source.read().unwrap(), target.read().unwrap());
    assert_eq!(a.hash_kv(0).unwrap(), b.hash_kv(0).unwrap());
    for rev in source.compact_revision()..=source.current_revision() {
        let opts = RangeOptions { rev, ..Default::default() };
        assert_eq!(
            a.range(b"", &RangeEnd::Unbounded, opts).unwrap(),
            b.range(b"", &RangeEnd::Unbounded, opts).unwrap(),
            "rev {rev}"
        );
    }
    drop((a, b));
    assert_eq!(target.meta("member_id").unwrap().as_deref(), Some(&b"target"[..]));
    assert_eq!(target.meta("applied").unwrap(), source.meta("applied").unwrap());
    assert_eq!(target.lease_records().unwrap(), source.lease_records().unwrap());

    // Reopening finds the installed store.
    let rev = target.current_revision();
    drop(target);
    let reopened = Store::open(&dir.path().join("b.redb")).unwrap();
    assert_eq!(reopened.current_revision(), rev);
}

#[test]
fn a_failed_install_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let source = Store::open(&dir.path().join("a.redb")).unwrap();
    write(&source, 50, 1);
    let target = Store::open(&dir.path().join("b.redb")).unwrap();
    write(&target, 20, 2);
    let before = target.read().unwrap().hash_kv(0).unwrap();

    // The source fails half-way.
    let mut chunks = export_all(&source).into_iter();
    let mut n = 0;
    let err = target
        .install(&[], || {
            n += 1;
            if n == 3 { Err(MvccError::Snapshot("connection lost".into())) } else { Ok(chunks.next()) }
        })
        .unwrap_err();
    assert!(err.to_string().contains("connection lost"), "{err}");
    assert_eq!(target.read().unwrap().hash_kv(0).unwrap(), before);

    // A record with a malformed key is refused.
    let bad = vec![SnapshotRecord { table: SnapshotTable::Kv, key: vec![1, 2, 3], value: vec![] }];
    let mut once = Some(bad);
    let err = target.install(&[], || Ok(once.take())).unwrap_err();
    assert!(err.to_string().contains("16 bytes"), "{err}");
    assert_eq!(target.read().unwrap().hash_kv(0).unwrap(), before);

    // So is a snapshot without the format marker.
    let mut none: Option<Vec<SnapshotRecord>> = None;
    assert!(target.install(&[], || Ok(none.take())).is_err());
    assert_eq!(target.read().unwrap().hash_kv(0).unwrap(), before);
}
