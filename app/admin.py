"""Admin operations behind the admin screens: uploads, users, studies, exports, the live dashboard.

Every function takes the caller's :class:`~app.service.Session` and refuses non-admins (``Forbidden``), so that calling
the Gradio endpoints directly (gradio_client, curl) is no way around the hidden tab.

Uploads: only files that Gradio itself wrote into its upload cache are opened (a path the browser names is checked to
resolve inside that cache and is never used as-is); size limit; the type is sniffed from the bytes; every file is
copied into ``DATA/uploads/<dataset>/`` under a generated name before import, so the database never points into a
temporary folder.
"""
from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from app.panels import validation_text
from app.service import AppError, AppService, Forbidden, Session

ALLOWED_FORMATS = {"png": ".png", "jpeg": ".jpg", "dicom": ".dcm", "nifti": ".nii.gz"}


def gradio_upload_roots() -> list[Path]:
    """Folders where Gradio stores uploads (GRADIO_TEMP_DIR or <tmp>/gradio)."""
    roots = []
    if os.environ.get("GRADIO_TEMP_DIR"):
        roots.append(Path(os.environ["GRADIO_TEMP_DIR"]).resolve())
    roots.append((Path(tempfile.gettempdir()) / "gradio").resolve())
    return roots


def _uploaded_path(value: Any, service: AppService, session: Session) -> Path:
    """The server-side path of one Gradio upload made by this login (recorded by app.security when Gradio's upload
    route stored it); AppError for anything else — a caller-given server path above all."""
    raw = getattr(value, "name", None) or getattr(value, "path", None) or value
    if isinstance(raw, dict):
        raw = raw.get("path") or raw.get("name")
    if not isinstance(raw, (str, os.PathLike)):
        raise AppError("not an uploaded file")
    path = Path(raw).resolve()
    inside = any(root == path or root in path.parents for root in gradio_upload_roots())
    registry = getattr(service, "uploads", None)
    if not inside or registry is None or not registry.owns(session.token, path):
        raise AppError(f"refused: {Path(raw).name} is not a file uploaded through this page")
    if not path.is_file():
        raise AppError(f"{Path(raw).name}: the upload is missing")
    return path


def import_uploads(service: AppService, session: Session, files: Sequence[Any] | None, dataset: str) -> str:
    """Check, copy and import uploaded files; returns a report for the screen (one line per file, ✓ / ✗ + cause).

    2-D images (PNG, JPEG, DICOM), CT/MR volumes as NIfTI (.nii / .nii.gz) and DICOM series — several .dcm slices
    of one series, or one .zip of a series (extracted safely: :func:`annotations_db.importers.extract_dicom_zip`) —
    each series one volume case. Each kind is staged into ``DATA/uploads/<dataset>/<kind>/`` under generated names
    and imported with its importer; a bad file is reported with its name and cause and nothing of it is kept."""
    from annotations_db.errors import ImportFileError

    service.require_admin(session)
    if not files:
        raise AppError("choose one or more image files first")
    dataset = "".join(ch for ch in (dataset or "uploads").strip() if ch.isalnum() or ch in "-_")[:64] or "uploads"
    target = service.data_dir / "uploads" / dataset
    staging = Path(tempfile.mkdtemp(prefix="biascare-import-"))
    lines: list[str] = []
    try:
        for value in files:
            try:
                path = _uploaded_path(value, service, session)
                _stage(service, path, staging)
            except AppError as error:
                lines.append(f"✗ {error}")
        lines += _import_staged(service, staging, target, dataset)
    except ImportFileError as error:
        lines.append(f"✗ {error.cause}")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return "\n".join(lines)


