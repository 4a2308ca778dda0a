"""The report's plots: matplotlib figures rendered by its Agg canvas to PNG bytes.

Labels come from models and users' files. matplotlib reads `$...$` in any text as math and fails
on what it cannot parse, so math parsing is off for every text drawn here.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable, Sequence

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from stages.report.sonify import TOP_USED_CLIPS, ClipUsage, LoudnessCheck
from stages.report.sql import Histogram

LABEL_CHARS = 40
DPI = 100
COLOR = "#3b6ea8"


def shorten(text: str, chars: int = LABEL_CHARS) -> str:
    """A label fit for an axis: control characters drawn as U+FFFD, long ones cut."""
    printable = "".join(ch if ch.isprintable() else "\ufffd" for ch in text)
    return printable if len(printable) <= chars else printable[: chars - 1] + "\u2026"


def render(draw: Callable[[Axes], None], size: tuple[float, float] = (6.4, 3.6)) -> bytes:
    with matplotlib.rc_context({"text.parse_math": False, "font.size": 9}), warnings.catch_warnings():
        # Labels may be in any script; a character the font lacks is drawn as a box, which is
        # what the plot should show, not a warning per character.
        warnings.filterwarnings("ignore", message="Glyph .* missing from font", category=UserWarning)
        figure = Figure(figsize=size, dpi=DPI, layout="constrained")
        FigureCanvasAgg(figure)
        draw(figure.add_subplot())
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _empty(ax: Axes, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what}", ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def bar_chart(items: Sequence[tuple[str, int]], title: str, xlabel: str) -> bytes:
    """Horizontal bars, the first item on top."""

    def draw(ax: Axes) -> None:
        ax.set_title(title)
        if not items:
            _empty(ax, "data")
            return
        names = [shorten(name) or "(empty)" for name, _ in items]
        positions = np.arange(len(items))
        ax.barh(positions, [n for _, n in items], color=COLOR)
        ax.set_yticks(positions, names)
        ax.invert_yaxis()
        ax.set_xlabel(xlabel)

    return render(draw, (7.0, max(2.0, 0.6 + 0.19 * len(items))))


def histogram_plot(hist: Histogram, title: str, xlabel: str, marker: tuple[float, str] | None = None) -> bytes:
    """A histogram from its bins; `marker` is a vertical line (value, label), e.g. a threshold."""

    def draw(ax: Axes) -> None:
        ax.set_title(title + (f" ({hist.missing} without a value)" if hist.missing else ""))
        if not hist.total:
            _empty(ax, "values")
            return
        ax.stairs(hist.counts, hist.edges, fill=True, color=COLOR)
        if marker is not None:
            ax.axvline(marker[0], color="#c0392b", linestyle="--", label=marker[1])
            ax.legend(loc="upper left")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("count")

    return render(draw)


def lorenz_plot(usage: ClipUsage) -> bytes:
    def draw(ax: Axes) -> None:
        ax.set_title(
            f"Clip usage: {usage.distinct} of {usage.population} clips used, {usage.uses} uses\n"
            f"the {min(TOP_USED_CLIPS, usage.distinct)} most used take {usage.top_share:.0%} of them; "
            f"Gini {usage.gini:.2f}"
        )
        ax.plot([0, 1], [0, 1], color="#999999", linestyle=":", label="every clip used equally")
        ax.plot(usage.lorenz_x, usage.lorenz_y, color=COLOR, label="Lorenz curve")
        ax.set_xlabel("share of clips, least used first")
        ax.set_ylabel("share of uses")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.legend(loc="upper left")

    return render(draw, (6.4, 4.8))


def uses_per_clip_plot(use_counts: np.ndarray) -> bytes:
    """Uses of each used clip against its rank, most used first, on log-log axes: a straight steep
    line is a few clips taking most picks."""
    uses = np.sort(np.asarray(use_counts, dtype=np.int64))[::-1]

    def draw(ax: Axes) -> None:
        most = f", the most used {uses[0]} times" if uses.size else ""
        ax.set_title(f"Uses per clip, {uses.size} clips used{most}")
        if not uses.size:
            _empty(ax, "clips used")
            return
        ax.loglog(np.arange(1, uses.size + 1), uses, color=COLOR, marker=".", linestyle="-")
        ax.set_xlabel("clip rank, most used first")
        ax.set_ylabel("concepts that chose the clip")

    return render(draw, (6.4, 4.8))


def loudness_plot(check: LoudnessCheck) -> bytes:
    def draw(ax: Axes) -> None:
        difference = (
            f"\nmeasured - target over all samples: mean {check.mean_difference:+.2f} LU, "
            f"sd {check.std_difference or 0.0:.2f} LU"
            if check.mean_difference is not None
            else ""
        )
        ax.set_title(
            f"Target against measured mix loudness, {check.expected.size} of {check.samples} samples{difference}"
        )
        if not check.expected.size:
            _empty(ax, "samples")
            return
        low = float(min(check.expected.min(), check.measured.min())) - 1
        high = float(max(check.expected.max(), check.measured.max())) + 1
        ax.plot([low, high], [low, high], color="#999999", linestyle=":", label="measured = target")
        ax.scatter(check.expected, check.measured, s=8, alpha=0.6, color=COLOR)
        ax.set_xlabel("target: power sum of the sources' target loudness + mix gain (LUFS)")
        ax.set_ylabel("measured mix loudness (LUFS)")
        ax.legend(loc="upper left")

    return render(draw, (6.4, 4.8))
