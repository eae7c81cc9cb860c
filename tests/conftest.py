"""Shared fixtures: the real data in ../shared/data and temporary places to write."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("BIASCARE_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
ARTIFACTS = REPO_ROOT / "test-artifacts"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"real test data not found at {SHARED_DATA} (set BIASCARE_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def ct_slices(shared_data, artifacts_dir) -> tuple[Path, dict]:
    """The real CT of ct_nifti/ as ``prepare-ct-structures`` writes it (slices, label PNGs, split): (folder, split)."""
    from training.structures import prepare

    ct = shared_data / "ct_nifti"
    out = artifacts_dir / "ct-structures"
    return out, prepare(ct / "example_ct.nii.gz", ct / "example_ct_totalseg104_multilabel.nii.gz",
                        ct / "label_map_totalseg_v1.json", out)


@pytest.fixture(scope="module")
def browser():
    """Headless Debian Chromium (Playwright) for one test module."""
    from tests.browser_helpers import chromium

    with chromium() as launched:
        yield launched
