#!/usr/bin/env bash
# HTTPS side by side, in one run: nginx, HAProxy and hybrid-lb terminate TLS
# with the same ECDSA P-256 certificate, one worker each, in front of the same
# two mock backends (plain HTTP). Two loads per system, taking turns ROUNDS
# times (each round starting one system later): keep-alive (wrk -t1 -cCONNS)
# and new connections (the same with `Connection: close`, so every request is
# a new TCP connection and a full TLS 1.3 handshake). For each: rps and the
# proxy's CPU µs per request (medians and totals over the rounds), then
# ratios to nginx. Traffic goes only to 127.0.0.1; every run is bounded.
#
#   loadtest/tls_bench.sh [seconds per turn, default 5]
#   env: ROUNDS (default 3), CONNS (default 64),
#        RESULTS (CSV path, default loadtest/results/tls-latest.csv)
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-5}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-64}
RESULTS=${RESULTS:-loadtest/results/tls-latest.csv}
mkdir -p "$(dirname "$RESULTS")"

. loadtest/common.sh
install_peers
export PATH="$PATH:/usr/sbin"
cargo build --release --quiet --bins
BIN=target/release

start_workspace


# One certificate for all three (HAProxy wants certificate and key in one file).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
  -subj "/CN=bench.test" -addext "subjectAltName=DNS:bench.test" \
  -keyout "$work/site.key" -out "$work/site.crt" 2>/dev/null
cat "$work/site.crt" "$work/site.key" > "$work/site.pem"

B1=$(free_port); B2=$(free_port)
"$BIN/mock-backend" "$B1" --name b1 >/dev/null & pids+=($!)
"$BIN/mock-backend" "$B2" --name b2 >/dev/null & pids+=($!)
wait_port "$B1"; wait_port "$B2"

names=(); ports=(); spids=()
add() { names+=("$1"); ports+=("$2"); spids+=("$3"); }

NG=$(free_port)
nginx_conf "$work/nginx.conf" "$work" "$NG" "$B1 $B2" "$work/site.crt" "$work/site.key"
nginx -c "$work/nginx.conf" -p "$work" -e "$work/nginx.err" & NGINX=$!; pids+=($NGINX)
wait_port "$NG"
add "nginx $(nginx -v 2>&1 | sed 's|.*/||')" "$NG" "$NGINX"

HA=$(free_port)
haproxy_cfg "$work/haproxy.cfg" "$HA" "$B1 $B2" "$work/site.pem"
haproxy -f "$work/haproxy.cfg" -db >"$work/haproxy.log" 2>&1 & HAP=$!; pids+=($HAP)
wait_port "$HA"
add "haproxy $(haproxy -v | awk 'NR==1 {print $3}')" "$HA" "$HAP"

HP=$(free_port); HPD=$(free_port); HT=$(free_port)
hybrid_config "$work/hlb.yaml" "$HP" "$HPD" round_robin off "$B1 $B2"
python3 - "$work/hlb.yaml" "$HT" "$work" <<'PY'
import sys
path, port, work = sys.argv[1], sys.argv[2], sys.argv[3]
text = open(path).read().replace(
    "lb:\n",
    f"lb:\n  tls:\n    listen: [\"127.0.0.1:{port}\"]\n"
    f"    certificates: [{{ cert: \"{work}/site.crt\", key: \"{work}/site.key\" }}]\n"
    "    http2: false\n",
    1,
)
open(path, "w").write(text)
PY
RUST_LOG=error "$BIN/hybrid-lb" -c "$work/hlb.yaml" >/dev/null 2>&1 & HLB=$!; pids+=($HLB)
wait_port "$HT"
add "hybrid-lb" "$HT" "$HLB"

# One turn: system $1 under load $2 (keepalive|new); appends "rps requests ticks".
turn() {
  local i=$1 mode=$2 url="https://127.0.0.1:${ports[$1]}/" pid=${spids[$1]} args=()
  [ "$mode" = new ] && args=(-H "Connection: close")
  wrk -t1 -c"$CONNS" -d1s "${args[@]}" "$url" >/dev/null 2>&1 || true
  local t0 t1 out
  t0=$(cpu_ticks "$pid")
  out=$(wrk -t1 -c"$CONNS" -d"${DUR}s" "${args[@]}" "$url")
  t1=$(cpu_ticks "$pid")
  if grep -q "Non-2xx" <<<"$out"; then echo "tls bench: ${names[$i]} answered errors: $(grep Non-2xx <<<"$out")" >&2; fi
  echo "$(awk '/Requests\/sec/ {printf "%.0f", $2}' <<<"$out") $(awk '/requests in/ {print $1}' <<<"$out") $((t1 - t0))" >> "$work/turns.$i.$mode"
}

echo "HTTPS: wrk -t1 -c$CONNS, $ROUNDS rounds of ${DUR}s turns, loopback, $(nproc) cores, $(uname -r)"
count=${#names[@]}
for r in $(seq "$ROUNDS"); do
  for k in $(seq 0 $((count - 1))); do
    i=$(((k + r - 1) % count))
    turn "$i" keepalive
    turn "$i" new
  done
  echo "round $r of $ROUNDS done" >&2
done

hz=$(getconf CLK_TCK)
echo "system,keepalive_rps,keepalive_cpu_us_per_req,new_conn_rps,new_conn_cpu_us_per_req" > "$RESULTS"
for i in "${!names[@]}"; do
  row="${names[$i]}"
  for mode in keepalive new; do
    f="$work/turns.$i.$mode"
    rps=$(awk '{print $1}' "$f" | median)
    cpu=$(awk -v hz="$hz" '{n+=$2; t+=$3} END {printf "%.1f", t/hz*1e6/n}' "$f")
    row="$row,$rps,$cpu"
  done
  echo "$row" >> "$RESULTS"
done
echo
echo "| system | keep-alive rps | CPU µs/req | new TLS connections/s | CPU µs/handshake+req | keep-alive rps ÷ nginx | CPU ÷ nginx | new conns/s ÷ nginx | CPU ÷ nginx |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
awk -F, 'NR==1 {next}
  { n[NR]=$1; kr[NR]=$2; kc[NR]=$3; nr[NR]=$4; nc[NR]=$5; if ($1 ~ /^nginx/) { a=$2; b=$3; c=$4; d=$5 } }
  END { for (i=2; i<=NR; i++) printf "| %s | %s | %s | %s | %s | %.2f | %.2f | %.2f | %.2f |\n",
    n[i], kr[i], kc[i], nr[i], nc[i], kr[i]/a, kc[i]/b, nr[i]/c, nc[i]/d }' "$RESULTS"
