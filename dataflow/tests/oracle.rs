//! Oracle tests: random event sets (repeats, counts, out-of-order terminal events, expiries that
//! cross the clock, several workers) go through the dataflow; at every pipeline time every view
//! is compared with a from-scratch recomputation written as plainly as possible below.
//!
//! Two families: `exact_*` runs with retention and de-duplication far away (the contract's
//! semantics, unbounded), `bounded_*` with a short retention, so that windows and ended
//! reservations are evicted and stale counts ignored while the run goes on.

use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Barrier, Mutex};
use stockflow_dataflow::views::ViewStore;
use stockflow_dataflow::{Engine, EngineConfig, Time};
use stockflow_types::config::WindowSpec;
use stockflow_types::event::{Event, EventKind};
use stockflow_types::rows::{Change, Status, StockRow, WindowRow};
use stockflow_types::Name;

const TICK: u64 = 10;
const SKUS: [&str; 3] = ["A", "B", "C"];
const LOCS: [&str; 2] = ["x", "y"];
const RES: usize = 6;

#[path = "support/reference.rs"]
mod reference;
use reference::{reference, Admitted, Views};

// ------------------------------------------------------------------------------------------
// What the dataflow says: the published views, and the accumulated change collection.
// ------------------------------------------------------------------------------------------

fn observed(store: &ViewStore, reference: &Views, top_reference: &Views) -> Views {
    let mut v = Views::default();
    for sku in SKUS.iter().chain(&["S"]) {
        if let Some(stock) = store.stock(sku) {
            for r in stock.iter() {
                assert_eq!(stock.get(r.location), Some(r));
                v.stock.insert(
                    (sku.to_string(), r.location.to_string()),
                    (r.on_hand, r.reserved),
                );
            }
        }
        if let Some(w) = store.windows(sku) {
            for ((size, start, loc), f) in &w.read().windows {
                v.windows
                    .insert((*size, *start, sku.to_string(), loc.to_string()), *f);
            }
        }
    }
    for i in 0..RES {
        let id = format!("r{i}");
        if let Some(r) = store.reservation(&id) {
            v.reservations.insert(id, r.row.clone());
        }
    }
    let mut starts: BTreeSet<(u64, u64)> = top_reference.top.keys().copied().collect();
    starts.extend(store.top_windows());
    for (size, start) in starts {
        if let Some(top) = store.top(size, start) {
            v.top.insert(
                (size, start),
                top.ranked
                    .iter()
                    .map(|(u, s)| (*u, s.to_string()))
                    .collect(),
            );
        }
    }
    assert_eq!(
        store.sku_count(),
        reference
            .stock
            .keys()
            .map(|k| &k.0)
            .collect::<BTreeSet<_>>()
            .len()
    );
    assert_eq!(store.reservation_count(), reference.reservations.len());
    v
}

fn rows_of(v: &Views) -> BTreeMap<Change, i64> {
    let mut m = BTreeMap::new();
    for ((sku, loc), (on_hand, reserved)) in &v.stock {
        let r = StockRow {
            sku: sku.as_str().into(),
            location: loc.as_str().into(),
            on_hand: *on_hand,
            reserved: *reserved,
            available: on_hand - reserved,
        };
        m.insert(Change::Stock(r), 1);
    }
    for r in v.reservations.values() {
        m.insert(Change::Reservation(r.clone()), 1);
    }
    for ((size, start, sku, loc), f) in &v.windows {
        let r = WindowRow {
            window_ms: *size,
            window_start: *start,
            sku: Name::from(sku.as_str()),
            location: loc.as_str().into(),
            figures: *f,
        };
        m.insert(Change::Window(r), 1);
    }
    m
}

