"""Draw the chart of a `bench.py` results file (runs in .venv-bench: matplotlib).

    python benchmarks/bench_chart.py RESULTS.json CHART.png

Left: throughput per contender (tx/s, with CPU µs per transaction on each bar). Right:
fraudstream's latency percentiles per input rate (log scale). Titled with the machine, the
commit and the command.
"""

import json
import sys
import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def main() -> None:
    results, png = sys.argv[1], sys.argv[2]
    with open(results) as f:
        r = json.load(f)
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 6), gridspec_kw={"width_ratios": [3, 2]})

    done = [c for c in r["contenders"] if c.get("tx_per_s") and not c.get("error")]
    names = [c["label"] for c in done]
    tps = [c["tx_per_s"] for c in done]
    colors = [
        "tab:blue" if c["name"] in ("default", "model", "workers2") else "tab:gray" for c in done
    ]
    bars = left.barh(names, tps, color=colors)
    left.invert_yaxis()
    left.set_xlabel("transactions per second (launch until all are in its outputs)")
    left.set_title(
        f"throughput, {r['count']:,} preloaded transactions, {r['partitions']} partitions"
    )
    for bar, c in zip(bars, done, strict=True):
        left.text(
            bar.get_width(),
            bar.get_y() + bar.get_height() / 2,
            f" {c['tx_per_s']:,.0f} tx/s, {c['cpu_us_per_tx']:.1f} µs CPU/tx"
            + (
                f" (broker {c['broker_cpu_us_per_tx']:.1f})"
                if c.get("broker_cpu_us_per_tx") is not None
                else ""
            )
            + f", {c['peak_rss_mb']:,.0f} MB",
            va="center",
            fontsize=8,
        )
    left.set_xlim(0, max(tps, default=1) * 1.9)
    failed = [c["label"] for c in r["contenders"] if c not in done]
    if failed:
        left.text(0, -0.12, "failed: " + ", ".join(failed), transform=left.transAxes, fontsize=8)

    lat = [row for row in r.get("latency", []) if "p50_ms" in row]
    if lat:
        width = 0.25
        for i, (key, label) in enumerate(
            (("p50_ms", "p50"), ("p99_ms", "p99"), ("p999_ms", "p99.9"))
        ):
            xs = [j + (i - 1) * width for j in range(len(lat))]
            bars = right.bar(xs, [row[key] for row in lat], width, label=label)
            right.bar_label(bars, fmt="%.0f", fontsize=7)
        right.set_xticks(range(len(lat)), [f"{row['rate']:,.0f} tx/s" for row in lat])
        right.set_yscale("log")
        top = max(row["p999_ms"] for row in lat)
        right.set_ylim(1, top * 5)  # bars from 1 ms up, so their heights compare
        right.set_ylabel("ms, produce to read_committed visibility")
        right.legend(loc="upper left", ncols=3)
    else:
        right.text(0.5, 0.5, "latency not measured", ha="center", transform=right.transAxes)
        right.set_xticks([])
        right.set_yticks([])
    right.set_title("latency, fraudstream default rules")

    m = r["machine"]
    fig.suptitle(
        f"fraudstream bench {r['date']} — {m['cores']} cores, {m['cpu']}, commit {r['commit']}, "
        f"load average at start {m['load_average'][0]}\n"
        + textwrap.fill(r["command"], 150, break_long_words=False, break_on_hyphens=False),
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(png, dpi=110)


if __name__ == "__main__":
    main()
