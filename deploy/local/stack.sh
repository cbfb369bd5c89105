#!/usr/bin/env bash
# The native stack: real Apache Kafka (KRaft, one combined node), PostgreSQL and Elasticsearch,
# run from Maven Central artifacts and Debian's PostgreSQL binaries, without Docker.
#
#   stack.sh up      fetch what is missing, configure, start, wait until each answers (idempotent)
#   stack.sh down    stop exactly the processes `up` started (by their recorded pids)
#   stack.sh clean   down, then wipe the state folder (downloads stay in Maven's local repository)
#   stack.sh status  show what runs
#   stack.sh env     print the addresses as shell assignments
#   stack.sh stop|start kafka|postgres|elasticsearch   one server (outage and chaos tests)
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HERE="$REPO_ROOT/deploy/local"
# shellcheck source=stack.conf
. "$HERE/stack.conf"
case "$STATE_DIR" in /*) ;; *) STATE_DIR="$PWD/$STATE_DIR" ;; esac
# Every path is absolute from here on; `/` is a working directory the unprivileged server users
# can enter (a checkout under /root is not, and psql/pg_ctl warn about it).
cd /

log() { printf '[stack] %s\n' "$*" >&2; }
die() { printf '[stack] ERROR: %s\n' "$*" >&2; exit 1; }

need_root() { [ "$(id -u)" = 0 ] || die "run as root: it creates the '$ES_RUN_USER' account and starts PostgreSQL/Elasticsearch as unprivileged users"; }

# --- state folder -------------------------------------------------------------------------------
# PostgreSQL and Elasticsearch run as unprivileged users, which must traverse every directory on
# the way to their data. When the checkout sits under a private folder (e.g. /root, mode 700) they
# cannot, so the state then lives under /var/tmp and .state is a symlink to it.
resolve_state_dir() {
  if [ -L "$STATE_DIR" ] || [ -d "$STATE_DIR" ]; then
    STATE_DIR="$(readlink -f "$STATE_DIR")"
    mkdir -p "$STATE_DIR"  # a symlink's target may have been wiped by hand
    return
  fi
  local parent; parent="$(dirname "$STATE_DIR")"
  if runuser -u postgres -- test -x "$parent" 2>/dev/null; then
    mkdir -p "$STATE_DIR"
  else
    local elsewhere; elsewhere="/var/tmp/blog-platform-$(printf '%s' "$REPO_ROOT" | sha1sum | cut -c1-10)"
    log "$parent is not traversable by unprivileged users; state goes to $elsewhere (symlinked from $STATE_DIR)"
    mkdir -p "$elsewhere"
    ln -sfn "$elsewhere" "$STATE_DIR"
    STATE_DIR="$elsewhere"
  fi
  chmod 755 "$STATE_DIR"
}

# --- processes by pid ---------------------------------------------------------------------------
# A pid file counts only while its process is alive and is the program we started (pids recycle).
pid_alive() { # pidfile pattern
  local pidfile="$1" pattern="$2" pid
  [ -s "$pidfile" ] || return 1
  pid="$(head -n1 "$pidfile")"
  [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$pattern"
}

stop_pid() { # name pidfile pattern signal
  local name="$1" pidfile="$2" pattern="$3" signal="$4" pid i
  if ! pid_alive "$pidfile" "$pattern"; then
    rm -f "$pidfile"; return 0
  fi
  pid="$(head -n1 "$pidfile")"
  log "stopping $name (pid $pid)"
  kill "-$signal" "$pid" 2>/dev/null || true
  for i in $(seq 1 300); do
    [ -d "/proc/$pid" ] || break
    sleep 0.1
  done
  if [ -d "/proc/$pid" ]; then
    log "$name did not stop within 30 s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}

wait_for() { # name logfile command...
  local name="$1" logfile="$2"; shift 2
  local deadline=$((SECONDS + STACK_START_TIMEOUT))
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then
      die "$name did not become ready within ${STACK_START_TIMEOUT}s; see its log: $logfile"
    fi
    sleep 0.5
  done
}

java_home() { dirname "$(dirname "$(readlink -f "$(command -v java)")")"; }

check_java() {
  command -v java >/dev/null || die "java not found: install OpenJDK 17+ (Debian: apt-get install openjdk-17-jre-headless)"
  local major
  major="$(java -XshowSettings:properties -version 2>&1 | awk -F'= ' '/java.specification.version/{print $2}')"
  [ "${major%%.*}" -ge 17 ] 2>/dev/null || die "Java 17+ is needed for Kafka 4 and Elasticsearch 8 (found $major)"
  command -v mvn >/dev/null || die "mvn not found: install Maven (Debian: apt-get install maven)"
}

# --- fetch --------------------------------------------------------------------------------------
fetch() {
  local stamp; stamp="$(sha1sum "$HERE/pom.xml" | cut -c1-12)"
  if [ "$(cat "$STATE_DIR/fetched" 2>/dev/null)" = "$stamp" ]; then return; fi
  log "resolving Kafka, kafka-tools and Elasticsearch from Maven Central (first run downloads ~200 MB)"
  mvn -q -B -f "$HERE/pom.xml" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$STATE_DIR/kafka/lib"
  mvn -q -B -f "$HERE/pom.xml" dependency:unpack -DoutputDirectory="$STATE_DIR/es/dist"
  echo "$stamp" >"$STATE_DIR/fetched"
}

es_home() { find "$STATE_DIR/es/dist" -mindepth 1 -maxdepth 1 -type d -name 'elasticsearch-*' | head -n1; }

# --- Kafka --------------------------------------------------------------------------------------
kafka_up() {
  local dir="$STATE_DIR/kafka" pidfile="$STATE_DIR/kafka/kafka.pid"
  mkdir -p "$dir/data" "$dir/logs"
  if pid_alive "$pidfile" kafka.Kafka; then log "kafka already running (pid $(cat "$pidfile"))"; return; fi
  cat >"$dir/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$dir/data
num.partitions=6
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
group.initial.rebalance.delay.ms=0
log.retention.hours=168
EOF
  local classpath="$dir/lib/*"
  if [ ! -f "$dir/data/meta.properties" ]; then
    local cluster_id
    cluster_id="$(java -cp "$classpath" kafka.tools.StorageTool random-uuid)"
    log "formatting Kafka storage (cluster $cluster_id)"
    java -Dlog4j2.configurationFile="$HERE/kafka-log4j2.xml" -Dkafka.logs.dir="$dir/logs" \
      -cp "$classpath" kafka.tools.StorageTool format -g -t "$cluster_id" \
      -c "$dir/server.properties" --standalone >"$dir/logs/format.log" 2>&1 \
      || die "kafka storage format failed; see $dir/logs/format.log"
  fi
  log "starting kafka on 127.0.0.1:$KAFKA_PORT"
  # Its own session (setsid): a Ctrl-C in the terminal that ran `make run` is not for it.
  setsid nohup java -Xms"$KAFKA_HEAP" -Xmx"$KAFKA_HEAP" -XX:+UseG1GC \
    -Dlog4j2.configurationFile="$HERE/kafka-log4j2.xml" -Dkafka.logs.dir="$dir/logs" \
    -cp "$classpath" kafka.Kafka "$dir/server.properties" \
    >"$dir/logs/kafka.out" 2>&1 </dev/null &
  echo $! >"$pidfile"
}

kafka_ready() {
  # A produce/consume round trip, not just an open port.
  "$REPO_ROOT/.venv/bin/python" "$HERE/kafka_roundtrip.py" "127.0.0.1:$KAFKA_PORT"
}

# --- PostgreSQL ---------------------------------------------------------------------------------
pg_up() {
  local dir="$STATE_DIR/pg" pidfile="$STATE_DIR/pg/postgres.pid"
  [ -x "$PG_BIN/postgres" ] || die "PostgreSQL server binaries not found in $PG_BIN (Debian: apt-get install postgresql-15)"
  mkdir -p "$dir/run" "$STATE_DIR/secrets"
  chmod 700 "$STATE_DIR/secrets"
  if pid_alive "$pidfile" postgres; then log "postgres already running (pid $(cat "$pidfile"))"; return; fi
  if [ ! -s "$STATE_DIR/secrets/pg_password" ]; then
    # Generated locally, never committed: the services read it from settings (DATABASE_URL).
    head -c 24 /dev/urandom | base64 | tr -d '/+=' >"$STATE_DIR/secrets/pg_password"
  fi
  chown -R postgres:postgres "$dir"
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    log "initialising PostgreSQL cluster in $dir/data"
    runuser -u postgres -- "$PG_BIN/initdb" -D "$dir/data" -U postgres -E UTF8 --locale=C.UTF-8 \
      --auth-local=peer --auth-host=scram-sha-256 >"$dir/initdb.log" 2>&1 \
      || die "initdb failed; see $dir/initdb.log"
    cat >>"$dir/data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$dir/run'
max_connections = 300
shared_buffers = 128MB
logging_collector = off
EOF
  fi
  log "starting postgres on 127.0.0.1:$PG_PORT"
  setsid -w runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 start >/dev/null \
    || die "postgres failed to start; see $dir/postgres.log"
  head -n1 "$dir/data/postmaster.pid" >"$pidfile"
  local password; password="$(cat "$STATE_DIR/secrets/pg_password")"
  # Role and database of the platform (idempotent); the role may create databases for tests.
  runuser -u postgres -- "$PG_BIN/psql" -h "$dir/run" -p "$PG_PORT" -U postgres -d postgres -qtA \
    -v ON_ERROR_STOP=1 -v user="$PG_USER" -v pw="$password" -v db="$PG_DATABASE" >/dev/null <<'SQL'
SELECT format('CREATE ROLE %I LOGIN CREATEDB PASSWORD %L', :'user', :'pw')
  WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'user') \gexec
SELECT format('ALTER ROLE %I PASSWORD %L', :'user', :'pw') \gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'user')
  WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'db') \gexec
SQL
}

pg_dsn() { echo "postgresql://$PG_USER:$(cat "$STATE_DIR/secrets/pg_password")@127.0.0.1:$PG_PORT/$PG_DATABASE"; }
pg_ready() { psql "$(pg_dsn)" -qtAc 'SELECT 1' | grep -qx 1; }

# --- Elasticsearch ------------------------------------------------------------------------------
es_up() {
  local dir="$STATE_DIR/es" pidfile="$STATE_DIR/es/es.pid" home
  home="$(es_home)"
  [ -n "$home" ] || die "no Elasticsearch distribution under $dir/dist"
  if pid_alive "$pidfile" org.elasticsearch; then log "elasticsearch already running (pid $(cat "$pidfile"))"; return; fi
  id -u "$ES_RUN_USER" >/dev/null 2>&1 \
    || useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$ES_RUN_USER"
  mkdir -p "$dir/data" "$dir/logs" "$dir/config"
  cp -r "$home/config/." "$dir/config/"
  cat >"$dir/config/elasticsearch.yml" <<EOF
cluster.name: blog-local
node.name: local
network.host: 127.0.0.1
http.port: $ES_PORT
transport.port: $ES_TRANSPORT_PORT
discovery.type: single-node
xpack.security.enabled: false
path.data: $dir/data
path.logs: $dir/logs
# A developer machine's disk may be fuller than production watermarks allow.
cluster.routing.allocation.disk.threshold_enabled: false
# Tests delete their indices by pattern.
action.destructive_requires_name: false
EOF
  chown -R "$ES_RUN_USER" "$dir"
  log "starting elasticsearch on 127.0.0.1:$ES_PORT"
  setsid -w runuser -u "$ES_RUN_USER" -- env ES_JAVA_HOME="$(java_home)" ES_PATH_CONF="$dir/config" \
    ES_JAVA_OPTS="-Xms$ES_HEAP -Xmx$ES_HEAP" \
    "$home/bin/elasticsearch" -d -p "$pidfile" >"$dir/logs/startup.out" 2>&1 \
    || die "elasticsearch failed to start; see $dir/logs/startup.out and $dir/logs/blog-local.log"
}

es_ready() {
  # This stripped build has no `GET /`: cluster health is the readiness check.
  curl -fsS "http://127.0.0.1:$ES_PORT/_cluster/health?wait_for_status=yellow&timeout=1s" \
    | grep -Eq '"status":"(yellow|green)"'
}

# --- commands -----------------------------------------------------------------------------------
write_env() {
  cat >"$STATE_DIR/stack.env" <<EOF
BLOG_KAFKA_BOOTSTRAP=127.0.0.1:$KAFKA_PORT
BLOG_POSTGRES_DSN=$(pg_dsn)
BLOG_ES_URL=http://127.0.0.1:$ES_PORT
EOF
  chmod 600 "$STATE_DIR/stack.env"
}

cmd_up() {
  need_root; check_java
  [ -x "$REPO_ROOT/.venv/bin/python" ] || die "no .venv: run 'make install' (uv sync) first"
  resolve_state_dir
  local started=$SECONDS
  fetch
  chmod -R a+rX "$STATE_DIR/es/dist"
  kafka_up; pg_up; es_up
  wait_for postgres "$STATE_DIR/pg/postgres.log" pg_ready
  log "postgres ready"
  wait_for kafka "$STATE_DIR/kafka/logs/server.log" kafka_ready
  log "kafka ready (produce/consume round trip)"
  wait_for elasticsearch "$STATE_DIR/es/logs/blog-local.log" es_ready
  log "elasticsearch ready (cluster health yellow/green)"
  write_env
  log "stack up in $((SECONDS - started)) s; addresses in $STATE_DIR/stack.env"
}

cmd_down() {
  [ -e "$STATE_DIR" ] || return 0
  STATE_DIR="$(readlink -f "$STATE_DIR")"
  stop_pid elasticsearch "$STATE_DIR/es/es.pid" org.elasticsearch TERM
  # SIGINT is PostgreSQL's "fast" shutdown: roll back open transactions, checkpoint, exit.
  stop_pid postgres "$STATE_DIR/pg/postgres.pid" postgres INT
  stop_pid kafka "$STATE_DIR/kafka/kafka.pid" kafka.Kafka TERM
}

cmd_clean() {
  # Both the folder and, when .state is a symlink to /var/tmp, the link itself.
  local link="$STATE_DIR" target
  target="$(readlink -f "$STATE_DIR" 2>/dev/null || true)"
  cmd_down
  [ -n "$target" ] && rm -rf "$target"
  rm -rf "$link"
  log "state wiped"
}

cmd_status() {
  [ -e "$STATE_DIR" ] || { echo "no state folder"; return; }
  STATE_DIR="$(readlink -f "$STATE_DIR")"
  local name pidfile pattern
  while read -r name pidfile pattern; do
    if pid_alive "$STATE_DIR/$pidfile" "$pattern"; then
      printf '%-14s running (pid %s)\n' "$name" "$(cat "$STATE_DIR/$pidfile")"
    else
      printf '%-14s stopped\n' "$name"
    fi
  done <<EOF
kafka kafka/kafka.pid kafka.Kafka
postgres pg/postgres.pid postgres
elasticsearch es/es.pid org.elasticsearch
EOF
}

# One server at a time, for the outage and chaos tests (the others keep running).
cmd_one() { # stop|start component
  STATE_DIR="$(readlink -f "$STATE_DIR")"
  case "$1:$2" in
    stop:kafka) stop_pid kafka "$STATE_DIR/kafka/kafka.pid" kafka.Kafka TERM ;;
    stop:postgres) stop_pid postgres "$STATE_DIR/pg/postgres.pid" postgres INT ;;
    stop:elasticsearch) stop_pid elasticsearch "$STATE_DIR/es/es.pid" org.elasticsearch TERM ;;
    start:kafka) kafka_up; wait_for kafka "$STATE_DIR/kafka/logs/server.log" kafka_ready ;;
    start:postgres) pg_up; wait_for postgres "$STATE_DIR/pg/postgres.log" pg_ready ;;
    start:elasticsearch) es_up; wait_for elasticsearch "$STATE_DIR/es/logs/blog-local.log" es_ready ;;
    *) die "usage: $0 stop|start kafka|postgres|elasticsearch" ;;
  esac
}

case "${1:-}" in
  up) cmd_up ;;
  stop|start) need_root; cmd_one "$1" "${2:-}" ;;
  down) cmd_down ;;
  clean) cmd_clean ;;
  status) cmd_status ;;
  env) STATE_DIR="$(readlink -f "$STATE_DIR")"; cat "$STATE_DIR/stack.env" ;;
  *) echo "usage: $0 up|down|clean|status|env" >&2; exit 2 ;;
esac
