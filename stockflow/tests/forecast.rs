//! Forecasts end to end against the real broker and ClickHouse that `scripts/services.sh`
//! starts: events on Kafka, forecasts issued at each bucket boundary the log frontier passes
//! (1-second buckets here), served over HTTP, scored once their labels are final, in `/metrics`
//! and in ClickHouse (every version's rows, their features, and an evaluation view that agrees
//! with the dataflow's); the data-quality view over HTTP, `/metrics` and ClickHouse; and a
//! restart from the checkpoint brings the forecaster's state back.

#[path = "e2e/mod.rs"]
mod e2e;

use e2e::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use stockflow_types::timefmt::format_rfc3339;

fn wait_for(p: &Pipeline, path: &str, within: Duration, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let (s, body) = p.get(path);
        if s == 200 && ok(&body) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{path}: not as expected within {within:?}: {s} {body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn forecasts_are_issued_served_scored_and_restored() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let names = Names::new("forecast");
    let settings = [
        "forecast.bucket=1s",
        "pipeline.windows=[\"1s\"]", // window_retention may be no shorter than a window
        "pipeline.window_retention=1s",
        "kafka.idle_heartbeat=200ms",
        "forecast.clickhouse=all",
        // Two arms on the same model: the experiment's plumbing (its statistics are unit tests).
        "forecast.experiment.arms=[{name=\"A\",model=\"pooled\",share=0.5},{name=\"B\",model=\"pooled\",share=0.5}]",
    ];
    let p = Pipeline::start_with(&names, &settings);
    p.wait_ready();
    // S0 at L0: 100 received, then 2 sold every 300 ms for 3 s; S1 at L0: 1 received, 1 sold.
    let ev = |v: Value| {
        (
            false,
            v["sku"].as_str().unwrap().to_string(),
            v.to_string().into_bytes(),
        )
    };
    let now = now_ms();
    produce(
        &names,
        &[
            ev(json!({"event_id":"c0","type":"listed","sku":"S0","ts":now,"category":"FOODS"})),
            ev(
                json!({"event_id":"r0","type":"received","sku":"S0","ts":now,"location":"L0","qty":100}),
            ),
            ev(
                json!({"event_id":"r1","type":"received","sku":"S1","ts":now,"location":"L0","qty":1}),
            ),
            // For the data-quality view, at L9: a hold left to expire, and (below, on the
            // orders topic with it) a sale without stock.
            ev(
                json!({"event_id":"h0","type":"received","sku":"H","ts":now,"location":"L9","qty":5}),
            ),
        ],
    );
    let order = |v: Value| {
        (
            true,
            v["sku"].as_str().unwrap().to_string(),
            v.to_string().into_bytes(),
        )
    };
    produce(
        &names,
        &[
            order(
                json!({"event_id":"n1","type":"sold","sku":"NEG","ts":now,"location":"L9","qty":3}),
            ),
            order(
                json!({"event_id":"h1","type":"reserved","sku":"H","ts":now,"location":"L9","qty":2,
                "reservation_id":"hold-1","expires_at":format_rfc3339(now + 1_000)}),
            ),
        ],
    );
    for i in 0..10 {
        std::thread::sleep(Duration::from_millis(300));
        let mut batch = vec![(
            true,
            "S0".to_string(),
            json!({"event_id":format!("s{i}"),"type":"sold","sku":"S0","ts":now_ms(),"location":"L0","qty":2})
                .to_string()
                .into_bytes(),
        )];
        if i == 0 {
            batch.push((
                true,
                "S1".to_string(),
                json!({"event_id":"t0","type":"sold","sku":"S1","ts":now_ms(),"location":"L0","qty":1})
                    .to_string()
                    .into_bytes(),
            ));
        }
        produce(&names, &batch);
    }

    // The served forecast: the default arm's pooled model, every horizon, ordered quantiles.
    let f = wait_for(&p, "/v1/forecast/S0/L0", Duration::from_secs(30), |b| {
        b["available"] == 80
    });
    assert!(f["model"].as_str().unwrap().starts_with("pooled:"), "{f}");
    assert!(f["arm"] == "A" || f["arm"] == "B", "{f}");
    let horizons = f["horizons"].as_array().unwrap();
    assert_eq!(
        horizons
            .iter()
            .map(|h| h["buckets"].clone())
            .collect::<Vec<_>>(),
        [json!(1), json!(7)]
    );
    for h in horizons {
        let q = &h["quantiles"];
        let qs: Vec<u64> = ["0.5", "0.9", "0.95", "0.99"]
            .iter()
            .map(|l| q[*l].as_u64().unwrap())
            .collect();
        assert!(
            qs.windows(2).all(|w| w[0] <= w[1]),
            "quantiles in order: {h}"
        );
        let p = h["stockout_probability"].as_f64().unwrap();
        assert!(
            (0.0..=1.0).contains(&p) && h["mean"].as_f64().unwrap() > 0.0,
            "{h}"
        );
    }
    // S1 has nothing left: certain to run out, first at risk.
    let r = wait_for(
        &p,
        "/v1/forecast/at-risk?buckets=1&location=L0",
        Duration::from_secs(30),
        |b| b["items"][0]["sku"] == "S1",
    );
    assert_eq!(r["items"][0]["stockout_probability"], 1.0, "{r}");
    assert_eq!(r["items"][0]["days_of_cover"], 0, "{r}");
    assert_eq!(r["scope"], "cluster");
    // Scored once labels are final (a bucket plus the window retention later).
    let e = wait_for(
        &p,
        "/v1/forecast/evaluation",
        Duration::from_secs(30),
        |b| {
            b["items"].as_array().is_some_and(|i| {
                i.iter()
                    .any(|x| x["buckets"] == 7 && x["count"].as_u64() > Some(0))
            })
        },
    );
    assert!(!e["comparisons"].as_array().unwrap().is_empty(), "{e}");
    // A against B, per horizon, unpaired; far too few keys for a verdict.
    let arms = e["arms"].as_array().unwrap();
    assert_eq!(arms.len(), 2, "{e}");
    assert_eq!(
        (&arms[0]["a"]["arm"], &arms[0]["b"]["arm"]),
        (&json!("A"), &json!("B"))
    );
    assert_eq!(arms[0]["verdict"], "not_yet", "{e}");
    // Bad input: a clear problem.
    for bad in [
        "/v1/forecast/at-risk?buckets=5",
        "/v1/forecast/at-risk?limit=0",
    ] {
        let (s, body) = p.get(bad);
        assert_eq!(s, 400, "{bad}: {body}");
    }
    let (s, _) = p.get("/v1/forecast/S9/L0");
    assert_eq!(s, 404);
    // Data quality: NEG is 3 below zero, hold-1 expired unreleased.
    let q = wait_for(
        &p,
        "/v1/quality?location=L9",
        Duration::from_secs(30),
        |b| b["locations"][0]["expired_holds"] == 1,
    );
    assert_eq!(q["locations"][0]["negative_on_hand_keys"], 1, "{q}");
    assert_eq!(q["locations"][0]["negative_on_hand_units"], 3, "{q}");
    assert_eq!(q["locations"][0]["expired_units"], 2, "{q}");
    assert_eq!(q["total"]["negative_on_hand_keys"], 1, "{q}");
    assert!(p.metric("stockflow_quality_negative_on_hand_keys") >= 1.0);
    assert!(p.metric("stockflow_quality_expired_holds") >= 1.0);
    assert!(p.metric("stockflow_forecast_keys") >= 2.0);
    assert!(p.metric("stockflow_forecast_scored_total") > 0.0);
    p.lint_metrics();
    let scored = p.metric("stockflow_forecast_scored_total");
    p.terminate();

    // From the checkpoint: the features, the open forecasts and the evaluation come back, and
    // the served forecast is there at once (republished, not waiting for a boundary).
    let mut extra = settings.to_vec();
    extra.push("kafka.idle_heartbeat=0s"); // the log ends where the first run's ends
    let p = Pipeline::start_with(&names, &extra);
    p.wait_ready();
    let (s, f) = p.get("/v1/forecast/S0/L0");
    assert_eq!((s, &f["available"]), (200, &json!(80)), "{f}");
    assert!(
        p.metric("stockflow_forecast_scored_total") >= scored,
        "the evaluation survives the restart"
    );
    let (s, r) = p.get("/v1/forecast/at-risk?buckets=1&location=L0");
    assert_eq!((s, &r["items"][0]["sku"]), (200, &json!("S1")), "{r}");
    // The log has not moved since: this is the evaluation of every forecast the first run
    // scored, and ClickHouse holds their rows.
    let (_, e) = p.get("/v1/forecast/evaluation");
    p.terminate();
    check_clickhouse(&names.prefix, &e);
    names.clean_up();
}

/// A number of a ClickHouse JSON row (64-bit integers come quoted; NaN and infinities as null).
fn num(v: &Value) -> Option<f64> {
    match v {
        Value::String(s) => s.parse().ok(),
        v => v.as_f64(),
    }
}

/// ClickHouse holds every version's forecasts with their labels and features, and its
/// evaluation view, computed from those rows alone, agrees with the dataflow's evaluation.
fn check_clickhouse(db: &str, evaluation: &Value) {
    let models = clickhouse(&format!(
        "SELECT model, count() AS n, countIf(isNotNull(actual)) AS scored \
         FROM {db}.forecasts_current WHERE sku = 'S0' GROUP BY model ORDER BY model"
    ))
    .expect("forecasts");
    assert_eq!(models.len(), 3, "every version is written: {models:?}");
    for m in &models {
        assert!(num(&m["scored"]) > Some(0.0), "scored rows: {m}");
    }
    let features = clickhouse(&format!(
        "SELECT length(demand) AS l, arraySum(demand) AS sold, category \
         FROM {db}.forecast_features FINAL WHERE sku = 'S0' ORDER BY issued_at DESC LIMIT 1"
    ))
    .expect("features");
    assert_eq!(num(&features[0]["l"]), Some(28.0), "{features:?}");
    assert!(num(&features[0]["sold"]) > Some(0.0), "{features:?}");
    assert_eq!(features[0]["category"], "FOODS");
    let quality = clickhouse(&format!(
        "SELECT * FROM {db}.data_quality WHERE location = 'L9'"
    ))
    .expect("data quality");
    assert_eq!(quality.len(), 1, "{quality:?}");
    for (col, want) in [
        ("negative_on_hand_keys", 1.0),
        ("negative_on_hand_units", 3.0),
        ("expired_holds", 1.0),
        ("expired_units", 2.0),
    ] {
        assert_eq!(num(&quality[0][col]), Some(want), "{col}: {quality:?}");
    }
    let rows = clickhouse(&format!(
        "SELECT model, arm, buckets, segment, scored, rmsse, wape, bias, pinball_q90, \
         coverage_q90, brier FROM {db}.forecast_evaluation"
    ))
    .expect("evaluation view");
    let items = evaluation["items"].as_array().expect("items");
    let scored: Vec<&Value> = items
        .iter()
        .filter(|i| i["count"].as_u64() > Some(0))
        .collect();
    assert_eq!(rows.len(), scored.len(), "{rows:?}\n{evaluation}");
    for i in scored {
        let r = rows
            .iter()
            .find(|r| {
                r["model"] == i["model"]
                    && r["arm"] == i["arm"]
                    && num(&r["buckets"]) == i["buckets"].as_f64()
                    && r["segment"] == i["segment"]
            })
            .unwrap_or_else(|| panic!("no row for {i} in {rows:?}"));
        assert_eq!(num(&r["scored"]), i["count"].as_f64(), "{r} {i}");
        for (col, http) in [
            ("rmsse", &i["rmsse"]),
            ("wape", &i["wape"]),
            ("bias", &i["bias"]),
            ("pinball_q90", &i["pinball"]["0.9"]),
            ("coverage_q90", &i["coverage"]["0.9"]),
            ("brier", &i["brier"]),
        ] {
            match (num(&r[col]), http.as_f64()) {
                (Some(a), Some(b)) => assert!(
                    (a - b).abs() <= 1e-9 * b.abs().max(1.0),
                    "{col}: ClickHouse {a}, dataflow {b}"
                ),
                (a, b) => assert_eq!(a.is_some(), b.is_some(), "{col}: {r} {i}"),
            }
        }
    }
}
