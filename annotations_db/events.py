"""The interaction log's vocabulary: event kinds, their payloads, and their replay into the state of a case.

This is the one module that knows the events. The :class:`~annotations_db.store.Store` validates every event with
:func:`validate` before writing it; the app restores an open case from :func:`replay` and keeps its live state with the
same :meth:`CaseState.apply`; exports derive reading time (:func:`derive_time_s`) and the click sequence behind a saved
mask (:func:`effective_clicks`) from it.

Kinds and payloads (every event also has server-side wall and monotonic timestamps)::

    case_shown    {arm?, embed_ms?, restored?, slice?}   a case appeared on the reader's screen (also after a
                                                   reload/restart); ``slice``: the volume's slice shown
    case_hidden   {reason?}                        the case left the screen without a submit (another case, skip, pause)
    heartbeat     {}                               the page is visible and the reader active (sent every few seconds)
    idle_start    {}  / idle_end {}                no input for the idle period, or the tab was hidden / back
    ai_shown      {model_version?, source?, kind?} the AI output was shown: its source's name (= version), kind
    ai_hidden     {}                               the AI output was hidden
    click         {x, y, positive, slice?, display_x?, display_y?, iou?, model_ms?}   original-image pixel coords
    box           {x0, y0, x1, y1, slice?}         a box prompt (original pixel-index corners): the slice's prompt
                                                   starts afresh from it (earlier box and clicks dropped)
    stroke        {points: [[x, y], …], radius, erase, slice?}   a brush (erase false) / eraser stroke on the original
                                                   grid (≤ 2000 points, radius 0.5..500 original px)
    cleanup       {min_island_px, fill_holes, slice?}   display post-processing of the slice's mask (islands below
                                                   min_island_px display px dropped, holes filled); 0, false = off
    carry         {from, to}                       slice ``from``'s prompt (box + clicks) re-run on slice ``to``
    measure       {x0, y0, x1, y1, mm?, px?, slice?}   a distance measured (original pixel-index ends); no mask change
    text_prompt   {text}                           (reserved) a text prompt
    undo          {clicks?, slice?}                the slice's last action (click, box, stroke, cleanup, carry) taken
                                                   back
    reset         {slice?}                         the slice back to the AI's initial mask, every action dropped
    accept        {clicks?, slice?}                the mask (of that slice) is accepted as it is
    slice_shown   {slice, previous?}               another axial slice of a volume is on screen (its actions kept)
    object_removed {object}                        the reader deleted an object of the answer (every slice of it)
    label_toggled {class, value: 0|1}              a finding ticked or unticked
    rating_set    {class, value: int ≥ 0}          the reader's confidence that the finding is present
    submit        {annotation_id, accepted_as_is}  the answer was saved (written by Store.save_annotation)

Objects: an answer holds one or more labelled objects, each with its own masks. Every mask event (click, box, stroke,
cleanup, carry, undo, reset, accept) may carry ``object: {id, label?}`` (id an integer ≥ 0, label the object's label,
required the first time an object id ≥ 1 appears): the event acts on that object only. An event without ``object``
acts on the *default object* (id 0, unlabelled: the one mask of every answer before objects), so logs written before
objects replay as one default object. ``object_removed`` drops an object and all its slices. The state is kept per
(object, slice): :attr:`CaseState.objects` maps an object id to its :class:`AnswerObject`, whose ``slices`` are as
below; undo and reset act on the named object's slice only.

Per-slice state: a volume holds a mask on every slice the reader acted on, so each slice keeps its own action list
(:class:`SliceState`; key None for a 2-D image). An action event without ``slice`` applies to the slice shown at that
moment (logs written before slices carried their index replay as they did); ``slice_shown`` moves the shown slice and
keeps what was done on the others. Undo takes back the slice's last action whatever its kind; reset clears the slice.

A *case session* is what one reader did on one target (a study assignment, or a case outside studies) since that
target's previous submit: :func:`open_session` cuts it from the target's log, :func:`replay` folds it into a
:class:`CaseState`.

Reading time: the sum over viewing segments — from a ``case_shown`` to the ``submit`` or ``case_hidden`` that ends it —
minus the idle time inside them. A segment that no event closes (the page was reloaded, a second tab opened the case,
the server was killed) ends at its own last event, the last sign that the reader was on that screen: downtime and
time away are never counted.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from annotations_db.errors import InvalidEvent

KINDS = frozenset({
    "case_shown", "case_hidden", "heartbeat", "idle_start", "idle_end", "ai_shown", "ai_hidden", "click", "box",
    "stroke", "cleanup", "carry", "measure", "text_prompt", "undo", "reset", "accept", "slice_shown",
    "label_toggled", "rating_set", "submit", "object_removed",
})
CLIENT_KINDS = frozenset({"heartbeat", "idle_start", "idle_end", "ai_hidden", "ai_shown"})  # sent by the page
SEGMENT_END = frozenset({"submit", "case_hidden"})
MASK_ACTIONS = frozenset({"click", "box", "stroke", "cleanup", "carry"})  # what undo takes back, newest first
SLICE_KINDS = MASK_ACTIONS | {"undo", "reset", "accept"}  # events that act on one slice's mask
OBJECT_KINDS = SLICE_KINDS | {"object_removed"}  # events that may name an object (object_removed must)
DEFAULT_OBJECT = 0  # the unlabelled object of an event without ``object`` (every answer before objects)
MAX_LABEL_CHARS = 128
MAX_STROKE_POINTS = 2000
STROKE_RADIUS = (0.5, 500.0)  # original px
MAX_ISLAND_PX = 10_000_000


@dataclass(frozen=True)
class EventRecord:
    """One logged event as read back from the database."""
    id: int
    kind: str
    payload: dict[str, Any]
    wall_at: datetime
    mono_ns: int
    clock_id: str


def validate(kind: str, payload: Mapping[str, Any] | None) -> dict[str, Any]:
    """The payload as a plain dict with typed values, or InvalidEvent naming what is wrong."""
    if kind not in KINDS:
        raise InvalidEvent(f"unknown event kind {kind!r}; known: {sorted(KINDS)}")
    body = dict(payload or {})
    checker = _CHECKS.get(kind)
    if checker is not None:
        checker(body)
    if kind in SLICE_KINDS or kind in ("measure", "case_shown"):
        _optional_slice(body, kind)
    if kind in OBJECT_KINDS:
        _optional_object(body, kind)
    return body


def _optional_object(body: dict[str, Any], kind: str) -> None:
    """``object`` is optional on mask events (absent or null: the default object) and required on object_removed;
    when given ``{"id": int ≥ 0, "label": str | absent}``, the default object (id 0) unlabelled."""
    value = body.get("object")
    if value is None:
        if kind == "object_removed":
            raise InvalidEvent("object_removed needs 'object': {id, label?}")
        body.pop("object", None)
        return
    if not isinstance(value, Mapping):
        raise InvalidEvent(f"{kind} 'object' must be {{id, label?}}, got {value!r}")
    object_id = _index(dict(value), "id", f"{kind} object")
    label = value.get("label")
    if label is not None and (not isinstance(label, str) or not 0 < len(label.strip()) <= MAX_LABEL_CHARS):
        raise InvalidEvent(f"{kind} object label must be a text of 1..{MAX_LABEL_CHARS} characters, got {label!r}")
    if object_id == DEFAULT_OBJECT and label is not None:
        raise InvalidEvent(f"{kind}: object 0 is the default (unlabelled) object; a labelled object has an id ≥ 1")
    body["object"] = {"id": object_id} if label is None else {"id": object_id, "label": label.strip()}


def object_id(payload: Mapping[str, Any]) -> int:
    """The object an event acts on: its ``object`` id, the default object without one."""
    value = payload.get("object")
    return int(value["id"]) if isinstance(value, Mapping) else DEFAULT_OBJECT


def _number(body: dict[str, Any], key: str, kind: str) -> float:
    """``body[key]`` as a finite float (InvalidEvent naming the kind and key otherwise)."""
    value = body.get(key)
    try:
        if isinstance(value, bool):
            raise TypeError
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise InvalidEvent(f"{kind} {key} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise InvalidEvent(f"{kind} {key} must be a finite number, got {value!r}")
    return number


def _index(body: dict[str, Any], key: str, kind: str) -> int:
    """``body[key]`` as an integer ≥ 0 (a slice index, a pixel count)."""
    value = body.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidEvent(f"{kind} needs an integer {key!r} ≥ 0, got {value!r}")
    return value


def _optional_slice(body: dict[str, Any], kind: str) -> None:
    """``slice`` is optional (absent or null: the slice shown, or a 2-D image); when given an integer ≥ 0."""
    if body.get("slice") is None:
        body.pop("slice", None)
    else:
        body["slice"] = _index(body, "slice", kind)


def _check_click(body: dict[str, Any]) -> None:
    missing = {"x", "y", "positive"} - body.keys()
    if missing:
        raise InvalidEvent(f"click event needs x, y and positive; missing {sorted(missing)}")
    try:
        body["x"], body["y"] = float(body["x"]), float(body["y"])
    except (TypeError, ValueError, OverflowError):
        raise InvalidEvent(f"click x, y must be numbers, got {body['x']!r}, {body['y']!r}") from None
    body["positive"] = bool(body["positive"])


def _check_corners(body: dict[str, Any], kind: str) -> None:
    """x0, y0, x1, y1 as finite floats (the box: ordered so that x0 ≤ x1, y0 ≤ y1)."""
    for key in ("x0", "y0", "x1", "y1"):
        body[key] = _number(body, key, kind)
    if kind == "box":
        body["x0"], body["x1"] = sorted((body["x0"], body["x1"]))
        body["y0"], body["y1"] = sorted((body["y0"], body["y1"]))


def _check_stroke(body: dict[str, Any]) -> None:
    points = body.get("points")
    if not isinstance(points, (list, tuple)) or not 1 <= len(points) <= MAX_STROKE_POINTS:
        raise InvalidEvent(f"stroke needs 'points': a list of 1..{MAX_STROKE_POINTS} [x, y] pairs")
    clean = []
    for point in points:
        if not isinstance(point, (list, tuple)) or len(point) != 2:
            raise InvalidEvent(f"stroke points must be [x, y] pairs, got {point!r}")
        pair = {"x": point[0], "y": point[1]}
        clean.append([_number(pair, "x", "stroke point"), _number(pair, "y", "stroke point")])
    body["points"] = clean
    radius = _number(body, "radius", "stroke")
    if not STROKE_RADIUS[0] <= radius <= STROKE_RADIUS[1]:
        raise InvalidEvent(f"stroke radius must be {STROKE_RADIUS[0]}..{STROKE_RADIUS[1]} px, got {radius}")
    if not isinstance(body.get("erase"), bool):
        raise InvalidEvent(f"stroke needs 'erase': true (eraser) or false (brush), got {body.get('erase')!r}")
    body["radius"] = radius


def _check_cleanup(body: dict[str, Any]) -> None:
    body["min_island_px"] = _index(body, "min_island_px", "cleanup")
    if body["min_island_px"] > MAX_ISLAND_PX:
        raise InvalidEvent(f"cleanup min_island_px must be at most {MAX_ISLAND_PX}")
    if not isinstance(body.get("fill_holes"), bool):
        raise InvalidEvent(f"cleanup needs 'fill_holes': true or false, got {body.get('fill_holes')!r}")


def _check_carry(body: dict[str, Any]) -> None:
    body["from"], body["to"] = _index(body, "from", "carry"), _index(body, "to", "carry")
    if body["from"] == body["to"]:
        raise InvalidEvent("carry needs two different slices ('from' and 'to')")


def _check_measure(body: dict[str, Any]) -> None:
    _check_corners(body, "measure")
    for key in ("mm", "px"):
        if body.get(key) is not None:
            body[key] = _number(body, key, "measure")


def _check_label(body: dict[str, Any]) -> None:
    if not isinstance(body.get("class"), str) or body.get("value") not in (0, 1, True, False):
        raise InvalidEvent("label_toggled needs 'class' and 'value' (0/1)")
    body["value"] = int(body["value"])


def _check_rating(body: dict[str, Any]) -> None:
    value = body.get("value")
    if not isinstance(body.get("class"), str) or isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidEvent("rating_set needs 'class' and an integer 'value' ≥ 0")


def _check_slice_shown(body: dict[str, Any]) -> None:
    if isinstance(body.get("slice"), bool) or not isinstance(body.get("slice"), int):
        raise InvalidEvent("slice_shown needs an integer 'slice'")


_CHECKS = {"click": _check_click, "box": lambda b: _check_corners(b, "box"), "stroke": _check_stroke,
           "cleanup": _check_cleanup, "carry": _check_carry, "measure": _check_measure,
           "label_toggled": _check_label, "rating_set": _check_rating, "slice_shown": _check_slice_shown}


# ------------------------------------------------------------------------------------------------- replay
@dataclass(frozen=True)
class Click:
    """A logged click in original-image pixel coordinates; ``event`` is the id of the click event."""
    x: float
    y: float
    positive: bool
    event: int | None = None


Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in original pixel-index coordinates, x0 ≤ x1, y0 ≤ y1


@dataclass(frozen=True)
class Prompt:
    """The model prompt of one slice: the reader's box (None: the AI's initial prompt) and the clicks refining it,
    in original pixel-index coordinates; ``carried_from`` the slice it was carried from (None: the reader's own)."""
    box: Box | None = None
    clicks: tuple[Click, ...] = ()
    carried_from: int | None = None

    @property
    def empty(self) -> bool:
        """No box and no click: the slice's model mask is the AI's initial one."""
        return self.box is None and not self.clicks


@dataclass(frozen=True)
class Action:
    """One mask action on a slice (a :data:`MASK_ACTIONS` event): its validated payload and event id; a carry
    keeps the prompt it copied (the source slice's at that moment)."""
    kind: str
    payload: dict[str, Any]
    event: int | None = None
    carried: Prompt | None = None


@dataclass
class SliceState:
    """One slice's actions, oldest first (undo pops the last, reset clears them), and whether its mask was accepted.

    Derived: :meth:`prompt` (box/clicks/carry fold), :meth:`strokes` (brush/eraser payloads in order), :meth:`cleanup`
    (the last cleanup setting; None when off)."""
    actions: list[Action] = field(default_factory=list)
    accepted: bool = False

    @property
    def acted(self) -> bool:
        """The reader did something on this slice that an answer keeps (an action still standing, or an accept)."""
        return bool(self.actions) or self.accepted

    def prompt(self) -> Prompt:
        box: Box | None = None
        clicks: list[Click] = []
        carried: int | None = None
        for action in self.actions:
            p = action.payload
            if action.kind == "click":
                clicks.append(Click(float(p["x"]), float(p["y"]), bool(p["positive"]), action.event))
            elif action.kind == "box":
                box, clicks, carried = (p["x0"], p["y0"], p["x1"], p["y1"]), [], None
            elif action.kind == "carry" and action.carried is not None:
                box, clicks, carried = action.carried.box, list(action.carried.clicks), int(p["from"])
        return Prompt(box, tuple(clicks), carried)

    def strokes(self) -> list[dict[str, Any]]:
        return [a.payload for a in self.actions if a.kind == "stroke"]

    def cleanup(self) -> tuple[int, bool] | None:
        """(min_island_px, fill_holes) of the last cleanup action; None when there is none or it turned it off."""
        last = next((a.payload for a in reversed(self.actions) if a.kind == "cleanup"), None)
        if last is None or (last["min_island_px"] <= 1 and not last["fill_holes"]):
            return None
        return int(last["min_island_px"]), bool(last["fill_holes"])

    @property
    def source(self) -> str:
        """"ai" (nothing done), "carried" (the last action carried another slice's prompt here) or "reader"."""
        if not self.actions:
            return "ai"
        return "carried" if self.actions[-1].kind == "carry" else "reader"


@dataclass
class AnswerObject:
    """One object of the answer: its id, label (None: the default object) and its slices' mask actions."""
    id: int
    label: str | None = None
    slices: dict[int | None, SliceState] = field(default_factory=dict)

    @property
    def acted(self) -> bool:
        """The reader did something on this object that an answer keeps (on any slice)."""
        return any(s.acted for s in self.slices.values())

    def acted_slices(self) -> list[int | None]:
        """The slices an answer keeps a mask of (:attr:`SliceState.acted`), in slice order (None first)."""
        return sorted((k for k, s in self.slices.items() if s.acted), key=lambda k: -1 if k is None else k)

    def copy(self) -> AnswerObject:
        return AnswerObject(self.id, self.label, {k: SliceState(list(s.actions), s.accepted)
                                                  for k, s in self.slices.items()})


def _default_objects() -> dict[int, AnswerObject]:
    return {DEFAULT_OBJECT: AnswerObject(DEFAULT_OBJECT)}


@dataclass
class CaseState:
    """What the log says about one case session: the answer being built and each object's slices' mask actions.

    ``objects`` maps an object id to its :class:`AnswerObject` (the default object 0 is there until removed);
    ``slices`` is the default object's (a slice index, None for a 2-D image, → its :class:`SliceState`); ``slice``
    is the axial slice shown (None: a 2-D image, or a volume before its slice was logged). ``clicks`` is the
    effective click sequence behind the shown slice's default-object mask. ``accepted``: the last mask event
    anywhere was an accept.
    """
    labels: dict[str, int] = field(default_factory=dict)
    ratings: dict[str, int] = field(default_factory=dict)
    objects: dict[int, AnswerObject] = field(default_factory=_default_objects)
    slice: int | None = None
    accepted: bool = False
    submitted: bool = False

    @property
    def slices(self) -> dict[int | None, SliceState]:
        """The default object's slices (empty, not stored, once it was removed)."""
        default = self.objects.get(DEFAULT_OBJECT)
        return default.slices if default is not None else {}

    @property
    def clicks(self) -> list[Click]:
        return list(self.slice_state(self.slice).prompt().clicks)

    @property
    def accepted_as_is(self) -> bool:
        """Accepted with no action standing on any slice of any object: the AI's masks as they came."""
        return self.accepted and not any(s.actions for o in self.objects.values() for s in o.slices.values())

    def slice_state(self, key: int | None, object_id: int = DEFAULT_OBJECT) -> SliceState:
        """The state of slice ``key`` of an object (an empty one, not stored, when nothing happened there)."""
        found = self.objects.get(object_id)
        return (found.slices.get(key) if found is not None else None) or SliceState()

    def acted_slices(self, object_id: int = DEFAULT_OBJECT) -> list[int | None]:
        """The slices an answer keeps a mask of for an object (default: the default object), in slice order."""
        found = self.objects.get(object_id)
        return found.acted_slices() if found is not None else []

    def object_label(self, object_id: int) -> str | None:
        found = self.objects.get(object_id)
        return found.label if found is not None else None

    def kept_objects(self) -> list[int]:
        """The objects a submit saves, default first then by id: every labelled object the reader acted on, and the
        default object when it is still there and either acted on or the only one (an answer with one object is
        an answer as before objects: a 2-D image saves the mask on screen)."""
        labelled = sorted(i for i, o in self.objects.items() if i != DEFAULT_OBJECT and o.acted)
        default = self.objects.get(DEFAULT_OBJECT)
        keep_default = default is not None and (default.acted or not labelled)
        return ([DEFAULT_OBJECT] if keep_default else []) + labelled

    def key_of(self, kind: str, payload: Mapping[str, Any]) -> int | None:
        """The slice an event acts on: a carry's ``to``, else its ``slice``, else the slice shown."""
        if kind == "carry":
            return int(payload["to"])
        return int(payload["slice"]) if payload.get("slice") is not None else self.slice

    def apply(self, kind: str, payload: Mapping[str, Any], event_id: int | None = None) -> None:
        """Fold one event into the state (the app calls this for each event it records; replay for each logged)."""
        if kind in SLICE_KINDS:
            self._apply_slice(kind, payload, event_id)
        elif kind in ("slice_shown", "case_shown"):
            self._show(payload, kind)
        elif kind == "label_toggled":
            self.labels[str(payload["class"])] = int(payload["value"])
        elif kind == "rating_set":
            self.ratings[str(payload["class"])] = int(payload["value"])
        elif kind == "submit":
            self.submitted = True
        elif kind == "object_removed":
            self.objects.pop(object_id(payload), None)

    def _object(self, payload: Mapping[str, Any]) -> AnswerObject:
        """The object an event acts on (made when it first appears; its first label kept)."""
        found = self.objects.setdefault(object_id(payload), AnswerObject(object_id(payload)))
        named = payload.get("object")
        if found.label is None and isinstance(named, Mapping) and named.get("label") is not None:
            found.label = str(named["label"])
        return found

    def _apply_slice(self, kind: str, payload: Mapping[str, Any], event_id: int | None) -> None:
        target = self._object(payload)
        state = target.slices.setdefault(self.key_of(kind, payload), SliceState())
        if kind == "accept":
            state.accepted = self.accepted = True
            return
        state.accepted = self.accepted = False
        if kind in MASK_ACTIONS:
            carried = self.slice_state(int(payload["from"]), target.id).prompt() if kind == "carry" else None
            state.actions.append(Action(kind, dict(payload), event_id, carried))
        elif kind == "undo" and state.actions:
            state.actions.pop()
        elif kind == "reset":
            state.actions.clear()

    def _show(self, payload: Mapping[str, Any], kind: str) -> None:
        """``slice_shown`` moves the shown slice; ``case_shown`` names it for a volume. What was logged before the
        volume's slice was known (key None) belongs to the slice then shown (``previous``, or the one named)."""
        shown = payload.get("slice")
        if shown is None:
            return
        if self.slice is None:
            self._rekey_unknown(payload.get("previous") if kind == "slice_shown" else shown)
        self.slice = int(shown)

    def _rekey_unknown(self, key: Any) -> None:
        if isinstance(key, bool) or not isinstance(key, int):
            return
        for found in self.objects.values():
            if None not in found.slices:
                continue
            unknown = found.slices.pop(None)
            target = found.slices.setdefault(key, SliceState())
            target.actions[:0] = unknown.actions
            target.accepted = target.accepted or unknown.accepted

    def copy(self) -> CaseState:
        return replace(self, labels=dict(self.labels), ratings=dict(self.ratings),
                       objects={i: o.copy() for i, o in self.objects.items()})


def replay(events: Sequence[EventRecord]) -> CaseState:
    """The state after ``events`` (one case session, in log order)."""
    state = CaseState()
    for event in events:
        state.apply(event.kind, event.payload, event.id)
    return state


def open_session(events: Sequence[EventRecord]) -> list[EventRecord]:
    """The events after the target's last submit: the case session still open (empty when there is none)."""
    last = max((i for i, e in enumerate(events) if e.kind == "submit"), default=-1)
    return list(events[last + 1:])


def submitted_session(events: Sequence[EventRecord], annotation_id: int) -> list[EventRecord]:
    """The case session that the submit of ``annotation_id`` closed (from the previous submit to it, inclusive)."""
    end = next((i for i, e in enumerate(events)
                if e.kind == "submit" and e.payload.get("annotation_id") == annotation_id), len(events) - 1)
    start = max((i for i, e in enumerate(events[:end]) if e.kind == "submit"), default=-1)
    return list(events[start + 1:end + 1])


def effective_clicks(events: Sequence[EventRecord], object_id: int = DEFAULT_OBJECT) -> list[dict[str, Any]]:
    """The clicks behind the shown slice's mask of an object (default: the default object) at the end of ``events``
    (one case session), with ``t`` = seconds since the session's first ``case_shown``."""
    state = replay(events)
    return _timed_clicks(state.slice_state(state.slice, object_id).prompt().clicks, events)


def slice_edits(events: Sequence[EventRecord], object_id: int = DEFAULT_OBJECT) -> dict[int | None, dict[str, Any]]:
    """What the reader did to each slice's mask at the end of ``events`` (the slices an answer keeps, see
    :meth:`CaseState.acted_slices`), original pixel-index coordinates::

        {slice: {"clicks": [{x, y, positive, t}], "box": [x0, y0, x1, y1] | None, "carried_from": int | None,
                 "edits": [{"kind": "brush" | "eraser", "points": [[x, y], …], "radius": px}],
                 "cleanup": {"min_island_px", "fill_holes"} | None, "accepted": bool}}

    of one object (default: the default object)."""
    state = replay(events)
    out: dict[int | None, dict[str, Any]] = {}
    for key in state.acted_slices(object_id):
        slice_state = state.slice_state(key, object_id)
        prompt, cleanup = slice_state.prompt(), slice_state.cleanup()
        out[key] = {"clicks": _timed_clicks(prompt.clicks, events),
                    "box": None if prompt.box is None else list(prompt.box), "carried_from": prompt.carried_from,
                    "edits": [{"kind": "eraser" if s["erase"] else "brush", "points": s["points"],
                               "radius": s["radius"]} for s in slice_state.strokes()],
                    "cleanup": None if cleanup is None else {"min_island_px": cleanup[0], "fill_holes": cleanup[1]},
                    "accepted": slice_state.accepted}
    return out


def _timed_clicks(clicks: Sequence[Click], events: Sequence[EventRecord]) -> list[dict[str, Any]]:
    by_id = {e.id: e for e in events}
    start = next((e for e in events if e.kind == "case_shown"), events[0] if events else None)
    return [{"x": c.x, "y": c.y, "positive": c.positive,
             "t": round(elapsed_ns(start, by_id[c.event]) / 1e9, 6) if start and c.event in by_id else 0.0}
            for c in clicks]


# ------------------------------------------------------------------------------------------------- time
def derive_time_s(events: Sequence[EventRecord]) -> float | None:
    """Reading time in seconds (see the module docstring); None if the case was never submitted."""
    total_ns, submitted = 0, False
    for segment in _segments(events):
        total_ns += _segment_ns(segment)
        submitted = submitted or segment[-1].kind == "submit"
    return total_ns / 1e9 if submitted else None


def _segments(events: Sequence[EventRecord]) -> list[list[EventRecord]]:
    """Viewing segments: each starts at a ``case_shown`` and runs to its end event, or up to the next
    ``case_shown`` (exclusive) when nothing ended it."""
    segments: list[list[EventRecord]] = []
    current: list[EventRecord] | None = None
    for event in events:
        if event.kind == "case_shown":
            if current:
                segments.append(current)
            current = [event]
        elif current is not None:
            current.append(event)
            if event.kind in SEGMENT_END:
                segments.append(current)
                current = None
    if current:
        segments.append(current)
    return segments


def _segment_ns(segment: Sequence[EventRecord]) -> int:
    """From the segment's first to its last event, minus the idle intervals inside (an idle interval that is never
    ended runs to the segment's end)."""
    total, idle_since = elapsed_ns(segment[0], segment[-1]), None
    for event in segment[1:]:
        if event.kind == "idle_start" and idle_since is None:
            idle_since = event
        elif event.kind in ("idle_end", "heartbeat", *SEGMENT_END) and idle_since is not None:
            total -= elapsed_ns(idle_since, event)
            idle_since = None
    if idle_since is not None:
        total -= elapsed_ns(idle_since, segment[-1])
    return max(0, total)


def elapsed_ns(start: EventRecord, end: EventRecord) -> int:
    """``end − start``: on the monotonic clock when both share it (same host and boot), else on the wall clock."""
    if start.clock_id == end.clock_id:
        return end.mono_ns - start.mono_ns
    return int((end.wall_at - start.wall_at).total_seconds() * 1e9)
