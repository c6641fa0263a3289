//! The ledger operator: where events become maintained rows.
//!
//! Inputs: admitted [`Record`]s (an event and its log time) at pipeline times, exchanged by SKU
//! so that one worker owns each SKU with all its locations, reservations and windows; and the
//! [`Control`] stream: each worker's log frontier and checkpoint requests (broadcast to every
//! worker), and the id owners' notices (`crate::ids`, to the SKU's owner). Output: the changes of the maintained rows as a differential collection of
//! [`Change`] with `±1` diffs. The operator processes a pipeline time only once both input
//! frontiers have passed it, in time order, and keeps a capability for its next expiry, so that
//! expiries happen at their pipeline time even when no event arrives.
//!
//! A checkpoint requested at time `T` is written after `T` is applied, a slice per activation
//! (the operator re-activates itself until done), and handed to the worker in [`LedgerIo`].
//! A restored worker starts from a [`WorkerRestore`] and emits the restored rows at its time.

pub(crate) mod dedup;
pub(crate) mod reservation;
mod snapshot;
mod state;
mod stock;
mod timers;
mod windows;

pub use snapshot::{decode_part, route, Item, Part, SkuState, SnapshotError, WorkerRestore};
pub use state::{LedgerState, LedgerStats};

use crate::quality::Quality;
use crate::views::ViewStore;
use crate::{Control, Diff, EngineConfig, Record, Time};
use differential_dataflow::{AsCollection, VecCollection};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;
use stockflow_types::rows::Change;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::StreamVec;

// The placing rules live in one place (`stockflow_types::topology`): the exchange below and a
// restore's routing follow them.
pub use stockflow_types::topology::{owner, sku_hash};

/// How long one activation may spend writing a checkpoint.
const CHECKPOINT_SLICE: Duration = Duration::from_millis(1);
/// While a checkpoint is written, an activation applies times for at most this long before it
/// yields (and re-activates itself): what a changed SKU costs to copy out first then falls on
/// many steps, not one (a backlog of times touches most SKUs at once).
const BUSY_SLICE: Duration = Duration::from_millis(5);

/// What the operator tells the worker loop that runs it (same thread).
#[derive(Debug, Default)]
pub struct LedgerIo {
    /// The operator's counters after its latest activation.
    pub stats: LedgerStats,
    /// Finished checkpoint parts, oldest first, until the worker takes them.
    pub parts: Vec<Part>,
    /// A checkpoint is being written.
    pub writing: bool,
    /// The log frontier after the latest time applied.
    pub log_frontier: u64,
    /// Times of the checkpoints begun since the worker last looked: their state is fixed, and
    /// the worker notes where its sources stand at each before it lets them forget.
    pub begun: Vec<Time>,
}

