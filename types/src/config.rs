//! Configuration: the TOML under `configs/`, every field overridable from the environment and
//! the command line. Parse ([`Settings`]), then validate ([`Settings::validate`]), then build.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
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
    /// Where rejected input goes (a file, unless the source is Kafka).
    #[serde(default)]
    pub dead_letter: DeadLetterConfig,
    /// The Kafka source and dead-letter topic, when `source.kind = "kafka"`.
    #[serde(default)]
    pub kafka: KafkaConfig,
    /// The ClickHouse sink.
    #[serde(default)]
    pub clickhouse: ClickHouseConfig,
    /// Checkpoints of the pipeline's state, and the restart from them.
    #[serde(default)]
    pub checkpoint: CheckpointConfig,
    /// Logs (to standard error).
    #[serde(default)]
    pub log: LogConfig,
    /// Several processes as one timely cluster (docs/cluster.md); one process when empty.
    #[serde(default)]
    pub cluster: ClusterConfig,
    /// Forecasts of demand and stock-out risk (docs/forecasting.md).
    #[serde(default)]
    pub forecast: ForecastSettings,
}

/// Forecasting: buckets, horizons, the model file and the experiment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForecastSettings {
    /// Off: no forecast is kept, issued or served (the routes answer a problem).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// A bucket of business time (UTC), a whole number of seconds.
    #[serde(default = "default_bucket", with = "humantime_serde")]
    pub bucket: Duration,
    /// Horizons, in buckets.
    #[serde(default = "default_horizons")]
    pub horizons: Vec<u32>,
    /// Buckets of history the models read (1 to 28).
    #[serde(default = "default_lookback")]
    pub lookback: usize,
    /// A bucket out of stock (log time) for at least this share is censored demand.
    #[serde(default = "default_censor_share")]
    pub censor_share: f64,
    /// A key with no event for this many buckets is forgotten.
    #[serde(default = "default_key_retention")]
    pub key_retention: u32,
    /// Keys kept per location and horizon in the at-risk ranking (the largest `limit`).
    #[serde(default = "default_at_risk_keep")]
    pub at_risk_keep: usize,
    /// The model file (TOML, written by `stockflow forecast fit`); the built-in parameters
    /// when absent.
    #[serde(default)]
    pub model_file: Option<std::path::PathBuf>,
    /// Which model serves which key.
    #[serde(default)]
    pub experiment: ExperimentSettings,
    /// Which forecasts go to ClickHouse's `forecasts` table (with the features they were issued
    /// from): `none`, `served` (each key's arm) or `all` (every version).
    #[serde(default)]
    pub clickhouse: ForecastRows,
    /// With `served`: the share of keys (a stable sample by a hash of sku and location) whose
    /// shadow versions are written too.
    #[serde(default)]
    pub clickhouse_shadow_sample: f64,
}

/// `forecast.clickhouse`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ForecastRows {
    /// Nothing is written (the evaluation is still kept, exactly, in the dataflow).
    None,
    /// The forecast each key is served, plus the shadow sample.
    #[default]
    Served,
    /// Every model version's forecast.
    All,
}

/// `[forecast.experiment]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentSettings {
    /// Mixed into the assignment hash; a new experiment takes a new salt.
    #[serde(default = "default_salt")]
    pub salt: String,
    /// The arms: name, model (`snaive`, `tsb`, `pooled`) and share (the shares sum to 1).
    #[serde(default = "default_arms")]
    pub arms: Vec<ArmSettings>,
}

/// One arm.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArmSettings {
    /// Its name.
    pub name: String,
    /// Its model.
    pub model: String,
    /// Its share of the keys.
    pub share: f64,
}

fn default_true() -> bool {
    true
}
fn default_bucket() -> Duration {
    Duration::from_secs(86_400)
}
fn default_horizons() -> Vec<u32> {
    vec![1, 7]
}
fn default_lookback() -> usize {
    28
}
fn default_censor_share() -> f64 {
    0.5
}
fn default_key_retention() -> u32 {
    56
}
fn default_at_risk_keep() -> usize {
    100
}
fn default_salt() -> String {
    "stockflow".into()
}
fn default_arms() -> Vec<ArmSettings> {
    vec![ArmSettings {
        name: "A".into(),
        model: "pooled".into(),
        share: 1.0,
    }]
}

impl Default for ForecastSettings {
    fn default() -> Self {
        ForecastSettings {
            enabled: true,
            bucket: default_bucket(),
            horizons: default_horizons(),
            lookback: default_lookback(),
            censor_share: default_censor_share(),
            key_retention: default_key_retention(),
            at_risk_keep: default_at_risk_keep(),
            model_file: None,
            experiment: ExperimentSettings::default(),
            clickhouse: ForecastRows::default(),
            clickhouse_shadow_sample: 0.0,
        }
    }
}

impl Default for ExperimentSettings {
    fn default() -> Self {
        ExperimentSettings {
            salt: default_salt(),
            arms: default_arms(),
        }
    }
}

/// Buckets a forecast key's ring holds (the look-back, the horizon and the labels' delay must
/// fit in it).
pub const FORECAST_RING: u64 = 32;

