"""Shared test fixtures.

Tests that need the kernel (root, BPF, tracefs, runc, nginx, php-fpm, strace) call
require_kernel(...). Outside CI a missing piece skips the test; with
SIGTRACE_REQUIRE_KERNEL=1 (set by .ci/run) it FAILS: a green run that skipped the
kernel proves nothing.
"""
from __future__ import annotations

import os
import signal
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


class WaitedTooLong(BaseException):
    """no_waiting()'s alarm: not an OSError (nor an Exception), so no handler under test swallows it."""


@contextmanager
def no_waiting(seconds: int = 20):
    """Fail a read that waits (on a FIFO planted where a file was) instead of hanging the suite."""
    def too_long(*_):
        raise WaitedTooLong(f"waited more than {seconds} s (on a FIFO?)")
    old = signal.signal(signal.SIGALRM, too_long)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
REQUIRE_KERNEL = os.environ.get("SIGTRACE_REQUIRE_KERNEL") == "1"


def missing_or_skip(reason: str) -> None:
    if REQUIRE_KERNEL:
        pytest.fail(f"SIGTRACE_REQUIRE_KERNEL=1 and {reason}", pytrace=False)
    pytest.skip(reason)


def require_kernel(*, root: bool = True, bpf: bool = False, tools: tuple[str, ...] = ()) -> None:
    if root and os.geteuid() != 0:
        missing_or_skip("needs root")
    for tool in tools:
        if shutil.which(tool) is None and not Path(tool).exists():
            missing_or_skip(f"needs {tool}")
    if bpf:
        try:
            import bcc  # noqa: F401
        except ImportError:
            missing_or_skip("needs bcc (Debian python3-bpfcc) importable")


@pytest.fixture
def sigtrace_cli():
    """Run the real CLI in a subprocess: (args, **kw) -> CompletedProcess."""
    import subprocess

    def run(*args: str, timeout: float = 120, **kw):
        return subprocess.run([sys.executable, "-m", "sigtrace", *args], capture_output=True,
                              text=True, timeout=timeout, cwd=kw.pop("cwd", REPO), **kw)
    return run


class ThreadRecorder:
    """A RecordSession of `backend` into `out` in a thread of the test process: start() returns once
    the probes are attached (failing the test if they are not within startup_s), stop() ends it."""

    def __init__(self, backend, out: Path, startup_s: float = 60):
        import threading

        from sigtrace.record import RecordSession
        self.backend, self.startup_s = backend, startup_s
        self.session = RecordSession(backend, out, live=False)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: self.session.run(stop=self._stop), daemon=True)

    def start(self) -> "ThreadRecorder":
        import time
        self._thread.start()
        deadline = time.monotonic() + self.startup_s
        try:
            while getattr(self.backend, "startup_s", None) is None:
                assert self._thread.is_alive() and time.monotonic() < deadline, "recorder did not start"
                time.sleep(0.05)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 8 KB tmpfs (a real ENOSPC once the parts pass it), unmounted afterwards."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8k,mode=0700", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)]).returncode != 0:
            subprocess.run(["umount", "--lazy", str(mnt)], check=True)     # a file left open: detach it
