//! Engine-only ingest throughput, on the steady-state workload and its flash-sale variant:
//! stockflow's dataflow with 1 and 2 workers, the same computation written the way a
//! differential-dataflow user would ([`stockflow_benchmarks::differential`]), and a single-thread
//! `HashMap` fold of stock levels only, all on the same events in the same run; plus resident
//! memory per live (sku, location) key and per reservation kept, each measured in a process of
//! its own.
//!
//! `cargo run --release -p stockflow-benchmarks --bin engine-bench -- [EVENTS] [TICK_MS] [steady|flash|all]`
//! (`engine-bench ledger [steady|flash] [EVENTS]`: the ledger state machine alone, one thread;
//! `engine-bench stockflow [steady|flash] [EVENTS] [WORKERS]`: stockflow alone, for profiles;
//! `engine-bench differential [steady|flash] [EVENTS] [WORKERS]`: the peer alone.)
//!
//! The steady-state workload: 100k SKUs × 20 locations, Zipf 1.1, reservations that end
//! (released, fulfilled, or left to expire after a 1 s hold) so that live state stops growing,
//! horizons (retention, de-duplication) of 1 s of log time: the run covers 5 s of business time
//! at 2,000 events per ms, the horizons are scaled to it. The flash sale sends 30% of the
//! reservations to the most popular SKU.

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use stockflow_benchmarks::engine::{run_engine, run_shares, workload, Input, Pace, BASE_MS};
use stockflow_benchmarks::{differential, rss_bytes, summary, HashMapFold};
use stockflow_dataflow::views::ViewStore;
use stockflow_dataflow::EngineConfig;
use stockflow_ingest::generator::Generator;
use stockflow_types::config::{GeneratorConfig, Settings};
use stockflow_types::event::{Event, EventKind};

const WORKLOADS: [&str; 2] = ["steady", "flash"];
/// Events of the side-by-side run with the differential peer (see [`bench`]).
const DIFFERENTIAL_EVENTS: usize = 2_000_000;

/// The settings and generator of a workload.
fn workload_config(name: &str, tick: u64) -> (Arc<EngineConfig>, GeneratorConfig) {
    let mut settings = Settings::default();
    settings.pipeline.tick = Duration::from_millis(tick);
    settings.pipeline.retention = Duration::from_secs(1);
    settings.pipeline.dedup_window = Duration::from_secs(1);
    let gen = GeneratorConfig {
        rate: 0,
        skus: 100_000,
        locations: 20,
        zipf: 1.1,
        hold: Duration::from_secs(1),
        open_holds: 20_000,
        flash_sale: if name == "flash" { 0.3 } else { 0.0 },
        ..settings.generator
    };
    let cfg = EngineConfig::from_settings(&settings).expect("benchmark settings are valid");
    (Arc::new(cfg), gen)
}

fn is_reservation(ev: &Event) -> bool {
    matches!(
        ev.kind,
        EventKind::Reserved { .. } | EventKind::Released { .. } | EventKind::Fulfilled { .. }
    )
}

/// The child process of a memory measurement: the workload generated inside the one worker as
/// it is admitted (no input held), optionally without its reservation events; prints the growth
/// of resident memory and what is live.
fn memory_child(name: &str, events: usize, tick: u64, reservations: bool) {
    let pace = Pace { tick };
    let (cfg, gen) = workload_config(name, tick);
    let before = rss_bytes();
    let clock = Arc::new(AtomicU64::new(BASE_MS));
    let c = Arc::clone(&clock);
    // One generator stands for both workers' (same seed stream, twice the rate of each).
    let mut g = Generator::new(&gen, 0, 1, Arc::new(move || c.load(Ordering::Relaxed)));
    let mut i = 0;
    let streamed = std::iter::from_fn(move || {
        clock.store(
            BASE_MS + (i / (2 * pace.batch())) as u64 * tick,
            Ordering::Relaxed,
        );
        i += 1;
        Some(g.next_event())
    })
    .take(events)
    .filter(move |ev| reservations || !is_reservation(ev));
    let run = run_engine(&cfg, vec![Box::new(streamed)], pace);
    let after = rss_bytes();
    println!(
        "MEMORY {} {} {} {}",
        after.saturating_sub(before),
        run.store.location_count(),
        run.store.reservation_count(),
        run.store.sku_count()
    );
}

