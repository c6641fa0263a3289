//! Many processes as one timely cluster, end to end: real processes on loopback, the real
//! broker and ClickHouse. Every process answers every lookup exactly (the reference against
//! HTTP on each, and against ClickHouse) while traffic flows; read-your-writes with the
//! offsets a producer got back; the loss of a process stops the others (503, then they exit)
//! and the cluster restarts from the newest checkpoint every process holds, exact again.

#[path = "e2e/mod.rs"]
mod e2e;

use e2e::*;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext, Message};
use serde_json::json;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The addresses of an `n`-process cluster: timely's and HTTP's, one pair per process.
struct Shape {
    timely: Vec<String>,
    http: Vec<String>,
}

impl Shape {
    fn new(n: usize) -> Self {
        Shape {
            timely: (0..n)
                .map(|_| format!("127.0.0.1:{}", free_port()))
                .collect(),
            http: (0..n)
                .map(|_| format!("127.0.0.1:{}", free_port()))
                .collect(),
        }
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

    /// Starts process `i` (it serves once every process has connected).
    fn start(&self, names: &Names, i: usize, extra: &[&str]) -> Pipeline {
        let mut sets: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        sets.extend([
            format!("cluster.addresses={}", Shape::list(&self.timely)),
            format!("cluster.http={}", Shape::list(&self.http)),
            format!("cluster.process={i}"),
            format!("http.listen={}", self.http[i]),
            format!(
                "checkpoint.dir={}",
                names.checkpoints().join(format!("p{i}")).display()
            ),
        ]);
        let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
        let child = Command::new(env!("CARGO_BIN_EXE_stockflow"))
            .args(args(names, &sets))
            .env("RUST_LOG", "warn")
            .env("RUST_BACKTRACE", "0")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the binary starts");
        Pipeline {
            child,
            base: format!("http://{}", self.http[i]),
        }
    }

    fn start_all(&self, names: &Names, extra: &[&str]) -> Vec<Pipeline> {
        let ps: Vec<Pipeline> = (0..self.timely.len())
            .map(|i| self.start(names, i, extra))
            .collect();
        for p in &ps {
            wait_serving(p);
        }
        ps
    }
}

/// Waits until `p` answers HTTP at all (it does once the cluster has connected).
fn wait_serving(p: &Pipeline) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while ureq::get(&format!("{}/healthz", p.base)).call().is_err() {
        assert!(Instant::now() < deadline, "{} never served", p.base);
        std::thread::sleep(Duration::from_millis(100));
    }
}

const CHECKPOINTS: &str = "checkpoint.enabled=true";

#[test]
fn two_and_three_processes_answer_every_lookup_exactly() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    for n in [2, 3] {
        let names = Names::new(&format!("cluster{n}"));
        let mut w = Workload::generate(40 + n as u64, 500, &format!("c{n}"));
        let shape = Shape::new(n);
        let ps = shape.start_all(&names, &[CHECKPOINTS, "http.max_wait=1s"]);
        for p in &ps {
            p.wait_ready();
        }
        produce(&names, &w.records);
        // More while the first half is being read: traffic flows during the checks.
        let more = Workload::generate(80 + n as u64, 500, &format!("d{n}"));
        produce(&names, &more.records);
        w.extend(more);
        let expected = w.expected();
        for (i, p) in ps.iter().enumerate() {
            eventually(&format!("HTTP of process {i} of {n}"), &expected, || {
                Ok(p.views(&expected))
            });
        }
        eventually("ClickHouse", &in_seconds(expected), || {
            clickhouse_views(&names.prefix).map(in_seconds)
        });
        // Each process forwarded some lookups to the owners of the SKUs it does not own.
        for p in &ps {
            assert!(p.metric("stockflow_http_forwarded_total{outcome=\"ok\"}") > 0.0);
        }
        ps[0].lint_metrics();
        if n == 2 {
            read_your_writes(&names, &ps);
            one_id_one_sku_across_processes(&names, &ps);
        }
        stop(ps);
        names.clean_up();
    }
}

/// Stops a cluster: every process at once (each waits for the others' last checkpoint and
/// durability, and timely's connections close only when all have stopped).
fn stop(ps: Vec<Pipeline>) {
    for p in &ps {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(p.child.id().to_string())
            .status();
    }
    for p in ps {
        p.terminate();
    }
}

