//! The exact incremental core of stockflow: timely + differential dataflow, no I/O, no tokio.
//!
//! Validated events enter at pipeline times (epoch ms on the tick grid), each with its **log
//! time** (from the log itself: the Kafka record's timestamp, made monotonic per partition). The
//! [`ledger`] operator (one owner worker per SKU) maintains stock per (sku, location),
//! reservation statuses with first-come-first-served allocation and expiry at pipeline time, and
//! windowed sales figures; every rule that rejects or forgets is decided by log time, so the
//! state is a function of the log read so far. It emits the changes as a differential collection
//! and publishes them for lookups in the [`views::ViewStore`]; [`topk`] ranks the best sellers per
//! window with differential `reduce`. A worker's state can be written as a checkpoint part and
//! restored ([`ledger::route`]).
//!
//! The smallest use, one worker driven by hand:
//!
//! ```
//! use std::sync::Arc;
//! use stockflow_dataflow::{Engine, EngineConfig, Record, views::ViewStore};
//! use stockflow_types::event::decode;
//!
//! let cfg = Arc::new(EngineConfig::for_tests(1));
//! let store = Arc::new(ViewStore::new(1, cfg.windows.clone(), cfg.top_k));
//! let s = Arc::clone(&store);
//! timely::execute(timely::Config::thread(), move |worker| {
//!     let mut engine = Engine::build(worker, Arc::clone(&cfg), Arc::clone(&s), None, |c| c);
//!     engine.advance_to(10);
//!     let event = decode(br#"{"event_id":"e1","type":"received","sku":"A","ts":5,"location":"L","qty":5}"#).unwrap();
//!     engine.send(Record { log_time: 5, event });
//!     engine.advance_log(5);
//!     engine.advance_to(20);
//!     while engine.pending(20) { worker.step(); }
//! }).unwrap();
//! assert_eq!(store.stock("A").unwrap().get("L").unwrap().on_hand, 5);
//! ```

pub mod clock;
pub mod forecast;
pub mod ids;
pub mod ledger;
pub mod quality;
pub mod topk;
pub mod views;

use differential_dataflow::VecCollection;
use ids::{Origin, Rejected, ToOwner};
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use stockflow_types::config::{ConfigError, Settings, WindowSpec};
use stockflow_types::event::Event;
use stockflow_types::rows::Change;
use stockflow_types::Millis;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::core::Exchange;
use timely::dataflow::operators::core::OkErr;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::{Concat, Input, Probe};
use timely::dataflow::{InputHandle, ProbeHandle};
use timely::worker::Worker;
use views::ViewStore;

pub use ledger::{LedgerIo, LedgerStats, Part, WorkerRestore};

/// Pipeline time: epoch milliseconds on the tick grid.
pub type Time = u64;
/// Differential diffs.
pub type Diff = i64;

/// An admitted event and its log time: a time read from the log itself (the Kafka record's
/// timestamp, monotonic per partition), against which every rule that rejects or forgets is
/// decided.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Record {
    /// Log time, epoch ms.
    pub log_time: Millis,
    /// The event.
    pub event: Event,
}

/// What steers every worker's ledger, sent by one worker and broadcast to all.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Control {
    /// From now on, worker `worker`'s sources deliver nothing with a log time below `at`.
    LogFrontier {
        /// The worker's index in the dataflow.
        worker: usize,
        /// Its log frontier.
        at: Millis,
    },
    /// Write a checkpoint of the state as of the pipeline time this is sent at.
    Checkpoint,
    /// From the id owner ([`ids`]): reservation `id` of `sku` is forgotten by log time `at`
    /// (its id now starts a reservation under another SKU, at this same time); the SKU's
    /// ledger forgets it now rather than when the frontier gets there, so that the id's rows
    /// change hands within one time.
    Forget {
        /// The SKU whose ledger held it.
        sku: String,
        /// The reservation id.
        id: String,
        /// The log time of the record that found it forgotten.
        at: Millis,
    },
}

/// The checked settings the dataflow runs with.
#[derive(Clone, Debug, PartialEq)]
pub struct EngineConfig {
    /// Tick of the pipeline clock, ms.
    pub tick_ms: u64,
    /// Retention (log time) of ended reservations, orphan terminal events and movement
    /// detail, ms.
    pub retention_ms: u64,
    /// Retention (log time) of windows after their end, ms.
    pub window_retention_ms: u64,
    /// De-duplication window of event ids (log time), ms.
    pub dedup_window_ms: u64,
    /// Window sizes.
    pub windows: Vec<WindowSpec>,
    /// Entries kept per top-sellers ranking.
    pub top_k: usize,
    /// The ranking is updated at multiples of this, ms (a multiple of the tick).
    pub top_tick_ms: u64,
    /// Forgetting timers (ended reservations, orphans, tombstones, final windows) fired per
    /// pipeline time at most: a log frontier that jumps hours forgets over many times instead
    /// of stalling one ([`DEFAULT_FORGET_PER_TIME`]).
    pub forget_per_time: usize,
    /// Forecasting (docs/forecasting.md); off when `None`.
    pub forecast: Option<Arc<forecast::ForecastConfig>>,
}

