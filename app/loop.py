"""The closed loop in the app: start training jobs, watch them, compare, promote, roll back, follow the registry.

    adopt_at_start(service, checkpoint)     # at start: the app's checkpoint is in use unless the registry says otherwise
    watcher = RegistryWatcher(service)      # follows promotions made elsewhere (a worker's auto-promotion)
    job_id = start_job(service, session, recipe="quick", datasets=[...], init="in-use", auto_promote=True)
    job_view(service, session, job_id)      # progress, loss curve, log
    promote(service, session, checkpoint_id) / rollback(service, session, checkpoint_id)

Every function that acts takes the caller's session and refuses non-admins (``Forbidden``). Promoting or rolling back
switches the app to that checkpoint at once (:meth:`app.service.AppService.switch_model`: re-triage in the
background, new AI outputs and answers record the new version); other app processes on the same database follow
within :data:`WATCH_S` seconds through their :class:`RegistryWatcher`.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import pandas as pd

from app.service import AppError, AppService, Session

log = logging.getLogger("biascare.loop")
WATCH_S = 15.0
JOB_COLUMNS = ["id", "status", "task", "recipe", "progress", "step", "loss", "attempts", "worker", "created_at"]
CHECKPOINT_COLUMNS = ["id", "version", "state", "parent", "job", "heldout_images", "miou@5 (candidate / in use)",
                      "auto-promotion", "created_at"]


def _registry(service: AppService) -> Any:
    from annotations_db.registry import Registry
    return Registry(service.store)


def _queue(service: AppService) -> Any:
    from annotations_db.jobs import JobQueue
    return JobQueue(service.store)


# -- the checkpoint in use ---------------------------------------------------------------------------------------------
def adopt_at_start(service: AppService, checkpoint: Path | str | None) -> None:
    """At start: register the app's checkpoint when its version is new (a copy under ``DATA/models/``, so an upgrade
    that replaces the shipped file never changes a registered one); put it in use when nothing is (a new site);
    otherwise switch to the registry's checkpoint in use (a promotion made while the app was down) — a new shipped
    checkpoint is then a candidate the admin may promote."""
    registry = _registry(service)
    version = service.model_version
    if checkpoint and Path(checkpoint).is_file() and registry.find(version) is None:
        registry.register(kept_copy(service.data_dir, Path(checkpoint), version), version)
    if registry.in_use() is None:
        found = registry.find(version)
        if found is not None:
            registry.adopt(found.path, version)
        return
    sync_in_use(service)


def kept_copy(data_dir: Path, checkpoint: Path, version: str) -> Path:
    """``DATA/models/<version>.safetensors``, copied from ``checkpoint`` once: the file a registry entry points to."""
    import shutil

    target = data_dir / "models" / f"{''.join(c if c.isalnum() or c in '-_.' else '_' for c in version)}.safetensors"
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.is_file():
        shutil.copyfile(checkpoint, target)
    return target


_REFUSED: set[tuple[str, int]] = set()  # (database, checkpoint) whose file no longer matches: logged once, not loaded


def sync_in_use(service: AppService) -> bool:
    """Switch the app to the registry's checkpoint in use when it is another one; True when it switched. A checkpoint
    whose file changed since it was registered (other sha256, or another version inside) is refused and logged."""
    from annotations_db.registry import file_sha256
    from core_model.model import build_model

    current = _registry(service).in_use()
    key = (str(service.store.engine.url), current.id if current else -1)
    if current is None or current.version == service.model_version or key in _REFUSED:
        return False
    path = Path(current.path)
    model = build_model(path) if path.is_file() and file_sha256(path) == current.sha256 else None
    if model is None or str(model.info.version) != current.version:
        _REFUSED.add(key)
        log.error("checkpoint %s in use is refused: %s is missing or changed since it was registered", current.version,
                  path)
        return False
    log.info("switching to %s (%s)", current.version, current.path)
    service.switch_model(model)
    return True


class RegistryWatcher:
    """A daemon thread that calls :func:`sync_in_use` every ``every`` seconds."""

    def __init__(self, service: AppService, every: float = WATCH_S) -> None:
        self.service = service
        self.every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="biascare-registry", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                sync_in_use(self.service)
            except Exception:
                log.exception("could not switch to the checkpoint in use")

    def stop(self) -> None:
        self._stop.set()


def promote(service: AppService, session: Session, checkpoint_id: int, reason: str | None = None) -> str:
    """Put a registered checkpoint in use (the admin's decision) and switch the app to it."""
    service.require_admin(session)
    checkpoint = _act(lambda: _registry(service).promote(int(checkpoint_id), session.reader, reason))
    sync_in_use(service)
    return f"{checkpoint.version} is in use; the worklist is being re-triaged with it"


def rollback(service: AppService, session: Session, checkpoint_id: int, reason: str | None = None) -> str:
    """Put an earlier checkpoint back in use and switch the app to it."""
    service.require_admin(session)
    checkpoint = _act(lambda: _registry(service).rollback(int(checkpoint_id), session.reader, reason))
    sync_in_use(service)
    return f"rolled back: {checkpoint.version} is in use again"


def _act(action: Any) -> Any:
    from annotations_db.errors import NotFound
    try:
        return action()
    except (NotFound, ValueError) as error:
        raise AppError(str(error)) from None


# -- jobs -------------------------------------------------------------------------------------------------------------
def start_job(service: AppService, session: Session, *, task: str = "seg", recipe: str = "quick",
              datasets: list[str] | None = None, studies: list[str] | None = None, classes: list[str] | None = None,
              free: bool = True, init: str | int = "in-use", max_steps: int | None = None, gpus: int = 1,
              auto_promote: bool = False, min_images: int = 10) -> int:
    """Queue a training job (a ``launch.py worker`` runs it); returns its id."""
    from app.worker import RECIPES

    service.require_admin(session)
    if recipe not in RECIPES:
        raise AppError(f"unknown recipe {recipe!r}; presets: {', '.join(RECIPES)}")
    spec: dict[str, Any] = {"recipe": recipe, "overrides": {"max_steps": max_steps} if max_steps else {},
                            "selection": {"datasets": datasets or None, "studies": studies or None,
                                          "classes": classes or None, "free": bool(free)},
                            "init": init, "gpus": int(gpus),
                            "auto_promote": {"min_images": int(min_images)} if auto_promote else None}
    try:
        return _queue(service).submit(task, spec, created_by=session.reader)
    except ValueError as error:
        raise AppError(str(error)) from None


def cancel_job(service: AppService, session: Session, job_id: int) -> str:
    service.require_admin(session)
    job = _act(lambda: _queue(service).cancel(int(job_id)))
    return f"job {job.id}: {'cancel requested' if job.status == 'running' else job.status}"


def jobs_frame(service: AppService, session: Session) -> pd.DataFrame:
    service.require_admin(session)
    rows = [{"id": j.id, "status": j.status + (" (cancelling)" if j.cancel_requested and j.status == "running" else ""),
             "task": j.task, "recipe": j.spec.get("recipe"), "progress": round(j.progress, 3), "step": j.step,
             "loss": None if j.loss is None else round(j.loss, 4), "attempts": j.attempts, "worker": j.worker,
             "created_at": j.created_at.isoformat(timespec="seconds")} for j in _queue(service).jobs()]
    return pd.DataFrame(rows, columns=JOB_COLUMNS)


def job_view(service: AppService, session: Session, job_id: int) -> dict[str, Any]:
    """One job for the admin: a progress line, its loss curve (frame of step, loss) and its log."""
    service.require_admin(session)
    queue = _queue(service)
    job = _act(lambda: queue.job(int(job_id)))
    width = 30
    done = round(job.progress * width)
    bar = f"`[{'#' * done}{'.' * (width - done)}]` {job.progress:.0%} · step {job.step}/{job.total_steps or '?'}"
    headline = f"**job {job.id}** · {job.status} · {bar}" + (f" · loss {job.loss:.4f}" if job.loss is not None else "")
    if job.error:
        headline += f"\n\n{job.error}"
    curve = pd.DataFrame(queue.curve(job.id), columns=["step", "loss"])
    lines = [f"{at:%H:%M:%S} {message}" for _, at, _, message in queue.log(job.id)][-200:]
    return {"headline": headline, "curve": curve, "log": "\n".join(lines), "job": job}


def heldout_summary(service: AppService, session: Session) -> str:
    """The site's held-out split for the admin: its share and how many answers of record it holds."""
    from annotations_db.export import final_annotations
    from annotations_db.manifest import DEFAULT_HELDOUT_SHARE
    from annotations_db.site import heldout_split

    service.require_admin(session)
    split = heldout_split(service.store)
    if not split.fixed:
        return (f"Held-out split: not fixed yet — the first training job fixes it at {DEFAULT_HELDOUT_SHARE:.0%} of "
                "the cases (never trained on; the gate compares models on them).")
    with service.store.read_session() as s:
        finals = final_annotations(s)
    held = [a for c, a in finals if split.contains(c.pseudo_id)]
    masked = sum(a.mask_rle is not None for a in held)
    return (f"Held-out split: {split.share:.0%} of the cases (fixed) — {len(held)} of {len(finals)} answers of record, "
            f"{masked} with a mask: never trained on, the gate compares models on them.")


# -- registry -----------------------------------------------------------------------------------------------------
def checkpoints_frame(service: AppService, session: Session) -> pd.DataFrame:
    service.require_admin(session)
    rows = []
    for c in _registry(service).checkpoints():
        evaluation = c.evaluation or {}
        pair = [evaluation.get(side, {}).get("segmentation", {}).get("miou@5") for side in ("candidate", "current")]
        auto = evaluation.get("auto_promote")
        rows.append({"id": c.id, "version": c.version, "state": c.state, "parent": c.parent_id, "job": c.job_id,
                     "heldout_images": evaluation.get("heldout_images"),
                     "miou@5 (candidate / in use)": " / ".join("—" if v is None else f"{v:.3f}" for v in pair)
                     if evaluation else "",
                     "auto-promotion": "" if auto is None else ("rule met" if auto["ok"] else "rule not met"),
                     "created_at": c.created_at.isoformat(timespec="seconds")})
    return pd.DataFrame(rows, columns=CHECKPOINT_COLUMNS)


def comparison_markdown(service: AppService, session: Session, checkpoint_id: int) -> str:
    """The gate's side-by-side table of one candidate against the checkpoint in use when it was evaluated."""
    from app.gate import CLICK_METRICS

    service.require_admin(session)
    checkpoint = _act(lambda: _registry(service).checkpoint(int(checkpoint_id)))
    evaluation = checkpoint.evaluation or {}
    if not evaluation:
        return f"{checkpoint.version}: not evaluated"
    if "not_measured" in evaluation:
        return f"{checkpoint.version}: {evaluation['not_measured']}"
    title = (f"**{checkpoint.version}** vs **{evaluation.get('against')}** on {evaluation['heldout_images']} "
             "held-out image(s) of the site's accepted corrections (RITM protocol, 95 % bootstrap intervals)")
    lines = [title, "", "| metric | candidate | in use |", "|---|---|---|"]
    for part, metrics in (("segmentation", CLICK_METRICS), ("findings", ("macro_auroc",))):
        for metric in metrics:
            cells = [_cell(evaluation[side][part], metric) for side in ("candidate", "current")]
            if any(cells):
                lines.append(f"| {metric} | {cells[0] or '—'} | {cells[1] or '—'} |")
    auto = evaluation.get("auto_promote")
    if auto:
        lines += ["", "Auto-promotion rule: " + ("met" if auto["ok"] else "**not met**"), ""]
        lines += [f"- {reason}" for reason in auto["reasons"]]
    return "\n".join(lines)


def _cell(figures: dict[str, Any], metric: str) -> str:
    if metric not in figures or figures[metric] is None:
        return ""
    low, high = figures.get("intervals", {}).get(metric, [None, None])
    interval = f" [{low:.3f}, {high:.3f}]" if low is not None else ""
    return f"{figures[metric]:.3f}{interval}"
