"""The reading-room viewer in a real browser (Debian's Chromium via Playwright): window/level on full-bit-depth
pixels (a 10-bit MONOCHROME1 DICOM, a CT in HU), invert, wheel zoom at the cursor, pan, click markers and Undo.

A live server (uvicorn, real SQLite file, demo CXRs) runs in a thread with two real cases imported from
../shared/data: ``cxr_dicom/gdcm_CR-MONO1-10-chest.dcm`` (440², 10 bits stored, VOI window 550/1024, MONOCHROME1)
and ``ct_nifti/example_ct.nii.gz`` (HU). Displayed intensities are read back from the #bc-base canvas with
getImageData and compared with the window mapping of app/static/viewer.js applied to values read from the files:
gray = clamp(round((v − (c − w/2)) / w × 255), 0, 255), inverted 255 − gray. Every wait is on a page condition.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from app.testing import PASSWORD, LiveServer
from tests.browser_helpers import (base_gray, open_case_in_worklist, sign_in, stage_box, wait_full_pixels,
                                   wait_stats)

pytestmark = pytest.mark.browser

DICOM_NAME = "gdcm_CR-MONO1-10-chest.dcm"
READERS = ("wl", "hu", "inv", "zoom", "pan", "mark", "dark", "ct1", "old")


@pytest.fixture(scope="module")
def server(tmp_path_factory, shared_data):
    from annotations_db.importers import import_dicom, import_nifti

    live = LiveServer.start(tmp_path_factory.mktemp("viewer") / "data", readers=READERS)
    store = live.service.store
    source = tmp_path_factory.mktemp("viewer-import")
    (source / "dicom").mkdir()
    shutil.copy(shared_data / "cxr_dicom" / DICOM_NAME, source / "dicom")
    (source / "ct").mkdir()
    shutil.copy(shared_data / "ct_nifti" / "example_ct.nii.gz", source / "ct")
    assert len(import_dicom(store, source / "dicom", "dicom10", progress=False).imported) == 1
    assert len(import_nifti(store, source / "ct", "ct", with_masks=False, progress=False).imported) == 1
    live.cases = {"dicom": store.cases("dicom10")[0].pseudo_id, "ct": store.cases("ct")[0].pseudo_id}
    yield live
    live.stop()


@pytest.fixture(scope="module")
def shots(artifacts_dir) -> Path:
    folder = artifacts_dir / "viewer"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _page(browser, server, name: str, case: str | None):
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    sign_in(page, server.url, name, PASSWORD)
    open_case_in_worklist(page, case)
    return context, page, errors


def _expected_gray(values: np.ndarray, center: float, width: float, invert: bool) -> np.ndarray:
    gray = np.clip(np.floor((values - (center - width / 2)) / width * 255 + 0.5), 0, 255)
    return 255 - gray if invert else gray


def _window(page) -> tuple[float, float]:
    c, w = page.get_attribute("#bc-base", "data-window").split(",")
    return float(c), float(w)


def _dicom_values(shared_data: Path) -> np.ndarray:
    import pydicom

    ds = pydicom.dcmread(shared_data / "cxr_dicom" / DICOM_NAME)
    slope, intercept = float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0))
    return ds.pixel_array.astype(np.float64) * slope + intercept


def _sample_points(values: np.ndarray, n: int = 400) -> list[tuple[int, int]]:
    """n spread pixels plus the darkest and brightest (x, y), display grid = the stored grid here (440² ≤ 1024²)."""
    rng = np.random.default_rng(17)
    h, w = values.shape
    points = [(int(x), int(y)) for x, y in zip(rng.integers(0, w, n), rng.integers(0, h, n))]
    for flat in (int(values.argmin()), int(values.argmax())):
        points.append((flat % w, flat // w))
    return points


def _assert_mapping(page, values: np.ndarray, points: list[tuple[int, int]], what: str) -> np.ndarray:
    c, w = _window(page)
    invert = page.get_attribute("#bc-base", "data-invert") == "1"
    shown = np.array(base_gray(page, points), dtype=np.float64)
    expected = _expected_gray(np.array([values[y, x] for x, y in points]), c, w, invert)
    worst = float(np.abs(shown - expected).max())
    assert worst <= 1, f"{what}: canvas gray differs from the window mapping by {worst} (window {c}/{w})"
    return shown


def test_viewer_window_level_16bit_dicom(server, browser, shared_data, shots):
    values = _dicom_values(shared_data)
    context, page, errors = _page(browser, server, "wl", server.cases["dicom"])
    assert page.get_attribute(".bc-slot", "data-w") == "440"
    wait_full_pixels(page)
    points = _sample_points(values)
    assert _window(page) == (550.0, 1024.0), "the DICOM's own VOI window is the default"
    assert page.get_attribute("#bc-base", "data-invert") == "1", "MONOCHROME1 is shown inverted"
    _assert_mapping(page, values, points, "default window")

    # a narrow window (sliders, modality units) separates stored values 1/1000 of the range apart: 10-bit precision
    centre = float(np.median(values))
    page.evaluate(f"""() => {{ const l = document.querySelector('#bc-level'), w = document.querySelector('#bc-window');
        l.value = {centre}; l.dispatchEvent(new Event('input'));
        w.value = 24; w.dispatchEvent(new Event('input')); }}""")
    assert _window(page) == (centre, 24.0)
    near = [(x, y) for y, x in zip(*np.nonzero(np.abs(values - centre) < 12))][:3000]
    shown = _assert_mapping(page, values, near, "narrow window")
    assert len(set(shown.tolist())) >= 15, "a 24-unit window shows ≥ 15 distinct grays (an 8-bit image has ~6 there)"

    page.locator("#bc-stage").focus()
    page.keyboard.press("2")  # X-ray presets: 1 default (header), 2 full range
    assert _window(page) == (float(values.min() + values.max()) / 2, float(values.max() - values.min()))
    _assert_mapping(page, values, points, "full-range preset")
    page.keyboard.press("1")
    assert _window(page) == (550.0, 1024.0)

    before = _window(page)
    box = stage_box(page)
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down(button="right")
    page.mouse.move(x + 150, y + 60, steps=6)
    page.mouse.up(button="right")
    page.wait_for_function(f"document.querySelector('#bc-base').dataset.window !== '{before[0]:g},{before[1]:g}'")
    after = _window(page)
    assert after[1] > before[1] and after[0] > before[0], "right-drag: right widens the window, down raises the level"
    _assert_mapping(page, values, points, "after right-drag")
    assert "W " in page.locator("#bc-corner-bl").inner_text()
    assert not [s for s in page.evaluate("window.__bcStats") if s["kind"] == "click"], "a right-drag is no click"
    page.screenshot(path=str(shots / "01_dicom_window_level.png"))
    assert not errors, errors
    context.close()


def test_viewer_window_level_hu_ct(server, browser, shared_data, shots):
    import nibabel as nib

    context, page, errors = _page(browser, server, "hu", server.cases["ct"])
    wait_full_pixels(page)
    view = page.evaluate("window.__bcViewer.view()")
    assert view["units"] == "HU" and [p["name"] for p in view["presets"]][:5] == [
        "lung", "mediastinum", "abdomen", "bone", "brain"]
    hu = np.array(page.evaluate("""() => { const p = window.__bcViewer.get().pixels;
        return Array.from(p.samples, (s) => s * p.slope + p.intercept); }"""), dtype=np.float64)
    k = view["slice"]
    volume = np.asarray(nib.load(shared_data / "ct_nifti" / "example_ct.nii.gz").dataobj, dtype=np.float64)
    assert np.array_equal(np.sort(hu), np.sort(volume[:, :, k].ravel())), "the slice's HU, as in the file"
    values = hu.reshape(view["h"], view["w"])
    points = [(x, y) for y in range(view["h"]) for x in range(view["w"])]
    page.locator("#bc-stage").focus()
    for key, (c, w) in (("1", (-600, 1500)), ("2", (50, 350)), ("3", (40, 400)), ("4", (400, 1800)),
                        ("5", (40, 80))):
        page.keyboard.press(key)
        assert _window(page) == (c, w)
        _assert_mapping(page, values, points, f"preset {key}")
    page.keyboard.press("1")  # lung −600/1500: air (−1000 HU) → round(350 / 1500 × 255) = 60, water (0 HU) → 230
    for hu_value, gray in ((-1000, 60), (0, 230)):
        where = [(x, y) for x, y in points if values[y, x] == hu_value]
        assert where and set(base_gray(page, where)) == {gray}, (hu_value, gray)
    assert "HU" in page.locator("#bc-corner-bl").inner_text()
    box = page.locator("#bc-base").bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5)
    page.wait_for_function("document.querySelector('#bc-corner-br').innerText.startsWith('HU ')")
    page.screenshot(path=str(shots / "02_ct_lung_window.png"))
    assert not errors, errors
    context.close()


def test_viewer_invert(server, browser, shared_data):
    values = _dicom_values(shared_data)
    context, page, errors = _page(browser, server, "inv", server.cases["dicom"])
    wait_full_pixels(page)
    points = _sample_points(values, 200)
    inverted = np.array(base_gray(page, points))
    assert page.get_attribute("#bc-base", "data-invert") == "1"
    page.locator("#bc-stage").focus()
    page.keyboard.press("i")
    assert page.get_attribute("#bc-base", "data-invert") == "0"
    plain = np.array(base_gray(page, points))
    assert np.array_equal(plain, 255 - inverted), "invert flips every displayed gray"
    _assert_mapping(page, values, points, "not inverted")
    page.click("#bc-invert")
    assert page.get_attribute("#bc-base", "data-invert") == "1"
    assert np.array_equal(np.array(base_gray(page, points)), inverted)
    page.keyboard.press("i")
    page.locator("#bc-stage").focus()
    page.keyboard.press("Escape")  # reset view: the header's MONOCHROME1 inversion again
    assert page.get_attribute("#bc-base", "data-invert") == "1"
    assert not errors, errors
    context.close()


def _point_under(page, cx: float, cy: float) -> tuple[float, float]:
    """The display-grid point under client (cx, cy), from the base canvas's layout box (not the viewer's state)."""
    box = page.locator("#bc-base").bounding_box()
    w, h = int(page.get_attribute(".bc-slot", "data-w")), int(page.get_attribute(".bc-slot", "data-h"))
    return (cx - box["x"]) * w / box["width"], (cy - box["y"]) * h / box["height"]


def test_viewer_wheel_zoom_keeps_point(server, browser):
    context, page, errors = _page(browser, server, "zoom", None)
    stage = stage_box(page)
    w = int(page.get_attribute(".bc-slot", "data-w"))
    for fx, fy, delta in ((0.3, 0.4, -300), (0.62, 0.7, -200), (0.45, 0.3, 250)):
        cx, cy = stage["x"] + stage["width"] * fx, stage["y"] + stage["height"] * fy
        page.mouse.move(cx, cy)
        before = _point_under(page, cx, cy)
        zoom = page.get_attribute("#bc-stage", "data-zoom")
        page.mouse.wheel(0, delta)
        page.wait_for_function(f"document.querySelector('#bc-stage').dataset.zoom !== '{zoom}'")
        after = _point_under(page, cx, cy)
        scale = page.locator("#bc-base").bounding_box()["width"] / w  # screen px per display px now
        assert abs(after[0] - before[0]) * scale <= 1 and abs(after[1] - before[1]) * scale <= 1, (before, after)
        assert (float(page.get_attribute("#bc-stage", "data-zoom")) > float(zoom)) == (delta < 0)
        mapped = page.evaluate(f"window.__bcViewer.clientToImage({cx}, {cy})")
        assert abs(mapped["x"] - after[0]) < 0.5 and abs(mapped["y"] - after[1]) < 0.5
    assert not errors, errors
    context.close()


def test_viewer_pan(server, browser):
    context, page, errors = _page(browser, server, "pan", None)
    stage = stage_box(page)
    start = page.locator("#bc-base").bounding_box()
    zoom = page.get_attribute("#bc-stage", "data-zoom")
    cx, cy = stage["x"] + stage["width"] * 0.5, stage["y"] + stage["height"] * 0.5

    def drag(dx: float, dy: float, button: str = "left") -> None:
        page.mouse.move(cx, cy)
        page.mouse.down(button=button)
        page.mouse.move(cx + dx, cy + dy, steps=5)
        page.mouse.up(button=button)

    def moved_by(dx: float, dy: float) -> None:
        box = page.locator("#bc-base").bounding_box()
        assert abs(box["x"] - start["x"] - dx) <= 1 and abs(box["y"] - start["y"] - dy) <= 1, (box, start, dx, dy)
        assert page.get_attribute("#bc-stage", "data-zoom") == zoom, "panning keeps the zoom"

    drag(80, 50, "middle")
    moved_by(80, 50)
    page.keyboard.down("Space")
    drag(-30, -20)
    page.keyboard.up("Space")
    moved_by(50, 30)
    assert not [s for s in page.evaluate("window.__bcStats") if s["kind"] == "click"], "Space+drag is no click"
    page.keyboard.press("h")
    assert page.get_attribute("#bc-stage", "data-tool") == "pan"
    drag(-50, -30)
    moved_by(0, 0)
    drag(120, 0)
    page.keyboard.press("0")  # fit: back to where it started
    moved_by(0, 0)
    assert not errors, errors
    context.close()


def _marks_pixel(page, sx: float, sy: float) -> list[int]:
    """The marks canvas's RGBA at stage px (sx, sy)."""
    return page.evaluate(f"""() => {{ const c = document.querySelector('#bc-marks'), r = window.devicePixelRatio || 1;
        const x = Math.round({sx} * r), y = Math.round({sy} * r);
        return Array.from(c.getContext('2d').getImageData(x, y, 1, 1).data); }}""")


