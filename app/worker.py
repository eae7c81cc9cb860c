"""``python launch.py worker --db URL --data DIR``: run the training jobs that admins start in the app.

A worker loops: claim a job (:class:`annotations_db.jobs.JobQueue`: ``SKIP LOCKED`` on PostgreSQL, so several GPU
machines can serve one site; a conditional UPDATE on SQLite), run it, claim the next. Running a job:

1. **export** (first attempt only, kept in the run folder so a resumed run trains on the same data): the job's data
   selection of the answers of record (:func:`annotations_db.export.export_training`; the site's held-out split is
   fixed by the first job and never exported for training);
2. **train**: ``launch.py train --resume`` in a child process (``torchrun --nproc_per_node N`` for ``gpus`` > 1),
   run folder ``DATA/runs/job-<id>/`` (on storage the workers share when they run on several machines), the recipe
   preset (:data:`RECIPES`) with the job's overrides, from the checkpoint in use (or the one the job names). The child
   dies with the worker (``PR_SET_PDEATHSIG``); a job whose worker was killed is claimed again when its lease is over
   and resumes from the run's ``last.pt``;
3. **register** the checkpoint (:class:`annotations_db.registry.Registry`: version ``job-<id>``, parent, data, recipe,
   who started it) and **evaluate** it against the checkpoint in use on the held-out corrections
   (:mod:`app.gate`); with the job's ``auto_promote`` rule met, promote it.

While it runs, a heartbeat thread renews the lease every ``lease/4`` seconds and copies the trainer's
``progress.jsonl`` (step, loss) and ``train.log`` lines into the database: the admin's progress bar, loss curve and
log. A cancel asked for in the app stops the child at the next heartbeat (the job ends ``cancelled``). A worker
stopped with SIGTERM or Ctrl+C gives its job back to the queue at once; a SIGKILLed one leaves it to its lease.

Job spec (``training_jobs.spec``)::

    {"recipe": "quick" | "decoder-cpu" | "lora-gpu", "overrides": {"max_steps": 30, ...},
     "selection": {"datasets": [...], "studies": [...], "free": true, "classes": [...]},
     "init": "in-use" | "stock" | <checkpoint id>, "gpus": 1,
     "auto_promote": {"min_images": 10} | null, "eval": {"max_clicks": 20, "bootstrap": 1000}}
"""
from __future__ import annotations

import argparse
import ctypes
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from annotations_db.jobs import Claim, JobQueue

log = logging.getLogger("biascare.worker")
REPO_ROOT = Path(__file__).resolve().parents[1]

RECIPES: dict[str, dict[str, Any]] = {
    # a few CPU steps (demos, tests, the loop benchmark)
    "quick": {"max_steps": 4, "epochs": 1, "batch_size": 2, "modes": "click", "save_every": 1, "warmup_steps": 1,
              "hitl_rounds": 1, "no_flip": True, "threads": 1},
    # the shipped checkpoint's kind of run: decoder + prompt encoder + language on cached embeddings (CPU hours)
    "decoder-cpu": {"epochs": 6, "batch_size": 8, "modes": "click,box,text", "sequence_max": 4, "save_every": 25},
    # LoRA on the last two encoder stages on GPUs
    "lora-gpu": {"epochs": 10, "batch_size": 16, "modes": "click,box,text", "lora": True, "lora_stages": 2,
                 "device": "cuda", "save_every": 50},
}


def recipe_args(spec: dict[str, Any]) -> list[str]:
    """The ``launch.py train`` options of a job's recipe preset with its overrides (``{"max_steps": 3}`` →
    ``--max-steps 3``; True → the bare flag)."""
    name = spec.get("recipe", "quick")
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; presets: {', '.join(RECIPES)}")
    options = {**RECIPES[name], **(spec.get("overrides") or {})}
    args: list[str] = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            args.append(flag)
        elif value not in (False, None):
            args += [flag, str(value)]
    return args


def _prctl() -> Any:
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except OSError:  # not Linux: a killed worker's child then finishes on its own
        return None


_PRCTL = _prctl()  # resolved in the parent: the child only calls the C function between fork and exec


def _die_with_parent() -> None:
    """In the child: get SIGKILL when the worker dies (Linux ``PR_SET_PDEATHSIG``), so a killed worker leaves no
    orphan training."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGKILL)


@dataclass
class Settings:
    """A worker's settings (the command-line options)."""
    db: str
    data: Path
    name: str = field(default_factory=lambda: f"{socket.gethostname()}/{os.getpid()}")
    lease_s: float = 60.0
    poll_s: float = 5.0
    train_cache: Path | None = None
    checkpoint: Path | None = None  # the fallback start when nothing is in use yet (default: the shipped one)


