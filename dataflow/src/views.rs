//! The read side: what the dataflow publishes for HTTP lookups.
//!
//! Each SKU is owned by exactly one worker, which publishes the SKU's stock, reservations and
//! windows after it has applied every event of a pipeline time `t` (and every expiry due at
//! `t`), tagging them with `changed_at = t`. Each worker then records the last pipeline time
//! every worker's ledger has completed (the frontier of the ledgers' output, computed by timely
//! over the whole cluster). A reader takes `g`, the least completed time over the workers, **before**
//! reading a value, and answers with `as_of = max(g, changed_at)`: the value reflects every event
//! admitted at or before that time for its keys, and no other. Readers never touch a worker
//! thread or a timely structure, so lookups scale with HTTP threads and never slow the dataflow.

use crate::forecast::eval::Evaluation;
use crate::forecast::{AtRisk, ForecastConfig, Forecaster, Issued, Served};
use crate::quality::Quality;
use crate::Time;
use dashmap::DashMap;
use parking_lot::RwLock;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use stockflow_types::config::WindowSpec;
use stockflow_types::rows::{ReservationRow, WindowFigures};
use stockflow_types::{Millis, Name};

/// The maps' hasher: foldhash with a per-process random seed (hashbrown's default), several
/// times cheaper than the standard SipHash on the hot path of every publication and request.
type Hasher = hashbrown::DefaultHashBuilder;

/// Stock of every location of one SKU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkuStock {
    /// Every location ever seen, in order (shared between versions).
    pub names: Arc<[Name]>,
    /// `(on_hand, reserved)` per location, aligned with `names`.
    pub figures: Vec<(i64, i64)>,
    /// The pipeline time of the last change.
    pub changed_at: Time,
}

/// One location's figures as read from a [`SkuStock`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocationStock<'a> {
    /// The location.
    pub location: &'a str,
    /// Units on hand.
    pub on_hand: i64,
    /// Units held by reservations.
    pub reserved: i64,
    /// `on_hand - reserved`.
    pub available: i64,
}

impl SkuStock {
    /// The locations in order.
    pub fn iter(&self) -> impl Iterator<Item = LocationStock<'_>> {
        self.names
            .iter()
            .zip(&self.figures)
            .map(|(n, (on_hand, reserved))| LocationStock {
                location: n,
                on_hand: *on_hand,
                reserved: *reserved,
                available: on_hand.saturating_sub(*reserved),
            })
    }

    /// One location.
    pub fn get(&self, location: &str) -> Option<LocationStock<'_>> {
        let i = self.names.binary_search_by(|n| (**n).cmp(location)).ok()?;
        self.iter().nth(i)
    }
}

/// One reservation as published.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReservationView {
    /// The row.
    pub row: ReservationRow,
    /// The pipeline time of the last change.
    pub changed_at: Time,
}

/// Key of one window of a SKU: (window size ms, window start, location).
pub type WindowKey = (Millis, Millis, Name);

/// The windows of one SKU, written only by the owning worker.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SkuWindows {
    /// Figures by window.
    pub windows: BTreeMap<WindowKey, WindowFigures>,
    /// The pipeline time of the last change.
    pub changed_at: Time,
}

/// The top sellers of one window: `(-units_sold, sku)`, so iteration order is the ranking.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TopList {
    /// Ranked entries, at most `top_k`.
    pub ranked: BTreeSet<(i64, Name)>,
    /// The pipeline time of the last change.
    pub changed_at: Time,
}

/// The ids of a SKU's reservations with a row, and a version that is odd while the owner
/// changes them (a seqlock: a reader that saw it odd or changed reads again).
#[derive(Debug, Default)]
struct SkuReservations {
    ids: BTreeSet<Name>,
    version: u64,
}

