//! The forecaster against a from-scratch recomputation (docs/forecasting.md, "Exactness"): on
//! random inputs, random advances of the log frontier and restarts that re-split the state
//! among 1 or 2 workers, every issued forecast is what the model functions give on features
//! recomputed from the whole input list as of its boundary (demand, stock-out exposure,
//! `available`, category, age, the SKU's other locations), every label and censoring is
//! recomputed from the inputs, and the evaluation equals its sums rebuilt from those.

use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use stockflow_dataflow::forecast::eval::{Evaluation, Scored, Segment};
use stockflow_dataflow::forecast::key::season_of;
use stockflow_dataflow::forecast::model::{History, Model};
use stockflow_dataflow::forecast::{
    forecast_sku, Arm, Experiment, FeatureRow, ForecastConfig, ForecastRow, Forecaster,
};
use stockflow_types::rows::Change;
use stockflow_types::{Millis, Name};

const B: u64 = 1_000; // bucket
const R: u64 = 1_000; // window retention
const L: usize = 14; // look-back

fn cfg() -> Arc<ForecastConfig> {
    let mut c = ForecastConfig::daily(R);
    c.bucket_ms = B;
    c.horizons = vec![1, 3];
    c.lookback = L;
    c.key_retention = 1_000_000; // forgetting has its own test
    c.rows = Some(1.0); // every version's rows
    c.experiment = Experiment {
        salt: "oracle".into(),
        arms: vec![
            Arm {
                name: "A".into(),
                model: Model::Pooled,
                share: 0.5,
            },
            Arm {
                name: "B".into(),
                model: Model::Tsb,
                share: 0.5,
            },
        ],
    };
    Arc::new(c)
}

#[derive(Clone, Debug)]
enum Step {
    /// Log time moves on by `gap`, then an input of SKU `s`, location `l`.
    Demand {
        gap: u64,
        s: u8,
        l: u8,
        offset: i64,
        units: i64,
    },
    Available {
        gap: u64,
        s: u8,
        l: u8,
        available: i64,
    },
    Listed {
        gap: u64,
        s: u8,
        cat: u8,
        ts: u64,
        id: u8,
    },
    /// The frontier moves to the current log time.
    Advance,
    /// A checkpoint and a restart on `workers` workers.
    Restart { workers: usize },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0..700u64, 0..3u8, 0..3u8, -2_000..1_000i64, prop_oneof![4 => 0..6i64, 1 => Just(-1i64)])
            .prop_map(|(gap, s, l, offset, units)| Step::Demand { gap, s, l, offset, units }),
        3 => (0..700u64, 0..3u8, 0..3u8, -2..12i64)
            .prop_map(|(gap, s, l, available)| Step::Available { gap, s, l, available }),
        1 => (0..300u64, 0..3u8, 0..3u8, 0..40_000u64, 0..3u8)
            .prop_map(|(gap, s, cat, ts, id)| Step::Listed { gap, s, cat, ts, id }),
        3 => Just(Step::Advance),
        1 => (1..=2usize).prop_map(|workers| Step::Restart { workers }),
    ]
}

/// An input as the reference keeps it: in arrival order, with its log time.
#[derive(Clone, Debug)]
enum Input {
    Demand {
        sku: Name,
        loc: Name,
        ts: Millis,
        units: i64,
    },
    Available {
        sku: Name,
        loc: Name,
        available: i64,
    },
    Listed {
        sku: Name,
        ts: Millis,
        id: String,
        category: Name,
    },
}

fn owner(sku: &Name, workers: usize) -> usize {
    sku.bytes().last().unwrap_or(0) as usize % workers
}

/// Checkpoint and restart: every worker's state serialized, read back, split by the new
/// owners and merged, as `ledger::snapshot::route` does.
fn restart(fleet: Vec<Forecaster>, workers: usize) -> Vec<Forecaster> {
    let mut out: Vec<Option<Forecaster>> = (0..workers).map(|_| None).collect();
    for f in fleet {
        let bytes = bincode::serialize(&f).unwrap();
        let back: Forecaster = bincode::deserialize(&bytes).unwrap();
        for (w, part) in back
            .with_config(cfg())
            .split(workers, |s| owner(s, workers))
            .into_iter()
            .enumerate()
        {
            match &mut out[w] {
                Some(mine) => mine.merge(part),
                None => out[w] = Some(part),
            }
        }
    }
    out.into_iter()
        .map(|f| f.expect("every worker gets a part"))
        .collect()
}

