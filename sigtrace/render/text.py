"""Text for a person: per pod a header, the timeline table and the verdicts with their fixes."""
from __future__ import annotations

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ..report.model import UNDECIDABLE, PodReport, ReportSet
from .safe import safe_text, visible

TYPE_STYLE = {
    "stop_signal": "bold yellow", "prestop": "bold cyan", "signal": "yellow", "exit": "magenta",
    "listener_close": "bold blue", "conn_reset": "bold red", "conn_cut": "red", "refused": "bold red",
    "conn_close": "dim", "lifecycle": "green", "exec": "cyan",
}


def fmt_t(t: float | None) -> str:
    return "" if t is None else f"{t:+.3f}"


def render_pod(console: Console, pod: PodReport, brief: bool = False) -> None:
    # every string below that came from the recording goes through visible(): see render/safe.py
    head = safe_text(f"pod {pod.title}", style="bold")
    if pod.pod_name:
        head.append(visible(f"  uid {pod.pod_uid}"), style="dim")
    console.rule(head)
    for c in pod.containers:
        p1 = c.get("pid1") or {}
        stop = c.get("stop_signal")
        line = safe_text(f"  container {c.get('name') or c['container_id'][:12]}", style="bold")
        line.append(visible(f"  app {c.get('app') or '?'}, PID 1 {p1.get('comm', '?')} ({p1.get('role', '?')})"))
        if stop:
            line.append(visible(f", stop signal {stop['sig']} from {stop['sender']}"
                                + (f" [{stop['result']}]" if stop.get("result") else "")))
        if c.get("exit_t") is not None:
            how = p1.get("exit_signal") or f"code {p1.get('exit_code')}"
            line.append(f", exited {fmt_t(c['exit_t'])} s ({how})")
        console.print(line)
    if pod.trigger:
        console.print(render_trigger(pod.trigger))
    if not pod.stopped:
        console.print("  no stop observed for this pod in the recording", style="dim")
        return
    if not brief:
        table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
        table.add_column("t (s)", justify="right", no_wrap=True)
        table.add_column("container", no_wrap=True)
        table.add_column("what")
        for e in pod.timeline:
            table.add_row(fmt_t(e["t"]), safe_text(e.get("container") or ""),
                          safe_text(e["text"], style=TYPE_STYLE.get(e["type"], "")))
        console.print(table)
    s = pod.stats
    console.print(
        f"  clients: {s['client_connections']} connections, {s['client_resets']} reset by the pod, "
        f"{s['client_cut_at_exit']} cut at exit, {s['refused_attempts']} refused; upstream (FastCGI): "
        f"{s['upstream_connections']} connections, {s['upstream_resets']} reset, {s['upstream_refused']} refused; "
        f"trigger → last exit: {s['trigger_to_last_exit_s'] if s['trigger_to_last_exit_s'] is not None else '?'} s"
        + (f" (grace {s['grace_period_s']:g} s)" if s.get("grace_period_s") is not None else ""), highlight=False)
    if not pod.verdicts:
        hurt = s["client_resets"] + s["client_cut_at_exit"] + s["refused_attempts"] + s["upstream_resets"] + s["upstream_refused"]
        msg = ("clean shutdown: signals handled, no resets or refusals, exited before the grace period" if not hurt else
               "no verdict: resets or refusals were seen (counted above) but match no cause in the catalog; see the timeline")
        console.print(Panel(msg, title="verdict", border_style="green" if not hurt else "yellow"))
        return
    for v in pod.verdicts:
        body = [safe_text(v.summary)]
        for e in v.evidence:
            body.append(safe_text(f"  {fmt_t(e['t']):>9}  {e['what']}", style="dim"))
        body.append(Text(f"fix: {v.fix}", style="bold green"))
        undec = v.status == UNDECIDABLE
        console.print(Panel(Group(*body), title=Text(f"{v.id}" + (" (undecidable)" if undec else "")),
                            title_align="left", border_style="yellow" if undec else "red"))


def render_trigger(trigger: dict) -> Text:
    """What stopped the pod (correlate.trigger): names come from the API, so through visible()."""
    line = safe_text(f"  stopped by: {trigger.get('kind')}", style="bold")
    when = f" (deletion at {fmt_t(trigger['t'])} s)" if trigger.get("t") is not None else ""
    line.append(visible(f"  {trigger.get('text', '')}{when}"))
    return line


def render_outside_stop(entries: list[dict], console: Console) -> None:
    """The node-level summary of resets on pods that were not stopping (correlate.outside)."""
    console.rule(Text("resets outside a stop (no stop caused these)", style="bold"))
    for e in entries:
        name = f"{e['namespace']}/{e['pod_name']}" if e.get("pod_name") and e.get("namespace") else (e.get("pod_name") or e["pod_uid"])
        head = safe_text(f"  pod {name}", style="bold")
        head.append(visible(f": {e['client_resets']} client reset(s), {e['upstream_resets']} FastCGI reset(s)"
                            + (" before its stop" if e.get("stopped") else " (the pod did not stop)")))
        console.print(head)
        for cause in e.get("causes", []):
            console.print(safe_text(f"    {cause}"), style="dim")


def render_text(rs: ReportSet, console: Console, brief: bool = False) -> None:
    for pod in rs.pods:
        render_pod(console, pod, brief=brief)
    if rs.outside_stop:
        render_outside_stop(rs.outside_stop, console)
    notes = list(rs.incomplete)
    if rs.lost_events and not any("lost" in n for n in notes):
        notes.append(f"{rs.lost_events} events were lost by the recorder")
    if notes:
        console.print(safe_text("incomplete data: " + "; ".join(notes), style="bold yellow"))


def text_document(rs: ReportSet) -> str:
    """The text report as one string (a file, a pipe): no colour, 140 columns."""
    import io
    buf = io.StringIO()
    render_text(rs, Console(file=buf, width=140, force_terminal=False))
    return buf.getvalue()
