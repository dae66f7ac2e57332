#!/usr/bin/env bash
# Scale-out of issue 5: 1, 2 and 4 gateway processes sharing one Redis, each group behind one
# port (nginx upstream, round-robin), measured interleaved with compare.py (docs/benchmarks.md).
#
#   bash bench/scaleout.sh [--rounds N] [--duration S] [--quick] [--groups "1 2 4"]
#                          [--cells get100:10,get100:50,post64k:10,post64k:50] [--own-redis]
#
# All groups run at the same time and are loaded one at a time (compare.py rotates the order
# each round), so drift on the shared machine hits them alike. Per group N:
#   nginx LB  127.0.0.1:$((18259+i))  upstream = N x `rungateway` (Redis broker, one REDIS_PREFIX
#             and one SQLite file per group), round-robin, upstream keep-alive
#   gateways  127.0.0.1:18270.. (1 -> 18270; 2 -> 18271-18272; 4 -> 18273-18276)
#   clients   $CLIENTS x `reversehttp expose http://127.0.0.1:18201 --name benchsoN --pollers
#             $POLLERS`, connecting to the LB port: every poll goes through the LB, so the
#             pollers are spread over the group's processes (round-robin per poll)
# The number of clients and pollers is the same for every N: only the gateway count changes.
# Also: the Python origin on :18201 (row direct-py). Public traffic: wrk -> LB -> any gateway
# process; the request waits in Redis for a poller held by any process of the group.
# Writes var/bench/scaleout-<stamp>.{json,md}; stops what it started by PID.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
OUT_DIR=${OUT_DIR:-$ROOT/var/bench}
BENCH_VENV=${BENCH_VENV:-$OUT_DIR/venv}
GW_PY=${GW_PY:-$ROOT/.venv/bin/python}
GW_BIN=$(dirname "$GW_PY")
PY_ORIGIN_PORT=${PY_ORIGIN_PORT:-18201}
LB_BASE=${LB_BASE:-18260}
GW_BASE=${GW_BASE:-18270}
OWN_REDIS_PORT=${OWN_REDIS_PORT:-18258}
CLIENTS=${CLIENTS:-2}
POLLERS=${POLLERS:-8}

ARGS_GIVEN="$*"
ROUNDS=3; DURATION=10; WARMUP=2; GROUPS_="1 2 4"; OWN_REDIS=""
CELLS="get100:10,get100:50,post64k:10,post64k:50"
while [ $# -gt 0 ]; do
  case $1 in
    --rounds) ROUNDS=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --quick) ROUNDS=1; DURATION=3; WARMUP=1; shift ;;
    --groups) GROUPS_=$2; shift 2 ;;
    --cells) CELLS=$2; shift 2 ;;
    --own-redis) OWN_REDIS=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
