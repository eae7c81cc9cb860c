"""A DICOM series of single-frame slices (CT, MR, PT, NM...) as one LoadedVolume.

Voxel frame, the same as a multi-frame DICOM (:mod:`core_model.io.dicom_volume`): ``data[i, j, k]`` float32
(Columns, Rows, slices), i = column and j = row of a slice, k = slice; values are modality values (HU for CT), each
slice through its own Modality LUT or Rescale Slope/Intercept. Slices are ordered by their Image Position (Patient)
projected on the slice normal n = (row direction) × (column direction) from Image Orientation (Patient), ascending,
so k runs along +n; file names and Instance Numbers play no part. ``affine`` (4, 4) maps (i, j, k, 1) to RAS+ mm
(:func:`~core_model.io.dicom_volume.plane_affine`), in LPS before the x/y sign flip:

    column 0 = row direction × column spacing     column 1 = column direction × row spacing
    column 2 = (IPP of the last slice − IPP of the first) / (slices − 1)      column 3 = IPP of the first slice

so a series written from a NIfTI's axial slices loads with that NIfTI's voxel order and affine whenever the NIfTI's
k axis points along i × j (a right-handed voxel grid, the usual case); otherwise k comes out reversed and the affine
says so. The slice spacing comes from the positions, never from Slice Thickness. A series of one slice is a depth-1
volume whose k step is Spacing Between Slices, else Slice Thickness, else 1 mm along n.

Every check runs on the headers before any pixel is decoded, and each failure is a typed
:class:`~core_model.errors.ImageReadError` naming the offending file:

    not DICOM, or a DICOM without Rows/Columns            UnsupportedFormatError (EmptyFileError for 0 bytes)
    a multi-frame file among single-frame slices          UnsupportedFormatError
    no Image Position/Orientation (Patient)               UnsupportedFormatError (the slice cannot be placed)
    Rows/Columns, orientation or Pixel Spacing differing
    from most slices'; two slices at one position;
    a gap that differs from the series' spacing (missing
    slice) or a position off the line of the others       CorruptImageError
    files of different SeriesInstanceUIDs                 SeriesSelectionError (lists the UIDs)
    more than ``max_voxels`` voxels                       ImageTooLargeError (names the series' folder)

Positions agree when they differ by at most ``POSITION_TOLERANCE_MM`` + ``SPACING_RTOL`` × the slice spacing.

A folder (:func:`load_dicom_directory`) is searched recursively; files that are not DICOM are skipped unless their
name ends in ``.dcm`` (then they raise), as are DICOM objects without an image (DICOMDIR, SR, presentation states).
It must hold one series, or ``series_uid`` picks one; a folder whose only image file is a multi-frame DICOM loads
that file as :func:`~core_model.io.dicom_volume.load_dicom_volume` does. :func:`series_layout` gives the files in
slice order k with the affine and shape from the headers alone (the same checks, nothing decoded), e.g. to reference
each slice from a DICOM-SEG.

Built on the module's pydicom pipeline rather than SimpleITK's ImageSeriesReader: ITK loads a series with a missing
slice (a warning and an averaged spacing), names no file in its errors and decodes with GDCM instead of the pydicom
plugins whose transfer syntaxes the other loaders report. tests/test_io_series.py checks that ITK reads the same
voxels and geometry from a valid series.
"""
from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from core_model.errors import CorruptImageError, ImageReadError, SeriesSelectionError, UnsupportedFormatError
from core_model.io.dicom import (
    _spacing,
    _text,
    check_pixels_decodable,
    decode_frame,
    dicom_metadata,
    frame_count,
    modality_values,
    read_dataset,
)
from core_model.io.dicom_volume import default_step, load_dicom_volume, plane_affine
from core_model.io.sniff import detect_format, is_raw_dicom
from core_model.io.types import ImageMetadata, PathLike, check_dims, check_finite
from core_model.io.volume import LoadedVolume

POSITION_TOLERANCE_MM = 0.01
SPACING_RTOL = 0.01
ORIENTATION_TOLERANCE = 1e-3  # direction cosines
PIXEL_SPACING_TOLERANCE_MM = 1e-3


