"""``python launch.py import|export|db ...``: the command-line face of annotations_db.

    launch.py import DIR_OR_CSV [--kind auto|images|dicom|nifti|cxr-lt] [--dataset NAME] [--masks DIR
                     --mask-pattern '{stem}_lung.png' --mask-name lung] [--demographics CSV] [--image-root DIR]
                     [--label-set cxr-lt-40] [--strict] [--db URL]
    launch.py import --ai-predictions CSV --source-name NAME [--thresholds FILE] [--masks DIR] [--study S]
                     (a CXR-LT 2024 submission CSV as a study's AI source; the report lists unmatched rows)
    launch.py import --xrv-weights FILE [--source-name NAME] [--study S]   (a local torchxrayvision model)
    launch.py export results OUT [--study NAME] [--format csv --format parquet]
    launch.py export imrmc OUT --class Edema [--study NAME]   (without --class: OUT is a folder, one file per class)
    launch.py export masks OUTDIR [--format png --format nifti --format dicom-seg --format coco]
    launch.py export training OUTDIR [--images copy|source]
    launch.py db upgrade | current | stats | sources
    launch.py db set-study-source STUDY SOURCE        (refused once a read of the study has started)
    launch.py db create-reader NAME [--role admin|reader] (password from --password or $BIASCARE_PASSWORD or prompt)
    launch.py db create-study NAME --readers a,b --dataset NAME|--cases c1,c2 [--design crossover|sequential]
                     [--arms unaided,ai_aided] [--seed 0] [--washout-days 28] [--allow-revisit]
                     [--label-set cxr-lt-26] [--model-version NAME] [--ratings 100] [--exclude-seen]

``--db`` defaults to ``sqlite:///data/annotations.sqlite`` (relative to the working directory). Exit codes: 0 ok,
1 some files failed (import) , 2 bad arguments or input, or an export with nothing to write (no submitted read, no
mask, no annotation: the message says which; no empty file or folder is left).
"""
from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from pathlib import Path

from annotations_db.engine import DEFAULT_URL
from annotations_db.errors import AnnotationDbError


def _with_db(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--db", default=os.environ.get("BIASCARE_DB", DEFAULT_URL),
                        help=f"SQLAlchemy URL (default {DEFAULT_URL}; PostgreSQL: postgresql+psycopg://user@host/db)")
    return parser


def _open(url: str):  # type: ignore[no-untyped-def]
    from annotations_db.store import Store
    return Store.open(url)


# -- import ----------------------------------------------------------------------------------------------------------
def import_main(argv: list[str]) -> int:
    parser = _with_db(argparse.ArgumentParser(prog="launch.py import", description="import cases into the database"))
    parser.add_argument("path", type=Path, nargs="?",
                        help="folder of PNG/JPG, DICOM folder, NIfTI folder, or CXR-LT CSV")
    parser.add_argument("--kind", default="auto", choices=["auto", "images", "dicom", "nifti", "cxr-lt"])
    parser.add_argument("--dataset", help="dataset name (default: the folder or CSV name)")
    parser.add_argument("--masks", type=Path, help="images: folder of masks")
    parser.add_argument("--mask-pattern", default="{stem}_mask.png", help="images: mask file name, {stem}/{name}")
    parser.add_argument("--mask-name", default="mask", help="images: name the masks are stored under")
    parser.add_argument("--demographics", type=Path, help="CSV with sex/age/race keyed by file, dicom_id or subject")
    parser.add_argument("--image-root", type=Path, help="cxr-lt: folder that fpath is relative to (default: CSV's)")
    parser.add_argument("--label-set", default="cxr-lt-40", help="cxr-lt: label set the class columns belong to")
    parser.add_argument("--strict", action="store_true", help="write nothing if any file fails")
    parser.add_argument("--no-progress", action="store_true")
    ai = parser.add_argument_group("a study's AI source (instead of PATH)")
    ai.add_argument("--ai-predictions", type=Path, metavar="CSV",
                    help="CXR-LT 2024 submission CSV: dicom_id + one probability column per class (26 or 40)")
    ai.add_argument("--xrv-weights", type=Path, metavar="FILE", help="a local torchxrayvision weights file")
    ai.add_argument("--source-name", help="the AI source's name (= version) the predictions are stored under")
    ai.add_argument("--thresholds", type=Path, help="supplier thresholds: CSV class,threshold or JSON {class: t}")
    ai.add_argument("--study", help="match to this study's cases and attach the source to it")
    args = parser.parse_args(argv)
    if args.ai_predictions or args.xrv_weights:
        return _import_ai_source(args)
    if args.path is None:
        parser.error("give PATH, --ai-predictions CSV or --xrv-weights FILE")
    from annotations_db.importers import import_path
    options = _import_options(args)
    try:
        with _open(args.db) as store:
            report = import_path(store, args.path, args.dataset, args.kind, **options)
    except AnnotationDbError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for error in report.errors:
        print(f"skipped {error}", file=sys.stderr)
    print(report.summary())
    return 1 if report.errors else 0


