//! The reservation lifecycle: the facts a reservation is decided by, the one place that says
//! its phase at a pipeline time, what it contributes to its location and windows, and when it
//! is forgotten (in log time).
//!
//! Facts: the first `reserved` by (ts, event_id) and the first terminal event by
//! (ts, event_id), plus the log times at which the log first brought each. Everything else is
//! derived from them and rebuilt on restore.

use super::state::{Ctx, Sku};
use super::stock::LocId;
use super::timers::{LogTimer, PipelineTimer};
use crate::clock::tick_ceil;
use crate::Time;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use stockflow_types::rows::Status;
use stockflow_types::rows::WindowFigures;
use stockflow_types::Millis;
use stockflow_types::Name;

/// The deciding `reserved` event.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub(crate) struct Reserved {
    pub ts: Millis,
    pub event_id: String,
    pub loc: LocId,
    pub qty: i64,
    pub expires_at: Millis,
}

/// The deciding terminal event.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub(crate) struct Terminal {
    pub ts: Millis,
    pub event_id: String,
    pub fulfilled: bool,
}

/// The facts that decide when the log forgets a reservation: the one rule, for the ledger's
/// reservations and for the id owner's bindings ([`crate::ids`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Horizon {
    /// The deciding `reserved` event's `expires_at`, once a `reserved` was read.
    pub expires_at: Option<Millis>,
    /// A terminal event was read.
    pub terminal: bool,
    /// The log time of the first `reserved` record of this incarnation.
    pub reserved_lt: Option<Millis>,
    /// The log time of the first terminal record of this incarnation.
    pub terminal_lt: Option<Millis>,
    /// A tombstone: the log time at which it had ended.
    pub forgotten: Option<Millis>,
}

impl Horizon {
    /// The log time at which the log ended it: when both its `reserved` and its terminal event
    /// had been read; without a terminal event, its expiry (or when its `reserved` was read, if
    /// later); for an orphan, when its terminal event was read.
    pub fn ended(&self) -> Millis {
        if let Some(ended) = self.forgotten {
            return ended;
        }
        let reserved_lt = self.reserved_lt.unwrap_or(0);
        let terminal_lt = self.terminal_lt.unwrap_or(0);
        match (self.expires_at, self.terminal) {
            (Some(_), true) => reserved_lt.max(terminal_lt),
            (Some(expires_at), false) => reserved_lt.max(expires_at),
            (None, _) => terminal_lt,
        }
    }

    /// The log time from which it is forgotten: `retention` after it ended (an orphan goes
    /// entirely, a reservation leaves a tombstone), and a tombstone another `retention` later.
    pub fn forget_at(&self, retention: u64) -> Millis {
        let after = if self.forgotten.is_some() {
            retention.saturating_mul(2)
        } else {
            retention
        };
        self.ended().saturating_add(after)
    }

    /// Whether forgetting leaves nothing (a tombstone or an orphan), rather than a tombstone.
    pub fn goes_entirely(&self) -> bool {
        self.forgotten.is_some() || self.expires_at.is_none()
    }

    /// The log time from which nothing of it is left.
    pub fn gone_at(&self, retention: u64) -> Millis {
        if self.goes_entirely() {
            self.forget_at(retention)
        } else {
            self.ended().saturating_add(retention.saturating_mul(2))
        }
    }

    /// One step of forgetting: the tombstone it leaves, or `None` if nothing is left.
    pub fn forgotten(&self) -> Option<Horizon> {
        (!self.goes_entirely()).then(|| Horizon {
            forgotten: Some(self.ended()),
            ..Horizon::default()
        })
    }
}

/// Where a reservation stands at a pipeline time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Only terminal events so far: it waits for its `reserved`.
    Orphan,
    /// Competes for stock (held or insufficient, decided by allocation).
    Live,
    /// No terminal event and `as_of >= expires_at`.
    Expired,
    Released,
    Fulfilled,
    /// Ended more than `retention` ago in log time: only a tombstone remains, so that a lookup
    /// can say so.
    Forgotten,
}

