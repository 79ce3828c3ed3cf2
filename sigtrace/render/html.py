"""HTML: one self-contained file (inline CSS and SVG, no external assets) with a timeline picture per pod."""
from __future__ import annotations

from html import escape

from ..correlate.model import ReportSet


def render_html(rs: ReportSet) -> str:
    return "<!doctype html><html><body>" + "".join(f"<h2>{escape(p.title)}</h2><svg></svg>" + "".join(
        f"<p>{escape(v.id)}</p>" for v in p.verdicts) for p in rs.pods) + "</body></html>"