@dataclass(frozen=True)
class _Slice:
    """One file of a series: its header (no pixel bytes) and whether it lacks the preamble/file meta."""

    path: Path
    header: Dataset
    raw: bool


@dataclass(frozen=True)
class _Plane:
    """A slice's patient geometry (LPS): ``cosines`` (2, 3) = row, column direction; ``position`` (3,) mm of the
    first transmitted pixel's centre; ``spacing`` (row, col) mm."""

    cosines: np.ndarray
    position: np.ndarray
    spacing: tuple[float, float]


# -- finding the files --------------------------------------------------------------------------------------------
def _read_slice(path: Path) -> _Slice:
    """The header of one file of a series; UnsupportedFormatError when it is not DICOM."""
    fmt = detect_format(path)
    if fmt != "dicom":
        raise UnsupportedFormatError(path, f"a {fmt.upper()} file, not DICOM: it cannot be a slice of a DICOM series")
    raw = is_raw_dicom(path)
    return _Slice(path, read_dataset(path, raw, stop_before_pixels=True), raw)


def _scan_one(path: Path) -> _Slice | None:
    """A folder entry: its header when it is a DICOM image; None for other files, unless named ``*.dcm``."""
    if path.suffix.lower() != ".dcm":
        try:
            if detect_format(path) != "dicom":
                return None
        except ImageReadError:  # README, empty or unreadable non-DICOM files: not part of any series
            return None
    item = _read_slice(path)  # DICOM by content or by name: a failure here is an error, not a file to skip
    return item if "Rows" in item.header else None


def _scan(directory: Path) -> dict[str, list[_Slice]]:
    """SeriesInstanceUID ('' when absent) -> the DICOM image files under ``directory`` (recursive, name order)."""
    groups: dict[str, list[_Slice]] = {}
    entries = sorted(p for p in directory.rglob("*") if p.is_file() and p.name.upper() != "DICOMDIR")
    for path in entries:
        item = _scan_one(path)
        if item is not None:
            groups.setdefault(_text(item.header, "SeriesInstanceUID") or "", []).append(item)
    return groups


def list_dicom_series(directory: PathLike) -> dict[str, list[Path]]:
    """SeriesInstanceUID -> its DICOM image files under ``directory`` (recursive, sorted by path; headers only)."""
    return {uid: [item.path for item in items] for uid, items in sorted(_scan(_folder(directory)).items())}


def _folder(directory: PathLike) -> Path:
    """``directory`` as a Path; ImageReadError when it is not a folder."""
    path = Path(directory)
    if not path.is_dir():
        raise ImageReadError(path, "not a folder")
    return path


def _describe(groups: dict[str, list[_Slice]]) -> str:
    """'UID (n file(s)); ...' for an error message."""
    return "; ".join(f"{uid or '(no SeriesInstanceUID)'} ({len(items)} file(s))"
                     for uid, items in sorted(groups.items()))


def _select(directory: Path, groups: dict[str, list[_Slice]], series_uid: str | None) -> list[_Slice]:
    """The one series of the folder, or the one with ``series_uid``; SeriesSelectionError otherwise."""
    if not groups:
        raise UnsupportedFormatError(directory, "no DICOM image files in the folder")
    if series_uid is None and len(groups) == 1:
        return next(iter(groups.values()))
    if series_uid is not None and series_uid in groups:
        return groups[series_uid]
    cause = (f"no series with SeriesInstanceUID {series_uid} in the folder" if series_uid is not None
             else f"{len(groups)} DICOM series in the folder; choose one with series_uid=")
    raise SeriesSelectionError(directory, f"{cause}; series found: {_describe(groups)}", sorted(groups))


