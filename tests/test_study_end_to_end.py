"""A whole reader study through the real pieces: import → study → reads with events → `launch.py analyze --db`."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd

from annotations_db.export import results_frame
from annotations_db.importers import import_cxr_lt
from annotations_db.store import Store
from core_model.classes import CXR_LT_26

REPO = Path(__file__).resolve().parents[1]


def test_study_from_import_to_report(shared_data: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'study.sqlite'}"
    store = Store.open(url)
    nih = shared_data / "nih_cxr14_sample"
    import_cxr_lt(store, nih / "labels_cxrlt2024_format.csv", "nih", image_root=nih, progress=False)
    cases = store.cases("nih")[:6]
    for i, case in enumerate(cases):
        store.record_prediction(case.id, "test-model", {c: (0.9 if i % 2 else 0.1) for c in CXR_LT_26},
                                uncertainty={"total": i / 10})
    readers = [store.create_reader(name, "pw-" + name) for name in ("rui", "mei")]
    store.create_study("pilot", [c.id for c in cases], readers, design="crossover", seed=3, washout_days=0,
                       model_version="test-model", rating_max=0)  # binary answers only
    for reader in readers:
        while (assignment := store.next_assignment(reader)) is not None:
            store.log_event(assignment, reader, "case_shown")
            store.log_event(assignment, reader, "label_toggled", {"class": "Cardiomegaly", "value": 1})
            truth = store.case_labels(assignment.case_id)
            answer = {c: int(truth.get(c) == 1) for c in CXR_LT_26}
            if assignment.arm == "unaided":
                answer["Cardiomegaly"] = 1 - answer["Cardiomegaly"]  # one deliberate miss per unaided read
            store.save_annotation(assignment, reader, answer)

    frame = results_frame(store, "pilot")
    assert len(frame) == 2 * 6 * 2 * 26  # readers × cases × arms × classes: nothing dropped
    assert frame.loc[frame.arm == "unaided", "ai_probability"].isna().all()
    assert frame.loc[frame.arm == "ai_aided", "ai_probability"].notna().all()
    assert (frame.time_s >= 0).all()  # derived from the event log
    store.close()

    out = tmp_path / "report"
    done = subprocess.run([sys.executable, str(REPO / "launch.py"), "analyze", "--db", url, "--out", str(out),
                           "--bootstrap", "50"], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html
    accounting = pd.read_csv(out / "tables" / "row_accounting.csv").set_index("status")["rows"]
    assert accounting["used"] == accounting["total input rows"] == len(frame)
    summary = pd.read_csv(out / "tables" / "summary.csv")
    for reader in ("rui", "mei"):
        mine = summary[summary.reader == reader].set_index("arm")["accuracy"]
        assert mine["ai_aided"] > mine["unaided"]  # the deliberate unaided misses are found
    change = pd.read_csv(out / "tables" / "class_change.csv")
    assert (change[change["class"] == "Cardiomegaly"].change > 0).all()
