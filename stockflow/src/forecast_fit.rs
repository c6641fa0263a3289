//! `stockflow forecast fit`: fits a model file on a JSON-lines log (docs/forecasting.md,
//! section 4) and writes it as TOML for `forecast.model_file`.

use anyhow::{Context, Result};
use std::io::BufRead;
use std::path::Path;
use stockflow_dataflow::forecast::fit::{fit, FitOptions};
use stockflow_types::config::Settings;
use stockflow_types::event::decode;

/// Reads `input` (`-` for stdin), fits on the buckets before `until`, writes `out`.
pub fn run(s: &Settings, input: &Path, until: &str, version: &str, out: &Path) -> Result<()> {
    let until_ms = stockflow_types::timefmt::parse_param(until).with_context(|| {
        format!("--until {until:?} is not an RFC 3339 time or epoch milliseconds")
    })?;
    let reader: Box<dyn BufRead> = if input == Path::new("-") {
        Box::new(std::io::stdin().lock())
    } else {
        let f = std::fs::File::open(input)
            .with_context(|| format!("cannot open {}", input.display()))?;
        Box::new(std::io::BufReader::new(f))
    };
    let mut events = Vec::new();
    let mut bad = 0u64;
    for line in reader.lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        match decode(line.as_bytes()) {
            Ok(e) => events.push(e),
            Err(_) => bad += 1,
        }
    }
    let n = events.len();
    let opts = FitOptions {
        bucket_ms: s.forecast.bucket.as_millis() as u64,
        until_ms,
        version: version.to_string(),
    };
    let file = fit(events, &opts);
    file.validate().map_err(anyhow::Error::msg)?;
    std::fs::write(out, toml::to_string(&file)?)
        .with_context(|| format!("cannot write {}", out.display()))?;
    eprintln!(
        "fitted {} groups on {n} events ({bad} unreadable lines skipped) before {until}: {}",
        file.groups.len(),
        out.display()
    );
    Ok(())
}
