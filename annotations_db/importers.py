"""Import of hospital and challenge data into the case tables.

    import_images(store, "cxr_lungs/images", "lungs", masks_dir="cxr_lungs/masks", mask_pattern="{stem}_lung.png",
                  demographics_csv="cxr_lungs/metadata.csv")
    import_dicom(store, "/pacs/export", "site-a")            # recursive; CR/DX/... one case per instance,
                                                              # CT/MR series one volume case (single-frame
                                                              # slices or one multi-frame file)
    import_nifti(store, "ct_nifti", "ct")                     # *_mask* / *_seg* files become the image's masks
    import_cxr_lt(store, "train_labeled.csv", "cxr-lt", image_root="/data/mimic", demographics_csv="demo.csv")
    import_path(store, path, dataset, kind="auto")            # picks one of the above

Every importer is idempotent by sha256 (a file already in the database is skipped; a DICOM series by the hash of its
files' sha256s), writes each case with its labels, masks and identifiers in one transaction (no half-written case),
and reports per-file errors (typed :class:`~annotations_db.errors.ImportFileError` naming the file and cause) and
skips them. ``strict=True`` checks every file first and writes nothing if any fails
(:class:`~annotations_db.errors.ImportFailed`). Structural CSV errors (missing or unknown columns, duplicate rows, bad
label values) always abort before anything is written.
"""
from __future__ import annotations

import csv
import hashlib
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from annotations_db import rle
from annotations_db.errors import (BadCsv, ImportFailed, ImportFileError, PathOutsideRoot, UnknownClass,
                                   UnreadableFile)
from annotations_db.models import Case, CaseIdentity, CaseLabel, CaseMask, Dataset
from annotations_db.store import Store, new_pseudo_id

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
MASK_MARKERS = ("mask", "seg")
CXR_LT_REQUIRED = ("dicom_id", "fpath")
CXR_LT_INFO = ("subject_id", "study_id", "ViewPosition", "ViewCodeSequence_CodeMeaning", "PatientAge", "PatientSex",
               "PatientRace", "race", "split")
DEMOGRAPHIC_KEYS = ("fpath", "filename", "Image Index", "dicom_id", "path", "file", "subject_id")
SEX_COLUMNS = ("sex", "PatientSex", "Patient Gender", "gender")
AGE_COLUMNS = ("age", "PatientAge", "Patient Age", "anchor_age")
RACE_COLUMNS = ("race", "PatientRace", "Race", "ethnicity")
VIEW_COLUMNS = ("view", "ViewPosition", "View Position")


@dataclass
class CaseRecord:
    """Everything one case brings into the database, read before any write."""
    path: Path
    sha256: str
    format: str
    width: int
    height: int
    depth: int | None = None
    modality: str | None = None
    spacing: list[float] | None = None
    affine: list[list[float]] | None = None
    frame_count: int = 1
    sex: str | None = None
    age: float | None = None
    race: str | None = None
    view: str | None = None
    study_uid: str | None = None
    series_uid: str | None = None
    sop_instance_uid: str | None = None
    sop_class_uid: str | None = None
    source_key: str | None = None
    split: str | None = None
    patient_id: str | None = None
    patient_name: str | None = None
    birth_date: str | None = None
    labels: dict[str, int] = field(default_factory=dict)
    masks: dict[str, tuple[dict[str, Any], str]] = field(default_factory=dict)  # name -> (RLE, source path)


@dataclass
class ImportReport:
    dataset: str
    imported: list[str] = field(default_factory=list)  # pseudonymous ids of new cases
    skipped: list[Path] = field(default_factory=list)  # already in the database (same sha256)
    errors: list[ImportFileError] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        """Files handled per second (imported + skipped)."""
        return (len(self.imported) + len(self.skipped)) / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        return (f"{self.dataset}: {len(self.imported)} imported, {len(self.skipped)} already present, "
                f"{len(self.errors)} error(s) in {self.seconds:.1f} s")


