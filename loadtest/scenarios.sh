#!/usr/bin/env bash
# Routing around trouble, side by side in one run: nginx round robin, HAProxy
# leastconn and hybrid-lb (dynamic, p2c), each with its defaults, in front of
# the same three mock upstreams at 5 ms. Scenarios: all healthy; one 10×
# slower, `/health` too (`slow`); one 10× slower whose `/health` still
# answers at once, as a service slowed by its database does
# (`slow_fast_health`); one failing 50% of requests; one failing 30% (at
# random, not in runs). A failure is a 503, the answer of an overloaded
# server.
#
# Every turn starts its balancer fresh (nothing learned in one turn helps the
# next), sets the scenario, warms up for WARM seconds (long enough to learn),
# then measures with wrk -t1 -c16 for the given seconds. ROUNDS rounds,
# systems in a rotating order. Prints p50, p99, p99 ÷ the system's own healthy
# p99, errors and throughput (medians over rounds). Traffic goes only to
# 127.0.0.1; every run is bounded.
#
#   loadtest/scenarios.sh [seconds per turn, default 10]
#   env: ROUNDS (default 2), WARM (default 5), CONNS (default 16),
#        SCENARIOS (default all: "healthy slow slow_fast_health fail50 fail30";
#        healthy is always run, as the reference),
#        OTHER (another hybrid-lb binary, run beside as "hybrid-lb dynamic (other)"),
#        RESULTS (CSV path, default loadtest/results/scenarios.csv)
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10}
ROUNDS=${ROUNDS:-2}
WARM=${WARM:-5}
CONNS=${CONNS:-16}
RESULTS=${RESULTS:-loadtest/results/scenarios.csv}
mkdir -p "$(dirname "$RESULTS")"

. loadtest/common.sh
install_peers
export PATH="$PATH:/usr/sbin"
cargo build --release --quiet --workspace --bins
BIN=target/release
start_workspace

to_ms() { awk -v v="$1" 'BEGIN { if (v ~ /us$/) printf "%.3f", v/1000; else if (v ~ /ms$/) printf "%.3f", v+0; else if (v ~ /s$/) printf "%.3f", v*1000; else print v }'; }

PORTS=""
for n in 1 2 3; do
  p=$(free_port)
  "$BIN/mock-backend" "$p" --name "b$n" --latency-ms 5 --error-status 503 >/dev/null & pids+=($!)
  wait_port "$p"
  PORTS="$PORTS $p"
done
DEGRADED=${PORTS##* }   # the third upstream is the one in trouble

read -r -a scenarios <<<"healthy ${SCENARIOS:-slow slow_fast_health fail50 fail30}"
scenarios=(healthy $(printf '%s\n' "${scenarios[@]:1}" | grep -vx healthy || true))
behaviour() {
  case $1 in
    healthy) echo '{"latency_ms": 5, "error_rate": 0, "health_latency": true}' ;;
    slow)    echo '{"latency_ms": 50, "error_rate": 0, "health_latency": true}' ;;
    slow_fast_health) echo '{"latency_ms": 50, "error_rate": 0, "health_latency": false}' ;;
    fail50)  echo '{"latency_ms": 5, "error_rate": 0.5}' ;;
    fail30)  echo '{"latency_ms": 5, "error_rate": 0.3}' ;;
    *) echo "unknown scenario $1" >&2; exit 1 ;;
  esac
}
set_scenario() {
  local p
  for p in $PORTS; do curl -fsS -o /dev/null -X POST -d "$(behaviour healthy)" "http://127.0.0.1:$p/_mock/config"; done
  curl -fsS -o /dev/null -X POST -d "$(behaviour "$1")" "http://127.0.0.1:$DEGRADED/_mock/config"
}

