"""Load and check the long results table; build the arrays every analysis works on.

Input contract: one row per reader × case × arm × class with columns ``reader, case, arm, class, answer (0/1),
truth (0/1 or empty), ai_probability, ai_uncertainty, time_s, clicks, order, shown_at, submitted_at, sex, age, race``.
Arms are ``unaided`` and ``ai_aided``; the AI-alone "arm" is the AI source the aided readers saw (``ai_source``,
named in the report): its answers are ``ai_suggested`` (1/0, the source card's suggestion rule, exported with the
results — the rule the AI panel applied) where given, else ``ai_probability`` thresholded (0.5 or per-class
thresholds), and its scores are ``ai_probability``.

An optional ``score`` column (a reader's confidence rating that the finding is present, on any
monotone scale, e.g. the raw 0..rating_max of the export) is used for the AUC analyses (reader AUCs, MRMC AUC,
iMRMC files); accuracy, sensitivity and specificity always use ``answer``. An optional ``study`` column names the
study (:func:`select_study` keeps one).

No row is dropped silently: every input row is counted in ``Study.row_accounting`` as used or excluded with a reason,
and every data problem found becomes a sentence in ``Study.notes``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

REQUIRED = ["reader", "case", "arm", "class", "answer", "truth"]
OPTIONAL = ["ai_probability", "ai_source", "ai_suggested", "ai_uncertainty", "time_s", "clicks", "order", "shown_at", "submitted_at",
            "sex", "age", "race", "score"]
ARMS = ("unaided", "ai_aided")
AI = "AI"
AI_ARM = "ai_alone"


@dataclass(frozen=True)
class Rater:
    reader: str
    arm: str

    @property
    def label(self) -> str:
        return "AI alone" if self.reader == AI else f"{self.reader} ({self.arm})"


@dataclass
class Study:
    """The checked long frame plus dense arrays over raters × cases × classes (NaN = not read / unknown)."""
    frame: pd.DataFrame
    readers: list[str]
    arms: list[str]
    cases: list[str]
    classes: list[str]
    raters: list[Rater]
    answers: np.ndarray            # (raters, cases, classes) 0/1, NaN where the rater did not read
    truth: np.ndarray              # (cases, classes) 0/1, NaN unknown
    ai_probability: np.ndarray | None   # (cases, classes)
    scores: np.ndarray | None      # (raters, cases, classes) reader scores if a `score` column exists
    times: np.ndarray              # (raters, cases) seconds per case, NaN unknown (AI: NaN)
    case_info: pd.DataFrame        # per case: sex, age, race, ai_uncertainty (index = case)
    order: np.ndarray              # (raters, cases) reading order, NaN unknown
    thresholds: dict[str, float]
    row_accounting: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    ai_source: str | None = None   # the AI source of the AI-alone arm (names joined if the rows hold several)

    def rater_index(self, reader: str, arm: str) -> int | None:
        return next((i for i, r in enumerate(self.raters) if r.reader == reader and r.arm == arm), None)

    @property
    def human_raters(self) -> list[int]:
        return [i for i, r in enumerate(self.raters) if r.reader != AI]

    @property
    def ai_rater(self) -> int | None:
        return self.rater_index(AI, AI_ARM)


def read_results(path: str | Path) -> pd.DataFrame:
    """Read the exported long table (CSV or Parquet)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"results file not found: {path}")
    if path.suffix.lower() in (".parquet", ".pq"):
        return pd.read_parquet(path)
    return pd.read_csv(path, dtype={"reader": str, "case": str, "arm": str, "class": str}, keep_default_na=True)


def read_db(url: str, study: str | None = None) -> tuple[pd.DataFrame, list[str]]:
    """The results of one study straight from the database and lines saying which study it is.

    ``study`` = a study name; default the most recently created study, said explicitly, with the others listed.
    ValueError for an unknown study or a database without studies. The export module is imported only here.
    """
    from annotations_db.errors import AnnotationDbError  # noqa: PLC0415 - optional, owned by the database package
    from annotations_db.export import list_studies, resolve_study, results_frame  # noqa: PLC0415
    try:
        chosen = resolve_study(url, study)
        lines = [f"study: {chosen.described}" + ("" if study else " — the latest study (no --study given)")]
        others = [s.described for s in list_studies(url) if s.id != chosen.id]
        if others:
            lines.append(f"other studies in the database (pick one with --study NAME): {'; '.join(others)}")
        return results_frame(url, chosen.id), lines
    except AnnotationDbError as error:
        raise ValueError(str(error)) from error