/// Runs `events` through the dataflow on `workers` threads, comparing at every tick up to `end`.
fn check(
    events: Vec<Admitted>,
    cfg: EngineConfig,
    workers: usize,
    end: Time,
) -> Result<(), String> {
    let cfg = Arc::new(cfg);
    let store = Arc::new(ViewStore::new(workers, cfg.windows.clone(), cfg.top_k));
    let captured: Arc<Mutex<Vec<(Change, Time, i64)>>> = Arc::default();
    let failure: Arc<Mutex<Option<String>>> = Arc::default();
    let barrier = Arc::new(Barrier::new(workers));
    let events = Arc::new(events);
    let (s, c, f, b, e, k) = (store, captured, Arc::clone(&failure), barrier, events, cfg);
    timely::execute(timely::Config::process(workers), move |worker| {
        let cap = Arc::clone(&c);
        let mut engine = Engine::build(worker, Arc::clone(&k), Arc::clone(&s), move |changes| {
            changes.inspect(move |(ch, t, r)| cap.lock().unwrap().push((ch.clone(), *t, *r)))
        });
        let mut t = 0;
        while t <= end {
            if worker.index() == 0 {
                for a in e.iter().filter(|a| a.at == t) {
                    engine.send(a.ev.clone());
                }
            }
            engine.advance_to(t + TICK);
            while engine.pending(t + TICK) {
                worker.step();
            }
            b.wait();
            if worker.index() == 0 && f.lock().unwrap().is_none() {
                let mut want = reference(&e, t, &k);
                // The ranking is exact as of its own as_of, a multiple of top_tick.
                let top_at = s.top_as_of();
                let want_top = reference(&e, top_at, &k);
                let got = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    observed(&s, &want, &want_top)
                }));
                if top_at % k.top_tick_ms != 0
                    || top_at > t
                    || top_at + k.top_tick_ms <= t - t % k.top_tick_ms
                {
                    *f.lock().unwrap() = Some(format!("top as_of {top_at} at t={t}"));
                }
                let rows = rows_of(&want);
                want.top = want_top.top;
                let mut accumulated: BTreeMap<Change, i64> = BTreeMap::new();
                for (ch, at, r) in c.lock().unwrap().iter() {
                    if *at <= t {
                        *accumulated.entry(ch.clone()).or_default() += r;
                    }
                }
                accumulated.retain(|_, r| *r != 0);
                match got {
                    Err(_) => *f.lock().unwrap() = Some(format!("views inconsistent at t={t}")),
                    Ok(got) if got != want => {
                        *f.lock().unwrap() = Some(format!(
                            "views differ at t={t}:\n got {got:?}\nwant {want:?}"
                        ))
                    }
                    Ok(_) if accumulated != rows => {
                        *f.lock().unwrap() = Some(format!(
                        "change collection differs at t={t}:\n got {accumulated:?}\nwant {rows:?}"
                    ))
                    }
                    Ok(_) => {}
                }
            }
            b.wait();
            if f.lock().unwrap().is_some() {
                break;
            }
            t += TICK;
        }
    })
    .expect("timely starts")
    .join()
    .into_iter()
    .for_each(|r| r.expect("worker finished"));
    let failure = failure.lock().unwrap().take();
    failure.map_or(Ok(()), Err)
}

// ------------------------------------------------------------------------------------------
// Random inputs.
// ------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Gen {
    Stock {
        kind: u8,
        sku: usize,
        loc: usize,
        qty: i64,
        ts: u64,
        at: u64,
    },
    Reserve {
        res: usize,
        loc: usize,
        qty: i64,
        ts: u64,
        expires: u64,
        offset: u64,
    },
    End {
        res: usize,
        fulfil: bool,
        ts: u64,
        offset: u64,
    },
    Repeat {
        which: usize,
        later: u64,
        conflicting: bool,
    },
}

