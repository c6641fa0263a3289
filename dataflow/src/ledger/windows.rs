//! Windowed sales figures of a SKU: contributions by business time, final once their window is
//! `window_retention` past its end in log time, evicted when the log frontier gets there.
//!
//! A contribution is checked against the log time of the record that causes it (not the
//! frontier): so whether a late event still counts depends on that record alone. Contributions
//! of a time are gathered, then applied under one write lock of the SKU's published windows.

use super::state::{Ctx, Sku};
use super::stock::LocId;
use super::timers::LogTimer;
use crate::{Diff, EngineConfig};
use std::sync::Arc;
use stockflow_types::rows::{Change, WindowFigures, WindowRow};
use stockflow_types::Millis;

/// When a window becomes final: `window_retention` after its end, in log time.
pub(crate) fn final_at(cfg: &EngineConfig, size: Millis, start: Millis) -> Millis {
    start
        .saturating_add(size)
        .saturating_add(cfg.window_retention_ms)
}

impl Sku {
    /// Adds `sign × f` to the windows of business time `ts` at `loc`, as caused by a record of
    /// log time `lt`; windows already final at `lt` are left alone and counted as late.
    pub fn add_window(
        &mut self,
        ctx: &mut Ctx<'_>,
        lt: Millis,
        loc: LocId,
        ts: Millis,
        f: &WindowFigures,
        sign: Diff,
    ) {
        if f.units_sold != 0 && ctx.cfg.forecast.is_some() {
            self.demand
                .push((loc, ts, f.units_sold.saturating_mul(sign), lt));
        }
        for (i, w) in ctx.cfg.windows.iter().enumerate() {
            let start = ts - ts % w.size_ms;
            if final_at(ctx.cfg, w.size_ms, start) <= lt {
                ctx.stats.late_window_events[i] += 1;
                continue;
            }
            let found = self
                .window_deltas
                .iter_mut()
                .find(|((size, st, l), _)| *size == w.size_ms && *st == start && *l == loc);
            match found {
                Some((_, delta)) => delta.add(f, sign),
                None => {
                    let mut delta = WindowFigures::default();
                    delta.add(f, sign);
                    self.window_deltas.push(((w.size_ms, start, loc), delta));
                }
            }
        }
    }

    /// Applies this time's contributions and, when due, the evictions at the log frontier;
    /// appends the changed rows.
    pub fn settle_windows(&mut self, ctx: &mut Ctx<'_>, out: &mut Vec<(Change, Diff)>) {
        if self.window_deltas.is_empty() && !self.evict_windows {
            return;
        }
        let sku = &self.name;
        let mut w = self.windows.write();
        for ((size, start, loc), delta) in self.window_deltas.drain(..) {
            let location = &self.locs[loc as usize].name;
            let row = |figures: WindowFigures| WindowRow {
                window_ms: size,
                window_start: start,
                sku: Arc::clone(sku),
                location: Arc::clone(location),
                figures,
            };
            match w.windows.entry((size, start, Arc::clone(location))) {
                std::collections::btree_map::Entry::Occupied(mut e) => {
                    let old = *e.get();
                    let mut new = old;
                    new.add(&delta, 1);
                    if new == old {
                        continue;
                    }
                    out.push((Change::Window(row(old)), -1));
                    if new.is_zero() {
                        e.remove();
                    } else {
                        out.push((Change::Window(row(new)), 1));
                        *e.get_mut() = new;
                    }
                }
                std::collections::btree_map::Entry::Vacant(e) => {
                    let mut new = WindowFigures::default();
                    new.add(&delta, 1);
                    if new.is_zero() {
                        continue;
                    }
                    out.push((Change::Window(row(new)), 1));
                    e.insert(new);
                    let at = final_at(ctx.cfg, size, start);
                    if at <= ctx.frontier {
                        // Final already at the frontier (its record was older): evicted below.
                        self.evict_windows = true;
                    } else if self.window_timers.insert(at) {
                        ctx.timers.at_log(at, ctx.sku, LogTimer::Windows);
                    }
                }
            }
        }
        if std::mem::take(&mut self.evict_windows) {
            let frontier = ctx.frontier;
            while self.window_timers.first().is_some_and(|at| *at <= frontier) {
                self.window_timers.pop_first();
            }
            let cfg = ctx.cfg;
            w.windows.retain(|(size, start, loc), figures| {
                let keep = final_at(cfg, *size, *start) > frontier;
                if !keep {
                    let row = Change::Window(WindowRow {
                        window_ms: *size,
                        window_start: *start,
                        sku: Arc::clone(sku),
                        location: Arc::clone(loc),
                        figures: *figures,
                    });
                    out.push((Change::Forgotten(Box::new(row.clone())), 1));
                    out.push((row, -1));
                }
                keep
            });
        }
        w.changed_at = ctx.t;
    }
}
