"""A reader's click latency while others flood the sign-in with wrong passwords, against a quiet baseline in the same run.

    python -m bench.login_flood --json bench/out/login_flood.json      # a live server (app.testing) on a temp folder
    python -m bench.login_flood --flood-only --url URL --threads 6 --seconds 10     # just the flood; prints counts

Phases, each with the same reader clicking on an open 2000×2000 demo case (``POST /api/v1/click``, mask reset every
``--reset-every`` clicks):

* ``quiet``: nobody else;
* ``flood_throttled``: ``--threads`` clients posting wrong passwords to ``/api/v1/login`` as fast as they are
  answered, with the default back-off (after a few failures nearly every attempt is a 429 that hashes nothing);
* ``flood_hashing``: the same with the back-off relaxed so that every attempt reaches the scrypt check — the worst
  case for the hashing bound (one low-priority hashing thread, a short queue, 503 beyond it).

Also: 50 wrong passwords for one name back to back (answers by status, seconds) and the round trip of a wrong password
for a known vs unknown names (user enumeration by timing).

The flood runs in a child process at nice 10 (standing in for clients on other machines: its own HTTP client work
should not be what is measured); its answers are counted by status. Output: click p50/p95 per phase and the ratios to
``quiet``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.common import emit, stats_ms

REPO = Path(__file__).resolve().parents[1]
POINTS = [(0.30, 0.45), (0.70, 0.45), (0.50, 0.85), (0.30, 0.60), (0.72, 0.62), (0.35, 0.30), (0.66, 0.32)]


# ------------------------------------------------------------------------------------------------------ the flood
def flood(url: str, threads: int, seconds: float, max_requests: int = 100_000) -> dict[str, int]:
    """``threads`` clients posting wrong passwords for ``seconds`` (at most ``max_requests`` each); answers by status.

    Names cycle over a few known readers and unknown names, so both the per-name and the per-address back-off bite."""
    import requests

    names = ["ada", "ben", "cy", "boss", "nobody", "root", "admin2"]
    counts: Counter[str] = Counter()
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client(index: int) -> None:
        http = requests.Session()
        mine: Counter[str] = Counter()
        for i in range(max_requests):
            if time.monotonic() >= stop_at:
                break
            try:
                response = http.post(f"{url}/api/v1/login", timeout=30,
                                     json={"username": names[(index + i) % len(names)], "password": f"guess-{i}"})
                mine[str(response.status_code)] += 1
            except requests.RequestException:
                mine["error"] += 1
        with lock:
            counts.update(mine)

    workers = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(seconds + 60)
    return dict(counts)


class FloodProcess:
    """:func:`flood` in a child process (``--flood-only``), at nice ``nice``; :meth:`result` waits for its counts."""

    def __init__(self, url: str, threads: int, seconds: float, nice: int = 10) -> None:
        command = [sys.executable, "-m", "bench.login_flood", "--flood-only", "--url", url, "--threads", str(threads),
                   "--seconds", str(seconds)]
        self.process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        preexec_fn=lambda: os.nice(nice))
        self.seconds = seconds

    def running(self) -> bool:
        return self.process.poll() is None

    def result(self) -> dict[str, int]:
        out, err = self.process.communicate(timeout=self.seconds + 120)
        if self.process.returncode != 0:
            raise RuntimeError(f"the flood process failed: {err[-2000:]}")
        return json.loads(out.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------------ the reader
class Clicker:
    """One signed-in reader with a case open; :meth:`click` times one ``POST /api/v1/click`` round trip (ms)."""

    def __init__(self, http: Any, url: str, case: str, reset_every: int = 10) -> None:
        self.http, self.url, self.reset_every = http, url, reset_every
        response = http.post(f"{url}/api/v1/open", json={"case": case}, timeout=300)
        response.raise_for_status()
        self.view = response.json()["view"]
        self.count = 0

    def click(self) -> float:
        view, i = self.view, self.count
        if i and i % self.reset_every == 0:
            self.http.post(f"{self.url}/api/v1/reset", json={"nonce": view["nonce"]}, timeout=60).raise_for_status()
        fx, fy = POINTS[i % len(POINTS)]
        body = {"nonce": view["nonce"], "x": fx * view["display_width"] + i // len(POINTS),
                "y": fy * view["display_height"], "positive": i % 3 != 2}
        started = time.perf_counter()
        response = self.http.post(f"{self.url}/api/v1/click", json=body, timeout=120)
        elapsed = (time.perf_counter() - started) * 1000
        response.raise_for_status()
        self.count += 1
        return elapsed

    def clicks(self, n: int) -> list[float]:
        return [self.click() for _ in range(n)]

    def clicks_while(self, flood_process: FloodProcess, limit: int = 200) -> list[float]:
        """Click until the flood ends (at most ``limit`` clicks)."""
        times = []
        while flood_process.running() and len(times) < limit:
            times.append(self.click())
        return times


def compare(quiet_ms: list[float], loaded_ms: list[float]) -> dict[str, Any]:
    """p50/p95 of both and the ratios loaded / quiet."""
    quiet, loaded = stats_ms(quiet_ms), stats_ms(loaded_ms)
    return {"quiet": quiet, "flood": loaded, "p50_ratio": round(loaded["p50_ms"] / quiet["p50_ms"], 3),
            "p95_ratio": round(loaded["p95_ms"] / quiet["p95_ms"], 3)}


def phase(clicker: Clicker, url: str, threads: int, seconds: float) -> dict[str, Any]:
    """Clicks during one flood, with the flood's answers by status."""
    flood_process = FloodProcess(url, threads, seconds)
    times = clicker.clicks_while(flood_process)
    return {"clicks_ms": times, "answers": flood_process.result()}


