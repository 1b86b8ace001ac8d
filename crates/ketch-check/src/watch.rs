//! Watch guarantees, as etcd documents them (`learning/api_guarantees`) and its
//! robustness tests validate them (`tests/robustness/validate/watch.go`).
//!
//! A [`Watcher`] is one logical watch: its [`WatchSpec`] (key range, filters,
//! `prev_kv`) and one [`WatchStream`] per attempt, each with the start revision
//! it asked for and the responses it received, in order. A client that loses
//! its stream resumes with a new attempt from the last revision it received +1.
//!
//! [`check_watch`] checks one watcher, against a reference [`EventLog`] when
//! there is one (a member's MVCC history, a replay of the WAL-persisted
//! requests, or [`crate::linearizability::Linearization::event_log`]):
//!
//! * **Ordered**: revisions never decrease along a stream; events of one
//!   revision come in sub-revision order (the reference's order).
//! * **Unique**: no event (revision, key) is delivered twice by one stream.
//! * **Reliable**: every reference event in the watched range that passes the
//!   filters, from the start revision up to the last revision the stream is
//!   known to have reached (its last event, or a later progress notification),
//!   was delivered, and nothing else was (no event that did not happen, none
//!   outside the range or filters, none before the start).
//! * **Atomic**: all events of a revision arrive in one response (fragmented
//!   responses, `fragment = true` until the last piece, are joined first).
//! * **prev_kv**: when asked for, it is the pair at the previous revision
//!   (absence for a creation); it may be missing only when that revision is
//!   compacted. Without a reference, a put of version 1 must have no `prev_kv`
//!   and a later version must have one of the previous version, and (without
//!   filters) it must equal the last event the stream saw for that key.
//! * **Bookmarkable**: after a progress notification at revision `r`, no event
//!   at or below `r` arrives.
//! * **Resumable**: each attempt is checked from its own start, and an attempt
//!   that starts past the previous one's last revision +1 is a gap; events
//!   delivered again by an attempt that started earlier must be identical.
//! * **Compaction**: a stream may be canceled for compaction only when the
//!   revision it needed next is below the reported compaction revision, which
//!   must not exceed the reference's.
//! * **Shape**: field combinations no store produces (a put whose version
//!   does not fit its revisions, a delete carrying a value, an event above its
//!   response's header revision, a `prev_kv` that is not the previous version).
//!
//! [`check_watchers`] adds agreement across watchers: two watchers never see
//! different events for one (revision, key), and an event seen by any watcher
//! must reach every other watcher whose range, filters and window cover it.
//! That last rule finds gaps even without a reference.
//!
//! Limits: a stream with start revision 0 ("from now") starts after its
//! `created` response's header revision; without that response the checker
//! starts at its first event, which cannot see a gap before it. Events above the
//! reference's `last_revision` are checked only for order, uniqueness and shape.
//! Watches are not linearizable in etcd; nothing here compares watch timing with
//! KV operations.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use crate::history::{Bytes, Event, EventKind, KeyRange, KeyValue, Request};
use crate::model::Store;

/// The reference sequence of events a store emitted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventLog {
    /// Every event with revision in `[first_revision, last_revision]`, in
    /// revision and sub-revision order. `prev_kv` may be absent; it is then
    /// derived from the previous event of the key when the log has one.
    pub events: Vec<Event>,
    /// The first revision the log covers.
    pub first_revision: i64,
    /// The last revision the log covers (the store's revision at its end).
    pub last_revision: i64,
    /// The store's compaction revision (0 if never compacted): `prev_kv`s at or
    /// below it may be missing, and watches needing a revision below it may be
    /// canceled.
    pub compacted_revision: i64,
}

impl EventLog {
    /// The events of `store` after revision `after`.
    pub fn from_store(store: &Store, after: i64) -> EventLog {
        EventLog {
            events: store.events_after(after),
            first_revision: after + 1,
            last_revision: store.revision(),
            compacted_revision: store.compacted_revision(),
        }
    }

