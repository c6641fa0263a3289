//! The reference of the oracle tests: every view recomputed from scratch from the admitted
//! records, as plainly as the contract (§2, and "Bounded state" of 1.1) reads, no state carried
//! over from an earlier call. Shared by `dataflow/tests/oracle.rs` and the end-to-end tests of
//! the binary (`#[path]` module).
//!
//! Log time decides every rule that rejects or forgets: each record's own log time for what
//! happens to that record (a repeat, a stale count, a final window, a forgotten reservation),
//! and the log frontier (the least, over the partitions, of the last log time admitted) for
//! what the views still show. Expiry compares with the pipeline time `t`.
#![allow(dead_code, missing_docs)]

use std::collections::{BTreeMap, BTreeSet};
use stockflow_dataflow::{EngineConfig, Time};
use stockflow_types::event::{Event, EventKind};
use stockflow_types::rows::{ReservationRow, Status, WindowFigures};

/// A record as a run admitted it: the pipeline time, its partition and log time, the event.
/// Lists of them are in admission order, which within a partition is log order.
#[derive(Clone, Debug)]
pub struct Admitted {
    /// The pipeline time it is admitted at.
    pub at: Time,
    /// Its partition (all records of one SKU and topic share one).
    pub part: usize,
    /// Its log time (non-decreasing within a partition).
    pub lt: u64,
    /// The event; `None` for a heartbeat (it moves its partition's log time, nothing else).
    pub ev: Option<Event>,
}

#[derive(Debug, Default, PartialEq)]
pub struct Views {
    pub stock: BTreeMap<(String, String), (i64, i64)>,
    pub reservations: BTreeMap<String, ReservationRow>,
    /// Forgotten reservations whose tombstone still answers: id → when it ended (log time).
    pub forgotten: BTreeMap<String, u64>,
    pub windows: BTreeMap<(u64, u64, String, String), WindowFigures>,
    pub top: BTreeMap<(u64, u64), Vec<(i64, String)>>,
}

/// The log frontier at `t`: the least, over `partitions`, of the last log time admitted.
pub fn frontier(all: &[Admitted], t: Time, partitions: usize) -> u64 {
    (0..partitions)
        .map(|p| {
            all.iter()
                .filter(|a| a.part == p && a.at <= t)
                .map(|a| a.lt)
                .max()
                .unwrap_or(0)
        })
        .min()
        .unwrap_or(u64::MAX)
}

/// One incarnation of a reservation id (a forgotten one's id may start another).
#[derive(Clone, Debug, Default)]
struct Incarnation {
    sku: String,
    /// The first `reserved` by (ts, event_id): (ts, event_id, location, qty, expires_at).
    reserved: Option<(u64, String, String, i64, u64)>,
    /// The first terminal event by (ts, event_id): (ts, event_id, fulfilled).
    terminal: Option<(u64, String, bool)>,
    reserved_lt: Option<u64>,
    terminal_lt: Option<u64>,
    /// A tombstone: when it had ended.
    forgotten: Option<u64>,
}

impl Incarnation {
    fn ended(&self) -> u64 {
        if let Some(e) = self.forgotten {
            return e;
        }
        match (&self.reserved, &self.terminal) {
            (Some(_), Some(_)) => self.reserved_lt.unwrap().max(self.terminal_lt.unwrap()),
            (Some(r), None) => self.reserved_lt.unwrap().max(r.4),
            (None, _) => self.terminal_lt.unwrap(),
        }
    }

    fn forget_at(&self, retention: u64) -> u64 {
        self.ended()
            + if self.forgotten.is_some() {
                2 * retention
            } else {
                retention
            }
    }

    /// Forgets one step at log time `lt`: a reservation becomes a tombstone, a tombstone or an
    /// orphan disappears (None).
    fn forget(self) -> Option<Incarnation> {
        if self.forgotten.is_some() || self.reserved.is_none() {
            return None;
        }
        Some(Incarnation {
            sku: self.sku.clone(),
            forgotten: Some(self.ended()),
            ..Incarnation::default()
        })
    }