def _is_white(rgba: list[int]) -> bool:
    """White paint covering at least ~40 % of the pixel (the ring is anti-aliased at sub-pixel positions)."""
    return all(v > 200 for v in rgba[:3]) and rgba[3] > 100


def test_viewer_markers_and_undo(server, browser, shots):
    context, page, errors = _page(browser, server, "mark", None)
    box = page.locator("#bc-overlay-canvas").bounding_box()
    stage = stage_box(page)
    clicks = [(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.45, "left"),
              (box["x"] + box["width"] * 0.7, box["y"] + box["height"] * 0.5, "right")]  # right-click: negative
    for i, (x, y, button) in enumerate(clicks):
        page.mouse.click(x, y, button=button)
        wait_stats(page, "click", i + 1)
    page.wait_for_function("document.querySelector('#bc-overlay-canvas').dataset.markers === '2'")
    markers = page.evaluate("window.__bcViewer.markers()")
    assert [(m["n"], m["positive"], m["last"]) for m in markers] == [(1, True, False), (2, False, True)]
    for m, (x, y, _) in zip(markers, clicks):
        assert abs(stage["x"] + m["sx"] - x) <= 1.5 and abs(stage["y"] + m["sy"] - y) <= 1.5, "marker where clicked"
    first, last = markers
    assert _is_white(_marks_pixel(page, last["sx"] + 11, last["sy"])), "the last marker has the white ring"
    assert not _is_white(_marks_pixel(page, first["sx"] + 11, first["sy"]))
    green, red = _marks_pixel(page, first["sx"] - 6, first["sy"]), _marks_pixel(page, last["sx"] - 6, last["sy"])
    assert green[1] > 150 and green[0] < 100 and red[0] > 200 and red[1] < 100, (green, red)
    page.screenshot(path=str(shots / "03_markers.png"))

    page.mouse.move(stage["x"] + stage["width"] * 0.5, stage["y"] + stage["height"] * 0.5)
    zoom = page.get_attribute("#bc-stage", "data-zoom")
    page.mouse.wheel(0, -400)
    page.wait_for_function(f"document.querySelector('#bc-stage').dataset.zoom !== '{zoom}'")
    zoomed = page.evaluate("window.__bcViewer.markers()")[1]
    assert _is_white(_marks_pixel(page, zoomed["sx"] + 11, zoomed["sy"])), "markers keep their screen size"
    assert not _is_white(_marks_pixel(page, zoomed["sx"] + 16, zoomed["sy"]))
    page.keyboard.press("0")

    page.keyboard.press("u")
    wait_stats(page, "undo", 1)
    page.wait_for_function("document.querySelector('#bc-overlay-canvas').dataset.markers === '1'")
    markers = page.evaluate("window.__bcViewer.markers()")
    assert [(m["n"], m["positive"], m["last"]) for m in markers] == [(1, True, True)], "Undo removed the last"
    assert _is_white(_marks_pixel(page, markers[0]["sx"] + 11, markers[0]["sy"]))
    assert page.get_attribute("#bc-overlay-canvas", "data-clicks") == "1"
    page.screenshot(path=str(shots / "04_after_undo.png"))
    assert not errors, errors
    context.close()


