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
    """Appends one file and rebuilds the table; returns the rows appended."""
    before = db.execute("SELECT count(*) FROM events").fetchone()[0]
    db.execute(
        "INSERT INTO events SELECT CAST(? AS BIGINT) * 100000000 + row_number() OVER (), * FROM read_json(?, format='newline_delimited', columns={cols}, ignore_errors=true)".format(
            cols=COLUMNS
        ),
        [seq, path],
    )
    db.execute(REBUILD)
    return db.execute("SELECT count(*) FROM events").fetchone()[0] - before


def lines(path):
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


progress = open(args.progress, "w")
start = time.time()
rows = 0
batches = 0
if args.pace_file is None:
    for seq, name in enumerate(sorted(os.listdir(args.input_dir))):
        path = os.path.join(args.input_dir, name)
        t0 = time.time()
        step(path, seq)
        t1 = time.time()
        n = lines(path)
        rows += n
        batches += 1
        progress.write(json.dumps({"batch": seq, "rows": n, "step_ms": round((t1 - t0) * 1000, 3)}) + "\n")
else:
    seen = 0
    while batches < args.follow:
        with open(args.pace_file) as f:
            written = [line.split() for line in f if line.strip()]
        if seen >= len(written):
            time.sleep(0.005)
            continue
        name, created = written[seen][0], float(written[seen][1])
        path = os.path.join(args.input_dir, name)
        t0 = time.time()
        step(path, seen)
        t1 = time.time()
        n = lines(path)
        rows += n
        progress.write(
            json.dumps({"batch": seen, "rows": n, "step_ms": round((t1 - t0) * 1000, 3), "latency_ms": round((t1 - created) * 1000, 3)}) + "\n"
        )
        seen += 1
        batches += 1
elapsed = time.time() - start
progress.close()

result = {}
for row in db.execute("SELECT * FROM kpis_minute").fetchall():
    d = dict(zip([c[0] for c in db.description], row))
    result[int(d.pop("window_start"))] = {c: int(d[c]) for c in kpis.COUNTERS}
kpis.write_rows(args.out, result)
print(json.dumps({"system": "duckdb", "input_rows": rows, "batches": batches, "seconds": round(elapsed, 3), "rows_per_s": round(rows / max(elapsed, 1e-9), 1), "windows": len(result)}))
