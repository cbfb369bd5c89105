#!/usr/bin/env bash
# The native stack: real Apache Kafka (KRaft: one combined node, or KAFKA_NODES=3 for a cluster of
# three combined broker+controller nodes), PostgreSQL and Elasticsearch, run from Maven Central
# artifacts and Debian's PostgreSQL binaries, without Docker.
#
#   stack.sh up      fetch what is missing, configure, start, wait until each answers (idempotent)
#   stack.sh down    stop exactly the processes `up` started (by their recorded pids)
#   stack.sh clean   down, then wipe the state folder (downloads stay in Maven's local repository)
#   stack.sh status  show what runs
#   stack.sh quorum  the KRaft quorum (leader, voters) as Kafka's metadata-quorum tool reports it
#   stack.sh env     print the addresses as shell assignments
#   stack.sh stop|start kafka|kafka-N|postgres|elasticsearch   one server (outage, chaos, cluster tests)
#   stack.sh kill kafka|kafka-N      SIGKILL a node (or all): a crash, for the chaos and cluster tests
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HERE="$REPO_ROOT/deploy/local"
# An explicit KAFKA_NODES is a request (checked against what runs); stack.conf only defaults it.
KAFKA_NODES_ASKED="${KAFKA_NODES:-}"
# KAFKA_AUTH=scram: SASL/SCRAM-SHA-512 + the StandardAuthorizer, a user per KafkaUser manifest.
KAFKA_AUTH_ASKED="${KAFKA_AUTH:-}"
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

# --- Kafka ---------------------------------------------------------------------------------------
# KAFKA_NODES=1 (default): one combined broker+controller, as before, state in kafka/.
# KAFKA_NODES=N>1: N combined nodes with a static N-voter KRaft quorum, state in kafka-<N>nodes/node-<i>/.
# Node i listens on KAFKA_PORT+10*(i-1) (broker) and KAFKA_CONTROLLER_PORT+10*(i-1) (controller).
# Each layout keeps its own state, so switching between them never re-formats anything; only one
# layout runs at a time (they share the first node's ports).

kafka_layout_dir() { # nodes
  if [ "${KAFKA_AUTH:-none}" = scram ]; then echo "$STATE_DIR/kafka-scram"; return; fi
  if [ "$1" = 1 ]; then echo "$STATE_DIR/kafka"; else echo "$STATE_DIR/kafka-${1}nodes"; fi
}
kafka_node_dir() { # node
  if [ "$KAFKA_NODES" = 1 ]; then kafka_layout_dir 1; else echo "$(kafka_layout_dir "$KAFKA_NODES")/node-$1"; fi
}
kafka_node_port() { echo $((KAFKA_PORT + 10 * ($1 - 1))); }
kafka_node_controller_port() { echo $((KAFKA_CONTROLLER_PORT + 10 * ($1 - 1))); }
kafka_nodes() { seq 1 "$KAFKA_NODES"; }
kafka_bootstrap() {
  local i list=""
  for i in $(kafka_nodes); do list="${list:+$list,}127.0.0.1:$(kafka_node_port "$i")"; done
  echo "$list"
}
kafka_pidfile() { echo "$(kafka_node_dir "$1")/kafka.pid"; }

# Every Kafka pid file of every layout that has one, "<nodes> <pidfile>" per line.
kafka_all_pidfiles() {
  local f nodes
  for f in "$STATE_DIR"/kafka/kafka.pid "$STATE_DIR"/kafka-scram/kafka.pid "$STATE_DIR"/kafka-*nodes/node-*/kafka.pid; do
    [ -e "$f" ] || continue
    case "$f" in
      "$STATE_DIR"/kafka/kafka.pid|"$STATE_DIR"/kafka-scram/kafka.pid) nodes=1 ;;
      *) nodes="${f#"$STATE_DIR"/kafka-}"; nodes="${nodes%%nodes/*}" ;;
    esac
    echo "$nodes $f"
  done
}

# The node count of the layout whose nodes run now (empty when none runs).
kafka_running_layout() {
  local nodes f
  while read -r nodes f; do
    if pid_alive "$f" kafka.Kafka; then echo "$nodes"; return; fi
  done < <(kafka_all_pidfiles)
}

