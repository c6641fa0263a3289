//! The differential peer: stock levels, reservation statuses and windowed sales written the way a
//! differential-dataflow user would write them (`explode`, `reduce`, `join_core`, `antijoin`,
//! `count`, a temporal filter for expiry), driven like [`crate::engine::run_engine`] and checked
//! against stockflow's views on the same events.
//!
//! What it computes (docs/events.md, "What is computed"):
//! - per reservation id, the deciding `reserved` and terminal events (`reduce`: the least by
//!   (ts, event_id) of each);
//! - a reservation with a `reserved` and no terminal event is live until its `expires_at`: a
//!   `join_function` that retracts it at that pipeline time (the temporal-filter idiom);
//! - on_hand per (sku, location): the latest count (`reduce`), plus every movement after it
//!   (`join_core` against the count's ts), plus every movement of locations without a count
//!   (`antijoin`), the units carried in the diffs and summed by `count`;
//! - allocation per (sku, location): one `reduce` over the units on hand and the live holds in
//!   (ts, id) order, greedy first come first served, as the contract says;
//! - windows per (sku, location, size, start): `units_sold`, `units_received`, `units_reserved`
//!   and `orders` as diffs summed by `count`.
//!
//! What it leaves out, each in stockflow's favour to the peer: de-duplication of event ids, the
//! log-time horizons (nothing is ever forgotten, so its state grows with the log), the
//! `reservation_id`-to-SKU binding, top sellers and checkpoints.

use crate::engine::{Input, Pace, BASE_MS};
use differential_dataflow::input::Input as _;
use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use stockflow_types::config::WindowSpec;
use stockflow_types::event::{Event, EventKind};
use stockflow_types::rows::Status;
use timely::dataflow::operators::Probe;
use timely::dataflow::ProbeHandle;

type Time = u64;
type Diff = i64;
/// (sku, location).
type Key = (String, String);

/// A fact about one reservation id; the derived `Ord` puts every `Reserved` before every
/// `Terminal`, each by (ts, event_id): the first of each is the deciding one.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum Fact {
    Reserved {
        ts: u64,
        event_id: String,
        sku: String,
        location: String,
        qty: i64,
        expires_at: u64,
    },
    Terminal {
        ts: u64,
        event_id: String,
        fulfilled: bool,
    },
}

/// A reservation as decided by its facts.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
struct Life {
    key: Key,
    ts: u64,
    qty: i64,
    expires_at: u64,
    /// The deciding terminal event: (ts, fulfilled).
    end: Option<(u64, bool)>,
}

/// What a (sku, location) allocates: the units on hand (as the multiplicity) and the live holds,
/// in allocation order.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum Claim {
    OnHand,
    Hold { ts: u64, id: String, qty: i64 },
}

/// The allocation of one (sku, location).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum Alloc {
    Reserved(i64),
    Res(String, bool),
}

/// A window figure's name: the diff carries its value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum Figure {
    Sold,
    Received,
    Reserved,
    Orders,
}

/// The answers of a run, accumulated from the dataflow's output.
#[derive(Default)]
pub struct Answers {
    /// on_hand per (sku, location) (absent = 0).
    pub on_hand: HashMap<Key, i64>,
    /// Units held per (sku, location) (absent = 0).
    pub reserved: HashMap<Key, i64>,
    /// Every reservation with a `reserved` event: its status at the end of the run.
    pub status: HashMap<String, Status>,
    /// Window figures: (sku, location, size, start) → (sold, received, reserved, orders).
    pub windows: HashMap<(String, String, u64, u64), [i64; 4]>,
}

/// What a run measured.
pub struct Run {
    /// Wall time of the run.
    pub seconds: f64,
    /// What it computed.
    pub answers: Answers,
}

