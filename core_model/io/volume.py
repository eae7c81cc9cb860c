"""3-D volumes (NIfTI via nibabel, or a DICOM frame stack) and their radiological 2-D display.

Voxel frame: ``data[i, j, k]`` in the file's own voxel order; ``affine`` maps (i, j, k, 1) to RAS+ world mm
(x -> patient Right, y -> Anterior, z -> Superior), as in NIfTI. A slice is shown the radiological way:

    axial (slice axis along S/I):    rows top->bottom = anterior->posterior, cols left->right = patient right->left
    coronal (slice axis along A/P):  rows = superior->inferior,             cols = patient right->left
    sagittal (slice axis along R/L): rows = superior->inferior,             cols = anterior->posterior

The display transform of a slice is a transpose and/or flips of ``np.take(data, index, axis)``, hence exactly
invertible (``slice_mask_to_volume`` / ``volume_mask_to_slice``).
"""
from __future__ import annotations

import copy
import zlib
from dataclasses import dataclass

import nibabel as nib
import numpy as np
from nibabel.orientations import io_orientation

from core_model.errors import CorruptImageError, UnsupportedFormatError
from core_model.io.types import (
    ImageMetadata,
    LoadedImage,
    PathLike,
    WindowArg,
    apply_window,
    auto_window,
    check_dims,
    check_finite,
    resolve_window,
)

# world axis of the slice normal -> ((row world axis, row direction), (col world axis, col direction)); -1 = towards
# the negative RAS end (Left, Posterior, Inferior)
_DISPLAY = {2: ((1, -1), (0, -1)), 1: ((2, -1), (0, -1)), 0: ((2, -1), (1, -1))}
_PLANE = {2: "axial", 1: "coronal", 0: "sagittal"}


@dataclass(frozen=True)
class SliceDisplay:
    """How a 2-D slice ``np.take(data, index, axis)`` (axes in increasing voxel order) becomes the displayed (H, W)."""

    axis: int
    row_axis: int  # voxel axis running down the rows
    col_axis: int  # voxel axis running along the columns
    transpose: bool
    flip_rows: bool
    flip_cols: bool
    plane: str

    def forward(self, plane2d: np.ndarray) -> np.ndarray:
        """Voxel-order slice (n_a, n_b) -> displayed (H, W)."""
        out = plane2d.T if self.transpose else plane2d
        if self.flip_rows:
            out = out[::-1, :]
        if self.flip_cols:
            out = out[:, ::-1]
        return out

    def inverse(self, display2d: np.ndarray) -> np.ndarray:
        """Displayed (H, W) -> voxel-order slice (n_a, n_b); exact inverse of :meth:`forward`."""
        out = display2d
        if self.flip_cols:
            out = out[:, ::-1]
        if self.flip_rows:
            out = out[::-1, :]
        return out.T if self.transpose else out


def _orientation(affine: np.ndarray) -> np.ndarray:
    """(3, 2) per voxel axis: (RAS world axis, +1/-1); identity (RAS) when the affine is degenerate."""
    try:
        ornt = io_orientation(affine)
    except Exception:  # singular / non-finite affines
        ornt = np.full((3, 2), np.nan)
    if not np.isfinite(ornt).all() or sorted(ornt[:, 0].astype(int)) != [0, 1, 2]:
        ornt = np.array([[0, 1], [1, 1], [2, 1]], dtype=float)
    return ornt


def slice_display(affine: np.ndarray, axis: int) -> SliceDisplay:
    """The radiological display transform for slices perpendicular to voxel axis ``axis``."""
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis}")
    ornt = _orientation(affine)
    world = {int(ornt[v, 0]): (v, int(ornt[v, 1])) for v in range(3)}
    normal = int(ornt[axis, 0])
    (row_world, row_dir), (col_world, col_dir) = _DISPLAY[normal]
    row_axis, row_sign = world[row_world]
    col_axis, col_sign = world[col_world]
    remaining = [a for a in range(3) if a != axis]
    return SliceDisplay(
        axis=axis, row_axis=row_axis, col_axis=col_axis, transpose=remaining.index(row_axis) == 1,
        flip_rows=row_sign != row_dir, flip_cols=col_sign != col_dir, plane=_PLANE[normal],
    )


def axial_axis(affine: np.ndarray) -> int:
    """The voxel axis closest to the superior-inferior direction."""
    ornt = _orientation(affine)
    return int(np.flatnonzero(ornt[:, 0] == 2)[0])


def looks_like_hu(values: np.ndarray) -> bool:
    """CT-like range: air near -1000 HU present."""
    return bool(values.size) and float(values.min()) <= -900.0 and float(values.max()) >= 100.0


