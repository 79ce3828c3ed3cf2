"""The report's data model: what `report` renders and what `--format json` serialises.

Key names here are the stable JSON contract (documented in the README, section `report`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..verdicts.model import CONFIRMED, UNDECIDABLE, Verdict

__all__ = ["CONFIRMED", "UNDECIDABLE", "PodReport", "ReportSet", "Verdict"]

@dataclass
class PodReport:
    pod_uid: str
    pod_name: str | None
    namespace: str | None
    stopped: bool
    t0: float | None                       # epoch seconds of the first stop trigger
    containers: list[dict[str, Any]]
    timeline: list[dict[str, Any]]
    verdicts: list[Verdict]
    stats: dict[str, Any]
    connections: list[dict[str, Any]] = field(default_factory=list)   # for the HTML picture
    trigger: dict[str, Any] | None = None  # what stopped the pod (correlate.trigger), when the recording says

    def to_dict(self) -> dict[str, Any]:
        d = {
            "pod_uid": self.pod_uid, "pod_name": self.pod_name, "namespace": self.namespace,
            "stopped": self.stopped, "t0": self.t0, "containers": self.containers,
            "timeline": self.timeline, "verdicts": [v.to_dict() for v in self.verdicts],
            "stats": self.stats,
        }
        if self.trigger is not None:      # only recordings with the pod object's data know it
            d["trigger"] = self.trigger
        return d

    @property
    def title(self) -> str:
        if self.pod_name:
            return f"{self.namespace}/{self.pod_name}" if self.namespace else self.pod_name
        return self.pod_uid


@dataclass
class ReportSet:
    pods: list[PodReport]
    lost_events: int
    incomplete: list[str]
    meta: dict[str, Any] = field(default_factory=dict)
    # node level: resets on pods that were not stopping at the time (correlate.outside), never a stop's fault
    outside_stop: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.header(), pods=[p.to_dict() for p in self.pods])

    def header(self) -> dict[str, Any]:
        """Everything but the pods (a writer that goes pod by pod adds them)."""
        d: dict[str, Any] = {"lost_events": self.lost_events, "incomplete": list(self.incomplete)}
        if self.outside_stop:
            d["resets_outside_stop"] = self.outside_stop
        return d

    def pod(self, uid: str) -> PodReport | None:
        for p in self.pods:
            if p.pod_uid == uid or p.pod_name == uid:
                return p
        return None
