#!/usr/bin/env bash
# The real local stack without Docker: Apache Kafka (KRaft, from Maven Central jars),
# PostgreSQL and Redis (from Debian packages), each a private instance on loopback.
#
#   deploy/stack.sh up       install what is missing, start what is not running, wait until ready
#   deploy/stack.sh down     stop what this script started
#   deploy/stack.sh status   say what runs where
#   deploy/stack.sh env      print the connection settings as shell exports
#
# A component whose connection setting is already in the environment is used as it is and
# never started: STREAMSEG_DATABASE_URL, STREAMSEG_REDIS_URL, STREAMSEG_KAFKA_BOOTSTRAP.
# Ports default to 55432 (PostgreSQL), 56379 (Redis), 59092/59093 (Kafka) and can be moved
# with STREAMSEG_PG_PORT, STREAMSEG_REDIS_PORT, STREAMSEG_KAFKA_PORT.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STACK_DIR=${STREAMSEG_STACK_DIR:-$ROOT/.stack}
CACHE_DIR=${STREAMSEG_CACHE_DIR:-$ROOT/.cache}
KAFKA_VERSION=$(sed -n 's#.*<kafka.version>\(.*\)</kafka.version>.*#\1#p' "$ROOT/deploy/kafka/pom.xml")
KAFKA_LIBS=$CACHE_DIR/kafka-$KAFKA_VERSION/libs
KAFKA_HEAP=${STREAMSEG_KAFKA_HEAP:-768m}
PG_PORT=${STREAMSEG_PG_PORT:-55432}
REDIS_PORT=${STREAMSEG_REDIS_PORT:-56379}
KAFKA_PORT=${STREAMSEG_KAFKA_PORT:-59092}
CONTROLLER_PORT=$((KAFKA_PORT + 1))
PG_USER=streamseg
PG_DB=streamseg
# PostgreSQL refuses to run as root; this unprivileged account owns its data directory.
PG_OS_USER=${STREAMSEG_PG_OS_USER:-streamseg}
READY_TIMEOUT_SECONDS=${STREAMSEG_READY_TIMEOUT_SECONDS:-90}

log() { printf '[stack] %s\n' "$*" >&2; }
fail() {
  # $1 component, $2 message, $3 log file to read
  printf '[stack] ERROR: %s: %s\n' "$1" "$2" >&2
  if [ -n "${3:-}" ] && [ -f "$3" ]; then
    printf '[stack] read %s; its last lines:\n' "$3" >&2
    tail -n 20 "$3" >&2 || true
  fi
  exit 1
}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

APT_UPDATED=0
apt_install() {
  if ! command -v apt-get >/dev/null; then
    fail "$1" "not installed and apt-get is not available; install $* yourself"
  fi
  if [ "$APT_UPDATED" = 0 ]; then
    log "apt-get update"
    as_root apt-get update -qq >"$STACK_DIR/apt.log" 2>&1 || fail apt "apt-get update failed" "$STACK_DIR/apt.log"
    APT_UPDATED=1
  fi
  log "apt-get install $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" \
    >>"$STACK_DIR/apt.log" 2>&1 || fail apt "apt-get install $* failed" "$STACK_DIR/apt.log"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

pid_alive() { [ -f "$1" ] && kill -0 "$(head -n 1 "$1")" 2>/dev/null; }

wait_until() {
  # $1 component, $2 log file, rest: command that succeeds when ready
  local component=$1 logfile=$2 deadline=$((SECONDS + READY_TIMEOUT_SECONDS))
  shift 2
  until "$@"; do
    if [ $SECONDS -ge $deadline ]; then
      fail "$component" "not ready after ${READY_TIMEOUT_SECONDS}s" "$logfile"
    fi
    sleep 0.3
  done
}

check_port_free() {
  # $1 component, $2 port, $3 env var that moves it
  if port_open "$2"; then
    fail "$1" "port $2 on 127.0.0.1 is taken by another program; set $3 to a free port"
  fi
}

# ---------------------------------------------------------------- PostgreSQL
pg_bin() {
  local dir
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -n "$dir" ] && echo "$dir"
}

pg_as_owner() {
  if [ "$(id -u)" = 0 ]; then runuser -u "$PG_OS_USER" -- "$@"; else "$@"; fi
}

