"""Exports: reader-study results, iMRMC input, masks at source geometry, COCO, MONAI datalist, training manifest.

De-identified by default: cases appear only as pseudonymous ids (``cases.pseudo_id``; the mapping to source files and
patients stays in the database), no patient name, ID, birth date or other direct identifier is written. DICOM-SEG and
de-identified DICOM image copies follow DICOM PS3.15 Annex E (:mod:`annotations_db.deid`): one UID map per export run,
so a SEG references its exported image copy; :class:`~annotations_db.deid.DeidOptions` picks the profile's options.

Results (long format; :func:`results_frame`, :func:`export_results` → CSV and/or Parquet), one row per
reader × case × arm × class of every submitted assignment of one study:

    study (the study's name), reader, case, arm, class, answer (0/1), score (the reader's confidence rating that the
    finding is present, the raw integer 0..the study's rating_max as the reader gave it, not rescaled; empty when the
    answer has no ratings, e.g. a binary-only study), truth (0/1 or empty), ai_probability (the probability of the
    AI source the reader saw; empty in unaided arms and for classes the source has no output for), ai_source (that
    source's name = version, as the answer recorded it; empty in unaided arms), ai_suggested (1/0: the finding was
    suggested by the source card's rule, :meth:`core_model.findings.FindingsCard.suggested` — the rule the AI panel
    applied; empty in unaided arms and for a source stored without a card), ai_uncertainty (case-level total of the
    study's source, in both arms; empty when the source has none, e.g. imported predictions), time_s (submit −
    shown − idle, from events), clicks, order (the reader's reading order), shown_at, submitted_at (ISO 8601 UTC),
    sex, age, race

iMRMC (:func:`export_imrmc`, one class; :func:`export_imrmc_classes`, one file per class): header ``N0/N1/NR/NM``,
``BEGIN DATA:``, truth rows ``-1,case,truth,0|1`` then ``reader,case,arm,score`` (score = the reader's rating when
every read of the class has one, the 0/1 answer when none has; a mix is refused), the layout of
shared/data/mrmc_vandyke/vandyke_ratings.imrmc.

An export with nothing to write (no submitted read, no mask, no annotation) raises :class:`ExportError` instead of
writing an empty file or folder (masks: with ``require_any=True``, which the command line and the app pass).

Masks (:func:`export_masks`, written under ``OUT/``), the mask of each case's answer of record:
    masks/<case>.png         2-D cases: uint8 0/255, the source image's height × width
    masks/<case>.nii.gz      volumes: uint8 0/1 in the source voxel order with the source affine
    masks/<case>.seg.dcm     DICOM sources: DICOM-SEG (highdicom, binary, every frame kept); a 2-D case has one
                             frame referencing its source SOP instance, a volume imported from a folder of single-frame
                             slices one frame per slice (slice order k), each referencing its slice's SOP instance,
                             a multi-frame (enhanced) volume one frame per source frame, referencing that frame
                             NIfTI volumes: one frame per k-plane over header-only planes derived from the affine
                             (:func:`write_nifti_dicom_seg`: a NIfTI has no DICOM instances to reference)
    coco.json                COCO instances JSON, segmentation as compressed RLE, image ids = case order
    datalist.json            MONAI-style {"training": [{"image", "label"}], "validation": [...], "test": [...]}

Objects (:mod:`core_model.objects`): an answer of one default object (every answer saved before objects) is written as
above. An answer with labelled objects (:func:`objects_at_source`) is written as
    masks/<case>.<id>-<label>.png      2-D cases: one uint8 0/255 PNG per object
    masks/<case>.<id>-<label>.nii.gz   volumes: one binary NIfTI per object (what the training manifest points to)
    masks/<case>.nii.gz + .labels.json one multi-label NIfTI (value n = the n-th object; 2-D cases as (columns, rows,
                                       1)) and its label table (value, object, label, codes, colour, voxels)
    masks/<case>.seg.dcm               one DICOM-SEG, one segment per object: its label, its label's segmented
                                       property category / type (laterality as the type's modifier), colour
    coco.json                          one annotation per object, one category per label (1: "annotation")
and the training manifest has one item per object (:mod:`annotations_db.manifest`).

Training manifest (:func:`export_training`): ``OUT/manifest.json`` and ``OUT/manifest.jsonl`` (one item per line),
paths relative to the manifest's folder, in the versioned contract of :mod:`annotations_db.manifest` (schema, item
fields, the label-of-record rule that picks each case's answer, canonical split names, the site's held-out split that
no training export contains). ``clicks`` is the effective click sequence behind the mask of record: the logged clicks
of the case session that its submit closed, replayed with undo (drops the last) and reset (clears), in
original-image pixel coordinates. Masks (:func:`export_masks`) are the masks of the same answers of record.
"""
from __future__ import annotations

import json
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from sqlalchemy import select

from annotations_db import manifest as manifest_contract
from annotations_db import rle
from annotations_db.deid import DeidOptions, Deidentifier
from annotations_db.errors import ExportError
from annotations_db.models import (Annotation, Assignment, Case, CaseLabel, Dataset, Event, LabelSet, ModelVersion,
                                   Prediction, Reader, Study, StudyArm, utcnow)
from annotations_db.events import (DEFAULT_OBJECT, EventRecord, derive_time_s, effective_clicks, replay, slice_edits,
                                   submitted_session)
from annotations_db.store import AnswerObjectRecord, Store, answer_objects

if TYPE_CHECKING:  # core_model is imported where a source is re-opened, not with this module
    from core_model.io import LoadedVolume, SeriesLayout
    from core_model.objects import ObjectLabel

RESULT_COLUMNS = ["study", "reader", "case", "arm", "class", "answer", "score", "truth", "ai_probability",
                  "ai_source", "ai_suggested", "ai_uncertainty", "time_s", "clicks", "order", "shown_at", "submitted_at", "sex", "age", "race"]
MANIFEST_SCHEMA = manifest_contract.SCHEMA


def _store(store_or_url: Store | str) -> tuple[Store, bool]:
    return (store_or_url, False) if isinstance(store_or_url, Store) else (Store.open(store_or_url), True)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat(timespec="milliseconds") + "Z" if value else None


# -- reader-study results --------------------------------------------------------------------------------------------
def results_frame(store_or_url: Store | str, study: str | int | None = None) -> pd.DataFrame:
    """Long-format results of ``study`` (default: the most recently created study) with :data:`RESULT_COLUMNS`."""
    store, owned = _store(store_or_url)
    try:
        with store.read_session() as session:
            return _results(session, _pick_study(session, study))
    finally:
        if owned:
            store.close()


@dataclass(frozen=True)
class StudyInfo:
    """A study as the exports and the analysis name it: id, name, creation time and rating scale (None: unknown)."""
    id: int
    name: str
    created_at: datetime | None
    rating_max: int | None

    @property
    def described(self) -> str:
        """``NAME (id N, created ISO)`` for messages."""
        created = self.created_at.isoformat(timespec="seconds") if self.created_at else "unknown"
        return f"{self.name} (id {self.id}, created {created})"


def _info(study: Study) -> StudyInfo:
    return StudyInfo(study.id, study.name, study.created_at, getattr(study, "rating_max", None))


def list_studies(store_or_url: Store | str) -> list[StudyInfo]:
    """Every study of the database, oldest first."""
    store, owned = _store(store_or_url)
    try:
        with store.read_session() as session:
            return [_info(s) for s in session.scalars(select(Study).order_by(Study.id))]
    finally:
        if owned:
            store.close()


