"""Bad files: each raises its exact typed error, naming the file, before or instead of any library exception."""
from __future__ import annotations

import gzip
import pickle
import struct
import time
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image

from core_model.errors import (
    CorruptImageError,
    EmptyFileError,
    ImageReadError,
    ImageTooLargeError,
    InvalidPixelValuesError,
    UnsupportedFormatError,
    UnsupportedTransferSyntaxError,
)
from core_model.io import load_any, load_image, load_mask, load_volume

DICOM = "cxr_dicom"


def _raises(error: type[ImageReadError], path: Path, loader=load_image, **kw) -> ImageReadError:
    """Call ``loader(path)``; assert the exact error type and that the message names the file."""
    with pytest.raises(ImageReadError) as info:
        loader(path, **kw)
    exc = info.value
    assert type(exc) is error, f"{type(exc).__name__}: {exc}"
    assert exc.path == str(path) and str(exc) == f"{path}: {exc.cause}" and exc.cause
    return exc


def _cut(source: Path, target: Path, keep: float | int) -> Path:
    data = source.read_bytes()
    target.write_bytes(data[: keep if isinstance(keep, int) else int(len(data) * keep)])
    return target


def _png(width: int, height: int, bit_depth: int = 8) -> bytes:
    """A syntactically valid PNG whose IHDR claims width × height (one tiny IDAT: decoding fails, never allocates)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def _first_png(shared_data: Path) -> Path:
    return sorted((shared_data / "nih_cxr14_sample" / "images").glob("*.png"))[0]


def _first_jpg(shared_data: Path) -> Path:
    return sorted((shared_data / "cxr_lungs" / "images").glob("*.jpg"))[0]


@pytest.mark.parametrize("name", ["empty.png", "empty.dcm", "empty.nii.gz", "empty"])
def test_zero_byte_file(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_bytes(b"")
    _raises(EmptyFileError, tmp_path / name)
    _raises(EmptyFileError, tmp_path / name, loader=load_mask)


def test_missing_file_is_a_read_error(tmp_path: Path) -> None:
    exc = _raises(ImageReadError, tmp_path / "nope.png")
    assert "No such file" in exc.cause


def test_truncated_png(tmp_path: Path, shared_data: Path) -> None:
    _raises(CorruptImageError, _cut(_first_png(shared_data), tmp_path / "half.png", 0.5))
    _raises(CorruptImageError, _cut(_first_png(shared_data), tmp_path / "header_only.png", 20))  # IHDR cut
    _raises(CorruptImageError, _cut(_first_png(shared_data), tmp_path / "mask.png", 0.5), loader=load_mask)


def test_truncated_jpeg(tmp_path: Path, shared_data: Path) -> None:
    _raises(CorruptImageError, _cut(_first_jpg(shared_data), tmp_path / "half.jpg", 0.5))
    _raises(CorruptImageError, _cut(_first_jpg(shared_data), tmp_path / "start.jpg", 40))


@pytest.mark.parametrize("name", ["gdcm_CR-MONO1-10-chest.dcm", "nema_wg04_RG1_CR_chest_j2k_lossy.dcm",
                                  "nema_wg04_RG1_CR_chest_jpegls_nearlossless.dcm",
                                  "siim_nihcxr14_CR_chest_PA_jpegbaseline.dcm"])
def test_truncated_dicom_pixel_data(tmp_path: Path, shared_data: Path, name: str) -> None:
    _raises(CorruptImageError, _cut(shared_data / DICOM / name, tmp_path / name, 0.5))


def test_truncated_dicom_header(tmp_path: Path, shared_data: Path) -> None:
    source = shared_data / DICOM / "gdcm_CR-MONO1-10-chest.dcm"
    _raises(CorruptImageError, _cut(source, tmp_path / "meta_only.dcm", 200))  # inside the file meta group
    _raises(CorruptImageError, _cut(source, tmp_path / "no_pixels.dcm", 1000))  # image attributes, no pixel data


def test_text_file_named_dcm(tmp_path: Path) -> None:
    path = tmp_path / "report.dcm"
    path.write_text("Patient: anonymous\nFindings: no acute cardiopulmonary process.\n" * 10)
    exc = _raises(UnsupportedFormatError, path)
    _raises(UnsupportedFormatError, path, loader=load_volume)
    assert "not a PNG, JPEG, DICOM or NIfTI" in exc.cause


def test_other_image_format_is_unsupported(tmp_path: Path, shared_data: Path) -> None:
    Image.open(_first_png(shared_data)).save(tmp_path / "scan.png", format="TIFF")  # TIFF content, .png name
    _raises(UnsupportedFormatError, tmp_path / "scan.png")
    (tmp_path / "notes.nii.gz").write_bytes(gzip.compress(b"just some gzipped text" * 50))
    _raises(UnsupportedFormatError, tmp_path / "notes.nii.gz", loader=load_volume)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nifti_with_nan_or_inf(tmp_path: Path, shared_data: Path, bad: float) -> None:
    ct = nib.load(shared_data / "ct_nifti" / "example_ct.nii.gz")
    data = np.asarray(ct.dataobj, dtype=np.float32)
    data[60, 50, 56] = bad
    path = tmp_path / "bad.nii.gz"
    nib.save(nib.Nifti1Image(data, ct.affine), path)
    exc = _raises(InvalidPixelValuesError, path, loader=load_volume)
    assert "NaN/Inf" in exc.cause
    _raises(InvalidPixelValuesError, path, loader=load_image)


def test_truncated_nifti(tmp_path: Path, shared_data: Path) -> None:
    path = _cut(shared_data / "ct_nifti" / "example_ct.nii.gz", tmp_path / "cut.nii.gz", 0.5)
    _raises(CorruptImageError, path, loader=load_volume)
    raw = tmp_path / "cut.nii"
    raw.write_bytes(gzip.decompress((shared_data / "ct_nifti" / "example_ct.nii.gz").read_bytes())[:200_000])
    _raises(CorruptImageError, raw, loader=load_any)


def test_size_zero_png(tmp_path: Path) -> None:
    (tmp_path / "zero.png").write_bytes(_png(0, 512))
    exc = _raises(InvalidPixelValuesError, tmp_path / "zero.png")
    assert "size 0" in exc.cause


def test_size_zero_nifti_and_dicom(tmp_path: Path, shared_data: Path) -> None:
    header = nib.Nifti1Header()
    header.set_data_shape((64, 0, 10))
    header.set_data_dtype(np.int16)
    path = tmp_path / "zero.nii"
    path.write_bytes(header.binaryblock + b"\0" * 4)  # 348-byte header + 4-byte extension flag, no voxels
    _raises(InvalidPixelValuesError, path, loader=load_volume)
    ds = pydicom.dcmread(shared_data / DICOM / "gdcm_CR-MONO1-10-chest.dcm")
    ds.Rows = 0
    ds.save_as(tmp_path / "zero.dcm")
    _raises(InvalidPixelValuesError, tmp_path / "zero.dcm")


def test_png_header_claiming_huge_size_fails_fast(tmp_path: Path) -> None:
    (tmp_path / "bomb.png").write_bytes(_png(100_000, 100_000))
    start = time.perf_counter()
    exc = _raises(ImageTooLargeError, tmp_path / "bomb.png")
    assert time.perf_counter() - start < 1.0 and "10000000000" in exc.cause
    # under PIL's own bomb limit but over ours
    (tmp_path / "medium.png").write_bytes(_png(8000, 8000, bit_depth=16))
    _raises(ImageTooLargeError, tmp_path / "medium.png")
    _raises(ImageTooLargeError, tmp_path / "medium.png", loader=load_mask, max_pixels=1000)


def test_small_limit_on_real_files(shared_data: Path) -> None:
    _raises(ImageTooLargeError, _first_png(shared_data), max_pixels=1024 * 1024 - 1)
    assert load_image(_first_png(shared_data), max_pixels=1024 * 1024).shape == (1024, 1024)
    _raises(ImageTooLargeError, _first_jpg(shared_data), max_pixels=1000)
    j2k = shared_data / DICOM / "nema_wg04_RG1_CR_chest_j2k_lossy.dcm"
    _raises(ImageTooLargeError, j2k, max_pixels=1955 * 1841 - 1)
    ct = shared_data / "ct_nifti" / "example_ct.nii.gz"
    _raises(ImageTooLargeError, ct, loader=load_volume, max_voxels=122 * 101 * 112 - 1)


def test_limit_above_pil_default_is_honoured(tmp_path: Path) -> None:
    """max_pixels above PIL's own bomb limit (~179 M): our limit decides, PIL's global is restored afterwards."""
    (tmp_path / "big.png").write_bytes(_png(20_000, 10_000))  # 200 M pixels, tiny IDAT -> corrupt, not too large
    before = Image.MAX_IMAGE_PIXELS
    _raises(CorruptImageError, tmp_path / "big.png", max_pixels=300_000_000)
    assert Image.MAX_IMAGE_PIXELS == before
    _raises(ImageTooLargeError, tmp_path / "big.png")


@pytest.mark.parametrize("uid", ["1.2.840.10008.1.2.4.100",  # MPEG2 Main Profile / Main Level
                                 "1.2.840.10008.1.2.4.110"])  # JPEG XL Lossless
def test_dicom_transfer_syntax_without_decoder(tmp_path: Path, shared_data: Path, uid: str) -> None:
    """Same encapsulated JPEG bytes, relabelled. pydicom refuses to write the JPEG XL UID (unknown to it), so a known
    UID of the same encoded length (HTJ2K, .4.201) is written and then replaced in the bytes."""
    placeholder = "1.2.840.10008.1.2.4.201"
    assert len(placeholder) == len(uid)
    ds = pydicom.dcmread(shared_data / DICOM / "siim_nihcxr14_CR_chest_PA_jpegbaseline.dcm")
    ds.file_meta.TransferSyntaxUID = placeholder
    ds.save_as(tmp_path / "placeholder.dcm")
    data = (tmp_path / "placeholder.dcm").read_bytes()
    assert data.count(placeholder.encode()) == 1
    (tmp_path / "relabelled.dcm").write_bytes(data.replace(placeholder.encode(), uid.encode()))
    exc = _raises(UnsupportedTransferSyntaxError, tmp_path / "relabelled.dcm")
    assert uid in exc.cause


def test_dicom_without_pixel_data(tmp_path: Path, shared_data: Path) -> None:
    ds = pydicom.dcmread(shared_data / DICOM / "gdcm_CR-MONO1-10-chest.dcm")
    for keyword in ("PixelData", "Rows", "Columns"):
        delattr(ds, keyword)
    ds.save_as(tmp_path / "sr_like.dcm")
    _raises(UnsupportedFormatError, tmp_path / "sr_like.dcm")


def test_errors_pickle_and_format(tmp_path: Path) -> None:
    err = CorruptImageError(tmp_path / "x.png", "broken")
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is CorruptImageError and again.cause == "broken"
    assert str(again) == f"{tmp_path / 'x.png'}: broken"
