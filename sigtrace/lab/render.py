"""Rich rendering of a lab run: the client's view over time and each container's stop."""
from __future__ import annotations

from rich.table import Table

from ..render.safe import plain

from .load import OUTCOMES
from .scenario import LabResult

_STYLE = {"ok": "green", "http_502": "bold red", "http_5xx": "red", "http_other": "yellow", "reset": "bold red",
          "closed": "red", "refused": "magenta", "timeout": "yellow"}


def _rel(ts: float | None, origin: float) -> str:
    return "" if ts is None else f"{ts - origin:+.3f}s"


def client_table(r: LabResult, bucket_s: float = 0.5) -> Table:
    """Outcome counts per time bucket (request end time, relative to the deletion)."""
    counts = r.load.counts()
    shown = [o for o in OUTCOMES if counts[o] or o in ("ok", "http_502", "reset", "refused")]
    t = Table(title=f"client view: {r.scenario.concurrency} clients, {r.scenario.request_ms} ms requests, "
                    f"load balancer sends {r.scenario.lb_delay_s:g}s after deletion",
              title_justify="left")
    t.add_column("t (end, from deletion)", justify="right")
    for o in shown:
        t.add_column(o, justify="right", style=_STYLE.get(o))
    for start, c in r.load.timeline(r.deleted_at, bucket_s):
        t.add_row(f"{start:+.1f}s", *[str(c[o]) if c[o] else "" for o in shown])
    t.add_row("total", *[str(counts[o]) for o in shown], style="bold", end_section=True)
    return t


def stop_table(r: LabResult) -> Table:
    """What the kubelet did to each container and how it ended (times from the deletion)."""
    t = Table(title="pod stop (kubelet + runc), times from deletion", title_justify="left")
    for col in ("container", "preStop (runc exec)", "stop signal (runc kill)", "KILL at grace end", "exited",
                "exit"):
        t.add_column(col)
    for name, o in r.outcomes.items():
        if o.exit_signal is not None:
            exit_ = f"[red]signal {o.exit_signal}[/red]"
        elif o.exit_code is not None:
            exit_ = f"code {o.exit_code}" if o.exit_code == 0 else f"[red]code {o.exit_code}[/red]"
        else:
            exit_ = "?"
        pre = (f"{plain(' '.join(o.prestop))}\n{_rel(o.prestop_start, r.deleted_at)} .. "
               f"{_rel(o.prestop_end, r.deleted_at)}" if o.prestop_start else "")
        sent = (f"{o.stop_signal} {_rel(o.stop_sent, r.deleted_at)}" if o.stop_sent
                else f"{o.stop_signal}: not sent, already exited")
        kill = f"[red]{_rel(o.kill_sent, r.deleted_at)}[/red]" if o.kill_sent else ""
        t.add_row(name, pre, sent, kill, _rel(o.exited, r.deleted_at), exit_)
    return t


def summary_line(r: LabResult) -> str:
    c = r.load.counts()
    total = sum(c.values())
    failed = total - c["ok"]
    bad = ", ".join(f"{c[o]} {o}" for o in OUTCOMES if o != "ok" and c[o])
    if failed:
        return f"[bold red]{failed} of {total} requests failed[/bold red] ({bad})"
    return f"[bold green]all {total} requests answered 200[/bold green]"
