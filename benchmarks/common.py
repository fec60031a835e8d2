"""Shared pieces of the benchmarks: a ~134M-parameter random Llama-style model."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
import transformers as T

from tl_multilingual.model.models import SAMPLE_TEXT, tiny_tokenizer


def build_llama(vocab: int = 32000):
    """12 layers, d_model 768, d_mlp 2048, vocabulary 32k: (hf_model, bridge)."""
    from transformer_lens.model_bridge import TransformerBridge

    config = T.LlamaConfig(
        vocab_size=vocab, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
        num_attention_heads=12, num_key_value_heads=12, max_position_embeddings=512,
    )
    config.architectures = ["LlamaForCausalLM"]
    torch.manual_seed(0)
    hf = T.AutoModelForCausalLM.from_config(config).eval()
    return hf, TransformerBridge.boot_transformers("bench-llama", hf_model=hf, tokenizer=tiny_tokenizer())


def texts(n: int, words: int = 40) -> dict[str, list[str]]:
    """``n`` texts per language of ``words`` words drawn from the sample sentences."""
    out = {}
    for lang in ("en", "fr"):
        pool = " ".join(SAMPLE_TEXT[lang]).split()
        out[lang] = [" ".join(pool[(i + j) % len(pool)] for j in range(words)) for i in range(n)]
    return out


def timed(fn: Callable[[], object], repeats: int, *, warm_up: bool = True) -> float:
    """Median wall time of ``fn`` over ``repeats`` runs, after one warm-up run."""
    if warm_up:
        fn()
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)
