"""``python launch.py analyze``: reader-study analysis and HTML report from the database or an exported table."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from analysis.subgroups import DEFAULT_AGE_EDGES

if TYPE_CHECKING:
    import pandas as pd


def _edges(text: str) -> tuple[float, ...]:
    try:
        edges = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"age bins must be comma-separated numbers: {text}") from exc
    if len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:])):
        raise argparse.ArgumentTypeError(f"age bin edges must be at least 2 increasing numbers: {text}")
    return edges


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="launch.py analyze", description=__doc__)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--db", metavar="URL", help="database URL (read through annotations_db.export)")
    source.add_argument("--results", metavar="FILE", help="exported long results table (.csv or .parquet)")
    p.add_argument("--study", metavar="NAME", help="the study to analyse (default: the latest study of --db, said so "
                                                   "on the output; with --results: required when it holds several)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (report.html, tables/, figures/)")
    p.add_argument("--age-bins", type=_edges, default=DEFAULT_AGE_EDGES, metavar="EDGES",
                   help="age bin edges, left-closed (default: 0,40,60,75,200)")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="N", help="bootstrap resamples (default 1000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--thresholds", metavar="JSON", help="per-class AI thresholds {class: t} (default 0.5), used only "
                                                       "where the results have no ai_suggested (the AI source's own "
                                                       "suggestion rule, exported by the app)")
    p.add_argument("--threshold", type=float, default=0.5, help="AI threshold for classes not in --thresholds")
    p.add_argument("--accuracy", choices=("recall", "label"), default="recall",
                   help="per-class accuracy: 'recall' = the paper's (correct among the cases of the class), "
                        "'label' = (TP+TN)/N")
    p.add_argument("--ai-seconds-per-case", type=float, default=None, metavar="S",
                   help="the AI's time per case (not in the export), for its time and the AI speed-up")
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--min-group-size", type=int, default=2, help="smallest subgroup used in the maximum gap")
    p.add_argument("--title", default="Reader study analysis")
    return p


def _read(args: argparse.Namespace) -> pd.DataFrame:
    """The long frame of the chosen study; prints which study it is."""
    from analysis.data import read_db, read_results, select_study
    if args.db:
        raw, lines = read_db(args.db, args.study)
        print("\n".join(lines))
        return raw
    raw = select_study(read_results(args.results), args.study)
    if "study" in raw.columns and raw["study"].notna().any():
        print(f"study: {raw['study'].dropna().astype(str).iloc[0]} (from {args.results})")
    return raw


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from analysis.data import build_study, load_thresholds
    from analysis.pipeline import AnalysisConfig, run_analysis
    from analysis.report import write_report
    if args.bootstrap < 10:
        print("error: --bootstrap must be at least 10", file=sys.stderr)
        return 2
    try:
        raw = _read(args)
        classes = sorted(raw["class"].dropna().astype(str).str.strip().unique()) if "class" in raw else []
        study = build_study(raw, load_thresholds(args.thresholds, classes, args.threshold), args.threshold,
                            args.ai_seconds_per_case)
    except (FileNotFoundError, ValueError, KeyError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if study.ai_rater is not None:
        print(f"AI alone: {study.ai_source or 'source not named in the results'}")
    config = AnalysisConfig(age_edges=args.age_bins, n_boot=args.bootstrap, seed=args.seed, accuracy=args.accuracy,
                            alpha=args.alpha, min_group_size=args.min_group_size)
    files = write_report(run_analysis(study, config), Path(args.out), title=args.title)
    print(f"report: {files.html}")
    print(f"tables: {len(files.csv)} CSV in {files.html.parent / 'tables'}; figures: {len(files.figures)} PNG; "
          f"iMRMC files: {len(files.imrmc)}")
    for note in files.notes:
        print(f"note: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
