#!/usr/bin/env bash
# oha scenarios against a running hybrid-lb (default http://127.0.0.1:8080/).
# Install oha with `cargo install oha`. Traffic goes only to the URL given,
# which must be on 127.0.0.0/8; every scenario is bounded in time.
#
#   loadtest/oha.sh [steady|burst|long|all] [URL]
set -euo pipefail
SCENARIO=${1:-all}
URL=${2:-http://127.0.0.1:8080/}
case "$URL" in
  http://127.*|http://localhost*) ;;
  *) echo "oha.sh: only loopback targets (127.0.0.0/8) are allowed: $URL" >&2; exit 2 ;;
esac
command -v oha >/dev/null || { echo "oha.sh: oha is missing: cargo install oha" >&2; exit 1; }

steady() { echo "== steady: 500 req/s for 30 s, 20 connections"; oha --no-tui -z 30s -c 20 -q 500 "$URL"; }
burst()  { echo "== burst: as fast as possible for 10 s, 256 connections"; oha --no-tui -z 10s -c 256 "$URL"; }
long()   { echo "== long: 200 req/s for 10 min, 50 connections, new connection per request"; oha --no-tui -z 10m -c 50 -q 200 --disable-keepalive "$URL"; }

case "$SCENARIO" in
  steady) steady ;;
  burst) burst ;;
  long) long ;;
  all) steady; burst ;;
  *) echo "usage: $0 [steady|burst|long|all] [URL]" >&2; exit 2 ;;
esac
