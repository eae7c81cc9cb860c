"""The app's own same-origin policy and request limits, as ASGI middleware in front of every route (Gradio's too).

* **Same origin.** A state-changing request (POST, PUT, PATCH, DELETE) that carries an ``Origin`` (or, without it, a
  ``Referer``) from anywhere but the app's own origin — the request's own scheme://host, or ``--public-url`` behind a
  reverse proxy — or an allow-listed one is refused with 403 before any route runs. Browsers send ``Origin`` on every
  cross-origin POST, so a page served from another port or host cannot make a logged-in reader's browser act. Gradio's
  credentialed CORS is switched off by installing Starlette's CORS middleware with the allow-list (empty by default):
  no other origin can read an answer either.
* **Size and shape.** A body larger than its route's limit is answered 413 from its ``Content-Length`` alone (never
  read) or as soon as a streamed body passes the limit; JSON nested deeper than ``max_json_depth`` is answered 400
  before any parser sees it.
* **Files.** Gradio's upload and file routes (``/ui/gradio_api/upload``, ``…/file=``) serve administrators only (the
  only ones with uploads and exports); every upload is recorded against the login that made it, and
  :func:`uploaded_by` is how the import decides that a path is an upload of this login (never a caller-given path).
"""
from __future__ import annotations

import hashlib
import json
import secrets
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
GRADIO_API = "/ui/gradio_api/"
UPLOAD_PATH = "/ui/gradio_api/upload"
FILE_PREFIX = "/ui/gradio_api/file="


@dataclass(frozen=True)
class SecuritySettings:
    """``public_url``: the address users reach the app at (behind a TLS proxy: ``https://reader.example.org``);
    ``allowed_origins``: other origins that may call the API (none by default); ``secure_cookies``: cookies only over
    HTTPS; body limits in bytes; ``max_json_depth``: nesting of arrays/objects."""

    public_url: str | None = None
    allowed_origins: tuple[str, ...] = ()
    secure_cookies: bool = False
    max_body_bytes: int = 1024 * 1024
    max_upload_bytes: int = 64 * 1024 * 1024
    max_json_depth: int = 32

    def body_limit(self, path: str) -> int:
        return self.max_upload_bytes + 1024 * 1024 if path == UPLOAD_PATH else self.max_body_bytes


def origin_of(url: str) -> str:
    """scheme://host[:port] of a URL, lower case (the form browsers send in ``Origin``)."""
    parts = urlsplit(url.strip())
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}" if parts.scheme and parts.netloc else ""


# ----------------------------------------------------------------------------------------------- responses
async def _refuse(send: Send, status: int, message: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"error": message}).encode()
    extra = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), *extra]})
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


# ----------------------------------------------------------------------------------------------- same origin
class SameOriginMiddleware:
    """403 for a state-changing request from another origin (see the module docstring)."""

    def __init__(self, app: ASGIApp, settings: SecuritySettings) -> None:
        self.app = app
        self.settings = settings
        self.allowed = {origin_of(o) for o in settings.allowed_origins if origin_of(o)}
        if settings.public_url:
            self.allowed.add(origin_of(settings.public_url))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in UNSAFE_METHODS and not self._same_origin(scope):
            await _refuse(send, 403, "cross-origin request refused: this app only accepts changes from its own pages")
            return
        await self.app(scope, receive, send)

    def _same_origin(self, scope: Scope) -> bool:
        claimed = _header(scope, b"origin")
        if claimed is None:
            referer = _header(scope, b"referer")
            if referer is None:
                return True  # not sent by a browser page (scripts, gradio_client): they hold no victim's cookie
            claimed = origin_of(referer)
        claimed = claimed.strip().lower()
        return claimed in self.allowed or claimed == self._own_origin(scope)

    def _own_origin(self, scope: Scope) -> str:
        host = (_header(scope, b"host") or "").lower()
        return f"{scope.get('scheme', 'http')}://{host}" if host else ""


# ----------------------------------------------------------------------------------------------- limits
class RequestLimitMiddleware:
    """413 for bodies over the route's limit, 400 for JSON nested too deep (see the module docstring)."""

    def __init__(self, app: ASGIApp, settings: SecuritySettings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in UNSAFE_METHODS:
            await self.app(scope, receive, send)
            return
        limit = self.settings.body_limit(scope["path"])
        declared = _header(scope, b"content-length")
        if declared is not None and (not declared.strip().isdigit() or int(declared) > limit):
            await _refuse(send, 413, f"request body over the limit of {limit} bytes")
            return
        if "json" not in (_header(scope, b"content-type") or "").lower():
            await self._streamed(scope, receive, send, limit)
            return
        body = await _read_body(receive, limit)
        if body is None:
            await _refuse(send, 413, f"request body over the limit of {limit} bytes")
            return
        if json_depth(body) > self.settings.max_json_depth:
            await _refuse(send, 400, f"JSON nested deeper than {self.settings.max_json_depth} levels")
            return
        await self.app(scope, _replay(body), send)

    async def _streamed(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        """A body without a usable length (chunked): counted as it arrives, 413 once it passes the limit."""
        started = False

        async def tracking(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)
        try:
            await self.app(scope, _counting(receive, limit), tracking)
        except BodyTooLarge as error:
            if not started:
                await _refuse(send, 413, str(error))


class BodyTooLarge(Exception):
    """A streamed body passed its limit (the server answers 413 and drops the connection)."""


def _counting(receive: Receive, limit: int) -> Receive:
    """``receive`` that fails once more than ``limit`` bytes of body have arrived."""
    seen = 0

    async def counted() -> dict[str, Any]:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge(f"request body over the limit of {limit} bytes")
        return message
    return counted


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes) -> Receive:
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}
    return receive