def test_viewer_dark_theme_fills_the_viewport(server, browser, shots):
    context, page, errors = _page(browser, server, "dark", None)
    assert page.evaluate("document.body.classList.contains('dark')"), "Gradio in dark mode"
    assert page.evaluate("getComputedStyle(document.querySelector('#bc-stage')).backgroundColor") == "rgb(0, 0, 0)"
    stage, base = stage_box(page), page.locator("#bc-base").bounding_box()
    assert stage["y"] + stage["height"] <= 1000 + 0.5, "the viewer ends inside the window"
    assert base["y"] >= stage["y"] - 0.5 and base["y"] + base["height"] <= stage["y"] + stage["height"] + 0.5, \
        "the whole image is in view (nothing cut off at the bottom)"
    assert base["height"] >= stage["height"] - 1 or base["width"] >= stage["width"] - 1, "fitted to the viewport"
    assert stage["height"] >= 600, "at 1600×1000 the image gets most of the window's height"
    page.keyboard.press("?")
    assert page.locator("#bc-help").is_visible() and "invert" in page.locator("#bc-help").inner_text()
    page.screenshot(path=str(shots / "05_dark_help.png"))
    page.keyboard.press("Escape")
    assert not page.locator("#bc-help").is_visible()
    opacity = "getComputedStyle(document.querySelector('#bc-overlay-canvas')).opacity"
    assert page.evaluate(opacity) == "0" and page.locator("#bc-fill").inner_text() == "Outline", "outline by default"
    page.keyboard.press("f")
    assert page.evaluate(opacity) == "0.4" and page.locator("#bc-fill").inner_text() == "Fill"
    page.evaluate("""() => { const o = document.querySelector('#bc-opacity'); o.value = 70;
                             o.dispatchEvent(new Event('input')); }""")
    assert page.evaluate(opacity) == "0.7"
    page.keyboard.press("o")
    assert page.evaluate(opacity) == "0", "O hides the mask"
    assert not errors, errors
    context.close()


