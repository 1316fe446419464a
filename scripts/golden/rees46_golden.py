#!/usr/bin/env python3
"""Golden numbers for the REES46 clickstream sample, derived independently with DuckDB.

Purpose
-------
This script is an *independent* derivation (DuckDB SQL, no Tidemark code) of the
numbers Tidemark's views must produce for
``../shared/data/rees46/2019-Oct_head_17435rows.csv`` (see ``shared/data/README.md``).
Its output, ``rees46_golden.json`` next to this script, is used as golden numbers
by the Rust tests. A second, equally independent implementation in plain Python
(``csv`` module, no DuckDB) recomputes every section and the script reports, per
section, whether both agree (``cross_check``); it exits with status 1 if they
do not.

How to run
----------
    python3 -m venv .venv-golden && .venv-golden/bin/pip install duckdb
    .venv-golden/bin/python scripts/golden/rees46_golden.py [CSV] [--out JSON | --no-write]

CSV defaults to ``<repo>/../shared/data/rees46/2019-Oct_head_17435rows.csv`` and the
JSON is written to ``scripts/golden/rees46_golden.json`` (and always printed to stdout).

Reading
-------
The file is read as raw text (DuckDB ``read_text`` + split on LF, a trailing CR
removed: the file has CRLF line endings), never through a CSV sniffer, so a bad
line cannot be dropped silently or crash the reader. ``position`` is the 1-based
line number in the file: the header is line 1, the first data row is position 2.
A data line is a valid event iff it has exactly 9 comma-separated fields (the file
has no quotes; a quote character would also make the line malformed), event_time
parses as ``%Y-%m-%d %H:%M:%S UTC``, event_type is one of view / cart /
remove_from_cart / purchase, price is a decimal, user_id an integer and
user_session non-empty. Anything else is a malformed record: counted, excluded
from everything else. (The last line of this file is cut off: 8 fields, no
user_session -> exactly 1 malformed record.) An empty final line (a file ending
with a newline) is not a record.

Definitions (implemented exactly; all money in integer cents)
-------------------------------------------------------------
* Type mapping: view -> product_view, cart -> add_to_cart, remove_from_cart,
  purchase. Type rank: page_view 0, product_view 1, add_to_cart 2,
  remove_from_cart 3, checkout 4, purchase 5.
* amount = round(price * 100) cents, computed on DECIMAL (exact; every price here
  has 2 decimals, so there is no rounding tie).
* Totals: valid events, counts by mapped type, purchase revenue (sum of amounts
  of purchase events), distinct users.
* Session = (user_id, user_session). start = min event_time, end = max, events,
  product_views, cart_adds, purchases, revenue (purchases' amounts), orders =
  number of purchase events (no order ids: every purchase is its own order).
* Ordered funnel step (0..4), computed in SQL: events of a session sorted by
  (event_time, type rank, position); state s=0; s==0 and a view (page_view or
  product_view) -> 1; s==1 and add_to_cart -> 2; s==2 and checkout -> 3; s==3 and
  purchase -> 4. The SQL uses the equivalent greedy form: i1 = first view,
  i2 = first add_to_cart after i1, i3 = first checkout after i2, i4 = first
  purchase after i3. The data has no checkout events, so steps >= 3 are 0.
* Funnel per hour, dimension "all": hour window (UTC) of the session START; per
  window: sessions, sessions with step >= 1..4, purchasing_sessions (>= 1
  purchase, order irrelevant), orders, revenue_cents, unique_users (distinct
  users among those sessions).
* Funnel per hour, dimension "category": session category = category_code of the
  first event in (time, rank, position) order with a non-empty category_code,
  else "(none)"; same columns grouped by (hour, category). Reported: the 5
  largest categories of the first hour (by sessions, ties by name) plus "(none)",
  the number of (hour, category) rows, and column sums over all rows.
* KPIs per hour by EVENT time: events, product_views, cart_adds, cart_removes,
  purchases, revenue_cents, orders (= purchases).
* Per minute (session START): number of minute windows with >= 1 session start,
  sessions of the first 3 such minutes.

Window labels are ISO-8601 UTC (``2019-10-01T00:00:00Z``) plus epoch seconds.
"""

