//! End-to-end ingest from Kafka, side by side with a plain rdkafka consumer on the same broker
//! and the same messages, plus the ClickHouse sink's rate.
//!
//! `cargo build --release -p stockflow -p stockflow-benchmarks &&
//!  target/release/kafka-bench [EVENTS] [WORKERS]`
//!
//! 1. Starts the services (`scripts/services.sh`), produces EVENTS records of the generator's
//!    workload (1% duplicates, no malformed records: see `sets` below) into fresh topics of 4
//!    partitions with `stockflow produce`.
//! 2. Baselines: one rdkafka `BaseConsumer` per worker thread, the same partition split as
//!    stockflow, reads every message from the beginning and discards it; and the hand-written
//!    server (`handwritten kafka …`: one consumer decoding into a `HashMap` of stock).
//! 3. stockflow (the release binary, WORKERS workers) reads the same topics from the beginning:
//!    once without a sink, once writing to ClickHouse. The time runs from the process start
//!    until `/readyz` says the backlog is absorbed (and, with ClickHouse, until the sink has
//!    written everything); the start-up of the process is included.
//! 4. Freshness: while the pipeline with the sink runs under demo traffic at half the rate it
//!    sustained reading the backlog, then at a light 2,000 records/s, 100 probe events are produced one at a time and timed until
//!    `GET /v1/stock/freshness-probe/{location}` has them; the same for a plain consumer
//!    positioned at the end of the partitions (the broker's own latency), under the same traffic.
//!
//! The broker is tansu on loopback, not Apache Kafka: only the ratio means something.

use rdkafka::consumer::Consumer;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientConfig;
use rdkafka::Message;
use std::process::{Child, Command};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use stockflow_benchmarks::kafka::{
    bin, brokers, cpu_secs, metric, non_committing_consumer, repo, services_up, traffic,
};
use stockflow_benchmarks::{sibling, start_serving, summary};

const PARTITIONS: i32 = 4;
/// Records/s of demo traffic for the light-load freshness probes.
const LIGHT_LOAD: u64 = 2_000;

