//! A 10x spike through Kafka: the offered load jumps to ten times the base rate for a while,
//! then falls back. Does the pipeline stay up, does its memory stay bounded (the backlog waits
//! in Kafka, not in stockflow), do lookups keep answering, and how long does it take to catch up?
//!
//! `cargo build --release -p stockflow -p stockflow-benchmarks &&
//!  target/release/spike-bench [BASE_RATE] [SPIKE_SECS]`   (defaults: 200 records/s, 30 s)
//!
//! stockflow (the release binary, 2 workers, ClickHouse sink on, configs/kafka.toml) reads fresh
//! topics that `stockflow produce` fills at BASE_RATE; after a warm-up of 10 s a second producer
//! adds 9 x BASE_RATE for SPIKE_SECS. Every 100 ms the benchmark looks up
//! `GET /v1/stock/sku-00001` (timed) and reads the consumer lag (`stockflow_kafka_consumer_lag`)
//! and the process's resident memory. Caught up: the lag is back to the calm phase's maximum
//! (at least one second of base traffic: offsets are committed once durable, every second). The baseline is the run's own calm phase: lag, memory and lookup latency before the
//! spike.

use hdrhistogram::Histogram;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use stockflow_benchmarks::kafka::{bin, brokers, metric, repo, services_up, traffic};
use stockflow_benchmarks::{start_serving, summary};

const WARMUP: Duration = Duration::from_secs(10);
/// Give up waiting for the catch-up after this long.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(600);

/// Resident set size of `pid`, bytes.
fn rss_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

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
    let base: u64 = args.next().map_or(200, |a| a.parse().expect("BASE_RATE"));
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
    // One sample: a timed lookup, the lag and the memory.
    let sample = |phase: &mut Phase| {
        let t = Instant::now();
        let ok = ureq::get(&format!("http://{addr}/v1/stock/sku-00001"))
            .call()
            .is_ok();
        phase
            .lookups
            .saturating_record(t.elapsed().as_micros().max(1) as u64);
        phase.failed += u64::from(!ok);
        // Records after the committed offsets, per librdkafka's statistics (every second).
        let lag = metrics().map_or(0.0, |m| metric(&m, "stockflow_kafka_consumer_lag"));
        phase.max_lag = phase.max_lag.max(lag);
        phase.max_rss = phase.max_rss.max(rss_of(pid));
        std::thread::sleep(Duration::from_millis(100));
        lag
    };

    let mut before = Phase::new();
    let t0 = Instant::now();
    while t0.elapsed() < WARMUP {
        sample(&mut before);
    }
    let rss_before = rss_of(pid);
    // Offsets are committed once durable, every second: in calm, the lag is never zero.
    let calm_lag = before.max_lag.max(base as f64);

    let mut during = Phase::new();
    let mut extra = traffic(&sets, base * 9);
    let t1 = Instant::now();
    while t1.elapsed() < spike {
        sample(&mut during);
    }
    let _ = extra.kill();
    let _ = extra.wait();

    let mut after = Phase::new();
    let t2 = Instant::now();
    let caught_up = loop {
        let lag = sample(&mut after);
        if lag <= calm_lag {
            break Some(t2.elapsed().as_secs_f64());
        }
        if t2.elapsed() > CATCH_UP_LIMIT {
            break None;
        }
    };
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
        "| phase | lookups | failed | p50 ms | p99 ms | max ms | max lag (records) | max RSS MiB |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (name, p) in [
        ("calm (base rate, 10 s)", &before),
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
        "stockflow stayed up: {alive}; resident memory {:.0} MiB before the spike, {:.0} MiB at its peak, {:.0} MiB at the end",
        mib(rss_before),
        mib(during.max_rss.max(after.max_rss)),
        mib(rss_end)
    );
    match caught_up {
        Some(s) => println!("caught up {s:.1} s after the spike ended (lag back to the calm phase's {calm_lag:.0} records)"),
        None => println!("NOT caught up within {} s of the spike's end", CATCH_UP_LIMIT.as_secs()),
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
