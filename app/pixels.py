"""Full-bit-depth pixels for the viewer (``GET /api/v1/view/{nonce}/pixels``, see ``app/VIEWER_API.md``).

Frames
    Samples are on the **display grid** of :class:`app.render.DisplayGeometry` (row-major, row 0 at the top of the
    displayed image, little-endian). An image larger than the display grid is area-averaged onto it (the display
    image's own resampling, ``PIL`` box filter) and rounded to the sample type; an image that fits is sent as stored.
    A volume slice is in the radiological display orientation of :mod:`core_model.io.volume` (the same transform as
    the slice the model sees and the masks are drawn on).

Values
    ``modality value = sample × slope + intercept`` (CT: HU). A DICOM sends its **stored values** with its Rescale
    Slope/Intercept — never pre-inverted (MONOCHROME1 sets ``invert``), never windowed. Other sources send integer
    modality values as they are (int16 / uint16 / uint8) and non-integer ones linearly quantised to uint16.

Default window
    The DICOM VOI window (Window Center/Width) when the file has one; CT: a preset chosen from the slice — the lung
    window when aerated lung (-900..-500 HU) covers at least :data:`LUNG_FRACTION` of the body (> -900 HU), else
    the abdomen (soft-tissue) window (the abdominal CT of ``ct_nifti``: lung window on its top slices only); otherwise the 0.5–99.5 percentile range (min–max for 8-bit data).
"""
from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from app.render import DisplayGeometry
from core_model.io.types import WINDOW_PRESETS, auto_window
from core_model.io.volume import LoadedVolume, axial_axis, looks_like_hu

LUNG_FRACTION = 0.15  # aerated lung / body (see lung_fraction) at or above which a CT slice is "chest"
GZIP_LEVEL = 1
_RANGES = {"uint8": (0, 255), "uint16": (0, 65535), "int16": (-32768, 32767)}


@dataclass(frozen=True)
class PixelBlock:
    """One gzip-compressed sample block and what the viewer needs to interpret it (the response headers)."""

    body: bytes  # gzip(level 1) of the row-major little-endian samples
    dtype: str  # 'int16' | 'uint16' | 'uint8'
    width: int
    height: int
    slope: float
    intercept: float
    units: str  # 'HU' for CT, '' otherwise
    window: tuple[float, float]  # (center, width) in modality units
    invert: bool
    spacing: tuple[float, float] | None  # (row_mm, col_mm) of one display pixel
    modality: str
    slice_index: int | None = None
    slice_count: int | None = None

    def headers(self) -> dict[str, str]:
        """The response headers of ``app/VIEWER_API.md`` (``Content-Encoding: gzip`` included)."""
        spacing = "" if self.spacing is None else f"{self.spacing[0]:.6g},{self.spacing[1]:.6g}"
        return {"Content-Encoding": "gzip", "Cache-Control": "private, max-age=3600", "X-Dtype": self.dtype,
                "X-Width": str(self.width), "X-Height": str(self.height), "X-Slope": f"{self.slope:.9g}",
                "X-Intercept": f"{self.intercept:.9g}", "X-Units": self.units,
                "X-Window": f"{self.window[0]:.6g},{self.window[1]:.6g}", "X-Invert": "1" if self.invert else "0",
                "X-Spacing": spacing, "X-Modality": self.modality,
                "X-Slice": "" if self.slice_index is None else str(self.slice_index),
                "X-Slices": "" if self.slice_count is None else str(self.slice_count),
                "Access-Control-Expose-Headers": ", ".join(_EXPOSED)}


_EXPOSED = ("X-Dtype", "X-Width", "X-Height", "X-Slope", "X-Intercept", "X-Units", "X-Window", "X-Invert",
            "X-Spacing", "X-Modality", "X-Slice", "X-Slices")


