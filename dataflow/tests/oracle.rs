//! Oracle tests: random logs (repeats, counts, out-of-order terminal events, expiries that cross
//! the clock, several partitions read by several workers) go through the dataflow, in one run
//! or in several runs separated by a checkpoint and a restart (or by a plain replay from the
//! start, or a crash that loses what followed the checkpoint); at every pipeline time of every
//! run, every view and the accumulated change collection are compared with a from-scratch
//! recomputation (`support/reference.rs`) of the records admitted so far.
//!
//! The reference depends only on which records were admitted (a prefix of each partition), the
//! log frontier they imply and the pipeline time: so passing at every time of every run means
//! that no restart, replay, batching or worker count changes an answer.
//!
//! Families: `exact_*` with retention and de-duplication far away (the contract's semantics,
//! unbounded), `bounded_*` and `restarts_*` with short horizons in log time and business times
//! spread far wider than them, so that every forgetting rule fires: repeats applied again, stale
//! counts, final windows, forgotten reservations, tombstones and orphans.
//!
//! The logs also hold heartbeats (records with a log time and no event, as a Kafka source
//! writes into idle partitions: often the only thing a partition holds) and records stamped far
//! ahead (a producer's wrong clock), whose log time the sources' rule cuts
//! ([`next_log_time`]), as a replay cuts it again.

use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Barrier, Mutex};
use stockflow_dataflow::ids::Origin;
use stockflow_dataflow::views::{ReservationLookup, ViewStore};
use stockflow_dataflow::{ledger, Engine, EngineConfig, Part, Record, Time};
use stockflow_types::config::WindowSpec;
use stockflow_types::event::{Event, EventKind};
use stockflow_types::log_time::next_log_time;
use stockflow_types::rows::{Change, Status, StockRow, WindowRow};
use stockflow_types::Name;

const TICK: u64 = 10;
const SKUS: [&str; 3] = ["A", "B", "C"];
const LOCS: [&str; 2] = ["x", "y"];
const RES: usize = 6;
/// Partitions: inventory events of SKU i in `i % 2`, order events in `2 + i % 2`.
const PARTS: usize = 4;
/// How far one record may move its partition's log time (`pipeline.max_clock_skew`).
const MAX_STEP: u64 = 300;
/// How far ahead a record with a wrong clock is stamped.
const FAR_AHEAD: u64 = 100_000;

/// A log entry: (partition, log time, event; `None` for a heartbeat).
type Entry = (usize, u64, Option<Event>);

#[path = "support/reference.rs"]
mod reference;
use reference::{reference, Admitted, Views};

