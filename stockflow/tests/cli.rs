//! End to end through the real binary: a JSON-lines file in, HTTP answers and dead letters out.

mod support;

use serde_json::Value;
use std::io::Write;
use std::process::{Child, Command};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

struct Running {
    child: Child,
    base: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(args: &[&str]) -> Running {
    let (child, base) = support::start_serving(args);
    Running { child, base }
}

fn get(base: &str, path: &str) -> (u16, String, Value) {
    match ureq::get(&format!("{base}{path}")).call() {
        Ok(r) => {
            let ct = r.content_type().to_string();
            (
                r.status(),
                ct,
                serde_json::from_str(&r.into_string().unwrap_or_default()).unwrap_or(Value::Null),
            )
        }
        Err(ureq::Error::Status(code, r)) => {
            let ct = r.content_type().to_string();
            (
                code,
                ct,
                serde_json::from_str(&r.into_string().unwrap_or_default()).unwrap_or(Value::Null),
            )
        }
        Err(e) => panic!("GET {path}: {e}"),
    }
}

fn wait_for(mut ok: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn file_in_http_and_dead_letters_out() {
    let dir = std::env::temp_dir().join(format!("stockflow-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join("events.jsonl");
    let dlq = dir.join("dead.jsonl");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let later = now + 3_600_000;
    let lines = [
        format!(
            r#"{{"event_id":"1","type":"received","sku":"A 1","ts":{now},"location":"x","qty":10}}"#
        ),
        format!(
            r#"{{"event_id":"2","type":"received","sku":"A 1","ts":{now},"location":"y","qty":4}}"#
        ),
        format!(
            r#"{{"event_id":"3","type":"reserved","sku":"A 1","ts":{now},"location":"x","qty":6,"reservation_id":"r1","expires_at":{later}}}"#
        ),
        format!(
            r#"{{"event_id":"4","type":"reserved","sku":"A 1","ts":{},"location":"x","qty":6,"reservation_id":"r2","expires_at":{later}}}"#,
            now + 1
        ),
        "{not json".to_string(),
        format!(r#"{{"event_id":"5","type":"sold","sku":"A 1","ts":{now},"location":"x"}}"#),
        r#"{"event_id":"6","type":"sold","sku":"A 1","ts":"2026-01-01T00:00:00Z","location":"y","qty":1}"#.to_string(),
        format!(
            r#"{{"event_id":"6","type":"sold","sku":"A 1","ts":{now},"location":"y","qty":1}}"#
        ),
        format!(
            r#"{{"event_id":"7","type":"fulfilled","sku":"A 1","ts":{},"reservation_id":"r1"}}"#,
            now + 2
        ),
        format!(
            r#"{{"event_id":"8","type":"reserved","sku":"B","ts":{now},"location":"x","qty":1,"reservation_id":"r3","expires_at":1}}"#
        ),
    ];
    let mut f = std::fs::File::create(&input).unwrap();
    for l in &lines {
        writeln!(f, "{l}").unwrap();
    }
    drop(f);

    let run = start(&[
        "run",
        "--input-file",
        input.to_str().unwrap(),
        "--http",
        "127.0.0.1:0",
        "--set",
        &format!("dead_letter.path={}", dlq.display()),
    ]);
    let base = &run.base;

    // x: 10 received, r1 (6) fulfilled, so 4 on hand; r2 (6) cannot be held. y: 4 - 1 sold.
    // The whole file: its first SKU and its last line (a loaded machine may admit them at
    // different pipeline times).
    wait_for(
        || {
            get(base, "/v1/stock/A%201").2["on_hand"] == 7
                && get(base, "/v1/reservations/r3").0 == 200
        },
        "the file to be applied",
    );
    let (status, ct, stock) = get(base, "/v1/stock/A%201");
    assert_eq!((status, ct.as_str()), (200, "application/json"));
    assert_eq!(stock["reserved"], 0);
    assert_eq!(
        stock["locations"][0],
        serde_json::json!({"location":"x","on_hand":4,"reserved":0,"available":4})
    );
    assert!(stock["as_of"].as_u64().unwrap() >= now - now % 1000 - 1000);
    assert_eq!(get(base, "/v1/stock/A%201/y").2["on_hand"], 3);
    assert_eq!(get(base, "/v1/reservations/r1").2["status"], "fulfilled");
    assert_eq!(get(base, "/v1/reservations/r2").2["status"], "insufficient");
    let r3 = get(base, "/v1/reservations/r3").2;
    assert_eq!(
        (r3["status"].as_str(), r3["expires_at"].as_str()),
        (Some("expired"), Some("1970-01-01T00:00:00.001Z"))
    );

    let a = get(base, "/v1/analytics/sku/A%201?window=1h").2;
    let sold: i64 = a["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["units_sold"].as_i64().unwrap())
        .sum();
    // The fulfilled 6; the repeated event 6 kept its first version, dated January, whose window
    // is long past retention and final.
    assert_eq!(sold, 6);
    // The ranking is brought up to date every pipeline.top_tick: wait until it covers the file.
    let stock_as_of = stock["as_of"].as_u64().unwrap();
    wait_for(
        || {
            get(base, "/v1/analytics/top?window=1h&limit=1").2["as_of"]
                .as_u64()
                .unwrap()
                >= stock_as_of
        },
        "the ranking",
    );
    let top = get(base, "/v1/analytics/top?window=1h&limit=1").2;
    let start = stockflow_types::timefmt::parse_rfc3339(top["start"].as_str().unwrap()).unwrap();
    if start <= now {
        // (unless the hour turned since the file was read)
        assert_eq!(
            top["items"],
            serde_json::json!([{"sku": "A 1", "units_sold": 6}]),
            "{top}"
        );
    }
    // Errors are problem+json with a detail naming the culprit.
    let (status, ct, p) = get(base, "/v1/stock/nope");
    assert_eq!(
        (status, ct.as_str(), p["status"].as_u64()),
        (404, "application/problem+json", Some(404))
    );
    let (status, _, p) = get(base, "/v1/analytics/sku/A%201?window=7m");
    assert_eq!(status, 400);
    assert!(p["detail"].as_str().unwrap().contains("`window`"), "{p}");
    let (status, _, p) = get(base, "/v1/analytics/sku/A%201?from=yesterday");
    assert_eq!(status, 400);
    assert!(p["detail"].as_str().unwrap().contains("`from`"), "{p}");
    assert_eq!(get(base, "/v1/nothing-here").0, 404);
    assert_eq!(get(base, "/readyz").0, 200);
    // The container health check says the same, through its own HTTP request.
    let health = |url: &str| {
        Command::new(env!("CARGO_BIN_EXE_stockflow"))
            .args(["healthcheck", "--url", url])
            .output()
            .unwrap()
    };
    let ok = health(&format!("{base}/readyz"));
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let missing = health(&format!("{base}/no-such-route"));
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("404"));

    let doc = get(base, "/openapi.json").2;
    assert!(doc["paths"]["/v1/stock/{sku}"]["get"].is_object(), "{doc}");

    // Bad lines are dead letters with their reason and line number, and are counted.
    wait_for(
        || {
            std::fs::read_to_string(&dlq)
                .map(|s| s.lines().count() == 2)
                .unwrap_or(false)
        },
        "dead letters",
    );
    let dead: Vec<Value> = std::fs::read_to_string(&dlq)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        (dead[0]["reason"].as_str(), dead[0]["offset"].as_i64()),
        (Some("invalid_json"), Some(5))
    );
    assert_eq!(
        (dead[1]["reason"].as_str(), dead[1]["offset"].as_i64()),
        (Some("missing_field"), Some(6))
    );
    assert_eq!(dead[0]["value"], "{not json");
    let metrics = ureq::get(&format!("{base}/metrics"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(
        metrics.contains(r#"stockflow_events_rejected_total{reason="invalid_json"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("stockflow_events_duplicate_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("stockflow_http_request_duration_seconds_bucket"),
        "{metrics}"
    );
    // The exposition passes Prometheus's own linter (HELP texts, names, types).
    support::promtool_accepts(&metrics);
    for name in [
        "stockflow_build_info{",
        "process_resident_memory_bytes ",
        "process_cpu_seconds_total ",
        "stockflow_pipeline_time_seconds ",
    ] {
        assert!(metrics.contains(name), "{name} missing: {metrics}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unknown_configuration_keys_are_rejected() {
    let out = Command::new(env!("CARGO_BIN_EXE_stockflow"))
        .args(["config", "--set", "pipeline.wrokers=2"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("wrokers"));
    let out = Command::new(env!("CARGO_BIN_EXE_stockflow"))
        .args(["config"])
        .env("STOCKFLOW_PIPELINE__WORKERS", "2")
        .output()
        .unwrap();
    assert!(out.status.success());
    let cfg: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(cfg["pipeline"]["workers"], 2);
}

#[test]
fn secrets_are_never_printed() {
    let dir = std::env::temp_dir().join(format!("stockflow-secrets-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("kafka-password");
    std::fs::write(&file, "from-a-file\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_stockflow"))
        .args([
            "config",
            "--set",
            "kafka.security_protocol=sasl_plaintext",
            "--set",
            "kafka.sasl.mechanism=SCRAM-SHA-512",
            "--set",
            "kafka.sasl.username=stockflow",
            "--set",
            &format!("kafka.sasl.password_file={}", file.display()),
        ])
        .env("STOCKFLOW_CLICKHOUSE__PASSWORD", "from-the-environment")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!stdout.contains("from-the-environment"), "{stdout}");
    assert!(!stdout.contains("from-a-file"), "{stdout}");
    let cfg: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(cfg["clickhouse"]["password"], "<redacted>");
    assert_eq!(cfg["kafka"]["sasl"]["password"], "<redacted>");
    assert_eq!(cfg["kafka"]["sasl"]["mechanism"], "SCRAM-SHA-512");
    // A password of digits is read as text (not refused with the value in the message).
    let out = Command::new(env!("CARGO_BIN_EXE_stockflow"))
        .arg("config")
        .env("STOCKFLOW_CLICKHOUSE__PASSWORD", "98765432")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("98765432"));
    // A password given twice, and SASL without one, are refused with the field's name.
    let out = Command::new(env!("CARGO_BIN_EXE_stockflow"))
        .args([
            "config",
            "--set",
            &format!("clickhouse.password_file={}", file.display()),
        ])
        .env("STOCKFLOW_CLICKHOUSE__PASSWORD", "x")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("clickhouse.password_file"), "{stderr}");
    assert!(!stderr.contains("from-a-file"), "{stderr}");
    let out = Command::new(env!("CARGO_BIN_EXE_stockflow"))
        .args([
            "config",
            "--set",
            "kafka.security_protocol=sasl_ssl",
            "--set",
            "kafka.sasl.username=u",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("kafka.sasl.password"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn schema_is_printed() {
    let out = Command::new(env!("CARGO_BIN_EXE_stockflow"))
        .arg("schema")
        .output()
        .unwrap();
    assert!(out.status.success());
    let schema: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    assert!(
        schema["oneOf"].as_array().is_some_and(|v| v.len() == 8),
        "{schema}"
    );
}

#[test]
fn json_logs_with_an_access_log() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let dir = std::env::temp_dir().join(format!("stockflow-logs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join("events.jsonl");
    std::fs::write(
        &input,
        "{\"event_id\":\"1\",\"type\":\"received\",\"sku\":\"L\",\"ts\":1000,\"location\":\"x\",\"qty\":1}\n",
    )
    .unwrap();
    let log = dir.join("stderr.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_stockflow"))
        .args(["run", "--http", "127.0.0.1:0", "--input-file"])
        .arg(&input)
        .args(["--set", "log.format=json", "--set", "log.access=true"])
        .args([
            "--set",
            &format!("dead_letter.path={}", dir.join("dlq.jsonl").display()),
        ])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let base = loop {
        let line = lines.next().expect("an address").unwrap();
        if let Some(rest) = line.trim().strip_prefix("curl -s http://") {
            break format!("http://{}", rest.split('/').next().unwrap());
        }
    };
    std::thread::spawn(move || for _ in lines {});
    assert_eq!(get(&base, "/healthz").0, 200);
    let access = |text: &str| {
        text.lines().filter(|l| !l.trim().is_empty()).any(|l| {
            let v: Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
            v["target"] == "stockflow::access" && v["path"] == "/healthz" && v["status"] == 200
        })
    };
    wait_for(
        || access(&std::fs::read_to_string(&log).unwrap()),
        "the access line of GET /healthz",
    );
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
