"""A study's own AI: imported predictions (CXR-LT 2024 submission CSV) and a local torchxrayvision model.

    report = import_ai_predictions(store, "submission.csv", "vendor-x-2024", thresholds="thresholds.csv",
                                   masks_dir="ai_masks/", study="pilot")
    print("\\n".join(report.lines()))           # matched, unmatched rows (listed), cases without a prediction
    report = compute_xrv_predictions(store, "/models/densenet121-res224-all.pt", study="pilot")

A source is a model version (``model_versions``) with its :class:`core_model.findings.FindingsCard`; its predictions
are ``Prediction`` rows under it, and a study shows it once :meth:`Store.set_study_ai_source` attached it.

Submission CSV (the CXR-LT 2024 layout): ``dicom_id`` and one probability column per class — exactly the 26 Task-2 or
the 40 Task-1 classes of :mod:`core_model.classes`, in any order; any other column is refused
(:class:`~annotations_db.errors.UnknownClass` names it). Each row is matched to a case by the case's DICOM SOP Instance
UID, else by its file name or stem (the ``source_key`` the importers record — a CXR-LT case's ``dicom_id`` — or the
source file's name); a row matching no case, or several, is reported as unmatched with the reason. Every probability
must be a finite number in [0, 1]: a row with another value is a bad row (:class:`~annotations_db.errors.
BadProbability`, naming the file, line and column), reported and not imported (``strict=True``: nothing is written).

Thresholds file (optional): CSV with columns ``class,threshold`` or JSON ``{class: threshold}``; they become the
supplier's operating points on the card (floored at :data:`core_model.findings.SUGGESTION_FLOOR`). Without it nothing
the source outputs is suggested. AI masks (optional): a folder with ``<dicom_id>.png`` (binary, the case's size; also
``.nii.gz``/``.nii``/``.dcm`` for volumes) per row, stored as the prediction's ``mask_rle``.
"""
from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select

from annotations_db import rle
from annotations_db.errors import (BadCsv, BadProbability, BadThresholds, ImportFailed, ImportFileError, NotFound,
                                   UnknownClass, UnreadableFile)
from annotations_db.models import Assignment, Case, Study
from annotations_db.store import Store
from core_model.classes import label_set as classes_of
from core_model.findings import FindingsCard, supplier_card
from core_model.io import cxrlt
from core_model.io.cxrlt import SubmissionRow

MASK_SUFFIXES = (".png", ".nii.gz", ".nii", ".dcm")


@dataclass(frozen=True)
class UnmatchedRow:
    line: int
    dicom_id: str
    reason: str


@dataclass
class PredictionImportReport:
    """What an import of predictions did: rows matched to cases, rows not matched (and why), bad rows, the cases in
    scope (the study's, or all) left without a prediction of the source, AI masks stored."""
    source: str
    path: Path
    label_set: str = ""
    rows: int = 0
    matched: dict[str, str] = field(default_factory=dict)  # dicom_id -> case pseudonymous id
    unmatched: list[UnmatchedRow] = field(default_factory=list)
    bad_rows: list[ImportFileError] = field(default_factory=list)
    without_prediction: list[str] = field(default_factory=list)
    masks: int = 0
    mask_errors: list[ImportFileError] = field(default_factory=list)
    study: str | None = None
    seconds: float = 0.0

    def summary(self) -> str:
        scope = f"study {self.study!r}" if self.study else "the database"
        return (f"AI source {self.source!r} ({self.label_set}) from {self.path.name}: {len(self.matched)} of "
                f"{self.rows} row(s) matched to cases, {len(self.unmatched)} unmatched, {len(self.bad_rows)} bad; "
                f"{len(self.without_prediction)} case(s) of {scope} without a prediction; {self.masks} AI mask(s)"
                + (f"; attached to study {self.study!r}" if self.study else ""))

    def lines(self) -> list[str]:
        """The summary, then every unmatched row, bad row, mask problem and case without a prediction."""
        out = [self.summary()]
        out += [f"unmatched: line {u.line}, dicom_id {u.dicom_id!r}: {u.reason}" for u in self.unmatched]
        out += [f"bad row: {error.cause}" for error in self.bad_rows]
        out += [f"mask not stored: {error.path.name}: {error.cause}" for error in self.mask_errors]
        if self.without_prediction:
            out.append(f"cases without a prediction: {', '.join(self.without_prediction)}")
        return out


