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
