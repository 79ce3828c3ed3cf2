"""A verdict as the report carries it: the cause's id, what proves it, its fix, or why it cannot be
decided. Key names are the stable JSON contract (README, section `report`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

CONFIRMED = "confirmed"
UNDECIDABLE = "undecidable"


@dataclass
class Verdict:
    id: str
    summary: str
    fix: str
    evidence: list[dict[str, Any]] = field(default_factory=list)
    status: str = CONFIRMED
    missing: list[str] = field(default_factory=list)   # capabilities an undecidable verdict lacks
    marks: list[dict[str, Any]] = field(default_factory=list)   # for the HTML picture only (verdicts.base.Finding)

    def to_dict(self) -> dict[str, Any]:
        d = {"id": self.id, "summary": self.summary, "evidence": self.evidence, "fix": self.fix,
             "status": self.status}
        if self.status == UNDECIDABLE:
            d["missing"] = self.missing
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], marks: list[dict[str, Any]] | None = None) -> "Verdict":
        """The verdict to_dict gave (marks kept beside it: they are not in the JSON)."""
        return cls(d["id"], d["summary"], d["fix"], d.get("evidence") or [], d.get("status", CONFIRMED),
                   d.get("missing") or [], marks or [])
