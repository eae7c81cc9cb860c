"""A DICOM series of single-frame CT slices (written from the real example CT NIfTI) loads as one volume.

The series is written by tests/series_helpers.py: one CT Image Storage file per axial slice, geometry from the NIfTI
affine (LPS), a different Rescale Slope/Intercept per slice, shuffled file names and Instance Numbers, a wrong Slice
Thickness. Loaded, its voxels (Columns, Rows, slices) and affine are the NIfTI's. Broken series raise the typed
errors of core_model.errors naming the offending file.
"""
from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from core_model.errors import (
    CorruptImageError,
    ImageReadError,
    ImageTooLargeError,
    SeriesSelectionError,
    UnsupportedFormatError,
)
from core_model.io import (
    LoadedVolume,
    list_dicom_series,
    load_any,
    load_dicom_series,
    load_image,
    load_volume,
    series_layout,
)
from tests.series_helpers import CtSeries, write_ct_series


@pytest.fixture(scope="module")
def series(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> CtSeries:
    return write_ct_series(shared_data / "ct_nifti" / "example_ct.nii.gz", tmp_path_factory.mktemp("ct") / "series")


@pytest.fixture(scope="module")
def volume(series: CtSeries) -> LoadedVolume:
    return load_volume(series.folder)


def _copy(series: CtSeries, target: Path) -> list[Path]:
    """A copy of the series folder; the copied files in slice order k."""
    shutil.copytree(series.folder, target)
    return [target / path.name for path in series.files]


def _raises(error: type[ImageReadError], call, *args, **kw) -> ImageReadError:
    with pytest.raises(ImageReadError) as info:
        call(*args, **kw)
    exc = info.value
    assert type(exc) is error, f"{type(exc).__name__}: {exc}"
    assert str(exc) == f"{exc.path}: {exc.cause}" and exc.cause
    return exc


def test_series_voxels_and_affine_are_the_niftis(series: CtSeries, volume: LoadedVolume) -> None:
    names = [path.name for path in series.files]
    assert names != sorted(names)  # shuffled: the order must come from the positions
    numbers = [int(pydicom.dcmread(p, stop_before_pixels=True).InstanceNumber) for p in series.files]
    assert numbers != sorted(numbers)
    assert volume.shape == series.voxels.shape == (122, 101, 112)  # (Columns, Rows, slices) = NIfTI (I, J, K)
    np.testing.assert_array_equal(volume.data, series.voxels)  # per-slice slope/intercept applied: exact HU
    np.testing.assert_allclose(volume.affine, series.affine, atol=1e-3)
    np.testing.assert_allclose(volume.voxel_size, (3.0, 3.0, 3.0), atol=1e-3)  # not SliceThickness (5.0)
    meta = volume.metadata
    assert (meta.format, meta.modality, meta.series_uid, meta.frame_count) == ("dicom", "CT", series.series_uid, 112)
    assert meta.source == str(series.folder) and meta.sop_instance_uid is None
    assert meta.extra["files"] == [str(p) for p in series.files]  # slice order k
    assert (meta.patient_sex, meta.patient_age, meta.spacing) == ("F", 63.0, (3.0, 3.0))


def test_file_list_in_any_order_and_folder_entry_points_agree(series: CtSeries, volume: LoadedVolume,
                                                              shared_data: Path) -> None:
    shuffled = [series.files[k] for k in np.random.default_rng(7).permutation(len(series.files))]
    from_list = load_dicom_series(shuffled)
    np.testing.assert_array_equal(from_list.data, volume.data)
    np.testing.assert_array_equal(from_list.affine, volume.affine)
    assert list_dicom_series(series.folder) == {series.series_uid: sorted(series.files)}
    assert isinstance(load_any(series.folder), LoadedVolume)
    nifti_middle = load_image(shared_data / "ct_nifti" / "example_ct.nii.gz")
    series_middle = load_image(series.folder)  # a folder displays like a NIfTI: middle axial, radiological
    np.testing.assert_array_equal(series_middle.raw, nifti_middle.raw)
    np.testing.assert_array_equal(series_middle.pixels, nifti_middle.pixels)


def test_simpleitk_reads_the_same_series(series: CtSeries, volume: LoadedVolume) -> None:
    """Independent reference: ITK's GDCM series reader gives the same voxels and LPS geometry."""
    sitk = pytest.importorskip("SimpleITK")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(series.folder)))
    image = reader.Execute()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image).transpose(2, 1, 0), volume.data)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    itk_lps = np.eye(4)
    itk_lps[:3, :3], itk_lps[:3, 3] = direction * np.array(image.GetSpacing()), image.GetOrigin()
    np.testing.assert_allclose(np.diag([-1.0, -1.0, 1.0, 1.0]) @ itk_lps, volume.affine, atol=1e-3)


def test_series_layout_is_the_loaders_slice_order_from_headers(series: CtSeries, volume: LoadedVolume,
                                                               tmp_path: Path) -> None:
    layout = series_layout(series.folder, series_uid=series.series_uid)
    assert layout.files == [Path(p) for p in volume.metadata.extra["files"]] == series.files
    assert layout.shape == volume.shape and np.array_equal(layout.affine, volume.affine)
    assert [h.SOPInstanceUID for h in layout.headers] == volume.metadata.extra["sop_instance_uids"]
    assert all("PixelData" not in h for h in layout.headers)
    files = _copy(series, tmp_path / "gap")
    files[56].unlink()
    exc = _raises(CorruptImageError, series_layout, tmp_path / "gap")
    assert exc.path == str(files[57]) and "missing slice" in exc.cause


