"""Obuchowski–Rockette (OR) multi-reader multi-case analysis with Hillis' denominator degrees of freedom.

The figure of merit (FOM) of each treatment (modality, arm) × reader is computed on all cases; its error covariance
matrix is estimated by the case jackknife. From the treatment × reader ANOVA of the FOMs and the jackknife
covariances (Var(Error), Cov1: same reader / different treatment, Cov2: different reader / same treatment,
Cov3: different reader and treatment) the three analyses of the Iowa OR-DBM MRMC program follow:

1. random readers and random cases (Hillis 2007 ``ddf_H``),
2. fixed readers, random cases (chi-square / z tests),
3. random readers, fixed cases (treatment × reader ANOVA).

References: Obuchowski & Rockette 1995; Hillis et al. 2005; Hillis 2007; Hillis, Berbaum & Metz 2008.
Validated against the OR-DBM MRMC 2.51 output on the Van Dyke data (tests/test_mrmc_reference.py).

Figures of merit are pluggable: any ``FigureOfMerit`` maps ``scores`` and ``truth`` of shape (cases, classes)
to one number (classes = 1 for a single-finding study; several classes are macro-averaged).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np
import pandas as pd
from scipy import stats


class FigureOfMerit(Protocol):
    name: str

    def __call__(self, scores: np.ndarray, truth: np.ndarray) -> float: ...

    def jackknife(self, scores: np.ndarray, truth: np.ndarray) -> np.ndarray: ...


# --------------------------------------------------------------------------------------------------------------------
# Figures of merit: scores and truth are (cases, classes); NaN truth = not assessed for that class (ignored).
# --------------------------------------------------------------------------------------------------------------------

def _nanmean_rows(values: np.ndarray) -> np.ndarray:
    """Mean over the last axis ignoring NaN; NaN (no warning) where everything is NaN."""
    finite = np.isfinite(values)
    count = finite.sum(axis=-1)
    total = np.where(finite, values, 0.0).sum(axis=-1)
    return np.divide(total, count, out=np.full(total.shape, np.nan), where=count > 0)


def _auc_parts(scores: np.ndarray, truth: np.ndarray) -> tuple[float, np.ndarray]:
    """Trapezoidal (Wilcoxon) AUC of one class and its leave-one-case-out values (NaN where undefined)."""
    pos, neg = truth == 1, truth == 0
    x1, x0 = scores[pos], scores[neg]
    n1, n0 = len(x1), len(x0)
    jack = np.full(len(scores), np.nan)
    if n1 == 0 or n0 == 0:
        return np.nan, jack
    psi = (x1[:, None] > x0[None, :]).astype(float) + 0.5 * (x1[:, None] == x0[None, :])
    total = psi.sum()
    jack[~pos & ~neg] = total / (n1 * n0)
    if n1 > 1:
        jack[pos] = (total - psi.sum(axis=1)) / ((n1 - 1) * n0)
    if n0 > 1:
        jack[neg] = (total - psi.sum(axis=0)) / (n1 * (n0 - 1))
    return total / (n1 * n0), jack


@dataclass(frozen=True)
class AUC:
    """Trapezoidal (Wilcoxon) area under the ROC curve, macro-averaged over classes where both truths occur."""
    name: str = "AUC"

    def __call__(self, scores: np.ndarray, truth: np.ndarray) -> float:
        values = [_auc_parts(scores[:, k], truth[:, k])[0] for k in range(truth.shape[1])]
        return float(_nanmean_rows(np.asarray(values, dtype=float)))

    def jackknife(self, scores: np.ndarray, truth: np.ndarray) -> np.ndarray:
        columns = [_auc_parts(scores[:, k], truth[:, k])[1] for k in range(truth.shape[1])]
        return _nanmean_rows(np.stack(columns, axis=1))


def _count_jackknife(hit: np.ndarray, eligible: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-class rate hit/eligible on all cases (K,) and leaving each case out (cases, K); NaN where 0/0."""
    hits, n = hit.sum(axis=0), eligible.sum(axis=0)
    full = np.divide(hits, n, out=np.full(hits.shape, np.nan, dtype=float), where=n > 0)
    jh, jn = hits[None, :] - hit, n[None, :] - eligible
    jack = np.divide(jh, jn, out=np.full(jh.shape, np.nan, dtype=float), where=jn > 0)
    return full, jack


