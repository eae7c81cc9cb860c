"""What the browser gets: the base image once per case, and per click a small mask layer.

Display frame
    The base image is the original resized so that its longest side is at most ``DISPLAY_MAX`` pixels (never
    enlarged), 8-bit grayscale. ``DisplayGeometry`` maps between the two grids with *continuous* coordinates (pixel
    edges at integers, pixel (0, 0) covering [0, 1) × [0, 1)), separately per axis::

        x_orig = x_disp * width / disp_width            y_orig = y_disp * height / disp_height

    The predictor wants original **pixel-index** coordinates (pixel centres at integers), so a click at continuous
    display position (u, v) becomes ``(u * sx - 0.5, v * sy - 0.5)``. The centre of display pixel i, u = i + 0.5, maps to
    the centre of the block of original pixels it covers (exact for any integer or non-integer factor).

Mask layer
    A palette PNG at display resolution: index 0 transparent, 1 fill, 2 contour (the fill's inner boundary). The
    browser draws it on a canvas stacked over the base image; opacity is a canvas property, so changing it costs
    nothing on the server. The viewer asks for the same mask as row runs (:data:`MASK_RUNS_TYPE`): a few kilobytes
    it turns into its fill and outline in time proportional to the runs, not to the display's million pixels.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

DISPLAY_MAX = 1024
MASK_RUNS_TYPE = "application/vnd.biascare.mask-runs"  # see encode_mask_runs
FILL_RGBA = (255, 96, 0, 110)
CONTOUR_RGBA = (255, 230, 0, 255)


@dataclass(frozen=True)
class DisplayGeometry:
    """Original (height, width) ↔ display (disp_height, disp_width)."""

    height: int
    width: int
    disp_height: int
    disp_width: int

    @classmethod
    def for_shape(cls, height: int, width: int, max_side: int = DISPLAY_MAX) -> DisplayGeometry:
        if height <= 0 or width <= 0:
            raise ValueError(f"image size must be positive, got {height}×{width}")
        scale = min(1.0, max_side / max(height, width))
        return cls(height, width, max(1, int(round(height * scale))), max(1, int(round(width * scale))))

    @property
    def sx(self) -> float:
        return self.width / self.disp_width

    @property
    def sy(self) -> float:
        return self.height / self.disp_height

    def display_to_original(self, x: float, y: float) -> tuple[float, float]:
        """Continuous display coordinates → original pixel-index coordinates (what the predictor takes)."""
        return x * self.sx - 0.5, y * self.sy - 0.5

    def original_to_display(self, x: float, y: float) -> tuple[float, float]:
        """Original pixel-index coordinates → continuous display coordinates (inverse of the above)."""
        return (x + 0.5) / self.sx, (y + 0.5) / self.sy

    def inside(self, x: float, y: float) -> bool:
        """Is a continuous display coordinate on the image?"""
        return 0.0 <= x < self.disp_width and 0.0 <= y < self.disp_height

    def sample_rows_cols(self) -> tuple[np.ndarray, np.ndarray]:
        """Original row/column index under the centre of every display pixel (nearest-neighbour downsampling)."""
        rows = np.minimum(((np.arange(self.disp_height) + 0.5) * self.sy).astype(np.int64), self.height - 1)
        cols = np.minimum(((np.arange(self.disp_width) + 0.5) * self.sx).astype(np.int64), self.width - 1)
        return rows, cols


def display_image(pixels: np.ndarray, geometry: DisplayGeometry) -> np.ndarray:
    """(H, W) float [0, 1] → (disp_h, disp_w) uint8, area-resampled (PIL box filter on the float image)."""
    array = np.clip(np.nan_to_num(pixels.astype(np.float32, copy=False)), 0.0, 1.0)
    if (geometry.disp_height, geometry.disp_width) != array.shape:
        image = Image.fromarray(array, mode="F").resize((geometry.disp_width, geometry.disp_height), Image.BOX)
        array = np.asarray(image)
    return np.clip(np.round(array * 255.0), 0, 255).astype(np.uint8)


def encode_base_png(gray: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(gray, mode="L").save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def mask_to_display(mask: np.ndarray, geometry: DisplayGeometry) -> np.ndarray:
    """Original-grid bool mask → display-grid bool mask (the original pixel under each display pixel's centre)."""
    if mask.shape != (geometry.height, geometry.width):
        raise ValueError(f"mask shape {mask.shape} does not match the image {geometry.height}×{geometry.width}")
    if mask.shape == (geometry.disp_height, geometry.disp_width):
        return mask.astype(bool, copy=False)
    rows, cols = geometry.sample_rows_cols()
    return mask[np.ix_(rows, cols)].astype(bool, copy=False)


def label_layer(mask: np.ndarray) -> np.ndarray:
    """Display-grid bool mask → uint8 palette indices: 0 outside, 1 fill, 2 contour (4-neighbour inner boundary)."""
    m = mask.astype(bool, copy=False)
    interior = m.copy()
    interior[1:, :] &= m[:-1, :]
    interior[:-1, :] &= m[1:, :]
    interior[:, 1:] &= m[:, :-1]
    interior[:, :-1] &= m[:, 1:]
    out = m.astype(np.uint8)
    out[m & ~interior] = 2
    return out


_PALETTE = [0, 0, 0] + list(FILL_RGBA[:3]) + list(CONTOUR_RGBA[:3])
_TRANSPARENCY = bytes([0, FILL_RGBA[3], CONTOUR_RGBA[3]])


def encode_mask_png(mask_display: np.ndarray | None, shape: tuple[int, int] | None = None) -> bytes:
    """The overlay layer as a 3-colour palette PNG with per-index alpha (tRNS). ``None`` → fully transparent."""
    if mask_display is None:
        if shape is None:
            raise ValueError("an empty layer needs its shape")
        indices = np.zeros(shape, dtype=np.uint8)
    else:
        indices = label_layer(mask_display)
    image = Image.fromarray(indices, mode="P")
    image.putpalette(_PALETTE)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1, transparency=_TRANSPARENCY, bits=2)
    return buffer.getvalue()


