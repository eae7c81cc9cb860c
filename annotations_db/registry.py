"""The model registry: every checkpoint, its lineage and evaluation, and which one is in use.

    registry = Registry(store)
    base = registry.adopt(path, "biascare-lite-v4")           # the checkpoint a site starts with: in use
    cand = registry.register(path, "job-7", parent=base.id, job_id=7, data={...}, recipe={...}, created_by=admin)
    registry.record_evaluation(cand.id, comparison)            # the promotion gate's side-by-side result
    registry.promote(cand.id, by=admin, reason="better on the held-out corrections")
    registry.rollback(base.id, by=admin)                      # an earlier version back in use
    registry.in_use()                                          # Checkpoint | None (the latest promotion wins)

A checkpoint's ``version`` is its ``model_versions`` name: what every prediction and answer made with it records.
States: ``candidate`` (registered, not in use) → ``promoted`` (in use) → ``retired`` (replaced); ``rejected`` (the
admin turned it down). A rollback is a promotion of an earlier checkpoint (kind ``rollback``), so the history of
``model_promotions`` says what was in use when, who decided and why (``by`` None: the auto-promotion rule).
"""
from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from annotations_db.errors import NotFound
from annotations_db.models import ModelCheckpoint, ModelPromotion, ModelVersion
from annotations_db.store import ReaderLike, ReaderRef, Store

STATES = ("candidate", "promoted", "retired", "rejected")


@dataclass(frozen=True)
class Checkpoint:
    """One registered checkpoint (plain record)."""
    id: int
    version: str
    path: str
    sha256: str
    parent_id: int | None
    job_id: int | None
    data: dict[str, Any] | None
    recipe: dict[str, Any] | None
    evaluation: dict[str, Any] | None
    state: str
    created_by: int | None
    created_at: datetime


@dataclass(frozen=True)
class Promotion:
    """One change of the checkpoint in use."""
    id: int
    checkpoint_id: int
    version: str
    previous_id: int | None
    kind: str  # initial | promote | auto | rollback
    by: int | None
    reason: str | None
    at: datetime