# -- shared machinery ------------------------------------------------------------------------------------------------
class AlreadyPresent(Exception):
    """Internal: the file's sha256 is in the database already (checked before decoding)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        super().__init__(str(path))


def hash_new_file(path: Path, known: set[str] | None) -> str:
    """sha256 of ``path``; AlreadyPresent when it is in ``known`` (so a re-import never decodes)."""
    from core_model.io import sha256_file
    try:
        digest = sha256_file(path)
    except OSError as error:
        raise UnreadableFile(path, str(error)) from error
    if known is not None and digest in known:
        raise AlreadyPresent(path)
    return digest


def _progress(items: Sequence[Any], label: str, enabled: bool) -> Iterable[Any]:
    if not enabled:
        return items
    from tqdm import tqdm
    return tqdm(items, desc=label, unit="file")


def _run(store: Store, dataset: str, kind: str, root: Path, jobs: Sequence[Any],
         read: Callable[[Any, set[str]], CaseRecord], *, strict: bool, progress: bool) -> ImportReport:
    """Read every job into a CaseRecord (errors collected), then write each record in its own transaction."""
    started = time.perf_counter()
    report = ImportReport(dataset)
    known = _known_hashes(store)
    records: list[CaseRecord] = []
    for job in _progress(jobs, f"import {dataset}", progress):
        try:
            record = read(job, known)
        except AlreadyPresent as present:
            report.skipped.append(present.path)
            continue
        except ImportFileError as error:
            report.errors.append(error)
            continue
        if record.sha256 in known:
            report.skipped.append(record.path)
            continue
        known.add(record.sha256)
        if strict:
            records.append(record)
        else:
            _write_one(store, dataset, kind, root, record, report)
    if strict:
        if report.errors:
            raise ImportFailed(report.errors)
        _write_all(store, dataset, kind, root, records, report)
    report.seconds = time.perf_counter() - started
    return report


def _known_hashes(store: Store) -> set[str]:
    with store.read_session() as session:
        return set(session.scalars(select(Case.sha256)))


def _dataset_id(session: Any, name: str, kind: str, root: Path) -> int:
    found = session.scalar(select(Dataset.id).where(Dataset.name == name))
    if found is not None:
        return found
    row = Dataset(name=name, kind=kind, root=str(root))
    session.add(row)
    session.flush()
    return row.id


def _write_one(store: Store, dataset: str, kind: str, root: Path, record: CaseRecord, report: ImportReport) -> None:
    try:
        with store.write_session() as session:
            pseudo = _insert_case(session, _dataset_id(session, dataset, kind, root), record)
        report.imported.append(pseudo)
    except IntegrityError:  # another importer wrote the same image meanwhile
        report.skipped.append(record.path)


def _write_all(store: Store, dataset: str, kind: str, root: Path, records: list[CaseRecord],
               report: ImportReport) -> None:
    with store.write_session() as session:
        dataset_id = _dataset_id(session, dataset, kind, root)
        report.imported += [_insert_case(session, dataset_id, record) for record in records]


def _insert_case(session: Any, dataset_id: int, r: CaseRecord) -> str:
    case = Case(pseudo_id=new_pseudo_id(), dataset_id=dataset_id, source_uri=str(r.path), source_key=r.source_key,
                sha256=r.sha256, modality=r.modality, format=r.format, width=r.width, height=r.height, depth=r.depth,
                spacing=r.spacing, affine=r.affine, sex=r.sex, age=r.age, race=r.race, view=r.view,
                study_uid=r.study_uid, series_uid=r.series_uid, sop_instance_uid=r.sop_instance_uid,
                sop_class_uid=r.sop_class_uid, split=r.split)
    case.labels = [CaseLabel(class_name=name, value=value, source="ground_truth") for name, value in r.labels.items()]
    case.masks = [CaseMask(name=name, rle=mask, source_uri=source) for name, (mask, source) in r.masks.items()]
    if r.patient_id or r.patient_name or r.birth_date:
        case.identity = CaseIdentity(patient_id=r.patient_id, patient_name=r.patient_name, birth_date=r.birth_date)
    session.add(case)
    session.flush()
    return case.pseudo_id


def inside_root(root: Path, relative: str) -> Path:
    """``root / relative`` resolved; PathOutsideRoot if it escapes ``root`` (``..``, absolute paths, symlinks)."""
    base = root.resolve()
    candidate = (base / relative).resolve()
    if candidate != base and base not in candidate.parents:
        raise PathOutsideRoot(relative, f"resolves to {candidate}, outside the import root {base}")
    return candidate


def _sex(value: Any) -> str | None:
    text = str(value or "").strip().upper()
    return {"M": "M", "MALE": "M", "F": "F", "FEMALE": "F", "O": "O", "OTHER": "O"}.get(text)


def _age(value: Any) -> float | None:
    text = str(value if value is not None else "").strip()
    if not text:
        return None
    try:
        from core_model.io import parse_age
        return parse_age(text) if text[-1:].upper() in "YMWD" and not text[-1:].isdigit() else float(text)
    except (TypeError, ValueError):
        return None


def _first_value(row: dict[str, str], columns: Sequence[str]) -> str | None:
    for column in columns:
        value = row.get(column)
        if value not in (None, ""):
            return value
    return None


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
            return list(reader.fieldnames or []), rows
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise BadCsv(path, f"cannot read CSV: {error}") from error


# -- demographics -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Demographics:
    sex: str | None
    age: float | None
    race: str | None
    view: str | None


def load_demographics(path: Path | str) -> dict[str, Demographics]:
    """A demographics CSV keyed by file path, file name, stem, dicom_id or subject_id (whichever columns exist)."""
    path = Path(path)
    columns, rows = _read_csv(path)
    keys = [c for c in DEMOGRAPHIC_KEYS if c in columns]
    if not keys:
        raise BadCsv(path, f"demographics CSV needs one of the key columns {list(DEMOGRAPHIC_KEYS)}; has {columns}")
    if not any(c in columns for c in SEX_COLUMNS + AGE_COLUMNS + RACE_COLUMNS):
        raise BadCsv(path, f"demographics CSV has none of the columns {list(SEX_COLUMNS + AGE_COLUMNS + RACE_COLUMNS)}")
    table: dict[str, Demographics] = {}
    for row in rows:
        entry = Demographics(_sex(_first_value(row, SEX_COLUMNS)), _age(_first_value(row, AGE_COLUMNS)),
                             _first_value(row, RACE_COLUMNS), _first_value(row, VIEW_COLUMNS))
        for key in keys:
            value = (row.get(key) or "").strip()
            if value:
                table.setdefault(value, entry)
                table.setdefault(Path(value).name, entry)
                table.setdefault(Path(value).stem, entry)
    return table


def _apply_demographics(record: CaseRecord, table: dict[str, Demographics] | None, *keys: str | None) -> None:
    if not table:
        return
    for key in (*keys, record.path.name, record.path.stem):
        entry = table.get(key) if key else None
        if entry is not None:
            record.sex = entry.sex or record.sex
            record.age = entry.age if entry.age is not None else record.age
            record.race = entry.race or record.race
            record.view = entry.view or record.view
            return


# -- 2-D images ------------------------------------------------------------------------------------------------------
def read_image_record(path: Path, known: set[str] | None = None) -> CaseRecord:
    """Geometry, hash and DICOM demographics of one 2-D image file, via core_model.io.load_image."""
    from core_model.errors import ImageReadError
    from core_model.io import load_image
    digest = hash_new_file(path, known)
    try:
        image = load_image(path)
    except ImageReadError as error:
        raise UnreadableFile(path, error.cause) from error
    except OSError as error:
        raise UnreadableFile(path, str(error)) from error
    meta = image.metadata
    height, width = image.pixels.shape[:2]
    return CaseRecord(
        path=path, sha256=digest, format=meta.format, width=int(width), height=int(height), modality=meta.modality,
        spacing=list(meta.spacing) if meta.spacing else None, frame_count=meta.frame_count,
        sex=_sex(meta.patient_sex), age=meta.patient_age, study_uid=meta.study_uid, series_uid=meta.series_uid,
        sop_instance_uid=meta.sop_instance_uid, sop_class_uid=meta.sop_class_uid, source_key=path.name,
        patient_id=meta.patient_id, patient_name=meta.patient_name, birth_date=meta.birth_date,
        view=meta.extra.get("view_position") if isinstance(meta.extra, dict) else None)


def _attach_mask(record: CaseRecord, mask_path: Path, name: str) -> None:
    from core_model.errors import ImageReadError
    from core_model.io import load_mask
    shape = (record.height, record.width) if record.depth is None else (record.width, record.height, record.depth)
    try:
        mask = load_mask(mask_path, shape)
    except ImageReadError as error:
        raise UnreadableFile(mask_path, error.cause) from error
    record.masks[name] = (rle.encode(mask), str(mask_path))


def import_images(store: Store, root: Path | str, dataset: str, *, masks_dir: Path | str | None = None,
                  mask_pattern: str = "{stem}_mask.png", mask_name: str = "mask",
                  demographics_csv: Path | str | None = None, recursive: bool = True, strict: bool = False,
                  progress: bool = True) -> ImportReport:
    """A folder of PNG/JPG files (optionally with one mask per image found by ``mask_pattern`` in ``masks_dir``)."""
    root = Path(root)
    if not root.is_dir():
        raise UnreadableFile(root, "import root is not a directory")
    table = load_demographics(demographics_csv) if demographics_csv else None
    masks = Path(masks_dir) if masks_dir else None
    pattern = "**/*" if recursive else "*"
    files = sorted(p for p in root.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and (masks is None or masks.resolve() not in p.resolve().parents))

    def read(path: Path, known: set[str]) -> CaseRecord:
        record = read_image_record(path, known)
        record.source_key = str(path.relative_to(root))
        _apply_demographics(record, table, record.source_key)
        if masks is not None:
            mask_path = masks / mask_pattern.format(stem=path.stem, name=path.name)
            if mask_path.exists():
                _attach_mask(record, mask_path, mask_name)
        return record

    return _run(store, dataset, "images", root, files, read, strict=strict, progress=progress)


# -- DICOM -----------------------------------------------------------------------------------------------------------
def _dicom_files(root: Path) -> list[Path]:
    from core_model.io import detect_format
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name.upper() != "DICOMDIR"):
        try:
            if detect_format(path) == "dicom":
                found.append(path)
        except Exception:  # not an image at all (README, CSV...): not part of the DICOM import
            if path.suffix.lower() == ".dcm":
                found.append(path)  # claims to be DICOM: let the reader report why it is not
    return found


VOLUME_MODALITIES = ("CT", "MR", "PT", "NM")
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"  # and its multi-frame variants .7.1 - .7.4


@dataclass(frozen=True)
class DicomHeader:
    """What grouping needs from one file's header (read without pixels); empty values when unreadable."""
    series_uid: str = ""
    instance: int = 0
    modality: str = ""
    frames: int = 1
    sop_class_uid: str = ""

    @property
    def is_series_slice(self) -> bool:
        """A single-frame CT/MR/PT/NM slice (not secondary capture): part of a volume with its series."""
        return (bool(self.series_uid) and self.frames == 1 and self.modality.upper() in VOLUME_MODALITIES
                and not self.sop_class_uid.startswith(SECONDARY_CAPTURE))