/// The ledger state machine alone, one thread, no timely, no top-K: where the per-event work
/// goes (`engine-bench ledger WORKLOAD EVENTS`; for callgrind, see docs/benchmarks.md).
fn ledger_only(name: &str, events: usize, tick: u64) {
    let pace = Pace { tick };
    let (cfg, gen) = workload_config(name, tick);
    let share = workload(&gen, events, 0, 1, pace);
    let store = Arc::new(ViewStore::new(1, cfg.windows.clone(), cfg.top_k));
    let mut state = stockflow_dataflow::ledger::LedgerState::new(Arc::clone(&cfg), store, 1);
    let (mut out, mut batch) = (Vec::new(), Vec::with_capacity(pace.batch()));
    let mut emitted = 0usize;
    let t0 = Instant::now();
    let mut t = BASE_MS;
    let mut it = share.into_iter().peekable();
    while it.peek().is_some() {
        batch.extend(
            it.by_ref()
                .take(pace.batch())
                .map(|event| stockflow_dataflow::Record {
                    log_time: event.ts,
                    event,
                }),
        );
        // Log time follows the business time of the generator.
        let frontier = [stockflow_dataflow::Control::LogFrontier { worker: 0, at: t }];
        state.process(t, &mut batch, &frontier, &mut out);
        emitted += out.len();
        out.clear();
        t += pace.tick;
    }
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "ledger state machine alone ({name}, {events} events, 1 thread, no timely, no top-K): {:.0} events/s, {:.2} row changes per event",
        events as f64 / secs,
        emitted as f64 / events as f64
    );
}

/// Runs [`memory_child`] in a process of its own: (growth, keys, reservations, skus).
fn memory(name: &str, events: usize, tick: u64, reservations: bool) -> (u64, u64, u64, u64) {
    let out = Command::new(std::env::current_exe().expect("own path"))
        .args([
            "memory",
            name,
            &events.to_string(),
            &tick.to_string(),
            if reservations { "1" } else { "0" },
        ])
        .output()
        .expect("the memory run starts");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("MEMORY "))
        .unwrap_or_else(|| panic!("the memory run reports: {text} {:?}", out.status));
    let v: Vec<u64> = line
        .split(' ')
        .map(|x| x.parse().expect("numbers"))
        .collect();
    (v[0], v[1], v[2], v[3])
}

/// Checks the differential peer's answers against stockflow's views of the same run; returns
/// (stock levels, reservations, windows) compared.
fn verify(store: &ViewStore, dd: &differential::Answers) -> (usize, usize, usize) {
    let skus: std::collections::BTreeSet<&String> = dd
        .on_hand
        .keys()
        .chain(dd.reserved.keys())
        .map(|(s, _)| s)
        .collect();
    let mut stock_rows = 0;
    for sku in skus {
        let stock = store
            .stock(sku)
            .expect("every SKU of the peer is in the views");
        for row in stock.iter() {
            let key = (sku.clone(), row.location.to_string());
            let on_hand = dd.on_hand.get(&key).copied().unwrap_or(0);
            let reserved = dd.reserved.get(&key).copied().unwrap_or(0);
            assert_eq!(
                (row.on_hand, row.reserved),
                (on_hand, reserved),
                "{sku}/{}",
                row.location
            );
            stock_rows += 1;
        }
    }
    let mut reservations = 0;
    for (id, status) in &dd.status {
        match store.reservation(id) {
            Some(view) => {
                assert_eq!(view.row.status, *status, "status of {id}");
                reservations += 1;
            }
            None => assert!(
                !matches!(
                    status,
                    stockflow_types::rows::Status::Held
                        | stockflow_types::rows::Status::Insufficient
                ),
                "live reservation {id} missing from the views"
            ),
        }
    }
    assert_eq!(
        reservations,
        store.reservation_count(),
        "every view compared"
    );
    let mut windows = 0;
    for ((sku, loc, size, start), f) in &dd.windows {
        let w = store.windows(sku).expect("windows of the SKU");
        let w = w.read();
        let Some(figures) = w.windows.get(&(*size, *start, loc.as_str().into())) else {
            assert_eq!(f, &[0; 4], "window {sku}/{loc}/{size}/{start}");
            continue;
        };
        assert_eq!(
            [
                figures.units_sold,
                figures.units_received,
                figures.units_reserved,
                figures.orders
            ],
            *f,
            "window {sku}/{loc}/{size}/{start}"
        );
        windows += 1;
    }
    (stock_rows, reservations, windows)
}

