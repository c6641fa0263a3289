//! Engine-only ingest throughput: the dataflow with 1 and 2 workers against a single-thread
//! `HashMap` fold of the same events, in the same run, plus resident memory per live
//! (sku, location) key.
//!
//! `cargo run --release -p stockflow-benchmarks --bin engine-bench -- [EVENTS]`

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use stockflow_benchmarks::engine::{run_engine, run_shares, workload, Pace, BASE_MS};
use stockflow_benchmarks::{rss_bytes, summary, HashMapFold};
use stockflow_dataflow::views::ViewStore;
use stockflow_dataflow::EngineConfig;
use stockflow_ingest::generator::Generator;
use stockflow_types::config::{GeneratorConfig, Settings};
use stockflow_types::event::Event;

fn main() {
    let events: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(4_000_000);
    let tick: u64 = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1);
    let pace = Pace { tick };
    let mut settings = Settings::default();
    settings.pipeline.tick = std::time::Duration::from_millis(tick);
    let gen = GeneratorConfig {
        rate: 0,
        ..settings.generator
    };
    let cfg = Arc::new(EngineConfig::from_settings(&settings).expect("defaults are valid"));
    println!(
        "engine-bench: {events} events, {} SKUs (Zipf {}), {} locations, windows {:?}, tick {tick} ms = {} events per tick per worker",
        gen.skus,
        gen.zipf,
        gen.locations,
        cfg.windows.iter().map(|w| w.name.as_str()).collect::<Vec<_>>(),
        pace.batch()
    );

    // Memory first, before other runs have grown (and fragmented) the heap.
    // Memory: generate the events inside the worker as they are admitted (no input held) and
    // divide the growth of resident memory by the live (sku, location) keys.
    let before = rss_bytes();
    let clock = Arc::new(AtomicU64::new(BASE_MS));
    let c = Arc::clone(&clock);
    let mut g = Generator::new(&gen, 0, 1, Arc::new(move || c.load(Ordering::Relaxed)));
    let mut i = 0;
    let streamed = std::iter::from_fn(move || {
        clock.store(pace.ts(i), Ordering::Relaxed);
        i += 1;
        Some(g.next_event())
    });
    let run = run_engine(&cfg, vec![Box::new(streamed.take(events))], pace);
    let after = rss_bytes();
    let keys = run.store.location_count();
    println!(
        "memory after {events} events on 1 worker: {} live (sku, location) keys, {} SKUs, {} reservations held; \
         resident growth {:.1} MiB = {:.0} bytes per key (views, reservations, windows and de-dup ids included)",
        keys,
        run.store.sku_count(),
        run.store.reservation_count(),
        after.saturating_sub(before) as f64 / 1048576.0,
        after.saturating_sub(before) as f64 / keys.max(1) as f64,
    );

    // The ledger state machine alone, one thread, no timely: where the per-event work goes.
    {
        let share = workload(&gen, events, 0, 1, pace);
        let store = Arc::new(ViewStore::new(1, cfg.windows.clone(), cfg.top_k));
        let mut state = stockflow_dataflow::ledger::LedgerState::new(Arc::clone(&cfg), store, 1);
        let mut out = Vec::new();
        let mut batch = Vec::with_capacity(pace.batch());
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
            "  ledger state machine alone (no timely, no top-K): {:.0} events/s, {:.2} row changes per event",
            events as f64 / secs,
            emitted as f64 / events as f64
        );
    }

    if std::env::var_os("LEDGER_ONLY").is_some() {
        return;
    }
    let mut rows = Vec::new();
    let mut baseline = 0.0;
    for workers in [1usize, 2] {
        let shares: Vec<Vec<Event>> = (0..workers)
            .map(|w| workload(&gen, events / workers, w, workers, pace))
            .collect();
        // Baseline: the same events folded by one thread, in business-time order.
        let mut ordered: Vec<&Event> = shares.iter().flatten().collect();
        ordered.sort_by_key(|e| e.ts);
        let mut fold = HashMapFold::default();
        let t0 = Instant::now();
        for ev in ordered {
            fold.apply(ev);
        }
        let fold_rate = events as f64 / t0.elapsed().as_secs_f64();
        if workers == 1 {
            baseline = fold_rate;
        }
        let run = run_shares(&cfg, shares, pace);
        let rate = events as f64 / run.seconds;
        // The views must agree with the fold on every stock level.
        let mut checked = 0;
        for (sku, locs) in &fold.stock {
            let stock = run
                .store
                .stock(sku)
                .expect("every SKU of the fold is in the views");
            for (loc, on_hand) in locs {
                let row = stock.get(loc).expect("location present");
                assert_eq!(row.on_hand, on_hand.on_hand, "{sku}/{loc}");
                checked += 1;
            }
        }
        println!("  {workers} worker(s): verified {checked} stock levels against the fold; {} reservations in the views", run.store.reservation_count());
        rows.push((workers, rate, fold_rate));
    }
    println!();
    println!("{:<34} {:>14} {:>16}", "run", "events/s", "vs HashMap fold");
    println!(
        "{:<34} {:>14.0} {:>16}",
        "HashMap fold, 1 thread (baseline)", baseline, "1.00x"
    );
    for (workers, rate, fold) in &rows {
        println!(
            "{:<34} {:>14.0} {:>15.2}x",
            format!("stockflow dataflow, {workers} worker(s)"),
            rate,
            rate / fold
        );
    }
    if let Some((_, rate, fold)) = rows.iter().find(|r| r.0 == 2) {
        summary::record(
            "engine only, 2 workers, every view vs a 1-thread HashMap fold of stock only",
            &format!("{rate:.0} events/s"),
            &format!("{fold:.0} events/s"),
            rate / fold,
            "≥ 1,000,000 events/s",
        );
    }
}
