#!/usr/bin/env bash
# Runs publisher, counter, indexer and the lag monitor in the foreground with prefixed logs; Ctrl-C (or SIGTERM)
# stops them cleanly (each gets SIGTERM and finishes its batch). Expects the stack's env (make run).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/service-env.sh
PY=.venv/bin/python

pids=()
stop() {
  trap - INT TERM
  echo "[run] stopping services..."
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
  echo "[run] stopped"
}
trap 'stop; exit 0' INT TERM

for svc in publisher counter indexer lagmon; do
  # Each service's output is prefixed with its name; exec keeps the pid the service's own. The
  # prefixer ignores Ctrl-C (which reaches the whole process group): it ends when the service's
  # output does, so the service's shutdown lines still reach the terminal.
  ( exec "$PY" -u -m "$svc" > >(trap '' INT; exec sed -u "s/^/[$svc] /") 2>&1 ) &
  pids+=($!)
done

host=127.0.0.1
for entry in "publisher:${PUBLISHER_PORT:-8000}" "counter:${COUNTER_PORT:-8001}" "indexer:${INDEXER_PORT:-8002}" \
  "lagmon:${LAGMON_PORT:-8003}"; do
  name=${entry%%:*}; port=${entry##*:}
  for _ in $(seq 1 120); do
    curl -fsS "http://$host:$port/healthz" >/dev/null 2>&1 && break
    sleep 0.5
  done
  if curl -fsS "http://$host:$port/healthz" >/dev/null 2>&1; then
    echo "[run] $name answering on http://$host:$port (/healthz ok)"
  else
    echo "[run] $name is not answering /healthz on port $port; see its log lines above"
  fi
done
echo "[run] consumer lag page: http://$host:${LAGMON_PORT:-8003}/"
echo "[run] create an author: make author NAME=alice   (Ctrl-C stops the services)"
wait -n "${pids[@]}" || true
stop
