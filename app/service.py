"""The app's service layer: sessions, case views, the click path, submits — every authorisation decision lives here.

The Gradio UI (:mod:`app.ui`) and the lean HTTP routes (:mod:`app.routes`) are thin shells over :class:`AppService`,
so both paths (and the tests) exercise the same code.

Sessions
    A login creates a random session token (the ``biascare_session`` cookie). Each session holds at most one open
    *view* (a case outside a study, or one of the reader's own study assignments). The browser never names a file,
    a case it was not given, or another reader: the click routes act on the session's current view only, and the view
    is identified by a random nonce so that a stale page cannot act on the next case.

Click path
    One :class:`InteractivePredictor` per session (its own click history), all sharing the model object and an
    on-disk float16 embedding cache. Background work (triage of new cases, pre-embedding the next cases of the
    worklist) runs in one low-priority thread (``nice 19``) with its own predictor, so that it never holds the lock
    of a reader's predictor. Interaction events are written by one ordered writer thread after the response is sent;
    a submit waits for the reader's pending events first.

Arms
    In an unaided arm no AI output leaves the server: no mask, no probability, and the click tool (a model forward
    pass) is refused.

AI sources
    The findings shown beside the checklist come from one AI source (:class:`core_model.findings.FindingsCard`): in a
    study's aided arm the study's source (the built-in model, imported predictions or a local torchxrayvision model,
    see :mod:`annotations_db.ai_sources`), in free annotation the built-in model, whose card is registered at start.
    What is suggested is decided by the card's rule only (:meth:`FindingsCard.suggested`).
"""
from __future__ import annotations

import logging
import math
import os
import queue
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from annotations_db import events as event_log
from annotations_db.errors import AccessDenied, AlreadySubmitted, InvalidEvent, NotFound
from annotations_db.events import CaseState, SliceState
from annotations_db.store import AssignmentView, CaseRef, ObjectMask, ReaderRef, Store, rating_in_range
from app.background import lower_this_thread
from app.case_masks import CaseMasks, SliceImage, prompts_payload
from app.login_guard import LoginGuard
from app.render import (MASK_RUNS_TYPE, DisplayGeometry, display_image, encode_base_png, encode_mask_png,
                        encode_mask_runs, mask_to_display)
from app.pixels import PixelBlock, image_block, volume_modality, volume_slice_block, volume_slice_values
from app.slices import SliceMaskWorker, neighbours, slice_prompt
from core_model.classes import CXR_LT_26, Checklist, checklist_for, label_rules
from core_model.objects import DEFAULT_OBJECT, ObjectLabelSet, object_set_for_checklist
from core_model.findings import FindingsCard, display_probability, supplier_card
from core_model.io.volume import LoadedVolume, axial_axis
from core_model.predictor import Prediction
from core_model.triage import Triage, initial_prompt

log = logging.getLogger("biascare.app")

LABEL_SET = "cxr-lt-26"
SUGGESTED_MARK = "●"  # beside a suggested finding's probability (panel and worklist)
CLASSES: tuple[str, ...] = CXR_LT_26
SESSION_COOKIE = "biascare_session"
SESSION_TTL_S = 12 * 3600  # absolute lifetime of a login (the cookie's max-age), whatever the activity
SESSION_IDLE_S = 2 * 3600  # a login unused for this long is refused
MIN_BOX_PX = 2.0  # a box prompt narrower or lower than this (display px) is a slip of the mouse, refused
MAX_CLICKS = 100  # per mask: the prompt grows with every click (and so does each pass), so the history is bounded
PREFETCH_AHEAD = 3
VOLUMES_KEPT = 2  # volumes held in memory for slice scrolling (a 512² × 300 CT is 300 MB as float32)
PIXEL_BLOCKS_KEPT = 64  # gzip'd full-bit-depth slices/images for /pixels (a 512² CT slice: ~0.3 MB)
_GUARD_LOCK = threading.Lock()  # makes each service's login guard once


class AppError(Exception):
    """A refused request; ``status`` is the HTTP status the lean routes answer with."""

    status = 400


class Unauthorized(AppError):
    status = 401


class Forbidden(AppError):
    status = 403


class Missing(AppError):
    status = 404


class Conflict(AppError):
    status = 409


# ---------------------------------------------------------------------------------------------------------------
@dataclass
class CaseImage:
    """A case's pixels and its display rendering, cached by case id."""

    case_id: int
    pixels: np.ndarray
    geometry: DisplayGeometry
    base_png: bytes
    slice_index: int | None = None  # volumes: the shown slice along the axial voxel axis (a mask is saved on it)
    slice_count: int | None = None  # volumes: how many axial slices there are


@dataclass(frozen=True)
class ReadProgress:
    """Where a study read sits in the reader's protocol: "read 4 of 12 · session 1 of 2 · arm unaided"."""

    study: str
    arm: str
    session: int
    sessions: int
    position: int
    reads: int


@dataclass
class View:
    """The case one session has open: fixed facts about it plus ``state``, derived from its event log (replayed when
    the view opens, then advanced by every event the service records)."""

    nonce: str
    case_id: int
    case: str  # pseudonymous id
    target: AssignmentView | CaseRef
    shows_ai: bool
    image: CaseImage
    ai_mask: np.ndarray | None  # the AI's initial mask on the original grid (None in unaided arms)
    ai_probabilities: dict[str, float] | None  # the source's output for the case (classes it has an output for)
    ai_suggested: list[str]  # by the source card's rule
    initial_prompt: dict[str, Any]
    model_version: str  # the AI source shown (its name = version); the built-in model's when no AI is shown
    ai_source: FindingsCard | None = None  # the card of the source shown (None in unaided arms)
    state: CaseState = field(default_factory=CaseState)
    rating_max: int = 0  # > 0: each positive finding is rated 1..rating_max
    progress: ReadProgress | None = None  # study reads only
    checklist: Checklist | None = None  # a study read: the study's label set (else by modality, view_checklist)
    opened_at: float = field(default_factory=time.perf_counter)
    masks: CaseMasks = field(default_factory=CaseMasks)  # each slice's mask composed (app.case_masks)

    @property
    def in_study(self) -> bool:
        return isinstance(self.target, AssignmentView)

    @property
    def clicks(self) -> int:
        return len(self.state.clicks)

    @property
    def object_labels(self) -> ObjectLabelSet:
        """The labels the reader may give the answer's objects (:mod:`core_model.objects`), by the read's checklist."""
        return object_set_for_checklist(view_checklist(self).name, self.image.slice_count is not None)


def objects_payload(view: View) -> dict[str, Any]:
    """The answer's objects for the page: the label set (label, codes, colour) and the objects there are now, each
    ``{id, label, colour, slices}`` (the default object: id 0, label null; ``slices``: those an answer keeps)."""
    labels = view.object_labels
    objects = []
    for object_id, found in sorted(view.state.objects.items()):
        spec = labels.spec(found.label) if found.label is None or found.label in labels.names else None
        objects.append({"id": object_id, "label": found.label,
                        "colour": list(spec.colour) if spec is not None else None,
                        "slices": [k for k in found.acted_slices() if k is not None]})
    return {"object_set": labels.name, "object_labels": labels.as_list(), "objects": objects}


def view_payload(view: View) -> dict[str, Any]:
    """The open case for API clients: nonce, sizes (original and display), for volumes the slice shown, the answer
    being built, for a study read where it sits in the protocol, and the AI source shown (None: no AI shown)."""
    g = view.image.geometry
    progress = view.progress
    return {"nonce": view.nonce, "case": view.case, "shows_ai": view.shows_ai, "width": g.width, "height": g.height,
            "display_width": g.disp_width, "display_height": g.disp_height, **view_slices(view),
            **answer_payload(view), **objects_payload(view),
            "study": None if progress is None else progress.__dict__,
            "ai_source": None if view.ai_source is None else {"name": view.ai_source.name, "kind": view.ai_source.kind}}


def answer_payload(view: View) -> dict[str, Any]:
    """The answer being built, for the page: positives, ratings, the rating scale and the click count."""
    return {"positives": sorted(c for c, v in view.state.labels.items() if v), "ratings": dict(view.state.ratings),
            "rating_max": view.rating_max, "clicks": view.clicks}


class LruCache:
    """A small thread-safe least-recently-used map: ``get`` refreshes an entry, ``put`` evicts the oldest beyond
    ``capacity``."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[Any, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any | None:
        with self._lock:
            if key not in self._items:
                return None
            self._items.move_to_end(key)
            return self._items[key]

    def put(self, key: Any, value: Any) -> None:
        with self._lock:
            self._items[key] = value
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)


def view_slices(view: View) -> dict[str, Any]:
    """The open case's slice position for the page: {"slice", "slices"} (None for 2-D images)."""
    return {"slice": view.image.slice_index, "slices": view.image.slice_count}


@dataclass
class Session:
    token: str
    reader: ReaderRef
    created: float
    predictor: Any
    view: View | None = None
    lock: threading.RLock = field(default_factory=threading.RLock)
    last_seen: float = field(default_factory=time.time)


