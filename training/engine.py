"""One training step of the segmentation objective as an ``nn.Module`` (so DDP wraps exactly one forward/backward).

A step takes a batch of objects that share a prompt *mode* and *phase*:

* mode ``click`` (clicks alone), ``box`` (a box, then clicks) or ``text`` (a text prompt, then clicks);
* phase *initial* (no previous mask: the first click / the box / the text alone) or *continuation* (an earlier state
  of the object's click sequence: its clicks so far, one new corrective click and the previous low-res logits fed back
  as the mask prompt).

The forward pass computes the uncertainty-weighted Dice (Eq. 6, 7, 9) of this prediction, then the simulated HITL
rounds (Eq. 8, 10) on the hardest ``r·B`` samples, and returns the loss with the final click state of every sample,
which the trainer keeps so that the next visit of the object continues its sequence (training on long sequences —
up to ``max_clicks`` — without re-running them from the start).
"""
from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from core_model.uncertainty import mask_weighted_embedding, semantic_uncertainty
from training.losses import (LossConfig, ada_loss, mask_loss, monotone_loss, pad_points, real_iou, sample_weights,
                             select_hard, simulated_click)

Click = tuple[float, float, int]


@dataclass
class StepBatch:
    """Inputs of one step (B samples, one mode, one phase)."""

    targets: torch.Tensor  # (B, 1, 256, 256) float {0, 1}
    valid_hw: list[tuple[int, int]]  # resized (h, w) per sample: clicks are never placed in the padding
    concepts: list[str]  # the object's phrase, for u_sl (and the align loss)
    points: list[list[Click]]  # clicks so far, per sample (may be empty)
    embeddings: torch.Tensor | None = None  # (B, 256, 64, 64), or
    images: torch.Tensor | None = None  # encoder inputs (images, or trunk features) when the encoder (LoRA) trains
    boxes: torch.Tensor | None = None  # (B, 4) model grid, or None
    phrases: list[str] | None = None  # text prompt per sample, or None
    prev_logits: torch.Tensor | None = None  # (B, 1, 256, 256), or None (initial phase)
    mode: str = "click"


@dataclass
class StepOutput:
    loss: torch.Tensor
    parts: dict[str, float] = field(default_factory=dict)
    points: list[list[Click]] = field(default_factory=list)
    logits: torch.Tensor | None = None  # (B, 1, 256, 256) final detached logits per sample
    iou: torch.Tensor | None = None  # (B,) real IoU of the first prediction
    embeddings: torch.Tensor | None = None  # (B, 256, 64, 64) the image embeddings used, detached


