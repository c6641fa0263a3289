//! The start from a checkpoint: the newest one that reads back whole, routed to this run's
//! workers. A damaged one is skipped with a warning naming it (and counted); one written with
//! other windows or another tick is an error, not a silent fresh start.

use anyhow::{bail, Result};
use std::time::Instant;
use stockflow_dataflow::{ledger, EngineConfig, WorkerRestore};
use stockflow_sinks::checkpoint::{self, Fingerprint, Resume};
use stockflow_types::config::Settings;
use stockflow_types::Millis;

/// A checkpoint to start from.
pub struct Restored {
    /// The pipeline time its state is as of.
    pub at: Millis,
    /// Where every partition resumes.
    pub positions: Vec<Resume>,
    /// One state per local worker.
    pub workers: Vec<WorkerRestore>,
    /// The ClickHouse database that held its state (`url/database`), if any.
    pub sink: Option<String>,
}

/// The identity of the configured ClickHouse sink, as a checkpoint records it.
pub fn sink_identity(settings: &Settings) -> Option<String> {
    let c = &settings.clickhouse;
    c.enabled
        .then(|| format!("{}/{}", c.url.trim_end_matches('/'), c.database))
}

/// What a checkpoint must have been written with to be restored by this configuration.
pub fn fingerprint(cfg: &EngineConfig) -> Fingerprint {
    Fingerprint {
        tick_ms: cfg.tick_ms,
        windows: cfg
            .windows
            .iter()
            .map(|w| (w.name.clone(), w.size_ms))
            .collect(),
        horizons: (
            cfg.retention_ms,
            cfg.window_retention_ms,
            cfg.dedup_window_ms,
        ),
    }
}

/// The newest valid checkpoint in `checkpoint.dir`, if any.
///
/// In a cluster every process must restore the same time (each holds its own workers' parts,
/// and the partitions it reads fed every process's state): the processes first agree, over a
/// short timely run of their own, on the newest time that all of them hold, and only that one
/// is read here.
pub fn load(
    settings: &Settings,
    cfg: &EngineConfig,
    topology: stockflow_types::topology::Topology,
) -> Result<Option<Restored>> {
    let workers = topology.workers;
    let started = Instant::now();
    let want = fingerprint(cfg);
    let mut candidates = checkpoint::list(&settings.checkpoint.dir)?;
    if topology.processes > 1 {
        let held: Vec<Millis> = candidates.iter().map(|(at, _)| *at).collect();
        let agreed = agree(settings, topology, held)?;
        candidates.retain(|(at, _)| Some(*at) == agreed);
        if agreed.is_none() {
            tracing::info!("the processes of the cluster hold no checkpoint in common");
        }
    }
    let agreed_one = topology.processes > 1 && !candidates.is_empty();
    for (_, path) in candidates {
        let loaded = match checkpoint::read(&path) {
            Ok(l) => l,
            Err(e) if agreed_one => {
                metrics::counter!("stockflow_checkpoint_corrupt_total").increment(1);
                bail!(
                    "checkpoint {} does not read back whole ({e}), and the other processes of the cluster restore its time: \
                     move it away on this process (the cluster then agrees on an older one)",
                    path.display()
                );
            }
            Err(e) => {
                metrics::counter!("stockflow_checkpoint_corrupt_total").increment(1);
                tracing::warn!(path = %path.display(), error = %e, "skipping a checkpoint that does not read back whole; trying the previous one");
                continue;
            }
        };
        if loaded.header.fingerprint != want {
            bail!(
                "checkpoint {} was written with {}; the configuration has {}: \
                 restore that configuration, or move the checkpoint directory away to rebuild the state from the log",
                path.display(),
                describe(&loaded.header.fingerprint),
                describe(&want),
            );
        }
        // Routed over the whole cluster's workers: each process holds the parts of its own
        // workers, so every SKU of them must land on this process.
        let routed = match ledger::route(&loaded.parts(), topology.peers()) {
            Ok(mut all) => {
                let mine: Vec<WorkerRestore> = all
                    .drain(topology.global(0)..topology.global(workers))
                    .collect();
                let strays: usize = all.iter().map(WorkerRestore::sku_count).sum();
                if strays > 0 {
                    bail!(
                        "checkpoint {} holds {strays} SKUs that another process of this cluster owns: \
                         it was written by a cluster of another shape (processes × pipeline.workers); \
                         start with that shape, or move the checkpoint directories away to rebuild the state from the log",
                        path.display()
                    );
                }
                mine
            }
            Err(e) => {
                metrics::counter!("stockflow_checkpoint_corrupt_total").increment(1);
                tracing::warn!(path = %path.display(), error = %e, "skipping a checkpoint whose state does not decode; trying the previous one");
                continue;
            }
        };
        let skus: usize = routed.iter().map(WorkerRestore::sku_count).sum();
        metrics::gauge!("stockflow_checkpoint_restore_seconds")
            .set(started.elapsed().as_secs_f64());
        tracing::info!(
            path = %path.display(),
            at = loaded.header.at,
            skus,
            written_by = loaded.header.part_lengths.len(),
            workers,
            millis = started.elapsed().as_millis() as u64,
            "restoring a checkpoint; reading what follows it"
        );
        return Ok(Some(Restored {
            at: loaded.header.at,
            positions: loaded.header.positions,
            workers: routed,
            sink: loaded.header.sink,
        }));
    }
    tracing::info!(dir = %settings.checkpoint.dir.display(), "no checkpoint to restore; reading the log from the start");
    Ok(None)
}

