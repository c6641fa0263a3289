//! Lookups while ingesting, open loop, side by side with two ceilings in the same run.
//!
//! `cargo build --release -p stockflow -p stockflow-benchmarks && target/release/lookup-bench`
//! (`--short` for a quick regression run).
//!
//! - **stockflow**: the release binary on its generator (`INGEST` events/s, default 20,000; one
//!   timely worker, one HTTP thread), `GET /v1/stock/{sku}` and `GET /v1/reservations/{id}` with
//!   Zipf-distributed keys (exponent 1.1 over 10,000 SKUs, over the first 5,000 reservations).
//! - **HTTP ceiling**: a warp server (one thread) answering a constant body of the same size.
//! - **key-lookup ceiling**: Redis GET (Debian's `redis-server`, installed if missing) of the same
//!   body under the same keys, one request at a time per connection (no pipelining).
//! - **forecast lookups**: a second stockflow process with 5-second forecast buckets (so that
//!   forecasts are issued within the run), `GET /v1/forecast/{sku}/loc-01` beside
//!   `GET /v1/stock/{sku}` on the same process, at 20,000 req/s and at the maximum.
//!
//! The load generator is this program's own (a thread per keep-alive connection): open
//! loop at a constant offered rate, each request scheduled at a fixed time and its latency taken
//! from that time, not from when it could be sent (no coordinated omission: a stall shows up in
//! the latency of every request that should have gone out during it), recorded in an
//! HdrHistogram. The maximum is measured closed loop (every connection sends as soon as its last
//! answer arrives). Why our own: `wrk` is closed loop, `wrk2` and `oha` are not packaged here, and
//! Redis needs the same generator for a fair comparison. All of it shares the 2 cores with the
//! servers, as a real co-located client would.

use rand::rngs::SmallRng;
use rand_distr::{Distribution, Zipf};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use stockflow_benchmarks::load::{load, Request};
use stockflow_benchmarks::{sibling, start_serving, summary};

const SKUS: u64 = 10_000;
const RESERVATIONS: u64 = 5_000;
const CONNECTIONS: usize = 16;
const REDIS_PORT: u16 = 16379;

/// What a connection asks and how the answer ends.
#[derive(Clone, Copy, PartialEq)]
enum Target {
    Stock,
    Forecast,
    Reservation,
    Handwritten,
    Constant,
    Redis,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Stock => "stockflow GET /v1/stock/{sku}",
            Target::Forecast => "stockflow GET /v1/forecast/{sku}/{location}",
            Target::Reservation => "stockflow GET /v1/reservations/{id}",
            Target::Handwritten => "hand-written HashMap + warp GET /v1/stock/{sku}",
            Target::Constant => "warp, constant body (HTTP ceiling)",
            Target::Redis => "Redis GET (key-lookup ceiling)",
        }
    }

    fn request(self, rng: &mut SmallRng, skus: &Zipf<f64>, res: &Zipf<f64>) -> Vec<u8> {
        let sku = format!("sku-{:05}", skus.sample(rng) as u64);
        match self {
            Target::Stock | Target::Handwritten | Target::Constant => {
                format!("GET /v1/stock/{sku} HTTP/1.1\r\nHost: bench\r\n\r\n").into_bytes()
            }
            Target::Forecast => {
                format!("GET /v1/forecast/{sku}/loc-01 HTTP/1.1\r\nHost: bench\r\n\r\n")
                    .into_bytes()
            }
            Target::Reservation => format!(
                "GET /v1/reservations/res-0-{} HTTP/1.1\r\nHost: bench\r\n\r\n",
                res.sample(rng) as u64
            )
            .into_bytes(),
            Target::Redis => format!("*2\r\n$3\r\nGET\r\n${}\r\n{sku}\r\n", sku.len()).into_bytes(),
        }
    }
}

/// The HTTP ceiling: one tokio thread, warp, a constant body for any stock path.
fn serve_constant(body: String) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        use warp::Filter;
        let route = warp::path!("v1" / "stock" / String).map(move |_sku: String| {
            warp::reply::with_header(body.clone(), "content-type", "application/json")
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("listening on {}", listener.local_addr().unwrap());
        warp::serve(route).incoming(listener).run().await;
    });
}