/// A contribution at a location: (location, business time, qty).
pub(crate) type Contribution = Option<(LocId, Millis, i64)>;

/// What a reservation contributes to its location and windows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Contributions {
    /// In the live set of its location at (ts of `reserved`, qty).
    pub live: Contribution,
    /// Shipped: a movement of -qty at the terminal event's ts (and a sale in its window).
    pub shipped: Contribution,
    /// `units_reserved` in the window of the `reserved` event's ts.
    pub reserved_window: Contribution,
}

/// What the last published row said (the rest of the row is the reservation's id and SKU).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Published {
    pub status: Status,
    pub loc: LocId,
    pub qty: i64,
    pub expires_at: Millis,
}

/// One reservation (or orphan terminal event, or tombstone) of a SKU.
#[derive(Debug, Default)]
pub(crate) struct Res {
    pub reserved: Option<Reserved>,
    pub terminal: Option<Terminal>,
    /// The log time of the first `reserved` record of this incarnation.
    pub reserved_lt: Option<Millis>,
    /// The log time of the first terminal record of this incarnation.
    pub terminal_lt: Option<Millis>,
    /// A tombstone: the log time at which it had ended.
    pub forgotten: Option<Millis>,
    // Derived, rebuilt on restore.
    /// Its entry in its location's live set.
    pub live_at: Contribution,
    pub expiry_timer: Option<Time>,
    pub log_timer: Option<Millis>,
    pub published: Option<Published>,
    /// The last state of an incarnation just forgotten, to leave in the sinks as history: the
    /// next settle emits it (and that it was forgotten, not deleted).
    pub history: Option<Published>,
}

impl Res {
    /// The one place that says where the reservation stands at pipeline time `t`.
    pub fn phase(&self, t: Time) -> Phase {
        if self.forgotten.is_some() {
            return Phase::Forgotten;
        }
        match (&self.reserved, &self.terminal) {
            (None, _) => Phase::Orphan,
            (Some(_), Some(term)) if term.fulfilled => Phase::Fulfilled,
            (Some(_), Some(_)) => Phase::Released,
            (Some(r), None) if t >= r.expires_at => Phase::Expired,
            (Some(_), None) => Phase::Live,
        }
    }

    /// The log time at which the log ended it: when both its `reserved` and its terminal event
    /// had been read; without a terminal event, its expiry (or when its `reserved` was read, if
    /// later); for an orphan, when its terminal event was read.
    pub fn ended(&self) -> Millis {
        self.horizon().ended()
    }

    /// The log time from which it is forgotten: `retention` after it ended (an orphan goes
    /// entirely, a reservation leaves a tombstone), and a tombstone another `retention` later.
    pub fn forget_at(&self, retention: u64) -> Millis {
        self.horizon().forget_at(retention)
    }

    pub(crate) fn horizon(&self) -> Horizon {
        Horizon {
            expires_at: self.reserved.as_ref().map(|r| r.expires_at),
            terminal: self.terminal.is_some(),
            reserved_lt: self.reserved_lt,
            terminal_lt: self.terminal_lt,
            forgotten: self.forgotten,
        }
    }

    /// What it contributes at pipeline time `t`.
    pub fn contributions(&self, t: Time) -> Contributions {
        let Some(r) = &self.reserved else {
            return Contributions::default();
        };
        let at = Some((r.loc, r.ts, r.qty));
        Contributions {
            live: (self.phase(t) == Phase::Live).then_some((r.loc, r.ts, r.qty)),
            shipped: self
                .terminal
                .as_ref()
                .filter(|term| term.fulfilled)
                .map(|term| (r.loc, term.ts, r.qty)),
            reserved_window: at,
        }
    }

    /// The row to publish at `t`, given the allocation of a live one.
    pub fn published_at(&self, t: Time, held: impl FnOnce() -> bool) -> Option<Published> {
        let r = self.reserved.as_ref()?;
        let status = match self.phase(t) {
            Phase::Orphan | Phase::Forgotten => return None,
            Phase::Fulfilled => Status::Fulfilled,
            Phase::Released => Status::Released,
            Phase::Expired => Status::Expired,
            Phase::Live if held() => Status::Held,
            Phase::Live => Status::Insufficient,
        };
        Some(Published {
            status,
            loc: r.loc,
            qty: r.qty,
            expires_at: r.expires_at,
        })
    }
}