import argparse
import collections
import csv
import datetime as dt
import hashlib
import json
import sys
from pathlib import Path

import duckdb

SCRIPT_DIR = Path(__file__).resolve().parent
REPO = SCRIPT_DIR.parent.parent
DEFAULT_CSV = REPO.parent / "shared" / "data" / "rees46" / "2019-Oct_head_17435rows.csv"
DEFAULT_OUT = SCRIPT_DIR / "rees46_golden.json"

TYPE_MAP = {"view": "product_view", "cart": "add_to_cart",
            "remove_from_cart": "remove_from_cart", "purchase": "purchase"}
RANK = {"page_view": 0, "product_view": 1, "add_to_cart": 2,
        "remove_from_cart": 3, "checkout": 4, "purchase": 5}
FUNNEL_COLS = ["sessions", "step_ge_1", "step_ge_2", "step_ge_3", "step_ge_4",
               "purchasing_sessions", "orders", "revenue_cents", "unique_users"]
KPI_COLS = ["events", "product_views", "cart_adds", "cart_removes", "purchases",
            "revenue_cents", "orders"]


def sql_str(s):
    return "'" + str(s).replace("'", "''") + "'"


# ----------------------------------------------------------------------------
# Method 1: DuckDB SQL
# ----------------------------------------------------------------------------
def duckdb_golden(csv_path):
    con = duckdb.connect()
    q = lambda sql: con.execute(sql).fetchall()

    con.execute(f"""
    CREATE TABLE raw AS
    WITH f AS (SELECT string_split(content, chr(10)) AS ls FROM read_text({sql_str(csv_path)})),
    l AS (SELECT unnest(ls) AS line, generate_subscripts(ls, 1) AS position FROM f)
    SELECT position::BIGINT AS position,
           regexp_replace(line, '\\r$', '') AS line
    FROM l
    """)
    # a file ending in a newline yields one empty last element: not a line, not a record
    con.execute("""DELETE FROM raw WHERE line = '' AND position = (SELECT max(position) FROM raw)""")
    n_lines_total = q("SELECT count(*) FROM raw")[0][0]

    con.execute("""
    CREATE TABLE parsed AS
    SELECT position, line, f,
           len(f) AS nfields,
           try_strptime(f[1], '%Y-%m-%d %H:%M:%S UTC') AS ts,
           f[2] AS event_type,
           f[3] AS product_id,
           f[5] AS category_code,
           f[6] AS brand,
           try_cast(f[7] AS DECIMAL(18,2)) AS price,
           try_cast(f[8] AS BIGINT) AS user_id,
           f[9] AS user_session
    FROM (SELECT position, line, string_split(line, ',') AS f FROM raw WHERE position > 1)
    """)
    con.execute("""
    CREATE TABLE checked AS
    SELECT *, CASE
        WHEN strpos(line, '"') > 0 THEN 'quote_in_line'
        WHEN nfields <> 9 THEN 'field_count_' || nfields
        WHEN ts IS NULL THEN 'bad_event_time'
        WHEN event_type NOT IN ('view','cart','remove_from_cart','purchase') THEN 'bad_event_type'
        WHEN price IS NULL THEN 'bad_price'
        WHEN user_id IS NULL THEN 'bad_user_id'
        WHEN coalesce(user_session, '') = '' THEN 'missing_user_session'
        ELSE NULL END AS reject_reason
    FROM parsed
    """)
    con.execute("""
    CREATE TABLE ev AS
    SELECT position, ts, user_id, user_session, product_id, category_code, brand, price,
           CASE event_type WHEN 'view' THEN 'product_view' WHEN 'cart' THEN 'add_to_cart'
                ELSE event_type END AS etype,
           CASE event_type WHEN 'view' THEN 1 WHEN 'cart' THEN 2
                WHEN 'remove_from_cart' THEN 3 WHEN 'purchase' THEN 5 END AS rank,
           round(price * 100)::BIGINT AS amount
    FROM checked WHERE reject_reason IS NULL
    """)

    lines_info = {
        "file_lines_including_header": n_lines_total,
        "data_lines": q("SELECT count(*) FROM checked")[0][0],
        "valid_events": q("SELECT count(*) FROM ev")[0][0],
        "malformed_records": q("SELECT count(*) FROM checked WHERE reject_reason IS NOT NULL")[0][0],
        "malformed_detail": [
            {"position": p, "reason": r, "fields": n}
            for p, r, n in q("""SELECT position, reject_reason, nfields FROM checked
                                WHERE reject_reason IS NOT NULL ORDER BY position""")],
        "first_valid_position": q("SELECT min(position) FROM ev")[0][0],
        "last_valid_position": q("SELECT max(position) FROM ev")[0][0],
    }

    by_type = dict(q("SELECT etype, count(*) FROM ev GROUP BY etype"))
    totals = {
        "valid_events": lines_info["valid_events"],
        "malformed_records": lines_info["malformed_records"],
        "by_type": {t: by_type.get(t, 0) for t in
                    ["product_view", "add_to_cart", "remove_from_cart", "purchase"]},
        "purchase_revenue_cents": q("SELECT coalesce(sum(amount),0) FROM ev WHERE etype='purchase'")[0][0],
        "distinct_users": q("SELECT count(DISTINCT user_id) FROM ev")[0][0],
        "distinct_sessions": q("SELECT count(*) FROM (SELECT DISTINCT user_id, user_session FROM ev)")[0][0],
        "first_event_time": q("SELECT strftime(min(ts), '%Y-%m-%dT%H:%M:%SZ') FROM ev")[0][0],
        "last_event_time": q("SELECT strftime(max(ts), '%Y-%m-%dT%H:%M:%SZ') FROM ev")[0][0],
    }

    # --- sessions + ordered funnel step (pure SQL) -----------------------------------
    con.execute("""
    CREATE TABLE ord AS
    SELECT *, row_number() OVER (PARTITION BY user_id, user_session
                                 ORDER BY ts, rank, position) AS seq
    FROM ev
    """)
    con.execute("""
    CREATE TABLE sess AS
    WITH s1 AS (
        SELECT user_id, user_session,
               min(ts) AS start_ts, max(ts) AS end_ts, count(*) AS events,
               count(*) FILTER (WHERE etype = 'product_view') AS product_views,
               count(*) FILTER (WHERE etype = 'add_to_cart') AS cart_adds,
               count(*) FILTER (WHERE etype = 'purchase') AS purchases,
               coalesce(sum(amount) FILTER (WHERE etype = 'purchase'), 0)::BIGINT AS revenue_cents,
               count(*) FILTER (WHERE etype = 'purchase') AS orders,
               coalesce(arg_min(category_code, seq) FILTER (WHERE category_code <> ''),
                        '(none)') AS category,
               min(seq) FILTER (WHERE etype IN ('page_view', 'product_view')) AS i1
        FROM ord GROUP BY user_id, user_session),
    s2 AS (SELECT s.user_id, s.user_session,
                  min(o.seq) FILTER (WHERE o.etype = 'add_to_cart' AND o.seq > s.i1) AS i2
           FROM s1 s JOIN ord o USING (user_id, user_session) GROUP BY ALL),
    s3 AS (SELECT s.user_id, s.user_session,
                  min(o.seq) FILTER (WHERE o.etype = 'checkout' AND o.seq > s.i2) AS i3
           FROM s2 s JOIN ord o USING (user_id, user_session) GROUP BY ALL),
    s4 AS (SELECT s.user_id, s.user_session,
                  min(o.seq) FILTER (WHERE o.etype = 'purchase' AND o.seq > s.i3) AS i4
           FROM s3 s JOIN ord o USING (user_id, user_session) GROUP BY ALL)
    SELECT s1.*, i2, i3, i4,
           CASE WHEN i4 IS NOT NULL THEN 4 WHEN i3 IS NOT NULL THEN 3
                WHEN i2 IS NOT NULL THEN 2 WHEN i1 IS NOT NULL THEN 1 ELSE 0 END AS step,
           date_trunc('hour', start_ts) AS hour_ts,
           date_trunc('minute', start_ts) AS minute_ts
    FROM s1 JOIN s2 USING (user_id, user_session) JOIN s3 USING (user_id, user_session)
            JOIN s4 USING (user_id, user_session)
    """)

    step_hist = dict(q("SELECT step, count(*) FROM sess GROUP BY step"))
    sessions = {
        "sessions": q("SELECT count(*) FROM sess")[0][0],
        "events_sum": q("SELECT sum(events) FROM sess")[0][0],
        "purchasing_sessions": q("SELECT count(*) FROM sess WHERE purchases > 0")[0][0],
        "sessions_with_cart": q("SELECT count(*) FROM sess WHERE cart_adds > 0")[0][0],
        "orders": q("SELECT sum(orders) FROM sess")[0][0],
        "revenue_cents": q("SELECT sum(revenue_cents) FROM sess")[0][0],
        "step_histogram": {str(k): step_hist.get(k, 0) for k in range(5)},
        "max_events_in_a_session": q("SELECT max(events) FROM sess")[0][0],
        "first_3_sessions_by_start": [
            dict(zip(["user_id", "user_session", "start", "end", "events", "product_views",
                      "cart_adds", "purchases", "revenue_cents", "orders", "step", "category"], r))
            for r in q("""SELECT user_id, user_session, strftime(start_ts, '%Y-%m-%dT%H:%M:%SZ'),
                                 strftime(end_ts, '%Y-%m-%dT%H:%M:%SZ'), events, product_views,
                                 cart_adds, purchases, revenue_cents, orders, step, category
                          FROM sess ORDER BY start_ts, user_id, user_session LIMIT 3""")],
        "top_3_sessions_by_revenue": [
            dict(zip(["user_id", "user_session", "start", "events", "purchases",
                      "revenue_cents", "step"], r))
            for r in q("""SELECT user_id, user_session, strftime(start_ts, '%Y-%m-%dT%H:%M:%SZ'),
                                 events, purchases, revenue_cents, step
                          FROM sess ORDER BY revenue_cents DESC, user_id, user_session LIMIT 3""")],
    }

    funnel_select = """
        count(*) AS sessions,
        count(*) FILTER (WHERE step >= 1) AS step_ge_1, count(*) FILTER (WHERE step >= 2) AS step_ge_2,
        count(*) FILTER (WHERE step >= 3) AS step_ge_3, count(*) FILTER (WHERE step >= 4) AS step_ge_4,
        count(*) FILTER (WHERE purchases > 0) AS purchasing_sessions, sum(orders)::BIGINT AS orders,
        sum(revenue_cents)::BIGINT AS revenue_cents, count(DISTINCT user_id) AS unique_users"""
    fmt = "strftime({0}, '%Y-%m-%dT%H:%M:%SZ'), epoch({0})::BIGINT"

    funnel_all = [
        dict(zip(["window_start", "window_start_epoch_s"] + FUNNEL_COLS, r))
        for r in q(f"SELECT {fmt.format('hour_ts')}, {funnel_select} FROM sess "
                   f"GROUP BY hour_ts ORDER BY hour_ts")]

    con.execute(f"""CREATE TABLE fcat AS
        SELECT hour_ts, category, {funnel_select} FROM sess GROUP BY hour_ts, category""")
    first_hour = q("SELECT min(hour_ts) FROM sess")[0][0]
    cat_cols = ["window_start", "window_start_epoch_s", "category"] + FUNNEL_COLS
    cat_rows = q(f"""
        SELECT {fmt.format('hour_ts')}, * EXCLUDE (hour_ts) FROM fcat
        WHERE hour_ts = (SELECT min(hour_ts) FROM fcat)
        ORDER BY (category = '(none)'), sessions DESC, category""")
    top5 = [r for r in cat_rows if r[2] != "(none)"][:5]
    none = [r for r in cat_rows if r[2] == "(none)"]
    col_sums = q("SELECT " + ", ".join(f"sum({c})::BIGINT" for c in FUNNEL_COLS) + " FROM fcat")[0]
    funnel_category = {
        "rows_total": q("SELECT count(*) FROM fcat")[0][0],
        "distinct_categories": q("SELECT count(DISTINCT category) FROM fcat")[0][0],
        "first_hour": first_hour.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "first_hour_rows": len(cat_rows),
        "first_hour_top5_plus_none": [dict(zip(cat_cols, r)) for r in top5 + none],
        "column_sums_over_all_rows": dict(zip(FUNNEL_COLS, col_sums)),
        "note": "unique_users is distinct per (hour, category) row, so its sum over rows "
                "can exceed the per-hour unique_users",
    }

    kpis = [
        dict(zip(["window_start", "window_start_epoch_s"] + KPI_COLS, r))
        for r in q(f"""
        SELECT {fmt.format("date_trunc('hour', ts)")}, count(*),
               count(*) FILTER (WHERE etype = 'product_view'),
               count(*) FILTER (WHERE etype = 'add_to_cart'),
               count(*) FILTER (WHERE etype = 'remove_from_cart'),
               count(*) FILTER (WHERE etype = 'purchase'),
               coalesce(sum(amount) FILTER (WHERE etype = 'purchase'), 0)::BIGINT,
               count(*) FILTER (WHERE etype = 'purchase')
        FROM ev GROUP BY date_trunc('hour', ts) ORDER BY 1""")]

    minute = {
        "minute_windows_with_session_starts": q("SELECT count(DISTINCT minute_ts) FROM sess")[0][0],
        "first_3_minutes": [
            {"window_start": a, "window_start_epoch_s": b, "sessions": c}
            for a, b, c in q(f"""SELECT {fmt.format('minute_ts')}, count(*) FROM sess
                                GROUP BY minute_ts ORDER BY minute_ts LIMIT 3""")],
    }

    # --- observations about the data (not engine definitions) ----------------------------
    notes = {
        "line_endings": "CRLF" if q("SELECT count(*) FROM (SELECT string_split(content, chr(10)) ls FROM read_text(" + sql_str(csv_path) + ")), unnest(ls) t(x) WHERE x LIKE '%' || chr(13)")[0][0] else "LF",
        "file_time_order_violations": q("""SELECT count(*) FROM (SELECT ts < lag(ts) OVER (ORDER BY position) AS b FROM ev) WHERE b""")[0][0],
        "exact_duplicate_rows_extra_copies": q("""SELECT coalesce(sum(c - 1), 0) FROM (SELECT count(*) c FROM checked
               WHERE reject_reason IS NULL GROUP BY line HAVING count(*) > 1)""")[0][0],
        "exact_duplicate_row_groups": q("""SELECT count(*) FROM (SELECT line FROM checked
               WHERE reject_reason IS NULL GROUP BY line HAVING count(*) > 1)""")[0][0],
        "exact_duplicate_rows": [
            {"positions": ps, "event_type": t, "event_time": e}
            for ps, t, e in q("""SELECT list(position ORDER BY position), any_value(event_type),
                                        any_value(strftime(ts, '%Y-%m-%dT%H:%M:%SZ'))
                                 FROM checked WHERE reject_reason IS NULL
                                 GROUP BY line HAVING count(*) > 1 ORDER BY min(position)""")],
        "duplicates_policy": "exact duplicate rows are counted as separate events everywhere (no dedup)",
        "duplicate_purchase_rows_extra_copies": q("""SELECT coalesce(sum(c - 1), 0) FROM (SELECT count(*) c FROM checked
               WHERE reject_reason IS NULL AND event_type = 'purchase' GROUP BY line HAVING count(*) > 1)""")[0][0],
        "user_session_ids_with_more_than_one_user": q("""SELECT count(*) FROM (SELECT user_session FROM ev
               GROUP BY user_session HAVING count(DISTINCT user_id) > 1)""")[0][0],
        "users_with_more_than_one_session": q("""SELECT count(*) FROM (SELECT user_id FROM sess
               GROUP BY user_id HAVING count(*) > 1)""")[0][0],
        "max_sessions_per_user": q("SELECT max(c) FROM (SELECT count(*) c FROM sess GROUP BY user_id)")[0][0],
        "sessions_spanning_hour_boundary": q("""SELECT count(*) FROM sess
               WHERE date_trunc('hour', start_ts) <> date_trunc('hour', end_ts)""")[0][0],
        "sessions_spanning_minute_boundary": q("""SELECT count(*) FROM sess
               WHERE date_trunc('minute', start_ts) <> date_trunc('minute', end_ts)""")[0][0],
        "max_session_duration_s": q("SELECT max(epoch(end_ts) - epoch(start_ts))::BIGINT FROM sess")[0][0],
        "single_event_sessions": q("SELECT count(*) FROM sess WHERE events = 1")[0][0],
        "purchasing_sessions_without_any_view": q("""SELECT count(*) FROM sess
               WHERE purchases > 0 AND product_views = 0""")[0][0],
        "purchasing_sessions_without_cart": q("""SELECT count(*) FROM sess
               WHERE purchases > 0 AND cart_adds = 0""")[0][0],
        "sessions_with_cart_but_no_view_before_it": q("""SELECT count(*) FROM sess
               WHERE cart_adds > 0 AND i2 IS NULL""")[0][0],
        "purchase_events_with_same_second_view_of_same_product": q("""SELECT count(*) FROM ev p
               WHERE p.etype = 'purchase' AND EXISTS (SELECT 1 FROM ev v WHERE v.etype = 'product_view'
               AND v.user_id = p.user_id AND v.user_session = p.user_session
               AND v.product_id = p.product_id AND v.ts = p.ts)""")[0][0],
        "zero_price_events": q("SELECT count(*) FROM ev WHERE price = 0")[0][0],
        "zero_price_purchases": q("SELECT count(*) FROM ev WHERE price = 0 AND etype = 'purchase'")[0][0],
        "empty_category_code_events": q("SELECT count(*) FROM ev WHERE category_code = ''")[0][0],
        "empty_brand_events": q("SELECT count(*) FROM ev WHERE brand = ''")[0][0],
        "sessions_with_category_none": q("SELECT count(*) FROM sess WHERE category = '(none)'")[0][0],
        "events_in_last_second": q("SELECT count(*) FROM ev WHERE ts = (SELECT max(ts) FROM ev)")[0][0],
        "events_per_second_median": q("SELECT median(c) FROM (SELECT count(*) c FROM ev GROUP BY ts)")[0][0],
        "events_per_second_max": q("SELECT max(c) FROM (SELECT count(*) c FROM ev GROUP BY ts)")[0][0],
    }

    return {
        "input": lines_info,
        "totals": totals,
        "sessions": sessions,
        "funnel_hour_all": funnel_all,
        "funnel_hour_category": funnel_category,
        "kpis_hour_by_event_time": kpis,
        "session_starts_per_minute": minute,
        "data_notes": notes,
    }


