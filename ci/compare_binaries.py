"""Prove that two segflow binaries behave the same: run both on the bundled demo, compare what they publish.

Usage (any Python with pyarrow; the repo's venv has it):
    .venv/bin/python ci/compare_binaries.py OLD_BINARY NEW_BINARY \
        [--config fixtures/demo/segflow.toml] [--as-of 2026-11-21] [--float-rtol 0]
        [--report-float-rtol 1e-12] [--keep]
    .venv/bin/python ci/compare_binaries.py --compare-dirs OUT_A OUT_B   # two existing output trees
(--compare-dirs: trees written with different config text, e.g. another output path,
differ in config_hash, and that is reported.)

Each binary runs `--log-format json run --config CFG --as-of DATE` into a fresh output
directory (cwd a temp dir, TOKIO_WORKER_THREADS and every SEGFLOW_* variable unset). CFG is
a copy of --config with relative `uri`s made absolute (relative to the config's directory)
and the [output] uri pointing into the temp dir. Both runs use the *same* config file and
output path (the first tree is moved aside before the second run): the manifest's
config_hash hashes the config text, so it stays comparable.

Compared (exit 1 on any difference, 0 when equal; 2 on usage errors or a failed run):
- the set of files (relative paths, with run-specific names normalised, below);
- each Parquet table (files grouped by `<table>/as_of=D`, `_rejected` included; hive
  partition directories read back as string columns): the Arrow schema of every file
  (names, types, nullability, field and schema metadata), the Parquet key-value metadata and
  created_by, and the rows as sorted lists of tuples;
- JSON files (manifest, latest.json) after dropping IGNORED_JSON_KEYS;
- the HTML report line by line after masking (HTML_MASKS);
- the catalog's SQL files line by line after masking the run id they name and the data
  files' names (the lists of files they read compared as lists of distinct names);
- any other file (_SUCCESS) byte for byte.
--tables-only (with --compare-dirs) compares the Parquet tables alone: for an incremental and
a full run of one date, whose manifests and reports differ on purpose (input counts, run mode).
--ignore-config-hash also drops the manifest's config_hash and masks the report's: for
trees written under settings that differ on purpose (ci/bench_cluster.sh: the engine).

Ignored, because they differ between two runs of the SAME binary (observed on the demo):
- file names: DataFusion names written files `<16 random chars>[_N].parquet` (object
  stores add `<run_id>-`); normalised to `<id>[_<n>].parquet` (not skipped);
- how many `_N` files a table gets (product_value's 9 rows: 2 files in one run, 1 in the
  next), which rows land in which (cohort_retention's `_0`/`_1` swapped 318/348 rows) and
  row order in a file: rows are compared per table, not per file; the manifest's `files`
  lists are compared as sets of normalised names;
- float last bits in the report only: its RFM grid's avg_monetary (derived by the report
  from rfm's rows, read in varying order) moved in the 15th-16th digit in every one of 9
  same-binary pairs (e.g. 135.56000000000023 vs 135.56000000000014; at most 3.1e-15
  relative). Report and JSON numbers: bit-equal or within --report-float-rtol (1e-12).
  Table floats were bit-equal in all 10 pairs, so they must be (--float-rtol 0; raise it
  if an engine change moves summation order). An OK line says how many floats were not
  bit-equal and the largest relative difference;
- manifest: run_id, started_at, finished_at, duration_ms (run and per model/table), bytes
  (table and report sizes: compression depends on row order); latest.json: run_id;
- report: the run id, the per-model duration cells, the footer's "run started" time.
Parquet key-value metadata held only ARROW:schema, equal between runs: IGNORED_KV_KEYS is
empty. No host names appear in the published tree (the run id embeds the pid).
"""

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.parquet as pq

