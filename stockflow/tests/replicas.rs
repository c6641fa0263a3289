//! Two replicas behind the shipped load balancer (configs/haproxy.cfg, Debian's haproxy): each
//! its own consumer group and checkpoints, one ClickHouse database, one writer by lease. Lookup
//! load runs through the balancer while the writing replica is killed with SIGKILL: the failed
//! requests are counted (none once the balancer's check has noticed), the answers through the
//! balancer and in ClickHouse are compared with the reference, and the survivor takes over the
//! writes.

#[path = "e2e/mod.rs"]
mod e2e;

use e2e::*;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn replica(names: &Names, name: &str, port: u16) -> Pipeline {
    replica_with(names, name, port, &[])
}

fn replica_with(names: &Names, name: &str, port: u16, extra: &[&str]) -> Pipeline {
    let mut sets = vec![
        format!("kafka.group_id={}_{name}", names.prefix),
        format!("http.listen=127.0.0.1:{port}"),
        format!(
            "checkpoint.dir={}",
            names.checkpoints().join(name).display()
        ),
        "checkpoint.enabled=true".into(),
        "clickhouse.writer_lease=true".into(),
        "clickhouse.lease_ttl=3s".into(),
    ];
    sets.extend(extra.iter().map(|s| s.to_string()));
    let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
    let (child, base) = support::start_serving(args(names, &sets));
    Pipeline { child, base }
}

struct Balancer(Child);

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Failed lookups through the balancer, and when the last one happened.
#[derive(Default)]
struct Load {
    sent: AtomicU64,
    failed: AtomicU64,
    failures: Mutex<Vec<(Instant, String)>>,
}

