"""Tiny models for the tests: the library's own, plus a legacy HookedTransformer twin."""

from __future__ import annotations

from tl_multilingual.model.models import SAMPLE_TEXT
from tl_multilingual.model.models import tiny as bridge
from tl_multilingual.model.models import tiny_hf as hf_model
from tl_multilingual.model.models import tiny_tokenizer as tokenizer

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


SP_SENTENCES = [
    "Question: is the cat on the mat? Answer: True",
    "Question: is the sky green? Answer: False",
    "True or False? True. False. True, False.",
    "The cat sleeps on the warm mat.",
    "Le chat dort sur le tapis chaud.",
]


def sentencepiece_tokenizer(scheme: str = "legacy"):
    """A SentencePiece-style BPE tokenizer that adds a prefix space, built offline and
    loaded as a generic ``PreTrainedTokenizerFast``.

    ``"legacy"``: the Llama-2 / Mistral-v0.1 ``tokenizer.json`` pipeline (normalizer
    ``Prepend("▁")`` + ``Replace(" ", "▁")``, byte fallback), which makes ``" True"``
    alone into ``"▁", "▁True"``. ``"first"`` / ``"always"``: a ``Metaspace``
    pre-tokenizer with that ``prepend_scheme`` (newer converters), which makes
    ``"True"`` alone into ``"▁True"``.
    """
    import tempfile

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    if scheme == "legacy":
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        tok.decoder = decoders.Sequence(
            [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
        )
    else:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=scheme, split=False)
        tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace(replacement="▁", prepend_scheme=scheme, split=False)])
    special = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=len(special) + 120, special_tokens=special, show_progress=False)
    tok.train_from_iterator(SP_SENTENCES * 20, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    folder = tempfile.mkdtemp(prefix="tlm-sp-tokenizer-")
    fast.save_pretrained(folder)
    return PreTrainedTokenizerFast.from_pretrained(folder)


def sentencepiece_bridge(scheme: str = "legacy", arch: str = "llama", *, seed: int = 0):
    """A tiny random ``arch`` model with :func:`sentencepiece_tokenizer` (a TransformerBridge)."""
    import torch
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoModelForCausalLM

    from tl_multilingual.model.models import _config

    tok = sentencepiece_tokenizer(scheme)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_config(arch, len(tok))).eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim == 2:
                param.normal_(0.0, 0.3)
    return TransformerBridge.boot_transformers(f"tiny-{arch}-sp", hf_model=model, tokenizer=tok)