# The auth of the layout that runs now: scram, none, or empty when no Kafka runs.
kafka_running_auth() {
  if pid_alive "$STATE_DIR/kafka-scram/kafka.pid" kafka.Kafka; then echo scram
  elif [ -n "$(kafka_running_layout)" ]; then echo none
  fi
}

# KAFKA_AUTH (none|scram) like KAFKA_NODES: asked, else what runs, else (stop/start) what `up`
# started last, else none. The scram layout has its own state (kafka-scram/) and one node.
resolve_kafka_auth() { # up|one
  local running
  running="$(kafka_running_auth)"
  case "$KAFKA_AUTH_ASKED" in
    ""|none|scram) ;;
    *) die "KAFKA_AUTH must be none or scram (got '$KAFKA_AUTH_ASKED')" ;;
  esac
  if [ -n "$KAFKA_AUTH_ASKED" ]; then
    if [ -n "$running" ] && [ "$running" != "$KAFKA_AUTH_ASKED" ]; then
      die "Kafka runs with KAFKA_AUTH=$running, KAFKA_AUTH=$KAFKA_AUTH_ASKED was asked for: run 'make down' first (each mode keeps its own data)"
    fi
    KAFKA_AUTH="$KAFKA_AUTH_ASKED"
  elif [ -n "$running" ]; then
    KAFKA_AUTH="$running"
  elif [ "$1" = one ] && [ -s "$STATE_DIR/kafka.auth" ]; then
    KAFKA_AUTH="$(cat "$STATE_DIR/kafka.auth")"
  else
    KAFKA_AUTH=none
  fi
  if [ "$KAFKA_AUTH" = scram ] && [ -n "$KAFKA_NODES_ASKED" ] && [ "$KAFKA_NODES_ASKED" != 1 ]; then
    die "KAFKA_AUTH=scram runs one Kafka node (KAFKA_NODES=$KAFKA_NODES_ASKED was asked for)"
  fi
  [ "$KAFKA_AUTH" = scram ] && KAFKA_NODES_ASKED=1
  return 0
}

# Which layout a command works on: KAFKA_NODES when asked for, else the one that runs, else (for
# `up`) one node, or (for stop/start) the layout `up` last started. Asking for another layout
# than the running one is an error: the two would fight over the first node's ports.
resolve_kafka_nodes() { # up|one
  local running
  running="$(kafka_running_layout)"
  if [ -n "$KAFKA_NODES_ASKED" ]; then
    case "$KAFKA_NODES_ASKED" in
      [1-9]) ;;
      *) die "KAFKA_NODES must be a node count from 1 to 9 (got '$KAFKA_NODES_ASKED')" ;;
    esac
    if [ -n "$running" ] && [ "$running" != "$KAFKA_NODES_ASKED" ]; then
      die "Kafka runs as a $running-node stack, KAFKA_NODES=$KAFKA_NODES_ASKED was asked for: run 'make down' first (each layout keeps its own data; nothing is lost)"
    fi
    KAFKA_NODES="$KAFKA_NODES_ASKED"
  elif [ -n "$running" ]; then
    KAFKA_NODES="$running"
  elif [ "$1" = one ] && [ -s "$STATE_DIR/kafka.nodes" ]; then
    KAFKA_NODES="$(cat "$STATE_DIR/kafka.nodes")"
  else
    KAFKA_NODES=1
  fi
  if [ -z "$KAFKA_HEAP" ]; then
    if [ "$KAFKA_NODES" = 1 ]; then KAFKA_HEAP=512m; else KAFKA_HEAP=384m; fi
  fi
}

