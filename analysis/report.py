"""The report: one self-contained HTML file (figures embedded as PNG), CSV tables and the figures as PNG files."""
from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from analysis.data import AI, Study  # noqa: E402
from analysis.imrmc import export_study  # noqa: E402
from analysis.mrmc import Analysis, ORHResult  # noqa: E402
from analysis.pipeline import AnalysisResults  # noqa: E402

ARM_COLORS = {"unaided": "#8c8c8c", "ai_aided": "#1f77b4", "ai_alone": "#d62728"}
HATCHES = ("", "//", "..", "xx", "\\\\", "++")


@dataclass
class ReportFiles:
    html: Path
    csv: dict[str, Path] = field(default_factory=dict)
    figures: dict[str, Path] = field(default_factory=dict)
    imrmc: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------------------------

def fig_accuracy_time(res: AnalysisResults) -> plt.Figure:
    """Fig. 3d: macro accuracy against median reading time per case, arrows unaided → AI-aided."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    s = res.summary
    for reader in res.study.readers:
        rows = s[(s["reader"] == reader)].set_index("arm")
        for arm, row in rows.iterrows():
            ax.scatter(row["median_s"], row["accuracy"], color=ARM_COLORS.get(arm, "k"), s=50, zorder=3)
        ax.annotate(reader, (rows["median_s"].iloc[0], rows["accuracy"].iloc[0]), textcoords="offset points",
                    xytext=(5, 5))
        if {"unaided", "ai_aided"} <= set(rows.index):
            u, a = rows.loc["unaided"], rows.loc["ai_aided"]
            ax.annotate("", (a["median_s"], a["accuracy"]), (u["median_s"], u["accuracy"]),
                        arrowprops={"arrowstyle": "->", "color": "#555"})
    ai = s[s["reader"] == AI]
    if not ai.empty and np.isfinite(ai["accuracy"].iloc[0]):
        if np.isfinite(ai["median_s"].iloc[0]):
            ax.scatter(ai["median_s"], ai["accuracy"], marker="*", s=160, color=ARM_COLORS["ai_alone"],
                       label="AI alone", zorder=3)
        else:
            ax.axhline(ai["accuracy"].iloc[0], color=ARM_COLORS["ai_alone"], ls="--", label="AI alone (time unknown)")
    for arm in ("unaided", "ai_aided"):
        ax.scatter([], [], color=ARM_COLORS[arm], label=arm)
    ax.set_xlabel("median reading time per case (s)")
    ax.set_ylabel(f"macro accuracy ({res.config.accuracy})")
    ax.legend(loc="best", fontsize=8)
    ax.set_title("Accuracy and time per reader and arm")
    return fig


def fig_per_class(res: AnalysisResults) -> plt.Figure:
    """Fig. 3e: per-class accuracy of each reader (unaided, aided) and the AI, tail classes first."""
    pc = res.per_class
    n_pos = pc.groupby("class")["n_positive"].max().sort_values(kind="stable")
    classes = list(n_pos.index)
    readers = res.study.readers
    fig, axes = plt.subplots(len(readers), 1, figsize=(max(8, 0.45 * len(classes)), 2.6 * len(readers)),
                             squeeze=False, sharex=True)
    x = np.arange(len(classes))
    ai = pc[pc["reader"] == AI].set_index("class")["accuracy"].reindex(classes)
    for ax, reader in zip(axes[:, 0], readers):
        for offset, arm in ((-0.27, "unaided"), (0.0, "ai_aided")):
            values = pc[(pc["reader"] == reader) & (pc["arm"] == arm)].set_index("class")["accuracy"]
            ax.bar(x + offset, values.reindex(classes).fillna(0), 0.27, color=ARM_COLORS[arm], label=arm)
        if ai.notna().any():
            ax.bar(x + 0.27, ai.fillna(0), 0.27, color=ARM_COLORS["ai_alone"], label="AI alone")
        ax.set_ylabel(reader)
        ax.set_ylim(0, 1.05)
    axes[0, 0].legend(ncol=3, fontsize=8, loc="upper left")
    axes[-1, 0].set_xticks(x, [f"{c} (N={int(n_pos[c])})" for c in classes], rotation=75, fontsize=7)
    fig.suptitle("Per-class accuracy (classes ordered from rare to common; undefined classes shown as 0)")
    fig.tight_layout()
    return fig


def fig_class_change(res: AnalysisResults) -> plt.Figure:
    """Change in per-class accuracy (aided − unaided), mean over readers, largest gains on top."""
    cc = res.class_change
    mean = cc.groupby("class")[["change"]].mean()["change"].dropna().sort_values()
    fig, ax = plt.subplots(figsize=(6.5, max(3, 0.25 * len(mean) + 1)))
    ax.barh(np.arange(len(mean)), mean.to_numpy(), color=np.where(mean.to_numpy() >= 0, "#2ca02c", "#d62728"))
    ax.set_yticks(np.arange(len(mean)), list(mean.index), fontsize=7)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlabel("per-class accuracy change, AI-aided − unaided (mean of readers)")
    fig.tight_layout()
    return fig


def fig_time(res: AnalysisResults) -> plt.Figure:
    """Reading time per case per reader and arm (box plots)."""
    study = res.study
    data, labels, colors = [], [], []
    for i in study.human_raters:
        t = study.times[i][np.isfinite(study.times[i])]
        if t.size:
            data.append(t)
            labels.append(study.raters[i].label)
            colors.append(ARM_COLORS.get(study.raters[i].arm, "k"))
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(data)), 4))
    if data:
        parts = ax.boxplot(data, patch_artist=True, showfliers=False)
        for patch, color in zip(parts["boxes"], colors):
            patch.set_facecolor(color)
        ax.set_xticks(np.arange(1, len(labels) + 1), labels, rotation=30, fontsize=8)
    ax.set_ylabel("seconds per case")
    ax.set_title("Reading time per case")
    fig.tight_layout()
    return fig


def fig_subgroups(res: AnalysisResults) -> plt.Figure:
    """Fig. 3f–k: macro accuracy per subgroup (sex, race, age) for each reader, arm and the AI."""
    table = res.subgroups.table
    attributes = ["sex", "race", "age"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), squeeze=False)
    raters = [r.label for r in res.study.raters]
    for ax, attribute in zip(axes[0], attributes):
        sub = table[table["attribute"] == attribute]
        groups = list(dict.fromkeys(sub["group"]))
        width = 0.8 / max(len(raters), 1)
        hatches = {reader: HATCHES[i % len(HATCHES)] for i, reader in enumerate(res.study.readers)}
        for j, rater in enumerate(raters):
            values = sub[sub["rater"] == rater].set_index("group")["accuracy"].reindex(groups)
            spec = res.study.raters[j]
            ax.bar(np.arange(len(groups)) + (j - len(raters) / 2 + 0.5) * width, values.fillna(0), width,
                   label=rater, color=ARM_COLORS.get(spec.arm), hatch=hatches.get(spec.reader, ""),
                   edgecolor="white", lw=0.3)
        sizes = sub.groupby("group")["n_cases"].first().reindex(groups)
        ax.set_xticks(np.arange(len(groups)), [f"{g}\n(n={int(n)})" for g, n in sizes.items()], fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_title(attribute)
    axes[0, 0].set_ylabel("macro accuracy")
    axes[0, -1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def fig_uncertainty(res: AnalysisResults) -> plt.Figure:
    """Accuracy by AI-uncertainty decile (1 = most certain) for the readers and the AI."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    d = res.deciles
    if not d.empty:
        markers = {reader: "osD^vP"[i % 6] for i, reader in enumerate(res.study.readers)}
        for rater, rows in d.groupby("rater", sort=False):
            arm = rows["arm"].iloc[0]
            ax.plot(rows["decile"], rows["accuracy"], marker=markers.get(rows["reader"].iloc[0], "*"), label=rater,
                    color=ARM_COLORS.get(arm),
                    lw=2.5 if arm == "ai_alone" else 1, alpha=0.9)
    ax.set_xlabel("AI uncertainty decile (1 = least uncertain)")
    ax.set_ylabel("macro accuracy")
    ax.legend(fontsize=7)
    ax.set_title("Accuracy by AI uncertainty")
    fig.tight_layout()
    return fig