IGNORED_JSON_KEYS = {"run_id", "started_at", "finished_at", "duration_ms", "bytes"}
IGNORED_KV_KEYS = set()
RUN_ID = re.compile(r"\d{8}T\d{6}\.\d+Z-\d+")  # 20261205T232327.797363Z-11838 (time, pid)
FILE_ID = re.compile(r"(?:^|(?<=/))(?:<run_id>-)?[A-Za-z0-9]{16}(_\d+)?(?=\.parquet$)")
HTML_MASKS = [
    (RUN_ID, "<run_id>"),
    (re.compile(r'(data-col="duration_ms" data-v=")\d+(">)[^<]*'), r"\1<ms>\2<s>"),
    (re.compile(r"run started \d{4}-\d\d-\d\d \d\d:\d\d( UTC)?"), "run started <time>"),
]
NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
HEADING = re.compile(r"\s*<h[1-6]")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Floats:
    """Float equality: bit-equal, or within a relative tolerance (tallied for the OK line)."""

    def __init__(self, rtol):
        self.rtol, self.noisy, self.max_rel = rtol, 0, 0.0

    def same(self, a, b):
        if not (isinstance(a, float) and isinstance(b, float)):
            return a == b and type(a) is type(b)
        if a.hex() == b.hex() or (math.isnan(a) and math.isnan(b)):
            return True
        if not (math.isfinite(a) and math.isfinite(b)):
            return False
        rel = abs(a - b) / max(abs(a), abs(b))
        if rel > self.rtol:
            return False
        self.noisy, self.max_rel = self.noisy + 1, max(self.max_rel, rel)
        return True

    def note(self):
        return f" ({self.noisy} floats not bit-equal, max rel diff {self.max_rel:.1e})" if self.noisy else ""


def norm_path(rel):
    return FILE_ID.sub(lambda m: "<id>_<n>" if m.group(1) else "<id>", RUN_ID.sub("<run_id>", rel))


def tree(root):
    """{normalised relative path: [absolute paths]} of every file under root."""
    out = {}
    for d, _, names in os.walk(root):
        for n in names:
            out.setdefault(norm_path(os.path.relpath(os.path.join(d, n), root)), []).append(os.path.join(d, n))
    return out


def tables(files):
    """{table (`<name>/as_of=D`, `_state/as_of=D/<model>`, else the file's dir): [(path, {hive column: value})]}."""
    out = {}
    for rel, paths in files.items():
        if rel.endswith(".parquet"):
            parts = rel.split("/")
            i = next((k for k, p in enumerate(parts[:-1]) if p.startswith("as_of=")), len(parts) - 2)
            if parts[0] == "_state":  # `_state/as_of=D/<model>/`: one table per model
                i += 1
            hive = dict(map(unquote, p.split("=", 1)) for p in parts[i + 1:-1] if "=" in p)
            out.setdefault("/".join(parts[:i + 1]), []).extend((p, hive) for p in paths)
    return out


def read_table(files):
    """(schema entries, key-value entries, rows) of a table; rows are tuples, hive columns last."""
    schema, kv, parts = set(), set(), []
    for path, hive in sorted(files, key=lambda f: f[0]):
        pf = pq.ParquetFile(path)
        s = pf.schema_arrow
        schema |= {(f.name, str(f.type), "nullable" if f.nullable else "not null",
                    tuple(sorted((f.metadata or {}).items()))) for f in s}
        schema |= {("(column order)", tuple(s.names)), ("(schema metadata)", tuple(sorted((s.metadata or {}).items())))}
        meta = {k.decode(): v.decode(errors="replace") for k, v in (pf.metadata.metadata or {}).items()}
        kv |= {(k, v) for k, v in meta.items() if k not in IGNORED_KV_KEYS} | {("(created_by)", pf.metadata.created_by)}
        t = pf.read()
        for k, v in sorted(hive.items()):
            t = t.append_column(k, pa.array([v] * t.num_rows, pa.string()))
        parts.append(t)
    floats = {i for i, f in enumerate(parts[0].schema) if pa.types.is_floating(f.type)}
    rows = [tuple(r.values()) for t in parts for r in t.to_pylist()]
    return schema, kv, rows, floats, parts[0].schema.names


