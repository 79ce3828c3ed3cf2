"""JSON for programs: the ReportSet's dict, keys sorted, stable across runs."""
from __future__ import annotations

import json

from ..correlate.model import ReportSet


def render_json(rs: ReportSet) -> str:
    return json.dumps(rs.to_dict(), indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n"
