"""``python launch.py [app] [--db URL] [--data DIR] [--checkpoint PATH] [--host H] [--port P]`` — start the web app.

One FastAPI application serves the login page, the lean click routes (:mod:`app.routes`) and, mounted at ``/ui``, the
Gradio UI (:mod:`app.ui`) with an ``auth_dependency`` on the same session cookie. On first run the embedded SQLite
database is created in the data folder, the demo dataset of ``assets/demo/`` is imported, first accounts are created
(passwords printed once and saved in ``DATA/first_run_credentials.txt``) and the triage of the worklist starts in the
background.
"""
from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO_ROOT / "data"
MAX_UPLOAD_MB = 64

log = logging.getLogger("biascare.app")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="launch.py app", description="Start the annotation / reader-study web app.")
    parser.add_argument("--db", help="database URL (default: sqlite:///DATA/annotations.sqlite; "
                                     "or postgresql+psycopg://user@host/db)")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="data folder: database, embedding cache, uploads, "
                                                                  "exports (default: ./data)")
    parser.add_argument("--checkpoint", default=None, help="model checkpoint (.safetensors; default: the shipped one, "
                                                           "or stock LiteMedSAM while it does not exist)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860; 0 = any free port)")
    parser.add_argument("--no-demo", action="store_true", help="do not import the demo dataset on first run")
    parser.add_argument("--idle-seconds", type=float, default=60.0, help="no interaction for this long counts as idle")
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="intra-op threads for the model (default: all CPU cores; use 1 on a CPU shared "
                             "with other heavy jobs)")
    parser.add_argument("--max-upload-mb", type=int, default=MAX_UPLOAD_MB, help="upload size limit per file")
    parser.add_argument("--public-url", default=None,
                        help="the URL users reach the app at behind a reverse proxy (e.g. https://reader.example.org): "
                             "its origin is the one state-changing requests must come from")
    parser.add_argument("--secure-cookies", action="store_true",
                        help="send cookies only over HTTPS (set this behind a TLS-terminating proxy)")
    parser.add_argument("--allowed-origin", action="append", default=[], metavar="ORIGIN",
                        help="another origin allowed to call the API with credentials (repeatable; none by default)")
    return parser.parse_args(argv)


@dataclass
class Built:
    app: Any
    service: Any
    credentials: dict[str, str]


