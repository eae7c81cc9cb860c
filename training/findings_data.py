"""Findings-classifier data: the labelled NIH ChestX-ray14 images, their patient split, and cached encoder features.

Sources (``../shared/data``; NIH Clinical Center, https://nihcc.app.box.com/v/ChestXray-NIHCC, Wang et al.,
ChestX-ray8, CVPR 2017):

* ``nih_cxr14_sample/``: 142 full-resolution (1024²) images, one per patient, labels in the CXR-LT layout
  (``labels_cxrlt2024_format.csv``; the 25 CXR-LT classes NIH does not label are blank = not assessed);
* ``nih_cxr14_train256/``: 549 images at 256², NIH layout (``labels.csv``: ``Finding Labels`` joined by ``|``),
  mapped to CXR-LT names as ``label_mapping_nih14_to_cxrlt2024.json`` does (:data:`core_model.classes.
  NIH14_TO_CXRLT`; "No Finding" → Normal).

No patient is in both folders. :func:`make_split` splits by patient into train / validation / demo; the demo set
comes from the full-resolution folder only and always holds the patients of the app's demo images.

Features (:func:`stage_features`): one encoder pass per image with the outputs of the four TinyViT stages and the
neck pooled (mean, max, standard deviation, 2×2 quadrant means); cached per image and view on disk
(:class:`FeatureCache`), so a run that stops resumes where it was.
"""
from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from core_model.io.cxrlt import FindingsTableError, read_labels
from training.data import ClsSample, DataError, load_pixels

log = logging.getLogger("training.findings_data")

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SAMPLE_DIR = SHARED / "nih_cxr14_sample"
TRAIN256_DIR = SHARED / "nih_cxr14_train256"
DEMO_IMAGES = ("00004030_000", "00009822_000", "00010292_000", "00019367_000")
SPLIT_RULE = ("by NIH Patient ID; demo = the patients of the app's 4 demo images + random patients of "
              "nih_cxr14_sample (full resolution) up to {demo} images; validation = {val:.0%} of the remaining "
              "patients (both folders), shuffled with the seed; train = the rest")
STAGES = ("stage1", "stage2", "stage3", "stage4", "neck")


def nih_samples(csv_path: str | Path, image_root: str | Path | None = None) -> list[ClsSample]:
    """NIH ``Data_Entry`` layout (``Image Index, Finding Labels, Patient ID``; read by
    :func:`core_model.io.cxrlt.read_labels`) → samples with CXR-LT labels grouped by patient.

    The 15 mapped classes are assessed (1/0) on every image; every other class is absent (= not assessed)."""
    csv_path = Path(csv_path)
    root = Path(image_root) if image_root else csv_path.parent / "images"
    try:
        rows = read_labels(csv_path)
    except FindingsTableError as error:
        raise DataError(str(error)) from None
    samples = []
    for row in rows:
        path = root / row.file
        if not path.is_file():
            raise DataError(f"{csv_path}: {row.file} not found under {root}")
        if row.patient is None:
            raise DataError(f"{csv_path}: {row.file}: no Patient ID (the split is by patient)")
        samples.append(ClsSample(key=row.image_id, group=f"nih:{int(row.patient)}", path=path, labels=row.labels))
    return samples


def all_samples(shared: str | Path = SHARED) -> tuple[list[ClsSample], list[ClsSample]]:
    """(full-resolution sample, 256² training folder) as samples with CXR-LT labels and patient groups."""
    shared = Path(shared)
    full = nih_samples(shared / "nih_cxr14_sample" / "Data_Entry_2017_v2020_subset.csv")
    small = nih_samples(shared / "nih_cxr14_train256" / "labels.csv")
    clash = {s.group for s in full} & {s.group for s in small}
    if clash:
        raise DataError(f"patients in both folders: {sorted(clash)[:5]}")
    return full, small


def make_split(full: list[ClsSample], small: list[ClsSample], demo_images: Iterable[str] = DEMO_IMAGES,
               demo_size: int = 40, val_share: float = 0.22, seed: int = 0) -> dict:
    """Patient-disjoint train / validation / demo split (image ids = file stems), as written to
    ``assets/model/findings_split.json``."""
    rng = random.Random(seed)
    by_key = {s.key: s for s in full}
    missing = [k for k in demo_images if k not in by_key]
    if missing:
        raise DataError(f"demo images not in the full-resolution folder: {missing}")
    demo_groups = {by_key[k].group for k in demo_images}
    others = sorted({s.group for s in full} - demo_groups)
    rng.shuffle(others)
    for group in others:
        if sum(s.group in demo_groups for s in full) >= demo_size:
            break
        demo_groups.add(group)
    rest = [s for s in full + small if s.group not in demo_groups]
    groups = sorted({s.group for s in rest})
    rng.shuffle(groups)
    val_groups = set(groups[: math.floor(val_share * len(groups) + 0.5)])
    split = {"seed": seed, "rule": SPLIT_RULE.format(demo=demo_size, val=val_share),
             "train": sorted(s.key for s in rest if s.group not in val_groups),
             "validation": sorted(s.key for s in rest if s.group in val_groups),
             "demo": sorted(s.key for s in full if s.group in demo_groups)}
    split["patients"] = {"train": len(set(groups) - val_groups), "validation": len(val_groups),
                         "demo": len(demo_groups)}
    return split


