//! The HTTP API of contract §3: response bodies, handlers and the OpenAPI document generated
//! from them. Handlers are plain functions over the [`ViewStore`]: no I/O, no locks held across
//! anything but a map read, no contact with the dataflow's threads.

use crate::problem::Problem;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;
use stockflow_dataflow::views::{ReservationLookup, ViewStore};
use stockflow_types::progress::{Progress, NOT_YET};
use stockflow_types::timefmt::{format_rfc3339, parse_bound, MAX_MILLIS};
use utoipa::{OpenApi, ToSchema};

/// Stock of one SKU over all its locations.
#[derive(Debug, Serialize, ToSchema)]
pub struct StockResponse {
    /// The SKU.
    pub sku: String,
    /// Sum of `on_hand` over locations.
    pub on_hand: i64,
    /// Sum of units held by reservations.
    pub reserved: i64,
    /// `on_hand - reserved`.
    pub available: i64,
    /// Per location.
    pub locations: Vec<LocationFigures>,
    /// Pipeline time (epoch ms) the answer is consistent as of.
    pub as_of: u64,
}

/// Stock figures of one location within a SKU answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct LocationFigures {
    /// The location.
    pub location: String,
    /// Units on hand.
    pub on_hand: i64,
    /// Units held by reservations.
    pub reserved: i64,
    /// `on_hand - reserved`.
    pub available: i64,
}

/// Stock of one (sku, location).
#[derive(Debug, Serialize, ToSchema)]
pub struct LocationStockResponse {
    /// The SKU.
    pub sku: String,
    /// The location.
    pub location: String,
    /// Units on hand.
    pub on_hand: i64,
    /// Units held by reservations.
    pub reserved: i64,
    /// `on_hand - reserved`.
    pub available: i64,
    /// Pipeline time (epoch ms) the answer is consistent as of.
    pub as_of: u64,
}

/// One reservation.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReservationResponse {
    /// The reservation.
    pub reservation_id: String,
    /// The SKU.
    pub sku: String,
    /// The location.
    pub location: String,
    /// Units asked for.
    pub qty: i64,
    /// `held`, `insufficient`, `expired`, `released` or `fulfilled`.
    pub status: String,
    /// RFC 3339.
    pub expires_at: String,
    /// Pipeline time (epoch ms) the answer is consistent as of.
    pub as_of: u64,
}

/// The reservations of one SKU.
#[derive(Debug, Serialize, ToSchema)]
pub struct SkuReservationsResponse {
    /// The SKU.
    pub sku: String,
    /// How many reservations the SKU has (any status; forgotten ones are not counted).
    pub total: usize,
    /// The first `limit` of them, by id.
    pub reservations: Vec<ReservationResponse>,
    /// Pipeline time (epoch ms) the answer is consistent as of.
    pub as_of: u64,
}

/// Windowed figures of one SKU.
#[derive(Debug, Serialize, ToSchema)]
pub struct AnalyticsResponse {
    /// The SKU.
    pub sku: String,
    /// The window size, as configured (e.g. `1m`).
    pub window: String,
    /// One bucket per (location, window start), by start then location.
    pub buckets: Vec<Bucket>,
    /// Pipeline time (epoch ms) the answer is consistent as of.
    pub as_of: u64,
}

/// One window of one location.
#[derive(Debug, Serialize, ToSchema)]
pub struct Bucket {
    /// The location.
    pub location: String,
    /// Window start, RFC 3339.
    pub start: String,
    /// Window end (exclusive), RFC 3339.
    pub end: String,
    /// Sold plus fulfilled units.
    pub units_sold: i64,
    /// Received units.
    pub units_received: i64,
    /// Units of `reserved` events.
    pub units_reserved: i64,
    /// Count of sold plus fulfilled events.
    pub orders: i64,
}

/// Best sellers of the latest window.
#[derive(Debug, Serialize, ToSchema)]
pub struct TopResponse {
    /// The window size.
    pub window: String,
    /// Start of the window that contains `as_of`, RFC 3339.
    pub start: String,
    /// Its end (exclusive), RFC 3339.
    pub end: String,
    /// By units sold, then SKU.
    pub items: Vec<TopItem>,
    /// Pipeline time (epoch ms) the answer is consistent as of.
    pub as_of: u64,
}

/// One ranked SKU.
#[derive(Debug, Serialize, ToSchema)]
pub struct TopItem {
    /// The SKU.
    pub sku: String,
    /// Units sold in the window.
    pub units_sold: i64,
}

