//! The tables of contract §4 and their rows.

use clickhouse::Row;
use serde::{Deserialize, Serialize};
use stockflow_types::rows::{FeatureRow, ForecastRow, ReservationRow, StockRow, WindowRow};
use stockflow_types::Millis;

/// The server's version, as `SELECT version()` prints it (`18.16.1`, `24.8.4.13`).
pub fn modern(version: &str) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (23, 2)
}

/// `CREATE ... IF NOT EXISTS` statements for the database, its tables and the `*_current`
/// views BI tools read. On servers from 23.2 on (`modern`), the tables use
/// `ReplacingMergeTree(version, deleted)`, `LowCardinality(String)` for the few-valued columns
/// and `DateTime64(3, 'UTC')` for times; older ones (Debian's 18.16) get plain `String`,
/// `DateTime` (whole seconds) and `ReplacingMergeTree(version)`. Tables that exist are kept as
/// they are: the sink writes times in the type the table has ([`TimeCol`]).
pub fn ddl(database: &str, modern: bool) -> Vec<String> {
    let (few, time, engine) = if modern {
        (
            "LowCardinality(String)",
            "DateTime64(3, 'UTC')",
            "ReplacingMergeTree(version, deleted)",
        )
    } else {
        ("String", "DateTime", "ReplacingMergeTree(version)")
    };
    let mut out = vec![
        format!("CREATE DATABASE IF NOT EXISTS {database}"),
        format!(
            "CREATE TABLE IF NOT EXISTS {database}.stock_levels (\
             sku String, location {few}, on_hand Int64, reserved Int64, available Int64, \
             version UInt64, deleted UInt8) \
             ENGINE = {engine} ORDER BY (sku, location)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {database}.reservations (\
             reservation_id String, sku String, location {few}, qty Int64, status {few}, \
             expires_at {time}, version UInt64, deleted UInt8) \
             ENGINE = {engine} ORDER BY reservation_id"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {database}.sales_windows (\
             window {few}, window_start {time}, sku String, location {few}, \
             units_sold Int64, units_received Int64, units_reserved Int64, orders Int64, \
             version UInt64, deleted UInt8) \
             ENGINE = {engine} ORDER BY (window, sku, location, window_start)"
        ),
        // Contract §5: one row per forecast issued, per model version written (the
        // `forecast.clickhouse` choice); `actual` once its label is final.
        format!(
            "CREATE TABLE IF NOT EXISTS {database}.forecasts (\
             sku String, location {few}, model {few}, arm {few}, segment {few}, \
             issued_at {time}, buckets UInt16, start {time}, `end` {time}, \
             mean Float64, q50 Float64, q90 Float64, q95 Float64, q99 Float64, \
             stockout_probability Float64, available Int64, scale Float64, \
             actual Nullable(Int64), censored UInt8, version UInt64, deleted UInt8) \
             ENGINE = {engine} ORDER BY (model, sku, location, issued_at, buckets)"
        ),
        // What each key's forecasts at a boundary were computed from (point in time).
        format!(
            "CREATE TABLE IF NOT EXISTS {database}.forecast_features (\
             sku String, location {few}, issued_at {time}, category {few}, available Int64, \
             age UInt16, demand Array(UInt32), out_of_stock Array(Float64), \
             censored Array(UInt8), version UInt64, deleted UInt8) \
             ENGINE = {engine} ORDER BY (sku, location, issued_at)"
        ),
    ];
    // The current values, without `FINAL ... deleted = 0` in every query.
    for (view, table, columns) in [
        (
            "stock_levels_current",
            "stock_levels",
            "sku, location, on_hand, reserved, available, version",
        ),
        (
            "reservations_current",
            "reservations",
            "reservation_id, sku, location, qty, status, expires_at, version",
        ),
        (
            "sales_windows_current",
            "sales_windows",
            "window, window_start, sku, location, units_sold, units_received, units_reserved, orders, version",
        ),
        (
            "forecasts_current",
            "forecasts",
            "sku, location, model, arm, segment, issued_at, buckets, start, `end`, mean, q50, q90, \
             q95, q99, stockout_probability, available, scale, actual, censored, version",
        ),
    ] {
        out.push(format!(
            "CREATE VIEW IF NOT EXISTS {database}.{view} AS \
             SELECT {columns} FROM {database}.{table} FINAL WHERE deleted = 0"
        ));
    }
    // Data quality (docs/data-quality.md), from the current rows: keys below zero, and every
    // expired hold in the history (the pipeline serves those it still retains).
    let int = "toInt64";
    out.push(format!(
        "CREATE VIEW IF NOT EXISTS {database}.data_quality AS \
         SELECT location, sum(nk) AS negative_on_hand_keys, sum(nu) AS negative_on_hand_units, \
         sum(eh) AS expired_holds, sum(eu) AS expired_units FROM (\
         SELECT location, {int}(on_hand < 0) AS nk, {int}(if(on_hand < 0, -on_hand, 0)) AS nu, \
         {int}(0) AS eh, {int}(0) AS eu FROM {database}.stock_levels FINAL WHERE deleted = 0 \
         UNION ALL \
         SELECT location, {int}(0) AS nk, {int}(0) AS nu, {int}(status = 'expired') AS eh, \
         {int}(if(status = 'expired', qty, 0)) AS eu \
         FROM {database}.reservations FINAL WHERE deleted = 0) \
         GROUP BY location HAVING negative_on_hand_keys + expired_holds > 0"
    ));
    // The evaluation of what was written, scored as the dataflow scores it (docs/forecasting.md):
    // uncensored final labels; RMSSE from the squared error over the key's scale.
    out.push(format!(
        "CREATE VIEW IF NOT EXISTS {database}.forecast_evaluation AS \
         SELECT model, arm, buckets, segment, count() AS scored, \
         sqrt(avgIf((actual - mean) * (actual - mean) / (buckets * buckets * scale), scale > 0)) \
         AS rmsse, \
         sum(abs(actual - mean)) / sum(actual) AS wape, \
         sum(mean - actual) / sum(actual) AS bias, \
         {pinball}, {coverage}, \
         avg((stockout_probability - (actual > available)) \
         * (stockout_probability - (actual > available))) AS brier \
         FROM {database}.forecasts FINAL \
         WHERE deleted = 0 AND isNotNull(actual) AND censored = 0 \
         GROUP BY model, arm, buckets, segment",
        pinball = QUANTILES
            .map(|(q, l, u)| format!(
                "avg(greatest({l} * (actual - {q}), {u} * ({q} - actual))) AS pinball_{q}"
            ))
            .join(", "),
        coverage = QUANTILES
            .map(|(q, ..)| format!("avg(actual <= {q}) AS coverage_{q}"))
            .join(", "),
    ));
    out
}

