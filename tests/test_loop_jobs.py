"""Training jobs run by real ``launch.py worker`` processes: claims never collide (SQLite and PostgreSQL), a worker
SIGKILLed mid-run leaves its job to the next one, which resumes it from the run's last.pt; progress, the loss curve
and the log reach the database; an admin's cancel stops a running job; a worker stopped with SIGTERM releases it."""
from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT
from tests.loop_helpers import (
    answer_with_reference_masks,
    database_url,
    demo_store,
    fix_split_with_both_sides,
    start_worker,
    wait_for,
)

RACERS = 4
JOBS = 24


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_loop_two_workers_never_take_the_same_job(backend, tmp_path):
    from annotations_db.jobs import JobQueue
    from annotations_db.store import Store

    url = database_url(backend, tmp_path)
    with Store.open(url) as store:
        queue = JobQueue(store)
        submitted = {queue.submit("seg", {"recipe": "quick", "n": k}) for k in range(JOBS)}
        go = tmp_path / "go"
        racers = [subprocess.Popen([sys.executable, "-m", "tests.loop_helpers", "claim", url, str(go)], cwd=REPO_ROOT,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(RACERS)]
        for racer in racers:
            assert racer.stdout.readline().strip() == "ready"
        go.touch()
        claimed = []
        for racer in racers:
            out, err = racer.communicate(timeout=120)
            assert racer.returncode == 0, err[-2000:]
            claimed += [int(line.split()[1]) for line in out.splitlines() if line.startswith("claimed")]
        assert sorted(claimed) == sorted(submitted)  # every job once, none twice
        assert {job.status for job in queue.jobs(limit=JOBS)} == {"running"}
        assert len({job.worker for job in queue.jobs(limit=JOBS)}) > 1 or RACERS == 1


def test_loop_worker_killed_mid_run_resumes_and_cancel_stops(tmp_path):
    from annotations_db.jobs import JobQueue
    from annotations_db.registry import Registry

    url = database_url("sqlite", tmp_path)
    store, cases = demo_store(url)
    reader = store.create_reader("ada", "pw")
    answer_with_reference_masks(store, cases, reader)
    fix_split_with_both_sides(store, cases, 0.25, heldout=1)
    queue = JobQueue(store)
    steps = 8
    job_id = queue.submit("seg", {"recipe": "quick", "overrides": {"max_steps": steps, "steps_per_epoch": steps},
                                  "eval": {"max_clicks": 3, "bootstrap": 50}})
    data = tmp_path / "data"
    first = start_worker(url, data, "--lease", "2", "--poll", "0.2")
    wait_for(lambda: queue.job(job_id).step >= 3, 300, "the first worker's progress")
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    killed_at = queue.job(job_id).step
    assert killed_at < steps and queue.job(job_id).status == "running"

    second = start_worker(url, data, "--lease", "2", "--poll", "0.2")
    try:
        job = wait_for(lambda: (j := queue.job(job_id)).status in ("succeeded", "failed") and j, 400,
                       "the second worker to finish the job")
        assert job.status == "succeeded", job.error
        assert job.attempts == 2 and job.step == steps and job.progress == 1.0
        run = data / "runs" / f"job-{job_id}"
        assert "resumed from" in (run / "train.log").read_text()
        history = json.loads((run / "metrics.json").read_text())["segmentation"]["history"]
        assert [h["step"] for h in history] == list(range(1, steps + 1))
        assert [s for s, _ in queue.curve(job_id)] == list(range(1, steps + 1))
        assert any("resumed from" in message for _, _, _, message in queue.log(job_id))
        registered = Registry(store).find(f"job-{job_id}")
        assert registered is not None and registered.job_id == job_id and registered.parent_id is not None
        assert registered.evaluation["heldout_images"] == 1 and registered.state == "candidate"

        long_job = queue.submit("seg", {"recipe": "quick", "overrides": {"max_steps": 2000}})
        wait_for(lambda: queue.job(long_job).step >= 1, 300, "the long job to start")
        queue.cancel(long_job)
        cancelled = wait_for(lambda: (j := queue.job(long_job)).status != "running" and j, 60, "the cancel")
        assert cancelled.status == "cancelled" and cancelled.step < 2000

        stopped = queue.submit("seg", {"recipe": "quick", "overrides": {"max_steps": 2000}})
        wait_for(lambda: queue.job(stopped).step >= 1, 300, "the third job to start")
        second.send_signal(signal.SIGTERM)  # a worker stopped on purpose gives its job back at once
        assert second.wait(timeout=60) == 0
        released = queue.job(stopped)
        assert released.status == "queued" and released.attempts == 1 and released.worker is None
        assert any(message.startswith("released") for _, _, _, message in queue.log(stopped))
    finally:
        second.send_signal(signal.SIGKILL)
        second.wait(timeout=30)
        store.close()
