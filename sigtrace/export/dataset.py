"""The export as a Hive-partitioned Parquet dataset: DIR/node=<node>/date=<YYYY-MM-DD>/part-<digest>.parquet.

DuckDB (`read_parquet('DIR/**/*.parquet', hive_partitioning = true)`), Spark, Trino and
pyarrow.dataset read it as is. Hive layout means the partition columns live in the path only: a
`node` column inside the files as well would make Spark refuse the dataset (duplicate column).
The date is the UTC day of each event's ts.

Node names come from the recorded meta.json (tenant data): each one becomes a directory name
through pyarrow's own Hive formatting, which URL-encodes the value (`../x` -> `node=..%2Fx`), so
no name can climb out of DIR or into another node's directory, and readers decode it back.

Appending: a second recording (another node, another day) adds parts and never replaces one. A
part's name is a digest of its data pages (the footer, which carries source paths, left out), so
the same events exported again come out under the same name and are skipped, and two different
parts can never share a name. The new part is linked into place (link(2) fails where a file
exists), so two exports writing at once cannot overwrite each other either.
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import OutputError, UsageProblem
from ..events.writer import FILE_MODE, existing_output
from .columns import NODE
from .write import arrow_table

DATE = "date"
DIR_MODE = 0o750
NAME_MAX = 255          # bytes of one directory name on Linux filesystems
SECONDS_PER_DAY = 86400


@dataclass
class DatasetWrite:
    written: list[str] = field(default_factory=list)    # parts added, relative to DIR
    skipped: list[str] = field(default_factory=list)    # parts already there with the same events


def is_dataset_target(path: str) -> bool:
    """--parquet DIR writes a dataset: an existing directory, or a path ending in '/'."""
    return path.endswith("/") or (os.path.isdir(path) and not os.path.islink(path))


def partitioning():
    """The dataset's Hive partitioning (node and date as strings): the writer and analyze share it."""
    import pyarrow as pa
    import pyarrow.dataset as ds
    return ds.partitioning(pa.schema([(NODE, pa.string()), (DATE, pa.string())]), flavor="hive")


def _utc_days(ts: pd.Series) -> tuple[np.ndarray, list[str]]:
    """Per row the index of its UTC day, and the days as YYYY-MM-DD: one strftime per distinct day,
    not per event (ts is finite and in range: the readers skip rows where it is not)."""
    codes, days = pd.factorize(np.floor(ts.to_numpy(dtype=float) / SECONDS_PER_DAY).astype(np.int64))
    names = pd.to_datetime(days * SECONDS_PER_DAY, unit="s", utc=True).strftime("%Y-%m-%d")
    return codes, list(names)


def _own_categories(df: pd.DataFrame) -> pd.DataFrame:
    """Only the categories the part's rows use: a part must not carry other nodes' pod names (nor
    change its digest with what else was exported beside it)."""
    return df.assign(**{c: df[c].cat.remove_unused_categories() for c in df.columns
                        if isinstance(df[c].dtype, pd.CategoricalDtype)})


def _check_root(root: Path) -> None:
    st = existing_output(root, UsageProblem)
    if st is not None and not stat.S_ISDIR(st.st_mode):
        raise UsageProblem(f"{root} exists and is not a directory: give a directory for the dataset")


def _subdir(parent: Path, name: str) -> Path:
    """parent/name as a real directory of ours: made 0750 when missing; a link (planted to send the
    parts elsewhere) or a file there is refused."""
    if len(name.encode()) > NAME_MAX:
        raise UsageProblem(f"partition directory {name[:60]}... is {len(name.encode())} bytes, longer than a "
                           "directory name can be (a very long node name?); export it with --parquet FILE")
    path = parent / name
    try:
        os.mkdir(path, DIR_MODE)
    except FileExistsError:
        pass
    st = existing_output(path, OutputError)
    if st is None or not stat.S_ISDIR(st.st_mode):
        raise OutputError(f"{path} is not a directory; the dataset under {parent} was changed by someone else")
    return path


def _data_digest(path: Path) -> str:
    """sha256 of a Parquet file's data pages: everything before the footer (whose length the file's
    last 8 bytes give), so metadata such as the source paths does not change the name."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        fh.seek(size - 8)
        (footer_len,) = struct.unpack("<I", fh.read(4))
        fh.seek(0)
        h, left = hashlib.sha256(), max(size - 8 - footer_len, 0)
        while left:
            chunk = fh.read(min(left, 1 << 20))
            if not chunk:
                break
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()[:32]


def _write_part(table, directory: Path, meta: dict) -> tuple[str, bool]:
    """One part into directory: (its file name, whether it was added rather than already there)."""
    import pyarrow.parquet as pq
    schema_meta = dict(table.schema.metadata or {})
    schema_meta[b"sigtrace"] = json.dumps(meta, sort_keys=True, default=str).encode()
    fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=".part-", suffix=".tmp")   # hidden from readers
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        pq.write_table(table.replace_schema_metadata(schema_meta), tmp, compression="zstd")
        os.chmod(tmp, FILE_MODE)
        name = f"part-{_data_digest(tmp)}.parquet"
        try:
            os.link(tmp, directory / name)
            added = True
        except FileExistsError:
            added = False            # the same events, exported before: keep the part that is there
        return name, added
    finally:
        tmp.unlink(missing_ok=True)


def write_dataset(df: pd.DataFrame, meta: dict, root: str | os.PathLike) -> DatasetWrite:
    """Add df (the export frame: COLUMNS, sorted by ts) to the dataset at root, one part per node
    and UTC day. meta is the export's sidecar dict; each part carries it with its own node's meta only."""
    root = Path(root)
    _check_root(root)
    try:
        root.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot make {root}: {exc.strerror}; choose a writable directory") from None
    import pyarrow.dataset as ds
    part = partitioning()
    nodes = df[NODE].astype("category")
    day_codes, days = _utc_days(df["ts"])
    group = nodes.cat.codes.to_numpy(dtype=np.int64) * len(days) + day_codes
    out = DatasetWrite()
    columns = [c for c in df.columns if c != NODE]
    try:
        for key, rows in pd.Series(group).groupby(group, sort=True).indices.items():
            node, day = str(nodes.cat.categories[key // len(days)]), days[key % len(days)]
            rel, _ = part.format((ds.field(NODE) == node) & (ds.field(DATE) == day))
            directory = root
            for name in rel.split("/"):
                directory = _subdir(directory, name)
            node_meta = dict(meta, nodes={node: meta.get("nodes", {}).get(node, {"node": node})})
            name, added = _write_part(arrow_table(_own_categories(df.iloc[rows][columns])), directory, node_meta)
            (out.written if added else out.skipped).append(f"{rel}/{name}")
    except OSError as exc:
        raise OutputError(f"cannot write the dataset under {root}: {exc.strerror}; choose a writable directory") from None
    return out