def resolve_study(store_or_url: Store | str, study: str | int | None = None) -> StudyInfo:
    """The study named (or with the id) ``study``, default the most recently created; ExportError if none."""
    store, owned = _store(store_or_url)
    try:
        with store.read_session() as session:
            return _info(_pick_study(session, study))
    finally:
        if owned:
            store.close()


def _pick_study(session: Any, study: str | int | None) -> Study:
    query = select(Study)
    if study is None:
        found = session.scalar(query.order_by(Study.id.desc()).limit(1))
    else:
        found = session.scalar(query.where(Study.name == study if isinstance(study, str) else Study.id == study))
    if found is None and study is None:
        raise ExportError("the database has no study")
    if found is None:
        names = list(session.scalars(select(Study.name).order_by(Study.id)))
        raise ExportError(f"no study {study!r}; the database has: {', '.join(names) or 'no study'}")
    return found


def _results(session: Any, study: Study) -> pd.DataFrame:
    classes = session.get(LabelSet, study.label_set_id).classes
    reads = session.execute(
        select(Assignment.id, Assignment.case_id, Assignment.order_index, Assignment.submitted_at,
               Reader.name.label("reader"), StudyArm.name.label("arm"), StudyArm.shows_ai, Case.pseudo_id,
               Case.sex, Case.age, Case.race)
        .join(Reader, Reader.id == Assignment.reader_id).join(StudyArm, StudyArm.id == Assignment.arm_id)
        .join(Case, Case.id == Assignment.case_id)
        .where(Assignment.study_id == study.id, Assignment.status == "submitted")
        .order_by(Reader.name, Assignment.order_index)).all()
    ids = [r.id for r in reads]
    answers = _latest_answers(session, ids)
    events = _events_by_assignment(session, ids)
    truth = _truth(session, {r.case_id for r in reads})
    case_ids = {r.case_id for r in reads}
    predictions = _predictions(session, study.model_version_id, case_ids)
    seen = _sources_seen(session, study, reads, answers, case_ids)
    rows = []
    for read in reads:
        labels = answers[read.id].labels if read.id in answers else {}
        _, uncertainty = predictions.get(read.case_id, ({}, None))
        source = seen.get(read.id)
        log = events.get(read.id, [])
        shown = next((e.wall_at for e in log if e.kind == "case_shown"), None)
        ratings = (answers[read.id].confidence if read.id in answers else None) or {}
        common = dict(study=study.name, reader=read.reader, case=read.pseudo_id, arm=read.arm,
                      ai_uncertainty=uncertainty,
                      time_s=derive_time_s(log), clicks=sum(e.kind == "click" for e in log), order=read.order_index,
                      shown_at=_iso(shown), submitted_at=_iso(read.submitted_at), sex=read.sex, age=read.age,
                      race=read.race)
        ai = source.output(read.case_id) if source is not None else {}
        suggested = source.suggested(ai) if source is not None else None
        for name in classes:
            rows.append({**common, "class": name, "answer": int(labels.get(name, 0)), "score": ratings.get(name),
                         "truth": truth.get((read.case_id, name)), "ai_probability": ai.get(name),
                         "ai_source": source.name if source is not None else None,
                         "ai_suggested": None if suggested is None or name not in ai else int(name in suggested)})
    return _typed(pd.DataFrame(rows, columns=RESULT_COLUMNS))


@dataclass
class SourceSeen:
    """The AI source of aided reads: its name, card (None if stored without one) and predictions by case."""
    name: str
    card: Any
    predictions: dict[int, tuple[dict[str, float], float | None]]

    def output(self, case_id: int) -> dict[str, float]:
        """The probabilities the reader saw: the classes the source has an output for (all without a card)."""
        probabilities = self.predictions.get(case_id, ({}, None))[0]
        return self.card.shown(probabilities) if self.card is not None else dict(probabilities)

    def suggested(self, probabilities: dict[str, float]) -> set[str] | None:
        return set(self.card.suggested(probabilities)) if self.card is not None else None


