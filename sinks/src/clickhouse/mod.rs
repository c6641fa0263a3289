//! Where a dataflow diff becomes a ClickHouse row.
//!
//! Each worker's change collection `(row, pipeline time, ±1)` passes through [`attach`], which
//! hands the updates to the sink task ([`ClickHouseSink`]) and publishes the worker's frontier.
//! The task keeps the updates of incomplete times aside; once every worker's frontier has passed
//! a time, it folds that time's updates into one pending row per key (the latest state wins).
//! A batch is written when it holds `batch_rows` keys or `flush_interval` after the last write:
//! per key, the row as it now is with `version` = the pipeline time of its latest change and
//! `deleted = 0`, or the last row it had with `deleted = 1` when it ceased to exist. Rows the
//! pipeline merely forgets for retention (ended reservations, final windows; the ledger marks
//! them [`stockflow_types::rows::Change::Forgotten`]) stay as they were, or are written once as
//! their last state if they never were: ClickHouse keeps the history. Tables are
//! `ReplacingMergeTree(version)` (contract §4), so `FINAL ... WHERE deleted = 0` reads the
//! current values, and writing the same state again (a retry, a replay after a restart) changes
//! no answer.
//!
//! Once a batch is acknowledged, every change at times before its frontier is durable:
//! [`stockflow_types::progress::Progress::sink_durable`] moves, and the Kafka source may store
//! the offsets that produced them. A failed insert is retried with exponential backoff; while
//! it fails, updates wait in memory, counted in `Progress::sink_buffered`, and the ingest loop
//! stops reading Kafka when they exceed `buffer_rows`.
//!
//! Connections: `http://`, or `https://` with rustls trusting the system's roots and
//! `clickhouse.ca_file` ([`client`]).
//!
//! Server compatibility: RowBinary without validation and without compression, plain types
//! (`String`, `Int64`, `UInt64`, `UInt8`, `DateTime`): works with Debian's 18.16 and current
//! servers alike.

mod client;
mod lease;
mod schema;
mod sink;

pub use client::{client, ClientError};

pub use schema::{ddl, modern};
pub use sink::{attach, ClickHouseSink, Owns, Restored, SinkHandle};
