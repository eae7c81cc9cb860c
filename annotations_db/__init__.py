"""The annotation database: the durable record of a human–AI reader study and of every correction.

Modules (each documents its own API):

- :mod:`annotations_db.store` — ``Store.open(url)`` (creates the SQLite file / runs Alembic to head), readers and
  ``authenticate``, ``record_prediction``, ``worklist`` (uncertainty-ranked), ``create_study`` (seeded crossover or
  sequential designs with washout), ``assignments_for``, ``log_event`` (committed before it returns),
  ``save_annotation``, ``time_per_case`` (submit − shown − idle, derived from events); ``AccessDenied`` on other
  readers' work.
- :mod:`annotations_db.importers` — PNG/JPG folders (with masks), DICOM directories (a CT/MR series of single-frame
  files is one volume case), NIfTI volumes (with masks), the CXR-LT 2024 ``train_labeled.csv`` layout with optional
  demographics; idempotent by sha256.
- :mod:`annotations_db.export` — ``results_frame`` / ``export_results`` (long format, CSV + Parquet),
  ``export_imrmc``, ``export_masks`` (PNG, NIfTI, DICOM-SEG, COCO RLE), ``export_training`` (training manifest +
  MONAI datalist); de-identified, pseudonymous case ids.
- :mod:`annotations_db.rle` — COCO-compatible mask RLE (2-D and N-D).
- :mod:`annotations_db.manifest` — the versioned training-manifest contract shared with ``training`` (schema, label of
  record, canonical splits, the held-out rule); :mod:`annotations_db.site` — this site's settings (its held-out split).
- :mod:`annotations_db.jobs` — training jobs claimed by ``launch.py worker`` processes (lease, heartbeat, progress,
  cancel); :mod:`annotations_db.registry` — the model registry (checkpoints, promotions, rollback).
- :mod:`annotations_db.models` / ``migrations/`` — the SQLAlchemy 2 schema and its Alembic history.
- :mod:`annotations_db.engine` — SQLite (WAL, foreign keys, busy timeout) and PostgreSQL engines, one code path.
- :mod:`annotations_db.cli` — ``python launch.py import|export|db``.
- :mod:`annotations_db.errors` — typed errors (``ImportFileError`` subclasses carry ``path`` and ``cause``).
- :mod:`annotations_db.pgserver` — a throw-away local PostgreSQL server for tests and benchmarks.
"""
from annotations_db.errors import AccessDenied, AnnotationDbError, ImportFileError, NotFound

__all__ = ["AccessDenied", "AnnotationDbError", "ImportFileError", "NotFound"]