pg_up() {
  local data=$STACK_DIR/postgres/data logfile=$STACK_DIR/postgres/postgres.log bin
  bin=$(pg_bin) || true
  if [ -z "$bin" ]; then apt_install postgresql; bin=$(pg_bin); fi
  mkdir -p "$STACK_DIR/postgres"
  if [ "$(id -u)" = 0 ]; then
    id "$PG_OS_USER" >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin "$PG_OS_USER"
    chown "$PG_OS_USER" "$STACK_DIR/postgres"
    # The owner must be able to reach the data directory through every parent.
    local d=$STACK_DIR
    while [ "$d" != / ]; do chmod o+x "$d" 2>/dev/null || true; d=$(dirname "$d"); done
  fi
  if [ -f "$data/postmaster.pid" ] && pg_as_owner "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
    log "postgres already running on $PG_PORT"
    return
  fi
  check_port_free postgres "$PG_PORT" STREAMSEG_PG_PORT
  if [ ! -f "$data/PG_VERSION" ]; then
    log "initdb $data"
    pg_as_owner "$bin/initdb" -D "$data" -U postgres --auth=trust --encoding=UTF8 --no-locale \
      >"$STACK_DIR/postgres/initdb.log" 2>&1 || fail postgres "initdb failed" "$STACK_DIR/postgres/initdb.log"
  fi
  touch "$logfile"
  [ "$(id -u)" != 0 ] || chown "$PG_OS_USER" "$logfile"
  log "starting postgres on 127.0.0.1:$PG_PORT"
  pg_as_owner "$bin/pg_ctl" -D "$data" -l "$logfile" -w -t "$READY_TIMEOUT_SECONDS" \
    -o "-p $PG_PORT -k /tmp -c listen_addresses=127.0.0.1 -c max_connections=200 -c shared_buffers=256MB -c max_wal_size=2GB -c checkpoint_timeout=15min" \
    start >/dev/null || fail postgres "did not start" "$logfile"
  wait_until postgres "$logfile" "$bin/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"
  # Least privilege: the services connect as a role that owns its database and nothing else.
  "$bin/psql" -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 >/dev/null <<SQL || fail postgres "could not create role and database" "$logfile"
SELECT 'CREATE ROLE $PG_USER LOGIN CREATEDB PASSWORD ''streamseg'''
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PG_USER') \gexec
SELECT 'CREATE DATABASE $PG_DB OWNER $PG_USER'
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$PG_DB') \gexec
SQL
}

pg_down() {
  local data=$STACK_DIR/postgres/data bin
  bin=$(pg_bin) || return 0
  if [ -f "$data/postmaster.pid" ]; then
    log "stopping postgres"
    pg_as_owner "$bin/pg_ctl" -D "$data" -m fast -w stop >/dev/null 2>&1 || true
  fi
}

# ---------------------------------------------------------------- Redis
redis_up() {
  local dir=$STACK_DIR/redis pidfile=$STACK_DIR/redis/redis.pid logfile=$STACK_DIR/redis/redis.log
  command -v redis-server >/dev/null || apt_install redis-server
  mkdir -p "$dir"
  if pid_alive "$pidfile"; then log "redis already running on $REDIS_PORT"; return; fi
  check_port_free redis "$REDIS_PORT" STREAMSEG_REDIS_PORT
  log "starting redis on 127.0.0.1:$REDIS_PORT"
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$dir" --daemonize yes \
    --pidfile "$pidfile" --logfile "$logfile" --save '' --appendonly no --protected-mode yes \
    || fail redis "did not start" "$logfile"
  wait_until redis "$logfile" sh -c "redis-cli -p $REDIS_PORT ping 2>/dev/null | grep -q PONG"
}

redis_down() {
  local pidfile=$STACK_DIR/redis/redis.pid
  if pid_alive "$pidfile"; then
    log "stopping redis"
    local pid
    pid=$(cat "$pidfile")
    redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || kill "$pid" 2>/dev/null || true
    wait_until redis "$STACK_DIR/redis/redis.log" sh -c "! kill -0 $pid 2>/dev/null"
  fi
}

# ---------------------------------------------------------------- Kafka
kafka_fetch() {
  if [ -f "$KAFKA_LIBS/kafka_2.13-$KAFKA_VERSION.jar" ]; then return; fi
  command -v java >/dev/null || apt_install openjdk-17-jre-headless
  command -v mvn >/dev/null || apt_install maven
  mkdir -p "$CACHE_DIR"
  local tmp=$KAFKA_LIBS.partial logfile=$CACHE_DIR/kafka-fetch.log
  rm -rf "$tmp"
  log "fetching Apache Kafka $KAFKA_VERSION from Maven Central into $KAFKA_LIBS"
  mvn -B -q -f "$ROOT/deploy/kafka/pom.xml" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$tmp" >"$logfile" 2>&1 \
    || fail kafka "mvn could not fetch the Kafka jars" "$logfile"
  mv "$tmp" "$KAFKA_LIBS"
}

