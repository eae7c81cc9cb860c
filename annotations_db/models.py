"""The schema of a human–AI reader study, as SQLAlchemy 2 ORM classes.

readers ─┬─ login_sessions (sha256 of the cookie token, idle + absolute expiry; the raw token is never stored)
         │                    label_sets ── model_versions (AI sources + cards) ── predictions (case × source)
         ├─ assignments (reader × case × arm, order, session) ── studies ── study_arms
datasets ── cases ── case_identities (the re-identification mapping; never exported)
               ├── case_labels (ground truth per class)   ├── case_masks (reference masks, RLE)
               ├── annotations (final labels / mask, accepted-as-is or corrected) ── annotation_objects
               │                    (each labelled object of the answer with its final mask)
               └── events (append-only interaction log with server-side monotonic + wall timestamps;
                           kinds, payloads and replay in annotations_db/events.py)
login_attempts (back-off state per user name / client address)   audit_log (every sign-in attempt)
training_jobs ── job_events (progress, loss curve, log)   site_settings (the held-out split)
model_versions ── model_checkpoints (the registry: parent, job, data, recipe, evaluation) ── model_promotions
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (JSON, BigInteger, Boolean, DateTime, Float, ForeignKey, Index, Integer, MetaData, String,
                        Text, UniqueConstraint)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
EventId = BigInteger().with_variant(Integer(), "sqlite")  # INTEGER PRIMARY KEY is SQLite's rowid (autoincrement)


def utcnow() -> datetime:
    """Naive UTC (the same on SQLite, which has no time zones, and PostgreSQL)."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Reader(Base):
    __tablename__ = "readers"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    role: Mapped[str] = mapped_column(String(16))  # 'admin' | 'reader'
    password_hash: Mapped[str] = mapped_column(String(256))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Dataset(Base):
    __tablename__ = "datasets"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    kind: Mapped[str] = mapped_column(String(32))  # images | dicom | nifti | cxr-lt
    root: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Case(Base):
    __tablename__ = "cases"
    id: Mapped[int] = mapped_column(primary_key=True)
    pseudo_id: Mapped[str] = mapped_column(String(32), unique=True)  # what every export shows
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"), index=True)
    source_uri: Mapped[str] = mapped_column(Text)
    source_key: Mapped[str | None] = mapped_column(String(256), index=True)  # dicom_id / file name in the source CSV
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    modality: Mapped[str | None] = mapped_column(String(16))
    format: Mapped[str] = mapped_column(String(16))  # png | jpeg | dicom | nifti
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    depth: Mapped[int | None] = mapped_column(Integer)  # slices of a volume; None for 2-D
    spacing: Mapped[list[Any] | None] = mapped_column(JSON)
    affine: Mapped[list[Any] | None] = mapped_column(JSON)  # 4×4 voxel→world of a volume
    sex: Mapped[str | None] = mapped_column(String(8))
    age: Mapped[float | None] = mapped_column(Float)
    race: Mapped[str | None] = mapped_column(String(64))
    view: Mapped[str | None] = mapped_column(String(32))
    study_uid: Mapped[str | None] = mapped_column(String(128))
    series_uid: Mapped[str | None] = mapped_column(String(128))
    sop_instance_uid: Mapped[str | None] = mapped_column(String(128))
    sop_class_uid: Mapped[str | None] = mapped_column(String(128))
    split: Mapped[str | None] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    labels: Mapped[list[CaseLabel]] = relationship(back_populates="case", cascade="all, delete-orphan")
    masks: Mapped[list[CaseMask]] = relationship(back_populates="case", cascade="all, delete-orphan")
    identity: Mapped[CaseIdentity | None] = relationship(back_populates="case", cascade="all, delete-orphan")


class CaseIdentity(Base):
    """Direct identifiers of a case's patient: kept for re-identification by the site, never exported."""
    __tablename__ = "case_identities"
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id"), primary_key=True)
    patient_id: Mapped[str | None] = mapped_column(String(128))
    patient_name: Mapped[str | None] = mapped_column(String(256))
    birth_date: Mapped[str | None] = mapped_column(String(16))
    case: Mapped[Case] = relationship(back_populates="identity")


