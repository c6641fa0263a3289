//! Stock and allocation of one (sku, location): the latest count, the movements after it by
//! business time (folded into one sum once no admissible count can precede them), and the live
//! reservations walked first come, first served.

use crate::Diff;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use stockflow_types::{Millis, Name};

/// A location's place in its SKU's list of locations (order of first sight; stable across a
/// restore).
pub(crate) type LocId = u32;

/// The latest cycle count of a location: (ts, event_id) decides which count is the latest.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub(crate) struct CountRec {
    pub ts: Millis,
    pub event_id: String,
    pub qty: i64,
}

/// A live reservation within its location's allocation order (derived from the reservation:
/// rebuilt on restore).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Live {
    pub qty: i64,
    /// The last allocation (None until first allocated).
    pub held: Option<bool>,
}

/// One (sku, location).
#[derive(Debug)]
pub(crate) struct Loc {
    pub name: Name,
    pub count: Option<CountRec>,
    /// Movements after the count (or all, without one) by business time, not yet folded.
    /// Sorted by time; movements mostly arrive in time order, so this is an append.
    pub moves: VecDeque<(Millis, i64)>,
    pub moves_sum: i64,
    /// Movements after the count whose business time is older than any count that can still be
    /// admitted (log frontier − retention).
    pub folded: i64,
    /// Live reservations in allocation order: (ts of `reserved`, reservation id).
    pub live: BTreeMap<(Millis, Name), Live>,
    /// Sum of `qty` over `live`.
    pub live_total: i64,
    /// Live entries added since the last allocation.
    pub added: Vec<(Millis, Name)>,
    /// The last allocation held every live reservation.
    pub all_held: bool,
    /// The last allocation ran out of stock here: every live entry from this key on was
    /// `insufficient`.
    pub tail: Option<(Millis, Name)>,
    /// The last published row: (on_hand, reserved).
    pub published: Option<(i64, i64)>,
    /// Index of this location in the SKU's sorted location names.
    pub pos: usize,
}

impl Loc {
    pub fn new(name: Name, pos: usize) -> Self {
        Loc {
            name,
            count: None,
            moves: VecDeque::new(),
            moves_sum: 0,
            folded: 0,
            live: BTreeMap::new(),
            live_total: 0,
            added: Vec::new(),
            all_held: false,
            tail: None,
            published: None,
            pos,
        }
    }

    fn superseded(&self, ts: Millis) -> bool {
        self.count.as_ref().is_some_and(|c| ts <= c.ts)
    }

    /// Applies a movement of `qty` at business time `ts`; `fold_before` is the business time
    /// before which no admissible count can land (movements older than it are folded at once).
    pub fn add_movement(&mut self, ts: Millis, qty: Diff, fold_before: Millis) {
        if self.superseded(ts) {
            return;
        }
        if ts < fold_before {
            self.folded = self.folded.saturating_add(qty);
            return;
        }
        // Sums saturate rather than wrap (reached only beyond 9.2 million events of the
        // largest quantity on one key: `MAX_QTY`).
        match self.moves.back_mut() {
            Some(last) if last.0 == ts => last.1 = last.1.saturating_add(qty),
            Some(last) if last.0 > ts => {
                // Late: insert in place (rare).
                let i = self.moves.partition_point(|m| m.0 < ts);
                match self.moves.get_mut(i) {
                    Some(m) if m.0 == ts => m.1 = m.1.saturating_add(qty),
                    _ => self.moves.insert(i, (ts, qty)),
                }
            }
            _ => self.moves.push_back((ts, qty)),
        }
        self.moves_sum = self.moves_sum.saturating_add(qty);
    }

    /// Applies a count if it is the latest (by ts, then event_id): it supersedes every
    /// movement at or before its ts.
    pub fn apply_count(&mut self, rec: CountRec) {
        if self
            .count
            .as_ref()
            .is_some_and(|c| (c.ts, &c.event_id) >= (rec.ts, &rec.event_id))
        {
            return;
        }
        while self.moves.front().is_some_and(|m| m.0 <= rec.ts) {
            let (_, q) = self.moves.pop_front().expect("checked");
            self.moves_sum = self.moves_sum.saturating_sub(q);
        }
        // Folded movements are older than any count that can be admitted (`count_too_old`
        // rejects the others), so this one supersedes them all.
        self.folded = 0;
        self.count = Some(rec);
    }

    /// Folds the movements older than `fold_before` into one sum.
    pub fn fold(&mut self, fold_before: Millis) {
        while self.moves.front().is_some_and(|m| m.0 < fold_before) {
            let (_, q) = self.moves.pop_front().expect("checked");
            self.moves_sum = self.moves_sum.saturating_sub(q);
            self.folded = self.folded.saturating_add(q);
        }
    }

    pub fn on_hand(&self) -> i64 {
        self.count
            .as_ref()
            .map_or(0, |c| c.qty)
            .saturating_add(self.folded)
            .saturating_add(self.moves_sum)
    }

    /// Adds a live reservation at its place in the allocation order.
    pub fn add_live(&mut self, ts: Millis, id: &Name, qty: i64) {
        self.live_total = self.live_total.saturating_add(qty);
        self.added.push((ts, Name::clone(id)));
        self.live
            .insert((ts, Name::clone(id)), Live { qty, held: None });
    }

    /// Removes a live reservation.
    pub fn remove_live(&mut self, ts: Millis, id: &Name) {
        if let Some(l) = self.live.remove(&(ts, Name::clone(id))) {
            self.live_total = self.live_total.saturating_sub(l.qty);
        }
    }

