#!/usr/bin/env python3
"""A DNS name flipping between two working addresses: starts dnsmasq, two
mock upstreams on 127.0.0.2 and 127.0.0.3 (one port), and hybrid-lb with a
`dns:` entry for the name; flips the record every `--every` seconds while a
client sends requests one after another, and counts the requests that did
not get a 200. Every address works all along, so every failure is the
balancer's. Bounded: at most `--seconds` (at most 300) of flipping.

    cargo build --release && loadtest/flip_dns.py [--every 1] [--seconds 20]

Needs dnsmasq (Debian: dnsmasq-base).
"""
import argparse
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request


def free_port(udp=False):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if udp else socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(host, port, limit=20):
    end = time.monotonic() + limit
    while time.monotonic() < end:
        try:
            socket.create_connection((host, port), 0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {host}:{port}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--every", type=float, default=1.0, help="seconds between flips")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--binary", help="the hybrid-lb to run (default: target/release's)")
    a = p.parse_args()
    target = os.path.join(os.path.dirname(__file__), "..", "target", "release")
    dnsmasq = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
    work = tempfile.mkdtemp()
    procs = []
    try:
        port = free_port()
        for i, addr in enumerate(["127.0.0.2", "127.0.0.3"]):
            procs.append(subprocess.Popen(
                [f"{target}/mock-backend", str(port), "--host", addr, "--name", f"m{i}"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            wait_port(addr, port)
        hosts = os.path.join(work, "hosts")

        def point(addr):
            with open(hosts + ".new", "w") as f:
                f.write(f"{addr} flip.test\n")
            os.chmod(hosts + ".new", 0o644)
            os.rename(hosts + ".new", hosts)

        point("127.0.0.2")
        os.chmod(work, 0o755)
        dns_port = free_port(udp=True)
        dns = subprocess.Popen(
            [dnsmasq, "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv",
             "--no-hosts", "--bind-interfaces", "--listen-address=127.0.0.1",
             "--local-ttl=1", "--local=/test/", "--pid-file=", f"--port={dns_port}",
             f"--addn-hosts={hosts}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(dns)
        wait_port("127.0.0.1", dns_port)
        proxy, dash = free_port(), free_port()
        conf = os.path.join(work, "lb.yaml")
        with open(conf, "w") as f:
            f.write(f"""version: 1
threads: 1
grace_period_seconds: 1
graceful_shutdown_timeout_seconds: 1
pid_file: {work}/lb.pid
upgrade_sock: {work}/lb.sock
lb:
  listen: ["127.0.0.1:{proxy}"]
  discovery: {{ resolvers: ["127.0.0.1:{dns_port}"], refresh: 1s }}
  health_check: {{ interval: 1s, healthy_threshold: 2 }}
  upstreams:
    - {{ name: flip, dns: "flip.test:{port}" }}
dashboard:
  listen: "127.0.0.1:{dash}"
""")
        lb = subprocess.Popen([a.binary or f"{target}/hybrid-lb", "-c", conf],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(lb)
        wait_port("127.0.0.1", proxy)
        sent = failed = flips = 0
        start = time.monotonic()
        next_flip = start + a.every
        end = start + min(a.seconds, 300)
        while time.monotonic() < end:
            if time.monotonic() >= next_flip:
                flips += 1
                point("127.0.0.3" if flips % 2 else "127.0.0.2")
                dns.send_signal(signal.SIGHUP)
                next_flip += a.every
            sent += 1
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{proxy}/", timeout=5).read()
            except Exception:
                failed += 1
            time.sleep(0.005)
        print(f"{flips} flips every {a.every:g} s over {a.seconds:g} s: "
              f"{failed} of {sent} requests failed ({100 * failed / max(sent, 1):.1f}%)")
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGINT)
        for proc in procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
