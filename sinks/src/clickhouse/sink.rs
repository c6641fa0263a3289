//! The operator that hands changes over, and the task that writes them.

use super::lease::Lease;
use super::schema::{ddl, Features, Forecast, Reservation, SalesWindow, StockLevel};
use clickhouse::Client;
use differential_dataflow::{AsCollection, VecCollection};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use stockflow_types::config::{ClickHouseConfig, WindowSpec};
use stockflow_types::progress::Progress;
use stockflow_types::rows::{Change, WindowFigures, WindowRow};
use stockflow_types::{Millis, Name};
use timely::dataflow::operators::core::Inspect;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

type Update = (Change, Millis, i64);

/// What the workers hold to feed the sink: cheap to clone.
#[derive(Clone)]
pub struct SinkHandle {
    tx: UnboundedSender<Vec<Update>>,
    frontiers: Arc<[AtomicU64]>,
    progress: Arc<Progress>,
}

/// Passes `changes` through unchanged, handing every update to the sink and publishing the
/// frontier of local worker `worker`.
pub fn attach<'s>(
    changes: VecCollection<'s, Millis, Change, i64>,
    handle: SinkHandle,
    worker: usize,
) -> VecCollection<'s, Millis, Change, i64> {
    changes
        .inner
        .inspect_core(move |event| match event {
            Ok((_, data)) if !data.is_empty() => {
                handle.progress.add_buffered(data.len());
                // The receiver lives until every handle is dropped.
                let _ = handle.tx.send(data.clone());
            }
            Ok(_) => {}
            // Called before the data of the same activation, all of which is at or beyond the
            // new frontier: once the task has read a frontier and then drained the channel, it
            // holds every update before that frontier.
            Err(frontier) => handle.frontiers[worker].store(
                frontier.iter().copied().min().unwrap_or(Millis::MAX),
                Ordering::Release,
            ),
        })
        .as_collection()
}