def relaxed(service: Any) -> None:
    """Back-off out of the way: every flood attempt reaches the hash (the hashing bound alone protects the clicks)."""
    from annotations_db.security import BackoffPolicy
    from app.login_guard import LoginPolicy

    huge = BackoffPolicy(free_failures=10**9)
    service.login_guard.policy = LoginPolicy(user=huge, address=huge)


def large_case(service: Any) -> str:
    from annotations_db.models import Case
    with service.store.read_session() as session:
        return next(c.pseudo_id for c in session.query(Case).order_by(Case.id) if c.width >= 2000)


def fifty_wrong(url: str, name: str = "ben") -> dict[str, Any]:
    """50 wrong passwords for one known name, back to back: answers by status and the time they took."""
    import requests

    started = time.perf_counter()
    statuses = Counter(str(requests.post(f"{url}/api/v1/login", json={"username": name, "password": f"no-{i}"},
                                         timeout=60).status_code) for i in range(50))
    return {"answers": dict(statuses), "seconds": round(time.perf_counter() - started, 2)}


def known_vs_unknown(url: str, rounds: int = 15) -> dict[str, Any]:
    """Median round trip (ms) of a wrong password for a known name and for unknown names, alternated (run with the
    back-off relaxed, so that every attempt is checked)."""
    import requests

    times: dict[str, list[float]] = {"known": [], "unknown": []}
    for i in range(rounds):
        for kind, name in (("known", "cy"), ("unknown", f"ghost-{i}")):
            started = time.perf_counter()
            requests.post(f"{url}/api/v1/login", json={"username": name, "password": "wrong"}, timeout=60)
            times[kind].append((time.perf_counter() - started) * 1000)
    known, unknown = stats_ms(times["known"]), stats_ms(times["unknown"])
    return {"known": known, "unknown": unknown, "median_ratio": round(unknown["p50_ms"] / known["p50_ms"], 3)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from app.testing import LiveServer

    server = LiveServer.start(Path(tempfile.mkdtemp(prefix="biascare-login-flood-")) / "data")
    try:
        clicker = Clicker(server.login("ada"), server.url, large_case(server.service), args.reset_every)
        clicker.clicks(3)  # warm-up
        quiet = clicker.clicks(args.clicks)
        fifty = fifty_wrong(server.url)
        throttled = phase(clicker, server.url, args.threads, args.seconds)
        relaxed(server.service)
        hashing = phase(clicker, server.url, args.threads, args.seconds)
        timing = known_vs_unknown(server.url)
        server.service.login_guard.audit.flush()
        return {"benchmark": "login_flood", "threads": args.threads, "seconds": args.seconds,
                "fifty_wrong_passwords": fifty, "wrong_password_known_vs_unknown_name": timing,
                "flood_throttled": {**compare(quiet, throttled["clicks_ms"]), "answers": throttled["answers"]},
                "flood_hashing": {**compare(quiet, hashing["clicks_ms"]), "answers": hashing["answers"]},
                "load_avg": os.getloadavg()}
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the result JSON here (it is printed too)")
    parser.add_argument("--threads", type=int, default=6, help="flooding clients")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each flood")
    parser.add_argument("--clicks", type=int, default=20, help="clicks of the quiet baseline")
    parser.add_argument("--reset-every", type=int, default=10)
    parser.add_argument("--flood-only", action="store_true", help="only flood --url; print the answers' counts")
    parser.add_argument("--url", help="the server to flood (with --flood-only)")
    args = parser.parse_args(argv)
    if args.flood_only:
        print(json.dumps(flood(args.url, args.threads, args.seconds)), flush=True)
        return 0
    emit(run(args), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
