//! The loop every timely worker runs, which ties the sources (`ingest`), the dataflow and the
//! sinks together (differential's input idiom: send at the input's time, advance to the clock,
//! step until the probe catches up), with the log frontier announced to the dataflow, durability
//! agreed over the cluster and the checkpoint parts handed to the writer.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use stockflow_dataflow::clock::{tick_floor, Clock};
use stockflow_dataflow::ids::Origin;
use stockflow_dataflow::views::ViewStore;
use stockflow_dataflow::Engine;
use stockflow_ingest::{admit, Polled, RawRecord, Rules, Source};
use stockflow_sinks::checkpoint::{PartSender, WorkerPart};
use stockflow_sinks::dead_letter::{DeadLetter, DeadLetters};
use stockflow_types::admissions::Admissions;
use stockflow_types::event::{RejectReason, Stream};
use stockflow_types::progress::{Progress, NOT_YET};
use stockflow_types::resume::Resume;
use stockflow_types::Millis;
use timely::worker::Worker;

/// Knobs of the ingest loop.
#[derive(Clone, Debug)]
pub struct WorkerOptions {
    /// Pipeline tick, ms.
    pub tick_ms: u64,
    /// What admission checks records against (stale counts, business times out of range).
    pub rules: Rules,
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
    /// How often worker 0 asks for a checkpoint (when there is a writer).
    pub checkpoint_every: Duration,
    /// The configured windows' names, for the late-event metric.
    pub window_names: Vec<String>,
}

impl WorkerOptions {
    /// Defaults for a tick and admission rules.
    pub fn new(tick_ms: u64, rules: Rules) -> Self {
        WorkerOptions {
            tick_ms,
            rules,
            max_batch: 4096,
            max_lag_ms: 1000,
            max_sink_buffered: usize::MAX,
            park: Duration::from_millis(1),
            durable_every: Duration::from_millis(50),
            drain_timeout: Duration::from_secs(10),
            checkpoint_every: Duration::from_secs(30),
            window_names: Vec::new(),
        }
    }
}

/// The outputs a worker feeds besides the dataflow, and what it tells the rest of the process.
pub struct WorkerIo<'a> {
    /// Where rejected records go.
    pub dead_letters: &'a dyn DeadLetters,
    /// Shared progress: caught-up times, durability, sink fill.
    pub progress: &'a Progress,
    /// The views (`as_of`: how far every local worker has completed).
    pub store: &'a ViewStore,
    /// Which pipeline time each offset was admitted at (read-your-writes); `None` without a
    /// Kafka source (nothing to ask for).
    pub admissions: Option<&'a Admissions>,
    /// Where checkpoint parts go, if checkpoints are on.
    pub checkpoints: Option<&'a PartSender>,
    /// The time of the checkpoint worker 0 asked for at shutdown (`NOT_YET` before).
    pub final_checkpoint: &'a AtomicU64,
    /// Set when the process stops.
    pub shutdown: &'a AtomicBool,
}

/// A source and whether it has ended (an ended source still has a log frontier and positions).
struct Input {
    source: Box<dyn Source>,
    done: bool,
}

