//! The end-to-end harness: the real servers `scripts/services.sh` starts (a Kafka-protocol
//! broker and ClickHouse on loopback), the real binary, and what HTTP, ClickHouse and the
//! dead-letter topic say, compared with the reference recomputation of the oracle tests.
//! Included by `pipeline.rs` and `recovery.rs` (`#[path]` module).
#![allow(dead_code)]

#[path = "../../../dataflow/tests/support/reference.rs"]
pub mod reference;
#[path = "../support/mod.rs"]
pub mod support;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::ClientConfig;
use reference::{reference, Admitted, Views};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use stockflow_dataflow::EngineConfig;
use stockflow_types::config::WindowSpec;
use stockflow_types::event::decode;
use stockflow_types::rows::WindowFigures;

pub static SERIAL: Mutex<()> = Mutex::new(());
pub static SERVICES: Once = Once::new();

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A port free on loopback now (for a process that must know its address in advance).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("a free port")
        .local_addr()
        .unwrap()
        .port()
}

/// The wall clock, epoch ms.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

pub fn kafka_addr() -> String {
    format!(
        "127.0.0.1:{}",
        std::env::var("STOCKFLOW_KAFKA_PORT").unwrap_or_else(|_| "9092".into())
    )
}

pub fn clickhouse_url() -> String {
    format!(
        "http://127.0.0.1:{}",
        std::env::var("STOCKFLOW_CLICKHOUSE_PORT").unwrap_or_else(|_| "8123".into())
    )
}

pub fn services(cmd: &str) {
    let status = Command::new(repo().join("scripts/services.sh"))
        .arg(cmd)
        .stdout(Stdio::null())
        .status()
        .expect("scripts/services.sh runs");
    assert!(status.success(), "scripts/services.sh {cmd} failed");
}

/// Names of one test's topics, group and database.
pub struct Names {
    pub prefix: String,
}

impl Names {
    pub fn new(test: &str) -> Self {
        SERVICES.call_once(|| services("up"));
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        Names {
            prefix: format!("t_{test}_{}", nanos % 1_000_000_000),
        }
    }
    pub fn inventory(&self) -> String {
        format!("{}_inventory", self.prefix)
    }
    pub fn orders(&self) -> String {
        format!("{}_orders", self.prefix)
    }
    pub fn dlq(&self) -> String {
        format!("{}_dlq", self.prefix)
    }
    /// Drops the test's ClickHouse database. (Its topics stay: deleting a topic makes tansu
    /// rewrite its SQLite file, which stalls the broker for the tests that follow.)
    pub fn clean_up(self) {
        if let Err(e) = clickhouse_exec(&format!("DROP DATABASE IF EXISTS {}", self.prefix)) {
            eprintln!("dropping the test database failed: {e}");
        }
        let _ = std::fs::remove_dir_all(self.checkpoints());
    }

    /// The test's checkpoint directory.
    pub fn checkpoints(&self) -> PathBuf {
        std::env::temp_dir().join(format!("stockflow-{}", self.prefix))
    }

    pub fn sets(&self) -> Vec<String> {
        vec![
            format!("kafka.brokers={}", kafka_addr()),
            format!("kafka.inventory_topic={}", self.inventory()),
            format!("kafka.orders_topic={}", self.orders()),
            format!("kafka.dead_letter_topic={}", self.dlq()),
            format!("kafka.group_id={}", self.prefix),
            "kafka.create_partitions=4".into(),
            format!("clickhouse.url={}", clickhouse_url()),
            format!("clickhouse.database={}", self.prefix),
            "clickhouse.flush_interval=200ms".into(),
            "pipeline.workers=2".into(),
            "http.listen=127.0.0.1:0".into(),
            format!("checkpoint.dir={}", self.checkpoints().display()),
            "checkpoint.interval=1s".into(),
        ]
    }
}

// ------------------------------------------------------------------------------------------
// The workload: valid events, duplicates, early terminal events, bad records.
// ------------------------------------------------------------------------------------------

