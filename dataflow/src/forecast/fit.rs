//! `stockflow forecast fit`: the model file from a replayed log (docs/forecasting.md, section 4).
//!
//! Empirical Bayes by the method of moments, per location × category (and per category, per
//! location and overall, for the fallbacks): the prior's rate is the group's mean demand per
//! key-bucket; its seasonal factors the group's mean per weekday over its mean; its strength
//! `mean / variance` of its keys' rates, the Poisson noise of each key's mean taken out. The
//! smoothing constants and the dispersion keep the file's defaults (not searched yet).
//!
//! Only buckets before `until` are read, so a model is fitted on a period its evaluation does
//! not score.

use super::key::season_of;
use super::model::{GroupPrior, ModelFile, Prior, SEASON};
use std::collections::{BTreeMap, HashMap};
use stockflow_types::event::{Event, EventKind};
use stockflow_types::Millis;

/// What to fit on.
#[derive(Clone, Debug)]
pub struct FitOptions {
    /// A bucket, ms.
    pub bucket_ms: u64,
    /// Only buckets before this one are read.
    pub until_ms: Millis,
    /// The model file's version.
    pub version: String,
}

#[derive(Default)]
struct Acc {
    /// Σ demand, key-buckets, per season.
    y: [f64; SEASON],
    n: [f64; SEASON],
    /// Per key: (Σ demand, buckets).
    keys: Vec<(f64, f64)>,
}

impl Acc {
    fn add(&mut self, days: &BTreeMap<i64, f64>, first: i64, until: i64) {
        let (mut sy, mut sn) = (0.0, 0.0);
        for k in first..until {
            let y = days.get(&k).copied().unwrap_or(0.0);
            let s = season_of(k);
            self.y[s] += y;
            self.n[s] += 1.0;
            sy += y;
            sn += 1.0;
        }
        if sn > 0.0 {
            self.keys.push((sy, sn));
        }
    }

    fn prior(&self) -> Option<Prior> {
        let (y, n): (f64, f64) = (self.y.iter().sum(), self.n.iter().sum());
        if n == 0.0 || y == 0.0 {
            return None;
        }
        let rate = y / n;
        // Seasonal factors, shrunk toward 1 by 7 key-buckets' worth, averaging 1.
        let mut weekday: [f64; SEASON] =
            std::array::from_fn(|s| (self.y[s] + 7.0 * rate) / ((self.n[s] + 7.0) * rate));
        let mean = weekday.iter().sum::<f64>() / SEASON as f64;
        weekday.iter_mut().for_each(|w| *w /= mean);
        // Between-key variance of rates, less each key's Poisson noise (rate / buckets).
        let k = self.keys.len() as f64;
        let strength = if k >= 2.0 {
            let var = self
                .keys
                .iter()
                .map(|(y, n)| (y / n - rate).powi(2))
                .sum::<f64>()
                / (k - 1.0);
            let noise = self.keys.iter().map(|(_, n)| rate / n).sum::<f64>() / k;
            let v = var - noise;
            Some(if v > 0.0 {
                (rate / v).clamp(0.1, 1000.0)
            } else {
                1000.0
            })
        } else {
            None
        };
        Some(Prior {
            rate,
            weekday,
            strength,
        })
    }
}

