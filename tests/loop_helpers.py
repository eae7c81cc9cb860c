"""Helpers of the closed-loop tests (``test_loop_*``) and ``bench/loop.py``: a database with the demo CXRs, answers
made through the app's service layer (the code behind the UI and the HTTP routes), small training recipes.

    url = database_url(backend, tmp_path)                  # a real SQLite file or a fresh PostgreSQL database
    store, cases = demo_store(url)                          # the four 2000×2000 demo CXRs with their lung masks
    service = app_service(store, model, tmp_path / "data")  # the app's AppService (no background thread)
    session = login(service, "ada")
    correct(service, session, case)                         # open, two clicks, a finding, submit
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.conftest import ARTIFACTS, REPO_ROOT

PASSWORD = "correct horse battery"
CACHE_DIR = ARTIFACTS / "loop-embedding-cache"  # the trainer's embedding cache, shared by the loop tests
QUICK_RECIPE = {"max_steps": 2, "batch_size": 2, "modes": "click", "threads": 1}


def database_url(backend: str, tmp_path: Path) -> str:
    """A fresh database: an SQLite file under ``tmp_path`` or a new database on the session's PostgreSQL server."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'loop.sqlite'}"
    from tests.db_helpers import postgres_server
    return postgres_server().create_database()


def demo_store(url: str) -> tuple[Any, list[Any]]:
    """The store at ``url`` with the demo lung CXRs imported, and its cases (CaseRef, in id order)."""
    from annotations_db.importers import import_images
    from annotations_db.store import Store

    demo = REPO_ROOT / "assets" / "demo"
    store = Store.open(url)
    import_images(store, demo / "images" / "lungs", "demo-lungs", masks_dir=demo / "masks",
                  mask_pattern="{stem}_lung.png", mask_name="lung", progress=False)
    return store, store.cases("demo-lungs")


def app_service(store: Any, model: Any, data_dir: Path, embedding_dir: Path | None = None) -> Any:
    from app.service import AppService
    return AppService(store, model, data_dir, background=False, embedding_dir=embedding_dir)


def login(service: Any, name: str, role: str = "reader") -> Any:
    """A new reader (or admin) and its logged-in session."""
    service.store.create_reader(name, PASSWORD, role=role)
    return service.login(name, PASSWORD)


def correct(service: Any, session: Any, case: str, finding: str = "Cardiomegaly") -> int:
    """Free annotation of ``case`` as a reader does it: open, a positive and a negative click, one finding, submit;
    returns the annotation id."""
    view = service.open_case(session, case)
    g = view.image.geometry
    service.click(session, view.nonce, g.disp_width * 0.3, g.disp_height * 0.5, True)
    service.click(session, view.nonce, g.disp_width * 0.5, g.disp_height * 0.1, False)
    service.set_answer(session, view.nonce, [finding])
    return service.submit(session, view.nonce)


def train_args(manifest: Path, runs: Path, name: str, init: Path | None, **recipe: Any) -> list[str]:
    """``launch.py train`` arguments for a few CPU steps on ``manifest`` (the round trip's and the worker's)."""
    recipe = {**QUICK_RECIPE, **recipe}
    args = ["--name", name, "--runs-dir", str(runs), "--manifest", str(manifest), "--cache-dir", str(CACHE_DIR),
            "--max-steps", str(recipe["max_steps"]), "--epochs", "1", "--steps-per-epoch", str(recipe["max_steps"]),
            "--batch-size", str(recipe["batch_size"]), "--modes", recipe["modes"], "--threads", str(recipe["threads"]),
            "--warmup-steps", "1", "--hitl-rounds", "1", "--no-flip", "--no-progress", "--save-every", "1"]
    return args + (["--init", str(init)] if init else [])


def fix_split_with_both_sides(store: Any, cases: list[Any], share: float, heldout: int) -> set[str]:
    """Fix the site's held-out split at ``share`` with the first salt ("salt-0", "salt-1", …) that holds out exactly
    ``heldout`` of ``cases`` (pseudonymous ids are random, so a test picks its salt); returns the held-out ids."""
    from annotations_db.manifest import in_heldout
    from annotations_db.site import fix_heldout_split

    for k in range(10_000):
        chosen = {c.pseudo_id for c in cases if in_heldout(c.pseudo_id, f"salt-{k}", share)}
        if len(chosen) == heldout:
            fix_heldout_split(store, share, salt=f"salt-{k}")
            return chosen
    raise AssertionError("no salt gives that split")


def answer_with_reference_masks(store: Any, cases: list[Any], reader: Any) -> None:
    """Free annotations carrying the cases' imported lung masks (real human masks), as answers of record."""
    for case in cases:
        mask = store.reference_masks(case.id)["lung"]
        store.log_event(case.id, reader, "case_shown")
        store.save_annotation(case.id, reader, {"Cardiomegaly": 1}, mask=mask, label_set="cxr-lt-26")


def start_worker(url: str, data: Path, *extra: str) -> Any:
    """``launch.py worker`` as a real child process (its output in DATA/worker-<pid>.out)."""
    import subprocess
    import sys
    data.mkdir(parents=True, exist_ok=True)
    out = open(data / f"worker-{len(list(data.glob('worker-*.out')))}.out", "w")  # noqa: SIM115 (the child's)
    return subprocess.Popen([sys.executable, "launch.py", "worker", "--db", url, "--data", str(data),
                             "--train-cache", str(CACHE_DIR), *extra], cwd=REPO_ROOT, stdout=out,
                            stderr=subprocess.STDOUT)


def wait_for(condition: Any, timeout: float, what: str, every: float = 0.2) -> Any:
    """Poll ``condition()`` until it returns something truthy (returned); AssertionError after ``timeout``."""
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def _claim_race(url: str, go: str) -> None:
    """A claiming process of the race test: waits for ``go`` to exist, then claims until no job is left."""
    import os
    import time

    from annotations_db.jobs import JobQueue
    from annotations_db.store import Store
    store = Store.open(url, migrate_schema=False)
    queue = JobQueue(store, lease_s=600)
    print("ready", flush=True)
    while not os.path.exists(go):
        time.sleep(0.005)
    while (claim := queue.claim(f"racer-{os.getpid()}")) is not None:
        print(f"claimed {claim.job.id}", flush=True)
    store.close()


if __name__ == "__main__":
    import sys
    if sys.argv[1] == "claim":
        _claim_race(sys.argv[2], sys.argv[3])
