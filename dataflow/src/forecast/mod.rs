//! Forecasts that learn from the stream (docs/forecasting.md): per (sku, location), the
//! predictive distribution of demand over each configured horizon, the stock-out probability
//! against `available` and the days of cover, issued at each bucket boundary the log frontier
//! passes, scored when their labels are final, and compared in an A/B experiment.
//!
//! The [`Forecaster`] runs beside the ledger on the worker that owns the SKU (the ledger hands it
//! demand, stock and `listed` inputs stamped with log time); it applies them in log-time order as
//! the log frontier passes them, so that what a forecast saw depends on the log alone. Its
//! parts: [`dist`] (the predictive distributions), [`model`] (the models and the model file),
//! [`key`] (a key's features), [`eval`] (online evaluation and the readout).

pub mod dist;
pub mod eval;
pub mod fit;
pub mod key;
pub mod model;
mod state;

pub use state::{forecast_sku, Forecaster, Issued, KeyIssue};
pub use stockflow_types::rows::{FeatureRow, ForecastRow};

use model::{Model, ModelFile};
use serde::{Deserialize, Serialize};
use stockflow_types::config::{ConfigError, ForecastRows, Settings};
use stockflow_types::{Millis, Name};

/// One arm of the experiment: a share of the keys served by one model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Arm {
    /// Its name in answers (`A`, `B`, …).
    pub name: String,
    /// The model its keys are served.
    pub model: Model,
    /// Its share of the keys, in (0, 1]; the shares sum to 1.
    pub share: f64,
}

/// Which model serves which key: arms and a salt.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Experiment {
    /// Mixed into the hash: a new experiment takes a new salt.
    pub salt: String,
    /// The arms, in order.
    pub arms: Vec<Arm>,
}

impl Default for Experiment {
    fn default() -> Self {
        Experiment {
            salt: "stockflow".into(),
            arms: vec![Arm {
                name: "A".into(),
                model: Model::Pooled,
                share: 1.0,
            }],
        }
    }
}

impl Experiment {
    /// The model arm `arm` is served (the pooled model for an arm that is not configured).
    pub fn model_of(&self, arm: usize) -> Model {
        self.arms.get(arm).map_or(Model::Pooled, |a| a.model)
    }

    /// The arm of (sku, location): `xxh3_64(salt ‖ 0x00 ‖ sku ‖ 0x00 ‖ location)` (UTF-8 bytes,
    /// seed 0) divided by 2⁶⁴ gives `u` in [0, 1); the arm is the first whose cumulative share
    /// exceeds `u` (the last one if rounding leaves `u` above them all).
    pub fn arm_of(&self, sku: &str, location: &str) -> usize {
        let u = unit_hash(&self.salt, sku, location);
        let mut cum = 0.0;
        for (i, a) in self.arms.iter().enumerate() {
            cum += a.share;
            if u < cum {
                return i;
            }
        }
        self.arms.len().saturating_sub(1)
    }
}

/// The checked settings of forecasting.
#[derive(Clone, Debug, PartialEq)]
pub struct ForecastConfig {
    /// A bucket, ms (a day by default).
    pub bucket_ms: u64,
    /// Horizons in buckets (default 1 and 7).
    pub horizons: Vec<u32>,
    /// Buckets of history the models read (at most 28).
    pub lookback: usize,
    /// A bucket out of stock for at least this share is censored.
    pub censor_share: f64,
    /// The windows' finality delay: a label is final this long after its last bucket ends.
    pub window_retention_ms: u64,
    /// A key with no event for this many buckets (and no forecast awaiting its label) is
    /// forgotten.
    pub key_retention: i64,
    /// Keys ranked per location and horizon in the at-risk list.
    pub at_risk_keep: usize,
    /// The models' parameters.
    pub model: ModelFile,
    /// Who is served which model.
    pub experiment: Experiment,
    /// Emit forecasts and their features as rows (row changes, for the ClickHouse sink and the
    /// benchmark): `None`, none; `Some(share)`, the served version of every key and every
    /// version of `share` of the keys (a stable sample, [`ForecastConfig::sampled`]). The
    /// served forecasts and the evaluation are kept either way.
    pub rows: Option<f64>,
}

impl ForecastConfig {
    /// Daily buckets, horizons 1 and 7, 28 buckets of history, censored at half a bucket out of
    /// stock, the built-in model file, everyone on the pooled model.
    pub fn daily(window_retention_ms: u64) -> Self {
        ForecastConfig {
            bucket_ms: 86_400_000,
            horizons: vec![1, 7],
            lookback: 28,
            censor_share: 0.5,
            window_retention_ms,
            key_retention: 56,
            at_risk_keep: 100,
            model: ModelFile::default(),
            experiment: Experiment::default(),
            rows: None,
        }
    }