def fig_mrmc(result: ORHResult) -> plt.Figure:
    """Reader FOMs per arm with the random-reader/random-case CI of each arm mean."""
    fig, ax = plt.subplots(figsize=(5, 4))
    x = np.arange(len(result.treatments))
    for reader in result.readers:
        ax.plot(x, result.fom[reader].to_numpy(), marker="o", color="#999", lw=0.8)
    single = result.random_readers_random_cases.single_treatment
    ax.errorbar(x + 0.05, single["fom"], yerr=[single["fom"] - single["ci_lower"], single["ci_upper"] - single["fom"]],
                fmt="s", color="k", capsize=5, label="mean, 95% CI (random readers & cases)")
    ax.set_xticks(x, result.treatments)
    ax.set_ylabel(result.fom_name)
    ax.legend(fontsize=7)
    ax.set_title(f"MRMC: {result.fom_name}")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------------------------
# HTML
# ---------------------------------------------------------------------------------------------------------------

def _png(fig: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def _table(frame: pd.DataFrame, digits: int = 4) -> str:
    if frame is None or frame.empty:
        return "<p><em>(empty)</em></p>"
    return frame.to_html(index=False, float_format=lambda v: f"{v:.{digits}f}", na_rep="—", border=0,
                         classes="tbl", escape=True)


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _analysis_tables(a: Analysis) -> str:
    g = a.global_test
    text = (f"<p><b>{html.escape(a.name)}</b>: statistic {g['statistic']:.4f} on ({g['df1']}, {g['df2']:.2f}) df, "
            f"p = {g['p']:.4f}</p>")
    text += _table(a.differences) + _table(a.single_treatment)
    if a.single_reader is not None:
        text += "<p>Single-reader comparisons</p>" + _table(a.single_reader)
    return text


def _mrmc_section(name: str, result: ORHResult, png: bytes | None) -> str:
    fom = result.fom.reset_index(names="arm")
    parts = [f"<h3>{html.escape(result.fom_name)} ({result.n_cases} cases, {len(result.readers)} readers)</h3>",
             _img(png, f"MRMC {name}") if png else "", "<p>Reader × arm figure of merit</p>", _table(fom),
             "<p>Treatment × reader ANOVA</p>", _table(result.anova.reset_index(names="source")),
             "<p>Obuchowski–Rockette variance components (jackknife covariances)</p>",
             _table(result.components().reset_index(names="component"), 8)]
    for analysis in (result.random_readers_random_cases, result.fixed_readers_random_cases,
                     result.random_readers_fixed_cases):
        parts.append(_analysis_tables(analysis))
    return "\n".join(parts)


CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1300px;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;margin-top:1.6em}img{max-width:100%;margin:0.6em 0}
.tbl{border-collapse:collapse;font-size:0.8em;margin:0.4em 0 1em}.tbl td,.tbl th{padding:2px 8px;
border-bottom:1px solid #eee;text-align:right}.tbl th{background:#f3f3f3}.notes li{margin:0.2em 0}
.warn{background:#fff6e0;padding:0.6em 1em;border-left:4px solid #e0a000}"""


def _mrmc_csvs(name: str, result: ORHResult) -> dict[str, pd.DataFrame]:
    tables = {f"mrmc_{name}_fom": result.fom.reset_index(names="arm"),
              f"mrmc_{name}_anova": result.anova.reset_index(names="source"),
              f"mrmc_{name}_components": result.components().reset_index(names="component")}
    for key, analysis in (("rrrc", result.random_readers_random_cases), ("frrc", result.fixed_readers_random_cases),
                          ("rrfc", result.random_readers_fixed_cases)):
        tables[f"mrmc_{name}_{key}_differences"] = analysis.differences.assign(**{
            f"global_{k}": v for k, v in analysis.global_test.items()})
        tables[f"mrmc_{name}_{key}_single_treatment"] = analysis.single_treatment
    return tables


def csv_tables(res: AnalysisResults) -> dict[str, pd.DataFrame]:
    tables = {"summary": res.summary, "per_class": res.per_class, "class_change": res.class_change,
              "speedup": res.speedup, "bootstrap_differences": res.differences, "metric_cis": res.metric_cis,
              "subgroups": res.subgroups.table, "subgroup_gaps": res.subgroups.gaps,
              "uncertainty_deciles": res.deciles, "reading_order": res.reading_order,
              "row_accounting": res.study.row_accounting}
    for name, result in res.mrmc.items():
        tables.update(_mrmc_csvs(name, result))
    return tables


def write_report(res: AnalysisResults, out_dir: str | Path, title: str = "Reader study analysis") -> ReportFiles:
    """Write report.html, tables/*.csv, figures/*.png and imrmc/*.imrmc under ``out_dir``."""
    out = Path(out_dir)
    (out / "tables").mkdir(parents=True, exist_ok=True)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    files = ReportFiles(html=out / "report.html")
    notes = list(res.notes)
    files.imrmc, imrmc_notes = export_study(res.study, out / "imrmc")
    notes += imrmc_notes
    figures = _render_figures(res, notes)
    for name, png in figures.items():
        path = out / "figures" / f"{name}.png"
        path.write_bytes(png)
        files.figures[name] = path
    for name, table in csv_tables(res).items():
        path = out / "tables" / f"{name}.csv"
        table.to_csv(path, index=False)
        files.csv[name] = path
    (out / "notes.txt").write_text("\n".join(notes) + ("\n" if notes else ""))
    files.notes = notes
    files.html.write_text(_html(res, figures, notes, files, title))
    return files


def _render_figures(res: AnalysisResults, notes: list[str]) -> dict[str, bytes]:
    makers: dict[str, Callable[[], plt.Figure]] = {
        "fig3d_accuracy_time": lambda: fig_accuracy_time(res), "fig3e_per_class": lambda: fig_per_class(res),
        "class_change": lambda: fig_class_change(res), "reading_time": lambda: fig_time(res),
        "fig3f-k_subgroups": lambda: fig_subgroups(res), "uncertainty_deciles": lambda: fig_uncertainty(res)}
    for name, result in res.mrmc.items():
        makers[f"mrmc_{name}"] = lambda result=result: fig_mrmc(result)
    figures = {}
    for name, make in makers.items():
        if name == "class_change" and res.class_change.empty or name == "uncertainty_deciles" and res.deciles.empty:
            continue
        try:
            figures[name] = _png(make())
        except Exception as exc:  # a broken figure must not lose the tables; the report says what failed
            plt.close("all")
            notes.append(f"figure {name} could not be drawn: {type(exc).__name__}: {exc}")
    return figures


def _ai_alone(study: Study) -> str:
    """How the AI-alone arm was formed, naming its source."""
    source = f"the AI source {study.ai_source}" if study.ai_source else "ai_probability (source not named)"
    return f"; AI alone = {source}: its suggestions (ai_suggested) where exported, scores = ai_probability"


def _html(res: AnalysisResults, figures: dict[str, bytes], notes: list[str], files: ReportFiles, title: str) -> str:
    s, c = res.study, res.config
    fig = lambda name, alt: _img(figures[name], alt) if name in figures else ""  # noqa: E731
    macro_diffs = res.differences[res.differences["class"].isin(["macro", "all"])] if not res.differences.empty \
        else res.differences
    design = (f"{len(s.readers)} readers, arms: {', '.join(s.arms)}; {len(s.cases)} cases; {len(s.classes)} classes"
              f"{_ai_alone(s) if s.ai_rater is not None else ''}. Accuracy = per-class "
              f"{'accuracy on the cases of each class (TP/positives)' if c.accuracy == 'recall' else '(TP+TN)/N'}"
              f", macro-averaged over classes where it is defined. Bootstrap: {c.n_boot} paired case resamples, "
              f"seed {c.seed}, {100 * (1 - c.alpha):.0f}% percentile intervals.")
    body = [f"<h1>{html.escape(title)}</h1>",
            f"<p>Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}. {html.escape(design)}</p>",
            "<h2>Data checks</h2>",
            ('<div class="warn"><ul class="notes">' + "".join(f"<li>{html.escape(n)}</li>" for n in notes)
             + "</ul></div>") if notes else "<p>No data problems found.</p>",
            "<p>Row accounting (every input row is either used or excluded with its reason)</p>",
            _table(s.row_accounting),
            "<h2>Accuracy and time (Fig. 3d)</h2>", fig("fig3d_accuracy_time", "accuracy vs time"),
            _table(res.summary), "<p>Each rater's macro metrics with bootstrap CIs</p>", _table(res.metric_cis),
            "<h2>Reading time and speed-up</h2>", fig("reading_time", "reading time"),
            "<p>Speed-up = total unaided time / total AI-aided time on the cases timed in both arms"
            + ("" if s.ai_rater is not None and np.isfinite(s.times[s.ai_rater]).any() else
               "; the AI's time per case is not in the export (pass --ai-seconds-per-case to report it)")
            + ".</p>", _table(res.speedup, 3),
            "<h2>Differences with paired bootstrap CIs</h2>", _table(macro_diffs),
            "<h2>Per class (Fig. 3e)</h2>", fig("fig3e_per_class", "per-class accuracy"),
            "<p>Change per class, AI-aided − unaided (largest gains first)</p>", fig("class_change", "class change"),
            _table(res.class_change),
            "<details><summary>All per-class metrics</summary>", _table(res.per_class), "</details>",
            "<h2>Subgroups (Fig. 3f–k)</h2>", fig("fig3f-k_subgroups", "subgroups"),
            "<p>Maximum gap across groups (bootstrap CI of the gap is indicative: the max−min of noisy values is "
            "biased upwards)</p>", _table(res.subgroups.gaps),
            "<details><summary>Accuracy per subgroup</summary>", _table(res.subgroups.table), "</details>",
            "<h2>AI uncertainty</h2>", fig("uncertainty_deciles", "uncertainty deciles"),
            "<p>Reading order vs AI uncertainty (Spearman; negative = most uncertain cases read first)</p>",
            _table(res.reading_order, 3),
            "<details><summary>Accuracy per decile</summary>", _table(res.deciles), "</details>",
            "<h2>MRMC: Obuchowski–Rockette–Hillis</h2>",
            "<p>Jackknife covariances; Hillis (2007) denominator degrees of freedom; arms = treatments.</p>"]
    for name, result in res.mrmc.items():
        body.append(_mrmc_section(name, result, figures.get(f"mrmc_{name}")))
    if not res.mrmc:
        body.append("<p>MRMC not computed (see data checks).</p>")
    body += ["<h2>Files</h2><ul>"] + [f"<li>{html.escape(str(p.relative_to(files.html.parent)))}</li>"
                                       for p in [*files.csv.values(), *files.figures.values(), *files.imrmc]]
    body.append("</ul>")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>")
