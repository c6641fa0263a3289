//! The production path end to end, against the real servers `scripts/services.sh` starts (a
//! Kafka-protocol broker and ClickHouse on loopback): events produced to Kafka (several
//! partitions, duplicates, terminal events before their reservation, bad records) → the real
//! binary → HTTP answers and ClickHouse rows, both compared with the reference recomputation of
//! the oracle tests; the dead-letter topic holds the bad records with their reasons. Then the
//! failures: a clean restart, SIGKILL mid-stream, ClickHouse stopped for a while.
//!
//! Every test uses its own topics, consumer group and ClickHouse database. They run one at a
//! time (one of them stops ClickHouse).

#[path = "e2e/mod.rs"]
mod e2e;

use e2e::*;
use std::time::{Duration, Instant};

// ------------------------------------------------------------------------------------------
// The tests.
// ------------------------------------------------------------------------------------------

/// A backlog produced before the start, more while running; then a clean restart replays
/// everything to the same answers and sends no dead letter twice.
#[test]
fn kafka_in_http_and_clickhouse_out_exactly() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let names = Names::new("exact");
    let mut w = Workload::generate(1, 1500, "a");
    let p = Pipeline::start(&names); // creates the topics
    produce(&names, &w.records);
    p.wait_ready();
    let more = Workload::generate(2, 1500, "b");
    produce(&names, &more.records);
    w.extend(more);
    check_all(&p, &names, &w);
    check_dead_letters(&names, &w, true);
    p.lint_metrics();

    p.terminate();
    let p = Pipeline::start(&names);
    p.wait_ready();
    check_all(&p, &names, &w);
    check_dead_letters(&names, &w, true);
    drop(p);
    names.clean_up();
}

/// SIGKILL while reading a stream, then a restart: nothing lost, nothing counted twice.
#[test]
fn sigkill_mid_stream_then_restart() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let names = Names::new("kill");
    let p = Pipeline::start(&names);
    p.wait_ready();
    // Produce in the background while the pipeline reads, and kill it in the middle.
    let producing = {
        let names = Names {
            prefix: names.prefix.clone(),
        };
        std::thread::spawn(move || {
            let mut w = Workload::default();
            for part in 0..6 {
                let chunk = Workload::generate(10 + part, 500, &format!("k{part}"));
                produce(&names, &chunk.records);
                w.extend(chunk);
                std::thread::sleep(Duration::from_millis(100));
            }
            w
        })
    };
    std::thread::sleep(Duration::from_millis(350));
    p.kill9(); // some of it read, some written to ClickHouse, some neither
    let mut w = producing.join().expect("producer thread");
    let rest = Workload::generate(20, 800, "k9");
    produce(&names, &rest.records);
    w.extend(rest);
    // The replay (3,500 records) is larger than the sink's buffer: reading must go on while the
    // sink holds its writes until the backlog is absorbed.
    let p = Pipeline::start_with(
        &names,
        &["clickhouse.buffer_rows=500", "clickhouse.batch_rows=500"],
    );
    p.wait_ready();
    check_all(&p, &names, &w);
    // A crash may resend the dead letters of records read after the last commit; none is lost.
    check_dead_letters(&names, &w, false);
    drop(p);
    names.clean_up();
}

/// ClickHouse stops for a while: the pipeline keeps serving HTTP, reports ClickHouse as
/// unreachable, and writes everything once it is back.
#[test]
fn clickhouse_outage_loses_nothing() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let names = Names::new("outage");
    // A small buffer: during the outage the pipeline must stop reading Kafka, not grow.
    let p = Pipeline::start_with(
        &names,
        &["clickhouse.buffer_rows=300", "clickhouse.batch_rows=300"],
    );
    let mut w = Workload::generate(30, 1000, "o1");
    let first_phase = w.records.len();
    produce(&names, &w.records);
    p.wait_ready();
    check_all(&p, &names, &w);

    struct Restart;
    impl Drop for Restart {
        fn drop(&mut self) {
            services("start-clickhouse"); // also when the test fails: the others need it
        }
    }
    services("stop-clickhouse");
    let restart = Restart;
    let more = Workload::generate(31, 5000, "o2");
    produce(&names, &more.records);
    w.extend(more);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = p.get("/readyz");
        if status == 503 && body["detail"].as_str().unwrap_or("").contains("ClickHouse") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz did not report ClickHouse down: {status} {body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Backpressure: the pipeline reads some of the new records, then stops with the rest left
    // in Kafka: the sink folds changes into at most about batch_rows pending rows before its
    // first failed write, then holds the rest as they come (buffer_rows, 300), and the workers
    // read at most buffer_rows records (per worker, 2) whose changes it has not absorbed.
    // Lookups still answer.
    let read_so_far = || -> f64 {
        let metrics = ureq::get(&format!("{}/metrics", p.base))
            .call()
            .unwrap()
            .into_string()
            .unwrap();
        metrics
            .lines()
            .filter(|l| {
                l.starts_with("stockflow_events_ingested_total{")
                    || l.starts_with("stockflow_events_rejected_total{")
            })
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum()
    };
    let before = first_phase as f64;
    let (mut read, mut stable_since) = (read_so_far(), Instant::now());
    let deadline = Instant::now() + Duration::from_secs(90);
    while read <= before || stable_since.elapsed() < Duration::from_secs(3) {
        assert!(
            Instant::now() < deadline,
            "reading did not settle: {read} records read"
        );
        std::thread::sleep(Duration::from_millis(200));
        let now = read_so_far();
        if now != read {
            (read, stable_since) = (now, Instant::now());
        }
    }
    eprintln!(
        "read {read} of {} records, {before} before the outage",
        w.records.len()
    );
    assert!(
        read <= before + 2500.0 && read < w.records.len() as f64,
        "read {read} of {} records ({before} before the outage) while ClickHouse was down",
        w.records.len()
    );
    assert_eq!(p.get("/v1/stock/S0").0, 200);
    drop(restart);
    p.wait_ready();
    check_all(&p, &names, &w);
    check_dead_letters(&names, &w, true);
    drop(p);
    names.clean_up();
}
