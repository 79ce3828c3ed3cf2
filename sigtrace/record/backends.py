"""The recorders by name (`--backend`), imported only when chosen: bcc loads only for bpf."""
from __future__ import annotations

import importlib
from typing import Any

from ..errors import SigtraceError

BACKENDS = {
    "bpf": "sigtrace.backends.bpf.backend:BpfBackend",
    "strace": "sigtrace.backends.strace.backend:StraceBackend",
}


def make_backend(name: str, *, all_processes: bool, pids: tuple[int, ...], comms: tuple[str, ...],
                 **kw: Any) -> Any:
    """Instantiate a backend by name; a backend that is not installed is a one-line error."""
    module, attr = BACKENDS[name].split(":")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise SigtraceError(f"the {name} backend is not available ({exc}); use --backend bpf") from None
    return cls(all_processes=all_processes, pids=pids, comms=comms, **kw)