def test_viewer_falls_back_to_base_png(server, browser):
    """A server without GET /pixels (404): the viewer draws the 8-bit base.png and still windows it."""
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.route("**/pixels*", lambda route: route.fulfill(status=404, json={"detail": "Not Found"}))
    sign_in(page, server.url, "old", PASSWORD)
    open_case_in_worklist(page, None)
    page.wait_for_function("window.__bcViewer.view().full === false")
    assert page.get_attribute("#bc-base", "data-window") == "127.5,255"
    centre = [(512, 512), (300, 400)]
    before = base_gray(page, centre)
    page.evaluate("""() => { const w = document.querySelector('#bc-window'); w.value = 40;
                             w.dispatchEvent(new Event('input')); }""")
    assert base_gray(page, centre) != before
    assert "8-bit" in page.locator("#bc-corner-bl").inner_text()
    assert not errors, errors
    context.close()


def test_viewer_ct_slices_scroll_measure_and_carry(server, browser, shots, artifacts_dir):
    """Wheel and (held) arrow keys move one slice per step, each slice drawn from its own pixels; Ctrl+wheel zooms;
    the AI mask of the slice reached arrives; a distance is measured in mm (3 mm voxels); K carries a slice's click
    to the next slice."""
    import json

    context, page, errors = _page(browser, server, "ct1", server.cases["ct"])
    wait_full_pixels(page)
    assert page.get_attribute("#bc-base", "data-slice") == "56"
    stage = stage_box(page)
    page.mouse.move(stage["x"] + stage["width"] * 0.5, stage["y"] + stage["height"] * 0.5)
    first = base_gray(page, [(x, 50) for x in range(0, 122, 3)])
    for _ in range(10):
        page.mouse.wheel(0, 100)  # one notch: one slice (PACS: the wheel scrolls)
    page.wait_for_selector("#bc-base[data-slice='66']")
    assert page.locator("#bc-slice-label").inner_text() == "67 / 112"
    assert base_gray(page, [(x, 50) for x in range(0, 122, 3)]) != first, "the slice's own pixels are drawn"
    zoom = page.get_attribute("#bc-stage", "data-zoom")
    page.keyboard.down("Control")
    page.mouse.wheel(0, -200)
    page.keyboard.up("Control")
    page.wait_for_function(f"document.querySelector('#bc-stage').dataset.zoom !== '{zoom}'")
    assert page.get_attribute("#bc-base", "data-slice") == "66", "Ctrl+wheel zooms, it does not scroll"
    page.keyboard.press("0")

    page.locator("#bc-stage").focus()
    for _ in range(20):
        page.keyboard.down("ArrowUp")  # a held key: Playwright sends repeated keydowns (repeat = true)
    page.keyboard.up("ArrowUp")
    page.wait_for_selector("#bc-base[data-slice='86']")
    page.keyboard.press("PageDown")
    page.wait_for_selector("#bc-base[data-slice='76']")
    page.wait_for_function("window.__bcStats.some(s => s.kind === 'layer' && s.slice === 76)", timeout=120_000)
    slices = [s for s in page.evaluate("window.__bcStats") if s["kind"] == "slice"]
    assert slices[-1]["slice"] == 76 and all(s["painted_ms"] >= 0 for s in slices)
    (artifacts_dir / "viewer_slice_latency_browser.json").write_text(json.dumps(slices, indent=1))

    page.keyboard.press("m")
    a, b = page.evaluate("[window.__bcViewer.imageToClient(20.5, 50.5), window.__bcViewer.imageToClient(60.5, 50.5)]")
    page.mouse.move(a["x"], a["y"])
    page.mouse.down()
    page.mouse.move(b["x"], b["y"], steps=4)
    page.mouse.up()
    page.wait_for_function("document.querySelector('#bc-overlay-canvas').dataset.measured === '1'")
    measure = page.evaluate("window.__bcViewer.view().measures")[0]
    assert abs(measure["mm"] - 120) < 0.5, measure  # 40 display px × 3 mm

    page.keyboard.press("p")
    c = page.evaluate("window.__bcViewer.imageToClient(61, 50)")
    page.mouse.click(c["x"], c["y"])
    wait_stats(page, "click", 1)
    page.keyboard.press("ArrowUp")
    page.wait_for_selector("#bc-base[data-slice='77']")
    page.keyboard.press("k")
    wait_stats(page, "carry", 1)
    view = page.evaluate("window.__bcViewer.view()")
    assert view["layerSlice"] == 77 and len(view["prompts"]["clicks"]) == 1, view["prompts"]
    assert page.get_attribute("#bc-overlay-canvas", "data-markers") == "1"
    assert page.get_attribute("#bc-slice-ticks", "data-slices") == "76,77", "ticks: the slices holding a mask"
    page.screenshot(path=str(shots / "06_ct_carried.png"))
    page.reload()  # the case comes back from its events: the ticks with it
    page.wait_for_selector("#bc-base[data-loaded='1'][data-slice='77']", timeout=120_000)
    assert page.get_attribute("#bc-slice-ticks", "data-slices") == "76,77", "ticks after a reload"
    store = server.service.store
    events = store.events(store.case(server.cases["ct"]), store.reader("ct1"))
    carried = [e.payload for e in events if e.kind == "carry"]
    assert carried and carried[-1]["from"] == 76 and carried[-1]["to"] == 77
    assert [e.payload.get("slice") for e in events if e.kind == "slice_shown"][-1] == 77
    assert not errors, errors
    context.close()
