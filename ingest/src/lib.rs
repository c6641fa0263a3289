//! Sources of stockflow and the ingest loop: where a message becomes a dataflow update.
//!
//! Every source yields [`RawRecord`]s (key, bytes, position). [`admit`] decodes and validates
//! one against the contract at the pipeline time it would enter; a valid event goes into the
//! dataflow, a rejected one to the dead-letter output with its reason. [`run_worker`] is the
//! loop each timely worker runs: poll its sources, admit, advance the input to the pipeline
//! clock, step the dataflow. The Kafka source plugs into the same loop.
//!
//! ```
//! use stockflow_ingest::{admit, RawRecord, Position};
//! let rec = RawRecord::new(None, br#"{"event_id":"e","type":"sold","sku":"A","ts":5,"location":"L","qty":1}"#.to_vec(), Position::new("doc", 0, 0));
//! assert!(admit(&rec, 10, 1000).is_ok());
//! ```

pub mod generator;
pub mod jsonl;
mod worker;

pub use worker::{run_worker, WorkerOptions};

use stockflow_types::event::{decode, Event, EventKind, RejectReason, Rejection};
use stockflow_types::Millis;

/// Where a record came from: enough to find it again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Position {
    /// The source: a topic, a file name, `generator`.
    pub source: String,
    /// Partition (or generator worker); 0 for files.
    pub partition: i32,
    /// Offset within the partition (line number for files).
    pub offset: i64,
}

impl Position {
    /// A position.
    pub fn new(source: impl Into<String>, partition: i32, offset: i64) -> Self {
        Position {
            source: source.into(),
            partition,
            offset,
        }
    }
}

/// One input message, exactly as received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawRecord {
    /// The message key (the SKU, for Kafka).
    pub key: Option<Vec<u8>>,
    /// The message value: one JSON event.
    pub value: Vec<u8>,
    /// Where it came from.
    pub position: Position,
}

impl RawRecord {
    /// A record.
    pub fn new(key: Option<Vec<u8>>, value: Vec<u8>, position: Position) -> Self {
        RawRecord {
            key,
            value,
            position,
        }
    }
}

/// What a poll of a source produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Polled {
    /// Records were appended (perhaps fewer than asked for).
    Records,
    /// Nothing right now; more may come.
    Idle,
    /// Nothing now and never again.
    Done,
}

/// A source of raw records, polled without blocking from a worker thread.
pub trait Source: Send {
    /// Appends at most `max` records to `out`.
    fn poll(&mut self, max: usize, out: &mut Vec<RawRecord>) -> Polled;
}

/// Decodes and validates a record for admission at pipeline time `t`. A `counted` event older
/// than `retention` at `t` is rejected: the pipeline no longer keeps the movement detail needed
/// to apply it exactly (see docs/architecture.md).
pub fn admit(rec: &RawRecord, t: Millis, retention: u64) -> Result<Event, Rejection> {
    let ev = decode(&rec.value)?;
    if matches!(ev.kind, EventKind::Counted { .. }) && ev.ts.saturating_add(retention) < t {
        return Err(Rejection::new(
            RejectReason::CountTooOld,
            format!("`counted` at ts {} is older than the retention horizon ({} ms before pipeline time {t})", ev.ts, retention),
        ));
    }
    Ok(ev)
}
