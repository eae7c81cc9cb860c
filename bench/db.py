"""Benchmark of the annotation database: event writes and import rate, each against a baseline in the same run.

    python -m bench.db --json OUT [--events 2000] [--writers 4] [--no-postgres]

- event_write_sqlite: one writer, ``Store.log_event`` (one committed transaction per event) with the default
  ``synchronous=FULL`` (fsync per commit) vs ``synchronous=NORMAL``, and vs a plain ORM ``Session.add`` + commit of the
  same row (the overhead of the service layer's checks). Latency p50/p95/p99 wall and CPU ms, events/s.
- event_write_postgres: the same against a throw-away local PostgreSQL server (fsync on, synchronous_commit on).
- concurrent_*: ``--writers`` processes writing at once, aggregate events/s, lost/duplicated counts.
- import: ``import_images`` of the real CXR folder (shared/data/cxr_lungs/images, masks + demographics) in images/s,
  vs decoding + hashing the same files without the database (the floor set by core_model.io).

Numbers depend on the disk's fsync and on other load on the machine; the JSON records the load average.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("BIASCARE_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def _quantiles(values: list[float]) -> dict[str, float]:
    array = np.asarray(values) * 1e3
    return {f"p{q}_ms": round(float(np.percentile(array, q)), 3) for q in (50, 95, 99)}


def _seed(store: Any) -> tuple[int, int]:
    from annotations_db.models import Case, Dataset
    with store.write_session() as session:
        dataset = Dataset(name="bench", kind="images", root="/bench")
        session.add(dataset)
        session.flush()
        case = Case(pseudo_id="cbench", dataset_id=dataset.id, source_uri="/bench/0.png", sha256="0" * 64,
                    format="png", width=1024, height=1024)
        session.add(case)
        session.flush()
        case_id = case.id
    return store.create_reader(f"bench-{time.time_ns()}", "pw").id, case_id


def _time_writes(write: Callable[[int], Any], count: int) -> dict[str, Any]:
    wall, cpu = [], []
    started = time.perf_counter()
    for i in range(count):
        t0, c0 = time.perf_counter(), time.process_time()
        write(i)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    elapsed = time.perf_counter() - started
    return {"events": count, "events_per_s": round(count / elapsed, 1), "wall": _quantiles(wall),
            "cpu": _quantiles(cpu)}


def bench_log_event(url: str, count: int, synchronous: str | None = None) -> dict[str, Any]:
    from annotations_db.store import Store
    with Store.open(url, synchronous=synchronous) as store:
        reader_id, case_id = _seed(store)
        payload = {"x": 511.5, "y": 300.0, "positive": True, "latency_ms": 42.0}
        return _time_writes(lambda i: store.log_event(case_id, reader_id, "click", payload), count)


def bench_orm_add(url: str, count: int, synchronous: str | None = None) -> dict[str, Any]:
    """Baseline: the same event row through a plain ORM session (no validation, no access checks)."""
    from sqlalchemy.orm import Session
    from annotations_db.models import Event, utcnow
    from annotations_db.store import CLOCK_ID, Store
    with Store.open(url, synchronous=synchronous) as store:
        reader_id, case_id = _seed(store)

        def write(i: int) -> None:
            with Session(store.engine) as session, session.begin():
                session.add(Event(case_id=case_id, reader_id=reader_id, kind="click",
                                  payload={"x": 511.5, "y": 300.0, "positive": True}, wall_at=utcnow(),
                                  mono_ns=time.monotonic_ns(), clock_id=CLOCK_ID))
        return _time_writes(write, count)


def bench_concurrent(url: str, writers: int, per_writer: int) -> dict[str, Any]:
    """``writers`` processes × ``per_writer`` events at once; aggregate rate and exactly-once check."""
    from sqlalchemy import func, select
    from annotations_db.models import Event
    from annotations_db.store import Store
    with Store.open(url) as store:
        reader_id, case_id = _seed(store)
    command = [sys.executable, "-m", "tests.db_helpers", "events", url, str(reader_id), str(case_id),
               str(per_writer)]
    processes = [subprocess.Popen(command + [f"w{k}"], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True) for k in range(writers)]
    for process in processes:
        process.stdout.readline()  # "ready": startup is not part of the rate
    started = time.perf_counter()
    acked = sum(len(process.stdout.read().splitlines()) for process in processes)
    for process in processes:
        process.wait()
    elapsed = time.perf_counter() - started
    with Store.open(url) as store, store.read_session() as session:
        stored = session.scalar(select(func.count()).select_from(Event).where(Event.kind == "click"))
        distinct = session.scalar(select(func.count(func.distinct(Event.id))).where(Event.kind == "click"))
    return {"writers": writers, "events": acked, "events_per_s": round(acked / elapsed, 1),
            "lost": writers * per_writer - stored, "duplicated": stored - distinct}


def bench_import(tmp: Path) -> dict[str, Any]:
    from core_model.io import load_image, sha256_file
    from annotations_db.importers import import_images
    from annotations_db.store import Store
    lungs = SHARED_DATA / "cxr_lungs"
    files = sorted((lungs / "images").iterdir())
    started = time.perf_counter()
    for path in files:
        load_image(path)
        sha256_file(path)
    decode_rate = len(files) / (time.perf_counter() - started)
    with Store.open(f"sqlite:///{tmp / 'import.sqlite'}") as store:
        report = import_images(store, lungs / "images", "lungs", masks_dir=lungs / "masks",
                               mask_pattern="{stem}_lung.png", mask_name="lung",
                               demographics_csv=lungs / "metadata.csv", progress=False)
        again = import_images(store, lungs / "images", "lungs", progress=False)
    return {"images": len(report.imported), "errors": len(report.errors),
            "import_images_per_s": round(report.rate, 2), "baseline_decode_hash_only_images_per_s":
                round(decode_rate, 2), "reimport_idempotent_images_per_s": round(again.rate, 2),
            "reimport_new_cases": len(again.imported)}


def run(events: int, writers: int, postgres: bool) -> dict[str, Any]:
    result: dict[str, Any] = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                                          "loadavg_start": os.getloadavg()}}
    with tempfile.TemporaryDirectory(prefix="bench-db-") as folder:
        tmp = Path(folder)
        sqlite = lambda name: f"sqlite:///{tmp / name}"  # noqa: E731
        result["event_write_sqlite"] = {
            "full_default": bench_log_event(sqlite("full.sqlite"), events, "FULL"),
            "normal_no_fsync": bench_log_event(sqlite("normal.sqlite"), events, "NORMAL"),
            "orm_session_add_baseline_full": bench_orm_add(sqlite("orm.sqlite"), events, "FULL"),
        }
        p95 = result["event_write_sqlite"]["full_default"]["wall"]["p95_ms"]
        result["event_write_sqlite"]["p95_under_10ms"] = p95 < 10.0
        result["concurrent_sqlite"] = bench_concurrent(sqlite("concurrent.sqlite"), writers, events // writers)
        if postgres:
            result.update(_bench_postgres(events, writers))
        result["import"] = bench_import(tmp)
    result["machine"]["loadavg_end"] = os.getloadavg()
    return result


def _bench_postgres(events: int, writers: int) -> dict[str, Any]:
    from annotations_db.pgserver import PostgresServer, pg_bindir
    if pg_bindir() is None:
        return {"event_write_postgres": {"skipped": "PostgreSQL binaries not installed"}}
    server = PostgresServer.create()
    try:
        return {"event_write_postgres": {"log_event": bench_log_event(server.create_database(), events),
                                         "orm_session_add_baseline": bench_orm_add(server.create_database(),
                                                                                   events)},
                "concurrent_postgres": bench_concurrent(server.create_database(), writers, events // writers)}
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.db", description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the results here (they are printed either way)")
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args(argv)
    result = run(args.events, args.writers, not args.no_postgres)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
