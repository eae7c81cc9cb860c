"""Mask editing on the server, without a browser: the event vocabulary of the tools (validation, per-slice replay,
undo per action kind), the pure mask operations, and the composition rule of :mod:`app.case_masks` through the app's
service layer on a real 2000×2000 chest X-ray (../shared/data/cxr_lungs), the real checkpoint and a real SQLite file
— including a simulated restart (a new service on the same database) that must restore the same masks.
"""
from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone

import numpy as np
import pytest

from annotations_db import events as event_log
from annotations_db.errors import InvalidEvent
from app.render import decode_layer_png
from core_model import mask_ops

PASSWORD = "correct horse battery"
CXR = "00870a9c.jpg"  # 2000×2000, shown on a 1024² display grid


# ----------------------------------------------------------------------------------------------- events
def _records(*items: tuple[str, dict]) -> list[event_log.EventRecord]:
    now = datetime.now(timezone.utc)
    return [event_log.EventRecord(i + 1, kind, event_log.validate(kind, payload), now, i * 1_000_000, "c")
            for i, (kind, payload) in enumerate(items)]


@pytest.mark.parametrize("kind, payload, cause", [
    ("box", {"x0": 1, "y0": 2, "x1": "a", "y1": 3}, "x1"),
    ("box", {"x0": 1, "y0": 2, "x1": float("nan"), "y1": 3}, "finite"),
    ("stroke", {"points": [], "radius": 3, "erase": False}, "points"),
    ("stroke", {"points": [[0, 0]] * 2001, "radius": 3, "erase": False}, "2000"),
    ("stroke", {"points": [[0, 0, 1]], "radius": 3, "erase": False}, "pairs"),
    ("stroke", {"points": [[0, 0]], "radius": 0.2, "erase": False}, "radius"),
    ("stroke", {"points": [[0, 0]], "radius": 501, "erase": False}, "radius"),
    ("stroke", {"points": [[0, 0]], "radius": 3, "erase": "yes"}, "erase"),
    ("cleanup", {"min_island_px": -1, "fill_holes": True}, "min_island_px"),
    ("cleanup", {"min_island_px": 5, "fill_holes": 1}, "fill_holes"),
    ("carry", {"from": 3, "to": 3}, "different"),
    ("carry", {"from": "a", "to": 3}, "from"),
    ("click", {"x": 1, "y": 2, "positive": True, "slice": -1}, "slice"),
    ("undo", {"slice": True}, "slice"),
    ("measure", {"x0": 0, "y0": 0, "x1": 1, "y1": None}, "y1"),
])
def test_tool_events_are_validated_with_the_cause(kind, payload, cause):
    with pytest.raises(InvalidEvent, match=cause):
        event_log.validate(kind, payload)


def test_a_box_is_ordered_and_null_slice_means_the_slice_shown():
    body = event_log.validate("box", {"x0": 9, "y0": 8, "x1": 1, "y1": 2, "slice": None})
    assert (body["x0"], body["y0"], body["x1"], body["y1"]) == (1.0, 2.0, 9.0, 8.0) and "slice" not in body


def test_undo_takes_back_the_last_action_of_the_slice_whatever_its_kind():
    stroke = {"points": [[5, 5], [9, 9]], "radius": 2.0, "erase": False}
    steps = [("click", {"x": 1, "y": 1, "positive": True}), ("box", {"x0": 0, "y0": 0, "x1": 20, "y1": 20}),
             ("click", {"x": 4, "y": 4, "positive": False}), ("stroke", stroke),
             ("cleanup", {"min_island_px": 30, "fill_holes": True})]
    state = event_log.replay(_records(("case_shown", {}), *steps))
    slice_state = state.slice_state(None)
    assert [a.kind for a in slice_state.actions] == ["click", "box", "click", "stroke", "cleanup"]
    assert slice_state.prompt().box == (0.0, 0.0, 20.0, 20.0) and len(slice_state.prompt().clicks) == 1
    assert slice_state.cleanup() == (30, True) and slice_state.source == "reader"
    expected = [("stroke", None), ("click", None), ("box", None), ("click", None), (None, None)]
    for undone, (last, cleanup) in enumerate(expected, start=1):
        state = event_log.replay(_records(("case_shown", {}), *steps, *[("undo", {})] * undone))
        slice_state = state.slice_state(None)
        assert (slice_state.actions[-1].kind if slice_state.actions else None) == last
        assert slice_state.cleanup() == cleanup
    assert event_log.replay(_records(("case_shown", {}), ("undo", {}))).slice_state(None).source == "ai"
    reset = event_log.replay(_records(("case_shown", {}), *steps, ("reset", {})))
    assert not reset.slice_state(None).actions and reset.clicks == [] and not reset.acted_slices()


