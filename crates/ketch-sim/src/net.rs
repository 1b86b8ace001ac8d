//! The simulated network: raft messages in flight with delays, drops,
//! duplicates and reordering, and partitions (symmetric or one-way).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use ketch_raft::eraftpb::{Message, MessageType};
use ketch_server::member::Outbox;
use rand::Rng;
use rand::rngs::StdRng;

/// Messages in flight at most; more are dropped (raft retransmits).
const IN_FLIGHT_MAX: usize = 200_000;

/// What the network does to each message.
#[derive(Clone, Debug)]
pub struct Weather {
    pub drop: f64,
    pub duplicate: f64,
    /// Delivery delay in ms, drawn uniformly (so messages reorder).
    pub delay_ms: (u64, u64),
}

impl Weather {
    pub fn calm() -> Weather {
        Weather { drop: 0.0, duplicate: 0.0, delay_ms: (1, 3) }
    }
}

/// Messages members have sent, waiting to enter the network.
pub type Sent = Arc<Mutex<Vec<(u64, Message)>>>;

/// A member's outbox: everything it sends lands in the shared [`Sent`] list.
pub struct SimOutbox {
    pub from: u64,
    pub sent: Sent,
}

impl Outbox for SimOutbox {
    fn send(&mut self, msgs: Vec<Message>) {
        let mut sent = self.sent.lock().expect("sent lock poisoned");
        sent.extend(msgs.into_iter().map(|m| (self.from, m)));
    }
}

pub struct Net {
    pub sent: Sent,
    in_flight: BTreeMap<(u64, u64), Message>,
    seq: u64,
    /// Directed links that drop everything: (from, to).
    blocked: BTreeSet<(u64, u64)>,
    pub weather: Weather,
    /// Duplicate forwarded proposals too (a transport that resends): raft
    /// would apply them twice. Off but for reproducing that finding.
    pub duplicate_proposals: bool,
}

impl Default for Net {
    fn default() -> Net {
        Net::new()
    }
}

impl Net {
    pub fn new() -> Net {
        Net {
            sent: Arc::new(Mutex::new(Vec::new())),
            in_flight: BTreeMap::new(),
            seq: 0,
            blocked: BTreeSet::new(),
            weather: Weather::calm(),
            duplicate_proposals: false,
        }
    }

    /// Moves what members sent into flight, applying the weather.
    pub fn take_sent(&mut self, now: u64, rng: &mut StdRng) {
        let sent = std::mem::take(&mut *self.sent.lock().expect("sent lock poisoned"));
        for (from, mut msg) in sent {
            msg.from = from;
            if self.in_flight.len() >= IN_FLIGHT_MAX || rng.random_bool(self.weather.drop) {
                continue;
            }
            // A forwarded proposal is never duplicated: the peer stream runs
            // over TCP and never resends, and raft does not deduplicate
            // proposals (etcd's would apply twice too).
            let proposal = msg.get_msg_type() == MessageType::MsgPropose && !self.duplicate_proposals;
            let copies = if !proposal && rng.random_bool(self.weather.duplicate) { 2 } else { 1 };
            for _ in 0..copies {
                let (lo, hi) = self.weather.delay_ms;
                let at = now + rng.random_range(lo..=hi.max(lo));
                self.seq += 1;
                self.in_flight.insert((at, self.seq), msg.clone());
            }
        }
    }

    /// Messages due by `now`, in delivery order, with whether their link is
    /// open.
    pub fn due(&mut self, now: u64) -> Vec<(Message, bool)> {
        let later = self.in_flight.split_off(&(now + 1, 0));
        let due = std::mem::replace(&mut self.in_flight, later);
        due.into_values()
            .map(|m| {
                let open = !self.blocked.contains(&(m.from, m.to));
                (m, open)
            })
            .collect()
    }

    /// When the next message is due.
    pub fn next_due(&self) -> Option<u64> {
        self.in_flight.keys().next().map(|(at, _)| *at)
    }

    pub fn block(&mut self, from: u64, to: u64) {
        self.blocked.insert((from, to));
    }

    /// Cuts every link between the two groups, both ways.
    pub fn partition(&mut self, a: &[u64], b: &[u64]) {
        for &x in a {
            for &y in b {
                self.block(x, y);
                self.block(y, x);
            }
        }
    }

    pub fn heal(&mut self) {
        self.blocked.clear();
    }

    pub fn describe_blocked(&self) -> String {
        self.blocked.iter().map(|(a, b)| format!("{a:x}->{b:x}")).collect::<Vec<_>>().join(" ")
    }
}
