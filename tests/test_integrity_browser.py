"""Reader-study integrity in a real browser (Debian's Chromium driven by Playwright).

* Layout parity: the checklist, the ratings and Submit sit at the same place with and without the AI shown, at
  1600×1000 and 1366×768, with Submit in view without scrolling.
* A stale tab: a second tab of the same login opens another case; the first tab's ticks and Submit are refused and
  nothing lands on the other case.
* A crossover study end to end: real NIH chest X-rays with their labels imported, a 28-day washout, reads with
  confidence ratings, the server SIGKILLed in the middle of a read and the page reloaded onto the restored read, the
  second session unlocked when the washout has passed, and the analysis of the study accounting for every read.
"""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests

from annotations_db.store import Store
from app.testing import PASSWORD, AppProcess, LiveServer
from tests.browser_helpers import rate, sign_in, submit, tick, wait_case_open

pytestmark = pytest.mark.browser
REPO_ROOT = Path(__file__).resolve().parents[1]
VIEWPORTS = ({"width": 1600, "height": 1000}, {"width": 1366, "height": 768})


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    live = LiveServer.start(tmp_path_factory.mktemp("integrity-browser") / "data")
    yield live
    live.stop()


def _boxes(page: Any) -> dict[str, dict[str, float]]:
    """Bounding boxes (page coordinates) of the answer panel's parts."""
    out = {}
    for name, selector in (("findings", "#bc-findings"), ("submit", "#bc-submit"),
                           ("first finding", ".bc-finding >> nth=0"), ("last finding", ".bc-finding >> nth=-1")):
        box = page.locator(selector).bounding_box()
        out[name] = {k: round(v, 1) for k, v in box.items()}
    return out


def _start_reads(page: Any) -> str:
    page.get_by_role("tab", name="Reader study").click()
    page.click("#bc-study-next")
    return wait_case_open(page)


def test_integrity_layout_is_identical_in_both_arms(server, browser, artifacts_dir):
    store = server.service.store
    cases = [c.id for c in store.cases()][:2]
    store.create_study("parity", cases, [store.reader("ada").id], arms=("unaided", "ai_aided"), design="sequential",
                       washout_days=0, seed=2)
    context = browser.new_context(viewport=VIEWPORTS[0])
    page = context.new_page()
    sign_in(page, server.url, "ada")
    measured: list[dict[str, Any]] = []
    _start_reads(page)
    for viewport in VIEWPORTS:
        page.set_viewport_size(viewport)
        for _ in range(2):  # sequential design: each case unaided, then with the AI
            wait_case_open(page)
            shows_ai = page.get_attribute(".bc-slot", "data-ai") == "1"
            assert ("AI output is not shown" in page.locator("#bc-ai-box").inner_text()) != shows_ai
            measured.append({"viewport": viewport, "ai": shows_ai, "boxes": _boxes(page),
                             "scroll_y": page.evaluate("window.scrollY")})
            page.screenshot(path=str(artifacts_dir / f"parity_{viewport['width']}_{'ai' if shows_ai else 'no_ai'}.png"))
            tick(page, "Edema")
            rate(page, "Edema", 60)
            submit(page)
    (artifacts_dir / "layout_parity.json").write_text(json.dumps(measured, indent=1))
    for viewport in VIEWPORTS:
        unaided, aided = ([m for m in measured if m["viewport"] == viewport and m["ai"] == ai][0] for ai in (False, True))
        for part, box in unaided["boxes"].items():
            for key in ("x", "y", "width", "height"):
                assert abs(box[key] - aided["boxes"][part][key]) <= 2, (viewport, part, key, box, aided["boxes"][part])
        for m in (unaided, aided):
            submit_box = m["boxes"]["submit"]
            assert m["scroll_y"] == 0 and submit_box["y"] >= 0 and submit_box["y"] + submit_box["height"] <= viewport["height"], \
                f"Submit is not in view without scrolling at {viewport}"
    context.close()


