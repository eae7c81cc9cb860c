"""`python launch.py analyze` end to end on a simulated study: a real HTML report, CSV tables and PNG figures."""
from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pandas as pd
import pytest

import launch
from analysis.cli import main
from analysis.simulate import StudySpec, simulate_study


@pytest.fixture(scope="module")
def study_frame() -> pd.DataFrame:
    return simulate_study(StudySpec(n_cases=80, n_readers=2, seed=11, missing_demographics=0.05))


@pytest.fixture(scope="module")
def small_frame() -> pd.DataFrame:
    return simulate_study(StudySpec(n_cases=40, n_readers=2, seed=12, classes=[f"C{k:02d}" for k in range(6)],
                                    prevalence=[0.5, 0.4, 0.3, 0.3, 0.2, 0.2]))


def _check_report(out: Path, n_raters: int) -> str:
    text = (out / "report.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]{100,})"', text)
    assert len(images) >= 7
    assert "http://" not in text and "https://" not in text  # self-contained
    for heading in ("Data checks", "Accuracy and time", "Per class", "Subgroups", "AI uncertainty",
                    "Obuchowski", "random readers, random cases", "fixed readers, random cases",
                    "random readers, fixed cases", "Differences with paired bootstrap"):
        assert heading in text, heading
    assert text.count("<table") >= 15
    summary = pd.read_csv(out / "tables" / "summary.csv")
    assert len(summary) == n_raters and summary["accuracy"].between(0, 1).all()
    for name in ("per_class", "class_change", "speedup", "bootstrap_differences", "subgroups", "subgroup_gaps",
                 "uncertainty_deciles", "mrmc_accuracy_components", "mrmc_auc_rrrc_differences", "row_accounting"):
        assert (out / "tables" / f"{name}.csv").stat().st_size > 0, name
    for name in ("fig3d_accuracy_time", "fig3e_per_class", "fig3f-k_subgroups", "uncertainty_deciles",
                 "mrmc_accuracy", "reading_time"):
        assert (out / "figures" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list((out / "imrmc").glob("*.imrmc"))) == 26
    return text


def test_cli_csv_end_to_end(study_frame: pd.DataFrame, tmp_path: Path, capsys) -> None:
    path = tmp_path / "results.csv"
    study_frame.to_csv(path, index=False)
    rc = launch.main(["analyze", "--results", str(path), "--out", str(tmp_path / "out"), "--bootstrap", "50",
                      "--seed", "1", "--age-bins", "0,50,70,200"])
    assert rc == 0
    text = _check_report(tmp_path / "out", n_raters=5)
    assert "0-50" in text and "70-200" in text
    assert "report:" in capsys.readouterr().out


def test_cli_parquet_and_thresholds(small_frame: pd.DataFrame, tmp_path: Path) -> None:
    path = tmp_path / "results.parquet"
    small_frame.to_parquet(path)
    thresholds = tmp_path / "t.json"
    thresholds.write_text('{"C00": 0.99}')
    assert main(["--results", str(path), "--out", str(tmp_path / "out"), "--bootstrap", "20",
                 "--thresholds", str(thresholds), "--ai-seconds-per-case", "2.5"]) == 0
    per_class = pd.read_csv(tmp_path / "out" / "tables" / "per_class.csv")
    ai = per_class[(per_class["rater"] == "AI alone")].set_index("class")
    assert ai.loc["C00", "sensitivity"] < ai.loc["C01", "sensitivity"]
    summary = pd.read_csv(tmp_path / "out" / "tables" / "summary.csv").set_index("rater")
    assert summary.loc["AI alone", "median_s"] == 2.5 and summary.loc["AI alone", "total_h"] == 40 * 2.5 / 3600
    assert (pd.read_csv(tmp_path / "out" / "tables" / "speedup.csv")["ai_speedup_vs_unaided"] > 5).all()


def test_cli_db_reads_through_export_module(small_frame: pd.DataFrame, tmp_path: Path, monkeypatch, capsys) -> None:
    from annotations_db.export import StudyInfo
    fake = types.ModuleType("annotations_db.export")
    seen = []
    studies = [StudyInfo(1, "old", None, 0), StudyInfo(2, "new", None, 100)]
    fake.results_frame = lambda url, study=None: seen.append((url, study)) or small_frame
    fake.resolve_study = lambda url, study=None: studies[-1] if study is None else studies[0]
    fake.list_studies = lambda url: studies
    monkeypatch.setitem(sys.modules, "annotations_db.export", fake)
    assert main(["--db", "sqlite:///study.db", "--out", str(tmp_path / "out"), "--bootstrap", "20"]) == 0
    assert seen == [("sqlite:///study.db", 2)]
    assert (tmp_path / "out" / "report.html").exists()
    out = capsys.readouterr().out
    assert "study: new (id 2, created unknown) — the latest study" in out and "old (id 1" in out


def test_cli_errors(tmp_path: Path, study_frame: pd.DataFrame, capsys) -> None:
    assert main(["--results", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "o")]) == 2
    bad = tmp_path / "bad.csv"
    study_frame.drop(columns=["answer"]).head(10).to_csv(bad, index=False)
    assert main(["--results", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "answer" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--results", str(bad), "--out", str(tmp_path / "o"), "--age-bins", "10,5"])
