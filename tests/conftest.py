from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

sys.path.insert(0, str(Path(__file__).parent))

REPO = Path(__file__).resolve().parent.parent


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow (the real model)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def in_ci() -> bool:
    """Whether the tests run under CI (the variable CI is "true"), where every extra is installed."""
    return os.environ.get("CI", "").lower() == "true"


def unavailable(message: str) -> None:
    """Something a test needs is missing: skip on a user's machine, fail under CI."""
    if in_ci():
        pytest.fail(f"{message} (CI installs everything the tests need)", pytrace=False)
    pytest.skip(message, allow_module_level=True)


def require(module: str) -> ModuleType:
    """Import an optional package (an extra), like ``pytest.importorskip``, except that a
    missing package fails the test under CI instead of skipping it silently."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        unavailable(f"{module} is not installed ({err}); pip install 'tl-multilingual[test]'")
        raise  # unreachable: unavailable() always raises


def fixtures_dir() -> Path | None:
    """The reference fixtures: $TLM_FIXTURES, else ../shared/fixtures beside the checkout."""
    candidates = [os.environ.get("TLM_FIXTURES"), REPO.parent / "shared" / "fixtures"]
    for candidate in candidates:
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def fixtures() -> Path:
    """Reference fixtures; skipped when absent on a user's machine, a failure under CI."""
    found = fixtures_dir()
    if found is None:
        unavailable("reference fixtures not found: set TLM_FIXTURES or place them at ../shared/fixtures")
    return found


@pytest.fixture(autouse=True)
def _quiet_progress(monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")


NJUNLP_LANGS = "en ru es fr de zh ja bn th sw".split()
NJUNLP_TAG = "Mistral-de76d14562b1da1ba0e52d5b245cf9c0859e2af3"


@pytest.fixture(scope="session")
def njunlp_stats(fixtures):
    """Zhang et al.'s (AAAI-26) released response-only statistics (Mistral-7B on MGSM, 10 languages)."""
    import tl_multilingual as tlm

    folder = fixtures / "njunlp_mistral_mgsm"
    return tlm.ActivationStats.from_reference_files(
        full={lang: folder / f"activation.{lang}.{NJUNLP_TAG}.pt" for lang in NJUNLP_LANGS},
        prefix={lang: folder / f"prefix.activation.{lang}.{NJUNLP_TAG}.pt" for lang in NJUNLP_LANGS},
    )


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny four-layer Llama saved as a Hugging Face folder, for the command's tests."""
    import tl_multilingual as tlm

    folder = tmp_path_factory.mktemp("tiny-model")
    model, tokenizer = tlm.models.tiny_hf("llama", n_layers=4)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