impl ForecastSettings {
    /// Checks the section against the windows' finality delay.
    pub fn validate(&self, window_retention: Duration) -> Result<(), ConfigError> {
        let b = self.bucket.as_millis();
        if b == 0 || !b.is_multiple_of(1000) {
            return Err(bad("forecast.bucket", "must be a whole number of seconds"));
        }
        if self.horizons.is_empty() || self.horizons.contains(&0) || self.horizons.len() > 8 {
            return Err(bad(
                "forecast.horizons",
                "1 to 8 horizons, each at least 1 bucket",
            ));
        }
        if !(1..=28).contains(&self.lookback) {
            return Err(bad("forecast.lookback", "must be 1 to 28 buckets"));
        }
        let delay = window_retention.as_millis().div_ceil(b) as u64;
        let longest = u64::from(*self.horizons.iter().max().unwrap_or(&1));
        if longest.max(7) + delay + 1 >= FORECAST_RING {
            return Err(bad(
                "forecast.horizons",
                format!(
                    "the longest horizon (at least 7) plus pipeline.window_retention in buckets ({delay}) must stay below {}",
                    FORECAST_RING - 1
                ),
            ));
        }
        if !(self.censor_share > 0.0 && self.censor_share <= 1.0) {
            return Err(bad("forecast.censor_share", "must be in (0, 1]"));
        }
        if self.key_retention == 0 {
            return Err(bad("forecast.key_retention", "must be at least 1 bucket"));
        }
        if self.at_risk_keep == 0 || self.at_risk_keep > 10_000 {
            return Err(bad("forecast.at_risk_keep", "must be 1 to 10000"));
        }
        if !(0.0..=1.0).contains(&self.clickhouse_shadow_sample) {
            return Err(bad(
                "forecast.clickhouse_shadow_sample",
                "must be in [0, 1]",
            ));
        }
        let e = &self.experiment;
        if e.arms.is_empty() {
            return Err(bad("forecast.experiment.arms", "at least one arm"));
        }
        let total: f64 = e.arms.iter().map(|a| a.share).sum();
        if e.arms.iter().any(|a| !(a.share > 0.0 && a.share <= 1.0)) || (total - 1.0).abs() > 1e-9 {
            return Err(bad(
                "forecast.experiment.arms",
                "each share in (0, 1], and the shares sum to 1",
            ));
        }
        for a in &e.arms {
            if !["snaive", "tsb", "pooled"].contains(&a.model.as_str()) {
                return Err(bad(
                    "forecast.experiment.arms",
                    format!("model {:?} is not one of snaive, tsb, pooled", a.model),
                ));
            }
        }
        Ok(())
    }
}

/// Several processes running one dataflow over timely's own TCP connections: each runs
/// `pipeline.workers` workers, the Kafka partitions are spread over every worker of every
/// process, each SKU has one owner worker in the cluster, and any process answers any lookup
/// (forwarding it to the owner's process). Every process gets the same lists.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Every process's address (`host:port`) for timely's connections, in process order.
    /// Empty: this is the only process.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Every process's HTTP address (`host:port`, as in `http.listen`), in the same order: where
    /// lookups of keys another process owns are forwarded.
    #[serde(default)]
    pub http: Vec<String>,
    /// This process's index in `addresses`.
    #[serde(default)]
    pub process: usize,
    /// How long a lookup forwarded to another process may take before it answers 504.
    #[serde(default = "default_forward_timeout", with = "humantime_serde")]
    pub forward_timeout: Duration,
}

fn default_forward_timeout() -> Duration {
    Duration::from_secs(2)
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            addresses: Vec::new(),
            http: Vec::new(),
            process: 0,
            forward_timeout: default_forward_timeout(),
        }
    }
}

impl ClusterConfig {
    /// Processes in the cluster (1 when not clustered).
    pub fn processes(&self) -> usize {
        self.addresses.len().max(1)
    }
}

/// How the process logs (levels: `RUST_LOG`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` (for people) or `json` (one object per line, for log shippers).
    #[serde(default)]
    pub format: LogFormat,
    /// One line per HTTP request (method, path, status, duration), target `stockflow::access`.
    #[serde(default)]
    pub access: bool,
}