/// Liveness and readiness.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok` or `ready`.
    pub status: String,
    /// Pipeline time (epoch ms).
    pub as_of: u64,
    /// Ready, but something an operator should know: a partition whose log time lags far
    /// behind holds back everything that forgets (docs/operations.md).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The OpenAPI document, generated from the handlers' annotations.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "stockflow",
        description = "Exact, real-time inventory: stock, reservations and sales analytics."
    ),
    paths(
        stock,
        location_stock,
        reservation,
        reservations_of_sku,
        analytics,
        top,
        crate::forecast_api::forecast,
        crate::forecast_api::at_risk,
        crate::forecast_api::evaluation,
        crate::quality_api::quality,
        healthz,
        readyz
    ),
    components(schemas(
        StockResponse,
        LocationFigures,
        LocationStockResponse,
        ReservationResponse,
        SkuReservationsResponse,
        AnalyticsResponse,
        Bucket,
        TopResponse,
        TopItem,
        crate::forecast_api::ForecastResponse,
        crate::forecast_api::ForecastHorizon,
        crate::forecast_api::Quantiles,
        crate::forecast_api::AtRiskResponse,
        crate::forecast_api::AtRiskItem,
        crate::forecast_api::EvaluationResponse,
        crate::forecast_api::EvaluationRow,
        crate::forecast_api::Comparison,
        crate::forecast_api::ArmComparison,
        crate::forecast_api::ArmLoss,
        crate::quality_api::QualityResponse,
        crate::quality_api::QualityRow,
        Health,
        Problem
    ))
)]
pub struct ApiDoc;

fn never_seen(what: String) -> Problem {
    Problem::not_found(format!("{what} has never been seen"))
}

/// Stock of a SKU.
#[utoipa::path(get, path = "/v1/stock/{sku}",
    params(("sku" = String, Path, description = "The SKU")),
    responses((status = 200, body = StockResponse), (status = 404, body = Problem, content_type = "application/problem+json")))]
pub fn stock(store: &ViewStore, sku: &str) -> Result<StockResponse, Problem> {
    let g = store.as_of();
    let s = store
        .stock(sku)
        .ok_or_else(|| never_seen(format!("SKU {sku:?}")))?;
    let (mut on_hand, mut reserved) = (0i64, 0i64);
    let locations = s
        .iter()
        .map(|r| {
            // Each figure fits an i64; their sum over locations saturates rather than wraps.
            on_hand = i64::saturating_add(on_hand, r.on_hand);
            reserved = i64::saturating_add(reserved, r.reserved);
            LocationFigures {
                location: r.location.to_string(),
                on_hand: r.on_hand,
                reserved: r.reserved,
                available: r.available,
            }
        })
        .collect();
    Ok(StockResponse {
        sku: sku.into(),
        on_hand,
        reserved,
        available: on_hand.saturating_sub(reserved),
        locations,
        as_of: g.max(s.changed_at),
    })
}

/// Stock of a SKU at one location.
#[utoipa::path(get, path = "/v1/stock/{sku}/{location}",
    params(("sku" = String, Path, description = "The SKU"), ("location" = String, Path, description = "The location")),
    responses((status = 200, body = LocationStockResponse), (status = 404, body = Problem, content_type = "application/problem+json")))]
pub fn location_stock(
    store: &ViewStore,
    sku: &str,
    location: &str,
) -> Result<LocationStockResponse, Problem> {
    let g = store.as_of();
    let s = store
        .stock(sku)
        .ok_or_else(|| never_seen(format!("SKU {sku:?}")))?;
    let r = s
        .get(location)
        .ok_or_else(|| never_seen(format!("location {location:?} of SKU {sku:?}")))?;
    Ok(LocationStockResponse {
        sku: sku.into(),
        location: location.into(),
        on_hand: r.on_hand,
        reserved: r.reserved,
        available: r.available,
        as_of: g.max(s.changed_at),
    })
}

/// One reservation.
#[utoipa::path(get, path = "/v1/reservations/{reservation_id}",
    params(("reservation_id" = String, Path, description = "The reservation")),
    responses((status = 200, body = ReservationResponse), (status = 404, description = "Never seen, or forgotten `pipeline.retention` (log time) after it ended; the detail says which", body = Problem, content_type = "application/problem+json")))]
pub fn reservation(store: &ViewStore, id: &str) -> Result<ReservationResponse, Problem> {
    let g = store.as_of();
    let r = match store.lookup_reservation(id) {
        ReservationLookup::Found(r) => r,
        ReservationLookup::Forgotten { ended, .. } => {
            return Err(Problem::not_found(format!(
                "reservation {id:?} ended at {} (log time) and was forgotten after the retention period (pipeline.retention)",
                format_rfc3339(ended)
            )))
        }
        ReservationLookup::Unknown => {
            return Err(Problem::not_found(format!(
                "reservation {id:?} has never been seen, or was forgotten long ago (more than twice pipeline.retention after it ended)"
            )))
        }
    };
    Ok(reservation_response(&r, g))
}

