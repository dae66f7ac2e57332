#!/usr/bin/env bash
# Set up and run the gateway on the embedded default: SQLite, one process, no Redis.
#   ./scripts/quickstart.sh [host:port]      (default 127.0.0.1:8000)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e .
.venv/bin/python manage.py migrate --noinput -v0
ADDRESS=${1:-127.0.0.1:8000}
# Issued URLs point at the address served here, unless RHGW_BASE_URL says otherwise.
export RHGW_BASE_URL=${RHGW_BASE_URL:-http://$ADDRESS}
exec .venv/bin/python manage.py rungateway "$ADDRESS"
