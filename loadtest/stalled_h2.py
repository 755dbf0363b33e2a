#!/usr/bin/env python3
"""HTTP/2 clients that stop reading, against a running hybrid-lb with h2c on:
each connection opens streams with a flow-control window of 0 and never
reads a byte of their answers. Every second a normal client's GET is timed,
and the upstream's in-flight count and the balancer's RSS are read; at the
end it says how long the stalled streams held the upstream (with
`limits.send_timeout` they are cut after it) and whether RSS came back.
Every loop is bounded in count and time.

    loadtest/stalled_h2.py --proxy 127.0.0.1:8080 --dashboard 127.0.0.1:5000 \\
        --pid "$(pgrep -f 'hybrid-lb -c')" [--connections 20] [--streams 100] [--watch 90]

Needs the `h2` package (loadtest/requirements.txt).
"""
import argparse
import asyncio
import http.client
import time
import urllib.request

import h2.config
import h2.connection
import h2.settings


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def inflight(dashboard):
    """Requests in flight to upstreams, summed, from /metrics."""
    try:
        text = urllib.request.urlopen(f"http://{dashboard}/metrics", timeout=5).read().decode()
    except Exception:
        return None
    total = 0.0
    for line in text.splitlines():
        if line.startswith("hlb_upstream_inflight{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def probe(proxy):
    """Seconds another client's GET takes (from 127.0.0.2, not the stalling
    client's address), or None if it fails within 5 s."""
    host, port = proxy.rsplit(":", 1)
    start = time.monotonic()
    try:
        conn = http.client.HTTPConnection(host, int(port), timeout=5, source_address=("127.0.0.2", 0))
        conn.request("GET", "/")
        ok = conn.getresponse().status == 200
        conn.close()
    except Exception:
        return None
    return time.monotonic() - start if ok else None


async def stall(host, port, streams, stop):
    """One h2c connection: `streams` GETs with a window of 0, never read."""
    reader, writer = await asyncio.open_connection(host, port)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
    for _ in range(streams):
        sid = conn.get_next_available_stream_id()
        conn.send_headers(
            sid,
            [(":method", "GET"), (":path", "/"), (":scheme", "http"), (":authority", host)],
            end_stream=True,
        )
    writer.write(conn.data_to_send())
    await writer.drain()
    # Keep the connection open, answering nothing but the frames the
    # protocol requires (settings acks, pings), until told to stop.
    while not stop.is_set():
        try:
            data = await asyncio.wait_for(reader.read(65536), 1)
        except asyncio.TimeoutError:
            continue
        if not data:
            return
        conn.receive_data(data)
        out = conn.data_to_send()
        if out:
            writer.write(out)
            await writer.drain()
    writer.close()


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--proxy", required=True)
    p.add_argument("--dashboard", required=True)
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--connections", type=int, default=20)
    p.add_argument("--streams", type=int, default=100)
    p.add_argument("--watch", type=int, default=90, help="seconds to watch (at most 600)")
    a = p.parse_args()
    host, port = a.proxy.rsplit(":", 1)
    before = rss_mb(a.pid)
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(stall(host, int(port), a.streams, stop))
        for _ in range(a.connections)
    ]
    started = time.monotonic()
    held_until, peak_rss, worst = None, before, 0.0
    for second in range(min(a.watch, 600)):
        await asyncio.sleep(1)
        took = await asyncio.to_thread(probe, a.proxy)
        held = await asyncio.to_thread(inflight, a.dashboard)
        rss = rss_mb(a.pid)
        peak_rss = max(peak_rss, rss)
        worst = max(worst, took if took is not None else 5.0)
        print(f"{second + 1:4d}s  in flight {held}  rss {rss:.0f} MiB  "
              f"probe {'failed' if took is None else f'{took * 1000:.1f} ms'}")
        if held and held > 0:
            held_until = time.monotonic() - started
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    print(f"\n{a.connections} connections x {a.streams} stalled streams")
    print(f"upstream held for {held_until or 0:.0f} s; slowest probe {worst * 1000:.0f} ms")
    print(f"RSS {before:.0f} MiB before, {peak_rss:.0f} MiB at most, "
          f"{rss_mb(a.pid):.0f} MiB at the end")


if __name__ == "__main__":
    asyncio.run(main())