def test_slices_keep_their_actions_and_a_carry_copies_the_prompt_of_the_moment():
    state = event_log.replay(_records(
        ("case_shown", {"slice": 50}), ("click", {"x": 1, "y": 1, "positive": True}),
        ("box", {"x0": 2, "y0": 2, "x1": 30, "y1": 30, "slice": 60}),
        ("slice_shown", {"slice": 70, "previous": 50}), ("click", {"x": 3, "y": 3, "positive": True}),
        ("carry", {"from": 60, "to": 61}), ("click", {"x": 9, "y": 9, "positive": True, "slice": 60}),
        ("undo", {"slice": 50}), ("accept", {"slice": 52}), ("slice_shown", {"slice": 60, "previous": 70})))
    assert state.acted_slices() == [52, 60, 61, 70]  # 50: its only click undone; 52: accepted as it is
    assert state.slice_state(61).prompt() == event_log.Prompt((2.0, 2.0, 30.0, 30.0), (), carried_from=60)
    assert state.slice_state(61).source == "carried" and len(state.slice_state(60).prompt().clicks) == 1
    assert [c.x for c in state.clicks] == [9.0]  # the slice shown (60)


def test_a_log_from_before_slices_replays_as_before():
    """Old logs: no ``slice`` on actions and none on case_shown; slice_shown used to clear the clicks."""
    events = _records(("case_shown", {}), ("click", {"x": 1, "y": 1, "positive": True}),
                      ("slice_shown", {"slice": 70, "previous": 50}), ("click", {"x": 2, "y": 2, "positive": True}),
                      ("click", {"x": 3, "y": 3, "positive": False}), ("undo", {"clicks": 1}))
    assert [(c["x"], c["positive"]) for c in event_log.effective_clicks(events)] == [(2.0, True)]
    state = event_log.replay(events)
    assert [c.x for c in state.slice_state(50).prompt().clicks] == [1.0]  # the middle slice's click, kept there
    assert None not in state.slices
    flat = _records(("case_shown", {}), ("click", {"x": 1, "y": 1, "positive": True}), ("accept", {"clicks": 1}))
    assert event_log.replay(flat).accepted and not event_log.replay(flat).accepted_as_is


def test_slice_edits_list_what_the_reader_did_per_slice():
    edits = event_log.slice_edits(_records(
        ("case_shown", {"slice": 4}), ("box", {"x0": 1, "y0": 1, "x1": 9, "y1": 9}),
        ("stroke", {"points": [[2, 2]], "radius": 1.5, "erase": True}), ("carry", {"from": 4, "to": 5})))
    assert set(edits) == {4, 5}
    assert edits[4]["box"] == [1.0, 1.0, 9.0, 9.0] and edits[4]["edits"] == [
        {"kind": "eraser", "points": [[2.0, 2.0]], "radius": 1.5}]
    assert edits[5]["carried_from"] == 4 and edits[5]["edits"] == []


# ----------------------------------------------------------------------------------------------- mask ops
def test_a_stroke_is_a_chain_of_discs_on_pixel_centres():
    disc = mask_ops.stroke_mask((21, 21), [[10, 10]], 3.0)
    rows, cols = np.nonzero(disc)
    assert disc.sum() == 29 and ((rows - 10) ** 2 + (cols - 10) ** 2 <= 9).all()
    line = mask_ops.stroke_mask((21, 21), [[2, 10], [18, 10]], 1.0)
    assert line[10, 2:19].all() and line[9, 2:19].all() and not line[8].any() and not line[10, 0]
    points, radius = mask_ops.scale_stroke([[1.5, 3.5]], 4.0, 2.0, 2.0)
    assert points == [(0.5, 1.5)] and radius == 2.0


def test_cleanup_drops_small_islands_and_fills_holes_but_keeps_what_the_reader_drew():
    mask = np.zeros((40, 40), bool)
    mask[5:25, 5:25] = True
    mask[10:13, 10:13] = False  # a hole
    mask[30, 30] = mask[35, 35] = True  # two one-pixel islands
    painted = np.zeros_like(mask)
    painted[35, 35] = True
    erased = np.zeros_like(mask)
    erased[11, 11] = True
    cleaned = mask_ops.clean(mask, 5, True)
    assert cleaned[11, 11] and not cleaned[30, 30] and not cleaned[35, 35]
    kept = mask_ops.clean(mask, 5, True, painted, erased)
    assert kept[35, 35] and not kept[30, 30] and not kept[11, 11]