/// The quantile columns of `forecasts` and their levels.
/// (column, level, 1 − level).
const QUANTILES: [(&str, &str, &str); 4] = [
    ("q50", "0.5", "0.5"),
    ("q90", "0.9", "0.1"),
    ("q95", "0.95", "0.05"),
    ("q99", "0.99", "0.01"),
];

/// A time column: `DateTime` (whole seconds, `UInt32` in RowBinary) or `DateTime64(3)`
/// (milliseconds, `Int64`), as the table has it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TimeCol {
    ms: Millis,
    precise: bool,
}

impl TimeCol {
    pub fn new(ms: Millis, precise: bool) -> Self {
        TimeCol { ms, precise }
    }
}

impl Serialize for TimeCol {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.precise {
            // DateTime64 ends with 2299 (a "never" of 9999 would read back as nonsense).
            const LAST: Millis = 10_413_791_999_999; // 2299-12-31T23:59:59.999Z
            s.serialize_i64(i64::try_from(self.ms.min(LAST)).unwrap_or(i64::MAX))
        } else {
            s.serialize_u32(date_time(self.ms))
        }
    }
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
    pub expires_at: TimeCol,
    pub version: u64,
    pub deleted: u8,
}

impl<'a> Reservation<'a> {
    pub fn new(r: &'a ReservationRow, version: u64, deleted: bool, precise: bool) -> Self {
        Reservation {
            reservation_id: &r.reservation_id,
            sku: &r.sku,
            location: &r.location,
            qty: r.qty,
            status: r.status.as_str(),
            expires_at: TimeCol::new(r.expires_at, precise),
            version,
            deleted: u8::from(deleted),
        }
    }
}

