"""BpfBackend: the Backend protocol (sigtrace.backends) over the bcc program."""
from __future__ import annotations

import os
import sys
import time
from typing import Any

from ...errors import UsageProblem
from ...events import kinds
from ...pods import caps as own_caps
from ...pods import sockets
from ...pods.proc import is_alive
from .. import EventSink
from . import program
from .decode import Decoder
from .pods import AMBIGUOUS, RUNTIME_COMMS, MapSync, PodRegistry, cgroup_mounts, format_endpoint

REFRESH_S = 1.0                # rescan pods and processes (listeners: from the probes, and once per new process)
ARM_WINDOW_S = 600.0           # a stopping pod streams TCP detail this long after it was armed
# the kernel's close counts are written once their bucket is this old: a reset that follows a counted
# close takes it back from its bucket's count (the close streams then), which rarely comes later
CLOSE_COUNTS_AGE_S = 2.0
# stopping: TCP detail only for pods that are stopping (the default; a node agent);
# always: for every pod, all the time (debugging a running pod's resets; costs ~25k events/s under churn)
TCP_DETAIL = ("stopping", "always")


class BpfBackend:
    name = "bpf"
    capabilities = kinds.capabilities_recorded(kinds.BPF)     # what the kinds it probes prove

    def __init__(self, *, all_processes: bool = False, pids: tuple[int, ...] = (), comms: tuple[str, ...] = (),
                 ringbuf_pages: int = program.DEFAULT_RINGBUF_PAGES, arm_window_s: float = ARM_WINDOW_S,
                 refresh_s: float = REFRESH_S, tcp_detail: str = "stopping", note: Any = None):
        for pid in pids:
            if not is_alive(pid):
                raise UsageProblem(f"--pid {pid}: no such process; pass the pid of a running process")
        self.opts = program.ProgramOptions(filter_all=all_processes, ringbuf_pages=ringbuf_pages)
        self.pids, self.comms = tuple(pids), tuple(comms)
        self.arm_window_s, self.refresh_s = arm_window_s, refresh_s
        if tcp_detail not in TCP_DETAIL:
            raise UsageProblem(f"--tcp-detail {tcp_detail}: use one of {', '.join(TCP_DETAIL)}")
        self.tcp_detail = tcp_detail
        self.note = note or (lambda line: print(f"sigtrace: {line}", file=sys.stderr))
        self.registry = PodRegistry()
        self.registry.selected_pids.update(pids)
        self.registry.selected_comms.update(c[:15] for c in comms)
        self.loaded: program.LoadedProgram | None = None
        self.decode_errors = 0
        self.startup_s: float | None = None
        self._sink: EventSink | None = None
        self._last_refresh = 0.0
        self._mounts = cgroup_mounts()
        self._found: dict[int, list[int]] = {}
        self._listeners_scanned: set[int] = set()    # pids whose /proc listeners were read once
        self._armed_cache: set[int] = set()
        self._armed_at = 0.0

    # -- Backend protocol
    def open(self, sink: EventSink) -> None:
        t0 = time.monotonic()
        self._sink = sink
        self.loaded = program.load(self.opts)
        if self.loaded.headers.kind == "fallback":
            self.note(self.loaded.headers.note)
        if self.loaded.tcp is not None and self.loaded.tcp.note:
            self.note(self.loaded.tcp.note)
        if self.loaded.exit is not None and self.loaded.exit.note:
            self.note(self.loaded.exit.note)
        if self.loaded.closes is not None and self.loaded.closes.note:
            self.note(self.loaded.closes.note)
        try:
            self._attach(sink)
        except BaseException:
            self.loaded.close()
            self.loaded = None
            raise
        self.startup_s = time.monotonic() - t0

    def _attach(self, sink: EventSink) -> None:
        if not own_caps.has(own_caps.CAP_SYS_PTRACE):
            # /proc/<pid>/fd of container processes (which hold capabilities we lack) is refused
            self.note("no CAP_SYS_PTRACE: the listeners of pod processes started before the recorder cannot be "
                      "read from /proc/<pid>/fd, so refused connections to them are not tied to their pod "
                      "(meta.json proc_fd_refused counts the refusals)")
        assert self.loaded is not None
        bpf = self.loaded.bpf
        self.decoder = Decoder(self.loaded.defines, self.registry, self.loaded.formats.reset_reasons(),
                               resolve_unknown=self.opts.filter_all)
        self.maps = MapSync(bpf, self.registry, self.arm_window_s)
        self.maps.set_comms("runtime_comms", RUNTIME_COMMS)
        self.maps.set_comms("select_comms", self.comms)
        self._unknown_flag = self.loaded.defines["ST_EV_UNKNOWN_CGROUP"]
        self._listener_flag = self.loaded.defines["ST_EV_LISTENER"]
        self._info_only_flag = self.loaded.defines["ST_EV_INFO_ONLY"]
        self._mark_other_cgroups()
        self.refresh()
        self.decoder.armed_pods = self._armed_pods
        # both rings carry struct st_event; bcc types only the first ring it sees, so decode with it
        typed = bpf["events"]
        for table in ("events", "tcp_events"):
            bpf[table].open_ring_buffer(lambda ctx, data, size: self._on_raw(typed.event(data)))

    def poll(self, timeout_s: float) -> None:
        assert self.loaded is not None
        self.loaded.bpf.ring_buffer_poll(max(0, int(timeout_s * 1000)))
        if time.monotonic() - self._last_refresh >= self.refresh_s:
            # counts first: refresh() may forget a gone pod, whose last buckets would then be dropped
            self._write_close_counts()
            self.refresh()

    def close(self) -> None:
        if self.loaded is None:
            return
        try:
            self.loaded.bpf.ring_buffer_consume()
        except Exception:
            pass
        self._write_close_counts(every=True)
        self._final_lost = self.lost()
        self._final_counters = self.counters()
        self._headers = self.loaded.headers
        self._tcp = self.loaded.tcp
        self._exit = self.loaded.exit
        self._closes = self.loaded.closes
        self.loaded.close()
        self.loaded = None

    def lost(self) -> dict[str, int]:
        if self.loaded is None:
            return dict(getattr(self, "_final_lost", {}))
        table = self.loaded.bpf["lost"]
        n = self.loaded.defines["ST_NPROBES"]
        return {self.decoder.probe_name(i): int(sum(table[table.Key(i)])) for i in range(n)}

    def counters(self) -> dict[str, int]:
        """TCP events filtered in the kernel on purpose (not lost): not a pod's, or pod not stopping."""
        if self.loaded is None:
            return dict(getattr(self, "_final_counters", {}))
        t = self.loaded.bpf["counters"]
        d = self.loaded.defines
        return {"tcp_not_pod": int(sum(t[t.Key(d["ST_COUNT_TCP_NOT_POD"])])),
                "tcp_pod_not_stopping": int(sum(t[t.Key(d["ST_COUNT_TCP_UNARMED"])])),
                "tcp_routine_transitions": int(sum(t[t.Key(d["ST_COUNT_TCP_ROUTINE"])]))}

    def meta(self) -> dict[str, Any]:
        headers = self.loaded.headers if self.loaded else getattr(self, "_headers", None)
        tcp = self.loaded.tcp if self.loaded else getattr(self, "_tcp", None)
        exit_probe = self.loaded.exit if self.loaded else getattr(self, "_exit", None)
        closes = self.loaded.closes if self.loaded else getattr(self, "_closes", None)
        reg = self.registry
        endpoints: dict[str, list[str]] = {}
        for (addr, port), owners in sorted(reg.endpoints.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            for pidx in owners:
                uid = reg.pod_uid(pidx)
                endpoints.setdefault(uid or "selected", []).append(format_endpoint(addr, port))
        return {
            "header_source": headers.note if headers else None,
            "tcp_probe": tcp.description if tcp else None,
            "exit_probe": exit_probe.description if exit_probe else None,
            "tcp_closes": closes.description if closes else None,
            "capabilities": list(self.capabilities),
            "filter": "all" if self.opts.filter_all else "pods",
            "pids": list(self.pids), "comms": list(self.comms),
            "lost_by_probe": self.lost(),
            "kernel_filtered": self.counters(),
            "pod_endpoints": endpoints,
            "decode_errors": self.decode_errors,
            "startup_s": round(self.startup_s, 3) if self.startup_s is not None else None,
            "arm_window_s": self.arm_window_s,
            "tcp_detail": self.tcp_detail,
            "armed_pods": self.armed_pod_uids(),
            "forgotten": dict(reg.forgotten),
            "proc_fd_refused": sockets.refused_fd_reads,
        }

    # -- internals
    def refresh(self) -> None:
        """Rescan kubepods cgroups and pod processes; push into the maps. Listeners come from the
        probes' listener events; /proc/<pid>/net/tcp (which lists every TIME_WAIT socket of the
        pod: most of the recorder's CPU under connection churn when read every second) is read
        once per new process, for the listeners it opened before the probes were attached."""
        self._last_refresh = time.monotonic()
        v2, v1 = self._mounts
        found = self.registry.scan(v2, v1)
        new = {cidx: fresh for cidx, pids in found.items()
               if (fresh := [p for p in pids if p not in self._listeners_scanned])}
        if new:
            self.registry.learn_endpoints(new)
            for pids in new.values():
                self._listeners_scanned.update(pids)

        self.maps.sync(found)
        self._found = found
        if self.tcp_detail == "always":
            for pidx in {self.registry.cref[c].pidx for c in found if c in self.registry.cref}:
                self.maps.arm(pidx)
        # a node agent runs for weeks: forget what is gone (here and in the kernel's fixed-size maps)
        self.registry.forget_gone(time.monotonic())
        self.maps.prune(found, self.arm_window_s)
        alive = {pid for pids in found.values() for pid in pids}
        self._listeners_scanned &= alive

    def arm_pod(self, pod_uid: str) -> bool:
        """Stream the pod's TCP detail from now on (the agent: the API says it is being deleted,
        before any signal reached it). False when the pod has no process on this node."""
        pidx = self.registry.pods.get(pod_uid)
        if pidx is None or self.loaded is None:
            return False
        self.maps.arm(pidx)
        self._armed_at = 0.0                 # the decoder's cache of armed pods is stale now
        return True

    def armed_pod_uids(self) -> list[str]:
        """Pods streaming TCP detail now (stopping, within the arm window)."""
        if self.loaded is None:
            return []
        return sorted(u for p in self._armed_pods() if (u := self.registry.pod_uid(p)))

    def armed_pod_count(self) -> int:
        """Pods armed now (stopping, within the arm window): `sigtrace agent` status and metrics."""
        return len(self._armed_pods()) if self.loaded is not None else 0

    def _armed_pods(self) -> set[int]:
        now = time.monotonic()
        if now - self._armed_at > 0.2:             # one map walk per 200 ms, not per event
            self._armed_cache = self.maps.armed_pods(self.arm_window_s)
            self._armed_at = now
        return self._armed_cache

    def _write_close_counts(self, every: bool = False) -> None:
        """Write the kernel's buckets of counted closes that are old enough (every: all of them, at the
        end) as tcp_close_counts events, and delete them from the map."""
        assert self.loaded is not None and self._sink is not None
        if not self.loaded.closes or not self.loaded.closes.defines.get("ST_CLOSE_COUNTS"):
            return
        table = self.loaded.bpf["close_counts"]
        bucket_ns = self.loaded.defines["ST_CLOSE_BUCKET_MS"] * 1_000_000
        last = (time.clock_gettime_ns(time.CLOCK_MONOTONIC) - int(CLOSE_COUNTS_AGE_S * 1e9)) // bucket_ns
        for key, value in sorted(table.items(), key=lambda kv: kv[0].bucket):
            if not every and key.bucket > last:
                continue
            try:
                del table[key]
            except KeyError:
                pass
            event = self.decoder.close_counts(key, value.counted) if value.counted else None
            if event is not None:
                self._sink(event)

    def _on_raw(self, raw: Any) -> None:
        assert self.loaded is not None and self._sink is not None
        cidx = raw.cidx      # ring buffer pages are read-only to user space: never write to raw
        flags = raw.flags
        if flags & self._unknown_flag:
            cidx = self._classify(raw)
            if not cidx:
                return       # not a pod's: the kernel drops this cgroup's events from now on
        if flags & self._listener_flag:
            self._on_listener(raw, cidx)
        try:
            event = self.decoder.decode(raw, cidx)
        except Exception:    # a bug in decoding must not stop the recording; counted in meta.json
            self.decode_errors += 1
            return
        if flags & self._info_only_flag:
            return           # decoded for the decoder's listener history, not recorded
        self._sink(event)

    def _on_listener(self, raw: Any, cidx: int) -> None:
        """A pod process listens: learn the endpoint and push it into the kernel's map (the probe
        already wrote the exact key when it knew the pod; wildcards also go under the netns's
        addresses, and a listener of a cgroup classified only now is written here)."""
        if raw.new_state != self.decoder.listen:
            return           # a listener closed: the endpoint is remembered (refusals name the pod)
        ref = self.registry.container(cidx) if cidx else None
        pidx = ref.pidx if ref is not None else raw.pidx
        if not pidx or pidx == AMBIGUOUS:
            return
        if self.registry.learn_listener(raw.pid, pidx, bytes(raw.saddr), raw.sport):
            self.maps.sync(self._found)

    def _mark_other_cgroups(self) -> None:
        """Classify the cgroup v2 directories outside kubepods up front, so the kernel filters
        their events from the start instead of asking user space once per cgroup."""
        other = self.loaded.bpf["other_cgroups"]
        for root in self._mounts[0]:
            for dirpath, dirnames, _ in os.walk(root):
                dirnames[:] = [d for d in dirnames if not d.startswith("kubepods")]
                try:
                    other[other.Key(os.stat(dirpath).st_ino)] = other.Leaf(1)
                except (OSError, KeyError):
                    pass

    def _classify(self, raw: Any) -> int:
        """An event the kernel could not place (its cgroup is not in the maps yet): a new container's
        first process, or a non-pod cgroup seen for the first time. Rescan now for the former;
        tell the kernel to drop the latter's events from now on."""
        cidx = self.registry.cgroups.get(raw.cgroup_id)
        if cidx is None and time.monotonic() - self._last_refresh > 0.1:
            self.refresh()
            cidx = self.registry.cgroups.get(raw.cgroup_id)
        if cidx is None:
            info = self.registry.resolve_pid(raw.pid)    # v1-only runtimes: /proc/<pid>/cgroup
            if info is None:
                return 0     # gone before we could look: the cgroup is classified on a later event
            cidx = info.cidx
            if not cidx:
                other = self.loaded.bpf["other_cgroups"]
                other[other.Key(raw.cgroup_id)] = other.Leaf(1)
        return cidx
