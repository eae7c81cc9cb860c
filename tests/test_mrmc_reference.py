"""OR-Hillis MRMC against the Iowa OR-DBM MRMC 2.51 program on the real Van Dyke ratings.

Every number printed in reference_ORDBM_MRMC_2.51_output.txt is parsed from the file and compared with ours at the
precision it is printed with (at least 4 decimals where the program prints 4 or more).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.mrmc import ORHResult, orh

NUM = r"(-?\d+\.\d+|-?\d+)"


def _close(ours: float, printed: str) -> None:
    decimals = len(printed.split(".")[1]) if "." in printed else 0
    tol = max(0.5 * 10 ** -decimals, 1e-12) + 1e-9
    assert abs(ours - float(printed)) <= tol, f"ours {ours!r} vs reference {printed} (±{tol})"


def _section(text: str, start: str, end: str | None = None) -> str:
    i = text.index(start)
    j = text.index(end, i) if end else len(text)
    return text[i:j]


@pytest.fixture(scope="module")
def reference(shared_data: Path) -> str:
    return (shared_data / "mrmc_vandyke" / "reference_ORDBM_MRMC_2.51_output.txt").read_text()


@pytest.fixture(scope="module")
def result(shared_data: Path) -> ORHResult:
    frame = pd.read_csv(shared_data / "mrmc_vandyke" / "vandyke_ratings.csv")
    return orh(frame, fom="auc", reader="reader", modality="modality", case="case", truth="truth", rating="rating")


def test_design(result: ORHResult, reference: str) -> None:
    m = re.search(r"(\d+) treatments, (\d+) readers, (\d+) cases \((\d+) normal, (\d+) abnormal\)", reference)
    assert (len(result.treatments), len(result.readers), result.n_cases, result.n_negative, result.n_positive) == \
        tuple(int(g) for g in m.groups())


def test_auc_estimates_and_means(result: ORHResult, reference: str) -> None:
    block = _section(reference, "TREATMENT x READER AUC ESTIMATES", "TREATMENT AUC MEANS")
    rows = re.findall(rf"^\s+(\d)\s+{NUM}\s+{NUM}\s*$", block, flags=re.M)
    assert len(rows) == 5
    for reader, a1, a2 in rows:
        _close(result.fom.iloc[0, int(reader) - 1], a1)
        _close(result.fom.iloc[1, int(reader) - 1], a2)
    means = re.findall(rf"^\s+([12])\s+{NUM}\s*$", _section(reference, "TREATMENT AUC MEANS", "MEAN DIFFERENCES"),
                       flags=re.M)
    assert len(means) == 2
    for trt, value in means:
        _close(result.treatment_means.iloc[int(trt) - 1], value)
    diff = re.search(rf"1 - 2\s+{NUM}", _section(reference, "MEAN DIFFERENCES", "ANOVA Tables")).group(1)
    _close(result.treatment_means.iloc[0] - result.treatment_means.iloc[1], diff)


def test_anova_tables(result: ORHResult, reference: str) -> None:
    block = _section(reference, "TREATMENT X READER ANOVA of AUCs", "READER ANOVAs")
    rows = re.findall(rf"^\s+(T|R|T\*R)\s+{NUM}\s+(\d+)\s+{NUM}\s*$", block, flags=re.M)
    assert [r[0] for r in rows] == ["T", "R", "T*R"]
    for source, ss, df, ms in rows:
        _close(result.anova.loc[source, "SS"], ss)
        assert result.anova.loc[source, "df"] == int(df)
        _close(result.anova.loc[source, "MS"], ms)
    ms = re.search(rf"R\s+4\s+{NUM}\s+{NUM}", _section(reference, "READER ANOVAs", "Variance component"))
    _close(result.ms_r_by_treatment.iloc[0], ms.group(1))
    _close(result.ms_r_by_treatment.iloc[1], ms.group(2))


def test_variance_components(result: ORHResult, reference: str) -> None:
    block = _section(reference, "Obuchowski-Rockette variance component", "Corresponding DBM")
    ours = {"Var(R)": result.var_r, "Var(T*R)": result.var_tr, "COV1": result.cov1, "COV2": result.cov2,
            "COV3": result.cov3, "Var(Error)": result.var_error}
    found = 0
    for name, value in ours.items():
        m = re.search(rf"^\s*{re.escape(name)}\s+{NUM}(?:\s+{NUM})?\s*$", block, flags=re.M)
        _close(value, m.group(1))
        found += 1
        if m.group(2):
            _close(result.correlations[f"r{name[-1]}"], m.group(2))
    assert found == 6
    dbm = _section(reference, "Corresponding DBM", "Analysis 1")
    for name in ("Var(R)", "Var(C)", "Var(T*R)", "Var(T*C)", "Var(R*C)"):
        _close(result.dbm[name], re.search(rf"^\s*{re.escape(name)}\s+{NUM}\s*$", dbm, flags=re.M).group(1))
    _close(result.dbm["Var(T*R*C)+Var(Error)"], re.search(rf"Var\(T\*R\*C\) \+ Var\(Error\)\s+{NUM}", dbm).group(1))


def _check_difference(row: pd.Series, line: re.Match, has_df: bool) -> None:
    values = list(line.groups())
    _close(row["estimate"], values.pop(0))
    _close(row["se"], values.pop(0))
    if has_df:
        _close(row["df"], values.pop(0))
    stat_key = "t" if "t" in row else "z"
    _close(row[stat_key], values.pop(0))
    _close(row["p"], values.pop(0))
    _close(row["ci_lower"], values.pop(0))
    _close(row["ci_upper"], values.pop(0))


def test_analysis_1_random_readers_random_cases(result: ORHResult, reference: str) -> None:
    block = _section(reference, "Analysis 1 (OR Analysis)", "Analysis 2 (OR Analysis)")
    a = result.random_readers_random_cases
    m = re.search(rf"Treatment\s+1\s+{NUM}\s+{NUM}\s+{NUM}\s*\n\s*Error term\s+{NUM}\s+{NUM}", block)
    ms_t, f, p, ddf, error_ms = m.groups()
    _close(result.anova.loc["T", "MS"], ms_t)
    _close(a.global_test["statistic"], f)
    _close(a.global_test["p"], p)
    _close(a.global_test["df2"], ddf)
    _close(a.global_test["error_term"], error_ms)
    line = re.search(rf"1 - 2\s+{NUM}\s+{NUM}\s+{NUM}\s+{NUM}\s+{NUM}\s+\(\s*{NUM}\s*,\s*{NUM}\s*\)", block)
    _check_difference(a.differences.iloc[0], line, has_df=True)
    rows = re.findall(rf"^\s+([12])\s+{NUM}\s+{NUM}\s+{NUM}\s+\({NUM} , {NUM}\)\s+{NUM}\s*$", block, flags=re.M)
    assert len(rows) == 2
    for trt, auc, se, df, lo, hi, cov2 in rows:
        row = a.single_treatment.iloc[int(trt) - 1]
        for key, value in zip(("fom", "se", "df", "ci_lower", "ci_upper", "cov2"), (auc, se, df, lo, hi, cov2)):
            _close(row[key], value)


def test_analysis_2_fixed_readers_random_cases(result: ORHResult, reference: str) -> None:
    block = _section(reference, "Analysis 2 (OR Analysis)", "Analysis 3 (OR Analysis)")
    a = result.fixed_readers_random_cases
    x2, df, p = re.search(rf"^\s+{NUM}\s+(\d+)\s+{NUM}\s*$", block, flags=re.M).groups()
    _close(a.global_test["statistic"], x2)
    assert a.global_test["df1"] == int(df)
    _close(a.global_test["p"], p)
    line = re.search(rf"1 - 2\s+{NUM}\s+{NUM}\s+{NUM}\s+{NUM}\s+\(\s*{NUM}\s*,\s*{NUM}\s*\)", block)
    _check_difference(a.differences.iloc[0], line, has_df=False)
    rows = re.findall(rf"^\s+([12])\s+{NUM}\s+{NUM}\s+\({NUM} , {NUM}\)\s*$", block, flags=re.M)
    assert len(rows) == 2
    for trt, auc, se, lo, hi in rows:
        row = a.single_treatment.iloc[int(trt) - 1]
        for key, value in zip(("fom", "se", "ci_lower", "ci_upper"), (auc, se, lo, hi)):
            _close(row[key], value)
    comps = re.findall(rf"^\s+([12])\s+{NUM}\s+{NUM}\s*$", _section(block, "Treatment  Var(Error)", "StdErr"),
                       flags=re.M)
    assert len(comps) == 2
    for trt, var, cov2 in comps:
        _close(result.var_error_by_treatment.iloc[int(trt) - 1], var)
        _close(result.cov2_by_treatment.iloc[int(trt) - 1], cov2)
    readers = re.findall(rf"^\s+(\d)\s+1 - 2\s+{NUM}\s+{NUM}\s+{NUM}\s+{NUM}\s+\(\s*{NUM}\s*,\s*{NUM}\s*\)",
                         block, flags=re.M)
    assert len(readers) == 5
    for reader, *values in readers:
        row = a.single_reader.iloc[int(reader) - 1]
        for key, value in zip(("estimate", "se", "z", "p", "ci_lower", "ci_upper"), values):
            _close(row[key], value)
    comps = re.findall(rf"^\s+(\d)\s+{NUM}\s+{NUM}\s*$", _section(block, "Reader  Var(Error)", "StdErr"), flags=re.M)
    assert len(comps) == 5
    for reader, var, cov1 in comps:
        _close(result.var_error_by_reader.iloc[int(reader) - 1], var)
        _close(result.cov1_by_reader.iloc[int(reader) - 1], cov1)


def test_analysis_3_random_readers_fixed_cases(result: ORHResult, reference: str) -> None:
    block = _section(reference, "Analysis 3 (OR Analysis)", "REFERENCES")
    a = result.random_readers_fixed_cases
    ms_t, f, p = re.search(rf"Treatment\s+1\s+{NUM}\s+{NUM}\s+{NUM}", block).groups()
    _close(result.anova.loc["T", "MS"], ms_t)
    _close(a.global_test["statistic"], f)
    _close(a.global_test["p"], p)
    _close(a.global_test["error_term"], re.search(rf"T\*R\s+4\s+{NUM}", block).group(1))
    line = re.search(rf"1 - 2\s+{NUM}\s+{NUM}\s+{NUM}\s+{NUM}\s+{NUM}\s+\(\s*{NUM}\s*,\s*{NUM}\s*\)", block)
    _check_difference(a.differences.iloc[0], line, has_df=True)
    rows = re.findall(rf"^\s+([12])\s+{NUM}\s+{NUM}\s+{NUM}\s+(\d+)\s+\({NUM} , {NUM}\)\s*$", block, flags=re.M)
    assert len(rows) == 2
    for trt, auc, ms_r, se, df, lo, hi in rows:
        row = a.single_treatment.iloc[int(trt) - 1]
        for key, value in zip(("fom", "ms_r", "se", "df", "ci_lower", "ci_upper"), (auc, ms_r, se, df, lo, hi)):
            _close(row[key], value)


def test_key_figures_from_readme(result: ORHResult) -> None:
    """The README's headline numbers, to 4 decimals or better."""
    a = result.random_readers_random_cases
    np.testing.assert_allclose(result.treatment_means.to_numpy(), [0.89703704, 0.94083736], atol=5e-9)
    np.testing.assert_allclose([result.var_r, result.var_tr, result.cov1, result.cov2, result.cov3,
                                result.var_error],
                               [0.00153500, 0.00020040, 0.00034661, 0.00034407, 0.00023903, 0.00080229], atol=5e-9)
    assert round(a.global_test["statistic"], 2) == 4.46 and round(a.global_test["df2"], 2) == 15.26
    assert round(a.global_test["p"], 4) == 0.0517
    assert round(a.differences.loc[0, "ci_lower"], 5) == -0.08796
    assert round(a.differences.loc[0, "ci_upper"], 5) == 0.00036


