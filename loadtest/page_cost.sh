#!/usr/bin/env bash
# What the dashboard page costs the proxy: rps through hybrid-lb (dynamic, one
# worker thread) with no page open, then with the dashboard open in headless
# Chromium (live over SSE), alternating, in one run. Loopback only, bounded.
#
#   loadtest/page_cost.sh [seconds per run, default 10]
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10}
command -v wrk >/dev/null || { echo "page_cost: wrk is missing (apt-get install -y wrk)" >&2; exit 1; }
[ -x /usr/bin/chromium ] || { echo "page_cost: Chromium is missing (apt-get install -y chromium)" >&2; exit 1; }
cargo build --release --quiet --workspace --bins
(cd dashboard && [ -d node_modules/playwright-core ] || npm ci --no-audit --no-fund >/dev/null)
BIN=target/release
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -INT "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
. loadtest/common.sh

B1=$(free_port); B2=$(free_port); P=$(free_port); D=$(free_port)
"$BIN/mock-backend" "$B1" --name b1 >/dev/null & pids+=($!)
"$BIN/mock-backend" "$B2" --name b2 >/dev/null & pids+=($!)
hybrid_config "$work/lb.yaml" "$P" "$D" dynamic off "$B1 $B2"
RUST_LOG=error "$BIN/hybrid-lb" -c "$work/lb.yaml" >/dev/null 2>&1 & LB=$!; pids+=($LB)
wait_port "$P"; wait_port "$D"

cat > "$work/open_page.cjs" <<'JS'
const { chromium } = require(process.argv[3] + "/node_modules/playwright-core");
(async () => {
  const b = await chromium.launch({ executablePath: "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync"] });
  const page = await b.newPage({ viewport: { width: 1280, height: 1000 } });
  await page.goto(process.argv[2]);
  await page.waitForFunction(() => document.querySelector("#live")?.textContent === "live");
  console.log("open");
  await new Promise((r) => process.stdin.once("data", r));
  await b.close();
})();
JS

measure() { wrk -t1 -c64 -d"${DUR}s" "http://127.0.0.1:$P/" | awk '/Requests\/sec/ {printf "%.0f", $2}'; }
wrk -t1 -c64 -d2s "http://127.0.0.1:$P/" >/dev/null
closed=(); open=()
for round in 1 2; do
  closed+=("$(measure)")
  mkfifo "$work/ctl$round"
  node "$work/open_page.cjs" "http://127.0.0.1:$D/" "$PWD/dashboard" < "$work/ctl$round" > "$work/page$round.log" 2>&1 & NODE=$!
  exec 7>"$work/ctl$round"
  for _ in $(seq 300); do grep -q open "$work/page$round.log" 2>/dev/null && break; sleep 0.1; done
  open+=("$(measure)")
  echo done >&7; exec 7>&-; wait "$NODE" || true
done
echo "rps with no page open:        ${closed[*]}"
echo "rps with the dashboard open:  ${open[*]}"
awk -v c="${closed[*]}" -v o="${open[*]}" 'BEGIN { n=split(c, a); split(o, b); for (i=1;i<=n;i++) { sc+=a[i]; so+=b[i] }
  printf "page open / closed: %.3f\n", so/sc }'