fn main() {
    let mut args = std::env::args().skip(1);
    let events: u64 = args.next().map_or(500_000, |a| a.parse().expect("EVENTS"));
    let workers: usize = args.next().map_or(2, |a| a.parse().expect("WORKERS"));
    services_up();

    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // KAFKA_BENCH_REUSE=PREFIX reads topics an earlier run produced (EVENTS must match).
    let reuse = std::env::var("KAFKA_BENCH_REUSE").ok();
    let prefix = reuse.clone().unwrap_or_else(|| format!("bench_{stamp}"));
    let sets = |extra: &[String]| -> Vec<String> {
        let mut v = vec![
            format!("kafka.brokers={}", brokers()),
            format!("kafka.inventory_topic={prefix}_inventory"),
            format!("kafka.orders_topic={prefix}_orders"),
            format!("kafka.dead_letter_topic={prefix}_dlq"),
            format!("kafka.create_partitions={PARTITIONS}"),
            // No malformed records (for `stockflow produce`): tansu 0.6.0 serves every fetch
            // ~3.5x slower once it stores a record with headers, and dead letters carry headers;
            // the runs after stockflow's first would be slowed by the broker, not by themselves.
            "generator.bad_ratio=0".into(),
        ];
        v.extend_from_slice(extra);
        v
    };

    if reuse.is_none() {
        println!("producing {events} records into {prefix}_inventory / {prefix}_orders ({PARTITIONS} partitions each)");
        let t = Instant::now();
        run_to_end(
            Command::new(bin())
                .arg("produce")
                .arg("--rate=0")
                .arg(format!("--limit={events}"))
                .args(sets(&[]).iter().flat_map(|s| ["--set", s.as_str()])),
        );
        println!("  produced in {:.1} s", t.elapsed().as_secs_f64());
    }

    let topics = [format!("{prefix}_inventory"), format!("{prefix}_orders")];
    let baseline = plain_consumer(&topics, workers, events);
    println!(
        "  plain consumer: {:.0} records/s",
        events as f64 / baseline.secs
    );
    let bare = stockflow(
        &sets(&[
            format!("kafka.group_id={prefix}_bare"),
            format!("pipeline.workers={workers}"),
            "clickhouse.enabled=false".into(),
        ]),
        events,
        None,
        false,
    );
    let handwritten = handwritten(&topics, events, workers);
    let db = format!("{prefix}_db");
    let with_sink = stockflow(
        &sets(&[
            format!("kafka.group_id={prefix}_ch"),
            format!("pipeline.workers={workers}"),
            format!("clickhouse.database={db}"),
        ]),
        events,
        Some(&db),
        true,
    );

    println!();
    println!("| scenario ({events} records, {workers} workers, tansu on loopback) | records/s | ratio | CPU µs per record | ratio |");
    println!("|---|---:|---:|---:|---:|");
    let per = |r: &Run| r.cpu * 1e6 / events as f64;
    let row = |name: &str, r: &Run| {
        // CPU time comes in clock ticks (10 ms): a tiny run may show none for the baseline.
        let cpu_ratio = if baseline.cpu > 0.0 {
            format!("{:.1}x", per(r) / per(&baseline))
        } else {
            "n/a".into()
        };
        println!(
            "| {name} | {:.0} | {:.2}x | {:.1} | {cpu_ratio} |",
            events as f64 / r.secs,
            baseline.secs / r.secs,
            per(r),
        );
    };
    row("plain rdkafka consumer, read and discard", &baseline);
    row(
        "hand-written: rdkafka consumers, HashMap of stock, warp",
        &handwritten,
    );
    row("stockflow, no sink (HTTP views only)", &bare);
    row("stockflow with the ClickHouse sink", &with_sink);
    summary::record(
        "Kafka ingest with the ClickHouse sink vs a plain consumer (tansu-bound)",
        &format!("{:.0} records/s", events as f64 / with_sink.secs),
        &format!("{:.0} records/s", events as f64 / baseline.secs),
        baseline.secs / with_sink.secs,
        "≥ 0.7x",
    );
    summary::record(
        "Kafka ingest, stockflow (no sink) vs the hand-written consumer (tansu-bound)",
        &format!("{:.0} records/s", events as f64 / bare.secs),
        &format!("{:.0} records/s", events as f64 / handwritten.secs),
        handwritten.secs / bare.secs,
        "",
    );
    // CPU time comes in clock ticks: a short run may have none to show for the baseline.
    if handwritten.cpu > 0.0 {
        summary::record(
            "Kafka ingest, CPU per record: stockflow (no sink) vs the hand-written consumer",
            &format!("{:.1} µs", per(&bare)),
            &format!("{:.1} µs", per(&handwritten)),
            per(&bare) / per(&handwritten),
            "",
        );
    }
    let q = |f: &[f64], p: f64| f[((f.len() - 1) as f64 * p).round() as usize];
    for (probe_rate, load, f) in with_sink.freshness.iter().flatten() {
        let broker = broker_latency(&topics, &sets(&[]), *probe_rate);
        println!();
        println!("| freshness at {load}: probe produced → seen ({} probes, demo traffic at {probe_rate} records/s) | p50 ms | p99 ms | max ms |", f.len());
        println!("|---|---:|---:|---:|");
        println!(
            "| plain consumer polling the partition (the broker's own latency) | {:.1} | {:.1} | {:.1} |",
            q(&broker, 0.5),
            q(&broker, 0.99),
            broker[broker.len() - 1]
        );
        println!(
            "| stockflow: visible in `GET /v1/stock/{{sku}}/{{location}}` | {:.1} | {:.1} | {:.1} |",
            q(f, 0.5),
            q(f, 0.99),
            f[f.len() - 1]
        );
        for (p, target) in [(0.5, "≤ 5 ms"), (0.99, "≤ 50 ms")] {
            summary::record(
                &format!(
                    "freshness p{} at {load} ({probe_rate} records/s) through tansu, vs a plain consumer's receipt",
                    p * 100.0
                ),
                &format!("{:.1} ms", q(f, p)),
                &format!("{:.1} ms", q(&broker, p)),
                q(f, p) / q(&broker, p),
                target,
            );
        }
    }
    // The run's database is of no further use.
    let _ =
        ureq::post("http://127.0.0.1:8123").send_string(&format!("DROP DATABASE IF EXISTS {db}"));
    if let Some((rows, insert_secs)) = with_sink.sink {
        println!();
        println!(
            "ClickHouse sink: {rows} rows written ({:.1} rows per record after consolidation), {:.0} rows/s over the run, {:.0} rows/s while inserting ({:.2} s in inserts)",
            rows as f64 / events as f64,
            rows as f64 / with_sink.secs,
            rows as f64 / insert_secs,
            insert_secs
        );
    }
}

