"""core_model.io on the real data in shared/data: DICOM (4 codecs, MONOCHROME1/2), PNG/JPEG, NIfTI CT + masks."""
from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from core_model.errors import ImageReadError, MaskShapeError
from core_model.io import (
    WINDOW_PRESETS,
    LoadedImage,
    LoadedVolume,
    apply_window,
    load_any,
    load_image,
    load_mask,
    load_volume,
    parse_age,
    sha256_file,
)

MONO1_REAL = ["gdcm_CR-MONO1-10-chest.dcm", "nema_wg04_RG1_CR_chest_j2k_lossy.dcm",
              "nema_wg04_RG1_CR_chest_jpegls_nearlossless.dcm"]
MONO2 = ["nihcxr14_gcp_DX_secondarycapture_implicitVR.dcm", "siim_nihcxr14_CR_chest_PA_jpegbaseline.dcm"]
LIVER, SPLEEN, AORTA = 5, 1, 7
VERTEBRAE = range(18, 42)  # TotalSegmentator v1: vertebrae_L5 .. vertebrae_C1


def _inventory(shared_data: Path) -> dict[str, dict[str, str]]:
    with open(shared_data / "cxr_dicom" / "dicom_inventory.csv", newline="") as fh:
        return {row["file"]: row for row in csv.DictReader(fh)}


def _lung_and_mediastinum(pixels: np.ndarray) -> tuple[float, float]:
    """Mean of the two central lung fields and of the mediastinum strip between them, on a PA chest film (H, W)."""
    h, w = pixels.shape
    rows = slice(int(0.3 * h), int(0.6 * h))
    lungs = np.r_[pixels[rows, int(0.2 * w):int(0.35 * w)].ravel(), pixels[rows, int(0.65 * w):int(0.8 * w)].ravel()]
    return float(lungs.mean()), float(pixels[rows, int(0.45 * w):int(0.55 * w)].mean())


@pytest.fixture(scope="module")
def ct(shared_data: Path) -> LoadedVolume:
    return load_volume(shared_data / "ct_nifti" / "example_ct.nii.gz")


@pytest.fixture(scope="module")
def nih_png(shared_data: Path) -> Path:
    for path in sorted((shared_data / "nih_cxr14_sample" / "images").glob("*.png")):
        if Image.open(path).mode == "L":
            return path
    raise AssertionError("no 8-bit NIH PNG")


# ---------------------------------------------------------------- DICOM

def test_every_dicom_loads_as_inventoried(shared_data: Path) -> None:
    inventory = _inventory(shared_data)
    assert len(inventory) == 6
    for name, row in inventory.items():
        image = load_image(shared_data / "cxr_dicom" / name)
        assert image.shape == (int(row["rows"]), int(row["cols"])), name
        assert image.pixels.dtype == np.float32 and image.raw is not None and image.raw.shape == image.shape
        assert 0.0 <= image.pixels.min() and image.pixels.max() <= 1.0 and image.pixels.std() > 0.05, name
        low, high = (float(v) for v in row["pixel_range"].strip("()").split(","))
        assert (image.raw.min(), image.raw.max()) == (low, high), name  # no rescale in these files: raw = stored
        meta = image.metadata
        assert meta.format == "dicom" and meta.modality == row["modality"]
        assert meta.photometric == row["photometric"] and meta.bits_stored == int(row["bits_stored"])
        assert meta.frame_index == 0 and meta.frame_count == 1


@pytest.mark.parametrize("name", MONO1_REAL + MONO2)
def test_lungs_are_dark_for_monochrome1_and_2(shared_data: Path, name: str) -> None:
    image = load_image(shared_data / "cxr_dicom" / name)
    lung, mediastinum = _lung_and_mediastinum(image.pixels)
    assert lung < mediastinum - 0.2, (name, lung, mediastinum)
    raw_lung, raw_mediastinum = _lung_and_mediastinum(image.raw)
    if name in MONO1_REAL:  # stored values are bright-for-air: the loader had to invert
        assert raw_lung > raw_mediastinum
    else:
        assert raw_lung < raw_mediastinum


