"""Findings AI: calibration, the one suggestion rule, and the evidence shown beside each probability.

A findings source (the built-in classifier of a named checkpoint, a study's imported predictions, a torchxrayvision
model loaded from a local file) is described by a :class:`FindingsCard`: where it came from and, per class, how well
it did on validation images it was never trained on (:class:`ClassEvidence`). The card carries **the** suggestion rule
(:meth:`FindingsCard.suggested`), used by the AI panel, the worklist, triage, the exports and the analysis alike:

    a finding is *suggested* when its class has an operating point and the probability is ≥ that operating point.

For the built-in model the operating point exists only for a *validated* class — at least :data:`MIN_VALIDATION`
positive and negative validation images and a 95 % bootstrap AUROC interval that excludes 0.5 — and is the
validation threshold of maximal Youden J, never below :data:`SUGGESTION_FLOOR`. Classes the model was never trained on
show no probability at all ("not trained"); classes trained but not validated show their probability marked
"not validated" and are never suggested. An imported source brings its supplier's thresholds (floored the same way);
without them nothing it outputs is suggested.

Probabilities of the built-in model are calibrated post hoc per class on the validation split (Platt scaling:
``p = σ(a·logit + b)``, :func:`fit_platt`; stored in the classifier head, so every caller gets calibrated values).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

SUGGESTION_FLOOR = 0.15     # no finding is suggested below this probability, whatever the operating point
MIN_VALIDATION = 5          # validation positives (and negatives) a class needs before it can be validated
BOOTSTRAP_ROUNDS = 2000
ECE_BINS = 10

VALIDATED, NOT_VALIDATED, NOT_TRAINED, SUPPLIER = "validated", "not validated", "not trained", "supplier"
KINDS = ("built-in", "imported", "torchxrayvision")


@dataclass(frozen=True)
class ClassEvidence:
    """What is known of one class's output: its validation AUROC (95 % bootstrap interval), counts, operating point.

    ``status``: ``validated`` | ``not validated`` | ``not trained`` (the source has no output for it) | ``supplier``
    (an imported source's own threshold, not validated here). ``operating_point`` None → never suggested.
    """
    name: str
    status: str
    auroc: float | None = None
    auroc_low: float | None = None
    auroc_high: float | None = None
    n_pos: int = 0
    n_neg: int = 0
    operating_point: float | None = None
    sensitivity: float | None = None
    specificity: float | None = None

    @property
    def shows_probability(self) -> bool:
        return self.status != NOT_TRAINED


@dataclass(frozen=True)
class FindingsCard:
    """A findings AI source: its version name, kind, origin and per-class evidence; the suggestion rule.

    ``validation``: how the evidence was obtained (``{"images": n, "description": ..., "ece": ..., "macro_auroc":
    ..., "macro_auroc_low": ..., "macro_auroc_high": ...}``); empty for an imported source not evaluated here.
    """
    name: str
    kind: str
    origin: str
    label_set: str
    evidence: dict[str, ClassEvidence]
    validation: dict[str, Any] = field(default_factory=dict)

    def suggested(self, probabilities: Mapping[str, float]) -> list[str]:
        """The suggested findings among ``probabilities`` (class → probability), in the card's class order."""
        return [name for name, ev in self.evidence.items()
                if ev.operating_point is not None and name in probabilities
                and float(probabilities[name]) >= ev.operating_point]

    def shown(self, probabilities: Mapping[str, float]) -> dict[str, float]:
        """The probabilities a reader may see: classes the source has an output for."""
        return {name: float(p) for name, p in probabilities.items()
                if name in self.evidence and self.evidence[name].shows_probability}

    def thresholds(self) -> dict[str, float]:
        """The operating points as {class: threshold}; classes without one map to +inf (never positive)."""
        return {name: (ev.operating_point if ev.operating_point is not None else float("inf"))
                for name, ev in self.evidence.items()}

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["evidence"] = [asdict(ev) for ev in self.evidence.values()]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FindingsCard:
        evidence = {ev["name"]: ClassEvidence(**ev) for ev in data.get("evidence", [])}
        return cls(data["name"], data["kind"], data.get("origin", ""), data.get("label_set", ""), evidence,
                   dict(data.get("validation") or {}))


def carried_over(cards: dict[str, dict], name: str, previous: str) -> dict[str, dict]:
    """Stored cards (``{label set: FindingsCard dict}``) of heads a new checkpoint ``name`` keeps unchanged from
    checkpoint ``previous`` (with the image embedding they read): the evidence holds, under the new name."""
    return {label_set: {**card, "name": name, "origin": f"{card['origin']} — heads carried over unchanged from {previous}"}
            for label_set, card in cards.items()}


def display_probability(p: float) -> str:
    """Two decimals, but never "0.00"/"1.00": a probability is shown as "<0.01" or ">0.99" at the extremes."""
    if p < 0.005:
        return "<0.01"
    if p >= 0.995:
        return ">0.99"
    return f"{p:.2f}"


# ---------------------------------------------------------------------------------------------------------- metrics
def auroc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Rank-based AUROC (Mann–Whitney, ties count half); None without both classes."""
    from scipy.stats import rankdata

    scores, labels = np.asarray(scores, float), np.asarray(labels)
    pos, neg = int((labels == 1).sum()), int((labels == 0).sum())
    if pos == 0 or neg == 0:
        return None
    ranks = rankdata(scores)
    return float((ranks[labels == 1].sum() - pos * (pos + 1) / 2) / (pos * neg))


def bootstrap_auroc(scores: np.ndarray, labels: np.ndarray, rounds: int = BOOTSTRAP_ROUNDS,
                    seed: int = 0) -> tuple[float, float] | None:
    """95 % percentile interval of the AUROC over ``rounds`` image resamples stratified by label; None if undefined."""
    scores, labels = np.asarray(scores, float), np.asarray(labels)
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    if len(pos) == 0 or len(neg) == 0:
        return None
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(rounds):
        take = np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])
        values.append(auroc(scores[take], labels[take]))
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float | None:
    """ECE over all given (image, class) pairs: Σ_bins |mean p − positive rate| · share, equal-width bins on [0, 1]."""
    p, y = np.asarray(probabilities, float).ravel(), np.asarray(labels, float).ravel()
    keep = y >= 0
    p, y = p[keep], y[keep]
    if len(p) == 0:
        return None
    which = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            total += abs(p[in_bin].mean() - y[in_bin].mean()) * in_bin.mean()
    return float(total)


def fit_platt(logits: np.ndarray, labels: np.ndarray, l2: float = 1.0) -> tuple[float, float]:
    """Per-class Platt scaling ``p = σ(a·logit + b)`` fitted on validation by penalised likelihood.

    The penalty ``l2·((a − 1)² + b²)`` keeps a class with few validation positives near its uncalibrated output
    instead of fitting a step; returns (a, b). Identity (1, 0) when the labels hold one class only."""
    from scipy.optimize import minimize

    z, y = np.asarray(logits, float), np.asarray(labels, float)
    if len(np.unique(y)) < 2:
        return 1.0, 0.0

    def loss(ab: np.ndarray) -> tuple[float, np.ndarray]:
        s = ab[0] * z + ab[1]
        p = 1.0 / (1.0 + np.exp(-s))
        nll = np.sum(np.logaddexp(0, s) - y * s)
        g = p - y
        grad = np.array([np.sum(g * z) + 2 * l2 * (ab[0] - 1), np.sum(g) + 2 * l2 * ab[1]])
        return nll + l2 * ((ab[0] - 1) ** 2 + ab[1] ** 2), grad

    result = minimize(loss, np.array([1.0, 0.0]), jac=True, method="L-BFGS-B", bounds=[(0.01, 10.0), (-20, 20)])
    return float(result.x[0]), float(result.x[1])


def operating_point(probabilities: np.ndarray, labels: np.ndarray,
                    floor: float = SUGGESTION_FLOOR) -> tuple[float, float, float]:
    """The threshold of maximal Youden J on validation, raised to ``floor``; (threshold, sensitivity, specificity)."""
    p, y = np.asarray(probabilities, float), np.asarray(labels)
    best_j, best_t = -np.inf, floor
    for t in np.unique(p):
        sens, spec = _rates(p, y, t)
        if sens + spec - 1 > best_j:
            best_j, best_t = sens + spec - 1, float(t)
    threshold = max(best_t, floor)
    sens, spec = _rates(p, y, threshold)
    return threshold, sens, spec


def _rates(p: np.ndarray, y: np.ndarray, t: float) -> tuple[float, float]:
    called = p >= t
    return float(called[y == 1].mean()), float((~called[y == 0]).mean())


# ---------------------------------------------------------------------------------------------------------- evidence
def class_evidence(name: str, probabilities: np.ndarray, labels: np.ndarray, seed: int = 0,
                   rounds: int = BOOTSTRAP_ROUNDS) -> ClassEvidence:
    """The evidence of one trained class from its validation probabilities and labels (−1 = not assessed)."""
    p, y = np.asarray(probabilities, float), np.asarray(labels)
    keep = y >= 0
    p, y = p[keep], y[keep]
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    a = auroc(p, y)
    interval = bootstrap_auroc(p, y, rounds, seed) if a is not None else None
    low, high = interval or (None, None)
    validated = n_pos >= MIN_VALIDATION and n_neg >= MIN_VALIDATION and low is not None and low > 0.5
    if not validated:
        return ClassEvidence(name, NOT_VALIDATED, a, low, high, n_pos, n_neg)
    threshold, sens, spec = operating_point(p, y)
    return ClassEvidence(name, VALIDATED, a, low, high, n_pos, n_neg, threshold, sens, spec)


def evaluate(classes: Iterable[str], probabilities: np.ndarray, labels: np.ndarray,
             trained: Iterable[str] | None = None, seed: int = 0,
             rounds: int = BOOTSTRAP_ROUNDS) -> tuple[dict[str, ClassEvidence], dict[str, Any]]:
    """Per-class evidence and summary metrics of (N, C) probabilities against (N, C) labels (1/0, −1 = not assessed).

    ``trained``: the classes the source has an output for (default all); the others are "not trained".
    Summary: macro AUROC over classes with positives and its bootstrap interval (images resampled jointly), ECE over
    the assessed pairs of those classes, the number of images."""
    classes = list(classes)
    probabilities, labels = np.asarray(probabilities, float), np.asarray(labels)
    trained = set(classes if trained is None else trained)
    evidence = {}
    for k, name in enumerate(classes):
        evidence[name] = (class_evidence(name, probabilities[:, k], labels[:, k], seed, rounds) if name in trained
                          else ClassEvidence(name, NOT_TRAINED))
    scored = [k for k, name in enumerate(classes) if evidence[name].auroc is not None]
    summary: dict[str, Any] = {"images": int(len(labels)), "classes_with_positives": len(scored)}
    if scored:
        summary["macro_auroc"] = float(np.mean([evidence[classes[k]].auroc for k in scored]))
        summary["macro_auroc_low"], summary["macro_auroc_high"] = _macro_interval(probabilities[:, scored],
                                                                                labels[:, scored], seed, rounds)
        summary["ece"] = expected_calibration_error(probabilities[:, scored], labels[:, scored])
        summary["mean_probability"] = float(probabilities[:, scored][labels[:, scored] >= 0].mean())
        summary["prevalence"] = float((labels[:, scored] == 1).sum() / max(1, (labels[:, scored] >= 0).sum()))
    return evidence, summary


def _macro_interval(p: np.ndarray, y: np.ndarray, seed: int, rounds: int = BOOTSTRAP_ROUNDS) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    n, values = len(y), []
    for _ in range(rounds):
        take = rng.integers(0, n, n)
        aucs = [auroc(p[take, k][y[take, k] >= 0], y[take, k][y[take, k] >= 0]) for k in range(p.shape[1])]
        aucs = [a for a in aucs if a is not None]
        if aucs:
            values.append(np.mean(aucs))
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def supplier_card(name: str, kind: str, origin: str, label_set: str, classes: Iterable[str],
                  thresholds: Mapping[str, float] | None = None) -> FindingsCard:
    """The card of a source not validated here (imported predictions, a local torchxrayvision model): every class it
    outputs is shown; a class is suggested only at its supplier's threshold (never below the floor)."""
    thresholds = thresholds or {}
    evidence = {c: ClassEvidence(c, SUPPLIER if c in thresholds else NOT_VALIDATED,
                                 operating_point=(max(float(thresholds[c]), SUGGESTION_FLOOR) if c in thresholds
                                                  else None))
                for c in classes}
    return FindingsCard(name, kind, origin, label_set, evidence, {})


__all__ = ["ClassEvidence", "FindingsCard", "SUGGESTION_FLOOR", "MIN_VALIDATION", "display_probability", "auroc",
           "bootstrap_auroc", "expected_calibration_error", "fit_platt", "operating_point", "class_evidence",
           "evaluate", "supplier_card", "VALIDATED", "NOT_VALIDATED", "NOT_TRAINED", "SUPPLIER", "KINDS"]
