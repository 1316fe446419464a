"""Per-minute KPIs with Spark Structured Streaming, as a Spark user would write them.

Reads a directory of JSON-lines files as a file stream (one file per micro-batch,
`maxFilesPerTrigger` 1), keeps the valid events (kpis.VALID), sets a watermark on event
time, drops duplicate event ids within the watermark (`dropDuplicatesWithinWatermark`)
and counts tumbling one-minute windows in update mode. Every micro-batch's updated
windows go to a `foreachBatch` sink that keeps the latest value of each window, as a
dashboard table would.

Modes:
  --available-now   process the files already there, as fast as possible, then stop
  --follow N        keep running until N files were processed, one micro-batch each
                    (files are written into the directory by a pacer while it runs);
                    --ready FILE is created once the query has started

Writes --out (the final windows, kpis.write_rows) and --progress (one JSON line per
micro-batch: id, input rows, trigger duration, commit time, rows dropped by the
watermark).
"""

import argparse
import json
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kpis  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--input-dir", required=True)
parser.add_argument("--out", required=True)
parser.add_argument("--progress", required=True)
parser.add_argument("--watermark", default="10 minutes")
parser.add_argument("--cores", type=int, default=2)
parser.add_argument("--shuffle-partitions", type=int, default=4)
parser.add_argument("--checkpoint", required=True)
mode = parser.add_mutually_exclusive_group(required=True)
mode.add_argument("--available-now", action="store_true")
mode.add_argument("--follow", type=int, metavar="FILES")
parser.add_argument("--ready")
args = parser.parse_args()

started = time.time()
from pyspark.sql import SparkSession  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402
from pyspark.sql.types import DoubleType, LongType, StringType, StructField, StructType  # noqa: E402

spark = (
    SparkSession.builder.master("local[%d]" % args.cores)
    .appName("tidemark-peer-kpis")
    .config("spark.sql.shuffle.partitions", str(args.shuffle_partitions))
    .config("spark.sql.streaming.numRecentProgressUpdates", "100000")
    .config("spark.driver.memory", "4g")
    .config("spark.ui.enabled", "false")
    .getOrCreate()
)
spark.sparkContext.setLogLevel("ERROR")
session_ready = time.time()

schema = StructType(
    [
        StructField("event_id", StringType()),
        StructField("event_type", StringType()),
        StructField("event_ts", StringType()),
        StructField("user_id", StringType()),
        StructField("product_id", StringType()),
        StructField("price", DoubleType()),
        StructField("quantity", LongType()),
    ]
)
raw = (
    spark.readStream.schema(schema)
    .option("maxFilesPerTrigger", 1)
    .option("mode", "PERMISSIVE")
    .json(args.input_dir)
)
events = raw.withColumn("ts", F.try_to_timestamp(F.col("event_ts")))
valid = (
    events.where(kpis.VALID)
    .withColumn(
        "amount_cents",
        F.coalesce(F.round(F.col("price") * 100).cast("long"), F.lit(0)) * F.coalesce(F.col("quantity"), F.lit(1)),
    )
    .withWatermark("ts", args.watermark)
    .dropDuplicatesWithinWatermark(["event_id"])
)
windows = (
    valid.groupBy(F.window("ts", "1 minute").alias("w"))
    .agg(*[F.expr(e.strip().rstrip(",")) for e in kpis.AGGREGATES.strip().split(",\n")])
    .withColumn("window_start", (F.unix_micros(F.col("w.start")) / 1000).cast("long"))
    .drop("w")
)

latest = {}


def keep_latest(batch, batch_id):
    for r in batch.collect():
        d = r.asDict()
        latest[int(d.pop("window_start"))] = {c: int(d[c]) for c in kpis.COUNTERS}


query = windows.writeStream.outputMode("update").option("checkpointLocation", args.checkpoint).foreachBatch(keep_latest)
if args.available_now:
    query = query.trigger(availableNow=True)
query = query.start()
query_started = time.time()
if args.ready:
    open(args.ready, "w").close()
if args.available_now:
    query.awaitTermination()
else:
    while True:
        done = sum(1 for p in query.recentProgress if p["numInputRows"] > 0)
        if done >= args.follow or query.exception() is not None:
            break
        time.sleep(0.05)
    query.stop()
finished = time.time()
if query.exception() is not None:
    sys.exit("spark query failed: %s" % query.exception())

progress = query.recentProgress
with open(args.progress, "w") as f:
    for p in progress:
        dropped = sum(op.get("numRowsDroppedByWatermark", 0) for op in p.get("stateOperators", []))
        f.write(
            json.dumps(
                {
                    "batch": p["batchId"],
                    "rows": p["numInputRows"],
                    "trigger_ms": p["durationMs"].get("triggerExecution", 0),
                    "started": p["timestamp"],
                    "dropped_by_watermark": dropped,
                }
            )
            + "\n"
        )
kpis.write_rows(args.out, latest)


def jvm_peak_rss_mb():
    """The largest peak RSS (VmHWM) among this process's descendants: the JVM that
    py4j started. GNU time does not see it, since it is not waited for by its parent."""
    children = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open("/proc/%s/stat" % pid) as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(pid))
    peak, todo = 0, list(children.get(os.getpid(), []))
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        try:
            with open("/proc/%d/status" % pid) as f:
                m = re.search(r"VmHWM:\s+(\d+) kB", f.read())
        except OSError:
            continue
        if m:
            peak = max(peak, int(m.group(1)) // 1024)
    return peak


rows = sum(p["numInputRows"] for p in progress)
summary = {
    "system": "spark",
    "watermark": args.watermark,
    "input_rows": rows,
    "batches": sum(1 for p in progress if p["numInputRows"] > 0),
    "startup_s": round(session_ready - started, 3),
    "query_s": round(finished - query_started, 3),
    "rows_per_s": round(rows / max(finished - query_started, 1e-9), 1),
    "dropped_by_watermark": sum(
        op.get("numRowsDroppedByWatermark", 0) for p in progress for op in p.get("stateOperators", [])
    ),
    "windows": len(latest),
    "jvm_peak_rss_mb": jvm_peak_rss_mb(),
}
print(json.dumps(summary))
spark.stop()