/// Accumulates one update of a collection with one value per key: the updates of several
/// times may come in any order, so the diffs are summed per (key, value).
fn accumulate<K: std::hash::Hash + Eq, V: std::hash::Hash + Eq>(
    map: &mut HashMap<(K, V), Diff>,
    key: K,
    diff: Diff,
    value: V,
) {
    use std::collections::hash_map::Entry;
    match map.entry((key, value)) {
        Entry::Occupied(mut e) => {
            *e.get_mut() += diff;
            if *e.get() == 0 {
                e.remove();
            }
        }
        Entry::Vacant(e) => {
            e.insert(diff);
        }
    }
}

/// The (key, value) pairs present: one value per key.
fn present<K: Clone + std::hash::Hash + Eq, V: Clone>(
    map: &HashMap<(K, V), Diff>,
) -> impl Iterator<Item = (K, V)> + '_ {
    map.iter().map(|((k, v), d)| {
        assert_eq!(*d, 1, "one value per key");
        (k.clone(), v.clone())
    })
}

/// Every output of one worker, as maps.
#[derive(Default)]
struct Outputs {
    on_hand: HashMap<(Key, i64), Diff>,
    alloc_reserved: HashMap<(Key, i64), Diff>,
    held: HashMap<(String, bool), Diff>,
    lives: HashMap<(String, Life), Diff>,
    windows: HashMap<((String, String, u64, u64, Figure), i64), Diff>,
}

/// Runs the peer on one timely worker per input, `pace.batch()` events per tick, until every
/// event is absorbed; the answers are as of the last time.
pub fn run(windows: &[WindowSpec], per_worker: Vec<Input>, pace: Pace) -> Run {
    let workers = per_worker.len();
    let inputs = Arc::new(Mutex::new(
        per_worker.into_iter().map(Some).collect::<Vec<_>>(),
    ));
    let sizes: Vec<u64> = windows.iter().map(|w| w.size_ms).collect();
    let results = Arc::new(Mutex::new(Vec::new()));
    let res = Arc::clone(&results);
    let config = if workers > 1 {
        timely::Config::process(workers)
    } else {
        timely::Config::thread()
    };
    let start = Instant::now();
    timely::execute(config, move |worker| {
        let events = inputs.lock().unwrap()[worker.index()]
            .take()
            .expect("one share per worker");
        let out = Rc::new(RefCell::new(Outputs::default()));
        let sizes = sizes.clone();
        let o = Rc::clone(&out);
        let mut probe = ProbeHandle::new();
        let mut input = worker.dataflow::<Time, _, _>(|scope| {
            let (input, events) = scope.new_collection::<Event, Diff>();
            dataflow(events, &sizes, &o, &mut probe);
            input
        });
        let mut t = BASE_MS;
        input.advance_to(t);
        let mut events = events.peekable();
        while events.peek().is_some() {
            for ev in events.by_ref().take(pace.batch()) {
                input.update(ev, 1);
            }
            t += pace.tick;
            input.advance_to(t);
            input.flush();
            // As stockflow's run: at most 50 ticks behind the input.
            while probe.less_than(&t.saturating_sub(50)) {
                worker.step();
            }
            worker.step();
        }
        input.advance_to(t + 1);
        input.flush();
        while probe.less_than(&(t + 1)) {
            worker.step();
        }
        // Every time up to the last is complete: the answers are as of it.
        let out = std::mem::take(&mut *out.borrow_mut());
        res.lock().unwrap().push(out);
        for id in worker.installed_dataflows() {
            worker.drop_dataflow(id);
        }
    })
    .expect("timely starts")
    .join()
    .into_iter()
    .for_each(|r| r.expect("worker ran"));
    let seconds = start.elapsed().as_secs_f64();
    let parts = std::mem::take(&mut *results.lock().unwrap());
    Run {
        seconds,
        answers: merge(parts),
    }
}

