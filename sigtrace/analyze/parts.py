"""A fleet's exports as parts by node and pod, for analyze in bounded memory.

An export of a week or a fleet does not fit in one frame (10M rows were ~1 GB as pandas columns,
and the correlation of a node's events several times that). Each node is reported alone, and a
node's pods are independent once their events are together (sigtrace.events.partition): so the
exports' chunks (analyze.read.ExportReader) are spilled to temporary Arrow files by node; then,
one node at a time, its rows are split by a hash of the pod (a signal to another pod's process goes
to both pods' parts), and the parts are read back a few at a time. The peak is one chunk while
reading and one group of parts (about GROUP_ROWS rows) while reporting, whatever the exports' size.
What grows with the input: the times of every row (8 bytes; a node's, and their rank, while it is
reported), the pod_lifecycle rows (a few per pod), and the node's reports, kept compressed until the
fleet has flattened them (report.model.PodStore).

Rows keep the labels the whole node's frame gives them (their place in the node's rows in time
order, as analyze numbered them when it held one frame), so the reports are the same either way
(tests/test_analyze_parts.py).
"""
from __future__ import annotations

import errno
import shutil
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd

from ..errors import OutputError
from ..events.fast_reader import categories_in_arrow
from ..events.partition import Summary, part_of, pod_routes, spill_dir, spill_where
from ..events.schema import FIELD_NAMES, POD_LIFECYCLE
from ..export.columns import EXPORT_DTYPES, NODE

MAX_PARTS = 256            # a node's parts by pod: a 10M-row node makes parts of ~40k rows
GROUP_ROWS = 150_000       # parts read back together up to about this many rows (small node: one group)
MAX_OPEN = 256             # spill files by node open at once: more nodes share files (by node index)
_SEQ = "__seq"             # a row's place among its node's rows, in the order they were read
_NODE = "__node"           # the node's index: the spill files are named by it, never by the node's name


def _arrow_schema():
    """The spill's schema: the export's columns as plain Arrow types (a category as text), so
    that chunks with different categories share one stream."""
    import pyarrow as pa
    from .read import _arrow_types
    types = _arrow_types()
    fields = [pa.field(c, types[c].value_type if pa.types.is_dictionary(types[c]) else types[c]) for c in FIELD_NAMES]
    return pa.schema(fields + [pa.field(_SEQ, pa.int64()), pa.field(_NODE, pa.int32())])


@contextmanager
def _spilling() -> Iterator[None]:
    """The disk saying no (ENOSPC, EMFILE, a missing SIGTRACE_TMPDIR) is one line, not a traceback."""
    try:
        yield
    except OSError as exc:
        where = spill_where()
        todo = ("raise the open-files limit (ulimit -n)" if exc.errno in (errno.EMFILE, errno.ENFILE) else
                "set SIGTRACE_TMPDIR to a directory with room (about the exports' size)")
        raise OutputError(f"analyze cannot write its temporary files in {where} ({exc.strerror or exc}); "
                          f"{todo}") from None


@dataclass
class _Node:
    index: int                               # names the node's spill files (a node name is tenant data)
    rows: int = 0
    ts: list[np.ndarray] = field(default_factory=list)
    kinds: set[str] = field(default_factory=set)
    lifecycle: list[pd.DataFrame] = field(default_factory=list)