impl Sku {
    /// Applies a record of reservation `id` with log time `lt`: what the log has forgotten by
    /// `lt` is forgotten first (a forgotten reservation's tombstone gives way to a new one), then
    /// `update` changes the facts and the difference in contributions is applied.
    pub fn reservation_record(
        &mut self,
        ctx: &mut Ctx<'_>,
        lt: Millis,
        id: &str,
        update: impl FnOnce(&mut Res),
    ) {
        self.forget_by(ctx, lt, id);
        let name = match self.res.get_key_value(id) {
            Some((n, _)) => Arc::clone(n),
            None => {
                let n = Name::from(id);
                self.res.insert(Arc::clone(&n), Res::default());
                n
            }
        };
        let res = self.res.get_mut(&name).expect("present");
        if res.forgotten.is_some() {
            // A new incarnation; the tombstone's row, if still published, is retired below.
            *res = Res {
                published: res.published,
                history: res.history,
                ..Res::default()
            };
        }
        let old = res.contributions(ctx.t);
        update(res);
        let new = res.contributions(ctx.t);
        self.apply_contributions(ctx, &name, &old, &new, lt);
        self.schedule(ctx, &name);
        self.dirty_res.push(name);
    }

    /// Forgets what the log has forgotten of reservation `id` by log time `lt`.
    pub fn forget_by(&mut self, ctx: &mut Ctx<'_>, lt: Millis, id: &str) {
        let retention = ctx.cfg.retention_ms;
        if let Some(name) = self.res.get_key_value(id).map(|(n, _)| Arc::clone(n)) {
            while self
                .res
                .get(&name)
                .is_some_and(|r| r.forget_at(retention) <= lt)
            {
                self.forget_step(ctx, &name);
            }
        }
    }

    /// Brings reservation `id` up to date with the pipeline time (expiry) and the log frontier
    /// (forgetting).
    pub fn refresh_reservation(&mut self, ctx: &mut Ctx<'_>, id: &Name) {
        let retention = ctx.cfg.retention_ms;
        while self
            .res
            .get(id)
            .is_some_and(|r| r.forget_at(retention) <= ctx.frontier)
        {
            self.forget_step(ctx, id);
        }
        let Some(res) = self.res.get_mut(id) else {
            return;
        };
        let live = res.contributions(ctx.t).live;
        if live != res.live_at {
            let old = std::mem::replace(&mut res.live_at, live);
            self.move_live(id, old, live);
        }
        self.schedule(ctx, id);
    }

    /// Moves a reservation's entry in the live sets.
    fn move_live(&mut self, id: &Name, old: Contribution, new: Contribution) {
        if let Some((loc, ts, _)) = old {
            self.locs[loc as usize].remove_live(ts, id);
            self.dirty_locs.push(loc);
        }
        if let Some((loc, ts, qty)) = new {
            self.locs[loc as usize].add_live(ts, id, qty);
            self.dirty_locs.push(loc);
        }
    }

    /// Applies the difference between two contributions of reservation `id`, caused by a
    /// record of log time `lt` (which decides whether a window is already final).
    fn apply_contributions(
        &mut self,
        ctx: &mut Ctx<'_>,
        id: &Name,
        old: &Contributions,
        new: &Contributions,
        lt: Millis,
    ) {
        let res = self.res.get_mut(id).expect("present");
        if new.live != res.live_at {
            let before = std::mem::replace(&mut res.live_at, new.live);
            self.move_live(id, before, new.live);
        }
        if old.shipped != new.shipped {
            for (entry, sign) in [(old.shipped, -1i64), (new.shipped, 1)] {
                if let Some((loc, ts, qty)) = entry {
                    self.locs[loc as usize].add_movement(ts, -qty * sign, ctx.fold_before);
                    self.dirty_locs.push(loc);
                    let f = WindowFigures {
                        units_sold: qty,
                        orders: 1,
                        ..Default::default()
                    };
                    self.add_window(ctx, lt, loc, ts, &f, sign);
                }
            }
        }
        if old.reserved_window != new.reserved_window {
            for (entry, sign) in [(old.reserved_window, -1i64), (new.reserved_window, 1)] {
                if let Some((loc, ts, qty)) = entry {
                    let f = WindowFigures {
                        units_reserved: qty,
                        ..Default::default()
                    };
                    self.add_window(ctx, lt, loc, ts, &f, sign);
                }
            }
        }
    }

