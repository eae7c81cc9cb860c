"""Uncertainty scores (paper Eq. 3–6) and the worklist ranking score.

Segmentation
    * ``u_sl`` (Eq. 3–5): the mask-weighted global visual embedding ``v = Σ z_img↑(x,y)·P(x,y) / (Σ P + ε)`` — the
      embedding bilinearly upsampled to the 256² logit grid, weighted by the confidence map ``P = sigmoid(logits)``,
      ε = 1e-6 — compared with the pooled language embedding: ``u_sl = 1 − cos(v, z')`` ∈ [0, 2].
      Upsampling is linear, so ``Σ z↑·P = Σ z·(Uᵀ P)``: we apply the adjoint of the upsampling to P (a 256² → 64²
      matrix product) instead of materialising a 256×256×256 tensor. Same number, ~100× less memory.
    * joint (Eq. 6, training/evaluation only): ``u = β·u_sl + l_dice``, β = 0.5.
    * ``iou_gap = 1 − predicted IoU`` from SAM's IoU head.
    * ``tta``: disagreement under cheap decoder-side perturbations (prompt jitter, previous-mask dropout): 1 − mean IoU
      of the perturbed masks with the unperturbed one. No re-encoding, one batched decoder pass.
    * ``ranking`` — the documented combined score for the worklist (higher = review first): the mean of ``iou_gap``
      and ``tta`` (each in [0, 1]). ``u_sl / 2`` joins the mean only with ``RANK_WITH_SEMANTIC = True``: on the shipped
      checkpoint's held-out CXRs u_sl carried no signal (Spearman with 1 − IoU 0.07, assets/model/MODEL_CARD.md) while
      ``iou_gap`` flagged IoU < 0.9 with AUROC 0.88, so it is shown to the reader but does not reorder the worklist.

Classification: per-class normalised binary entropy H(p)/ln 2 ∈ [0, 1], and per case the mean entropy and the
smallest margin ``|p − operating point|`` over the classes that have one (a small margin = a suggestion that could
flip); triage takes the operating points from the findings card.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

EPS = 1e-6
BETA = 0.5
RANK_WITH_SEMANTIC = False


@dataclass(frozen=True)
class SegmentationUncertainty:
    """Uncertainty components of one predicted mask; ``u_sl`` is None without a trained language pathway."""

    iou_gap: float
    tta: float
    u_sl: float | None
    ranking: float

    def as_dict(self) -> dict[str, float | None]:
        return asdict(self)


@lru_cache(maxsize=8)
def _bilinear_matrix(out_size: int, in_size: int) -> torch.Tensor:
    """(out, in) matrix R with R @ x == F.interpolate(x, out, bilinear, align_corners=False) along one axis."""
    eye = torch.eye(in_size).reshape(in_size, 1, in_size)  # in_size signals of length in_size
    return F.interpolate(eye, size=out_size, mode="linear", align_corners=False).reshape(in_size, out_size).T.contiguous()


def mask_weighted_embedding(embedding: torch.Tensor, logits: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Eq. 3: (B, C, h, w) embedding and (B, 1, H, W) logits → (B, C) mask-weighted visual embedding."""
    probs = torch.sigmoid(logits.float())[:, 0]  # (B, H, W)
    h, w = embedding.shape[-2:]
    rows = _bilinear_matrix(probs.shape[-2], h).to(probs.device)  # (H, h)
    cols = _bilinear_matrix(probs.shape[-1], w).to(probs.device)  # (W, w)
    weights = rows.T @ probs @ cols  # (B, h, w): the adjoint of the upsampling applied to P
    numerator = torch.einsum("bchw,bhw->bc", embedding.float(), weights)
    return numerator / (probs.sum(dim=(1, 2)).unsqueeze(1) + eps)


def semantic_uncertainty(embedding: torch.Tensor, logits: torch.Tensor, concept: torch.Tensor) -> torch.Tensor:
    """Eq. 4–5: u_sl = 1 − cos(v, z') per sample, (B,). ``concept`` is the pooled language embedding (B, C)."""
    visual = mask_weighted_embedding(embedding, logits)
    return 1.0 - F.cosine_similarity(visual, concept.float(), dim=1, eps=EPS)


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft Dice loss per sample, (B,), for logits and binary targets of shape (B, 1, H, W)."""
    probs = torch.sigmoid(logits.float())
    dims = tuple(range(1, probs.ndim))
    intersection = (probs * target).sum(dims)
    return 1.0 - (2 * intersection + eps) / (probs.sum(dims) + target.sum(dims) + eps)


def joint_uncertainty(u_sl: torch.Tensor, l_dice: torch.Tensor, beta: float = BETA) -> torch.Tensor:
    """Eq. 6: u = β·u_sl + l_dice (needs ground truth: training and evaluation)."""
    return beta * u_sl + l_dice


def mask_disagreement(reference: torch.Tensor, perturbed: torch.Tensor) -> float:
    """1 − mean IoU between a reference logit map (1, 1, H, W) and K perturbed ones (K, 1, H, W)."""
    ref = reference > 0
    other = perturbed > 0
    intersection = (ref & other).sum(dim=(1, 2, 3)).float()
    union = (ref | other).sum(dim=(1, 2, 3)).float()
    iou = torch.where(union > 0, intersection / union.clamp(min=1), torch.ones_like(union))
    return float(1.0 - iou.mean())


def ranking_score(iou_gap: float, tta: float, u_sl: float | None) -> float:
    """The worklist score: mean of the components in [0, 1] (u_sl/2 only with ``RANK_WITH_SEMANTIC``)."""
    parts = [min(max(iou_gap, 0.0), 1.0), min(max(tta, 0.0), 1.0)]
    if u_sl is not None and RANK_WITH_SEMANTIC:
        parts.append(min(max(u_sl / 2.0, 0.0), 1.0))
    return sum(parts) / len(parts)


def binary_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Normalised binary entropy H(p)/ln 2 ∈ [0, 1], elementwise."""
    p = probs.float().clamp(EPS, 1 - EPS)
    return -(p * p.log() + (1 - p) * (1 - p).log()) / math.log(2)


def classification_uncertainty(probs: torch.Tensor, thresholds: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-class entropy (B, C), per-case mean entropy (B,) and smallest margin ``|p − threshold|`` (B,).

    ``thresholds`` (C,): the operating points; a non-finite one (a class never suggested) has no margin. Without any
    finite threshold the margin is NaN (nothing can flip)."""
    entropy = binary_entropy(probs)
    thresholds = thresholds.to(probs.device, torch.float32)
    finite = torch.isfinite(thresholds)
    if finite.any():
        margin = (probs.float()[:, finite] - thresholds[finite]).abs().amin(dim=1)
    else:
        margin = torch.full((probs.shape[0],), float("nan"), device=probs.device)
    return {"per_class_entropy": entropy, "case_entropy": entropy.mean(dim=1), "case_min_margin": margin}
