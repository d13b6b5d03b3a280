"""Pseudonymised runs of the demo, checked from outside segflow.

Usage: privacy_check.py --segflow BIN

Runs the demo twice with `[privacy] pseudonymise = true` (as_of 2026-10-31 and 2026-11-21,
key in SEGFLOW_PSEUDONYM_KEY) and twice without, then checks:
1. every customer id in every Parquet file under the pseudonymised output (tables, rejected
   rows, kept state) is 64 lower-case hex digits, and the ids of customer_facts are exactly
   Python's hmac.new(key, str(raw id), sha256).hexdigest() of the plain run's ids;
2. no raw id is left anywhere: no string or integer cell of any Parquet file equals one, and
   no text file of the output (manifests, report, catalog) nor the runs' logs holds one as a
   number of its own; the key itself appears nowhere;
3. the manifests hold privacy.key_fingerprint = the first 16 hex digits of SHA-256(key);
4. segment_migration and segment_summary across the two pseudonymised snapshots equal the
   plain runs' (sorted rows): pseudonyms are stable across runs, so history still joins;
5. a run under another key exits 2 naming both fingerprints and changes nothing; a run with
   pseudonymise = true and no key exits 2 naming SEGFLOW_PSEUDONYM_KEY.
Exit 1 on any failure, naming it.
"""
import argparse
import hashlib
import hmac
import json
import os
import re
import subprocess
import sys
import tempfile

import duckdb

from demo_project import demo_config_text
import pyarrow as pa
import pyarrow.parquet as pq

KEY = "demo pseudonym key: not a real secret"
OTHER_KEY = "another key"
DATES = ["2026-10-31", "2026-11-21"]
HEX64 = re.compile(r"^[0-9a-f]{64}$")

failures = []


def fail(message):
    failures.append(message)
    print(f"FAIL {message}")


def config(work, out, pseudonymise):
    text = demo_config_text()
    if pseudonymise:
        text += "\n[privacy]\npseudonymise = true\n"
    path = os.path.join(work, os.path.basename(out) + ".toml")
    with open(path, "w") as f:
        f.write(text)
    return path


def run(segflow, cfg, out, as_of, key, logs):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEGFLOW_")}
    if key is not None:
        env["SEGFLOW_PSEUDONYM_KEY"] = key
    r = subprocess.run(
        [segflow, "--log-format", "json", "run", "--config", cfg, "--as-of", as_of,
         "--output", out],
        env=env, capture_output=True, text=True,
    )
    logs.append(r.stdout + r.stderr)
    return r


def tree(out):
    found = {}
    for root, _, files in os.walk(out):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, out)] = f.read()
    return found


def raw_ids():
    orders = pq.read_table("fixtures/demo/orders", columns=["client_id"])
    customers = pq.read_table("fixtures/demo/customers.parquet", columns=["customer_ref"])
    return {str(v) for v in orders.column("client_id").to_pylist() if v is not None} | {
        str(v) for v in customers.column("customer_ref").to_pylist() if v is not None
    }


def pseudonym(raw):
    return hmac.new(KEY.encode(), raw.encode(), hashlib.sha256).hexdigest()


def newest_manifest_files(out, as_of, table):
    with open(os.path.join(out, "_manifest", f"as_of={as_of}.json")) as f:
        m = json.load(f)
    return m, [os.path.join(out, p) for p in m["tables"][table]["files"]]