# ----------------------------------------------------------------------------------------------- the service
@pytest.fixture(scope="module")
def world(tmp_path_factory, shared_data):
    """A real SQLite store with one real 2000² CXR and the app's service on it (no background thread)."""
    from annotations_db.importers import import_images
    from annotations_db.store import Store
    from app.service import AppService
    from app.testing import shared_embedding_dir, shared_model

    root = tmp_path_factory.mktemp("case-masks")
    (root / "images").mkdir()
    shutil.copy(shared_data / "cxr_lungs" / "images" / CXR, root / "images" / CXR)
    url = f"sqlite:///{root / 'annotations.sqlite'}"
    store = Store.open(url)
    import_images(store, root / "images", "cxr", progress=False)
    case = store.cases("cxr")[0].pseudo_id
    store.create_reader("ada", PASSWORD, role="reader")

    def service() -> AppService:
        return AppService(Store.open(url), shared_model(), root / "data", background=False,
                          embedding_dir=shared_embedding_dir())

    first = service()
    yield {"service": first, "new_service": service, "case": case, "root": root, "store": store}
    first.close()


def _layer(result) -> np.ndarray:
    return decode_layer_png(result.png) > 0


def test_tools_compose_undo_and_replay_after_a_restart(world):
    service = world["service"]
    session = service.login("ada", PASSWORD)
    view = service.open_case(session, world["case"])
    nonce, g = view.nonce, view.image.geometry
    assert (g.disp_width, g.disp_height) == (1024, 1024)
    initial = _layer(service.current_layer(session, nonce))

    # a box prompt gives a mask inside the box (a few px of the model's grid at the edges)
    boxed = service.box(session, nonce, 200, 250, 480, 800)
    inside = _layer(boxed)
    assert inside.sum() > 1000 and not inside[:240, :].any() and not inside[:, 500:].any()
    assert boxed.prompts["box"] == pytest.approx([200, 250, 480, 800], abs=0.01) and boxed.prompts["clicks"] == []
    clicked = service.click(session, nonce, 300, 500, True)
    assert clicked.prompts["clicks"] == [[300.0, 500.0, 1]] and clicked.prompts["source"] == "reader"

    # brush adds a disc outside the model's mask, the eraser clears one inside it; both on the original grid too
    brushed = service.stroke(session, nonce, [[800, 200], [820, 210]], 10, False)
    after_brush = _layer(brushed)
    assert after_brush[200, 800] and after_brush[210, 820] and not _layer(clicked)[200, 800]
    erased = service.stroke(session, nonce, [[340, 520]], 12, True)
    after_erase = _layer(erased)
    assert not after_erase[520, 340] and _layer(brushed)[520, 340]
    saved = service.reader_masks(view)[None]
    assert saved.shape == (2000, 2000) and saved[int(200 * g.sy), int(800 * g.sx)]
    assert not saved[int(520 * g.sy), int(340 * g.sx)]
    assert erased.prompts["edits"] == 2

    # a tiny brushed dot survives the cleanup (the reader drew it); a stray island of the model's would not
    dot = _layer(service.stroke(session, nonce, [[950, 950]], 1.5, False))
    cleaned = service.cleanup(session, nonce, 400, True)
    assert dot[950, 950] and _layer(cleaned)[950, 950] and cleaned.prompts["cleanup"] == {
        "min_island_px": 400, "fill_holes": True}

    # undo takes back each action in turn, repainting the layer before it exactly
    layers = [inside, _layer(clicked), after_brush, after_erase, dot]
    for expected in reversed(layers):
        assert np.array_equal(_layer(service.undo(session, nonce)), expected)
    assert np.array_equal(_layer(service.undo(session, nonce)), initial)  # the box undone: the AI's mask
    # rebuild a state to replay: box, click, brush, eraser, cleanup
    service.box(session, nonce, 200, 250, 480, 800)
    service.click(session, nonce, 300, 500, True)
    service.stroke(session, nonce, [[800, 200], [820, 210]], 10, False)
    service.stroke(session, nonce, [[340, 520]], 12, True)
    last = service.cleanup(session, nonce, 50, False)
    before_restart, mask_before = _layer(last), service.reader_masks(view)[None]
    measured = service.measure(session, nonce, 100, 100, 400, 500)
    assert measured["px"] == pytest.approx(500 * 2000 / 1024, rel=1e-6)

    restarted = world["new_service"]()  # a restart: nothing in memory, everything from the events
    try:
        again = restarted.login("ada", PASSWORD)
        restored = restarted.resume(again)
        assert restored is not None and restored.case == world["case"]
        layer = restarted.current_layer(again, restored.nonce)
        assert np.array_equal(_layer(layer), before_restart)
        assert layer.prompts == last.prompts
        assert np.array_equal(restarted.reader_masks(restored)[None], mask_before)
        # the click path continues from the replayed logits: the same as a click before the restart
        assert np.array_equal(_layer(restarted.click(again, restored.nonce, 320, 420, False)),
                              _layer(service.click(session, nonce, 320, 420, False)))
    finally:
        restarted.close()


