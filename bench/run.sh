#!/usr/bin/env bash
# The relay benchmark of issue 5, in one command (docs/benchmarks.md).
#
#   bash bench/run.sh [--rounds N] [--duration S] [--quick]
#                     [--transports "longpoll longpoll-pipeline websocket ptth"]
#                     [--own-redis] [--broker redis|memory] [--no-install] [--no-nginx-origin]
#                     [--hold SECONDS] [--server uvicorn|daphne]
#                     [-- EXTRA compare.py ARGS]
#
# Installs what is missing (Debian wrk, nginx-light, libnginx-mod-http-echo via apt-get;
# uvicorn[standard] into the bench venv var/bench/venv), starts on 127.0.0.1 only:
#
#   :18201  Python origin (bench/origin.py, uvicorn)     :18202  nginx origin (refs_nginx.sh)
#   :18203  nginx proxy_pass -> :18201                   :18204  nginx proxy_pass -> :18202
#   :18250  the gateway (manage.py rungateway --server uvicorn|daphne, default uvicorn; Redis
#           broker, fresh SQLite DB in a temp
#           dir, vhost mode with VHOST_DOMAIN=gw.test:18250)     :18251  its PTTH listener
#   :18259  a private redis-server, only if none answers on 127.0.0.1:6379 (or with --own-redis)
#   one `reversehttp expose http://127.0.0.1:18201 --pollers 8` client per transport:
#           benchlp (long-poll), benchlq (long-poll --pipeline: application/http batches),
#           benchws (--transport websocket), benchpt (--transport ptth);
#           each only once `reversehttp expose --help` offers it
#
# then runs compare.py over all targets, interleaved round by round, for GET 100 B and
# POST 64 KiB at c=1, 10, 50, and writes var/bench/run-<stamp>.{json,md} (tables, issue-5
# target checks, machine). Everything it starts is stopped by PID on exit.
# --broker memory: the in-process queue instead of Redis (a diagnostic: how much of the cost is
# the Redis round trips; Redis is then neither started nor counted).
# --hold SECONDS: start everything, print the targets, keep them up that long (for profiling,
# e.g. py-spy against the printed PIDs), then stop; nothing is measured.
# --server daphne: the gateway serves with Daphne (rungateway --server daphne) instead of
# uvicorn, rungateway's default.
# Not part of the CI test run.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
OUT_DIR=${OUT_DIR:-$ROOT/var/bench}
BENCH_VENV=${BENCH_VENV:-$OUT_DIR/venv}
GW_PY=${GW_PY:-$ROOT/.venv/bin/python}
GW_BIN=$(dirname "$GW_PY")

export PY_ORIGIN_PORT=${PY_ORIGIN_PORT:-18201} ORIGIN_NGINX_PORT=${ORIGIN_NGINX_PORT:-18202}
export PROXY_PY_PORT=${PROXY_PY_PORT:-18203} PROXY_NGINX_PORT=${PROXY_NGINX_PORT:-18204}
GW_PORT=${GW_PORT:-18250}
PTTH_PORT=${PTTH_PORT:-18251}
OWN_REDIS_PORT=${OWN_REDIS_PORT:-18259}
SHARED_REDIS_PORT=${SHARED_REDIS_PORT:-6379}
POLLERS=${POLLERS:-8}

ARGS_GIVEN="$*"
ROUNDS=3
DURATION=10
WARMUP=2
TRANSPORTS="longpoll longpoll-pipeline websocket ptth"
OWN_REDIS=""
BROKER=redis
INSTALL=1
NGINX_ORIGIN=1
HOLD=""
SERVER=uvicorn
EXTRA=()
while [ $# -gt 0 ]; do
  case $1 in
    --rounds) ROUNDS=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --quick) ROUNDS=1; DURATION=3; WARMUP=1; shift ;;
    --transports) TRANSPORTS=$2; shift 2 ;;
    --own-redis) OWN_REDIS=1; shift ;;
    --broker) BROKER=$2; shift 2 ;;
    --no-install) INSTALL=""; shift ;;
    --no-nginx-origin) NGINX_ORIGIN=""; shift ;;
    --hold) HOLD=$2; shift 2 ;;
    --server) SERVER=$2; shift 2 ;;
    --) shift; EXTRA=("$@"); break ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

log() { printf '[run.sh %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

case $SERVER in daphne|uvicorn) ;; *) echo "--server daphne|uvicorn" >&2; exit 2 ;; esac