def rows(out, as_of, table):
    _, files = newest_manifest_files(out, as_of, table)
    listed = ", ".join("'" + f + "'" for f in files)
    return sorted(
        duckdb.sql(f"select * from read_parquet([{listed}], hive_partitioning = true)").fetchall(),
        key=repr,
    )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--segflow", required=True)
    args = parser.parse_args()
    segflow = os.path.abspath(args.segflow)
    ids = raw_ids()
    with tempfile.TemporaryDirectory() as work:
        hashed, plain = os.path.join(work, "hashed"), os.path.join(work, "plain")
        hashed_cfg, plain_cfg = config(work, hashed, True), config(work, plain, False)
        logs = []
        for as_of in DATES:
            for cfg, out, key in [(hashed_cfg, hashed, KEY), (plain_cfg, plain, None)]:
                r = run(segflow, cfg, out, as_of, key, logs)
                if r.returncode != 0:
                    sys.exit(f"run of {as_of} into {out} failed ({r.returncode}):\n{r.stderr}")

        # 1. Every customer id is a pseudonym; customer_facts holds exactly the plain ids'.
        files = tree(hashed)
        id_cells = 0
        for rel, data in files.items():
            if not rel.endswith(".parquet"):
                continue
            table = pq.read_table(pa.BufferReader(data))
            for field in table.schema:
                values = table.column(field.name).to_pylist()
                if field.name == "customer_id":
                    for v in values:
                        id_cells += 1
                        if v is not None and not HEX64.match(v):
                            fail(f"{rel}: customer_id {v!r} is not a pseudonym")
                            break
                if pa.types.is_string(field.type) or pa.types.is_large_string(field.type) \
                        or pa.types.is_string_view(field.type) or pa.types.is_integer(field.type):
                    leaked = {str(v) for v in values if v is not None} & ids
                    if leaked:
                        fail(f"{rel}: column {field.name} holds raw ids, e.g. {sorted(leaked)[:3]}")
        if id_cells == 0:
            fail("no customer_id cell was found under the pseudonymised output")
        for as_of in DATES:
            got = {r[0] for r in duckdb.sql(
                "select customer_id from read_parquet([{}])".format(", ".join(
                    "'" + f + "'" for f in newest_manifest_files(hashed, as_of, "customer_facts")[1]))
            ).fetchall()}
            want = {pseudonym(r[0]) for r in duckdb.sql(
                "select customer_id from read_parquet([{}])".format(", ".join(
                    "'" + f + "'" for f in newest_manifest_files(plain, as_of, "customer_facts")[1]))
            ).fetchall()}
            if got != want:
                fail(f"customer_facts {as_of}: {len(got ^ want)} ids differ from Python's hmac "
                     f"of the plain run's ids")

        # 2. No raw id (as a number of its own) and no key in any text file or log line.
        # JSON (manifests, log lines): its strings, not its numbers (sizes, counts).
        # Run ids (`20261207T005131.643971Z-<pid>`) and file etags (local ones are inode,
        # mtime and size in hex) are not customer data, but a process id or an inode can be
        # any six digits: they are taken out before the search.
        number = re.compile(r"(?<![\d.])(\d{6})(?![\d.])")
        run_id = re.compile(r"\d{8}T\d{6}\.\d{6}Z-\d+")

        def strings(value):
            if isinstance(value, str):
                yield value
            elif isinstance(value, dict):
                for k, v in value.items():
                    yield k
                    if k != "etag":
                        yield from strings(v)
            elif isinstance(value, list):
                for v in value:
                    yield from strings(v)

        def text_of(rel, data):
            text = data.decode("utf-8", "replace")
            if rel.endswith(".json"):
                return "\n".join(strings(json.loads(text)))
            return text

        texts = [(rel, text_of(rel, data)) for rel, data in files.items()
                 if not rel.endswith(".parquet")]
        for i, log in enumerate(logs):
            lines = []
            for line in log.splitlines():
                try:
                    lines.extend(strings(json.loads(line)))
                except ValueError:
                    lines.append(line)
            texts.append((f"log of run {i}", "\n".join(lines)))
        for rel, text in texts:
            leaked = set(number.findall(run_id.sub("", text))) & ids
            if leaked:
                fail(f"{rel} holds raw ids, e.g. {sorted(leaked)[:3]}")
            if KEY in text:
                fail(f"{rel} holds the pseudonym key")

        # 3. The key's fingerprint, never the key.
        fingerprint = hashlib.sha256(KEY.encode()).hexdigest()[:16]
        for as_of in DATES:
            m, _ = newest_manifest_files(hashed, as_of, "customer_facts")
            if (m.get("privacy") or {}).get("key_fingerprint") != fingerprint:
                fail(f"manifest {as_of}: privacy is {m.get('privacy')}, expected the "
                     f"fingerprint {fingerprint}")
            m, _ = newest_manifest_files(plain, as_of, "customer_facts")
            if "privacy" in m:
                fail(f"plain manifest {as_of} has a privacy entry")

        # 4. History still joins: migration and the scorecard equal the plain runs'.
        for table in ["segment_migration", "segment_summary"]:
            a, b = rows(hashed, DATES[1], table), rows(plain, DATES[1], table)
            if a != b:
                fail(f"{table} {DATES[1]}: the pseudonymised run differs from the plain run")
            if not a:
                fail(f"{table} {DATES[1]} is empty")

        # 5. Another key, or none: exit 2, named, nothing changed.
        before = tree(hashed)
        r = run(segflow, hashed_cfg, hashed, DATES[1], OTHER_KEY, [])
        other = hashlib.sha256(OTHER_KEY.encode()).hexdigest()[:16]
        if r.returncode != 2 or fingerprint not in r.stderr or other not in r.stderr:
            fail(f"a run under another key: exit {r.returncode}, expected 2 naming "
                 f"{fingerprint} and {other}:\n{r.stderr}")
        r = run(segflow, hashed_cfg, hashed, DATES[1], None, [])
        if r.returncode != 2 or "SEGFLOW_PSEUDONYM_KEY" not in r.stderr:
            fail(f"a run without the key: exit {r.returncode}, expected 2 naming "
                 f"SEGFLOW_PSEUDONYM_KEY:\n{r.stderr}")
        after = tree(hashed)
        if before != after:
            changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
            fail(f"refused runs changed the output: {changed[:5]}")

    if failures:
        sys.exit(f"{len(failures)} privacy check(s) failed")
    print(f"privacy: {id_cells} customer ids pseudonymised, none raw in any file or log; "
          "history joins; a changed or missing key is refused")


if __name__ == "__main__":
    main()