fn reservation_response(
    r: &stockflow_dataflow::views::ReservationView,
    g: u64,
) -> ReservationResponse {
    ReservationResponse {
        reservation_id: r.row.reservation_id.to_string(),
        sku: r.row.sku.to_string(),
        location: r.row.location.to_string(),
        qty: r.row.qty,
        status: r.row.status.as_str().into(),
        expires_at: format_rfc3339(r.row.expires_at),
        as_of: g.max(r.changed_at),
    }
}

/// The reservations of a SKU.
#[utoipa::path(get, path = "/v1/reservations",
    params(("sku" = String, Query, description = "The SKU"),
        ("limit" = Option<usize>, Query, description = "How many (default 100, at most 1000), by reservation id")),
    responses((status = 200, body = SkuReservationsResponse), (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
pub fn reservations_of_sku(
    store: &ViewStore,
    q: &HashMap<String, String>,
) -> Result<SkuReservationsResponse, Problem> {
    let sku = q
        .get("sku")
        .ok_or_else(|| Problem::bad_request("query parameter `sku` is required"))?;
    let limit = match q.get("limit") {
        None => 100,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=1000).contains(l))
            .ok_or_else(|| {
                Problem::bad_request("query parameter `limit` must be an integer from 1 to 1000")
            })?,
    };
    let g = store.as_of();
    if store.stock(sku).is_none() {
        return Err(never_seen(format!("SKU {sku:?}")));
    }
    let (views, total) = store.reservations_of(sku, limit);
    let reservations: Vec<ReservationResponse> =
        views.iter().map(|r| reservation_response(r, g)).collect();
    let as_of = reservations
        .iter()
        .map(|r| r.as_of)
        .max()
        .unwrap_or(g)
        .max(g);
    Ok(SkuReservationsResponse {
        sku: sku.clone(),
        total,
        reservations,
        as_of,
    })
}

fn window_param(
    store: &ViewStore,
    q: &HashMap<String, String>,
    default: usize,
) -> Result<(String, u64), Problem> {
    let windows = store.windows_config();
    match q.get("window") {
        None => Ok((windows[default].name.clone(), windows[default].size_ms)),
        Some(w) => windows
            .iter()
            .find(|s| s.name == *w)
            .map(|s| (s.name.clone(), s.size_ms))
            .ok_or_else(|| {
                let names: Vec<&str> = windows.iter().map(|s| s.name.as_str()).collect();
                Problem::bad_request(format!(
                    "query parameter `window` must be one of: {}",
                    names.join(", ")
                ))
            }),
    }
}

fn time_param(q: &HashMap<String, String>, name: &str) -> Result<Option<u64>, Problem> {
    q.get(name)
        .map(|v| {
            parse_bound(v).ok_or_else(|| {
                Problem::bad_request(format!(
                    "query parameter `{name}` must be an RFC 3339 timestamp or epoch milliseconds"
                ))
            })
        })
        .transpose()
}

/// Windowed figures of a SKU.
#[utoipa::path(get, path = "/v1/analytics/sku/{sku}",
    params(("sku" = String, Path, description = "The SKU"),
        ("window" = Option<String>, Query, description = "A configured window size (default: the first, `1m`)"),
        ("from" = Option<String>, Query, description = "Earliest window start, RFC 3339 or epoch ms"),
        ("to" = Option<String>, Query, description = "Window starts before this, RFC 3339 or epoch ms")),
    responses((status = 200, body = AnalyticsResponse), (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
pub fn analytics(
    store: &ViewStore,
    sku: &str,
    q: &HashMap<String, String>,
) -> Result<AnalyticsResponse, Problem> {
    let (window, size) = window_param(store, q, 0)?;
    let from = time_param(q, "from")?.unwrap_or(0);
    let to = time_param(q, "to")?.unwrap_or(u64::MAX);
    // `from` after `to` is an empty range: no buckets.
    let g = store.as_of();
    if store.stock(sku).is_none() {
        return Err(never_seen(format!("SKU {sku:?}")));
    }
    let mut copied = Vec::new();
    let mut as_of = g;
    if let Some(w) = store.windows(sku) {
        // Copied under the lock the SKU's owning worker writes under; formatted after it.
        let w = w.read();
        as_of = as_of.max(w.changed_at);
        copied.extend(
            w.windows
                .range((size, from, "".into())..)
                .take_while(|((s, start, _), _)| *s == size && *start < to)
                .map(|((_, start, location), f)| (*start, Arc::clone(location), *f)),
        );
    }
    let buckets = copied
        .into_iter()
        .map(|(start, location, f)| Bucket {
            location: location.to_string(),
            start: format_rfc3339(start),
            end: format_rfc3339(start + size),
            units_sold: f.units_sold,
            units_received: f.units_received,
            units_reserved: f.units_reserved,
            orders: f.orders,
        })
        .collect();
    Ok(AnalyticsResponse {
        sku: sku.into(),
        window,
        buckets,
        as_of,
    })
}

/// The `limit` query parameter: 10 (or `max`, if smaller) when absent, else 1 to `max`.
pub(crate) fn limit_param(q: &HashMap<String, String>, max: usize) -> Result<usize, Problem> {
    match q.get("limit") {
        None => Ok(10.min(max)),
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=max).contains(l))
            .ok_or_else(|| {
                Problem::bad_request(format!(
                    "query parameter `limit` must be an integer from 1 to {max}"
                ))
            }),
    }
}

