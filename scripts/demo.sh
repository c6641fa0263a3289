#!/usr/bin/env bash
# The main job on a fresh machine: starts Kafka (tansu) and ClickHouse on loopback (installing
# them if needed, scripts/services.sh), builds stockflow, writes demo traffic into Kafka
# (the generator's workload at DEMO_RATE records/s, default 2000) and runs the pipeline:
# Kafka in, HTTP on 127.0.0.1:8080, ClickHouse out (database `stockflow`). Ctrl-C stops both.
# Extra arguments go to `stockflow run`, e.g. `scripts/demo.sh --workers 2`.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/services.sh up >/dev/null
cargo build --release --locked -p stockflow
bin=target/release/stockflow

"$bin" --config configs/kafka.toml produce --rate "${DEMO_RATE:-2000}" &
producer=$!
trap 'kill "$producer" 2>/dev/null || true' EXIT

"$bin" --config configs/kafka.toml run "$@"
