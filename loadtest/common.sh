# Helpers shared by the loadtest scripts (sourced, not run).

# A free TCP port on 127.0.0.1.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Waits up to 10 s for 127.0.0.1:$1 to accept connections.
wait_port() {
  for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done
  echo "port $1 never opened" >&2; return 1
}

# Writes Pingora's server keys for a one-thread test instance to file $1.
pingora_keys() {
  cat > "$1" <<CONF
version: 1
threads: 1
work_stealing: false
grace_period_seconds: 1
graceful_shutdown_timeout_seconds: 1
pid_file: $1.pid
upgrade_sock: $1.sock
CONF
}

# Writes a one-thread hybrid-lb config to file $1: proxy on port $2, dashboard
# on port $3, algorithm $4, sticky mode $5, upstreams b1, b2 … on the ports
# listed in $6; extra lines of lb: keys may follow in $7.
hybrid_config() {
  pingora_keys "$1"
  cat >> "$1" <<CONF
lb:
  listen: ["127.0.0.1:$2"]
  algorithm: $4
  sticky: { mode: $5, secret: "bench-secret-0123456789abcdef" }
${7:-}
  upstreams:
CONF
  local n=0 port
  for port in $6; do n=$((n + 1)); echo "    - { name: b$n, addr: \"127.0.0.1:$port\", weight: 1 }" >> "$1"; done
  printf 'dashboard:\n  listen: "127.0.0.1:%s"\n' "$3" >> "$1"
}

# Installs, from Debian, whichever of wrk, nginx and HAProxy is missing.
install_peers() {
  local need=()
  command -v wrk >/dev/null || need+=(wrk)
  command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
  command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
  [ ${#need[@]} -eq 0 ] && return 0
  echo "installing ${need[*]}" >&2
  local sudo=(); [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get install -y --no-install-recommends "${need[@]}" >/dev/null \
    || { "${sudo[@]}" apt-get update >/dev/null && "${sudo[@]}" apt-get install -y --no-install-recommends "${need[@]}" >/dev/null; }
}

# Stops a process: SIGTERM, then SIGKILL if it is still there after 3 s.
stop() {
  kill -TERM "$1" 2>/dev/null || return 0
  for _ in $(seq 30); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$1" 2>/dev/null || true
}

# Stops the system a side-by-side script started ($SPID): nginx gracefully
# (its pid file in $work), anything else with `stop`.
stop_system() {
  if [ -f "$work/nginx.pid" ] && [ "$(cat "$work/nginx.pid")" = "$SPID" ]; then
    kill -QUIT "$SPID"; wait "$SPID" 2>/dev/null || true; rm -f "$work/nginx.pid"
  else
    stop "$SPID"; wait "$SPID" 2>/dev/null || true
  fi
}

# The median of the numbers on stdin, one per line.
median() { sort -n | awk '{v[NR]=$1} END {print (NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2)}'; }

tree() { echo "$1"; pgrep -P "$1" || true; }          # a process and its children
# CPU ticks (user + system) of a process and its children so far.
cpu_ticks() { local t=0; for p in $(tree "$1"); do t=$((t + $(awk '{print $14+$15}' "/proc/$p/stat" 2>/dev/null || echo 0))); done; echo "$t"; }

# Writes an nginx config to $1: one worker, pid and error log in $2, listening
# on 127.0.0.1:$3 (with TLS when $5 and $6, certificate and key, are given),
# round robin over upstreams on the ports listed in $4, with keep-alive;
# $NGINX_SERVER_OPTS (e.g. `max_conns=8`) goes on each server line.
nginx_conf() {
  local tls="" listen="127.0.0.1:$3" servers="" port
  for port in $4; do servers="$servers server 127.0.0.1:$port ${NGINX_SERVER_OPTS:-};"; done
  if [ -n "${5:-}" ]; then
    listen="$listen ssl"
    tls="ssl_certificate $5; ssl_certificate_key $6; ssl_protocols TLSv1.2 TLSv1.3;"
  fi
  cat > "$1" <<CONF
worker_processes 1;
daemon off;
pid $2/nginx.pid;
error_log $2/nginx.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  upstream b {$servers keepalive 128; }
  server {
    listen $listen;
    $tls
    location / { proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
CONF
}

# Starts one nginx worker (in $work/up, its pid added to $pids) answering a
# 45-byte file on 127.0.0.1 at each port listed in $1, and nginx's
# stub_status at port $2 if given; waits until they are open. The upstream
# for measuring proxies: it costs less per request than any of them.
nginx_upstream() {
  local listen="" port status=""
  for port in $1; do listen="$listen listen 127.0.0.1:$port;"; done
  [ -n "${2:-}" ] && status="server { listen 127.0.0.1:$2; location / { stub_status; } }"
  mkdir -p "$work/www" "$work/up"
  printf '{"ok":true,"server":"nginx","pad":"........"}' > "$work/www/index.html"
  cat > "$work/up/nginx.conf" <<CONF
worker_processes 1;
master_process off;
daemon off;
pid $work/up/nginx.pid;
error_log $work/up/nginx.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server {$listen root $work/www; location / { try_files /index.html =404; } }
  $status }
CONF
  nginx -c "$work/up/nginx.conf" -p "$work/up" & pids+=($!)
  for port in $1 ${2:-}; do wait_port "$port"; done
}

# Writes a HAProxy config to $1: one thread, connection reuse, listening on
# 127.0.0.1:$2 (with TLS when $4, a PEM of certificate and key, is given),
# balancing by $HAPROXY_BALANCE (default roundrobin) over upstreams on the
# ports listed in $3; $HAPROXY_BACKEND_OPTS is a line of the backend (e.g.
# `timeout queue 10ms`), $HAPROXY_SERVER_OPTS goes on each server line.
haproxy_cfg() {
  local bind="127.0.0.1:$2" n=0 port
  [ -n "${4:-}" ] && bind="$bind ssl crt $4"
  cat > "$1" <<CONF
global
  nbthread 1
  maxconn 4096
defaults
  mode http
  timeout connect 1s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
  http-reuse always
frontend f
  bind $bind
  default_backend b
backend b
  balance ${HAPROXY_BALANCE:-roundrobin}
CONF
  [ -n "${HAPROXY_BACKEND_OPTS:-}" ] && echo "  $HAPROXY_BACKEND_OPTS" >> "$1"
  for port in $3; do n=$((n + 1)); echo "  server b$n 127.0.0.1:$port ${HAPROXY_SERVER_OPTS:-}" >> "$1"; done
}

# A scratch folder ($work) and the processes started in it ($pids), all
# stopped and removed when the script exits, however it exits.
start_workspace() {
  work=$(mktemp -d)
  pids=()
  trap cleanup_workspace EXIT
}
cleanup_workspace() {
  [ -f "$work/nginx.pid" ] && kill -QUIT "$(cat "$work/nginx.pid")" 2>/dev/null || true
  for p in "${pids[@]}"; do stop "$p"; done
  rm -rf "$work"
}
