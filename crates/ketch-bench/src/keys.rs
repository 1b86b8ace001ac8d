//! Keys and values as etcd's tool makes them: key number `n` is Go's
//! `binary.PutVarint(n)` (zig-zag varint) written at the start of a zeroed
//! buffer of `--key-size` bytes; values are `--val-size` random bytes, the
//! same for every request.

use anyhow::{Result, bail};
use rand::RngCore;

/// Key `n`: its zig-zag varint in `key_size` zero bytes. The caller checks
/// the size first ([`check_key_size`]); a varint longer than the key is cut.
pub fn varint_key(key_size: usize, n: u64) -> Vec<u8> {
    let mut key = vec![0u8; key_size];
    for (slot, byte) in key.iter_mut().zip(varint(n)) {
        *slot = byte;
    }
    key
}

/// Go's `binary.PutVarint` of `n` (as an int64).
fn varint(n: u64) -> Vec<u8> {
    let x = n as i64;
    let mut ux = ((x << 1) ^ (x >> 63)) as u64;
    let mut out = Vec::with_capacity(10);
    while ux >= 0x80 {
        out.push(ux as u8 | 0x80);
        ux >>= 7;
    }
    out.push(ux as u8);
    out
}

/// Refuses a `--key-size` too small for the varints of a key space of
/// `key_space_size` keys (etcd's tool panics there).
pub fn check_key_size(key_size: usize, key_space_size: u64) -> Result<()> {
    if key_space_size == 0 {
        bail!("expected positive --key-space-size, got (0)");
    }
    let needed = varint(key_space_size - 1).len();
    if key_size < needed {
        bail!("--key-size {key_size} is too small for --key-space-size {key_space_size} (keys need {needed} bytes)");
    }
    Ok(())
}

/// `n` random bytes (etcd's `mustRandBytes`).
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; n];
    rand::rng().fill_bytes(&mut bytes);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_go_varints() {
        // Go: binary.PutVarint(k, 0) -> [0], 1 -> [2], 64 -> [128 1], 499 -> [230 7].
        assert_eq!(varint_key(4, 0), [0, 0, 0, 0]);
        assert_eq!(varint_key(4, 1), [2, 0, 0, 0]);
        assert_eq!(varint_key(4, 64), [128, 1, 0, 0]);
        assert_eq!(varint_key(8, 499), [230, 7, 0, 0, 0, 0, 0, 0]);
        let distinct: std::collections::HashSet<Vec<u8>> = (0..500).map(|n| varint_key(8, n)).collect();
        assert_eq!(distinct.len(), 500);
    }

    #[test]
    fn key_size_must_fit() {
        assert!(check_key_size(1, 64).is_ok());
        assert!(check_key_size(1, 65).is_err());
        assert!(check_key_size(8, 100_000).is_ok());
        assert!(check_key_size(8, 0).is_err());
        assert!(check_key_size(0, 1).is_err());
    }
}
