"""Renderers of a ReportSet: text (rich, for people), json (stable, for programs), html (one file).
The one registry every command uses (report, the kubectl plugin, the lab through `sigtrace report`):
adding a format is a module here and a line in RENDERERS."""
from __future__ import annotations

from importlib import import_module
from typing import Any, TextIO

# format -> (module, function returning the whole document as a string)
RENDERERS = {"text": (".text", "text_document"), "json": (".json", "render_json"), "html": (".html", "render_html")}
FORMATS = tuple(RENDERERS)


def render(rs: Any, fmt: str) -> str:
    """The report as one document (a file, a pipe): text without colour, 140 columns."""
    module, name = RENDERERS[fmt]
    return getattr(import_module(module, __name__), name)(rs)


def write_report(rs: Any, fmt: str, stream: TextIO) -> None:
    """To a stream: text in colour and at the terminal's width when it is one, the rest as documents."""
    if fmt == "text":
        from rich.console import Console

        from .text import render_text
        render_text(rs, Console(file=stream, soft_wrap=False))
    elif fmt == "json":
        from .json import write_json
        write_json(rs, stream)             # pod by pod: a big report never exists as one string
    else:
        stream.write(render(rs, fmt))
