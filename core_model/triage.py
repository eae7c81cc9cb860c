"""Batched triage: embed + classify + initial mask + uncertainty for many images (the worklist's first pass)."""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from core_model.model import BiasCareModel
from core_model.preprocess import to_model_input
from core_model.uncertainty import (SegmentationUncertainty, classification_uncertainty, ranking_score,
                                    semantic_uncertainty)

DEFAULT_CONCEPT = "lung"
log = logging.getLogger(__name__)


def initial_prompt(model: BiasCareModel, height: int, width: int, concept: str = DEFAULT_CONCEPT) -> dict:
    """The prompt of a case's first AI mask, in original pixel coordinates (the keywords of
    ``InteractivePredictor.predict``): the text concept when the language pathway is trained, otherwise a box around
    the whole image (the only prompt stock LiteMedSAM understands). The app's first mask and its reset use it, and
    :class:`Triage` applies the same rule on the model grid."""
    if model.language.trained:
        return {"text": concept}
    return {"box": (0.0, 0.0, float(width - 1), float(height - 1))}


@dataclass
class TriageResult:
    """One image's first pass. ``low_res_logits`` (1, 256, 256) are on the model grid (see ``geometry``)."""

    probabilities: dict[str, float] | None  # None while the classifier head is untrained; calibrated
    suggested: list[str]  # the findings card's rule: classes with an operating point and p ≥ it
    low_res_logits: torch.Tensor
    iou: float
    uncertainty: SegmentationUncertainty
    class_uncertainty: dict[str, float | None] | None  # entropy; min_margin to the operating points (None: none)


