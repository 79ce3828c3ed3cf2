"""sigtrace analyze: the fleet view over exports: which causes hurt how many pods."""
from __future__ import annotations

import json
from datetime import datetime

import click


@click.command(epilog="""\b
Examples:
  sigtrace export node-*/ --csv fleet.csv
  sigtrace analyze fleet.csv
  sigtrace analyze fleet.csv --json > fleet.json
  sigtrace analyze day1.csv day2.parquet --plot fleet.png
  sigtrace analyze fleet/ --node node-a --since 2026-12-01 --until 2026-12-07
""")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--json", "as_json", is_flag=True, help="print JSON for programs instead of tables")
@click.option("--plot", metavar="PNG", help="also write a picture: verdict counts and shutdown-time distribution")
@click.option("--node", "nodes", multiple=True, metavar="NODE", help="only this node's events; repeatable")
@click.option("--since", type=click.DateTime(["%Y-%m-%d"]), metavar="YYYY-MM-DD",
              help="only events from this UTC day on")
@click.option("--until", type=click.DateTime(["%Y-%m-%d"]), metavar="YYYY-MM-DD",
              help="only events up to this UTC day, inclusive")
@click.option("--jobs", "-j", type=click.IntRange(min=0), default=0, envvar="SIGTRACE_JOBS", show_default=True,
              metavar="N", help="worker processes for a big input, each correlating one part at a time "
                                "(each adds a part's memory); 0: one per CPU, at most 4; 1: none")
def analyze(files: tuple[str, ...], as_json: bool, plot: str | None, nodes: tuple[str, ...],
            since: datetime | None, until: datetime | None, jobs: int) -> None:
    """Per-pod summary and fleet aggregates from CSV/Parquet exports of 'sigtrace export', or
    from a dataset directory of 'sigtrace export --parquet DIR/' (only the parts of the chosen
    nodes and days are read). A day filter cuts at UTC midnight: a pod stopping across it is
    seen in part.

    Each node's events go through the same correlation and verdicts as 'sigtrace report';
    then: per pod the verdicts, trigger → last exit, resets, refused attempts, lost events;
    for the fleet the verdict counts and share of pods, p50/p95/max shutdown time, and pods
    hurt (a pod with at least one decided verdict) per namespace and deployment.
    """
    from ..analyze import analyze_files

    if plot:                                    # before reading gigabytes: a bad path is one line
        from ..analyze.plot import check_plot_path
        check_plot_path(plot)
    from ..render.progress import progress_on_stderr

    with progress_on_stderr() as progress:      # a bar on a terminal after a second; never in a pipe
        fleet = analyze_files(files, progress=progress, nodes=nodes, since=since and since.date(),
                              until=until and until.date(), jobs=jobs)
    if plot:
        from ..analyze.plot import write_plot
        write_plot(fleet, plot)
    if as_json:
        click.echo(json.dumps(fleet.to_dict(), indent=2, sort_keys=True))
    else:
        from rich.console import Console

        from ..analyze.render import render
        render(fleet, Console())
    if plot:
        click.echo(f"wrote {plot}", err=True)
