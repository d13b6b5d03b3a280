"""Checks the Kubernetes manifests under deploy/kubernetes/ (run by ci/test.sh).

    python ci/k8s_check.py --segflow target/debug/segflow [deploy/kubernetes/segflow.yaml]

1. Every document is a Kubernetes object whose every field exists in the Kubernetes API, as
   the official Python client's models describe it (kubernetes==36, API 1.36): an unknown or
   misspelt field, a list where an object belongs or a missing required field fails, with
   the field's path.
2. The pieces fit: the scheduler container binds the port its Service targets; executors
   name that Service and port as their scheduler, bind the ports they declare and take
   their IP from the pod; the run's config (the ConfigMap the CronJob mounts, at the path
   its --config names) selects the ballista engine at that Service.
3. segflow accepts the commands: every container's subcommand and flags are in
   `segflow <subcommand> --help` of the binary under test.
Exit 0 with "k8s check OK: ..." or 1 naming every problem.
"""

import argparse
import re
import subprocess
import sys
import tomllib

import kubernetes.client as k8s
import yaml

KINDS = {
    ("v1", "ConfigMap"): "V1ConfigMap",
    ("v1", "Service"): "V1Service",
    ("apps/v1", "Deployment"): "V1Deployment",
    ("batch/v1", "CronJob"): "V1CronJob",
}
PRIMITIVES = {"str": str, "int": int, "bool": bool, "float": (int, float)}


def walk(value, type_name, path, problems):
    """Checks `value` against the client's type `type_name` (strictly: unknown fields fail)."""
    if value is None:
        return
    if type_name in PRIMITIVES:
        if not isinstance(value, PRIMITIVES[type_name]) or (
            type_name == "int" and isinstance(value, bool)
        ):
            problems.append(f"{path}: expected {type_name}, got {value!r}")
        return
    if type_name in ("object", "datetime", "date"):
        return  # int-or-string and free-form fields
    m = re.fullmatch(r"(?:list|List)\[(.+)\]", type_name)
    if m:
        if not isinstance(value, list):
            problems.append(f"{path}: expected a list, got {type(value).__name__}")
            return
        for i, v in enumerate(value):
            walk(v, m.group(1), f"{path}[{i}]", problems)
        return
    m = re.fullmatch(r"(?:[dD]ict\(str, (.+)\)|[dD]ict\[str, (.+)\])", type_name)
    if m:
        if not isinstance(value, dict):
            problems.append(f"{path}: expected a map, got {type(value).__name__}")
            return
        for k, v in value.items():
            walk(v, m.group(1) or m.group(2), f"{path}.{k}", problems)
        return
    model = getattr(k8s, type_name)
    if not isinstance(value, dict):
        problems.append(f"{path}: expected a {type_name} object, got {type(value).__name__}")
        return
    by_json = {json: attr for attr, json in model.attribute_map.items()}
    for key, v in value.items():
        attr = by_json.get(key)
        if attr is None:
            problems.append(f"{path}.{key}: no such field in {type_name}")
            continue
        walk(v, model.openapi_types[attr], f"{path}.{key}", problems)


def required(doc, model_name, path, problems):
    """The client's own validation of required fields (it raises on a missing one)."""
    try:
        k8s.ApiClient()._ApiClient__deserialize(doc, model_name)
    except (ValueError, TypeError) as e:
        problems.append(f"{path}: {e}")


