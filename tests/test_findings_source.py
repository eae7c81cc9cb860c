"""A study's own AI source: imported CXR-LT submission predictions (and a local torchxrayvision model) on the real demo
cases, matched by file name and by DICOM SOP Instance UID; the report, typed errors for bad files, attaching the source
to a study, the export naming it and the analysis's AI-alone arm using its suggestion rule. SQLite files and a real
PostgreSQL server."""
from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from annotations_db.ai_sources import compute_xrv_predictions, import_ai_predictions
from annotations_db.errors import BadCsv, BadProbability, BadThresholds, ImportFailed, StudyDesignError, UnknownClass
from annotations_db.export import results_frame
from annotations_db.importers import import_dicom
from annotations_db.store import Store
from app.demo import import_demo
from core_model.classes import CXR_LT_26, CXR_LT_40
from core_model.findings import NOT_VALIDATED, SUGGESTION_FLOOR, SUPPLIER, supplier_card
from tests.db_helpers import postgres_server

REPO_ROOT = Path(__file__).resolve().parents[1]


def probabilities(k: int, classes: tuple[str, ...] = CXR_LT_26) -> dict[str, float]:
    """Distinct, reproducible probabilities for row ``k`` (two decimals, Edema high on even rows)."""
    values = {c: round(((k * 7 + j * 3) % 97) / 100, 2) for j, c in enumerate(classes)}
    values["Edema"] = 0.81 if k % 2 == 0 else 0.12
    return values


def write_submission(path: Path, rows: list[tuple[str, dict[str, object]]],
                     classes: tuple[str, ...] = CXR_LT_26) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["dicom_id", *classes])
        for dicom_id, values in rows:
            writer.writerow([dicom_id, *(values.get(c, "") for c in classes)])
    return path


def demo_keys(store: Store) -> list[tuple[str, str]]:
    """(case pseudo id, the id a submission names it by) of every demo case: the NIH cases' dicom_id, the lung
    images' file stem."""
    from annotations_db.models import Case
    with store.read_session() as session:
        rows = session.query(Case.pseudo_id, Case.source_key).order_by(Case.id).all()
    return [(pseudo, Path(key).stem) for pseudo, key in rows]


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path: Path):
    url = (f"sqlite:///{tmp_path / 'sources.sqlite'}" if request.param == "sqlite"
           else postgres_server().create_database())
    opened = Store.open(url)
    import_demo(opened)
    yield opened
    opened.close()


def test_a_submission_csv_imports_with_a_report_of_unmatched_and_bad_rows(store: Store, tmp_path: Path) -> None:
    keys = demo_keys(store)
    assert len(keys) == 8
    study_cases = [pseudo for pseudo, _ in keys[:6]]
    reader = store.create_reader("rui", "pw-rui-pw")
    store.create_study("pilot", study_cases, [reader], washout_days=0)
    good = {key: probabilities(k) for k, (_, key) in enumerate(keys[:5])}
    bad_value = {**probabilities(9), "Pneumothorax": 1.5}
    not_a_number = {**probabilities(10), "Edema": "nan"}
    rows = [*good.items(), ("not-a-case-123", probabilities(7)), (keys[5][1], bad_value),
            (keys[6][1], probabilities(8)), ("extra-row", not_a_number)]
    csv_path = write_submission(tmp_path / "vendor_submission.csv", rows)
    thresholds = tmp_path / "thresholds.csv"
    thresholds.write_text("class,threshold\nEdema,0.6\nCardiomegaly,0.05\n")

    report = import_ai_predictions(store, csv_path, "vendor-x", thresholds=thresholds, study="pilot")

    assert report.label_set == "cxr-lt-26" and report.rows == 9
    assert report.matched == {key: pseudo for pseudo, key in keys[:5]}
    unmatched = {(u.line, u.dicom_id) for u in report.unmatched}
    assert unmatched == {(7, "not-a-case-123"), (9, keys[6][1])}, "a case outside the study is not matched"
    assert [(e.line, e.column) for e in report.bad_rows] == [(8, "Pneumothorax"), (10, "Edema")]
    assert all(isinstance(e, BadProbability) and e.path == csv_path for e in report.bad_rows)
    assert report.without_prediction == [keys[5][0]], "the study case whose row was bad"
    text = "\n".join(report.lines())
    assert "line 7, dicom_id 'not-a-case-123'" in text and "'Pneumothorax'" in text and keys[5][0] in text

    card = store.ai_source("vendor-x")
    assert card.kind == "imported" and "vendor_submission.csv" in card.origin and card.label_set == "cxr-lt-26"
    assert card.evidence["Edema"].status == SUPPLIER and card.evidence["Edema"].operating_point == 0.6
    assert card.evidence["Cardiomegaly"].operating_point == SUGGESTION_FLOOR, "a supplier threshold is floored"
    assert card.evidence["Atelectasis"].status == NOT_VALIDATED and card.evidence["Atelectasis"].operating_point is None
    for pseudo, key in keys[:5]:
        assert store.prediction(store.case(pseudo).id, "vendor-x").probabilities == good[key]
    assert store.study_settings(store.study_id("pilot")).ai_source == "vendor-x"
    assert {"vendor-x"} <= {s.name for s in store.ai_sources() if s.predictions == 5}


