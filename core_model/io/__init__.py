"""Image I/O for the model and the app: PNG/JPEG/DICOM/NIfTI -> grayscale [0, 1] images, volumes and masks.

A folder stands for the DICOM series in it (single-frame CT/MR slices -> one volume, :mod:`core_model.io.dicom_series`);
``series_uid=`` picks one series when the folder holds several.

Every bad file raises a :class:`core_model.errors.ImageReadError` subclass naming the file and the cause. Sizes are
checked from headers before any decoding (``max_pixels`` / ``max_voxels``).
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from core_model.errors import MaskShapeError, UnsupportedFormatError
from core_model.io.dicom import load_dicom, parse_age
from core_model.io.dicom_series import SeriesLayout, list_dicom_series, load_dicom_directory, series_layout
from core_model.io.dicom_series import load_dicom_series as _load_dicom_series
from core_model.io.dicom_volume import load_dicom_volume
from core_model.io.raster import load_raster, read_raster_array
from core_model.io.sniff import detect_format
from core_model.io.sniff import is_raw_dicom as _is_raw_dicom
from core_model.io.types import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_VOXELS,
    WINDOW_PRESETS,
    ImageMetadata,
    LoadedImage,
    PathLike,
    WindowArg,
    apply_window,
    sha256_file,
)
from core_model.io.volume import LoadedVolume, SliceDisplay, load_nifti_volume, read_nifti_array

__all__ = [
    "DEFAULT_MAX_PIXELS", "DEFAULT_MAX_VOXELS", "WINDOW_PRESETS", "ImageMetadata", "LoadedImage", "LoadedVolume",
    "SeriesLayout", "SliceDisplay", "apply_window", "detect_format", "list_dicom_series", "load_any",
    "load_dicom_series", "load_image", "load_mask", "load_volume", "parse_age", "series_layout", "sha256_file",
]


def load_image(
    path: PathLike, *, frame: int = 0, window: WindowArg = None, max_pixels: int = DEFAULT_MAX_PIXELS,
    series_uid: str | None = None,
) -> LoadedImage:
    """Any supported file -> a 2-D LoadedImage: pixels float32 (H, W) in [0, 1], air dark.

    ``frame``: DICOM frame. ``window``: preset name or (center, width) in modality units, overriding the file's.
    A NIfTI, or a folder holding a DICOM series (``series_uid`` picks one of several), gives its middle axial slice
    in radiological orientation (limit ``max_pixels * 8`` voxels).
    """
    if os.path.isdir(path):
        return load_dicom_directory(path, series_uid=series_uid, max_voxels=max_pixels * 8).middle_axial(window)
    fmt = detect_format(path)
    if fmt in ("png", "jpeg"):
        return load_raster(path, fmt, window, max_pixels)
    if fmt == "dicom":
        return load_dicom(path, frame=frame, window=window, max_pixels=max_pixels, raw_dataset=_is_raw_dicom(path))
    return load_nifti_volume(path, max_pixels * 8).middle_axial(window)


def load_volume(path: PathLike, *, max_voxels: int = DEFAULT_MAX_VOXELS, series_uid: str | None = None) -> LoadedVolume:
    """NIfTI (.nii/.nii.gz), (multi-frame) DICOM, or a folder holding a DICOM series -> LoadedVolume, float32 data in
    file voxel order (i, j, k), affine voxel -> RAS+ mm.

    For DICOM the voxel order is (column, row, frame); for a folder (column, row, slice) with slices sorted along
    the slice normal (:mod:`core_model.io.dicom_series`). ``series_uid`` picks one series of a folder holding several
    (SeriesSelectionError without it); it is ignored for a file. PNG/JPEG raise UnsupportedFormatError.
    """
    if os.path.isdir(path):
        return load_dicom_directory(path, series_uid=series_uid, max_voxels=max_voxels)
    fmt = detect_format(path)
    if fmt == "nifti":
        return load_nifti_volume(path, max_voxels)
    if fmt == "dicom":
        return load_dicom_volume(path, max_voxels=max_voxels, raw_dataset=_is_raw_dicom(path))
    raise UnsupportedFormatError(path, f"{fmt.upper()} is a 2-D format; load_volume needs NIfTI or DICOM")


def load_dicom_series(paths: Sequence[PathLike], *, max_voxels: int = DEFAULT_MAX_VOXELS) -> LoadedVolume:
    """Single-frame DICOM files of one series (any order) -> LoadedVolume, float32 (Columns, Rows, slices), RAS+.

    Slices sorted by Image Position (Patient) along the slice normal; spacing from the positions; per-slice rescale.
    Typed errors name the offending file (see :mod:`core_model.io.dicom_series`).
    """
    return _load_dicom_series(paths, max_voxels=max_voxels)


def load_any(path: PathLike, **kw) -> LoadedImage | LoadedVolume:
    """NIfTI or a DICOM series folder -> LoadedVolume; everything else -> LoadedImage (kw as for load_image).

    For volumes only ``max_voxels`` (or ``max_pixels * 8``) and ``series_uid`` are used; ``frame``/``window`` apply
    to 2-D images only.
    """
    if os.path.isdir(path) or detect_format(path) == "nifti":
        limit = kw.get("max_voxels", kw["max_pixels"] * 8 if "max_pixels" in kw else DEFAULT_MAX_VOXELS)
        return load_volume(path, max_voxels=limit, series_uid=kw.get("series_uid"))
    kw.pop("max_voxels", None)
    return load_image(path, **kw)


def load_mask(
    path: PathLike, shape: tuple[int, ...] | None = None, *, max_pixels: int = DEFAULT_MAX_VOXELS
) -> np.ndarray:
    """A mask file -> bool array: PNG/JPEG (H, W) (PNG > 0; 8-bit JPEG > 127, for compression noise), NIfTI (I, J, K)
    in file voxel order (> 0). DICOM masks are read like images (> 0 on modality values).

    Raises MaskShapeError (an ImageReadError) when ``shape`` is given and differs.
    """
    fmt = detect_format(path)
    if fmt in ("png", "jpeg"):
        arr, _, _ = read_raster_array(path, fmt, max_pixels)
        mask = arr > 127 if (fmt == "jpeg" and arr.dtype == np.uint8) else arr > 0
    elif fmt == "nifti":
        arr, _ = read_nifti_array(path, max_pixels)
        mask = arr > 0
    else:
        image = load_dicom(path, frame=0, window=None, max_pixels=max_pixels, raw_dataset=_is_raw_dicom(path))
        mask = image.raw > 0
    if shape is not None and tuple(mask.shape) != tuple(shape):
        raise MaskShapeError(path, f"mask shape {tuple(mask.shape)} does not match expected shape {tuple(shape)}")
    return mask
