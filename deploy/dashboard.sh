#!/usr/bin/env bash
# The dashboard's and the API reference pages' assets (services/api/web/static), built from
# dashboard/ with `npm ci`. By default it builds them apart and fails if they differ from
# the committed ones (CI runs it so: deploy/test.sh with CI=true); with --write it replaces
# the committed ones, after a change under dashboard/. `make run` needs none of this: the
# built assets are committed, so serving them needs no Node.js and no network.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATIC=$ROOT/services/api/web/static
if ! command -v npm >/dev/null; then
  echo "[dashboard] npm not found; installing Debian's nodejs and npm" >&2
  apt-get update -qq && apt-get install -y -qq nodejs npm >/dev/null
fi
cd "$ROOT/dashboard"
echo "[dashboard] npm ci" >&2
# No package's install script runs: none of these needs one to build.
npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >&2
if [ "${1:-}" = "--write" ]; then
  npm run --silent build >&2
  echo "[dashboard] wrote $STATIC" >&2
  exit 0
fi
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
STREAMSEG_STATIC_OUT=$OUT npm run --silent build >&2
if ! diff -r "$STATIC" "$OUT" >/dev/null; then
  echo "[dashboard] the committed assets differ from a build of dashboard/:" >&2
  diff -rq "$STATIC" "$OUT" >&2 || true
  echo "[dashboard] rebuild them with: bash deploy/dashboard.sh --write, and commit" >&2
  exit 1
fi
echo "[dashboard] the committed assets match a fresh build" >&2