def _stage(service: AppService, path: Path, staging: Path) -> None:
    """Check one upload and copy it (a zip: its series) into ``staging/<kind>/``; AppError naming the file and the
    cause when it is refused."""
    import zipfile

    from annotations_db.importers import UnreadableFile, extract_dicom_zip
    from core_model.errors import ImageReadError
    from core_model.io import detect_format, load_image, load_volume

    shown = path.name
    size = path.stat().st_size
    if size > service.max_upload_bytes:
        raise AppError(f"{shown}: {size / 2**20:.1f} MB is over the {service.max_upload_bytes / 2**20:.0f} MB limit")
    if zipfile.is_zipfile(path):
        try:
            extract_dicom_zip(path, staging / "dicom" / secrets.token_hex(8), max_bytes=8 * service.max_upload_bytes)
        except UnreadableFile as error:
            raise AppError(f"{shown}: {error.cause}") from None
        return
    try:
        fmt = detect_format(path)
    except ImageReadError as error:
        raise AppError(f"{shown}: {error.cause}") from None
    if fmt not in ALLOWED_FORMATS:
        raise AppError(f"{shown}: {fmt} files are not imported from this screen (PNG, JPEG, DICOM, NIfTI or a "
                       ".zip of a DICOM series)")
    try:
        load_volume(path) if fmt == "nifti" else load_image(path)
    except ImageReadError as error:
        what = "a volume" if fmt == "nifti" else "an image"
        raise AppError(f"{shown}: cannot be read as {what} ({error.cause})") from None
    except Exception as error:  # noqa: BLE001 - any decoder failure is a broken file for the user
        raise AppError(f"{shown}: cannot be read ({type(error).__name__})") from None
    kind = {"png": "images", "jpeg": "images"}.get(fmt, fmt)
    suffix = ".nii.gz" if fmt == "nifti" and path.read_bytes()[:2] == b"\x1f\x8b" else (
        ".nii" if fmt == "nifti" else ALLOWED_FORMATS[fmt])
    (staging / kind).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, staging / kind / f"{secrets.token_hex(8)}{suffix}")


def _import_staged(service: AppService, staging: Path, target: Path, dataset: str) -> list[str]:
    """Move each staged kind under ``target/<kind>/`` and import it; the report's lines."""
    from annotations_db.importers import import_dicom, import_images, import_nifti

    importers = {"images": lambda root: import_images(service.store, root, dataset, progress=False),
                 "dicom": lambda root: import_dicom(service.store, root, dataset, progress=False),
                 "nifti": lambda root: import_nifti(service.store, root, dataset, with_masks=False, progress=False)}
    lines = []
    for kind, run in importers.items():
        staged = staging / kind
        if not staged.is_dir() or not any(staged.iterdir()):
            continue
        folder = target / kind
        folder.mkdir(parents=True, exist_ok=True)
        for item in staged.iterdir():
            shutil.move(str(item), folder / item.name)
        report = run(folder)
        lines.append(f"✓ {report.summary()}")
        lines += [f"✗ {Path(getattr(e, 'path', '')).name}: {getattr(e, 'cause', e)}" for e in report.errors]
    if lines and service.background:
        service.background.triage_missing()
    return lines


def users_frame(service: AppService, session: Session) -> pd.DataFrame:
    service.require_admin(session)
    return pd.DataFrame([{"id": r.id, "name": r.name, "role": r.role} for r in service.store.readers()],
                        columns=["id", "name", "role"])


def create_user(service: AppService, session: Session, name: str, password: str, role: str) -> str:
    service.require_admin(session)
    if len(password or "") < 8:
        raise AppError("passwords need at least 8 characters")
    try:
        reader = service.store.create_reader((name or "").strip(), password, role=role)
    except ValueError as error:
        raise AppError(str(error)) from None
    return f"created {reader.role} {reader.name!r}"


