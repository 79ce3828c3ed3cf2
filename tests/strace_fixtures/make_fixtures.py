"""Regenerate the strace fixtures from real runs (root, strace, unshare):

    sudo .venv/bin/python tests/strace_fixtures/make_fixtures.py

scenario.strace / scenario.stderr: the backend's own strace command attached to scenario.py
running as PID 1 of a new PID namespace. attach-errors.stderr: strace's messages for a pid
that is gone and one that is already traced. killed.strace: strace SIGKILLed while a traced
read blocks, leaving half a line.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

from sigtrace.backends.strace.command import build_argv, find_strace  # noqa: E402

PY = "/usr/bin/python3"


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def wait_for(pred, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise TimeoutError("fixture scenario stuck")
        time.sleep(0.02)


def trace(argv_tail: list[int], out: Path, err: Path) -> subprocess.Popen:
    fh = open(out, "wb")
    proc = subprocess.Popen(build_argv(find_strace(), argv_tail, fh.fileno()), pass_fds=(fh.fileno(),),
                            stderr=open(err, "wb"), stdin=subprocess.DEVNULL)
    fh.close()
    return proc


def scenario() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        go = Path(tmp, "go")
        os.mkfifo(go)
        ns = subprocess.Popen(["unshare", "--pid", "--fork", PY, str(HERE / "scenario.py"), str(go), tmp])
        try:
            wait_for(lambda: children(ns.pid))
            init = children(ns.pid)[0]
            st = trace([init], HERE / "scenario.strace", HERE / "scenario.stderr")
            wait_for(lambda: b"attached" in (HERE / "scenario.stderr").read_bytes())
            go.write_text("x")
            wait_for(lambda: Path(tmp, "outside-ready").exists(), 30)
            victim = children(init)[-1]
            os.kill(victim, signal.SIGTERM)            # from outside the namespace: si_pid=0
            time.sleep(0.2)
            os.kill(victim, signal.SIGKILL)
            ns.wait(30)
            st.wait(30)
        finally:
            if ns.poll() is None:
                ns.kill()
                ns.wait()


def attach_errors() -> None:
    sleeper = subprocess.Popen(["sleep", "30"])
    gone = subprocess.Popen(["true"])
    gone.wait()
    holder = subprocess.Popen(["strace", "-o", "/dev/null", "-p", str(sleeper.pid)], stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        st = trace([gone.pid, sleeper.pid], HERE / "attach-errors.strace", HERE / "attach-errors.stderr")
        st.wait(10)
    finally:
        holder.terminate()
        holder.wait()
        sleeper.kill()
        sleeper.wait()


def killed_mid_line() -> None:
    reader = subprocess.Popen([PY, "-c", "import os,time; r,w=os.pipe(); time.sleep(0.3); os.read(r,1)"])
    try:
        st = trace([reader.pid], HERE / "killed.strace", HERE / "killed.stderr")
        time.sleep(1.0)
        st.kill()
        st.wait()
    finally:
        reader.kill()
        reader.wait()


if __name__ == "__main__":
    scenario()
    attach_errors()
    killed_mid_line()
    print("fixtures written to", HERE)
