#!/usr/bin/env bash
# Memory per idle keep-alive client connection: hybrid-lb (this build, and
# any other builds given), plain Pingora and nginx, one worker each, in front
# of the same nginx upstream, one after the other in one run. For each: RSS
# once settled, then N connections that each send one GET, read its answer
# and stay open and idle (loadtest/idle_clients.py, from 127.0.0.2, .3 …),
# RSS once settled again; reported as bytes per idle connection. RSS is the
# process tree's VmRSS; kernel socket buffers are not in it, and are the
# same for every proxy.
#
#   loadtest/idle.sh [connections, default 10000] [other hybrid-lb binaries...]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-10000}
shift || true
. loadtest/common.sh
install_peers
export PATH="$PATH:/usr/sbin"
cargo build --release --quiet --workspace --bins --example plain_pingora
BIN=target/release
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
FILES=$(ulimit -n)
start_workspace

# The upstream: one nginx worker answering a 45-byte file.
U=$(free_port)
nginx_upstream "$U"

rss_kb() { local r=0; for p in $(tree "$1"); do r=$((r + $(awk '/VmRSS/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0))); done; echo "$r"; }
# RSS once it stops moving: two samples a second apart within 0.5% (at most 20 s).
settled_kb() {
  local a b; a=$(rss_kb "$1")
  for _ in $(seq 20); do
    sleep 1; b=$(rss_kb "$1")
    [ $(( (b > a ? b - a : a - b) * 200 )) -le "$b" ] && break
    a=$b
  done
  echo "$b"
}

rows=()
# measure NAME PID PORT
measure() {
  local name=$1 pid=$2 port=$3 before after line
  wait_port "$port"
  for _ in $(seq 200); do curl -s -o /dev/null "http://127.0.0.1:$port/"; done
  before=$(settled_kb "$pid")
  mkfifo "$work/hold"
  python3 loadtest/idle_clients.py "$port" "$N" < "$work/hold" > "$work/clients.out" & local c=$!
  exec 3>"$work/hold"
  for _ in $(seq 240); do grep -q '^ready' "$work/clients.out" && break; sleep 0.5; done
  line=$(cat "$work/clients.out")
  after=$(settled_kb "$pid")
  exec 3>&-
  wait "$c" || true
  rm -f "$work/hold"
  stop "$pid"
  read -r _ open failed <<<"$line"
  rows+=("$(awk -v n="$name" -v b="$before" -v a="$after" -v o="${open:-0}" -v f="${failed:-?}" \
    'BEGIN { printf "| %s | %.1f | %.1f | %d | %s | %s |", n, b/1024, a/1024, o, f, (o > 0 ? sprintf("%.0f", (a-b)*1024/o) : "-") }')")
  echo "${rows[-1]}" >&2
}

hybrid() { # name binary
  local port dash; port=$(free_port); dash=$(free_port)
  hybrid_config "$work/h$port.yaml" "$port" "$dash" dynamic off "$U" \
    "  limits: { max_connections: 15000, max_connections_per_client: 15000, keepalive_timeout: 300s }"
  RUST_LOG=error "$2" -c "$work/h$port.yaml" >"$work/h$port.log" 2>&1 & pids+=($!)
  measure "$1" "$!" "$port"
}

hybrid "hybrid-lb" "$BIN/hybrid-lb"
for other in "$@"; do hybrid "hybrid-lb ($other)" "$other"; done

P=$(free_port); pingora_keys "$work/plain.yaml"
PLAIN_LISTEN="127.0.0.1:$P" PLAIN_UPSTREAMS="127.0.0.1:$U" RUST_LOG=error \
  "$BIN/examples/plain_pingora" -c "$work/plain.yaml" >/dev/null 2>&1 & pids+=($!)
measure "plain Pingora" "$!" "$P"

NG=$(free_port)
cat > "$work/nginx.conf" <<CONF
worker_processes 1;
worker_rlimit_nofile $FILES;
daemon off;
pid $work/nginx.pid;
error_log $work/nginx.err warn;
events { worker_connections 30000; }
http {
  access_log off;
  keepalive_timeout 300s;
  keepalive_requests 1000000;
  upstream b { server 127.0.0.1:$U; keepalive 128; }
  server { listen 127.0.0.1:$NG;
    location / { proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection ""; } }
}
CONF
nginx -c "$work/nginx.conf" -p "$work" & pids+=($!)
measure "nginx $(nginx -v 2>&1 | sed 's|.*/||')" "$!" "$NG"

echo
echo "$N keep-alive connections, one GET each, then idle; RSS settled before and after"
echo
echo "| proxy | RSS before MB | RSS with idle connections MB | connections held open | no answer | bytes per idle connection |"
echo "|---|---:|---:|---:|---:|---:|"
printf '%s\n' "${rows[@]}"
