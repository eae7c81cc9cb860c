"""The web app through its real HTTP surface: a live uvicorn server on a real SQLite file with the demo images.

Gradio handlers are driven with gradio_client (the Gradio Python API), the lean click routes with requests; the
database is checked directly afterwards.
"""
from __future__ import annotations

import io
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from app.render import DisplayGeometry, decode_layer_png, encode_mask_png, label_layer, mask_to_display
from app.testing import PASSWORD, LiveServer


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    live = LiveServer.start(tmp_path_factory.mktemp("app") / "data")
    yield live
    live.stop()


def _layer(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    return decode_layer_png(response.content)


def _case_2000(server) -> str:
    """A 2000×2000 demo case (the lung-mask images)."""
    from annotations_db.models import Case
    with server.service.store.read_session() as s:
        return next(c.pseudo_id for c in s.query(Case).order_by(Case.id) if c.width == 2000)


# ----------------------------------------------------------------------------------------------- pure mapping
@pytest.mark.parametrize("shape", [(2000, 2000), (1500, 1000), (1024, 1024), (2048, 1536), (277, 375), (3001, 999)])
def test_display_to_original_mapping_is_exact(shape):
    g = DisplayGeometry.for_shape(*shape)
    assert max(g.disp_height, g.disp_width) <= 1024
    # the centre of display pixel i is the centre of the block of original pixels it covers
    for i in (0, 1, g.disp_width // 2, g.disp_width - 1):
        ox, _ = g.display_to_original(i + 0.5, 0.5)
        lo, hi = i * g.sx, (i + 1) * g.sx
        assert math.isclose(ox + 0.5, (lo + hi) / 2, rel_tol=0, abs_tol=1e-9)
    # corners of the image map to the corners (continuous frame), and the mapping inverts exactly
    assert g.display_to_original(0, 0) == (-0.5, -0.5)
    x, y = g.display_to_original(g.disp_width, g.disp_height)
    assert math.isclose(x, g.width - 0.5) and math.isclose(y, g.height - 0.5)
    for dx, dy in [(0.25, 0.75), (123.4, 56.7), (g.disp_width - 0.01, g.disp_height - 0.01)]:
        bx, by = g.original_to_display(*g.display_to_original(dx, dy))
        assert math.isclose(bx, dx, abs_tol=1e-9) and math.isclose(by, dy, abs_tol=1e-9)


def test_integer_factor_mapping_and_mask_downsampling():
    g = DisplayGeometry.for_shape(2000, 2000)  # 2000 → 1024 is not an integer factor; use 2048 → 1024 for blocks
    assert (g.disp_height, g.disp_width) == (1024, 1024)
    g2 = DisplayGeometry.for_shape(2048, 2048)
    assert g2.display_to_original(10.5, 20.5) == (20.5, 40.5)  # display pixel (10, 20) = original pixels 20–21, 40–41
    mask = np.zeros((2048, 2048), bool)
    mask[40:42, 20:22] = True  # exactly the block under display pixel (x=10, y=20)
    small = mask_to_display(mask, g2)
    assert small.sum() == 1 and small[20, 10]
    layer = label_layer(small)
    assert layer[20, 10] == 2  # a one-pixel mask is all contour
    back = decode_layer_png(encode_mask_png(small))
    assert np.array_equal(back, layer)
    empty = decode_layer_png(encode_mask_png(None, (7, 9)))
    assert empty.shape == (7, 9) and not empty.any()


def test_mask_png_keeps_fill_and_contour():
    mask = np.zeros((50, 60), bool)
    mask[10:30, 20:50] = True
    layer = decode_layer_png(encode_mask_png(mask))
    assert set(np.unique(layer)) == {0, 1, 2}
    assert (layer > 0).sum() == mask.sum()
    assert layer[20, 35] == 1 and layer[10, 35] == 2 and layer[0, 0] == 0
    with Image.open(io.BytesIO(encode_mask_png(mask))) as image:
        assert image.mode == "P" and "transparency" in image.info


# ----------------------------------------------------------------------------------------------- login and pages
def test_login_required_and_login_flow(server):
    import requests

    anon = requests.Session()
    page = anon.get(f"{server.url}/ui/", allow_redirects=False, timeout=30)
    assert page.status_code == 303 and page.headers["location"] == "/login"
    assert anon.get(f"{server.url}/ui/config", timeout=30).status_code == 401
    assert anon.post(f"{server.url}/api/v1/click", json={"x": 1, "y": 1}, timeout=30).status_code == 401
    forged = anon.post(f"{server.url}/login", data={"username": "ada", "password": PASSWORD}, allow_redirects=False,
                       timeout=30)
    assert forged.status_code == 403, "a sign-in form without this site's token is refused (login CSRF)"
    bad = anon.post(f"{server.url}/login", data={"username": "ada", "password": "nope", "csrf": _form_token(anon, server)},
                    allow_redirects=False, timeout=30)
    assert bad.status_code == 401 and "wrong password" in bad.text
    good = anon.post(f"{server.url}/login", data={"username": "ada", "password": PASSWORD,
                                                  "csrf": _form_token(anon, server)}, allow_redirects=False, timeout=30)
    assert good.status_code == 303 and good.headers["location"] == "/ui/"
    cookie = good.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie
    assert anon.get(f"{server.url}/ui/", timeout=30).status_code == 200
    assert anon.get(f"{server.url}/api/v1/me", timeout=30).json()["reader"] == "ada"
    assert anon.get(f"{server.url}/logout", timeout=30).status_code == 405  # sign-out is a POST
    assert anon.post(f"{server.url}/logout", allow_redirects=False, timeout=30).status_code == 403  # no form token
    from app.security import sign_out_token
    out = anon.post(f"{server.url}/logout", data={"csrf": sign_out_token(anon.cookies["biascare_session"])},
                    allow_redirects=False, timeout=30)
    assert out.status_code == 303 and out.headers["location"] == "/login"
    assert anon.get(f"{server.url}/api/v1/me", timeout=30).status_code == 401


def _form_token(http, server) -> str:
    """GET the sign-in page: its form token (the same value is set as the SameSite=Strict cookie)."""
    import re
    page = http.get(f"{server.url}/login", timeout=30)
    return re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)


def test_worklist_is_ranked_by_uncertainty_and_filters(server):
    http = server.login("ada")
    client = server.gradio_client(http)
    table, progress = client.predict("open", "All", 0, 1, api_name="/worklist")
    rows = table["data"]
    assert len(rows) == 8 and "0 of 8" in progress
    values = [r[1] for r in rows]
    assert all(v is not None for v in values), "triage must rank every demo case"
    assert values == sorted(values, reverse=True)
    cut = values[3] - 0.0005  # the table shows 3 decimals
    table, _ = client.predict("open", "All", cut, 1, api_name="/worklist")
    assert [r[1] for r in table["data"]] == values[:4]
    table, _ = client.predict("open", "All", 0, cut, api_name="/worklist")
    assert [r[1] for r in table["data"]] == values[4:]
    table, _ = client.predict("done", "All", 0, 1, api_name="/worklist")
    assert table["data"] in ([], [[None, None, None, None]]) or all(r[2] == "done" for r in table["data"])


# ----------------------------------------------------------------------------------------------- the click path
def test_click_undo_labels_submit_writes_the_database(server):
    store = server.service.store
    http = server.login("ben")
    client = server.gradio_client(http)
    case = _case_2000(server)
    view = client.predict(case, api_name="/open_case")
    assert (view["width"], view["height"]) == (2000, 2000)
    assert (view["display_width"], view["display_height"]) == (1024, 1024)
    nonce = view["nonce"]

    base = http.get(f"{server.url}/api/v1/view/{nonce}/base.png", timeout=30)
    with Image.open(io.BytesIO(base.content)) as image:
        assert image.size == (1024, 1024) and image.mode == "L"
    initial = _layer(http.get(f"{server.url}/api/v1/view/{nonce}/layer.png", timeout=30))
    assert initial.shape == (1024, 1024) and (initial > 0).any(), "the AI mask is shown in free annotation"

    first = http.post(f"{server.url}/api/v1/click", json={"nonce": nonce, "x": 300.5, "y": 500.5, "positive": True},
                      timeout=60)
    one = _layer(first)
    assert first.headers["x-clicks"] == "1" and float(first.headers["x-model-ms"]) > 0
    second = http.post(f"{server.url}/api/v1/click", json={"nonce": nonce, "x": 512, "y": 512, "positive": False},
                       timeout=60)
    two = _layer(second)
    assert second.headers["x-clicks"] == "2"
    assert not np.array_equal(one > 0, two > 0), "the negative click must change the mask"
    assert (two[511:514, 511:514] == 0).all() or (two > 0).sum() < (one > 0).sum()
    undone = _layer(http.post(f"{server.url}/api/v1/undo", json={"nonce": nonce}, timeout=30))
    assert np.array_equal(undone, one), "undo restores the previous mask exactly"

    # the click was logged in original pixel coordinates (display × 2000/1024, pixel-index convention)
    session = server.service.session(http.cookies["biascare_session"])
    server.service.events.flush(session.token)
    events = store.events(store.case(case), store.reader("ben"))
    clicks = [e.payload for e in events if e.kind == "click"]
    assert clicks[0]["x"] == pytest.approx(300.5 * 2000 / 1024 - 0.5)
    assert clicks[0]["y"] == pytest.approx(500.5 * 2000 / 1024 - 0.5)
    assert clicks[0]["positive"] is True and clicks[1]["positive"] is False

    for positives in (["Cardiomegaly"], ["Cardiomegaly", "Pleural Effusion"]):
        assert http.post(f"{server.url}/api/v1/answer", json={"nonce": nonce, "positives": positives},
                         timeout=30).json()["positives"] == positives
    assert http.post(f"{server.url}/api/v1/submit", json={"nonce": nonce}, timeout=120).ok

    kinds = [e.kind for e in store.events(store.case(case), store.reader("ben"))]
    assert kinds[:2] == ["case_shown", "ai_shown"]
    assert kinds.count("click") == 2 and "undo" in kinds
    assert kinds.count("label_toggled") == 2 and kinds[-1] == "submit"
    answers = store.answers(store.reader("ben"))
    assert len(answers) == 1
    answer = answers[0]
    assert answer.labels["Cardiomegaly"] == 1 and answer.labels["Pleural Effusion"] == 1
    assert answer.labels["Edema"] == 0 and len(answer.labels) == 26
    assert answer.mask_rle is not None and answer.mask_rle["size"] == [2000, 2000]
    assert answer.accepted_as_is is False
    seconds = store.time_per_case(store.case(case), store.reader("ben"))
    assert seconds is not None and 0 < seconds < 600
    done, _ = client.predict("done", "All", 0, 1, api_name="/worklist")
    assert [r[0] for r in done["data"]] == [case]


def test_accept_as_is_saves_the_ai_mask(server):
    store = server.service.store
    http = server.login("cy")
    client = server.gradio_client(http)
    view = client.predict(_case_2000(server), api_name="/open_case")
    assert http.post(f"{server.url}/api/v1/accept", json={"nonce": view["nonce"]}, timeout=30).json()["accepted"]
    assert http.post(f"{server.url}/api/v1/submit", json={"nonce": view["nonce"]}, timeout=120).ok
    answer = store.answers(store.reader("cy"))[-1]
    assert answer.accepted_as_is is True and answer.mask_rle is not None
    assert set(answer.labels.values()) == {0}


def test_bad_click_requests_are_refused_and_the_server_keeps_serving(server):
    http = server.login("ada")
    client = server.gradio_client(http)
    view = client.predict(_case_2000(server), api_name="/open_case")
    url = f"{server.url}/api/v1/click"
    for body in ({"nonce": view["nonce"], "x": -1, "y": 5}, {"nonce": view["nonce"], "x": 1024, "y": 5},
                 {"nonce": view["nonce"], "x": "a", "y": 5}, {"nonce": view["nonce"], "x": None, "y": 5}):
        response = http.post(url, json=body, timeout=30)
        assert response.status_code == 400 and "error" in response.json()
    assert http.post(url, json={"nonce": "stale", "x": 5, "y": 5}, timeout=30).status_code == 409
    assert http.post(url, data="x=1", headers={"Content-Type": "application/x-www-form-urlencoded"},
                     timeout=30).status_code == 400
    assert http.post(url, data="{not json", headers={"Content-Type": "application/json"}, timeout=30).status_code == 400
    bad_event = http.post(f"{server.url}/api/v1/event", json={"nonce": view["nonce"], "kind": "submit"}, timeout=30)
    assert bad_event.status_code == 400
    ok = http.post(url, json={"nonce": view["nonce"], "x": 100, "y": 100, "positive": True}, timeout=60)
    assert ok.status_code == 200


# ----------------------------------------------------------------------------------------------- isolation
def test_reader_isolation_and_admin_pages(server):
    from gradio_client.exceptions import AppError as ClientAppError

    ada, ben = server.login("ada"), server.login("ben")
    client_a = server.gradio_client(ada)
    view = client_a.predict(_case_2000(server), api_name="/open_case")
    # ben cannot act on ada's open case, even with its nonce
    stolen = ben.post(f"{server.url}/api/v1/click", json={"nonce": view["nonce"], "x": 5, "y": 5}, timeout=30)
    assert stolen.status_code == 409
    assert ben.get(f"{server.url}/api/v1/view/{view['nonce']}/base.png", timeout=30).status_code == 409
    # answers: own only
    assert ben.get(f"{server.url}/api/v1/answers", timeout=30).status_code == 200
    assert ben.get(f"{server.url}/api/v1/answers", params={"reader": "cy"}, timeout=30).status_code == 403
    # admin pages and data by URL
    assert ben.get(f"{server.url}/admin", allow_redirects=False, timeout=30).status_code == 403
    assert ben.get(f"{server.url}/api/v1/admin/results.csv", timeout=30).status_code == 403
    assert ben.get(f"{server.url}/api/v1/admin/dashboard", timeout=30).status_code == 403
    client_b = server.gradio_client(ben)
    for call in (lambda: client_b.predict("mallory", "longpassword", "admin", api_name="/admin_create_user"),
                 lambda: client_b.predict("(latest)", api_name="/admin_dashboard"),
                 lambda: client_b.predict("(latest)", api_name="/admin_export")):
        with pytest.raises(ClientAppError, match="administrators"):
            call()
    assert all(r.name != "mallory" for r in server.service.store.readers())
    boss = server.login("boss")
    assert boss.get(f"{server.url}/admin", allow_redirects=False, timeout=30).status_code == 303
    assert boss.get(f"{server.url}/api/v1/answers", params={"reader": "ben"}, timeout=30).status_code == 200


# ----------------------------------------------------------------------------------------------- reader study
def test_study_unaided_arm_sends_no_ai_output(server):
    store = server.service.store
    boss = server.gradio_client(server.login("boss"))
    cases = [c.pseudo_id for c in store.cases()[:2]]
    message = boss.predict("pilot", cases, ["cy"], ["unaided", "ai_aided"], "sequential", 7, 0, False, 0, False,
                           api_name="/admin_create_study")
    assert "created" in message
    http = server.login("cy")
    client = server.gradio_client(http)
    outputs = client.predict(api_name="/open_next_assignment")
    viewer_html, info, answer_panel = outputs[0], outputs[1], outputs[2]
    assert 'data-ai="0"' in viewer_html and "arm <b>unaided</b>" in info and "read 1 of 4" in info
    panel_text = answer_panel.get("value") if isinstance(answer_panel, dict) else answer_panel
    assert "AI output is not shown in this arm" in panel_text
    assert '<span class="bc-ai-p"></span>' in panel_text and "bc-suggested" not in panel_text
    everything = json.dumps(outputs, default=str)
    assert "Suggested" not in everything and "**AI**" not in everything and "probab" not in everything.lower()
    state = client.predict(api_name="/view_state")
    assert state["shows_ai"] is False
    nonce = state["nonce"]
    assert http.get(f"{server.url}/api/v1/view/{nonce}/base.png", timeout=30).status_code == 200
    for path in ("layer.png",):
        assert http.get(f"{server.url}/api/v1/view/{nonce}/{path}", timeout=30).status_code == 403
    for route in ("click", "undo", "reset", "accept"):
        response = http.post(f"{server.url}/api/v1/{route}", json={"nonce": nonce, "x": 5, "y": 5}, timeout=30)
        assert response.status_code == 403, route
        assert "probab" not in response.text.lower()
    shown = http.post(f"{server.url}/api/v1/event", json={"nonce": nonce, "kind": "ai_shown"}, timeout=30)
    assert shown.status_code == 403
    # idle time reported by the page is subtracted from the server-side time
    assert http.post(f"{server.url}/api/v1/event", json={"nonce": nonce, "kind": "idle_start"}, timeout=30).ok
    assert http.post(f"{server.url}/api/v1/event", json={"nonce": nonce, "kind": "idle_end"}, timeout=30).ok
    assert http.post(f"{server.url}/api/v1/answer", json={"nonce": nonce, "positives": ["Edema"]}, timeout=30).ok
    assert http.post(f"{server.url}/api/v1/submit", json={"nonce": nonce}, timeout=120).ok
    after = http.get(f"{server.url}/api/v1/me", timeout=30).json()["view"]
    assert after["shows_ai"] is True, "sequential design: the same case follows in the AI-aided arm"
    first = [a for a in store.assignments_for(store.reader("cy")) if a.status == "submitted"]
    assert len(first) == 1 and first[0].arm == "unaided"
    kinds = [e.kind for e in store.events(first[0], store.reader("cy"))]
    assert "ai_shown" not in kinds and kinds[0] == "case_shown" and kinds[-1] == "submit"
    assert "idle_start" in kinds and "idle_end" in kinds
    answer = store.answers(store.reader("cy"))[-1]
    assert answer.mask_rle is None and answer.labels["Edema"] == 1
    assert store.time_per_case(first[0]) is not None
    # a reader cannot see the study's other readers' reads nor open an assignment that is not theirs
    other = store.assignments_for(store.reader("cy"))[0]
    ada = server.login("ada")
    assert ada.get(f"{server.url}/api/v1/answers", params={"reader": "cy"}, timeout=30).status_code == 403
    with pytest.raises(Exception):
        server.service.open_assignment(server.service.session(ada.cookies["biascare_session"]), other.id)
    # inside a study read no other case opens; paused, the study's cases still do not open as free annotation
    # while reads are pending (no AI preview)
    with pytest.raises(Exception, match="reader-study read"):
        client.predict(cases[0], api_name="/open_case")
    assert http.post(f"{server.url}/api/v1/pause", json={"nonce": after["nonce"]}, timeout=30).ok
    with pytest.raises(Exception, match="reader studies"):
        client.predict(cases[0], api_name="/open_case")
    dashboard = boss.predict("pilot", api_name="/admin_dashboard")[0]
    assert dashboard["data"] and dashboard["data"][0][0] == "cy"


# ----------------------------------------------------------------------------------------------- uploads
def test_upload_bad_input_is_refused_with_a_clear_message(server, tmp_path):
    from gradio_client import handle_file

    from app import admin

    boss_http = server.login("boss")
    boss = server.gradio_client(boss_http)
    not_image = tmp_path / "notes.png"
    not_image.write_text("this is not an image")
    truncated = tmp_path / "half.png"
    good_bytes = (Path(__file__).resolve().parents[1] / "assets/demo/images/nih/00004030_000.png").read_bytes()
    truncated.write_bytes(good_bytes[: len(good_bytes) // 3])
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    message = boss.predict([handle_file(str(not_image)), handle_file(str(truncated)), handle_file(str(empty))],
                           "bad", api_name="/admin_import")
    lines = message.splitlines()
    assert len(lines) == 3 and all(line.startswith("✗") for line in lines), message
    assert "notes.png" in message and "half.png" in message and "empty.jpg" in message

    # size limit
    server.service.max_upload_bytes = 1000
    try:
        message = boss.predict([handle_file(str(truncated))], "bad", api_name="/admin_import")
        assert "limit" in message
    finally:
        server.service.max_upload_bytes = 64 * 1024 * 1024

    # a path named by the client is never opened: not through the handler, not through Gradio
    session = server.service.session(boss_http.cookies["biascare_session"])
    report = admin.import_uploads(server.service, session, ["/etc/passwd", {"path": "/etc/hostname"}], "x")
    assert report.count("refused") == 2
    with pytest.raises(Exception):
        boss.predict([{"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}}], "x", api_name="/admin_import")

    # a good upload is imported, and the server keeps serving
    good = tmp_path / "good.png"
    good.write_bytes(good_bytes)
    before = len(server.service.store.cases())
    message = boss.predict([handle_file(str(good))], "uploads", api_name="/admin_import")
    assert message.startswith("✓") or "already present" in message
    assert len(server.service.store.cases()) == before  # same bytes as a demo image: idempotent by sha256
    assert boss_http.get(f"{server.url}/api/v1/me", timeout=30).status_code == 200


def test_admin_exports_and_users(server):
    boss_http = server.login("boss")
    boss = server.gradio_client(boss_http)
    message, users = boss.predict("dora", "longenough", "reader", api_name="/admin_create_user")
    assert "created" in message and any(row[1] == "dora" for row in users["data"])
    from gradio_client.exceptions import AppError as ClientAppError
    with pytest.raises(ClientAppError, match="8 characters"):
        boss.predict("eve", "short", "reader", api_name="/admin_create_user")
    csv = boss_http.get(f"{server.url}/api/v1/admin/results.csv", timeout=30)
    assert csv.status_code in (200, 404)
    if csv.status_code == 200:
        assert csv.text.startswith("study,reader,case,arm,class")


# ----------------------------------------------------------------------------------------------- volumes
@pytest.mark.parametrize("source", ["nifti", "enhanced-dicom"])
def test_a_ct_volume_opens_on_its_middle_slice_scrolls_and_its_mask_exports_on_the_slice_shown(server, shared_data,
                                                                                              tmp_path, source):
    """A CT case (a NIfTI file, or one multi-frame enhanced DICOM) opens on its middle axial slice; the reader clicks
    there, moves to another slice, where the clicks start over, and clicks again; the answer is ONE 3-D mask with
    both slices' masks (mask_slices lists them), exported into the volume on those two slices only."""
    import shutil

    from annotations_db import rle
    from annotations_db.export import export_training
    from annotations_db.importers import import_dicom, import_nifti
    from app.testing import PASSWORD
    from core_model.io import load_volume
    from tests.series_helpers import write_ct_series, write_enhanced_ct

    store = server.service.store
    ct = shared_data / "ct_nifti" / "example_ct.nii.gz"
    if source == "nifti":
        (tmp_path / "ct").mkdir()
        path = Path(shutil.copy(ct, tmp_path / "ct" / ct.name))
        report = import_nifti(store, tmp_path / "ct", f"ct-{source}", with_masks=False, progress=False)
    else:
        path = write_enhanced_ct(write_ct_series(ct, tmp_path / "slices"), tmp_path / "pacs" / "enhanced.dcm")
        report = import_dicom(store, tmp_path / "pacs", f"ct-{source}", progress=False)
    assert len(report.imported) == 1 and not report.errors
    case = store.cases(f"ct-{source}")[0].pseudo_id
    volume = load_volume(path)
    middle, chosen = volume.shape[2] // 2, 70  # this CT's axial axis is k
    server.service.background.triage_missing()
    assert server.service.background.wait(600)
    triaged = store.prediction(store.case(case).id, server.service.model_version)
    assert rle.decode(triaged.mask_rle).shape == (101, 122)  # the middle slice's AI mask, ranked by its uncertainty
    assert triaged.probabilities == {} and triaged.uncertainty["total"] >= 0  # no CXR findings read off a CT

    reader = f"vol-{source}"
    store.create_reader(reader, PASSWORD, role="reader")
    server.credentials[reader] = PASSWORD
    http = server.login(reader)
    client = server.gradio_client(http)
    view = client.predict(case, api_name="/open_case")
    assert (view["slice"], view["slices"]) == (middle, volume.shape[2])
    assert (view["height"], view["width"]) == volume.axial(middle).pixels.shape == (101, 122)
    nonce, url = view["nonce"], f"{server.url}/api/v1"
    middle_png = http.get(f"{url}/view/{nonce}/base.png", timeout=30).content

    def click(x: float, y: float) -> np.ndarray:
        return _layer(http.post(f"{url}/click", timeout=60, json={
            "nonce": nonce, "x": view["display_width"] * x, "y": view["display_height"] * y, "positive": True}))

    assert (click(0.3, 0.5) > 0).any()  # a click on the middle slice, then the reader moves on
    for bad in (-1, volume.shape[2], "x"):
        refused = http.post(f"{url}/slice", json={"nonce": nonce, "index": bad}, timeout=30)
        assert refused.status_code == 400 and "slice" in refused.json()["error"]
    moved = http.post(f"{url}/slice", json={"nonce": nonce, "index": chosen}, timeout=60)
    assert moved.json() == {"slice": chosen, "slices": volume.shape[2]}
    assert http.get(f"{url}/view/{nonce}/base.png", timeout=30).content != middle_png
    assert _layer(http.get(f"{url}/view/{nonce}/layer.png", timeout=30)).shape == (view["display_height"],
                                                                                  view["display_width"])
    assert (click(0.7, 0.5) > 0).any()
    assert http.post(f"{url}/submit", json={"nonce": nonce}, timeout=120).ok

    answer = store.answers(store.reader(reader))[-1]  # both slices the reader clicked on: ONE 3-D mask
    assert answer.slice_index is None and answer.mask_slices == sorted([chosen, middle])
    saved = rle.decode(answer.mask_rle)  # the volume's voxel grid, masks on those two slices only
    assert saved.shape == volume.shape and set(np.flatnonzero(saved.any(axis=(0, 1)))) == {chosen, middle}
    drawn = volume.volume_mask_to_slice(saved > 0, chosen)
    assert drawn.shape == (101, 122) and drawn.any()
    kinds = [e.kind for e in store.events(store.case(case), store.reader(reader))]
    assert kinds.count("slice_shown") == 1 and kinds.count("click") == 2
    manifest = json.loads(export_training(store, tmp_path / "out", formats=("nifti",)).read_text())
    item = next(i for i in manifest["items"] if i["case_id"] == case)
    exported = np.asarray(nib.load(tmp_path / "out" / item["mask"]).dataobj)
    assert exported.shape == volume.shape
    assert set(np.flatnonzero(exported.any(axis=(0, 1)))) == {chosen, middle}  # those slices only
    assert np.array_equal(exported > 0, saved > 0)


def test_a_2d_case_has_no_slices(server):
    from app.testing import PASSWORD
    server.service.store.create_reader("flat", PASSWORD, role="reader")
    server.credentials["flat"] = PASSWORD
    http = server.login("flat")
    view = server.gradio_client(http).predict(_case_2000(server), api_name="/open_case")
    assert (view["slice"], view["slices"]) == (None, None)
    refused = http.post(f"{server.url}/api/v1/slice", json={"nonce": view["nonce"], "index": 1}, timeout=30)
    assert refused.status_code == 400 and "2-D" in refused.json()["error"]
