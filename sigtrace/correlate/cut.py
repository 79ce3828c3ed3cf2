"""RecorderCut: the recording ends where a traced PID 1 took the recorder down with it.

A recorder in a container's PID namespace (`kubectl debug --target`) is SIGKILLed by the kernel
when that namespace's init exits. Its meta.json says so at start (`dies_with`) and never gets an
end time; `alive_at` is its last sign of life (rewritten every half second). The strace backend
holds every exit_group() long enough to record it first, so an init that left no exit in such a
recording did not exit by itself: it was killed, and everything in its namespace with it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from .pod import PodContext
from .processes import Process


@dataclass
class RecorderCut:
    init: Process                 # the PID 1 whose end ended the recording
    running: dict[int, str]       # pid -> comm of its container's processes without an exit (init too)
    after: float                  # it ended after the last event and the recorder's last sign of life...
    before: float | None          # ...and before the next sign of life was due (None: unknown)


def mark_recorder_cut(ctxs: dict[str, PodContext], meta: dict[str, Any], events: pd.DataFrame,
                      last_ts: float | None = None) -> None:
    """Set PodContext.recorder_cut on the pod whose init the killed recorder died with. last_ts: the
    recording's last event time, when events is only a part of it."""
    dies = meta.get("dies_with")
    if not isinstance(dies, dict) or meta.get("end") is not None or not len(events):
        return
    ctx = ctxs.get(str(dies.get("pod_uid")))
    if ctx is None:
        return
    init = ctx.procs.get(dies.get("pid")) if isinstance(dies.get("pid"), int) else None
    if init is None:
        container = ctx.containers.get(str(dies.get("container_id")))
        init = container.pid1 if container else None
    if init is None or init.exit_ts is not None:
        return                      # its exit is in the recording: nothing to infer
    after, before = float(events["ts"].max()) if last_ts is None else last_ts, None
    alive, every = meta.get("alive_at"), meta.get("alive_every_s")
    if isinstance(alive, (int, float)) and isinstance(every, (int, float)) and alive + every >= after:
        after, before = max(after, float(alive)), float(alive) + float(every)
    ctx.recorder_cut = RecorderCut(init, _running(events, init, ctx.pod_uid), after, before)


def _running(events: pd.DataFrame, init: Process, pod_uid: str) -> dict[int, str]:
    """Processes of init's container seen in any of the pod's events (workers may show only in
    socket calls) and never seen exiting."""
    mine = events[(events["container_id"] == init.container_id) & (events["pod_uid"] == pod_uid)
                  & events["pid"].notna()]
    exited = set(mine.loc[mine["kind"] == "process_exit", "pid"].astype(int))
    out = {init.pid: init.comm}
    for pid, comm in zip(mine["pid"].astype(int), mine["comm"].astype(object)):
        if pid not in exited and pid not in out:
            out[pid] = str(comm) if isinstance(comm, str) else "?"
    return out
