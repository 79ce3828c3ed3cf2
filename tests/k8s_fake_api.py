"""A small Kubernetes API server for tests: real socket on 127.0.0.1, real HTTP/1.1.

It speaks the parts of the API protocol the agent and kubectl-sigtrace use:
  - list: GET <collection> -> {"kind": "<Kind>List", "metadata": {"resourceVersion"}, "items"}
    with fieldSelector spec.nodeName=X and labelSelector k=v[,k=v] honoured;
  - watch: GET <collection>?watch=true&resourceVersion=N -> chunked stream of
    {"type": ADDED|MODIFIED|DELETED|BOOKMARK|ERROR, "object"} lines, one chunk per event,
    ERROR 410 "Expired" when N is older than the compaction point (what etcd compaction does),
    BOOKMARK when asked (allowWatchBookmarks=true), a clean end at timeoutSeconds;
  - create (POST), get, replace (PUT), delete on any path; 403 Status for denied resources;
  - list pagination: limit and continue (a continue token older than the compaction point: 410);
  - drop_watches(): cut every open watch mid-stream (no terminating chunk), like a dropped connection;
  - go_down() / come_back(): the API server goes away (every connection reset, the port refuses
    connections) and returns on the same port, its history compacted as a restarted one's would be;
  - fail(plural, status, retry_after=...): the next requests get an error Status (429 with
    Retry-After, 5xx) instead of an answer; hang.add(plural): requests get no answer until removed;
  - inject_raw(plural, line): a raw watch line (malformed JSON, or an object of the wrong shape).
Objects are stored as plain dicts; the server stamps resourceVersion and uid.
"""
from __future__ import annotations

import base64
import bisect
import json
import re
import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest

_PATH = re.compile(r"^/(?:api/v1|apis/(?P<group>[^/]+)/(?P<version>[^/]+))(?P<rest>(?:/[^/]+)*)$")
KINDS = {"pods": "Pod", "endpointslices": "EndpointSlice", "namespaces": "Namespace",
         "serviceaccounts": "ServiceAccount", "clusterroles": "ClusterRole",
         "clusterrolebindings": "ClusterRoleBinding", "daemonsets": "DaemonSet", "nodes": "Node"}


def parse_path(path: str) -> tuple[str, str | None, str, str | None, str | None] | None:
    """-> (api prefix, namespace, plural, name, subresource)."""
    m = _PATH.match(path)
    if not m:
        return None
    prefix = f"/apis/{m['group']}/{m['version']}" if m["group"] else "/api/v1"
    parts = [p for p in m["rest"].split("/") if p]
    if not parts:
        return None
    if parts[0] == "namespaces" and len(parts) >= 3:
        return prefix, parts[1], parts[2], parts[3] if len(parts) > 3 else None, parts[4] if len(parts) > 4 else None
    return prefix, None, parts[0], parts[1] if len(parts) > 1 else None, parts[2] if len(parts) > 2 else None