/// Fits a model file on `events` (any order).
pub fn fit(events: impl IntoIterator<Item = Event>, o: &FitOptions) -> ModelFile {
    let b = o.bucket_ms;
    let until = (o.until_ms / b) as i64;
    let mut category: HashMap<String, (Millis, String, String)> = HashMap::new();
    let mut reserved: HashMap<String, (String, String, i64)> = HashMap::new();
    // (sku, location) → (first bucket, demand per bucket)
    let mut keys: HashMap<(String, String), (i64, BTreeMap<i64, f64>)> = HashMap::new();
    // A key's history starts at the first bucket it was there for in full (as the pipeline's
    // exposure has it), or at its first sale if earlier.
    let mut add = |sku: &str, loc: &str, ts: Millis, units: f64| {
        let k = (ts / b) as i64;
        let whole = ts.div_ceil(b) as i64;
        let e = keys
            .entry((sku.to_string(), loc.to_string()))
            .or_insert_with(|| (whole, BTreeMap::new()));
        e.0 = e.0.min(if units != 0.0 { k } else { whole });
        if units != 0.0 {
            *e.1.entry(k).or_default() += units;
        }
    };
    for ev in events {
        match &ev.kind {
            EventKind::Listed { category: c } => {
                let newer = category
                    .get(&ev.sku)
                    .is_none_or(|(t, id, _)| (ev.ts, &ev.event_id) > (*t, id));
                if newer {
                    category.insert(ev.sku.clone(), (ev.ts, ev.event_id.clone(), c.clone()));
                }
            }
            EventKind::Sold { location, qty } => add(&ev.sku, location, ev.ts, *qty as f64),
            EventKind::Received { location, .. }
            | EventKind::Adjusted { location, .. }
            | EventKind::Counted { location, .. } => add(&ev.sku, location, ev.ts, 0.0),
            EventKind::Reserved {
                reservation_id,
                location,
                qty,
                ..
            } => {
                add(&ev.sku, location, ev.ts, 0.0);
                reserved.insert(
                    reservation_id.clone(),
                    (ev.sku.clone(), location.clone(), *qty),
                );
            }
            EventKind::Fulfilled { reservation_id } => {
                if let Some((sku, loc, qty)) = reserved.get(reservation_id) {
                    add(sku, loc, ev.ts, *qty as f64);
                }
            }
            EventKind::Released { .. } => {}
        }
    }
    let mut groups: BTreeMap<(String, String), Acc> = BTreeMap::new();
    let mut all = Acc::default();
    for ((sku, loc), (first, days)) in &keys {
        if *first >= until {
            continue;
        }
        let cat = category.get(sku).map_or("", |c| c.2.as_str());
        for g in [
            (loc.clone(), cat.to_string()),
            ("*".to_string(), cat.to_string()),
            (loc.clone(), "*".to_string()),
        ] {
            groups.entry(g).or_default().add(days, *first, until);
        }
        all.add(days, *first, until);
    }
    let mut file = ModelFile {
        version: o.version.clone(),
        ..ModelFile::default()
    };
    if let Some(p) = all.prior() {
        file.global = p;
    }
    file.groups = groups
        .into_iter()
        .filter_map(|((location, category), acc)| {
            acc.prior().map(|prior| GroupPrior {
                location,
                category,
                prior,
            })
        })
        .collect();
    file
}

#[cfg(test)]
mod tests {
    use super::*;
    use stockflow_types::event::decode;

    #[test]
    fn a_group_prior_is_its_mean_rate_and_profile() {
        let day = 86_400_000u64;
        let mut evs =
            vec![
                decode(br#"{"event_id":"l","type":"listed","sku":"A","ts":0,"category":"C"}"#)
                    .unwrap(),
            ];
        // A sells 2 a day at L for 14 days, 4 on Mondays (days 4 and 11 since 1970-01-01 were Mondays).
        for d in 0..14u64 {
            let qty = if d % 7 == 4 { 4 } else { 2 };
            let ts = d * day + 5;
            evs.push(decode(format!(r#"{{"event_id":"s{d}","type":"sold","sku":"A","ts":{ts},"location":"L","qty":{qty}}}"#).as_bytes()).unwrap());
        }
        // A later sale is past `until`: not read.
        evs.push(decode(format!(r#"{{"event_id":"late","type":"sold","sku":"A","ts":{},"location":"L","qty":99}}"#, 20 * day).as_bytes()).unwrap());
        let f = fit(
            evs,
            &FitOptions {
                bucket_ms: day,
                until_ms: 14 * day,
                version: "t".into(),
            },
        );
        let p = f.prior("L", "C");
        assert!((p.rate - 32.0 / 14.0).abs() < 1e-9, "{}", p.rate);
        assert!(
            p.weekday[0] > 1.1 && p.weekday[1] < 1.0,
            "Mondays sell more: {:?}",
            p.weekday
        );
        assert!(f.validate().is_ok());
        assert_eq!(f.prior("elsewhere", "other"), &f.global);
    }
}
