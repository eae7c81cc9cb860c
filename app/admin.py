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

from app.service import AppError, AppService, Forbidden, Session

ALLOWED_FORMATS = {"png": ".png", "jpeg": ".jpg", "dicom": ".dcm", "nifti": ".nii.gz"}


def gradio_upload_roots() -> list[Path]:
    """Folders where Gradio stores uploads (GRADIO_TEMP_DIR or <tmp>/gradio)."""
    roots = []
    if os.environ.get("GRADIO_TEMP_DIR"):
        roots.append(Path(os.environ["GRADIO_TEMP_DIR"]).resolve())
    roots.append((Path(tempfile.gettempdir()) / "gradio").resolve())
    return roots


def _uploaded_path(value: Any) -> Path:
    """The server-side path of one Gradio upload; AppError for anything outside Gradio's upload cache."""
    raw = getattr(value, "name", None) or getattr(value, "path", None) or value
    if isinstance(raw, dict):
        raw = raw.get("path") or raw.get("name")
    if not isinstance(raw, (str, os.PathLike)):
        raise AppError("not an uploaded file")
    path = Path(raw).resolve()
    if not any(root == path or root in path.parents for root in gradio_upload_roots()):
        raise AppError(f"refused: {Path(raw).name} is not a file uploaded through this page")
    if not path.is_file():
        raise AppError(f"{Path(raw).name}: the upload is missing")
    return path


def import_uploads(service: AppService, session: Session, files: Sequence[Any] | None, dataset: str) -> str:
    """Check, copy and import uploaded images; returns a report for the screen (one line per file)."""
    from annotations_db.errors import ImportFileError
    from annotations_db.importers import import_images
    from core_model.errors import ImageReadError
    from core_model.io import detect_format, load_image

    service.require_admin(session)
    if not files:
        raise AppError("choose one or more image files first")
    dataset = "".join(ch for ch in (dataset or "uploads").strip() if ch.isalnum() or ch in "-_")[:64] or "uploads"
    target = service.data_dir / "uploads" / dataset
    staging = Path(tempfile.mkdtemp(prefix="biascare-import-"))
    lines, accepted = [], 0
    try:
        for value in files:
            try:
                path = _uploaded_path(value)
            except AppError as error:
                lines.append(f"✗ {error}")
                continue
            shown = path.name
            size = path.stat().st_size
            if size > service.max_upload_bytes:
                lines.append(f"✗ {shown}: {size / 2**20:.1f} MB is over the {service.max_upload_bytes / 2**20:.0f} MB limit")
                continue
            try:
                fmt = detect_format(path)
            except ImageReadError as error:
                lines.append(f"✗ {shown}: {error.cause}")
                continue
            if fmt not in ("png", "jpeg", "dicom"):
                lines.append(f"✗ {shown}: {fmt} files are not imported from this screen (2-D PNG, JPEG or DICOM only)")
                continue
            try:
                load_image(path)
            except ImageReadError as error:
                lines.append(f"✗ {shown}: cannot be read as an image ({error.cause})")
                continue
            except Exception as error:  # noqa: BLE001 - any decoder failure is a broken file for the user
                lines.append(f"✗ {shown}: cannot be read as an image ({type(error).__name__})")
                continue
            name = f"{secrets.token_hex(8)}{ALLOWED_FORMATS[fmt] if fmt != 'dicom' else '.dcm'}"
            shutil.copyfile(path, staging / name)
            accepted += 1
        if accepted:
            target.mkdir(parents=True, exist_ok=True)
            for item in staging.iterdir():
                shutil.move(str(item), target / item.name)
            if any(p.suffix == ".dcm" for p in target.iterdir()):
                from annotations_db.importers import import_dicom
                report = import_dicom(service.store, target, dataset, progress=False)
            else:
                report = import_images(service.store, target, dataset, progress=False)
            lines.append(f"✓ {report.summary()}")
            for error in report.errors:
                lines.append(f"✗ {Path(getattr(error, 'path', '')).name}: {getattr(error, 'cause', error)}")
            if service.background:
                service.background.triage_missing()
    except ImportFileError as error:
        lines.append(f"✗ {error.cause}")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return "\n".join(lines)


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
                 arms: Sequence[str], design: str, seed: int, washout_days: int, allow_revisit: bool) -> str:
    from annotations_db.errors import NotFound, StudyDesignError

    service.require_admin(session)
    if not (name or "").strip():
        raise AppError("name the study")
    try:
        study_id = service.store.create_study(name.strip(), list(cases), list(readers), arms=list(arms) or ["unaided", "ai_aided"],
                                              design=design, seed=int(seed), washout_days=int(washout_days),
                                              allow_revisit=bool(allow_revisit), label_set="cxr-lt-26",
                                              model_version=service.model_version)
    except (StudyDesignError, NotFound, ValueError) as error:
        raise AppError(str(error)) from None
    return f"study {name!r} created (id {study_id}): {len(cases)} case(s) × {len(readers)} reader(s) × {len(arms)} arm(s)"


