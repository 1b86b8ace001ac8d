//! Simulated watchers: each follows every key of the workload through one
//! member at a time, the way a watch stream is fed (the member's watch hub
//! broadcast, and its MVCC history to catch up), and resumes on another
//! member from the last revision it received plus one when its member
//! crashes. What it receives is recorded for `ketch-check`'s watch checker.

use std::sync::Arc;

use ketch_check::history::{Event, KeyRange, KeyValue};
use ketch_check::watch::{WatchResponse, WatchSpec, WatchStream, Watcher};
use ketch_mvcc::{Event as MvccEvent, EventKind};
use ketch_server::member::Member;
use ketch_server::watch::RevisionEvents;
use tokio::sync::broadcast::{self, error::TryRecvError};

/// Events read from history per catch-up step (the member's own limit).
const CATCH_UP_EVENTS: usize = 1000;

pub fn event(e: &MvccEvent) -> Event {
    let kv = &e.kv;
    match e.kind {
        EventKind::Put => Event::put(
            KeyValue::new(kv.key.clone(), kv.value.clone(), kv.create_revision, kv.mod_revision, kv.version)
                .with_lease(kv.lease),
            None,
        ),
        EventKind::Delete => Event::delete(kv.key.clone(), kv.mod_revision, None),
    }
}

pub struct SimWatcher {
    prefix: Vec<u8>,
    /// The member the current stream is on.
    pub member: Option<usize>,
    rx: Option<broadcast::Receiver<Arc<RevisionEvents>>>,
    /// The next revision this stream wants (0: not started).
    pub next_rev: i64,
    /// Where a new stream resumes: the last delivered event's revision plus
    /// one, as etcd's client does (revisions with no event for this watcher
    /// are not reported to it).
    resume_rev: i64,
    pub record: Watcher,
}

impl SimWatcher {
    pub fn new(prefix: &[u8]) -> SimWatcher {
        SimWatcher {
            prefix: prefix.to_vec(),
            member: None,
            rx: None,
            next_rev: 0,
            resume_rev: 0,
            record: Watcher { spec: WatchSpec::new(KeyRange::prefix(prefix.to_vec())), streams: Vec::new() },
        }
    }

    /// Responses received so far.
    pub fn responses(&self) -> usize {
        self.record.streams.iter().map(|s| s.responses.len()).sum()
    }

    /// The current stream broke (its member crashed).
    pub fn broken(&mut self) {
        self.member = None;
        self.rx = None;
    }

    /// Opens a stream on member `i`: from the current revision on for the
    /// first one, else from where the last one stopped.
    pub fn open(&mut self, i: usize, m: &Member) {
        // Subscribe before reading history, so nothing falls between them.
        let rx = m.watch_hub().subscribe();
        let current = m.store().current_revision();
        let start_revision = self.resume_rev;
        if self.resume_rev == 0 {
            self.resume_rev = current + 1;
        }
        self.next_rev = self.resume_rev;
        let created = WatchResponse { revision: current, created: true, ..WatchResponse::default() };
        self.record.streams.push(WatchStream { start_revision, responses: vec![created] });
        self.member = Some(i);
        self.rx = Some(rx);
        self.catch_up(m);
    }

    fn push(&mut self, revision: i64, events: Vec<Event>) {
        if let Some(last) = events.last() {
            self.resume_rev = last.kv.mod_revision + 1;
        }
        if let Some(stream) = self.record.streams.last_mut() {
            stream.responses.push(WatchResponse::events(revision, events));
        }
    }

    /// Sends what the member's history holds from `next_rev` on.
    fn catch_up(&mut self, m: &Member) {
        loop {
            let current = m.store().current_revision();
            if self.next_rev > current {
                return;
            }
            let read = m.store().read().and_then(|view| view.events(self.next_rev, current, CATCH_UP_EVENTS));
            let Ok((events, last)) = read else {
                self.broken();
                return;
            };
            let events: Vec<Event> = events.iter().filter(|e| e.kv.key.starts_with(&self.prefix)).map(event).collect();
            if !events.is_empty() {
                self.push(current, events);
            }
            self.next_rev = last + 1;
        }
    }

    /// Takes what the member has published since the last poll.
    pub fn poll(&mut self, m: &Member) {
        loop {
            let Some(rx) = &mut self.rx else { return };
            match rx.try_recv() {
                Ok(batch) if batch.rev < self.next_rev => {}
                Ok(batch) => {
                    if batch.rev > self.next_rev {
                        // Not expected from a hub that publishes every
                        // revision in order; history fills any gap.
                        self.catch_up(m);
                        if batch.rev < self.next_rev {
                            continue;
                        }
                    }
                    let events: Vec<Event> =
                        batch.events.iter().filter(|e| e.kv.key.starts_with(&self.prefix)).map(event).collect();
                    if !events.is_empty() {
                        self.push(batch.rev, events);
                    }
                    self.next_rev = batch.rev + 1;
                }
                Err(TryRecvError::Lagged(_)) => self.catch_up(m),
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Closed) => {
                    self.broken();
                    return;
                }
            }
        }
    }
}
