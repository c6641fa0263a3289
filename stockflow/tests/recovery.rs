//! State that survives, end to end against the real broker and ClickHouse that
//! `scripts/services.sh` starts: a restart never changes an answer (the late cycle count of the
//! report that started this), kill -9 at random moments under continuous production (also
//! while a checkpoint is being written), damaged checkpoints, a checkpoint directory that is
//! full or read-only, and a start that would need records the broker deleted.
//!
//! Every test uses its own topics, consumer group, ClickHouse database and checkpoint
//! directory; they run one at a time.

#[path = "e2e/mod.rs"]
mod e2e;

use e2e::*;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::ClientConfig;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn checkpoint_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|e| e == "sfc"));
    files.sort();
    files
}

fn wait_for(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The report's repro with its settings scaled down 30 times (retention 2 min → 4 s, one-minute
/// windows → 2 s): a receipt, a cycle count and a sale 3.0, 2.7 and 2.3 s old when produced.
/// Before log time, a restart more than the retention later re-decided the count against the new
/// clock, rejected it as `count_too_old` and answered 5 instead of 95.
#[test]
fn a_restart_never_changes_a_late_count() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let names = Names::new("repro");
    let settings = [
        "pipeline.retention=4s",
        "pipeline.windows=[\"2s\"]",
        "pipeline.window_retention=4s",
        "clickhouse.enabled=false",
        // One partition per topic and no heartbeats: the log frontier moves with this test's
        // records alone (the log must not grow between the restarts compared).
        "kafka.create_partitions=1",
        "kafka.idle_heartbeat=0s",
    ];
    let p = Pipeline::start_with(&names, &settings); // creates the topics
    let now = now_ms();
    let mut w = Workload::default();
    w.valid(false, json!({"event_id": "r1", "type": "received", "sku": "RP-1", "ts": now - 3000, "location": "L", "qty": 10}));
    w.valid(false, json!({"event_id": "c1", "type": "counted", "sku": "RP-1", "ts": now - 2667, "location": "L", "qty": 100}));
    w.valid(true, json!({"event_id": "s1", "type": "sold", "sku": "RP-1", "ts": now - 2333, "location": "L", "qty": 5}));
    produce(&names, &w.records);
    // Ready means everything the topics held at start is in the answers (read, or restored).
    let on_hand = |p: &Pipeline| {
        p.wait_ready();
        let (_, body) = p.get("/v1/stock/RP-1/L");
        body["on_hand"].as_i64().expect("on_hand")
    };
    wait_for("the three events", Duration::from_secs(30), || {
        p.metric("stockflow_events_ingested_total") >= 3.0
    });
    assert_eq!(on_hand(&p), 95);

    // A reservation, and a release naming it under another SKU: bad input, with its own reason.
    let mut r = Workload::default();
    r.valid(true, json!({"event_id": "h1", "type": "reserved", "sku": "RP-1", "ts": now - 2000, "reservation_id": "res-1", "location": "L", "qty": 1, "expires_at": now - 1000}));
    let mismatch = json!({"event_id": "x1", "type": "released", "sku": "OTHER", "ts": now - 1500, "reservation_id": "res-1"});
    r.bad(
        true,
        "OTHER",
        mismatch.to_string().into_bytes(),
        "reservation_sku_mismatch",
    );
    produce(&names, &r.records);
    let produced = now_ms();
    // More than the retention later in log time, traffic on both topics moves the log
    // frontier: res-1 is forgotten, and its lookup says so. Its tombstone lives from
    // `retention` to twice `retention` after the reservation's log time (its record's
    // timestamp, just before `produced`): a frontier 5 s later is within it.
    std::thread::sleep(Duration::from_millis(5000));
    let later = now_ms();
    let mut tick = Workload::default();
    tick.valid(false, json!({"event_id": "t1", "type": "received", "sku": "TICK", "ts": later, "location": "L", "qty": 1}));
    tick.valid(true, json!({"event_id": "t2", "type": "sold", "sku": "TICK", "ts": later, "location": "L", "qty": 1}));
    produce(&names, &tick.records);
    assert!(
        now_ms() - produced < 7000,
        "the broker took too long; the test cannot tell"
    );
    let dls = dead_letters(&names, 1);
    assert_eq!(dls.len(), 1, "{dls:?}");
    assert_eq!(dls[0].1, "reservation_sku_mismatch");
    let forgotten = |p: &Pipeline| {
        let (status, body) = p.get("/v1/reservations/res-1");
        status == 404
            && body["detail"]
                .as_str()
                .unwrap_or("")
                .contains("forgotten after the retention")
    };
    wait_for("res-1 to be forgotten", Duration::from_secs(30), || {
        forgotten(&p)
    });
    assert_eq!(on_hand(&p), 95);
    p.terminate();
    for (round, extra) in [
        (1, &settings[..]),
        (2, &settings[..]),
        (3, &settings[..]),
        (
            4,
            &[&settings[..], &["checkpoint.enabled=false"]].concat()[..],
        ),
    ] {
        let p = Pipeline::start_with(&names, extra);
        assert_eq!(on_hand(&p), 95, "after restart {round}");
        assert!(
            forgotten(&p),
            "after restart {round}: {:?}",
            p.get("/v1/reservations/res-1")
        );
        assert_eq!(
            p.metric("stockflow_events_rejected_total{reason=\"count_too_old\"}"),
            0.0,
            "after restart {round}"
        );
        match round {
            2 => p.kill9(),
            _ => p.terminate(),
        }
    }
    assert!(!checkpoint_files(&names.checkpoints()).is_empty());
    names.clean_up();
}

