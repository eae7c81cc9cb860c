"""First run: import the demo dataset in ``assets/demo/`` and create the first accounts.

The demo is imported with the project's own importers (``annotations_db.importers``): the four 2000×2000 CXRs with
their human lung masks (``import_images``) and the four NIH images with CXR-LT-format labels (``import_cxr_lt``).
Importers are idempotent (by sha256), so running this again changes nothing.

Accounts: when the database has no reader yet, an ``admin`` and a ``reader1`` are created with random passwords, which
are printed once and written to ``DATA/first_run_credentials.txt`` (mode 0600). Change them from the admin screen.
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path

from annotations_db.store import Store

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_DIR = REPO_ROOT / "assets" / "demo"
LUNGS_DATASET = "demo-lungs"
NIH_DATASET = "demo-nih"


def import_demo(store: Store, demo_dir: Path = DEMO_DIR) -> int:
    """Import the demo cases (no-op when present); returns how many cases were added."""
    from annotations_db.importers import import_cxr_lt, import_images

    added = 0
    lungs = demo_dir / "images" / "lungs"
    if lungs.is_dir():
        report = import_images(store, lungs, LUNGS_DATASET, masks_dir=demo_dir / "masks",
                               mask_pattern="{stem}_lung.png", mask_name="lung",
                               demographics_csv=demo_dir / "cxr_lungs_metadata.csv", progress=False)
        added += len(report.imported)
    csv_path = demo_dir / "nih_labels_cxrlt2024_format.csv"
    if csv_path.is_file():
        report = import_cxr_lt(store, csv_path, NIH_DATASET, image_root=demo_dir, progress=False)
        added += len(report.imported)
    return added


def ensure_accounts(store: Store, data_dir: Path) -> dict[str, str]:
    """Create admin + reader1 with random passwords when the database has no reader; returns {name: password}."""
    if store.readers():
        return {}
    created = {}
    for name, role in (("admin", "admin"), ("reader1", "reader")):
        password = secrets.token_urlsafe(9)
        store.create_reader(name, password, role=role)
        created[name] = password
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "first_run_credentials.txt"
    path.write_text("".join(f"{name}\t{password}\n" for name, password in created.items()))
    os.chmod(path, 0o600)
    return created
