"""Paired case-resampling bootstrap: every rater is scored on the same resampled cases in each replicate.

Resampling is done with multinomial case weights (B × cases), so one matrix product gives the confusion counts of all
raters for all replicates. Confidence intervals are percentile intervals; ``p_boot`` is the two-sided share of
replicates on the other side of zero (a rough check, the MRMC analysis is the inferential test across readers).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.data import AI, Study
from analysis.metrics import counts, nanmean, rates, safe_divide


def bootstrap_weights(n_cases: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, n_cases) resampling counts: each row sums to n_cases."""
    return rng.multinomial(n_cases, np.full(n_cases, 1.0 / n_cases), size=n_boot).astype(float)


def percentile_ci(samples: np.ndarray, alpha: float = 0.05) -> tuple[float, float, int]:
    """Percentile interval over the finite replicates (NaN when fewer than 10 are finite)."""
    finite = samples[np.isfinite(samples)]
    if finite.size < 10:
        return np.nan, np.nan, int(finite.size)
    lo, hi = np.percentile(finite, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi), int(finite.size)


def p_boot(samples: np.ndarray) -> float:
    finite = samples[np.isfinite(samples)]
    if finite.size == 0:
        return np.nan
    return float(min(1.0, 2 * min((finite <= 0).mean(), (finite >= 0).mean())))


@dataclass
class Replicates:
    """Per-class rates of every rater in every replicate (B, R, K) and per-case times (B, R)."""
    per_class: dict[str, np.ndarray]
    macro: dict[str, np.ndarray]
    time_total: np.ndarray
    weights: np.ndarray


def replicate(study: Study, weights: np.ndarray, accuracy: str = "recall") -> Replicates:
    per_class = rates(counts(study.answers, study.truth, weights), accuracy)
    times = np.where(np.isfinite(study.times), study.times, 0.0)
    return Replicates(per_class, {k: nanmean(v) for k, v in per_class.items()}, weights @ times.T, weights)


def _metric_names(accuracy: str) -> tuple[str, ...]:
    """Macro metrics reported; with the paper's definition accuracy *is* sensitivity, so it is listed once."""
    return ("accuracy", "specificity", "f1") if accuracy == "recall" else ("accuracy", "sensitivity", "specificity",
                                                                           "f1")


def _row(comparison: str, metric: str, klass: str, estimate: float, samples: np.ndarray, alpha: float) -> dict:
    lo, hi, n = percentile_ci(samples, alpha)
    return {"comparison": comparison, "metric": metric, "class": klass, "estimate": float(estimate),
            "ci_lower": lo, "ci_upper": hi, "p_boot": p_boot(samples), "n_boot_valid": n}


def _pairs(study: Study) -> list[tuple[str, int, int]]:
    """(label, a, b): a − b for aided − unaided per reader and AI − each reader × arm."""
    out = []
    for reader in study.readers:
        iu, ia = study.rater_index(reader, "unaided"), study.rater_index(reader, "ai_aided")
        if iu is not None and ia is not None:
            out.append((f"{reader}: ai_aided - unaided", ia, iu))
    ai = study.ai_rater
    if ai is not None:
        out += [(f"AI alone - {study.raters[i].label}", ai, i) for i in study.human_raters]
    return out


def _arm_mean(values: np.ndarray, study: Study, arm: str) -> np.ndarray:
    idx = [i for i in study.human_raters if study.raters[i].arm == arm]
    return nanmean(values[..., idx]) if idx else np.full(values.shape[:-1], np.nan)


def bootstrap_differences(study: Study, n_boot: int = 1000, seed: int = 0, accuracy: str = "recall",
                          alpha: float = 0.05) -> pd.DataFrame:
    """CIs for every difference the report shows: macro metrics, per-class accuracy changes, time ratios."""
    rng = np.random.default_rng(seed)
    point = replicate(study, np.ones((1, len(study.cases))), accuracy)
    boot = replicate(study, bootstrap_weights(len(study.cases), n_boot, rng), accuracy)
    rows = []
    for label, a, b in _pairs(study):
        for metric in _metric_names(accuracy):
            rows.append(_row(label, metric, "macro", point.macro[metric][0, a] - point.macro[metric][0, b],
                             boot.macro[metric][:, a] - boot.macro[metric][:, b], alpha))
        if study.raters[a].reader != AI:
            for k, name in enumerate(study.classes):
                pa, pb = point.per_class["accuracy"][0, :, k], boot.per_class["accuracy"][:, :, k]
                rows.append(_row(label, "accuracy", name, pa[a] - pa[b], pb[:, a] - pb[:, b], alpha))
            rows.append(_row(label, "speedup_total_time", "all", safe_divide(point.time_total[0, b],
                                                                              point.time_total[0, a]),
                             safe_divide(boot.time_total[:, b], boot.time_total[:, a]), alpha))
    if {"unaided", "ai_aided"} <= set(study.arms):
        for metric in _metric_names(accuracy):
            pm = _arm_mean(point.macro[metric], study, "ai_aided") - _arm_mean(point.macro[metric], study, "unaided")
            bm = _arm_mean(boot.macro[metric], study, "ai_aided") - _arm_mean(boot.macro[metric], study, "unaided")
            rows.append(_row("mean of readers: ai_aided - unaided", metric, "macro", pm[0], bm, alpha))
    table = pd.DataFrame(rows)
    if not table.empty:
        table["n_boot"] = n_boot
    return table


def bootstrap_metric_cis(study: Study, n_boot: int = 1000, seed: int = 0, accuracy: str = "recall",
                         alpha: float = 0.05) -> pd.DataFrame:
    """CIs of each rater's own macro metrics (same replicates design, different seed stream)."""
    rng = np.random.default_rng([seed, 1])
    point = replicate(study, np.ones((1, len(study.cases))), accuracy)
    boot = replicate(study, bootstrap_weights(len(study.cases), n_boot, rng), accuracy)
    rows = []
    for i, rater in enumerate(study.raters):
        for metric in _metric_names(accuracy):
            lo, hi, n = percentile_ci(boot.macro[metric][:, i], alpha)
            rows.append({"rater": rater.label, "metric": metric, "estimate": float(point.macro[metric][0, i]),
                         "ci_lower": lo, "ci_upper": hi})
    return pd.DataFrame(rows)
