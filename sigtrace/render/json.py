"""JSON for programs: the ReportSet's dict, keys sorted, stable across runs. orjson: the standard
library's encoder was a quarter of a big recording's report."""
from __future__ import annotations

import orjson

from ..report.model import ReportSet

_OPTIONS = orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY


def render_json(rs: ReportSet) -> str:
    return orjson.dumps(rs.to_dict(), option=_OPTIONS, default=str).decode() + "\n"