/// What is known of a reservation id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReservationLookup {
    /// It is held in the views.
    Found(ReservationView),
    /// It ended at log time `ended` and was forgotten `retention` later; only this tombstone
    /// remains (for another `retention`).
    Forgotten {
        /// When it ended (log time, epoch ms).
        ended: Millis,
        /// The pipeline time it was forgotten at.
        changed_at: Time,
    },
    /// Never seen, or forgotten long ago.
    Unknown,
}

/// Which SKU each reservation id owned by this process's workers belongs to, while its SKU's
/// ledger knows the reservation (written by the id owner, [`crate::ids`]): where a lookup by id
/// finds the SKU, and so the process that holds the reservation.
#[derive(Debug, Default)]
pub struct Registry {
    owners: DashMap<Name, Name, Hasher>,
}

impl Registry {
    /// The SKU `id` belongs to, if it is bound here.
    pub fn sku_of(&self, id: &str) -> Option<Name> {
        self.owners.get(id).map(|e| Arc::clone(e.value()))
    }

    pub(crate) fn insert(&self, id: &Name, sku: &Name) {
        self.owners.insert(Arc::clone(id), Arc::clone(sku));
    }

    pub(crate) fn remove(&self, id: &str) {
        self.owners.remove(id);
    }

    /// Ids bound (for memory figures and tests).
    pub fn len(&self) -> usize {
        self.owners.len()
    }

    /// Whether no id is bound.
    pub fn is_empty(&self) -> bool {
        self.owners.is_empty()
    }
}

/// Everything HTTP reads, shared between the worker threads (writers) and HTTP (readers).
#[derive(Debug)]
pub struct ViewStore {
    windows_config: Vec<WindowSpec>,
    top_k: usize,
    ledger_completed: Vec<AtomicU64>,
    top_completed: Vec<AtomicU64>,
    stock: DashMap<Name, SkuStock, Hasher>,
    reservations: DashMap<Name, ReservationView, Hasher>,
    /// The ids in `reservations`, by SKU (for a SKU's list of reservations); an entry stays
    /// once made (like the SKU itself), empty or not.
    by_sku: DashMap<Name, SkuReservations, Hasher>,
    /// Tombstones of forgotten reservations: its SKU, when it ended, and when it was forgotten.
    forgotten: DashMap<Name, (Name, Millis, Time), Hasher>,
    registry: Registry,
    windows: DashMap<Name, Arc<RwLock<SkuWindows>>, Hasher>,
    top: DashMap<(Millis, Millis), Arc<TopList>, Hasher>,
    forecast: ForecastViews,
    /// Per local worker: the data-quality signals of its rows.
    quality: Vec<RwLock<Quality>>,
}

/// What forecasting publishes: the served forecast per key, the at-risk rankings and the
/// evaluation, per local worker (merged when read).
#[derive(Debug, Default)]
pub struct ForecastViews {
    config: std::sync::OnceLock<Arc<ForecastConfig>>,
    served: DashMap<Name, BTreeMap<Name, Arc<Served>>, Hasher>,
    /// Per local worker: per horizon, per location, the keys most likely to run out.
    at_risk: Vec<RwLock<Vec<BTreeMap<Name, Vec<AtRisk>>>>>,
    /// Per local worker.
    evaluation: Vec<RwLock<Evaluation>>,
    /// Per local worker: keys kept, inputs pending, bytes the keys hold.
    sizes: Vec<(AtomicU64, AtomicU64, AtomicU64)>,
    /// Per local worker: stale keys per location.
    stale: Vec<RwLock<BTreeMap<Name, u64>>>,
}

impl ForecastViews {
    fn new(workers: usize) -> Self {
        ForecastViews {
            at_risk: (0..workers).map(|_| RwLock::default()).collect(),
            evaluation: (0..workers).map(|_| RwLock::default()).collect(),
            sizes: (0..workers).map(|_| Default::default()).collect(),
            stale: (0..workers).map(|_| RwLock::default()).collect(),
            ..Default::default()
        }
    }

