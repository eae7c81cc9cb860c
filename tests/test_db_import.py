"""Import of the real test material: NIH sample in the CXR-LT layout, lung masks, DICOM, NIfTI; bad input."""
from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from sqlalchemy import func, select

from annotations_db import rle
from annotations_db.deid import Deidentifier
from annotations_db.errors import BadCsv, ImportFailed, PathOutsideRoot, UnknownClass, UnreadableFile
from annotations_db.importers import import_cxr_lt, import_dicom, import_images, import_nifti, import_path
from annotations_db.models import Case, CaseIdentity, CaseLabel, CaseMask
from annotations_db.store import Store
from tests.db_helpers import REPO_ROOT
from tests.series_helpers import CtSeries, write_ct_series, write_enhanced_ct


@pytest.fixture()
def store(tmp_path: Path) -> Store:
    store = Store.open(f"sqlite:///{tmp_path / 'import.sqlite'}")
    yield store
    store.close()


def _count(store: Store, model: type) -> int:
    with store.read_session() as session:
        return int(session.scalar(select(func.count()).select_from(model)))


def _nih_rows(shared_data: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(shared_data / "nih_cxr14_sample" / "labels_cxrlt2024_format.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames), list(reader)


def _write_csv(path: Path, fields: list[str], rows: list[dict[str, str]]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_nih_sample_in_cxr_lt_layout_imports_labels_and_demographics(store: Store, shared_data: Path) -> None:
    csv_path = shared_data / "nih_cxr14_sample" / "labels_cxrlt2024_format.csv"
    report = import_cxr_lt(store, csv_path, "nih", progress=False)
    fields, rows = _nih_rows(shared_data)
    assert not report.errors and len(report.imported) == len(rows) == 142
    expected_labels = sum(1 for row in rows for c in fields[6:-2] if row[c] != "")
    assert _count(store, CaseLabel) == expected_labels  # blank = not assessed = no row
    with store.read_session() as session:
        case = session.scalar(select(Case).where(Case.source_key == "00000100_000"))
        labels = {label.class_name: label.value for label in case.labels}
        assert (case.width, case.height, case.sex, case.age, case.view) == (1024, 1024, "M", 60.0, "PA")
        assert labels["Pleural Effusion"] == 1 and labels["Cardiomegaly"] == 0 and "Fracture" not in labels
        assert case.pseudo_id != "00000100_000" and "100" not in case.pseudo_id[:4]
        assert session.get(CaseIdentity, case.id).patient_id == "100"  # the mapping stays in the database
    again = import_cxr_lt(store, csv_path, "nih", progress=False)
    assert again.imported == [] and len(again.skipped) == 142  # idempotent by sha256
    assert _count(store, Case) == 142


def test_lung_images_with_masks_and_demographics_csv(store: Store, shared_data: Path) -> None:
    lungs = shared_data / "cxr_lungs"
    report = import_images(store, lungs / "images", "lungs", masks_dir=lungs / "masks",
                           mask_pattern="{stem}_lung.png", mask_name="lung",
                           demographics_csv=lungs / "metadata.csv", progress=False)
    assert not report.errors and len(report.imported) == 61 and report.rate > 0
    assert _count(store, CaseMask) == 61
    first = store.case_info(store.cases("lungs")[0])
    lung = store.reference_masks(first.pseudo_id)["lung"]
    assert lung.shape == (first.height, first.width) and lung.any()
    with open(lungs / "metadata.csv", newline="") as handle:
        meta = {row["filename"]: row for row in csv.DictReader(handle)}
    with store.read_session() as session:
        for case in session.scalars(select(Case)):
            row = meta[case.source_key]
            assert (case.width, case.height) == (int(row["width"]), int(row["height"]))
            assert case.sex == (row["sex"] or None)
            stored = rle.decode(case.masks[0].rle)
            truth = np.asarray(Image.open(lungs / row["mask"])) > 0
            assert np.array_equal(stored, truth)


def test_dicom_directory_reads_demographics_from_tags_and_keeps_identifiers_apart(store: Store,
                                                                                  shared_data: Path,
                                                                                  tmp_path: Path) -> None:
    root = tmp_path / "pacs"
    shutil.copytree(shared_data / "cxr_dicom", root / "site" / "series")
    (root / "notes.txt").write_text("not DICOM")
    report = import_dicom(store, root, "dicom", progress=False)
    assert not report.errors and len(report.imported) == 6
    with store.read_session() as session:
        cases = {Path(c.source_uri).name: c for c in session.scalars(select(Case))}
        gcp = cases["nihcxr14_gcp_DX_secondarycapture_implicitVR.dcm"]
        assert (gcp.modality, gcp.sex, gcp.age, gcp.width, gcp.height) == ("DX", "M", 81.0, 1024, 1024)
        assert session.get(CaseIdentity, gcp.id).patient_id == "Covid0000"
        nema = cases["nema_wg04_RG1_CR_chest_j2k_lossy.dcm"]
        assert (nema.width, nema.height, nema.sex) == (1841, 1955, "F")
        assert all(c.sop_instance_uid and c.series_uid for c in cases.values())


def test_ct_series_of_single_frame_files_is_one_volume_case(store: Store, shared_data: Path, tmp_path: Path) -> None:
    from annotations_db.export import copy_image
    from core_model.io import load_image, load_volume
    root = tmp_path / "pacs"
    shutil.copytree(shared_data / "cxr_dicom", root / "cxr")
    series = write_ct_series(shared_data / "ct_nifti" / "example_ct.nii.gz", root / "patient" / "ct")
    report = import_dicom(store, root, "dicom", progress=False)
    assert not report.errors and len(report.imported) == 7  # the 6 radiographs, one case each, + ONE CT volume
    with store.read_session() as session:
        volumes = list(session.scalars(select(Case).where(Case.depth.is_not(None))))
        assert len(volumes) == 1
        case = volumes[0]
        assert (case.width, case.height, case.depth) == series.voxels.shape == (122, 101, 112)
        assert (case.format, case.modality, case.series_uid, case.sop_instance_uid) == \
            ("dicom", "CT", series.series_uid, None)
        np.testing.assert_allclose(case.affine, series.affine, atol=1e-3)
        np.testing.assert_allclose(case.spacing, (3.0, 3.0, 3.0), atol=1e-3)
        assert (case.source_uri, case.source_key, case.sex, case.age) == (str(series.folder), "patient/ct", "F", 63.0)
        assert session.get(CaseIdentity, case.id).patient_id == "CT-SERIES-1"  # identifiers apart, as for files
        source, series_uid, pseudo_id = case.source_uri, case.series_uid, case.pseudo_id
        copied = copy_image(case, tmp_path)  # the de-identified export copy: one NIfTI with the case geometry
    reopened = load_volume(source, series_uid=series_uid)  # how export and the app re-open a series case
    np.testing.assert_array_equal(reopened.data, series.voxels)
    assert load_image(source, series_uid=series_uid).shape == (101, 122)  # the app's middle axial slice
    assert copied.name == f"{pseudo_id}.nii.gz"
    np.testing.assert_array_equal(np.asarray(nib.load(copied).dataobj), series.voxels)
    again = import_dicom(store, root, "dicom", progress=False)
    assert again.imported == [] and not again.errors and series.folder in again.skipped  # idempotent
    assert _count(store, Case) == 7


def test_a_mask_on_a_series_case_exports_in_the_series_geometry(store: Store, shared_data: Path,
                                                                tmp_path: Path) -> None:
    from annotations_db.export import export_masks
    from core_model.io import load_volume
    series = write_ct_series(shared_data / "ct_nifti" / "example_ct.nii.gz", tmp_path / "pacs" / "ct")
    assert len(import_dicom(store, tmp_path / "pacs", "ct", progress=False).imported) == 1
    case = store.case_info(store.cases("ct")[0])
    volume = load_volume(case.source_uri, series_uid=series.series_uid)
    mask = np.zeros(volume.slice(60).pixels.shape, np.uint8)  # a mask drawn on the displayed axial slice 60
    mask[30:60, 40:70] = 1
    reader = store.create_reader("ada", "pw", "admin")
    store.save_annotation(case.id, reader, {"Pneumothorax": 1}, mask=mask, slice_index=60)
    written = nib.load(export_masks(store, tmp_path / "out")["masks"][case.pseudo_id]["nifti"])
    assert written.shape == series.voxels.shape and np.allclose(written.affine, series.affine, atol=1e-3)
    assert np.array_equal(volume.volume_mask_to_slice(np.asarray(written.dataobj) > 0, 60), mask > 0)


def _ct_with_rows_flipped(nifti: Path, out: Path) -> Path:
    """The CT with its j axis reversed (same world, rows run the other way): i x j then points to the feet, so the
    series loads with k descending in z, the reverse of this NIfTI's order."""
    image = nib.load(str(nifti))
    flip = np.diag([1.0, -1.0, 1.0, 1.0])
    flip[1, 3] = image.shape[1] - 1
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj)[:, ::-1, :], image.affine @ flip), str(out))
    return out


