//! The durable record of one lease (Ketch's own format).
//!
//! Only three facts about a lease must survive a restart: its ID, the TTL it was
//! granted (after the minimum-TTL raise) and the remaining TTL last written by an
//! applied `LeaseCheckpoint`. Expiry times are deliberately absent: they are read
//! from one member's monotonic clock, mean nothing on another member or after a
//! reboot, and are recomputed from the TTLs when a member is promoted. Attached
//! keys are absent too: every key-value in the store already names its lease, so
//! the caller re-attaches them while it rebuilds its key index, exactly as etcd
//! recovers its lessor's item sets from the MVCC store.
//!
//! A record is exactly [`RECORD_LEN`] = 25 bytes:
//!
//! ```text
//! offset  size  field
//! 0       1     format version, currently 1 (RECORD_VERSION)
//! 1       8     lease ID, i64 little-endian, never 0
//! 9       8     granted TTL in seconds, i64 little-endian, at most MAX_LEASE_TTL
//! 17      8     checkpointed remaining TTL in seconds, i64 little-endian,
//!               0 = no checkpoint (the full granted TTL applies), never negative
//! ```
//!
//! Integers are little-endian like every other Ketch format. The version byte lets
//! a later format be told apart instead of misread; anything that is not exactly
//! 25 bytes of version 1 with the field rules above is refused as corrupt.

use crate::{LeaseError, MAX_LEASE_TTL};

/// Format version written in the first byte of every record.
pub const RECORD_VERSION: u8 = 1;
/// Length in bytes of every record.
pub const RECORD_LEN: usize = 25;

/// The durable facts of one lease, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseRecord {
    /// The lease ID (never 0, etcd's `NoLease`).
    pub id: i64,
    /// The TTL the lease was granted, in seconds, after the minimum-TTL raise.
    pub ttl_secs: i64,
    /// The remaining TTL from the last applied checkpoint, in seconds; 0 when the
    /// lease has no checkpoint (or a renewal cleared it).
    pub remaining_ttl_secs: i64,
}

impl LeaseRecord {
    /// Encodes the record in the layout documented in this module.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(RECORD_LEN);
        out.push(RECORD_VERSION);
        out.extend_from_slice(&self.id.to_le_bytes());
        out.extend_from_slice(&self.ttl_secs.to_le_bytes());
        out.extend_from_slice(&self.remaining_ttl_secs.to_le_bytes());
        out
    }

    /// Decodes and validates a record; any deviation from the layout is
    /// [`LeaseError::Corrupt`], because guessing at a damaged lease could revoke
    /// keys too early or keep them forever.
    pub fn from_bytes(bytes: &[u8]) -> Result<LeaseRecord, LeaseError> {
        let corrupt = |what: &str| LeaseError::Corrupt(format!("lease record: {what}"));
        if bytes.len() != RECORD_LEN {
            return Err(corrupt(&format!("length {} instead of {RECORD_LEN}", bytes.len())));
        }
        if bytes[0] != RECORD_VERSION {
            return Err(corrupt(&format!("unknown format version {}", bytes[0])));
        }
        let field = |at: usize| {
            let mut raw = [0u8; 8];
            raw.copy_from_slice(&bytes[at..at + 8]);
            i64::from_le_bytes(raw)
        };
        let record = LeaseRecord { id: field(1), ttl_secs: field(9), remaining_ttl_secs: field(17) };
        if record.id == 0 {
            return Err(corrupt("lease ID 0"));
        }
        if record.ttl_secs > MAX_LEASE_TTL {
            return Err(corrupt(&format!("TTL {} above the maximum", record.ttl_secs)));
        }
        if record.remaining_ttl_secs < 0 {
            return Err(corrupt(&format!("negative remaining TTL {}", record.remaining_ttl_secs)));
        }
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_as_documented() {
        let bytes = LeaseRecord { id: 0x0102, ttl_secs: 60, remaining_ttl_secs: 7 }.to_bytes();
        let mut want = vec![1u8];
        want.extend_from_slice(&[0x02, 0x01, 0, 0, 0, 0, 0, 0]);
        want.extend_from_slice(&[60, 0, 0, 0, 0, 0, 0, 0]);
        want.extend_from_slice(&[7, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(bytes, want);
        assert_eq!(bytes.len(), RECORD_LEN);
    }

    #[test]
    fn round_trip_including_negative_ids() {
        for id in [1, -1, i64::MIN, i64::MAX] {
            let r = LeaseRecord { id, ttl_secs: MAX_LEASE_TTL, remaining_ttl_secs: 0 };
            assert_eq!(LeaseRecord::from_bytes(&r.to_bytes()), Ok(r));
        }
    }

    #[test]
    fn corrupt_records_are_refused() {
        let good = LeaseRecord { id: 5, ttl_secs: 10, remaining_ttl_secs: 3 }.to_bytes();
        let mut cases: Vec<Vec<u8>> = vec![Vec::new(), good[..24].to_vec(), [good.as_slice(), &[0]].concat()];
        let mut bad_version = good.clone();
        bad_version[0] = 2;
        cases.push(bad_version);
        cases.push(LeaseRecord { id: 0, ttl_secs: 10, remaining_ttl_secs: 0 }.to_bytes());
        cases.push(LeaseRecord { id: 5, ttl_secs: MAX_LEASE_TTL + 1, remaining_ttl_secs: 0 }.to_bytes());
        cases.push(LeaseRecord { id: 5, ttl_secs: 10, remaining_ttl_secs: -1 }.to_bytes());
        for case in cases {
            assert!(matches!(LeaseRecord::from_bytes(&case), Err(LeaseError::Corrupt(_))), "{case:?}");
        }
    }
}
