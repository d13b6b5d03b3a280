"""Generate the bundled segflow demo dataset under fixtures/demo/.

Writes three synthetic (fake) e-commerce inputs:

* fixtures/demo/orders/year=YYYY/part-0.parquet
    One row per order line, hive-partitioned by the year of ``created_at``
    (the partition value lives only in the directory name; the files have no
    ``year`` column). The source schema uses "foreign" column names
    (client_id, order_no, net_eur, utm_source, ...) on purpose so that
    segflow's column mapping is exercised. Refunds are separate negative
    lines with status 'returned'; about 3% of orders are 'cancelled'; a few
    rows are exact duplicates; about 0.5% of lines have a null category and
    about 1% of orders a null utm_source.
* fixtures/demo/customers.parquet
    One row per customer (customer_ref = client_id) with signup time, some
    nullable demographic columns and a synthetic email under example.com.
* fixtures/demo/marketing_spend.parquet
    Monthly spend per paid channel, 2023-12 .. 2026-11.

The output is fully deterministic: all randomness comes from a single
``random.Random(20261121)`` and nothing depends on the current time, the
environment or hash ordering, so running the script twice produces
byte-identical files (given the same pyarrow version).

Usage (from the repository root):

    .venv/bin/python ci/gen_demo.py
"""

from __future__ import annotations

import math
import random
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

SEED = 20261121
N_CUSTOMERS = 3000
FIRST_CUSTOMER_ID = 100001

EPOCH = datetime(1970, 1, 1)
START = datetime(2023, 12, 1, 0, 0, 0)
END = datetime(2026, 11, 21, 23, 59, 59)  # inclusive upper bound



def demo_email(customer_ref):
    """A synthetic address under the reserved example.com domain (RFC 2606), from the id
    alone (no draw from the generator, so the other columns stay as they were): missing for
    one customer in 25, written with stray spaces and capitals for one in 7 (what a
    normalising upload must trim and lower-case)."""
    if customer_ref % 25 == 0:
        return None
    if customer_ref % 7 == 0:
        return f"  Customer.{customer_ref}@Example.COM "
    return f"customer.{customer_ref}@example.com"

def to_ms(dt: datetime) -> int:
    return (dt - EPOCH) // timedelta(milliseconds=1)


def from_ms(ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=ms)


START_MS = to_ms(START)
END_MS = to_ms(END)
DAY_MS = 86_400_000
MIN_MS = 60_000

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "fixtures" / "demo"

# category -> (sku prefix, number of skus, min unit price EUR, max unit price EUR, weight)
CATEGORIES = {
    "apparel": ("APP", 120, 12.0, 95.0, 24),
    "shoes": ("SHO", 60, 35.0, 170.0, 12),
    "beauty": ("BEA", 90, 6.0, 60.0, 16),
    "home": ("HOM", 100, 9.0, 220.0, 12),
    "electronics": ("ELE", 70, 19.0, 650.0, 8),
    "toys": ("TOY", 60, 7.0, 85.0, 9),
    "sports": ("SPO", 70, 12.0, 160.0, 10),
    "books": ("BOO", 80, 7.0, 42.0, 9),
}
CATEGORY_NAMES = list(CATEGORIES)
CATEGORY_WEIGHTS = [CATEGORIES[c][4] for c in CATEGORY_NAMES]

CHANNELS = ["organic", "paid_search", "social", "email", "affiliate", "referral"]
CHANNEL_WEIGHTS = [30, 25, 18, 7, 12, 8]  # acquisition channel mix
# when a repeat order does not come through the customer's usual channel
REPEAT_CHANNEL_WEIGHTS = [35, 15, 10, 30, 5, 5]
PAID_CHANNELS = ["paid_search", "social", "affiliate", "email"]

COUNTRIES = ["DE", "FR", "NL", "AT", "PL", "ES", "IT", "BE", "CH", "SE"]
COUNTRY_WEIGHTS = [34, 15, 10, 8, 8, 8, 7, 4, 4, 2]

DEVICES = ["mobile", "desktop", "tablet", "app"]
DEVICE_WEIGHTS = [45, 32, 8, 15]

# hour-of-day weights (evening peak)
HOUR_WEIGHTS = [2, 1, 1, 1, 1, 1, 2, 4, 6, 7, 7, 8, 9, 8, 7, 7, 8, 9, 11, 13, 14, 13, 9, 5]