@dataclass
class LayerResult:
    """One click/undo/reset answer: the display-grid mask layer and where the server time went. It is encoded in
    the format the client asks for (:meth:`encoded`), and the encoding counted in ``encode_ms`` and ``total_ms``."""

    mask: np.ndarray  # (disp_h, disp_w) bool
    area: int
    clicks: int
    model_ms: float
    encode_ms: float
    total_ms: float
    cpu_ms: float = 0.0  # CPU time of the handler thread (with 1 torch thread: what the pass costs on an idle core)
    prompts: dict[str, Any] | None = None  # X-Prompts (app/VIEWER_API.md), display coordinates
    slice: int | None = None  # the slice the layer is of (None: a 2-D image)
    object: int = DEFAULT_OBJECT  # the answer's object the layer is of

    def encoded(self, media_type: str = "image/png") -> bytes:
        """The layer as a palette PNG (``image/png``) or as row runs (:data:`app.render.MASK_RUNS_TYPE`)."""
        started = time.perf_counter()
        body = encode_mask_runs(self.mask) if media_type == MASK_RUNS_TYPE else encode_mask_png(self.mask)
        spent = (time.perf_counter() - started) * 1000
        self.encode_ms += spent
        self.total_ms += spent
        return body

    @property
    def png(self) -> bytes:
        return self.encoded("image/png")


# ---------------------------------------------------------------------------------------------------------------
class EventWriter:
    """One thread writing interaction events in arrival order; ``flush(token)`` waits for a session's pending ones.

    Every handler that records an event flushes before it answers, so the browser is only told a click (or label,
    undo, …) happened once its event is committed; the thread lets the write overlap the handler's own work (the
    mask PNG encoding of a click). A write that fails makes the flush raise, so the reader sees it was not saved.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._queue: queue.Queue = queue.Queue()
        self._pending: dict[str, int] = {}
        self._failed: dict[str, list[str]] = {}
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="biascare-events", daemon=True)
        self._thread.start()

    def put(self, token: str, target: Any, reader: ReaderRef, kind: str, payload: dict | None = None) -> None:
        with self._cond:
            self._pending[token] = self._pending.get(token, 0) + 1
        self._queue.put((token, target, reader, kind, payload))

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            token, target, reader, kind, payload = item
            try:
                self.store.log_event(target, reader, kind, payload)
            except Exception as error:  # an event that cannot be written must not stop the writer
                log.exception("could not log %s event", kind)
                with self._cond:
                    self._failed.setdefault(token, []).append(f"{kind}: {error}")
            finally:
                with self._cond:
                    self._pending[token] -= 1
                    self._cond.notify_all()

    def flush(self, token: str | None = None, timeout: float = 30.0) -> None:
        """Wait until the pending events of ``token`` (all sessions if None) are committed; raise if one failed."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while (self._pending.get(token, 0) if token else sum(self._pending.values())) > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("pending interaction events were not written in time")
                self._cond.wait(left)
            failed = self._failed.pop(token, []) if token else [f for v in self._failed.values() for f in v]
            if not token:
                self._failed.clear()
        if failed:
            raise AppError(f"not saved, please retry: {'; '.join(failed)}")

    def close(self) -> None:
        self._queue.put(None)