    /// Forgets one step: a reservation leaves a tombstone (its effects on stock and windows
    /// stay); a tombstone or an orphan goes entirely.
    fn forget_step(&mut self, ctx: &mut Ctx<'_>, id: &Name) {
        let res = self.res.get_mut(id).expect("present");
        if res.horizon().goes_entirely() {
            let res = self.res.remove(id).expect("present");
            if res.published.is_some() || res.history.is_some() {
                self.gone.push((Arc::clone(id), res.published, res.history));
            }
            ctx.store.remove_reservation(id, &self.name);
            return;
        }
        // Its last state (as it would be published now) stays in the sinks as history.
        let locs = &self.locs;
        let held = || {
            res.live_at
                .and_then(|(loc, ts, _)| locs[loc as usize].live.get(&(ts, Arc::clone(id))))
                .and_then(|l| l.held)
                .unwrap_or(false)
        };
        let last = res.published_at(ctx.t, held).or(res.published);
        let ended = res.ended();
        let live = res.live_at.take();
        *res = Res {
            forgotten: Some(ended),
            published: res.published,
            history: last,
            ..Res::default()
        };
        self.move_live(id, live, None);
        self.schedule(ctx, id);
        self.dirty_res.push(Arc::clone(id));
    }

    /// Sets the timers reservation `id` needs: its expiry while live, its forgetting.
    fn schedule(&mut self, ctx: &mut Ctx<'_>, id: &Name) {
        let Some(res) = self.res.get_mut(id) else {
            return;
        };
        let at = res.forget_at(ctx.cfg.retention_ms);
        if res.log_timer != Some(at) {
            res.log_timer = Some(at);
            ctx.timers
                .at_log(at, ctx.sku, LogTimer::Forget(Arc::clone(id)));
        }
        if let (Phase::Live, Some(r)) = (res.phase(ctx.t), &res.reserved) {
            let expiry = tick_ceil(r.expires_at, ctx.cfg.tick_ms);
            if res.expiry_timer != Some(expiry) {
                res.expiry_timer = Some(expiry);
                ctx.timers
                    .at_pipeline(expiry, ctx.sku, PipelineTimer::Expiry(Arc::clone(id)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reserved(expires_at: Millis) -> Reserved {
        Reserved {
            ts: 5,
            event_id: "e".into(),
            loc: 0,
            qty: 2,
            expires_at,
        }
    }

    #[test]
    fn phases_and_horizons() {
        let mut r = Res {
            terminal: Some(Terminal {
                ts: 3,
                event_id: "t".into(),
                fulfilled: true,
            }),
            terminal_lt: Some(40),
            ..Res::default()
        };
        assert_eq!(r.phase(0), Phase::Orphan);
        assert_eq!(r.forget_at(100), 140);
        r.reserved = Some(reserved(1000));
        r.reserved_lt = Some(60);
        assert_eq!(r.phase(0), Phase::Fulfilled);
        assert_eq!(r.ended(), 60, "ended when both were read");
        assert_eq!(r.contributions(0).shipped, Some((0, 3, 2)));
        assert_eq!(r.contributions(0).live, None);
        r.terminal = None;
        assert_eq!(r.phase(999), Phase::Live);
        assert_eq!(r.phase(1000), Phase::Expired);
        assert_eq!(r.ended(), 1000, "a hold ends at its expiry in log time");
        r.forgotten = Some(r.ended());
        assert_eq!(r.phase(0), Phase::Forgotten);
        assert_eq!(
            r.forget_at(100),
            1200,
            "a tombstone lasts another retention"
        );
    }
}
