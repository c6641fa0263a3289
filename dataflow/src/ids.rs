//! The id owner: which SKU each reservation id belongs to, kept by one worker per id (by the
//! id's hash, across the whole cluster), so that `reservation_sku_mismatch` is decided once, by
//! the same rule wherever the record was read.
//!
//! Reservation records pass through here on their way to their SKU's ledger. An id is bound to
//! the SKU of its first record and stays bound for as long as that SKU's ledger knows the
//! reservation: the binding follows the reservation's [`Horizon`] (when it ended, its tombstone)
//! by the same rule the ledger forgets by, in log time. A record whose log time finds the
//! binding forgotten starts a new one, possibly under another SKU; a record naming another SKU
//! while the binding holds is rejected, and leaves the dataflow with where it came from
//! ([`Origin`]) so that the worker that hosts the owner can send it to the dead letters.
//!
//! Each pipeline time is processed once it is complete, in time order; within a time, records
//! are taken by source and partition (stable: a partition's records keep their log order), so
//! that which of two records binding one id to two SKUs in one time wins does not depend on
//! which worker's batch arrived first. A binding is forgotten once the log frontier passes the time nothing of
//! the reservation is left (at most `forget_per_time` per time), or when a record's log time
//! finds it so; either way the SKU's ledger is told at that same pipeline time
//! ([`Control::Forget`]), so that an id taken over by another SKU changes hands within one time
//! in the views and the sinks. The state is not in checkpoints: at a restore, each worker sends
//! the bindings of its restored reservations to their ids' owners, at the restored time (before
//! any record).

use crate::ledger::reservation::Horizon;
use crate::views::ViewStore;
use crate::{Control, EngineConfig, Record, Time};
use hashbrown::HashMap;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use stockflow_types::event::EventKind;
use stockflow_types::{Millis, Name};
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::Capability;
use timely::dataflow::StreamVec;

pub use stockflow_types::topology::id_hash;

/// Where a record came from, to dead-letter it if the id owner rejects it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// The topic (or source) it was read from.
    pub source: String,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// The record's key.
    pub key: Option<Vec<u8>>,
    /// The record's bytes, as read.
    pub value: Vec<u8>,
    /// An earlier run already sent it to the dead letters, durably.
    pub dead_lettered: bool,
}

/// A reservation record the id owner rejected: its id belongs to another SKU.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejected {
    /// The record.
    pub record: Record,
    /// Where it came from.
    pub origin: Origin,
    /// The SKU the id belongs to.
    pub owner: Name,
}

/// One id's binding: its SKU and what decides when the ledger forgets the reservation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    sku: Name,
    /// The deciding `reserved` event's (ts, event_id): the first by both, as in the ledger.
    reserved: Option<(Millis, Box<str>)>,
    horizon: Horizon,
    /// The event ids applied to this id (any incarnation, as the ledger's de-duplication hashes
    /// them) and their log times, within the ledger's de-duplication horizon: a repeat the
    /// ledger drops changes nothing here either.
    applied: Vec<(u64, Millis)>,
    /// Forgotten by the log (another SKU may take the id): kept only while `applied` may still
    /// make a record of its SKU a repeat.
    gone: bool,
    /// When its timer is due (one per binding: a later `drop_at` is rescheduled when it fires).
    #[serde(skip)]
    scheduled: Millis,
}

impl Binding {
    /// The binding of a reservation restored from a checkpoint.
    pub(crate) fn restored(
        sku: Name,
        reserved: Option<(Millis, Box<str>)>,
        horizon: Horizon,
        applied: Vec<(u64, Millis)>,
    ) -> Self {
        Binding {
            sku,
            reserved,
            horizon,
            applied,
            gone: false,
            scheduled: 0,
        }
    }

    fn new(sku: Name) -> Self {
        Binding {
            sku,
            reserved: None,
            horizon: Horizon::default(),
            applied: Vec::new(),
            gone: false,
            scheduled: 0,
        }
    }

    /// The log time from which it may be dropped: nothing of the reservation is left, and no
    /// record of its SKU can be a repeat of one it applied.
    fn drop_at(&self, retention: u64, window: u64) -> Millis {
        let window = window.max(1);
        let repeats_until = self
            .applied
            .iter()
            .map(|(_, at)| (at / window + 2).saturating_mul(window))
            .max()
            .unwrap_or(0);
        if self.gone {
            repeats_until
        } else {
            self.horizon.gone_at(retention).max(repeats_until)
        }
    }

