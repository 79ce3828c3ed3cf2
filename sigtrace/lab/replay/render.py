"""A replay for a person: settings learned, both client views side by side, the verdicts before and
after, and the changes as a patch to apply. Recorded strings are tenant data: shown through
render.safe.plain so a hostile name cannot drive the terminal."""
from __future__ import annotations

from typing import Any

import yaml
from rich.console import Console, Group
from rich.panel import Panel
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from ...render.safe import plain
from ..load import OUTCOMES
from .fixes import config_lines, pod_patch
from .learn import as_argv
from .run import Replay

_STYLE = {"ok": "green", "http_502": "bold red", "reset": "bold red", "refused": "magenta"}


def _value(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, list):
        return ",".join(map(str, v))
    return plain(str(v))


def settings_table(rp: Replay) -> Table:
    t = Table(title=f"what the recording says about {plain(rp.learned.pod_name or rp.learned.pod_uid)}'s shutdown",
              title_justify="left")
    t.add_column("setting")
    t.add_column("as recorded")
    t.add_column("learned from")
    t.add_column("fixed", style="bold")
    fixed = rp.fixed.settings if rp.fixed else {}
    for name, s in rp.learned.settings.items():
        after = fixed.get(name, s.value)
        t.add_row(name, _value(s.value), plain(s.source) if s.learned else f"[yellow]{plain(s.source)}[/yellow]",
                  _value(after) if after != s.value else "")
    return t


def client_table(rp: Replay) -> Table:
    t = Table(title="the client's view", title_justify="left")
    t.add_column("outcome")
    t.add_column("as recorded", justify="right")
    if rp.fixed:
        t.add_column("fixed", justify="right")
    runs = [rp.as_recorded] + ([rp.fixed] if rp.fixed else [])
    for o in OUTCOMES:
        counts = [r.client[o] for r in runs]
        if any(counts) or o in ("ok", "http_502", "reset", "refused"):
            t.add_row(o, *[str(c) for c in counts], style=_STYLE.get(o) if any(counts) else None)
    return t


def verdict_table(rp: Replay) -> Table:
    t = Table(title="verdicts", title_justify="left")
    t.add_column("verdict")
    t.add_column("recording")
    t.add_column("replay as recorded")
    if rp.fixed:
        t.add_column("replay fixed")
    ids = list(dict.fromkeys(rp.learned.verdicts + rp.as_recorded.verdicts + (rp.fixed.verdicts if rp.fixed else [])))
    if not ids:
        t.add_row("(none)", "", "", *([""] if rp.fixed else []))
    for v in ids:
        row = [v, *("[red]yes[/red]" if v in r else "-" for r in
                    [rp.learned.verdicts, rp.as_recorded.verdicts] + ([rp.fixed.verdicts] if rp.fixed else []))]
        t.add_row(*row)
    return t


def patch_panel(rp: Replay) -> Panel | None:
    if not rp.fixed or not rp.changes:
        return None
    parts: list[Any] = []
    patch = pod_patch(rp.fixed.settings, rp.changes, rp.learned.containers)
    if patch:
        text = yaml.safe_dump(patch, sort_keys=False)
        parts.append(Text("kubectl patch deployment <name> --patch-file fix.yaml   (strategic merge; fix.yaml:)"))
        parts.append(Syntax(text, "yaml", theme="ansi_dark", background_color="default"))
    for where, lines in config_lines(rp.fixed.settings, rp.changes).items():
        parts.append(Text(f"{where}:"))
        parts.extend(Text(f"    {plain(l)}") for l in lines)
    return Panel(Group(*parts), title="the fix as a patch", title_align="left")


def changes_table(rp: Replay) -> Table:
    t = Table(title="the fixes the verdicts name", title_justify="left")
    for col in ("setting", "before", "after", "because", "why"):
        t.add_column(col)
    for c in rp.changes:
        t.add_row(c.setting, _value(c.before), _value(c.after), ", ".join(c.because), c.why)
    return t


def conclusion(rp: Replay) -> list[str]:
    out = []
    diff = rp.differences()
    if rp.reproduced:
        out.append("[green]reproduced[/green]: the replay shows the recorded verdicts"
                   + (f" ({', '.join(rp.learned.verdicts)})" if rp.learned.verdicts else " (none)"))
    else:
        out.append("[yellow]not reproduced[/yellow]: " + "; ".join(
            f"{what.replace('_', ' ')}: {', '.join(ids)}" for what, ids in diff.items() if ids)
            + " (a setting the recording could not show differs; see the defaults above)")
    if rp.fixed is None:
        out.append("no verdict to fix: the recorded shutdown was clean" if not rp.as_recorded.verdicts
                   else "no fix applies to these verdicts")
    elif rp.fix_proven:
        out.append(f"[bold green]fix proven[/bold green]: no verdict, all {sum(rp.fixed.client.values())} "
                   "requests answered 200")
    else:
        left = [f"{n} {o}" for o, n in rp.fixed.client.items() if o != "ok" and n]
        out.append("[bold red]not clean after one round of fixes[/bold red]: "
                   + ", ".join(rp.fixed.verdicts + left))
    if rp.learned.partial:
        out.append("[yellow]partial[/yellow]: settings marked in yellow took the lab's defaults")
    return out


def show(rp: Replay, console: Console) -> None:
    for note in rp.learned.notes:
        console.print(f"[yellow]note:[/yellow] {plain(note)}", highlight=False)
    console.print(settings_table(rp))
    console.print("as recorded:  " + plain(as_argv(rp.as_recorded.settings)), highlight=False, soft_wrap=True)
    if rp.fixed:
        console.print("fixed:        " + plain(as_argv(rp.fixed.settings)), highlight=False, soft_wrap=True)
    console.print(client_table(rp))
    console.print(verdict_table(rp))
    panel = patch_panel(rp)
    if panel is not None:
        console.print(changes_table(rp))
        console.print(panel)
    for line in conclusion(rp):
        console.print(line, highlight=False)
    console.print(f"recordings: {plain(str(rp.as_recorded.result.out_dir))}"
                  + (f", {plain(str(rp.fixed.result.out_dir))}" if rp.fixed else ""), highlight=False)
