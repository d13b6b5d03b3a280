"""Validates segflow's OpenLineage events (a JSON-lines file) against the OpenLineage JSON
schemas vendored under ci/openlineage/: every event as a RunEvent, every facet against its
own facet schema; START comes first and one COMPLETE or FAIL ends each run id.

usage: lineage_check.py EVENTS_FILE
"""

import datetime
import json
import pathlib
import sys
import uuid

from jsonschema import Draft202012Validator
from referencing import Registry, Resource

SPEC = pathlib.Path(__file__).parent / "openlineage"
FACETS = {
    ("dataset", "schema"): ("SchemaDatasetFacet", "SchemaDatasetFacet"),
    ("output", "outputStatistics"): ("OutputStatisticsOutputDatasetFacet", "OutputStatisticsOutputDatasetFacet"),
    ("run", "errorMessage"): ("ErrorMessageRunFacet", "ErrorMessageRunFacet"),
}


def main() -> int:
    docs = {p.stem: json.loads(p.read_text()) for p in SPEC.glob("*.json")}
    registry = Registry().with_resources(
        (d["$id"], Resource.from_contents(d)) for d in docs.values()
    )
    core = docs["OpenLineage"]

    def validator(doc, definition):
        return Draft202012Validator({"$ref": f"{doc['$id']}#/$defs/{definition}"}, registry=registry)

    run_event = validator(core, "RunEvent")
    facet_validators = {k: validator(docs[f], d) for k, (f, d) in FACETS.items()}
    events = [json.loads(l) for l in pathlib.Path(sys.argv[1]).read_text().splitlines() if l.strip()]
    failures = []

    def check(ok, what):
        if not ok:
            print("FAIL " + what)
            failures.append(what)

    open_runs = {}
    for i, e in enumerate(events):
        for err in run_event.iter_errors(e):
            check(False, f"event {i}: {err.message} at {list(err.absolute_path)}")
        check(str(uuid.UUID(e["run"]["runId"])) == e["run"]["runId"], f"event {i}: runId is a UUID")
        datetime.datetime.fromisoformat(e["eventTime"].replace("Z", "+00:00"))
        facets = [("run", n, f) for n, f in e["run"].get("facets", {}).items()]
        for d in e.get("inputs", []) + e.get("outputs", []):
            facets += [("dataset", n, f) for n, f in d.get("facets", {}).items()]
            facets += [("output", n, f) for n, f in d.get("outputFacets", {}).items()]
        for kind, name, facet in facets:
            v = facet_validators.get((kind, name))
            check(v is not None, f"event {i}: facet {kind}/{name} is one segflow is checked for")
            for err in (v.iter_errors(facet) if v else []):
                check(False, f"event {i}: facet {name}: {err.message}")
        run_id, kind = e["run"]["runId"], e["eventType"]
        if kind == "START":
            check(run_id not in open_runs, f"event {i}: one START per run")
            open_runs[run_id] = True
        else:
            check(open_runs.pop(run_id, False), f"event {i}: {kind} follows its START")
    check(not open_runs, "every run ended")
    # An empty file would pass every check above: a run writes START and COMPLETE (or FAIL).
    check(len(events) >= 2, f"the file holds {len(events)} event(s), a run writes at least 2")
    check(any(e["eventType"] == "COMPLETE" for e in events), "a COMPLETE event")
    kinds = [e["eventType"] for e in events]
    print(f"{len(events)} events ({', '.join(kinds)}), {len(failures)} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
