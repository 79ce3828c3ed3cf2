"""`sigtrace record`: parse options, build a backend, run a RecordSession, print a summary."""
from __future__ import annotations

from typing import Any

import click

from ..errors import UsageProblem
from ..record.backends import BACKENDS

EPILOG = """\b
Examples:
  sudo sigtrace record --output /tmp/rec --duration 60      # pods on this node, 60 s
  sudo sigtrace record --output /tmp/rec --all              # every process, until Ctrl-C
  sudo sigtrace record --output /tmp/rec --pid 4242 --comm php-fpm8.2
  sudo sigtrace record --output /tmp/rec --dry-run          # compile and attach, then exit
  sudo sigtrace record --output /tmp/rec --backend strace --pid 4242
  sigtrace record --output /host/tmp/rec --backend strace --pod shop/web-7d9c5b8f6d-x2x4q
                        # in `kubectl debug node/NODE --profile=sysadmin`: outlives the pod
  sudo sigtrace record --output /var/tmp/rec --max-disk 2GiB --max-age 1d   # bounded, for days
\b
Stops on --duration, SIGINT or SIGTERM (exit 0); then: sigtrace report /tmp/rec
"""


class AmountType(click.ParamType):
    """A size or a duration through its parser in sigtrace.events.segments, or none (None)."""

    def __init__(self, name: str, parser: str, kind: type) -> None:
        self.name, self._parser, self._kind = name, parser, kind

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if value is None or isinstance(value, self._kind):
            return value
        from ..events import segments
        try:
            return getattr(segments, self._parser)(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


# 1GiB, 512Mi, 2G (Kubernetes' convention), bytes; 7d, 12h, 30m, 90s, seconds; or none
SIZE, DURATION = AmountType("SIZE", "parse_size", int), AmountType("DURATION", "parse_duration", float)
MIN_MAX_DISK = 1 << 20
MIN_SEGMENT_BYTES = 64 << 10


def check_max_disk(max_disk: int | None) -> None:
    """A cap smaller than a few segments cannot hold a recording: refuse it in one line."""
    if max_disk is not None and max_disk < MIN_MAX_DISK:
        raise UsageProblem(f"--max-disk {max_disk}: too small to hold a recording; give at least 1MiB (or none)")


class PidList(click.ParamType):
    """`--pid 12` or `--pid 12,34`: process ids, each a positive integer below the kernel's limit."""
    name = "PID[,PID...]"

    def convert(self, value: Any, param: Any, ctx: Any) -> tuple[int, ...]:
        if isinstance(value, tuple):
            return value
        out = []
        for part in str(value).split(","):
            part = part.strip()
            if not part.isdigit() or not 0 < int(part) <= 4_194_304:      # PID_MAX_LIMIT
                self.fail(f"{part!r} is not a process id", param, ctx)
            out.append(int(part))
        return tuple(out)


PID_LIST = PidList()


def _console() -> Any:
    from rich.console import Console
    return Console(stderr=True)


@click.command(epilog=EPILOG)
@click.option("--output", "-o", "output", required=True, type=click.Path(file_okay=False),
              help="Directory for events.jsonl and meta.json (created).")
@click.option("--duration", "-d", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Stop after S seconds (default: until Ctrl-C / SIGTERM).")
@click.option("--all", "all_processes", is_flag=True,
              help="Record every process, not only pods and the runtime processes that signal them.")
@click.option("--pid", "pids", type=PID_LIST, multiple=True,
              help="Also record this process and its children (repeatable, or a list: --pid 12,34).")
@click.option("--comm", "comms", multiple=True, help="Also record processes with this command name (repeatable).")
@click.option("--pod", "pods", multiple=True, metavar="NAME|NS/NAME|UID",
              help="strace: attach to every process of this pod, found by its cgroups (repeatable).")
@click.option("--node-root", type=click.Path(file_okay=False), default=None,
              help="Where the node's filesystem is, for --pod NAME (default: /, or /host in kubectl debug node/).")
@click.option("--backend", type=click.Choice(sorted(BACKENDS)), default="bpf", show_default=True,
              help="bpf (eBPF tracepoints, needs root) or strace (ptrace, where eBPF is not allowed).")
@click.option("--tcp-detail", type=click.Choice(["stopping", "always"]), default="stopping", show_default=True,
              help="bpf: stream TCP closes of pods that are stopping, or of every pod all the time (costly).")
@click.option("--append", is_flag=True, help="Add to the recording already in --output (default: refuse it).")
@click.option("--dry-run", is_flag=True, help="Compile and attach the probes, then exit.")
@click.option("--no-live", is_flag=True, help="No live view (a status line every few seconds instead).")
@click.option("--max-disk", type=SIZE, default="none", show_default=True,
              help="Keep DIR under this size (e.g. 2GiB): the oldest closed segments are removed.")
@click.option("--max-age", type=DURATION, default="none", show_default=True,
              help="Remove closed segments older than this (e.g. 1d, 12h).")
@click.option("--segment-size", type=SIZE, default="64Mi", show_default=True,
              help="Start a new events file (segment) at this size.")
@click.option("--segment-age", type=DURATION, default="1h", show_default=True,
              help="Start a new segment after this long.")
@click.option("--compact/--no-compact", default=True, show_default=True,
              help="Compact each closed segment to a columnar file (events-000002.arrow: ~9x smaller, read "
                   "~30x faster); --no-compact keeps every segment JSONL (for jq and grep).")
def record(output: str, duration: float | None, all_processes: bool, pids: tuple[int, ...],
           comms: tuple[str, ...], pods: tuple[str, ...], node_root: str | None, backend: str, tcp_detail: str,
           append: bool, dry_run: bool, no_live: bool, max_disk: int | None, max_age: float | None, segment_size: int | None,
           segment_age: float | None, compact: bool) -> int:
    """Record signals, exits and TCP closes/resets of pods (or --all / --pid / --comm processes).

    Writes DIR/events.jsonl (signals and exits at once, TCP events per batch; then
    events-000002.jsonl... per --segment-size/--segment-age) and DIR/meta.json. A closed segment
    is compacted to a columnar file (events-000002.arrow) unless --no-compact.
    """
    from ..events.writer import prepare_output_dir
    from ..record import RecordSession
    from ..record.backends import make_backend

    check_max_disk(max_disk)
    if segment_size is None or segment_age is None:
        raise UsageProblem("--segment-size and --segment-age need a value (none is for --max-disk/--max-age)")
    if segment_size < MIN_SEGMENT_BYTES:
        raise UsageProblem(f"--segment-size {segment_size}: give at least 64Ki (a file per batch helps nobody)")
    pids = tuple(pid for group in pids for pid in group)
    out = prepare_output_dir(output, append=append)   # before loading anything: fail fast on a bad dir
    if pods and backend != "strace":
        raise UsageProblem("--pod picks the processes strace attaches to; the bpf backend records every pod "
                           "on the node (choose one with: sigtrace report DIR --pod UID)")
    if tcp_detail != "stopping" and backend != "bpf":
        raise UsageProblem("--tcp-detail is for --backend bpf; strace sees socket calls, not TCP states")
    extra = {"pods": pods, "node_root": node_root} if backend == "strace" else {"tcp_detail": tcp_detail}
    be = make_backend(backend, all_processes=all_processes, pids=pids, comms=comms, **extra)
    console = _console()
    if dry_run:
        be.open(lambda event: None)
        try:
            meta = be.meta()
        finally:
            be.close()
        startup = meta.get("startup_s")
        if backend == "bpf":
            click.echo(f"bpf: probes compiled and attached in {startup}s; headers: {meta.get('header_source')}")
        else:
            click.echo(f"{backend}: attached in {startup}s")
        return 0
    session = RecordSession(be, out, console=console, live=not no_live, max_disk=max_disk, max_age_s=max_age,
                            segment_bytes=segment_size, segment_age_s=segment_age, compact=compact)
    result = session.run(duration=duration)
    lost = f", {result.lost_events} LOST ({result.lost_by_probe})" if result.lost_events else ", none lost"
    click.echo(f"sigtrace: {result.events} events in {result.duration_s:.1f}s{lost} -> {out}", err=True)
    return 0
