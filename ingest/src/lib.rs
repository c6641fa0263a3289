//! Sources of stockflow: where a message becomes a dataflow update.
//!
//! Every source yields [`RawRecord`]s (key, bytes, position, log time). [`admit`] decodes and
//! validates one against the contract; a valid event goes into the dataflow with its log time,
//! a rejected one to the dead-letter output with its reason (the loop that does both, and ties
//! sources, dataflow and sinks together, is the runtime's: `runtime/src/pipeline.rs`). The
//! sources: the workload [`generator`], JSON lines ([`jsonl`]) and Kafka ([`kafka`]), where a
//! Kafka message becomes a [`RawRecord`].
//!
//! **Log time** is a time read from the log itself, so that every replica and every restart
//! sees the same one: a Kafka record's timestamp, made monotonic per partition and bounded in
//! how far one record may move it
//! ([`stockflow_types::log_time::next_log_time`]); for a file, the latest `ts` so far; for
//! the generator, its clock when it made the record.
//!
//! ```
//! use stockflow_ingest::{admit, RawRecord, Position};
//!
//! let mut rec = RawRecord::new(None, br#"{"event_id":"e","type":"sold","sku":"A","ts":5,"location":"L","qty":1}"#.to_vec(), Position::new("doc", 0, 0));
//! rec.log_time = 10;
//! let rules = stockflow_ingest::Rules { retention_ms: 1000, max_skew_ms: 1000 };
//! assert_eq!(admit(&rec, &rules).unwrap().log_time, 10);
//! ```

pub mod generator;
pub mod jsonl;
pub mod kafka;

use std::collections::VecDeque;
use stockflow_dataflow::Record;
use stockflow_types::event::{decode, decode_from, EventKind, RejectReason, Rejection, Stream};
use stockflow_types::resume::Resume;
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
    /// The stream its source carries (a Kafka topic carries one), if any: an event of the
    /// other stream is rejected as `wrong_topic`.
    pub stream: Option<Stream>,
    /// An earlier run of the pipeline already sent it to the dead-letter output, should it be
    /// rejected (it is being replayed from before the committed offset).
    pub dead_lettered: bool,
    /// Its log time (see the crate documentation).
    pub log_time: Millis,
    /// The record's own timestamp as its source read it (a Kafka record's), if it has one:
    /// the business `ts` may not run further ahead of it than the allowed skew.
    pub stamp: Option<Millis>,
}

impl RawRecord {
    /// A record of no particular stream, not seen before.
    pub fn new(key: Option<Vec<u8>>, value: Vec<u8>, position: Position) -> Self {
        RawRecord {
            key,
            value,
            position,
            stream: None,
            dead_lettered: false,
            log_time: 0,
            stamp: None,
        }
    }
}

/// Where a partition stood after the records admitted at each pipeline time: what
/// [`Source::positions_at`] answers and what [`Source::durable`] lets go, for any source whose
/// records have offsets (a Kafka partition, a file's lines).
#[derive(Debug)]
pub struct Admissions {
    /// (admission time, next offset, log time) after the records admitted at it, oldest first.
    entries: VecDeque<(Millis, i64, Millis)>,
    /// The position after the last entry let go (or the start position).
    base: (i64, Millis),
}

impl Admissions {
    /// Starting at offset `next` with log time `log_time`.
    pub fn new(next: i64, log_time: Millis) -> Self {
        Admissions {
            entries: VecDeque::new(),
            base: (next, log_time),
        }
    }

    /// Records up to `next` (exclusive), the latest with log time `log_time`, were admitted at
    /// `t`.
    pub fn admitted(&mut self, t: Millis, next: i64, log_time: Millis) {
        match self.entries.back_mut() {
            Some(last) if last.0 == t => (last.1, last.2) = (next, log_time),
            _ => self.entries.push_back((t, next, log_time)),
        }
    }

    /// (next offset, log time) after everything admitted at or before `t`.
    pub fn at(&self, t: Millis) -> (i64, Millis) {
        self.entries
            .iter()
            .take_while(|a| a.0 <= t)
            .last()
            .map_or(self.base, |a| (a.1, a.2))
    }

