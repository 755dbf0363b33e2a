#!/usr/bin/env python3
"""How fast two instances on one etcd agree: a real etcd, two mock upstreams
and two hybrid-lb instances on ephemeral ports; each round drains, enables,
adds and removes an upstream through one instance's admin API and times how
long until the other instance's /api/state shows it (polled every 2 ms).

  python3 loadtest/fleet.py [rounds, default 30]

Needs etcd (Debian: etcd-server) and a release build (cargo build --release).
"""
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release")
TOKEN = "fleet-bench"
ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 30
DEADLINE = 10.0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(what, cond, deadline=DEADLINE):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.002)
    raise SystemExit(f"fleet.py: timed out waiting for {what}")


def http(method, url, body=None):
    req = urllib.request.Request(url, method=method, data=body.encode() if body else None)
    req.add_header("Authorization", f"Bearer {TOKEN}")
    if body:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return None, b""


def upstream(dashboard, name):
    status, body = http("GET", f"http://127.0.0.1:{dashboard}/api/state")
    if status != 200:
        return None
    return next((u for u in json.loads(body)["upstreams"] if u["name"] == name), None)


def main():
    etcd = shutil.which("etcd") or "/usr/bin/etcd"
    work = tempfile.mkdtemp(prefix="hlb-fleet-")
    procs = []
    try:
        client, peer = free_port(), free_port()
        procs.append(subprocess.Popen(
            [etcd, "--name", "b", "--data-dir", os.path.join(work, "etcd"),
             "--listen-client-urls", f"http://127.0.0.1:{client}",
             "--advertise-client-urls", f"http://127.0.0.1:{client}",
             "--listen-peer-urls", f"http://127.0.0.1:{peer}",
             "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
             "--initial-cluster", f"b=http://127.0.0.1:{peer}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        mocks = [free_port(), free_port()]
        for i, port in enumerate(mocks):
            procs.append(subprocess.Popen([os.path.join(BIN, "mock-backend"), str(port), "--name", f"m{i + 1}"],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        dashboards = []
        for i in (1, 2):
            proxy, dash = free_port(), free_port()
            conf = os.path.join(work, f"lb{i}.yaml")
            with open(conf, "w") as f:
                f.write(f"""version: 1
threads: 1
grace_period_seconds: 1
graceful_shutdown_timeout_seconds: 1
pid_file: {work}/lb{i}.pid
upgrade_sock: {work}/lb{i}.sock
lb:
  listen: ["127.0.0.1:{proxy}"]
  health_check: {{ interval: 1s }}
  etcd: {{ endpoints: ["127.0.0.1:{client}"], prefix: /bench/, id: lb{i} }}
  upstreams:
    - {{ name: s1, addr: "127.0.0.1:{mocks[0]}" }}
dashboard:
  listen: "127.0.0.1:{dash}"
  admin_token: {TOKEN}
""")
            procs.append(subprocess.Popen([os.path.join(BIN, "hybrid-lb"), "-c", conf],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            dashboards.append(dash)
        a, b = dashboards
        for d in dashboards:
            wait_until("both instances connected with both listed", lambda d=d: (
                (r := http("GET", f"http://127.0.0.1:{d}/api/fleet"))[0] == 200
                and json.loads(r[1])["connected"] and len(json.loads(r[1])["instances"]) == 2))

        times = {"drain": [], "enable": [], "add": [], "remove": []}

        def timed(action, call, seen):
            start = time.perf_counter()
            status, body = call()
            if status not in (200, 201):
                raise SystemExit(f"fleet.py: {action} answered {status}: {body!r}")
            wait_until(f"{action} seen by the other instance", seen)
            times[action].append((time.perf_counter() - start) * 1000)

        for i in range(ROUNDS):
            name = f"x{i}"
            add = json.dumps({"name": name, "addr": f"127.0.0.1:{mocks[1]}"})
            timed("add", lambda: http("POST", f"http://127.0.0.1:{a}/api/upstreams", add),
                  lambda: upstream(b, name) is not None)
            timed("drain", lambda: http("POST", f"http://127.0.0.1:{b}/api/upstreams/s1/drain"),
                  lambda: (upstream(a, "s1") or {}).get("drained") is True)
            timed("enable", lambda: http("POST", f"http://127.0.0.1:{a}/api/upstreams/s1/enable"),
                  lambda: (upstream(b, "s1") or {}).get("drained") is False)
            timed("remove", lambda: http("DELETE", f"http://127.0.0.1:{b}/api/upstreams/{name}"),
                  lambda: upstream(a, name) is None)

        print(f"{ROUNDS} rounds; ms from the admin request on one instance until the other's /api/state shows it")
        print("| change | p50 ms | p90 ms | max ms |")
        print("|---|---:|---:|---:|")
        rows = []
        for action, ts in times.items():
            ts.sort()
            p50 = statistics.median(ts)
            p90 = ts[int(len(ts) * 0.9) - 1] if len(ts) >= 10 else ts[-1]
            print(f"| {action} | {p50:.1f} | {p90:.1f} | {ts[-1]:.1f} |")
            rows.append(f"{action},{p50:.1f},{p90:.1f},{ts[-1]:.1f}")
        with open(os.path.join(ROOT, "loadtest", "results", "fleet.csv"), "w") as f:
            f.write("change,p50_ms,p90_ms,max_ms\n" + "\n".join(rows) + "\n")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
