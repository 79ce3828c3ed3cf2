"""Renderers of a ReportSet: text (rich, for people), json (stable, for programs), html (one file)."""
from __future__ import annotations

FORMATS = ("text", "json", "html")
