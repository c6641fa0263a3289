//! The forecast models and the model file (docs/forecasting.md, section 4): each model is a pure
//! function of a key's history window, its group's prior and the file's parameters, so a model
//! file change needs no state migration and a replay computes the same forecasts.

use super::dist::{GammaRate, NegBin};
use serde::{Deserialize, Serialize};

/// Buckets in a season (the weekday cycle when buckets are days).
pub const SEASON: usize = 7;

/// A prior for a group of keys (a location × category, or the global one): demand per bucket
/// and its seasonal profile (factors averaging 1).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Prior {
    /// Mean demand per bucket.
    pub rate: f64,
    /// Seasonal factors, Monday first when buckets are days.
    pub weekday: [f64; SEASON],
    /// How many buckets of a key's own history the prior is worth (the file's `strength` when
    /// absent): the group's gamma rate, `mean / variance` of its keys' rates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strength: Option<f64>,
}

impl Default for Prior {
    fn default() -> Self {
        Prior {
            rate: 1.0,
            weekday: [1.0; SEASON],
            strength: None,
        }
    }
}

/// A group's prior in the model file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroupPrior {
    /// The location (`*` for every location).
    pub location: String,
    /// The category (`*` for every category; `""` for SKUs never `listed`).
    pub category: String,
    /// Its prior.
    #[serde(flatten)]
    pub prior: Prior,
}

/// The parameters of every model version, loaded from a model file (TOML) at start; its
/// `version` is in every forecast. Fitted by `stockflow forecast fit`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ModelFile {
    /// The file's version, e.g. `m5-2016-04-25`.
    pub version: String,
    /// TSB: smoothing of the probability of a sale (every bucket).
    pub tsb_alpha: f64,
    /// TSB: smoothing of the size of a sale (sale buckets).
    pub tsb_beta: f64,
    /// Negative binomial shape of the TSB and fallback predictive (variance `μ + μ²/k`).
    pub dispersion: f64,
    /// The pooled model's prior strength, in buckets of history it is worth.
    pub strength: f64,
    /// How much the SKU's other locations move a key's prior (in buckets of group-expected
    /// demand); 0 turns it off.
    pub sku_strength: f64,
    /// The prior of a key whose group the file does not name.
    pub global: Prior,
    /// Priors per location × category.
    pub groups: Vec<GroupPrior>,
}

impl Default for ModelFile {
    fn default() -> Self {
        ModelFile {
            version: "builtin-1".into(),
            tsb_alpha: 0.1,
            tsb_beta: 0.1,
            dispersion: 2.0,
            strength: 7.0,
            sku_strength: 14.0,
            global: Prior::default(),
            groups: Vec::new(),
        }
    }
}

impl ModelFile {
    /// The prior of a key at `location` of `category` (`""` if the SKU was never listed): the
    /// exact group, then the category anywhere, then the location for any category, then the
    /// global prior.
    pub fn prior(&self, location: &str, category: &str) -> &Prior {
        let find = |l: &str, c: &str| {
            self.groups
                .iter()
                .find(|g| g.location == l && g.category == c)
                .map(|g| &g.prior)
        };
        find(location, category)
            .or_else(|| find("*", category))
            .or_else(|| find(location, "*"))
            .unwrap_or(&self.global)
    }

    /// Checks the parameters: what a bad file would otherwise turn into NaNs.
    pub fn validate(&self) -> Result<(), String> {
        let unit = |name: &str, v: f64| {
            (v > 0.0 && v <= 1.0)
                .then_some(())
                .ok_or(format!("{name} must be in (0, 1], not {v}"))
        };
        let pos = |name: &str, v: f64| {
            (v > 0.0 && v.is_finite())
                .then_some(())
                .ok_or(format!("{name} must be a positive number, not {v}"))
        };
        unit("tsb_alpha", self.tsb_alpha)?;
        unit("tsb_beta", self.tsb_beta)?;
        pos("dispersion", self.dispersion)?;
        pos("strength", self.strength)?;
        if !(self.sku_strength >= 0.0 && self.sku_strength.is_finite()) {
            return Err(format!(
                "sku_strength must be 0 or more, not {}",
                self.sku_strength
            ));
        }
        if self.version.is_empty() {
            return Err("version must not be empty".into());
        }
        let prior = |name: &str, p: &Prior| {
            pos(&format!("{name}.rate"), p.rate)?;
            if let Some(s) = p.strength {
                pos(&format!("{name}.strength"), s)?;
            }
            for w in p.weekday {
                pos(&format!("{name}.weekday"), w)?;
            }
            Ok::<(), String>(())
        };
        prior("global", &self.global)?;
        for g in &self.groups {
            prior(&format!("group {}/{}", g.location, g.category), &g.prior)?;
        }
        Ok(())
    }
}