fn run_to_end(cmd: &mut Command) {
    let status = cmd.status().expect("runs");
    assert!(status.success(), "{cmd:?} failed");
}

/// One consumer per worker reads every message of `topics` and discards it.
fn plain_consumer(topics: &[String; 2], workers: usize, events: u64) -> Run {
    let started = Instant::now();
    let cpu0 = cpu_secs(std::process::id());
    let threads: Vec<_> = (0..workers)
        .map(|w| {
            let topics = topics.clone();
            std::thread::spawn(move || {
                let consumer = non_committing_consumer(&brokers(), "bench-plain");
                let mut tpl = TopicPartitionList::new();
                for t in &topics {
                    for p in (0..PARTITIONS).filter(|p| *p as usize % workers == w) {
                        tpl.add_partition_offset(t, p, Offset::Beginning).unwrap();
                    }
                }
                consumer.assign(&tpl).expect("assign");
                let mut ends = 0;
                for t in &topics {
                    for p in (0..PARTITIONS).filter(|p| *p as usize % workers == w) {
                        ends += consumer
                            .fetch_watermarks(t, p, Duration::from_secs(10))
                            .expect("watermarks")
                            .1;
                    }
                }
                let mut n = 0i64;
                let mut bytes = 0usize;
                while n < ends {
                    match consumer.poll(Duration::from_millis(100)) {
                        Some(Ok(m)) => {
                            bytes += m.payload().map_or(0, <[u8]>::len);
                            n += 1;
                        }
                        Some(Err(e)) => eprintln!("plain consumer: {e}"),
                        None => {}
                    }
                }
                std::hint::black_box(bytes);
                n
            })
        })
        .collect();
    let read: i64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(read as u64, events, "the plain consumer read everything");
    Run {
        secs: started.elapsed().as_secs_f64(),
        cpu: cpu_secs(std::process::id()) - cpu0,
        sink: None,
        freshness: None,
    }
}

/// The hand-written baseline (`handwritten kafka …`, one consumer thread per stockflow worker)
/// reads every record of `topics`.
fn handwritten(topics: &[String; 2], events: u64, threads: usize) -> Run {
    let started = Instant::now();
    let mut cmd = Command::new(sibling("handwritten"));
    cmd.arg("kafka")
        .arg(brokers())
        .args(topics)
        .arg(threads.to_string());
    let (mut child, addr) = start_serving(cmd);
    let secs = loop {
        std::thread::sleep(Duration::from_millis(20));
        assert!(
            started.elapsed() < Duration::from_secs(1800),
            "the hand-written consumer did not finish in 30 minutes"
        );
        let Ok(r) = ureq::get(&format!("http://{addr}/stats")).call() else {
            continue;
        };
        let v: serde_json::Value =
            serde_json::from_str(&r.into_string().expect("a body")).expect("JSON");
        let seen = v["applied"].as_u64().unwrap_or(0) + v["rejected"].as_u64().unwrap_or(0);
        if seen >= events {
            break started.elapsed().as_secs_f64();
        }
    };
    let cpu = cpu_secs(child.id());
    let _ = child.kill();
    let _ = child.wait();
    Run {
        secs,
        cpu,
        sink: None,
        freshness: None,
    }
}

