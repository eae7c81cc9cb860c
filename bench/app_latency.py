"""Click latency of the running web app over HTTP: the lean route vs Gradio's event path, and where the time goes.

    python -m bench.app_latency --json bench/out/app_latency.json            # starts `launch.py` in a temp folder
    python -m bench.app_latency --url http://127.0.0.1:7860 --user admin --password ... --json OUT

For a 2000×2000 demo CXR (display 1024×1024), after opening the case (its embedding computed then, so the first click
is pre-encoded like every other), it sends ``--clicks`` clicks

* through the lean route ``POST /api/v1/click`` (requests, keep-alive): client round trip, and from the response
  headers the server handler total, the refinement pass (model) and downsampling + PNG encoding;
* through Gradio's event machinery (gradio_client → ``/click``, the same service call): round trip and handler time;
* and a no-op Gradio call (``/view_state``) as the floor of a Gradio event round trip.

transport = round trip − server handler (HTTP, JSON/queue machinery, client). ``server_cpu`` is the CPU time of the
handler thread (the app runs the model with one torch thread, so this is what the click costs on an idle core); on
a shared, overloaded CPU the wall-clock figures are dominated by waiting for a core (see ``machine.load_avg``). The figure a reader feels (click →
mask painted in the browser) is measured by tests/test_browser_app.py (test-artifacts/app_click_latency_browser.json),
which this report includes when present. Every `--reset-every` clicks the mask is reset so that the click count per
refinement stays realistic.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import stats_ms

REPO = Path(__file__).resolve().parents[1]
POINTS = [(0.30, 0.45), (0.70, 0.45), (0.50, 0.85), (0.30, 0.60), (0.72, 0.62), (0.35, 0.30), (0.66, 0.32)]
TARGET_P95_MS = 150.0


def start_server(port: int | None, app_args: list[str], timeout: float = 600.0
                 ) -> tuple[subprocess.Popen, str, str, str]:
    """`python launch.py` on a fresh data folder; returns (process, url, admin name, admin password)."""
    data = Path(tempfile.mkdtemp(prefix="biascare-bench-"))
    port = port or _free_port()
    log_path = data / "server.log"
    with log_path.open("w") as log:
        process = subprocess.Popen([sys.executable, str(REPO / "launch.py"), "--data", str(data), "--port", str(port),
                                    *app_args],
                                   cwd=REPO, stdout=log, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + timeout
    while "running at" not in log_path.read_text():
        if process.poll() is not None:
            raise RuntimeError(f"the app exited with code {process.returncode}: {log_path.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("the app did not start in time")
        time.sleep(0.2)
    name, password = (data / "first_run_credentials.txt").read_text().splitlines()[0].split("\t")
    return process, f"http://127.0.0.1:{port}", name, password


def _free_port() -> int:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pick_case(client: Any, wanted: str | None) -> tuple[str, dict[str, Any], float]:
    """Open ``wanted`` or the first ≥ 2000×2000 case of the worklist; returns (case, view, seconds of the open)."""
    table, _ = client.predict("all", "All", 0, 1, api_name="/worklist")
    for case in ([wanted] if wanted else [row[0] for row in table["data"]]):
        started = time.perf_counter()
        view = client.predict(case, api_name="/open_case")
        seconds = time.perf_counter() - started
        if wanted or (view["width"] >= 2000 and view["height"] >= 2000):
            return case, view, seconds
    raise RuntimeError("no 2000×2000 case in the worklist")


def run(url: str, user: str, password: str, clicks: int, reset_every: int, case: str | None) -> dict[str, Any]:
    import requests
    from gradio_client import Client

    http = requests.Session()
    http.post(f"{url}/api/v1/login", json={"username": user, "password": password}, timeout=60).raise_for_status()
    cookie = "; ".join(f"{k}={v}" for k, v in http.cookies.items())
    client = Client(f"{url}/ui/", headers={"Cookie": cookie}, verbose=False)
    case, view, open_s = pick_case(client, case)
    w, h = view["display_width"], view["display_height"]

    def point(i: int) -> tuple[float, float, bool]:
        fx, fy = POINTS[i % len(POINTS)]
        return fx * w + (i // len(POINTS)), fy * h, i % 3 != 2

    lean: dict[str, list[float]] = {"round_trip": [], "server": [], "server_cpu": [], "model": [], "encode": [],
                                    "transport": [], "bytes": []}
    http.post(f"{url}/api/v1/reset", json={"nonce": view["nonce"]}, timeout=60)
    for i in range(clicks):
        if i and i % reset_every == 0:
            http.post(f"{url}/api/v1/reset", json={"nonce": view["nonce"]}, timeout=60)
        x, y, positive = point(i)
        t0 = time.perf_counter()
        response = http.post(f"{url}/api/v1/click", json={"nonce": view["nonce"], "x": x, "y": y,
                                                          "positive": positive}, timeout=120)
        rtt = (time.perf_counter() - t0) * 1000
        response.raise_for_status()
        server = float(response.headers["x-server-ms"])
        lean["round_trip"].append(rtt)
        lean["server"].append(server)
        lean["model"].append(float(response.headers["x-model-ms"]))
        lean["server_cpu"].append(float(response.headers["x-server-cpu-ms"]))
        lean["encode"].append(float(response.headers["x-encode-ms"]))
        lean["transport"].append(rtt - server)
        lean["bytes"].append(len(response.content))

    gradio: dict[str, list[float]] = {"round_trip": [], "server": [], "model": [], "transport": []}
    http.post(f"{url}/api/v1/reset", json={"nonce": view["nonce"]}, timeout=60)
    for i in range(clicks):
        if i and i % reset_every == 0:
            http.post(f"{url}/api/v1/reset", json={"nonce": view["nonce"]}, timeout=60)
        x, y, positive = point(i)
        t0 = time.perf_counter()
        out = client.predict(view["nonce"], x, y, positive, api_name="/click")
        rtt = (time.perf_counter() - t0) * 1000
        gradio["round_trip"].append(rtt)
        gradio["server"].append(float(out["server_ms"]))
        gradio["model"].append(float(out["model_ms"]))
        gradio["transport"].append(rtt - float(out["server_ms"]))

    noop = []
    for _ in range(max(5, clicks // 2)):
        t0 = time.perf_counter()
        client.predict(api_name="/view_state")
        noop.append((time.perf_counter() - t0) * 1000)

    result: dict[str, Any] = {
        "url": url, "case": case, "original": [view["width"], view["height"]], "display": [w, h],
        "open_case_s": round(open_s, 3), "clicks_per_path": clicks, "reset_every": reset_every,
        "lean_route": {k: stats_ms(v) for k, v in lean.items() if k != "bytes"},
        "lean_layer_bytes": {"p50": int(np.percentile(lean["bytes"], 50)), "max": int(max(lean["bytes"]))},
        "gradio_event": {k: stats_ms(v) for k, v in gradio.items()},
        "gradio_noop_round_trip": stats_ms(noop),
        "target_p95_ms": TARGET_P95_MS,
    }
    result["lean_route_meets_target"] = result["lean_route"]["round_trip"]["p95_ms"] <= TARGET_P95_MS
    browser = REPO / "test-artifacts" / "app_click_latency_browser.json"
    if browser.is_file():
        result["browser_click_to_paint"] = json.loads(browser.read_text()).get("summary")
    return result


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"python": platform.python_version(), "cpu_count": os.cpu_count(),
                            "load_avg_1_5_15": [round(v, 2) for v in os.getloadavg()]}
    try:
        text = Path("/proc/cpuinfo").read_text()
        info["cpu"] = re.search(r"model name\s*:\s*(.*)", text).group(1)  # type: ignore[union-attr]
    except (OSError, AttributeError):
        pass
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, help="write the result JSON here (it is printed too)")
    parser.add_argument("--url", help="a running app (default: start `launch.py` on a temporary data folder)")
    parser.add_argument("--user", help="reader name for --url")
    parser.add_argument("--password", help="password for --url")
    parser.add_argument("--case", help="pseudonymous case id (default: the first 2000×2000 case)")
    parser.add_argument("--clicks", type=int, default=30)
    parser.add_argument("--reset-every", type=int, default=10)
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--app-args", default="", help="extra arguments for the started app, e.g. '--torch-threads 2'")
    args = parser.parse_args(argv)
    process = None
    try:
        if args.url:
            if not (args.user and args.password):
                parser.error("--url needs --user and --password")
            url, user, password = args.url.rstrip("/"), args.user, args.password
        else:
            process, url, user, password = start_server(args.port, args.app_args.split())
        result = {"bench": "app_latency", "machine": machine(),
                  **run(url, user, password, args.clicks, args.reset_every, args.case)}
        result["machine"]["load_avg_after"] = [round(v, 2) for v in os.getloadavg()]
    finally:
        if process is not None:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