    /// A new incarnation of the same SKU's id: the applied event ids stay (the ledger's
    /// de-duplication does not know incarnations).
    fn reincarnate(&mut self) {
        self.reserved = None;
        self.horizon = Horizon::default();
        self.gone = false;
    }

    /// Whether the ledger drops `event_id` at log time `lt` as a repeat: an applied sighting in
    /// `lt`'s de-duplication generation or the one before (`ledger::dedup`).
    fn repeats(&self, event_id: &str, lt: Millis, window: u64) -> bool {
        let from = (lt / window.max(1)).saturating_sub(1);
        let event = event_hash(&self.sku, event_id);
        self.applied
            .iter()
            .any(|(e, at)| *e == event && at / window.max(1) >= from)
    }

    /// Takes in an accepted record of this incarnation (the ledger's rule for its facts).
    fn record(&mut self, lt: Millis, r: &Record, window: u64) {
        // A partition's log times only grow: sightings two generations back repeat nothing.
        let from = (lt / window.max(1)).saturating_sub(1);
        self.applied.retain(|(_, at)| at / window.max(1) >= from);
        self.applied
            .push((event_hash(&self.sku, &r.event.event_id), lt));
        match &r.event.kind {
            EventKind::Reserved { expires_at, .. } => {
                self.horizon.reserved_lt.get_or_insert(lt);
                let key = (r.event.ts, r.event.event_id.as_str());
                if self
                    .reserved
                    .as_ref()
                    .is_none_or(|(ts, id)| key < (*ts, &**id))
                {
                    self.reserved = Some((r.event.ts, r.event.event_id.as_str().into()));
                    self.horizon.expires_at = Some(*expires_at);
                }
            }
            _ => {
                self.horizon.terminal_lt.get_or_insert(lt);
                self.horizon.terminal = true;
            }
        }
    }
}

/// An event id as the ledger's de-duplication identifies it within its SKU.
pub(crate) fn event_hash(sku: &str, event_id: &str) -> u64 {
    crate::ledger::dedup::key(crate::ledger::sku_hash(sku), event_id) as u64
}

/// What reaches an id's owner: a reservation record to check (with where it came from), or,
/// at a restore's time, a binding rebuilt from a restored reservation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToOwner {
    /// A record to check.
    Check(Record, Origin),
    /// A restored binding.
    Bind(Name, Binding),
}

impl ToOwner {
    fn id(&self) -> &str {
        match self {
            ToOwner::Check(r, _) => r.event.kind.reservation_id().unwrap_or_default(),
            ToOwner::Bind(id, _) => id,
        }
    }

    /// The order within a time: by partition (restored bindings first); a stable sort keeps
    /// each partition's records in log order.
    fn order(&self) -> (&str, i32) {
        match self {
            ToOwner::Check(_, o) => (&o.source, o.partition),
            ToOwner::Bind(..) => ("", i32::MIN),
        }
    }
}

/// The notice that tells `sku`'s ledger that reservation `id` is forgotten by log time `at`.
fn forget(sku: &str, id: &str, at: Millis) -> Control {
    Control::Forget {
        sku: sku.to_string(),
        id: id.to_string(),
        at,
    }
}

/// The bindings of one worker.
pub(crate) struct Ids {
    retention: u64,
    dedup_window: u64,
    forget_per_time: usize,
    store: Arc<ViewStore>,
    bindings: HashMap<Name, Binding>,
    /// (when nothing of a binding may be left, id): checked against the binding when due.
    timers: BTreeSet<(Millis, Name)>,
    /// The latest log frontier of each worker, and their least.
    marks: Vec<Millis>,
    frontier: Millis,
}

impl Ids {
    pub(crate) fn new(cfg: &EngineConfig, store: Arc<ViewStore>, peers: usize) -> Self {
        Ids {
            retention: cfg.retention_ms,
            dedup_window: cfg.dedup_window_ms,
            forget_per_time: cfg.forget_per_time,
            store,
            bindings: HashMap::new(),
            timers: BTreeSet::new(),
            marks: vec![0; peers.max(1)],
            frontier: 0,
        }
    }

    /// Starts at the restored log frontier `frontier`.
    pub(crate) fn restore_frontier(&mut self, frontier: Millis) {
        self.marks.iter_mut().for_each(|m| *m = frontier);
        self.frontier = frontier;
    }