def test_integrity_a_stale_tab_in_chromium_files_nothing_on_the_other_case(server, browser):
    store = server.service.store
    reader = store.reader("ben")
    context = browser.new_context(viewport=VIEWPORTS[0])
    first = context.new_page()
    sign_in(first, server.url, "ben")
    first.click("#bc-open-top")
    nonce_a = wait_case_open(first)
    case_a = server.service.session({c["name"]: c["value"] for c in context.cookies()}["biascare_session"]).view.case

    second = context.new_page()  # another tab of the same login
    second.goto(f"{server.url}/ui/")
    assert wait_case_open(second) == nonce_a, "the second tab shows the open case"
    other = [i.case for i in store.worklist(reader) if i.case != case_a][0]
    second.get_by_role("tab", name="Worklist").click()
    second.locator("#bc-worklist").get_by_text(other, exact=True).filter(visible=True).first.click()
    second.wait_for_function(f"document.querySelector('.bc-answer[data-nonce]') && "
                             f"document.querySelector('.bc-answer[data-nonce]').dataset.nonce !== '{nonce_a}'",
                             timeout=120_000)
    events_before = {e.id for e in store.events(store.case(other), reader)}

    first.locator(".bc-finding[data-class='Pneumothorax'] .bc-label").click()
    first.wait_for_selector("#bc-stale.bc-stale-on", timeout=60_000)
    assert "Reload the page" in first.locator("#bc-stale").inner_text()
    first.click("#bc-submit", force=True)  # the stale panel is disabled; force the click through anyway
    assert {e.id for e in store.events(store.case(other), reader)} == events_before, "the stale tab wrote on B"
    assert not store.answers(reader), "an answer was filed from the stale tab"

    tick(second, "Edema")  # the live tab works on its own case
    kinds = [(e.kind, e.payload.get("class")) for e in store.events(store.case(other), reader)]
    assert ("label_toggled", "Edema") in kinds and ("label_toggled", "Pneumothorax") not in kinds
    context.close()