@dataclass(frozen=True)
class DicomSeriesJob:
    """The single-frame slices of one series (``files`` sorted by path), imported as one volume case."""
    series_uid: str
    files: tuple[Path, ...]

    @property
    def folder(self) -> Path:
        """The deepest folder holding every file: the case's ``source_uri`` (re-opened with its series UID)."""
        return Path(os.path.commonpath([str(p.parent) for p in self.files]))


def _dicom_header(path: Path) -> DicomHeader:
    """The grouping fields of ``path``; an empty DicomHeader when unreadable (the reader reports why later)."""
    import pydicom
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        number, frames = ds.get("InstanceNumber", None), ds.get("NumberOfFrames", None)
        return DicomHeader(str(ds.get("SeriesInstanceUID", "") or ""), int(number) if number not in (None, "") else 0,
                           str(ds.get("Modality", "") or ""), int(frames) if frames not in (None, "") else 1,
                           str(ds.get("SOPClassUID", "") or ""))
    except Exception:
        return DicomHeader()


def dicom_jobs(files: Sequence[Path]) -> list[Path | DicomSeriesJob]:
    """Single-frame CT/MR/PT/NM slices grouped by SeriesInstanceUID into DicomSeriesJobs (two slices or more); every
    other file (CR, DX, secondary capture, multi-frame, a series of one slice) stays a job of its own. Ordered by
    (series UID, instance number, path)."""
    headers = {path: _dicom_header(path) for path in files}
    groups: dict[str, list[Path]] = {}
    for path in files:
        if headers[path].is_series_slice:
            groups.setdefault(headers[path].series_uid, []).append(path)
    series = {uid: DicomSeriesJob(uid, tuple(sorted(paths))) for uid, paths in groups.items() if len(paths) > 1}
    grouped = {path for job in series.values() for path in job.files}
    jobs: list[tuple[tuple[str, int, str], Path | DicomSeriesJob]] = [
        ((uid, 0, str(job.folder)), job) for uid, job in series.items()]
    jobs += [((headers[p].series_uid, headers[p].instance, str(p)), p) for p in files if p not in grouped]
    return [job for _, job in sorted(jobs, key=lambda item: item[0])]


