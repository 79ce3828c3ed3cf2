"""Sizes and ages in one short word for people: the `status` table and the plugin's error lines."""
from __future__ import annotations


def human_size(n: float | None) -> str:
    """3670016 -> '3.5MiB'; None -> '-'."""
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return "-"


def human_age(s: float) -> str:
    """Seconds as the largest unit that keeps two digits or fewer meaningful: 90s, 15m, 5h, 3d."""
    if s < 120:
        return f"{s:.0f}s"
    if s < 7200:
        return f"{s / 60:.0f}m"
    return f"{s / 3600:.0f}h" if s < 172800 else f"{s / 86400:.0f}d"
