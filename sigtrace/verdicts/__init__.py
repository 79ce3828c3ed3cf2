"""The verdict catalog (../shared/FIELD-GUIDE.md): one small rule per cause, evaluated per pod."""
from __future__ import annotations

from .model import CONFIRMED, UNDECIDABLE, Verdict
from ..correlate.pod import PodContext
from . import fpm, nginx, signals, traffic  # noqa: F401  (register the rules)
from .base import RULES, Finding, Rule, Undecidable, trim

CATALOG_ORDER = ("endpoint-race", "prestop-quit-superseded", "nginx-fast-shutdown", "phpfpm-abrupt-stop",
                 "upstream-exited-first", "pid1-signal-ignored", "signal-not-forwarded", "killed-after-grace",
                 "keepalive-close-race", "nginx-shutdown-timeout", "prestop-exceeds-grace")


def catalog() -> list[Rule]:
    order = {rid: i for i, rid in enumerate(CATALOG_ORDER)}
    return sorted(RULES.values(), key=lambda r: (order.get(r.id, len(order)), r.order))


def evaluate(ctx: PodContext) -> list[Verdict]:
    """Verdicts of one pod. A pod that never stopped gets none; a more specific rule replaces the
    general one it supersedes for the same process (prestop-quit-superseded over nginx-fast-shutdown)."""
    if not ctx.stopped:
        return []
    found: list[tuple[Rule, Finding | Undecidable]] = []
    for r in catalog():
        res = r.check(ctx)
        if res is not None:
            found.append((r, res))
    superseded = {(sid, f.about) for r, f in found if isinstance(f, Finding) for sid in r.supersedes}
    out = []
    for r, f in found:
        if isinstance(f, Finding):
            if (r.id, f.about) in superseded or (r.id, None) in superseded:
                continue
            out.append(Verdict(r.id, f.summary, r.fix, trim(f.evidence), CONFIRMED, marks=f.marks))
        else:
            if any(sid == r.id for sid, _ in superseded):
                continue
            out.append(Verdict(r.id, f"undecidable: {r.title} — {f.why}", r.fix, [], UNDECIDABLE, f.missing))
    return out


__all__ = ["evaluate", "catalog", "RULES"]
