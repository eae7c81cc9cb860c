"""Several labelled objects per answer (issue #16): the label sets and their codes, the event replay per (object,
slice), the store round trip (real SQLite file and PostgreSQL), the exports of a real CT with two objects, and — in a
real browser (Debian's Chromium via Playwright) against the live server — two objects drawn on a real chest
radiograph DICOM (right lung by a click, heart by a box), saved, exported as a two-segment DICOM-SEG read back with
highdicom and a two-label NIfTI.
"""
from __future__ import annotations

import json
import shutil
from datetime import datetime, timedelta
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from annotations_db import events as event_log
from annotations_db import export
from annotations_db.errors import InvalidEvent
from annotations_db.events import EventRecord
from annotations_db.store import ObjectMask, Store
from core_model.objects import CT_OBJECTS, CXR_OBJECTS, LOCAL_SCHEME, object_set_for

CT = "ct_nifti/example_ct.nii.gz"
CT_LABELS = "ct_nifti/example_ct_totalseg104_multilabel.nii.gz"
LIVER, SPLEEN = 5, 1  # TotalSegmentator v1 label values (label_map_totalseg_v1.json)
RIGHT_LUNG = {"id": 1, "label": "Right lung"}
HEART = {"id": 2, "label": "Heart / cardiomediastinum"}


# ---------------------------------------------------------------------------------------------- label sets
def test_viewer_objects_label_sets_carry_pydicom_codes_or_a_marked_local_scheme() -> None:
    from pydicom.sr.codedict import codes

    right, left, heart = (CXR_OBJECTS.get(n) for n in ("Right lung", "Left lung", "Heart / cardiomediastinum"))
    assert (right.type.value, right.type.scheme, right.modifier.value) == (codes.SCT.Lung.value, "SCT",
                                                                          codes.SCT.Right.value)
    assert left.modifier.value == codes.SCT.Left.value and heart.type.value == codes.SCT.Heart.value
    assert "Normal" not in CXR_OBJECTS.names and len(CXR_OBJECTS.labels) == 3 + 25  # + the CXR-LT 26 but Normal
    assert CT_OBJECTS.get("Liver").type.value == codes.SCT.Liver.value and object_set_for(True) is CT_OBJECTS
    from pydicom.sr._concepts_dict import concepts  # pydicom's SNOMED CT table: {keyword: {value: (meaning, cids)}}
    snomed = {value for values in concepts["SCT"].values() for value in values}
    for label in CXR_OBJECTS.labels + CT_OBJECTS.labels:  # every code is pydicom's, or local and marked so
        assert label.type.scheme in ("SCT", LOCAL_SCHEME) and len(label.type.value) <= 16
        if label.type.scheme == "SCT":
            assert label.type.value in snomed, label
    assert CXR_OBJECTS.get("Atelectasis").type.local and len({l.colour for l in CXR_OBJECTS.labels[:12]}) == 12
    with pytest.raises(ValueError, match="unknown object label 'Spleen'"):
        CXR_OBJECTS.get("Spleen")


# ---------------------------------------------------------------------------------------------- events
def _records(*events: tuple[str, dict]) -> list[EventRecord]:
    start = datetime(2026, 12, 2, 9, 0, 0)
    return [EventRecord(i + 1, kind, event_log.validate(kind, payload), start + timedelta(seconds=i), i * 10**9, "c")
            for i, (kind, payload) in enumerate(events)]


def test_viewer_objects_replay_keeps_each_objects_actions_undo_and_reset_apart() -> None:
    state = event_log.replay(_records(
        ("case_shown", {}), ("click", {"x": 10, "y": 10, "positive": True}),  # the default object (old events)
        ("click", {"x": 20, "y": 20, "positive": True, "object": RIGHT_LUNG}),
        ("box", {"x0": 1, "y0": 1, "x1": 9, "y1": 9, "object": HEART}),
        ("click", {"x": 21, "y": 21, "positive": False, "object": {"id": 1}}),
        ("undo", {"object": {"id": 2}}),  # the heart's box taken back: the right lung's clicks stay
        ("click", {"x": 5, "y": 5, "positive": True, "object": HEART}),
        ("reset", {"object": {"id": 1}})))  # the right lung cleared: the default object's click stays
    assert [c.x for c in state.slice_state(None).prompt().clicks] == [10.0] and state.clicks[0].x == 10.0
    assert state.slice_state(None, 1).actions == [] and not state.objects[1].acted
    assert [c.x for c in state.slice_state(None, 2).prompt().clicks] == [5.0]
    assert state.slice_state(None, 2).prompt().box is None
    assert state.object_label(1) == "Right lung" and state.object_label(2) == "Heart / cardiomediastinum"
    assert state.kept_objects() == [0, 2]  # the right lung has nothing left, the default object was acted on
    removed = event_log.replay(_records(("case_shown", {}), ("click", {"x": 5, "y": 5, "positive": True,
                                                                       "object": HEART}),
                                        ("object_removed", {"object": {"id": 0}})))
    assert removed.kept_objects() == [2] and removed.slices == {}
    edits = event_log.slice_edits(_records(("case_shown", {}), ("box", {"x0": 1, "y0": 2, "x1": 30, "y1": 40,
                                                                        "object": HEART})), 2)
    assert edits[None]["box"] == [1.0, 2.0, 30.0, 40.0] and event_log.slice_edits(_records(("case_shown", {}))) == {}


