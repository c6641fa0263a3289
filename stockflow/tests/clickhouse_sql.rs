//! The sink's DDL, the `*_current` views and every BI query of docs/clickhouse.md, against the
//! ClickHouse 18.16 that `scripts/services.sh` runs and against a current engine (chDB, from
//! PyPI's chdb-core, through `scripts/chdb_sql.py`), on rows with several versions of a key and
//! a deleted one: the views show the latest, live rows only.

use serde_json::{json, Value};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use stockflow_sinks::clickhouse::{ddl, modern};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Rows written as the sink would: two versions of a stock row, a deleted one, a reservation
/// that ended and one that holds, two versions of a window.
fn inserts(db: &str) -> Vec<String> {
    vec![
        format!(
            "INSERT INTO {db}.stock_levels VALUES \
             ('sku-00001', 'loc-01', 5, 1, 4, 10, 0), ('sku-00001', 'loc-01', 7, 2, 5, 20, 0), \
             ('sku-00002', 'loc-01', 3, 0, 3, 10, 0), ('sku-00002', 'loc-01', 0, 0, 0, 20, 1), \
             ('sku-00003', 'loc-02', -4, 0, -4, 10, 0)"
        ),
        format!(
            "INSERT INTO {db}.reservations VALUES \
             ('r1', 'sku-00001', 'loc-01', 2, 'held', now() + 600, 20, 0), \
             ('r2', 'sku-00001', 'loc-01', 1, 'held', now() + 600, 10, 0), \
             ('r2', 'sku-00001', 'loc-01', 1, 'released', now() + 600, 20, 0), \
             ('r3', 'sku-00001', 'loc-01', 3, 'held', now() - 600, 10, 0), \
             ('r3', 'sku-00001', 'loc-01', 3, 'expired', now() - 600, 20, 0)"
        ),
        format!(
            "INSERT INTO {db}.sales_windows VALUES \
             ('1h', toStartOfHour(now()), 'sku-00001', 'loc-01', 2, 0, 2, 2, 10, 0), \
             ('1h', toStartOfHour(now()), 'sku-00001', 'loc-01', 3, 0, 2, 3, 20, 0)"
        ),
        // A forecast as issued, then as scored (its label: 6), and its features.
        format!(
            "INSERT INTO {db}.forecasts VALUES \
             ('sku-00001', 'loc-01', 'pooled:1', 'A', 'smooth', toStartOfDay(now()), 1, \
              toStartOfDay(now()), toStartOfDay(now()) + 86400, 3, 3, 5, 6, 8, 0.5, 5, 4, \
              NULL, 0, 10, 0), \
             ('sku-00001', 'loc-01', 'pooled:1', 'A', 'smooth', toStartOfDay(now()), 1, \
              toStartOfDay(now()), toStartOfDay(now()) + 86400, 3, 3, 5, 6, 8, 0.5, 5, 4, \
              6, 0, 20, 0)"
        ),
        format!(
            "INSERT INTO {db}.forecast_features VALUES \
             ('sku-00001', 'loc-01', toStartOfDay(now()), 'FOODS', 5, 3, [0, 2, 4], \
              [1, 0, 0], [1, 0, 0], 10, 0)"
        ),
    ]
}

/// The queries of docs/clickhouse.md (each ```sql block after `<!-- bi-query -->`), on `db`.
fn bi_queries(db: &str) -> Vec<String> {
    let doc = std::fs::read_to_string(repo().join("docs/clickhouse.md")).unwrap();
    let mut out = Vec::new();
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        if line.trim() != "<!-- bi-query -->" {
            continue;
        }
        assert_eq!(lines.next().map(str::trim), Some("```sql"));
        let body: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
        out.push(body.join("\n").replace("stockflow.", &format!("{db}.")));
    }
    assert!(out.len() >= 6, "docs/clickhouse.md lost its queries");
    out
}

/// What the views must show of [`inserts`].
fn checks(db: &str) -> Vec<(String, Value)> {
    vec![
        (
            format!("SELECT sku, location, on_hand, reserved, available FROM {db}.stock_levels_current ORDER BY sku"),
            json!([{"sku": "sku-00001", "location": "loc-01", "on_hand": 7, "reserved": 2, "available": 5},
                   {"sku": "sku-00003", "location": "loc-02", "on_hand": -4, "reserved": 0, "available": -4}]),
        ),
        (
            format!("SELECT reservation_id, status FROM {db}.reservations_current ORDER BY reservation_id"),
            json!([{"reservation_id": "r1", "status": "held"}, {"reservation_id": "r2", "status": "released"},
                   {"reservation_id": "r3", "status": "expired"}]),
        ),
        (
            format!("SELECT window, sku, units_sold, orders FROM {db}.sales_windows_current"),
            json!([{"window": "1h", "sku": "sku-00001", "units_sold": 3, "orders": 3}]),
        ),
        (
            format!("SELECT * FROM {db}.data_quality ORDER BY location"),
            json!([{"location": "loc-01", "negative_on_hand_keys": 0, "negative_on_hand_units": 0, "expired_holds": 1, "expired_units": 3},
                   {"location": "loc-02", "negative_on_hand_keys": 1, "negative_on_hand_units": 4, "expired_holds": 0, "expired_units": 0}]),
        ),
        (
            format!("SELECT model, actual FROM {db}.forecasts_current"),
            json!([{"model": "pooled:1", "actual": 6}]),
        ),
        // |6 − 3| / 6; (3 − 6) / 6; √((6 − 3)² / 4); 6 > q90 = 5; (0.5 − 1)², 6 > 5 available.
        (
            format!("SELECT model, scored, wape, bias, rmsse, coverage_q90, brier FROM {db}.forecast_evaluation"),
            json!([{"model": "pooled:1", "scored": 1, "wape": 0.5, "bias": -0.5, "rmsse": 1.5,
                    "coverage_q90": 0, "brier": 0.25}]),
        ),
    ]
}