# ---------------------------------------------------------------------------------------------------------------
class AppService:
    """Everything the app does, independent of Gradio and HTTP."""

    def __init__(self, store: Store, model: Any, data_dir: Path, *, device: str = "cpu",
                 image_cache: int = 12, idle_seconds: float = 60.0, background: bool = True,
                 max_upload_bytes: int = 64 * 1024 * 1024, embedding_dir: Path | None = None,
                 session_idle_s: float = SESSION_IDLE_S, session_absolute_s: float = SESSION_TTL_S) -> None:
        from core_model.predictor import InteractivePredictor

        self.store = store
        self.model = model
        self.device = device
        self.data_dir = Path(data_dir)
        self.idle_seconds = idle_seconds
        self.max_upload_bytes = max_upload_bytes
        self.session_idle_s = float(session_idle_s)
        self.session_absolute_s = float(session_absolute_s)
        self.model_version = str(getattr(model.info, "version", "unknown"))
        # embeddings depend on the image-encoder weights only: a new decoder checkpoint keeps the cache
        self._embedding_root = Path(embedding_dir or self.data_dir / "embeddings")
        self.embedding_dir = self._embedding_dir(model)
        self._predictor_cls = InteractivePredictor
        self.sessions: dict[str, Session] = {}
        self._sessions_lock = threading.Lock()
        self._images = LruCache(image_cache)  # (case id, requested slice) -> CaseImage
        self._volumes = LruCache(VOLUMES_KEPT)  # case id -> LoadedVolume, for slice scrolling
        self._pinned_models = LruCache(2)  # version -> model of a study pinned to an earlier checkpoint
        self._pixels = LruCache(PIXEL_BLOCKS_KEPT)  # (case id, slice) -> app.pixels.PixelBlock
        self.slice_masks = SliceMaskWorker(self._compute_slice_mask)  # AI masks of volume slices
        self.events = EventWriter(store)
        self.background = BackgroundWorker(self) if background else None
        self.builtin_card = self._register_builtin()

    def _embedding_dir(self, model: Any) -> Path:
        """The disk cache of ``model``'s embeddings: one folder per image-encoder version."""
        return self._embedding_root / _safe_name(str(getattr(model, "encoder_version", None) or
                                                     getattr(model.info, "version", "unknown")))

    # ------------------------------------------------------------------ the checkpoint in use (app.loop)
    def switch_model(self, model: Any) -> None:
        """Put another checkpoint's model in use (a promotion or a rollback): new reads and the free-annotation AI use
        it, every AI output and answer from now on records its version, the worklist's uncertainties and AI outputs
        are recomputed with it in the background; a view already open keeps the model it was opened with until it
        closes, and a study keeps the AI source it was created with."""
        with self._sessions_lock:
            if self.background:  # queued before the new version shows: whoever sees it and waits, waits for this too
                self.background.retriage()
            self.model = model
            self.model_version = str(getattr(model.info, "version", "unknown"))
            self.embedding_dir = self._embedding_dir(model)
            self.builtin_card = self._register_builtin()

    def _current_predictor(self, session: Session, model: Any) -> None:
        """Give the session a predictor of ``model`` (the one in use, or a pinned study's) when it has another."""
        if getattr(session.predictor, "model", model) is not model:
            session.predictor = self._predictor_cls(model, self.device, cache_size=2,
                                                    disk_cache=self._embedding_dir(model))

    def _model_for(self, version: str) -> Any:
        """The model behind an AI source: the one in use, or — for a study pinned to an earlier registered checkpoint
        — that checkpoint's (loaded once, the last two kept); an imported source's masks come from the model in use."""
        if version == self.model_version:
            return self.model
        cached = self._pinned_models.get(version)
        if cached is not None:
            return cached
        from annotations_db.registry import Registry
        from core_model.model import build_model

        checkpoint = Registry(self.store).find(version)
        if checkpoint is None or not Path(checkpoint.path).is_file():
            return self.model
        model = build_model(Path(checkpoint.path))
        self._pinned_models.put(version, model)
        return model

    def _register_builtin(self) -> FindingsCard:
        """The built-in model's card under its version name, registered as an AI source (kept as stored when a
        started study shows it with other evidence)."""
        from annotations_db.errors import StudyDesignError

        card = self.model.findings_card(LABEL_SET)
        card = card if card.name == self.model_version else replace(card, name=self.model_version)
        try:
            self.store.register_ai_source(card)
        except StudyDesignError as error:
            log.warning("built-in AI source kept as stored: %s", error)
            return self.store.ai_source(card.name) or card
        return card

    # ------------------------------------------------------------------ sessions
    def login(self, name: str, password: str, user_agent: str | None = None, address: str | None = None) -> Session:
        """Check the password and open a login stored in the database (survives a restart; see :meth:`session`).

        Through :attr:`login_guard`: back-off per name and per client ``address`` checked before any hashing
        (:class:`app.login_guard.Throttled`, 429/503 with a retry delay), the hash bounded and off the caller's
        priority, the same work for unknown names, one audit record per attempt. Call it off the event loop."""
        reader = self.login_guard.attempt(str(name or ""), str(password or ""), address, user_agent)
        if reader is None:
            raise Unauthorized("unknown reader or wrong password")
        token = self.store.create_login_session(reader, absolute_s=self.session_absolute_s, user_agent=user_agent)
        session = self._new_session(token, reader)
        with self._sessions_lock:
            self._expire()
            self.sessions[token] = session
        return session

    @property
    def login_guard(self) -> LoginGuard:
        """The sign-in defences (:mod:`app.login_guard`), made on first use; assign one to configure it."""
        guard = self.__dict__.get("_login_guard")
        if guard is None:
            with _GUARD_LOCK:
                guard = self.__dict__.setdefault("_login_guard", LoginGuard(self.store))
        return guard

    @login_guard.setter
    def login_guard(self, guard: LoginGuard) -> None:
        self.__dict__["_login_guard"] = guard

    def logout(self, token: str | None) -> None:
        """Revoke the login in the database (refused from now on, also after a restart) and drop it from memory."""
        self.store.revoke_login_session(token)
        with self._sessions_lock:
            self.sessions.pop(token or "", None)

    def session(self, token: str | None) -> Session:
        """The live session of ``token``; the database decides (revocation and expiry apply at once).

        A token valid in the database but unknown in memory (the server restarted) gets a fresh :class:`Session`:
        a new predictor, no open view.
        """
        reader = self.store.login_session(token, idle_s=self.session_idle_s) if token else None
        if reader is None:
            with self._sessions_lock:
                self.sessions.pop(token or "", None)
            raise Unauthorized("not logged in (or the session expired)")
        session = self.sessions.get(token)
        if session is None:
            fresh = self._new_session(token, reader)
            with self._sessions_lock:
                session = self.sessions.setdefault(token, fresh)
        session.reader = reader  # a role changed by an admin applies at once
        session.last_seen = time.time()
        return session

    def _new_session(self, token: str, reader: ReaderRef) -> Session:
        """The in-memory side of a login: its own predictor (click history), no open view."""
        predictor = self._predictor_cls(self.model, self.device, cache_size=2, disk_cache=self.embedding_dir)
        return Session(token, reader, time.time(), predictor)

    def reader_name(self, token: str | None) -> str | None:
        try:
            return self.session(token).reader.name
        except Unauthorized:
            return None

    def _expire(self) -> None:
        """Free the memory of sessions idle past the idle limit (the database refuses them anyway)."""
        now = time.time()
        for token in [t for t, s in self.sessions.items() if now - s.last_seen > self.session_idle_s]:
            self.sessions.pop(token, None)

    @staticmethod
    def require_admin(session: Session) -> None:
        if not session.reader.is_admin:
            raise Forbidden("this page is for administrators")

    # ------------------------------------------------------------------ images
    def case_image(self, case_id: int, slice_index: int | None = None) -> CaseImage:
        """Pixels + display rendering of a case, from the database's source path (never a browser-given path).

        A volume (NIfTI, DICOM series folder, multi-frame DICOM) is shown on one axial slice: ``slice_index`` along
        its axial voxel axis, the middle one when None; AppError when out of range. 2-D cases ignore it."""
        cached = self._images.get((case_id, slice_index))
        if cached is not None:
            return cached
        from core_model.io import load_image

        path, series_uid, is_volume = self._case_source(case_id)
        if is_volume:
            volume = self._volume(case_id, path, series_uid)
            count = volume.num_slices(axial_axis(volume.affine))
            if slice_index is not None and not 0 <= slice_index < count:
                raise AppError(f"slice {slice_index} is out of range: this volume has slices 0..{count - 1}")
            loaded = volume.axial(slice_index)
        else:
            loaded, count = load_image(path), None
        pixels = loaded.pixels
        geometry = DisplayGeometry.for_shape(*pixels.shape[:2])
        image = CaseImage(case_id, pixels, geometry, encode_base_png(display_image(pixels, geometry)),
                          loaded.metadata.extra["slice_index"] if is_volume else None, count)
        self._images.put((case_id, slice_index), image)
        return image

    def _volume(self, case_id: int, path: Path, series_uid: str | None) -> LoadedVolume:
        """The case's volume, the last few kept in memory (scrolling through slices re-reads nothing)."""
        from core_model.io import load_volume

        volume = self._volumes.get(case_id)
        if volume is None:
            volume = load_volume(path, series_uid=series_uid)
            volume.metadata.modality = volume_modality(volume)  # NIfTI has no tag: CT for HU-range data, else MR
            self._volumes.put(case_id, volume)
        return volume

    def case_volume(self, case_id: int) -> LoadedVolume:
        """The volume of a volume case (cached); AppError for a 2-D case."""
        path, series_uid, is_volume = self._case_source(case_id)
        if not is_volume:
            raise AppError("this case is a 2-D image: it has no slices")
        return self._volume(case_id, path, series_uid)

    # ------------------------------------------------------------------ full-bit-depth pixels (GET /pixels)
    def pixels(self, session: Session, nonce: str | None, slice_index: Any = None) -> PixelBlock:
        """The view's samples at full bit depth on the display grid (:mod:`app.pixels`), slice ``slice_index`` of a
        volume (default: the slice shown). Reads the view without the session's lock (which a model pass holds) and
        answers from cached data: 409 for a stale nonce, 404 for a slice the case does not have."""
        view = self._view(session, nonce, need_ai=False)
        index = self._pixel_slice(view, slice_index)
        key = (view.case_id, index)
        block = self._pixels.get(key)
        if block is None:
            if index is None:
                block = image_block(self._case_source(view.case_id)[0])
            else:
                volume = self.case_volume(view.case_id)
                block = volume_slice_block(volume, index, volume.metadata.modality or "")
            self._pixels.put(key, block)
        return block

    @staticmethod
    def _pixel_slice(view: View, value: Any) -> int | None:
        """The slice /pixels serves: ``value`` checked against the volume (None: the slice shown)."""
        count = view.image.slice_count
        if value is None or value == "":
            return view.image.slice_index
        if count is None:
            raise Missing("this case is a 2-D image: it has no slices")
        try:
            index = int(value)
        except (TypeError, ValueError):
            raise AppError(f"the slice must be an integer, not {str(value)[:20]!r}") from None
        if not 0 <= index < count:
            raise Missing(f"slice {index} is out of range: this volume has slices 0..{count - 1}")
        return index

    # ------------------------------------------------------------------ AI masks of volume slices (background)
    def slice_ai_mask(self, view: View, index: int, timeout: float = 120.0) -> np.ndarray | None:
        """The AI's initial mask of slice ``index`` of the view's volume (bool, the slice's original grid in display
        orientation), computed in the background (:mod:`app.slices`) and waited for here; a 2-D view: its AI mask;
        None when the view shows no AI. Call it without holding a lock that /pixels or /slice need."""
        if not view.shows_ai:
            return None
        if view.image.slice_count is None:
            return view.ai_mask
        model = self._model_for(view.model_version)
        try:
            return self.slice_masks.mask(view.case_id, int(index), model, timeout)
        except RuntimeError as error:
            raise AppError(str(error)) from None

    def prefetch_slices(self, view: View, index: int) -> None:
        """Queue the AI masks of slice ``index`` and its neighbours (stale queued slices are dropped)."""
        count = view.image.slice_count
        if count is None or not view.shows_ai:
            return
        self.slice_masks.want(view.case_id, neighbours(int(index), count), self._model_for(view.model_version))

    def _compute_slice_mask(self, case_id: int, index: int, model: Any) -> np.ndarray:
        """The background pass of one slice: embedded with the worker's predictor (disk cache shared with the
        readers'), then the slice's prompt (:func:`app.slices.slice_prompt`) or an empty mask."""
        image = self.case_image(case_id, index)
        volume = self.case_volume(case_id)
        predictor = self._slice_predictor(model)
        prompt = slice_prompt(model, volume_slice_values(volume, index), volume.metadata.modality or "")
        if prompt is None:
            predictor.embed(image.pixels)  # the reader's first click on this slice finds its embedding
            return np.zeros(image.pixels.shape[:2], dtype=bool)
        predictor.set_image(image.pixels)
        return np.asarray(predictor.predict(**prompt).mask, dtype=bool)

    def _slice_predictor(self, model: Any) -> Any:
        """The slice worker's predictor of ``model`` (one per model version, made on first use)."""
        predictors = self.__dict__.setdefault("_slice_predictors", {})
        version = str(getattr(model.info, "version", "unknown"))
        if version not in predictors:
            predictors[version] = self._predictor_cls(model, self.device, cache_size=4,
                                                      disk_cache=self._embedding_dir(model))
        return predictors[version]

    def _case_source(self, case_id: int) -> tuple[Path, str | None, bool]:
        """(source path, SeriesInstanceUID, is a volume): the series picks the volume of a DICOM series folder."""
        from annotations_db.models import Case

        with self.store.read_session() as session:
            row = session.get(Case, case_id)
            if row is None:
                raise Missing(f"no case {case_id}")
            return Path(row.source_uri), row.series_uid, row.depth is not None

    # ------------------------------------------------------------------ worklist
    def worklist(self, session: Session, *, status: str = "open", class_name: str | None = None,
                 min_uncertainty: float | None = None, max_uncertainty: float | None = None) -> list[dict[str, Any]]:
        """Free-annotation cases, highest model uncertainty first; also schedules pre-embedding of the top ones.

        During a study read the worklist shows no AI output (no uncertainty ranking, no finding): the reader is
        inside the study's protocol until the read is submitted or paused."""
        items = self.store.worklist(session.reader, status=status, class_name=class_name or None,
                                    min_uncertainty=min_uncertainty, model_version=self.model_version,
                                    card=self.builtin_card)
        if max_uncertainty is not None:
            items = [i for i in items if i.uncertainty is None or i.uncertainty <= max_uncertainty]
        blind = self.in_study_read(session)
        rows = [{"case": i.case, "case_id": i.case_id, "uncertainty": None if blind else i.uncertainty,
                 "annotated": i.annotated, "top_finding": "" if blind else _top(self.builtin_card, i.probabilities)}
                for i in items]
        if self.background and not blind:
            self.background.prefetch([r["case_id"] for r in rows[:PREFETCH_AHEAD]])
        return rows

    def progress(self, session: Session) -> tuple[int, int]:
        done = len(self.store.worklist(session.reader, status="done"))
        total = len(self.store.worklist(session.reader, status="all"))
        return done, total

    def assignments(self, session: Session) -> list[AssignmentView]:
        return self.store.assignments_for(session.reader)

    @staticmethod
    def in_study_read(session: Session) -> bool:
        return session.view is not None and session.view.in_study

    # ------------------------------------------------------------------ opening a case
    def open_case(self, session: Session, case: str) -> View:
        """Open a case for free annotation (outside any study) with the AI output shown."""
        if self.in_study_read(session):
            raise Conflict("you are in a reader-study read: submit it (or pause the study) before opening other "
                           "cases")
        try:
            ref = self.store.case(str(case))
        except NotFound:
            raise Missing(f"no case {case!r}") from None
        self._guard_study_case(session, ref.id)
        return self._open(session, ref, ref.id, ref.pseudo_id, shows_ai=True)

    def open_assignment(self, session: Session, assignment_id: int | None = None) -> View | None:
        """Open one of the reader's own assignments (default: the next pending one). None when all are done."""
        if assignment_id is None:
            target = self.store.next_assignment(session.reader)
            if target is None:
                return None
        else:
            try:
                target = self.store.assignment(session.reader, int(assignment_id))
            except AccessDenied:
                raise Forbidden("this assignment belongs to another reader") from None
            except NotFound:
                raise Missing(f"no assignment {assignment_id}") from None
            if target.reader_id != session.reader.id:
                raise Forbidden("readers open only their own assignments")
            if not target.available:
                raise Forbidden("this reading session is locked (washout period)")
            if target.status == "submitted" and not self.store.study_settings(target.study_id).allow_revisit:
                raise Conflict("this case was submitted already and the study does not allow revisits")
            following = self.store.next_assignment(session.reader, target.study_id)
            if target.status != "submitted" and following is not None and following.id != target.id:
                raise Conflict(f"reads open in the study's order: read {following.order} comes first")
        return self._open(session, target, target.case_id, target.case, shows_ai=target.shows_ai)

    def resume(self, session: Session) -> View | None:
        """The case this reader has open: the session's view, or — after a restart or a new login — the last case
        shown whose case session is still open, restored from its events. None when there is none."""
        if session.view is not None:  # a page (re)loaded onto the open case: a new viewing segment starts
            with session.lock:
                view = session.view
                if view is not None:
                    self._announce(session, view, {"restored": True, "reason": "page load"})
                    self.events.flush(session.token)
                    return view
        target = self.store.last_open_target(session.reader)
        if target is None:
            return None
        if isinstance(target, AssignmentView):
            return self._open(session, target, target.case_id, target.case, shows_ai=target.shows_ai)
        return self._open(session, target, target.id, target.pseudo_id, shows_ai=True)

    def _guard_study_case(self, session: Session, case_id: int) -> None:
        """A reader with pending study reads of a case must not see its AI output outside the study first."""
        if session.reader.is_admin:
            return
        pending = [a for a in self.store.assignments_for(session.reader, include_locked=True)
                   if a.case_id == case_id and a.status != "submitted"]
        if pending:
            raise Forbidden("this case is part of one of your reader studies; open it from the study tab")

    def _open(self, session: Session, target: AssignmentView | CaseRef, case_id: int, pseudo_id: str,
              shows_ai: bool) -> View:
        """Show a case: its open case session (events since its last submit) is replayed — labels, ratings, slice,
        and the clicks through the predictor to the same mask — then ``case_shown`` starts a new viewing segment."""
        prior = event_log.open_session(self.store.events(target, session.reader))
        state = event_log.replay(prior)
        image = self.case_image(case_id, state.slice)
        with session.lock:
            if session.view is not None:
                self._hide(session, "another case was opened")
            source = self.ai_source_for(target) if shows_ai else None
            model = self._model_for(source.name if source else self.model_version)
            self._current_predictor(session, model)
            started = time.perf_counter()
            prompt = initial_prompt(model, *image.pixels.shape[:2])
            ai_mask = None
            if shows_ai:
                session.predictor.set_image(image.pixels)
                if image.slice_count is None:
                    ai_mask = session.predictor.predict(**prompt).mask  # the first click refines this pass's logits
                else:  # a volume slice: the background's per-slice rule (app.slices), no chest prompt on the abdomen
                    ai_mask = self.slice_masks.mask(case_id, image.slice_index, model)
            probabilities, suggested = self._ai_findings(case_id, image, source) if source else (None, [])
            view = View(secrets.token_urlsafe(12), case_id, pseudo_id, target, shows_ai, image, ai_mask,
                        probabilities, suggested, prompt, source.name if source else self.model_version,
                        ai_source=source, state=state, **self._read_rules(target))
            session.view = view
            self._announce(session, view, {"restored": bool(prior),
                                           "embed_ms": round((time.perf_counter() - started) * 1000, 1)})
            if shows_ai:
                self._restore_masks(session, view)
            self.events.flush(session.token)
        if self.background and not isinstance(target, AssignmentView):
            self.background.prefetch(self._next_case_ids(session, case_id))
        if image.slice_index is not None:
            self.prefetch_slices(view, image.slice_index)
        return view

    def _restore_masks(self, session: Session, view: View) -> None:
        """The replay's mask part: the shown slice's prompt re-run through the predictor, which now holds the AI's
        initial pass of a 2-D image (:mod:`app.case_masks`), so the next click refines the same logits as before the
        reload; other slices are composed when asked for."""
        if view.image.slice_count is None:
            view.masks.adopt(session.predictor, None)
        key = view.image.slice_index
        view.masks.prediction(session.predictor, self._slice_image(view, key), view.state.slice_state(key).prompt())

    def _announce(self, session: Session, view: View, payload: dict[str, Any]) -> None:
        """The case is on screen (``case_shown`` starts a viewing segment) with, where shown, the AI output."""
        self._record(session, view, "case_shown", {"arm": getattr(view.target, "arm", None), **payload,
                                                   **_slice_field(view.image.slice_index)})
        if view.shows_ai and view.ai_source is not None:
            source = view.ai_source
            self._record(session, view, "ai_shown", {"model_version": source.name, "source": source.name,
                                                     "kind": source.kind})

    def _read_rules(self, target: AssignmentView | CaseRef) -> dict[str, Any]:
        """The answer rules of a read: the study's rating scale and its progress line; free annotation: binary."""
        if not isinstance(target, AssignmentView):
            return {"rating_max": 0, "progress": None}
        settings = self.store.study_settings(target.study_id)
        views = self.store.assignments_for(target.reader_id, target.study_id, include_locked=True)
        sessions = sorted({v.session for v in views})
        position = next(i for i, v in enumerate(views, start=1) if v.id == target.id)
        return {"rating_max": settings.rating_max,
                "progress": ReadProgress(settings.name, target.arm, target.session, len(sessions), position,
                                         len(views)),
                "checklist": study_checklist(settings.classes)}

    def _next_case_ids(self, session: Session, case_id: int) -> list[int]:
        items = self.store.worklist(session.reader, status="open")
        ids = [i.case_id for i in items if i.case_id != case_id]
        return ids[:PREFETCH_AHEAD]

    def ai_source_for(self, target: AssignmentView | CaseRef) -> FindingsCard:
        """The AI source a read shows: its study's (attached by the admin), the built-in model outside studies."""
        if isinstance(target, AssignmentView):
            name = self.store.study_settings(target.study_id).ai_source
            if name and name != self.builtin_card.name:
                return self.store.ai_source(name) or _unvalidated_card(name)
        return self.builtin_card

    def _ai_findings(self, case_id: int, image: CaseImage, source: FindingsCard) -> tuple[dict | None, list[str]]:
        """The source's probabilities for the case (classes it has an output for) and, by its card's rule, the
        suggested findings; radiographs only (a CT/MR volume gets none)."""
        if image.slice_count is not None:
            return None, []
        prediction = self.store.prediction(case_id, source.name)
        if prediction is None:
            return None, []
        probabilities = {k: p for k, p in source.shown(prediction.probabilities or {}).items() if k in CLASSES}
        return probabilities or None, source.suggested(probabilities)

    def _hide(self, session: Session, reason: str) -> None:
        view = session.view
        if view is not None:
            self._record(session, view, "case_hidden", {"reason": reason})
        session.view = None

    # ------------------------------------------------------------------ acting on the open case
    def _view(self, session: Session, nonce: str | None, need_ai: bool = True) -> View:
        """The open view named by ``nonce``; Conflict (HTTP 409) when the request names no view or a stale one."""
        view = session.view
        if view is None or nonce is None or not secrets.compare_digest(str(nonce), view.nonce):
            raise Conflict("this case is no longer open in this page (another tab or window opened another case, "
                           "or it was submitted); reload the page")
        if need_ai and not view.shows_ai:
            raise Forbidden("the AI tools are off in this arm of the study")
        return view

    @contextmanager
    def _acting(self, session: Session, nonce: str | None, *, need_ai: bool = True) -> Iterator[View]:
        """Act on the view named by ``nonce`` under the session's lock; on the way out every event recorded inside
        is committed (the caller is answered only after that)."""
        with session.lock:
            view = self._view(session, nonce, need_ai)
            yield view
            self.events.flush(session.token)

    def _record(self, session: Session, view: View, kind: str, payload: dict[str, Any]) -> None:
        """The one place that records an event of the open case: queued for the writer (committed before the
        handler answers, see :meth:`_acting`) and folded into the view's state by the same rule as replay."""
        body = event_log.validate(kind, payload)
        self.events.put(session.token, view.target, session.reader, kind, body)
        view.state.apply(kind, body)

    def click(self, session: Session, nonce: str | None, x: float, y: float, positive: bool,
              slice_index: Any = None, obj: Any = None) -> LayerResult:
        """A click at continuous display coordinates (x, y) on a slice (default: the one shown) of an object (default:
        the default object; a labelled object's first click starts its mask afresh) → one refinement pass
        (:mod:`app.case_masks`) → the object's new mask layer of the slice."""
        started, cpu_started = time.perf_counter(), time.thread_time()
        x, y = _coordinate(x), _coordinate(y)
        with self._acting(session, nonce) as view:
            key, ref = self._slice_key(view, slice_index), self._object_ref(view, obj)
            image = self._slice_image(view, key, obj=ref[0], label=ref[1])
            geometry = image.geometry
            if not geometry.inside(x, y):
                raise AppError(f"click ({x}, {y}) is outside the image ({geometry.disp_width}×{geometry.disp_height})")
            prompt = view.state.slice_state(key, ref[0]).prompt()
            if len(prompt.clicks) >= MAX_CLICKS:
                raise AppError(f"{MAX_CLICKS} clicks is the most one mask takes: undo, reset or submit")
            ox, oy = geometry.display_to_original(x, y)
            wanted = replace(prompt, clicks=prompt.clicks + (event_log.Click(ox, oy, bool(positive)),))
            prediction = view.masks.prediction(session.predictor, image, wanted)
            model_ms = (time.perf_counter() - started) * 1000
            self._record(session, view, "click", {"x": ox, "y": oy, "positive": bool(positive), "display_x": x,
                                                  "display_y": y, "iou": round(prediction.iou, 4),
                                                  "model_ms": round(model_ms, 1), **_slice_field(key),
                                                  **_object_field(ref)})
            result = self._compose(session, view, image, started, model_ms)  # overlaps the event write
            result.cpu_ms = (time.thread_time() - cpu_started) * 1000
        return result

    def box(self, session: Session, nonce: str | None, x0: Any, y0: Any, x1: Any, y1: Any,
            slice_index: Any = None, obj: Any = None) -> LayerResult:
        """A box prompt (continuous display corners, clipped to the image): the slice's prompt starts afresh from it
        (earlier box and clicks dropped, strokes kept); later clicks refine it."""
        started = time.perf_counter()
        corners = [_coordinate(v) for v in (x0, y0, x1, y1)]
        with self._acting(session, nonce) as view:
            key, ref = self._slice_key(view, slice_index), self._object_ref(view, obj)
            image = self._slice_image(view, key, obj=ref[0], label=ref[1])
            g = image.geometry
            (ax, bx), (ay, by) = (sorted(min(max(v, 0.0), float(g.disp_width)) for v in corners[0::2]),
                                  sorted(min(max(v, 0.0), float(g.disp_height)) for v in corners[1::2]))
            if bx - ax < MIN_BOX_PX or by - ay < MIN_BOX_PX:
                raise AppError(f"the box is smaller than {MIN_BOX_PX} display px on the image: drag a larger one")
            (ox0, oy0), (ox1, oy1) = g.display_to_original(ax, ay), g.display_to_original(bx, by)
            view.masks.prediction(session.predictor, image, event_log.Prompt((ox0, oy0, ox1, oy1)))
            model_ms = (time.perf_counter() - started) * 1000
            self._record(session, view, "box", {"x0": ox0, "y0": oy0, "x1": ox1, "y1": oy1,
                                                "display": [ax, ay, bx, by], **_slice_field(key),
                                                **_object_field(ref)})
            return self._compose(session, view, image, started, model_ms)

    def stroke(self, session: Session, nonce: str | None, points: Any, radius: Any, erase: Any,
               slice_index: Any = None, obj: Any = None) -> LayerResult:
        """A brush (``erase`` false) or eraser stroke: display-grid points (continuous) and radius (display px),
        logged on the original grid; applied over the model's mask and kept when later clicks re-run it."""
        started = time.perf_counter()
        if not isinstance(points, list) or not 1 <= len(points) <= event_log.MAX_STROKE_POINTS:
            raise AppError(f"a stroke needs 'points': a list of 1..{event_log.MAX_STROKE_POINTS} [x, y] pairs")
        if not isinstance(erase, bool):
            raise AppError("a stroke needs 'erase': true (eraser) or false (brush)")
        pairs = [p for p in points if isinstance(p, (list, tuple)) and len(p) == 2]
        if len(pairs) != len(points):
            raise AppError("stroke points must be [x, y] pairs of display coordinates")
        shown = [(_coordinate(x), _coordinate(y)) for x, y in pairs]
        radius = _coordinate(radius)
        with self._acting(session, nonce) as view:
            key, ref = self._slice_key(view, slice_index), self._object_ref(view, obj)
            image = self._slice_image(view, key, obj=ref[0], label=ref[1])
            g = image.geometry
            original, scale = [list(g.display_to_original(x, y)) for x, y in shown], (g.sx + g.sy) / 2
            low, high = event_log.STROKE_RADIUS
            if not low <= radius * scale <= high:
                raise AppError(f"the stroke radius must be {low / scale:.3g}..{high / scale:.3g} display px on this "
                               f"image, got {radius}")
            body = self._valid("stroke", {"points": original, "radius": radius * scale, "erase": erase,
                                          "display_radius": radius, **_slice_field(key), **_object_field(ref)})
            self._record(session, view, "stroke", body)
            return self._compose(session, view, image, started, 0.0)

    def cleanup(self, session: Session, nonce: str | None, min_island_px: Any, fill_holes: Any,
                slice_index: Any = None, obj: Any = None) -> LayerResult:
        """The slice's display clean-up: islands below ``min_island_px`` display px dropped, holes filled (``0,
        false`` turns it off); shown and saved alike."""
        started = time.perf_counter()
        with self._acting(session, nonce) as view:
            key, ref = self._slice_key(view, slice_index), self._object_ref(view, obj)
            body = self._valid("cleanup", {"min_island_px": min_island_px, "fill_holes": fill_holes,
                                           **_slice_field(key), **_object_field(ref)})
            self._record(session, view, "cleanup", body)
            return self._compose(session, view, self._slice_image(view, key, obj=ref[0], label=ref[1]), started, 0.0)

    def carry(self, session: Session, nonce: str | None, source: Any, target: Any, obj: Any = None) -> LayerResult:
        """Propagation aid: slice ``source``'s prompt (box and clicks) re-run on slice ``target`` as its starting
        point (undo takes it back); the answer is the layer of ``target``."""
        started = time.perf_counter()
        with self._acting(session, nonce) as view:
            if view.image.slice_count is None:
                raise AppError("this case is a 2-D image: it has no slices to carry a mask between")
            key_from, key_to = self._slice_key(view, source, "from"), self._slice_key(view, target, "to")
            ref = self._object_ref(view, obj)
            body = self._valid("carry", {"from": key_from, "to": key_to, **_object_field(ref)})
            prompt = view.state.slice_state(key_from, ref[0]).prompt()
            if prompt.empty:
                raise AppError(f"slice {key_from} has no box or click to carry: prompt it first")
            image = self._slice_image(view, key_to, obj=ref[0], label=ref[1])
            view.masks.prediction(session.predictor, image, replace(prompt, carried_from=key_from))
            model_ms = (time.perf_counter() - started) * 1000
            self._record(session, view, "carry", body)
            return self._compose(session, view, image, started, model_ms)

    def measure(self, session: Session, nonce: str | None, x0: Any, y0: Any, x1: Any, y1: Any,
                slice_index: Any = None) -> dict[str, Any]:
        """A distance between two display points: ``px`` in original image pixels, ``mm`` from the pixel spacing
        (None when the image does not say it); logged as a ``measure`` event, the mask untouched."""
        ends = [_coordinate(v) for v in (x0, y0, x1, y1)]
        with self._acting(session, nonce, need_ai=False) as view:
            key = self._slice_key(view, slice_index)
            g = self._slice_image(view, key, with_ai=False).geometry
            dx, dy = ends[2] - ends[0], ends[3] - ends[1]
            spacing = self._display_spacing(session, view, key)
            mm = None if spacing is None else math.hypot(dx * spacing[1], dy * spacing[0])
            px = math.hypot(dx * g.sx, dy * g.sy)
            (ox0, oy0), (ox1, oy1) = g.display_to_original(ends[0], ends[1]), g.display_to_original(ends[2], ends[3])
            self._record(session, view, "measure", {"x0": ox0, "y0": oy0, "x1": ox1, "y1": oy1, "mm": mm,
                                                    "px": px, **_slice_field(key)})
            return {"mm": None if mm is None else round(mm, 3), "px": round(px, 3), "slice": key}

    def _display_spacing(self, session: Session, view: View, key: int | None) -> tuple[float, float] | None:
        """(row_mm, col_mm) of one display pixel of the slice (the /pixels block's), None when unknown."""
        try:
            return self.pixels(session, view.nonce, key).spacing
        except (AppError, OSError, ValueError):
            return None

    def undo(self, session: Session, nonce: str | None, slice_index: Any = None, obj: Any = None) -> LayerResult:
        """Take back the last action on the slice of an object (default: the default object), whatever its kind
        (click, box, stroke, cleanup, carry); other objects keep theirs."""
        started = time.perf_counter()
        with self._acting(session, nonce) as view:
            key, ref = self._slice_key(view, slice_index), self._object_ref(view, obj)
            standing = view.state.slice_state(key, ref[0]).actions[:-1]
            self._record(session, view, "undo", {"clicks": len(SliceState(standing).prompt().clicks),
                                                 **_slice_field(key), **_object_field(ref)})
            return self._compose(session, view, self._slice_image(view, key, obj=ref[0], label=ref[1]), started, 0.0)

    def reset(self, session: Session, nonce: str | None, slice_index: Any = None, obj: Any = None) -> LayerResult:
        """The slice of an object back to where it started (the default object: the AI's initial mask; a labelled
        one: no mask), every action of that object on it dropped (what will be saved)."""
        started = time.perf_counter()
        with self._acting(session, nonce) as view:
            key, ref = self._slice_key(view, slice_index), self._object_ref(view, obj)
            self._record(session, view, "reset", {**_slice_field(key), **_object_field(ref)})
            return self._compose(session, view, self._slice_image(view, key, obj=ref[0], label=ref[1]), started, 0.0)

    def remove_object(self, session: Session, nonce: str | None, obj: Any) -> dict[str, Any]:
        """Delete an object of the answer (every slice of it; the default object too: its AI mask is then not
        saved); answers the objects left (:func:`objects_payload`)."""
        with self._acting(session, nonce) as view:
            object_id = obj.get("id") if isinstance(obj, dict) else None
            if isinstance(object_id, bool) or not isinstance(object_id, int):
                raise AppError("name the object to delete: 'object': {id}")
            if object_id not in view.state.objects:
                raise AppError(f"the answer has no object {object_id}")
            self._record(session, view, "object_removed", {"object": {"id": object_id}})
            return objects_payload(view)

    def show_slice(self, session: Session, nonce: str | None, index: Any) -> dict[str, Any]:
        """Show another axial slice of the open volume: records ``slice_shown`` and moves the background prefetch
        there (no model pass here: the slice's AI mask comes from :meth:`slice_ai_mask`). Only the latest of quick
        successive requests selects the slice in the reader's predictor (a disk-cache read when prefetched); the
        stale ones (a later request is waiting) change and record nothing: the slice landed on is logged."""
        if isinstance(index, bool) or not isinstance(index, (int, str)):
            raise AppError("the slice index must be an integer")
        try:
            index = int(index)
        except ValueError:
            raise AppError("the slice index must be an integer") from None
        early = self._view(session, nonce, need_ai=False)
        count = early.image.slice_count
        if count is None:
            raise AppError("this case is a 2-D image: it has no slices")
        if not 0 <= index < count:
            raise AppError(f"slice {index} is out of range: this volume has slices 0..{count - 1}")
        self.prefetch_slices(early, index)
        ticket = self._slice_ticket(early.nonce)
        with self._acting(session, nonce, need_ai=False) as view:
            if ticket != self._slice_tickets.get(view.nonce):  # a later /slice is waiting: it is the one shown
                return view_slices(view)
            image = self.case_image(view.case_id, index)
            previous, view.image = view.image.slice_index, image
            if view.shows_ai:
                view.ai_mask = self.slice_masks.ready(view.case_id, index, self._model_for(view.model_version))
                session.predictor.set_image(image.pixels)
            self._record(session, view, "slice_shown", {"slice": image.slice_index, "previous": previous})
            return view_slices(view)

    def _slice_ticket(self, nonce: str) -> int:
        """A new number for a /slice request of view ``nonce``; only the latest one does the predictor's work."""
        tickets = self.__dict__.setdefault("_slice_tickets", {})
        with self._sessions_lock:
            tickets[nonce] = ticket = tickets.get(nonce, 0) + 1
        return ticket

    @property
    def _slice_tickets(self) -> dict[str, int]:
        return self.__dict__.setdefault("_slice_tickets", {})

    def accept(self, session: Session, nonce: str | None, slice_index: Any = None, obj: Any = None) -> dict[str, Any]:
        """The mask of the slice (default: the one shown) of an object (default: the default one) accepted as it
        is."""
        with self._acting(session, nonce) as view:
            key, ref = self._slice_key(view, slice_index), self._object_ref(view, obj)
            clicks = len(view.state.slice_state(key, ref[0]).prompt().clicks)
            self._record(session, view, "accept", {"clicks": clicks, **_slice_field(key), **_object_field(ref)})
            return {"accepted": True, "clicks": clicks, "slice": key, "object": ref[0]}

    def current_layer(self, session: Session, nonce: str | None, slice_index: Any = None,
                      obj: Any = None) -> LayerResult:
        """The slice's layer of an object (default: the default object) as it is now (page load, reload, another
        slice): the reader's mask where they acted, else the default object's AI initial mask (a volume slice's is
        waited for outside the session's lock), a labelled object's nothing."""
        started = time.perf_counter()
        view = self._view(session, nonce)
        key, ref = self._slice_key(view, slice_index), self._object_ref(view, obj, new=False)
        ai = None
        if key is not None and ref[0] == DEFAULT_OBJECT and view.state.slice_state(key).prompt().empty:
            ai = self.slice_ai_mask(view, key)  # computed in the background; /slice and /pixels stay free
        with session.lock:
            view = self._view(session, nonce)
            image = self._slice_image(view, key, obj=ref[0], label=ref[1])
            if ai is not None:
                image.ai_mask = lambda: ai
            return self._compose(session, view, image, started, 0.0)

    def base_png(self, session: Session, nonce: str | None) -> bytes:
        return self._view(session, nonce, need_ai=False).image.base_png

    def current_mask(self, session: Session) -> np.ndarray | None:
        """The mask on screen (the shown slice's, original grid); None without AI tools."""
        view = session.view
        if view is None or not view.shows_ai:
            return None
        with session.lock:
            key = view.image.slice_index
            return view.masks.original_mask(session.predictor, self._slice_image(view, key),
                                            view.state.slice_state(key))

    def reader_masks(self, view: View, object_id: int = DEFAULT_OBJECT) -> dict[int | None, np.ndarray]:
        """The masks an answer saves of one object (default: the default object), each on its slice's original
        grid: a 2-D image → ``{None: mask}`` (the object's mask on screen); a volume → ``{slice: mask}`` for every
        slice the reader acted on (an action still standing, or an accept; see
        :meth:`annotations_db.events.CaseState.acted_slices`). Empty without AI tools."""
        session = next((s for s in list(self.sessions.values()) if s.view is view), None)
        if session is None or not view.shows_ai:
            return {}
        with session.lock:
            keys = [None] if view.image.slice_count is None else \
                [k for k in view.state.acted_slices(object_id) if k is not None]
            label = view.state.object_label(object_id)
            return {k: view.masks.original_mask(session.predictor, self._slice_image(view, k, obj=object_id,
                                                                                     label=label),
                                                view.state.slice_state(k, object_id)) for k in keys}

    def object_masks(self, view: View) -> dict[int, dict[int | None, np.ndarray]]:
        """``{object id: reader_masks of it}`` for the objects a submit saves
        (:meth:`annotations_db.events.CaseState.kept_objects`)."""
        return {object_id: self.reader_masks(view, object_id) for object_id in view.state.kept_objects()}

    def _object_ref(self, view: View, value: Any, new: bool = True) -> tuple[int, str | None]:
        """(object id, label) an action names: None → the default object (0, None); ``{"id": n, "label": L}`` → a
        labelled object, L from the view's object labels (:attr:`View.object_labels`), needed when object n is new
        to the answer (``new``: may it be new) and equal to its label otherwise. AppError (400) naming the cause."""
        if value is None:
            return DEFAULT_OBJECT, None
        if not isinstance(value, dict):
            raise AppError("'object' must be {id, label} (or omitted: the default object)")
        object_id, label = value.get("id"), value.get("label")
        if isinstance(object_id, bool) or not isinstance(object_id, int) or object_id < 0:
            raise AppError(f"an object id is an integer ≥ 0, got {object_id!r}")
        if object_id == DEFAULT_OBJECT:
            if label is not None:
                raise AppError("object 0 is the default (unlabelled) object: a labelled object has an id ≥ 1")
            return DEFAULT_OBJECT, None
        known = view.state.object_label(object_id) if object_id in view.state.objects else None
        if label is None:
            if new and object_id not in view.state.objects:
                raise AppError(f"object {object_id} is new to this answer: give its label")
            return object_id, known  # a layer of an object not there (yet): an empty one
        if not isinstance(label, str):
            raise AppError("an object's label must be a text")
        try:
            view.object_labels.get(label)
        except ValueError as error:
            raise AppError(str(error)) from None
        if known is not None and known != label:
            raise AppError(f"object {object_id} is labelled {known!r}, not {label!r}: a new label is a new object")
        return object_id, label

    # ------------------------------------------------------------------ mask composition helpers
    def _slice_key(self, view: View, value: Any, name: str = "slice") -> int | None:
        """The slice an action names (``value``; None: the one shown); None for a 2-D image. AppError for a slice
        on a 2-D image, a non-integer or one out of range."""
        count = view.image.slice_count
        if value is None:
            return view.image.slice_index
        if count is None:
            raise AppError(f"this case is a 2-D image: it has no slices ({name!r} must be omitted or null)")
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise AppError(f"{name!r} must be an integer slice index")
        try:
            index = int(value)
        except ValueError:
            raise AppError(f"{name!r} must be an integer slice index") from None
        if not 0 <= index < count:
            raise AppError(f"{name} {index} is out of range: this volume has slices 0..{count - 1}")
        return index

    def _slice_image(self, view: View, key: int | None, with_ai: bool = True, obj: int = DEFAULT_OBJECT,
                     label: str | None = None) -> SliceImage:
        """What :class:`app.case_masks.CaseMasks` needs of slice ``key`` (None: the 2-D image) of object ``obj``
        labelled ``label``: the default object starts from the AI's prompt and mask, a labelled object from nothing
        (its label decides the decoder that answers its box)."""
        if obj != DEFAULT_OBJECT:
            image = view.image if view.image.slice_count is None or key == view.image.slice_index \
                else self.case_image(view.case_id, key)
            return SliceImage(key, image.pixels, image.geometry, None, None, object=obj, label=label)
        if view.image.slice_count is None:
            return SliceImage(None, view.image.pixels, view.image.geometry, view.initial_prompt,
                              lambda: view.ai_mask)
        image = view.image if key == view.image.slice_index else self.case_image(view.case_id, key)
        prompt = view.masks.initial_prompts.get(key, False) if with_ai else None
        if prompt is False:
            model = self._model_for(view.model_version)
            volume = self.case_volume(view.case_id)
            prompt = slice_prompt(model, volume_slice_values(volume, key), volume.metadata.modality or "")
            view.masks.initial_prompts[key] = prompt
        return SliceImage(key, image.pixels, image.geometry, prompt, lambda: self.slice_ai_mask(view, key))

    @staticmethod
    def _valid(kind: str, payload: dict[str, Any]) -> dict[str, Any]:
        """``payload`` validated as a ``kind`` event (AppError, HTTP 400, naming the cause)."""
        try:
            return event_log.validate(kind, payload)
        except InvalidEvent as error:
            raise AppError(str(error)) from None

    def _compose(self, session: Session, view: View, image: SliceImage, started: float,
                 model_ms: float) -> LayerResult:
        """The slice's layer now: its display mask composed (:meth:`CaseMasks.display_mask`), with its prompts."""
        state = view.state.slice_state(image.key, image.object)
        composed = view.masks.display_mask(session.predictor, image, state)
        result = self._layer(composed.mask, image.geometry, started, model_ms or composed.model_ms,
                             len(state.prompt().clicks))
        result.prompts, result.slice = prompts_payload(state, image.geometry, image.object), image.key
        result.object = image.object
        return result

    @staticmethod
    def _layer(mask: np.ndarray | Prediction | None, geometry: DisplayGeometry, started: float, model_ms: float,
               clicks: int) -> LayerResult:
        """The display-size mask layer (a :class:`Prediction` is resampled straight from its low-res logits, a
        display-grid mask taken as it is, an original-grid one sampled down)."""
        t0 = time.perf_counter()
        shape = (geometry.disp_height, geometry.disp_width)
        if mask is None:
            small, area = np.zeros(shape, bool), 0
        else:
            if isinstance(mask, Prediction):
                small = mask.mask_at(shape)
            else:
                small = mask if mask.shape == shape else mask_to_display(mask, geometry)
            scale = (geometry.height * geometry.width) / (shape[0] * shape[1])
            area = int(round(np.count_nonzero(small) * scale))
        now = time.perf_counter()
        return LayerResult(small, area, clicks, model_ms, (now - t0) * 1000, (now - started) * 1000)

    # ------------------------------------------------------------------ client events, answers, submit, skip
    def client_event(self, session: Session, nonce: str | None, kind: str, payload: dict | None = None) -> None:
        if kind not in event_log.CLIENT_KINDS:
            raise AppError(f"event kind {kind!r} cannot be sent by the browser")
        clean = {k: v for k, v in (payload or {}).items() if isinstance(k, str) and isinstance(v, (int, float, str, bool))
                 and len(str(v)) < 200}
        with self._acting(session, nonce, need_ai=False) as view:
            if kind == "ai_shown" and not view.shows_ai:
                raise Forbidden("the AI output is not shown in this arm")
            self._record(session, view, kind, dict(list(clean.items())[:10]))

    def set_answer(self, session: Session, nonce: str | None, positives: Sequence[str],
                   ratings: dict[str, Any] | None = None) -> dict[str, Any]:
        """The answer panel's current state → one ``label_toggled`` / ``rating_set`` event per change, committed
        before this returns. 'Normal' excludes findings; ratings are integers 0..the study's rating_max."""
        positives = [str(p) for p in positives or []]
        with self._acting(session, nonce, need_ai=False) as view:
            checklist = view_checklist(view)
            try:
                checklist.label_set.check(positives)
            except ValueError as error:
                raise AppError(str(error)) from None
            new_ratings = self._checked_ratings(view, ratings or {})
            for name in checklist.classes:
                value = int(name in positives)
                if value != view.state.labels.get(name, 0):
                    self._record(session, view, "label_toggled", {"class": name, "value": value})
            for name, value in new_ratings.items():
                if view.state.ratings.get(name) != value:
                    self._record(session, view, "rating_set", {"class": name, "value": value})
            return answer_payload(view)

    @staticmethod
    def _checked_ratings(view: View, ratings: dict[str, Any]) -> dict[str, int]:
        if ratings and view.rating_max <= 0:
            raise AppError("this read takes no confidence ratings")
        out = {}
        for name, value in ratings.items():
            if name not in view_checklist(view).classes:
                raise AppError(f"rating for an unknown class {name!r}")
            if not rating_in_range(value, 0, view.rating_max):
                raise AppError(f"the rating of {name} must be an integer 0–{view.rating_max}")
            out[name] = value
        return out

    def submit(self, session: Session, nonce: str | None) -> int:
        """Save the answer of the view named by ``nonce`` — the labels and ratings of its case session, the mask on
        screen (unless unaided), accepted-as-is — and close the view; returns the annotation id."""
        with self._acting(session, nonce, need_ai=False) as view:
            self.events.flush(session.token)
            checklist = view_checklist(view)
            labels = {c: int(view.state.labels.get(c, 0)) for c in checklist.classes}
            objects = self._answer_objects(session, view)
            try:
                annotation_id = self.store.save_annotation(
                    view.target, session.reader, labels, objects=objects,
                    confidence=dict(view.state.ratings) if view.rating_max else None,
                    accepted_as_is=bool(view.state.accepted_as_is and view.shows_ai),  # no box/click/stroke
                    model_version=view.model_version if view.shows_ai else None, label_set=checklist.name)
            except AlreadySubmitted as error:
                raise Conflict(str(error)) from None
            except AccessDenied as error:
                raise Forbidden(str(error)) from None
            except ValueError as error:
                raise AppError(str(error)) from None
            session.view = None
            return annotation_id

    def _answer_objects(self, session: Session, view: View) -> list[ObjectMask]:
        """What a submit saves: each kept object (:meth:`CaseState.kept_objects`) with its label and its mask
        (:meth:`_answer_mask`); empty when no object has a mask (unaided arms)."""
        out = []
        for object_id in view.state.kept_objects():
            mask, slice_index, mask_slices = self._answer_mask(session, view, object_id)
            if mask is not None:
                out.append(ObjectMask(object_id, view.state.object_label(object_id), mask, slice_index, mask_slices))
        return out

    def _answer_mask(self, session: Session, view: View, object_id: int = DEFAULT_OBJECT
                     ) -> tuple[np.ndarray | None, int | None, list[int] | None]:
        """What a submit saves as the mask: (mask, slice_index, mask_slices). A 2-D image: its mask on the original
        grid. A volume: ONE 3-D mask in the volume's voxel grid (i, j, k) holding the reader's mask of every slice
        they acted on (``reader_masks``: {slice: 2-D mask on the displayed slice's original grid}; before per-slice
        state, the mask on screen on the slice shown), the sorted list of those slices, and ``slice_index`` = that
        slice when there is exactly one (as older 2-D-on-a-slice rows had); None when no slice has a mask."""
        reader_masks = getattr(self, "reader_masks", None)
        masks = reader_masks(view, object_id) if reader_masks is not None else None
        if masks is None:
            mask = self.current_mask(session)
            masks = {view.image.slice_index: mask} if mask is not None else {}
        masks = {k: m for k, m in masks.items() if m is not None}
        if view.image.slice_count is None:
            return masks.get(None), None, None
        if not masks:
            return None, None, None
        volume = self.case_volume(view.case_id)
        slices = sorted(int(k) for k in masks)
        return slices_to_volume(volume, masks), slices[0] if len(slices) == 1 else None, slices

    def submit_and_next(self, session: Session, nonce: str | None) -> dict[str, Any]:
        """Submit, then open what comes next: the next study read inside a study, else the next worklist case."""
        view = session.view
        annotation_id = self.submit(session, nonce)
        message = f"Submitted case {view.case}."
        try:
            nxt = self.open_assignment(session) if view.in_study else self._next_free(session)
        except AppError as error:
            nxt, message = None, f"{message} {error}"
        if nxt is None:
            message += " All your assigned reads are done." if view.in_study else " The worklist is empty."
        return {"annotation_id": annotation_id, "message": message, "next": None if nxt is None else nxt.case}

    def _next_free(self, session: Session) -> View | None:
        items = self.store.worklist(session.reader, status="open")
        return self.open_case(session, items[0].case) if items else None

    def skip(self, session: Session, nonce: str | None) -> dict[str, Any]:
        """Leave the open free-annotation case unsubmitted and open the next worklist case. Refused in a study read:
        the study's reading order is its design."""
        with self._acting(session, nonce, need_ai=False) as view:
            if view.in_study:
                raise Conflict("a study read cannot be skipped: submit it (or pause the study)")
            self._hide(session, "skipped")
        items = [i for i in self.store.worklist(session.reader, status="open") if i.case_id != view.case_id]
        if not items:
            return {"message": "No other case in the worklist.", "next": None}
        return {"message": f"Skipped case {view.case}.", "next": self.open_case(session, items[0].case).case}

    def pause(self, session: Session, nonce: str | None) -> dict[str, Any]:
        """Close the open case without submitting (a study read keeps its place and resumes with its events)."""
        with self._acting(session, nonce, need_ai=False) as view:
            self._hide(session, "paused")
        return {"message": f"Paused case {view.case}; it reopens where you left it.", "next": None}

    def time_per_case(self, session: Session, target: AssignmentView | CaseRef) -> float | None:
        self.events.flush(session.token)
        return self.store.time_per_case(target, session.reader)

    # ------------------------------------------------------------------ AI payload for the page
    def ai_panel(self, view: View) -> dict[str, Any] | None:
        """The AI source shown, its probabilities and suggestions for the page; None in an unaided arm (nothing
        leaves the server)."""
        if not view.shows_ai or view.ai_source is None:
            return None
        return {"probabilities": view.ai_probabilities, "suggested": view.ai_suggested,
                "model_version": view.model_version, "source": view.ai_source,
                "why_none": None if view.ai_probabilities else self._why_none(view)}

    def _why_none(self, view: View) -> str:
        source = view.ai_source
        if view.image.slice_count is not None:
            return "The findings classifier reads chest radiographs: no probabilities for a CT/MR volume."
        if source.kind == "built-in" and not self.model.info.classifier_trained.get(LABEL_SET):
            return "No classifier probabilities for this model (segmentation only)."
        if source.kind == "built-in":
            return "No finding probabilities for this case yet (the model has not read it)."
        return f"No prediction of this source for this case: {source.name} has no output for it."

    def close(self) -> None:
        if self.__dict__.get("_login_guard") is not None:
            self._login_guard.close()
        if self.background:
            self.background.stop()
        self.slice_masks.stop()
        self.events.flush(None, timeout=10)
        self.events.close()