    /// Takes a reservation record into this incarnation's facts: the first `reserved` and the
    /// first terminal event by (ts, event_id), and when the log first brought each.
    fn take(&mut self, e: &Event, lt: u64) {
        match &e.kind {
            EventKind::Reserved {
                location,
                qty,
                expires_at,
                ..
            } => {
                self.reserved_lt.get_or_insert(lt);
                let cand = (
                    e.ts,
                    e.event_id.clone(),
                    location.clone(),
                    *qty,
                    *expires_at,
                );
                if self.reserved.as_ref().is_none_or(|old| cand < *old) {
                    self.reserved = Some(cand);
                }
            }
            _ => {
                self.terminal_lt.get_or_insert(lt);
                let fulfilled = matches!(e.kind, EventKind::Fulfilled { .. });
                let cand = (e.ts, e.event_id.clone(), fulfilled);
                if self.terminal.as_ref().is_none_or(|old| cand < *old) {
                    self.terminal = Some(cand);
                }
            }
        }
    }

    /// Status at pipeline time `t`, without allocation (`Held` = live).
    fn status(&self, t: Time) -> Option<Status> {
        let r = self.reserved.as_ref()?;
        Some(match &self.terminal {
            Some((_, _, true)) => Status::Fulfilled,
            Some(_) => Status::Released,
            None if t >= r.4 => Status::Expired,
            None => Status::Held,
        })
    }

    /// (location, ts, figures) contributed to windows: the `reserved`, and a fulfilment's sale.
    fn window_contributions(&self) -> Vec<(String, u64, WindowFigures)> {
        let mut out = Vec::new();
        if let Some((ts, _, loc, qty, _)) = &self.reserved {
            out.push((
                loc.clone(),
                *ts,
                WindowFigures {
                    units_reserved: *qty,
                    ..Default::default()
                },
            ));
            if let Some((tts, _, true)) = &self.terminal {
                out.push((
                    loc.clone(),
                    *tts,
                    WindowFigures {
                        units_sold: *qty,
                        orders: 1,
                        ..Default::default()
                    },
                ));
            }
        }
        out
    }

    /// A fulfilment's shipment: (location, ts, -qty).
    fn shipped(&self) -> Option<(String, u64, i64)> {
        match (&self.reserved, &self.terminal) {
            (Some((_, _, loc, qty, _)), Some((tts, _, true))) => Some((loc.clone(), *tts, -qty)),
            _ => None,
        }
    }
}

/// What the log has forgotten of reservation `id` by log time `lt`: the incarnations forgotten
/// go to `past` (their shipments stay).
fn forget_by(
    current: &mut BTreeMap<String, Incarnation>,
    id: &str,
    lt: u64,
    retention: u64,
    past: &mut Vec<Incarnation>,
) {
    while let Some(inc) = current.get(id) {
        if inc.forget_at(retention) > lt {
            break;
        }
        let inc = current.remove(id).unwrap();
        if inc.forgotten.is_none() && inc.reserved.is_some() {
            past.push(inc.clone());
        }
        if let Some(tomb) = inc.forget() {
            current.insert(id.to_string(), tomb);
        }
    }
}

