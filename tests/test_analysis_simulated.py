"""The analysis recovers the effects a simulated reader study was built with, within their confidence intervals."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis.bootstrap import bootstrap_differences, bootstrap_metric_cis
from analysis.data import build_study
from analysis.pipeline import AnalysisConfig, run_mrmc
from analysis.simulate import ReaderSpec, StudySpec, expected_effects, simulate_study
from analysis.metrics import speedup_table, summary_table

SPEC = StudySpec(n_cases=300, seed=7, readers=[
    ReaderSpec(sensitivity={"unaided": 0.65, "ai_aided": 0.78}, specificity={"unaided": 0.90, "ai_aided": 0.94},
               median_time_s={"unaided": 55.0, "ai_aided": 25.0}),
    ReaderSpec(sensitivity={"unaided": 0.72, "ai_aided": 0.80}, specificity={"unaided": 0.88, "ai_aided": 0.92},
               median_time_s={"unaided": 40.0, "ai_aided": 26.0}),
    ReaderSpec(sensitivity={"unaided": 0.70, "ai_aided": 0.81}, specificity={"unaided": 0.91, "ai_aided": 0.93},
               median_time_s={"unaided": 70.0, "ai_aided": 30.0})])


@pytest.fixture(scope="module")
def study():
    return build_study(simulate_study(SPEC))


@pytest.fixture(scope="module")
def truth() -> pd.DataFrame:
    return expected_effects(SPEC).set_index(["reader", "arm"])


def test_contract_columns_and_no_notes(study) -> None:
    frame = simulate_study(StudySpec(n_cases=5, n_readers=1, seed=1))
    assert list(frame.columns)[:16] == ["reader", "case", "arm", "class", "answer", "truth", "ai_probability",
                                        "ai_uncertainty", "time_s", "clicks", "order", "shown_at", "submitted_at",
                                        "sex", "age", "race"]
    assert frame.loc[frame["arm"] == "unaided", "ai_probability"].isna().all()
    assert study.notes == []
    assert study.row_accounting.set_index("status")["rows"].to_dict() == {"used": 300 * 26 * 6,
                                                                          "total input rows": 300 * 26 * 6}


def test_each_rater_accuracy_ci_covers_the_simulated_value(study, truth) -> None:
    cis = bootstrap_metric_cis(study, n_boot=400, seed=3).set_index(["rater", "metric"])
    for (reader, arm), row in truth.iterrows():
        label = f"{reader} ({arm})"
        acc, spec = cis.loc[(label, "accuracy")], cis.loc[(label, "specificity")]
        assert acc["ci_lower"] <= row["accuracy"] <= acc["ci_upper"], (label, acc.to_dict())
        assert spec["ci_lower"] <= row["specificity"] <= spec["ci_upper"], (label, spec.to_dict())
    ai = cis.loc[("AI alone", "accuracy")]
    assert ai["ci_lower"] <= SPEC.ai_sensitivity <= ai["ci_upper"]


def test_aided_minus_unaided_differences_recovered(study, truth) -> None:
    diffs = bootstrap_differences(study, n_boot=400, seed=5)
    macro = diffs[diffs["class"] == "macro"].set_index(["comparison", "metric"])
    for reader in study.readers:
        row = macro.loc[(f"{reader}: ai_aided - unaided", "accuracy")]
        effect = truth.loc[(reader, "ai_aided"), "accuracy"] - truth.loc[(reader, "unaided"), "accuracy"]
        assert row["ci_lower"] <= effect <= row["ci_upper"]
        assert row["ci_lower"] > 0  # the simulated gain is detected
    mean_effect = (truth.xs("ai_aided", level="arm")["accuracy"] - truth.xs("unaided", level="arm")["accuracy"]).mean()
    row = macro.loc[("mean of readers: ai_aided - unaided", "accuracy")]
    assert row["ci_lower"] <= mean_effect <= row["ci_upper"]


def test_time_and_speedup_recovered(study, truth) -> None:
    diffs = bootstrap_differences(study, n_boot=400, seed=5)
    speed = diffs[diffs["metric"] == "speedup_total_time"].set_index("comparison")
    summary = summary_table(study).set_index("rater")
    for reader in study.readers:
        expected = truth.loc[(reader, "unaided"), "median_time_s"] / truth.loc[(reader, "ai_aided"), "median_time_s"]
        row = speed.loc[f"{reader}: ai_aided - unaided"]
        assert row["ci_lower"] <= expected <= row["ci_upper"]
        for arm in ("unaided", "ai_aided"):
            s = summary.loc[f"{reader} ({arm})"]
            assert s["q1_s"] < truth.loc[(reader, arm), "median_time_s"] < s["q3_s"]
            assert s["median_s"] == pytest.approx(truth.loc[(reader, arm), "median_time_s"], rel=0.15)
    table = speedup_table(study)
    assert (table["paired_cases"] == 300).all() and (table["speedup_total"] > 1).all()


def test_mrmc_recovers_mean_effect(study, truth) -> None:
    results, notes = run_mrmc(study, AnalysisConfig())
    mean_effect = (truth.xs("ai_aided", level="arm")["accuracy"] - truth.xs("unaided", level="arm")["accuracy"]).mean()
    acc = results["accuracy"]
    assert acc.treatments == ["unaided", "ai_aided"] and acc.n_cases == 300
    for analysis in (acc.random_readers_random_cases, acc.fixed_readers_random_cases):
        d = analysis.differences.iloc[0]   # unaided - ai_aided
        assert d["ci_lower"] <= -mean_effect <= d["ci_upper"]
    assert acc.fixed_readers_random_cases.global_test["p"] < 0.05
    assert np.isfinite(acc.random_readers_random_cases.global_test["df2"])
    assert "auc" in results and any("0/1 answers" in n for n in notes)
