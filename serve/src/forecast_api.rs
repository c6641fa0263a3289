//! The forecast routes of contract 1.2 §5: the served forecast of a key, the at-risk ranking
//! and the online evaluation with the experiment's readout (docs/forecasting.md). Plain
//! functions over the [`ViewStore`], like the rest of the API.

use crate::problem::Problem;
use serde::Serialize;
use std::collections::HashMap;
use stockflow_dataflow::forecast::eval::{unpaired, Readout, Segment, Sums, Verdict};
use stockflow_dataflow::forecast::model::Model;
use stockflow_dataflow::forecast::ForecastConfig;
use stockflow_dataflow::views::ViewStore;
use stockflow_types::timefmt::format_rfc3339;
use utoipa::ToSchema;

/// Quantiles of demand over a horizon.
#[derive(Debug, Serialize, ToSchema)]
pub struct Quantiles {
    /// The median.
    #[serde(rename = "0.5")]
    pub q50: u64,
    /// 90%.
    #[serde(rename = "0.9")]
    pub q90: u64,
    /// 95%.
    #[serde(rename = "0.95")]
    pub q95: u64,
    /// 99%.
    #[serde(rename = "0.99")]
    pub q99: u64,
}

/// The forecast of one horizon.
#[derive(Debug, Serialize, ToSchema)]
pub struct ForecastHorizon {
    /// Its length in buckets.
    pub buckets: u32,
    /// Start of its first bucket (RFC 3339).
    pub start: String,
    /// End of its last bucket (RFC 3339).
    pub end: String,
    /// Mean demand over the horizon.
    pub mean: f64,
    /// Quantiles of that demand.
    pub quantiles: Quantiles,
    /// Probability that demand exceeds `available` within the horizon (1 when nothing is
    /// available).
    pub stockout_probability: f64,
}

/// The forecast served for one (sku, location): its arm's model, as of the last bucket boundary
/// the log frontier passed.
#[derive(Debug, Serialize, ToSchema)]
pub struct ForecastResponse {
    /// The SKU.
    pub sku: String,
    /// The location.
    pub location: String,
    /// `model:model-file version`.
    pub model: String,
    /// The key's arm in the experiment.
    pub arm: String,
    /// The boundary it was issued at (RFC 3339).
    pub issued_at: String,
    /// Seen for less than the look-back: the forecast leans on its group's prior.
    pub cold_start: bool,
    /// Per configured horizon.
    pub horizons: Vec<ForecastHorizon>,
    /// `available` at the boundary.
    pub available: i64,
    /// Whole buckets before the mean demand exceeds `available`; null if not within the
    /// look-back.
    pub days_of_cover: Option<u32>,
    /// Pipeline time (epoch ms) the answer is consistent as of.
    pub as_of: u64,
}

/// A key in the at-risk ranking.
#[derive(Debug, Serialize, ToSchema)]
pub struct AtRiskItem {
    /// The SKU.
    pub sku: String,
    /// The location.
    pub location: String,
    /// Its served stock-out probability over the horizon.
    pub stockout_probability: f64,
    /// Its days of cover.
    pub days_of_cover: Option<u32>,
    /// `available` at the boundary.
    pub available: i64,
}

/// The keys most likely to run out within a horizon.
#[derive(Debug, Serialize, ToSchema)]
pub struct AtRiskResponse {
    /// The horizon, in buckets.
    pub buckets: u32,
    /// Most likely to run out first (ties by SKU, then location).
    pub items: Vec<AtRiskItem>,
    /// `process` in a cluster: the keys of this process only (docs/forecasting.md).
    pub scope: String,
    /// Pipeline time (epoch ms) the answer is consistent as of.
    pub as_of: u64,
}

/// Running metrics of one (model, arm, horizon, segment).
#[derive(Debug, Serialize, ToSchema)]
pub struct EvaluationRow {
    /// `model:model-file version`.
    pub model: String,
    /// The arm of the keys scored.
    pub arm: String,
    /// The horizon, in buckets.
    pub buckets: u32,
    /// `cold_start`, `intermittent` or `smooth` (when issued).
    pub segment: String,
    /// Forecasts scored.
    pub count: u64,
    /// Forecasts whose label was censored (out of stock): not scored.
    pub censored: u64,
    /// Root mean squared scaled error per bucket (M5's scale, per key, over its look-back).
    pub rmsse: Option<f64>,
    /// Σ|y − ŷ| / Σy.
    pub wape: Option<f64>,
    /// Σ(ŷ − y) / Σy: positive over-forecasts.
    pub bias: Option<f64>,
    /// Mean pinball loss per quantile level ("0.5", "0.9", "0.95", "0.99").
    pub pinball: HashMap<String, Option<f64>>,
    /// Share of labels at or below each quantile (a calibrated q has coverage q).
    pub coverage: HashMap<String, Option<f64>>,
    /// Mean Brier score of the stock-out probability.
    pub brier: Option<f64>,
    /// Labels that exceeded `available`.
    pub stockouts: u64,
}

