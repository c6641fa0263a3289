//! The per-worker state machine behind the ledger operator: plain Rust, no timely.
//!
//! The operator hands it every complete pipeline time in order ([`LedgerState::process`]): the
//! time's control messages (log frontiers, checkpoint requests), then its records in arrival
//! order, then what falls due (expiries at the pipeline time, forgetting at the log frontier).
//! It returns the changes of the maintained rows (`(Change, ±1)`) and publishes the new values
//! to the [`ViewStore`].
//!
//! Every rule that rejects or forgets is decided by log time (each record's own, or the log
//! frontier), never by the clock at admission: the state after a prefix of the log is the same
//! however it was read (docs/architecture.md, "Log time"). The concerns live beside this file:
//! de-duplication ([`super::dedup`]), stock and allocation ([`super::stock`]), the reservation
//! lifecycle ([`super::reservation`]), windows ([`super::windows`]), timers
//! ([`super::timers`]) and checkpoints ([`super::snapshot`]).

use super::dedup::{self, Dedup};
use super::reservation::{Published, Res};
use super::sku_hash;
use super::snapshot::Snapshot;
use super::stock::{CountRec, Loc, LocId};
use super::timers::{LogTimer, PipelineTimer, SkuId, Timers};
use crate::forecast::Forecaster;
use crate::views::{ReservationView, SkuWindows, ViewStore};
use crate::{Control, Diff, EngineConfig, Record, Time};
use hashbrown::HashMap;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::sync::Arc;
use stockflow_types::event::EventKind;
use stockflow_types::rows::{Change, ReservationRow, StockRow, WindowFigures};
use stockflow_types::{Millis, Name};

/// Counters the operator exposes (for metrics and tests).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerStats {
    /// Events applied (after de-duplication).
    pub applied: u64,
    /// Events dropped as repeats of an `event_id`.
    pub duplicates: u64,
    /// `counted` events older than the retention horizon that reached the engine (admission
    /// rejects them; this counts any that bypassed it).
    pub stale_counts: u64,
    /// Contributions left out because their window was final at the record's log time, per
    /// configured window.
    pub late_window_events: Vec<u64>,
    /// The longest time one activation spent on checkpoint work (its slice plus what it
    /// copied before changing it), µs: what a checkpoint adds to a worker's step at most.
    pub checkpoint_stall_max_us: u64,
}

/// What a SKU's operations need from the worker's state.
pub(crate) struct Ctx<'a> {
    pub cfg: &'a EngineConfig,
    pub store: &'a ViewStore,
    /// The pipeline time being processed.
    pub t: Time,
    /// Forgetting is done through this log time: the log frontier, or less while a jump of the
    /// frontier is forgotten a slice per time (`EngineConfig::forget_per_time`).
    pub frontier: Millis,
    /// Movements with a business time before this may be folded: no admissible count can
    /// land before it (the log frontier before this time, minus the retention).
    pub fold_before: Millis,
    pub stats: &'a mut LedgerStats,
    pub timers: &'a mut Timers,
    /// The SKU operated on.
    pub sku: SkuId,
}

/// One SKU: everything keyed below it lives on the worker that owns the SKU.
#[derive(Debug)]
pub(crate) struct Sku {
    pub name: Name,
    /// Locations in order of first sight (a [`LocId`] is an index).
    pub locs: Vec<Loc>,
    pub loc_index: HashMap<Name, LocId>,
    /// Location names in order, shared with every published stock value.
    pub loc_names: Arc<[Name]>,
    /// Published (on_hand, reserved) per location, aligned with `loc_names`.
    pub figures: Vec<(i64, i64)>,
    pub res: HashMap<Name, Res>,
    /// The windows, shared with the view store (written only here).
    pub windows: Arc<RwLock<SkuWindows>>,
    /// Log times at which some window becomes final (one timer per time).
    pub window_timers: BTreeSet<Millis>,
    // This time's work.
    pub dirty: bool,
    pub dirty_locs: Vec<LocId>,
    pub dirty_res: Vec<Name>,
    /// Reservations removed entirely while a row of theirs was still published, or their
    /// history not yet emitted: (id, published, history).
    pub gone: Vec<(Name, Option<Published>, Option<Published>)>,
    /// (size, start, location) → delta.
    pub window_deltas: Vec<((Millis, Millis, LocId), WindowFigures)>,
    pub evict_windows: bool,
    /// This time's units sold for the forecaster: (location, business time, units, log time).
    pub demand: Vec<(LocId, Millis, i64, Millis)>,
    /// The earliest log time of this time's records of the SKU, if any.
    pub first_lt: Option<Millis>,
}

