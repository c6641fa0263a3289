//! Configuration: the TOML under `configs/`, every field overridable from the environment and
//! the command line. Parse ([`Settings`]), then validate ([`Settings::validate`]), then build.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;
use thiserror::Error;

/// The whole configuration of a `stockflow run`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The dataflow: workers, pipeline clock, windows, retention.
    #[serde(default)]
    pub pipeline: PipelineConfig,
    /// Where events come from.
    #[serde(default)]
    pub source: SourceConfig,
    /// The synthetic workload, when `source.kind = "generator"`.
    #[serde(default)]
    pub generator: GeneratorConfig,
    /// The HTTP server.
    #[serde(default)]
    pub http: HttpConfig,
    /// Where rejected input goes.
    #[serde(default)]
    pub dead_letter: DeadLetterConfig,
}

/// The dataflow's settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Timely worker threads in this process.
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// Pipeline time is the wall clock rounded down to this tick.
    #[serde(default = "default_tick", with = "humantime_serde")]
    pub tick: Duration,
    /// How long ended reservations, orphan terminal events and per-timestamp movement detail
    /// are kept; a `counted` event older than this is rejected.
    #[serde(default = "default_retention", with = "humantime_serde")]
    pub retention: Duration,
    /// How long a window is kept (and late events still correct it) after its end. History
    /// beyond it lives in the sinks.
    #[serde(default = "default_window_retention", with = "humantime_serde")]
    pub window_retention: Duration,
    /// How long an `event_id` is remembered for de-duplication (at least this, at most twice).
    #[serde(default = "default_dedup_window", with = "humantime_serde")]
    pub dedup_window: Duration,
    /// Tumbling window sizes for analytics, e.g. `["1m", "1h"]`.
    #[serde(default = "default_windows")]
    pub windows: Vec<String>,
    /// How many SKUs the top-sellers view keeps per window (the largest `limit` served).
    #[serde(default = "default_top_k")]
    pub top_k: usize,
    /// The top-sellers ranking is brought up to date at multiples of this (its `as_of` trails
    /// the pipeline time by less than this); every other view follows every tick.
    #[serde(default = "default_top_tick", with = "humantime_serde")]
    pub top_tick: Duration,
}

// Defaults: one worker (the contract's default), a 1 ms tick so that answers are at most about
// a millisecond behind the clock, one hour of retention (state grows with the events of this
// period: every ended reservation and every movement timestamp since the last count; a cycle
// count may arrive up to an hour late), one hour of de-duplication (covers producer retries and
// consumer redelivery).
fn default_workers() -> usize {
    1
}
fn default_tick() -> Duration {
    Duration::from_millis(1)
}
fn default_retention() -> Duration {
    Duration::from_secs(3600)
}
// Two hours: the previous hour's window stays complete and correctable for an hour after its
// end. A 1m window per active (sku, location) for a day would be ~1440 windows per key.
fn default_window_retention() -> Duration {
    Duration::from_secs(2 * 3600)
}
fn default_dedup_window() -> Duration {
    Duration::from_secs(3600)
}
fn default_windows() -> Vec<String> {
    vec!["1m".into(), "1h".into()]
}
fn default_top_k() -> usize {
    100
}
// Re-ranking every SKU bucket of a window costs the same whether one event or a thousand
// changed it: ten rankings a second are fresh enough for "top sellers" and cost 1% of per-tick.
fn default_top_tick() -> Duration {
    Duration::from_millis(100)
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            workers: default_workers(),
            tick: default_tick(),
            retention: default_retention(),
            window_retention: default_window_retention(),
            dedup_window: default_dedup_window(),
            windows: default_windows(),
            top_k: default_top_k(),
            top_tick: default_top_tick(),
        }
    }
}

/// Which source feeds the pipeline.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// The seeded workload generator.
    #[default]
    Generator,
    /// A JSON-lines file (or standard input), one contract event per line.
    File,
}

