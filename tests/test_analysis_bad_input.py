"""Bad input: the report says what is wrong, computes what is defined, never divides by zero or drops rows silently."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from analysis.data import build_study
from analysis.pipeline import AnalysisConfig, run_analysis
from analysis.report import write_report
from analysis.simulate import StudySpec, simulate_study


@pytest.fixture(autouse=True)
def _runtime_warnings_are_errors():
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        yield


def _frame(**kw) -> pd.DataFrame:
    return simulate_study(StudySpec(n_cases=kw.pop("n_cases", 60), n_readers=kw.pop("n_readers", 2),
                                    classes=[f"K{k}" for k in range(6)], seed=kw.pop("seed", 3), **kw))


def _run(frame: pd.DataFrame, tmp_path=None, **config):
    study = build_study(frame)
    res = run_analysis(study, AnalysisConfig(n_boot=60, **config))
    files = write_report(res, tmp_path) if tmp_path is not None else None
    return study, res, files


def _accounted(study, n_rows: int) -> dict[str, int]:
    counts = study.row_accounting.set_index("status")["rows"].to_dict()
    assert counts["total input rows"] == n_rows
    assert sum(v for k, v in counts.items() if k != "total input rows") == n_rows
    return counts


def test_unbalanced_reader_missing_cases(tmp_path) -> None:
    frame = _frame()
    gone = (frame["reader"] == "R2") & (frame["arm"] == "ai_aided") & frame["case"].isin(["case0000", "case0001"])
    frame = frame[~gone]
    study, res, files = _run(frame, tmp_path)
    _accounted(study, len(frame))
    assert any("R2 (ai_aided) did not read 2 of 60 cases" in n for n in res.notes)
    assert any("MRMC: 2 of 60 cases" in n for n in res.notes)
    summary = res.summary.set_index("rater")
    assert summary.loc["R2 (ai_aided)", "cases_read"] == 58 and summary.loc["R1 (ai_aided)", "cases_read"] == 60
    assert res.mrmc["accuracy"].n_cases == 58
    assert res.speedup.set_index("reader").loc["R2", "paired_cases"] == 58
    assert "did not read 2 of 60 cases" in files.html.read_text()


def test_class_never_positive(tmp_path) -> None:
    frame = _frame()
    frame.loc[frame["class"] == "K5", "truth"] = 0
    study, res, files = _run(frame, tmp_path)
    assert any("class 'K5' is never positive" in n for n in res.notes)
    pc = res.per_class[res.per_class["class"] == "K5"]
    assert pc["accuracy"].isna().all() and pc["specificity"].notna().all()
    assert (res.summary["classes_scored"] == 5).all() and res.summary["accuracy"].notna().all()
    assert any("'K5' not exported" in n for n in files.notes)
    assert np.isfinite(res.mrmc["accuracy"].random_readers_random_cases.global_test["statistic"])
    assert "never positive" in files.html.read_text()


def test_subgroups_of_size_zero_and_one(tmp_path) -> None:
    frame = _frame()
    frame.loc[frame["case"] == "case0007", "race"] = "Other"
    study, res, files = _run(frame, tmp_path, age_edges=(0, 10, 40, 60, 75, 200))
    table = res.subgroups.table
    empty = table[(table["attribute"] == "age") & (table["group"] == "0-10")]
    assert (empty["n_cases"] == 0).all() and empty["accuracy"].isna().all()
    single = table[(table["attribute"] == "race") & (table["group"] == "Other")]
    assert (single["n_cases"] == 1).all()
    assert any("age group '0-10' has no cases" in n for n in res.notes)
    assert any("race group 'Other' has 1 case(s)" in n for n in res.notes)
    gaps = res.subgroups.gaps
    assert (gaps.loc[gaps["attribute"] == "race", "groups_compared"] == 3).all()
    assert (gaps.loc[gaps["attribute"] == "age", "groups_compared"] == 4).all()
    assert gaps["max_gap"].notna().all()
    # every case is in exactly one race group (none dropped)
    race_sizes = table[(table["attribute"] == "race")].groupby("group")["n_cases"].first()
    assert race_sizes.sum() == 60


def test_missing_demographics(tmp_path) -> None:
    frame = _frame(missing_demographics=0.2)
    frame["sex"] = np.nan
    study, res, files = _run(frame, tmp_path)
    assert any("60 of 60 cases have no sex" in n for n in res.notes)
    race_missing = study.case_info["race"].isna().sum()
    assert race_missing > 0 and any(f"{race_missing} of 60 cases have no race" in n for n in res.notes)
    race_sizes = res.subgroups.table.query("attribute == 'race'").groupby("group")["n_cases"].first()
    assert race_sizes.sum() + race_missing == 60
    sex_gaps = res.subgroups.gaps.query("attribute == 'sex'")
    assert sex_gaps["max_gap"].isna().all()
    assert "have no sex" in files.html.read_text()


def test_bad_rows_are_accounted_for() -> None:
    frame = _frame(n_cases=20)
    n = len(frame)
    frame.loc[0, "answer"] = np.nan
    frame.loc[1, "arm"] = "second_read"
    frame = pd.concat([frame, frame.iloc[[5, 6]]], ignore_index=True)  # duplicates
    frame.loc[10, "truth"] = np.nan
    study, res, _ = _run(frame)
    counts = _accounted(study, n + 2)
    assert counts["used"] == n - 2
    assert counts["answer missing or not 0/1"] == 1
    assert counts["unknown arm (not unaided/ai_aided)"] == 1
    assert counts["duplicate reader×case×arm×class row (first kept)"] == 2
    assert any("1 rows have no ground truth" in n for n in res.notes)
    assert any("lack some class rows" in n for n in res.notes)


def test_single_arm_and_single_reader() -> None:
    frame = _frame(n_readers=1)
    study, res, _ = _run(frame[frame["arm"] == "unaided"])
    assert res.mrmc == {} and any("needs both arms" in n for n in res.notes)
    assert any("no AI probabilities" in n for n in res.notes)
    study, res, _ = _run(frame)
    acc = res.mrmc["accuracy"]
    assert np.isnan(acc.random_readers_random_cases.global_test["p"])
    assert np.isfinite(acc.fixed_readers_random_cases.global_test["p"])


def test_missing_column_and_empty_input() -> None:
    frame = _frame(n_cases=5)
    with pytest.raises(ValueError, match="truth"):
        build_study(frame.drop(columns=["truth"]))
    with pytest.raises(ValueError, match="no usable rows"):
        build_study(frame.assign(answer="maybe"))


def test_missing_time_filled_from_timestamps_or_reported() -> None:
    frame = _frame(n_cases=10)
    case0 = frame["case"] == "case0000"
    expected = frame.loc[case0 & (frame["reader"] == "R1") & (frame["arm"] == "unaided"), "time_s"].iloc[0]
    frame.loc[case0, "time_s"] = np.nan
    frame.loc[frame["case"] == "case0001", ["time_s", "shown_at"]] = np.nan
    study = build_study(frame)
    assert any("taken from submitted_at − shown_at" in n for n in study.notes)
    assert study.times[study.rater_index("R1", "unaided"), 0] == pytest.approx(expected, abs=1e-3)
    assert any("4 reader×case readings have no time_s" in n for n in study.notes)
    assert np.isnan(study.times[: len(study.human_raters), 1]).all()