def test_viewer_objects_old_logs_replay_as_one_default_object_per_slice() -> None:
    state = event_log.replay(_records(
        ("case_shown", {"slice": 50}), ("click", {"x": 1, "y": 1, "positive": True}),
        ("slice_shown", {"slice": 52, "previous": 50}), ("accept", {}),
        ("click", {"x": 3, "y": 3, "positive": True, "slice": 60, "object": {"id": 4, "label": "Liver"}})))
    assert list(state.objects) == [0, 4] and state.objects[0].label is None
    assert state.acted_slices() == [50, 52] and state.acted_slices(4) == [60]
    assert state.kept_objects() == [0, 4] and not state.accepted_as_is
    alone = event_log.replay(_records(("case_shown", {})))
    assert alone.kept_objects() == [0]  # one default object: the AI's mask on screen is the answer, as before


@pytest.mark.parametrize("payload, cause", [
    ({"x": 1, "y": 1, "positive": True, "object": 3}, r"must be \{id, label\?\}"),
    ({"x": 1, "y": 1, "positive": True, "object": {"id": -1}}, "integer 'id'"),
    ({"x": 1, "y": 1, "positive": True, "object": {"id": 0, "label": "Heart"}}, r"default \(unlabelled\)"),
    ({"x": 1, "y": 1, "positive": True, "object": {"id": 2, "label": ""}}, r"text of 1\.\.128"),
])
def test_viewer_objects_bad_object_fields_are_refused_naming_the_cause(payload: dict, cause: str) -> None:
    with pytest.raises(InvalidEvent, match=cause):
        event_log.validate("click", payload)
    with pytest.raises(InvalidEvent, match="object_removed needs 'object'"):
        event_log.validate("object_removed", {})


def segment_frames(seg, number: int, affine: np.ndarray | None = None) -> np.ndarray:
    """The frames (n, rows, columns) of segment ``number`` of a BINARY SEG: in frame order, or with the NIfTI
    ``affine`` of its planes in k order (each frame's k from its Image Position (Patient))."""
    groups = seg.PerFrameFunctionalGroupsSequence
    numbers = np.array([int(f.SegmentIdentificationSequence[0].ReferencedSegmentNumber) for f in groups])
    frames = np.asarray(seg.pixel_array).reshape(len(numbers), int(seg.Rows), int(seg.Columns))[numbers == number]
    if affine is None:
        return frames
    to_voxel = np.linalg.inv(np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine)  # LPS mm → (i, j, k)
    ks = [round((to_voxel @ [*map(float, f.PlanePositionSequence[0].ImagePositionPatient), 1.0])[2])
          for f, n in zip(groups, numbers) if n == number]
    return frames[np.argsort(ks)]


# ---------------------------------------------------------------------------------------------- store
def _ct_store(url: str, shared_data: Path, tmp_path: Path) -> tuple[Store, object, object]:
    from annotations_db.importers import import_nifti

    source = tmp_path / "ct"
    source.mkdir()
    shutil.copy(shared_data / CT, source / "example_ct.nii.gz")
    store = Store.open(url)
    import_nifti(store, source, "objects-ct", with_masks=False)
    return store, store.cases("objects-ct")[0], store.create_reader("obj-reader", "pw-objects")


