//! The predictive distributions of the forecast models (docs/forecasting.md, sections 1 and 4):
//! what a forecast states about demand over a horizon (its mean, quantiles, and the probability
//! that it exceeds what is available), computed in closed form from a model's state. Pure
//! functions; the operator that maintains the states and issues forecasts builds on them.
//!
//! The pooled model: a key's demand per bucket is Poisson with rate `λ · w` (`w` the bucket's
//! weekday factor), and `λ` has a gamma posterior (shape `a`, rate `b`) that starts at its
//! group's prior and absorbs each uncensored bucket (`a += y`, `b += w`). Over buckets with
//! factors `w_1 … w_h` the demand is Poisson(`λ Σw`) mixed over the gamma: a negative binomial
//! with `r = a` and `p = b / (b + Σw)`. Exact, so its quantiles and tail need no sampling.

/// A gamma distribution over a key's demand rate per bucket (shape `a`, rate `b`): the pooled
/// model's state, its group's prior until the key has history.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GammaRate {
    /// Shape: prior units plus units seen.
    pub a: f64,
    /// Rate: prior buckets plus (weekday-weighted) buckets seen.
    pub b: f64,
}

impl GammaRate {
    /// Takes in one uncensored bucket: `units` sold in a bucket of weekday factor `weight`.
    pub fn observe(&mut self, units: u64, weight: f64) {
        self.a += units as f64;
        self.b += weight;
    }

    /// Takes in `units` seen over an exposure of `weight` buckets (a bucket's seasonal factor
    /// times the share of it the key was in stock): a stock-out shortens the exposure instead
    /// of reading as zero demand.
    pub fn observe_scaled(&mut self, units: f64, weight: f64) {
        self.a += units;
        self.b += weight;
    }

    /// The mean rate per bucket of factor 1.
    pub fn mean(&self) -> f64 {
        self.a / self.b
    }

    /// The predictive distribution of demand over buckets whose weekday factors sum to
    /// `exposure` (for `h` plain buckets, `h`).
    pub fn predictive(&self, exposure: f64) -> NegBin {
        NegBin {
            r: self.a,
            p: self.b / (self.b + exposure),
        }
    }
}

/// A negative binomial distribution of counts: `P(k) = Γ(k+r) / (k! Γ(r)) · p^r (1−p)^k`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NegBin {
    /// Shape (> 0).
    pub r: f64,
    /// Success probability, in (0, 1].
    pub p: f64,
}

/// The largest count a quantile or tail walk looks at: far above any day's demand of one key;
/// a distribution with mass beyond it answers this bound (and says so by being at it).
pub const MAX_COUNT: u64 = 1 << 20;

impl NegBin {
    /// Its mean.
    pub fn mean(&self) -> f64 {
        self.r * (1.0 - self.p) / self.p
    }

    /// Walks the probabilities `P(0), P(1), …` (by the recurrence
    /// `P(k+1) = P(k) · (k + r) / (k + 1) · (1 − p)`) until `stop(k, cdf)` says so; returns
    /// that `k`, or [`MAX_COUNT`].
    fn walk(&self, mut stop: impl FnMut(u64, f64) -> bool) -> u64 {
        if self.r <= 0.0 || self.p >= 1.0 {
            // No demand at all: every count from 0 has all the mass.
            let _ = stop(0, 1.0);
            return 0;
        }
        let q = 1.0 - self.p;
        // P(0) = p^r, in logs so that a large r does not underflow before the walk starts; once
        // a probability is representable the walk multiplies (no logarithm per step).
        let mut log_pk = self.r * self.p.ln();
        let mut pk = log_pk.exp();
        let mut cdf = 0.0;
        let mut k = 0u64;
        loop {
            cdf += pk;
            if stop(k, cdf) || k >= MAX_COUNT {
                return k;
            }
            let step = (k as f64 + self.r) / (k as f64 + 1.0) * q;
            if pk > 0.0 {
                pk *= step;
            } else {
                log_pk += step.ln();
                pk = log_pk.exp();
            }
            k += 1;
            if pk < 1e-300 && k as f64 > self.mean() {
                // Past the mean and below any representable mass: the rest of the tail is 0.
                stop(k, 1.0);
                return k;
            }
        }
    }

    /// The smallest count whose cumulative probability reaches `level` (in (0, 1)).
    pub fn quantile(&self, level: f64) -> u64 {
        // Summing in floating point can fall a hair short of a level close to 1.
        let level = level.min(1.0 - 1e-12);
        self.walk(|_, cdf| cdf >= level)
    }

