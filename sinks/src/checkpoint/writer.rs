//! The thread that assembles the workers' parts into checkpoint files.

use super::file::{list, write_atomic, Fingerprint, Header};
use crossbeam_channel::{unbounded, Receiver, RecvTimeoutError, Sender};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use stockflow_types::config::CheckpointConfig;
use stockflow_types::progress::Progress;
use stockflow_types::resume::Resume;
use stockflow_types::Millis;

/// One worker's part of the checkpoint as of `at`.
#[derive(Debug)]
pub struct WorkerPart {
    /// The pipeline time it is as of.
    pub at: Millis,
    /// The local worker that wrote it.
    pub worker: usize,
    /// Its serialized state, in chunks.
    pub chunks: Vec<Vec<u8>>,
    /// Where its sources' partitions resume.
    pub positions: Vec<Resume>,
}

/// What a worker holds to hand its parts over: cheap to clone.
#[derive(Clone, Debug)]
pub struct PartSender(Sender<WorkerPart>);

impl PartSender {
    /// Hands a part over (never blocks).
    pub fn send(&self, part: WorkerPart) {
        // The writer lives until every sender is dropped.
        let _ = self.0.send(part);
    }
}

/// The writer thread.
pub struct CheckpointWriter {
    tx: Option<Sender<WorkerPart>>,
    thread: Option<JoinHandle<()>>,
}

impl CheckpointWriter {
    /// Starts the thread for `workers` local workers. A checkpoint is published once all its
    /// parts are in and `progress.durable()` has passed its time.
    pub fn start(
        cfg: &CheckpointConfig,
        workers: usize,
        fingerprint: Fingerprint,
        sink: Option<String>,
        progress: Arc<Progress>,
    ) -> Self {
        let (tx, rx) = unbounded();
        remove_temporaries(&cfg.dir);
        let state = Writer {
            sink,
            dir: cfg.dir.clone(),
            keep: cfg.keep,
            workers,
            fingerprint,
            progress,
            pending: BTreeMap::new(),
        };
        let thread = std::thread::Builder::new()
            .name("checkpoint-writer".into())
            .spawn(move || state.run(rx))
            .expect("spawning the checkpoint writer");
        CheckpointWriter {
            tx: Some(tx),
            thread: Some(thread),
        }
    }

    /// A sender for a worker.
    pub fn sender(&self) -> PartSender {
        PartSender(self.tx.clone().expect("until finish"))
    }