def _sources_seen(session: Any, study: Study, reads: Sequence[Any], answers: dict[int, Annotation],
                  case_ids: set[int]) -> dict[int, SourceSeen]:
    """{assignment id: the source its reader saw} for the aided reads: the source the answer recorded, else the
    study's."""
    from core_model.findings import FindingsCard

    by_version: dict[int | None, SourceSeen] = {}
    out = {}
    for read in reads:
        if not read.shows_ai:
            continue
        recorded = answers[read.id].model_version_id if read.id in answers else None
        version_id = recorded or study.model_version_id
        if version_id not in by_version:
            row = session.get(ModelVersion, version_id) if version_id is not None else None
            by_version[version_id] = SourceSeen(row.name if row else None,
                                                FindingsCard.from_dict(row.card) if row is not None and row.card
                                                else None, _predictions(session, version_id, case_ids))
        out[read.id] = by_version[version_id]
    return out


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    frame["answer"] = frame["answer"].astype("int64")
    frame["truth"] = frame["truth"].astype("Int64")
    frame["ai_suggested"] = pd.to_numeric(frame["ai_suggested"], errors="coerce").astype("Int64")
    for column in ("score", "ai_probability", "ai_uncertainty", "time_s", "age"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
    frame["clicks"] = frame["clicks"].astype("int64")
    frame["order"] = frame["order"].astype("int64")
    return frame[RESULT_COLUMNS]


def _latest_answers(session: Any, assignment_ids: Sequence[int]) -> dict[int, Annotation]:
    latest: dict[int, Annotation] = {}
    for chunk in _chunks(assignment_ids):
        for annotation in session.scalars(select(Annotation).where(Annotation.assignment_id.in_(chunk))
                                          .order_by(Annotation.id)):
            latest[annotation.assignment_id] = annotation
    return latest


def _events_by_assignment(session: Any, assignment_ids: Sequence[int]) -> dict[int, list[EventRecord]]:
    grouped: dict[int, list[EventRecord]] = {}
    for chunk in _chunks(assignment_ids):
        query = select(Event).where(Event.assignment_id.in_(chunk)).order_by(Event.id)
        for e in session.scalars(query):
            grouped.setdefault(e.assignment_id, []).append(
                EventRecord(e.id, e.kind, e.payload, e.wall_at, e.mono_ns, e.clock_id))
    return grouped


def _truth(session: Any, case_ids: set[int]) -> dict[tuple[int, str], int]:
    truth = {}
    for chunk in _chunks(sorted(case_ids)):
        query = select(CaseLabel).where(CaseLabel.case_id.in_(chunk), CaseLabel.source == "ground_truth")
        truth.update({(label.case_id, label.class_name): label.value for label in session.scalars(query)})
    return truth


def _predictions(session: Any, model_version_id: int | None,
                 case_ids: set[int]) -> dict[int, tuple[dict[str, float], float | None]]:
    found: dict[int, tuple[dict[str, float], float | None]] = {}
    for chunk in _chunks(sorted(case_ids)):
        query = select(Prediction).where(Prediction.case_id.in_(chunk)).order_by(Prediction.model_version_id)
        if model_version_id is not None:
            query = query.where(Prediction.model_version_id == model_version_id)
        found.update({p.case_id: (p.probabilities, p.uncertainty_total if p.uncertainty else None)
                      for p in session.scalars(query)})
    return found


def _chunks(items: Sequence[int], size: int = 500) -> list[list[int]]:
    items = list(items)
    return [items[i:i + size] for i in range(0, len(items), size)]


def export_results(store_or_url: Store | str, out: Path | str, study: str | int | None = None,
                   formats: Sequence[str] = ("csv", "parquet")) -> list[Path]:
    """Write the long-format results as ``out`` with each suffix of ``formats``; returns the written paths.

    ExportError (and nothing written) when the study has no submitted read."""
    store, owned = _store(store_or_url)
    try:
        frame = results_frame(store, study)
        if frame.empty:
            raise ExportError(f"study {resolve_study(store, study).described} has no submitted read yet: "
                              "no results to export")
    finally:
        if owned:
            store.close()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in formats:
        path = out.with_suffix(f".{fmt}")
        if fmt == "csv":
            frame.to_csv(path, index=False)
        elif fmt == "parquet":
            frame.to_parquet(path, index=False)
        else:
            raise ExportError(f"unknown results format {fmt!r}; use csv or parquet")
        written.append(path)
    return written


def export_imrmc(store_or_url: Store | str, out: Path | str, class_name: str, study: str | int | None = None,
                 frame: pd.DataFrame | None = None) -> Path:
    """iMRMC input for one class: cases with known truth, every submitted read of them (scores: see the module
    docstring). ``frame`` (a :func:`results_frame`) is used instead of reading the database when given."""
    if frame is None:
        frame = results_frame(store_or_url, study)
    return _imrmc_class(frame, Path(out), class_name)


def _imrmc_class(frame: pd.DataFrame, out: Path, class_name: str) -> Path:
    rows = frame[(frame["class"] == class_name) & frame["truth"].notna()]
    if rows.empty:
        raise ExportError(f"no reads with known truth for class {class_name!r}: no iMRMC file to write")
    return _write_imrmc(out, rows, class_name)


def export_imrmc_classes(store_or_url: Store | str, out_dir: Path | str, study: str | int | None = None,
                         frame: pd.DataFrame | None = None) -> dict[str, Path]:
    """One iMRMC file per class with positive and negative cases, ``OUT_DIR/<class>.imrmc`` (non-alphanumerics → _);
    returns {class: path}. ExportError when no class has both (or the study has no submitted read)."""
    if frame is None:
        frame = results_frame(store_or_url, study)
    known = frame[frame["truth"].notna()]
    both = known.groupby("class")["truth"].nunique()
    classes = [name for name in dict.fromkeys(known["class"]) if both.get(name, 0) == 2]
    if not classes:
        raise ExportError("no class has submitted reads of both positive and negative cases (known truth): "
                          "no iMRMC file to write")
    out = Path(out_dir)
    return {name: _imrmc_class(frame, out / f"{re.sub(r'[^A-Za-z0-9]+', '_', name)}.imrmc", name)
            for name in classes}


def _imrmc_scores(rows: pd.DataFrame, class_name: str) -> tuple[pd.Series, str]:
    """The score of every row (ratings when all rows have one, else the 0/1 answers) and its description."""
    rated = rows["score"].notna() if "score" in rows else pd.Series(False, index=rows.index)
    if rated.all():
        return rows["score"].astype(float), "score = the reader's confidence rating (raw, 0..the study's rating_max)"
    if rated.any():
        raise ExportError(f"class {class_name!r}: {int(rated.sum())} of {len(rows)} reads have a confidence rating "
                          "and the others only a 0/1 answer; an iMRMC file needs one scale")
    return rows["answer"].astype(float), "score = the 0/1 answer (no confidence ratings recorded)"


def _write_imrmc(path: Path, rows: pd.DataFrame, class_name: str) -> Path:
    truth = rows.drop_duplicates("case").set_index("case")["truth"].astype(int)
    scores, described = _imrmc_scores(rows, class_name)
    lines = [f"BiasCare reader study export, class {class_name}; {described}",
             f"N0:{int((truth == 0).sum())}", f"N1:{int((truth == 1).sum())}", f"NR:{rows['reader'].nunique()}",
             f"NM:{rows['arm'].nunique()}", "BEGIN DATA:"]
    lines += [f"-1,{case},truth,{value}" for case, value in truth.items()]
    lines += [f"{reader},{case},{arm},{score:.6f}"
              for reader, case, arm, score in zip(rows["reader"], rows["case"], rows["arm"], scores)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


# -- masks -------------------------------------------------------------------------------------------------------------
def final_annotations(session: Any, selection: Selection | None = None) -> list[tuple[Case, Annotation]]:
    """The answer of record of every case that has one (:func:`annotations_db.manifest.label_of_record`: the latest
    free-annotation or AI-aided answer with a mask, else the latest such answer; unaided reads never), cases in id
    order; ``selection`` narrows the cases and answers considered."""
    selection = selection or Selection()
    rows = session.execute(select(Annotation, StudyArm.shows_ai, Study.name.label("study"))
                           .outerjoin(Assignment, Assignment.id == Annotation.assignment_id)
                           .outerjoin(StudyArm, StudyArm.id == Assignment.arm_id)
                           .outerjoin(Study, Study.id == Assignment.study_id).order_by(Annotation.id)).all()
    by_case: dict[int, dict[int, Annotation]] = {}
    answers: dict[int, list[manifest_contract.Answer]] = {}
    for annotation, shows_ai, study in rows:
        if not selection.keeps_answer(study):
            continue
        source = "free" if annotation.assignment_id is None else ("aided" if shows_ai else "unaided")
        by_case.setdefault(annotation.case_id, {})[annotation.id] = annotation
        answers.setdefault(annotation.case_id, []).append(
            manifest_contract.Answer(annotation.id, source, annotation.mask_rle is not None))
    chosen = {case_id: manifest_contract.label_of_record(found) for case_id, found in answers.items()}
    chosen = {case_id: by_case[case_id][answer.id] for case_id, answer in chosen.items() if answer is not None}
    query = select(Case).where(Case.id.in_(list(chosen) or [-1]))
    if selection.datasets:
        query = query.join(Dataset, Dataset.id == Case.dataset_id).where(Dataset.name.in_(list(selection.datasets)))
    cases = {c.id: c for c in session.scalars(query)}
    return [(cases[case_id], chosen[case_id]) for case_id in sorted(cases)]


@dataclass(frozen=True)
class Selection:
    """Which data a training export takes: cases of ``datasets`` (None: all), answers from free annotation (when
    ``free``) and from the aided arms of ``studies`` (None: every study), labels of ``classes`` only (None: all)."""
    datasets: tuple[str, ...] | None = None
    studies: tuple[str, ...] | None = None
    free: bool = True
    classes: tuple[str, ...] | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Selection:
        data = data or {}
        as_tuple = lambda key: tuple(data[key]) if data.get(key) else None  # noqa: E731
        return cls(as_tuple("datasets"), as_tuple("studies"), bool(data.get("free", True)), as_tuple("classes"))

    def keeps_answer(self, study: str | None) -> bool:
        if study is None:
            return self.free
        return self.studies is None or study in self.studies

    def labels(self, labels: dict[str, Any]) -> dict[str, int]:
        return {k: int(v) for k, v in labels.items() if self.classes is None or k in self.classes}


def mask_at_source(case: Case, annotation: Annotation) -> np.ndarray | None:
    """The annotation's mask as uint8 {0,1}: (height, width) for 2-D cases, source voxel order for volumes."""
    if annotation.mask_rle is None:
        return None
    return _decoded_at_source(case, annotation.mask_rle, annotation.slice_index)


@dataclass(frozen=True)
class ExportObject:
    """One object of an answer of record as the exports write it: id, label (None: the default object), its label's
    codes and colour (:class:`core_model.objects.ObjectLabel`) and its mask at source geometry (uint8 {0, 1})."""
    id: int
    label: str | None
    spec: ObjectLabel
    mask: np.ndarray

    @property
    def name(self) -> str:
        """The segment / category / file name: the label, ``annotation`` for the default object."""
        return self.spec.name

    def file_stem(self, case: Case) -> str:
        """``<case>.<id>-<label slug>``: the per-object file names of a multi-object answer."""
        from core_model.objects import slug
        return f"{case.pseudo_id}.{self.id}-{slug(self.name)}"


def objects_at_source(session: Any, case: Case, annotation: Annotation) -> list[ExportObject]:
    """The objects of an answer (:func:`annotations_db.store.answer_objects`: an answer saved before objects is its
    one default object) with their masks at source geometry, by object id."""
    return [ExportObject(o.object_id, o.label, _label_spec(case, o), _decoded_at_source(case, o.mask_rle,
                                                                                        o.slice_index))
            for o in answer_objects(session, annotation.id)]


def _label_spec(case: Case, found: AnswerObjectRecord) -> ObjectLabel:
    """The label of an object: from the case's object label set; a label no longer in the set keeps its name with
    a local code (the viewer's default colour)."""
    from core_model.objects import ABNORMAL, DEFAULT_COLOUR, ObjectLabel, local, object_set_for
    labels = object_set_for(case.depth is not None)
    if found.label is None or found.label in labels.names:
        return labels.spec(found.label)
    return ObjectLabel(found.label, ABNORMAL, local(found.label), DEFAULT_COLOUR)


def _decoded_at_source(case: Case, mask_rle: dict[str, Any], slice_index: int | None) -> np.ndarray:
    """A stored mask (RLE) as uint8 {0,1} at source geometry (a 2-D mask on a volume put on its slice)."""
    mask = rle.decode(mask_rle)
    if case.depth is None:
        if mask.shape != (case.height, case.width):
            raise ExportError(f"case {case.pseudo_id}: mask {mask.shape} is not the source size "
                              f"{(case.height, case.width)}")
        return mask
    if mask.ndim == 3:
        return mask
    from core_model.io.volume import axial_axis
    volume = source_volume(case)
    if slice_index is None:
        raise ExportError(f"case {case.pseudo_id}: a 2-D mask on a volume without its slice index")
    return volume.slice_mask_to_volume(mask.astype(bool), int(slice_index),
                                       axis=axial_axis(volume.affine)).astype(np.uint8)


def source_volume(case: Case) -> LoadedVolume:
    """The volume case's source re-opened as a LoadedVolume (a DICOM series folder by its ``series_uid``).

    ExportError naming the case when it no longer loads (a slice removed from a series...) or no longer has the
    case's (width, height, depth).
    """
    from core_model.errors import ImageReadError
    from core_model.io import load_volume
    try:
        volume = load_volume(case.source_uri, series_uid=case.series_uid)
    except ImageReadError as error:
        raise ExportError(f"case {case.pseudo_id}: its source no longer loads: {error}") from error
    if volume.shape != (case.width, case.height, case.depth):
        raise ExportError(f"case {case.pseudo_id}: its source now has {volume.shape} voxels, not the "
                          f"{(case.width, case.height, case.depth)} it had at import")
    return volume


def write_png_mask(mask: np.ndarray, path: Path) -> Path:
    from PIL import Image
    Image.fromarray((mask > 0).astype(np.uint8) * 255).save(path)
    return path


def write_nifti_mask(mask: np.ndarray, affine: Sequence[Sequence[float]], path: Path) -> Path:
    """A uint8 0/1 NIfTI mask (see :func:`write_nifti_image`)."""
    return write_nifti_image((mask > 0).astype(np.uint8), affine, path)


def write_nifti_image(data: np.ndarray, affine: Sequence[Sequence[float]], path: Path) -> Path:
    """``data`` as a NIfTI of its own dtype (float32 HU for images, uint8 for masks) in the given voxel order with
    ``affine`` (voxel -> RAS+ mm)."""
    import nibabel as nib
    image = nib.Nifti1Image(np.asarray(data), np.asarray(affine, dtype=np.float64))
    image.header.set_xyzt_units("mm")
    nib.save(image, str(path))
    return path


def deidentify(dataset: Any, pseudo_id: str, deid: Deidentifier | None = None) -> Any:
    """A de-identified copy of a pydicom Dataset (PS3.15 Annex E, see :mod:`annotations_db.deid`) whose PatientID and
    PatientName are the pseudonymous case id; ``deid``: the export run's de-identifier (default: a new one, i.e. new
    UIDs and options' defaults)."""
    return (deid or Deidentifier()).apply(dataset, pseudo_id)


def write_dicom_seg(mask: np.ndarray, source_path: Path | str, pseudo_id: str, path: Path,
                    label: str = "annotation", *, deid: Deidentifier | None = None,
                    segments: Sequence[ObjectLabel] | None = None) -> Path:
    """A binary DICOM-SEG of a single-frame source image, referencing its SOP instance; de-identified with ``deid``
    (the export run's: its references then match that run's image copies). ``segments``: one segment per label,
    ``mask`` then (rows, columns, segments) (every writer here takes a trailing segment axis so)."""
    import pydicom
    return _write_seg([pydicom.dcmread(str(source_path))], np.asarray(mask)[None], pseudo_id, path, label, deid,
                      segments)


def _frames(mask: np.ndarray) -> np.ndarray:
    """(I, J, K[, segments]) voxels → (K, J, I[, segments]) frames: frame k is ``mask[:, :, k].T``."""
    mask = np.asarray(mask)
    return np.transpose(mask, (2, 1, 0) + tuple(range(3, mask.ndim)))


def write_series_dicom_seg(mask: np.ndarray, folder: Path | str, series_uid: str | None, pseudo_id: str, path: Path,
                           *, affine: Sequence[Sequence[float]] | None = None, label: str = "annotation",
                           deid: Deidentifier | None = None, segments: Sequence[ObjectLabel] | None = None) -> Path:
    """A multi-frame binary DICOM-SEG of a volume imported from a folder of single-frame slices; de-identified.

    ``mask`` is (Columns, Rows, slices) in the case's voxel order (the order :func:`core_model.io.load_volume` gives
    the series): frame k is ``mask[:, :, k].T``, the (Rows, Columns) plane of the k-th slice by position along the
    slice normal, and references that slice's SOP instance. ExportError naming the case when the series no longer
    loads (a slice missing...) or its slice count, size or geometry (``affine``: the case's) differ from the mask's.
    """
    layout = _series_layout(folder, series_uid, pseudo_id)
    _check_series_layout(layout, np.shape(mask)[:3], affine, pseudo_id)
    frames = _frames(mask)  # mask[i, j, k] = row j, column i of slice k
    return _write_seg(layout.headers, frames, pseudo_id, path, label, deid, segments)


def write_multiframe_dicom_seg(mask: np.ndarray, source_path: Path | str, pseudo_id: str, path: Path,
                               label: str = "annotation", *, deid: Deidentifier | None = None,
                               segments: Sequence[ObjectLabel] | None = None) -> Path:
    """A binary DICOM-SEG of a volume imported from one multi-frame DICOM (e.g. an enhanced CT); de-identified.

    ``mask`` is (Columns, Rows, frames) in the file's frame order (as :func:`core_model.io.load_volume` gives it):
    SEG frame n is ``mask[:, :, n].T`` and references frame n + 1 of the source. ExportError naming the case when the
    file's frame count or size no longer match the mask, or when it lacks the plane geometry a SEG needs.
    """
    import pydicom
    source = pydicom.dcmread(str(source_path), stop_before_pixels=True)  # the SEG needs the header only
    shape = (int(source.Columns), int(source.Rows), int(source.get("NumberOfFrames") or 1))
    _require_mask_shape(shape, np.shape(mask)[:3], pseudo_id, "file", "frame")
    frames = _frames(mask)
    try:
        return _write_seg([source], frames, pseudo_id, path, label, deid, segments)
    except (ValueError, AttributeError, KeyError) as error:  # highdicom: no plane positions / orientation to derive
        raise ExportError(f"case {pseudo_id}: no DICOM-SEG for its multi-frame source {source_path}: {error}") \
            from error


def write_nifti_dicom_seg(mask: np.ndarray, affine: Sequence[Sequence[float]], pseudo_id: str, path: Path, *,
                          modality: str | None = None, label: str = "annotation",
                          deid: Deidentifier | None = None, segments: Sequence[ObjectLabel] | None = None) -> Path:
    """A multi-frame binary DICOM-SEG of a volume imported from a NIfTI file, on the NIfTI's own geometry.

    A SEG must reference source images and a NIfTI has none, so one header-only image per k-plane is derived from the
    affine (:func:`nifti_plane_headers`: same voxel grid, positions and orientation; pseudonymous patient, new study,
    series and frame of reference); each frame is a plane's ``mask[:, :, k].T`` (Rows = J, Columns = I), every
    plane kept (empty ones included). highdicom orders the frames by position, not by k (on the shipped RAS CT:
    decreasing z, frame f = plane K-1-f): map frames to planes by their Image Position (Patient) or their
    referenced plane, never by frame index."""
    headers = nifti_plane_headers(np.shape(mask)[:3], affine, pseudo_id, modality)
    return _write_seg(headers, _frames(mask), pseudo_id, path, label, deid, segments)


def nifti_plane_headers(shape: Sequence[int], affine: Sequence[Sequence[float]], pseudo_id: str,
                        modality: str | None = None) -> list[Any]:
    """Header-only single-frame images (pydicom Datasets, no pixel data), one per k-plane of a NIfTI voxel grid
    (I, J, K) with RAS+ ``affine``: Columns = I, Rows = J; Image Orientation (Patient) = the LPS directions of +i
    and +j; Pixel Spacing = (|j step|, |i step|) mm; Image Position (Patient) of plane k = LPS of voxel (0, 0, k) —
    the inverse of :func:`core_model.io.dicom_volume.plane_affine`, so the planes load back with this affine."""
    from pydicom.dataset import Dataset
    from pydicom.uid import generate_uid

    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine, dtype=np.float64)
    col_step, row_step, k_step = lps[:3, 0], lps[:3, 1], lps[:3, 2]
    col_mm, row_mm = float(np.linalg.norm(col_step)), float(np.linalg.norm(row_step))
    orientation = [float(v) for v in (*(col_step / col_mm), *(row_step / row_mm))]
    mr = (modality or "").upper() == "MR"
    study, series, frame_of_reference = generate_uid(), generate_uid(), generate_uid()
    headers = []
    for k in range(int(shape[2])):
        ds = Dataset()
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4" if mr else "1.2.840.10008.5.1.4.1.1.2"
        ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), study, series
        ds.FrameOfReferenceUID, ds.Modality = frame_of_reference, "MR" if mr else "CT"
        ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = pseudo_id, pseudo_id, "", ""
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "", "", "1", "", ""
        ds.SeriesNumber, ds.InstanceNumber = 1, k + 1
        ds.Rows, ds.Columns = int(shape[1]), int(shape[0])
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelSpacing = [row_mm, col_mm]
        ds.SliceThickness = float(np.linalg.norm(k_step))
        ds.ImageOrientationPatient = orientation
        ds.ImagePositionPatient = [float(v) for v in (lps @ np.array([0.0, 0.0, float(k), 1.0]))[:3]]
        headers.append(ds)
    return headers


