"""The training objective (paper Eq. 6–10), each term switchable through :class:`LossConfig`.

* Eq. 6: ``u = β·u_sl + l_dice`` (β = 0.5), ``u_sl = 1 − cos(v, z')`` from :mod:`core_model.uncertainty`.
* Eq. 7: ``w = exp(λ·u)`` (λ = 1).
  - ``detach_weight`` (default **True**): w is a constant weight (no gradient flows through exp(λu)); otherwise the
    gradient of w·l_dice also flows through w (through l_dice, and through u_sl into the language pathway).
  - ``normalize_weight`` (default **False**, as the paper's Eq. 7): when True, w is divided by its batch maximum
    (the seed's released code), so w ∈ (0, 1].
* Eq. 9: ``L_ada = Σ_i v_i·w_i·l_dice,i / Σ_i v_i`` with v_i = 1 for samples with a non-empty target. We divide by the
  number of valid samples (the paper writes the plain sum) so that the learning rate does not depend on the batch size.
* Eq. 8/10: simulated HITL — :func:`select_hard` takes the ``k = max(1, round(r·B))`` most uncertain samples
  (r = 0.3); for them the error region E = M ⊕ Y gives a corrective click (uniform over E, the deepest error point of
  the RITM rule, or a mix), the previous low-res logits are fed back, and each refined prediction adds its Dice loss:
  ``L_hitl = mean over rounds and hard samples of v_i·l_dice(refined_i, Y_i)``.
* Optional extras (all 0 = off by default): ``bce_weight`` (pixel BCE with the Dice, as LiteMedSAM's own loss),
  ``iou_weight`` (MSE of SAM's IoU head against the real IoU, which makes ``iou_gap`` a usable uncertainty) and
  ``align_weight`` (``1 − cos(v_Y, z')``: pulls the text concept toward the mask-weighted embedding of the true
  object so that u_sl measures semantic consistency).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from core_model.uncertainty import dice_loss
from training.clicks import deepest_error_click, uniform_error_click


@dataclass
class LossConfig:
    beta: float = 0.5
    lam: float = 1.0
    detach_weight: bool = True
    normalize_weight: bool = False
    uncertainty_weighting: bool = True
    bce_weight: float = 0.0
    iou_weight: float = 0.0
    align_weight: float = 0.0
    monotone_weight: float = 0.0
    hitl: bool = True
    hitl_fraction: float = 0.3
    hitl_rounds: int = 4
    random_rounds: bool = False  # True: 1..hitl_rounds rounds per step (uniform); False: exactly hitl_rounds
    click_sampling: str = "uniform"  # uniform (seed code) | deepest (RITM) | mixed
    deepest_prob: float = 0.5  # for "mixed"
    jitter: float = 0.5  # ± sub-pixel jitter of simulated clicks (model pixels): eval clicks land between pixels

    def as_dict(self) -> dict:
        return asdict(self)


def sample_weights(u_sl: torch.Tensor, l_dice: torch.Tensor, cfg: LossConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 6–7: joint uncertainty u (B,) and weight w (B,), detached / max-normalised as configured."""
    u = cfg.beta * u_sl + l_dice
    if cfg.detach_weight:
        u = u.detach()
    w = torch.exp(cfg.lam * u)
    if cfg.normalize_weight:
        w = w / w.max().clamp(min=1e-12)
    if not cfg.uncertainty_weighting:
        w = torch.ones_like(w)
    return w, u


def ada_loss(l_dice: torch.Tensor, w: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Eq. 9: Σ v·w·l_dice / Σ v (0 when no sample is valid)."""
    v = valid.float()
    return (v * w * l_dice).sum() / v.sum().clamp(min=1.0)


def select_hard(u: torch.Tensor, fraction: float, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Indices of the ``k = max(1, round(fraction·B))`` most uncertain valid samples (descending u)."""
    scores = u.detach().float().clone()
    if valid is not None:
        scores[~valid] = -float("inf")
        count = int(valid.sum())
    else:
        count = scores.numel()
    k = min(count, max(1, int(round(fraction * scores.numel()))))
    if k <= 0:
        return torch.empty(0, dtype=torch.long, device=u.device)
    return torch.topk(scores, k).indices


def real_iou(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IoU of (logits > 0) with the binary target, per sample (B,); 1 when both are empty."""
    pred = logits.detach() > 0
    gt = target > 0.5
    inter = (pred & gt).flatten(1).sum(1).float()
    union = (pred | gt).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def mask_loss(logits: torch.Tensor, iou_pred: torch.Tensor, target: torch.Tensor, cfg: LossConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample Dice (B,) and the per-sample extras (BCE, IoU-head MSE) (B,)."""
    l_dice = dice_loss(logits, target)
    extra = torch.zeros_like(l_dice)
    if cfg.bce_weight:
        extra = extra + cfg.bce_weight * F.binary_cross_entropy_with_logits(
            logits.float(), target, reduction="none").flatten(1).mean(1)
    if cfg.iou_weight:
        extra = extra + cfg.iou_weight * (iou_pred[:, 0].float() - real_iou(logits, target)) ** 2
    return l_dice, extra


def monotone_loss(logits: torch.Tensor, prev_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample (B,) hinge ``max(0, dice(logits) − dice(prev_logits))``: how much a corrective click made the
    (soft) Dice loss worse than the mask it refined; ``prev_logits`` (B, 1, 256, 256) is a constant."""
    return torch.relu(dice_loss(logits, target) - dice_loss(prev_logits.detach(), target))


def simulated_click(logits: np.ndarray, target: np.ndarray, valid_hw: tuple[int, int], cfg: LossConfig,
                    rng: np.random.Generator) -> tuple[float, float, int] | None:
    """One corrective click (x, y, label) on the model grid from a (256, 256) logit map and its target."""
    h, w = valid_hw
    pred = logits[:h, :w] > 0
    gt = target[:h, :w] > 0.5
    method = cfg.click_sampling
    if method == "mixed":
        method = "deepest" if rng.random() < cfg.deepest_prob else "uniform"
    if method == "deepest":
        click = deepest_error_click(pred, gt)
    elif method == "uniform":
        click = uniform_error_click(pred, gt, rng)
    else:
        raise ValueError(f"unknown click sampling {cfg.click_sampling!r} (uniform | deepest | mixed)")
    if click is None:
        return None
    x, y, positive = click
    if cfg.jitter:
        x = float(np.clip(x + rng.uniform(-cfg.jitter, cfg.jitter), 0, w - 1))
        y = float(np.clip(y + rng.uniform(-cfg.jitter, cfg.jitter), 0, h - 1))
    return float(x), float(y), int(positive)


def pad_points(points: list[list[tuple[float, float, int]]], device) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Per-sample click lists → ((B, N, 2), (B, N)) padded with label -1 (SAM's "not a point"); None if all empty."""
    n = max((len(p) for p in points), default=0)
    if n == 0:
        return None
    coords = torch.zeros(len(points), n, 2)
    labels = torch.full((len(points), n), -1, dtype=torch.long)
    for i, sample in enumerate(points):
        for j, (x, y, label) in enumerate(sample):
            coords[i, j, 0], coords[i, j, 1], labels[i, j] = x, y, label
    return coords.to(device), labels.to(device)
