//! What the parts of a running pipeline tell each other about progress, lock-free: how far the
//! sources have read, how far the sinks have made the results durable, whether the servers are
//! reachable. The ingest loop reads it to decide which Kafka offsets may be stored and whether to
//! slow down; `/readyz` reads it to decide readiness.

use crate::Millis;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

/// Not yet: a time no pipeline reaches.
pub const NOT_YET: Millis = Millis::MAX;

/// Progress shared by the workers, the sinks and HTTP of one process.
#[derive(Debug)]
pub struct Progress {
    caught_up: Vec<AtomicU64>,
    durable: Vec<AtomicU64>,
    sink_durable: AtomicU64,
    sink_absorbed: AtomicU64,
    sink_buffered: AtomicUsize,
    kafka: Option<AtomicBool>,
    clickhouse: Option<AtomicBool>,
    /// Why the latest checkpoint write failed, while it is the latest outcome.
    checkpoint_problem: Mutex<Option<String>>,
    /// The newest checkpoint this process has written (0: none).
    checkpoint_written: AtomicU64,
    /// Catch-up requests asked (a count): each asks every worker to read to the log's end as
    /// of the request (the sink asks before it takes over writing from another replica).
    catch_up_asked: AtomicU64,
    /// Per local worker: (the latest request answered, the pipeline time by which it had
    /// admitted everything up to that request's end).
    caught_up_to: Mutex<Vec<(u64, Millis)>>,
    /// The newest checkpoint time every process of the cluster has written one at or after
    /// (0: not known yet): no process removes its newest checkpoint at or before it.
    checkpoint_common: AtomicU64,
    /// Why sources stopped reading (records deleted before they were read), one per partition.
    source_problems: Mutex<Vec<String>>,
    /// Per local worker: which of its partitions holds the log frontier back, and by how much.
    log_notes: Mutex<Vec<Option<String>>>,
    /// Why the dataflow stopped (a worker panicked, e.g. because a cluster peer was lost);
    /// `is_stopped` says whether, without a lock (every lookup asks).
    stopped: Mutex<Option<String>>,
    is_stopped: AtomicBool,
}

impl Progress {
    /// For `workers` local workers; `kafka` and `clickhouse` say which servers are in use (their
    /// health starts unknown, i.e. not reachable). With no sink, results are durable when the
    /// dataflow has absorbed them.
    pub fn new(workers: usize, kafka: bool, clickhouse: bool) -> Self {
        Progress {
            caught_up: (0..workers).map(|_| AtomicU64::new(NOT_YET)).collect(),
            durable: (0..workers).map(|_| AtomicU64::new(0)).collect(),
            sink_durable: AtomicU64::new(0),
            sink_absorbed: AtomicU64::new(0),
            sink_buffered: AtomicUsize::new(0),
            kafka: kafka.then(|| AtomicBool::new(false)),
            clickhouse: clickhouse.then(|| AtomicBool::new(false)),
            checkpoint_problem: Mutex::new(None),
            checkpoint_written: AtomicU64::new(0),
            catch_up_asked: AtomicU64::new(0),
            caught_up_to: Mutex::new(vec![(0, 0); workers.max(1)]),
            checkpoint_common: AtomicU64::new(0),
            source_problems: Mutex::new(Vec::new()),
            log_notes: Mutex::new(vec![None; workers.max(1)]),
            stopped: Mutex::new(None),
            is_stopped: AtomicBool::new(false),
        }
    }

    /// Worker `w` (modulo the local workers): everything its sources admitted at pipeline times
    /// before `t` is durable (the dataflow, the sink and the dead letters hold it).
    pub fn set_durable(&self, w: usize, t: Millis) {
        let n = self.durable.len();
        self.durable[w % n].fetch_max(t, Ordering::AcqRel);
    }

    /// Everything admitted by any local worker at pipeline times before this is durable.
    pub fn durable(&self) -> Millis {
        self.durable
            .iter()
            .map(|d| d.load(Ordering::Acquire))
            .min()
            .unwrap_or(0)
    }