def _series_layout(folder: Path | str, series_uid: str | None, pseudo_id: str) -> SeriesLayout:
    """The series' files in slice order (headers only); ExportError naming the case when it cannot be arranged."""
    from core_model.errors import ImageReadError
    from core_model.io import series_layout
    try:
        return series_layout(folder, series_uid=series_uid)
    except ImageReadError as error:
        raise ExportError(f"case {pseudo_id}: its DICOM series no longer loads, no DICOM-SEG: {error}") from error


def _check_series_layout(layout: SeriesLayout, shape: tuple[int, ...], affine: Sequence[Sequence[float]] | None,
                         pseudo_id: str) -> None:
    """ExportError naming the case when the series on disk no longer matches the mask (voxels) or ``affine``."""
    _require_mask_shape(layout.shape, shape, pseudo_id, "series", "slice")
    if affine is not None and not np.allclose(layout.affine, np.asarray(affine, dtype=np.float64), atol=1e-3):
        raise ExportError(f"case {pseudo_id}: its DICOM series' slice positions or orientation changed since "
                          "import, no DICOM-SEG")


def _require_mask_shape(found: Sequence[int], shape: Sequence[int], pseudo_id: str, source: str, unit: str) -> None:
    """ExportError naming the case when its DICOM ``source`` (file or series) now has another (Columns, Rows,
    frames or slices) shape than the mask."""
    if tuple(found) != tuple(shape):
        raise ExportError(f"case {pseudo_id}: its DICOM {source} now has {found[2]} {unit}(s) of {found[1]}x{found[0]} "
                          f"(Rows x Columns) but the mask has {shape[2]} of {shape[1]}x{shape[0]}: the {source} "
                          "changed since import, no DICOM-SEG")


