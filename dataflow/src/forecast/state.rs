//! The forecaster of one worker: the keys of the SKUs it owns, their inputs waiting for the log
//! frontier, the issuing at each bucket boundary and the scoring of final labels.

use super::eval::{Evaluation, Scored, Segment};
use super::key::{rmsse_scale, KeyState};
use super::model::{self, History, KeyPrior, Model, Prediction, SEASON};
use super::{AtRisk, ForecastConfig, Served, ServedHorizon};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use stockflow_types::rows::{Change, FeatureRow, Float, ForecastRow};
use stockflow_types::{Millis, Name};

/// An input waiting for the log frontier to pass its log time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum Input {
    /// Units sold (or un-sold: a fulfilment undone) at business time `ts`.
    Demand {
        location: Name,
        ts: Millis,
        units: i64,
    },
    /// The key's `available` from now on.
    Available { location: Name, available: i64 },
    /// The SKU's category (the latest by `ts`, then `event_id`, wins).
    Listed {
        ts: Millis,
        event_id: Box<str>,
        category: Name,
    },
}

/// The keys of one SKU.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct SkuKeys {
    /// (ts, event_id, category) of the deciding `listed`.
    category: Option<(Millis, Box<str>, Name)>,
    locs: BTreeMap<Name, KeyState>,
}

/// What an advance of the frontier produced, for the views.
#[derive(Debug, Default)]
pub struct Issued {
    /// Forecasts served, per key.
    pub served: Vec<(Name, Name, Served)>,
    /// When issued: per horizon, per location, the keys most likely to run out.
    pub at_risk: Option<Vec<BTreeMap<Name, Vec<AtRisk>>>>,
    /// Keys forgotten.
    pub forgotten: Vec<(Name, Name)>,
    /// When issued: per location, the keys whose features are stale (no event for a season of
    /// buckets before the boundary).
    pub stale: Option<BTreeMap<Name, u64>>,
    /// Some forecast was scored.
    pub scored: bool,
    /// Some demand arrived for a final bucket.
    pub late: bool,
}

/// The forecaster's state on one worker (what its checkpoint part holds).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Forecaster {
    #[serde(skip)]
    cfg: Option<Arc<ForecastConfig>>,
    /// The bucket and horizons (in buckets) it ran with: what its state is indexed by.
    bucket_ms: u64,
    horizons: Vec<u32>,
    skus: BTreeMap<Name, SkuKeys>,
    /// Inputs by (log time, arrival), until the frontier passes them.
    pending: BTreeMap<(Millis, u64), (Name, Input)>,
    seq: u64,
    /// The next boundary to issue at (bucket index), once anything was seen.
    next_k: Option<i64>,
    /// Log times at which some label becomes final.
    due: BTreeSet<Millis>,
    frontier: Millis,
    /// The evaluation so far.
    pub eval: Evaluation,
    /// Rows appended since the last take (when [`ForecastConfig::rows`] is set): each forecast
    /// as issued and again as scored, and the features of each key at each boundary.
    #[serde(skip)]
    pub rows: Vec<(Change, i64)>,
}

impl Forecaster {
    /// Empty.
    pub fn new(cfg: Arc<ForecastConfig>) -> Self {
        Forecaster {
            bucket_ms: cfg.bucket_ms,
            horizons: cfg.horizons.clone(),
            cfg: Some(cfg),
            skus: BTreeMap::new(),
            pending: BTreeMap::new(),
            seq: 0,
            next_k: None,
            due: BTreeSet::new(),
            frontier: 0,
            eval: Evaluation::default(),
            rows: Vec::new(),
        }
    }

    /// Restored from a checkpoint, with the configuration it runs with now (a new model file is
    /// fine: models are functions of the features).
    /// A new bucket size starts afresh (the features are per bucket); horizons no longer
    /// configured lose their open forecasts and their evaluation, the others keep both.
    pub fn with_config(mut self, cfg: Arc<ForecastConfig>) -> Self {
        if cfg.bucket_ms != self.bucket_ms {
            return Forecaster::new(cfg);
        }
        if cfg.horizons != self.horizons {
            let now = |i: u8| {
                let h = self.horizons.get(i as usize)?;
                cfg.horizons.iter().position(|x| x == h).map(|j| j as u8)
            };
            for key in self.skus.values_mut().flat_map(|k| k.locs.values_mut()) {
                key.open
                    .retain_mut(|o| now(o.horizon).map(|j| o.horizon = j).is_some());
            }
            let sums = std::mem::take(&mut self.eval.sums);
            self.eval.sums = sums
                .into_iter()
                .filter_map(|((m, a, h, s), v)| Some(((m, a, now(h)?, s), v)))
                .collect();
            let paired = std::mem::take(&mut self.eval.paired);
            self.eval.paired = paired
                .into_iter()
                .filter_map(|((h, a, b), v)| Some(((now(h)?, a, b), v)))
                .collect();
            self.horizons = cfg.horizons.clone();
        }
        self.cfg = Some(cfg);
        self
    }

