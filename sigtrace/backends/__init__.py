"""Backends record the kernel's facts and hand them on as schema events (sigtrace.events.schema).

Both backends (bpf/, strace/) implement Backend; the record session (sigtrace.record) owns the
output files, the live view, signal handling and live reports, and never knows which backend runs.
"""
from __future__ import annotations

from typing import Any, Callable, Protocol

EventSink = Callable[[dict[str, Any]], None]


class Backend(Protocol):
    name: str                       # "bpf" or "strace", written to meta.json

    def open(self, sink: EventSink) -> None:
        """Attach (compile/load probes, or start strace). Raise SigtraceError with one line on failure."""

    def poll(self, timeout_s: float) -> None:
        """Deliver pending events to the sink; return after at most timeout_s."""

    def close(self) -> None:
        """Detach and deliver what is still buffered."""

    def lost(self) -> dict[str, int]:
        """Events lost so far, per probe (or per cause); always present, zero when none."""

    def meta(self) -> dict[str, Any]:
        """Backend facts for meta.json (header source, capabilities, parse failures, attach results)."""