def _write_seg(sources: Sequence[Any], frames: np.ndarray, pseudo_id: str, path: Path, label: str,
               deid: Deidentifier | None = None, segments: Sequence[ObjectLabel] | None = None) -> Path:
    """The one DICOM-SEG builder: BINARY, frame n of ``frames`` (n, Rows, Columns) over ``sources[n]`` (pydicom
    Datasets, pixel data optional) or over frame n of one multi-frame source, every frame kept. ``segments``: one
    segment per object label (:func:`_object_segment`, numbered 1…), ``frames`` then (n, Rows, Columns, segments);
    else one segment labelled ``label`` (:func:`_segment_description`).

    The sources are de-identified first (``deid``: the export run's), so all the SEG copies from them (patient, study,
    frame of reference, references) is de-identified and remapped as their image copies are; then the SEG itself
    passes the same profile (its content date removed or shifted like the sources'; the UIDs the run issued kept)."""
    import highdicom as hd
    deid = deid or Deidentifier()
    seg = hd.seg.Segmentation(
        source_images=[_seg_source(deid.apply(source, pseudo_id)) for source in sources],
        pixel_array=(np.asarray(frames) > 0).astype(np.uint8), segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[_segment_description(label)] if segments is None
        else [_object_segment(number, spec) for number, spec in enumerate(segments, start=1)],
        series_instance_uid=hd.UID(), series_number=900,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="BiasCare",
        manufacturer_model_name="biascare-reader", software_versions="0.1", device_serial_number="0",
        omit_empty_frames=False)
    seg = deid.apply(seg, pseudo_id)  # the SEG's own dates follow the run's date policy; its UIDs stay (issued)
    seg.save_as(str(path), enforce_file_format=True)
    return path


def _seg_source(source: Any) -> Any:
    """A projection image (no plane orientation) without Slice Thickness loses its Pixel Spacing here (not in its
    image copy): highdicom would write a Pixel Measures Sequence without Slice Thickness, which it cannot read back."""
    if "ImageOrientationPatient" not in source and "SliceThickness" not in source and "PixelSpacing" in source:
        del source.PixelSpacing
    return source


def _segment_description(label: str) -> Any:
    """Segment 1: a manually drawn lesion labelled ``label``."""
    import highdicom as hd
    from pydicom.sr.codedict import codes
    return hd.seg.SegmentDescription(
        segment_number=1, segment_label=label, segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)


