"""DICOM via pydicom (+ pylibjpeg / pyjpegls / pillow plugins) -> LoadedImage, or a stack of frames.

Pipeline per frame (PS3.3 C.11 / C.7.6.3): stored values -> modality LUT (Modality LUT Sequence or Rescale
Slope/Intercept) = ``raw`` -> VOI (caller's window, else VOI LUT Sequence, else Window Center/Width, else min–max for
<= 8 bits or 0.5–99.5 percentiles) -> [0, 1] -> inverted for MONOCHROME1 so that air is dark.
"""
from __future__ import annotations

import re
import warnings
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi, get_decoder, pixel_array
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from core_model.errors import (
    CorruptImageError,
    UnsupportedFormatError,
    UnsupportedTransferSyntaxError,
)
from core_model.io.types import (
    PathLike,
    ImageMetadata,
    LoadedImage,
    WindowArg,
    apply_window,
    auto_window,
    check_dims,
    check_finite,
    resolve_window,
    sigmoid_window,
)

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def read_dataset(path: PathLike, raw_dataset: bool = False, stop_before_pixels: bool = False) -> Dataset:
    """Parse the file (pixel bytes read, not decoded). ``raw_dataset``: no preamble/file meta, parse anyway.

    ``stop_before_pixels``: the header only (no pixel bytes read), e.g. to group and check a series before decoding.
    """
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = pydicom.dcmread(path, force=raw_dataset, stop_before_pixels=stop_before_pixels)
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError, OverflowError) as exc:
        raise CorruptImageError(path, f"cannot parse DICOM: {exc}") from exc
    except Exception as exc:  # pydicom's parser raises many kinds on garbage (struct.error, NotImplementedError, ...)
        raise CorruptImageError(path, f"cannot parse DICOM: {type(exc).__name__}: {exc}") from exc
    ended = [str(w.message) for w in caught if "end of file" in str(w.message).lower()]
    if ended or len(ds) == 0:
        raise CorruptImageError(path, f"truncated DICOM ({ended[0] if ended else 'no data elements after the header'})")
    if raw_dataset and "TransferSyntaxUID" not in ds.file_meta:
        _set_guessed_transfer_syntax(ds)
    return ds


def _set_guessed_transfer_syntax(ds: Dataset) -> None:
    """A bare data set (no file meta) was parsed with a guessed encoding; record it so native pixels can decode."""
    implicit, little = getattr(ds, "original_encoding", (None, None))
    if implicit is None:
        return
    ds.file_meta = getattr(ds, "file_meta", None) or FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = (
        ImplicitVRLittleEndian if implicit else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    )


def frame_count(ds: Dataset) -> int:
    """Number of frames (1 when Number of Frames is absent or empty)."""
    value = ds.get("NumberOfFrames")
    try:
        return int(value) if value not in (None, "") else 1
    except (TypeError, ValueError):
        return 1


def check_pixels_decodable(path: PathLike, ds: Dataset, limit: int, frames: int) -> None:
    """Header checks before decoding: pixel data present, sizes non-zero and within ``limit``, a decoder installed.

    ``frames``: how many frames will be decoded (1 for one frame, all for a volume); the limit applies to
    Rows × Columns × frames.
    """
    if not any(k in ds for k in _PIXEL_KEYWORDS):
        if "Rows" in ds or "Columns" in ds or "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
            raise CorruptImageError(path, "DICOM has image attributes or no transfer syntax, but no pixel data "
                                          "(truncated file?)")
        raise UnsupportedFormatError(path, f"DICOM object without pixel data (SOP class {ds.get('SOPClassUID', '?')})")
    rows, cols = ds.get("Rows"), ds.get("Columns")
    if rows is None or cols is None:
        raise CorruptImageError(path, "DICOM pixel data without Rows/Columns")
    check_dims(path, (int(rows), int(cols), frames), limit)
    if "PixelData" in ds:
        _check_transfer_syntax(path, ds)


def _check_transfer_syntax(path: PathLike, ds: Dataset) -> None:
    tsyntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if tsyntax is None:
        raise CorruptImageError(path, "DICOM file meta has no Transfer Syntax UID (truncated or damaged header)")
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError as exc:
        cause = f"no decoder for transfer syntax {tsyntax} ({tsyntax.name})"
        raise UnsupportedTransferSyntaxError(path, cause) from exc
    if not decoder.is_available:
        missing = "; ".join(f"{k}: {', '.join(v)}" for k, v in decoder.missing_dependencies.items()) or "none installed"
        raise UnsupportedTransferSyntaxError(
            path, f"transfer syntax {tsyntax} ({tsyntax.name}) needs a plugin that is not installed ({missing})"
        )