def series_content_key(file_digests: Iterable[str]) -> str:
    """The sha256 of a series case: SHA-256 of its files' sha256 hex digests, sorted, one per line.

    Independent of file names, order and folder; any changed, added or removed slice gives a new key.
    """
    return hashlib.sha256("".join(f"{d}\n" for d in sorted(file_digests)).encode()).hexdigest()


def read_series_record(job: DicomSeriesJob, known: set[str] | None = None) -> CaseRecord:
    """One volume case from a single-frame series via core_model.io.load_dicom_series (slices sorted by position).

    AlreadyPresent (before any decoding) when its :func:`series_content_key` is in ``known``. ``path`` is the
    series folder; ``series_uid`` picks the series there again (``load_volume(folder, series_uid=...)``).
    """
    from core_model.errors import ImageReadError
    from core_model.io import load_dicom_series
    digest = series_content_key(hash_new_file(path, None) for path in job.files)
    if known is not None and digest in known:
        raise AlreadyPresent(job.folder)
    try:
        volume = load_dicom_series(job.files)
    except ImageReadError as error:
        raise UnreadableFile(error.path, error.cause) from error
    meta = volume.metadata
    width, height, depth = volume.shape
    return CaseRecord(
        path=job.folder, sha256=digest, format="dicom", width=width, height=height, depth=depth,
        modality=meta.modality, spacing=list(volume.voxel_size), affine=volume.affine.tolist(), frame_count=depth,
        sex=_sex(meta.patient_sex), age=meta.patient_age, study_uid=meta.study_uid,
        series_uid=meta.series_uid or job.series_uid, sop_class_uid=meta.sop_class_uid,
        patient_id=meta.patient_id, patient_name=meta.patient_name, birth_date=meta.birth_date)


