#!/usr/bin/env bash
# Every benchmark of the project, one after the other, each printing its table with the
# baseline it is compared with in the same run (docs/benchmarks.md explains each):
#   engine-bench   the dataflow alone vs a HashMap fold of the same events
#   kafka-bench    end to end from Kafka vs a plain rdkafka consumer; ClickHouse sink; freshness
#   lookup-bench   open-loop lookups under ingest vs a constant warp handler and Redis GET
# --short runs small sizes (a few minutes, for regression checks); the default is the full run.
# Starts what it needs (scripts/services.sh; Redis is installed by lookup-bench if missing).
set -euo pipefail
cd "$(dirname "$0")/.."

short=false
[ "${1:-}" = "--short" ] && short=true

./scripts/services.sh up >/dev/null
cargo build --release --locked -p stockflow -p stockflow-benchmarks
bin=target/release

echo "== machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), commit $(git rev-parse --short HEAD)"
if $short; then
  echo "== engine-bench 200000";   "$bin/engine-bench" 200000
  echo "== kafka-bench 5000 2";    "$bin/kafka-bench" 5000 2
  echo "== lookup-bench --short";  "$bin/lookup-bench" --short
else
  echo "== engine-bench 2000000";  "$bin/engine-bench" 2000000
  echo "== kafka-bench 50000 2";   "$bin/kafka-bench" 50000 2
  echo "== lookup-bench";          "$bin/lookup-bench"
fi
