"""Text from a recording, made safe for a terminal.

Process names (comm: 15 bytes any process sets with prctl), exec filenames, pod and container names
come from tenants. Printed raw, an escape sequence clears the operator's screen, rewrites lines of
the report, sets the window title or plants a hyperlink (OSC 8); bidirectional overrides reorder
what is read. visible() shows every such character as a visible escape (`\\x1b`, `\\u202e`).
Rich markup is never taken from data either: callers pass data as Text, or through plain().
"""
from __future__ import annotations

import re
from typing import Any

from rich.markup import escape
from rich.text import Text

# C0 and C1 controls, DEL, line/paragraph separators, bidi embeddings/overrides/isolates and marks
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u061c\u202a-\u202e\u2066-\u2069]")


def _escape_char(m: re.Match) -> str:
    code = ord(m.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(value: Any) -> str:
    """str(value) with control and direction characters shown as escapes (tab included)."""
    text = value if isinstance(value, str) else str(value)
    return _UNSAFE.sub(_escape_char, text)


def safe_text(value: Any, style: str = "") -> Text:
    """A rich Text of data: visible escapes, no markup."""
    return Text(visible(value), style=style)


def plain(value: Any) -> str:
    """Data for a string that rich parses as markup: visible escapes, markup brackets escaped."""
    return escape(visible(value))