    fn cfg(&self) -> Arc<ForecastConfig> {
        Arc::clone(self.cfg.as_ref().expect("configured"))
    }

    fn push(&mut self, lt: Millis, sku: &Name, input: Input) {
        // Nothing below the frontier can arrive; clamp defensively so an input is never lost.
        let lt = lt.max(self.frontier);
        self.seq += 1;
        self.pending
            .insert((lt, self.seq), (Arc::clone(sku), input));
    }

    /// `units` sold at `location` at business time `ts`, by a record of log time `lt`.
    pub fn demand(&mut self, sku: &Name, location: &Name, ts: Millis, units: i64, lt: Millis) {
        let location = Arc::clone(location);
        self.push(
            lt,
            sku,
            Input::Demand {
                location,
                ts,
                units,
            },
        );
    }

    /// The key's `available` changed at log time `lt`.
    pub fn available(&mut self, sku: &Name, location: &Name, available: i64, lt: Millis) {
        let location = Arc::clone(location);
        self.push(
            lt,
            sku,
            Input::Available {
                location,
                available,
            },
        );
    }

    /// A `listed` event.
    pub fn listed(&mut self, sku: &Name, ts: Millis, event_id: &str, category: &str, lt: Millis) {
        let input = Input::Listed {
            ts,
            event_id: event_id.into(),
            category: category.into(),
        };
        self.push(lt, sku, input);
    }

    /// Keys kept.
    pub fn keys(&self) -> usize {
        self.skus.values().map(|s| s.locs.len()).sum()
    }

    /// The bytes its keys hold, counted from the structures (each key's state and its open
    /// forecasts, its location's name pointer and a share of the map's node), not measured.
    pub fn key_bytes(&self) -> usize {
        use std::mem::size_of;
        // A B-tree node holds up to 11 entries with their keys and values, about 2/3 full.
        let entry = size_of::<Name>() + size_of::<KeyState>();
        self.skus
            .values()
            .flat_map(|k| k.locs.values())
            .map(|key| entry * 3 / 2 + key.open.capacity() * size_of::<super::key::Open>())
            .sum()
    }

    /// Inputs waiting for the frontier.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// The features of a key (tests and the reference).
    pub fn key(&self, sku: &str, location: &str) -> Option<&KeyState> {
        self.skus.get(sku)?.locs.get(location)
    }

    /// Applies every input before log time `to`, in log-time order.
    fn apply_before(&mut self, to: Millis) -> bool {
        let mut late = false;
        let cfg = self.cfg();
        let b = cfg.bucket_ms;
        while let Some(entry) = self.pending.first_entry() {
            let lt = entry.key().0;
            if lt >= to {
                break;
            }
            let (sku, input) = entry.remove();
            let keys = self.skus.entry(sku).or_default();
            match input {
                Input::Demand {
                    location,
                    ts,
                    units,
                } => {
                    let k = (ts / b) as i64;
                    let final_at = (ts / b + 1)
                        .saturating_mul(b)
                        .saturating_add(cfg.window_retention_ms);
                    let key = keys
                        .locs
                        .entry(location)
                        .or_insert_with(|| KeyState::new(lt, b));
                    if final_at <= lt || !key.add_units(k, units, lt) {
                        self.eval.late_labels += 1;
                        late = true;
                    }
                }
                Input::Available {
                    location,
                    available,
                } => {
                    keys.locs
                        .entry(location)
                        .or_insert_with(|| KeyState::new(lt, b))
                        .set_available(lt, available, b);
                }
                Input::Listed {
                    ts,
                    event_id,
                    category,
                } => {
                    let newer = keys
                        .category
                        .as_ref()
                        .is_none_or(|(t, e, _)| (ts, &*event_id) > (*t, &**e));
                    if newer {
                        keys.category = Some((ts, event_id, category));
                    }
                }
            }
        }
        late
    }