    /// Takes in a binding rebuilt from a restored reservation.
    fn bind(&mut self, id: Name, mut b: Binding) {
        self.store.registry().insert(&id, &b.sku);
        b.scheduled = b.drop_at(self.retention, self.dedup_window);
        self.timers.insert((b.scheduled, Arc::clone(&id)));
        self.bindings.insert(id, b);
    }

    /// Ids bound.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.bindings.len()
    }

    /// Takes in one time's control messages (log frontiers).
    fn control(&mut self, controls: &[Control]) {
        for c in controls {
            if let Control::LogFrontier { worker, at } = c {
                if let Some(m) = self.marks.get_mut(*worker) {
                    *m = (*m).max(*at);
                }
            }
        }
        self.frontier = self.marks.iter().copied().min().unwrap_or(0);
    }

    /// Decides one reservation record: `Err(sku)` if its id belongs to another SKU `sku`;
    /// `Ok(Some(sku))` if it is accepted and its id was another SKU's, forgotten by now.
    pub(crate) fn check(&mut self, r: &Record) -> Result<Option<Name>, Name> {
        let Some(id) = r.event.kind.reservation_id() else {
            return Ok(None);
        };
        let (lt, sku, window) = (r.log_time, r.event.sku.as_str(), self.dedup_window);
        // What the log has forgotten by this record's log time (as the ledger does).
        if let Some(b) = self.bindings.get_mut(id) {
            while !b.gone && b.horizon.forget_at(self.retention) <= lt {
                match b.horizon.forgotten() {
                    Some(tomb) => {
                        b.horizon = tomb;
                        b.reserved = None;
                    }
                    None => b.gone = true,
                }
            }
        }
        let mut released = None;
        let fresh = match self.bindings.get_mut(id) {
            Some(b) if b.gone && *b.sku != *sku => {
                // Another SKU takes the id over: its old SKU's ledger is told.
                released = Some(std::mem::replace(b, Binding::new(Name::from(sku))).sku);
                self.store.registry().insert(&Name::from(id), &b.sku);
                true
            }
            Some(b) if *b.sku != *sku => return Err(Arc::clone(&b.sku)),
            // A repeat the ledger drops (`ledger::dedup`): nothing changes.
            Some(b) if b.repeats(&r.event.event_id, lt, window) => return Ok(None),
            Some(b) if b.gone || b.horizon.forgotten.is_some() => {
                b.reincarnate();
                true
            }
            Some(_) => false,
            None => {
                let (id, sku) = (Name::from(id), Name::from(sku));
                self.store.registry().insert(&id, &sku);
                self.bindings.insert(id, Binding::new(sku));
                true
            }
        };
        let (name, b) = self.bindings.get_key_value_mut(id).expect("bound above");
        b.record(lt, r, window);
        // One timer per binding: an earlier drop is scheduled now, a later one when the timer
        // fires.
        let at = b.drop_at(self.retention, window);
        if fresh || at < b.scheduled {
            b.scheduled = at;
            self.timers.insert((at, Arc::clone(name)));
        }
        Ok(released)
    }

    /// Forgets the bindings of which nothing is left at the log frontier, at most
    /// `forget_per_time`, telling their SKUs' ledgers (`out`); returns whether some are still
    /// due.
    fn forget(&mut self, out: &mut Vec<Control>) -> bool {
        for _ in 0..self.forget_per_time {
            let Some((at, id)) = self.timers.first().cloned() else {
                return false;
            };
            if at > self.frontier {
                return false;
            }
            self.timers.pop_first();
            let Some(b) = self.bindings.get_mut(&id) else {
                continue;
            };
            let drop_at = b.drop_at(self.retention, self.dedup_window);
            if drop_at <= self.frontier {
                let b = self.bindings.remove(&id).expect("present");
                self.store.registry().remove(&id);
                out.push(forget(&b.sku, &id, self.frontier));
            } else if b.scheduled <= at {
                // Its drop moved later since: due again then.
                b.scheduled = drop_at;
                self.timers.insert((drop_at, id));
            }
        }
        self.timers
            .first()
            .is_some_and(|(at, _)| *at <= self.frontier)
    }
}

/// What the id owner says about one reservation record, or a notice for a ledger.
pub(crate) type Verdict = Result<Record, Result<Control, Box<Rejected>>>;