/// What a producer learns of its writes: (partition, offset) of each, once acknowledged.
#[derive(Default)]
struct Acks(Mutex<Vec<(i32, i64)>>);

impl ClientContext for Acks {}
impl ProducerContext for Acks {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let m = result.as_ref().expect("acknowledged");
        self.0.lock().unwrap().push((m.partition(), m.offset()));
    }
}

/// Kafka's default partitioner (murmur2 of the key), as librdkafka's `murmur2_random`.
fn partition_of(key: &str, partitions: u32) -> u32 {
    const M: u32 = 0x5bd1_e995;
    let data = key.as_bytes();
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let chunks = data.chunks_exact(4);
    let tail = chunks.remainder();
    for c in chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M) ^ k;
    }
    if !tail.is_empty() {
        for (i, b) in tail.iter().enumerate().rev() {
            h ^= u32::from(*b) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    (h & 0x7fff_ffff) % partitions
}

/// A reservation id bound to a SKU whose partition one process reads, then named under a SKU
/// whose partition the other reads: the id's owner decides, so the second is a dead letter
/// (`reservation_sku_mismatch`) wherever it was read, and every process finds the reservation.
fn one_id_one_sku_across_processes(names: &Names, ps: &[Pipeline]) {
    // 4 partitions over 2 processes of 2 workers: process (p % 4) / 2 reads partition p.
    let sku_read_by = |process: u32| {
        (0..)
            .map(|i| format!("IDS-{i}"))
            .find(|k| partition_of(k, 4) / 2 == process)
            .expect("some key")
    };
    let (a, b) = (sku_read_by(0), sku_read_by(1));
    let now = now_ms();
    let id = format!("xid-{}", names.prefix);
    let mut w = Workload::default();
    w.valid(true, json!({"event_id": "xr", "type": "reserved", "sku": a, "ts": now, "reservation_id": id, "location": "L", "qty": 1, "expires_at": now + 86_400_000}));
    produce(names, &w.records);
    let deadline = Instant::now() + Duration::from_secs(30);
    while ps[0].get(&format!("/v1/reservations/{id}")).0 != 200 {
        assert!(Instant::now() < deadline, "the reservation never showed");
        std::thread::sleep(Duration::from_millis(100));
    }
    let stray = json!({"event_id": "xs", "type": "released", "sku": b, "ts": now + 1, "reservation_id": id}).to_string();
    produce(names, &[(true, b, stray.clone().into_bytes())]);
    let dls = dead_letters(names, 1);
    assert!(
        dls.iter()
            .any(|(v, reason, _)| *v == stray.as_bytes() && reason == "reservation_sku_mismatch"),
        "the stray release is a dead letter: {dls:?}"
    );
    for p in ps {
        let (status, body) = p.get(&format!("/v1/reservations/{id}"));
        assert_eq!(status, 200, "{}: {body}", p.base);
        assert_eq!(body["sku"], a.as_str(), "{body}");
        assert_eq!(
            body["status"], "insufficient",
            "no stock, not released: {body}"
        );
    }
}

/// A write, then at once a lookup on every process with its offset: each sees the write.
/// An offset not yet written ends in a 504 problem after `http.max_wait`.
fn read_your_writes(names: &Names, ps: &[Pipeline]) {
    let producer: ThreadedProducer<Acks> = ClientConfig::new()
        .set("bootstrap.servers", kafka_addr())
        .create_with_context(Acks::default())
        .expect("a producer");
    let ts = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    for (round, p) in ps.iter().enumerate() {
        let loc = format!("RYW{round}");
        let event = json!({"event_id": format!("ryw-{round}-{}", names.prefix), "type": "received",
            "sku": "S1", "ts": ts, "location": loc, "qty": 7});
        producer
            .send(
                BaseRecord::to(&names.inventory())
                    .key("S1")
                    .payload(&event.to_string()),
            )
            .map_err(|(e, _)| e)
            .expect("queued");
        producer.flush(Duration::from_secs(30)).expect("flushed");
        let (partition, offset) = producer.context().0.lock().unwrap().pop().expect("an ack");
        let (status, body) = p.get(&format!(
            "/v1/stock/S1/{loc}?min_offsets=inventory:{partition}:{offset}"
        ));
        assert_eq!(
            status, 200,
            "the write is visible at once on {}: {body}",
            p.base
        );
        assert_eq!(body["on_hand"], 7, "{body}");
        // The same through the topic's own name, on a reservation-less SKU lookup.
        let (status, body) = p.get(&format!(
            "/v1/stock/S1?min_offsets={}:{partition}:{offset}",
            names.inventory()
        ));
        assert_eq!(status, 200, "{body}");
    }
    let started = Instant::now();
    let (status, body) = ps[0].get("/v1/stock/S1?min_offsets=inventory:0:999999999");
    println!(
        "an unsatisfiable wait ended after {:?}: {status} {body}",
        started.elapsed()
    );
    assert_eq!(status, 504, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("not reflected"),
        "{body}"
    );
    let (status, body) = ps[0].get("/v1/stock/S1?min_offsets=nowhere:0:1");
    assert_eq!(status, 400, "{body}");
}

#[test]
fn a_cluster_that_loses_a_process_stops_and_restarts_exactly() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let names = Names::new("clusterkill");
    let mut w = Workload::generate(7, 500, "k");
    let shape = Shape::new(2);
    let mut ps = shape.start_all(&names, &[CHECKPOINTS]);
    for p in &ps {
        p.wait_ready();
    }
    produce(&names, &w.records);
    let expected = w.expected();
    eventually("HTTP before the loss", &expected, || {
        Ok(ps[0].views(&expected))
    });
    // Two checkpoints on each process (one a second), then more traffic, then the loss of one.
    let dirs: Vec<_> = (0..2)
        .map(|i| names.checkpoints().join(format!("p{i}")))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !dirs.iter().all(|d| {
        std::fs::read_dir(d).is_ok_and(|e| {
            e.flatten()
                .filter(|f| f.file_name().to_string_lossy().ends_with(".sfc"))
                .count()
                >= 2
        })
    }) {
        assert!(
            Instant::now() < deadline,
            "not two checkpoints on every process"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let more = Workload::generate(8, 400, "l");
    produce(&names, &more.records);
    w.extend(more);
    let lost = ps.pop().expect("two");
    lost.kill9();
    // The survivor stops answering as if nothing happened: 503 while it ends, then gone.
    let mut survivor = ps.pop().expect("one");
    let mut saw_503 = false;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if survivor.child.try_wait().expect("wait").is_some() {
            break;
        }
        match ureq::get(&format!("{}/v1/stock/S0", survivor.base)).call() {
            Err(ureq::Error::Status(503, r)) => {
                let body = r.into_string().unwrap_or_default();
                assert!(body.contains("stopped"), "{body}");
                saw_503 = true;
            }
            Ok(r) => assert!(!saw_503, "answered {} after answering 503", r.status()),
            Err(_) => {}
        }
        assert!(
            Instant::now() < deadline,
            "the survivor did not end within 30 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(saw_503, "the survivor answered 503 before it ended");
    // One process loses its newest checkpoint: the cluster must agree on one both still hold.
    let mut held: Vec<_> = std::fs::read_dir(&dirs[1])
        .unwrap()
        .flatten()
        .map(|f| f.path())
        .filter(|p| p.extension().is_some_and(|e| e == "sfc"))
        .collect();
    held.sort();
    assert!(held.len() >= 2, "checkpoints to fall back on: {held:?}");
    std::fs::remove_file(held.last().unwrap()).unwrap();
    // The cluster restarts from the checkpoints it agrees on, and is exact again.
    let ps = shape.start_all(&names, &[CHECKPOINTS]);
    for p in &ps {
        assert!(
            p.metric("stockflow_checkpoint_restore_seconds") > 0.0,
            "{} restored a checkpoint",
            p.base
        );
    }
    let expected = w.expected();
    for (i, p) in ps.iter().enumerate() {
        eventually(
            &format!("HTTP of process {i} after the restart"),
            &expected,
            || Ok(p.views(&expected)),
        );
    }
    eventually(
        "ClickHouse after the restart",
        &in_seconds(expected),
        || clickhouse_views(&names.prefix).map(in_seconds),
    );
    stop(ps);
    names.clean_up();
}