/// The format of the logs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
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
    /// How long, in log time, ended reservations, orphan terminal events and per-timestamp
    /// movement detail are kept; a `counted` event whose `ts` is older than this at its log
    /// time is rejected (`count_too_old`).
    #[serde(default = "default_retention", with = "humantime_serde")]
    pub retention: Duration,
    /// How long, in log time, a window is kept (and late events still correct it) after its
    /// end; later events for it are counted as late. History beyond it lives in the sinks.
    #[serde(default = "default_window_retention", with = "humantime_serde")]
    pub window_retention: Duration,
    /// How long, in log time, an `event_id` is remembered for de-duplication (at least this, at
    /// most twice).
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
    /// How far a record's timestamp may run ahead of what its partition has shown so far. A
    /// Kafka record stamped further ahead of its partition's log time (a producer with a wrong
    /// clock, on a `CreateTime` topic) advances that log time by this much only; an event whose
    /// business `ts` is further ahead of its record's timestamp is rejected
    /// (`timestamp_out_of_range`). See docs/architecture.md, "Clocks that lie".
    #[serde(default = "default_max_clock_skew", with = "humantime_serde")]
    pub max_clock_skew: Duration,
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
// Five minutes: far beyond NTP-synchronised clocks and a producer's batching (milliseconds),
// well below every horizon a jump could damage (retention, dedup_window: an hour).
fn default_max_clock_skew() -> Duration {
    Duration::from_secs(300)
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
            max_clock_skew: default_max_clock_skew(),
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
    /// The `inventory` and `orders` Kafka topics (see the `kafka` section).
    Kafka,
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
    /// Share of reservations that go to the most popular SKU, `sku-00001` (a flash sale).
    #[serde(default)]
    pub flash_sale: f64,
    /// Open reservations a generator keeps for later `released`/`fulfilled` events; beyond it
    /// the oldest is left to expire. Small values give a steady state (live holds stop growing).
    #[serde(default = "default_open_holds")]
    pub open_holds: u64,
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
fn default_open_holds() -> u64 {
    100_000
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
            flash_sale: 0.0,
            open_holds: default_open_holds(),
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
    /// A connection that has not sent a whole request header this long after it started one
    /// (or after it was opened) is closed.
    #[serde(default = "default_header_read_timeout", with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Writing one answer may take at most this: a client that does not read its answers is
    /// disconnected. (Handlers never wait: they read published snapshots.)
    #[serde(default = "default_write_timeout", with = "humantime_serde")]
    pub write_timeout: Duration,
    /// Open connections at most; beyond it new ones are closed at once (and counted in
    /// `stockflow_http_connections_refused_total`).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// A lookup with `?min_offsets=` (read-your-writes) waits at most this for those offsets
    /// to be reflected, then answers 504.
    #[serde(default = "default_max_wait", with = "humantime_serde")]
    pub max_wait: Duration,
}

// Loopback by default: exposing the API is a deliberate choice.
fn default_listen() -> String {
    "127.0.0.1:8080".into()
}
fn default_http_threads() -> usize {
    1
}
fn default_header_read_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_write_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_connections() -> usize {
    10_000
}
fn default_max_wait() -> Duration {
    Duration::from_secs(5)
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: default_listen(),
            threads: default_http_threads(),
            header_read_timeout: default_header_read_timeout(),
            write_timeout: default_write_timeout(),
            max_connections: default_max_connections(),
            max_wait: default_max_wait(),
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

/// The Kafka source: topics, consumer group, commits. The partitions of both topics are spread
/// over the timely workers (partition `p` of a topic goes to worker `p % workers`); a start reads
/// them from the newest checkpoint's positions, or from the beginning without one
/// (docs/operations.md).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port...]`.
    #[serde(default = "default_brokers")]
    pub brokers: String,
    /// Topic of inventory events (contract §1).
    #[serde(default = "default_inventory_topic")]
    pub inventory_topic: String,
    /// Topic of order events (contract §1).
    #[serde(default = "default_orders_topic")]
    pub orders_topic: String,
    /// Topic that receives every rejected record, with headers naming the reason and origin.
    #[serde(default = "default_dead_letter_topic")]
    pub dead_letter_topic: String,
    /// Consumer group under which durable offsets are committed.
    #[serde(default = "default_group_id")]
    pub group_id: String,
    /// How often stored offsets are committed (librdkafka `auto.commit.interval.ms`).
    #[serde(default = "default_commit_interval", with = "humantime_serde")]
    pub commit_interval: Duration,
    /// Create missing topics at start with this many partitions (0 = never create).
    #[serde(default = "default_create_partitions")]
    pub create_partitions: i32,
    /// How the clients reach the brokers: TLS and SASL.
    #[serde(default)]
    pub security_protocol: SecurityProtocol,
    /// TLS, when `security_protocol` is `ssl` or `sasl_ssl`.
    #[serde(default)]
    pub tls: KafkaTls,
    /// SASL, when `security_protocol` is `sasl_plaintext` or `sasl_ssl`.
    #[serde(default)]
    pub sasl: KafkaSasl,
    /// Extra librdkafka settings for every client, e.g. `"fetch.wait.max.ms" = "50"`.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// A partition this worker reads that has delivered nothing for this long gets a heartbeat
    /// record written into it (empty value, header `stockflow-heartbeat`), so that its log time
    /// and the log frontier keep moving while it is idle, in a way a replay reads again
    /// (docs/architecture.md, "Idle partitions"). `0s` turns heartbeats off.
    #[serde(default = "default_idle_heartbeat", with = "humantime_serde")]
    pub idle_heartbeat: Duration,
    /// How often the topics' partition counts are asked for: partitions added while running
    /// (`kafka-topics --alter --partitions`) are read, from their beginning, within about this.
    #[serde(default = "default_metadata_refresh", with = "humantime_serde")]
    pub metadata_refresh: Duration,
}

/// librdkafka's `security.protocol`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    /// No TLS, no SASL.
    #[default]
    Plaintext,
    /// TLS.
    Ssl,
    /// SASL without TLS (the password crosses the network in the clear with `PLAIN`).
    SaslPlaintext,
    /// SASL over TLS.
    SaslSsl,
}

