//! `GET /v1/quality`: the data-quality view (docs/data-quality.md), per location and in total,
//! and its metrics.

use crate::problem::Problem;
use serde::Serialize;
use std::collections::BTreeMap;
use stockflow_dataflow::quality::LocQuality;
use stockflow_dataflow::views::ViewStore;
use utoipa::ToSchema;

/// The signals of one location (or of all).
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct QualityRow {
    /// The location (`null` in the total).
    pub location: Option<String>,
    /// (sku, location) keys whose `on_hand` is below zero.
    pub negative_on_hand_keys: i64,
    /// Σ −`on_hand` over them: units the book says were sold or moved without stock.
    pub negative_on_hand_units: i64,
    /// Reservations expired without a release or a fulfilment (among those retained).
    pub expired_holds: i64,
    /// Σ `qty` over them.
    pub expired_units: i64,
    /// Forecast keys with no event for a season (7 buckets) before the latest boundary; `null`
    /// when forecasting is off.
    pub stale_forecast_keys: Option<u64>,
}

/// The data-quality view.
#[derive(Debug, Serialize, ToSchema)]
pub struct QualityResponse {
    /// Every location with a signal, by name.
    pub locations: Vec<QualityRow>,
    /// The sum over every location.
    pub total: QualityRow,
    /// `process` in a cluster: the keys of this process only.
    pub scope: String,
    /// Pipeline time (epoch ms) the answer is consistent as of.
    pub as_of: u64,
}

fn row(location: Option<String>, q: &LocQuality, stale: Option<u64>) -> QualityRow {
    QualityRow {
        location,
        negative_on_hand_keys: q.negative_keys,
        negative_on_hand_units: q.negative_units,
        expired_holds: q.expired_holds,
        expired_units: q.expired_units,
        stale_forecast_keys: stale,
    }
}

/// The data-quality signals per location.
#[utoipa::path(get, path = "/v1/quality",
    params(("location" = Option<String>, Query, description = "Only this location")),
    responses((status = 200, body = QualityResponse)))]
pub fn quality(
    store: &ViewStore,
    q: &std::collections::HashMap<String, String>,
    cluster: bool,
) -> Result<QualityResponse, Problem> {
    let as_of = store.as_of();
    let mut signals = store.quality();
    let forecasting = store.forecast().config().is_some();
    let stale = store.forecast().stale();
    // Locations with stale keys only appear too.
    for loc in stale.keys() {
        signals.locs.entry(loc.clone()).or_default();
    }
    if let Some(only) = q.get("location").filter(|l| !l.is_empty()) {
        signals.locs.retain(|l, _| **l == **only);
    }
    let stale_of = |l: &str| forecasting.then(|| stale.get(l).copied().unwrap_or(0));
    let locations: Vec<QualityRow> = signals
        .locs
        .iter()
        .map(|(l, x)| row(Some(l.to_string()), x, stale_of(l)))
        .collect();
    let total_stale = forecasting.then(|| {
        locations
            .iter()
            .map(|r| r.stale_forecast_keys.unwrap_or(0))
            .sum()
    });
    Ok(QualityResponse {
        total: row(None, &signals.total(), total_stale),
        locations,
        scope: if cluster { "process" } else { "cluster" }.into(),
        as_of,
    })
}

/// The totals as metrics.
pub fn record_metrics(store: &ViewStore) {
    let t = store.quality().total();
    metrics::gauge!("stockflow_quality_negative_on_hand_keys").set(t.negative_keys as f64);
    metrics::gauge!("stockflow_quality_negative_on_hand_units").set(t.negative_units as f64);
    metrics::gauge!("stockflow_quality_expired_holds").set(t.expired_holds as f64);
    if store.forecast().config().is_some() {
        let stale: BTreeMap<_, u64> = store.forecast().stale();
        metrics::gauge!("stockflow_quality_stale_forecast_keys")
            .set(stale.values().sum::<u64>() as f64);
    }
}
