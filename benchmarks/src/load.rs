//! An open-loop load generator over keep-alive connections (HTTP/1.1 or Redis's RESP), with
//! latencies from each request's intended send time (no coordinated omission), into an
//! HdrHistogram. Shared by `lookup-bench` and `cluster-bench`.

use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::SeedableRng;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Makes the bytes of one request.
pub type Request = Arc<dyn Fn(&mut SmallRng) -> Vec<u8> + Send + Sync>;

/// Reads one answer and returns its status: the HTTP status, or for RESP 200 (a value) or 404
/// (a missing key). The body is read whatever the status, so the connection stays usable;
/// `Err` on a broken connection.
pub fn read_answer(
    conn: &mut BufReader<TcpStream>,
    resp: bool,
    line: &mut String,
    body: &mut Vec<u8>,
) -> std::io::Result<u16> {
    let bad = |what: &str| std::io::Error::other(what.to_string());
    line.clear();
    if conn.read_line(line)? == 0 {
        return Err(bad("closed"));
    }
    let (status, len) = if resp {
        // $<len>\r\n<bytes>\r\n, or $-1\r\n for a missing key
        let n: i64 = line[1..].trim().parse().map_err(|_| bad("RESP"))?;
        (if n >= 0 { 200 } else { 404 }, n.max(-2) as usize + 2)
    } else {
        let status = line
            .strip_prefix("HTTP/1.1 ")
            .and_then(|r| r.get(..3))
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| bad("status line"))?;
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
        (status, len)
    };
    body.resize(len, 0);
    conn.read_exact(body)?;
    Ok(status)
}

/// What one load run saw.
pub struct Outcome {
    /// Answers received.
    pub done: u64,
    /// Answers other than 200 (HTTP) or a missing key (RESP).
    pub not_found: u64,
    /// Answers with any other status than 200 and 404 (a 5xx, say).
    pub failed: u64,
    /// How long it ran.
    pub secs: f64,
    /// Latency from each request's intended time, µs.
    pub hist: Histogram<u64>,
}

/// `rate` requests/s in all over `connections` connections for `secs` (open loop), or as fast as
/// they go (`rate` = None, closed loop). One thread per connection with blocking sockets:
/// `thread::sleep` keeps to the schedule within tens of microseconds, where a tokio timer would
/// add up to a millisecond to every latency.
pub fn load(
    addr: &str,
    connections: usize,
    request: Request,
    resp: bool,
    rate: Option<f64>,
    secs: f64,
) -> Outcome {
    let start = Instant::now() + Duration::from_millis(50);
    let end = start + Duration::from_secs_f64(secs);
    let threads: Vec<_> = (0..connections)
        .map(|c| {
            let addr = addr.to_string();
            let request = Arc::clone(&request);
            std::thread::spawn(move || {
                let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
                let (mut done, mut not_found, mut failed) = (0u64, 0u64, 0u64);
                let stream = TcpStream::connect(&addr).expect("connect");
                stream.set_nodelay(true).ok();
                let mut writer = stream.try_clone().expect("clone");
                let mut conn = BufReader::new(stream);
                let mut rng = SmallRng::seed_from_u64(c as u64);
                let (mut line, mut body) = (String::new(), Vec::new());
                // Connection c sends at start + (c + i * CONNECTIONS) / rate.
                let interval = rate.map(|r| Duration::from_secs_f64(connections as f64 / r));
                let mut next = start
                    + interval.map_or(Duration::ZERO, |i| i.mul_f64(c as f64 / connections as f64));
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
                    let req = request(&mut rng);
                    writer.write_all(&req).expect("send");
                    let status =
                        read_answer(&mut conn, resp, &mut line, &mut body).expect("answer");
                    // From the intended time: a late answer delays what should follow it.
                    hist.saturating_record(intended.elapsed().as_micros().max(1) as u64);
                    done += 1;
                    not_found += u64::from(status == 404);
                    failed += u64::from(status != 200 && status != 404);
                }
                (done, not_found, failed, hist)
            })
        })
        .collect();
    let mut out = Outcome {
        done: 0,
        not_found: 0,
        failed: 0,
        secs,
        hist: Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap(),
    };
    for t in threads {
        let (d, n, f, h) = t.join().expect("load thread");
        out.done += d;
        out.not_found += n;
        out.failed += f;
        out.hist.add(h).expect("same bounds");
    }
    out
}
