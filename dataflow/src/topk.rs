//! Top sellers per window, maintained with differential's `reduce`.
//!
//! From the window rows, units sold per (window, start, sku) summed over locations become the
//! multiplicity of `sku` under the key `(window, start)`. A two-level reduce keeps the best `k`:
//! first within 16 hash buckets of SKUs (so one popular window does not pin one worker with all
//! SKUs), then over the buckets' winners. The result is published to the [`ViewStore`] once the
//! frontier has passed each time, so a read sees whole times only.

use crate::views::ViewStore;
use crate::{Diff, Time};
use differential_dataflow::VecCollection;
use std::collections::BTreeMap;
use std::sync::Arc;
use stockflow_types::rows::Change;
use stockflow_types::{Millis, Name};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::StreamVec;

const BUCKETS: u64 = 16;

/// A ranked entry: `(-units_sold, sku)` under `(window_ms, window_start)`.
type Ranked = ((Millis, Millis), (i64, Name));

/// The `k` best-selling SKUs of every window, as `((window_ms, start), (-units, sku))`,
/// brought up to date at multiples of `step` ms: changes are delayed to the next multiple, so
/// the ranking at a multiple `T` reflects exactly the changes at or before `T`.
pub fn top_sellers<'s>(
    changes: VecCollection<'s, Time, Change, Diff>,
    k: usize,
    step: u64,
) -> VecCollection<'s, Time, Ranked, Diff> {
    let best = move |input: &[(&(i64, Name), Diff)], output: &mut Vec<((i64, Name), Diff)>| {
        for (entry, _) in input.iter().take(k) {
            output.push(((*entry).clone(), 1));
        }
    };
    changes
        .delay(move |t| t.div_ceil(step) * step)
        .explode(|c| match c {
            Change::Window(w) if w.figures.units_sold != 0 => {
                Some(((w.window_ms, w.window_start, w.sku), w.figures.units_sold))
            }
            _ => None,
        })
        .map(|(window, start, sku)| {
            (
                (window, start, crate::ledger::sku_hash(&sku) % BUCKETS),
                sku,
            )
        })
        .reduce_named(
            "UnitsSoldBySkuBucket",
            move |_key, input: &[(&Name, Diff)], output: &mut Vec<((i64, Name), Diff)>| {
                let mut ranked: Vec<(i64, Name)> = input
                    .iter()
                    .filter(|(_, units)| *units > 0)
                    .map(|(sku, units)| (-units, Arc::clone(sku)))
                    .collect();
                ranked.sort_unstable();
                output.extend(ranked.into_iter().take(k).map(|r| (r, 1)));
            },
        )
        .map(|((window, start, _bucket), ranked)| ((window, start), ranked))
        .reduce_named("TopSellersByWindow", move |_key, input, output| {
            best(input, output)
        })
}

/// Publishes the rankings into `store` as each time completes, and the last multiple of `step`
/// completed as the view's `as_of`. Returns a stream to probe.
pub fn publish<'s>(
    ranked: VecCollection<'s, Time, Ranked, Diff>,
    store: Arc<ViewStore>,
    local_worker: usize,
    step: u64,
) -> StreamVec<'s, Time, ()> {
    ranked
        .inner
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