/// The sink task and what stops it.
pub struct ClickHouseSink {
    handle: Option<SinkHandle>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl ClickHouseSink {
    /// Starts the task on `runtime` for `workers` local workers. It creates the database and
    /// tables when it first reaches the server. `restored` says which checkpoint the pipeline
    /// restored, if it did: the rows an earlier run wrote after it are rewritten from the
    /// restored state (see the module documentation).
    ///
    /// With `clickhouse.writer_lease`, `replica` names this replica in the lease: it writes only
    /// while it holds it (see [`super::lease`]).
    pub fn start(
        runtime: &tokio::runtime::Handle,
        cfg: &ClickHouseConfig,
        windows: &[WindowSpec],
        workers: usize,
        progress: Arc<Progress>,
        restored: Option<Restored>,
        replica: &str,
    ) -> Result<Self, super::ClientError> {
        let (tx, rx) = unbounded_channel();
        let frontiers: Arc<[AtomicU64]> = (0..workers).map(|_| AtomicU64::new(0)).collect();
        let stop = Arc::new(AtomicBool::new(false));
        // Without a database for the DDL (the database may not exist yet), with it for inserts.
        let server = super::client(cfg)?;
        let writer = Writer {
            client: server.clone().with_database(&cfg.database),
            server,
            cfg: cfg.clone(),
            window_names: windows
                .iter()
                .map(|w| (w.size_ms, w.name.clone()))
                .collect(),
            rx,
            frontiers: Arc::clone(&frontiers),
            progress: Arc::clone(&progress),
            stop: Arc::clone(&stop),
            pending: BTreeMap::new(),
            staged: HashMap::new(),
            staged_through: 0,
            durable: 0,
            schema_ready: false,
            times: TimeTypes::default(),
            restored_at: restored.as_ref().map(|r| r.at),
            rewrite: restored
                .as_ref()
                .and_then(|r| r.sink_changed.then_some(Rewrite::All)),
            owns: restored.and_then(|r| r.owns),
            lease: cfg
                .writer_lease
                .then(|| Lease::new(replica.to_owned(), cfg.lease_ttl)),
            writer: false,
            takeover: None,
            mirror: HashMap::new(),
            version_floor: 0,
            unseen: HashSet::new(),
        };
        let task = runtime.spawn(writer.run());
        Ok(ClickHouseSink {
            handle: Some(SinkHandle {
                tx,
                frontiers,
                progress,
            }),
            stop,
            task,
        })
    }

    /// A handle for a worker.
    pub fn handle(&self) -> SinkHandle {
        self.handle.clone().expect("until finish")
    }

    /// Writes what is complete and stops, waiting at most `timeout` (ClickHouse may be down:
    /// what is not written by then is not durable, its offsets are not stored, and the next
    /// start writes it again).
    pub async fn finish(mut self, timeout: Duration) {
        self.handle.take();
        self.stop.store(true, Ordering::Release);
        if tokio::time::timeout(timeout, &mut self.task).await.is_err() {
            tracing::warn!(
                "ClickHouse did not take the last changes in time; the next start writes them"
            );
            self.task.abort();
        }
    }
}

/// The checkpoint a pipeline restored, as the sink needs to know it.
#[derive(Clone)]
pub struct Restored {
    /// Its pipeline time.
    pub at: Millis,
    /// It was written while another ClickHouse database, or none, was the sink: this one may
    /// hold nothing of its state, so all of it is written.
    pub sink_changed: bool,
    /// In a cluster, whether this process owns a SKU: the tables hold every process's rows,
    /// and only this process's own are rewritten (or deleted) from its restored state.
    pub owns: Option<Owns>,
}

/// Whether this process owns a SKU.
pub type Owns = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// What the restored state must write again.
#[derive(Debug)]
enum Rewrite {
    /// The keys an earlier run wrote after the checkpoint.
    Keys(HashSet<Key>),
    /// Everything: the tables hold nothing of the checkpoint's state.
    All,
}

impl Rewrite {
    fn contains(&self, k: &Key) -> bool {
        match self {
            Rewrite::Keys(keys) => keys.contains(k),
            Rewrite::All => true,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
enum Key {
    Stock(Name, Name),
    Reservation(Name),
    Window(Millis, Millis, Name, Name),
    /// (model, sku, location, issued_at, buckets): the table's order key.
    Forecast(Name, Name, Name, Millis, u32),
    Features(Name, Name, Millis),
}

fn key(c: &Change) -> Key {
    match c {
        Change::Stock(r) => Key::Stock(r.sku.clone(), r.location.clone()),
        Change::Reservation(r) => Key::Reservation(r.reservation_id.clone()),
        Change::Window(r) => Key::Window(
            r.window_ms,
            r.window_start,
            r.sku.clone(),
            r.location.clone(),
        ),
        Change::Forecast(r) => Key::Forecast(
            r.model.clone(),
            r.sku.clone(),
            r.location.clone(),
            r.issued_at,
            r.buckets,
        ),
        Change::Features(r) => Key::Features(r.sku.clone(), r.location.clone(), r.issued_at),
        Change::Forgotten(row) => key(row),
    }
}

/// A key as ClickHouse keeps it: window starts in whole seconds.
fn stored_key(c: &Change) -> Key {
    match key(c) {
        Key::Window(size, start, sku, loc) => Key::Window(size, start / 1000 * 1000, sku, loc),
        k => k,
    }
}

/// The net updates of one key since its last write, and the time of the latest.
#[derive(Default)]
struct Staged {
    rows: Vec<(Change, i64)>,
    version: Millis,
    /// The latest row inserted since the last write (what ClickHouse keeps as history if the
    /// pipeline forgets the row before it is written).
    last_inserted: Option<Change>,
    /// An earlier run wrote this key after the restored checkpoint, at versions up to its
    /// crash: it is written again above them (see `Writer::rewrite`).
    rewrite: bool,
    /// The pipeline forgot the row in this batch (a [`Change::Forgotten`] marker): its
    /// disappearance is not a deletion, and ClickHouse keeps its last state.
    forgotten: bool,
}

impl Staged {
    fn add(&mut self, c: Change, diff: i64, t: Millis) {
        self.version = self.version.max(t);
        if matches!(c, Change::Forgotten(_)) {
            self.forgotten = true;
            return;
        }
        if matches!(c, Change::Forecast(_) | Change::Features(_)) {
            // Appended rows: the latest is written as it is, and nothing is kept of it after.
            self.forgotten = true;
            self.last_inserted = Some(c);
            return;
        }
        if diff > 0 {
            self.last_inserted = Some(c.clone());
        }
        match self.rows.iter().position(|(r, _)| *r == c) {
            Some(i) => {
                self.rows[i].1 += diff;
                if self.rows[i].1 == 0 {
                    self.rows.swap_remove(i);
                }
            }
            None => self.rows.push((c, diff)),
        }
    }

    /// The row to write and whether it is a deletion; `None` if nothing changed (for ClickHouse).
    fn outcome(&self) -> Option<(&Change, bool)> {
        if let Some((c, _)) = self.rows.iter().find(|(_, d)| *d > 0) {
            return Some((c, false));
        }
        if self.forgotten {
            // Forgotten, not deleted: its last state stays, written if it never was (it
            // appeared or changed in this batch).
            return self.last_inserted.as_ref().map(|c| (c, false));
        }
        self.rows.first().map(|(c, _)| (c, true))
    }
}

struct Writer {
    server: Client,
    client: Client,
    cfg: ClickHouseConfig,
    window_names: HashMap<Millis, String>,
    rx: UnboundedReceiver<Vec<Update>>,
    frontiers: Arc<[AtomicU64]>,
    progress: Arc<Progress>,
    stop: Arc<AtomicBool>,
    /// Updates at times some worker has not completed.
    pending: BTreeMap<Millis, Vec<(Change, i64)>>,
    /// Net updates of complete times, one entry per key.
    staged: HashMap<Key, Staged>,
    /// `staged` holds every update before this time.
    staged_through: Millis,
    /// ClickHouse holds every update before this time.
    durable: Millis,
    schema_ready: bool,
    /// The time columns' types, read once the tables exist.
    times: TimeTypes,
    /// The time of the restored checkpoint, if any.
    restored_at: Option<Millis>,
    /// The keys an earlier run wrote after `restored_at` (read from ClickHouse once): their
    /// restored rows are written again, so that no row keeps a value the restored state does
    /// not reach (the crashed run may have written changes that the replay nets out).
    rewrite: Option<Rewrite>,
    /// In a cluster: which SKUs are this process's (see [`Restored::owns`]).
    owns: Option<Owns>,
    /// Among replicas: the writer lease; `None` when this process always writes.
    lease: Option<Lease>,
    /// Whether this replica held the lease at the last look.
    writer: bool,
    /// The catch-up request made on winning the lease: the takeover waits for its answer.
    takeover: Option<u64>,
    /// With a lease: every key's latest row (and whether it is deleted), so that a replica that
    /// takes over can write all of it above its predecessor's versions.
    mirror: HashMap<Key, (Change, bool)>,
    /// Versions written are at least this: above every version in the tables when this run
    /// first reached them, or when it took over the lease.
    version_floor: Millis,
    /// Keys to rewrite that neither the restored state nor the replay has touched yet: windows
    /// among them, which the crashed run created after the checkpoint and the replay nets out,
    /// are written as deleted once the replay has caught up.
    unseen: HashSet<Key>,
}

impl Writer {
    async fn run(mut self) {
        let mut last_write = Instant::now();
        // Ping at once: /readyz waits for the first contact.
        let mut last_ping = Instant::now()
            .checked_sub(Duration::from_secs(2))
            .unwrap_or_else(Instant::now);
        loop {
            let stopping = self.stop.load(Ordering::Acquire);
            if let (Some(at), None) = (self.restored_at, &self.rewrite) {
                // Nothing is staged before the keys to rewrite are known.
                match self.written_after(at).await {
                    Ok(rewrite) => {
                        match &rewrite {
                            Rewrite::Keys(keys) => tracing::info!(keys = keys.len(), after = at, "rows written after the restored checkpoint are rewritten"),
                            Rewrite::All => tracing::info!(at, "ClickHouse holds no tables yet: the whole restored state is written"),
                        }
                        if let Rewrite::Keys(keys) = &rewrite {
                            self.unseen = keys.clone();
                        }
                        self.rewrite = Some(rewrite);
                        self.progress.set_clickhouse_ok(true);
                    }
                    Err(e) => {
                        self.progress.set_clickhouse_ok(false);
                        tracing::warn!(error = %with_causes(&e), "reading what ClickHouse holds after the restored checkpoint failed; retrying");
                        if stopping {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                }
            }
            self.stage();
            let full = self.staged.len() >= self.cfg.batch_rows;
            let due = full || stopping || last_write.elapsed() >= self.cfg.flush_interval;
            // While the pipeline replays its start backlog, intermediate states would make
            // ClickHouse go back in time: hold them (one row per key) unless the batch is full.
            let replaying = self.staged_through <= self.progress.caught_up();
            if !replaying && !self.unseen.is_empty() {
                self.delete_unseen_windows();
            }
            if self.lease.is_some() {
                self.follow_lease().await;
            }
            if due && self.staged_through > self.durable && (!replaying || full || stopping) {
                if self.lease.is_some() && !self.writer {
                    self.settle(); // not the writer: the writer writes these rows
                } else if self.write().await {
                    last_ping = Instant::now();
                }
                last_write = Instant::now();
            }
            // Health for /readyz when no write has talked to the server lately.
            if !stopping && last_ping.elapsed() >= Duration::from_secs(2) {
                let ok = self.server.query("SELECT 1").execute().await.is_ok();
                self.progress.set_clickhouse_ok(ok);
                last_ping = Instant::now();
            }
            if stopping {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Moves the updates of every complete time into `staged`.
    fn stage(&mut self) {
        // Frontier first, then drain: see `attach`.
        let frontier = self
            .frontiers
            .iter()
            .map(|f| f.load(Ordering::Acquire))
            .min()
            .unwrap_or(Millis::MAX);
        while let Ok(batch) = self.rx.try_recv() {
            for (c, t, d) in batch {
                self.pending.entry(t).or_default().push((c, d));
            }
        }
        if frontier <= self.staged_through {
            return;
        }
        let later = self.pending.split_off(&frontier);
        let (keys_before, mut folded) = (self.staged.len(), 0);
        for (t, updates) in std::mem::replace(&mut self.pending, later) {
            folded += updates.len();
            let restored = Some(t) == self.restored_at;
            for (c, d) in updates {
                if !self.unseen.is_empty() {
                    self.unseen.remove(&stored_key(&c));
                }
                if restored && self.lease.is_some() && d > 0 {
                    // A replica that takes over later writes the restored state too.
                    self.mirror.insert(key(&c), (c.clone(), false));
                }
                if restored {
                    // The restored state: ClickHouse holds it already (a checkpoint is published
                    // only once the sink has written its time), but for the keys written since.
                    let again = self
                        .rewrite
                        .as_ref()
                        .is_some_and(|k| k.contains(&stored_key(&c)));
                    if !again {
                        continue;
                    }
                    let staged = self.staged.entry(key(&c)).or_default();
                    staged.rewrite = true;
                    staged.add(c, d, t);
                    continue;
                }
                self.staged.entry(key(&c)).or_default().add(c, d, t);
            }
        }
        // The buffer now holds pending rows (one per key) instead of the folded changes.
        self.progress.add_buffered(self.staged.len() - keys_before);
        self.progress.remove_buffered(folded);
        self.staged_through = frontier;
        self.progress.set_sink_absorbed(frontier);
    }

    /// Writes `staged`, retrying until ClickHouse takes it (or the sink is stopping). Returns
    /// whether it talked to the server.
    async fn write(&mut self) -> bool {
        let mut backoff = Duration::from_millis(100);
        let mut contacted = false;
        // Times without changes are durable without asking the server.
        while self.staged.values().any(|s| s.outcome().is_some()) {
            if self.lease.as_ref().is_some_and(|l| !l.held()) {
                // The lease ran out while retrying: the successor writes these rows.
                self.writer = false;
                self.settle(); // not the writer: the writer writes these rows
                return contacted;
            }
            contacted = true;
            let started = Instant::now();
            match self.try_write().await {
                Ok(rows) => {
                    metrics::histogram!("stockflow_clickhouse_insert_seconds")
                        .record(started.elapsed().as_secs_f64());
                    metrics::counter!("stockflow_clickhouse_rows_written_total").increment(rows);
                    self.progress.set_clickhouse_ok(true);
                    break;
                }
                Err(e) => {
                    metrics::counter!("stockflow_clickhouse_insert_failures_total").increment(1);
                    metrics::gauge!("stockflow_clickhouse_buffered_changes")
                        .set(self.progress.sink_buffered() as f64);
                    self.progress.set_clickhouse_ok(false);
                    tracing::warn!(error = %with_causes(&e), retry_in = ?backoff, keys = self.staged.len(), "writing to ClickHouse failed");
                    if self.stop.load(Ordering::Acquire) {
                        return contacted;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.cfg.max_backoff);
                }
            }
        }
        self.settle();
        metrics::gauge!("stockflow_clickhouse_durable_time_seconds")
            .set(self.durable as f64 / 1000.0);
        metrics::gauge!("stockflow_clickhouse_buffered_changes")
            .set(self.progress.sink_buffered() as f64);
        contacted
    }

    /// Creates the database and tables if missing, and reads the time columns' types.
    async fn ensure_schema(&mut self) -> Result<(), clickhouse::error::Error> {
        let version = self
            .server
            .query("SELECT version()")
            .fetch_one::<String>()
            .await?;
        let mut statements = ddl(&self.cfg.database, super::schema::modern(&version));
        if self.lease.is_some() {
            statements.push(super::lease::ddl(&self.cfg.database));
        }
        for statement in statements {
            self.server.query(&statement).execute().await?;
        }
        self.times = self.time_types().await?;
        if self.lease.is_none() {
            // Versions are pipeline times, read off this host's clock: after a restart on a
            // host whose clock is behind the crashed run's, every row would be written below
            // that run's and lose to it. Everything this run writes goes above them. (Under a
            // lease, taking it over does the same.)
            let highest = self.highest_version().await?;
            self.version_floor = self.version_floor.max(highest.saturating_add(1));
        }
        self.schema_ready = true;
        Ok(())
    }

    async fn try_write(&mut self) -> Result<u64, clickhouse::error::Error> {
        if !self.schema_ready {
            self.ensure_schema().await?;
        }
        let times = self.times;
        // Under a lease an insert must end before the lease could pass to another replica.
        let timeouts = Some(match &self.lease {
            Some(_) => (self.cfg.lease_ttl / 3).min(Duration::from_secs(30)),
            None => Duration::from_secs(30),
        });
        let mut stock = self
            .client
            .insert::<StockLevel<'_>>("stock_levels")
            .await?
            .with_timeouts(timeouts, timeouts);
        let mut reservations = self
            .client
            .insert::<Reservation<'_>>("reservations")
            .await?
            .with_timeouts(timeouts, timeouts);
        let mut windows = self
            .client
            .insert::<SalesWindow<'_>>("sales_windows")
            .await?
            .with_timeouts(timeouts, timeouts);
        // Forecast rows only when forecasting writes them: no empty inserts otherwise.
        let (mut forecasts, mut features) = (None, None);
        let mut rows = 0;
        for staged in self.staged.values() {
            let Some((change, deleted)) = staged.outcome() else {
                continue;
            };
            // A rewritten key goes above whatever the earlier run wrote: it is written only once
            // the replay has caught up, at a frontier past that run's last time.
            let v = if staged.rewrite {
                staged.version.max(self.staged_through.saturating_sub(1))
            } else {
                staged.version
            }
            .max(self.version_floor);
            match change {
                Change::Stock(r) => stock.write(&StockLevel::new(r, v, deleted)).await?,
                Change::Reservation(r) => {
                    reservations
                        .write(&Reservation::new(r, v, deleted, times.expires_at))
                        .await?
                }
                Change::Window(r) => {
                    let name = self
                        .window_names
                        .get(&r.window_ms)
                        .map_or("?", String::as_str);
                    windows
                        .write(&SalesWindow::new(r, name, v, deleted, times.window_start))
                        .await?
                }
                Change::Forecast(r) => {
                    let insert = match &mut forecasts {
                        Some(i) => i,
                        None => forecasts.insert(
                            self.client
                                .insert::<Forecast<'_>>("forecasts")
                                .await?
                                .with_timeouts(timeouts, timeouts),
                        ),
                    };
                    insert
                        .write(&Forecast::new(r, v, deleted, times.forecasts))
                        .await?
                }
                Change::Features(r) => {
                    let insert = match &mut features {
                        Some(i) => i,
                        None => features.insert(
                            self.client
                                .insert::<Features<'_>>("forecast_features")
                                .await?
                                .with_timeouts(timeouts, timeouts),
                        ),
                    };
                    insert
                        .write(&Features::new(r, v, deleted, times.features))
                        .await?
                }
                Change::Forgotten(_) => unreachable!("markers are not staged as rows"),
            }
            rows += 1;
        }
        stock.end().await?;
        reservations.end().await?;
        windows.end().await?;
        if let Some(i) = forecasts {
            i.end().await?;
        }
        if let Some(i) = features {
            i.end().await?;
        }
        Ok(rows)
    }
}

impl Writer {
    /// Renews or takes the writer lease when due; on taking it, stages every key's latest row
    /// to be written above whatever the previous writer wrote.
    async fn follow_lease(&mut self) {
        if !self.schema_ready {
            if let Err(e) = self.ensure_schema().await {
                self.progress.set_clickhouse_ok(false);
                tracing::warn!(error = %with_causes(&e), "creating the ClickHouse tables failed; retrying");
                return;
            }
        }
        let Some(lease) = self.lease.as_mut() else {
            return;
        };
        let writer = lease.refresh(&self.client).await;
        if !writer {
            self.takeover = None;
        }
        if writer && !self.writer {
            // Not before this replica has read what the previous writer may have: everything
            // in the log as of now (else its older rows would go above the newer ones).
            let request = *self
                .takeover
                .get_or_insert_with(|| self.progress.ask_catch_up());
            match self.progress.caught_up_to(request) {
                Some(t) if self.staged_through > t => {}
                _ => return, // the lease is held, and nobody writes meanwhile
            }
            self.takeover = None;
            match self.highest_version().await {
                Ok(highest) => {
                    self.version_floor = highest + 1;
                    let before = self.staged.len();
                    for (k, (c, deleted)) in &self.mirror {
                        let staged = self.staged.entry(k.clone()).or_default();
                        if staged.rows.is_empty() && !staged.forgotten {
                            staged.add(
                                c.clone(),
                                if *deleted { -1 } else { 1 },
                                self.version_floor,
                            );
                        }
                    }
                    self.progress.add_buffered(self.staged.len() - before);
                    tracing::info!(keys = self.mirror.len(), above = highest, "took over writing ClickHouse: every key is written again above the previous writer's versions");
                }
                Err(e) => {
                    tracing::warn!(error = %with_causes(&e), "reading the previous writer's versions failed; not writing yet");
                    return;
                }
            }
        }
        self.writer = writer;
    }

    /// The highest version any writer has written.
    async fn highest_version(&self) -> Result<Millis, clickhouse::error::Error> {
        let mut highest = 0;
        for table in [
            "stock_levels",
            "reservations",
            "sales_windows",
            "forecasts",
            "forecast_features",
        ] {
            let v = self
                .client
                .query(&format!("SELECT max(version) FROM {table}"))
                .fetch_one::<u64>()
                .await?;
            highest = highest.max(v);
        }
        Ok(highest)
    }

    /// What is staged is written (or, standing by, left to the writer): remembered for a
    /// takeover under a lease, out of the buffer, durable.
    fn settle(&mut self) {
        if self.lease.is_some() {
            self.remember_written();
        }
        self.progress.remove_buffered(self.staged.len());
        self.staged.clear();
        self.durable = self.staged_through;
        self.progress.set_sink_durable(self.durable);
    }

    /// Notes every staged outcome in the mirror. A row the pipeline forgot leaves it: ClickHouse
    /// keeps its last state as history, and a successor has nothing to write for it.
    fn remember_written(&mut self) {
        for (k, staged) in &self.staged {
            if staged.forgotten {
                self.mirror.remove(k);
            } else if let Some((c, deleted)) = staged.outcome() {
                self.mirror.insert(k.clone(), (c.clone(), deleted));
            }
        }
    }

    /// Windows the crashed run wrote after the restored checkpoint that exist neither in the
    /// restored state nor after the replay: written as deleted, above that run's versions.
    fn delete_unseen_windows(&mut self) {
        for k in std::mem::take(&mut self.unseen) {
            let Key::Window(window_ms, window_start, sku, location) = k.clone() else {
                continue; // stock rows never disappear; reservations stay as history
            };
            let row = Change::Window(WindowRow {
                window_ms,
                window_start,
                sku,
                location,
                figures: WindowFigures::default(),
            });
            let staged = self.staged.entry(k).or_default();
            staged.rewrite = true;
            staged.add(row, -1, self.staged_through.saturating_sub(1));
            self.progress.add_buffered(1);
        }
    }

    /// The keys of every row ClickHouse holds with a version after `at`; everything if a table
    /// is missing (the restored state is not there at all).
    async fn written_after(&self, at: Millis) -> Result<Rewrite, clickhouse::error::Error> {
        use super::schema::{ReservationKey, StockKey, WindowKey};
        let by_name: HashMap<&str, Millis> = self
            .window_names
            .iter()
            .map(|(ms, name)| (name.as_str(), *ms))
            .collect();
        let Some(stock) = self
            .keys_after::<StockKey>("sku, location FROM stock_levels", "sku, location", at)
            .await?
        else {
            return Ok(Rewrite::All);
        };
        let Some(reservations) = self
            .keys_after::<ReservationKey>("reservation_id FROM reservations", "reservation_id", at)
            .await?
        else {
            return Ok(Rewrite::All);
        };
        let start_ms = if self.time_types().await?.window_start {
            "toUInt64(toUnixTimestamp64Milli(window_start))"
        } else {
            "toUInt64(toUInt32(window_start)) * 1000"
        };
        let Some(windows) = self
            .keys_after::<WindowKey>(
                &format!("window, {start_ms} AS start_ms, sku, location FROM sales_windows"),
                "window, start_ms, sku, location",
                at,
            )
            .await?
        else {
            return Ok(Rewrite::All);
        };
        let mine = |sku: &str| self.owns.as_ref().is_none_or(|owns| owns(sku));
        let mut keys: HashSet<Key> = stock
            .into_iter()
            .filter(|r| mine(&r.sku))
            .map(|r| Key::Stock(r.sku.into(), r.location.into()))
            .collect();
        keys.extend(
            reservations
                .into_iter()
                .map(|r| Key::Reservation(r.reservation_id.into())),
        );
        keys.extend(
            windows
                .into_iter()
                .filter(|r| mine(&r.sku))
                .filter_map(|r| {
                    let size = *by_name.get(r.window.as_str())?;
                    Some(Key::Window(
                        size,
                        r.window_start,
                        r.sku.into(),
                        r.location.into(),
                    ))
                }),
        );
        Ok(Rewrite::Keys(keys))
    }

    /// Which time columns of the existing tables are `DateTime64` (milliseconds) rather than
    /// `DateTime` (seconds): a table keeps the types it was created with, whatever the server.
    async fn time_types(&self) -> Result<TimeTypes, clickhouse::error::Error> {
        #[derive(clickhouse::Row, serde::Deserialize)]
        struct Column {
            table: String,
            precise: u8,
        }
        let columns = self
            .server
            .query(
                "SELECT table, toUInt8(startsWith(type, 'DateTime64')) AS precise \
                 FROM system.columns WHERE database = ? AND \
                 ((table = 'reservations' AND name = 'expires_at') \
                 OR (table = 'sales_windows' AND name = 'window_start') \
                 OR (table IN ('forecasts', 'forecast_features') AND name = 'issued_at'))",
            )
            .bind(&self.cfg.database)
            .fetch_all::<Column>()
            .await?;
        let precise = |table: &str| columns.iter().any(|c| c.table == table && c.precise == 1);
        Ok(TimeTypes {
            expires_at: precise("reservations"),
            window_start: precise("sales_windows"),
            forecasts: precise("forecasts"),
            features: precise("forecast_features"),
        })
    }

    /// `SELECT {what} WHERE version > at GROUP BY {group}`; `None` if the table is missing.
    async fn keys_after<R>(
        &self,
        what: &str,
        group: &str,
        at: Millis,
    ) -> Result<Option<Vec<R>>, clickhouse::error::Error>
    where
        R: clickhouse::RowOwned + clickhouse::RowRead,
    {
        let sql = format!("SELECT {what} WHERE version > ? GROUP BY {group}");
        match self.client.query(&sql).bind(at).fetch_all::<R>().await {
            Ok(rows) => Ok(Some(rows)),
            Err(e) => {
                let text = e.to_string();
                // No table (or database) yet: nothing of the checkpoint's state is there.
                if text.contains("Code: 60")
                    || text.contains("Code: 81")
                    || text.contains("doesn't exist")
                {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }
}

/// Whether each time column is `DateTime64(3)` (else `DateTime`).
#[derive(Clone, Copy, Debug, Default)]
struct TimeTypes {
    expires_at: bool,
    window_start: bool,
    /// `forecasts.issued_at`, `start` and `end`.
    forecasts: bool,
    /// `forecast_features.issued_at`.
    features: bool,
}

/// An error with its chain of causes: "network error: client error (Connect)" alone hides
/// that the certificate was refused.
fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use stockflow_types::rows::StockRow;

    fn stock(on_hand: i64) -> Change {
        Change::Stock(StockRow {
            sku: "A".into(),
            location: "L".into(),
            on_hand,
            reserved: 0,
            available: on_hand,
        })
    }

    #[test]
    fn forgotten_rows_stay_as_history_deleted_ones_do_not() {
        let forgotten = |c: &Change| Change::Forgotten(Box::new(c.clone()));
        // Forgotten after it was written: nothing to write.
        let mut s = Staged::default();
        s.add(stock(1), -1, 10);
        s.add(forgotten(&stock(1)), 1, 10);
        assert_eq!(s.outcome(), None);
        // Changed and forgotten in one batch: its last state is written, not deleted.
        let mut s = Staged::default();
        s.add(stock(1), -1, 10);
        s.add(stock(2), 1, 10);
        s.add(stock(2), -1, 11);
        s.add(forgotten(&stock(2)), 1, 11);
        assert_eq!(s.outcome(), Some((&stock(2), false)));
        // Appeared and forgotten in one batch.
        let mut s = Staged::default();
        s.add(stock(3), 1, 10);
        s.add(stock(3), -1, 10);
        s.add(forgotten(&stock(3)), 1, 10);
        assert_eq!(s.outcome(), Some((&stock(3), false)));
        // Ceased to exist (no marker): a deletion.
        let mut s = Staged::default();
        s.add(stock(1), -1, 10);
        assert_eq!(s.outcome(), Some((&stock(1), true)));
    }

    #[test]
    fn appended_rows_write_their_latest_and_are_not_kept() {
        use stockflow_types::rows::{Float, ForecastRow};
        let forecast = |actual: Option<u64>| {
            Change::Forecast(Box::new(ForecastRow {
                sku: "A".into(),
                location: "L".into(),
                model: "pooled:1".into(),
                arm: "A".into(),
                segment: "smooth".into(),
                issued_at: 1000,
                end: 2000,
                buckets: 1,
                mean: Float(1.5),
                q: [1, 3, 4, 5],
                stockout: Float(0.1),
                available: 9,
                scale: Float(1.0),
                actual,
                censored: false,
            }))
        };
        // Issued, then scored in the same batch: the scored row, not a deletion.
        let mut s = Staged::default();
        s.add(forecast(None), 1, 10);
        s.add(forecast(Some(2)), 1, 11);
        assert_eq!(s.outcome(), Some((&forecast(Some(2)), false)));
        assert_eq!(s.version, 11);
        assert!(s.forgotten, "a takeover has nothing to write again for it");
    }

    #[test]
    fn staged_rows_net_out() {
        let mut s = Staged::default();
        s.add(stock(1), 1, 10);
        s.add(stock(1), -1, 11);
        s.add(stock(2), 1, 11);
        assert_eq!(s.outcome(), Some((&stock(2), false)));
        assert_eq!(s.version, 11);
        let mut s = Staged::default();
        s.add(stock(2), -1, 12);
        assert_eq!(s.outcome(), Some((&stock(2), true)));
        let mut s = Staged::default();
        s.add(stock(2), -1, 12);
        s.add(stock(2), 1, 13);
        assert_eq!(s.outcome(), None);
    }
}