def import_dicom(store: Store, root: Path | str, dataset: str, *, demographics_csv: Path | str | None = None,
                 strict: bool = False, progress: bool = True) -> ImportReport:
    """A DICOM directory, recursively; files are grouped by SeriesInstanceUID (:func:`dicom_jobs`).

    Single-frame CT/MR/PT/NM files of one series (two or more) become ONE volume case: ``source_uri`` = the folder
    holding them, ``series_uid`` = the series, ``sha256`` = :func:`series_content_key`, voxels (Columns, Rows,
    slices) sorted along the slice normal with the RAS+ affine and spacing from the positions; ``source_key`` = the
    folder relative to ``root``. Each other single-frame instance (CR, DX, secondary capture, a one-slice series...)
    is one 2-D case; a multi-frame CT/MR/PT/NM instance is one volume case. Demographics come from the tags
    (PatientSex, PatientAge) unless a demographics CSV overrides them (keyed by SOPInstanceUID or SeriesInstanceUID,
    relative path, name); the direct identifiers (PatientName, PatientID, PatientBirthDate) go to the
    re-identification table only.
    """
    root = Path(root)
    if not root.is_dir():
        raise UnreadableFile(root, "import root is not a directory")
    table = load_demographics(demographics_csv) if demographics_csv else None
    jobs = dicom_jobs(_dicom_files(root))

    def read(job: Path | DicomSeriesJob, known: set[str]) -> CaseRecord:
        if isinstance(job, DicomSeriesJob):
            record = read_series_record(job, known)
            record.source_key = str(job.folder.relative_to(root))
            _apply_demographics(record, table, record.series_uid, record.source_key)
            return record
        record = read_image_record(job, known)
        if record.frame_count > 1 and (record.modality or "").upper() in VOLUME_MODALITIES:
            _as_volume(record, job)
        record.source_key = str(job.relative_to(root))
        _apply_demographics(record, table, record.sop_instance_uid, record.source_key)
        return record

    return _run(store, dataset, "dicom", root, jobs, read, strict=strict, progress=progress)


def _as_volume(record: CaseRecord, path: Path) -> None:
    from core_model.errors import ImageReadError
    from core_model.io import load_volume
    try:
        volume = load_volume(path)
    except ImageReadError as error:
        raise UnreadableFile(path, error.cause) from error
    record.width, record.height, record.depth = volume.shape
    record.affine = volume.affine.tolist()
    record.spacing = list(volume.voxel_size)


