"""``ragkit eval`` end to end with the real bundled models and real codecarbon, and its HTML report
rendered by headless Chromium (the screenshot must have the window's size and not be blank)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ragkit.eval.report import write_html, write_json
from ragkit.eval.runner import EvalSettings, evaluate_pipeline
from ragkit.tokenomics.carbon import MEASURED_CPU_MODES

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
WIDTH, HEIGHT = 1280, 1800


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Two questions of the fixture corpus through pipelines/text_rag.yaml, costed and measured."""
    import torch

    from ragkit.models.llm import cache_dir

    root = tmp_path_factory.mktemp("evalreport")
    old_cache, old_threads = os.environ.get("RAGKIT_CACHE_DIR"), torch.get_num_threads()
    private = root / "cache"
    private.mkdir()
    if (cache_dir() / "models").is_dir():  # reuse converted models; the index goes to a private folder
        (private / "models").symlink_to(cache_dir() / "models", target_is_directory=True)
    os.environ["RAGKIT_CACHE_DIR"] = str(private)
    torch.set_num_threads(1)
    ds = root / "ds"
    ds.mkdir()
    shutil.copy(ROOT / "fixtures" / "text" / "library_corpus.jsonl", ds / "corpus.jsonl")
    shutil.copy(ROOT / "fixtures" / "text" / "questions.jsonl", ds / "questions.jsonl")
    try:
        settings = EvalSettings(limit=2, price_per_hour=0.5, country_iso_code="FRA")
        report = evaluate_pipeline(ROOT / "pipelines" / "text_rag.yaml", ds, root / "preds.jsonl", settings)
    finally:
        torch.set_num_threads(old_threads)
        if old_cache is None:
            os.environ.pop("RAGKIT_CACHE_DIR", None)
        else:
            os.environ["RAGKIT_CACHE_DIR"] = old_cache
    yield {"root": root, "report": report}


def test_real_run_has_tokenomics_and_an_honest_energy_basis(run: dict[str, Any]) -> None:
    rep = run["report"]
    t = rep["tokenomics"]
    assert rep["n"] == 2 and t["tokens_in"] > 0 and t["tokens_out"] > 0
    gen = t["stages"]["generate"]
    assert gen["model_calls"] == 2 and gen["ttft_p50"] is not None and gen["throughput_tokens_per_s"] > 0
    assert t["stages"]["prompt"]["prompt"]["question_share"] < 0.5  # the context outweighs the question
    assert t["hardware"]["per_million_tokens"] > 0 and t["hardware"]["per_1k_questions"] > 0
    en = t["energy"]
    assert en["items"] == 2 and en["kwh"] > 0 and en["kg_co2e"] > 0
    assert en["basis"] == ("measured" if en["cpu_method"] in MEASURED_CPU_MODES else "estimated")
    if not Path("/sys/class/powercap/intel-rapl").exists():
        assert en["basis"] == "estimated"  # without RAPL counters codecarbon can only model the power
    assert en["grid_g_per_kwh"] == pytest.approx(56, abs=30)  # codecarbon's table for France (low-carbon grid)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed (make install adds it)")
def test_html_report_renders_in_headless_chromium(run: dict[str, Any]) -> None:
    from PIL import Image, ImageStat

    root, rep = run["root"], run["report"]
    other = {**rep, "name": "text_rag_copy"}  # two pipelines side by side
    write_json([rep, other], root / "report.json")
    page = root / "report.html"
    write_html([rep, other], page)
    shot = root / "shot.png"
    proc = subprocess.run(
        [
            str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={root / 'chromium-profile'}", f"--screenshot={shot}", f"--window-size={WIDTH},{HEIGHT}",
            page.as_uri(),
        ],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert shot.is_file(), proc.stderr[-2000:]
    img = Image.open(shot).convert("RGB")
    assert img.size == (WIDTH, HEIGHT)
    stat = ImageStat.Stat(img.convert("L"))
    assert stat.stddev[0] > 20  # text, tables and plots, not a blank page
    colours = img.quantize(colors=64).getcolors()
    assert colours is not None and len(colours) > 8  # the plots' colours, not only black on white