def row_diff(ra, rb, floats, fl):
    """Rows only in A and only in B (multisets; floats by their bits), sorted by the non-float
    columns, then the floats; none when they pair up differing only in floats within tolerance."""
    key = lambda r: (tuple(repr(v) for i, v in enumerate(r) if i not in floats),
                     tuple(r[i].hex() if isinstance(r[i], float) else repr(r[i]) for i in sorted(floats)))

    def only(rows, mine, theirs):
        left, out = mine - theirs, []
        for r in rows:
            if left[key(r)] > 0:
                left[key(r)] -= 1
                out.append(r)
        return sorted(out, key=key)

    ca, cb = Counter(map(key, ra)), Counter(map(key, rb))
    only_a, only_b = only(ra, ca, cb), only(rb, cb, ca)
    same = lambda a, b: all(fl.same(x, y) if i in floats else repr(x) == repr(y) for i, (x, y) in enumerate(zip(a, b)))
    if len(only_a) == len(only_b) and all(same(a, b) for a, b in zip(only_a, only_b)):
        return [], []
    return only_a, only_b


def compare_table(name, files_a, files_b, rtol):
    (sa, ka, ra, floats, cols_a), (sb, kb, rb, _, cols_b) = read_table(files_a), read_table(files_b)
    problems, fl = [], Floats(rtol)
    for what, a, b in (("schema", sa, sb), ("key-value metadata", ka, kb)):
        if a != b:
            side = lambda s: "[" + ", ".join(r if len(r := repr(e)) < 160 else r[:150] + "...)" for e in sorted(s, key=repr)) + "]"
            problems.append(f"{what} differs: only in A {side(a - b)}, only in B {side(b - a)}")
    if cols_a != cols_b:
        problems.append(f"columns differ: {cols_a} vs {cols_b}")
    else:
        only_a, only_b = row_diff(ra, rb, floats, fl)
        if only_a or only_b:
            problems.append(f"{len(ra)} rows vs {len(rb)}; {len(only_a)} only in A, {len(only_b)} only in B; first ones:\n"
                            + "\n".join([f"      A {r}" for r in only_a[:3]] + [f"      B {r}" for r in only_b[:3]]))
    if problems:
        return f"DIFF  table {name}:\n    " + "\n    ".join(problems)
    nf = len(files_a) if len(files_a) == len(files_b) else f"{len(files_a)}/{len(files_b)}"
    return f"OK    table {name}: {len(ra)} rows, {len(cols_a)} columns, {nf} files{fl.note()}"


def clean_json(v):
    if isinstance(v, dict):
        v = {k: clean_json(x) for k, x in v.items() if k not in IGNORED_JSON_KEYS}
        if isinstance(v.get("files"), list):  # how many `_N` files a table gets varies: a set
            v["files"] = sorted(set(map(str, v["files"])))
        return v
    if isinstance(v, list):
        return [clean_json(x) for x in v]
    return norm_path(v) if isinstance(v, str) else v


