"""The lean HTTP routes beside the Gradio UI: login/logout, the click path, base image, client events, admin data.

Same authentication as the Gradio UI: the ``biascare_session`` cookie (HttpOnly, SameSite=Lax) set at login; the
Gradio app is mounted with an ``auth_dependency`` that reads the same cookie. JSON POSTs only (a cross-site form cannot
send ``application/json`` without a CORS preflight, and the cookie is not sent on cross-site subrequests).

Click path: ``POST /api/v1/click {nonce, x, y, positive}`` → ``image/png`` (the mask layer at display resolution),
with ``Server-Timing``-style headers ``X-Server-Ms`` (handler total), ``X-Model-Ms`` (refinement pass),
``X-Encode-Ms`` (downsampling + PNG), ``X-Clicks`` and ``X-Area``.
"""
from __future__ import annotations

import html
import io
import json
import time
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from annotations_db.errors import AccessDenied, NotFound
from app.login_guard import Throttled
from app.render import MASK_RUNS_TYPE
from app.security import CSRF_COOKIE, new_form_token, sign_out_token, tokens_match
from app.service import (SESSION_COOKIE, AppError, AppService, Forbidden, LayerResult, Session, Unauthorized,
                         view_payload)

UI_PATH = "/ui"

LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>BiasCare reader — sign in</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font-family: system-ui, sans-serif; background: #111827; color: #e5e7eb; display: flex; min-height: 100vh;
       align-items: center; justify-content: center; margin: 0; }}