def create_study(service: AppService, session: Session, name: str, cases: Sequence[str], readers: Sequence[str],
                 arms: Sequence[str], design: str, seed: int, washout_days: int, allow_revisit: bool,
                 rating_max: int = 100, exclude_seen: bool = False) -> str:
    """Create a study; the report names every case a chosen reader has seen with the AI outside studies (not blind
    in the unaided arm) and, with ``exclude_seen``, leaves those cases out."""
    from annotations_db.errors import NotFound, StudyDesignError

    service.require_admin(session)
    if not (name or "").strip():
        raise AppError("name the study")
    try:
        label_set = study_label_set(service, cases)
        exposure = service.store.ai_exposure(list(cases), list(readers))
        seen = sorted({case for _, case in exposure})
        chosen = [c for c in cases if not (exclude_seen and c in seen)]
        study_id = service.store.create_study(name.strip(), chosen, list(readers), arms=list(arms) or ["unaided", "ai_aided"],
                                              design=design, seed=int(seed), washout_days=int(washout_days),
                                              allow_revisit=bool(allow_revisit), label_set=label_set,
                                              model_version=service.model_version, rating_max=int(rating_max))
    except (StudyDesignError, NotFound, ValueError) as error:
        raise AppError(str(error)) from None
    lines = [f"study {name!r} created (id {study_id}): {len(chosen)} case(s) × {len(readers)} reader(s) × "
             f"{len(arms)} arm(s); checklist {label_set}; "
             f"ratings {'1–' + str(rating_max) if rating_max else 'off (binary answers)'}"]
    if exposure:
        pairs = ", ".join(f"{reader}: {case}" for reader, case in exposure)
        action = "excluded" if exclude_seen else "kept — exclude them if the unaided arm must be blind"
        lines.append(f"⚠ seen with the AI outside the study ({pairs}); {len(seen)} case(s) {action}")
    return "\n\n".join(lines)


def study_label_set(service: AppService, cases: Sequence[str]) -> str:
    """The label set a study's answers take: the checklist of its cases' kind (CT/MR volumes: the structure set,
    radiographs: CXR-LT 26); AppError when the cases mix both (one study, one checklist)."""
    from core_model.classes import checklist_for

    kinds = {service.store.case_info(case).depth is not None for case in cases}
    if len(kinds) > 1:
        raise AppError("the chosen cases mix radiographs and CT/MR volumes: one study reads one kind, with one "
                       "checklist — create a study for each")
    return checklist_for(kinds.pop() if kinds else False).name


def studies(service: AppService) -> list[str]:
    from sqlalchemy import select

    from annotations_db.models import Study
    with service.store.read_session() as s:
        return list(s.scalars(select(Study.name).order_by(Study.id)))


# -- AI sources: the built-in model, imported predictions, a local torchxrayvision model ---------------------------------
AI_SOURCE_COLUMNS = ["source", "kind", "cases predicted", "label set", "origin"]
WEIGHTS_SUFFIXES = (".pt", ".pth", ".safetensors")


def ai_sources_frame(service: AppService, session: Session) -> pd.DataFrame:
    service.require_admin(session)
    return pd.DataFrame([{"source": s.name, "kind": s.kind, "cases predicted": s.predictions,
                          "label set": s.label_set or "", "origin": s.origin or ""} for s in service.store.ai_sources()],
                        columns=AI_SOURCE_COLUMNS)


def import_ai_predictions(service: AppService, session: Session, csv_file: Any, thresholds_file: Any,
                          mask_files: Sequence[Any] | None, source_name: str, study: str | None) -> str:
    """An uploaded CXR-LT submission CSV (optional thresholds file and AI mask PNGs named ``<dicom_id>.png``) as the
    AI source ``source_name``, attached to ``study`` when one is chosen; returns the import report (every unmatched
    row listed)."""
    from annotations_db.ai_sources import import_ai_predictions as run_import
    from annotations_db.errors import AnnotationDbError

    service.require_admin(session)
    if csv_file is None:
        raise AppError("choose the predictions CSV (CXR-LT submission layout) first")
    csv_path = _uploaded_path(csv_file, service, session)
    thresholds = _uploaded_path(thresholds_file, service, session) if thresholds_file else None
    masks = Path(tempfile.mkdtemp(prefix="biascare-ai-masks-")) if mask_files else None
    try:
        for value in mask_files or []:
            path = _uploaded_path(value, service, session)
            shutil.copyfile(path, masks / _safe_upload_name(path.name))
        report = run_import(service.store, csv_path, (source_name or "").strip(), thresholds=thresholds,
                            masks_dir=masks, study=study or None)
    except AnnotationDbError as error:  # a file error names its file (the CSV or the thresholds) and the cause
        named = getattr(error, "path", None)
        raise AppError(f"{named.name}: {error.cause}" if named is not None else str(error)) from None
    finally:
        if masks is not None:
            shutil.rmtree(masks, ignore_errors=True)
    return "\n\n".join(report.lines())


