"""Durable login sessions: stored server-side (sha256 of the token only), surviving a restart, revoked at logout.

The app runs as a real subprocess (``python launch.py app``) on a real SQLite file and on a real PostgreSQL server,
and is SIGKILLed and started again on the same data; waits poll a URL against a deadline (no fixed sleeps). Idle and
absolute expiry move the store's clock (``Store.now``); the sign-out button is clicked in real Chromium.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests
from sqlalchemy import select, update

from annotations_db.models import LoginSession, Reader
from annotations_db.store import SESSION_TOUCH_S, Store
from app.service import SESSION_COOKIE, SESSION_IDLE_S, SESSION_TTL_S
from app.testing import PASSWORD, AppProcess, LiveServer
from tests.db_helpers import postgres_server



# ----------------------------------------------------------------------------------------------- helpers
@dataclass
class Clock:
    """A wall clock the test moves by hand (naive UTC, like ``annotations_db.models.utcnow``)."""

    at: datetime = field(default_factory=lambda: datetime(2026, 12, 1, 8, 0, 0))

    def __call__(self) -> datetime:
        return self.at

    def advance(self, seconds: float) -> None:
        self.at += timedelta(seconds=seconds)


def _seed_reader(url: str) -> None:
    with Store.open(url) as store:
        store.create_reader("ada", PASSWORD, role="reader")


def _login(app: AppProcess) -> tuple[str, requests.Response]:
    response = requests.post(f"{app.url}/api/v1/login", json={"username": "ada", "password": PASSWORD}, timeout=30)
    assert response.status_code == 200, response.text
    return response.cookies[SESSION_COOKIE], response


def _me(url: str, token: str) -> requests.Response:
    return requests.get(f"{url}/api/v1/me", cookies={SESSION_COOKIE: token}, timeout=30)


def _database_url(backend: str, data: Path) -> str:
    if backend == "sqlite":
        return f"sqlite:///{data / 'annotations.sqlite'}"
    return postgres_server().create_database()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def app_process(request: Any, tmp_path_factory: Any) -> Iterator[AppProcess]:
    data = tmp_path_factory.mktemp(f"sessions-{request.param}") / "data"
    data.mkdir(parents=True)
    url = _database_url(request.param, data)
    _seed_reader(url)
    app = AppProcess(url, data)
    app.start()
    yield app
    app.kill()


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: Any, tmp_path: Path) -> Iterator[Store]:
    with Store.open(_database_url(request.param, tmp_path)) as opened:
        opened.now = Clock()
        yield opened


# ----------------------------------------------------------------------------------------------- a real server process
def test_integrity_login_survives_a_server_restart(app_process: AppProcess) -> None:
    token, response = _login(app_process)
    assert f"max-age={SESSION_TTL_S}" in response.headers["set-cookie"].lower()
    assert _me(app_process.url, token).json()["reader"] == "ada"
    app_process.restart()
    me = _me(app_process.url, token)
    assert me.status_code == 200, me.text
    assert me.json() == {"reader": "ada", "role": "reader", "view": None}


def test_integrity_logout_refuses_the_cookie_also_after_a_restart(app_process: AppProcess) -> None:
    token, _ = _login(app_process)
    assert requests.get(f"{app_process.url}/logout", cookies={SESSION_COOKIE: token}, timeout=30).status_code == 405
    assert _me(app_process.url, token).status_code == 200  # a GET signs nobody out
    from app.security import sign_out_token
    out = requests.post(f"{app_process.url}/logout", cookies={SESSION_COOKIE: token}, allow_redirects=False,
                        data={"csrf": sign_out_token(token)},
                        timeout=30)
    assert out.status_code == 303 and out.headers["location"] == "/login"
    assert f'{SESSION_COOKIE}=""' in out.headers["set-cookie"] and "max-age=0" in out.headers["set-cookie"].lower()
    assert _me(app_process.url, token).status_code == 401
    app_process.restart()
    assert _me(app_process.url, token).status_code == 401
    fresh, _ = _login(app_process)
    assert _me(app_process.url, fresh).status_code == 200


# ----------------------------------------------------------------------------------------------- expiry (moved clock)
def test_integrity_idle_expiry(store: Store) -> None:
    reader = store.create_reader("ada", PASSWORD)
    token = store.create_login_session(reader, absolute_s=SESSION_TTL_S)
    store.now.advance(SESSION_IDLE_S - 1)
    assert store.login_session(token, idle_s=SESSION_IDLE_S) == reader  # used just in time: refreshed
    store.now.advance(SESSION_IDLE_S - 1)
    assert store.login_session(token, idle_s=SESSION_IDLE_S) == reader
    store.now.advance(SESSION_IDLE_S + 1)
    assert store.login_session(token, idle_s=SESSION_IDLE_S) is None


def test_integrity_absolute_expiry_whatever_the_activity(store: Store) -> None:
    reader = store.create_reader("ada", PASSWORD)
    token = store.create_login_session(reader, absolute_s=SESSION_TTL_S)
    for _ in range(SESSION_TTL_S // 3600 - 1):
        store.now.advance(3600)
        assert store.login_session(token, idle_s=SESSION_IDLE_S) == reader
    store.now.advance(3600)
    assert store.login_session(token, idle_s=SESSION_IDLE_S) is None


def test_integrity_last_seen_is_written_at_most_every_30_s(store: Store) -> None:
    reader = store.create_reader("ada", PASSWORD)
    token = store.create_login_session(reader, absolute_s=SESSION_TTL_S)
    created = store.now()
    store.now.advance(SESSION_TOUCH_S / 3)
    assert store.login_session(token, idle_s=SESSION_IDLE_S) == reader
    assert _last_seen(store) == created
    store.now.advance(SESSION_TOUCH_S)
    assert store.login_session(token, idle_s=SESSION_IDLE_S) == reader
    assert _last_seen(store) == store.now()


def _last_seen(store: Store) -> datetime:
    with store.read_session() as session:
        return session.scalar(select(LoginSession.last_seen_at))


def test_integrity_revoked_unknown_and_inactive_are_refused(store: Store) -> None:
    ada, ben = store.create_reader("ada", PASSWORD), store.create_reader("ben", PASSWORD)
    one, two = (store.create_login_session(ada, absolute_s=60) for _ in range(2))
    other = store.create_login_session(ben, absolute_s=60, user_agent="x" * 400)
    assert store.login_session("not-a-token", idle_s=60) is None and store.login_session("", idle_s=60) is None
    store.revoke_login_session(one)
    assert store.login_session(one, idle_s=60) is None and store.login_session(two, idle_s=60) == ada
    assert store.revoke_reader_sessions(ada) == 1
    assert store.login_session(two, idle_s=60) is None and store.login_session(other, idle_s=60) == ben
    with store.write_session() as session:
        session.execute(update(Reader).where(Reader.id == ben.id).values(active=False))
    assert store.login_session(other, idle_s=60) is None


# ----------------------------------------------------------------------------------------------- what is stored
def test_integrity_raw_token_is_not_in_the_sqlite_file(tmp_path: Path) -> None:
    database = tmp_path / "annotations.sqlite"
    with Store.open(f"sqlite:///{database}") as store:
        token = store.create_login_session(store.create_reader("ada", PASSWORD), absolute_s=60)
        assert store.login_session(token, idle_s=60) is not None
        stored = b"".join(path.read_bytes() for path in tmp_path.glob("annotations.sqlite*"))
    assert token.encode() not in stored
    assert hashlib.sha256(token.encode()).hexdigest().encode() in stored  # the right file was read


def test_integrity_raw_token_is_not_in_the_postgres_files(tmp_path: Path) -> None:
    server = postgres_server()
    with Store.open(server.create_database()) as store:
        token = store.create_login_session(store.create_reader("ada", PASSWORD), absolute_s=60)
        with store.engine.connect() as connection:
            connection.exec_driver_sql("CHECKPOINT")
    stored = _bytes_under(server.data)
    assert token.encode() not in stored
    assert hashlib.sha256(token.encode()).hexdigest().encode() in stored


def _bytes_under(folder: Path) -> bytes:
    return b"".join(path.read_bytes() for path in folder.rglob("*") if path.is_file() and not path.is_symlink())


# ----------------------------------------------------------------------------------------------- in-process server
@pytest.fixture(scope="module")
def live(tmp_path_factory: Any) -> Iterator[LiveServer]:
    server = LiveServer.start(tmp_path_factory.mktemp("sessions-live") / "data", demo=False, wait_triage=False)
    server.service.store.now = Clock()
    yield server
    server.stop()


def test_integrity_the_app_refuses_an_idle_or_expired_login_at_once(live: LiveServer) -> None:
    clock = live.service.store.now
    http = live.login("ada")
    token = http.cookies[SESSION_COOKIE]
    assert http.get(f"{live.url}/api/v1/me", timeout=30).status_code == 200
    clock.advance(SESSION_IDLE_S + 1)
    assert http.get(f"{live.url}/api/v1/me", timeout=30).status_code == 401
    assert token not in live.service.sessions  # the memory of a refused login is freed
    http = live.login("ada")
    for _ in range(SESSION_TTL_S // 3600 - 1):
        clock.advance(3600)
        assert http.get(f"{live.url}/api/v1/me", timeout=30).status_code == 200
    clock.advance(3600)
    assert http.get(f"{live.url}/api/v1/me", timeout=30).status_code == 401


def test_integrity_a_revoked_login_is_refused_by_the_running_app(live: LiveServer) -> None:
    http = live.login("ben")
    assert http.get(f"{live.url}/api/v1/me", timeout=30).status_code == 200
    live.service.store.revoke_reader_sessions(live.service.store.reader("ben"))
    assert http.get(f"{live.url}/api/v1/me", timeout=30).status_code == 401


@pytest.mark.browser
def test_integrity_sign_out_button_posts_and_lands_on_login(live: LiveServer) -> None:
    from tests.browser_helpers import chromium
    with chromium() as browser:
        _sign_in_and_out(browser, live)


def _sign_in_and_out(browser: Any, live: LiveServer) -> None:
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{live.url}/login")
    page.fill("#username", "cy")
    page.fill("#password", PASSWORD)
    page.click("#login-button")
    page.wait_for_url("**/ui/**")
    token = next(c["value"] for c in context.cookies() if c["name"] == SESSION_COOKIE)
    button = page.locator("#bc-signout")
    button.wait_for(timeout=60_000)
    assert len(context.pages) == 1
    with page.expect_navigation(url="**/login"):
        button.click()
    assert len(context.pages) == 1 and page.url.endswith("/login")  # same tab
    assert page.locator("#login-form").is_visible()
    assert not [c for c in context.cookies() if c["name"] == SESSION_COOKIE]
    assert requests.get(f"{live.url}/api/v1/me", cookies={SESSION_COOKIE: token}, timeout=30).status_code == 401
    context.close()