    /// Applies `requests` in order to `store` (errors are skipped, as a member
    /// applying its log skips failed requests) and returns the events they
    /// caused: the reference for a replay of the requests persisted in a WAL.
    pub fn replay<'a>(mut store: Store, requests: impl IntoIterator<Item = &'a Request>) -> EventLog {
        let after = store.revision();
        for request in requests {
            let _ = store.apply(request);
        }
        EventLog::from_store(&store, after)
    }

    /// Checks the log's own shape: events in revision order within the covered
    /// range, and every covered revision present (a revision exists only
    /// because something changed). Returns the first problem.
    pub fn validate(&self) -> Result<(), String> {
        let mut expected = self.first_revision;
        for (i, event) in self.events.iter().enumerate() {
            let revision = event.revision();
            if revision < self.first_revision || revision > self.last_revision {
                return Err(format!("event {i} at revision {revision} is outside the log's range"));
            }
            if revision == expected {
                expected += 1;
            } else if revision > expected {
                return Err(format!("revision {expected} has no events (skipped)"));
            } else if revision + 1 != expected {
                return Err(format!("event {i} at revision {revision} is out of order"));
            }
        }
        if expected <= self.last_revision {
            return Err(format!("revision {expected} has no events (skipped)"));
        }
        Ok(())
    }

    /// Every event with its `prev_kv`: the recorded one, else the previous event
    /// of its key in the log (`None` when there is no earlier event: unknown).
    fn with_prev(&self) -> Vec<(&Event, Option<Option<KeyValue>>)> {
        let mut last: HashMap<&[u8], &Event> = HashMap::new();
        let mut out = Vec::with_capacity(self.events.len());
        for event in &self.events {
            let prev = match (&event.prev_kv, last.get(event.kv.key.as_slice())) {
                (Some(prev), _) => Some(Some(prev.clone())),
                (None, Some(before)) => Some((before.kind == EventKind::Put).then(|| before.kv.clone())),
                (None, None) if event.kind == EventKind::Put && event.kv.version == 1 => Some(None),
                (None, None) => None,
            };
            last.insert(&event.kv.key, event);
            out.push((event, prev));
        }
        out
    }
}

/// What a watcher asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchSpec {
    /// Keys watched (etcd's range convention; a watch on an empty key is `"\0"`).
    pub range: KeyRange,
    /// Whether events carry the previous pair.
    pub prev_kv: bool,
    /// `NOPUT`: put events are filtered out.
    pub filter_put: bool,
    /// `NODELETE`: delete events are filtered out.
    pub filter_delete: bool,
}

impl WatchSpec {
    /// A watch on `range` without filters or `prev_kv`.
    pub fn new(range: KeyRange) -> WatchSpec {
        WatchSpec { range, prev_kv: false, filter_put: false, filter_delete: false }
    }

    /// Whether the watcher should receive `event`.
    pub fn accepts(&self, event: &Event) -> bool {
        let filtered = match event.kind {
            EventKind::Put => self.filter_put,
            EventKind::Delete => self.filter_delete,
        };
        !filtered && self.range.contains(&event.kv.key)
    }
}

/// One response on a watch stream (`WatchResponse`).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct WatchResponse {
    /// `header.revision`.
    pub revision: i64,
    /// The creation acknowledgement.
    pub created: bool,
    /// The watch was canceled.
    pub canceled: bool,
    /// Set (with `canceled`) when the watch needed a compacted revision.
    pub compact_revision: i64,
    /// More pieces of this response follow.
    pub fragment: bool,
    /// The events.
    pub events: Vec<Event>,
}

impl WatchResponse {
    /// A response carrying `events` at header revision `revision`.
    pub fn events(revision: i64, events: Vec<Event>) -> WatchResponse {
        WatchResponse { revision, events, ..WatchResponse::default() }
    }

    /// Whether this is a progress notification (clientv3 `IsProgressNotify`):
    /// everything up to `revision` has been delivered.
    pub fn is_progress_notify(&self) -> bool {
        self.events.is_empty()
            && !self.created
            && !self.canceled
            && !self.fragment
            && self.compact_revision == 0
            && self.revision != 0
    }
}

/// One attempt of a watcher: what it asked to start from and what it got.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct WatchStream {
    /// The requested start revision; 0 means "after the current revision".
    pub start_revision: i64,
    /// Responses in arrival order.
    pub responses: Vec<WatchResponse>,
}

/// A logical watcher: its spec and its attempts, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Watcher {
    /// What it watches.
    pub spec: WatchSpec,
    /// Its attempts, in order; each after the previous one broke.
    pub streams: Vec<WatchStream>,
}

