#!/usr/bin/env bash
# Memory of per-client rate limits as the number of clients grows: hybrid-lb
# behind a trusted proxy header (X-Forwarded-For), with lb.rate_limit on and
# off, side by side in one run. Each instance takes the same traffic from 1,000
# and then from 100,000 distinct client addresses (wrk -t1 -c32, a Lua script
# naming the address per request); RSS is read after each. Light clients must
# never be refused. Traffic goes only to 127.0.0.1; every run is bounded.
#
#   loadtest/rate_limit_memory.sh [seconds per phase, default 10]
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10}
. loadtest/common.sh
install_peers
cargo build --release --quiet --workspace --bins
BIN=target/release
start_workspace

cat > "$work/clients.lua" <<'LUA'
-- One request per call, from client address 10.x.y.z, cycling over N addresses.
local n, count = tonumber(os.getenv("CLIENTS")), 0
request = function()
  count = count + 1
  local i = count % n
  local ip = string.format("10.%d.%d.%d", math.floor(i / 65536) % 256, math.floor(i / 256) % 256, i % 256)
  return wrk.format("GET", "/", { ["X-Forwarded-For"] = ip })
end
LUA

B=$(free_port)
"$BIN/mock-backend" "$B" --name b1 >/dev/null & pids+=($!)
wait_port "$B"

rss_mb() { awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$1/status"; }
declare -A rss
for mode in off on; do
  port=$(free_port)
  extra="  trusted_proxies: [\"127.0.0.1/32\"]"
  [ "$mode" = on ] && extra="$extra
  rate_limit: { requests_per_sec: 100, burst: 200 }"
  hybrid_config "$work/$mode.yaml" "$port" "$(free_port)" round_robin off "$B" "$extra"
  RUST_LOG=error "$BIN/hybrid-lb" -c "$work/$mode.yaml" >/dev/null 2>&1 & pid=$!; pids+=($pid)
  wait_port "$port"
  rss[$mode,start]=$(rss_mb "$pid")
  for clients in 1000 100000; do
    out=$(CLIENTS=$clients wrk -t1 -c32 -d"${DUR}s" -s "$work/clients.lua" "http://127.0.0.1:$port/")
    refused=$(awk '/Non-2xx/ {print $NF}' <<<"$out"); refused=${refused:-0}
    rss[$mode,$clients]=$(rss_mb "$pid")
    echo "rate limit $mode, $clients clients: $(awk '/requests in/ {print $1}' <<<"$out") requests, $refused refused, RSS ${rss[$mode,$clients]} MB" >&2
  done
  stop "$pid"
done

echo
echo "| rate limit | RSS at start MB | after 1,000 clients MB | after 100,000 clients MB | growth 1k → 100k MB |"
echo "|---|---:|---:|---:|---:|"
for mode in off on; do
  growth=$(awk -v a="${rss[$mode,1000]}" -v b="${rss[$mode,100000]}" 'BEGIN {printf "%.1f", b - a}')
  echo "| $mode | ${rss[$mode,start]} | ${rss[$mode,1000]} | ${rss[$mode,100000]} | $growth |"
done