def _import_ai_source(args: argparse.Namespace) -> int:
    """Imported predictions or a torchxrayvision model as an AI source; prints the report (exit 1: rows left out)."""
    from annotations_db.ai_sources import compute_xrv_predictions, import_ai_predictions
    from core_model.xrv_source import XrvSourceError
    try:
        with _open(args.db) as store:
            if args.ai_predictions:
                if not args.source_name:
                    print("error: --ai-predictions needs --source-name", file=sys.stderr)
                    return 2
                report = import_ai_predictions(store, args.ai_predictions, args.source_name,
                                               thresholds=args.thresholds, masks_dir=args.masks, study=args.study,
                                               strict=args.strict)
                incomplete = bool(report.unmatched or report.bad_rows or report.mask_errors)
            else:
                report = compute_xrv_predictions(store, args.xrv_weights, args.source_name, study=args.study)
                incomplete = bool(report.errors)
    except (AnnotationDbError, XrvSourceError) as error:  # each names the file (or study, source) and the cause
        print(f"error: {error}", file=sys.stderr)
        return 2
    print("\n".join(report.lines()))
    return 1 if incomplete else 0


def _import_options(args: argparse.Namespace) -> dict:
    kind = args.kind
    if kind == "auto":
        from annotations_db.importers import detect_kind
        kind = detect_kind(args.path) if args.path.exists() else "images"
    options: dict = {"strict": args.strict, "progress": not args.no_progress}
    if kind in ("images", "dicom", "cxr-lt") and args.demographics:
        options["demographics_csv"] = args.demographics
    if kind == "images" and args.masks:
        options.update(masks_dir=args.masks, mask_pattern=args.mask_pattern, mask_name=args.mask_name)
    if kind == "cxr-lt":
        options.update(image_root=args.image_root, label_set=args.label_set)
    return options


# -- export ----------------------------------------------------------------------------------------------------------
def export_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="launch.py export", description="export results, masks, manifests")
    sub = parser.add_subparsers(dest="what", required=True)
    results = _with_db(sub.add_parser("results", help="long-format reader-study results (CSV and Parquet)"))
    results.add_argument("out", type=Path)
    results.add_argument("--study")
    results.add_argument("--format", action="append", choices=["csv", "parquet"])
    imrmc = _with_db(sub.add_parser("imrmc", help="iMRMC input for one class, or every class into a folder"))
    imrmc.add_argument("out", type=Path, help="the .imrmc file (--class) or a folder (one file per class)")
    imrmc.add_argument("--class", dest="class_name", help="one class (default: every class with both truths)")
    imrmc.add_argument("--study")
    masks = _with_db(sub.add_parser("masks", help="final masks: PNG / NIfTI / DICOM-SEG / COCO"))
    masks.add_argument("out", type=Path)
    masks.add_argument("--format", action="append", choices=["png", "nifti", "dicom-seg", "coco"])
    training = _with_db(sub.add_parser("training", help="images, masks, MONAI datalist and training manifest"))
    training.add_argument("out", type=Path)
    training.add_argument("--images", default="copy", choices=["copy", "source"],
                          help="copy: de-identified copies named by pseudonymous id (default); source: refused "
                               "(exit 2), a training export never writes server paths")
    args = parser.parse_args(argv)
    from annotations_db import export
    try:
        with _open(args.db) as store:
            if args.what == "results":
                paths = export.export_results(store, args.out, args.study, args.format or ("csv", "parquet"))
                print("\n".join(str(p) for p in paths))
            elif args.what == "imrmc" and args.class_name:
                print(export.export_imrmc(store, args.out, args.class_name, args.study))
            elif args.what == "imrmc":
                print("\n".join(str(p) for p in export.export_imrmc_classes(store, args.out, args.study).values()))
            elif args.what == "masks":
                formats = args.format or ("png", "nifti", "dicom-seg", "coco")
                print(json.dumps(export.export_masks(store, args.out, formats, require_any=True), indent=1))
            else:
                export.require_final_annotations(store)
                print(export.export_training(store, args.out, images=args.images))
    except AnnotationDbError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