pub const SKUS: [&str; 5] = ["S0", "S1", "S2", "S3", "S4"];
pub const LOCS: [&str; 3] = ["L0", "L1", "L2"];

#[derive(Default)]
pub struct Workload {
    /// (to the orders topic?, key, value) in production order.
    pub records: Vec<(bool, String, Vec<u8>)>,
    /// The valid ones, decoded, for the reference.
    pub admitted: Vec<Admitted>,
    /// Reason codes of the bad ones, by value.
    pub bad: BTreeMap<Vec<u8>, &'static str>,
}

impl Workload {
    pub fn valid(&mut self, orders: bool, v: Value) {
        let bytes = v.to_string().into_bytes();
        let ev = decode(&bytes).expect("valid event");
        self.records.push((orders, ev.sku.clone(), bytes));
        self.admitted.push(Admitted {
            at: 0,
            part: 0,
            lt: 0,
            ev: Some(ev),
        });
    }

    pub fn bad(&mut self, orders: bool, key: &str, bytes: Vec<u8>, reason: &'static str) {
        self.records.push((orders, key.into(), bytes.clone()));
        self.bad.insert(bytes, reason);
    }

    /// `n` records from `seed`; business times in the last ten minutes, expiries a day away or
    /// already past, so that the answers do not depend on when the pipeline reads them.
    pub fn generate(seed: u64, n: usize, id_prefix: &str) -> Self {
        let mut rng = SmallRng::seed_from_u64(seed);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let mut w = Workload::default();
        let mut reservations: Vec<(String, String)> = Vec::new();
        // Terminal events sent before their reservation: (id, sku) still to reserve.
        let mut early: Vec<(String, String)> = Vec::new();
        let mut next_id = 0;
        for i in 0..n {
            let id = format!("{id_prefix}-e{i}");
            let sku = SKUS[rng.random_range(0..SKUS.len())];
            let loc = LOCS[rng.random_range(0..LOCS.len())];
            let ts = now - 600_000 + rng.random_range(0..590_000);
            let roll = rng.random_range(0..100);
            match roll {
                0..=24 => w.valid(false, json!({"event_id": id, "type": "received", "sku": sku, "ts": ts, "location": loc, "qty": rng.random_range(1..20)})),
                25..=28 => w.valid(false, json!({"event_id": id, "type": "adjusted", "sku": sku, "ts": ts, "location": loc, "qty": rng.random_range(1..6) * if rng.random_bool(0.5) { -1 } else { 1 }})),
                29..=31 => w.valid(false, json!({"event_id": id, "type": "counted", "sku": sku, "ts": ts, "location": loc, "qty": rng.random_range(0..30)})),
                32..=44 => w.valid(true, json!({"event_id": id, "type": "sold", "sku": sku, "ts": ts, "location": loc, "qty": rng.random_range(1..5)})),
                45..=67 => {
                    let (rid, rsku) = if !early.is_empty() && rng.random_bool(0.5) {
                        early.swap_remove(0)
                    } else {
                        next_id += 1;
                        (format!("{id_prefix}-r{next_id}"), sku.to_string())
                    };
                    let expires_at = if rng.random_bool(0.8) { ts + 86_400_000 } else { ts - 60_000 };
                    w.valid(true, json!({"event_id": id, "type": "reserved", "sku": rsku, "ts": ts, "reservation_id": rid, "location": loc, "qty": rng.random_range(1..6), "expires_at": expires_at}));
                    reservations.push((rid, rsku));
                }
                68..=84 => {
                    let kind = if rng.random_bool(0.6) { "fulfilled" } else { "released" };
                    let (rid, rsku) = if reservations.is_empty() || rng.random_bool(0.15) {
                        next_id += 1;
                        let r = (format!("{id_prefix}-r{next_id}"), sku.to_string());
                        early.push(r.clone());
                        r
                    } else {
                        reservations[rng.random_range(0..reservations.len())].clone()
                    };
                    w.valid(true, json!({"event_id": id, "type": kind, "sku": rsku, "ts": ts, "reservation_id": rid}));
                }
                85..=94 => {
                    // A repeat of an earlier valid record: no further effect.
                    if let Some((orders, key, bytes)) = w.records.iter().filter(|r| !w.bad.contains_key(&r.2)).nth(rng.random_range(0..i.max(1))).cloned() {
                        let ev = decode(&bytes).expect("valid");
                        w.records.push((orders, key, bytes));
                        w.admitted.push(Admitted { at: 0, part: 0, lt: 0, ev: Some(ev) });
                    }
                }
                _ => match rng.random_range(0..4) {
                    0 => w.bad(false, sku, format!("{{\"event_id\": \"{id}\", broken").into_bytes(), "invalid_json"),
                    1 => w.bad(true, sku, json!({"event_id": id, "type": "sold", "sku": sku, "ts": ts, "location": loc}).to_string().into_bytes(), "missing_field"),
                    2 => w.bad(true, sku, json!({"event_id": id, "type": "stolen", "sku": sku, "ts": ts}).to_string().into_bytes(), "unknown_type"),
                    _ => w.bad(false, sku, json!({"event_id": id, "type": "sold", "sku": sku, "ts": ts, "location": loc, "qty": 1}).to_string().into_bytes(), "wrong_topic"),
                },
            }
        }
        w
    }

