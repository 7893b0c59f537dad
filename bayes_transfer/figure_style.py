"""The house style of every figure: the Okabe-Ito palette (colour-blind
safe), log axes with plain tick labels, one legend outside the axes, and
extrapolation beyond the measured grid shaded grey with dashed curves."""

from __future__ import annotations

import functools

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter

# Okabe & Ito (2008), ordered for contrast on white; yellow last.
PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
EXTRAP = dict(color="0.85", alpha=0.5, hatch="//", linewidth=0, zorder=0)
EXTRAP_PATCH = Patch(facecolor="0.85", alpha=0.5, hatch="//", label="extrapolated (outside the grid)")

# Applied while a figure is built (not globally: importing this module changes nothing).
STYLE = {
    "figure.dpi": 100, "savefig.dpi": 110, "font.size": 10, "axes.titlesize": 11,
    "axes.grid": True, "grid.alpha": 0.25, "axes.spines.top": False, "axes.spines.right": False,
}


def styled(func):
    """Build the figure under this module's style."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(STYLE):
            return func(*args, **kwargs)

    return wrapper


def plain(v, _pos=None) -> str:
    return f"{v:g}"


def plain_minor(v, _pos=None) -> str:
    lead = f"{v:e}"[0]
    return f"{v:g}" if lead in "235" else ""


def loss_axis(ax, axis: str = "y") -> None:
    """Plain numbers on a log loss axis (losses span less than a decade)."""
    target = ax.yaxis if axis == "y" else ax.xaxis
    target.set_major_formatter(FuncFormatter(plain))
    target.set_minor_formatter(FuncFormatter(plain_minor))


def outside_legend(ax, handles) -> None:
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)


def colour(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def fmt_n(n: float) -> str:
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            return f"{n / scale:.3g}{suffix}"
    return f"{n:.3g}"


def panels(n: int, width: float = 7.0, height: float = 4.2):
    cols = min(n, 3)
    rows = int(np.ceil(n / cols))
    fig = Figure(figsize=(width * cols, height * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    return fig, list(axes.ravel()[:n])


def span(lo: float, hi: float, pad_decades: float = 0.5, n: int = 60) -> np.ndarray:
    return np.logspace(np.log10(lo) - pad_decades, np.log10(hi) + pad_decades, n)


def shade_outside(ax, lo: float, hi: float, x_min: float, x_max: float) -> None:
    if x_min < lo:
        ax.axvspan(x_min, lo, **EXTRAP)
    if x_max > hi:
        ax.axvspan(hi, x_max, **EXTRAP)
    ax.set_xlim(x_min, x_max)


def legend_sizes(ax, sizes, extra=()):
    handles = [Line2D([], [], color=colour(i), marker="o", lw=1.5, label=f"N = {fmt_n(n)}")
               for i, n in enumerate(sizes)]
    outside_legend(ax, handles + list(extra))


def band_line(ax, x, b, c, label=None, inside=None, alpha=0.18):
    """Median line and shaded band; dashed where `inside` is False (extrapolated)."""
    med, lo, hi = (np.asarray(b[k]) for k in ("median", "lower", "upper"))
    ax.fill_between(x, lo, hi, color=c, alpha=alpha, linewidth=0)
    if inside is None:
        ax.plot(x, med, color=c, lw=1.6, label=label)
        return
    inside = np.asarray(inside)
    ax.plot(x, np.where(inside, med, np.nan), color=c, lw=1.6, label=label)
    ax.plot(x, np.where(inside, np.nan, med), color=c, lw=1.2, ls="--")