pub fn reference(all: &[Admitted], t: Time, partitions: usize, cfg: &EngineConfig) -> Views {
    let f = frontier(all, t, partitions);
    let retention = cfg.retention_ms;
    let generation = |lt: u64| lt / cfg.dedup_window_ms.max(1);
    let final_at = |size: u64, start: u64| start + size + cfg.window_retention_ms;
    let mut v = Views::default();

    let mut applied: BTreeMap<(String, String), Vec<u64>> = BTreeMap::new();
    let mut locations: BTreeSet<(String, String)> = BTreeSet::new();
    let mut counts: BTreeMap<(String, String), (u64, String, i64)> = BTreeMap::new();
    let mut moves: Vec<((String, String), u64, i64)> = Vec::new();
    let mut windows: BTreeMap<(u64, u64, String, String), WindowFigures> = BTreeMap::new();
    // Adds a contribution to the windows that are not final at the causing record's log time.
    let add_window = |windows: &mut BTreeMap<(u64, u64, String, String), WindowFigures>,
                      sku: &str,
                      loc: &str,
                      ts: u64,
                      lt: u64,
                      f: &WindowFigures,
                      sign: i64| {
        for w in &cfg.windows {
            let start = ts - ts % w.size_ms;
            if final_at(w.size_ms, start) > lt {
                windows
                    .entry((w.size_ms, start, sku.to_string(), loc.to_string()))
                    .or_default()
                    .add(f, sign);
            }
        }
    };
    let mut current: BTreeMap<String, Incarnation> = BTreeMap::new();
    // The id owner's bindings.
    let mut bound: BTreeMap<String, Incarnation> = BTreeMap::new();
    // Incarnations forgotten by now: their shipments stay.
    let mut past: Vec<Incarnation> = Vec::new();

    // By admission time and, within one, by partition (a stable sort: a partition's records
    // keep their order), as the id owner takes them; every other rule is per SKU.
    let mut order: Vec<&Admitted> = all.iter().filter(|a| a.at <= t).collect();
    order.sort_by_key(|a| (a.at, a.part));
    for a in order {
        let Some(e) = &a.ev else {
            continue; // a heartbeat: it counts for the frontier only
        };
        let lt = a.lt;
        if matches!(e.kind, EventKind::Counted { .. }) && e.ts + retention < lt {
            continue; // count_too_old
        }
        if let Some(id) = e.kind.reservation_id() {
            // The id's owner: a record naming another SKU than the one its id is bound to
            // (while that SKU's ledger knows the reservation) is rejected; it sees every
            // record, repeats included.
            forget_by(&mut bound, id, lt, retention, &mut Vec::new());
            if bound.get(id).is_some_and(|b| b.sku != e.sku) {
                continue; // reservation_sku_mismatch
            }
            let b = bound.entry(id.to_string()).or_default();
            if b.forgotten.is_some() {
                *b = Incarnation::default();
            }
            b.sku = e.sku.clone();
            b.take(e, lt);
        }
        let seen = applied
            .entry((e.sku.clone(), e.event_id.clone()))
            .or_default();
        if seen.iter().any(|l| generation(*l) + 1 >= generation(lt)) {
            continue; // a repeat within the de-duplication horizon
        }
        seen.push(lt);
        let key = |l: &str| (e.sku.clone(), l.to_string());
        match &e.kind {
            EventKind::Received { location, qty } => {
                locations.insert(key(location));
                moves.push((key(location), e.ts, *qty));
                let f = WindowFigures {
                    units_received: *qty,
                    ..Default::default()
                };
                add_window(&mut windows, &e.sku, location, e.ts, lt, &f, 1);
            }
            EventKind::Adjusted { location, qty } => {
                locations.insert(key(location));
                moves.push((key(location), e.ts, *qty));
            }
            EventKind::Listed { .. } => {}
            EventKind::Sold { location, qty } => {
                locations.insert(key(location));
                moves.push((key(location), e.ts, -qty));
                let f = WindowFigures {
                    units_sold: *qty,
                    orders: 1,
                    ..Default::default()
                };
                add_window(&mut windows, &e.sku, location, e.ts, lt, &f, 1);
            }
            EventKind::Counted { location, qty } => {
                locations.insert(key(location));
                let c = counts
                    .entry(key(location))
                    .or_insert((e.ts, e.event_id.clone(), *qty));
                if (e.ts, &e.event_id) > (c.0, &c.1) {
                    *c = (e.ts, e.event_id.clone(), *qty);
                }
            }
            EventKind::Reserved {
                reservation_id: id, ..
            }
            | EventKind::Released { reservation_id: id }
            | EventKind::Fulfilled { reservation_id: id } => {
                forget_by(&mut current, id, lt, retention, &mut past);
                let inc = current.entry(id.clone()).or_default();
                if inc.forgotten.is_some() {
                    *inc = Incarnation::default();
                }
                inc.sku = e.sku.clone();
                let before = inc.window_contributions();
                if let EventKind::Reserved { location, .. } = &e.kind {
                    locations.insert(key(location));
                }
                inc.take(e, lt);
                let after = inc.window_contributions();
                if before != after {
                    for (loc, ts, f) in before {
                        add_window(&mut windows, &e.sku, &loc, ts, lt, &f, -1);
                    }
                    for (loc, ts, f) in after {
                        add_window(&mut windows, &e.sku, &loc, ts, lt, &f, 1);
                    }
                }
            }
        }
    }

    // What the log frontier has forgotten.
    for (id, inc) in std::mem::take(&mut current) {
        let mut inc = Some(inc);
        while let Some(i) = inc.take() {
            if i.forget_at(retention) > f {
                inc = Some(i);
                break;
            }
            if i.forgotten.is_none() && i.reserved.is_some() {
                past.push(i.clone());
            }
            inc = i.forget();
        }
        if let Some(i) = inc {
            current.insert(id, i);
        }
    }

    // Stock: the latest count, then every movement after it (shipments included).
    let shipped = current
        .values()
        .chain(&past)
        .filter_map(|i| i.shipped().map(|(l, ts, q)| ((i.sku.clone(), l), ts, q)));
    moves.extend(shipped);
    for key in &locations {
        let count = counts.get(key);
        let on_hand = count.map_or(0, |c| c.2)
            + moves
                .iter()
                .filter(|(k, ts, _)| k == key && count.is_none_or(|c| *ts > c.0))
                .map(|m| m.2)
                .sum::<i64>();
        // First come first served among the live reservations of the location.
        let mut live: Vec<(u64, String, i64)> = current
            .iter()
            .filter(|(_, i)| i.forgotten.is_none() && i.status(t) == Some(Status::Held))
            .filter_map(|(id, i)| {
                let r = i.reserved.as_ref()?;
                ((i.sku.clone(), r.2.clone()) == *key).then(|| (r.0, id.clone(), r.3))
            })
            .collect();
        live.sort();
        let mut held = 0;
        for (_, id, qty) in live {
            let status = if held + qty <= on_hand {
                held += qty;
                Status::Held
            } else {
                Status::Insufficient
            };
            v.reservations
                .insert(id.clone(), row(&id, &current[&id], status));
        }
        v.stock.insert(key.clone(), (on_hand, held));
    }
    for (id, inc) in &current {
        if let Some(ended) = inc.forgotten {
            v.forgotten.insert(id.clone(), ended);
            continue;
        }
        if let Some(status) = inc.status(t) {
            if status != Status::Held {
                v.reservations.insert(id.clone(), row(id, inc, status));
            }
        }
    }

    windows.retain(|(size, start, _, _), w| final_at(*size, *start) > f && !w.is_zero());

    // Top sellers.
    let mut sold: BTreeMap<(u64, u64), BTreeMap<String, i64>> = BTreeMap::new();
    for ((size, start, sku, _), w) in &windows {
        *sold
            .entry((*size, *start))
            .or_default()
            .entry(sku.clone())
            .or_default() += w.units_sold;
    }
    for (key, by_sku) in sold {
        let mut ranked: Vec<(i64, String)> = by_sku
            .into_iter()
            .filter(|(_, u)| *u > 0)
            .map(|(s, u)| (-u, s))
            .collect();
        ranked.sort();
        ranked.truncate(cfg.top_k);
        if !ranked.is_empty() {
            v.top.insert(key, ranked);
        }
    }
    v.windows = windows;
    v
}

fn row(id: &str, inc: &Incarnation, status: Status) -> ReservationRow {
    let r = inc.reserved.as_ref().expect("a reservation");
    ReservationRow {
        reservation_id: id.into(),
        sku: inc.sku.as_str().into(),
        location: r.2.as_str().into(),
        qty: r.3,
        status,
        expires_at: r.4,
    }
}
