"""sigtrace analyze: exports (many nodes) -> the report of every pod -> fleet aggregates.

The verdicts come from sigtrace.report.build_reports, the same code `sigtrace report`
runs: the export is split per node and build_reports decides on each node's events as the export
has them (the recording's columns; pod and container names are on every row of a named pod, which
changes nothing: the report reads them from pod_lifecycle rows, which keep what was recorded).
This package only reads and aggregates.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pandas as pd

from ..events.lifecycle import POD_SEEN, detail_object
from ..events.schema import FIELD_NAMES, POD_LIFECYCLE
from ..export.columns import NODE
from .fleet import Fleet, fleet_from_reports
from .read import Export, ExportReader, read_exports

__all__ = ["Export", "Fleet", "analyze_files", "node_frames", "read_exports"]

# meta keys the export adds for itself; build_reports gets the recorder's meta.json as it was
_EXPORT_META_KEYS = ("sources", "incomplete")


def _node_events(events: pd.DataFrame) -> pd.DataFrame:
    """A node's rows for build_reports: the schema's columns, only the categories the node uses
    (sorted, as read_recording has them), a fresh index."""
    df = events[list(FIELD_NAMES)]
    fixed: dict[str, pd.Series] = {}
    for col in df.columns:
        s = df[col]
        if isinstance(s.dtype, pd.CategoricalDtype):
            # keep only categories present (a bincount over the codes: no sort of the rows)
            codes = s.cat.codes.to_numpy()
            used = np.bincount(codes[codes >= 0], minlength=len(s.cat.categories)) > 0
            keep = sorted(s.cat.categories[used])
            if list(s.cat.categories) != keep:
                s = s.cat.set_categories(keep)
            fixed[col] = s
    return df.assign(**fixed).reset_index(drop=True)


def node_frames(export: Export) -> Iterator[tuple[str, pd.DataFrame, dict[str, Any], list[str]]]:
    """(node, events, meta, incomplete) per node, ready for build_reports."""
    events = export.events
    nodes = events[NODE].cat.remove_unused_categories().cat.categories
    groups = {nodes[0]: None} if len(nodes) == 1 else events.groupby(NODE, observed=True, sort=True).indices
    for node, idx in groups.items():
        meta = dict(export.metas.get(node) or {"node": node})
        incomplete = list(meta.get("incomplete") or []) + list(export.incomplete)
        for key in _EXPORT_META_KEYS:
            meta.pop(key, None)
        # one node (the usual per-node export): no copy of the rows, just the restored view
        yield str(node), _node_events(events if idx is None else events.take(idx)), meta, incomplete


def _lazy_dict(report_set: Any) -> dict[str, Any]:
    """ReportSet.to_dict()'s shape with the pods as an iterator: a node's 26k reports stay compact
    (report.model.PodStore) until the fleet flattens them, one at a time."""
    return dict(report_set.header(), pods=report_set.pod_dicts())


def template_hashes(events: pd.DataFrame) -> dict[str, str]:
    """pod_uid -> pod-template-hash label, from the last pod_seen of each pod (few rows)."""
    seen = events[(events["kind"] == POD_LIFECYCLE) & (events["event"] == POD_SEEN) & events["detail"].notna()]
    out: dict[str, str] = {}
    for uid, detail in zip(seen["pod_uid"], seen["detail"]):
        labels = detail_object(detail).get("labels")
        value = labels.get("pod-template-hash") if isinstance(labels, dict) else None
        if isinstance(uid, str) and isinstance(value, str):
            out[uid] = value
    return out


def analyze_files(paths: Sequence[str], progress: Callable[[str, int, int | None], None] | None = None,
                  jobs: int | None = None, **select: Any) -> Fleet:
    """Read the exports, run the report per node, aggregate. DataError on unusable input.
    select: read_exports' nodes, since, until. progress(what, done, total): events read, nodes and pods done.
    jobs: worker processes per node's parts, as report.build.report_parts'.

    In bounded memory: the exports are read in chunks and spilled by node and pod (analyze.parts);
    each node's reports come from report.build.report_parts, the code `sigtrace report` runs on a
    big recording, a group of pods at a time per worker process; small nodes' from report.batch,
    many nodes in one correlation per worker process, each node's reports its own."""
    from ..report.build import report_parts   # the one correlation + verdict implementation
    from ..report.workers import default_jobs, report_batches
    from .parts import NodeSpill, SmallNodes
    reader = ExportReader(paths, progress=progress, **select)
    hashes: dict[str, str] = {}
    node_hashes: dict[str, dict[str, str]] = {}

    def small_batches(units: Iterator[Any], big: list) -> Iterator[SmallNodes]:
        """The SmallNodes batches of units; a big node's (node, parts) goes to big, reported
        between batches."""
        for unit in units:
            if isinstance(unit, SmallNodes):
                # the batch's nodes share no pod: one pass over its lifecycle rows for all
                batch_hashes = template_hashes(unit.events)
                for n in unit.nodes:
                    node_hashes[n.name] = {u: batch_hashes[u] for u in n.member.uids if u in batch_hashes}
                yield unit
            else:
                big.append(unit)
                return

    def per_node(spill: NodeSpill) -> Iterator[tuple[str, dict[str, Any]]]:
        # a node's reports are flattened into the fleet before the next node's are made
        done = 0
        units = spill.units(reader.metas, reader.notes)
        while True:
            big: list = []
            # small nodes: one correlation per batch, in worker processes; each node's reports its own
            for batch, sets in report_batches(small_batches(units, big), default_jobs(jobs)):
                for n, report_set in zip(batch.nodes, sets):
                    done += 1
                    yield n.name, _lazy_dict(report_set)
                    if progress:
                        progress("nodes done", done, len(reader.metas))
            if not big:
                break
            node, parts = big[0]
            node_hashes[node] = template_hashes(parts.summary.lifecycle)   # its rows in the node's frame order
            done += 1
            yield node, _lazy_dict(report_parts(parts, lanes=False, progress=progress, jobs=jobs))
            if progress:
                progress("nodes done", done, len(reader.metas))
        # a pod uid on two nodes (an export copied from another): the later node by name wins, as it did
        for node in sorted(node_hashes):
            hashes.update(node_hashes[node])

    with NodeSpill(in_order=len(reader.paths) == 1) as spill:
        for chunk in reader.chunks():
            spill.add(chunk)
        # hashes is filled while per_node runs; fleet_from_reports reads it after the last node
        return fleet_from_reports(per_node(spill), reader.metas, hashes, reader.notes)
