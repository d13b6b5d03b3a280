"""Recompute segment_summary.stability of the newest snapshot in DuckDB and compare.

Usage: stability_check.py OUT

For each segmentation segflow tracks over time (rfm, lifecycle, clv, and the acquisition
channel, country and device), stability of a segment is the share of its customers who were
in the same segment in the previous kept snapshot. This script reads the newest and the
previous snapshot's rfm, lifecycle, clv and customer_facts from the files their manifests
list, recomputes every segment's stability with plain SQL, and compares it with the newest
segment_summary (bit-equal doubles: both divide the same two counts). Exit 1 on any
difference, naming the segment.
"""
import glob
import json
import os
import sys

import duckdb

TRACKED = {
    "rfm": ("rfm", "segment"),
    "lifecycle": ("lifecycle", "stage"),
    "clv": ("clv", "clv_segment"),
    "channel": ("customer_facts", "acquisition_channel"),
    "country": ("customer_facts", "acquisition_country"),
    "device": ("customer_facts", "acquisition_device"),
}


def main():
    out = sys.argv[1]
    found = []
    for path in glob.glob(os.path.join(out, "_manifest", "as_of=*.json")):
        with open(path) as f:
            found.append(json.load(f))
    found.sort(key=lambda m: m["as_of"])
    if len(found) < 2:
        sys.exit(f"{out}: stability needs two snapshots, found {len(found)}")
    previous, newest = found[-2], found[-1]
    con = duckdb.connect()

    def view(name, manifest, table):
        files = [os.path.join(out, f) for f in manifest["tables"][table]["files"]]
        if not files:
            sys.exit(f"{out}: {table} of {manifest['as_of']} lists no files")
        listed = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
        con.execute(
            f"create or replace view {name} as "
            f"select * from read_parquet([{listed}], hive_partitioning = true)"
        )

    view("summary", newest, "segment_summary")
    failures = 0
    checked = 0
    for segmentation, (table, column) in TRACKED.items():
        view("now", newest, table)
        view("before", previous, table)
        want = dict(
            (segment, stayed / customers)
            for segment, customers, stayed in con.execute(
                f"""
                select n.{column}, count(*),
                       count(*) filter (where b.{column} = n.{column})
                from now n left join before b on b.customer_id = n.customer_id
                group by n.{column}
                """
            ).fetchall()
        )
        got = dict(
            con.execute(
                "select segment, stability from summary where segmentation = ?",
                [segmentation],
            ).fetchall()
        )
        if set(want) != set(got):
            print(f"{segmentation}: segments {sorted(map(str, got))} != {sorted(map(str, want))}")
            failures += 1
            continue
        for segment, value in want.items():
            checked += 1
            if got[segment] != value:
                print(f"{segmentation} / {segment}: stability {got[segment]!r}, expected {value!r}")
                failures += 1
    if failures:
        sys.exit(f"segment_summary.stability of {newest['as_of']}: {failures} difference(s)")
    if checked == 0:
        sys.exit("no segment was checked")
    print(
        f"segment_summary.stability of {newest['as_of']} against {previous['as_of']}: "
        f"{checked} segments equal to DuckDB's recomputation"
    )


if __name__ == "__main__":
    main()