def test_header_only_monochrome1_file_is_the_exact_inverse(shared_data: Path) -> None:
    """torchxrayvision's synthetic file: the SAME pixels as the MONOCHROME2 file with the header set to MONOCHROME1.
    Honouring the header must give exactly the inverted display (this is what a viewer shows for it)."""
    mono2 = load_image(shared_data / "cxr_dicom" / "siim_nihcxr14_CR_chest_PA_jpegbaseline.dcm")
    mono1 = load_image(shared_data / "cxr_dicom" / "siim_nihcxr14_CR_chest_PA_header_set_MONOCHROME1_MODIFIED.dcm")
    np.testing.assert_array_equal(mono1.raw, mono2.raw)
    np.testing.assert_allclose(mono1.pixels, 1.0 - mono2.pixels, atol=1e-6)


def test_jpeg2000_and_jpegls_decode_the_same_image(shared_data: Path) -> None:
    j2k = load_image(shared_data / "cxr_dicom" / "nema_wg04_RG1_CR_chest_j2k_lossy.dcm")
    jls = load_image(shared_data / "cxr_dicom" / "nema_wg04_RG1_CR_chest_jpegls_nearlossless.dcm")
    assert j2k.metadata.extra["transfer_syntax"] == "1.2.840.10008.1.2.4.91"
    assert jls.metadata.extra["transfer_syntax"] == "1.2.840.10008.1.2.4.81"
    assert np.corrcoef(j2k.raw.ravel(), jls.raw.ravel())[0, 1] > 0.99
    assert np.median(np.abs(j2k.raw - jls.raw)) < 0.01 * (jls.raw.max() - jls.raw.min())
    assert j2k.metadata.window == (15000.0, 30000.0) and j2k.metadata.extra["voi_source"] == "window_tags"


def test_dicom_tags(shared_data: Path) -> None:
    folder = shared_data / "cxr_dicom"
    siim = load_image(folder / "siim_nihcxr14_CR_chest_PA_jpegbaseline.dcm").metadata
    header = pydicom.dcmread(folder / "siim_nihcxr14_CR_chest_PA_jpegbaseline.dcm", stop_before_pixels=True)
    assert (siim.patient_sex, siim.patient_age, siim.spacing) == ("M", 62.0, (0.168, 0.168))
    assert siim.study_uid == header.StudyInstanceUID and siim.series_uid == header.SeriesInstanceUID
    assert siim.sop_instance_uid == header.SOPInstanceUID and siim.sop_class_uid == header.SOPClassUID
    assert siim.extra["view_position"] == "PA" and siim.extra["body_part"] == "CHEST"
    assert siim.patient_id == header.PatientID
    dx = load_image(folder / "nihcxr14_gcp_DX_secondarycapture_implicitVR.dcm").metadata
    assert (dx.patient_sex, dx.patient_age, dx.modality, dx.spacing) == ("M", 81.0, "DX", None)
    assert dx.extra["voi_source"] == "minmax"  # no window tags, 8 bits: plain min–max
    nema = load_image(folder / "nema_wg04_RG1_CR_chest_j2k_lossy.dcm").metadata
    assert (nema.patient_sex, nema.patient_age, nema.birth_date) == ("F", None, "19400305")
    assert nema.spacing is None  # PixelSpacing is [0, 0] in the file: unknown, not zero
    gdcm = load_image(folder / "gdcm_CR-MONO1-10-chest.dcm").metadata
    assert gdcm.patient_sex is None and gdcm.study_uid == "1.2.392.200036.9125.0.199302241758.16"
    assert gdcm.window == (550.0, 1024.0)


@pytest.mark.parametrize("value, years", [("045Y", 45.0), ("006M", 0.5), ("052W", 52 * 7 / 365.25),
                                          ("003D", 3 / 365.25), ("62", 62.0), ("", None), ("abc", None), (None, None)])
def test_parse_age(value: str | None, years: float | None) -> None:
    assert parse_age(value) == (pytest.approx(years) if years is not None else None)


def test_window_override_and_presets(shared_data: Path) -> None:
    path = shared_data / "cxr_dicom" / "gdcm_CR-MONO1-10-chest.dcm"
    default = load_image(path)
    override = load_image(path, window=(550, 1024))
    np.testing.assert_array_equal(default.pixels, override.pixels)
    narrow = load_image(path, window=(500, 100))
    assert narrow.metadata.window == (500.0, 100.0) and narrow.metadata.extra["voi_source"] == "caller"
    np.testing.assert_allclose(narrow.pixels, 1.0 - apply_window(default.raw, 500, 100))
    assert set(WINDOW_PRESETS) >= {"lung", "mediastinum", "abdomen", "bone", "brain", "soft_tissue"}
    np.testing.assert_allclose(apply_window(np.array([-1350.0, -600.0, 150.0, 3000.0]), *WINDOW_PRESETS["lung"]),
                               [0.0, 0.5, 1.0, 1.0])
    with pytest.raises(ValueError):
        apply_window(np.zeros(3), 0, 0)