/// The reference: everything recomputed from the input list.
struct Reference<'a> {
    inputs: &'a [(Millis, Input)],
}

impl Reference<'_> {
    /// Inputs applied before boundary `at` (log time below it).
    fn before(&self, at: Millis) -> impl Iterator<Item = &Input> {
        self.inputs
            .iter()
            .filter(move |(lt, _)| *lt < at)
            .map(|(_, i)| i)
    }

    fn first_lt(&self, sku: &str, loc: &str) -> Option<Millis> {
        self.inputs
            .iter()
            .filter(|(_, i)| match i {
                Input::Demand { sku: s, loc: l, .. } | Input::Available { sku: s, loc: l, .. } => {
                    &**s == sku && &**l == loc
                }
                Input::Listed { .. } => false,
            })
            .map(|(lt, _)| *lt)
            .min()
    }

    /// The keys of `sku` seen before `at`, by location name.
    fn locs(&self, sku: &str, at: Millis) -> BTreeSet<Name> {
        self.before(at)
            .filter_map(|i| match i {
                Input::Demand { sku: s, loc, .. } | Input::Available { sku: s, loc, .. }
                    if &**s == sku =>
                {
                    Some(Arc::clone(loc))
                }
                _ => None,
            })
            .collect()
    }

    /// The category of the `listed` with the greatest (ts, event id); the first of equals.
    fn category(&self, sku: &str, at: Millis) -> String {
        let mut best: Option<(Millis, &str, &str)> = None;
        for i in self.before(at) {
            if let Input::Listed {
                sku: s,
                ts,
                id,
                category,
            } = i
            {
                if &**s == sku && best.is_none_or(|(t, e, _)| (*ts, id.as_str()) > (t, e)) {
                    best = Some((*ts, id, category));
                }
            }
        }
        best.map(|b| b.2.to_string()).unwrap_or_default()
    }

    /// `available` of the key from log time `t` on (the last value set at or before it).
    fn available_at(&self, sku: &str, loc: &str, t: Millis, strictly_before: bool) -> i64 {
        let mut a = 0;
        for (lt, i) in self.inputs {
            let in_time = if strictly_before { *lt < t } else { *lt <= t };
            if let Input::Available {
                sku: s,
                loc: l,
                available,
            } = i
            {
                if in_time && &**s == sku && &**l == loc {
                    a = *available;
                }
            }
        }
        a
    }

    /// Milliseconds of bucket `j` the key was out of stock (or not yet seen).
    fn out_ms(&self, sku: &str, loc: &str, j: i64) -> u64 {
        let first = self.first_lt(sku, loc).expect("seen");
        let (start, end) = (j as u64 * B, (j as u64 + 1) * B);
        // `available` is a step function changing at the inputs' log times.
        let mut cuts: Vec<Millis> = vec![start, end];
        for (lt, i) in self.inputs {
            if let Input::Available { sku: s, loc: l, .. } = i {
                if &**s == sku && &**l == loc && *lt > start && *lt < end {
                    cuts.push(*lt);
                }
            }
        }
        if first > start && first < end {
            cuts.push(first);
        }
        cuts.sort_unstable();
        cuts.dedup();
        cuts.windows(2)
            .filter(|w| w[0] < first || self.available_at(sku, loc, w[0], false) <= 0)
            .map(|w| w[1] - w[0])
            .sum()
    }

    /// Units of bucket `j` counted by log time `at` (late ones never).
    fn units(&self, sku: &str, loc: &str, j: i64, at: Millis) -> u32 {
        let mut u = 0i64;
        for (lt, i) in self.inputs {
            if let Input::Demand {
                sku: s,
                loc: l,
                ts,
                units,
            } = i
            {
                let final_at = (ts / B + 1) * B + R;
                if *lt < at && *lt < final_at && &**s == sku && &**l == loc && (ts / B) as i64 == j
                {
                    u += units;
                }
            }
        }
        u.max(0) as u32
    }

    fn history(&self, sku: &str, loc: &str, k: i64) -> History {
        let at = k as u64 * B;
        let first = (self.first_lt(sku, loc).unwrap() / B) as i64;
        let share = cfg().censor_share;
        let mut h = History {
            y: vec![],
            exposure: vec![],
            censored: vec![],
            season: vec![],
            next_season: season_of(k),
            age: (k - first).clamp(0, L as i64) as usize,
        };
        for j in k - L as i64..k {
            let e = if j < first {
                1.0
            } else {
                (self.out_ms(sku, loc, j) as f64 / B as f64).min(1.0)
            };
            h.y.push(if j < 0 {
                0
            } else {
                self.units(sku, loc, j, at)
            });
            h.censored.push(j < first || e >= share);
            h.exposure.push(if j < first { 1.0 } else { e.min(share) });
            h.season.push(season_of(j));
        }
        h
    }

    fn late_labels(&self) -> u64 {
        self.inputs
            .iter()
            .filter(|(lt, i)| matches!(i, Input::Demand { ts, .. } if *lt >= (ts / B + 1) * B + R))
            .count() as u64
    }
}

