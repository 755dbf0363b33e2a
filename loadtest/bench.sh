#!/usr/bin/env bash
# Side by side, in one run, with one load generator (wrk -t1) and one proxy worker
# thread each: direct to the backends, nginx, HAProxy, a plain Pingora
# round-robin proxy, and hybrid-lb (round_robin, weighted, dynamic, p2c,
# dynamic + sticky cookie, dynamic + access log to a file). Every system runs at once and they take turns
# under load, ROUNDS times, so that a noisy neighbour on a shared machine
# slows them all alike. For each: rps, p50, p99 (medians over rounds), the
# proxy's CPU µs per request (all rounds) and peak RSS, then ratios to nginx
# and to plain Pingora; last, RSS holding 1,000 client connections. Traffic
# goes only to 127.0.0.1; every run is bounded.
#
# The upstreams are, by default, one nginx worker answering a 45-byte file on
# two ports: it costs less per request than any proxy in front of it, so the
# proxies' own cost is what is compared (a slower upstream hides part of it).
# UPSTREAM=mock uses two mock-backend processes instead.
#
#   loadtest/bench.sh [seconds per turn, default 5]
#   env: ROUNDS (default 4), CONNS (default 64), UPSTREAM (nginx or mock),
#        ONLY (a regex: measure only the systems whose names match, e.g.
#        'plain|hybrid-lb'), OTHER (another hybrid-lb binary, measured beside
#        as "hybrid-lb dynamic (other)"), SKIP_RSS=1 (no 1,000-connection
#        run), RESULTS (CSV path, default loadtest/results/latest.csv)
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-5}
ROUNDS=${ROUNDS:-4}
CONNS=${CONNS:-64}
RESULTS=${RESULTS:-loadtest/results/latest.csv}
mkdir -p "$(dirname "$RESULTS")"

. loadtest/common.sh
install_peers
export PATH="$PATH:/usr/sbin"
cargo build --release --quiet --workspace --bins --example plain_pingora
BIN=target/release

start_workspace

