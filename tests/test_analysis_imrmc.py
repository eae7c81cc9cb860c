"""iMRMC writer/reader against the real Van Dyke iMRMC file."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.imrmc import export_study, format_imrmc, read_imrmc, write_imrmc
from analysis.mrmc import orh


def test_real_file_round_trips_byte_for_byte(shared_data: Path, tmp_path: Path) -> None:
    source = shared_data / "mrmc_vandyke" / "vandyke_ratings.imrmc"
    frame, description = read_imrmc(source)
    assert description == ["RJafroc dataset converted to imrmc format"]
    assert len(frame) == 5 * 2 * 114 and frame["case"].nunique() == 114
    out = write_imrmc(frame, tmp_path / "copy.imrmc", description=description)
    assert out.read_bytes() == source.read_bytes()


def test_written_from_csv_matches_real_file(shared_data: Path) -> None:
    """Writing the long CSV (another source of the same data) gives the real file's header and data lines."""
    csv = pd.read_csv(shared_data / "mrmc_vandyke" / "vandyke_ratings.csv")
    text = format_imrmc(csv, description="RJafroc dataset converted to imrmc format")
    assert text == (shared_data / "mrmc_vandyke" / "vandyke_ratings.imrmc").read_text()


def test_read_back_gives_the_same_mrmc(shared_data: Path) -> None:
    frame, _ = read_imrmc(shared_data / "mrmc_vandyke" / "vandyke_ratings.imrmc")
    csv = pd.read_csv(shared_data / "mrmc_vandyke" / "vandyke_ratings.csv")
    a, b = orh(frame), orh(csv)
    np.testing.assert_allclose(a.fom.to_numpy(), b.fom.to_numpy(), atol=1e-15)
    assert a.var_error == pytest.approx(b.var_error, abs=1e-15)


def test_writer_rejects_incomplete_input() -> None:
    frame = pd.DataFrame({"reader": ["a", "a"], "modality": ["m", "m"], "case": ["1", "2"], "truth": [0, 1],
                          "rating": [0.2, np.nan]})
    with pytest.raises(ValueError, match="no rating"):
        format_imrmc(frame)
    with pytest.raises(ValueError, match="0/1 truth"):
        format_imrmc(frame.assign(rating=[0.1, 0.2], truth=[0, 2]))


def test_study_export_one_file_per_class(tmp_path: Path) -> None:
    from analysis.data import build_study
    from analysis.simulate import StudySpec, simulate_study
    study = build_study(simulate_study(StudySpec(n_cases=30, n_readers=2, classes=["A", "B b"], prevalence=[0.4, 0.3], seed=2)))
    files, notes = export_study(study, tmp_path)
    assert [f.name for f in files] == ["A.imrmc", "B_b.imrmc"] and notes == []
    frame, description = read_imrmc(files[1])
    assert "class B b" in description[0]
    assert set(frame["modality"]) == {"unaided", "ai_aided"} and frame["case"].nunique() == 30
    assert len(frame) == 2 * 2 * 30