def _lung_mask_on(shared_data: Path, shape: tuple[int, int, int], affine: np.ndarray) -> np.ndarray:
    """The real lung mask carried onto a case's voxel grid (the CT's grid up to axis flips: an exact index map), plus
    a block low in the volume."""
    lung = nib.load(str(shared_data / "ct_nifti" / "example_ct_lung_mask.nii.gz"))
    mask = (_carried(np.asarray(lung.dataobj), lung.affine, shape, affine) > 0).astype(np.uint8)
    mask[10:30, 5:15, 3:6] = 1  # off-centre in-plane, at three slices: a wrong transpose or order shows
    return mask


def _carried(data: np.ndarray, data_affine: np.ndarray, shape: tuple[int, int, int], affine: np.ndarray) -> np.ndarray:
    """``data`` (voxel -> RAS+ by ``data_affine``) on the grid ``shape``/``affine``, which must be the same grid up
    to axis flips and order (an exact index map)."""
    to_data = np.linalg.inv(data_affine) @ affine
    assert np.allclose(to_data, np.round(to_data), atol=1e-3)
    voxels = np.vstack([np.indices(shape).reshape(3, -1), np.ones((1, int(np.prod(shape))))])
    i, j, k = np.round(to_data @ voxels).astype(int)[:3]
    return data[i, j, k].reshape(shape)