kafka_server_properties() { # node dir
  local i="$1" dir="$2" rf=$((KAFKA_NODES < 3 ? KAFKA_NODES : 3)) min_isr quorum i2 voters=""
  min_isr=$((rf >= 3 ? 2 : 1))
  if [ "$KAFKA_NODES" = 1 ]; then
    # Dynamic quorum of one, formatted --standalone (unchanged from the first release).
    quorum="controller.quorum.bootstrap.servers=127.0.0.1:$KAFKA_CONTROLLER_PORT"
  else
    for i2 in $(kafka_nodes); do voters="${voters:+$voters,}$i2@127.0.0.1:$(kafka_node_controller_port "$i2")"; done
    quorum="controller.quorum.voters=$voters"
  fi
  cat <<EOF
process.roles=broker,controller
node.id=$i
$quorum
EOF
  if [ "$KAFKA_AUTH" = scram ]; then
    kafka_scram_properties "$i"
  else
    cat <<EOF
listeners=PLAINTEXT://127.0.0.1:$(kafka_node_port "$i"),CONTROLLER://127.0.0.1:$(kafka_node_controller_port "$i")
advertised.listeners=PLAINTEXT://127.0.0.1:$(kafka_node_port "$i")
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
EOF
  fi
  cat <<EOF
log.dirs=$dir/data
num.partitions=6
auto.create.topics.enable=false
# min(3, nodes) copies of everything; with 3+ copies a write needs 2 of them (acks=all).
default.replication.factor=$rf
min.insync.replicas=$min_isr
offsets.topic.replication.factor=$rf
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=$rf
transaction.state.log.min.isr=$min_isr
unclean.leader.election.enable=false
group.initial.rebalance.delay.ms=0
log.retention.hours=168
EOF
}

# KAFKA_AUTH=scram: clients (and the broker itself) log in with SCRAM-SHA-512 on SASL_PLAINTEXT;
# the controller listener uses PLAIN with the admin user only (SCRAM credentials live in the
# metadata log, which the controllers must read first). Every request is authorised by the
# StandardAuthorizer: the admin user (the stack's own tools) is the only super user, the services'
# users get exactly the ACLs of deploy/k8s/platform/kafka-users.yaml (kafka_acls.py).
kafka_scram_properties() { # node
  local pw; pw="$(kafka_password "$KAFKA_ADMIN_USER")"
  cat <<EOF
listeners=SASL_PLAINTEXT://127.0.0.1:$(kafka_node_port "$1"),CONTROLLER://127.0.0.1:$(kafka_node_controller_port "$1")
advertised.listeners=SASL_PLAINTEXT://127.0.0.1:$(kafka_node_port "$1")
controller.listener.names=CONTROLLER
inter.broker.listener.name=SASL_PLAINTEXT
listener.security.protocol.map=CONTROLLER:SASL_PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT
sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="$KAFKA_ADMIN_USER" password="$pw";
sasl.mechanism.controller.protocol=PLAIN
listener.name.controller.sasl.enabled.mechanisms=PLAIN
listener.name.controller.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username="$KAFKA_ADMIN_USER" password="$pw" user_$KAFKA_ADMIN_USER="$pw";
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:$KAFKA_ADMIN_USER
allow.everyone.if.no.acl.found=false
EOF
}

# A Kafka user's generated password (created on first use, kept in the secrets folder).
kafka_password() { # user
  local file="$STATE_DIR/secrets/kafka_${1}_password"
  mkdir -p "$STATE_DIR/secrets"; chmod 700 "$STATE_DIR/secrets"
  [ -s "$file" ] || head -c 24 /dev/urandom | base64 | tr -d '/+=' >"$file"
  cat "$file"
}

# The users of the KafkaUser manifests (one source), plus the stack's admin.
kafka_users() { "$REPO_ROOT/.venv/bin/python" "$HERE/kafka_acls.py" users; }

# The admin's credentials in the environment of one command (never on a command line).
kafka_as_admin() {
  if [ "$KAFKA_AUTH" = scram ]; then
    BLOG_KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT BLOG_KAFKA_SASL_MECHANISM=SCRAM-SHA-512 \
      BLOG_KAFKA_SASL_USERNAME="$KAFKA_ADMIN_USER" BLOG_KAFKA_SASL_PASSWORD="$(kafka_password "$KAFKA_ADMIN_USER")" "$@"
  else
    "$@"
  fi
}

# The cluster id of a formatted node (empty when the node is not formatted).
kafka_node_cluster_id() { sed -n 's/^cluster.id=//p' "$1/data/meta.properties" 2>/dev/null || true; }

