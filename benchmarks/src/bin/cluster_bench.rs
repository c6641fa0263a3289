//! Many processes on one machine: what the cluster costs, and what failover costs.
//!
//! `cargo build --release -p stockflow -p stockflow-benchmarks && target/release/cluster-bench`
//! (`--short` for a quick regression run).
//!
//! - **Ingest**: 1, 2 and 3 processes of one timely worker each, as one cluster, on the built-in
//!   generator at a rate none of them reaches (so each runs flat out); events admitted per
//!   second over all processes, beside one process with as many workers (the same threads,
//!   exchanging in memory). On 2 cores a third process adds no core: this shows the cost of the
//!   exchange over TCP, not the gain of more machines.
//! - **Lookups**: the maximum (closed loop, 16 connections) of `GET /v1/stock/{sku}` on process
//!   0 of 1, 2 and 3 while ingesting 20,000 events/s in all; with more than one process, most
//!   keys are owned by another process and forwarded.
//! - **Local vs remote key**: on process 0 of 2, p50/p99 at a fixed rate for keys process 0 owns
//!   against keys process 1 owns (one forwarding hop).
//! - **Failover**: two replicas behind configs/haproxy.cfg, lookups at a fixed rate through it,
//!   one replica killed with SIGKILL: failed requests and the worst latency (how long clients
//!   waited while the balancer moved away).

use rand::rngs::SmallRng;
use rand_distr::{Distribution, Zipf};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use stockflow_benchmarks::load::{load, Outcome, Request};
use stockflow_benchmarks::{sibling, summary};
use stockflow_dataflow::ledger::{owner, sku_hash};

const SKUS: u64 = 10_000;
const CONNECTIONS: usize = 16;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn list(v: &[String]) -> String {
    format!(
        "[{}]",
        v.iter()
            .map(|a| format!("\"{a}\""))
            .collect::<Vec<_>>()
            .join(",")
    )
}

