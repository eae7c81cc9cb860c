#!/usr/bin/env python3
"""The one command-line entry point.

``python launch.py`` with no arguments starts the annotation app on the embedded
SQLite default. Every other job is a subcommand; each lives in the package that
owns it and is imported only when asked for, so ``--help`` stays instant.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, function, one-line help). Each function takes argv (list[str]) and returns an exit code.
SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "app": ("app.server", "main", "start the annotation / reader-study web app (default)"),
    "predict": ("core_model.cli", "predict_main", "segment one image from the command line (clicks, box or text)"),
    "import": ("annotations_db.cli", "import_main", "import images, DICOM, NIfTI or CXR-LT CSVs into the database"),
    "export": ("annotations_db.cli", "export_main", "export results, masks (PNG/NIfTI/DICOM-SEG/COCO), iMRMC, training manifest"),
    "db": ("annotations_db.cli", "db_main", "database administration: migrate, users, studies"),
    "train": ("training.cli", "train_main", "train the segmentation / classification model"),
    "eval-clicks": ("training.eval_clicks", "main", "evaluate interactive segmentation with the RITM click protocol"),
    "eval-structures": ("training.eval_structures", "main",
                        "eval-clicks over several datasets / structures from a manifest, checkpoint vs stock (JSON, Markdown)"),
    "prepare-ct-structures": ("training.structures", "main",
                              "CT NIfTI + multilabel mask -> axial slice PNGs, label PNGs, structure/slice split, manifests"),
    "worker": ("app.worker", "main", "run the training jobs started in the app (claims them from the database)"),
    "eval-findings": ("core_model.eval_findings", "main",
                      "evaluate a findings AI source (built-in, imported CSV, torchxrayvision) on labelled CXRs"),
    "analyze": ("analysis.cli", "main", "reader-study analysis and HTML report (MRMC, subgroups, timing)"),
}
DEFAULT_SUBCOMMAND = "app"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="launch.py",
        description="BiasCare reader: human-in-the-loop annotation and human-AI reader studies.",
        epilog="Run 'python launch.py SUBCOMMAND --help' for the options of one subcommand.",
    )
    parser.add_argument("subcommand", nargs="?", default=DEFAULT_SUBCOMMAND, choices=sorted(SUBCOMMANDS),
                        metavar="SUBCOMMAND",
                        help="; ".join(f"{name}: {spec[2]}" for name, spec in SUBCOMMANDS.items()))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:
        name, rest = argv[0], argv[1:]
    elif not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        name, rest = DEFAULT_SUBCOMMAND, argv
    else:
        _parser().parse_args(argv)  # prints help or the error for an unknown subcommand
        return 0
    module_name, function_name, _ = SUBCOMMANDS[name]
    function = getattr(importlib.import_module(module_name), function_name)
    return int(function(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