class SegStep(nn.Module):
    """Loss of one step (see the module doc). ``encode``: encoder input → image embedding (LoRA training: the whole
    encoder or its head), run when a batch brings encoder inputs instead of embeddings. ``autocast``: bf16 autocast
    device type ("cuda", "cpu") or None."""

    def __init__(self, model: nn.Module, cfg: LossConfig, encode: Callable | None = None,
                 autocast: str | None = None, seed: int = 0) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.encode = encode
        self.autocast = autocast
        self.rng = np.random.default_rng(seed)

    def _precision(self) -> AbstractContextManager:
        """This step's bf16 autocast, or nothing (float32)."""
        return torch.autocast(self.autocast, dtype=torch.bfloat16) if self.autocast else nullcontext()

    def run_encoder(self, inputs: torch.Tensor) -> torch.Tensor:
        """The trained encoder (or its head) under this step's autocast."""
        if self.encode is None:
            raise RuntimeError("this step has no trained encoder: batches must bring embeddings")
        with self._precision():
            return self.encode(inputs)

    def decode(self, emb, points, boxes, prev, tokens):
        """The model's decode under this step's autocast; float32 (logits, iou)."""
        with self._precision():
            logits, iou = self.model.decode(emb, points, boxes, prev, tokens)
        return logits.float(), iou.float()

    def forward(self, batch: StepBatch) -> StepOutput:  # noqa: C901 (one readable recipe)
        cfg = self.cfg
        model = self.model
        emb = batch.embeddings if batch.embeddings is not None else self.run_encoder(batch.images)
        device = emb.device
        targets = batch.targets
        valid = targets.flatten(1).sum(1) > 0  # v_i
        tokens = model.language.tokens(batch.phrases) if batch.phrases else None
        points = pad_points(batch.points, device)
        logits, iou_pred = self.decode(emb, points, batch.boxes, batch.prev_logits, tokens)
        l_dice, extra = mask_loss(logits, iou_pred, targets, cfg)

        # Eq. 4-7: u_sl from the same embeddings and the language concept of the object
        need_grad_concept = not cfg.detach_weight
        with torch.set_grad_enabled(need_grad_concept and torch.is_grad_enabled()):
            concept = model.language.concept_embedding(batch.concepts)
            u_sl = semantic_uncertainty(emb.float(), logits if need_grad_concept else logits.detach(), concept)
        w, u = sample_weights(u_sl, l_dice, cfg)
        loss_ada = ada_loss(l_dice, w, valid) + (valid.float() * extra).sum() / valid.float().sum().clamp(min=1)
        loss = loss_ada
        parts = {"dice": float(l_dice.detach().mean()), "u_sl": float(u_sl.detach().mean()),
                 "w": float(w.detach().mean()), "ada": float(loss_ada.detach())}
        if cfg.monotone_weight and batch.prev_logits is not None:
            hurt = monotone_loss(logits, batch.prev_logits, targets)
            loss = loss + cfg.monotone_weight * (valid.float() * hurt).sum() / valid.float().sum().clamp(min=1)
            parts["monotone"] = float(hurt.detach().mean())

        if cfg.align_weight:
            target_logits = (targets * 2 - 1) * 10.0  # the true object as a (saturated) confidence map
            v_true = mask_weighted_embedding(emb.float().detach(), target_logits)
            concept_grad = model.language.concept_embedding(batch.concepts)
            align = (1 - torch.nn.functional.cosine_similarity(v_true, concept_grad.float(), dim=1))
            loss_align = (valid.float() * align).sum() / valid.float().sum().clamp(min=1)
            loss = loss + cfg.align_weight * loss_align
            parts["align"] = float(loss_align.detach())

        # Eq. 8, 10: simulated HITL on the hardest samples
        cur_points = [list(p) for p in batch.points]
        cur_logits = logits.detach().clone()
        first_iou = real_iou(logits, targets)
        if cfg.hitl and cfg.hitl_rounds > 0 and cfg.hitl_fraction > 0 and bool(valid.any()):
            hard = select_hard(u, cfg.hitl_fraction, valid).tolist()
            rounds = int(self.rng.integers(1, cfg.hitl_rounds + 1)) if cfg.random_rounds else cfg.hitl_rounds
            target_np = targets[:, 0].detach().cpu().numpy()
            hitl_total, hitl_count = 0.0, 0
            loss_hitl = torch.zeros((), device=device)
            for _ in range(rounds):
                logits_np = cur_logits[:, 0].float().cpu().numpy()
                active = []
                for i in hard:
                    click = simulated_click(logits_np[i], target_np[i], batch.valid_hw[i], cfg, self.rng)
                    if click is not None:
                        cur_points[i].append(click)
                        active.append(i)
                if not active:
                    break
                index = torch.tensor(active, device=device)
                sub_points = pad_points([cur_points[i] for i in active], device)
                sub_boxes = batch.boxes[index] if batch.boxes is not None else None
                sub_tokens = tokens[index] if tokens is not None else None
                refined, refined_iou = self.decode(emb[index], sub_points, sub_boxes, cur_logits[index], sub_tokens)
                r_dice, r_extra = mask_loss(refined, refined_iou, targets[index], cfg)
                loss_hitl = loss_hitl + (r_dice + r_extra).sum()
                if cfg.monotone_weight:
                    hurt = monotone_loss(refined, cur_logits[index], targets[index])
                    loss_hitl = loss_hitl + cfg.monotone_weight * hurt.sum()
                hitl_total += float(r_dice.detach().sum())
                hitl_count += len(active)
                cur_logits[index] = refined.detach()
            if hitl_count:
                loss = loss + loss_hitl / hitl_count
                parts["hitl_dice"] = hitl_total / hitl_count
        parts["loss"] = float(loss.detach())
        parts["iou"] = float(first_iou.mean())
        return StepOutput(loss=loss, parts=parts, points=cur_points, logits=cur_logits, iou=first_iou,
                          embeddings=emb.detach())
