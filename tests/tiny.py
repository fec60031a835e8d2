"""Tiny models for the tests: the library's own, plus a legacy HookedTransformer twin."""

from __future__ import annotations

from tl_multilingual.models import SAMPLE_TEXT
from tl_multilingual.models import tiny as bridge
from tl_multilingual.models import tiny_hf as hf_model
from tl_multilingual.models import tiny_tokenizer as tokenizer

__all__ = ["SAMPLE_TEXT", "bridge", "hf_model", "tokenizer", "hooked_and_bridge"]


def hooked_and_bridge(arch: str, *, seed: int = 0):
    """A legacy HookedTransformer (TL 3.x only) and a bridge holding the same weights."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.model_bridge import TransformerBridge
    from transformer_lens.pretrained.weight_conversions import (
        convert_gpt2_weights,
        convert_llama_weights,
    )

    model, tok = hf_model(arch, seed=seed)
    common = dict(d_model=32, d_head=8, n_heads=4, d_mlp=48, n_layers=2, n_ctx=128, d_vocab=len(tok),
                  default_prepend_bos=True)
    if arch == "llama":
        cfg = HookedTransformerConfig(
            **common, act_fn="silu", normalization_type="RMS", positional_embedding_type="rotary",
            rotary_dim=8, gated_mlp=True, final_rms=True, n_key_value_heads=2, eps=model.config.rms_norm_eps,
            original_architecture="LlamaForCausalLM",
        )
        weights = convert_llama_weights(model, cfg)
    elif arch == "gpt2":
        cfg = HookedTransformerConfig(
            **common, act_fn="gelu_new", normalization_type="LN", positional_embedding_type="standard",
            eps=model.config.layer_norm_epsilon, original_architecture="GPT2LMHeadModel",
        )
        weights = convert_gpt2_weights(model, cfg)
    else:
        raise ValueError(arch)
    hooked = HookedTransformer(cfg, tokenizer=tok)
    hooked.load_state_dict(weights, strict=False)
    bridged = TransformerBridge.boot_transformers(f"tiny-{arch}", hf_model=model, tokenizer=tok)
    return hooked.eval(), bridged