    /// Per location, the keys whose features are stale (no event for a season of buckets) as
    /// of the latest boundary, over the local workers.
    pub fn stale(&self) -> BTreeMap<Name, u64> {
        let mut all: BTreeMap<Name, u64> = BTreeMap::new();
        for w in &self.stale {
            for (loc, n) in w.read().iter() {
                *all.entry(Name::clone(loc)).or_default() += n;
            }
        }
        all
    }

    /// The configuration forecasts run with (`None`: forecasting is off).
    pub fn config(&self) -> Option<&Arc<ForecastConfig>> {
        self.config.get()
    }

    /// Sets it (once, before the workers start).
    pub fn configure(&self, cfg: Arc<ForecastConfig>) {
        let _ = self.config.set(cfg);
    }

    /// The forecast served for (sku, location), if issued.
    pub fn served(&self, sku: &str, location: &str) -> Option<Arc<Served>> {
        self.served.get(sku)?.get(location).cloned()
    }

    /// The keys of one horizon (by index) most likely to run out, at `location` or anywhere.
    pub fn at_risk(&self, horizon: usize, location: Option<&str>, limit: usize) -> Vec<AtRisk> {
        let mut all = Vec::new();
        for w in &self.at_risk {
            let w = w.read();
            let Some(h) = w.get(horizon) else { continue };
            match location {
                Some(l) => all.extend(h.get(l).into_iter().flatten().cloned()),
                None => all.extend(h.values().flatten().cloned()),
            }
        }
        all.sort_by(AtRisk::rank);
        all.truncate(limit);
        all
    }

    /// The evaluation of every local worker, merged.
    pub fn evaluation(&self) -> Evaluation {
        let mut e = Evaluation::default();
        for w in &self.evaluation {
            e.merge(&w.read());
        }
        e
    }

    /// Keys kept, inputs pending and the bytes the keys hold (counted, `Forecaster::key_bytes`),
    /// over the local workers.
    pub fn sizes(&self) -> (u64, u64, u64) {
        self.sizes.iter().fold((0, 0, 0), |(k, p, m), (a, b, c)| {
            (
                k + a.load(Ordering::Relaxed),
                p + b.load(Ordering::Relaxed),
                m + c.load(Ordering::Relaxed),
            )
        })
    }

    /// Publishes what an advance of local worker `w`'s forecaster produced.
    pub(crate) fn publish(&self, w: usize, f: &Forecaster, issued: Issued) {
        if issued.at_risk.is_some() {
            // Counted once per boundary: a walk over the keys.
            self.sizes[w]
                .2
                .store(f.key_bytes() as u64, Ordering::Relaxed);
        }
        for (sku, loc, served) in issued.served {
            self.served
                .entry(sku)
                .or_default()
                .insert(loc, Arc::new(served));
        }
        for (sku, loc) in issued.forgotten {
            if let Some(mut m) = self.served.get_mut(&sku) {
                m.remove(&loc);
            }
        }
        if let Some(at_risk) = issued.at_risk {
            *self.at_risk[w].write() = at_risk;
        }
        if let Some(stale) = issued.stale {
            *self.stale[w].write() = stale;
        }
        if issued.scored || issued.late {
            self.evaluation[w].write().clone_from(&f.eval);
        }
        self.sizes[w].0.store(f.keys() as u64, Ordering::Relaxed);
        self.sizes[w].1.store(f.pending() as u64, Ordering::Relaxed);
    }
}

impl ViewStore {
    /// An empty store for `workers` local worker threads.
    pub fn new(workers: usize, windows_config: Vec<WindowSpec>, top_k: usize) -> Self {
        ViewStore {
            windows_config,
            top_k,
            ledger_completed: (0..workers).map(|_| AtomicU64::new(0)).collect(),
            top_completed: (0..workers).map(|_| AtomicU64::new(0)).collect(),
            stock: DashMap::default(),
            // Millions of entries: many small shards, so that a shard doubling its table
            // (under its write lock) blocks the readers of 1/256 of the ids for a short while.
            reservations: DashMap::with_hasher_and_shard_amount(Hasher::default(), 256),
            by_sku: DashMap::default(),
            forgotten: DashMap::default(),
            quality: (0..workers).map(|_| RwLock::default()).collect(),
            registry: Registry::default(),
            windows: DashMap::default(),
            top: DashMap::default(),
            forecast: ForecastViews::new(workers),
        }
    }

