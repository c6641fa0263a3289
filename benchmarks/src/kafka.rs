//! What the benchmarks that go through Kafka share: where the binaries and the broker are, the
//! services, demo traffic and reading stockflow's metrics.

use rdkafka::consumer::BaseConsumer;
use rdkafka::ClientConfig;
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
    crate::sibling("stockflow")
}

/// A consumer of `brokers` in `group` that commits nothing (partitions are assigned by the
/// caller) and, as stockflow's consumer, waits at most 10 ms per fetch.
pub fn non_committing_consumer(brokers: &str, group: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()
        .expect("consumer")
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

/// CPU seconds (user + system, every thread) process `pid` has used so far, from /proc.
pub fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let ticks_per_sec = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse::<f64>().ok())
        .unwrap_or(100.0);
    cpu_ticks(&stat).map_or(0.0, |t| t as f64 / ticks_per_sec)
}

/// utime + stime of a `/proc/PID/stat` line, in clock ticks.
fn cpu_ticks(stat: &str) -> Option<u64> {
    // After the command name (in parentheses, may hold spaces and parentheses): the state, then
    // numbered fields; utime and stime are the 14th and 15th of the line, so the 12th and 13th
    // after the name, counting the state.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| f.get(i)?.parse::<u64>().ok();
    Some(field(11)? + field(12)?)
}

#[cfg(test)]
mod tests {
    use super::cpu_ticks;

    #[test]
    fn cpu_ticks_are_utime_plus_stime() {
        // A real line (trimmed after the 17th field) with a command name holding ") ".
        let line = "4242 (rdk:main) x) S 1 4242 4242 0 -1 4194560 3121 0 0 0 977 52 6 3 20";
        assert_eq!(cpu_ticks(line), Some(977 + 52));
        assert_eq!(cpu_ticks("garbage"), None);
    }
}
