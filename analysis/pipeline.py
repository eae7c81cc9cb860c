"""Everything the report shows, computed once from a :class:`~analysis.data.Study`."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analysis import bootstrap, metrics, subgroups
from analysis.data import Study
from analysis.mrmc import AUC, Accuracy, ORHResult, orh_from_arrays
from analysis.subgroups import DEFAULT_AGE_EDGES


@dataclass
class AnalysisConfig:
    age_edges: tuple[float, ...] = DEFAULT_AGE_EDGES
    n_boot: int = 1000
    seed: int = 0
    accuracy: str = "recall"          # the paper's per-class accuracy; "label" = (TP+TN)/N
    alpha: float = 0.05
    min_group_size: int = 2


@dataclass
class AnalysisResults:
    study: Study
    config: AnalysisConfig
    summary: pd.DataFrame
    per_class: pd.DataFrame
    class_change: pd.DataFrame
    speedup: pd.DataFrame
    differences: pd.DataFrame
    metric_cis: pd.DataFrame
    subgroups: subgroups.SubgroupResult
    deciles: pd.DataFrame
    reading_order: pd.DataFrame
    mrmc: dict[str, ORHResult]
    notes: list[str] = field(default_factory=list)


def mrmc_arrays(study: Study, use_scores: bool) -> tuple[np.ndarray, list[str], list[str], list[str]]:
    """(2 arms, readers, complete cases, classes) ratings; cases not read by everyone in both arms are left out."""
    notes: list[str] = []
    arms = ["unaided", "ai_aided"]
    readers = [r for r in study.readers if all(study.rater_index(r, a) is not None for a in arms)]
    source = study.scores if use_scores and study.scores is not None else study.answers
    idx = np.array([[study.rater_index(r, a) for r in readers] for a in arms], dtype=int)
    values = source[idx] if readers else np.empty((2, 0, len(study.cases), len(study.classes)))
    complete = ~np.isnan(values).any(axis=(0, 1, 3)) if readers else np.zeros(len(study.cases), bool)
    if readers and complete.sum() < len(study.cases):
        notes.append(f"MRMC: {len(study.cases) - int(complete.sum())} of {len(study.cases)} cases were not read "
                     "(all classes) by every reader in both arms and are left out of the MRMC analyses")
    return values[:, :, complete], readers, [c for c, k in zip(study.cases, complete) if k], notes


def run_mrmc(study: Study, config: AnalysisConfig) -> tuple[dict[str, ORHResult], list[str]]:
    if not {"unaided", "ai_aided"} <= set(study.arms):
        return {}, ["MRMC: needs both arms (unaided and ai_aided); not computed"]
    out, notes = {}, []
    for name, fom, use_scores in (("accuracy", Accuracy(per_class=config.accuracy), False), ("auc", AUC(), True)):
        values, readers, cases, why = mrmc_arrays(study, use_scores)
        notes += [n for n in why if n not in notes]
        if len(readers) < 1 or len(cases) < 2:
            notes.append(f"MRMC {name}: too few readers or complete cases; not computed")
            continue
        truth = study.truth[[study.cases.index(c) for c in cases]]
        out[name] = orh_from_arrays(values, truth, fom, ["unaided", "ai_aided"], readers, config.alpha)
        notes += [f"MRMC {name}: {n}" for n in out[name].notes]
    if "auc" in out and study.scores is None:
        notes.append("MRMC AUC: readers gave 0/1 answers (no `score` column), so each per-class AUC equals "
                     "(sensitivity + specificity) / 2; the AI's AUC uses its probabilities")
    return out, notes


def run_analysis(study: Study, config: AnalysisConfig | None = None) -> AnalysisResults:
    config = config or AnalysisConfig()
    sub = subgroups.subgroup_analysis(study, config.age_edges, config.accuracy, max(config.n_boot // 2, 50),
                                      config.seed, config.min_group_size, config.alpha)
    deciles, decile_notes = subgroups.uncertainty_deciles(study, config.accuracy)
    mrmc, mrmc_notes = run_mrmc(study, config)
    notes = list(study.notes) + sub.notes + decile_notes + mrmc_notes
    differences = bootstrap.bootstrap_differences(study, config.n_boot, config.seed, config.accuracy, config.alpha)
    return AnalysisResults(
        study=study, config=config,
        summary=metrics.summary_table(study, config.accuracy),
        per_class=metrics.per_class_table(study, config.accuracy),
        class_change=_class_change_with_ci(study, config, differences),
        speedup=metrics.speedup_table(study),
        differences=differences,
        metric_cis=bootstrap.bootstrap_metric_cis(study, config.n_boot, config.seed, config.accuracy, config.alpha),
        subgroups=sub, deciles=deciles, reading_order=subgroups.reading_order_check(study), mrmc=mrmc, notes=notes)


def _class_change_with_ci(study: Study, config: AnalysisConfig, boot: pd.DataFrame) -> pd.DataFrame:
    """Per-class change table (paired cases) with the bootstrap CI of each change."""
    table = metrics.class_change_table(study, config.accuracy)
    if table.empty or boot.empty:
        return table
    per_class = boot[(boot["metric"] == "accuracy") & ~boot["class"].isin(["macro", "all"])
                     & boot["comparison"].str.endswith("ai_aided - unaided")].copy()
    per_class["reader"] = per_class["comparison"].str.split(":").str[0]
    merged = table.merge(per_class[["reader", "class", "ci_lower", "ci_upper"]], on=["reader", "class"], how="left")
    return merged
