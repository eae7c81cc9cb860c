"""Training jobs in the database: asked for by an admin in the app, run by ``launch.py worker`` processes.

    queue = JobQueue(store)                                   # lease_s: how long a claim lives without a heartbeat
    job_id = queue.submit("seg", {"recipe": "quick", "selection": {...}}, created_by=admin)
    claim = queue.claim("gpu-node-2/1234")                    # Claim(job, token) | None
    beat = queue.heartbeat(claim, step=10, total=100, loss=0.31)  # Beat(alive, cancel)
    queue.report(claim, losses=[(10, 0.31)], lines=["…"])     # the loss curve and the log the admin sees
    queue.finish(claim, "succeeded", result={...})            # or "failed" (error) / "cancelled"
    queue.cancel(job_id)                                      # queued: cancelled at once; running: asked to stop
    queue.release(claim, "worker stopping")                   # back to the queue (a worker stopped on purpose)

States: ``queued`` → ``running`` (claimed) → ``succeeded`` | ``failed`` | ``cancelled``. A claim holds a lease that the
worker renews with every heartbeat; a job whose worker stopped renewing (killed, machine lost) is claimable again once
its lease is over, and the next worker resumes it from the run's ``last.pt``. After :data:`MAX_ATTEMPTS` lost leases
it fails instead. Every write of a worker names its claim's token: a worker whose lease was taken over changes
nothing any more (its heartbeat answers ``alive=False`` and it stops).

Claiming: PostgreSQL picks the oldest claimable job with ``SELECT … FOR UPDATE SKIP LOCKED`` (workers on several
machines never wait on each other nor take the same job); SQLite (one machine) takes it with one conditional
``UPDATE … WHERE id = (SELECT … LIMIT 1) AND <still claimable>`` inside the write lock. Both then check that exactly
one row changed. Leases use the workers' wall clocks (UTC): keep them in sync (NTP); the default lease (60 s) is
far above usual clock skew.
"""
from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, insert, or_, select, update

from annotations_db.errors import NotFound
from annotations_db.models import JobEvent, TrainingJob
from annotations_db.store import ReaderLike, ReaderRef, Store

STATES = ("queued", "running", "succeeded", "failed", "cancelled")
FINAL = ("succeeded", "failed", "cancelled")
TASKS = ("seg", "seg,cls")  # masks → segmentation; with cls the labels of record → the findings heads
MAX_ATTEMPTS = 3
DEFAULT_LEASE_S = 60.0


@dataclass(frozen=True)
class Job:
    """A training job as the app and the workers see it."""
    id: int
    status: str
    task: str
    spec: dict[str, Any]
    created_by: int | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    worker: str | None
    attempts: int
    step: int
    total_steps: int | None
    loss: float | None
    cancel_requested: bool
    error: str | None
    result: dict[str, Any] | None
    lease_until: datetime | None

    @property
    def progress(self) -> float:
        """Share of the steps done, 0..1 (1 once succeeded)."""
        if self.status == "succeeded":
            return 1.0
        return min(1.0, self.step / self.total_steps) if self.total_steps else 0.0


@dataclass(frozen=True)
class Claim:
    """A worker's hold on a job: the job as claimed and the token every later write must name."""
    job: Job
    token: str


@dataclass(frozen=True)
class Beat:
    """A heartbeat's answer: ``alive`` (the claim still holds), ``cancel`` (an admin asked the job to stop)."""
    alive: bool
    cancel: bool


def _job(row: TrainingJob) -> Job:
    return Job(row.id, row.status, row.task, dict(row.spec or {}), row.created_by, row.created_at, row.started_at,
               row.finished_at, row.worker, row.attempts, row.step, row.total_steps, row.loss,
               bool(row.cancel_requested), row.error, row.result, row.lease_until)


