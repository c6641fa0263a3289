//! The API against its own OpenAPI document, checked by schemathesis (from PyPI): generated
//! requests for every operation, and every answer must be as the document declares (status,
//! content type, body schema, no 5xx), while the document is as strict as the server (a request
//! it allows is not refused). The binary runs its built-in generator, so lookups find data.

mod support;

use std::process::Command;

#[test]
fn the_api_conforms_to_its_openapi_document() {
    let dir = std::env::temp_dir().join(format!("stockflow-conformance-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (mut child, base) = support::start_serving([
        "run",
        "--http",
        "127.0.0.1:0",
        "--set",
        "generator.rate=2000",
        "--set",
        &format!("dead_letter.path={}", dir.join("dlq.jsonl").display()),
    ]);
    std::thread::sleep(std::time::Duration::from_secs(2)); // some SKUs and reservations exist
                                                           // Through the interpreter, so that no script directory needs to be on PATH.
    let out = Command::new("python3")
        .args([
            "-m",
            "schemathesis.cli",
            "run",
            &format!("{base}/openapi.json"),
            "--checks",
            "all",
        ])
        .args(["--max-examples", "50", "--seed", "42"])
        .env("SCHEMATHESIS_TELEMETRY", "false")
        .output()
        .expect("schemathesis runs (scripts/test.sh installs it from PyPI)");
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