/// Best sellers of the latest window.
#[utoipa::path(get, path = "/v1/analytics/top",
    params(("window" = Option<String>, Query, description = "A configured window size (default: the last, `1h`)"),
        ("limit" = Option<usize>, Query, description = "How many SKUs (default 10, at most pipeline.top_k)")),
    responses((status = 200, body = TopResponse), (status = 400, body = Problem, content_type = "application/problem+json")))]
pub fn top(store: &ViewStore, q: &HashMap<String, String>) -> Result<TopResponse, Problem> {
    let (window, size) = window_param(store, q, store.windows_config().len() - 1)?;
    let max = store.top_k();
    let limit = limit_param(q, max)?;
    let g = store.top_as_of();
    let start = g - g % size;
    let entry = store.top(size, start);
    let items = entry
        .as_ref()
        .map(|e| {
            e.ranked
                .iter()
                .take(limit)
                .map(|(units, sku)| TopItem {
                    sku: sku.to_string(),
                    units_sold: -units,
                })
                .collect()
        })
        .unwrap_or_default();
    let as_of = entry.map_or(g, |e| g.max(e.changed_at));
    Ok(TopResponse {
        window,
        start: format_rfc3339(start),
        end: format_rfc3339(start + size),
        items,
        as_of,
    })
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", responses((status = 200, body = Health)))]
pub fn healthz(store: &ViewStore) -> Health {
    Health {
        status: "ok".into(),
        as_of: store.as_of(),
        detail: None,
    }
}

/// Readiness: no source stopped reading (records deleted by the broker before they were read),
/// the servers the pipeline uses (Kafka, ClickHouse) answered at the latest
/// contact, the latest checkpoint write (if checkpoints are on) succeeded, the pipeline has
/// absorbed everything its sources held when it started (the Kafka end offsets as of the
/// start), and it is no more than `max_lag_ms` behind the clock.
#[utoipa::path(get, path = "/readyz",
    responses((status = 200, body = Health), (status = 503, body = Problem, content_type = "application/problem+json")))]
pub fn readyz(
    store: &ViewStore,
    progress: &Progress,
    now_ms: u64,
    max_lag_ms: u64,
) -> Result<Health, Problem> {
    let as_of = store.as_of();
    if let Some(why) = progress.stopped() {
        return Err(stopped(&why));
    }
    if let Some(problem) = progress.source_problem() {
        return Err(Problem::unavailable(problem));
    }
    if progress.kafka_ok() == Some(false) {
        return Err(Problem::unavailable("Kafka is not reachable"));
    }
    if progress.clickhouse_ok() == Some(false) {
        return Err(Problem::unavailable("ClickHouse is not reachable"));
    }
    if let Some(problem) = progress.checkpoint_problem() {
        return Err(Problem::unavailable(format!(
            "writing checkpoints fails (a restart would replay more than it should): {problem}"
        )));
    }
    if as_of == 0 {
        return Err(Problem::unavailable(
            "the pipeline has not completed its first time yet",
        ));
    }
    let caught_up = progress.caught_up();
    if as_of < caught_up {
        return Err(Problem::unavailable(if caught_up == NOT_YET {
            "the pipeline is still reading what its sources held at start".to_string()
        } else {
            format!("the pipeline has read its start backlog and absorbs it (as_of {as_of} < {caught_up})")
        }));
    }
    let lag = now_ms.saturating_sub(as_of);
    if lag > max_lag_ms {
        return Err(Problem::unavailable(format!(
            "the pipeline is {lag} ms behind the clock (more than {max_lag_ms} ms)"
        )));
    }
    Ok(Health {
        status: "ready".into(),
        as_of,
        detail: progress.log_note(),
    })
}