@dataclass(frozen=True)
class Accuracy:
    """Binary-decision accuracy, macro-averaged over classes.

    ``per_class="recall"`` (the paper's per-class accuracy: the share of the cases *of each class* read correctly,
    i.e. sensitivity) or ``"label"`` ((TP + TN) / N per class). Scores are thresholded at ``threshold``
    (a reader's 0/1 answers pass unchanged with the default 0.5).
    """
    per_class: str = "recall"
    threshold: float = 0.5
    name: str = "accuracy"

    def _hits(self, scores: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        known = np.isfinite(truth) & np.isfinite(scores)
        answer = scores >= self.threshold
        correct = known & (answer == (truth == 1))
        eligible = known & (truth == 1) if self.per_class == "recall" else known
        return (correct & eligible).astype(float), eligible.astype(float)

    def __call__(self, scores: np.ndarray, truth: np.ndarray) -> float:
        full, _ = _count_jackknife(*self._hits(scores, truth))
        return float(_nanmean_rows(full))

    def jackknife(self, scores: np.ndarray, truth: np.ndarray) -> np.ndarray:
        _, jack = _count_jackknife(*self._hits(scores, truth))
        return _nanmean_rows(jack)


@dataclass(frozen=True)
class GenericFOM:
    """Wrap any ``fn(scores, truth) -> float``; the jackknife recomputes it leaving each case out."""
    fn: Callable[[np.ndarray, np.ndarray], float]
    name: str = "FOM"

    def __call__(self, scores: np.ndarray, truth: np.ndarray) -> float:
        return float(self.fn(scores, truth))

    def jackknife(self, scores: np.ndarray, truth: np.ndarray) -> np.ndarray:
        keep = np.ones(len(scores), dtype=bool)
        out = np.empty(len(scores))
        for k in range(len(scores)):
            keep[k] = False
            out[k] = self.fn(scores[keep], truth[keep])
            keep[k] = True
        return out


Stats = dict[str, float]
Arrays = dict[str, np.ndarray]

FOMS: dict[str, FigureOfMerit] = {"auc": AUC(), "accuracy": Accuracy(), "label_accuracy": Accuracy(per_class="label")}


# --------------------------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------------------------

@dataclass
class Analysis:
    """One of the three OR analyses."""
    name: str
    global_test: dict[str, float]          # statistic, df1, df2 (inf for chi-square), p
    differences: pd.DataFrame             # treatment pairs: estimate, se, df, t/z, p, ci_lower, ci_upper
    single_treatment: pd.DataFrame        # per treatment: fom, se, df, ci_lower, ci_upper (+ components)
    single_reader: pd.DataFrame | None = None  # analysis 2 only: per reader treatment differences


@dataclass
class ORHResult:
    fom_name: str
    treatments: list[str]
    readers: list[str]
    n_cases: int
    n_positive: int | None
    n_negative: int | None
    fom: pd.DataFrame                     # treatments × readers
    treatment_means: pd.Series
    anova: pd.DataFrame                   # T, R, T*R: SS, df, MS
    ms_r_by_treatment: pd.Series
    var_r: float
    var_tr: float
    cov1: float
    cov2: float
    cov3: float
    var_error: float
    correlations: dict[str, float]
    dbm: dict[str, float]
    covariance: np.ndarray                # (t*r) × (t*r) jackknife covariance, treatment-major
    var_error_by_treatment: pd.Series
    cov2_by_treatment: pd.Series
    var_error_by_reader: pd.Series
    cov1_by_reader: pd.Series
    random_readers_random_cases: Analysis
    fixed_readers_random_cases: Analysis
    random_readers_fixed_cases: Analysis
    alpha: float = 0.05
    notes: list[str] = field(default_factory=list)

    def components(self) -> pd.DataFrame:
        rows = {"Var(R)": self.var_r, "Var(T*R)": self.var_tr, "Cov1": self.cov1, "Cov2": self.cov2,
                "Cov3": self.cov3, "Var(Error)": self.var_error}
        return pd.DataFrame({"estimate": rows, "correlation": {
            "Cov1": self.correlations["r1"], "Cov2": self.correlations["r2"], "Cov3": self.correlations["r3"]}})


# --------------------------------------------------------------------------------------------------------------------
# Core computation
# --------------------------------------------------------------------------------------------------------------------

def jackknife_foms(scores: np.ndarray, truth: np.ndarray, fom: FigureOfMerit) -> tuple[np.ndarray, np.ndarray]:
    """scores (t, r, c, K), truth (c, K) -> FOM (t, r) and leave-one-case-out FOMs (c, t, r)."""
    t, r = scores.shape[:2]
    theta = np.empty((t, r))
    jack = np.empty((scores.shape[2], t, r))
    for i in range(t):
        for j in range(r):
            theta[i, j] = fom(scores[i, j], truth)
            jack[:, i, j] = fom.jackknife(scores[i, j], truth)
    return theta, jack


def jackknife_covariance(jack: np.ndarray) -> np.ndarray:
    """(c-1)/c Σ_k (θ_(k) - mean)(θ_(k) - mean)' over the flattened treatment-major (t*r) FOMs."""
    c = jack.shape[0]
    flat = jack.reshape(c, -1)
    dev = flat - flat.mean(axis=0)
    return (c - 1) / c * dev.T @ dev


def _mean_where(matrix: np.ndarray, mask: np.ndarray) -> float:
    return float(matrix[mask].mean()) if mask.any() else 0.0


def covariance_components(cov: np.ndarray, t: int, r: int) -> dict[str, float]:
    """Average Var(Error), Cov1 (same reader), Cov2 (same treatment), Cov3 (neither) of a treatment-major matrix."""
    trt = np.repeat(np.arange(t), r)
    rdr = np.tile(np.arange(r), t)
    same_t, same_r = trt[:, None] == trt[None, :], rdr[:, None] == rdr[None, :]
    return {"var": _mean_where(cov, same_t & same_r), "cov1": _mean_where(cov, ~same_t & same_r),
            "cov2": _mean_where(cov, same_t & ~same_r), "cov3": _mean_where(cov, ~same_t & ~same_r)}


def _anova(theta: np.ndarray) -> dict[str, float]:
    t, r = theta.shape
    grand = theta.mean()
    mt, mr = theta.mean(axis=1), theta.mean(axis=0)
    ss_t = r * ((mt - grand) ** 2).sum()
    ss_r = t * ((mr - grand) ** 2).sum()
    ss_tr = ((theta - mt[:, None] - mr[None, :] + grand) ** 2).sum()
    df_t, df_r, df_tr = t - 1, r - 1, (t - 1) * (r - 1)
    return {"ss_t": ss_t, "ss_r": ss_r, "ss_tr": ss_tr, "df_t": df_t, "df_r": df_r, "df_tr": df_tr,
            "ms_t": _ratio(ss_t, df_t), "ms_r": _ratio(ss_r, df_r), "ms_tr": _ratio(ss_tr, df_tr)}


def _ratio(num: float, den: float) -> float:
    """num/den, NaN when den is 0 (never raises, never warns)."""
    return float(num / den) if den != 0 else float("nan")


def _t_ci(estimate: float, se: float, df: float, alpha: float) -> tuple[float, float, float, float]:
    """statistic, two-sided p and CI with Student t (normal when df is inf)."""
    if not np.isfinite(se) or se <= 0 or not df > 0:
        return float("nan"), float("nan"), float("nan"), float("nan")
    dist = stats.norm if np.isinf(df) else stats.t(df)
    q = dist.ppf(1 - alpha / 2)
    stat = estimate / se
    return stat, float(2 * dist.sf(abs(stat))), estimate - q * se, estimate + q * se


def _pairs(names: list[str]) -> list[tuple[int, int]]:
    return [(a, b) for a in range(len(names)) for b in range(a + 1, len(names))]


def _difference_table(theta: np.ndarray, names: list[str], var_diff: float, df: float, alpha: float,
                      stat_name: str) -> pd.DataFrame:
    means = theta.mean(axis=1)
    rows = []
    for a, b in _pairs(names):
        estimate = float(means[a] - means[b])
        se = float(np.sqrt(var_diff)) if var_diff >= 0 else float("nan")
        stat, p, lo, hi = _t_ci(estimate, se, df, alpha)
        rows.append({"comparison": f"{names[a]} - {names[b]}", "estimate": estimate, "se": se, "df": df,
                     stat_name: stat, "p": p, "ci_lower": lo, "ci_upper": hi})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------------------------------
# The three analyses
# --------------------------------------------------------------------------------------------------------------------

def _analysis_random_random(theta: np.ndarray, a: Stats, comp: Stats, per_trt: Arrays, names: list[str],
                            alpha: float) -> Analysis:
    t, r = theta.shape
    cov_diff = max(comp["cov2"] - comp["cov3"], 0.0)
    error_term = a["ms_tr"] + r * cov_diff
    ddf = _ratio(error_term ** 2, a["ms_tr"] ** 2 / a["df_tr"]) if a["df_tr"] > 0 else float("nan")
    if a["df_tr"] > 0 and a["ms_tr"] == 0:
        ddf = float("inf")
    f = _ratio(a["ms_t"], error_term)
    p = float(stats.f.sf(f, a["df_t"], ddf)) if np.isfinite(f) and ddf > 0 else float("nan")
    diffs = _difference_table(theta, names, 2 / r * error_term, ddf, alpha, "t")
    single = []
    for i, name in enumerate(names):
        ms_r, c2 = per_trt["ms_r"][i], max(per_trt["cov2"][i], 0.0)
        term = ms_r + r * c2
        se = float(np.sqrt(term / r))
        df = _ratio(term ** 2, ms_r ** 2 / (r - 1)) if r > 1 else float("nan")
        if r > 1 and ms_r == 0:
            df = float("inf")
        _, _, lo, hi = _t_ci(theta[i].mean(), se, df, alpha)
        single.append({"treatment": name, "fom": theta[i].mean(), "se": se, "df": df, "ci_lower": lo,
                       "ci_upper": hi, "ms_r": ms_r, "cov2": per_trt["cov2"][i]})
    return Analysis("random readers, random cases",
                    {"statistic": f, "df1": a["df_t"], "df2": ddf, "p": p, "error_term": error_term},
                    diffs, pd.DataFrame(single))


def _analysis_fixed_readers(theta: np.ndarray, a: Stats, comp: Stats, per_trt: Arrays, per_rdr: Arrays,
                            names: list[str], readers: list[str], alpha: float) -> Analysis:
    t, r = theta.shape
    term = comp["var"] - comp["cov1"] + (r - 1) * max(comp["cov2"] - comp["cov3"], 0.0)
    x2 = _ratio(a["df_t"] * a["ms_t"], term)
    p = float(stats.chi2.sf(x2, a["df_t"])) if np.isfinite(x2) and a["df_t"] > 0 else float("nan")
    diffs = _difference_table(theta, names, 2 / r * term, float("inf"), alpha, "z")
    single = []
    for i, name in enumerate(names):
        v, c2 = per_trt["var"][i], per_trt["cov2"][i]
        se = float(np.sqrt(max((v + (r - 1) * max(c2, 0.0)) / r, 0.0)))
        _, _, lo, hi = _t_ci(theta[i].mean(), se, float("inf"), alpha)
        single.append({"treatment": name, "fom": theta[i].mean(), "se": se, "ci_lower": lo, "ci_upper": hi,
                       "var_error": v, "cov2": c2})
    by_reader = []
    for j, reader in enumerate(readers):
        v, c1 = per_rdr["var"][j], per_rdr["cov1"][j]
        se = float(np.sqrt(2 * (v - c1))) if v - c1 > 0 else float("nan")
        for a_, b_ in _pairs(names):
            estimate = float(theta[a_, j] - theta[b_, j])
            z, pz, lo, hi = _t_ci(estimate, se, float("inf"), alpha)
            by_reader.append({"reader": reader, "comparison": f"{names[a_]} - {names[b_]}", "estimate": estimate,
                              "se": se, "z": z, "p": pz, "ci_lower": lo, "ci_upper": hi,
                              "var_error": v, "cov1": c1})
    return Analysis("fixed readers, random cases",
                    {"statistic": x2, "df1": a["df_t"], "df2": float("inf"), "p": p, "error_term": term},
                    diffs, pd.DataFrame(single), pd.DataFrame(by_reader))


def _analysis_fixed_cases(theta: np.ndarray, a: Stats, per_trt: Arrays, names: list[str], alpha: float) -> Analysis:
    t, r = theta.shape
    f = _ratio(a["ms_t"], a["ms_tr"])
    p = float(stats.f.sf(f, a["df_t"], a["df_tr"])) if np.isfinite(f) and a["df_tr"] > 0 else float("nan")
    diffs = _difference_table(theta, names, 2 / r * a["ms_tr"], a["df_tr"], alpha, "t")
    single = []
    for i, name in enumerate(names):
        ms_r = per_trt["ms_r"][i]
        se = float(np.sqrt(ms_r / r)) if np.isfinite(ms_r) else float("nan")
        _, _, lo, hi = _t_ci(theta[i].mean(), se, r - 1, alpha)
        single.append({"treatment": name, "fom": theta[i].mean(), "ms_r": ms_r, "se": se, "df": r - 1,
                       "ci_lower": lo, "ci_upper": hi})
    return Analysis("random readers, fixed cases",
                    {"statistic": f, "df1": a["df_t"], "df2": a["df_tr"], "p": p, "error_term": a["ms_tr"]},
                    diffs, pd.DataFrame(single))


def _per_treatment(theta: np.ndarray, cov: np.ndarray) -> dict[str, np.ndarray]:
    t, r = theta.shape
    out = {"ms_r": [], "var": [], "cov2": []}
    for i in range(t):
        block = cov[i * r:(i + 1) * r, i * r:(i + 1) * r]
        off = ~np.eye(r, dtype=bool)
        out["ms_r"].append(_ratio(((theta[i] - theta[i].mean()) ** 2).sum(), r - 1))
        out["var"].append(float(np.diag(block).mean()))
        out["cov2"].append(_mean_where(block, off))
    return {k: np.asarray(v, dtype=float) for k, v in out.items()}


def _per_reader(cov: np.ndarray, t: int, r: int) -> dict[str, np.ndarray]:
    out = {"var": [], "cov1": []}
    for j in range(r):
        idx = np.arange(t) * r + j
        block = cov[np.ix_(idx, idx)]
        out["var"].append(float(np.diag(block).mean()))
        out["cov1"].append(_mean_where(block, ~np.eye(t, dtype=bool)))
    return {k: np.asarray(v, dtype=float) for k, v in out.items()}


def orh_from_arrays(scores: np.ndarray, truth: np.ndarray, fom: FigureOfMerit | str = "auc",
                    treatments: list[str] | None = None, readers: list[str] | None = None,
                    alpha: float = 0.05) -> ORHResult:
    """OR analysis of ``scores`` (treatments, readers, cases[, classes]) with ``truth`` (cases[, classes])."""
    fom = FOMS[fom] if isinstance(fom, str) else fom
    scores = np.asarray(scores, dtype=float)
    truth = np.asarray(truth, dtype=float)
    if scores.ndim == 3:
        scores, truth = scores[..., None], truth.reshape(-1, 1)
    t, r, c, _ = scores.shape
    if t < 2:
        raise ValueError("the OR analysis compares treatments: at least 2 are needed")
    treatments = [str(x) for x in (treatments or range(t))]
    readers = [str(x) for x in (readers or range(r))]
    theta, jack = jackknife_foms(scores, truth, fom)
    cov = jackknife_covariance(jack)
    comp = covariance_components(cov, t, r)
    a = _anova(theta)
    per_trt, per_rdr = _per_treatment(theta, cov), _per_reader(cov, t, r)
    var_tr = a["ms_tr"] - comp["var"] + comp["cov1"] + comp["cov2"] - comp["cov3"]
    var_r = (a["ms_r"] - comp["var"] - (t - 1) * comp["cov1"] + comp["cov2"] + (t - 1) * comp["cov3"] - var_tr) / t
    notes = []
    if r < 2:
        notes.append("only one reader: the random-reader analyses (1 and 3) are undefined (NaN)")
    single_class = truth.shape[1] == 1
    return ORHResult(
        fom_name=fom.name, treatments=treatments, readers=readers, n_cases=c,
        n_positive=int((truth[:, 0] == 1).sum()) if single_class else None,
        n_negative=int((truth[:, 0] == 0).sum()) if single_class else None,
        fom=pd.DataFrame(theta, index=treatments, columns=readers),
        treatment_means=pd.Series(theta.mean(axis=1), index=treatments),
        anova=pd.DataFrame({"SS": [a["ss_t"], a["ss_r"], a["ss_tr"]], "df": [a["df_t"], a["df_r"], a["df_tr"]],
                            "MS": [a["ms_t"], a["ms_r"], a["ms_tr"]]}, index=["T", "R", "T*R"]),
        ms_r_by_treatment=pd.Series(per_trt["ms_r"], index=treatments),
        var_r=float(var_r), var_tr=float(var_tr), cov1=comp["cov1"], cov2=comp["cov2"], cov3=comp["cov3"],
        var_error=comp["var"],
        correlations={f"r{k}": _ratio(comp[f"cov{k}"], comp["var"]) for k in (1, 2, 3)},
        dbm={"Var(R)": float(var_r), "Var(C)": comp["cov3"] * c, "Var(T*R)": float(var_tr),
             "Var(T*C)": (comp["cov2"] - comp["cov3"]) * c, "Var(R*C)": (comp["cov1"] - comp["cov3"]) * c,
             "Var(T*R*C)+Var(Error)": (comp["var"] - comp["cov1"] - comp["cov2"] + comp["cov3"]) * c},
        covariance=cov,
        var_error_by_treatment=pd.Series(per_trt["var"], index=treatments),
        cov2_by_treatment=pd.Series(per_trt["cov2"], index=treatments),
        var_error_by_reader=pd.Series(per_rdr["var"], index=readers),
        cov1_by_reader=pd.Series(per_rdr["cov1"], index=readers),
        random_readers_random_cases=_analysis_random_random(theta, a, comp, per_trt, treatments, alpha),
        fixed_readers_random_cases=_analysis_fixed_readers(theta, a, comp, per_trt, per_rdr, treatments, readers,
                                                           alpha),
        random_readers_fixed_cases=_analysis_fixed_cases(theta, a, per_trt, treatments, alpha),
        alpha=alpha, notes=notes)


def ratings_to_arrays(frame: pd.DataFrame, reader: str = "reader", modality: str = "modality", case: str = "case",
                      truth: str = "truth", rating: str = "rating", klass: str | None = None
                      ) -> tuple[np.ndarray, np.ndarray, list, list, list, list[str]]:
    """Long ratings -> scores (t, r, c, K), truth (c, K), treatment/reader/case names and notes.

    Only cases read by every reader in every treatment enter (the OR jackknife needs a fully crossed design);
    the cases left out are counted in the notes, never dropped silently.
    """
    notes: list[str] = []
    keys = [modality, reader, case] + ([klass] if klass else [])
    data = frame.copy()
    if klass is None:
        data["__class"] = "finding"
        klass = "__class"
    dup = data.duplicated([modality, reader, case, klass]).sum()
    if dup:
        raise ValueError(f"{dup} duplicate ratings for the same {keys}")
    treatments = sorted(data[modality].unique(), key=str)
    readers = sorted(data[reader].unique(), key=str)
    classes = sorted(data[klass].unique(), key=str)
    rated = data.dropna(subset=[rating]).groupby(case)[[modality, reader, klass]].apply(
        lambda g: len(g.drop_duplicates()))
    full = len(treatments) * len(readers) * len(classes)
    complete = sorted(rated.index[rated == full], key=str)
    all_cases = data[case].unique()
    if len(complete) < len(all_cases):
        notes.append(f"MRMC: {len(all_cases) - len(complete)} of {len(all_cases)} cases were not read by every "
                     f"reader in every arm and are left out of the MRMC analysis (fully crossed design needed)")
    data = data[data[case].isin(complete)]
    scores = (data.set_index([modality, reader, case, klass])[rating]
              .reindex(pd.MultiIndex.from_product([treatments, readers, complete, classes])).to_numpy(float)
              .reshape(len(treatments), len(readers), len(complete), len(classes)))
    tr = data.groupby([case, klass])[truth].first().reindex(
        pd.MultiIndex.from_product([complete, classes])).to_numpy(float).reshape(len(complete), len(classes))
    return scores, tr, treatments, readers, complete, notes


def orh(frame: pd.DataFrame, fom: FigureOfMerit | str = "auc", reader: str = "reader", modality: str = "modality",
        case: str = "case", truth: str = "truth", rating: str = "rating", klass: str | None = None,
        alpha: float = 0.05) -> ORHResult:
    """OR–Hillis analysis of a long ratings frame (reader × modality × case [× class]) with truth."""
    scores, tr, treatments, readers, cases, notes = ratings_to_arrays(frame, reader, modality, case, truth,
                                                                     rating, klass)
    if len(cases) < 2:
        raise ValueError("the OR analysis needs at least 2 cases read by every reader in every treatment")
    result = orh_from_arrays(scores, tr, fom, [str(t) for t in treatments], [str(r) for r in readers], alpha)
    result.notes = notes + result.notes
    return result


def summary_text(result: ORHResult, digits: int = 5) -> str:
    """A plain-text summary in the spirit of the OR-DBM MRMC output."""
    fmt = f"{{:.{digits}f}}"
    lines = [f"OR-Hillis MRMC analysis of {result.fom_name}: {len(result.treatments)} treatments, "
             f"{len(result.readers)} readers, {result.n_cases} cases"]
    for name, value in result.treatment_means.items():
        lines.append(f"  {name}: {fmt.format(value)}")
    for analysis in (result.random_readers_random_cases, result.fixed_readers_random_cases,
                     result.random_readers_fixed_cases):
        g = analysis.global_test
        lines.append(f"{analysis.name}: statistic {fmt.format(g['statistic'])} on ({g['df1']}, "
                     f"{fmt.format(g['df2'])}) df, p = {fmt.format(g['p'])}")
    return "\n".join(lines)
