"""Label and prediction tables of chest X-ray findings, read into CXR-LT class names.

* **Labels**, two layouts: NIH ChestX-ray14 ``Data_Entry_2017`` (``Image Index``, ``Finding Labels`` with ``|``
  between labels, "No Finding" = Normal; an NIH row assesses the 15 CXR-LT classes of
  :data:`core_model.classes.NIH14_TO_CXRLT` and no other) and CXR-LT 2024 ``train_labeled.csv`` (``dicom_id``,
  optional ``fpath``, one 0/1 column per class; a blank cell = not assessed).
* **Predictions**: the CXR-LT 2024 submission layout, ``dicom_id`` + one probability column per class (the 26 Task-2
  or the 40 Task-1 classes).

Rows are keyed by image id = the file stem (``00004030_000``) or the ``dicom_id``. Every problem raises
:class:`FindingsTableError` naming the file, the row (1-based, header = row 1) and the column.
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path, PurePath

from core_model.classes import CXR_LT_40, NIH14_TO_CXRLT

ALL_CLASSES = frozenset(CXR_LT_40)


class FindingsTableError(ValueError):
    """A labels, predictions or thresholds file that cannot be used; the message names the file and the cause."""


@dataclass(frozen=True)
class LabelRow:
    """One image's reference labels: image id, the file named by the table (or None), {class: 0/1} assessed only."""
    image_id: str
    file: str | None
    labels: dict[str, int]


def read_labels(path: str | Path) -> list[LabelRow]:
    """Reference labels of either layout (told apart by the header)."""
    path = Path(path)
    header, rows = _read_csv(path)
    if "Image Index" in header and "Finding Labels" in header:
        return [_nih_row(path, n, row) for n, row in rows]
    if "dicom_id" in header:
        classes = [c for c in header if c in ALL_CLASSES]
        if not classes:
            raise FindingsTableError(f"{path}: no CXR-LT class column (expected the train_labeled.csv layout)")
        return [_cxrlt_row(path, n, row, classes) for n, row in rows]
    raise FindingsTableError(f"{path}: neither the NIH layout ('Image Index', 'Finding Labels') nor the CXR-LT "
                             "layout ('dicom_id' + class columns)")


def read_predictions(path: str | Path) -> tuple[tuple[str, ...], dict[str, dict[str, float]]]:
    """A CXR-LT submission CSV → (its classes in column order, {dicom_id: {class: probability}}).

    Unknown columns (other than ``dicom_id`` and the CXR-LT bookkeeping columns) are an error naming them; every
    probability must be a finite number in [0, 1]; a dicom_id may appear once."""
    path = Path(path)
    header, rows = _read_csv(path)
    if "dicom_id" not in header:
        raise FindingsTableError(f"{path}: no 'dicom_id' column (CXR-LT submission layout: dicom_id + one "
                                 "probability column per class)")
    bookkeeping = {"dicom_id", "subject_id", "study_id", "ViewPosition", "ViewCodeSequence_CodeMeaning", "fpath"}
    unknown = [c for c in header if c not in ALL_CLASSES and c not in bookkeeping]
    if unknown:
        raise FindingsTableError(f"{path}: columns that are not CXR-LT classes: {unknown}")
    classes = tuple(c for c in header if c in ALL_CLASSES)
    if not classes:
        raise FindingsTableError(f"{path}: no class columns")
    predictions: dict[str, dict[str, float]] = {}
    for n, row in rows:
        key = (row.get("dicom_id") or "").strip()
        if not key:
            raise FindingsTableError(f"{path}: row {n}: empty dicom_id")
        if key in predictions:
            raise FindingsTableError(f"{path}: row {n}: dicom_id {key!r} appears twice")
        predictions[key] = {c: _probability(path, n, c, row.get(c)) for c in classes}
    return classes, predictions


def read_thresholds(path: str | Path) -> dict[str, float]:
    """Per-class thresholds: JSON ``{class: t}`` or a CSV with columns ``class,threshold``; each in [0, 1]."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise FindingsTableError(f"{path}: not a readable JSON object ({error})") from None
        if not isinstance(data, dict):
            raise FindingsTableError(f"{path}: expected a JSON object {{class: threshold}}")
        items = [(n, str(k), v) for n, (k, v) in enumerate(data.items(), start=1)]
    else:
        header, rows = _read_csv(path)
        if not {"class", "threshold"} <= set(header):
            raise FindingsTableError(f"{path}: expected columns 'class' and 'threshold'")
        items = [(n, row["class"], row["threshold"]) for n, row in rows]
    thresholds = {}
    for n, name, value in items:
        if name not in ALL_CLASSES:
            raise FindingsTableError(f"{path}: row {n}: {name!r} is not a CXR-LT class")
        thresholds[name] = _probability(path, n, name, value)
    return thresholds


def image_id(name: str) -> str:
    """The image id of a file name or relative path: its stem (``images/nih/00004030_000.png`` → ``00004030_000``)."""
    stem = PurePath(name).name
    for suffix in (".nii.gz", ".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".tif", ".tiff", ".bmp"):
        if stem.lower().endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def _read_csv(path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = list(reader.fieldnames or [])
            rows = [(n, row) for n, row in enumerate(reader, start=2)]
    except FileNotFoundError:
        raise FindingsTableError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise FindingsTableError(f"{path}: not a readable CSV file ({error})") from None
    if not header:
        raise FindingsTableError(f"{path}: empty file (no header)")
    return header, rows


def _nih_row(path: Path, n: int, row: dict[str, str]) -> LabelRow:
    name = (row.get("Image Index") or "").strip()
    if not name:
        raise FindingsTableError(f"{path}: row {n}: empty 'Image Index'")
    found = [x.strip() for x in (row.get("Finding Labels") or "").split("|") if x.strip()]
    unknown = [x for x in found if x not in NIH14_TO_CXRLT]
    if unknown:
        raise FindingsTableError(f"{path}: row {n}: unknown NIH label(s) {unknown}")
    positives = {NIH14_TO_CXRLT[x] for x in found}
    return LabelRow(image_id(name), name, {c: int(c in positives) for c in NIH14_TO_CXRLT.values()})


def _cxrlt_row(path: Path, n: int, row: dict[str, str], classes: list[str]) -> LabelRow:
    key = (row.get("dicom_id") or "").strip()
    if not key:
        raise FindingsTableError(f"{path}: row {n}: empty dicom_id")
    labels = {}
    for c in classes:
        cell = (row.get(c) or "").strip()
        if cell == "":
            continue
        if cell not in ("0", "1", "0.0", "1.0"):
            raise FindingsTableError(f"{path}: row {n}, column {c!r}: {cell!r} is not 0, 1 or blank")
        labels[c] = int(float(cell))
    return LabelRow(key, (row.get("fpath") or "").strip() or None, labels)


def _probability(path: Path, n: int, column: str, value: object) -> float:
    try:
        p = float(str(value).strip())
    except (TypeError, ValueError):
        raise FindingsTableError(f"{path}: row {n}, column {column!r}: {value!r} is not a number") from None
    if not math.isfinite(p) or not 0.0 <= p <= 1.0:
        raise FindingsTableError(f"{path}: row {n}, column {column!r}: {p} is not a probability in [0, 1]")
    return p


__all__ = ["FindingsTableError", "LabelRow", "read_labels", "read_predictions", "read_thresholds", "image_id"]
