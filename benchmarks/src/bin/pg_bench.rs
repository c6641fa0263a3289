//! The transactional baseline: the same workload applied to PostgreSQL 15 the way a competent
//! engineer would without stockflow (one transaction per event, row locks, first come first
//! served by arrival, several connections), against stockflow's dataflow on the same events in
//! the same run.
//!
//! `cargo build --release -p stockflow-benchmarks && target/release/pg-bench [EVENTS] [CONNECTIONS]`
//!
//! Three key distributions: uniform SKUs, Zipf 1.2, and a flash sale (Zipf 1.2 with 30% of
//! reservations on one SKU). PostgreSQL comes from `scripts/services.sh postgres` (Debian's 15,
//! on loopback). Sessions use `synchronous_commit = off`: the events are durable in Kafka before
//! either design sees them, so neither needs its own flush per event to lose nothing (set
//! `PG_BENCH_SYNC=on` to measure with a flush per commit).
//!
//! stockflow runs on 2 timely workers with the engine-bench driver (events admitted 1,000 per
//! worker per 1 ms tick); its event count is at least 400,000 (the PostgreSQL run's events are
//! its first ones) so that start-up does not dominate.

use postgres::{Client, NoTls, Statement};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;
use stockflow_benchmarks::engine::{run_shares, workload, Pace};
use stockflow_benchmarks::summary;
use stockflow_dataflow::EngineConfig;
use stockflow_types::config::{GeneratorConfig, Settings};
use stockflow_types::event::{Event, EventKind};

const SCHEMA: &str = "
DROP TABLE IF EXISTS stock, reservations, seen;
CREATE TABLE stock (
    sku text NOT NULL, location text NOT NULL,
    on_hand bigint NOT NULL DEFAULT 0, reserved bigint NOT NULL DEFAULT 0,
    count_ts bigint,
    PRIMARY KEY (sku, location));
CREATE TABLE reservations (
    id text PRIMARY KEY, sku text NOT NULL, location text,
    qty bigint, status text NOT NULL, expires_at bigint);
CREATE TABLE seen (event_id text PRIMARY KEY);
";

fn url() -> String {
    let port = std::env::var("STOCKFLOW_POSTGRES_PORT").unwrap_or_else(|_| "55432".into());
    format!("host=127.0.0.1 port={port} user=postgres dbname=postgres")
}

/// The prepared statements of one connection.
struct Stmts {
    seen: Statement,
    movement: Statement,
    count: Statement,
    ensure: Statement,
    claim: Statement,
    take: Statement,
    status: Statement,
    lock_res: Statement,
    orphan: Statement,
    give_back: Statement,
}

