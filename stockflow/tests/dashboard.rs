//! The shipped Grafana dashboard queries only metrics that stockflow documents (docs/http.md),
//! so that a renamed metric cannot leave a panel empty unnoticed.

use std::collections::BTreeSet;
use std::path::PathBuf;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Names that start with `stockflow_` or `process_` in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for prefix in ["stockflow_", "process_"] {
        let mut rest = text;
        while let Some(i) = rest.find(prefix) {
            let name: String = rest[i..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            rest = &rest[i + name.len()..];
            out.insert(name);
        }
    }
    out
}

#[test]
fn the_dashboard_queries_documented_metrics() {
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("configs/grafana/stockflow-dashboard.json")).unwrap(),
    )
    .unwrap();
    let documented = metric_names(&std::fs::read_to_string(repo().join("docs/http.md")).unwrap());
    let panels = dash["panels"].as_array().unwrap();
    assert!(panels.len() >= 10);
    for panel in panels {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for name in metric_names(expr) {
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .unwrap_or(&name);
                assert!(
                    documented.contains(base),
                    "panel {:?} queries {name}, which docs/http.md does not list",
                    panel["title"]
                );
            }
        }
    }
}
