"""The loss terms of training/ (paper Eq. 6-10) and the click rules, on small tensors and one real lung mask."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from training.clicks import deepest_error_click, deepest_point, error_regions, uniform_error_click
from training.losses import (LossConfig, ada_loss, monotone_loss, pad_points, sample_weights, select_hard,
                             simulated_click)


def test_weights_are_exp_lambda_u_and_detached_by_default():
    u_sl = torch.tensor([0.2, 1.0, 1.6])
    l_dice = torch.tensor([0.1, 0.5, 0.9], requires_grad=True)
    w, u = sample_weights(u_sl, l_dice, LossConfig(beta=0.5, lam=1.0))
    assert torch.allclose(u, 0.5 * u_sl + l_dice.detach())
    assert torch.allclose(w, torch.exp(u))
    assert not w.requires_grad  # default: w is a constant weight
    loss = ada_loss(l_dice, w, torch.tensor([True, True, True]))
    loss.backward()
    # d/dl of Σ w·l / 3 with w constant = w / 3
    assert torch.allclose(l_dice.grad, w / 3)


def test_weight_gradient_flows_when_not_detached_and_max_normalisation():
    u_sl = torch.tensor([0.2, 1.0])
    l_dice = torch.tensor([0.1, 0.5], requires_grad=True)
    w, _ = sample_weights(u_sl, l_dice, LossConfig(detach_weight=False))
    assert w.requires_grad
    ada_loss(l_dice, w, torch.tensor([True, True])).backward()
    expected = (torch.exp(0.5 * u_sl + l_dice) * (1 + l_dice)).detach() / 2  # d(e^u·l)/dl = e^u (1 + l)
    assert torch.allclose(l_dice.grad, expected, atol=1e-6)
    w_norm, _ = sample_weights(u_sl, l_dice.detach(), LossConfig(normalize_weight=True))
    assert math.isclose(float(w_norm.max()), 1.0) and float(w_norm.min()) < 1.0
    w_off, _ = sample_weights(u_sl, l_dice.detach(), LossConfig(uncertainty_weighting=False))
    assert torch.equal(w_off, torch.ones(2))


def test_invalid_samples_do_not_count():
    l_dice = torch.tensor([0.5, 0.9, 0.1])
    w = torch.ones(3)
    assert math.isclose(float(ada_loss(l_dice, w, torch.tensor([True, False, True]))), 0.3, rel_tol=1e-6)
    assert float(ada_loss(l_dice, w, torch.tensor([False, False, False]))) == 0.0


@pytest.mark.parametrize("batch,fraction,expected", [(10, 0.3, 3), (8, 0.3, 2), (4, 0.3, 1), (2, 0.3, 1), (10, 1.0, 10)])
def test_top_k_selection(batch, fraction, expected):
    u = torch.arange(batch, dtype=torch.float32)
    hard = select_hard(u, fraction)
    assert len(hard) == expected
    assert set(hard.tolist()) == set(range(batch - expected, batch))  # the most uncertain ones


def test_top_k_skips_samples_without_a_mask():
    u = torch.tensor([5.0, 1.0, 2.0, 3.0])
    hard = select_hard(u, 0.5, valid=torch.tensor([False, True, True, True]))
    assert sorted(hard.tolist()) == [2, 3]


def _lung_mask(shared_data, size=128):
    from PIL import Image

    mask = Image.open(shared_data / "cxr_lungs" / "masks" / "0a7faa2a_lung.png").convert("L").resize((size, size))
    return np.asarray(mask) > 127


def test_uniform_clicks_fall_in_the_error_region_with_the_right_sign(shared_data):
    gt = _lung_mask(shared_data)
    pred = np.zeros_like(gt)
    pred[:, : gt.shape[1] // 2] = gt[:, : gt.shape[1] // 2]  # right lung found, left missed
    pred[5:15, 5:15] = True  # plus a false positive in the corner
    fn, fp = error_regions(pred, gt)
    rng = np.random.default_rng(0)
    signs = set()
    for _ in range(300):
        x, y, positive = uniform_error_click(pred, gt, rng)
        assert fn[y, x] or fp[y, x]
        assert positive == bool(gt[y, x])  # positive exactly where the object is
        signs.add(positive)
    assert signs == {True, False}
    assert uniform_error_click(gt, gt, rng) is None  # nothing to correct


def test_monotone_loss_penalises_only_a_click_that_made_the_mask_worse(shared_data):
    gt = torch.from_numpy(_lung_mask(shared_data)).float()[None, None]
    before = (gt * 2 - 1) * 8  # the lungs found
    eroded = before.clone()
    eroded[..., 40:90, :] = -8  # a click that wiped out a band of lung
    better, worse = before.clone().requires_grad_(True), eroded.clone().requires_grad_(True)
    hurt = monotone_loss(torch.cat([better, worse]), torch.cat([eroded, before]), gt.expand(2, -1, -1, -1))
    assert hurt[0] == 0 and hurt[1] > 0.1  # improving costs nothing; getting worse costs the Dice it lost
    hurt.sum().backward()
    assert better.grad.abs().sum() == 0 and worse.grad.abs().sum() > 0
    prev = before.clone().requires_grad_(True)
    monotone_loss(eroded.clone().requires_grad_(True), prev, gt).sum().backward()
    assert prev.grad is None  # the mask before the click is a constant


def test_deepest_point_and_deepest_error_click(shared_data):
    from scipy import ndimage

    gt = _lung_mask(shared_data)
    x, y = deepest_point(gt)
    depth = ndimage.distance_transform_edt(np.pad(gt, 1))[1:-1, 1:-1]
    assert gt[y, x] and depth[y, x] == depth.max()
    # a large miss (one lung) vs a small false positive: the click is positive, at the deepest point of the miss
    pred = gt.copy()
    labels, _ = ndimage.label(gt)
    pred[labels == 1] = False
    pred[2:6, 2:6] = True
    cx, cy, positive = deepest_error_click(pred, gt)
    fn = gt & ~pred
    fn_depth = ndimage.distance_transform_edt(np.pad(fn, 1))[1:-1, 1:-1]
    assert positive and fn[cy, cx] and fn_depth[cy, cx] == fn_depth.max()
    # a large false positive and no miss: negative click inside the false positive
    pred2 = gt.copy()
    pred2[:, :10] = True
    cx, cy, positive = deepest_error_click(pred2, gt)
    assert not positive and pred2[cy, cx] and not gt[cy, cx]
    assert deepest_error_click(gt, gt) is None
    # the image border counts as boundary: a band along the top edge is deepest at its lower middle rows
    band = np.zeros((20, 20), bool)
    band[0:6, :] = True
    bx, by = deepest_point(band)
    full = ndimage.distance_transform_edt(np.pad(band, 1))[1:-1, 1:-1]
    assert full[by, bx] == full.max() == 3.0


def test_simulated_click_stays_in_the_valid_region_and_pads():
    target = np.zeros((256, 256), np.float32)
    target[100:150, 40:90] = 1
    logits = np.full((256, 256), -5.0, np.float32)
    rng = np.random.default_rng(1)
    for sampling in ("uniform", "deepest", "mixed"):
        x, y, label = simulated_click(logits, target, (200, 120), LossConfig(click_sampling=sampling), rng)
        assert label == 1 and 0 <= x < 120 and 0 <= y < 200
        assert 39.5 <= x <= 89.5 and 99.5 <= y <= 149.5  # inside the missed object (± the sub-pixel jitter)
    coords, labels = pad_points([[(1.0, 2.0, 1)], [], [(3.0, 4.0, 0), (5.0, 6.0, 1)]], "cpu")
    assert coords.shape == (3, 2, 2) and labels.tolist() == [[1, -1], [-1, -1], [0, 1]]
    assert pad_points([[], []], "cpu") is None


def test_classification_loss_masks_blank_labels_and_adjusts_for_the_prior():
    from core_model.classes import CXR_LT_26
    from training.classify import auroc, masked_loss, prior_logits

    logits = torch.zeros(2, 3, requires_grad=True)
    labels = torch.tensor([[1, -1, 0], [-1, -1, 1]])  # -1 = blank = not assessed
    prior = prior_logits(("Hernia", "Atelectasis", "Pneumothorax"))
    for kind in ("logit-adjusted", "asl", "bce"):
        logits.grad = None
        masked_loss(logits, labels, kind, prior).backward()
        assert torch.all(logits.grad[labels == -1] == 0), kind  # blanks give no gradient
        assert torch.all(logits.grad[labels >= 0] != 0), kind
    # logit adjustment: a rare positive class (Hernia) costs more than a common one at the same raw logit
    rare = masked_loss(torch.zeros(1, 1), torch.tensor([[1]]), "logit-adjusted", prior_logits(("Hernia",)))
    common = masked_loss(torch.zeros(1, 1), torch.tensor([[1]]), "logit-adjusted", prior_logits(("Atelectasis",)))
    assert rare > common
    assert prior_logits(CXR_LT_26).shape == (26,)
    assert auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75
    assert auroc(np.array([0.1, 0.2]), np.array([1, 1])) is None
