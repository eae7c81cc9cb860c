"""Reliability with real processes and real servers: SIGKILL mid-stream, 16 concurrent writers (SQLite, PostgreSQL)."""
from __future__ import annotations

import random
import signal
import sqlite3
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import select

from annotations_db.models import Annotation, Case, Event
from annotations_db.store import Store
from tests.db_helpers import CASE_LABELS, postgres_server, seed_cases, start_writer

WRITERS, EVENTS_PER_WRITER, KILLS = 16, 500, 20


@pytest.fixture(scope="module")
def pg():  # type: ignore[no-untyped-def]
    return postgres_server()


def _seed(url: str, shared_data: Path, workdir: Path) -> tuple[int, int]:
    with Store.open(url) as store:
        case = seed_cases(store, shared_data, workdir, count=1)[0]
        reader = store.create_reader("writer", "pw")
    return reader.id, case.id


def _wait_ready(process) -> None:  # type: ignore[no-untyped-def]
    line = process.stdout.readline()
    assert line.strip() == "ready", f"writer did not start: {line!r} {process.stderr.read()}"


@pytest.mark.slow
def test_sigkill_mid_stream_loses_no_acknowledged_write(tmp_path: Path, shared_data: Path) -> None:
    database = tmp_path / "crash.sqlite"
    url = f"sqlite:///{database}"
    reader_id, case_id = _seed(url, shared_data, tmp_path / "seed")
    acked: dict[str, set] = {"event": set(), "case": set(), "annotation": set()}
    rng = random.Random(20)
    for round_ in range(KILLS):
        writer = start_writer("crash", url, str(reader_id), str(case_id), f"round{round_}")
        _wait_ready(writer)
        deadline = time.monotonic() + rng.uniform(0.05, 0.6)
        while time.monotonic() < deadline:
            kind, value = writer.stdout.readline().split()
            acked[kind].add(int(value) if kind != "case" else value)
        writer.send_signal(signal.SIGKILL)
        for line in writer.stdout:  # acknowledgements already in the pipe were acknowledged before the kill
            kind, value = line.split()
            acked[kind].add(int(value) if kind != "case" else value)
        writer.wait()
        assert writer.returncode == -signal.SIGKILL
        _check_after_crash(database, url, acked)
    assert len(acked["event"]) > KILLS and acked["case"] and acked["annotation"]


def _check_after_crash(database: Path, url: str, acked: dict[str, set]) -> None:
    with sqlite3.connect(database) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    with Store.open(url) as store, store.read_session() as session:  # "restart": a fresh process-level open
        events = set(session.scalars(select(Event.id)))
        assert acked["event"] <= events
        crash_cases = list(session.scalars(select(Case).where(Case.source_uri.like("/crash/%"))))
        assert acked["case"] <= {case.pseudo_id for case in crash_cases}
        for case in crash_cases:  # no half-written case: all labels, the mask and the identity, or nothing
            assert {label.class_name for label in case.labels} == set(CASE_LABELS)
            assert len(case.masks) == 1 and case.identity is not None
        annotations = {a.id for a in session.scalars(select(Annotation))}
        assert acked["annotation"] <= annotations
        submits = {e.payload["annotation_id"] for e in session.scalars(select(Event).where(Event.kind == "submit"))}
        assert submits == annotations  # every answer has its submit event and no submit lacks its answer


def _run_concurrent_writers(url: str, reader_id: int, case_id: int) -> dict[str, list[tuple[int, int]]]:
    writers = {f"w{k}": start_writer("events", url, str(reader_id), str(case_id), str(EVENTS_PER_WRITER), f"w{k}")
               for k in range(WRITERS)}
    acked: dict[str, list[tuple[int, int]]] = {}
    for tag, process in writers.items():
        _wait_ready(process)
    for tag, process in writers.items():
        lines = process.stdout.read().splitlines()
        process.wait(timeout=600)
        assert process.returncode == 0, process.stderr.read()
        acked[tag] = [(int(line.split()[1]), int(line.split()[2])) for line in lines]
    return acked


def _check_exactly_once(url: str, acked: dict[str, list[tuple[int, int]]]) -> None:
    with Store.open(url) as store, store.read_session() as session:
        rows = session.execute(select(Event.id, Event.payload).where(Event.kind == "click")).all()
    assert len(rows) == WRITERS * EVENTS_PER_WRITER  # zero lost
    per_writer = Counter((row.payload["writer"], row.payload["seq"]) for row in rows)
    assert max(per_writer.values()) == 1  # zero duplicated
    assert set(per_writer) == {(f"w{k}", s) for k in range(WRITERS) for s in range(EVENTS_PER_WRITER)}
    acked_ids = {event_id for pairs in acked.values() for event_id, _ in pairs}
    assert acked_ids == {row.id for row in rows}
    assert all([seq for _, seq in pairs] == list(range(EVENTS_PER_WRITER)) for pairs in acked.values())


@pytest.mark.slow
def test_sixteen_writers_on_sqlite_lose_and_duplicate_nothing(tmp_path: Path, shared_data: Path) -> None:
    url = f"sqlite:///{tmp_path / 'concurrent.sqlite'}"
    reader_id, case_id = _seed(url, shared_data, tmp_path / "seed")
    _check_exactly_once(url, _run_concurrent_writers(url, reader_id, case_id))
    with sqlite3.connect(tmp_path / "concurrent.sqlite") as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


@pytest.mark.slow
@pytest.mark.postgres
def test_sixteen_writers_on_postgres_lose_and_duplicate_nothing(pg, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                shared_data: Path) -> None:
    url = pg.create_database()
    reader_id, case_id = _seed(url, shared_data, tmp_path / "seed")
    _check_exactly_once(url, _run_concurrent_writers(url, reader_id, case_id))


@pytest.mark.postgres
def test_the_same_store_code_runs_a_study_on_postgres(pg, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                      shared_data: Path) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext
    from annotations_db.export import results_frame
    from annotations_db.models import Base
    url = pg.create_database()
    with Store.open(url) as store:
        with store.engine.connect() as connection:
            assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
        cases = seed_cases(store, shared_data, tmp_path / "seed", count=3)
        reader = store.create_reader("rui", "pw")
        assert store.authenticate("rui", "pw") == reader
        store.create_study("pg-study", cases, [reader], design="sequential", rating_max=0)
        for view in store.assignments_for(reader):
            store.log_event(view, reader, "case_shown")
            store.save_annotation(view, reader, {"Edema": 1})
        frame = results_frame(store)
        assert len(frame) == 3 * 2 * 26 and (frame["time_s"] > 0).all()
        with store.engine.connect() as connection:
            from sqlalchemy import text
            from sqlalchemy.exc import DBAPIError
            with pytest.raises(DBAPIError, match="append-only"):
                connection.execute(text("UPDATE events SET kind = 'x'"))