impl Sku {
    pub fn new(name: Name, windows: Arc<RwLock<SkuWindows>>) -> Self {
        Sku {
            name,
            locs: Vec::new(),
            loc_index: HashMap::new(),
            loc_names: Arc::from(Vec::new()),
            figures: Vec::new(),
            res: HashMap::new(),
            windows,
            window_timers: BTreeSet::new(),
            dirty: false,
            dirty_locs: Vec::new(),
            dirty_res: Vec::new(),
            gone: Vec::new(),
            window_deltas: Vec::new(),
            evict_windows: false,
            demand: Vec::new(),
            first_lt: None,
        }
    }

    /// The location named `location`, created on first sight, marked dirty.
    pub fn touch_loc(&mut self, location: &str) -> LocId {
        let id = match self.loc_index.get(location) {
            Some(id) => *id,
            None => self.add_loc(Name::from(location)),
        };
        self.dirty_locs.push(id);
        id
    }

    /// Adds a location: it takes its place in the sorted names, the positions after it shift.
    pub fn add_loc(&mut self, name: Name) -> LocId {
        let id = LocId::try_from(self.locs.len()).expect("fewer than 2^32 locations per SKU");
        let pos = self.loc_names.partition_point(|n| **n < *name);
        for l in &mut self.locs {
            if l.pos >= pos {
                l.pos += 1;
            }
        }
        self.figures.insert(pos, (0, 0));
        let mut names = self.loc_names.to_vec();
        names.insert(pos, Arc::clone(&name));
        self.loc_names = names.into();
        self.loc_index.insert(Arc::clone(&name), id);
        self.locs.push(Loc::new(name, pos));
        id
    }
}

/// All SKUs owned by one worker.
pub struct LedgerState {
    pub(crate) cfg: Arc<EngineConfig>,
    pub(crate) store: Arc<ViewStore>,
    pub(crate) dedup: Dedup,
    /// SKUs in order of first sight (SKUs are never forgotten: their stock rows are the answer
    /// set), and where each is.
    pub(crate) skus: Vec<Sku>,
    pub(crate) index: HashMap<Name, SkuId>,
    pub(crate) timers: Timers,
    /// The log frontier each worker of the dataflow announced; the least is the frontier.
    pub(crate) marks: Vec<Millis>,
    pub(crate) frontier: Millis,
    /// Everything due at or before this log time is forgotten (≤ `frontier`; less while a jump
    /// of the frontier is forgotten in slices).
    pub(crate) forgotten: Millis,
    /// The next pipeline time at which to go on forgetting, while behind the frontier.
    next_slice: Option<Time>,
    dirty: Vec<SkuId>,
    pub(crate) stats: LedgerStats,
    /// A checkpoint being written.
    pub(crate) snapshot: Option<Snapshot>,
    /// Buffers reused by every time (their capacity survives).
    emit_scratch: Vec<Name>,
    pipeline_due: Vec<(SkuId, PipelineTimer)>,
    log_due: Vec<(SkuId, LogTimer)>,
    /// Forecasting, when configured: fed from here, advanced with the log frontier.
    pub(crate) forecast: Option<Forecaster>,
    pub(crate) local_worker: usize,
}

