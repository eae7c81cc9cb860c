"""Label and prediction tables of chest X-ray findings, read into CXR-LT class names.

* **Labels**, two layouts: NIH ChestX-ray14 ``Data_Entry_2017`` (``Image Index``, ``Finding Labels`` with ``|``
  between labels, "No Finding" = Normal; an NIH row assesses the 15 CXR-LT classes of
  :data:`core_model.classes.NIH14_TO_CXRLT` and no other) and CXR-LT 2024 ``train_labeled.csv`` (``dicom_id``,
  optional ``fpath``, one 0/1 column per class; a blank cell = not assessed).
* **Predictions**: the CXR-LT 2024 submission layout, ``dicom_id`` + one probability column for each of exactly the
  26 Task-2 or the 40 Task-1 classes (:func:`read_submission`), and supplier thresholds (:func:`read_thresholds`).

Rows are keyed by image id = the file stem (``00004030_000``) or the ``dicom_id``. Every problem raises
:class:`FindingsTableError` naming the file, the line (header = line 1) and the column.
"""
from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePath

from core_model.classes import CXR_LT_26, CXR_LT_40, LABEL_SETS, NIH14_TO_CXRLT

ALL_CLASSES = frozenset(CXR_LT_40)
ID_COLUMN = "dicom_id"


class FindingsTableError(ValueError):
    """A labels, predictions or thresholds file that cannot be used; ``path`` names it and ``cause`` says why."""

    def __init__(self, path: Path | str, cause: str) -> None:
        self.path, self.cause = Path(path), cause
        super().__init__(f"{self.path}: {cause}")


@dataclass(frozen=True)
class LabelRow:
    """One image's reference labels: image id, the file named by the table (or None), {class: 0/1} assessed only,
    and the patient (NIH ``Patient ID`` / CXR-LT ``subject_id``; None when the table has none)."""
    image_id: str
    file: str | None
    labels: dict[str, int]
    patient: str | None = None


def read_labels(path: str | Path) -> list[LabelRow]:
    """Reference labels of either layout (told apart by the header)."""
    path = Path(path)
    header, rows = _read_csv(path)
    if "Image Index" in header and "Finding Labels" in header:
        return [_nih_row(path, n, row) for n, row in rows]
    if "dicom_id" in header:
        classes = [c for c in header if c in ALL_CLASSES]
        if not classes:
            raise FindingsTableError(path, "no CXR-LT class column (expected the train_labeled.csv layout)")
        return [_cxrlt_row(path, n, row, classes) for n, row in rows]
    raise FindingsTableError(path, "neither the NIH layout ('Image Index', 'Finding Labels') nor the CXR-LT layout "
                                   "('dicom_id' + class columns)")


@dataclass(frozen=True)
class SubmissionRow:
    """One row of a submission: its line in the file (header = line 1), ``dicom_id``, {class: probability}."""
    line: int
    dicom_id: str
    probabilities: dict[str, float]


@dataclass(frozen=True)
class Submission:
    """A CXR-LT submission CSV: its label set ("cxr-lt-26" | "cxr-lt-40"), classes in column order, the good rows
    and the rows with a cell that is not a probability (:class:`BadCell`, not imported, reported)."""
    label_set: str
    classes: tuple[str, ...]
    rows: list[SubmissionRow]
    bad_rows: list[BadCell]


class UnknownColumns(FindingsTableError):
    """Class columns that are not CXR-LT 2024 class names."""


class BadCell(FindingsTableError):
    """A cell that is not a finite probability in [0, 1]; ``line`` and ``column`` name it."""

    def __init__(self, path: Path, line: int, column: str, value: str) -> None:
        self.line, self.column, self.value = line, column, value
        super().__init__(path, f"line {line}, column {column!r}: a probability must be a finite number in [0, 1], "
                               f"got {value!r}")


