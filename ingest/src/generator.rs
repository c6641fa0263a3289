//! The seeded workload generator: N SKUs with Zipf-skewed popularity, M locations, the full
//! event mix of the contract (receipts, adjustments, counts, sales, reservations and their
//! releases and fulfilments), some repeats and some malformed records on purpose.
//!
//! Each timely worker runs its own generator (seeded by the seed and the worker index), so the
//! workload scales with workers without a shared bottleneck. Business time is the clock's now,
//! and so is log time: the generator is not a log that can be read again (no checkpoints).

use crate::{Polled, Position, RawRecord, Source};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};
use std::collections::VecDeque;
use std::sync::Arc;
use stockflow_types::config::GeneratorConfig;
use stockflow_types::event::{encode, Event, EventKind};
use stockflow_types::Millis;

/// The name of the SKU of popularity rank `rank` (1 = most popular).
pub fn sku_name(rank: u64) -> String {
    format!("sku-{rank:05}")
}

/// The name of location `n` (1-based).
pub fn location_name(n: u64) -> String {
    format!("loc-{n:02}")
}

/// The id of the `n`-th reservation (1-based) made by generator `worker`.
pub fn reservation_name(worker: usize, n: u64) -> String {
    format!("res-{worker}-{n}")
}

/// A generator for one worker.
pub struct Generator {
    cfg: GeneratorConfig,
    worker: usize,
    rng: SmallRng,
    zipf: Option<Zipf<f64>>,
    clock: Arc<dyn Fn() -> u64 + Send + Sync>,
    open: VecDeque<(String, String)>,
    made: u64,
    reservations: u64,
    limit: u64,
    rate: u64,
    started_ms: u64,
    last: Option<(Vec<u8>, Vec<u8>)>,
    /// The clock when the latest record was made (log time is monotonic).
    log_time: Millis,
}