struct Run {
    secs: f64,
    /// CPU seconds the consumer (the whole stockflow process) used.
    cpu: f64,
    /// (rows written, seconds spent in inserts)
    sink: Option<(u64, f64)>,
    /// Per traffic level (records/s, name): the milliseconds from producing a probe event to
    /// HTTP reflecting it, sorted.
    freshness: Option<Vec<(u64, &'static str, Vec<f64>)>>,
}

/// Starts the binary and waits until it has absorbed `events` records (and, with a database,
/// until the sink has written everything). Seconds from spawn.
fn stockflow(sets: &[String], events: u64, db: Option<&str>, probes: bool) -> Run {
    let started = Instant::now();
    let mut cmd = Command::new(bin());
    cmd.arg("--config")
        .arg(repo().join("configs/kafka.toml"))
        .args(sets.iter().flat_map(|s| ["--set", s.as_str()]))
        .args(["--set", &stockflow_benchmarks::fresh_checkpoint_dir()])
        .arg("--set")
        .arg("http.listen=127.0.0.1:0");
    let (mut child, addr) = start_serving(cmd);
    let base = format!("http://{addr}");
    let get = |path: &str| -> Option<String> {
        ureq::get(&format!("{base}{path}"))
            .call()
            .ok()
            .and_then(|r| r.into_string().ok())
    };
    let mut ready_as_of: Option<f64> = None;
    let secs = loop {
        std::thread::sleep(Duration::from_millis(20));
        assert!(
            started.elapsed() < Duration::from_secs(1800),
            "stockflow did not finish in 30 minutes"
        );
        let Some(m) = get("/metrics") else { continue };
        if ready_as_of.is_none() {
            let seen = metric(&m, "stockflow_events_ingested_total")
                + metric(&m, "stockflow_events_rejected_total");
            if (seen as u64) < events {
                continue;
            }
            // Ready: the backlog as of the start is absorbed, as of this pipeline time.
            let Some(body) = get("/readyz") else { continue };
            let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
            ready_as_of = v["as_of"].as_f64();
            if db.is_none() {
                break started.elapsed().as_secs_f64();
            }
        }
        // With the sink: until ClickHouse holds every change up to that time.
        if metric(&m, "stockflow_clickhouse_durable_time_seconds") * 1000.0
            > ready_as_of.unwrap_or(f64::MAX)
        {
            break started.elapsed().as_secs_f64();
        }
    };
    let cpu = cpu_secs(child.id());
    let m = get("/metrics").unwrap_or_default();
    let sink = db.map(|_| {
        (
            metric(&m, "stockflow_clickhouse_rows_written_total") as u64,
            metric(&m, "stockflow_clickhouse_insert_seconds_sum"),
        )
    });
    // After the figures above: the probes add traffic.
    // Under traffic at half the rate this run sustained (the issue's "half load"; on 2 cores the
    // producer and the broker then compete with the pipeline), and at a light load.
    let freshness = probes.then(|| {
        let half = (events as f64 / secs / 2.0).max(1.0) as u64;
        [(half, "half load"), (LIGHT_LOAD.min(half), "light load")]
            .into_iter()
            .map(|(rate, load)| (rate, load, freshness(&base, sets, rate)))
            .collect()
    });
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
    Run {
        secs,
        cpu,
        sink,
        freshness,
    }
}

/// A producer that sends at once (no batching delay), for probes.
fn probe_producer() -> ThreadedProducer<DefaultProducerContext> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("linger.ms", "0")
        .create()
        .expect("probe producer")
}