def build_app(db_url: str, data_dir: Path, checkpoint: str | None = None, *, demo: bool = True,
              idle_seconds: float = 60.0, background: bool = True, model: Any = None,
              max_upload_mb: int = MAX_UPLOAD_MB, embedding_dir: Path | None = None,
              torch_threads: int | None = None, security: Any = None) -> Built:
    """The FastAPI app with everything mounted (also used by the tests and the bench).

    ``torch_threads``: intra-op threads for the model (default: all CPU cores). Measured on an idle 2-core machine
    (bench/RESULTS.md): click handler p50 84 ms with 2 threads vs 117 ms with 1. On a CPU shared with other heavy jobs,
    one thread beats oversubscribing the cores (decoder 120 ms with 1 thread vs 300–1700 ms with 2 on 2 busy cores).
    """
    import torch
    torch.set_num_threads(torch_threads or os.cpu_count() or 1)
    import gradio as gr
    from fastapi import FastAPI

    from annotations_db.store import Store
    from app.demo import ensure_accounts, import_demo
    from app.routes import UI_PATH, build_router, install_ui_guard
    from app.service import SESSION_COOKIE, AppService
    from app.ui import build_ui, css, head_html

    from app.security import SecuritySettings, UploadRegistry, install

    data_dir = private_dir(Path(data_dir))
    security = security or SecuritySettings(max_upload_bytes=max_upload_mb * 1024 * 1024)
    private_sqlite_file(db_url)
    store = Store.open(db_url)
    if demo:
        import_demo(store)
    credentials = ensure_accounts(store, data_dir)
    from core_model.model import DEFAULT_CHECKPOINT, build_model
    if model is None:
        model = build_model(checkpoint if checkpoint else DEFAULT_CHECKPOINT)
    service = AppService(store, model, data_dir, idle_seconds=idle_seconds, background=background,
                         max_upload_bytes=max_upload_mb * 1024 * 1024, embedding_dir=embedding_dir)
    from app.loop import RegistryWatcher, adopt_at_start
    adopt_at_start(service, checkpoint or DEFAULT_CHECKPOINT)  # the registry's checkpoint in use wins (app.loop)
    service.registry_watcher = RegistryWatcher(service)
    if service.background:
        service.background.triage_missing()

    app = FastAPI(title="BiasCare reader", docs_url=None, redoc_url=None, openapi_url=None)
    app.include_router(build_router(service, secure_cookie=security.secure_cookies))
    install_ui_guard(app, service)
    blocks = build_ui(service, checkpoint)

    def auth_dependency(request: Any) -> str | None:
        return service.reader_name(request.cookies.get(SESSION_COOKIE))

    app = gr.mount_gradio_app(app, blocks, path=UI_PATH, auth_dependency=auth_dependency, head=head_html(), css=css(),
                              max_file_size=f"{max_upload_mb}mb", footer_links=[], ssr_mode=False,
                              allowed_paths=[], blocked_paths=[str(data_dir.resolve()), str(REPO_ROOT)])
    blocks.has_launched = True  # Gradio's own input-file check (uploads only) is skipped until a Blocks "launched"
    service.uploads = UploadRegistry()
    install(app, security, is_admin=lambda token: _is_admin(service, token), registry=service.uploads,
            cookie=SESSION_COOKIE)
    app.state.biascare = service
    return Built(app, service, credentials)


def _is_admin(service: Any, token: str | None) -> bool:
    from app.service import AppError
    try:
        return bool(service.session(token).reader.is_admin)
    except AppError:
        return False


def private_dir(path: Path) -> Path:
    """The data folder, readable by the app's user only (0700): it holds patient identities and password hashes."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def private_sqlite_file(db_url: str) -> None:
    """Create an SQLite database file as 0600 before SQLite does (its journal files take the same mode)."""
    from sqlalchemy.engine import make_url

    url = make_url(db_url)
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return
    path = Path(url.database)
    path.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
    path.chmod(0o600)


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

    data_dir = Path(args.data).expanduser().resolve()
    db_url = args.db or f"sqlite:///{data_dir / 'annotations.sqlite'}"
    try:
        from app.security import SecuritySettings

        os.umask(0o077)  # everything the app writes (uploads, exports, caches, lock files) is its user's only
        security = SecuritySettings(public_url=args.public_url, allowed_origins=tuple(args.allowed_origin),
                                    secure_cookies=args.secure_cookies,
                                    max_upload_bytes=args.max_upload_mb * 1024 * 1024)
        built = build_app(db_url, data_dir, args.checkpoint, demo=not args.no_demo, idle_seconds=args.idle_seconds,
                          max_upload_mb=args.max_upload_mb, torch_threads=args.torch_threads, security=security)
    except Exception as error:  # a clear one-line message for the usual start-up failures
        print(f"error: could not start the app: {type(error).__name__}: {error}", file=sys.stderr)
        return 2
    port = args.port or _free_port(args.host)
    shown_host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    url = f"http://{shown_host}:{port}/"
    if built.credentials:
        print("First run: accounts created (saved in "
              f"{data_dir / 'first_run_credentials.txt'}):", flush=True)
        for name, password in built.credentials.items():
            print(f"  {name}  {password}", flush=True)
    import uvicorn

    config = uvicorn.Config(built.app, host=args.host, port=port, log_level="warning")
    server = uvicorn.Server(config)

    def announce() -> None:
        while not server.started:
            threading.Event().wait(0.05)
        print(f"BiasCare reader running at {url}  (Ctrl+C to stop)", flush=True)

    threading.Thread(target=announce, daemon=True).start()
    try:
        server.run()
    finally:
        built.service.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