    /// Publishes what is complete and durable, then stops; waits at most `timeout`.
    pub fn finish(mut self, timeout: Duration) {
        self.tx.take();
        let Some(thread) = self.thread.take() else {
            return;
        };
        let deadline = Instant::now() + timeout;
        while !thread.is_finished() {
            if Instant::now() >= deadline {
                tracing::warn!("the last checkpoint was not written in time");
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = thread.join();
    }
}

/// Removes the temporary files of writes that a crash interrupted (they never take a
/// checkpoint's name, but they take its room).
fn remove_temporaries(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(".checkpoint-") && name.ends_with(".tmp") {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

struct Writer {
    sink: Option<String>,
    dir: PathBuf,
    keep: usize,
    workers: usize,
    fingerprint: Fingerprint,
    progress: Arc<Progress>,
    /// Parts by checkpoint time.
    pending: BTreeMap<Millis, Vec<Option<WorkerPart>>>,
}

impl Writer {
    fn run(mut self, rx: Receiver<WorkerPart>) {
        let mut open = true;
        loop {
            match rx.recv_timeout(Duration::from_millis(20)) {
                Ok(part) => {
                    let slot = self
                        .pending
                        .entry(part.at)
                        .or_insert_with(|| (0..self.workers).map(|_| None).collect());
                    let w = part.worker % self.workers;
                    slot[w] = Some(part);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => open = false,
            }
            // The newest complete checkpoint that is durable makes every older one useless.
            // (Not the newest complete one: while durability trails by more than an interval,
            // waiting for the newest would publish nothing at all.)
            let durable = self.progress.durable();
            let complete = |parts: &Vec<Option<WorkerPart>>| parts.iter().all(Option::is_some);
            let ready = self
                .pending
                .iter()
                .rev()
                .find(|(at, parts)| **at < durable && complete(parts))
                .map(|(at, _)| *at);
            if let Some(at) = ready {
                self.pending = self.pending.split_off(&at);
                let parts = self.pending.remove(&at).expect("ready");
                self.publish(
                    at,
                    parts.into_iter().map(|p| p.expect("complete")).collect(),
                );
            } else if !open {
                // Stopping: what is not durable by now will be read again at the next start.
                return;
            }
            // Bounded while durability stalls (a ClickHouse outage): of the complete ones
            // waiting, the oldest (the next to become durable) and the newest are kept.
            let waiting: Vec<Millis> = self
                .pending
                .iter()
                .filter(|(_, parts)| complete(parts))
                .map(|(at, _)| *at)
                .collect();
            if waiting.len() > 2 {
                for at in &waiting[1..waiting.len() - 1] {
                    self.pending.remove(at);
                }
            }
        }
    }

    fn publish(&mut self, at: Millis, parts: Vec<WorkerPart>) {
        let started = Instant::now();
        let mut positions: Vec<Resume> = parts.iter().flat_map(|p| p.positions.clone()).collect();
        positions.sort();
        let header = Header {
            at,
            written_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as Millis),
            positions,
            part_lengths: parts
                .iter()
                .map(|p| p.chunks.iter().map(|c| c.len() as u64).sum())
                .collect(),
            fingerprint: self.fingerprint.clone(),
            sink: self.sink.clone(),
        };
        let bytes: Vec<&[u8]> = parts
            .iter()
            .flat_map(|p| p.chunks.iter().map(Vec::as_slice))
            .collect();
        match write_atomic(&self.dir, &header, &bytes) {
            Ok((path, size)) => {
                metrics::histogram!("stockflow_checkpoint_write_seconds")
                    .record(started.elapsed().as_secs_f64());
                metrics::counter!("stockflow_checkpoints_written_total").increment(1);
                metrics::gauge!("stockflow_checkpoint_bytes").set(size as f64);
                metrics::gauge!("stockflow_checkpoint_time_seconds").set(at as f64 / 1000.0);
                self.progress.set_checkpoint_problem(None);
                tracing::info!(path = %path.display(), bytes = size, at, "checkpoint written");
                self.progress.set_checkpoint_written(at);
                self.prune();
            }
            Err(e) => {
                metrics::counter!("stockflow_checkpoint_failures_total").increment(1);
                let problem = format!(
                    "{e}: {}",
                    std::error::Error::source(&e).map_or(String::new(), |s| s.to_string())
                );
                tracing::warn!(error = %problem, at, "writing a checkpoint failed; retrying at the next interval");
                self.progress.set_checkpoint_problem(Some(problem));
            }
        }
    }

    /// Keeps the newest `keep` checkpoints, and (in a cluster) the newest at or before the time
    /// every process has written one at or after: a process whose writes fail for longer than
    /// `keep` intervals leaves the others holding a checkpoint it holds too (the restore agrees
    /// on the newest one every process holds).
    fn prune(&self) {
        let common = self.progress.checkpoint_common();
        match list(&self.dir) {
            Ok(all) => {
                let shared = all.iter().map(|(at, _)| *at).find(|at| *at <= common);
                for (at, path) in all.into_iter().skip(self.keep) {
                    if Some(at) == shared {
                        continue;
                    }
                    if let Err(e) = std::fs::remove_file(&path) {
                        tracing::warn!(path = %path.display(), error = %e, "removing an old checkpoint failed");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "listing checkpoints failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes checkpoints at `times` (one local worker, everything durable) with `keep` 1 and
    /// the cluster's common time `common`; returns the times left on disk.
    fn written(times: &[Millis], common: Millis) -> Vec<Millis> {
        let dir = std::env::temp_dir().join(format!(
            "stockflow-prune-{}-{common}-{}",
            std::process::id(),
            times.len()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let progress = Arc::new(Progress::new(1, false, false));
        progress.set_durable(0, Millis::MAX - 1);
        progress.set_checkpoint_common(common);
        let cfg = CheckpointConfig {
            enabled: true,
            dir: dir.clone(),
            interval: Duration::from_secs(1),
            keep: 1,
            allow_gap: false,
        };
        let fingerprint = Fingerprint {
            tick_ms: 1,
            windows: Vec::new(),
            horizons: (1, 1, 1),
        };
        let writer = CheckpointWriter::start(&cfg, 1, fingerprint, None, Arc::clone(&progress));
        for at in times {
            writer.sender().send(WorkerPart {
                at: *at,
                worker: 0,
                chunks: vec![vec![1, 2, 3]],
                positions: Vec::new(),
            });
            let deadline = Instant::now() + Duration::from_secs(10);
            while progress.checkpoint_written() < *at {
                assert!(Instant::now() < deadline, "checkpoint {at} never written");
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        writer.finish(Duration::from_secs(10));
        let left = list(&dir).unwrap().into_iter().map(|(at, _)| at).collect();
        let _ = std::fs::remove_dir_all(&dir);
        left
    }

    #[test]
    fn the_newest_checkpoint_every_process_holds_is_never_removed() {
        assert_eq!(written(&[10, 20, 30, 40], 0), vec![40], "keep 1");
        assert_eq!(
            written(&[10, 20, 30, 40], 25),
            vec![40, 20],
            "another process's newest is at 25: 20 stays"
        );
    }
}
