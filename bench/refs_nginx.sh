#!/usr/bin/env bash
# Copied from /work/shared/bench/refs_nginx.sh (the peers baseline of 2026-11-22, shared/bench/README.md);
# unchanged but for this note. Used by bench/run.sh and bench/scaleout.sh (docs/benchmarks.md).
# Reference rows served by nginx (Debian nginx-light, which ships the echo module).
# Two separate nginx instances, so the proxy's CPU and memory can be measured on
# their own and the proxy and the origin are separate processes, as in a real hop:
#
#   origin instance  ORIGIN_NGINX_PORT : GET -> fixed 100-byte body, POST -> echo of the body
#   proxy instance   PROXY_PY_PORT     : proxy_pass -> Python origin (origin.py on PY_ORIGIN_PORT)
#                    PROXY_NGINX_PORT  : proxy_pass -> the nginx origin
#
# All listeners are on 127.0.0.1; one worker process per instance (NGINX_WORKERS),
# like the single-process relays they are compared with; upstream keepalive on.
#
#   bash refs_nginx.sh start | stop | pids origin|proxy
set -euo pipefail

RUN_DIR=${RUN_DIR:-/tmp/bench-nginx}
PY_ORIGIN_PORT=${PY_ORIGIN_PORT:-18201}
ORIGIN_NGINX_PORT=${ORIGIN_NGINX_PORT:-18202}
PROXY_PY_PORT=${PROXY_PY_PORT:-18203}
PROXY_NGINX_PORT=${PROXY_NGINX_PORT:-18204}
NGINX_WORKERS=${NGINX_WORKERS:-1}

# 100 bytes including the trailing newline, same body as origin.py
BODY="hello from the bench origin $(printf '.%.0s' $(seq 71))"

common() {  # $1 = instance dir
  local d=$1 modules=""
  [ -f /usr/lib/nginx/modules/ngx_http_echo_module.so ] &&
    modules="load_module /usr/lib/nginx/modules/ngx_http_echo_module.so;"
  cat <<EOF
$modules
worker_processes $NGINX_WORKERS;
daemon on;
pid $d/nginx.pid;
error_log $d/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $d/tmp/body;
  proxy_temp_path       $d/tmp/proxy;
  fastcgi_temp_path     $d/tmp/fastcgi;
  uwsgi_temp_path       $d/tmp/uwsgi;
  scgi_temp_path        $d/tmp/scgi;
  keepalive_requests 1000000;
  # keep 64 KB request bodies in memory (no temp files)
  client_body_buffer_size 128k;
  client_max_body_size 1m;
EOF
}

write_conf() {
  mkdir -p "$RUN_DIR"/origin/{logs,tmp} "$RUN_DIR"/proxy/{logs,tmp}
  { common "$RUN_DIR/origin"; cat <<EOF
  server {
    listen 127.0.0.1:$ORIGIN_NGINX_PORT;
    default_type text/plain;
    location / {
      if (\$request_method = POST) { rewrite ^ /__echo last; }
      return 200 "$BODY\n";
    }
    location = /__echo {
      internal;
      default_type application/octet-stream;
      echo_read_request_body;
      echo_request_body;
    }
  }
}
EOF
  } > "$RUN_DIR/origin/nginx.conf"

  { common "$RUN_DIR/proxy"; cat <<EOF
  upstream py_origin    { server 127.0.0.1:$PY_ORIGIN_PORT;    keepalive 64; }
  upstream nginx_origin { server 127.0.0.1:$ORIGIN_NGINX_PORT; keepalive 64; }
  proxy_http_version 1.1;
  proxy_set_header Connection "";
  proxy_set_header Host \$host;
  proxy_buffer_size 16k;
  proxy_buffers 16 16k;
  server { listen 127.0.0.1:$PROXY_PY_PORT;    location / { proxy_pass http://py_origin; } }
  server { listen 127.0.0.1:$PROXY_NGINX_PORT; location / { proxy_pass http://nginx_origin; } }
}
EOF
  } > "$RUN_DIR/proxy/nginx.conf"
}

run() {  # $1 = instance; rest = extra nginx args
  local d="$RUN_DIR/$1"; shift
  nginx -p "$d" -c "$d/nginx.conf" -g "error_log $d/logs/error.log;" "$@"
}

case "${1:-}" in
  start)
    write_conf
    for i in origin proxy; do run $i -t -q; run $i; done
    sleep 0.3
    echo "nginx origin master $(cat "$RUN_DIR/origin/nginx.pid") on :$ORIGIN_NGINX_PORT;" \
         "proxy master $(cat "$RUN_DIR/proxy/nginx.pid") on :$PROXY_PY_PORT (->py :$PY_ORIGIN_PORT)," \
         ":$PROXY_NGINX_PORT (->nginx :$ORIGIN_NGINX_PORT)"
    ;;
  stop)
    for i in proxy origin; do
      f="$RUN_DIR/$i/nginx.pid"
      if [ -f "$f" ]; then p=$(cat "$f"); kill -TERM "$p" && echo "stopped nginx $i $p"; fi
    done
    ;;
  pids)
    # master pid of the instance (its workers are its children)
    cat "$RUN_DIR/${2:?origin or proxy}/nginx.pid"
    ;;
  *) echo "usage: $0 start|stop|pids origin|proxy" >&2; exit 2 ;;
esac