/// The model versions computed for every key (every one of them for every key: the served one
/// and the shadows).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Model {
    /// Seasonal naive: the same bucket of the previous season.
    Snaive,
    /// Teunter–Syntetos–Babai with a seasonal factor: intermittent demand.
    Tsb,
    /// Empirical-Bayes gamma–Poisson pooled toward the key's group and SKU.
    Pooled,
}

impl Model {
    /// Every model, in the order of their indexes.
    pub const ALL: [Model; 3] = [Model::Snaive, Model::Tsb, Model::Pooled];

    /// The model's name (the model string of a forecast is `name:file version`).
    pub fn name(self) -> &'static str {
        match self {
            Model::Snaive => "snaive",
            Model::Tsb => "tsb",
            Model::Pooled => "pooled",
        }
    }

    /// By name.
    pub fn parse(name: &str) -> Option<Model> {
        Model::ALL.into_iter().find(|m| m.name() == name)
    }
}

/// A key's history window as of a boundary: the last `L` buckets, oldest first.
#[derive(Clone, Debug, PartialEq)]
pub struct History {
    /// Units sold per bucket.
    pub y: Vec<u32>,
    /// Share of each bucket out of stock (log time), in [0, 1].
    pub exposure: Vec<f64>,
    /// Whether each bucket is censored (`exposure ≥ censor_share`) or before the key was seen.
    pub censored: Vec<bool>,
    /// Season index (weekday) of each bucket.
    pub season: Vec<usize>,
    /// Season index of the first bucket after the window (the first forecast bucket).
    pub next_season: usize,
    /// Buckets since the key was first seen (capped at the window).
    pub age: usize,
}

impl History {
    /// Indexes of the usable buckets.
    fn usable(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.y.len()).filter(|i| !self.censored[*i])
    }

    /// The mean of usable buckets, corrected for partial stock-outs, if any.
    pub fn mean(&self) -> Option<f64> {
        let (mut s, mut n) = (0.0, 0.0);
        for i in self.usable() {
            s += self.y[i] as f64 / (1.0 - self.exposure[i]);
            n += 1.0;
        }
        (n > 0.0).then(|| s / n)
    }

    /// Average days between sales (ADI) over usable buckets; `inf` without a sale.
    pub fn adi(&self) -> f64 {
        let n = self.usable().count() as f64;
        let sales = self.usable().filter(|i| self.y[*i] > 0).count() as f64;
        if sales == 0.0 {
            f64::INFINITY
        } else {
            n / sales
        }
    }
}

/// A predictive distribution over one horizon.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Predictive {
    /// Mean demand over the horizon.
    pub mean: f64,
    /// Quantiles 0.5, 0.9, 0.95, 0.99.
    pub q: [u64; 4],
    /// `P(demand > available)`.
    pub stockout: f64,
}

/// The quantile levels served.
pub const LEVELS: [f64; 4] = [0.5, 0.9, 0.95, 0.99];

/// What a model states about a key at a boundary: per horizon, and the mean per bucket of the
/// next season (for days of cover).
#[derive(Clone, Debug, PartialEq)]
pub struct Prediction {
    /// One per configured horizon.
    pub horizons: Vec<Predictive>,
    /// Mean demand of each of the next [`SEASON`] buckets.
    pub per_bucket: [f64; SEASON],
}