/// Forgetting timers per pipeline time: about 2 µs each (a reservation's retirement, its SKU's
/// settling, its rows), so some 20 ms of a worker's step at most, within the 50 ms a step may
/// take for checkpoint work.
pub const DEFAULT_FORGET_PER_TIME: usize = 10_000;

impl EngineConfig {
    /// From validated settings.
    pub fn from_settings(s: &Settings) -> Result<Self, ConfigError> {
        s.validate()?;
        Ok(EngineConfig {
            tick_ms: s.pipeline.tick.as_millis() as u64,
            retention_ms: s.pipeline.retention.as_millis() as u64,
            window_retention_ms: s.pipeline.window_retention.as_millis() as u64,
            dedup_window_ms: s.pipeline.dedup_window.as_millis() as u64,
            windows: s.window_specs()?,
            top_k: s.pipeline.top_k,
            top_tick_ms: s.pipeline.top_tick.as_millis() as u64,
            forget_per_time: DEFAULT_FORGET_PER_TIME,
            forecast: forecast::ForecastConfig::from_settings(s)?.map(Arc::new),
        })
    }

    /// A configuration for tests and examples: the given tick, windows of 50 and 200 ticks,
    /// retention and de-duplication far away, top 5 ranked every tick.
    pub fn for_tests(tick_ms: u64) -> Self {
        EngineConfig {
            tick_ms,
            retention_ms: 1 << 40,
            window_retention_ms: 1 << 40,
            dedup_window_ms: 1 << 40,
            windows: vec![
                WindowSpec {
                    name: "w50".into(),
                    size_ms: 50 * tick_ms,
                },
                WindowSpec {
                    name: "w200".into(),
                    size_ms: 200 * tick_ms,
                },
            ],
            top_k: 5,
            top_tick_ms: tick_ms,
            forget_per_time: DEFAULT_FORGET_PER_TIME,
            forecast: None,
        }
    }
}

type InputOf<D> = InputHandle<Time, timely::container::CapacityContainerBuilder<Vec<D>>>;

/// The dataflow on one worker: its inputs and a probe that passes a time once every view
/// (and whatever was attached) has absorbed it.
pub struct Engine {
    input: InputOf<Record>,
    reservations: InputOf<ToOwner>,
    control: InputOf<Control>,
    probe: ProbeHandle<Time>,
    durable: InputOf<()>,
    durable_probe: ProbeHandle<Time>,
    written: InputOf<()>,
    written_probe: ProbeHandle<Time>,
    io: Rc<RefCell<LedgerIo>>,
    rejected: Rc<RefCell<Vec<Rejected>>>,
    worker: usize,
    log_frontier: Option<Millis>,
}

