"""A fleet's exports as parts by node and pod, for analyze in bounded memory.

An export of a week or a fleet does not fit in one frame (10M rows were ~1 GB as pandas columns,
and the correlation of a node's events several times that). Each node is reported as if alone, and a
node's pods are independent once their events are together (sigtrace.events.partition): so the
exports' chunks (analyze.read.ExportReader) are spilled to temporary Arrow files by node; then,
one node at a time, its rows are split by a hash of the pod (a signal to another pod's process goes
to both pods' parts), and the parts are read back a few at a time. Small nodes (at most
BATCH_NODE_ROWS rows) are not split: they are read back together, about GROUP_ROWS rows at a time,
and reported in one correlation (report.batch: a node's report has a fixed cost that was most of a
small node's; 4,000 nodes of ~30 events took 268 s, now 20 s). The peak is one chunk while
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
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd

from ..errors import OutputError
from ..events.fast_reader import categories_in_arrow
from ..events.partition import Summary, part_of, pod_routes, spill_dir, spill_where, table_uids
from ..events.schema import FIELD_NAMES, POD_LIFECYCLE
from ..export.columns import EXPORT_DTYPES, NODE

MAX_PARTS = 256            # a node's parts by pod: a 10M-row node makes parts of ~40k rows
GROUP_ROWS = 150_000       # parts read back together up to about this many rows (small node: one group)
MAX_OPEN = 256             # spill files by node open at once: more nodes share files (by node index)
# a node of at most this many rows is reported with other small ones in one correlation (report.batch):
# a node's report has a fixed cost of ~60 ms, most of a small node's
BATCH_NODE_ROWS = 20_000
MAX_BATCH_NODES = 1000     # and at most this many nodes in a batch: what a node costs besides its rows is bounded too
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
    """What the spill keeps of a node while reading: a few numbers, not its rows' times (a list of
    every node's ts per chunk grew with the exports: ~300 MB at 10M rows over 6,620 nodes)."""
    index: int                               # names the node's spill files (a node name is tenant data)
    rows: int = 0
    top: float = -np.inf                     # its latest ts
    end: float = -np.inf                     # the ts of its last row read
    ordered: bool = True                     # its rows came in time order: their place is their label
    kinds: set[str] = field(default_factory=set)

    def rank(self, ts_by_seq: Callable[[], np.ndarray], in_order: bool) -> np.ndarray | None:
        """Its rows' labels (_labels): None when their place in reading order is the label, else
        computed from its rows' ts, asked for only then (read back from the spill)."""
        return None if in_order or self.ordered else _labels(ts_by_seq(), False)


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
        self._lifecycle: list[pd.DataFrame] = []   # every node's pod_lifecycle rows, with _SEQ and _NODE

    def add(self, chunk: pd.DataFrame) -> None:
        """A chunk of usable rows (analyze.read: COLUMNS, EXPORT_DTYPES, a node on every row).
        Node by node only for a few numbers; the rows go to the spill files one write per file
        (a fleet of thousands of small nodes has a few rows of each in a chunk)."""
        import pyarrow as pa
        codes, names = pd.factorize(chunk[NODE].astype(str).to_numpy())
        order = np.argsort(codes, kind="stable")            # by node, each node's rows in chunk order
        bounds = np.r_[0, np.cumsum(np.bincount(codes, minlength=len(names)))]
        kind_codes, kinds = pd.factorize(chunk["kind"].astype(object).to_numpy())
        ts = chunk["ts"].to_numpy(dtype=float)[order]                # by node, as order
        starts, ends = bounds[:-1], bounds[1:]
        tops = np.maximum.reduceat(ts, starts) if len(ts) else ts
        back = np.r_[False, ts[1:] < ts[:-1]]                        # a row before the one read before it
        back[starts] = False                                         # ... of the same node
        disorder = np.logical_or.reduceat(back, starts) if len(ts) else back
        seq = np.empty(len(chunk), dtype=np.int64)
        index = np.empty(len(chunk), dtype=np.int32)
        for k, name in enumerate(names):
            node = self._nodes.setdefault(str(name), _Node(len(self._nodes)))
            rows = order[starts[k]:ends[k]]
            seq[rows] = np.arange(node.rows, node.rows + len(rows), dtype=np.int64)
            index[rows] = node.index
            node.ordered = node.ordered and not disorder[k] and not ts[starts[k]] < node.end
            node.top, node.end = max(node.top, float(tops[k])), float(ts[ends[k] - 1])
            node.rows += len(rows)
            node.kinds |= {str(kinds[c]) for c in np.unique(kind_codes[rows]) if c >= 0}
        lc = (chunk["kind"] == POD_LIFECYCLE).to_numpy(dtype=bool, na_value=False)
        if lc.any():
            self._lifecycle.append(chunk[lc].assign(**{_SEQ: seq[lc], _NODE: index[lc]}))
        table = pa.Table.from_pandas(chunk[list(FIELD_NAMES)].assign(**{_SEQ: seq, _NODE: index}),
                                     preserve_index=False).cast(self._schema)
        for bucket, rows_of in _runs_by(table, index % self._buckets):
            with _spilling():
                self._writer(bucket).write_table(rows_of)

    def _lifecycle_by_node(self) -> "_Lifecycle":
        """Every node's pod_lifecycle rows as read (carrying _SEQ), grouped by node once (a scan of
        every chunk's rows per node was quadratic in a fleet of big nodes)."""
        frames, self._lifecycle = self._lifecycle, []
        return _Lifecycle(pd.concat(frames) if frames else None)

    def _bucket_file(self, bucket: int) -> Path:
        return Path(self._dir.name) / f"{bucket}.arrow"

    def _writer(self, bucket: int) -> Any:
        import pyarrow as pa
        w = self._writers.get(bucket)
        if w is None:
            w = self._writers[bucket] = pa.ipc.new_stream(str(self._bucket_file(bucket)), self._schema)
        return w

    def units(self, metas: dict[str, dict], notes: list[str]) -> Iterator["tuple[str, NodeParts] | SmallNodes"]:
        """Each node once, spill file by spill file: a node of more than BATCH_NODE_ROWS rows as
        (node, its parts); smaller ones gathered across files into SmallNodes batches of about
        group_rows rows (each file is read once for its small nodes while they fit in a batch).
        Not in name order: the fleet sorts. metas: node -> meta (from the exports), notes: what
        applies to every node."""
        from ..correlate.build import capabilities_for
        with _spilling():
            for w in self._writers.values():
                w.close()
            self._writers.clear()
        by_bucket: dict[int, list[str]] = {}
        for name in sorted(self._nodes):
            by_bucket.setdefault(self._nodes[name].index % self._buckets, []).append(name)
        pending = _Pending(metas, notes, self.in_order)
        lifecycle = self._lifecycle_by_node()
        for bucket, names in sorted(by_bucket.items()):
            spill = self._bucket_file(bucket)
            small = [n for n in names if self._nodes[n].rows <= BATCH_NODE_ROWS]
            big = [n for n in names if self._nodes[n].rows > BATCH_NODE_ROWS]
            for name in big:
                node = self._nodes.pop(name)
                meta, incomplete = _node_meta(name, metas, notes)
                with _spilling():
                    parts = NodeParts(node, lifecycle.of(node.index), meta, incomplete, spill,
                                      len(names) > 1, self.group_rows, self.in_order)
                try:
                    yield name, parts
                finally:
                    parts.close()
            for group in _by_rows(small, {n: self._nodes[n].rows for n in small}, self.group_rows):
                nodes = {name: self._nodes.pop(name) for name in group}   # a batch's come from its frame
                with _spilling():
                    rows = _read_nodes(nodes, spill, shared=len(names) > len(group))
                for name, table in rows.items():
                    caps = capabilities_for(_node_meta(name, metas, [])[0], nodes[name].kinds)[0]
                    pending.add(caps, name, nodes[name], table)
                if pending.rows >= self.group_rows or pending.nodes >= MAX_BATCH_NODES:
                    yield from pending.flush()
            spill.unlink(missing_ok=True)        # its last node taken: the file goes
        yield from pending.flush()

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


