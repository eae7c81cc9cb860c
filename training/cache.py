"""Frozen-encoder embedding cache and the prepared (model-grid) training examples.

Cache layout (the same as :class:`core_model.predictor.InteractivePredictor`'s ``disk_cache``, so the evaluator and
the app reuse what training computed): ``<root>/<key[:2]>/<key>.pt`` holds the float16 embedding (1, 256, 64, 64) of
the image whose :func:`core_model.preprocess.content_key` (SHA-256 of the pixels, shape and dtype) is ``key``. The
horizontally flipped image is just another image: its pixels hash to their own key, so the flip augmentation is
computed once and cached like the original. Embeddings depend on the encoder weights: the cache is valid for the
frozen stock encoder only (``EmbeddingCache(root, tag=...)`` keeps a separate folder per encoder version). The
output of a frozen encoder trunk (:class:`training.lora.EncoderSplit`) is cached the same way, under its own tag.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from scipy import ndimage

from core_model.geometry import ResizePad
from core_model.model import normalise_label
from core_model.preprocess import content_key, to_model_input
from training.data import SegSample, SkipLog, check_sample

log = logging.getLogger("training.cache")

WHOLE_PHRASES = ("lungs", "lung", "both lungs", "lung fields")
LUNG_LABELS = {"left": "left lung", "right": "right lung", "whole": "lungs"}  # the object labels of a lung mask
SIDE_PHRASES = {  # patient's left is on the image right on a PA / AP film and on a radiological CT slice
    "left": ("left lung", "the left lung", "left lung field"),
    "right": ("right lung", "the right lung", "right lung field"),
}


class EmbeddingCache:
    """float16 embeddings per image content hash, on disk (atomic writes; damaged files are recomputed)."""

    def __init__(self, root: str | Path, tag: str = "") -> None:
        self.root = Path(root) / tag if tag else Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.hits = 0
        self.computed = 0
        self.encode_seconds = 0.0

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.pt"

    def load(self, key: str) -> torch.Tensor | None:
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=True).to(torch.float16)
        except Exception:
            path.unlink(missing_ok=True)
            return None

    def save(self, key: str, embedding: torch.Tensor) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{id(embedding)}")
        torch.save(embedding.detach().to("cpu", torch.float16).reshape(1, *embedding.shape[-3:]).clone(), tmp)
        tmp.replace(path)

    @torch.inference_mode()
    def embeddings(self, model, images: list[np.ndarray], device: str | torch.device = "cpu",
                   batch_size: int = 4, encode: Callable[[torch.Tensor], torch.Tensor] | None = None,
                   split: "SplitCache | None" = None) -> list[torch.Tensor]:
        """(256, 64, 64) float16 CPU embeddings of (H, W) images: from the cache, or encoded (and cached).
        ``encode`` replaces ``model.encode_image`` (e.g. an encoder trunk: its (C, S, S) features are cached);
        with ``split`` a missing embedding is the encoder head's output on the trunk features of ``split.cache``."""
        encode = encode or model.encode_image
        keys = [content_key(image) for image in images]
        out: list[torch.Tensor | None] = [self.load(k) for k in keys]
        todo = [i for i, e in enumerate(out) if e is None]
        self.hits += len(images) - len(todo)
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            t0 = time.perf_counter()
            if split is None:
                embedding = encode(torch.cat([to_model_input(images[i])[0] for i in chunk]).to(device)).float().cpu()
            else:
                features = torch.stack(split.features(model, [images[i] for i in chunk], device))
                embedding = split.head(features.float().to(device)).float().cpu()
            self.encode_seconds += time.perf_counter() - t0
            for j, i in enumerate(chunk):
                self.save(keys[i], embedding[j])
                out[i] = embedding[j].to(torch.float16)
            self.computed += len(chunk)
        return [e.reshape(e.shape[-3:]) for e in out]  # type: ignore[union-attr]


@dataclass
class SplitCache:
    """An encoder cut into a frozen trunk and a head (:class:`training.lora.EncoderSplit`) with the trunk's output
    cached per image content in ``cache`` (named after the trunk's weights)."""

    cache: EmbeddingCache
    trunk: Callable[[torch.Tensor], torch.Tensor]
    head: Callable[[torch.Tensor], torch.Tensor]

    def features(self, model, images: list[np.ndarray], device: str | torch.device = "cpu") -> list[torch.Tensor]:
        """(C, S, S) float16 trunk features of (H, W) images, cached."""
        return self.cache.embeddings(model, images, device=device, encode=self.trunk)


@dataclass
class TargetObject:
    """One object to segment on the model grid: a connected component (one lung) or the whole mask."""

    mask: torch.Tensor  # (256, 256) bool
    box: tuple[float, float, float, float]  # model-grid pixel-index box (x0, y0, x1, y1)
    phrases: tuple[str, ...]
    kind: str  # "component" | "whole" | "pseudo" (a data-engine target: clicks and boxes, no text)
    label: str | None = None  # what the object is, as an object label ("left lung", "kidney_left"); None: unnamed