# -- the submission CSV ----------------------------------------------------------------------------------------------
def read_submission(path: Path) -> tuple[str, list[SubmissionRow], list[BadProbability]]:
    """(label set, good rows, bad rows) of a CXR-LT submission CSV (parsed by :func:`core_model.io.cxrlt.
    read_submission`); BadCsv / UnknownClass for a structural problem."""
    try:
        submission = cxrlt.read_submission(path)
    except cxrlt.UnknownColumns as error:
        raise UnknownClass(path, error.cause) from None
    except cxrlt.FindingsTableError as error:
        raise BadCsv(path, error.cause) from None
    bad = [BadProbability(path, cell.line, cell.column, cell.value) for cell in submission.bad_rows]
    return submission.label_set, submission.rows, bad


def load_supplier_thresholds(path: Path | str, classes: Sequence[str]) -> dict[str, float]:
    """{class: threshold} from a CSV (columns class, threshold) or JSON object; BadThresholds names the problem."""
    try:
        return cxrlt.read_thresholds(path, classes)
    except cxrlt.FindingsTableError as error:
        raise BadThresholds(path, error.cause) from None


# -- matching rows to cases ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CaseKeys:
    id: int
    pseudo_id: str
    shape: tuple[int, ...]  # (height, width) of a 2-D case, (width, height, depth) of a volume
    uid: str | None
    names: frozenset[str]


def _stem(name: str) -> str:
    lower = name.lower()
    for suffix in MASK_SUFFIXES + (".jpg", ".jpeg"):
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _case_keys(row: Any) -> CaseKeys:
    names = set()
    for text in (row.source_key, row.source_uri):
        if text:
            name = Path(text).name
            names |= {name, _stem(name)}
    if row.source_key:
        names |= {row.source_key, _stem(row.source_key)}
    shape = (row.height, row.width) if row.depth is None else (row.width, row.height, row.depth)
    return CaseKeys(row.id, row.pseudo_id, shape, row.sop_instance_uid, frozenset(names))


def cases_in_scope(store: Store, study: str | None) -> list[CaseKeys]:
    """The cases a source is imported for: the study's (NotFound for an unknown study), else every case."""
    query = select(Case.id, Case.pseudo_id, Case.width, Case.height, Case.depth, Case.source_key, Case.source_uri,
                   Case.sop_instance_uid).order_by(Case.id)
    with store.read_session() as session:
        if study is not None:
            study_id = session.scalar(select(Study.id).where(Study.name == study))
            if study_id is None:
                raise NotFound(f"no study {study!r}")
            query = query.where(Case.id.in_(select(Assignment.case_id).where(Assignment.study_id == study_id)))
        return [_case_keys(row) for row in session.execute(query)]


def match_rows(rows: Iterable[SubmissionRow], cases: Sequence[CaseKeys]) -> tuple[dict[int, SubmissionRow],
                                                                                  list[UnmatchedRow]]:
    """{case id: row} by SOP Instance UID first, then file name / stem; the rows left over with the reason."""
    by_uid: dict[str, list[CaseKeys]] = {}
    by_name: dict[str, list[CaseKeys]] = {}
    for case in cases:
        if case.uid:
            by_uid.setdefault(case.uid, []).append(case)
        for name in case.names:
            by_name.setdefault(name, []).append(case)
    matched: dict[int, SubmissionRow] = {}
    unmatched: list[UnmatchedRow] = []
    for row in rows:
        found = by_uid.get(row.dicom_id) or by_name.get(row.dicom_id) or by_name.get(_stem(row.dicom_id)) or []
        if len(found) != 1:
            reason = ("no case has this SOP Instance UID or file name" if not found else
                      f"matches {len(found)} cases ({', '.join(c.pseudo_id for c in found)}): name the file uniquely")
            unmatched.append(UnmatchedRow(row.line, row.dicom_id, reason))
        elif found[0].id in matched:
            unmatched.append(UnmatchedRow(row.line, row.dicom_id, f"case {found[0].pseudo_id} is already matched by "
                                                                  f"line {matched[found[0].id].line}"))
        else:
            matched[found[0].id] = row
    return matched, unmatched


def _ai_mask(masks_dir: Path, row: SubmissionRow, case: CaseKeys) -> rle.Rle | None:
    """The AI mask ``<dicom_id>.<png|nii.gz|nii|dcm>`` of a row at the case's geometry; None when there is none."""
    from core_model.errors import ImageReadError
    from core_model.io import load_mask

    candidates = [masks_dir / f"{row.dicom_id}{suffix}" for suffix in MASK_SUFFIXES]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        return None
    try:
        return rle.encode(load_mask(path, case.shape))
    except ImageReadError as error:
        raise UnreadableFile(path, error.cause) from error


