//! The loop every timely worker runs (differential's input idiom: send at the input's time,
//! advance to the clock, step until the probe catches up).

use crate::{admit, Polled, RawRecord, Source};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use stockflow_dataflow::clock::{tick_floor, Clock};
use stockflow_dataflow::Engine;
use stockflow_sinks::dead_letter::{DeadLetter, DeadLetterSender};
use stockflow_types::event::{RejectReason, Stream};
use timely::worker::Worker;

/// Knobs of the ingest loop.
#[derive(Clone, Debug)]
pub struct WorkerOptions {
    /// Pipeline tick, ms.
    pub tick_ms: u64,
    /// Retention, ms (stale counts are rejected against it).
    pub retention_ms: u64,
    /// Records taken from a source per poll.
    pub max_batch: usize,
    /// Stop reading while the dataflow is more than this far behind the clock, ms.
    pub max_lag_ms: u64,
    /// How long an idle worker parks.
    pub park: Duration,
}

impl WorkerOptions {
    /// Defaults for a tick and a retention.
    pub fn new(tick_ms: u64, retention_ms: u64) -> Self {
        WorkerOptions {
            tick_ms,
            retention_ms,
            max_batch: 4096,
            max_lag_ms: 1000,
            park: Duration::from_millis(1),
        }
    }
}

/// Runs until `shutdown` is set: polls `sources`, admits their records at the pipeline clock's
/// time, sends rejections to `dead_letters`, and steps the dataflow.
pub fn run_worker(
    worker: &mut Worker,
    engine: &mut Engine,
    mut sources: Vec<Box<dyn Source>>,
    clock: &dyn Clock,
    dead_letters: &DeadLetterSender,
    shutdown: &AtomicBool,
    opts: &WorkerOptions,
) {
    let mut batch: Vec<RawRecord> = Vec::with_capacity(opts.max_batch);
    let mut reported_duplicates = 0;
    let mut ingested = [0u64; 2];
    let mut rejected = [0u64; RejectReason::ALL.len()];
    let mut had_sources = !sources.is_empty();
    while !shutdown.load(Ordering::Relaxed) {
        engine.advance_to(tick_floor(clock.now_ms(), opts.tick_ms));
        let t = engine.time();
        let mut busy = false;
        // Backpressure: while the dataflow lags, leave records in the source (Kafka, the
        // file's bounded channel) rather than buffering them in memory here.
        if engine.pending(t.saturating_sub(opts.max_lag_ms)) {
            busy = true;
        } else {
            sources.retain_mut(|s| match s.poll(opts.max_batch, &mut batch) {
                Polled::Records => {
                    busy = true;
                    true
                }
                Polled::Idle => true,
                Polled::Done => false,
            });
            for rec in batch.drain(..) {
                match admit(&rec, t, opts.retention_ms) {
                    Ok(ev) => {
                        ingested[usize::from(ev.kind.stream() == Stream::Orders)] += 1;
                        engine.send(ev);
                    }
                    Err(rej) => {
                        let i = RejectReason::ALL
                            .iter()
                            .position(|r| *r == rej.reason)
                            .expect("listed");
                        rejected[i] += 1;
                        dead_letters.send(DeadLetter {
                            reason: rej.reason.code(),
                            detail: rej.detail,
                            source: rec.position.source,
                            partition: rec.position.partition,
                            offset: rec.position.offset,
                            key: rec.key,
                            value: rec.value,
                        });
                    }
                }
            }
        }
        if had_sources && sources.is_empty() {
            tracing::info!(
                worker = worker.index(),
                "all sources of this worker are exhausted; still serving"
            );
            had_sources = false;
        }
        report(&mut ingested, &mut rejected);
        let duplicates = engine.stats().duplicates;
        if duplicates > reported_duplicates {
            metrics::counter!("stockflow_events_duplicate_total")
                .increment(duplicates - reported_duplicates);
            reported_duplicates = duplicates;
        }
        if busy {
            worker.step();
        } else {
            worker.step_or_park(Some(opts.park));
        }
    }
}

fn report(ingested: &mut [u64; 2], rejected: &mut [u64]) {
    for (stream, n) in [Stream::Inventory, Stream::Orders]
        .into_iter()
        .zip(ingested.iter_mut())
    {
        if *n > 0 {
            metrics::counter!("stockflow_events_ingested_total", "stream" => stream.as_str())
                .increment(*n);
            *n = 0;
        }
    }
    for (reason, n) in RejectReason::ALL.into_iter().zip(rejected.iter_mut()) {
        if *n > 0 {
            metrics::counter!("stockflow_events_rejected_total", "reason" => reason.code())
                .increment(*n);
            *n = 0;
        }
    }
}