def test_a_labelled_objects_box_is_answered_by_the_decoder_its_label_calls_for(world):
    """A box for the heart (a label the checkpoint never trained on) is the foundation decoder's answer, the same box
    for the right lung the checkpoint's; after a restart the replay (labels from the events) gives the same masks."""
    service = world["service"]
    session = service.login("ada", PASSWORD)
    view = service.open_case(session, world["case"])
    box = (380, 420, 640, 760)  # display px of the 1024² grid: mid-chest
    heart = _layer(service.box(session, view.nonce, *box, obj={"id": 1, "label": "Heart / cardiomediastinum"}))
    lung = _layer(service.box(session, view.nonce, *box, obj={"id": 2, "label": "Right lung"}))
    assert heart.sum() > 1000 and lung.sum() > 1000 and not np.array_equal(heart, lung)
    before = service.object_masks(view)
    assert {1, 2} <= set(before)
    restarted = world["new_service"]()
    try:
        again = restarted.login("ada", PASSWORD)
        restored = restarted.resume(again)
        after = restarted.object_masks(restored)
        for object_id in (1, 2):
            assert np.array_equal(after[object_id][None], before[object_id][None]), object_id
    finally:
        restarted.close()
    for object_id in (2, 1):
        service.remove_object(session, view.nonce, {"id": object_id})


def test_bad_tool_requests_are_refused_with_the_cause(world):
    from app.service import AppError

    service = world["service"]
    session = service.login("ada", PASSWORD)
    view = service.open_case(session, world["case"])
    nonce = view.nonce
    for call, cause in [
        (lambda: service.box(session, nonce, 10, 10, 11, 300), "smaller"),
        (lambda: service.box(session, nonce, "x", 10, 11, 300), "numbers"),
        (lambda: service.stroke(session, nonce, [], 5, False), "points"),
        (lambda: service.stroke(session, nonce, [[1, 2, 3]], 5, False), "pairs"),
        (lambda: service.stroke(session, nonce, [[1, 2]], 0.01, False), "radius"),
        (lambda: service.stroke(session, nonce, [[1, 2]], 5, "no"), "erase"),
        (lambda: service.cleanup(session, nonce, -3, True), "min_island_px"),
        (lambda: service.carry(session, nonce, 1, 2), "2-D"),
        (lambda: service.click(session, nonce, 5, 5, True, 3), "2-D"),
        (lambda: service.undo(session, nonce, "x"), "2-D"),
    ]:
        with pytest.raises(AppError, match=cause) as refused:
            call()
        assert refused.value.status == 400


def test_the_manifest_lists_the_manual_edits_beside_the_mask(world, tmp_path):
    from annotations_db.export import export_training
    from training.data import manifest_samples

    service = world["service"]
    session = service.login("ada", PASSWORD)
    view = service.open_case(session, world["case"])
    service.reset(session, view.nonce)
    service.box(session, view.nonce, 200, 250, 480, 800)
    service.click(session, view.nonce, 300, 500, True)
    service.stroke(session, view.nonce, [[800, 200], [820, 210]], 10, False)
    service.stroke(session, view.nonce, [[340, 520]], 12, True)
    expected = service.reader_masks(view)[None]
    service.submit(session, view.nonce)
    path = export_training(world["store"], tmp_path / "out", formats=("png",))
    item = next(i for i in json.loads(path.read_text())["items"] if i["case_id"] == world["case"])
    assert [e["kind"] for e in item["edits"]] == ["brush", "eraser"]
    assert item["edits"][0]["radius"] == pytest.approx(10 * 2000 / 1024)
    assert item["box"] == pytest.approx([200 * 2000 / 1024 - 0.5, 250 * 2000 / 1024 - 0.5,
                                         480 * 2000 / 1024 - 0.5, 800 * 2000 / 1024 - 0.5])
    assert len(item["clicks"]) == 1 and item["mask"]
    from PIL import Image
    saved = np.asarray(Image.open(tmp_path / "out" / item["mask"])) > 0
    assert np.array_equal(saved, expected)  # the saved mask is the composed one, edits included
    assert len(manifest_samples(path)) == 1  # the trainer still reads the item (it ignores the edits)