    /// The log frontier is now `frontier`: issues at every boundary it passed, scores every
    /// label that became final, and says what changed.
    pub fn advance(&mut self, frontier: Millis) -> Issued {
        let mut out = Issued::default();
        if frontier <= self.frontier {
            return out;
        }
        let cfg = self.cfg();
        let b = cfg.bucket_ms;
        loop {
            // The first boundary is the one after the first input.
            if self.next_k.is_none() {
                self.next_k = self
                    .pending
                    .first_key_value()
                    .map(|((lt, _), _)| (lt / b) as i64 + 1);
            }
            // The next event in log time: a boundary to issue at, or a label becoming final.
            let issue = self
                .next_k
                .map(|k| k as u64 * b)
                .filter(|at| *at <= frontier);
            let score = self.due.first().copied().filter(|at| *at <= frontier);
            match (issue, score) {
                (Some(i), s) if s.is_none_or(|s| i <= s) => {
                    out.late |= self.apply_before(i);
                    self.frontier = self.frontier.max(i);
                    self.issue(i / b, &mut out);
                    self.next_k = Some((i / b) as i64 + 1);
                }
                (_, Some(s)) => {
                    out.late |= self.apply_before(s);
                    self.frontier = self.frontier.max(s);
                    self.due.pop_first();
                    self.score(s, &mut out);
                }
                _ => {
                    out.late |= self.apply_before(frontier);
                    break;
                }
            }
        }
        self.frontier = frontier;
        out
    }

    /// Issues at the boundary of bucket `k`: every key, every model, every horizon.
    fn issue(&mut self, k: u64, out: &mut Issued) {
        let cfg = self.cfg();
        let b = cfg.bucket_ms;
        let k = k as i64;
        let at = k as u64 * b;
        let mut at_risk: Vec<BTreeMap<Name, Vec<AtRisk>>> =
            vec![BTreeMap::new(); cfg.horizons.len()];
        let names = cfg.rows.map(|_| RowNames::new(&cfg));
        let mut stale: BTreeMap<Name, u64> = BTreeMap::new();
        for (sku, keys) in self.skus.iter_mut() {
            let category = keys.category.as_ref().map_or("", |c| &*c.2);
            // Forget keys quiet for `key_retention` buckets with nothing awaiting a label.
            keys.locs.retain(|loc, key| {
                let keep = !key.open.is_empty()
                    || key.last_event / b + cfg.key_retention as u64 > k as u64;
                if !keep {
                    out.forgotten.push((Arc::clone(sku), Arc::clone(loc)));
                }
                keep
            });
            // Histories first: the SKU's other locations move each key's prior.
            let hs: Vec<History> = keys
                .locs
                .values_mut()
                .map(|key| {
                    key.advance(at, b);
                    key.history(k, cfg.lookback, b, cfg.censor_share)
                })
                .collect();
            let issues = {
                let inputs: Vec<(&str, &History, i64)> = keys
                    .locs
                    .iter()
                    .zip(&hs)
                    .map(|((loc, key), h)| (&**loc, h, key.available))
                    .collect();
                forecast_sku(&cfg, sku, category, &inputs)
            };
            for (((loc, key), x), h) in keys.locs.iter_mut().zip(issues).zip(&hs) {
                if key.stale_at(at, b) {
                    *stale.entry(Arc::clone(loc)).or_default() += 1;
                }
                let (arm, segment, scale) = (x.arm, x.segment, x.scale);
                let served_model = cfg.experiment.model_of(arm);
                let every = names.is_some() && cfg.sampled(sku, loc);
                if names.is_some() {
                    let f = features(sku, loc, at, category, key.available, h);
                    self.rows.push((f, 1));
                }
                for (mi, (m, p)) in Model::ALL.into_iter().zip(&x.predictions).enumerate() {
                    for (hi, pr) in p.horizons.iter().enumerate() {
                        let open = super::key::Open {
                            k,
                            horizon: hi as u8,
                            model: mi as u8,
                            segment: segment as u8,
                            mean: pr.mean,
                            q: pr.q.map(|q| q.min(u32::MAX as u64) as u32),
                            stockout: pr.stockout,
                            available: key.available,
                            scale: scale as f32,
                        };
                        if let Some(names) = names.as_ref().filter(|_| every || m == served_model) {
                            let r = names.row(&cfg, sku, loc, &open, arm, None, false);
                            self.rows.push((Change::Forecast(Box::new(r)), 1));
                        }
                        key.open.push(open);
                    }
                    if m == served_model {
                        key.cover = days_of_cover(&p.per_bucket, key.available, cfg.lookback);
                    }
                }
                if let Some(served) = served(&cfg, sku, loc, key, k) {
                    rank(&mut at_risk, sku, loc, &served);
                    out.served.push((Arc::clone(sku), Arc::clone(loc), served));
                }
            }
        }
        self.skus
            .retain(|_, keys| !keys.locs.is_empty() || keys.category.is_some());
        for &h in &cfg.horizons {
            self.due
                .insert((k as u64 + h as u64) * b + cfg.window_retention_ms);
        }
        out.at_risk = Some(ranked(at_risk, cfg.at_risk_keep));
        out.stale = Some(stale);
    }