def containers(doc):
    spec = doc["spec"]
    if doc["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    pod = spec["template"]["spec"]
    return pod, pod["containers"]


def flag(args, name):
    i = args.index(name)
    return args[i + 1]


def port_of(addr):
    return int(addr.rsplit(":", 1)[1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--segflow", required=True)
    ap.add_argument("manifest", nargs="?", default="deploy/kubernetes/segflow.yaml")
    a = ap.parse_args()
    problems = []
    with open(a.manifest) as f:
        docs = [d for d in yaml.safe_load_all(f) if d is not None]
    by_kind = {}
    for n, doc in enumerate(docs):
        key = (doc.get("apiVersion"), doc.get("kind"))
        name = (doc.get("metadata") or {}).get("name", f"#{n}")
        path = f"{doc.get('kind')}/{name}"
        if key not in KINDS:
            problems.append(f"{path}: unexpected apiVersion/kind {key}")
            continue
        walk(doc, KINDS[key], path, problems)
        required(doc, KINDS[key], path, problems)
        by_kind.setdefault(doc["kind"], {})[name] = doc
    if problems:
        return report(problems)

    deployments = by_kind.get("Deployment", {})
    (service,) = by_kind["Service"].values()
    svc_port = service["spec"]["ports"][0]
    scheduler_addr = f"{service['metadata']['name']}:{svc_port['port']}"
    sched = [d for d in deployments.values() if containers(d)[1][0]["args"][0] == "scheduler"]
    execs = [d for d in deployments.values() if containers(d)[1][0]["args"][0] == "executor"]
    if len(sched) != 1 or not execs:
        problems.append("expected one scheduler Deployment and at least one executor Deployment")
        return report(problems)
    _, (sc,) = containers(sched[0])
    named = {p["name"]: p["containerPort"] for p in sc["ports"]}
    target = svc_port["targetPort"]
    target_port = named.get(target, target)
    if port_of(flag(sc["args"], "--bind")) != target_port:
        problems.append(f"scheduler binds {flag(sc['args'], '--bind')}, its Service targets {target_port}")
    if service["spec"]["selector"] != sched[0]["spec"]["template"]["metadata"]["labels"]:
        problems.append("the scheduler Service does not select the scheduler pods")
    for d in execs:
        pod, (ec,) = containers(d)
        path = f"Deployment/{d['metadata']['name']}"
        ports = {p["name"]: p["containerPort"] for p in ec["ports"]}
        if flag(ec["args"], "--scheduler") != scheduler_addr:
            problems.append(f"{path}: --scheduler {flag(ec['args'], '--scheduler')}, the Service is {scheduler_addr}")
        if port_of(flag(ec["args"], "--bind")) != ports.get("flight"):
            problems.append(f"{path}: --bind port is not the container's flight port")
        if int(flag(ec["args"], "--grpc-port")) != ports.get("grpc"):
            problems.append(f"{path}: --grpc-port is not the container's grpc port")
        host = flag(ec["args"], "--external-host")
        env = {e["name"]: e for e in ec.get("env", [])}
        m = re.fullmatch(r"\$\((\w+)\)", host)
        if not m or env.get(m.group(1), {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") != "status.podIP":
            problems.append(f"{path}: --external-host {host} is not the pod IP")
        mounts = {v["mountPath"] for v in ec.get("volumeMounts", [])}
        if flag(ec["args"], "--work-dir") not in mounts:
            problems.append(f"{path}: --work-dir is not a mounted volume")
    for cj in by_kind.get("CronJob", {}).values():
        pod, (rc,) = containers(cj)
        path = f"CronJob/{cj['metadata']['name']}"
        config = flag(rc["args"], "--config")
        mount = next(v for v in rc["volumeMounts"] if config.startswith(v["mountPath"] + "/"))
        volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
        cm = by_kind["ConfigMap"][volume["configMap"]["name"]]
        text = cm["data"][config[len(mount["mountPath"]) + 1:]]
        runtime = tomllib.loads(text).get("runtime", {})
        if runtime.get("engine") != "ballista" or runtime.get("scheduler") != f"df://{scheduler_addr}":
            problems.append(f"{path}: its config's [runtime] is {runtime}, not the ballista engine at df://{scheduler_addr}")
        if pod.get("restartPolicy") != "Never":
            problems.append(f"{path}: a failed run must not be restarted in place (restartPolicy Never)")
    # segflow accepts every container's command line.
    all_containers = [c for kind in ("Deployment", "CronJob") for d in by_kind.get(kind, {}).values() for c in containers(d)[1]]
    for c in all_containers:
        sub = c["args"][0]
        help_text = subprocess.run([a.segflow, sub, "--help"], capture_output=True, text=True)
        if help_text.returncode != 0:
            problems.append(f"container {c['name']}: `segflow {sub}` is not a command")
            continue
        for arg in c["args"][1:]:
            if arg.startswith("--") and not re.search(rf"(^|\s){re.escape(arg)}\b", help_text.stdout, re.M):
                problems.append(f"container {c['name']}: `segflow {sub}` has no flag {arg}")
    if problems:
        return report(problems)
    print(f"k8s check OK: {len(docs)} objects in {a.manifest} ({', '.join(sorted(by_kind))}); "
          f"scheduler at {scheduler_addr}, {len(execs)} executor Deployment(s), "
          f"{len(all_containers)} container command lines accepted by segflow")
    return 0


def report(problems):
    for p in problems:
        print(f"k8s check: {p}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
