"""The interaction log's vocabulary: event kinds, their payloads, and their replay into the state of a case.

This is the one module that knows the events. The :class:`~annotations_db.store.Store` validates every event with
:func:`validate` before writing it; the app restores an open case from :func:`replay` and keeps its live state with the
same :meth:`CaseState.apply`; exports derive reading time (:func:`derive_time_s`) and the click sequence behind a saved
mask (:func:`effective_clicks`) from it.

Kinds and payloads (every event also has server-side wall and monotonic timestamps)::

    case_shown    {arm?, embed_ms?, restored?}     a case appeared on the reader's screen (also after a reload/restart)
    case_hidden   {reason?}                        the case left the screen without a submit (another case, skip, pause)
    heartbeat     {}                               the page is visible and the reader active (sent every few seconds)
    idle_start    {}  / idle_end {}                no input for the idle period, or the tab was hidden / back
    ai_shown      {model_version?, source?, kind?} the AI output was shown: its source's name (= version), kind
    ai_hidden     {}                               the AI output was hidden
    click         {x, y, positive, display_x?, display_y?, iou?, model_ms?}   original-image pixel coordinates
    box           {x0, y0, x1, y1}                 (reserved) a box prompt
    text_prompt   {text}                           (reserved) a text prompt
    undo          {clicks?}                        the last click is taken back
    reset         {}                               back to the AI's initial mask, no clicks
    accept        {clicks?}                        the mask is accepted as it is
    slice_shown   {slice, previous?}               another axial slice of a volume (its clicks start over)
    label_toggled {class, value: 0|1}              a finding ticked or unticked
    rating_set    {class, value: int ≥ 0}          the reader's confidence that the finding is present
    submit        {annotation_id, accepted_as_is}  the answer was saved (written by Store.save_annotation)

A *case session* is what one reader did on one target (a study assignment, or a case outside studies) since that
target's previous submit: :func:`open_session` cuts it from the target's log, :func:`replay` folds it into a
:class:`CaseState`.

Reading time: the sum over viewing segments — from a ``case_shown`` to the ``submit`` or ``case_hidden`` that ends it —
minus the idle time inside them. A segment that no event closes (the page was reloaded, a second tab opened the case,
the server was killed) ends at its own last event, the last sign that the reader was on that screen: downtime and
time away are never counted.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from annotations_db.errors import InvalidEvent

KINDS = frozenset({
    "case_shown", "case_hidden", "heartbeat", "idle_start", "idle_end", "ai_shown", "ai_hidden", "click", "box",
    "text_prompt", "undo", "reset", "accept", "slice_shown", "label_toggled", "rating_set", "submit",
})
CLIENT_KINDS = frozenset({"heartbeat", "idle_start", "idle_end", "ai_hidden", "ai_shown"})  # sent by the page
SEGMENT_END = frozenset({"submit", "case_hidden"})


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
    if kind == "click":
        missing = {"x", "y", "positive"} - body.keys()
        if missing:
            raise InvalidEvent(f"click event needs x, y and positive; missing {sorted(missing)}")
        try:
            body["x"], body["y"] = float(body["x"]), float(body["y"])
        except (TypeError, ValueError, OverflowError):
            raise InvalidEvent(f"click x, y must be numbers, got {body['x']!r}, {body['y']!r}") from None
        body["positive"] = bool(body["positive"])
    elif kind == "label_toggled":
        if not isinstance(body.get("class"), str) or body.get("value") not in (0, 1, True, False):
            raise InvalidEvent("label_toggled needs 'class' and 'value' (0/1)")
        body["value"] = int(body["value"])
    elif kind == "rating_set":
        value = body.get("value")
        if not isinstance(body.get("class"), str) or isinstance(value, bool) or not isinstance(value, int) \
                or value < 0:
            raise InvalidEvent("rating_set needs 'class' and an integer 'value' ≥ 0")
    elif kind == "slice_shown":
        if isinstance(body.get("slice"), bool) or not isinstance(body.get("slice"), int):
            raise InvalidEvent("slice_shown needs an integer 'slice'")
    return body


# ------------------------------------------------------------------------------------------------- replay
@dataclass(frozen=True)
class Click:
    """A logged click in original-image pixel coordinates; ``event`` is the id of the click event."""
    x: float
    y: float
    positive: bool
    event: int | None = None


@dataclass
class CaseState:
    """What the log says about one case session: the answer being built and the mask's prompt sequence.

    ``clicks`` is the effective sequence behind the current mask (undo drops the last, reset and another slice clear
    it); ``slice`` the axial slice shown (None: a 2-D image, or the volume's default slice).
    """
    labels: dict[str, int] = field(default_factory=dict)
    ratings: dict[str, int] = field(default_factory=dict)
    clicks: list[Click] = field(default_factory=list)
    slice: int | None = None
    accepted: bool = False
    submitted: bool = False

    def apply(self, kind: str, payload: Mapping[str, Any], event_id: int | None = None) -> None:
        """Fold one event into the state (the app calls this for each event it records; replay for each logged)."""
        if kind == "click":
            self.clicks.append(Click(float(payload["x"]), float(payload["y"]), bool(payload["positive"]), event_id))
            self.accepted = False
        elif kind == "undo":
            if self.clicks:
                self.clicks.pop()
            self.accepted = False
        elif kind == "reset":
            self.clicks.clear()
            self.accepted = False
        elif kind == "slice_shown":
            self.slice = int(payload["slice"])
            self.clicks.clear()
            self.accepted = False
        elif kind == "accept":
            self.accepted = True
        elif kind == "label_toggled":
            self.labels[str(payload["class"])] = int(payload["value"])
        elif kind == "rating_set":
            self.ratings[str(payload["class"])] = int(payload["value"])
        elif kind == "submit":
            self.submitted = True

    def copy(self) -> CaseState:
        return replace(self, labels=dict(self.labels), ratings=dict(self.ratings), clicks=list(self.clicks))


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


def effective_clicks(events: Sequence[EventRecord]) -> list[dict[str, Any]]:
    """The clicks behind the mask at the end of ``events`` (one case session), with ``t`` = seconds since the
    session's first ``case_shown``."""
    state = replay(events)
    by_id = {e.id: e for e in events}
    start = next((e for e in events if e.kind == "case_shown"), events[0] if events else None)
    return [{"x": c.x, "y": c.y, "positive": c.positive,
             "t": round(elapsed_ns(start, by_id[c.event]) / 1e9, 6) if start and c.event in by_id else 0.0}
            for c in state.clicks]


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
