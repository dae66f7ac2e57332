#!/usr/bin/env bash
# Run the whole test suite: installs the test dependencies, starts Redis if none answers.
#   ./scripts/test.sh [pytest arguments]
# Without arguments: everything under uvicorn (rungateway's default), then tests/live again
# under Daphne (RHGW_TEST_SERVER=daphne). With arguments: one pytest run with them.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
REDIS_HOST=${RHGW_TEST_REDIS_HOST:-127.0.0.1}
REDIS_PORT=${RHGW_TEST_REDIS_PORT:-6379}
export RHGW_TEST_REDIS_URL=${RHGW_TEST_REDIS_URL:-redis://$REDIS_HOST:$REDIS_PORT/15}

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test,docs]'

redis_answers() {
  .venv/bin/python - "$RHGW_TEST_REDIS_URL" <<'PY'
import sys, redis
try:
    redis.Redis.from_url(sys.argv[1], socket_connect_timeout=1).ping()
except Exception:
    sys.exit(1)
PY
}

if ! redis_answers; then
  if ! command -v redis-server >/dev/null 2>&1; then
    echo "Installing redis-server (apt-get)" >&2
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
  fi
  echo "Starting redis-server on $REDIS_HOST:$REDIS_PORT" >&2
  redis-server --daemonize yes --bind "$REDIS_HOST" --port "$REDIS_PORT" \
    --save "" --appendonly no --dir /tmp
  for _ in $(seq 50); do redis_answers && break; sleep 0.1; done
  redis_answers || { echo "Redis did not start" >&2; exit 1; }
fi

# The browser client's tests (tests/browser) drive Debian's Chromium with Playwright's Python
# package; Playwright never downloads a browser here. Without /usr/bin/chromium they skip.
if [ ! -x /usr/bin/chromium ]; then
  echo "Installing chromium (apt-get) for tests/browser" >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  { $SUDO apt-get update -qq \
      && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null; } \
    || echo "Could not install chromium: tests/browser will be skipped" >&2
fi

.venv/bin/ruff check reversehttp_gateway tests
.venv/bin/python manage.py makemigrations --check --dry-run -v0
# The documentation site (mkdocs.yml) must build without warnings: broken links fail here.
DOCS_SITE=$(mktemp -d)
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --site-dir "$DOCS_SITE"
rm -rf "$DOCS_SITE"
if [ $# -gt 0 ]; then
  exec .venv/bin/python -m pytest "$@"
fi
# The whole suite under rungateway's default server (uvicorn), then the live tests, which run
# real gateway processes, again under the other server rungateway offers (Daphne).
.venv/bin/python -m pytest
echo "Live tests again under rungateway --server daphne" >&2
export RHGW_TEST_SERVER=daphne
exec .venv/bin/python -m pytest tests/live