def _object_segment(number: int, spec: ObjectLabel) -> Any:
    """Segment ``number`` of a labelled object: its label, the label's segmented property category and type (a
    laterality as the type's SegmentedPropertyTypeModifierCodeSequence), its colour as the recommended display
    CIELab value; drawn by the reader (MANUAL)."""
    import highdicom as hd
    description = hd.seg.SegmentDescription(
        segment_number=number, segment_label=spec.name, segmented_property_category=spec.category.pydicom(),
        segmented_property_type=spec.type.pydicom(), algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        display_color=hd.color.CIELabColor.from_rgb(*spec.colour))
    if spec.modifier is not None:
        description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
            hd.sr.CodedConcept(spec.modifier.value, spec.modifier.scheme, spec.modifier.meaning)]
    return description


def export_masks(store_or_url: Store | str, out_dir: Path | str,
                 formats: Sequence[str] = ("png", "nifti", "dicom-seg", "coco"), *,
                 require_any: bool = False, deid: Deidentifier | None = None) -> dict[str, Any]:
    """Final masks at source geometry (see the module docstring); returns {case: {format: path}} and the COCO path.

    ``require_any``: ExportError, before anything is written, when no final mask can be written in ``formats``.
    ``deid``: the export run's de-identifier for the DICOM-SEGs (default: a new one for this export)."""
    store, owned = _store(store_or_url)
    out = Path(out_dir)
    try:
        with store.read_session() as session:
            finals = final_annotations(session)
            if require_any:
                _require_writable_masks(finals, formats, _labelled_answers(session, finals))
            written = _export_final_masks(session, finals, out, formats, deid or Deidentifier())
    finally:
        if owned:
            store.close()
    result: dict[str, Any] = {"masks": written}
    if "coco" in formats:
        result["coco"] = str(out / "coco.json")
    return result


def _labelled_answers(session: Any, finals: Sequence[tuple[Case, Annotation]]) -> set[int]:
    """The ids of the cases among ``finals`` whose answer has labelled objects (a 2-D one gets a multi-label NIfTI)."""
    return {case.id for case, annotation in finals
            if any(o.label is not None for o in answer_objects(session, annotation.id))}


def _require_writable_masks(finals: Sequence[tuple[Case, Annotation]], formats: Sequence[str],
                            labelled: set[int] | frozenset[int] = frozenset()) -> None:
    """ExportError unless some final annotation has a mask that one of ``formats`` applies to."""
    masked = [case for case, annotation in finals if annotation.mask_rle is not None]
    if not masked:
        raise ExportError(f"no masks to export: none of the {len(finals)} final annotations has a mask")
    applies = {"png": lambda c: c.depth is None, "coco": lambda c: c.depth is None,
               "nifti": lambda c: c.depth is not None or c.id in labelled,
               "dicom-seg": lambda c: c.format == "dicom" or c.depth is not None}
    if not any(applies.get(fmt, lambda c: False)(case) for case in masked for fmt in formats):
        raise ExportError(f"no masks to export as {', '.join(formats)}: the {len(masked)} masks are of other kinds "
                          "(png/coco: 2-D cases, nifti: volumes, dicom-seg: DICOM sources and volumes)")


def require_final_annotations(store_or_url: Store | str) -> int:
    """The number of annotated cases (what a training export writes); ExportError when there is none."""
    store, owned = _store(store_or_url)
    try:
        with store.read_session() as session:
            count = len(final_annotations(session))
    finally:
        if owned:
            store.close()
    if not count:
        raise ExportError("no annotations yet: no training manifest to export")
    return count


def _write_case_masks(case: Case, objects: Sequence[ExportObject], out: Path, formats: Sequence[str],
                      deid: Deidentifier | None = None) -> dict[str, Any]:
    """The case's mask files: {format: path}, and ``objects``: {object id (text): {label, png | nifti: path}}.

    One default object (an answer as before objects): the one-mask files as ever. Several objects, or labelled
    ones: one PNG per object (2-D), one binary NIfTI per object (volumes), one multi-label NIfTI ``<case>.nii.gz``
    (value n = the n-th object; a voxel in two objects keeps the later one) with its label table ``<case>.labels.json``,
    one DICOM-SEG with one segment per object."""
    if len(objects) == 1 and objects[0].id == DEFAULT_OBJECT:
        paths: dict[str, Any] = _write_one_mask(case, objects[0].mask, out, formats, deid)
        paths["objects"] = {str(DEFAULT_OBJECT): {"label": None, **{k: v for k, v in paths.items()
                                                                   if k in ("png", "nifti")}}}
        return paths
    return _write_object_masks(case, objects, out, formats, deid)


def _write_object_masks(case: Case, objects: Sequence[ExportObject], out: Path, formats: Sequence[str],
                        deid: Deidentifier | None) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    per_object: dict[str, dict[str, Any]] = {str(o.id): {"label": o.label} for o in objects}
    base = out / "masks" / case.pseudo_id
    for found in objects:
        if case.depth is None and "png" in formats:
            per_object[str(found.id)]["png"] = str(write_png_mask(found.mask, out / "masks" /
                                                                  f"{found.file_stem(case)}.png"))
        if case.depth is not None and "nifti" in formats:
            nifti = out / "masks" / f"{found.file_stem(case)}.nii.gz"
            per_object[str(found.id)]["nifti"] = str(write_nifti_mask(found.mask, _volume_affine(case), nifti))
    if "nifti" in formats:
        paths["nifti"], paths["labels"] = (str(p) for p in write_label_map(case, objects, Path(f"{base}.nii.gz")))
    if "dicom-seg" in formats and (case.format == "dicom" or (case.depth is not None and case.affine is not None)):
        stacked = np.stack([o.mask for o in objects], axis=-1)
        paths["dicom-seg"] = _write_seg_of(case, stacked, Path(f"{base}.seg.dcm"), deid, [o.spec for o in objects])
    paths["objects"] = per_object
    return paths


def _volume_affine(case: Case) -> Sequence[Sequence[float]]:
    if case.affine is None:
        raise ExportError(f"case {case.pseudo_id}: a volume without a source affine")
    return case.affine


def write_label_map(case: Case, objects: Sequence[ExportObject], path: Path) -> tuple[Path, Path]:
    """A multi-label NIfTI of the objects (uint8/uint16, 0 = none, n = the n-th object; a voxel in two objects keeps
    the later one) and its label table ``<stem>.labels.json``: ``{"case", "labels": [{"value", "object", "label",
    "category", "type", "modifier", "colour", "voxels"}]}`` (codes as ``{value, scheme, meaning}``). A volume in
    its source voxel order with the source affine; a 2-D image as (columns, rows, 1) voxels with the pixel spacing
    (when known) as the affine."""
    dtype = np.uint8 if len(objects) < 256 else np.uint16
    label_map = np.zeros(objects[0].mask.shape, dtype=dtype)
    for value, found in enumerate(objects, start=1):
        label_map[found.mask > 0] = value
    entries = [{"value": value, "object": found.id, **found.spec.as_dict(), "label": found.name,
                "voxels": int(np.count_nonzero(label_map == value))} for value, found in enumerate(objects, start=1)]
    if case.depth is not None:
        write_nifti_image(label_map, _volume_affine(case), path)
    else:
        write_nifti_image(label_map.T[:, :, None], _plane_affine(case), path)
    table = path.with_name(path.name.replace(".nii.gz", "").replace(".nii", "") + ".labels.json")
    table.write_text(json.dumps({"case": case.pseudo_id, "labels": entries}, indent=1))
    return path, table