impl Engine {
    /// Builds the dataflow on `worker`, from `restore` if given (its input then starts at the
    /// restored time). `attach` may add sinks to the collection of row changes and returns the
    /// stream the probe should wait for (return its argument if nothing).
    pub fn build<F>(
        worker: &mut Worker,
        cfg: Arc<EngineConfig>,
        store: Arc<ViewStore>,
        mut restore: Option<WorkerRestore>,
        attach: F,
    ) -> Engine
    where
        F: for<'s> FnOnce(
            VecCollection<'s, Time, Change, Diff>,
        ) -> VecCollection<'s, Time, Change, Diff>,
    {
        let index = worker.index();
        let peers = worker.peers();
        let local_worker = index % store.local_workers();
        let io = Rc::new(RefCell::new(LedgerIo::default()));
        let io2 = Rc::clone(&io);
        let rejected = Rc::new(RefCell::new(Vec::new()));
        let rejected2 = Rc::clone(&rejected);
        let start = restore.as_ref().map(|r| r.at);
        let restored_frontier = restore.as_ref().map(|r| r.frontier);
        let bindings = restore
            .as_mut()
            .map(|r| std::mem::take(&mut r.ids))
            .unwrap_or_default();
        let tick = cfg.tick_ms;
        let (
            mut input,
            mut reservations,
            mut control,
            probe,
            durable,
            durable_probe,
            written,
            written_probe,
        ) = worker.dataflow::<Time, _, _>(move |scope| {
            let (input, events) = scope.new_input::<Vec<Record>>();
            let (reservations, checked) = scope.new_input::<Vec<ToOwner>>();
            let (control, controls) = scope.new_input::<Vec<Control>>();
            let (accepted, other) = ids::id_owner(
                checked,
                controls.clone(),
                Arc::clone(&cfg),
                Arc::clone(&store),
                peers,
                restored_frontier,
            )
            .ok_err::<Vec<Record>, _, Vec<Result<Control, Box<Rejected>>>, _, _>(|r| r);
            let (notices, refused) =
                other.ok_err::<Vec<Control>, _, Vec<Box<Rejected>>, _, _>(|r| r);
            // Every ledger hears every control message; a notice goes to its SKU's owner.
            let notices = notices.exchange(|c: &Control| match c {
                Control::Forget { sku, .. } => ledger::sku_hash(sku),
                _ => 0,
            });
            let changes = ledger::ledger(
                events.concat(accepted),
                controls.broadcast().concat(notices),
                Arc::clone(&cfg),
                Arc::clone(&store),
                (index, local_worker, peers),
                restore,
                io2,
            );
            let changes = completed(changes, Arc::clone(&store), local_worker, tick);
            // One chain, so the changes are never copied for a second consumer: whatever is
            // attached passes them on to the ranking, and the probe at the end covers it all.
            let changes = attach(changes);
            let ranked = topk::top_sellers(changes, cfg.top_k, cfg.top_tick_ms);
            let (probe, _) =
                topk::publish(ranked, Arc::clone(&store), local_worker, cfg.top_tick_ms).probe();
            // The rejected records wait for the worker loop (dead letters); the probe passes
            // a time only once they are here.
            refused
                .unary::<CapacityContainerBuilder<Vec<()>>, _, _, _>(
                    Pipeline,
                    "Rejected",
                    move |_, _| {
                        move |input, _| {
                            input.for_each(|_, data| {
                                rejected2.borrow_mut().extend(data.drain(..).map(|r| *r));
                            });
                        }
                    },
                )
                .probe_with(&probe);
            // Durability is a frontier too: each worker holds this input at the earliest time
            // whose effects it has not yet made durable, and timely's progress tracking gives
            // every worker of the cluster the least of them.
            let (durable, durables) = scope.new_input::<Vec<()>>();
            let (durable_probe, _) = durables.probe();
            // Likewise the checkpoints written: each worker holds this input just past its
            // process's newest, so every worker learns the newest every process has reached.
            let (written, writtens) = scope.new_input::<Vec<()>>();
            let (written_probe, _) = writtens.probe();
            (
                input,
                reservations,
                control,
                probe,
                durable,
                durable_probe,
                written,
                written_probe,
            )
        });
        // The restored rows are at the restored time; nothing read afterwards may be. The
        // restored reservations' bindings go to their ids' owners at that time, before any record.
        if let Some(at) = start {
            reservations.advance_to(at);
            for (id, b) in bindings {
                reservations.send(ToOwner::Bind(id, b));
            }
            input.advance_to(at + tick);
            reservations.advance_to(at + tick);
            control.advance_to(at + tick);
        }
        Engine {
            input,
            reservations,
            control,
            probe,
            durable,
            durable_probe,
            written,
            written_probe,
            io,
            rejected,
            worker: index,
            log_frontier: None,
        }
    }

    /// Admits one record at the input's current time (a reservation record that the id owner
    /// rejects comes back from [`Engine::take_rejected`] without where it came from).
    pub fn send(&mut self, record: Record) {
        self.send_from(record, Origin::default());
    }

    /// Admits one record read at `origin`, at the input's current time: a reservation record
    /// passes its id's owner first ([`ids`]), which may reject it.
    pub fn send_from(&mut self, record: Record, origin: Origin) {
        if record.event.kind.reservation_id().is_some() {
            self.reservations.send(ToOwner::Check(record, origin));
        } else {
            self.input.send(record);
        }
    }

    /// The records that the id owners on this worker rejected since the last call: to the dead
    /// letters with them. Take them after every step: the probe has passed their times.
    pub fn take_rejected(&mut self) -> Vec<Rejected> {
        std::mem::take(&mut *self.rejected.borrow_mut())
    }

    /// This worker's sources deliver nothing with a log time below `frontier` from now on
    /// (ignored if not later than before). Every worker must say so, or nothing is forgotten.
    pub fn advance_log(&mut self, frontier: Millis) {
        if self.log_frontier.is_none_or(|f| frontier > f) {
            self.log_frontier = Some(frontier);
            self.control.send(Control::LogFrontier {
                worker: self.worker,
                at: frontier,
            });
        }
    }

    /// Asks every worker for a checkpoint of the state as of the current input time, which it
    /// returns. Send it from one worker only.
    pub fn request_checkpoint(&mut self) -> Time {
        self.control.send(Control::Checkpoint);
        self.time()
    }

    /// The times of the checkpoints this worker's ledger began since the last call: what the
    /// sources admitted at or before each is in it.
    pub fn take_begun(&mut self) -> Vec<Time> {
        std::mem::take(&mut self.io.borrow_mut().begun)
    }

    /// A finished checkpoint part of this worker, if any.
    pub fn take_part(&mut self) -> Option<Part> {
        let mut io = self.io.borrow_mut();
        (!io.parts.is_empty()).then(|| io.parts.remove(0))
    }

    /// Whether this worker is writing a checkpoint part.
    pub fn writing_checkpoint(&self) -> bool {
        self.io.borrow().writing
    }

    /// The current input time: records sent now are admitted at it.
    pub fn time(&self) -> Time {
        *self.input.time()
    }

    /// Moves the inputs to `t` (ignored if not later): every earlier time is closed.
    pub fn advance_to(&mut self, t: Time) {
        if t > *self.input.time() {
            self.input.advance_to(t);
            self.reservations.advance_to(t);
            self.control.advance_to(t);
        }
    }

    /// Whether some view has not yet absorbed every time before `t`.
    pub fn pending(&self, t: Time) -> bool {
        self.probe.less_than(&t)
    }

    /// The earliest time some view has not yet absorbed (`Time::MAX` if none).
    pub fn frontier(&self) -> Time {
        self.probe
            .with_frontier(|f| f.iter().copied().min())
            .unwrap_or(Time::MAX)
    }

    /// Everything this worker's sources admitted before `t` is durable here (its sink rows, its
    /// dead letters); ignored if not later than before.
    pub fn advance_durable(&mut self, t: Time) {
        if t > *self.durable.time() {
            self.durable.advance_to(t);
        }
    }

    /// The earliest time before which every worker of the cluster has made everything durable
    /// (as far as this worker has heard; `Time::MAX` once every worker has stopped).
    pub fn durable_frontier(&self) -> Time {
        self.durable_probe
            .with_frontier(|f| f.iter().copied().min())
            .unwrap_or(Time::MAX)
    }

    /// This worker's process has written the checkpoint of time `at` (ignored if not newer).
    pub fn advance_written(&mut self, at: Time) {
        if at + 1 > *self.written.time() {
            self.written.advance_to(at + 1);
        }
    }

    /// The newest checkpoint time that every process of the cluster has written one at or
    /// after, as far as this worker has heard (`None` until every process has written one).
    pub fn written_everywhere(&self) -> Option<Time> {
        self.written_probe
            .with_frontier(|f| f.iter().copied().min())
            .filter(|f| *f > 0)
            .map(|f| f - 1)
    }

    /// Stops the dataflow without draining it. (Closing the input would let the frontier run to
    /// the end of time and fire every pending expiry and eviction first.) Call it on every
    /// worker when the process stops.
    pub fn shutdown(self, worker: &mut Worker) {
        drop(self);
        for id in worker.installed_dataflows() {
            worker.drop_dataflow(id);
        }
    }

    /// The log frontier the ledger applies forgetting at: the least log time any worker's
    /// sources may still deliver.
    pub fn log_frontier(&self) -> Millis {
        self.io.borrow().log_frontier
    }

    /// The ledger's counters on this worker.
    pub fn stats(&self) -> LedgerStats {
        self.io.borrow().stats.clone()
    }
}

/// Passes the ledger's changes on untouched, and records in `store` the last pipeline time that
/// **every** worker's ledger has applied in full: the frontier of the ledgers' output, which
/// timely's progress tracking computes over the whole cluster. It is the `as_of` lookups answer
/// with, so that no answer claims a time some worker, in this process or another, has not
/// completed.
fn completed<'s>(
    changes: VecCollection<'s, Time, Change, Diff>,
    store: Arc<ViewStore>,
    local_worker: usize,
    tick: u64,
) -> VecCollection<'s, Time, Change, Diff> {
    use differential_dataflow::AsCollection;
    changes
        .inner
        .unary_frontier::<CapacityContainerBuilder<Vec<(Change, Time, Diff)>>, _, _, _>(
            Pipeline,
            "Completed",
            move |_initial, _info| {
                move |(input, frontier), output| {
                    input.for_each(|cap, data| {
                        output.session(&cap).give_container(data);
                    });
                    let f = frontier
                        .frontier()
                        .iter()
                        .copied()
                        .min()
                        .unwrap_or(Time::MAX);
                    store.set_ledger_completed(local_worker, f.saturating_sub(tick));
                }
            },
        )
        .as_collection()
}