def studies(service: AppService) -> list[str]:
    from sqlalchemy import select

    from annotations_db.models import Study
    with service.store.read_session() as s:
        return list(s.scalars(select(Study.name).order_by(Study.id)))


def dashboard_frame(service: AppService, study: str | None = None) -> pd.DataFrame:
    """Per reader × arm: reads submitted, accuracy against ground truth (assessed classes), mean/median time."""
    from annotations_db.errors import ExportError
    from annotations_db.export import results_frame

    columns = ["reader", "arm", "reads", "accuracy", "mean_time_s", "median_time_s"]
    try:
        frame = results_frame(service.store, study or None)
    except ExportError:
        return pd.DataFrame(columns=columns)
    if frame.empty:
        return pd.DataFrame(columns=columns)
    known = frame[frame["truth"].notna()].copy()
    known["correct"] = (known["answer"] == known["truth"].astype("int64")).astype(float)
    acc = known.groupby(["reader", "arm"])["correct"].mean().rename("accuracy")
    reads = frame.drop_duplicates(["reader", "case", "arm"])
    per = reads.groupby(["reader", "arm"]).agg(reads=("case", "count"), mean_time_s=("time_s", "mean"),
                                               median_time_s=("time_s", "median"))
    out = per.join(acc, how="left").reset_index()
    return out[columns].round(3)


def export_results(service: AppService, session: Session, study: str | None) -> Path:
    from annotations_db.errors import ExportError
    from annotations_db.export import export_results as write

    service.require_admin(session)
    out = service.data_dir / "exports" / f"results-{secrets.token_hex(4)}"
    try:
        return write(service.store, out, study or None, formats=("csv",))[0]
    except ExportError as error:
        raise AppError(str(error)) from None


def export_training(service: AppService, session: Session) -> Path:
    from annotations_db.errors import ExportError
    from annotations_db.export import export_training as write

    service.require_admin(session)
    out = service.data_dir / "exports" / f"training-{secrets.token_hex(4)}"
    try:
        write(service.store, out)
    except ExportError as error:
        raise AppError(str(error)) from None
    archive = shutil.make_archive(str(out), "zip", out)
    return Path(archive)


def model_info(service: AppService, session: Session, checkpoint: str | None) -> str:
    service.require_admin(session)
    info = service.model.info
    lines = [f"- **version**: `{info.version}`", f"- **checkpoint**: `{checkpoint or 'stock LiteMedSAM'}`",
             f"- **click-trained**: {getattr(info, 'clicks_trained', False)}",
             f"- **language pathway trained**: {getattr(info, 'language_trained', False)}",
             f"- **classifier trained**: {dict(info.classifier_trained) or 'no (no AI probabilities are shown)'}"]
    return "\n".join(lines)


def require(session: Session) -> None:
    if not session.reader.is_admin:
        raise Forbidden("this page is for administrators")