/// The paired comparison of two models on the same labels: an always-valid sequential test.
#[derive(Debug, Serialize, ToSchema)]
pub struct Comparison {
    /// The horizon, in buckets.
    pub buckets: u32,
    /// Model A.
    pub a: String,
    /// Model B.
    pub b: String,
    /// Forecast pairs scored on the same label.
    pub pairs: u64,
    /// Mean of loss(A) − loss(B) (squared scaled error): positive means B is better.
    pub mean_difference: Option<f64>,
    /// Always-valid p-value (mSPRT, normal mixture): may be read at any time.
    pub p_value: f64,
    /// Always-valid 95% confidence interval of the mean difference.
    pub interval: Option<[f64; 2]>,
    /// `not_yet` (no difference yet), `a_better` or `b_better`.
    pub verdict: String,
    /// The readout in words.
    pub summary: String,
}

/// One arm of an unpaired comparison: its served model on its own keys.
#[derive(Debug, Serialize, ToSchema)]
pub struct ArmLoss {
    /// The arm.
    pub arm: String,
    /// The model it serves.
    pub model: String,
    /// Forecasts scored with a scale.
    pub scored: u64,
    /// Mean squared scaled error per bucket.
    pub loss: Option<f64>,
    /// 95% confidence interval of the mean loss (fixed-sample normal; for a decision read the
    /// comparison's always-valid interval).
    pub interval: Option<[f64; 2]>,
}

/// Two arms compared on their own keys (unpaired): the always-valid test of the difference of
/// their served models' mean losses.
#[derive(Debug, Serialize, ToSchema)]
pub struct ArmComparison {
    /// The horizon, in buckets.
    pub buckets: u32,
    /// Arm A.
    pub a: ArmLoss,
    /// Arm B.
    pub b: ArmLoss,
    /// Mean loss of A minus that of B: positive means B is better.
    pub mean_difference: Option<f64>,
    /// Always-valid p-value.
    pub p_value: f64,
    /// Always-valid 95% confidence interval of the difference.
    pub interval: Option<[f64; 2]>,
    /// `not_yet`, `a_better` or `b_better`.
    pub verdict: String,
    /// The readout in words.
    pub summary: String,
}

/// The online evaluation and the experiment's readout.
#[derive(Debug, Serialize, ToSchema)]
pub struct EvaluationResponse {
    /// Per model, arm, horizon and segment.
    pub items: Vec<EvaluationRow>,
    /// Every pair of models, per horizon, on the same labels (paired).
    pub comparisons: Vec<Comparison>,
    /// Every pair of arms, per horizon, each on its own keys (unpaired): the experiment.
    pub arms: Vec<ArmComparison>,
    /// Demand that arrived after its bucket was final: in no label.
    pub late_labels: u64,
    /// `process` in a cluster: the keys of this process only.
    pub scope: String,
    /// Pipeline time (epoch ms) the answer is consistent as of.
    pub as_of: u64,
}

/// Level of the readout's test and width of its interval.
pub const ALPHA: f64 = 0.05;
/// The mSPRT mixing variance of the mean loss difference (squared scaled errors are O(1)).
pub const TAU2: f64 = 0.01;

fn config(store: &ViewStore) -> Result<&ForecastConfig, Problem> {
    store.forecast().config().map(|c| &**c).ok_or_else(|| {
        Problem::not_found("forecasting is off on this server (forecast.enabled = false)")
    })
}

fn scope(cluster: bool) -> String {
    if cluster { "process" } else { "cluster" }.into()
}

/// The forecast of one (sku, location).
#[utoipa::path(get, path = "/v1/forecast/{sku}/{location}",
    params(("sku" = String, Path, description = "The SKU"), ("location" = String, Path, description = "The location")),
    responses((status = 200, body = ForecastResponse), (status = 404, description = "Never seen, not yet issued (the first boundary after its first event), or forecasting is off", body = Problem, content_type = "application/problem+json")))]