def _seg_frames(path: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(referenced source SOP Instance UID, Image Position (Patient), decoded frame) of each frame of a SEG."""
    import highdicom as hd
    seg = hd.seg.segread(str(path))
    pixels = seg.pixel_array.reshape(int(seg.NumberOfFrames), int(seg.Rows), int(seg.Columns))
    frames = []
    for n, group in enumerate(seg.PerFrameFunctionalGroupsSequence):
        sources = group.DerivationImageSequence[0].SourceImageSequence
        assert len(sources) == 1
        position = np.array([float(v) for v in group.PlanePositionSequence[0].ImagePositionPatient])
        frames.append((str(sources[0].ReferencedSOPInstanceUID), position, pixels[n]))
    return frames


def _assert_seg_is_the_nifti_mask(seg_path: Path, slice_files: list[Path], nifti_path: Path,
                                  uids: dict[str, str]) -> None:
    """Each SEG frame references one slice (by its de-identified UID: ``uids`` is the export's source → new UID map),
    at that slice's position, and equals the exported NIfTI mask's plane at that position (k from the NIfTI affine;
    frame rows = j, columns = i, checked on the SEG's orientation)."""
    import highdicom as hd
    import pydicom
    nifti_mask = nib.load(str(nifti_path))
    exported = np.asarray(nifti_mask.dataobj)
    lps_to_voxel = np.linalg.inv(nifti_mask.affine) @ np.diag([-1.0, -1.0, 1.0, 1.0])
    slices = {uids[str(ds.SOPInstanceUID)]: ds
              for ds in (pydicom.dcmread(p, stop_before_pixels=True) for p in slice_files)}
    frames = _seg_frames(seg_path)
    assert len(frames) == len(slices) == exported.shape[2]  # empty frames kept
    assert sorted(uid for uid, _, _ in frames) == sorted(slices)  # every slice referenced exactly once
    seen = set()
    for uid, position, frame in frames:
        source = slices[uid]
        np.testing.assert_allclose(position, [float(v) for v in source.ImagePositionPatient], atol=1e-3)
        i, j, k = (lps_to_voxel @ [*position, 1.0])[:3]  # the slice's first pixel, in the exported NIfTI's voxels
        assert abs(i) < 1e-3 and abs(j) < 1e-3 and abs(k - round(k)) < 1e-3
        seen.add(round(k))
        assert frame.shape == (source.Rows, source.Columns) == exported.shape[1::-1]
        assert np.array_equal(frame, exported[:, :, round(k)].T), f"frame of slice k={round(k)}"
    assert seen == set(range(exported.shape[2]))
    seg = hd.seg.segread(str(seg_path))
    cosines = np.array([float(v) for v in seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0]
                        .ImageOrientationPatient]).reshape(2, 3)
    steps = np.diag([-1.0, -1.0, 1.0]) @ nifti_mask.affine[:3, :2]  # LPS mm per column (i) and per row (j)
    np.testing.assert_allclose(cosines, (steps / np.linalg.norm(steps, axis=0)).T, atol=1e-5)


@pytest.mark.parametrize("rows_flipped", [False, True], ids=["k-up", "k-down"])
def test_a_series_case_exports_a_dicom_seg_with_one_frame_per_slice(store: Store, shared_data: Path, tmp_path: Path,
                                                                   rows_flipped: bool) -> None:
    import highdicom as hd
    from annotations_db.export import export_masks
    nifti = shared_data / "ct_nifti" / "example_ct.nii.gz"
    if rows_flipped:
        nifti = _ct_with_rows_flipped(nifti, tmp_path / "flipped.nii.gz")
    series = write_ct_series(nifti, tmp_path / "pacs" / "ct")
    assert len(import_dicom(store, tmp_path / "pacs", "ct", progress=False).imported) == 1
    case = store.case_info(store.cases("ct")[0])
    with store.read_session() as session:
        affine = np.asarray(session.get(Case, case.id).affine)  # the case's voxel order, as imported
    assert (affine[2, 2] < 0) == rows_flipped  # k-down: the volume's k runs head to feet, against the file's NIfTI
    mask = _lung_mask_on(shared_data, (case.width, case.height, case.depth), affine)
    assert int(mask.sum()) == 4226 + 600 and mask[:, :, :100].any() and not mask[:, :, 50].any()
    store.save_annotation(case.id, store.create_reader("ada", "pw", "admin"), {"Pneumothorax": 1}, mask=mask)
    deid = Deidentifier()
    files = export_masks(store, tmp_path / "out", formats=("nifti", "dicom-seg"), deid=deid)["masks"][case.pseudo_id]
    assert np.array_equal(np.asarray(nib.load(files["nifti"]).dataobj), mask)
    _assert_seg_is_the_nifti_mask(Path(files["dicom-seg"]), series.files, Path(files["nifti"]), deid.uids.mapping)
    seg = hd.seg.segread(files["dicom-seg"])
    assert (seg.SegmentationType, seg.Modality) == ("BINARY", "SEG") and seg.SeriesInstanceUID != series.series_uid
    assert str(seg.PatientName) == f"{case.pseudo_id}^" and seg.PatientID == case.pseudo_id
    assert seg.get("PatientBirthDate", "") == "" and seg.PatientIdentityRemoved == "YES"
    blob = Path(files["dicom-seg"]).read_bytes()
    assert not any(identifier in blob for identifier in (b"Doe", b"CT-SERIES-1", b"19600101"))


def test_a_multiframe_ct_case_exports_a_dicom_seg_over_its_frames(store: Store, shared_data: Path,
                                                                  tmp_path: Path) -> None:
    """One enhanced (multi-frame) CT file is one volume case; its DICOM-SEG frame n references source frame n + 1,
    lies at that frame's plane position and equals the exported NIfTI mask there."""
    import highdicom as hd
    import pydicom
    from annotations_db.export import export_masks
    from core_model.io import load_volume
    series = write_ct_series(shared_data / "ct_nifti" / "example_ct.nii.gz", tmp_path / "slices")
    source = write_enhanced_ct(series, tmp_path / "pacs" / "ct" / "enhanced.dcm")
    assert len(import_dicom(store, tmp_path / "pacs", "ct", progress=False).imported) == 1
    case = store.case_info(store.cases("ct")[0])
    with store.read_session() as session:
        affine = np.asarray(session.get(Case, case.id).affine)
    assert (case.width, case.height, case.depth) == series.voxels.shape
    volume = load_volume(source)  # per-frame positions and rescale values read from the functional groups
    np.testing.assert_allclose(volume.affine, affine, atol=1e-3)
    assert np.array_equal(volume.data, _carried(series.voxels, series.affine, volume.data.shape, volume.affine))
    mask = _lung_mask_on(shared_data, (case.width, case.height, case.depth), affine)
    store.save_annotation(case.id, store.create_reader("ada", "pw", "admin"), {"Pneumothorax": 1}, mask=mask)
    deid = Deidentifier()
    files = export_masks(store, tmp_path / "out", formats=("nifti", "dicom-seg"), deid=deid)["masks"][case.pseudo_id]
    nifti = nib.load(files["nifti"])
    exported = np.asarray(nifti.dataobj)
    assert np.array_equal(exported, mask)
    lps_to_voxel = np.linalg.inv(nifti.affine) @ np.diag([-1.0, -1.0, 1.0, 1.0])
    seg = hd.seg.segread(files["dicom-seg"])
    pixels = seg.pixel_array.reshape(int(seg.NumberOfFrames), int(seg.Rows), int(seg.Columns))
    enhanced = pydicom.dcmread(source, stop_before_pixels=True)
    assert len(pixels) == int(enhanced.NumberOfFrames) == case.depth  # empty frames kept
    for n, group in enumerate(seg.PerFrameFunctionalGroupsSequence):
        reference = group.DerivationImageSequence[0].SourceImageSequence[0]
        assert (reference.ReferencedSOPInstanceUID, int(reference.ReferencedFrameNumber)) == \
            (deid.uids.mapping[enhanced.SOPInstanceUID], n + 1)
        position = [float(v) for v in group.PlanePositionSequence[0].ImagePositionPatient]
        source_position = enhanced.PerFrameFunctionalGroupsSequence[n].PlanePositionSequence[0].ImagePositionPatient
        np.testing.assert_allclose(position, [float(v) for v in source_position], atol=1e-3)
        i, j, k = (lps_to_voxel @ [*position, 1.0])[:3]
        assert abs(i) < 1e-3 and abs(j) < 1e-3 and abs(k - n) < 1e-3  # frame n is the volume's slice k = n
        assert np.array_equal(pixels[n], exported[:, :, n].T), f"frame {n}"
    assert seg.PatientID == case.pseudo_id and seg.PatientIdentityRemoved == "YES"
    assert not any(identifier in Path(files["dicom-seg"]).read_bytes()
                   for identifier in (b"Doe", b"CT-SERIES-1", b"19600101"))


def test_a_multiframe_file_changed_since_import_gives_an_export_error_naming_the_case(store: Store, shared_data: Path,
                                                                                     tmp_path: Path) -> None:
    from annotations_db.errors import ExportError
    from annotations_db.export import export_masks
    series = write_ct_series(shared_data / "ct_nifti" / "example_ct.nii.gz", tmp_path / "slices")
    source = write_enhanced_ct(series, tmp_path / "pacs" / "ct" / "enhanced.dcm")
    assert len(import_dicom(store, tmp_path / "pacs", "ct", progress=False).imported) == 1
    case = store.case_info(store.cases("ct")[0])
    store.save_annotation(case.id, store.create_reader("ada", "pw", "admin"), {"Pneumothorax": 1},
                          mask=np.ones((case.width, case.height, case.depth), np.uint8))
    shorter = CtSeries(series.folder, series.files[:-1], series.series_uid, series.voxels, series.affine)
    write_enhanced_ct(shorter, source)  # one frame fewer, same path
    with pytest.raises(ExportError, match=rf"case {case.pseudo_id}: its DICOM file now has {case.depth - 1} frame"):
        export_masks(store, tmp_path / "out", formats=("dicom-seg",))


def _annotated_ct_series(store: Store, shared_data: Path, tmp_path: Path):
    """The CT written as a folder of single-frame slices, imported as one case, with a box mask saved by a reader."""
    series = write_ct_series(shared_data / "ct_nifti" / "example_ct.nii.gz", tmp_path / "pacs" / "ct")
    assert len(import_dicom(store, tmp_path / "pacs", "ct", progress=False).imported) == 1
    case = store.case_info(store.cases("ct")[0])
    mask = np.zeros((case.width, case.height, case.depth), np.uint8)
    mask[20:40, 30:50, 50:60] = 1
    reader = store.create_reader("ada", "pw", "admin")
    store.save_annotation(case.id, reader, {"Pneumothorax": 1}, mask=mask)
    return series, case, mask, reader


def test_a_series_folder_missing_a_slice_gives_an_export_error_naming_the_case(store: Store, shared_data: Path,
                                                                               tmp_path: Path) -> None:
    from annotations_db.errors import ExportError
    from annotations_db.export import export_masks
    series, case, mask, reader = _annotated_ct_series(store, shared_data, tmp_path)
    for k, cause in ((56, "missing slice"), (0, "now has 111 slice(s)")):  # a gap; one end gone (spacing still even)
        kept = series.files[k].read_bytes()
        series.files[k].unlink()
        with pytest.raises(ExportError, match=case.pseudo_id) as error:
            export_masks(store, tmp_path / f"out{k}", formats=("dicom-seg",))
        assert cause in str(error.value)
        series.files[k].write_bytes(kept)
    assert Path(export_masks(store, tmp_path / "ok", formats=("dicom-seg",))["masks"][case.pseudo_id]["dicom-seg"]
                ).exists()
    store.save_annotation(case.id, reader, {"Pneumothorax": 1}, mask=mask[:, :, 55].T, slice_index=55)
    series.files[56].unlink()  # a mask drawn on one slice needs the series re-opened: the same typed error
    with pytest.raises(ExportError, match=f"case {case.pseudo_id}: .*missing slice"):
        export_masks(store, tmp_path / "out2d", formats=("nifti",))


def test_a_moved_series_folder_gives_an_export_error_naming_the_case_not_a_silent_gap(store: Store, shared_data: Path,
                                                                                       tmp_path: Path) -> None:
    from annotations_db.errors import ExportError
    from annotations_db.export import export_masks, export_training
    series, case, _, _ = _annotated_ct_series(store, shared_data, tmp_path)
    series.folder.rename(tmp_path / "pacs" / "moved")
    with pytest.raises(ExportError, match=f"case {case.pseudo_id}: .*no longer exists"):
        export_masks(store, tmp_path / "masks", formats=("nifti", "dicom-seg"))
    with pytest.raises(ExportError, match=f"case {case.pseudo_id}: .*no longer exists"):
        export_training(store, tmp_path / "training", formats=("nifti",))
    (tmp_path / "pacs" / "moved").rename(series.folder)  # back in place: the same export now succeeds
    files = export_masks(store, tmp_path / "masks", formats=("nifti", "dicom-seg"))["masks"][case.pseudo_id]
    assert Path(files["dicom-seg"]).is_file() and Path(files["nifti"]).is_file()


def test_two_series_in_one_folder_are_two_cases_and_a_broken_series_is_reported(store: Store, shared_data: Path,
                                                                                tmp_path: Path) -> None:
    from core_model.io import load_volume
    nifti = shared_data / "ct_nifti" / "example_ct.nii.gz"
    first = write_ct_series(nifti, tmp_path / "pacs" / "mixed", seed=1, prefix="A")
    second = write_ct_series(nifti, tmp_path / "pacs" / "mixed", seed=2, prefix="B")
    broken = write_ct_series(nifti, tmp_path / "pacs" / "broken", seed=3)
    broken.files[60].unlink()
    report = import_dicom(store, tmp_path / "pacs", "ct", progress=False)
    assert len(report.imported) == 2 and len(report.errors) == 1
    error = report.errors[0]
    assert isinstance(error, UnreadableFile) and error.path == broken.files[61] and "missing slice" in error.cause
    with store.read_session() as session:
        cases = {c.series_uid: c for c in session.scalars(select(Case))}
        assert set(cases) == {first.series_uid, second.series_uid}
        assert {c.source_uri for c in cases.values()} == {str(first.folder)}  # one folder, told apart by series_uid
        assert {c.depth for c in cases.values()} == {112}
        assert len({c.sha256 for c in cases.values()}) == 2
    picked = load_volume(first.folder, series_uid=second.series_uid)
    assert picked.metadata.extra["files"] == [str(p) for p in second.files]
    assert import_dicom(store, tmp_path / "pacs", "ct", progress=False).imported == []


def test_nifti_volume_with_masks_keeps_the_affine(store: Store, shared_data: Path) -> None:
    report = import_nifti(store, shared_data / "ct_nifti", "ct", progress=False)
    assert not report.errors and len(report.imported) == 1
    source = nib.load(shared_data / "ct_nifti" / "example_ct.nii.gz")
    lung = np.asarray(nib.load(shared_data / "ct_nifti" / "example_ct_lung_mask.nii.gz").dataobj) > 0
    with store.read_session() as session:
        case = session.scalar(select(Case))
        assert (case.width, case.height, case.depth) == source.shape
        assert np.allclose(case.affine, source.affine)
        masks = {m.name: rle.decode(m.rle) for m in case.masks}
    assert set(masks) == {"lung_mask", "totalseg104_multilabel"}
    assert np.array_equal(masks["lung_mask"], lung)


def test_wrong_columns_unknown_classes_and_duplicates_abort_before_writing(store: Store, shared_data: Path,
                                                                           tmp_path: Path) -> None:
    fields, rows = _nih_rows(shared_data)
    image_root = shared_data / "nih_cxr14_sample"
    no_fpath = _write_csv(tmp_path / "no_fpath.csv", [f for f in fields if f != "fpath"], rows)
    with pytest.raises(BadCsv, match="fpath") as error:
        import_cxr_lt(store, no_fpath, "x", image_root=image_root, progress=False)
    assert error.value.path == no_fpath
    renamed = [("Pleural Effusionn" if f == "Pleural Effusion" else f) for f in fields]
    unknown_rows = [{("Pleural Effusionn" if k == "Pleural Effusion" else k): v for k, v in r.items()} for r in rows]
    with pytest.raises(UnknownClass, match="Pleural Effusionn"):
        import_cxr_lt(store, _write_csv(tmp_path / "unknown.csv", renamed, unknown_rows), "x",
                      image_root=image_root, progress=False)
    with pytest.raises(BadCsv, match="duplicate case"):
        import_cxr_lt(store, _write_csv(tmp_path / "dup.csv", fields, rows[:5] + rows[2:3]), "x",
                      image_root=image_root, progress=False)
    bad_value = [dict(rows[0], **{"Edema": "maybe"})] + rows[1:4]
    with pytest.raises(BadCsv, match="Edema"):
        import_cxr_lt(store, _write_csv(tmp_path / "value.csv", fields, bad_value), "x",
                      image_root=image_root, progress=False)
    assert _count(store, Case) == 0 and _count(store, CaseLabel) == 0


def test_path_traversal_and_unreadable_files_are_reported_and_skipped(store: Store, shared_data: Path,
                                                                      tmp_path: Path) -> None:
    fields, rows = _nih_rows(shared_data)
    root = tmp_path / "root"
    (root / "images").mkdir(parents=True)
    for row in rows[:4]:
        shutil.copyfile(shared_data / "nih_cxr14_sample" / row["fpath"], root / row["fpath"])
    truncated = root / "images" / "truncated.png"
    truncated.write_bytes((root / rows[0]["fpath"]).read_bytes()[:3000])
    outside = tmp_path / "secret.png"
    shutil.copyfile(root / rows[1]["fpath"], outside)
    listed = rows[:4] + [dict(rows[4], fpath="../secret.png"), dict(rows[5], fpath="images/truncated.png"),
                         dict(rows[6], fpath="/etc/passwd"), dict(rows[7], fpath="images/missing.png")]
    csv_path = _write_csv(root / "labels.csv", fields, listed)
    with pytest.raises(ImportFailed) as failed:
        import_cxr_lt(store, csv_path, "strict", strict=True, progress=False)
    assert len(failed.value.errors) == 4 and _count(store, Case) == 0  # strict: nothing written
    report = import_cxr_lt(store, csv_path, "lenient", progress=False)
    assert len(report.imported) == 4 and len(report.errors) == 4
    kinds = {type(e) for e in report.errors}
    assert kinds == {PathOutsideRoot, UnreadableFile}
    assert truncated in {e.path for e in report.errors}
    assert sum(isinstance(e, PathOutsideRoot) for e in report.errors) == 2
    by_id = {row["dicom_id"]: row for row in rows}
    with store.read_session() as session:  # every imported case is complete: all its labels came with it
        for case in session.scalars(select(Case)):
            expected = {c: int(v) for c, v in by_id[case.source_key].items() if c in fields[6:-2] and v != ""}
            assert {label.class_name: label.value for label in case.labels} == expected


def test_an_unreadable_image_in_a_folder_is_skipped_with_its_cause(store: Store, shared_data: Path,
                                                                   tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in sorted((shared_data / "cxr_lungs" / "images").iterdir())[:3]:
        shutil.copyfile(name, folder / name.name)
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.jpg").write_text("this is not a JPEG")
    report = import_path(store, folder, "imgs", progress=False)
    assert len(report.imported) == 3
    assert sorted(e.path.name for e in report.errors) == ["empty.png", "text.jpg"]
    assert all(isinstance(e, UnreadableFile) and e.cause for e in report.errors)


def test_cli_import_and_db_commands(tmp_path: Path, shared_data: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.sqlite'}"
    lungs = shared_data / "cxr_lungs"
    run = lambda *args: subprocess.run([sys.executable, "launch.py", *args], cwd=REPO_ROOT, capture_output=True,
                                       text=True, timeout=300)
    done = run("import", str(lungs / "images"), "--db", url, "--dataset", "lungs", "--masks", str(lungs / "masks"),
               "--mask-pattern", "{stem}_lung.png", "--mask-name", "lung", "--demographics",
               str(lungs / "metadata.csv"), "--no-progress")
    assert done.returncode == 0, done.stderr
    assert "61 imported" in done.stdout
    assert run("db", "create-reader", "ada", "--password", "pw", "--role", "admin", "--db", url).returncode == 0
    assert run("db", "create-reader", "rui", "--password", "pw", "--db", url).returncode == 0
    made = run("db", "create-study", "pilot", "--readers", "ada,rui", "--dataset", "lungs", "--db", url)
    assert made.returncode == 0, made.stderr
    stats = run("db", "stats", "--db", url)
    assert '"assignments": 244' in stats.stdout
    bad = run("import", str(tmp_path / "nowhere"), "--db", url)
    assert bad.returncode == 2 and "nowhere" in bad.stderr


def test_cxr_lt_csv_with_a_separate_demographics_csv(store: Store, shared_data: Path, tmp_path: Path) -> None:
    fields, rows = _nih_rows(shared_data)
    labels_only = [f for f in fields if f not in ("PatientAge", "PatientSex")]
    csv_path = _write_csv(tmp_path / "train_labeled.csv", labels_only, rows[:10])
    demographics = shared_data / "nih_cxr14_sample" / "Data_Entry_2017_v2020_subset.csv"
    report = import_cxr_lt(store, csv_path, "nih", image_root=shared_data / "nih_cxr14_sample",
                           demographics_csv=demographics, progress=False)
    assert len(report.imported) == 10 and not report.errors
    with open(demographics, newline="") as handle:
        truth = {row["Image Index"]: row for row in csv.DictReader(handle)}
    with store.read_session() as session:
        for case in session.scalars(select(Case)):
            row = truth[Path(case.source_uri).name]
            assert case.sex == row["Patient Gender"] and case.age == float(row["Patient Age"])
    with pytest.raises(BadCsv, match="none of the columns"):
        import_cxr_lt(store, csv_path, "nih", image_root=shared_data / "nih_cxr14_sample",
                      demographics_csv=shared_data / "cxr_lt_2024" / "train_labeled_TEMPLATE_header_only.csv",
                      progress=False)
