"""Per-pod correlation of recorded events: timeline, process roles, connections, stats, verdicts.

    from sigtrace.correlate import build_reports
    reports = build_reports(recording.events, recording.meta, recording.incomplete)
    reports.to_dict()   # the JSON of `sigtrace report --format json`
"""
from .build import build_reports, capabilities_of
from .model import PodReport, ReportSet, Verdict

__all__ = ["build_reports", "capabilities_of", "PodReport", "ReportSet", "Verdict"]