def pick(rng: random.Random, items, weights):
    return rng.choices(items, weights=weights, k=1)[0]


def random_time_on_day(rng: random.Random, day_start_ms: int) -> int:
    hour = pick(rng, range(24), HOUR_WEIGHTS)
    return (
        day_start_ms
        + hour * 3_600_000
        + rng.randrange(60) * MIN_MS
        + rng.randrange(60) * 1000
        + rng.randrange(1000)
    )


def build_catalog(rng: random.Random):
    """Per category: list of (sku, unit price in cents)."""
    catalog = {}
    for cat in CATEGORY_NAMES:
        prefix, n, lo, hi, _ = CATEGORIES[cat]
        items = []
        for i in range(n):
            # log-uniform price, snapped to x.99 / x.49 style endings
            price = math.exp(rng.uniform(math.log(lo), math.log(hi)))
            cents = int(price) * 100 + rng.choice([99, 95, 49, 0])
            items.append((f"{prefix}-{i + 1:05d}", max(cents, 199)))
        catalog[cat] = items
    return catalog


def acquisition_ms(rng: random.Random) -> int:
    """First-order time: growing acquisition over the window, Nov/Dec bump."""
    span = END_MS - START_MS
    while True:
        u = rng.random()
        # mixture: 50% uniform, 50% density proportional to t (growth)
        t = u if rng.random() < 0.50 else math.sqrt(u)
        ms = START_MS + int(t * span)
        month = from_ms(ms).month
        accept = 1.0 if month in (11, 12) else 0.7
        if rng.random() < accept:
            day_start = START_MS + ((ms - START_MS) // DAY_MS) * DAY_MS
            out = random_time_on_day(rng, day_start)
            if out <= END_MS:
                return out


def planned_orders(rng: random.Random) -> int:
    """Heavy-tailed number of orders a customer would place given enough time."""
    if rng.random() < 0.53:
        return 1
    return min(1 + int(rng.paretovariate(0.85)), 60)


def main() -> None:
    rng = random.Random(SEED)
    catalog = build_catalog(rng)

    customers = []  # dicts
    orders = []  # dicts (without order_no; assigned after chronological sort)

    for idx in range(N_CUSTOMERS):
        cid = FIRST_CUSTOMER_ID + idx
        first_ms = acquisition_ms(rng)
        pref_channel = pick(rng, CHANNELS, CHANNEL_WEIGHTS)
        pref_country = pick(rng, COUNTRIES, COUNTRY_WEIGHTS)
        pref_device = pick(rng, DEVICES, DEVICE_WEIGHTS)
        fav_cat = pick(rng, CATEGORY_NAMES, CATEGORY_WEIGHTS)
        fav_share = rng.uniform(0.2, 0.7)
        mean_gap_days = math.exp(rng.uniform(math.log(5), math.log(80)))
        n_planned = planned_orders(rng)
        # some customers lapse: their activity stops after a personal lifetime
        lifetime_days = rng.expovariate(1 / 450) if rng.random() < 0.4 else 10_000
        lapse_ms = first_ms + int(lifetime_days * DAY_MS)

        cust = {
            "id": cid,
            "first_ms": first_ms,
            "pref_channel": pref_channel,
        }
        customers.append(cust)

        t = first_ms
        for k in range(n_planned):
            if k > 0:
                if rng.random() < 0.007:
                    # another order the same day, minutes to hours later
                    nt = t + rng.randint(4, 240) * MIN_MS + rng.randrange(60_000)
                    if from_ms(nt).date() != from_ms(t).date():
                        nt = t + rng.randint(1, 10) * MIN_MS
                    if from_ms(nt).date() != from_ms(t).date():
                        break
                else:
                    gap_days = max(1, int(rng.expovariate(1 / mean_gap_days)))
                    day_start = (
                        START_MS + ((t - START_MS) // DAY_MS + gap_days) * DAY_MS
                    )
                    nt = random_time_on_day(rng, day_start)
                if nt > END_MS or nt > lapse_ms:
                    break
                t = nt

            if k == 0:
                channel = pref_channel
            else:
                channel = (
                    pref_channel
                    if rng.random() < 0.75
                    else pick(rng, CHANNELS, REPEAT_CHANNEL_WEIGHTS)
                )
            if rng.random() < 0.01:
                channel = None
            country = pref_country if rng.random() < 0.97 else pick(rng, COUNTRIES, COUNTRY_WEIGHTS)
            device = pref_device if rng.random() < 0.82 else pick(rng, DEVICES, DEVICE_WEIGHTS)

            n_lines = pick(rng, [1, 2, 3, 4], [40, 32, 17, 11])
            lines = []
            for _ in range(n_lines):
                cat = fav_cat if rng.random() < fav_share else pick(rng, CATEGORY_NAMES, CATEGORY_WEIGHTS)
                sku, unit_cents = rng.choice(catalog[cat])
                qty = pick(rng, [1, 2, 3, 4], [82, 12, 4, 2])
                cents = unit_cents * qty
                if rng.random() < 0.15:  # promo discount
                    cents = int(round(cents * (1 - rng.choice([0.1, 0.15, 0.2, 0.3]))))
                cogs = round(cents / 100 * rng.uniform(0.40, 0.70), 2)
                shown_cat = None if rng.random() < 0.005 else cat
                lines.append((sku, shown_cat, qty, cents, cogs))

            orders.append(
                {
                    "cid": cid,
                    "ms": t,
                    "channel": channel,
                    "country": country,
                    "device": device,
                    "lines": lines,
                    "cancelled": rng.random() < 0.03,
                }
            )

    # order numbers in chronological order (ties broken by generation order)
    orders.sort(key=lambda o: o["ms"])
    for i, o in enumerate(orders):
        o["order_no"] = f"SO-{i + 1:06d}"

    rows = []  # tuples matching ORDER_SCHEMA
    for o in orders:
        status = "cancelled" if o["cancelled"] else "completed"
        for sku, cat, qty, cents, cogs in o["lines"]:
            rows.append(
                (o["cid"], o["order_no"], o["ms"], sku, cat, qty, cents, cogs,
                 o["channel"], o["country"], o["device"], status)
            )
        # ~5% of delivered orders get a refund of one line, 3-30 days later
        if not o["cancelled"] and rng.random() < 0.05:
            max_delay = min(30, (END_MS - o["ms"]) // DAY_MS)
            if max_delay >= 3:
                delay_ms = rng.randint(3, max_delay) * DAY_MS + rng.randint(-4, 4) * 3_600_000
                r_ms = min(max(o["ms"] + delay_ms, o["ms"] + 3 * DAY_MS), o["ms"] + 30 * DAY_MS, END_MS)
                sku, cat, qty, cents, cogs = rng.choice(o["lines"])
                rows.append(
                    (o["cid"], o["order_no"], r_ms, sku, cat, -qty, -cents, -cogs,
                     o["channel"], o["country"], o["device"], "returned")
                )

    # a few exact duplicate rows (e.g. double-ingested lines)
    completed_idx = [i for i, r in enumerate(rows) if r[11] == "completed"]
    for i in sorted(rng.sample(completed_idx, 3)):
        rows.append(rows[i])

    # ---- write orders, partitioned by year of created_at -------------------
    order_schema = pa.schema(
        [
            pa.field("client_id", pa.int64()),
            pa.field("order_no", pa.string()),
            pa.field("created_at", pa.timestamp("ms")),
            pa.field("sku", pa.string()),
            pa.field("product_category", pa.string()),
            pa.field("qty", pa.int32()),
            pa.field("net_eur", pa.decimal128(12, 2)),
            pa.field("cogs_eur", pa.float64()),
            pa.field("utm_source", pa.string()),
            pa.field("country_code", pa.string()),
            pa.field("device_type", pa.string()),
            pa.field("order_status", pa.string()),
        ]
    )

    # remove only our own previous partition files (stale years would linger)
    for old in sorted(OUT.glob("orders/year=*/part-0.parquet")):
        old.unlink()
        if not any(old.parent.iterdir()):
            old.parent.rmdir()
    by_year: dict[int, list] = {}
    for r in rows:
        by_year.setdefault(from_ms(r[2]).year, []).append(r)

    for year in sorted(by_year):
        yrows = sorted(by_year[year], key=lambda r: (r[2], r[1]))  # stable
        cols = list(zip(*yrows))
        arrays = [
            pa.array(cols[0], pa.int64()),
            pa.array(cols[1], pa.string()),
            pa.array(cols[2], pa.int64()).cast(pa.timestamp("ms")),
            pa.array(cols[3], pa.string()),
            pa.array(cols[4], pa.string()),
            pa.array(cols[5], pa.int32()),
            pa.array([Decimal(c).scaleb(-2) for c in cols[6]], pa.decimal128(12, 2)),
            pa.array(cols[7], pa.float64()),
            pa.array(cols[8], pa.string()),
            pa.array(cols[9], pa.string()),
            pa.array(cols[10], pa.string()),
            pa.array(cols[11], pa.string()),
        ]
        table = pa.Table.from_arrays(arrays, schema=order_schema)
        part_dir = OUT / "orders" / f"year={year}"
        part_dir.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, part_dir / "part-0.parquet", compression="zstd")

    # ---- customers ----------------------------------------------------------
    cust_rows = []
    for c in customers:
        r = rng.random()
        if r < 0.55:  # signed up in the same session as the first order
            signup = c["first_ms"] - rng.randint(1, 45) * MIN_MS - rng.randrange(60_000)
        elif r < 0.85:
            signup = c["first_ms"] - rng.randint(1, 60) * DAY_MS - rng.randrange(DAY_MS)
        else:  # older account, possibly before the order window
            signup = c["first_ms"] - rng.randint(61, 900) * DAY_MS - rng.randrange(DAY_MS)
        birth_year = None if rng.random() < 0.08 else int(min(2007, max(1945, round(rng.gauss(1987, 12)))))
        gender = pick(rng, ["f", "m", "x", None], [56, 37, 2, 5])
        nr = rng.random()
        newsletter = None if nr < 0.04 else (nr < 0.04 + 0.40)
        cust_rows.append((c["id"], signup, birth_year, gender, newsletter, demo_email(c["id"])))

    cols = list(zip(*cust_rows))
    customers_table = pa.Table.from_arrays(
        [
            pa.array(cols[0], pa.int64()),
            pa.array(cols[1], pa.int64()).cast(pa.timestamp("ms")),
            pa.array(cols[2], pa.int32()),
            pa.array(cols[3], pa.string()),
            pa.array(cols[4], pa.bool_()),
            pa.array(cols[5], pa.string()),
        ],
        schema=pa.schema(
            [
                pa.field("customer_ref", pa.int64()),
                pa.field("signup_at", pa.timestamp("ms")),
                pa.field("birth_year", pa.int32()),
                pa.field("gender", pa.string()),
                pa.field("newsletter", pa.bool_()),
                pa.field("email", pa.string()),
            ]
        ),
    )
    pq.write_table(customers_table, OUT / "customers.parquet", compression="zstd")

    # ---- marketing spend ----------------------------------------------------
    # spend tracks the number of customers acquired through each paid channel
    # in that month times a noisy cost per acquisition.
    months = []
    y, m = 2023, 12
    while (y, m) <= (2026, 11):
        months.append(date(y, m, 1))
        y, m = (y + 1, 1) if m == 12 else (y, m + 1)
    acquired: dict[tuple[date, str], int] = {}
    for c in customers:
        d = from_ms(c["first_ms"])
        key = (date(d.year, d.month, 1), c["pref_channel"])
        acquired[key] = acquired.get(key, 0) + 1
    cpa = {"paid_search": 38.0, "social": 31.0, "affiliate": 24.0, "email": 6.0}
    base = {"paid_search": 900.0, "social": 600.0, "affiliate": 250.0, "email": 180.0}
    spend_rows = []
    for mo in months:
        for src in PAID_CHANNELS:
            n = acquired.get((mo, src), 0)
            spend = (base[src] + n * cpa[src]) * rng.uniform(0.85, 1.15)
            spend_rows.append((mo, src, round(spend, 2)))
    cols = list(zip(*spend_rows))
    spend_table = pa.Table.from_arrays(
        [
            pa.array(cols[0], pa.date32()),
            pa.array(cols[1], pa.string()),
            pa.array(cols[2], pa.float64()),
        ],
        schema=pa.schema(
            [
                pa.field("month", pa.date32()),
                pa.field("source", pa.string()),
                pa.field("spend_eur", pa.float64()),
            ]
        ),
    )
    pq.write_table(spend_table, OUT / "marketing_spend.parquet", compression="zstd")

    print(
        f"wrote {len(rows)} order lines ({len(orders)} orders, "
        f"{len(customers)} customers) to {OUT}"
    )


if __name__ == "__main__":
    main()
