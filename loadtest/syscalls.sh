#!/usr/bin/env bash
# System calls per request, counted by strace -c: plain Pingora and hybrid-lb
# (dynamic, and any other binaries given to compare, e.g. an older build) in
# front of nginx serving a small file, N keep-alive requests each (ab -k, C
# at once, default 64)
# after a warm-up. The counts do not move with a noisy neighbour, so one run
# compares the request paths' system calls side by side.
#
#   loadtest/syscalls.sh [requests, default 5000] [other hybrid-lb binaries...]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-5000}
C=${C:-64}
shift || true
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
need=()
command -v strace >/dev/null || need+=(strace)
command -v ab >/dev/null || need+=(apache2-utils)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get install -y --no-install-recommends "${need[@]}" >/dev/null \
    || { as_root apt-get update >/dev/null && as_root apt-get install -y --no-install-recommends "${need[@]}" >/dev/null; }
fi
cargo build --release --quiet --bins --example plain_pingora
BIN=target/release
. loadtest/common.sh
export PATH="$PATH:/usr/sbin"

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

# nginx, one worker, serving a 45-byte answer: the upstream costs the proxy
# as little as it can.
U=$(free_port)
nginx_upstream "$U"

# measure NAME PORT PID: system calls per request of PID, by name.
k=0
measure() {
  local name=$1 port=$2 pid=$3 key
  k=$((k + 1)); key=run$k
  wait_port "$port"
  ab -q -k -n 500 -c 4 "http://127.0.0.1:$port/" >/dev/null 2>&1
  strace -c -f -q -p "$pid" -o "$work/strace.$key" & local s=$!
  sleep 0.5
  ab -q -k -n "$N" -c "$C" "http://127.0.0.1:$port/" > "$work/ab.$key"
  kill -INT "$s"; wait "$s" 2>/dev/null || true
  kill -INT "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
  local failed; failed=$(awk '/^Failed requests/ {print $3}' "$work/ab.$key")
  awk -v n="$N" -v name="$name" -v failed="${failed:-0}" '
    $NF ~ /^[a-z_0-9]+$/ && $4 ~ /^[0-9]+$/ && $NF != "total" { calls[$NF] = $4 }
    END {
      split("recvfrom sendto read write writev getpeername epoll_wait futex", keys, " ")
      line = name
      for (i = 1; i <= 8; i++) line = line sprintf(" | %.2f", calls[keys[i]] / n)
      print "| " line " | " failed " |"
    }' "$work/strace.$key"
}

echo "$N keep-alive requests (ab -k -c$C) through each proxy to nginx; system calls per request"
echo
echo "| proxy | recvfrom | sendto | read | write | writev | getpeername | epoll_wait | futex | failed |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
P=$(free_port); pingora_keys "$work/plain.yaml"
PLAIN_LISTEN="127.0.0.1:$P" PLAIN_UPSTREAMS="127.0.0.1:$U" RUST_LOG=error \
  "$BIN/examples/plain_pingora" -c "$work/plain.yaml" & pids+=($!)
measure "plain Pingora" "$P" "$!"
for bin in "$BIN/hybrid-lb" "$@"; do
  P=$(free_port); D=$(free_port)
  hybrid_config "$work/h.yaml" "$P" "$D" dynamic off "$U"
  RUST_LOG=error "$bin" -c "$work/h.yaml" & pids+=($!)
  measure "hybrid-lb dynamic ($bin)" "$P" "$!"
done
