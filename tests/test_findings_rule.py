"""Calibration, evidence and the one suggestion rule of core_model.findings, on real NIH labels where labels matter."""
from __future__ import annotations

import numpy as np
import pytest

from core_model.findings import (MIN_VALIDATION, NOT_TRAINED, NOT_VALIDATED, SUGGESTION_FLOOR, SUPPLIER, VALIDATED,
                                 FindingsCard, auroc, bootstrap_auroc, display_probability,
                                 expected_calibration_error, evaluate, fit_platt, operating_point, supplier_card)
from core_model.io.cxrlt import read_labels
from tests.conftest import SHARED_DATA

NIH_LABELS = SHARED_DATA / "nih_cxr14_train256" / "labels.csv"


def _real_labels() -> tuple[list[str], np.ndarray]:
    """(classes, (N, C) 0/1) of the 549 NIH train256 images: real prevalences, real co-occurrence."""
    rows = read_labels(NIH_LABELS)
    classes = list(rows[0].labels)
    return classes, np.array([[row.labels[c] for c in classes] for row in rows])


def _scores(labels: np.ndarray, separation: np.ndarray, seed: int = 0) -> np.ndarray:
    """Logits that separate each class by ``separation`` (C,) standard deviations (0 = chance)."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=labels.shape) + labels * separation[None, :] - 2.0


def test_platt_scaling_recovers_the_calibration_of_a_logistic_source():
    rng = np.random.default_rng(1)
    z = rng.normal(0, 2, 4000)
    y = (rng.random(4000) < 1 / (1 + np.exp(-(0.5 * z - 1.0)))).astype(int)
    a, b = fit_platt(z, y, l2=0.0)
    assert abs(a - 0.5) < 0.08 and abs(b + 1.0) < 0.12
    raw = 1 / (1 + np.exp(-z))
    calibrated = 1 / (1 + np.exp(-(a * z + b)))
    assert expected_calibration_error(calibrated, y) < 0.03 < expected_calibration_error(raw, y)


def test_platt_penalty_keeps_a_class_with_few_positives_near_its_raw_output():
    z = np.linspace(-3, 3, 40)
    y = np.zeros(40, int)
    y[-2:] = 1  # two positives: an unpenalised fit would be a step
    a, b = fit_platt(z, y, l2=1.0)
    assert a < 10 and abs(b) < 20 and a > 0
    assert fit_platt(z, np.zeros(40, int)) == (1.0, 0.0)


def test_auroc_and_its_bootstrap_interval_match_scikit_learn_on_real_labels():
    from sklearn.metrics import roc_auc_score

    classes, labels = _real_labels()
    scores = _scores(labels, np.linspace(0, 2, len(classes)))
    for k in range(len(classes)):
        assert auroc(scores[:, k], labels[:, k]) == pytest.approx(roc_auc_score(labels[:, k], scores[:, k]))
    low, high = bootstrap_auroc(scores[:, 0], labels[:, 0], rounds=300)
    assert low < auroc(scores[:, 0], labels[:, 0]) < high
    assert bootstrap_auroc(scores[:, 0], np.zeros(len(labels))) is None


def test_evidence_validates_only_classes_with_enough_positives_and_an_interval_above_chance():
    classes, labels = _real_labels()
    separation = np.where(np.arange(len(classes)) % 3 == 0, 0.0, 2.5)  # every third class at chance
    p = 1 / (1 + np.exp(-_scores(labels, separation)))
    untrained = classes[-1]
    evidence, summary = evaluate(classes, p, labels, trained=classes[:-1], rounds=400)
    assert evidence[untrained].status == NOT_TRAINED and not evidence[untrained].shows_probability
    chance_validated = 0
    for k, name in enumerate(classes[:-1]):
        ev = evidence[name]
        assert (ev.n_pos, ev.n_neg) == (int(labels[:, k].sum()), int((labels[:, k] == 0).sum()))
        enough = ev.n_pos >= MIN_VALIDATION and ev.n_neg >= MIN_VALIDATION
        assert ev.status == (VALIDATED if enough and ev.auroc_low > 0.5 else NOT_VALIDATED), name
        if separation[k] > 0 and enough:
            assert ev.status == VALIDATED, name
        chance_validated += separation[k] == 0 and ev.status == VALIDATED
        if ev.status == VALIDATED:
            assert ev.auroc_low > 0.5 and ev.operating_point >= SUGGESTION_FLOOR
            assert 0 <= ev.sensitivity <= 1 and 0 <= ev.specificity <= 1
        else:
            assert ev.operating_point is None
    assert chance_validated <= 1  # a 95 % interval excludes 0.5 by luck for about 1 in 40 chance-level classes
    assert summary["images"] == len(labels)
    assert summary["macro_auroc_low"] < summary["macro_auroc"] < summary["macro_auroc_high"]


def test_the_suggestion_rule_is_one_rule_for_panel_and_analysis():
    classes, labels = _real_labels()
    p = 1 / (1 + np.exp(-_scores(labels, np.full(len(classes), 2.5))))
    evidence, summary = evaluate(classes, p, labels, trained=classes[:-2], rounds=200)
    card = FindingsCard("v-test", "built-in", "test", "cxr-lt-26", evidence, summary)
    card = FindingsCard.from_dict(card.to_dict())  # what the checkpoint header / database stores
    thresholds = card.thresholds()
    for row in p[:200]:
        probs = dict(zip(classes, row))
        by_rule = set(card.suggested(probs))
        by_threshold = {c for c, v in probs.items() if v >= thresholds[c]}  # how the analysis applies it
        assert by_rule == by_threshold
        assert all(card.evidence[c].status == VALIDATED for c in by_rule)
        assert all(probs[c] >= SUGGESTION_FLOOR for c in by_rule)
        assert set(card.shown(probs)) == set(classes[:-2])


def test_operating_point_never_falls_below_the_floor():
    y = np.array([0] * 50 + [1] * 10)
    p = np.concatenate([np.full(50, 0.01), np.full(10, 0.05)])  # Youden's best cut is 0.05
    t, sens, spec = operating_point(p, y)
    assert t == SUGGESTION_FLOOR and sens == 0.0 and spec == 1.0


def test_supplier_card_suggests_only_at_the_suppliers_floored_threshold():
    card = supplier_card("vendor-2.1", "imported", "vendor CSV", "cxr-lt-26", ["Pneumothorax", "Cardiomegaly"],
                         {"Pneumothorax": 0.02})
    assert card.evidence["Pneumothorax"].status == SUPPLIER
    assert card.evidence["Pneumothorax"].operating_point == SUGGESTION_FLOOR
    assert card.evidence["Cardiomegaly"].status == NOT_VALIDATED
    assert card.suggested({"Pneumothorax": 0.2, "Cardiomegaly": 0.99}) == ["Pneumothorax"]
    assert card.suggested({"Pneumothorax": 0.1}) == []


@pytest.mark.parametrize("p, shown", [(0.0, "<0.01"), (0.004, "<0.01"), (0.005, "0.01"), (0.5, "0.50"),
                                      (0.994, "0.99"), (0.995, ">0.99"), (1.0, ">0.99")])
def test_no_probability_is_displayed_as_certain(p, shown):
    assert display_probability(p) == shown