def test_an_edited_mask_is_not_accepted_as_is(world):
    service, store = world["service"], world["store"]
    session = service.login("ada", PASSWORD)
    view = service.open_case(session, world["case"])
    service.reset(session, view.nonce)
    service.stroke(session, view.nonce, [[500, 500]], 20, True)
    service.accept(session, view.nonce)
    service.submit(session, view.nonce)
    view = service.open_case(session, world["case"])
    service.accept(session, view.nonce)
    service.submit(session, view.nonce)
    edited, untouched = store.answers(store.reader("ada"))[-2:]
    assert not edited.accepted_as_is and untouched.accepted_as_is


@pytest.fixture(scope="module")
def ct(world, shared_data):
    """The real CT of ../shared/data/ct_nifti imported into the same store."""
    from annotations_db.importers import import_nifti

    folder = world["root"] / "ct"
    folder.mkdir()
    shutil.copy(shared_data / "ct_nifti" / "example_ct.nii.gz", folder)
    assert len(import_nifti(world["store"], folder, "ct", with_masks=False, progress=False).imported) == 1
    return world["store"].cases("ct")[0].pseudo_id


def test_a_volume_keeps_a_mask_per_slice_carries_prompts_and_replays_them(world, ct):
    service = world["service"]
    session = service.login("ada", PASSWORD)
    view = service.open_case(session, ct)
    nonce, g, middle = view.nonce, view.image.geometry, view.image.slice_index
    w, h = g.disp_width, g.disp_height
    a, b, c = middle, middle + 3, middle + 4
    clicked = service.click(session, nonce, w * 0.3, h * 0.5, True)  # the slice shown
    assert clicked.slice == a and clicked.prompts["clicks"] == [[pytest.approx(w * 0.3, abs=0.01),
                                                                pytest.approx(h * 0.5, abs=0.01), 1]]
    boxed = service.box(session, nonce, w * 0.1, h * 0.2, w * 0.6, h * 0.8, b)  # another slice, named
    assert boxed.slice == b and boxed.prompts["box"] is not None
    carried = service.carry(session, nonce, b, c)
    assert carried.slice == c and carried.prompts["source"] == "carried"
    assert carried.prompts["box"] == boxed.prompts["box"]
    service.stroke(session, nonce, [[w * 0.8, h * 0.2]], 3, False, c)
    looked = service.current_layer(session, nonce, middle + 10)  # only looked at: nothing kept
    assert looked.slice == middle + 10 and looked.prompts["source"] == "ai"
    shown = service.current_layer(session, nonce)
    assert shown.slice == a and np.array_equal(_layer(shown), _layer(clicked)), "the shown slice is untouched"

    masks = service.reader_masks(view)
    assert set(masks) == {a, b, c}
    assert all(m.shape == (g.height, g.width) for m in masks.values())
    assert masks[c][int(0.2 * g.height), int(0.8 * g.width)], "the brush on the carried slice"
    distance = service.measure(session, nonce, 0, 0, w * 0.5, 0, b)
    assert distance["mm"] is not None and distance["mm"] > 0 and distance["slice"] == b
    from app.service import AppError
    with pytest.raises(AppError, match="out of range"):
        service.click(session, nonce, 5, 5, True, 10_000)

    restarted = world["new_service"]()
    try:
        again = restarted.login("ada", PASSWORD)
        restored = restarted.resume(again)
        assert restored.case == ct and restored.image.slice_index == a
        replayed = restarted.reader_masks(restored)
        assert set(replayed) == {a, b, c}
        assert all(np.array_equal(replayed[k], masks[k]) for k in masks)
        layer = restarted.current_layer(again, restored.nonce, c)
        assert layer.prompts == service.current_layer(session, nonce, c).prompts
    finally:
        restarted.close()
    service.undo(session, nonce, c)  # the brush
    service.undo(session, nonce, c)  # the carry
    assert set(service.reader_masks(view)) == {a, b}
