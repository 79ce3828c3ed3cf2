"""When export cannot spill (a full disk, a missing SIGTRACE_TMPDIR), a run is read whole: the same
export, and one warning line on stderr naming where, why and SIGTRACE_TMPDIR. The rows a dataset
export gathers by node and day have nowhere else to go: one error line, nothing written."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from sigtrace.errors import OutputError
from sigtrace.export import export_recordings

pytest.importorskip("pyarrow")

DATA = Path(__file__).parent / "data" / "fleet"


@pytest.fixture(scope="module")
def rec(tmp_path_factory) -> Path:
    """node-a's events 12 times over, a second apart: a spill far bigger than 8 KB."""
    out = tmp_path_factory.mktemp("big") / "rec"
    out.mkdir()
    lines = (DATA / "node-a" / "events.jsonl").read_text().splitlines()
    events = [dict(json.loads(line), ts=json.loads(line)["ts"] + i) for i in range(12) for line in lines]
    (out / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    (out / "meta.json").write_text((DATA / "node-a" / "meta.json").read_text())
    return out


def warnings_in(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("sigtrace: warning:")]


def spilled_csv(rec: Path, out: Path) -> bytes:
    export_recordings([rec], csv=str(out), chunk_rows=7)
    return out.read_bytes()


def test_a_full_disk_exports_the_run_whole_and_says_so(rec, tmp_path, tiny_tmpfs, monkeypatch, capfd):
    want = spilled_csv(rec, tmp_path / "want.csv")
    assert not warnings_in(capfd.readouterr().err)
    monkeypatch.setenv("SIGTRACE_TMPDIR", str(tiny_tmpfs))
    assert spilled_csv(rec, tmp_path / "got.csv") == want
    (line,) = warnings_in(capfd.readouterr().err)
    assert line == (f"sigtrace: warning: could not spill parts to {tiny_tmpfs} (No space left on device); "
                    "reading the recording whole (more memory); set SIGTRACE_TMPDIR to a roomier place")
    assert list(tiny_tmpfs.iterdir()) == []                   # the partial spill is removed


def test_a_missing_spill_directory_is_said_too(rec, tmp_path, monkeypatch, capfd):
    want = spilled_csv(rec, tmp_path / "want.csv")
    monkeypatch.setenv("SIGTRACE_TMPDIR", str(tmp_path / "gone"))
    assert spilled_csv(rec, tmp_path / "got.csv") == want
    (line,) = warnings_in(capfd.readouterr().err)
    assert f"could not spill parts to {tmp_path / 'gone'} (No such file or directory)" in line


def test_a_dataset_that_cannot_be_gathered_is_one_error(rec, tmp_path, tiny_tmpfs, monkeypatch):
    monkeypatch.setenv("SIGTRACE_TMPDIR", str(tiny_tmpfs))
    root = tmp_path / "fleet"
    with pytest.raises(OutputError) as err:
        export_recordings([rec], parquet=f"{root}/")
    assert str(err.value) == (f"export cannot write its temporary files in {tiny_tmpfs} (No space left on "
                              "device); set SIGTRACE_TMPDIR to a directory with room (about the export's size)")
    assert not list(root.rglob("*.parquet")) and list(tiny_tmpfs.iterdir()) == []
