"""Wall time of the closed loop on the demo data (CPU): corrections → training job → gate → promotion → re-triage.

On a fresh SQLite database with the demo CXRs (``assets/demo``): the four lung CXRs are corrected through the app's
service layer (open, two clicks, a finding, submit; the NIH cases too, findings only), the held-out split is fixed,
a training job (recipe ``quick`` with ``--steps`` steps) is queued and run by a real ``launch.py worker --once``
process (export, ``launch.py train``, registration, the RITM gate against the model in use), then the candidate is
promoted by the admin and the worklist re-triaged with it in the background. Each phase's seconds, as JSON.

    python -m bench.loop --steps 8 --json bench/out/loop.json
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import REPO, device_description, emit, parser


def _phase(timings: dict[str, float], name: str, started: float) -> float:
    now = time.perf_counter()
    timings[name] = round(now - started, 2)
    return now


def run(steps: int, work: Path, threads: int) -> dict:
    import torch

    from annotations_db.jobs import JobQueue
    from annotations_db.registry import Registry
    from annotations_db.site import fix_heldout_split
    from annotations_db.store import Store
    from app.demo import import_demo
    from app.loop import adopt_at_start, promote
    from app.service import AppService
    from core_model.model import DEFAULT_CHECKPOINT, build_model

    torch.set_num_threads(threads)
    timings: dict[str, float] = {}
    started = t = time.perf_counter()
    url = f"sqlite:///{work / 'loop.sqlite'}"
    store = Store.open(url)
    import_demo(store)
    service = AppService(store, build_model(DEFAULT_CHECKPOINT), work / "data")
    adopt_at_start(service, DEFAULT_CHECKPOINT)
    service.background.triage_missing()
    service.background.wait(1800)
    t = _phase(timings, "setup_and_first_triage_s", t)

    store.create_reader("ada", "correct horse battery")
    admin = store.create_reader("boss", "correct horse battery", role="admin")
    session = service.login("ada", "correct horse battery")
    for case in store.cases():
        view = service.open_case(session, case.pseudo_id)
        g = view.image.geometry
        service.click(session, view.nonce, g.disp_width * 0.3, g.disp_height * 0.5, True)
        service.click(session, view.nonce, g.disp_width * 0.7, g.disp_height * 0.5, True)
        service.set_answer(session, view.nonce, ["Cardiomegaly"])
        service.submit(session, view.nonce)
    t = _phase(timings, "corrections_s", t)

    fix_heldout_split(store, 0.25)
    job_id = JobQueue(store).submit("seg", {"recipe": "quick", "overrides": {"max_steps": steps,
                                                                             "steps_per_epoch": steps,
                                                                             "threads": threads},
                                            "eval": {"max_clicks": 20, "bootstrap": 1000}}, created_by=admin)
    done = subprocess.run([sys.executable, "launch.py", "worker", "--db", url, "--data", str(work / "data"), "--once"],
                          cwd=REPO, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    job = JobQueue(store).job(job_id)
    t = _phase(timings, "job_export_train_gate_s", t)

    admin_session = service.login("boss", "correct horse battery")
    promote(service, admin_session, job.result["checkpoint_id"], reason="bench")
    service.background.wait(1800)
    t = _phase(timings, "promotion_and_retriage_s", t)
    timings["loop_total_s"] = round(t - started, 2)
    evaluation = Registry(store).checkpoint(job.result["checkpoint_id"]).evaluation or {}
    cases = len(store.cases())
    service.close()
    store.close()
    gate = {side: evaluation.get(side, {}).get("segmentation", {}).get("miou@5") for side in ("candidate", "current")}
    return {"benchmark": "loop", "device": device_description(), "steps": steps, "cases": cases,
            "job_status": job.status, "heldout_images": evaluation.get("heldout_images"), "timings": timings,
            "gate_miou@5": gate}


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=8, help="training steps of the job")
    p.add_argument("--work", type=Path, default=None, help="work folder (default: a new temporary one)")
    args = p.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="biascare-loop-"))
    emit(run(args.steps, work, args.threads), args.json)


if __name__ == "__main__":
    main()