/// kill -9 at random moments, four rounds, one of them while a checkpoint is being written,
/// while a producer keeps writing: HTTP, ClickHouse and the dead-letter topic end exact.
#[test]
fn kill_9_at_random_moments_under_production() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let names = Names::new("kills");
    let settings = ["checkpoint.interval=300ms", "checkpoint.keep=2"];
    let first = Pipeline::start_with(&names, &settings); // creates the topics
    first.wait_ready();
    let producing = {
        let names = Names {
            prefix: names.prefix.clone(),
        };
        std::thread::spawn(move || {
            let mut w = Workload::default();
            for part in 0..14 {
                let chunk = Workload::generate(100 + part, 300, &format!("q{part}"));
                produce(&names, &chunk.records);
                w.extend(chunk);
                std::thread::sleep(Duration::from_millis(300));
            }
            w
        })
    };
    let mut rng = SmallRng::seed_from_u64(7);
    let mut p = first;
    for round in 0..4 {
        if round == 2 {
            // Kill while a checkpoint is being written: as soon as its temporary file exists.
            let dir = names.checkpoints();
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut caught = false;
            while Instant::now() < deadline {
                let writing = std::fs::read_dir(&dir).is_ok_and(|d| {
                    d.flatten()
                        .any(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
                });
                if writing {
                    caught = true;
                    break;
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            eprintln!("round {round}: killed while a checkpoint was being written: {caught}");
        } else {
            std::thread::sleep(Duration::from_millis(rng.random_range(400..2500)));
        }
        p.kill9();
        p = Pipeline::start_with(&names, &settings);
    }
    let w = producing.join().expect("producer thread");
    p.wait_ready();
    check_all(&p, &names, &w);
    assert!(
        p.metric("stockflow_checkpoint_restore_seconds") > 0.0,
        "the last start restored a checkpoint"
    );
    check_dead_letters(&names, &w, false);
    drop(p);
    names.clean_up();
}

/// The newest checkpoint truncated, the one before with a byte flipped: both are skipped with a
/// warning and counted, the oldest is restored, the answers are exact.
#[test]
fn damaged_checkpoints_are_never_loaded() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let names = Names::new("damaged");
    let settings = ["checkpoint.interval=200ms", "checkpoint.keep=3"];
    let p = Pipeline::start_with(&names, &settings);
    let w = Workload::generate(40, 1200, "d");
    produce(&names, &w.records);
    p.wait_ready();
    check_all(&p, &names, &w);
    std::thread::sleep(Duration::from_secs(1));
    p.terminate();
    let files = checkpoint_files(&names.checkpoints());
    assert_eq!(files.len(), 3, "{files:?}");
    let newest = std::fs::read(&files[2]).unwrap();
    std::fs::write(&files[2], &newest[..newest.len() / 2]).unwrap();
    let mut second = std::fs::read(&files[1]).unwrap();
    let i = second.len() / 3;
    second[i] ^= 0x40;
    std::fs::write(&files[1], &second).unwrap();
    let p = Pipeline::start_with(&names, &settings);
    p.wait_ready();
    check_all(&p, &names, &w);
    assert_eq!(p.metric("stockflow_checkpoint_corrupt_total"), 2.0);
    assert!(p.metric("stockflow_checkpoint_restore_seconds") > 0.0);
    check_dead_letters(&names, &w, true);
    drop(p);
    names.clean_up();
}

/// A small tmpfs as the checkpoint directory, mounted for the test (the suite runs as root).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: PathBuf, size: &str) -> Self {
        std::fs::create_dir_all(&path).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .output()
            .expect("mount runs");
        assert!(
            out.status.success(),
            "mounting a tmpfs for the test failed (the suite runs as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(path)
    }

    fn remount(&self, options: &str) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(&self.0)
            .output()
            .expect("mount runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// A checkpoint directory that is full, then read-only: the pipeline keeps serving exact
/// answers, `/readyz` and a metric say why, and it recovers once the directory does.
#[test]
fn a_full_or_read_only_checkpoint_directory_is_reported_not_fatal() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let names = Names::new("full");
    let fs = Tmpfs::mount(names.checkpoints(), "1m");
    // Fill it up.
    let filler = fs.0.join("filler");
    let _ = std::fs::write(&filler, vec![0u8; 2 << 20]);
    let settings = ["checkpoint.interval=200ms"];
    let p = Pipeline::start_with(&names, &settings);
    let w = Workload::generate(50, 800, "f");
    produce(&names, &w.records);
    p.wait_readyz(503, "writing checkpoints fails", Duration::from_secs(30));
    assert!(p.metric("stockflow_checkpoint_failures_total") > 0.0);
    eventually("HTTP", &w.expected(), || Ok(p.views(&w.expected())));
    assert!(checkpoint_files(&fs.0).is_empty());
    std::fs::remove_file(&filler).unwrap();
    p.wait_ready();
    wait_for("a checkpoint", Duration::from_secs(10), || {
        !checkpoint_files(&fs.0).is_empty()
    });
    fs.remount("ro");
    p.wait_readyz(503, "writing checkpoints fails", Duration::from_secs(30));
    assert_eq!(p.get("/v1/stock/S0").0, 200);
    fs.remount("rw");
    p.wait_ready();
    check_all(&p, &names, &w);
    p.terminate();
    // What was written reads back whole.
    let p = Pipeline::start_with(&names, &settings);
    p.wait_ready();
    check_all(&p, &names, &w);
    assert_eq!(p.metric("stockflow_checkpoint_corrupt_total"), 0.0);
    drop(p);
    drop(fs);
    names.clean_up();
}

/// Records deleted by the broker that no checkpoint holds: the start stops with an error naming
/// the topic, the partition and the missing offsets, unless `checkpoint.allow_gap` is set.
/// (tansu applies a topic's `retention.ms` by record timestamp when it starts.)
#[test]
fn a_start_that_needs_deleted_records_stops_with_a_clear_error() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let names = Names::new("gap");
    create_topics_with_retention(&names);
    produce_old_and_new(&names);
    services("restart-kafka");
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka_addr())
        .create()
        .expect("a consumer");
    let (first, end) = consumer
        .fetch_watermarks(&names.inventory(), 0, Duration::from_secs(30))
        .expect("watermarks");
    assert!(
        first > 0 && end == 9,
        "the broker should have deleted the old records: offsets {first}..{end}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_stockflow"))
        .args(args(&names, &["kafka.create_partitions=0"]))
        .env("RUST_LOG", "error")
        .output()
        .expect("the binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a start with a gap must fail: {stderr}"
    );
    let want = format!(
        "records 0..{first} of {}/0 were deleted by the broker",
        names.inventory()
    );
    assert!(stderr.contains(&want), "{stderr}");
    assert!(stderr.contains("checkpoint.allow_gap"), "{stderr}");
    // Allowed explicitly: it starts, with the records that are left.
    let p = Pipeline::start_with(
        &names,
        &[
            "kafka.create_partitions=0",
            "checkpoint.allow_gap=true",
            "clickhouse.enabled=false",
        ],
    );
    p.wait_ready();
    let (_, body) = p.get("/v1/stock/G/L");
    assert_eq!(body["on_hand"].as_i64(), Some(9 - first));
    assert!(p.metric("stockflow_kafka_gap_records_total") >= first as f64);
    drop(p);
    names.clean_up();
}

