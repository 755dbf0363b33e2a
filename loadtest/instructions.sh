#!/usr/bin/env bash
# User-space instructions per request, counted by valgrind's callgrind: plain
# Pingora and hybrid-lb (each algorithm, and dynamic with a sticky cookie) in
# front of the same two mock upstreams, N keep-alive requests each (ab -k -c4)
# after a warm-up; and `dynamic` behind 1,000 host routes, the request taking
# the last (exact hosts are found through a map: it should cost what no
# routes do). Instruction counts do not move with a noisy neighbour, so
# they compare request paths where wall-clock CPU figures on a shared machine
# cannot; kernel time (sockets) is not in them and is the same for every proxy.
#
#   loadtest/instructions.sh [requests, default 3000]
#   BASELINE=path/to/an/older/hybrid-lb loadtest/instructions.sh   # adds its `dynamic` row
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-3000}
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
need=()
command -v valgrind >/dev/null || need+=(valgrind)
command -v ab >/dev/null || need+=(apache2-utils)
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get install -y --no-install-recommends "${need[@]}" >/dev/null \
    || { as_root apt-get update >/dev/null && as_root apt-get install -y --no-install-recommends "${need[@]}" >/dev/null; }
fi
cargo build --release --quiet --workspace --bins --example plain_pingora
BIN=target/release
. loadtest/common.sh

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

B1=$(free_port); B2=$(free_port)
"$BIN/mock-backend" "$B1" --name b1 >/dev/null & pids+=($!)
"$BIN/mock-backend" "$B2" --name b2 >/dev/null & pids+=($!)
wait_port "$B1"; wait_port "$B2"

# measure NAME PORT [ab args...] -- CMD...: instructions per request of CMD.
# $WAIT_PORT, if set, must open too before the count starts (hybrid-lb's
# dashboard: until every listener is open, a start-up check reads the
# socket table, which is not the request path's cost).
measure() {
  local name=$1 port=$2; shift 2
  local ab_args=()
  while [ "$1" != "--" ]; do ab_args+=("$1"); shift; done; shift
  local out="$work/cg.$name"
  valgrind --tool=callgrind --callgrind-out-file="$out" "$@" >"$work/$name.log" 2>&1 & local v=$!
  pids+=($v)
  for p in "$port" ${WAIT_PORT:-}; do
    for _ in $(seq 600); do (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && break; sleep 0.1; done
  done
  for i in "${!ab_args[@]}"; do
    if [ "${ab_args[$i]}" = "@cookie" ]; then
      ab_args[$i]=$(curl -s -D - -o /dev/null "http://127.0.0.1:$port/" | awk -F'[:;] *' 'tolower($1)=="set-cookie" {print $2}')
    fi
  done
  ab -q -k -n 300 -c 4 "${ab_args[@]}" "http://127.0.0.1:$port/" >/dev/null 2>&1
  callgrind_control -z "$v" >/dev/null
  local report; report=$(ab -q -k -n "$N" -c 4 "${ab_args[@]}" "http://127.0.0.1:$port/")
  callgrind_control -d "$v" >/dev/null
  kill -INT "$v" 2>/dev/null || true; wait "$v" 2>/dev/null || true
  local failed; failed=$(awk '/^Failed requests/ {print $3}' <<<"$report")
  local non2xx; non2xx=$(awk '/^Non-2xx/ {print $3}' <<<"$report")
  local ir; ir=$(callgrind_annotate "$out.1" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
  printf '%s,%s,%s\n' "$name" "$((ir / N))" "${failed:-0}/${non2xx:-0}" >> "$work/results"
}

P=$(free_port); pingora_keys "$work/plain.yaml"
PLAIN_LISTEN="127.0.0.1:$P" PLAIN_UPSTREAMS="127.0.0.1:$B1,127.0.0.1:$B2" RUST_LOG=error \
  measure "plain pingora" "$P" -- "$BIN/examples/plain_pingora" -c "$work/plain.yaml"

hybrid() { # name algorithm sticky [ab args...]; $HYBRID: the binary (this build's)
  local name=$1 algorithm=$2 sticky=$3; shift 3
  local port dash; port=$(free_port); dash=$(free_port)
  local conf="$work/$algorithm-$sticky-$(echo "$name" | tr -c 'a-z0-9' '-').yaml"
  hybrid_config "$conf" "$port" "$dash" "$algorithm" "$sticky" "$B1 $B2" "${EXTRA:-}"
  WAIT_PORT=$dash RUST_LOG=error measure "$name" "$port" "$@" -- "${HYBRID:-$BIN/hybrid-lb}" -c "$conf"
}
# 999 host routes that do not match ab's requests, then the one that does.
host_routes() {
  echo "  routes:"
  for i in $(seq 0 998); do echo "    - { name: h$i, match: { host: h$i.example.com }, pool: default }"; done
  echo "    - { name: local, match: { host: 127.0.0.1 }, pool: default }"
}
if [ -n "${BASELINE:-}" ]; then HYBRID=$BASELINE hybrid "baseline build dynamic" dynamic off; fi
for algorithm in round_robin weighted dynamic p2c; do hybrid "hybrid-lb $algorithm" "$algorithm" off; done
# "@cookie" asks measure() for a cookie the balancer sealed, so every request is a sticky hit.
hybrid "hybrid-lb dynamic+cookie" dynamic cookie -C @cookie
EXTRA=$(host_routes) hybrid "hybrid-lb dynamic + 1000 host routes" dynamic off

echo "$N keep-alive requests (ab -k -c4) after a warm-up; user-space instructions per request"
echo
echo "| system | instructions/req | ÷ plain Pingora | failed/non-2xx |"
echo "|---|---:|---:|---|"
awk -F, 'NR==1 {base=$2} {printf "| %s | %d | %.2f | %s |\n", $1, $2, $2/base, $3}' "$work/results"