    pub fn extend(&mut self, other: Workload) {
        self.records.extend(other.records);
        self.admitted.extend(other.admitted);
        self.bad.extend(other.bad);
    }

    pub fn expected(&self) -> Views {
        let cfg = EngineConfig {
            tick_ms: 1,
            retention_ms: 1 << 40,
            window_retention_ms: 1 << 40,
            dedup_window_ms: 1 << 40,
            windows: vec![
                WindowSpec {
                    name: "1m".into(),
                    size_ms: 60_000,
                },
                WindowSpec {
                    name: "1h".into(),
                    size_ms: 3_600_000,
                },
            ],
            top_k: 100,
            top_tick_ms: 100,
            forget_per_time: usize::MAX,
            forecast: None,
        };
        // As of an hour from now: expiries are a day after `ts` or already past, either way.
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let mut v = reference(&self.admitted, now + 3_600_000, 1, &cfg);
        v.top.clear();
        v.windows.retain(|_, f| !f.is_zero());
        v
    }
}

/// The arguments of the binary for `names`, with `extra` settings.
pub fn args(names: &Names, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "--config".to_string(),
        repo().join("configs/kafka.toml").display().to_string(),
    ];
    for s in names
        .sets()
        .into_iter()
        .chain(extra.iter().map(|e| e.to_string()))
    {
        args.push("--set".into());
        args.push(s);
    }
    args
}

pub fn produce(names: &Names, records: &[(bool, String, Vec<u8>)]) {
    let producer: ThreadedProducer<_> = ClientConfig::new()
        .set("bootstrap.servers", kafka_addr())
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "5")
        .create()
        .expect("a producer");
    let (inv, ord) = (names.inventory(), names.orders());
    for (orders, key, value) in records {
        let topic = if *orders { &ord } else { &inv };
        producer
            .send(BaseRecord::to(topic).key(key.as_bytes()).payload(value))
            .map_err(|(e, _)| e)
            .expect("queued");
    }
    producer
        .flush(Duration::from_secs(30))
        .expect("acknowledged");
}

// ------------------------------------------------------------------------------------------
// The pipeline process, and what it says over HTTP and in ClickHouse.
// ------------------------------------------------------------------------------------------

pub struct Pipeline {
    pub child: Child,
    pub base: String,
}

impl Pipeline {
    pub fn start(names: &Names) -> Self {
        Self::start_with(names, &[])
    }

    pub fn start_with(names: &Names, extra: &[&str]) -> Self {
        let (child, base) = support::start_serving(args(names, extra));
        Pipeline { child, base }
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        get(&self.base, path)
    }

