"""Read and write the iMRMC input format (FDA iMRMC tool, github.com/DIDSR/iMRMC).

Layout: free-text description lines, ``N0:``, ``N1:``, ``NR:``, ``NM:`` header lines, ``BEGIN DATA:``, then one
``-1,caseID,truth,0|1`` line per case followed by ``readerID,caseID,modalityID,score`` lines (modality-major, then
reader, then case). The writer reproduces that layout byte for byte (tests/test_analysis_imrmc.py reads the real
Van Dyke file, writes it back and compares).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from analysis.data import Study


def read_imrmc(path: str | Path) -> tuple[pd.DataFrame, list[str]]:
    """-> long frame ``reader, modality, case, truth, rating`` (IDs as strings, in file order) and the description."""
    lines = Path(path).read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().upper().startswith("BEGIN DATA"))
    description = [line for line in lines[:start] if not line.split(":")[0].strip() in ("N0", "N1", "NR", "NM")]
    truth: dict[str, int] = {}
    rows = []
    for line in lines[start + 1:]:
        if not line.strip():
            continue
        reader, case, modality, value = (part.strip() for part in line.split(","))
        if reader == "-1":
            truth[case] = int(float(value))
        else:
            rows.append({"reader": reader, "modality": modality, "case": case, "rating": float(value)})
    frame = pd.DataFrame(rows, columns=["reader", "modality", "case", "rating"])
    frame.insert(3, "truth", frame["case"].map(truth))
    missing = frame["truth"].isna().sum()
    if missing:
        raise ValueError(f"{missing} iMRMC score lines refer to cases without a truth line")
    frame["truth"] = frame["truth"].astype(int)
    return frame, description


def _fmt(value: float) -> str:
    return f"{value:.6f}"


def format_imrmc(frame: pd.DataFrame, description: str | list[str] = "BiasCare reader study",
                 reader: str = "reader", modality: str = "modality", case: str = "case", truth: str = "truth",
                 rating: str = "rating") -> str:
    """The iMRMC text of a long ratings frame (IDs kept in order of first appearance)."""
    data = frame.dropna(subset=[rating])
    if len(data) < len(frame):
        raise ValueError(f"{len(frame) - len(data)} rows have no rating: iMRMC needs a score for every line")
    case_truth = data.groupby(case, sort=False)[truth].first()
    if case_truth.isna().any() or not set(case_truth.astype(int)) <= {0, 1}:
        raise ValueError("iMRMC needs a 0/1 truth for every case")
    ids = {col: list(pd.unique(data[col].astype(str))) for col in (reader, modality, case)}
    for col, values in ids.items():
        if any("," in v for v in values):
            raise ValueError(f"iMRMC IDs may not contain commas ({col})")
    lines = [description] if isinstance(description, str) else list(description)
    lines += [f"N0:{int((case_truth == 0).sum())}", f"N1:{int((case_truth == 1).sum())}",
              f"NR:{len(ids[reader])}", f"NM:{len(ids[modality])}", "BEGIN DATA:"]
    lines += [f"-1,{c},truth,{int(t)}" for c, t in zip(case_truth.index.astype(str), case_truth)]
    keyed = data.assign(_m=data[modality].astype(str).map({m: i for i, m in enumerate(ids[modality])}),
                        _r=data[reader].astype(str).map({r: i for i, r in enumerate(ids[reader])}),
                        _c=data[case].astype(str).map({c: i for i, c in enumerate(ids[case])}))
    keyed = keyed.sort_values(["_m", "_r", "_c"], kind="stable")
    lines += [f"{r},{c},{m},{_fmt(v)}" for r, c, m, v in zip(keyed[reader].astype(str), keyed[case].astype(str),
                                                              keyed[modality].astype(str), keyed[rating])]
    return "\n".join(lines) + "\n"


def write_imrmc(frame: pd.DataFrame, path: str | Path, description: str | list[str] = "BiasCare reader study",
                **columns: str) -> Path:
    path = Path(path)
    path.write_text(format_imrmc(frame, description, **columns))
    return path


def study_ratings(study: Study, klass: str, use_scores: bool = True) -> pd.DataFrame:
    """Reader × arm × case ratings of one class (reader scores when present, else 0/1 answers), complete cases only."""
    k = study.classes.index(klass)
    values = study.scores if use_scores and study.scores is not None else study.answers
    rows = []
    for i in study.human_raters:
        rater = study.raters[i]
        for c, case in enumerate(study.cases):
            rows.append({"reader": rater.reader, "modality": rater.arm, "case": case,
                         "truth": study.truth[c, k], "rating": values[i, c, k]})
    frame = pd.DataFrame(rows)
    known = frame.groupby("case")["rating"].apply(lambda s: s.notna().all()) & \
        frame.groupby("case")["truth"].apply(lambda s: s.notna().all())
    return frame[frame["case"].isin(known[known].index)]


def export_study(study: Study, out_dir: str | Path) -> tuple[list[Path], list[str]]:
    """One iMRMC file per class with both truths (iMRMC analyses one binary finding at a time)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written, notes = [], []
    for klass in study.classes:
        frame = study_ratings(study, klass)
        dropped = len(study.cases) - frame["case"].nunique()
        if frame.empty or frame["truth"].nunique() < 2:
            notes.append(f"iMRMC: class '{klass}' not exported (needs positive and negative cases)")
            continue
        if dropped:
            notes.append(f"iMRMC: class '{klass}': {dropped} cases without a complete set of readings or truth "
                         "are not in the file")
        safe = "".join(ch if ch.isalnum() else "_" for ch in klass)
        written.append(write_imrmc(frame, out_dir / f"{safe}.imrmc",
                                   description=f"BiasCare reader study, class {klass}; scores "
                                               f"{'reader scores' if study.scores is not None else '0/1 answers'}"))
    return written, notes


def imrmc_to_arrays(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Convenience for tests: (modality, reader, case) scores and case truth in file order."""
    m, r, c = (list(pd.unique(frame[x])) for x in ("modality", "reader", "case"))
    scores = frame.set_index(["modality", "reader", "case"])["rating"].reindex(
        pd.MultiIndex.from_product([m, r, c])).to_numpy(float).reshape(len(m), len(r), len(c))
    truth = frame.groupby("case", sort=False)["truth"].first().reindex(c).to_numpy(float)
    return scores, truth
