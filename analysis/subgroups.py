"""Fairness view (macro accuracy per sex, race and age bin; the maximum gap) and accuracy by AI-uncertainty decile.

Cases without the demographic are left out of that attribute's analysis (the paper does the same) and counted in the
notes. Groups of size 0 are listed with n = 0 and no accuracy; groups smaller than ``min_group_size`` are shown but
left out of the maximum gap, and the notes say so.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from analysis.bootstrap import bootstrap_weights, percentile_ci
from analysis.data import Study
from analysis.metrics import counts, nanmean, rates

DEFAULT_AGE_EDGES = (0, 40, 60, 75, 200)


def age_labels(edges: tuple[float, ...] | list[float]) -> list[str]:
    edges = [float(e) for e in edges]
    if len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:])):
        raise ValueError(f"age bin edges must increase: {edges}")
    return [f"{edges[i]:g}-{edges[i + 1]:g}" for i in range(len(edges) - 1)]


def group_labels(study: Study, attribute: str, age_edges=DEFAULT_AGE_EDGES) -> tuple[pd.Series, list[str]]:
    """Per case: its group (NaN = unknown) and the list of groups (all age bins, even empty ones)."""
    values = study.case_info[attribute]
    if attribute != "age":
        groups = sorted(values.dropna().astype(str).unique())
        return values.astype(object).where(values.notna()), groups
    labels = age_labels(age_edges)
    binned = pd.cut(values, bins=[float(e) for e in age_edges], labels=labels, right=False)
    return binned.astype(object).where(binned.notna()), labels


@dataclass
class SubgroupResult:
    table: pd.DataFrame            # attribute, group, rater, n_cases, accuracy
    gaps: pd.DataFrame             # attribute, rater, max_gap, ci, groups compared
    notes: list[str] = field(default_factory=list)


def _group_accuracy(study: Study, mask: np.ndarray, weights: np.ndarray, accuracy: str) -> np.ndarray:
    """Macro accuracy (B, R) on the cases in ``mask`` under resampling weights (B, C)."""
    return nanmean(rates(counts(study.answers, study.truth, weights * mask), accuracy)["accuracy"])


def subgroup_analysis(study: Study, age_edges=DEFAULT_AGE_EDGES, accuracy: str = "recall", n_boot: int = 500,
                      seed: int = 0, min_group_size: int = 2, alpha: float = 0.05) -> SubgroupResult:
    rng = np.random.default_rng([seed, 2])
    weights = bootstrap_weights(len(study.cases), n_boot, rng)
    ones = np.ones((1, len(study.cases)))
    rows, gaps, notes = [], [], []
    for attribute in ("sex", "race", "age"):
        labels, groups = group_labels(study, attribute, age_edges)
        _attribute_notes(study, attribute, labels, notes)
        point, boot, sizes = {}, {}, {}
        for group in groups:
            mask = (labels == group).to_numpy()
            sizes[group] = int(mask.sum())
            point[group] = _group_accuracy(study, mask, ones, accuracy)[0]
            boot[group] = _group_accuracy(study, mask, weights, accuracy) if sizes[group] else None
            for i, rater in enumerate(study.raters):
                rows.append({"attribute": attribute, "group": group, "rater": rater.label, "reader": rater.reader,
                             "arm": rater.arm, "n_cases": sizes[group], "accuracy": float(point[group][i])})
            if sizes[group] == 0:
                notes.append(f"{attribute} group '{group}' has no cases: no accuracy, left out of the gap")
            elif sizes[group] < min_group_size:
                notes.append(f"{attribute} group '{group}' has {sizes[group]} case(s): accuracy shown but left out "
                             f"of the maximum gap (fewer than {min_group_size})")
        compared = [g for g in groups if sizes[g] >= min_group_size]
        gaps += _gap_rows(study, attribute, compared, point, boot, alpha)
    return SubgroupResult(pd.DataFrame(rows), pd.DataFrame(gaps), notes)


def _attribute_notes(study: Study, attribute: str, labels: pd.Series, notes: list[str]) -> None:
    missing = int(labels.isna().sum())
    raw_missing = int(study.case_info[attribute].isna().sum())
    if raw_missing:
        notes.append(f"{raw_missing} of {len(labels)} cases have no {attribute}: left out of the {attribute} "
                     "subgroup analysis")
    if missing > raw_missing:
        notes.append(f"{missing - raw_missing} cases have an age outside the bin edges: left out of the age analysis")


def _gap_rows(study: Study, attribute: str, compared: list[str], point: dict, boot: dict, alpha: float) -> list:
    rows = []
    for i, rater in enumerate(study.raters):
        values = {g: point[g][i] for g in compared if np.isfinite(point[g][i])}
        row = {"attribute": attribute, "rater": rater.label, "reader": rater.reader, "arm": rater.arm,
               "groups_compared": len(values), "max_gap": np.nan, "ci_lower": np.nan, "ci_upper": np.nan,
               "best_group": None, "worst_group": None}
        if len(values) >= 2:
            row["max_gap"] = max(values.values()) - min(values.values())
            row["best_group"] = max(values, key=values.get)
            row["worst_group"] = min(values, key=values.get)
            samples = np.stack([boot[g][:, i] for g in values], axis=1)
            spread = np.nanmax(samples, axis=1) - np.nanmin(samples, axis=1) if samples.size else np.array([])
            row["ci_lower"], row["ci_upper"], _ = percentile_ci(spread, alpha)
        rows.append(row)
    return rows


def uncertainty_deciles(study: Study, accuracy: str = "recall", n_bins: int = 10) -> tuple[pd.DataFrame, list[str]]:
    """Macro and label accuracy of each rater by decile of the case-level AI uncertainty (1 = least uncertain)."""
    notes: list[str] = []
    u = study.case_info["ai_uncertainty"]
    if u.notna().sum() < 2:
        return pd.DataFrame(), ["no AI uncertainty in the data: the uncertainty-decile analysis is not computed"]
    if u.isna().any():
        notes.append(f"{int(u.isna().sum())} cases have no AI uncertainty: left out of the decile analysis")
    ranks = u.rank(method="first")
    bins = pd.qcut(ranks, q=min(n_bins, int(u.notna().sum())), labels=False) + 1
    rows = []
    for b in sorted(bins.dropna().unique()):
        mask = (bins == b).to_numpy()
        r = rates(counts(study.answers, study.truth, mask.astype(float)), accuracy)
        for i, rater in enumerate(study.raters):
            rows.append({"decile": int(b), "n_cases": int(mask.sum()), "mean_uncertainty": float(u[mask].mean()),
                         "rater": rater.label, "reader": rater.reader, "arm": rater.arm,
                         "accuracy": float(nanmean(r["accuracy"][i])),
                         "label_accuracy": float(nanmean(r["label_accuracy"][i]))})
    return pd.DataFrame(rows), notes


def reading_order_check(study: Study) -> pd.DataFrame:
    """Spearman correlation of reading order with AI uncertainty per rater (negative = hard cases first)."""
    u = study.case_info["ai_uncertainty"].to_numpy(float)
    rows = []
    for i in study.human_raters:
        keep = np.isfinite(u) & np.isfinite(study.order[i])
        rho = stats.spearmanr(study.order[i][keep], u[keep])[0] if keep.sum() > 2 and np.ptp(u[keep]) > 0 \
            and np.ptp(study.order[i][keep]) > 0 else np.nan
        rows.append({"rater": study.raters[i].label, "cases": int(keep.sum()), "spearman_order_uncertainty": rho})
    return pd.DataFrame(rows)