    /// What the views show as of the latest boundary issued at, rebuilt from the forecasts
    /// awaiting their labels (each waits at least a bucket past its boundary): a restored
    /// forecaster publishes it, so a restart serves what was served.
    pub fn republish(&self) -> Issued {
        let mut out = Issued {
            scored: true, // and the evaluation
            ..Issued::default()
        };
        let Some(k) = self.next_k.map(|n| n - 1).filter(|k| *k >= 0) else {
            return out;
        };
        let cfg = self.cfg();
        let mut at_risk = vec![BTreeMap::new(); cfg.horizons.len()];
        let mut stale: BTreeMap<Name, u64> = BTreeMap::new();
        let at = k as u64 * cfg.bucket_ms;
        for (sku, keys) in &self.skus {
            for (loc, key) in &keys.locs {
                if key.stale_at(at, cfg.bucket_ms) {
                    *stale.entry(Arc::clone(loc)).or_default() += 1;
                }
                if let Some(served) = served(&cfg, sku, loc, key, k) {
                    rank(&mut at_risk, sku, loc, &served);
                    out.served.push((Arc::clone(sku), Arc::clone(loc), served));
                }
            }
        }
        out.at_risk = Some(ranked(at_risk, cfg.at_risk_keep));
        out.stale = Some(stale);
        out
    }

    /// Splits a restored forecaster among `workers` by the owner of each SKU. Inputs waiting for
    /// the frontier go with their SKU; the evaluation (sums over all keys) goes to the first.
    pub fn split(mut self, workers: usize, owner: impl Fn(&Name) -> usize) -> Vec<Forecaster> {
        let mut out: Vec<Forecaster> = (0..workers.max(1))
            .map(|_| Forecaster {
                cfg: self.cfg.clone(),
                bucket_ms: self.bucket_ms,
                horizons: self.horizons.clone(),
                skus: BTreeMap::new(),
                pending: BTreeMap::new(),
                seq: self.seq,
                next_k: self.next_k,
                due: self.due.clone(),
                frontier: self.frontier,
                eval: Evaluation::default(),
                rows: Vec::new(),
            })
            .collect();
        out[0].eval = std::mem::take(&mut self.eval);
        for (sku, keys) in self.skus {
            out[owner(&sku)].skus.insert(sku, keys);
        }
        for (at, (sku, input)) in self.pending {
            out[owner(&sku)].pending.insert(at, (sku, input));
        }
        out
    }

    /// Takes in another worker's split part (disjoint SKUs, the same frontier). Waiting inputs
    /// keep their log-time order; those of different SKUs at one log time commute.
    pub fn merge(&mut self, other: Forecaster) {
        self.next_k = self.next_k.max(other.next_k);
        self.due.extend(other.due);
        self.frontier = self.frontier.max(other.frontier);
        self.eval.merge(&other.eval);
        self.skus.extend(other.skus);
        for ((lt, _), v) in other.pending {
            self.seq += 1;
            self.pending.insert((lt, self.seq), v);
        }
    }

