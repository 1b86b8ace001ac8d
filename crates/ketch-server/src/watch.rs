//! The watch hub: how applied changes reach watchers.
//!
//! After each apply batch commits, the raft loop publishes the batch's events,
//! one message per revision, on a bounded broadcast channel. Each watch stream
//! subscribes once and keeps, per watcher, the next revision it owes the client.
//! A watcher is *synced* when that revision is the next one to be published; it
//! is then served straight from the broadcast. Any watcher behind (it started in
//! the past, or its stream fell more than [`WATCH_BROADCAST_REVISIONS_MAX`]
//! revisions behind and the channel dropped messages for it) is caught up from
//! the MVCC history instead, in bounded reads, and rejoins the broadcast.
//!
//! So writers never wait for watchers (a broadcast send never blocks), memory is
//! bounded by the channel and each stream's outgoing queue whatever clients do,
//! and no event is lost or repeated: history holds every revision not compacted,
//! and a watcher that falls behind the compaction point is canceled with etcd's
//! compaction response.

use std::sync::Arc;

use ketch_mvcc::{Event, EventKind, RangeEnd};
use tokio::sync::broadcast;

/// Revisions the broadcast keeps for streams that are momentarily behind; a
/// stream further behind catches up from history.
pub const WATCH_BROADCAST_REVISIONS_MAX: usize = 256;

/// The events of one revision (all writes of one request).
#[derive(Debug)]
pub struct RevisionEvents {
    pub rev: i64,
    pub events: Vec<Event>,
}

pub struct WatchHub {
    tx: broadcast::Sender<Arc<RevisionEvents>>,
}

impl Default for WatchHub {
    fn default() -> Self {
        WatchHub { tx: broadcast::channel(WATCH_BROADCAST_REVISIONS_MAX).0 }
    }
}

impl WatchHub {
    /// Publishes a committed batch's events (in revision order).
    pub fn publish(&self, events: Vec<Event>) {
        if events.is_empty() || self.tx.receiver_count() == 0 {
            return;
        }
        let mut current: Option<RevisionEvents> = None;
        for ev in events {
            let rev = ev.kv.mod_revision;
            match &mut current {
                Some(batch) if batch.rev == rev => batch.events.push(ev),
                _ => {
                    if let Some(done) = current.take() {
                        let _ = self.tx.send(Arc::new(done));
                    }
                    current = Some(RevisionEvents { rev, events: vec![ev] });
                }
            }
        }
        if let Some(done) = current {
            let _ = self.tx.send(Arc::new(done));
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<RevisionEvents>> {
        self.tx.subscribe()
    }
}

/// The keys a watcher covers, with etcd's conventions: an empty key means
/// `"\0"`, an empty end one key, an end of `"\0"` every key from `key` on.
#[derive(Debug, Clone)]
pub struct KeyRange {
    key: Vec<u8>,
    end: RangeEnd,
}

impl KeyRange {
    pub fn new(key: &[u8], range_end: &[u8]) -> KeyRange {
        let key = if key.is_empty() { vec![0] } else { key.to_vec() };
        KeyRange { key, end: RangeEnd::from_etcd(range_end) }
    }

    /// The one key watched, when the range is a single key.
    pub fn single_key(&self) -> Option<&[u8]> {
        matches!(self.end, RangeEnd::Single).then_some(self.key.as_slice())
    }

    pub fn contains(&self, k: &[u8]) -> bool {
        match &self.end {
            RangeEnd::Single => k == self.key.as_slice(),
            RangeEnd::Unbounded => k >= self.key.as_slice(),
            RangeEnd::Before(end) => k >= self.key.as_slice() && k < end.as_slice(),
        }
    }
}

/// What a watcher wants to see.
#[derive(Debug, Clone)]
pub struct Filter {
    pub range: KeyRange,
    pub no_put: bool,
    pub no_delete: bool,
}

impl Filter {
    pub fn wants(&self, ev: &Event) -> bool {
        let kind_ok = match ev.kind {
            EventKind::Put => !self.no_put,
            EventKind::Delete => !self.no_delete,
        };
        kind_ok && self.range.contains(&ev.kv.key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ketch_mvcc::KeyValue;

    fn put(key: &[u8], rev: i64) -> Event {
        Event { kind: EventKind::Put, kv: KeyValue { key: key.to_vec(), mod_revision: rev, ..Default::default() } }
    }

    #[test]
    fn ranges_follow_etcd_conventions() {
        assert!(KeyRange::new(b"", b"").contains(b"\0"));
        assert!(KeyRange::new(b"a", b"\0").contains(b"zzz"));
        assert!(!KeyRange::new(b"a", b"b").contains(b"b"));
        assert!(KeyRange::new(b"a", b"b").contains(b"a\xff"));
    }

    #[test]
    fn one_message_per_revision() {
        let hub = WatchHub::default();
        let mut rx = hub.subscribe();
        hub.publish(vec![put(b"a", 2), put(b"b", 2), put(b"a", 3)]);
        let first = rx.try_recv().unwrap();
        assert_eq!((first.rev, first.events.len()), (2, 2));
        assert_eq!(rx.try_recv().unwrap().rev, 3);
    }
}
