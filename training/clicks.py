"""Corrective-click rules shared by training (simulated HITL) and the evaluator (RITM protocol).

All points are returned as ``(x, y, positive)`` in pixel-index coordinates of the array they were computed on
(x = column, y = row), which is SAM's point convention on the model grid and the predictor's convention on the
original grid.

* :func:`deepest_point` — the RITM first click: the pixel of the object farthest from its boundary (distance
  transform; the image border counts as boundary).
* :func:`deepest_error_click` — the RITM next click: error regions FN = Y ∧ ¬M (missed → positive click) and
  FP = M ∧ ¬Y (false positive → negative click); the click goes to the deepest point of the *larger* error region.
  ``rule="depth"`` (default, RITM's released code) calls the region with the larger maximal depth the larger one;
  ``rule="area"`` compares pixel counts.
* :func:`uniform_error_click` — the seed code's rule: one pixel drawn uniformly from E = M ⊕ Y (Eq. 8); its sign is
  the ground truth there.

Distance transforms are computed on the bounding box of the region plus a one-pixel zero frame, which gives exactly
the values of the full-image transform (every pixel outside the box is background).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage


def _cropped_edt(region: np.ndarray) -> tuple[float, tuple[int, int]]:
    """(max depth, (row, col) of the first deepest pixel) of a bool region, border counted as background."""
    rows = np.flatnonzero(region.any(axis=1))
    if rows.size == 0:
        return 0.0, (-1, -1)
    cols = np.flatnonzero(region.any(axis=0))
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    crop = np.pad(region[r0:r1, c0:c1], 1)
    dist = ndimage.distance_transform_edt(crop)[1:-1, 1:-1]
    flat = int(np.argmax(dist))
    r, c = divmod(flat, dist.shape[1])
    return float(dist[r, c]), (r0 + r, c0 + c)


def deepest_point(mask: np.ndarray) -> tuple[int, int] | None:
    """(x, y) of the pixel deepest inside ``mask`` (first in raster order among ties); None for an empty mask."""
    depth, (r, c) = _cropped_edt(np.asarray(mask, dtype=bool))
    return None if depth == 0 else (c, r)


def error_regions(pred: np.ndarray, target: np.ndarray, valid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(FN, FP) bool maps: missed object pixels and false-positive pixels, inside ``valid`` when given."""
    pred = np.asarray(pred, dtype=bool)
    target = np.asarray(target, dtype=bool)
    fn, fp = target & ~pred, pred & ~target
    if valid is not None:
        fn &= valid
        fp &= valid
    return fn, fp


def deepest_error_click(pred: np.ndarray, target: np.ndarray, valid: np.ndarray | None = None,
                        rule: str = "depth") -> tuple[int, int, bool] | None:
    """The RITM next click (x, y, positive), or None when the prediction is already exact."""
    fn, fp = error_regions(pred, target, valid)
    fn_depth, fn_at = _cropped_edt(fn)
    fp_depth, fp_at = _cropped_edt(fp)
    if fn_depth == 0 and fp_depth == 0:
        return None
    if rule == "area":
        positive = int(fn.sum()) > int(fp.sum())
    elif rule == "depth":
        positive = fn_depth > fp_depth
    else:
        raise ValueError(f"unknown click rule {rule!r} (depth | area)")
    r, c = fn_at if positive else fp_at
    return c, r, positive


def uniform_error_click(pred: np.ndarray, target: np.ndarray, rng: np.random.Generator,
                        valid: np.ndarray | None = None) -> tuple[int, int, bool] | None:
    """A click drawn uniformly from E = M ⊕ Y: positive where the object is (a miss), negative elsewhere."""
    fn, fp = error_regions(pred, target, valid)
    error = fn | fp
    flat = np.flatnonzero(error)
    if flat.size == 0:
        return None
    index = int(flat[rng.integers(flat.size)])
    r, c = divmod(index, error.shape[1])
    return c, r, bool(fn[r, c])
