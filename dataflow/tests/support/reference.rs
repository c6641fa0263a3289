//! The reference of the oracle tests: every view recomputed from scratch from the admitted
//! events, as plainly as the contract (§2) reads, no state carried over. Shared by
//! `dataflow/tests/oracle.rs` and the end-to-end tests of the binary (`#[path]` module).
#![allow(dead_code, missing_docs)]

use std::collections::{BTreeMap, BTreeSet};
use stockflow_dataflow::{EngineConfig, Time};
use stockflow_types::event::{Event, EventKind};
use stockflow_types::rows::{ReservationRow, Status, WindowFigures};

/// An event and the pipeline time it is admitted at.
#[derive(Clone, Debug)]
pub struct Admitted {
    /// The pipeline time it is admitted at.
    pub at: Time,
    /// The event.
    pub ev: Event,
}

#[derive(Debug, Default, PartialEq)]
pub struct Views {
    pub stock: BTreeMap<(String, String), (i64, i64)>,
    pub reservations: BTreeMap<String, ReservationRow>,
    pub windows: BTreeMap<(u64, u64, String, String), WindowFigures>,
    pub top: BTreeMap<(u64, u64), Vec<(i64, String)>>,
}

/// The events that count at `t`: admitted by then, first sighting of each (sku, event_id),
/// counts no older than the retention horizon at admission.
pub fn effective(all: &[Admitted], t: Time, cfg: &EngineConfig) -> Vec<Admitted> {
    let mut sorted: Vec<&Admitted> = all.iter().filter(|a| a.at <= t).collect();
    sorted.sort_by(|a, b| (a.at, &a.ev).cmp(&(b.at, &b.ev)));
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for a in sorted {
        if !seen.insert((a.ev.sku.clone(), a.ev.event_id.clone())) {
            continue;
        }
        if matches!(a.ev.kind, EventKind::Counted { .. }) && a.ev.ts + cfg.retention_ms < a.at {
            continue;
        }
        out.push(a.clone());
    }
    out
}

/// (reserved: (ts, event_id, location, qty, expires_at), terminal: (ts, event_id, fulfilled)).
pub type ResFacts = (
    Option<(u64, String, String, i64, u64)>,
    Option<(u64, String, bool)>,
    String,
);

pub fn reservation_facts(evs: &[Admitted]) -> BTreeMap<String, ResFacts> {
    let mut m: BTreeMap<String, ResFacts> = BTreeMap::new();
    for a in evs {
        let e = &a.ev;
        match &e.kind {
            EventKind::Reserved {
                reservation_id,
                location,
                qty,
                expires_at,
            } => {
                let f = m
                    .entry(reservation_id.clone())
                    .or_insert((None, None, e.sku.clone()));
                let cand = (
                    e.ts,
                    e.event_id.clone(),
                    location.clone(),
                    *qty,
                    *expires_at,
                );
                if f.0.as_ref().is_none_or(|old| cand < *old) {
                    f.0 = Some(cand);
                }
            }
            EventKind::Released { reservation_id } | EventKind::Fulfilled { reservation_id } => {
                let f = m
                    .entry(reservation_id.clone())
                    .or_insert((None, None, e.sku.clone()));
                let cand = (
                    e.ts,
                    e.event_id.clone(),
                    matches!(e.kind, EventKind::Fulfilled { .. }),
                );
                if f.1.as_ref().is_none_or(|old| cand < *old) {
                    f.1 = Some(cand);
                }
            }
            _ => {}
        }
    }
    m
}

pub fn status_without_allocation(f: &ResFacts, t: Time) -> Option<Status> {
    let (r, term, _) = f;
    let r = r.as_ref()?;
    Some(match term {
        Some((_, _, true)) => Status::Fulfilled,
        Some((_, _, false)) => Status::Released,
        None if t >= r.4 => Status::Expired,
        None => Status::Held, // live; allocation decides held or insufficient
    })
}

