"""Interactive predictor: embed an image once, then refine the mask click by click (the paper's inference-time HITL).

Coordinate frames
    Clicks and boxes are given in **original pixel-index coordinates**: (x, y) with x to the right, y down, pixel (0, 0)
    the top-left pixel, fractions allowed. They map to the 256 model grid through :class:`core_model.geometry.ResizePad`
    (pixel centre ``x + 0.5`` scaled, then SAM's own pixel-index convention). Masks come back on the original grid.

State
    ``set_image`` selects the image (its embedding from the in-memory LRU, the optional float16 disk cache, or the
    encoder). Each ``predict`` call appends its clicks to the session, feeds the previous low-res logits back as the
    mask prompt and pushes the new state; ``undo`` pops it (restoring the exact previous logits), ``reset`` clears.
"""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from core_model.geometry import ResizePad
from core_model.model import BiasCareModel
from core_model.preprocess import content_key, to_model_input
from core_model.uncertainty import SegmentationUncertainty, mask_disagreement, ranking_score, semantic_uncertainty

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Click:
    """One correction: (x, y) in original pixel-index coordinates; ``positive`` adds, negative removes."""

    x: float
    y: float
    positive: bool = True


@dataclass(eq=False)
class Prediction:
    """The result of one refinement pass.

    low_res_logits: (1, 1, 256, 256) on the model grid (fed back next time). iou: SAM's predicted IoU.
    ``uncertainty`` (see :mod:`core_model.uncertainty`) and ``mask`` — (H, W) bool on the original grid — are computed
    on first access (a click needs neither); ``mask_at((h, w))`` gives the same mask resampled for a display of
    another size (same geometry), which is all a viewer needs per click.
    """

    low_res_logits: torch.Tensor
    iou: float
    geometry: ResizePad
    clicks: tuple[Click, ...] = ()
    box: tuple[float, float, float, float] | None = None
    text: str | None = None
    resize: object | None = None  # (logits (1, 1, h, w) ndarray, (H, W)) → bool mask; None: PyTorch's interpolate
    tta: float = 0.0
    semantic: Callable[[], float] | None = None  # u_sl of the text prompt, on demand; None without a text token
    foundation: bool = False  # answered by the foundation (stock) decoder: a box of a label the checkpoint never trained on

    @cached_property
    def uncertainty(self) -> SegmentationUncertainty:
        u_sl = None if self.semantic is None else self.semantic()
        gap = 1.0 - self.iou
        return SegmentationUncertainty(iou_gap=gap, tta=self.tta, u_sl=u_sl, ranking=ranking_score(gap, self.tta, u_sl))

    @cached_property
    def mask(self) -> np.ndarray:
        return (self.geometry.logits_to_original(self.low_res_logits) > 0)[0, 0].numpy()

    def mask_at(self, shape: tuple[int, int]) -> np.ndarray:
        """(h, w) bool mask for a display of the whole image at that size (the original grid scaled uniformly)."""
        if tuple(shape) == (self.geometry.height, self.geometry.width):
            return self.mask
        new_h, new_w = self.geometry.resized_shape
        valid = self.low_res_logits[..., :new_h, :new_w]
        if self.resize is not None:
            return self.resize(valid.numpy(), tuple(shape))
        return (torch.nn.functional.interpolate(valid, size=tuple(shape), mode="bilinear",
                                                align_corners=False) > 0)[0, 0].numpy()


@dataclass
class _ImageEntry:
    embedding: torch.Tensor  # (1, 256, 64, 64)
    geometry: ResizePad


@dataclass
class _Session:
    key: str
    entry: _ImageEntry
    history: list[Prediction] = field(default_factory=list)


class NoImageError(RuntimeError):
    """``predict``/``undo`` called before ``set_image``."""


def _as_click(click: Click | Sequence) -> Click:
    if isinstance(click, Click):
        return click
    x, y, *rest = click
    positive = rest[0] if rest else True
    if isinstance(positive, str):
        positive = positive.lower() in ("positive", "pos", "+", "1", "true")
    return Click(float(x), float(y), bool(positive))


