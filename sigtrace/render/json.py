"""JSON for programs: the ReportSet's dict, keys sorted, stable across runs. orjson: the standard
library's encoder was a quarter of a big recording's report.

Written pod by pod: one document of 26k pods is ~0.5 GB, and its dict, bytes and string at once
tripled the report's peak memory. Each value is dumped alone and indented to its depth, which gives
the same bytes as dumping the whole dict (tests/test_render_json.py)."""
from __future__ import annotations

from typing import Any, Iterator, TextIO

import orjson

from ..report.model import ReportSet

_OPTIONS = orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY


def _dump(value: Any, depth: int) -> str:
    """value as orjson indents it, its inner lines shifted to sit `depth` levels deep."""
    return orjson.dumps(value, option=_OPTIONS, default=str).decode().replace("\n", "\n" + "  " * depth)


def json_chunks(rs: ReportSet) -> Iterator[str]:
    """The document in pieces: the header's keys and the pods, sorted as one dump would sort them."""
    header = rs.header()
    keys = sorted([*header, "pods"])
    yield "{\n"
    for i, key in enumerate(keys):
        yield f"  {_dump(key, 1)}: "
        if key != "pods":
            yield _dump(header[key], 1)
        elif not rs.pods:
            yield "[]"
        else:
            yield "[\n"
            for j, pod in enumerate(rs.pod_dicts()):
                yield "    " + _dump(pod, 2) + (",\n" if j < len(rs.pods) - 1 else "\n")
            yield "  ]"
        yield ",\n" if i < len(keys) - 1 else "\n"
    yield "}\n"


def render_json(rs: ReportSet) -> str:
    return "".join(json_chunks(rs))


def write_json(rs: ReportSet, stream: TextIO) -> None:
    for chunk in json_chunks(rs):
        stream.write(chunk)