/// A broken watch guarantee, located by watcher, stream and response index.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WatchViolation {
    /// Index of the watcher (0 for [`check_watch`]).
    pub watcher: usize,
    /// Index of the stream (attempt) in the watcher.
    pub stream: usize,
    /// Index of the response in the stream, when one is at fault.
    pub response: Option<usize>,
    /// What is wrong.
    pub kind: WatchViolationKind,
}

/// The kinds of [`WatchViolation`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum WatchViolationKind {
    /// Ordered: an event's revision is below an earlier one's.
    OutOfOrder {
        /// The event's revision.
        revision: i64,
        /// The earlier, higher revision.
        after: i64,
    },
    /// Ordered: events of one revision in a different order than the store's
    /// sub-revisions.
    SubRevisionOrder {
        /// The revision.
        revision: i64,
        /// The key out of place.
        key: Vec<u8>,
    },
    /// Unique: the same (revision, key) delivered again.
    Duplicate {
        /// The revision.
        revision: i64,
        /// The key.
        key: Vec<u8>,
    },
    /// Reliable: an event that should have arrived did not.
    Missing {
        /// The missing event (without `prev_kv`).
        event: Event,
    },
    /// An event that should not have arrived.
    Unexpected {
        /// The event.
        event: Event,
        /// Why it should not have.
        reason: String,
    },
    /// An event whose content differs from the store's.
    Mismatch {
        /// The store's event.
        expected: Event,
        /// The delivered one.
        received: Event,
    },
    /// A wrong `prev_kv`.
    WrongPrevKv {
        /// The revision.
        revision: i64,
        /// The key.
        key: Vec<u8>,
        /// The correct previous pair (`None`: the key was absent).
        expected: Option<KeyValue>,
        /// The delivered one.
        received: Option<KeyValue>,
    },
    /// Atomic: one revision's events spread over several responses.
    Split {
        /// The revision.
        revision: i64,
        /// The response where it first appeared.
        first_response: usize,
    },
    /// An event that cannot be right whatever happened (fields inconsistent).
    Malformed {
        /// The event.
        event: Event,
        /// What is inconsistent.
        reason: String,
    },
    /// Bookmarkable: an event at or below a progress notification's revision
    /// arrived after it.
    AfterProgress {
        /// The event's revision.
        revision: i64,
        /// The progress notification's revision.
        progress: i64,
    },
    /// A compaction cancellation that cannot be right.
    BadCompaction {
        /// The reported compaction revision.
        compact_revision: i64,
        /// Why it is wrong.
        reason: String,
    },
    /// Resumable: an attempt started past the previous one's last revision + 1.
    ResumeGap {
        /// Where it should have started at the latest.
        expected_start: i64,
        /// Where it started.
        start_revision: i64,
    },
    /// Two watchers (or attempts) saw different events for one (revision, key).
    Disagreement {
        /// The other watcher's version of the event.
        first: Event,
        /// This one's.
        second: Event,
    },
}

impl fmt::Display for WatchViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "watcher {} stream {}", self.watcher, self.stream)?;
        if let Some(response) = self.response {
            write!(f, " response {response}")?;
        }
        write!(f, ": ")?;
        match &self.kind {
            WatchViolationKind::OutOfOrder { revision, after } => {
                write!(f, "out of order: revision {revision} after {after}")
            }
            WatchViolationKind::SubRevisionOrder { revision, key } => {
                write!(f, "revision {revision}: key {} out of sub-revision order", Bytes(key))
            }
            WatchViolationKind::Duplicate { revision, key } => {
                write!(f, "duplicate event: revision {revision} key {}", Bytes(key))
            }
            WatchViolationKind::Missing { event } => write!(f, "missing event (gap): {event}"),
            WatchViolationKind::Unexpected { event, reason } => write!(f, "unexpected event {event}: {reason}"),
            WatchViolationKind::Mismatch { expected, received } => {
                write!(f, "wrong event: expected {expected}, received {received}")
            }
            WatchViolationKind::WrongPrevKv { revision, key, expected, received } => write!(
                f,
                "wrong prev_kv at revision {revision} key {}: expected {}, received {}",
                Bytes(key),
                show(expected),
                show(received)
            ),
            WatchViolationKind::Split { revision, first_response } => {
                write!(f, "revision {revision} split across responses (first in response {first_response})")
            }
            WatchViolationKind::Malformed { event, reason } => write!(f, "malformed event {event}: {reason}"),
            WatchViolationKind::AfterProgress { revision, progress } => {
                write!(f, "event at revision {revision} after a progress notification at {progress}")
            }
            WatchViolationKind::BadCompaction { compact_revision, reason } => {
                write!(f, "canceled for compaction at {compact_revision}: {reason}")
            }
            WatchViolationKind::ResumeGap { expected_start, start_revision } => {
                write!(f, "resumed at revision {start_revision}, after the last delivered + 1 = {expected_start}")
            }
            WatchViolationKind::Disagreement { first, second } => {
                write!(f, "watchers disagree: {first} vs {second}")
            }
        }
    }
}

