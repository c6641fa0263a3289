//! A worker's state as a plain serializable value: written incrementally for a checkpoint,
//! read back and routed to the workers of a restart.
//!
//! Only facts are written (per SKU: locations with their count, movements and folded sum;
//! reservations with their deciding events and log times; windows; plus the de-duplication
//! keys); what is derived from them (live sets, allocations, published rows, timers, views) is
//! rebuilt on restore, and names are plain strings, so nothing depends on pointer identity.
//!
//! **Without stalling the worker.** A checkpoint of time `T` starts once `T` is applied. Each
//! activation of the operator then serializes a slice of the state (about a millisecond), and
//! re-activates itself until done. What the worker is about to change first is copied out as it
//! was at `T` (a SKU is serialized before it is touched; a de-duplication shard that receives
//! keys remembers which ones came after `T`), so the result is exactly the state at `T`.

use super::dedup::{self, SHARDS};
use super::reservation::{Phase, Res, Reserved, Terminal};
use super::sku_hash;
use super::state::{LedgerState, Sku};
use super::stock::{CountRec, LocId};
use super::timers::{LogTimer, PipelineTimer, SkuId};
use super::windows::final_at;
use crate::clock::tick_ceil;
use crate::forecast::Forecaster;
use crate::ids::{event_hash, Binding};
use crate::views::ViewStore;
use crate::{Diff, EngineConfig, Time};
use hashbrown::{HashMap, HashSet};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use stockflow_types::rows::{Change, StockRow, WindowFigures, WindowRow};
use stockflow_types::{Millis, Name};
use thiserror::Error;

/// One entry of a worker's part of a checkpoint.
#[derive(Debug, Serialize, Deserialize)]
pub enum Item {
    /// What the part is: always first.
    Meta {
        /// The pipeline time the state is as of.
        at: Time,
        /// The log frontier at `at`.
        frontier: Millis,
        /// The worker that wrote it, of `peers`.
        worker: usize,
        /// Workers of the dataflow that wrote the checkpoint.
        peers: usize,
    },
    /// One SKU.
    Sku(SkuState),
    /// De-duplication keys of one generation (one shard of it).
    Dedup {
        /// The generation (log time / dedup_window).
        generation: u64,
        /// The keys.
        keys: Vec<u128>,
    },
    /// The worker's forecaster (docs/forecasting.md), whole.
    Forecast(Box<Forecaster>),
}