def decode_frame(path: PathLike, ds: Dataset, frame: int) -> np.ndarray:
    """Stored values of one frame: (Rows, Columns) or (Rows, Columns, 3) for colour (converted to RGB)."""
    try:
        arr = pixel_array(ds, index=frame)
        if ds.get("PhotometricInterpretation") == "PALETTE COLOR":
            arr = apply_color_lut(arr, ds)
    except Exception as exc:  # decoders raise ValueError, RuntimeError, OSError, ... for corrupt codestreams
        raise CorruptImageError(path, f"cannot decode DICOM pixel data (frame {frame}): {exc}") from exc
    expected = (int(ds.Rows), int(ds.Columns))
    if arr.shape[:2] != expected:
        raise CorruptImageError(path, f"decoded frame has shape {arr.shape}, header says {expected}")
    return arr


def _frame_item(ds: Dataset, frame: int, sequence: str) -> Dataset | None:
    """The functional-group item ``sequence`` for ``frame`` (per-frame first, then shared), enhanced multi-frame."""
    for groups, idx in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        items = ds.get(groups)
        found = items[idx].get(sequence) if items is not None and len(items) > idx else None
        if found:
            return found[0]
    return None


def _attr(ds: Dataset, frame: int, keyword: str, sequence: str) -> Any:
    """Top-level attribute, else from the frame's functional group ``sequence``."""
    if keyword in ds and ds[keyword].value not in (None, ""):
        return ds[keyword].value
    item = _frame_item(ds, frame, sequence)
    return None if item is None else item.get(keyword)


def _first(value: Any) -> float | None:
    """First value of a possibly multi-valued numeric DICOM attribute."""
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        value = value[0] if len(value) else None
    return None if value is None else float(value)


def modality_values(arr: np.ndarray, ds: Dataset, frame: int) -> np.ndarray:
    """Stored values -> modality values (HU for CT), float32, same shape. Colour -> luma first."""
    if arr.ndim == 3:
        arr = arr[..., 0] * 0.299 + arr[..., 1] * 0.587 + arr[..., 2] * 0.114
        return arr.astype(np.float32)
    if "ModalityLUTSequence" in ds:
        return apply_modality_lut(arr, ds).astype(np.float32)
    slope = _first(_attr(ds, frame, "RescaleSlope", "PixelValueTransformationSequence"))
    intercept = _first(_attr(ds, frame, "RescaleIntercept", "PixelValueTransformationSequence"))
    out = arr.astype(np.float32)
    if slope is not None and slope != 1.0:
        out = out * np.float32(slope)
    if intercept:
        out = out + np.float32(intercept)
    return out


def voi_values(raw: np.ndarray, stored: np.ndarray, ds: Dataset, frame: int, window: WindowArg) -> tuple:
    """Modality values (H, W) -> ([0, 1] float32 (H, W) before MONOCHROME1 inversion, applied window, source name)."""
    chosen = resolve_window(window)
    if chosen is not None:
        return apply_window(raw, *chosen), chosen, "caller"
    if "VOILUTSequence" in ds and stored.ndim == 2 and "ModalityLUTSequence" not in ds:
        return _voi_lut(stored, ds), None, "voi_lut"
    center = _first(_attr(ds, frame, "WindowCenter", "FrameVOILUTSequence"))
    width = _first(_attr(ds, frame, "WindowWidth", "FrameVOILUTSequence"))
    if center is not None and width is not None and width > 0:
        function = str(_attr(ds, frame, "VOILUTFunction", "FrameVOILUTSequence") or "LINEAR").upper()
        if function == "SIGMOID":
            return sigmoid_window(raw, center, width), (center, width), "window_tags_sigmoid"
        return apply_window(raw, center, width), (center, width), "window_tags"
    bits = int(ds.get("BitsStored") or 16)
    auto = auto_window(raw, robust=bits > 8)
    return apply_window(raw, *auto), auto, "minmax" if bits <= 8 else "percentile"


def _voi_lut(stored: np.ndarray, ds: Dataset) -> np.ndarray:
    """Apply the first VOI LUT (on modality values via pydicom) and scale its output range to [0, 1]."""
    rescaled = apply_modality_lut(stored, ds)
    out = apply_voi(rescaled, ds, index=0).astype(np.float64)
    lut = np.asarray(ds.VOILUTSequence[0].LUTData, dtype=np.float64).ravel()
    low, high = float(lut.min()), float(lut.max())
    return np.clip((out - low) / max(high - low, 1.0), 0.0, 1.0).astype(np.float32)


