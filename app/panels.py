"""Server-rendered HTML of the case screen: the header line and the answer panel (AI box, actions, findings).

The answer panel has the same boxes in both arms of a study — the AI box keeps its height and every finding keeps
its AI column when the AI is not shown — so the checklist, the ratings and Submit sit at the same place whether or not
the AI output is on screen (reading times of the two arms are comparable). The page script (``static/viewer.js``)
wires the panel to the lean routes: each tick or rating is posted with the view's nonce and acknowledged once its
event is committed; Submit, Skip and Pause name the same nonce.

The AI box names the source shown (name = version, kind, origin) and its validation summary; each finding row shows
the source's probability (:func:`core_model.findings.display_probability`) and its evidence — "AUROC 0.74
[0.61–0.85] · op 0.23" for a validated class, "not validated" (greyed, never suggested), the supplier's operating
point for an imported source, "—" for a class the source has no output for. Suggestions are the card's
(:meth:`core_model.findings.FindingsCard.suggested`, computed by the service).
"""
from __future__ import annotations

import html
import json
from typing import Any

from app.service import SUGGESTED_MARK, AppService, View, view_checklist
from core_model.findings import MIN_VALIDATION, NOT_TRAINED, SUPPLIER, VALIDATED, ClassEvidence, FindingsCard, \
    display_probability


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
    source: FindingsCard | None = (panel or {}).get("source") if probabilities else None
    state = view.state
    checklist = view_checklist(view)  # CT/MR volumes: their structure set; radiographs: CXR-LT 26
    rows = "".join(_finding_row(name, state.labels.get(name, 0), state.ratings.get(name), view.rating_max,
                                probabilities.get(name), name in suggested,
                                evidence_text(source.evidence.get(name)) if source else None)
                   for name in checklist.classes)
    data = {"nonce": view.nonce, "rating-max": view.rating_max, "study": int(view.in_study),
            "label-set": checklist.name,
            "positives": json.dumps(sorted(c for c, v in state.labels.items() if v)),
            "ratings": json.dumps({c: r for c, r in state.ratings.items() if state.labels.get(c)})}
    attributes = " ".join(f'data-{k}="{html.escape(str(v), quote=True)}"' for k, v in data.items())
    rating_note = (f"Rate each finding you mark: your confidence it is present, 1–{view.rating_max}."
                   if view.rating_max else "Binary answers.")
    return (f'<div class="bc-answer" id="bc-answer" {attributes}>'
            f'{_ai_box(panel)}'
            f'<div class="bc-actions">{_actions(view)}<span class="bc-answer-status" id="bc-answer-status"></span></div>'
            f'<div class="bc-findings-head"><span id="bc-checklist-title">{html.escape(checklist.title)}</span>'
            f'<span class="bc-note">{rating_note}</span></div>'
            f'<div class="bc-findings" id="bc-findings">{rows}</div></div>')


def _actions(view: View) -> str:
    second = ('<button type="button" id="bc-pause" title="close this read unsubmitted; it resumes where you left it">'
              'Pause study</button>' if view.in_study else
              '<button type="button" id="bc-skip" title="next worklist case, this one stays open (J)">Skip</button>')
    return ('<button type="button" id="bc-submit" class="bc-primary" title="save the answer, open the next case '
            f'(Ctrl+Enter)">Submit &amp; next</button>{second}')


def _ai_box(panel: dict[str, Any] | None) -> str:
    """The AI source and its output in three lines — source (name, kind, origin), validation summary, suggested
    findings or why there is no output — or, in an unaided arm, a box of the same size saying it is off."""
    if panel is None:
        return ('<div class="bc-ai-box" id="bc-ai-box">'
                '<span class="bc-note">AI output is not shown in this arm.</span></div>')
    source: FindingsCard = panel["source"]
    origin = html.escape(source.origin or "origin not recorded")
    lines = [f'<b>AI</b> <code id="bc-ai-source">{html.escape(source.name)}</code> · {html.escape(source.kind)} · '
             f'<span title="{origin}">{origin}</span>',
             f'<span class="bc-note" id="bc-ai-validation">{html.escape(validation_text(source))}</span>']
    if not panel["probabilities"]:
        lines.append(f'<span class="bc-note">{html.escape(panel["why_none"])}</span>')
    else:
        names = ", ".join(html.escape(n) for n in panel["suggested"]) or "none"
        lines.append(f'Suggested ({SUGGESTED_MARK}): <span id="bc-ai-suggested">{names}</span>')
    body = "".join(f'<div class="bc-ai-line">{line}</div>' for line in lines)
    return f'<div class="bc-ai-box" id="bc-ai-box">{body}</div>'