def select_study(raw: pd.DataFrame, study: str | None) -> pd.DataFrame:
    """Rows of one study of an exported table with a ``study`` column (ValueError when it holds several and none
    is named, or the named one is absent); a table without the column is taken as one study."""
    if "study" not in raw.columns:
        if study:
            raise ValueError(f"--study {study!r}: the results table has no 'study' column")
        return raw
    names = sorted(raw["study"].dropna().astype(str).unique())
    if study is None:
        if len(names) > 1:
            raise ValueError(f"the results table holds {len(names)} studies ({', '.join(names)}): pass --study NAME")
        return raw
    if study not in names:
        raise ValueError(f"no study {study!r} in the results table; it has: {', '.join(names) or 'none'}")
    return raw[raw["study"].astype(str) == study]


def load_thresholds(path: str | Path | None, classes: list[str], default: float = 0.5) -> dict[str, float]:
    """Per-class AI thresholds from a JSON object {class: threshold}; the default for classes not listed."""
    thresholds = {c: default for c in classes}
    if path:
        given = json.loads(Path(path).read_text())
        thresholds.update({str(k): float(v) for k, v in given.items()})
    return thresholds


def _as_binary(values: pd.Series) -> pd.Series:
    """0/1 (also true/false, yes/no); anything else -> NaN."""
    mapping = {"1": 1.0, "0": 0.0, "true": 1.0, "false": 0.0, "yes": 1.0, "no": 0.0, "1.0": 1.0, "0.0": 0.0}
    out = values.map(lambda v: mapping.get(str(v).strip().lower(), np.nan) if pd.notna(v) else np.nan)
    return out.astype(float)


