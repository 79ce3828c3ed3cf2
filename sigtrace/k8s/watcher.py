"""List+watch pods of this node and the EndpointSlices; hand pod_lifecycle events to a sink.

The official client does the HTTP (TLS, credentials, the request itself); what is ours is the
protocol logic around it, because an agent that runs for weeks must outlive every way an API
server can go away:
  list in pages (remember resourceVersion) -> watch from it -> on a clean end, watch again from
  the last resourceVersion (BOOKMARKs move it too) -> on 410 Gone, list again and diff -> on any
  other failure (refused connection, reset, timeout, 5xx, 429, 403) one log line per new problem
  and a retry after a capped exponential backoff with jitter, or after the server's Retry-After.
Objects that cannot be used (not JSON, no uid, a field of the wrong type) are skipped and
counted; each kind of problem is logged once, then at most once an hour with its count.
Node events keep being recorded meanwhile: the watcher only adds.

Memory is bounded by this node, not by the cluster: pods come with fieldSelector
spec.nodeName=<node>; EndpointSlices cannot be filtered by node on the server (only labels and
metadata.name/namespace are selectable), so every slice is read and only those with an endpoint
of this node stay cached (see SliceTracker); lists are read in pages of LIST_PAGE objects.
"""
from __future__ import annotations

import logging
import random
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import orjson

from .client import explain
from .translate import UNUSABLE, PodTracker, SliceTracker, pod_facts

log = logging.getLogger("sigtrace.k8s")

Sink = Callable[[dict], None]

LIST_PAGE = 500                 # objects per list page: a relist on a big cluster is not one huge body
# what one answer may hold: a watch event is one object (at most ~1.5 MB, etcd's limit); a list page
# LIST_PAGE objects of ~512 KB on average, far past a pod's usual 5-50 KB (a page of 500 pods at the
# etcd limit would not fit: it is refused and retried, never buffered). A server (or something in
# between) sending more is cut off.
MAX_WATCH_LINE = 16 << 20
MAX_LIST_BYTES = 256 << 20
READ_BYTES = 1 << 16
RETRY_AFTER_CAP_S = 300.0       # a Retry-After is honoured up to this long
REPEAT_LOG_S = 3600.0           # a problem logged once is logged again at most this often, with its count


@dataclass
class Backoff:
    """Capped exponential backoff with jitter, so a fleet of agents does not hammer a recovering
    API server all at once."""
    initial: float = 1.0
    cap: float = 60.0
    current: float = 0.0

    def next(self) -> float:
        self.current = self.initial if not self.current else min(self.cap, self.current * 2)
        return self.current * random.uniform(0.8, 1.2)

    def reset(self) -> None:
        self.current = 0.0


class Gone(Exception):
    """410: our resourceVersion was compacted away; the only cure is a fresh list."""


class WatchError(Exception):
    """An ERROR event other than 410 in a watch stream (the server gave up on it)."""

    def __init__(self, status: int | None, reason: str):
        super().__init__(f"{status} {reason}")
        self.status, self.reason = status, reason


class Malformed(Exception):
    """An object or line we cannot use: skipped, counted under `kind`."""

    def __init__(self, kind: str, detail: str = ""):
        super().__init__(kind)
        self.kind, self.detail = kind, detail


@dataclass
class Stream:
    """One list+watch target: a list function of the client, its query, and what to do with the
    objects. `keep` drops listed objects we will never need before they are held in memory."""
    name: str
    list_fn: Callable[..., Any]
    kwargs: dict[str, Any]
    on_list: Callable[[list[dict], float], list[dict]]
    on_event: Callable[[str, dict, float], list[dict]]
    keep: Callable[[dict], bool] | None = None
    relists: int = 0
    watches: int = 0
    reconnects: int = 0          # attempts to reach the API again after a failure
    errors: dict[str, int] = field(default_factory=dict)      # error kind -> count
    malformed: dict[str, int] = field(default_factory=dict)   # malformed kind -> count
    problem: str | None = None
    rv: str | None = None        # the last resourceVersion seen (None: list first)