def file_sha256(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _reader_id(reader: ReaderLike | None) -> int | None:
    return reader.id if isinstance(reader, ReaderRef) else reader


class Registry:
    """Checkpoints and promotions of one database (see the module docstring)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def register(self, path: Path | str, version: str, *, parent: int | None = None, job_id: int | None = None,
                 data: Mapping[str, Any] | None = None, recipe: Mapping[str, Any] | None = None,
                 created_by: ReaderLike | None = None) -> Checkpoint:
        """Register a checkpoint file as a candidate under ``version`` (a new model version name)."""
        path = Path(path).resolve()
        sha = file_sha256(path)
        with self.store.write_session() as session:
            if session.scalar(select(ModelVersion.id).where(ModelVersion.name == version)) is not None and \
                    session.scalar(select(ModelCheckpoint.id).join(ModelVersion).where(ModelVersion.name == version)):
                raise ValueError(f"model version {version!r} is registered already")
            row = ModelCheckpoint(model_version_id=self.store.model_version_id(session, version), path=str(path),
                                  sha256=sha, parent_id=parent, job_id=job_id, data=dict(data or {}) or None,
                                  recipe=dict(recipe or {}) or None, state="candidate",
                                  created_by=_reader_id(created_by), created_at=self.store.now())
            session.add(row)
            session.flush()
            return self._record(session, row)

    def adopt(self, path: Path | str, version: str) -> Checkpoint:
        """The checkpoint a site runs before any promotion: registered (once) and put in use (kind ``initial``);
        returns the one in use when there is one already."""
        current = self.in_use()
        if current is not None:
            return current
        found = self.find(version)
        checkpoint = found or self.register(path, version)
        return self._promote(checkpoint.id, None, "the checkpoint the app started with", "initial")

    def find(self, version: str) -> Checkpoint | None:
        with self.store.read_session() as session:
            row = session.scalar(select(ModelCheckpoint).join(ModelVersion).where(ModelVersion.name == version))
            return self._record(session, row) if row is not None else None

    def checkpoint(self, checkpoint_id: int) -> Checkpoint:
        with self.store.read_session() as session:
            return self._record(session, self._row(session, checkpoint_id))

    def checkpoints(self) -> list[Checkpoint]:
        """Every registered checkpoint, newest first."""
        with self.store.read_session() as session:
            rows = session.scalars(select(ModelCheckpoint).order_by(ModelCheckpoint.id.desc())).all()
            return [self._record(session, row) for row in rows]

    def in_use(self) -> Checkpoint | None:
        """The checkpoint of the latest promotion (None before any)."""
        with self.store.read_session() as session:
            latest = session.scalar(select(ModelPromotion.checkpoint_id).order_by(ModelPromotion.id.desc()).limit(1))
            return None if latest is None else self._record(session, self._row(session, latest))

    def promotions(self) -> list[Promotion]:
        """The history of the checkpoint in use, newest first."""
        with self.store.read_session() as session:
            rows = session.execute(select(ModelPromotion, ModelVersion.name)
                                   .join(ModelCheckpoint, ModelCheckpoint.id == ModelPromotion.checkpoint_id)
                                   .join(ModelVersion, ModelVersion.id == ModelCheckpoint.model_version_id)
                                   .order_by(ModelPromotion.id.desc())).all()
        return [Promotion(p.id, p.checkpoint_id, name, p.previous_id, p.kind, p.by, p.reason, p.at) for p, name in rows]

    def record_evaluation(self, checkpoint_id: int, evaluation: Mapping[str, Any]) -> Checkpoint:
        with self.store.write_session() as session:
            row = self._row(session, checkpoint_id)
            row.evaluation = dict(evaluation)
            return self._record(session, row)

    def promote(self, checkpoint_id: int, by: ReaderLike | None, reason: str | None = None, *,
                auto: bool = False) -> Checkpoint:
        """Put a candidate (or a retired checkpoint) in use; ``by`` None with ``auto``: the gate's rule decided."""
        return self._promote(checkpoint_id, _reader_id(by), reason, "auto" if auto else "promote")

    def rollback(self, checkpoint_id: int, by: ReaderLike | None, reason: str | None = None) -> Checkpoint:
        """Put an earlier checkpoint back in use."""
        return self._promote(checkpoint_id, _reader_id(by), reason or "rollback", "rollback")

    def reject(self, checkpoint_id: int, reason: str | None = None) -> Checkpoint:
        """Turn a candidate down (it stays registered, it is never put in use unless promoted by hand)."""
        with self.store.write_session() as session:
            row = self._row(session, checkpoint_id)
            if row.state != "candidate":
                raise ValueError(f"only a candidate can be rejected; checkpoint {checkpoint_id} is {row.state}")
            row.state = "rejected"
            if reason:
                row.evaluation = {**(row.evaluation or {}), "rejected": reason}
            return self._record(session, row)

    # -- internals ------------------------------------------------------------------------------------------------
    def _promote(self, checkpoint_id: int, by: int | None, reason: str | None, kind: str) -> Checkpoint:
        with self.store.write_session() as session:
            row = self._row(session, checkpoint_id)
            previous = session.scalar(select(ModelPromotion.checkpoint_id).order_by(ModelPromotion.id.desc())
                                      .limit(1).with_for_update())
            if previous == row.id:
                return self._record(session, row)
            if previous is not None:
                self._row(session, previous).state = "retired"
            row.state = "promoted"
            session.add(ModelPromotion(checkpoint_id=row.id, previous_id=previous, kind=kind, by=by, reason=reason,
                                       at=self.store.now()))
            return self._record(session, row)

    @staticmethod
    def _row(session: Any, checkpoint_id: int) -> ModelCheckpoint:
        row = session.get(ModelCheckpoint, int(checkpoint_id))
        if row is None:
            raise NotFound(f"no registered checkpoint {checkpoint_id}")
        return row

    @staticmethod
    def _record(session: Any, row: ModelCheckpoint) -> Checkpoint:
        version = session.scalar(select(ModelVersion.name).where(ModelVersion.id == row.model_version_id))
        return Checkpoint(row.id, version, row.path, row.sha256, row.parent_id, row.job_id, row.data, row.recipe,
                          row.evaluation, row.state, row.created_by, row.created_at)