# -- uploaded DICOM series (a zip archive) ----------------------------------------------------------------------------
ZIP_MAX_MEMBERS = 5000
_CHUNK = 1 << 20


def extract_dicom_zip(archive: Path, dest: Path, *, max_bytes: int, max_members: int = ZIP_MAX_MEMBERS) -> Path:
    """Extract a zip holding ONE DICOM series into the new folder ``dest`` and check it; returns ``dest``.

    Safety: every member's name is checked before anything is written (an absolute path, a drive or a ``..``
    component — a path traversal —, a symbolic link: refused); at most ``max_members`` members and ``max_bytes``
    bytes once expanded (counted while writing, so a lying header cannot get past it); members are written under
    generated names (``00000.dcm``…), never under the archive's names. Then the DICOM files in it must be one series
    that loads as a volume. Each refusal is an :class:`UnreadableFile` naming the archive and the cause.
    """
    try:
        _extract_series(archive, dest, max_bytes, max_members)
    except UnreadableFile:
        import shutil
        shutil.rmtree(dest, ignore_errors=True)  # nothing of a refused archive is kept
        raise
    return dest


def _extract_series(archive: Path, dest: Path, max_bytes: int, max_members: int) -> None:
    import zipfile

    try:
        with zipfile.ZipFile(archive) as zipped:
            members = [m for m in zipped.infolist() if not m.is_dir()]
            _check_zip_members(archive, members, max_members)
            dest.mkdir(parents=True)
            written = 0
            for number, member in enumerate(members):
                written = _extract_member(archive, zipped, member, dest / f"{number:05d}.dcm", written, max_bytes)
    except zipfile.BadZipFile as error:
        raise UnreadableFile(archive, f"not a readable zip archive ({error})") from error
    except (OSError, EOFError, RuntimeError, NotImplementedError) as error:  # truncated, encrypted, odd compression
        raise UnreadableFile(archive, f"the zip archive cannot be extracted ({type(error).__name__}: {error})") \
            from error
    check_one_series(archive, dest)


def _check_zip_members(archive: Path, members: Sequence[Any], max_members: int) -> None:
    if len(members) > max_members:
        raise UnreadableFile(archive, f"{len(members)} files in the archive, over the limit of {max_members}")
    for member in members:
        name = member.filename.replace("\\", "/")
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if name.startswith("/") or (len(name) > 1 and name[1] == ":") or ".." in parts:
            raise UnreadableFile(archive, f"refused: member {member.filename!r} would be written outside the "
                                          "archive's folder (path traversal)")
        if (member.external_attr >> 16) & 0o170000 == 0o120000:
            raise UnreadableFile(archive, f"refused: member {member.filename!r} is a symbolic link")


def _extract_member(archive: Path, zipped: Any, member: Any, target: Path, written: int, max_bytes: int) -> int:
    """Stream one member to ``target``; UnreadableFile once the archive's expanded size passes ``max_bytes``."""
    with zipped.open(member) as source, open(target, "wb") as out:
        while chunk := source.read(_CHUNK):
            written += len(chunk)
            if written > max_bytes:
                raise UnreadableFile(archive, f"expands to more than {max_bytes / 2**20:.0f} MB, over the limit "
                                              "(a zip bomb?)")
            out.write(chunk)
    return written


def check_one_series(archive: Path, folder: Path) -> None:
    """UnreadableFile (naming ``archive``) unless ``folder`` holds DICOM files of exactly one series that loads."""
    from core_model.errors import ImageReadError
    from core_model.io import load_volume

    dicom = [p for p in _dicom_files(folder) if _dicom_header(p).series_uid]
    if not dicom:
        raise UnreadableFile(archive, "no DICOM file in the archive (a DICOM series is imported as a zip of its "
                                      ".dcm files)")
    series = sorted({_dicom_header(p).series_uid for p in dicom})
    if len(series) > 1:
        raise UnreadableFile(archive, f"mixed series: the archive holds {len(series)} DICOM series "
                                      f"({', '.join(s[-12:] for s in series[:4])}…); upload one series per archive")
    try:
        load_volume(folder)
    except ImageReadError as error:
        raise UnreadableFile(archive, f"the series cannot be read as a volume: {error.cause}") from error