fn show(kv: &Option<KeyValue>) -> String {
    kv.as_ref().map_or_else(|| "none".to_string(), KeyValue::to_string)
}

/// Checks one watcher; see the module documentation.
#[must_use]
pub fn check_watch(watcher: &Watcher, reference: Option<&EventLog>) -> Vec<WatchViolation> {
    let mut violations = Vec::new();
    let reference = reference.map(Reference::new);
    let mut delivered: HashMap<(i64, Vec<u8>), Event> = HashMap::new();
    let mut last_reached: Option<i64> = None;
    for (index, stream) in watcher.streams.iter().enumerate() {
        let mut report = |response: Option<usize>, kind| {
            violations.push(WatchViolation { watcher: 0, stream: index, response, kind });
        };
        let summary = check_stream(&watcher.spec, stream, reference.as_ref(), &mut report);
        if let (Some(previous), Some(start)) = (last_reached, summary.start)
            && start > previous + 1
        {
            report(None, WatchViolationKind::ResumeGap { expected_start: previous + 1, start_revision: start });
        }
        for (response, event) in summary.events {
            let key = (event.revision(), event.kv.key.clone());
            match delivered.get(&key) {
                Some(first) if !same_event(first, event) => report(
                    Some(response),
                    WatchViolationKind::Disagreement { first: first.clone(), second: event.clone() },
                ),
                Some(_) => {}
                None => {
                    delivered.insert(key, event.clone());
                }
            }
        }
        if summary.reached.is_some() {
            last_reached = summary.reached;
        }
    }
    violations
}

/// Checks several watchers, each with [`check_watch`], and their agreement:
/// the same (revision, key) never differs between watchers, and an event any
/// of them saw must reach every watcher whose range, filters and window cover
/// it.
#[must_use]
pub fn check_watchers(watchers: &[Watcher], reference: Option<&EventLog>) -> Vec<WatchViolation> {
    let mut violations = Vec::new();
    for (index, watcher) in watchers.iter().enumerate() {
        violations.extend(check_watch(watcher, reference).into_iter().map(|v| WatchViolation { watcher: index, ..v }));
    }
    // Every distinct event any watcher saw, with who saw it first.
    let mut seen: BTreeMap<(i64, Vec<u8>), (usize, Event)> = BTreeMap::new();
    let mut windows = Vec::new();
    for (index, watcher) in watchers.iter().enumerate() {
        for (stream_index, stream) in watcher.streams.iter().enumerate() {
            let mut ignore = |_: Option<usize>, _: WatchViolationKind| {};
            let summary = check_stream(&watcher.spec, stream, None, &mut ignore);
            let mut received = HashSet::new();
            for (response, event) in &summary.events {
                let key = (event.revision(), event.kv.key.clone());
                received.insert(key.clone());
                match seen.get(&key) {
                    Some((first, first_event)) if *first != index && !same_event(first_event, event) => {
                        violations.push(WatchViolation {
                            watcher: index,
                            stream: stream_index,
                            response: Some(*response),
                            kind: WatchViolationKind::Disagreement {
                                first: first_event.clone(),
                                second: (*event).clone(),
                            },
                        });
                    }
                    Some(_) => {}
                    None => {
                        seen.insert(key, (index, (*event).clone()));
                    }
                }
            }
            if let (Some(start), Some(reached)) = (summary.start, summary.reached) {
                windows.push((index, stream_index, start, reached, received));
            }
        }
    }
    for (index, stream_index, start, reached, received) in windows {
        let spec = &watchers[index].spec;
        for ((revision, key), (_, event)) in seen.range((start, Vec::new())..) {
            if *revision > reached {
                break;
            }
            if spec.accepts(event) && !received.contains(&(*revision, key.clone())) {
                violations.push(WatchViolation {
                    watcher: index,
                    stream: stream_index,
                    response: None,
                    kind: WatchViolationKind::Missing { event: Event { prev_kv: None, ..event.clone() } },
                });
            }
        }
    }
    // A gap found both against the reference and against another watcher is one gap.
    let mut reported = HashSet::new();
    violations.retain(|v| reported.insert(v.clone()));
    violations
}