systems=("nginx round robin" "haproxy leastconn" "hybrid-lb dynamic" "hybrid-lb p2c")
[ -n "${OTHER:-}" ] && systems+=("hybrid-lb dynamic (other)")
# Starts system $1 → SPID, SPORT.
start_system() {
  SPORT=$(free_port)
  case $1 in
    nginx*)
      nginx_conf "$work/nginx.conf" "$work" "$SPORT" "$PORTS"
      nginx -c "$work/nginx.conf" -p "$work" -e "$work/nginx.err" & SPID=$! ;;
    haproxy*)
      HAPROXY_BALANCE=leastconn haproxy_cfg "$work/haproxy.cfg" "$SPORT" "$PORTS"
      haproxy -f "$work/haproxy.cfg" -db >"$work/haproxy.log" 2>&1 & SPID=$! ;;
    hybrid-lb*)
      local algorithm=${1#hybrid-lb } bin=$BIN/hybrid-lb
      [[ $1 == *"(other)" ]] && bin=$OTHER
      hybrid_config "$work/hlb.yaml" "$SPORT" "$(free_port)" "${algorithm%% *}" off "$PORTS"
      RUST_LOG=error "$bin" -c "$work/hlb.yaml" >"$work/hlb.log" 2>&1 & SPID=$! ;;
  esac
  pids+=($SPID)
  wait_port "$SPORT"
}

# One turn: system $1, scenario $2; appends "p50 p99 errors requests rps".
turn() {
  local sys=$1 scenario=$2 out
  set_scenario "$scenario"
  start_system "$sys"
  wrk -t1 -c"$CONNS" -d"${WARM}s" "http://127.0.0.1:$SPORT/" >/dev/null 2>&1 || true
  out=$(wrk -t1 -c"$CONNS" -d"${DUR}s" --latency "http://127.0.0.1:$SPORT/")
  stop_system
  echo "$(to_ms "$(awk '$1=="50%" {print $2}' <<<"$out")") $(to_ms "$(awk '$1=="99%" {print $2}' <<<"$out")") \
$(awk '/Non-2xx/ {print $NF}' <<<"$out" | grep . || echo 0) $(awk '/requests in/ {print $1}' <<<"$out") \
$(awk '/Requests\/sec/ {printf "%.0f", $2}' <<<"$out")" >> "$work/turns.${sys// /_}.$scenario"
}

echo "wrk -t1 -c$CONNS, ${WARM}s warm-up + ${DUR}s measured per turn, $ROUNDS rounds, loopback, $(nproc) cores"
count=${#systems[@]}
for r in $(seq "$ROUNDS"); do
  for scenario in "${scenarios[@]}"; do
    for k in $(seq 0 $((count - 1))); do turn "${systems[$(((k + r - 1) % count))]}" "$scenario"; done
  done
  echo "round $r of $ROUNDS done" >&2
done

echo "system,scenario,p50_ms,p99_ms,p99_vs_healthy,errors_pct,rps" > "$RESULTS"
for sys in "${systems[@]}"; do
  healthy_p99=$(awk '{print $2}' "$work/turns.${sys// /_}.healthy" | median)
  for scenario in "${scenarios[@]}"; do
    f="$work/turns.${sys// /_}.$scenario"
    p50=$(awk '{print $1}' "$f" | median); p99=$(awk '{print $2}' "$f" | median)
    errors=$(awk '{e+=$3; n+=$4} END {printf "%.3f", n ? e*100/n : 0}' "$f")
    rps=$(awk '{print $5}' "$f" | median)
    ratio=$(awk -v a="$p99" -v b="$healthy_p99" 'BEGIN {printf "%.2f", (b > 0 ? a/b : 0)}')
    echo "$sys,$scenario,$p50,$p99,$ratio,$errors,$rps" >> "$RESULTS"
  done
done
echo
echo "| system | scenario | p50 ms | p99 ms | p99 ÷ healthy | errors % | rps |"
echo "|---|---|---:|---:|---:|---:|---:|"
awk -F, 'NR > 1 {printf "| %s | %s | %s | %s | %s× | %s | %s |\n", $1, $2, $3, $4, $5, $6, $7}' "$RESULTS"
