"""annotations_db.store on a real SQLite file: schema, readers, studies, events, answers, worklist, access checks."""
from __future__ import annotations

import sqlite3
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco_mask
from sqlalchemy import text

from annotations_db import migrate, rle
from annotations_db.errors import AccessDenied, AlreadySubmitted, InvalidEvent, NotFound, StudyDesignError
from annotations_db.models import Base
from annotations_db.store import Store, derive_time_s, plan_assignments
from tests.db_helpers import seed_cases


@pytest.fixture()
def store(tmp_path: Path) -> Store:
    store = Store.open(f"sqlite:///{tmp_path / 'study.sqlite'}")
    yield store
    store.close()


@pytest.fixture()
def cases(store: Store, shared_data: Path, tmp_path: Path) -> list:
    return seed_cases(store, shared_data, tmp_path / "seed", count=6)


@pytest.fixture()
def people(store: Store) -> dict:
    return {"admin": store.create_reader("ada", "correct horse", role="admin"),
            "r1": store.create_reader("rui", "pw-rui"), "r2": store.create_reader("mei", "pw-mei")}


def test_open_creates_wal_database_at_head_with_pragmas(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "fresh.sqlite"
    store = Store.open(f"sqlite:///{path}")
    assert path.exists()
    with store.engine.connect() as connection:
        assert migrate.current_revision(connection) == migrate.head_revision()
        assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert connection.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert connection.execute(text("PRAGMA synchronous")).scalar() == 2  # FULL (default)
        assert connection.execute(text("PRAGMA busy_timeout")).scalar() >= 1000
    Store.open(f"sqlite:///{path}").close()  # second open: already at head, no error
    store.close()


def test_migration_matches_the_models(store: Store) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext
    with store.engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []


def test_downgrade_removes_every_table(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'down.sqlite'}")
    migrate.downgrade(store.engine, "base")
    with sqlite3.connect(tmp_path / "down.sqlite") as connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert tables <= {"alembic_version"}
    store.close()


def test_readers_have_salted_hashes_and_authenticate(store: Store, people: dict) -> None:
    assert store.authenticate("ada", "correct horse") == people["admin"]
    assert store.authenticate("ada", "wrong") is None
    assert store.authenticate("nobody", "x") is None
    with store.read_session() as session:
        hashes = [row[0] for row in session.execute(text("SELECT password_hash FROM readers"))]
    assert all(h.startswith("scrypt$") and "correct horse" not in h for h in hashes)
    again = store.create_reader("twin", "correct horse")
    with store.read_session() as session:
        first, second = session.execute(text("SELECT password_hash FROM readers WHERE name IN ('ada','twin')"))
    assert first[0] != second[0]  # same password, different salt
    with pytest.raises(ValueError, match="exists"):
        store.create_reader("ada", "x")
    with pytest.raises(ValueError, match="role"):
        store.create_reader("eve", "x", role="superuser")
    assert again.role == "reader"


def test_crossover_study_is_seeded_complete_and_counterbalanced(store: Store, cases: list, people: dict) -> None:
    readers = [people["r1"], people["r2"]]
    store.create_study("pilot", cases, readers, design="crossover", seed=11, washout_days=28)
    for k, reader in enumerate(readers):
        views = store.assignments_for(reader, include_locked=True)
        assert len(views) == 2 * len(cases)
        assert [v.order for v in views] == list(range(1, 2 * len(cases) + 1))
        assert {(v.case_id, v.arm) for v in views} == {(c.id, a) for c in cases for a in ("unaided", "ai_aided")}
        first_arm = {v.arm for v in views if v.session == 1}
        assert first_arm == {("unaided", "ai_aided")[k % 2]}  # arm order rotates across readers
    orders = [[v.case_id for v in store.assignments_for(r, include_locked=True)] for r in readers]
    assert orders[0] != orders[1] or len(cases) < 3  # per-reader shuffles
    assert plan_assignments([c.id for c in cases], [r.id for r in readers], 2, "crossover", 11) == \
        plan_assignments([c.id for c in cases], [r.id for r in readers], 2, "crossover", 11)
    assert plan_assignments([1, 2, 3, 4, 5, 6], [1], 2, "crossover", 1) != \
        plan_assignments([1, 2, 3, 4, 5, 6], [1], 2, "crossover", 2)


def test_washout_locks_the_second_session(store: Store, cases: list, people: dict) -> None:
    reader = people["r1"]
    store.create_study("washout", cases[:3], [reader], washout_days=28)
    open_now = store.assignments_for(reader)
    assert {v.session for v in open_now} == {1} and len(open_now) == 3
    for view in open_now:
        store.log_event(view, reader, "case_shown")
        store.save_annotation(view, reader, {"Edema": 0})
    assert {v.session for v in store.assignments_for(reader)} == {1}  # washout not over
    real_now = store.now
    store.now = lambda: real_now() + timedelta(days=29)
    assert {v.session for v in store.assignments_for(reader)} == {1, 2}


def test_sequential_design_reads_each_case_unaided_then_aided(store: Store, cases: list, people: dict) -> None:
    store.create_study("seq", cases, [people["r1"]], design="sequential", seed=3)
    views = store.assignments_for(people["r1"])
    assert [v.arm for v in views] == ["unaided", "ai_aided"] * len(cases)
    assert all(views[i].case_id == views[i + 1].case_id for i in range(0, len(views), 2))


def test_bad_study_designs_are_refused(store: Store, cases: list, people: dict) -> None:
    with pytest.raises(StudyDesignError, match="design"):
        store.create_study("x", cases, [people["r1"]], design="parallel")
    with pytest.raises(StudyDesignError, match="distinct"):
        store.create_study("y", cases, [people["r1"]], arms=("unaided", "unaided"))
    with pytest.raises(NotFound):
        store.create_study("z", [999999], [people["r1"]])


def test_readers_only_see_and_touch_their_own_work(store: Store, cases: list, people: dict) -> None:
    store.create_study("own", cases[:2], [people["r1"], people["r2"]], rating_max=0)
    mine = store.assignments_for(people["r1"])[0]
    assert all(v.reader_id == people["r1"].id for v in store.assignments_for(people["r1"]))
    with pytest.raises(AccessDenied):
        store.assignment(people["r2"], mine.id)
    assert store.assignment(people["admin"], mine.id).id == mine.id
    with pytest.raises(AccessDenied):
        store.log_event(mine, people["r2"], "case_shown")
    with pytest.raises(AccessDenied):
        store.save_annotation(mine, people["r2"], {"Edema": 1})
    store.save_annotation(mine, people["r1"], {"Edema": 1})
    with pytest.raises(AccessDenied):
        store.answers(people["r2"], people["r1"])
    assert [a.labels for a in store.answers(people["r1"])] == [{"Edema": 1}]
    assert len(store.answers(people["admin"], people["r1"])) == 1
    with pytest.raises(AccessDenied):
        store.events(mine, people["r2"])


def test_events_are_validated_timestamped_and_append_only(store: Store, cases: list, people: dict,
                                                            tmp_path: Path) -> None:
    reader = people["r1"]
    store.create_study("ev", cases[:1], [reader], arms=("unaided",))
    view = store.assignments_for(reader)[0]
    ids = [store.log_event(view, reader, "case_shown"),
           store.log_event(view, reader, "click", {"x": "12.5", "y": 30, "positive": 1, "latency_ms": 48.0})]
    assert ids == sorted(ids)
    for kind, payload, match in [("teleport", {}, "unknown event kind"), ("click", {"x": 1}, "missing"),
                                 ("click", {"x": "a", "y": 1, "positive": True}, "numbers"),
                                 ("label_toggled", {"class": "Edema", "value": 7}, "label_toggled"),
                                 ("ai_shown", {}, "unaided"), ("submit", {}, "save_annotation")]:
        with pytest.raises(InvalidEvent, match=match):
            store.log_event(view, reader, kind, payload)
    events = store.events(view, reader)
    assert [e.kind for e in events] == ["case_shown", "click"]
    assert events[1].payload == {"x": 12.5, "y": 30.0, "positive": True, "latency_ms": 48.0}
    assert events[1].mono_ns > events[0].mono_ns and events[1].wall_at >= events[0].wall_at
    with sqlite3.connect(store.engine.url.database) as connection:
        for statement in ("UPDATE events SET kind='x'", "DELETE FROM events"):
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                connection.execute(statement)


def test_idempotency_key_makes_a_retry_return_the_same_event(store: Store, cases: list, people: dict) -> None:
    first = store.log_event(cases[0].id, people["r1"], "accept", idempotency_key="tab-7:42")
    again = store.log_event(cases[0].id, people["r1"], "accept", idempotency_key="tab-7:42")
    assert first == again
    assert len(store.events(cases[0].id, people["r1"])) == 1


def test_time_per_case_is_submit_minus_shown_minus_idle(store: Store, cases: list, people: dict) -> None:
    reader = people["r1"]
    store.create_study("timing", cases[:1], [reader], arms=("ai_aided",), allow_revisit=True, rating_max=0)
    view = store.assignments_for(reader)[0]
    store.log_event(view, reader, "case_shown")
    store.log_event(view, reader, "idle_start")
    store.log_event(view, reader, "idle_end")
    store.log_event(view, reader, "ai_shown")
    store.save_annotation(view, reader, {"Edema": 1})
    events = store.events(view, reader)
    by_kind = {e.kind: e for e in events}
    expected = ((by_kind["submit"].mono_ns - by_kind["case_shown"].mono_ns)
                - (by_kind["idle_end"].mono_ns - by_kind["idle_start"].mono_ns)) / 1e9
    assert store.time_per_case(view) == pytest.approx(expected, abs=1e-9)
    assert 0 < expected < 5
    store.log_event(view, reader, "case_shown")  # a revisit adds a second viewing segment
    store.save_annotation(view, reader, {"Edema": 0})
    assert store.time_per_case(view) > expected


def test_derive_time_without_submit_is_none() -> None:
    assert derive_time_s([]) is None


def test_second_answer_needs_allow_revisit(store: Store, cases: list, people: dict) -> None:
    reader = people["r1"]
    store.create_study("once", cases[:1], [reader], arms=("unaided",), rating_max=0)
    view = store.assignments_for(reader)[0]
    store.save_annotation(view, reader, {"Edema": 1})
    with pytest.raises(AlreadySubmitted):
        store.save_annotation(view, reader, {"Edema": 0})
    assert store.assignment(reader, view.id).status == "submitted"


def test_answers_are_checked_against_the_label_set_and_source_geometry(store: Store, cases: list,
                                                                        people: dict) -> None:
    case = cases[0]
    with pytest.raises(ValueError, match="unknown class"):
        store.save_annotation(case.id, people["r1"], {"Edemaa": 1})
    with pytest.raises(ValueError, match="0 or 1"):
        store.save_annotation(case.id, people["r1"], {"Edema": 2})
    with pytest.raises(ValueError, match="source image"):
        store.save_annotation(case.id, people["r1"], {"Edema": 1}, mask=np.ones((256, 256), np.uint8))
    mask = np.zeros((1024, 1024), np.uint8)
    mask[100:300, 200:500] = 1
    annotation_id = store.save_annotation(case.id, people["r1"], {"Edema": 1}, mask=mask, accepted_as_is=True)
    saved = store.answers(people["r1"])[-1]
    assert saved.id == annotation_id and saved.accepted_as_is
    assert np.array_equal(rle.decode(saved.mask_rle), mask)


def test_worklist_ranks_by_uncertainty_and_filters(store: Store, cases: list, people: dict) -> None:
    reader = people["r1"]
    uncertainties = [0.1, 0.9, 0.5, 0.7]
    for case, u in zip(cases, uncertainties):
        store.record_prediction(case.id, "medsam-v1", {"Edema": u, "Cardiomegaly": 1 - u}, None,
                                {"aleatoric": u / 2, "epistemic": u / 2})
    ranked = store.worklist(reader)
    assert [i.uncertainty for i in ranked[:4]] == pytest.approx([0.9, 0.7, 0.5, 0.1])
    assert all(i.uncertainty is None for i in ranked[4:])
    assert [i.case_id for i in store.worklist(reader, class_name="Edema")] == [cases[1].id, cases[3].id, cases[2].id]
    assert len(store.worklist(reader, min_uncertainty=0.6)) == 2
    store.save_annotation(cases[1].id, reader, {"Edema": 1})
    assert cases[1].id not in [i.case_id for i in store.worklist(reader)]
    assert [i.case_id for i in store.worklist(reader, status="done")] == [cases[1].id]
    assert cases[1].id in [i.case_id for i in store.worklist(people["r2"])]  # someone else's work is still open
    store.record_prediction(cases[0].id, "medsam-v1", {"Edema": 0.3}, None, {"total": 2.0})  # replaces
    assert store.worklist(reader)[0].case_id == cases[0].id
    with pytest.raises(ValueError, match="probability"):
        store.record_prediction(cases[0].id, "medsam-v1", {"Edema": 1.5})


def test_rle_round_trips_a_real_lung_mask_and_matches_pycocotools(shared_data: Path) -> None:
    mask = np.asarray(Image.open(shared_data / "cxr_lungs" / "masks" / "00870a9c_lung.png")) > 0
    encoded = rle.encode(mask)
    assert np.array_equal(rle.decode(encoded), mask)
    reference = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    assert encoded["counts"] == reference["counts"].decode()
    assert rle.area(encoded) == int(mask.sum())
    volume = np.zeros((7, 5, 3), np.uint8)
    volume[2:5, 1:3, 1] = 1
    assert np.array_equal(rle.decode(rle.encode(volume)), volume)


def test_processes_opening_a_fresh_database_at_once_migrate_it_once(tmp_path: Path) -> None:
    import subprocess
    import sys
    from tests.db_helpers import REPO_ROOT
    url = f"sqlite:///{tmp_path / 'race.sqlite'}"
    code = "import sys; from annotations_db.store import Store; Store.open(sys.argv[1]).close()"
    processes = [subprocess.Popen([sys.executable, "-c", code, url], cwd=REPO_ROOT, stderr=subprocess.PIPE,
                                  text=True) for _ in range(4)]
    for process in processes:
        assert process.wait(timeout=120) == 0, process.stderr.read()
    with Store.open(url) as store, store.engine.connect() as connection:
        assert migrate.current_revision(connection) == migrate.head_revision()