    /// What HTTP says about every SKU and reservation of `expected`.
    pub fn views(&self, expected: &Views) -> Views {
        views(&self.base, expected)
    }

    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (status, body) = self.get("/readyz");
            if status == 200 {
                return;
            }
            assert!(Instant::now() < deadline, "not ready in 60 s: {body}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn terminate(mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.child.try_wait().expect("wait").is_none() {
            assert!(
                Instant::now() < deadline,
                "no clean exit within 60 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Lints `/metrics` with promtool (with Kafka and ClickHouse, every metric is there).
    pub fn lint_metrics(&self) {
        let text = ureq::get(&format!("{}/metrics", self.base))
            .call()
            .expect("metrics")
            .into_string()
            .expect("text");
        support::promtool_accepts(&text);
    }

    /// The sum of every sample of `/metrics` whose line starts with `prefix`.
    pub fn metric(&self, prefix: &str) -> f64 {
        let text = ureq::get(&format!("{}/metrics", self.base))
            .call()
            .expect("metrics")
            .into_string()
            .expect("text");
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Waits until `/readyz` answers `status` with a detail containing `detail`.
    pub fn wait_readyz(&self, status: u16, detail: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let (s, body) = self.get("/readyz");
            if s == status && body["detail"].as_str().unwrap_or("").contains(detail) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "/readyz did not answer {status} with {detail:?} within {within:?}: {s} {body}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn kill9(mut self) {
        self.child.kill().expect("SIGKILL");
        let _ = self.child.wait();
    }
}

/// `GET base+path`: the status and the JSON body (`null` if none).
pub fn get(base: &str, path: &str) -> (u16, Value) {
    match ureq::get(&format!("{base}{path}")).call() {
        Ok(r) => (
            r.status(),
            serde_json::from_str(&r.into_string().unwrap_or_default()).unwrap_or(Value::Null),
        ),
        Err(ureq::Error::Status(code, r)) => (
            code,
            serde_json::from_str(&r.into_string().unwrap_or_default()).unwrap_or(Value::Null),
        ),
        Err(e) => panic!("GET {path}: {e}"),
    }
}

/// What HTTP at `base` says about every SKU and reservation of `expected`.
pub fn views(base: &str, expected: &Views) -> Views {
    let mut v = Views::default();
    for sku in SKUS {
        let (status, body) = get(base, &format!("/v1/stock/{sku}"));
        if status == 200 {
            for l in body["locations"].as_array().expect("locations") {
                let loc = l["location"].as_str().unwrap().to_string();
                v.stock.insert(
                    (sku.into(), loc),
                    (
                        l["on_hand"].as_i64().unwrap(),
                        l["reserved"].as_i64().unwrap(),
                    ),
                );
            }
        }
        for (name, size) in [("1m", 60_000u64), ("1h", 3_600_000)] {
            let (_, body) = get(base, &format!("/v1/analytics/sku/{sku}?window={name}"));
            for b in body["buckets"].as_array().into_iter().flatten() {
                let start =
                    stockflow_types::timefmt::parse_param(b["start"].as_str().unwrap()).unwrap();
                let f = figures(
                    &b["units_sold"],
                    &b["units_received"],
                    &b["units_reserved"],
                    &b["orders"],
                );
                if !f.is_zero() {
                    v.windows.insert(
                        (
                            size,
                            start,
                            sku.into(),
                            b["location"].as_str().unwrap().into(),
                        ),
                        f,
                    );
                }
            }
        }
    }
    for id in expected.reservations.keys() {
        let (status, body) = get(base, &format!("/v1/reservations/{id}"));
        if status == 200 {
            v.reservations.insert(id.clone(), reservation_row(&body));
        }
    }
    v
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn figures(sold: &Value, received: &Value, reserved: &Value, orders: &Value) -> WindowFigures {
    let n = |v: &Value| {
        v.as_i64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            .expect("a number")
    };
    WindowFigures {
        units_sold: n(sold),
        units_received: n(received),
        units_reserved: n(reserved),
        orders: n(orders),
    }
}

pub fn reservation_row(v: &Value) -> stockflow_types::rows::ReservationRow {
    let status = match v["status"].as_str().expect("status") {
        "held" => stockflow_types::rows::Status::Held,
        "insufficient" => stockflow_types::rows::Status::Insufficient,
        "expired" => stockflow_types::rows::Status::Expired,
        "released" => stockflow_types::rows::Status::Released,
        "fulfilled" => stockflow_types::rows::Status::Fulfilled,
        other => panic!("status {other}"),
    };
    let expires_at = match &v["expires_at"] {
        Value::String(s) => stockflow_types::timefmt::parse_param(s).expect("a time"),
        other => other.as_u64().expect("seconds") * 1000,
    };
    stockflow_types::rows::ReservationRow {
        reservation_id: v["reservation_id"].as_str().unwrap().into(),
        sku: v["sku"].as_str().unwrap().into(),
        location: v["location"].as_str().unwrap().into(),
        qty: v["qty"]
            .as_i64()
            .or_else(|| v["qty"].as_str().and_then(|s| s.parse().ok()))
            .unwrap(),
        status,
        expires_at,
    }
}

pub fn clickhouse_exec(statement: &str) -> Result<(), String> {
    ureq::post(&clickhouse_url())
        .send_string(statement)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

pub fn clickhouse(query: &str) -> Result<Vec<Value>, String> {
    let r = ureq::post(&clickhouse_url())
        .send_string(&format!("{query} FORMAT JSONEachRow"))
        .map_err(|e| e.to_string())?;
    Ok(r.into_string()
        .map_err(|e| e.to_string())?
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON rows"))
        .collect())
}

/// What ClickHouse says, read as a BI tool would: the `*_current` views (`FINAL`,
/// `deleted = 0`).
pub fn clickhouse_views(db: &str) -> Result<Views, String> {
    let mut v = Views::default();
    for r in clickhouse(&format!(
        "SELECT sku, location, on_hand, reserved, available FROM {db}.stock_levels_current"
    ))? {
        let n = |k: &str| {
            r[k].as_i64()
                .or_else(|| r[k].as_str().and_then(|s| s.parse().ok()))
                .unwrap()
        };
        assert_eq!(n("available"), n("on_hand") - n("reserved"));
        v.stock.insert(
            (
                r["sku"].as_str().unwrap().into(),
                r["location"].as_str().unwrap().into(),
            ),
            (n("on_hand"), n("reserved")),
        );
    }
    for r in clickhouse(&format!("SELECT reservation_id, sku, location, qty, status, toUInt32(expires_at) AS expires_at FROM {db}.reservations_current"))? {
        let row = reservation_row(&r);
        v.reservations.insert(row.reservation_id.to_string(), row);
    }
    for r in clickhouse(&format!("SELECT window, toUInt32(window_start) AS start, sku, location, units_sold, units_received, units_reserved, orders FROM {db}.sales_windows_current"))? {
        let size = match r["window"].as_str().unwrap() { "1m" => 60_000, "1h" => 3_600_000, w => panic!("window {w}") };
        let start = r["start"].as_u64().or_else(|| r["start"].as_str().and_then(|s| s.parse().ok())).unwrap() * 1000;
        let f = figures(&r["units_sold"], &r["units_received"], &r["units_reserved"], &r["orders"]);
        if !f.is_zero() {
            v.windows.insert((size, start, r["sku"].as_str().unwrap().into(), r["location"].as_str().unwrap().into()), f);
        }
    }
    Ok(v)
}

/// ClickHouse stores whole seconds: compare expiries at that precision.
pub fn in_seconds(mut v: Views) -> Views {
    for r in v.reservations.values_mut() {
        r.expires_at = r.expires_at / 1000 * 1000;
    }
    v
}

/// The entries in which two maps differ, one per line.
fn differences<K: Ord + std::fmt::Debug, V: PartialEq + std::fmt::Debug>(
    name: &str,
    expected: &BTreeMap<K, V>,
    seen: &BTreeMap<K, V>,
) -> String {
    let mut out = String::new();
    for (k, v) in expected {
        match seen.get(k) {
            Some(s) if s == v => {}
            Some(s) => out += &format!("  {name} {k:?}: expected {v:?}, seen {s:?}\n"),
            None => out += &format!("  {name} {k:?}: expected {v:?}, missing\n"),
        }
    }
    for (k, s) in seen {
        if !expected.contains_key(k) {
            out += &format!("  {name} {k:?}: not expected, seen {s:?}\n");
        }
    }
    out
}

/// Waits until `observe` equals `expected`, then asserts it (showing the differences if not).
pub fn eventually(
    what: &str,
    expected: &Views,
    mut observe: impl FnMut() -> Result<Views, String>,
) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let seen = observe();
        if seen.as_ref() == Ok(expected) {
            return;
        }
        if Instant::now() > deadline {
            let seen = seen.expect("reachable at the end");
            panic!(
                "{what} differs from the reference:\n{}{}{}",
                differences("stock", &expected.stock, &seen.stock),
                differences("reservation", &expected.reservations, &seen.reservations),
                differences("window", &expected.windows, &seen.windows),
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn check_all(p: &Pipeline, names: &Names, w: &Workload) {
    let expected = w.expected();
    assert!(
        expected.stock.len() > 5 && expected.reservations.len() > 20,
        "a workload worth checking"
    );
    eventually("HTTP", &expected, || Ok(p.views(&expected)));
    let expected_ch = in_seconds(expected);
    eventually("ClickHouse", &expected_ch, || {
        clickhouse_views(&names.prefix).map(in_seconds)
    });
}

/// The dead-letter topic: (value, reason header, source topic header) of every record.
pub fn dead_letters(names: &Names, at_least: usize) -> Vec<(Vec<u8>, String, String)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka_addr())
        .set("group.id", format!("{}_reader", names.prefix))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("a consumer");
    consumer.subscribe(&[&names.dlq()]).expect("subscribed");
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut quiet_since = Instant::now();
    while Instant::now() < deadline
        && (out.len() < at_least || quiet_since.elapsed() < Duration::from_secs(3))
    {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let header = |name: &str| {
                    m.headers()
                        .and_then(|h| h.iter().find(|x| x.key == name).and_then(|x| x.value))
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                        .unwrap_or_default()
                };
                out.push((
                    m.payload().unwrap_or_default().to_vec(),
                    header("stockflow.reason"),
                    header("stockflow.source.topic"),
                ));
                quiet_since = Instant::now();
            }
            Some(Err(e)) => panic!("reading the dead-letter topic: {e}"),
            None => {}
        }
    }
    out
}

pub fn check_dead_letters(names: &Names, w: &Workload, exactly_once: bool) {
    let dls = dead_letters(names, w.bad.len());
    let mut seen: BTreeMap<Vec<u8>, usize> = BTreeMap::new();
    for (value, reason, topic) in &dls {
        let expected = w.bad.get(value).unwrap_or_else(|| {
            panic!(
                "unexpected dead letter {:?}",
                String::from_utf8_lossy(value)
            )
        });
        assert_eq!(
            reason,
            expected,
            "reason of {:?}",
            String::from_utf8_lossy(value)
        );
        assert!(topic == &names.inventory() || topic == &names.orders());
        *seen.entry(value.clone()).or_default() += 1;
    }
    for value in w.bad.keys() {
        let n = seen.get(value).copied().unwrap_or(0);
        assert!(
            n >= 1,
            "lost dead letter {:?}",
            String::from_utf8_lossy(value)
        );
        if exactly_once {
            assert_eq!(
                n,
                1,
                "dead letter sent {n} times: {:?}",
                String::from_utf8_lossy(value)
            );
        }
    }
}
