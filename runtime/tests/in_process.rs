//! A pipeline run in-process, as a library: the generator's workload in, a lookup over HTTP
//! out, then a clean stop.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use stockflow_ingest::generator::sku_name;
use stockflow_runtime::Pipeline;
use stockflow_types::config::Settings;

#[test]
fn a_pipeline_starts_serves_and_stops_in_process() {
    let mut settings: Settings = serde_json::from_str("{}").expect("every field has a default");
    settings.http.listen = "127.0.0.1:0".into();
    settings.dead_letter.path =
        std::env::temp_dir().join(format!("stockflow-in-process-{}.jsonl", std::process::id()));
    settings.validate().expect("valid");
    let p = Pipeline::start(&settings, None).expect("starts");
    let url = format!("http://{}/v1/stock/{}", p.addr(), sku_name(1));
    let store = Arc::clone(&p.state().store);
    let done = Arc::new(AtomicBool::new(false));
    let answer = Arc::new(Mutex::new(None));
    let asker = {
        let (done, answer) = (Arc::clone(&done), Arc::clone(&answer));
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(r) = ureq::get(&url).call() {
                    *answer.lock().unwrap() = Some(r.into_string().unwrap());
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            done.store(true, Ordering::Release);
        })
    };
    p.serve_until(async move {
        while !done.load(Ordering::Acquire) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .expect("stops cleanly");
    asker.join().unwrap();
    let body = answer.lock().unwrap().clone().expect("the SKU was served");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(json["as_of"].is_u64(), "{json}");
    assert!(
        store.sku_count() > 0,
        "the generator's events reached the views"
    );
    let _ = std::fs::remove_file(&settings.dead_letter.path);
}