def _multiframe_ct_dicom(path: Path, hu: np.ndarray) -> None:
    """Write hu (frames, rows, cols) as a multi-frame uint16 DICOM with RescaleIntercept -1024."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientSex, ds.PatientAge = "CT", "O", "006M"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.NumberOfFrames, (ds.Rows, ds.Columns) = hu.shape[0], hu.shape[1:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    ds.PixelSpacing = [0.7, 0.8]
    ds.PixelData = (hu + 1024).astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_multiframe_dicom_frame_and_volume(tmp_path: Path, ct: LoadedVolume) -> None:
    hu = np.stack([ct.slice(k).raw for k in (40, 50, 60)]).astype(np.int32)  # (3, H, W) real HU
    path = tmp_path / "multiframe.dcm"
    _multiframe_ct_dicom(path, hu)
    frame = load_image(path, frame=1, window="abdomen")
    np.testing.assert_array_equal(frame.raw, hu[1])
    assert frame.metadata.window == WINDOW_PRESETS["abdomen"] and frame.metadata.frame_count == 3
    assert (frame.metadata.patient_sex, frame.metadata.patient_age, frame.metadata.spacing) == ("O", 0.5, (0.7, 0.8))
    with pytest.raises(IndexError):
        load_image(path, frame=3)
    volume = load_volume(path)
    assert volume.data.shape == (hu.shape[2], hu.shape[1], 3)  # (columns, rows, frames)
    np.testing.assert_array_equal(volume.slice(2, window="lung").raw, hu[2])  # a frame displays as stored
    np.testing.assert_allclose(volume.voxel_size[:2], (0.8, 0.7))


def test_dicom_without_preamble_or_file_meta(tmp_path: Path, shared_data: Path) -> None:
    """Files written without the 128-byte preamble (and without file meta) are sniffed and decoded the same."""
    source = shared_data / "cxr_dicom" / "gdcm_CR-MONO1-10-chest.dcm"
    reference = load_image(source)
    ds = pydicom.dcmread(source)
    ds.preamble = None
    pydicom.dcmwrite(tmp_path / "no_preamble.dcm", ds, enforce_file_format=False)
    del ds.file_meta
    pydicom.dcmwrite(tmp_path / "bare.dcm", ds, enforce_file_format=False, implicit_vr=True, little_endian=True)
    for name in ("no_preamble.dcm", "bare.dcm"):
        assert (tmp_path / name).read_bytes()[128:132] != b"DICM"
        image = load_any(tmp_path / name)
        assert isinstance(image, LoadedImage) and image.metadata.format == "dicom"
        np.testing.assert_array_equal(image.pixels, reference.pixels)


# ---------------------------------------------------------------- PNG / JPEG

def test_png_modes_give_the_same_grayscale(tmp_path: Path, nih_png: Path) -> None:
    gray = np.array(Image.open(nih_png))
    reference = load_image(nih_png)
    assert reference.raw is None and reference.metadata.bits_stored == 8 and reference.metadata.format == "png"
    np.testing.assert_array_equal(reference.to_uint8(), gray)
    alpha = np.random.default_rng(0).integers(0, 256, gray.shape, dtype=np.uint8)
    variants = {
        "rgb": Image.fromarray(np.dstack([gray] * 3)),
        "rgba": Image.fromarray(np.dstack([gray] * 3 + [alpha])),
        "la": Image.merge("LA", (Image.fromarray(gray), Image.fromarray(alpha))),
        "palette": Image.fromarray(gray).convert("P", palette=Image.Palette.ADAPTIVE, colors=256),
    }
    for name, im in variants.items():
        im.save(tmp_path / f"{name}.png")
        loaded = load_image(tmp_path / f"{name}.png")
        assert loaded.metadata.extra["pil_mode"] == im.mode
        if name == "palette":  # adaptive palette quantises; still grayscale and close
            assert np.abs(loaded.pixels - reference.pixels).mean() < 0.01
        else:
            np.testing.assert_array_equal(loaded.pixels, reference.pixels, err_msg=name)


def test_png_16bit(tmp_path: Path, nih_png: Path, shared_data: Path) -> None:
    gray = np.array(Image.open(nih_png)).astype(np.uint16)
    Image.fromarray(gray * 257).save(tmp_path / "sixteen.png")  # 8-bit values scaled to the full 16-bit range
    loaded = load_image(tmp_path / "sixteen.png")
    assert loaded.metadata.bits_stored == 16
    np.testing.assert_array_equal(loaded.raw, gray * 257)
    np.testing.assert_allclose(loaded.pixels, load_image(nih_png).pixels, atol=1e-6)
    ten_bit = load_image(shared_data / "cxr_dicom" / "gdcm_CR-MONO1-10-chest.dcm").raw.astype(np.uint16)
    Image.fromarray(ten_bit).save(tmp_path / "ten_bit.png")
    again = load_image(tmp_path / "ten_bit.png", window=(550, 1024))
    np.testing.assert_array_equal(again.raw, ten_bit)
    np.testing.assert_allclose(again.pixels, apply_window(ten_bit, 550, 1024))


def test_real_rgba_nih_png_equals_its_l_version(tmp_path: Path, shared_data: Path) -> None:
    rgba = [p for p in sorted((shared_data / "nih_cxr14_sample" / "images").glob("*.png"))
            if Image.open(p).mode == "RGBA"]
    assert rgba, "the NIH sample should hold an RGBA PNG"
    Image.open(rgba[0]).convert("L").save(tmp_path / "l_version.png")
    loaded = load_image(rgba[0])
    assert loaded.shape == (1024, 1024) and loaded.metadata.extra["pil_mode"] == "RGBA"
    np.testing.assert_array_equal(loaded.pixels, load_image(tmp_path / "l_version.png").pixels)


def test_cxr_lungs_images_and_masks(shared_data: Path) -> None:
    folder = shared_data / "cxr_lungs"
    with open(folder / "metadata.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 61
    for row in rows:
        image = load_image(folder / "images" / row["filename"])
        assert image.shape == (int(row["height"]), int(row["width"])), row["filename"]
        assert image.metadata.format == ("png" if row["filename"].endswith(".png") else "jpeg")
        mask = load_mask(folder / row["mask"], shape=image.shape)
        assert mask.dtype == bool
        assert mask.mean() == pytest.approx(float(row["lung_fraction"]), abs=1e-3), row["filename"]
    with pytest.raises(MaskShapeError) as info:
        load_mask(folder / rows[0]["mask"], shape=(10, 10))
    assert isinstance(info.value, ImageReadError) and rows[0]["mask"].split("/")[-1] in str(info.value)


def test_jpeg_mask_threshold_127(tmp_path: Path) -> None:
    values = np.array([[0, 100, 127, 128, 200, 255]] * 8, dtype=np.uint8).repeat(8, axis=1)
    Image.fromarray(values).save(tmp_path / "m.jpg", quality=100)
    Image.fromarray(values).save(tmp_path / "m.png")
    assert load_mask(tmp_path / "m.jpg")[4, ::8].tolist() == [False, False, False, True, True, True]
    assert load_mask(tmp_path / "m.png")[4, ::8].tolist() == [False, True, True, True, True, True]


def test_to_uint8_and_sha256(nih_png: Path) -> None:
    image = LoadedImage(pixels=np.array([[0.0, 0.5, 1.0]], dtype=np.float32), raw=None,
                        metadata=load_image(nih_png).metadata)
    assert image.to_uint8().tolist() == [[0, 128, 255]] and image.shape == (1, 3)
    assert sha256_file(nih_png) == hashlib.sha256(nih_png.read_bytes()).hexdigest()


# ---------------------------------------------------------------- NIfTI

def test_every_nifti_loads(shared_data: Path, ct: LoadedVolume) -> None:
    reference = nib.load(shared_data / "ct_nifti" / "example_ct.nii.gz")
    assert ct.data.shape == (122, 101, 112) and ct.data.dtype == np.float32
    assert (ct.data.min(), ct.data.max()) == (-1207.0, 3382.0)
    np.testing.assert_array_equal(ct.affine, reference.affine)
    assert ct.metadata.orientation == ("R", "A", "S") and ct.voxel_size == (3.0, 3.0, 3.0)
    for name in ("example_ct_lung_mask.nii.gz", "example_ct_totalseg104_multilabel.nii.gz"):
        volume = load_any(shared_data / "ct_nifti" / name)
        assert isinstance(volume, LoadedVolume) and volume.data.shape == ct.data.shape
        np.testing.assert_array_equal(volume.affine, ct.affine)
    middle = load_image(shared_data / "ct_nifti" / "example_ct.nii.gz")
    np.testing.assert_array_equal(middle.raw, ct.slice(56).raw)
    assert middle.metadata.window == WINDOW_PRESETS["lung"] and middle.metadata.extra["slice_index"] == 56
    assert middle.metadata.spacing == (3.0, 3.0) and middle.metadata.extra["slice_plane"] == "axial"


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_lung_mask_slice_round_trip(shared_data: Path, ct: LoadedVolume, axis: int) -> None:
    lung = load_mask(shared_data / "ct_nifti" / "example_ct_lung_mask.nii.gz", shape=ct.data.shape)
    assert lung.sum() > 1000
    rebuilt = np.zeros_like(lung)
    for index in range(ct.num_slices(axis)):
        shown = ct.volume_mask_to_slice(lung, index, axis)
        assert shown.shape == ct.slice(index, axis).shape
        back = ct.slice_mask_to_volume(shown, index, axis)
        assert not np.delete(back, index, axis=axis).any()  # only that slice is filled
        rebuilt |= back
    np.testing.assert_array_equal(rebuilt, lung)


def _world_of_display_pixel(volume: LoadedVolume, index: int, row: int, col: int) -> np.ndarray:
    """RAS mm of the voxel shown at (row, col) of axial slice ``index`` (through the inverse display transform)."""
    single = np.zeros(volume.slice(index).shape, dtype=bool)
    single[row, col] = True
    ijk = np.argwhere(volume.slice_mask_to_volume(single, index))[0]
    return (volume.affine @ np.r_[ijk, 1.0])[:3]


def test_axial_display_is_radiological(shared_data: Path, ct: LoadedVolume) -> None:
    h, w = ct.slice(60).shape
    top, bottom = _world_of_display_pixel(ct, 60, 0, w // 2), _world_of_display_pixel(ct, 60, h - 1, w // 2)
    left, right = _world_of_display_pixel(ct, 60, h // 2, 0), _world_of_display_pixel(ct, 60, h // 2, w - 1)
    assert top[1] > bottom[1]  # anterior (+y in RAS) at the top
    assert left[0] > right[0]  # patient right (+x in RAS) on the image left
    labels = load_volume(shared_data / "ct_nifti" / "example_ct_totalseg104_multilabel.nii.gz")
    index = next(k for k in range(labels.num_slices())
                 if all((labels.data[..., k] == lab).any() for lab in (LIVER, SPLEEN, AORTA))
                 and np.isin(labels.data[..., k], VERTEBRAE).any())
    shown = labels.slice(index, window=None).raw

    def centroid(mask: np.ndarray) -> np.ndarray:
        return np.argwhere(mask).mean(axis=0)  # (row, col)

    assert centroid(shown == LIVER)[1] < centroid(shown == SPLEEN)[1]  # liver (patient right) on the image left
    assert centroid(shown == AORTA)[0] < centroid(np.isin(shown, VERTEBRAE))[0]  # aorta anterior to the spine


def test_display_independent_of_voxel_order(tmp_path: Path, shared_data: Path, ct: LoadedVolume) -> None:
    """The same CT stored LPS with swapped i/j must display identically (axial slices, same physical position)."""
    original = nib.load(shared_data / "ct_nifti" / "example_ct.nii.gz")
    reoriented = original.as_reoriented(np.array([[1, -1], [0, -1], [2, 1]]))  # voxel axes: (P, L, S)
    nib.save(reoriented, tmp_path / "pls.nii.gz")
    other = load_volume(tmp_path / "pls.nii.gz")
    assert other.metadata.orientation == ("P", "L", "S") and other.data.shape == (101, 122, 112)
    np.testing.assert_array_equal(other.slice(60).raw, ct.slice(60).raw)
    np.testing.assert_array_equal(other.slice(30, axis=1).raw, ct.slice(122 - 1 - 30, axis=0).raw)  # sagittal
    lung = load_mask(shared_data / "ct_nifti" / "example_ct_lung_mask.nii.gz")
    moved = np.asarray(nib.orientations.apply_orientation(lung, [[1, -1], [0, -1], [2, 1]]))
    np.testing.assert_array_equal(other.volume_mask_to_slice(moved, 105), ct.volume_mask_to_slice(lung, 105))