/// A reference log indexed for lookups.
struct Reference<'a> {
    log: &'a EventLog,
    index: HashMap<(i64, &'a [u8]), Indexed<'a>>,
}

/// One reference event, found by (revision, key).
struct Indexed<'a> {
    /// Position in the log, for the sub-revision order.
    position: usize,
    event: &'a Event,
    /// The previous pair (`None` inside: absent), if known.
    prev: Option<Option<KeyValue>>,
}

impl<'a> Reference<'a> {
    fn new(log: &'a EventLog) -> Reference<'a> {
        let index = log
            .with_prev()
            .into_iter()
            .enumerate()
            .map(|(position, (event, prev))| {
                ((event.revision(), event.kv.key.as_slice()), Indexed { position, event, prev })
            })
            .collect();
        Reference { log, index }
    }
}

/// What one stream delivered, for the cross-stream checks.
struct StreamSummary<'a> {
    /// The first revision the stream owed.
    start: Option<i64>,
    /// The highest revision the stream is known to have delivered everything up to.
    reached: Option<i64>,
    /// Every event with its response index.
    events: Vec<(usize, &'a Event)>,
}

fn same_event(a: &Event, b: &Event) -> bool {
    a.kind == b.kind && a.kv == b.kv
}

fn check_stream<'a>(
    spec: &WatchSpec,
    stream: &'a WatchStream,
    reference: Option<&Reference<'_>>,
    report: &mut impl FnMut(Option<usize>, WatchViolationKind),
) -> StreamSummary<'a> {
    let events: Vec<(usize, &Event)> =
        stream.responses.iter().enumerate().flat_map(|(i, r)| r.events.iter().map(move |e| (i, e))).collect();
    let start = if stream.start_revision > 0 {
        Some(stream.start_revision)
    } else {
        stream.responses.iter().find(|r| r.created).map(|r| r.revision + 1).or(events.first().map(|e| e.1.revision()))
    };
    // Responses joined across fragments: the group (first response index) of each response.
    let mut group_of = Vec::with_capacity(stream.responses.len());
    let mut group = 0;
    for (i, response) in stream.responses.iter().enumerate() {
        group_of.push(group);
        if !response.fragment {
            group = i + 1;
        }
    }
    let mut check = StreamCheck {
        spec,
        reference,
        start,
        group_of,
        last_revision: None,
        revision_group: HashMap::new(),
        seen: HashSet::new(),
        last_by_key: HashMap::new(),
        progress: None,
        reached: start.map(|s| s - 1),
        position_in_revision: None,
    };
    let mut pending = events.iter().peekable();
    for (i, response) in stream.responses.iter().enumerate() {
        check.compaction(i, response, stream.start_revision, report);
        while let Some(&(_, event)) = pending.next_if(|(r, _)| *r == i) {
            check.event(i, event, report);
        }
        // etcd sends the store revision at send time, at or after every event sent.
        if let Some(event) = response.events.iter().find(|e| e.revision() > response.revision) {
            let reason = format!("after its response's header revision {}", response.revision);
            report(Some(i), WatchViolationKind::Malformed { event: event.clone(), reason });
        }
        if response.is_progress_notify() {
            check.progress = Some(check.progress.map_or(response.revision, |p| p.max(response.revision)));
            check.reached = Some(check.reached.map_or(response.revision, |r| r.max(response.revision)));
        }
    }
    check.missing(report);
    StreamSummary { start, reached: check.reached, events }
}