# ----------------------------------------------------------------------------
# Method 2: plain Python (csv module), independent of DuckDB
# ----------------------------------------------------------------------------
def python_golden(csv_path):
    from decimal import Decimal, InvalidOperation, ROUND_HALF_UP

    def iso(t):
        return t.strftime("%Y-%m-%dT%H:%M:%SZ")

    def epoch(t):
        return int(t.replace(tzinfo=dt.timezone.utc).timestamp())

    events, malformed = [], 0
    with open(csv_path, newline="") as fh:
        lines = fh.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # file ends with a newline: no record after it
    for position, raw in enumerate(lines, start=1):
        if position == 1:
            continue
        raw = raw[:-1] if raw.endswith("\r") else raw
        rec = next(csv.reader([raw]), [])
        try:
            # same policy as the DuckDB side: quoting is not supported (the file has none)
            if '"' in raw or len(rec) != 9 or not rec[8]:
                raise ValueError
            t = dt.datetime.strptime(rec[0], "%Y-%m-%d %H:%M:%S UTC")
            etype = TYPE_MAP[rec[1]]
            cents = int((Decimal(rec[6]) * 100).quantize(Decimal(1), rounding=ROUND_HALF_UP))
            user = int(rec[7])
        except (ValueError, KeyError, InvalidOperation):
            malformed += 1
            continue
        events.append((t, RANK[etype], position, etype, cents, user, rec[8], rec[4]))

    by_type = collections.Counter(e[3] for e in events)
    totals = {"valid_events": len(events), "malformed_records": malformed,
              "by_type": {t: by_type.get(t, 0) for t in
                          ["product_view", "add_to_cart", "remove_from_cart", "purchase"]},
              "purchase_revenue_cents": sum(e[4] for e in events if e[3] == "purchase"),
              "distinct_users": len({e[5] for e in events})}

    groups = collections.defaultdict(list)
    for e in events:
        groups[(e[5], e[6])].append(e)
    sess = []
    for (user, _sid), evs in groups.items():
        evs.sort(key=lambda e: (e[0], e[1], e[2]))
        s = 0
        for e in evs:
            if s == 0 and e[3] in ("page_view", "product_view"):
                s = 1
            elif s == 1 and e[3] == "add_to_cart":
                s = 2
            elif s == 2 and e[3] == "checkout":
                s = 3
            elif s == 3 and e[3] == "purchase":
                s = 4
        purchases = [e for e in evs if e[3] == "purchase"]
        cat = next((e[7] for e in evs if e[7] != ""), "(none)")
        start = evs[0][0]
        sess.append({"user": user, "start": start, "step": s, "purchases": len(purchases),
                     "revenue": sum(e[4] for e in purchases), "category": cat})

    def funnel(rows):
        return {"sessions": len(rows),
                **{f"step_ge_{k}": sum(r["step"] >= k for r in rows) for k in range(1, 5)},
                "purchasing_sessions": sum(r["purchases"] > 0 for r in rows),
                "orders": sum(r["purchases"] for r in rows),
                "revenue_cents": sum(r["revenue"] for r in rows),
                "unique_users": len({r["user"] for r in rows})}

    hour = lambda t: t.replace(minute=0, second=0)
    by_hour = collections.defaultdict(list)
    by_hour_cat = collections.defaultdict(list)
    by_minute = collections.Counter()
    for r in sess:
        by_hour[hour(r["start"])].append(r)
        by_hour_cat[(hour(r["start"]), r["category"])].append(r)
        by_minute[r["start"].replace(second=0)] += 1
    funnel_all = [{"window_start": iso(h), "window_start_epoch_s": epoch(h), **funnel(by_hour[h])}
                  for h in sorted(by_hour)]
    first = min(by_hour)
    cat_first = [(c, funnel(rows)) for (h, c), rows in by_hour_cat.items() if h == first]
    cat_first.sort(key=lambda x: (x[0] == "(none)", -x[1]["sessions"], x[0]))
    sel = [x for x in cat_first if x[0] != "(none)"][:5] + [x for x in cat_first if x[0] == "(none)"]
    all_cat = [funnel(rows) for rows in by_hour_cat.values()]

    kp = collections.defaultdict(lambda: collections.Counter())
    for e in events:
        k = kp[hour(e[0])]
        k["events"] += 1
        k[{"product_view": "product_views", "add_to_cart": "cart_adds",
           "remove_from_cart": "cart_removes", "purchase": "purchases"}[e[3]]] += 1
        if e[3] == "purchase":
            k["revenue_cents"] += e[4]
            k["orders"] += 1
    kpis = [{"window_start": iso(h), "window_start_epoch_s": epoch(h),
             **{c: kp[h][c] for c in KPI_COLS}} for h in sorted(kp)]

    return {
        "totals": totals,
        "sessions": {"sessions": len(sess),
                     "step_histogram": {str(k): sum(r["step"] == k for r in sess) for k in range(5)}},
        "funnel_hour_all": funnel_all,
        "funnel_hour_category": {
            "rows_total": len(by_hour_cat),
            "first_hour_top5_plus_none": [
                {"window_start": iso(first), "window_start_epoch_s": epoch(first), "category": c, **f}
                for c, f in sel],
            "column_sums_over_all_rows": {c: sum(f[c] for f in all_cat) for c in FUNNEL_COLS}},
        "kpis_hour_by_event_time": kpis,
        "session_starts_per_minute": {
            "minute_windows_with_session_starts": len(by_minute),
            "first_3_minutes": [{"window_start": iso(m), "window_start_epoch_s": epoch(m),
                                 "sessions": by_minute[m]} for m in sorted(by_minute)[:3]]},
    }


