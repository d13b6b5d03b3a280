#!/usr/bin/env python3
"""Fault-injecting HTTP/1.1 proxy for testing segflow's S3 access against moto.

The proxy sits on loopback between a client (segflow's object_store S3 client, or
boto3) and a plain-http S3 server (``python -m moto.server``).  It parses every
HTTP/1.1 request on keep-alive connections and, with probability ``--fail-rate``
(drawn from ``random.Random(--seed)``), injects a fault instead of forwarding the
request normally.  The fault kinds listed in ``--faults`` are used in rotation:
fault #1 is the first kind, fault #2 the second, and so on.

Usage::

    python ci/faultproxy.py --upstream 127.0.0.1:PORT --fail-rate 0.1 \\
        [--seed 1] [--faults 503,reset,slow] [--slow-seconds 30] \\
        [--port-file PATH] [--stats-file PATH]

The proxy binds 127.0.0.1 on a free port, writes the port number to
``--port-file`` (atomically: temp file + os.replace) and prints
``LISTENING <port>`` on stdout.  Point the client's endpoint at
``http://127.0.0.1:<port>`` (path-style addressing).

Fault kinds:

``503``
    The request is not forwarded.  The proxy answers
    ``HTTP/1.1 503 Service Unavailable`` with an S3 ``SlowDown`` XML error body.
    The connection stays usable, except when the request carried
    ``Expect: 100-continue`` (then the body is never sent by the client, so the
    proxy answers with ``Connection: close`` and closes).
``reset``
    The request is not forwarded.  The client socket is closed with
    SO_LINGER (1, 0), so the client sees a TCP RST.
``slow``
    The request is forwarded; the response status line and headers are relayed,
    then the proxy stalls ``--slow-seconds`` before closing without sending the
    body (the client's timeout should fire and it retries).  If the response has
    no body at all (HEAD, 1xx/204/304, ``Content-Length: 0``) the proxy stalls
    before the status line instead, otherwise the stall would not be observable.

Requests that are not faulted are forwarded byte for byte (Host header and all
other headers unchanged) over a fresh upstream connection per request, and the
response (including any 1xx interim responses) is relayed byte for byte.
Request bodies are framed by Content-Length or ``Transfer-Encoding: chunked``;
response bodies by Content-Length, chunked, or read-until-close.

After every request the totals are written to ``--stats-file`` as JSON
(atomically)::

    {"requests": N, "forwarded": N, "faults": {"503": n, "reset": n, "slow": n},
     "fault_total": n, "upstream_errors": n, "statuses": {"200": n, ...}}

``forwarded`` counts requests relayed normally (not faulted; a ``slow`` fault
reaches upstream but is counted only under ``faults``); ``statuses`` counts the
final status codes relayed for those requests (502 for upstream errors).

One line per request is logged to stderr.  SIGTERM/SIGINT stop the proxy cleanly
(exit status 0).  Python 3.11 standard library only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import struct
import sys
import tempfile

FAULT_KINDS = ("503", "reset", "slow")
STREAM_LIMIT = 1 << 20  # longest header / chunk-size line accepted
COPY_CHUNK = 1 << 16
MAX_HEADER_LINES = 200

SLOWDOWN_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b"<Error><Code>SlowDown</Code>"
    b"<Message>Please reduce your request rate.</Message></Error>"
)


class ProtocolError(Exception):
    """Malformed HTTP message."""


class Message:
    """A parsed HTTP message head: start line, headers, and the raw bytes."""

    def __init__(self, start: str, headers: list[tuple[str, str]], raw: bytes):
        self.start = start
        self.headers = headers
        self.raw = raw

    def get(self, name: str) -> str | None:
        name = name.lower()
        values = [v for k, v in self.headers if k.lower() == name]
        return ", ".join(values) if values else None

    def tokens(self, name: str) -> set[str]:
        value = self.get(name) or ""
        return {t.strip().lower() for t in value.split(",") if t.strip()}

    def is_chunked(self) -> bool:
        te = [t for t in (self.get("transfer-encoding") or "").lower().split(",") if t.strip()]
        return bool(te) and te[-1].strip() == "chunked"

    def content_length(self) -> int | None:
        value = self.get("content-length")
        if value is None:
            return None
        # Duplicated identical values ("5, 5") are tolerated; anything else is an error.
        parts = {p.strip() for p in value.split(",")}
        if len(parts) != 1:
            raise ProtocolError(f"conflicting Content-Length: {value!r}")
        try:
            n = int(parts.pop())
        except ValueError as e:
            raise ProtocolError(f"bad Content-Length: {value!r}") from e
        if n < 0:
            raise ProtocolError(f"negative Content-Length: {value!r}")
        return n


async def read_head(reader: asyncio.StreamReader, *, skip_blank: bool) -> Message | None:
    """Read a start line and headers. Returns None on clean EOF before any byte."""
    raw = bytearray()
    while True:
        line = await reader.readline()
        if not line:
            if raw:
                raise ProtocolError("connection closed inside message head")
            return None
        if skip_blank and line in (b"\r\n", b"\n"):
            continue  # RFC 9112 2.2: ignore empty lines before a request line
        break
    raw += line
    start = line.decode("latin-1").rstrip("\r\n")
    headers: list[tuple[str, str]] = []
    while True:
        line = await reader.readline()
        if not line:
            raise ProtocolError("connection closed inside message head")
        raw += line
        if line in (b"\r\n", b"\n"):
            break
        if len(headers) >= MAX_HEADER_LINES:
            raise ProtocolError("too many header lines")
        text = line.decode("latin-1").rstrip("\r\n")
        if text[:1] in (" ", "\t") and headers:  # obsolete line folding
            name, value = headers[-1]
            headers[-1] = (name, value + " " + text.strip())
            continue
        name, sep, value = text.partition(":")
        if not sep or not name or name != name.strip():
            raise ProtocolError(f"bad header line: {text!r}")
        headers.append((name, value.strip()))
    return Message(start, headers, bytes(raw))


async def copy_exact(reader: asyncio.StreamReader, writer: asyncio.StreamWriter | None, n: int) -> None:
    while n > 0:
        data = await reader.read(min(n, COPY_CHUNK))
        if not data:
            raise ProtocolError(f"connection closed with {n} body bytes outstanding")
        n -= len(data)
        if writer is not None:
            writer.write(data)
            await writer.drain()


async def copy_chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter | None) -> None:
    """Relay a chunked body verbatim (chunk lines, data, last chunk and trailers)."""
    while True:
        line = await reader.readline()
        if not line:
            raise ProtocolError("connection closed inside chunked body")
        size_text = line.split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError as e:
            raise ProtocolError(f"bad chunk size line: {line!r}") from e
        if writer is not None:
            writer.write(line)
        if size == 0:
            break
        await copy_exact(reader, writer, size)
        crlf = await reader.readline()
        if crlf not in (b"\r\n", b"\n"):
            raise ProtocolError("missing CRLF after chunk data")
        if writer is not None:
            writer.write(crlf)
            await writer.drain()
    while True:  # trailer section, ends with an empty line
        line = await reader.readline()
        if not line:
            raise ProtocolError("connection closed inside chunked trailers")
        if writer is not None:
            writer.write(line)
        if line in (b"\r\n", b"\n"):
            break
    if writer is not None:
        await writer.drain()


async def copy_until_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        data = await reader.read(COPY_CHUNK)
        if not data:
            return
        writer.write(data)
        await writer.drain()


def request_has_body(req: Message) -> bool:
    if req.is_chunked():
        return True
    n = req.content_length()
    return bool(n)


async def copy_request_body(req: Message, reader: asyncio.StreamReader, writer: asyncio.StreamWriter | None) -> None:
    if req.is_chunked():
        await copy_chunked(reader, writer)
    else:
        n = req.content_length() or 0
        await copy_exact(reader, writer, n)


def response_body_kind(method: str, status: int, resp: Message) -> str:
    """'none', 'chunked', 'length' or 'close'."""
    if method == "HEAD" or 100 <= status < 200 or status in (204, 304):
        return "none"
    if resp.is_chunked():
        return "chunked"
    n = resp.content_length()
    if n is not None:
        return "none" if n == 0 else "length"
    return "close"


def parse_status(resp: Message) -> int:
    parts = resp.start.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/"):
        raise ProtocolError(f"bad status line: {resp.start!r}")
    try:
        return int(parts[1])
    except ValueError as e:
        raise ProtocolError(f"bad status line: {resp.start!r}") from e


def log(msg: str) -> None:
    print(f"faultproxy: {msg}", file=sys.stderr, flush=True)


def atomic_write(path: str, text: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".faultproxy-", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


class Proxy:
    def __init__(self, args: argparse.Namespace):
        host, _, port = args.upstream.rpartition(":")
        self.up_host = host or "127.0.0.1"
        self.up_port = int(port)
        self.fail_rate = args.fail_rate
        self.rng = random.Random(args.seed)
        self.faults = args.faults
        self.slow_seconds = args.slow_seconds
        self.stats_file = args.stats_file
        self.fault_seq = 0
        self.conn_seq = 0
        self.stats = {
            "requests": 0,
            "forwarded": 0,
            "faults": {k: 0 for k in FAULT_KINDS},
            "fault_total": 0,
            "upstream_errors": 0,
            "statuses": {},
        }
        self.tasks: set[asyncio.Task] = set()

    # -- bookkeeping -------------------------------------------------------
    def write_stats(self) -> None:
        if not self.stats_file:
            return
        try:
            atomic_write(self.stats_file, json.dumps(self.stats, sort_keys=True) + "\n")
        except OSError as e:
            log(f"cannot write stats file: {e}")

    def count_status(self, status: int) -> None:
        key = str(status)
        self.stats["statuses"][key] = self.stats["statuses"].get(key, 0) + 1

    def choose_fault(self) -> str | None:
        if self.fail_rate <= 0 or not self.faults:
            return None
        if self.rng.random() >= self.fail_rate:
            return None
        kind = self.faults[self.fault_seq % len(self.faults)]
        self.fault_seq += 1
        self.stats["faults"][kind] += 1
        self.stats["fault_total"] += 1
        return kind

    # -- connection handling ----------------------------------------------
    async def handle(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        self.conn_seq += 1
        cid = self.conn_seq
        task = asyncio.current_task()
        if task is not None:
            self.tasks.add(task)
        try:
            while True:
                keep = await self.one_request(cid, creader, cwriter)
                if not keep:
                    break
        except (ProtocolError, ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as e:
            log(f"conn {cid}: closing after error: {type(e).__name__}: {e}")
        except asyncio.CancelledError:
            pass
        except Exception as e:  # never let one connection kill the proxy
            log(f"conn {cid}: unexpected error: {type(e).__name__}: {e}")
        finally:
            if task is not None:
                self.tasks.discard(task)
            if not cwriter.transport.is_closing():
                cwriter.close()
            try:
                await cwriter.wait_closed()
            except Exception:
                pass

    async def one_request(self, cid: int, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> bool:
        """Handle one request; return True if the client connection stays usable."""
        try:
            req = await read_head(creader, skip_blank=True)
        except ProtocolError as e:
            log(f"conn {cid}: bad request head: {e}")
            await self.send_simple(cwriter, 400, "Bad Request", b"", close=True)
            return False
        if req is None:
            return False
        parts = req.start.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            log(f"conn {cid}: bad request line {req.start!r}")
            await self.send_simple(cwriter, 400, "Bad Request", b"", close=True)
            return False
        method, target, version = parts
        try:
            req.content_length()
        except ProtocolError as e:
            log(f"conn {cid}: {method} {target}: {e}")
            await self.send_simple(cwriter, 400, "Bad Request", b"", close=True)
            return False

        client_close = "close" in req.tokens("connection") or (
            version == "HTTP/1.0" and "keep-alive" not in req.tokens("connection")
        )
        expect_continue = "100-continue" in req.tokens("expect")

        self.stats["requests"] += 1
        fault = self.choose_fault()
        self.write_stats()  # counts are visible before the client sees the outcome
        try:
            if fault == "503":
                keep = await self.fault_503(req, creader, cwriter, expect_continue)
                log(f"conn {cid}: {method} {target} -> fault:503")
                return keep and not client_close
            if fault == "reset":
                log(f"conn {cid}: {method} {target} -> fault:reset")
                self.reset(cwriter)
                return False
            if fault is None:
                self.stats["forwarded"] += 1
            status, keep = await self.forward(cid, method, req, creader, cwriter, slow=(fault == "slow"))
            if fault == "slow":
                log(f"conn {cid}: {method} {target} -> fault:slow (upstream {status})")
                return False
            self.count_status(status)
            log(f"conn {cid}: {method} {target} -> {status}")
            return keep and not client_close
        finally:
            self.write_stats()

    async def send_simple(self, cwriter: asyncio.StreamWriter, status: int, reason: str, body: bytes,
                          *, close: bool, content_type: str = "text/plain") -> None:
        head = (
            f"HTTP/1.1 {status} {reason}\r\n"
            f"Content-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n"
            + ("Connection: close\r\n" if close else "")
            + "\r\n"
        ).encode("latin-1")
        try:
            cwriter.write(head + body)
            await cwriter.drain()
        except ConnectionError:
            pass

    async def fault_503(self, req: Message, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter,
                        expect_continue: bool) -> bool:
        if expect_continue and request_has_body(req):
            # The client waits for 100 Continue before sending the body; answer
            # the final status now and close, as RFC 9110 allows.
            await self.send_simple(cwriter, 503, "Service Unavailable", SLOWDOWN_BODY,
                                   close=True, content_type="application/xml")
            return False
        await copy_request_body(req, creader, None)  # drain it so the connection stays in sync
        await self.send_simple(cwriter, 503, "Service Unavailable", SLOWDOWN_BODY,
                               close=False, content_type="application/xml")
        return True

    @staticmethod
    def reset(cwriter: asyncio.StreamWriter) -> None:
        sock = cwriter.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        cwriter.transport.abort()

    async def stall(self, creader: asyncio.StreamReader) -> None:
        """Wait slow_seconds, or less if the client gives up and closes first."""

        async def until_eof() -> None:
            while await creader.read(COPY_CHUNK):
                pass

        try:
            await asyncio.wait_for(until_eof(), self.slow_seconds)
        except (asyncio.TimeoutError, ConnectionError):
            pass

    async def forward(self, cid: int, method: str, req: Message, creader: asyncio.StreamReader,
                      cwriter: asyncio.StreamWriter, *, slow: bool) -> tuple[int, bool]:
        """Relay one request upstream and its response back. Returns (status, keep)."""
        sent_to_client = False
        uwriter: asyncio.StreamWriter | None = None
        body_task: asyncio.Task | None = None
        try:
            try:
                ureader, uwriter = await asyncio.open_connection(self.up_host, self.up_port, limit=STREAM_LIMIT)
                uwriter.write(req.raw)
                await uwriter.drain()
            except OSError as e:
                raise UpstreamError(f"cannot reach upstream: {e}") from e

            if request_has_body(req):
                uw = uwriter

                async def relay_body() -> None:
                    try:
                        await copy_request_body(req, creader, uw)
                    except BaseException:
                        # Unblock the response reader: upstream sees EOF / we see EOF.
                        uw.close()
                        raise

                body_task = asyncio.create_task(relay_body())

            # Relay interim 1xx responses (e.g. 100 Continue), then the final head.
            while True:
                try:
                    resp = await read_head(ureader, skip_blank=False)
                except (ProtocolError, ConnectionError) as e:
                    raise UpstreamError(f"upstream response head: {e}") from e
                if resp is None:
                    raise UpstreamError("upstream closed without a response")
                status = parse_status(resp)
                if 100 <= status < 200 and status != 101:
                    cwriter.write(resp.raw)
                    await cwriter.drain()
                    sent_to_client = True
                    continue
                break

            kind = response_body_kind(method, status, resp)
            if slow:
                if body_task is not None and not body_task.done():
                    body_task.cancel()  # stall() below reads the client stream itself
                if kind == "none":
                    await self.stall(creader)
                else:
                    cwriter.write(resp.raw)
                    await cwriter.drain()
                    await self.stall(creader)
                return status, False

            cwriter.write(resp.raw)
            await cwriter.drain()
            sent_to_client = True
            keep = "close" not in resp.tokens("connection") and status != 101
            try:
                if kind == "length":
                    await copy_exact(ureader, cwriter, resp.content_length() or 0)
                elif kind == "chunked":
                    await copy_chunked(ureader, cwriter)
                elif kind == "close":
                    await copy_until_close(ureader, cwriter)
                    keep = False
            except ProtocolError as e:
                raise UpstreamError(f"upstream response body: {e}") from e

            if body_task is not None:
                if not body_task.done():
                    # Final response arrived before the client finished (or started)
                    # sending its body: the connection's framing is unknown now.
                    body_task.cancel()
                    keep = False
                try:
                    await body_task
                except (asyncio.CancelledError, Exception):
                    keep = False
            return status, keep
        except UpstreamError as e:
            self.stats["upstream_errors"] += 1
            if body_task is not None and body_task.done() and not body_task.cancelled() and body_task.exception():
                # The real cause was the client side (its body stream broke).
                raise body_task.exception() from None
            log(f"conn {cid}: {method} {req.start.split(' ')[1]}: {e}")
            if not sent_to_client and not slow:
                await self.send_simple(cwriter, 502, "Bad Gateway", f"faultproxy: {e}\n".encode(), close=True)
            return 502, False
        finally:
            if body_task is not None and not body_task.done():
                body_task.cancel()
                try:
                    await body_task
                except (asyncio.CancelledError, Exception):
                    pass
            if uwriter is not None:
                uwriter.close()


class UpstreamError(Exception):
    """The upstream connection failed before a complete response was relayed."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    p.add_argument("--upstream", required=True, help="HOST:PORT of the S3 server (e.g. moto)")
    p.add_argument("--fail-rate", type=float, required=True, help="probability in [0, 1] that a request is faulted")
    p.add_argument("--seed", type=int, default=1, help="seed of the fault RNG (default 1)")
    p.add_argument("--faults", default="503,reset,slow", help="comma-separated fault kinds used in rotation")
    p.add_argument("--slow-seconds", type=float, default=30.0, help="stall of a 'slow' fault (default 30)")
    p.add_argument("--port-file", help="write the listening port here (atomically)")
    p.add_argument("--stats-file", help="write JSON totals here after every request (atomically)")
    args = p.parse_args(argv)
    if not 0.0 <= args.fail_rate <= 1.0:
        p.error("--fail-rate must be within [0, 1]")
    faults = [f.strip() for f in args.faults.split(",") if f.strip()]
    bad = [f for f in faults if f not in FAULT_KINDS]
    if bad or not faults:
        p.error(f"--faults: unknown kind(s) {bad}; choose from {','.join(FAULT_KINDS)}")
    args.faults = faults
    host, sep, port = args.upstream.rpartition(":")
    if not sep or not port.isdigit():
        p.error("--upstream must be HOST:PORT")
    return args


async def main_async(args: argparse.Namespace) -> int:
    proxy = Proxy(args)
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", 0, limit=STREAM_LIMIT)
    port = server.sockets[0].getsockname()[1]
    proxy.write_stats()
    if args.port_file:
        atomic_write(args.port_file, f"{port}\n")
    print(f"LISTENING {port}", flush=True)
    log(f"listening on 127.0.0.1:{port}, upstream {args.upstream}, fail-rate {args.fail_rate}, "
        f"faults {','.join(args.faults)}, seed {args.seed}")

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()

    log("stopping")
    server.close()
    for task in list(proxy.tasks):
        task.cancel()
    if proxy.tasks:
        await asyncio.wait(list(proxy.tasks), timeout=5)
    await server.wait_closed()
    proxy.write_stats()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