/// The answer to every lookup once the dataflow has stopped: the views no longer move, and an
/// answer from them would look current.
pub fn stopped(why: &str) -> Problem {
    Problem::unavailable(format!(
        "the pipeline has stopped ({why}); its views are no longer kept up to date: ask another replica"
    ))
}

/// The OpenAPI document as served: the generated one, with the parameters narrowed to what
/// this server accepts (its configured windows, its `limit` ranges, the timestamp forms), so
/// that a client generated from it sends nothing it would refuse.
///
/// Every lookup may also answer 503 (the pipeline stopped, or the process that holds the key is
/// unreachable) and 504 (that process, or a `min_offsets` wait, ran out of time); with a Kafka
/// source, every lookup takes `min_offsets` (read-your-writes).
pub fn openapi_document(
    store: &ViewStore,
    min_offsets_topics: Option<&[String; 2]>,
) -> serde_json::Value {
    use serde_json::json;
    let mut doc = serde_json::to_value(ApiDoc::openapi()).expect("the document serializes");
    let windows: Vec<&str> = store
        .windows_config()
        .iter()
        .map(|w| w.name.as_str())
        .collect();
    let bound = json!({"oneOf": [
        {"type": "string", "format": "date-time"},
        {"type": "integer", "minimum": 0, "maximum": MAX_MILLIS}
    ]});
    let Some(paths) = doc["paths"].as_object_mut() else {
        return doc;
    };
    for (path, item) in paths.iter_mut() {
        // `get_mut`, not indexing: an index would add `parameters: null` where there are none.
        let Some(params) = item
            .get_mut("get")
            .and_then(|g| g.get_mut("parameters"))
            .and_then(|p| p.as_array_mut())
        else {
            continue;
        };
        for p in params {
            let schema = match (path.as_str(), p["name"].as_str()) {
                (_, Some("window")) => json!({"type": "string", "enum": windows}),
                (_, Some("from" | "to")) => bound.clone(),
                ("/v1/analytics/top", Some("limit")) => {
                    json!({"type": "integer", "minimum": 1, "maximum": store.top_k()})
                }
                ("/v1/reservations", Some("limit")) => {
                    json!({"type": "integer", "minimum": 1, "maximum": 1000})
                }
                ("/v1/forecast/at-risk", Some("limit")) => match store.forecast().config() {
                    Some(c) => json!({"type": "integer", "minimum": 1, "maximum": c.at_risk_keep}),
                    None => continue,
                },
                ("/v1/forecast/at-risk", Some("buckets")) => match store.forecast().config() {
                    Some(c) => json!({"type": "integer", "enum": c.horizons}),
                    None => continue,
                },
                _ => continue,
            };
            p["schema"] = schema;
        }
    }
    let problem = json!({"description": "A problem", "content": {"application/problem+json":
        {"schema": {"$ref": "#/components/schemas/Problem"}}}});
    let min_offsets = min_offsets_topics.map(|topics| {
        let names: Vec<String> = ["inventory", "orders", &topics[0], &topics[1]]
            .iter()
            .map(|t| regex_escape(t))
            .collect();
        let one = format!("({}):[0-9]{{1,9}}:[0-9]{{1,18}}", names.join("|"));
        json!({"name": "min_offsets", "in": "query", "required": false,
            "description": "Read-your-writes: comma-separated stream-or-topic:partition:offset of \
                writes to wait for (at most http.max_wait, then 504), e.g. inventory:3:1234,orders:0:99",
            "schema": {"type": "string", "pattern": format!("^{one}(,{one}){{0,63}}$")}})
    });
    for (path, item) in paths.iter_mut() {
        if !path.starts_with("/v1/") {
            continue;
        }
        let Some(get) = item.get_mut("get").and_then(|g| g.as_object_mut()) else {
            continue;
        };
        if let Some(param) = &min_offsets {
            let params = get.entry("parameters").or_insert_with(|| json!([]));
            if let Some(params) = params.as_array_mut() {
                params.push(param.clone());
            }
        }
        if let Some(responses) = get.get_mut("responses").and_then(|r| r.as_object_mut()) {
            for status in ["400", "503", "504"] {
                if status == "400" && min_offsets.is_none() {
                    continue;
                }
                responses.entry(status).or_insert_with(|| problem.clone());
            }
        }
    }
    doc
}

/// `s` as a regular expression that matches exactly it.
fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let special = "\\.^$|?*+()[]{}-".contains(c);
            special.then_some('\\').into_iter().chain([c])
        })
        .collect()
}