impl Stmts {
    fn prepare(c: &mut Client) -> Stmts {
        let mut p = |sql: &str| c.prepare(sql).expect("statement prepares");
        Stmts {
            // Idempotency: an event id applies once.
            seen: p("INSERT INTO seen VALUES ($1) ON CONFLICT DO NOTHING"),
            // A movement at or before the latest count is superseded by it.
            movement: p("INSERT INTO stock AS s (sku, location, on_hand) VALUES ($1, $2, $3)
                 ON CONFLICT (sku, location) DO UPDATE SET on_hand = s.on_hand + EXCLUDED.on_hand
                 WHERE s.count_ts IS NULL OR s.count_ts < $4"),
            count: p("INSERT INTO stock AS s (sku, location, on_hand, count_ts) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (sku, location) DO UPDATE SET on_hand = EXCLUDED.on_hand, count_ts = EXCLUDED.count_ts
                 WHERE s.count_ts IS NULL OR s.count_ts < EXCLUDED.count_ts"),
            ensure: p("INSERT INTO stock (sku, location) VALUES ($1, $2) ON CONFLICT DO NOTHING"),
            // The reservation's row first (a terminal event may have come before it).
            claim: p("INSERT INTO reservations (id, sku, location, qty, status, expires_at)
                 VALUES ($1, $2, $3, $4, 'pending', $5) ON CONFLICT DO NOTHING"),
            // First come first served: hold only if what is available covers it (row lock).
            take: p("UPDATE stock SET reserved = reserved + $3
                 WHERE sku = $1 AND location = $2 AND on_hand - reserved >= $3"),
            status: p("UPDATE reservations SET status = $2 WHERE id = $1"),
            lock_res: p("SELECT sku, location, qty, status FROM reservations WHERE id = $1 FOR UPDATE"),
            orphan: p("INSERT INTO reservations (id, sku, status) VALUES ($1, $2, $3)"),
            // Ends a hold; a fulfilment also ships it.
            give_back: p("UPDATE stock SET reserved = reserved - $3, on_hand = on_hand - $4
                 WHERE sku = $1 AND location = $2"),
        }
    }
}

/// One event, one transaction.
fn apply(c: &mut Client, s: &Stmts, ev: &Event) -> Result<(), postgres::Error> {
    let mut tx = c.transaction()?;
    if tx.execute(&s.seen, &[&ev.event_id])? == 0 {
        return tx.commit();
    }
    let ts = ev.ts as i64;
    match &ev.kind {
        EventKind::Received { location, qty } | EventKind::Adjusted { location, qty } => {
            tx.execute(&s.movement, &[&ev.sku, location, qty, &ts])?;
        }
        EventKind::Sold { location, qty } => {
            tx.execute(&s.movement, &[&ev.sku, location, &-qty, &ts])?;
        }
        EventKind::Counted { location, qty } => {
            tx.execute(&s.count, &[&ev.sku, location, qty, &ts])?;
        }
        EventKind::Listed { .. } => {}
        EventKind::Reserved {
            reservation_id,
            location,
            qty,
            expires_at,
        } => {
            let expires = *expires_at as i64;
            let claimed = tx.execute(
                &s.claim,
                &[reservation_id, &ev.sku, location, qty, &expires],
            )?;
            if claimed == 1 {
                tx.execute(&s.ensure, &[&ev.sku, location])?;
                let held = tx.execute(&s.take, &[&ev.sku, location, qty])? == 1;
                let status = if held { "held" } else { "insufficient" };
                tx.execute(&s.status, &[reservation_id, &status])?;
            }
        }
        EventKind::Released { reservation_id } | EventKind::Fulfilled { reservation_id } => {
            let fulfilled = matches!(ev.kind, EventKind::Fulfilled { .. });
            let end = if fulfilled { "fulfilled" } else { "released" };
            match tx.query_opt(&s.lock_res, &[reservation_id])? {
                None => {
                    tx.execute(&s.orphan, &[reservation_id, &ev.sku, &end])?;
                }
                Some(row) => {
                    let status: &str = row.get(3);
                    if status == "held" || status == "insufficient" {
                        let (sku, location): (String, String) = (row.get(0), row.get(1));
                        let qty: i64 = row.get(2);
                        let held = if status == "held" { qty } else { 0 };
                        let shipped = if fulfilled { qty } else { 0 };
                        if held != 0 || shipped != 0 {
                            tx.execute(&s.give_back, &[&sku, &location, &held, &shipped])?;
                        }
                        tx.execute(&s.status, &[reservation_id, &end])?;
                    }
                }
            }
        }
    }
    tx.commit()
}

/// Applies `events` in order over `connections` connections (each takes the next event as it
/// becomes free, as a pool of request handlers would). Returns events/s and lock conflicts
/// retried.
fn postgres_run(events: &Arc<Vec<Event>>, connections: usize, sync: &str) -> (f64, usize) {
    let mut admin = Client::connect(&url(), NoTls).expect("PostgreSQL answers");
    admin.batch_execute(SCHEMA).expect("schema");
    let next = Arc::new(AtomicUsize::new(0));
    let retries = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let handles: Vec<_> = (0..connections)
        .map(|_| {
            let (events, next, retries) =
                (Arc::clone(events), Arc::clone(&next), Arc::clone(&retries));
            let sync = sync.to_string();
            std::thread::spawn(move || {
                let mut c = Client::connect(&url(), NoTls).expect("PostgreSQL answers");
                c.batch_execute(&format!("SET synchronous_commit = {sync}"))
                    .expect("session setting");
                let s = Stmts::prepare(&mut c);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(ev) = events.get(i) else { break };
                    // Two transactions creating the same new row can collide on its key:
                    // retry, as an application would.
                    while let Err(e) = apply(&mut c, &s, ev) {
                        assert!(
                            e.as_db_error().is_some_and(|d| {
                                d.code() == &postgres::error::SqlState::UNIQUE_VIOLATION
                                    || d.code() == &postgres::error::SqlState::T_R_DEADLOCK_DETECTED
                            }),
                            "{e}"
                        );
                        retries.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("connection thread");
    }
    let rate = events.len() as f64 / start.elapsed().as_secs_f64();
    (rate, retries.load(Ordering::Relaxed))
}

fn main() {
    let mut args = std::env::args().skip(1);
    let events: usize = args.next().map_or(60_000, |a| a.parse().expect("EVENTS"));
    let connections: usize = args.next().map_or(8, |a| a.parse().expect("CONNECTIONS"));
    let sync = std::env::var("PG_BENCH_SYNC").unwrap_or_else(|_| "off".into());
    let engine_events = events.max(400_000);
    let pace = Pace { tick: 1 };
    let settings = Settings::default();
    let cfg = Arc::new(EngineConfig::from_settings(&settings).expect("defaults are valid"));
    let base = GeneratorConfig {
        rate: 0,
        ..settings.generator
    };
    println!(
        "pg-bench: PostgreSQL 15 with {events} events, {connections} connections, synchronous_commit={sync}; \
         stockflow dataflow, 2 workers, {engine_events} events; {} SKUs, {} locations",
        base.skus, base.locations
    );
    let scenarios = [
        ("uniform keys", 0.0, 0.0),
        ("Zipf 1.2", 1.2, 0.0),
        (
            "flash sale (Zipf 1.2, 30% of reservations on one SKU)",
            1.2,
            0.3,
        ),
    ];
    let mut rows = Vec::new();
    for (name, zipf, flash_sale) in scenarios {
        let gen = GeneratorConfig {
            zipf,
            flash_sale,
            ..base.clone()
        };
        let shares: Vec<Vec<Event>> = (0..2)
            .map(|w| workload(&gen, engine_events / 2, w, 2, pace))
            .collect();
        // PostgreSQL gets the first events of both workers, in business-time order.
        let mut ordered: Vec<Event> = shares
            .iter()
            .flat_map(|s| s.iter().take(events / 2).cloned())
            .collect();
        ordered.sort_by_key(|e| e.ts);
        let (pg, retries) = postgres_run(&Arc::new(ordered), connections, &sync);
        let run = run_shares(&cfg, shares, pace);
        let sf = engine_events as f64 / run.seconds;
        println!(
            "  {name}: PostgreSQL {pg:.0} events/s ({retries} transactions retried), stockflow {sf:.0} events/s"
        );
        rows.push((name, sf, pg));
    }
    println!();
    println!("| scenario | stockflow events/s (2 workers) | PostgreSQL events/s ({connections} connections) | ratio |");
    println!("|---|---:|---:|---:|");
    for (name, sf, pg) in &rows {
        println!("| {name} | {sf:.0} | {pg:.0} | {:.1}x |", sf / pg);
        summary::record(
            &format!("ingest vs PostgreSQL, {name}"),
            &format!("{sf:.0} events/s"),
            &format!("{pg:.0} events/s"),
            sf / pg,
            if name.starts_with("uniform") {
                "≥ 20x"
            } else {
                "≥ 100x"
            },
        );
    }
}
