//! What the end-to-end tests of the binary share.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// Starts the binary with `args` and waits for the address it serves on (from the lines it
/// prints to try). Its standard output keeps being drained; its logs (warnings and up) go to the
/// test's standard error.
pub fn start_serving(
    args: impl IntoIterator<Item = impl AsRef<std::ffi::OsStr>>,
) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_stockflow"))
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the binary starts");
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    let base = loop {
        let line = lines
            .next()
            .expect("the binary prints its address")
            .expect("utf-8");
        if let Some(rest) = line.trim().strip_prefix("curl -s http://") {
            break format!("http://{}", rest.split('/').next().expect("an address"));
        }
    };
    std::thread::spawn(move || for _ in lines {}); // keep draining stdout
    (child, base)
}

/// Asserts that `promtool check metrics` (Prometheus's own linter: HELP texts, names, types)
/// accepts a `/metrics` exposition.
#[allow(dead_code)] // not every test binary that shares this module lints metrics
pub fn promtool_accepts(metrics: &str) {
    use std::io::Write;
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs (scripts/test.sh installs Debian's prometheus)");
    promtool
        .stdin
        .take()
        .expect("piped")
        .write_all(metrics.as_bytes())
        .expect("promtool reads");
    let lint = promtool.wait_with_output().expect("promtool ends");
    assert!(
        lint.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );
}