def load_xrv_source(service: AppService, session: Session, weights_path: str, name: str, study: str | None) -> str:
    """A torchxrayvision model from a weights file on the server (the admin points to it): its predictions for the
    cases of ``study`` (or every case) stored under the source's name, attached to the study when one is chosen."""
    from annotations_db.ai_sources import compute_xrv_predictions
    from annotations_db.errors import AnnotationDbError
    from core_model.xrv_source import XrvSourceError

    service.require_admin(session)
    path = Path((weights_path or "").strip()).expanduser()
    if not path.name.lower().endswith(WEIGHTS_SUFFIXES):
        raise AppError(f"{path.name or 'no file'}: a torchxrayvision weights file ends in "
                       f"{', '.join(WEIGHTS_SUFFIXES)}")
    try:
        report = compute_xrv_predictions(service.store, path, (name or "").strip() or None, study=study or None)
    except (AnnotationDbError, XrvSourceError) as error:
        raise AppError(str(error)) from None
    return "\n\n".join(report.lines())


def attach_ai_source(service: AppService, session: Session, study: str, source: str) -> str:
    """The AI source a study's aided arm shows; refused once a read of the study has started."""
    from annotations_db.errors import NotFound, StudyDesignError

    service.require_admin(session)
    if not study or not source:
        raise AppError("choose a study and an AI source")
    try:
        service.store.set_study_ai_source(study, source)
    except (NotFound, StudyDesignError) as error:
        raise AppError(str(error)) from None
    return f"study {study!r} shows the AI source {source!r} in its aided arm"


def _safe_upload_name(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)[:128] or "mask.png"


DASHBOARD_COLUMNS = ["reader", "arm", "rater", "reads", "accuracy", "mean_time_s", "median_time_s"]
ACCURACY_DEFINITION = (
    "**Accuracy** = for each finding, the share of the cases that have it (ground truth) which the reader marked "
    "(TP / (TP + FN)), averaged over the findings with at least one such case: the analysis's default "
    "(`launch.py analyze --accuracy recall`, the paper's definition). Cases without ground truth count for time only. "
    "**Time** = seconds per read (submit − shown − idle, from the event log). Bars: one per reader × arm, side by side.")


def dashboard_frame(service: AppService, study: str | None = None) -> pd.DataFrame:
    """Per reader × arm (``rater`` = "reader · arm", the bar label): submitted reads, accuracy as defined in
    :data:`ACCURACY_DEFINITION` (computed by :func:`analysis.metrics.summary_table`), mean and median seconds."""
    from analysis.data import AI, build_study
    from analysis.metrics import summary_table
    from annotations_db.errors import ExportError
    from annotations_db.export import results_frame

    try:
        frame = results_frame(service.store, study or None)
    except ExportError:
        return pd.DataFrame(columns=DASHBOARD_COLUMNS)
    if frame.empty:
        return pd.DataFrame(columns=DASHBOARD_COLUMNS)
    try:  # the AI alone is not a reader: its column is left out
        study_arrays = build_study(frame.drop(columns=["ai_probability"]))
    except ValueError:  # no usable row (e.g. only arms other than unaided / ai_aided)
        return pd.DataFrame(columns=DASHBOARD_COLUMNS)
    summary = summary_table(study_arrays, accuracy="recall")
    summary = summary[summary["reader"] != AI].rename(columns={"cases_read": "reads", "mean_s": "mean_time_s",
                                                               "median_s": "median_time_s"})
    summary["rater"] = summary["reader"] + " · " + summary["arm"]
    return summary[DASHBOARD_COLUMNS].round(3).reset_index(drop=True)


