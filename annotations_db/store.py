"""The service layer of the annotation database: one :class:`Store` per process, on SQLite or PostgreSQL.

    store = Store.open("sqlite:///data/annotations.sqlite")      # or "postgresql+psycopg://user@host/db"
    admin = store.create_reader("ada", "s3cret", role="admin")
    reader = store.authenticate("ada", "s3cret")                   # ReaderRef | None
    store.record_prediction(case_id, "medsam-lite-v1", {"Edema": 0.8}, mask_rle, {"total": 0.3})
    items = store.worklist(reader, status="open", class_name="Edema")          # highest uncertainty first
    study_id = store.create_study("pilot", case_ids, reader_ids, design="crossover", seed=7, washout_days=28)
    for a in store.assignments_for(reader):                        # only this reader's, only unlocked sessions
        store.log_event(a, reader, "case_shown")                  # committed before it returns
        store.log_event(a, reader, "click", {"x": 10.5, "y": 20, "positive": True, "latency_ms": 41})
        store.save_annotation(a, reader, {"Edema": 1}, mask=mask, accepted_as_is=False)   # + 'submit' event
    store.time_per_case(a)                                          # submit − shown − idle, from events

Targets: ``log_event``/``save_annotation``/``time_per_case`` take an :class:`AssignmentView` (a study read) or a case
(int id, pseudonymous id str, or :class:`CaseRef`) for free annotation outside a study. Readers are a
:class:`ReaderRef` or an int id. A reader touching someone else's assignment or answer gets :class:`AccessDenied`
(admins may read everything).

Durability: every event is its own transaction, committed before ``log_event`` returns its id (SQLite WAL with
synchronous FULL by default or NORMAL, see annotations_db.engine; PostgreSQL commit). Timestamps are taken on the
server: wall clock (UTC) and ``time.monotonic_ns`` with a clock id (host + boot id); durations use the monotonic clock
whenever both ends share a clock id.
"""
from __future__ import annotations

import fcntl
import hashlib
import random
import secrets
import socket
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable

import numpy as np
from sqlalchemy import Engine, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from annotations_db import events as event_log
from annotations_db import migrate, rle
from annotations_db.engine import DEFAULT_URL, WRITE, make_engine
from annotations_db.events import EventRecord, derive_time_s
from annotations_db.errors import (AccessDenied, AlreadySubmitted, InvalidEvent, NotFound, StudyDesignError)
from annotations_db.models import (Annotation, AnnotationObject, Assignment, AuditLog, Case, CaseLabel, Event, LabelSet,
                                   LoginAttempt, LoginSession, ModelVersion, Prediction, Reader, Study, StudyArm,
                                   utcnow)
from annotations_db.security import AuditRecord, BackoffPolicy, check_password, hash_password
from core_model.classes import label_rules
from core_model.findings import FindingsCard

ROLES = ("admin", "reader")
DESIGNS = ("crossover", "sequential")
UNAIDED_ARM_NAMES = frozenset({"unaided", "no_ai", "without_ai", "control"})
SESSION_TOUCH_S = 30.0  # a login's last_seen_at is written at most this often (idle expiry is that coarse)


def _clock_id() -> str:
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = "unknown-boot"
    return f"{socket.gethostname()[:40]}/{boot}"


CLOCK_ID = _clock_id()
INSERT_EVENT = insert(Event.__table__)  # Core insert on the hot path (bench/db.py compares it with ORM add)


@dataclass(frozen=True)
class ReaderRef:
    id: int
    name: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


@dataclass(frozen=True)
class CaseRef:
    id: int
    pseudo_id: str


@dataclass(frozen=True)
class AssignmentView:
    id: int
    study_id: int
    study: str
    reader_id: int
    case_id: int
    case: str  # pseudonymous case id
    arm: str
    shows_ai: bool
    session: int
    order: int
    status: str
    available: bool
    submitted_at: datetime | None = None


@dataclass(frozen=True)
class StudySettings:
    id: int
    name: str
    design: str
    rating_max: int  # 0: binary answers only
    allow_revisit: bool
    washout_days: int
    classes: tuple[str, ...]
    ai_source: str | None = None  # the AI source the aided arm shows (a model version name)


@dataclass(frozen=True)
class AiSourceRecord:
    """One registered AI source as listed for the admin: name (= version), kind, origin, cases predicted."""
    name: str
    kind: str
    origin: str | None
    label_set: str | None
    predictions: int
    has_card: bool


@dataclass(frozen=True)
class SessionStatus:
    """One reading session of a reader in a study."""
    number: int
    arms: tuple[str, ...]
    reads: int
    submitted: int
    available: bool
    unlocks_at: datetime | None  # a later session: when its washout ends (None until the previous one is done)


@dataclass(frozen=True)
class WorklistItem:
    case_id: int
    case: str
    uncertainty: float | None
    probabilities: dict[str, float]
    annotated: bool


@dataclass(frozen=True)
class CaseInfo:
    """What the app needs to show a case (server side: ``source_uri`` is never exported)."""
    id: int
    pseudo_id: str
    source_uri: str
    format: str
    modality: str | None
    width: int
    height: int
    depth: int | None
    sex: str | None
    age: float | None
    view: str | None


@dataclass(frozen=True)
class ObjectMask:
    """One labelled object of an answer as the app saves it: its id within the answer (0: the default, unlabelled
    object), its label (None for the default object) and its final mask (array or RLE, the geometry of
    ``save_annotation``'s ``mask``; a volume's 3-D mask with ``mask_slices``, or a 2-D one on ``slice_index``)."""
    id: int
    label: str | None
    mask: np.ndarray | rle.Rle
    slice_index: int | None = None
    mask_slices: Sequence[int] | None = None


@dataclass(frozen=True)
class AnswerObjectRecord:
    """One object of a saved answer, as read back: id, label (None: the default object), mask RLE, slices."""
    annotation_id: int
    object_id: int
    label: str | None
    mask_rle: dict[str, Any]
    slice_index: int | None
    mask_slices: list[int] | None


ReaderLike = ReaderRef | int
CaseLike = CaseRef | int | str
Target = AssignmentView | CaseLike


def new_pseudo_id() -> str:
    """A random pseudonymous case id (no relation to the source file or patient)."""
    return f"c{secrets.token_hex(6)}"


def uncertainty_total(uncertainty: Mapping[str, float]) -> float:
    """The case-level uncertainty used for ranking: ``total`` when given, else the sum of the components."""
    if "total" in uncertainty:
        return float(uncertainty["total"])
    return float(sum(float(v) for v in uncertainty.values()))