def _ct_objects(shared_data: Path) -> dict[str, tuple[np.ndarray, list[int]]]:
    labels = np.asarray(nib.load(shared_data / CT_LABELS).dataobj)
    out = {}
    for name, value in (("Liver", LIVER), ("Spleen", SPLEEN)):
        mask = (labels == value).astype(np.uint8)
        out[name] = (mask, [int(k) for k in np.flatnonzero(mask.any(axis=(0, 1)))])
    return out


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_viewer_objects_store_round_trip_keeps_each_objects_label_and_mask(backend: str, shared_data: Path,
                                                                          tmp_path: Path) -> None:
    if backend == "postgresql":
        from tests.db_helpers import postgres_server
        url = postgres_server().create_database()
    else:
        url = f"sqlite:///{tmp_path / 'objects.sqlite'}"
    store, case, reader = _ct_store(url, shared_data, tmp_path)
    try:
        masks = _ct_objects(shared_data)
        objects = [ObjectMask(i, name, mask, mask_slices=slices)
                   for i, (name, (mask, slices)) in enumerate(masks.items(), start=1)]
        answer = store.save_annotation(case, reader, {}, objects=objects, label_set="ct-structures")
        saved = store.answer_objects(answer)
        assert [(o.object_id, o.label, o.mask_slices) for o in saved] == \
            [(1, "Liver", masks["Liver"][1]), (2, "Spleen", masks["Spleen"][1])]
        from annotations_db import rle
        assert all(np.array_equal(rle.decode(o.mask_rle), masks[o.label][0]) for o in saved)
        annotation = store.answers(reader)[-1]
        assert np.array_equal(rle.decode(annotation.mask_rle), masks["Liver"][0])  # the one-mask readers read on
        with pytest.raises(ValueError, match="unknown object label 'Right lung'"):
            store.save_annotation(case, reader, {}, label_set="ct-structures",
                                  objects=[ObjectMask(1, "Right lung", masks["Liver"][0], mask_slices=[60])])
        with pytest.raises(ValueError, match="distinct ids"):
            store.save_annotation(case, reader, {}, label_set="ct-structures",
                                  objects=[ObjectMask(1, "Liver", masks["Liver"][0], mask_slices=[60])] * 2)
    finally:
        store.close()


def test_viewer_objects_ct_exports_two_segments_two_labels_and_one_manifest_entry_per_object(
        shared_data: Path, tmp_path: Path) -> None:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    store, case, reader = _ct_store(f"sqlite:///{tmp_path / 'objects.sqlite'}", shared_data, tmp_path)
    try:
        masks = _ct_objects(shared_data)
        store.save_annotation(case, reader, {}, label_set="ct-structures", objects=[
            ObjectMask(i, name, mask, mask_slices=slices) for i, (name, (mask, slices)) in enumerate(masks.items(), 1)])
        files = export.export_masks(store, tmp_path / "out", formats=("nifti", "dicom-seg"))["masks"][case.pseudo_id]
        seg = hd.seg.segread(files["dicom-seg"])
        described = {d.segment_number: (d.segment_label, d.segmented_property_type.value) for d in seg.SegmentSequence}
        assert described == {1: ("Liver", codes.SCT.Liver.value), 2: ("Spleen", codes.SCT.Spleen.value)}
        for number, name in ((1, "Liver"), (2, "Spleen")):  # frame k of a segment = its mask[:, :, k].T
            frames = segment_frames(seg, number, nib.load(shared_data / CT).affine)
            assert np.array_equal(np.transpose(frames, (2, 1, 0)), masks[name][0])
        label_map = np.asarray(nib.load(files["nifti"]).dataobj)
        table = json.loads(Path(files["labels"]).read_text())
        assert [(e["value"], e["label"], e["type"]["value"]) for e in table["labels"]] == \
            [(1, "Liver", codes.SCT.Liver.value), (2, "Spleen", codes.SCT.Spleen.value)]
        assert np.array_equal(label_map == 1, masks["Liver"][0] > 0) and np.array_equal(label_map == 2,
                                                                                          masks["Spleen"][0] > 0)
        manifest = json.loads(export.export_training(store, tmp_path / "train", formats=("nifti",)).read_text())
        items = [i for i in manifest["items"] if i["case_id"] == case.pseudo_id]
        assert [i["object"]["label"] for i in items] == ["Liver", "Spleen"]
        for item in items:  # each entry: its own binary mask, what training reads
            binary = np.asarray(nib.load(tmp_path / "train" / item["mask"]).dataobj)
            assert np.array_equal(binary > 0, masks[item["object"]["label"]][0] > 0)
    finally:
        store.close()


# ---------------------------------------------------------------------------------------------- in the browser
CXR_DICOM = "cxr_dicom/siim_nihcxr14_CR_chest_PA_jpegbaseline.dcm"  # 1024² PA chest radiograph (NIH / SIIM)


