"""GET /api/v1/view/{nonce}/pixels on real files through a live server (real SQLite file, real HTTP), the 3-D answer
of a volume, its NIfTI / DICOM-SEG exports, and uploads of volumes (good and bad) through the Admin import code.

Expected values are computed independently: pydicom's stored values for the DICOMs, nibabel's voxels for the CT.
"""
from __future__ import annotations

import gzip
import io
import shutil
import threading
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image

from app.render import decode_layer_png
from app.testing import PASSWORD, LiveServer

CT = "ct_nifti/example_ct.nii.gz"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    live = LiveServer.start(tmp_path_factory.mktemp("pixels") / "data", wait_triage=False)
    live.service.store.create_reader("px", PASSWORD, role="reader")
    live.credentials["px"] = PASSWORD
    yield live
    live.stop()


def _import(server, files: list[Path], folder: Path, dataset: str) -> list[str]:
    """Import copies of ``files`` (one dataset) with the project's importers; returns the cases' pseudo ids."""
    from annotations_db.importers import import_path

    folder.mkdir(parents=True, exist_ok=True)
    for path in files:
        shutil.copy(path, folder / path.name)
    report = import_path(server.service.store, folder, dataset)
    assert not report.errors, report.errors
    return [c.pseudo_id for c in server.service.store.cases(dataset)]


def _open(server, http, case: str) -> dict:
    response = http.post(f"{server.url}/api/v1/open", json={"case": case}, timeout=300)
    assert response.status_code == 200, response.text
    return response.json()["view"]


def _pixels(server, http, nonce: str, **params) -> tuple[np.ndarray, dict]:
    response = http.get(f"{server.url}/api/v1/view/{nonce}/pixels", params=params, timeout=60)
    assert response.status_code == 200, response.text
    headers = response.headers
    samples = np.frombuffer(response.content, dtype=np.dtype(headers["X-Dtype"]).newbyteorder("<"))
    return samples.reshape(int(headers["X-Height"]), int(headers["X-Width"])), headers