def cross_check(g, p):
    """Compare every value the plain-Python method computed with the DuckDB result."""
    out = {}

    def sub(d, ref):  # restrict d to the keys present in ref, recursively
        if isinstance(ref, dict):
            return {k: sub(d.get(k) if isinstance(d, dict) else None, v) for k, v in ref.items()}
        if isinstance(ref, list):
            if not isinstance(d, list) or len(d) != len(ref):
                return d  # different length: compare as is (will disagree)
            return [sub(a, b) for a, b in zip(d, ref)]
        return d

    for key, ref in p.items():
        got = sub(g.get(key), ref)
        out[key] = "agree" if got == ref else {"duckdb": got, "python_csv": ref}
    if isinstance(p["totals"], dict):
        out["totals.distinct_sessions_vs_python_sessions"] = (
            "agree" if g["totals"]["distinct_sessions"] == p["sessions"]["sessions"] else "DISAGREE")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("csv", nargs="?", default=str(DEFAULT_CSV))
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args()
    path = Path(a.csv).resolve()
    if not path.exists():
        sys.exit(f"data file not found: {path}")

    golden = {
        "generator": {
            "script": "scripts/golden/rees46_golden.py",
            "method": "DuckDB SQL over raw text lines; funnel step computed in SQL; "
                      "cross-checked by an independent plain-Python csv implementation",
            "duckdb_version": duckdb.__version__,
            "python_version": sys.version.split()[0],
            "data_file": path.name,
            "data_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "money": "integer cents, amount = round(price*100)",
            "windows": "UTC, ISO-8601 start plus epoch seconds",
        }
    }
    golden.update(duckdb_golden(str(path)))
    cc = cross_check(golden, python_golden(str(path)))
    golden["cross_check"] = {"all_agree": all(v == "agree" for v in cc.values()), **cc}

    text = json.dumps(golden, indent=2, sort_keys=False) + "\n"
    sys.stdout.write(text)
    if not a.no_write:
        Path(a.out).write_text(text)
    if not golden["cross_check"]["all_agree"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