pub fn forecast(store: &ViewStore, sku: &str, location: &str) -> Result<ForecastResponse, Problem> {
    config(store)?;
    let as_of = store.as_of();
    let f = store.forecast().served(sku, location).ok_or_else(|| {
        Problem::not_found(format!(
            "no forecast for SKU {sku:?} at location {location:?}: never seen, or not yet issued (forecasts are issued at each bucket boundary the log passes)"
        ))
    })?;
    Ok(ForecastResponse {
        sku: sku.into(),
        location: location.into(),
        model: f.model.clone(),
        arm: f.arm.clone(),
        issued_at: format_rfc3339(f.issued_at),
        cold_start: f.cold_start,
        horizons: f
            .horizons
            .iter()
            .map(|h| ForecastHorizon {
                buckets: h.buckets,
                start: format_rfc3339(h.start),
                end: format_rfc3339(h.end),
                mean: h.mean,
                quantiles: Quantiles {
                    q50: h.q[0],
                    q90: h.q[1],
                    q95: h.q[2],
                    q99: h.q[3],
                },
                stockout_probability: h.stockout,
            })
            .collect(),
        available: f.available,
        days_of_cover: f.days_of_cover,
        as_of,
    })
}

/// The keys most likely to run out within a horizon.
#[utoipa::path(get, path = "/v1/forecast/at-risk",
    params(
        ("buckets" = Option<u32>, Query, description = "The horizon, one of the configured (default: the longest)"),
        ("location" = Option<String>, Query, description = "Only this location"),
        ("limit" = Option<usize>, Query, description = "How many (default 10, at most forecast.at_risk_keep)")),
    responses((status = 200, body = AtRiskResponse), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 404, description = "Forecasting is off", body = Problem, content_type = "application/problem+json")))]
pub fn at_risk(
    store: &ViewStore,
    q: &HashMap<String, String>,
    cluster: bool,
) -> Result<AtRiskResponse, Problem> {
    let cfg = config(store)?;
    let longest = *cfg.horizons.iter().max().unwrap_or(&1);
    let buckets = match q.get("buckets") {
        None => longest,
        Some(b) => b
            .parse::<u32>()
            .ok()
            .filter(|b| cfg.horizons.contains(b))
            .ok_or_else(|| {
                Problem::bad_request(format!(
                    "query parameter `buckets` must be one of the configured horizons {:?}",
                    cfg.horizons
                ))
            })?,
    };
    let h = cfg.horizons.iter().position(|x| *x == buckets).unwrap_or(0);
    let max = cfg.at_risk_keep;
    let limit = crate::api::limit_param(q, max)?;
    let location = q.get("location").filter(|l| !l.is_empty());
    let as_of = store.as_of();
    let items = store
        .forecast()
        .at_risk(h, location.map(|l| l.as_str()), limit)
        .into_iter()
        .map(|a| AtRiskItem {
            sku: a.sku.to_string(),
            location: a.location.to_string(),
            stockout_probability: a.stockout,
            days_of_cover: a.days_of_cover,
            available: a.available,
        })
        .collect();
    Ok(AtRiskResponse {
        buckets,
        items,
        scope: scope(cluster),
        as_of,
    })
}

const LEVEL_NAMES: [&str; 4] = ["0.5", "0.9", "0.95", "0.99"];

/// The online evaluation of every model version and the experiment's readout.
#[utoipa::path(get, path = "/v1/forecast/evaluation",
    responses((status = 200, body = EvaluationResponse), (status = 404, description = "Forecasting is off", body = Problem, content_type = "application/problem+json")))]