_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([DWMY]?)\s*$", re.IGNORECASE)
_AGE_UNIT_YEARS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0, "": 1.0}


def parse_age(value: Any) -> float | None:
    """DICOM AS ('045Y', '006M', '010W', '003D'; a bare number is years) -> years, or None."""
    match = _AGE.match(str(value or ""))
    if not match:
        return None
    return float(match.group(1)) * _AGE_UNIT_YEARS[match.group(2).upper()]


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    text = "" if value is None else str(value).strip()
    return text or None


def _spacing(ds: Dataset, frame: int) -> tuple[float, float] | None:
    """(row, col) mm from Pixel Spacing, else Imager Pixel Spacing; zeros/invalid -> None."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = _attr(ds, frame, keyword, "PixelMeasuresSequence")
        try:
            row, col = float(value[0]), float(value[1])
        except (TypeError, ValueError, IndexError):
            continue
        if row > 0 and col > 0:
            return (row, col)
    return None


def dicom_metadata(path: PathLike, ds: Dataset, frame: int, frames: int) -> ImageMetadata:
    """Everything useful from the header (identifiers included, for pseudonymisation only)."""
    sex = (_text(ds, "PatientSex") or "").upper()
    orientation = _attr(ds, frame, "ImageOrientationPatient", "PlaneOrientationSequence")
    tsyntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    extra = {
        key: _text(ds, keyword)
        for key, keyword in (
            ("view_position", "ViewPosition"), ("body_part", "BodyPartExamined"), ("study_date", "StudyDate"),
            ("study_description", "StudyDescription"), ("series_description", "SeriesDescription"),
            ("manufacturer", "Manufacturer"), ("patient_orientation", "PatientOrientation"),
            ("presentation_lut_shape", "PresentationLUTShape"),
        )
        if _text(ds, keyword)
    }
    extra["transfer_syntax"] = str(tsyntax) if tsyntax else None
    return ImageMetadata(
        source=str(path), format="dicom", modality=_text(ds, "Modality"), spacing=_spacing(ds, frame),
        patient_sex=sex if sex in ("M", "F", "O") else None, patient_age=parse_age(ds.get("PatientAge")),
        patient_id=_text(ds, "PatientID"), patient_name=_text(ds, "PatientName"),
        birth_date=_text(ds, "PatientBirthDate"),
        study_uid=_text(ds, "StudyInstanceUID"), series_uid=_text(ds, "SeriesInstanceUID"),
        sop_instance_uid=_text(ds, "SOPInstanceUID"), sop_class_uid=_text(ds, "SOPClassUID"),
        photometric=_text(ds, "PhotometricInterpretation"), bits_stored=ds.get("BitsStored"),
        frame_index=frame, frame_count=frames,
        orientation=tuple(float(v) for v in orientation) if orientation else None, extra=extra,
    )


def load_dicom(path: PathLike, *, frame: int, window: WindowArg, max_pixels: int, raw_dataset: bool) -> LoadedImage:
    """One frame of a DICOM as a LoadedImage (see module docstring for the pipeline)."""
    ds = read_dataset(path, raw_dataset)
    frames = frame_count(ds)
    check_pixels_decodable(path, ds, max_pixels, frames=1)
    if not 0 <= frame < frames:
        raise IndexError(f"{path}: frame {frame} out of range, the file has {frames} frame(s)")
    stored = decode_frame(path, ds, frame)
    check_finite(path, stored)
    raw = modality_values(stored, ds, frame)
    check_finite(path, raw)
    pixels, applied, source = voi_values(raw, stored, ds, frame, window)
    meta = dicom_metadata(path, ds, frame, frames)
    if meta.photometric == "MONOCHROME1":
        pixels = 1.0 - pixels
    meta.window = applied
    meta.extra["voi_source"] = source
    return LoadedImage(pixels=pixels.astype(np.float32), raw=raw, metadata=meta)


def load_dicom_frames(path: PathLike, *, max_voxels: int, raw_dataset: bool) -> tuple[np.ndarray, Dataset]:
    """All frames as modality values, float32 (frames, Rows, Columns), and the dataset."""
    ds = read_dataset(path, raw_dataset)
    frames = frame_count(ds)
    check_pixels_decodable(path, ds, max_voxels, frames=frames)
    stack = np.stack([modality_values(decode_frame(path, ds, f), ds, f) for f in range(frames)])
    check_finite(path, stack)
    return stack, ds