peak_rss_kb() { local r=0; for p in $(tree "$1"); do r=$((r + $(awk '/VmHWM/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0))); done; echo "$r"; }
to_ms() { awk -v v="$1" 'BEGIN { if (v ~ /us$/) printf "%.3f", v/1000; else if (v ~ /ms$/) printf "%.3f", v+0; else if (v ~ /s$/) printf "%.3f", v*1000; else print v }'; }

B1=$(free_port); B2=$(free_port)
if [ "${UPSTREAM:-nginx}" = nginx ]; then
  nginx_upstream "$B1 $B2"
else
  "$BIN/mock-backend" "$B1" --name b1 >/dev/null & pids+=($!)
  "$BIN/mock-backend" "$B2" --name b2 >/dev/null & pids+=($!)
fi
wait_port "$B1"; wait_port "$B2"

# Systems: name, URL, PID to measure ("" for none), extra wrk arguments.
names=(); urls=(); spids=(); extra=()
wanted() { [ -z "${ONLY:-}" ] || [[ $1 =~ $ONLY ]]; }
add() { wanted "$1" || return 0; names+=("$1"); urls+=("$2"); spids+=("$3"); extra+=("${4:-}"); }

add "direct" "http://127.0.0.1:$B1/" ""

# nginx: one worker, upstream keepalive.
NG=$(free_port)
nginx_conf "$work/nginx.conf" "$work" "$NG" "$B1 $B2"
nginx -c "$work/nginx.conf" -p "$work" -e "$work/nginx.err" & NGINX=$!; pids+=($NGINX)
wait_port "$NG"
add "nginx $(nginx -v 2>&1 | sed 's|.*/||')" "http://127.0.0.1:$NG/" "$NGINX"

# HAProxy: one thread, connection reuse.
HA=$(free_port)
haproxy_cfg "$work/haproxy.cfg" "$HA" "$B1 $B2"
haproxy -f "$work/haproxy.cfg" -db >"$work/haproxy.log" 2>&1 & HAP=$!; pids+=($HAP)
wait_port "$HA"
add "haproxy $(haproxy -v | awk 'NR==1 {print $3}')" "http://127.0.0.1:$HA/" "$HAP"

start_plain() { # → PLAIN (pid), PP (port)
  PP=$(free_port)
  pingora_keys "$work/plain$PP.yaml"
  PLAIN_LISTEN="127.0.0.1:$PP" PLAIN_UPSTREAMS="127.0.0.1:$B1,127.0.0.1:$B2" RUST_LOG=error \
    "$BIN/examples/plain_pingora" -c "$work/plain$PP.yaml" >/dev/null 2>&1 & PLAIN=$!; pids+=($PLAIN)
  wait_port "$PP"
}
start_plain
add "plain pingora" "http://127.0.0.1:$PP/" "$PLAIN"

start_hybrid() { # name algorithm sticky-mode [extra lb lines] [binary] → HLB (pid), HLB_PORT
  local name=$1 algorithm=$2 sticky=$3 extra=${4:-} bin=${5:-$BIN/hybrid-lb}
  local port dash; port=$(free_port); dash=$(free_port)
  hybrid_config "$work/$name.yaml" "$port" "$dash" "$algorithm" "$sticky" "$B1 $B2" "$extra"
  RUST_LOG=error "$bin" -c "$work/$name.yaml" >/dev/null 2>&1 & HLB=$!; pids+=($HLB)
  wait_port "$port"
  HLB_PORT=$port
}
for algorithm in round_robin weighted dynamic p2c; do
  wanted "hybrid-lb $algorithm" || continue
  start_hybrid "$algorithm" "$algorithm" off
  add "hybrid-lb $algorithm" "http://127.0.0.1:$HLB_PORT/" "$HLB"
done
if [ -n "${OTHER:-}" ]; then
  start_hybrid other dynamic off "" "$OTHER"
  add "hybrid-lb dynamic (other)" "http://127.0.0.1:$HLB_PORT/" "$HLB"
fi
if wanted "hybrid-lb dynamic+cookie"; then
  start_hybrid cookie dynamic cookie
  cookie=$(curl -s -D - -o /dev/null "http://127.0.0.1:$HLB_PORT/" | awk -F'[:;] *' 'tolower($1)=="set-cookie" {print $2}')
  add "hybrid-lb dynamic+cookie" "http://127.0.0.1:$HLB_PORT/" "$HLB" "Cookie: $cookie"
fi
# The access log on, to a file (its cost against plain dynamic, same run).
if wanted "hybrid-lb dynamic+log"; then
  start_hybrid log dynamic off "  access_log: { path: \"$work/access.log\" }"
  add "hybrid-lb dynamic+log" "http://127.0.0.1:$HLB_PORT/" "$HLB"
fi

# One turn of system $1 under load: appends "rps p50 p99 requests cpu_ticks" to $work/turns.$1.
turn() {
  local i=$1 url=${urls[$1]} pid=${spids[$1]} hdr=${extra[$1]} args=()
  [ -n "$hdr" ] && args=(-H "$hdr")
  wrk -t1 -c"$CONNS" -d1s "${args[@]}" "$url" >/dev/null 2>&1 || true   # warm-up
  local t0=0 t1=0 out
  [ -n "$pid" ] && t0=$(cpu_ticks "$pid")
  out=$(wrk -t1 -c"$CONNS" -d"${DUR}s" --latency "${args[@]}" "$url")
  [ -n "$pid" ] && t1=$(cpu_ticks "$pid")
  if grep -q "Non-2xx" <<<"$out"; then echo "bench: ${names[$i]} answered errors: $(grep Non-2xx <<<"$out")" >&2; fi
  echo "$(awk '/Requests\/sec/ {printf "%.0f", $2}' <<<"$out") \
$(to_ms "$(awk '$1=="50%" {print $2}' <<<"$out")") $(to_ms "$(awk '$1=="99%" {print $2}' <<<"$out")") \
$(awk '/requests in/ {print $1}' <<<"$out") $((t1 - t0))" >> "$work/turns.$i"
}

echo "wrk -t1 -c$CONNS, $ROUNDS turns of ${DUR}s each, loopback, $(nproc) cores, $(uname -r)"
# Each round starts one system later, so no system always follows the same one.
count=${#names[@]}
for r in $(seq "$ROUNDS"); do
  for k in $(seq 0 $((count - 1))); do turn $(((k + r - 1) % count)); done
  echo "round $r of $ROUNDS done" >&2
done

echo "system,rps,p50_ms,p99_ms,cpu_us_per_req,peak_rss_mb" > "$RESULTS"
hz=$(getconf CLK_TCK)
for i in "${!names[@]}"; do
  f="$work/turns.$i"
  rps=$(awk '{print $1}' "$f" | median); p50=$(awk '{print $2}' "$f" | median); p99=$(awk '{print $3}' "$f" | median)
  cpu=""; rss=""
  if [ -n "${spids[$i]}" ]; then
    cpu=$(awk -v hz="$hz" '{n+=$4; t+=$5} END {printf "%.1f", t/hz*1e6/n}' "$f")
    rss=$(awk -v k="$(peak_rss_kb "${spids[$i]}")" 'BEGIN {printf "%.1f", k/1024}')
  fi
  printf '%-26s %8s rps   p50 %7s ms   p99 %7s ms   cpu/req %6s us   peak RSS %6s MB\n' \
    "${names[$i]}" "$rps" "$p50" "$p99" "${cpu:--}" "${rss:--}"
  echo "${names[$i]},$rps,$p50,$p99,$cpu,$rss" >> "$RESULTS"
done
for p in "${spids[@]}"; do [ -n "$p" ] && [ "$p" != "$NGINX" ] && stop "$p"; done
kill -QUIT "$NGINX"; wait "$NGINX" 2>/dev/null || true

# Memory holding 1,000 busy client connections (peak RSS over a 5 s run).
RSS1000=-; PLAIN1000=-
if [ -z "${SKIP_RSS:-}" ]; then
  ulimit -n 65536 2>/dev/null || true
  rss1000() { # pid port → MB
    wrk -t1 -c1000 -d5s "http://127.0.0.1:$2/" >/dev/null 2>&1 || true
    awk -v k="$(peak_rss_kb "$1")" 'BEGIN {printf "%.1f", k/1024}'
  }
  start_plain
  PLAIN1000=$(rss1000 "$PLAIN" "$PP"); kill -INT "$PLAIN"
  start_hybrid rss dynamic off
  RSS1000=$(rss1000 "$HLB" "$HLB_PORT"); kill -INT "$HLB"
fi

echo
echo "| system | rps | p50 ms | p99 ms | CPU µs/req | peak RSS MB | rps ÷ nginx | CPU ÷ nginx | rps ÷ plain Pingora | CPU ÷ plain Pingora |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
awk -F, 'NR==1 {next}
  { name[NR]=$1; rps[NR]=$2; p50[NR]=$3; p99[NR]=$4; cpu[NR]=$5; rss[NR]=$6
    if ($1 ~ /^nginx/) { nr=$2; nc=$5 } if ($1=="plain pingora") { pr=$2; pc=$5 } }
  END { for (i=2; i<=NR; i++) {
    r1 = nr ? sprintf("%.2f", rps[i]/nr) : "-"; r2 = pr ? sprintf("%.2f", rps[i]/pr) : "-"
    c1 = (nc && cpu[i] != "") ? sprintf("%.2f", cpu[i]/nc) : "-"; c2 = (pc && cpu[i] != "") ? sprintf("%.2f", cpu[i]/pc) : "-"
    printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", name[i], rps[i], p50[i], p99[i], (cpu[i]==""?"-":cpu[i]), (rss[i]==""?"-":rss[i]), r1, c1, r2, c2 } }' "$RESULTS"
echo
echo "peak RSS with 1,000 client connections: hybrid-lb (dynamic) ${RSS1000} MB, plain Pingora ${PLAIN1000} MB"
printf 'system,peak_rss_1000_conns_mb\nplain pingora,%s\nhybrid-lb dynamic,%s\n' "$PLAIN1000" "$RSS1000" > "${RESULTS%.csv}-rss.csv"