/// The dataflow: the events in, the answers out into `out`, the probe after every output.
fn dataflow<'s>(
    events: VecCollection<'s, Time, Event, Diff>,
    sizes: &[u64],
    out: &Rc<RefCell<Outputs>>,
    probe: &mut ProbeHandle<Time>,
) {
    // Reservations: the deciding facts per id.
    let facts = events.clone().flat_map(|ev: Event| {
        let Event {
            event_id,
            sku,
            ts,
            kind,
        } = ev;
        match kind {
            EventKind::Reserved {
                reservation_id,
                location,
                qty,
                expires_at,
            } => Some((
                reservation_id,
                Fact::Reserved {
                    ts,
                    event_id,
                    sku,
                    location,
                    qty,
                    expires_at,
                },
            )),
            EventKind::Released { reservation_id } => Some((
                reservation_id,
                Fact::Terminal {
                    ts,
                    event_id,
                    fulfilled: false,
                },
            )),
            EventKind::Fulfilled { reservation_id } => Some((
                reservation_id,
                Fact::Terminal {
                    ts,
                    event_id,
                    fulfilled: true,
                },
            )),
            _ => None,
        }
    });
    let lives = facts.reduce(|_id, facts, output: &mut Vec<(Life, Diff)>| {
        let mut reserved = None;
        let mut end = None;
        for (fact, _) in facts {
            match fact {
                Fact::Reserved {
                    ts,
                    sku,
                    location,
                    qty,
                    expires_at,
                    ..
                } if reserved.is_none() => {
                    reserved = Some((sku, location, *ts, *qty, *expires_at));
                }
                Fact::Terminal { ts, fulfilled, .. } if end.is_none() => {
                    end = Some((*ts, *fulfilled));
                }
                _ => {}
            }
        }
        if let Some((sku, location, ts, qty, expires_at)) = reserved {
            output.push((
                Life {
                    key: (sku.clone(), location.clone()),
                    ts,
                    qty,
                    expires_at,
                    end,
                },
                1,
            ));
        }
    });
    // Live holds: no terminal event, retracted at their expiry (a temporal filter).
    let live = lives
        .clone()
        .filter(|(_, life)| life.end.is_none())
        .join_function(|(id, life)| {
            let hold = (
                life.key,
                Claim::Hold {
                    ts: life.ts,
                    id,
                    qty: life.qty,
                },
            );
            [(hold.clone(), 0, 1), (hold, life.expires_at, -1)]
        });

    // Stock: movements (units in the diff), the latest count per location.
    let shipped = lives.clone().explode(|(_, life)| match life.end {
        Some((ts, true)) => Some(((life.key, ts), -life.qty)),
        _ => None,
    });
    let moves = events
        .clone()
        .explode(|ev: Event| match ev.kind {
            EventKind::Received { location, qty } | EventKind::Adjusted { location, qty } => {
                Some((((ev.sku, location), ev.ts), qty))
            }
            EventKind::Sold { location, qty } => Some((((ev.sku, location), ev.ts), -qty)),
            _ => None,
        })
        .concat(shipped);
    let counts = events
        .clone()
        .flat_map(|ev: Event| match ev.kind {
            EventKind::Counted { location, qty } => {
                Some(((ev.sku, location), (ev.ts, ev.event_id, qty)))
            }
            _ => None,
        })
        .reduce(|_key, counts, output: &mut Vec<((u64, i64), Diff)>| {
            let ((ts, _, qty), _) = counts.last().expect("reduce input is not empty");
            output.push(((*ts, *qty), 1));
        });
    let after_count = moves
        .clone()
        .arrange_by_key()
        .join_core(counts.clone().arrange_by_key(), |key, ts, (count_ts, _)| {
            (ts > count_ts).then(|| key.clone())
        });
    let without_count = moves
        .antijoin(counts.clone().map(|(key, _)| key))
        .map(|(key, _)| key);
    let count_base = counts.explode(|(key, (_, qty))| Some((key, qty)));
    let on_hand = count_base
        .concat(after_count)
        .concat(without_count)
        .count_core::<Diff>();

    // Allocation: one reduce over the units on hand and the live holds of a location.
    let claims = on_hand
        .clone()
        .explode(|(key, units)| Some(((key, Claim::OnHand), units)))
        .concat(live);
    let allocation = claims.reduce(|_key, claims, output: &mut Vec<(Alloc, Diff)>| {
        let mut available = 0i64;
        let mut held = 0i64;
        for (claim, n) in claims {
            match claim {
                Claim::OnHand => available = *n,
                Claim::Hold { id, qty, .. } => {
                    let fits = held + qty <= available;
                    if fits {
                        held += qty;
                    }
                    output.push((Alloc::Res(id.clone(), fits), 1));
                }
            }
        }
        output.push((Alloc::Reserved(held), 1));
    });

    // Windows: figures keyed by (sku, location, size, start), summed in the diffs.
    let sizes = sizes.to_vec();
    let window_of = move |sku: &str, loc: &str, ts: u64, f: Figure, v: i64| {
        sizes
            .iter()
            .map(|size| {
                (
                    (sku.to_string(), loc.to_string(), *size, ts - ts % size, f),
                    v,
                )
            })
            .collect::<Vec<_>>()
    };
    let w = window_of.clone();
    let sales = events.explode(move |ev: Event| match ev.kind {
        EventKind::Received { location, qty } => {
            w(&ev.sku, &location, ev.ts, Figure::Received, qty)
        }
        EventKind::Sold { location, qty } => {
            let mut v = w(&ev.sku, &location, ev.ts, Figure::Sold, qty);
            v.extend(w(&ev.sku, &location, ev.ts, Figure::Orders, 1));
            v
        }
        _ => Vec::new(),
    });
    let from_lives = lives.clone().explode(move |(_, life)| {
        let (sku, loc) = &life.key;
        let mut v = window_of(sku, loc, life.ts, Figure::Reserved, life.qty);
        if let Some((ts, true)) = life.end {
            v.extend(window_of(sku, loc, ts, Figure::Sold, life.qty));
            v.extend(window_of(sku, loc, ts, Figure::Orders, 1));
        }
        v
    });
    let windows = sales.concat(from_lives).count_core::<Diff>();

    // Outputs, kept as a lookup side would.
    let o = Rc::clone(out);
    let on_hand = on_hand.inspect(move |((key, units), _, d)| {
        accumulate(&mut o.borrow_mut().on_hand, key.clone(), *d, *units);
    });
    let o = Rc::clone(out);
    let allocation = allocation.inspect(move |((key, alloc), _, d)| {
        let mut o = o.borrow_mut();
        match alloc {
            Alloc::Reserved(n) => accumulate(&mut o.alloc_reserved, key.clone(), *d, *n),
            Alloc::Res(id, fits) => accumulate(&mut o.held, id.clone(), *d, *fits),
        }
    });
    let o = Rc::clone(out);
    let lives = lives.inspect(move |((id, life), _, d)| {
        accumulate(&mut o.borrow_mut().lives, id.clone(), *d, life.clone());
    });
    let o = Rc::clone(out);
    let windows = windows.inspect(move |((key, v), _, d)| {
        accumulate(&mut o.borrow_mut().windows, key.clone(), *d, *v);
    });
    on_hand.inner.probe_with(probe);
    allocation.inner.probe_with(probe);
    lives.inner.probe_with(probe);
    windows.inner.probe_with(probe);
}

/// The workers' outputs as one set of answers as of the last time.
fn merge(parts: Vec<Outputs>) -> Answers {
    let mut a = Answers::default();
    let mut held = HashMap::new();
    let mut lives = HashMap::new();
    for o in &parts {
        a.on_hand.extend(present(&o.on_hand));
        a.reserved.extend(present(&o.alloc_reserved));
        held.extend(present(&o.held));
        lives.extend(present(&o.lives));
        for ((sku, loc, size, start, f), v) in present(&o.windows) {
            let row = a.windows.entry((sku, loc, size, start)).or_insert([0; 4]);
            row[f as usize] = v;
        }
    }
    for (id, life) in lives {
        let status = match (life.end, held.get(&id)) {
            (Some((_, true)), _) => Status::Fulfilled,
            (Some((_, false)), _) => Status::Released,
            (None, Some(true)) => Status::Held,
            (None, Some(false)) => Status::Insufficient,
            (None, None) => Status::Expired,
        };
        a.status.insert(id, status);
    }
    a
}
