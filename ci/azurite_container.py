#!/usr/bin/env python3
"""Creates a blob container in Azurite (the Azure Storage emulator) for the Azure tests.

usage: azurite_container.py http://127.0.0.1:PORT CONTAINER

object_store creates no containers, so the tests make one with a SharedKey-signed
`PUT /devstoreaccount1/CONTAINER?restype=container` using Azurite's well-known development
account and key (public, documented by Microsoft; not a secret). Standard library only.
An existing container is fine (exit 0); any other failure exits 1 with the server's answer.
"""
import base64
import hashlib
import hmac
import sys
import urllib.error
import urllib.request
from email.utils import formatdate

ACCOUNT = "devstoreaccount1"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
VERSION = "2021-08-06"


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    base, container = sys.argv[1].rstrip("/"), sys.argv[2]
    date = formatdate(usegmt=True)
    # SharedKey string to sign: the verb, eleven standard headers (Content-Length empty when
    # 0; urllib adds a Content-Type to a body, so one is set and signed), the x-ms-* headers,
    # then the resource (/account/account/container for Azurite's path-style URLs).
    string_to_sign = "\n".join(
        ["PUT", "", "", "", "", "application/octet-stream", "", "", "", "", "", ""]
        + [f"x-ms-date:{date}\nx-ms-version:{VERSION}"]
        + [f"/{ACCOUNT}/{ACCOUNT}/{container}\nrestype:container"]
    )
    signature = base64.b64encode(
        hmac.new(base64.b64decode(KEY), string_to_sign.encode(), hashlib.sha256).digest()
    ).decode()
    request = urllib.request.Request(
        f"{base}/{ACCOUNT}/{container}?restype=container",
        method="PUT",
        data=b"",
        headers={
            "Content-Type": "application/octet-stream",
            "x-ms-date": date,
            "x-ms-version": VERSION,
            "Authorization": f"SharedKey {ACCOUNT}:{signature}",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=30):
            return 0
    except urllib.error.HTTPError as e:
        if e.code == 409:  # ContainerAlreadyExists
            return 0
        print(f"create container {container}: HTTP {e.code}: {e.read().decode()[:500]}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