@dataclass
class ApiWatcher:
    api: Any                              # kubernetes.client.ApiClient
    node: str
    sink: Sink
    watch_timeout_s: int = 300            # the server ends each watch after this; we re-watch
    list_timeout_s: float = 60.0          # read timeout of one list page
    backoff_initial_s: float = 1.0
    backoff_cap_s: float = 60.0
    list_page: int = LIST_PAGE
    clock: Callable[[], float] = time.time
    pods: PodTracker = field(default_factory=PodTracker)
    lacking: dict[str, str] = field(default_factory=dict)     # pod uid -> ns/name without container IDs
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _responses: list = field(default_factory=list)
    _logged: dict[tuple[str, str], tuple[float, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from kubernetes import client
        core, disc = client.CoreV1Api(self.api), client.DiscoveryV1Api(self.api)
        self.slices = SliceTracker(node=self.node, pod_names=self.pods.names)
        self.streams = [
            Stream("pods", core.list_pod_for_all_namespaces, {"field_selector": f"spec.nodeName={self.node}"},
                   self._pods_listed, self._pod_event),
            # every slice (no server-side node filter exists); only this node's endpoints are kept
            Stream("endpointslices", disc.list_endpoint_slice_for_all_namespaces, {},
                   self._slices_listed, self._slice_event, keep=self.slices.relevant),
        ]

    # ---- translation (under the lock: both streams share the pod names) ----------------
    def _emit(self, events: list[dict]) -> None:
        for ev in events:
            self.sink(ev)

    def _pods_listed(self, items: list[dict], now: float) -> list[dict]:
        for pod in items:
            try:
                self._note_ids(pod)
            except UNUSABLE:
                pass                      # resync below skips and counts it
        out = self.pods.resync(items, now, bad=self._bad(self.streams[0]))
        self._prune_lacking()
        return out

    def _pod_event(self, type_: str, pod: dict, now: float) -> list[dict]:
        gone = type_ == "DELETED"
        self._note_ids(pod, gone=gone)
        out = self.pods.update(pod, now, gone=gone)
        if gone:
            self._prune_lacking()
        return out

    def _slices_listed(self, items: list[dict], now: float) -> list[dict]:
        return self.slices.resync(items, now, bad=self._bad(self.streams[1]))

    def _bad(self, s: Stream) -> Callable[[dict, Exception], None]:
        return lambda obj, exc: self._malformed(s, Malformed(f"unusable object ({type(exc).__name__})",
                                                             str(exc)[:120]))

    def _slice_event(self, type_: str, es: dict, now: float) -> list[dict]:
        return self.slices.update(es, now, deleted=type_ == "DELETED")

    def _note_ids(self, pod: dict, gone: bool = False) -> None:
        meta = pod.get("metadata") or {}
        uid, who = meta.get("uid"), f"{meta.get('namespace')}/{meta.get('name')}"
        missing = [] if gone else pod_facts(pod)["missing_container_ids"]
        if missing and uid not in self.lacking:
            self.lacking[uid] = who
            log.info("pod %s: no container IDs yet for %s; its events keep the pod UID until the kubelet "
                     "reports them", who, ", ".join(missing))
        elif not missing and uid in self.lacking:
            del self.lacking[uid]

    def _prune_lacking(self) -> None:
        # a pod removed through a relist never passes a DELETED event: forget it here too
        for uid in [u for u in self.lacking if u not in self.pods.pods or self.pods.pods[u].removed]:
            del self.lacking[uid]

    # ---- the loop ---------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Run both list+watch loops until stop is set; never raises for API trouble."""
        threads = [threading.Thread(target=self._loop, args=(s, stop), name=f"k8s-{s.name}", daemon=True)
                   for s in self.streams]
        for t in threads:
            t.start()
        stop.wait()
        with self._lock:
            for resp in list(self._responses):
                _shutdown(resp)   # a blocked read returns now
        for t in threads:
            t.join(timeout=5)

    def _loop(self, s: Stream, stop: threading.Event) -> None:
        backoff = Backoff(self.backoff_initial_s, self.backoff_cap_s)
        s.rv = None
        while not stop.is_set():
            try:
                if s.rv is None:
                    s.rv = self._relist(s)
                    self._recovered(s, backoff)
                opened = time.monotonic()
                got = self._watch(s, stop, backoff)
                # a clean end (the server's timeoutSeconds): the watch worked; watch again from rv at once,
                # unless the server ends watches at once (a proxy cutting streams): then do not spin
                if not stop.is_set():
                    if not got and time.monotonic() - opened < 1.0:
                        stop.wait(backoff.next())
                    else:
                        self._recovered(s, backoff)
            except Gone:
                log.info("%s: resourceVersion %s expired (410 Gone); listing again", s.name, s.rv)
                s.errors["gone"] = s.errors.get("gone", 0) + 1
                if s.rv is None:
                    # the list itself was refused with 410 (an expired continue token twice): back off
                    stop.wait(backoff.next())
                s.rv = None
            except Exception as exc:  # noqa: BLE001 - every API failure is retried; the agent must live
                if stop.is_set():
                    break
                if _status(exc) == 410:
                    s.rv = None
                    continue
                kind = error_kind(exc)
                s.errors[kind] = s.errors.get(kind, 0) + 1
                wait = backoff.next()
                after = retry_after(exc)
                if after is not None:
                    # the server said when: wait that long (plus jitter, so a fleet does not return at once)
                    wait = min(RETRY_AFTER_CAP_S, after) * random.uniform(1.0, 1.2)
                self._problem(s, explain(exc, f"watching {s.name}"))
                if not stop.wait(wait):
                    s.reconnects += 1

    # ---- list -----------------------------------------------------------------------------
    def _relist(self, s: Stream) -> str | None:
        """List in pages; objects `keep` rejects are dropped page by page. -> the list's resourceVersion."""
        kept: list[dict] = []
        token: str | None = None
        rv: str | None = None
        restarted = False
        while True:
            try:
                body = self._list_page(s, token)
            except Exception as exc:  # noqa: BLE001
                if _status(exc) == 410 and token and not restarted:
                    # the continue token expired mid-list: a consistent list must start over
                    kept, token, rv, restarted = [], None, None, True
                    continue
                if _status(exc) == 410:
                    raise Gone() from None
                raise
            meta = body.get("metadata") if isinstance(body.get("metadata"), dict) else {}
            rv = rv or meta.get("resourceVersion")
            items = body.get("items") if isinstance(body.get("items"), list) else []
            for obj in items:
                try:
                    check_object(obj, s.name)
                except Malformed as bad:
                    self._malformed(s, bad)
                    continue
                if s.keep is None:
                    kept.append(obj)
                    continue
                try:
                    with self._lock:
                        keep = s.keep(obj)
                except UNUSABLE as exc:
                    self._bad(s)(obj, exc)
                    continue
                if keep:
                    kept.append(obj)
            token = meta.get("continue") or None
            if not token:
                break
        with self._lock:
            self._emit(self._translated(s, lambda: s.on_list(kept, self.clock())))
        s.relists += 1
        return rv

    def _list_page(self, s: Stream, token: str | None) -> dict:
        kwargs = dict(s.kwargs, limit=self.list_page)
        if token:
            kwargs["_continue"] = token
        resp = s.list_fn(_preload_content=False, _request_timeout=(10, self.list_timeout_s), **kwargs)
        try:
            data = _capped_body(resp, MAX_LIST_BYTES, 3 * self.list_timeout_s)
        except Malformed:
            resp.close()                 # not read to its end: not back to the pool
            raise
        finally:
            resp.release_conn()
        try:
            body = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise Malformed("list answer is not JSON", data[:120].decode(errors="replace")) from None
        if not isinstance(body, dict):
            raise Malformed("list answer is not an object")
        return body

    # ---- watch ----------------------------------------------------------------------------
    def _watch(self, s: Stream, stop: threading.Event, backoff: Backoff) -> int:
        """One watch request from s.rv until the server ends it (s.rv follows every event). -> lines read."""
        resp = s.list_fn(watch=True, resource_version=s.rv, allow_watch_bookmarks=True,
                         timeout_seconds=self.watch_timeout_s, _preload_content=False,
                         _request_timeout=(10, self.watch_timeout_s + 30), **s.kwargs)
        with self._lock:
            self._responses.append(resp)
        s.watches += 1
        got = 0
        try:
            if stop.is_set():
                return got
            # a stream the server keeps open past its own timeout (slow drip) is ended here and watched anew
            deadline = time.monotonic() + self.watch_timeout_s + 60
            for line in capped_lines(resp, MAX_WATCH_LINE, deadline):
                if stop.is_set():
                    break
                if line is None:
                    self._malformed(s, Malformed(f"watch line longer than {MAX_WATCH_LINE >> 20} MiB"))
                    continue
                if not line:
                    continue
                got += 1
                try:
                    type_, obj = parse_watch_line(line, s.name)
                except Malformed as bad:
                    self._malformed(s, bad)
                    continue
                new_rv = obj["metadata"].get("resourceVersion")       # (parse_watch_line: a dict)
                if type_ in ("ADDED", "MODIFIED", "DELETED"):
                    with self._lock:
                        self._emit(self._translated(s, lambda: s.on_event(type_, obj, self.clock())))
                if isinstance(new_rv, str) and new_rv:
                    s.rv = new_rv        # BOOKMARKs only move this
                # the stream works (an event handled): a later failure starts its backoff from the beginning
                self._recovered(s, backoff)
        finally:
            with self._lock:
                self._responses.remove(resp)
            try:
                resp.close()             # maybe not read to its end (stop, deadline): not back to the pool
                resp.release_conn()
            except Exception:  # noqa: BLE001 - a reset connection may fail to return to the pool
                pass
        return got

    def _translated(self, s: Stream, translate: Callable[[], list[dict]]) -> list[dict]:
        """Translation of well-formed JSON can still fail on a field of the wrong type: skip the object."""
        try:
            return translate()
        except UNUSABLE as exc:
            self._bad(s)(None, exc)
            return []

    # ---- problems ---------------------------------------------------------------------------
    def _malformed(self, s: Stream, bad: Malformed) -> None:
        """Count; log the first of each kind, then at most once per REPEAT_LOG_S with the count since."""
        s.malformed[bad.kind] = s.malformed.get(bad.kind, 0) + 1
        key = (s.name, bad.kind)
        now = time.monotonic()
        last = self._logged.get(key)
        if last is None:
            self._logged[key] = (now, s.malformed[bad.kind])
            detail = f" ({bad.detail})" if bad.detail else ""
            log.warning("%s: skipped a malformed object: %s%s; counted in meta.json (kubernetes.malformed), "
                        "further ones are logged at most hourly", s.name, bad.kind, detail)
        elif now - last[0] >= REPEAT_LOG_S:
            self._logged[key] = (now, s.malformed[bad.kind])
            log.warning("%s: %d more malformed objects (%s) in the last hour", s.name,
                        s.malformed[bad.kind] - last[1], bad.kind)

    def _problem(self, s: Stream, line: str) -> None:
        if line != s.problem:   # one line per new problem, not one per retry
            s.problem = line
            log.warning("%s", line)

    def _recovered(self, s: Stream, backoff: Backoff) -> None:
        if s.problem:
            log.warning("%s: API access restored", s.name)
            s.problem = None
        backoff.reset()

    def summary(self) -> dict[str, Any]:
        """For meta.json, status.json and metrics: whether API data is complete, which pods lack it,
        what went wrong and how often, and how big the caches are."""
        with self._lock:
            cache = {"pods": len(self.pods.pods), "pods_removed": len(self.pods.removed_at),
                     "endpointslices": len(self.slices.slices),
                     "endpoints": sum(len(v) for v in self.slices.slices.values())}
        return {
            "node": self.node,
            "problems": {s.name: s.problem for s in self.streams if s.problem},
            "pods_without_container_ids": sorted(self.lacking.values()),
            "lists": {s.name: s.relists for s in self.streams},
            "watches": {s.name: s.watches for s in self.streams},
            "reconnects": {s.name: s.reconnects for s in self.streams},
            "errors": {s.name: dict(s.errors) for s in self.streams if s.errors},
            "malformed": {s.name: dict(s.malformed) for s in self.streams if s.malformed},
            "cache": cache,
        }


# ---- helpers -------------------------------------------------------------------------------
def start_watcher(node: str, kubeconfig: str | None, context: str | None, sink: Sink,
                  stop: threading.Event) -> tuple[ApiWatcher | None, threading.Thread | None]:
    """An ApiWatcher for node running in a daemon thread until stop is set; (None, None) without
    credentials (logged: the node's kernel events are still worth recording)."""
    from .client import ClusterProblem, api_client
    try:
        api = api_client(kubeconfig, context)
    except ClusterProblem as exc:
        log.warning("%s; recording node events without pod names", exc)
        return None, None
    watcher = ApiWatcher(api, node, sink)
    t = threading.Thread(target=watcher.run, args=(stop,), name="k8s-watcher", daemon=True)
    t.start()
    return watcher, t


def capped_lines(resp: Any, cap: int, deadline: float | None = None) -> Iterator[str | None]:
    """A streamed response's lines (UTF-8, invalid bytes replaced), read READ_BYTES at a time;
    None in place of a line longer than cap, which is read past and never held. Ends at deadline
    (time.monotonic()), lines or not: a server may drip bytes forever."""
    buf = bytearray()
    skipping = False
    for seg in resp.stream(amt=READ_BYTES, decode_content=False):
        if deadline is not None and time.monotonic() > deadline:
            return
        seg = seg.encode() if isinstance(seg, str) else seg
        start = 0
        while True:
            nl = seg.find(b"\n", start)
            if nl < 0:
                if not skipping:
                    buf += seg[start:]
                    if len(buf) > cap:
                        buf.clear()
                        skipping = True
                break
            if skipping:
                skipping = False
                yield None
            else:
                buf += seg[start:nl]
                yield None if len(buf) > cap else buf.decode("utf-8", errors="replace")
                buf.clear()
            start = nl + 1
    if skipping:
        yield None
    elif buf:
        yield None if len(buf) > cap else buf.decode("utf-8", errors="replace")


def _capped_body(resp: Any, cap: int, deadline_s: float) -> bytes:
    """A whole response body, Malformed past cap bytes or deadline_s seconds (a server that drips)."""
    chunks, size = [], 0
    until = time.monotonic() + deadline_s
    for seg in resp.stream(amt=READ_BYTES, decode_content=True):
        size += len(seg)
        if size > cap:
            raise Malformed(f"list answer larger than {cap >> 20} MiB")
        if time.monotonic() > until:
            raise Malformed(f"list answer took longer than {deadline_s:.0f} s")
        chunks.append(seg)
    return b"".join(chunks)


def parse_watch_line(line: str, what: str) -> tuple[str, dict]:
    """One watch line -> (type, object); ERROR 410 raises Gone, other ERRORs WatchError."""
    try:
        ev = orjson.loads(line)
    except orjson.JSONDecodeError:
        raise Malformed("watch line is not JSON", line[:80]) from None
    if not isinstance(ev, dict) or not isinstance(ev.get("type"), str) or not isinstance(ev.get("object"), dict):
        raise Malformed("watch event without type or object")
    type_, obj = ev["type"], ev["object"]
    if type_ == "ERROR":
        code = obj.get("code")
        if code == 410:
            raise Gone()
        raise WatchError(code if isinstance(code, int) else None, f"{obj.get('reason')}: {obj.get('message')}")
    if type_ in ("ADDED", "MODIFIED", "DELETED"):
        check_object(obj, what)
    elif not isinstance(obj.get("metadata"), dict):          # a BOOKMARK moves the resourceVersion only
        raise Malformed(f"{type_[:20]} event without metadata")
    return type_, obj


def check_object(obj: Any, what: str) -> None:
    """What every translated object needs: metadata with a uid and a name (strings)."""
    if not isinstance(obj, dict):
        raise Malformed("object is not a JSON object")
    meta = obj.get("metadata")
    if not isinstance(meta, dict) or not isinstance(meta.get("uid"), str) or not isinstance(meta.get("name"), str):
        raise Malformed("object without metadata.uid/name")
    if what == "pods":
        spec, status = obj.get("spec"), obj.get("status")
        if not isinstance(spec or {}, dict) or not isinstance(status or {}, dict):
            raise Malformed("pod spec/status is not an object")
    elif not isinstance(obj.get("endpoints") or [], list):
        raise Malformed("endpointslice endpoints is not a list")


def error_kind(exc: BaseException) -> str:
    """A small fixed vocabulary (metric labels must stay bounded): http_<code>, refused, timeout, ..."""
    status = _status(exc)
    if isinstance(exc, WatchError):
        return f"watch_error_{status}" if status else "watch_error"
    if isinstance(exc, Malformed):
        return "malformed_list"
    if status:
        return f"http_{status}"
    name = type(exc).__name__
    text = str(exc)
    if "Timeout" in name or "timed out" in text:
        return "timeout"
    if name in ("ProtocolError", "IncompleteRead", "InvalidChunkLength") or "Connection broken" in text:
        return "stream_broken"
    if "refused" in text.lower():
        return "refused"
    return "unreachable"


def retry_after(exc: BaseException) -> float | None:
    """Retry-After in seconds from an API error (delta-seconds form; what the API server sends)."""
    headers = getattr(exc, "headers", None)
    if not headers:
        return None
    value = headers.get("Retry-After") if hasattr(headers, "get") else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _shutdown(resp: Any) -> None:
    """Shut a watch response's socket down so the thread blocked reading it wakes up."""
    sock = getattr(getattr(resp, "connection", None), "sock", None)
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _status(exc: BaseException) -> int | None:
    status = getattr(exc, "status", None)
    return status if isinstance(status, int) and status else None