/// The same while running: the pipeline is stopped (SIGSTOP) before it reads records that the
/// broker then deletes. The partition stops, `/readyz` names the missing records and a metric
/// counts the stop; nothing after the gap is admitted. With `checkpoint.allow_gap`, it goes on
/// after the gap and counts the records skipped.
#[test]
fn records_deleted_before_they_are_read_stop_the_partition() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    for allow_gap in [false, true] {
        let names = Names::new("rungap");
        create_topics_with_retention(&names);
        let allow = format!("checkpoint.allow_gap={allow_gap}");
        let p = Pipeline::start_with(
            &names,
            &[
                "kafka.create_partitions=0",
                "clickhouse.enabled=false",
                // tansu deletes expired records one by one: a fresh heartbeat written before
                // the day-old records would leave them a hole in the middle of the partition,
                // which Kafka (deleting whole segments from the start) never does.
                "kafka.idle_heartbeat=0s",
                &allow,
            ],
        );
        p.wait_ready();
        let pid = p.child.id().to_string();
        let signal = |sig: &str| {
            let ok = Command::new("kill")
                .args([sig, &pid])
                .status()
                .expect("kill");
            assert!(ok.success(), "kill {sig} {pid}");
        };
        signal("-STOP");
        // A fetch in flight is answered (empty) within kafka.options' fetch.wait.max.ms; no
        // other request leaves the stopped process, so nothing can bring it these records.
        std::thread::sleep(Duration::from_millis(500));
        produce_old_and_new(&names);
        services("restart-kafka");
        signal("-CONT");
        if allow_gap {
            wait_for("the records after the gap", Duration::from_secs(60), || {
                p.get("/v1/stock/G/L").1["on_hand"].as_i64().is_some()
            });
            let deleted = p.metric("stockflow_kafka_gap_records_total");
            assert!(deleted > 0.0, "the skipped records are counted");
            let (_, body) = p.get("/v1/stock/G/L");
            assert_eq!(body["on_hand"].as_f64(), Some(9.0 - deleted), "{body}");
            p.wait_ready();
        } else {
            let want = format!(
                "of {}/0 were deleted by the broker before they were read",
                names.inventory()
            );
            p.wait_readyz(503, &want, Duration::from_secs(60));
            assert_eq!(p.metric("stockflow_kafka_gap_stops_total"), 1.0);
            let (status, _) = p.get("/v1/stock/G/L");
            assert_eq!(status, 404, "nothing after the gap is admitted");
        }
        drop(p);
        names.clean_up();
    }
}