/// Runs until `io.shutdown` is set: polls `sources`, admits their records, sends rejections to
/// the dead letters, announces the log frontier, steps the dataflow, tells the sources which of
/// their records are durable, and hands checkpoint parts to the writer. At shutdown, worker 0
/// asks for a last checkpoint; every worker waits (up to `drain_timeout`) until what it read is
/// durable and its part is handed over, then closes its sources (a final offset commit).
pub fn run_worker(
    worker: &mut Worker,
    engine: &mut Engine,
    sources: Vec<Box<dyn Source>>,
    clock: &dyn Clock,
    io: &WorkerIo<'_>,
    opts: &WorkerOptions,
) {
    let mut inputs: Vec<Input> = sources
        .into_iter()
        .map(|source| Input {
            source,
            done: false,
        })
        .collect();
    let mut batch: Vec<RawRecord> = Vec::with_capacity(opts.max_batch);
    let mut counters = Counters::new(&opts.window_names);
    let mut had_sources = !inputs.is_empty();
    let mut caught_up = false;
    let mut catch_up_reported = 0;
    let mut durability = Durability::default();
    let mut next_durable = Instant::now();
    let mut next_checkpoint = Instant::now() + opts.checkpoint_every;
    let mut parts = Parts::default();
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
            for input in inputs.iter_mut().filter(|i| !i.done) {
                match input.source.poll(t, max, &mut batch) {
                    Polled::Records => busy = true,
                    Polled::Idle => {}
                    Polled::Done => input.done = true,
                }
            }
            if io.progress.has_sink() {
                durability.admitted(t, batch.len());
            }
            if let Some(admissions) = io.admissions {
                note_admitted(admissions, &batch, t, io.store.as_of());
            }
            for rec in batch.drain(..) {
                admit_one(engine, rec, io, opts, &mut counters);
            }
        }
        engine.advance_log(log_frontier(&inputs));
        if !caught_up && inputs.iter().all(|i| i.source.caught_up()) {
            // Everything the sources held at start is admitted at or before `t`.
            io.progress.set_caught_up(worker.index(), t);
            caught_up = true;
        }
        let asked = io.progress.catch_up_asked();
        if asked > catch_up_reported {
            let answered = inputs
                .iter()
                .map(|i| i.source.caught_up_to(asked))
                .min()
                .unwrap_or(asked);
            if answered > catch_up_reported {
                // Everything up to the log's end as of that request is admitted at `t`.
                io.progress.set_caught_up_to(worker.index(), answered, t);
                catch_up_reported = answered;
            }
        }
        if had_sources && inputs.iter().all(|i| i.done) {
            tracing::info!(
                worker = worker.index(),
                "all sources of this worker are exhausted; still serving"
            );
            had_sources = false;
        }
        if io.checkpoints.is_some()
            && worker.index() == 0
            && Instant::now() >= next_checkpoint
            && !engine.writing_checkpoint()
        {
            engine.request_checkpoint();
            next_checkpoint = Instant::now() + opts.checkpoint_every;
        }
        if Instant::now() >= next_durable {
            durability.hand_over(t, engine, io, worker.index(), &mut inputs);
            next_durable = Instant::now() + opts.durable_every;
        }
        counters.report(engine);
        if busy || engine.writing_checkpoint() {
            worker.step();
        } else {
            worker.step_or_park(Some(opts.park));
        }
        reject_mismatches(engine, io, &mut counters);
        parts.collect(engine, &inputs, worker.index(), io);
    }
    // A last checkpoint: asked for by the first worker of each process (in a cluster every
    // process stops together, and each waits for the one it asked for; all of them are taken
    // by every worker, at one time each).
    if io.checkpoints.is_some() && worker.index().is_multiple_of(io.store.local_workers()) {
        let at = engine.request_checkpoint();
        io.final_checkpoint.store(at, Ordering::Release);
    }
    drain(
        worker,
        engine,
        &mut inputs,
        clock,
        io,
        opts,
        &mut durability,
        &mut parts,
        &mut counters,
    );
    for input in &mut inputs {
        input.source.close();
    }
}

/// Tells `admissions` up to which offset each partition of `batch` is admitted at `t`: once
/// per run of records from one partition (a source's poll delivers them together).
fn note_admitted(admissions: &Admissions, batch: &[RawRecord], t: Millis, completed: Millis) {
    let mut run: Option<(&str, i32, i64)> = None;
    for rec in batch {
        let p = &rec.position;
        match &mut run {
            Some((source, partition, next)) if *source == p.source && *partition == p.partition => {
                *next = (*next).max(p.offset + 1);
            }
            _ => {
                if let Some((source, partition, next)) = run {
                    admissions.note(source, partition, next, t, completed);
                }
                run = Some((&p.source, p.partition, p.offset + 1));
            }
        }
    }
    if let Some((source, partition, next)) = run {
        admissions.note(source, partition, next, t, completed);
    }
}

fn log_frontier(inputs: &[Input]) -> Millis {
    inputs
        .iter()
        .map(|i| i.source.log_frontier())
        .min()
        .unwrap_or(Millis::MAX)
}

