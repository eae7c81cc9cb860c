"""Pure mask operations for manual correction and display clean-up: brush/eraser strokes, islands, holes.

Coordinate frame
    Points are **pixel-index coordinates** of the grid the mask lives on: (x, y) with x to the right (column), y down
    (row), pixel (r, c) centred at (x=c, y=r); fractions allowed. A stroke covers every pixel whose centre lies within
    ``radius`` pixels of the polyline through its points (a chain of capsules: discs at the points joined by their
    tangents), so a one-point stroke is a disc. Callers on another grid scale the points and the radius first
    (:func:`scale_stroke`).

No model, no I/O: numpy and scipy.ndimage only.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

_EIGHT = np.ones((3, 3), dtype=bool)  # islands and holes: 8-connected foreground, 4-connected background


def stroke_mask(shape: tuple[int, int], points: Sequence[Sequence[float]], radius: float) -> np.ndarray:
    """(H, W) bool: the pixels a stroke of ``radius`` px along ``points`` (pixel-index x, y) covers."""
    height, width = shape
    out = np.zeros((height, width), dtype=bool)
    xy = _simplified(np.asarray(points, dtype=np.float64).reshape(-1, 2), radius)
    if len(xy) == 1:
        xy = np.vstack([xy, xy])
    for (x0, y0), (x1, y1) in zip(xy[:-1], xy[1:]):
        _paint_capsule(out, x0, y0, x1, y1, radius)
    return out


def _simplified(xy: np.ndarray, radius: float) -> np.ndarray:
    """The points with those closer than radius/16 (at least 0.25 px) to the previous kept one dropped (a pointer
    sends many; the covered area moves by less than that distance), the last point always kept."""
    step = max(0.25, radius / 16.0)
    kept = [xy[0]]
    for point in xy[1:-1]:
        if np.hypot(*(point - kept[-1])) >= step:
            kept.append(point)
    if len(xy) > 1:
        kept.append(xy[-1])
    return np.asarray(kept)


def _paint_capsule(out: np.ndarray, x0: float, y0: float, x1: float, y1: float, radius: float) -> None:
    """Set the pixels whose centres are within ``radius`` of the segment (x0, y0)–(x1, y1), in place."""
    height, width = out.shape
    c0, c1 = max(0, int(np.floor(min(x0, x1) - radius))), min(width - 1, int(np.ceil(max(x0, x1) + radius)))
    r0, r1 = max(0, int(np.floor(min(y0, y1) - radius))), min(height - 1, int(np.ceil(max(y0, y1) + radius)))
    if c0 > c1 or r0 > r1:
        return
    cols = np.arange(c0, c1 + 1, dtype=np.float64)[None, :]
    rows = np.arange(r0, r1 + 1, dtype=np.float64)[:, None]
    dx, dy = x1 - x0, y1 - y0
    length2 = dx * dx + dy * dy
    t = 0.0 if length2 == 0 else np.clip(((cols - x0) * dx + (rows - y0) * dy) / length2, 0.0, 1.0)
    inside = (cols - (x0 + t * dx)) ** 2 + (rows - (y0 + t * dy)) ** 2 <= radius * radius
    out[r0:r1 + 1, c0:c1 + 1] |= inside


def scale_stroke(points: Sequence[Sequence[float]], radius: float, sx: float, sy: float
                 ) -> tuple[list[tuple[float, float]], float]:
    """A stroke on the original pixel-index grid → the same stroke on a grid ``sx``, ``sy`` times coarser (the
    display grid: ``x_d = (x + 0.5) / sx - 0.5``); the radius by the mean factor."""
    moved = [((float(x) + 0.5) / sx - 0.5, (float(y) + 0.5) / sy - 0.5) for x, y in points]
    return moved, float(radius) / ((sx + sy) / 2.0)


def drop_islands(mask: np.ndarray, min_px: int, keep: np.ndarray | None = None) -> np.ndarray:
    """``mask`` without its 8-connected components of fewer than ``min_px`` pixels; a component that has a pixel of
    ``keep`` (e.g. what the reader painted) stays whatever its size."""
    mask = np.asarray(mask, dtype=bool)
    if min_px <= 1 or not mask.any():
        return mask.copy()
    labels, count = ndimage.label(mask, structure=_EIGHT)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    small = sizes < min_px
    small[0] = False
    if keep is not None and keep.any():
        small[np.unique(labels[keep & mask])] = False
    return mask & ~small[labels]


def fill_holes(mask: np.ndarray, keep_open: np.ndarray | None = None) -> np.ndarray:
    """``mask`` with its holes (background not 4-connected to the border) filled; a hole that has a pixel of
    ``keep_open`` (e.g. what the reader erased) stays open."""
    mask = np.asarray(mask, dtype=bool)
    filled = ndimage.binary_fill_holes(mask)
    holes = filled & ~mask
    if keep_open is not None and holes.any() and (holes & keep_open).any():
        labels, count = ndimage.label(holes)
        opened = np.zeros(count + 1, dtype=bool)
        opened[np.unique(labels[holes & keep_open])] = True
        opened[0] = False
        filled &= ~opened[labels]
    return filled


def clean(mask: np.ndarray, min_island_px: int, fill: bool, painted: np.ndarray | None = None,
          erased: np.ndarray | None = None) -> np.ndarray:
    """Display clean-up: islands below ``min_island_px`` dropped, then (``fill``) holes filled; what the reader
    painted (``painted``) is never dropped and what they erased (``erased``) never filled back."""
    out = drop_islands(mask, int(min_island_px), keep=painted)
    return fill_holes(out, keep_open=erased) if fill else out