# ---------------------------------------------------------------------------------------------- end to end
def _seed_crossover(db_url: str, shared_data: Path, folder: Path, cases: int = 3) -> None:
    """``cases`` real NIH images with their labels, two readers and an admin, a crossover study with washout."""
    from annotations_db.importers import import_cxr_lt

    source = shared_data / "nih_cxr14_sample"
    with open(source / "labels_cxrlt2024_format.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    chosen = [r for r in rows if r["Cardiomegaly"] in ("0", "1")][:cases]
    table = folder / "labels.csv"
    with open(table, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(chosen)
    with Store.open(db_url) as store:
        report = import_cxr_lt(store, table, "nih", image_root=source, progress=False)
        assert len(report.imported) == cases, report.summary()
        for name in ("ada", "ben"):
            store.create_reader(name, PASSWORD)
        store.create_study("crossover", [c.id for c in store.cases()], ["ada", "ben"], arms=("unaided", "ai_aided"),
                           design="crossover", washout_days=28, seed=9, rating_max=100)


def _read_over_http(url: str, name: str, findings: list[str]) -> int:
    """A second reader's open session, read through the lean routes with ratings; returns the reads done."""
    http = requests.Session()
    http.post(f"{url}/api/v1/login", json={"username": name, "password": PASSWORD}, timeout=60).raise_for_status()
    done = 0
    view = http.post(f"{url}/api/v1/open", json={"study": "next"}, timeout=120).json()["view"]
    while view is not None:
        chosen = findings[done % len(findings):][:1]
        http.post(f"{url}/api/v1/answer", json={"nonce": view["nonce"], "positives": chosen,
                                                "ratings": {c: 40 + 10 * done for c in chosen}},
                  timeout=60).raise_for_status()
        http.post(f"{url}/api/v1/submit", json={"nonce": view["nonce"]}, timeout=120).raise_for_status()
        done += 1
        view = http.get(f"{url}/api/v1/me", timeout=60).json()["view"]
    return done


def _end_washout(db_url: str) -> None:
    """Time passes: the first session's reads were submitted 29 days ago (the 28-day washout is over)."""
    from sqlalchemy import select

    from annotations_db.models import Assignment
    with Store.open(db_url) as store, store.write_session() as session:
        for read in session.scalars(select(Assignment).where(Assignment.session == 1)):
            read.submitted_at -= timedelta(days=29)


def test_integrity_crossover_study_end_to_end_with_a_restart(tmp_path, shared_data, browser, artifacts_dir):
    data = tmp_path / "data"
    data.mkdir()
    db_url = f"sqlite:///{data / 'annotations.sqlite'}"
    _seed_crossover(db_url, shared_data, tmp_path)
    app = AppProcess(db_url, data)
    app.start()
    context = browser.new_context(viewport=VIEWPORTS[0])
    page = context.new_page()
    try:
        assert _read_over_http(app.url, "ben", ["Cardiomegaly", "Edema", "Atelectasis"]) == 3
        sign_in(page, app.url, "ada")
        _start_reads(page)
        header = page.locator("#bc-header").inner_text()
        assert "read 1 of 6" in header and "session 1 of 2" in header and "arm unaided" in header
        tick(page, "Cardiomegaly")
        rate(page, "Cardiomegaly", 85)
        tick(page, "Edema")
        rate(page, "Edema", 35)

        app.kill()  # the server dies in the middle of the read
        app.start()
        page.reload()
        wait_case_open(page)  # the page comes back onto the restored read: same login, same ticks and ratings
        assert "read 1 of 6" in page.locator("#bc-header").inner_text()
        for name, value in (("Cardiomegaly", "85"), ("Edema", "35")):
            assert page.locator(f".bc-finding[data-class='{name}'] .bc-label").is_checked()
            assert page.locator(f".bc-finding[data-class='{name}'] .bc-rating-value").inner_text() == value
        page.screenshot(path=str(artifacts_dir / "crossover_restored_read.png"))
        submit(page)
        for read in (2, 3):
            wait_case_open(page)
            assert f"read {read} of 6" in page.locator("#bc-header").inner_text()
            tick(page, "Cardiomegaly")
            rate(page, "Cardiomegaly", 20 * read)
            submit(page)
        page.wait_for_function("document.querySelector('#bc-message').innerText.includes('locked until')",
                               timeout=60_000)
        assert "session 2" in page.locator("#bc-message").inner_text()

        _end_washout(db_url)
        _start_reads(page)
        for read in (4, 5, 6):
            if read > 4:
                wait_case_open(page)
            header = page.locator("#bc-header").inner_text()
            assert f"read {read} of 6" in header and "session 2 of 2" in header and "arm ai_aided" in header
            assert "AI output is not shown" not in page.locator("#bc-ai-box").inner_text()
            tick(page, "Cardiomegaly")
            rate(page, "Cardiomegaly", 10 + 15 * read)
            submit(page)
        page.wait_for_function("document.querySelector('#bc-message').innerText.includes('All your assigned reads')",
                               timeout=60_000)
        assert _read_over_http(app.url, "ben", ["Edema", "Cardiomegaly"]) == 3
    finally:
        context.close()
        app.kill()

    out = tmp_path / "report"
    result = subprocess.run([sys.executable, "launch.py", "analyze", "--db", db_url, "--study", "crossover",
                             "--out", str(out), "--bootstrap", "50"], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "crossover" in result.stdout and (out / "report.html").is_file()
    from annotations_db.export import results_frame
    with Store.open(db_url) as store:
        frame = results_frame(store, "crossover")
    reads = frame.drop_duplicates(["reader", "case", "arm"])
    assert len(reads) == 12, "2 readers × 3 cases × 2 arms"
    assert reads["time_s"].notna().all() and (reads["time_s"] > 0).all()
    ada = frame[(frame["reader"] == "ada") & (frame["class"] == "Cardiomegaly")]
    assert ada["score"].notna().all() and set(ada["answer"]) == {1}
    assert (frame[frame["class"] == "Cardiomegaly"]["truth"].notna()).all()
