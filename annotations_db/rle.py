"""Mask run-length encoding, COCO-compatible (pycocotools), for 2-D masks and N-D volumes.

A 2-D mask (H, W) encodes to COCO's compressed RLE ``{"size": [H, W], "counts": str}`` (column-major runs, exactly
what ``pycocotools.mask.encode`` writes, so the dict drops straight into a COCO JSON). An N-D mask (e.g. a volume
(X, Y, Z)) is viewed as 2-D ``(shape[0], prod(shape[1:]))`` in C order before encoding and carries ``"shape"`` so
that :func:`decode` restores it exactly.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from pycocotools import mask as coco_mask

Rle = dict[str, Any]


def encode(mask: np.ndarray) -> Rle:
    """Binary mask (any non-zero is foreground) → JSON-serialisable RLE dict."""
    array = np.asarray(mask)
    if array.ndim < 2:
        raise ValueError(f"mask must have at least 2 dimensions, got shape {array.shape}")
    flat = array.reshape(array.shape[0], -1) if array.ndim > 2 else array
    rle = coco_mask.encode(np.asfortranarray(flat != 0, dtype=np.uint8))
    encoded: Rle = {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}
    if array.ndim > 2:
        encoded["shape"] = [int(v) for v in array.shape]
    return encoded


def decode(rle: Rle) -> np.ndarray:
    """RLE dict → uint8 mask {0, 1} of the original shape."""
    counts = rle["counts"]
    coco = {"size": list(rle["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    if isinstance(counts, list):  # uncompressed COCO RLE
        coco = coco_mask.frPyObjects(coco, *rle["size"])
    flat = np.ascontiguousarray(coco_mask.decode(coco))
    return flat.reshape(rle["shape"]) if "shape" in rle else flat


def area(rle: Rle) -> int:
    """Number of foreground pixels/voxels."""
    return int(coco_mask.area({"size": list(rle["size"]), "counts": rle["counts"].encode("ascii")}))


def bbox(rle: Rle) -> list[float]:
    """COCO [x, y, width, height] of a 2-D RLE."""
    box = coco_mask.toBbox({"size": list(rle["size"]), "counts": rle["counts"].encode("ascii")})
    return [float(v) for v in box]