log() { printf '[scaleout.sh %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
for c in wrk nginx redis-server; do
  command -v $c >/dev/null || { echo "$c missing: run bash bench/run.sh once (it installs it)" >&2; exit 1; }
done
"$BENCH_VENV/bin/python" -c 'import uvicorn' 2>/dev/null ||
  { echo "no bench venv: run bash bench/run.sh once (it creates $BENCH_VENV)" >&2; exit 1; }

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
STAMP=$(date -u +%Y%m%d-%H%M%S)
TMP=$(mktemp -d /tmp/rhgw-scaleout.XXXXXX)
LOGS="$OUT_DIR/scaleout-$STAMP-logs"
mkdir -p "$LOGS"
PIDS_TO_STOP=()
REDIS_OWN_PID=""
NGINX_PID=""
PREFIX="rhso$$"

stop_pid() {
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
  if [ -n "$NGINX_PID" ]; then kill -TERM "$NGINX_PID" 2>/dev/null && log "stopped nginx LB ($NGINX_PID)"; fi
  if [ -n "$REDIS_OWN_PID" ]; then
    stop_pid "$REDIS_OWN_PID" redis-server
  elif [ -n "${REDIS_URL:-}" ]; then
    "$GW_PY" - "$REDIS_URL" "$PREFIX" <<'EOF' 2>/dev/null
import sys, redis
r = redis.Redis.from_url(sys.argv[1])
keys = list(r.scan_iter(match=sys.argv[2] + "*", count=1000))[:200000]
for i in range(0, len(keys), 1000):
    r.delete(*keys[i:i + 1000])
EOF
  fi
  cp "$TMP"/*.log "$LOGS"/ 2>/dev/null
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start_bg() {
  local name=$1 logf=$2; shift 2
  "$@" >"$logf" 2>&1 &
  LAST_PID=$!
  PIDS_TO_STOP+=("$LAST_PID:$name")
}
wait_port() {
  local i
  for i in $(seq $((${4:-30} * 10))); do
    port_busy "$1" && return 0
    kill -0 "$2" 2>/dev/null || { echo "$3 exited; see $LOGS" >&2; return 1; }
    sleep 0.1
  done
  echo "$3 did not listen on :$1" >&2; return 1
}

# ports of each group
declare -A GW_PORTS LB_PORT
i=0; next=$GW_BASE
for n in $GROUPS_; do
  LB_PORT[$n]=$((LB_BASE + i)); i=$((i + 1))
  ports=""
  for _ in $(seq "$n"); do ports="$ports $next"; next=$((next + 1)); done
  GW_PORTS[$n]=$ports
done
all_ports="$PY_ORIGIN_PORT"
for n in $GROUPS_; do all_ports="$all_ports ${LB_PORT[$n]} ${GW_PORTS[$n]}"; done
for p in $all_ports; do
  port_busy "$p" && { echo "port 127.0.0.1:$p is in use; stop it first" >&2; exit 1; }
done

# Redis
if [ -z "$OWN_REDIS" ] && redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; then
  REDIS_URL="redis://127.0.0.1:6379/0"
  REDIS_PID=$(redis-cli -h 127.0.0.1 -p 6379 info server | tr -d '\r' | sed -n 's/^process_id://p')
  log "using the running Redis on :6379 (pid $REDIS_PID)"
else
  redis-server --bind 127.0.0.1 --port "$OWN_REDIS_PORT" --save "" --appendonly no --dir "$TMP" \
    >"$TMP/redis.log" 2>&1 &
  REDIS_OWN_PID=$!
  wait_port "$OWN_REDIS_PORT" "$REDIS_OWN_PID" redis-server
  REDIS_URL="redis://127.0.0.1:$OWN_REDIS_PORT/0"; REDIS_PID=$REDIS_OWN_PID
fi

# origin
start_bg origin "$TMP/origin.log" "$BENCH_VENV/bin/python" "$HERE/origin.py" --port "$PY_ORIGIN_PORT"
ORIGIN_PID=$LAST_PID
wait_port "$PY_ORIGIN_PORT" "$ORIGIN_PID" origin.py

# gateways, one migrated SQLite file per group
export DJANGO_SETTINGS_MODULE=project.settings PYTHONUNBUFFERED=1
declare -A GW_PIDS
for n in $GROUPS_; do
  lb=${LB_PORT[$n]}
  db="$TMP/group$n.sqlite3"
  (cd "$ROOT" && RHGW_DB_PATH="$db" RHGW_VAR_DIR="$TMP/var" "$GW_PY" manage.py migrate --noinput -v0) \
    >"$TMP/migrate$n.log" 2>&1 || { cat "$TMP/migrate$n.log" >&2; exit 1; }
  pids=""
  for p in ${GW_PORTS[$n]}; do
    start_bg "gateway-$n-$p" "$TMP/gateway-$n-$p.log" env RHGW_VAR_DIR="$TMP/var" RHGW_DB_PATH="$db" \
      RHGW_BASE_URL="http://127.0.0.1:$lb" RHGW_BROKER=redis RHGW_REDIS_URL="$REDIS_URL" \
      RHGW_REDIS_PREFIX="$PREFIX-g$n" RHGW_PUBLIC_URL_MODE=vhost RHGW_VHOST_DOMAIN="gw.test:$lb" \
      bash -c "cd '$ROOT' && exec '$GW_PY' manage.py rungateway 127.0.0.1:$p --no-static"
    pids="$pids,$LAST_PID"
    sleep 0.5
  done
  GW_PIDS[$n]=${pids#,}
done
for n in $GROUPS_; do
  set -- ${GW_PORTS[$n]}; j=0
  for pid in ${GW_PIDS[$n]//,/ }; do
    j=$((j + 1)); wait_port "${!j}" "$pid" "gateway $n/$j" 60
  done
done
log "gateways up: $(for n in $GROUPS_; do printf 'N=%s:[%s] ' "$n" "${GW_PIDS[$n]}"; done)"

# nginx load balancer, one server block per group
mkdir -p "$TMP/lb/logs" "$TMP/lb/tmp"
{
  cat <<EOF
worker_processes 1;
daemon on;
pid $TMP/lb/nginx.pid;
error_log $TMP/lb/logs/error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  client_body_temp_path $TMP/lb/tmp/body;
  proxy_temp_path $TMP/lb/tmp/proxy;
  fastcgi_temp_path $TMP/lb/tmp/fastcgi;
  uwsgi_temp_path $TMP/lb/tmp/uwsgi;
  scgi_temp_path $TMP/lb/tmp/scgi;
  keepalive_requests 1000000;
  client_body_buffer_size 128k;
  client_max_body_size 20m;
  proxy_http_version 1.1;
  proxy_set_header Connection "";
  proxy_set_header Host \$http_host;
  proxy_read_timeout 120s;
  proxy_buffer_size 16k;
  proxy_buffers 16 16k;
EOF
  for n in $GROUPS_; do
    echo "  upstream group$n {"
    for p in ${GW_PORTS[$n]}; do echo "    server 127.0.0.1:$p;"; done
    echo "    keepalive 64;"
    echo "  }"
    echo "  server { listen 127.0.0.1:${LB_PORT[$n]}; location / { proxy_pass http://group$n; } }"
  done
  echo "}"
} > "$TMP/lb/nginx.conf"
nginx -p "$TMP/lb" -c "$TMP/lb/nginx.conf" -g "error_log $TMP/lb/logs/error.log;" -t -q
nginx -p "$TMP/lb" -c "$TMP/lb/nginx.conf" -g "error_log $TMP/lb/logs/error.log;"
sleep 0.3
NGINX_PID=$(cat "$TMP/lb/nginx.pid")

# clients (through the LB), then the targets
first=${GROUPS_%% *}
TARGETS=(--target direct-py "http://127.0.0.1:$PY_ORIGIN_PORT" "pids=$ORIGIN_PID")
for n in $GROUPS_; do
  lb=${LB_PORT[$n]}
  cpids=""
  for c in $(seq "$CLIENTS"); do
    # same name for all clients of a group: the first registers it, the others refresh it (204)
    start_bg "client-$n-$c" "$TMP/client-$n-$c.log" "$GW_BIN/reversehttp" expose \
      "http://127.0.0.1:$PY_ORIGIN_PORT" --gateway "http://127.0.0.1:$lb" --name "benchso$n" \
      --token "bench-scaleout" --pollers "$POLLERS"
    cpids="$cpids,$LAST_PID"
    sleep 1
  done
  ok=""
  for _ in $(seq 150); do
    code=$(curl -s -o /dev/null -w '%{http_code}' -H "Host: benchso$n.gw.test" "http://127.0.0.1:$lb/hello" || true)
    [ "$code" = 200 ] && { ok=1; break; }
    sleep 0.2
  done
  [ -n "$ok" ] || { echo "group $n does not answer; see $LOGS" >&2; exit 1; }
  vs=direct-py; [ "$n" = "$first" ] || vs="direct-py,gw-$first-proc"
  TARGETS+=(--target "gw-$n-proc" "http://127.0.0.1:$lb" "host=benchso$n.gw.test" "vs=$vs"
            "pids=${GW_PIDS[$n]},$REDIS_PID$cpids,$NGINX_PID")
  log "group N=$n: LB :$lb, gateways [${GW_PIDS[$n]}], clients [${cpids#,}]"
done
# per-process CPU before/after, to show how the work spread
cpu_of() { awk '{print $14+$15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
declare -A CPU0
for n in $GROUPS_; do for pid in ${GW_PIDS[$n]//,/ }; do CPU0[$pid]=$(cpu_of "$pid"); done; done

JSON="$OUT_DIR/scaleout-$STAMP.json"; MD="$OUT_DIR/scaleout-$STAMP.md"
"$GW_PY" "$HERE/machine.py" --markdown > "$TMP/machine.md"
log "measuring ${GROUPS_// /, } process(es): $ROUNDS round(s) x ${DURATION}s, cells $CELLS"
python3 "$HERE/compare.py" "${TARGETS[@]}" --rounds "$ROUNDS" --duration "$DURATION" \
  --warmup "$WARMUP" --cells "$CELLS" --json "$JSON" --markdown "$TMP/tables.md"

{
  echo "# bench/scaleout.sh, $STAMP (UTC)"
  echo
  echo "Command: \`bash bench/scaleout.sh $ARGS_GIVEN\` ($ROUNDS round(s), ${DURATION}s per run; groups: $GROUPS_;"
  echo "$CLIENTS client(s) x $POLLERS pollers per group, through the group's nginx LB)."
  echo "Relay CPU and RSS of gw-N-proc rows = the N gateways + Redis + the clients + the nginx LB."
  echo
  cat "$TMP/machine.md"
  echo "Load average after the run: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo
  cat "$TMP/tables.md"
  echo
  echo "**How the work spread** - public requests answered 200 by each gateway process (its access"
  echo "log) and its CPU time during the whole measurement"
  echo
  echo "| group | gateway pid | port | public requests (200) | share | CPU s |"
  echo "|---|---:|---:|---:|---:|---:|"
  for n in $GROUPS_; do
    set -- ${GW_PORTS[$n]}; j=0; total=0
    for p in ${GW_PORTS[$n]}; do
      c=$(grep -c "label=benchso$n status=200" "$TMP/gateway-$n-$p.log" || true); total=$((total + c))
    done
    for pid in ${GW_PIDS[$n]//,/ }; do
      j=$((j + 1)); p=${!j}
      c=$(grep -c "label=benchso$n status=200" "$TMP/gateway-$n-$p.log" || true)
      share=$(awk -v a="$c" -v b="$total" 'BEGIN { if (b) printf "%.0f %%", 100 * a / b; else print "-" }')
      cpu=$(awk -v a="$(cpu_of "$pid")" -v b="${CPU0[$pid]}" -v t="$(getconf CLK_TCK)" 'BEGIN { printf "%.1f", (a - b) / t }')
      echo "| N=$n | $pid | $p | $c | $share | $cpu |"
    done
  done
} > "$MD"
sed -n '/How the work spread/,$p' "$MD"
log "wrote $MD and $JSON (logs in $LOGS)"