impl SecurityProtocol {
    /// The value librdkafka expects.
    pub fn as_librdkafka(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }

    /// Whether the connections use TLS.
    pub fn tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }

    /// Whether the clients authenticate with SASL.
    pub fn sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }
}

/// Kafka over TLS: whom to trust and, for mutual TLS, who we are.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaTls {
    /// PEM file of the CA certificates to trust (default: the system's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// PEM file of this client's certificate, for brokers that require client certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// PEM file of that certificate's private key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// The private key's password, if it is encrypted.
    #[serde(default, skip_serializing_if = "Secret::is_empty")]
    pub key_password: Secret,
}

/// Kafka's SASL authentication.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSasl {
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    #[serde(default)]
    pub mechanism: SaslMechanism,
    /// User name.
    #[serde(default)]
    pub username: String,
    /// Password: prefer `STOCKFLOW_KAFKA__SASL__PASSWORD` or `password_file` to the file.
    #[serde(default, skip_serializing_if = "Secret::is_empty")]
    pub password: Secret,
    /// A file whose content (without a trailing newline) is the password, e.g. a mounted
    /// secret; read at start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
}

/// A SASL mechanism librdkafka supports without Kerberos.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SaslMechanism {
    /// User name and password as they are (use it over TLS only).
    #[default]
    #[serde(rename = "PLAIN")]
    Plain,
    /// Salted challenge and response, SHA-256.
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    /// Salted challenge and response, SHA-512.
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    /// The value librdkafka expects.
    pub fn as_librdkafka(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// A password or key: never printed (`Debug` and [`Settings::redacted`] hide it). It reads
/// any scalar as text (an environment variable `123456` arrives as a number), and a value of
/// another kind fails without being echoed.
#[derive(Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Secret(String);

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Text;
        impl serde::de::Visitor<'_> for Text {
            type Value = Secret;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a password or key as text")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Secret, E> {
                Ok(Secret(v.to_owned()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
            fn visit_i128<E: serde::de::Error>(self, v: i128) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
            fn visit_u128<E: serde::de::Error>(self, v: u128) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
            fn visit_char<E: serde::de::Error>(self, v: char) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
        }
        d.deserialize_any(Text)
    }
}

impl Secret {
    /// The secret itself, for the client that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether it is unset.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret(s.to_owned())
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { REDACTED })
    }
}

/// What a printed configuration shows in place of a secret.
pub const REDACTED: &str = "<redacted>";

// Defaults: a broker on loopback as `scripts/services.sh` starts it, the contract's topic names,
// one second between commits (librdkafka's default is 5 s; a shorter interval means less to
// skip in the dead-letter topic after a crash), topics created with 4 partitions for local runs.
fn default_brokers() -> String {
    "127.0.0.1:9092".into()
}
fn default_inventory_topic() -> String {
    "inventory".into()
}
fn default_orders_topic() -> String {
    "orders".into()
}
fn default_dead_letter_topic() -> String {
    "stockflow.dlq".into()
}
fn default_group_id() -> String {
    "stockflow".into()
}
fn default_commit_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_create_partitions() -> i32 {
    4
}
// One second: the log frontier then trails the present by about a second on an idle partition,
// far inside every forgetting horizon, for one small record a second per idle partition.
fn default_idle_heartbeat() -> Duration {
    Duration::from_secs(1)
}
// Ten seconds: a metadata request per topic every ten seconds is nothing to a broker, and a
// partition added to a running topic is read within seconds of its first records.
fn default_metadata_refresh() -> Duration {
    Duration::from_secs(10)
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: default_brokers(),
            inventory_topic: default_inventory_topic(),
            orders_topic: default_orders_topic(),
            dead_letter_topic: default_dead_letter_topic(),
            group_id: default_group_id(),
            commit_interval: default_commit_interval(),
            create_partitions: default_create_partitions(),
            security_protocol: SecurityProtocol::default(),
            tls: KafkaTls::default(),
            sasl: KafkaSasl::default(),
            options: BTreeMap::new(),
            idle_heartbeat: default_idle_heartbeat(),
            metadata_refresh: default_metadata_refresh(),
        }
    }
}

/// librdkafka settings that stockflow owns: setting them in `kafka.options` would break the
/// guarantee that offsets are committed only after their effects are durable.
pub const RESERVED_KAFKA_OPTIONS: [&str; 7] = [
    "bootstrap.servers",
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.commit.interval.ms",
    "auto.offset.reset",
    // Aborted transactions' records must never be read as events.
    "isolation.level",
];

/// librdkafka settings that the kafka section's own security fields own: one place for each,
/// and secrets only where they are redacted.
pub const SECURITY_KAFKA_OPTIONS: [&str; 10] = [
    "security.protocol",
    "ssl.ca.location",
    "ssl.certificate.location",
    "ssl.key.location",
    "ssl.key.password",
    "sasl.mechanism",
    "sasl.mechanisms",
    "sasl.username",
    "sasl.password",
    "ssl.keystore.password",
];

