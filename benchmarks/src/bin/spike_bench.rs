//! A 10x spike through Kafka: the offered load jumps to ten times the base rate for a while,
//! then falls back. Does the pipeline stay up, does its memory stay bounded (the backlog waits
//! in Kafka, not in stockflow), do lookups keep answering, and how long does it take to catch up?
//!
//! `cargo build --release -p stockflow -p stockflow-benchmarks &&
//!  target/release/spike-bench [BASE_RATE] [SPIKE_SECS]`   (defaults: 2,000 records/s, 30 s)
//!
//! stockflow (the release binary, 2 workers, ClickHouse sink on, configs/kafka.toml) reads fresh
//! topics that `stockflow produce` fills at BASE_RATE; after a calm phase (as long as the spike,
//! at most 10 s) a second producer adds 9 x BASE_RATE for SPIKE_SECS. A thread looks up
//! `GET /v1/stock/sku-00001` 20 times a second (timed); every 100 ms the benchmark reads the lag
//! (records in the topics, from the broker's high watermarks, minus the records stockflow has
//! read, from its metrics) and the process's resident memory. Caught up: stockflow has read every
//! record produced until the spike ended. The baseline is the run's own calm phase. The offered
//! rate the producers achieved is printed: on a small machine they share the cores with the
//! broker and the pipeline and may fall short of 10x.

use hdrhistogram::Histogram;
use rdkafka::consumer::Consumer;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use stockflow_benchmarks::kafka::{
    bin, brokers, metric, non_committing_consumer, repo, services_up, traffic,
};
use stockflow_benchmarks::{rss_of, start_serving, summary};

/// The calm phase before the spike: as long as the spike, at most 10 s.
fn warmup(spike: Duration) -> Duration {
    spike.min(Duration::from_secs(10))
}

/// Partitions per topic (`kafka.create_partitions` of configs/kafka.toml).
const PARTITIONS: i32 = 4;
/// Give up waiting for the catch-up after this long.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(600);

/// What one phase of the run saw.
struct Phase {
    lookups: Histogram<u64>,
    failed: u64,
    max_lag: f64,
    max_rss: u64,
}