@dataclass
class LoadedVolume:
    """A 3-D volume: ``data`` float32 (I, J, K) in file voxel order (HU for CT); ``affine`` (4, 4) voxel -> RAS+ mm."""

    data: np.ndarray
    affine: np.ndarray
    metadata: ImageMetadata

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.data.shape)  # type: ignore[return-value]

    @property
    def voxel_size(self) -> tuple[float, float, float]:
        """Voxel edge lengths in mm along i, j, k (column norms of the affine)."""
        return tuple(float(v) for v in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))  # type: ignore[return-value]

    def num_slices(self, axis: int = 2) -> int:
        return int(self.data.shape[axis])

    def display(self, axis: int = 2) -> SliceDisplay:
        return slice_display(self.affine, axis)

    def _check_index(self, index: int, axis: int) -> None:
        if not 0 <= index < self.num_slices(axis):
            raise IndexError(f"slice {index} out of range 0..{self.num_slices(axis) - 1} on axis {axis}")

    def slice(self, index: int, axis: int = 2, window: WindowArg = "lung") -> LoadedImage:
        """Slice ``index`` perpendicular to voxel ``axis``, in radiological display orientation (see module doc).

        ``raw`` is the (H, W) voxel values; ``pixels`` the windowed [0, 1] image (window None -> 0.5–99.5 pct).
        """
        self._check_index(index, axis)
        disp = self.display(axis)
        raw = np.ascontiguousarray(disp.forward(np.take(self.data, index, axis=axis)), dtype=np.float32)
        chosen = resolve_window(window) or auto_window(raw, robust=True)
        meta = copy.deepcopy(self.metadata)
        zooms = self.voxel_size
        meta.spacing = (zooms[disp.row_axis], zooms[disp.col_axis])
        meta.window, meta.frame_index, meta.frame_count = chosen, index, self.num_slices(axis)
        meta.extra.update(slice_index=index, slice_axis=axis, slice_plane=disp.plane,
                          display_row_axis=disp.row_axis, display_col_axis=disp.col_axis)
        return LoadedImage(pixels=apply_window(raw, *chosen), raw=raw, metadata=meta)

    def volume_mask_to_slice(self, mask3d: np.ndarray, index: int, axis: int = 2) -> np.ndarray:
        """Bool (I, J, K) mask -> bool (H, W) mask of slice ``index`` as displayed by :meth:`slice`."""
        self._check_shape(mask3d)
        self._check_index(index, axis)
        plane = np.take(np.asarray(mask3d), index, axis=axis)
        return np.ascontiguousarray(self.display(axis).forward(plane)).astype(bool)

    def slice_mask_to_volume(self, mask2d: np.ndarray, index: int, axis: int = 2) -> np.ndarray:
        """Bool (H, W) mask on the displayed slice -> bool volume of ``data.shape``, only that slice filled."""
        self._check_index(index, axis)
        disp = self.display(axis)
        plane = disp.inverse(np.asarray(mask2d).astype(bool))
        expected = tuple(n for a, n in enumerate(self.data.shape) if a != axis)
        if plane.shape != expected:
            shown = disp.forward(np.empty(expected)).shape
            raise ValueError(f"mask shape {np.shape(mask2d)} does not match slice shape {shown}")
        out = np.zeros(self.data.shape, dtype=bool)
        index_tuple = [slice(None)] * 3
        index_tuple[axis] = index  # type: ignore[call-overload]
        out[tuple(index_tuple)] = plane
        return out

    def _check_shape(self, mask3d: np.ndarray) -> None:
        if tuple(np.shape(mask3d)) != self.data.shape:
            raise ValueError(f"mask shape {np.shape(mask3d)} does not match volume shape {self.data.shape}")

    def axial(self, index: int | None = None, window: WindowArg = None) -> LoadedImage:
        """Slice ``index`` (None: the middle one) along the voxel axis closest to S/I, as :meth:`slice` shows it;
        window None -> 'lung' for HU data, else auto."""
        axis = axial_axis(self.affine)
        if window is None and looks_like_hu(self.data):
            window = "lung"
        return self.slice(self.num_slices(axis) // 2 if index is None else index, axis=axis, window=window)

    def middle_axial(self, window: WindowArg = None) -> LoadedImage:
        """The middle slice along the voxel axis closest to S/I (see :meth:`axial`)."""
        return self.axial(None, window)


_NIB_ERRORS = (nib.filebasedimages.ImageFileError, nib.spatialimages.HeaderDataError, OSError, EOFError,
               zlib.error, ValueError, TypeError, MemoryError)


def read_nifti_array(path: PathLike, max_voxels: int, dtype: type = np.float32) -> tuple[np.ndarray, nib.Nifti1Image]:
    """NIfTI -> (array (I, J, K) in file voxel order with scl_slope/inter applied, image); shape checked first.

    2-D files get K = 1; for 4-D+ files the first volume is kept (``metadata.extra['n_volumes']``).
    """
    try:
        img = nib.load(str(path))
        shape = tuple(int(n) for n in img.header.get_data_shape())
    except _NIB_ERRORS as exc:
        raise CorruptImageError(path, f"cannot read NIfTI header: {exc}") from exc
    check_dims(path, shape, max_voxels, what="voxels")
    if len(shape) < 2:
        raise UnsupportedFormatError(path, f"NIfTI with {len(shape)} dimension(s), need 2 to 4")
    if img.get_data_dtype().kind not in "biuf":
        raise UnsupportedFormatError(path, f"NIfTI data type {img.get_data_dtype()} is not a scalar number")
    try:
        proxy = img.dataobj
        data = np.asarray(proxy[(slice(None),) * 3 + (0,) * (len(shape) - 3)] if len(shape) > 3 else proxy)
    except _NIB_ERRORS as exc:
        raise CorruptImageError(path, f"cannot read NIfTI voxel data (truncated?): {exc}") from exc
    data = data.reshape(data.shape + (1,) * (3 - data.ndim)).astype(dtype, copy=False)
    return data, img


def load_nifti_volume(path: PathLike, max_voxels: int) -> LoadedVolume:
    """NIfTI (.nii / .nii.gz) -> LoadedVolume, float32 voxel values (HU for CT)."""
    data, img = read_nifti_array(path, max_voxels)
    check_finite(path, data)
    shape = tuple(int(n) for n in img.header.get_data_shape())
    affine = np.asarray(img.affine, dtype=np.float64)
    meta = ImageMetadata(
        source=str(path), format="nifti", orientation=tuple(nib.aff2axcodes(affine)), frame_count=data.shape[2],
        extra={"voxel_size": tuple(float(z) for z in img.header.get_zooms()[:3]),
               "file_dtype": str(img.get_data_dtype()), "n_volumes": int(np.prod(shape[3:], dtype=int))},
    )
    return LoadedVolume(data=data, affine=affine, metadata=meta)