# -- import ------------------------------------------------------------------------------------------------------------
def import_ai_predictions(store: Store, csv_path: Path | str, source_name: str, *,
                          thresholds: Path | str | None = None, masks_dir: Path | str | None = None,
                          study: str | None = None, origin: str | None = None,
                          strict: bool = False) -> PredictionImportReport:
    """Import a CXR-LT submission CSV as the AI source ``source_name`` (see the module docstring); with ``study``,
    rows are matched to that study's cases and the source is attached to it. Replaces an earlier import of the same
    source (refused once a study showing it has started)."""
    started = time.perf_counter()
    csv_path = Path(csv_path)
    if not (source_name or "").strip():
        raise BadCsv(csv_path, "name the AI source (--source-name)")
    report = PredictionImportReport(source_name.strip(), csv_path, study=study)
    report.label_set, rows, report.bad_rows = read_submission(csv_path)
    if strict and report.bad_rows:
        raise ImportFailed(list(report.bad_rows))
    report.rows = len(rows) + len(report.bad_rows)
    classes = classes_of(report.label_set)
    supplied = load_supplier_thresholds(thresholds, classes) if thresholds else None
    cases = cases_in_scope(store, study)
    matched, report.unmatched = match_rows(rows, cases)
    by_id = {case.id: case for case in cases}
    predictions = {case_id: (row.probabilities, _mask_of(report, masks_dir, row, by_id[case_id]))
                   for case_id, row in matched.items()}
    card = supplier_card(report.source, "imported", origin or _origin(csv_path, report.label_set, thresholds),
                         report.label_set, classes, supplied)
    store.replace_source_predictions(card, predictions)
    if study is not None:
        store.set_study_ai_source(study, report.source)
    report.matched = {row.dicom_id: by_id[case_id].pseudo_id for case_id, row in matched.items()}
    report.without_prediction = [case.pseudo_id for case in cases if case.id not in matched]
    report.seconds = time.perf_counter() - started
    return report


def _mask_of(report: PredictionImportReport, masks_dir: Path | str | None, row: SubmissionRow,
             case: CaseKeys) -> rle.Rle | None:
    if masks_dir is None:
        return None
    try:
        mask = _ai_mask(Path(masks_dir), row, case)
    except ImportFileError as error:
        report.mask_errors.append(error)
        return None
    report.masks += mask is not None
    return mask


def _origin(csv_path: Path, label_set: str, thresholds: Path | str | None) -> str:
    supplied = f"supplier thresholds {Path(thresholds).name}" if thresholds else "no supplier thresholds"
    return f"imported predictions {csv_path.name} (CXR-LT submission, {label_set}; {supplied})"


# -- a local torchxrayvision model -------------------------------------------------------------------------------------
@dataclass
class XrvReport:
    source: str
    predicted: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # volumes: the model reads chest radiographs
    errors: list[str] = field(default_factory=list)
    study: str | None = None

    def summary(self) -> str:
        return (f"AI source {self.source!r} (torchxrayvision): {len(self.predicted)} case(s) predicted, "
                f"{len(self.skipped)} volume(s) skipped, {len(self.errors)} error(s)"
                + (f"; attached to study {self.study!r}" if self.study else ""))

    def lines(self) -> list[str]:
        return [self.summary(), *self.errors]


def compute_xrv_predictions(store: Store, weights_path: Path | str, name: str | None = None, *,
                            study: str | None = None) -> XrvReport:
    """Load a torchxrayvision model from a local weights file (``core_model.xrv_source``; its typed error names the
    file and cause), predict every 2-D case in scope (the study's, or all) and store them under the source's name;
    with ``study``, attach the source to it."""
    from core_model.errors import ImageReadError
    from core_model.io import load_image
    from core_model.xrv_source import load_xrv_source

    source = load_xrv_source(weights_path, name)
    card: FindingsCard = source.card()
    report = XrvReport(card.name, study=study)
    predictions: dict[int, tuple[Mapping[str, float], None]] = {}
    for case in cases_in_scope(store, study):
        if len(case.shape) == 3:
            report.skipped.append(case.pseudo_id)
            continue
        try:
            pixels = load_image(store.case_info(case.id).source_uri).pixels
        except (ImageReadError, OSError) as error:
            report.errors.append(f"case {case.pseudo_id}: {getattr(error, 'cause', error)}")
            continue
        predictions[case.id] = (source.predict(pixels), None)
        report.predicted.append(case.pseudo_id)
    store.replace_source_predictions(card, predictions)
    if study is not None:
        store.set_study_ai_source(study, card.name)
    return report