def test_generic_fom_matches_fast_jackknife(shared_data: Path) -> None:
    """The pluggable path (a plain function, brute-force jackknife) gives the same analysis as the fast AUC."""
    from analysis.mrmc import AUC, GenericFOM
    frame = pd.read_csv(shared_data / "mrmc_vandyke" / "vandyke_ratings.csv")
    fast = orh(frame, fom=AUC())
    slow = orh(frame, fom=GenericFOM(AUC().__call__, name="AUC"))
    np.testing.assert_allclose(slow.covariance, fast.covariance, atol=1e-14)
    assert slow.random_readers_random_cases.global_test["p"] == pytest.approx(
        fast.random_readers_random_cases.global_test["p"], abs=1e-12)


def test_accuracy_fom_and_one_reader(shared_data: Path) -> None:
    frame = pd.read_csv(shared_data / "mrmc_vandyke" / "vandyke_ratings.csv")
    frame["rating"] = (frame["rating"] >= 3).astype(float)
    res = orh(frame, fom="label_accuracy")
    direct = frame.assign(ok=frame["rating"] == frame["truth"]).groupby(["modality", "reader"])["ok"].mean()
    np.testing.assert_allclose(res.fom.to_numpy().ravel(), direct.to_numpy(), atol=1e-12)
    one = orh(frame[frame["reader"] == 0], fom="accuracy")
    assert np.isnan(one.random_readers_random_cases.global_test["p"])
    assert np.isfinite(one.fixed_readers_random_cases.global_test["p"])
