"""The app's same-origin policy, request limits, file routes and file modes, tried as an attacker would.

A real in-process server (uvicorn in a thread, real SQLite, the demo images); the cross-origin page is served by a
second real HTTP server on another port of 127.0.0.1 (same site, another origin) and opened in real Chromium while an
administrator is logged in to the app in the same browser. Raw sockets send bodies that lie about their size.
"""
from __future__ import annotations

import http.server
import os
import socket
import stat
import threading
import time
from pathlib import Path

import pytest
import requests

from app.testing import PASSWORD, AppProcess, LiveServer, free_port
from tests.browser_helpers import sign_in

ATTACK_PAGE = """<!doctype html><html><body>
<form id="csrf" method="post" action="{app}/login" target="sink">
  <input name="username" value="mallory"><input name="password" value="{password}"></form>
<iframe name="sink"></iframe>
<script>
window.results = {{}};
async function attempt(name, run) {{
  try {{ window.results[name] = await run(); }} catch (e) {{ window.results[name] = "blocked: " + e.name; }}
}}
(async () => {{
  await attempt("create_user", async () => {{
    const r = await fetch("{app}/ui/gradio_api/call/admin_create_user", {{method: "POST", credentials: "include",
      headers: {{"Content-Type": "application/json"}}, body: JSON.stringify({{data: ["mallory2", "{password}", "admin"]}})}});
    return "read: " + r.status + " " + (await r.text()).slice(0, 80);
  }});
  await attempt("simple_post", async () => {{
    const r = await fetch("{app}/api/v1/answer", {{method: "POST", credentials: "include", mode: "no-cors",
      headers: {{"Content-Type": "text/plain"}}, body: JSON.stringify({{nonce: "x", positives: []}})}});
    return "sent: " + r.type;
  }});
  await attempt("read_answers", async () => {{
    const r = await fetch("{app}/api/v1/answers", {{credentials: "include"}});
    return "read: " + r.status + " " + (await r.text()).slice(0, 80);
  }});
  document.getElementById("csrf").submit();
  window.results.done = true;
}})();
</script></body></html>"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    live = LiveServer.start(tmp_path_factory.mktemp("security-web") / "data")
    yield live
    live.stop()


def _serve_page(html: str) -> tuple[str, http.server.ThreadingHTTPServer]:
    body = html.encode()

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    port = free_port()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), Page)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{port}/", httpd


def test_security_a_page_from_another_origin_cannot_change_or_read_anything(server, browser):
    store = server.service.store
    store.create_reader("mallory", PASSWORD, role="reader")
    readers_before = {r.name for r in store.readers()}
    url, httpd = _serve_page(ATTACK_PAGE.format(app=server.url, password=PASSWORD))
    try:
        context = browser.new_context()
        admin = context.new_page()
        sign_in(admin, server.url, "boss")
        cookie = {c["name"]: c["value"] for c in context.cookies()}["biascare_session"]
        attacker = context.new_page()
        with attacker.expect_response(lambda r: r.url == f"{server.url}/login", timeout=60_000) as form_answer:
            attacker.goto(url)
        attacker.wait_for_function("window.results && window.results.done === true", timeout=60_000)
        results = attacker.evaluate("window.results")
    finally:
        httpd.shutdown()
    assert results["create_user"].startswith("blocked"), results
    assert results["read_answers"].startswith("blocked"), results
    assert {r.name for r in store.readers()} == readers_before, "a cross-origin page created an account"
    assert form_answer.value.status == 403, "the cross-site login form was accepted"
    assert {c["name"]: c["value"] for c in context.cookies()}["biascare_session"] == cookie, \
        "the cross-site login form replaced the admin's session (login CSRF)"
    context.close()


def test_security_state_changes_need_the_apps_own_origin(server):
    http = server.login("ada")
    own = server.url
    for origin in ("http://127.0.0.1:9", "null", "http://evil.example"):
        refused = http.post(f"{own}/api/v1/answer", json={"nonce": "x"}, headers={"Origin": origin}, timeout=30)
        assert refused.status_code == 403, origin
    by_referer = http.post(f"{own}/api/v1/answer", json={"nonce": "x"},
                           headers={"Referer": "http://127.0.0.1:9/page"}, timeout=30)
    assert by_referer.status_code == 403
    same = http.post(f"{own}/api/v1/answer", json={"nonce": "x"}, headers={"Origin": own}, timeout=30)
    assert same.status_code == 409, "the app's own page gets through to the route (which finds no open case)"
    preflight = requests.options(f"{own}/api/v1/answer", headers={"Origin": "http://127.0.0.1:9",
                                                                  "Access-Control-Request-Method": "POST"}, timeout=30)
    assert "access-control-allow-origin" not in {k.lower() for k in preflight.headers}
    gradio = requests.options(f"{own}/ui/gradio_api/queue/join", timeout=30,
                              headers={"Origin": "http://127.0.0.1:9", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in {k.lower() for k in gradio.headers}
    assert http.get(f"{own}/logout", timeout=30).status_code == 405


def _raw(port: int, head: str, body: bytes = b"", timeout: float = 30.0) -> tuple[int, float]:
    """Send a request by hand (its Content-Length may lie); (status, seconds to the answer)."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head.encode() + b"\r\n" + body)
        answer = sock.recv(4096).decode("latin-1")
    return int(answer.split()[1]), time.monotonic() - started