    /// The data-quality signals of every local worker's rows, per location (docs/data-quality.md).
    pub fn quality(&self) -> Quality {
        let mut q = Quality::default();
        for w in &self.quality {
            q.merge(&w.read());
        }
        q
    }

    /// Publishes local worker `w`'s data-quality signals.
    pub(crate) fn publish_quality(&self, w: usize, q: &Quality) {
        self.quality[w].write().clone_from(q);
    }

    /// What forecasting publishes.
    pub fn forecast(&self) -> &ForecastViews {
        &self.forecast
    }

    /// The configured windows.
    pub fn windows_config(&self) -> &[WindowSpec] {
        &self.windows_config
    }

    /// Worker threads of this process that publish here.
    pub fn local_workers(&self) -> usize {
        self.ledger_completed.len()
    }

    /// The largest `limit` the top view can serve.
    pub fn top_k(&self) -> usize {
        self.top_k
    }

    /// The least pipeline time that every local worker has completed: read it before a value.
    pub fn as_of(&self) -> Time {
        min_of(&self.ledger_completed)
    }

    /// As [`ViewStore::as_of`], for the top-sellers view (which trails the ledger slightly).
    pub fn top_as_of(&self) -> Time {
        min_of(&self.top_completed)
    }

    /// Stock of a SKU, if ever seen (a copy: the reader pays for it, not the dataflow).
    pub fn stock(&self, sku: &str) -> Option<SkuStock> {
        self.stock.get(sku).map(|e| e.value().clone())
    }

    /// A reservation, if seen and not yet forgotten (retention).
    pub fn reservation(&self, id: &str) -> Option<ReservationView> {
        self.reservations.get(id).map(|e| e.value().clone())
    }

    /// What is known of a reservation id: the reservation, its tombstone, or nothing.
    pub fn lookup_reservation(&self, id: &str) -> ReservationLookup {
        if let Some(r) = self.reservation(id) {
            return ReservationLookup::Found(r);
        }
        match self.forgotten.get(id) {
            Some(e) => ReservationLookup::Forgotten {
                ended: e.1,
                changed_at: e.2,
            },
            None => ReservationLookup::Unknown,
        }
    }

    /// Which SKU each reservation id owned here belongs to.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The windows of a SKU, if any.
    pub fn windows(&self, sku: &str) -> Option<Arc<RwLock<SkuWindows>>> {
        self.windows.get(sku).map(|e| Arc::clone(e.value()))
    }

    /// The ranking of one window, if anything sold in it.
    pub fn top(&self, window_ms: Millis, start: Millis) -> Option<Arc<TopList>> {
        self.top
            .get(&(window_ms, start))
            .map(|e| Arc::clone(e.value()))
    }

    /// The windows that currently have a ranking.
    pub fn top_windows(&self) -> Vec<(Millis, Millis)> {
        self.top.iter().map(|e| *e.key()).collect()
    }

    /// Number of SKUs with stock rows (for memory-per-key figures).
    pub fn sku_count(&self) -> usize {
        self.stock.len()
    }

    /// Number of (sku, location) rows.
    pub fn location_count(&self) -> usize {
        self.stock.iter().map(|e| e.value().names.len()).sum()
    }

    /// Number of reservations held.
    pub fn reservation_count(&self) -> usize {
        self.reservations.len()
    }

