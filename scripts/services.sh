#!/usr/bin/env bash
# The servers stockflow talks to, for tests and local runs, on loopback, without Docker:
#   - a Kafka-protocol broker: tansu (crates.io), with SQLite storage (survives restarts and
#     reports correct end offsets, unlike its memory engine);
#   - ClickHouse from Debian's packages.
# Installs what is missing (tansu builds from source once, ~15-45 minutes; the binary is reused),
# reuses servers that already answer on the ports, starts the others in the background, and
# creates the default topics. Idempotent.
#
#   scripts/services.sh [up]            install and start both, create topics (default)
#   scripts/services.sh down            stop the servers this script started
#   scripts/services.sh stop-clickhouse / start-clickhouse
#                                       for outage tests
#   scripts/services.sh env             print the addresses as environment variables
#   scripts/services.sh postgres        PostgreSQL 15 from Debian, for the benchmarks' transactional
#                                       baseline only (STOCKFLOW_POSTGRES_PORT, 55432)
#   scripts/services.sh fresh-kafka     restart the broker this script started, with an empty log
#   scripts/services.sh restart-kafka   restart the broker this script started, keeping its log
#                                       (tansu applies topics' retention.ms when it starts)
#
# Ports: STOCKFLOW_KAFKA_PORT (9092), STOCKFLOW_CLICKHOUSE_PORT (HTTP, 8123),
# STOCKFLOW_CLICKHOUSE_TCP_PORT (native protocol for clickhouse-client, 9000).
# State (data, logs, pid files): STOCKFLOW_SERVICES_DIR (/var/tmp/stockflow-services).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
# One place per machine, so that every clone and worktree reuses (and can stop) the same servers.
dir="${STOCKFLOW_SERVICES_DIR:-/var/tmp/stockflow-services}"
kafka_port="${STOCKFLOW_KAFKA_PORT:-9092}"
ch_port="${STOCKFLOW_CLICKHOUSE_PORT:-8123}"
ch_tcp_port="${STOCKFLOW_CLICKHOUSE_TCP_PORT:-9000}"
pg_port="${STOCKFLOW_POSTGRES_PORT:-55432}"
tansu_version="0.6.0"
partitions="${STOCKFLOW_PARTITIONS:-4}"

