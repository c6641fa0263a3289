//! The pipeline clock. Pipeline time is epoch milliseconds rounded down to the tick; it advances
//! with the wall clock whether or not events arrive, so reservations expire on time. Tests
//! inject a [`ManualClock`] to be deterministic.

use crate::Time;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A source of "now" in epoch milliseconds.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current time, epoch ms.
    fn now_ms(&self) -> u64;
}

/// The system clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// A clock that moves only when told to.
#[derive(Clone, Debug, Default)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// A clock reading `ms`.
    pub fn new(ms: u64) -> Self {
        ManualClock(Arc::new(AtomicU64::new(ms)))
    }
    /// Sets the time (never backwards).
    pub fn set(&self, ms: u64) {
        self.0.fetch_max(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Rounds `ms` down to the tick grid.
pub fn tick_floor(ms: u64, tick: u64) -> Time {
    ms - ms % tick
}

/// Rounds `ms` up to the tick grid: the first pipeline time at or after `ms`.
pub fn tick_ceil(ms: u64, tick: u64) -> Time {
    ms.div_ceil(tick).saturating_mul(tick)
}