def write_split(split: dict, folder: str | Path) -> None:
    """``findings_split.json`` + plain id lists ``findings_demo_ids.txt`` / ``findings_validation_ids.txt``."""
    folder = Path(folder)
    (folder / "findings_split.json").write_text(json.dumps(split, indent=1) + "\n")
    for part in ("demo", "validation"):
        (folder / f"findings_{part}_ids.txt").write_text("\n".join(split[part]) + "\n")


# ---------------------------------------------------------------------------------------------------------- features
def _pool(x: torch.Tensor) -> torch.Tensor:
    """(B, C, S, S) stage output → (B, 7C): mean, max, std over the grid and the 4 quadrant means."""
    quadrants = torch.nn.functional.adaptive_avg_pool2d(x, 2).flatten(2).transpose(1, 2).flatten(1)
    return torch.cat([x.mean((2, 3)), x.amax((2, 3)), x.std((2, 3)), quadrants], dim=1)


def _grid(tokens: torch.Tensor) -> torch.Tensor:
    """(B, L, C) tokens of a square grid → (B, C, S, S)."""
    side = math.isqrt(tokens.shape[1])
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], side, side)


@torch.inference_mode()
def stage_features(encoder: torch.nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """(B, 3, 256, 256) model inputs → {stage: (B, 7·C) pooled features} for the 4 TinyViT stages and the neck
    (C = 128, 160, 320, 320, 256), and the neck output itself under ``"embedding"`` (B, 256, 64, 64)."""
    x = encoder.patch_embed(images)
    out = {}
    for i, layer in enumerate(encoder.layers):
        x = layer(x)
        out[STAGES[i]] = _pool(_grid(x))
    embedding = encoder.neck(_grid(x))
    out["neck"] = _pool(embedding)
    out["embedding"] = embedding
    return out


def model_inputs(pixels: np.ndarray, flip: bool = False) -> torch.Tensor:
    """(H, W) image → (1, 3, 256, 256) model input (horizontally mirrored when ``flip``)."""
    from core_model.preprocess import to_model_input

    if flip:
        pixels = np.ascontiguousarray(pixels[:, ::-1])
    return to_model_input(pixels)[0]


class FeatureCache:
    """Pooled stage features per (image id, view) on disk: ``<root>/<tag>/<id>[.flip].pt`` ({stage: (7C,) float32})."""

    def __init__(self, root: str | Path, tag: str) -> None:
        self.root = Path(root) / tag
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str, flip: bool) -> Path:
        return self.root / f"{key}{'.flip' if flip else ''}.pt"

    def get(self, key: str, flip: bool = False) -> dict[str, torch.Tensor] | None:
        path = self.path(key, flip)
        if not path.is_file():
            return None
        try:
            return torch.load(path, weights_only=True)
        except Exception:  # noqa: BLE001 (a damaged file of any kind is recomputed)
            path.unlink(missing_ok=True)
            return None

    def put(self, key: str, flip: bool, features: dict[str, torch.Tensor]) -> None:
        path = self.path(key, flip)
        tmp = path.with_suffix(".tmp")
        torch.save({k: v.clone() for k, v in features.items()}, tmp)
        tmp.replace(path)


def fill_cache(encoder: torch.nn.Module, samples: list[ClsSample], cache: FeatureCache, flips: tuple[bool, ...] = (False,),
               batch_size: int = 4) -> int:
    """Compute the missing features of ``samples`` × ``flips``; returns how many were computed (logs progress)."""
    todo = [(s, f) for f in flips for s in samples if not cache.path(s.key, f).is_file()]
    t0, done = time.perf_counter(), 0
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        batch = torch.cat([model_inputs(load_pixels(s.path), f) for s, f in chunk])
        feats = stage_features(encoder, batch)
        for j, (s, f) in enumerate(chunk):
            cache.put(s.key, f, {k: v[j].float() for k, v in feats.items() if k != "embedding"})
        done += len(chunk)
        rate = (time.perf_counter() - t0) / done
        log.info("features %d/%d (%.2f s/image, %.0f s left)", done, len(todo), rate, rate * (len(todo) - done))
    return done


def load_features(samples: list[ClsSample], cache: FeatureCache, stages: Iterable[str],
                  flip: bool = False) -> torch.Tensor:
    """(N, D) features of ``samples`` (the given stages concatenated), from the cache."""
    rows = []
    for s in samples:
        entry = cache.get(s.key, flip)
        if entry is None:
            raise DataError(f"features of {s.key} (flip {flip}) not cached: run fill_cache first")
        rows.append(torch.cat([entry[name] for name in stages]))
    return torch.stack(rows)


def label_matrix(samples: list[ClsSample], classes: Iterable[str]) -> np.ndarray:
    """(N, C) int labels: 1/0, −1 = not assessed."""
    classes = list(classes)
    return np.array([[s.labels.get(c, -1) for c in classes] for s in samples], dtype=int)


__all__ = ["nih_samples", "all_samples", "make_split", "write_split", "stage_features",
           "model_inputs", "FeatureCache", "fill_cache", "load_features", "label_matrix", "DEMO_IMAGES", "STAGES"]