    /// Up to `limit` reservations of `sku` with a row (any status but forgotten), in id order,
    /// and how many it has in all: all as of one pipeline time (the owner's changes of one time
    /// are never seen in part).
    pub fn reservations_of(&self, sku: &str, limit: usize) -> (Vec<ReservationView>, usize) {
        // Optimistic: read the version, the ids, each row, and the version again; a change of
        // the SKU's reservations in between (a settle takes microseconds) means read again.
        let mut attempt = 0u32;
        loop {
            // The ids first, so that no shard of `reservations` is read under this one's lock.
            let (version, ids, total): (u64, Vec<Name>, usize) = match self.by_sku.get(sku) {
                Some(e) => (
                    e.version,
                    e.ids.iter().take(limit).cloned().collect(),
                    e.ids.len(),
                ),
                None => return (Vec::new(), 0),
            };
            let views = ids
                .iter()
                .filter_map(|id| self.reservations.get(&**id).map(|v| v.clone()))
                .collect();
            let now = self.by_sku.get(sku).map(|e| e.version);
            attempt += 1;
            // A worker descheduled mid-settle is waited for (~0.1 s at most); a stopped one
            // leaves its answers to the stopped check of every lookup.
            if (version.is_multiple_of(2) && now == Some(version)) || attempt >= 2000 {
                return (views, total);
            }
            if attempt < 1000 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(std::time::Duration::from_micros(100));
            }
        }
    }

    // ---- writers (the owning worker only) ----

    pub(crate) fn set_ledger_completed(&self, local_worker: usize, t: Time) {
        self.ledger_completed[local_worker].fetch_max(t, Ordering::Release);
    }

    pub(crate) fn set_top_completed(&self, local_worker: usize, t: Time) {
        self.top_completed[local_worker].fetch_max(t, Ordering::Release);
    }

    /// Updates a SKU's stock in place: no allocation once it exists (and its locations are known).
    pub(crate) fn publish_stock(
        &self,
        sku: &Name,
        names: &Arc<[Name]>,
        figures: &[(i64, i64)],
        t: Time,
    ) {
        match self.stock.get_mut(&**sku) {
            Some(mut e) => {
                let stock = e.value_mut();
                if !Arc::ptr_eq(&stock.names, names) {
                    stock.names = Arc::clone(names);
                }
                stock.figures.clear();
                stock.figures.extend_from_slice(figures);
                stock.changed_at = t;
            }
            None => {
                let stock = SkuStock {
                    names: Arc::clone(names),
                    figures: figures.to_vec(),
                    changed_at: t,
                };
                self.stock.insert(Arc::clone(sku), stock);
            }
        }
    }

    pub(crate) fn publish_reservation(&self, view: ReservationView) {
        if !self.forgotten.is_empty() {
            self.forgotten.remove(&*view.row.reservation_id);
        }
        let id = Arc::clone(&view.row.reservation_id);
        let sku = Arc::clone(&view.row.sku);
        // Stored inline: no allocation per change once the id is known.
        match self.reservations.insert(Arc::clone(&id), view) {
            Some(old) if old.row.sku == sku => {}
            old => {
                if let Some(old) = old {
                    // Another SKU's, whose ledger forgets it at this same time (`crate::ids`).
                    if let Some(mut e) = self.by_sku.get_mut(&*old.row.sku) {
                        e.ids.remove(&id);
                    }
                }
                self.by_sku.entry(sku).or_default().ids.insert(id);
            }
        }
    }

    /// `sku`'s reservation was forgotten: only a tombstone remains (unless another SKU's
    /// reservation took the id over at the same time, [`crate::ids`]).
    pub(crate) fn forget_reservation(&self, id: &Name, sku: &Name, ended: Millis, t: Time) {
        if self
            .reservations
            .get(&**id)
            .is_some_and(|v| v.row.sku != *sku)
        {
            return;
        }
        self.drop_reservation(id, sku);
        self.forgotten
            .insert(Arc::clone(id), (Arc::clone(sku), ended, t));
    }

    /// Nothing remains of `sku`'s reservation `id`.
    pub(crate) fn remove_reservation(&self, id: &str, sku: &str) {
        self.drop_reservation(id, sku);
        self.forgotten.remove_if(id, |_, tomb| *tomb.0 == *sku);
    }

    fn drop_reservation(&self, id: &str, sku: &str) {
        if let Some((_, view)) = self
            .reservations
            .remove_if(id, |_, view| *view.row.sku == *sku)
        {
            let sku = &view.row.sku;
            // The entry stays when empty: its version must never start again from 0 (a reader
            // that read version v, empty, could otherwise accept another time's v).
            if let Some(mut e) = self.by_sku.get_mut(&**sku) {
                e.ids.remove(id);
            }
        }
    }

    /// The owner begins changing `sku`'s reservations for one time: until
    /// [`ViewStore::end_reservations`], a reader of the SKU's list reads again.
    pub(crate) fn begin_reservations(&self, sku: &Name) {
        self.by_sku.entry(Arc::clone(sku)).or_default().version += 1;
    }

    /// The owner has published every change of `sku`'s reservations of this time.
    pub(crate) fn end_reservations(&self, sku: &str) {
        if let Some(mut e) = self.by_sku.get_mut(sku) {
            e.version += 1;
        }
    }

    pub(crate) fn windows_of(&self, sku: &Name) -> Arc<RwLock<SkuWindows>> {
        Arc::clone(self.windows.entry(Arc::clone(sku)).or_default().value())
    }

    pub(crate) fn update_top(
        &self,
        key: (Millis, Millis),
        t: Time,
        f: impl FnOnce(&mut BTreeSet<(i64, Name)>),
    ) {
        let mut ranked = self
            .top
            .get(&key)
            .map(|e| e.ranked.clone())
            .unwrap_or_default();
        f(&mut ranked);
        if ranked.is_empty() {
            self.top.remove(&key);
        } else {
            self.top.insert(
                key,
                Arc::new(TopList {
                    ranked,
                    changed_at: t,
                }),
            );
        }
    }
}