/// Integers as JSON numbers: old servers quote 64-bit integers in JSONEachRow.
fn normalized(rows: &Value) -> Value {
    match rows {
        Value::Array(v) => Value::Array(v.iter().map(normalized).collect()),
        Value::Object(m) => {
            Value::Object(m.iter().map(|(k, v)| (k.clone(), normalized(v))).collect())
        }
        Value::String(s) => s.parse::<i64>().map_or_else(|_| rows.clone(), |n| json!(n)),
        other => other.clone(),
    }
}

/// Runs `statements` in order, then the checks and the BI queries, on one engine.
fn exercise(
    engine: &str,
    db: &str,
    run: &mut dyn FnMut(&[String]) -> Vec<Result<Value, String>>,
    modern_ddl: bool,
) {
    let mut statements = ddl(db, modern_ddl);
    statements.extend(inserts(db));
    let checks = checks(db);
    statements.extend(checks.iter().map(|(q, _)| q.clone()));
    let queries = bi_queries(db);
    statements.extend(queries.iter().cloned());
    let results = run(&statements);
    assert_eq!(results.len(), statements.len());
    for (sql, result) in statements.iter().zip(&results) {
        if let Err(e) = result {
            panic!("{engine} (modern DDL: {modern_ddl}) refused {sql}: {e}");
        }
    }
    let first_check = statements.len() - queries.len() - checks.len();
    for (i, (sql, want)) in checks.iter().enumerate() {
        let got = normalized(results[first_check + i].as_ref().unwrap());
        assert_eq!(&got, want, "{engine} (modern DDL: {modern_ddl}): {sql}");
    }
    for (i, sql) in queries.iter().enumerate() {
        let rows = results[first_check + checks.len() + i].as_ref().unwrap();
        assert!(
            rows.as_array().is_some_and(|r| !r.is_empty()),
            "{engine} (modern DDL: {modern_ddl}): no rows from {sql}"
        );
    }
}

fn clickhouse_url() -> String {
    format!(
        "http://127.0.0.1:{}",
        std::env::var("STOCKFLOW_CLICKHOUSE_PORT").unwrap_or_else(|_| "8123".into())
    )
}

#[test]
fn ddl_views_and_bi_queries_on_the_local_server() {
    let url = clickhouse_url();
    let version = ureq::post(&url)
        .send_string("SELECT version()")
        .expect("ClickHouse runs (scripts/services.sh)")
        .into_string()
        .unwrap();
    let version = version.trim();
    let db = format!("sql_check_{}", std::process::id());
    let mut run = |statements: &[String]| -> Vec<Result<Value, String>> {
        statements
            .iter()
            .map(|sql| {
                let select = sql.trim_start().starts_with("SELECT");
                let body = if select {
                    format!("{sql} FORMAT JSONEachRow")
                } else {
                    sql.clone()
                };
                let text = ureq::post(&url)
                    .send_string(&body)
                    .map_err(|e| match e {
                        ureq::Error::Status(_, r) => r.into_string().unwrap_or_default(),
                        other => other.to_string(),
                    })?
                    .into_string()
                    .map_err(|e| e.to_string())?;
                Ok(Value::Array(
                    text.lines()
                        .filter(|l| !l.trim().is_empty())
                        .map(|l| serde_json::from_str(l).expect("JSON rows"))
                        .collect(),
                ))
            })
            .collect()
    };
    // The DDL the sink chooses for this server.
    exercise(
        &format!("ClickHouse {version}"),
        &db,
        &mut run,
        modern(version),
    );
    let _ = ureq::post(&url).send_string(&format!("DROP DATABASE IF EXISTS {db}"));
}

#[test]
fn ddl_views_and_bi_queries_on_a_current_engine() {
    let version = std::cell::RefCell::new(String::new());
    let mut run = |statements: &[String]| -> Vec<Result<Value, String>> {
        let mut child = Command::new("python3")
            .arg(repo().join("scripts/chdb_sql.py"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 runs");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(serde_json::to_string(statements).unwrap().as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "scripts/chdb_sql.py failed (scripts/test.sh installs chdb-core from PyPI)"
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        *version.borrow_mut() = v["version"].as_str().unwrap().to_string();
        v["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| match r.get("error") {
                Some(e) => Err(e.as_str().unwrap_or_default().to_string()),
                None => Ok(r.clone()),
            })
            .collect()
    };
    // A current server gets the modern DDL; tables an older stockflow made must keep working.
    exercise("chDB", "current", &mut run, true);
    let version = version.borrow().clone();
    assert!(modern(&version), "chDB {version} is not a current engine");
    exercise(&format!("chDB {version}"), "legacy", &mut run, false);
}