impl LedgerState {
    /// Empty state publishing into `store`, in a dataflow of `peers` workers.
    pub fn new(cfg: Arc<EngineConfig>, store: Arc<ViewStore>, peers: usize) -> Self {
        let dedup = Dedup::new(cfg.dedup_window_ms);
        let cfg_forecast = cfg.forecast.clone();
        if let Some(f) = &cfg_forecast {
            store.forecast().configure(Arc::clone(f)); // for engines built without the runtime
        }
        let stats = LedgerStats {
            late_window_events: vec![0; cfg.windows.len()],
            ..LedgerStats::default()
        };
        LedgerState {
            cfg,
            store,
            dedup,
            skus: Vec::new(),
            index: HashMap::new(),
            timers: Timers::default(),
            marks: vec![0; peers.max(1)],
            frontier: 0,
            forgotten: 0,
            next_slice: None,
            dirty: Vec::new(),
            stats,
            snapshot: None,
            emit_scratch: Vec::new(),
            pipeline_due: Vec::new(),
            log_due: Vec::new(),
            forecast: cfg_forecast.map(Forecaster::new),
            local_worker: 0,
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> &LedgerStats {
        &self.stats
    }

    /// The earliest pipeline time at which a timer is due (or forgetting goes on).
    pub fn next_timer(&self) -> Option<Time> {
        match (self.timers.next_pipeline(), self.next_slice) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Everything due at or before this log time is forgotten (the log frontier, or less while
    /// a jump of it is forgotten in slices).
    pub fn forgotten_through(&self) -> Millis {
        self.forgotten
    }

    /// The least log time any worker's sources may still deliver.
    pub fn log_frontier(&self) -> Millis {
        self.frontier
    }

    /// Applies pipeline time `t`: its control messages, its records in arrival order, then
    /// what falls due. Appends the row changes to `out`; returns whether a checkpoint was
    /// requested at `t` (the caller starts it once `t` is applied).
    pub fn process(
        &mut self,
        t: Time,
        records: &mut Vec<Record>,
        controls: &[Control],
        out: &mut Vec<(Change, Diff)>,
    ) -> bool {
        let fold_before = self.frontier.saturating_sub(self.cfg.retention_ms);
        let mut checkpoint = false;
        let mut notices = false;
        for c in controls {
            match c {
                Control::LogFrontier { worker, at } => {
                    if let Some(m) = self.marks.get_mut(*worker) {
                        *m = (*m).max(*at);
                    }
                }
                Control::Checkpoint => checkpoint = true,
                Control::Forget { .. } => notices = true,
            }
        }
        self.frontier = self.marks.iter().copied().min().unwrap_or(0);
        // The first sighting in arrival order wins: a partition's records arrive in log order,
        // and every other rule below is independent of the order of application.
        for r in records.drain(..) {
            self.apply(t, r, fold_before);
        }
        // The id owner's notices come after this time's records: a SKU's record of this time
        // may have made the reservation that another SKU's record of this time takes over.
        if notices {
            for c in controls {
                if let Control::Forget { sku, id, at } = c {
                    self.forget_notice(t, sku, id, *at, fold_before);
                }
            }
        }
        let mut due = std::mem::take(&mut self.pipeline_due);
        self.timers.due_pipeline(t, &mut due);
        for (sku, timer) in due.drain(..) {
            let s = self.touch(sku);
            match timer {
                PipelineTimer::Expiry(id) => s.dirty_res.push(id),
            }
        }
        self.pipeline_due = due;
        let mut due = std::mem::take(&mut self.log_due);
        self.forgotten = self
            .timers
            .due_log(self.frontier, self.cfg.forget_per_time, &mut due)
            .max(self.forgotten);
        self.next_slice = (self.forgotten < self.frontier).then(|| t + self.cfg.tick_ms);
        for (sku, timer) in due.drain(..) {
            let s = self.touch(sku);
            match timer {
                LogTimer::Forget(id) => s.dirty_res.push(id),
                LogTimer::Windows => s.evict_windows = true,
            }
        }
        self.log_due = due;
        for g in self.dedup.expired(self.forgotten) {
            self.before_dedup_drop(g);
            self.dedup.drop_generation(g);
        }
        let mut dirty = std::mem::take(&mut self.dirty);
        for sku in dirty.drain(..) {
            self.settle(t, fold_before, sku, out);
        }
        self.dirty = dirty; // keeps its capacity
        if let Some(f) = self.forecast.as_mut() {
            let issued = f.advance(self.frontier);
            self.store.forecast().publish(self.local_worker, f, issued);
        }
        checkpoint
    }

    /// The SKU `id`, marked dirty for this time; a checkpoint in progress copies it first.
    pub(crate) fn touch(&mut self, id: SkuId) -> &mut Sku {
        self.before_sku_change(id);
        let s = &mut self.skus[id as usize];
        if !s.dirty {
            s.dirty = true;
            self.dirty.push(id);
        }
        s
    }

    pub(crate) fn sku_id(&mut self, name: &str) -> SkuId {
        match self.index.get(name) {
            Some(id) => *id,
            None => self.new_sku(Name::from(name)),
        }
    }

    pub(crate) fn new_sku(&mut self, name: Name) -> SkuId {
        let windows = self.store.windows_of(&name);
        let id = SkuId::try_from(self.skus.len()).expect("fewer than 2^32 SKUs per worker");
        self.index.insert(Arc::clone(&name), id);
        self.skus.push(Sku::new(name, windows));
        id
    }

    /// The id owner says reservation `id` of `sku` is forgotten by log time `lt` (another SKU
    /// takes its id over at this time): if this worker owns `sku`, it forgets it now.
    fn forget_notice(&mut self, t: Time, sku: &str, id: &str, lt: Millis, fold_before: Millis) {
        let Some(&sku) = self.index.get(sku) else {
            return; // not a SKU of this worker (or already forgotten)
        };
        if !self.skus[sku as usize].res.contains_key(id) {
            return;
        }
        self.touch(sku);
        let cfg = Arc::clone(&self.cfg);
        let store = Arc::clone(&self.store);
        let mut ctx = Ctx {
            cfg: &cfg,
            store: &store,
            t,
            frontier: self.forgotten,
            fold_before,
            stats: &mut self.stats,
            timers: &mut self.timers,
            sku,
        };
        self.skus[sku as usize].forget_by(&mut ctx, lt, id);
    }

    fn apply(&mut self, t: Time, r: Record, fold_before: Millis) {
        let Record {
            log_time: lt,
            event: ev,
        } = r;
        let retention = self.cfg.retention_ms;
        if matches!(ev.kind, EventKind::Counted { .. }) && ev.ts.saturating_add(retention) < lt {
            self.stats.stale_counts += 1;
            return;
        }
        let key = dedup::key(sku_hash(&ev.sku), &ev.event_id);
        if self.dedup.is_repeat(key, lt) {
            self.stats.duplicates += 1;
            return;
        }
        self.before_dedup_insert(key, lt);
        self.dedup.insert(key, lt);
        self.stats.applied += 1;
        let sku = self.sku_id(&ev.sku);
        self.touch(sku);
        let cfg = Arc::clone(&self.cfg);
        let store = Arc::clone(&self.store);
        let mut ctx = Ctx {
            cfg: &cfg,
            store: &store,
            t,
            frontier: self.forgotten,
            fold_before,
            stats: &mut self.stats,
            timers: &mut self.timers,
            sku,
        };
        let s = &mut self.skus[sku as usize];
        s.first_lt = Some(s.first_lt.map_or(lt, |f| f.min(lt)));
        let fulfilled = matches!(ev.kind, EventKind::Fulfilled { .. });
        match ev.kind {
            EventKind::Listed { category } => {
                if let Some(f) = self.forecast.as_mut() {
                    f.listed(&s.name, ev.ts, &ev.event_id, &category, lt);
                }
            }
            EventKind::Received { location, qty } => {
                let loc = s.touch_loc(&location);
                s.locs[loc as usize].add_movement(ev.ts, qty, fold_before);
                let f = WindowFigures {
                    units_received: qty,
                    ..Default::default()
                };
                s.add_window(&mut ctx, lt, loc, ev.ts, &f, 1);
            }
            EventKind::Adjusted { location, qty } => {
                let loc = s.touch_loc(&location);
                s.locs[loc as usize].add_movement(ev.ts, qty, fold_before);
            }
            EventKind::Sold { location, qty } => {
                let loc = s.touch_loc(&location);
                s.locs[loc as usize].add_movement(ev.ts, -qty, fold_before);
                let f = WindowFigures {
                    units_sold: qty,
                    orders: 1,
                    ..Default::default()
                };
                s.add_window(&mut ctx, lt, loc, ev.ts, &f, 1);
            }
            EventKind::Counted { location, qty } => {
                let loc = s.touch_loc(&location);
                s.locs[loc as usize].apply_count(CountRec {
                    ts: ev.ts,
                    event_id: ev.event_id,
                    qty,
                });
            }
            EventKind::Reserved {
                reservation_id,
                location,
                qty,
                expires_at,
            } => {
                let loc = s.touch_loc(&location);
                let rec = super::reservation::Reserved {
                    ts: ev.ts,
                    event_id: ev.event_id,
                    loc,
                    qty,
                    expires_at,
                };
                s.reservation_record(&mut ctx, lt, &reservation_id, |res| {
                    res.reserved_lt.get_or_insert(lt);
                    if res.reserved.as_ref().is_none_or(|r| rec < *r) {
                        res.reserved = Some(rec);
                    }
                });
            }
            EventKind::Released { reservation_id } | EventKind::Fulfilled { reservation_id } => {
                let term = super::reservation::Terminal {
                    ts: ev.ts,
                    event_id: ev.event_id,
                    fulfilled,
                };
                s.reservation_record(&mut ctx, lt, &reservation_id, |res| {
                    res.terminal_lt.get_or_insert(lt);
                    if res.terminal.as_ref().is_none_or(|old| term < *old) {
                        res.terminal = Some(term);
                    }
                });
            }
        }
    }

    /// Brings one dirty SKU up to date at `t` and emits its changed rows.
    fn settle(&mut self, t: Time, fold_before: Millis, sku: SkuId, out: &mut Vec<(Change, Diff)>) {
        let cfg = Arc::clone(&self.cfg);
        let store = Arc::clone(&self.store);
        let frontier = self.forgotten;
        let fold_now = self.frontier.saturating_sub(cfg.retention_ms);
        let emit_res = &mut self.emit_scratch;
        let mut ctx = Ctx {
            cfg: &cfg,
            store: &store,
            t,
            frontier,
            fold_before,
            stats: &mut self.stats,
            timers: &mut self.timers,
            sku,
        };
        let s = &mut self.skus[sku as usize];
        s.dirty = false;
        let sku_name = Arc::clone(&s.name);
        // Readers of the SKU's list of reservations see this time's changes whole or not at all:
        // bracketed from before the first change (a refresh, or a re-allocation's) to the end.
        let mut bracketed = !s.dirty_res.is_empty() || !s.gone.is_empty();
        if bracketed {
            store.begin_reservations(&sku_name);
        }

        // 1. Reservations whose expiry or forgetting fell due, or whose facts changed: bring
        //    their contributions (live sets) up to date; they are re-published below.
        let mut dirty_res = std::mem::take(&mut s.dirty_res);
        dirty_res.sort_unstable();
        dirty_res.dedup();
        for id in &dirty_res {
            s.refresh_reservation(&mut ctx, id);
            emit_res.push(Arc::clone(id));
        }

        // 2. Locations: fold old movements, allocate live reservations first come first served.
        // The walk is linear in the live reservations of the location; only those whose
        // allocation changed are re-emitted.
        let mut stock_changed = false;
        let mut dirty_locs = std::mem::take(&mut s.dirty_locs);
        dirty_locs.sort_unstable();
        dirty_locs.dedup();
        for loc_id in &dirty_locs {
            let loc = &mut s.locs[*loc_id as usize];
            loc.fold(fold_now);
            let on_hand = loc.on_hand();
            let held = loc.allocate(on_hand, emit_res);
            let now = (on_hand, held);
            s.figures[loc.pos] = now;
            if loc.published != Some(now) {
                let row = |(on_hand, reserved): (i64, i64)| StockRow {
                    sku: Arc::clone(&sku_name),
                    location: Arc::clone(&loc.name),
                    on_hand,
                    reserved,
                    available: on_hand.saturating_sub(reserved),
                };
                if let Some(old) = loc.published {
                    out.push((Change::Stock(row(old)), -1));
                }
                out.push((Change::Stock(row(now)), 1));
                loc.published = Some(now);
                stock_changed = true;
            }
        }
        if stock_changed {
            store.publish_stock(&sku_name, &s.loc_names, &s.figures, t);
        }
        // The forecaster hears this time's demand (each at its record's log time) and the
        // stock as it is at the end of this time, from the log time of the SKU's first record
        // in it (the frontier for a change without records, an expiry). Within one time the
        // ledger does not allocate per record: the end state counts from the first record, so
        // a key that appears in a long replayed batch is not taken as out of stock until the
        // batch's last record (docs/forecasting.md, section 2).
        if let Some(f) = self.forecast.as_mut() {
            let lt = s.first_lt.take().unwrap_or(self.frontier);
            for loc_id in &dirty_locs {
                let loc = &s.locs[*loc_id as usize];
                if let Some((on_hand, reserved)) = loc.published {
                    f.available(&sku_name, &loc.name, on_hand.saturating_sub(reserved), lt);
                }
            }
            for (loc, ts, units, lt) in s.demand.drain(..) {
                f.demand(&sku_name, &s.locs[loc as usize].name, ts, units, lt);
            }
        }
        s.first_lt = None;

        // 3. Reservation rows: statuses after allocation; tombstones and removals.
        if !bracketed && !emit_res.is_empty() {
            store.begin_reservations(&sku_name);
            bracketed = true;
        }
        for (id, old, history) in std::mem::take(&mut s.gone) {
            retire(s, &id, old, history, out);
        }
        emit_res.sort_unstable();
        emit_res.dedup();
        for id in emit_res.drain(..) {
            s.publish_reservation(&store, t, &id, out);
        }
        if bracketed {
            store.end_reservations(&sku_name);
        }

        // 4. Windows: this time's contributions and evictions under one write lock.
        s.settle_windows(&mut ctx, out);

        dirty_res.clear();
        s.dirty_res = dirty_res;
        dirty_locs.clear();
        s.dirty_locs = dirty_locs;
    }
}

/// Retires the row of a forgotten reservation: retracts what was published and leaves its last
/// state, marked [`Change::Forgotten`], for the sinks to keep as history.
pub(crate) fn retire(
    s: &Sku,
    id: &Name,
    published: Option<Published>,
    history: Option<Published>,
    out: &mut Vec<(Change, Diff)>,
) {
    if let Some(old) = published {
        out.push((Change::Reservation(reservation_row(s, id, old)), -1));
    }
    let Some(last) = history.or(published) else {
        return;
    };
    let row = Change::Reservation(reservation_row(s, id, last));
    if Some(last) != published {
        out.push((row.clone(), 1));
        out.push((row.clone(), -1));
    }
    out.push((Change::Forgotten(Box::new(row)), 1));
}

/// The row a reservation published.
pub(crate) fn reservation_row(s: &Sku, id: &Name, p: Published) -> ReservationRow {
    ReservationRow {
        reservation_id: Arc::clone(id),
        sku: Arc::clone(&s.name),
        location: Arc::clone(&s.locs[p.loc as usize].name),
        qty: p.qty,
        status: p.status,
        expires_at: p.expires_at,
    }
}

impl Sku {
    /// Publishes reservation `id`'s row as of `t` if it changed.
    pub fn publish_reservation(
        &mut self,
        store: &ViewStore,
        t: Time,
        id: &Name,
        out: &mut Vec<(Change, Diff)>,
    ) {
        let Some(res) = self.res.get_mut(id) else {
            return;
        };
        if let Some(history) = res.history.take() {
            let old = res.published.take();
            retire(self, id, old, Some(history), out);
            // Its view goes too; a tombstone or a new incarnation takes its place below.
            store.remove_reservation(id, &self.name);
        }
        let res = &self.res[id];
        let now = res.published_at(t, || {
            let (loc, ts, _) = res
                .live_at
                .expect("a live reservation is in its location's set");
            self.locs[loc as usize].live[&(ts, Arc::clone(id))]
                .held
                .expect("live reservations are allocated")
        });
        let forgotten = res.forgotten;
        if now == res.published {
            match forgotten {
                // Perhaps a reservation forgotten before it was ever published.
                Some(ended) => store.forget_reservation(id, &self.name, ended, t),
                // An orphan that took a tombstone's place: the tombstone goes.
                None if now.is_none() => store.remove_reservation(id, &self.name),
                None => {}
            }
            return;
        }
        let old = res.published;
        if let Some(old) = old {
            out.push((Change::Reservation(reservation_row(self, id, old)), -1));
        }
        let store_row = now.map(|p| reservation_row(self, id, p));
        if let Some(row) = &store_row {
            out.push((Change::Reservation(row.clone()), 1));
        }
        self.res.get_mut(id).expect("present").published = now;
        match (store_row, forgotten) {
            (Some(row), _) => store.publish_reservation(ReservationView { row, changed_at: t }),
            (None, Some(ended)) => store.forget_reservation(id, &self.name, ended, t),
            // A new incarnation that is only an orphan so far.
            (None, None) => store.remove_reservation(id, &self.name),
        }
    }
}
