"""The shipped study (studies/study-cpu): its reports rebuild from the frozen artifacts alone, with the same answer."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from conftest import REPO, snakemake
from test_pipeline import job_counts

pytestmark = pytest.mark.e2e
STUDY = REPO / "studies/study-cpu"
REPORTS = Path("results/study-cpu/reports")


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory) -> Path:
    """A copy of the frozen study whose reports were deleted and rebuilt by the README's command."""
    work = tmp_path_factory.mktemp("study") / "study-cpu"
    shutil.copytree(STUDY, work, symlinks=True)
    (work / "data").unlink()  # the top-level link to the repo's data, relative in the repo
    (work / "data").symlink_to(REPO / "data")
    for f in (work / REPORTS).iterdir():
        f.unlink()
    res = snakemake(work, "reports", "--configfile", str(REPO / "configs/study-cpu.yaml"), "--allowed-rules",
                    "build_reports", "reports", "-R", "build_reports")
    assert job_counts(res.stdout + res.stderr) == {"build_reports": 1, "reports": 1}
    return work


def test_frozen_study_is_small_and_has_no_checkpoints():
    files = [f for f in (STUDY / "results").rglob("*") if f.is_file()]
    assert sum(f.stat().st_size for f in files) < 8 * 2**20
    assert not [f for f in files if f.suffix in (".safetensors", ".bin", ".zarr")]
    assert not list((STUDY / "results").rglob("chunk_*.zarr"))


def test_study_report_regenerates_the_same_summary(rebuilt):
    frozen = (STUDY / REPORTS / "summary.md").read_text()
    assert (rebuilt / REPORTS / "summary.md").read_text() == frozen
    # the answer's figures are in it: intervals for density - uniform, the control and the collapse check
    assert re.search(r"control . base", frozen) and re.search(r"density . uniform", frozen)
    assert re.search(r"\[[-+]?\d", frozen)


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", path
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def test_study_report_redraws_every_plot(rebuilt):
    frozen = sorted((STUDY / REPORTS).glob("*.png"))
    assert len(frozen) >= 7
    for png in frozen:
        assert png_size(rebuilt / REPORTS / png.name) == png_size(png), png.name