pub fn evaluation(store: &ViewStore, cluster: bool) -> Result<EvaluationResponse, Problem> {
    let cfg = config(store)?;
    let as_of = store.as_of();
    let e = store.forecast().evaluation();
    let model = |i: u8| cfg.model_name(Model::ALL[i as usize]);
    let arm = |i: u8| {
        cfg.experiment
            .arms
            .get(i as usize)
            .map_or_else(|| "A".into(), |a| a.name.clone())
    };
    let items = e
        .sums
        .iter()
        .map(|((m, a, h, s), sums)| {
            let x = sums.metrics();
            let by_level = |v: [Option<f64>; 4]| {
                LEVEL_NAMES
                    .iter()
                    .zip(v)
                    .map(|(l, v)| (l.to_string(), v))
                    .collect()
            };
            EvaluationRow {
                model: model(*m),
                arm: arm(*a),
                buckets: cfg.horizons[*h as usize],
                segment: Segment::ALL[*s as usize].name().into(),
                count: sums.n,
                censored: sums.censored,
                rmsse: x.rmsse,
                wape: x.wape,
                bias: x.bias,
                pinball: by_level(x.pinball),
                coverage: by_level(x.coverage),
                brier: x.brier,
                stockouts: sums.stockouts,
            }
        })
        .collect();
    let comparisons = e
        .paired
        .iter()
        .map(|((h, a, b), p)| {
            let r = p.readout(ALPHA, TAU2);
            let (ma, mb) = (model(*a), model(*b));
            let (verdict, summary) = words(&r, &ma, &mb, "pairs");
            Comparison {
                buckets: cfg.horizons[*h as usize],
                a: ma,
                b: mb,
                pairs: r.n,
                mean_difference: r.mean,
                p_value: r.p_value,
                interval: r.interval.map(|(lo, hi)| [lo, hi]),
                verdict,
                summary,
            }
        })
        .collect();
    // Each arm's served model on the arm's keys, over every segment.
    let arm_sums = |arm: usize, h: u8| {
        let m = Model::ALL
            .iter()
            .position(|x| *x == cfg.experiment.model_of(arm))
            .unwrap_or(0) as u8;
        let mut total = Sums::default();
        for ((mi, ai, hi, _), s) in &e.sums {
            if (*mi, *ai as usize, *hi) == (m, arm, h) {
                total.merge(s);
            }
        }
        (m, total)
    };
    let arm_loss = |arm: usize, m: u8, s: &Sums| ArmLoss {
        arm: cfg.experiment.arms[arm].name.clone(),
        model: model(m),
        scored: s.n_scaled,
        loss: s.loss().map(|l| l.0),
        interval: s
            .loss()
            .map(|(l, v)| [l - 1.96 * v.sqrt(), l + 1.96 * v.sqrt()]),
    };
    let mut arms = Vec::new();
    let n_arms = cfg.experiment.arms.len();
    for h in 0..cfg.horizons.len() as u8 {
        for a in 0..n_arms {
            for b in a + 1..n_arms {
                let ((ma, sa), (mb, sb)) = (arm_sums(a, h), arm_sums(b, h));
                let r = unpaired(&sa, &sb, ALPHA, TAU2);
                let (la, lb) = (arm_loss(a, ma, &sa), arm_loss(b, mb, &sb));
                let (verdict, summary) = words(
                    &r,
                    &format!("arm {} ({})", la.arm, la.model),
                    &format!("arm {} ({})", lb.arm, lb.model),
                    "forecasts in the smaller arm",
                );
                arms.push(ArmComparison {
                    buckets: cfg.horizons[h as usize],
                    a: la,
                    b: lb,
                    mean_difference: r.mean,
                    p_value: r.p_value,
                    interval: r.interval.map(|(lo, hi)| [lo, hi]),
                    verdict,
                    summary,
                });
            }
        }
    }
    Ok(EvaluationResponse {
        items,
        comparisons,
        arms,
        late_labels: e.late_labels,
        scope: scope(cluster),
        as_of,
    })
}

/// A readout's verdict and its sentence, `a` and `b` naming what was compared over `r.n` `unit`.
fn words(r: &Readout, a: &str, b: &str, unit: &str) -> (String, String) {
    let tail = format!("({} {unit}, p = {:.3})", r.n, r.p_value);
    match r.verdict {
        Verdict::NotYet => (
            "not_yet".into(),
            format!("no difference yet between {a} and {b} {tail}"),
        ),
        Verdict::ABetter => (
            "a_better".into(),
            format!("{a} forecasts better than {b} {tail}"),
        ),
        Verdict::BBetter => (
            "b_better".into(),
            format!("{b} forecasts better than {a} {tail}"),
        ),
    }
}

/// Sets the forecast metrics of `/metrics` (docs/forecasting.md): sizes, late labels, and per
/// model and horizon the forecasts scored and their running RMSSE and WAPE (all arms and
/// segments together).
pub fn record_metrics(store: &ViewStore) {
    let Some(cfg) = store.forecast().config() else {
        return;
    };
    let (keys, pending, bytes) = store.forecast().sizes();
    metrics::gauge!("stockflow_forecast_keys").set(keys as f64);
    metrics::gauge!("stockflow_forecast_pending_inputs").set(pending as f64);
    metrics::gauge!("stockflow_forecast_key_bytes").set(bytes as f64);
    let e = store.forecast().evaluation();
    metrics::counter!("stockflow_forecast_late_labels_total").absolute(e.late_labels);
    let mut by: std::collections::BTreeMap<(u8, u8), Sums> = Default::default();
    for ((m, _, h, _), s) in &e.sums {
        by.entry((*m, *h)).or_default().merge(s);
    }
    for ((m, h), s) in by {
        let labels = [
            ("model", cfg.model_name(Model::ALL[m as usize])),
            ("horizon", cfg.horizons[h as usize].to_string()),
        ];
        metrics::counter!("stockflow_forecast_scored_total", &labels).absolute(s.n);
        let x = s.metrics();
        if let Some(v) = x.rmsse {
            metrics::gauge!("stockflow_forecast_rmsse", &labels).set(v);
        }
        if let Some(v) = x.wape {
            metrics::gauge!("stockflow_forecast_wape", &labels).set(v);
        }
    }
}
