"""Reader-study analysis: metrics, paired bootstrap, subgroups, OR-Hillis MRMC, iMRMC export and the HTML report.

Modules (each importable without the app, the model or the database):
- ``data``: read the exported long table (CSV/Parquet, or ``--db`` through ``annotations_db.export``), check it and
  build a :class:`~analysis.data.Study` (raters × cases × classes arrays, row accounting, notes).
- ``metrics``: the paper's accuracy (per-class, macro), sensitivity, specificity, F1, AUC, time and speed-up.
- ``bootstrap``: paired case-resampling bootstrap CIs for every difference.
- ``subgroups``: sex / race / age-bin macro accuracy and the maximum gap; accuracy by AI-uncertainty decile.
- ``mrmc``: Obuchowski–Rockette with Hillis ddf and jackknife covariances (validated against OR-DBM MRMC 2.51).
- ``imrmc``: read / write the FDA iMRMC input format.
- ``simulate``: a reader simulator with known effects, in the export format.
- ``pipeline`` + ``report``: everything computed once, written as report.html + tables/*.csv + figures/*.png.
- ``cli``: ``python launch.py analyze --results FILE | --db URL --out DIR``.
"""
