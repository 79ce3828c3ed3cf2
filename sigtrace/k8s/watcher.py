"""List+watch pods of this node and all EndpointSlices; hand pod_lifecycle events to a sink.

A thin loop over the official client (kubernetes.watch.Watch does the streaming, line
splitting and resourceVersion bookkeeping, BOOKMARKs included); what is ours is the
protocol logic around it:
  list (remember resourceVersion) -> watch from it -> on a clean end, watch again from the
  last resourceVersion -> on 410 Gone, list again and diff -> on any other failure (no
  route, dropped connection, 5xx, 403), one log line per new problem and retry with
  exponential backoff. Node events keep being recorded meanwhile: the watcher only adds.
"""
from __future__ import annotations

import json
import logging
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from .client import explain
from .translate import PodTracker, SliceTracker, pod_facts

log = logging.getLogger("sigtrace.k8s")

Sink = Callable[[dict], None]


@dataclass
class Backoff:
    """Exponential backoff with jitter, so a fleet of agents does not hammer a recovering API server."""
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


@dataclass
class Stream:
    """One list+watch target: a list function of the client and its query."""
    name: str
    list_fn: Callable[..., Any]
    kwargs: dict[str, Any]
    on_list: Callable[[list[dict], float], list[dict]]
    on_event: Callable[[str, dict, float], list[dict]]
    relists: int = 0
    watches: int = 0
    problem: str | None = None


@dataclass
class ApiWatcher:
    api: Any                              # kubernetes.client.ApiClient
    node: str
    sink: Sink
    watch_timeout_s: int = 300            # the server ends each watch after this; we re-watch
    backoff_initial_s: float = 1.0
    backoff_cap_s: float = 60.0
    clock: Callable[[], float] = time.time
    pods: PodTracker = field(default_factory=PodTracker)
    lacking: dict[str, str] = field(default_factory=dict)     # pod uid -> ns/name without container IDs
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _watches: list = field(default_factory=list)

    def __post_init__(self) -> None:
        from kubernetes import client
        core, disc = client.CoreV1Api(self.api), client.DiscoveryV1Api(self.api)
        self.slices = SliceTracker(node=self.node, pod_names=self.pods.names)
        self.streams = [
            Stream("pods", core.list_pod_for_all_namespaces, {"field_selector": f"spec.nodeName={self.node}"},
                   self._pods_listed, self._pod_event),
            # all slices: a pod's Services are not known up front; endpoints are filtered to our pods
            Stream("endpointslices", disc.list_endpoint_slice_for_all_namespaces, {},
                   self.slices.resync, self._slice_event),
        ]

    # ---- translation (under the lock: both streams share the pod names) ----------------
    def _emit(self, events: list[dict]) -> None:
        for ev in events:
            self.sink(ev)

    def _pods_listed(self, items: list[dict], now: float) -> list[dict]:
        for pod in items:
            self._note_ids(pod)
        return self.pods.resync(items, now)

    def _pod_event(self, type_: str, pod: dict, now: float) -> list[dict]:
        self._note_ids(pod, gone=type_ == "DELETED")
        return self.pods.update(pod, now, gone=type_ == "DELETED")

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

    # ---- the loop ---------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Run both list+watch loops until stop is set; never raises for API trouble."""
        threads = [threading.Thread(target=self._loop, args=(s, stop), name=f"k8s-{s.name}", daemon=True)
                   for s in self.streams]
        for t in threads:
            t.start()
        stop.wait()
        with self._lock:
            for w in list(self._watches):
                w.stop()   # shuts the socket down so a blocked read returns now
        for t in threads:
            t.join(timeout=5)

    def _loop(self, s: Stream, stop: threading.Event) -> None:
        from kubernetes import watch

        backoff = Backoff(self.backoff_initial_s, self.backoff_cap_s)
        rv: str | None = None
        while not stop.is_set():
            try:
                if rv is None:
                    items, rv = self._list(s)
                    with self._lock:
                        self._emit(s.on_list(items, self.clock()))
                    s.relists += 1
                    self._recovered(s, backoff)
                # return_type "object": Watch hands dicts over untouched but still tracks resourceVersion
                w = watch.Watch(return_type="object")
                with self._lock:
                    self._watches.append(w)
                s.watches += 1
                opened, got = time.monotonic(), 0
                try:
                    for ev in w.stream(s.list_fn, resource_version=rv, allow_watch_bookmarks=True,
                                       timeout_seconds=self.watch_timeout_s,
                                       _request_timeout=(10, self.watch_timeout_s + 30), **s.kwargs):
                        if stop.is_set():
                            break
                        self._recovered(s, backoff)
                        got += 1
                        if ev["type"] in ("ADDED", "MODIFIED", "DELETED"):
                            with self._lock:
                                self._emit(s.on_event(ev["type"], ev["raw_object"], self.clock()))
                        rv = w.resource_version or rv    # BOOKMARKs only move this
                finally:
                    with self._lock:
                        self._watches.remove(w)
                rv = w.resource_version or rv
                # a clean end (the server's timeoutSeconds): the watch worked; watch again from rv at once,
                # unless the server ends watches at once (a proxy cutting streams): then do not spin
                if not stop.is_set():
                    if not got and time.monotonic() - opened < 1.0:
                        stop.wait(backoff.next())
                    else:
                        self._recovered(s, backoff)
            except Exception as exc:  # noqa: BLE001 - every API failure is retried; the agent must live
                if _status(exc) == 410 or isinstance(exc, Gone):
                    log.info("%s: resourceVersion %s expired (410 Gone); listing again", s.name, rv)
                    rv = None
                    continue
                if stop.is_set():
                    break
                self._problem(s, explain(exc, f"watching {s.name}"))
                stop.wait(backoff.next())

    def _list(self, s: Stream) -> tuple[list[dict], str]:
        resp = s.list_fn(_preload_content=False, _request_timeout=(10, 60), **s.kwargs)
        try:
            status = getattr(resp, "status", 200)
            data = resp.data if hasattr(resp, "data") and resp.data is not None else resp.read()
        finally:
            getattr(resp, "release_conn", lambda: None)()
        if status == 410:
            raise Gone()
        if not 200 <= status <= 299:
            from kubernetes.client.exceptions import ApiException
            raise ApiException(status=status, reason=_reason(data))
        body = json.loads(data)
        return body.get("items") or [], (body.get("metadata") or {}).get("resourceVersion")

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
        """For meta.json: whether API data is complete, and which pods lack it."""
        return {
            "node": self.node,
            "problems": {s.name: s.problem for s in self.streams if s.problem},
            "pods_without_container_ids": sorted(self.lacking.values()),
            "lists": {s.name: s.relists for s in self.streams},
            "watches": {s.name: s.watches for s in self.streams},
        }


def _status(exc: BaseException) -> int | None:
    return getattr(exc, "status", None)


def _reason(data: bytes) -> str:
    try:
        body = json.loads(data)
        return f"{body.get('reason')}: {body.get('message')}"
    except (ValueError, AttributeError):
        return (data or b"")[:200].decode(errors="replace")