/// The source section.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// `generator` or `file`.
    #[serde(default)]
    pub kind: SourceKind,
    /// The JSON-lines file for `kind = "file"`; `-` reads standard input.
    #[serde(default)]
    pub input_file: Option<PathBuf>,
}

/// The workload generator.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeneratorConfig {
    /// Distinct SKUs.
    #[serde(default = "default_skus")]
    pub skus: u64,
    /// Distinct locations.
    #[serde(default = "default_locations")]
    pub locations: u64,
    /// Zipf exponent of SKU popularity (0 = uniform).
    #[serde(default = "default_zipf")]
    pub zipf: f64,
    /// Events per second over all workers; 0 = as fast as possible.
    #[serde(default = "default_rate")]
    pub rate: u64,
    /// Stop after this many events in all (0 = never).
    #[serde(default)]
    pub limit: u64,
    /// Seed of the random workload.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Share of events sent twice (same `event_id`).
    #[serde(default = "default_duplicate_ratio")]
    pub duplicate_ratio: f64,
    /// Share of records that are malformed on purpose.
    #[serde(default = "default_bad_ratio")]
    pub bad_ratio: f64,
    /// How long reservations last before they expire.
    #[serde(default = "default_hold", with = "humantime_serde")]
    pub hold: Duration,
}

// Defaults: a small demo shop (10k SKUs, 20 locations, Zipf 1.1 like retail sales), 5k events/s
// so a laptop stays cool, 1% duplicates and 0.5% bad records so that both paths are exercised.
fn default_skus() -> u64 {
    10_000
}
fn default_locations() -> u64 {
    20
}
fn default_zipf() -> f64 {
    1.1
}
fn default_rate() -> u64 {
    5_000
}
fn default_seed() -> u64 {
    42
}
fn default_duplicate_ratio() -> f64 {
    0.01
}
fn default_bad_ratio() -> f64 {
    0.005
}
fn default_hold() -> Duration {
    Duration::from_secs(120)
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        GeneratorConfig {
            skus: default_skus(),
            locations: default_locations(),
            zipf: default_zipf(),
            rate: default_rate(),
            limit: 0,
            seed: default_seed(),
            duplicate_ratio: default_duplicate_ratio(),
            bad_ratio: default_bad_ratio(),
            hold: default_hold(),
        }
    }
}

/// The HTTP server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Listen address.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Threads serving HTTP (tokio workers).
    #[serde(default = "default_http_threads")]
    pub threads: usize,
}

// Loopback by default: exposing the API is a deliberate choice.
fn default_listen() -> String {
    "127.0.0.1:8080".into()
}
fn default_http_threads() -> usize {
    1
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: default_listen(),
            threads: default_http_threads(),
        }
    }
}

/// The dead-letter output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterConfig {
    /// JSON-lines file that receives every rejected record with its reason.
    #[serde(default = "default_dead_letter_path")]
    pub path: PathBuf,
}

fn default_dead_letter_path() -> PathBuf {
    PathBuf::from("stockflow-dead-letter.jsonl")
}

impl Default for DeadLetterConfig {
    fn default() -> Self {
        DeadLetterConfig {
            path: default_dead_letter_path(),
        }
    }
}

/// A configuration that parsed but does not make sense.
#[derive(Debug, Error, PartialEq)]
#[error("invalid configuration: {field}: {problem}")]
pub struct ConfigError {
    /// The dotted path of the field.
    pub field: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

fn bad(field: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        field,
        problem: problem.into(),
    }
}

/// A window size with its canonical name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WindowSpec {
    /// As written in URLs and ClickHouse, e.g. `1m`.
    pub name: String,
    /// Size in ms.
    pub size_ms: u64,
}