fn gen_event(max_at: u64, max_ts: u64) -> impl Strategy<Value = Gen> {
    let ticks = max_at / TICK;
    prop_oneof![
        4 => (0u8..4, 0..SKUS.len(), 0..LOCS.len(), 1i64..8, 0..max_ts, 0..ticks).prop_map(|(kind, sku, loc, qty, ts, at)| Gen::Stock { kind, sku, loc, qty, ts, at: at * TICK }),
        3 => (0..RES, 0..LOCS.len(), 1i64..6, 0..max_ts, 0..max_at + 200, 0u64..8).prop_map(|(res, loc, qty, ts, expires, offset)| Gen::Reserve { res, loc, qty, ts, expires, offset: offset * TICK }),
        2 => (0..RES, any::<bool>(), 0..max_ts, 0u64..8).prop_map(|(res, fulfil, ts, offset)| Gen::End { res, fulfil, ts, offset: offset * TICK }),
        1 => (any::<prop::sample::Index>(), 0u64..6, prop::bool::weighted(0.2)).prop_map(|(i, later, conflicting)| Gen::Repeat { which: i.index(usize::MAX), later: later * TICK, conflicting }),
    ]
}

/// Turns generated actions into admitted events. Each reservation's events are admitted within
/// 8 ticks of its own base time, and each reservation belongs to one SKU.
fn materialize(gens: Vec<Gen>, bases: Vec<u64>) -> Vec<Admitted> {
    let mut out: Vec<Admitted> = Vec::new();
    for (n, g) in gens.into_iter().enumerate() {
        let id = format!("e{n}");
        let res_sku = |res: usize| SKUS[res % SKUS.len()].to_string();
        let a = match g {
            Gen::Stock {
                kind,
                sku,
                loc,
                qty,
                ts,
                at,
            } => {
                let location = LOCS[loc].to_string();
                let kind = match kind {
                    0 => EventKind::Received { location, qty },
                    1 => EventKind::Adjusted {
                        location,
                        qty: if qty % 2 == 0 { qty } else { -qty },
                    },
                    2 => EventKind::Counted {
                        location,
                        qty: qty * 2,
                    },
                    _ => EventKind::Sold { location, qty },
                };
                Admitted {
                    at,
                    ev: Event {
                        event_id: id,
                        sku: SKUS[sku].into(),
                        ts,
                        kind,
                    },
                }
            }
            Gen::Reserve {
                res,
                loc,
                qty,
                ts,
                expires,
                offset,
            } => Admitted {
                at: bases[res] + offset,
                ev: Event {
                    event_id: id,
                    sku: res_sku(res),
                    ts,
                    kind: EventKind::Reserved {
                        reservation_id: format!("r{res}"),
                        location: LOCS[loc].into(),
                        qty,
                        expires_at: expires,
                    },
                },
            },
            Gen::End {
                res,
                fulfil,
                ts,
                offset,
            } => {
                let reservation_id = format!("r{res}");
                let kind = if fulfil {
                    EventKind::Fulfilled { reservation_id }
                } else {
                    EventKind::Released { reservation_id }
                };
                Admitted {
                    at: bases[res] + offset,
                    ev: Event {
                        event_id: id,
                        sku: res_sku(res),
                        ts,
                        kind,
                    },
                }
            }
            Gen::Repeat {
                which,
                later,
                conflicting,
            } => {
                if out.is_empty() {
                    continue;
                }
                let mut a = out[which % out.len()].clone();
                a.at += later;
                if conflicting {
                    a.ev.ts += 1; // same event_id, different content: the first sighting wins
                }
                a
            }
        };
        out.push(a);
    }
    out
}

fn scenario(max_at: u64, max_ts: u64) -> impl Strategy<Value = (Vec<Admitted>, usize)> {
    (
        prop::collection::vec(gen_event(max_at, max_ts), 1..40),
        prop::collection::vec((0..max_at / TICK).prop_map(|b| b * TICK), RES),
        1usize..=2,
    )
        .prop_map(|(gens, bases, workers)| (materialize(gens, bases), workers))
}

