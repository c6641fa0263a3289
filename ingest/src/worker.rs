//! The loop every timely worker runs (differential's input idiom: send at the input's time,
//! advance to the clock, step until the probe catches up).

use crate::{admit, Polled, RawRecord, Source};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use stockflow_dataflow::clock::{tick_floor, Clock};
use stockflow_dataflow::Engine;
use stockflow_sinks::dead_letter::{DeadLetter, DeadLetters};
use stockflow_types::event::{RejectReason, Stream};
use stockflow_types::progress::Progress;
use stockflow_types::Millis;
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
    /// Stop reading while more changes than this wait for the sink.
    pub max_sink_buffered: usize,
    /// How long an idle worker parks.
    pub park: Duration,
    /// How often durable positions are handed to the sources.
    pub durable_every: Duration,
    /// At shutdown, how long to wait for what was read to become durable.
    pub drain_timeout: Duration,
}

impl WorkerOptions {
    /// Defaults for a tick and a retention.
    pub fn new(tick_ms: u64, retention_ms: u64) -> Self {
        WorkerOptions {
            tick_ms,
            retention_ms,
            max_batch: 4096,
            max_lag_ms: 1000,
            max_sink_buffered: usize::MAX,
            park: Duration::from_millis(1),
            durable_every: Duration::from_millis(50),
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// The outputs a worker feeds besides the dataflow, and what it tells the rest of the process.
pub struct WorkerIo<'a> {
    /// Where rejected records go.
    pub dead_letters: &'a dyn DeadLetters,
    /// Shared progress: caught-up times, sink durability and fill.
    pub progress: &'a Progress,
    /// Set when the process stops.
    pub shutdown: &'a AtomicBool,
}

/// Runs until `io.shutdown` is set: polls `sources`, admits their records at the pipeline
/// clock's time, sends rejections to the dead letters, steps the dataflow, and tells the sources
/// which of their records are durable. At shutdown, waits (up to `drain_timeout`) until what was
/// read is durable, then closes the sources (a final offset commit).
pub fn run_worker(
    worker: &mut Worker,
    engine: &mut Engine,
    mut sources: Vec<Box<dyn Source>>,
    clock: &dyn Clock,
    io: &WorkerIo<'_>,
    opts: &WorkerOptions,
) {
    let mut batch: Vec<RawRecord> = Vec::with_capacity(opts.max_batch);
    let mut reported_duplicates = 0;
    let mut ingested = [0u64; 2];
    let mut rejected = [0u64; RejectReason::ALL.len()];
    let mut had_sources = !sources.is_empty();
    let mut caught_up = false;
    let mut durability = Durability::default();
    let mut next_durable = Instant::now();
    while !io.shutdown.load(Ordering::Relaxed) {
        engine.advance_to(tick_floor(clock.now_ms(), opts.tick_ms));
        let t = engine.time();
        let mut busy = false;
        // Backpressure: while the dataflow lags or the sink is full, leave records in the
        // source (Kafka, the file's bounded channel) rather than buffering them in memory.
        if engine.pending(t.saturating_sub(opts.max_lag_ms)) {
            busy = true;
        } else if let Some(room) = opts
            .max_sink_buffered
            .checked_sub(io.progress.sink_buffered().max(durability.outstanding))
            .filter(|r| *r > 0)
        {
            // Records read but not yet durable count as well as changes waiting in the sink:
            // the sink sees a record's changes only after its time completes, and by then the
            // loop may have read many more. Take no more than there is room for.
            let max = opts.max_batch.min(room);
            sources.retain_mut(|s| match s.poll(t, max, &mut batch) {
                Polled::Records => {
                    busy = true;
                    true
                }
                Polled::Idle => true,
                Polled::Done => false,
            });
            if io.progress.has_sink() {
                durability.admitted(t, batch.len());
            }

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
                        if rec.dead_lettered {
                            continue; // an earlier run sent it, durably
                        }
                        io.dead_letters.send(DeadLetter {
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
        if !caught_up && sources.iter().all(|s| s.caught_up()) {
            // Everything the sources held at start is admitted at or before `t`.
            io.progress.set_caught_up(worker.index(), t);
            caught_up = true;
        }
        if had_sources && sources.is_empty() {
            tracing::info!(
                worker = worker.index(),
                "all sources of this worker are exhausted; still serving"
            );
            had_sources = false;
        }
        if Instant::now() >= next_durable {
            durability.hand_over(t, engine, io, &mut sources);
            next_durable = Instant::now() + opts.durable_every;
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
    drain(
        worker,
        engine,
        &mut sources,
        clock,
        io,
        opts,
        &mut durability,
    );
    for s in &mut sources {
        s.close();
    }
}

/// Lets what was admitted become durable, for at most `drain_timeout`.
fn drain(
    worker: &mut Worker,
    engine: &mut Engine,
    sources: &mut [Box<dyn Source>],
    clock: &dyn Clock,
    io: &WorkerIo<'_>,
    opts: &WorkerOptions,
    durability: &mut Durability,
) {
    let last = engine.time();
    let deadline = Instant::now() + opts.drain_timeout;
    loop {
        engine.advance_to(tick_floor(clock.now_ms(), opts.tick_ms));
        let through = durability.hand_over(engine.time(), engine, io, sources);
        if through > last {
            return;
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                worker = worker.index(),
                durable_through = through,
                read_through = last,
                "stopping before everything read was durable; the next start reads it again"
            );
            return;
        }
        worker.step_or_park(Some(opts.park));
    }
}

/// Which admission times are durable: absorbed by the dataflow, written by the sink, and their
/// dead letters settled.
#[derive(Default)]
struct Durability {
    /// (admission time, dead letters sent by the end of its batch), oldest first.
    marks: VecDeque<(Millis, u64)>,
    /// Dead letters of records admitted before this time are settled.
    dead_letters_through: Millis,
    /// (admission time, records) whose changes the sink has not yet absorbed, oldest first.
    unabsorbed: VecDeque<(Millis, usize)>,
    /// Their sum.
    outstanding: usize,
}

impl Durability {
    /// `n` records were admitted at `t`.
    fn admitted(&mut self, t: Millis, n: usize) {
        match self.unabsorbed.back_mut() {
            Some(last) if last.0 == t => last.1 += n,
            _ => self.unabsorbed.push_back((t, n)),
        }
        self.outstanding += n;
    }

    /// Hands the durable time to the sources and returns it.
    fn hand_over(
        &mut self,
        t: Millis,
        engine: &Engine,
        io: &WorkerIo<'_>,
        sources: &mut [Box<dyn Source>],
    ) -> Millis {
        self.marks.push_back((t, io.dead_letters.sent()));
        let settled = io.dead_letters.settled();
        while let Some(&(mark_t, sent)) = self.marks.front() {
            if sent > settled {
                break;
            }
            self.dead_letters_through = mark_t + 1;
            self.marks.pop_front();
        }
        let frontier = engine.frontier();
        let mut through = frontier.min(self.dead_letters_through);
        if io.progress.has_sink() {
            through = through.min(io.progress.sink_durable());
        }
        for s in sources.iter_mut() {
            s.durable(through);
        }
        // Records stop weighing on memory once the sink has folded their changes into its
        // pending rows (bounded by the keys), written or not: a replay then proceeds while the
        // sink holds its writes, and an outage still stops reading (the sink folds nothing
        // while it retries).
        let absorbed = frontier.min(io.progress.sink_absorbed());
        while let Some(&(at, n)) = self.unabsorbed.front() {
            if at >= absorbed {
                break;
            }
            self.outstanding -= n;
            self.unabsorbed.pop_front();
        }
        through
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