class WriterQueue:
    """Serialises one SQLite file's writers across threads and processes with a lock file (flock).

    SQLite would serialise them anyway, but its busy handler polls with growing sleeps; a blocked flock wakes as soon
    as the holder is done, so 16 writer processes queue fairly instead of backing off. The kernel drops the lock of a
    killed process. For PostgreSQL (and in-memory SQLite) it does nothing.
    """

    def __init__(self, lock_path: str | None) -> None:
        self._thread_lock = threading.RLock()
        self._depth = 0  # re-entrant: only the outermost write takes and drops the file lock
        self._file = open(lock_path, "a+b") if lock_path else None  # noqa: SIM115 (held for the Store's life)

    @classmethod
    def for_engine(cls, engine: Engine) -> WriterQueue:
        database = engine.url.database if engine.dialect.name == "sqlite" else None
        return cls(f"{database}.write-lock" if database and database != ":memory:" else None)

    def __enter__(self) -> None:
        if self._file is not None:
            self._thread_lock.acquire()
            self._depth += 1
            if self._depth == 1:
                fcntl.flock(self._file.fileno(), fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self._depth -= 1
            if self._depth == 0:
                fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._thread_lock.release()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class Store:
    """Reader-study database service (see the module docstring)."""

    def __init__(self, engine: Engine, now: Callable[[], datetime] = utcnow) -> None:
        self.engine = engine
        self._write_engine = engine.execution_options(**WRITE)
        self._writer_queue = WriterQueue.for_engine(engine)
        self.now = now  # wall clock (UTC, naive); replaceable to test washout periods

    # -- lifecycle ------------------------------------------------------------------------------------------------
    @classmethod
    def open(cls, url: str = DEFAULT_URL, *, migrate_schema: bool = True, synchronous: str | None = None) -> Store:
        """Connect to ``url`` and (by default) run the Alembic migrations up to head."""
        engine = make_engine(url, synchronous=synchronous)
        if migrate_schema:
            migrate.upgrade(engine)
        return cls(engine)

    def close(self) -> None:
        self._writer_queue.close()
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def write_session(self) -> Iterator[Session]:
        """A session in one write transaction (SQLite: BEGIN IMMEDIATE), committed on exit."""
        with self._writer_queue, Session(self._write_engine, expire_on_commit=False) as session, session.begin():
            yield session

    @contextmanager
    def read_session(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            yield session

    # -- readers --------------------------------------------------------------------------------------------------
    def create_reader(self, name: str, password: str, role: str = "reader") -> ReaderRef:
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, not {role!r}")
        if not name.strip():
            raise ValueError("reader name must not be empty")
        with self.write_session() as session:
            if session.scalar(select(Reader.id).where(Reader.name == name)) is not None:
                raise ValueError(f"reader {name!r} exists already")
            reader = Reader(name=name, role=role, password_hash=hash_password(password))
            session.add(reader)
            session.flush()
            return ReaderRef(reader.id, reader.name, reader.role)

    def authenticate(self, name: str, password: str) -> ReaderRef | None:
        """The reader if ``password`` is theirs, else None (the same work for unknown names: :meth:`verify_login`)."""
        return self.verify_login(name, password)[0]

    def reader(self, reader: ReaderLike | str) -> ReaderRef:
        with self.read_session() as session:
            return self._reader(session, reader)

    def readers(self) -> list[ReaderRef]:
        with self.read_session() as session:
            return [ReaderRef(r.id, r.name, r.role) for r in session.scalars(select(Reader).order_by(Reader.id))]

    @staticmethod
    def _reader(session: Session, reader: ReaderLike | str) -> ReaderRef:
        if isinstance(reader, ReaderRef):
            return reader
        clause = Reader.name == reader if isinstance(reader, str) else Reader.id == int(reader)
        row = session.scalar(select(Reader).where(clause))
        if row is None:
            raise NotFound(f"no reader {reader!r}")
        return ReaderRef(row.id, row.name, row.role)

    # -- login sessions -------------------------------------------------------------------------------------------
    def create_login_session(self, reader: ReaderLike, *, absolute_s: float, user_agent: str | None = None) -> str:
        """A new login of ``reader`` valid for at most ``absolute_s``; returns the token (only its sha256 is stored)."""
        token = secrets.token_urlsafe(32)
        now = self.now()
        with self.write_session() as session:
            me = self._reader(session, reader)
            session.add(LoginSession(token_hash=token_hash(token), reader_id=me.id, created_at=now, last_seen_at=now,
                                     expires_at=now + timedelta(seconds=absolute_s),
                                     user_agent=user_agent[:256] if user_agent else None))
        return token

    def login_session(self, token: str | None, *, idle_s: float) -> ReaderRef | None:
        """The reader of a live login, or None (unknown, revoked, idle over ``idle_s``, expired, inactive reader).

        Refreshes ``last_seen_at`` at most once per :data:`SESSION_TOUCH_S`, so a busy page is not a write per request.
        """
        if not token:
            return None
        now = self.now()
        with self.read_session() as session:
            row = session.execute(select(LoginSession.id.label("login_id"), LoginSession.last_seen_at,
                                         LoginSession.expires_at, LoginSession.revoked_at,
                                         Reader.id.label("reader_id"), Reader.name, Reader.role, Reader.active)
                                  .join(Reader, Reader.id == LoginSession.reader_id)
                                  .where(LoginSession.token_hash == token_hash(token))).one_or_none()
        if row is None or not _login_alive(row, now, idle_s):
            return None
        if (now - row.last_seen_at).total_seconds() >= SESSION_TOUCH_S:
            with self.write_session() as session:
                session.execute(update(LoginSession).where(LoginSession.id == row.login_id).values(last_seen_at=now))
        return ReaderRef(row.reader_id, row.name, row.role)

    def revoke_login_session(self, token: str | None) -> None:
        """End one login (no-op for an unknown or already revoked token)."""
        if token:
            self._revoke(LoginSession.token_hash == token_hash(token))

    def revoke_reader_sessions(self, reader: ReaderLike) -> int:
        """End every login of ``reader`` (e.g. after a password change); returns how many were live."""
        reader_id = reader.id if isinstance(reader, ReaderRef) else int(reader)
        return self._revoke(LoginSession.reader_id == reader_id)

    def _revoke(self, clause: Any) -> int:
        with self.write_session() as session:
            result = session.execute(update(LoginSession).where(clause, LoginSession.revoked_at.is_(None))
                                     .values(revoked_at=self.now()))
            return int(result.rowcount or 0)

    # -- sign-in checks: back-off and audit log ----------------------------------------------------------------------
    def verify_login(self, name: str, password: str) -> tuple[ReaderRef | None, int | None]:
        """(the reader, if ``password`` is theirs; the id of the active reader called ``name``, if any).

        One scrypt pass whether the name exists or not (a dummy hash for unknown or inactive names), so the answer's
        timing does not tell which names exist."""
        with self.read_session() as session:
            row = session.execute(select(Reader.id, Reader.name, Reader.role, Reader.password_hash)
                                  .where(Reader.name == name, Reader.active.is_(True))).one_or_none()
        ok = check_password(password, None if row is None else row.password_hash)
        if row is None:
            return None, None
        return (ReaderRef(row.id, row.name, row.role) if ok else None), row.id

    def login_blocks(self, keys: Sequence[str]) -> dict[str, datetime]:
        """The keys among ``keys`` that must still wait, with the time their wait ends (store clock)."""
        now = self.now()
        with self.read_session() as session:
            rows = session.execute(select(LoginAttempt.key, LoginAttempt.blocked_until)
                                   .where(LoginAttempt.key.in_(list(keys)), LoginAttempt.blocked_until > now)).all()
        return {row.key: row.blocked_until for row in rows}

    def record_login_failure(self, policies: Mapping[str, BackoffPolicy]) -> dict[str, datetime | None]:
        """Count one failed sign-in for each key (``{key: its policy}``) in one transaction; returns each key's new
        end of wait (None: no wait yet). Rows quiet for longer than their window are dropped on the way."""
        now = self.now()
        keys = sorted(policies)  # one lock order for every transaction (PostgreSQL row locks)
        with self.write_session() as session:
            session.execute(self._upsert_attempts(keys, now))
            rows = session.scalars(select(LoginAttempt).where(LoginAttempt.key.in_(keys)).with_for_update()).all()
            ends = {row.key: _count_failure(row, policies[row.key], now) for row in rows}
            oldest = now - timedelta(seconds=max(p.window_s for p in policies.values()))
            session.execute(delete(LoginAttempt).where(LoginAttempt.last_failure_at < oldest,
                                                       LoginAttempt.key.not_in(keys)))
        return ends

    def _upsert_attempts(self, keys: Sequence[str], now: datetime) -> Any:
        """INSERT … ON CONFLICT DO NOTHING of fresh rows for ``keys`` (safe when two processes race)."""
        if self.engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as dialect_insert
        else:
            from sqlalchemy.dialects.sqlite import insert as dialect_insert
        values = [{"key": key, "failures": 0, "last_failure_at": now, "blocked_until": None} for key in keys]
        return dialect_insert(LoginAttempt).values(values).on_conflict_do_nothing(index_elements=["key"])

    def clear_login_failures(self, keys: Sequence[str]) -> None:
        """Forget the failures of ``keys`` (a successful sign-in clears its reader's name)."""
        with self.write_session() as session:
            session.execute(delete(LoginAttempt).where(LoginAttempt.key.in_(list(keys))))

    def write_audit(self, records: Sequence[AuditRecord]) -> None:
        """Append audit records in one transaction."""
        if records:
            with self.write_session() as session:
                session.execute(insert(AuditLog.__table__), [r.row() for r in records])

    def audit_log(self, requester: ReaderLike, *, limit: int = 100, kind: str | None = None) -> list[AuditRecord]:
        """The latest ``limit`` audit records (newest first), optionally of one ``kind``; admins only."""
        with self.read_session() as session:
            if not self._reader(session, requester).is_admin:
                raise AccessDenied("only admins may read the audit log")
            query = select(AuditLog).order_by(AuditLog.id.desc()).limit(max(1, int(limit)))
            rows = session.scalars(query.where(AuditLog.kind == kind) if kind else query).all()
        return [AuditRecord(r.at, r.kind, r.user_name, r.reader_id, r.address, r.user_agent, r.detail, r.id)
                for r in rows]

    # -- cases, label sets, model versions ---------------------------------------------------------------------------
    @staticmethod
    def _case(session: Session, case: CaseLike) -> CaseRef:
        if isinstance(case, CaseRef):
            return case
        clause = Case.pseudo_id == case if isinstance(case, str) else Case.id == int(case)
        row = session.execute(select(Case.id, Case.pseudo_id).where(clause)).first()
        if row is None:
            raise NotFound(f"no case {case!r}")
        return CaseRef(row.id, row.pseudo_id)

    def case(self, case: CaseLike) -> CaseRef:
        with self.read_session() as session:
            return self._case(session, case)

    def case_info(self, case: CaseLike) -> CaseInfo:
        with self.read_session() as session:
            row = session.get(Case, self._case(session, case).id)
            return CaseInfo(row.id, row.pseudo_id, row.source_uri, row.format, row.modality, row.width, row.height,
                            row.depth, row.sex, row.age, row.view)

    def reference_masks(self, case: CaseLike) -> dict[str, np.ndarray]:
        """Imported reference masks of a case (e.g. 'lung'), decoded to uint8 {0, 1} at source geometry."""
        from annotations_db.models import CaseMask
        with self.read_session() as session:
            ref = self._case(session, case)
            masks = session.scalars(select(CaseMask).where(CaseMask.case_id == ref.id))
            return {mask.name: rle.decode(mask.rle) for mask in masks}

    def cases(self, dataset: str | None = None) -> list[CaseRef]:
        from annotations_db.models import Dataset
        query = select(Case.id, Case.pseudo_id).order_by(Case.id)
        if dataset is not None:
            query = query.join(Dataset, Dataset.id == Case.dataset_id).where(Dataset.name == dataset)
        with self.read_session() as session:
            return [CaseRef(row.id, row.pseudo_id) for row in session.execute(query)]

    def case_labels(self, case: CaseLike) -> dict[str, int]:
        """Ground-truth labels of a case (classes not assessed are absent)."""
        with self.read_session() as session:
            ref = self._case(session, case)
            rows = session.execute(select(CaseLabel.class_name, CaseLabel.value).where(CaseLabel.case_id == ref.id))
            return {row.class_name: row.value for row in rows}

    @staticmethod
    def label_set_id(session: Session, name: str) -> int:
        """Id of label set ``name`` ('cxr-lt-26' / 'cxr-lt-40'), created from core_model.classes on first use."""
        found = session.scalar(select(LabelSet.id).where(LabelSet.name == name))
        if found is not None:
            return found
        from core_model.classes import label_set
        row = LabelSet(name=name, classes=list(label_set(name)))
        session.add(row)
        session.flush()
        return row.id

    @staticmethod
    def model_version_id(session: Session, name: str, label_set_name: str | None = None) -> int:
        found = session.scalar(select(ModelVersion.id).where(ModelVersion.name == name))
        if found is not None:
            return found
        label_set_id = Store.label_set_id(session, label_set_name) if label_set_name else None
        row = ModelVersion(name=name, label_set_id=label_set_id)
        session.add(row)
        session.flush()
        return row.id

    # -- AI sources -------------------------------------------------------------------------------------------------
    def register_ai_source(self, card: FindingsCard) -> int:
        """Store (or update) an AI source under ``card.name``: its kind, origin and card; returns its id.

        Refused (StudyDesignError) when the card changes for a source that a started study shows: the readers' reads
        must keep the evidence they saw."""
        with self.write_session() as session:
            return self._register(session, card).id

    def _register(self, session: Session, card: FindingsCard) -> ModelVersion:
        row = session.scalar(select(ModelVersion).where(ModelVersion.name == card.name))
        if row is None:
            row = ModelVersion(name=card.name)
            session.add(row)
        elif row.card is not None and row.card != card.to_dict():
            self._refuse_if_started(session, row.id, f"the AI source {card.name!r} cannot change")
        row.kind, row.origin, row.card = card.kind, card.origin, card.to_dict()
        row.label_set_id = self.label_set_id(session, card.label_set) if card.label_set else row.label_set_id
        session.flush()
        return row

    def replace_source_predictions(self, card: FindingsCard,
                                   predictions: Mapping[int, tuple[Mapping[str, float], rle.Rle | None]]) -> int:
        """Register ``card`` and make ``predictions`` ({case id: (probabilities, AI mask RLE or None)}) the source's
        whole output, in one transaction (earlier predictions of the source are replaced). Refused like
        :meth:`register_ai_source` once a study showing the source has started; returns the source's id."""
        with self.write_session() as session:
            row = self._register(session, card)
            self._refuse_if_started(session, row.id, f"the predictions of AI source {card.name!r} cannot change")
            session.execute(delete(Prediction).where(Prediction.model_version_id == row.id))
            rows = [dict(case_id=case_id, model_version_id=row.id, mask_rle=mask, uncertainty={},
                         probabilities={k: float(v) for k, v in probs.items()}, uncertainty_total=0.0,
                         created_at=self.now()) for case_id, (probs, mask) in predictions.items()]
            if rows:
                session.execute(insert(Prediction), rows)
            return row.id

    def ai_source(self, name: str) -> FindingsCard | None:
        """The card of the AI source ``name``; None when there is no such source or it was stored without a card."""
        with self.read_session() as session:
            row = session.scalar(select(ModelVersion).where(ModelVersion.name == name))
            return FindingsCard.from_dict(row.card) if row is not None and row.card else None

    def ai_sources(self) -> list[AiSourceRecord]:
        """Every AI source (model version), oldest first, with how many cases it has a prediction for."""
        counts = (select(Prediction.model_version_id, func.count().label("n"))
                  .group_by(Prediction.model_version_id).subquery())
        query = (select(ModelVersion, LabelSet.name, counts.c.n).outerjoin(LabelSet)
                 .outerjoin(counts, counts.c.model_version_id == ModelVersion.id).order_by(ModelVersion.id))
        with self.read_session() as session:
            return [AiSourceRecord(row.name, row.kind, row.origin, label_set, int(n or 0), row.card is not None)
                    for row, label_set, n in session.execute(query)]

    def set_study_ai_source(self, study: int | str, name: str) -> None:
        """Attach the AI source ``name`` to a study (its aided arm shows that source's output); refused with
        StudyDesignError once any read of the study has started (an event was logged), NotFound for an unknown
        study or source."""
        with self.write_session() as session:
            row = session.scalar(select(Study).where(Study.name == study if isinstance(study, str)
                                                     else Study.id == int(study)))
            if row is None:
                raise NotFound(f"no study {study!r}")
            source = session.scalar(select(ModelVersion.id).where(ModelVersion.name == name))
            if source is None:
                known = ", ".join(session.scalars(select(ModelVersion.name).order_by(ModelVersion.id))) or "none"
                raise NotFound(f"no AI source {name!r}; registered sources: {known}")
            if row.model_version_id != source:
                self._refuse_if_started(session, None, f"study {row.name!r} cannot change its AI source",
                                        study_id=row.id)
            row.model_version_id = source

    @staticmethod
    def _refuse_if_started(session: Session, model_version_id: int | None, what: str, *,
                           study_id: int | None = None) -> None:
        """StudyDesignError when a study (``study_id``, or any study showing ``model_version_id``) has reads with
        events: what a reader saw must not change under the recorded answers."""
        query = (select(Study.name, func.count(func.distinct(Event.assignment_id)))
                 .join(Assignment, Assignment.study_id == Study.id)
                 .join(Event, Event.assignment_id == Assignment.id).group_by(Study.name))
        query = query.where(Study.id == study_id) if study_id is not None else \
            query.where(Study.model_version_id == model_version_id)
        started = session.execute(query).first()
        if started is not None:
            raise StudyDesignError(f"{what}: study {started[0]!r} has started ({started[1]} read(s) opened)")

    # -- predictions and worklist -----------------------------------------------------------------------------------
    def record_prediction(self, case: CaseLike, model_version: str, probabilities: Mapping[str, float],
                          mask_rle: rle.Rle | np.ndarray | None = None,
                          uncertainty: Mapping[str, float] | None = None) -> int:
        """Store (or replace) the prediction of ``model_version`` for ``case``; returns the prediction id."""
        for name, p in probabilities.items():
            if not 0.0 <= float(p) <= 1.0:
                raise ValueError(f"probability of {name!r} must be in [0, 1], got {p}")
        mask = rle.encode(mask_rle) if isinstance(mask_rle, np.ndarray) else mask_rle
        components = {k: float(v) for k, v in (uncertainty or {}).items()}
        with self.write_session() as session:
            ref = self._case(session, case)
            version_id = self.model_version_id(session, model_version)
            row = session.scalar(select(Prediction).where(Prediction.case_id == ref.id,
                                                          Prediction.model_version_id == version_id))
            if row is None:
                row = Prediction(case_id=ref.id, model_version_id=version_id)
                session.add(row)
            row.probabilities = {k: float(v) for k, v in probabilities.items()}
            row.mask_rle, row.uncertainty = mask, components
            row.uncertainty_total = uncertainty_total(components)
            row.created_at = self.now()
            session.flush()
            return row.id

    def prediction(self, case: CaseLike, model_version: str | None = None) -> Prediction | None:
        """The prediction for a case: of ``model_version``, or the most recent one."""
        with self.read_session() as session:
            ref = self._case(session, case)
            query = select(Prediction).where(Prediction.case_id == ref.id)
            if model_version is not None:
                query = query.join(ModelVersion).where(ModelVersion.name == model_version)
            return session.scalar(query.order_by(Prediction.model_version_id.desc()).limit(1))

    def worklist(self, reader: ReaderLike, *, status: str = "open", class_name: str | None = None,
                 min_probability: float = 0.5, min_uncertainty: float | None = None,
                 model_version: str | None = None, dataset: str | None = None,
                 limit: int | None = None, card: FindingsCard | None = None) -> list[WorklistItem]:
        """Cases for free annotation, highest uncertainty first (cases without a prediction last).

        status: 'open' (no annotation by this reader yet), 'done' or 'all'; class_name keeps the cases where the AI
        suggests that class — by ``card``'s rule (:meth:`FindingsCard.suggested`, what the app passes: the source's
        card, with ``model_version`` its name) or, without a card, a probability >= min_probability;
        min_uncertainty drops more certain cases.
        """
        if status not in ("open", "done", "all"):
            raise ValueError(f"status must be 'open', 'done' or 'all', not {status!r}")
        with self.read_session() as session:
            me = self._reader(session, reader)
            predictions = self._latest_predictions(session, model_version)
            done = set(session.scalars(select(Annotation.case_id).where(Annotation.reader_id == me.id)))
            query = select(Case.id, Case.pseudo_id)
            if dataset is not None:
                from annotations_db.models import Dataset
                query = query.join(Dataset, Dataset.id == Case.dataset_id).where(Dataset.name == dataset)
            cases = session.execute(query).all()
        items = []
        for case_id, pseudo_id in cases:
            prediction = predictions.get(case_id)
            item = WorklistItem(case_id, pseudo_id, prediction[1] if prediction else None,
                                prediction[0] if prediction else {}, case_id in done)
            if _keep(item, status, class_name, min_probability, min_uncertainty, card):
                items.append(item)
        items.sort(key=lambda i: (i.uncertainty is None, -(i.uncertainty or 0.0), i.case_id))
        return items[:limit] if limit is not None else items

    @staticmethod
    def _latest_predictions(session: Session, model_version: str | None) -> dict[int, tuple[dict, float]]:
        query = select(Prediction.case_id, Prediction.probabilities, Prediction.uncertainty_total)
        if model_version is not None:
            query = query.join(ModelVersion).where(ModelVersion.name == model_version)
        query = query.order_by(Prediction.case_id, Prediction.model_version_id)
        return {row.case_id: (row.probabilities, row.uncertainty_total) for row in session.execute(query)}

    # -- studies and assignments --------------------------------------------------------------------------------------
    def create_study(self, name: str, case_ids: Sequence[CaseLike], reader_ids: Sequence[ReaderLike],
                     arms: Sequence[str] = ("unaided", "ai_aided"), design: str = "crossover", seed: int = 0,
                     washout_days: int = 28, allow_revisit: bool = False, label_set: str = "cxr-lt-26",
                     model_version: str | None = None, rating_max: int = 100) -> int:
        """Create a study with seeded per-reader assignments; returns the study id.

        ``rating_max``: each positive finding is rated 1..rating_max (the reader's confidence, for the ROC analysis);
        0 collects binary answers only. Check :meth:`ai_exposure` first: a reader who has seen a case with the AI
        outside the study is not blind to it in the unaided arm.

        crossover: every reader reads every case in every arm, one arm per session, arm order rotated across
        readers (Latin square), sessions separated by ``washout_days``. sequential: one session, each case read
        unaided then immediately AI-aided (arms in the given order). Case order is shuffled per reader and session
        with ``random.Random(f"{seed}:{reader_id}:{session}")``.
        """
        if design not in DESIGNS:
            raise StudyDesignError(f"design must be one of {DESIGNS}, not {design!r}")
        if not arms or len(set(arms)) != len(arms):
            raise StudyDesignError(f"arms must be distinct and non-empty, got {list(arms)}")
        with self.write_session() as session:
            if session.scalar(select(Study.id).where(Study.name == name)) is not None:
                raise StudyDesignError(f"study {name!r} exists already")
            cases = sorted({self._case(session, c).id for c in case_ids})
            readers = [self._reader(session, r).id for r in reader_ids]
            if not cases or not readers or len(set(readers)) != len(readers):
                raise StudyDesignError("a study needs at least one case and distinct readers")
            if not 0 <= int(rating_max) <= 1000:
                raise StudyDesignError(f"rating_max must be 0 (binary answers) or up to 1000, not {rating_max}")
            study = Study(name=name, design=design, seed=seed, washout_days=washout_days, rating_max=int(rating_max),
                          allow_revisit=allow_revisit, label_set_id=self.label_set_id(session, label_set),
                          model_version_id=self.model_version_id(session, model_version) if model_version else None)
            study.arms = [StudyArm(name=a, shows_ai=a not in UNAIDED_ARM_NAMES, position=i) for i, a in enumerate(arms)]
            session.add(study)
            session.flush()
            arm_ids = [arm.id for arm in study.arms]
            rows = [dict(study_id=study.id, reader_id=r, case_id=c, arm_id=arm_ids[a], session=s, order_index=o,
                         status="pending")
                    for r, c, a, s, o in plan_assignments(cases, readers, len(arms), design, seed)]
            session.execute(insert(Assignment), rows)
            return study.id

    def ai_exposure(self, case_ids: Sequence[CaseLike], reader_ids: Sequence[ReaderLike]) -> list[tuple[str, str]]:
        """(reader name, case pseudo id) pairs where the reader was shown the AI output on the case outside any
        study (an ``ai_shown`` event of free annotation): such reads are not blind in a study's unaided arm."""
        with self.read_session() as session:
            cases = {self._case(session, c).id for c in case_ids}
            readers = {self._reader(session, r).id for r in reader_ids}
            rows = session.execute(
                select(Reader.name, Case.pseudo_id).distinct().select_from(Event)
                .join(Reader, Reader.id == Event.reader_id).join(Case, Case.id == Event.case_id)
                .where(Event.kind == "ai_shown", Event.assignment_id.is_(None), Event.case_id.in_(cases or [-1]),
                       Event.reader_id.in_(readers or [-1]))).all()
        return sorted((row[0], row[1]) for row in rows)

    def study_settings(self, study_id: int) -> StudySettings:
        """The rules of one study that its reads need (ratings, revisits, washout, label set)."""
        with self.read_session() as session:
            study = session.get(Study, study_id)
            if study is None:
                raise NotFound(f"no study {study_id}")
            classes = tuple(session.get(LabelSet, study.label_set_id).classes)
            source = session.get(ModelVersion, study.model_version_id) if study.model_version_id else None
            return StudySettings(study.id, study.name, study.design, study.rating_max, study.allow_revisit,
                                 study.washout_days, classes, source.name if source else None)

    def study_sessions(self, reader: ReaderLike, study_id: int) -> list[SessionStatus]:
        """The reader's reading sessions of a study: reads, submitted, arms, whether open, and when a locked one
        unlocks (None while the previous session is unfinished)."""
        views = self.assignments_for(reader, study_id, include_locked=True)
        settings = self.study_settings(study_id)
        out = []
        for number in sorted({v.session for v in views}):
            reads = [v for v in views if v.session == number]
            previous = [v for v in views if v.session == number - 1]
            unlock = None
            if previous and all(v.status == "submitted" for v in previous):
                unlock = max(v.submitted_at for v in previous) + timedelta(days=settings.washout_days)
            out.append(SessionStatus(number, tuple(sorted({v.arm for v in reads})), len(reads),
                                     sum(v.status == "submitted" for v in reads), reads[0].available,
                                     None if number == 1 else unlock))
        return out

    def last_open_target(self, reader: ReaderLike) -> AssignmentView | CaseRef | None:
        """The case the reader last had on screen, if its case session is still open (no submit, no
        ``case_hidden`` after it) — what a reload, a new login or a restarted server reopens."""
        with self.read_session() as session:
            me = self._reader(session, reader)
            shown = session.execute(select(Event.case_id, Event.assignment_id, Event.id)
                                    .where(Event.reader_id == me.id, Event.kind == "case_shown")
                                    .order_by(Event.id.desc()).limit(1)).first()
            if shown is None:
                return None
            same = Event.assignment_id == shown.assignment_id if shown.assignment_id is not None \
                else Event.assignment_id.is_(None)
            closed = session.scalar(select(Event.id).where(
                Event.reader_id == me.id, Event.case_id == shown.case_id, same, Event.id > shown.id,
                Event.kind.in_(sorted(event_log.SEGMENT_END))).limit(1))
            if closed is not None:
                return None
            if shown.assignment_id is None:
                return self._case(session, shown.case_id)
        target = self.assignment(me, shown.assignment_id)
        return target if target.status != "submitted" and target.available else None

    def study_id(self, name: str) -> int:
        with self.read_session() as session:
            found = session.scalar(select(Study.id).where(Study.name == name))
        if found is None:
            raise NotFound(f"no study {name!r}")
        return found

    def assignments_for(self, reader: ReaderLike, study: int | str | None = None, *,
                        include_locked: bool = False) -> list[AssignmentView]:
        """The reader's own assignments in reading order; later crossover sessions appear once unlocked."""
        with self.read_session() as session:
            me = self._reader(session, reader)
            query = _assignment_query().where(Assignment.reader_id == me.id)
            if study is not None:
                query = query.where(Study.name == study if isinstance(study, str) else Study.id == study)
            rows = session.execute(query.order_by(Assignment.study_id, Assignment.order_index)).all()
        views = self._with_availability(rows)
        return views if include_locked else [v for v in views if v.available]

    def next_assignment(self, reader: ReaderLike, study: int | str | None = None) -> AssignmentView | None:
        pending = [a for a in self.assignments_for(reader, study) if a.status == "pending"]
        return pending[0] if pending else None

    def assignment(self, requester: ReaderLike, assignment_id: int) -> AssignmentView:
        """One assignment; AccessDenied unless it is the requester's own (or the requester is an admin)."""
        with self.read_session() as session:
            me = self._reader(session, requester)
            row = session.execute(_assignment_query().where(Assignment.id == assignment_id)).first()
            if row is None:
                raise NotFound(f"no assignment {assignment_id}")
            if row.reader_id != me.id and not me.is_admin:
                raise AccessDenied(f"reader {me.name!r} may not read assignment {assignment_id}")
            peers = session.execute(_assignment_query().where(Assignment.reader_id == row.reader_id,
                                                              Assignment.study_id == row.study_id)).all()
        return next(v for v in self._with_availability(peers) if v.id == assignment_id)

    def _with_availability(self, rows: Sequence[Any]) -> list[AssignmentView]:
        """Session k > 1 opens when session k−1 is fully submitted and its last submit is ``washout_days`` old."""
        by_study: dict[tuple[int, int], list[Any]] = {}
        for row in rows:
            by_study.setdefault((row.study_id, row.reader_id), []).append(row)
        open_sessions: dict[tuple[int, int], int] = {}
        for key, group in by_study.items():
            open_sessions[key] = _open_session(group, self.now())
        return [AssignmentView(row.id, row.study_id, row.study, row.reader_id, row.case_id, row.case, row.arm,
                               row.shows_ai, row.session, row.order_index, row.status,
                               row.session <= open_sessions[(row.study_id, row.reader_id)], row.submitted_at)
                for row in rows]

    # -- events -------------------------------------------------------------------------------------------------
    def log_event(self, target: Target, reader: ReaderLike, kind: str, payload: Mapping[str, Any] | None = None,
                  *, idempotency_key: str | None = None) -> int:
        """Append one interaction event in its own committed transaction and return its id.

        ``idempotency_key`` (optional, globally unique) makes a client retry return the first event's id instead
        of writing a duplicate. Submits go through :meth:`save_annotation` for study assignments.
        """
        body = event_log.validate(kind, payload)
        reader_id = reader.id if isinstance(reader, ReaderRef) else int(reader)
        try:
            with self._writer_queue, self._write_engine.begin() as connection:
                case_id, assignment_id = self._event_target(connection, target, reader_id, kind)
                result = connection.execute(INSERT_EVENT, dict(
                    case_id=case_id, reader_id=reader_id, assignment_id=assignment_id, kind=kind, payload=body,
                    wall_at=self.now(), mono_ns=time.monotonic_ns(), clock_id=CLOCK_ID,
                    idempotency_key=idempotency_key))
                return int(result.inserted_primary_key[0])
        except IntegrityError as error:
            return self._existing_event(error, target, idempotency_key)

    def _existing_event(self, error: IntegrityError, target: Target, idempotency_key: str | None) -> int:
        """A retried event (same idempotency key) → the first one's id; a dangling case id → NotFound."""
        with self.read_session() as session:
            if idempotency_key is not None:
                existing = session.scalar(select(Event.id).where(Event.idempotency_key == idempotency_key))
                if existing is not None:
                    return int(existing)
            if not isinstance(target, AssignmentView):
                self._case(session, target)  # raises NotFound for an unknown case
        raise error

    def _event_target(self, connection: Any, target: Target, reader_id: int, kind: str) -> tuple[int, int | None]:
        if not isinstance(target, AssignmentView):
            if isinstance(target, (int, CaseRef)):  # existence is enforced by the foreign key
                return (target.id if isinstance(target, CaseRef) else int(target)), None
            row = connection.execute(select(Case.id).where(Case.pseudo_id == target)).first()
            if row is None:
                raise NotFound(f"no case {target!r}")
            return row.id, None
        row = connection.execute(select(Assignment.reader_id, Assignment.case_id, StudyArm.shows_ai)
                                 .join(StudyArm, StudyArm.id == Assignment.arm_id)
                                 .where(Assignment.id == target.id)).first()
        if row is None:
            raise NotFound(f"no assignment {target.id}")
        if row.reader_id != reader_id:
            raise AccessDenied(f"reader {reader_id} may not log events on assignment {target.id}")
        if kind == "ai_shown" and not row.shows_ai:
            raise InvalidEvent(f"assignment {target.id} is in an unaided arm: the AI output must not be shown")
        if kind == "submit":
            raise InvalidEvent("a study read is submitted with save_annotation(), which logs the submit event")
        return row.case_id, target.id

    def events(self, target: Target, requester: ReaderLike, reader: ReaderLike | None = None) -> list[EventRecord]:
        """Events of an assignment (or of ``reader`` on a case outside studies), in the order they were written."""
        with self.read_session() as session:
            me = self._reader(session, requester)
            query = select(Event).order_by(Event.id)
            if isinstance(target, AssignmentView):
                owner = session.scalar(select(Assignment.reader_id).where(Assignment.id == target.id))
                if owner != me.id and not me.is_admin:
                    raise AccessDenied(f"reader {me.name!r} may not read events of assignment {target.id}")
                query = query.where(Event.assignment_id == target.id)
            else:
                whose = self._reader(session, reader) if reader is not None else me
                if whose.id != me.id and not me.is_admin:
                    raise AccessDenied(f"reader {me.name!r} may not read events of reader {whose.name!r}")
                query = query.where(Event.case_id == self._case(session, target).id, Event.reader_id == whose.id,
                                    Event.assignment_id.is_(None))
            return [EventRecord(e.id, e.kind, e.payload, e.wall_at, e.mono_ns, e.clock_id)
                    for e in session.scalars(query)]

    def time_per_case(self, target: Target, requester: ReaderLike | None = None) -> float | None:
        """Seconds spent on a case: Σ(submit or hide − shown) − Σ(idle), derived from the event log."""
        if requester is None:
            requester = target.reader_id if isinstance(target, AssignmentView) else None
        if requester is None:
            raise ValueError("time_per_case of a case outside a study needs the requesting reader")
        return derive_time_s(self.events(target, requester))

    # -- annotations -------------------------------------------------------------------------------------------------
    def save_annotation(self, target: Target, reader: ReaderLike, labels: Mapping[str, int], *,
                        mask: np.ndarray | rle.Rle | None = None, accepted_as_is: bool = False,
                        confidence: Mapping[str, float] | None = None, slice_index: int | None = None,
                        mask_slices: Sequence[int] | None = None, model_version: str | None = None,
                        label_set: str = "cxr-lt-40", objects: Sequence[ObjectMask] | None = None) -> int:
        """Save a final answer and its 'submit' event in one transaction; returns the annotation id.

        Labels are {class: 0/1} from the study's label set (or ``label_set`` outside a study), checked with its rules
        ('Normal' excludes findings). In a study that collects ratings (``rating_max`` > 0), ``confidence`` must rate
        every positive finding 1..rating_max (see :func:`validate_ratings`); outside studies it is optional. A second
        answer to an assignment is refused unless the study allows revisits. A volume's 3-D mask (voxel grid
        (I, J, K)) comes with ``mask_slices``, the axial slices that hold the reader's masks.

        ``objects``: the answer's labelled objects (:class:`ObjectMask`), each saved with its label and mask in
        ``annotation_objects``; the answer's ``mask`` is then the first object's (pass no ``mask`` with them). Ids
        must be distinct, a labelled object has an id ≥ 1 and a label of the case's object label set
        (:func:`core_model.objects.object_set_for`); ValueError naming the cause otherwise.
        """
        if objects:
            if mask is not None:
                raise ValueError("pass the answer's masks either as 'mask' or as 'objects', not both")
            first = objects[0]
            mask, slice_index, mask_slices = first.mask, first.slice_index, first.mask_slices
        mask_rle = rle.encode(mask) if isinstance(mask, np.ndarray) else mask
        with self.write_session() as session:
            me = self._reader(session, reader)
            if isinstance(target, AssignmentView):
                case_id, assignment_id, study = self._claim_assignment(session, target, me)
                classes = session.get(LabelSet, study.label_set_id).classes
                clean = validate_labels(labels, classes)
                confidence = validate_ratings(confidence, clean, classes, study.rating_max) if study.rating_max \
                    else confidence
            else:
                case_id, assignment_id = self._case(session, target).id, None
                clean = validate_labels(labels, session.get(LabelSet, self.label_set_id(session, label_set)).classes)
            if mask_rle is not None:
                check_mask_geometry(session.get(Case, case_id), mask_rle, slice_index, mask_slices)
            version_id = self.model_version_id(session, model_version) if model_version else None
            annotation = Annotation(case_id=case_id, reader_id=me.id, assignment_id=assignment_id, labels=clean,
                                    confidence=dict(confidence) if confidence else None, mask_rle=mask_rle,
                                    slice_index=slice_index, accepted_as_is=accepted_as_is,
                                    mask_slices=sorted(int(k) for k in mask_slices) if mask_slices else None,
                                    model_version_id=version_id, created_at=self.now())
            session.add(annotation)
            session.flush()
            if objects:
                self._add_objects(session, annotation.id, session.get(Case, case_id), objects)
            session.execute(insert(Event).values(
                case_id=case_id, reader_id=me.id, assignment_id=assignment_id, kind="submit",
                payload={"annotation_id": annotation.id, "accepted_as_is": accepted_as_is},
                wall_at=self.now(), mono_ns=time.monotonic_ns(), clock_id=CLOCK_ID))
            return annotation.id

    @staticmethod
    def _add_objects(session: Session, annotation_id: int, case: Case, objects: Sequence[ObjectMask]) -> None:
        """The answer's objects, each checked (id, label, mask geometry) and written with its mask."""
        from core_model.objects import DEFAULT_OBJECT, object_set_for
        labels = object_set_for(case.depth is not None)
        ids = [int(o.id) for o in objects]
        if len(set(ids)) != len(ids):
            raise ValueError(f"the objects of an answer need distinct ids, got {ids}")
        for item in objects:
            if isinstance(item.id, bool) or not isinstance(item.id, int) or item.id < 0:
                raise ValueError(f"an object id is an integer ≥ 0, got {item.id!r}")
            if (item.id == DEFAULT_OBJECT) != (item.label is None):
                raise ValueError(f"object {item.id}: the default object (0) has no label, a labelled one an id ≥ 1")
            if item.label is not None:
                labels.get(item.label)
            mask_rle = rle.encode(item.mask) if isinstance(item.mask, np.ndarray) else item.mask
            check_mask_geometry(case, mask_rle, item.slice_index, item.mask_slices)
            session.add(AnnotationObject(
                annotation_id=annotation_id, object_id=item.id, label=item.label, mask_rle=mask_rle,
                slice_index=item.slice_index,
                mask_slices=sorted(int(k) for k in item.mask_slices) if item.mask_slices else None))

    def answer_objects(self, annotation_id: int) -> list[AnswerObjectRecord]:
        """The objects of a saved answer, by object id; an answer saved before objects (or with one default object
        saved as a plain mask) reads as its one default object (empty when it has no mask)."""
        with self.read_session() as session:
            return answer_objects(session, annotation_id)

    def _claim_assignment(self, session: Session, target: AssignmentView,
                          me: ReaderRef) -> tuple[int, int, Study]:
        assignment = session.get(Assignment, target.id)
        if assignment is None:
            raise NotFound(f"no assignment {target.id}")
        if assignment.reader_id != me.id:
            raise AccessDenied(f"reader {me.name!r} may not answer assignment {target.id}")
        study = session.get(Study, assignment.study_id)
        if assignment.status == "submitted" and not study.allow_revisit:
            raise AlreadySubmitted(f"assignment {target.id} was submitted already and study {study.name!r} "
                                   "does not allow revisits")
        assignment.status, assignment.submitted_at = "submitted", self.now()
        return assignment.case_id, assignment.id, study

    def answers(self, requester: ReaderLike, reader: ReaderLike | None = None) -> list[Annotation]:
        """A reader's saved answers (latest last); AccessDenied for another reader's unless requester is admin."""
        with self.read_session() as session:
            me = self._reader(session, requester)
            whose = self._reader(session, reader) if reader is not None else me
            if whose.id != me.id and not me.is_admin:
                raise AccessDenied(f"reader {me.name!r} may not read the answers of {whose.name!r}")
            return list(session.scalars(select(Annotation).where(Annotation.reader_id == whose.id)
                                        .order_by(Annotation.id)))

    def counts(self) -> dict[str, int]:
        """Row counts per table (for the CLI and health checks)."""
        from annotations_db.models import Base
        with self.read_session() as session:
            return {name: int(session.scalar(select(func.count()).select_from(table)))
                    for name, table in Base.metadata.tables.items()}


# -- pure helpers ------------------------------------------------------------------------------------------------
def answer_objects(session: Session, annotation_id: int) -> list[AnswerObjectRecord]:
    """:meth:`Store.answer_objects` inside an open session (the exports read it so)."""
    rows = list(session.scalars(select(AnnotationObject).where(AnnotationObject.annotation_id == annotation_id)
                                .order_by(AnnotationObject.object_id)))
    if rows:
        return [AnswerObjectRecord(annotation_id, r.object_id, r.label, r.mask_rle, r.slice_index, r.mask_slices)
                for r in rows]
    annotation = session.get(Annotation, annotation_id)
    if annotation is None or annotation.mask_rle is None:
        return []
    return [AnswerObjectRecord(annotation_id, event_log.DEFAULT_OBJECT, None, annotation.mask_rle,
                               annotation.slice_index, annotation.mask_slices)]


def token_hash(token: str) -> str:
    """What the database keeps of a login token: its sha256 (hex)."""
    return hashlib.sha256(token.encode()).hexdigest()


def _login_alive(row: Any, now: datetime, idle_s: float) -> bool:
    """A login row (with its reader's ``active``) is usable at ``now``."""
    return (row.revoked_at is None and bool(row.active) and now < row.expires_at
            and (now - row.last_seen_at).total_seconds() <= idle_s)


def _count_failure(row: LoginAttempt, policy: BackoffPolicy, now: datetime) -> datetime | None:
    """One more failure on ``row`` (restarting from 1 after a quiet window); sets and returns its end of wait."""
    quiet = (now - row.last_failure_at).total_seconds() > policy.window_s
    row.failures = 1 if quiet else row.failures + 1
    row.last_failure_at = now
    wait = policy.wait_s(row.failures)
    row.blocked_until = now + timedelta(seconds=wait) if wait > 0 else None
    return row.blocked_until


def _keep(item: WorklistItem, status: str, class_name: str | None, min_probability: float,
          min_uncertainty: float | None, card: FindingsCard | None) -> bool:
    if status == "open" and item.annotated or status == "done" and not item.annotated:
        return False
    if class_name is not None and card is not None and class_name not in card.suggested(item.probabilities):
        return False
    if class_name is not None and card is None and float(item.probabilities.get(class_name, 0.0)) < min_probability:
        return False
    return min_uncertainty is None or (item.uncertainty is not None and item.uncertainty >= min_uncertainty)


def _assignment_query():  # type: ignore[no-untyped-def]
    return (select(Assignment.id, Assignment.study_id, Study.name.label("study"), Assignment.reader_id,
                   Assignment.case_id, Case.pseudo_id.label("case"), StudyArm.name.label("arm"), StudyArm.shows_ai,
                   Assignment.session, Assignment.order_index, Assignment.status, Assignment.submitted_at,
                   Study.washout_days)
            .join(Study, Study.id == Assignment.study_id).join(StudyArm, StudyArm.id == Assignment.arm_id)
            .join(Case, Case.id == Assignment.case_id))


def _open_session(rows: Sequence[Any], now: datetime) -> int:
    """The highest session a reader may work on, given washout after each completed session."""
    sessions = sorted({row.session for row in rows})
    allowed = sessions[0]
    for previous, following in zip(sessions, sessions[1:]):
        done = [row for row in rows if row.session == previous]
        if any(row.status != "submitted" for row in done):
            break
        last = max(row.submitted_at for row in done)
        if now < last + timedelta(days=done[0].washout_days):
            break
        allowed = following
    return allowed


def plan_assignments(case_ids: Sequence[int], reader_ids: Sequence[int], n_arms: int, design: str,
                     seed: int) -> list[tuple[int, int, int, int, int]]:
    """(reader, case, arm index, session, order) for every read of a study; deterministic given ``seed``."""
    plan = []
    for k, reader in enumerate(reader_ids):
        if design == "crossover":
            arm_order = [(k + i) % n_arms for i in range(n_arms)]  # Latin-square rotation across readers
            reads = []
            for session, arm in enumerate(arm_order, start=1):
                cases = list(case_ids)
                random.Random(f"{seed}:{reader}:{session}").shuffle(cases)
                reads += [(reader, c, arm, session) for c in cases]
        else:
            cases = list(case_ids)
            random.Random(f"{seed}:{reader}:1").shuffle(cases)
            reads = [(reader, c, arm, 1) for c in cases for arm in range(n_arms)]
        plan += [(r, c, a, s, order) for order, (r, c, a, s) in enumerate(reads, start=1)]
    return plan


def validate_labels(labels: Mapping[str, int], classes: Sequence[str]) -> dict[str, int]:
    """{class: 0/1} checked against the label set's classes and rules (ValueError says what is wrong)."""
    bad = {k: v for k, v in labels.items() if v not in (0, 1, True, False)}
    if bad:
        raise ValueError(f"answers must be 0 or 1, got {bad}")
    label_rules("answer", classes).check(k for k, v in labels.items() if v)
    unknown = sorted(set(labels) - set(classes))
    if unknown:
        raise ValueError(f"unknown class name(s) {unknown}; the label set has {len(classes)} classes")
    return {k: int(v) for k, v in labels.items()}


def validate_ratings(ratings: Mapping[str, Any] | None, labels: Mapping[str, int], classes: Sequence[str],
                     rating_max: int) -> dict[str, int] | None:
    """Per-class confidence ratings for a study that collects them (``rating_max`` > 0), else None.

    A rating is the reader's confidence that the finding is present, 1..rating_max for every finding answered
    positive; findings answered negative are rated 0 (the lowest rank of the ROC analysis)."""
    if rating_max <= 0:
        return None
    given = dict(ratings or {})
    unknown = sorted(set(given) - set(classes))
    if unknown:
        raise ValueError(f"ratings for unknown class(es) {unknown}")
    missing = [c for c in classes if labels.get(c) and not rating_in_range(given.get(c), 1, rating_max)]
    if missing:
        raise ValueError(f"rate your confidence (1–{rating_max}) for: {', '.join(missing)}")
    return {c: int(given[c]) if labels.get(c) else 0 for c in classes}


def rating_in_range(value: Any, low: int, high: int) -> bool:
    """An integer rating (not a bool) within low..high."""
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def check_mask_geometry(case: Case, mask_rle: rle.Rle, slice_index: int | None,
                        mask_slices: Sequence[int] | None = None) -> None:
    """Masks are stored at source geometry: (height, width) for 2-D, (I, J, K) or one displayed slice for volumes;
    ``mask_slices`` (3-D masks only) must be slices of the volume."""
    if mask_slices is not None and case.depth is None:
        raise ValueError(f"case {case.pseudo_id} is a 2-D image: its mask has no slices")
    if mask_slices is not None:
        from core_model.io.volume import axial_axis
        shape3 = list(mask_rle.get("shape", []))
        axis = axial_axis(np.asarray(case.affine, dtype=float)) if case.affine else 2
        if len(shape3) != 3 or any(not 0 <= int(k) < int(shape3[axis]) for k in mask_slices):
            raise ValueError(f"mask slices {list(mask_slices)} of volume case {case.pseudo_id} must be slices of a "
                             "3-D mask")
    shape = list(mask_rle.get("shape", mask_rle["size"]))
    if case.depth is None and shape != [case.height, case.width]:
        raise ValueError(f"mask of case {case.pseudo_id} must be {case.height}×{case.width} (the source image), "
                         f"got {shape}")
    if case.depth is not None and len(shape) == 2 and slice_index is None:
        raise ValueError(f"a 2-D mask on volume case {case.pseudo_id} needs slice_index")
    if case.depth is not None and len(shape) == 3 and shape != [case.width, case.height, case.depth]:
        raise ValueError(f"mask of volume case {case.pseudo_id} must be {[case.width, case.height, case.depth]}, "
                         f"got {shape}")
