//! The ledger operator: where events become maintained rows.
//!
//! Input: validated [`Event`]s at pipeline times. They are exchanged by SKU, so one worker owns
//! each SKU with all its locations, reservations and windows. Output: the changes of the
//! maintained rows as a differential collection of [`Change`] with `±1` diffs, consolidated per
//! time. The operator processes a pipeline time only once the input frontier has passed it, in
//! time order, and keeps a capability for its next timer (expiry or eviction), so expiries happen
//! at their pipeline time even when no event arrives.

mod state;

pub use state::{LedgerState, LedgerStats};

use crate::views::ViewStore;
use crate::{Diff, EngineConfig, Time};
use differential_dataflow::{AsCollection, VecCollection};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use stockflow_types::event::Event;
use stockflow_types::rows::Change;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::StreamVec;

/// The worker that owns a SKU (also used to route work to it).
pub fn sku_hash(sku: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(sku.as_bytes())
}

/// Builds the ledger on `events`. `stats` receives the operator's counters after every run.
pub fn ledger<'s>(
    events: StreamVec<'s, Time, Event>,
    cfg: Arc<EngineConfig>,
    store: Arc<ViewStore>,
    local_worker: usize,
    stats: Rc<RefCell<LedgerStats>>,
) -> VecCollection<'s, Time, Change, Diff> {
    let tick = cfg.tick_ms;
    events
        .unary_frontier(
            Exchange::new(|e: &Event| sku_hash(&e.sku)),
            "Ledger",
            move |initial, _info| {
                drop(initial); // nothing to say until an event or a timer asks for a time
                let mut state = LedgerState::new(cfg, Arc::clone(&store));
                let mut stash: BTreeMap<Time, (Capability<Time>, Vec<Event>)> = BTreeMap::new();
                let mut timer_cap: Option<Capability<Time>> = None;
                let mut changes = Vec::new();
                let mut empty = Vec::new();
                move |(input, frontier), output| {
                    input.for_each_stamp(|cap, data| {
                        let t = *cap.least().expect("inputs carry totally ordered times");
                        let entry = stash.entry(t).or_insert_with(|| {
                            (cap.retain_least(0).expect("stamp is not empty"), Vec::new())
                        });
                        for batch in data {
                            entry.1.append(batch);
                        }
                    });
                    loop {
                        let next = match (stash.keys().next(), state.next_timer()) {
                            (Some(a), Some(b)) => *a.min(&b),
                            (Some(a), None) => *a,
                            (None, Some(b)) => b,
                            (None, None) => break,
                        };
                        if frontier.less_equal(&next) {
                            break;
                        }
                        let (cap, mut events) = match stash.remove(&next) {
                            Some(entry) => entry,
                            None => {
                                let cap = timer_cap
                                    .as_ref()
                                    .expect("a timer holds a capability")
                                    .delayed(&next);
                                (cap, std::mem::take(&mut empty))
                            }
                        };
                        state.process(next, &mut events, &mut changes);
                        empty = events;
                        if !changes.is_empty() {
                            output
                                .session(&cap)
                                .give_iterator(changes.drain(..).map(|(c, r)| (c, next, r)));
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
                    if let Some(f) = frontier.frontier().first() {
                        store.set_ledger_completed(local_worker, f.saturating_sub(tick));
                    }
                    *stats.borrow_mut() = state.stats();
                }
            },
        )
        .as_collection()
}
