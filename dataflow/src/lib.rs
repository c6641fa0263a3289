//! The exact incremental core of stockflow: timely + differential dataflow, no I/O, no tokio.
//!
//! Validated events enter at pipeline times (epoch ms on the tick grid). The [`ledger`] operator
//! (one owner worker per SKU) maintains stock per (sku, location), reservation statuses with
//! first-come-first-served allocation and expiry at pipeline time, and windowed sales figures;
//! it emits their changes as a differential collection and publishes them for lookups in the
//! [`views::ViewStore`]. [`topk`] ranks the best sellers per window with differential `reduce`.
//!
//! The smallest use, one worker driven by hand:
//!
//! ```
//! use std::sync::Arc;
//! use stockflow_dataflow::{Engine, EngineConfig, views::ViewStore};
//! use stockflow_types::event::decode;
//!
//! let cfg = Arc::new(EngineConfig::for_tests(1));
//! let store = Arc::new(ViewStore::new(1, cfg.windows.clone(), cfg.top_k));
//! let s = Arc::clone(&store);
//! timely::execute(timely::Config::thread(), move |worker| {
//!     let mut engine = Engine::build(worker, Arc::clone(&cfg), Arc::clone(&s), |c| c);
//!     engine.advance_to(10);
//!     engine.send(decode(br#"{"event_id":"e1","type":"received","sku":"A","ts":5,"location":"L","qty":5}"#).unwrap());
//!     engine.advance_to(20);
//!     while engine.pending(20) { worker.step(); }
//! }).unwrap();
//! assert_eq!(store.stock("A").unwrap().get("L").unwrap().on_hand, 5);
//! ```

pub mod clock;
pub mod ledger;
pub mod topk;
pub mod views;

use differential_dataflow::VecCollection;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use stockflow_types::config::{ConfigError, Settings, WindowSpec};
use stockflow_types::event::Event;
use stockflow_types::rows::Change;
use timely::dataflow::operators::{Input, Probe};
use timely::dataflow::{InputHandle, ProbeHandle};
use timely::worker::Worker;
use views::ViewStore;

pub use ledger::LedgerStats;

/// Pipeline time: epoch milliseconds on the tick grid.
pub type Time = u64;
/// Differential diffs.
pub type Diff = i64;

/// The checked settings the dataflow runs with.
#[derive(Clone, Debug, PartialEq)]
pub struct EngineConfig {
    /// Tick of the pipeline clock, ms.
    pub tick_ms: u64,
    /// Retention of ended reservations, orphan terminal events and movement detail, ms.
    pub retention_ms: u64,
    /// Retention of windows after their end, ms.
    pub window_retention_ms: u64,
    /// De-duplication window of event ids, ms.
    pub dedup_window_ms: u64,
    /// Window sizes.
    pub windows: Vec<WindowSpec>,
    /// Entries kept per top-sellers ranking.
    pub top_k: usize,
    /// The ranking is updated at multiples of this, ms (a multiple of the tick).
    pub top_tick_ms: u64,
}

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
        }
    }
}

/// The dataflow on one worker: its input and a probe that passes a time once every view
/// (and whatever was attached) has absorbed it.
pub struct Engine {
    input: InputHandle<Time, timely::container::CapacityContainerBuilder<Vec<Event>>>,
    probe: ProbeHandle<Time>,
    stats: Rc<RefCell<LedgerStats>>,
}

impl Engine {
    /// Builds the dataflow on `worker`. `attach` may add sinks to the collection of row changes
    /// and returns the stream the probe should wait for (return its argument if nothing).
    pub fn build<F>(
        worker: &mut Worker,
        cfg: Arc<EngineConfig>,
        store: Arc<ViewStore>,
        attach: F,
    ) -> Engine
    where
        F: for<'s> FnOnce(
            VecCollection<'s, Time, Change, Diff>,
        ) -> VecCollection<'s, Time, Change, Diff>,
    {
        let local_worker = worker.index() % store.local_workers();
        let stats = Rc::new(RefCell::new(LedgerStats::default()));
        let stats2 = Rc::clone(&stats);
        let (input, probe) = worker.dataflow::<Time, _, _>(move |scope| {
            let (input, events) = scope.new_input::<Vec<Event>>();
            let changes = ledger::ledger(
                events,
                Arc::clone(&cfg),
                Arc::clone(&store),
                local_worker,
                stats2,
            );
            // One chain, so the changes are never copied for a second consumer: whatever is
            // attached passes them on to the ranking, and the probe at the end covers it all.
            let changes = attach(changes);
            let ranked = topk::top_sellers(changes, cfg.top_k, cfg.top_tick_ms);
            let (probe, _) =
                topk::publish(ranked, Arc::clone(&store), local_worker, cfg.top_tick_ms).probe();
            (input, probe)
        });
        Engine {
            input,
            probe,
            stats,
        }
    }

    /// Admits one event at the input's current time.
    pub fn send(&mut self, ev: Event) {
        self.input.send(ev);
    }

    /// The current input time: events sent now are admitted at it.
    pub fn time(&self) -> Time {
        *self.input.time()
    }

    /// Moves the input to `t` (ignored if not later): every earlier time is closed.
    pub fn advance_to(&mut self, t: Time) {
        if t > *self.input.time() {
            self.input.advance_to(t);
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

    /// Stops the dataflow without draining it. (Closing the input would let the frontier run to
    /// the end of time and fire every pending expiry and eviction first.) Call it on every
    /// worker when the process stops.
    pub fn shutdown(self, worker: &mut Worker) {
        drop(self);
        for id in worker.installed_dataflows() {
            worker.drop_dataflow(id);
        }
    }

    /// The ledger's counters on this worker.
    pub fn stats(&self) -> LedgerStats {
        *self.stats.borrow()
    }
}