# -- db ------------------------------------------------------------------------------------------------------------
def db_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="launch.py db", description="database administration")
    sub = parser.add_subparsers(dest="command", required=True)
    _with_db(sub.add_parser("upgrade", help="create the database / run migrations to head"))
    _with_db(sub.add_parser("current", help="print the schema revision"))
    _with_db(sub.add_parser("stats", help="row counts per table"))
    _with_db(sub.add_parser("sources", help="the AI sources: name, kind, origin, cases predicted"))
    attach = _with_db(sub.add_parser("set-study-source", help="the AI source a study's aided arm shows"))
    attach.add_argument("study")
    attach.add_argument("source")
    reader = _with_db(sub.add_parser("create-reader", help="add a reader account"))
    reader.add_argument("name")
    reader.add_argument("--role", default="reader", choices=["admin", "reader"])
    reader.add_argument("--password", help="default: $BIASCARE_PASSWORD, else a prompt")
    study = _with_db(sub.add_parser("create-study", help="create a reader study with seeded assignments"))
    study.add_argument("name")
    study.add_argument("--readers", required=True, help="comma-separated reader names")
    study.add_argument("--dataset", help="all cases of this dataset")
    study.add_argument("--cases", help="comma-separated pseudonymous case ids")
    study.add_argument("--design", default="crossover", choices=["crossover", "sequential"])
    study.add_argument("--arms", default="unaided,ai_aided")
    study.add_argument("--seed", type=int, default=0)
    study.add_argument("--washout-days", type=int, default=28)
    study.add_argument("--allow-revisit", action="store_true")
    study.add_argument("--label-set", default="cxr-lt-26")
    study.add_argument("--model-version")
    study.add_argument("--ratings", type=int, default=100, metavar="N",
                       help="confidence rating 1..N for each positive finding (default 100; 0 = binary answers)")
    study.add_argument("--exclude-seen", action="store_true",
                       help="leave out cases a chosen reader has seen with the AI outside studies")
    args = parser.parse_args(argv)
    try:
        return _db_command(args)
    except (AnnotationDbError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def _db_command(args: argparse.Namespace) -> int:
    from annotations_db import migrate
    with _open(args.db) as store:
        if args.command == "upgrade":
            print(f"database at revision {migrate.head_revision()}")
        elif args.command == "current":
            with store.engine.connect() as connection:
                print(migrate.current_revision(connection))
        elif args.command == "stats":
            print(json.dumps(store.counts(), indent=1))
        elif args.command == "sources":
            for source in store.ai_sources():
                print(f"{source.name}\t{source.kind}\t{source.predictions} case(s)\t{source.origin or ''}")
        elif args.command == "set-study-source":
            store.set_study_ai_source(args.study, args.source)
            print(f"study {args.study!r} shows AI source {args.source!r}")
        elif args.command == "create-reader":
            password = args.password or os.environ.get("BIASCARE_PASSWORD") or getpass.getpass("password: ")
            print(store.create_reader(args.name, password, args.role))
        else:
            print(f"study id {_create_study(store, args)}")
    return 0


def _create_study(store, args: argparse.Namespace) -> int:  # type: ignore[no-untyped-def]
    if bool(args.dataset) == bool(args.cases):
        raise ValueError("give exactly one of --dataset or --cases")
    cases = store.cases(args.dataset) if args.dataset else [store.case(c) for c in args.cases.split(",")]
    readers = [store.reader(name) for name in args.readers.split(",")]
    exposure = store.ai_exposure(cases, readers)
    for reader, case in exposure:
        print(f"warning: {reader} has seen case {case} with the AI outside studies"
              f"{' (left out)' if args.exclude_seen else ''}", file=sys.stderr)
    if args.exclude_seen:
        seen = {case for _, case in exposure}
        cases = [c for c in cases if c.pseudo_id not in seen]
    return store.create_study(args.name, cases, readers, arms=tuple(args.arms.split(",")), design=args.design,
                              seed=args.seed, washout_days=args.washout_days, allow_revisit=args.allow_revisit,
                              label_set=args.label_set, model_version=args.model_version, rating_max=args.ratings)