@pytest.fixture(scope="module")
def server(tmp_path_factory, shared_data):
    from annotations_db.importers import import_dicom
    from app.testing import LiveServer

    live = LiveServer.start(tmp_path_factory.mktemp("viewer-objects") / "data", readers=("objects",))
    source = tmp_path_factory.mktemp("objects-dicom")
    shutil.copy(shared_data / CXR_DICOM, source / Path(CXR_DICOM).name)
    import_dicom(live.service.store, source, "objects-dicom")
    yield live
    live.stop()


def _server_layer(page, url: str, object_id: int = 0) -> np.ndarray:
    from app.render import decode_layer_png

    nonce = page.get_attribute(".bc-answer[data-nonce]", "data-nonce")
    response = page.request.get(f"{url}/api/v1/view/{nonce}/layer.png?object={object_id}")
    assert response.status == 200, response.text()
    return decode_layer_png(response.body()) > 0


def _client(page, x: float, y: float) -> tuple[float, float]:
    point = page.evaluate("([x, y]) => window.__bcViewer.imageToClient(x, y)", [x, y])
    return point["x"], point["y"]


def _new_object(page, label: str, expected_id: int) -> None:
    """Pick the label beside the image and press New object: the object list's active row is the new object."""
    page.select_option("#bc-object-label", label)
    page.click("#bc-new-object")
    page.wait_for_selector(f"#bc-objects[data-active='{expected_id}'] .bc-object.bc-active[data-label='{label}']")