def test_rows_match_dicom_cases_by_sop_instance_uid(store: Store, shared_data: Path, tmp_path: Path) -> None:
    report = import_dicom(store, shared_data / "cxr_dicom", "pacs", progress=False)
    assert report.imported
    from annotations_db.models import Case
    with store.read_session() as session:
        dicom = session.query(Case).filter(Case.sop_instance_uid.isnot(None))
        uids = [(c.pseudo_id, c.sop_instance_uid) for c in dicom]
    shared = {uid for _, uid in uids if [u for _, u in uids].count(uid) > 1}  # two sample files share a UID
    unique = [(pseudo, uid) for pseudo, uid in uids if uid not in shared]
    assert unique and shared
    rows = [(uid, probabilities(k, CXR_LT_40)) for k, uid in enumerate([u for _, u in unique] + sorted(shared))]
    imported = import_ai_predictions(store, write_submission(tmp_path / "task1.csv", rows, CXR_LT_40), "task1-model")
    assert imported.label_set == "cxr-lt-40" and imported.matched == {uid: pseudo for pseudo, uid in unique}
    assert [u.dicom_id for u in imported.unmatched] == sorted(shared) and not imported.bad_rows
    assert all("matches 2 cases" in u.reason for u in imported.unmatched)
    assert len(imported.without_prediction) == 8 + len(uids) - len(unique), "the demo cases have no row"
    assert store.prediction(store.case(unique[0][0]).id, "task1-model").probabilities == rows[0][1]


def _submission_text(path: Path, header: list[str], *rows: list[str]) -> Path:
    path.write_text("\n".join(",".join(r) for r in [header, *rows]) + "\n")
    return path


def test_bad_submission_and_threshold_files_get_typed_errors_naming_file_and_row(store: Store,
                                                                                tmp_path: Path) -> None:
    classes = list(CXR_LT_26)
    row = ["x1"] + ["0.5"] * 26
    cases = [
        (_submission_text(tmp_path / "no_id.csv", ["image", *classes], row), BadCsv, "no 'dicom_id' column"),
        (_submission_text(tmp_path / "unknown.csv", ["dicom_id", *classes, "Foo Finding"], row + ["0.1"]),
         UnknownClass, "Foo Finding"),
        (_submission_text(tmp_path / "short.csv", ["dicom_id", *classes[:-1]], row[:-1]), BadCsv,
         "Tortuous Aorta"),
        (_submission_text(tmp_path / "twice.csv", ["dicom_id", *classes], row, row), BadCsv, "line 3: duplicate"),
    ]
    for path, error, words in cases:
        with pytest.raises(error) as raised:
            import_ai_predictions(store, path, "broken")
        assert raised.value.path == path and words in str(raised.value), str(raised.value)
    assert store.ai_source("broken") is None, "nothing is registered from a bad file"

    good = _submission_text(tmp_path / "good.csv", ["dicom_id", *classes], row, ["x2"] + ["0.2"] * 25 + ["-0.1"])
    with pytest.raises(ImportFailed) as failed:
        import_ai_predictions(store, good, "strict-one", strict=True)
    assert "good.csv" in str(failed.value) and "line 3" in str(failed.value) and "Tortuous Aorta" in str(failed.value)
    for name, text, words in [("t.json", json.dumps({"Edema": 2}), "'Edema' must be a number in [0, 1]"),
                              ("t2.json", json.dumps({"Edemaa": 0.5}), "'Edemaa' is not one of"),
                              ("t3.csv", "name,value\nEdema,0.5\n", "columns class, threshold"),
                              ("t4.csv", "class,threshold\nEdema,high\n", "line 2")]:
        (tmp_path / name).write_text(text)
        with pytest.raises(BadThresholds) as raised:
            import_ai_predictions(store, good, "thresholded", thresholds=tmp_path / name)
        assert raised.value.path == tmp_path / name and words in raised.value.cause, raised.value.cause


