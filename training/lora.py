"""LoRA on the TinyViT image encoder via peft (paper: rank 8, α 16).

Targets the attention projections of every TinyViT block (``qkv`` and ``proj`` Linear layers) by default. The base
weights stay frozen; only the LoRA A/B matrices train. :func:`merge_lora` folds them into the plain encoder so the
project checkpoint (``include_encoder=True``) loads into an unmodified :class:`core_model.model.BiasCareModel`.
"""
from __future__ import annotations

import torch.nn as nn

DEFAULT_TARGETS = ("qkv", "proj")


def add_lora(model, r: int = 8, alpha: int = 16, dropout: float = 0.0,
             targets: tuple[str, ...] = DEFAULT_TARGETS) -> int:
    """Wrap ``model.image_encoder`` with peft LoRA adapters in place; returns the number of trainable parameters."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets), bias="none")
    model.image_encoder = get_peft_model(model.image_encoder, config)
    return sum(p.numel() for p in model.image_encoder.parameters() if p.requires_grad)


def has_lora(model) -> bool:
    return hasattr(model.image_encoder, "merge_and_unload")


def merge_lora(model) -> None:
    """Fold the adapters into the encoder weights and restore the plain TinyViT module."""
    if has_lora(model):
        merged: nn.Module = model.image_encoder.merge_and_unload()
        model.image_encoder = merged
