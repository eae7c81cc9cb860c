"""Helpers of the annotations_db tests: a real PostgreSQL server and real writer processes.

``postgres_server()`` starts one throw-away PostgreSQL (Debian's postgresql package) per test session on 127.0.0.1 on
a free port in a temp dir (as the ``postgres`` user when running as root, since initdb refuses root) and stops it at
exit. Without the binaries the postgres tests are skipped, unless CI is set: then they fail.

``python -m tests.db_helpers events|crash URL ...`` is the writer process the reliability tests start and kill: it
prints one line per acknowledged (committed) write, flushed, so the parent knows exactly what was acknowledged.
"""
from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from annotations_db.pgserver import PostgresServer, pg_bindir

REPO_ROOT = Path(__file__).resolve().parents[1]
CASE_LABELS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion", "Pneumonia",
               "Pneumothorax", "Nodule", "Mass", "Fracture", "Emphysema", "Fibrosis", "Hernia", "Normal",
               "Support Devices")


_SERVER: PostgresServer | None = None


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def postgres_server() -> PostgresServer:
    """The session's PostgreSQL server (started on first use); pytest.skip/fail when the binaries are absent."""
    import pytest
    global _SERVER
    if _SERVER is not None:
        return _SERVER
    if pg_bindir() is None:
        message = "PostgreSQL binaries not found (apt-get install postgresql, or `make sysdeps`)"
        if in_ci():
            pytest.fail(message + " and CI is set")
        pytest.skip(message)
    _SERVER = PostgresServer.create()
    atexit.register(_SERVER.stop)
    return _SERVER


def start_writer(*args: str) -> subprocess.Popen[str]:
    """``python -m tests.db_helpers ARGS`` with stdout piped (one line per acknowledged write)."""
    return subprocess.Popen([sys.executable, "-m", "tests.db_helpers", *args], cwd=REPO_ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=1)


def crash_case_sha(tag: str, index: int) -> str:
    return hashlib.sha256(f"{tag}:{index}".encode()).hexdigest()


# -- the writer processes ---------------------------------------------------------------------------------------------
def _events_writer(url: str, reader_id: int, case_id: int, count: int, tag: str) -> None:
    from annotations_db.store import Store
    store = Store.open(url, migrate_schema=False)
    print("ready", flush=True)
    for seq in range(count):
        event_id = store.log_event(case_id, reader_id, "click",
                                   {"x": seq, "y": 1.5, "positive": seq % 2 == 0, "writer": tag, "seq": seq})
        print(f"event {event_id} {seq}", flush=True)


def _crash_writer(url: str, reader_id: int, case_id: int, tag: str) -> None:
    """Forever: events, a case with 15 labels + a mask (one transaction), an annotation with its submit event."""
    import numpy as np
    from annotations_db.importers import CaseRecord, _dataset_id, _insert_case
    from annotations_db.store import Store
    from annotations_db import rle
    from annotations_db.models import Case
    store = Store.open(url, migrate_schema=False)
    with store.read_session() as session:
        seed = session.get(Case, case_id)
        mask = np.zeros((seed.height, seed.width), np.uint8)
    mask[8:40, 10:50] = 1
    print("ready", flush=True)
    index = 0
    while True:
        event_id = store.log_event(case_id, reader_id, "click", {"x": index, "y": 2, "positive": True, "tag": tag})
        print(f"event {event_id}", flush=True)
        if index % 3 == 0:
            record = CaseRecord(path=Path(f"/crash/{tag}/{index}.png"), sha256=crash_case_sha(tag, index),
                                format="png", width=mask.shape[1], height=mask.shape[0],
                                labels={c: index % 2 for c in CASE_LABELS},
                                masks={"lung": (rle.encode(mask), "crash")}, patient_id=f"p{index}")
            with store.write_session() as session:
                pseudo = _insert_case(session, _dataset_id(session, "crash", "images", Path("/crash")), record)
            print(f"case {pseudo}", flush=True)
        if index % 3 == 1:
            annotation_id = store.save_annotation(case_id, reader_id, {"Edema": 1}, mask=mask)
            print(f"annotation {annotation_id}", flush=True)
        index += 1


def main(argv: list[str]) -> int:
    mode, url, *rest = argv
    if mode == "events":
        _events_writer(url, int(rest[0]), int(rest[1]), int(rest[2]), rest[3])
    elif mode == "crash":
        _crash_writer(url, int(rest[0]), int(rest[1]), rest[2])
    else:
        raise SystemExit(f"unknown writer mode {mode!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


def seed_cases(store, shared_data: Path, workdir: Path, count: int = 6, dataset: str = "seed") -> list:
    """Import ``count`` real chest X-rays (NIH sample, with CXR-LT-layout labels and demographics) into ``store``."""
    import csv as _csv
    from annotations_db.importers import import_cxr_lt
    source = shared_data / "nih_cxr14_sample"
    with open(source / "labels_cxrlt2024_format.csv", newline="") as handle:
        reader = _csv.DictReader(handle)
        rows = [row for _, row in zip(range(count), reader)]
        fields = reader.fieldnames
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "images").mkdir(exist_ok=True)
    for row in rows:
        shutil.copyfile(source / row["fpath"], workdir / row["fpath"])
    with open(workdir / "labels.csv", "w", newline="") as handle:
        writer = _csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    report = import_cxr_lt(store, workdir / "labels.csv", dataset, progress=False)
    assert not report.errors, report.errors
    return store.cases(dataset)
