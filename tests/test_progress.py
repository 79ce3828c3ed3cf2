"""report, export and analyze draw a progress bar on stderr when it is a terminal, and nothing
when it is a pipe (so nothing in scripts or tests)."""
from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO
from sigtrace.render.progress import progress_on_stderr

DATA = Path(__file__).parent / "data"
# the command as the CLI runs it, with the bar shown at once: the test recordings take less than
# the second a real run waits before it draws
NO_DELAY = "import sys; import sigtrace.render.progress as p; p.DELAY_S = 0; from sigtrace.cli import main; sys.exit(main())"


def run_on_pty(args: list[str], tmp_path: Path) -> tuple[int, str]:
    """Run the CLI with stderr on a pseudo-terminal (stdout to a file): exit code, what the terminal got."""
    master, slave = pty.openpty()
    with open(tmp_path / "stdout", "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", NO_DELAY, *args], stdout=out, stderr=slave,
                                stdin=subprocess.DEVNULL, cwd=REPO, env={**os.environ, "COLUMNS": "100"})
    os.close(slave)
    got = b""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:          # EIO: the child closed the terminal
                break
            if not chunk:
                break
            got += chunk
        elif proc.poll() is not None:
            break
    os.close(master)
    return proc.wait(timeout=60), got.decode("utf-8", "replace")


@pytest.mark.parametrize("command", [
    lambda tmp: ["report", str(DATA / "article"), "--format", "json"],
    lambda tmp: ["export", str(DATA / "fleet" / "node-a"), str(DATA / "fleet" / "node-b"), "--csv", str(tmp / "x.csv")],
], ids=["report", "export"])
def test_a_terminal_gets_a_bar_a_pipe_none(tmp_path, command):
    code, terminal = run_on_pty(command(tmp_path), tmp_path)
    assert code == 0, terminal
    assert any(what in terminal for what in ("pods done", "events read", "recordings read")), terminal
    piped = subprocess.run([sys.executable, "-c", NO_DELAY, *command(tmp_path)], capture_output=True, text=True,
                           cwd=REPO, timeout=120)
    assert piped.returncode == 0, piped.stderr
    assert "\x1b" not in piped.stderr and "done" not in piped.stderr and "read" not in piped.stderr


def test_analyze_shows_nodes_done_on_a_terminal(tmp_path):
    subprocess.run([sys.executable, "-m", "sigtrace", "export", str(DATA / "fleet" / "node-a"),
                    str(DATA / "fleet" / "node-b"), "--parquet", f"{tmp_path}/fleet/"], check=True, cwd=REPO,
                   capture_output=True, timeout=120)
    code, terminal = run_on_pty(["analyze", str(tmp_path / "fleet"), "--json"], tmp_path)
    assert code == 0, terminal
    assert "nodes done" in terminal
    assert '"fleet"' in (tmp_path / "stdout").read_text()       # the output itself is untouched


def test_quick_work_shows_nothing():
    master, slave = pty.openpty()
    tty = open(slave, "w")
    try:
        with progress_on_stderr(stream=tty) as progress:     # the real one-second delay
            progress("pods done", 1, 1)
        tty.flush()
        os.set_blocking(master, False)
        with pytest.raises(BlockingIOError):                   # nothing to read: nothing was drawn
            os.read(master, 4096)
    finally:
        tty.close()
        os.close(master)
