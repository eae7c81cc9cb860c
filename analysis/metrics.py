"""Per-rater metrics: the paper's accuracy, sensitivity, specificity, F1, AUC, and reading time.

Definitions (the paper, CXR-LT 2024 Task 2 reader study):
- per-class accuracy = the share of the cases *of that class* the rater labelled correctly (TP / (TP + FN));
  the figure caption's "N = 6" is the number of cases of a class. ``accuracy="label"`` switches to (TP+TN)/N.
- accuracy = per-class accuracy macro-averaged over the classes where it is defined (classes with ≥ 1 positive).
- sensitivity = TP/(TP+FN), specificity = TN/(TN+FP), F1 = 2TP/(2TP+FP+FN), per class, macro-averaged likewise.

Every count takes optional case weights, so the bootstrap reuses the same code with resampling weights.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.data import AI, Study
from analysis.mrmc import _auc_parts

ACCURACY_DEFINITIONS = ("recall", "label")


def safe_divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num/den elementwise, NaN where den == 0 (no warnings)."""
    num, den = np.broadcast_arrays(np.asarray(num, float), np.asarray(den, float))
    return np.divide(num, den, out=np.full(num.shape, np.nan), where=den != 0)


def nanmean(values: np.ndarray, axis: int = -1) -> np.ndarray:
    """Mean ignoring NaN; NaN where all are NaN (no warnings)."""
    finite = np.isfinite(values)
    return safe_divide(np.where(finite, values, 0).sum(axis=axis), finite.sum(axis=axis))


def indicator_arrays(answers: np.ndarray, truth: np.ndarray) -> dict[str, np.ndarray]:
    """0/1 float indicators of TP, FP, FN, TN, shape of ``answers`` (…, cases, classes); unknowns are all 0."""
    known = ~np.isnan(answers) & ~np.isnan(truth)
    a, t = answers == 1, truth == 1
    return {"tp": (known & a & t).astype(float), "fp": (known & a & ~t).astype(float),
            "fn": (known & ~a & t).astype(float), "tn": (known & ~a & ~t).astype(float)}


def counts(answers: np.ndarray, truth: np.ndarray, weights: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Confusion counts per class. answers (R, C, K), truth (C, K), weights (C,) or (B, C) -> (R, K) or (B, R, K)."""
    ind = indicator_arrays(answers, truth)
    if weights is None:
        return {k: v.sum(axis=-2) for k, v in ind.items()}
    if weights.ndim == 1:
        return {k: np.einsum("c,rck->rk", weights, v) for k, v in ind.items()}
    return {k: np.einsum("bc,rck->brk", weights, v) for k, v in ind.items()}


def rates(c: dict[str, np.ndarray], accuracy: str = "recall") -> dict[str, np.ndarray]:
    """Per-class rates from counts (any leading shape)."""
    tp, fp, fn, tn = c["tp"], c["fp"], c["fn"], c["tn"]
    sens = safe_divide(tp, tp + fn)
    out = {"sensitivity": sens, "specificity": safe_divide(tn, tn + fp), "f1": safe_divide(2 * tp, 2 * tp + fp + fn),
           "label_accuracy": safe_divide(tp + tn, tp + fp + fn + tn)}
    out["accuracy"] = sens if accuracy == "recall" else out["label_accuracy"]
    return out


def macro(c: dict[str, np.ndarray], accuracy: str = "recall") -> dict[str, np.ndarray]:
    return {k: nanmean(v) for k, v in rates(c, accuracy).items()}


def per_class_table(study: Study, accuracy: str = "recall") -> pd.DataFrame:
    """Long table: rater × class with counts, accuracy, sensitivity, specificity, F1 (and AI AUC)."""
    c = counts(study.answers, study.truth)
    r = rates(c, accuracy)
    auc = rater_auc_per_class(study)
    rows = []
    for i, rater in enumerate(study.raters):
        for k, name in enumerate(study.classes):
            row = {"rater": rater.label, "reader": rater.reader, "arm": rater.arm, "class": name,
                   "n_positive": int(c["tp"][i, k] + c["fn"][i, k]), "n_negative": int(c["tn"][i, k] + c["fp"][i, k])}
            row.update({m: int(c[m][i, k]) for m in ("tp", "fp", "fn", "tn")})
            row.update({m: float(r[m][i, k]) for m in ("accuracy", "sensitivity", "specificity", "f1",
                                                       "label_accuracy")})
            row["auc"] = float(auc[i, k])
            rows.append(row)
    return pd.DataFrame(rows)


def rater_auc_per_class(study: Study) -> np.ndarray:
    """(raters, classes) trapezoidal AUC: readers' from their ``score`` ratings (NaN without ratings: a 0/1 answer
    gives no ROC curve), the AI's from its probabilities; NaN where a class lacks positives or negatives."""
    out = np.full((len(study.raters), len(study.classes)), np.nan)
    ai = ai_auc_per_class(study)
    for i, rater in enumerate(study.raters):
        if rater.reader == AI:
            out[i] = ai if ai is not None else np.nan
        elif study.scores is not None:
            for k in range(len(study.classes)):
                keep = ~np.isnan(study.scores[i, :, k])
                out[i, k] = _auc_parts(study.scores[i, keep, k], study.truth[keep, k])[0]
    return out