form {{ background: #1f2937; padding: 2rem 2.5rem; border-radius: 10px; width: 20rem; }}
h1 {{ font-size: 1.3rem; margin: 0 0 1.2rem; }} label {{ display: block; margin: .8rem 0 .3rem; font-size: .9rem; }}
input {{ width: 100%; box-sizing: border-box; padding: .55rem; border-radius: 6px; border: 1px solid #4b5563;
        background: #111827; color: #f9fafb; }}
button {{ margin-top: 1.3rem; width: 100%; padding: .6rem; border: 0; border-radius: 6px; background: #2563eb;
         color: white; font-weight: 600; cursor: pointer; }}
.error {{ color: #fca5a5; margin-top: .8rem; font-size: .9rem; }} .note {{ color: #9ca3af; font-size: .8rem; }}
</style></head><body>
<form method="post" action="/login" id="login-form"><input type="hidden" name="csrf" value="{csrf}">
<h1>BiasCare reader</h1>
<label for="username">Reader</label><input id="username" name="username" autocomplete="username" autofocus required>
<label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="current-password" required>
<button type="submit" id="login-button">Sign in</button>
{error}
<p class="note">Research tool, not for clinical use.</p>
</form></body></html>"""


def _login_page(error: str = "", status: int = 200, headers: dict[str, str] | None = None,
                secure: bool = False) -> HTMLResponse:
    """The sign-in page with a fresh form token (also set as a SameSite=Strict cookie: login CSRF protection)."""
    token = new_form_token()
    shown = f'<p class="error" id="login-error">{html.escape(error)}</p>' if error else ""
    response = HTMLResponse(LOGIN_PAGE.format(error=shown, csrf=token), status_code=status, headers=headers)
    response.set_cookie(CSRF_COOKIE, token, httponly=True, samesite="strict", secure=secure, path="/login",
                        max_age=3600)
    return response


def _token(request: Request) -> str | None:
    return request.cookies.get(SESSION_COOKIE)


def _error(error: Exception) -> JSONResponse:
    if isinstance(error, AppError):
        return JSONResponse({"error": str(error)}, status_code=error.status)
    if isinstance(error, AccessDenied):
        return JSONResponse({"error": str(error)}, status_code=403)
    if isinstance(error, NotFound):
        return JSONResponse({"error": str(error)}, status_code=404)
    raise error


def _layer_response(result: LayerResult, request: Request) -> Response:
    """A mask layer with its headers (app/VIEWER_API.md): timings, clicks, area, the slice and its prompts; as row
    runs when the client accepts them (the viewer), else as a palette PNG."""
    media_type = MASK_RUNS_TYPE if MASK_RUNS_TYPE in request.headers.get("accept", "") else "image/png"
    body = result.encoded(media_type)
    headers = {"Cache-Control": "no-store", "Vary": "Accept", "X-Server-Ms": f"{result.total_ms:.2f}",
               "X-Model-Ms": f"{result.model_ms:.2f}", "X-Encode-Ms": f"{result.encode_ms:.2f}",
               "X-Server-Cpu-Ms": f"{result.cpu_ms:.2f}", "X-Clicks": str(result.clicks), "X-Area": str(result.area),
               "X-Slice": "" if result.slice is None else str(result.slice), "X-Object": str(result.object)}
    if result.prompts is not None:
        headers["X-Prompts"] = json.dumps(result.prompts, separators=(",", ":"))
    return Response(body, media_type=media_type, headers=headers)


async def _json(request: Request) -> dict[str, Any]:
    if not request.headers.get("content-type", "").startswith("application/json"):
        raise AppError("send JSON (Content-Type: application/json)")
    try:
        body = await request.json()
    except ValueError:
        raise AppError("the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise AppError("the request body must be a JSON object")
    return body


def build_router(service: AppService, *, secure_cookie: bool = False) -> APIRouter:
    router = APIRouter()

    def set_cookie(response: Response, session: Session) -> None:
        response.set_cookie(SESSION_COOKIE, session.token, httponly=True, samesite="lax", secure=secure_cookie,
                            path="/", max_age=int(service.session_absolute_s))

    def current(request: Request) -> Session:
        return service.session(_token(request))

    async def _json_route(request: Request, action) -> Response:  # type: ignore[no-untyped-def]
        """Parse the session and JSON body, run ``action(session, body)`` off the event loop (it waits for its
        events' commit) and answer its result as JSON; refusals keep their status (409 for a stale view)."""
        try:
            session, body = current(request), await _json(request)
            return JSONResponse(await run_in_threadpool(action, session, body))
        except AppError as error:
            return _error(error)

    # -------------------------------------------------------------- login / logout
    @router.get("/", include_in_schema=False)
    def root(request: Request) -> Response:
        target = f"{UI_PATH}/" if service.reader_name(_token(request)) else "/login"
        return RedirectResponse(target, status_code=303)

    @router.get("/login", include_in_schema=False)
    def login_page() -> HTMLResponse:
        return _login_page(secure=secure_cookie)

    async def sign_in(request: Request, name: Any, password: Any) -> Session:
        """:meth:`AppService.login` on a worker thread (its database reads and the hash never block the event loop),
        with the socket peer as the client address (``X-Forwarded-For`` is not trusted: see app.login_guard)."""
        address = request.client.host if request.client else None
        return await run_in_threadpool(service.login, str(name or ""), str(password or ""),
                                       request.headers.get("user-agent"), address)

    @router.post("/login", include_in_schema=False)
    async def login_form(request: Request) -> Response:
        form = await request.form()
        if not tokens_match(request.cookies.get(CSRF_COOKIE), form.get("csrf")):
            return _login_page("The sign-in form expired or did not come from this site; please sign in again.",
                               403, secure=secure_cookie)
        try:
            session = await sign_in(request, form.get("username"), form.get("password"))
        except Unauthorized:
            return _login_page("Unknown reader or wrong password.", 401, secure=secure_cookie)
        except Throttled as error:
            return _login_page(f"{str(error).capitalize()}.", error.status, {"Retry-After": str(error.retry_after)},
                               secure=secure_cookie)
        response = RedirectResponse(f"{UI_PATH}/", status_code=303)
        set_cookie(response, session)
        return response

    @router.post("/api/v1/login")
    async def login_json(request: Request) -> Response:
        """``{username, password}`` → ``{reader, role}`` and the cookie; 401 wrong, 429/503 + ``Retry-After`` while
        the name or the address must wait (or the hashing queue is full)."""
        try:
            body = await _json(request)
            session = await sign_in(request, body.get("username"), body.get("password"))
        except AppError as error:
            return _error(error)
        except Throttled as error:
            return JSONResponse({"error": str(error), "retry_after": error.retry_after}, status_code=error.status,
                                headers={"Retry-After": str(error.retry_after)})
        response = JSONResponse({"reader": session.reader.name, "role": session.reader.role})
        set_cookie(response, session)
        return response

    @router.post("/logout", include_in_schema=False)
    async def logout(request: Request) -> Response:
        """POST only (a GET is 405) with the sign-out form's token: another page cannot sign the reader out."""
        token = _token(request)
        form = await request.form()
        if token and not tokens_match(sign_out_token(token), form.get("csrf")):
            return JSONResponse({"error": "sign-out must come from the app's own page"}, status_code=403)
        await run_in_threadpool(service.logout, token)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    @router.get("/api/v1/me")
    def me(request: Request) -> Response:
        try:
            session = current(request)
        except AppError as error:
            return _error(error)
        view = session.view
        return JSONResponse({"reader": session.reader.name, "role": session.reader.role,
                             "view": None if view is None else view_payload(view)})

    @router.post("/api/v1/resume")
    async def resume(request: Request) -> Response:
        """Reopen the case this reader has open (after a reload, a new login or a server restart), restored from its
        events; ``{"view": null}`` when there is none."""
        def action(session: Session, body: dict[str, Any]) -> dict[str, Any]:
            view = service.resume(session)
            return {"view": None if view is None else view_payload(view)}
        return await _json_route(request, action)

    # -------------------------------------------------------------- the viewer
    @router.get("/api/v1/view/{nonce}/base.png")
    def base_png(nonce: str, request: Request) -> Response:
        try:
            data = service.base_png(current(request), nonce)
        except AppError as error:
            return _error(error)
        return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    @router.get("/api/v1/view/{nonce}/pixels")
    def pixels(nonce: str, request: Request, slice: str | None = None) -> Response:
        """The view's samples at full bit depth on the display grid, gzip'd (``app/VIEWER_API.md``); a sync route
        (FastAPI's thread pool) that never takes the session lock a model pass holds."""
        started = time.perf_counter()
        try:
            block = service.pixels(current(request), nonce, slice)
        except AppError as error:
            return _error(error)
        headers = {**block.headers(), "X-Server-Ms": f"{(time.perf_counter() - started) * 1000:.2f}"}
        return Response(block.body, media_type="application/octet-stream", headers=headers)

    @router.get("/api/v1/view/{nonce}/layer.png")
    def layer_png(nonce: str, request: Request, slice: str | None = None,  # noqa: A002 (the contract)
                  object: str | None = None) -> Response:  # noqa: A002
        try:
            return _layer_response(service.current_layer(current(request), nonce,
                                                         slice if slice not in (None, "") else None,
                                                         _object_query(object)), request)
        except AppError as error:
            return _error(error)

    async def _layer_route(request: Request, action) -> Response:
        """Parse the session and JSON body, then run ``action(session, body)`` (a layer-returning service call)."""
        try:
            session, body = current(request), await _json(request)
        except AppError as error:
            return _error(error)
        return await _run_layer(lambda: action(session, body), request)

    @router.post("/api/v1/click")
    async def click(request: Request) -> Response:
        return await _layer_route(request, lambda session, body: service.click(
            session, body.get("nonce"), body.get("x"), body.get("y"), bool(body.get("positive", True)),
            body.get("slice"), body.get("object")))

    # the mask tools of app/VIEWER_API.md: each answers the slice's layer (``slice`` optional: the slice shown)
    @router.post("/api/v1/box")
    async def box(request: Request) -> Response:
        return await _layer_route(request, lambda session, body: service.box(
            session, body.get("nonce"), body.get("x0"), body.get("y0"), body.get("x1"), body.get("y1"),
            body.get("slice"), body.get("object")))

    @router.post("/api/v1/stroke")
    async def stroke(request: Request) -> Response:
        return await _layer_route(request, lambda session, body: service.stroke(
            session, body.get("nonce"), body.get("points"), body.get("radius"), body.get("erase", False),
            body.get("slice"), body.get("object")))

    @router.post("/api/v1/cleanup")
    async def cleanup(request: Request) -> Response:
        return await _layer_route(request, lambda session, body: service.cleanup(
            session, body.get("nonce"), body.get("min_island_px"), body.get("fill_holes"), body.get("slice"),
            body.get("object")))

    @router.post("/api/v1/carry")
    async def carry(request: Request) -> Response:
        return await _layer_route(request, lambda session, body: service.carry(
            session, body.get("nonce"), body.get("from"), body.get("to"), body.get("object")))

    @router.post("/api/v1/measure")
    async def measure(request: Request) -> Response:
        return await _json_route(request, lambda session, body: service.measure(
            session, body.get("nonce"), body.get("x0"), body.get("y0"), body.get("x1"), body.get("y1"),
            body.get("slice")))

    def on_view(method, respond):  # type: ignore[no-untyped-def]
        """A route whose body is ``{nonce}``: ``method(session, nonce)`` answered by ``respond`` (JSON or layer)."""
        async def route(request: Request) -> Response:
            return await respond(request, lambda session, body: method(session, body.get("nonce")))
        return route

    def on_slice(method, respond):  # type: ignore[no-untyped-def]
        """A route whose body is ``{nonce, slice?, object?}``: ``method(session, nonce, slice, object)``."""
        async def route(request: Request) -> Response:
            return await respond(request, lambda session, body: method(session, body.get("nonce"),
                                                                         body.get("slice"), body.get("object")))
        return route

    for name, method, respond in (("undo", service.undo, _layer_route), ("reset", service.reset, _layer_route),
                                  ("accept", service.accept, _json_route)):
        router.add_api_route(f"/api/v1/{name}", on_slice(method, respond), methods=["POST"], name=name)
    for name, method, respond in (("submit", service.submit_and_next, _json_route),  # then opens what comes next
                                  ("skip", service.skip, _json_route), ("pause", service.pause, _json_route)):
        router.add_api_route(f"/api/v1/{name}", on_view(method, respond), methods=["POST"], name=name)

    @router.post("/api/v1/remove_object")
    async def remove_object(request: Request) -> Response:
        """``{nonce, object: {id}}`` deletes an object of the answer → the objects left."""
        return await _json_route(request, lambda session, body: service.remove_object(
            session, body.get("nonce"), body.get("object")))

    @router.post("/api/v1/slice")
    async def show_slice(request: Request) -> Response:
        return await _json_route(request, lambda session, body: service.show_slice(session, body.get("nonce"),
                                                                                   body.get("index")))

    @router.post("/api/v1/event")
    async def event(request: Request) -> Response:
        def action(session: Session, body: dict[str, Any]) -> dict[str, Any]:
            payload = body.get("payload") if isinstance(body.get("payload"), dict) else {}
            service.client_event(session, body.get("nonce"), str(body.get("kind", "")), payload)
            return {"ok": True}
        return await _json_route(request, action)

    @router.post("/api/v1/open")
    async def open_view(request: Request) -> Response:
        """``{case: pseudo id}`` opens a case for free annotation, ``{study: "next"}`` the reader's next study read
        (``{"view": null}`` when none is open to them now)."""
        def action(session: Session, body: dict[str, Any]) -> dict[str, Any]:
            if body.get("study") == "next":
                view = service.open_assignment(session)
            elif isinstance(body.get("case"), str):
                view = service.open_case(session, body["case"])
            else:
                raise AppError('name a case ({"case": id}) or the next study read ({"study": "next"})')
            return {"view": None if view is None else view_payload(view)}
        return await _json_route(request, action)

    @router.post("/api/v1/answer")
    async def answer(request: Request) -> Response:
        """``{nonce, positives: [class…], ratings: {class: int}}`` → the answer as recorded."""
        return await _json_route(request, lambda session, body: service.set_answer(
            session, body.get("nonce"), _strings(body.get("positives")), _mapping(body.get("ratings"))))

    # -------------------------------------------------------------- answers and admin data
    @router.get("/api/v1/answers")
    def answers(request: Request, reader: str | None = None) -> Response:
        try:
            session = current(request)
            rows = service.store.answers(session.reader, reader if reader else None)
        except (AppError, AccessDenied, NotFound) as error:
            return _error(error)
        return JSONResponse([{"id": a.id, "case_id": a.case_id, "assignment_id": a.assignment_id, "labels": a.labels,
                              "accepted_as_is": a.accepted_as_is} for a in rows])

    @router.get("/api/v1/admin/dashboard")
    def dashboard(request: Request, study: str | None = None) -> Response:
        from app.admin import dashboard_frame
        try:
            session = current(request)
            service.require_admin(session)
        except AppError as error:
            return _error(error)
        frame = dashboard_frame(service, study)  # NaN (no case of a class in an arm) → null, not invalid JSON
        return Response(frame.to_json(orient="records"), media_type="application/json")

    @router.get("/api/v1/admin/results.csv")
    def results_csv(request: Request, study: str | None = None) -> Response:
        from annotations_db.errors import ExportError
        from annotations_db.export import results_frame
        try:
            session = current(request)
            service.require_admin(session)
        except AppError as error:
            return _error(error)
        try:
            frame = results_frame(service.store, study)
        except ExportError as error:
            return JSONResponse({"error": str(error)}, status_code=404)
        buffer = io.StringIO()
        frame.to_csv(buffer, index=False)
        return Response(buffer.getvalue(), media_type="text/csv",
                        headers={"Content-Disposition": 'attachment; filename="results.csv"'})

    @router.get("/admin", include_in_schema=False)
    def admin_page(request: Request) -> Response:
        try:
            service.require_admin(current(request))
        except Unauthorized:
            return RedirectResponse("/login", status_code=303)
        except Forbidden as error:
            return JSONResponse({"error": str(error)}, status_code=403)
        return RedirectResponse(f"{UI_PATH}/?tab=admin", status_code=303)

    return router


def _object_query(value: str | None) -> dict[str, int] | None:
    """``?object=n`` of a layer request → ``{"id": n}`` (None: the default object); AppError for a non-integer."""
    if value in (None, ""):
        return None
    try:
        return {"id": int(value)}
    except ValueError:
        raise AppError(f"'object' must be an integer object id, not {value[:20]!r}") from None


def _strings(value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise AppError("positives must be a list of class names")
    return value


def _mapping(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise AppError("ratings must be an object {class: rating}")
    return value


async def _run_layer(fn, request: Request) -> Response:  # type: ignore[no-untyped-def]
    try:
        return _layer_response(await run_in_threadpool(fn), request)
    except AppError as error:
        return _error(error)


def install_ui_guard(app: FastAPI, service: AppService) -> None:
    """Unauthenticated page loads of the Gradio UI go to the login page (its API answers 401 by itself)."""

    @app.middleware("http")
    async def guard(request: Request, call_next):  # type: ignore[no-untyped-def]
        path = request.url.path
        if request.method == "GET" and path in (UI_PATH, f"{UI_PATH}/") and not service.reader_name(_token(request)):
            return RedirectResponse("/login", status_code=303)
        return await call_next(request)
