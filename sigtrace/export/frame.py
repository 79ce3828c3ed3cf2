"""Recordings -> one export DataFrame: all events, a node column, pod metadata filled in.

Everything here is vectorised over the events; only pod_lifecycle rows (a handful per pod)
have their JSON `detail` parsed one by one.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from pandas.api.types import is_string_dtype

from ..events.lifecycle import POD_SEEN, detail_object
from ..events.source import Recording
from ..events.schema import POD_LIFECYCLE, SCHEMA_VERSION
from .columns import COLUMNS, EXPORT_DTYPES, NODE, POD_META_COLUMNS, SCHEMA_VERSION_COLUMN


def node_name(rec: Recording) -> tuple[str, str | None]:
    """The recording's node, and a note when it had to be guessed from the directory name."""
    node = rec.meta.get("node")
    if isinstance(node, str) and node:
        return node, None
    guess = Path(rec.source).name or rec.source
    return guess, f"{rec.source}: no node in meta.json; using the directory name {guess!r} as node"


def _strip_runtime(cid: object) -> object:
    # Kubernetes names containers "containerd://<id>"; the kernel side only knows <id>.
    return cid.split("://", 1)[1] if isinstance(cid, str) and "://" in cid else cid


def container_names(lifecycle: pd.DataFrame) -> dict[str, str]:
    """container_id -> container name, from pod_seen details and lifecycle rows that carry both."""
    names: dict[str, str] = {}
    both = lifecycle.dropna(subset=["container_id", "container_name"])
    names.update(zip(both["container_id"].map(_strip_runtime), both["container_name"]))
    seen = lifecycle[(lifecycle["event"] == POD_SEEN) & lifecycle["detail"].notna()]
    for detail in seen["detail"]:
        # a malformed detail only costs the names, never the export
        containers = detail_object(detail).get("containers") or {}
        if isinstance(containers, dict):
            names.update({_strip_runtime(k): v for k, v in containers.items() if isinstance(v, str)})
    return names


def _filled(recorded: pd.Series, keys: tuple[np.ndarray, pd.Index], names: pd.Series,
            keep: np.ndarray) -> pd.Series:
    """recorded where it has a value or keep is set, else the name of the row's key, as a categorical.
    keys is pd.factorize of the key column: a million rows cost one lookup per distinct key, and the
    result is built from codes (making a categorical from a million strings would hash each one)."""
    codes, uniques = keys
    key_codes, fill_names = pd.factorize(uniques.map(names) if len(uniques) else pd.Index([], dtype=object))
    rec = recorded.astype("category")
    cats = rec.cat.categories.union(pd.Index(fill_names))
    # each mapping array ends with -1, so that code -1 (null) indexes to -1 again
    rec_codes = np.append(cats.get_indexer(rec.cat.categories), -1)[rec.cat.codes.to_numpy()]
    key_to_cat = np.append(cats.get_indexer(fill_names), -1)[key_codes]
    fill_codes = np.append(key_to_cat, -1)[codes]
    out = np.where(keep | (rec_codes >= 0), rec_codes, fill_codes)
    return pd.Series(pd.Categorical.from_codes(out, categories=cats), index=recorded.index)


@dataclass
class PodNames:
    """What the name fill needs of the whole export: pod_uid -> pod_name/namespace (the last lifecycle
    row naming the pod, in export order) and container_id -> container name. None: no lifecycle rows,
    nothing is filled."""
    by_pod: pd.DataFrame
    containers: pd.Series

    @classmethod
    def of(cls, lifecycle: pd.DataFrame) -> "PodNames | None":
        """From the export's pod_lifecycle rows, cast to EXPORT_DTYPES, in export (ts) order."""
        if lifecycle.empty:
            return None
        by_pod = lifecycle.dropna(subset=["pod_uid"]).groupby("pod_uid", sort=False, observed=True)[
            ["pod_name", "namespace"]].last()
        return cls(by_pod, pd.Series(container_names(lifecycle), dtype=object))


def is_lifecycle(df: pd.DataFrame) -> np.ndarray:
    return (df["kind"] == POD_LIFECYCLE).to_numpy(dtype=bool, na_value=False)


def fill_pod_metadata(df: pd.DataFrame, names: PodNames | None = None) -> None:
    """Fill pod_name/namespace (by pod_uid) and container_name (by container_id) in place, where
    null, on every event except pod_lifecycle ones: those keep what the watcher wrote (and are all
    the report reads names from, so analyze reads the filled columns as they are). names: of the
    whole export when df is one chunk of it (default: df's own lifecycle rows)."""
    keep = is_lifecycle(df)
    if names is None:
        names = PodNames.of(df[keep])
    if names is None:
        return
    pods = pd.factorize(df["pod_uid"])
    for col in ("pod_name", "namespace"):
        df[col] = _filled(df[col], pods, names.by_pod[col].dropna(), keep)
    df["container_name"] = _filled(df["container_name"], pd.factorize(df["container_id"]), names.containers, keep)