    /// Scores every forecast whose label is final at log time `at`.
    fn score(&mut self, at: Millis, out: &mut Issued) {
        let cfg = self.cfg();
        let b = cfg.bucket_ms;
        let r = cfg.window_retention_ms;
        let n = Model::ALL.len();
        let names = cfg.rows.map(|_| RowNames::new(&cfg));
        for (sku, keys) in self.skus.iter_mut() {
            for (loc, key) in keys.locs.iter_mut() {
                if key.open.is_empty() {
                    continue;
                }
                key.advance(at, b);
                let arm = cfg.experiment.arm_of(sku, loc) as u8;
                let served_model = cfg.experiment.model_of(arm as usize);
                let every = names.is_some() && cfg.sampled(sku, loc);
                let mut losses: BTreeMap<(i64, u8), Vec<Option<f64>>> = BTreeMap::new();
                let open = std::mem::take(&mut key.open);
                for o in open {
                    let h = cfg.horizons[o.horizon as usize] as i64;
                    if (o.k + h) as u64 * b + r > at {
                        key.open.push(o);
                        continue;
                    }
                    out.scored = true;
                    let actual: u64 = (o.k..o.k + h).map(|j| key.units_at(j) as u64).sum();
                    let censored =
                        (o.k..o.k + h).any(|j| key.exposure_at(j, b) >= cfg.censor_share);
                    let ek = (o.model, arm, o.horizon, o.segment);
                    let sums = self.eval.sums.entry(ek).or_default();
                    let kept = every || Model::ALL[o.model as usize] == served_model;
                    if let Some(names) = names.as_ref().filter(|_| kept) {
                        // Appended again with its label: the sinks keep the latest per key.
                        let a = arm as usize;
                        let scored = names.row(&cfg, sku, loc, &o, a, Some(actual), censored);
                        self.rows.push((Change::Forecast(Box::new(scored)), 1));
                    }
                    if censored {
                        sums.censored += 1;
                        continue;
                    }
                    let s = Scored {
                        actual,
                        mean: o.mean,
                        q: o.q,
                        stockout: o.stockout,
                        available: o.available,
                        scale: o.scale as f64,
                        buckets: h as u32,
                    };
                    sums.add(&s);
                    losses
                        .entry((o.k, o.horizon))
                        .or_insert_with(|| vec![None; n])[o.model as usize] = s.sq_scaled();
                }
                for ((_, hi), l) in losses {
                    for a in 0..n {
                        for c in a + 1..n {
                            if let (Some(x), Some(y)) = (l[a], l[c]) {
                                self.eval
                                    .paired
                                    .entry((hi, a as u8, c as u8))
                                    .or_default()
                                    .add(x - y);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The names a row carries, made once per boundary.
struct RowNames {
    models: Vec<Name>,
    arms: Vec<Name>,
    segments: Vec<Name>,
}

impl RowNames {
    fn new(cfg: &ForecastConfig) -> Self {
        RowNames {
            models: Model::ALL.map(|m| Name::from(cfg.model_name(m))).to_vec(),
            arms: cfg
                .experiment
                .arms
                .iter()
                .map(|a| Name::from(&*a.name))
                .collect(),
            segments: Segment::ALL.map(|s| Name::from(s.name())).to_vec(),
        }
    }

    /// The row of open forecast `o` of (`sku`, `loc`), issued or (with `actual`) scored.
    #[allow(clippy::too_many_arguments)]
    fn row(
        &self,
        cfg: &ForecastConfig,
        sku: &Name,
        loc: &Name,
        o: &super::key::Open,
        arm: usize,
        actual: Option<u64>,
        censored: bool,
    ) -> ForecastRow {
        let buckets = cfg.horizons[o.horizon as usize];
        let issued_at = o.k as u64 * cfg.bucket_ms;
        ForecastRow {
            sku: Arc::clone(sku),
            location: Arc::clone(loc),
            model: Arc::clone(&self.models[o.model as usize]),
            arm: self
                .arms
                .get(arm)
                .map_or_else(|| Name::from("A"), Arc::clone),
            segment: Arc::clone(&self.segments[o.segment as usize]),
            issued_at,
            end: issued_at + u64::from(buckets) * cfg.bucket_ms,
            buckets,
            mean: Float(o.mean),
            q: o.q,
            stockout: Float(o.stockout),
            available: o.available,
            scale: Float(f64::from(o.scale)),
            actual,
            censored,
        }
    }
}

/// The features row of (`sku`, `loc`) at boundary `at`.
fn features(
    sku: &Name,
    loc: &Name,
    at: Millis,
    category: &str,
    available: i64,
    h: &History,
) -> Change {
    Change::Features(Box::new(FeatureRow {
        sku: Arc::clone(sku),
        location: Arc::clone(loc),
        issued_at: at,
        category: Name::from(category),
        available,
        age: h.age as u32,
        demand: h.y.clone(),
        out_of_stock: h.exposure.iter().map(|e| Float(*e)).collect(),
        censored: h.censored.clone(),
    }))
}

/// What one key is issued at a boundary.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyIssue {
    /// Its arm.
    pub arm: usize,
    /// Its segment.
    pub segment: Segment,
    /// Its RMSSE scale (0: none).
    pub scale: f64,
    /// Per model of [`Model::ALL`].
    pub predictions: Vec<Prediction>,
}

/// The forecasts of one SKU's keys at a boundary, from each key's (location, history,
/// `available`) as of that boundary: a pure function of the features, which the operator and
/// its oracle test share. A key's prior is its group's, moved by how the SKU sells at its other
/// locations against their groups (`sku_strength` weighs that evidence).
pub fn forecast_sku(
    cfg: &ForecastConfig,
    sku: &str,
    category: &str,
    keys: &[(&str, &History, i64)],
) -> Vec<KeyIssue> {
    // What each key sold against what its group would have, over its usable buckets.
    let evidence: Vec<(f64, f64)> = keys
        .iter()
        .map(|(loc, h, _)| {
            let group = cfg.model.prior(loc, category);
            let (mut seen, mut expected) = (0.0, 0.0);
            for i in 0..h.y.len() {
                if !h.censored[i] {
                    seen += h.y[i] as f64;
                    expected += group.rate * group.weekday[h.season[i]] * (1.0 - h.exposure[i]);
                }
            }
            (seen, expected)
        })
        .collect();
    let (all_seen, all_expected) = evidence
        .iter()
        .fold((0.0, 0.0), |(s, e), (s1, e1)| (s + s1, e + e1));
    keys.iter()
        .zip(evidence)
        .map(|((loc, h, available), (seen, expected))| {
            let group = cfg.model.prior(loc, category);
            let kappa = cfg.model.sku_strength * group.rate;
            let sku_factor = if kappa > 0.0 {
                (all_seen - seen + kappa) / (all_expected - expected + kappa)
            } else {
                1.0
            };
            let prior = KeyPrior { group, sku_factor };
            let segment = if h.age < cfg.lookback {
                Segment::ColdStart
            } else if h.adi() >= 1.32 {
                Segment::Intermittent
            } else {
                Segment::Smooth
            };
            KeyIssue {
                arm: cfg.experiment.arm_of(sku, loc),
                segment,
                scale: rmsse_scale(h),
                predictions: Model::ALL
                    .into_iter()
                    .map(|m| model::predict(m, &cfg.model, h, prior, &cfg.horizons, *available))
                    .collect(),
            }
        })
        .collect()
}

/// The forecast key (`sku`, `loc`) serves as of boundary `k`: its arm's model's forecasts
/// issued there, if it has them.
fn served(cfg: &ForecastConfig, sku: &Name, loc: &Name, key: &KeyState, k: i64) -> Option<Served> {
    let arm = cfg.experiment.arm_of(sku, loc);
    let m = cfg.experiment.model_of(arm);
    let mi = Model::ALL.iter().position(|x| *x == m)? as u8;
    let at = k as u64 * cfg.bucket_ms;
    let mut horizons = Vec::with_capacity(cfg.horizons.len());
    let (mut cold_start, mut available) = (false, key.available);
    for (hi, &h) in cfg.horizons.iter().enumerate() {
        let o = key
            .open
            .iter()
            .find(|o| o.k == k && o.model == mi && o.horizon as usize == hi)?;
        cold_start = o.segment == Segment::ColdStart as u8;
        available = o.available;
        horizons.push(ServedHorizon {
            buckets: h,
            start: at,
            end: at + h as u64 * cfg.bucket_ms,
            mean: o.mean,
            q: o.q.map(u64::from),
            stockout: o.stockout,
        });
    }
    Some(Served {
        model: cfg.model_name(m),
        arm: cfg
            .experiment
            .arms
            .get(arm)
            .map_or_else(|| "A".into(), |a| a.name.clone()),
        issued_at: at,
        cold_start,
        horizons,
        available,
        days_of_cover: key.cover,
    })
}

/// Adds a served forecast to the per-horizon, per-location candidates of the at-risk ranking.
fn rank(at_risk: &mut [BTreeMap<Name, Vec<AtRisk>>], sku: &Name, loc: &Name, served: &Served) {
    for (hi, sh) in served.horizons.iter().enumerate() {
        at_risk[hi]
            .entry(Arc::clone(loc))
            .or_default()
            .push(AtRisk {
                sku: Arc::clone(sku),
                location: Arc::clone(loc),
                stockout: sh.stockout,
                days_of_cover: served.days_of_cover,
                available: served.available,
            });
    }
}

/// The candidates ranked, the first `keep` of each location.
fn ranked(
    mut at_risk: Vec<BTreeMap<Name, Vec<AtRisk>>>,
    keep: usize,
) -> Vec<BTreeMap<Name, Vec<AtRisk>>> {
    for list in at_risk.iter_mut().flat_map(|h| h.values_mut()) {
        list.sort_by(AtRisk::rank);
        list.truncate(keep);
    }
    at_risk
}

/// Whole buckets before the cumulative mean demand exceeds `available` (0 when nothing is
/// available; `None` if it does not within `cap` buckets).
pub fn days_of_cover(per_bucket: &[f64; SEASON], available: i64, cap: usize) -> Option<u32> {
    if available <= 0 {
        return Some(0);
    }
    let mut cum = 0.0;
    for i in 0..cap {
        cum += per_bucket[i % SEASON];
        if cum > available as f64 {
            return Some(i as u32);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400_000;

    fn name(s: &str) -> Name {
        Arc::from(s)
    }

    fn cfg() -> Arc<ForecastConfig> {
        let mut c = ForecastConfig::daily(0);
        c.rows = Some(1.0);
        Arc::new(c)
    }

    #[test]
    fn issues_at_each_boundary_and_scores_when_the_label_is_final() {
        let mut f = Forecaster::new(cfg());
        let (s, l) = (name("S"), name("L"));
        f.available(&s, &l, 1000, 0);
        // 3 units a day for 40 days, each sale at noon of its day.
        for d in 0..40u64 {
            let ts = d * DAY + DAY / 2;
            f.demand(&s, &l, ts, 3, ts);
        }
        let out = f.advance(40 * DAY);
        assert!(out.scored);
        let served = &out.served.last().unwrap().2;
        assert_eq!(served.issued_at, 40 * DAY);
        assert!(!served.cold_start);
        // The pooled posterior: the global prior (1 a day, worth 7 days) and 28 days of 3.
        let day = &served.horizons[0];
        assert!((day.mean - (7.0 + 84.0) / 35.0).abs() < 1e-9, "{day:?}");
        assert!((served.horizons[1].mean - 7.0 * day.mean).abs() < 1e-9);
        assert_eq!(
            served.days_of_cover, None,
            "1000 units last beyond the look-back"
        );
        // Every model scored every final 1-bucket label: boundaries 1..=39 (39 labels each).
        let scored_1: u64 = f
            .eval
            .sums
            .iter()
            .filter(|(k, _)| k.0 == 0 && k.2 == 0)
            .map(|(_, s)| s.n)
            .sum();
        assert_eq!(scored_1, 39);
        let labelled = f
            .rows
            .iter()
            .filter(
                |(c, _)| matches!(c, Change::Forecast(r) if r.actual == Some(3) && r.buckets == 1),
            )
            .count();
        assert_eq!(labelled, 3 * 39);
    }

    /// The rows a forecaster appended: forecasts (issued or scored) per model, and features.
    fn row_counts(rows: &[(Change, i64)]) -> (BTreeMap<String, usize>, usize) {
        let (mut models, mut features) = (BTreeMap::new(), 0);
        for (c, d) in rows {
            assert_eq!(*d, 1, "rows are appended, never retracted");
            match c {
                Change::Forecast(r) => *models.entry(r.model.to_string()).or_default() += 1,
                Change::Features(_) => features += 1,
                other => panic!("not a forecast row: {other:?}"),
            }
        }
        (models, features)
    }

    #[test]
    fn rows_are_the_served_version_plus_a_stable_sample_of_keys_with_every_version() {
        let run = |share: f64, keys: u32| {
            let mut c = ForecastConfig::daily(0);
            c.rows = Some(share);
            let mut f = Forecaster::new(Arc::new(c));
            for i in 0..keys {
                let (s, l) = (name(&format!("S{i}")), name("L"));
                f.available(&s, &l, 10, 0);
                f.demand(&s, &l, DAY / 2, 1, DAY / 2);
            }
            f.advance(3 * DAY); // issued at days 1, 2, 3; day 1's 1-day label final at 2
            row_counts(&f.rows)
        };
        // Served only: the pooled version (everyone's arm), issued 3 times and scored twice
        // (days 1 and 2's 1-day labels); one features row per key and boundary.
        let (models, features) = run(0.0, 1);
        assert_eq!(models.keys().collect::<Vec<_>>(), ["pooled:builtin-1"]);
        assert_eq!(models["pooled:builtin-1"], 3 * 2 + 2);
        assert_eq!(features, 3);
        // Every version of every key.
        let (models, _) = run(1.0, 1);
        assert_eq!(models.len(), 3);
        // A 30% sample of 200 keys: the shadows of about 60 of them.
        let (models, features) = run(0.3, 200);
        assert_eq!(features, 3 * 200);
        let shadow_keys = models["tsb:builtin-1"] / 8;
        assert!((40..=80).contains(&shadow_keys), "{shadow_keys}");
        assert_eq!(models["snaive:builtin-1"], models["tsb:builtin-1"]);
        assert_eq!(models["pooled:builtin-1"], 200 * 8);
    }

    #[test]
    fn an_out_of_stock_bucket_is_censored_not_zero_demand() {
        let mut f = Forecaster::new(cfg());
        let (s, l) = (name("S"), name("L"));
        f.available(&s, &l, 1000, 0);
        for d in 0..30u64 {
            let ts = d * DAY + 1;
            if d < 20 {
                f.demand(&s, &l, ts, 5, ts);
            }
        }
        // Out of stock from day 20 on: no sale can happen.
        f.available(&s, &l, 0, 20 * DAY);
        let out = f.advance(30 * DAY);
        let served = &out.served.last().unwrap().2;
        // Days 2–19 in the window are usable (18 × 5 units); 20–29 are censored, not zeros.
        let mean = served.horizons[0].mean;
        assert!((mean - (7.0 + 90.0) / 25.0).abs() < 1e-9, "{mean}");
        assert_eq!(served.horizons[0].stockout, 1.0, "nothing available");
        assert_eq!(served.days_of_cover, Some(0));
        let censored: u64 = f.eval.sums.values().map(|s| s.censored).sum();
        assert!(censored > 0);
    }

    #[test]
    fn a_new_key_starts_from_its_sku_elsewhere_and_a_forecast_sees_only_the_log_before_it() {
        let mut f = Forecaster::new(cfg());
        let s = name("S");
        // A is stocked from day 0; B only from day 27.
        f.available(&s, &name("A"), 100, 0);
        f.available(&s, &name("B"), 100, 27 * DAY);
        for d in 0..28u64 {
            let ts = d * DAY + 1;
            f.demand(&s, &name("A"), ts, 20, ts);
        }
        // A sale of the next day, read early (a fast partition): not in the boundary's features.
        f.demand(&s, &name("A"), 28 * DAY + 5, 1000, 28 * DAY + 5);
        let out = f.advance(28 * DAY + 1);
        let get = |loc: &str| {
            out.served
                .iter()
                .rfind(|(_, l, _)| &**l == loc)
                .map(|(_, _, s)| s.clone())
                .unwrap()
        };
        let a = get("A");
        // A: 28 days of 20 (not the 1000 of the next day) over a prior worth 7 days at the global
        // rate moved by B's one quiet day: (0 + 14) / (1 + 14).
        let prior = 14.0 / 15.0;
        assert!(
            (a.horizons[0].mean - (prior * 7.0 + 560.0) / 35.0).abs() < 1e-9,
            "{:?}",
            a.horizons[0]
        );
        let b = get("B");
        assert!(
            b.horizons[0].mean > 5.0,
            "B is new; the SKU's 20 a day at A lifts its prior far above the global 1: {:?}",
            b.horizons[0]
        );
    }
}
