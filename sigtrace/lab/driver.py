"""Compose a lab run: scenario + recorder + report, and show the client's view beside the report.

The recorder and the report run as `python -m sigtrace record|report` subprocesses: the lab
process stays free of bcc (its CPU goes to driving the pod), a recorder crash cannot take the
pod cleanup down with it, and the report shown is exactly what `sigtrace report DIR` prints.
"""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from ..errors import LabError
from ..events.segments import list_segments
from ..events.writer import EventWriter, prepare_output_dir
from . import render
from .pod import LocalPod
from .scenario import LabResult, Scenario, check_tools, run_scenario, validate

RECORDER_READY_TIMEOUT_S = 90.0    # bcc compiles the probes first: tens of seconds on a busy 2-core box
READY_FILE = "meta.json"


def demo_scenarios(layout: str = "cgroupfs") -> list[tuple[str, Scenario]]:
    """The article's case, then the configuration that fixes it (FIELD-GUIDE)."""
    common = dict(request_ms=1500, concurrency=4, lb_delay_s=2.0, warmup_s=1.5, workers=2, layout=layout)
    article = Scenario(name="article", prestop={"nginx": "nginx -s quit"}, grace_s=10, **common)
    fixed = Scenario(name="fixed", prestop={"nginx": "sleep 3", "php-fpm": "sleep 3"},
                     stop_signal={"nginx": "SIGQUIT", "php-fpm": "SIGQUIT"}, process_control_timeout_s=10,
                     grace_s=20, **common)
    return [("article: preStop `nginx -s quit`, STOPSIGNAL TERM", article),
            ("fixed: STOPSIGNAL QUIT, preStop sleep 3 (> LB delay), fpm process_control_timeout 10s", fixed)]


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


class SubprocessRecorder:
    """`sigtrace record` in a child process, ready once it wrote meta.json, stopped by SIGINT."""

    def __init__(self, backend: str):
        if not _module_exists("sigtrace.commands.record"):
            raise LabError("the recorder (sigtrace record) is not available in this build: use --backend none")
        self.backend = backend
        self.needs_pids = backend == "strace"
        self.proc: subprocess.Popen | None = None
        self.returncode: int | None = None          # the recorder's, once stopped

    def argv(self, out_dir: Path, pod: LocalPod | None) -> list[str]:
        """The recorder's command line (tests run it in other namespaces)."""
        args = [sys.executable, "-m", "sigtrace", "record", "--output", str(out_dir), "--backend", self.backend,
                "--no-live"]
        if self.needs_pids and pod is not None:   # strace attaches to the pod's processes
            for name in pod.container_names().values():
                for pid in pod.pids(name):
                    args += ["--pid", str(pid)]
        return args

    def start(self, out_dir: Path, pod: LocalPod | None) -> None:
        args = self.argv(out_dir, pod)
        self._log = open(out_dir / "record.log", "ab")
        # A file, not a pipe: nobody reads the recorder's live view while the lab runs.
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log,
                                     env=dict(os.environ, COLUMNS="120"))
        ready = out_dir / READY_FILE
        deadline = time.monotonic() + RECORDER_READY_TIMEOUT_S
        while not ready.exists():
            if self.proc.poll() is not None:
                raise LabError(f"sigtrace record exited at start: {self._last_line(out_dir)}")
            if time.monotonic() > deadline:
                self.stop()
                raise LabError(f"sigtrace record not ready after {RECORDER_READY_TIMEOUT_S:.0f}s; see "
                               f"{out_dir / 'record.log'}")
            time.sleep(0.1)
        time.sleep(0.3)   # meta.json is written as probes attach; let the first poll run

    def _last_line(self, out_dir: Path) -> str:
        lines = [l for l in (out_dir / "record.log").read_text(errors="replace").splitlines() if l.strip()]
        return lines[-1].strip() if lines else "no output"

    def stop(self) -> None:
        if self.proc is None:
            return
        time.sleep(0.5)   # the last exits and closes reach the buffers before we stop
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        self.returncode = self.proc.returncode
        self.proc = None


def _report(out_dir: Path, fmt: str, console: Console, pod_uid: str) -> Any:
    """The report of the lab pod, as `sigtrace report DIR --pod UID` renders it (the recorder is
    node-wide: other pods' events may be in the recording too)."""
    if not _module_exists("sigtrace.commands.report"):
        console.print("[yellow]report: sigtrace report is not available in this build[/yellow]")
        return None
    cmd = [sys.executable, "-m", "sigtrace", "report", str(out_dir), "--format", fmt, "--pod", pod_uid]
    if fmt == "json":
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if p.returncode != 0:
            return {"error": (p.stderr.strip().splitlines() or ["report failed"])[-1]}
        return json.loads(p.stdout)
    console.file.flush()
    # stdout straight to the terminal (the report's own rendering); stderr kept, so a failing
    # report is one line here, not a traceback
    p = subprocess.run(cmd, timeout=120, stderr=subprocess.PIPE, text=True,
                       env=dict(os.environ, COLUMNS=str(console.width)))
    if p.returncode != 0:
        lines = [l for l in p.stderr.strip().splitlines() if l.strip()]
        console.print(f"[red]report failed:[/red] {lines[-1] if lines else f'exit {p.returncode}'} "
                      f"(run `sigtrace report {out_dir}` for details)", markup=True, highlight=False)
    return None


def run_and_show(runs: list[tuple[str, Scenario]], out_root: Path, *, backend: str = "bpf",
                 fmt: str = "text") -> list[dict]:
    """Run each scenario into out_root/<name>, print client view + stop table + report."""
    check_tools()
    for _, s in runs:      # bad input fails before an output dir or a container exists
        validate(s)
    console = Console(stderr=(fmt == "json"))
    results = []
    summaries = []
    for title, s in runs:
        console.rule(f"[bold]{title}")
        with console.status("running the pod, load and deletion..."):
            r = record_run(s, out_root / s.name if len(runs) > 1 else out_root, backend)
        out_dir = r.out_dir
        console.print(render.stop_table(r))
        console.print(render.client_table(r))
        console.print("client: " + render.summary_line(r))
        report = None
        if backend != "none":
            report = _report(out_dir, fmt, console, r.pod_uid)
        console.print(f"recording: {out_dir}")
        summaries.append((title, r))
        results.append({**r.as_dict(), "out_dir": str(out_dir), "report": report})
    if len(runs) > 1:
        console.rule("[bold]summary")
        for title, r in summaries:
            console.print(f"{title}: " + render.summary_line(r))
    return results


def record_run(s: Scenario, out_dir: Path, backend: str) -> LabResult:
    """Run one scenario into out_dir (a new recording: events, meta.json, lab.json)."""
    out_dir = prepare_output_dir(out_dir, append=True)
    if list_segments(out_dir):
        raise LabError(f"{out_dir} already holds a recording: choose a new --output")
    recorder = None if backend == "none" else SubprocessRecorder(backend)
    events: list[dict] = []
    r = run_scenario(s, out_dir, recorder, on_event=events.append)
    _save(r, out_dir, events)
    return r


def _save(r: LabResult, out_dir: Path, events: list[dict]) -> None:
    """lab.json (scenario, stop outcomes, client view) and the lab's pod_lifecycle events,
    appended after the recorder stopped so the two writers never interleave."""
    (out_dir / "lab.json").write_text(json.dumps(r.as_dict(), indent=1, default=str))
    with EventWriter(out_dir) as w:
        for e in events:
            w.write(e)