# ---------------------------------------------------------------------------------------------------------------
class BackgroundWorker:
    """One low-priority thread: triage of cases without a prediction, and pre-embedding of the next cases."""

    def __init__(self, service: AppService) -> None:
        self.service = service
        self._predictor = service._predictor_cls(service.model, service.device, cache_size=2,
                                                 disk_cache=service.embedding_dir)
        self._queue: queue.Queue = queue.Queue()
        self._seen: set[int] = set()
        self._lock = threading.Lock()
        self.idle = threading.Event()  # set exactly when no job is queued or running
        self.idle.set()
        self._pending = 0
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="biascare-background", daemon=True)
        self._thread.start()

    def _submit(self, job: Callable[[], None]) -> None:
        with self._lock:
            self._pending += 1
            self.idle.clear()
        self._queue.put(job)

    def prefetch(self, case_ids: Sequence[int]) -> None:
        with self._lock:
            fresh = [c for c in case_ids if c not in self._seen]
            self._seen.update(fresh)
        for case_id in fresh:
            self._submit(lambda case_id=case_id: self._embed(case_id))

    def triage_missing(self) -> None:
        self._submit(self._triage_missing)

    def retriage(self) -> None:
        """After the model in use changed: a predictor of the new model, then triage of every case for its version
        (the worklist ranks by the version in use; earlier versions' predictions stay, a pinned study shows them)."""
        def renew() -> None:
            service = self.service
            with service._sessions_lock:  # runs once switch_model has put the new model in place
                model, embedding_dir = service.model, service.embedding_dir
            self._predictor = service._predictor_cls(model, service.device, cache_size=2, disk_cache=embedding_dir)
            with self._lock:
                self._seen.clear()
        self._submit(renew)
        self._submit(self._triage_missing)

    def wait(self, timeout: float = 600.0) -> bool:
        return self.idle.wait(timeout)

    def stop(self, timeout: float = 60.0) -> None:
        """Stop after the case under way (a triage loop checks between cases) and wait for the thread: a process
        must not exit while this thread is inside an ONNX Runtime run (its thread pool aborts the interpreter's
        exit: "terminate called without an active exception")."""
        self._stop = True
        self._queue.put(None)
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _run(self) -> None:
        lower_this_thread()  # its predictor's sessions are built in this thread: they yield to the reader too
        while True:
            job = self._queue.get()
            if job is None or self._stop:
                return
            try:
                job()
            except Exception:
                log.exception("background job failed")
            finally:
                self._finished()

    def _finished(self) -> None:
        # counted under the lock: a job queued while the last one ends keeps ``idle`` clear
        with self._lock:
            self._pending -= 1
            if self._pending == 0:
                self.idle.set()

    def _embed(self, case_id: int) -> None:
        image = self.service.case_image(case_id)
        self._predictor.embed(image.pixels)

    def _triage_missing(self) -> None:
        from core_model.triage import Triage

        service = self.service
        cases = service.store.cases()
        todo = [c for c in cases if service.store.prediction(c.id, service.model_version) is None]
        triage = Triage(service.model, service.device)
        for ref in todo:
            if self._stop:
                return
            try:
                self._triage_one(ref, triage)
            except Exception as error:
                log.warning("triage of case %s failed: %s", ref.pseudo_id, error)

    def _triage_one(self, ref: CaseRef, triage: Triage) -> None:
        import torch

        service = self.service
        image = service.case_image(ref.id)
        key = self._predictor.embed(image.pixels)
        embedding, geometry = self._predictor.embedding(key)
        result = triage.run_embeddings(embedding)[0]
        with torch.inference_mode():
            mask = (geometry.logits_to_original(result.low_res_logits[None]) > 0)[0, 0].numpy()
        uncertainty = {"iou_gap": float(result.uncertainty.iou_gap), "tta": float(result.uncertainty.tta),
                       "total": float(result.uncertainty.ranking)}
        if result.uncertainty.u_sl is not None:
            uncertainty["u_sl"] = float(result.uncertainty.u_sl)
        # the CXR-LT heads read radiographs: a CT/MR slice gets a mask and its uncertainty, no finding probabilities
        probabilities = (result.probabilities or {}) if image.slice_count is None else {}
        service.store.record_prediction(ref.id, service.model_version, probabilities, mask, uncertainty)