/// The ClickHouse sink: the tables of contract §4, written in consolidated batches.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClickHouseConfig {
    /// Write the changes to ClickHouse.
    #[serde(default)]
    pub enabled: bool,
    /// HTTP address of the server.
    #[serde(default = "default_clickhouse_url")]
    pub url: String,
    /// Database of the tables; created if missing.
    #[serde(default = "default_clickhouse_database")]
    pub database: String,
    /// User name.
    #[serde(default = "default_clickhouse_user")]
    pub user: String,
    /// Password: prefer `STOCKFLOW_CLICKHOUSE__PASSWORD` or `password_file` to the file.
    #[serde(default, skip_serializing_if = "Secret::is_empty")]
    pub password: Secret,
    /// A file whose content (without a trailing newline) is the password; read at start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// PEM file of CA certificates to trust for an `https://` URL, beside the system's roots
    /// (a private CA or a self-signed server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// A batch is written once it holds this many rows...
    #[serde(default = "default_batch_rows")]
    pub batch_rows: usize,
    /// ...or this long after its first row.
    #[serde(default = "default_flush_interval", with = "humantime_serde")]
    pub flush_interval: Duration,
    /// Changes and pending rows waiting for ClickHouse (and records per worker whose changes
    /// the sink has not folded in), at most; past it the pipeline stops reading Kafka until
    /// ClickHouse catches up (nothing is dropped).
    #[serde(default = "default_buffer_rows")]
    pub buffer_rows: usize,
    /// Longest wait between two attempts of a failed insert (the wait doubles from 100 ms).
    #[serde(default = "default_max_backoff", with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Replicas (independent deployments, each its own `kafka.group_id`) that share the
    /// database: only the holder of a lease in ClickHouse writes, the others stand by with
    /// every key's latest row and take over when the lease lapses (docs/cluster.md).
    #[serde(default)]
    pub writer_lease: bool,
    /// How long a lease lasts unless renewed (every third of it); a writer stops writing a
    /// third of it before it lapses, so a successor never overlaps it.
    #[serde(default = "default_lease_ttl", with = "humantime_serde")]
    pub lease_ttl: Duration,
}

// Defaults: the server `scripts/services.sh` starts; batches of up to 50k rows or 1 s (ClickHouse
// prefers few large inserts: one part per insert); a buffer of a million changes (~200 MB).
fn default_clickhouse_url() -> String {
    "http://127.0.0.1:8123".into()
}
fn default_clickhouse_database() -> String {
    "stockflow".into()
}
fn default_clickhouse_user() -> String {
    "default".into()
}
fn default_batch_rows() -> usize {
    50_000
}
fn default_flush_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_buffer_rows() -> usize {
    1_000_000
}
fn default_lease_ttl() -> Duration {
    Duration::from_secs(9)
}
fn default_max_backoff() -> Duration {
    Duration::from_secs(5)
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        ClickHouseConfig {
            enabled: false,
            url: default_clickhouse_url(),
            database: default_clickhouse_database(),
            user: default_clickhouse_user(),
            password: Secret::default(),
            password_file: None,
            ca_file: None,
            batch_rows: default_batch_rows(),
            flush_interval: default_flush_interval(),
            buffer_rows: default_buffer_rows(),
            max_backoff: default_max_backoff(),
            writer_lease: false,
            lease_ttl: default_lease_ttl(),
        }
    }
}

/// Checkpoints: every `interval` (and at a clean stop) each process writes its state as of one
/// completed pipeline time with the source positions it covers; a start restores the newest
/// valid one and reads only what follows (docs/operations.md).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointConfig {
    /// Write checkpoints and restart from them. Needs a source that can be read again from a
    /// position: Kafka or a file.
    #[serde(default)]
    pub enabled: bool,
    /// The directory of the checkpoint files; created if missing.
    #[serde(default = "default_checkpoint_dir")]
    pub dir: PathBuf,
    /// How often a checkpoint is taken.
    #[serde(default = "default_checkpoint_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// How many checkpoints are kept (older ones are deleted once a newer one is written).
    #[serde(default = "default_checkpoint_keep")]
    pub keep: usize,
    /// Start even when the broker has deleted records that neither the checkpoint nor the log
    /// holds any more (their effects are then missing from every answer). Off: such a start
    /// stops with an error naming the topic, partition and missing offsets.
    #[serde(default)]
    pub allow_gap: bool,
}