/// The id owner operator: reservation records (with their origin) in, at their pipeline time;
/// out, at the same time, the accepted records (`Ok`), and (`Err`) the [`Control::Forget`]
/// notices for the ledgers and the rejected records.
pub(crate) fn id_owner<'s>(
    records: StreamVec<'s, Time, ToOwner>,
    control: StreamVec<'s, Time, Control>,
    cfg: Arc<EngineConfig>,
    store: Arc<ViewStore>,
    peers: usize,
    restored_frontier: Option<Millis>,
) -> StreamVec<'s, Time, Verdict> {
    records.binary_frontier(
        control.broadcast(),
        Exchange::new(|r: &ToOwner| id_hash(r.id())),
        Pipeline,
        "IdOwner",
        move |initial, _info| {
            drop(initial);
            let mut ids = Ids::new(&cfg, store, peers);
            if let Some(frontier) = restored_frontier {
                ids.restore_frontier(frontier);
            }
            type Stashed = (Capability<Time>, Vec<ToOwner>, Vec<Control>);
            let mut stash: BTreeMap<Time, Stashed> = BTreeMap::new();
            // Held while bindings due at the frontier wait for the next slice.
            let mut slice: Option<Capability<Time>> = None;
            let tick = cfg.tick_ms.max(1);
            let mut notices = Vec::new();
            move |(records_in, records_frontier), (control_in, control_frontier), output| {
                records_in.for_each_stamp(|cap, data| {
                    let t = *cap.least().expect("inputs carry totally ordered times");
                    let entry = stash.entry(t).or_insert_with(|| {
                        let cap = cap.retain_least(0).expect("stamp is not empty");
                        (cap, Vec::new(), Vec::new())
                    });
                    for batch in data {
                        entry.1.append(batch);
                    }
                });
                control_in.for_each_stamp(|cap, data| {
                    let t = *cap.least().expect("inputs carry totally ordered times");
                    let entry = stash.entry(t).or_insert_with(|| {
                        let cap = cap.retain_least(0).expect("stamp is not empty");
                        (cap, Vec::new(), Vec::new())
                    });
                    for batch in data {
                        entry.2.append(batch);
                    }
                });
                while let Some(entry) = stash.first_entry() {
                    let t = *entry.key();
                    if records_frontier.less_equal(&t) || control_frontier.less_equal(&t) {
                        break;
                    }
                    let (cap, mut records, controls) = entry.remove();
                    ids.control(&controls);
                    records.sort_by(|a, b| a.order().cmp(&b.order()));
                    let mut session = output.session(&cap);
                    for input in records {
                        let (record, origin) = match input {
                            ToOwner::Check(record, origin) => (record, origin),
                            ToOwner::Bind(id, b) => {
                                ids.bind(id, b);
                                continue;
                            }
                        };
                        match ids.check(&record) {
                            Ok(released) => {
                                if let Some(sku) = released {
                                    let id = record.event.kind.reservation_id().unwrap_or_default();
                                    session.give(Err(Ok(forget(&sku, id, record.log_time))));
                                }
                                session.give(Ok(record));
                            }
                            Err(owner) => session.give(Err(Err(Box::new(Rejected {
                                record,
                                origin,
                                owner,
                            })))),
                        }
                    }
                    // Forgetting at this time's frontier, in slices: the rest at the next tick.
                    let more = ids.forget(&mut notices);
                    session.give_iterator(notices.drain(..).map(|n| Err(Ok(n))));
                    drop(session);
                    slice = more.then(|| cap.delayed(&(t + tick)));
                }
                // The next slice once its time is complete (its records checked first), one
                // per tick: never ahead of a record not yet checked.
                if let Some(cap) = slice.as_mut() {
                    let s = *cap.time();
                    if !records_frontier.less_equal(&s) && !control_frontier.less_equal(&s) {
                        let more = ids.forget(&mut notices);
                        output
                            .session(&*cap)
                            .give_iterator(notices.drain(..).map(|n| Err(Ok(n))));
                        if more {
                            cap.downgrade(&(s + tick));
                        } else {
                            slice = None;
                        }
                    }
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use stockflow_types::event::Event;

    fn rec(sku: &str, id: &str, lt: Millis, kind: u8) -> Record {
        rec_e(sku, id, lt, kind, &format!("{sku}-{id}-{lt}"))
    }

    fn rec_e(sku: &str, id: &str, lt: Millis, kind: u8, event_id: &str) -> Record {
        let reservation_id = id.to_string();
        let kind = match kind {
            0 => EventKind::Reserved {
                reservation_id,
                location: "L".into(),
                qty: 1,
                expires_at: 500,
            },
            1 => EventKind::Released { reservation_id },
            _ => EventKind::Fulfilled { reservation_id },
        };
        Record {
            log_time: lt,
            event: Event {
                event_id: event_id.into(),
                sku: sku.into(),
                ts: lt,
                kind,
            },
        }
    }

    fn ids(retention: u64) -> Ids {
        let mut cfg = EngineConfig::for_tests(1);
        cfg.retention_ms = retention;
        cfg.dedup_window_ms = 50;
        let store = Arc::new(ViewStore::new(1, cfg.windows.clone(), cfg.top_k));
        Ids::new(&cfg, store, 1)
    }

    #[test]
    fn an_id_belongs_to_one_sku_while_its_reservation_is_known() {
        let mut ids = ids(100);
        assert_eq!(ids.check(&rec("A", "r", 10, 0)), Ok(None));
        assert_eq!(ids.check(&rec("B", "r", 20, 1)), Err(Name::from("A")));
        assert_eq!(ids.check(&rec("A", "r", 30, 1)), Ok(None), "ended at 30");
        // Forgotten at 130 (tombstone until 230): another SKU's record is still rejected…
        assert_eq!(ids.check(&rec("B", "r", 229, 0)), Err(Name::from("A")));
        assert_eq!(ids.store.registry().sku_of("r"), Some(Name::from("A")));
        // …and from 230 on nothing is left: a new reservation under another SKU is valid, and
        // A's ledger is told.
        assert_eq!(ids.check(&rec("B", "r", 230, 0)), Ok(Some(Name::from("A"))));
        assert_eq!(ids.store.registry().sku_of("r"), Some(Name::from("B")));
    }

    #[test]
    fn an_orphan_binds_until_retention_after_it_was_read() {
        let mut ids = ids(100);
        assert_eq!(ids.check(&rec("A", "o", 10, 2)), Ok(None));
        assert_eq!(ids.check(&rec("B", "o", 109, 0)), Err(Name::from("A")));
        assert_eq!(ids.check(&rec("B", "o", 110, 0)), Ok(Some(Name::from("A"))));
        assert_eq!(ids.check(&rec("B", "o", 300, 1)), Ok(None), "its own");
    }

    #[test]
    fn a_repeat_the_ledger_drops_changes_nothing_even_in_a_later_incarnation() {
        let mut ids = ids(100);
        ids.dedup_window = 1000;
        assert_eq!(ids.check(&rec_e("A", "r", 10, 0, "a1")), Ok(None));
        assert_eq!(ids.check(&rec_e("A", "r", 20, 1, "a2")), Ok(None)); // gone from 220
        assert_eq!(ids.check(&rec_e("A", "r", 300, 0, "a3")), Ok(None)); // held until 500
                                                                         // The first incarnation's release again, within the de-duplication window: the ledger
                                                                         // drops it, so the second incarnation still ends at its expiry…
        assert_eq!(ids.check(&rec_e("A", "r", 310, 1, "a2")), Ok(None));
        // …and is a tombstone until 700: another SKU is still refused at 650.
        assert_eq!(ids.check(&rec("B", "r", 650, 0)), Err(Name::from("A")));
        assert_eq!(ids.check(&rec("B", "r", 700, 0)), Ok(Some(Name::from("A"))));
    }

    #[test]
    fn bindings_are_forgotten_at_the_frontier_in_slices() {
        let mut ids = ids(100);
        ids.forget_per_time = 2;
        for i in 0..5 {
            ids.check(&rec("A", &format!("o{i}"), 10, 1)).unwrap();
        }
        ids.check(&rec("A", "r", 10, 0)).unwrap(); // held until 500: gone at 700
        assert_eq!(ids.len(), 6);
        ids.control(&[Control::LogFrontier { worker: 0, at: 110 }]);
        let mut out = Vec::new();
        assert!(ids.forget(&mut out), "more due");
        assert_eq!(ids.len(), 4);
        assert!(ids.forget(&mut out));
        assert!(!ids.forget(&mut out));
        assert_eq!(ids.len(), 1);
        assert_eq!(out.len(), 5, "each SKU's ledger is told");
        assert_eq!(ids.store.registry().len(), 1);
        ids.control(&[Control::LogFrontier { worker: 0, at: 700 }]);
        assert!(!ids.forget(&mut out));
        assert_eq!(ids.len(), 0);
        assert!(ids.store.registry().is_empty());
    }
}