    /// From validated settings, reading the model file if one is named (`None`: forecasting is
    /// off).
    pub fn from_settings(s: &Settings) -> Result<Option<Self>, ConfigError> {
        let f = &s.forecast;
        if !f.enabled {
            return Ok(None);
        }
        let problem = |problem: String| ConfigError {
            field: "forecast.model_file",
            problem,
        };
        let model = match &f.model_file {
            None => ModelFile::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| problem(format!("cannot read {}: {e}", path.display())))?;
                toml::from_str::<ModelFile>(&text)
                    .map_err(|e| problem(format!("{}: {e}", path.display())))?
            }
        };
        model.validate().map_err(problem)?;
        let arms = f
            .experiment
            .arms
            .iter()
            .map(|a| Arm {
                name: a.name.clone(),
                model: Model::parse(&a.model).unwrap_or(Model::Pooled),
                share: a.share,
            })
            .collect();
        Ok(Some(ForecastConfig {
            bucket_ms: f.bucket.as_millis() as u64,
            horizons: f.horizons.clone(),
            lookback: f.lookback,
            censor_share: f.censor_share,
            window_retention_ms: s.pipeline.window_retention.as_millis() as u64,
            key_retention: i64::from(f.key_retention),
            at_risk_keep: f.at_risk_keep,
            model,
            experiment: Experiment {
                salt: f.experiment.salt.clone(),
                arms,
            },
            rows: match f.clickhouse {
                _ if !s.clickhouse.enabled => None,
                ForecastRows::None => None,
                ForecastRows::Served => Some(f.clickhouse_shadow_sample),
                ForecastRows::All => Some(1.0),
            },
        }))
    }

    /// The model string of forecasts of `m`: `name:file version`.
    pub fn model_name(&self, m: Model) -> String {
        format!("{}:{}", m.name(), self.model.version)
    }

    /// Whether every version of (sku, location)'s forecasts is emitted as rows (not only the
    /// served one): `xxh3_64("rows" ‖ 0x00 ‖ sku ‖ 0x00 ‖ location) / 2⁶⁴ < share`, so the
    /// sample is a fixed panel of keys across boundaries, restarts and processes.
    pub fn sampled(&self, sku: &str, location: &str) -> bool {
        let share = self.rows.unwrap_or(0.0);
        share >= 1.0 || unit_hash("rows", sku, location) < share
    }
}

/// `xxh3_64(salt ‖ 0x00 ‖ sku ‖ 0x00 ‖ location)` (UTF-8 bytes, seed 0) divided by 2⁶⁴: in [0, 1).
fn unit_hash(salt: &str, sku: &str, location: &str) -> f64 {
    let mut bytes = Vec::with_capacity(salt.len() + sku.len() + location.len() + 2);
    bytes.extend_from_slice(salt.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(sku.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(location.as_bytes());
    xxhash_rust::xxh3::xxh3_64(&bytes) as f64 / 18_446_744_073_709_551_616.0
}

/// One horizon of a served forecast.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ServedHorizon {
    /// Its length in buckets.
    pub buckets: u32,
    /// Start of its first bucket, epoch ms.
    pub start: Millis,
    /// End of its last bucket, epoch ms.
    pub end: Millis,
    /// Mean demand.
    pub mean: f64,
    /// Quantiles 0.5, 0.9, 0.95, 0.99.
    pub q: [u64; 4],
    /// `P(demand > available)`.
    pub stockout: f64,
}

/// The forecast a key's arm serves, as of the boundary it was issued at.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Served {
    /// `name:file version`.
    pub model: String,
    /// The arm's name.
    pub arm: String,
    /// The boundary, epoch ms.
    pub issued_at: Millis,
    /// Seen for less than the look-back.
    pub cold_start: bool,
    /// Per horizon.
    pub horizons: Vec<ServedHorizon>,
    /// `available` at the boundary.
    pub available: i64,
    /// Whole buckets before the mean demand exceeds `available` (`None`: not within the
    /// look-back).
    pub days_of_cover: Option<u32>,
}

/// A key in the at-risk ranking of one horizon.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AtRisk {
    /// The SKU.
    pub sku: Name,
    /// The location.
    pub location: Name,
    /// Its served stock-out probability.
    pub stockout: f64,
    /// Its days of cover.
    pub days_of_cover: Option<u32>,
    /// `available` at the boundary.
    pub available: i64,
}

impl AtRisk {
    /// The ranking order: most likely to run out first, then by SKU and location.
    pub fn rank(a: &AtRisk, b: &AtRisk) -> std::cmp::Ordering {
        b.stockout
            .total_cmp(&a.stockout)
            .then_with(|| a.sku.cmp(&b.sku))
            .then_with(|| a.location.cmp(&b.location))
    }
}
