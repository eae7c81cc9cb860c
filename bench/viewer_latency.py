"""The reading-room viewer's latency in a real browser: slice display on the real CT, click → repaint on a CXR.

    python -m bench.viewer_latency --json bench/out/viewer_latency.json [--load 2]

Starts the app (`launch.py` on a fresh data folder, :func:`bench.app_latency.start_server`), imports the real CT of
``../shared/data/ct_nifti/`` with ``launch.py import``, and drives Debian's Chromium (Playwright, 1600×1000) signed in
as the first-run admin:

* **slice**: the CT opened on its middle slice; ``--slices`` steps up with the held ↑ key (keydowns at the
  auto-repeat rate of a PACS keyboard, ``--key-ms``), then as many back down with the mouse wheel (one notch per
  ``--wheel-ms``). Each step's figure is the viewer's own ``window.__bcStats`` entry of kind "slice": from the
  slice's request (the key or wheel event) to its full-bit-depth pixels drawn (``painted_ms``, measured in the
  browser). ``cached`` says whether the viewer had prefetched the slice.
* **click**: a 2000×2000 demo CXR (1024² display), ``--clicks`` positive clicks with the click tool; figure: the
  "click" entries' ``painted_ms`` (click → the mask layer and its numbered markers painted); the markers count is
  checked.

Both are measured quiet, then (``--load N``) again with N busy processes (one spinning Python loop each) loading the
cores. The pacing waits are the input rate being simulated (a bench, not a test). Prints/writes JSON with p50/p95.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.app_latency import machine, start_server
from bench.common import SHARED_DATA, emit, stats_ms

REPO = Path(__file__).resolve().parents[1]
CT = SHARED_DATA / "ct_nifti" / "example_ct.nii.gz"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"]
TARGET_SLICE_P95_MS = 150.0
POLL_MS = 25  # how often the harness looks for the viewer's next stats entry
CLICK_POINTS = [(0.30, 0.45), (0.70, 0.45), (0.32, 0.62), (0.70, 0.62), (0.28, 0.35), (0.72, 0.35)]


def import_ct(data: Path) -> str:
    """``launch.py import`` of a copy of the real CT into the app's database; returns the case's pseudo id."""
    folder = Path(tempfile.mkdtemp(prefix="biascare-bench-ct-"))
    shutil.copy(CT, folder / CT.name)
    subprocess.run([sys.executable, str(REPO / "launch.py"), "import", str(folder), "--db",
                    f"sqlite:///{data / 'annotations.sqlite'}", "--dataset", "bench-ct", "--no-progress"],
                   cwd=REPO, check=True, capture_output=True)
    return _case(data, "depth IS NOT NULL")


def _case(data: Path, where: str) -> str:
    with sqlite3.connect(data / "annotations.sqlite") as db:
        row = db.execute(f"SELECT pseudo_id FROM cases WHERE {where} ORDER BY id LIMIT 1").fetchone()
    if row is None:
        raise RuntimeError(f"no case with {where}")
    return row[0]


def wait_triaged(data: Path, timeout: float = 900.0) -> float:
    """Wait until the app's start-up triage has read every demo image (the quiet pass must be quiet); seconds."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        with sqlite3.connect(data / "annotations.sqlite") as db:
            todo = db.execute("SELECT COUNT(*) FROM cases WHERE depth IS NULL AND id NOT IN "
                              "(SELECT case_id FROM predictions)").fetchone()[0]
        if not todo:
            return time.monotonic() - started
        time.sleep(1.0)
    raise RuntimeError("the app's triage did not finish in time")


