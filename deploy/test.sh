#!/usr/bin/env bash
# The whole test suite on a fresh machine: dependencies, the real stack, lint, types, tests.
# Extra arguments go to pytest (e.g. `bash deploy/test.sh tests/unit -x`).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
bash deploy/venv.sh
echo "[test] ruff" >&2
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "[test] mypy --strict" >&2
.venv/bin/mypy
if [ "${1:-}" = "--lint-only" ]; then exit 0; fi
# The browser tests drive Debian's Chromium (never a downloaded browser); the ops kit's
# checks run Debian's promtool (tests/integration/test_ops_kit.py).
missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v promtool >/dev/null || missing+=(prometheus)
if [ ${#missing[@]} -gt 0 ]; then
  echo "[test] installing Debian's ${missing[*]}" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if [ "${CI:-}" = true ]; then
  # CI only: rebuild the committed dashboard assets with npm ci, and fail if they differ.
  echo "[test] dashboard assets" >&2
  bash deploy/dashboard.sh
fi
if [ "${CI:-}" = true ]; then
  # CI's stack lives in its own clone and ports, and is stopped when the run ends, so a
  # developer's stack left on the default ports can neither clash nor be reused.
  export STREAMSEG_PG_PORT=${STREAMSEG_PG_PORT:-55532} STREAMSEG_REDIS_PORT=${STREAMSEG_REDIS_PORT:-56479}
  export STREAMSEG_KAFKA_PORT=${STREAMSEG_KAFKA_PORT:-59192}
  trap 'bash deploy/stack.sh down' EXIT
fi
bash deploy/stack.sh up
echo "[test] pytest" >&2
.venv/bin/pytest "$@"