class JobQueue:
    """The training-job table of one database (see the module docstring)."""

    def __init__(self, store: Store, lease_s: float = DEFAULT_LEASE_S) -> None:
        self.store = store
        self.lease_s = float(lease_s)

    # -- the app's side ------------------------------------------------------------------------------------------
    def submit(self, task: str, spec: Mapping[str, Any], created_by: ReaderLike | None = None) -> int:
        """Queue a job; returns its id."""
        if task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, not {task!r}")
        reader_id = created_by.id if isinstance(created_by, ReaderRef) else created_by
        with self.store.write_session() as session:
            row = TrainingJob(status="queued", task=task, spec=dict(spec), created_by=reader_id,
                              created_at=self.store.now(), attempts=0, step=0, cancel_requested=False)
            session.add(row)
            session.flush()
            self._event(session, row.id, "state", message="queued")
            return row.id

    def cancel(self, job_id: int) -> Job:
        """A queued job is cancelled at once; a running one is asked to stop (its worker ends it at its next
        heartbeat); a finished one is left as it is."""
        with self.store.write_session() as session:
            row = self._row(session, job_id)
            if row.status == "queued":
                row.status, row.finished_at = "cancelled", self.store.now()
                self._event(session, job_id, "state", message="cancelled before it started")
            elif row.status == "running" and not row.cancel_requested:
                row.cancel_requested = True
                self._event(session, job_id, "state", message="cancel requested")
            return _job(row)

    def job(self, job_id: int) -> Job:
        with self.store.read_session() as session:
            return _job(self._row(session, job_id))

    def jobs(self, limit: int = 50) -> list[Job]:
        """The latest jobs, newest first."""
        with self.store.read_session() as session:
            rows = session.scalars(select(TrainingJob).order_by(TrainingJob.id.desc()).limit(limit))
            return [_job(row) for row in rows]

    def curve(self, job_id: int) -> list[tuple[int, float]]:
        """The job's loss curve: (step, loss) in step order (a resumed run's steps once each, the latest kept)."""
        with self.store.read_session() as session:
            rows = session.execute(select(JobEvent.step, JobEvent.value).where(
                JobEvent.job_id == job_id, JobEvent.kind == "loss").order_by(JobEvent.id)).all()
        return sorted({int(step): float(value) for step, value in rows}.items())

    def log(self, job_id: int, after: int = 0, limit: int = 500) -> list[tuple[int, datetime, str, str]]:
        """Log and state lines after event id ``after``: (id, at, kind, message)."""
        with self.store.read_session() as session:
            rows = session.execute(select(JobEvent.id, JobEvent.at, JobEvent.kind, JobEvent.message).where(
                JobEvent.job_id == job_id, JobEvent.kind.in_(("log", "state")), JobEvent.id > after)
                .order_by(JobEvent.id).limit(limit)).all()
        return [(row.id, row.at, row.kind, row.message or "") for row in rows]

    # -- the workers' side ---------------------------------------------------------------------------------------
    def claim(self, worker: str) -> Claim | None:
        """Take the oldest claimable job (queued, or running with its lease over) for ``worker``; None if none."""
        self._expire()
        token, now = secrets.token_hex(16), self.store.now()
        claimable = self._claimable(now)
        with self.store.write_session() as session:
            if session.bind.dialect.name == "postgresql":
                candidate = session.scalar(select(TrainingJob.id).where(claimable).order_by(TrainingJob.id)
                                           .limit(1).with_for_update(skip_locked=True))
                if candidate is None:
                    return None
                which = TrainingJob.id == candidate
            else:
                which = TrainingJob.id == select(TrainingJob.id).where(claimable).order_by(TrainingJob.id) \
                    .limit(1).scalar_subquery()
            changed = session.execute(update(TrainingJob).where(which, claimable).values(
                status="running", worker=worker[:128], claim_token=token, lease_until=self._lease(now),
                attempts=TrainingJob.attempts + 1, started_at=func.coalesce(TrainingJob.started_at, now))
                .execution_options(synchronize_session=False))
            if changed.rowcount != 1:
                return None
            row = session.scalar(select(TrainingJob).where(TrainingJob.claim_token == token))
            self._event(session, row.id, "state", message=f"claimed by {worker} (attempt {row.attempts})")
            return Claim(_job(row), token)

    def heartbeat(self, claim: Claim, *, step: int | None = None, total: int | None = None,
                  loss: float | None = None) -> Beat:
        """Renew the claim's lease and record the progress; ``alive=False`` when the claim was lost."""
        values: dict[str, Any] = {"lease_until": self._lease(self.store.now())}
        values.update({k: v for k, v in (("step", step), ("total_steps", total), ("loss", loss)) if v is not None})
        with self.store.write_session() as session:
            changed = session.execute(update(TrainingJob).where(*self._mine(claim)).values(**values)
                                      .execution_options(synchronize_session=False))
            if changed.rowcount != 1:
                return Beat(False, False)
            cancel = session.scalar(select(TrainingJob.cancel_requested).where(TrainingJob.id == claim.job.id))
            return Beat(True, bool(cancel))

    def report(self, claim: Claim, *, losses: Iterable[tuple[int, float]] = (), lines: Sequence[str] = ()) -> bool:
        """Append loss points and log lines of the claim's job; False (nothing written) when the claim was lost."""
        now = self.store.now()
        rows = [{"job_id": claim.job.id, "at": now, "kind": "loss", "step": int(s), "value": float(v), "message": None}
                for s, v in losses]
        rows += [{"job_id": claim.job.id, "at": now, "kind": "log", "step": None, "value": None,
                  "message": line[:2000]} for line in lines]
        if not rows:
            return True
        with self.store.write_session() as session:
            if session.scalar(select(TrainingJob.id).where(*self._mine(claim))) is None:
                return False
            session.execute(insert(JobEvent.__table__), rows)
            return True

    def finish(self, claim: Claim, status: str, *, result: Mapping[str, Any] | None = None,
               error: str | None = None) -> bool:
        """End the claim's job as ``status`` (succeeded | failed | cancelled); False when the claim was lost."""
        if status not in FINAL:
            raise ValueError(f"a job ends as one of {', '.join(FINAL)}, not {status!r}")
        with self.store.write_session() as session:
            changed = session.execute(update(TrainingJob).where(*self._mine(claim)).values(
                status=status, finished_at=self.store.now(), lease_until=None, claim_token=None,
                result=dict(result) if result is not None else None, error=error)
                .execution_options(synchronize_session=False))
            if changed.rowcount != 1:
                return False
            self._event(session, claim.job.id, "state", message=status + (f": {error}" if error else ""))
            return True

    def release(self, claim: Claim, why: str) -> bool:
        """Give a running job back to the queue (its worker is stopping): the next worker claims it at once and
        resumes it, without waiting for the lease to run out; False when the claim was lost already."""
        with self.store.write_session() as session:
            changed = session.execute(update(TrainingJob).where(*self._mine(claim)).values(
                status="queued", claim_token=None, lease_until=None, worker=None)
                .execution_options(synchronize_session=False))
            if changed.rowcount != 1:
                return False
            self._event(session, claim.job.id, "state", message=f"released: {why}")
            return True

    # -- internals ------------------------------------------------------------------------------------------------
    def _lease(self, now: datetime) -> datetime:
        return now + timedelta(seconds=self.lease_s)

    @staticmethod
    def _claimable(now: datetime) -> Any:
        lost = and_(TrainingJob.status == "running", TrainingJob.lease_until < now,
                    TrainingJob.cancel_requested.is_(False), TrainingJob.attempts < MAX_ATTEMPTS)
        return or_(TrainingJob.status == "queued", lost)

    @staticmethod
    def _mine(claim: Claim) -> tuple[Any, ...]:
        return (TrainingJob.id == claim.job.id, TrainingJob.claim_token == claim.token,
                TrainingJob.status == "running")

    def _expire(self) -> None:
        """Jobs whose lease ran out and that must not run again: cancelled (asked to) or failed (too many tries)."""
        now = self.store.now()
        lost = and_(TrainingJob.status == "running", TrainingJob.lease_until < now)
        with self.store.write_session() as session:
            for row in session.scalars(select(TrainingJob).where(lost, or_(
                    TrainingJob.cancel_requested.is_(True), TrainingJob.attempts >= MAX_ATTEMPTS))):
                cancelled = row.cancel_requested
                row.status, row.finished_at, row.claim_token = ("cancelled" if cancelled else "failed"), now, None
                row.error = None if cancelled else f"its worker was lost {row.attempts} times (no heartbeat)"
                self._event(session, row.id, "state", message=row.status + ("" if cancelled else f": {row.error}"))

    @staticmethod
    def _row(session: Any, job_id: int) -> TrainingJob:
        row = session.get(TrainingJob, int(job_id))
        if row is None:
            raise NotFound(f"no training job {job_id}")
        return row

    def _event(self, session: Any, job_id: int, kind: str, *, message: str | None = None) -> None:
        session.add(JobEvent(job_id=job_id, at=self.store.now(), kind=kind, message=message))