log() { printf '[services] %s\n' "$*" >&2; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() { # what, seconds, command...
  local what=$1 secs=$2
  shift 2
  for _ in $(seq 1 $((secs * 10))); do
    if "$@"; then return 0; fi
    sleep 0.1
  done
  log "$what did not come up within ${secs}s"
  return 1
}

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

tansu_bin() {
  if [ -n "${TANSU_BIN:-}" ]; then echo "$TANSU_BIN"; return; fi
  local bin="${CARGO_HOME:-$HOME/.cargo}/bin/tansu"
  if [ ! -x "$bin" ] && command -v tansu >/dev/null 2>&1; then bin=$(command -v tansu); fi
  echo "$bin"
}

install_tansu() {
  local bin
  bin=$(tansu_bin)
  if [ -x "$bin" ]; then return; fi
  log "installing tansu $tansu_version from crates.io (builds from source once; 15-45 minutes)"
  # The default features have no storage engine: dynostore + libsql give sqlite://.
  cargo install tansu --version "$tansu_version" --features dynostore,libsql --locked \
    || cargo install tansu --version "$tansu_version" --features dynostore,libsql
}

install_clickhouse() {
  if command -v clickhouse-server >/dev/null 2>&1 && command -v clickhouse-client >/dev/null 2>&1; then
    return
  fi
  log "installing clickhouse-server and clickhouse-client from Debian's packages"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clickhouse-server clickhouse-client >/dev/null
}

start_kafka() {
  if port_open "$kafka_port"; then
    log "reusing the Kafka-protocol broker on 127.0.0.1:$kafka_port"
    return
  fi
  install_tansu
  local bin
  bin=$(tansu_bin)
  mkdir -p "$dir/kafka"
  log "starting tansu on 127.0.0.1:$kafka_port (data: $dir/kafka/tansu.db)"
  # tansu resolves the SQLite path against its working directory.
  (cd "$dir/kafka" && exec nohup "$bin" broker \
    --listener-url "tcp://127.0.0.1:$kafka_port" \
    --advertised-listener-url "tcp://127.0.0.1:$kafka_port" \
    --storage-engine "sqlite://tansu.db" \
    >"$dir/kafka/tansu.log" 2>&1 </dev/null) &
  echo $! >"$dir/kafka/pid"
  wait_for "tansu" 30 port_open "$kafka_port"
}

create_topics() {
  local t
  for t in inventory:"$partitions" orders:"$partitions" stockflow.dlq:1; do
    # Creating an existing topic fails; that is the idempotent case.
    "$(tansu_bin)" topic create "${t%%:*}" --partitions "${t##*:}" \
      --broker "tcp://127.0.0.1:$kafka_port" >/dev/null 2>&1 || true
  done
}

clickhouse_up() { [ "$(curl -fsS "http://127.0.0.1:$ch_port/ping" 2>/dev/null)" = "Ok." ]; }

write_clickhouse_config() {
  mkdir -p "$dir/clickhouse/data" "$dir/clickhouse/tmp" "$dir/clickhouse/user_files" "$dir/clickhouse/log"
  cat >"$dir/clickhouse/config.xml" <<EOF
<?xml version="1.0"?>
<!-- Written by scripts/services.sh: a loopback-only ClickHouse with its data under $dir. -->
<yandex>
    <logger>
        <level>warning</level>
        <log>$dir/clickhouse/log/server.log</log>
        <errorlog>$dir/clickhouse/log/server.err.log</errorlog>
        <size>100M</size>
        <count>2</count>
    </logger>
    <http_port>$ch_port</http_port>
    <tcp_port>$ch_tcp_port</tcp_port>
    <listen_host>127.0.0.1</listen_host>
    <max_connections>1024</max_connections>
    <keep_alive_timeout>3</keep_alive_timeout>
    <max_concurrent_queries>100</max_concurrent_queries>
    <uncompressed_cache_size>268435456</uncompressed_cache_size>
    <mark_cache_size>268435456</mark_cache_size>
    <path>$dir/clickhouse/data/</path>
    <tmp_path>$dir/clickhouse/tmp/</tmp_path>
    <user_files_path>$dir/clickhouse/user_files/</user_files_path>
    <users_config>$dir/clickhouse/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <mlock_executable>false</mlock_executable>
</yandex>
EOF
  cat >"$dir/clickhouse/users.xml" <<'EOF'
<?xml version="1.0"?>
<yandex>
    <profiles><default><max_memory_usage>4000000000</max_memory_usage></default></profiles>
    <users>
        <default>
            <password></password>
            <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
            <profile>default</profile>
            <quota>default</quota>
        </default>
    </users>
    <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors>
        <result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time>
    </interval></default></quotas>
</yandex>
EOF
}

start_clickhouse() {
  if clickhouse_up; then
    log "reusing ClickHouse on 127.0.0.1:$ch_port"
    return
  fi
  if [ -s "$dir/clickhouse/cmdline" ]; then
    # Stopped by stop-clickhouse: start the very same server again (same config, same data).
    log "restarting ClickHouse as it ran before: $(tr '\0' ' ' <"$dir/clickhouse/cmdline")"
    local cmd
    mapfile -d '' -t cmd <"$dir/clickhouse/cmdline"
    nohup "${cmd[@]}" >"$dir/clickhouse/restart.log" 2>&1 </dev/null &
    echo $! >"$dir/clickhouse/pid"
    rm -f "$dir/clickhouse/cmdline"
    wait_for "ClickHouse" 60 clickhouse_up
    return
  fi
  install_clickhouse
  write_clickhouse_config
  log "starting ClickHouse on 127.0.0.1:$ch_port (data: $dir/clickhouse/data)"
  nohup clickhouse-server --config-file="$dir/clickhouse/config.xml" \
    >"$dir/clickhouse/log/stdout.log" 2>&1 </dev/null &
  echo $! >"$dir/clickhouse/pid"
  wait_for "ClickHouse" 60 clickhouse_up
}

stop_pidfile() { # name, pidfile
  local pid
  [ -f "$2" ] || return 0
  pid=$(cat "$2")
  if kill -0 "$pid" 2>/dev/null; then
    log "stopping $1 (pid $pid)"
    kill "$pid"
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
  fi
  rm -f "$2"
}

# Stops the ClickHouse that answers on the port, whoever started it, and remembers its command
# line so that start-clickhouse brings the same server back (for outage tests).
stop_clickhouse() {
  local pid
  pid=$(ss -ltnpH "sport = :$ch_port" 2>/dev/null | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2)
  if [ -z "$pid" ]; then
    log "no ClickHouse listens on 127.0.0.1:$ch_port"
    return
  fi
  mkdir -p "$dir/clickhouse"
  cat "/proc/$pid/cmdline" >"$dir/clickhouse/cmdline"
  echo "$pid" >"$dir/clickhouse/pid"
  stop_pidfile ClickHouse "$dir/clickhouse/pid"
}

pg_bin=/usr/lib/postgresql/15/bin

start_postgres() {
  if port_open "$pg_port"; then
    log "reusing PostgreSQL on 127.0.0.1:$pg_port"
    return
  fi
  if [ ! -x "$pg_bin/postgres" ]; then
    log "installing postgresql-15 from Debian's packages"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 >/dev/null
  fi
  # PostgreSQL refuses to run as root: the cluster belongs to the postgres user.
  local run=()
  [ "$(id -u)" = 0 ] && run=(runuser -u postgres --)
  mkdir -p "$dir/postgres"
  [ "$(id -u)" = 0 ] && chown postgres: "$dir/postgres"
  if [ ! -s "$dir/postgres/data/PG_VERSION" ]; then
    log "creating a PostgreSQL cluster in $dir/postgres/data"
    "${run[@]}" "$pg_bin/initdb" -D "$dir/postgres/data" -U postgres --auth=trust >/dev/null
  fi
  log "starting PostgreSQL on 127.0.0.1:$pg_port (data: $dir/postgres/data)"
  # Sized for the 2-core benchmark machine; durability settings stay at their defaults (the
  # benchmark chooses synchronous_commit per session and says which).
  "${run[@]}" "$pg_bin/pg_ctl" -D "$dir/postgres/data" -l "$dir/postgres/server.log" -w start \
    -o "-p $pg_port -c listen_addresses=127.0.0.1 -k $dir/postgres -c max_connections=64 -c shared_buffers=1GB" >/dev/null
  "${run[@]}" head -1 "$dir/postgres/data/postmaster.pid" >"$dir/postgres/pid"
}

print_env() {
  echo "STOCKFLOW_KAFKA__BROKERS=127.0.0.1:$kafka_port"
  echo "STOCKFLOW_CLICKHOUSE__URL=http://127.0.0.1:$ch_port"
}

case "${1:-up}" in
  up)
    command -v curl >/dev/null 2>&1 || as_root apt-get install -y -qq curl >/dev/null
    command -v ss >/dev/null 2>&1 || as_root apt-get install -y -qq iproute2 >/dev/null
    # The secure-connection tests: openssl makes their CA, haproxy terminates TLS before tansu.
    for tool in openssl haproxy; do
      if ! command -v "$tool" >/dev/null 2>&1; then
        log "installing $tool from Debian's packages"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$tool" >/dev/null
      fi
    done
    start_clickhouse
    start_kafka
    create_topics
    print_env
    ;;
  down)
    stop_pidfile ClickHouse "$dir/clickhouse/pid"
    stop_pidfile tansu "$dir/kafka/pid"
    stop_pidfile PostgreSQL "$dir/postgres/pid"
    ;;
  postgres) start_postgres ;;
  fresh-kafka)
    # A broker with an empty log. tansu's SQLite storage slows down as it fills (reading a topic
    # back ran at ~600 records/s in a 110 MB database against ~20,000 in a new one), so each
    # Kafka benchmark starts from an empty one (scripts/bench.sh, on a port of its own).
    stop_pidfile tansu "$dir/kafka/pid"
    if port_open "$kafka_port"; then
      log "a broker this script did not start answers on 127.0.0.1:$kafka_port; not touching it"
      exit 1
    fi
    rm -rf "$dir/kafka"
    start_kafka
    create_topics
    ;;
  restart-kafka)
    stop_pidfile tansu "$dir/kafka/pid"
    if port_open "$kafka_port"; then
      log "a broker this script did not start answers on 127.0.0.1:$kafka_port; not touching it"
      exit 1
    fi
    start_kafka
    ;;
  stop-clickhouse) stop_clickhouse ;;
  start-clickhouse) start_clickhouse ;;
  env) print_env ;;
  *)
    echo "usage: $0 [up|down|stop-clickhouse|start-clickhouse|env|postgres|fresh-kafka|restart-kafka]" >&2
    exit 2
    ;;
esac