class Worker:
    """One worker process: claims jobs and runs them (see the module docstring)."""

    def __init__(self, settings: Settings) -> None:
        from annotations_db.store import Store

        self.settings = settings
        self.store = Store.open(settings.db)
        self.queue = JobQueue(self.store, lease_s=settings.lease_s)

    def run(self, once: bool = False, until_idle: bool = False) -> int:
        """Serve jobs until stopped; ``once``: return after one job (or at once when none is queued);
        ``until_idle``: return when no job is left to claim."""
        while True:
            claim = self.queue.claim(self.settings.name)
            if claim is not None:
                JobRun(self, claim).run()
            if once or (until_idle and claim is None):
                return 0
            if claim is None:
                time.sleep(self.settings.poll_s)

    def close(self) -> None:
        self.store.close()


class JobRun:
    """One attempt at one claimed job."""

    def __init__(self, worker: Worker, claim: Claim) -> None:
        self.worker = worker
        self.claim = claim
        self.queue = worker.queue
        self.job = claim.job
        self.version = f"job-{self.job.id}"
        self.runs = worker.settings.data / "runs"
        self.run_dir = self.runs / self.version
        self.child: subprocess.Popen | None = None
        self.lost = threading.Event()
        self.cancelled = threading.Event()
        self.done = threading.Event()
        self._progress_at = 0  # loss points are copied again after a resume (the curve keeps one per step)
        log_file = self.run_dir / "train.log"
        self._log_at = log_file.stat().st_size if log_file.is_file() else 0  # earlier attempts' lines are in already

    def run(self) -> None:
        beats = threading.Thread(target=self._beat, name="biascare-heartbeat", daemon=True)
        beats.start()
        try:
            status, result, error = self._run()
        except KeyboardInterrupt:  # the worker is being stopped (SIGTERM, Ctrl+C): the job goes back to the queue
            self.done.set()
            self._stop_child(signal.SIGKILL)
            beats.join()
            self.queue.release(self.claim, f"worker {self.worker.settings.name} stopped")
            raise
        except Exception as exc:
            log.exception("job %s failed", self.job.id)
            status, result, error = "failed", None, f"{type(exc).__name__}: {exc}"
        finally:
            self.done.set()
            beats.join()
        step, total, loss = self._pump()
        if not self.lost.is_set():
            if step is not None:
                self.queue.heartbeat(self.claim, step=step, total=total, loss=loss)
            self.queue.finish(self.claim, status, result=result, error=error)

    def _run(self) -> tuple[str, dict[str, Any] | None, str | None]:
        from annotations_db.registry import Registry

        registry = Registry(self.worker.store)
        parent = self._fixed_start(registry)
        manifest = self._export()
        code = self._train(parent.path if parent else None)
        if self.cancelled.is_set():
            return "cancelled", None, None
        if self.lost.is_set():
            return "failed", None, "the lease was lost"
        if code != 0:
            return "failed", None, f"training exited with {code}: {self._tail()}"
        checkpoint = registry.find(self.version) or self._register(registry, parent, manifest)  # reused after a
        # lost attempt that had registered it already
        result = {"checkpoint_id": checkpoint.id, "version": checkpoint.version, "path": checkpoint.path}
        result.update(self._gate(registry, checkpoint, parent))
        return "succeeded", result, None

    def _register(self, registry: Any, parent: Any, manifest: Path) -> Any:
        """The run's checkpoint in the registry as a candidate: its parent, data, recipe and who started the job."""
        return registry.register(self.run_dir / "checkpoint.safetensors", self.version,
                                 parent=parent.id if parent else None, job_id=self.job.id,
                                 data={"manifest": str(manifest), "selection": self.job.spec.get("selection")},
                                 recipe={"preset": self.job.spec.get("recipe", "quick"),
                                         "overrides": self.job.spec.get("overrides") or {}},
                                 created_by=self.job.created_by)

    def _fixed_start(self, registry: Any) -> Any:
        """The start checkpoint, chosen by the first attempt and kept in the run folder (``start.json``): a resumed
        attempt continues from the same one even when another checkpoint was promoted in between."""
        record = self.run_dir / "start.json"
        if record.is_file():
            chosen = json.loads(record.read_text())["checkpoint_id"]
            return None if chosen is None else registry.checkpoint(chosen)
        start = self._start_checkpoint(registry)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps({"checkpoint_id": start.id if start else None}))
        return start

    def _start_checkpoint(self, registry: Any) -> Any:
        """The registered checkpoint the job starts from: the one it names, else the one in use (the shipped
        checkpoint adopted when nothing is in use yet); None for ``init: stock``."""
        from core_model.model import DEFAULT_CHECKPOINT, build_model

        init = self.job.spec.get("init", "in-use")
        if init == "stock":
            return None
        if isinstance(init, int):
            return registry.checkpoint(init)
        current = registry.in_use()
        if current is None:
            from app.loop import kept_copy

            path = self.worker.settings.checkpoint or DEFAULT_CHECKPOINT
            version = str(build_model(path).info.version)
            current = registry.adopt(kept_copy(self.worker.settings.data, Path(path), version), version)
        return current

    def _export(self) -> Path:
        """The job's training export, made once (a resumed attempt trains on the same manifest)."""
        from annotations_db.export import Selection, export_training
        from annotations_db.site import fix_heldout_split

        final = self.run_dir / "export"
        if (final / "manifest.json").is_file():
            return final / "manifest.json"
        fix_heldout_split(self.worker.store)
        partial = self.run_dir / "export.partial"
        shutil.rmtree(partial, ignore_errors=True)
        export_training(self.worker.store, partial, formats=("png", "nifti"),
                        selection=Selection.from_dict(self.job.spec.get("selection")))
        partial.rename(final)
        self.queue.report(self.claim, lines=[f"exported the training data to {final}"])
        return final / "manifest.json"

    def _train(self, init: str | None) -> int:
        """``launch.py train --resume`` as a child process, watched by the heartbeat thread; its exit code."""
        manifest = self.run_dir / "export" / "manifest.json"
        args = ["--name", self.version, "--runs-dir", str(self.runs), "--task", self.job.task, "--manifest",
                str(manifest), "--resume", "--no-progress", *recipe_args(self.job.spec)]
        if init:
            args += ["--init", init]
        if "cls" in self.job.task.split(","):
            from annotations_db.manifest import LABELS_CSV
            args += ["--cls-csv", str(manifest.parent / LABELS_CSV)]
        if self.worker.settings.train_cache:
            args += ["--cache-dir", str(self.worker.settings.train_cache)]
        gpus = int(self.job.spec.get("gpus") or 1)
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(gpus)] if gpus > 1 \
            else [sys.executable]
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / "worker.log", "a") as output:
            self.child = subprocess.Popen([*launcher, str(REPO_ROOT / "launch.py"), "train", *args], cwd=REPO_ROOT,
                                          stdout=output, stderr=subprocess.STDOUT,
                                          preexec_fn=_die_with_parent)  # noqa: PLW1509 (a C call only)
            return self.child.wait()

    def _gate(self, registry: Any, candidate: Any, parent: Any) -> dict[str, Any]:
        """Evaluate the candidate against the checkpoint in use; promote it when the job's rule holds."""
        from app.gate import auto_promote_rule, compare, export_heldout

        current = registry.in_use() or parent
        options = self.job.spec.get("eval") or {}
        heldout = export_heldout(self.worker.store, self.run_dir / f"heldout-{self.claim.token[:8]}")
        comparison = compare(candidate.path, current.path if current else None, heldout,
                             cache_dir=self.worker.settings.data / "embeddings",
                             max_clicks=int(options.get("max_clicks", 20)),
                             bootstrap=int(options.get("bootstrap", 1000)), device=self._device())
        comparison["against"] = current.version if current else "stock"
        rule = self.job.spec.get("auto_promote")
        verdict = auto_promote_rule(comparison, **rule) if rule is not None and "not_measured" not in comparison \
            else None
        comparison["auto_promote"] = None if verdict is None else {"ok": verdict.ok, "reasons": verdict.reasons}
        registry.record_evaluation(candidate.id, comparison)
        if verdict is not None and verdict.ok:
            registry.promote(candidate.id, None, "auto: " + "; ".join(verdict.reasons), auto=True)
        self.queue.report(self.claim, lines=[f"gate vs {comparison['against']}: "
                                             + ("promoted" if verdict and verdict.ok else "not promoted")])
        return {"promoted": bool(verdict and verdict.ok)}

    def _device(self) -> str:
        """Where the gate runs: the recipe's device when this machine has it (a GPU worker), else the CPU."""
        import torch

        wanted = str({**RECIPES.get(self.job.spec.get("recipe", "quick"), {}),
                      **(self.job.spec.get("overrides") or {})}.get("device", "cpu"))
        return wanted if wanted.startswith("cuda") and torch.cuda.is_available() else "cpu"

    # -- heartbeat ----------------------------------------------------------------------------------------------
    def _beat(self) -> None:
        interval = max(0.2, self.queue.lease_s / 4)
        while not self.done.wait(interval):
            try:
                self._beat_once()
            except Exception:
                log.exception("heartbeat of job %s failed", self.job.id)
            if self.lost.is_set():
                return

    def _beat_once(self) -> None:
        """Copy the progress, renew the lease; stop the child when the claim was lost or a cancel was asked."""
        step, total, loss = self._pump()
        beat = self.queue.heartbeat(self.claim, step=step, total=total, loss=loss)
        if not beat.alive:
            self.lost.set()
            self._stop_child(signal.SIGKILL)
        elif beat.cancel and not self.cancelled.is_set():
            self.cancelled.set()
            self._stop_child(signal.SIGTERM)

    def _pump(self) -> tuple[int | None, int | None, float | None]:
        """Copy the new progress points and log lines of the run into the database; the latest (step, total, loss)."""
        points = self._new_lines(self.run_dir / "progress.jsonl", "_progress_at")
        lines = self._new_lines(self.run_dir / "train.log", "_log_at")
        records = [json.loads(p) for p in points if p.strip().startswith("{")]
        losses = [(r["step"], r["loss"]) for r in records if r.get("loss") == r.get("loss")]
        if losses or lines:
            self.queue.report(self.claim, losses=losses, lines=lines)
        if not records:
            return None, None, None
        last = records[-1]
        return int(last["step"]), int(last["total"]), last.get("loss")

    def _new_lines(self, path: Path, mark: str) -> list[str]:
        """Complete lines appended to ``path`` since the last call (position kept in attribute ``mark``)."""
        if not path.is_file():
            return []
        with open(path, "rb") as handle:
            handle.seek(getattr(self, mark))
            data = handle.read()
        end = data.rfind(b"\n") + 1
        setattr(self, mark, getattr(self, mark) + end)
        return data[:end].decode(errors="replace").splitlines()

    def _stop_child(self, sig: int) -> None:
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(sig)

    def _tail(self, chars: int = 1500) -> str:
        path = self.run_dir / "worker.log"
        return path.read_text(errors="replace")[-chars:] if path.is_file() else ""


