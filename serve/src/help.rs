//! The `# HELP` text of every metric stockflow exports (docs/http.md has the same in a table):
//! `promtool check metrics` requires one, and it is what a dashboard shows on hover.

use metrics::{describe_counter, describe_gauge, describe_histogram};

/// Describes every metric to the installed recorder; call once after installing it.
pub fn describe_metrics() {
    for (name, help) in [
        ("stockflow_events_ingested_total", "Events admitted into the pipeline, by stream."),
        ("stockflow_events_rejected_total", "Rejected input records, by reason."),
        ("stockflow_events_duplicate_total", "Events dropped as repeats of an event_id."),
        ("stockflow_dead_letters_total", "Dead letters handed to the writer (file or topic), by reason."),
        ("stockflow_dead_letter_failures_total", "Dead letters the broker refused for good."),
        ("stockflow_kafka_errors_total", "Errors reading from Kafka (the client retries)."),
        ("stockflow_kafka_gap_records_total", "Records the broker had deleted that checkpoint.allow_gap skipped."),
        ("stockflow_kafka_heartbeats_total", "Heartbeat records written into idle partitions (kafka.idle_heartbeat), by outcome (written, failed)."),
        ("stockflow_kafka_timestamps_cut_total", "Records whose Kafka timestamp ran further ahead of their partition's log time than pipeline.max_clock_skew (the log time moved by that much only), by topic."),
        ("stockflow_kafka_gap_stops_total", "Partitions that stopped being read because the broker deleted records before they were read."),
        ("stockflow_clickhouse_rows_written_total", "Rows inserted into ClickHouse."),
        ("stockflow_clickhouse_insert_failures_total", "Failed ClickHouse insert attempts (each retried)."),
        ("stockflow_checkpoints_written_total", "Checkpoint files written."),
        ("stockflow_checkpoint_failures_total", "Checkpoint writes that failed."),
        ("stockflow_checkpoint_corrupt_total", "Checkpoints skipped at start as damaged."),
        ("stockflow_window_late_events_total", "Contributions left out of a window that was final at the record's log time, by window."),
        ("stockflow_http_requests_total", "HTTP requests, by route template and status."),
        ("stockflow_http_connections_refused_total", "HTTP connections closed at once because http.max_connections were open."),
        ("stockflow_http_write_timeouts_total", "HTTP connections closed because an answer was not taken within http.write_timeout."),
        ("stockflow_http_forwarded_total", "Lookups forwarded to the cluster process that holds the key, by outcome (ok, timeout, unreachable)."),
        ("stockflow_forecast_late_labels_total", "Demand that arrived for a forecast bucket already final: in no label."),
        ("stockflow_forecast_scored_total", "Forecasts scored on a final label, by model (name:model-file version) and horizon (buckets)."),
        ("stockflow_http_read_your_writes_timeouts_total", "Lookups whose min_offsets were not reflected within http.max_wait (answered 504)."),
    ] {
        describe_counter!(name, help);
    }
    for (name, help) in [
        (
            "stockflow_build_info",
            "Always 1; the labels say the version and the worker count.",
        ),
        (
            "stockflow_pipeline_time_seconds",
            "as_of of the pipeline, seconds since the epoch.",
        ),
        ("stockflow_freshness_seconds", "Wall clock minus as_of."),
        (
            "stockflow_log_frontier_seconds",
            "The log frontier (forgetting is applied up to it), seconds since the epoch.",
        ),
        (
            "stockflow_kafka_log_time_seconds",
            "Log time of the last record read from a partition, seconds since the epoch.",
        ),
        (
            "stockflow_kafka_partitions",
            "Partitions of a topic as last asked for (kafka.metadata_refresh); added ones are read from their beginning.",
        ),
        (
            "stockflow_kafka_log_time_lag_seconds",
            "Wall clock minus a partition's log time: the partition that trails most holds the log frontier back.",
        ),
        (
            "stockflow_kafka_consumer_lag",
            "Records after the committed offset, per partition.",
        ),
        ("stockflow_forecast_keys", "(sku, location) keys the forecaster keeps."),
        ("stockflow_forecast_pending_inputs", "Forecaster inputs waiting for the log frontier to pass their log time."),
        ("stockflow_forecast_key_bytes", "Bytes the forecaster's keys hold (counted from its structures at the latest bucket boundary)."),
        ("stockflow_forecast_rmsse", "Running RMSSE of the scored forecasts, by model and horizon (all arms and segments)."),
        ("stockflow_forecast_wape", "Running WAPE of the scored forecasts, by model and horizon (all arms and segments)."),
        ("stockflow_quality_negative_on_hand_keys", "(sku, location) keys whose on_hand is below zero (GET /v1/quality per location)."),
        ("stockflow_quality_negative_on_hand_units", "Units below zero over the keys whose on_hand is below zero."),
        ("stockflow_quality_expired_holds", "Reservations that expired without a release or a fulfilment, among those retained."),
        ("stockflow_quality_stale_forecast_keys", "Forecast keys with no event for 7 buckets before the latest boundary."),
        (
            "stockflow_clickhouse_buffered_changes",
            "Changes waiting for ClickHouse; past clickhouse.buffer_rows Kafka is read no further.",
        ),
        (
            "stockflow_clickhouse_writer",
            "With clickhouse.writer_lease: 1 while this replica holds the lease and writes ClickHouse, else 0.",
        ),
        (
            "stockflow_clickhouse_durable_time_seconds",
            "ClickHouse holds every change before this pipeline time, seconds since the epoch.",
        ),
        (
            "stockflow_checkpoint_bytes",
            "Size of the latest checkpoint.",
        ),
        (
            "stockflow_checkpoint_time_seconds",
            "Pipeline time of the latest checkpoint, seconds since the epoch.",
        ),
        (
            "stockflow_checkpoint_restore_seconds",
            "How long reading the restored checkpoint took.",
        ),
        ("stockflow_http_connections_open", "Open HTTP connections."),
        ("stockflow_view_skus", "SKUs in the served views."),
        (
            "stockflow_view_reservations",
            "Reservations in the served views.",
        ),
    ] {
        describe_gauge!(name, help);
    }
    for (name, help) in [
        (
            "stockflow_http_request_duration_seconds",
            "HTTP request latency, by route template.",
        ),
        (
            "stockflow_clickhouse_insert_seconds",
            "Duration of a ClickHouse batch (three inserts).",
        ),
        (
            "stockflow_checkpoint_write_seconds",
            "How long writing a checkpoint took.",
        ),
        (
            "stockflow_http_read_your_writes_wait_seconds",
            "How long lookups with min_offsets waited for their offsets to be reflected.",
        ),
    ] {
        describe_histogram!(name, help);
    }
}