/// `n` processes of `workers` workers each on the generator at `rate` events/s in all; their
/// HTTP addresses, once all serve.
fn cluster(n: usize, workers: usize, rate: u64) -> (Vec<Child>, Vec<String>) {
    let timely: Vec<String> = (0..n)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let http: Vec<String> = (0..n)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let mut children = Vec::new();
    for i in 0..n {
        let mut cmd = Command::new(sibling("stockflow"));
        cmd.args(["run", "--http", &http[i]])
            .args(["--set", &format!("generator.rate={rate}")])
            .args(["--set", "dead_letter.path=/dev/null"])
            .args(["--set", &format!("pipeline.workers={workers}")]);
        if n > 1 {
            cmd.args(["--set", &format!("cluster.addresses={}", list(&timely))])
                .args(["--set", &format!("cluster.http={}", list(&http))])
                .args(["--set", &format!("cluster.process={i}")]);
        }
        cmd.env("RUST_LOG", "stockflow=error")
            .env("RUST_BACKTRACE", "0")
            .stdout(Stdio::null());
        children.push(cmd.spawn().expect("stockflow starts"));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for a in &http {
        while ureq::get(&format!("http://{a}/readyz")).call().is_err() {
            assert!(Instant::now() < deadline, "{a} never became ready");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    (children, http)
}

/// SIGTERM to every process at once (a cluster stops together), then waits.
fn stop(children: &mut [Child]) {
    for c in children.iter() {
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
    }
    for c in children.iter_mut() {
        let _ = c.wait();
    }
}

fn ingested(http: &[String]) -> f64 {
    http.iter()
        .map(|a| {
            ureq::get(&format!("http://{a}/metrics"))
                .call()
                .ok()
                .and_then(|r| r.into_string().ok())
                .unwrap_or_default()
                .lines()
                .filter(|l| l.starts_with("stockflow_events_ingested_total"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>()
        })
        .sum()
}

fn stock_request(skus: Vec<String>) -> Request {
    let zipf = Zipf::new(skus.len() as f64, 1.1).unwrap();
    Arc::new(move |rng: &mut SmallRng| {
        let sku = &skus[zipf.sample(rng) as usize - 1];
        format!("GET /v1/stock/{sku} HTTP/1.1\r\nHost: bench\r\n\r\n").into_bytes()
    })
}

fn all_skus() -> Vec<String> {
    (1..=SKUS).map(|i| format!("sku-{i:05}")).collect()
}

fn row(what: &str, o: &Outcome) {
    println!(
        "| {what} | {:.0} | {} | {} | {} | {} | {} |",
        o.done as f64 / o.secs,
        o.hist.value_at_quantile(0.5),
        o.hist.value_at_quantile(0.99),
        o.hist.max(),
        o.not_found,
        o.failed
    );
}

fn main() {
    let short = std::env::args().any(|a| a == "--short");
    let secs = if short { 3.0 } else { 10.0 };
    let sizes: &[usize] = &[1, 2, 3];

    println!("== ingest: the generator flat out, {secs} s each; n processes × 1 worker against one process of n workers (the same threads, no TCP between them)");
    println!();
    println!("| workers | n processes × 1 worker, events/s | 1 process × n workers, events/s | cluster / one process |");
    println!("|---:|---:|---:|---:|");
    let measure = |n: usize, workers: usize| {
        let (mut children, http) = cluster(n, workers, 5_000_000);
        std::thread::sleep(Duration::from_secs(2));
        let (a, t) = (ingested(&http), Instant::now());
        std::thread::sleep(Duration::from_secs_f64(secs));
        let rate = (ingested(&http) - a) / t.elapsed().as_secs_f64();
        stop(&mut children);
        rate
    };
    for &n in sizes {
        let clustered = measure(n, 1);
        let one = if n == 1 { clustered } else { measure(1, n) };
        println!(
            "| {n} | {clustered:.0} | {one:.0} | {:.2}x |",
            clustered / one
        );
        if n > 1 {
            summary::record(
                &format!("ingest events/s, {n} processes × 1 worker vs 1 process × {n} workers (2 cores: the cost of the cluster)"),
                &format!("{clustered:.0}"),
                &format!("{one:.0}"),
                clustered / one,
                "",
            );
        }
    }

    println!();
    println!("== lookups on process 0, 20,000 events/s ingested in all, {CONNECTIONS} connections, {secs} s");
    println!();
    println!("| processes | max lookups/s | p50 µs | p99 µs | worst µs | 404 | failed |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    let mut one = f64::NAN;
    for &n in sizes {
        let (mut children, http) = cluster(n, 1, 20_000);
        std::thread::sleep(Duration::from_secs(5)); // the views fill
        let o = load(
            &http[0],
            CONNECTIONS,
            stock_request(all_skus()),
            false,
            None,
            secs,
        );
        let max = o.done as f64 / o.secs;
        if n == 1 {
            one = max;
        }
        row(&n.to_string(), &o);
        if n == 2 {
            // Keys owned here against keys owned by the other process, at a fixed rate.
            let (mine, theirs): (Vec<String>, Vec<String>) = all_skus()
                .into_iter()
                .partition(|s| owner(sku_hash(s), 2) == 0);
            let rate = 5_000.0;
            let local = load(
                &http[0],
                CONNECTIONS,
                stock_request(mine),
                false,
                Some(rate),
                secs,
            );
            let remote = load(
                &http[0],
                CONNECTIONS,
                stock_request(theirs),
                false,
                Some(rate),
                secs,
            );
            println!();
            println!("at {rate:.0} lookups/s on process 0 of 2:");
            println!();
            println!("| keys | achieved/s | p50 µs | p99 µs | worst µs | 404 | failed |");
            println!("|---|---:|---:|---:|---:|---:|---:|");
            row("owned by process 0 (local)", &local);
            row("owned by process 1 (forwarded)", &remote);
            println!();
            let (l, r) = (
                local.hist.value_at_quantile(0.99) as f64,
                remote.hist.value_at_quantile(0.99) as f64,
            );
            summary::record(
                "lookup p99 at 5,000/s, key owned by another process vs a local key (2 processes)",
                &format!("{:.2} ms", r / 1e3),
                &format!("{:.2} ms", l / 1e3),
                r / l,
                "",
            );
        }
        stop(&mut children);
        if n > 1 {
            summary::record(
                &format!("max lookups/s on process 0, {n} processes vs 1 (most keys forwarded)"),
                &format!("{max:.0}"),
                &format!("{one:.0}"),
                max / one,
                "",
            );
        }
    }

    failover(secs);
}

/// Two independent replicas behind the shipped haproxy configuration; one is killed under load.
fn failover(secs: f64) {
    let (mut a, ha) = cluster(1, 1, 10_000);
    let (mut b, hb) = cluster(1, 1, 10_000);
    let lb = format!("127.0.0.1:{}", free_port());
    let config = sibling("stockflow")
        .parent()
        .and_then(|d| d.parent())
        .and_then(|d| d.parent())
        .map(|root| root.join("configs/haproxy.cfg"))
        .expect("the repository");
    let mut haproxy = Command::new("haproxy")
        .args(["-q", "-f"])
        .arg(&config)
        .env("STOCKFLOW_LB_LISTEN", &lb)
        .env("STOCKFLOW_REPLICA_A", &ha[0])
        .env("STOCKFLOW_REPLICA_B", &hb[0])
        .spawn()
        .expect("haproxy (scripts/services.sh installs it)");
    let deadline = Instant::now() + Duration::from_secs(20);
    while ureq::get(&format!("http://{lb}/readyz")).call().is_err() {
        assert!(Instant::now() < deadline, "the balancer never answered");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2)); // both replicas up in haproxy's eyes
    let rate = 2_000.0;
    let killer = {
        let mut victim = a.pop().expect("one process");
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs_f64(secs / 3.0));
            let _ = victim.kill();
            let _ = victim.wait();
        })
    };
    let o = load(
        &lb,
        CONNECTIONS,
        stock_request(all_skus()),
        false,
        Some(rate),
        secs,
    );
    killer.join().unwrap();
    println!("== failover: {rate:.0} lookups/s through haproxy for {secs} s, one of two replicas killed (SIGKILL) a third of the way in");
    println!();
    println!("| through the balancer | achieved/s | p50 µs | p99 µs | worst µs | 404 | failed |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    row("replica killed", &o);
    summary::record(
        "failover: lookups failed when one of two replicas is killed under load (haproxy), worst latency",
        &format!("{} failed of {}, worst {:.1} ms", o.failed, o.done, o.hist.max() as f64 / 1e3),
        "0 failed",
        o.failed as f64 / o.done.max(1) as f64,
        "no failed request",
    );
    let _ = haproxy.kill();
    let _ = haproxy.wait();
    stop(&mut b);
    stop(&mut a);
}