def view_checklist(view: View) -> Checklist:
    """The finding checklist of the view's case: a study read its study's label set (what its answers are checked
    against); otherwise CT/MR volumes the CT structure set, radiographs CXR-LT 26."""
    return view.checklist or checklist_for(view.image.slice_count is not None)


def study_checklist(classes: Sequence[str]) -> Checklist:
    """A study's label set as a checklist (named after the known set with these classes, else "study")."""
    from core_model.classes import LABEL_SETS
    classes = tuple(classes)
    name = next((n for n, known in LABEL_SETS.items() if known == classes), "study")
    volumes = name == "ct-structures"
    return Checklist(label_rules(name, classes), "Structures shown" if volumes else "Findings", volumes=volumes)


def slices_to_volume(volume: LoadedVolume, masks: dict[int, np.ndarray]) -> np.ndarray:
    """{axial slice index: bool (H, W) mask on the displayed slice} → one uint8 {0, 1} mask of the volume's voxel
    grid (i, j, k): each slice put back through the inverse of its display transform (:mod:`core_model.io.volume`)."""
    axis = axial_axis(volume.affine)
    display = volume.display(axis)
    out = np.zeros(volume.shape, dtype=np.uint8)
    expected = tuple(n for a, n in enumerate(volume.shape) if a != axis)
    for index, mask in masks.items():
        if not 0 <= int(index) < volume.num_slices(axis):
            raise AppError(f"mask on slice {index}: the volume has slices 0..{volume.num_slices(axis) - 1}")
        plane = display.inverse(np.asarray(mask).astype(bool))
        if plane.shape != expected:
            raise AppError(f"mask of slice {index} has shape {np.shape(mask)}, not the slice's")
        where: list[Any] = [slice(None)] * 3
        where[axis] = int(index)
        out[tuple(where)] = plane
    return out