kafka_up() {
  local dir=$STACK_DIR/kafka pidfile=$STACK_DIR/kafka/kafka.pid logfile=$STACK_DIR/kafka/server.log
  kafka_fetch
  mkdir -p "$dir/data"
  if pid_alive "$pidfile"; then log "kafka already running on $KAFKA_PORT"; return; fi
  check_port_free kafka "$KAFKA_PORT" STREAMSEG_KAFKA_PORT
  check_port_free kafka-controller "$CONTROLLER_PORT" STREAMSEG_KAFKA_PORT
  sed -e "s#@KAFKA_PORT@#$KAFKA_PORT#g" -e "s#@CONTROLLER_PORT@#$CONTROLLER_PORT#g" \
    -e "s#@DATA_DIR@#$dir/data#g" "$ROOT/deploy/kafka/server.properties" >"$dir/server.properties"
  cp "$ROOT/deploy/kafka/log4j2.properties" "$dir/log4j2.properties"
  local java_opts=(-Xms"$KAFKA_HEAP" -Xmx"$KAFKA_HEAP" -XX:+UseG1GC -Djava.awt.headless=true
    -Dlog4j2.configurationFile="$dir/log4j2.properties" -Dkafka.logs.dir="$dir")
  if [ ! -f "$dir/data/meta.properties" ]; then
    log "formatting kafka storage"
    java "${java_opts[@]}" -cp "$KAFKA_LIBS/*" kafka.tools.StorageTool format \
      -t "$(java -cp "$KAFKA_LIBS/*" kafka.tools.StorageTool random-uuid)" \
      -c "$dir/server.properties" >"$dir/format.log" 2>&1 \
      || fail kafka "storage format failed" "$dir/format.log"
  fi
  log "starting kafka $KAFKA_VERSION (KRaft) on 127.0.0.1:$KAFKA_PORT"
  : >"$logfile"
  nohup java "${java_opts[@]}" -cp "$KAFKA_LIBS/*" kafka.Kafka "$dir/server.properties" \
    >>"$logfile" 2>&1 </dev/null &
  echo $! >"$pidfile"
  wait_until kafka "$logfile" kafka_ready "$pidfile" "$logfile"
}

kafka_ready() {
  pid_alive "$1" || fail kafka "exited during start-up" "$2"
  port_open "$KAFKA_PORT" && grep -q 'Kafka Server started' "$2"
}

kafka_down() {
  local pidfile=$STACK_DIR/kafka/kafka.pid
  if pid_alive "$pidfile"; then
    log "stopping kafka"
    local pid
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + 30))
    while kill -0 "$pid" 2>/dev/null; do
      if [ $SECONDS -ge $deadline ]; then kill -9 "$pid" 2>/dev/null || true; fi
      sleep 0.3
    done
  fi
  rm -f "$pidfile"
}

# ---------------------------------------------------------------- commands
print_env() {
  echo "export STREAMSEG_DATABASE_URL=${STREAMSEG_DATABASE_URL:-postgresql+asyncpg://$PG_USER:streamseg@127.0.0.1:$PG_PORT/$PG_DB}"
  echo "export STREAMSEG_REDIS_URL=${STREAMSEG_REDIS_URL:-redis://127.0.0.1:$REDIS_PORT/0}"
  echo "export STREAMSEG_KAFKA_BOOTSTRAP=${STREAMSEG_KAFKA_BOOTSTRAP:-127.0.0.1:$KAFKA_PORT}"
}

cmd_up() {
  mkdir -p "$STACK_DIR"
  if [ -n "${STREAMSEG_DATABASE_URL:-}" ]; then log "postgres: using STREAMSEG_DATABASE_URL"; else pg_up; fi
  if [ -n "${STREAMSEG_REDIS_URL:-}" ]; then log "redis: using STREAMSEG_REDIS_URL"; else redis_up; fi
  if [ -n "${STREAMSEG_KAFKA_BOOTSTRAP:-}" ]; then log "kafka: using STREAMSEG_KAFKA_BOOTSTRAP"; else kafka_up; fi
  print_env >"$STACK_DIR/stack.env"
  log "ready; connection settings in $STACK_DIR/stack.env"
}

cmd_down() {
  [ -n "${STREAMSEG_KAFKA_BOOTSTRAP:-}" ] || kafka_down
  [ -n "${STREAMSEG_REDIS_URL:-}" ] || redis_down
  [ -n "${STREAMSEG_DATABASE_URL:-}" ] || pg_down
}

cmd_status() {
  local rc=0 bin
  bin=$(pg_bin) || true
  if [ -n "$bin" ] && "$bin/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"; then
    echo "postgres  up    127.0.0.1:$PG_PORT"
  else echo "postgres  down  (log: $STACK_DIR/postgres/postgres.log)"; rc=1; fi
  if pid_alive "$STACK_DIR/redis/redis.pid"; then echo "redis     up    127.0.0.1:$REDIS_PORT"
  else echo "redis     down  (log: $STACK_DIR/redis/redis.log)"; rc=1; fi
  if pid_alive "$STACK_DIR/kafka/kafka.pid" && port_open "$KAFKA_PORT"; then
    echo "kafka     up    127.0.0.1:$KAFKA_PORT (Apache Kafka $KAFKA_VERSION, KRaft)"
  else echo "kafka     down  (log: $STACK_DIR/kafka/server.log)"; rc=1; fi
  return $rc
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  env) print_env ;;
  *) echo "usage: $0 up|down|status|env" >&2; exit 2 ;;
esac
