"""The promotion gate and what follows it, on real demo CXRs with a real ``launch.py worker`` process: a candidate
worse on the site's held-out corrections is registered but not auto-promoted; one that meets the rule is promoted
automatically and the app follows; an admin's promotion switches the app, re-triages the worklist with the new
version and the AI panel names it, a study pinned to the earlier version keeps it; a rollback puts it back."""
from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT
from tests.loop_helpers import (
    CACHE_DIR,
    PASSWORD,
    answer_with_reference_masks,
    database_url,
    demo_store,
    fix_split_with_both_sides,
    login,
)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A site whose worker ran two jobs: one that wrecked its candidate (a learning rate far too high), then one that
    changed nothing (learning rate 0: the candidate equals the model in use, so no metric can be worse)."""
    from annotations_db.jobs import JobQueue
    from app.loop import adopt_at_start
    from app.service import AppService
    from app.testing import shared_embedding_dir, shared_model
    from core_model.model import DEFAULT_CHECKPOINT

    root = tmp_path_factory.mktemp("promotion")
    url = database_url("sqlite", root)
    store, cases = demo_store(url)
    service = AppService(store, shared_model(), root / "data", embedding_dir=shared_embedding_dir())
    adopt_at_start(service, DEFAULT_CHECKPOINT)
    base = service.model_version  # the shipped checkpoint's version
    service.background.triage_missing()
    annotator = store.create_reader("annotator", PASSWORD)
    answer_with_reference_masks(store, cases, annotator)
    heldout = fix_split_with_both_sides(store, cases, 0.25, heldout=1)
    queue = JobQueue(store)
    gate = {"auto_promote": {"min_images": 1}, "eval": {"max_clicks": 5, "bootstrap": 200}}
    worse = queue.submit("seg", {"recipe": "quick", "overrides": {"max_steps": 3, "steps_per_epoch": 3,
                                                                  "lr_vision": 0.3}, **gate})
    same = queue.submit("seg", {"recipe": "quick", "overrides": {"max_steps": 1, "steps_per_epoch": 1,
                                                                 "lr_vision": 0, "lr_language": 0}, **gate})
    done = subprocess.run([sys.executable, "launch.py", "worker", "--db", url, "--data", str(root / "data"),
                           "--until-idle", "--train-cache", str(CACHE_DIR)], cwd=REPO_ROOT, capture_output=True,
                          text=True, check=False, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert service.background.wait(600)
    yield {"store": store, "service": service, "cases": cases, "job": worse, "same": same, "heldout": heldout,
           "base": base}
    service.close()
    store.close()


def test_loop_worse_candidate_is_not_auto_promoted(site):
    from annotations_db.jobs import JobQueue
    from annotations_db.registry import Registry
    from app.loop import checkpoints_frame, comparison_markdown

    job = JobQueue(site["store"]).job(site["job"])
    assert job.status == "succeeded", job.error
    assert job.result["promoted"] is False
    registry = Registry(site["store"])
    candidate = registry.checkpoint(job.result["checkpoint_id"])
    assert candidate.state == "candidate" and candidate.version == f"job-{job.id}"
    evaluation = candidate.evaluation
    assert evaluation["heldout_images"] == 1 and evaluation["against"] == site["base"]
    assert evaluation["auto_promote"]["ok"] is False
    assert any("worse beyond the interval" in r for r in evaluation["auto_promote"]["reasons"])
    worse = evaluation["candidate"]["segmentation"]["miou@5"] < evaluation["current"]["segmentation"]["miou@5"]
    assert worse
    admin = login(site["service"], "chief", role="admin")
    frame = checkpoints_frame(site["service"], admin)
    assert list(frame["state"]) == ["promoted", "candidate", "retired"]  # job 2 (auto), job 1, the shipped one
    assert list(frame["auto-promotion"][:2]) == ["rule met", "rule not met"]
    table = comparison_markdown(site["service"], admin, candidate.id)
    assert "| miou@5 |" in table and "**not met**" in table


def test_loop_candidate_meeting_the_rule_is_auto_promoted_and_the_app_follows(site):
    from annotations_db.jobs import JobQueue
    from annotations_db.registry import Registry
    from app.loop import RegistryWatcher
    from tests.loop_helpers import wait_for

    service, registry = site["service"], Registry(site["store"])
    job = JobQueue(site["store"]).job(site["same"])
    assert job.status == "succeeded" and job.result["promoted"] is True, job.error
    promoted = registry.in_use()
    assert promoted.id == job.result["checkpoint_id"] and promoted.evaluation["auto_promote"]["ok"] is True
    assert [(p.kind, p.by) for p in registry.promotions()] == [("auto", None), ("initial", None)]
    assert service.model_version == site["base"]  # the worker promoted it in another process…
    watcher = RegistryWatcher(service, every=0.2)
    try:  # …and the app follows the registry
        wait_for(lambda: service.model_version == promoted.version, 60, "the app to follow the registry")
        assert service.background.wait(600)
        assert all(site["store"].prediction(c.id, promoted.version) is not None for c in site["cases"])
    finally:
        watcher.stop()


def test_loop_promotion_retriages_the_worklist_and_rollback(site):
    from annotations_db.models import ModelVersion
    from annotations_db.registry import Registry
    from app.loop import promote, rollback

    store, service, cases = site["store"], site["service"], site["cases"]
    registry = Registry(store)
    base = registry.find(site["base"])
    candidate = registry.find(f"job-{site['job']}")
    admin = login(service, "boss", role="admin")
    reader = login(service, "rui")
    store.create_study("pinned", [cases[0].id], [reader.reader.id], arms=("ai_aided",), washout_days=0,
                       model_version=base.version, rating_max=0)

    assert "is in use" in promote(service, admin, candidate.id, reason="trying it on the worklist")
    assert service.model_version == candidate.version and registry.in_use().id == candidate.id
    assert service.background.wait(600)
    for case in cases:  # every case re-triaged with the new version, the worklist ranked by it
        assert store.prediction(case.id, candidate.version) is not None
    free = [c for c in cases if c.id != cases[0].id]
    rows = {r["case"]: r for r in service.worklist(reader)}
    for case in free:
        assert rows[case.pseudo_id]["uncertainty"] == \
            pytest.approx(store.prediction(case.id, candidate.version).uncertainty_total)
    view = service.open_case(reader, free[0].pseudo_id)
    assert service.ai_panel(view)["model_version"] == candidate.version
    service.submit(reader, view.nonce)
    answer = store.answers(reader.reader)[-1]
    with store.read_session() as session:
        assert session.get(ModelVersion, answer.model_version_id).name == candidate.version  # the answer records it

    pinned = service.open_assignment(reader)
    assert pinned is not None and pinned.model_version == base.version  # the study keeps its version:
    assert reader.predictor.model.info.version == base.version  # its AI mask and clicks too
    service.pause(reader, pinned.nonce)

    assert "rolled back" in rollback(service, admin, base.id)
    assert service.model_version == base.version and registry.in_use().id == base.id
    assert [p.kind for p in registry.promotions()] == ["rollback", "promote", "auto", "initial"]
    assert registry.checkpoint(candidate.id).state == "retired"
    view = service.open_case(reader, free[1].pseudo_id)
    assert service.ai_panel(view)["model_version"] == base.version
