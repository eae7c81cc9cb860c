"""LoRA on the TinyViT image encoder via peft (paper: rank 8, α 16), on all stages or on the last ones only.

Targets the attention projections (``qkv`` and ``proj`` Linear layers) of the TinyViT blocks. The base weights stay
frozen; only the LoRA A/B matrices train. :func:`merge_lora` folds them into the plain encoder so the project
checkpoint (``include_encoder``) loads into an unmodified :class:`core_model.model.BiasCareModel`.

With ``stages = K`` only the last K of TinyViT's 4 stages get adapters. The encoder is then split in two
(:class:`EncoderSplit`): the frozen *trunk* (patch embedding and the first 4 − K stages), whose output is computed
once per image and cached like an embedding, and the trained *head* (the last K stages and the neck), run at every
step. On the 2-core CPU the last stage costs about a sixth of the encoder's forward pass, which is what makes encoder
training affordable there.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

DEFAULT_TARGETS = ("qkv", "proj")
NUM_STAGES = 4  # TinyViT: one conv stage, three transformer stages


def _check_stages(stages: int | None) -> int:
    stages = NUM_STAGES if stages is None else int(stages)
    if not 1 <= stages <= NUM_STAGES:
        raise ValueError(f"LoRA stages must be 1..{NUM_STAGES - 1} (a split encoder) or {NUM_STAGES} (all), "
                         f"got {stages}")
    return stages


def add_lora(model, r: int = 8, alpha: int = 16, dropout: float = 0.0,
             targets: tuple[str, ...] = DEFAULT_TARGETS, stages: int | None = None) -> int:
    """Wrap ``model.image_encoder`` with peft LoRA adapters in place (on its last ``stages`` stages; all when None);
    returns the number of trainable parameters."""
    from peft import LoraConfig, get_peft_model

    stages = _check_stages(stages)
    first = NUM_STAGES - stages
    names = "|".join(targets)
    layers = "|".join(str(i) for i in range(first, NUM_STAGES))
    # a regex string is matched against the whole module name (e.g. "layers.3.blocks.0.attn.qkv")
    pattern = rf".*layers\.({layers})\..*\.({names})"
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=pattern, bias="none")
    model.image_encoder = get_peft_model(model.image_encoder, config)
    return sum(p.numel() for p in model.image_encoder.parameters() if p.requires_grad)


def has_lora(model) -> bool:
    return hasattr(model.image_encoder, "merge_and_unload")


def merge_lora(model) -> None:
    """Fold the adapters into the encoder weights and restore the plain TinyViT module."""
    if has_lora(model):
        merged: nn.Module = model.image_encoder.merge_and_unload()
        model.image_encoder = merged


def tiny_vit(model) -> nn.Module:
    """The TinyViT module itself (inside peft's wrapper when adapters are attached)."""
    encoder = model.image_encoder
    return encoder.get_base_model() if hasattr(encoder, "get_base_model") else encoder


class EncoderSplit:
    """TinyViT cut before its last ``stages`` stages.

    ``trunk(images)``: (B, 3, 256, 256) → features (B, C, S, S), the output of stage 4 − K laid out as an image
    (C = 320, S = 64 for K = 1); ``head(features)`` → the image embedding (B, 256, 64, 64). ``head(trunk(x))``
    equals ``encoder(x)``. Both read the model's current encoder, so they follow LoRA training and merging.
    """

    def __init__(self, model, stages: int) -> None:
        self.model = model
        self.stages = _check_stages(stages)
        if self.stages == NUM_STAGES:
            raise ValueError("a split needs at least one frozen stage (stages ≤ 3)")

    @property
    def _cut(self) -> int:
        return NUM_STAGES - self.stages

    def trunk(self, images: torch.Tensor) -> torch.Tensor:
        encoder = tiny_vit(self.model)
        x = encoder.patch_embed(images)
        for layer in encoder.layers[: self._cut]:
            x = layer(x)
        if x.dim() == 3:  # (B, L, C) tokens → (B, C, S, S)
            side = math.isqrt(x.shape[1])
            x = x.transpose(1, 2).reshape(x.shape[0], x.shape[2], side, side)
        return x

    def head(self, features: torch.Tensor) -> torch.Tensor:
        encoder = tiny_vit(self.model)
        x = features.flatten(2).transpose(1, 2)  # (B, C, S, S) → (B, L, C)
        for layer in encoder.layers[self._cut:]:
            x = layer(x)
        b, length, c = x.shape
        side = math.isqrt(length)
        return encoder.neck(x.view(b, side, side, c).permute(0, 3, 1, 2))