type RowKey = (Name, Name, u8, Millis, u32);

/// The forecaster's row changes since the last take: the rows issued and scored (the
/// insertions), and the features.
fn take_rows(f: &mut Forecaster, rows: &mut Vec<ForecastRow>, features: &mut Vec<FeatureRow>) {
    for (c, d) in f.rows.drain(..) {
        match c {
            Change::Forecast(r) if d > 0 => rows.push(*r),
            Change::Features(r) if d > 0 => features.push(*r),
            _ => {}
        }
    }
}

fn model_index(cfg: &ForecastConfig, r: &ForecastRow) -> u8 {
    Model::ALL
        .iter()
        .position(|m| cfg.model_name(*m) == *r.model)
        .expect("a known model") as u8
}

fn arm_index(cfg: &ForecastConfig, r: &ForecastRow) -> u8 {
    cfg.experiment
        .arms
        .iter()
        .position(|a| *a.name == *r.arm)
        .expect("a known arm") as u8
}

fn run(steps: Vec<Step>, workers: usize) -> Result<(), TestCaseError> {
    let cfg = cfg();
    let mut fleet: Vec<Forecaster> = (0..workers)
        .map(|_| Forecaster::new(Arc::clone(&cfg)))
        .collect();
    let mut inputs: Vec<(Millis, Input)> = Vec::new();
    let mut rows: Vec<ForecastRow> = Vec::new();
    let mut features: Vec<FeatureRow> = Vec::new();
    let mut lt: Millis = 5_000;
    let name = |p: &str, i: u8| -> Name { Arc::from(format!("{p}{i}")) };
    for st in steps {
        match st {
            Step::Demand {
                gap,
                s,
                l,
                offset,
                units,
            } => {
                lt += gap;
                let (sku, loc) = (name("s", s), name("l", l));
                let ts = (lt as i64 + offset) as u64;
                let w = owner(&sku, fleet.len());
                fleet[w].demand(&sku, &loc, ts, units, lt);
                inputs.push((
                    lt,
                    Input::Demand {
                        sku,
                        loc,
                        ts,
                        units,
                    },
                ));
            }
            Step::Available {
                gap,
                s,
                l,
                available,
            } => {
                lt += gap;
                let (sku, loc) = (name("s", s), name("l", l));
                let w = owner(&sku, fleet.len());
                fleet[w].available(&sku, &loc, available, lt);
                inputs.push((
                    lt,
                    Input::Available {
                        sku,
                        loc,
                        available,
                    },
                ));
            }
            Step::Listed {
                gap,
                s,
                cat,
                ts,
                id,
            } => {
                lt += gap;
                let sku = name("s", s);
                let (id, category) = (format!("e{id}"), name("c", cat));
                let w = owner(&sku, fleet.len());
                fleet[w].listed(&sku, ts, &id, &category, lt);
                inputs.push((
                    lt,
                    Input::Listed {
                        sku,
                        ts,
                        id,
                        category,
                    },
                ));
            }
            Step::Advance => {
                for f in &mut fleet {
                    f.advance(lt);
                    take_rows(f, &mut rows, &mut features);
                }
            }
            Step::Restart { workers } => fleet = restart(fleet, workers),
        }
    }
    // Far enough that every label is final.
    let end = lt + (2 + 3) * B + R;
    for f in &mut fleet {
        f.advance(end);
        take_rows(f, &mut rows, &mut features);
    }
    let reference = Reference { inputs: &inputs };

    // Every issued forecast, from features recomputed as of its boundary.
    let issued: BTreeMap<RowKey, &ForecastRow> = rows
        .iter()
        .filter(|r| r.actual.is_none())
        .map(|r| {
            (
                (
                    r.sku.clone(),
                    r.location.clone(),
                    model_index(&cfg, r),
                    r.issued_at,
                    r.buckets,
                ),
                r,
            )
        })
        .collect();
    prop_assert_eq!(
        issued.len(),
        rows.iter().filter(|r| r.actual.is_none()).count(),
        "issued twice"
    );
    let first_k = inputs.iter().map(|(lt, _)| lt / B + 1).min();
    let mut expected_issued = 0;
    let mut expected_features = 0;
    let mut expected_eval = Evaluation::default();
    let mut scales: BTreeMap<(Name, Name, Millis), (f64, Segment)> = BTreeMap::new();
    if let Some(first_k) = first_k {
        for k in first_k..=end / B {
            let at = k * B;
            for s in 0..3u8 {
                let sku = name("s", s);
                let locs = reference.locs(&sku, at);
                if locs.is_empty() {
                    continue;
                }
                let hs: Vec<History> = locs
                    .iter()
                    .map(|l| reference.history(&sku, l, k as i64))
                    .collect();
                let avail: Vec<i64> = locs
                    .iter()
                    .map(|l| reference.available_at(&sku, l, at, true))
                    .collect();
                let keys: Vec<(&str, &History, i64)> = locs
                    .iter()
                    .zip(&hs)
                    .zip(&avail)
                    .map(|((l, h), a)| (&**l, h, *a))
                    .collect();
                let category = reference.category(&sku, at);
                let issues = forecast_sku(&cfg, &sku, &category, &keys);
                for (((loc, x), a), h) in locs.iter().zip(issues).zip(&avail).zip(&hs) {
                    // The features row the forecasts were issued from.
                    let Some(f) = features
                        .iter()
                        .find(|f| f.sku == sku && f.location == *loc && f.issued_at == at)
                    else {
                        return Err(TestCaseError::fail(format!(
                            "no features: {sku} {loc} {at}"
                        )));
                    };
                    prop_assert_eq!(&f.demand, &h.y);
                    prop_assert_eq!(
                        f.out_of_stock.iter().map(|e| e.0).collect::<Vec<_>>(),
                        h.exposure.clone()
                    );
                    prop_assert_eq!(&f.censored, &h.censored);
                    prop_assert_eq!(f.age as usize, h.age);
                    prop_assert_eq!(f.available, *a);
                    prop_assert_eq!(&*f.category, &*category);
                    expected_features += 1;
                    scales.insert((sku.clone(), loc.clone(), at), (x.scale, x.segment));
                    for (mi, p) in x.predictions.iter().enumerate() {
                        for (hi, pr) in p.horizons.iter().enumerate() {
                            let h = cfg.horizons[hi];
                            let key = (sku.clone(), loc.clone(), mi as u8, at, h);
                            let Some(r) = issued.get(&key) else {
                                return Err(TestCaseError::fail(format!("not issued: {key:?}")));
                            };
                            expected_issued += 1;
                            prop_assert_eq!(r.mean.0, pr.mean, "mean of {:?}", key);
                            prop_assert_eq!(r.q, pr.q.map(|q| q.min(u32::MAX as u64) as u32));
                            prop_assert_eq!(r.stockout.0, pr.stockout, "stock-out of {:?}", key);
                            prop_assert_eq!(r.available, *a);
                            prop_assert_eq!(arm_index(&cfg, r), x.arm as u8);
                            prop_assert_eq!(&*r.segment, x.segment.name());
                            prop_assert_eq!(r.scale.0, x.scale as f32 as f64);
                            prop_assert_eq!(r.end, at + u64::from(h) * B);
                        }
                    }
                }
            }
        }
    }
    prop_assert_eq!(
        issued.len(),
        expected_issued,
        "issued where the reference does not"
    );
    prop_assert_eq!(
        features.len(),
        expected_features,
        "features where nothing was issued"
    );

    // Every label, censoring and the evaluation, in the order the forecaster scored them.
    let scored: Vec<&ForecastRow> = rows.iter().filter(|r| r.actual.is_some()).collect();
    let due = issued
        .values()
        .filter(|r| r.issued_at + r.buckets as u64 * B + R <= end)
        .count();
    prop_assert_eq!(
        scored.len(),
        due,
        "every forecast scored once its label is final"
    );
    let mut losses: BTreeMap<(Name, Name, Millis, u32), BTreeMap<u8, f64>> = BTreeMap::new();
    for r in &scored {
        let k = (r.issued_at / B) as i64;
        let h = r.buckets as i64;
        let final_at = (k + h) as u64 * B + R;
        let actual: u64 = (k..k + h)
            .map(|j| reference.units(&r.sku, &r.location, j, final_at) as u64)
            .sum();
        let censored = (k..k + h).any(|j| {
            reference.out_ms(&r.sku, &r.location, j) as f64 / B as f64 >= cfg.censor_share
        });
        prop_assert_eq!(r.actual, Some(actual), "label of {:?}", r);
        prop_assert_eq!(r.censored, censored, "censoring of {:?}", r);
        let (scale, segment) = scales[&(r.sku.clone(), r.location.clone(), r.issued_at)];
        let hi = cfg.horizons.iter().position(|x| *x == r.buckets).unwrap() as u8;
        let sums = expected_eval
            .sums
            .entry((model_index(&cfg, r), arm_index(&cfg, r), hi, segment as u8))
            .or_default();
        if censored {
            sums.censored += 1;
            continue;
        }
        let s = Scored {
            actual,
            mean: r.mean.0,
            q: r.q,
            stockout: r.stockout.0,
            available: r.available,
            scale: scale as f32 as f64,
            buckets: r.buckets,
        };
        sums.add(&s);
        if let Some(l) = s.sq_scaled() {
            losses
                .entry((r.sku.clone(), r.location.clone(), r.issued_at, r.buckets))
                .or_default()
                .insert(model_index(&cfg, r), l);
        }
    }
    for ((.., buckets), l) in &losses {
        let hi = cfg.horizons.iter().position(|x| x == buckets).unwrap() as u8;
        for a in 0..Model::ALL.len() as u8 {
            for b in a + 1..Model::ALL.len() as u8 {
                if let (Some(x), Some(y)) = (l.get(&a), l.get(&b)) {
                    expected_eval
                        .paired
                        .entry((hi, a, b))
                        .or_default()
                        .add(x - y);
                }
            }
        }
    }
    expected_eval.late_labels = reference.late_labels();
    let mut eval = Evaluation::default();
    for f in &fleet {
        eval.merge(&f.eval);
    }
    prop_assert_eq!(eval.late_labels, expected_eval.late_labels);
    prop_assert_eq!(
        eval.sums.keys().collect::<Vec<_>>(),
        expected_eval.sums.keys().collect::<Vec<_>>()
    );
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * (1.0 + a.abs().max(b.abs()));
    for (k, e) in &expected_eval.sums {
        let g = &eval.sums[k];
        prop_assert_eq!(
            (g.n, g.n_scaled, g.hits, g.stockouts, g.censored),
            (e.n, e.n_scaled, e.hits, e.stockouts, e.censored),
            "{:?}",
            k
        );
        for (x, y) in [
            (g.sq_scaled, e.sq_scaled),
            (g.abs_err, e.abs_err),
            (g.err, e.err),
            (g.actual, e.actual),
            (g.brier, e.brier),
        ]
        .into_iter()
        .chain(g.pinball.into_iter().zip(e.pinball))
        {
            prop_assert!(close(x, y), "{:?}: {} against {}", k, x, y);
        }
    }
    prop_assert_eq!(
        eval.paired.keys().collect::<Vec<_>>(),
        expected_eval.paired.keys().collect::<Vec<_>>()
    );
    for (k, e) in &expected_eval.paired {
        let g = &eval.paired[k];
        prop_assert_eq!(g.n, e.n);
        prop_assert!(close(g.sum, e.sum) && close(g.sum_sq, e.sum_sq), "{:?}", k);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn forecasts_labels_and_evaluation_match_a_recomputation_from_scratch(
        steps in prop::collection::vec(step(), 1..120),
        workers in 1..=2usize,
    ) {
        run(steps, workers)?;
    }
}

/// A restart republishes what was served: the same forecasts and at-risk lists as before it.
#[test]
fn a_restored_forecaster_serves_what_was_served() {
    let mut f = Forecaster::new(cfg());
    let (s, l) = (Arc::from("s0"), Arc::from("l0"));
    f.available(&s, &l, 5, 5_000);
    for i in 0..20u64 {
        let lt = 5_000 + i * 400;
        f.demand(&s, &l, lt, 1, lt);
    }
    let issued = f.advance(14_500);
    let before = issued.served.last().cloned().unwrap();
    let back: Forecaster = bincode::deserialize(&bincode::serialize(&f).unwrap()).unwrap();
    let again = back.with_config(cfg()).republish();
    assert_eq!(again.served.last(), Some(&before));
    assert_eq!(again.at_risk, issued.at_risk);
}
