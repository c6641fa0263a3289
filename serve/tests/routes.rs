//! The routes against a real dataflow's views (warp's in-process test client, no socket).

use std::sync::Arc;
use stockflow_dataflow::clock::ManualClock;
use stockflow_dataflow::views::ViewStore;
use stockflow_dataflow::{Engine, EngineConfig, Record};
use stockflow_serve::{routes, ServeState};
use stockflow_types::event::decode;
use stockflow_types::progress::Progress;

const T0: u64 = 1_795_780_800_000; // 2026-11-27T12:00:00Z

fn state() -> Arc<ServeState> {
    let mut cfg = EngineConfig::for_tests(10);
    cfg.windows[0].name = "1m".into();
    cfg.windows[0].size_ms = 60_000;
    let cfg = Arc::new(cfg);
    let store = Arc::new(ViewStore::new(1, cfg.windows.clone(), cfg.top_k));
    let s = Arc::clone(&store);
    timely::execute(timely::Config::thread(), move |worker| {
        let mut engine = Engine::build(worker, Arc::clone(&cfg), Arc::clone(&s), None, |c| c);
        engine.advance_to(T0);
        for line in [
            format!(r#"{{"event_id":"1","type":"received","sku":"A/1 x","ts":{T0},"location":"north","qty":9}}"#),
            format!(
                r#"{{"event_id":"2","type":"reserved","sku":"A/1 x","ts":{T0},"location":"north","qty":4,"reservation_id":"r1","expires_at":{}}}"#,
                T0 + 60_000
            ),
            format!(r#"{{"event_id":"3","type":"sold","sku":"A/1 x","ts":{T0},"location":"south","qty":2}}"#),
        ] {
            let event = decode(line.as_bytes()).unwrap();
            engine.send(Record {
                log_time: T0,
                event,
            });
        }
        engine.advance_log(T0);
        engine.advance_to(T0 + 10);
        while engine.pending(T0 + 10) {
            worker.step();
        }
        // A few more steps so that every operator has seen the final frontier.
        for _ in 0..10 {
            worker.step();
        }
        engine.shutdown(worker);
    })
    .unwrap()
    .join();
    Arc::new(ServeState {
        store,
        metrics: None,
        clock: Arc::new(ManualClock::new(T0 + 20)),
        ready_max_lag_ms: 5_000,
        progress: caught_up_at(T0),
        routing: Default::default(),
    })
}

fn caught_up_at(t: u64) -> Arc<Progress> {
    let p = Progress::new(1, true, false);
    p.set_caught_up(0, t);
    p.set_kafka_ok(true);
    Arc::new(p)
}

async fn get(state: &Arc<ServeState>, path: &str) -> (u16, String, serde_json::Value) {
    let r = warp::test::request()
        .path(path)
        .reply(&routes(Arc::clone(state)))
        .await;
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (
        r.status().as_u16(),
        ct,
        serde_json::from_slice(r.body()).unwrap_or(serde_json::Value::Null),
    )
}

#[tokio::test]
async fn answers_and_problems() {
    let s = state();
    let (status, ct, body) = get(&s, "/v1/stock/A%2F1%20x").await;
    assert_eq!((status, ct.as_str()), (200, "application/json"), "{body}");
    assert_eq!(body["on_hand"], 7);
    assert_eq!(body["reserved"], 4);
    assert_eq!(body["available"], 3);
    assert_eq!(body["as_of"], T0);
    assert_eq!(
        body["locations"][1],
        serde_json::json!({"location":"south","on_hand":-2,"reserved":0,"available":-2})
    );

    let (status, _, body) = get(&s, "/v1/stock/A%2F1%20x/north").await;
    assert_eq!((status, body["available"].as_i64()), (200, Some(5)));
    let (status, ct, body) = get(&s, "/v1/stock/A%2F1%20x/west").await;
    assert_eq!((status, ct.as_str()), (404, "application/problem+json"));
    assert!(
        body["detail"].as_str().unwrap().contains("\"west\""),
        "{body}"
    );

    let (_, _, body) = get(&s, "/v1/reservations/r1").await;
    assert_eq!(body["status"], "held");
    assert_eq!(body["expires_at"], "2026-11-27T12:01:00.000Z");

    let path = "/v1/analytics/sku/A%2F1%20x?window=1m&from=2026-11-27T12:00:00Z&to=1795780860000";
    let (status, _, body) = get(&s, path).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["buckets"].as_array().unwrap().len(), 2);
    assert_eq!(body["buckets"][0]["start"], "2026-11-27T12:00:00.000Z");
    assert_eq!(body["buckets"][0]["end"], "2026-11-27T12:01:00.000Z");
    let (_, _, body) = get(
        &s,
        "/v1/analytics/sku/A%2F1%20x?window=1m&from=1795780860000",
    )
    .await;
    assert_eq!(body["buckets"], serde_json::json!([]));

    // `from` after `to` is an empty range, and a bound before 1970 means the beginning.
    let (status, _, body) = get(&s, "/v1/analytics/sku/A%2F1%20x?from=20&to=10").await;
    assert_eq!((status, &body["buckets"]), (200, &serde_json::json!([])));
    let (status, _, body) = get(&s, "/v1/analytics/sku/A%2F1%20x?from=1900-01-01T00:00:00Z").await;
    assert_eq!(status, 200);
    assert!(!body["buckets"].as_array().unwrap().is_empty(), "{body}");

    for (path, param) in [
        ("/v1/analytics/sku/A%2F1%20x?window=2m", "`window`"),
        ("/v1/analytics/sku/A%2F1%20x?from=soon", "`from`"),
        ("/v1/analytics/top?limit=6", "`limit`"),
        ("/v1/analytics/top?limit=x", "`limit`"),
    ] {
        let (status, ct, body) = get(&s, path).await;
        assert_eq!(
            (status, ct.as_str()),
            (400, "application/problem+json"),
            "{path}"
        );
        assert_eq!(body["status"], 400);
        assert_eq!(body["title"], "Bad Request");
        assert!(
            body["detail"].as_str().unwrap().contains(param),
            "{path}: {body}"
        );
    }
    assert_eq!(get(&s, "/v1/analytics/sku/nobody").await.0, 404);
    let (status, _, body) = get(&s, "/v1/reservations/nope").await;
    assert_eq!(status, 404);
    assert!(
        body["detail"].as_str().unwrap().contains("never been seen"),
        "{body}"
    );
    assert_eq!(get(&s, "/v2/anything").await.0, 404);
    let r = warp::test::request()
        .method("POST")
        .path("/v1/stock/x")
        .reply(&routes(Arc::clone(&s)))
        .await;
    assert_eq!(r.status().as_u16(), 405);

    let (status, _, body) = get(&s, "/readyz").await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ready")));
    let stale = Arc::new(ServeState {
        store: Arc::clone(&s.store),
        metrics: None,
        clock: Arc::new(ManualClock::new(T0 + 60_000)),
        ready_max_lag_ms: 5_000,
        progress: caught_up_at(T0),
        routing: Default::default(),
    });
    assert_eq!(get(&stale, "/readyz").await.0, 503);
    // Not ready while the start backlog is not absorbed, nor while Kafka is unreachable.
    let unready = |progress: Arc<Progress>| {
        Arc::new(ServeState {
            store: Arc::clone(&s.store),
            metrics: None,
            clock: Arc::new(ManualClock::new(T0 + 20)),
            ready_max_lag_ms: 5_000,
            progress,
            routing: Default::default(),
        })
    };
    let backlog = unready(caught_up_at(T0 + 1_000));
    let (status, _, body) = get(&backlog, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    let down = caught_up_at(T0);
    down.set_kafka_ok(false);
    let (status, _, body) = get(&unready(down), "/readyz").await;
    assert_eq!(status, 503);
    assert!(body["detail"].as_str().unwrap().contains("Kafka"), "{body}");
    // Nor while checkpoints cannot be written (lookups keep answering).
    let failing = caught_up_at(T0);
    failing.set_checkpoint_problem(Some("No space left on device".into()));
    let failing = unready(failing);
    let (status, _, body) = get(&failing, "/readyz").await;
    assert_eq!(status, 503);
    assert!(
        body["detail"].as_str().unwrap().contains("No space left"),
        "{body}"
    );
    assert_eq!(get(&failing, "/v1/stock/A%2F1%20x").await.0, 200);
}

#[tokio::test]
async fn a_skus_reservations_and_the_live_page() {
    let s = state();
    let (status, _, body) = get(&s, "/v1/reservations?sku=A%2F1%20x").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["total"], 1);
    assert_eq!(body["reservations"][0]["reservation_id"], "r1");
    assert_eq!(body["reservations"][0]["status"], "held");
    let (status, ct, body) = get(&s, "/v1/reservations").await;
    assert_eq!(
        (status, ct.as_str()),
        (400, "application/problem+json"),
        "{body}"
    );
    assert_eq!(
        get(&s, "/v1/reservations?sku=A%2F1%20x&limit=0").await.0,
        400
    );
    assert_eq!(get(&s, "/v1/reservations?sku=nope").await.0, 404);
    let page = warp::test::request()
        .path("/")
        .reply(&routes(Arc::clone(&s)))
        .await;
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    assert!(String::from_utf8_lossy(page.body()).contains("id=\"lookup\""));
}