fn partition(ev: &Event) -> usize {
    let sku = SKUS.iter().position(|s| *s == ev.sku).unwrap_or(0);
    let orders = ev.kind.stream() == stockflow_types::event::Stream::Orders;
    usize::from(orders) * 2 + sku % 2
}

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
        match store.lookup_reservation(&id) {
            ReservationLookup::Found(r) => {
                v.reservations.insert(id, r.row.clone());
            }
            ReservationLookup::Forgotten { ended, .. } => {
                v.forgotten.insert(id, ended);
            }
            ReservationLookup::Unknown => {}
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
    // A SKU's list of reservations holds exactly the reservations with a row under it.
    for sku in SKUS.iter().chain(&["S"]) {
        let (listed, total) = store.reservations_of(sku, usize::MAX);
        let listed: BTreeSet<String> = listed
            .iter()
            .map(|r| r.row.reservation_id.to_string())
            .collect();
        let want: BTreeSet<String> = v
            .reservations
            .iter()
            .filter(|(_, r)| &*r.sku == *sku)
            .map(|(id, _)| id.clone())
            .collect();
        assert_eq!(listed, want, "reservations_of({sku})");
        assert_eq!(total, want.len());
    }
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

/// The data-quality signals of some views, per location, from scratch: keys with `on_hand`
/// below zero and their shortfall, reservations expired and their units.
fn quality_of(v: &Views) -> BTreeMap<String, [i64; 4]> {
    let mut m: BTreeMap<String, [i64; 4]> = BTreeMap::new();
    for ((_, loc), (on_hand, _)) in &v.stock {
        if *on_hand < 0 {
            let q = m.entry(loc.clone()).or_default();
            q[0] += 1;
            q[1] -= on_hand;
        }
    }
    for r in v.reservations.values() {
        if r.status == Status::Expired {
            let q = m.entry(r.location.to_string()).or_default();
            q[2] += 1;
            q[3] += r.qty;
        }
    }
    m
}

// ------------------------------------------------------------------------------------------
// Runs: a log read in one run or several, with checkpoints and restarts.
// ------------------------------------------------------------------------------------------

/// One run of the pipeline over the log.
#[derive(Clone, Debug)]
struct Run {
    workers: usize,
    /// Per tick, how many of each partition's next records to admit (then more ticks until
    /// `extra` after everything is admitted, in the last run).
    batches: Vec<[u8; PARTS]>,
    /// Request a checkpoint at this tick of the run (by worker 0).
    checkpoint: Option<usize>,
    /// Start from the latest complete checkpoint (else replay the log from the start).
    from_checkpoint: bool,
    /// Ticks of pipeline time between the previous run's end and this run's start.
    gap: u64,
}

/// A complete checkpoint: its parts and, per partition, how many records it covers (and the
/// last log time among them).
#[derive(Clone, Debug)]
struct Checkpoint {
    parts: Vec<Vec<u8>>,
    positions: [usize; PARTS],
    admitted: Vec<Admitted>,
}

/// Reads `log` (records in log order per partition, each with its partition and log time) in
/// `runs`, comparing at every tick. The last run admits whatever is left and goes on for
/// `extra` ticks.
fn check_runs(
    log: Vec<Entry>,
    runs: Vec<Run>,
    cfg: EngineConfig,
    extra: u64,
) -> Result<(), String> {
    let cfg = Arc::new(cfg);
    let by_part: Vec<Vec<(u64, Option<Event>)>> = (0..PARTS)
        .map(|p| {
            log.iter()
                .filter(|(part, _, _)| *part == p)
                .map(|(_, lt, e)| (*lt, e.clone()))
                .collect()
        })
        .collect();
    let mut latest: Option<Checkpoint> = None;
    let mut clock: Time = 0;
    let n_runs = runs.len();
    for (k, run) in runs.into_iter().enumerate() {
        let last = k + 1 == n_runs;
        let base = match (&latest, run.from_checkpoint) {
            (Some(c), true) => Some(c.clone()),
            _ => None,
        };
        let start = clock + run.gap * TICK;
        let (positions, admitted) = match &base {
            Some(c) => (c.positions, c.admitted.clone()),
            None => ([0; PARTS], Vec::new()),
        };
        // The schedule of this run: (tick, partition, index within the partition).
        let mut next = positions;
        let mut schedule: Vec<Vec<(usize, usize)>> = Vec::new();
        let mut ticks = 0usize;
        loop {
            let mut this = Vec::new();
            let batch = run.batches.get(ticks).copied();
            for p in 0..PARTS {
                let n = match batch {
                    Some(b) => usize::from(b[p] % 3),
                    None if last => 2,
                    None => 0,
                };
                for _ in 0..n {
                    if next[p] < by_part[p].len() {
                        this.push((p, next[p]));
                        next[p] += 1;
                    }
                }
            }
            schedule.push(this);
            ticks += 1;
            let done = next
                .iter()
                .zip(&by_part)
                .map(|(n, b)| b.len() - n)
                .sum::<usize>()
                == 0;
            if ticks >= run.batches.len() && (!last || done) {
                break;
            }
        }
        if last {
            schedule.extend((0..extra).map(|_| Vec::new()));
        }
        let restore = match &base {
            Some(c) => Some(ledger::route(&c.parts, run.workers).map_err(|e| e.to_string())?),
            None => None,
        };
        let outcome = one_run(
            &cfg,
            &by_part,
            admitted,
            restore,
            start,
            schedule.clone(),
            run.workers,
            run.checkpoint,
        )?;
        clock = start + schedule.len() as u64 * TICK;
        if let Some(c) = outcome {
            latest = Some(c);
        }
    }
    Ok(())
}

/// One run: returns the checkpoint it completed, if any.
#[allow(clippy::too_many_arguments)]
fn one_run(
    cfg: &Arc<EngineConfig>,
    by_part: &[Vec<(u64, Option<Event>)>],
    restored: Vec<Admitted>,
    restore: Option<Vec<stockflow_dataflow::WorkerRestore>>,
    start: Time,
    schedule: Vec<Vec<(usize, usize)>>,
    workers: usize,
    checkpoint: Option<usize>,
) -> Result<Option<Checkpoint>, String> {
    let store = Arc::new(ViewStore::new(workers, cfg.windows.clone(), cfg.top_k));
    let captured: Arc<Mutex<Vec<(Change, Time, i64)>>> = Arc::default();
    let failure: Arc<Mutex<Option<String>>> = Arc::default();
    let barrier = Arc::new(Barrier::new(workers));
    // What this run admitted, in admission order, after what the checkpoint covers.
    let admitted = Arc::new(Mutex::new(restored));
    let parts: Arc<Mutex<Vec<Option<Part>>>> = Arc::new(Mutex::new(vec![None; workers]));
    let requested: Arc<Mutex<Option<(Time, Vec<Admitted>)>>> = Arc::default();
    let restore = Arc::new(Mutex::new(restore));
    let by_part = Arc::new(by_part.to_vec());
    let schedule = Arc::new(schedule);
    let (s, c, f, b, k) = (
        Arc::clone(&store),
        Arc::clone(&captured),
        Arc::clone(&failure),
        Arc::clone(&barrier),
        Arc::clone(cfg),
    );
    let (adm, prt, req, rst) = (
        Arc::clone(&admitted),
        Arc::clone(&parts),
        Arc::clone(&requested),
        Arc::clone(&restore),
    );
    timely::execute(timely::Config::process(workers), move |worker| {
        let me = worker.index();
        let cap = Arc::clone(&c);
        let mine = rst
            .lock()
            .unwrap()
            .as_mut()
            .map(|r| std::mem::take(&mut r[me]));
        let mut engine = Engine::build(
            worker,
            Arc::clone(&k),
            Arc::clone(&s),
            mine,
            move |changes| {
                changes.inspect(move |(ch, t, r)| cap.lock().unwrap().push((ch.clone(), *t, *r)))
            },
        );
        // This worker's partitions and how far each has been admitted.
        let my_parts: Vec<usize> = (0..PARTS).filter(|p| p % workers == me).collect();
        let mut last_lt: Vec<u64> = (0..PARTS)
            .map(|p| {
                adm.lock()
                    .unwrap()
                    .iter()
                    .filter(|a| a.part == p)
                    .map(|a| a.lt)
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut t = start;
        for (tick, batch) in schedule.iter().enumerate() {
            engine.advance_to(t);
            for (p, i) in batch {
                if p % workers != me {
                    continue;
                }
                let (lt, ev) = by_part[*p][*i].clone();
                last_lt[*p] = last_lt[*p].max(lt);
                if let Some(event) = ev {
                    let origin = Origin {
                        partition: *p as i32,
                        ..Origin::default()
                    };
                    engine.send_from(
                        Record {
                            log_time: lt,
                            event,
                        },
                        origin,
                    );
                }
            }
            engine.advance_log(
                my_parts
                    .iter()
                    .map(|p| last_lt[*p])
                    .min()
                    .unwrap_or(u64::MAX),
            );
            b.wait();
            if me == 0 {
                let mut a = adm.lock().unwrap();
                for (p, i) in batch {
                    let (lt, ev) = by_part[*p][*i].clone();
                    a.push(Admitted {
                        at: t,
                        part: *p,
                        lt,
                        ev,
                    });
                }
                if checkpoint == Some(tick) {
                    let at = engine.request_checkpoint();
                    *req.lock().unwrap() = Some((at, a.clone()));
                }
            }
            engine.advance_to(t + TICK);
            while engine.pending(t + TICK) {
                worker.step();
            }
            // A checkpoint part is written a slice per activation: let it finish.
            while engine.writing_checkpoint() {
                worker.step();
            }
            if let Some(part) = engine.take_part() {
                prt.lock().unwrap()[me] = Some(part);
            }
            b.wait();
            if me == 0 && f.lock().unwrap().is_none() {
                let all = adm.lock().unwrap().clone();
                let mut want = reference(&all, t, PARTS, &k);
                // The ranking is exact as of its own as_of, a multiple of top_tick.
                let top_at = s.top_as_of();
                let want_top = reference(&all, top_at, PARTS, &k);
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
                let quality = quality_of(&want);
                let got_quality: BTreeMap<String, [i64; 4]> = s
                    .quality()
                    .locs
                    .iter()
                    .map(|(l, q)| {
                        let q = [
                            q.negative_keys,
                            q.negative_units,
                            q.expired_holds,
                            q.expired_units,
                        ];
                        (l.to_string(), q)
                    })
                    .collect();
                if got_quality != quality {
                    *f.lock().unwrap() = Some(format!(
                        "data quality differs at t={t}:\n got {got_quality:?}\nwant {quality:?}"
                    ));
                }
                want.top = want_top.top;
                let mut accumulated: BTreeMap<Change, i64> = BTreeMap::new();
                for (ch, at, r) in c.lock().unwrap().iter() {
                    // Markers of forgetting are not rows.
                    if *at <= t && !matches!(ch, Change::Forgotten(_)) {
                        *accumulated.entry(ch.clone()).or_default() += r;
                    }
                }
                accumulated.retain(|_, r| *r != 0);
                match got {
                    Err(_) => *f.lock().unwrap() = Some(format!("views inconsistent at t={t}")),
                    Ok(got) if got != want => {
                        *f.lock().unwrap() = Some(format!(
                            "views differ at t={t}:\n got {got:?}\nwant {want:?}\nadmitted {all:?}"
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
        engine.shutdown(worker);
    })
    .expect("timely starts")
    .join()
    .into_iter()
    .for_each(|r| r.expect("worker finished"));
    if let Some(failure) = failure.lock().unwrap().take() {
        return Err(failure);
    }
    let parts = parts.lock().unwrap().clone();
    let requested = requested.lock().unwrap().take();
    match (requested, parts.iter().all(Option::is_some)) {
        (Some((at, admitted)), true) => {
            let parts: Vec<Part> = parts.into_iter().map(Option::unwrap).collect();
            if parts.iter().any(|p| p.at != at) {
                return Err(format!(
                    "parts of the checkpoint at {at} disagree on its time"
                ));
            }
            let covered: Vec<Admitted> = admitted.into_iter().filter(|a| a.at <= at).collect();
            let mut positions = [0; PARTS];
            for a in &covered {
                positions[a.part] += 1;
            }
            Ok(Some(Checkpoint {
                parts: parts.into_iter().map(|p| p.to_bytes()).collect(),
                positions,
                admitted: covered,
            }))
        }
        _ => Ok(None),
    }
}

// ------------------------------------------------------------------------------------------
// Random logs.
// ------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Gen {
    Stock {
        kind: u8,
        sku: usize,
        loc: usize,
        qty: i64,
        ts: u64,
        lt: u64,
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
    /// A record of reservation `res` under SKU `sku` (usually not its own: a mismatch, unless
    /// its own was forgotten by then).
    Stray {
        res: usize,
        sku: usize,
        end: bool,
        ts: u64,
        offset: u64,
    },
    Repeat {
        which: usize,
        later: u64,
        conflicting: bool,
    },
    /// A heartbeat in partition `part`.
    Heartbeat { part: usize, lt: u64 },
}

fn gen_event(max_lt: u64, max_ts: u64) -> impl Strategy<Value = Gen> {
    prop_oneof![
        4 => (0u8..4, 0..SKUS.len(), 0..LOCS.len(), 1i64..8, 0..max_ts, 0..max_lt).prop_map(|(kind, sku, loc, qty, ts, lt)| Gen::Stock { kind, sku, loc, qty, ts, lt }),
        3 => (0..RES, 0..LOCS.len(), 1i64..6, 0..max_ts, 0..max_lt + 200, 0u64..80).prop_map(|(res, loc, qty, ts, expires, offset)| Gen::Reserve { res, loc, qty, ts, expires, offset }),
        2 => (0..RES, any::<bool>(), 0..max_ts, 0u64..80).prop_map(|(res, fulfil, ts, offset)| Gen::End { res, fulfil, ts, offset }),
        1 => (0..RES, 0..SKUS.len(), any::<bool>(), 0..max_ts, 0u64..400).prop_map(|(res, sku, end, ts, offset)| Gen::Stray { res, sku, end, ts, offset }),
        1 => (any::<prop::sample::Index>(), 0u64..60, prop::bool::weighted(0.2)).prop_map(|(i, later, conflicting)| Gen::Repeat { which: i.index(usize::MAX), later, conflicting }),
        2 => (0..PARTS, 0..max_lt + 200).prop_map(|(part, lt)| Gen::Heartbeat { part, lt }),
    ]
}

/// Turns generated actions into a log: (partition, log time, event), in log order per
/// partition. Each reservation belongs to one SKU and its events have log times within 80 of
/// its own base time. The records marked in `ahead` are stamped [`FAR_AHEAD`] later than their
/// place in the log; log times follow the sources' rule ([`next_log_time`]).
fn materialize(gens: Vec<Gen>, bases: Vec<u64>, ahead: Vec<bool>) -> Vec<Entry> {
    let mut out: Vec<(u64, Event)> = Vec::new();
    let mut heartbeats: Vec<(usize, u64)> = Vec::new();
    for (n, g) in gens.into_iter().enumerate() {
        let id = format!("e{n}");
        let res_sku = |res: usize| SKUS[res % SKUS.len()].to_string();
        let (lt, ev) = match g {
            Gen::Stock {
                kind,
                sku,
                loc,
                qty,
                ts,
                lt,
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
                let ev = Event {
                    event_id: id,
                    sku: SKUS[sku].into(),
                    ts,
                    kind,
                };
                (lt, ev)
            }
            Gen::Reserve {
                res,
                loc,
                qty,
                ts,
                expires,
                offset,
            } => (
                bases[res] + offset,
                Event {
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
            ),
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
                (
                    bases[res] + offset,
                    Event {
                        event_id: id,
                        sku: res_sku(res),
                        ts,
                        kind,
                    },
                )
            }
            Gen::Stray {
                res,
                sku,
                end,
                ts,
                offset,
            } => {
                let reservation_id = format!("r{res}");
                let kind = if end {
                    EventKind::Released { reservation_id }
                } else {
                    EventKind::Reserved {
                        reservation_id,
                        location: LOCS[0].into(),
                        qty: 1,
                        expires_at: ts + 50,
                    }
                };
                (
                    bases[res] + offset,
                    Event {
                        event_id: id,
                        sku: SKUS[sku].into(),
                        ts,
                        kind,
                    },
                )
            }
            Gen::Repeat {
                which,
                later,
                conflicting,
            } => {
                if out.is_empty() {
                    continue;
                }
                let (lt, mut ev) = out[which % out.len()].clone();
                if conflicting {
                    ev.ts += 1; // same event_id, different content: the first in log order wins
                }
                (lt + later, ev)
            }
            Gen::Heartbeat { part, lt } => {
                heartbeats.push((part, lt));
                continue;
            }
        };
        out.push((lt, ev));
    }
    // Log order: by place within each partition (a stable sort keeps equal times in order).
    let mut entries: Vec<(u64, usize, Option<Event>)> = out
        .into_iter()
        .map(|(lt, ev)| (lt, partition(&ev), Some(ev)))
        .chain(heartbeats.into_iter().map(|(part, lt)| (lt, part, None)))
        .collect();
    entries.sort_by_key(|(lt, _, _)| *lt);
    let mut current = [0u64; PARTS];
    entries
        .into_iter()
        .enumerate()
        .map(|(i, (place, part, ev))| {
            let far = ahead.get(i).copied().unwrap_or(false);
            let stamp = if far { place + FAR_AHEAD } else { place };
            current[part] = next_log_time(current[part], stamp, MAX_STEP).0;
            (part, current[part], ev)
        })
        .collect()
}

fn log(
    max_lt: u64,
    max_ts: u64,
    events: std::ops::Range<usize>,
) -> impl Strategy<Value = Vec<Entry>> {
    let most = events.end;
    (
        prop::collection::vec(gen_event(max_lt, max_ts), events),
        prop::collection::vec(0..max_lt, RES),
        prop::collection::vec(prop::bool::weighted(0.04), most),
    )
        .prop_map(|(gens, bases, ahead)| materialize(gens, bases, ahead))
}

fn run(max_ticks: usize) -> impl Strategy<Value = Run> {
    (
        1usize..=2,
        prop::collection::vec(prop::array::uniform4(0u8..4), 1..max_ticks),
        prop::option::weighted(0.8, 0..max_ticks),
        prop::bool::weighted(0.8),
        0u64..40,
    )
        .prop_map(|(workers, batches, checkpoint, from_checkpoint, gap)| Run {
            workers,
            checkpoint: checkpoint.map(|c| c % batches.len()),
            batches,
            from_checkpoint,
            gap,
        })
}

fn config(retention_ms: u64) -> EngineConfig {
    let bounded = retention_ms < 1 << 39;
    EngineConfig {
        tick_ms: TICK,
        retention_ms,
        // Independent of the other horizons, and shorter, in the bounded families.
        window_retention_ms: if bounded {
            retention_ms - 3 * TICK
        } else {
            retention_ms
        },
        dedup_window_ms: if bounded { 60 } else { 1 << 40 },
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
        forget_per_time: usize::MAX,
        // On, in 50 ms buckets: its hooks in the ledger and its checkpoint item go through
        // every run and restart here, and must leave every row above exact (its own
        // exactness is tests/forecast_oracle.rs).
        forecast: Some(Arc::new({
            let mut f = stockflow_dataflow::forecast::ForecastConfig::daily(if bounded {
                retention_ms - 3 * TICK
            } else {
                1 << 30
            });
            f.bucket_ms = 50;
            f
        })),
    }
}

/// Ticks after the last admission: enough for every expiry (`expires_at` < 600 + 200).
const EXTRA: u64 = 90;

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn exact_views_match_reference_at_every_time(log in log(300, 600, 1..40), r in run(40)) {
        let r = Run { checkpoint: None, from_checkpoint: false, ..r };
        prop_assert_eq!(check_runs(log, vec![r], config(1 << 40), EXTRA), Ok(()));
    }

    #[test]
    fn bounded_views_match_reference_at_every_time(log in log(600, 600, 1..40), r in run(40)) {
        let r = Run { checkpoint: None, from_checkpoint: false, ..r };
        prop_assert_eq!(check_runs(log, vec![r], config(150), EXTRA), Ok(()));
    }

    /// Business times over a range twenty times the retention; runs end in a crash after a
    /// checkpoint (what followed it is lost and read again), or replay from the start.
    #[test]
    fn restarts_never_change_an_answer(log in log(600, 3000, 1..50), runs in prop::collection::vec(run(30), 2..4)) {
        prop_assert_eq!(check_runs(log, runs, config(150), EXTRA), Ok(()));
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
    let received = |qty| EventKind::Received {
        location: "x".into(),
        qty,
    };
    let a = |at: u64, ev: Event| Admitted {
        at,
        part: 0,
        lt: at,
        ev: Some(ev),
    };
    let events = vec![
        a(10, ev("1", 5, received(10))),
        a(10, ev("2", 6, res("r1", 6, 100))),
        a(20, ev("3", 7, res("r2", 6, 1000))), // insufficient: 6 + 6 > 10
        a(20, ev("4", 9, res("r3", 4, 1000))), // held: 6 + 4 fits
        a(
            30,
            ev(
                "5",
                50,
                EventKind::Fulfilled {
                    reservation_id: "r4".into(),
                },
            ),
        ), // before its reservation
        a(
            40,
            ev(
                "6",
                3,
                EventKind::Counted {
                    location: "x".into(),
                    qty: 0,
                },
            ),
        ), // supersedes only what is older than ts 3
        a(50, ev("7", 8, res("r4", 2, 1000))),
        a(50, ev("1", 5, received(10))), // a repeat
        a(
            60,
            ev(
                "8",
                40,
                EventKind::Released {
                    reservation_id: "r4".into(),
                },
            ),
        ), // earlier terminal wins
    ];
    let cfg = config(1 << 40);
    let at = |t| reference(&events, t, 1, &cfg);
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
    // The same story through the dataflow, with 1 and 2 workers.
    let log: Vec<Entry> = events
        .iter()
        .map(|a| (partition(a.ev.as_ref().unwrap()), a.lt, a.ev.clone()))
        .collect();
    for workers in [1, 2] {
        let r = Run {
            workers,
            batches: (0..7).map(|_| [1, 1, 1, 1]).collect(),
            checkpoint: Some(3),
            from_checkpoint: true,
            gap: 2,
        };
        assert_eq!(
            check_runs(log.clone(), vec![r.clone(), r], cfg.clone(), 30),
            Ok(())
        );
    }
}

/// With short horizons in log time: a repeat is applied again two generations later, a count
/// too old at its log time is dropped, a window final at a record's log time is left alone, a
/// reservation ended more than the retention ago is forgotten (a tombstone answers for another
/// retention) and its later terminal event is an orphan.
#[test]
fn horizons_are_measured_in_log_time() {
    let cfg = config(150); // retention 150, windows final 120 after their end, dedup 60
    let ev = |id: &str, ts: u64, kind: EventKind| Event {
        event_id: id.into(),
        sku: "A".into(),
        ts,
        kind,
    };
    let received = |qty| EventKind::Received {
        location: "x".into(),
        qty,
    };
    let a = |lt: u64, ev: Event| Admitted {
        at: 10,
        part: partition(&ev),
        lt,
        ev: Some(ev),
    };
    let events = vec![
        a(0, ev("e1", 0, received(5))),
        a(100, ev("e1", 0, received(5))), // generation 1: still a repeat
        a(120, ev("e1", 0, received(5))), // generation 2: applied again
        a(
            300,
            ev(
                "c",
                100,
                EventKind::Counted {
                    location: "x".into(),
                    qty: 1,
                },
            ),
        ), // 100 + 150 < 300
        a(
            300,
            ev(
                "r",
                10,
                EventKind::Reserved {
                    reservation_id: "r1".into(),
                    location: "x".into(),
                    qty: 1,
                    expires_at: 5,
                },
            ),
        ),
    ];
    let v = reference(&events, 10, 1, &cfg);
    assert_eq!(
        v.stock[&("A".into(), "x".into())].0,
        10,
        "two receipts, the stale count ignored"
    );
    // The receipts' windows end at 50 and 100: final at 170 and 220, evicted at frontier 300.
    assert!(v.windows.is_empty(), "{:?}", v.windows);
    let mut later = events;
    later.push(a(
        460,
        ev(
            "t",
            20,
            EventKind::Released {
                reservation_id: "r1".into(),
            },
        ),
    ));
    let v = reference(&later, 10, 1, &cfg);
    // r1 ended at log time 300 (read then, already expired): forgotten from 450.
    assert_eq!(
        v.forgotten.get("r1"),
        None,
        "the release came later: a new, orphan incarnation"
    );
    assert!(!v.reservations.contains_key("r1"));
    let log: Vec<Entry> = later.iter().map(|a| (a.part, a.lt, a.ev.clone())).collect();
    let r = Run {
        workers: 2,
        batches: vec![[1, 1, 1, 1]; 6],
        checkpoint: Some(2),
        from_checkpoint: true,
        gap: 1,
    };
    assert_eq!(check_runs(log, vec![r.clone(), r], cfg, 20), Ok(()));
}