def test_folder_with_two_series_needs_a_series_uid(series: CtSeries, shared_data: Path, tmp_path: Path) -> None:
    folder = tmp_path / "two"
    _copy(series, folder)
    other = write_ct_series(shared_data / "ct_nifti" / "example_ct.nii.gz", folder, seed=1, prefix="B")
    (folder / "README.txt").write_text("not DICOM: skipped")
    exc = _raises(SeriesSelectionError, load_volume, folder)
    assert exc.path == str(folder) and set(exc.series_uids) == {series.series_uid, other.series_uid}
    assert series.series_uid in exc.cause and other.series_uid in exc.cause
    assert pickle.loads(pickle.dumps(exc)).series_uids == exc.series_uids
    picked = load_volume(folder, series_uid=other.series_uid)
    assert picked.metadata.series_uid == other.series_uid and picked.shape == (122, 101, 112)
    assert picked.metadata.extra["files"] == [str(p) for p in other.files]
    missing = _raises(SeriesSelectionError, load_volume, folder, series_uid="1.2.3.4")
    assert "1.2.3.4" in missing.cause and series.series_uid in missing.cause
    mixed = _raises(SeriesSelectionError, load_dicom_series, [series.files[0], other.files[1]])
    assert mixed.path in (str(series.files[0]), str(other.files[1]))


def test_missing_middle_slice_is_non_uniform_spacing(series: CtSeries, tmp_path: Path) -> None:
    files = _copy(series, tmp_path / "gap")
    files[56].unlink()
    exc = _raises(CorruptImageError, load_volume, tmp_path / "gap")
    assert exc.path == str(files[57]) and files[55].name in exc.cause and "missing slice" in exc.cause
    assert "6.000 mm" in exc.cause and "3.000 mm" in exc.cause


def test_slice_with_different_rows(series: CtSeries, tmp_path: Path) -> None:
    files = _copy(series, tmp_path / "rows")
    ds = pydicom.dcmread(files[30])
    ds.PixelData = ds.pixel_array[:-1].tobytes()
    ds.Rows = ds.Rows - 1
    ds.save_as(files[30])
    exc = _raises(CorruptImageError, load_dicom_series, files)
    assert exc.path == str(files[30]) and "100 x 122" in exc.cause and "101 x 122" in exc.cause


def test_duplicated_position(series: CtSeries, tmp_path: Path) -> None:
    files = _copy(series, tmp_path / "dup")
    ds = pydicom.dcmread(files[11])
    ds.ImagePositionPatient = pydicom.dcmread(files[10], stop_before_pixels=True).ImagePositionPatient
    ds.save_as(files[11])
    exc = _raises(CorruptImageError, load_volume, tmp_path / "dup")
    assert exc.path in (str(files[10]), str(files[11])) and "duplicate slice" in exc.cause
    other = files[11] if exc.path == str(files[10]) else files[10]
    assert other.name in exc.cause


def test_other_orientation_missing_position_and_non_dicom_files(series: CtSeries, tmp_path: Path) -> None:
    files = _copy(series, tmp_path / "bad")
    ds = pydicom.dcmread(files[5])
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "0", "-1"]  # a coronal slice in an axial series
    ds.save_as(files[5])
    exc = _raises(CorruptImageError, load_dicom_series, files)
    assert exc.path == str(files[5]) and "Orientation" in exc.cause
    del ds.ImagePositionPatient
    ds.save_as(files[5])
    exc = _raises(UnsupportedFormatError, load_dicom_series, files)
    assert exc.path == str(files[5]) and "Position" in exc.cause
    notes = tmp_path / "notes.txt"
    notes.write_text("a text file")
    exc = _raises(UnsupportedFormatError, load_dicom_series, [*series.files, notes])
    assert exc.path == str(notes)
    garbage = tmp_path / "bad" / "broken.dcm"
    shutil.copyfile(series.files[0], files[5])
    garbage.write_text("claims to be DICOM")  # in a folder, a *.dcm that is not DICOM is an error, not skipped
    exc = _raises(UnsupportedFormatError, load_volume, tmp_path / "bad")
    assert exc.path == str(garbage)


def test_max_voxels_checked_before_decoding(series: CtSeries) -> None:
    exc = _raises(ImageTooLargeError, load_volume, series.folder, max_voxels=122 * 101 * 112 - 1)
    assert exc.path == str(series.folder)


def test_a_single_slice_is_a_depth_one_volume(series: CtSeries, volume: LoadedVolume) -> None:
    one = load_dicom_series([series.files[40]])
    assert one.shape == (122, 101, 1)
    np.testing.assert_array_equal(one.data[:, :, 0], series.voxels[:, :, 40])
    np.testing.assert_allclose(one.affine[:, :2], volume.affine[:, :2], atol=1e-3)
    np.testing.assert_allclose(one.affine[:3, 3], (volume.affine @ [0, 0, 40, 1])[:3], atol=1e-3)
    np.testing.assert_allclose(one.affine[:3, 2], (0.0, 0.0, 5.0))  # no neighbour: Slice Thickness along the normal