# -- checking the geometry ------------------------------------------------------------------------------------------
def _plane(item: _Slice) -> _Plane:
    """Orientation, position and pixel spacing of a slice; typed errors when missing or degenerate."""
    ds = item.header
    iop, ipp = ds.get("ImageOrientationPatient"), ds.get("ImagePositionPatient")
    if iop is None or ipp is None or len(iop) != 6 or len(ipp) != 3:
        raise UnsupportedFormatError(item.path, "no valid Image Orientation/Position (Patient): the slice cannot be "
                                                "placed in a volume")
    try:
        cosines = np.array([float(v) for v in iop]).reshape(2, 3)
        position = np.array([float(v) for v in ipp])
    except (TypeError, ValueError) as exc:
        raise CorruptImageError(item.path, f"non-numeric Image Orientation/Position (Patient): {exc}") from exc
    norms = np.linalg.norm(cosines, axis=1)
    if not (np.isfinite(cosines).all() and np.isfinite(position).all()) or np.abs(norms - 1).max() > 0.01 \
            or abs(float(cosines[0] @ cosines[1])) > 0.01:
        shown = cosines.ravel().round(4).tolist()
        raise CorruptImageError(item.path, f"Image Orientation (Patient) {shown} is not two orthogonal unit vectors, "
                                           "or the position is not finite")
    return _Plane(cosines, position, _spacing(ds, 0) or (1.0, 1.0))


def _reference(slices: Sequence[_Slice], planes: Sequence[_Plane]) -> int:
    """The slice whose Rows/Columns, orientation and pixel spacing most slices share (so the odd one is named)."""
    keys = [(int(item.header.Rows), int(item.header.Columns), *np.round(plane.cosines.ravel(), 3).tolist(),
             *np.round(plane.spacing, 3).tolist()) for item, plane in zip(slices, planes)]
    counts = Counter(keys)
    return max(range(len(keys)), key=lambda n: (counts[keys[n]], -n))


def _check_like_reference(ref: _Slice, ref_plane: _Plane, item: _Slice, plane: _Plane) -> None:
    """``item`` must have the reference slice's Rows/Columns, orientation and pixel spacing, and be single-frame."""
    a, b = ref.header, item.header
    if frame_count(b) > 1:
        raise UnsupportedFormatError(item.path, f"a multi-frame file ({frame_count(b)} frames) among single-frame "
                                                "slices; load it on its own with load_volume(file)")
    if (int(b.Rows), int(b.Columns)) != (int(a.Rows), int(a.Columns)):
        raise CorruptImageError(item.path, f"{int(b.Rows)} x {int(b.Columns)} pixels (Rows x Columns) but "
                                           f"{ref.path.name} has {int(a.Rows)} x {int(a.Columns)}")
    if np.abs(plane.cosines - ref_plane.cosines).max() > ORIENTATION_TOLERANCE:
        shown, expected = plane.cosines.ravel().round(4).tolist(), ref_plane.cosines.ravel().round(4).tolist()
        raise CorruptImageError(item.path, f"Image Orientation (Patient) {shown} differs from {ref.path.name}'s "
                                           f"{expected}")
    if np.abs(np.subtract(plane.spacing, ref_plane.spacing)).max() > PIXEL_SPACING_TOLERANCE_MM:
        raise CorruptImageError(item.path, f"Pixel Spacing {plane.spacing} differs from {ref.path.name}'s "
                                           f"{ref_plane.spacing}")


def _check_one_series(slices: Sequence[_Slice], source: Path) -> None:
    uids = sorted({_text(item.header, "SeriesInstanceUID") or "" for item in slices})
    if len(uids) > 1:
        odd = next(item for item in slices if (_text(item.header, "SeriesInstanceUID") or "") != uids[0])
        raise SeriesSelectionError(odd.path, f"files of {len(uids)} series given as one (under {source}): "
                                             f"{', '.join(u or '(none)' for u in uids)}", uids)


def _tolerance(spacing: float) -> float:
    return POSITION_TOLERANCE_MM + SPACING_RTOL * abs(spacing)


