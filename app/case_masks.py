"""The open case's masks, slice by slice: the one place that knows how a slice's mask is composed.

Composition rule (for every slice, 2-D images being the one slice ``None``)::

    mask = cleanup( strokes( model(prompt) ) )

* ``model(prompt)``: the slice's :class:`~annotations_db.events.Prompt`. No box and no click → the AI's initial
  mask of the slice. A reader's box → one pass from the box alone (earlier box and clicks dropped); the mask is kept
  inside the box (widened to hold the positive clicks), since the model's can leak past it. Clicks → one pass
  each on top of the base pass (the AI's initial prompt, or the box), the previous pass's low-res logits fed back, as
  the predictor has always refined. A carried prompt is the source slice's box and clicks re-run on this slice.
* ``strokes``: brush (sets) and eraser (clears) strokes in log order, on the grid of the mask being made: the
  original grid for the saved mask, the display grid for the layer (points and radius scaled, see
  :func:`core_model.mask_ops.scale_stroke`), so the click path does no full-resolution work.
* ``cleanup``: islands below ``min_island_px`` display px (× the pixel area ratio on the original grid) dropped, then
  holes filled, when the reader turned it on; what the reader painted is never dropped as an island and what they
  erased never filled back. What is shown is what is saved.

The session's :class:`~core_model.predictor.InteractivePredictor` is a cache of the prompt's passes: its history
ends with the pass of the slice's current prompt when it can (a click = one pass; undo of a click = a pop; reset =
pops back to the base pass); anything else (another slice, a box taken back, a carry, a restart) re-runs the prompt
from the base pass, which gives the same logits. Coordinates: prompts, strokes and boxes are original pixel-index
coordinates (pixel centres at integers); the page gets display coordinates (:func:`prompts_payload`).
"""
from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from annotations_db.events import Prompt, SliceState
from app.render import DisplayGeometry, mask_to_display
from core_model import mask_ops
from core_model.predictor import Click, Prediction

STROKE_CACHE = 16  # (slice, grid) stroke rasters kept


@dataclass
class SliceImage:
    """What composing one slice's mask needs: its pixels (original grid), display geometry, the AI's initial prompt
    (None: the AI gives this slice no mask) and a provider of the AI's initial mask (original grid; None: compute it
    with the session predictor)."""

    key: int | None
    pixels: np.ndarray
    geometry: DisplayGeometry
    initial_prompt: dict[str, Any] | None
    ai_mask: Callable[[], np.ndarray | None] | None = None
    object: int = 0  # the answer's object whose mask is composed (0: the default object, the AI's)
    label: str | None = None  # that object's label (None: the default object): which decoder answers its box

    @property
    def cache_key(self) -> tuple[int, int | None]:
        """(object, slice): what the passes and stroke rasters are kept by."""
        return self.object, self.key


@dataclass
class Composed:
    """A slice's mask on one grid, with the model part's pass when one ran (``model_ms`` its time)."""

    mask: np.ndarray
    prediction: Prediction | None
    model_ms: float = 0.0


Signature = tuple[Any, Any, tuple[Click, ...]]


CacheKey = tuple[int, int | None]  # (object, slice)


