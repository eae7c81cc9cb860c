"""The site's held-out split and the label of record, on the demo CXRs: the held-out corrections are in no training
export (only in the gate's held-out export), the split never moves, the trainer refuses to train on it; the label
of record is the latest masked free/aided answer, never an unaided read."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT
from tests.loop_helpers import answer_with_reference_masks, database_url, demo_store, fix_split_with_both_sides


def test_loop_heldout_corrections_never_reach_a_training_export(tmp_path):
    from annotations_db.export import export_training
    from annotations_db.site import fix_heldout_split, heldout_split
    from training.data import SkipLog, cxrlt_samples, manifest_samples

    store, cases = demo_store(database_url("sqlite", tmp_path))
    answer_with_reference_masks(store, cases, store.create_reader("ada", "pw"))
    assert not heldout_split(store).fixed and len(json.loads(
        export_training(store, tmp_path / "before").read_text())["items"]) == 4  # nothing held out until fixed
    held = fix_split_with_both_sides(store, cases, 0.25, heldout=1)
    with pytest.raises(ValueError, match="fixed at 0.25"):
        fix_heldout_split(store, 0.5)
    assert fix_heldout_split(store).share == 0.25  # fixing again changes nothing

    training = json.loads(export_training(store, tmp_path / "train").read_text())
    assert {i["case_id"] for i in training["items"]} == {c.pseudo_id for c in cases} - held
    table, classes = cxrlt_samples(tmp_path / "train" / "labels.csv")  # the findings heads' training table
    assert classes == tuple(training["label_set"]) and {s.key for s in table} == {i["case_id"] for i in training["items"]}
    assert all(s.labels["Cardiomegaly"] == 1 and s.labels["Edema"] == -1 for s in table)  # blank = not assessed
    assert training["heldout"] == {"share": 0.25, "excluded": 1}
    heldout = export_training(store, tmp_path / "heldout", heldout=True)
    items = json.loads(heldout.read_text())["items"]
    assert [(i["case_id"], i["split"]) for i in items] == [(next(iter(held)), "heldout")]
    assert manifest_samples(heldout, SkipLog()) == [] and manifest_samples(heldout, SkipLog(), splits=None) == []
    refused = subprocess.run([sys.executable, "launch.py", "train", "--name", "x", "--runs-dir", str(tmp_path),
                              "--manifest", str(heldout), "--manifest-split", "heldout"], cwd=REPO_ROOT,
                             capture_output=True, text=True, check=False, timeout=300)
    assert refused.returncode == 2 and "never trained on" in refused.stderr
    store.close()


def test_loop_label_of_record_rule():
    from annotations_db.manifest import Answer, label_of_record

    free_masked, aided_labels, unaided = Answer(1, "free", True), Answer(2, "aided", False), Answer(3, "unaided", True)
    assert label_of_record([free_masked, aided_labels, unaided]) == free_masked  # a later mask-less read keeps it
    assert label_of_record([free_masked, Answer(4, "aided", True)]).id == 4  # the latest masked answer wins
    assert label_of_record([aided_labels, Answer(5, "free", False)]).id == 5  # no mask: the latest, labels only
    assert label_of_record([unaided]) is None  # unaided reads never
