"""Draws the benchmark comparison from loadtest/bench.sh's CSV.

    python3 loadtest/chart.py loadtest/results/latest.csv docs/benchmark.png
"""

import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(src: str, dst: str) -> None:
    with open(src, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["system"] != "direct"]
    names = [r["system"].replace(" ", "\n", 1) for r in rows]
    rps = [float(r["rps"]) / 1000 for r in rows]
    cpu = [float(r["cpu_us_per_req"]) for r in rows]
    p99 = [float(r["p99_ms"]) for r in rows]
    colors = ["#0b62c4" if r["system"].startswith("hybrid-lb") else "#9aa3b2" for r in rows]

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.8))
    for ax, values, title in (
        (axes[0], rps, "throughput (thousand req/s, higher is better)"),
        (axes[1], cpu, "CPU per request (µs, lower is better)"),
        (axes[2], p99, "p99 latency (ms, lower is better)"),
    ):
        bars = ax.bar(names, values, color=colors)
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="x", labelsize=7, rotation=0)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
        ax.spines[["top", "right"]].set_visible(False)
    fig.suptitle("wrk -t1 -c64 on loopback, one proxy worker thread each, same run", fontsize=11)
    fig.tight_layout()
    fig.savefig(dst, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
