"""Loads a run's report in headless Chromium and checks it against the published tables.

- The page loads from disk with no console errors, no page errors and no request besides
  the file itself (it is self-contained).
- Every chart is a rendered <svg> with shapes in it and a non-empty box.
- A full-page screenshot is saved (the CI artifact).
- Every number the report shows (each `data-v` of a `table.data`) equals the published
  tables read by DuckDB, or the manifest for the run facts: values taken from a table must be
  bit-equal; values the report derives (shares, cell counts and means, histogram bins) are
  recomputed here and must agree to 1e-9 relative. Every row of each source appears.

Usage: report_check.py OUT AS_OF ARTIFACT_DIR [--chromium /usr/bin/chromium]
"""

import argparse
import json
import math
import os
import sys

import duckdb
from playwright.sync_api import sync_playwright

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# Read inside the page: charts and data tables as the browser parsed them.
CHARTS_JS = """
() => [...document.querySelectorAll('figure.chart')].map(f => {
  const svg = f.querySelector('svg');
  if (!svg) return {id: f.dataset.chart, svg: false};
  const box = svg.getBoundingClientRect();
  return {
    id: f.dataset.chart,
    svg: true,
    shapes: svg.querySelectorAll('rect, path, polyline, line, circle, polygon').length,
    texts: svg.querySelectorAll('text').length,
    width: box.width,
    height: box.height,
  };
})
"""

TABLES_JS = """
() => [...document.querySelectorAll('table.data')].map(t => ({
  source: t.dataset.table,
  rows: [...t.querySelectorAll('tbody tr')].map(r => ({
    key: r.dataset.key,
    cells: [...r.querySelectorAll('td[data-col]')].map(c => ({
      col: c.dataset.col,
      key: c.dataset.key ?? null,
      v: c.hasAttribute('data-v') ? c.dataset.v : null,
      derived: c.hasAttribute('data-derived'),
    })),
  })),
}))
"""


def fail(msg):
    print(f"report check FAILED: {msg}")
    sys.exit(1)


class Tables:
    """Published tables of one snapshot, read by DuckDB from the files the manifest lists."""

    def __init__(self, out, manifest):
        self.out = out
        self.manifest = manifest
        self.con = duckdb.connect()

    def rows(self, table, sql="select * from t"):
        entry = self.manifest["tables"].get(table)
        if entry is None:
            fail(f"the report shows table {table}, which the manifest does not list")
        files = [os.path.join(self.out, f) for f in entry["files"]]
        rel = self.con.read_parquet(files, hive_partitioning=True)
        self.con.register("t", rel)
        try:
            cur = self.con.execute(sql)
            names = [d[0] for d in cur.description]
            return [dict(zip(names, r)) for r in cur.fetchall()]
        finally:
            self.con.unregister("t")


def same(expected, shown, derived):
    """`shown` is the data-v text (None for no value)."""
    if expected is None or (isinstance(expected, float) and math.isnan(expected)):
        return shown is None or shown == "NaN"
    if shown is None:
        return False
    if isinstance(expected, bool):
        return shown == str(expected).lower()
    if isinstance(expected, str):
        return shown == expected
    value = float(shown)
    if derived:
        return math.isclose(value, float(expected), rel_tol=1e-9, abs_tol=1e-12)
    return value == float(expected)