impl Phase {
    fn new() -> Self {
        Phase {
            lookups: Histogram::new_with_bounds(1, 60_000_000, 3).unwrap(),
            failed: 0,
            max_lag: 0.0,
            max_rss: 0,
        }
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let base: u64 = args.next().map_or(2_000, |a| a.parse().expect("BASE_RATE"));
    let spike = Duration::from_secs(args.next().map_or(30, |a| a.parse().expect("SPIKE_SECS")));
    services_up();
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let prefix = format!("spike_{stamp}");
    let sets = vec![
        format!("kafka.brokers={}", brokers()),
        format!("kafka.inventory_topic={prefix}_inventory"),
        format!("kafka.orders_topic={prefix}_orders"),
        format!("kafka.dead_letter_topic={prefix}_dlq"),
        format!("kafka.group_id={prefix}"),
        format!("clickhouse.database={prefix}_db"),
        "pipeline.workers=2".to_string(),
    ];
    let mut cmd = Command::new(bin());
    cmd.arg("--config")
        .arg(repo().join("configs/kafka.toml"))
        .args(sets.iter().flat_map(|s| ["--set", s.as_str()]))
        .args(["--set", &stockflow_benchmarks::fresh_checkpoint_dir()])
        .args(["--set", "http.listen=127.0.0.1:0"]);
    let (mut stockflow, addr) = start_serving(cmd);
    let pid = stockflow.id();
    let mut calm = traffic(&sets, base);
    println!(
        "spike-bench: base {base} records/s, spike to {} records/s for {} s; stockflow 2 workers with the ClickHouse sink; tansu on loopback",
        base * 10,
        spike.as_secs()
    );

    let metrics = || {
        ureq::get(&format!("http://{addr}/metrics"))
            .call()
            .ok()
            .and_then(|r| r.into_string().ok())
    };
    // What the broker holds: the sum of the high watermarks of both topics.
    let watcher = non_committing_consumer(&brokers(), &format!("{prefix}_watch"));
    let topics = [format!("{prefix}_inventory"), format!("{prefix}_orders")];
    let end_offsets = || -> f64 {
        let mut sum = 0;
        for topic in &topics {
            for p in 0..PARTITIONS {
                if let Ok((_, high)) = watcher.fetch_watermarks(topic, p, Duration::from_secs(5)) {
                    sum += high;
                }
            }
        }
        sum as f64
    };
    // What stockflow has read: every record is either ingested or rejected.
    let read = || -> f64 {
        metrics().map_or(0.0, |m| {
            metric(&m, "stockflow_events_ingested_total")
                + metric(&m, "stockflow_events_rejected_total")
        })
    };
    // Lookups: 20 a second on a thread of their own, into the histogram of the current phase
    // (0 calm, 1 spike, 2 after; 3 stops).
    let phase = Arc::new(AtomicUsize::new(0));
    let lookups = {
        let (phase, url) = (
            Arc::clone(&phase),
            format!("http://{addr}/v1/stock/sku-00001"),
        );
        std::thread::spawn(move || {
            let mut out: Vec<(Histogram<u64>, u64)> = (0..3)
                .map(|_| (Histogram::new_with_bounds(1, 60_000_000, 3).unwrap(), 0))
                .collect();
            let agent = ureq::agent();
            let mut next = Instant::now();
            loop {
                let p = phase.load(Ordering::Relaxed);
                if p >= out.len() {
                    break out;
                }
                let t = Instant::now();
                // Answered: any answer but a server error (a 404 before the SKU's first event is one).
                let ok = match agent.get(&url).call() {
                    Ok(_) => true,
                    Err(ureq::Error::Status(code, _)) => code < 500,
                    Err(_) => false,
                };
                out[p]
                    .0
                    .saturating_record(t.elapsed().as_micros().max(1) as u64);
                out[p].1 += u64::from(!ok);
                next += Duration::from_millis(50);
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
        })
    };
    // One sample of the lag and the memory.
    let sample = |phase: &mut Phase| {
        // Records in the topics that stockflow has not read yet.
        let lag = (end_offsets() - read()).max(0.0);
        phase.max_lag = phase.max_lag.max(lag);
        phase.max_rss = phase.max_rss.max(rss_of(pid));
        std::thread::sleep(Duration::from_millis(100));
    };

    let mut before = Phase::new();
    let t0 = Instant::now();
    while t0.elapsed() < warmup(spike) {
        sample(&mut before);
    }
    let rss_before = rss_of(pid);

    let during_start = end_offsets();
    let mut during = Phase::new();
    let mut extra = traffic(&sets, base * 9);
    phase.store(1, Ordering::Relaxed);
    let t1 = Instant::now();
    while t1.elapsed() < spike {
        sample(&mut during);
    }
    let _ = extra.kill();
    let _ = extra.wait();

    // Caught up: everything produced until the spike's end is read.
    let target = end_offsets();
    let produced_in_spike = target - during_start;
    let mut after = Phase::new();
    phase.store(2, Ordering::Relaxed);
    let t2 = Instant::now();
    let caught_up = loop {
        sample(&mut after);
        if read() >= target {
            break Some(t2.elapsed().as_secs_f64());
        }
        if t2.elapsed() > CATCH_UP_LIMIT {
            break None;
        }
    };
    phase.store(3, Ordering::Relaxed);
    for (p, (hist, failed)) in [&mut before, &mut during, &mut after]
        .into_iter()
        .zip(lookups.join().expect("lookup thread"))
    {
        p.lookups = hist;
        p.failed = failed;
    }
    let rss_end = rss_of(pid);
    let alive = stockflow.try_wait().expect("status").is_none();
    let _ = calm.kill();
    let _ = calm.wait();
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
    let _ = stockflow.wait();
    let _ = ureq::post("http://127.0.0.1:8123")
        .send_string(&format!("DROP DATABASE IF EXISTS {prefix}_db"));

    let mib = |b: u64| b as f64 / 1048576.0;
    println!();
    println!(
        "| phase | lookups | not answered | p50 ms | p99 ms | max ms | max lag (records) | max RSS MiB |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (name, p) in [
        ("calm (base rate)", &before),
        ("spike (10x)", &during),
        ("after, until caught up", &after),
    ] {
        let q = |x: f64| p.lookups.value_at_quantile(x) as f64 / 1e3;
        println!(
            "| {name} | {} | {} | {:.2} | {:.2} | {:.2} | {:.0} | {:.0} |",
            p.lookups.len(),
            p.failed,
            q(0.5),
            q(0.99),
            p.lookups.max() as f64 / 1e3,
            p.max_lag,
            mib(p.max_rss)
        );
    }
    println!();
    println!(
        "offered during the spike: {produced_in_spike:.0} records in {} s = {:.0} records/s",
        spike.as_secs(),
        produced_in_spike / spike.as_secs_f64()
    );
    println!(
        "stockflow stayed up: {alive}; resident memory {:.0} MiB before the spike, {:.0} MiB at its peak, {:.0} MiB at the end",
        mib(rss_before),
        mib(during.max_rss.max(after.max_rss)),
        mib(rss_end)
    );
    match caught_up {
        Some(s) => println!(
            "caught up {s:.1} s after the spike ended (read everything produced until then)"
        ),
        None => println!(
            "NOT caught up within {} s of the spike's end",
            CATCH_UP_LIMIT.as_secs()
        ),
    }
    let peak = during.max_rss.max(after.max_rss);
    summary::record(
        &format!(
            "10x spike ({} s): catch-up time; memory peak vs before",
            spike.as_secs()
        ),
        &caught_up.map_or("not caught up".into(), |s| format!("{s:.1} s to catch up")),
        &format!("{:.0} → {:.0} MiB", mib(rss_before), mib(peak)),
        peak as f64 / rss_before.max(1) as f64,
        "stays up, memory bounded",
    );
    let p99 = |p: &Phase| p.lookups.value_at_quantile(0.99) as f64 / 1e3;
    summary::record(
        "10x spike: lookup p99 during the spike vs calm",
        &format!("{:.2} ms ({} failed)", p99(&during), during.failed),
        &format!("{:.2} ms", p99(&before)),
        p99(&during) / p99(&before),
        "keeps answering",
    );
}
