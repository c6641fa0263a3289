//! Data quality, a maintained view (docs/data-quality.md): per location, the signals that
//! the ledger's own rows show, folded from the change collection as the ledger emits it, so
//! they are exactly the rows' (the oracle test recomputes them from the rows at every time).
//!
//! - Keys with `on_hand < 0`, and by how many units: the book says more left than came in (a
//!   missing receipt, a sale recorded twice, a count that was low).
//! - Holds that expired without a release or a fulfilment, among the reservations the pipeline
//!   retains (`pipeline.retention` after they end): a checkout that forgot to release.
//!
//! The forecaster adds, per location, the keys whose features are stale (no event for a season
//! of buckets), published with its views.

use serde::Serialize;
use std::collections::BTreeMap;
use stockflow_types::rows::{Change, Status};
use stockflow_types::Name;

/// The signals of one location.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LocQuality {
    /// (sku, location) keys whose `on_hand` is below zero.
    pub negative_keys: i64,
    /// Σ −`on_hand` over them.
    pub negative_units: i64,
    /// Reservations whose status is `expired`.
    pub expired_holds: i64,
    /// Σ `qty` over them.
    pub expired_units: i64,
}

impl LocQuality {
    fn add(&mut self, o: &LocQuality, sign: i64) {
        self.negative_keys += sign * o.negative_keys;
        self.negative_units = self.negative_units.saturating_add(sign * o.negative_units);
        self.expired_holds += sign * o.expired_holds;
        self.expired_units = self.expired_units.saturating_add(sign * o.expired_units);
    }

    fn is_zero(&self) -> bool {
        *self == LocQuality::default()
    }
}

/// The signals per location of the rows folded so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Quality {
    /// Locations with a non-zero signal.
    pub locs: BTreeMap<Name, LocQuality>,
}

impl Quality {
    /// Folds in one row change; says whether a signal moved.
    pub fn apply(&mut self, change: &Change, diff: i64) -> bool {
        let (location, q) = match change {
            Change::Stock(r) if r.on_hand < 0 => (
                &r.location,
                LocQuality {
                    negative_keys: 1,
                    negative_units: r.on_hand.saturating_neg(),
                    ..LocQuality::default()
                },
            ),
            Change::Reservation(r) if r.status == Status::Expired => (
                &r.location,
                LocQuality {
                    expired_holds: 1,
                    expired_units: r.qty,
                    ..LocQuality::default()
                },
            ),
            _ => return false,
        };
        let entry = self.locs.entry(Name::clone(location)).or_default();
        entry.add(&q, diff.signum());
        if entry.is_zero() {
            self.locs.remove(location);
        }
        true
    }

    /// Adds another worker's signals.
    pub fn merge(&mut self, other: &Quality) {
        for (loc, q) in &other.locs {
            let entry = self.locs.entry(Name::clone(loc)).or_default();
            entry.add(q, 1);
            if entry.is_zero() {
                self.locs.remove(loc);
            }
        }
    }

    /// The sum over every location.
    pub fn total(&self) -> LocQuality {
        let mut t = LocQuality::default();
        for q in self.locs.values() {
            t.add(q, 1);
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stockflow_types::rows::{ReservationRow, StockRow};

    fn stock(loc: &str, on_hand: i64) -> Change {
        Change::Stock(StockRow {
            sku: "S".into(),
            location: loc.into(),
            on_hand,
            reserved: 0,
            available: on_hand,
        })
    }

    fn hold(id: &str, status: Status, qty: i64) -> Change {
        Change::Reservation(ReservationRow {
            reservation_id: id.into(),
            sku: "S".into(),
            location: "L".into(),
            qty,
            status,
            expires_at: 0,
        })
    }

    #[test]
    fn follows_the_rows_in_and_out() {
        let mut q = Quality::default();
        assert!(!q.apply(&stock("L", 3), 1));
        // Sold below zero, then corrected by a receipt.
        q.apply(&stock("L", 3), -1);
        assert!(q.apply(&stock("L", -2), 1));
        assert_eq!(q.total().negative_keys, 1);
        assert_eq!(q.total().negative_units, 2);
        q.apply(&stock("L", -2), -1);
        q.apply(&stock("L", 4), 1);
        assert!(q.locs.is_empty(), "nothing to report: {q:?}");
        // A hold that expired, then was released late; another that expired and was forgotten.
        q.apply(&hold("a", Status::Held, 2), 1);
        q.apply(&hold("a", Status::Held, 2), -1);
        q.apply(&hold("a", Status::Expired, 2), 1);
        q.apply(&hold("b", Status::Expired, 5), 1);
        assert_eq!((q.total().expired_holds, q.total().expired_units), (2, 7));
        q.apply(&hold("a", Status::Expired, 2), -1);
        q.apply(&hold("a", Status::Released, 2), 1);
        q.apply(&hold("b", Status::Expired, 5), -1);
        assert!(q.locs.is_empty(), "{q:?}");
    }

    #[test]
    fn merges_workers() {
        let (mut a, mut b) = (Quality::default(), Quality::default());
        a.apply(&stock("L", -1), 1);
        b.apply(&stock("L", -3), 1);
        b.apply(&stock("M", -1), 1);
        a.merge(&b);
        assert_eq!(a.locs["L"].negative_keys, 2);
        assert_eq!(a.locs["L"].negative_units, 4);
        assert_eq!(a.total().negative_keys, 3);
    }
}
