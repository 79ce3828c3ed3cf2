"""Verdicts about stop signals that never did their job: dropped at PID 1, not forwarded by a
wrapper, replaced by the SIGKILL at the end of the grace period, or sent with the grace period
already spent by the preStop hook."""
from __future__ import annotations

from typing import Any

from ..correlate.pod import NOT_STOP, Container, PodContext, Signal, declared_hooks, deletion_ts, program_names
from ..correlate.processes import OTHER, Process
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
    n_open = len(ctx.conns.open_at(first))
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
            and p.pid not in sent and p not in already and not _reaped_with_init(ctx, p)]


NS_TEARDOWN_S = 1.0


def _reaped_with_init(ctx: PodContext, p: Any) -> bool:
    """When a container's init exits, the kernel SIGKILLs what is left in its PID namespace (a
    preStop hook still sleeping, say): that SIGKILL is the init's normal end, not the grace
    period's, unless the init itself was SIGKILLed."""
    c = ctx.containers.get(p.container_id or "")
    init = c.pid1 if c is not None else None
    return (init is not None and init is not p and init.exit_ts is not None and init.exit_signal != "SIGKILL"
            and 0 <= p.exit_ts - init.exit_ts <= NS_TEARDOWN_S)


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


def _hook_tolerance_s(grace: float) -> float:
    """How much earlier than the grace period a stop signal may come and still be the deadline's:
    the kubelet starts the hook a moment after the deletion, and the API's deletion time is whole
    seconds."""
    return max(1.0, 0.1 * grace)


@rule("prestop-exceeds-grace", "the preStop hook was still running when the grace period ran out",
      "Make terminationGracePeriodSeconds longer than the preStop hook plus the longest drain (requests, "
      "worker_shutdown_timeout, process_control_timeout), or shorten the hook: the kubelet abandons it at the "
      "deadline and gives the container only 2 s before SIGKILL.")
def prestop_exceeds_grace(ctx: PodContext) -> Finding | Undecidable | None:
    if not ctx.stopped:
        return None
    deleted = deletion_ts(ctx)
    grace = ctx.grace_s
    abandoned = []       # (container, hook, its stop signal, seconds waited, since what)
    for c in ctx.containers.values():
        s = c.stop_signal
        if s is None:
            continue
        hooks = _running_hooks(ctx, c, s)
        if not hooks:
            continue
        began = hooks[0].exec_ts
        start = deleted if deleted is not None and (began is None or deleted <= began) else began
        if start is None:
            continue
        waited = s.ts - start
        if grace is not None and waited < grace - _hook_tolerance_s(grace):
            continue     # not the deadline: the runtime stopped it for another reason while the hook ran
        abandoned.append((c, hooks[0], s, waited, "the deletion" if start == deleted else "the hook started"))
    if not abandoned:
        return None
    # the 2 s left hurt that container: its processes killed, its ports' connections cut or refused
    hook_pids = {p.pid for p in ctx.prestops} | {a[1].pid for a in abandoned}
    hurt, harm, said = [], [], []
    for a in abandoned:
        ev_c, said_c = _harm_after(ctx, a[0], a[2].ts, exclude=hook_pids)
        if ev_c:
            hurt.append(a)
            harm += ev_c
            said += [f"{x} ({a[0].label})" for x in said_c] if len(abandoned) > 1 else said_c
    if not hurt:
        lacking = ctx.lacking(C.TCP_STATES, C.KERNEL_RESETS)
        if lacking:
            c, hook, s, waited, since = abandoned[0]
            which = ", ".join(f"{a[0].label} ({a[1].comm})" for a in abandoned)
            return Undecidable(lacking, f"the preStop hook of {which} still ran when the stop signal came "
                               f"{waited:.3f} s after {since}; whether the 2 s left cut requests or left clients "
                               "refused needs TCP state transitions and kernel resets")
        return None      # the 2 s were enough this time: nothing was cut, reset, refused or killed
    abandoned = hurt
    ev, marks, names = [], [], []
    if deleted is not None:
        row = next((lc.row for lc in ctx.lifecycle_events("pod_deleted")), None)
        ev.append(ctx.evidence(row, "pod deleted" + (f" (grace period {grace:g} s)" if grace is not None else "")))
    kill_gap = None
    for c, hook, s, waited, since in abandoned:
        kill = min((x for x in ctx.signals if x.sig == "SIGKILL" and x.from_outside and x.ts > s.ts
                    and x.target is not None and x.target.container_id == c.id), key=lambda x: x.ts, default=None)
        names.append(f"{c.label} ({hook.filename or hook.comm})")
        if hook.exec_ts is not None:
            ev.append(ctx.evidence(ctx.exec_row(hook.pid), f"preStop exec into {c.label}: "
                                                             f"{hook.filename or hook.comm} [{hook.pid}]", ts=hook.exec_ts))
        ev.append(ctx.evidence(s.row, f"{s.sender_label} → {s.target_label}: {s.sig} {waited:.3f} s after {since}, "
                                      f"while {hook.label} still ran (the kubelet stopped waiting for it)"))
        if kill is not None:
            kill_gap = kill.ts - s.ts
            ev.append(ctx.evidence(kill.row, f"{kill.sender_label} → {kill.target_label}: SIGKILL {kill_gap:.3f} s "
                                             "after the stop signal"))
            marks.append({"kind": "span", "t0": ctx.rel(s.ts), "t1": ctx.rel(kill.ts), "lane": "runtime",
                          "label": f"{kill_gap:.1f} s left before SIGKILL"})
        marks.append({"kind": "span", "t0": ctx.rel(hook.exec_ts if hook.exec_ts is not None else s.ts - waited),
                      "t1": ctx.rel(s.ts), "lane": f"pid:{hook.pid}",
                      "label": "preStop still running when the grace period ran out"})
    ev += harm
    c, hook, s, waited, since = abandoned[0]
    grace_txt = f"{grace:g} s" if grace is not None else f"about {waited:.0f} s, as the recording does not name it"
    hooks_txt = (f"hook of {names[0]} was" if len(names) == 1 else f"hooks of {', '.join(names)} were")
    return Finding(f"The preStop {hooks_txt} still running when the grace period ({grace_txt}) ran "
                   f"out: the stop signal came {waited:.3f} s after {since}, leaving the drain the kubelet's "
                   f"2-second minimum" + (f" (SIGKILL {kill_gap:.3f} s later)" if kill_gap is not None else "")
                   + f"; then {', '.join(said)}.", ev, about=tuple(a[0].id for a in abandoned), marks=marks)


