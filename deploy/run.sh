#!/usr/bin/env bash
# The main job: the real stack, migrations, and the three services, until Ctrl-C.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
bash deploy/venv.sh
stack_was_up=0
bash deploy/stack.sh status >/dev/null 2>&1 && stack_was_up=1
bash deploy/stack.sh up
set -a
# shellcheck disable=SC1091
. .stack/stack.env
set +a
export STREAMSEG_LOG_JSON=${STREAMSEG_LOG_JSON:-false}
.venv/bin/python -m shared.db upgrade

LOGS=$ROOT/.stack/logs
mkdir -p "$LOGS"
pids=()
cleanup() {
  trap - INT TERM EXIT
  echo "[run] stopping services" >&2
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ "$stack_was_up" = 0 ]; then bash deploy/stack.sh down; fi
  echo "[run] stopped" >&2
}
trap cleanup INT TERM EXIT

start() {
  local name=$1
  .venv/bin/python -m "services.$name" >"$LOGS/$name.log" 2>&1 &
  pids+=($!)
  echo "[run] $name started (pid $!, log $LOGS/$name.log)" >&2
}
start ingest
start segmenter
start api
start webhooks

wait_healthy() {
  local name=$1 url=$2 deadline=$((SECONDS + 60))
  until .venv/bin/python - "$url" <<'PY' 2>/dev/null
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=2) as r:
    sys.exit(0 if r.status == 200 else 1)
PY
  do
    if [ $SECONDS -ge $deadline ]; then
      echo "[run] ERROR: $name not healthy at $url after 60s; read $LOGS/$name.log:" >&2
      tail -n 20 "$LOGS/$name.log" >&2
      exit 1
    fi
    sleep 0.5
  done
  echo "[run] $name ready: $url" >&2
}
wait_healthy ingest http://127.0.0.1:8101/readyz
wait_healthy segmenter http://127.0.0.1:8102/readyz
wait_healthy api http://127.0.0.1:8100/readyz
wait_healthy webhooks http://127.0.0.1:8104/readyz

# A key for the examples below; each run makes a new one (list and revoke them with
# `python -m services.api.keys`).
KEY=$(.venv/bin/python -m services.api.keys create --name "make run $(date -u +%FT%TZ)" \
  --scope segments:read 2>/dev/null | sed -n 's/^key: *//p')
[ -n "$KEY" ] || { echo "[run] ERROR: could not create an API key" >&2; exit 1; }
# A second key, for whoever changes the definitions: reading segments does not need it.
DEFS_KEY=$(.venv/bin/python -m services.api.keys create --name "make run definitions $(date -u +%FT%TZ)" \
  --scope definitions:read --scope definitions:write 2>/dev/null | sed -n 's/^key: *//p')
[ -n "$DEFS_KEY" ] || { echo "[run] ERROR: could not create an API key" >&2; exit 1; }
# A third, for a system that writes customers' traits (a CRM, the sign-up).
TRAITS_KEY=$(.venv/bin/python -m services.api.keys create --name "make run traits $(date -u +%FT%TZ)" \
  --scope traits:write 2>/dev/null | sed -n 's/^key: *//p')
[ -n "$TRAITS_KEY" ] || { echo "[run] ERROR: could not create an API key" >&2; exit 1; }
# A fourth, for a person at the dashboard: every view, previews and activation included.
DASHBOARD_KEY=$(.venv/bin/python -m services.api.keys create --name "make run dashboard $(date -u +%FT%TZ)" \
  --scope segments:read --scope definitions:read --scope definitions:write 2>/dev/null | sed -n 's/^key: *//p')
[ -n "$DASHBOARD_KEY" ] || { echo "[run] ERROR: could not create an API key" >&2; exit 1; }

# Live traffic: a history of past shoppers first, then new events every second.
.venv/bin/python -m services.loadgen --rate "${STREAMSEG_RUN_RATE:-50}" \
  --customers "${STREAMSEG_RUN_CUSTOMERS:-2000}" --seed "${STREAMSEG_RUN_SEED:-1}" \
  >"$LOGS/loadgen.log" 2>&1 &
pids+=($!)
echo "[run] load generator started (pid $!, log $LOGS/loadgen.log)" >&2

cat <<MSG

StreamSeg is running with live shopper traffic. Ctrl-C stops everything.
  API:        http://127.0.0.1:8100        docs: http://127.0.0.1:8100/docs  http://127.0.0.1:8100/redoc
  dashboard:  http://127.0.0.1:8100/dashboard   sign in with: $DASHBOARD_KEY
  API key:    $KEY
  try:        curl -s -H "Authorization: Bearer $KEY" http://127.0.0.1:8100/v1/customers/c0000000/segments
              curl -s -H "Authorization: Bearer $KEY" http://127.0.0.1:8100/v1/segments
              curl -N -H "Authorization: Bearer $KEY" http://127.0.0.1:8100/v1/changes/stream
  definitions key: $DEFS_KEY
  try:        STREAMSEG_API_KEY=$DEFS_KEY .venv/bin/python -m services.cli definitions list
  traits key: $TRAITS_KEY
  try:        curl -s -X PATCH -H "Authorization: Bearer $TRAITS_KEY" -H 'content-type: application/json' -d '{"traits": {"country": "DE", "interests": ["running"]}}' http://127.0.0.1:8100/v1/customers/c0000000/traits
              curl -s -H "Authorization: Bearer $KEY" http://127.0.0.1:8100/v1/customers/c0000000/traits
  metrics:    http://127.0.0.1:8100/metrics  http://127.0.0.1:8101/metrics  http://127.0.0.1:8102/metrics
  logs:       $LOGS
MSG
wait -n "${pids[@]}" || true
echo "[run] a service exited; see $LOGS" >&2
