"""sigtrace report: one shutdown report per pod from a recording."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from ..errors import OutputError
from ..render import FORMATS


@click.command()
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="text", show_default=True,
              help="text for people, json for programs, html: one self-contained file with a timeline picture")
@click.option("--pod", "pods", multiple=True, metavar="UID", help="only this pod (UID, or name: every pod of that name); "
                                                                  "repeatable")
@click.option("--output", "-o", type=click.Path(path_type=Path), help="write here instead of stdout")
@click.option("--jobs", "-j", type=click.IntRange(min=0), default=0, envvar="SIGTRACE_JOBS", show_default=True,
              metavar="N", help="worker processes for a big input, each correlating one part at a time "
                                "(each adds a part's memory); 0: one per CPU, at most 4; 1: none")
def report(directory: Path, fmt: str, pods: tuple[str, ...], output: Path | None, jobs: int) -> int:
    """Per-pod shutdown report from the --output DIR of `sigtrace record` (all its segments), or
    of `sigtrace agent` (all runs of the node under it, read as one recording in time order).

    \b
    For each pod that stopped: a timeline relative to the first stop trigger (preStop exec or the
    runtime's stop signal), who signalled whom with what result, exits, listener close, connections
    reset or refused, and verdicts naming the cause with its fix.

    \b
    Examples:
      sigtrace report /tmp/rec
      sigtrace report /tmp/rec --format json | jq '.pods[].verdicts[].id'
      sigtrace report /tmp/rec --format html -o shutdown.html
      sigtrace report /var/lib/sigtrace                     # an agent's root: every run of this node
    """
    from ..report.build import report_recording
    from ..render.progress import progress_on_stderr

    with progress_on_stderr() as progress:      # a bar on a terminal after a second; never in a pipe
        # in parts by pod when the recording is big (bounded memory): the same reports as read whole
        # --pod: only those pods' events are kept and correlated: seconds on a node's week
        rs = report_recording(directory, lanes=fmt == "html", progress=progress, jobs=jobs, pods=pods)
    if output is not None and str(output) != "-":
        _emit(rs, fmt, output)
    else:
        from ..render import write_report
        write_report(rs, fmt, sys.stdout)
    return 0


def _emit(rs: Any, fmt: str, output: Path) -> None:
    """A regular file replaced atomically: never through a link, never a FIFO or device. JSON is
    written pod by pod (a big report never exists as one string); text and HTML as documents."""
    from ..export.write import atomic_file, check_output_path
    from ..render import render
    from ..render.json import write_json
    check_output_path(str(output))

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            if fmt == "json":
                write_json(rs, f)
            else:
                f.write(render(rs, fmt))
    try:
        atomic_file(Path(output), write)
    except OSError as exc:
        raise OutputError(f"cannot write {output}: {exc.strerror}; choose another --output") from None
