//! Types that several stockflow crates share: the contract's events (§1) with their
//! validation, the rows the dataflow maintains (§2), timestamps, and the configuration.
//!
//! Nothing here does I/O. The smallest use decodes one producer message:
//!
//! ```
//! use stockflow_types::event::{decode, EventKind};
//! let ev = decode(br#"{"event_id":"e1","type":"received","sku":"A","ts":1000,"location":"L","qty":5}"#).unwrap();
//! assert!(matches!(ev.kind, EventKind::Received { qty: 5, .. }));
//! let bad = decode(br#"{"event_id":"e1","type":"received","sku":"A","ts":1000}"#).unwrap_err();
//! assert_eq!(bad.reason.code(), "missing_field");
//! ```

pub mod admissions;
pub mod config;
pub mod event;
pub mod log_time;
pub mod progress;
pub mod resume;
pub mod rows;
pub mod schema;
pub mod timefmt;
pub mod topology;

/// Epoch milliseconds: business time (`ts`, `expires_at`) and pipeline time (`as_of`).
pub type Millis = u64;

/// A SKU, location or reservation id as held in the dataflow: cheap to clone and to share.
pub type Name = std::sync::Arc<str>;