def validation_text(card: FindingsCard) -> str:
    """The source's validation summary: macro AUROC [interval] on N images · ECE, or why it is not validated."""
    v = card.validation
    if v.get("macro_auroc") is None:
        return ("not validated: no validation evidence stored with this checkpoint" if card.kind == "built-in"
                else "not validated here (supplier's numbers)")
    interval = (f" [{v['macro_auroc_low']:.2f}–{v['macro_auroc_high']:.2f}]"
                if v.get("macro_auroc_low") is not None and v.get("macro_auroc_high") is not None else "")
    ece = f" · ECE {v['ece']:.3f}" if v.get("ece") is not None else ""
    return f"validation: macro AUROC {v['macro_auroc']:.2f}{interval} on {v.get('images', '?')} images{ece}"


def evidence_text(evidence: ClassEvidence | None) -> tuple[str, str, str]:
    """(cell text, CSS class, tooltip) of one class's evidence: validated AUROC and operating point, the supplier's
    operating point, "not validated", or "—" where the source has no output."""
    if evidence is None or evidence.status == NOT_TRAINED:
        return "—", "bc-ev-none", "the source has no output for this class"
    if evidence.status == VALIDATED:
        return (f"AUROC {evidence.auroc:.2f} [{evidence.auroc_low:.2f}–{evidence.auroc_high:.2f}] · op "
                f"{evidence.operating_point:.2f}", "bc-ev-ok",
                f"validated on {evidence.n_pos} positive / {evidence.n_neg} negative images; at the operating point "
                f"sensitivity {_rate(evidence.sensitivity)}, specificity {_rate(evidence.specificity)}")
    if evidence.status == SUPPLIER:
        return (f"supplier op {evidence.operating_point:.2f} · not validated here", "bc-ev-supplier",
                "the supplier's threshold, not validated on this site's images")
    return ("not validated", "bc-ev-nv", f"never suggested: {evidence.n_pos} validation positive(s) (at least "
                                         f"{MIN_VALIDATION} needed, AUROC interval above 0.5)")


def _rate(value: float | None) -> str:
    return "?" if value is None else f"{value:.2f}"


def _finding_row(name: str, value: int, rating: int | None, rating_max: int, probability: float | None,
                 suggested: bool, evidence: tuple[str, str, str] | None) -> str:
    checked = " checked" if value else ""
    ai = "" if probability is None else f"{display_probability(probability)}{SUGGESTED_MARK if suggested else ''}"
    ev_text, ev_class, ev_title = evidence or ("", "", "")
    ev_attrs = ' class="bc-ai-ev"' + (f' title="{html.escape(ev_title)}"' if ev_title else "")
    row_class = " ".join(filter(None, ("bc-finding", "bc-suggested" if suggested else "", ev_class)))
    rating_input = ""
    if rating_max:
        shown = "" if rating is None or not value else str(rating)
        rating_input = (f'<input type="range" class="bc-rating" min="1" max="{rating_max}" step="1" '
                        f'value="{rating if rating and value else (rating_max + 1) // 2}" '
                        f'aria-label="confidence for {html.escape(name)}"{"" if value else " disabled"}'
                        f'{" data-rated=1" if shown else ""}>'
                        f'<output class="bc-rating-value">{shown or "–"}</output>')
    return (f'<div class="{row_class}" data-class="{html.escape(name)}">'
            f'<label><input type="checkbox" class="bc-label"{checked}> {html.escape(name)}</label>'
            f'<span class="bc-ai-p">{ai}</span>{rating_input}<span{ev_attrs}>{html.escape(ev_text)}</span></div>')
