"""The AI's initial mask of CT/MR slices, computed in the background (never on the request that shows a slice).

One thread with its own :class:`~core_model.predictor.InteractivePredictor` per model (sharing the service's
on-disk embedding cache, so a slice it embedded costs the reader's predictor a disk read only) works through a
short queue of wanted slices, most urgent first: the slice on screen, then its neighbours. Showing another slice
replaces the queue (:meth:`SliceMaskWorker.want`): slices scrolled past are dropped, only the latest
:data:`QUEUED` around the current one stay queued. :meth:`SliceMaskWorker.mask` puts a slice first and waits for it.

Masks are bool arrays on the slice's original grid, in the displayed orientation of :mod:`core_model.io.volume`
(the grid of ``AppService.case_image(case, k).pixels``).

What the AI proposes on a slice (:func:`slice_prompt`): the chest X-ray model's concept (the lungs) only on CT
slices at chest level — aerated lung at least :data:`app.pixels.LUNG_FRACTION` of the body — and only when the
model's language pathway is trained (stock LiteMedSAM's whole-image box would outline the body); nothing on
abdominal slices or MR. A radiologist then starts from an empty slice and prompts the model with a click or a box;
the embedding of every prefetched slice is ready for that first prompt.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from app.background import lower_this_thread
from app.pixels import is_chest_slice

log = logging.getLogger("biascare.slices")

QUEUED = 6  # slices kept queued around the one on screen (the rest are dropped as stale)
KEPT = 96  # masks kept in memory (a 512² bool mask is 256 kB)
NICE = 5  # below the request threads, above the triage thread (nice 19)

SliceKey = tuple[int, int, str]  # (case id, slice index, model version)


def slice_prompt(model: Any, hu: np.ndarray, modality: str) -> dict[str, Any] | None:
    """The initial prompt of a volume slice (keywords of ``InteractivePredictor.predict``), or None: no AI mask.

    ``hu``: the slice's modality values (any grid). See the module docstring for the rule."""
    from core_model.triage import initial_prompt

    if modality != "CT" or not getattr(getattr(model, "language", None), "trained", False):
        return None
    if not is_chest_slice(hu):
        return None
    return initial_prompt(model, *hu.shape)


def neighbours(center: int, count: int, depth: int = QUEUED) -> list[int]:
    """``center`` then ``center+1, center-1, center+2, …`` inside 0..count-1, at most ``depth`` slices."""
    order = [center]
    step = 1
    while len(order) < depth and (center + step < count or center - step >= 0):
        order += [k for k in (center + step, center - step) if 0 <= k < count]
        step += 1
    return order[:depth]


class SliceMaskWorker:
    """Background AI masks of volume slices (see the module docstring)."""

    def __init__(self, compute: Callable[[int, int, Any], np.ndarray], kept: int = KEPT) -> None:
        """``compute(case_id, index, model)`` → the slice's initial mask (bool, original slice grid)."""
        self._compute = compute
        self._cond = threading.Condition()
        self._wanted: list[tuple[SliceKey, Any]] = []
        self._done: dict[SliceKey, np.ndarray] = {}
        self._order: list[SliceKey] = []
        self._failed: dict[SliceKey, str] = {}
        self._running: SliceKey | None = None
        self._kept = kept
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="biascare-slices", daemon=True)
        self._thread.start()

    @staticmethod
    def key(case_id: int, index: int, model: Any) -> SliceKey:
        return (int(case_id), int(index), str(getattr(model.info, "version", "unknown")))

    def want(self, case_id: int, indices: list[int], model: Any) -> None:
        """Replace the queue by these slices (most urgent first); ones already computed are skipped."""
        with self._cond:
            keys = [(self.key(case_id, k, model), model) for k in indices]
            self._wanted = [(k, m) for k, m in keys if k not in self._done and k != self._running]
            self._cond.notify_all()

    def ready(self, case_id: int, index: int, model: Any) -> np.ndarray | None:
        """The slice's mask when computed already, else None (never waits)."""
        with self._cond:
            return self._done.get(self.key(case_id, index, model))

    def mask(self, case_id: int, index: int, model: Any, timeout: float = 120.0) -> np.ndarray:
        """The slice's initial mask, computed first if needed; RuntimeError when it failed or timed out."""
        key = self.key(case_id, index, model)
        with self._cond:
            if key not in self._done and key != self._running:
                self._wanted = [(key, model)] + [(k, m) for k, m in self._wanted if k != key]
                self._cond.notify_all()
            ok = self._cond.wait_for(lambda: key in self._done or key in self._failed or self._stop, timeout)
            if key in self._done:
                return self._done[key]
            cause = self._failed.pop(key, None) or ("stopped" if self._stop else f"not ready in {timeout:.0f} s"
                                                     if not ok else "unknown")
        raise RuntimeError(f"the AI mask of slice {index} could not be computed: {cause}")

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the thread (a pass under way finishes first, up to ``timeout`` seconds)."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _run(self) -> None:
        lower_this_thread(NICE, idle=False)  # above the idle-class triage thread
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._wanted or self._stop)
                if self._stop:
                    return
                key, model = self._wanted.pop(0)
                self._running = key
            try:
                mask = np.asarray(self._compute(key[0], key[1], model), dtype=bool)
            except Exception as error:  # one bad slice must not stop the worker
                log.exception("AI mask of case %s slice %s failed", key[0], key[1])
                with self._cond:
                    self._failed[key] = f"{type(error).__name__}: {error}"
                    self._running = None
                    self._cond.notify_all()
                continue
            with self._cond:
                self._store(key, mask)
                self._running = None
                self._cond.notify_all()

    def _store(self, key: SliceKey, mask: np.ndarray) -> None:
        self._done[key] = mask
        self._order.append(key)
        while len(self._order) > self._kept:
            self._done.pop(self._order.pop(0), None)