def decode_layer_png(data: bytes) -> np.ndarray:
    """Palette indices back from :func:`encode_mask_png` (tests, bench)."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("P") if image.mode != "P" else image).astype(np.uint8)


def encode_mask_runs(mask_display: np.ndarray) -> bytes:
    """Display-grid bool mask (h, w) → its row runs, little-endian uint16: ``w, h``, then one ``y, x0, x1`` triple
    per maximal run of mask pixels (columns x0 ≤ x < x1 of row y), rows ascending, runs left to right."""
    h, w = mask_display.shape
    if max(h, w) >= 1 << 16:
        raise ValueError(f"a {h}×{w} layer does not fit the 16-bit runs format")
    padded = np.zeros((h, w + 2), np.int8)
    padded[:, 1:-1] = mask_display
    edges = np.flatnonzero(np.diff(padded.reshape(-1)))  # a start then an end per run, never across rows
    rows, cols = np.divmod(edges, w + 2)
    runs = np.empty((edges.size // 2, 3), np.uint16)
    runs[:, 0], runs[:, 1], runs[:, 2] = rows[0::2], cols[0::2], cols[1::2]
    return np.concatenate([np.array([w, h], "<u2"), runs.reshape(-1).astype("<u2", copy=False)]).tobytes()


def decode_mask_runs(data: bytes) -> np.ndarray:
    """The bool mask back from :func:`encode_mask_runs` (tests, bench)."""
    values = np.frombuffer(data, "<u2")
    w, h = int(values[0]), int(values[1])
    mask = np.zeros((h, w), bool)
    for y, x0, x1 in values[2:].reshape(-1, 3):
        mask[y, x0:x1] = True
    return mask