class _Lifecycle:
    """Every node's pod_lifecycle rows, with the positions of each node's (a frame is made only
    for the big nodes that ask: one per node of a fleet of tiny nodes was ~1 ms and 40 KB each)."""

    def __init__(self, rows: pd.DataFrame | None) -> None:
        self.rows = rows
        self.at = rows.groupby(_NODE, sort=False).indices if rows is not None else {}

    def of(self, index: int) -> list[pd.DataFrame]:
        pos = self.at.get(index)
        return [self.rows.iloc[pos]] if pos is not None else []


def _node_meta(name: str, metas: dict[str, dict], notes: list[str]) -> tuple[dict[str, Any], list[str]]:
    """The node's recorder meta and its notes (the export's own and those of every node)."""
    meta = dict(metas.get(name) or {"node": name})
    incomplete = list(meta.get("incomplete") or []) + list(notes)
    for key in ("sources", "incomplete"):      # the export's own keys, not the recorder's
        meta.pop(key, None)
    return meta, incomplete


def _labels(ts: np.ndarray, in_order: bool) -> np.ndarray | None:
    """A node's row labels by its rows' place in reading order: None when that is the label (one
    export, or rows in time order), else their rank in a stable sort by ts."""
    if in_order or not len(ts) or (ts[1:] >= ts[:-1]).all():
        return None
    order = np.argsort(ts, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return rank


def _by_seq(ts: np.ndarray, seq: np.ndarray, n: int) -> np.ndarray:
    """A node's rows' ts in reading order (_SEQ), from its rows in any order."""
    out = np.empty(n)
    out[seq] = ts
    return out


def _lifecycle_frame(lifecycle: list[pd.DataFrame], rank: np.ndarray | None) -> pd.DataFrame:
    """A node's pod_lifecycle rows (carrying _SEQ) as build_reports' frame: labelled, in order."""
    if not lifecycle:
        return _node_frame(pd.DataFrame({c: pd.Series(dtype=EXPORT_DTYPES[c]) for c in FIELD_NAMES}),
                           np.empty(0, dtype=np.int64))
    rows = pd.concat(lifecycle)
    seq = rows[_SEQ].to_numpy()
    return _in_label_order(rows, seq if rank is None else rank[seq])


def _spilled_frame(table) -> pd.DataFrame:
    """Spilled rows (an Arrow table, consumed) as pandas, the string columns as categories."""
    from .read import _pandas_types_mapper
    table = categories_in_arrow(table, EXPORT_DTYPES)        # the string columns go as they are encoded
    return table.to_pandas(types_mapper=_pandas_types_mapper())


def _in_label_order(df: pd.DataFrame, labels: np.ndarray) -> pd.DataFrame:
    """Rows as build_reports' frame: labelled, in label order."""
    order = np.argsort(labels, kind="stable")
    return _node_frame(df.iloc[order], labels[order])


def _by_rows(names: list[str], rows: dict[str, int], cap: int) -> Iterator[list[str]]:
    """names in runs of at most cap rows and MAX_BATCH_NODES names (a run holds at least one)."""
    run: list[str] = []
    n = 0
    for name in names:
        if run and (n + rows[name] > cap or len(run) >= MAX_BATCH_NODES):
            yield run
            run, n = [], 0
        run.append(name)
        n += rows[name]
    if run:
        yield run


def _read_nodes(nodes: dict[str, _Node], spill: Path, shared: bool) -> dict[str, Any]:
    """Each node's rows of a spill file (an Arrow table each, in reading order), in one pass."""
    import pyarrow as pa
    import pyarrow.compute as pc
    wanted = pa.array([n.index for n in nodes.values()], pa.int32())
    tables = []
    with pa.OSFile(str(spill)) as src:
        for batch in pa.ipc.open_stream(src):
            table = pa.Table.from_batches([batch])
            tables.append(table.filter(pc.is_in(table.column(_NODE), wanted)) if shared else table)
    table = pa.concat_tables(tables)
    del tables
    # one take by node, then a slice per node: a filter per node scanned the whole batch each time
    by_index = dict(_runs_by(table, table.column(_NODE).to_numpy()))
    return {name: by_index.get(n.index, table.slice(0, 0)) for name, n in nodes.items()}


def _runs_by(table, keys: np.ndarray) -> Iterator[tuple[int, Any]]:
    """(key, its rows in table order) for each key of the rows: one take sorted by key, then a
    zero-copy slice per key."""
    import pyarrow as pa
    if not len(keys):
        return
    order = np.argsort(keys, kind="stable")
    table, keys = table.take(pa.array(order)), keys[order]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    for a, b in zip(starts, np.r_[starts[1:], len(keys)]):
        yield int(keys[a]), table.slice(int(a), int(b - a))


class _Pending:
    """Small nodes read and not reported yet, by capabilities (only nodes alike share a batch)."""

    def __init__(self, metas: dict[str, dict], notes: list[str], in_order: bool) -> None:
        self.metas, self.notes, self.in_order = metas, notes, in_order
        self.groups: dict[frozenset[str], list[tuple[str, _Node, Any, set[str]]]] = {}
        self.rows = self.nodes = 0

    def add(self, caps: frozenset[str], name: str, node: _Node, table: Any) -> None:
        self.groups.setdefault(caps, []).append((name, node, table, table_uids(table)))
        self.rows += node.rows
        self.nodes += 1

    def flush(self) -> Iterator["SmallNodes"]:
        """Every pending node, in batches whose nodes have no pod in common: a node goes to the
        first batch after every batch that holds one of its pods (an export copied from another
        node shares its pods), in one pass (a fleet of copies makes as many batches as copies)."""
        groups, self.groups, self.rows, self.nodes = self.groups, {}, 0, 0
        for group in groups.values():
            batches: list[list] = []
            after: dict[str, int] = {}          # pod uid -> the first batch that may still take it
            for name, node, table, uids in group:
                b = max((after.get(u, 0) for u in uids), default=0)
                if b == len(batches):
                    batches.append([])
                batches[b].append((name, node, table, uids))
                after.update((u, b + 1) for u in uids)
            del group
            for batch in batches:
                for at in range(0, len(batch), MAX_BATCH_NODES):
                    yield SmallNodes.made(batch[at:at + MAX_BATCH_NODES], self.metas, self.notes, self.in_order)


@dataclass
class SmallNode:
    """A node of a SmallNodes batch: its name and what report.batch needs of it."""
    name: str
    member: Any                      # report.batch.Member


class SmallNodes:
    """Small nodes reported in one correlation (report.batch): their rows in one frame, each
    node's rows labelled after the nodes before it. Their pods are disjoint."""

    def __init__(self, nodes: list[SmallNode], events: pd.DataFrame) -> None:
        self.nodes, self.events = nodes, events

    @classmethod
    def made(cls, batch: list, metas: dict[str, dict], notes: list[str], in_order: bool) -> "SmallNodes":
        """batch: (name, _Node, its rows as read, its pod uids) of each node."""
        import pyarrow as pa
        from ..report.batch import Member
        tables, labels, bases, lasts = [], [], [], []
        base = 0
        for name, node, rows, uids in batch:
            seq = rows.column(_SEQ).to_numpy()
            rank = node.rank(lambda: _by_seq(rows.column("ts").to_numpy(), seq, node.rows), in_order)
            labels.append(base + (seq if rank is None else rank[seq]))
            tables.append(rows)
            bases.append(base)
            lasts.append(node.top if node.rows else 0.0)
            base += node.rows
        # one chunk per column, not one per node: a batch of thousands of tiny nodes held ~40 KB each
        table = pa.concat_tables(tables).combine_chunks()
        del tables
        events = _in_label_order(_spilled_frame(table), np.concatenate(labels))
        members = []
        for (name, node, _, uids), base, last in zip(batch, bases, lasts):
            meta, incomplete = _node_meta(name, metas, notes)
            members.append(SmallNode(name, Member(meta, incomplete, frozenset(node.kinds), last, base, node.rows,
                                                  frozenset(uids))))
        return cls(members, events)


class NodeParts:
    """One node's events as parts by pod: report.build.report_parts' input (meta, incomplete,
    summary, units() and frame(unit))."""

    def __init__(self, node: _Node, lifecycle: list[pd.DataFrame], meta: dict[str, Any], incomplete: list[str],
                 spill: Path, shared: bool, group_rows: int, in_order: bool) -> None:
        self.meta, self.incomplete, self._group_rows = meta, incomplete, group_rows
        # parts small enough that a group of them is about group_rows, at most MAX_PARTS
        self.n_parts = int(min(max(node.rows * 4 // group_rows, 1), MAX_PARTS))
        self._dir = spill.parent / f"{node.index}-parts"
        self._dir.mkdir()
        # the node's ts by row, kept while splitting only when its rows came out of time order
        ts = None if in_order or node.ordered else np.empty(node.rows)
        self._part_rows = self._split(spill, node.index if shared else None, ts)
        # a row's label: its place in the node's frame (read order, or a stable sort by ts)
        self._rank = node.rank(lambda: ts, in_order)
        self.summary = Summary(node.rows, frozenset(node.kinds), node.top if node.rows else 0.0,
                               _lifecycle_frame(lifecycle, self._rank))

    def _split(self, spill: Path, node: int | None, ts: np.ndarray | None) -> dict[int, int]:
        """The node's rows of the spill (all of it, or those of node when nodes share it), batch by
        batch, into one file per part; rows per part. ts, when given, gets each row's ts at its _SEQ."""
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
                    if ts is not None:
                        ts[table.column(_SEQ).to_numpy()] = table.column("ts").to_numpy()
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
        tables = []
        with _spilling():
            for part in parts:
                path = self._dir / f"{part}.arrow"
                with pa.OSFile(str(path)) as src:
                    tables.append(pa.ipc.open_stream(src).read_all())
                path.unlink()
        df = _spilled_frame(pa.concat_tables(tables))
        del tables
        # a row in two of these parts (a signal across pods) is here twice: keep it once
        df = df.drop_duplicates(_SEQ) if len(parts) > 1 else df
        seq = df[_SEQ].to_numpy()
        events = _in_label_order(df, seq if self._rank is None else self._rank[seq])
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
