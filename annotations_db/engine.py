"""Engines for SQLite (embedded default) and PostgreSQL (multi-site) with the same code path.

SQLite: WAL journal, foreign keys on, a busy timeout, ``BEGIN IMMEDIATE`` for write transactions (concurrent writer
processes queue on the busy handler instead of failing with SQLITE_BUSY_SNAPSHOT) and a larger WAL auto-checkpoint
interval so that checkpoints stay off most commits.

Durability: ``synchronous=FULL`` (default) fsyncs the WAL at every commit, so an acknowledged event survives a crash
or SIGKILL of any process (tested) and a power cut. ``synchronous=NORMAL`` (``$BIASCARE_SQLITE_SYNCHRONOUS=NORMAL`` or
``Store.open(url, synchronous="NORMAL")``) still survives process crashes, but an OS crash / power cut may roll back
the last commits (never corrupting the file); it is ~3× cheaper per event. bench/db.py measures both.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

DEFAULT_URL = "sqlite:///data/annotations.sqlite"
BUSY_TIMEOUT_MS = 60_000
WAL_AUTOCHECKPOINT_PAGES = 4000  # ~16 MB of WAL between checkpoints (SQLite's default is 1000)
WRITE = {"biascare_write": True}  # execution option: take the SQLite write lock at BEGIN


def is_sqlite(engine_or_url: Engine | str) -> bool:
    url = engine_or_url.url if isinstance(engine_or_url, Engine) else make_url(engine_or_url)
    return url.get_backend_name() == "sqlite"


def default_synchronous() -> str:
    return os.environ.get("BIASCARE_SQLITE_SYNCHRONOUS", "FULL").upper()


def make_engine(url: str, *, synchronous: str | None = None, echo: bool = False) -> Engine:
    """An Engine for ``url``; creates the SQLite file's folder on first use. ``postgresql://`` means psycopg 3."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
        url = parsed.render_as_string(hide_password=False)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, echo=echo, pool_pre_ping=True, future=True)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, echo=echo, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000, "isolation_level": None})
    _install_sqlite_pragmas(engine, synchronous or default_synchronous())
    return engine


def _install_sqlite_pragmas(engine: Engine, synchronous: str) -> None:
    if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
        raise ValueError(f"synchronous must be OFF, NORMAL, FULL or EXTRA, not {synchronous!r}")

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={synchronous.upper()}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        immediate = connection.get_execution_options().get("biascare_write", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
