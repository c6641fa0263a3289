//! Benchmarks of stockflow, each printed side by side with a plain baseline measured in the
//! same run. `engine-bench` measures the dataflow alone (no JSON, no HTTP) against a
//! single-thread `HashMap` fold that computes the same stock levels from the same events.

use hashbrown::HashMap;
use stockflow_types::event::{Event, EventKind};

/// Reads this process's resident set size in bytes (Linux), or 0.
pub fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// The baseline: what a hand-written consumer keeps, stock per (sku, location), folded in
/// arrival order. Counts overwrite (events arrive in business-time order here), fulfilments
/// look their reservation up. No allocation among reservations, no expiry, no windows, no
/// de-duplication. Lookups borrow (`entry_ref`), so a hit allocates nothing.
#[derive(Default)]
pub struct HashMapFold {
    /// on_hand per sku, then location.
    pub stock: HashMap<String, HashMap<String, i64>>,
    reservations: HashMap<String, (String, String, i64)>,
}

impl HashMapFold {
    /// Applies one event.
    pub fn apply(&mut self, ev: &Event) {
        match &ev.kind {
            EventKind::Received { location, qty } | EventKind::Adjusted { location, qty } => {
                *self.entry(&ev.sku, location) += qty;
            }
            EventKind::Sold { location, qty } => *self.entry(&ev.sku, location) -= qty,
            EventKind::Counted { location, qty } => *self.entry(&ev.sku, location) = *qty,
            EventKind::Reserved {
                reservation_id,
                location,
                qty,
                ..
            } => {
                self.entry(&ev.sku, location);
                self.reservations.insert(
                    reservation_id.clone(),
                    (ev.sku.clone(), location.clone(), *qty),
                );
            }
            EventKind::Released { reservation_id } => {
                self.reservations.remove(reservation_id);
            }
            EventKind::Fulfilled { reservation_id } => {
                if let Some((sku, location, qty)) = self.reservations.remove(reservation_id) {
                    *self.entry(&sku, &location) -= qty;
                }
            }
        }
    }

    fn entry(&mut self, sku: &str, location: &str) -> &mut i64 {
        self.stock
            .entry_ref(sku)
            .or_default()
            .entry_ref(location)
            .or_insert(0)
    }

    /// Number of (sku, location) keys.
    pub fn keys(&self) -> usize {
        self.stock.values().map(HashMap::len).sum()
    }
}