@contextmanager
def busy(n: int):
    """``n`` processes each spinning one core (nice 0), for the duration of the block."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        yield
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=10)


def sign_in(page: Any, url: str, name: str, password: str) -> None:
    page.goto(f"{url}/")
    page.fill("#username", name)
    page.fill("#password", password)
    page.click("#login-button")
    page.wait_for_url("**/ui/**")
    page.wait_for_selector("#bc-worklist", timeout=120_000)


def open_case(page: Any, case: str) -> None:
    """Open ``case`` from the worklist and wait for its full-bit-depth pixels."""
    page.wait_for_function("document.querySelector('#bc-progress') && "
                           "document.querySelector('#bc-progress').innerText.includes('annotated')", timeout=120_000)
    # a cell may match twice (a hidden wrapper and its text span)
    page.locator("#bc-worklist").get_by_text(case, exact=True).filter(visible=True).first.click()
    page.wait_for_selector("#bc-base[data-loaded='1']", timeout=300_000)
    page.wait_for_function("window.__bcViewer.view() && window.__bcViewer.view().full !== null", timeout=120_000)


def _stats(page: Any, kind: str, since: int) -> list[dict[str, Any]]:
    return [s for s in page.evaluate("window.__bcStats")[since:] if s["kind"] == kind]


def slice_pass(page: Any, steps: int, key_ms: float, wheel_ms: float) -> dict[str, Any]:
    """Held ↑ for ``steps`` slices, then the wheel back down; the viewer's "slice" paint entries of each."""
    start = int(page.get_attribute("#bc-base", "data-slice"))
    count = int(page.evaluate("window.__bcViewer.view().slices"))
    up = min(steps, count - 1 - start)
    page.locator("#bc-stage").focus()
    mark = len(page.evaluate("window.__bcStats"))
    for _ in range(up):
        page.keyboard.down("ArrowUp")  # repeat = true after the first: a held key
        page.wait_for_timeout(key_ms)
    page.keyboard.up("ArrowUp")
    page.wait_for_selector(f"#bc-base[data-slice='{start + up}']", timeout=120_000)
    keys = _stats(page, "slice", mark)
    box = page.locator("#bc-stage").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    mark = len(page.evaluate("window.__bcStats"))
    for _ in range(up):
        page.mouse.wheel(0, -100)
        page.wait_for_timeout(wheel_ms)
    page.wait_for_selector(f"#bc-base[data-slice='{start}']", timeout=120_000)
    wheel = _stats(page, "slice", mark)
    both = keys + wheel
    return {"steps_each_way": up, "held_up_key": _summary(keys), "wheel": _summary(wheel), "all": _summary(both),
            "prefetched_share": round(sum(bool(s.get("cached")) for s in both) / max(len(both), 1), 3),
            "meets_target_p95": bool(both) and stats_ms([s["painted_ms"] for s in both])["p95_ms"]
            <= TARGET_SLICE_P95_MS}


