"""Per-minute KPIs the three systems compute alike, and how their results are compared.

A row is one tumbling one-minute window of event time (UTC) with these counters, the
same ones as Tidemark's `kpis` view at minute granularity: counts by event type and the
purchase, refund and payment amounts in integer cents (price x quantity, the price
rounded to cents as Tidemark's decoder does).

Validity, for the peers (Tidemark applies its own decoder): a row needs an event id, a
non-empty user id, an RFC 3339 `event_ts`, one of the known event types, a price for
purchases, refunds and payments, a product for product views and cart changes, and no
negative price. Duplicate deliveries of an event id count once (the first).
"""

import json

COUNTERS = [
    "events",
    "page_views",
    "product_views",
    "cart_adds",
    "cart_removes",
    "checkouts",
    "purchases",
    "revenue_cents",
    "refunds",
    "refund_cents",
    "payments",
    "payment_cents",
]

EVENT_TYPES = [
    "page_view",
    "product_view",
    "add_to_cart",
    "remove_from_cart",
    "checkout",
    "purchase",
    "refund",
    "payment",
    "retraction",
]

# The SQL both peers run over a relation `valid` with columns window_start (timestamp of
# the minute), event_type and amount_cents; Spark SQL and DuckDB both accept it.
AGGREGATES = """
    count(*) AS events,
    sum(CASE WHEN event_type = 'page_view' THEN 1 ELSE 0 END) AS page_views,
    sum(CASE WHEN event_type = 'product_view' THEN 1 ELSE 0 END) AS product_views,
    sum(CASE WHEN event_type = 'add_to_cart' THEN 1 ELSE 0 END) AS cart_adds,
    sum(CASE WHEN event_type = 'remove_from_cart' THEN 1 ELSE 0 END) AS cart_removes,
    sum(CASE WHEN event_type = 'checkout' THEN 1 ELSE 0 END) AS checkouts,
    sum(CASE WHEN event_type = 'purchase' THEN 1 ELSE 0 END) AS purchases,
    sum(CASE WHEN event_type = 'purchase' THEN amount_cents ELSE 0 END) AS revenue_cents,
    sum(CASE WHEN event_type = 'refund' THEN 1 ELSE 0 END) AS refunds,
    sum(CASE WHEN event_type = 'refund' THEN amount_cents ELSE 0 END) AS refund_cents,
    sum(CASE WHEN event_type = 'payment' THEN 1 ELSE 0 END) AS payments,
    sum(CASE WHEN event_type = 'payment' THEN amount_cents ELSE 0 END) AS payment_cents
"""

# The validity condition over the raw columns (same SQL in both peers).
VALID = """
    event_id IS NOT NULL
    AND user_id IS NOT NULL AND user_id <> ''
    AND ts IS NOT NULL
    AND event_type IN ({types})
    AND (price IS NULL OR price >= 0)
    AND (event_type NOT IN ('purchase', 'refund', 'payment') OR price IS NOT NULL)
    AND (event_type NOT IN ('product_view', 'add_to_cart', 'remove_from_cart') OR product_id IS NOT NULL)
""".format(types=", ".join("'%s'" % t for t in EVENT_TYPES))


def write_rows(path, rows):
    """Writes {window_start_ms: {counter: value}} as JSON, sorted by window."""
    with open(path, "w") as f:
        json.dump({str(k): rows[k] for k in sorted(rows)}, f, indent=0, sort_keys=True)


def read_rows(path):
    with open(path) as f:
        return {int(k): v for k, v in json.load(f).items()}


def tidemark_rows(views_path):
    """The minute rows of the `kpis` view in a `tidemark run --views-out` file."""
    with open(views_path) as f:
        views = json.load(f)["views"]
    rows = {}
    for r in views["kpis"]:
        if r["granularity"] != "minute":
            continue
        rows[int(r["window_start"])] = {c: int(r[c]) for c in COUNTERS}
    return rows


def compare(a, b):
    """Windows where two results differ, and the per-counter totals of each."""
    differing = sorted(w for w in set(a) | set(b) if a.get(w) != b.get(w))
    totals_a = {c: sum(r[c] for r in a.values()) for c in COUNTERS}
    totals_b = {c: sum(r[c] for r in b.values()) for c in COUNTERS}
    return differing, totals_a, totals_b