def read_submission(path: str | Path) -> Submission:
    """A CXR-LT 2024 submission CSV: ``dicom_id`` and one probability column for each of exactly the 26 Task-2 or
    the 40 Task-1 classes, in any order. Structural problems (no ``dicom_id``, unknown or missing classes, an empty
    or repeated ``dicom_id``) raise; a row with a bad cell is collected in ``bad_rows``."""
    path = Path(path)
    header, rows = _read_csv(path)
    if ID_COLUMN not in header:
        raise FindingsTableError(path, f"no {ID_COLUMN!r} column; a CXR-LT submission has dicom_id and one "
                                       "probability column per class")
    classes = tuple(c for c in header if c != ID_COLUMN)
    unknown = [c for c in classes if c not in ALL_CLASSES]
    if unknown:
        raise UnknownColumns(path, f"unknown column(s) {unknown}: not CXR-LT 2024 class names")
    label_set = next((name for name, names in LABEL_SETS.items() if set(classes) == set(names)), None)
    if label_set is None or len(classes) != len(set(classes)):
        missing = sorted(set(CXR_LT_26) - set(classes)) or sorted(set(CXR_LT_40) - set(classes))
        raise FindingsTableError(path, f"{len(classes)} class column(s): a submission has the 26 or the 40 CXR-LT "
                                       f"classes, once each (missing: {missing})")
    good, bad, seen = [], [], {}
    for line, row in rows:
        dicom_id = (row.get(ID_COLUMN) or "").strip()
        if not dicom_id:
            raise FindingsTableError(path, f"line {line}: empty {ID_COLUMN}")
        if dicom_id in seen:
            raise FindingsTableError(path, f"line {line}: duplicate {ID_COLUMN} {dicom_id!r} (already on line "
                                           f"{seen[dicom_id]})")
        seen[dicom_id] = line
        try:
            good.append(SubmissionRow(line, dicom_id, {c: _probability(path, line, c, row.get(c)) for c in classes}))
        except BadCell as error:
            bad.append(error)
    return Submission(label_set, classes, good, bad)


def read_thresholds(path: str | Path, classes: Iterable[str] = CXR_LT_40) -> dict[str, float]:
    """Per-class thresholds for ``classes``: a CSV with columns ``class,threshold`` or a JSON ``{class: t}``; each a
    number in [0, 1]."""
    path, classes = Path(path), tuple(classes)
    if path.suffix.lower() == ".json":
        try:
            given = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise FindingsTableError(path, f"cannot read JSON: {error}") from None
        if not isinstance(given, dict):
            raise FindingsTableError(path, "the JSON must be an object {class: threshold}")
        items = [(f"key {k!r}", str(k), v) for k, v in given.items()]
    else:
        header, rows = _read_csv(path)
        if not {"class", "threshold"} <= set(header):
            raise FindingsTableError(path, f"a thresholds CSV has the columns class, threshold; this one has {header}")
        items = [(f"line {n}", (row.get("class") or "").strip(), row.get("threshold")) for n, row in rows]
    return {name: _threshold(path, where, name, value, classes) for where, name, value in items}


def _threshold(path: Path, where: str, name: str, value: object, classes: tuple[str, ...]) -> float:
    if name not in classes:
        raise FindingsTableError(path, f"{where}: {name!r} is not one of the submission's {len(classes)} classes")
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or not 0.0 <= number <= 1.0:
        raise FindingsTableError(path, f"{where}: the threshold of {name!r} must be a number in [0, 1], got {value!r}")
    return number


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
        raise FindingsTableError(path, "file not found") from None
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise FindingsTableError(path, f"not a readable CSV file ({error})") from None
    if not header:
        raise FindingsTableError(path, "empty file (no header)")
    return header, rows


def _nih_row(path: Path, n: int, row: dict[str, str]) -> LabelRow:
    name = (row.get("Image Index") or "").strip()
    if not name:
        raise FindingsTableError(path, f"line {n}: empty 'Image Index'")
    found = [x.strip() for x in (row.get("Finding Labels") or "").split("|") if x.strip()]
    unknown = [x for x in found if x not in NIH14_TO_CXRLT]
    if unknown:
        raise FindingsTableError(path, f"line {n}: unknown NIH label(s) {unknown}")
    positives = {NIH14_TO_CXRLT[x] for x in found}
    return LabelRow(image_id(name), name, {c: int(c in positives) for c in NIH14_TO_CXRLT.values()},
                    (row.get("Patient ID") or "").strip() or None)


def _cxrlt_row(path: Path, n: int, row: dict[str, str], classes: list[str]) -> LabelRow:
    key = (row.get("dicom_id") or "").strip()
    if not key:
        raise FindingsTableError(path, f"line {n}: empty dicom_id")
    labels = {}
    for c in classes:
        cell = (row.get(c) or "").strip()
        if cell == "":
            continue
        if cell not in ("0", "1", "0.0", "1.0"):
            raise FindingsTableError(path, f"line {n}, column {c!r}: {cell!r} is not 0, 1 or blank")
        labels[c] = int(float(cell))
    return LabelRow(key, (row.get("fpath") or "").strip() or None, labels,
                    (row.get("subject_id") or "").strip() or None)


def _probability(path: Path, line: int, column: str, text: str | None) -> float:
    try:
        value = float((text or "").strip())
    except ValueError:
        raise BadCell(path, line, column, text or "") from None
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise BadCell(path, line, column, text or "")
    return value


__all__ = ["FindingsTableError", "UnknownColumns", "BadCell", "LabelRow", "SubmissionRow", "Submission", "read_labels",
           "read_submission", "read_thresholds", "image_id", "ID_COLUMN"]