def _running_hooks(ctx: PodContext, c: Container, s: Signal) -> list[Process]:
    """The preStop hook processes of container c still running at its stop signal s. Besides the execs
    the recording saw, a recorder that attaches to processes (strace) sees a hook only once it runs,
    without its exec: then a process named as the pod declares the hook (pod_seen), not the
    container's init or app, that the stop signal found alive."""
    hooks = [p for p in ctx.prestops if p.container_id == c.id and p.exec_ts is not None
             and p.exec_ts <= s.ts and p.alive_at(s.ts)]
    if hooks:
        return hooks
    declared = declared_hooks(ctx) or {}
    want = declared.get(c.name or "")
    if want is None:
        return []
    return [p for p in c.processes if p.exec_ts is None and not p.is_pid1 and p.role == OTHER
            and want in program_names(p) and p.alive_at(s.ts)]


def _ports_of(ctx: PodContext, c: Container) -> set[int]:
    """The ports container c listens on: its listeners, else by its app (nginx serves, php-fpm is the
    FastCGI upstream) when the recording does not say which container a listener belongs to."""
    mine = {p for p, li in ctx.listeners.items() if li.container_id == c.id}
    unowned = [li for li in ctx.listeners.values() if li.container_id is None]
    if c.app == "nginx":
        mine |= {li.port for li in unowned if not li.upstream}
    elif c.app == "php-fpm":
        mine |= {li.port for li in unowned if li.upstream}
    return mine


def _harm_after(ctx: PodContext, c: Container, ts: float, exclude: set[int]) -> tuple[list[dict[str, Any]], list[str]]:
    """What the shortened drain hurt in container c from ts on: attempts refused on its ports,
    connections to its ports the pod reset or cut, its processes SIGKILLed (the abandoned hooks and
    their children excepted). (evidence, phrases)"""
    ev: list[dict[str, Any]] = []
    said: list[str] = []
    ports = _ports_of(ctx, c)
    refused = ctx.refused.at(since=ts).on_ports(ports)
    if refused:
        said.append(f"{len(refused)} connection attempt(s) refused")
        ev.append(ctx.evidence(refused.first(1)[0].row, f"the first of {said[-1]}"))
    cut = ctx.conns.server_side().on_ports(ports).ended(since=ts).cut_by_pod()
    if cut:
        said.append(f"{len(cut)} connection(s) reset or cut by the pod")
        (first,) = cut.first(1)
        ev.append(ctx.evidence(first.close_row, f"the first of {said[-1]}", ts=first.end_ts))
    killed = [p for p in c.processes if p.exit_signal == "SIGKILL" and p.exit_ts is not None and p.exit_ts >= ts
              and not p.external and p.pid not in exclude]
    if killed:
        p = min(killed, key=lambda p: p.exit_ts)
        said.append(f"{len(killed)} process(es) SIGKILLed")
        ev.append(ctx.evidence(p.exit_row, f"{p.label} killed by SIGKILL"))
    return ev, said
