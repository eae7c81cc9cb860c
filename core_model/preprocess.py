"""Original image → model input, as LiteMedSAM was trained: resize longest side to 256, min–max normalise, pad."""
from __future__ import annotations

import hashlib

import numpy as np
import torch

from core_model.geometry import MODEL_SIZE, ResizePad


def as_gray_float(image: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, C) array of any numeric dtype → (H, W) float32 (channels averaged, alpha ignored)."""
    array = np.asarray(image)
    if array.ndim == 3:
        array = array[..., :3].mean(axis=-1) if array.shape[-1] >= 3 else array[..., 0]
    if array.ndim != 2 or array.size == 0:
        raise ValueError(f"expected a non-empty 2-D image, got shape {array.shape}")
    return array.astype(np.float32, copy=False)


def to_model_input(image: np.ndarray, size: int = MODEL_SIZE) -> tuple[torch.Tensor, ResizePad]:
    """(H, W) grayscale image → model input (1, 3, size, size) in [0, 1] and its :class:`ResizePad` geometry.

    The resized region is min–max normalised (LiteMedSAM's preprocessing), then zero-padded bottom/right.
    """
    gray = as_gray_float(image)
    geometry = ResizePad(gray.shape[0], gray.shape[1], size)
    tensor = torch.from_numpy(np.ascontiguousarray(gray))[None, None]
    new_h, new_w = geometry.resized_shape
    resized = torch.nn.functional.interpolate(tensor, size=(new_h, new_w), mode="bilinear", align_corners=False,
                                              antialias=True)
    low, high = resized.min(), resized.max()
    resized = (resized - low) / torch.clamp(high - low, min=1e-8)
    padded = torch.nn.functional.pad(resized, (0, size - new_w, 0, size - new_h))
    return padded.expand(-1, 3, -1, -1).contiguous(), geometry


def content_key(image: np.ndarray) -> str:
    """SHA-256 of the pixel content, shape and dtype: the key of the embedding caches."""
    array = np.ascontiguousarray(image)
    digest = hashlib.sha256(f"{array.shape}|{array.dtype}".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()
