"""HTML: one self-contained file (inline CSS and SVG, no scripts, no external assets) with, per pod,
a timeline picture (lanes for the runtime, each container's processes, and connections), the
verdicts, and the timeline table."""
from __future__ import annotations

from html import escape as _html_escape
from typing import Any

from ..report.model import UNDECIDABLE, PodReport, ReportSet
from .safe import visible


def escape(value: Any) -> str:
    """Data for the page: HTML-escaped, and control and bidi characters shown as escapes (a tenant's
    process name must not reorder what the reader sees), as in the text report."""
    return _html_escape(visible(value))

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1d2330;background:#fafbfc}
h1{font-size:20px}h2{font-size:17px;margin-top:32px;border-bottom:1px solid #d8dde6;padding-bottom:4px}
.meta{color:#5b6475}.verdict{border-left:5px solid #d1383d;background:#fff;padding:8px 12px;margin:10px 0;box-shadow:0 1px 2px #0001}
.verdict.undecidable{border-color:#d99a1e}.verdict.clean{border-color:#2f9e57}.verdict h3{margin:0 0 4px;font-size:15px}
.fix{color:#1f6f3f;font-weight:600}.ev{color:#5b6475;font-family:ui-monospace,monospace;font-size:12px;margin:0;padding-left:16px}
table{border-collapse:collapse;font-size:12.5px;background:#fff}td,th{padding:2px 8px;border-bottom:1px solid #eef0f4;text-align:left}
td.t{text-align:right;font-family:ui-monospace,monospace;white-space:nowrap}
.stop_signal,.conn_reset,.refused{color:#b3261e;font-weight:600}.prestop{color:#0b6e99;font-weight:600}.exit{color:#7a3db8}
.listener_close{color:#1f4fb3;font-weight:600}.conn_close{color:#8a93a3}.note{color:#9a6a00}
svg text{font-family:system-ui,sans-serif}.legend span{display:inline-block;margin-right:14px;font-size:12px}
"""
SIG_COLORS = {"SIGTERM": "#d1383d", "SIGINT": "#d1383d", "SIGQUIT": "#2f9e57", "SIGKILL": "#111111"}
LANE_H, LABEL_W, PLOT_W, TOP = 26, 260, 820, 30


SYMLOG_UNIT_S = 0.005    # below this, time is linear; above, logarithmic: milliseconds and seconds both readable


def _sl(t: float) -> float:
    import math
    return math.copysign(math.log1p(abs(t) / SYMLOG_UNIT_S), t)


def _x(t: float, t_min: float, t_max: float) -> float:
    """Symmetric-log time axis: a shutdown has its action in the first milliseconds and its end
    (SIGKILL at grace) tens of seconds later; a linear axis would crush the first into one pixel."""
    lo, hi = _sl(t_min), _sl(t_max)
    span = (hi - lo) or 1.0
    return LABEL_W + (_sl(min(max(t, t_min), t_max)) - lo) / span * PLOT_W


def _lanes(pod: PodReport) -> list[tuple[str, str, Any]]:
    """(lane key, label, payload) from top to bottom."""
    lanes = [("runtime", "runtime (runc / kubelet)", None)]
    for c in pod.containers:
        for p in c["processes"]:
            lanes.append((f"pid:{p['pid']}", f"{c.get('name') or c['container_id'][:12]} · {p['role']} {p['comm']}[{p['pid']}]", p))
    ports = sorted({(x["port_class"], x["port"]) for x in pod.connections})
    for cls, port in ports:
        lanes.append((f"port:{port}", f"{'FastCGI' if cls == 'upstream' else 'clients'} :{port} connections", port))
    if any(e["type"] == "refused" for e in pod.timeline):
        lanes.append(("refused", "refused attempts", None))
    return lanes


def svg_timeline(pod: PodReport) -> str:
    ts = [e["t"] for e in pod.timeline if e.get("t") is not None]
    if not ts:
        return "<p class='meta'>no events to draw</p>"
    t_min, t_max = min(ts + [0.0]), max(ts + [0.0])
    pad = (t_max - t_min) * 0.03 or 0.05
    t_min, t_max = t_min - pad, t_max + pad
    lanes = _lanes(pod)
    y_of = {key: TOP + i * LANE_H for i, (key, _, _) in enumerate(lanes)}
    h = TOP + len(lanes) * LANE_H + 30
    w = LABEL_W + PLOT_W + 20
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img">',
           f'<rect width="{w}" height="{h}" fill="#fff"/>']
    for i, (key, label, _) in enumerate(lanes):
        y = y_of[key]
        if i % 2 == 0:
            out.append(f'<rect x="0" y="{y - LANE_H / 2}" width="{w}" height="{LANE_H}" fill="#f4f6f9"/>')
        out.append(f'<text x="6" y="{y + 4}" font-size="11.5" fill="#333">{escape(label[:42])}</text>')
    # time axis (symlog): ticks at 1-2-5 steps, thinned so labels do not collide
    last_x = -1e9
    for t in TICKS:
        if not (t_min <= t <= t_max):
            continue
        x = _x(t, t_min, t_max)
        if x - last_x < 44:
            continue
        last_x = x
        out.append(f'<line x1="{x:.1f}" y1="{TOP - 16}" x2="{x:.1f}" y2="{h - 24}" stroke="#e3e7ee"/>')
        out.append(f'<text x="{x:.1f}" y="{h - 10}" font-size="10.5" fill="#667" text-anchor="middle">{_tick_label(t)}</text>')
    x0 = _x(0.0, t_min, t_max)
    out.append(f'<line x1="{x0:.1f}" y1="{TOP - 18}" x2="{x0:.1f}" y2="{h - 24}" stroke="#0b6e99" stroke-width="1.5"/>'
               f'<text x="{x0 + 3:.1f}" y="{TOP - 20}" font-size="10.5" fill="#0b6e99">stop trigger</text>')
    # process lifelines
    for key, _, p in lanes:
        if not key.startswith("pid:"):
            continue
        y = y_of[key]
        start = p["exec_t"] if p["exec_t"] is not None else t_min
        end = p["exit_t"] if p["exit_t"] is not None else t_max
        out.append(f'<line x1="{_x(start, t_min, t_max):.1f}" y1="{y}" x2="{_x(end, t_min, t_max):.1f}" y2="{y}" '
                   f'stroke="#7a3db8" stroke-width="4" stroke-linecap="round" opacity="0.55"/>')
    # connections as bars, colour by how they ended
    colors = {"rst": "#d1383d", "fin": "#8a93a3", "open": "#2f9e57", "refused": "#d1383d"}
    for x in pod.connections:
        y = y_of.get(f"port:{x['port']}")
        if y is None:
            continue
        s = x["start_t"] if x["start_t"] is not None and x["start_t"] != float("-inf") else t_min
        e = x["end_t"] if x["end_t"] is not None else t_max
        col = "#e07b00" if (x["close_kind"] == "fin" and x["at_exit"] and x["closed_by"] == "pod") else colors.get(x["close_kind"], "#8a93a3")
        if x.get("rst_after_close"):
            col = colors["fin"]     # closed in order; the reset that followed is the verdict's mark
        out.append(f'<line x1="{_x(s, t_min, t_max):.1f}" y1="{y}" x2="{_x(e, t_min, t_max):.1f}" y2="{y}" stroke="{col}" '
                   f'stroke-width="7" opacity="0.35"/>')
    # markers
    for e in pod.timeline:
        t = e.get("t")
        if t is None:
            continue
        x = _x(t, t_min, t_max)
        label = "%+.4f s  %s" % (t, e["text"])
        tip = f"<title>{escape(label)}</title>"
        typ = e["type"]
        if typ in ("signal", "stop_signal"):
            key = "runtime" if "(runtime)" in (e.get("sender") or "") or "outside" in (e.get("sender") or "") else None
            tgt = _target_lane(e, y_of)
            col = SIG_COLORS.get(e.get("sig"), "#d99a1e")
            if tgt is not None:
                if key == "runtime":
                    out.append(f'<line x1="{x:.1f}" y1="{y_of["runtime"]}" x2="{x:.1f}" y2="{tgt - 6}" stroke="{col}" stroke-dasharray="3 2"/>')
                    out.append(f'<circle cx="{x:.1f}" cy="{y_of["runtime"]}" r="4" fill="{col}">{tip}</circle>')
                dashed = ' stroke="#000" stroke-width="1.5" stroke-dasharray="2 1"' if e.get("result") == "ignored" else ""
                out.append(f'<path d="M{x - 5:.1f},{tgt - 9} L{x + 5:.1f},{tgt - 9} L{x:.1f},{tgt - 1} Z" fill="{col}"{dashed}>{tip}</path>')
        elif typ == "exit":
            y = y_of.get(f"pid:{e.get('pid')}")
            if y is not None:
                col = "#111" if e.get("exit_signal") else "#7a3db8"
                out.append(f'<g stroke="{col}" stroke-width="2">{tip}<line x1="{x - 5:.1f}" y1="{y - 5}" x2="{x + 5:.1f}" y2="{y + 5}"/>'
                           f'<line x1="{x - 5:.1f}" y1="{y + 5}" x2="{x + 5:.1f}" y2="{y - 5}"/></g>')
        elif typ == "prestop":
            y = y_of.get(f"pid:{e.get('pid')}")
            if y is not None:
                out.append(f'<rect x="{x - 4:.1f}" y="{y - 7}" width="8" height="14" fill="#0b6e99">{tip}</rect>')
        elif typ == "listener_close":
            out.append(f'<line x1="{x:.1f}" y1="{TOP - 10}" x2="{x:.1f}" y2="{h - 24}" stroke="#1f4fb3" stroke-dasharray="5 3">{tip}</line>')
            y = y_of.get(f"port:{e.get('port')}", TOP - 10)
            anchor = "end" if x > LABEL_W + PLOT_W * 0.8 else "start"
            dx = -3 if anchor == "end" else 3
            out.append(f'<text x="{x + dx:.1f}" y="{y - 8}" font-size="10" fill="#1f4fb3" text-anchor="{anchor}">'
                       f'listener :{e.get("port")} closed</text>')
        elif typ in ("conn_reset", "conn_cut"):
            y = y_of.get(f"port:{e.get('port')}")
            if y is not None:
                col = "#d1383d" if typ == "conn_reset" else "#e07b00"
                out.append(f'<circle cx="{x:.1f}" cy="{y}" r="4.5" fill="{col}">{tip}</circle>')
        elif typ == "refused" and "refused" in y_of:
            out.append(f'<circle cx="{x:.1f}" cy="{y_of["refused"]}" r="3.5" fill="none" stroke="#d1383d" stroke-width="1.5">{tip}</circle>')
        elif typ == "lifecycle":
            out.append(f'<line x1="{x:.1f}" y1="{TOP - 10}" x2="{x:.1f}" y2="{h - 24}" stroke="#2f9e57" stroke-dasharray="1 3">{tip}</line>')
    marked = _verdict_marks(pod, y_of, t_min, t_max, out)
    out.append("</svg>")
    legend = ('<div class="legend"><span>▼ signal (red TERM/INT, green QUIT, black KILL)</span><span>✕ exit (black: killed)</span>'
              '<span>■ preStop exec</span><span style="color:#d1383d">● reset</span><span style="color:#e07b00">● cut at exit</span>'
              '<span style="color:#d1383d">○ refused</span><span style="color:#1f4fb3">┆ listener closed</span>'
              '<span style="color:#2f9e57">┆ lifecycle</span>'
              + (f'<span style="color:{MARK_COLOR}">⊢⊣ a verdict\'s evidence</span>'
                 f'<span style="color:#d1383d">╌✕ closed idle, then reset</span>' if marked else "")
              + '</div>')
    return "".join(out) + legend


MARK_COLOR = "#9a3412"


def _verdict_marks(pod: PodReport, y_of: dict[str, float], t_min: float, t_max: float, out: list[str]) -> bool:
    """Draw what the verdicts point at (Verdict.marks): a bracket over a lane for a span of time
    (the grace period a preStop ate, worker_shutdown_timeout), and for a connection closed idle and
    reset on the next request a dashed line from its close to an ✕ at the reset. True if any."""
    drawn = False
    seen: set[tuple] = set()
    for v in pod.verdicts:
        for mk in v.marks:
            y = y_of.get(str(mk.get("lane")))
            t0, t1 = mk.get("t0"), mk.get("t1")
            if y is None or t0 is None or t1 is None:
                continue
            key = (mk.get("kind"), mk.get("lane"), round(t0, 2), round(t1, 2))
            if key in seen:         # two containers' kills at one moment on the runtime's lane: one bracket
                continue
            seen.add(key)
            x0, x1 = _x(t0, t_min, t_max), _x(t1, t_min, t_max)
            label = str(mk.get("label", ""))
            tip = f"<title>{escape(f'{v.id}: {label} ({t0:+.3f} s .. {t1:+.3f} s)')}</title>"
            if mk.get("kind") == "race":
                out.append(f'<g>{tip}<line x1="{x0:.1f}" y1="{y}" x2="{x1:.1f}" y2="{y}" stroke="#d1383d" stroke-width="1.5" '
                           f'stroke-dasharray="3 2"/><line x1="{x1 - 4:.1f}" y1="{y - 4}" x2="{x1 + 4:.1f}" y2="{y + 4}" '
                           f'stroke="#d1383d" stroke-width="2"/><line x1="{x1 - 4:.1f}" y1="{y + 4}" x2="{x1 + 4:.1f}" '
                           f'y2="{y - 4}" stroke="#d1383d" stroke-width="2"/></g>')
            else:
                yb = y - LANE_H / 2 + 3
                out.append(f'<g stroke="{MARK_COLOR}" stroke-width="1.5">{tip}<line x1="{x0:.1f}" y1="{yb}" x2="{x1:.1f}" '
                           f'y2="{yb}"/><line x1="{x0:.1f}" y1="{yb}" x2="{x0:.1f}" y2="{yb + 6}"/>'
                           f'<line x1="{x1:.1f}" y1="{yb}" x2="{x1:.1f}" y2="{yb + 6}"/></g>')
                anchor = "end" if x1 > LABEL_W + PLOT_W * 0.8 else "start"
                out.append(f'<text x="{(x1 - 3 if anchor == "end" else x0 + 3):.1f}" y="{yb + 9}" font-size="9.5" '
                           f'fill="{MARK_COLOR}" text-anchor="{anchor}">{escape(label[:70])}</text>')
            drawn = True
    return drawn


def _target_lane(e: dict, y_of: dict[str, float]) -> float | None:
    import re
    m = re.search(r"→ .*?\[(\d+)\]", e.get("text", ""))
    return y_of.get(f"pid:{m.group(1)}") if m else None


_POS = [m * 10.0 ** e for e in range(-3, 3) for m in (1, 2, 5)] + [30.0, 60.0, 120.0, 300.0, 600.0]
TICKS = sorted([-t for t in _POS] + [0.0] + _POS)


def _tick_label(t: float) -> str:
    if t == 0:
        return "0"
    return f"{t * 1000:+.0f}ms" if abs(t) < 1 else f"{t:+g}s"


def _pod_html(pod: PodReport) -> str:
    parts = [f"<h2>pod {escape(pod.title)} <span class='meta'>uid {escape(pod.pod_uid)}</span></h2>"]
    if pod.trigger:
        t = pod.trigger
        when = f" (deletion at {t['t']:+.3f} s)" if t.get("t") is not None else ""
        # API names are tenants' text: control characters shown as escapes, as in the text report
        parts.append(f"<p><b>stopped by: {escape(visible(t.get('kind')))}</b> {escape(visible(str(t.get('text', '')) + when))}</p>")
    s = pod.stats
    parts.append("<p class='meta'>" + escape(
        f"clients: {s['client_connections']} connections, {s['client_resets']} reset by the pod, "
        f"{s['client_cut_at_exit']} cut at exit, {s['refused_attempts']} refused · FastCGI: {s['upstream_connections']} "
        f"connections, {s['upstream_resets']} reset, {s['upstream_refused']} refused · trigger → last exit: "
        f"{s['trigger_to_last_exit_s'] if s['trigger_to_last_exit_s'] is not None else '?'} s") + "</p>")
    if not pod.stopped:
        parts.append("<p class='meta'>no stop observed for this pod</p>")
        return "".join(parts)
    parts.append(svg_timeline(pod))
    hurt = s["client_resets"] + s["client_cut_at_exit"] + s["refused_attempts"] + s["upstream_resets"] + s["upstream_refused"]
    if not pod.verdicts and not hurt:
        parts.append("<div class='verdict clean'><h3>clean shutdown</h3>signals handled, no resets or refusals, exited before the grace period</div>")
    elif not pod.verdicts:
        parts.append("<div class='verdict undecidable'><h3>no verdict</h3>resets or refusals were seen (counted above) but match no cause in the catalog; see the timeline</div>")
    for v in pod.verdicts:
        cls = "verdict undecidable" if v.status == UNDECIDABLE else "verdict"
        ev = "".join("<p class='ev'>%s %s</p>" % ("" if e["t"] is None else "%+.3f s" % e["t"], escape(e["what"]))
                     for e in v.evidence)
        parts.append(f"<div class='{cls}'><h3>{escape(v.id)}{' (undecidable)' if v.status == UNDECIDABLE else ''}</h3>"
                     f"{escape(v.summary)}{ev}<p class='fix'>fix: {escape(v.fix)}</p></div>")
    rows = "".join("<tr><td class='t'>%s</td><td>%s</td><td class='%s'>%s</td></tr>" % (
        "" if e["t"] is None else "%+.4f" % e["t"], escape(e.get("container") or ""), escape(e["type"]), escape(e["text"]))
        for e in pod.timeline)
    parts.append(f"<details><summary>timeline ({len(pod.timeline)} entries)</summary><table><tr><th>t (s)</th><th>container</th>"
                 f"<th>what</th></tr>{rows}</table></details>")
    return "".join(parts)


def render_html(rs: ReportSet) -> str:
    notes = list(rs.incomplete)
    body = [f"<h1>sigtrace shutdown report</h1><p class='meta'>{len(rs.pods)} pod(s) · lost events: {rs.lost_events}</p>"]
    if notes:
        body.append("<p class='note'>incomplete data: " + escape("; ".join(notes)) + "</p>")
    body += [_pod_html(p) for p in rs.pods]
    if rs.outside_stop:
        body.append("<h2>resets outside a stop <span class='meta'>(pods that were not stopping: no stop caused "
                    "these)</span></h2>")
        for e in rs.outside_stop:
            name = f"{e['namespace']}/{e['pod_name']}" if e.get("pod_name") and e.get("namespace") else (e.get("pod_name") or e["pod_uid"])
            causes = "".join(f"<p class='ev'>{escape(c)}</p>" for c in e.get("causes", []))
            body.append(f"<div class='verdict undecidable'><h3>pod {escape(name)}</h3>{e['client_resets']} client reset(s), "
                        f"{e['upstream_resets']} FastCGI reset(s)"
                        f"{' before its stop' if e.get('stopped') else ' (the pod did not stop)'}{causes}</div>")
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>sigtrace report</title>"
            f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>\n")