def test_security_oversized_and_malformed_bodies_never_reach_a_route(server):
    port = int(server.url.rsplit(":", 1)[1])
    for path in ("/api/v1/login", "/api/v1/click", "/ui/gradio_api/queue/join"):
        head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: 300000000\r\n")
        status, seconds = _raw(port, head, b"{}")
        assert status == 413 and seconds < 5, (path, status, seconds)  # answered from the header, nothing read
    http = server.login("ada")
    big = http.post(f"{server.url}/api/v1/event", json={"nonce": "x", "kind": "heartbeat", "payload": {"a": "b" * 5_000_000}},
                    timeout=60)
    assert big.status_code == 413
    deep = "[" * 100_000 + "]" * 100_000
    nested = http.post(f"{server.url}/api/v1/click", data=deep, headers={"Content-Type": "application/json"}, timeout=60)
    assert nested.status_code == 400 and "nested" in nested.json()["error"]
    view = http.post(f"{server.url}/api/v1/open", json={"case": server.service.store.cases()[0].pseudo_id},
                     timeout=120).json()["view"]
    for x in ("1" + "0" * 400, "1e400", "-1e400", "NaN"):
        raw = f'{{"nonce": "{view["nonce"]}", "x": {x}, "y": 5, "positive": true}}'
        response = http.post(f"{server.url}/api/v1/click", data=raw, headers={"Content-Type": "application/json"},
                             timeout=60)
        assert response.status_code == 400, (x, response.status_code, response.text)
    http.post(f"{server.url}/api/v1/pause", json={"nonce": view["nonce"]}, timeout=30).raise_for_status()
    assert requests.get(f"{server.url}/login", timeout=30).status_code == 200, "the server keeps serving"


def test_security_server_paths_are_refused_by_the_import_and_files_serve_admins_only(server, tmp_path, shared_data):
    secret = Path.home() / f"biascare-secret-{os.getpid()}.png"
    secret.write_bytes((shared_data / "cxr_lungs" / "images" / sorted(os.listdir(shared_data / "cxr_lungs" / "images"))[0]).read_bytes())
    store = server.service.store
    before = len(store.cases())
    admin_http = server.login("boss")
    try:
        for path in (str(secret), "/etc/passwd"):  # named as a Gradio file, never uploaded (the reported attack)
            payload = {"data": [[{"path": path, "meta": {"_type": "gradio.FileData"}}], "stolen"]}
            answer = admin_http.post(f"{server.url}/ui/gradio_api/call/admin_import", json=payload, timeout=60)
            assert answer.status_code == 403 and "not a file uploaded" in answer.json()["error"], answer.text
        assert len(store.cases()) == before, "a server file became a case"
        from app.admin import gradio_upload_roots
        copied = [p for root in gradio_upload_roots() if root.exists() for p in root.rglob(secret.name)]
        assert not copied, f"Gradio copied the server file into its cache: {copied}"
    finally:
        secret.unlink()

    upload = tmp_path / "upload.png"
    upload.write_bytes((shared_data / "cxr_lungs" / "images" / sorted(os.listdir(shared_data / "cxr_lungs" / "images"))[1]).read_bytes())
    with open(upload, "rb") as handle:
        answer = admin_http.post(f"{server.url}/ui/gradio_api/upload", files={"files": handle}, timeout=60)
    assert answer.status_code == 200, answer.text
    path = answer.json()[0]
    reader = server.login("ada")
    assert reader.get(f"{server.url}/ui/gradio_api/file={path}", timeout=30).status_code == 404
    assert reader.post(f"{server.url}/ui/gradio_api/upload", files={"files": open(upload, "rb")},
                       timeout=60).status_code == 404
    assert admin_http.get(f"{server.url}/ui/gradio_api/file={path}", timeout=30).status_code == 200


def test_security_database_and_data_folder_are_private_from_the_start(tmp_path):
    data = tmp_path / "data"
    app = AppProcess(f"sqlite:///{data / 'annotations.sqlite'}", data)
    app.start()
    try:
        requests.get(f"{app.url}/login", timeout=30).raise_for_status()
    finally:
        app.kill()
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    for path in data.glob("annotations.sqlite*"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    credentials = data / "first_run_credentials.txt"
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
    assert list(data.glob("annotations.sqlite*")), "the database was created there"


def test_security_exports_are_deleted_after_the_retention_period(server):
    from app import admin

    http = server.login("ben")
    view = http.post(f"{server.url}/api/v1/open", json={"case": server.service.store.cases()[0].pseudo_id},
                     timeout=120).json()["view"]
    http.post(f"{server.url}/api/v1/submit", json={"nonce": view["nonce"]}, timeout=120).raise_for_status()
    session = server.service.login("boss", PASSWORD)
    made = admin.export(server.service, session, "Masks: PNG (zip)")
    exports = server.service.data_dir / "exports"
    assert made.exists() and admin.sweep_exports(exports) == 0, "a fresh export is kept for its download"
    old = time.time() - admin.EXPORT_RETENTION_S - 60
    for item in exports.iterdir():
        os.utime(item, (old, old))
    assert admin.sweep_exports(exports) >= 1 and not made.exists()
