"""Tenant-controlled text never reaches the operator's terminal raw (issue: hostile input).

A process name (comm) or pod name can hold escape sequences (clear screen, OSC 0 window title,
OSC 8 hyperlinks), bidi overrides, or rich markup. The text report, analyze's tables and the live
view show them as visible escapes and never interpret them."""
from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

from rich.console import Console

from conftest import REPO
from sigtrace.render.safe import plain, visible

DATA = Path(__file__).parent / "data"
CLEAR = "\x1b[2J"
TITLE = "\x1b]0;owned\x07"
LINK = "\x1b]8;;http://evil.example/\x1b\\x\x1b]8;;\x1b\\"
MARKUP = "[link=http://evil.example/]web[/link][/bad]"


def hostile_recording(tmp_path: Path) -> Path:
    """The article recording with the preStop's comm and the pod's name set by a hostile tenant."""
    out = tmp_path / "rec"
    shutil.copytree(DATA / "article", out)
    lines = []
    for line in (out / "events.jsonl").read_text().splitlines():
        e = json.loads(line)
        if e.get("pid") == 3001:                           # the preStop `nginx -s quit`
            e["comm"] = CLEAR + "\u202e" + "nginx"
        if e["kind"] == "pod_lifecycle":
            e["pod_name"] = TITLE + MARKUP
            e["namespace"] = LINK
        lines.append(json.dumps(e))
    (out / "events.jsonl").write_text("\n".join(lines) + "\n")
    return out


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sigtrace", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=120, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"})


def test_visible_escapes_controls_and_bidi_and_keeps_the_rest():
    assert visible(CLEAR) == "\\x1b[2J"
    assert visible("a\u202eb\tc\x7f\x9bé漢") == "a\\u202eb\\x09c\\x7f\\x9bé漢"
    assert plain("[bold]x[/bold]") == "\\[bold]x\\[/bold]"


def test_text_report_shows_escapes_and_no_markup(tmp_path):
    p = run("report", str(hostile_recording(tmp_path)))
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out
    assert "\\x1b[2J\\u202enginx" in out                  # the preStop's name, visibly escaped
    assert "[link=http://evil.example/]web[/link][/bad]" in out      # markup shown as text
    assert "prestop-quit-superseded" in out               # and the diagnosis is unchanged


def test_analyze_tables_take_no_markup_from_data(tmp_path):
    rec = hostile_recording(tmp_path)
    csv = tmp_path / "x.csv"
    p = run("export", str(rec), "--csv", str(csv))
    assert p.returncode == 0, p.stderr
    p = run("analyze", str(csv))
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    assert "\x1b" not in p.stdout


def test_live_table_escapes_pod_names():
    from sigtrace.record.live import Rates, render_table
    rates = Rates()
    rates.add({"pod_uid": CLEAR + "[red]x[/red]"})
    buf = io.StringIO()
    Console(file=buf, width=120, force_terminal=False).print(render_table(1.0, 1, rates, {}, "/tmp/x"))
    assert "\x1b" not in buf.getvalue() and "\\x1b[2J[red]x[/red]" in buf.getvalue()


def test_html_report_shows_escapes_too(tmp_path):
    out = tmp_path / "r.html"
    p = run("report", str(hostile_recording(tmp_path)), "--format", "html", "-o", str(out))
    assert p.returncode == 0, p.stderr
    page = out.read_text()
    assert "\x1b" not in page and "\x07" not in page and "\u202e" not in page
    assert "\\x1b[2J\\u202enginx" in page