// Defaults: every 30 s (a restart replays at most that much plus what was not yet durable; the
// topics must keep at least `keep` intervals, docs/operations.md), three kept so that a damaged
// newest file still leaves two to fall back on, in a directory beside the process.
fn default_checkpoint_dir() -> PathBuf {
    PathBuf::from("stockflow-checkpoints")
}
fn default_checkpoint_interval() -> Duration {
    Duration::from_secs(30)
}
fn default_checkpoint_keep() -> usize {
    3
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            enabled: false,
            dir: default_checkpoint_dir(),
            interval: default_checkpoint_interval(),
            keep: default_checkpoint_keep(),
            allow_gap: false,
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
        self.forecast.validate(p.window_retention)?;
        let windows = self.window_specs()?;
        let largest = windows.iter().map(|w| w.size_ms).max().unwrap_or(0);
        for (field, d) in [
            ("pipeline.retention", p.retention),
            ("pipeline.window_retention", p.window_retention),
            ("pipeline.dedup_window", p.dedup_window),
            ("pipeline.top_tick", p.top_tick),
        ] {
            let whole_ms = d.subsec_nanos().is_multiple_of(1_000_000);
            if d.as_millis() == 0 || !whole_ms || d.as_millis() % tick != 0 {
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
        if p.max_clock_skew < Duration::from_secs(1) {
            // Smaller, and an idle partition's log time could hardly move, nor an event's ts
            // differ from its record's timestamp.
            return Err(bad("pipeline.max_clock_skew", "must be at least 1s"));
        }
        let k = &self.kafka;
        if k.metadata_refresh < Duration::from_millis(100) {
            return Err(bad("kafka.metadata_refresh", "must be at least 100ms"));
        }
        if !k.idle_heartbeat.is_zero() && k.idle_heartbeat < Duration::from_millis(10) {
            return Err(bad(
                "kafka.idle_heartbeat",
                "must be 0s (no heartbeats) or at least 10ms",
            ));
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
            ("generator.flash_sale", g.flash_sale),
        ] {
            if !(0.0..=1.0).contains(&r) {
                return Err(bad(field, "must be between 0 and 1"));
            }
        }
        let c = &self.cluster;
        if !c.addresses.is_empty() {
            if c.process >= c.addresses.len() {
                return Err(bad(
                    "cluster.process",
                    format!("must be below the {} cluster.addresses", c.addresses.len()),
                ));
            }
            if c.http.len() != c.addresses.len() {
                return Err(bad(
                    "cluster.http",
                    "must name one HTTP address per entry of cluster.addresses, in the same order",
                ));
            }
            if self.source.kind == SourceKind::File {
                return Err(bad(
                    "cluster.addresses",
                    "a cluster reads Kafka (or the generator), not a file",
                ));
            }
        } else if !c.http.is_empty() || c.process != 0 {
            return Err(bad(
                "cluster.addresses",
                "must list every process when cluster.http or cluster.process is set",
            ));
        }
        if c.forward_timeout.is_zero() {
            return Err(bad("cluster.forward_timeout", "must be positive"));
        }
        if self.source.kind == SourceKind::File && self.source.input_file.is_none() {
            return Err(bad(
                "source.input_file",
                "is required when source.kind = \"file\"",
            ));
        }
        let k = &self.kafka;
        if self.source.kind == SourceKind::Kafka {
            for (field, v) in [
                ("kafka.brokers", &k.brokers),
                ("kafka.inventory_topic", &k.inventory_topic),
                ("kafka.orders_topic", &k.orders_topic),
                ("kafka.dead_letter_topic", &k.dead_letter_topic),
                ("kafka.group_id", &k.group_id),
            ] {
                if v.trim().is_empty() {
                    return Err(bad(field, "must not be empty"));
                }
            }
            if k.inventory_topic == k.orders_topic {
                return Err(bad(
                    "kafka.orders_topic",
                    "must differ from kafka.inventory_topic",
                ));
            }
            if k.commit_interval.is_zero() {
                return Err(bad("kafka.commit_interval", "must be positive"));
            }
        }
        if let Some(key) = k
            .options
            .keys()
            .find(|o| RESERVED_KAFKA_OPTIONS.contains(&o.as_str()))
        {
            return Err(bad(
                "kafka.options",
                format!("{key:?} is set by stockflow (use the kafka section's own fields)"),
            ));
        }
        if let Some(key) = k
            .options
            .keys()
            .find(|o| SECURITY_KAFKA_OPTIONS.contains(&o.as_str()))
        {
            return Err(bad(
                "kafka.options",
                format!("{key:?} belongs in kafka.security_protocol, [kafka.tls] or [kafka.sasl]"),
            ));
        }
        self.validate_kafka_security()?;
        let c = &self.clickhouse;
        if c.enabled {
            if !(c.url.starts_with("http://") || c.url.starts_with("https://")) {
                return Err(bad(
                    "clickhouse.url",
                    "must be an http:// or https:// address",
                ));
            }
            if c.database.is_empty()
                || !c
                    .database
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
            {
                return Err(bad("clickhouse.database", "must be letters, digits and _"));
            }
            if c.batch_rows == 0 || c.buffer_rows < c.batch_rows {
                return Err(bad(
                    "clickhouse.buffer_rows",
                    "batch_rows must be positive and buffer_rows at least batch_rows",
                ));
            }
            if c.flush_interval.is_zero() {
                return Err(bad("clickhouse.flush_interval", "must be positive"));
            }
            if c.max_backoff < Duration::from_millis(100) {
                return Err(bad(
                    "clickhouse.max_backoff",
                    "must be at least 100ms (the first wait after a failed insert)",
                ));
            }
            if c.writer_lease && c.lease_ttl < Duration::from_secs(1) {
                return Err(bad("clickhouse.lease_ttl", "must be at least 1s"));
            }
            if c.writer_lease && self.source.kind != SourceKind::Kafka {
                return Err(bad(
                    "clickhouse.writer_lease",
                    "is for replicas reading one Kafka log (each with its own kafka.group_id, the lease holder's name)",
                ));
            }
            if c.ca_file.is_some() && !c.url.starts_with("https://") {
                return Err(bad(
                    "clickhouse.ca_file",
                    "is only used with an https:// clickhouse.url",
                ));
            }
        }
        let h = &self.http;
        if h.threads == 0 || h.threads > 1024 {
            return Err(bad("http.threads", "must be between 1 and 1024"));
        }
        for (field, d) in [
            ("http.header_read_timeout", h.header_read_timeout),
            ("http.write_timeout", h.write_timeout),
        ] {
            if d < Duration::from_millis(1) {
                return Err(bad(field, "must be at least 1ms"));
            }
        }
        if h.max_connections == 0 {
            return Err(bad("http.max_connections", "must be at least 1"));
        }
        let cp = &self.checkpoint;
        if cp.enabled {
            if self.source.kind == SourceKind::Generator {
                return Err(bad(
                    "checkpoint.enabled",
                    "needs a source that can be read again from a position (kafka or file), not the generator",
                ));
            }
            if self.source.kind == SourceKind::File
                && self.source.input_file.as_deref() == Some(std::path::Path::new("-"))
            {
                return Err(bad(
                    "checkpoint.enabled",
                    "standard input cannot be read again from a position: give a file",
                ));
            }
            if cp.interval.as_millis() < tick
                || !cp.interval.subsec_nanos().is_multiple_of(1_000_000)
            {
                return Err(bad(
                    "checkpoint.interval",
                    "must be a whole number of milliseconds, at least pipeline.tick",
                ));
            }
            if cp.keep == 0 || cp.keep > 1000 {
                return Err(bad("checkpoint.keep", "must be between 1 and 1000"));
            }
            if cp.dir.as_os_str().is_empty() {
                return Err(bad("checkpoint.dir", "must not be empty"));
            }
        }
        Ok(())
    }

    fn validate_kafka_security(&self) -> Result<(), ConfigError> {
        let k = &self.kafka;
        let protocol = k.security_protocol;
        let t = &k.tls;
        if !protocol.tls()
            && (t.ca_file.is_some()
                || t.cert_file.is_some()
                || t.key_file.is_some()
                || !t.key_password.is_empty())
        {
            return Err(bad(
                "kafka.tls",
                "is set but kafka.security_protocol does not use TLS (ssl or sasl_ssl)",
            ));
        }
        if t.cert_file.is_some() != t.key_file.is_some() {
            return Err(bad(
                "kafka.tls.cert_file",
                "cert_file and key_file go together (mutual TLS)",
            ));
        }
        let a = &k.sasl;
        if protocol.sasl() {
            if a.username.is_empty() {
                return Err(bad(
                    "kafka.sasl.username",
                    "is required with a sasl_* security_protocol",
                ));
            }
            if a.password.is_empty() {
                return Err(bad(
                    "kafka.sasl.password",
                    "is required with a sasl_* security_protocol (or kafka.sasl.password_file)",
                ));
            }
        } else if !a.username.is_empty() || !a.password.is_empty() {
            return Err(bad(
                "kafka.sasl",
                "is set but kafka.security_protocol does not use SASL (sasl_plaintext or sasl_ssl)",
            ));
        }
        Ok(())
    }

    /// The files the settings name: (field, path), for the loader to check that each can be
    /// read, and the secrets given as files, (field, file, secret), for it to read.
    pub fn files(
        &mut self,
    ) -> (
        Vec<(&'static str, PathBuf)>,
        Vec<(&'static str, Option<PathBuf>, &mut Secret)>,
    ) {
        let t = &self.kafka.tls;
        let named = [
            ("kafka.tls.ca_file", &t.ca_file),
            ("kafka.tls.cert_file", &t.cert_file),
            ("kafka.tls.key_file", &t.key_file),
            ("clickhouse.ca_file", &self.clickhouse.ca_file),
        ]
        .into_iter()
        .filter_map(|(field, p)| p.clone().map(|p| (field, p)))
        .collect();
        let c = &mut self.clickhouse;
        let a = &mut self.kafka.sasl;
        let secrets = vec![
            (
                "clickhouse.password_file",
                c.password_file.clone(),
                &mut c.password,
            ),
            (
                "kafka.sasl.password_file",
                a.password_file.clone(),
                &mut a.password,
            ),
        ];
        (named, secrets)
    }

    /// The settings as they may be shown: every secret replaced by [`REDACTED`], and every
    /// `kafka.options` value whose name suggests one (a password, a key, a PEM, a token).
    pub fn redacted(&self) -> Settings {
        let mut s = self.clone();
        for (key, value) in &mut s.kafka.options {
            let key = key.to_ascii_lowercase();
            if [
                "password",
                "secret",
                "key",
                "pem",
                "jaas",
                "token",
                "oauthbearer",
            ]
            .iter()
            .any(|w| key.contains(w))
            {
                *value = REDACTED.into();
            }
        }
        for secret in [
            &mut s.clickhouse.password,
            &mut s.kafka.sasl.password,
            &mut s.kafka.tls.key_password,
        ] {
            if !secret.is_empty() {
                *secret = Secret::from(REDACTED);
            }
        }
        s
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
        // Values that would panic or spin a worker are refused by name.
        let mut s = Settings::default();
        s.pipeline.top_tick = Duration::from_micros(500);
        assert_eq!(s.validate().unwrap_err().field, "pipeline.top_tick");
        let mut s = Settings::default();
        s.http.header_read_timeout = Duration::ZERO;
        assert_eq!(s.validate().unwrap_err().field, "http.header_read_timeout");
        let mut s = Settings::default();
        s.http.max_connections = 0;
        assert_eq!(s.validate().unwrap_err().field, "http.max_connections");
        let mut s = Settings::default();
        s.clickhouse.enabled = true;
        s.clickhouse.max_backoff = Duration::ZERO;
        assert_eq!(s.validate().unwrap_err().field, "clickhouse.max_backoff");
        let mut s = Settings::default();
        s.pipeline.max_clock_skew = Duration::ZERO; // would freeze every partition's log time
        assert_eq!(s.validate().unwrap_err().field, "pipeline.max_clock_skew");
        let mut s = Settings::default();
        s.kafka.metadata_refresh = Duration::ZERO; // would ask the broker in a tight loop
        assert_eq!(s.validate().unwrap_err().field, "kafka.metadata_refresh");
        let mut s = Settings::default();
        s.kafka.idle_heartbeat = Duration::from_micros(10);
        assert_eq!(s.validate().unwrap_err().field, "kafka.idle_heartbeat");
        s.kafka.idle_heartbeat = Duration::ZERO; // off
        assert!(s.validate().is_ok());
    }

    #[test]
    fn kafka_security_is_consistent() {
        let field = |f: &dyn Fn(&mut Settings)| {
            let mut s = Settings::default();
            f(&mut s);
            s.validate().err().map(|e| e.field)
        };
        assert_eq!(
            field(&|s| s.kafka.tls.ca_file = Some("/etc/hostname".into())),
            Some("kafka.tls")
        );
        assert_eq!(
            field(&|s| {
                s.kafka.security_protocol = SecurityProtocol::Ssl;
                s.kafka.tls.cert_file = Some("/etc/hostname".into());
            }),
            Some("kafka.tls.cert_file")
        );
        assert_eq!(
            field(&|s| s.kafka.security_protocol = SecurityProtocol::SaslSsl),
            Some("kafka.sasl.username")
        );
        assert_eq!(
            field(&|s| s.kafka.sasl.username = "u".into()),
            Some("kafka.sasl")
        );
        assert_eq!(
            field(&|s| {
                s.kafka.options.insert("sasl.password".into(), "x".into());
            }),
            Some("kafka.options")
        );
        assert_eq!(
            field(&|s| {
                s.kafka.security_protocol = SecurityProtocol::SaslSsl;
                s.kafka.sasl.username = "u".into();
                s.kafka.sasl.password = "p".into();
            }),
            None
        );
        assert_eq!(
            field(&|s| {
                s.clickhouse.enabled = true;
                s.clickhouse.ca_file = Some("/etc/hostname".into());
            }),
            Some("clickhouse.ca_file"),
            "a CA for a plain http:// URL is a mistake"
        );
    }

    #[test]
    fn secrets_do_not_show() {
        let mut s = Settings::default();
        s.clickhouse.password = "hunter2".into();
        s.kafka.sasl.password = "swordfish".into();
        let printed = format!("{s:?} {}", serde_json::to_string(&s.redacted()).unwrap());
        assert!(
            !printed.contains("hunter2") && !printed.contains("swordfish"),
            "{printed}"
        );
        assert_eq!(s.redacted().clickhouse.password.expose(), REDACTED);
        assert_eq!(s.clickhouse.password.expose(), "hunter2");
        s.kafka
            .options
            .insert("ssl.key.pem".into(), "-----BEGIN PRIVATE KEY-----".into());
        s.kafka
            .options
            .insert("fetch.wait.max.ms".into(), "50".into());
        let shown = s.redacted();
        assert_eq!(shown.kafka.options["ssl.key.pem"], REDACTED);
        assert_eq!(shown.kafka.options["fetch.wait.max.ms"], "50");
        // A password that looks like a number is text, and a wrong kind is not echoed.
        let n: Secret = serde_json::from_str("123456").unwrap();
        assert_eq!(n.expose(), "123456");
        let err = serde_json::from_str::<Secret>(r#"{"x": "hunter3"}"#).unwrap_err();
        assert!(!err.to_string().contains("hunter3"), "{err}");
    }
}
