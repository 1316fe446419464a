"""Charts of the load tests' summary lines (PNG, matplotlib).

  plot.py freshness OUT_PREFIX RATE=FILE ...
      OUT_PREFIX-percentiles.png: freshness p50/p90/p99/max over the offered rate;
      OUT_PREFIX-throughput.png: acknowledged events/s against freshness p99, one point
      per run
  plot.py query OUT_PREFIX QPS=FILE ...
      OUT_PREFIX-percentiles.png: lookup (and range scan) p50/p90/p99/p99.9 over the
      offered rate

Each FILE holds the JSON summary lines of the runs at that rate; the medians over runs
are drawn, each run as a dot.
"""

import json
import statistics
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load(pairs):
    points = []
    for pair in pairs:
        rate, path = pair.split("=", 1)
        with open(path) as f:
            runs = [json.loads(line) for line in f if line.strip()]
        points.append((int(rate), runs))
    return sorted(points)


def percentile_chart(path, points, fields, xlabel, title):
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=120)
    xs = [rate for rate, _ in points]
    for label, field in fields:
        if not all(field in r for _, runs in points for r in runs):
            continue
        ys = [statistics.median(r[field] for r in runs) / 1000 for _, runs in points]
        line = ax.plot(xs, ys, marker="o", label=label)[0]
        for rate, runs in points:
            ax.plot([rate] * len(runs), [r[field] / 1000 for r in runs], ".", color=line.get_color(), alpha=0.4)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("ms (log)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def freshness(prefix, points):
    percentile_chart(
        prefix + "-percentiles.png",
        points,
        [("p50", "freshness_p50_us"), ("p90", "freshness_p90_us"), ("p99", "freshness_p99_us"), ("max", "freshness_max_us")],
        "offered events/s (log)",
        "Freshness (Ingest ack to Subscribe update) over offered load",
    )
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=120)
    for rate, runs in points:
        ax.plot([r["achieved_rate"] for r in runs], [r["freshness_p99_us"] / 1000 for r in runs], "o", label=f"{rate:,} offered")
    ax.set_xlabel("acknowledged events/s")
    ax.set_ylabel("freshness p99, ms (log)")
    ax.set_yscale("log")
    ax.set_title("Throughput against latency, one point per run")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(prefix + "-throughput.png")


def query(prefix, points):
    percentile_chart(
        prefix + "-percentiles.png",
        points,
        [
            ("lookup p50", "lookup_p50_us"),
            ("lookup p99", "lookup_p99_us"),
            ("lookup p99.9", "lookup_p999_us"),
            ("range p50", "range_p50_us"),
            ("range p99", "range_p99_us"),
        ],
        "offered queries/s (log)",
        "Query latency while ingesting, over offered rate",
    )


if __name__ == "__main__":
    if len(sys.argv) < 4 or sys.argv[1] not in ("freshness", "query"):
        sys.exit(__doc__)
    {"freshness": freshness, "query": query}[sys.argv[1]](sys.argv[2], load(sys.argv[3:]))
