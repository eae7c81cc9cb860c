"""The data engine: the stock model's box predictions on random boxes of training images as targets that clicks must
reproduce (SAM's model-in-the-loop stage, on the box-trained LiteMedSAM), so that a click means "this thing", not
"the lungs".

For every image (a training image with labels, or an unlabelled one): ``boxes`` random boxes on the model grid
(sides ``min_side``–``max_side`` of the image's longer side, inside the image), the **stock** model's single-mask box
prediction for each (its own encoder's embedding, cached like any other), and keep at most ``keep`` of them that

* the stock model is sure of: predicted IoU ≥ ``min_predicted_iou``;
* are *stable*: the mask at logit thresholds −``stability_offset`` and +``stability_offset`` agree (IoU ≥
  ``min_stability``), as SAM's automatic mask generator filters;
* fill a plausible share of their box (``min_fill``) and of the image (``min_area``–``max_area``);
* are not copies of one another (IoU < ``max_overlap`` with every mask kept before);
* do not cover a protected region (``protect``: e.g. the held-out structures on a training CT slice) by more than
  ``max_protected`` of their area — so that no target, labelled or not, is a structure held out for the evaluation.

The kept masks become :class:`training.cache.TargetObject` of kind ``"pseudo"``: click and box targets, never text
targets (they have no name). Distillation follows: a box on a pseudo object must give the stock model's own answer.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from core_model.geometry import ResizePad
from training.cache import TargetObject, _box

PSEUDO_PHRASES = ("object", "region")


@dataclass(frozen=True)
class EngineConfig:
    boxes: int = 16
    keep: int = 4
    min_side: float = 0.06
    max_side: float = 0.55
    min_predicted_iou: float = 0.75
    stability_offset: float = 1.0
    min_stability: float = 0.75
    min_fill: float = 0.25
    min_area: float = 0.002
    max_area: float = 0.3
    max_overlap: float = 0.7
    max_protected: float = 0.1
    seed: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


def random_boxes(valid_hw: tuple[int, int], cfg: EngineConfig, rng: np.random.Generator) -> np.ndarray:
    """(cfg.boxes, 4) model-grid boxes (x0, y0, x1, y1) inside the image's valid (h, w) region."""
    h, w = valid_hw
    side = max(h, w)
    bw = rng.uniform(cfg.min_side, cfg.max_side, cfg.boxes) * side
    bh = np.clip(bw * np.exp(rng.uniform(-0.7, 0.7, cfg.boxes)), cfg.min_side * side, cfg.max_side * side)
    bw, bh = np.minimum(bw, w - 1), np.minimum(bh, h - 1)
    x0 = rng.uniform(0, w - 1 - bw)
    y0 = rng.uniform(0, h - 1 - bh)
    return np.stack([x0, y0, x0 + bw, y0 + bh], axis=1).astype(np.float32)


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    union = int((a | b).sum())
    return float(int((a & b).sum()) / union) if union else 0.0


@torch.inference_mode()
def pseudo_objects(stock, embedding: torch.Tensor, geometry: ResizePad, cfg: EngineConfig,
                   rng: np.random.Generator, protect: torch.Tensor | None = None) -> tuple[list[TargetObject], dict]:
    """Pseudo targets of one image (module doc) and the counts of why candidates were dropped.

    Args:
        stock: the stock model (``core_model.model``), eval mode.
        embedding: (256, 64, 64) the stock encoder's embedding of the image.
        geometry: the image's resize-pad geometry (valid region of the 256 model grid).
        protect: (256, 256) bool model-grid region no target may cover (None = nothing protected).
    """
    h, w = geometry.resized_shape
    boxes = torch.from_numpy(random_boxes((h, w), cfg, rng))
    emb = embedding.float()[None].expand(len(boxes), -1, -1, -1)
    logits, iou = stock.decode(emb, None, boxes, None, None)
    logits, iou = logits[:, 0, :h, :w].float(), iou[:, 0].float()
    counts = {"candidates": len(boxes), "predicted_iou": 0, "stability": 0, "size": 0, "fill": 0, "protected": 0,
              "duplicate": 0, "kept": 0}
    kept: list[TargetObject] = []
    for k in torch.argsort(iou, descending=True).tolist():
        mask = logits[k] > 0
        area = int(mask.sum())
        x0, y0, x1, y1 = boxes[k].tolist()
        box_area = max(1.0, (x1 - x0 + 1) * (y1 - y0 + 1))
        if float(iou[k]) < cfg.min_predicted_iou:
            counts["predicted_iou"] += 1
        elif _iou(logits[k] > cfg.stability_offset, logits[k] > -cfg.stability_offset) < cfg.min_stability:
            counts["stability"] += 1
        elif not cfg.min_area * h * w <= area <= cfg.max_area * h * w:
            counts["size"] += 1
        elif area < cfg.min_fill * box_area:
            counts["fill"] += 1
        elif protect is not None and int((mask & protect[:h, :w]).sum()) > cfg.max_protected * area:
            counts["protected"] += 1
        elif any(_iou(mask, o.mask[:h, :w]) >= cfg.max_overlap for o in kept):
            counts["duplicate"] += 1
        else:
            grid = torch.zeros(geometry.size, geometry.size, dtype=torch.bool)
            grid[:h, :w] = mask
            kept.append(TargetObject(grid, _box(grid.numpy()), PSEUDO_PHRASES, "pseudo"))
            counts["kept"] += 1
            if len(kept) >= cfg.keep:
                break
    return kept, counts


def protected_region(sample, mask: np.ndarray, geometry: ResizePad) -> torch.Tensor | None:
    """The model-grid region of a structure sample's labels that are not its targets (the held-out structures among
    them: any overlap counts); None for other samples."""
    if not sample.structures:
        return None
    other = (mask > 0) & ~np.isin(mask, list(sample.structures))
    return geometry.mask_to_model(torch.from_numpy(other)[None, None])[0, 0] > 0


def engine_targets(samples: list, stock, cache, cfg: EngineConfig, skips,
                   progress: bool = False) -> tuple[dict[str, list[TargetObject]], dict]:
    """Pseudo targets per sample key (for ``prepare_images(extra_objects=...)``) and the run's counts.

    ``stock``: the stock model; ``cache``: an :class:`training.cache.EmbeddingCache` of the stock encoder."""
    from training.data import check_sample

    rng = np.random.default_rng(cfg.seed)
    targets: dict[str, list[TargetObject]] = {}
    totals: dict[str, int] = {}
    iterator = samples
    if progress:
        from tqdm import tqdm

        iterator = tqdm(samples, desc="data engine", unit="img", dynamic_ncols=True)
    stock.eval()
    for sample in iterator:
        loaded = check_sample(sample, skips)
        if loaded is None:
            continue
        pixels, mask = loaded
        geometry = ResizePad(*pixels.shape)
        embedding = cache.embeddings(stock, [pixels])[0]
        objects, counts = pseudo_objects(stock, embedding, geometry, cfg, rng, protected_region(sample, mask, geometry))
        targets[sample.key] = objects
        for name, value in counts.items():
            totals[name] = totals.get(name, 0) + value
    return targets, {"config": cfg.as_dict(), "images": len(targets), "counts": totals}