fn ensure_redis(body: &str) -> Child {
    if Command::new("redis-server")
        .arg("--version")
        .output()
        .is_err()
    {
        let ok = Command::new("apt-get")
            .args(["install", "-y", "-qq", "redis-server"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "installing redis-server failed");
    }
    let child = Command::new("redis-server")
        .args([
            "--port",
            &REDIS_PORT.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server starts");
    std::thread::sleep(Duration::from_millis(500));
    // Load the keys with one pipelined stream of SETs.
    let mut script = String::new();
    for i in 1..=SKUS {
        let key = format!("sku-{i:05}");
        script.push_str(&format!(
            "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n{body}\r\n",
            key.len(),
            body.len()
        ));
    }
    let mut s = std::net::TcpStream::connect(("127.0.0.1", REDIS_PORT)).expect("redis");
    s.write_all(script.as_bytes()).unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    for _ in 0..SKUS {
        line.clear();
        r.read_line(&mut line).unwrap();
        assert_eq!(line, "+OK\r\n");
    }
    child
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--serve-constant") {
        serve_constant(args[2].clone());
        return;
    }
    let short = args.iter().any(|a| a == "--short");
    let ingest: u64 = std::env::var("INGEST")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let secs = if short { 2.0 } else { 10.0 };
    let rates: &[f64] = if short {
        &[20_000.0]
    } else {
        &[5_000.0, 10_000.0, 20_000.0, 30_000.0, 40_000.0]
    };

    let (mut stockflow, stockflow_addr) = {
        let mut cmd = Command::new(sibling("stockflow"));
        cmd.args(["run", "--http", "127.0.0.1:0", "--set"])
            .arg(format!("generator.rate={ingest}"))
            .args(["--set", "dead_letter.path=/dev/null"]);
        start_serving(cmd)
    };
    // Let the views fill (reservations up to RESERVATIONS exist after a few seconds).
    std::thread::sleep(Duration::from_secs(4));
    let body = ureq::get(&format!("http://{stockflow_addr}/v1/stock/sku-00001"))
        .call()
        .expect("stockflow answers")
        .into_string()
        .unwrap();
    let (mut constant, constant_addr) = {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.arg("--serve-constant").arg(&body);
        start_serving(cmd)
    };
    let mut redis = ensure_redis(&body);
    let (mut handwritten, handwritten_addr) = {
        let mut cmd = Command::new(sibling("handwritten"));
        cmd.arg("generator").arg(ingest.to_string());
        start_serving(cmd)
    };

    println!("lookups for {secs} s per rate, {CONNECTIONS} connections, open loop; stockflow ingests {ingest} events/s; body {} bytes", body.len());
    println!();
    println!("| target | offered/s | achieved/s | p50 µs | p99 µs | p99.9 µs | not found |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let mut maxima = Vec::new();
    let mut p99_at_20k = Vec::new();
    for target in [
        Target::Stock,
        Target::Reservation,
        Target::Handwritten,
        Target::Constant,
        Target::Redis,
    ] {
        let addr = match target {
            Target::Stock | Target::Reservation | Target::Forecast => stockflow_addr.clone(),
            Target::Handwritten => handwritten_addr.clone(),
            Target::Constant => constant_addr.clone(),
            Target::Redis => format!("127.0.0.1:{REDIS_PORT}"),
        };
        measure(target, &addr, rates, secs, &mut maxima, &mut p99_at_20k);
    }
    let redis_max = maxima
        .iter()
        .find(|(t, _)| *t == Target::Redis)
        .map_or(1.0, |m| m.1);
    println!();
    println!("| maximum | requests/s | ratio to Redis GET |");
    println!("|---|---:|---:|");
    for (t, m) in &maxima {
        println!("| {} | {m:.0} | {:.2}x |", t.name(), m / redis_max);
    }
    let of = |v: &[(Target, f64)], t: Target| v.iter().find(|x| x.0 == t).map_or(f64::NAN, |x| x.1);
    let p99: Vec<(Target, f64)> = p99_at_20k.iter().map(|(t, v)| (*t, *v as f64)).collect();
    for t in [Target::Stock, Target::Reservation] {
        summary::record(
            &format!(
                "p99 at 20,000 req/s during ingest, {} vs Redis GET",
                t.name()
            ),
            &format!("{:.2} ms", of(&p99, t) / 1e3),
            &format!("{:.2} ms", of(&p99, Target::Redis) / 1e3),
            of(&p99, t) / of(&p99, Target::Redis),
            "≤ 2 ms",
        );
        summary::record(
            &format!("max lookups/s, {} vs Redis GET", t.name()),
            &format!("{:.0}", of(&maxima, t)),
            &format!("{:.0}", redis_max),
            of(&maxima, t) / redis_max,
            "≥ 0.5x",
        );
    }
    summary::record(
        "max lookups/s, stockflow GET /v1/stock/{sku} vs the hand-written HashMap + warp",
        &format!("{:.0}", of(&maxima, Target::Stock)),
        &format!("{:.0}", of(&maxima, Target::Handwritten)),
        of(&maxima, Target::Stock) / of(&maxima, Target::Handwritten),
        "",
    );
    let m = ureq::get(&format!("http://{stockflow_addr}/metrics"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    if let Some(f) = m
        .lines()
        .find(|l| l.starts_with("stockflow_freshness_seconds "))
    {
        println!();
        println!(
            "freshness at the end (wall clock minus as_of): {}",
            f.rsplit(' ').next().unwrap()
        );
    }
    for c in [&mut stockflow, &mut handwritten, &mut constant, &mut redis] {
        let _ = c.kill();
        let _ = c.wait();
    }
    forecast_lookups(ingest, secs);
}

/// Forecast lookups beside stock lookups on one process whose forecasts are issued every 5 s.
fn forecast_lookups(ingest: u64, secs: f64) {
    let (mut stockflow, addr) = {
        let mut cmd = Command::new(sibling("stockflow"));
        cmd.args(["run", "--http", "127.0.0.1:0", "--set"])
            .arg(format!("generator.rate={ingest}"))
            .args(["--set", "dead_letter.path=/dev/null"])
            .args(["--set", "forecast.bucket=5s"])
            .args(["--set", "pipeline.windows=[\"5s\"]"])
            .args(["--set", "pipeline.window_retention=5s"]);
        start_serving(cmd)
    };
    // Two boundaries: every key seen in the first bucket has a forecast.
    std::thread::sleep(Duration::from_secs(12));
    println!();
    println!("forecast lookups (5-s buckets, same process as the stock lookups below)");
    println!();
    println!("| target | offered/s | achieved/s | p50 µs | p99 µs | p99.9 µs | not found |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let (mut maxima, mut p99) = (Vec::new(), Vec::new());
    for target in [Target::Stock, Target::Forecast] {
        measure(target, &addr, &[20_000.0], secs, &mut maxima, &mut p99);
    }
    let of = |v: &[(Target, f64)], t: Target| v.iter().find(|x| x.0 == t).map_or(f64::NAN, |x| x.1);
    let p99: Vec<(Target, f64)> = p99.iter().map(|(t, v)| (*t, *v as f64)).collect();
    summary::record(
        "max lookups/s, GET /v1/forecast/{sku}/{location} vs GET /v1/stock/{sku} (same process)",
        &format!("{:.0}", of(&maxima, Target::Forecast)),
        &format!("{:.0}", of(&maxima, Target::Stock)),
        of(&maxima, Target::Forecast) / of(&maxima, Target::Stock),
        "≥ 0.9x",
    );
    summary::record(
        "p99 at 20,000 req/s during ingest, forecast vs stock lookups (same process)",
        &format!("{:.2} ms", of(&p99, Target::Forecast) / 1e3),
        &format!("{:.2} ms", of(&p99, Target::Stock) / 1e3),
        of(&p99, Target::Forecast) / of(&p99, Target::Stock),
        "",
    );
    let _ = stockflow.kill();
    let _ = stockflow.wait();
}

/// Loads `target` at `addr` at each of `rates` (open loop) and at the maximum (closed loop),
/// prints a row each, and notes the maximum and the p99 at 20,000 req/s.
fn measure(
    target: Target,
    addr: &str,
    rates: &[f64],
    secs: f64,
    maxima: &mut Vec<(Target, f64)>,
    p99_at_20k: &mut Vec<(Target, u64)>,
) {
    for rate in rates.iter().copied().map(Some).chain([None]) {
        let skus = Zipf::new(SKUS as f64, 1.1).unwrap();
        let res = Zipf::new(RESERVATIONS as f64, 1.1).unwrap();
        let request: Request = Arc::new(move |rng: &mut SmallRng| target.request(rng, &skus, &res));
        let o = load(
            addr,
            CONNECTIONS,
            request,
            target == Target::Redis,
            rate,
            secs,
        );
        let achieved = o.done as f64 / o.secs;
        if rate.is_none() {
            maxima.push((target, achieved));
        }
        if rate == Some(20_000.0) {
            p99_at_20k.push((target, o.hist.value_at_quantile(0.99)));
        }
        println!(
            "| {} | {} | {:.0} | {} | {} | {} | {} |",
            target.name(),
            rate.map_or("max (closed loop)".to_string(), |r| format!("{r:.0}")),
            achieved,
            o.hist.value_at_quantile(0.5),
            o.hist.value_at_quantile(0.99),
            o.hist.value_at_quantile(0.999),
            o.not_found + o.failed
        );
    }
}