def expected_cells(source, tables, manifest):
    """(row key, column) -> (value, derived) for every number the report should show."""
    out = {}

    def put(key, col, value, derived=False):
        out[(key, col)] = (value, derived)

    if source == "segment_summary":
        rows = tables.rows(source)
        margin = {}
        for r in rows:
            margin[r["segmentation"]] = margin.get(r["segmentation"], 0.0) + (r["margin"] or 0.0)
        for r in rows:
            k = f"{r['segmentation']}|{r['segment']}"
            for c in ["customers", "share", "revenue_share", "aov", "orders_per_customer",
                      "repeat_rate", "reachable_share", "stability", "below_min_size"]:
                put(k, c, r[c])
            total = margin[r["segmentation"]]
            put(k, "margin_share", None if r["margin"] is None or total == 0 else r["margin"] / total, True)
    elif source == "rfm":
        for r in tables.rows(source, "select r_score, f_score, count(*) n, avg(monetary) m "
                                     "from t group by all"):
            k = f"{r['r_score']}|{r['f_score']}"
            put(k, "customers", r["n"], True)
            put(k, "avg_monetary", r["m"], True)
    elif source == "lifecycle":
        rows = tables.rows(source, "select stage, count(*) n from t group by all")
        total = sum(r["n"] for r in rows)
        for r in rows:
            put(r["stage"], "customers", r["n"], True)
            put(r["stage"], "share", r["n"] / total, True)
    elif source == "cohort_retention":
        for r in tables.rows(source):
            month = r["cohort_month"].isoformat()
            put(f"{month}|{r['period']}", "retention", r["retention"])
            put(f"{month}|{r['period']}", "cumulative_revenue_per_customer",
                r["cumulative_revenue_per_customer"])
            put(month, "cohort_customers", r["cohort_customers"])
    elif source == "product_value":
        for r in tables.rows(source):
            for c in ["customers", "repeat_rate", "avg_revenue_per_customer",
                      "avg_revenue_365d", "avg_margin_365d"]:
                put(r["first_category"], c, r[c])
    elif source == "channel_value":
        for r in tables.rows(source, "select * from t where dimension = 'channel'"):
            for c in ["customers", "repeat_rate", "avg_revenue_per_customer",
                      "avg_revenue_365d", "spend", "cac", "ltv_cac"]:
                put(f"channel|{r['value']}", c, r[c])
    elif source == "segment_migration":
        for r in tables.rows(source):
            put(f"{r['segmentation']}|{r['from_segment']}|{r['to_segment']}", "customers",
                r["customers"])
    elif source == "clv":
        values = [r["v"] for r in tables.rows(source, "select clv_365d v from t")]
        # 1-2-5 bins; the report lists the bins from the first to the last non-empty one.
        edges = [m * 10 ** e for e in range(12) for m in (1, 2, 5)]
        bins = [0] * (len(edges) + 1)
        for v in values:
            if v is None or not math.isfinite(v):
                continue
            bins[sum(1 for e in edges if e <= v)] += 1
        full = [i for i, n in enumerate(bins) if n > 0] or [0, -1]
        for b in range(min(full), max(full) + 1):
            lo = edges[b - 1] if b > 0 else None
            hi = edges[b] if b < len(edges) else None
            k = f"{'' if lo is None else format_edge(lo)}|{'' if hi is None else format_edge(hi)}"
            put(k, "from", lo)
            put(k, "to", hi)
            put(k, "customers", bins[b], True)
        for r in tables.rows(source, "select churn_risk, count(*) n, sum(clv_365d) v, "
                                     "avg(p_alive) p from t group by all"):
            put(r["churn_risk"], "customers", r["n"], True)
            put(r["churn_risk"], "clv_365d", r["v"], True)
            put(r["churn_risk"], "p_alive", r["p"], True)
    elif source == "clv_backtest":
        for r in tables.rows(source, "select * from t where scope = 'total'"):
            for c in ["customers", "predicted_purchases", "actual_purchases", "purchases_mae",
                      "predicted_revenue", "actual_revenue", "revenue_mae"]:
                put("total", c, r[c])
    elif source == "audience_members":
        for r in tables.rows(source, "select audience, count(*) filter (where change <> 'left') m, "
                                     "count(*) filter (where change = 'entered') e, "
                                     "count(*) filter (where change = 'stayed') s, "
                                     "count(*) filter (where change = 'left') l from t group by all"):
            put(r["audience"], "members", r["m"], True)
            put(r["audience"], "entered", r["e"], True)
            put(r["audience"], "stayed", r["s"], True)
            put(r["audience"], "left", r["l"], True)
    elif source == "manifest:input":
        for k, v in manifest["input"].items():
            if k != "gates":
                put(k, k, v)
    elif source == "manifest:gates":
        for gate, g in manifest["input"]["gates"].items():
            put(gate, "rows", g["rows"])
            put(gate, "policy", g["policy"])
    elif source == "manifest:models":
        for name, m in manifest["models"].items():
            put(name, "rows", m["rows"])
            put(name, "duration_ms", m["duration_ms"])
            put(name, "published", m["published"])
    else:
        fail(f"unknown data table source {source}")
    return out


def format_edge(x):
    """The bin edges as the report writes them in row keys (Rust's f64 Display)."""
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("as_of")
    ap.add_argument("artifacts")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    a = ap.parse_args()

    manifest = json.load(open(os.path.join(a.out, f"_manifest/as_of={a.as_of}.json")))
    report = manifest.get("report")
    if not report:
        fail("the manifest lists no report")
    path = os.path.abspath(os.path.join(a.out, report["files"][0]))
    if os.path.getsize(path) != report["bytes"]:
        fail(f"{path} has {os.path.getsize(path)} bytes, the manifest says {report['bytes']}")
    url = "file://" + path
    os.makedirs(a.artifacts, exist_ok=True)
    shot = os.path.join(a.artifacts, "report.png")

    problems = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=a.chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda m: m.type == "error" and problems.append(f"console: {m.text}"))
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.on("request", lambda r: r.url != url and problems.append(f"request: {r.url}"))
        page.goto(url, wait_until="load")
        charts = page.evaluate(CHARTS_JS)
        tables = page.evaluate(TABLES_JS)
        page.screenshot(path=shot, full_page=True)
        browser.close()
    if problems:
        fail("; ".join(problems))

    if len(charts) < 1:
        fail("no charts")
    for c in charts:
        if not c["svg"]:
            fail(f"chart {c['id']} has no <svg>")
        # More than the background rectangle, some text, a visible box.
        if c["shapes"] < 2 or c["texts"] < 1 or c["width"] <= 0 or c["height"] <= 0:
            fail(f"chart {c['id']} is empty: {c}")

    data = Tables(a.out, manifest)
    checked = 0
    by_source = {}
    for t in tables:
        by_source.setdefault(t["source"], []).append(t)
    for source, ts in sorted(by_source.items()):
        expected = expected_cells(source, data, manifest)
        shown = {}
        for t in ts:
            for r in t["rows"]:
                for c in r["cells"]:
                    key = c["key"] if c["key"] is not None else r["key"]
                    shown[(key, c["col"])] = c
        missing = sorted(set(expected) - set(shown))
        extra = sorted(set(shown) - set(expected))
        if missing:
            fail(f"{source}: the report lacks {missing[:5]} ({len(missing)} cells)")
        if extra:
            fail(f"{source}: the report shows cells no table has: {extra[:5]}")
        for k, (value, derived) in expected.items():
            c = shown[k]
            if c["derived"] != derived:
                fail(f"{source} {k}: derived is {c['derived']}, expected {derived}")
            if not same(value, c["v"], derived):
                fail(f"{source} {k}: the report shows {c['v']!r}, the table has {value!r}")
            checked += 1
    needed = {"segment_summary", "rfm", "lifecycle", "cohort_retention", "product_value",
              "channel_value", "clv", "manifest:input", "manifest:models"}
    absent = needed - set(by_source)
    if absent:
        fail(f"the report has no data tables of {sorted(absent)}")
    print(f"report check passed: {len(charts)} charts rendered with no console errors, "
          f"{checked} numbers equal to the tables and the manifest; screenshot {shot}")


if __name__ == "__main__":
    main()
