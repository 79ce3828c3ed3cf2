"""A verdict rule: one cause from the field guide's catalog, one small function.

A rule looks at a PodContext and returns a Finding (the cause is proven by the cited events),
an Undecidable (the recording cannot hold the evidence that would prove or rule it out, e.g.
kernel resets under strace), or None (the cause did not happen). Positive evidence always wins:
a rule confirms from what it sees even when some capability is missing.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ..correlate.pod import PodContext

MAX_EVIDENCE = 8


@dataclass
class Finding:
    summary: str
    evidence: list[dict[str, Any]]
    about: Any = None          # what it is about (e.g. the nginx master's pid), for supersession
    # what the HTML picture draws for this verdict (model.Verdict.marks): {"kind": "span", "t0", "t1",
    # "lane", "label"} a bracket on a lane, {"kind": "race", "t0", "t1", "lane", "label"} a close
    # followed by a reset on one connection; lanes as the picture names them ("pid:<pid>",
    # "port:<port>", "runtime"). Times relative to the pod's t0.
    marks: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Undecidable:
    missing: list[str]
    why: str


Check = Callable[[PodContext], "Finding | Undecidable | None"]


@dataclass
class Rule:
    id: str
    title: str
    fix: str
    check: Check
    supersedes: tuple[str, ...] = ()    # rule ids this more specific rule replaces for the same `about`
    order: int = 0


RULES: dict[str, Rule] = {}


def rule(id: str, title: str, fix: str, supersedes: tuple[str, ...] = ()) -> Callable[[Check], Check]:
    def register(fn: Check) -> Check:
        RULES[id] = Rule(id, title, fix, fn, supersedes, order=len(RULES))
        return fn
    return register


def trim(evidence: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep evidence readable: in time order, at most MAX_EVIDENCE items plus a count of the rest."""
    ev = sorted(evidence, key=lambda e: (e["ts"] is None and e["event"] is None and e["what"].startswith("..."),
                                         e["ts"] if e["ts"] is not None else 0.0))
    if len(ev) <= MAX_EVIDENCE:
        return ev
    rest = len(ev) - MAX_EVIDENCE + 1
    return ev[:MAX_EVIDENCE - 1] + [{"t": None, "ts": None, "kind": None, "what": f"... and {rest} more", "event": None}]


def fmt_t(t: float | None) -> str:
    return "?" if t is None else f"{t:+.3f} s"


def serving_ports(ctx: PodContext) -> list[int]:
    """The pod's serving (not FastCGI) listening ports: from TCP states, and under strace from the
    listeners its processes closed."""
    ports = {p for p, li in ctx.listeners.items() if not li.upstream}
    upstream = {p for p, li in ctx.listeners.items() if li.upstream}
    return sorted(ports | (ctx.calls.closes().listeners().local_ports() - upstream))


def more(n: int, what: str = "more") -> dict[str, Any]:
    """The evidence line that stands for n items left out."""
    return {"t": None, "ts": None, "kind": None, "what": f"... and {n} {what}", "event": None}


def shown(v: Any) -> Any:
    """A value as the report prints it: a missing one as <NA>."""
    return "<NA>" if v is None else v


def upstream_ports(ctx: PodContext) -> list[int]:
    """The pod's FastCGI listening ports."""
    return [li.port for li in ctx.listeners.values() if li.upstream]
