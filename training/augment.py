"""Image-space augmentation for frozen-encoder training: each variant is a new image whose embedding is computed once
and cached by content hash like any other, so decoder-only training sees more than the few real images.

A variant applies, to the image and its mask alike, a random similarity transform about the image centre (scale,
rotation, shift; bilinear for the image, bilinear then > 0.5 for the mask, black outside = air) and then, to the image
only, a random gamma and a small linear contrast/brightness change. Variants are deterministic: the generator is seeded
from the sample key, the variant index and a run seed, so the same command hits the same cached embeddings.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class AugmentConfig:
    scale: tuple[float, float] = (0.88, 1.12)
    max_rotation_deg: float = 8.0
    max_shift: float = 0.05  # fraction of the image size, per axis
    gamma: tuple[float, float] = (0.7, 1.4)
    contrast: tuple[float, float] = (0.9, 1.1)
    brightness: float = 0.05
    max_side: int = 1024  # transform at most at this size: the model sees 256 px


def variant_rng(key: str, index: int, seed: int = 0) -> np.random.Generator:
    """The generator of variant ``index`` of sample ``key`` (stable across runs and machines)."""
    digest = hashlib.sha256(f"{seed}:{index}:{key}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _resize(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    from skimage.transform import resize

    return resize(array, shape, order=1, anti_aliasing=True, preserve_range=True).astype(np.float32)


def random_variant(pixels: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
                   cfg: AugmentConfig = AugmentConfig()) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) float [0, 1] image and (H, W) bool mask → one augmented pair (h, w), h/w ≤ ``cfg.max_side``."""
    from skimage.transform import SimilarityTransform, warp

    image = np.asarray(pixels, dtype=np.float32)
    target = np.asarray(mask, dtype=np.float32)
    h, w = image.shape
    factor = min(1.0, cfg.max_side / max(h, w))
    if factor < 1.0:
        shape = (max(1, round(h * factor)), max(1, round(w * factor)))
        image, target = _resize(image, shape), _resize(target, shape)
        h, w = shape
    centre = np.array([w / 2.0, h / 2.0])
    shift = rng.uniform(-cfg.max_shift, cfg.max_shift, size=2) * np.array([w, h])
    transform = (SimilarityTransform(translation=-centre)
                 + SimilarityTransform(scale=rng.uniform(*cfg.scale),
                                       rotation=np.deg2rad(rng.uniform(-cfg.max_rotation_deg, cfg.max_rotation_deg)))
                 + SimilarityTransform(translation=centre + shift))
    image = warp(image, transform.inverse, order=1, mode="constant", cval=0.0, preserve_range=True)
    target = warp(target, transform.inverse, order=1, mode="constant", cval=0.0, preserve_range=True) > 0.5
    image = np.clip(image, 0.0, 1.0) ** np.exp(rng.uniform(np.log(cfg.gamma[0]), np.log(cfg.gamma[1])))
    image = image * rng.uniform(*cfg.contrast) + rng.uniform(-cfg.brightness, cfg.brightness)
    return np.clip(image, 0.0, 1.0).astype(np.float32), target
