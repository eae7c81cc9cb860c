"""The seam of the loop, end to end on real demo CXRs: answers made through the app's service layer → the training
export (versioned manifest, label of record, canonical splits) → ``launch.py train`` (a few CPU steps) → the
checkpoint loads in the app → the app predicts with it. On SQLite and PostgreSQL."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from sqlalchemy import update

from tests.conftest import REPO_ROOT
from tests.loop_helpers import app_service, correct, database_url, demo_store, login, train_args


@pytest.fixture(scope="module")
def model():
    from app.testing import shared_model
    return shared_model()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_loop_roundtrip_answers_export_train_load_predict(backend, model, tmp_path):
    from annotations_db.export import export_training
    from annotations_db.manifest import SCHEMA, VERSION
    from annotations_db.models import Case
    from app.testing import shared_embedding_dir
    from core_model.classes import CXR_LT_26
    from core_model.model import DEFAULT_CHECKPOINT, build_model

    store, cases = demo_store(database_url(backend, tmp_path))
    service = app_service(store, model, tmp_path / "data", shared_embedding_dir())
    ada = login(service, "ada")
    for case in cases:
        correct(service, ada, case.pseudo_id)
    # a later unaided study read of case 0 (no mask) must not drop its corrected mask
    store.create_study("blind", [cases[0].id], [ada.reader.id], arms=("unaided",), washout_days=0, rating_max=0)
    view = service.open_assignment(ada)
    assert view is not None and not view.shows_ai
    service.set_answer(ada, view.nonce, ["Normal"])
    service.submit(ada, view.nonce)
    splits = {cases[1].id: "Train", cases[2].id: "validation", cases[3].id: "test"}
    with store.write_session() as session:
        for case_id, split in splits.items():
            session.execute(update(Case).where(Case.id == case_id).values(split=split))

    manifest = export_training(store, tmp_path / "export")
    document = json.loads(manifest.read_text())
    assert document["schema"] == SCHEMA and document["version"] == VERSION
    assert document["label_set"] == list(CXR_LT_26) and document["label_of_record"]
    items = {item["case_id"]: item for item in document["items"]}
    first = items[cases[0].pseudo_id]
    assert first["mask"] and first["source"] == "free" and first["labels"]["Cardiomegaly"] == 1
    assert len(first["clicks"]) == 2 and first["model_version"] == service.model_version
    assert [items[c.pseudo_id]["split"] for c in cases] == [None, "train", "validation", "test"]

    runs = tmp_path / "runs"
    done = subprocess.run([sys.executable, "launch.py", "train",
                           *train_args(manifest, runs, "roundtrip", DEFAULT_CHECKPOINT)],
                          cwd=REPO_ROOT, capture_output=True, text=True, check=False, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((runs / "roundtrip" / "metrics.json").read_text())
    assert metrics["segmentation"]["manifest_splits"] == {"none": 1, "train": 1, "validation": 1, "test": 1}
    assert metrics["segmentation"]["train_images"] == 2 and metrics["segmentation"]["heldout_images"] == 1
    progress = (runs / "roundtrip" / "progress.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in progress] == [1, 2]

    trained = build_model(runs / "roundtrip" / "checkpoint.safetensors")
    assert trained.info.version == "roundtrip" and trained.info.clicks_trained
    # decoder training leaves the findings heads and the embedding they read as they were: their evidence is kept
    start, carried = build_model(DEFAULT_CHECKPOINT).findings_card(), trained.findings_card()
    assert carried.name == "roundtrip" and f"carried over unchanged from {start.name}" in carried.origin
    assert carried.evidence == start.evidence and any(e.operating_point for e in carried.evidence.values())
    # and what its decoder answers boxes for: the starting checkpoint's labels (the exported masks are lungs')
    assert build_model(DEFAULT_CHECKPOINT).box_labels <= trained.box_labels
    assert not trained.answers_boxes_for("Heart / cardiomediastinum")
    fresh = app_service(store, trained, tmp_path / "data2", shared_embedding_dir())
    ben = login(fresh, "ben")
    view = fresh.open_case(ben, cases[1].pseudo_id)
    assert fresh.ai_panel(view)["model_version"] == "roundtrip"
    g = view.image.geometry
    layer = fresh.click(ben, view.nonce, g.disp_width * 0.3, g.disp_height * 0.5, True)
    assert layer.area > 0 and fresh.current_mask(ben).any()
    answer = fresh.submit(ben, view.nonce)
    assert store.answers(ben.reader)[-1].id == answer
    assert np.asarray(fresh.store.answers(ben.reader)[-1].mask_rle["size"]).tolist() == [2000, 2000]
    fresh.close()
    service.close()
    store.close()


def test_loop_manifest_contract_refuses_newer_and_unknown_versions(tmp_path):
    from annotations_db.manifest import VERSION, normalise_split
    from training.data import DataError, read_manifest

    for schema, message in ((f"biascare/training-manifest@{VERSION + 1}", "newer than this code reads"),
                            ("someone-else/manifest@1", "is not a training manifest")):
        path = tmp_path / "m.json"
        path.write_text(json.dumps({"schema": schema, "items": []}))
        with pytest.raises(DataError, match=message):
            read_manifest(path)
    done = subprocess.run([sys.executable, "launch.py", "train", "--name", "x", "--runs-dir", str(tmp_path),
                           "--manifest", str(path)], cwd=REPO_ROOT, capture_output=True, text=True, check=False, timeout=300)
    assert done.returncode == 2 and "not a training manifest" in done.stderr
    assert [normalise_split(s) for s in ("Train", "training", " VAL ", "dev", "Testing", None, "")] == \
        ["train", "train", "validation", "validation", "test", None, None]
    with pytest.raises(ValueError, match="unknown split 'fold3'"):
        normalise_split("fold3")
