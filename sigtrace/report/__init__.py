"""The report stage: facts (sigtrace.correlate) and verdicts (sigtrace.verdicts) assembled into one
PodReport per pod, a ReportSet per recording; sigtrace.render turns it into text, JSON or HTML.

    from sigtrace.report import build_reports
    reports = build_reports(recording.events, recording.meta, recording.incomplete)
    reports.to_dict()   # the JSON of `sigtrace report --format json`
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = ["build_reports", "PodReport", "ReportSet", "Verdict"]

# Lazy (PEP 562): `sigtrace record` imports its live reporter at start, which names this package;
# importing .build here would load pandas into every recorder (~120 MB RSS, ~0.6 s of startup;
# docs/benchmarks.md) although live reports only need it once a pod has stopped.
_WHERE = {"build_reports": ".build", "PodReport": ".model", "ReportSet": ".model", "Verdict": ".model"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(_WHERE[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
