"""sigtrace analyze: the fleet view over exports: which causes hurt how many pods."""
from __future__ import annotations

import json

import click


@click.command(epilog="""\b
Examples:
  sigtrace export node-*/ --csv fleet.csv
  sigtrace analyze fleet.csv
  sigtrace analyze fleet.csv --json > fleet.json
  sigtrace analyze day1.csv day2.parquet --plot fleet.png
""")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--json", "as_json", is_flag=True, help="print JSON for programs instead of tables")
@click.option("--plot", metavar="PNG", help="also write a picture: verdict counts and shutdown-time distribution")
def analyze(files: tuple[str, ...], as_json: bool, plot: str | None) -> None:
    """Per-pod summary and fleet aggregates from CSV/Parquet exports of 'sigtrace export'.

    Each node's events go through the same correlation and verdicts as 'sigtrace report';
    then: per pod the verdicts, trigger → last exit, resets, refused attempts, lost events;
    for the fleet the verdict counts and share of pods, p50/p95/max shutdown time, and pods
    hurt (a pod with at least one decided verdict) per namespace and deployment.
    """
    from ..analyze import analyze_files

    if plot:                                    # before reading gigabytes: a bad path is one line
        from ..analyze.plot import check_plot_path
        check_plot_path(plot)
    fleet = analyze_files(files)
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