@dataclass
class PreparedImage:
    """An image ready for decoder-only training: its cached embedding and its targets on the 256 model grid."""

    key: str
    source: str
    group: str
    flipped: bool
    embedding: torch.Tensor  # (256, 64, 64) float16
    geometry: ResizePad
    objects: list[TargetObject]
    clicks: list[tuple[float, float, int]] = field(default_factory=list)  # recorded clicks, model grid (x, y, label)
    image: torch.Tensor | None = None  # encoder (LoRA) training only: the float16 model input (3, 256, 256), or
    # the frozen trunk's output (C, S, S) when only the encoder's last stages train

    @property
    def valid(self) -> tuple[int, int]:
        return self.geometry.resized_shape


def _box(mask: np.ndarray) -> tuple[float, float, float, float]:
    ys, xs = np.nonzero(mask)
    return float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())


def model_grid_mask(mask: np.ndarray, geometry: ResizePad) -> torch.Tensor:
    """Original-grid bool mask → (256, 256) bool on the model grid (area-averaged, > 0.5)."""
    return geometry.mask_to_model(torch.from_numpy(np.ascontiguousarray(mask))[None, None])[0, 0] > 0.5


def _components(mask: np.ndarray, geometry: ResizePad, min_object_fraction: float):
    """(original-grid component, model-grid mask) of every connected component of a bool mask that is ≥
    ``min_object_fraction`` of the image and keeps ≥ 4 model-grid pixels."""
    labels, count = ndimage.label(mask)
    height, width = mask.shape
    min_pixels = max(1, int(min_object_fraction * height * width))
    sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, count + 1)) if count else []
    for index, size in enumerate(sizes, start=1):
        if size < min_pixels:
            continue
        component = labels == index
        grid = model_grid_mask(component, geometry)
        if int(grid.sum()) >= 4:
            yield component, grid


def mask_objects(mask: np.ndarray, geometry: ResizePad, min_object_fraction: float = 0.002,
                 whole: bool = True) -> list[TargetObject]:
    """Connected components of an original-grid mask (each ≥ ``min_object_fraction`` of the image) as model-grid
    targets with side phrases (centroid on the image right = patient's left), plus the whole mask ("lungs")."""
    width = mask.shape[1]
    objects = []
    for component, grid in _components(mask, geometry, min_object_fraction):
        cx = float(np.nonzero(component)[1].mean()) + 0.5
        side = "left" if cx > width / 2 else "right"
        objects.append(TargetObject(grid, _box(grid.numpy()), SIDE_PHRASES[side], "component",
                                    LUNG_LABELS[side]))
    if whole:
        grid = model_grid_mask(mask, geometry)
        if int(grid.sum()) >= 4:
            objects.append(TargetObject(grid, _box(grid.numpy()), WHOLE_PHRASES, "whole", LUNG_LABELS["whole"]))
    return objects


def structure_phrases(name: str) -> tuple[str, ...]:
    """A structure's text prompts: ``kidney_left`` → ("left kidney", "the left kidney"). The side is the patient's
    (radiological display: patient's left on the image right), as in the structure's name."""
    words = name.replace("_", " ").split()
    if words and words[-1] in ("left", "right"):
        words = [words[-1], *words[:-1]]
    readable = " ".join(words)
    return readable, f"the {readable}"


def structure_objects(labels: np.ndarray, structures: dict[int, str], geometry: ResizePad,
                      min_object_fraction: float = 0.0005) -> list[TargetObject]:
    """The connected components of every structure of an original-grid label image (each ≥
    ``min_object_fraction`` of the image) as model-grid click targets, phrased by the structure's name."""
    return [TargetObject(grid, _box(grid.numpy()), structure_phrases(name), "component", name)
            for value, name in sorted(structures.items())
            for _, grid in _components(labels == value, geometry, min_object_fraction)]


def labelled_objects(mask: np.ndarray, label: str, geometry: ResizePad,
                     min_object_fraction: float = 0.0005) -> list[TargetObject]:
    """A labelled object of an answer (the app's "Heart / cardiomediastinum", "Left lung", "Liver") as click targets:
    its connected components, named and phrased by the label (a lung's side phrases for the lungs' labels), never
    the lungs' phrases of an unlabelled mask."""
    name = normalise_label(label)
    sides = {v: k for k, v in LUNG_LABELS.items() if k != "whole"}
    phrases = SIDE_PHRASES[sides[name]] if name in sides else WHOLE_PHRASES if name == LUNG_LABELS["whole"] \
        else (name, f"the {name}")
    return [TargetObject(grid, _box(grid.numpy()), phrases, "component", label)
            for _, grid in _components(mask, geometry, min_object_fraction)]