fn small_windows(retention_ms: u64) -> EngineConfig {
    EngineConfig {
        tick_ms: TICK,
        retention_ms,
        // Independent of the other retention, and shorter, in the bounded family.
        window_retention_ms: if retention_ms < 1 << 39 {
            retention_ms - 3 * TICK
        } else {
            retention_ms
        },
        dedup_window_ms: 1 << 40,
        windows: vec![
            WindowSpec {
                name: "50ms".into(),
                size_ms: 50,
            },
            WindowSpec {
                name: "100ms".into(),
                size_ms: 100,
            },
        ],
        top_k: 2,
        top_tick_ms: 3 * TICK,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn exact_views_match_reference_at_every_time((events, workers) in scenario(300, 600)) {
        let end = 300 + 8 * TICK + 6 * TICK + 200 + 2 * TICK;
        prop_assert_eq!(check(events, small_windows(1 << 40), workers, end), Ok(()));
    }

    #[test]
    fn bounded_views_match_reference_at_every_time((events, workers) in scenario(400, 600)) {
        let end = 400 + 8 * TICK + 6 * TICK + 200 + 160 + 2 * TICK;
        prop_assert_eq!(check(events, small_windows(150), workers, end), Ok(()));
    }
}

/// A hand-written story that touches each rule once, as documentation of the semantics.
#[test]
fn story_of_one_sku() {
    let ev = |id: &str, ts: u64, kind: EventKind| Event {
        event_id: id.into(),
        sku: "S".into(),
        ts,
        kind,
    };
    let res = |id: &str, qty: i64, exp: u64| EventKind::Reserved {
        reservation_id: id.into(),
        location: "x".into(),
        qty,
        expires_at: exp,
    };
    let events = vec![
        Admitted {
            at: 10,
            ev: ev(
                "1",
                5,
                EventKind::Received {
                    location: "x".into(),
                    qty: 10,
                },
            ),
        },
        Admitted {
            at: 10,
            ev: ev("2", 6, res("r1", 6, 100)),
        },
        Admitted {
            at: 20,
            ev: ev("3", 7, res("r2", 6, 1000)),
        }, // insufficient: 6 + 6 > 10
        Admitted {
            at: 20,
            ev: ev("4", 9, res("r3", 4, 1000)),
        }, // held: 6 + 4 fits
        Admitted {
            at: 30,
            ev: ev(
                "5",
                50,
                EventKind::Fulfilled {
                    reservation_id: "r4".into(),
                },
            ),
        }, // before its reservation
        Admitted {
            at: 40,
            ev: ev(
                "6",
                3,
                EventKind::Counted {
                    location: "x".into(),
                    qty: 0,
                },
            ),
        }, // supersedes only what is older than ts 3
        Admitted {
            at: 50,
            ev: ev("7", 8, res("r4", 2, 1000)),
        },
        Admitted {
            at: 50,
            ev: ev(
                "1",
                5,
                EventKind::Received {
                    location: "x".into(),
                    qty: 10,
                },
            ),
        }, // a repeat
        Admitted {
            at: 60,
            ev: ev(
                "8",
                40,
                EventKind::Released {
                    reservation_id: "r4".into(),
                },
            ),
        }, // earlier terminal wins
    ];
    assert_eq!(
        check(events.clone(), small_windows(1 << 40), 1, 200),
        Ok(())
    );
    assert_eq!(
        check(events.clone(), small_windows(1 << 40), 2, 200),
        Ok(())
    );
    let cfg = small_windows(1 << 40);
    let at = |t| reference(&events, t, &cfg);
    // r1 expires at pipeline time 100: from then r2 fits.
    assert_eq!(at(90).reservations["r1"].status, Status::Held);
    assert_eq!(at(90).reservations["r2"].status, Status::Insufficient);
    assert_eq!(at(100).reservations["r1"].status, Status::Expired);
    assert_eq!(at(100).reservations["r2"].status, Status::Held);
    // The count (0 at ts 3) does not supersede the later receipt (ts 5): 0 + 10.
    assert_eq!(at(40).stock[&("S".into(), "x".into())].0, 10);
    // r4 arrived after its fulfilment, then an earlier release decided it: nothing shipped.
    assert_eq!(at(50).reservations["r4"].status, Status::Fulfilled);
    assert_eq!(at(50).stock[&("S".into(), "x".into())].0, 8);
    assert_eq!(at(60).reservations["r4"].status, Status::Released);
    assert_eq!(at(60).stock[&("S".into(), "x".into())].0, 10);
}
