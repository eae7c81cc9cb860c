"""Shared pieces of the benchmarks: real images, timing statistics, JSON output, device description."""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("BIASCARE_SHARED_DATA", REPO.parent / "shared" / "data"))


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--json", type=Path, help="write the result JSON here (it is printed too)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (the target machine has 2 cores)")
    return p


def device_description() -> dict[str, str | int]:
    info: dict[str, str | int] = {"python": platform.python_version(), "torch": torch.__version__,
                                  "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count() or 0,
                                  "torch_threads": torch.get_num_threads()}
    try:
        model_line = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in line)
        info["cpu"] = model_line.split(":", 1)[1].strip()
    except (OSError, StopIteration):
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def cxr_images(limit: int, min_side: int = 0) -> list[tuple[str, np.ndarray]]:
    """Real CXRs from shared/data/cxr_lungs (grayscale float32 in [0, 1]), largest first."""
    from PIL import Image

    folder = SHARED_DATA / "cxr_lungs" / "images"
    images = []
    for path in sorted(folder.iterdir()):
        with Image.open(path) as im:
            if min(im.size) < min_side:
                continue
            images.append((path.name, np.asarray(im.convert("L"), dtype=np.float32) / 255.0))
    images.sort(key=lambda item: -item[1].size)
    return images[:limit]


def stats_ms(values_ms: list[float]) -> dict[str, float]:
    """p50/p95/mean/max of millisecond values ({"n": 0} when empty)."""
    array = np.asarray(values_ms, dtype=float)
    if array.size == 0:
        return {"n": 0}
    return {"p50_ms": round(float(np.percentile(array, 50)), 2), "p95_ms": round(float(np.percentile(array, 95)), 2),
            "mean_ms": round(float(array.mean()), 2), "max_ms": round(float(array.max()), 2), "n": int(array.size)}


def percentiles_ms(seconds: list[float]) -> dict[str, float]:
    return stats_ms([s * 1000.0 for s in seconds])


def time_calls(function: Callable[[], object], repeats: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return times


def emit(result: dict, path: Path | None) -> None:
    text = json.dumps(result, indent=2)
    print(text)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    sys.stdout.flush()
