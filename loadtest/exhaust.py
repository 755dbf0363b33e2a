#!/usr/bin/env python3
"""Connection exhaustion soak: holds many idle and trickling connections
against the proxy and dashboard ports of a running hybrid-lb, from many
loopback addresses, and checks every second that a normal client is still
served quickly and the upstreams stay healthy; then lets go and watches RSS
come back. Every loop is bounded in count and time.

    loadtest/exhaust.py --proxy 127.0.0.1:8080 --dashboard 127.0.0.1:5000 \\
        --pid "$(pgrep -f 'hybrid-lb -c')" [--connections 20000] [--hold 30]
"""
import argparse
import asyncio
import json
import resource
import time
import urllib.request


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def hold(addr, source, trickle, stop, stats):
    """One connection from `source`: idle, or trickling a header byte every 2 s."""
    host, port = addr
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, local_addr=(source, 0)), 5
        )
    except Exception:
        stats["failed_to_open"] += 1
        return
    stats["open"] += 1
    try:
        if trickle:
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")
        while not stop.is_set():
            if trickle:
                writer.write(b"X")
                await writer.drain()
            try:
                data = await asyncio.wait_for(reader.read(1024), 2)
                if not data:
                    stats["closed_by_server"] += 1
                    return
            except asyncio.TimeoutError:
                pass
    except Exception:
        stats["closed_by_server"] += 1
    finally:
        stats["open"] -= 1
        writer.close()


def probe(url):
    """Seconds a plain GET takes, or None if it fails within 5 s."""
    start = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            r.read()
            return time.monotonic() - start if r.status == 200 else None
    except Exception:
        return None


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--proxy", required=True)
    p.add_argument("--dashboard", required=True)
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--connections", type=int, default=20000)
    p.add_argument("--hold", type=int, default=30, help="seconds to hold them")
    p.add_argument("--sources", type=int, default=40, help="loopback addresses to connect from")
    a = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    parse = lambda s: (s.rsplit(":", 1)[0], int(s.rsplit(":", 1)[1]))
    proxy, dashboard = parse(a.proxy), parse(a.dashboard)
    stats = {"open": 0, "failed_to_open": 0, "closed_by_server": 0}
    stop = asyncio.Event()
    baseline = rss_mb(a.pid)
    print(f"baseline RSS {baseline:.1f} MB; opening {a.connections} connections from {a.sources} addresses")
    tasks = []
    for i in range(a.connections):
        source = f"127.0.1.{1 + i % a.sources}"
        target = proxy if i % 2 == 0 else dashboard
        tasks.append(asyncio.create_task(hold(target, source, i % 4 < 2, stop, stats)))
        if i % 500 == 499:
            await asyncio.sleep(0.05)
    worst = {"proxy": 0.0, "dashboard": 0.0}
    failures = {"proxy": 0, "dashboard": 0}
    unhealthy = 0
    peak = baseline
    for second in range(a.hold):
        await asyncio.sleep(1)
        for name, url in (
            ("proxy", f"http://{a.proxy}/"),
            ("dashboard", f"http://{a.dashboard}/api/state"),
        ):
            took = await asyncio.to_thread(probe, url)
            if took is None:
                failures[name] += 1
            else:
                worst[name] = max(worst[name], took)
        try:
            state = json.loads(await asyncio.to_thread(
                lambda: urllib.request.urlopen(f"http://{a.dashboard}/api/state", timeout=5).read()))
            unhealthy += sum(1 for u in state["upstreams"] if u["health"] != "up")
        except Exception:
            pass
        peak = max(peak, rss_mb(a.pid))
        print(f"t={second + 1:3d}s held={stats['open']:6d} closed-by-server={stats['closed_by_server']:6d} "
              f"RSS={rss_mb(a.pid):7.1f} MB")
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    after = []
    for _ in range(60):
        await asyncio.sleep(1)
        after.append(rss_mb(a.pid))
    print(json.dumps({
        "connections_tried": a.connections,
        "failed_to_open": stats["failed_to_open"],
        "closed_by_server": stats["closed_by_server"],
        "normal_client_worst_seconds": worst,
        "normal_client_failures": failures,
        "unhealthy_upstream_samples": unhealthy,
        "rss_mb": {"baseline": round(baseline, 1), "peak": round(peak, 1),
                   "after_60s": round(after[-1], 1)},
    }, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
