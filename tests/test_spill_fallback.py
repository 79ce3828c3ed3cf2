"""When the temporary part files of a big recording cannot be written (disk full, too many open
files), the report reads the recording whole: the same report, and one warning line on stderr
saying so (not a note in the report: its data is complete)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sigtrace.events.reader import read_recording
from sigtrace.render.json import render_json
from sigtrace.report import build_reports
from sigtrace.report.build import report_recording

ARTICLE = Path(__file__).parent / "data" / "lab" / "bpf_article"
UID = "d796f809-547d-4a11-a23a-5e5afc93cf3e"       # its one pod
PART_BYTES = 2000


@pytest.fixture(scope="module")
def rec(tmp_path_factory) -> Path:
    """The article's recording with its pod 12 times over (other uids): rows spill to many part files."""
    out = tmp_path_factory.mktemp("pods") / "rec"
    out.mkdir()
    text = (ARTICLE / "events.jsonl").read_text()
    (out / "events.jsonl").write_text("".join(text.replace(UID, UID[:-4] + f"{i:04x}") for i in range(12)))
    (out / "meta.json").write_text((ARTICLE / "meta.json").read_text())
    return out


def whole(rec: Path) -> str:
    r = read_recording(rec)
    return render_json(build_reports(r.events, r.meta, r.incomplete))


def warnings_in(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("sigtrace: warning:")]


def test_a_full_disk_reads_the_recording_whole_and_says_so(rec, tiny_tmpfs, monkeypatch, capfd):
    monkeypatch.setenv("SIGTRACE_TMPDIR", str(tiny_tmpfs))
    rs = report_recording(rec, lanes=False, part_bytes=PART_BYTES)
    assert render_json(rs) == whole(rec)                         # nothing about the spill in the report
    (line,) = warnings_in(capfd.readouterr().err)
    assert line == (f"sigtrace: warning: could not spill parts to {tiny_tmpfs} (No space left on device); "
                    "reading the recording whole (more memory); set SIGTRACE_TMPDIR to a roomier place")
    assert list(tiny_tmpfs.iterdir()) == []                   # the partial parts are removed


def test_a_missing_spill_directory_is_said_too(rec, tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("SIGTRACE_TMPDIR", str(tmp_path / "gone"))
    assert render_json(report_recording(rec, lanes=False, part_bytes=PART_BYTES)) == whole(rec)
    (line,) = warnings_in(capfd.readouterr().err)
    assert f"could not spill parts to {tmp_path / 'gone'} (No such file or directory)" in line


def test_too_many_open_files_reads_the_recording_whole_and_says_so(rec, tmp_path):
    # a child with a few descriptors to spare: the spill runs out of them (EMFILE) after a few parts
    script = textwrap.dedent(f"""
        import os, resource, sys
        from sigtrace.render.json import render_json
        from sigtrace.report.build import report_recording
        report_recording({str(rec)!r}, lanes=False, part_bytes=10 ** 9)   # imports everything it needs
        spare = len(os.listdir("/proc/self/fd")) + 4
        resource.setrlimit(resource.RLIMIT_NOFILE, (spare, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
        sys.stdout.write(render_json(report_recording({str(rec)!r}, lanes=False, part_bytes={PART_BYTES})))
    """)
    env = dict(os.environ, SIGTRACE_TMPDIR=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout) == json.loads(whole(rec))
    (line,) = warnings_in(done.stderr)
    assert f"could not spill parts to {tmp_path} (Too many open files)" in line
    assert list(tmp_path.iterdir()) == []