class NodeSpill:
    """add() the exports' chunks (spilled by node); then nodes() gives each node's parts by pod
    (NodeParts), nodes in name order, one node's parts on disk at a time."""

    def __init__(self, in_order: bool, group_rows: int | None = None) -> None:
        # in_order: a node's frame is its rows in the order read (one export); else the rows come
        # from several exports, and a node's frame is their stable sort by ts (analyze.read.read_exports)
        self.in_order, self.group_rows = in_order, group_rows or GROUP_ROWS
        with _spilling():
            self._dir = spill_dir("sigtrace-analyze-")
        self._nodes: dict[str, _Node] = {}
        self._buckets = MAX_OPEN
        self._writers: dict[int, Any] = {}         # bucket (node index mod MAX_OPEN) -> its spill file
        self._schema = _arrow_schema()

    def add(self, chunk: pd.DataFrame) -> None:
        """A chunk of usable rows (analyze.read: COLUMNS, EXPORT_DTYPES, a node on every row)."""
        import pyarrow as pa
        nodes = chunk[NODE].astype(str).to_numpy()
        names = pd.unique(nodes)
        for name in names:
            rows = chunk[nodes == name] if len(names) > 1 else chunk
            node = self._nodes.setdefault(str(name), _Node(len(self._nodes)))
            seq = np.arange(node.rows, node.rows + len(rows), dtype=np.int64)
            node.rows += len(rows)
            node.ts.append(rows["ts"].to_numpy(dtype=float))
            node.kinds |= {str(k) for k in pd.unique(rows["kind"].astype(object).dropna())}
            lc = (rows["kind"] == POD_LIFECYCLE).to_numpy(dtype=bool, na_value=False)
            if lc.any():
                node.lifecycle.append(rows[lc].assign(**{_SEQ: seq[lc]}))
            table = pa.Table.from_pandas(rows[list(FIELD_NAMES)].assign(**{_SEQ: seq, _NODE: node.index}),
                                         preserve_index=False).cast(self._schema)
            with _spilling():
                self._writer(node.index % self._buckets).write_table(table)

    def _bucket_file(self, bucket: int) -> Path:
        return Path(self._dir.name) / f"{bucket}.arrow"

    def _writer(self, bucket: int) -> Any:
        import pyarrow as pa
        w = self._writers.get(bucket)
        if w is None:
            w = self._writers[bucket] = pa.ipc.new_stream(str(self._bucket_file(bucket)), self._schema)
        return w

    def nodes(self, metas: dict[str, dict], notes: list[str]) -> Iterator[tuple[str, "NodeParts"]]:
        """(node, its parts), nodes in name order. metas: node -> meta (from the exports), notes:
        what applies to every node."""
        with _spilling():
            for w in self._writers.values():
                w.close()
            self._writers.clear()
        sharing = Counter(node.index % self._buckets for node in self._nodes.values())
        left = Counter(sharing)                  # nodes of each file not reported yet
        for name in sorted(self._nodes):
            node = self._nodes.pop(name)
            bucket = node.index % self._buckets
            meta = dict(metas.get(name) or {"node": name})
            incomplete = list(meta.get("incomplete") or []) + list(notes)
            for key in ("sources", "incomplete"):      # the export's own keys, not the recorder's
                meta.pop(key, None)
            with _spilling():
                parts = NodeParts(node, meta, incomplete, self._bucket_file(bucket), sharing[bucket] > 1,
                                  self.group_rows, self.in_order)
            try:
                yield name, parts
            finally:
                parts.close()
                left[bucket] -= 1
                if not left[bucket]:              # the last node of its file: the file goes
                    self._bucket_file(bucket).unlink(missing_ok=True)

    def close(self) -> None:
        for w in self._writers.values():
            try:
                w.close()
            except OSError:
                pass                  # the disk already said no: the files go anyway
        self._writers.clear()
        self._dir.cleanup()

    def __enter__(self) -> "NodeSpill":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class NodeParts:
    """One node's events as parts by pod: report.build.report_parts' input (meta, incomplete,
    summary, units() and frame(unit))."""

    def __init__(self, node: _Node, meta: dict[str, Any], incomplete: list[str], spill: Path, shared: bool,
                 group_rows: int, in_order: bool) -> None:
        self.meta, self.incomplete, self._group_rows = meta, incomplete, group_rows
        ts = np.concatenate(node.ts) if node.ts else np.empty(0)
        node.ts = []
        # a row's label: its place in the node's frame (read order, or a stable sort by ts)
        self._rank = None
        if not in_order and len(ts) and not (ts[1:] >= ts[:-1]).all():
            order = np.argsort(ts, kind="stable")
            self._rank = np.empty_like(order)
            self._rank[order] = np.arange(len(order))
        lifecycle = pd.concat(node.lifecycle) if node.lifecycle else None
        self.summary = Summary(node.rows, frozenset(node.kinds), float(ts.max()) if len(ts) else 0.0,
                               self._labelled(lifecycle))
        del ts
        # parts small enough that a group of them is about group_rows, at most MAX_PARTS
        self.n_parts = int(min(max(node.rows * 4 // group_rows, 1), MAX_PARTS))
        self._dir = spill.parent / f"{node.index}-parts"
        self._dir.mkdir()
        self._part_rows = self._split(spill, node.index if shared else None)

    def _split(self, spill: Path, node: int | None) -> dict[int, int]:
        """The node's rows of the spill (all of it, or those of node when nodes share it), batch by
        batch, into one file per part; rows per part."""
        import pyarrow as pa
        import pyarrow.compute as pc
        writers: dict[int, Any] = {}
        rows: dict[int, int] = {}
        try:
            with pa.OSFile(str(spill)) as src:
                for batch in pa.ipc.open_stream(src):
                    table = pa.Table.from_batches([batch])
                    if node is not None:
                        table = table.filter(pc.equal(table.column(_NODE), node))
                    for part, chosen in pod_routes(table, self.n_parts)[0]:
                        w = writers.get(part)
                        if w is None:
                            w = writers[part] = pa.ipc.new_stream(str(self._dir / f"{part}.arrow"), table.schema)
                        w.write_table(chosen)
                        rows[part] = rows.get(part, 0) + chosen.num_rows
        finally:
            for w in writers.values():
                w.close()
        return rows

    def _labelled(self, rows: pd.DataFrame | None) -> pd.DataFrame:
        """rows (carrying _SEQ) as build_reports' frame: the schema's columns, the node's labels, in order."""
        if rows is None:
            return _node_frame(pd.DataFrame({c: pd.Series(dtype=EXPORT_DTYPES[c]) for c in FIELD_NAMES}),
                               np.empty(0, dtype=np.int64))
        seq = rows[_SEQ].to_numpy()
        labels = seq if self._rank is None else self._rank[seq]
        order = np.argsort(labels, kind="stable")
        return _node_frame(rows.iloc[order], labels[order])

    def units(self) -> list[list[int]]:
        """Groups of parts of about group_rows rows, each read on its own by frame()."""
        groups: list[list[int]] = []
        group: list[int] = []
        size = 0
        for part in sorted(self._part_rows):
            group.append(part)
            size += self._part_rows[part]
            if size >= self._group_rows:
                groups.append(group)
                group, size = [], 0
        if group:
            groups.append(group)
        return groups

    def frame(self, parts: list[int]) -> tuple[pd.DataFrame, frozenset[str]]:
        """A group of parts as (events in time order, labelled by row; the uids of the pods they
        hold whole), their spill files removed."""
        import pyarrow as pa
        from .read import _pandas_types_mapper
        tables = []
        with _spilling():
            for part in parts:
                path = self._dir / f"{part}.arrow"
                with pa.OSFile(str(path)) as src:
                    tables.append(pa.ipc.open_stream(src).read_all())
                path.unlink()
        table = pa.concat_tables(tables)
        del tables
        table = categories_in_arrow(table, EXPORT_DTYPES)        # the string columns go as they are encoded
        df = table.to_pandas(types_mapper=_pandas_types_mapper())
        del table
        # a row in two of these parts (a signal across pods) is here twice: keep it once
        df = df.drop_duplicates(_SEQ) if len(parts) > 1 else df
        seq = df[_SEQ].to_numpy()
        labels = seq if self._rank is None else self._rank[seq]
        order = np.argsort(labels, kind="stable")
        events = _node_frame(df.iloc[order], labels[order])
        chosen = set(parts)
        uids = {str(u) for col in ("pod_uid", "target_pod_uid") for u in pd.unique(events[col].dropna()) if u}
        return events, frozenset(u for u in uids if part_of(u, self.n_parts) in chosen)

    def close(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)


def _node_frame(rows: pd.DataFrame, labels: np.ndarray) -> pd.DataFrame:
    """The schema's columns in EXPORT_DTYPES (a category: only the values present, sorted, as
    read_recording has them), labelled."""
    out = {}
    for col in FIELD_NAMES:
        s = rows[col]
        dtype = EXPORT_DTYPES[col]
        if dtype == "category":
            if isinstance(s.dtype, pd.CategoricalDtype) and len(s.cat.categories):
                s = s.cat.remove_unused_categories()
                s = s.cat.reorder_categories(sorted(s.cat.categories))      # the values present, sorted
            else:
                s = s.astype(object).astype("category")
        elif str(s.dtype) != dtype:
            s = s.astype(dtype)
        out[col] = s.array
    return pd.DataFrame(out, index=pd.Index(labels))