def _right_lung_point(ai_mask: np.ndarray) -> tuple[int, int]:
    """A point deep inside the AI's lung mask on the image's left half (the patient's right lung)."""
    from scipy import ndimage

    left = ai_mask.copy()
    left[:, ai_mask.shape[1] // 2:] = False
    inside = ndimage.binary_erosion(left, iterations=25)
    ys, xs = np.nonzero(inside)
    order = np.argsort(np.hypot(xs - xs.mean(), ys - ys.mean()))
    return int(xs[order[0]]), int(ys[order[0]])


@pytest.mark.browser
def test_viewer_objects_two_labelled_objects_drawn_saved_and_exported_as_two_segments(server, browser, tmp_path,
                                                                                      artifacts_dir):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from annotations_db import rle
    from app.render import DisplayGeometry
    from tests.browser_helpers import sign_in, submit, wait_case_open, wait_stats

    store = server.service.store
    case = store.cases("objects-dicom")[0]
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    sign_in(page, server.url, "objects")
    opened = page.request.post(f"{server.url}/api/v1/open", data={"case": case.pseudo_id})
    assert opened.ok, opened.text()
    page.reload()  # the page shows the case this reader has open
    wait_case_open(page)
    wait_stats(page, "layer", 1)
    ai = _server_layer(page, server.url)
    assert ai.sum() > 20_000, "the AI proposes the lungs (the default object)"
    px, py = _right_lung_point(ai)

    _new_object(page, "Right lung", 1)  # the next click starts a fresh mask: it does not refine the AI's lungs
    page.mouse.click(*_client(page, px + 0.5, py + 0.5))
    wait_stats(page, "click", 1)
    right = _server_layer(page, server.url, 1)
    width = right.shape[1]
    assert right[py, px] and right.sum() > 10_000 and right[:, int(width * 0.55):].sum() < 0.02 * right.sum()

    _new_object(page, "Heart / cardiomediastinum", 2)
    box = (int(width * 0.40), int(width * 0.48), int(width * 0.70), int(width * 0.80))
    page.locator("#bc-stage").focus()
    page.keyboard.press("b")
    page.mouse.move(*_client(page, box[0], box[1]))
    page.mouse.down()
    page.mouse.move(*_client(page, box[2], box[3]), steps=6)
    page.mouse.up()
    wait_stats(page, "box", 1)
    heart = _server_layer(page, server.url, 2)
    rows, cols = np.nonzero(heart)
    assert heart.sum() > 3_000 and rows.min() >= box[1] - 1 and rows.max() <= box[3] + 1
    assert cols.min() >= box[0] - 1 and cols.max() <= box[2] + 1
    assert np.array_equal(_server_layer(page, server.url, 1), right), "the box started the heart, not the lung"
    page.screenshot(path=str(artifacts_dir / "viewer-objects-right-lung-and-heart.png"))

    # per-object undo: the right lung's click taken back, the heart untouched; the same click brings it back
    page.locator(".bc-object[data-object='1']").click()
    page.wait_for_selector("#bc-objects[data-active='1']")
    page.locator("#bc-stage").focus()
    page.keyboard.press("u")
    wait_stats(page, "undo", 1)
    assert not _server_layer(page, server.url, 1).any()
    assert np.array_equal(_server_layer(page, server.url, 2), heart)
    page.keyboard.press("p")
    page.mouse.click(*_client(page, px + 0.5, py + 0.5))
    wait_stats(page, "click", 2)
    assert np.array_equal(_server_layer(page, server.url, 1), right)

    nonce, api = page.get_attribute(".bc-answer[data-nonce]", "data-nonce"), f"{server.url}/api/v1"
    for route, body, cause in [  # bad objects are refused with 400 and the cause, before any model pass
            ("click", {"x": 9, "y": 9, "positive": True, "object": {"id": 3, "label": "Spleen"}}, "unknown object"),
            ("click", {"x": 9, "y": 9, "positive": True, "object": {"id": 0, "label": "Left lung"}}, "default"),
            ("click", {"x": 9, "y": 9, "positive": True, "object": {"id": 1, "label": "Left lung"}}, "new label"),
            ("box", {"x0": 9, "y0": 9, "x1": 90, "y1": 90, "object": {"id": 7}}, "give its label"),
            ("remove_object", {"object": {"id": 9}}, "no object 9")]:
        refused = page.request.post(f"{api}/{route}", data={"nonce": nonce, **body})
        assert refused.status == 400 and cause in refused.json()["error"], (route, refused.text())

    page.reload()  # the objects come back from the events: the list and each object's mask
    wait_case_open(page)
    page.wait_for_selector("#bc-objects[data-count='3'] .bc-object[data-label='Heart / cardiomediastinum']")
    assert np.array_equal(_server_layer(page, server.url, 1), right)
    assert np.array_equal(_server_layer(page, server.url, 2), heart)
    submit(page)
    assert not errors, errors
    context.close()

    answer = store.answers(store.reader("objects"))[-1]
    saved = {o.label: rle.decode(o.mask_rle).astype(bool) for o in store.answer_objects(answer.id)}
    assert list(saved) == ["Right lung", "Heart / cardiomediastinum"]  # the AI's untouched lungs are not kept
    g = DisplayGeometry.for_shape(*saved["Right lung"].shape)
    ox, oy = (round(v) for v in g.display_to_original(px + 0.5, py + 0.5))
    assert saved["Right lung"][oy, ox]

    files = export.export_masks(store, tmp_path / "export", formats=("dicom-seg", "nifti", "png", "coco"),
                                require_any=True)
    written = files["masks"][case.pseudo_id]
    seg = hd.seg.segread(written["dicom-seg"])
    segments = {d.segment_number: d for d in seg.SegmentSequence}
    assert [segments[n].segment_label for n in (1, 2)] == ["Right lung", "Heart / cardiomediastinum"]
    lung_type = segments[1].SegmentedPropertyTypeCodeSequence[0]
    assert lung_type.CodeValue == codes.SCT.Lung.value
    assert lung_type.SegmentedPropertyTypeModifierCodeSequence[0].CodeValue == codes.SCT.Right.value
    assert segments[2].segmented_property_type.value == codes.SCT.Heart.value
    for number, label in ((1, "Right lung"), (2, "Heart / cardiomediastinum")):
        assert np.array_equal(segment_frames(seg, number)[0] > 0, saved[label])
    label_map = np.asarray(nib.load(written["nifti"]).dataobj)[:, :, 0].T  # (columns, rows, 1) → rows × columns
    table = json.loads(Path(written["labels"]).read_text())["labels"]
    assert [(e["value"], e["label"]) for e in table] == [(1, "Right lung"), (2, "Heart / cardiomediastinum")]
    assert np.array_equal(label_map == 2, saved["Heart / cardiomediastinum"])
    assert np.array_equal(label_map == 1, saved["Right lung"] & ~saved["Heart / cardiomediastinum"])
    coco = json.loads(Path(files["coco"]).read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    assert sorted(names[a["category_id"]] for a in coco["annotations"]
                  if a["image_id"] == next(i["id"] for i in coco["images"]
                                           if i["file_name"].startswith(case.pseudo_id))) == \
        ["Heart / cardiomediastinum", "Right lung"]
    assert all(Path(written["objects"][k]["png"]).is_file() for k in ("1", "2"))
