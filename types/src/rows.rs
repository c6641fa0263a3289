//! The rows the dataflow maintains (contract §2). Each row type is both a dataflow record
//! (its changes flow as `(row, time, ±1)`) and what HTTP and the sinks read.

use crate::{Millis, Name};
use serde::{Deserialize, Serialize};

/// Stock of one (sku, location).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct StockRow {
    /// The SKU.
    pub sku: Name,
    /// The location.
    pub location: Name,
    /// Movements applied as the contract states (counts supersede older movements).
    pub on_hand: i64,
    /// Sum of `qty` over `held` reservations.
    pub reserved: i64,
    /// `on_hand - reserved`.
    pub available: i64,
}

/// The status of a reservation (contract §2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Status {
    /// Live and backed by stock.
    Held,
    /// Live but not backed by stock.
    Insufficient,
    /// No terminal event and `as_of >= expires_at`.
    Expired,
    /// Cancelled.
    Released,
    /// Shipped.
    Fulfilled,
}

impl Status {
    /// The contract's lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Held => "held",
            Status::Insufficient => "insufficient",
            Status::Expired => "expired",
            Status::Released => "released",
            Status::Fulfilled => "fulfilled",
        }
    }

    /// Whether the reservation still competes for stock.
    pub fn is_live(self) -> bool {
        matches!(self, Status::Held | Status::Insufficient)
    }
}

/// One reservation.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ReservationRow {
    /// The reservation.
    pub reservation_id: Name,
    /// The SKU.
    pub sku: Name,
    /// The location.
    pub location: Name,
    /// Units held (or asked for).
    pub qty: i64,
    /// The status at the row's time.
    pub status: Status,
    /// Expiry, epoch ms.
    pub expires_at: Millis,
}

/// The figures of one tumbling window of one (sku, location).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct WindowFigures {
    /// `sold` plus fulfilled quantities.
    pub units_sold: i64,
    /// `received` quantities.
    pub units_received: i64,
    /// Quantities of `reserved` events.
    pub units_reserved: i64,
    /// Count of `sold` plus fulfilled events.
    pub orders: i64,
}

impl WindowFigures {
    /// True when nothing contributes to the window any more.
    pub fn is_zero(&self) -> bool {
        *self == WindowFigures::default()
    }

    /// Adds `other` scaled by `sign` (+1 or -1), saturating at the `i64` bounds (reached only
    /// by 9.2 million events of the largest quantity in one window: never wrapped).
    pub fn add(&mut self, other: &WindowFigures, sign: i64) {
        let add = |a: &mut i64, b: i64| *a = a.saturating_add(b.saturating_mul(sign));
        add(&mut self.units_sold, other.units_sold);
        add(&mut self.units_received, other.units_received);
        add(&mut self.units_reserved, other.units_reserved);
        add(&mut self.orders, other.orders);
    }
}

/// One tumbling window of one (sku, location).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct WindowRow {
    /// The window size in ms (its name comes from the configuration, e.g. `1m`).
    pub window_ms: Millis,
    /// The window start, aligned to the epoch.
    pub window_start: Millis,
    /// The SKU.
    pub sku: Name,
    /// The location.
    pub location: Name,
    /// The figures.
    pub figures: WindowFigures,
}

/// A change to one of the maintained collections, as the dataflow emits it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Change {
    /// A stock row.
    Stock(StockRow),
    /// A reservation row.
    Reservation(ReservationRow),
    /// A window row.
    Window(WindowRow),
    /// A forecast issued, or scored once its label is final (contract §5). Appended, not
    /// maintained: emitted with `+1` when issued and again, with its label, when scored, never
    /// retracted; sinks write each as it is and keep the latest per key (model, sku, location,
    /// boundary, horizon). The pipeline keeps no collection of them.
    Forecast(Box<ForecastRow>),
    /// The features a key's forecasts were issued from: appended once, like [`Change::Forecast`].
    Features(Box<FeatureRow>),
    /// Not a row: the retraction of this row at the same time is the pipeline *forgetting* it
    /// (a window final and evicted, a reservation forgotten `retention` after it ended), not the
    /// row ceasing to exist. Sinks keep the row's last state as history. Emitted once, never
    /// retracted.
    Forgotten(Box<Change>),
}

/// An `f64` that can be a dataflow record: equal, ordered and hashed by its bits (`-0.0` and
/// `0.0` differ; a NaN equals itself), which is what a collection of rows needs.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Float(pub f64);

impl PartialEq for Float {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}
impl Eq for Float {}
impl PartialOrd for Float {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Float {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}
impl std::hash::Hash for Float {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.to_bits().hash(state);
    }
}

/// One forecast of one model version for one (sku, location) and horizon (contract §5): as
/// issued (`actual` is `None`), then as scored once its label is final.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ForecastRow {
    /// The SKU.
    pub sku: Name,
    /// The location.
    pub location: Name,
    /// The model version, `name:file version` (`pooled:1`).
    pub model: Name,
    /// The key's arm in the experiment.
    pub arm: Name,
    /// `cold_start`, `intermittent` or `smooth`, as the key was when issued.
    pub segment: Name,
    /// The bucket boundary it was issued at (the horizon's start), epoch ms.
    pub issued_at: Millis,
    /// The horizon's end, epoch ms.
    pub end: Millis,
    /// The horizon in buckets.
    pub buckets: u32,
    /// The mean demand over the horizon.
    pub mean: Float,
    /// The quantiles 0.5, 0.9, 0.95 and 0.99.
    pub q: [u32; 4],
    /// The probability that demand exceeds `available` within the horizon.
    pub stockout: Float,
    /// `available` when issued.
    pub available: i64,
    /// The key's RMSSE scale when issued (M5's mean squared one-step difference).
    pub scale: Float,
    /// The demand that happened, once final.
    pub actual: Option<u64>,
    /// Some bucket of the horizon was out of stock: the label is censored and not scored.
    pub censored: bool,
}

/// What a key's forecasts at one boundary were computed from: its history as the models read
/// it (point in time: exactly the log before the boundary).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FeatureRow {
    /// The SKU.
    pub sku: Name,
    /// The location.
    pub location: Name,
    /// The boundary, epoch ms.
    pub issued_at: Millis,
    /// The SKU's category (empty if none was listed).
    pub category: Name,
    /// `available` at the boundary.
    pub available: i64,
    /// Buckets since the key was first seen (at most the look-back).
    pub age: u32,
    /// Units sold per bucket of the look-back, oldest first.
    pub demand: Vec<u32>,
    /// The share of each bucket out of stock (buckets before the key was seen count as 1).
    pub out_of_stock: Vec<Float>,
    /// Whether each bucket is censored (left out of every fit).
    pub censored: Vec<bool>,
}