fn describe(f: &Fingerprint) -> String {
    let (retention, window_retention, dedup) = f.horizons;
    format!(
        "tick {} ms, windows {:?}, retention {retention} ms, window_retention {window_retention} ms, dedup_window {dedup} ms",
        f.tick_ms, f.windows
    )
}

/// The newest checkpoint time that every process of the cluster holds, agreed over a timely
/// run of one worker per process on the cluster's own addresses (before the dataflow's).
fn agree(
    settings: &Settings,
    topology: stockflow_types::topology::Topology,
    held: Vec<Millis>,
) -> Result<Option<Millis>> {
    use std::cell::RefCell;
    use std::rc::Rc;
    use timely::dataflow::operators::vec::Broadcast;
    use timely::dataflow::operators::{Input, Inspect, Probe};
    let config = crate::timely_config(topology, &settings.cluster.addresses, 1);
    tracing::info!(held = ?held, "agreeing with the other processes on the checkpoint to restore");
    let guards = timely::execute(config, move |worker| {
        let seen: Rc<RefCell<Vec<Vec<Millis>>>> = Rc::default();
        let sink = Rc::clone(&seen);
        let (mut input, probe) = worker.dataflow::<u64, _, _>(|scope| {
            let (input, lists) = scope.new_input::<Vec<Vec<Millis>>>();
            let (probe, _) = lists
                .broadcast()
                .inspect(move |list| sink.borrow_mut().push(list.clone()))
                .probe();
            (input, probe)
        });
        input.send(held.clone());
        drop(input);
        while !probe.done() {
            worker.step();
        }
        seen.take()
    })
    .map_err(|e| {
        anyhow::anyhow!("connecting to the other processes to agree on a checkpoint: {e}")
    })?;
    let lists = guards
        .join()
        .pop()
        .and_then(|r| r.ok())
        .ok_or_else(|| anyhow::anyhow!("agreeing on a checkpoint failed"))?;
    if lists.len() != topology.processes {
        bail!(
            "agreeing on a checkpoint: heard from {} of {} processes",
            lists.len(),
            topology.processes
        );
    }
    let agreed = lists[0]
        .iter()
        .copied()
        .filter(|at| lists.iter().all(|l| l.contains(at)))
        .max();
    tracing::info!(?agreed, "the cluster agreed on the checkpoint to restore");
    Ok(agreed)
}
