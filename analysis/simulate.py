"""A reader simulator with known accuracy and reading time per arm, writing the exact export contract.

Each reader labels each class of each case independently: P(answer = 1 | positive) = sensitivity of the arm,
P(answer = 0 | negative) = specificity of the arm, so the paper's per-class accuracy (TP / positives) has expectation
equal to the arm's sensitivity in every class, and so does its macro average. Reading time per case is log-normal with
the arm's median. The AI probability is a logistic of a normal score with P(p ≥ 0.5 | positive) = AI sensitivity and
P(p < 0.5 | negative) = AI specificity (its suggestions, ``ai_suggested``, are p ≥ 0.5); its case-level uncertainty is the mean of 1 − |2p − 1| over classes. The
AI-aided arm is read in order of decreasing uncertainty, the unaided arm in random order.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

COLUMNS = ["reader", "case", "arm", "class", "answer", "truth", "ai_probability", "ai_uncertainty", "time_s",
           "clicks", "order", "shown_at", "submitted_at", "sex", "age", "race", "ai_source", "ai_suggested"]
SIMULATED_SOURCE = "simulated-ai"  # its operating point is 0.5 by construction: ai_suggested = p ≥ 0.5


@dataclass
class ReaderSpec:
    sensitivity: dict[str, float] = field(default_factory=lambda: {"unaided": 0.70, "ai_aided": 0.80})
    specificity: dict[str, float] = field(default_factory=lambda: {"unaided": 0.90, "ai_aided": 0.93})
    median_time_s: dict[str, float] = field(default_factory=lambda: {"unaided": 60.0, "ai_aided": 30.0})
    time_sigma: float = 0.4


@dataclass
class StudySpec:
    n_readers: int = 3
    n_cases: int = 300
    classes: list[str] = field(default_factory=lambda: [f"C{k:02d}" for k in range(26)])
    prevalence: list[float] | None = None    # per class; default long-tailed 0.45 → 0.03
    readers: list[ReaderSpec] | None = None
    ai_sensitivity: float = 0.85
    ai_specificity: float = 0.92
    missing_demographics: float = 0.0
    seed: int = 0

    def reader_specs(self) -> list[ReaderSpec]:
        return self.readers or [ReaderSpec() for _ in range(self.n_readers)]

    def prevalences(self) -> np.ndarray:
        if self.prevalence is not None:
            return np.asarray(self.prevalence, dtype=float)
        return np.geomspace(0.45, 0.03, len(self.classes))


def _ai_probabilities(truth: np.ndarray, sens: float, spec: float, rng: np.random.Generator) -> np.ndarray:
    mu = np.where(truth == 1, stats.norm.ppf(sens), -stats.norm.ppf(spec))
    return 1 / (1 + np.exp(-(mu + rng.standard_normal(truth.shape)) * 1.5))


def _demographics(n: int, missing: float, rng: np.random.Generator) -> pd.DataFrame:
    demo = pd.DataFrame({"sex": rng.choice(["F", "M"], n), "age": rng.integers(18, 95, n).astype(float),
                         "race": rng.choice(["Asian", "Black", "White"], n, p=[0.2, 0.3, 0.5])})
    for col in demo.columns:
        demo[col] = demo[col].astype(object).where(rng.random(n) >= missing, None)
    return demo


def simulate_study(spec: StudySpec | None = None, **overrides) -> pd.DataFrame:
    """The long results table of a simulated two-arm reader study (unaided first, then AI-aided)."""
    spec = spec or StudySpec(**overrides)
    rng = np.random.default_rng(spec.seed)
    n, classes = spec.n_cases, spec.classes
    truth = (rng.random((n, len(classes))) < spec.prevalences()[None, :]).astype(int)
    prob = _ai_probabilities(truth, spec.ai_sensitivity, spec.ai_specificity, rng)
    uncertainty = (1 - np.abs(2 * prob - 1)).mean(axis=1)
    demo = _demographics(n, spec.missing_demographics, rng)
    cases = [f"case{i:04d}" for i in range(n)]
    frames = []
    for j, reader in enumerate(spec.reader_specs()):
        for arm in ("unaided", "ai_aided"):
            frames.append(_reader_arm(f"R{j + 1}", arm, reader, truth, prob, uncertainty, demo, cases, classes, rng))
    return pd.concat(frames, ignore_index=True)[COLUMNS]


def _reader_arm(name: str, arm: str, reader: ReaderSpec, truth: np.ndarray, prob: np.ndarray,
                uncertainty: np.ndarray, demo: pd.DataFrame, cases: list[str], classes: list[str],
                rng: np.random.Generator) -> pd.DataFrame:
    n, k = truth.shape
    p_yes = np.where(truth == 1, reader.sensitivity[arm], 1 - reader.specificity[arm])
    answer = (rng.random((n, k)) < p_yes).astype(int)
    seconds = reader.median_time_s[arm] * np.exp(reader.time_sigma * rng.standard_normal(n))
    order = np.argsort(np.argsort(-uncertainty)) if arm == "ai_aided" else rng.permutation(n)
    start = pd.Timestamp("2026-01-05 09:00", tz="UTC") + pd.Timedelta(days=0 if arm == "unaided" else 14)
    elapsed = np.empty(n)
    elapsed[np.argsort(order)] = np.cumsum(seconds[np.argsort(order)])
    submitted = start + pd.to_timedelta(elapsed, unit="s")
    shown = submitted - pd.to_timedelta(seconds, unit="s")
    case_rows = pd.DataFrame({"reader": name, "case": cases, "arm": arm, "ai_uncertainty": uncertainty,
                              "time_s": seconds.round(3), "clicks": rng.poisson(3, n) + 1, "order": order + 1,
                              "shown_at": shown.astype(str), "submitted_at": submitted.astype(str)})
    case_rows = pd.concat([case_rows, demo.reset_index(drop=True)], axis=1)
    long = case_rows.loc[np.repeat(np.arange(n), k)].reset_index(drop=True)
    long["class"] = np.tile(classes, n)
    long["answer"] = answer.ravel()
    long["truth"] = truth.ravel()
    aided = arm == "ai_aided"
    long["ai_probability"] = prob.ravel().round(6) if aided else np.nan
    long["ai_source"] = SIMULATED_SOURCE if aided else None
    long["ai_suggested"] = (prob.ravel() >= 0.5).astype(float) if aided else np.nan
    return long


def expected_effects(spec: StudySpec) -> pd.DataFrame:
    """The simulated truth per reader: accuracy (= sensitivity), specificity and median time per arm."""
    rows = []
    for j, reader in enumerate(spec.reader_specs()):
        for arm in ("unaided", "ai_aided"):
            rows.append({"reader": f"R{j + 1}", "arm": arm, "accuracy": reader.sensitivity[arm],
                         "specificity": reader.specificity[arm], "median_time_s": reader.median_time_s[arm]})
    return pd.DataFrame(rows)