def status_body(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


def _field(obj: dict, dotted: str):
    for part in dotted.split("."):
        obj = (obj or {}).get(part) if isinstance(obj, dict) else None
    return obj


def matches(obj: dict, field_selector: str | None, label_selector: str | None) -> bool:
    for sel, getter in ((field_selector, lambda k: _field(obj, k)),
                        (label_selector, lambda k: ((obj.get("metadata") or {}).get("labels") or {}).get(k))):
        for term in filter(None, (sel or "").split(",")):
            key, _, want = term.partition("=")
            if str(getter(key.rstrip("="))) != want.lstrip("="):
                return False
    return True


class FakeApi:
    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.rv = 100
        self.objects: dict[tuple, dict] = {}          # (prefix, plural, ns, name) -> object
        self.log: list[tuple[int, tuple, str, dict]] = []   # (rv, (prefix, plural), type, object)
        self.compacted = 0                            # watches from rv < this get 410
        self.denied: set[str] = set()                 # plurals answered with 403
        self.requests: list[tuple[str, str]] = []     # (method, path?query) for assertions
        self.watch_generation = 0                     # bumped by drop_watches()
        self.bookmarks: list[int] = []
        self.exec_handler = None                      # (ns, pod, command) -> (stdout, stderr, exit code), or
                                                      # a function given write(channel, bytes) that streams
        self.execs: list[tuple[str, str, list[str]]] = []
        self.times: list[float] = []                  # monotonic time of each entry of requests
        self.faults: list[tuple[str, int, str | None, int]] = []   # (plural, status, Retry-After, count left)
        self.hang: set[str] = set()                   # plurals whose requests get no answer for now
        self.down = False
        self.conns: set[socket.socket] = set()        # open client connections, reset by go_down()
        self.server = self._serve(0)

    def _serve(self, port: int) -> ThreadingHTTPServer:
        server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        server.daemon_threads = True
        server.handle_error = lambda request, address: None   # resets are what go_down() is for
        self.thread = threading.Thread(target=server.serve_forever, daemon=True)
        return server

    # ---- test control ---------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> "FakeApi":
        self.thread.start()
        return self

    def close(self) -> None:
        with self.cond:
            self.watch_generation += 1
            self.hang.clear()
            self.cond.notify_all()
        if not self.down:
            self.server.shutdown()
            self.server.server_close()

    def go_down(self) -> None:
        """The API server goes away: open connections are reset and the port refuses new ones."""
        with self.cond:
            self.down = True
            self.watch_generation += 1
            self.cond.notify_all()
            conns = list(self.conns)
        self.server.shutdown()
        self.server.server_close()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def come_back(self, compact: bool = True) -> None:
        """Serve again on the same port; a restarted API server's watch cache starts at its current
        resourceVersion, so older watches get 410 Gone (compact=True)."""
        port = self.server.server_address[1]
        if compact:
            self.compact()
        self.server = self._serve(port)
        with self.cond:
            self.down = False
        self.thread.start()

    def fail(self, plural: str, status: int, retry_after: str | None = None, count: int = 1) -> None:
        """The next `count` requests for `plural` (list or watch) get `status` with a Status body."""
        with self.cond:
            self.faults.append((plural, status, retry_after, count))

    def inject_raw(self, plural: str, line: bytes, prefix: str | None = None) -> None:
        """A raw line for the watches of `plural` (sent as is, one chunk)."""
        prefix = prefix or ("/apis/discovery.k8s.io/v1" if plural == "endpointslices" else "/api/v1")
        with self.cond:
            self.rv += 1
            self.log.append((self.rv, (prefix, plural), "RAW", {"raw": line, "metadata": {}}))
            self.cond.notify_all()

    def request_times(self, plural: str, watch: bool | None = None) -> list[float]:
        with self.cond:
            return [t for (m, p), t in zip(self.requests, self.times)
                    if f"/{plural}" in p and (watch is None or ("watch=true" in p) == watch)]

    def apply(self, type_: str, obj: dict, prefix: str | None = None, plural: str | None = None) -> int:
        """Store an object change and publish it to watchers: ADDED, MODIFIED or DELETED."""
        obj = json.loads(json.dumps(obj))
        plural = plural or {v: k for k, v in KINDS.items()}[obj["kind"]]
        prefix = prefix or ("/api/v1" if obj.get("apiVersion", "v1") == "v1" else f"/apis/{obj['apiVersion']}")
        meta = obj.setdefault("metadata", {})
        key = (prefix, plural, meta.get("namespace"), meta["name"])
        with self.cond:
            self.rv += 1
            meta["resourceVersion"] = str(self.rv)
            meta.setdefault("uid", str(uuid.uuid4()))
            if type_ == "DELETED":
                self.objects.pop(key, None)
            else:
                self.objects[key] = obj
            self.log.append((self.rv, (prefix, plural), type_, obj))
            self.cond.notify_all()
            return self.rv

    def compact(self) -> None:
        """Forget history: every watch from an older resourceVersion now gets 410 Gone."""
        with self.cond:
            self.compacted = self.rv + 1
            self.rv += 1

    def bookmark(self) -> None:
        with self.cond:
            self.rv += 1
            self.bookmarks.append(self.rv)
            self.cond.notify_all()

    def drop_watches(self) -> None:
        with self.cond:
            self.watch_generation += 1
            self.cond.notify_all()

    def watch_count(self, plural: str) -> int:
        return sum(1 for m, p in self.requests if m == "GET" and f"/{plural}?" in p and "watch=true" in p)

    def list_count(self, plural: str) -> int:
        return sum(1 for m, p in self.requests if m == "GET" and f"/{plural}" in p and "watch=true" not in p)

    # ---- HTTP -----------------------------------------------------------------------------
    def _handler(self):
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep pytest output clean
                pass

            def setup(self) -> None:
                super().setup()
                with api.cond:
                    api.conns.add(self.connection)

            def finish(self) -> None:
                with api.cond:
                    api.conns.discard(self.connection)
                try:
                    super().finish()
                except OSError:
                    pass

            def _send_status(self, code: int, reason: str, message: str, headers: dict | None = None) -> None:
                data = json.dumps(status_body(code, reason, message)).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def _send_json(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> dict:
                n = int(self.headers.get("Content-Length") or 0)
                return json.loads(self.rfile.read(n) or b"{}")

            def _route(self):
                url = urlparse(self.path)
                with api.cond:
                    api.requests.append((self.command, self.path))
                    api.times.append(time.monotonic())
                parsed = parse_path(url.path)
                if parsed is None:
                    self._send_json(404, status_body(404, "NotFound", f"no route {url.path}"))
                    return None
                with api.cond:
                    while parsed[2] in api.hang and not api.down:
                        api.cond.wait(0.1)         # a server that accepted the request and stalls
                    if api.down:
                        self.close_connection = True
                        return None
                    fault = next((i for i, f in enumerate(api.faults) if f[0] == parsed[2]), None)
                    if fault is not None:
                        plural, code, retry_after, left = api.faults[fault]
                        if left > 1:
                            api.faults[fault] = (plural, code, retry_after, left - 1)
                        else:
                            del api.faults[fault]
                if fault is not None:
                    reason = {429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable",
                              504: "Timeout"}.get(code, "InternalError")
                    self._send_status(code, reason, f"injected {code} for {plural}",
                                      {"Retry-After": retry_after} if retry_after is not None else None)
                    return None
                if parsed[2] in api.denied:
                    self._send_json(403, status_body(403, "Forbidden",
                                    f'{parsed[2]} is forbidden: User "system:serviceaccount:sigtrace:sigtrace-agent" '
                                    f'cannot {self.command.lower()} resource "{parsed[2]}"'))
                    return None
                return parsed, {k: v[-1] for k, v in parse_qs(url.query).items()}

            def do_GET(self) -> None:
                routed = self._route()
                if not routed:
                    return
                (prefix, ns, plural, name, sub), q = routed
                if sub == "exec":
                    self._exec(ns, name, self.path)
                    return
                if name:
                    obj = api.objects.get((prefix, plural, ns, name))
                    if obj is None:
                        self._send_json(404, status_body(404, "NotFound", f'{plural} "{name}" not found'))
                    else:
                        self._send_json(200, obj)
                    return
                if q.get("watch") == "true":
                    self._watch(prefix, ns, plural, q)
                    return
                offset, rv = 0, None
                if q.get("continue"):
                    token = json.loads(base64.b64decode(q["continue"]))
                    offset, rv = token["offset"], token["rv"]
                with api.cond:
                    if rv is not None and rv < api.compacted:
                        self._send_json(410, status_body(410, "Expired", "The provided continue parameter is too "
                                                         "old to display a consistent list result."))
                        return
                    items = [o for (p, pl, n, _), o in sorted(api.objects.items(), key=lambda kv: str(kv[0]))
                             if p == prefix and pl == plural and (ns is None or n == ns)
                             and matches(o, q.get("fieldSelector"), q.get("labelSelector"))]
                    rv = api.rv if rv is None else rv
                meta = {"resourceVersion": str(rv)}
                limit = int(q.get("limit") or 0)
                if limit:
                    page = items[offset:offset + limit]
                    if offset + limit < len(items):
                        meta["continue"] = base64.b64encode(json.dumps({"offset": offset + limit,
                                                                        "rv": rv}).encode()).decode()
                        meta["remainingItemCount"] = len(items) - offset - limit
                    items = page
                self._send_json(200, {"kind": KINDS.get(plural, "Object") + "List",
                                      "apiVersion": "v1" if prefix == "/api/v1" else prefix[len("/apis/"):],
                                      "metadata": meta, "items": items})

            def _chunk(self, line: dict) -> None:
                data = (json.dumps(line) + "\n").encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()

            def _watch(self, prefix, ns, plural, q) -> None:
                since = int(q.get("resourceVersion") or 0)
                deadline = time.monotonic() + float(q.get("timeoutSeconds") or 3600)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                kind = KINDS.get(plural, "Object")
                with api.cond:
                    if since and since < api.compacted:
                        self._chunk({"type": "ERROR", "object": status_body(
                            410, "Expired", f"too old resource version: {since} ({api.compacted})")})
                        self.wfile.write(b"0\r\n\r\n")
                        return
                    gen = api.watch_generation
                    sent = since
                    opened_rv = api.rv          # RAW lines go to watches open when injected, never replayed
                    pos = bisect.bisect_right([e[0] for e in api.log], since)   # the log is in rv order
                    while True:
                        new, pos = api.log[pos:], len(api.log)
                        for rv, coll, type_, obj in new:
                            if type_ == "RAW":
                                if rv <= opened_rv or coll != (prefix, plural):
                                    continue
                                data = obj["raw"] + b"\n"
                                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                                self.wfile.flush()
                            elif rv > sent and coll == (prefix, plural) and \
                                    (ns is None or obj["metadata"].get("namespace") == ns) and \
                                    matches(obj, q.get("fieldSelector"), q.get("labelSelector")):
                                self._chunk({"type": type_, "object": obj})
                        bms = [b for b in api.bookmarks if b > sent]
                        if bms and q.get("allowWatchBookmarks") == "true":
                            self._chunk({"type": "BOOKMARK", "object": {
                                "kind": kind, "apiVersion": "v1" if prefix == "/api/v1" else prefix[len("/apis/"):],
                                "metadata": {"resourceVersion": str(bms[-1])}}})
                        sent = api.rv
                        left = deadline - time.monotonic()
                        if left <= 0:
                            self.wfile.write(b"0\r\n\r\n")   # the server's timeoutSeconds: a clean end
                            return
                        api.cond.wait(min(left, 0.5))
                        if api.watch_generation != gen:
                            # dropped connection: half a chunk, then the socket closes
                            try:
                                self.wfile.write(b"40\r\n{\"type\":\"MODIF")
                                self.wfile.flush()
                            except OSError:
                                pass               # go_down() reset it already
                            self.close_connection = True
                            return

            def _exec(self, ns, name, path) -> None:
                from k8s_fake_ws import serve_exec
                serve_exec(self, api, ns, name, path)

            def do_POST(self) -> None:
                routed = self._route()
                if not routed:
                    return
                (prefix, ns, plural, name, _), q = routed
                body = self._body()
                meta = body.setdefault("metadata", {})
                if ns:
                    meta["namespace"] = ns
                if (prefix, plural, meta.get("namespace"), meta["name"]) in api.objects:
                    self._send_json(409, status_body(409, "AlreadyExists", f'{plural} "{meta["name"]}" already exists'))
                    return
                api.apply("ADDED", body, prefix, plural)
                self._send_json(201, api.objects[(prefix, plural, meta.get("namespace"), meta["name"])])

            def do_PUT(self) -> None:
                routed = self._route()
                if not routed:
                    return
                (prefix, ns, plural, name, _), q = routed
                if (prefix, plural, ns, name) not in api.objects:
                    self._send_json(404, status_body(404, "NotFound", f'{plural} "{name}" not found'))
                    return
                body = self._body()
                body.setdefault("metadata", {})["uid"] = api.objects[(prefix, plural, ns, name)]["metadata"]["uid"]
                api.apply("MODIFIED", body, prefix, plural)
                self._send_json(200, api.objects[(prefix, plural, ns, name)])

            def do_DELETE(self) -> None:
                routed = self._route()
                if not routed:
                    return
                (prefix, ns, plural, name, _), q = routed
                obj = api.objects.get((prefix, plural, ns, name))
                if obj is None:
                    self._send_json(404, status_body(404, "NotFound", f'{plural} "{name}" not found'))
                    return
                api.apply("DELETED", obj, prefix, plural)
                self._send_json(200, status_body(200, "", "deleted") | {"status": "Success"})

        return Handler


@pytest.fixture
def fake_api():
    """A started FakeApi on 127.0.0.1, closed after the test."""
    api = FakeApi().start()
    yield api
    api.close()
