"""Prometheus metrics of `sigtrace agent` (--metrics-address HOST:PORT; off unless set).

Values come from AgentHealth.snapshot, which the recording thread replaces every second, so a
scrape never touches the kernel backend's maps from the server's thread. Counters only where a
rate is wanted: Prometheus computes events/s with rate(sigtrace_events_total[1m]).

The endpoint is read-only: GET and HEAD are answered, every other method gets 405.
"""
from __future__ import annotations

import socket
import sys
import threading
from socketserver import ThreadingMixIn
from typing import Any, Iterator
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from .. import __version__
from ..errors import UsageProblem


def parse_address(value: str) -> tuple[str, int]:
    """'HOST:PORT', '[::1]:PORT' or ':PORT' (every IPv4 address) -> (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:      # 0: any free port (logged)
        raise UsageProblem(f"--metrics-address {value!r}: expected HOST:PORT, e.g. 0.0.0.0:9464 or 127.0.0.1:9464")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


class AgentCollector:
    """A prometheus_client collector over AgentHealth.snapshot."""

    def __init__(self, health: Any):
        self.health = health

    def describe(self) -> list:
        return []           # families depend on the snapshot (labels); collect() is cheap

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily

        snap = self.health.snapshot
        k8s = snap.get("kubernetes") or {}
        yield InfoMetricFamily("sigtrace_build", "sigtrace version and the recorder backend in use",
                               value={"version": __version__, "backend": str(snap.get("backend") or ""),
                                      "python": ".".join(map(str, sys.version_info[:3]))})
        g = GaugeMetricFamily("sigtrace_recording", "1 while the agent records (probes attached, files open)")
        g.add_metric([], 1.0 if snap.get("recording") else 0.0)
        yield g
        c = CounterMetricFamily("sigtrace_events", "Events recorded, by kind", labels=["kind"])
        for kind, n in sorted((snap.get("events_by_kind") or {}).items()):
            c.add_metric([kind], n)
        yield c
        c = CounterMetricFamily("sigtrace_lost_events", "Events the kernel could not hand over (ring full), by probe",
                                labels=["probe"])
        for probe, n in sorted((snap.get("lost_by_probe") or {}).items()):
            c.add_metric([probe], n)
        yield c
        if snap.get("armed_pods") is not None:
            g = GaugeMetricFamily("sigtrace_armed_pods", "Pods stopping now, whose TCP detail is recorded")
            g.add_metric([], snap["armed_pods"])
            yield g
        if snap.get("disk_used_bytes") is not None:
            g = GaugeMetricFamily("sigtrace_disk_used_bytes", "Bytes allocated under the output directory (du)")
            g.add_metric([], snap["disk_used_bytes"])
            yield g
        c = CounterMetricFamily("sigtrace_reports_written", "Live per-pod reports written, by verdict "
                                "(a report with two verdicts counts under both; none: a clean stop)",
                                labels=["verdict"])
        for verdict, n in sorted((snap.get("reports_by_verdict") or {}).items()):
            c.add_metric([verdict], n)
        yield c
        last = snap.get("last_report")
        if last:
            g = GaugeMetricFamily("sigtrace_last_report_timestamp_seconds", "When the last live report was written")
            g.add_metric([], last["at"])
            yield g
        for name, key, help_ in (
                ("sigtrace_api_watch_reconnects", "reconnects", "Attempts to reach the API server again after a failure"),
                ("sigtrace_api_relists", "lists", "Full lists (at start, and after 410 Gone)"),
                ("sigtrace_api_watches", "watches", "Watch requests opened")):
            c = CounterMetricFamily(name, help_, labels=["resource"])
            for res, n in sorted((k8s.get(key) or {}).items()):
                c.add_metric([res], n)
            yield c
        c = CounterMetricFamily("sigtrace_api_errors", "API failures by kind (http_<code>, refused, timeout, "
                                "stream_broken, gone, ...)", labels=["resource", "kind"])
        for res, kinds in sorted((k8s.get("errors") or {}).items()):
            for kind, n in sorted(kinds.items()):
                c.add_metric([res, kind], n)
        yield c
        c = CounterMetricFamily("sigtrace_api_malformed_objects", "API objects skipped as unusable",
                                labels=["resource", "problem"])
        for res, kinds in sorted((k8s.get("malformed") or {}).items()):
            for kind, n in sorted(kinds.items()):
                c.add_metric([res, kind], n)
        yield c
        g = GaugeMetricFamily("sigtrace_api_up", "1 while the watch of this resource works", labels=["resource"])
        problems = k8s.get("problems") or {}
        for res in sorted(k8s.get("lists") or {}):
            g.add_metric([res], 0.0 if res in problems else 1.0)
        yield g
        c = CounterMetricFamily("sigtrace_api_events_dropped", "API events dropped: the recording loop was stalled")
        c.add_metric([], snap.get("api_events_dropped") or 0)
        yield c
        g = GaugeMetricFamily("sigtrace_api_cached_objects", "Objects the watcher holds, by cache", labels=["cache"])
        for cache, n in sorted((k8s.get("cache") or {}).items()):
            g.add_metric([cache], n)
        yield g


class _Server(ThreadingMixIn, WSGIServer):
    """One thread per scrape, at most MAX_CONNECTIONS at once: any pod can reach the pod IP, and a
    root agent must not grow a thread per idle connection someone opens."""
    daemon_threads = True
    MAX_CONNECTIONS = 8

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._slots = threading.BoundedSemaphore(self.MAX_CONNECTIONS)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)          # busy: refuse, a scraper retries next interval
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    timeout = 10        # an idle or slow client holds its slot 10 s at most
    def log_message(self, format: str, *args: Any) -> None:   # noqa: A002 - the base class's name
        pass            # one line per scrape would drown the agent's log


def read_only(app: Any) -> Any:
    def wrapped(environ: dict, start_response: Any) -> Any:
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed", [("Allow", "GET, HEAD"), ("Content-Type", "text/plain")])
            return [b"read-only: GET /metrics\n"]
        return app(environ, start_response)
    return wrapped


class MetricsServer:
    """The HTTP endpoint; start() binds (one-line error when it cannot), close() stops it."""

    def __init__(self, address: str, health: Any):
        from prometheus_client import CollectorRegistry, make_wsgi_app
        from prometheus_client import gc_collector, platform_collector, process_collector

        self.host, self.port = parse_address(address)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(AgentCollector(health))
        # the agent's own RSS and CPU (process_resident_memory_bytes...): what its limits are sized by
        process_collector.ProcessCollector(registry=self.registry)
        platform_collector.PlatformCollector(registry=self.registry)
        gc_collector.GCCollector(registry=self.registry)
        self.app = read_only(make_wsgi_app(self.registry))
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> "MetricsServer":
        cls = _Server6 if ":" in self.host else _Server
        try:
            self._server = make_server(self.host, self.port, self.app, server_class=cls, handler_class=_QuietHandler)
        except OSError as exc:
            raise UsageProblem(f"--metrics-address {self.host}:{self.port}: cannot listen ({exc.strerror}); "
                               f"choose another port, or leave it unset to serve no metrics") from None
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