kafka_format_node() { # node dir cluster_id
  local i="$1" dir="$2" cluster_id="$3" standalone=() scram=() user
  [ "$KAFKA_NODES" = 1 ] && standalone=(--standalone)
  if [ "$KAFKA_AUTH" = scram ]; then
    # Each user's SCRAM credential goes into the metadata at format time (the brokers need the
    # admin's to start); a user added to the manifests later needs a fresh layout (make clean).
    for user in "$KAFKA_ADMIN_USER" $(kafka_users); do
      scram+=(--add-scram "SCRAM-SHA-512=[name=$user,password=$(kafka_password "$user")]")
    done
  fi
  log "formatting Kafka storage of node $i (cluster $cluster_id)"
  java -Dlog4j2.configurationFile="$HERE/kafka-log4j2.xml" -Dkafka.logs.dir="$dir/logs" \
    -cp "$STATE_DIR/kafka/lib/*" kafka.tools.StorageTool format -g -t "$cluster_id" \
    -c "$dir/server.properties" "${standalone[@]}" "${scram[@]}" >"$dir/logs/format.log" 2>&1 \
    || die "kafka storage format of node $i failed; see $dir/logs/format.log"
}

# Format what is not formatted yet: all nodes with one cluster id, kept in the layout folder.
# A node whose data belongs to another cluster stops everything (never a half-broken cluster).
kafka_prepare() {
  local layout cluster_id i dir found formatted=""
  layout="$(kafka_layout_dir "$KAFKA_NODES")"
  mkdir -p "$layout"
  cluster_id="$(cat "$layout/cluster.id" 2>/dev/null || true)"
  for i in $(kafka_nodes); do
    found="$(kafka_node_cluster_id "$(kafka_node_dir "$i")")"
    [ -n "$found" ] && formatted="$formatted $i"
    if [ -n "$found" ] && [ -z "$cluster_id" ]; then cluster_id="$found"; fi
  done
  if [ -z "$cluster_id" ]; then
    cluster_id="$(java -cp "$STATE_DIR/kafka/lib/*" kafka.tools.StorageTool random-uuid)"
  fi
  echo "$cluster_id" >"$layout/cluster.id"
  for i in $(kafka_nodes); do
    dir="$(kafka_node_dir "$i")"
    mkdir -p "$dir/data" "$dir/logs"
    kafka_server_properties "$i" "$dir" >"$dir/server.properties"
    chmod 600 "$dir/server.properties"  # with KAFKA_AUTH=scram it holds the admin's password
    found="$(kafka_node_cluster_id "$dir")"
    if [ -z "$found" ]; then
      if [ -n "$formatted" ]; then
        log "WARNING: kafka node $i has no data while node(s)$formatted have: it joins empty and copies its partitions back from the others"
      fi
      kafka_format_node "$i" "$dir" "$cluster_id"
    elif [ "$found" != "$cluster_id" ]; then
      die "kafka node $i's data ($dir/data) belongs to cluster $found, not $cluster_id like the rest: wipe that layout ('make clean', or rm -rf $layout) rather than mix two clusters"
    fi
  done
}

kafka_start_node() { # node
  local i="$1" dir pidfile
  dir="$(kafka_node_dir "$i")"; pidfile="$(kafka_pidfile "$i")"
  if pid_alive "$pidfile" kafka.Kafka; then log "kafka node $i already running (pid $(cat "$pidfile"))"; return; fi
  log "starting kafka node $i on 127.0.0.1:$(kafka_node_port "$i") (controller $(kafka_node_controller_port "$i"), heap $KAFKA_HEAP)"
  # Its own session (setsid): a Ctrl-C in the terminal that ran `make run` is not for it.
  setsid nohup java -Xms"$KAFKA_HEAP" -Xmx"$KAFKA_HEAP" -XX:+UseG1GC \
    -Dlog4j2.configurationFile="$HERE/kafka-log4j2.xml" -Dkafka.logs.dir="$dir/logs" \
    -cp "$STATE_DIR/kafka/lib/*" kafka.Kafka "$dir/server.properties" \
    >"$dir/logs/kafka.out" 2>&1 </dev/null &
  echo $! >"$pidfile"
}

kafka_up() {
  local i
  kafka_prepare
  echo "$KAFKA_NODES" >"$STATE_DIR/kafka.nodes"
  echo "$KAFKA_AUTH" >"$STATE_DIR/kafka.auth"
  for i in $(kafka_nodes); do kafka_start_node "$i"; done
}

kafka_stop_node() { # node signal
  stop_pid "kafka node $1" "$(kafka_pidfile "$1")" kafka.Kafka "$2"
}

# All nodes at once: stopped one by one, the last ones would wait for a controller quorum that
# is already gone before they finish their controlled shutdown.
kafka_stop_all() { # signal
  local i pids=()
  for i in $(kafka_nodes); do
    kafka_stop_node "$i" "$1" &
    pids+=($!)
  done
  wait "${pids[@]}"
}

kafka_ready() { # [node]: that node answers and the cluster does a produce/consume round trip
  local args=("$(kafka_bootstrap)" --nodes "$KAFKA_NODES")
  [ -n "${1:-}" ] && args+=(--node "$1" --node-address "127.0.0.1:$(kafka_node_port "$1")")
  kafka_as_admin "$REPO_ROOT/.venv/bin/python" "$HERE/kafka_roundtrip.py" "${args[@]}"
}

kafka_wait_ready() { # [node]
  local what="kafka" logfile
  logfile="$(kafka_node_dir "${1:-1}")/logs/server.log"
  [ -n "${1:-}" ] && what="kafka node $1"
  wait_for "$what" "$logfile" kafka_ready "${1:-}"
}

# The KRaft quorum as Kafka's own tool reports it (DescribeQuorum): leader, epoch, voters' lag.
kafka_quorum() {
  local logs; logs="$(kafka_layout_dir "$KAFKA_NODES")/tool-logs"
  mkdir -p "$logs"
  java -Dlog4j2.configurationFile="$HERE/kafka-log4j2.xml" -Dkafka.logs.dir="$logs" \
    -cp "$STATE_DIR/kafka/lib/*" org.apache.kafka.tools.MetadataQuorumCommand \
    --bootstrap-server "$(kafka_bootstrap)" describe --status
}

# --- PostgreSQL ---------------------------------------------------------------------------------
pg_up() {
  local dir="$STATE_DIR/pg" pidfile="$STATE_DIR/pg/postgres.pid"
  [ -x "$PG_BIN/postgres" ] || die "PostgreSQL server binaries not found in $PG_BIN (Debian: apt-get install postgresql-15)"
  mkdir -p "$dir/run" "$STATE_DIR/secrets"
  chmod 700 "$STATE_DIR/secrets"
  if pid_alive "$pidfile" postgres; then
    log "postgres already running (pid $(cat "$pidfile"))"
    pg_service_roles  # a stack started before the roles existed gets them now
    return
  fi
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
  pg_service_roles
}

# One login role per service owning only its schema (like deploy/k8s/platform/postgres.yaml):
# the counter cannot read `publisher.*`, the publisher cannot write `counter.*`. The platform
# role is a member of each, so it (tests, tooling) can create a schema owned by a service role in
# a fresh database. A schema an older stack created owned by the platform role is handed over
# with its tables, views and free-standing sequences.
pg_service_roles() {
  local svc password
  for svc in $PG_SERVICE_ROLES; do
    if [ ! -s "$STATE_DIR/secrets/pg_${svc}_password" ]; then
      head -c 24 /dev/urandom | base64 | tr -d '/+=' >"$STATE_DIR/secrets/pg_${svc}_password"
    fi
    password="$(cat "$STATE_DIR/secrets/pg_${svc}_password")"
    runuser -u postgres -- "$PG_BIN/psql" -h "$STATE_DIR/pg/run" -p "$PG_PORT" -U postgres -d "$PG_DATABASE" -qtA \
      -v ON_ERROR_STOP=1 -v role="$svc" -v pw="$password" -v db="$PG_DATABASE" -v admin="$PG_USER" >/dev/null <<'SQL'
SET client_min_messages = warning;
SELECT format('CREATE ROLE %I LOGIN NOINHERIT PASSWORD %L', :'role', :'pw')
  WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'role') \gexec
SELECT format('ALTER ROLE %I LOGIN PASSWORD %L', :'role', :'pw') \gexec
SELECT format('GRANT %I TO %I', :'role', :'admin') \gexec
SELECT format('REVOKE ALL ON DATABASE %I FROM PUBLIC', :'db') \gexec
SELECT format('GRANT CONNECT, TEMPORARY ON DATABASE %I TO %I', :'db', :'role') \gexec
SELECT format('CREATE SCHEMA %I AUTHORIZATION %I', :'role', :'role')
  WHERE NOT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = :'role') \gexec
SELECT format('ALTER SCHEMA %I OWNER TO %I', :'role', :'role') \gexec
SELECT format('ALTER %s %I.%I OWNER TO %I',
              CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                             WHEN 'S' THEN 'SEQUENCE' ELSE 'TABLE' END,
              n.nspname, c.relname, :'role')
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = :'role' AND c.relkind IN ('r', 'p', 'v', 'm', 'S')
   AND pg_get_userbyid(c.relowner) <> :'role'
   -- A sequence owned by a column moves with its table.
   AND NOT (c.relkind = 'S' AND EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid
            AND d.classid = 'pg_class'::regclass AND d.deptype IN ('a', 'i'))) \gexec
SQL
  done
}

pg_service_dsn() { # service
  echo "postgresql://$1:$(cat "$STATE_DIR/secrets/pg_${1}_password")@127.0.0.1:$PG_PORT/$PG_DATABASE"
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
BLOG_KAFKA_BOOTSTRAP=$(kafka_bootstrap)
BLOG_POSTGRES_DSN=$(pg_dsn)
# Each service's own role (owner of its schema only); BLOG_POSTGRES_DSN is the platform's admin.
BLOG_PUBLISHER_DSN=$(pg_service_dsn publisher)
BLOG_COUNTER_DSN=$(pg_service_dsn counter)
BLOG_ES_URL=http://127.0.0.1:$ES_PORT
# What this stack was started with, so stack.sh stop|start|kill from its env finds the same nodes.
KAFKA_NODES=$KAFKA_NODES
KAFKA_AUTH=$KAFKA_AUTH
KAFKA_PORT=$KAFKA_PORT
KAFKA_CONTROLLER_PORT=$KAFKA_CONTROLLER_PORT
PG_PORT=$PG_PORT
ES_PORT=$ES_PORT
ES_TRANSPORT_PORT=$ES_TRANSPORT_PORT
EOF
  if [ "$KAFKA_AUTH" = scram ]; then
    local user upper
    {
      echo "# KAFKA_AUTH=scram: the stack's own tools (topics, tests, redrive) log in as the admin user;"
      echo "# each service as its own user, BLOG_KAFKA_<SVC>_PASSWORD (scripts/service-env.sh)."
      echo "BLOG_KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT"
      echo "BLOG_KAFKA_SASL_MECHANISM=SCRAM-SHA-512"
      echo "BLOG_KAFKA_SASL_USERNAME=$KAFKA_ADMIN_USER"
      echo "BLOG_KAFKA_SASL_PASSWORD=$(kafka_password "$KAFKA_ADMIN_USER")"
      for user in $(kafka_users); do
        upper="$(echo "$user" | tr '[:lower:]-' '[:upper:]_')"
        echo "BLOG_KAFKA_${upper}_PASSWORD=$(kafka_password "$user")"
      done
    } >>"$STATE_DIR/stack.env"
  fi
  chmod 600 "$STATE_DIR/stack.env"
}

cmd_up() {
  need_root; check_java
  [ -x "$REPO_ROOT/.venv/bin/python" ] || die "no .venv: run 'make install' (uv sync) first"
  resolve_state_dir
  resolve_kafka_auth up
  resolve_kafka_nodes up
  local started=$SECONDS
  fetch
  chmod -R a+rX "$STATE_DIR/es/dist"
  kafka_up; pg_up; es_up
  wait_for postgres "$STATE_DIR/pg/postgres.log" pg_ready
  log "postgres ready"
  kafka_wait_ready
  log "kafka ready: $KAFKA_NODES node(s) at $(kafka_bootstrap) (produce/consume round trip)"
  if [ "$KAFKA_AUTH" = scram ]; then
    kafka_as_admin "$REPO_ROOT/.venv/bin/python" "$HERE/kafka_acls.py" apply "$(kafka_bootstrap)" >&2 \
      || die "applying the KafkaUsers' ACLs failed"
    log "kafka: SASL/SCRAM-SHA-512 + StandardAuthorizer; users and ACLs of deploy/k8s/platform/kafka-users.yaml"
  fi
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
  # Every layout's nodes that run, together (see kafka_stop_all).
  local nodes f pids=()
  while read -r nodes f; do
    stop_pid "kafka node $(basename "$(dirname "$f")") ($nodes-node layout)" "$f" kafka.Kafka TERM &
    pids+=($!)
  done < <(kafka_all_pidfiles)
  [ ${#pids[@]} -eq 0 ] || wait "${pids[@]}"
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
  resolve_kafka_auth one
  resolve_kafka_nodes one
  local name pidfile pattern i
  show() { # name pidfile pattern
    if pid_alive "$2" "$3"; then
      printf '%-14s running (pid %s)\n' "$1" "$(cat "$2")"
    else
      printf '%-14s stopped\n' "$1"
    fi
  }
  for i in $(kafka_nodes); do
    if [ "$KAFKA_NODES" = 1 ]; then name=kafka; else name="kafka-$i"; fi
    show "$name" "$(kafka_pidfile "$i")" kafka.Kafka
    [ "$KAFKA_NODES" = 1 ] || printf '%-14s   127.0.0.1:%s, controller %s\n' "" "$(kafka_node_port "$i")" "$(kafka_node_controller_port "$i")"
  done
  show postgres "$STATE_DIR/pg/postgres.pid" postgres
  show elasticsearch "$STATE_DIR/es/es.pid" org.elasticsearch
}

# One server at a time, for the outage, chaos and cluster tests (the others keep running).
# `kafka` is every node of the layout; `kafka-N` one node. `kill` is SIGKILL (a crash).
cmd_one() { # stop|start|kill component
  STATE_DIR="$(readlink -f "$STATE_DIR")"
  resolve_kafka_auth one
  resolve_kafka_nodes one
  local node=""
  case "$2" in
    kafka-[1-9])
      node="${2#kafka-}"
      [ "$node" -le "$KAFKA_NODES" ] || die "no $2: Kafka runs $KAFKA_NODES node(s)"
      ;;
  esac
  case "$1:$2" in
    stop:kafka) kafka_stop_all TERM ;;
    kill:kafka) kafka_stop_all KILL ;;
    stop:kafka-*) kafka_stop_node "$node" TERM ;;
    kill:kafka-*) kafka_stop_node "$node" KILL ;;
    stop:postgres) stop_pid postgres "$STATE_DIR/pg/postgres.pid" postgres INT ;;
    stop:elasticsearch) stop_pid elasticsearch "$STATE_DIR/es/es.pid" org.elasticsearch TERM ;;
    start:kafka) kafka_up; kafka_wait_ready ;;
    start:kafka-*) kafka_prepare; kafka_start_node "$node"; kafka_wait_ready "$node" ;;
    start:postgres) pg_up; wait_for postgres "$STATE_DIR/pg/postgres.log" pg_ready ;;
    start:elasticsearch) es_up; wait_for elasticsearch "$STATE_DIR/es/logs/blog-local.log" es_ready ;;
    *) die "usage: $0 stop|start|kill kafka|kafka-N|postgres|elasticsearch (kill: kafka nodes only)" ;;
  esac
}

case "${1:-}" in
  up) cmd_up ;;
  stop|start|kill) need_root; cmd_one "$1" "${2:-}" ;;
  down) cmd_down ;;
  clean) cmd_clean ;;
  status) cmd_status ;;
  quorum) STATE_DIR="$(readlink -f "$STATE_DIR")"; resolve_kafka_auth one; resolve_kafka_nodes one; kafka_quorum ;;
  env) STATE_DIR="$(readlink -f "$STATE_DIR")"; cat "$STATE_DIR/stack.env" ;;
  *) echo "usage: $0 up|down|clean|status|quorum|env|stop|start|kill <component>" >&2; exit 2 ;;
esac
