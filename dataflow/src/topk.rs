//! Top sellers per window: an incremental local ranking per worker, then differential's
//! `reduce` over the workers' lists.
//!
//! From the window rows, units sold per (window, start, sku) summed over locations. Each worker
//! ranks the SKUs it owns incrementally and sends its top `k` per window on; a `reduce` per
//! window keeps the best `k` of those ([`top_sellers`]). The result is published to the
//! [`ViewStore`] once the frontier has passed each time, so a read sees whole times only.

use crate::views::ViewStore;
use crate::{Diff, Time};
use differential_dataflow::{AsCollection, VecCollection};
use hashbrown::HashMap;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use stockflow_types::rows::Change;
use stockflow_types::{Millis, Name};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::StreamVec;

/// A ranked entry: `(-units_sold, sku)` under `(window_ms, window_start)`.
type Ranked = ((Millis, Millis), (i64, Name));

/// The `k` best-selling SKUs of every window, as `((window_ms, start), (-units, sku))`,
/// brought up to date at multiples of `step` ms: changes are delayed to the next multiple, so
/// the ranking at a multiple `T` reflects exactly the changes at or before `T`.
///
/// Two levels. On the worker that owns a SKU (the ledger's output stays where it was made), a
/// [`LocalRanking`] keeps each window's units sold per SKU in an ordered set, updated in
/// `O(log n)` per change, and emits the changes of its local top `k` only; then one `reduce` per
/// window over the workers' local lists (at most `k` × workers entries) keeps the best `k`.
/// Nothing re-sorts all the SKUs of a window when one of them sells.
pub fn top_sellers<'s>(
    changes: VecCollection<'s, Time, Change, Diff>,
    k: usize,
    step: u64,
) -> VecCollection<'s, Time, Ranked, Diff> {
    changes
        .delay(move |t| t.div_ceil(step) * step)
        .inner
        .unary_frontier::<CapacityContainerBuilder<Vec<(Ranked, Time, Diff)>>, _, _, _>(
            Pipeline,
            "LocalTopSellers",
            move |initial, _info| {
                drop(initial);
                let mut pending: BTreeMap<Time, (Capability<Time>, Vec<Sold>)> = BTreeMap::new();
                let mut local = LocalRanking::new(k);
                let mut changed = Vec::new();
                move |(input, frontier), output| {
                    input.for_each_stamp(|cap, data| {
                        for batch in data {
                            for (c, t, diff) in batch.drain(..) {
                                let Change::Window(w) = c else { continue };
                                if w.figures.units_sold == 0 {
                                    continue;
                                }
                                pending
                                    .entry(t)
                                    .or_insert_with(|| (cap.delayed(&t, 0), Vec::new()))
                                    .1
                                    .push((
                                        (w.window_ms, w.window_start),
                                        w.sku,
                                        w.figures.units_sold * diff,
                                    ));
                            }
                        }
                    });
                    while let Some(entry) = pending.first_entry() {
                        let t = *entry.key();
                        if frontier.less_equal(&t) {
                            break;
                        }
                        let (cap, sold) = entry.remove();
                        local.apply(sold, &mut changed);
                        output
                            .session(&cap)
                            .give_iterator(changed.drain(..).map(|(r, d)| (r, t, d)));
                    }
                }
            },
        )
        .as_collection()
        .reduce_named("TopSellersByWindow", move |_key, input, output| {
            for (entry, _) in input.iter().take(k) {
                output.push(((*entry).clone(), 1));
            }
        })
}

/// A change of units sold: (window, SKU, units).
type Sold = ((Millis, Millis), Name, i64);

/// One worker's rankings: units sold per (window, SKU) of the SKUs it owns, each window's
/// entries ordered, and the top `k` it last emitted per window.
struct LocalRanking {
    k: usize,
    totals: HashMap<((Millis, Millis), Name), i64>,
    ranked: HashMap<(Millis, Millis), BTreeSet<(i64, Name)>>,
    emitted: HashMap<(Millis, Millis), Vec<(i64, Name)>>,
}

impl LocalRanking {
    fn new(k: usize) -> Self {
        LocalRanking {
            k,
            totals: HashMap::new(),
            ranked: HashMap::new(),
            emitted: HashMap::new(),
        }
    }

    /// Applies one time's changes; pushes the changes of the local top `k` lists to `out`.
    fn apply(&mut self, sold: Vec<Sold>, out: &mut Vec<(Ranked, Diff)>) {
        // One time holds many changes of the same (window, SKU) (a popular SKU sells all the
        // time): net them first, so the ordered set changes once per (window, SKU).
        let mut net: HashMap<((Millis, Millis), Name), i64> = HashMap::with_capacity(sold.len());
        for (window, sku, units) in sold {
            let n = net.entry((window, sku)).or_insert(0);
            *n = i64::saturating_add(*n, units); // window figures saturate (MAX_QTY)
        }
        let mut touched = BTreeSet::new();
        for (key, units) in net {
            if units == 0 {
                continue;
            }
            let window = key.0;
            let total = self.totals.entry(key.clone()).or_insert(0);
            let old = *total;
            *total = total.saturating_add(units);
            let new = *total;
            if new == 0 {
                self.totals.remove(&key);
            }
            let ranked = self.ranked.entry(window).or_default();
            if old > 0 {
                ranked.remove(&(-old, Arc::clone(&key.1)));
            }
            if new > 0 {
                ranked.insert((-new, key.1));
            }
            touched.insert(window);
        }
        for window in touched {
            let now: Vec<(i64, Name)> = match self.ranked.get(&window) {
                Some(r) if r.is_empty() => {
                    self.ranked.remove(&window);
                    Vec::new()
                }
                Some(r) => r.iter().take(self.k).cloned().collect(),
                None => Vec::new(),
            };
            let before = self.emitted.remove(&window).unwrap_or_default();
            diff_sorted(&before, &now, |e, d| out.push(((window, e.clone()), d)));
            if !now.is_empty() {
                self.emitted.insert(window, now);
            }
        }
    }
}

