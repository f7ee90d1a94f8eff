"""Plots beside a model card, drawn from measured records only: the accuracy of the variants of a run against their
size and their latency (the base marked), and a pruning run's sparsity schedule. PNG files, written atomically."""

from __future__ import annotations

import logging

from ..extras import require_extra
from ..files import atomic_path

logger = logging.getLogger(__name__)

TRADEOFF_PNG = "compression.png"
SCHEDULE_PNG = "sparsity_schedule.png"


def _pyplot():
    require_extra("plots", "the plots beside a model card")
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str) -> str:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
    logger.info("Wrote the plot %s", path)
    return path


def tradeoff_plot(points: list[dict], path: str, metric: str = "accuracy", title: str | None = None) -> str:
    """Two panels, `metric` against checkpoint size (MB) and against CPU latency (ms), one marker per variant.

    `points`: ``{"name", metric, "size_mb", "latency_ms", "base": bool}`` each, as `compare_checkpoints` measured
    them; the base is drawn as a star, the others as dots labelled with their names."""
    if not points:
        raise ValueError("tradeoff_plot needs at least one measured point")
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in ((axes[0], "size_mb", "checkpoint size on disk (MB)"),
                           (axes[1], "latency_ms", "CPU latency (ms per batch)")):
        shown = [p for p in points if p.get(key) is not None and p.get(metric) is not None]
        xs = [p[key] for p in shown]
        middle = (min(xs) + max(xs)) / 2 if xs else 0
        for p in shown:
            is_base = bool(p.get("base"))
            ax.scatter(p[key], p[metric], s=160 if is_base else 50, marker="*" if is_base else "o",
                       color="black" if is_base else "tab:blue", zorder=3)
            right_half = len(xs) > 1 and p[key] > middle  # labels point inwards: never past the frame or the ticks
            ax.annotate(p["name"] + (" (base)" if is_base else ""), (p[key], p[metric]), textcoords="offset points",
                        xytext=(-8, 6) if right_half else (8, 6), ha="right" if right_half else "left", fontsize=8)
        ax.margins(x=0.15, y=0.15)
        ax.set_xlabel(label)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    fig.suptitle(title or f"{metric} against size and latency")
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def schedule_plot(log_history: list[dict], path: str, title: str = "sparsity schedule") -> str | None:
    """The pruning schedule of a run from its Trainer log history: the target sparsity and the sparsity reached, per
    step (the entries the pruning callback logged). Returns None when the history holds no sparsity entry."""
    keys = ("sparsity_target", "sparsity", "head_sparsity", "ffn_sparsity")
    series = {k: [(h["step"], h[k]) for h in log_history if k in h and "step" in h] for k in keys}
    series = {k: v for k, v in series.items() if v}
    if not series:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key, values in series.items():
        steps, ys = zip(*values)
        ax.plot(steps, ys, label=key, drawstyle="steps-post" if key != "sparsity_target" else "default")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("fraction removed")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)