def box_labels(names: Iterable[str]) -> list[str]:
    """A checkpoint's ``box_labels`` (``BiasCareModel.answers_boxes_for``) for objects trained under ``names``: each
    name and, for a TotalSegmentator structure, its app group ("vertebrae_L1" → "Vertebra"), normalised, sorted."""
    from core_model.classes import ct_structure_group

    names = list(names)
    groups = {ct_structure_group(name) for name in names} - {None}
    return sorted({normalise_label(label) for label in (*names, *groups)})


def trained_labels(prepared: Iterable[PreparedImage]) -> set[str]:
    """The labels of the named objects a run trains on (data-engine targets name nothing)."""
    return {o.label for image in prepared for o in image.objects if o.label is not None}


def _variants(sample: SegSample, pixels: np.ndarray, mask: np.ndarray, flip: bool, augment: int,
              augment_seed: int) -> list[tuple[np.ndarray, np.ndarray, bool, str]]:
    """(image, mask, flipped, key suffix): the sample, its h-flip, and ``augment`` random variants of each."""
    from training.augment import random_variant, variant_rng

    variants = [(pixels, mask, False, "")]
    if flip:
        variants.append((np.ascontiguousarray(pixels[:, ::-1]), np.ascontiguousarray(mask[:, ::-1]), True, "#flip"))
    for image, target, flipped, suffix in list(variants):
        for index in range(augment):
            rng = variant_rng(sample.key + suffix, index, augment_seed)
            variants.append((*random_variant(image, target, rng), flipped, f"{suffix}#aug{index}"))
    return variants


def prepare_images(samples: list[SegSample], model, cache: EmbeddingCache, skips: SkipLog, flip: bool = True,
                   device: str | torch.device = "cpu", keep_images: bool = False,
                   min_object_fraction: float = 0.002, progress: bool = False, augment: int = 0,
                   augment_seed: int = 0, split: SplitCache | None = None,
                   extra_objects: dict[str, list[TargetObject]] | None = None) -> list[PreparedImage]:
    """Load, check, embed (cached) and convert every sample (its h-flip, and ``augment`` random variants of each:
    :mod:`training.augment`) to :class:`PreparedImage`. Recorded clicks are kept on the unaugmented images only.
    ``keep_images`` keeps each image's encoder input: the model input, or with ``split`` the frozen trunk's output
    (and embeddings not cached yet are then computed by the head from the cached trunk output). ``extra_objects``:
    more targets per sample key (the data engine's), added to the unaugmented image only."""
    prepared: list[PreparedImage] = []
    iterator = samples
    if progress:
        from tqdm import tqdm

        iterator = tqdm(samples, desc="embeddings", unit="img", dynamic_ncols=True)
    for sample in iterator:
        loaded = check_sample(sample, skips)
        if loaded is None:
            continue
        pixels, mask = loaded
        if sample.structures or sample.unlabelled or sample.object_label:  # a flip would swap the patient's sides
            # (a structure's, a labelled object's: "Left lung" stays left); the label image is
            # not resampled; an unlabelled image's (engine) targets are on the unaugmented image only
            variants = [(pixels, mask, False, "")]
        else:
            variants = _variants(sample, pixels, mask, flip, augment, augment_seed)
        pixels_list = [v[0] for v in variants]
        embeddings = cache.embeddings(model, pixels_list, device=device, split=split)
        inputs: list[torch.Tensor | None] = [None] * len(variants)
        if keep_images and split is not None:
            inputs = list(split.features(model, pixels_list, device=device))
        elif keep_images:
            inputs = [to_model_input(image)[0][0].to(torch.float16) for image in pixels_list]
        for (image, target, flipped, suffix), embedding, encoder_input in zip(variants, embeddings, inputs):
            geometry = ResizePad(*image.shape)
            objects = (structure_objects(target, sample.structures, geometry) if sample.structures
                       else [] if sample.unlabelled
                       else labelled_objects(target, sample.object_label, geometry) if sample.object_label
                       else mask_objects(target, geometry, min_object_fraction))
            if not suffix:
                objects = objects + list((extra_objects or {}).get(sample.key, ()))
            if not objects:
                skips.skip("mask has no object large enough", sample.key)
                break
            clicks = []
            for c in (sample.clicks if "#aug" not in suffix else ()):
                x = float(c["x"]) if not flipped else image.shape[1] - 1 - float(c["x"])
                xy = geometry.to_model(np.array([x + 0.5, float(c["y"]) + 0.5])) - 0.5
                clicks.append((float(xy[0]), float(xy[1]), 1 if c.get("positive", True) else 0))
            prepared.append(PreparedImage(
                key=sample.key + suffix, source=sample.source, group=sample.group,
                flipped=flipped, embedding=embedding, geometry=geometry, objects=objects, clicks=clicks,
                image=encoder_input))
    return prepared