/// Calls `f(entry, -1)` for entries only in `before` and `f(entry, 1)` for entries only in
/// `now` (both sorted).
fn diff_sorted<T: Ord>(before: &[T], now: &[T], mut f: impl FnMut(&T, Diff)) {
    let (mut i, mut j) = (0, 0);
    while i < before.len() || j < now.len() {
        match (before.get(i), now.get(j)) {
            (Some(a), Some(b)) if a == b => {
                i += 1;
                j += 1;
            }
            (Some(a), Some(b)) if a < b => {
                f(a, -1);
                i += 1;
            }
            (Some(a), None) => {
                f(a, -1);
                i += 1;
            }
            (_, Some(b)) => {
                f(b, 1);
                j += 1;
            }
            (None, None) => unreachable!("loop condition"),
        }
    }
}

/// Publishes the rankings into every process's `store` as each time completes (the lists are
/// small: `k` entries per window, sent to the first worker of each process, which writes them),
/// and the last multiple of `step` completed as the view's `as_of`. Returns a stream to probe.
pub fn publish<'s>(
    ranked: VecCollection<'s, Time, Ranked, Diff>,
    store: Arc<ViewStore>,
    local_worker: usize,
    step: u64,
) -> StreamVec<'s, Time, ()> {
    use timely::dataflow::operators::{vec::Map, Exchange};
    let peers = ranked.inner.scope().peers();
    let local_workers = store.local_workers();
    ranked
        .inner
        .flat_map(move |x| {
            (0..peers)
                .step_by(local_workers)
                .map(move |w| (w as u64, x.clone()))
        })
        .exchange(|(w, _)| *w)
        .map(|(_, x)| x)
        .unary_frontier::<CapacityContainerBuilder<Vec<()>>, _, _, _>(
            Pipeline,
            "PublishTopSellers",
            move |initial, _info| {
                drop(initial);
                let mut pending: BTreeMap<Time, (Capability<Time>, Vec<(Ranked, Diff)>)> =
                    BTreeMap::new();
                move |(input, frontier), _output| {
                    input.for_each_stamp(|cap, data| {
                        for batch in data {
                            for (r, t, diff) in batch.drain(..) {
                                let entry = pending
                                    .entry(t)
                                    .or_insert_with(|| (cap.delayed(&t, 0), Vec::new()));
                                entry.1.push((r, diff));
                            }
                        }
                    });
                    while let Some(entry) = pending.first_entry() {
                        let t = *entry.key();
                        if frontier.less_equal(&t) {
                            break;
                        }
                        let (_cap, updates) = entry.remove();
                        let mut by_key: BTreeMap<(Millis, Millis), Vec<((i64, Name), Diff)>> =
                            BTreeMap::new();
                        for ((key, entry), diff) in updates {
                            by_key.entry(key).or_default().push((entry, diff));
                        }
                        for (key, updates) in by_key {
                            store.update_top(key, t, |ranked| {
                                // Retractions first, so that a re-ranked SKU is not removed after its re-insertion.
                                let (minus, plus): (Vec<_>, Vec<_>) =
                                    updates.into_iter().partition(|(_, d)| *d < 0);
                                for (entry, _) in minus {
                                    ranked.remove(&entry);
                                }
                                for (entry, _) in plus {
                                    ranked.insert(entry);
                                }
                            });
                        }
                    }
                    if let Some(f) = frontier.frontier().first() {
                        let last = f.saturating_sub(1);
                        store.set_top_completed(local_worker, last - last % step);
                    }
                }
            },
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The local ranking's emitted lists, accumulated, are at every time the plain top `k`
        /// of the totals recomputed from scratch.
        #[test]
        fn local_ranking_is_the_plain_top_k(
            k in 1usize..5,
            times in prop::collection::vec(
                prop::collection::vec((0u64..2, 0u8..8, -3i64..6), 0..12),
                1..30,
            ),
        ) {
            let mut local = LocalRanking::new(k);
            let mut totals: BTreeMap<((Millis, Millis), u8), i64> = BTreeMap::new();
            let mut shown: BTreeMap<Ranked, Diff> = BTreeMap::new();
            let mut out = Vec::new();
            for changes in times {
                let mut sold = Vec::new();
                for (w, sku, units) in changes {
                    // Units sold never go below zero (a retraction follows its contribution).
                    let total = totals.entry(((60, w), sku)).or_insert(0);
                    let units = units.max(-*total);
                    *total += units;
                    sold.push(((60, w), Name::from(format!("s{sku}")), units));
                }
                local.apply(sold, &mut out);
                for (entry, d) in out.drain(..) {
                    *shown.entry(entry).or_insert(0) += d;
                }
                shown.retain(|_, d| *d != 0);
                let mut expected = BTreeSet::new();
                for w in 0..2 {
                    let mut ranked: Vec<(i64, Name)> = totals
                        .iter()
                        .filter(|((win, _), units)| win.1 == w && **units > 0)
                        .map(|((_, sku), units)| (-units, Name::from(format!("s{sku}"))))
                        .collect();
                    ranked.sort();
                    expected.extend(ranked.into_iter().take(k).map(|e| ((60, w), e)));
                }
                prop_assert!(shown.values().all(|d| *d == 1));
                prop_assert_eq!(shown.keys().cloned().collect::<BTreeSet<_>>(), expected);
            }
        }
    }
}
