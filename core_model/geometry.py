"""Exact mapping between an image's original pixel grid and the model's 256×256 input grid.

The model sees the image resized so that its longest side is ``size`` pixels, placed at the top-left corner and
zero-padded on the bottom/right (LiteMedSAM's preprocessing). Coordinates are continuous pixel coordinates
(x to the right, y down) with pixel centres at integer + 0.5 in both frames, so that

    model_xy = original_xy * scale          original_xy = model_xy / scale

is exact in both directions with ``scale = size / max(height, width)``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

MODEL_SIZE = 256


@dataclass(frozen=True)
class ResizePad:
    """Geometry of one image: original (height, width) → resized (new_h, new_w) inside a size×size canvas."""

    height: int
    width: int
    size: int = MODEL_SIZE

    def __post_init__(self) -> None:
        if self.height <= 0 or self.width <= 0:
            raise ValueError(f"image size must be positive, got {self.height}×{self.width}")

    @property
    def scale(self) -> float:
        return self.size / max(self.height, self.width)

    @property
    def resized_shape(self) -> tuple[int, int]:
        """(new_h, new_w): the region of the model grid covered by image pixels; the rest is padding."""
        return (max(1, int(round(self.height * self.scale))), max(1, int(round(self.width * self.scale))))

    def to_model(self, xy: np.ndarray) -> np.ndarray:
        """Original pixel coordinates (..., 2) as (x, y) → model-grid coordinates (..., 2)."""
        return np.asarray(xy, dtype=np.float64) * self.scale

    def to_original(self, xy: np.ndarray) -> np.ndarray:
        """Model-grid coordinates (..., 2) as (x, y) → original pixel coordinates (..., 2)."""
        return np.asarray(xy, dtype=np.float64) / self.scale

    def box_to_model(self, box: np.ndarray) -> np.ndarray:
        """Box (x0, y0, x1, y1) in original pixels → model grid."""
        return self.to_model(np.asarray(box, dtype=np.float64).reshape(2, 2)).reshape(4)

    def image_to_model(self, image: torch.Tensor) -> torch.Tensor:
        """Image tensor (B, C, H, W) on the original grid → (B, C, size, size), resized (bilinear, antialiased) and padded."""
        new_h, new_w = self.resized_shape
        resized = F.interpolate(image, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True)
        return F.pad(resized, (0, self.size - new_w, 0, self.size - new_h))

    def mask_to_model(self, mask: torch.Tensor) -> torch.Tensor:
        """Binary mask (B, 1, H, W) on the original grid → (B, 1, size, size) float in [0, 1] (area-averaged), padded."""
        new_h, new_w = self.resized_shape
        resized = F.interpolate(mask.float(), size=(new_h, new_w), mode="area")
        return F.pad(resized, (0, self.size - new_w, 0, self.size - new_h))

    def logits_to_original(self, logits: torch.Tensor, crop: tuple[int, int, int, int] | None = None) -> torch.Tensor:
        """Model-grid logits (B, 1, size, size) → logits on the original grid (B, 1, H, W).

        The padding is cut off first, then the valid region is resized bilinearly. With ``crop = (y0, y1, x0, x1)`` in
        original pixels only that window is computed (same values as the full result cut to the window).
        """
        new_h, new_w = self.resized_shape
        valid = logits[..., :new_h, :new_w]
        if crop is None:
            return F.interpolate(valid, size=(self.height, self.width), mode="bilinear", align_corners=False)
        return _resize_window(valid, (self.height, self.width), crop)


def _resize_window(valid: torch.Tensor, out_shape: tuple[int, int], crop: tuple[int, int, int, int]) -> torch.Tensor:
    """Bilinear resize (align_corners=False) of ``valid`` to ``out_shape``, evaluated only on the window ``crop``."""
    y0, y1, x0, x1 = crop
    in_h, in_w = valid.shape[-2:]
    ys = _source_coords(torch.arange(y0, y1, dtype=torch.float32, device=valid.device), in_h, out_shape[0])
    xs = _source_coords(torch.arange(x0, x1, dtype=torch.float32, device=valid.device), in_w, out_shape[1])
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    # grid_sample with align_corners=True uses -1 → pixel 0 and +1 → pixel n-1.
    grid = torch.stack([2 * grid_x / max(in_w - 1, 1) - 1, 2 * grid_y / max(in_h - 1, 1) - 1], dim=-1)
    grid = grid.unsqueeze(0).expand(valid.shape[0], -1, -1, -1)
    return F.grid_sample(valid, grid.to(valid.dtype), mode="bilinear", padding_mode="border", align_corners=True)


def _source_coords(out_index: torch.Tensor, in_size: int, out_size: int) -> torch.Tensor:
    """PyTorch's align_corners=False source coordinate for each output index, clamped like F.interpolate does."""
    src = (out_index + 0.5) * (in_size / out_size) - 0.5
    return src.clamp(min=0, max=in_size - 1)
