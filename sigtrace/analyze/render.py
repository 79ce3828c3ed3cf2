"""Rich tables for a person: per-pod summary, then the fleet aggregates."""
from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from ..render.safe import plain, safe_text
from .fleet import Fleet


def _num(value: Any, fmt: str = "{:g}") -> str:
    try:
        if value is None or value != value:   # None or NaN
            return "-"
    except TypeError:
        return "-"
    return fmt.format(value)


def _secs(value: Any) -> str:
    return _num(value, "{:.3f} s")


def _pct(value: float) -> str:
    return f"{100 * value:.0f}%"


def render(fleet: Fleet, console: Console, max_pods: int = 200) -> None:
    summary = fleet.summary()
    pods = fleet.pods
    t = Table(title=f"Pods ({len(pods)})", title_justify="left")
    for col, kw in (("node", {}), ("pod", {"overflow": "fold"}), ("verdicts", {"style": "bold red"}),
                    ("trigger → last exit", {"justify": "right"}), ("resets", {"justify": "right"}),
                    ("refused", {"justify": "right"}), ("lost events", {"justify": "right"})):
        t.add_column(col, **kw)
    # worst first: pods with verdicts, then the longest shutdowns
    ordered = pods.assign(_hurt=pods["verdicts"].str.len() > 0) \
        .sort_values(["_hurt", "shutdown_s"], ascending=[False, False], na_position="last")
    for row in ordered.head(max_pods).itertuples(index=False):
        # node, pod and verdict ids come from the data: never markup, no raw control characters
        verdicts = plain(row.verdicts) if row.verdicts else "[green]none[/]"
        if len(row.undecided):
            verdicts += f" [dim](undecidable: {plain(', '.join(map(str, row.undecided)))})[/]"
        t.add_row(safe_text(row.node), safe_text(row.pod), verdicts, _secs(row.shutdown_s), _num(row.resets),
                  _num(row.refused), _num(row.lost_events))
    if len(pods) > max_pods:
        t.caption = f"{len(pods) - max_pods} more pods: use --json for all"
    console.print(t)

    console.print(f"\n[bold]Fleet[/]: {summary['pods_stopped']} pods stopped ({summary['pods']} seen) on "
                  f"{summary['nodes']} node(s), [bold red]{summary['pods_hurt']} hurt[/] "
                  f"({_pct(summary['share_hurt'])} of stopped pods), "
                  f"{summary['lost_events']} events lost by recorders")
    v = Table(title="Verdicts", title_justify="left")
    for col in ("verdict", "pods", "share of stopped pods", "undecidable"):
        v.add_column(col, justify="left" if col == "verdict" else "right")
    for r in summary["verdicts"]:
        v.add_row(safe_text(r["id"]), str(r["pods"]), _pct(r["share"]), str(r["undecided"] or ""))
    if not summary["verdicts"]:
        v.add_row("[green]no verdicts: every shutdown was clean[/]", "", "", "")
    console.print(v)

    s = summary["shutdown"]
    console.print(f"Shutdown time (trigger → last exit) over {s['pods']} pods: "
                  f"p50 {_secs(s['p50_s'])}, p95 {_secs(s['p95_s'])}, max {_secs(s['max_s'])}")
    for key, title in (("by_namespace", "namespace"), ("by_deployment", "deployment")):
        rows = summary[key]
        if not rows:
            continue
        g = Table(title=f"Pods hurt per {title}", title_justify="left")
        for col in (title, "pods", "hurt", "share"):
            g.add_column(col, justify="left" if col == title else "right")
        for r in rows:
            g.add_row(safe_text(r[title]), str(r["pods"]), str(r["hurt"]), _pct(r["share"]))
        console.print(g)
    notes = list(fleet.incomplete) + [f"{node}: {n}" for node, d in fleet.nodes.items() for n in d["incomplete"]]
    if notes:
        console.print("[yellow]Incomplete data:[/]")
        for note in dict.fromkeys(notes):
            console.print(safe_text(f"  • {note}", style="yellow"), highlight=False)
