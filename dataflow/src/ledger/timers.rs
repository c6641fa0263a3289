//! Timers of the ledger, on two clocks:
//!
//! - **pipeline time** (`as_of`): expiries, due at the first tick at or after `expires_at`; the
//!   operator holds a capability for the earliest, so they fire even when no event arrives;
//! - **log time**: forgetting (ended reservations, orphans, tombstones) and window eviction, due
//!   once the log frontier (the least log time any worker's sources may still deliver) has
//!   passed them. The frontier moves only with the control stream, so these need no capability.
//!
//! Timers are derived state: a restore rebuilds them from the reservations and windows.
//! A timer that fires for something that changed since is re-evaluated and does nothing.

use crate::Time;
use std::collections::BTreeMap;
use stockflow_types::{Millis, Name};

/// A SKU's place in the worker's list of SKUs.
pub(crate) type SkuId = u32;

/// Due at a pipeline time.
#[derive(Debug)]
pub(crate) enum PipelineTimer {
    /// A reservation may have expired.
    Expiry(Name),
}

/// Due at a log time.
#[derive(Debug)]
pub(crate) enum LogTimer {
    /// A reservation, orphan or tombstone may be forgotten.
    Forget(Name),
    /// Windows may be past `window_retention`.
    Windows,
}

#[derive(Debug, Default)]
pub(crate) struct Timers {
    pipeline: BTreeMap<Time, Vec<(SkuId, PipelineTimer)>>,
    log: BTreeMap<Millis, Vec<(SkuId, LogTimer)>>,
}

impl Timers {
    pub fn at_pipeline(&mut self, t: Time, sku: SkuId, timer: PipelineTimer) {
        self.pipeline.entry(t).or_default().push((sku, timer));
    }

    pub fn at_log(&mut self, lt: Millis, sku: SkuId, timer: LogTimer) {
        self.log.entry(lt).or_default().push((sku, timer));
    }

    /// Timers built at once from lists in any order (a restore sets millions): sorted, grouped
    /// and bulk-built rather than inserted one by one.
    pub fn from_lists(
        mut pipeline: Vec<(Time, SkuId, PipelineTimer)>,
        mut log: Vec<(Millis, SkuId, LogTimer)>,
    ) -> Self {
        pipeline.sort_unstable_by_key(|e| e.0);
        log.sort_unstable_by_key(|e| e.0);
        Timers {
            pipeline: group(pipeline),
            log: group(log),
        }
    }

    /// The earliest pipeline time at which a timer is due.
    pub fn next_pipeline(&self) -> Option<Time> {
        self.pipeline.keys().next().copied()
    }

    /// Takes the pipeline timers due at or before `t`.
    pub fn due_pipeline(&mut self, t: Time, out: &mut Vec<(SkuId, PipelineTimer)>) {
        while let Some(entry) = self.pipeline.first_entry() {
            if *entry.key() > t {
                break;
            }
            out.extend(entry.remove());
        }
    }

    /// Takes the log timers due at or before the log frontier `frontier`, whole log times at a
    /// time, until `budget` are taken (a log time's timers are all taken once begun). Returns
    /// the log time through which every due timer is taken: `frontier`, or less when the budget
    /// ran out first.
    pub fn due_log(
        &mut self,
        frontier: Millis,
        budget: usize,
        out: &mut Vec<(SkuId, LogTimer)>,
    ) -> Millis {
        while let Some(entry) = self.log.first_entry() {
            let at = *entry.key();
            if at > frontier {
                break;
            }
            if out.len() >= budget {
                return at - 1; // `at` is not taken; everything before it is
            }
            out.extend(entry.remove());
        }
        frontier
    }
}

fn group<T>(sorted: Vec<(u64, SkuId, T)>) -> BTreeMap<u64, Vec<(SkuId, T)>> {
    let mut grouped: Vec<(u64, Vec<(SkuId, T)>)> = Vec::new();
    for (at, sku, timer) in sorted {
        match grouped.last_mut() {
            Some((last, list)) if *last == at => list.push((sku, timer)),
            _ => grouped.push((at, vec![(sku, timer)])),
        }
    }
    grouped.into_iter().collect()
}
