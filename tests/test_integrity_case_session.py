"""An answer lands only on the case the reader sees, and the open case is what its event log says.

Real app servers over HTTP: one in-process server (uvicorn in a thread, real SQLite file, the demo's real chest X-rays)
for the stale-view, reload, study-mode and manifest checks; ``python launch.py app`` child processes SIGKILLed and
started again on the same database for the restart and durability checks. Two "tabs" are two holders of the same
login cookie, each keeping the view nonce its page was given.
"""
from __future__ import annotations

import random
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from annotations_db import events as event_log
from annotations_db.store import Store
from app.service import SESSION_COOKIE
from app.testing import PASSWORD, AppProcess, LiveServer, shared_embedding_dir, shared_model

STATE_CHANGES: dict[str, dict[str, Any]] = {
    "click": {"x": 300.0, "y": 400.0, "positive": True}, "undo": {}, "reset": {}, "accept": {},
    "slice": {"index": 0}, "answer": {"positives": ["Edema"]}, "submit": {}, "skip": {}, "pause": {},
    "event": {"kind": "heartbeat"},
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    live = LiveServer.start(tmp_path_factory.mktemp("case-session") / "data")
    yield live
    live.stop()


def _post(http: requests.Session, url: str, route: str, body: dict[str, Any]) -> requests.Response:
    return http.post(f"{url}/api/v1/{route}", json=body, timeout=120)


def _open(http: requests.Session, url: str, **body: Any) -> dict[str, Any]:
    response = _post(http, url, "open", body)
    assert response.status_code == 200, response.text
    return response.json()["view"]


def _free_cases(server: LiveServer, reader: str, n: int) -> list[str]:
    store = server.service.store
    return [item.case for item in store.worklist(store.reader(reader), status="open")][:n]


def _event_ids(store: Store, reader: str) -> list[int]:
    from sqlalchemy import select

    from annotations_db.models import Event
    with store.read_session() as session:
        return list(session.scalars(select(Event.id).where(Event.reader_id == store.reader(reader).id)))


def _layer(http: requests.Session, url: str, nonce: str) -> bytes:
    response = http.get(f"{url}/api/v1/view/{nonce}/layer.png", timeout=60)
    assert response.status_code == 200, response.text
    return response.content


# ---------------------------------------------------------------------------------------------- stale views
def test_integrity_a_stale_tab_gets_409_on_every_path_and_writes_nothing(server):
    store = server.service.store
    http = server.login("ada")
    case_a, case_b = _free_cases(server, "ada", 2)
    tab1 = _open(http, server.url, case=case_a)
    _post(http, server.url, "answer", {"nonce": tab1["nonce"], "positives": ["Cardiomegaly"]}).raise_for_status()
    tab2 = _open(http, server.url, case=case_b)  # the second tab opens another case: tab 1's page is stale now
    written = _event_ids(store, "ada")

    for route, body in STATE_CHANGES.items():
        for nonce in (tab1["nonce"], None):  # the stale page's nonce, and a request naming no view at all
            response = _post(http, server.url, route, {**body, **({"nonce": nonce} if nonce else {})})
            assert response.status_code == 409, (route, nonce, response.status_code, response.text)
    for part in ("layer.png", "base.png"):
        assert http.get(f"{server.url}/api/v1/view/{tab1['nonce']}/{part}", timeout=30).status_code == 409
    from gradio_client.exceptions import AppError as ClientAppError
    with pytest.raises(ClientAppError):
        server.gradio_client(http).predict(tab1["nonce"], 300.0, 400.0, True, api_name="/click")

    assert _event_ids(store, "ada") == written, "a refused request wrote an event"
    assert not [a for a in store.answers(store.reader("ada")) if a.case_id == store.case(case_b).id]
    me = http.get(f"{server.url}/api/v1/me", timeout=30).json()
    assert me["view"]["nonce"] == tab2["nonce"] and me["view"]["positives"] == [], "case B got case A's ticks"
    assert _post(http, server.url, "click", {**STATE_CHANGES["click"], "nonce": tab2["nonce"]}).status_code == 200
    _post(http, server.url, "pause", {"nonce": tab2["nonce"]}).raise_for_status()


def test_integrity_normal_excludes_findings_and_bad_answers_are_refused(server):
    http = server.login("ben")
    view = _open(http, server.url, case=_free_cases(server, "ben", 1)[0])
    nonce = view["nonce"]
    for body, words in (({"positives": ["Normal", "Edema"]}, "cannot be chosen together"),
                        ({"positives": ["Not a finding"]}, "unknown class"),
                        ({"positives": "Edema"}, "list of class names"),
                        ({"positives": ["Edema"], "ratings": {"Edema": 70}}, "no confidence ratings")):
        response = _post(http, server.url, "answer", {"nonce": nonce, **body})
        assert response.status_code == 400 and words in response.json()["error"], response.text
    assert _post(http, server.url, "answer", {"nonce": nonce, "positives": ["Normal"]}).json()["positives"] == ["Normal"]
    _post(http, server.url, "pause", {"nonce": nonce}).raise_for_status()


# ---------------------------------------------------------------------------------------------- reload / re-login
def test_integrity_reload_and_relogin_restore_the_open_case_exactly(server):
    http = server.login("cy")
    view = _open(http, server.url, case=_free_cases(server, "cy", 1)[0])
    nonce, w, h = view["nonce"], view["display_width"], view["display_height"]
    for fx, fy, positive in ((0.3, 0.45, True), (0.5, 0.9, False), (0.7, 0.45, True)):
        _post(http, server.url, "click", {"nonce": nonce, "x": w * fx, "y": h * fy, "positive": positive}).raise_for_status()
    _post(http, server.url, "undo", {"nonce": nonce}).raise_for_status()
    _post(http, server.url, "click", {"nonce": nonce, "x": w * 0.72, "y": h * 0.5, "positive": True}).raise_for_status()
    _post(http, server.url, "answer", {"nonce": nonce, "positives": ["Edema", "Pleural Effusion"]}).raise_for_status()
    before = _layer(http, server.url, nonce)

    reloaded = _post(http, server.url, "resume", {}).json()["view"]  # the same page reloaded: the same view
    assert reloaded["nonce"] == nonce and reloaded["clicks"] == 3
    assert reloaded["positives"] == ["Edema", "Pleural Effusion"]

    other = server.login("cy")  # a new login (another browser): a new session, the case rebuilt from its events
    restored = _post(other, server.url, "resume", {}).json()["view"]
    assert restored["case"] == view["case"] and restored["nonce"] != nonce
    assert restored["clicks"] == 3 and restored["positives"] == ["Edema", "Pleural Effusion"]
    assert _layer(other, server.url, restored["nonce"]) == before, "the replayed clicks give the same mask"
    _post(other, server.url, "pause", {"nonce": restored["nonce"]}).raise_for_status()


# ---------------------------------------------------------------------------------------------- study mode
def test_integrity_study_mode_refuses_free_navigation(server):
    store = server.service.store
    cases = [c.id for c in store.cases()][:3]
    study_id = store.create_study("protocol", cases, [store.reader("ada").id], arms=("ai_aided", "unaided"),
                                  washout_days=28, seed=5)
    http = server.login("ada")
    client = server.gradio_client(http)
    read = _open(http, server.url, study="next")
    assert read["study"]["position"] == 1 and read["study"]["reads"] == 6 and read["study"]["sessions"] == 2
    nonce = read["nonce"]
    skip = _post(http, server.url, "skip", {"nonce": nonce})
    assert skip.status_code == 409 and "cannot be skipped" in skip.json()["error"]
    other = [c.pseudo_id for c in store.cases() if c.id not in cases][0]
    refused = _post(http, server.url, "open", {"case": other})
    assert refused.status_code == 409 and "reader-study read" in refused.json()["error"]
    table, _ = client.predict("all", "All", 0, 1, api_name="/worklist")
    assert all(not row[3] for row in table["data"]) and all(row[1] in (None, "") for row in table["data"]), \
        "the worklist shows AI output during a study read"
    later = [a for a in store.assignments_for(store.reader("ada"), study_id) if a.order == 2][0]
    from app.service import Conflict
    with pytest.raises(Conflict):
        server.service.open_assignment(server.service.session(http.cookies[SESSION_COOKIE]), later.id)

    _post(http, server.url, "answer", {"nonce": nonce, "positives": ["Edema"], "ratings": {"Edema": 64}}).raise_for_status()
    _post(http, server.url, "pause", {"nonce": nonce}).raise_for_status()
    resumed = _open(http, server.url, study="next")
    assert resumed["case"] == read["case"] and resumed["positives"] == ["Edema"] and resumed["ratings"] == {"Edema": 64}
    missing = _post(http, server.url, "answer", {"nonce": resumed["nonce"], "positives": ["Edema", "Mass"],
                                                 "ratings": {"Edema": 64}})
    missing.raise_for_status()
    refused = _post(http, server.url, "submit", {"nonce": resumed["nonce"]})
    assert refused.status_code == 400 and "Mass" in refused.json()["error"], "a positive finding needs a rating"
    _post(http, server.url, "answer", {"nonce": resumed["nonce"], "positives": ["Edema", "Mass"],
                                       "ratings": {"Edema": 64, "Mass": 20}}).raise_for_status()
    done = _post(http, server.url, "submit", {"nonce": resumed["nonce"]}).json()
    answer = store.answers(store.reader("ada"))[-1]
    assert answer.labels["Mass"] == 1 and answer.confidence["Mass"] == 20 and answer.confidence["Atelectasis"] == 0
    second = http.get(f"{server.url}/api/v1/me", timeout=30).json()["view"]
    assert done["next"] == second["case"] and second["study"]["position"] == 2
    _post(http, server.url, "pause", {"nonce": second["nonce"]}).raise_for_status()


def test_integrity_study_creation_flags_reads_seen_with_ai(server):
    store = server.service.store
    http = server.login("ben")
    seen = _free_cases(server, "ben", 1)[0]
    view = _open(http, server.url, case=seen)  # ben sees this case with the AI outside any study
    _post(http, server.url, "pause", {"nonce": view["nonce"]}).raise_for_status()
    exposure = store.ai_exposure([c.id for c in store.cases()], [store.reader("ben").id])
    assert ("ben", seen) in exposure
    from app import admin
    admin_session = server.service.login("boss", PASSWORD)
    chosen = [seen] + [c.pseudo_id for c in store.cases() if c.pseudo_id != seen][:3]
    message = admin.create_study(server.service, admin_session, "blind", chosen,
                                 ["ben"], ["unaided", "ai_aided"], "crossover", 1, 0, False, exclude_seen=True)
    assert seen in message and "excluded" in message
    study_cases = {a.case for a in store.assignments_for(store.reader("ben"), "blind", include_locked=True)}
    assert seen not in study_cases and len(study_cases) == 3


# ---------------------------------------------------------------------------------------------- manifest ↔ masks
def test_integrity_training_manifest_clicks_replay_to_the_saved_masks(server, tmp_path):
    from annotations_db.export import export_training
    from core_model.io import load_image
    from core_model.predictor import Click, InteractivePredictor
    from core_model.triage import initial_prompt

    http = server.login("cy")
    for case in _free_cases(server, "cy", 2):
        view = _open(http, server.url, case=case)
        nonce, w, h = view["nonce"], view["display_width"], view["display_height"]
        steps = [("click", 0.3, 0.5, True), ("click", 0.6, 0.5, True), ("undo",), ("reset",), ("click", 0.35, 0.4, True),
                 ("click", 0.5, 0.95, False)]
        for step in steps:
            body = {"nonce": nonce} if len(step) == 1 else {"nonce": nonce, "x": w * step[1], "y": h * step[2],
                                                            "positive": step[3]}
            _post(http, server.url, step[0], body).raise_for_status()
        relogin = server.login("cy")  # the last click comes from a rebuilt session (replayed from the log)
        restored = _post(relogin, server.url, "resume", {}).json()["view"]
        _post(relogin, server.url, "click", {"nonce": restored["nonce"], "x": w * 0.7, "y": h * 0.45,
                                             "positive": True}).raise_for_status()
        _post(relogin, server.url, "submit", {"nonce": restored["nonce"]}).raise_for_status()
        nxt = relogin.get(f"{server.url}/api/v1/me", timeout=30).json()["view"]
        if nxt:
            _post(relogin, server.url, "pause", {"nonce": nxt["nonce"]}).raise_for_status()

    manifest = export_training(server.service.store, tmp_path / "export")
    import json
    from PIL import Image
    items = [i for i in json.loads(manifest.read_text())["items"] if i["clicks"]]
    assert len(items) >= 2
    predictor = InteractivePredictor(shared_model(), disk_cache=shared_embedding_dir())  # the app's embeddings
    for item in items:
        pixels = load_image(manifest.parent / item["image"]).pixels
        predictor.set_image(pixels)
        predictor.predict(**initial_prompt(shared_model(), *pixels.shape[:2]))
        for click in item["clicks"]:
            predicted = predictor.predict([Click(click["x"], click["y"], click["positive"])])
        saved = np.asarray(Image.open(manifest.parent / item["mask"])) > 0
        assert np.array_equal(predicted.mask, saved), f"{item['case_id']}: the clicks do not replay to the mask"


# ---------------------------------------------------------------------------------------------- restart, SIGKILL
def _seed(db_url: str, shared_data: Path, images: int, rating_max: int = 100) -> None:
    """Two readers and ``images`` real chest X-rays; one crossover study (aided arm first for ada)."""
    from annotations_db.importers import import_images
    source = shared_data / "cxr_lungs" / "images"
    with Store.open(db_url) as store:
        folder = Path(db_url.removeprefix("sqlite:///")).parent / "images"
        folder.mkdir(exist_ok=True)
        for path in sorted(source.iterdir())[:images]:
            (folder / path.name).write_bytes(path.read_bytes())
        import_images(store, folder, "cxr", progress=False)
        store.create_reader("ada", PASSWORD)
        store.create_study("restart", [c.id for c in store.cases()], ["ada"], arms=("ai_aided", "unaided"),
                           washout_days=0, rating_max=rating_max)


def _logged_in(app: AppProcess) -> requests.Session:
    http = requests.Session()
    http.post(f"{app.url}/api/v1/login", json={"username": "ada", "password": PASSWORD},
              timeout=60).raise_for_status()
    return http


def test_integrity_server_restart_restores_the_read_and_excludes_downtime(tmp_path, shared_data):
    from annotations_db.export import results_frame
    db_url = f"sqlite:///{tmp_path / 'data' / 'annotations.sqlite'}"
    (tmp_path / "data").mkdir()
    _seed(db_url, shared_data, images=2)
    app = AppProcess(db_url, tmp_path / "data")
    app.start()
    try:
        http = _logged_in(app)
        opened_at = time.monotonic()
        view = _open(http, app.url, study="next")
        nonce, w, h = view["nonce"], view["display_width"], view["display_height"]
        for fx, fy in ((0.3, 0.45), (0.7, 0.45)):
            _post(http, app.url, "click", {"nonce": nonce, "x": w * fx, "y": h * fy, "positive": True}).raise_for_status()
        _post(http, app.url, "answer", {"nonce": nonce, "positives": ["Edema", "Cardiomegaly"],
                                        "ratings": {"Edema": 80, "Cardiomegaly": 30}}).raise_for_status()
        before = _layer(http, app.url, nonce)
        read_before = time.monotonic() - opened_at

        killed_at = time.monotonic()
        app.kill()
        app.start()
        downtime = time.monotonic() - killed_at

        resumed_at = time.monotonic()
        restored = _post(http, app.url, "resume", {}).json()["view"]  # the same cookie: the login survived
        assert restored["case"] == view["case"] and restored["clicks"] == 2
        assert restored["positives"] == ["Cardiomegaly", "Edema"]
        assert restored["ratings"] == {"Edema": 80, "Cardiomegaly": 30}
        assert _layer(http, app.url, restored["nonce"]) == before, "the restored mask differs"
        _post(http, app.url, "submit", {"nonce": restored["nonce"]}).raise_for_status()
        read_after = time.monotonic() - resumed_at
    finally:
        app.kill()
    with Store.open(db_url) as store:
        frame = results_frame(store, "restart")
    first = frame[frame["case"] == view["case"]]
    seconds = float(first["time_s"].iloc[0])
    assert downtime > 3, "the restart took no measurable time"
    assert seconds <= read_before + read_after + 0.5, (seconds, read_before, read_after, downtime)
    assert seconds < read_before + downtime, "the downtime was counted as reading time"
    assert set(first.loc[first["answer"] == 1, "class"]) == {"Edema", "Cardiomegaly"}


def test_integrity_no_acknowledged_event_is_lost_over_20_sigkills(tmp_path, shared_data):
    """A reader who toggles findings and clicks as fast as the server answers; the server is SIGKILLed at a random
    moment, 20 times. After each kill, the log replays to the last acknowledged state (or to the one request that
    was in flight, if its commit won the race) — never to anything older."""
    db_url = f"sqlite:///{tmp_path / 'data' / 'annotations.sqlite'}"
    (tmp_path / "data").mkdir()
    _seed(db_url, shared_data, images=1, rating_max=0)
    app = AppProcess(db_url, tmp_path / "data")
    rng = random.Random(20)
    classes = ["Atelectasis", "Cardiomegaly", "Edema", "Mass", "Nodule", "Pneumothorax"]
    acknowledged: dict[str, Any] = {"positives": [], "clicks": 0}
    http: requests.Session | None = None
    try:
        for round_number in range(20):
            app.start()
            http = http or _logged_in(app)
            view = _post(http, app.url, "resume", {}).json()["view"] or _open(http, app.url, study="next")
            assert sorted(view["positives"]) == sorted(acknowledged["positives"])
            assert view["clicks"] == acknowledged["clicks"]
            in_flight: list[dict[str, Any]] = []
            acks = threading.Semaphore(0)
            worker = threading.Thread(target=_act, args=(http, app.url, view, classes, rng, acknowledged, in_flight,
                                                         acks), daemon=True)
            worker.start()
            for _ in range(2 + round_number % 3):
                assert acks.acquire(timeout=60), "the server acknowledged nothing"
            app.kill()
            worker.join(timeout=60)
            logged = _replayed(db_url)
            candidates = [acknowledged, *in_flight[-1:]]
            assert any(sorted(logged.labels_on()) == sorted(c["positives"]) and len(logged.clicks) == c["clicks"]
                       for c in candidates), (round_number, logged, candidates)
            acknowledged = {"positives": sorted(logged.labels_on()), "clicks": len(logged.clicks)}
    finally:
        app.kill()


def _act(http: requests.Session, url: str, view: dict[str, Any], classes: list[str], rng: random.Random,
         acknowledged: dict[str, Any], in_flight: list[dict[str, Any]], acks: threading.Semaphore) -> None:
    """Alternate label changes and clicks until the server dies; ``acknowledged`` holds the state of the last
    answered request, ``in_flight`` the state the unanswered one would make."""
    nonce, w, h = view["nonce"], view["display_width"], view["display_height"]
    while True:
        state = {"positives": list(acknowledged["positives"]), "clicks": acknowledged["clicks"]}
        if rng.random() < 0.6:
            state["positives"] = sorted(rng.sample(classes, rng.randint(0, 3)))
            route, body = "answer", {"nonce": nonce, "positives": state["positives"]}
        elif state["clicks"] >= 20:
            state["clicks"] = 0
            route, body = "reset", {"nonce": nonce}
        else:
            state["clicks"] += 1
            route, body = "click", {"nonce": nonce, "x": w * rng.uniform(0.2, 0.8), "y": h * rng.uniform(0.2, 0.8),
                                    "positive": rng.random() < 0.7}
        in_flight.append(state)
        try:
            response = http.post(f"{url}/api/v1/{route}", json=body, timeout=30)
        except requests.RequestException:
            return
        if response.status_code != 200:
            return
        acknowledged.update(state)
        acks.release()


class _Logged(event_log.CaseState):
    def labels_on(self) -> list[str]:
        return [c for c, v in self.labels.items() if v]


def _replayed(db_url: str) -> _Logged:
    with Store.open(db_url) as store:
        reader = store.reader("ada")
        target = store.next_assignment(reader)
        events = event_log.open_session(store.events(target, reader))
    state = _Logged()
    for event in events:
        state.apply(event.kind, event.payload, event.id)
    return state
