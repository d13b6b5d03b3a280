"""Audiences of the demo, recomputed outside segflow.

Usage: audience_check.py --segflow BIN [--out DIR]

Runs the demo with two [[audiences]] (an email audience of RFM Champions and Loyal, an ads
audience of high-value CLV segments) for two as_of dates, then for each snapshot:
1. audience_members equals a DuckDB recomputation from the published rfm / clv tables and
   fixtures/demo/customers.parquet (consent = newsletter, the address trimmed and non-empty),
   with entered / stayed / left against the previous snapshot's members;
2. the email audience's `<name>.csv` (header `email`) lists exactly the members' trimmed
   addresses; the ads audience's `<name>.google.csv` (header `Email`) and `<name>.meta.csv`
   (header `email`) exactly the SHA-256 hex (Python's hashlib) of their trimmed, lower-cased
   addresses;
3. no upload file holds anyone without consent, and the manifest's counts are the table's.
Exit 1 on any failure, naming it.
"""
import argparse
import csv
import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile

import duckdb

from demo_project import demo_config_text

DATES = ["2026-10-31", "2026-11-21"]
EMAIL = ("champions_email", "rfm", "segment", ["Champions", "Loyal"])
ADS = ("high_value_ads", "clv", "clv_segment",
       ["high value, low risk", "high value, medium risk", "high value, high risk"])

failures = []


def fail(message):
    failures.append(message)
    print(f"FAIL {message}")


def config(work, out):
    text = demo_config_text()
    for name, segmentation, _, segments in [EMAIL, ADS]:
        channel = "email" if name == EMAIL[0] else "ads"
        text += (f'\n[[audiences]]\nname = "{name}"\nsegmentation = "{segmentation}"\n'
                 f"segments = {json.dumps(segments)}\nchannel = \"{channel}\"\n")
    path = os.path.join(work, "segflow.toml")
    with open(path, "w") as f:
        f.write(text)
    return path


def read(out, manifest, table):
    files = ", ".join("'" + f"{out}/{f}".replace("'", "''") + "'"
                      for f in manifest["tables"][table]["files"])
    return f"read_parquet([{files}], hive_partitioning = true)"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--segflow", required=True)
    parser.add_argument("--out", help="write the output here (kept) instead of a temp dir")
    args = parser.parse_args()
    con = duckdb.connect()
    con.execute(
        "create table contacts as select cast(customer_ref as varchar) as customer_id, "
        "coalesce(bool_or(newsletter), false) as consented, "
        "min(case when trim(email) <> '' then trim(email) end) as email "
        "from 'fixtures/demo/customers.parquet' group by 1"
    )
    with tempfile.TemporaryDirectory() as work:
        out = os.path.abspath(args.out) if args.out else os.path.join(work, "out")
        cfg = config(work, out)
        for as_of in DATES:
            r = subprocess.run([args.segflow, "--log-format", "json", "run", "--config", cfg,
                                "--as-of", as_of, "--output", out],
                               capture_output=True, text=True)
            if r.returncode != 0:
                sys.exit(f"run of {as_of} failed ({r.returncode}):\n{r.stderr}")
        previous = None
        checked = 0
        for as_of in DATES:
            with open(f"{out}/_manifest/as_of={as_of}.json") as f:
                m = json.load(f)
            # 1. The members and their change.
            now = []
            for name, table, column, segments in [EMAIL, ADS]:
                seg = ", ".join("'" + s.replace("'", "''") + "'" for s in segments)
                now.append(
                    f"select '{name}' as audience, s.customer_id, s.{column} as segment "
                    f"from {read(out, m, table)} s join contacts c using (customer_id) "
                    f"where s.{column} in ({seg}) and c.consented and c.email is not null")
            con.execute(f"create or replace table now_{as_of.replace('-', '_')} as "
                        + " union all ".join(now))
            current = f"now_{as_of.replace('-', '_')}"
            before = (f"now_{previous.replace('-', '_')}" if previous
                      else f"(select * from {current} where false)")
            want = sorted(con.execute(
                f"select coalesce(n.audience, b.audience), coalesce(n.customer_id, b.customer_id), "
                f"coalesce(n.segment, b.segment), case when b.customer_id is null then 'entered' "
                f"when n.customer_id is null then 'left' else 'stayed' end "
                f"from {current} n full join {before} b "
                f"on b.audience = n.audience and b.customer_id = n.customer_id").fetchall())
            got = sorted(con.execute(
                f"select audience, customer_id, segment, change "
                f"from {read(out, m, 'audience_members')}").fetchall())
            if got != want:
                fail(f"audience_members {as_of}: {len(set(got) ^ set(want))} rows differ from "
                     f"DuckDB's recomputation")
            changes = {c for *_, c in want}
            if previous and not {"entered", "stayed", "left"} <= changes:
                fail(f"{as_of}: the check needs entered, stayed and left rows; saw {changes}")
            # 2. The upload files.
            members = dict()
            for aud, cid, _, change in want:
                if change != "left":
                    members.setdefault(aud, set()).add(cid)
            emails = dict(con.execute("select customer_id, email from contacts").fetchall())
            consented = {e for e, ok in con.execute(
                "select email, consented from contacts where email is not null").fetchall() if ok}
            sha = lambda e: hashlib.sha256(e.strip().lower().encode()).hexdigest()
            expected = {
                f"{EMAIL[0]}.csv": ("email", sorted(emails[c] for c in members.get(EMAIL[0], ()))),
            }
            hashed = sorted({sha(emails[c]) for c in members.get(ADS[0], ())})
            expected[f"{ADS[0]}.google.csv"] = ("Email", hashed)
            expected[f"{ADS[0]}.meta.csv"] = ("email", hashed)
            listed = set(m["audiences"]["files"])
            for file, (header, values) in expected.items():
                rel = f"_audiences/as_of={as_of}/{file}"
                if rel not in listed:
                    fail(f"{rel} is not listed by the manifest")
                    continue
                with open(f"{out}/{rel}", newline="") as f:
                    rows = list(csv.reader(io.StringIO(f.read())))
                if not rows or rows[0] != [header]:
                    fail(f"{rel}: header {rows[:1]}, expected [{header!r}]")
                    continue
                body = [r[0] for r in rows[1:]]
                if body != values:
                    fail(f"{rel}: {len(body)} rows, expected {len(values)}; "
                         f"{len(set(body) ^ set(values))} differ")
                # 3. Nobody without consent.
                allowed = consented if file == f"{EMAIL[0]}.csv" else {sha(e) for e in consented}
                strangers = [v for v in body if v not in allowed]
                if strangers:
                    fail(f"{rel}: {len(strangers)} value(s) of customers without consent")
                if not body:
                    fail(f"{rel} is empty: the check needs members")
                checked += len(body)
            for name in [EMAIL[0], ADS[0]]:
                s = m["audiences"]["audiences"][name]
                counts = {c: sum(1 for a, _, _, ch in want if a == name and ch == c)
                          for c in ["entered", "stayed", "left"]}
                if (s["entered"], s["stayed"], s["left"]) != tuple(counts.values()) \
                        or s["members"] != counts["entered"] + counts["stayed"]:
                    fail(f"manifest {as_of} {name}: {s}, the table says {counts}")
            previous = as_of
    if failures:
        sys.exit(f"{len(failures)} audience check(s) failed")
    print(f"audiences: members, changes and {checked} uploaded values equal the recomputation; "
          "no upload holds anyone without consent")


if __name__ == "__main__":
    main()
