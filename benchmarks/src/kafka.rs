//! What the benchmarks that go through Kafka share: where the binaries and the broker are, the
//! services, demo traffic and reading stockflow's metrics.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `KAFKA_BENCH_BROKERS` points a run at another broker (a real Kafka, say).
pub fn brokers() -> String {
    std::env::var("KAFKA_BENCH_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// The stockflow binary built beside the running benchmark.
pub fn bin() -> PathBuf {
    std::env::current_exe()
        .expect("own path")
        .with_file_name("stockflow")
}

/// Starts (or reuses) the broker and ClickHouse: `scripts/services.sh up`.
pub fn services_up() {
    assert!(
        bin().exists(),
        "build the binary first: cargo build --release -p stockflow"
    );
    let status = Command::new(repo().join("scripts/services.sh"))
        .stdout(Stdio::null())
        .status()
        .expect("scripts/services.sh");
    assert!(status.success(), "services did not start");
}

/// The sum of every sample of metric `name` in a Prometheus text page.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Demo traffic (`stockflow produce`) into the topics of `sets` at `rate` records/s, until killed.
pub fn traffic(sets: &[String], rate: u64) -> Child {
    Command::new(bin())
        .arg("produce")
        .arg(format!("--rate={rate}"))
        .arg("--limit=0")
        .args(sets.iter().flat_map(|s| ["--set", s.as_str()]))
        .stderr(Stdio::null())
        .spawn()
        .expect("traffic producer")
}
