"""PNG curves for a run (matplotlib, Agg backend)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def _smooth(values: list[float], window: int = 10) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.size < window:
        return array
    kernel = np.ones(window) / window
    return np.convolve(array, kernel, mode="valid")


def training_curves(history: list[dict], val_history: list[dict], cls: dict | None, path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 + (1 if cls else 0)
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4))
    ax = axes[0]
    if history:
        steps = [h["step"] for h in history]
        for key, label in (("loss", "total loss"), ("dice", "Dice (first pass)"), ("hitl_dice", "Dice (HITL rounds)")):
            values = [h.get(key, np.nan) for h in history]
            smooth = _smooth(values)
            ax.plot(steps[len(steps) - len(smooth):], smooth, label=label)
    ax.set_xlabel("step")
    ax.set_title("training loss (moving average)")
    ax.legend()
    ax = axes[1]
    if val_history:
        keys = sorted({k for v in val_history for k in v if k.startswith("miou@")}, key=lambda k: int(k[5:]))
        for key in keys + ["box_iou", "text_iou"]:
            values = [v.get(key) for v in val_history]
            if any(x is not None for x in values):
                ax.plot([v["step"] for v in val_history], [np.nan if x is None else x for x in values], marker="o",
                        label=key)
        ax.legend(fontsize=7)
    ax.set_xlabel("step")
    ax.set_title("held-out IoU (model grid)")
    if cls:
        ax = axes[2]
        for name, head in cls.get("heads", {}).items():
            ax.plot(head.get("loss_curve", []), label=name)
        ax.set_title("classifier loss")
        ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def clicks_curve(results: dict[str, dict], path: str | Path, title: str = "IoU vs clicks (held-out CXR lungs)") -> Path:
    """``results``: label → eval-clicks JSON; plots mean IoU per click on both grids (left: the whole range; right:
    the original grid zoomed to 0.85–1, where trained checkpoints differ)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, zoom) = plt.subplots(1, 2, figsize=(10, 4))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for n, (label, res) in enumerate(results.items()):
        curves, colour = res.get("curves", {}), colours[n % len(colours)]  # one colour per model, on both panels
        for grid, style in (("original", "-"), ("model", "--")):
            if curves.get(grid):
                ax.plot(range(1, len(curves[grid]) + 1), curves[grid], style, color=colour, marker="o", markersize=3,
                        label=f"{label} ({grid} grid)")
        if curves.get("original") and max(curves["original"]) >= 0.85:
            zoom.plot(range(1, len(curves["original"]) + 1), curves["original"], color=colour, marker="o",
                      markersize=3, label=label)
    for axis, low in ((ax, 0.0), (zoom, 0.85)):
        axis.axhline(0.9, color="gray", lw=0.8, ls=":")
        axis.set_xlabel("number of clicks")
        axis.set_ylabel("mean IoU")
        axis.set_ylim(low, 1)
        axis.legend(fontsize=7)
    ax.set_title(title)
    zoom.set_title("zoom: original grid, IoU ≥ 0.85")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