fn admit_one(
    engine: &mut Engine,
    rec: RawRecord,
    io: &WorkerIo<'_>,
    opts: &WorkerOptions,
    counters: &mut Counters,
) {
    let admitted = admit(&rec, &opts.rules);
    let origin = Origin {
        source: rec.position.source,
        partition: rec.position.partition,
        offset: rec.position.offset,
        key: rec.key,
        value: rec.value,
        dead_lettered: rec.dead_lettered,
    };
    match admitted {
        Ok(record) => {
            counters.ingested[usize::from(record.event.kind.stream() == Stream::Orders)] += 1;
            engine.send_from(record, origin);
        }
        Err(rej) => reject(rej.reason, rej.detail, origin, io, counters),
    }
}

/// Counts a rejected record and sends it to the dead letters (unless an earlier run did).
fn reject(
    reason: RejectReason,
    detail: String,
    origin: Origin,
    io: &WorkerIo<'_>,
    counters: &mut Counters,
) {
    let i = RejectReason::ALL
        .iter()
        .position(|r| *r == reason)
        .expect("listed");
    counters.rejected[i] += 1;
    if origin.dead_lettered {
        return; // an earlier run sent it, durably
    }
    io.dead_letters.send(DeadLetter {
        reason: reason.code(),
        detail,
        source: origin.source,
        partition: origin.partition,
        offset: origin.offset,
        key: origin.key,
        value: origin.value,
    });
}

/// Sends the records the id owners on this worker rejected to the dead letters: right after a
/// step, before durability looks at the frontier.
fn reject_mismatches(engine: &mut Engine, io: &WorkerIo<'_>, counters: &mut Counters) {
    for r in engine.take_rejected() {
        let ev = &r.record.event;
        let detail = format!(
            "`reservation_id` {:?} belongs to SKU {:?}, not {:?}",
            ev.kind.reservation_id().unwrap_or_default(),
            r.owner,
            ev.sku
        );
        reject(
            RejectReason::ReservationSkuMismatch,
            detail,
            r.origin,
            io,
            counters,
        );
    }
}

/// Checkpoint parts on their way from the ledger to the writer.
#[derive(Default)]
struct Parts {
    /// Where the sources stood at each checkpoint begun.
    positions: BTreeMap<Millis, Vec<Resume>>,
    /// The latest checkpoint whose part was handed over.
    sent: Option<Millis>,
}

impl Parts {
    /// Right after a step: notes the sources' positions at every checkpoint the ledger began
    /// (before durability lets the sources forget them), and hands over finished parts.
    fn collect(&mut self, engine: &mut Engine, inputs: &[Input], worker: usize, io: &WorkerIo<'_>) {
        for at in engine.take_begun() {
            let positions = inputs
                .iter()
                .flat_map(|i| i.source.positions_at(at))
                .collect();
            self.positions.insert(at, positions);
        }
        while let Some(part) = engine.take_part() {
            let positions = self.positions.remove(&part.at);
            self.positions = self.positions.split_off(&part.at);
            let Some(positions) = positions else {
                // Without its positions a restart would read its records twice: never publish it.
                tracing::error!(
                    at = part.at,
                    "a checkpoint part without source positions is dropped"
                );
                continue;
            };
            if let Some(sender) = io.checkpoints {
                sender.send(WorkerPart {
                    at: part.at,
                    worker,
                    chunks: part.chunks,
                    positions,
                });
            }
            self.sent = Some(part.at);
        }
    }
}

/// Lets what was admitted become durable and the last checkpoint's part be handed over, for at
/// most `drain_timeout`.
#[allow(clippy::too_many_arguments)]
fn drain(
    worker: &mut Worker,
    engine: &mut Engine,
    inputs: &mut [Input],
    clock: &dyn Clock,
    io: &WorkerIo<'_>,
    opts: &WorkerOptions,
    durability: &mut Durability,
    parts: &mut Parts,
    counters: &mut Counters,
) {
    let last = engine.time();
    let deadline = Instant::now() + opts.drain_timeout;
    loop {
        engine.advance_to(tick_floor(clock.now_ms(), opts.tick_ms));
        let through = durability.hand_over(engine.time(), engine, io, worker.index(), inputs);
        let checkpointed = io.checkpoints.is_none() || {
            let at = io.final_checkpoint.load(Ordering::Acquire);
            at != NOT_YET && parts.sent.is_some_and(|sent| sent >= at)
        };
        if through > last && checkpointed {
            return;
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                worker = worker.index(),
                durable_through = through,
                read_through = last,
                checkpointed,
                "stopping before everything read was durable and checkpointed; the next start reads it again"
            );
            return;
        }
        worker.step_or_park(Some(opts.park));
        reject_mismatches(engine, io, counters);
        counters.report(engine);
        parts.collect(engine, inputs, worker.index(), io);
    }
}

