"""pid -> pod, from /proc/PID/cgroup, cached, remembering processes after they exit."""
from __future__ import annotations

from .cgroup import NO_POD, PodRef, parse_proc_cgroup


def read_proc_cgroup(pid: int, proc: str = "/proc") -> str | None:
    try:
        with open(f"{proc}/{pid}/cgroup", encoding="utf-8") as fh:
            return fh.read()
    except OSError:
        return None


class PodResolver:
    """Cache of pid -> PodRef. A pid is resolved while it lives and remembered after,
    because a TCP or exit event often reaches user space after the process is gone.
    Pids are reused, so forget() drops an entry once its exit has been handled."""

    def __init__(self, proc: str = "/proc"):
        self.proc = proc
        self._cache: dict[int, PodRef] = {}

    def resolve(self, pid: int | None) -> PodRef:
        if not pid or pid <= 0:
            return NO_POD
        ref = self._cache.get(pid)
        if ref is None:
            text = read_proc_cgroup(pid, self.proc)
            ref = parse_proc_cgroup(text) if text else NO_POD
            if text is not None:
                self._cache[pid] = ref
        return ref

    def remember(self, pid: int, ref: PodRef) -> None:
        self._cache[pid] = ref

    def forget(self, pid: int) -> None:
        self._cache.pop(pid, None)

    def pods(self) -> dict[int, PodRef]:
        return {pid: ref for pid, ref in self._cache.items() if ref.pod_uid}
