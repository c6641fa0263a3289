#!/usr/bin/env bash
# The whole test suite, from a fresh clone: the README's test command, and what .ci/run calls.
# It installs what it needs (rustfmt, clippy, libssl-dev, promtool, Chromium, chDB and
# schemathesis, the tansu broker, ClickHouse) and starts the servers
# (scripts/services.sh), then runs the same gates as CI: formatting, clippy with warnings as
# errors, and every test of the workspace (unit, oracle property tests with several workers, the
# binary end to end from a file and from Kafka to HTTP and ClickHouse, crash and outage tests,
# doc examples).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is required (https://rustup.rs)" >&2
  exit 1
fi
if command -v rustup >/dev/null 2>&1; then
  for component in rustfmt clippy; do
    rustup component list --installed 2>/dev/null | grep -q "^${component}" || rustup component add "$component"
  done
fi

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_install() { # [apt-get install options] packages...
  step "installing $* (Debian's packages)"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
pip_install() { # package
  step "installing $1 from PyPI"
  python3 -m pip install --quiet --disable-pip-version-check "$1"
}

# librdkafka is built with OpenSSL (Kafka over TLS, SASL/SCRAM): its headers and pkg-config.
pkg-config --exists openssl 2>/dev/null || apt_install libssl-dev pkg-config
# promtool (Debian's prometheus package) lints the /metrics exposition in the tests.
command -v promtool >/dev/null 2>&1 || apt_install --no-install-recommends prometheus
# A real browser for the live page's test (headless Chromium).
command -v chromium >/dev/null 2>&1 || apt_install chromium
# A current ClickHouse engine in-process (chDB), for the DDL and BI queries against more than
# Debian's 18.16 (stockflow/tests/clickhouse_sql.rs); schemathesis, which checks the API
# against its OpenAPI document (stockflow/tests/conformance.rs).
python3 -c "import chdb" 2>/dev/null || pip_install chdb-core
python3 -c "import schemathesis" 2>/dev/null || pip_install schemathesis

step "services: Kafka-protocol broker and ClickHouse on loopback (scripts/services.sh)"
./scripts/services.sh up

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test --workspace"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --locked 2>&1 | tee "$log"
passed=$(grep -Eo 'test result: ok\. [0-9]+ passed' "$log" | awk '{s+=$4} END {print s+0}')
failed=$(grep -Eo 'test result: [A-Za-z]+\. [0-9]+ passed; [0-9]+ failed' "$log" | awk '{s+=$6} END {print s+0}')
echo
echo "${passed} passed, ${failed} failed"