def json_diffs(a, b, fl, path=""):
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b))
                for d in json_diffs(a.get(k, "<missing>"), b.get(k, "<missing>"), fl, f"{path}.{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in json_diffs(x, y, fl, f"{path}[{i}]")]
    if isinstance(a, float) and isinstance(b, float):
        return [] if fl.same(a, b) else [f"{path}: {a!r} vs {b!r}"]
    return [] if a == b and type(a) is type(b) else [f"{path}: {a!r} vs {b!r}"]


def html_diffs(text_a, text_b, fl):
    def mask(text):
        lines = text.splitlines()
        for rx, repl in HTML_MASKS:
            lines = [rx.sub(repl, line) for line in lines]
        return lines

    la, lb = mask(text_a), mask(text_b)
    heads = lambda ls: [re.sub(r"<[^>]+>", "", x).strip() for x in ls if HEADING.match(x)]
    if heads(la) != heads(lb):
        return [f"section headings differ: {heads(la)} vs {heads(lb)}"]
    if len(la) != len(lb):
        return [f"{len(la)} lines vs {len(lb)} (after masking)"]
    out, section = [], ""
    for n, (x, y) in enumerate(zip(la, lb), 1):
        section = re.sub(r"<[^>]+>", "", x).strip() if HEADING.match(x) else section
        if x != y and not (NUMBER.sub("#", x) == NUMBER.sub("#", y) and all(
                u == v or fl.same(float(u), float(v)) for u, v in zip(NUMBER.findall(x), NUMBER.findall(y)))):
            out.append(f"line {n} (section {section!r}):\n      A {x[:300]}\n      B {y[:300]}")
    return out


CATALOG_FILE = re.compile(r"[A-Za-z0-9]{16}(?:_\d+)?\.parquet")


def catalog_diffs(text_a, text_b):
    """Line by line, with the run id and the data files' names masked; the file lists are
    compared as lists of distinct paths (a table's `_N` file count varies between runs)."""
    def norm(text):
        out = []
        for line in RUN_ID.sub("<run_id>", text).splitlines():
            line = CATALOG_FILE.sub("<id>.parquet", line).rstrip(",")
            if not out or out[-1] != line:
                out.append(line)
        return out
    la, lb = norm(text_a), norm(text_b)
    if len(la) != len(lb):
        return [f"{len(la)} lines vs {len(lb)} (after masking)"]
    return [f"line {n}:\n      A {x[:300]}\n      B {y[:300]}" for n, (x, y) in enumerate(zip(la, lb), 1) if x != y]


def compare_dirs(a, b, rtol, report_rtol, tables_only=False):
    """Prints a line per table and file; True when anything differs. `tables_only`: the
    Parquet tables alone (runs that computed the same tables differently: their manifests
    and reports say how)."""
    fa, fb = tree(a), tree(b)
    if tables_only:
        fa = {k: v for k, v in fa.items() if k.endswith(".parquet")}
        fb = {k: v for k, v in fb.items() if k.endswith(".parquet")}
    only_a, only_b = sorted(set(fa) - set(fb)), sorted(set(fb) - set(fa))
    diff = bool(only_a or only_b)
    print(f"DIFF  files: only in A {only_a[:10]}, only in B {only_b[:10]}" if diff else
          f"OK    files: {len(fa)} distinct relative paths after normalising run-specific names")
    ta, tb = tables(fa), tables(fb)
    for name in sorted(set(ta) | set(tb)):
        line = (compare_table(name, ta[name], tb[name], rtol) if name in ta and name in tb
                else f"DIFF  table {name}: only in {'A' if name in ta else 'B'}")
        diff |= line.startswith("DIFF")
        print(line)
    same_bytes = []
    for rel in sorted(set(fa) & set(fb)):
        if rel.endswith(".parquet"):
            continue
        fl, pa_, pb = Floats(report_rtol), fa[rel][0], fb[rel][0]
        if rel.endswith(".json"):
            kind, diffs = "json", json_diffs(clean_json(json.load(open(pa_))), clean_json(json.load(open(pb))), fl)
        elif rel.endswith(".html"):
            kind, diffs = "html", html_diffs(open(pa_, encoding="utf-8").read(), open(pb, encoding="utf-8").read(), fl)
        elif rel.startswith("_catalog/") and rel.endswith(".sql"):  # names the run that wrote it
            kind, diffs = "sql", catalog_diffs(open(pa_, encoding="utf-8").read(), open(pb, encoding="utf-8").read())
        else:
            kind, diffs = "file", [] if open(pa_, "rb").read() == open(pb, "rb").read() else ["bytes differ"]
            if not diffs:
                same_bytes.append(os.path.basename(rel))
                continue
        diff |= bool(diffs)
        print(f"DIFF  {kind} {rel}: {len(diffs)} differences; first ones:\n    " + "\n    ".join(diffs[:5])
              if diffs else f"OK    {kind} {rel}{fl.note()}")
    if same_bytes:
        print(f"OK    other files: {len(same_bytes)} byte-equal ({', '.join(sorted(set(same_bytes)))})")
    return diff


def write_config(src, dst, out):
    """src with relative uris made absolute (against src's dir) and the [output] uri = out."""
    base, section, lines, saw_output = os.path.dirname(os.path.abspath(src)), "", [], False
    for line in open(src):
        m = re.match(r"\s*\[([^\]]+)\]", line)
        section = m.group(1).strip() if m else section
        m = re.match(r'(\s*uri\s*=\s*)"([^"]*)"(.*)', line)
        if m and section == "output":
            line, saw_output = f'{m.group(1)}"{out}"{m.group(3)}\n', True
        elif m and "://" not in m.group(2) and not os.path.isabs(m.group(2)):
            line = f'{m.group(1)}"{os.path.normpath(os.path.join(base, m.group(2)))}"{m.group(3)}\n'
        lines.append(line)
    if not saw_output:
        print(f'no [output] uri = "..." line to rewrite in {src}', file=sys.stderr)
        sys.exit(2)
    open(dst, "w").write("".join(lines))


def run(binary, cfg, as_of, work, label):
    """Runs binary into work/out, moves the tree to work/label; exit 2 with its stderr tail on failure."""
    env = {k: v for k, v in os.environ.items() if k != "TOKIO_WORKER_THREADS" and not k.startswith("SEGFLOW_")}
    cmd = [binary, "--log-format", "json", "run", "--config", cfg, "--as-of", as_of]
    print(f"running {label}: {' '.join(cmd)}", file=sys.stderr)
    with open(os.path.join(work, f"{label}.stdout"), "w") as o, open(os.path.join(work, f"{label}.stderr"), "w") as e:
        rc = subprocess.call(cmd, cwd=work, env=env, stdout=o, stderr=e)
    if rc != 0:
        tail = open(os.path.join(work, f"{label}.stderr"), errors="replace").read().splitlines()[-15:]
        print(f"{label} run failed (exit {rc}); last lines of its stderr:\n  " + "\n  ".join(tail), file=sys.stderr)
        sys.exit(2)
    shutil.move(os.path.join(work, "out"), os.path.join(work, label))  # the next run gets the same, fresh path
    return os.path.join(work, label)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("binaries", nargs="*", metavar="OLD_BINARY NEW_BINARY")
    ap.add_argument("--config", default=os.path.join(REPO, "fixtures/demo/segflow.toml"))
    ap.add_argument("--as-of", default="2026-11-21")
    ap.add_argument("--float-rtol", type=float, default=0.0, help="table floats: relative tolerance (default 0: bits)")
    ap.add_argument("--report-float-rtol", type=float, default=1e-12, help="report and JSON numbers: relative tolerance")
    ap.add_argument("--compare-dirs", nargs=2, metavar=("OUT_A", "OUT_B"), help="compare two existing output trees")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (output trees, run logs)")
    ap.add_argument("--ignore-config-hash", action="store_true",
                    help="the trees come from settings that differ on purpose (e.g. the engine): "
                         "ignore the manifest's config_hash and the report's")
    ap.add_argument("--tables-only", action="store_true",
                    help="with --compare-dirs: compare the Parquet tables only (e.g. an incremental "
                         "and a full run of the same date, whose manifests differ on purpose)")
    args = ap.parse_args()
    if args.ignore_config_hash:
        IGNORED_JSON_KEYS.add("config_hash")
        HTML_MASKS.append((re.compile(r"config hash [0-9a-f]{64}"), "config hash <hash>"))
    if args.compare_dirs:
        if args.binaries:
            ap.error("--compare-dirs takes no binaries")
        for d in args.compare_dirs:
            if not os.path.isdir(d):
                ap.error(f"not a directory: {d}")
        print(f"A = {args.compare_dirs[0]}\nB = {args.compare_dirs[1]}")
        diff = compare_dirs(*args.compare_dirs, args.float_rtol, args.report_float_rtol, args.tables_only)
        print("DIFFERENT" if diff else "EQUAL")
        return 1 if diff else 0
    if len(args.binaries) != 2:
        ap.error("give OLD_BINARY NEW_BINARY (or --compare-dirs OUT_A OUT_B)")
    bins = [os.path.abspath(b) for b in args.binaries]
    for b in bins:
        if not (os.path.isfile(b) and os.access(b, os.X_OK)):
            ap.error(f"not an executable file: {b}")
    if not os.path.isfile(args.config):
        ap.error(f"no config file {args.config}")
    work = tempfile.mkdtemp(prefix="segflow-compare.")
    try:
        cfg = os.path.join(work, "segflow.toml")
        write_config(args.config, cfg, os.path.join(work, "out"))
        a, b = (run(x, cfg, args.as_of, work, label) for x, label in zip(bins, ("old", "new")))
        print(f"A = {bins[0]}\nB = {bins[1]}\n(config {args.config}, as_of {args.as_of})")
        diff = compare_dirs(a, b, args.float_rtol, args.report_float_rtol)
        print("DIFFERENT: the binaries published different output" if diff else "EQUAL: same published output")
        return 1 if diff else 0
    finally:
        if args.keep:
            print(f"kept {work} (old/, new/, *.stderr)", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