# -- NIfTI -----------------------------------------------------------------------------------------------------------
def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def _nifti_stem(path: Path) -> str:
    name = path.name
    return name[:-7] if name.lower().endswith(".nii.gz") else name[:-4]


def _is_mask_name(stem: str) -> bool:
    return any(marker in part for part in stem.lower().split("_") for marker in MASK_MARKERS)


def pair_nifti_masks(files: Sequence[Path]) -> dict[Path, dict[str, Path]]:
    """Volumes → {mask name: mask path}; a mask belongs to the volume with the longest stem prefix."""
    volumes = [p for p in files if not _is_mask_name(_nifti_stem(p))]
    pairs: dict[Path, dict[str, Path]] = {v: {} for v in volumes}
    for mask in (p for p in files if _is_mask_name(_nifti_stem(p))):
        stem = _nifti_stem(mask)
        owners = [v for v in volumes if stem.startswith(_nifti_stem(v) + "_") and v.parent == mask.parent]
        if owners:
            owner = max(owners, key=lambda v: len(_nifti_stem(v)))
            pairs[owner][stem[len(_nifti_stem(owner)) + 1:]] = mask
    return pairs


def import_nifti(store: Store, root: Path | str, dataset: str, *, with_masks: bool = True, strict: bool = False,
                 progress: bool = True) -> ImportReport:
    """NIfTI volumes; files named ``<volume>_<...mask|seg...>.nii[.gz]`` are that volume's masks (non-zero = in)."""
    root = Path(root)
    if not root.is_dir():
        raise UnreadableFile(root, "import root is not a directory")
    files = sorted(p for p in root.rglob("*") if p.is_file() and _is_nifti(p))
    pairs = pair_nifti_masks(files)

    def read(path: Path, known: set[str]) -> CaseRecord:
        record = read_volume_record(path, known)
        record.source_key = str(path.relative_to(root))
        for name, mask_path in (pairs[path].items() if with_masks else ()):
            _attach_mask(record, mask_path, name)
        return record

    return _run(store, dataset, "nifti", root, list(pairs), read, strict=strict, progress=progress)


def read_volume_record(path: Path, known: set[str] | None = None) -> CaseRecord:
    from core_model.errors import ImageReadError
    from core_model.io import load_volume
    digest = hash_new_file(path, known)
    try:
        volume = load_volume(path)
    except ImageReadError as error:
        raise UnreadableFile(path, error.cause) from error
    width, height, depth = volume.shape
    meta = volume.metadata
    return CaseRecord(path=path, sha256=digest, format="nifti", width=width, height=height, depth=depth,
                      modality=meta.modality, spacing=list(volume.voxel_size), affine=volume.affine.tolist(),
                      frame_count=depth, sex=_sex(meta.patient_sex), age=meta.patient_age)


# -- CXR-LT 2024 train_labeled.csv ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CxrLtRow:
    line: int
    row: dict[str, str]
    labels: dict[str, int]


def validate_cxr_lt(csv_path: Path, classes: Sequence[str]) -> list[CxrLtRow]:
    """Parse and check a train_labeled.csv-layout file; BadCsv / UnknownClass for anything structural."""
    columns, rows = _read_csv(csv_path)
    missing = [c for c in CXR_LT_REQUIRED if c not in columns]
    if missing:
        raise BadCsv(csv_path, f"missing required column(s) {missing}; the CXR-LT layout starts with "
                               "dicom_id, subject_id, study_id, ViewPosition, ViewCodeSequence_CodeMeaning, fpath")
    class_columns = [c for c in columns if c not in CXR_LT_REQUIRED + CXR_LT_INFO]
    unknown = [c for c in class_columns if c not in classes]
    if unknown:
        raise UnknownClass(csv_path, f"unknown class column(s) {unknown}; not in the {len(classes)}-class label set")
    if not class_columns:
        raise BadCsv(csv_path, "no class columns")
    parsed, seen_ids, seen_paths = [], {}, {}
    for line, row in enumerate(rows, start=2):
        for key, seen in (("dicom_id", seen_ids), ("fpath", seen_paths)):
            unique_value(csv_path, line, row, key, seen)
        parsed.append(CxrLtRow(line, row, _row_labels(csv_path, line, row, class_columns)))
    return parsed


