"""Server-rendered HTML of the case screen: the header line and the answer panel (AI box, actions, findings).

The answer panel has the same boxes in both arms of a study — the AI box keeps its height and every finding keeps
its AI column when the AI is not shown — so the checklist, the ratings and Submit sit at the same place whether or not
the AI output is on screen (reading times of the two arms are comparable). The page script (``static/viewer.js``)
wires the panel to the lean routes: each tick or rating is posted with the view's nonce and acknowledged once its
event is committed; Submit, Skip and Pause name the same nonce.
"""
from __future__ import annotations

import html
import json
from typing import Any

from app.service import CLASSES, AppService, View

SUGGESTED_MARK = "●"


def case_header(view: View | None) -> str:
    """One line: the case, its size and, in a study, "study · session k of n · arm · read i of m"."""
    if view is None:
        return '<div class="bc-header" id="bc-header">No case open.</div>'
    g = view.image.geometry
    parts = [f"Case <b>{html.escape(view.case)}</b>", f"{g.width}×{g.height} px"]
    progress = view.progress
    if progress is None:
        parts.append("free annotation")
    else:
        parts += [f"study <b>{html.escape(progress.study)}</b>",
                  f"session {progress.session} of {progress.sessions}",
                  f"arm <b>{html.escape(progress.arm)}</b>",
                  f'<span id="bc-read-position">read {progress.position} of {progress.reads}</span>']
    return f'<div class="bc-header" id="bc-header">{" · ".join(parts)}</div>'


def answer_panel(service: AppService, view: View | None) -> str:
    """The answer panel of ``view`` (an empty placeholder of the same size when no case is open)."""
    if view is None:
        return '<div class="bc-answer bc-answer-empty"></div>'
    panel = service.ai_panel(view)
    probabilities = (panel or {}).get("probabilities") or {}
    suggested = set((panel or {}).get("suggested") or [])
    state = view.state
    rows = "".join(_finding_row(name, state.labels.get(name, 0), state.ratings.get(name), view.rating_max,
                                probabilities.get(name), name in suggested) for name in CLASSES)
    data = {"nonce": view.nonce, "rating-max": view.rating_max, "study": int(view.in_study),
            "positives": json.dumps(sorted(c for c, v in state.labels.items() if v)),
            "ratings": json.dumps({c: r for c, r in state.ratings.items() if state.labels.get(c)})}
    attributes = " ".join(f'data-{k}="{html.escape(str(v), quote=True)}"' for k, v in data.items())
    rating_note = (f"Rate each finding you mark: your confidence it is present, 1–{view.rating_max}."
                   if view.rating_max else "Binary answers.")
    return (f'<div class="bc-answer" id="bc-answer" {attributes}>'
            f'{_ai_box(panel)}'
            f'<div class="bc-actions">{_actions(view)}<span class="bc-answer-status" id="bc-answer-status"></span></div>'
            f'<div class="bc-findings-head"><span>Findings</span><span class="bc-note">{rating_note}</span></div>'
            f'<div class="bc-findings" id="bc-findings">{rows}</div></div>')


def _actions(view: View) -> str:
    second = ('<button type="button" id="bc-pause" title="close this read unsubmitted; it resumes where you left it">'
              'Pause study</button>' if view.in_study else
              '<button type="button" id="bc-skip" title="next worklist case, this one stays open (J)">Skip</button>')
    return ('<button type="button" id="bc-submit" class="bc-primary" title="save the answer, open the next case '
            f'(Ctrl+Enter)">Submit &amp; next</button>{second}')


def _ai_box(panel: dict[str, Any] | None) -> str:
    """The AI summary, or — in an unaided arm — a box of the same size saying it is off."""
    if panel is None:
        body = '<span class="bc-note">AI output is not shown in this arm.</span>'
    elif not panel["probabilities"]:
        body = (f'<b>AI</b> <code>{html.escape(panel["model_version"])}</code><br>'
                f'<span class="bc-note">{html.escape(panel["why_none"])}</span>')
    else:
        names = ", ".join(html.escape(n) for n in panel["suggested"]) or "none"
        body = (f'<b>AI</b> <code>{html.escape(panel["model_version"])}</code> · probabilities beside each finding'
                f'<br>Suggested ({SUGGESTED_MARK}): {names}')
    return f'<div class="bc-ai-box" id="bc-ai-box">{body}</div>'


def _finding_row(name: str, value: int, rating: int | None, rating_max: int, probability: float | None,
                 suggested: bool) -> str:
    checked = " checked" if value else ""
    ai = "" if probability is None else f"{probability:.2f}{SUGGESTED_MARK if suggested else ''}"
    rating_input = ""
    if rating_max:
        shown = "" if rating is None or not value else str(rating)
        rating_input = (f'<input type="range" class="bc-rating" min="1" max="{rating_max}" step="1" '
                        f'value="{rating if rating and value else (rating_max + 1) // 2}" '
                        f'aria-label="confidence for {html.escape(name)}"{"" if value else " disabled"}'
                        f'{" data-rated=1" if shown else ""}>'
                        f'<output class="bc-rating-value">{shown or "–"}</output>')
    return (f'<div class="bc-finding{" bc-suggested" if suggested else ""}" data-class="{html.escape(name)}">'
            f'<label><input type="checkbox" class="bc-label"{checked}> {html.escape(name)}</label>'
            f'<span class="bc-ai-p">{ai}</span>{rating_input}</div>')
