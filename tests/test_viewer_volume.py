"""A CT from upload to export in a real browser (Debian's Chromium via Playwright) against the live server.

The admin uploads the real CT NIfTI (``../shared/data/ct_nifti/example_ct.nii.gz``, 122×101×112, HU) through
Admin → Import; a reader opens it, scrolls 10 slices with the wheel, clicks the liver on three slices with the
viewer's click tool (the slice reached with held ↑), submits; the Admin exports (NIfTI and DICOM-SEG zips) hold ONE
3-D mask each with the masks on exactly those three slices, equal to the layers the server showed on them. Every wait
is on a page condition.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from app.render import decode_layer_png
from app.testing import PASSWORD, LiveServer
from tests.browser_helpers import open_case_in_worklist, sign_in, submit, wait_full_pixels, wait_stats
from tests.test_volume_pixels import _frame_slices, liver_point

pytestmark = pytest.mark.browser

CT = "ct_nifti/example_ct.nii.gz"
DATASET = "ctupload"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    live = LiveServer.start(tmp_path_factory.mktemp("viewer-volume") / "data", readers=("vol",))
    yield live
    live.stop()


def _upload_through_admin(browser, server, path: Path) -> str:
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    page = context.new_page()
    sign_in(page, server.url, "boss")
    page.get_by_role("tab", name="Admin").click()
    page.get_by_role("tab", name="Import").click()
    page.locator("#bc-import-files input[type=file]").set_input_files(str(path))
    page.wait_for_function(f"document.querySelector('#bc-import-files').innerText.includes({path.name!r})",
                           timeout=60_000)
    page.locator("#bc-import-dataset textarea, #bc-import-dataset input").first.fill(DATASET)
    page.click("#bc-import-button")
    page.wait_for_function("/[✓✗]/.test(document.querySelector('#bc-import-message').innerText)", timeout=180_000)
    message = page.locator("#bc-import-message").inner_text()
    context.close()
    return message


def _to_slice(page, k: int) -> None:
    """Hold ↑ / ↓ on the stage until slice ``k`` is drawn."""
    now = int(page.get_attribute("#bc-base", "data-slice"))
    key = "ArrowUp" if k > now else "ArrowDown"
    page.locator("#bc-stage").focus()
    for _ in range(abs(k - now)):
        page.keyboard.down(key)
    page.keyboard.up(key)
    page.wait_for_selector(f"#bc-base[data-slice='{k}']", timeout=60_000)


def _layer(page, server, nonce: str, k: int) -> np.ndarray:
    response = page.request.get(f"{server.url}/api/v1/view/{nonce}/layer.png?slice={k}")
    assert response.status == 200, response.text()
    return decode_layer_png(response.body()) > 0


def _exported(server, kind: str, tmp_path: Path, suffix: str) -> Path:
    from app.admin import export

    http = server.login("boss")
    archive = export(server.service, server.service.sessions[http.cookies["biascare_session"]], kind)
    folder = tmp_path / kind.split()[1]
    with zipfile.ZipFile(archive) as zipped:
        zipped.extractall(folder)
    found = sorted(folder.rglob(f"*{suffix}"))
    assert len(found) == 1, found  # one file: one 3-D mask for the answer
    return found[0]


def test_viewer_ct_upload_scroll_masks_on_three_slices_export_3d(server, browser, shared_data, tmp_path):
    import highdicom as hd

    message = _upload_through_admin(browser, server, shared_data / CT)
    assert "✓" in message and "1 imported" in message and "✗" not in message, message
    case = server.service.store.cases(DATASET)[0].pseudo_id

    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    sign_in(page, server.url, "vol", PASSWORD)
    open_case_in_worklist(page, case)
    wait_full_pixels(page)
    assert page.get_attribute("#bc-base", "data-slice") == "56"
    assert page.locator(".bc-finding[data-class='Liver']").count() == 1  # the CT checklist, not CXR-LT
    stage = page.locator("#bc-stage").bounding_box()
    page.mouse.move(stage["x"] + stage["width"] / 2, stage["y"] + stage["height"] / 2)
    for _ in range(10):
        page.mouse.wheel(0, 100)
    page.wait_for_selector("#bc-base[data-slice='66']", timeout=60_000)

    nonce = page.get_attribute(".bc-answer[data-nonce]", "data-nonce")
    chosen, drawn = [85, 90, 95], {}
    for n, k in enumerate(chosen, start=1):
        _to_slice(page, k)
        page.locator("#bc-stage").focus()
        page.keyboard.press("p")
        x, y = liver_point(shared_data, k)
        point = page.evaluate("([x, y]) => window.__bcViewer.imageToClient(x, y)", [x, y])
        page.mouse.click(point["x"], point["y"])
        wait_stats(page, "click", n)
        page.wait_for_function("document.querySelector('#bc-overlay-canvas').dataset.markers === '1'")
        drawn[k] = _layer(page, server, nonce, k)
        assert drawn[k].any(), f"the click on slice {k} gave a mask"
    submit(page)
    assert not errors, errors
    context.close()

    image = nib.load(shared_data / CT)
    nifti = nib.load(_exported(server, "Masks: NIfTI (zip)", tmp_path, ".nii.gz"))
    assert np.allclose(nifti.affine, image.affine) and nifti.shape == image.shape
    volume = server.service.case_volume(server.service.store.case(case).id)
    mask = np.asarray(nifti.dataobj) > 0
    assert sorted(np.flatnonzero(mask.any(axis=(0, 1)))) == chosen
    for k in chosen:  # the display grid of this CT is its slice grid: the saved slice equals the layer shown
        assert np.array_equal(volume.volume_mask_to_slice(mask, k), drawn[k])

    seg = hd.seg.segread(_exported(server, "Masks: DICOM-SEG (zip)", tmp_path, ".seg.dcm"))
    by_slice = dict(zip(_frame_slices(seg, image.affine), seg.pixel_array))
    assert sorted(k for k, frame in by_slice.items() if frame.any()) == chosen
    for k in chosen:
        assert np.array_equal(by_slice[k] > 0, mask[:, :, k].T)