def _summary(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {**stats_ms([s["painted_ms"] for s in entries]), "slices_drawn": len(entries)}


def cpu_seconds() -> dict[str, float]:
    """CPU seconds used so far by the Chromium processes and by the app (``launch.py``), from /proc (Linux)."""
    tick = os.sysconf("SC_CLK_TCK")
    used = {"chromium": 0.0, "app": 0.0}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        who = "chromium" if "chromium" in command else "app" if "launch.py" in command else None
        if who:
            used[who] += (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    return used


def click_pass(page: Any, clicks: int) -> dict[str, Any]:
    """``clicks`` positive clicks (reset every 6) on the open CXR; "click" paint entries and the markers shown."""
    view = page.evaluate("window.__bcViewer.view()")
    width, height = view["w"], view["h"]  # the display grid
    page.locator("#bc-stage").focus()
    page.keyboard.press("p")
    mark = len(page.evaluate("window.__bcStats"))
    markers = []
    cpu_before, wall_before = cpu_seconds(), time.monotonic()
    for i in range(clicks):
        if i and i % len(CLICK_POINTS) == 0:
            done = len(_stats(page, "reset", mark))
            page.keyboard.press("r")
            page.wait_for_function(f"window.__bcStats.slice({mark}).filter(s => s.kind === 'reset').length > {done}",
                                   timeout=120_000, polling=POLL_MS)
        fx, fy = CLICK_POINTS[i % len(CLICK_POINTS)]
        point = page.evaluate("([x, y]) => window.__bcViewer.imageToClient(x, y)", [fx * width, fy * height])
        page.mouse.click(point["x"], point["y"])
        # polled on a timer, not every animation frame: the harness must not make the browser paint meanwhile
        page.wait_for_function(f"window.__bcStats.slice({mark}).filter(s => s.kind === 'click').length > {i}",
                               timeout=120_000, polling=POLL_MS)
        markers.append(int(page.get_attribute("#bc-overlay-canvas", "data-markers") or 0))
    cpu_after, wall = cpu_seconds(), time.monotonic() - wall_before
    entries = _stats(page, "click", mark)
    return {**_summary(entries), "server_ms": stats_ms([s["server_ms"] for s in entries if s.get("server_ms")]),
            "server_model_ms": stats_ms([s["model_ms"] for s in entries if s.get("model_ms")]),  # of it: the pass
            "server_cpu_ms": stats_ms([s["server_cpu_ms"] for s in entries if s.get("server_cpu_ms")]),
            "response_ms": stats_ms([s["response_ms"] for s in entries]),  # click → the layer's response arrived
            "drawn_ms": stats_ms([s["drawn_ms"] for s in entries]),  # → decoded, outline and markers drawn
            "markers_shown_min": min(markers) if markers else 0,
            # where the 2 cores went during the pass (the pacing waits included): CPU ms per click
            "cpu_ms_per_click": {k: round((cpu_after[k] - cpu_before[k]) * 1000 / max(clicks, 1), 1) for k in cpu_after},
            "wall_ms_per_click": round(wall * 1000 / max(clicks, 1), 1)}


def measure(url: str, user: str, password: str, ct_case: str, cxr_case: str, args: argparse.Namespace
            ) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1600, "height": 1000})
            page = context.new_page()
            sign_in(page, url, user, password)
            result: dict[str, Any] = {}
            if "slice" in args.parts:
                open_case(page, ct_case)
                result["slice"] = slice_pass(page, args.slices, args.key_ms, args.wheel_ms)
                page.get_by_role("tab", name="Worklist").click()
            if "click" in args.parts:
                open_case(page, cxr_case)
                page.wait_for_function("window.__bcStats.some(s => s.kind === 'layer')", timeout=300_000)
                result["click"] = click_pass(page, args.clicks)
            context.close()
        finally:
            browser.close()
    return {**result, "load_avg_1_5_15": [round(v, 2) for v in os.getloadavg()]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, help="write the result JSON here (it is printed too)")
    parser.add_argument("--load", type=int, default=2, help="busy processes for the loaded pass (0: quiet only)")
    parser.add_argument("--slices", type=int, default=45, help="slices scrolled each way (≥ 40)")
    parser.add_argument("--clicks", type=int, default=18)
    parser.add_argument("--key-ms", type=float, default=33.0, help="held-key repeat interval")
    parser.add_argument("--wheel-ms", type=float, default=50.0, help="interval between wheel notches")
    parser.add_argument("--app-args", default="", help="extra arguments for the started app")
    parser.add_argument("--parts", default="slice,click", help="comma-separated: slice, click (default both)")
    args = parser.parse_args(argv)
    args.parts = set(args.parts.split(","))
    if not Path(CHROMIUM).exists():
        parser.error(f"{CHROMIUM} is missing (apt-get install chromium)")
    process, url, user, password = start_server(None, args.app_args.split())
    try:
        data = Path(process.args[process.args.index("--data") + 1])
        wait_triaged(data)
        ct_case = import_ct(data) if "slice" in args.parts else None
        cxr_case = _case(data, "width >= 2000 AND height >= 2000 AND depth IS NULL")
        result: dict[str, Any] = {"bench": "viewer_latency", "machine": machine(), "ct": str(CT),
                                  "ct_case": ct_case, "cxr_case": cxr_case, "target_slice_p95_ms": TARGET_SLICE_P95_MS,
                                  "quiet": measure(url, user, password, ct_case, cxr_case, args)}
        if args.load > 0:
            with busy(args.load):
                result[f"load_{args.load}_busy"] = measure(url, user, password, ct_case, cxr_case, args)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
    emit(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
