"""Charts for the audit report: matplotlib drawn to inline SVG (no network, no files).

Series names (priorities, results, team and namespace names) come from records: they are drawn
as plain text, never as TeX, and never hidden (see ``_label``)."""

from __future__ import annotations

import io
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless, before pyplot is imported
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from webhook.core import shown

matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text: smaller, selectable, prints sharp
matplotlib.rcParams["svg.hashsalt"] = "portcullis"  # deterministic ids: same input, same bytes
matplotlib.rcParams["text.parse_math"] = False  # "$\\foo{$" in a record is text, not TeX that fails

_COLORS = {
    "allowed": "#2e7d32",
    "warned": "#f9a825",
    "denied": "#c62828",
    "skipped": "#90a4ae",
    "invalid": "#6a1b9a",
    "Emergency": "#4a148c",
    "Alert": "#880e4f",
    "Critical": "#b71c1c",
    "Error": "#e53935",
    "Warning": "#fb8c00",
    "Notice": "#fdd835",
    "Informational": "#42a5f5",
    "Debug": "#90a4ae",
}
_FALLBACK = ("#5c6bc0", "#26a69a", "#8d6e63", "#ec407a", "#7e57c2", "#9ccc65")


def stacked_bars(title: str, days: Sequence[str], series: dict[str, Counter[str]], order: Sequence[str]) -> str:
    """A stacked bar per day; ``series`` maps day → Counter(category → n)."""
    categories = [c for c in order if any(series.get(d, Counter())[c] for d in days)]
    categories += sorted({c for d in days for c in series.get(d, Counter())} - set(categories))
    fig, ax = plt.subplots(figsize=(8, 3.2), dpi=96)
    try:
        bottoms = [0] * len(days)
        x = range(len(days))
        handles: list[tuple[Any, str]] = []
        for i, category in enumerate(categories):
            values = [series.get(d, Counter())[category] for d in days]
            color = _COLORS.get(category, _FALLBACK[i % len(_FALLBACK)])
            bars = ax.bar(x, values, bottom=bottoms, color=color, width=0.8)
            handles.append((bars, _label(category)))
            bottoms = [b + v for b, v in zip(bottoms, values, strict=True)]
        _finish(ax, title, days)
        if categories:
            ax.legend(
                *zip(*handles, strict=True),
                loc="upper left",
                bbox_to_anchor=(0, -0.12),
                fontsize=8,
                ncols=min(len(categories), 6),
                frameon=False,
            )
            fig.tight_layout()
        return _svg(fig)
    finally:
        plt.close(fig)


def usage_lines(title: str, days: Sequence[str], usage: dict[str, dict[str, tuple[float, float]]]) -> str:
    """GPU use (solid) against its quota (dashed) per team or namespace, by day."""
    scopes = sorted({s for d in days for s in usage.get(d, {})})
    fig, ax = plt.subplots(figsize=(8, 3.2), dpi=96)
    try:
        x = list(range(len(days)))
        handles: list[tuple[Any, str]] = []
        for i, scope in enumerate(scopes[:8]):
            color = _FALLBACK[i % len(_FALLBACK)]
            used = [usage.get(d, {}).get(scope, (float("nan"), 0))[0] for d in days]
            limit = [usage.get(d, {}).get(scope, (0, float("nan")))[1] for d in days]
            handles.append((ax.plot(x, used, marker="o", color=color)[0], _label(f"{scope} used")))
            handles.append((ax.plot(x, limit, linestyle="--", color=color)[0], _label(f"{scope} quota")))
        _finish(ax, title, days)
        ax.set_ylabel("GPUs")
        if scopes:
            ax.legend(
                *zip(*handles, strict=True),
                loc="upper left",
                bbox_to_anchor=(0, -0.12),
                fontsize=7,
                ncols=4,
                frameon=False,
            )
            fig.tight_layout()
        return _svg(fig)
    finally:
        plt.close(fig)


def _label(text: str) -> str:
    """A legend entry given with its handle (a ``label=`` starting with ``_`` would be left out of
    the legend), with control characters shown escaped (SVG text in HTML cannot hold NUL)."""
    return shown.terminal(text)


def _finish(ax: Axes, title: str, days: Sequence[str]) -> None:
    ax.set_title(title, fontsize=11, loc="left")
    ax.set_xticks(range(len(days)))
    step = max(1, len(days) // 12)
    ax.set_xticklabels([_label(d[5:]) if i % step == 0 else "" for i, d in enumerate(days)], fontsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    ax.tick_params(axis="y", labelsize=8)


def _svg(fig: Figure) -> str:
    fig.tight_layout()
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": "portcullis"})
    text = buffer.getvalue()
    text = text[text.find("<svg") :]  # drop the XML prolog and doctype: the SVG is inlined in HTML
    return re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.S)  # RDF boilerplate, not needed inline