impl Generator {
    /// A generator for `worker` of `peers`; `clock` gives epoch ms (business time and pacing).
    pub fn new(
        cfg: &GeneratorConfig,
        worker: usize,
        peers: usize,
        clock: Arc<dyn Fn() -> u64 + Send + Sync>,
    ) -> Self {
        let peers_u = peers.max(1) as u64;
        let share = |total: u64| total / peers_u + u64::from((worker as u64) < total % peers_u);
        let zipf = (cfg.zipf > 0.0)
            .then(|| Zipf::new(cfg.skus as f64, cfg.zipf).expect("validated zipf parameters"));
        let started_ms = clock();
        Generator {
            cfg: cfg.clone(),
            worker,
            rng: SmallRng::seed_from_u64(
                cfg.seed ^ (worker as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            ),
            zipf,
            clock,
            open: VecDeque::new(),
            made: 0,
            reservations: 0,
            limit: if cfg.limit == 0 {
                u64::MAX
            } else {
                share(cfg.limit)
            },
            rate: share(cfg.rate),
            started_ms,
            last: None,
            log_time: started_ms,
        }
    }

    fn sku(&mut self) -> String {
        let rank = match &self.zipf {
            Some(z) => (z.sample(&mut self.rng) as u64).clamp(1, self.cfg.skus),
            None => self.rng.random_range(1..=self.cfg.skus),
        };
        sku_name(rank)
    }

    /// The next valid event (no repeats, nothing malformed): the engine benchmark's input.
    pub fn next_event(&mut self) -> Event {
        let now = (self.clock)();
        self.made += 1;
        let event_id = format!("g{}-{}", self.worker, self.made);
        let roll = self.rng.random_range(0..100u32);
        let (sku, kind) = match roll {
            0..14 => (
                self.sku(),
                EventKind::Received {
                    location: self.location(),
                    qty: self.rng.random_range(5..16),
                },
            ),
            14..17 => {
                let q = self.rng.random_range(1..4);
                (
                    self.sku(),
                    EventKind::Adjusted {
                        location: self.location(),
                        qty: if self.rng.random_bool(0.7) { -q } else { q },
                    },
                )
            }
            17..18 => (
                self.sku(),
                EventKind::Counted {
                    location: self.location(),
                    qty: self.rng.random_range(50..200),
                },
            ),
            18..48 => (
                self.sku(),
                EventKind::Sold {
                    location: self.location(),
                    qty: self.rng.random_range(1..4),
                },
            ),
            48..70 => self.end_or_reserve(now, roll),
            _ => self.reserve(now),
        };
        Event {
            event_id,
            sku,
            ts: now,
            kind,
        }
    }

    fn location(&mut self) -> String {
        location_name(self.rng.random_range(1..=self.cfg.locations))
    }

    fn reserve(&mut self, now: u64) -> (String, EventKind) {
        self.reservations += 1;
        let id = reservation_name(self.worker, self.reservations);
        let sku = if self.cfg.flash_sale > 0.0 && self.rng.random_bool(self.cfg.flash_sale) {
            sku_name(1)
        } else {
            self.sku()
        };
        if self.open.len() as u64 >= self.cfg.open_holds.max(1) {
            self.open.pop_front(); // left to expire
        }
        self.open.push_back((id.clone(), sku.clone()));
        let kind = EventKind::Reserved {
            reservation_id: id,
            location: self.location(),
            qty: self.rng.random_range(1..4),
            expires_at: now + self.cfg.hold.as_millis() as u64,
        };
        (sku, kind)
    }

    /// Ends an open reservation: 22% of events (fulfilled 14, released 8), or reserves.
    fn end_or_reserve(&mut self, now: u64, roll: u32) -> (String, EventKind) {
        // Pick among the older half so that holds live a while before they end.
        let n = self.open.len();
        if n == 0 {
            return self.reserve(now);
        }
        let i = self.rng.random_range(0..n.div_ceil(2));
        let (id, sku) = self.open.swap_remove_back(i).expect("index in range");
        let kind = if roll < 62 {
            EventKind::Fulfilled { reservation_id: id }
        } else {
            EventKind::Released { reservation_id: id }
        };
        (sku, kind)
    }

    /// The next record as a producer would send it: JSON, sometimes repeated or malformed.
    pub fn next_record(&mut self) -> RawRecord {
        let mut rec = self.make_record();
        self.log_time = self.log_time.max((self.clock)());
        rec.log_time = self.log_time;
        rec
    }

    fn make_record(&mut self) -> RawRecord {
        let offset = self.made as i64;
        let position = Position::new("generator", self.worker as i32, offset);
        if let Some((key, value)) = self.last.take() {
            if self.rng.random_bool(self.cfg.duplicate_ratio) {
                self.made += 1;
                return RawRecord::new(Some(key), value, position);
            }
        }
        if self.rng.random_bool(self.cfg.bad_ratio) {
            self.made += 1;
            let bad: &[u8] = match self.rng.random_range(0..4) {
                0 => b"{\"event_id\": \"broken",
                1 => br#"{"event_id":"bad-1","type":"sold","sku":"sku-00001","ts":1,"location":"loc-01"}"#,
                2 => br#"{"event_id":"bad-2","type":"received","sku":"sku-00001","ts":1,"location":"loc-01","qty":"ten"}"#,
                _ => br#"{"event_id":"bad-3","type":"stolen","sku":"sku-00001","ts":1}"#,
            };
            return RawRecord::new(None, bad.to_vec(), position);
        }
        let ev = self.next_event();
        let value = encode(&ev).into_bytes();
        let key = ev.sku.into_bytes();
        self.last = Some((key.clone(), value.clone()));
        RawRecord::new(Some(key), value, position)
    }
}

impl Source for Generator {
    fn poll(&mut self, _t: Millis, max: usize, out: &mut Vec<RawRecord>) -> Polled {
        // What it makes from now on is stamped at least with the clock as of now.
        self.log_time = self.log_time.max((self.clock)());
        if self.made >= self.limit {
            return Polled::Done;
        }
        let mut budget = (self.limit - self.made).min(max as u64);
        if self.rate > 0 {
            let elapsed = (self.clock)().saturating_sub(self.started_ms);
            let due = elapsed.saturating_mul(self.rate) / 1000 + 1;
            budget = budget.min(due.saturating_sub(self.made));
        }
        if budget == 0 {
            return Polled::Idle;
        }
        for _ in 0..budget {
            out.push(self.next_record());
        }
        Polled::Records
    }