/// Six records a day old by timestamp, then three new ones, on partition 0 of the inventory
/// topic (tansu deletes the old ones when it restarts, by the topic's retention).
fn produce_old_and_new(names: &Names) {
    let producer: ThreadedProducer<_> = ClientConfig::new()
        .set("bootstrap.servers", kafka_addr())
        .create()
        .expect("a producer");
    let now = now_ms() as i64;
    for (i, ts) in (0..6)
        .map(|i| (i, now - 86_400_000))
        .chain((6..9).map(|i| (i, now)))
    {
        let value = json!({"event_id": format!("g{i}"), "type": "received", "sku": "G", "ts": ts, "location": "L", "qty": 1}).to_string();
        producer
            .send(
                BaseRecord::to(&names.inventory())
                    .partition(0)
                    .key("G")
                    .payload(&value)
                    .timestamp(ts),
            )
            .map_err(|(e, _)| e)
            .expect("queued");
    }
    producer
        .flush(Duration::from_secs(30))
        .expect("acknowledged");
}

/// The test's topics with a deletion policy and a retention of a minute.
fn create_topics_with_retention(names: &Names) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", kafka_addr())
        .create()
        .expect("an admin client");
    let (inv, ord, dlq) = (names.inventory(), names.orders(), names.dlq());
    let topics: Vec<NewTopic<'_>> = [&inv, &ord]
        .into_iter()
        .map(|t| {
            NewTopic::new(t, 2, TopicReplication::Fixed(1))
                .set("cleanup.policy", "delete")
                .set("retention.ms", "60000")
        })
        .chain([NewTopic::new(&dlq, 1, TopicReplication::Fixed(1))])
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let results = runtime
        .block_on(admin.create_topics(&topics, &AdminOptions::new()))
        .expect("topics created");
    for r in results {
        r.expect("topic created");
    }
}