    /// The outcome of the latest checkpoint write: `None` when it succeeded.
    pub fn set_checkpoint_problem(&self, problem: Option<String>) {
        *self
            .checkpoint_problem
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = problem;
    }

    /// Asks every worker to read to the log's end as of now; returns the request's number.
    pub fn ask_catch_up(&self) -> u64 {
        self.catch_up_asked.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// The latest catch-up request (0: none).
    pub fn catch_up_asked(&self) -> u64 {
        self.catch_up_asked.load(Ordering::Acquire)
    }

    /// Worker `w` had admitted, by pipeline time `t`, everything up to the log's end as of
    /// request `request`.
    pub fn set_caught_up_to(&self, w: usize, request: u64, t: Millis) {
        let mut all = self.caught_up_to.lock().unwrap_or_else(|e| e.into_inner());
        let n = all.len();
        if request > all[w % n].0 {
            all[w % n] = (request, t);
        }
    }

    /// The pipeline time by which every local worker had admitted everything up to the log's
    /// end as of request `request`, once each has.
    pub fn caught_up_to(&self, request: u64) -> Option<Millis> {
        let all = self.caught_up_to.lock().unwrap_or_else(|e| e.into_inner());
        all.iter()
            .all(|(r, _)| *r >= request)
            .then(|| all.iter().map(|(_, t)| *t).max().unwrap_or(0))
    }

    /// This process wrote the checkpoint of time `at`.
    pub fn set_checkpoint_written(&self, at: Millis) {
        self.checkpoint_written.fetch_max(at, Ordering::AcqRel);
    }

    /// The newest checkpoint this process has written (0: none).
    pub fn checkpoint_written(&self) -> Millis {
        self.checkpoint_written.load(Ordering::Acquire)
    }

    /// Every process of the cluster has written a checkpoint at or after `at`.
    pub fn set_checkpoint_common(&self, at: Millis) {
        self.checkpoint_common.fetch_max(at, Ordering::AcqRel);
    }

    /// The newest time every process of the cluster has written a checkpoint at or after (0:
    /// not known yet).
    pub fn checkpoint_common(&self) -> Millis {
        self.checkpoint_common.load(Ordering::Acquire)
    }

    /// Why the latest checkpoint write failed, if it did.
    pub fn checkpoint_problem(&self) -> Option<String> {
        self.checkpoint_problem
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The dataflow stopped for good (a worker ended without being asked to): why. The first
    /// reason is kept.
    pub fn set_stopped(&self, why: String) {
        self.stopped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(why);
        self.is_stopped.store(true, Ordering::Release);
    }

    /// Why the dataflow stopped, if it did: the views no longer move.
    pub fn stopped(&self) -> Option<String> {
        if !self.is_stopped.load(Ordering::Acquire) {
            return None;
        }
        self.stopped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A source stopped reading a partition, for good (until a restart): why.
    pub fn add_source_problem(&self, problem: String) {
        self.source_problems
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(problem);
    }

    /// Why sources stopped reading, if any did.
    pub fn source_problem(&self) -> Option<String> {
        let problems = self
            .source_problems
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        (!problems.is_empty()).then(|| problems.join("; "))
    }

    /// Worker `w` (modulo the local workers): which of its partitions lags far behind the
    /// present in log time and so holds back everything that forgets (`None`: none does).
    pub fn set_log_note(&self, w: usize, note: Option<String>) {
        let mut notes = self.log_notes.lock().unwrap_or_else(|e| e.into_inner());
        let n = notes.len();
        notes[w % n] = note;
    }

    /// What holds the log frontier back, if anything does (for `/readyz`).
    pub fn log_note(&self) -> Option<String> {
        let notes = self.log_notes.lock().unwrap_or_else(|e| e.into_inner());
        let text: Vec<&str> = notes.iter().flatten().map(String::as_str).collect();
        (!text.is_empty()).then(|| text.join("; "))
    }

    /// Worker `w` (its index modulo the local workers) has admitted, at pipeline times at or
    /// before `t`, every record its sources held when the process started (the end offsets as
    /// of the start).
    pub fn set_caught_up(&self, w: usize, t: Millis) {
        let n = self.caught_up.len();
        self.caught_up[w % n].store(t, Ordering::Release);
    }

    /// The pipeline time at or before which every worker has admitted its start backlog, or
    /// [`NOT_YET`].
    pub fn caught_up(&self) -> Millis {
        self.caught_up
            .iter()
            .map(|c| c.load(Ordering::Acquire))
            .max()
            .unwrap_or(0)
    }

    /// Whether a sink takes part in durability.
    pub fn has_sink(&self) -> bool {
        self.clickhouse.is_some()
    }

    /// The sink has durably written every change at times before `t`.
    pub fn set_sink_durable(&self, t: Millis) {
        self.sink_durable.fetch_max(t, Ordering::AcqRel);
    }

    /// Every change at times before this is durable in the sink.
    pub fn sink_durable(&self) -> Millis {
        self.sink_durable.load(Ordering::Acquire)
    }

    /// The sink holds every change at times before `t` in its own bounded form (one pending
    /// row per key), written or not: records admitted before it no longer weigh on memory.
    pub fn set_sink_absorbed(&self, t: Millis) {
        self.sink_absorbed.fetch_max(t, Ordering::AcqRel);
    }

    /// See [`Progress::set_sink_absorbed`].
    pub fn sink_absorbed(&self) -> Millis {
        self.sink_absorbed.load(Ordering::Acquire)
    }

    /// What the sink holds in memory: changes not yet folded, plus pending rows (one per key).
    pub fn sink_buffered(&self) -> usize {
        self.sink_buffered.load(Ordering::Relaxed)
    }

    /// `n` more changes (or pending rows) wait in the sink.
    pub fn add_buffered(&self, n: usize) {
        self.sink_buffered.fetch_add(n, Ordering::Relaxed);
    }

    /// `n` changes (or pending rows) left the sink's buffer.
    pub fn remove_buffered(&self, n: usize) {
        self.sink_buffered.fetch_sub(n, Ordering::Relaxed);
    }

    /// Records the outcome of the latest contact with Kafka.
    pub fn set_kafka_ok(&self, ok: bool) {
        if let Some(k) = &self.kafka {
            k.store(ok, Ordering::Relaxed);
        }
    }

    /// Records the outcome of the latest contact with ClickHouse.
    pub fn set_clickhouse_ok(&self, ok: bool) {
        if let Some(c) = &self.clickhouse {
            c.store(ok, Ordering::Relaxed);
        }
    }

    /// `None` if Kafka is not used, else whether it was reachable at the latest contact.
    pub fn kafka_ok(&self) -> Option<bool> {
        self.kafka.as_ref().map(|k| k.load(Ordering::Relaxed))
    }

    /// `None` if ClickHouse is not used, else whether it was reachable at the latest contact.
    pub fn clickhouse_ok(&self) -> Option<bool> {
        self.clickhouse.as_ref().map(|c| c.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_catch_up_request_is_answered_once_every_worker_has() {
        let p = Progress::new(2, true, false);
        let r = p.ask_catch_up();
        assert_eq!(p.caught_up_to(r), None);
        p.set_caught_up_to(0, r, 30);
        assert_eq!(p.caught_up_to(r), None);
        p.set_caught_up_to(1, r, 20);
        assert_eq!(p.caught_up_to(r), Some(30));
        let r2 = p.ask_catch_up();
        assert_eq!(p.caught_up_to(r2), None, "a newer request waits again");
    }

    #[test]
    fn caught_up_waits_for_every_worker() {
        let p = Progress::new(2, true, false);
        assert_eq!(p.caught_up(), NOT_YET);
        p.set_caught_up(0, 10);
        assert_eq!(p.caught_up(), NOT_YET);
        p.set_caught_up(1, 7);
        assert_eq!(p.caught_up(), 10);
        assert_eq!(p.kafka_ok(), Some(false));
        assert_eq!(p.clickhouse_ok(), None);
        p.set_sink_durable(5);
        p.set_sink_durable(3);
        assert_eq!(p.sink_durable(), 5);
    }
}