def fill_categories(names: PodNames | None, recorded: dict[str, set], keys: dict[str, set]) -> dict[str, set]:
    """The categories fill_pod_metadata gives each name column over the whole export: its recorded
    values and the names of every key (pod_uid, container_id) that occurs, as _filled makes them."""
    out = {col: set(recorded[col]) for col in POD_META_COLUMNS}
    if names is None:
        return out
    for col, key, table in (("pod_name", "pod_uid", names.by_pod["pod_name"].dropna()),
                            ("namespace", "pod_uid", names.by_pod["namespace"].dropna()),
                            ("container_name", "container_id", names.containers)):
        found = pd.Index(sorted(keys[key]), dtype=object).map(table) if keys[key] else pd.Index([])
        out[col] |= {v for v in found if isinstance(v, str)}
    return out


def _text_categories(s: pd.Series) -> pd.Series:
    """A categorical column with text categories: one that is all null comes from the reader with
    float categories, which Arrow writes as a float column that analyze cannot read as a category."""
    cats = s.cat.categories
    return s if is_string_dtype(cats) else s.cat.rename_categories(cats.astype(str))


def run_meta(rec: Recording, node: str) -> dict:
    """A run's own meta as the sidecar has a node's: its source and what it lacks."""
    return {**rec.meta, "node": node, "sources": [rec.source],
            "incomplete": [f"{rec.source}: {what}" for what in rec.incomplete]}


def add_meta(metas: dict, key: object, meta: dict) -> None:
    """Add a run's meta (run_meta) to metas[key]: several runs of a node add up what they lost."""
    old = metas.get(key)
    if old is None:
        metas[key] = dict(meta, sources=list(meta["sources"]), incomplete=list(meta["incomplete"]))
        return
    old["lost_events"] = (old.get("lost_events") or 0) + (meta.get("lost_events") or 0)
    old["sources"].extend(meta["sources"])
    old["incomplete"].extend(meta["incomplete"])


def register_run(rec: Recording, metas: dict[str, dict], notes: list[str]) -> str:
    """Add a run's meta to its node's (metas: per node, for the sidecar); its node."""
    node, note = node_name(rec)
    if note:
        notes.append(note)
    add_meta(metas, node, run_meta(rec, node))
    return node


def export_frame(recordings: list[Recording]) -> tuple[pd.DataFrame, dict[str, dict], list[str]]:
    """Merge recordings into one frame in COLUMNS order, sorted by ts (stable: a node's own order is kept).

    Returns the frame, per-node meta (for the sidecar) and notes about what is incomplete.
    """
    df, metas, notes, _ = export_frame_runs(recordings)
    return df, metas, notes


def export_frame_runs(recordings: list[Recording]) -> tuple[pd.DataFrame, dict[str, dict], list[str], np.ndarray]:
    """export_frame, and per row the index of its recording in recordings."""
    frames: list[pd.DataFrame] = []
    metas: dict[str, dict] = {}
    notes: list[str] = []
    for rec in recordings:
        df = rec.events.copy()
        df[NODE] = register_run(rec, metas, notes)
        frames.append(df)
    df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    runs = np.repeat(np.arange(len(frames)), [len(f) for f in frames])
    notes += cast_export(df)
    if len(frames) > 1:
        order = np.argsort(df["ts"].to_numpy(dtype=float), kind="stable")
        df, runs = df.iloc[order].reset_index(drop=True), runs[order]
    return finish_export(df), metas, notes, runs


def cast_export(df: pd.DataFrame) -> list[str]:
    """Add schema_version and cast df (events of the reader's dtypes, with a node column) to
    EXPORT_DTYPES in place; a note per column that had to stay text."""
    notes = []
    df[SCHEMA_VERSION_COLUMN] = SCHEMA_VERSION
    # concat turns categoricals with different categories into objects: cast back to the schema
    for col, dtype in EXPORT_DTYPES.items():
        if str(df[col].dtype) != dtype:
            try:
                df[col] = df[col].astype(dtype)
            except (TypeError, ValueError):
                # wrongly typed values from a newer or broken recorder: keep them, as text
                df[col] = df[col].astype("string")
                notes.append(f"column {col!r} has values that are not {dtype}: exported as text")
    return notes


def finish_export(df: pd.DataFrame, names: PodNames | None = None) -> pd.DataFrame:
    """The cast frame (in ts order) with pod names filled, text categories, in COLUMNS order.
    names: of the whole export when df is one chunk of it."""
    fill_pod_metadata(df, names)
    for col in EXPORT_DTYPES:
        if isinstance(df[col].dtype, pd.CategoricalDtype):
            df[col] = _text_categories(df[col])
    return df[list(COLUMNS)]


def with_categories(df: pd.DataFrame, categories: dict[str, pd.Index]) -> pd.DataFrame:
    """df's categorical columns with the whole export's categories: every chunk then has the types
    (dictionary index width) and dictionaries the whole frame would have."""
    for col, cats in categories.items():
        s = df[col]
        out = s.cat.set_categories(cats)
        if out.isna().sum() != s.isna().sum():      # a value the first pass did not see: never drop it
            raise RuntimeError(f"export: column {col!r} has a value not seen while reading")
        df[col] = out
    return df
