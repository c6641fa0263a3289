//! The live page in a real browser: Debian's Chromium, headless, loads `/?sku=...` from the
//! binary fed a file, runs the page's script against the API, and the rendered document shows
//! the SKU's stock per location, its reservation, its sales chart and the top sellers; and, with
//! forecasts issued every second, the SKU's forecast, the at-risk list and the evaluation. The
//! screenshots are kept as test artefacts (`target/tmp/live-page*.png`).

mod support;

use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn chromium(args: &[&str], url: &str) -> std::process::Output {
    Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1280,1100",
            // Lets the page's fetches and its first redraws finish before the dump.
            "--virtual-time-budget=5000",
        ])
        .args(args)
        .arg(url)
        .output()
        .expect("chromium runs (scripts/test.sh installs Debian's chromium)")
}

#[test]
fn the_live_page_shows_a_sku_in_a_real_browser() {
    let dir = std::env::temp_dir().join(format!("stockflow-page-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let input = dir.join("events.jsonl");
    std::fs::write(
        &input,
        [
            format!(r#"{{"event_id":"p1","type":"received","sku":"PAGE-SKU","ts":{now},"location":"berlin","qty":17}}"#),
            format!(r#"{{"event_id":"p2","type":"received","sku":"PAGE-SKU","ts":{now},"location":"paris","qty":5}}"#),
            format!(r#"{{"event_id":"p3","type":"reserved","sku":"PAGE-SKU","ts":{now},"location":"berlin","qty":4,"reservation_id":"cart-page-1","expires_at":"2099-01-01T00:00:00Z"}}"#),
            format!(r#"{{"event_id":"p4","type":"sold","sku":"PAGE-SKU","ts":{now},"location":"paris","qty":2}}"#),
        ]
        .join("\n")
            + "\n",
    )
    .unwrap();
    let (child, base) = support::start_serving([
        "run",
        "--input-file",
        input.to_str().unwrap(),
        "--http",
        "127.0.0.1:0",
        "--set",
        &format!("dead_letter.path={}", dir.join("dlq.jsonl").display()),
    ]);
    let _child = Killed(child);
    // The file applied and the ranking updated (every pipeline.top_tick).
    let t0 = std::time::Instant::now();
    while !ureq::get(&format!("{base}/v1/analytics/top"))
        .call()
        .ok()
        .and_then(|r| r.into_string().ok())
        .is_some_and(|t| t.contains("PAGE-SKU"))
    {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the file was not applied"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let url = format!("{base}/?sku=PAGE-SKU");
    let dom = chromium(&["--dump-dom"], &url);
    let dom = String::from_utf8_lossy(&dom.stdout);
    // Stock per location and the total: berlin 17 on hand, 4 reserved; paris 5 - 2 sold.
    let stock = section(&dom, "id=\"stock-table\"");
    for cell in ["berlin", "paris", "17", "13", "all locations", "20", "16"] {
        assert!(
            stock.contains(&format!(">{cell}<")),
            "stock table lacks {cell}: {stock}"
        );
    }
    let reservations = section(&dom, "id=\"reservations-table\"");
    for cell in ["cart-page-1", "held", "4"] {
        assert!(
            reservations.contains(&format!(">{cell}<")),
            "reservations lack {cell}: {reservations}"
        );
    }
    assert!(
        dom.contains("id=\"sales-chart\"") && dom.contains("data-units=\"2\""),
        "no sales chart: {dom}"
    );
    assert!(
        dom.contains("?sku=PAGE-SKU\">PAGE-SKU</a>"),
        "not among the top sellers: {dom}"
    );
    assert!(dom.contains(">ready<"), "readiness not shown: {dom}");

    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("live-page.png");
    let out = chromium(&[&format!("--screenshot={}", shot.display())], &url);
    assert!(out.status.success() && shot.metadata().is_ok_and(|m| m.len() > 10_000));
    eprintln!("screenshot: {}", shot.display());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_live_page_shows_forecasts_in_a_real_browser() {
    let dir = std::env::temp_dir().join(format!("stockflow-page-fc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let t0 = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        / 1000
        * 1000
        - 20_000;
    // FC-SKU sells 1 a second at berlin for 8 s from 10 on hand; EMPTY-SKU has nothing left;
    // the last event moves the log (a file's log time is its latest ts) 12 s on, so forecasts
    // are issued at every second's boundary and the 1-second labels become final.
    let mut lines = vec![
        format!(
            r#"{{"event_id":"c","type":"listed","sku":"FC-SKU","ts":{t0},"category":"FOODS"}}"#
        ),
        format!(
            r#"{{"event_id":"r","type":"received","sku":"FC-SKU","ts":{t0},"location":"berlin","qty":10}}"#
        ),
        format!(
            r#"{{"event_id":"e1","type":"received","sku":"EMPTY-SKU","ts":{t0},"location":"paris","qty":1}}"#
        ),
        format!(
            r#"{{"event_id":"e2","type":"sold","sku":"EMPTY-SKU","ts":{},"location":"paris","qty":1}}"#,
            t0 + 100
        ),
    ];
    for i in 0..8 {
        lines.push(format!(
            r#"{{"event_id":"s{i}","type":"sold","sku":"FC-SKU","ts":{},"location":"berlin","qty":1}}"#,
            t0 + 500 + i * 1000
        ));
    }
    lines.push(format!(
        r#"{{"event_id":"end","type":"received","sku":"OTHER","ts":{},"location":"x","qty":1}}"#,
        t0 + 12_000
    ));
    let input = dir.join("events.jsonl");
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let (child, base) = support::start_serving([
        "run",
        "--input-file",
        input.to_str().unwrap(),
        "--http",
        "127.0.0.1:0",
        "--set",
        &format!("dead_letter.path={}", dir.join("dlq.jsonl").display()),
        "--set",
        "forecast.bucket=1s",
        "--set",
        "pipeline.windows=[\"1s\"]",
        "--set",
        "pipeline.window_retention=1s",
    ]);
    let _child = Killed(child);
    let started = std::time::Instant::now();
    while !ureq::get(&format!("{base}/v1/forecast/evaluation"))
        .call()
        .ok()
        .and_then(|r| r.into_string().ok())
        .is_some_and(|t| t.contains("\"count\":") && !t.contains("\"items\":[]"))
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "nothing was scored"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let url = format!("{base}/?sku=FC-SKU");
    let dom = chromium(&["--dump-dom"], &url);
    let dom = String::from_utf8_lossy(&dom.stdout);
    // The forecast per horizon at berlin, with 2 left and 8 sold in the retained windows.
    let forecast = section(&dom, "id=\"forecast-table\"");
    for cell in ["berlin", "1", "7", "2"] {
        assert!(
            forecast.contains(&format!(">{cell}<")),
            "forecast table lacks {cell}: {forecast}"
        );
    }
    assert!(
        forecast.contains("%<"),
        "no stock-out probability: {forecast}"
    );
    assert!(dom.contains("pooled:"), "the model is not named: {dom}");
    // EMPTY-SKU, with nothing left, is at risk.
    assert!(
        dom.contains("?sku=EMPTY-SKU\">EMPTY-SKU</a> @ paris"),
        "EMPTY-SKU not at risk: {dom}"
    );
    // The evaluation: every model scored, and the readout in words.
    let evaluation = section(&dom, "id=\"evaluation-table\"");
    for model in ["snaive:", "tsb:", "pooled:"] {
        assert!(
            evaluation.contains(model),
            "{model} not scored: {evaluation}"
        );
    }
    assert!(dom.contains("id=\"readout\""), "no readout: {dom}");

    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("live-page-forecast.png");
    let out = chromium(&[&format!("--screenshot={}", shot.display())], &url);
    assert!(out.status.success() && shot.metadata().is_ok_and(|m| m.len() > 10_000));
    eprintln!("screenshot: {}", shot.display());
    let _ = std::fs::remove_dir_all(&dir);
}

/// The element that starts at `marker` up to its closing `</table>`.
fn section<'a>(dom: &'a str, marker: &str) -> &'a str {
    let start = dom
        .find(marker)
        .unwrap_or_else(|| panic!("{marker} not rendered: {dom}"));
    let end = dom[start..]
        .find("</table>")
        .map_or(dom.len(), |e| start + e);
    &dom[start..end]
}