def _plane_affine(case: Case) -> np.ndarray:
    """A 2-D image's NIfTI affine: (column, row) steps of its pixel spacing in mm when known, else 1 mm."""
    spacing = [float(v) for v in (case.spacing or [])[:2]] or [1.0, 1.0]
    row_mm, col_mm = (spacing + spacing)[:2]
    return np.diag([col_mm, row_mm, 1.0, 1.0])


def _write_seg_of(case: Case, mask: np.ndarray, seg: Path, deid: Deidentifier | None,
                  segments: Sequence[ObjectLabel] | None) -> str:
    """The case's DICOM-SEG (a DICOM source: over its instances; a NIfTI volume: over planes derived from its
    affine); ``segments``: one per label, ``mask`` with a trailing segment axis."""
    if case.format == "dicom":
        _require_source(case)
        if case.depth is None:
            return str(write_dicom_seg(mask, case.source_uri, case.pseudo_id, seg, deid=deid, segments=segments))
        if is_series_case(case):
            return str(write_series_dicom_seg(mask, case.source_uri, case.series_uid, case.pseudo_id, seg,
                                              affine=case.affine, deid=deid, segments=segments))
        return str(write_multiframe_dicom_seg(mask, case.source_uri, case.pseudo_id, seg, deid=deid,
                                              segments=segments))
    return str(write_nifti_dicom_seg(mask, case.affine, case.pseudo_id, seg, modality=case.modality, deid=deid,
                                     segments=segments))


def _write_one_mask(case: Case, mask: np.ndarray, out: Path, formats: Sequence[str],
                    deid: Deidentifier | None = None) -> dict[str, str]:
    """The one mask of a single-object answer (the files every answer had before objects)."""
    paths: dict[str, str] = {}
    base = out / "masks" / case.pseudo_id
    if case.depth is None and "png" in formats:
        paths["png"] = str(write_png_mask(mask, base.with_suffix(".png")))
    if case.depth is not None and "nifti" in formats:
        if case.affine is None:
            raise ExportError(f"case {case.pseudo_id}: a volume without a source affine")
        paths["nifti"] = str(write_nifti_mask(mask, case.affine, Path(f"{base}.nii.gz")))
    if "dicom-seg" in formats and (case.format == "dicom" or (case.depth is not None and case.affine is not None)):
        paths["dicom-seg"] = _write_seg_of(case, mask, Path(f"{base}.seg.dcm"), deid, None)  # a NIfTI: derived planes
    return paths


def write_coco(items: Sequence[tuple[Case, Sequence[ExportObject]]], path: Path) -> Path:
    """COCO instances JSON: one image per case (pseudonymous file name), one annotation per object of its final
    answer (compressed RLE) in the category of its label: category 1 is ``annotation`` (the default object), the
    labels follow in order of first use, each with its codes (``type``, ``modifier``) and ``supercategory``
    (anatomy, finding or device)."""
    images, annotations = [], []
    categories: dict[str | None, dict[str, Any]] = {None: {"id": 1, "name": "annotation", "supercategory": "finding"}}
    for image_id, (case, objects) in enumerate(items, start=1):
        images.append({"id": image_id, "file_name": f"{case.pseudo_id}{_image_suffix(case)}",
                       "height": case.height, "width": case.width})
        for found in objects:
            category = categories.setdefault(found.label, _coco_category(len(categories) + 1, found.spec))
            mask_rle = rle.encode(found.mask)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category["id"],
                                "iscrowd": 1, "object": found.id,
                                "segmentation": {"size": mask_rle["size"], "counts": mask_rle["counts"]},
                                "area": rle.area(mask_rle), "bbox": rle.bbox(mask_rle)})
    document = {"info": {"description": "BiasCare reader final masks", "date_created": _iso(utcnow())},
                "images": images, "annotations": annotations, "categories": list(categories.values())}
    path.write_text(json.dumps(document))
    return path


def _coco_category(category_id: int, spec: ObjectLabel) -> dict[str, Any]:
    from core_model.objects import ANATOMY, PHYSICAL_OBJECT
    supercategory = {ANATOMY: "anatomy", PHYSICAL_OBJECT: "device"}.get(spec.category, "finding")
    return {"id": category_id, "name": spec.name, "supercategory": supercategory, "type": spec.type.as_dict(),
            "modifier": None if spec.modifier is None else spec.modifier.as_dict()}


# -- images, datalist, training manifest -----------------------------------------------------------------------------
def is_series_case(case: Case) -> bool:
    """A volume imported from a folder of single-frame DICOM slices (``source_uri`` = the folder)."""
    return case.format == "dicom" and case.depth is not None and Path(case.source_uri).is_dir()


def _require_source(case: Case) -> None:
    """The case's source file or DICOM series folder must still exist: an export never silently drops it."""
    if not Path(case.source_uri).exists():
        raise ExportError(f"case {case.pseudo_id}: its source {case.source_uri} no longer exists "
                          "(moved or deleted since import)")


def _image_suffix(case: Case) -> str:
    source = case.source_uri.lower()
    if source.endswith(".nii.gz") or is_series_case(case):
        return ".nii.gz"
    return {"png": ".png", "jpeg": ".jpg", "dicom": ".dcm", "nifti": ".nii"}.get(case.format, Path(source).suffix)


def copy_image(case: Case, images_dir: Path, deid: Deidentifier | None = None) -> Path:
    """A de-identified copy of the source image named by the pseudonymous id (DICOM headers de-identified with
    ``deid``, the export run's: a DICOM-SEG of the same run references the copy's UIDs).

    A DICOM series case becomes one NIfTI (float32 modality values in the case's voxel order, with its affine), the
    geometry its NIfTI masks have; no DICOM header, hence no identifier, is copied.
    """
    _require_source(case)
    target = images_dir / f"{case.pseudo_id}{_image_suffix(case)}"
    if is_series_case(case):
        volume = source_volume(case)
        write_nifti_image(volume.data.astype(np.float32), volume.affine, target)
    elif case.format == "dicom":
        import pydicom
        deidentify(pydicom.dcmread(case.source_uri), case.pseudo_id, deid).save_as(str(target),
                                                                                 enforce_file_format=True)
    else:
        shutil.copyfile(case.source_uri, target)
    return target


def _annotation_events(session: Any, annotation: Annotation) -> list[EventRecord]:
    """The case session that ended with ``annotation``'s submit."""
    query = select(Event).where(Event.case_id == annotation.case_id, Event.reader_id == annotation.reader_id)
    query = query.where(Event.assignment_id == annotation.assignment_id if annotation.assignment_id is not None
                        else Event.assignment_id.is_(None))
    events = [EventRecord(e.id, e.kind, e.payload, e.wall_at, e.mono_ns, e.clock_id)
              for e in session.scalars(query.order_by(Event.id))]
    return submitted_session(events, annotation.id)


