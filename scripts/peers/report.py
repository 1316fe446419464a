"""The report of scripts/bench-peers: agreement checks, tables and charts.

  report.py agree TIDEMARK_VIEWS SPARK_ROWS DUCKDB_ROWS
      exits 1 unless the three per-minute KPI results are identical; prints Markdown
  report.py report --tmp DIR ...
      the Markdown section (stdout) and its PNG charts (--img)
"""

import argparse
import datetime
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kpis  # noqa: E402

SECTION = "## Side by side: Spark Structured Streaming and DuckDB (scripts/bench-peers)"


def lines(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def percentile(values, p):
    """Nearest-rank percentile of a non-empty list."""
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(-(-p * len(s) // 100)) - 1))
    return s[k]


def agree(tidemark_views, spark_rows, duckdb_rows):
    t = kpis.tidemark_rows(tidemark_views)
    results = {"Spark": kpis.read_rows(spark_rows), "DuckDB": kpis.read_rows(duckdb_rows)}
    ok = True
    out = []
    for name, rows in results.items():
        differing, _, _ = kpis.compare(t, rows)
        if differing:
            ok = False
            w = differing[0]
            out.append(f"- {name}: {len(differing)} of {len(set(t) | set(rows))} minute windows differ from Tidemark's; first at {w}: Tidemark {t.get(w)}, {name} {rows.get(w)}")
        else:
            events = sum(r["events"] for r in rows.values())
            out.append(f"- {name}: identical to Tidemark's `kpis` minute rows ({len(rows)} windows, {events} events, every counter)")
    print("\n".join(out))
    return ok


def fmt(x):
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}"


def report(a):
    tmp = a.tmp
    runs = {s: [r for r in lines(f"{tmp}/{s}.jsonl") if r["tag"].startswith("run")] for s in ("tidemark", "spark", "duckdb")}
    # The same numerator for all three: the file's records over each run's time (Spark's
    # own input-row count differs a little, as its JSON reader splits malformed lines).
    for s, rs in runs.items():
        for r in rs:
            r["rows_per_s"] = int(a.lines) / r["query_s" if s == "spark" else "seconds"]
    med = {s: statistics.median(r["rows_per_s"] for r in rs) for s, rs in runs.items()}
    out = []
    w = out.append
    w(SECTION)
    w("")
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    w(f"Measured {now} with `scripts/bench-peers` ({a.settings}).")
    w("")
    w(a.machine)
    w(f"- Peers: {a.versions}")
    w("")
    w(
        f"One generated file of {int(a.lines):,} records (default faults: late, duplicate, corrected, cancelled, too-late and"
        " malformed records), split into files of one micro-batch each. All three compute the same per-minute KPIs"
        " (events by type; purchase, refund and payment amounts in cents; `scripts/peers/kpis.py`):"
    )
    w("")
    w("- **Tidemark**: `tidemark run --input` over the whole file, every view maintained (sessions, funnel, KPIs,"
      " CLV, fraud, rejects), not only the KPIs; records/s from its `throughput` line.")
    w("- **Spark Structured Streaming**: a file stream, one file per micro-batch (`maxFilesPerTrigger` 1,"
      " `trigger(availableNow=True)`), `withWatermark` on event time, `dropDuplicatesWithinWatermark` on the event id,"
      " a one-minute `window` aggregation in update mode into a `foreachBatch` sink. Settings: `local[N]` with N the"
      " threads above, `spark.sql.shuffle.partitions` 4 (Spark's default of 200 is sized for clusters; its tuning guide"
      " asks for the cluster's parallelism), the default state store, driver memory 4 GB. Rows/s count the query's"
      " input rows over its run time, without the JVM and session start-up (shown apart).")
    w("- **DuckDB recompute**: each file appended to an `events` table, then the KPI table rebuilt from every event so"
      " far (`CREATE OR REPLACE TABLE ... AS SELECT`, duplicates removed by `row_number()` over the event id). Settings:"
      " `threads` as above, everything else default (in-memory database).")
    w("")
    w("### Throughput")
    w("")
    w(f"Median of {a.runs} rounds; each round runs the three one after another.")
    w("")
    w("| system | median events/s | min | max | Tidemark / system | peak RSS (MB) | notes |")
    w("|---|--:|--:|--:|--:|--:|---|")
    notes = {
        "tidemark": "every view",
        "spark": "start-up before the query: %s s median" % fmt(statistics.median(r["startup_s"] for r in runs["spark"])),
        "duckdb": "%d recomputes per run" % runs["duckdb"][0]["batches"],
    }
    names = {"tidemark": "Tidemark", "spark": "Spark Structured Streaming", "duckdb": "DuckDB recompute"}
    for s in ("tidemark", "spark", "duckdb"):
        vals = [r["rows_per_s"] for r in runs[s]]
        ratio = med["tidemark"] / med[s]
        rss = max(r["peak_rss_mb"] + r.get("jvm_peak_rss_mb", 0) for r in runs[s])
        w(f"| {names[s]} | **{fmt(med[s])}** | {fmt(min(vals))} | {fmt(max(vals))} | {ratio:.2f}x | {rss:,} | {notes[s]} |")
    w("")

    spark_batches = [p for p in lines(f"{tmp}/spark-run1.progress") if p["rows"] > 0]
    duck_steps = lines(f"{tmp}/duckdb-run1.progress")
    w("Time per micro-batch in the first round (ms): Spark's `triggerExecution` p50 %s, p99 %s, max %s over %d batches;"
      " DuckDB's append plus recompute p50 %s, p99 %s, max %s over %d batches (it grows with the events so far:"
      " %s ms for the first file, %s ms for the last)." % (
          fmt(percentile([p["trigger_ms"] for p in spark_batches], 50)), fmt(percentile([p["trigger_ms"] for p in spark_batches], 99)),
          fmt(max(p["trigger_ms"] for p in spark_batches)), len(spark_batches),
          fmt(percentile([p["step_ms"] for p in duck_steps], 50)), fmt(percentile([p["step_ms"] for p in duck_steps], 99)),
          fmt(max(p["step_ms"] for p in duck_steps)), len(duck_steps), fmt(duck_steps[0]["step_ms"]), fmt(duck_steps[-1]["step_ms"])))
    w("")
    chart_throughput(a.img, med, runs, names)
    chart_steps(a.img, spark_batches, duck_steps)
    w("![events/s of the three systems](img/peers-throughput.png)")
    w("![time per micro-batch](img/peers-batches.png)")
    w("")

    # Results over the faulty file.
    t_rows = kpis.tidemark_rows(f"{tmp}/tidemark-run1.json")
    s_rows = kpis.read_rows(f"{tmp}/spark-run1.json")
    d_rows = kpis.read_rows(f"{tmp}/duckdb-run1.json")
    with open(f"{tmp}/tidemark-run1.json") as f:
        rejects = {r["reason"]: r["count"] for r in json.load(f)["views"]["rejected_by_reason"]}
    dropped = runs["spark"][0]["dropped_by_watermark"]
    w("### Results on the faulty file")
    w("")
    w("Totals of the minute windows (first round):")
    w("")
    w("| counter | Tidemark | Spark | DuckDB recompute |")
    w("|---|--:|--:|--:|")
    for c in kpis.COUNTERS:
        vals = [sum(r[c] for r in rows.values()) for rows in (t_rows, s_rows, d_rows)]
        w(f"| {c} | {vals[0]:,} | {vals[1]:,} | {vals[2]:,} |")
    w(f"| minute windows | {len(t_rows)} | {len(s_rows)} | {len(d_rows)} |")
    w("")
    same_sd = len(kpis.compare(s_rows, d_rows)[0])
    inside = {name: sum(1 for w in t_rows if t_rows[w] != rows.get(w)) for name, rows in (("Spark", s_rows), ("DuckDB", d_rows))}
    w(f"- Spark dropped **{dropped:,}** rows as later than its watermark ({runs['spark'][0]['watermark']}) in this run"
      f" (`numRowsDroppedByWatermark`, summed over its stateful operators). Tidemark rejected {rejects.get('too_late', 0):,}"
      " records as older than its retention (`too_late`); every other late event corrected its window.")
    w(f"- Tidemark's rejects by reason: " + ", ".join(f"{k} {v:,}" for k, v in sorted(rejects.items())) + ".")
    w(f"- Of Tidemark's {len(t_rows)} windows, Spark's numbers differ in {inside['Spark']} and DuckDB's in {inside['DuckDB']};"
      f" the peers' other windows hold only too-late records. Spark and DuckDB differ from each other in {same_sd}"
      f" of {len(set(s_rows) | set(d_rows))} windows.")
    w("  Where the semantics part: neither peer applies corrections and cancellations (`retracts`), so a corrected"
      " purchase counts twice there and a cancelled event stays; the peers' validity filter is not Tidemark's decoder"
      " (records with a wrongly typed field are read as nulls by Spark and skipped by DuckDB); Spark's first"
      " micro-batch has no watermark yet, so it keeps the too-late records in it, and later ones it drops;"
      " DuckDB keeps every too-late record, each in a window of its own.")
    w("")
    w("### Agreement where the semantics agree")
    w("")
    clean_records = next(r["input_rows"] for r in lines(f"{tmp}/tidemark.jsonl") if r["tag"] == "clean")
    with open(f"{tmp}/agreement.md") as f:
        agreement = f.read().strip()
    w(f"A clean file from the same generator (no late, duplicate, corrected or malformed records; {clean_records:,} records), each system once:")
    w("")
    w(agreement)
    w("")

    if a.paced:
        spark_progress, spark_pace, duck_progress, tidemark_paced, rate = a.paced
        lat = paced_latencies(spark_progress, spark_pace, duck_progress, tidemark_paced, rate)
        w(f"### Latency at {int(rate):,} events/s offered")
        w("")
        w(f"The first {lines(tidemark_paced)[-1]['events']:,} records of the file, offered at {int(rate):,} lines/s."
          " For the peers a file of one second's lines appears in their input directory once a second; latency runs from"
          " the file's appearance to its batch's results (Spark: the micro-batch that read it finished, its rows in the"
          " sink; DuckDB: the KPI table rebuilt). The second of batching before a file appears is not counted."
          " Tidemark receives the same lines over gRPC `Ingest` (`tidemark-load replay --rate`), one request every"
          " 10 ms, and its latency runs from sending a request to a consistent read seeing its events (a worker process"
          " with the threads above and a coordinator on loopback, all views on).")
        w("")
        w("| system | batches | p50 (ms) | p90 | p99 | max | kept up |")
        w("|---|--:|--:|--:|--:|--:|---|")
        for s in ("tidemark", "spark", "duckdb"):
            d = lat[s]
            w(f"| {names[s]} | {d['count']:,} | {fmt(d['p50'])} | {fmt(d['p90'])} | {fmt(d['p99'])} | {fmt(d['max'])} | {d['kept_up']} |")
        w("")
        chart_latency(a.img, lat, names, rate)
        w("![latency at the offered rate](img/peers-latency.png)")
        w("")
    print("\n".join(out))


def paced_latencies(spark_progress, spark_pace, duck_progress, tidemark_paced, rate):
    result = {}
    written = [float(line.split()[1]) for line in open(spark_pace) if line.strip()]
    batches = [p for p in lines(spark_progress) if p["rows"] > 0]
    spark = []
    for p, created in zip(batches, written):
        started = datetime.datetime.fromisoformat(p["started"].replace("Z", "+00:00")).timestamp()
        spark.append((started + p["trigger_ms"] / 1000 - created) * 1000)
    result["spark"] = summarize(spark, len(batches) == len(written))
    duck = [p["latency_ms"] for p in lines(duck_progress)]
    result["duckdb"] = summarize(duck, True)
    t = lines(tidemark_paced)[-1]
    result["tidemark"] = {
        "count": t["requests"],
        "p50": t["visible_p50_us"] / 1000,
        "p90": t["visible_p90_us"] / 1000,
        "p99": t["visible_p99_us"] / 1000,
        "max": t["visible_max_us"] / 1000,
        "kept_up": "yes" if t["complete"] and t["acked_rate"] >= 0.95 * float(rate) else "no (%.0f events/s acknowledged)" % t["acked_rate"],
    }
    for s in ("spark", "duckdb"):
        # A peer kept up when its latency did not grow over the run: the last tenth's
        # median stays within a second of the first tenth's.
        values = spark if s == "spark" else duck
        tenth = max(1, len(values) // 10)
        first, last = statistics.median(values[:tenth]), statistics.median(values[-tenth:])
        result[s]["kept_up"] = "yes" if last - first < 1000 else f"no (latency grew from {fmt(first)} to {fmt(last)} ms)"
    return result


def summarize(values, complete):
    return {
        "count": len(values),
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": max(values),
        "kept_up": "yes" if complete else "no",
    }


def plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot


def chart_throughput(img, med, runs, names):
    p = plt()
    fig, ax = p.subplots(figsize=(6, 3.2), dpi=120)
    systems = ["tidemark", "spark", "duckdb"]
    ax.bar([names[s] for s in systems], [med[s] for s in systems], color=["#1f77b4", "#ff7f0e", "#2ca02c"])
    for i, s in enumerate(systems):
        vals = [r["rows_per_s"] for r in runs[s]]
        ax.plot([i] * len(vals), vals, "k.", markersize=4)
    ax.set_ylabel("events/s (median, dots: runs)")
    ax.set_title("Throughput over the same event file")
    fig.tight_layout()
    fig.savefig(os.path.join(img, "peers-throughput.png"))


def chart_steps(img, spark_batches, duck_steps):
    p = plt()
    fig, ax = p.subplots(figsize=(6, 3.2), dpi=120)
    ax.plot(range(1, len(spark_batches) + 1), [b["trigger_ms"] for b in spark_batches], label="Spark micro-batch")
    ax.plot(range(1, len(duck_steps) + 1), [b["step_ms"] for b in duck_steps], label="DuckDB append + recompute")
    ax.set_xlabel("batch")
    ax.set_yscale("log")
    ax.set_ylabel("ms (log)")
    ax.set_title("Time per batch as the data grows")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(img, "peers-batches.png"))


def chart_latency(img, lat, names, rate):
    p = plt()
    fig, ax = p.subplots(figsize=(6, 3.2), dpi=120)
    systems = ["tidemark", "spark", "duckdb"]
    labels = ["p50", "p90", "p99", "max"]
    width = 0.25
    for i, s in enumerate(systems):
        ax.bar([x + i * width for x in range(len(labels))], [lat[s][k] for k in labels], width, label=names[s])
    ax.set_xticks([x + width for x in range(len(labels))], labels)
    ax.set_yscale("log")
    ax.set_ylabel("ms (log)")
    ax.set_title(f"Latency to results at {int(rate):,} events/s offered")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(img, "peers-latency.png"))


def main():
    if len(sys.argv) == 5 and sys.argv[1] == "agree":
        sys.exit(0 if agree(*sys.argv[2:5]) else 1)
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["report"])
    parser.add_argument("--tmp", required=True)
    parser.add_argument("--runs", required=True)
    parser.add_argument("--img", required=True)
    parser.add_argument("--paced", nargs=5)
    parser.add_argument("--settings", required=True)
    parser.add_argument("--machine", required=True)
    parser.add_argument("--versions", required=True)
    parser.add_argument("--lines", required=True)
    report(parser.parse_args())


if __name__ == "__main__":
    main()
