"""A (multi-frame) DICOM as a LoadedVolume: data (Columns, Rows, frames), affine voxel -> RAS+ mm."""
from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset

from core_model.io.dicom import _attr, _spacing, dicom_metadata, load_dicom_frames
from core_model.io.types import PathLike
from core_model.io.volume import LoadedVolume

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _position(ds: Dataset, frame: int) -> np.ndarray | None:
    value = _attr(ds, frame, "ImagePositionPatient", "PlanePositionSequence")
    return None if value is None else np.array([float(v) for v in value])


def plane_affine(cosines: np.ndarray, pixel_spacing: tuple[float, float], origin: np.ndarray,
                 step: np.ndarray) -> np.ndarray:
    """(4, 4) voxel (i = column, j = row, k = frame or slice) -> RAS+ mm, from DICOM patient (LPS) geometry.

    ``cosines`` (2, 3): Image Orientation (Patient), the LPS direction of increasing column index, then of increasing
    row index. ``pixel_spacing``: (row, col) mm. ``origin`` (3,): LPS mm of voxel (0, 0, 0). ``step`` (3,): LPS mm
    from one frame/slice to the next. The LPS matrix [row dir × col mm | col dir × row mm | step | origin] is turned
    to RAS+ by negating x and y, as for NIfTI.
    """
    along_row, along_col = np.asarray(cosines, dtype=np.float64)
    row_mm, col_mm = pixel_spacing
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2] = along_row * col_mm, along_col * row_mm, step
    lps[:3, 3] = origin
    return _LPS_TO_RAS @ lps


def default_step(ds: Dataset, normal: np.ndarray) -> np.ndarray:
    """LPS step along ``normal`` when positions cannot give one (one frame): Spacing Between Slices, else Slice
    Thickness, else 1 mm."""
    return np.asarray(normal, dtype=np.float64) * float(
        ds.get("SpacingBetweenSlices") or ds.get("SliceThickness") or 1.0)


def dicom_affine(ds: Dataset, frames: int) -> np.ndarray:
    """(4, 4) voxel (i = column, j = row, k = frame) -> RAS+ mm.

    Uses Image Orientation/Position (Patient) and Pixel Spacing when present; otherwise rows run to posterior and
    columns to patient left (as a frame is displayed), 1 mm where spacing is unknown.
    """
    iop = _attr(ds, 0, "ImageOrientationPatient", "PlaneOrientationSequence")
    cosines = np.array([float(v) for v in iop]).reshape(2, 3) if iop is not None and len(iop) == 6 else np.eye(3)[:2]
    first, last = _position(ds, 0), _position(ds, frames - 1)
    if first is not None and last is not None and frames > 1 and np.linalg.norm(last - first) > 0:
        step = (last - first) / (frames - 1)
    else:
        step = default_step(ds, np.cross(cosines[0], cosines[1]))
    origin = first if first is not None else np.zeros(3)
    return plane_affine(cosines, _spacing(ds, 0) or (1.0, 1.0), origin, step)


def load_dicom_volume(path: PathLike, *, max_voxels: int, raw_dataset: bool) -> LoadedVolume:
    """All frames, modality values (HU for CT), float32 (Columns, Rows, frames), with a RAS+ affine."""
    stack, ds = load_dicom_frames(path, max_voxels=max_voxels, raw_dataset=raw_dataset)
    meta = dicom_metadata(path, ds, 0, stack.shape[0])
    data = np.ascontiguousarray(stack.transpose(2, 1, 0))
    return LoadedVolume(data=data, affine=dicom_affine(ds, stack.shape[0]), metadata=meta)