def export_training(store_or_url: Store | str, out_dir: Path | str, *, images: str = "copy",
                    formats: Sequence[str] = ("png", "nifti", "dicom-seg", "coco"),
                    deid_options: DeidOptions | None = None, selection: Selection | None = None,
                    heldout: bool = False) -> Path:
    """Images, masks of record, MONAI datalist and the training manifest (:mod:`annotations_db.manifest`).

    The site's held-out split (:mod:`annotations_db.site`) is never in it; ``heldout=True`` writes the held-out
    cases instead (split ``heldout``: what the promotion gate evaluates on, never trained on). ``selection`` narrows
    datasets, studies and classes. ``images`` must be ``"copy"``: de-identified copies named by pseudonymous id, paths
    relative to the manifest. ``"source"`` (the server's source paths) is refused with ExportError: a path names the
    server's folders and often the patient or the accession, and a manifest leaves the server. One de-identifier
    (``deid_options``; one UID map, one date offset) serves the whole run, so every DICOM-SEG references its exported
    image copy."""
    from annotations_db.site import heldout_split

    if images != "copy":
        raise ExportError(f"images={images!r} refused: a training export never writes server paths; use images='copy' "
                          "(de-identified copies named by pseudonymous id)")
    store, owned = _store(store_or_url)
    out = Path(out_dir)
    deid = Deidentifier(deid_options)
    selection = selection or Selection()
    try:
        split = heldout_split(store)
        with store.read_session() as session:
            finals = final_annotations(session, selection)
            chosen = [(c, a) for c, a in finals if split.contains(c.pseudo_id) == heldout]
            masks = _export_final_masks(session, chosen, out, formats, deid)
        (out / "images").mkdir(parents=True, exist_ok=True)
        with store.read_session() as session:
            versions = {v.id: v.name for v in session.scalars(select(ModelVersion))}
            items = [item for case, annotation in chosen
                     for item in _manifest_items(session, case, annotation, masks.get(case.pseudo_id, {}), out, deid,
                                                 versions, selection, heldout)]
    finally:
        if owned:
            store.close()
    document = {**manifest_contract.header(_label_set(items), _iso(utcnow()), split.share, len(finals) - len(chosen)),
                "items": items}
    (out / "manifest.json").write_text(json.dumps(document, indent=1))
    (out / "manifest.jsonl").write_text("".join(json.dumps(item) + "\n" for item in items))
    write_datalist(items, out / "datalist.json")
    write_label_table(items, document["label_set"], out / manifest_contract.LABELS_CSV)
    return out / "manifest.json"


def write_label_table(items: Sequence[dict[str, Any]], classes: Sequence[str], path: Path) -> Path:
    """The items' labels of record in the CXR-LT ``train_labeled.csv`` layout (``fpath`` relative to the file, one
    column per class, 1/0, blank = not assessed), 2-D images only: what ``launch.py train --task cls --cls-csv``
    reads."""
    rows = [{"dicom_id": item["case_id"], "fpath": item["image"],
             **{c: item["labels"].get(c, "") for c in classes}}
            for item in items if not item["image"].endswith((".nii", ".nii.gz"))]
    pd.DataFrame(rows, columns=["dicom_id", "fpath", *classes]).to_csv(path, index=False)
    return path


def _export_final_masks(session: Any, finals: Sequence[tuple[Case, Annotation]], out: Path, formats: Sequence[str],
                        deid: Deidentifier) -> dict[str, dict[str, Any]]:
    """The masks of ``finals``' objects (:func:`objects_at_source`) in ``formats`` under ``out/masks`` (COCO of the
    2-D ones); {case: {format: path, "objects": {id: {label, format: path}}}} (:func:`_write_case_masks`)."""
    (out / "masks").mkdir(parents=True, exist_ok=True)
    written: dict[str, dict[str, Any]] = {}
    coco_items = []
    for case, annotation in finals:
        objects = objects_at_source(session, case, annotation)
        if not objects:
            continue
        written[case.pseudo_id] = _write_case_masks(case, objects, out, formats, deid)
        if case.depth is None:
            coco_items.append((case, objects))
    if "coco" in formats:
        write_coco(coco_items, out / "coco.json")
    return written


def _label_set(items: Sequence[dict[str, Any]]) -> list[str]:
    """The classes of the smallest CXR-LT label set holding every class the items' labels use (in its order), else
    those classes sorted."""
    from core_model.classes import label_set
    used = {name for item in items for name in item["labels"]}
    for name in ("cxr-lt-26", "cxr-lt-40"):
        if used <= set(label_set(name)):
            return list(label_set(name))
    return sorted(used)


def _manifest_items(session: Any, case: Case, annotation: Annotation, masks: dict[str, Any], out: Path,
                    deid: Deidentifier, versions: dict[int, str], selection: Selection,
                    heldout: bool) -> list[dict[str, Any]]:
    """The manifest entries of one answer of record: one per object (its own binary mask, label and edits); an
    answer without a mask one entry with ``mask`` null."""
    image = copy_image(case, out / "images", deid).relative_to(out).as_posix()
    events = _annotation_events(session, annotation)
    objects = masks.get("objects") or {str(DEFAULT_OBJECT): {"label": None}}
    items = []
    for key, found in objects.items():
        mask = found.get("png") or found.get("nifti")
        item = _manifest_item(case, annotation, image, mask, out, versions, selection, heldout)
        spec = _label_spec(case, AnswerObjectRecord(annotation.id, int(key), found.get("label"), {}, None, None))
        items.append({**item, **_edit_fields(events, int(key)),
                      "object": {"id": int(key), "label": found.get("label"), "type": spec.type.as_dict(),
                                 "modifier": None if spec.modifier is None else spec.modifier.as_dict()}})
    return items


def _manifest_item(case: Case, annotation: Annotation, image: str, mask: str | None, out: Path,
                   versions: dict[int, str], selection: Selection, heldout: bool) -> dict[str, Any]:
    try:
        split = manifest_contract.HELDOUT if heldout else manifest_contract.normalise_split(case.split)
    except manifest_contract.ManifestError as error:
        raise ExportError(f"case {case.pseudo_id}: {error}") from None
    if split == manifest_contract.HELDOUT and not heldout:
        raise ExportError(f"case {case.pseudo_id}: imported with split {case.split!r}, the name of the site's "
                          "held-out split; re-import it with train, validation or test")
    return {"case_id": case.pseudo_id, "image": image,
            "mask": Path(mask).relative_to(out).as_posix() if mask else None,
            "labels": selection.labels(annotation.labels),
            "model_version": versions.get(annotation.model_version_id), "accepted_as_is": annotation.accepted_as_is,
            "slice_index": annotation.slice_index, "modality": case.modality, "split": split,
            "source": "free" if annotation.assignment_id is None else "aided"}


def _edit_fields(events: Sequence[EventRecord], object_id: int = DEFAULT_OBJECT) -> dict[str, Any]:
    """What the reader did to an object's mask (:func:`annotations_db.events.slice_edits`, original pixel-index
    coordinates): the clicks, box, brush/eraser strokes and cleanup behind the slice shown at submit (a 2-D image's
    mask), and for a volume ``slices``: the same per slice the answer keeps a mask of (keys: slice index as text)."""
    per_slice = slice_edits(events, object_id)
    shown = per_slice.get(replay(events).slice, {})
    fields = {"clicks": effective_clicks(events, object_id), "box": shown.get("box"), "edits": shown.get("edits", []),
              "cleanup": shown.get("cleanup")}
    volume = {str(k): v for k, v in per_slice.items() if k is not None}
    return {**fields, "slices": volume} if volume else fields


def write_datalist(items: Sequence[dict[str, Any]], path: Path) -> Path:
    """MONAI-style datalist: items with a mask, grouped by their (canonical) split; no split → training, the held-out
    split → test."""
    groups: dict[str, list[dict[str, Any]]] = {"training": [], "validation": [], "test": []}
    names = {None: "training", "train": "training", "validation": "validation", "test": "test",
             manifest_contract.HELDOUT: "test"}
    for item in items:
        if item["mask"] is None:
            continue
        groups[names[manifest_contract.normalise_split(item["split"])]].append(
            {"image": item["image"], "label": item["mask"], "case_id": item["case_id"]})
    path.write_text(json.dumps(groups, indent=1))
    return path
