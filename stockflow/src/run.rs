//! `stockflow run`: timely workers on their own threads, HTTP on a small tokio runtime.

use anyhow::{Context, Result};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use stockflow_dataflow::clock::{Clock, SystemClock};
use stockflow_dataflow::views::ViewStore;
use stockflow_dataflow::{Engine, EngineConfig};
use stockflow_ingest::generator::{location_name, reservation_name, sku_name, Generator};
use stockflow_ingest::jsonl::JsonLinesSource;
use stockflow_ingest::{run_worker, Source, WorkerOptions};
use stockflow_serve::ServeState;
use stockflow_sinks::dead_letter::DeadLetterFile;
use stockflow_types::config::{Settings, SourceKind};

/// Runs until SIGINT or SIGTERM.
pub fn run(settings: Settings) -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                "stockflow=info,stockflow_ingest=info,stockflow_sinks=info,stockflow_serve=info"
                    .into()
            }),
        )
        .with_writer(std::io::stderr)
        .init();
    let metrics = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("stockflow_http_request_duration_seconds".into()),
            &stockflow_serve::LATENCY_BUCKETS,
        )?
        .install_recorder()
        .context("installing the metrics recorder")?;

    let cfg = Arc::new(EngineConfig::from_settings(&settings)?);
    let workers = settings.pipeline.workers;
    let store = Arc::new(ViewStore::new(workers, cfg.windows.clone(), cfg.top_k));
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let dead_letters = DeadLetterFile::create(&settings.dead_letter.path)?;
    let shutdown = Arc::new(AtomicBool::new(false));

    // The file source is read by worker 0; the generator runs a share on every worker.
    let file_source: Arc<Mutex<Option<JsonLinesSource>>> =
        Arc::new(Mutex::new(match settings.source.kind {
            SourceKind::File => {
                let path = settings
                    .source
                    .input_file
                    .as_deref()
                    .expect("validated: file needs input_file");
                Some(JsonLinesSource::open(path)?)
            }
            SourceKind::Generator => None,
        }));

    let timely_config = if workers > 1 {
        timely::Config::process(workers)
    } else {
        timely::Config::thread()
    };
    let guards = {
        let (cfg, store, clock, shutdown) = (
            Arc::clone(&cfg),
            Arc::clone(&store),
            Arc::clone(&clock),
            Arc::clone(&shutdown),
        );
        let dlq = dead_letters.sender();
        let settings = settings.clone();
        timely::execute(timely_config, move |worker| {
            let mut engine = Engine::build(worker, Arc::clone(&cfg), Arc::clone(&store), |c| c);
            let mut sources: Vec<Box<dyn Source>> = Vec::new();
            match settings.source.kind {
                SourceKind::Generator => {
                    let c = Arc::clone(&clock);
                    sources.push(Box::new(Generator::new(
                        &settings.generator,
                        worker.index(),
                        worker.peers(),
                        Arc::new(move || c.now_ms()),
                    )));
                }
                SourceKind::File => {
                    if let Some(src) = file_source.lock().expect("not poisoned").take() {
                        sources.push(Box::new(src));
                    }
                }
            }
            let opts = WorkerOptions::new(cfg.tick_ms, cfg.retention_ms);
            run_worker(
                worker,
                &mut engine,
                sources,
                clock.as_ref(),
                &dlq,
                &shutdown,
                &opts,
            );
            engine.shutdown(worker);
        })
        .map_err(|e| anyhow::anyhow!("starting timely workers: {e}"))?
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(settings.http.threads)
        .thread_name("http")
        .enable_all()
        .build()
        .context("starting the HTTP runtime")?;
    let state = Arc::new(ServeState {
        store,
        metrics: Some(metrics),
        clock,
        ready_max_lag_ms: 5_000,
    });
    let served = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&settings.http.listen)
            .await
            .with_context(|| format!("listening on {}", settings.http.listen))?;
        let addr = listener.local_addr()?;
        tracing::info!(%addr, workers, source = ?settings.source.kind, "stockflow is serving");
        print_try_lines(&settings, &addr.to_string());
        stockflow_serve::serve(listener, state, shutdown_signal()).await;
        anyhow::Ok(())
    });

    tracing::info!("shutting down");
    shutdown.store(true, Ordering::Relaxed);
    drop(guards); // joins the workers
    dead_letters.close();
    served
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing SIGTERM handler");
        tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn print_try_lines(settings: &Settings, addr: &str) {
    let (sku, loc, res) = match settings.source.kind {
        SourceKind::Generator => (sku_name(1), location_name(1), reservation_name(0, 1)),
        SourceKind::File => ("SKU".into(), "LOCATION".into(), "RESERVATION_ID".into()),
    };
    let base = format!("http://{addr}");
    println!("stockflow is up. Try:");
    println!("  curl -s {base}/v1/stock/{sku}");
    println!("  curl -s {base}/v1/stock/{sku}/{loc}");
    println!("  curl -s {base}/v1/reservations/{res}");
    println!("  curl -s '{base}/v1/analytics/sku/{sku}?window=1m'");
    println!("  curl -s '{base}/v1/analytics/top?window=1h&limit=10'");
    println!("  curl -s {base}/metrics");
    println!("  curl -s {base}/openapi.json");
    println!("Stop with Ctrl-C.");
}
