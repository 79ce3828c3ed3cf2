"""Verdicts about stop signals that never did their job: dropped at PID 1, not forwarded by a
wrapper, or replaced by the SIGKILL at the end of the grace period."""
from __future__ import annotations

from typing import Any

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
    unsent = [] if ctx.has(C.SIGNAL_SENDER) else _killed_by_unseen_sender(ctx, pid1_killed)
    cut, cut_victims = _killed_with_the_recorder(ctx)
    if not kills and not pid1_killed and not unsent and not cut_victims:
        return None
    ev = []
    first = min([s.ts for s in kills] + [p.exit_ts for p in pid1_killed + unsent if p.exit_ts is not None]
                + ([cut.after] if cut_victims else []))
    for s in kills:
        ev.append(ctx.evidence(s.row, f"{s.sender_label} → {s.target_label}: SIGKILL"))
    for p in pid1_killed:
        if not any(s.target is p for s in kills):
            ev.append(ctx.evidence(p.exit_row, f"{p.label} killed by SIGKILL (from outside the container)"))
    for p in unsent[:4]:
        ev.append(ctx.evidence(p.exit_row, f"{p.label} killed by SIGKILL that no traced process sent "
                                           "(from outside the container)"))
    if cut_victims:
        when = (f"between {fmt_t(ctx.rel(cut.after))} and {fmt_t(ctx.rel(cut.before))}" if cut.before is not None
                else f"after {fmt_t(ctx.rel(cut.after))}")
        others = ", ".join(f"{comm}[{pid}]" for pid, comm in sorted(cut.running.items()) if pid != cut.init.pid)
        ev.append(ctx.evidence(None, f"{cut.init.label} ended {when} without calling exit (the recorder in its PID "
                               f"namespace records every exit before it happens, and was killed with it): SIGKILL "
                               f"from outside" + (f", together with {others}" if others else ""), ts=cut.after))
    victims = ({s.target.pid for s in kills} | {p.pid for p in pid1_killed + unsent}
               | (set(cut.running) if cut_victims else set()))
    n_open = int(ctx.open_mask(first).sum())
    extra = f"; {n_open} connection(s) still open" if n_open else ""
    grace = f" (grace period {ctx.grace_s:g} s)" if ctx.grace_s is not None else ""
    return Finding(f"{len(victims)} process(es) were still running at {fmt_t(ctx.rel(first))}{grace} and were "
                   f"SIGKILLed{extra}.", ev)


def _killed_by_unseen_sender(ctx: PodContext, already: list) -> list:
    """Without signal_sender (strace), the runtime's SIGKILL is invisible: it comes from outside the
    traced processes, and a SIGKILL is never reported on delivery. A pod process that died by SIGKILL
    after the stop began, with no traced process sending it one (php-fpm's master killing its
    children would be a traced kill()), was killed from outside. This is what a recorder left when
    it ran in the container's PID namespace and died with its PID 1: the workers' deaths by SIGKILL
    reach the file, PID 1's does not."""
    sent = {s.target.pid for s in ctx.signals if s.sig == "SIGKILL" and s.target is not None}
    return [p for p in ctx.procs.values()
            if p.exit_signal == "SIGKILL" and not p.external and p.exit_ts is not None and p.exit_ts >= ctx.t0
            and p.pid not in sent and p not in already]


# what kills a process although it has no handler and PID 1 is protected: the kernel's own signals
CRASH_SIGNALS = frozenset({"SIGSEGV", "SIGBUS", "SIGILL", "SIGFPE", "SIGABRT", "SIGSYS", "SIGTRAP"})


def _killed_with_the_recorder(ctx: PodContext) -> tuple[Any, list]:
    """The recording was cut by the end of a PID 1 that never called exit (cut.RecorderCut) after the
    stop began: it was SIGKILLed, with the processes of its container still running (cut.running);
    a crash would show its signal's delivery first."""
    cut = ctx.recorder_cut
    if cut is None or ctx.t0 is None or cut.after < ctx.t0 or ctx.has(C.SIGNAL_SENDER):
        return cut, []
    if any(s.target is cut.init and s.sig in CRASH_SIGNALS and s.handler == "default" for s in ctx.signals):
        return cut, []
    return cut, [cut.init]
