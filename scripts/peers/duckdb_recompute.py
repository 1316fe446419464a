"""Per-minute KPIs recomputed from scratch with DuckDB after every batch.

This is the "load the batch, then recompute the views" design: each input file is
appended to an `events` table (the raw columns plus its arrival sequence), and then the
per-minute KPI table is rebuilt from every event so far: valid rows (kpis.VALID), the
first delivery of each event id, counted by minute. The time of one step (append plus
rebuild) is the latency of that batch's numbers.

Modes:
  (default)        process the files of --input-dir in name order as fast as possible
  --pace-file F    wait for the files a pacer writes, in order, and record for each
                   batch the time from the file's creation (its name's line in F: name
                   and wall-clock seconds) to the rebuilt table; stop after --follow
                   files

Writes --out (final windows, kpis.write_rows) and --progress (one JSON line per batch).
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import duckdb  # noqa: E402
import kpis  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--input-dir", required=True)
parser.add_argument("--out", required=True)
parser.add_argument("--progress", required=True)
parser.add_argument("--threads", type=int, default=2)
parser.add_argument("--pace-file")
parser.add_argument("--follow", type=int, default=0)
args = parser.parse_args()

db = duckdb.connect(config={"threads": args.threads})
db.execute(
    """CREATE TABLE events (seq BIGINT, event_id VARCHAR, event_type VARCHAR, event_ts VARCHAR,
       user_id VARCHAR, product_id VARCHAR, price DOUBLE, quantity BIGINT)"""
)
COLUMNS = "{event_id: 'VARCHAR', event_type: 'VARCHAR', event_ts: 'VARCHAR', user_id: 'VARCHAR', product_id: 'VARCHAR', price: 'DOUBLE', quantity: 'BIGINT'}"
REBUILD = """
CREATE OR REPLACE TABLE kpis_minute AS
WITH parsed AS (
    SELECT *, try_cast(event_ts AS TIMESTAMPTZ) AS ts FROM events
), valid AS (
    SELECT time_bucket(INTERVAL 1 MINUTE, ts) AS window_start, event_type,
           coalesce(CAST(round(price * 100) AS BIGINT), 0) * coalesce(quantity, 1) AS amount_cents
    FROM parsed
    WHERE {valid}
    QUALIFY row_number() OVER (PARTITION BY event_id ORDER BY seq) = 1
)
SELECT CAST(epoch_ms(window_start) AS BIGINT) AS window_start, {aggregates}
FROM valid GROUP BY window_start
""".format(valid=kpis.VALID, aggregates=kpis.AGGREGATES)


def step(path, seq):
    """Appends one file and rebuilds the table."""
    db.execute(
        "INSERT INTO events SELECT CAST(? AS BIGINT) * 100000000 + row_number() OVER (), * FROM read_json(?, format='newline_delimited', columns={cols}, ignore_errors=true)".format(
            cols=COLUMNS
        ),
        [seq, path],
    )
    db.execute(REBUILD)


def lines(path):
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def batches():
    """(file name, wall-clock seconds it appeared or None) of every batch, in order."""
    if args.pace_file is None:
        for name in sorted(os.listdir(args.input_dir)):
            yield name, None
        return
    seen = 0
    while seen < args.follow:
        with open(args.pace_file) as f:
            written = [line.split() for line in f if line.strip()]
        if seen == len(written):
            time.sleep(0.005)
        for name, created in written[seen:]:
            yield name, float(created)
        seen = len(written)


progress = open(args.progress, "w")
start = time.time()
rows = 0
count = 0
for count, (name, created) in enumerate(batches(), start=1):
    path = os.path.join(args.input_dir, name)
    t0 = time.time()
    step(path, count - 1)
    t1 = time.time()
    n = lines(path)
    rows += n
    record = {"batch": count - 1, "rows": n, "step_ms": round((t1 - t0) * 1000, 3)}
    if created is not None:
        record["latency_ms"] = round((t1 - created) * 1000, 3)
    progress.write(json.dumps(record) + "\n")
elapsed = time.time() - start
progress.close()

result = {}
for row in db.execute("SELECT * FROM kpis_minute").fetchall():
    d = dict(zip([c[0] for c in db.description], row))
    result[int(d.pop("window_start"))] = {c: int(d[c]) for c in kpis.COUNTERS}
kpis.write_rows(args.out, result)
print(json.dumps({"system": "duckdb", "input_rows": rows, "batches": count, "seconds": round(elapsed, 3), "rows_per_s": round(rows / max(elapsed, 1e-9), 1), "windows": len(result)}))