def _box(values: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Area average of ``values`` onto (rows, cols) — the display image's box filter."""
    image = Image.fromarray(values.astype(np.float32), mode="F").resize((shape[1], shape[0]), Image.BOX)
    return np.asarray(image, dtype=np.float64)


# ------------------------------------------------------------------------------------------------ 2-D DICOM
def test_16_bit_monochrome1_dicom_sends_its_stored_values_not_inverted(server, shared_data, tmp_path):
    """A 10-bit and a 15-bit MONOCHROME1 CR: the samples are the file's stored values (uint16) on the display grid,
    not inverted (X-Invert 1 says so), the default window is the file's Window Center/Width, gzip on the wire."""
    files = [shared_data / "cxr_dicom" / "gdcm_CR-MONO1-10-chest.dcm",
             shared_data / "cxr_dicom" / "nema_wg04_RG1_CR_chest_jpegls_nearlossless.dcm"]
    cases = _import(server, files, tmp_path / "dcm", "px-dicom")
    http = server.login("px")
    by_rows = {}
    for case in cases:
        view = _open(server, http, case)
        samples, headers = _pixels(server, http, view["nonce"])
        by_rows[view["height"]] = (samples, headers, view)
    small, headers, view = by_rows[440]  # 440 x 440: sent as stored
    stored = pydicom.dcmread(files[0]).pixel_array
    assert headers["X-Dtype"] == "uint16" and samples_equal(small, stored)
    assert (headers["X-Invert"], headers["X-Window"], headers["X-Modality"]) == ("1", "550,1024", "CR")
    assert (headers["X-Slope"], headers["X-Intercept"], headers["X-Units"], headers["X-Slice"]) == ("1", "0", "", "")
    assert headers["Content-Encoding"] == "gzip"
    big, headers, view = by_rows[1955]  # 1955 x 1841 → 1024 x 964, area-averaged, 15-bit precision kept
    stored = pydicom.dcmread(files[1]).pixel_array
    assert big.shape == (view["display_height"], view["display_width"]) == (1024, 964)
    expected = _box(stored, big.shape)
    assert np.abs(big.astype(np.float64) - expected).max() <= 0.5 + 1e-6
    assert int(big.max()) > 255 * 8  # not an 8-bit rendering
    assert headers["X-Window"] == "15000,30000" and headers["X-Invert"] == "1"


def samples_equal(samples: np.ndarray, stored: np.ndarray) -> bool:
    return samples.shape == stored.shape and np.array_equal(samples.astype(np.int64), stored.astype(np.int64))


def test_pixels_are_gzip_on_the_wire_and_cached(server, shared_data, tmp_path):
    import requests

    cases = _import(server, [shared_data / "cxr_dicom" / "siim_nihcxr14_CR_chest_PA_jpegbaseline.dcm"],
                    tmp_path / "gz", "px-gzip")
    http = server.login("px")
    view = _open(server, http, cases[0])
    url = f"{server.url}/api/v1/view/{view['nonce']}/pixels"
    raw = requests.get(url, cookies=http.cookies, stream=True, timeout=60)
    body = raw.raw.read(decode_content=False)
    assert raw.headers["Content-Encoding"] == "gzip" and body[:2] == b"\x1f\x8b"
    samples = np.frombuffer(gzip.decompress(body), dtype=np.uint8).reshape(1024, 1024)
    assert raw.headers["X-Dtype"] == "uint8" and raw.headers["X-Spacing"] == "0.168,0.168"
    assert np.array_equal(samples, pydicom.dcmread(shared_data / "cxr_dicom" /
                                                   "siim_nihcxr14_CR_chest_PA_jpegbaseline.dcm").pixel_array)
    key = (server.service.store.case(cases[0]).id, None)
    assert server.service._pixels.get(key) is not None  # a second request answers from the cache


# ------------------------------------------------------------------------------------------------ CT (HU)
@pytest.fixture(scope="module")
def ct_case(server, shared_data, tmp_path_factory):
    return _import(server, [shared_data / CT], tmp_path_factory.mktemp("ct"), "px-ct")[0]


def test_ct_slices_are_hounsfield_units_equal_to_nibabel(server, shared_data, ct_case):
    """int16 HU equal to nibabel's voxels of the slice (radiological display orientation), HU units, 3 mm
    spacing, a lung window on a chest-level slice and the abdomen window on an abdominal one."""
    from core_model.io.volume import slice_display

    image = nib.load(shared_data / CT)
    hu = np.asarray(image.dataobj)
    display = slice_display(image.affine, 2)
    http = server.login("px")
    view = _open(server, http, ct_case)
    assert view["slices"] == 112
    for k in (5, 56, 110):
        samples, headers = _pixels(server, http, view["nonce"], slice=k)
        assert headers["X-Dtype"] == "int16" and headers["X-Units"] == "HU" and headers["X-Modality"] == "CT"
        assert (headers["X-Slice"], headers["X-Slices"], headers["X-Spacing"]) == (str(k), "112", "3,3")
        values = samples * float(headers["X-Slope"]) + float(headers["X-Intercept"])
        assert np.array_equal(values, display.forward(hu[:, :, k]))
    assert _pixels(server, http, view["nonce"], slice=111)[1]["X-Window"] == "-600,1500"  # the lung bases, top slice
    assert _pixels(server, http, view["nonce"], slice=40)[1]["X-Window"] == "40,400"  # abdomen
    default = _pixels(server, http, view["nonce"])[1]
    assert default["X-Slice"] == str(view["slice"])


def test_pixels_never_wait_for_the_session_lock(server, ct_case):
    """/pixels answers while the session's lock (held by a model pass) is taken."""
    http = server.login("px")
    view = _open(server, http, ct_case)
    token = http.cookies["biascare_session"]
    session = server.service.sessions[token]
    acquired, release = threading.Event(), threading.Event()

    def hold() -> None:
        with session.lock:
            acquired.set()
            release.wait(60)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert acquired.wait(10)
        samples, headers = _pixels(server, http, view["nonce"], slice=3)
        assert samples.shape == (101, 122) and headers["X-Slice"] == "3"
    finally:
        release.set()
        holder.join()


def test_bad_nonce_and_bad_slice_are_refused_with_a_reason(server, ct_case, shared_data, tmp_path):
    http = server.login("px")
    view = _open(server, http, ct_case)
    base = f"{server.url}/api/v1/view"
    stale = http.get(f"{base}/not-the-nonce/pixels", timeout=30)
    assert stale.status_code == 409 and "reload" in stale.json()["error"]
    for bad in (112, -1):
        missing = http.get(f"{base}/{view['nonce']}/pixels", params={"slice": bad}, timeout=30)
        assert missing.status_code == 404 and "0..111" in missing.json()["error"]
    words = http.get(f"{base}/{view['nonce']}/pixels", params={"slice": "two"}, timeout=30)
    assert words.status_code == 400 and "integer" in words.json()["error"]
    flat = _import(server, [shared_data / "cxr_dicom" / "nihcxr14_gcp_DX_secondarycapture_implicitVR.dcm"],
                   tmp_path / "flat", "px-flat")[0]
    view = _open(server, http, flat)
    refused = http.get(f"{base}/{view['nonce']}/pixels", params={"slice": 1}, timeout=30)
    assert refused.status_code == 404 and "2-D" in refused.json()["error"]
    assert http.get(f"{base}/x/pixels", cookies={}, timeout=30).status_code in (401, 409)


# ------------------------------------------------------------------------------------------------ 3-D answers
def test_masks_on_three_slices_save_one_3d_mask_and_export_nifti_and_dicom_seg(server, shared_data, ct_case,
                                                                              tmp_path):
    """Clicks on three slices → one 3-D mask (the volume's voxel grid) with those slices listed; the NIfTI export has
    the volume's affine and the masks on exactly those slices; the DICOM-SEG (built on the NIfTI's geometry) too."""
    import highdicom as hd

    from annotations_db import rle
    from annotations_db.export import export_masks

    store = server.service.store
    store.create_reader("px3d", PASSWORD, role="reader")
    server.credentials["px3d"] = PASSWORD
    http = server.login("px3d")
    view = _open(server, http, ct_case)
    nonce, chosen = view["nonce"], [85, 90, 95]
    for k in chosen:
        moved = http.post(f"{server.url}/api/v1/slice", json={"nonce": nonce, "index": k}, timeout=120)
        assert moved.json()["slice"] == k
        x, y = liver_point(shared_data, k)
        layer = http.post(f"{server.url}/api/v1/click", timeout=120, json={
            "nonce": nonce, "x": x, "y": y, "positive": True, "slice": k})
        assert layer.status_code == 200, layer.text
        assert (decode_layer_png(layer.content) > 0).any()
    assert http.post(f"{server.url}/api/v1/submit", json={"nonce": nonce}, timeout=120).ok
    answer = store.answers(store.reader("px3d"))[-1]
    saved = rle.decode(answer.mask_rle)
    image = nib.load(shared_data / CT)
    assert saved.shape == image.shape
    reader_masks = getattr(server.service, "reader_masks", None)
    expect_slices = chosen if reader_masks is not None else [chosen[-1]]  # before per-slice state: the last slice
    assert answer.mask_slices == expect_slices
    assert sorted(np.flatnonzero(saved.any(axis=(0, 1)))) == expect_slices

    out = export_masks(store, tmp_path / "export", ("nifti", "dicom-seg"))["masks"][ct_case]
    nifti = nib.load(out["nifti"])
    assert np.allclose(nifti.affine, image.affine)
    exported = np.asarray(nifti.dataobj)
    assert np.array_equal(exported > 0, saved > 0)
    seg = hd.seg.segread(out["dicom-seg"])
    frames = seg.pixel_array  # (frames, rows, cols), empty frames kept
    assert frames.shape == (image.shape[2], image.shape[1], image.shape[0])
    by_slice = dict(zip(_frame_slices(seg, image.affine), frames))  # each frame's k from its plane position
    assert sorted(by_slice) == list(range(image.shape[2]))
    assert sorted(k for k, frame in by_slice.items() if frame.any()) == expect_slices
    for k in expect_slices:
        assert np.array_equal(by_slice[k] > 0, saved[:, :, k].T > 0)


def _frame_slices(seg, affine: np.ndarray) -> list[int]:
    """The NIfTI k-plane of each SEG frame: its Image Position (Patient) (LPS) through the inverse affine."""
    to_voxel = np.linalg.inv(np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine)
    out = []
    for item in seg.PerFrameFunctionalGroupsSequence:
        position = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        i, j, k = (to_voxel @ np.array([*position, 1.0]))[:3]
        assert abs(i) < 1e-3 and abs(j) < 1e-3  # the plane's first voxel
        out.append(int(round(k)))
    return out


def liver_point(shared_data: Path, k: int) -> tuple[float, float]:
    """The most interior liver pixel of slice ``k`` (TotalSegmentator's reference label 5) in display coordinates."""
    from scipy.ndimage import distance_transform_edt

    from core_model.io.volume import slice_display

    image = nib.load(shared_data / "ct_nifti" / "example_ct_totalseg104_multilabel.nii.gz")
    liver = slice_display(image.affine, 2).forward(np.asarray(image.dataobj)[:, :, k] == 5)
    row, col = np.unravel_index(np.argmax(distance_transform_edt(liver)), liver.shape)
    return col + 0.5, row + 0.5


# ------------------------------------------------------------------------------------------------ uploads
def _upload(server, name: str, data: bytes, tmp_path: Path) -> str:
    """An upload as the Admin import tab makes it (a file in Gradio's upload folder, registered for the login)."""
    from app.admin import gradio_upload_roots, import_uploads

    folder = gradio_upload_roots()[0] / f"px-{tmp_path.name}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(data)
    http = server.login("boss")
    session = server.service.sessions[http.cookies["biascare_session"]]
    server.service.uploads.record(session.token, [str(path)])
    return import_uploads(server.service, session, [str(path)], f"up-{tmp_path.name}")


def test_nifti_and_dicom_zip_uploads_become_volume_cases(server, shared_data, tmp_path):
    from tests.series_helpers import write_ct_series

    report = _upload(server, "example_ct.nii.gz", (shared_data / CT).read_bytes(), tmp_path / "nii")
    assert "✓" in report and "✗" not in report, report
    series = write_ct_series(shared_data / CT, tmp_path / "series")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in series.files:
            archive.write(path, f"study/{path.name}")
    report = _upload(server, "series.zip", buffer.getvalue(), tmp_path / "zip")
    assert "✓" in report and "✗" not in report, report
    cases = server.service.store.cases("up-zip")
    assert len(cases) == 1
    from annotations_db.models import Case
    with server.service.store.read_session() as s:
        row = s.get(Case, cases[0].id)
        assert (row.width, row.height, row.depth) == (122, 101, 112)


def test_the_dcm_slices_of_one_series_uploaded_together_become_one_volume_case(server, shared_data, tmp_path):
    """Several .dcm files of one CT series chosen at once in the import tab: one volume case, not 112 images."""
    from app.admin import gradio_upload_roots, import_uploads
    from tests.series_helpers import write_ct_series

    series = write_ct_series(shared_data / CT, tmp_path / "series", seed=3)
    folder = gradio_upload_roots()[0] / f"px-{tmp_path.name}-dcm"
    folder.mkdir(parents=True, exist_ok=True)
    uploads = [Path(shutil.copy(path, folder / path.name)) for path in series.files]
    http = server.login("boss")
    session = server.service.sessions[http.cookies["biascare_session"]]
    server.service.uploads.record(session.token, [str(p) for p in uploads])
    report = import_uploads(server.service, session, [str(p) for p in uploads], "up-dcm-slices")
    assert "✓" in report and "✗" not in report, report
    cases = server.service.store.cases("up-dcm-slices")
    assert len(cases) == 1
    volume = server.service.case_volume(cases[0].id)
    assert volume.shape == (122, 101, 112) and np.array_equal(volume.data, series.voxels)


@pytest.mark.parametrize("name, make, cause", [
    ("notes.zip", lambda d: _zip({"readme.txt": b"no images here"}), "no DICOM"),
    ("evil.zip", lambda d: _zip({"../../escape.dcm": (d / "cxr_dicom" / "gdcm_CR-MONO1-10-chest.dcm").read_bytes()}),
     "outside"),
    ("cut.nii.gz", lambda d: (d / CT).read_bytes()[:200_000], "truncated"),
    ("mixed.zip", lambda d: _zip({"a.dcm": (d / "cxr_dicom" / "gdcm_CR-MONO1-10-chest.dcm").read_bytes(),
                                  "b.dcm": (d / "cxr_dicom" / "nihcxr14_gcp_DX_secondarycapture_implicitVR.dcm")
                                  .read_bytes()}), "series"),
])
def test_bad_volume_uploads_name_the_file_and_the_cause(server, shared_data, tmp_path, name, make, cause):
    report = _upload(server, name, make(shared_data), tmp_path / name.replace(".", "-"))
    assert f"✗ {name}" in report and cause.lower() in report.lower(), report
    assert not server.service.store.cases(f"up-{name.replace('.', '-')}"), report
    http = server.login("px")  # the app keeps serving
    assert http.get(f"{server.url}/api/v1/me", timeout=30).status_code == 200


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------------ checklist
def test_a_ct_case_shows_the_ct_structure_checklist_and_a_cxr_keeps_cxr_lt_26(server, shared_data, ct_case,
                                                                              tmp_path):
    from app.panels import answer_panel
    from core_model.classes import CT_STRUCTURES, CXR_LT_26

    store = server.service.store
    store.create_reader("pxlist", PASSWORD, role="reader")
    server.credentials["pxlist"] = PASSWORD
    http = server.login("pxlist")
    view = _open(server, http, ct_case)
    session = server.service.sessions[http.cookies["biascare_session"]]
    panel = answer_panel(server.service, session.view)
    assert 'data-label-set="ct-structures"' in panel and 'data-class="Liver"' in panel
    assert 'data-class="Cardiomegaly"' not in panel and panel.count('class="bc-label"') == len(CT_STRUCTURES)
    refused = http.post(f"{server.url}/api/v1/answer", json={"nonce": view["nonce"], "positives": ["Cardiomegaly"]},
                        timeout=30)
    assert refused.status_code == 400 and "Cardiomegaly" in refused.json()["error"]
    ok = http.post(f"{server.url}/api/v1/answer", json={"nonce": view["nonce"], "positives": ["Liver"]}, timeout=30)
    assert ok.status_code == 200 and ok.json()["positives"] == ["Liver"]
    assert http.post(f"{server.url}/api/v1/submit", json={"nonce": view["nonce"]}, timeout=120).ok
    answer = store.answers(store.reader("pxlist"))[-1]
    assert answer.labels["Liver"] == 1 and set(answer.labels) == set(CT_STRUCTURES)

    flat = _import(server, [shared_data / "cxr_dicom" /
                            "siim_nihcxr14_CR_chest_PA_header_set_MONOCHROME1_MODIFIED.dcm"], tmp_path / "cxr", "px-cxr")[0]
    _open(server, http, flat)
    panel = answer_panel(server.service, session.view)
    assert 'data-label-set="cxr-lt-26"' in panel and panel.count('class="bc-label"') == len(CXR_LT_26)


def test_a_study_read_answers_with_its_studys_label_set(server, ct_case):
    """A reader study of the CT, created in Admin, takes the CT structure set (from its cases' kind; radiographs and
    volumes in one study are refused): its read shows and takes that set (what the study's answers are checked
    against)."""
    from app import admin
    from app.panels import answer_panel
    from app.service import AppError

    store = server.service.store
    store.create_reader("pxstudy", PASSWORD, role="reader")
    store.create_reader("pxadmin", PASSWORD, role="admin")
    server.credentials["pxstudy"] = PASSWORD
    boss = server.service.login("pxadmin", PASSWORD)
    radiograph = next(c.pseudo_id for c in store.cases() if store.case_info(c).depth is None)
    with pytest.raises(AppError, match="mix radiographs and CT/MR volumes"):
        admin.create_study(server.service, boss, "mixed", [ct_case, radiograph], ["pxstudy"], ["ai_aided"],
                           "sequential", 1, 0, False, rating_max=0)
    message = admin.create_study(server.service, boss, "ct-structures-study", [ct_case], ["pxstudy"], ["ai_aided"],
                                 "sequential", 1, 0, False, rating_max=0)
    assert "checklist ct-structures" in message, message
    http = server.login("pxstudy")
    opened = http.post(f"{server.url}/api/v1/open", json={"study": "next"}, timeout=300)
    assert opened.status_code == 200, opened.text
    view = opened.json()["view"]
    panel = answer_panel(server.service, server.service.sessions[http.cookies["biascare_session"]].view)
    assert 'data-label-set="ct-structures"' in panel
    ok = http.post(f"{server.url}/api/v1/answer", json={"nonce": view["nonce"], "positives": ["Kidney"]}, timeout=30)
    assert ok.status_code == 200, ok.text
    assert http.post(f"{server.url}/api/v1/submit", json={"nonce": view["nonce"]}, timeout=120).ok
    assert store.answers(store.reader("pxstudy"))[-1].labels["Kidney"] == 1
