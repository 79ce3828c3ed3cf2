"""The report stage: facts per pod (sigtrace.correlate) -> verdicts (sigtrace.verdicts) -> timeline
and stats -> one PodReport per pod. The one implementation behind `sigtrace report`, live reports
and `sigtrace analyze`; it knows nothing of how a report is rendered.

A recording is reported whole (build_reports: its events as one frame) or in parts by pod
(report_recording: sigtrace.events.partition), which gives the same reports in bounded memory: a
pod's report reads only its own events; the node-wide parts (which ReplicaSets the recording saw,
the recording's kinds and last event) come from small summaries gathered while reading. Parts
are correlated side by side in worker processes (report.workers), one pod's report in report.pod."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Collection, Iterable

import pandas as pd

from ..correlate.build import build_contexts, capabilities_for, capabilities_of, lifecycle_contexts
from ..correlate.outside import resets_outside_stop
from ..correlate.trigger import replica_sets
from ..errors import UsageProblem
from ..events.source import lost_events
from .model import PodStore, ReportSet
from .pod import report_for

# a frame of more events than this is reported in parts by pod (report_parts): the correlation's
# peak is then a part's (~100 bytes an event for each of a dozen intermediate columns), not the whole's
PART_EVENTS = 250_000


def build_reports(events: pd.DataFrame, meta: dict[str, Any], incomplete: Iterable[str] = (),
                  lanes: bool = True, progress: Callable[[str, int, int | None], None] | None = None) -> ReportSet:
    """One report per pod seen in the events (as the current task's pod or a signal's target).
    lanes=False leaves out PodReport.connections (only the HTML picture draws them).
    progress(what, done, total): told as pods are done."""
    meta = meta or {}
    if len(events) > PART_EVENTS:
        from ..events.partition import FrameParts
        n_parts = len(events) // PART_EVENTS + 1
        # in this process: build_reports also runs inside the recording agent, which must not fork
        return report_parts(FrameParts(events, meta, list(incomplete), n_parts), lanes, progress, jobs=1)
    notes = list(incomplete)
    caps, cap_notes = capabilities_of(meta, events)
    notes += cap_notes
    ctxs = build_contexts(events, caps, meta, lanes)
    rs_by_deployment = replica_sets(ctxs)
    reports = []
    for ctx in ctxs.values():
        reports.append(report_for(ctx, rs_by_deployment))
        if progress:
            progress("pods done", len(reports), len(ctxs))
    return ReportSet(reports, lost_events(meta), notes, meta, outside_stop=resets_outside_stop(ctxs))


def report_recording(directory: str | Path, lanes: bool = True, part_bytes: int | None = None,
                     progress: Callable[[str, int, int | None], None] | None = None,
                     jobs: int | None = None, pods: Collection[str] = ()) -> ReportSet:
    """The reports of a recording directory (read_recording's input), read in parts by pod when it
    is big (bounded memory; what the tolerant reader skips is skipped chunk by chunk), whole
    otherwise. DataError as read_recording. part_bytes:
    how much of the recording's JSON a part holds (events.partition.PART_BYTES); progress as
    build_reports'; jobs: worker processes for the parts, as report_parts'. pods: only the pods
    these uids or names name (every pod of a name), read without correlating the others
    (events.selection); PodNotFound for one that names none."""
    from ..events.partition import PART_BYTES, NotClean, split_recording
    from ..events.reader import read_recording
    from ..events.source import plan_recording
    src = plan_recording(directory)
    for sel in pods:
        if not is_text(sel):
            # no recording holds it (both readers skip text that is not UTF-8): said before any reading
            raise PodNotFound(f"pod {sel} is not in {directory}: a pod's uid or name is UTF-8 text")
    if pods:
        from ..events.selection import select_pods
        selected = select_pods(src, pods, progress)
        if selected is not None:
            try:
                return only_pods(report_parts(selected, lanes, progress, jobs=1), pods, str(directory),
                                 selected.known)
            except NotClean:
                pass
            finally:
                selected.close()
    parts = split_recording(src, part_bytes or PART_BYTES, progress)
    if parts is not None:
        try:
            return only_pods(report_parts(parts, lanes, progress, jobs), pods, str(directory))
        except NotClean:
            pass                     # a value the tolerant reader skips: read it whole, as it does
        finally:
            parts.close()
    if progress:
        progress("reading events", 0, None)
    rec = read_recording(directory)
    if progress:
        progress("reading events", len(rec.events), len(rec.events))
    return only_pods(build_reports(rec.events, rec.meta, rec.incomplete, lanes, progress), pods, str(directory))


class PodNotFound(UsageProblem):
    """A --pod that names no pod of the recording."""


KNOWN_SHOWN = 5          # pods named in PodNotFound's message; a node's week has thousands
NAME_SHOWN = 64          # characters of each of their uids and names


def only_pods(rs: ReportSet, selectors: Collection[str], directory: str,
              known: dict[str, str | None] | None = None) -> ReportSet:
    """rs with only the pods the selectors name (uid, or name: every pod of that name) and their
    resets outside a stop; rs itself when there are no selectors. known: every pod uid of the
    recording -> its name, for the error (default: rs's pods)."""
    if not selectors:
        return rs
    wanted = set(selectors)
    chosen = [p for p in rs.pods if p.pod_uid in wanted or (p.pod_name is not None and p.pod_name in wanted)]
    if known is None:
        known = {p.pod_uid: p.pod_name for p in rs.pods}
    named = {p.pod_uid for p in chosen} | {p.pod_name for p in chosen}
    for sel in selectors:
        if sel not in named:
            raise PodNotFound(f"pod {sel} is not in {directory}; {_some_pods(known)}")
    uids = {p.pod_uid for p in chosen}
    rs.pods = chosen
    rs.outside_stop = [e for e in rs.outside_stop if e.get("pod_uid") in uids]
    return rs


def is_text(value: str) -> bool:
    """Whether a name given on the command line can be one a recording holds (UTF-8 text)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:           # a lone surrogate: bytes of the command line that were not UTF-8
        return False
    return True


def _some_pods(known: dict[str, str | None]) -> str:
    if not known:
        return "it holds no pod"

    def cut(text: str) -> str:           # tenant text, up to 1,024 characters each: the line stays short
        return text if len(text) <= NAME_SHOWN else text[:NAME_SHOWN] + "…"
    shown = [f"{cut(uid)} ({cut(name)})" if name else cut(uid) for uid, name in sorted(known.items())[:KNOWN_SHOWN]]
    more = f" and {len(known) - KNOWN_SHOWN} more (`sigtrace report --format json` lists them)" \
        if len(known) > KNOWN_SHOWN else ""
    return f"pods there: {', '.join(shown)}{more}"


def report_parts(parts: Any, lanes: bool = True,
                 progress: Callable[[str, int, int | None], None] | None = None,
                 jobs: int | None = None) -> ReportSet:
    """build_reports of a recording split by pod (sigtrace.events.partition.PodParts): each part's
    pods from that part alone, in pod uid order as a whole recording's. NotClean from a part.
    jobs: worker processes, one part each at a time (report.workers.default_jobs: None or 0 is
    SIGTRACE_JOBS, else one per CPU the process may use, at most 4; 1 is none). WorkerDied when
    one is killed."""
    from .workers import PartJob, default_jobs, report_units
    meta = parts.meta or {}
    summary = parts.summary
    notes = list(parts.incomplete)
    caps, cap_notes = capabilities_for(meta, summary.kinds)
    notes += cap_notes
    rs_by_deployment = replica_sets(lifecycle_contexts(summary.lifecycle, caps))
    reports = PodStore()             # compact until rendered: 26k reports as objects held ~0.9 GB
    outside: list[dict[str, Any]] = []
    job = PartJob(parts, caps, meta, lanes, summary.last_ts, rs_by_deployment)
    for packed, part_outside in report_units(job, default_jobs(jobs)):
        for item in packed:
            reports.add_packed(item)
            if progress:
                progress("pods done", len(reports), None)
        outside += part_outside
    reports.sort()
    outside.sort(key=lambda e: e["pod_uid"])
    return ReportSet(reports, lost_events(meta), notes, meta, outside_stop=outside)