def test_the_source_of_a_started_study_is_fixed_and_the_export_and_analysis_name_it(store: Store,
                                                                                     tmp_path: Path) -> None:
    from analysis.data import build_study

    keys = demo_keys(store)[4:]  # the NIH cases: ground truth for the analysis
    readers = [store.create_reader("rui", "pw-rui-pw"), store.create_reader("mei", "pw-mei-pw")]
    store.create_study("aided", [p for p, _ in keys], readers, design="sequential", washout_days=0, rating_max=0)
    csv_path = write_submission(tmp_path / "sub.csv", [(key, probabilities(k)) for k, (_, key) in enumerate(keys)])
    (tmp_path / "t.json").write_text(json.dumps({"Edema": 0.5, "Atelectasis": 0.3}))
    import_ai_predictions(store, csv_path, "vendor-y", thresholds=tmp_path / "t.json", study="aided")
    for reader in readers:
        for view in store.assignments_for(reader, "aided"):
            store.log_event(view, reader, "case_shown")
            store.save_annotation(view, reader, {"Edema": 1}, label_set="cxr-lt-26",
                                  model_version="vendor-y" if view.shows_ai else None)
    store.register_ai_source(supplier_card("other", "imported", "elsewhere", "cxr-lt-26", CXR_LT_26))
    with pytest.raises(StudyDesignError, match="has started"):
        store.set_study_ai_source("aided", "other")
    with pytest.raises(StudyDesignError, match="has started"):
        import_ai_predictions(store, csv_path, "vendor-y")

    frame = results_frame(store, "aided")
    aided, unaided = frame[frame["arm"] == "ai_aided"], frame[frame["arm"] == "unaided"]
    assert set(aided["ai_source"]) == {"vendor-y"} and unaided["ai_source"].isna().all()
    assert unaided["ai_suggested"].isna().all() and unaided["ai_probability"].isna().all()
    card = store.ai_source("vendor-y")
    for name, p, suggested in zip(aided["class"], aided["ai_probability"], aided["ai_suggested"]):
        assert suggested == int(name in card.suggested({name: p})), (name, p, suggested)
    assert set(aided[aided["class"] == "Edema"]["ai_suggested"]) == {0, 1}

    study = build_study(frame, default_threshold=0.99)
    ai = study.answers[study.ai_rater]
    expected = aided.drop_duplicates(["case", "class"]).set_index(["case", "class"])["ai_suggested"]
    for i, case in enumerate(study.cases):
        for k, name in enumerate(study.classes):
            assert ai[i, k] == expected[(case, name)], (case, name)
    assert study.ai_source == "vendor-y"

    from analysis.cli import main as analyze
    frame.to_csv(tmp_path / "results.csv", index=False)
    assert analyze(["--results", str(tmp_path / "results.csv"), "--out", str(tmp_path / "report"),
                    "--bootstrap", "10"]) == 0
    assert "AI alone = the AI source vendor-y" in (tmp_path / "report" / "report.html").read_text()


