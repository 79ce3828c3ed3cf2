"""`sigtrace lab --replay`: a recorded shutdown, run again in the lab as recorded, then with the
fixes its verdicts name, each run recorded and reported like any other."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ...errors import DataError, LabError
from ...events.reader import events_frame, read_recording
from ...events.source import Recording
from ...report.build import build_reports, is_text, report_parts, report_recording
from ...report.model import PodReport, ReportSet
from ..driver import record_run
from ..scenario import LabResult, check_tools, validate
from .fixes import Change, apply_fixes, config_lines, pod_patch
from .learn import Learned, choose_pod, learn, scenario_of


@dataclass
class Run:
    """One lab run of the replay: its settings, the client's view and the report's verdicts."""
    settings: dict[str, Any]
    result: LabResult
    verdicts: list[str]
    report_notes: list[str] = field(default_factory=list)

    @property
    def client(self) -> dict[str, int]:
        return self.result.load.counts()

    @property
    def failures(self) -> int:
        return self.result.load.failures()


@dataclass
class Replay:
    learned: Learned
    as_recorded: Run
    fixed: Run | None
    changes: list[Change]

    @property
    def reproduced(self) -> bool:
        return set(self.as_recorded.verdicts) == set(self.learned.verdicts)

    @property
    def fix_proven(self) -> bool:
        return self.fixed is not None and not self.fixed.verdicts and self.fixed.failures == 0

    def differences(self) -> dict[str, list[str]]:
        rec, rep = set(self.learned.verdicts), set(self.as_recorded.verdicts)
        return {"only_recorded": sorted(rec - rep), "only_replayed": sorted(rep - rec)}

    def to_dict(self) -> dict[str, Any]:
        lr = self.learned
        d: dict[str, Any] = {
            "pod_uid": lr.pod_uid, "pod_name": lr.pod_name,
            "recorded": {"verdicts": lr.verdicts, "containers": lr.containers},
            "as_recorded": {"settings": {k: s.to_dict() for k, s in lr.settings.items()},
                            "client": self.as_recorded.client, "verdicts": self.as_recorded.verdicts,
                            "recording": str(self.as_recorded.result.out_dir),
                            "incomplete": self.as_recorded.report_notes},
            "reproduced": self.reproduced, "differences": self.differences(),
            "fixed": None, "fix_proven": self.fix_proven,
            "partial": lr.partial, "notes": lr.notes,
        }
        if self.fixed is not None:
            d["fixed"] = {"settings": self.fixed.settings, "changes": [c.to_dict() for c in self.changes],
                          "client": self.fixed.client, "verdicts": self.fixed.verdicts,
                          "patch": pod_patch(self.fixed.settings, self.changes, lr.containers),
                          "config": config_lines(self.fixed.settings, self.changes),
                          "recording": str(self.fixed.result.out_dir), "incomplete": self.fixed.report_notes}
        return d


def learn_recording(directory: Path, pod: str | None) -> Learned:
    """The recorded pod's shutdown as lab settings (no root needed: the recording alone). Only the
    pod's events (or, for a busy pod, its part's) are held and learnt from: an agent's run of weeks
    is never held whole. Without pod, the recording's reports (in parts by pod when it is big)
    name its only stopped pod."""
    if pod is None:
        pod = choose_pod(report_recording(directory, lanes=False), None, str(directory)).pod_uid
    elif not is_text(pod):
        raise DataError(f"pod {pod!r} is not in {directory}: a pod's uid or name is UTF-8 text")
    alone = _pod_alone(directory, pod) or _pod_in_its_part(directory, pod)
    if alone is not None:
        rec, reports = alone
    else:                                # small (read whole anyway), or pyarrow missing
        rec = read_recording(directory)
        reports = build_reports(rec.events, rec.meta, rec.incomplete)
    learned = learn(rec, reports, choose_pod(reports, pod, str(directory)))
    if rec.incomplete:
        learned.notes += [f"the recording is incomplete: {n}" for n in rec.incomplete[:3]]
    return learned


def _pod_alone(directory: Path, pod: str) -> tuple[Recording, ReportSet] | None:
    """The events and reports of the pods `pod` names (sigtrace.events.selection: what `report
    --pod` reads), or None when the recording must be read whole."""
    from ...events.partition import NotClean
    from ...events.selection import select_pods
    from ...events.source import plan_recording
    selected = select_pods(plan_recording(directory), [pod])
    if selected is None:
        return None
    try:
        reports = report_parts(selected, jobs=1)
        events = selected.frame()[0] if selected.chosen else events_frame([])
    except NotClean:
        return None
    finally:
        selected.close()
    return Recording(events, selected.meta, selected.incomplete, selected.source), reports


def _pod_in_its_part(directory: Path, pod: str) -> tuple[Recording, ReportSet] | None:
    """When the pass of `report --pod` gives up (a busy pod, a name learnt late): the recording's
    reports in parts, then the part that holds the pod (a part's events, not the recording's).
    None when the recording is small enough to read whole or pyarrow is missing."""
    from ...events.partition import NotClean, part_of, split_recording
    from ...events.source import plan_recording
    reports = report_recording(directory)
    found = reports.pod(pod)
    if found is None:
        return Recording(events_frame([]), reports.meta, []), reports      # choose_pod says it is not there
    parts = split_recording(plan_recording(directory))
    if parts is None:
        return None
    try:
        events, _ = parts.frame(part_of(found.pod_uid, parts.n_parts))
    except NotClean:
        return None
    finally:
        parts.close()
    return Recording(events, parts.meta, parts.incomplete, parts.source), reports


def _verdicts_of(out_dir: Path, pod_uid: str) -> tuple[list[str], list[str]]:
    rec = read_recording(out_dir)
    rs = build_reports(rec.events, rec.meta, rec.incomplete, lanes=False)
    report: PodReport | None = rs.pod(pod_uid)
    if report is None:
        raise LabError(f"the replay's recording {out_dir} has no report for its pod: see {out_dir / 'record.log'}")
    return [v.id for v in report.verdicts if v.status == "confirmed"], list(rs.incomplete)


def run_one(values: dict[str, Any], name: str, out_dir: Path, layout: str, backend: str) -> Run:
    r = record_run(scenario_of(values, name, layout), out_dir, backend)
    verdicts, notes = _verdicts_of(out_dir, r.pod_uid)
    return Run(values, r, verdicts, notes)


def replay(directory: Path, out_root: Path, pod: str | None = None, layout: str = "cgroupfs",
           backend: str = "bpf", progress: Callable[[str], None] = lambda _: None) -> Replay:
    """Learn, run as recorded, fix, run again. Bad input fails before any container exists."""
    if backend == "none":
        raise LabError("--replay compares reports: it needs a recorder (--backend bpf or strace)")
    learned = learn_recording(directory, pod)
    values = {k: s.value for k, s in learned.settings.items()}
    validate(scenario_of(values, "as-recorded", layout))
    check_tools()
    progress("running the pod as recorded")
    as_recorded = run_one(values, "as-recorded", out_root / "as-recorded", layout, backend)
    seen = set(learned.verdicts) | set(as_recorded.verdicts)
    fixed_values, changes = apply_fixes(values, seen)
    fixed = None
    if changes:
        progress("running the pod with the fixes")
        fixed = run_one(fixed_values, "fixed", out_root / "fixed", layout, backend)
    return Replay(learned, as_recorded, fixed, changes)