    /// Allocates `on_hand` to the live reservations, first come first served (greedy: one that
    /// does not fit is skipped and later smaller ones may fit). Pushes the ids whose allocation
    /// changed to `changed` and returns the units held.
    ///
    /// The result is that of a full walk; two shortcuts keep hot locations cheap. When all were
    /// held and still fit, only new entries are visited. Once nothing remains, everything after
    /// is insufficient, and so was everything after the previous walk's exhaustion point: the
    /// walk stops there and only new entries beyond it are visited.
    pub fn allocate(&mut self, on_hand: i64, changed: &mut Vec<Name>) -> i64 {
        let mut added = std::mem::take(&mut self.added);
        let held = self.allocate_with(on_hand, &added, changed);
        added.clear();
        self.added = added; // keeps its capacity
        held
    }

    fn allocate_with(
        &mut self,
        on_hand: i64,
        added: &[(Millis, Name)],
        changed: &mut Vec<Name>,
    ) -> i64 {
        let mut set = |live: &mut Live, id: &Name, fits: bool| {
            if live.held != Some(fits) {
                live.held = Some(fits);
                changed.push(Name::clone(id));
            }
        };
        if self.all_held && on_hand >= self.live_total {
            for key in added {
                if let Some(live) = self.live.get_mut(key) {
                    set(live, &key.1, true);
                }
            }
            return self.live_total;
        }
        let old_tail = self.tail.take();
        let mut held = 0i64;
        for (key, live) in self.live.iter_mut() {
            if self.tail.is_none() && on_hand - held <= 0 {
                self.tail = Some(key.clone());
            }
            if self.tail.is_some() && old_tail.as_ref().is_some_and(|old| old <= key) {
                break; // insufficient before and after, but for new entries (below)
            }
            let fits = self.tail.is_none() && held.saturating_add(live.qty) <= on_hand;
            if fits {
                held += live.qty;
            }
            set(live, &key.1, fits);
        }
        for key in added {
            if let Some(live) = self.live.get_mut(key) {
                if live.held.is_none() {
                    set(live, &key.1, false);
                }
            }
        }
        self.all_held = held == self.live_total;
        held
    }
}

#[cfg(test)]
mod tests {
    use super::Loc;
    use proptest::prelude::*;
    use stockflow_types::Name;

    /// Allocation with shortcuts equals a plain greedy walk after every step.
    fn check_allocation(ops: Vec<(u8, u64, i64)>) -> Result<(), TestCaseError> {
        let mut loc = Loc::new("L".into(), 0);
        let mut names: Vec<Name> = (0..16).map(|i| Name::from(format!("r{i}"))).collect();
        names.sort();
        for (op, which, value) in ops {
            let key = (which % 4, Name::clone(&names[which as usize % names.len()]));
            match op % 3 {
                0 if !loc.live.contains_key(&key) => {
                    let qty = value.rem_euclid(5) + 1;
                    loc.add_live(key.0, &key.1, qty);
                }
                1 => loc.remove_live(key.0, &key.1),
                _ => {}
            }
            let on_hand = value.rem_euclid(30) - 5;
            let mut changed = Vec::new();
            let held = loc.allocate(on_hand, &mut changed);
            let mut want_held = 0;
            for l in loc.live.values() {
                let fits = want_held + l.qty <= on_hand;
                if fits {
                    want_held += l.qty;
                }
                prop_assert_eq!(l.held, Some(fits));
            }
            prop_assert_eq!(held, want_held);
        }
        Ok(())
    }

    /// Sums of quantities at the `i64` boundaries saturate, never wrap or panic (debug builds
    /// panic on overflow, so this runs every path that sums, from sums already at the edge);
    /// from an empty location, `on_hand` is the exact sum of the movements.
    fn check_boundaries(start: i64, ops: Vec<(u8, u64, i64)>) -> Result<(), TestCaseError> {
        let max = stockflow_types::event::MAX_QTY;
        let mut loc = Loc::new("L".into(), 0);
        loc.folded = start;
        loc.moves_sum = start;
        loc.live_total = start;
        let mut exact = 0i128;
        for (op, ts, q) in ops {
            let qty = q.clamp(-max, max);
            match op % 4 {
                0 => {
                    loc.add_movement(ts % 8, qty, 2);
                    exact += i128::from(qty);
                }
                1 => loc.fold(ts % 8),
                2 => {
                    let id: Name = format!("r{}", ts % 4).into();
                    if !loc.live.contains_key(&(ts % 4, Name::clone(&id))) {
                        loc.add_live(ts % 4, &id, qty.saturating_abs().max(1));
                    }
                    loc.remove_live(ts % 3, &id);
                }
                _ => {
                    let mut changed = Vec::new();
                    let held = loc.allocate(loc.on_hand(), &mut changed);
                    prop_assert!(held >= 0);
                }
            }
            if start == 0 {
                prop_assert_eq!(i128::from(loc.on_hand()), exact);
            }
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn sums_saturate_at_the_i64_boundaries(
            start in prop_oneof![Just(i64::MAX - 1), Just(i64::MIN + 1), Just(i64::MAX / 2), Just(0i64)],
            ops in prop::collection::vec((any::<u8>(), any::<u64>(), any::<i64>()), 1..60),
        ) {
            check_boundaries(start, ops)?;
        }

        #[test]
        fn allocation_matches_a_full_greedy_walk(ops in prop::collection::vec((any::<u8>(), any::<u64>(), any::<i64>()), 1..80)) {
            check_allocation(ops)?;
        }
    }
}