/// The workload's events for `workers` workers, `events` in all.
fn shares(gen: &GeneratorConfig, events: usize, workers: usize, pace: Pace) -> Vec<Vec<Event>> {
    (0..workers)
        .map(|w| workload(gen, events / workers, w, workers, pace))
        .collect()
}

fn boxed(shares: &[Vec<Event>]) -> Vec<Input> {
    shares
        .iter()
        .map(|s| Box::new(s.clone().into_iter()) as Input)
        .collect()
}

/// One workload: every run on the same events, then the table.
fn bench(name: &str, events: usize, tick: u64) {
    let pace = Pace { tick };
    let (cfg, gen) = workload_config(name, tick);
    println!(
        "\n## {name}: {events} events, {} SKUs (Zipf {}), {} locations, flash sale {}, hold {:?}, \
         open holds {} per generator, retention and de-dup {:?}, windows {:?}, tick {tick} ms",
        gen.skus,
        gen.zipf,
        gen.locations,
        gen.flash_sale,
        gen.hold,
        gen.open_holds,
        Duration::from_millis(cfg.retention_ms),
        cfg.windows
            .iter()
            .map(|w| w.name.as_str())
            .collect::<Vec<_>>(),
    );

    // Memory, each in a fresh process: everything, then the same events without reservations.
    let (all, keys, kept, skus) = memory(name, events, tick, true);
    let (stock_only, stock_keys, _, _) = memory(name, events, tick, false);
    let per_key = stock_only as f64 / stock_keys.max(1) as f64;
    let per_res = all.saturating_sub(stock_only) as f64 / kept.max(1) as f64;
    println!(
        "memory, 1 worker: {keys} live (sku, location) keys of {skus} SKUs, {kept} reservations kept (live, or ended within the retention); \
         resident growth {:.1} MiB; without the reservation events {:.1} MiB over {stock_keys} keys = {per_key:.0} B per key \
         (stock, windows, de-dup ids); the reservations add {per_res:.0} B each",
        all as f64 / 1048576.0,
        stock_only as f64 / 1048576.0,
    );

    let two = shares(&gen, events, 2, pace);
    // One worker reads both shares as one log, in business-time order.
    let mut merged: Vec<Event> = two.iter().flatten().cloned().collect();
    merged.sort_by_key(|e| e.ts);
    let one = vec![merged];

    let mut fold = HashMapFold::default();
    let t0 = Instant::now();
    for ev in &one[0] {
        fold.apply(ev);
    }
    let fold_rate = events as f64 / t0.elapsed().as_secs_f64();

    let mut rows = Vec::new();
    for (workers, shares) in [(1usize, &one), (2, &two)] {
        let run = run_shares(&cfg, shares.clone(), pace);
        let mut checked = 0;
        for (sku, locs) in &fold.stock {
            let stock = run
                .store
                .stock(sku)
                .expect("every SKU of the fold is in the views");
            for (loc, level) in locs {
                assert_eq!(stock.get(loc).expect("location").on_hand, level.on_hand);
                checked += 1;
            }
        }
        println!(
            "  stockflow, {workers} worker(s): verified {checked} stock levels against the fold"
        );
        rows.push((workers, events as f64 / run.seconds));
    }
    drop(one);
    // What forecasting costs ingest (on by default: `[forecast]`): the same events, 2 workers,
    // with it off. The log time of these workloads spans minutes, not days, so no bucket
    // boundary is passed: this is the cost of feeding the features.
    let mut off = (*cfg).clone();
    off.forecast = None;
    let off_rate = events as f64 / run_shares(&Arc::new(off), two.clone(), pace).seconds;

    // The differential peer keeps every movement and every reservation (it has no horizons)
    // and runs at a few tens of thousands of events/s: it and stockflow run on the first
    // `DIFFERENTIAL_EVENTS` of the same events, and stockflow's views are checked against it.
    let prefix = events.min(DIFFERENTIAL_EVENTS);
    let head: Vec<Vec<Event>> = two
        .iter()
        .map(|s| s[..(prefix / 2).min(s.len())].to_vec())
        .collect();
    drop(two);
    let run = run_shares(&cfg, head.clone(), pace);
    let head_rate = prefix as f64 / run.seconds;
    let dd = differential::run(&cfg.windows, boxed(&head), pace);
    let dd_rate = prefix as f64 / dd.seconds;
    let (rows_checked, reservations, windows) = verify(&run.store, &dd.answers);
    println!(
        "  first {prefix} events, 2 workers: verified {rows_checked} stock rows, {reservations} reservations \
         and {windows} windows of stockflow against the differential peer"
    );

    println!();
    println!("{:<52} {:>12} {:>10}", "run", "events/s", "ratio");
    println!(
        "{:<52} {:>12.0} {:>10}",
        "HashMap fold of stock only, 1 thread", fold_rate, "1.00x"
    );
    for (workers, rate) in &rows {
        println!(
            "{:<52} {:>12.0} {:>9.2}x",
            format!("stockflow, {workers} worker(s)"),
            rate,
            rate / fold_rate,
        );
    }
    println!(
        "{:<52} {:>12.0} {:>10}",
        format!("differential peer, 2 workers, first {prefix}"),
        dd_rate,
        "1.00x"
    );
    println!(
        "{:<52} {:>12.0} {:>9.2}x",
        format!("stockflow, 2 workers, first {prefix}"),
        head_rate,
        head_rate / dd_rate
    );
    let rate = rows[1].1;
    println!(
        "{:<52} {:>12.0} {:>9.2}x",
        "stockflow, 2 workers, forecasting off",
        off_rate,
        off_rate / fold_rate
    );
    println!(
        "forecasting's cost to ingest, 2 workers: {:+.1}% ({rate:.0} against {off_rate:.0} events/s)",
        (off_rate / rate - 1.0) * 100.0
    );
    summary::record(
        &format!("engine, {name} workload, 2 workers: forecasting on vs off"),
        &format!("{rate:.0} events/s"),
        &format!("{off_rate:.0} events/s"),
        rate / off_rate,
        "≥ 0.87x (adds ≤ 15%)",
    );

    summary::record(
        &format!("engine, {name} workload, 2 workers vs a 1-thread HashMap fold of stock only"),
        &format!("{rate:.0} events/s"),
        &format!("{fold_rate:.0} events/s"),
        rate / fold_rate,
        "≥ 1,000,000 events/s and ≥ 0.33x",
    );
    summary::record(
        &format!("engine, {name} workload, first {prefix} events, 2 workers vs the differential peer, 2 workers"),
        &format!("{head_rate:.0} events/s"),
        &format!("{dd_rate:.0} events/s"),
        head_rate / dd_rate,
        "≥ 5x",
    );
    summary::record(
        &format!(
            "engine memory, {name} workload: per live (sku, location) key / per reservation kept"
        ),
        &format!("{per_key:.0} B / {per_res:.0} B"),
        "1,000 B per key (target)",
        per_key / 1000.0,
        "≤ 1,000 B / ≤ 300 B",
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("memory") {
        let parse = |i: usize| args[i].parse::<usize>().expect("a number");
        memory_child(&args[1], parse(2), parse(3) as u64, args[4] == "1");
        return;
    }
    let mode = args.first().map(String::as_str);
    if matches!(mode, Some("stockflow" | "differential")) {
        // One engine alone, for profiles: WORKLOAD EVENTS [WORKERS, default 2].
        let name = args.get(1).map_or("steady", String::as_str);
        let events = args
            .get(2)
            .and_then(|a| a.parse().ok())
            .unwrap_or(1_000_000);
        let workers: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(2);
        let pace = Pace { tick: 1 };
        let (cfg, gen) = workload_config(name, 1);
        let shares = shares(&gen, events, workers, pace);
        let (label, seconds) = if mode == Some("stockflow") {
            ("stockflow", run_shares(&cfg, shares, pace).seconds)
        } else {
            let run = differential::run(&cfg.windows, boxed(&shares), pace);
            ("differential peer", run.seconds)
        };
        println!(
            "{label}, {workers} worker(s), {name}: {:.0} events/s",
            events as f64 / seconds
        );
        return;
    }
    if args.first().map(String::as_str) == Some("ledger") {
        let events = args
            .get(2)
            .and_then(|a| a.parse().ok())
            .unwrap_or(1_000_000);
        ledger_only(args.get(1).map_or("steady", String::as_str), events, 1);
        return;
    }
    let events: usize = args
        .first()
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000_000);
    let tick: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1);
    let which = args.get(2).map(String::as_str).unwrap_or("all");
    println!("engine-bench: stockflow's dataflow beside a differential-dataflow formulation and a HashMap fold");
    for name in WORKLOADS {
        if which == "all" || which == name {
            bench(name, events, tick);
        }
    }
}