fn min_of(v: &[AtomicU64]) -> Time {
    v.iter()
        .map(|a| a.load(Ordering::Acquire))
        .min()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use stockflow_types::rows::{ReservationRow, Status};

    fn view(id: &str, status: Status, t: Time) -> ReservationView {
        ReservationView {
            row: ReservationRow {
                reservation_id: id.into(),
                sku: "S".into(),
                location: "L".into(),
                qty: 1,
                status,
                expires_at: 0,
            },
            changed_at: t,
        }
    }

    /// Two holds for stock that covers one swap places every time (as a count, then a release,
    /// would make them): a reader of the SKU's list must never see both held or neither, which
    /// reading the rows one by one as the owner rewrites them did.
    #[test]
    fn a_skus_reservations_are_read_as_of_one_time() {
        let store = Arc::new(ViewStore::new(1, Vec::new(), 1));
        let sku: Name = "S".into();
        let publish = |t: Time| {
            let (a, b) = if t.is_multiple_of(2) {
                (Status::Held, Status::Insufficient)
            } else {
                (Status::Insufficient, Status::Held)
            };
            store.begin_reservations(&sku);
            store.publish_reservation(view("r1", a, t));
            std::thread::yield_now(); // a reader may run here
            store.publish_reservation(view("r2", b, t));
            store.end_reservations(&sku);
        };
        publish(0);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (store, stop) = (Arc::clone(&store), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut reads = 0;
                while !stop.load(Ordering::Relaxed) || reads < 1000 {
                    let (views, total) = store.reservations_of("S", 10);
                    assert_eq!(total, 2);
                    let held = views
                        .iter()
                        .filter(|v| v.row.status == Status::Held)
                        .count();
                    assert_eq!(held, 1, "one time's rows: {views:?}");
                    assert_eq!(views[0].changed_at, views[1].changed_at);
                    reads += 1;
                }
                reads
            })
        };
        for t in 1..20_000 {
            publish(t);
            if t % 64 == 0 {
                std::thread::sleep(std::time::Duration::from_micros(50));
            }
        }
        stop.store(true, Ordering::Relaxed);
        let reads = reader.join().expect("the reader saw one time per answer");
        assert!(reads >= 1000);
    }
}