def ai_auc_per_class(study: Study) -> np.ndarray | None:
    """Trapezoidal AUC of the AI probability per class (NaN where a class lacks positives or negatives)."""
    if study.ai_probability is None:
        return None
    out = []
    for k in range(len(study.classes)):
        keep = ~np.isnan(study.ai_probability[:, k])
        out.append(_auc_parts(study.ai_probability[keep, k], study.truth[keep, k])[0])
    return np.asarray(out, dtype=float)


def timing(times: np.ndarray) -> dict[str, float]:
    """Median, IQR, mean and total hours of per-case seconds (NaN ignored)."""
    t = times[np.isfinite(times)]
    if t.size == 0:
        return {"n_timed": 0, "median_s": np.nan, "q1_s": np.nan, "q3_s": np.nan, "mean_s": np.nan,
                "total_h": np.nan}
    q1, med, q3 = np.percentile(t, [25, 50, 75])
    return {"n_timed": int(t.size), "median_s": float(med), "q1_s": float(q1), "q3_s": float(q3),
            "mean_s": float(t.mean()), "total_h": float(t.sum() / 3600)}


def summary_table(study: Study, accuracy: str = "recall") -> pd.DataFrame:
    """One row per rater (reader × arm, and the AI alone): macro metrics, cases read and time."""
    m = macro(counts(study.answers, study.truth), accuracy)
    read = (~np.isnan(study.answers).all(axis=2)).sum(axis=1)
    defined = np.isfinite(rates(counts(study.answers, study.truth), accuracy)["accuracy"]).sum(axis=1)
    auc = nanmean(rater_auc_per_class(study))
    rows = []
    for i, rater in enumerate(study.raters):
        row = {"rater": rater.label, "reader": rater.reader, "arm": rater.arm, "cases_read": int(read[i]),
               "classes_scored": int(defined[i])}
        row.update({k: float(v[i]) for k, v in m.items()})
        row["auc_macro"] = float(auc[i])
        row.update(timing(study.times[i]))
        rows.append(row)
    return pd.DataFrame(rows)


def speedup_table(study: Study) -> pd.DataFrame:
    """Per reader: time unaided vs AI-aided on the cases timed in both arms; ratio > 1 = faster with the AI."""
    rows = []
    for reader in study.readers:
        iu, ia = study.rater_index(reader, "unaided"), study.rater_index(reader, "ai_aided")
        if iu is None or ia is None:
            continue
        both = np.isfinite(study.times[iu]) & np.isfinite(study.times[ia])
        tu, ta = study.times[iu][both], study.times[ia][both]
        row = {"reader": reader, "paired_cases": int(both.sum()),
               "unaided_total_h": float(tu.sum() / 3600), "aided_total_h": float(ta.sum() / 3600),
               "speedup_total": float(safe_divide(tu.sum(), ta.sum())),
               "speedup_median": float(safe_divide(np.median(tu), np.median(ta))) if both.any() else np.nan}
        ai = study.ai_rater
        if ai is not None and np.isfinite(study.times[ai]).any():
            with_ai = both & np.isfinite(study.times[ai])
            row["ai_speedup_vs_unaided"] = float(safe_divide(study.times[iu][with_ai].sum(),
                                                             study.times[ai][with_ai].sum()))
        rows.append(row)
    return pd.DataFrame(rows)


def class_change_table(study: Study, accuracy: str = "recall") -> pd.DataFrame:
    """Per reader and class: aided − unaided per-class accuracy, on the cases read in both arms; largest gains first."""
    rows = []
    for reader in study.readers:
        iu, ia = study.rater_index(reader, "unaided"), study.rater_index(reader, "ai_aided")
        if iu is None or ia is None:
            continue
        both = ~np.isnan(study.answers[iu]).all(axis=1) & ~np.isnan(study.answers[ia]).all(axis=1)
        pair = study.answers[[iu, ia]][:, both]
        r = rates(counts(pair, study.truth[both]), accuracy)["accuracy"]
        n_pos = np.nansum(study.truth[both] == 1, axis=0)
        for k, name in enumerate(study.classes):
            rows.append({"reader": reader, "class": name, "n_positive": int(n_pos[k]), "unaided": r[0, k],
                         "ai_aided": r[1, k], "change": r[1, k] - r[0, k]})
    table = pd.DataFrame(rows, columns=["reader", "class", "n_positive", "unaided", "ai_aided", "change"])
    return table.sort_values(["reader", "change"], ascending=[True, False], na_position="last").reset_index(drop=True)