def _sorted_by_position(slices: Sequence[_Slice], planes: Sequence[_Plane]) -> list[int]:
    """Slice indices by position along the normal; CorruptImageError for a duplicate position or a gap."""
    normal = np.cross(*planes[0].cosines)
    heights = np.array([plane.position @ normal for plane in planes])
    order = [int(i) for i in np.argsort(heights, kind="stable")]
    gaps = np.diff(heights[order])
    spacing = float(np.median(gaps)) if len(gaps) else 0.0
    for n, gap in enumerate(gaps):
        before, after = slices[order[n]], slices[order[n + 1]]
        if gap <= POSITION_TOLERANCE_MM:
            raise CorruptImageError(after.path, f"same position ({heights[order[n + 1]]:.3f} mm along the slice "
                                                f"normal) as {before.path.name}: duplicate slice")
        if abs(gap - spacing) > _tolerance(spacing):
            raise CorruptImageError(after.path, f"{gap:.3f} mm from the previous slice {before.path.name} along the "
                                                f"slice normal, but the series' spacing is {spacing:.3f} mm: missing "
                                                "slice(s) or non-uniform spacing")
    return order


def _step(slices: Sequence[_Slice], planes: Sequence[_Plane], order: Sequence[int]) -> np.ndarray:
    """LPS mm from slice k to k + 1; CorruptImageError when a slice lies off the line through the first and last."""
    first, last = planes[order[0]].position, planes[order[-1]].position
    if len(order) == 1:
        return default_step(slices[order[0]].header, np.cross(*planes[order[0]].cosines))
    step = (last - first) / (len(order) - 1)
    for k, index in enumerate(order):
        off = float(np.linalg.norm(planes[index].position - (first + k * step)))
        if off > _tolerance(float(np.linalg.norm(step))):
            raise CorruptImageError(slices[index].path, f"Image Position (Patient) is {off:.3f} mm off the line "
                                                        "through the first and last slices (non-uniform positions)")
    return step


# -- reading the pixels ---------------------------------------------------------------------------------------------
def _slice_values(item: _Slice, max_voxels: int) -> np.ndarray:
    """Modality values of one slice, float32 (Rows, Columns), with that file's own rescale / Modality LUT."""
    ds = read_dataset(item.path, item.raw)
    check_pixels_decodable(item.path, ds, max_voxels, frames=1)
    if (int(ds.Rows), int(ds.Columns)) != (int(item.header.Rows), int(item.header.Columns)):
        raise CorruptImageError(item.path, "the file changed while the series was read")
    values = modality_values(decode_frame(item.path, ds, 0), ds, 0)
    check_finite(item.path, values)
    return values


def _source(paths: Sequence[Path]) -> Path:
    """The folder that holds all ``paths`` (their deepest common parent)."""
    return Path(os.path.commonpath([os.path.abspath(p.parent) for p in paths]))


def _checked_planes(source: Path, slices: Sequence[_Slice]) -> tuple[list[_Plane], int, int]:
    """The planes of ``slices`` (one series, each like the reference slice) and the series' (Rows, Columns)."""
    _check_one_series(slices, source)
    planes = [_plane(item) for item in slices]
    ref = _reference(slices, planes)
    for item, plane in zip(slices, planes):
        _check_like_reference(slices[ref], planes[ref], item, plane)
    return planes, int(slices[ref].header.Rows), int(slices[ref].header.Columns)


def _arrange(slices: Sequence[_Slice], planes: Sequence[_Plane]) -> tuple[list[int], np.ndarray, np.ndarray]:
    """(slice indices in k order, LPS step from slice k to k + 1, voxel -> RAS+ affine) of checked ``slices``."""
    order = _sorted_by_position(slices, planes)
    step = _step(slices, planes, order)
    first = planes[order[0]]
    return order, step, plane_affine(first.cosines, first.spacing, first.position, step)


def _load_slices(source: Path, slices: Sequence[_Slice], max_voxels: int) -> LoadedVolume:
    """Check, sort and decode ``slices`` into a LoadedVolume (see module docstring)."""
    planes, rows, cols = _checked_planes(source, slices)
    check_dims(source, (cols, rows, len(slices)), max_voxels, what="voxels")
    order, step, affine = _arrange(slices, planes)
    data = np.empty((cols, rows, len(order)), dtype=np.float32)
    for k, index in enumerate(order):
        data[:, :, k] = _slice_values(slices[index], max_voxels).T
    return LoadedVolume(data=data, affine=affine, metadata=_metadata(source, [slices[i] for i in order], step))