#[test]
fn a_replica_killed_under_lookup_load_costs_no_request_after_the_check() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let names = Names::new("replicas");
    let (pa, pb, plb) = (free_port(), free_port(), free_port());
    let a = replica(&names, "a", pa);
    let b = replica(&names, "b", pb);
    let lb = Balancer(
        Command::new("haproxy")
            .args([
                "-f",
                &repo().join("configs/haproxy.cfg").display().to_string(),
            ])
            .env("STOCKFLOW_LB_LISTEN", format!("127.0.0.1:{plb}"))
            .env("STOCKFLOW_REPLICA_A", format!("127.0.0.1:{pa}"))
            .env("STOCKFLOW_REPLICA_B", format!("127.0.0.1:{pb}"))
            .stdout(Stdio::null())
            .spawn()
            .expect("haproxy runs (scripts/services.sh installs it)"),
    );
    let through = format!("http://127.0.0.1:{plb}");
    a.wait_ready();
    b.wait_ready();
    let deadline = Instant::now() + Duration::from_secs(20);
    while ureq::get(&format!("{through}/readyz")).call().is_err() {
        assert!(
            Instant::now() < deadline,
            "the balancer never passed a lookup"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut w = Workload::generate(21, 500, "ra");
    produce(&names, &w.records);
    let expected = w.expected();
    eventually("through the balancer", &expected, || {
        Ok(views(&through, &expected))
    });
    eventually("ClickHouse", &in_seconds(w.expected()), || {
        clickhouse_views(&names.prefix).map(in_seconds)
    });
    let writers: Vec<f64> = [&a, &b]
        .iter()
        .map(|p| p.metric("stockflow_clickhouse_writer"))
        .collect();
    assert_eq!(
        writers.iter().sum::<f64>(),
        1.0,
        "exactly one writer: {writers:?}"
    );

    // Lookup load through the balancer, on two threads.
    let load = Arc::new(Load::default());
    let stop = Arc::new(AtomicBool::new(false));
    let ids: Vec<String> = expected.reservations.keys().take(50).cloned().collect();
    let threads: Vec<_> = (0..2)
        .map(|t| {
            let (load, stop, ids) = (Arc::clone(&load), Arc::clone(&stop), ids.clone());
            let base = through.clone();
            std::thread::spawn(move || {
                let agent = ureq::AgentBuilder::new()
                    .timeout(Duration::from_secs(5))
                    .build();
                let mut i = t;
                while !stop.load(Ordering::Relaxed) {
                    let path = if i % 2 == 0 {
                        format!("/v1/stock/{}", SKUS[i % SKUS.len()])
                    } else {
                        format!("/v1/reservations/{}", ids[i % ids.len()])
                    };
                    load.sent.fetch_add(1, Ordering::Relaxed);
                    match agent.get(&format!("{base}{path}")).call() {
                        Ok(_) => {}
                        Err(e) => {
                            load.failed.fetch_add(1, Ordering::Relaxed);
                            load.failures
                                .lock()
                                .unwrap()
                                .push((Instant::now(), format!("{path}: {e}")));
                        }
                    }
                    i += 2;
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let (writer, survivor) = if writers[0] == 1.0 { (a, b) } else { (b, a) };
    let killed = Instant::now();
    let sent_before = load.sent.load(Ordering::Relaxed);
    writer.kill9();
    // More writes after the loss: the survivor answers them and writes them to ClickHouse.
    let more = Workload::generate(22, 300, "rb");
    produce(&names, &more.records);
    w.extend(more);
    let expected = w.expected();
    eventually("through the balancer after the loss", &expected, || {
        Ok(views(&through, &expected))
    });
    eventually(
        "ClickHouse after the loss",
        &in_seconds(w.expected()),
        || clickhouse_views(&names.prefix).map(in_seconds),
    );
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let sent = load.sent.load(Ordering::Relaxed);
    let failures = load.failures.lock().unwrap().clone();
    let last = failures.last().map(|(at, _)| at.duration_since(killed));
    println!(
        "failover: {sent} lookups through the balancer ({} after the kill), {} failed, the last {:?} after the kill; ClickHouse writer taken over",
        sent - sent_before,
        failures.len(),
        last
    );
    // The balancer checks every second and needs two failures: after that, nothing fails.
    let after_check: Vec<&(Instant, String)> = failures
        .iter()
        .filter(|(at, _)| at.duration_since(killed) > Duration::from_secs(3))
        .collect();
    assert!(
        after_check.is_empty(),
        "lookups failed after the balancer's check interval: {after_check:?}"
    );
    assert_eq!(survivor.metric("stockflow_clickhouse_writer"), 1.0);
    survivor.terminate();
    drop(lb);
    names.clean_up();
}

fn signal(p: &Pipeline, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &p.child.id().to_string()])
        .status()
        .expect("kill runs")
        .success();
    assert!(ok, "kill {sig}");
}

/// ClickHouse's on_hand of (sku, location), if the row is there.
fn on_hand_in_clickhouse(names: &Names, sku: &str, loc: &str) -> Option<i64> {
    let views = clickhouse_views(&names.prefix).ok()?;
    views
        .stock
        .get(&(sku.to_string(), loc.to_string()))
        .map(|s| s.0)
}

/// A standby that has read less than the writer (here: stopped while the writer went on) must
/// not take over by writing its older rows above the writer's newer ones: on winning the lease
/// it first reads the log to its end as of then. A SKU that only receives makes any step back
/// visible in ClickHouse.
#[test]
fn a_lagging_standby_takes_over_only_once_it_has_read_what_the_writer_had() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let names = Names::new("takeover");
    let a = replica(&names, "a", free_port());
    a.wait_ready();
    let deadline = Instant::now() + Duration::from_secs(30);
    while a.metric("stockflow_clickhouse_writer") != 1.0 {
        assert!(Instant::now() < deadline, "a never became the writer");
        std::thread::sleep(Duration::from_millis(100));
    }
    // b reads slowly (ten records per look of its sink): it is still behind when it wins the
    // lease.
    let b = replica_with(
        &names,
        "b",
        free_port(),
        &["clickhouse.buffer_rows=10", "clickhouse.batch_rows=10"],
    );
    b.wait_ready();
    let receipts = |from: usize, n: usize| {
        let mut w = Workload::default();
        let now = now_ms();
        for i in from..from + n {
            w.valid(
                false,
                serde_json::json!({"event_id": format!("rcv-{i}"), "type": "received",
                "sku": "TAKE", "ts": now, "location": "L", "qty": 1}),
            );
        }
        w
    };
    produce(&names, &receipts(0, 100).records);
    let wait_for = |what: &str, f: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let on_hand = |p: &Pipeline| p.get("/v1/stock/TAKE/L").1["on_hand"].as_i64();
    wait_for("b to read the first receipts", &|| on_hand(&b) == Some(100));
    signal(&b, "-STOP");
    // The writer goes on alone; then it is lost, and the stopped standby wakes up behind it.
    let more = 1500;
    produce(&names, &receipts(100, more).records);
    let last = 100 + more as i64;
    wait_for("a to write every receipt", &|| {
        on_hand_in_clickhouse(&names, "TAKE", "L") == Some(last)
    });
    a.kill9();
    // Its lease lapses (lease_ttl 3 s) while b sleeps: b wins it at its first look.
    std::thread::sleep(Duration::from_secs(4));
    signal(&b, "-CONT");
    let woke = Instant::now();
    let mut seen = Vec::new();
    loop {
        let ch = on_hand_in_clickhouse(&names, "TAKE", "L");
        if let Some(v) = ch {
            if seen.last() != Some(&v) {
                seen.push(v);
            }
        }
        if b.metric("stockflow_clickhouse_writer") == 1.0
            && on_hand(&b) == Some(last)
            && woke.elapsed() > Duration::from_secs(3)
        {
            break;
        }
        assert!(
            woke.elapsed() < Duration::from_secs(60),
            "b never took over: {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        seen,
        vec![last],
        "ClickHouse never goes back while the standby takes over"
    );
    b.terminate();
    names.clean_up();
}
