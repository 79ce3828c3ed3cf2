"""sigtrace compact: a recording's closed JSONL segments compacted to columnar files after the fact."""
from __future__ import annotations

import click


@click.command(epilog="""\b
Examples:
  sigtrace compact /tmp/rec
  sigtrace compact /var/lib/sigtrace          # every run of an agent's output
  sigtrace compact collected/node-a/          # a node's runs from `kubectl sigtrace collect`
""")
@click.argument("directory", type=click.Path(file_okay=False, path_type=str))
def compact(directory: str) -> None:
    """Compact the closed JSONL segments of the recordings under DIRECTORY to columnar files.

    What the recorder does to each segment it closes (unless --no-compact), for recordings made
    with --no-compact or before compaction existed: events-000002.jsonl becomes events-000002.arrow
    with the same events, ~9x smaller and read without parsing JSON. A run's last segment is
    compacted only when its recorder has stopped (meta.json has an end), and never while a
    recorder writes it (`record --append`). A segment the fast reader would not read as it is (a
    cut or unparsable line, an unknown field) stays JSONL, and is named.
    """
    from ..events.compact import compact_recording
    from ..render.progress import progress_on_stderr
    from ..render.safe import visible

    with progress_on_stderr() as progress:
        result = compact_recording(directory, progress=progress)
    for kept in result.kept:
        click.echo(f"sigtrace: note: left as JSONL: {visible(kept)}", err=True)
    if result.open_runs:
        click.echo(f"sigtrace: note: the last segment of {len(result.open_runs)} run(s) was left as it is: their "
                   "recorder is running or was killed (no end in meta.json)", err=True)
    size = (f", {result.json_bytes / 1e6:.1f} MB of JSON -> {result.columnar_bytes / 1e6:.1f} MB"
            if result.segments else "")
    click.echo(f"compacted {result.segments} segment(s) of {result.runs} run(s): {result.events} events{size}",
               err=True)
