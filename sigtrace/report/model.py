"""The report's data model: what `report` renders and what `--format json` serialises.

Key names here are the stable JSON contract (documented in the README, section `report`).
"""
from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Iterator, overload

import orjson

from ..verdicts.model import CONFIRMED, UNDECIDABLE, Verdict

__all__ = ["CONFIRMED", "UNDECIDABLE", "PodReport", "PodStore", "ReportSet", "Verdict"]

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

    @classmethod
    def from_dict(cls, d: dict[str, Any], connections: list[dict[str, Any]] | None = None,
                  marks: list[list[dict[str, Any]]] | None = None) -> "PodReport":
        """The report to_dict gave; connections and the verdicts' marks (the HTML picture's, not in
        the JSON) kept beside it."""
        marks = marks or [[] for _ in d["verdicts"]]
        return cls(d["pod_uid"], d["pod_name"], d["namespace"], d["stopped"], d["t0"], d["containers"],
                   d["timeline"], [Verdict.from_dict(v, m) for v, m in zip(d["verdicts"], marks)], d["stats"],
                   connections or [], d.get("trigger"))

    @property
    def title(self) -> str:
        if self.pod_name:
            return f"{self.namespace}/{self.pod_name}" if self.namespace else self.pod_name
        return self.pod_uid


# the JSON renderer's options (render.json): a stored report reads back as the values it would print
_STORE_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY


class PodStore(Sequence):
    """Pod reports kept compact: each as its JSON, compressed, read back as a PodReport when asked.

    A report in parts by pod keeps every pod's report until the end (they are rendered in uid
    order). As objects, the reports of a 10M-event recording (26k pods) held ~0.9 GB; as
    compressed JSON, a few tens of MB. Reading back gives the same JSON values (orjson's floats
    round-trip exactly), so a rendering is the same bytes."""

    def __init__(self) -> None:
        self._items: list[tuple[str, bytes]] = []

    @staticmethod
    def pack(report: PodReport) -> tuple[str, bytes]:
        """(pod uid, the report as add keeps it): what a worker process sends back."""
        blob = {"d": report.to_dict(), "c": report.connections, "m": [v.marks for v in report.verdicts]}
        data = orjson.dumps(blob, option=_STORE_OPTIONS, default=str)
        return report.pod_uid, zlib.compress(data, 1)

    def add(self, report: PodReport) -> None:
        self._items.append(self.pack(report))

    def add_packed(self, item: tuple[str, bytes]) -> None:
        """A report as pack made it."""
        self._items.append(item)

    def sort(self) -> None:
        """In pod uid order, as a whole recording's reports are."""
        self._items.sort(key=lambda item: item[0])

    def dicts(self) -> Iterator[dict[str, Any]]:
        """Each report's to_dict(), without building the report."""
        for _, data in self._items:
            yield orjson.loads(zlib.decompress(data))["d"]

    def _load(self, data: bytes) -> PodReport:
        blob = orjson.loads(zlib.decompress(data))
        return PodReport.from_dict(blob["d"], blob["c"], blob["m"])

    def __len__(self) -> int:
        return len(self._items)

    @overload
    def __getitem__(self, i: int) -> PodReport: ...
    @overload
    def __getitem__(self, i: slice) -> list[PodReport]: ...

    def __getitem__(self, i: int | slice) -> PodReport | list[PodReport]:
        if isinstance(i, slice):
            return [self._load(data) for _, data in self._items[i]]
        return self._load(self._items[i][1])

    def __iter__(self) -> Iterator[PodReport]:
        for _, data in self._items:
            yield self._load(data)


@dataclass
class ReportSet:
    pods: list[PodReport] | PodStore
    lost_events: int
    incomplete: list[str]
    meta: dict[str, Any] = field(default_factory=dict)
    # node level: resets on pods that were not stopping at the time (correlate.outside), never a stop's fault
    outside_stop: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.header(), pods=list(self.pod_dicts()))

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

    def pod_dicts(self) -> Iterator[dict[str, Any]]:
        """Each pod's to_dict(), in order (from a PodStore without building the reports)."""
        if isinstance(self.pods, PodStore):
            return self.pods.dicts()
        return (p.to_dict() for p in self.pods)
