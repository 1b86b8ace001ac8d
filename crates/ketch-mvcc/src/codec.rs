//! Byte layout of the backend's `kv` table values (Ketch's own format).
//!
//! The table key is the revision `(main, sub)` as a redb `(u64, u64)` tuple, so the
//! table is ordered by revision. The value is:
//!
//! ```text
//! offset  size  field
//! 0       1     flags: bit 0 = tombstone (a delete), other bits zero
//! 1       8     create_revision, i64 little-endian (0 for a tombstone)
//! 9       8     version, i64 little-endian (0 for a tombstone)
//! 17      8     lease, i64 little-endian
//! 25      4     key length n, u32 little-endian
//! 29      n     key bytes
//! 29+n    rest  value bytes
//! ```
//!
//! `mod_revision` is the table key's `main` and is not repeated.

use crate::store::{KeyValue, MvccError};

const HEADER_LEN: usize = 29;
const FLAG_TOMBSTONE: u8 = 1;

/// A decoded `kv` record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub tombstone: bool,
    pub create_revision: i64,
    pub version: i64,
    pub lease: i64,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

pub fn encode_put(kv: &KeyValue) -> Vec<u8> {
    encode(false, kv.create_revision, kv.version, kv.lease, &kv.key, &kv.value)
}

pub fn encode_tombstone(key: &[u8]) -> Vec<u8> {
    encode(true, 0, 0, 0, key, &[])
}

fn encode(tombstone: bool, create: i64, version: i64, lease: i64, key: &[u8], value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + key.len() + value.len());
    out.push(if tombstone { FLAG_TOMBSTONE } else { 0 });
    out.extend_from_slice(&create.to_le_bytes());
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&lease.to_le_bytes());
    let key_len = u32::try_from(key.len()).expect("keys are bounded by the request size limit");
    out.extend_from_slice(&key_len.to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(value);
    out
}

pub fn decode(bytes: &[u8]) -> Result<Record, MvccError> {
    let corrupt = |what: &str| MvccError::Corrupt(format!("kv record: {what}"));
    if bytes.len() < HEADER_LEN {
        return Err(corrupt("shorter than its header"));
    }
    let flags = bytes[0];
    if flags & !FLAG_TOMBSTONE != 0 {
        return Err(corrupt("unknown flags"));
    }
    let i64_at = |at: usize| i64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let key_len = u32::from_le_bytes(bytes[25..29].try_into().expect("4 bytes")) as usize;
    let key_end = HEADER_LEN
        .checked_add(key_len)
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| corrupt("key length past the end"))?;
    Ok(Record {
        tombstone: flags & FLAG_TOMBSTONE != 0,
        create_revision: i64_at(1),
        version: i64_at(9),
        lease: i64_at(17),
        key: bytes[HEADER_LEN..key_end].to_vec(),
        value: bytes[key_end..].to_vec(),
    })
}

/// The bytes etcd's backend holds for a revision, which its `HashKV` hashes:
/// the key is `main` (8 bytes big-endian), `_`, `sub` (8 bytes big-endian), plus
/// `t` for a tombstone; the value is the protobuf encoding of `mvccpb.KeyValue`
/// (fields 1 key, 2 create_revision, 3 mod_revision, 4 version, 5 value,
/// 6 lease; zero fields omitted), with only the key for a tombstone.
pub fn etcd_hash_bytes(main: i64, sub: i64, rec: &Record) -> (Vec<u8>, Vec<u8>) {
    let mut key = Vec::with_capacity(18);
    key.extend_from_slice(&main.to_be_bytes());
    key.push(b'_');
    key.extend_from_slice(&sub.to_be_bytes());
    let mut value = Vec::with_capacity(rec.key.len() + rec.value.len() + 40);
    put_bytes(&mut value, 1, &rec.key);
    if rec.tombstone {
        key.push(b't');
        return (key, value);
    }
    put_varint_field(&mut value, 2, rec.create_revision);
    put_varint_field(&mut value, 3, main);
    put_varint_field(&mut value, 4, rec.version);
    put_bytes(&mut value, 5, &rec.value);
    put_varint_field(&mut value, 6, rec.lease);
    (key, value)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_varint_field(out: &mut Vec<u8>, field: u64, v: i64) {
    if v != 0 {
        put_varint(out, field << 3);
        put_varint(out, v as u64);
    }
}

fn put_bytes(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    if !bytes.is_empty() {
        put_varint(out, (field << 3) | 2);
        put_varint(out, bytes.len() as u64);
        out.extend_from_slice(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let kv = KeyValue {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            create_revision: 2,
            mod_revision: 3,
            version: 2,
            lease: 7,
        };
        let rec = decode(&encode_put(&kv)).unwrap();
        assert_eq!((rec.tombstone, rec.create_revision, rec.version, rec.lease), (false, 2, 2, 7));
        assert_eq!((rec.key.as_slice(), rec.value.as_slice()), (&b"k"[..], &b"v"[..]));
        assert!(decode(&encode_tombstone(b"k")).unwrap().tombstone);
        assert!(decode(&[0u8; 5]).is_err());
    }
}
