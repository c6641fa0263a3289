//! The tables of contract §4 and their rows.

use clickhouse::Row;
use serde::{Deserialize, Serialize};
use stockflow_types::rows::{ReservationRow, StockRow, WindowRow};
use stockflow_types::Millis;

/// `CREATE ... IF NOT EXISTS` statements for the database and its tables.
pub fn ddl(database: &str) -> Vec<String> {
    vec![
        format!("CREATE DATABASE IF NOT EXISTS {database}"),
        format!(
            "CREATE TABLE IF NOT EXISTS {database}.stock_levels (\
             sku String, location String, on_hand Int64, reserved Int64, available Int64, \
             version UInt64, deleted UInt8) \
             ENGINE = ReplacingMergeTree(version) ORDER BY (sku, location)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {database}.reservations (\
             reservation_id String, sku String, location String, qty Int64, status String, \
             expires_at DateTime, version UInt64, deleted UInt8) \
             ENGINE = ReplacingMergeTree(version) ORDER BY reservation_id"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {database}.sales_windows (\
             window String, window_start DateTime, sku String, location String, \
             units_sold Int64, units_received Int64, units_reserved Int64, orders Int64, \
             version UInt64, deleted UInt8) \
             ENGINE = ReplacingMergeTree(version) ORDER BY (window, sku, location, window_start)"
        ),
    ]
}

/// A `stock_levels` row.
#[derive(Debug, Row, Serialize)]
pub(crate) struct StockLevel<'a> {
    pub sku: &'a str,
    pub location: &'a str,
    pub on_hand: i64,
    pub reserved: i64,
    pub available: i64,
    pub version: u64,
    pub deleted: u8,
}

impl<'a> StockLevel<'a> {
    pub fn new(r: &'a StockRow, version: u64, deleted: bool) -> Self {
        StockLevel {
            sku: &r.sku,
            location: &r.location,
            on_hand: r.on_hand,
            reserved: r.reserved,
            available: r.available,
            version,
            deleted: u8::from(deleted),
        }
    }
}

/// A `reservations` row.
#[derive(Debug, Row, Serialize)]
pub(crate) struct Reservation<'a> {
    pub reservation_id: &'a str,
    pub sku: &'a str,
    pub location: &'a str,
    pub qty: i64,
    pub status: &'a str,
    /// `DateTime`: seconds since the epoch.
    pub expires_at: u32,
    pub version: u64,
    pub deleted: u8,
}

impl<'a> Reservation<'a> {
    pub fn new(r: &'a ReservationRow, version: u64, deleted: bool) -> Self {
        Reservation {
            reservation_id: &r.reservation_id,
            sku: &r.sku,
            location: &r.location,
            qty: r.qty,
            status: r.status.as_str(),
            expires_at: date_time(r.expires_at),
            version,
            deleted: u8::from(deleted),
        }
    }
}

/// A `sales_windows` row.
#[derive(Debug, Row, Serialize)]
pub(crate) struct SalesWindow<'a> {
    pub window: &'a str,
    pub window_start: u32,
    pub sku: &'a str,
    pub location: &'a str,
    pub units_sold: i64,
    pub units_received: i64,
    pub units_reserved: i64,
    pub orders: i64,
    pub version: u64,
    pub deleted: u8,
}

impl<'a> SalesWindow<'a> {
    pub fn new(r: &'a WindowRow, window: &'a str, version: u64, deleted: bool) -> Self {
        SalesWindow {
            window,
            window_start: date_time(r.window_start),
            sku: &r.sku,
            location: &r.location,
            units_sold: r.figures.units_sold,
            units_received: r.figures.units_received,
            units_reserved: r.figures.units_reserved,
            orders: r.figures.orders,
            version,
            deleted: u8::from(deleted),
        }
    }
}

/// Epoch ms to a ClickHouse `DateTime` (whole seconds, saturating at its range, 2106).
fn date_time(ms: Millis) -> u32 {
    u32::try_from(ms / 1000).unwrap_or(u32::MAX)
}

/// The key of a `stock_levels` row.
#[derive(Debug, Row, Deserialize)]
pub(crate) struct StockKey {
    pub sku: String,
    pub location: String,
}

/// The key of a `reservations` row.
#[derive(Debug, Row, Deserialize)]
pub(crate) struct ReservationKey {
    pub reservation_id: String,
}

/// The key of a `sales_windows` row.
#[derive(Debug, Row, Deserialize)]
pub(crate) struct WindowKey {
    pub window: String,
    pub window_start: u32,
    pub sku: String,
    pub location: String,
}