def test_launch_import_prints_the_report_and_db_commands_list_and_attach(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.sqlite'}"
    with Store.open(url) as store:
        import_demo(store)
        keys = demo_keys(store)
        store.create_study("cli-study", [p for p, _ in keys[:3]], [store.create_reader("rui", "pw-rui-pw")])
    csv_path = write_submission(tmp_path / "cli.csv", [(keys[0][1], probabilities(0)), ("nobody", probabilities(1))])
    run = [sys.executable, "launch.py"]
    result = subprocess.run([*run, "import", "--ai-predictions", str(csv_path), "--source-name", "cli-src",
                             "--study", "cli-study", "--db", url], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 1, result.stdout + result.stderr  # rows were left out
    assert "1 of 2 row(s) matched" in result.stdout and "line 3, dicom_id 'nobody'" in result.stdout
    assert "attached to study 'cli-study'" in result.stdout
    listed = subprocess.run([*run, "db", "sources", "--db", url], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=300)
    assert "cli-src\timported\t1 case(s)" in listed.stdout
    bad = subprocess.run([*run, "import", "--ai-predictions", str(tmp_path / "missing.csv"), "--source-name", "x",
                          "--db", url], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "missing.csv" in bad.stderr


def test_a_local_torchxrayvision_model_predicts_the_cases_as_a_source(tmp_path: Path) -> None:
    import torch
    import torchxrayvision as xrv

    from core_model.xrv_source import XrvSourceError

    weights = tmp_path / "densenet-local.pt"
    torch.manual_seed(0)
    torch.save(xrv.models.DenseNet(weights=None, num_classes=18).state_dict(), weights)
    (tmp_path / "broken.pt").write_bytes(b"not a weights file")
    with Store.open(f"sqlite:///{tmp_path / 'xrv.sqlite'}") as store:
        import_demo(store)
        keys = demo_keys(store)
        store.create_study("xrv-study", [p for p, _ in keys[4:6]], [store.create_reader("rui", "pw-rui-pw")])
        with pytest.raises(XrvSourceError, match="broken.pt"):
            compute_xrv_predictions(store, tmp_path / "broken.pt", study="xrv-study")
        report = compute_xrv_predictions(store, weights, "xrv-local", study="xrv-study")
        assert sorted(report.predicted) == sorted(p for p, _ in keys[4:6]) and not report.errors
        card = store.ai_source("xrv-local")
        assert card.kind == "torchxrayvision" and "densenet-local.pt" in card.origin
        stored = store.prediction(store.case(keys[4][0]).id, "xrv-local").probabilities
        assert set(stored) <= set(card.evidence) and all(0 <= p <= 1 and math.isfinite(p) for p in stored.values())
        assert store.study_settings(store.study_id("xrv-study")).ai_source == "xrv-local"


def test_the_panel_writes_each_kind_of_evidence_and_the_validation_summary() -> None:
    import numpy as np

    from app.panels import evidence_text, validation_text
    from core_model.findings import ClassEvidence, FindingsCard, evaluate

    validated = ClassEvidence("Edema", "validated", 0.7412, 0.6071, 0.8533, 12, 80, 0.2311, 0.75, 0.7)
    assert evidence_text(validated)[:2] == ("AUROC 0.74 [0.61–0.85] · op 0.23", "bc-ev-ok")
    assert "12 positive / 80 negative" in evidence_text(validated)[2]
    assert evidence_text(ClassEvidence("Mass", "not validated", n_pos=2))[:2] == ("not validated", "bc-ev-nv")
    assert evidence_text(ClassEvidence("Hernia", "not trained"))[0] == "—" and evidence_text(None)[0] == "—"
    assert evidence_text(ClassEvidence("Edema", "supplier", operating_point=0.5))[0] == \
        "supplier op 0.50 · not validated here"

    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, (60, 2))
    scores = np.clip(labels * 0.5 + rng.normal(0.25, 0.2, (60, 2)), 0, 1)
    evidence, summary = evaluate(["Edema", "Mass"], scores, labels, trained=["Edema"], seed=0)
    card = FindingsCard("biascare-test", "built-in", "checkpoint test", "cxr-lt-26", evidence, summary)
    assert evidence["Edema"].status == "validated" and evidence_text(evidence["Edema"])[0].startswith("AUROC ")
    text = validation_text(card)
    assert text.startswith(f"validation: macro AUROC {summary['macro_auroc']:.2f} [") and "on 60 images · ECE" in text
    assert validation_text(FindingsCard("v", "built-in", "", "cxr-lt-26", {})).startswith("not validated")
    assert validation_text(FindingsCard("v", "imported", "", "cxr-lt-26", {})) == \
        "not validated here (supplier's numbers)"


def test_ai_masks_are_stored_with_their_predictions_and_a_wrong_size_is_reported(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    from annotations_db import rle

    with Store.open(f"sqlite:///{tmp_path / 'masks.sqlite'}") as store:
        import_demo(store)
        keys = demo_keys(store)
        (good_case, good), (_, wrong) = keys[4], keys[5]
        info = store.case_info(good_case)
        mask = np.zeros((info.height, info.width), np.uint8)
        mask[100:300, 200:500] = 255
        (tmp_path / "masks").mkdir()
        Image.fromarray(mask).save(tmp_path / "masks" / f"{good}.png")
        Image.fromarray(mask[:50, :50]).save(tmp_path / "masks" / f"{wrong}.png")
        csv_path = write_submission(tmp_path / "with_masks.csv", [(good, probabilities(0)), (wrong, probabilities(1))])
        report = import_ai_predictions(store, csv_path, "masked", masks_dir=tmp_path / "masks")
        assert report.masks == 1 and [e.path.name for e in report.mask_errors] == [f"{wrong}.png"]
        assert "does not match" in report.mask_errors[0].cause and f"{wrong}.png" in "\n".join(report.lines())
        stored = store.prediction(store.case(good_case).id, "masked")
        assert np.array_equal(rle.decode(stored.mask_rle), mask > 0)
        assert store.prediction(store.case(keys[5][0]).id, "masked").mask_rle is None, "probabilities kept, no mask"