/// Builds the ledger on `events`, steered by `control`. `worker` is this worker's index in the
/// dataflow, `local_worker` its index in this process, `peers` the dataflow's workers.
#[allow(clippy::too_many_arguments)]
pub fn ledger<'s>(
    events: StreamVec<'s, Time, Record>,
    control: StreamVec<'s, Time, Control>,
    cfg: Arc<EngineConfig>,
    store: Arc<ViewStore>,
    (worker, local_worker, peers): (usize, usize, usize),
    restore: Option<WorkerRestore>,
    io: Rc<RefCell<LedgerIo>>,
) -> VecCollection<'s, Time, Change, Diff> {
    let scope = events.scope();
    events
        .binary_frontier(
            control,
            Exchange::new(|r: &Record| sku_hash(&r.event.sku)),
            Pipeline,
            "Ledger",
            move |initial, info| {
                let activator = scope.activator_for(info.address);
                if restore.is_some() {
                    activator.activate(); // emit the restored rows before anything else
                }
                let (mut state, mut restored): (LedgerState, _) = match restore {
                    Some(r) => {
                        let at = r.at;
                        let (state, rows) =
                            LedgerState::restore(Arc::clone(&cfg), Arc::clone(&store), peers, r);
                        store.set_ledger_completed(local_worker, at);
                        (state, Some((initial.delayed(&at), rows)))
                    }
                    None => {
                        drop(initial); // nothing to say until an event or a timer asks for a time
                        (
                            LedgerState::new(Arc::clone(&cfg), Arc::clone(&store), peers),
                            None,
                        )
                    }
                };
                state.local_worker = local_worker;
                if let Some(f) = &state.forecast {
                    store.forecast().publish(local_worker, f, f.republish()); // restored
                }
                type Stashed = (Capability<Time>, Vec<Record>, Vec<Control>);
                let mut stash: BTreeMap<Time, Stashed> = BTreeMap::new();
                let mut timer_cap: Option<Capability<Time>> = None;
                let mut changes = Vec::new();
                let mut empty = Vec::new();
                // The data-quality signals of this worker's rows, folded as they are emitted.
                let mut quality = Quality::default();
                move |(events_in, events_frontier), (control_in, control_frontier), output| {
                    if let Some((cap, rows)) = restored.take() {
                        let at = *cap.time();
                        for (c, d) in &rows {
                            quality.apply(c, *d);
                        }
                        store.publish_quality(local_worker, &quality);
                        output
                            .session(&cap)
                            .give_iterator(rows.into_iter().map(|(c, d)| (c, at, d)));
                        timer_cap = state.next_timer().map(|next| cap.delayed(&next));
                    }
                    events_in.for_each_stamp(|cap, data| {
                        let t = *cap.least().expect("inputs carry totally ordered times");
                        let entry = stash.entry(t).or_insert_with(|| {
                            let cap = cap.retain_least(0).expect("stamp is not empty");
                            (cap, Vec::new(), Vec::new())
                        });
                        for batch in data {
                            entry.1.append(batch);
                        }
                    });
                    control_in.for_each_stamp(|cap, data| {
                        let t = *cap.least().expect("inputs carry totally ordered times");
                        let entry = stash.entry(t).or_insert_with(|| {
                            let cap = cap.retain_least(0).expect("stamp is not empty");
                            (cap, Vec::new(), Vec::new())
                        });
                        for batch in data {
                            entry.2.append(batch);
                        }
                    });
                    let activation = std::time::Instant::now();
                    loop {
                        if state.snapshot_in_progress() && activation.elapsed() >= BUSY_SLICE {
                            activator.activate();
                            break;
                        }
                        let next = match (stash.keys().next(), state.next_timer()) {
                            (Some(a), Some(b)) => *a.min(&b),
                            (Some(a), None) => *a,
                            (None, Some(b)) => b,
                            (None, None) => break,
                        };
                        if events_frontier.less_equal(&next) || control_frontier.less_equal(&next) {
                            break;
                        }
                        let (cap, mut records, controls) = match stash.remove(&next) {
                            Some(entry) => entry,
                            None => {
                                let cap = timer_cap
                                    .as_ref()
                                    .expect("a timer holds a capability")
                                    .delayed(&next);
                                (cap, std::mem::take(&mut empty), Vec::new())
                            }
                        };
                        let checkpoint = state.process(next, &mut records, &controls, &mut changes);
                        empty = records;
                        if let Some(f) = state.forecast.as_mut() {
                            changes.append(&mut f.rows); // forecasts and features as rows
                        }
                        let mut moved = false;
                        for (c, d) in &changes {
                            moved |= quality.apply(c, *d);
                        }
                        if moved {
                            store.publish_quality(local_worker, &quality);
                        }
                        if !changes.is_empty() {
                            output
                                .session(&cap)
                                .give_iterator(changes.drain(..).map(|(c, r)| (c, next, r)));
                        }
                        if checkpoint {
                            let previous = state.begin_snapshot(next, worker);
                            let mut io = io.borrow_mut();
                            io.parts.extend(previous);
                            io.begun.push(next);
                        }
                        // Keep exactly one capability, at the earliest pending timer.
                        timer_cap = match (state.next_timer(), timer_cap.take()) {
                            (Some(at), Some(mut held)) if *held.time() <= at => {
                                held.downgrade(&at);
                                Some(held)
                            }
                            (Some(at), _) => Some(cap.delayed(&at)),
                            (None, _) => None,
                        };
                    }
                    if state.snapshot_in_progress() {
                        let started = std::time::Instant::now();
                        let copied = state
                            .snapshot
                            .as_mut()
                            .map_or(Duration::ZERO, |s| std::mem::take(&mut s.copied));
                        match state.snapshot_step(CHECKPOINT_SLICE) {
                            Some(part) => io.borrow_mut().parts.push(part),
                            None => activator.activate(),
                        }
                        let stall = (started.elapsed() + copied).as_micros() as u64;
                        let max = &mut state.stats.checkpoint_stall_max_us;
                        *max = (*max).max(stall);
                    }
                    let mut io = io.borrow_mut();
                    io.writing = state.snapshot_in_progress();
                    io.log_frontier = state.log_frontier();
                    io.stats.clone_from(state.stats());
                }
            },
        )
        .as_collection()
}