# ------------------------------------------------------------------ install what is missing
need_apt=()
command -v wrk >/dev/null || need_apt+=(wrk)
command -v nginx >/dev/null || need_apt+=(nginx-light)
[ -f /usr/lib/nginx/modules/ngx_http_echo_module.so ] || need_apt+=(libnginx-mod-http-echo)
command -v redis-server >/dev/null || need_apt+=(redis-server)
if [ ${#need_apt[@]} -gt 0 ]; then
  [ -n "$INSTALL" ] || { echo "missing: ${need_apt[*]} (run without --no-install)" >&2; exit 1; }
  log "apt-get install ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  made_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then  # don't let the packages start system services
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod +x /usr/sbin/policy-rc.d; made_policy=1
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}"
  [ -n "$made_policy" ] && $SUDO rm -f /usr/sbin/policy-rc.d
fi
mkdir -p "$OUT_DIR"
if [ ! -x "$BENCH_VENV/bin/python" ]; then python3 -m venv "$BENCH_VENV"; fi
if ! "$BENCH_VENV/bin/python" -c 'import uvicorn, uvloop, httptools' 2>/dev/null; then
  [ -n "$INSTALL" ] || { echo "uvicorn[standard] missing in $BENCH_VENV" >&2; exit 1; }
  log "pip install -r bench/requirements.txt into $BENCH_VENV"
  "$BENCH_VENV/bin/pip" install -q -r "$HERE/requirements.txt"
fi
if [ ! -x "$GW_PY" ]; then
  [ -n "$INSTALL" ] || { echo "$GW_PY missing" >&2; exit 1; }
  log "creating the project venv $ROOT/.venv"
  python3 -m venv "$ROOT/.venv" && "$ROOT/.venv/bin/pip" install -q -e "$ROOT"
fi
if [ "$SERVER" = uvicorn ] && ! "$GW_PY" -c 'import uvicorn' 2>/dev/null; then
  [ -n "$INSTALL" ] || { echo "uvicorn missing in $GW_PY's venv" >&2; exit 1; }
  log "pip install -e . into $(dirname "$GW_BIN") (uvicorn is a dependency)"
  "$GW_PY" -m pip install -q -e "$ROOT"
fi

# ------------------------------------------------------------------ ports must be free
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in "$PY_ORIGIN_PORT" "$ORIGIN_NGINX_PORT" "$PROXY_PY_PORT" "$PROXY_NGINX_PORT" "$GW_PORT" "$PTTH_PORT"; do
  if port_busy "$p"; then echo "port 127.0.0.1:$p is in use (another bench run?); stop it first" >&2; exit 1; fi
done

STAMP=$(date -u +%Y%m%d-%H%M%S)
TMP=$(mktemp -d /tmp/rhgw-bench.XXXXXX)
LOGS="$OUT_DIR/run-$STAMP-logs"
mkdir -p "$LOGS"
PIDS_TO_STOP=()     # stopped in reverse order on exit (SIGTERM, then SIGKILL after 15 s)
REDIS_OWN_PID=""
NGINX_STARTED=""
PREFIX="rhbench$$"

stop_pid() {  # stop_pid PID NAME: SIGTERM, wait up to 15 s, then SIGKILL; only our own PIDs
  local pid=$1 name=$2 i
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
  wait "$pid" 2>/dev/null || true
  log "stopped $name ($pid)"
}

cleanup() {
  set +e
  local i
  for ((i=${#PIDS_TO_STOP[@]}-1; i>=0; i--)); do
    stop_pid "${PIDS_TO_STOP[$i]%%:*}" "${PIDS_TO_STOP[$i]#*:}"
  done
  [ -n "$NGINX_STARTED" ] && RUN_DIR="$TMP/nginx" bash "$HERE/refs_nginx.sh" stop >/dev/null
  if [ -n "$REDIS_OWN_PID" ]; then
    stop_pid "$REDIS_OWN_PID" redis-server
  elif [ -n "${REDIS_URL:-}" ]; then  # the shared Redis: drop our keys (bounded scan)
    "$GW_PY" - "$REDIS_URL" "$PREFIX" <<'EOF' 2>/dev/null
import sys, redis
r = redis.Redis.from_url(sys.argv[1])
keys = list(r.scan_iter(match=sys.argv[2] + ":*", count=1000))[:200000]
for i in range(0, len(keys), 1000):
    r.delete(*keys[i:i + 1000])
EOF
  fi
  cp "$TMP"/*.log "$LOGS"/ 2>/dev/null
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start_bg() {  # start_bg NAME LOGFILE CMD...: background process, PID recorded for cleanup
  local name=$1 logf=$2; shift 2
  "$@" >"$logf" 2>&1 &
  LAST_PID=$!
  PIDS_TO_STOP+=("$LAST_PID:$name")
}

wait_port() {  # wait_port PORT PID NAME [SECONDS]
  local i
  for i in $(seq $((${4:-30} * 10))); do
    port_busy "$1" && return 0
    kill -0 "$2" 2>/dev/null || { echo "$3 exited; see $LOGS" >&2; return 1; }
    sleep 0.1
  done
  echo "$3 did not listen on :$1" >&2; return 1
}

# ------------------------------------------------------------------ Redis
case $BROKER in redis|memory) ;; *) echo "--broker redis|memory" >&2; exit 2 ;; esac
if [ "$BROKER" = memory ]; then
  REDIS_URL=""; REDIS_PID=""
  log "memory broker: no Redis"
elif [ -z "$OWN_REDIS" ] && redis-cli -h 127.0.0.1 -p "$SHARED_REDIS_PORT" ping 2>/dev/null | grep -q PONG; then
  REDIS_URL="redis://127.0.0.1:$SHARED_REDIS_PORT/0"
  REDIS_PID=$(redis-cli -h 127.0.0.1 -p "$SHARED_REDIS_PORT" info server | tr -d '\r' | sed -n 's/^process_id://p')
  log "using the running Redis on :$SHARED_REDIS_PORT (pid $REDIS_PID), key prefix $PREFIX"
else
  port_busy "$OWN_REDIS_PORT" && { echo "port $OWN_REDIS_PORT in use" >&2; exit 1; }
  redis-server --bind 127.0.0.1 --port "$OWN_REDIS_PORT" --save "" --appendonly no \
    --dir "$TMP" --daemonize no >"$TMP/redis.log" 2>&1 &
  REDIS_OWN_PID=$!
  wait_port "$OWN_REDIS_PORT" "$REDIS_OWN_PID" redis-server
  REDIS_URL="redis://127.0.0.1:$OWN_REDIS_PORT/0"
  REDIS_PID=$REDIS_OWN_PID
  log "started redis-server on :$OWN_REDIS_PORT (pid $REDIS_PID)"
fi

# ------------------------------------------------------------------ gateway
export DJANGO_SETTINGS_MODULE=project.settings
export RHGW_VAR_DIR="$TMP/var" RHGW_DB_PATH="$TMP/gateway.sqlite3"
export RHGW_BASE_URL="http://127.0.0.1:$GW_PORT" RHGW_BROKER="$BROKER" RHGW_REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379/0}"
export RHGW_REDIS_PREFIX="$PREFIX" RHGW_PUBLIC_URL_MODE=vhost RHGW_VHOST_DOMAIN="gw.test:$GW_PORT"
export PYTHONUNBUFFERED=1
(cd "$ROOT" && "$GW_PY" manage.py migrate --noinput -v0) >"$TMP/migrate.log" 2>&1 ||
  { cat "$TMP/migrate.log" >&2; exit 1; }
start_bg gateway "$TMP/gateway.log" \
  bash -c "cd '$ROOT' && exec '$GW_PY' manage.py rungateway 127.0.0.1:$GW_PORT --no-static --ptth 127.0.0.1:$PTTH_PORT --server $SERVER"
GW_PID=$LAST_PID
wait_port "$GW_PORT" "$GW_PID" gateway 60
log "gateway ($SERVER) pid $GW_PID on :$GW_PORT (PTTH :$PTTH_PORT), log $LOGS/gateway.log"

# ------------------------------------------------------------------ origins and nginx
start_bg origin "$TMP/origin.log" "$BENCH_VENV/bin/python" "$HERE/origin.py" --port "$PY_ORIGIN_PORT"
ORIGIN_PID=$LAST_PID
wait_port "$PY_ORIGIN_PORT" "$ORIGIN_PID" origin.py
RUN_DIR="$TMP/nginx" bash "$HERE/refs_nginx.sh" start >&2
NGINX_STARTED=1
NGP=$(RUN_DIR="$TMP/nginx" bash "$HERE/refs_nginx.sh" pids proxy)
NGO=$(RUN_DIR="$TMP/nginx" bash "$HERE/refs_nginx.sh" pids origin)

# ------------------------------------------------------------------ tunnel clients
HELP=$("$GW_BIN/reversehttp" expose --help 2>&1 || true)
transport_arg() {  # how to ask the client for transport $1 (empty: not offered)
  case $1 in
    longpoll) echo "" ;;
    longpoll-pipeline) if grep -q -- '--pipeline' <<<"$HELP"; then echo "--pipeline"; else echo "-"; fi ;;
    *) if grep -q -- '--transport' <<<"$HELP" && grep -qi "$1" <<<"$HELP"; then echo "--transport $1"; else echo "-"; fi ;;
  esac
}
TARGETS=(--target direct-py "http://127.0.0.1:$PY_ORIGIN_PORT" "pids=$ORIGIN_PID"
         --target nginx-py "http://127.0.0.1:$PROXY_PY_PORT" vs=direct-py "pids=$NGP")
if [ -n "$NGINX_ORIGIN" ]; then
  TARGETS+=(--target direct-ng "http://127.0.0.1:$ORIGIN_NGINX_PORT" "pids=$NGO"
            --target nginx-ng "http://127.0.0.1:$PROXY_NGINX_PORT" vs=direct-ng "pids=$NGP")
fi
ROWS=""
for t in $TRANSPORTS; do
  case $t in
    longpoll) name=benchlp; label=gw-longpoll ;;
    longpoll-pipeline) name=benchlq; label=gw-longpoll-pipeline ;;
    websocket) name=benchws; label=gw-websocket ;;
    ptth) name=benchpt; label=gw-ptth ;;
    *) echo "unknown transport $t" >&2; exit 2 ;;
  esac
  targ=$(transport_arg "$t")
  if [ "$targ" = "-" ]; then
    log "SKIPPED $t: 'reversehttp expose --help' does not offer it yet"
    ROWS="$ROWS $t:skipped"
    continue
  fi
  extra=()
  # a PTTH client may need to be told where the PTTH listener is
  if [ "$t" = ptth ] && grep -q -- '--ptth' <<<"$HELP"; then extra+=(--ptth "127.0.0.1:$PTTH_PORT"); fi
  # shellcheck disable=SC2086
  start_bg "client-$t" "$TMP/client-$t.log" "$GW_BIN/reversehttp" expose "http://127.0.0.1:$PY_ORIGIN_PORT" \
    --gateway "http://127.0.0.1:$GW_PORT" --name "$name" --pollers "$POLLERS" $targ "${extra[@]}"
  cpid=$LAST_PID
  ok=""
  for _ in $(seq 150); do   # until the public URL answers 200 (at most 30 s)
    kill -0 "$cpid" 2>/dev/null || break
    code=$(curl -s -o /dev/null -w '%{http_code}' -H "Host: $name.gw.test" "http://127.0.0.1:$GW_PORT/hello" || true)
    [ "$code" = 200 ] && { ok=1; break; }
    sleep 0.2
  done
  if [ -z "$ok" ]; then
    log "FAILED to start the $t client; its log:"; tail -20 "$TMP/client-$t.log" >&2
    ROWS="$ROWS $t:failed"
    continue
  fi
  log "$t client pid $cpid serves $name.gw.test"
  ROWS="$ROWS $t:ok"
  TARGETS+=(--target "$label" "http://127.0.0.1:$GW_PORT" "host=$name.gw.test"
            vs=direct-py,nginx-py "pids=$GW_PID${REDIS_PID:+,$REDIS_PID},$cpid")
done

if [ -n "$HOLD" ]; then
  log "holding for ${HOLD}s; targets (label url options):"
  printf '%s\n' "${TARGETS[@]}" | paste -sd' ' | sed 's/ --target /\n/g; s/^--target //' >&2
  sleep "$HOLD" & PIDS_TO_STOP+=("$!:hold-timer"); wait $!
  exit 0
fi

# ------------------------------------------------------------------ measure
JSON="$OUT_DIR/run-$STAMP.json"
MD="$OUT_DIR/run-$STAMP.md"
"$GW_PY" "$HERE/machine.py" --markdown > "$TMP/machine-before.md"
log "measuring: $ROUNDS round(s) x ${DURATION}s per run; results -> $MD"
python3 "$HERE/compare.py" "${TARGETS[@]}" --rounds "$ROUNDS" --duration "$DURATION" \
  --warmup "$WARMUP" --json "$JSON" --markdown "$TMP/tables.md" "${EXTRA[@]}"
{
  echo "# bench/run.sh, $STAMP (UTC)"
  echo
  echo "Command: \`bash bench/run.sh $ARGS_GIVEN\` ($ROUNDS round(s), ${DURATION}s per wrk run);"
  echo "transports:$ROWS."
  if [ "$BROKER" = redis ]; then
    echo "Gateway: rungateway --server $SERVER, Redis broker ($REDIS_URL, pid $REDIS_PID), vhost mode,"
  else
    echo "Gateway: rungateway --server $SERVER, **memory broker** (diagnostic run, no Redis), vhost mode,"
  fi
  echo "tunnel clients: \`reversehttp expose http://127.0.0.1:$PY_ORIGIN_PORT --pollers $POLLERS\`."
  echo "Relay CPU and RSS of gw-* rows = gateway + Redis (if used) + that transport's client."
  echo
  cat "$TMP/machine-before.md"
  echo "Load average after the run: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo
  cat "$TMP/tables.md"
  echo
  "$GW_PY" "$HERE/targets.py" "$JSON"
} > "$MD"
echo
"$GW_PY" "$HERE/targets.py" "$JSON"
log "wrote $MD and $JSON (logs in $LOGS)"