def _interrupt(signum: int, frame: Any) -> None:
    """SIGTERM stops a worker as Ctrl+C does: its running job is released to the queue (resumed by the next)."""
    raise KeyboardInterrupt


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="launch.py worker", description=__doc__.split("\n\n")[0])
    p.add_argument("--db", required=True, help="the site's database URL (sqlite:///… or postgresql+psycopg://…)")
    p.add_argument("--data", required=True, help="data folder: runs/ (shared by the workers of a site), caches")
    p.add_argument("--name", default=None, help="this worker's name in the job table (default host/pid)")
    p.add_argument("--lease", type=float, default=60.0, help="seconds a claim lives without a heartbeat")
    p.add_argument("--poll", type=float, default=5.0, help="seconds between looks for a job when idle")
    p.add_argument("--once", action="store_true", help="run one job (if any) and exit")
    p.add_argument("--until-idle", action="store_true", help="run jobs until none is queued, then exit")
    p.add_argument("--train-cache", default=None, help="the trainer's embedding cache (default DATA/cache)")
    p.add_argument("--checkpoint", default=None, help="start checkpoint while nothing is in use (default: shipped)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    data = Path(args.data).resolve()
    settings = Settings(args.db, data, lease_s=args.lease, poll_s=args.poll,
                        train_cache=Path(args.train_cache) if args.train_cache else data / "cache",
                        checkpoint=Path(args.checkpoint) if args.checkpoint else None)
    if args.name:
        settings.name = args.name
    worker = Worker(settings)
    signal.signal(signal.SIGTERM, _interrupt)
    print(f"worker {settings.name} serving {args.db}", flush=True)
    try:
        return worker.run(once=args.once, until_idle=args.until_idle)
    except KeyboardInterrupt:
        return 0
    finally:
        worker.close()


if __name__ == "__main__":
    sys.exit(main())
