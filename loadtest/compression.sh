#!/usr/bin/env bash
# What compressing costs and saves, side by side in one run: a 20 KB JSON
# answer from an nginx upstream (its own gzip off), fetched through nginx
# with `gzip on` (one worker, gzip_comp_level 5 and its default 1) and
# through hybrid-lb with `compress: true` (one thread; gzip level 5, zstd 3,
# brotli 4), and through both without compression for the baseline. Each
# turn is wrk (closed loop, keep-alive) for DUR seconds with one
# Accept-Encoding; the proxy's CPU (user + system, its process tree) is
# divided by the requests served. Reports CPU µs per request, bytes per
# answer and the share saved; ROUNDS rounds, systems in a rotating order,
# medians. Traffic goes only to 127.0.0.1; every run is bounded.
#
#   loadtest/compression.sh [seconds per turn, default 8]
#   env: ROUNDS (default 3), RESULTS (default loadtest/results/compression.csv)
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-8}
ROUNDS=${ROUNDS:-3}
RESULTS=${RESULTS:-loadtest/results/compression.csv}
mkdir -p "$(dirname "$RESULTS")"

. loadtest/common.sh
install_peers
export PATH="$PATH:/usr/sbin"
cargo build --release --quiet --workspace --bins
BIN=target/release
HZ=$(getconf CLK_TCK)
start_workspace

# The upstream: nginx serving data.json (about 20 KB) uncompressed.
UP=$(free_port)
mkdir -p "$work/www" "$work/up"
python3 - "$work/www/data.json" <<'PY'
import json, sys
items = [{"id": i, "name": f"item-{i}", "price": round(i * 7 % 100 + i % 100 / 100, 2),
          "tags": ["a", f"b{i % 13}"], "in_stock": i % 3 != 0} for i in range(230)]
open(sys.argv[1], "w").write(json.dumps(items))
PY
SIZE=$(stat -c %s "$work/www/data.json")
cat > "$work/up/nginx.conf" <<CONF
worker_processes 1;
master_process off;
daemon off;
pid $work/up/nginx.pid;
error_log $work/up/nginx.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000; types { application/json json; }
  server { listen 127.0.0.1:$UP; root $work/www; } }
CONF
nginx -c "$work/up/nginx.conf" -p "$work/up" & pids+=($!)
wait_port "$UP"

# system: "name|accept-encoding"
systems=("nginx off|gzip" "nginx gzip 1|gzip" "nginx gzip 5|gzip"
         "hybrid-lb off|gzip" "hybrid-lb gzip|gzip" "hybrid-lb zstd|zstd" "hybrid-lb br|br")

# Starts system $1 → SPID, SPORT.
start_system() {
  SPORT=$(free_port)
  case $1 in
    nginx*)
      nginx_conf "$work/nginx.conf" "$work" "$SPORT" "$UP"
      local level=${1#nginx gzip }
      if [ "$1" != "nginx off" ]; then
        sed -i "s|access_log off;|access_log off; gzip on; gzip_comp_level $level; gzip_proxied any; gzip_min_length 1025; gzip_types application/json; gzip_vary on;|" "$work/nginx.conf"
      fi
      nginx -c "$work/nginx.conf" -p "$work" -e "$work/nginx.err" & SPID=$! ;;
    hybrid-lb*)
      local compress=true
      [ "$1" = "hybrid-lb off" ] && compress=false
      hybrid_config "$work/hlb.yaml" "$SPORT" "$(free_port)" round_robin off "$UP" \
        "  routes: [{ name: all, match: {}, pool: default, compress: $compress }]"
      RUST_LOG=error "$BIN/hybrid-lb" -c "$work/hlb.yaml" >"$work/hlb.log" 2>&1 & SPID=$! ;;
  esac
  pids+=($SPID)
  wait_port "$SPORT"
}

# One turn of system $1: appends "cpu_us_per_request requests_per_sec bytes".
turn() {
  local name=${1%|*} ae=${1#*|} before after out n bytes
  start_system "$name"
  bytes=$(curl -s -H "Accept-Encoding: $ae" -o /dev/null -w '%{size_download}' "http://127.0.0.1:$SPORT/data.json")
  wrk -t1 -c16 -d2s -H "Accept-Encoding: $ae" "http://127.0.0.1:$SPORT/data.json" >/dev/null
  before=$(cpu_ticks "$SPID")
  out=$(wrk -t1 -c16 -d"${DUR}s" -H "Accept-Encoding: $ae" "http://127.0.0.1:$SPORT/data.json")
  after=$(cpu_ticks "$SPID")
  n=$(echo "$out" | awk '/requests in/ {print $1}')
  stop_system
  echo "$(awk -v t=$((after - before)) -v hz="$HZ" -v n="$n" 'BEGIN {printf "%.1f", t * 1e6 / hz / n}') \
$(awk -v n="$n" -v d="$DUR" 'BEGIN {printf "%.0f", n / d}') $bytes" >> "$work/turns.${name// /_}"
}

echo "data.json: $SIZE bytes; ${DUR}s per turn after a 2 s warm-up, wrk -c16, $ROUNDS rounds, $(nproc) cores"
count=${#systems[@]}
for r in $(seq "$ROUNDS"); do
  for k in $(seq 0 $((count - 1))); do turn "${systems[$(((k + r - 1) % count))]}"; done
  echo "round $r of $ROUNDS done" >&2
done

col() { awk -v c="$1" '{print $c}' "$2" | median; }
base_nginx=$(col 1 "$work/turns.nginx_off")
base_hlb=$(col 1 "$work/turns.hybrid-lb_off")
echo "system,coding,cpu_us_per_request,cpu_us_over_uncompressed,requests_per_sec,bytes,saved_pct" > "$RESULTS"
for s in "${systems[@]}"; do
  name=${s%|*} ae=${s#*|}
  f="$work/turns.${name// /_}"
  cpu=$(col 1 "$f"); bytes=$(col 3 "$f")
  base=$base_nginx; [[ $name == hybrid-lb* ]] && base=$base_hlb
  coding=$ae; [[ $name == *off ]] && coding=identity
  echo "$name,$coding,$cpu,$(awk -v a="$cpu" -v b="$base" 'BEGIN {printf "%.1f", a - b}'),$(col 2 "$f"),$bytes,$(awk -v b="$bytes" -v s="$SIZE" 'BEGIN {printf "%.1f", (1 - b / s) * 100}')" >> "$RESULTS"
done
echo
echo "| system | coding | CPU µs / request | of it, compressing | requests/s | bytes / answer | saved |"
echo "|---|---|---:|---:|---:|---:|---:|"
awk -F, 'NR > 1 {printf "| %s | %s | %s | %s | %s | %s | %s%% |\n", $1, $2, $3, $4, $5, $6, $7}' "$RESULTS"
gz_h=$(awk -F, '$1 == "hybrid-lb gzip" {print $3}' "$RESULTS")
gz_n=$(awk -F, '$1 == "nginx gzip 5" {print $3}' "$RESULTS")
echo
echo "CPU per gzip request, hybrid-lb ÷ nginx (both level 5): $(awk -v a="$gz_h" -v b="$gz_n" 'BEGIN {printf "%.2f", a / b}')"
