"""Verdicts about stop signals that never did their job: dropped at PID 1, not forwarded by a
wrapper, or replaced by the SIGKILL at the end of the grace period."""
from __future__ import annotations

from ..correlate.pod import NOT_STOP, PodContext
from ..correlate.processes import INIT, SHELL
from ..events import capabilities as C
from .base import Finding, Undecidable, fmt_t, rule

WRAPPER_ROLES = (SHELL, INIT)


@rule("pid1-signal-ignored", "the stop signal was dropped by the kernel",
      "Make the app PID 1 (exec-form CMD/ENTRYPOINT, `exec` in entrypoint scripts) or run an init that "
      "forwards signals (tini, dumb-init, `shareProcessNamespace` is not a fix).")
def pid1_signal_ignored(ctx: PodContext) -> Finding | Undecidable | None:
    # only stop requests count: kernel notifications (SIGIO, SIGCHLD...) dropped at PID 1 hurt nobody
    hits = [s for s in ctx.signals if s.target is not None and s.target.is_pid1 and s.result == "ignored"
            and s.sig != "SIGKILL" and s.sig not in NOT_STOP]
    if hits:
        ev, names = [], []
        for s in hits:
            c = ctx.containers.get(s.target.container_id or "")
            names.append(f"{s.sig} to {s.target.comm} (PID 1 of {c.label if c else 'its container'})")
            ev.append(ctx.evidence(s.row, f"{s.sender_label} → {s.target_label}: {s.sig} result=ignored "
                                          "(PID 1 has no handler; the kernel drops it)"))
            if s.target.exit_ts is not None:
                how = f"killed by {s.target.exit_signal}" if s.target.exit_signal else f"exit code {s.target.exit_code}"
                ev.append(ctx.evidence(s.target.exit_row, f"{s.target.label} {how} at {fmt_t(ctx.rel(s.target.exit_ts))}"))
        return Finding(f"The kernel dropped {', '.join(names)}: a PID 1 without a handler ignores it, "
                       "so nothing stopped until SIGKILL.", ev)
    if ctx.has(C.SIGNAL_SENDER):
        return None
    # strace: a stop signal seen arriving at PID 1 that then lived until SIGKILL may have been dropped
    for s in ctx.runtime_stops:
        p = s.target
        if s.sig != "SIGKILL" and p.role in WRAPPER_ROLES and p.exit_signal == "SIGKILL":
            return Undecidable([C.SIGNAL_SENDER], f"{p.label} got {s.sig} and lived until SIGKILL; whether the "
                               "kernel dropped it needs signal_generate results")
    return None


@rule("signal-not-forwarded", "a wrapper got the stop signal but the app never did",
      "Replace the wrapper by the app (`exec nginx ...`), or use an init that forwards signals "
      "(tini, dumb-init; supervisord with stopsignal set per program).")
def signal_not_forwarded(ctx: PodContext) -> Finding | Undecidable | None:
    for c in ctx.containers.values():
        p1 = c.pid1
        s = c.stop_signal
        if p1 is None or s is None or p1.role not in WRAPPER_ROLES or s.sig == "SIGKILL":
            continue
        if s.result == "ignored" or s.handler == "ignore":
            continue      # dropped: that is pid1-signal-ignored
        apps = [p for p in c.processes if p is not p1 and not p.external]
        if not apps:
            continue
        kill_ts = min((x.ts for x in ctx.signals if x.sig == "SIGKILL" and x.from_outside and x.ts > s.ts), default=None)
        end = kill_ts if kill_ts is not None else float("inf")
        reached = [x for x in ctx.signals if x.target in apps and x.sig != "SIGKILL" and s.ts <= x.ts < end and x.reached]
        if reached:
            continue
        killed = [p for p in apps if p.exit_signal == "SIGKILL"]
        if not killed and kill_ts is None:
            continue
        ev = [ctx.evidence(s.row, f"{s.sender_label} → {s.target_label}: {s.sig}"
                                  + (f" (handler: {s.handler})" if s.handler else " delivered"))]
        for p in killed[:4]:
            ev.append(ctx.evidence(p.exit_row, f"{p.label} killed by SIGKILL at {fmt_t(ctx.rel(p.exit_ts))}, "
                                               "no signal reached it before"))
        return Finding(f"{p1.comm} (PID 1 of {c.label}) got {s.sig} but no signal reached "
                       f"{', '.join(sorted({p.comm for p in apps}))} before SIGKILL.", ev, about=c.id)
    return None


@rule("killed-after-grace", "the grace period ran out",
      "Make shutdown finish within terminationGracePeriodSeconds: fix the cause above, shorten the drain "
      "(worker_shutdown_timeout, process_control_timeout), or raise the grace period.")
def killed_after_grace(ctx: PodContext) -> Finding | Undecidable | None:
    if not ctx.stopped:
        return None
    kills = [s for s in ctx.signals if s.sig == "SIGKILL" and s.from_outside and s.target is not None
             and s.ts >= ctx.t0 and s.reached and not s.target.external]
    # PID 1 cannot be SIGKILLed from inside its own namespace: its death by SIGKILL came from outside
    pid1_killed = [p for p in ctx.procs.values() if p.is_pid1 and p.exit_signal == "SIGKILL" and not p.external]
    if not kills and not pid1_killed:
        return None
    ev = []
    first = min([s.ts for s in kills] + [p.exit_ts for p in pid1_killed if p.exit_ts is not None])
    for s in kills:
        ev.append(ctx.evidence(s.row, f"{s.sender_label} → {s.target_label}: SIGKILL"))
    for p in pid1_killed:
        if not any(s.target is p for s in kills):
            ev.append(ctx.evidence(p.exit_row, f"{p.label} killed by SIGKILL (from outside the container)"))
    victims = {s.target.pid for s in kills} | {p.pid for p in pid1_killed}
    n_open = int(ctx.open_mask(first).sum())
    extra = f"; {n_open} connection(s) still open" if n_open else ""
    grace = f" (grace period {ctx.grace_s:g} s)" if ctx.grace_s is not None else ""
    return Finding(f"{len(victims)} process(es) were still running at {fmt_t(ctx.rel(first))}{grace} and were "
                   f"SIGKILLed{extra}.", ev)