/// What a stream has shown so far, while its responses are checked in order.
struct StreamCheck<'s, 'r, 'l> {
    spec: &'s WatchSpec,
    reference: Option<&'r Reference<'l>>,
    /// The first revision the stream owes.
    start: Option<i64>,
    /// For each response, the first response of its fragment group.
    group_of: Vec<usize>,
    last_revision: Option<i64>,
    /// The fragment group each revision arrived in.
    revision_group: HashMap<i64, usize>,
    seen: HashSet<(i64, &'s [u8])>,
    last_by_key: HashMap<&'s [u8], &'s Event>,
    /// The highest progress notification.
    progress: Option<i64>,
    /// The revision everything up to which has been delivered.
    reached: Option<i64>,
    /// The last reference position matched, for the sub-revision order.
    position_in_revision: Option<(i64, usize)>,
}

impl<'s> StreamCheck<'s, '_, '_> {
    fn compaction(
        &self,
        i: usize,
        response: &WatchResponse,
        start_revision: i64,
        report: &mut impl FnMut(Option<usize>, WatchViolationKind),
    ) {
        if !response.canceled || response.compact_revision == 0 {
            return;
        }
        let compact_revision = response.compact_revision;
        let needed = self.reached.map_or(start_revision, |r| r + 1);
        if needed >= compact_revision {
            let reason = format!("the stream needed revision {needed}, which is not compacted");
            report(Some(i), WatchViolationKind::BadCompaction { compact_revision, reason });
        }
        if let Some(reference) = self.reference
            && compact_revision > reference.log.compacted_revision
        {
            let reason = format!("the store compacted only to {}", reference.log.compacted_revision);
            report(Some(i), WatchViolationKind::BadCompaction { compact_revision, reason });
        }
    }

    fn event(&mut self, i: usize, event: &'s Event, report: &mut impl FnMut(Option<usize>, WatchViolationKind)) {
        let revision = event.revision();
        let key = event.kv.key.as_slice();
        if let Some(last) = self.last_revision
            && revision < last
        {
            report(Some(i), WatchViolationKind::OutOfOrder { revision, after: last });
        }
        if let Some(progress) = self.progress
            && revision <= progress
        {
            report(Some(i), WatchViolationKind::AfterProgress { revision, progress });
        }
        if !self.seen.insert((revision, key)) {
            report(Some(i), WatchViolationKind::Duplicate { revision, key: key.to_vec() });
            return;
        }
        let group = *self.revision_group.entry(revision).or_insert(self.group_of[i]);
        if group != self.group_of[i] {
            report(Some(i), WatchViolationKind::Split { revision, first_response: group });
        }
        if let Some(start) = self.start
            && revision < start
        {
            let reason = format!("before the start revision {start}");
            report(Some(i), WatchViolationKind::Unexpected { event: event.clone(), reason });
        }
        if !self.spec.accepts(event) {
            let reason = "outside the watched range or filtered".to_string();
            report(Some(i), WatchViolationKind::Unexpected { event: event.clone(), reason });
        }
        if let Some(reason) = malformed(event) {
            report(Some(i), WatchViolationKind::Malformed { event: event.clone(), reason });
        }
        if self.spec.prev_kv {
            self.prev_kv(i, event, report);
        }
        if let Some(reference) = self.reference {
            check_against(self.spec, event, reference, &mut self.position_in_revision, &mut |kind| {
                report(Some(i), kind)
            });
        }
        self.last_by_key.insert(key, event);
        self.last_revision = Some(self.last_revision.map_or(revision, |l| l.max(revision)));
        self.reached = Some(self.reached.map_or(revision, |r| r.max(revision)));
    }

    /// The checks of `prev_kv` that need no reference (the reference's own
    /// check is in [`check_against`]).
    fn prev_kv(&self, i: usize, event: &Event, report: &mut impl FnMut(Option<usize>, WatchViolationKind)) {
        if let Some(reason) = prev_kv_shape(event) {
            report(Some(i), WatchViolationKind::Malformed { event: event.clone(), reason: reason.to_string() });
        } else if self.reference.is_none()
            && let Some(expected) = chained_prev(self.spec, self.last_by_key.get(event.kv.key.as_slice()).copied())
            && expected != event.prev_kv
        {
            let (revision, key, received) = (event.revision(), event.kv.key.clone(), event.prev_kv.clone());
            report(Some(i), WatchViolationKind::WrongPrevKv { revision, key, expected, received });
        }
    }