# ---------------------------------------------------------------------------------------------------------------
def to_display_grid(values: np.ndarray, geometry: DisplayGeometry) -> np.ndarray:
    """(H, W) values on the original grid → (disp_h, disp_w) float64, area-averaged (identity when they match)."""
    array = np.asarray(values)
    if array.shape == (geometry.disp_height, geometry.disp_width):
        return array.astype(np.float64, copy=False)
    image = Image.fromarray(array.astype(np.float32), mode="F")
    return np.asarray(image.resize((geometry.disp_width, geometry.disp_height), Image.BOX), dtype=np.float64)


def integer_dtype(values: np.ndarray) -> str | None:
    """The smallest of uint8 / uint16 / int16 holding ``values`` exactly (None: not integers, or out of range)."""
    if values.size == 0 or not np.array_equal(values, np.round(values)):
        return None
    low, high = float(values.min()), float(values.max())
    for name in ("uint8", "uint16", "int16"):
        lo, hi = _RANGES[name]
        if lo <= low and high <= hi:
            return name
    return None


def quantise(values: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Modality values → (samples, slope, intercept): as they are when integral, else uint16 over min..max."""
    name = integer_dtype(values)
    if name is not None:
        return values.astype(name), 1.0, 0.0
    low, high = float(values.min()), float(values.max())
    slope = (high - low) / 65535.0 if high > low else 1.0
    samples = np.clip(np.round((values - low) / slope), 0, 65535).astype(np.uint16)
    return samples, slope, low


def _samples_on_grid(stored: np.ndarray, geometry: DisplayGeometry, dtype: str) -> np.ndarray:
    """Stored integer samples → the display grid in ``dtype`` (area average rounded, clipped to the type)."""
    grid = to_display_grid(stored, geometry)
    lo, hi = _RANGES[dtype]
    return np.clip(np.round(grid), lo, hi).astype(dtype)


def _pack(samples: np.ndarray) -> bytes:
    little = samples.astype(samples.dtype.newbyteorder("<"), copy=False)
    return gzip.compress(np.ascontiguousarray(little).tobytes(), compresslevel=GZIP_LEVEL)


# ---------------------------------------------------------------------------------------------------------------
def lung_fraction(hu: np.ndarray) -> float:
    """Aerated lung (-900..-500 HU) over the body (> -900 HU: outside air and the table's air gap excluded)."""
    body = hu > -900.0
    n_body = int(np.count_nonzero(body))
    return float(np.count_nonzero(body & (hu < -500.0))) / n_body if n_body else 0.0


def is_chest_slice(hu: np.ndarray) -> bool:
    """A CT slice at chest level: aerated lung covers at least :data:`LUNG_FRACTION` of the body."""
    return lung_fraction(hu) >= LUNG_FRACTION


def ct_window(hu: np.ndarray) -> tuple[float, float]:
    """The CT preset for a slice (HU, any grid): lung at chest level (:func:`is_chest_slice`), else abdomen."""
    return WINDOW_PRESETS["lung"] if is_chest_slice(hu) else WINDOW_PRESETS["abdomen"]


def volume_modality(volume: LoadedVolume) -> str:
    """A volume's modality: the DICOM tag, else CT for HU-range data (NIfTI carries none), else MR."""
    tag = (volume.metadata.modality or "").upper()
    return tag or ("CT" if looks_like_hu(volume.data) else "MR")


def volume_slice_values(volume: LoadedVolume, index: int) -> np.ndarray:
    """Modality values (HU for CT) of axial slice ``index`` in display orientation, float32 (H, W)."""
    display = volume.display(axial_axis(volume.affine))
    return np.ascontiguousarray(display.forward(np.take(volume.data, index, axis=display.axis)))


def volume_slice_block(volume: LoadedVolume, index: int, modality: str) -> PixelBlock:
    """Axial slice ``index`` of ``volume`` (display orientation, see :mod:`core_model.io.volume`) as a block."""
    axis = axial_axis(volume.affine)
    display = volume.display(axis)
    raw = volume_slice_values(volume, index)
    geometry = DisplayGeometry.for_shape(*raw.shape)
    name = integer_dtype(raw)
    if name is not None:
        samples = _samples_on_grid(raw, geometry, name)
        slope, intercept = 1.0, 0.0
    else:
        samples, slope, intercept = quantise(to_display_grid(raw, geometry))
    zooms = volume.voxel_size
    spacing = (zooms[display.row_axis] * geometry.sy, zooms[display.col_axis] * geometry.sx)
    window = ct_window(raw) if modality == "CT" else auto_window(raw, robust=True)
    return PixelBlock(_pack(samples), str(samples.dtype), geometry.disp_width, geometry.disp_height, slope, intercept,
                      "HU" if modality == "CT" else "", window, False, spacing, modality, index,
                      volume.num_slices(axis))


def image_block(path: Path) -> PixelBlock:
    """A 2-D case (DICOM frame 0, PNG, JPEG) as a block: DICOM stored values with their rescale, else the file's
    values (8-bit photos: 0–255)."""
    from core_model.io import detect_format, load_image

    if detect_format(path) == "dicom":
        found = _dicom_stored(path)
        if found is not None:
            return found
    loaded = load_image(path)
    meta = loaded.metadata
    values = loaded.raw if loaded.raw is not None else np.round(loaded.pixels * 255.0)
    geometry = DisplayGeometry.for_shape(*values.shape[:2])
    name = integer_dtype(values)
    samples, slope, intercept = ((_samples_on_grid(values, geometry, name), 1.0, 0.0) if name
                                 else quantise(to_display_grid(values, geometry)))
    window = meta.window if meta.window else auto_window(values, robust=name != "uint8")
    spacing = None if meta.spacing is None else (meta.spacing[0] * geometry.sy, meta.spacing[1] * geometry.sx)
    return PixelBlock(_pack(samples), str(samples.dtype), geometry.disp_width, geometry.disp_height, slope, intercept,
                      "HU" if (meta.modality or "") == "CT" else "", tuple(window), meta.photometric == "MONOCHROME1",
                      spacing, (meta.modality or "OT").upper())


def _dicom_stored(path: Path) -> PixelBlock | None:
    """Frame 0 of a grayscale DICOM as its stored values + Rescale Slope/Intercept; None when a Modality LUT or
    colour needs the generic path."""
    from core_model.io.dicom import _attr, _first, _spacing, decode_frame, read_dataset, voi_values
    from core_model.io.sniff import is_raw_dicom

    ds = read_dataset(path, is_raw_dicom(path))
    if "ModalityLUTSequence" in ds or int(ds.get("SamplesPerPixel") or 1) != 1:
        return None
    from core_model.io.dicom import check_pixels_decodable
    check_pixels_decodable(path, ds, 50_000_000, frames=1)
    stored = decode_frame(path, ds, 0)
    slope = _first(_attr(ds, 0, "RescaleSlope", "PixelValueTransformationSequence")) or 1.0
    intercept = _first(_attr(ds, 0, "RescaleIntercept", "PixelValueTransformationSequence")) or 0.0
    name = integer_dtype(stored)
    if name is None:
        return None
    geometry = DisplayGeometry.for_shape(*stored.shape)
    raw = stored.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    _, window, _ = voi_values(raw, stored, ds, 0, None)
    if window is None:  # a VOI LUT: its range as a linear window is the closest the viewer can do
        window = auto_window(raw, robust=int(ds.get("BitsStored") or 16) > 8)
    spacing = _spacing(ds, 0)
    modality = str(ds.get("Modality") or "OT").upper()
    return PixelBlock(_pack(_samples_on_grid(stored, geometry, name)), name, geometry.disp_width,
                      geometry.disp_height, float(slope), float(intercept), "HU" if modality == "CT" else "",
                      (float(window[0]), float(window[1])), str(ds.get("PhotometricInterpretation")) == "MONOCHROME1",
                      None if spacing is None else (spacing[0] * geometry.sy, spacing[1] * geometry.sx), modality)


def describe(block: PixelBlock) -> str:
    """A one-line JSON summary of a block (logs, bench)."""
    return json.dumps({k: v for k, v in block.__dict__.items() if k != "body"})