fn from_negbin(d: NegBin, available: i64) -> Predictive {
    Predictive {
        mean: d.mean(),
        q: LEVELS.map(|l| d.quantile(l)),
        stockout: stockout(available, || d.exceeds(available)),
    }
}

/// A key with nothing available is out of stock already: 1; otherwise `P(demand > available)`.
fn stockout(available: i64, tail: impl FnOnce() -> f64) -> f64 {
    if available <= 0 {
        1.0
    } else {
        tail()
    }
}

/// A negative binomial with mean `mean` and shape `k` (Poisson-like for large `k`).
fn negbin(mean: f64, k: f64) -> NegBin {
    if mean <= 0.0 {
        return NegBin { r: 0.0, p: 1.0 };
    }
    NegBin {
        r: k,
        p: k / (k + mean),
    }
}

/// The key's prior as a rate per bucket: its group's, moved by the SKU's other locations.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KeyPrior<'a> {
    /// The group's prior.
    pub group: &'a Prior,
    /// How the SKU sells elsewhere against its groups' expectations (1 when unknown).
    pub sku_factor: f64,
}

impl KeyPrior<'_> {
    fn rate(&self) -> f64 {
        self.group.rate * self.sku_factor
    }
}

/// Computes `model`'s prediction for the buckets after `h`, against `available`.
pub fn predict(
    model: Model,
    file: &ModelFile,
    h: &History,
    prior: KeyPrior<'_>,
    horizons: &[u32],
    available: i64,
) -> Prediction {
    let w = &prior.group.weekday;
    let season_of = |i: usize| (h.next_season + i) % SEASON;
    match model {
        Model::Snaive => snaive(file, h, prior, horizons, available),
        Model::Tsb => {
            let (p, z) = tsb_state(file, h, prior);
            let per = |i: usize| p * z * w[season_of(i)];
            let per_bucket = std::array::from_fn(per);
            let horizons = horizons
                .iter()
                .map(|&n| {
                    let mean: f64 = (0..n as usize).map(per).sum();
                    from_negbin(negbin(mean, file.dispersion), available)
                })
                .collect();
            Prediction {
                horizons,
                per_bucket,
            }
        }
        Model::Pooled => {
            let g = pooled_posterior(file, h, prior);
            let per_bucket = std::array::from_fn(|i| g.mean() * w[season_of(i)]);
            let horizons = horizons
                .iter()
                .map(|&n| {
                    let exposure: f64 = (0..n as usize).map(|i| w[season_of(i)]).sum();
                    // The posterior's uncertainty about the rate (shape a) and the buckets' own
                    // overdispersion beyond Poisson (shape `dispersion` per bucket, so n times
                    // that over n buckets), matched to one negative binomial by its variance:
                    // μ + μ²/a + μ²/(n·k).
                    let post = g.predictive(exposure);
                    let r = 1.0 / (1.0 / post.r + 1.0 / (n as f64 * file.dispersion));
                    from_negbin(negbin(post.mean(), r), available)
                })
                .collect();
            Prediction {
                horizons,
                per_bucket,
            }
        }
    }
}

/// The pooled model's posterior: the key's prior worth `strength` buckets, then every usable
/// bucket of the window (demand corrected for a partial stock-out; weight its seasonal factor).
pub fn pooled_posterior(file: &ModelFile, h: &History, prior: KeyPrior<'_>) -> GammaRate {
    let w = &prior.group.weekday;
    let strength = prior.group.strength.unwrap_or(file.strength);
    let mut g = GammaRate {
        a: prior.rate() * strength,
        b: strength,
    };
    for i in h.usable() {
        let seen = 1.0 - h.exposure[i];
        g.observe_scaled(h.y[i] as f64, w[h.season[i]] * seen);
    }
    g
}

