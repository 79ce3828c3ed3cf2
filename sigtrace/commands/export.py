"""sigtrace export: recordings -> one CSV/Parquet file for pandas, spreadsheets and `sigtrace analyze`,
or a partitioned Parquet dataset for DuckDB, Spark and Trino."""
from __future__ import annotations

import click


@click.command(epilog="""\b
Examples:
  sigtrace export /tmp/rec --csv events.csv
  sigtrace export node-a/ node-b/ node-c/ --csv fleet.csv --parquet fleet.parquet
  sigtrace export /tmp/rec --csv - | head
  sigtrace export node-a/ --parquet fleet/          # dataset: fleet/node=.../date=.../part-*.parquet
  sigtrace analyze fleet/ --node node-a
  sigtrace analyze fleet.csv
""")
@click.argument("dirs", nargs=-1, required=True, type=click.Path(file_okay=False, path_type=str))
@click.option("--csv", "csv_path", metavar="FILE", help="write a UTF-8 CSV, one row per event")
@click.option("--parquet", "parquet_path", metavar="FILE|DIR/",
              help="write Parquet; to a directory (existing, or ending in /): add to a dataset partitioned "
                   "by node and UTC date")
@click.option("--raw", is_flag=True, help="CSV: keep cells a spreadsheet would evaluate (=, +, -, @) as recorded")
def export(dirs: tuple[str, ...], csv_path: str | None, parquet_path: str | None, raw: bool) -> None:
    """Export the events of one or more recording DIRs (one per node) into one file.

    Every event is one row; columns are the event schema's fields in schema order, then
    `node` (from each DIR's meta.json) and `schema_version`. pod_name, namespace and
    container_name are filled for every event of a pod its lifecycle events name.
    Per-node meta goes to FILE.meta.json beside it (analyze reads it). FILE - writes to stdout
    (no sidecar). CSV string cells starting with = + - @ get a leading ' (spreadsheets would run
    them as formulas); analyze reads them back unchanged; --raw leaves them as recorded.

    --parquet DIR/ adds DIR/node=<node>/date=<YYYY-MM-DD>/part-<run start>.parquet files (Hive
    layout: DuckDB, Spark, Trino and analyze read DIR as is): one part per recorder run and day.
    A run exported again (it has grown, or crossed midnight) replaces its parts, keeping their
    rows, so every event is counted once; a part with nothing new is left as it is.
    """
    from ..export import export_recordings
    from ..render.progress import progress_on_stderr
    from ..render.safe import visible

    with progress_on_stderr() as progress:      # a bar on a terminal after a second; never in a pipe
        result = export_recordings(dirs, csv=csv_path, parquet=parquet_path, raw=raw, progress=progress)
    for note in result.notes:                   # a note may quote tenant text (a process name, a node)
        click.echo(f"sigtrace: note: {visible(note)}", err=True)
    if result.skipped:
        click.echo(f"sigtrace: note: {len(result.skipped)} part(s) already in the dataset with the same events: "
                   "skipped", err=True)
    where = ", ".join(result.written) or "nothing new"
    click.echo(f"wrote {result.rows} events from {len(result.nodes)} node(s) "
               f"({visible(', '.join(result.nodes))}) to {visible(where)}", err=True)
