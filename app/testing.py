"""Helpers for the app's tests and the latency bench: one model per process, a live server in a thread, logins.

    server = LiveServer.start(tmp_path / "data")          # real uvicorn on 127.0.0.1:<free port>, demo imported
    http = server.login("admin")                           # a requests.Session holding the session cookie
    client = server.gradio_client(http)                    # gradio_client.Client with the same cookie
    server.stop()
"""
from __future__ import annotations

import functools
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PASSWORD = "correct horse battery"


@functools.lru_cache(maxsize=1)
def shared_model() -> Any:
    """The model, loaded once per process (a few seconds)."""
    from core_model.model import DEFAULT_CHECKPOINT, build_model
    return build_model(DEFAULT_CHECKPOINT)


@functools.lru_cache(maxsize=1)
def shared_embedding_dir() -> Path:
    """One embedding disk cache per process, so that each test server does not re-encode the demo images."""
    return Path(tempfile.mkdtemp(prefix="biascare-test-embeddings-"))


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@dataclass
class LiveServer:
    url: str
    service: Any
    server: Any
    thread: threading.Thread
    credentials: dict[str, str] = field(default_factory=dict)

    @classmethod
    def start(cls, data_dir: Path, *, readers: tuple[str, ...] = ("ada", "ben", "cy"), wait_triage: bool = True,
              **kwargs: Any) -> LiveServer:
        import uvicorn

        from app.server import build_app

        data_dir = Path(data_dir)
        built = build_app(f"sqlite:///{data_dir / 'annotations.sqlite'}", data_dir, model=shared_model(),
                          embedding_dir=shared_embedding_dir(), **kwargs)
        credentials = dict(built.credentials)
        for name in readers:
            built.service.store.create_reader(name, PASSWORD, role="reader")
            credentials[name] = PASSWORD
        built.service.store.create_reader("boss", PASSWORD, role="admin")
        credentials["boss"] = PASSWORD
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(built.app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 60
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.05)
        if wait_triage and built.service.background:
            built.service.background.wait(900)
        return cls(f"http://127.0.0.1:{port}", built.service, server, thread, credentials)

    def login(self, name: str, password: str | None = None) -> Any:
        import requests

        http = requests.Session()
        response = http.post(f"{self.url}/api/v1/login",
                             json={"username": name, "password": password or self.credentials[name]}, timeout=30)
        response.raise_for_status()
        return http

    def gradio_client(self, http: Any) -> Any:
        from gradio_client import Client

        cookie = "; ".join(f"{k}={v}" for k, v in http.cookies.items())
        return Client(f"{self.url}/ui/", headers={"Cookie": cookie}, verbose=False)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
        self.service.close()
        self.service.store.close()


START_DEADLINE_S = 180.0


@dataclass
class AppProcess:
    """``python launch.py app`` as a real child process on one database and data folder, for restart and crash
    tests: ``kill`` sends SIGKILL (nothing is flushed or closed), ``start`` waits until the login page answers."""

    db_url: str
    data: Path
    demo: bool = False
    port: int = field(default_factory=free_port)
    process: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        import os
        import subprocess
        import sys

        repo = Path(__file__).resolve().parents[1]
        command = [sys.executable, "launch.py", "app", "--db", self.db_url, "--data", str(self.data),
                   "--port", str(self.port), "--torch-threads", "1", *([] if self.demo else ["--no-demo"])]
        self.data.mkdir(parents=True, exist_ok=True)
        with open(self.data / "server.log", "a") as log:
            self.process = subprocess.Popen(command, cwd=repo, stdout=log, stderr=subprocess.STDOUT,
                                            env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"})
        self._wait_ready()

    def _wait_ready(self) -> None:
        import requests

        deadline = time.monotonic() + START_DEADLINE_S
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"the app exited while starting\n{self.log()}")
            try:
                if requests.get(f"{self.url}/login", timeout=2).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.1)  # the readiness poll's interval, not a wait for a result
        raise RuntimeError(f"the app did not answer within {START_DEADLINE_S} s\n{self.log()}")

    def log(self) -> str:
        path = self.data / "server.log"
        return path.read_text()[-4000:] if path.exists() else ""

    def kill(self) -> None:
        import signal

        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)
        self.process = None

    def restart(self) -> None:
        self.kill()
        self.start()