pub fn reference(all: &[Admitted], t: Time, cfg: &EngineConfig) -> Views {
    let evs = effective(all, t, cfg);
    let facts = reservation_facts(&evs);
    let mut v = Views::default();

    // Locations ever named, counts, movements.
    let mut counts: BTreeMap<(String, String), (u64, String, i64)> = BTreeMap::new();
    let mut moves: Vec<((String, String), u64, i64)> = Vec::new();
    let mut windows: BTreeMap<(u64, u64, String, String), WindowFigures> = BTreeMap::new();
    let mut add_window = |loc: &str, sku: &str, ts: u64, f: WindowFigures| {
        for w in &cfg.windows {
            let start = ts - ts % w.size_ms;
            windows
                .entry((w.size_ms, start, sku.to_string(), loc.to_string()))
                .or_default()
                .add(&f, 1);
        }
    };
    for a in &evs {
        let e = &a.ev;
        let key = |l: &str| (e.sku.clone(), l.to_string());
        match &e.kind {
            EventKind::Received { location, qty } => {
                moves.push((key(location), e.ts, *qty));
                add_window(
                    location,
                    &e.sku,
                    e.ts,
                    WindowFigures {
                        units_received: *qty,
                        ..Default::default()
                    },
                );
            }
            EventKind::Adjusted { location, qty } => moves.push((key(location), e.ts, *qty)),
            EventKind::Sold { location, qty } => {
                moves.push((key(location), e.ts, -qty));
                add_window(
                    location,
                    &e.sku,
                    e.ts,
                    WindowFigures {
                        units_sold: *qty,
                        orders: 1,
                        ..Default::default()
                    },
                );
            }
            EventKind::Counted { location, qty } => {
                let c = counts
                    .entry(key(location))
                    .or_insert((e.ts, e.event_id.clone(), *qty));
                if (e.ts, &e.event_id) > (c.0, &c.1) {
                    *c = (e.ts, e.event_id.clone(), *qty);
                }
            }
            EventKind::Reserved { location, .. } => {
                v.stock.entry(key(location)).or_default();
            }
            _ => {}
        }
        if let EventKind::Received { location, .. }
        | EventKind::Adjusted { location, .. }
        | EventKind::Sold { location, .. }
        | EventKind::Counted { location, .. } = &e.kind
        {
            v.stock.entry(key(location)).or_default();
        }
    }
    for (sku, (r, term, _)) in facts.values().map(|f| (&f.2, f)) {
        if let Some((ts, _, loc, qty, _)) = r {
            add_window(
                loc,
                sku,
                *ts,
                WindowFigures {
                    units_reserved: *qty,
                    ..Default::default()
                },
            );
            if let Some((tts, _, true)) = term {
                moves.push(((sku.clone(), loc.clone()), *tts, -qty));
                add_window(
                    loc,
                    sku,
                    *tts,
                    WindowFigures {
                        units_sold: *qty,
                        orders: 1,
                        ..Default::default()
                    },
                );
            }
        }
    }

    // on_hand, then first come first served among live reservations.
    for (key, (on_hand, reserved)) in v.stock.iter_mut() {
        let count = counts.get(key);
        *on_hand = count.map_or(0, |c| c.2)
            + moves
                .iter()
                .filter(|(k, ts, _)| k == key && count.is_none_or(|c| *ts > c.0))
                .map(|m| m.2)
                .sum::<i64>();
        let mut live: Vec<(u64, String, i64)> = facts
            .iter()
            .filter(|(_, f)| status_without_allocation(f, t) == Some(Status::Held))
            .filter_map(|(id, f)| {
                let r = f.0.as_ref()?;
                ((f.2.clone(), r.2.clone()) == *key).then(|| (r.0, id.clone(), r.3))
            })
            .collect();
        live.sort();
        let mut held = 0;
        for (_, id, qty) in live {
            let status = if held + qty <= *on_hand {
                held += qty;
                Status::Held
            } else {
                Status::Insufficient
            };
            let f = &facts[&id];
            let r = f.0.as_ref().expect("live");
            v.reservations.insert(id.clone(), row(&id, &f.2, r, status));
        }
        *reserved = held;
    }
    for (id, f) in &facts {
        if let (Some(r), Some(status)) = (&f.0, status_without_allocation(f, t)) {
            if status != Status::Held {
                v.reservations.insert(id.clone(), row(id, &f.2, r, status));
            }
        }
    }

    // Retention: a reservation is forgotten `retention` after it last stopped being live.
    if cfg.retention_ms < (1 << 39) {
        v.reservations.retain(|id, _| {
            let mut times: Vec<Time> = all.iter().map(|a| a.at).filter(|at| *at <= t).collect();
            for a in all.iter().filter(|a| a.at <= t) {
                if let EventKind::Reserved { expires_at, .. } = a.ev.kind {
                    times.push(expires_at.div_ceil(cfg.tick_ms) * cfg.tick_ms);
                }
            }
            times.sort();
            // Ended = the start of the current stretch of not being live.
            let mut ended = None;
            for s in times.into_iter().filter(|s| *s <= t) {
                let facts = reservation_facts(&effective(all, s, cfg));
                match facts.get(id).and_then(|f| status_without_allocation(f, s)) {
                    Some(Status::Held) => ended = None,
                    Some(_) if ended.is_none() => ended = Some(s),
                    _ => {}
                }
            }
            ended.is_none_or(|e| e + cfg.retention_ms > t)
        });
    }
    windows.retain(|(size, start, _, _), f| {
        start + size + cfg.window_retention_ms > t && !f.is_zero()
    });

    // Top sellers.
    let mut sold: BTreeMap<(u64, u64), BTreeMap<String, i64>> = BTreeMap::new();
    for ((size, start, sku, _), f) in &windows {
        *sold
            .entry((*size, *start))
            .or_default()
            .entry(sku.clone())
            .or_default() += f.units_sold;
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

pub fn row(
    id: &str,
    sku: &str,
    r: &(u64, String, String, i64, u64),
    status: Status,
) -> ReservationRow {
    ReservationRow {
        reservation_id: id.into(),
        sku: sku.into(),
        location: r.2.as_str().into(),
        qty: r.3,
        status,
        expires_at: r.4,
    }
}