/// 100 probes, one at a time, 50 ms apart, while `traffic` runs: each timed from `send(i)` until
/// `seen(i)` says so. Milliseconds, sorted.
fn time_probes(
    mut traffic: Child,
    mut send: impl FnMut(u32),
    mut seen: impl FnMut(u32) -> bool,
) -> Vec<f64> {
    let mut out = Vec::new();
    for i in 0..100 {
        let sent = Instant::now();
        send(i);
        while !seen(i) {
            assert!(
                sent.elapsed() < Duration::from_secs(60),
                "probe {i} not seen in 60 s"
            );
        }
        out.push(sent.elapsed().as_secs_f64() * 1e3);
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = traffic.kill();
    let _ = traffic.wait();
    out.sort_by(f64::total_cmp);
    out
}

/// Produces probe events (a `received` of 1 unit at a new location of SKU `freshness-probe`)
/// while `stockflow produce` adds traffic at `rate` records/s, and times each from the send to
/// the first HTTP answer that has it (polled every 0.5 ms). The locations are named after the
/// rate: a location an earlier round created would be found at once.
fn freshness(base: &str, sets: &[String], rate: u64) -> Vec<f64> {
    let traffic = traffic(sets, rate);
    let topic = sets
        .iter()
        .find_map(|s| s.strip_prefix("kafka.inventory_topic="))
        .expect("the inventory topic")
        .to_string();
    let producer = probe_producer();
    std::thread::sleep(Duration::from_secs(1));
    let out = time_probes(
        traffic,
        |i| {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_millis();
            let value = format!(
                r#"{{"event_id":"probe-{now}-{i}","type":"received","sku":"freshness-probe","ts":{now},"location":"r{rate}-p{i}","qty":1}}"#
            );
            producer
                .send(
                    BaseRecord::to(&topic)
                        .key("freshness-probe")
                        .payload(&value),
                )
                .map_err(|(e, _)| e)
                .expect("probe queued");
        },
        |i| {
            let found = ureq::get(&format!("{base}/v1/stock/freshness-probe/r{rate}-p{i}"))
                .call()
                .is_ok();
            if !found {
                std::thread::sleep(Duration::from_micros(500));
            }
            found
        },
    );
    let _ = producer.flush(Duration::from_secs(5));
    out
}

/// The broker's part of freshness: a consumer positioned at the end of every partition of
/// `topics` polls while probes are produced one at a time under the same traffic; milliseconds
/// from send to receipt.
fn broker_latency(topics: &[String; 2], sets: &[String], rate: u64) -> Vec<f64> {
    let topic = &topics[0];
    let traffic = traffic(sets, rate);
    let consumer = non_committing_consumer(&brokers(), "bench-latency");
    // Both topics, as stockflow's consumers read them: tansu holds a fetch for the whole
    // `fetch.wait.max.ms` when none of its partitions has data, so a consumer of the quiet
    // inventory partitions alone waits longer than one that also reads the busy orders topic.
    let mut tpl = TopicPartitionList::new();
    for t in topics {
        for p in 0..PARTITIONS {
            tpl.add_partition_offset(t, p, Offset::End).unwrap();
        }
    }
    consumer.assign(&tpl).expect("assign");
    let producer = probe_producer();
    // Let the consumer settle at the end offsets.
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_secs(2) {
        let _ = consumer.poll(Duration::from_millis(50));
    }
    let out = time_probes(
        traffic,
        |i| {
            producer
                .send(
                    BaseRecord::to(topic)
                        .key(&format!("latency-probe-{i}"))
                        .payload("{}"),
                )
                .map_err(|(e, _)| e)
                .expect("queued");
        },
        |i| match consumer.poll(Duration::from_millis(1)) {
            Some(Ok(m)) => m.key() == Some(format!("latency-probe-{i}").as_bytes()),
            _ => false,
        },
    );
    let _ = producer.flush(Duration::from_secs(5));
    out
}
