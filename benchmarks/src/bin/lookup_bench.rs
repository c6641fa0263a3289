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
//!
//! The load generator is this program's own (a thread per keep-alive connection): open
//! loop at a constant offered rate, each request scheduled at a fixed time and its latency taken
//! from that time, not from when it could be sent (no coordinated omission: a stall shows up in
//! the latency of every request that should have gone out during it), recorded in an
//! HdrHistogram. The maximum is measured closed loop (every connection sends as soon as its last
//! answer arrives). Why our own: `wrk` is closed loop, `wrk2` and `oha` are not packaged here, and
//! Redis needs the same generator for a fair comparison. All of it shares the 2 cores with the
//! servers, as a real co-located client would.

use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Zipf};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use stockflow_benchmarks::{sibling, start_serving, summary};

const SKUS: u64 = 10_000;
const RESERVATIONS: u64 = 5_000;
const CONNECTIONS: usize = 16;
const REDIS_PORT: u16 = 16379;

/// What a connection asks and how the answer ends.
#[derive(Clone, Copy, PartialEq)]
enum Target {
    Stock,
    Reservation,
    Handwritten,
    Constant,
    Redis,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Stock => "stockflow GET /v1/stock/{sku}",
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
            Target::Reservation => format!(
                "GET /v1/reservations/res-0-{} HTTP/1.1\r\nHost: bench\r\n\r\n",
                res.sample(rng) as u64
            )
            .into_bytes(),
            Target::Redis => format!("*2\r\n$3\r\nGET\r\n${}\r\n{sku}\r\n", sku.len()).into_bytes(),
        }
    }
}

/// Reads one answer. `Ok(false)` for an HTTP status other than 200 (the body is read all the
/// same, so the connection stays usable), `Err` on a broken connection.
fn read_answer(
    conn: &mut BufReader<TcpStream>,
    target: Target,
    line: &mut String,
    body: &mut Vec<u8>,
) -> std::io::Result<bool> {
    let bad = |what: &str| std::io::Error::other(what.to_string());
    line.clear();
    if conn.read_line(line)? == 0 {
        return Err(bad("closed"));
    }
    let (ok, len) = if target == Target::Redis {
        // $<len>\r\n<bytes>\r\n, or $-1\r\n for a missing key
        let n: i64 = line[1..].trim().parse().map_err(|_| bad("RESP"))?;
        (n >= 0, n.max(-2) as usize + 2)
    } else {
        let ok = line.starts_with("HTTP/1.1 200");
        let mut len = 0;
        loop {
            line.clear();
            conn.read_line(line)?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().map_err(|_| bad("length"))?;
                }
            }
        }
        (ok, len)
    };
    body.resize(len, 0);
    conn.read_exact(body)?;
    Ok(ok)
}

struct Outcome {
    done: u64,
    not_found: u64,
    secs: f64,
    hist: Histogram<u64>,
}

/// `rate` requests/s in all over `CONNECTIONS` connections for `secs` (open loop), or as fast as
/// they go (`rate` = None, closed loop). One thread per connection with blocking sockets:
/// `thread::sleep` keeps to the schedule within tens of microseconds, where a tokio timer would
/// add up to a millisecond to every latency.
fn load(addr: &str, target: Target, rate: Option<f64>, secs: f64) -> Outcome {
    let start = Instant::now() + Duration::from_millis(50);
    let end = start + Duration::from_secs_f64(secs);
    let threads: Vec<_> = (0..CONNECTIONS)
        .map(|c| {
            let addr = addr.to_string();
            std::thread::spawn(move || {
                let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
                let (mut done, mut not_found) = (0u64, 0u64);
                let stream = TcpStream::connect(&addr).expect("connect");
                stream.set_nodelay(true).ok();
                let mut writer = stream.try_clone().expect("clone");
                let mut conn = BufReader::new(stream);
                let mut rng = SmallRng::seed_from_u64(c as u64);
                let skus = Zipf::new(SKUS as f64, 1.1).unwrap();
                let res = Zipf::new(RESERVATIONS as f64, 1.1).unwrap();
                let (mut line, mut body) = (String::new(), Vec::new());
                // Connection c sends at start + (c + i * CONNECTIONS) / rate.
                let interval = rate.map(|r| Duration::from_secs_f64(CONNECTIONS as f64 / r));
                let mut next = start
                    + interval.map_or(Duration::ZERO, |i| i.mul_f64(c as f64 / CONNECTIONS as f64));
                loop {
                    let intended = match interval {
                        Some(i) => {
                            let t = next;
                            next += i;
                            t
                        }
                        None => Instant::now().max(start),
                    };
                    if intended >= end {
                        break;
                    }
                    if let Some(wait) = intended.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let req = target.request(&mut rng, &skus, &res);
                    writer.write_all(&req).expect("send");
                    let ok = read_answer(&mut conn, target, &mut line, &mut body).expect("answer");
                    // From the intended time: a late answer delays what should follow it.
                    hist.saturating_record(intended.elapsed().as_micros().max(1) as u64);
                    done += 1;
                    not_found += u64::from(!ok);
                }
                (done, not_found, hist)
            })
        })
        .collect();
    let mut out = Outcome {
        done: 0,
        not_found: 0,
        secs,
        hist: Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap(),
    };
    for t in threads {
        let (d, n, h) = t.join().expect("load thread");
        out.done += d;
        out.not_found += n;
        out.hist.add(h).expect("same bounds");
    }
    out
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
            Target::Stock | Target::Reservation => stockflow_addr.clone(),
            Target::Handwritten => handwritten_addr.clone(),
            Target::Constant => constant_addr.clone(),
            Target::Redis => format!("127.0.0.1:{REDIS_PORT}"),
        };
        for rate in rates.iter().copied().map(Some).chain([None]) {
            let o = load(&addr, target, rate, secs);
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
                o.not_found
            );
        }
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
}