class CaseMasks:
    """The masks of one open case (one per view), each object's kept apart: a labelled object starts from no mask and
    its passes never build on another object's (the AI's lungs). Not thread-safe: the service calls it under the
    session's lock."""

    def __init__(self) -> None:
        self._latest: dict[CacheKey, Prediction] = {}  # the last pass made for each (object, slice)
        self._loaded: tuple[int, CacheKey, int] | None = None  # (predictor id, (object, slice), id of its last pass)
        self.initial_prompts: dict[int | None, dict[str, Any] | None] = {}  # volume slices' AI prompts (service)
        self._strokes: OrderedDict[tuple[CacheKey, str], tuple[list[dict], np.ndarray]] = OrderedDict()

    # ------------------------------------------------------------------ the model part
    def prediction(self, predictor: Any, image: SliceImage, prompt: Prompt) -> Prediction | None:
        """The pass of ``prompt`` on the slice; None when the prompt is empty and the AI's mask is to be used as
        given (:attr:`SliceImage.ai_mask`) or the AI has no prompt for the slice."""
        base, target = self._base(image, prompt), _signature(image, prompt)
        latest = self._latest.get(image.cache_key)
        if latest is not None and _signature_of(latest) == target:
            return latest
        if prompt.empty and (image.initial_prompt is None or not self._synced(predictor, image.cache_key)
                             and image.ai_mask is not None):
            return None
        if base is None and not prompt.clicks:
            return None
        history = predictor.history if self._synced(predictor, image.cache_key) else []
        start = _longest_prefix(history, base, prompt.clicks)
        if start is None:
            predictor.set_image(image.pixels)
            current = predictor.predict(**base) if base is not None else None
            done = 0
        else:
            for _ in range(len(history) - 1 - start):
                predictor.undo()
            current, done = history[start], len(history[start].clicks)
        for click in prompt.clicks[done:]:
            current = predictor.predict([Click(click.x, click.y, click.positive)])
        self._latest[image.cache_key] = current
        self._loaded = (id(predictor), image.cache_key, id(current))
        return current

    def _synced(self, predictor: Any, key: CacheKey) -> bool:
        """Does the predictor still hold this (object, slice) with the last pass made here on top?"""
        history = predictor.history
        return bool(self._loaded is not None and history and self._loaded[:2] == (id(predictor), key)
                    and id(history[-1]) == self._loaded[2])

    def adopt(self, predictor: Any, key: int | None) -> None:
        """The service has just set the predictor on this slice and made its AI pass (the default object's): build
        on it."""
        history = predictor.history
        if history:
            self._loaded = (id(predictor), (0, key), id(history[-1]))

    @staticmethod
    def _base(image: SliceImage, prompt: Prompt) -> dict[str, Any] | None:
        """The keywords of the base pass: the reader's box (with the object's label), else the AI's initial prompt
        (None: clicks alone)."""
        if prompt.box is not None:
            return {"box": prompt.box, "label": image.label}
        return image.initial_prompt

    def forget(self, key: int | None) -> None:
        """Drop what is cached of a slice, every object's (its pixels changed, e.g. another model)."""
        for cached in [k for k in self._latest if k[1] == key]:
            self._latest.pop(cached, None)

    # ------------------------------------------------------------------ composition
    def display_mask(self, predictor: Any, image: SliceImage, state: SliceState) -> Composed:
        """The slice's mask on the display grid (the layer): the pass's logits resampled, strokes, cleanup."""
        g = image.geometry
        shape = (g.disp_height, g.disp_width)
        model, prediction, model_ms = self._model_mask(predictor, image, state.prompt(), shape)
        forced = self._forced(image.cache_key, "display", state.strokes(), shape, g)
        return Composed(_finish(model, forced, state.cleanup(), 1.0), prediction, model_ms)

    def original_mask(self, predictor: Any, image: SliceImage, state: SliceState) -> np.ndarray:
        """The slice's mask on the original grid (what the answer saves)."""
        g = image.geometry
        shape = (g.height, g.width)
        model, _, _ = self._model_mask(predictor, image, state.prompt(), shape)
        forced = self._forced(image.cache_key, "original", state.strokes(), shape, None)
        return _finish(model, forced, state.cleanup(), g.sx * g.sy)

    def _model_mask(self, predictor: Any, image: SliceImage, prompt: Prompt, shape: tuple[int, int]
                    ) -> tuple[np.ndarray, Prediction | None, float]:
        started = time.perf_counter()
        prediction = self.prediction(predictor, image, prompt)
        model_ms = (time.perf_counter() - started) * 1000
        if prediction is not None:
            mask = np.asarray(prediction.mask_at(shape), dtype=bool)
            if prompt.box is not None:
                mask = mask & _box_region(shape, prompt, image.geometry)
            return mask, prediction, model_ms
        ai = image.ai_mask() if image.ai_mask is not None else None
        if ai is None:
            return np.zeros(shape, dtype=bool), None, model_ms
        ai = np.asarray(ai, dtype=bool)
        if ai.shape != shape:
            ai = mask_to_display(ai, image.geometry)
        return ai, None, model_ms

    def _forced(self, key: CacheKey, grid: str, strokes: list[dict[str, Any]], shape: tuple[int, int],
                geometry: DisplayGeometry | None) -> np.ndarray | None:
        """int8 raster of the strokes: -1 untouched, 1 painted (brush last), 0 erased (eraser last); None without
        strokes. Kept per ((object, slice), grid) and extended when strokes were only added."""
        if not strokes:
            return None
        cached = self._strokes.get((key, grid))
        if cached is not None and len(cached[0]) <= len(strokes) and \
                all(a is b for a, b in zip(cached[0], strokes)) and cached[1].shape == shape:
            done, forced = len(cached[0]), cached[1].copy()
        else:
            done, forced = 0, np.full(shape, -1, dtype=np.int8)
        for stroke in strokes[done:]:
            points, radius = stroke["points"], stroke["radius"]
            if geometry is not None:
                points, radius = mask_ops.scale_stroke(points, radius, geometry.sx, geometry.sy)
            forced[mask_ops.stroke_mask(shape, points, radius)] = 0 if stroke["erase"] else 1
        self._strokes[(key, grid)] = (list(strokes), forced)
        self._strokes.move_to_end((key, grid))
        while len(self._strokes) > STROKE_CACHE:
            self._strokes.popitem(last=False)
        return forced