/// TSB's probability of a sale and size per unit seasonal factor after the window, started
/// from the window's own averages (or the prior's, with no usable sale).
pub fn tsb_state(file: &ModelFile, h: &History, prior: KeyPrior<'_>) -> (f64, f64) {
    let w = &prior.group.weekday;
    let usable: Vec<usize> = h.usable().collect();
    let sales: Vec<f64> = usable
        .iter()
        .filter(|i| h.y[**i] > 0)
        .map(|i| h.y[*i] as f64 / w[h.season[*i]])
        .collect();
    if sales.is_empty() {
        // No sale seen: the prior's rate as a probability of a sale of one unit (or a sale
        // every bucket of `rate` units), the probability decayed by each zero seen.
        let rate = prior.rate();
        let (mut p, z) = if rate <= 1.0 {
            (rate, 1.0)
        } else {
            (1.0, rate)
        };
        for _ in &usable {
            p -= file.tsb_alpha * p;
        }
        return (p, z);
    }
    let mut p = sales.len() as f64 / usable.len() as f64;
    let mut z = sales.iter().sum::<f64>() / sales.len() as f64;
    for i in usable {
        if h.y[i] > 0 {
            p += file.tsb_alpha * (1.0 - p);
            z += file.tsb_beta * (h.y[i] as f64 / w[h.season[i]] - z);
        } else {
            p -= file.tsb_alpha * p;
        }
    }
    (p, z)
}

/// Seasonal naive: each forecast bucket is the same bucket of the previous season; a bucket
/// whose lag is censored or before the key was seen takes the key's mean instead (or its prior's
/// rate without a usable bucket). Quantiles and the stock-out tail are the empirical ones of the
/// method's own errors over the window, once it has at least [`MIN_ERRORS`] of them; a negative
/// binomial around the point before that.
fn snaive(
    file: &ModelFile,
    h: &History,
    prior: KeyPrior<'_>,
    horizons: &[u32],
    available: i64,
) -> Prediction {
    let n = h.y.len();
    let fallback = h
        .mean()
        .unwrap_or_else(|| prior.rate() * prior.group.weekday[h.next_season % SEASON]);
    // The value of the bucket `SEASON` before forecast bucket `i` (i < SEASON).
    let lagged = |i: usize| -> f64 {
        let at = n + i;
        if at < SEASON || at - SEASON >= n || h.censored[at - SEASON] || h.age < SEASON {
            fallback
        } else {
            h.y[at - SEASON] as f64
        }
    };
    let per_bucket: [f64; SEASON] = std::array::from_fn(lagged);
    let horizons = horizons
        .iter()
        .map(|&len| {
            let len = len as usize;
            let point: f64 = (0..len).map(|i| per_bucket[i % SEASON]).sum();
            let errors = snaive_errors(h, len);
            if errors.len() < MIN_ERRORS {
                return from_negbin(negbin(point, file.dispersion), available);
            }
            let q = LEVELS.map(|l| {
                let e = empirical_quantile(&errors, l);
                (point + e).max(0.0).ceil() as u64
            });
            let above = errors
                .iter()
                .filter(|e| point + **e > available as f64)
                .count();
            Predictive {
                mean: point,
                q,
                stockout: stockout(available, || above as f64 / errors.len() as f64),
            }
        })
        .collect();
    Prediction {
        horizons,
        per_bucket,
    }
}

/// Errors (actual minus forecast) that seasonal naive would have made over the window for sums
/// of `len` buckets, at every origin whose buckets and lags are all usable.
fn snaive_errors(h: &History, len: usize) -> Vec<f64> {
    let n = h.y.len();
    let mut out = Vec::new();
    if len > SEASON {
        return out;
    }
    for o in SEASON..=n.saturating_sub(len) {
        let ok = (o - SEASON..o + len).all(|i| !h.censored[i]);
        if ok {
            let actual: f64 = (o..o + len).map(|i| h.y[i] as f64).sum();
            let fc: f64 = (o..o + len).map(|i| h.y[i - SEASON] as f64).sum();
            out.push(actual - fc);
        }
    }
    out
}

/// Fewest errors from which seasonal naive's quantiles are empirical.
pub const MIN_ERRORS: usize = 5;

/// The `level` quantile of `v` (the smallest value with at least that share at or below it).
fn empirical_quantile(v: &[f64], level: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let k = ((level * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[k - 1]
}