def _metadata(source: Path, ordered: Sequence[_Slice], step: np.ndarray) -> ImageMetadata:
    """The first slice's metadata for the whole series; ``extra['files']`` lists the files in slice (k) order."""
    meta = dicom_metadata(source, ordered[0].header, 0, len(ordered))
    meta.sop_instance_uid = None  # many instances: see extra['sop_instance_uids']
    meta.extra.update(files=[str(item.path) for item in ordered], slice_spacing=float(np.linalg.norm(step)),
                      sop_instance_uids=[_text(item.header, "SOPInstanceUID") for item in ordered])
    return meta


def load_dicom_series(paths: Sequence[PathLike], *, max_voxels: int) -> LoadedVolume:
    """The single-frame DICOM files ``paths`` (any order, one series) -> LoadedVolume (Columns, Rows, slices), RAS+.

    ``metadata.source`` is the folder holding the files; see the module docstring for the order, affine and errors.
    """
    files = [Path(p) for p in paths]
    if not files:
        raise ValueError("load_dicom_series needs at least one file")
    slices = [_read_slice(path) for path in files]
    for item in slices:
        if "Rows" not in item.header or "Columns" not in item.header:
            raise UnsupportedFormatError(item.path, f"DICOM without an image (no Rows/Columns; SOP class "
                                                    f"{item.header.get('SOPClassUID', '?')})")
    return _load_slices(_source(files), slices, max_voxels)


def load_dicom_directory(directory: PathLike, *, series_uid: str | None = None, max_voxels: int) -> LoadedVolume:
    """The DICOM series in ``directory`` (recursive; ``series_uid`` picks one of several) -> LoadedVolume.

    A series of single-frame slices as :func:`load_dicom_series`; a folder whose series is one multi-frame file
    loads that file. SeriesSelectionError (listing the SeriesInstanceUIDs) when the choice is ambiguous.
    """
    folder = _folder(directory)
    slices = _select(folder, _scan(folder), series_uid)
    if len(slices) == 1 and frame_count(slices[0].header) > 1:
        return load_dicom_volume(slices[0].path, max_voxels=max_voxels, raw_dataset=slices[0].raw)
    return _load_slices(folder, slices, max_voxels)


@dataclass(frozen=True)
class SeriesLayout:
    """How the single-frame files of a series make up its volume, from the headers alone (no pixel decoded).

    ``files[k]`` / ``headers[k]`` (pydicom Datasets without Pixel Data) hold slice k of the volume that
    :func:`load_dicom_directory` loads: ``data[:, :, k]`` is that file's (Rows, Columns) plane transposed, i.e.
    ``data[i, j, k]`` = row j, column i of ``files[k]``. ``shape`` = (Columns, Rows, slices); ``affine`` as loaded.
    """

    files: list[Path]
    headers: list[Dataset]
    shape: tuple[int, int, int]
    affine: np.ndarray


def series_layout(directory: PathLike, *, series_uid: str | None = None) -> SeriesLayout:
    """The files of the single-frame series in ``directory`` (``series_uid`` picks one) in the loader's slice order.

    The same selection, checks and sort as :func:`load_dicom_directory`, with the same typed errors (a missing slice
    is a CorruptImageError); UnsupportedFormatError when the folder's series is one multi-frame file.
    """
    folder = _folder(directory)
    slices = _select(folder, _scan(folder), series_uid)
    if len(slices) == 1 and frame_count(slices[0].header) > 1:
        raise UnsupportedFormatError(slices[0].path, "a multi-frame file, not a series of single-frame slices")
    planes, rows, cols = _checked_planes(folder, slices)
    order, _, affine = _arrange(slices, planes)
    return SeriesLayout(files=[slices[i].path for i in order], headers=[slices[i].header for i in order],
                        shape=(cols, rows, len(order)), affine=affine)