    /// Reliability: every reference event the stream owed up to where it got.
    fn missing(&self, report: &mut impl FnMut(Option<usize>, WatchViolationKind)) {
        let (Some(reference), Some(start), Some(reached)) = (self.reference, self.start, self.reached) else {
            return;
        };
        let owed = start.max(reference.log.first_revision)..=reached.min(reference.log.last_revision);
        for expected in reference.log.events.iter().filter(|e| owed.contains(&e.revision())) {
            if self.spec.accepts(expected) && !self.seen.contains(&(expected.revision(), expected.kv.key.as_slice())) {
                report(None, WatchViolationKind::Missing { event: Event { prev_kv: None, ..expected.clone() } });
            }
        }
    }
}

/// Compares one delivered event with the reference.
fn check_against(
    spec: &WatchSpec,
    event: &Event,
    reference: &Reference<'_>,
    position_in_revision: &mut Option<(i64, usize)>,
    report: &mut impl FnMut(WatchViolationKind),
) {
    let revision = event.revision();
    if revision < reference.log.first_revision || revision > reference.log.last_revision {
        return;
    }
    let Some(Indexed { position, event: expected, prev }) = reference.index.get(&(revision, event.kv.key.as_slice()))
    else {
        let reason = "the store has no such change".to_string();
        report(WatchViolationKind::Unexpected { event: event.clone(), reason });
        return;
    };
    if !same_event(expected, event) {
        report(WatchViolationKind::Mismatch { expected: (*expected).clone(), received: event.clone() });
    }
    if let Some((r, p)) = *position_in_revision
        && r == revision
        && *position < p
    {
        report(WatchViolationKind::SubRevisionOrder { revision, key: event.kv.key.clone() });
    }
    *position_in_revision = Some((revision, *position));
    if let (true, Some(prev)) = (spec.prev_kv, prev) {
        let compacted = prev.as_ref().is_some_and(|p| p.mod_revision <= reference.log.compacted_revision);
        let ok = event.prev_kv == *prev || (compacted && event.prev_kv.is_none());
        if !ok {
            report(WatchViolationKind::WrongPrevKv {
                revision,
                key: event.kv.key.clone(),
                expected: prev.clone(),
                received: event.prev_kv.clone(),
            });
        }
    }
}

/// Field combinations no store can produce.
fn malformed(event: &Event) -> Option<String> {
    let kv = &event.kv;
    match event.kind {
        EventKind::Put => {
            if kv.version < 1 {
                return Some(format!("version {} of a put", kv.version));
            }
            if kv.create_revision < 1 || kv.create_revision > kv.mod_revision {
                return Some(format!("create revision {} with mod revision {}", kv.create_revision, kv.mod_revision));
            }
            if (kv.version == 1) != (kv.create_revision == kv.mod_revision) {
                return Some(format!(
                    "version {} does not fit create revision {} and mod revision {}",
                    kv.version, kv.create_revision, kv.mod_revision
                ));
            }
            None
        }
        EventKind::Delete => {
            (kv.version != 0 || kv.create_revision != 0 || !kv.value.is_empty() || kv.mod_revision < 1)
                .then(|| "a delete event carries only its key and revision".to_string())
        }
    }
}

/// Without a reference, the previous pair an unfiltered stream implies: the
/// last event it delivered for the key (absence after a delete).
fn chained_prev(spec: &WatchSpec, last: Option<&Event>) -> Option<Option<KeyValue>> {
    if spec.filter_put || spec.filter_delete {
        return None;
    }
    last.map(|before| (before.kind == EventKind::Put).then(|| before.kv.clone()))
}

/// A `prev_kv` that cannot be right whatever the history: a creation with a
/// previous pair, a later version without one, or one that does not precede.
fn prev_kv_shape(event: &Event) -> Option<&'static str> {
    let kv = &event.kv;
    match (&event.kind, &event.prev_kv) {
        (EventKind::Put, Some(_)) if kv.version == 1 => Some("a creation has no previous pair"),
        (EventKind::Put, None) if kv.version > 1 => None, // may be compacted; checked against the reference
        (EventKind::Put, Some(prev)) => (prev.key != kv.key
            || prev.version + 1 != kv.version
            || prev.create_revision != kv.create_revision
            || prev.mod_revision >= kv.mod_revision)
            .then_some("the previous pair is not the previous version"),
        (EventKind::Delete, Some(prev)) => (prev.key != kv.key || prev.mod_revision >= kv.mod_revision)
            .then_some("the previous pair does not precede the delete"),
        _ => None,
    }
}
