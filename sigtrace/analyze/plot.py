"""--plot: one PNG with verdict counts (share of pods) and the shutdown-time distribution."""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import OutputError, UsageProblem
from ..export.write import atomic_file, check_output_path
from .fleet import Fleet


FORMATS = (".png", ".svg", ".pdf")


def check_plot_path(path: str | os.PathLike) -> None:
    """A picture format matplotlib writes, at a path that is a regular file or nothing yet."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise UsageProblem(f"--plot {path}: the name must end in {', '.join(FORMATS)} (the picture's format)")
    check_output_path(str(path))


def write_plot(fleet: Fleet, path: str | os.PathLike) -> None:
    import matplotlib
    matplotlib.use("Agg")   # no display on a node or in CI
    import matplotlib.pyplot as plt

    summary = fleet.summary()
    counts = fleet.verdict_counts()
    times = fleet.pods["shutdown_s"].dropna().astype(float)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5.2), gridspec_kw={"width_ratios": [1.15, 1]})
    fig.suptitle(f"sigtrace: {summary['pods_stopped']} pods stopped on {summary['nodes']} node(s), "
                 f"{summary['pods_hurt']} hurt ({100 * summary['share_hurt']:.0f}% of stopped pods)", fontsize=14)

    title = "Verdicts"
    if counts.empty:
        ax1.text(0.5, 0.5, "no verdicts:\nevery shutdown was clean", ha="center", va="center",
                 fontsize=13, transform=ax1.transAxes)
        ax1.set_axis_off()
    else:
        counts = counts.iloc[::-1]   # largest on top
        bars = ax1.barh(counts["id"], counts["pods"], height=0.6, color="#c0392b")
        labels = [f"{p}  ({100 * s:.0f}%)" for p, s in zip(counts["pods"], counts["share"])]
        if counts["undecided"].any():
            # strace recordings cannot decide some verdicts: shown, but apart from the decided ones
            bars = ax1.barh(counts["id"], counts["undecided"], left=counts["pods"], height=0.6, color="#bbbbbb")
            labels = [f"{lab} + {u} undecidable" if u else lab for lab, u in zip(labels, counts["undecided"])]
            title = "Verdicts (grey: undecidable, the recorder could not see it)"
        ax1.bar_label(bars, labels=labels, padding=4, fontsize=11)
        ax1.set_ylim(-0.7, max(len(counts), 3) - 0.3)
        room = 2.0 if counts["undecided"].any() else 1.35   # space for the bar labels
        ax1.set_xlim(0, max((counts["pods"] + counts["undecided"]).max() * room, 1))
        ax1.set_xlabel("pods (share of stopped pods)", fontsize=11)
        ax1.tick_params(axis="y", labelsize=11)
        ax1.xaxis.get_major_locator().set_params(integer=True)
    ax1.set_title(title, fontsize=12, loc="left")

    if times.empty:
        ax2.text(0.5, 0.5, "no shutdown times", ha="center", va="center", fontsize=13, transform=ax2.transAxes)
        ax2.set_axis_off()
    else:
        ax2.hist(times, bins=min(40, max(5, times.size // 2)), color="#2c7fb8", edgecolor="white")
        s = summary["shutdown"]
        for value, label, style in ((s["p50_s"], "p50", "--"), (s["p95_s"], "p95", ":"), (s["max_s"], "max", "-")):
            ax2.axvline(value, color="black", linestyle=style, linewidth=1.2, label=f"{label} {value:.2f} s")
        ax2.legend(loc="upper center", fontsize=10)
        ax2.set_xlabel("seconds from first stop trigger to last exit", fontsize=11)
        ax2.set_ylabel("pods", fontsize=11)
        ax2.yaxis.get_major_locator().set_params(integer=True)
    ax2.set_title("Shutdown time", fontsize=12, loc="left")
    fig.tight_layout()
    try:
        fmt = Path(path).suffix.lower().lstrip(".")
        atomic_file(Path(path), lambda tmp: fig.savefig(tmp, dpi=110, format=fmt))
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror}; choose a writable --plot path") from exc
    finally:
        plt.close(fig)