    fn log_frontier(&self) -> Millis {
        self.log_time
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stockflow_types::event::decode;

    fn cfg() -> GeneratorConfig {
        GeneratorConfig {
            rate: 0,
            ..GeneratorConfig::default()
        }
    }

    #[test]
    fn same_seed_same_workload() {
        let a: Vec<_> = {
            let mut g = Generator::new(&cfg(), 0, 2, Arc::new(|| 1_000));
            (0..500).map(|_| g.next_record()).collect()
        };
        let mut g = Generator::new(&cfg(), 0, 2, Arc::new(|| 1_000));
        let b: Vec<_> = (0..500).map(|_| g.next_record()).collect();
        assert_eq!(a, b);
    }

    #[test]
    fn produces_the_whole_mix_with_repeats_and_bad_records() {
        let mut g = Generator::new(
            &GeneratorConfig {
                bad_ratio: 0.02,
                duplicate_ratio: 0.02,
                ..cfg()
            },
            1,
            2,
            Arc::new(|| 5_000),
        );
        let mut types = std::collections::BTreeMap::new();
        let (mut bad, mut ids) = (0, std::collections::HashSet::new());
        let mut repeats = 0;
        for _ in 0..20_000 {
            match decode(&g.next_record().value) {
                Ok(ev) => {
                    *types.entry(ev.kind.type_name()).or_insert(0) += 1;
                    if !ids.insert(ev.event_id) {
                        repeats += 1;
                    }
                }
                Err(_) => bad += 1,
            }
        }
        assert_eq!(types.len(), 7, "{types:?}");
        assert!(bad > 100 && repeats > 100, "bad {bad}, repeats {repeats}");
    }

    #[test]
    fn a_flash_sale_sends_its_share_of_reservations_to_one_sku() {
        let share_on_top = |flash_sale| {
            let c = GeneratorConfig {
                zipf: 0.0,
                flash_sale,
                ..cfg()
            };
            let mut g = Generator::new(&c, 0, 1, Arc::new(|| 1_000));
            let (mut on_top, mut all) = (0, 0);
            for _ in 0..20_000 {
                let ev = g.next_event();
                if matches!(ev.kind, EventKind::Reserved { .. }) {
                    all += 1;
                    on_top += u32::from(ev.sku == sku_name(1));
                }
            }
            f64::from(on_top) / f64::from(all)
        };
        assert!(share_on_top(0.0) < 0.01);
        let share = share_on_top(0.3);
        assert!((0.27..0.33).contains(&share), "{share}");
    }

    #[test]
    fn paces_to_the_rate_and_stops_at_the_limit() {
        let now = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let n2 = Arc::clone(&now);
        let c = GeneratorConfig {
            rate: 1000,
            limit: 3000,
            ..cfg()
        };
        let mut g = Generator::new(
            &c,
            0,
            1,
            Arc::new(move || n2.load(std::sync::atomic::Ordering::SeqCst)),
        );
        let mut out = Vec::new();
        g.poll(0, 10_000, &mut out);
        assert_eq!(out.len(), 1);
        now.store(1000, std::sync::atomic::Ordering::SeqCst);
        g.poll(0, 10_000, &mut out);
        assert_eq!(out.len(), 1001);
        now.store(10_000, std::sync::atomic::Ordering::SeqCst);
        g.poll(0, 10_000, &mut out);
        assert_eq!(out.len(), 3000);
        assert_eq!(g.poll(0, 10_000, &mut out), Polled::Done);
    }
}