/// Which admission times are durable: absorbed by the dataflow, written by the sink, and their
/// dead letters settled.
#[derive(Default)]
struct Durability {
    /// (a time, dead letters sent once every dead letter of the records admitted before it
    /// was sent), oldest first.
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

    /// Hands the durable time to the sources and to `progress`, and returns it.
    fn hand_over(
        &mut self,
        t: Millis,
        engine: &mut Engine,
        io: &WorkerIo<'_>,
        worker: usize,
        inputs: &mut [Input],
    ) -> Millis {
        // Every dead letter of a record admitted before the mark is sent by now: those of
        // admission (records admitted at `t` or before), and those the id owners decided in the
        // dataflow (taken after each step, so for every time the frontier has passed).
        let frontier = engine.frontier();
        self.marks
            .push_back(((t + 1).min(frontier), io.dead_letters.sent()));
        let settled = io.dead_letters.settled();
        while let Some(&(mark, sent)) = self.marks.front() {
            if sent > settled {
                break;
            }
            self.dead_letters_through = self.dead_letters_through.max(mark);
            self.marks.pop_front();
        }
        let mut local = frontier.min(self.dead_letters_through);
        if io.progress.has_sink() {
            local = local.min(io.progress.sink_durable());
        }
        // An offset may be stored only once every process has made its effects durable: the
        // record's changes land on the SKU's owner, which may be another process.
        engine.advance_durable(local);
        let through = engine.durable_frontier().min(local);
        for input in inputs.iter_mut() {
            input.source.durable(through);
        }
        io.progress.set_durable(worker, through);
        // Which checkpoint every process holds: the writers keep it (never pruned).
        let written = io.progress.checkpoint_written();
        if written > 0 {
            engine.advance_written(written);
        }
        if let Some(common) = engine.written_everywhere() {
            io.progress.set_checkpoint_common(common);
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

/// Counts since the last report to the metrics.
struct Counters {
    ingested: [u64; 2],
    rejected: [u64; RejectReason::ALL.len()],
    duplicates: u64,
    late: Vec<u64>,
    names: Vec<String>,
}

impl Counters {
    fn new(windows: &[String]) -> Self {
        Counters {
            ingested: [0; 2],
            rejected: [0; RejectReason::ALL.len()],
            duplicates: 0,
            late: vec![0; windows.len()],
            names: windows.to_vec(),
        }
    }

    fn report(&mut self, engine: &Engine) {
        for (stream, n) in [Stream::Inventory, Stream::Orders]
            .into_iter()
            .zip(self.ingested.iter_mut())
        {
            if *n > 0 {
                metrics::counter!("stockflow_events_ingested_total", "stream" => stream.as_str())
                    .increment(*n);
                *n = 0;
            }
        }
        for (reason, n) in RejectReason::ALL.into_iter().zip(self.rejected.iter_mut()) {
            if *n > 0 {
                metrics::counter!("stockflow_events_rejected_total", "reason" => reason.code())
                    .increment(*n);
                *n = 0;
            }
        }
        metrics::gauge!("stockflow_log_frontier_seconds")
            .set(engine.log_frontier() as f64 / 1000.0);
        let stats = engine.stats();
        if stats.duplicates > self.duplicates {
            metrics::counter!("stockflow_events_duplicate_total")
                .increment(stats.duplicates - self.duplicates);
            self.duplicates = stats.duplicates;
        }
        for (i, n) in stats.late_window_events.iter().enumerate() {
            let reported = self.late.get(i).copied().unwrap_or(0);
            if *n > reported {
                let window = self.names.get(i).cloned().unwrap_or_else(|| i.to_string());
                metrics::counter!("stockflow_window_late_events_total", "window" => window)
                    .increment(n - reported);
                if let Some(l) = self.late.get_mut(i) {
                    *l = *n;
                }
            }
        }
    }
}
