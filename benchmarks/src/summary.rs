//! The one table of `scripts/bench.sh`: every benchmark records its headline rows here, and the
//! script prints them together at the end.
//!
//! A row goes to the file named by `BENCH_SUMMARY_FILE` (tab-separated: scenario, stockflow,
//! baseline, ratio, target); without it, nothing is recorded (the benchmark's own tables are
//! printed either way).

use std::io::Write;

/// Records one row: what was measured, stockflow's figure, the baseline's, stockflow's figure
/// over the baseline's (or whatever ratio the scenario states), and the target.
pub fn record(scenario: &str, stockflow: &str, baseline: &str, ratio: f64, target: &str) {
    let Some(path) = std::env::var_os("BENCH_SUMMARY_FILE") else {
        return;
    };
    let clean = |s: &str| s.replace(['\t', '\n'], " ");
    let line = format!(
        "{}\t{}\t{}\t{ratio:.2}x\t{}\n",
        clean(scenario),
        clean(stockflow),
        clean(baseline),
        clean(target)
    );
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        eprintln!("cannot append to {}: {e}", path.to_string_lossy());
    }
}