    /// `P(X ≤ n)`. The walk stops early once the mass left is below `1e-12` (so a tail far
    /// beyond the mean, such as a large `available`, costs the walk to the mean, not to `n`).
    pub fn cdf(&self, n: u64) -> f64 {
        let mut at = 0.0;
        self.walk(|k, cdf| {
            at = cdf;
            k >= n || (k as f64 > self.mean() && cdf >= 1.0 - 1e-12)
        });
        at.min(1.0)
    }

    /// `P(X > available)`: the probability that demand runs the key out of stock (1 when
    /// nothing is available).
    pub fn exceeds(&self, available: i64) -> f64 {
        match u64::try_from(available) {
            Ok(a) => (1.0 - self.cdf(a)).max(0.0),
            Err(_) => 1.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn a_geometric_case_matches_its_closed_form() {
        // r = 1, p = 1/2: P(k) = 2^-(k+1), CDF(k) = 1 − 2^-(k+1).
        let d = NegBin { r: 1.0, p: 0.5 };
        assert!(close(d.mean(), 1.0));
        for k in 0..20 {
            assert!(close(d.cdf(k), 1.0 - 0.5f64.powi(k as i32 + 1)), "cdf({k})");
        }
        assert_eq!(d.quantile(0.5), 0);
        assert_eq!(d.quantile(0.9), 3, "CDF(2) = 0.875 < 0.9 ≤ CDF(3) = 0.9375");
        assert_eq!(d.quantile(0.99), 6);
        assert!(close(d.exceeds(2), 0.125));
        assert_eq!(
            d.exceeds(-1),
            1.0,
            "nothing available: a stock-out for sure"
        );
    }

    #[test]
    fn the_cdf_agrees_with_a_direct_sum_of_the_pmf() {
        // P(k) = C(k + r − 1, k) p^r (1−p)^k for integer r, summed directly.
        let (r, p) = (3.0, 0.3);
        let d = NegBin { r, p };
        let mut sum = 0.0;
        let mut binom = 1.0; // C(k + r − 1, k)
        for k in 0..60u64 {
            if k > 0 {
                binom *= (k as f64 + r - 1.0) / k as f64;
            }
            sum += binom * p.powf(r) * (1.0 - p).powi(k as i32);
            assert!(
                (d.cdf(k) - sum).abs() < 1e-9,
                "cdf({k}) {} vs {sum}",
                d.cdf(k)
            );
        }
        assert!(close(d.mean(), r * (1.0 - p) / p));
    }

    #[test]
    fn the_posterior_predictive_follows_the_observations() {
        // A prior of 2 units over 4 buckets (rate 0.5), then a key that sells 10 a day.
        let mut g = GammaRate { a: 2.0, b: 4.0 };
        assert!(close(g.mean(), 0.5));
        for _ in 0..28 {
            g.observe(10, 1.0);
        }
        assert!(close(g.mean(), 282.0 / 32.0));
        let week = g.predictive(7.0);
        assert!(
            close(week.mean(), 7.0 * g.mean()),
            "the mean scales with the horizon"
        );
        let (q50, q90, q99) = (week.quantile(0.5), week.quantile(0.9), week.quantile(0.99));
        assert!(q50 <= q90 && q90 <= q99, "{q50} {q90} {q99}");
        assert!((55..=65).contains(&q50), "about 7 × 8.8: {q50}");
        assert!(week.exceeds(0) > 0.999 && week.exceeds(200) < 1e-6);
    }

    #[test]
    fn a_tail_far_beyond_the_mean_ends_at_the_mean_not_at_the_bound() {
        let d = GammaRate { a: 7.5, b: 8.0 }.predictive(7.0);
        // A walk to the bound would take a million steps per call; this ends past the mean.
        for _ in 0..1000 {
            assert!(d.exceeds(1_000_000) < 1e-9);
        }
        assert!(d.exceeds(3) > 0.1);
    }

    #[test]
    fn no_demand_and_huge_shapes_do_not_break() {
        let none = GammaRate { a: 0.0, b: 1.0 }.predictive(7.0);
        assert_eq!(none.quantile(0.99), 0);
        assert_eq!(none.exceeds(0), 0.0);
        let big = NegBin { r: 5000.0, p: 0.5 }; // mean 5000
        let q = big.quantile(0.5);
        assert!((4900..=5100).contains(&q), "{q}");
    }
}
