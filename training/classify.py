"""Multi-label classification heads (CXR-LT classes) on frozen image embeddings, with a long-tail-aware loss.

Data: the CXR-LT ``train_labeled.csv`` layout (:func:`training.data.cxrlt_samples`); a blank cell is *not assessed*
and is masked out of the loss (and of the metrics). Features: the head's own pooling (mean ‖ max of the cached
embedding), computed once; only ``MultiLabelHead.net`` trains.

Losses (``loss=``):
* ``logit-adjusted`` (default): BCE on ``logit + τ·log(π/(1−π))`` with π the class prior (CXR-LT 2024 train
  positive rate, :data:`core_model.classes.TRAIN_POSITIVE_COUNTS`); at inference the raw logit is used, which shifts
  decisions toward rare classes (Menon et al., ICLR 2021, binary form).
* ``asl``: asymmetric loss (Ridnik et al., ICCV 2021; γ+ = 0, γ− = 4, clip 0.05).
* ``bce``: plain masked BCE.

Classes never assessed in the training data keep an untrained head output: their final bias is set to the prior logit
so the head outputs the CXR-LT prior for them; the checkpoint lists the trained classes.
Per-class thresholds (the head's ``thresholds`` buffer) are tuned on the validation split (max Youden J) for classes
with both labels there, else left at the prior-free default 0.5.
"""
from __future__ import annotations

import logging


import numpy as np
import torch
import torch.nn.functional as F

from core_model.classes import TRAIN_IMAGES, TRAIN_POSITIVE_COUNTS
from training.cache import EmbeddingCache
from training.data import ClsSample, load_pixels, split_by_group

log = logging.getLogger("training.classify")


def prior_logits(classes: tuple[str, ...]) -> torch.Tensor:
    p = torch.tensor([max(TRAIN_POSITIVE_COUNTS.get(c, 1), 1) / TRAIN_IMAGES for c in classes], dtype=torch.float32)
    return torch.log(p / (1 - p))


def masked_loss(logits: torch.Tensor, labels: torch.Tensor, kind: str, prior: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """Mean loss over the assessed entries (labels ≥ 0) only."""
    mask = labels >= 0
    target = labels.clamp(min=0).float()
    if kind == "logit-adjusted":
        z = logits + tau * prior
        loss = F.binary_cross_entropy_with_logits(z, target, reduction="none")
    elif kind == "bce":
        loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    elif kind == "asl":
        p = torch.sigmoid(logits)
        p_neg = (p - 0.05).clamp(min=0)
        loss_pos = target * torch.log(p.clamp(min=1e-8))
        loss_neg = (1 - target) * torch.log((1 - p_neg).clamp(min=1e-8)) * p_neg.pow(4)
        loss = -(loss_pos + loss_neg)
    else:
        raise ValueError(f"unknown classification loss {kind!r} (logit-adjusted | asl | bce)")
    return (loss * mask).sum() / mask.sum().clamp(min=1)


def auroc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Rank-based AUROC (Mann–Whitney); None without both classes."""
    from scipy.stats import rankdata

    pos, neg = int((labels == 1).sum()), int((labels == 0).sum())
    if pos == 0 or neg == 0:
        return None
    ranks = rankdata(scores)
    return float((ranks[labels == 1].sum() - pos * (pos + 1) / 2) / (pos * neg))


def pooled_features(model, samples: list[ClsSample], cache: EmbeddingCache, device="cpu") -> torch.Tensor:
    from core_model.model import MultiLabelHead

    feats = []
    for start in range(0, len(samples), 8):
        chunk = samples[start:start + 8]
        emb = cache.embeddings(model, [load_pixels(s.path) for s in chunk], device=device)
        feats.append(MultiLabelHead.pool(torch.stack(emb).float()))
    return torch.cat(feats)


def train_classifier(model, samples: list[ClsSample], csv_classes: tuple[str, ...], cache: EmbeddingCache,
                     label_sets: tuple[str, ...] = ("cxr-lt-26", "cxr-lt-40"), loss: str = "logit-adjusted",
                     epochs: int = 200, lr: float = 1e-3, weight_decay: float = 1e-2, holdout: float = 0.2,
                     seed: int = 0, device="cpu") -> dict:
    """Train the heads of ``label_sets`` in place; returns metrics (per-class validation AUROC, trained classes)."""
    train, val = split_by_group(samples, holdout, seed)
    torch.manual_seed(seed)
    with torch.no_grad():
        features = pooled_features(model, train + val, cache, device)
    f_train, f_val = features[: len(train)], features[len(train):]
    results = {"n_train": len(train), "n_val": len(val), "loss": loss, "heads": {}}
    for name in label_sets:
        head = model.classifiers[name]
        classes = head.classes
        labels = torch.tensor([[s.labels.get(c, -1) for c in classes] for s in train + val])
        y_train, y_val = labels[: len(train)], labels[len(train):]
        assessed = (y_train >= 0).any(0) & ((y_train == 1).any(0))
        prior = prior_logits(classes)
        head.train()
        for parameter in head.parameters():
            parameter.requires_grad_(True)
        optimizer = torch.optim.AdamW(head.net.parameters(), lr=lr, weight_decay=weight_decay)
        curve = []
        for epoch in range(epochs):
            torch.set_grad_enabled(True)
            optimizer.zero_grad()
            logits = head.net(f_train)
            value = masked_loss(logits, y_train, loss, prior)
            if not torch.isfinite(value):
                raise RuntimeError(f"classifier {name}: non-finite loss at epoch {epoch}")
            value.backward()
            optimizer.step()
            curve.append(float(value))
        head.eval()
        with torch.no_grad():
            last = head.net[-1]
            last.bias[~assessed] = prior[~assessed]
            last.weight[~assessed] = 0.0
            probs_val = torch.sigmoid(head.net(f_val)).numpy() if len(val) else np.zeros((0, len(classes)))
            thresholds = head.thresholds.clone()
            per_class = {}
            for k, c in enumerate(classes):
                if not bool(assessed[k]):
                    continue
                lab = y_val[:, k].numpy()
                keep = lab >= 0
                a = auroc(probs_val[keep, k], lab[keep]) if keep.any() else None
                per_class[c] = {"auroc": a, "val_pos": int((lab == 1).sum()), "val_neg": int((lab == 0).sum()),
                                "train_pos": int((y_train[:, k] == 1).sum())}
                if a is not None:
                    scores, truth = probs_val[keep, k], lab[keep]
                    best, best_t = -1.0, 0.5
                    for t in np.unique(scores):
                        j = ((scores >= t) & (truth == 1)).sum() / max(1, (truth == 1).sum()) - \
                            ((scores >= t) & (truth == 0)).sum() / max(1, (truth == 0).sum())
                        if j > best:
                            best, best_t = float(j), float(t)
                    thresholds[k] = best_t
                    per_class[c]["threshold"] = best_t
            head.thresholds.copy_(thresholds)
        aucs = [v["auroc"] for v in per_class.values() if v["auroc"] is not None]
        results["heads"][name] = {"trained_classes": [c for k, c in enumerate(classes) if bool(assessed[k])],
                                  "macro_auroc_val": float(np.mean(aucs)) if aucs else None,
                                  "per_class": per_class, "loss_curve": curve[:: max(1, len(curve) // 50)],
                                  "final_loss": curve[-1] if curve else None}
        log.info("classifier %s: %d trained classes, val macro AUROC %s", name,
                 len(results["heads"][name]["trained_classes"]), results["heads"][name]["macro_auroc_val"])
    return results


__all__ = ["train_classifier", "masked_loss", "auroc", "prior_logits", "pooled_features"]