    /// Lets go of what was admitted before `t`; returns the next offset after it, if it moved.
    pub fn durable(&mut self, t: Millis) -> Option<i64> {
        let mut next = None;
        while self.entries.front().is_some_and(|a| a.0 < t) {
            let a = self.entries.pop_front().expect("checked");
            self.base = (a.1, a.2);
            next = Some(a.1);
        }
        next
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
    /// Appends at most `max` records to `out`; they will be admitted at pipeline time `t`.
    fn poll(&mut self, t: Millis, max: usize, out: &mut Vec<RawRecord>) -> Polled;

    /// Whether every record the source held when the pipeline started has been polled.
    fn caught_up(&self) -> bool {
        true
    }

    /// The latest catch-up request (`Progress::ask_catch_up`) for which this source has
    /// delivered everything up to the log's end as of the request. A source that is no log
    /// (or has nothing more to read) answers each at once.
    fn caught_up_to(&self, asked: u64) -> u64 {
        asked
    }

    /// The least log time this source may still deliver (the least, over its partitions, of
    /// the last log time delivered); `Millis::MAX` if it has no partition.
    fn log_frontier(&self) -> Millis;

    /// Where each of its partitions would resume after everything polled at times at or
    /// before `t` (asked before [`Source::durable`] passes `t`). Empty for a source that cannot
    /// be read again from a position.
    fn positions_at(&self, _t: Millis) -> Vec<Resume> {
        Vec::new()
    }

    /// Everything that records polled at times before `t` produced is durable: their
    /// positions may be acknowledged (stored Kafka offsets).
    fn durable(&mut self, _t: Millis) {}

    /// The pipeline stops: acknowledge what is durable for good (a synchronous commit).
    fn close(&mut self) {}
}

/// What [`admit`] checks a record against.
#[derive(Clone, Copy, Debug)]
pub struct Rules {
    /// A `counted` event whose `ts` is more than this before its log time is too old, ms.
    pub retention_ms: Millis,
    /// An event whose `ts` is more than this ahead of its record's own timestamp (and log
    /// time) is out of range, ms.
    pub max_skew_ms: Millis,
}

/// Decodes and validates a record. A `counted` event whose `ts` is more than `retention` before
/// the record's log time is rejected: the pipeline no longer keeps the movement detail needed
/// to apply it exactly. An event whose `ts` is more than `max_skew` ahead of both its record's
/// own timestamp and its log time is rejected (`timestamp_out_of_range`): a count dated next
/// year would otherwise freeze its location's stock until then. (Whether a reservation id
/// belongs to another SKU is decided in the dataflow, by the id's owner: `dataflow::ids`.)
pub fn admit(rec: &RawRecord, rules: &Rules) -> Result<Record, Rejection> {
    let ev = match rec.stream {
        Some(stream) => decode_from(&rec.value, stream)?,
        None => decode(&rec.value)?,
    };
    let lt = rec.log_time;
    let retention = rules.retention_ms;
    if let Some(stamp) = rec.stamp {
        let bound = stamp.max(lt).saturating_add(rules.max_skew_ms);
        if ev.ts > bound {
            return Err(Rejection::new(
                RejectReason::TimestampOutOfRange,
                format!(
                    "`ts` {} is more than pipeline.max_clock_skew ({} ms) ahead of the record's timestamp {stamp}",
                    ev.ts, rules.max_skew_ms
                ),
            ));
        }
    }
    if matches!(ev.kind, EventKind::Counted { .. }) && ev.ts.saturating_add(retention) < lt {
        return Err(Rejection::new(
            RejectReason::CountTooOld,
            format!(
                "`counted` at ts {} is more than the retention ({retention} ms) before its log time {lt}",
                ev.ts
            ),
        ));
    }
    Ok(Record {
        log_time: lt,
        event: ev,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(retention_ms: Millis) -> Rules {
        Rules {
            retention_ms,
            max_skew_ms: 100,
        }
    }

    #[test]
    fn a_ts_far_ahead_of_its_record_is_out_of_range() {
        let count =
            r#"{"event_id":"c","type":"counted","sku":"A","ts":1200,"location":"L","qty":1}"#;
        let mut r = record(count, 1000);
        r.stamp = Some(1100);
        assert!(admit(&r, &rules(500)).is_ok(), "within the skew");
        r.stamp = Some(1099);
        let e = admit(&r, &rules(500)).unwrap_err();
        assert_eq!(e.reason, RejectReason::TimestampOutOfRange);
        r.log_time = 1100; // a log time ahead of the stamp counts too
        assert!(admit(&r, &rules(500)).is_ok());
        r.stamp = None; // a file's records have no stamp of their own: ts is their log time
        r.log_time = 0;
        assert!(admit(&r, &rules(500)).is_ok());
    }

    fn record(json: &str, log_time: Millis) -> RawRecord {
        let mut r = RawRecord::new(None, json.as_bytes().to_vec(), Position::new("t", 0, 0));
        r.log_time = log_time;
        r
    }

    #[test]
    fn a_count_is_too_old_by_its_log_time_not_the_clock() {
        let count =
            r#"{"event_id":"c","type":"counted","sku":"A","ts":1000,"location":"L","qty":1}"#;
        assert!(admit(&record(count, 1500), &rules(500)).is_ok());
        let too_old = admit(&record(count, 1501), &rules(500)).unwrap_err();
        assert_eq!(too_old.reason, RejectReason::CountTooOld);
    }
}