impl Settings {
    /// Checks what serde cannot: ranges and relations between fields.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let p = &self.pipeline;
        if p.workers == 0 || p.workers > 256 {
            return Err(bad("pipeline.workers", "must be between 1 and 256"));
        }
        let tick = p.tick.as_millis();
        if tick == 0 || u128::from(p.tick.subsec_nanos() % 1_000_000) != 0 {
            return Err(bad(
                "pipeline.tick",
                "must be a whole number of milliseconds, at least 1ms",
            ));
        }
        let windows = self.window_specs()?;
        let largest = windows.iter().map(|w| w.size_ms).max().unwrap_or(0);
        for (field, d) in [
            ("pipeline.retention", p.retention),
            ("pipeline.window_retention", p.window_retention),
            ("pipeline.dedup_window", p.dedup_window),
        ] {
            if d.as_millis() % tick != 0 || d.is_zero() {
                return Err(bad(field, "must be a positive multiple of pipeline.tick"));
            }
        }
        if p.window_retention.as_millis() < u128::from(largest) {
            return Err(bad(
                "pipeline.window_retention",
                "must be at least the largest window",
            ));
        }
        if p.top_k == 0 || p.top_k > 10_000 {
            return Err(bad("pipeline.top_k", "must be between 1 and 10000"));
        }
        let g = &self.generator;
        if g.skus == 0 || g.locations == 0 {
            return Err(bad(
                "generator.skus",
                "skus and locations must be at least 1",
            ));
        }
        if !(0.0..=10.0).contains(&g.zipf) {
            return Err(bad("generator.zipf", "must be between 0 and 10"));
        }
        for (field, r) in [
            ("generator.duplicate_ratio", g.duplicate_ratio),
            ("generator.bad_ratio", g.bad_ratio),
        ] {
            if !(0.0..=1.0).contains(&r) {
                return Err(bad(field, "must be between 0 and 1"));
            }
        }
        if self.source.kind == SourceKind::File && self.source.input_file.is_none() {
            return Err(bad(
                "source.input_file",
                "is required when source.kind = \"file\"",
            ));
        }
        if self.http.threads == 0 {
            return Err(bad("http.threads", "must be at least 1"));
        }
        Ok(())
    }

    /// The configured windows, parsed and named canonically, in the configured order.
    pub fn window_specs(&self) -> Result<Vec<WindowSpec>, ConfigError> {
        let tick = self.pipeline.tick.as_millis().max(1);
        let mut out: Vec<WindowSpec> = Vec::new();
        for w in &self.pipeline.windows {
            let d = humantime::parse_duration(w)
                .map_err(|e| bad("pipeline.windows", format!("{w:?} is not a duration: {e}")))?;
            let ms = d.as_millis();
            if ms == 0 || ms % tick != 0 || d.subsec_nanos() % 1_000_000 != 0 {
                return Err(bad(
                    "pipeline.windows",
                    format!("{w:?} must be a positive multiple of the tick"),
                ));
            }
            let name = humantime::format_duration(d).to_string();
            if out.iter().any(|o| o.size_ms as u128 == ms) {
                return Err(bad("pipeline.windows", format!("{w:?} is listed twice")));
            }
            out.push(WindowSpec {
                name,
                size_ms: ms as u64,
            });
        }
        if out.is_empty() {
            return Err(bad("pipeline.windows", "at least one window is required"));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let s = Settings::default();
        s.validate().unwrap();
        let w = s.window_specs().unwrap();
        assert_eq!(
            w[0],
            WindowSpec {
                name: "1m".into(),
                size_ms: 60_000
            }
        );
        assert_eq!(w[1].name, "1h");
    }

    #[test]
    fn rejects_nonsense() {
        let mut s = Settings::default();
        s.pipeline.windows = vec!["soon".into()];
        assert_eq!(s.validate().unwrap_err().field, "pipeline.windows");
        let mut s = Settings::default();
        s.pipeline.window_retention = Duration::from_secs(60);
        assert_eq!(s.validate().unwrap_err().field, "pipeline.window_retention");
        let mut s = Settings::default();
        s.source.kind = SourceKind::File;
        assert_eq!(s.validate().unwrap_err().field, "source.input_file");
    }
}
