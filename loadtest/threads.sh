#!/usr/bin/env bash
# Scaling with worker threads: plain Pingora and hybrid-lb (dynamic), each
# with `threads: 1` and `threads: 2`, in front of one nginx worker answering
# a 45-byte file, taking interleaved turns under wrk (ROUNDS rounds, each
# starting one system later). For each: rps (median), CPU µs per request
# (all turns), rps with two threads over rps with one, and the upstream
# connections opened per 1,000 requests (nginx's stub_status `accepts`
# before and after each turn: Pingora's connection pool is shared by the
# threads, so reuse should stay near 100%).
#
#   loadtest/threads.sh [seconds per turn, default 5]
#   env: ROUNDS (default 4), CONNS (default 128), WRK_THREADS (default 2)
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-5}
ROUNDS=${ROUNDS:-4}
CONNS=${CONNS:-128}
WRK_THREADS=${WRK_THREADS:-2}
. loadtest/common.sh
install_peers
export PATH="$PATH:/usr/sbin"
cargo build --release --quiet --workspace --bins --example plain_pingora
BIN=target/release
start_workspace

U=$(free_port); S=$(free_port)
nginx_upstream "$U" "$S"
accepts() { curl -s "http://127.0.0.1:$S/" | awk 'NR==3 {print $1}'; }

names=(); urls=(); spids=()
for t in 1 2; do
  P=$(free_port); pingora_keys "$work/plain$t.yaml"; sed -i "s/^threads: 1$/threads: $t/" "$work/plain$t.yaml"
  PLAIN_LISTEN="127.0.0.1:$P" PLAIN_UPSTREAMS="127.0.0.1:$U" RUST_LOG=error \
    "$BIN/examples/plain_pingora" -c "$work/plain$t.yaml" >/dev/null 2>&1 & pids+=($!)
  wait_port "$P"
  names+=("plain Pingora, $t thread(s)"); urls+=("http://127.0.0.1:$P/"); spids+=($!)
  P=$(free_port); D=$(free_port)
  hybrid_config "$work/h$t.yaml" "$P" "$D" dynamic off "$U"; sed -i "s/^threads: 1$/threads: $t/" "$work/h$t.yaml"
  RUST_LOG=error "$BIN/hybrid-lb" -c "$work/h$t.yaml" >/dev/null 2>&1 & pids+=($!)
  wait_port "$P"
  names+=("hybrid-lb dynamic, $t thread(s)"); urls+=("http://127.0.0.1:$P/"); spids+=($!)
done

turn() { # index: appends "rps requests cpu_ticks upstream_connections" to $work/turns.$1
  local i=$1 out t0 t1 a0 a1
  wrk -t"$WRK_THREADS" -c"$CONNS" -d1s "${urls[$i]}" >/dev/null 2>&1 || true
  t0=$(cpu_ticks "${spids[$i]}"); a0=$(accepts)
  out=$(wrk -t"$WRK_THREADS" -c"$CONNS" -d"${DUR}s" "${urls[$i]}")
  t1=$(cpu_ticks "${spids[$i]}"); a1=$(accepts)
  if grep -q "Non-2xx\|Socket errors" <<<"$out"; then echo "threads: ${names[$i]}: $(grep -E 'Non-2xx|Socket errors' <<<"$out")" >&2; fi
  echo "$(awk '/Requests\/sec/ {printf "%.0f", $2}' <<<"$out") $(awk '/requests in/ {print $1}' <<<"$out") $((t1 - t0)) $((a1 - a0 - 1))" >> "$work/turns.$i"
}
count=${#names[@]}
echo "wrk -t$WRK_THREADS -c$CONNS, $ROUNDS rounds of ${DUR}s turns, $(nproc) cores" >&2
for r in $(seq "$ROUNDS"); do
  for k in $(seq 0 $((count - 1))); do turn $(((k + r - 1) % count)); done
  echo "round $r of $ROUNDS done" >&2
done

hz=$(getconf CLK_TCK)
echo "| system | rps | CPU µs/req | rps ÷ same system with 1 thread | upstream connections opened per 1,000 requests |"
echo "|---|---:|---:|---:|---:|"
declare -A one
for i in "${!names[@]}"; do
  f="$work/turns.$i"
  rps=$(awk '{print $1}' "$f" | median)
  cpu=$(awk -v hz="$hz" '{n+=$2; t+=$3} END {printf "%.1f", t/hz*1e6/n}' "$f")
  conns=$(awk '{n+=$2; c+=$4} END {printf "%.3f", c*1000/n}' "$f")
  base=${names[$i]%%,*}
  case "${names[$i]}" in *", 1 thread(s)") one[$base]=$rps ;; esac
  printf '| %s | %s | %s | %s | %s |\n' "${names[$i]}" "$rps" "$cpu" \
    "$(awk -v a="$rps" -v b="${one[$base]}" 'BEGIN {printf "%.2f", a/b}')" "$conns"
done
