"""The viewer's mask tools in a real browser (Debian's Chromium via Playwright) against the live server: box prompt,
brush and eraser — real pointer gestures on the viewer's stage with its keyboard shortcuts (B, D, E) — then the
server's layer, a page reload (the case replayed from its events) and the saved mask.

A live server (uvicorn, real SQLite file, the demo chest X-rays) runs in a thread. Display-grid points are
turned into client positions with ``window.__bcViewer.imageToClient``; the mask is read back from the server's
``layer.png`` of the view (fetched with the page's own cookie) and, after the submit, from the database. Every wait is
on a page condition.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from annotations_db import rle
from app.render import DisplayGeometry, decode_layer_png
from app.testing import PASSWORD, LiveServer
from tests.browser_helpers import open_case_in_worklist, sign_in, submit, wait_stats

pytestmark = pytest.mark.browser

READERS = ("tbox", "tbrush")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    live = LiveServer.start(tmp_path_factory.mktemp("viewer-tools") / "data", readers=READERS)
    yield live
    live.stop()


@pytest.fixture(scope="module")
def shots(artifacts_dir) -> Path:
    folder = artifacts_dir / "viewer-tools"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _page(browser, server, name: str):
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    sign_in(page, server.url, name, PASSWORD)
    open_case_in_worklist(page, None)
    return context, page, errors


def _nonce(page) -> str:
    return page.get_attribute(".bc-answer[data-nonce]", "data-nonce")


def _server_layer(page, server) -> tuple[np.ndarray, dict]:
    """The view's mask layer as the server has it now (display grid, bool) and its X-Prompts."""
    import json

    response = page.request.get(f"{server.url}/api/v1/view/{_nonce(page)}/layer.png")
    assert response.status == 200, response.text()
    return decode_layer_png(response.body()) > 0, json.loads(response.headers["x-prompts"])


def _client(page, x: float, y: float) -> tuple[float, float]:
    point = page.evaluate("([x, y]) => window.__bcViewer.imageToClient(x, y)", [x, y])
    return point["x"], point["y"]


def _drag(page, points: list[tuple[float, float]]) -> None:
    """Press at the first display point, move through the others, release at the last (real pointer events)."""
    page.mouse.move(*_client(page, *points[0]))
    page.mouse.down()
    for x, y in points[1:]:
        page.mouse.move(*_client(page, x, y), steps=6)
    page.mouse.up()


def _tool(page, key: str, name: str) -> None:
    page.locator("#bc-stage").focus()
    page.keyboard.press(key)
    page.wait_for_function(f"window.__bcViewer.view().tool === '{name}'")


def test_viewer_box_prompt_masks_inside_the_box(server, browser, shots):
    context, page, errors = _page(browser, server, "tbox")
    x0, y0, x1, y1 = 560.0, 240.0, 860.0, 760.0  # display px: around the right half of the chest
    _tool(page, "b", "box")
    _drag(page, [(x0, y0), ((x0 + x1) / 2, (y0 + y1) / 2), (x1, y1)])
    wait_stats(page, "box", 1)
    mask, prompts = _server_layer(page, server)
    assert prompts["box"] == pytest.approx([x0, y0, x1, y1], abs=1.0) and prompts["clicks"] == []
    rows, cols = np.nonzero(mask)
    assert mask.sum() > 5000, "the box prompt gave a mask"
    assert rows.min() >= y0 - 1 and rows.max() <= y1 + 1 and cols.min() >= x0 - 1 and cols.max() <= x1 + 1
    page.wait_for_function("window.__bcViewer.view().prompts && window.__bcViewer.view().prompts.box")
    page.screenshot(path=str(shots / "01_box_prompt.png"))

    # the tool routes refuse bad bodies with 400 and the cause, and answer a measurement
    nonce, api = _nonce(page), f"{server.url}/api/v1"
    for route, body, cause in [("box", {"x0": 10, "y0": 10, "x1": 11, "y1": 400}, "smaller"),
                               ("stroke", {"points": [[5, 5]], "radius": 900, "erase": False}, "radius"),
                               ("stroke", {"points": "no", "radius": 5, "erase": False}, "points"),
                               ("cleanup", {"min_island_px": "many", "fill_holes": True}, "min_island_px"),
                               ("carry", {"from": 1, "to": 2}, "2-D"), ("undo", {"slice": 3}, "2-D")]:
        refused = page.request.post(f"{api}/{route}", data={"nonce": nonce, **body})
        assert refused.status == 400 and cause in refused.json()["error"], (route, refused.text())
    measured = page.request.post(f"{api}/measure", data={"nonce": nonce, "x0": 100, "y0": 100, "x1": 100, "y1": 612})
    view = page.request.get(f"{api}/me").json()["view"]
    assert measured.ok and measured.json()["px"] == pytest.approx(512 * view["height"] / view["display_height"])
    assert not errors, errors
    context.close()