def json_depth(raw: bytes) -> int:
    """The deepest nesting of arrays/objects in JSON text (strings skipped), without parsing it."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


# ----------------------------------------------------------------------------------------------- files
@dataclass
class UploadRegistry:
    """Which login uploaded which file (Gradio's upload route answers with the stored paths)."""

    _by_token: dict[str, set[str]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, token: str, paths: list[str]) -> None:
        with self._lock:
            self._by_token.setdefault(token, set()).update(str(Path(p).resolve()) for p in paths)

    def owns(self, token: str, path: str | Path) -> bool:
        with self._lock:
            return str(Path(path).resolve()) in self._by_token.get(token, set())


class FileRouteMiddleware:
    """Gradio's upload and file routes for administrators only; uploads recorded against their login."""

    def __init__(self, app: ASGIApp, is_admin: Callable[[str | None], bool], registry: UploadRegistry,
                 cookie: str) -> None:
        self.app = app
        self.is_admin = is_admin
        self.registry = registry
        self.cookie = cookie

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path.startswith(GRADIO_API) and scope["method"] == "POST" and path != UPLOAD_PATH:
            await self._named_files_only(scope, receive, send)
            return
        if not (path == UPLOAD_PATH or path.startswith(FILE_PREFIX)):
            await self.app(scope, receive, send)
            return
        token = self._token(scope)
        if not self.is_admin(token):
            await _refuse(send, 404, "not found")
            return
        if path != UPLOAD_PATH:
            await self.app(scope, receive, send)
            return
        await self.app(scope, receive, self._recording(send, token or ""))

    async def _named_files_only(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A Gradio event may name files only among this login's own uploads: Gradio, mounted in FastAPI, would
        otherwise copy any server path a caller names into its cache before a handler could refuse it."""
        body = await _read_body(receive, 64 * 1024 * 1024)  # the limits middleware has bounded it already
        token = self._token(scope) or ""
        foreign = [p for p in _file_paths(_loads(body or b"")) if not self.registry.owns(token, p)]
        if foreign:
            await _refuse(send, 403, f"refused: {Path(foreign[0]).name} is not a file uploaded through this page")
            return
        await self.app(scope, _replay(body or b""), send)

    def _token(self, scope: Scope) -> str | None:
        raw = _header(scope, b"cookie")
        if not raw:
            return None
        morsel = SimpleCookie(raw).get(self.cookie)
        return morsel.value if morsel else None

    def _recording(self, send: Send, token: str) -> Send:
        chunks: list[bytes] = []

        async def recording(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    self._remember(token, b"".join(chunks))
            await send(message)
        return recording

    def _remember(self, token: str, body: bytes) -> None:
        try:
            paths = json.loads(body)
        except ValueError:
            return
        if isinstance(paths, list):
            self.registry.record(token, [p for p in paths if isinstance(p, str)])


def _loads(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


def _file_paths(value: Any) -> list[str]:
    """Every ``path`` of a Gradio FileData object inside a request payload."""
    found: list[str] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            meta = item.get("meta")
            if isinstance(item.get("path"), str) and isinstance(meta, dict) and meta.get("_type") == "gradio.FileData":
                found.append(item["path"])
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


# ----------------------------------------------------------------------------------------------- form tokens
CSRF_COOKIE = "biascare_csrf"


def new_form_token() -> str:
    """A sign-in form's token: sent in the page and in a SameSite=Strict cookie; a POST must carry both, equal."""
    return secrets.token_urlsafe(24)


def tokens_match(expected: str | None, given: Any) -> bool:
    return bool(expected) and isinstance(given, str) and secrets.compare_digest(expected, given)


def sign_out_token(session_token: str) -> str:
    """The sign-out form's token, derived from the login's own secret token (another page cannot know it)."""
    return hashlib.sha256(f"sign-out:{session_token}".encode()).hexdigest()[:32]


def install(app: Any, settings: SecuritySettings, *, is_admin: Callable[[str | None], bool],
            registry: UploadRegistry, cookie: str) -> None:
    """Add the policy to a FastAPI/Starlette app (outermost last: limits, then origin, then files)."""
    from starlette.middleware.cors import CORSMiddleware

    # Gradio's own CORS middleware steps aside when the parent app configures Starlette's: credentialed CORS only
    # for the allow-list (empty by default)
    app.add_middleware(CORSMiddleware, allow_origins=list(settings.allowed_origins), allow_credentials=True,
                       allow_methods=["GET", "POST"], allow_headers=["content-type"])
    app.add_middleware(FileRouteMiddleware, is_admin=is_admin, registry=registry, cookie=cookie)
    app.add_middleware(SameOriginMiddleware, settings=settings)
    app.add_middleware(RequestLimitMiddleware, settings=settings)