def unique_value(csv_path: Path, line: int, row: dict[str, str], key: str, seen: dict[str, int]) -> str:
    """The row's ``key`` value, non-empty and on no earlier line (BadCsv naming both lines otherwise); recorded in
    ``seen`` ({value: line})."""
    value = (row.get(key) or "").strip()
    if not value:
        raise BadCsv(csv_path, f"line {line}: empty {key}")
    if value in seen:
        raise BadCsv(csv_path, f"line {line}: duplicate case: {key} {value!r} already on line {seen[value]}")
    seen[value] = line
    return value


def _row_labels(csv_path: Path, line: int, row: dict[str, str], class_columns: Sequence[str]) -> dict[str, int]:
    labels = {}
    for column in class_columns:
        text = (row.get(column) or "").strip()
        if text == "":
            continue  # blank = not assessed
        try:
            value = float(text)
        except ValueError:
            value = -1.0
        if value not in (0.0, 1.0):
            raise BadCsv(csv_path, f"line {line}, column {column!r}: label must be 0, 1 or blank, got {text!r}")
        labels[column] = int(value)
    return labels


def import_cxr_lt(store: Store, csv_path: Path | str, dataset: str, *, image_root: Path | str | None = None,
                  demographics_csv: Path | str | None = None, label_set: str = "cxr-lt-40", strict: bool = False,
                  progress: bool = True) -> ImportReport:
    """The CXR-LT 2024 ``train_labeled.csv`` layout: ground truth per class (blank = not assessed) + ``fpath``.

    ``fpath`` is resolved under ``image_root`` (default: the CSV's folder) and must stay inside it. Demographics come
    from PatientSex/PatientAge/PatientRace columns when present, else from ``demographics_csv`` keyed by dicom_id,
    fpath or subject_id.
    """
    from core_model.classes import label_set as classes_of
    csv_path = Path(csv_path)
    root = Path(image_root) if image_root else csv_path.parent
    rows = validate_cxr_lt(csv_path, classes_of(label_set))
    table = load_demographics(demographics_csv) if demographics_csv else None

    def read(item: CxrLtRow, known: set[str]) -> CaseRecord:
        row = item.row
        path = inside_root(root, row["fpath"])
        if not path.is_file():
            raise UnreadableFile(path, f"file listed on line {item.line} of {csv_path.name} does not exist")
        record = read_image_record(path, known)
        record.source_key, record.labels = row["dicom_id"], item.labels
        record.view = row.get("ViewPosition") or record.view
        record.split = row.get("split") or None
        record.sex = _sex(row.get("PatientSex")) or record.sex
        record.age = _age(row.get("PatientAge")) if _age(row.get("PatientAge")) is not None else record.age
        record.race = _first_value(row, ("PatientRace", "race")) or record.race
        record.patient_id = row.get("subject_id") or record.patient_id
        _apply_demographics(record, table, row["dicom_id"], row["fpath"], row.get("subject_id"))
        return record

    return _run(store, dataset, "cxr-lt", root, rows, read, strict=strict, progress=progress)


# -- dispatch ----------------------------------------------------------------------------------------------------------
def detect_kind(path: Path) -> str:
    """'cxr-lt' for a CSV, 'nifti' / 'dicom' / 'images' for a folder by what it mostly holds."""
    if path.is_file():
        if path.suffix.lower() == ".csv":
            return "cxr-lt"
        raise UnreadableFile(path, "import a folder, or a CSV in the CXR-LT layout")
    names = [p.name.lower() for p in path.rglob("*") if p.is_file()]
    if any(n.endswith(NIFTI_SUFFIXES) for n in names):
        return "nifti"
    if any(n.endswith(IMAGE_SUFFIXES) for n in names):
        return "images"
    return "dicom"


def import_path(store: Store, path: Path | str, dataset: str | None = None, kind: str = "auto",
                **options: Any) -> ImportReport:
    """Import ``path`` with the importer for ``kind`` ('auto', 'images', 'dicom', 'nifti', 'cxr-lt')."""
    path = Path(path)
    if not path.exists():
        raise UnreadableFile(path, "no such file or directory")
    kind = detect_kind(path) if kind == "auto" else kind
    dataset = dataset or (path.stem if path.is_file() else path.name)
    importers = {"images": import_images, "dicom": import_dicom, "nifti": import_nifti, "cxr-lt": import_cxr_lt}
    if kind not in importers:
        raise ValueError(f"unknown import kind {kind!r}; known: {sorted(importers)}")
    return importers[kind](store, path, dataset, **options)