def normalize(raw: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Check columns and types; add ``_status`` (``used`` or the reason a row is excluded)."""
    missing = [c for c in REQUIRED if c not in raw.columns]
    if missing:
        raise ValueError(f"results table lacks required column(s): {', '.join(missing)}")
    notes: list[str] = []
    df = raw.copy().reset_index(drop=True)
    for col in OPTIONAL:
        if col not in df.columns:
            df[col] = np.nan
    for col in ("reader", "case", "arm", "class"):
        df[col] = df[col].map(lambda v: str(v).strip() if pd.notna(v) else np.nan)
    df["answer"], df["truth"] = _as_binary(df["answer"]), _as_binary(df["truth"])
    df["ai_suggested"] = _as_binary(df["ai_suggested"])
    for col in ("ai_probability", "ai_uncertainty", "time_s", "clicks", "order", "age", "score"):
        df[col] = pd.to_numeric(df[col], errors="coerce")
    _time_from_timestamps(df, notes)
    for col in ("sex", "race", "ai_source"):
        df[col] = df[col].map(lambda v: str(v).strip() if pd.notna(v) and str(v).strip() else np.nan)
    df["_status"] = "used"
    _flag(df, df[["reader", "case", "arm", "class"]].isna().any(axis=1), "missing reader/case/arm/class", notes)
    _flag(df, ~df["arm"].isin(ARMS) & (df["_status"] == "used"), "unknown arm (not unaided/ai_aided)", notes)
    dup = df.duplicated(["reader", "case", "arm", "class"], keep="first") & (df["_status"] == "used")
    _flag(df, dup, "duplicate reader×case×arm×class row (first kept)", notes)
    _flag(df, df["answer"].isna() & (df["_status"] == "used"), "answer missing or not 0/1", notes)
    n_no_truth = int((df["truth"].isna() & (df["_status"] == "used")).sum())
    if n_no_truth:
        notes.append(f"{n_no_truth} rows have no ground truth: they count for time but not for accuracy")
    return df, notes


def _time_from_timestamps(df: pd.DataFrame, notes: list[str]) -> None:
    """Fill a missing time_s from submitted_at − shown_at where both parse (and say how many were filled)."""
    gap = df["time_s"].isna() & df["shown_at"].notna() & df["submitted_at"].notna()
    if not gap.any():
        return
    shown = pd.to_datetime(df.loc[gap, "shown_at"], errors="coerce", utc=True, format="mixed")
    submitted = pd.to_datetime(df.loc[gap, "submitted_at"], errors="coerce", utc=True, format="mixed")
    seconds = (submitted - shown).dt.total_seconds()
    seconds = seconds.where(seconds >= 0)
    df.loc[gap, "time_s"] = seconds
    if seconds.notna().any():
        notes.append(f"time_s was empty on {int(seconds.notna().sum())} rows and was taken from "
                     "submitted_at − shown_at")


def _flag(df: pd.DataFrame, mask: pd.Series, reason: str, notes: list[str]) -> None:
    n = int(mask.sum())
    if n:
        df.loc[mask, "_status"] = reason
        notes.append(f"{n} rows excluded: {reason}")


def _case_table(used: pd.DataFrame, cases: list[str], notes: list[str]) -> pd.DataFrame:
    """One row per case: demographics and AI uncertainty (first non-empty value; conflicts reported)."""
    info = pd.DataFrame(index=pd.Index(cases, name="case"))
    for col in ("sex", "race", "age", "ai_uncertainty"):
        per_case = used.dropna(subset=[col]).groupby("case")[col]
        conflicts = int((per_case.nunique() > 1).sum())
        if conflicts:
            notes.append(f"{conflicts} cases have conflicting '{col}' values across rows; the first is used")
        info[col] = per_case.first().reindex(cases)
    return info


def _truth_matrix(used: pd.DataFrame, cases: list[str], classes: list[str], notes: list[str]) -> np.ndarray:
    known = used.dropna(subset=["truth"])
    conflicts = int((known.groupby(["case", "class"])["truth"].nunique() > 1).sum())
    if conflicts:
        notes.append(f"{conflicts} case×class pairs have conflicting truth across readers/arms; the first is used")
    grid = known.groupby(["case", "class"])["truth"].first()
    return grid.reindex(pd.MultiIndex.from_product([cases, classes])).to_numpy(float).reshape(len(cases),
                                                                                              len(classes))


def _ai_matrix(used: pd.DataFrame, cases: list[str], classes: list[str], notes: list[str]) -> np.ndarray | None:
    known = used.dropna(subset=["ai_probability"])
    if known.empty:
        notes.append("no AI probabilities in the data: the AI-alone arm is not analysed")
        return None
    spread = known.groupby(["case", "class"])["ai_probability"].agg(lambda s: s.max() - s.min())
    if (spread > 1e-9).any():
        notes.append(f"{int((spread > 1e-9).sum())} case×class pairs have different AI probabilities across rows; "
                     "their mean is used")
    grid = known.groupby(["case", "class"])["ai_probability"].mean()
    matrix = grid.reindex(pd.MultiIndex.from_product([cases, classes])).to_numpy(float)
    matrix = matrix.reshape(len(cases), len(classes))
    n_missing = int(np.isnan(matrix).sum())
    if n_missing:
        notes.append(f"AI probability missing for {n_missing} case×class pairs: the AI is scored on the rest")
    return matrix


def _ai_answers(used: pd.DataFrame, ai: np.ndarray, cases: list[str], classes: list[str],
                thresholds: dict[str, float], notes: list[str]) -> np.ndarray:
    """The AI alone's 0/1 answers: the source's suggestions (``ai_suggested``) where exported, else ``ai_probability``
    ≥ the class's threshold."""
    cut = np.array([thresholds[c] for c in classes])
    answers = np.where(np.isnan(ai), np.nan, (ai >= cut).astype(float))
    known = used.dropna(subset=["ai_suggested"])
    if known.empty:
        notes.append("AI alone: no ai_suggested column (the source's suggestion rule): probabilities thresholded")
        return answers
    grid = known.groupby(["case", "class"])["ai_suggested"].max()
    suggested = grid.reindex(pd.MultiIndex.from_product([cases, classes])).to_numpy(float).reshape(ai.shape)
    thresholded = int((np.isnan(suggested) & ~np.isnan(ai)).sum())
    if thresholded:
        notes.append(f"AI alone: {thresholded} case×class pairs have no ai_suggested value and were thresholded")
    return np.where(np.isnan(suggested), answers, suggested)


def _ai_source(used: pd.DataFrame) -> str | None:
    names = sorted(used["ai_source"].dropna().astype(str).unique())
    return " + ".join(names) if names else None


def _rater_grid(used: pd.DataFrame, raters: list[Rater], cases: list[str], classes: list[str], column: str
                ) -> np.ndarray:
    humans = [r for r in raters if r.reader != AI]
    grid = used.set_index(["reader", "arm", "case", "class"])[column]
    index = pd.MultiIndex.from_tuples([(r.reader, r.arm, c, k) for r in humans for c in cases for k in classes])
    values = grid.reindex(index).to_numpy(float).reshape(len(humans), len(cases), len(classes))
    return values


def _case_grid(used: pd.DataFrame, raters: list[Rater], cases: list[str], column: str) -> np.ndarray:
    humans = [r for r in raters if r.reader != AI]
    per_case = used.dropna(subset=[column]).groupby(["reader", "arm", "case"])[column].first()
    index = pd.MultiIndex.from_tuples([(r.reader, r.arm, c) for r in humans for c in cases])
    return per_case.reindex(index).to_numpy(float).reshape(len(humans), len(cases))


def _balance_notes(answers: np.ndarray, raters: list[Rater], cases: list[str], notes: list[str]) -> None:
    read = ~np.isnan(answers).all(axis=2)
    for i, rater in enumerate(raters):
        missing = len(cases) - int(read[i].sum())
        if missing:
            notes.append(f"unbalanced design: {rater.label} did not read {missing} of {len(cases)} cases; "
                         "their metrics use the cases they read, paired comparisons the cases both read")
    partial = (~np.isnan(answers)).sum(axis=2)
    gaps = int(((partial > 0) & (partial < answers.shape[2])).sum())
    if gaps:
        notes.append(f"{gaps} reader×case readings lack some class rows; the missing classes count as not read")


def _class_notes(truth: np.ndarray, classes: list[str], notes: list[str]) -> None:
    pos = np.nansum(truth == 1, axis=0)
    neg = np.nansum(truth == 0, axis=0)
    for k, name in enumerate(classes):
        if pos[k] == 0:
            notes.append(f"class '{name}' is never positive: its per-class accuracy/sensitivity/AUC are undefined "
                         "and it is left out of the macro averages (specificity is still reported)")
        elif neg[k] == 0:
            notes.append(f"class '{name}' is never negative: its specificity and AUC are undefined")


def build_study(raw: pd.DataFrame, thresholds: dict[str, float] | None = None, default_threshold: float = 0.5,
                ai_seconds_per_case: float | None = None) -> Study:
    """Checked long frame -> :class:`Study` (arrays over raters × cases × classes).

    The AI's reading time is not in the export; ``ai_seconds_per_case`` (measured inference time) fills it in.
    """
    df, notes = normalize(raw)
    used = df[df["_status"] == "used"]
    if used.empty:
        raise ValueError("no usable rows in the results table (see the row accounting)")
    readers = sorted(used["reader"].unique(), key=str)
    arms = [a for a in ARMS if a in set(used["arm"])]
    cases = sorted(used["case"].unique(), key=str)
    classes = sorted(used["class"].unique(), key=str)
    for arm in ARMS:
        if arm not in arms:
            notes.append(f"arm '{arm}' has no rows: comparisons with it are not computed")
    raters = [Rater(r, a) for r in readers for a in arms if ((used["reader"] == r) & (used["arm"] == a)).any()]
    answers = _rater_grid(used, raters, cases, classes, "answer")
    scores = _rater_grid(used, raters, cases, classes, "score") if used["score"].notna().any() else None
    times = _case_grid(used, raters, cases, "time_s")
    order = _case_grid(used, raters, cases, "order")
    truth = _truth_matrix(used, cases, classes, notes)
    ai = _ai_matrix(used, cases, classes, notes)
    thresholds = {**{c: default_threshold for c in classes}, **(thresholds or {})}
    _balance_notes(answers, raters, cases, notes)
    if ai is not None:
        raters = raters + [Rater(AI, AI_ARM)]
        ai_answers = _ai_answers(used, ai, cases, classes, thresholds, notes)
        answers = np.concatenate([answers, ai_answers[None]], axis=0)
        ai_time = np.nan if ai_seconds_per_case is None else float(ai_seconds_per_case)
        times = np.concatenate([times, np.where(np.isnan(ai).all(axis=1), np.nan, ai_time)[None]], axis=0)
        order = np.concatenate([order, np.full((1, len(cases)), np.nan)], axis=0)
        if scores is not None:
            scores = np.concatenate([scores, ai[None]], axis=0)
    n_time_missing = int(np.isnan(times[[i for i, r in enumerate(raters) if r.reader != AI]]).sum()
                         - np.isnan(answers[[i for i, r in enumerate(raters) if r.reader != AI]]).all(axis=2).sum())
    if n_time_missing > 0:
        notes.append(f"{n_time_missing} reader×case readings have no time_s: timing uses the others")
    _class_notes(truth, classes, notes)
    case_info = _case_table(used, cases, notes)
    accounting = df["_status"].value_counts().rename_axis("status").reset_index(name="rows")
    accounting = pd.concat([accounting, pd.DataFrame([{"status": "total input rows", "rows": len(df)}])],
                           ignore_index=True)
    return Study(frame=df, readers=readers, arms=arms, cases=cases, classes=classes, raters=raters,
                 answers=answers, truth=truth, ai_probability=ai, scores=scores, times=times, case_info=case_info,
                 order=order, thresholds=thresholds, row_accounting=accounting, notes=notes, ai_source=_ai_source(used))