class Triage:
    """Runs the model over batches of images.

    The initial mask comes from the text concept when the language pathway is trained, otherwise from a box around
    the whole image (the only prompt stock LiteMedSAM understands).
    """

    def __init__(self, model: BiasCareModel, device: str | torch.device = "cpu", label_set: str = "cxr-lt-26",
                 concept: str = DEFAULT_CONCEPT, dtype: torch.dtype | None = None, encoder_backend: str = "auto",
                 onnx_cache: str | Path | None = None) -> None:
        """``encoder_backend``: "onnx" (ONNX Runtime, CPU), "torch", or "auto" = ONNX Runtime on a float32 CPU run
        when it is installed (falling back to PyTorch, with a warning, if the export fails). ``dtype`` (e.g.
        torch.bfloat16) runs PyTorch under autocast (GPU)."""
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.label_set = label_set
        self.concept = concept
        self.dtype = dtype
        if encoder_backend not in ("auto", "onnx", "torch"):
            raise ValueError(f"encoder_backend must be auto, onnx or torch, not {encoder_backend!r}")
        self.encoder_backend = encoder_backend
        self.onnx_cache = onnx_cache
        self._encode_fn = None  # built on first use: run_embeddings never needs it
        self._decode_fn = None  # likewise (None after the first use = PyTorch)
        self._decoder_built = False
        self._card = None  # the findings card, read on first use

    @property
    def card(self):
        """The findings card of the model's ``label_set`` head (its suggestion rule and operating points)."""
        if self._card is None:
            self._card = self.model.findings_card(self.label_set)
        return self._card

    @property
    def classifier_trained(self) -> bool:
        return bool(self.model.info.classifier_trained.get(self.label_set))

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        if self._encode_fn is None:
            self._encode_fn = self._build_encoder()
        return self._encode_fn(images)

    def _uses_onnx(self) -> bool:
        from core_model.onnx_runtime import onnxruntime_available

        cpu_fp32 = self.device.type == "cpu" and self.dtype is None
        return self.encoder_backend == "onnx" or (self.encoder_backend == "auto" and cpu_fp32
                                                  and onnxruntime_available())

    def _predict_masks(self):
        """The mask decoder for the initial masks: ONNX Runtime's (batched; 94 vs 122 ms an image on 2 cores) when this
        triage runs on ONNX Runtime, else None (PyTorch). Built in the calling thread on first use."""
        if not self._decoder_built:
            self._decoder_built = True
            if self._uses_onnx():
                from core_model.onnx_runtime import OnnxMaskDecoder

                self._decode_fn = OnnxMaskDecoder(self.model.mask_decoder, cache_dir=self.onnx_cache)
        return self._decode_fn

    def _build_encoder(self):
        from core_model.onnx_runtime import OnnxImageEncoder

        backend = self.encoder_backend
        if not self._uses_onnx():
            return self.model.encode_image
        try:
            return OnnxImageEncoder(self.model.image_encoder, cache_dir=self.onnx_cache)
        except Exception as error:  # an export problem must not stop triage: PyTorch gives the same numbers
            if backend == "onnx":
                raise
            log.warning("ONNX Runtime image encoder unavailable (%s); using PyTorch", error)
            return self.model.encode_image

    def inputs(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Grayscale (H, W) images → (B, 3, 256, 256) model inputs."""
        return torch.cat([to_model_input(image)[0] for image in images]).to(self.device)

    @torch.inference_mode()
    def run_batch(self, batch: torch.Tensor) -> list[TriageResult]:
        """(B, 3, 256, 256) model inputs → one :class:`TriageResult` per image."""
        autocast = torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None)
        with autocast:
            embedding = self._encode(batch)
            logits, iou = self._initial_masks(embedding)
            probs = self.model.classify(embedding, self.label_set) if self.classifier_trained else None
        return self._results(embedding.float(), logits.float(), iou.float(), probs)

    @torch.inference_mode()
    def run_embeddings(self, embedding: torch.Tensor) -> list[TriageResult]:
        """Image embeddings (B, 256, 64, 64) already computed (e.g. by the predictor's cache) → results."""
        embedding = embedding.to(self.device)
        logits, iou = self._initial_masks(embedding)
        probs = self.model.classify(embedding, self.label_set) if self.classifier_trained else None
        return self._results(embedding.float(), logits.float(), iou.float(), probs)

    def run(self, images: Sequence[np.ndarray], batch_size: int = 8) -> list[TriageResult]:
        results: list[TriageResult] = []
        for start in range(0, len(images), batch_size):
            results.extend(self.run_batch(self.inputs(images[start:start + batch_size])))
        return results

    def _initial_masks(self, embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`initial_prompt`'s rule on the 256² model grid (the whole grid for the box)."""
        batch = embedding.shape[0]
        prompt = initial_prompt(self.model, 256, 256, self.concept)
        if "text" in prompt:
            tokens = self.model.language.tokens([prompt["text"]]).expand(batch, -1, -1)
            return self.model.decode(embedding, text_tokens=tokens.to(embedding.dtype),
                                     predict_masks=self._predict_masks())
        boxes = torch.tensor([prompt["box"]], device=embedding.device).expand(batch, -1)
        return self.model.decode(embedding, boxes=boxes, predict_masks=self._predict_masks())

    def _results(self, embedding: torch.Tensor, logits: torch.Tensor, iou: torch.Tensor,
                 probs: torch.Tensor | None) -> list[TriageResult]:
        u_sl = None
        if self.model.language.trained:
            concept = self.model.language.concept_embedding([self.concept]).expand(embedding.shape[0], -1)
            u_sl = semantic_uncertainty(embedding, logits, concept)
        classes = self.model.classifiers[self.label_set].classes
        card = self.card
        operating = card.thresholds()  # the card's operating points; +inf = never suggested
        thresholds = torch.tensor([operating.get(c, float("inf")) for c in classes])
        class_u = classification_uncertainty(probs, thresholds) if probs is not None else None
        results = []
        for i in range(embedding.shape[0]):
            u = None if u_sl is None else float(u_sl[i])
            gap = 1.0 - float(iou[i, 0])
            seg_u = SegmentationUncertainty(iou_gap=gap, tta=0.0, u_sl=u, ranking=ranking_score(gap, 0.0, u))
            probabilities = None if probs is None else {c: float(p) for c, p in zip(classes, probs[i])}
            suggested = [] if probabilities is None else card.suggested(probabilities)
            case_u = None
            if class_u is not None:
                margin = float(class_u["case_min_margin"][i])
                case_u = {"entropy": float(class_u["case_entropy"][i]),
                          "min_margin": None if math.isnan(margin) else margin}
            results.append(TriageResult(probabilities, suggested, logits[i, :1].clone(), float(iou[i, 0]), seg_u,
                                        case_u))
        return results