def test_viewer_brush_and_eraser_are_saved_and_replayed(server, browser, shots):
    store = server.service.store
    context, page, errors = _page(browser, server, "tbrush")
    before, _ = _server_layer(page, server)
    height, width = before.shape
    # a point far from the AI's mask for the brush, one deep inside it for the eraser
    outside = ndimage.binary_erosion(~before, iterations=30)
    outside[:, : width // 8] = outside[: height // 8] = False
    by, bx = (int(v) for v in np.argwhere(outside)[len(np.argwhere(outside)) // 2])
    inside = ndimage.binary_erosion(before, iterations=30)
    ey, ex = (int(v) for v in np.argwhere(inside)[len(np.argwhere(inside)) // 2])

    _tool(page, "d", "brush")
    _drag(page, [(bx + 0.5, by + 0.5), (bx + 10.5, by + 0.5), (bx + 20.5, by + 5.5)])
    wait_stats(page, "stroke", 1)
    _tool(page, "e", "eraser")
    _drag(page, [(ex + 0.5, ey + 0.5), (ex + 8.5, ey + 0.5)])
    wait_stats(page, "stroke", 2)
    edited, prompts = _server_layer(page, server)
    assert edited[by, bx] and edited[by + 5, bx + 20] and not before[by, bx], "the brush added pixels"
    assert not edited[ey, ex] and before[ey, ex], "the eraser removed pixels"
    assert prompts["edits"] == 2 and prompts["source"] == "reader"
    page.screenshot(path=str(shots / "02_brush_eraser.png"))

    page.reload()  # the case comes back from its events, strokes included
    page.wait_for_selector("#bc-base[data-loaded='1']", timeout=120_000)
    page.wait_for_function("window.__bcStats.some(s => s.kind === 'layer')", timeout=120_000)
    replayed, replayed_prompts = _server_layer(page, server)
    assert np.array_equal(replayed, edited) and replayed_prompts == prompts
    page.screenshot(path=str(shots / "03_after_reload.png"))

    case = page.locator("#bc-case-info").inner_text()
    submit(page)
    answer = store.answers(store.reader("tbrush"))[-1]
    saved = rle.decode(answer.mask_rle).astype(bool)
    g = DisplayGeometry.for_shape(*saved.shape)
    assert (g.disp_height, g.disp_width) == (height, width)
    (obx, oby), (oex, oey) = g.display_to_original(bx + 0.5, by + 0.5), g.display_to_original(ex + 0.5, ey + 0.5)
    assert saved[round(oby), round(obx)] and not saved[round(oey), round(oex)], "the saved mask has the edits"
    kinds = [e.kind for e in store.events(store.case(answer_case(store, answer)), store.reader("tbrush"))]
    assert kinds.count("stroke") == 2 and case
    assert not errors, errors
    context.close()


def answer_case(store, answer) -> str:
    from annotations_db.models import Case

    with store.read_session() as session:
        return session.get(Case, answer.case_id).pseudo_id