EXPORT_KINDS = ("Results (CSV)", "Results (Parquet)", "iMRMC (zip, one file per class)", "Masks: PNG (zip)",
                "Masks: NIfTI (zip)", "Masks: DICOM-SEG (zip)", "Masks: COCO JSON (zip)",
                "Training manifest + images + masks (zip)")
_MASK_FORMATS = {"Masks: PNG (zip)": "png", "Masks: NIfTI (zip)": "nifti", "Masks: DICOM-SEG (zip)": "dicom-seg",
                 "Masks: COCO JSON (zip)": "coco"}


EXPORT_RETENTION_S = 3600  # exports hold de-identified patient data: kept an hour for the download, then deleted


def sweep_exports(folder: Path, older_than_s: float = EXPORT_RETENTION_S) -> int:
    """Delete the exports in ``folder`` and their download copies (``biascare-export-*`` in the system temp folder)
    that are older than the retention period; returns how many were deleted."""
    import time

    candidates = list(folder.iterdir()) if folder.is_dir() else []
    candidates += Path(tempfile.gettempdir()).glob("biascare-export-*")
    old = [item for item in candidates if time.time() - item.stat().st_mtime > older_than_s]
    for item in old:
        shutil.rmtree(item, ignore_errors=True) if item.is_dir() else item.unlink(missing_ok=True)
    return len(old)


def export(service: AppService, session: Session, kind: str, study: str | None = None) -> Path:
    """One export of :data:`EXPORT_KINDS` under ``DATA/exports/`` (folders zipped); the results and iMRMC of
    ``study`` (default the latest). AppError with the reason when there is nothing to write (no file is left)."""
    from annotations_db.errors import ExportError

    service.require_admin(session)
    if kind not in EXPORT_KINDS:
        raise AppError(f"unknown export {kind!r}; choose one of: {', '.join(EXPORT_KINDS)}")
    sweep_exports(service.data_dir / "exports")
    out = service.data_dir / "exports" / f"{_slug(kind)}-{secrets.token_hex(4)}"
    try:
        return _export(service, kind, study or None, out)
    except ExportError as error:
        shutil.rmtree(out, ignore_errors=True)
        raise AppError(f"{kind}: {error}") from None


def _export(service: AppService, kind: str, study: str | None, out: Path) -> Path:
    from annotations_db import export as exports

    store = service.store
    if kind.startswith("Results"):
        fmt = "csv" if "CSV" in kind else "parquet"
        name = exports.resolve_study(store, study).name
        return exports.export_results(store, out / f"results-{_slug(name)}", study, formats=(fmt,))[0]
    if kind.startswith("iMRMC"):
        exports.export_imrmc_classes(store, out, study)
    elif kind in _MASK_FORMATS:
        exports.export_masks(store, out, (_MASK_FORMATS[kind],), require_any=True)
    else:
        exports.require_final_annotations(store)
        exports.export_training(store, out)
    return Path(shutil.make_archive(str(out), "zip", out))


def _slug(text: str) -> str:
    import re
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40]


def model_info(service: AppService, session: Session, checkpoint: str | None) -> str:
    service.require_admin(session)
    info = service.model.info
    lines = [f"- **version**: `{info.version}`", f"- **checkpoint**: `{checkpoint or 'stock LiteMedSAM'}`",
             f"- **click-trained**: {getattr(info, 'clicks_trained', False)}",
             f"- **language pathway trained**: {getattr(info, 'language_trained', False)}",
             f"- **classifier trained**: {dict(info.classifier_trained) or 'no (no AI probabilities are shown)'}",
             f"- **findings evidence**: {validation_text(service.builtin_card)}"]
    return "\n".join(lines)


def require(session: Session) -> None:
    if not session.reader.is_admin:
        raise Forbidden("this page is for administrators")