def _coordinate(value: Any) -> float:
    """A click coordinate as a finite float; AppError for anything else (huge integers and NaN included)."""
    if isinstance(value, bool):
        raise AppError("click coordinates must be numbers")
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise AppError("click coordinates must be numbers") from None
    if not math.isfinite(number):
        raise AppError("click coordinates must be finite numbers")
    return number


def _slice_field(key: int | None) -> dict[str, int]:
    """The ``slice`` of an action event: a volume's slice index, nothing for a 2-D image."""
    return {} if key is None else {"slice": key}


def _object_field(ref: tuple[int, str | None]) -> dict[str, Any]:
    """The ``object`` of a mask event: nothing for the default object (its events are as before objects), else
    ``{"id", "label"}``."""
    object_id, label = ref
    if object_id == DEFAULT_OBJECT:
        return {}
    return {"object": {"id": object_id} if label is None else {"id": object_id, "label": label}}


def _top(card: FindingsCard, probabilities: dict[str, float]) -> str:
    """The most probable finding the source shows, "Edema 0.83" (with the suggestion mark when suggested)."""
    shown = card.shown(probabilities)
    if not shown:
        return ""
    name, p = max(shown.items(), key=lambda kv: kv[1])
    return f"{name} {display_probability(p)}{' ' + SUGGESTED_MARK if name in card.suggested(shown) else ''}"


def _unvalidated_card(name: str) -> FindingsCard:
    """The card of a model version stored without one (recorded before sources had cards): every class shown as
    "not validated", nothing suggested."""
    return supplier_card(name, "built-in", "model version recorded without evidence", LABEL_SET, CLASSES)


def _safe_name(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)[:80] or "model"