/// A `sales_windows` row.
#[derive(Debug, Row, Serialize)]
pub(crate) struct SalesWindow<'a> {
    pub window: &'a str,
    pub window_start: TimeCol,
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
    pub fn new(
        r: &'a WindowRow,
        window: &'a str,
        version: u64,
        deleted: bool,
        precise: bool,
    ) -> Self {
        SalesWindow {
            window,
            window_start: TimeCol::new(r.window_start, precise),
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

/// A `forecasts` row.
#[derive(Debug, Row, Serialize)]
pub(crate) struct Forecast<'a> {
    pub sku: &'a str,
    pub location: &'a str,
    pub model: &'a str,
    pub arm: &'a str,
    pub segment: &'a str,
    pub issued_at: TimeCol,
    pub buckets: u16,
    pub start: TimeCol,
    pub end: TimeCol,
    pub mean: f64,
    pub q50: f64,
    pub q90: f64,
    pub q95: f64,
    pub q99: f64,
    pub stockout_probability: f64,
    pub available: i64,
    pub scale: f64,
    pub actual: Option<i64>,
    pub censored: u8,
    pub version: u64,
    pub deleted: u8,
}

impl<'a> Forecast<'a> {
    pub fn new(r: &'a ForecastRow, version: u64, deleted: bool, precise: bool) -> Self {
        let q = r.q.map(f64::from);
        Forecast {
            sku: &r.sku,
            location: &r.location,
            model: &r.model,
            arm: &r.arm,
            segment: &r.segment,
            issued_at: TimeCol::new(r.issued_at, precise),
            buckets: u16::try_from(r.buckets).unwrap_or(u16::MAX),
            start: TimeCol::new(r.issued_at, precise),
            end: TimeCol::new(r.end, precise),
            mean: r.mean.0,
            q50: q[0],
            q90: q[1],
            q95: q[2],
            q99: q[3],
            stockout_probability: r.stockout.0,
            available: r.available,
            scale: r.scale.0,
            actual: r.actual.map(|a| i64::try_from(a).unwrap_or(i64::MAX)),
            censored: u8::from(r.censored),
            version,
            deleted: u8::from(deleted),
        }
    }
}

/// A `forecast_features` row.
#[derive(Debug, Row, Serialize)]
pub(crate) struct Features<'a> {
    pub sku: &'a str,
    pub location: &'a str,
    pub issued_at: TimeCol,
    pub category: &'a str,
    pub available: i64,
    pub age: u16,
    pub demand: &'a [u32],
    pub out_of_stock: Vec<f64>,
    pub censored: Vec<u8>,
    pub version: u64,
    pub deleted: u8,
}

impl<'a> Features<'a> {
    pub fn new(r: &'a FeatureRow, version: u64, deleted: bool, precise: bool) -> Self {
        Features {
            sku: &r.sku,
            location: &r.location,
            issued_at: TimeCol::new(r.issued_at, precise),
            category: &r.category,
            available: r.available,
            age: u16::try_from(r.age).unwrap_or(u16::MAX),
            demand: &r.demand,
            out_of_stock: r.out_of_stock.iter().map(|e| e.0).collect(),
            censored: r.censored.iter().map(|c| u8::from(*c)).collect(),
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
    /// Epoch ms.
    pub window_start: u64,
    pub sku: String,
    pub location: String,
}
