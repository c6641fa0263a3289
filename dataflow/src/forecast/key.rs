//! One key's features (docs/forecasting.md, section 3): its demand and stock-out exposure per
//! bucket over a ring of the latest [`RING`] buckets, its `available` in log time, and the
//! forecasts it was issued that wait for their labels.

use super::model::{History, SEASON};
use serde::{Deserialize, Serialize};
use stockflow_types::Millis;

/// Buckets the ring holds: the look-back, and what labels still need once final.
pub const RING: usize = 32;

/// The season index (weekday, Monday 0, when buckets are days) of bucket `k`: 1970-01-01, bucket
/// 0 of a day-long bucket, was a Thursday.
pub fn season_of(k: i64) -> usize {
    (k + 3).rem_euclid(SEASON as i64) as usize
}

/// A forecast waiting for its label.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Open {
    /// The bucket it was issued at (its first forecast bucket).
    pub k: i64,
    /// Index of its horizon in the configuration.
    pub horizon: u8,
    /// Index of its model in [`super::model::Model::ALL`].
    pub model: u8,
    /// Its segment when issued.
    pub segment: u8,
    /// Mean demand over the horizon.
    pub mean: f64,
    /// Quantiles 0.5, 0.9, 0.95, 0.99.
    pub q: [u32; 4],
    /// Stock-out probability.
    pub stockout: f64,
    /// `available` when issued.
    pub available: i64,
    /// The key's RMSSE scale when issued (0: none).
    pub scale: f32,
}

/// The features of one (sku, location).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeyState {
    /// The bucket the key was first seen in (log time).
    pub first: i64,
    /// The newest bucket the ring covers: it holds `top - RING + 1 ..= top`.
    pub top: i64,
    /// Units sold per bucket (business time), by `k mod RING`.
    pub units: [i32; RING],
    /// Milliseconds out of stock per bucket (log time), by `k mod RING`.
    pub out_ms: [u32; RING],
    /// `available` as of `at`.
    pub available: i64,
    /// Log time up to which out-of-stock time is counted.
    pub at: Millis,
    /// Log time of the latest event (demand or stock) of the key.
    pub last_event: Millis,
    /// Forecasts awaiting labels.
    pub open: Vec<Open>,
    /// The days of cover of the served forecast of the latest boundary.
    pub cover: Option<u32>,
}

impl KeyState {
    /// A key first seen at log time `lt`.
    /// The part of its first bucket before it was seen counts as out of stock: a key listed
    /// late in a bucket has not been exposed to that bucket's demand.
    pub fn new(lt: Millis, bucket_ms: u64) -> Self {
        let k = (lt / bucket_ms) as i64;
        let mut out_ms = [0; RING];
        out_ms[Self::slot(k)] = (lt % bucket_ms) as u32;
        KeyState {
            first: k,
            top: k,
            units: [0; RING],
            out_ms,
            available: 0,
            at: lt,
            last_event: lt,
            open: Vec::new(),
            cover: None,
        }
    }

    fn slot(k: i64) -> usize {
        k.rem_euclid(RING as i64) as usize
    }

    /// Whether bucket `k` is in the ring (moving the ring forward to it if it is newer).
    fn reach(&mut self, k: i64) -> bool {
        if k > self.top {
            let from = (self.top + 1).max(k - RING as i64 + 1);
            for j in from..=k {
                self.units[Self::slot(j)] = 0;
                self.out_ms[Self::slot(j)] = 0;
            }
            self.top = k;
        }
        k > self.top - RING as i64
    }

    /// Counts out-of-stock time up to log time `to`.
    pub fn advance(&mut self, to: Millis, bucket_ms: u64) {
        if to <= self.at {
            return;
        }
        let out = self.available <= 0;
        let mut t = self.at;
        while t < to {
            let k = (t / bucket_ms) as i64;
            let end = ((k as u64 + 1) * bucket_ms).min(to);
            if self.reach(k) && out {
                let s = Self::slot(k);
                self.out_ms[s] = self.out_ms[s].saturating_add((end - t) as u32);
            }
            // Skip whole buckets that have fallen out of the ring.
            t = if (to / bucket_ms) as i64 - k > RING as i64 {
                ((to / bucket_ms) - RING as u64) * bucket_ms
            } else {
                end
            };
        }
        self.at = to;
        self.reach((to.saturating_sub(1) / bucket_ms) as i64);
    }

    /// Whether the key's features are stale at boundary `at`: no event for a season of
    /// buckets before it (docs/data-quality.md).
    pub fn stale_at(&self, at: Millis, bucket_ms: u64) -> bool {
        self.last_event + SEASON as u64 * bucket_ms <= at
    }

    /// `available` changed at log time `lt`.
    pub fn set_available(&mut self, lt: Millis, available: i64, bucket_ms: u64) {
        self.advance(lt, bucket_ms);
        self.available = available;
        self.last_event = self.last_event.max(lt);
    }

    /// Adds `units` sold in bucket `k`; false if the bucket has left the ring.
    pub fn add_units(&mut self, k: i64, units: i64, lt: Millis) -> bool {
        self.last_event = self.last_event.max(lt);
        if !self.reach(k) {
            return false;
        }
        let s = Self::slot(k);
        self.units[s] =
            (self.units[s] as i64 + units).clamp(i32::MIN as i64, i32::MAX as i64) as i32;
        true
    }

    /// Units of bucket `k` (0 if negative or out of the ring).
    pub fn units_at(&self, k: i64) -> u32 {
        if k > self.top || k <= self.top - RING as i64 {
            return 0;
        }
        self.units[Self::slot(k)].max(0) as u32
    }

    /// The share of bucket `k` out of stock; 1 before the key was first seen.
    pub fn exposure_at(&self, k: i64, bucket_ms: u64) -> f64 {
        if k < self.first {
            return 1.0;
        }
        if k > self.top || k <= self.top - RING as i64 {
            return 0.0;
        }
        (self.out_ms[Self::slot(k)] as f64 / bucket_ms as f64).min(1.0)
    }

    /// The history window of the `lookback` buckets before bucket `k`.
    pub fn history(&self, k: i64, lookback: usize, bucket_ms: u64, censor_share: f64) -> History {
        let from = k - lookback as i64;
        let mut h = History {
            y: Vec::with_capacity(lookback),
            exposure: Vec::with_capacity(lookback),
            censored: Vec::with_capacity(lookback),
            season: Vec::with_capacity(lookback),
            next_season: season_of(k),
            age: (k - self.first).clamp(0, lookback as i64) as usize,
        };
        for j in from..k {
            let e = self.exposure_at(j, bucket_ms);
            h.y.push(self.units_at(j));
            h.censored.push(j < self.first || e >= censor_share);
            h.exposure.push(if j < self.first {
                1.0
            } else {
                e.min(censor_share)
            });
            h.season.push(season_of(j));
        }
        h
    }
}

/// M5's scale of a history: the mean squared one-step difference over consecutive usable
/// buckets (0 if none, or a flat series).
pub fn rmsse_scale(h: &History) -> f64 {
    let (mut s, mut n) = (0.0, 0usize);
    for i in 1..h.y.len() {
        if !h.censored[i] && !h.censored[i - 1] {
            let d = h.y[i] as f64 - h.y[i - 1] as f64;
            s += d * d;
            n += 1;
        }
    }
    if n == 0 {
        0.0
    } else {
        s / n as f64
    }
}
