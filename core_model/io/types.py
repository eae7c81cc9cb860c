"""Data classes, window presets and small helpers shared by the loaders.

Frames: a 2-D image is an array (H, W) indexed [row, col], row 0 at the top of the displayed image. ``spacing`` is
(row, col) in mm. Volumes keep the file's voxel order (i, j, k); see :mod:`core_model.io.volume`.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core_model.errors import ImageTooLargeError, InvalidPixelValuesError
from core_model.geometry import ResizePad

PathLike = str | os.PathLike[str]

DEFAULT_MAX_PIXELS = 50_000_000
DEFAULT_MAX_VOXELS = DEFAULT_MAX_PIXELS * 8

#: name -> (center, width) in Hounsfield units
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "abdomen": (40.0, 400.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
    "soft_tissue": (50.0, 400.0),
}

WindowArg = str | tuple[float, float] | None


@dataclass
class ImageMetadata:
    """What we know about where an image came from. Identifiers are kept only for pseudonymisation, never exported."""

    source: str
    format: str  # 'png' | 'jpeg' | 'dicom' | 'nifti'
    modality: str | None = None
    spacing: tuple[float, float] | None = None  # (row, col) mm
    patient_sex: str | None = None  # 'M' | 'F' | 'O'
    patient_age: float | None = None  # years
    patient_id: str | None = None
    patient_name: str | None = None
    birth_date: str | None = None
    study_uid: str | None = None
    series_uid: str | None = None
    sop_instance_uid: str | None = None
    sop_class_uid: str | None = None
    photometric: str | None = None
    bits_stored: int | None = None
    window: tuple[float, float] | None = None  # (center, width) actually applied
    frame_index: int = 0
    frame_count: int = 1
    orientation: tuple[Any, ...] | None = None  # DICOM ImageOrientationPatient (6 floats) or NIfTI axis codes
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class LoadedImage:
    """A 2-D grayscale image ready for display and for the model.

    ``pixels``: float32 (H, W) in [0, 1], windowed, air dark (MONOCHROME1 already inverted).
    ``raw``: float32 (H, W) modality values before windowing (HU for CT), or None for 8-bit photos.
    """

    pixels: np.ndarray
    raw: np.ndarray | None
    metadata: ImageMetadata

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W)."""
        return (int(self.pixels.shape[0]), int(self.pixels.shape[1]))

    @property
    def geometry(self) -> ResizePad:
        """The exact mapping between this image's pixels and the 256 model grid."""
        return ResizePad(*self.shape)

    def to_uint8(self) -> np.ndarray:
        """(H, W) uint8, 0 = black, 255 = white, for display or PNG export."""
        return np.round(np.clip(self.pixels, 0.0, 1.0) * 255.0).astype(np.uint8)


def apply_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """Linear window: ``center - width/2`` -> 0, ``center + width/2`` -> 1, clipped. Same shape, float32 in [0, 1]."""
    if not np.isfinite(center) or not np.isfinite(width) or width <= 0:
        raise ValueError(f"window needs a finite center and a positive width, got ({center}, {width})")
    low = float(center) - float(width) / 2.0
    out = (np.asarray(values, dtype=np.float64) - low) / float(width)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def sigmoid_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM VOI LUT Function SIGMOID (PS3.3 C.11.2.1.3.1), float32 in [0, 1]."""
    if width <= 0:
        raise ValueError(f"window width must be positive, got {width}")
    out = 1.0 / (1.0 + np.exp(-4.0 * (np.asarray(values, dtype=np.float64) - center) / width))
    return out.astype(np.float32)


def resolve_window(window: WindowArg) -> tuple[float, float] | None:
    """A preset name or a (center, width) pair -> (center, width); None stays None."""
    if window is None:
        return None
    if isinstance(window, str):
        try:
            return WINDOW_PRESETS[window]
        except KeyError:
            raise ValueError(f"unknown window preset {window!r}; known: {sorted(WINDOW_PRESETS)}") from None
    center, width = window
    return (float(center), float(width))


def auto_window(values: np.ndarray, robust: bool) -> tuple[float, float]:
    """(center, width) spanning min..max, or the 0.5–99.5 percentiles when ``robust``; width is at least 1."""
    finite = np.asarray(values, dtype=np.float64)
    low, high = np.percentile(finite, [0.5, 99.5]) if robust else (finite.min(), finite.max())
    width = max(float(high - low), 1.0)
    return (float(low) + width / 2.0, width)


def check_dims(path: PathLike, shape: tuple[int, ...], limit: int, what: str = "pixels") -> None:
    """Raise if any dimension is 0 or the product exceeds ``limit`` (called on header shapes before decoding)."""
    if len(shape) == 0 or any(int(n) <= 0 for n in shape):
        raise InvalidPixelValuesError(path, f"image has size 0 in some dimension (shape {tuple(shape)})")
    total = int(np.prod([int(n) for n in shape], dtype=object))
    if total > limit:
        dims = tuple(int(n) for n in shape)
        raise ImageTooLargeError(path, f"{total} {what} (shape {dims}) exceeds the limit {limit}")


def check_finite(path: PathLike, values: np.ndarray) -> None:
    """Raise InvalidPixelValuesError on NaN/Inf or an empty array."""
    if values.size == 0:
        raise InvalidPixelValuesError(path, f"image has size 0 (shape {values.shape})")
    if values.dtype.kind in "fc" and not np.isfinite(values).all():
        n_bad = int(values.size - np.count_nonzero(np.isfinite(values)))
        raise InvalidPixelValuesError(path, f"{n_bad} NaN/Inf values")


def sha256_file(path: PathLike) -> str:
    """Hex SHA-256 of the file's bytes (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
