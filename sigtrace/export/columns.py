"""The export's columns: the event schema's fields in schema order, then what the export adds.

One list, used by the writer, the reader (sigtrace analyze) and the README, so that the
three cannot drift apart.
"""
from __future__ import annotations

from ..events.schema import DTYPES, FIELD_NAMES

NODE = "node"
SCHEMA_VERSION_COLUMN = "schema_version"

# pod_name, namespace and container_name are pod_lifecycle fields in the event schema; the
# export fills them for every event of a pod whose lifecycle events name it (where null), so that
# a spreadsheet row says whose it is. analyze reads them as they are: the report takes names from
# pod_lifecycle rows only, which keep what the watcher wrote.
POD_META_COLUMNS = ("pod_name", "namespace", "container_name")

EXTRA_COLUMNS = (NODE, SCHEMA_VERSION_COLUMN)
COLUMNS: tuple[str, ...] = FIELD_NAMES + EXTRA_COLUMNS

# dtypes of the exported frame: the schema's, except that the pod metadata is categorical like
# node (a few names repeated on every row: dictionary-encoded in Parquet and in memory), plus a
# plain integer version.
EXPORT_DTYPES: dict[str, str] = {**DTYPES, **{c: "category" for c in POD_META_COLUMNS},
                                 NODE: "category", SCHEMA_VERSION_COLUMN: "Int64"}

# Columns analyze cannot work without; other schema columns missing from an export are
# filled with nulls and reported under `incomplete`.
REQUIRED_COLUMNS = (SCHEMA_VERSION_COLUMN, NODE, "ts", "kind", "pid", "tid", "comm", "pod_uid", "container_id")


def sidecar_path(path: str) -> str:
    """Where the export's per-node meta (backend, lost events, incomplete notes) is written."""
    return f"{path}.meta.json"
