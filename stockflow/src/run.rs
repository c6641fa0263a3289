//! `stockflow run`: logging, the metrics recorder and the signals around a
//! [`stockflow_runtime::Pipeline`] (timely workers on their own threads; HTTP and the
//! ClickHouse sink on a small tokio runtime).

use anyhow::{Context, Result};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use std::sync::Arc;
use std::time::Duration;
use stockflow_ingest::generator::{location_name, reservation_name, sku_name};
use stockflow_runtime::STOP_GRACE;
use stockflow_types::config::{LogFormat, Settings, SourceKind};
use stockflow_types::progress::Progress;

/// Runs until SIGINT or SIGTERM.
pub fn run(settings: Settings) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        "stockflow=info,stockflow_ingest=info,stockflow_sinks=info,stockflow_serve=info".into()
    });
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match settings.log.format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
    // Every HTTP connection is a file descriptor: up to http.max_connections of them, beside
    // Kafka, ClickHouse and checkpoint files.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if limit < settings.http.max_connections as u64 + 256 => tracing::warn!(
            limit,
            max_connections = settings.http.max_connections,
            "the open-file limit is below http.max_connections: connections beyond it fail to be accepted"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
    let metrics = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("stockflow_http_request_duration_seconds".into()),
            &stockflow_serve::LATENCY_BUCKETS,
        )?
        // Every other duration is a histogram too (a summary cannot be aggregated over
        // processes or put on a heatmap).
        .set_buckets_for_metric(
            Matcher::Suffix("_seconds".into()),
            &stockflow_serve::DURATION_BUCKETS,
        )?
        .install_recorder()
        .context("installing the metrics recorder")?;
    stockflow_serve::describe_metrics();
    metrics::gauge!(
        "stockflow_build_info",
        "version" => env!("CARGO_PKG_VERSION"),
        "workers" => settings.pipeline.workers.to_string()
    )
    .set(1.0);

    let p = stockflow_runtime::Pipeline::start(&settings, Some(metrics))?;
    let addr = p.addr();
    tracing::info!(%addr, workers = settings.pipeline.workers, source = ?settings.source.kind, clickhouse = settings.clickhouse.enabled, "stockflow is serving");
    print_try_lines(&settings, &addr.to_string());
    let progress = Arc::clone(&p.state().progress);
    p.serve_until(stop_signal(progress))
}

/// SIGINT, SIGTERM, or the dataflow stopping (then after [`STOP_GRACE`], in which `/readyz`
/// and lookups answer 503, so that a load balancer moves away first).
async fn stop_signal(progress: Arc<Progress>) {
    let stopped = async {
        while progress.stopped().is_none() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tracing::error!(
            why = progress.stopped().unwrap_or_default(),
            "the dataflow stopped; the process ends"
        );
        tokio::time::sleep(STOP_GRACE).await;
    };
    tokio::select! { () = shutdown_signal() => {}, () = stopped => {} }
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
        // `stockflow produce` writes the generator's workload into Kafka: same names.
        SourceKind::Generator | SourceKind::Kafka => {
            (sku_name(1), location_name(1), reservation_name(0, 1))
        }
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
