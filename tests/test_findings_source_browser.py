"""The study's own AI in Chromium: an admin imports a CXR-LT submission CSV (written here for the real demo cases, with
an unmatched and a bad row) and its thresholds file on the Admin → AI sources screen, attached to a study; a reader of
the study sees exactly the imported numbers, the source and its evidence in the aided arm, nothing of it in the
unaided arm, the plain "no prediction" message for the case whose row was bad; the answers, the events and the
results export name the source; free annotation still shows the built-in model."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest

from annotations_db.export import results_frame
from app.testing import LiveServer
from core_model.classes import CXR_LT_26
from core_model.findings import display_probability
from tests.browser_helpers import sign_in, submit, tick, wait_case_open

pytestmark = pytest.mark.browser
VIEWPORT = {"width": 1600, "height": 1000}
SOURCE = "vendor-x-2024"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    live = LiveServer.start(tmp_path_factory.mktemp("findings-source") / "data", wait_triage=False)
    yield live
    live.stop()


def _probabilities(k: int) -> dict[str, float]:
    values = {c: round(((k * 11 + j * 7) % 100) / 100, 3) for j, c in enumerate(CXR_LT_26)}
    values.update({"Edema": 0.734, "Cardiomegaly": 0.004, "Pleural Effusion": 0.998, "Atelectasis": 0.55})
    return values


def _write_files(folder: Path, good: str, bad: str) -> tuple[Path, Path, dict[str, float]]:
    """The submission (a good row for ``good``, a bad one for ``bad``, an unmatched row) and its thresholds."""
    expected = _probabilities(3)
    submission = folder / "vendor_submission.csv"
    with open(submission, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["dicom_id", *CXR_LT_26])
        writer.writerow([good, *(expected[c] for c in CXR_LT_26)])
        writer.writerow(["no-such-image-77", *(0.5 for _ in CXR_LT_26)])
        writer.writerow([bad, *("NaN" if c == "Edema" else 0.5 for c in CXR_LT_26)])
    thresholds = folder / "vendor_thresholds.csv"
    thresholds.write_text("class,threshold\nEdema,0.7\nAtelectasis,0.6\nPleural Effusion,0.9\n")
    return submission, thresholds, expected


def _pick(page: Any, dropdown: str, value: str) -> None:
    """Choose ``value`` in a Gradio dropdown."""
    page.locator(f"{dropdown} input").click()
    page.get_by_role("option", name=value, exact=True).click()
    page.wait_for_function(f"document.querySelector('{dropdown} input').value === {value!r}", timeout=30_000)


def _upload(page: Any, component: str, path: Path) -> None:
    page.locator(f"{component} input[type=file]").set_input_files(str(path))
    page.wait_for_function(f"document.querySelector('{component}').innerText.includes({path.name!r})",
                           timeout=60_000)


def _admin_imports(page: Any, url: str, submission: Path, thresholds: Path, study: str) -> str:
    sign_in(page, url, "boss")
    page.get_by_role("tab", name="Admin").click()
    page.get_by_role("tab", name="AI sources").click()
    page.wait_for_function("document.querySelector('#bc-ai-sources').innerText.includes('built-in')",
                           timeout=60_000)
    _upload(page, "#bc-ai-csv", submission)
    _upload(page, "#bc-ai-thresholds", thresholds)
    page.locator("#bc-ai-name textarea, #bc-ai-name input").first.fill(SOURCE)
    _pick(page, "#bc-ai-study", study)
    page.click("#bc-ai-import")
    page.wait_for_function("document.querySelector('#bc-ai-message').innerText.includes('matched')",
                           timeout=120_000)
    page.wait_for_function(f"document.querySelector('#bc-ai-sources').innerText.includes({SOURCE!r})",
                           timeout=60_000)
    return page.locator("#bc-ai-message").inner_text()


def _rows(page: Any) -> dict[str, tuple[str, str]]:
    """{finding: (probability cell, evidence cell)} of the answer panel."""
    out = {}
    for row in page.locator(".bc-finding").all():
        out[row.get_attribute("data-class")] = (row.locator(".bc-ai-p").inner_text().strip(),
                                                row.locator(".bc-ai-ev").inner_text().strip())
    return out


def _layout(page: Any) -> dict[str, dict[str, float]]:
    return {name: page.locator(selector).bounding_box()
            for name, selector in (("ai box", "#bc-ai-box"), ("submit", "#bc-submit"), ("findings", "#bc-findings"),
                                   ("last finding", ".bc-finding >> nth=-1"))}


def test_integrity_an_imported_submission_drives_the_aided_arm_and_the_export(server, browser, tmp_path,
                                                                                artifacts_dir):
    store = server.service.store
    nih = [c for c in store.cases("demo-nih")]
    from annotations_db.models import Case
    with store.read_session() as session:
        rows = session.query(Case).filter(Case.id.in_([c.id for c in nih]))
        dicom_ids = {row.pseudo_id: row.source_key for row in rows}
    good, bad = nih[0].pseudo_id, nih[1].pseudo_id
    store.create_study("vendor-study", [good, bad], [store.reader("ada")], arms=("unaided", "ai_aided"),
                       design="sequential", washout_days=0, seed=4, rating_max=0)
    submission, thresholds, expected = _write_files(tmp_path, dicom_ids[good], dicom_ids[bad])

    context = browser.new_context(viewport=VIEWPORT)
    admin = context.new_page()
    message = _admin_imports(admin, server.url, submission, thresholds, "vendor-study")
    assert "1 of 3 row(s) matched" in message and "line 3, dicom_id 'no-such-image-77'" in message, message
    assert "line 4, column 'Edema'" in message and bad in message, "the bad row and the case left without output"
    context.close()
    assert store.study_settings(store.study_id("vendor-study")).ai_source == SOURCE
    card = store.ai_source(SOURCE)
    suggested = card.suggested(expected)
    assert suggested == ["Edema", "Pleural Effusion"], "Edema 0.734 ≥ 0.7, Effusion 0.998 ≥ 0.9, Atelectasis < 0.6"

    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    sign_in(page, server.url, "ada")
    page.get_by_role("tab", name="Reader study").click()
    page.click("#bc-study-next")
    layouts: dict[str, Any] = {}
    for _ in range(4):  # sequential: each case unaided, then aided
        wait_case_open(page)
        header = page.locator("#bc-header").inner_text()
        case = header.split("Case ")[1].split(" ")[0]
        box = page.locator("#bc-ai-box").inner_text()
        rows = _rows(page)
        aided = "arm ai_aided" in header
        layouts.setdefault("aided" if aided else "unaided", _layout(page))
        if not aided:
            assert box.strip() == "AI output is not shown in this arm."
            assert set(rows.values()) == {("", "")}, "no probability and no evidence in the unaided arm"
            assert SOURCE not in page.locator("body").inner_text()
        elif case == good:
            assert SOURCE in box and "imported" in box and "vendor_submission.csv" in box
            assert "not validated here (supplier's numbers)" in box
            assert "Suggested (●): Edema, Pleural Effusion" in box
            for name in CXR_LT_26:
                mark = "●" if name in suggested else ""
                assert rows[name][0] == display_probability(expected[name]) + mark, (name, rows[name])
            assert rows["Cardiomegaly"][0] == "<0.01" and rows["Pleural Effusion"][0] == ">0.99●"
            assert rows["Edema"][1] == "supplier op 0.70 · not validated here"
            assert rows["Atelectasis"][1] == "supplier op 0.60 · not validated here"
            assert rows["Mass"][1] == "not validated"
            page.screenshot(path=str(artifacts_dir / "findings_source_aided.png"))
        else:
            assert SOURCE in box and "No prediction of this source for this case" in box
            assert set(rows.values()) == {("", "")}
        tick(page, "Edema")
        submit(page)
    page.wait_for_function("document.querySelector('#bc-message').innerText.includes('All your assigned reads')",
                           timeout=60_000)
    for part in ("ai box", "submit", "findings", "last finding"):
        for key in ("x", "y", "width", "height"):
            assert abs(layouts["aided"][part][key] - layouts["unaided"][part][key]) <= 2, (part, key, layouts)
    submit_box = layouts["aided"]["submit"]
    assert submit_box["y"] + submit_box["height"] <= VIEWPORT["height"], "Submit is above the fold"

    ada = store.reader("ada")
    reads = store.assignments_for(ada, "vendor-study")
    shown = [e.payload for r in reads for e in store.events(r, ada) if e.kind == "ai_shown"]
    assert shown and all(p["source"] == SOURCE and p["kind"] == "imported" for p in shown)
    frame = results_frame(store, "vendor-study")
    aided, unaided = frame[frame["arm"] == "ai_aided"], frame[frame["arm"] == "unaided"]
    assert set(aided["ai_source"]) == {SOURCE} and unaided["ai_source"].isna().all()
    read = aided[aided["case"] == good].set_index("class")
    assert read["ai_probability"].to_dict() == pytest.approx(expected)
    assert sorted(read.index[read["ai_suggested"] == 1]) == sorted(suggested)
    assert aided[aided["case"] == bad]["ai_probability"].isna().all()

    context.close()
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    sign_in(page, server.url, "ben")  # free annotation shows the built-in model, not the study's source
    page.click("#bc-open-top")
    wait_case_open(page)
    box = page.locator("#bc-ai-box").inner_text()
    assert server.service.model_version in box and SOURCE not in box and "built-in" in box
    context.close()


def test_integrity_the_admin_attaches_a_source_until_the_study_starts(server):
    from core_model.findings import supplier_card

    store = server.service.store
    store.register_ai_source(supplier_card("attach-me", "imported", "a test supplier", "cxr-lt-26", CXR_LT_26))
    cases = [c.pseudo_id for c in store.cases("demo-nih")][:2]
    store.create_study("attach-study", cases, [store.reader("cy")], washout_days=0)
    admin = server.gradio_client(server.login("boss"))
    message = admin.predict("attach-study", "attach-me", api_name="/admin_attach_ai_source")
    assert "shows the AI source 'attach-me'" in message
    assert store.study_settings(store.study_id("attach-study")).ai_source == "attach-me"
    reader = store.reader("cy")
    store.log_event(store.next_assignment(reader, "attach-study"), reader, "case_shown")  # the study has started
    with pytest.raises(Exception, match="has started"):
        admin.predict("attach-study", server.service.model_version, api_name="/admin_attach_ai_source")
    with pytest.raises(Exception, match="no AI source 'nope'"):
        admin.predict("attach-study", "nope", api_name="/admin_attach_ai_source")
    assert store.study_settings(store.study_id("attach-study")).ai_source == "attach-me"
    reader_client = server.gradio_client(server.login("cy"))
    with pytest.raises(Exception, match="administrators"):
        reader_client.predict("attach-study", "attach-me", api_name="/admin_attach_ai_source")