class InteractivePredictor:
    """Embeds images once and refines masks from clicks, boxes and text prompts.

    Thread-safe: one lock serialises model calls, so the app can prefetch embeddings in a background thread.
    """

    def __init__(self, model: BiasCareModel, device: str | torch.device = "cpu", cache_size: int = 8,
                 disk_cache: str | Path | None = None, tta_samples: int = 4,
                 decoder_dtype: torch.dtype | None = None, decoder_backend: str = "auto",
                 encoder_backend: str | None = None) -> None:
        """``decoder_backend``: "onnx" runs the mask decoder through ONNX Runtime (CPU), "torch" through PyTorch,
        "auto" picks ONNX Runtime on the CPU when it is installed. ``encoder_backend`` (same choices; None = the
        decoder's) does the same for the image encoder: ONNX Runtime embeds a CXR ~1.7× faster than PyTorch on 2
        cores, equal to ~1e-5 (its graph is exported once per encoder weights, ~7 s, into
        :func:`~core_model.onnx_runtime.default_cache_dir`). ``decoder_dtype`` (e.g. torch.bfloat16) runs the
        PyTorch decoder under autocast; None keeps float32."""
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.decoder_dtype = decoder_dtype
        self.decoder_backend = self._choose_backend(decoder_backend)
        self._encoder_requested = encoder_backend or decoder_backend
        self.encoder_backend = (self.decoder_backend if encoder_backend is None
                                else self._choose_backend(encoder_backend, "encoder_backend"))
        self._onnx = None
        self._onnx_click = None
        self._onnx_encoder = None
        self.cache_size = cache_size
        self.disk_cache = Path(disk_cache) if disk_cache else None
        self.tta_samples = tta_samples
        self._cache: OrderedDict[str, _ImageEntry] = OrderedDict()
        self._session: _Session | None = None
        self._lock = threading.RLock()

    def _choose_backend(self, requested: str, name: str = "decoder_backend") -> str:
        from core_model.onnx_runtime import onnxruntime_available

        if requested not in ("auto", "onnx", "torch"):
            raise ValueError(f"{name} must be auto, onnx or torch, not {requested!r}")
        if requested == "auto":
            cpu_fp32 = self.device.type == "cpu" and self.decoder_dtype is None
            return "onnx" if cpu_fp32 and onnxruntime_available() else "torch"
        return requested

    def _predict_masks(self, foundation: bool = False):
        """The decoder implementation for this predictor (the ONNX session is built on first use); None for PyTorch,
        and for a foundation pass (the stock decoder, always PyTorch: no session of this checkpoint's is built)."""
        if self.decoder_backend == "torch" or foundation:
            return None
        if self._onnx is None:
            from core_model.onnx_runtime import OnnxMaskDecoder

            self._onnx = OnnxMaskDecoder(self.model.mask_decoder, cache_dir=self.disk_cache)
        return self._onnx

    def _click_decoder(self):
        """The one-image click pass on ONNX Runtime (:class:`core_model.onnx_runtime.OnnxClickDecoder`), or None when
        this predictor decodes with PyTorch."""
        if self.decoder_backend == "torch":
            return None
        if self._onnx_click is None:
            from core_model.onnx_runtime import OnnxClickDecoder, OnnxMaskResize, PromptTokens

            self._onnx_click = (OnnxClickDecoder(self.model, cache_dir=self.disk_cache),
                                PromptTokens(self.model.prompt_encoder), OnnxMaskResize())
        return self._onnx_click

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        """(1, 3, 256, 256) model input → (1, 256, 64, 64) embedding, by this predictor's encoder backend. The ONNX
        session is built on first use, in the calling thread (its pool threads take that thread's priority)."""
        if self.encoder_backend == "torch":
            return self.model.encode_image(images)
        if self._onnx_encoder is None:
            from core_model.onnx_runtime import OnnxImageEncoder

            try:
                self._onnx_encoder = OnnxImageEncoder(self.model.image_encoder)
            except Exception as error:  # e.g. no writable cache folder: PyTorch gives the same numbers, slower
                if self._encoder_requested == "onnx":
                    raise
                log.warning("ONNX Runtime image encoder unavailable (%s); embedding with PyTorch", error)
                self.encoder_backend = "torch"
                return self.model.encode_image(images)
        return self._onnx_encoder(images)

    # ------------------------------------------------------------------ embeddings
    def embed(self, image: np.ndarray) -> str:
        """Compute (or fetch) the embedding of a (H, W) grayscale image without selecting it; returns its key."""
        key = content_key(image)
        self._entry(key, image)
        return key

    def set_image(self, image: np.ndarray) -> str:
        """Select a (H, W) grayscale image for prediction, embedding it if needed; clears the click session."""
        key = content_key(image)
        self._session = _Session(key, self._entry(key, image))
        return key

    def embedding(self, key: str) -> tuple[torch.Tensor, ResizePad]:
        """The cached embedding (1, 256, 64, 64) and geometry of an image embedded earlier (KeyError if evicted)."""
        with self._lock:
            entry = self._cache[key]
            return entry.embedding, entry.geometry

    def is_cached(self, image_or_key: np.ndarray | str) -> bool:
        key = image_or_key if isinstance(image_or_key, str) else content_key(image_or_key)
        return key in self._cache or (self.disk_cache is not None and self._disk_path(key).is_file())

    def _disk_path(self, key: str) -> Path:
        assert self.disk_cache is not None
        return self.disk_cache / f"{key[:2]}" / f"{key}.pt"

    def _entry(self, key: str, image: np.ndarray) -> _ImageEntry:
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        tensor, geometry = to_model_input(image)
        embedding = self._load_disk(key)
        if embedding is None:
            with self._lock, torch.inference_mode():
                embedding = self._encode(tensor.to(self.device))
            self._save_disk(key, embedding)
            if self.disk_cache is not None:  # use what the cache will give back later: a replay is then exact
                embedding = embedding.to(torch.float16)
        entry = _ImageEntry(embedding.to(self.device, torch.float32), geometry)
        with self._lock:
            self._cache[key] = entry
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return entry

    def _load_disk(self, key: str) -> torch.Tensor | None:
        if self.disk_cache is None or not self._disk_path(key).is_file():
            return None
        try:
            return torch.load(self._disk_path(key), map_location="cpu", weights_only=True).float()
        except Exception:  # a damaged cache file is recomputed, never trusted
            self._disk_path(key).unlink(missing_ok=True)
            return None

    def _save_disk(self, key: str, embedding: torch.Tensor) -> None:
        if self.disk_cache is None:
            return
        path = self._disk_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(embedding.detach().to("cpu", torch.float16).clone(), tmp)
        tmp.replace(path)

    # ------------------------------------------------------------------ session
    @property
    def history(self) -> list[Prediction]:
        return list(self._session.history) if self._session else []

    @property
    def clicks(self) -> tuple[Click, ...]:
        return self._session.history[-1].clicks if self._session and self._session.history else ()

    @property
    def geometry(self) -> ResizePad:
        return self._require_session().entry.geometry

    def _require_session(self) -> _Session:
        if self._session is None:
            raise NoImageError("call set_image() before predict()/undo()")
        return self._session

    def predict(self, clicks: Sequence[Click | Sequence] = (), box: Sequence[float] | None = None,
                text: str | None = None, with_tta: bool = False, multimask: bool = False,
                label: str | None = None) -> Prediction:
        """Add ``clicks`` to the session and run one refinement pass.

        Args:
            clicks: new clicks, (x, y, positive) in original pixel-index coordinates; appended to earlier ones.
            box: (x0, y0, x1, y1) in original pixels; replaces the session's box (kept when None).
            text: a prompt such as "left lung"; replaces the session's text (kept when None). Used only when the
                language pathway is trained (otherwise the stock model is unchanged and the text is just recorded).
            with_tta: also compute the test-time-augmentation disagreement (one extra batched decoder pass).
            multimask: let SAM choose the best of its 3 masks (useful for a lone first click of the stock model).
            label: the object's label (e.g. "Kidney"). A pass from a box alone (no click, no text) of a label the
                checkpoint was not trained on (:meth:`BiasCareModel.answers_boxes_for`) is answered by the foundation
                decoder, the stock LiteMedSAM's; clicks always go through the checkpoint's decoder.
        Returns:
            the new :class:`Prediction`; the session now ends with it.
        """
        session = self._require_session()
        previous = session.history[-1] if session.history else None
        all_clicks = (previous.clicks if previous else ()) + tuple(_as_click(c) for c in clicks)
        box_t = tuple(float(v) for v in box) if box is not None else (previous.box if previous else None)
        text = text if text is not None else (previous.text if previous else None)
        if not all_clicks and box_t is None and not text:
            raise ValueError("predict() needs at least one click, a box or a text prompt")
        prev_logits = previous.low_res_logits if previous else None
        foundation = box_t is not None and not all_clicks and not text and not self.model.answers_boxes_for(label)
        with self._lock, torch.inference_mode():
            prediction = self._run(session.entry, all_clicks, box_t, text, prev_logits, with_tta, multimask,
                                   foundation)
        if previous is not None:  # older steps keep their low-res logits (for undo), not their full-size masks
            previous.__dict__.pop("mask", None)
        session.history.append(prediction)
        return prediction

    def undo(self) -> Prediction | None:
        """Drop the last prediction; returns the one now current (None when back at the start)."""
        session = self._require_session()
        if session.history:
            session.history.pop()
        return session.history[-1] if session.history else None

    def reset(self) -> None:
        """Forget all clicks, box and text for the current image (its embedding stays cached)."""
        self._require_session().history.clear()

    # ------------------------------------------------------------------ model calls
    def _prompts(self, geometry: ResizePad, clicks: tuple[Click, ...], box: tuple | None, text: str | None):
        points = None
        if clicks:
            xy = np.array([[c.x + 0.5, c.y + 0.5] for c in clicks])
            coords = torch.as_tensor(geometry.to_model(xy) - 0.5, dtype=torch.float32, device=self.device)[None]
            labels = torch.as_tensor([[1 if c.positive else 0 for c in clicks]], device=self.device)
            points = (coords, labels)
        boxes = None
        if box is not None:
            corners = np.asarray(box, dtype=np.float64).reshape(2, 2) + 0.5
            boxes = torch.as_tensor(geometry.to_model(corners).reshape(1, 4) - 0.5, dtype=torch.float32,
                                    device=self.device)
        use_text = bool(text) and self.model.language.trained
        tokens = self.model.language.tokens([text]) if use_text else None
        return points, boxes, tokens

    def _run(self, entry: _ImageEntry, clicks: tuple[Click, ...], box: tuple | None, text: str | None,
             prev_logits: torch.Tensor | None, with_tta: bool, multimask: bool, foundation: bool = False
             ) -> Prediction:
        points, boxes, tokens = self._prompts(entry.geometry, clicks, box, text)
        click = None if foundation else self._click_decoder()
        resize = None
        if click is not None and self.device.type == "cpu":
            # the same pass as model.decode on ONNX Runtime with the image's constants, no PyTorch operator
            decoder, prompt_tokens, resize = click
            coords, labels = (points[0][0].numpy(), points[1][0].numpy()) if points is not None else (None, None)
            sparse = prompt_tokens(coords, labels, boxes[0].numpy() if boxes is not None else None)
            if tokens is not None:
                sparse = np.concatenate([sparse, tokens.detach().cpu().float().numpy()], axis=1)
            mask_logits, iou_value = decoder(entry.embedding, sparse, prev_logits, multimask)
            logits = torch.from_numpy(mask_logits)
        else:
            with torch.autocast(self.device.type, dtype=self.decoder_dtype or torch.float32,
                                enabled=self.decoder_dtype is not None):
                logits, iou = self.model.decode(entry.embedding, points, boxes, prev_logits, tokens,
                                                multimask=multimask, predict_masks=self._predict_masks(foundation),
                                                foundation=foundation)
            best = int(iou[0].argmax())
            logits, iou_value = logits[:, best:best + 1].float().clone(), float(iou[0, best])
        tta = self._tta(entry, points, boxes, tokens, prev_logits, logits, foundation) if with_tta else 0.0
        semantic = None
        if tokens is not None:
            embedding, concept = entry.embedding, tokens.mean(dim=1)

            def semantic() -> float:
                with torch.inference_mode():
                    return float(semantic_uncertainty(embedding, logits, concept)[0])

        return Prediction(low_res_logits=logits, iou=iou_value, geometry=entry.geometry, clicks=clicks, box=box,
                          text=text, resize=resize, tta=tta, semantic=semantic, foundation=foundation)

    def _tta(self, entry: _ImageEntry, points, boxes, tokens, prev_logits, reference: torch.Tensor,
             foundation: bool = False) -> float:
        """Disagreement of K decoder passes with jittered prompts (±2 model pixels) and the mask prompt dropped."""
        k = self.tta_samples
        generator = torch.Generator().manual_seed(0)

        def jitter(t: torch.Tensor) -> torch.Tensor:
            noise = (torch.rand((k,) + t.shape[1:], generator=generator) * 4 - 2).to(t.device)
            return t.expand(k, *t.shape[1:]) + noise

        batched_points = (jitter(points[0]), points[1].expand(k, -1)) if points is not None else None
        batched_boxes = jitter(boxes) if boxes is not None else None
        batched_tokens = tokens.expand(k, -1, -1) if tokens is not None else None
        masks = None if prev_logits is None else prev_logits.expand(k, -1, -1, -1).clone()
        if masks is not None:
            masks[k // 2:] = 0  # half the samples without the fed-back mask
        logits, _ = self.model.decode(entry.embedding.expand(k, -1, -1, -1), batched_points, batched_boxes, masks,
                                      batched_tokens, predict_masks=self._predict_masks(foundation),
                                      foundation=foundation)
        return mask_disagreement(reference, logits)