def _finish(model: np.ndarray, forced: np.ndarray | None, cleanup: tuple[int, bool] | None,
            area_ratio: float) -> np.ndarray:
    """Strokes over the model mask, then the cleanup (``min_island_px`` display px × ``area_ratio``)."""
    mask = model.copy()
    painted = erased = None
    if forced is not None:
        painted, erased = forced == 1, forced == 0
        mask[painted] = True
        mask[erased] = False
    if cleanup is not None:
        min_px, fill = cleanup
        mask = mask_ops.clean(mask, int(round(min_px * area_ratio)), fill, painted, erased)
    return mask


def _box_region(shape: tuple[int, int], prompt: Prompt, geometry: DisplayGeometry) -> np.ndarray:
    """The pixels of a grid of ``shape`` (the original or the display grid of ``geometry``) whose centres lie in the
    reader's box widened to hold the positive clicks: what a box prompt may mask (the model's mask can leak out)."""
    xs = [prompt.box[0], prompt.box[2]] + [c.x for c in prompt.clicks if c.positive]
    ys = [prompt.box[1], prompt.box[3]] + [c.y for c in prompt.clicks if c.positive]
    x0, y0 = geometry.original_to_display(min(xs), min(ys))  # continuous display coordinates
    x1, y1 = geometry.original_to_display(max(xs), max(ys))
    ky, kx = shape[0] / geometry.disp_height, shape[1] / geometry.disp_width  # grid pixels per display pixel
    cols = (np.arange(shape[1]) + 0.5) / kx
    rows = (np.arange(shape[0]) + 0.5) / ky
    return ((rows >= y0) & (rows <= y1))[:, None] & ((cols >= x0) & (cols <= x1))[None, :]


def _signature(image: SliceImage, prompt: Prompt) -> Signature:
    base = CaseMasks._base(image, prompt) or {}
    box = base.get("box")
    return (tuple(float(v) for v in box) if box is not None else None, base.get("text"),
            tuple(Click(c.x, c.y, c.positive) for c in prompt.clicks))


def _signature_of(prediction: Prediction) -> Signature:
    return (prediction.box, prediction.text, tuple(prediction.clicks))


def _longest_prefix(history: list[Prediction], base: dict[str, Any] | None, clicks: tuple) -> int | None:
    """The index of the latest pass in ``history`` whose prompt is ``base`` plus a prefix of ``clicks``."""
    base = base or {}  # no base pass (the AI has no prompt for the slice): clicks alone
    box = base.get("box")
    box = tuple(float(v) for v in box) if box is not None else None
    wanted = tuple(Click(c.x, c.y, c.positive) for c in clicks)
    for index in range(len(history) - 1, -1, -1):
        p = history[index]
        n = len(p.clicks)
        if p.box == box and p.text == base.get("text") and n <= len(wanted) and tuple(p.clicks) == wanted[:n] \
                and (n > 0 or base):
            return index
    return None


def prompts_payload(state: SliceState, geometry: DisplayGeometry, object_id: int = 0) -> dict[str, Any]:
    """``X-Prompts`` (app/VIEWER_API.md): the slice's clicks, box, stroke count, cleanup, source and object in display
    coordinates (continuous, 0 … display size)."""
    prompt, cleanup = state.prompt(), state.cleanup()

    def point(x: float, y: float) -> list[float]:
        dx, dy = geometry.original_to_display(x, y)
        return [round(dx, 2), round(dy, 2)]

    box = None
    if prompt.box is not None:
        box = point(prompt.box[0], prompt.box[1]) + point(prompt.box[2], prompt.box[3])
    return {"clicks": [point(c.x, c.y) + [1 if c.positive else 0] for c in prompt.clicks], "box": box,
            "edits": len(state.strokes()),
            "cleanup": None if cleanup is None else {"min_island_px": cleanup[0], "fill_holes": cleanup[1]},
            "source": state.source, "object": object_id}