/// A SKU's facts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SkuState {
    name: Name,
    /// By location id.
    locations: Vec<LocState>,
    reservations: Vec<ResState>,
    windows: Vec<WindowState>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct LocState {
    name: Name,
    count: Option<CountRec>,
    moves: Vec<(Millis, i64)>,
    folded: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct ResState {
    id: Name,
    reserved: Option<Reserved>,
    terminal: Option<Terminal>,
    reserved_lt: Option<Millis>,
    terminal_lt: Option<Millis>,
    forgotten: Option<Millis>,
}

impl ResState {
    /// Its id's binding (`crate::ids`), as the id owner would have it.
    fn binding(&self, sku: &Name) -> Binding {
        let res = Res {
            reserved: self.reserved.clone(),
            terminal: self.terminal.clone(),
            reserved_lt: self.reserved_lt,
            terminal_lt: self.terminal_lt,
            forgotten: self.forgotten,
            ..Res::default()
        };
        // The deciding events stand for the records applied (with the first records' log
        // times): what a checkpoint keeps of the ledger's de-duplication per id.
        let applied = [
            self.reserved
                .as_ref()
                .zip(self.reserved_lt)
                .map(|(r, lt)| (event_hash(sku, &r.event_id), lt)),
            self.terminal
                .as_ref()
                .zip(self.terminal_lt)
                .map(|(t, lt)| (event_hash(sku, &t.event_id), lt)),
        ]
        .into_iter()
        .flatten()
        .collect();
        Binding::restored(
            Arc::clone(sku),
            self.reserved
                .as_ref()
                .map(|r| (r.ts, r.event_id.as_str().into())),
            res.horizon(),
            applied,
        )
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct WindowState {
    size: Millis,
    start: Millis,
    loc: LocId,
    figures: WindowFigures,
}

/// A worker's finished part of a checkpoint: serialized items in chunks of about a megabyte
/// (one growing buffer would copy itself whole each time it doubles, tens of milliseconds
/// in one slice for a large state).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Part {
    /// The pipeline time it is as of.
    pub at: Time,
    /// The serialized items, in order.
    pub chunks: Vec<Vec<u8>>,
}

impl Part {
    /// Its size in bytes.
    pub fn len(&self) -> usize {
        self.chunks.iter().map(Vec::len).sum()
    }

    /// Whether it is empty (it never is: a header comes first).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes in one piece, as a file holds them.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.chunks.concat()
    }
}

/// The size of the chunks a part is written in.
const CHUNK: usize = 1 << 20;

/// A growing list of chunks.
#[derive(Debug, Default)]
struct Chunks(Vec<Vec<u8>>);

impl Chunks {
    fn write(&mut self, item: &Item) {
        if self.0.last().is_none_or(|c| c.len() >= CHUNK) {
            self.0.push(Vec::with_capacity(CHUNK + CHUNK / 4));
        }
        let last = self.0.last_mut().expect("pushed");
        bincode::serialize_into(last, item).expect("writing into memory does not fail");
    }
}

/// What one worker of a restart starts from.
#[derive(Debug, Default)]
pub struct WorkerRestore {
    /// The pipeline time the state is as of.
    pub at: Time,
    /// The log frontier at `at`.
    pub frontier: Millis,
    skus: Vec<SkuState>,
    dedup: Vec<(u64, Vec<u128>)>,
    /// The bindings of this worker's restored reservations (`crate::ids`), for their ids'
    /// owners (which may be other workers, of other processes).
    pub(crate) ids: Vec<(Name, Binding)>,
    /// The forecasts' state of this worker's SKUs, if forecasting ran.
    forecast: Option<Forecaster>,
}

impl WorkerRestore {
    /// SKUs restored (for logs).
    pub fn sku_count(&self) -> usize {
        self.skus.len()
    }
}

/// A part could not be read back.
#[derive(Debug, Error)]
pub enum SnapshotError {
    /// The bytes do not decode.
    #[error("decoding a checkpoint part")]
    Decode(#[from] bincode::Error),
    /// The parts disagree or lack their header.
    #[error("the checkpoint's parts are inconsistent: {0}")]
    Inconsistent(String),
}

/// A checkpoint being written (see the module documentation).
#[derive(Debug)]
pub(crate) struct Snapshot {
    pub at: Time,
    /// SKUs that existed at `at`; `done[i]` once SKU `i` is written.
    done: Vec<bool>,
    cursor: usize,
    /// De-duplication shards that existed at `at` and are not yet written.
    dedup_pending: BTreeSet<(u64, usize)>,
    /// Keys inserted since `at` into shards not yet written.
    dedup_after: HashMap<(u64, usize), HashSet<u128>>,
    out: Chunks,
    /// Time spent copying out what was about to change, since the operator last looked.
    pub copied: Duration,
}

fn sku_state(s: &Sku) -> SkuState {
    let windows = s.windows.read();
    SkuState {
        name: Arc::clone(&s.name),
        locations: s
            .locs
            .iter()
            .map(|l| LocState {
                name: Arc::clone(&l.name),
                count: l.count.clone(),
                moves: l.moves.iter().copied().collect(),
                folded: l.folded,
            })
            .collect(),
        reservations: s
            .res
            .iter()
            .map(|(id, r)| ResState {
                id: Arc::clone(id),
                reserved: r.reserved.clone(),
                terminal: r.terminal.clone(),
                reserved_lt: r.reserved_lt,
                terminal_lt: r.terminal_lt,
                forgotten: r.forgotten,
            })
            .collect(),
        windows: windows
            .windows
            .iter()
            .map(|((size, start, loc), figures)| WindowState {
                size: *size,
                start: *start,
                loc: s.loc_index[&**loc],
                figures: *figures,
            })
            .collect(),
    }
}

impl LedgerState {
    /// Starts a checkpoint of the state as of `at` (just applied). A checkpoint still being
    /// written is finished first and returned.
    pub(crate) fn begin_snapshot(&mut self, at: Time, worker: usize) -> Option<Part> {
        let previous = self.snapshot_step(Duration::MAX);
        let mut out = Chunks::default();
        out.write(&Item::Meta {
            at,
            frontier: self.frontier,
            worker,
            peers: self.marks.len(),
        });
        // The forecaster is written whole, at once (its keys are few beside the ledger's; a
        // sliced copy-on-write like the SKUs' is the next step).
        if let Some(f) = &self.forecast {
            out.write(&Item::Forecast(Box::new(f.clone())));
        }
        let dedup_pending = self
            .dedup
            .generations
            .keys()
            .flat_map(|g| (0..SHARDS).map(move |i| (*g, i)))
            .collect();
        self.snapshot = Some(Snapshot {
            at,
            done: vec![false; self.skus.len()],
            cursor: 0,
            dedup_pending,
            dedup_after: HashMap::new(),
            out,
            copied: Duration::ZERO,
        });
        previous
    }

    /// Whether a checkpoint is being written.
    pub(crate) fn snapshot_in_progress(&self) -> bool {
        self.snapshot.is_some()
    }

    /// Writes for about `budget`; returns the part once complete.
    pub(crate) fn snapshot_step(&mut self, budget: Duration) -> Option<Part> {
        let started = Instant::now();
        loop {
            let snap = self.snapshot.as_mut()?;
            if let Some((g, i)) = snap.dedup_pending.pop_first() {
                write_dedup_shard(snap, &self.dedup, g, i);
            } else {
                while snap.cursor < snap.done.len() && snap.done[snap.cursor] {
                    snap.cursor += 1;
                }
                if snap.cursor == snap.done.len() {
                    let snap = self.snapshot.take().expect("in progress");
                    return Some(Part {
                        at: snap.at,
                        chunks: snap.out.0,
                    });
                }
                let i = snap.cursor;
                snap.done[i] = true;
                snap.out.write(&Item::Sku(sku_state(&self.skus[i])));
            }
            if started.elapsed() >= budget {
                return None;
            }
        }
    }

    /// Copy-on-write: SKU `id` is about to change.
    pub(crate) fn before_sku_change(&mut self, id: SkuId) {
        if let Some(snap) = &mut self.snapshot {
            let i = id as usize;
            if i < snap.done.len() && !snap.done[i] {
                let started = Instant::now();
                snap.done[i] = true;
                snap.out.write(&Item::Sku(sku_state(&self.skus[i])));
                snap.copied += started.elapsed();
            }
        }
    }

    /// Copy-on-write: `key` is about to be remembered at log time `lt`.
    pub(crate) fn before_dedup_insert(&mut self, key: u128, lt: Millis) {
        if let Some(snap) = &mut self.snapshot {
            let at = (self.dedup.generation(lt), dedup::shard(key));
            if snap.dedup_pending.contains(&at) {
                snap.dedup_after.entry(at).or_default().insert(key);
            }
        }
    }

    /// Copy-on-write: generation `g` is about to be dropped.
    pub(crate) fn before_dedup_drop(&mut self, g: u64) {
        if let Some(snap) = &mut self.snapshot {
            let started = Instant::now();
            for i in 0..SHARDS {
                if snap.dedup_pending.remove(&(g, i)) {
                    write_dedup_shard(snap, &self.dedup, g, i);
                }
            }
            snap.copied += started.elapsed();
        }
    }

    /// The state of a restart, and the rows it holds (to be emitted at the restored time, so
    /// that what follows the dataflow — the ranking, a test's accumulation — starts from them).
    /// Derived state is rebuilt as of `restore.at` and published to `store`.
    pub fn restore(
        cfg: Arc<EngineConfig>,
        store: Arc<ViewStore>,
        peers: usize,
        restore: WorkerRestore,
    ) -> (Self, Vec<(Change, Diff)>) {
        let mut state = LedgerState::new(Arc::clone(&cfg), Arc::clone(&store), peers);
        let at = restore.at;
        state.frontier = restore.frontier;
        state.marks.iter_mut().for_each(|m| *m = restore.frontier);
        for (g, keys) in restore.dedup {
            state.dedup.extend(g, keys);
        }
        // One row per location, reservation and window: sized at once (a vector of millions
        // doubling copies itself and touches fresh memory at every step).
        let mut rows = Vec::with_capacity(
            restore
                .skus
                .iter()
                .map(|s| s.locations.len() + s.reservations.len() + s.windows.len())
                .sum(),
        );
        let mut changed = Vec::new();
        let (mut pipeline_timers, mut log_timers) = (Vec::new(), Vec::new());
        for sku in restore.skus {
            let id = state.new_sku(Arc::clone(&sku.name));
            let s = &mut state.skus[id as usize];
            for l in sku.locations {
                let loc = s.add_loc(l.name);
                let loc = &mut s.locs[loc as usize];
                loc.count = l.count;
                loc.moves_sum = l.moves.iter().map(|m| m.1).sum();
                loc.moves = l.moves.into();
                loc.folded = l.folded;
            }
            {
                let mut w = s.windows.write();
                for win in sku.windows {
                    let loc = Arc::clone(&s.locs[win.loc as usize].name);
                    w.windows.insert((win.size, win.start, loc), win.figures);
                    let final_at = final_at(&cfg, win.size, win.start);
                    if s.window_timers.insert(final_at) {
                        log_timers.push((final_at, id, LogTimer::Windows));
                    }
                }
                w.changed_at = at;
            }
            for r in sku.reservations {
                let mut res = Res {
                    reserved: r.reserved,
                    terminal: r.terminal,
                    reserved_lt: r.reserved_lt,
                    terminal_lt: r.terminal_lt,
                    forgotten: r.forgotten,
                    ..Res::default()
                };
                let forget_at = res.forget_at(cfg.retention_ms);
                res.log_timer = Some(forget_at);
                log_timers.push((forget_at, id, LogTimer::Forget(Arc::clone(&r.id))));
                if let (Phase::Live, Some(reserved)) = (res.phase(at), &res.reserved) {
                    let expiry = tick_ceil(reserved.expires_at, cfg.tick_ms);
                    res.expiry_timer = Some(expiry);
                    pipeline_timers.push((expiry, id, PipelineTimer::Expiry(Arc::clone(&r.id))));
                    let live = (reserved.loc, reserved.ts, reserved.qty);
                    res.live_at = Some(live);
                    s.locs[live.0 as usize].add_live(live.1, &r.id, live.2);
                }
                if let Some(ended) = res.forgotten {
                    store.forget_reservation(&r.id, &s.name, ended, at);
                }
                s.res.insert(r.id, res);
            }
            // Allocation and the published values as of `at`.
            for loc in &mut s.locs {
                let on_hand = loc.on_hand();
                let held = loc.allocate(on_hand, &mut changed);
                loc.published = Some((on_hand, held));
                s.figures[loc.pos] = (on_hand, held);
                rows.push((
                    Change::Stock(StockRow {
                        sku: Arc::clone(&s.name),
                        location: Arc::clone(&loc.name),
                        on_hand,
                        reserved: held,
                        available: on_hand - held,
                    }),
                    1,
                ));
            }
            changed.clear();
            if !s.locs.is_empty() {
                store.publish_stock(&s.name, &s.loc_names, &s.figures, at);
            }
            let ids: Vec<Name> = s.res.keys().cloned().collect();
            for rid in ids {
                let mut out = Vec::new();
                s.publish_reservation(&store, at, &rid, &mut out);
                rows.extend(out);
            }
            for ((size, start, loc), figures) in &s.windows.read().windows {
                rows.push((
                    Change::Window(WindowRow {
                        window_ms: *size,
                        window_start: *start,
                        sku: Arc::clone(&s.name),
                        location: Arc::clone(loc),
                        figures: *figures,
                    }),
                    1,
                ));
            }
        }
        state.timers = super::timers::Timers::from_lists(pipeline_timers, log_timers);
        // Forecasting resumes where it was, with the model file of this run (a new one applies
        // from the next boundary); turned on at a restart, it starts empty.
        if let (Some(cfg), Some(f)) = (&cfg.forecast, restore.forecast) {
            state.forecast = Some(f.with_config(Arc::clone(cfg))); // published by the operator
        }
        (state, rows)
    }
}

fn write_dedup_shard(snap: &mut Snapshot, dedup: &dedup::Dedup, g: u64, i: usize) {
    let Some(sets) = dedup.generations.get(&g) else {
        return;
    };
    let after = snap.dedup_after.remove(&(g, i));
    let keys: Vec<u128> = match &after {
        Some(after) => sets[i]
            .iter()
            .filter(|k| !after.contains(*k))
            .copied()
            .collect(),
        None => sets[i].iter().copied().collect(),
    };
    if !keys.is_empty() {
        snap.out.write(&Item::Dedup {
            generation: g,
            keys,
        });
    }
}

/// Decodes the items of one part.
pub fn decode_part(bytes: &[u8]) -> Result<Vec<Item>, SnapshotError> {
    let mut cursor = bytes;
    let mut items = Vec::new();
    while !cursor.is_empty() {
        items.push(bincode::deserialize_from(&mut cursor)?);
    }
    Ok(items)
}

/// Routes the parts of a checkpoint (written by any number of workers) to `workers` workers:
/// each SKU and each de-duplication key goes to the owner of its SKU.
pub fn route<P: AsRef<[u8]>>(
    parts: &[P],
    workers: usize,
) -> Result<Vec<WorkerRestore>, SnapshotError> {
    let workers = workers.max(1);
    let mut out: Vec<WorkerRestore> = (0..workers).map(|_| WorkerRestore::default()).collect();
    let mut meta: Option<(Time, Millis)> = None;
    for (i, part) in parts.iter().enumerate() {
        let mut items = decode_part(part.as_ref())?.into_iter();
        let Some(Item::Meta { at, frontier, .. }) = items.next() else {
            return Err(SnapshotError::Inconsistent(format!(
                "part {i} does not start with its header"
            )));
        };
        match meta {
            None => meta = Some((at, frontier)),
            Some(m) if m == (at, frontier) => {}
            Some(m) => {
                return Err(SnapshotError::Inconsistent(format!(
                    "part {i} is as of {at} with log frontier {frontier}, part 0 as of {} with {}",
                    m.0, m.1
                )))
            }
        }
        for item in items {
            match item {
                Item::Meta { .. } => {
                    return Err(SnapshotError::Inconsistent(format!(
                        "part {i} has a second header"
                    )))
                }
                Item::Sku(s) => {
                    let w = super::owner(sku_hash(&s.name), workers);
                    for r in &s.reservations {
                        out[w].ids.push((Arc::clone(&r.id), r.binding(&s.name)));
                    }
                    out[w].skus.push(s);
                }
                Item::Forecast(f) => {
                    let parts = f.split(workers, |sku| super::owner(sku_hash(sku), workers));
                    for (w, f) in parts.into_iter().enumerate() {
                        match &mut out[w].forecast {
                            Some(mine) => mine.merge(f),
                            None => out[w].forecast = Some(f),
                        }
                    }
                }
                Item::Dedup { generation, keys } => {
                    let mut by_worker: Vec<Vec<u128>> = vec![Vec::new(); workers];
                    for k in keys {
                        by_worker[super::owner(dedup::sku_hash_of(k), workers)].push(k);
                    }
                    for (w, keys) in by_worker.into_iter().enumerate() {
                        if !keys.is_empty() {
                            out[w].dedup.push((generation, keys));
                        }
                    }
                }
            }
        }
    }
    let (at, frontier) =
        meta.ok_or_else(|| SnapshotError::Inconsistent("a checkpoint without parts".into()))?;
    for w in &mut out {
        w.at = at;
        w.frontier = frontier;
    }
    Ok(out)
}