/// Versions are pipeline times, read off the host's clock: a restart on a host whose clock is
/// behind the previous run's wrote below that run's rows, and the stale rows won in ClickHouse.
/// The previous run's clock ahead is played by a row written an hour ahead; after the restart,
/// the key's new value must win.
#[test]
fn a_restart_on_a_clock_behind_still_writes_above_the_previous_run() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let names = Names::new("floor");
    let p = Pipeline::start(&names);
    p.wait_ready();
    let now = now_ms();
    let received = |id: &str, qty: i64| {
        (
            false,
            "S0".to_string(),
            json!({"event_id": id, "type": "received", "sku": "S0", "ts": now, "location": "L0", "qty": qty})
                .to_string()
                .into_bytes(),
        )
    };
    produce(&names, &[received("a", 5)]);
    let current = || {
        clickhouse(&format!(
            "SELECT on_hand FROM {}.stock_levels_current WHERE sku = 'S0' AND location = 'L0'",
            names.prefix
        ))
        .ok()
        .and_then(|rows| {
            rows.first()
                .map(|r| r["on_hand"].to_string().trim_matches('"').to_string())
        })
    };
    wait_for("S0 = 5 in ClickHouse", Duration::from_secs(30), || {
        current().as_deref() == Some("5")
    });
    p.terminate();
    // The previous run's clock was an hour ahead: its last row of S0 carries that version.
    clickhouse_exec(&format!(
        "INSERT INTO {}.stock_levels (sku, location, on_hand, reserved, available, version, deleted) \
         VALUES ('S0', 'L0', 5, 0, 5, {}, 0)",
        names.prefix,
        now + 3_600_000
    ))
    .expect("the previous run's row");
    let p = Pipeline::start(&names);
    p.wait_ready();
    produce(&names, &[received("b", 2)]);
    wait_for(
        "S0 = 7 in ClickHouse, above the hour-ahead row",
        Duration::from_secs(30),
        || current().as_deref() == Some("7"),
    );
    p.terminate();
    names.clean_up();
}
