"""Honest study reporting: the study named, confidence ratings carried into the results, the report's AUCs, iMRMC and
the admin dashboard; exports with nothing to write fail with a message instead of an empty file or folder.

Real pieces throughout: a SQLite file, real NIH chest X-rays with their CXR-LT labels, readers answering through
``Store.save_annotation`` (ratings included), ``launch.py analyze`` / ``launch.py export`` as subprocesses.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from annotations_db import export
from annotations_db.errors import ExportError
from annotations_db.store import Store
from core_model.classes import CXR_LT_26
from tests.db_helpers import REPO_ROOT, seed_cases

PASSWORD = "integrity-pw"
EXCLUSIVE = ("Normal",)  # never ticked together with a finding


def _answer(truth: int | None, i: int, k: int) -> tuple[int, int]:
    """A reader's answer and rating for case i, class k: mostly right, some misses and false alarms; the rating
    ranks the true positives above the false alarms, so rating AUCs differ from the 0/1 ones."""
    name = CXR_LT_26[k]
    if name in EXCLUSIVE or truth is None:
        return 0, 0
    answer = int(truth == 1) if (i + k) % 5 else 1 - int(truth == 1)
    if not answer:
        return 0, 0
    return 1, (60 + 10 * ((i + k) % 4)) if truth == 1 else (20 + 10 * ((i + k) % 3))


def _read_study(store: Store, study: str, readers: list, rated: bool) -> dict:
    """Every assignment of ``study`` answered (events + answer); returns {(reader name, case id, arm): ratings}."""
    saved = {}
    for r, reader in enumerate(readers):
        for view in store.assignments_for(reader, study, include_locked=True):
            store.log_event(view, reader, "case_shown")
            truth = store.case_labels(view.case_id)
            index = view.case_id + r + (view.arm == "ai_aided")
            pairs = [_answer(truth.get(name), index, k) for k, name in enumerate(CXR_LT_26)]
            labels = {name: a for name, (a, _) in zip(CXR_LT_26, pairs)}
            ratings = {name: s for name, (_, s) in zip(CXR_LT_26, pairs)} if rated else None
            store.save_annotation(view, reader, labels, confidence=ratings)
            saved[(reader.name, view.case_id, view.arm)] = ratings
    return saved


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> dict:
    """Two studies on 6 real CXRs and 2 readers: 'rated' (0..100 ratings, created first) and 'binary' (newer)."""
    root = tmp_path_factory.mktemp("integrity")
    url = f"sqlite:///{root / 'a.sqlite'}"
    store = Store.open(url)
    cases = seed_cases(store, shared_data, root / "seed", count=6)
    for i, case in enumerate(cases):
        store.record_prediction(case.id, "m1", {c: ((i * 7 + k * 3) % 10) / 10 for k, c in enumerate(CXR_LT_26)},
                                uncertainty={"total": i / 10})
    readers = [store.create_reader(name, PASSWORD) for name in ("ana", "ben")]
    store.create_reader("boss", PASSWORD, "admin")
    store.create_study("rated", cases, readers, design="crossover", washout_days=0, model_version="m1",
                       rating_max=100)
    store.create_study("binary", cases, readers, design="crossover", washout_days=0, model_version="m1",
                       rating_max=0)
    saved = _read_study(store, "rated", readers, rated=True)
    _read_study(store, "binary", readers, rated=False)
    yield {"store": store, "url": url, "root": root, "cases": cases, "saved": saved}
    store.close()


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(REPO_ROOT / "launch.py"), *args], capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=600)


# ---------------------------------------------------------------------------------------------------- results
def test_integrity_results_name_the_study_and_carry_the_raw_ratings(world: dict, tmp_path: Path) -> None:
    store = world["store"]
    rated, binary = export.results_frame(store, "rated"), export.results_frame(store, "binary")
    assert list(rated.columns) == export.RESULT_COLUMNS and {"study", "score"} <= set(rated.columns)
    assert (rated["study"] == "rated").all() and (binary["study"] == "binary").all()
    assert len(rated) == 2 * 6 * 2 * len(CXR_LT_26)
    assert binary["score"].isna().all() and rated["score"].notna().all()
    pseudo = {c.id: c.pseudo_id for c in world["cases"]}
    expected = {(reader, pseudo[case], arm, name): value for (reader, case, arm), ratings in world["saved"].items()
                for name, value in ratings.items()}
    found = dict(zip(zip(rated["reader"], rated["case"], rated["arm"], rated["class"]), rated["score"]))
    assert found == {key: float(value) for key, value in expected.items()}  # raw 0..100, not rescaled
    assert rated["score"].max() > 1
    csv_path, parquet_path = export.export_results(store, tmp_path / "results", "rated")
    pd.testing.assert_frame_equal(pd.read_parquet(parquet_path), rated)
    from_csv = pd.read_csv(csv_path)
    assert list(from_csv.columns) == export.RESULT_COLUMNS and (from_csv["study"] == "rated").all()
    assert np.allclose(from_csv["score"], rated["score"])


# ---------------------------------------------------------------------------------------------------- analysis
def _auc_fom_from_ratings(frame: pd.DataFrame) -> pd.DataFrame:
    """Arm × reader macro AUC of the ratings over the classes with both truths (independent of analysis/)."""
    known = frame[frame["truth"].notna()]
    table = {}
    for (reader, arm), rows in known.groupby(["reader", "arm"]):
        aucs = [roc_auc_score(group["truth"].astype(int), group["score"])
                for _, group in rows.groupby("class") if group["truth"].nunique() == 2]
        table[(arm, reader)] = float(np.mean(aucs))
    return pd.Series(table).unstack()


def test_integrity_analyze_reads_the_named_study_and_its_aucs_come_from_the_ratings(world: dict,
                                                                                    tmp_path: Path) -> None:
    out = tmp_path / "report"
    done = _run("analyze", "--db", world["url"], "--study", "rated", "--out", str(out), "--bootstrap", "10")
    assert done.returncode == 0, done.stderr[-2000:]
    info = export.resolve_study(world["store"], "rated")
    assert f"study: rated (id {info.id}, created {info.created_at.isoformat(timespec='seconds')})" in done.stdout
    assert "other studies in the database" in done.stdout and "binary (id" in done.stdout
    frame = export.results_frame(world["store"], "rated")
    accounting = pd.read_csv(out / "tables" / "row_accounting.csv").set_index("status")["rows"]
    assert accounting["used"] == accounting["total input rows"] == len(frame)  # that study's rows, not the other's
    fom = pd.read_csv(out / "tables" / "mrmc_auc_fom.csv").set_index("arm")
    expected = _auc_fom_from_ratings(frame)
    for arm in ("unaided", "ai_aided"):
        for reader in ("ana", "ben"):
            assert fom.loc[arm, reader] == pytest.approx(expected.loc[arm, reader], abs=1e-9)
    summary = pd.read_csv(out / "tables" / "summary.csv")
    humans = summary[summary["reader"] != "AI"]
    binary_auc = (humans["sensitivity"] + humans["specificity"]) / 2
    assert humans["auc_macro"].notna().all() and not np.allclose(humans["auc_macro"], binary_auc)
    html = (out / "report.html").read_text()
    assert "readers gave 0/1 answers" not in html
    assert (out / "figures" / "mrmc_auc.png").stat().st_size > 5000
    imrmc = sorted((out / "imrmc").glob("*.imrmc"))
    assert imrmc and "reader scores" in imrmc[0].read_text().splitlines()[0]


def test_integrity_analyze_without_study_says_it_takes_the_latest_and_refuses_an_unknown(world: dict,
                                                                                        tmp_path: Path) -> None:
    done = _run("analyze", "--db", world["url"], "--out", str(tmp_path / "latest"), "--bootstrap", "10")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "study: binary (id" in done.stdout and "the latest study (no --study given)" in done.stdout
    assert "rated (id" in done.stdout  # the other study is listed
    html = (tmp_path / "latest" / "report.html").read_text()
    assert "readers gave 0/1 answers" in html  # the binary study: said, not hidden
    bad = _run("analyze", "--db", world["url"], "--study", "nope", "--out", str(tmp_path / "bad"))
    assert bad.returncode == 2 and "no study 'nope'" in bad.stderr and "rated" in bad.stderr
    assert not (tmp_path / "bad" / "report.html").exists()


# ---------------------------------------------------------------------------------------------------- iMRMC
def _imrmc_reads(path: Path) -> dict[tuple[str, str, str], float]:
    lines = path.read_text().splitlines()
    data = [line.split(",") for line in lines[lines.index("BEGIN DATA:") + 1:]]
    return {(d[0], d[1], d[2]): float(d[3]) for d in data if d[0] != "-1"}


def test_integrity_imrmc_uses_the_ratings_when_recorded_and_the_answers_otherwise(world: dict,
                                                                                  tmp_path: Path) -> None:
    store = world["store"]
    for study, column in (("rated", "score"), ("binary", "answer")):
        frame = export.results_frame(store, study)
        files = export.export_imrmc_classes(store, tmp_path / study, study)
        both = frame[frame["truth"].notna()].groupby("class")["truth"].nunique()
        assert set(files) == set(both[both == 2].index)
        for name, path in files.items():
            rows = frame[(frame["class"] == name) & frame["truth"].notna()]
            expected = {(r.reader, r.case, r.arm): float(getattr(r, column)) for r in rows.itertuples(index=False)}
            assert _imrmc_reads(path) == expected
    done = _run("export", "imrmc", str(tmp_path / "cli"), "--study", "rated", "--db", world["url"])
    assert done.returncode == 0, done.stderr
    written = sorted((tmp_path / "cli").glob("*.imrmc"))
    assert len(written) == len(files) and "confidence rating" in written[0].read_text().splitlines()[0]


# ---------------------------------------------------------------------------------------------------- dashboard
@pytest.fixture(scope="module")
def service(world: dict):  # type: ignore[no-untyped-def]
    from app.service import AppService
    from app.testing import shared_model
    service = AppService(world["store"], shared_model(), world["root"] / "data", background=False)
    return service


def _recall_accuracy(rows: pd.DataFrame) -> float:
    """The paper's accuracy (analysis's default): per class, correct among the cases of the class; class mean."""
    positives = rows[rows["truth"] == 1]
    return float(positives.groupby("class")["answer"].mean().mean())


def test_integrity_dashboard_is_per_reader_and_arm_with_the_analysis_accuracy(world: dict, service) -> None:
    from app import admin
    dash = admin.dashboard_frame(service, "rated")
    frame = export.results_frame(world["store"], "rated")
    assert len(dash) == 4 and dash["rater"].is_unique  # one bar each: side by side, nothing to stack
    assert set(zip(dash["reader"], dash["arm"])) == set(zip(frame["reader"], frame["arm"]))
    for row in dash.itertuples(index=False):
        mine = frame[(frame["reader"] == row.reader) & (frame["arm"] == row.arm)]
        per_read = mine.drop_duplicates("case")
        assert row.reads == per_read["case"].nunique() == 6
        assert row.accuracy == pytest.approx(_recall_accuracy(mine), abs=5e-4)
        assert row.mean_time_s == pytest.approx(per_read["time_s"].mean(), abs=5e-4)
        assert row.median_time_s == pytest.approx(per_read["time_s"].median(), abs=5e-4)
        assert row.rater == f"{row.reader} · {row.arm}"
    assert "TP / (TP + FN)" in admin.ACCURACY_DEFINITION and "--accuracy recall" in admin.ACCURACY_DEFINITION


def test_integrity_dashboard_plots_put_arms_side_by_side_with_the_definition_shown(service) -> None:
    import gradio as gr

    from app import admin
    from app.ui import build_ui
    demo = build_ui(service)
    plots = [block for block in demo.blocks.values() if isinstance(block, gr.BarPlot)]
    assert len(plots) == 2 and all(plot.x == "rater" and plot.color == "arm" for plot in plots)
    texts = [block.value for block in demo.blocks.values() if isinstance(block, gr.Markdown)]
    assert admin.ACCURACY_DEFINITION in texts
    radios = [block for block in demo.blocks.values() if isinstance(block, gr.Radio)
              and block.label == "Export"]
    assert radios and [c[0] for c in radios[0].choices] == list(admin.EXPORT_KINDS)


# ---------------------------------------------------------------------------------------------------- exports
def test_integrity_admin_exports_every_kind_of_a_chosen_study(world: dict, service) -> None:
    import zipfile

    from app import admin
    session = service.login("boss", PASSWORD)
    results = admin.export(service, session, "Results (Parquet)", "rated")
    assert (pd.read_parquet(results)["study"] == "rated").all()
    imrmc = admin.export(service, session, "iMRMC (zip, one file per class)", "rated")
    assert imrmc.suffix == ".zip" and any(n.endswith(".imrmc") for n in zipfile.ZipFile(imrmc).namelist())
    training = admin.export(service, session, "Training manifest + images + masks (zip)")
    assert "manifest.json" in zipfile.ZipFile(training).namelist()
    from app.service import AppError
    with pytest.raises(AppError, match="no masks to export"):  # the studies' answers have no masks
        admin.export(service, session, "Masks: PNG (zip)")


def test_integrity_empty_exports_fail_with_a_message_and_leave_nothing(shared_data: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.sqlite'}"
    with Store.open(url) as store:
        cases = seed_cases(store, shared_data, tmp_path / "seed", count=2)
        reader = store.create_reader("ana", PASSWORD)
        store.create_study("unread", cases, [reader], washout_days=0)
        with pytest.raises(ExportError, match="no submitted read"):
            export.export_results(store, tmp_path / "api" / "results", "unread")
        with pytest.raises(ExportError, match="no masks"):
            export.export_masks(store, tmp_path / "api-masks", require_any=True)
        with pytest.raises(ExportError, match="no annotations"):
            export.require_final_annotations(store)
    assert not (tmp_path / "api").exists() and not (tmp_path / "api-masks").exists()
    for what, out in (("results", "r/results"), ("imrmc", "i"), ("masks", "m"), ("training", "t")):
        done = _run("export", what, str(tmp_path / "cli" / out), "--db", url)
        assert done.returncode == 2 and done.stderr.startswith("error: "), (what, done.stdout, done.stderr)
        assert not (tmp_path / "cli" / out).exists(), what
    missing = _run("export", "results", str(tmp_path / "x"), "--study", "nope", "--db", url)
    assert missing.returncode == 2 and "no study 'nope'" in missing.stderr