class CaseLabel(Base):
    """Ground truth for one class of one case (1 positive, 0 negative; absent = not assessed)."""
    __tablename__ = "case_labels"
    __table_args__ = (UniqueConstraint("case_id", "class_name", "source"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id"), index=True)
    class_name: Mapped[str] = mapped_column(String(64))
    value: Mapped[int] = mapped_column(Integer)
    source: Mapped[str] = mapped_column(String(32), default="ground_truth")
    case: Mapped[Case] = relationship(back_populates="labels")


class CaseMask(Base):
    """A reference mask of a case (e.g. imported lung mask), COCO RLE (see rle.py)."""
    __tablename__ = "case_masks"
    __table_args__ = (UniqueConstraint("case_id", "name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    rle: Mapped[dict[str, Any]] = mapped_column(JSON)
    source_uri: Mapped[str | None] = mapped_column(Text)
    case: Mapped[Case] = relationship(back_populates="masks")


class LabelSet(Base):
    __tablename__ = "label_sets"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    classes: Mapped[list[Any]] = mapped_column(JSON)


class ModelVersion(Base):
    """A findings AI source (its name is the version): the built-in model of a checkpoint, imported predictions or a
    local torchxrayvision model. ``card``: its :class:`core_model.findings.FindingsCard` as a dict (evidence per
    class and the suggestion rule); None for a version recorded before sources had cards."""
    __tablename__ = "model_versions"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    label_set_id: Mapped[int | None] = mapped_column(ForeignKey("label_sets.id"))
    description: Mapped[str | None] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(String(32), default="built-in", server_default="built-in")
    origin: Mapped[str | None] = mapped_column(Text)
    card: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Prediction(Base):
    __tablename__ = "predictions"
    __table_args__ = (UniqueConstraint("case_id", "model_version_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id"), index=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"), index=True)
    probabilities: Mapped[dict[str, Any]] = mapped_column(JSON)
    mask_rle: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    uncertainty: Mapped[dict[str, Any]] = mapped_column(JSON)
    uncertainty_total: Mapped[float] = mapped_column(Float, index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Study(Base):
    __tablename__ = "studies"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    design: Mapped[str] = mapped_column(String(16))  # crossover | sequential
    seed: Mapped[int] = mapped_column(Integer)
    washout_days: Mapped[int] = mapped_column(Integer, default=0)
    allow_revisit: Mapped[bool] = mapped_column(Boolean, default=False)
    label_set_id: Mapped[int] = mapped_column(ForeignKey("label_sets.id"))
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    rating_max: Mapped[int] = mapped_column(Integer, default=100, server_default="100")  # 0 = binary answers only
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    arms: Mapped[list[StudyArm]] = relationship(order_by="StudyArm.position", cascade="all, delete-orphan")


class StudyArm(Base):
    __tablename__ = "study_arms"
    __table_args__ = (UniqueConstraint("study_id", "name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    name: Mapped[str] = mapped_column(String(32))
    shows_ai: Mapped[bool] = mapped_column(Boolean)
    position: Mapped[int] = mapped_column(Integer)


class Assignment(Base):
    """One reader reads one case in one arm; ``order_index`` is the reader's seeded reading order."""
    __tablename__ = "assignments"
    __table_args__ = (UniqueConstraint("study_id", "reader_id", "case_id", "arm_id", name="uq_assignments_read"),
                      UniqueConstraint("study_id", "reader_id", "order_index", name="uq_assignments_order"))
    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    reader_id: Mapped[int] = mapped_column(ForeignKey("readers.id"), index=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id"), index=True)
    arm_id: Mapped[int] = mapped_column(ForeignKey("study_arms.id"))
    session: Mapped[int] = mapped_column(Integer)  # 1-based reading session (crossover: 2 separated by washout)
    order_index: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending | submitted
    submitted_at: Mapped[datetime | None] = mapped_column(DateTime)


class Annotation(Base):
    """A reader's final answer: labels per class, optional confidence, final mask, accepted as-is or corrected."""
    __tablename__ = "annotations"
    id: Mapped[int] = mapped_column(primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id"), index=True)
    reader_id: Mapped[int] = mapped_column(ForeignKey("readers.id"), index=True)
    assignment_id: Mapped[int | None] = mapped_column(ForeignKey("assignments.id"), index=True)
    labels: Mapped[dict[str, Any]] = mapped_column(JSON)
    confidence: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    mask_rle: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    slice_index: Mapped[int | None] = mapped_column(Integer)  # a 2-D mask on a volume: its slice on the axial axis
    mask_slices: Mapped[list[int] | None] = mapped_column(JSON)  # a 3-D mask: the axial slices holding masks
    accepted_as_is: Mapped[bool] = mapped_column(Boolean)
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class AnnotationObject(Base):
    """One labelled object of an answer: its id within the answer (0 = the default, unlabelled object), its label
    (:mod:`core_model.objects`) and its final mask, as ``annotations.mask_rle`` is stored (2-D: the source image's
    grid; volumes: one 3-D mask with ``mask_slices``, or a 2-D mask on ``slice_index``). An answer saved before
    objects has no rows here: it reads as one default object, its ``annotations.mask_rle``."""
    __tablename__ = "annotation_objects"
    __table_args__ = (UniqueConstraint("annotation_id", "object_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    annotation_id: Mapped[int] = mapped_column(ForeignKey("annotations.id"), index=True)
    object_id: Mapped[int] = mapped_column(Integer)
    label: Mapped[str | None] = mapped_column(String(128))
    mask_rle: Mapped[dict[str, Any]] = mapped_column(JSON)
    slice_index: Mapped[int | None] = mapped_column(Integer)
    mask_slices: Mapped[list[int] | None] = mapped_column(JSON)


class Event(Base):
    """Append-only interaction log (UPDATE/DELETE are refused by triggers installed by the migration)."""
    __tablename__ = "events"
    __table_args__ = (Index("ix_events_assignment_id_id", "assignment_id", "id"),)
    id: Mapped[int] = mapped_column(EventId, primary_key=True, autoincrement=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id"), index=True)
    reader_id: Mapped[int] = mapped_column(ForeignKey("readers.id"), index=True)
    assignment_id: Mapped[int | None] = mapped_column(ForeignKey("assignments.id"))
    kind: Mapped[str] = mapped_column(String(24))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    wall_at: Mapped[datetime] = mapped_column(DateTime)
    mono_ns: Mapped[int] = mapped_column(BigInteger)
    clock_id: Mapped[str] = mapped_column(String(80))  # host + boot id: monotonic times compare only within one
    idempotency_key: Mapped[str | None] = mapped_column(String(64), unique=True)


class LoginSession(Base):
    """A server-side login: only the sha256 of the cookie token is stored; idle and absolute expiry, revocation."""
    __tablename__ = "login_sessions"
    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 hex of the token
    reader_id: Mapped[int] = mapped_column(ForeignKey("readers.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime)  # absolute expiry, whatever the activity
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime)
    user_agent: Mapped[str | None] = mapped_column(String(256))


class LoginAttempt(Base):
    """Failed sign-ins of one key (``user:<name>`` or ``addr:<client address>``) and until when it must wait: the
    login back-off, shared by every process on the database (annotations_db.security.BackoffPolicy)."""
    __tablename__ = "login_attempts"
    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(200), unique=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    last_failure_at: Mapped[datetime] = mapped_column(DateTime, index=True)
    blocked_until: Mapped[datetime | None] = mapped_column(DateTime)


class AuditLog(Base):
    """Security audit trail, one row per sign-in attempt (ok, failed, throttled, busy); no password is ever stored."""
    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(EventId, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime, index=True)
    kind: Mapped[str] = mapped_column(String(24), index=True)
    user_name: Mapped[str | None] = mapped_column(String(128))  # the name tried (known or not)
    reader_id: Mapped[int | None] = mapped_column(ForeignKey("readers.id"), index=True)
    address: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(256))
    detail: Mapped[str | None] = mapped_column(String(200))


class SiteSetting(Base):
    """One setting of this site's database (e.g. the held-out split's salt and share), JSON value."""
    __tablename__ = "site_settings"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class TrainingJob(Base):
    """A training run asked for by an admin and run by a ``launch.py worker`` (annotations_db.jobs): queued →
    running (claimed under a lease a live worker renews) → succeeded | failed | cancelled."""
    __tablename__ = "training_jobs"
    id: Mapped[int] = mapped_column(primary_key=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    task: Mapped[str] = mapped_column(String(16))  # seg | cls | seg,cls
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)  # data selection, recipe preset, start checkpoint, options
    created_by: Mapped[int | None] = mapped_column(ForeignKey("readers.id"))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    worker: Mapped[str | None] = mapped_column(String(128))
    claim_token: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None] = mapped_column(DateTime, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    step: Mapped[int] = mapped_column(Integer, default=0)
    total_steps: Mapped[int | None] = mapped_column(Integer)
    loss: Mapped[float | None] = mapped_column(Float)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class JobEvent(Base):
    """Progress and log of a training job, append-only: ``loss`` rows (step, value) for the curve, ``log`` lines."""
    __tablename__ = "job_events"
    __table_args__ = (Index("ix_job_events_job_id_id", "job_id", "id"),)
    id: Mapped[int] = mapped_column(EventId, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("training_jobs.id"))
    at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    kind: Mapped[str] = mapped_column(String(16))  # loss | log | state
    step: Mapped[int | None] = mapped_column(Integer)
    value: Mapped[float | None] = mapped_column(Float)
    message: Mapped[str | None] = mapped_column(Text)


class ModelCheckpoint(Base):
    """The model registry: every checkpoint a job produced (or an admin registered), with its lineage, data, recipe,
    the gate's evaluation and its state (candidate | promoted | retired | rejected)."""
    __tablename__ = "model_checkpoints"
    id: Mapped[int] = mapped_column(primary_key=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"), unique=True)
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("model_checkpoints.id"))
    job_id: Mapped[int | None] = mapped_column(ForeignKey("training_jobs.id"))
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    recipe: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    evaluation: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16), default="candidate")
    created_by: Mapped[int | None] = mapped_column(ForeignKey("readers.id"))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class ModelPromotion(Base):
    """Which checkpoint is in use since when: the latest row wins (a rollback is a promotion of an earlier one)."""
    __tablename__ = "model_promotions"
    id: Mapped[int] = mapped_column(primary_key=True)
    checkpoint_id: Mapped[int] = mapped_column(ForeignKey("model_checkpoints.id"), index=True)
    previous_id: Mapped[int | None] = mapped_column(ForeignKey("model_checkpoints.id"))
    kind: Mapped[str] = mapped_column(String(16))  # promote | auto | rollback
    by: Mapped[int | None] = mapped_column(ForeignKey("readers.id"))  # None: the auto-promotion rule
    reason: Mapped[str | None] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
